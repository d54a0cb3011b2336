//! `sheepctl vdi snapshot | clone | rollback | resize | tree | setattr | getattr`, the
//! deletion of a snapshot with the reclaim of what no VDI reads any more (and what the
//! deletion of a whole VDI, in `vdi.rs`, reports), and the list of VDIs with their snapshots
//! and space.

use std::io::{Read, Write};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sheep_client::group::{GroupClient, Watcher};
use sheep_client::vdi::lifecycle::{self, HolderRequest};
use sheep_client::vdi::reclaim::{self, Reclaim};
use sheep_client::vdi::{CallLimits, Cluster, Vdi, VdiOptions};
use sheep_core::group::{EventKind, SessionKind};
use sheep_core::namespace::VdiEntry;
use sheep_core::object::{validate_tag, validate_vdi_name};
use sheep_core::size::format_size;
use ublk_dev::attach_lock::{AttachError, AttachLock};

use crate::output::{print_json, table, time};

/// How long `snapshot` waits for the daemon holding an attached VDI to take it: longer than
/// the daemon's own bounds (its requests in flight drain, then its flush and its inode write
/// each retry for at most 30 s, the snapshot's proposal for 8 s), so that a snapshot it takes
/// late, after faults, is rarely reported as not taken.
const HOLDER_WAIT: Duration = Duration::from_secs(120);

fn working<'a>(vdis: &'a [VdiEntry], name: &str) -> Result<&'a VdiEntry> {
    vdis.iter()
        .find(|v| v.name == name && !v.is_snapshot())
        .with_context(|| format!("there is no VDI named {name:?} (see `sheepctl vdi list`)"))
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    snapshot: &'a VdiEntry,
    working: &'a VdiEntry,
    taken_by: &'a str,
}

/// `vdi snapshot NAME --tag TAG`: by the holder if the VDI is attached, else here under the
/// VDI's lock.
pub async fn snapshot(groupd: &str, name: &str, tag: &str, json: bool) -> Result<()> {
    validate_vdi_name(name)?;
    validate_tag(tag)?;
    let group = Rc::new(crate::client(groupd)?);
    let (vdis, _) = group.vdi_list().await?;
    working(&vdis, name)?;
    if vdis.iter().any(|v| v.name == name && v.snapshot.as_deref() == Some(tag)) {
        bail!("VDI {name:?} has a snapshot {tag:?} already");
    }
    let info = group.info().await?;
    let (snap, work, by) = match info.locks.iter().find(|l| l.lock.vdi == name) {
        Some(l) => {
            let (s, w) = ask_holder(&group, name, tag, info.applied_seq + 1).await?;
            (s, w, l.holder.clone())
        }
        None => {
            let holder = format!("sheepctl vdi snapshot pid {} on {}", std::process::id(), ublk_dev::hostname());
            let lock = match AttachLock::acquire(group.clone(), name, &holder).await {
                Ok(l) => l,
                Err(AttachError::Held(msg)) => bail!("{msg}"),
                Err(e) => return Err(e.into()),
            };
            let taken = async {
                let cluster = Cluster::connect(group.clone(), CallLimits::default()).await?;
                let vdi = Vdi::open(cluster, name, VdiOptions { fence: lock.token(), ..VdiOptions::default() }).await?;
                Ok::<_, anyhow::Error>(lifecycle::snapshot(&vdi, &group, lock.session(), tag).await?)
            }
            .await;
            lock.release().await;
            let (s, w) = taken?;
            (s, w, "sheepctl".to_string())
        }
    };
    if json {
        return print_json(&SnapshotOut { snapshot: &snap, working: &work, taken_by: &by });
    }
    println!("snapshot {} taken (id {}; the VDI goes on as id {}; taken by {by})", snap.label(), snap.vid, work.vid);
    Ok(())
}

