//! `sheepctl vdi check NAME` and `sheepctl cluster check`: every object of the VDIs on the
//! right nodes with the same valid content, repaired where it is not (see
//! `sheep_client::check`); a report per object with a problem and a summary line. The exit
//! status is non-zero when something is left wrong (with `--dry-run`: when anything is wrong).

use std::io::IsTerminal;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use sheep_client::check::{self, Action, CheckError, CheckOptions, ObjectProblem, Report, Scope};
use sheep_client::vdi::{CallLimits, Cluster};
use sheep_core::object::validate_vdi_name;

use crate::output::{print_json, table};

#[derive(Args, Debug)]
pub struct VdiCheckArgs {
    /// The VDI's name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Report what is wrong and what would be repaired, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ClusterCheckArgs {
    /// Report what is wrong and what would be repaired, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// Storage calls of a check move whole objects (4 MiB by default, up to 2 GiB): more time
/// than the engine's small requests get.
const LIMITS: CallLimits = CallLimits { connect: Duration::from_secs(1), call: Duration::from_secs(60) };

pub async fn vdi(groupd: &str, args: &VdiCheckArgs, json: bool) -> Result<()> {
    validate_vdi_name(&args.name)?;
    run(groupd, Scope::Vdi(args.name.clone()), args.dry_run, json).await
}

pub async fn cluster(groupd: &str, args: &ClusterCheckArgs, json: bool) -> Result<()> {
    run(groupd, Scope::Cluster, args.dry_run, json).await
}

async fn run(groupd: &str, scope: Scope, dry_run: bool, json: bool) -> Result<()> {
    let group = Rc::new(crate::client(groupd)?);
    let cluster = Cluster::connect(group, LIMITS).await?;
    let bar = progress();
    let opts = CheckOptions { dry_run, ..CheckOptions::default() };
    let on_progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let report = check::run(&cluster, &scope, opts, &on_progress).await;
    bar.finish_and_clear();
    let report = report.map_err(|e| match e {
        CheckError::NoVdi(n) => anyhow!("there is no VDI named {n:?} (see `sheepctl vdi list`)"),
        other => other.into(),
    })?;
    if json {
        print_json(&to_json(&report))?;
    } else {
        print!("{}", render(&report));
    }
    if !report.success() {
        bail!("{}", failure(&report));
    }
    Ok(())
}

fn progress() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("check [{bar:40}] {pos}/{len} objects eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// The one line of the error exit.
fn failure(r: &Report) -> String {
    if let Some(why) = &r.skipped {
        return format!("check skipped: {why}");
    }
    let mut parts = Vec::new();
    if r.unrepairable() > 0 {
        parts.push(format!("{} object(s) could not be repaired", r.unrepairable()));
    }
    if r.would_repair() > 0 {
        parts.push(format!("{} object(s) need repair (dry run: nothing changed)", r.would_repair()));
    }
    if !r.errors.is_empty() {
        parts.push(format!("{} part(s) of the check could not run", r.errors.len()));
    }
    parts.join("; ")
}

fn tie_note(p: &ObjectProblem, source: &str) -> &'static str {
    if p.replicas.first().is_some_and(|r| r.node == source) {
        " (tie: no majority among the valid copies, the primary's won)"
    } else {
        " (tie: no majority among the valid copies, the first valid replica's won)"
    }
}

fn action_text(p: &ObjectProblem) -> String {
    match &p.action {
        Action::None => "none (extra copies are left for recovery to remove)".into(),
        Action::WouldRepair { source, targets, tie } => {
            let tie = if *tie { tie_note(p, source) } else { "" };
            format!("would copy from {source} to {}{tie}", targets.join(", "))
        }
        Action::Repaired { source, targets, tie } => {
            let tie = if *tie { tie_note(p, source) } else { "" };
            format!("repaired: copied from {source} to {}{tie}", targets.join(", "))
        }
        Action::Settled => "none: consistent when checked again under the lock (a write was in flight)".into(),
        Action::Unrepairable(why) => format!("UNREPAIRABLE: {why}"),
    }
}

fn replicas_text(p: &ObjectProblem) -> String {
    let mut parts: Vec<String> = p
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{}{}={}", r.node, if i == 0 { " (primary)" } else { "" }, r.seen))
        .collect();
    for e in &p.extra {
        parts.push(format!("{e}=extra copy"));
    }
    parts.join("; ")
}

fn index_text(p: &ObjectProblem) -> String {
    p.index.map_or_else(|| "inode".into(), |i| i.to_string())
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    if r.skipped.is_none() && !r.problems.is_empty() {
        let rows: Vec<Vec<String>> = r
            .problems
            .iter()
            .map(|p| vec![p.oid.to_string(), p.vdi.clone(), index_text(p), replicas_text(p), action_text(p)])
            .collect();
        out.push_str(&table("", &["OID", "VDI", "INDEX", "REPLICAS", "ACTION"], &rows));
    }
    for e in &r.errors {
        out.push_str(&format!("problem: {e}\n"));
    }
    out.push_str(&r.summary());
    out.push('\n');
    out
}

fn action_json(a: &Action) -> Value {
    match a {
        Action::None => json!({ "kind": "none" }),
        Action::WouldRepair { source, targets, tie } => {
            json!({ "kind": "would_repair", "source": source, "targets": targets, "tie": tie })
        }
        Action::Repaired { source, targets, tie } => {
            json!({ "kind": "repaired", "source": source, "targets": targets, "tie": tie })
        }
        Action::Settled => json!({ "kind": "settled" }),
        Action::Unrepairable(why) => json!({ "kind": "unrepairable", "reason": why }),
    }
}

fn to_json(r: &Report) -> Value {
    let problems: Vec<Value> = r
        .problems
        .iter()
        .map(|p| {
            json!({
                "oid": p.oid.to_string(),
                "vdi": p.vdi,
                "index": p.index,
                "replicas": p
                    .replicas
                    .iter()
                    .map(|s| json!({ "node": s.node, "state": s.seen, "good": s.good }))
                    .collect::<Vec<_>>(),
                "extra": p.extra,
                "action": action_json(&p.action),
                "text": action_text(p),
            })
        })
        .collect();
    json!({
        "epoch": r.epoch,
        "dry_run": r.dry_run,
        "skipped": r.skipped,
        "vdis": r.vdis,
        "objects": r.objects,
        "repaired": r.repaired(),
        "would_repair": r.would_repair(),
        "unrepairable": r.unrepairable(),
        "extra_copies": r.extra_copies(),
        "errors": r.errors,
        "problems": problems,
        "ok": r.success(),
        "summary": r.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_client::check::ReplicaState;
    use sheep_core::object::{ObjectId, VdiId};

    fn problem(action: Action) -> ObjectProblem {
        let vid = VdiId::new(0x00ab_cdef).unwrap();
        let rep = |n: &str, seen: &str, good| ReplicaState { node: n.into(), seen: seen.into(), good };
        ObjectProblem {
            oid: ObjectId::data(vid, 3),
            vdi: "disk0".into(),
            index: Some(3),
            replicas: vec![rep("a:1", "ok (12345678)", true), rep("b:1", "missing", false)],
            extra: vec!["c:1".into()],
            action,
        }
    }

    #[test]
    fn check_report_renders_a_table_and_a_summary() {
        let r = Report {
            epoch: 4,
            vdis: 2,
            objects: 9,
            problems: vec![problem(Action::Repaired { source: "a:1".into(), targets: vec!["b:1".into()], tie: true })],
            ..Report::default()
        };
        let text = render(&r);
        assert!(text.contains("a:1 (primary)=ok (12345678); b:1=missing; c:1=extra copy"), "{text}");
        assert!(text
            .contains("repaired: copied from a:1 to b:1 (tie: no majority among the valid copies, the primary's won)"));
        assert!(text.ends_with(
            "checked 9 objects of 2 VDIs (epoch 4): 1 repaired, 0 unrepairable, 1 with extra \
            copies (left for recovery to remove)\n"
        ));
        assert!(r.success());
        let v = to_json(&r);
        assert_eq!(v["repaired"], 1);
        assert_eq!(v["problems"][0]["action"]["kind"], "repaired");
        assert_eq!(v["problems"][0]["index"], 3);
    }

    #[test]
    fn check_dry_run_with_problems_fails() {
        let r = Report {
            dry_run: true,
            problems: vec![problem(Action::WouldRepair {
                source: "a:1".into(),
                targets: vec!["b:1".into()],
                tie: false,
            })],
            ..Report::default()
        };
        assert!(!r.success());
        assert!(failure(&r).contains("need repair"));
        let r = Report { skipped: Some("recovery in progress on a:1".into()), ..Report::default() };
        assert!(!r.success());
        assert_eq!(render(&r), "check skipped: recovery in progress on a:1\n");
    }
}
