//! Fenced locks across real processes: an NBD export whose VDI lock is taken away by a
//! forced unlock keeps its session and keeps serving, but once another export holds the
//! lock, storage refuses its writes (EPERM through NBD) and the new holder's data stays
//! intact. Also `sheepctl vdi lock list/unlock` and `vdi write` under the lock.

use std::time::{Duration, Instant};

use sheep_tests::nbd::{qemu_io, qemu_io_ok, serving};
use sheep_tests::{Cluster, Daemon};

/// One groupd, three storaged, 3 copies, VDI `v` of 16 MiB.
fn cluster() -> Cluster {
    let c = Cluster::formatted(3, 3, &[]);
    c.ctl_ok(&["vdi", "create", "v", "16M"]);
    c
}

/// `sheepctl export v` on a free address of the cluster's loopback block; its nbd:// URL.
fn export(c: &Cluster, log: &str) -> (Daemon, String) {
    serving(c, "v", log)
}

/// The locks as `sheepctl vdi lock list --json` shows them: (vdi, session, token).
fn locks(c: &Cluster) -> Vec<(String, u64, u64)> {
    let out = c.ctl_ok(&["--json", "vdi", "lock", "list"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    rows.as_array()
        .expect("a list")
        .iter()
        .map(|r| (r["vdi"].as_str().unwrap().to_string(), r["session"].as_u64().unwrap(), r["token"].as_u64().unwrap()))
        .collect()
}

#[test]
fn a_writer_whose_lock_was_taken_is_refused_and_the_new_holders_data_stays() {
    let c = cluster();
    let (mut a, url_a) = export(&c, "export-a.log");
    let held = locks(&c);
    assert_eq!(held.len(), 1, "{held:?}");
    let (_, _, token_a) = held[0].clone();
    qemu_io_ok(&url_a, &["write -P 0xaa 0 4k"]);

    // A forced unlock: A's session (and its export) live on, the lock is gone.
    let text = c.ctl_ok(&["vdi", "lock", "unlock", "v"]);
    assert!(text.contains("unlocked VDI v") && text.contains("nbd-export"), "{text}");
    assert!(locks(&c).is_empty());
    let again = c.ctl(&["vdi", "lock", "unlock", "v"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not locked"));

    // B may now export v, and writes.
    let (_b, url_b) = export(&c, "export-b.log");
    let held = locks(&c);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].2 > token_a, "B's token {} is newer than A's {token_a}", held[0].2);
    qemu_io_ok(&url_b, &["write -P 0xbb 4M 4k"]);

    // A still serves, but storage refuses its writes: EPERM, at once (not retried).
    assert!(a.is_running(), "A lost only its lock, not its session:\n{}", a.log_tail());
    let started = Instant::now();
    let (ok, text) = qemu_io(&url_a, &["write -P 0xcc 0 4k"]);
    assert!(!ok && text.contains("Operation not permitted"), "A's write after losing its lock:\n{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "refused without the retry time");
    // Zeroing is a write too.
    let (ok, text) = qemu_io(&url_a, &["write -z 0 4k"]);
    assert!(!ok && text.contains("Operation not permitted"), "A's write-zeroes:\n{text}");
    // Reads still work through A; B's view is intact.
    qemu_io_ok(&url_a, &["read -P 0xaa 0 4k"]);
    qemu_io_ok(&url_b, &["read -P 0xaa 0 4k", "read -P 0xbb 4M 4k"]);

    // `vdi write` takes the lock too: refused while B holds it, naming B.
    let out = c.ctl_stdin(&["vdi", "write", "v", "8M"], b"x");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("VDI v is locked by session") && err.contains("nbd-export"), "{err}");
}

#[test]
fn vdi_write_holds_the_lock_for_its_duration() {
    let c = cluster();
    let out = c.ctl_stdin(&["vdi", "write", "v", "1M"], &[0x5a; 8192]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Released afterwards: nothing held, and an export can lock it.
    assert!(locks(&c).is_empty());
    let (_e, url) = export(&c, "export.log");
    qemu_io_ok(&url, &["read -P 0x5a 1M 8k"]);
    let text = c.ctl_ok(&["vdi", "lock", "list"]);
    assert!(text.starts_with("VDI") && text.contains("nbd-export"), "{text}");
}