/// Asks the daemon holding `name` to take the snapshot, and waits for it in the total order.
async fn ask_holder(group: &Rc<GroupClient>, name: &str, tag: &str, from: u64) -> Result<(VdiEntry, VdiEntry)> {
    let kind = SessionKind::Client { name: format!("sheepctl vdi snapshot pid {}", std::process::id()) };
    let (session, _) = group.open_session(&kind, "").await?;
    let asked = async {
        group.propose(session, &HolderRequest::Snapshot { vdi: name.into(), tag: tag.into() }.encode()).await?;
        let mut watch = Watcher::new(group.clone(), from, 256, Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + HOLDER_WAIT;
        loop {
            let batch = match tokio::time::timeout_at(deadline, watch.next_batch()).await {
                Ok(b) => b?,
                Err(_) => bail!(
                    "VDI {name:?} is attached, and its daemon has not answered within {}s (its I/O may be held by \
                        unreachable nodes, or it is an older ublk-dev); it may still take snapshot {tag:?}: see \
                        `sheepctl vdi list`",
                    HOLDER_WAIT.as_secs()
                ),
            };
            for e in batch {
                match e.kind {
                    EventKind::VdiSnapshotted { snapshot, working }
                        if snapshot.name == name && snapshot.snapshot.as_deref() == Some(tag) =>
                    {
                        return Ok((snapshot, working));
                    }
                    EventKind::Broadcast { payload, .. } => {
                        let failed = HolderRequest::decode(&payload);
                        if let Some(HolderRequest::SnapshotFailed { vdi, tag: t, error }) = failed {
                            if vdi == name && t == tag {
                                bail!("the daemon holding VDI {name:?} could not take the snapshot: {error}");
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    .await;
    if let Err(e) = group.close_session(session).await {
        tracing::debug!("closing session {session}: {e}");
    }
    asked
}

pub async fn clone(groupd: &str, name: &str, tag: &str, new_name: &str, json: bool) -> Result<()> {
    validate_vdi_name(name)?;
    validate_tag(tag)?;
    validate_vdi_name(new_name)?;
    let v = crate::client(groupd)?.vdi_clone(name, tag, new_name).await?;
    if json {
        return print_json(&v);
    }
    println!("cloned {name}@{tag} as VDI {} (id {}, {})", v.name, v.vid, format_size(v.size));
    Ok(())
}

/// `vdi rollback`: the working VDI it replaces is deleted, and with it what only it read.
pub async fn rollback(groupd: &str, name: &str, tag: &str, json: bool) -> Result<()> {
    validate_vdi_name(name)?;
    validate_tag(tag)?;
    let group = Rc::new(crate::client(groupd)?);
    let cluster = Cluster::connect(group.clone(), CallLimits::default()).await?;
    let replaced = |e: &VdiEntry| e.name == name && !e.is_snapshot();
    let (v, r) = reclaim::deleting(&cluster, replaced, || group.vdi_rollback(name, tag)).await?;
    if json {
        print_json(&Deleted { entry: &v, objects_removed: r.removed, incomplete: r.incomplete.as_deref() })?;
    } else {
        println!(
            "VDI {name} rolled back to snapshot {tag} (now id {}, {}); {}",
            v.vid,
            format_size(v.size),
            removed(&r)
        );
    }
    incomplete(&r, &format!("VDI {name} is rolled back"))
}

/// `vdi resize`: an attached device follows the new size by itself. A VDI that has the size
/// already is left alone (nothing is proposed), and said so.
pub async fn resize(groupd: &str, name: &str, size: u64, json: bool) -> Result<()> {
    validate_vdi_name(name)?;
    let client = crate::client(groupd)?;
    let (vdis, _) = client.vdi_list().await?;
    let before = working(&vdis, name)?;
    if before.size == size {
        if json {
            return print_json(before);
        }
        println!("{}", resized(name, before.size, size));
        return Ok(());
    }
    let v = client.vdi_resize(name, size).await?;
    if json {
        return print_json(&v);
    }
    println!("{}", resized(name, before.size, v.size));
    Ok(())
}

/// What `vdi resize` says, from the size before and after.
pub fn resized(name: &str, before: u64, after: u64) -> String {
    if before == after {
        format!("VDI {name} is {} ({after} bytes) already: nothing changed", format_size(after))
    } else {
        format!("VDI {name} is now {} ({after} bytes; was {})", format_size(after), format_size(before))
    }
}

/// What `vdi delete` and `vdi rollback` print with `--json`: the entry as before, and what
/// was given back.
#[derive(Serialize)]
pub struct Deleted<'a, T: Serialize> {
    #[serde(flatten)]
    pub entry: &'a T,
    pub objects_removed: usize,
    pub incomplete: Option<&'a str>,
}

pub fn removed(r: &Reclaim) -> String {
    format!("{} object(s) no VDI reads any more removed", r.removed)
}

/// An error when the reclaim stopped short (the deletion itself is done: `done` says what).
pub fn incomplete(r: &Reclaim, done: &str) -> Result<()> {
    match &r.incomplete {
        None => Ok(()),
        Some(why) => bail!(
            "{done}, but not every object that no VDI reads any more was removed: {why}; what is left goes when the \
                VDI and whatever descends from it are deleted"
        ),
    }
}

/// `vdi delete NAME --snapshot TAG`: deletes the snapshot, then removes the objects no live
/// VDI reads any more (its own, and its deleted ancestors' that it was the last to read).
pub async fn delete_snapshot(groupd: &str, name: &str, tag: &str, json: bool) -> Result<()> {
    validate_vdi_name(name)?;
    validate_tag(tag)?;
    let group = Rc::new(crate::client(groupd)?);
    let cluster = Cluster::connect(group.clone(), CallLimits::default()).await?;
    let this = |e: &VdiEntry| e.name == name && e.snapshot.as_deref() == Some(tag);
    let (gone, r) = reclaim::deleting(&cluster, this, || group.vdi_delete_snapshot(name, tag)).await?;
    if json {
        let out = serde_json::json!({ "deleted": gone, "objects_removed": r.removed, "incomplete": r.incomplete });
        print_json(&out)?;
    } else {
        println!("deleted snapshot {} (id {}); {}", gone.label(), gone.vid, removed(&r));
    }
    incomplete(&r, &format!("snapshot {} is deleted", gone.label()))
}

/// One row of `vdi list`.
#[derive(Serialize)]
pub struct ListRow {
    pub name: String,
    pub tag: Option<String>,
    pub vid: String,
    pub parent: Option<String>,
    pub size: u64,
    pub copies: u8,
    /// Bytes of objects this VDI owns (allocated by its writes), one copy.
    pub used: u64,
    /// Bytes it reads from ancestors' objects (shared with a snapshot), one copy.
    pub shared: u64,
    pub created_ms: u64,
}

pub async fn list(groupd: &str, json: bool) -> Result<()> {
    let group = Rc::new(crate::client(groupd)?);
    let (mut vdis, _) = group.vdi_list().await?;
    // Per name its snapshots, oldest first, then the working VDI (which starts when the last
    // snapshot was taken).
    vdis.sort_by(|a, b| (&a.name, !a.is_snapshot(), a.created_ms).cmp(&(&b.name, !b.is_snapshot(), b.created_ms)));
    let cluster =
        if vdis.is_empty() { None } else { Some(Cluster::connect(group.clone(), CallLimits::default()).await?) };
    let mut rows = Vec::new();
    for v in &vdis {
        let (used, shared) = match &cluster {
            Some(c) => space(c, v).await?,
            None => (0, 0),
        };
        rows.push(ListRow {
            name: v.name.clone(),
            tag: v.snapshot.clone(),
            vid: v.vid.to_string(),
            parent: v.parent.map(|p| p.to_string()),
            size: v.size,
            copies: v.copies,
            used,
            shared,
            created_ms: v.created_ms,
        });
    }
    if json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no VDIs");
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.tag.clone().unwrap_or_else(|| "-".into()),
                r.vid.clone(),
                format_size(r.size),
                format_size(r.used),
                format_size(r.shared),
                r.copies.to_string(),
                time(r.created_ms),
            ]
        })
        .collect();
    print!("{}", table("", &["NAME", "SNAPSHOT", "ID", "SIZE", "USED", "SHARED", "COPIES", "CREATED"], &cells));
    Ok(())
}

/// (owned, shared) bytes of `v`, from its table.
async fn space(cluster: &Rc<Cluster>, v: &VdiEntry) -> Result<(u64, u64)> {
    let vdi = Vdi::open_entry(cluster.clone(), VdiEntry { snapshot: None, ..v.clone() }, VdiOptions::default()).await?;
    let (mut own, mut shared) = (0u64, 0u64);
    for i in 0..vdi.max_objects() {
        match vdi.owner(i) {
            Some(o) if o == v.vid => own += 1,
            Some(_) => shared += 1,
            None => {}
        }
    }
    Ok((own * vdi.object_size(), shared * vdi.object_size()))
}

/// `vdi tree`: every VDI under the snapshot it goes on from.
pub async fn tree(groupd: &str, json: bool) -> Result<()> {
    let (vdis, _) = crate::client(groupd)?.vdi_list().await?;
    if json {
        let nodes: Vec<_> = vdis
            .iter()
            .map(|v| {
                let parent = v.parent.map(|p| p.to_string());
                serde_json::json!({ "label": v.label(), "vid": v.vid.to_string(), "parent": parent })
            })
            .collect();
        return print_json(&nodes);
    }
    let known = |p| vdis.iter().any(|v| v.vid == p);
    let mut roots: Vec<&VdiEntry> = vdis.iter().filter(|v| v.parent.is_none_or(|p| !known(p))).collect();
    roots.sort_by_key(|v| (v.name.clone(), v.created_ms));
    let mut out = String::new();
    for r in roots {
        draw(&vdis, r, "", true, true, &mut out);
    }
    print!("{out}");
    Ok(())
}

fn draw(all: &[VdiEntry], v: &VdiEntry, prefix: &str, last: bool, root: bool, out: &mut String) {
    let what = if v.is_snapshot() { "snapshot" } else { "working" };
    let line = if root {
        String::new()
    } else if last {
        "└─ ".into()
    } else {
        "├─ ".into()
    };
    out.push_str(&format!("{prefix}{line}{} ({what}, id {}, {})\n", v.label(), v.vid, format_size(v.size)));
    let mut kids: Vec<&VdiEntry> = all.iter().filter(|c| c.parent == Some(v.vid)).collect();
    kids.sort_by_key(|c| (c.name.clone(), c.created_ms));
    let next = if root { String::new() } else { format!("{prefix}{}", if last { "   " } else { "│  " }) };
    for (i, k) in kids.iter().enumerate() {
        draw(all, k, &next, i + 1 == kids.len(), false, out);
    }
}

/// `vdi setattr NAME KEY [VALUE]`: the value from stdin when absent.
pub async fn setattr(
    groupd: &str,
    name: &str,
    key: &str,
    value: Option<&str>,
    exclusive: bool,
    delete: bool,
) -> Result<()> {
    validate_vdi_name(name)?;
    let client = crate::client(groupd)?;
    if delete {
        if value.is_some() {
            bail!("--delete takes no VALUE");
        }
        client.vdi_set_attr(name, key, None, false).await?;
        return Ok(());
    }
    let bytes = match value {
        Some(v) => v.as_bytes().to_vec(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(sheep_core::namespace::MAX_ATTR_VALUE as u64 + 1)
                .read_to_end(&mut buf)
                .context("cannot read the value from stdin")?;
            buf
        }
    };
    client.vdi_set_attr(name, key, Some(&bytes), exclusive).await?;
    Ok(())
}

/// `vdi getattr NAME KEY [--raw]`: the value on stdout, with a newline after it unless it
/// ends with one or `--raw` asks for its bytes exactly.
pub async fn getattr(groupd: &str, name: &str, key: &str, raw: bool) -> Result<()> {
    validate_vdi_name(name)?;
    let value = crate::client(groupd)?.vdi_get_attr(name, key).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&attr_output(value, raw))?;
    out.flush()?;
    Ok(())
}

/// What `vdi getattr` prints of `value`: a newline added unless it ends with one or `raw`.
pub fn attr_output(mut value: Vec<u8>, raw: bool) -> Vec<u8> {
    if !raw && value.last() != Some(&b'\n') {
        value.push(b'\n');
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getattr_ends_its_value_with_a_newline_unless_raw() {
        assert_eq!(attr_output(b"alice".to_vec(), false), b"alice\n");
        assert_eq!(attr_output(b"{\"cpus\": 2}\n".to_vec(), false), b"{\"cpus\": 2}\n", "one newline, not two");
        assert_eq!(attr_output(Vec::new(), false), b"\n");
        assert_eq!(attr_output(b"alice".to_vec(), true), b"alice");
        assert_eq!(attr_output(vec![0, 1, 0xff], true), vec![0, 1, 0xff], "--raw: the bytes exactly");
        assert!(attr_output(Vec::new(), true).is_empty());
    }

    #[test]
    fn a_resize_to_the_same_size_says_nothing_changed() {
        assert_eq!(resized("v", 1 << 30, 1 << 30), "VDI v is 1.0 GiB (1073741824 bytes) already: nothing changed");
        assert_eq!(resized("v", 1 << 30, 2 << 30), "VDI v is now 2.0 GiB (2147483648 bytes; was 1.0 GiB)");
    }
}
