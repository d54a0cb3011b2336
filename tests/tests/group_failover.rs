//! Three groupd: one master, two submasters; the master dies, a submaster takes over with the
//! log intact; the dead one comes back from its data dir as a submaster.

use std::time::Duration;

use sheep_core::group::{ClusterInfo, ClusterStatus, MemberRole};
use sheep_tests::{wait_until, Cluster};

const T: Duration = Duration::from_secs(30);

/// The replicated part of `info`: identical on every groupd that applied the same log.
fn replicated(i: &ClusterInfo) -> String {
    serde_json::to_string(&(&i.status, &i.config, &i.epochs, &i.sessions, &i.locks, i.applied_seq)).unwrap()
}

#[test]
fn master_dies_submaster_takes_over_log_intact() {
    let mut c = Cluster::new();
    let info = c.add_group(3);
    let roles: Vec<MemberRole> = info.members.iter().map(|m| m.role).collect();
    assert_eq!(roles.iter().filter(|r| **r == MemberRole::Master).count(), 1, "{roles:?}");
    assert_eq!(roles.iter().filter(|r| **r == MemberRole::Submaster).count(), 2, "{roles:?}");

    c.ctl_ok(&["cluster", "format", "--copies", "2"]);
    // Some history to keep: storage nodes joining make epochs.
    for _ in 0..2 {
        c.add_storaged();
    }
    c.wait_epoch_nodes(0, 2, ClusterStatus::Running);
    let before = wait_until(T, "all groupd to agree", || {
        let infos: Vec<ClusterInfo> = (0..3).map(|i| c.info_from(i)).collect::<Result<_, _>>()?;
        let r0 = replicated(&infos[0]);
        if infos.iter().all(|i| replicated(i) == r0) {
            Ok(infos[0].clone())
        } else {
            Err("differ".into())
        }
    });
    assert_eq!(before.config.as_ref().unwrap().copies, 2);

    let old = c.master(0).expect("a master");
    c.groupds[old].kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = wait_until(T, "a new master", || match c.master(survivors[0]) {
        Some(m) if m != old => Ok(m),
        other => Err(format!("master {other:?}")),
    });
    assert!(survivors.contains(&new));

    // Nothing committed is lost, and the survivors agree.
    let after = wait_until(T, "survivors to agree", || {
        let a = c.info_from(survivors[0])?;
        let b = c.info_from(survivors[1])?;
        if replicated(&a) == replicated(&b) {
            Ok(a)
        } else {
            Err("differ".into())
        }
    });
    assert_eq!(after.config, before.config);
    assert_eq!(after.epochs, before.epochs, "the failover itself expires no session");
    assert!(after.applied_seq >= before.applied_seq);

    // The cluster still takes changes under the new master.
    c.add_storaged();
    c.wait_epoch_nodes(new, 3, ClusterStatus::Running);

    // The old master comes back from its data dir and rejoins as a submaster.
    c.groupds[old].restart();
    let info = wait_until(T, "old master back as submaster", || {
        let i = c.info_from(old)?;
        let me = i.members.iter().find(|m| m.addr == c.groupd_addrs[old]).ok_or("not a member")?;
        let master = c.info_from(new)?;
        if me.role == MemberRole::Submaster && replicated(&i) == replicated(&master) {
            Ok(i)
        } else {
            Err(format!("role {:?}, applied {} vs {}", me.role, i.applied_seq, master.applied_seq))
        }
    });
    assert_eq!(info.epochs.last().unwrap().nodes.len(), 3);
}

#[test]
fn fourth_groupd_is_a_non_voting_member() {
    let mut c = Cluster::new();
    for _ in 0..4 {
        c.add_groupd();
    }
    let info = c.wait_group(0, 4, 3);
    let members = info.members.iter().filter(|m| m.role == MemberRole::Member).count();
    assert_eq!(members, 1, "{:?}", info.members);
    // It serves reads and forwards writes.
    let out = c.ctl_at(&c.groupd_addrs[3], &["cluster", "format"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(T, "format seen everywhere", || {
        let infos: Vec<ClusterInfo> = (0..4).map(|i| c.info_from(i)).collect::<Result<_, _>>()?;
        if infos.iter().all(|i| i.status == ClusterStatus::Running) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
}
