//! One storaged on its own (no groupd to join: it stays at epoch 0): it serves its API while
//! it tries to join, stops cleanly on SIGTERM, and its object operations over RPC.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sheep_client::ErrorCode;
use sheep_core::store::RecoveryStatus;
use sheep_tests::store::{self, all_and_stale, code_of, oid, pattern, StoreNode};
use sheep_tests::{block_on, Daemon, Loopback};

const OBJ: u32 = 1 << 20;

/// A storaged whose groupd is nowhere, its store in `dir/store`; `extra` arguments added.
fn start_alone(dir: &Path, net: &Loopback, extra: &[&str]) -> (Daemon, String) {
    let addr = net.free_addr(1);
    let mut args = vec![
        "--listen".to_string(),
        addr.clone(),
        "--data".into(),
        dir.join("store").display().to_string(),
        "--groupd".into(),
        net.free_addr(2),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    (Daemon::start("storaged", args, dir.join("storaged.log")), addr)
}

#[test]
fn serves_status_while_joining_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("store");
    let (mut d, addr) =
        start_alone(tmp.path(), &Loopback::new(), &["--zone", "4", "--weight", "2", "--join-timeout", "30"]);
    let (st, n_epochs) = block_on(async {
        let pool = store::pool();
        let node = StoreNode::new(&pool, &addr);
        let st = node.wait_listening().await;
        (st, node.epoch_log().await.unwrap().len())
    });
    assert_eq!(st.node.id, addr);
    assert_eq!(st.node.addr, addr);
    assert_eq!((st.node.zone, st.node.weight), (4, 2));
    assert_eq!(st.cluster_id, "");
    assert!(!st.joined);
    assert_eq!(st.session, 0);
    assert_eq!(st.data_dir, data.to_string_lossy());
    assert_eq!(n_epochs, 0);

    let config = std::fs::read_to_string(data.join("config")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(v["node_id"], addr.as_str());
    assert_eq!(v["cluster_id"], "");

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0), "storaged stops cleanly on SIGTERM");
}

#[test]
fn a_data_dir_it_cannot_write_is_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = sheep_tests::keys::command("storaged")
        .args(["--listen", &Loopback::new().free_addr(1), "--data"])
        .arg(file.join("store"))
        .args(["--groupd", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot create data dir"), "{err}");
}

#[test]
fn object_operations_over_rpc() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut proc, addr) = start_alone(tmp.path(), &Loopback::new(), &["--join-timeout", "300"]);
    block_on(async {
        let pool = store::pool();
        let c = StoreNode::new(&pool, &addr);
        c.wait_listening().await;
        let a = oid(0x10, 0);
        let b = oid(0x10, 1);

        // Missing objects.
        assert_eq!(code_of(c.read(0, a, 0, 1).await), ErrorCode::NoObject);
        assert_eq!(code_of(c.write(0, a, 0, b"x", false).await), ErrorCode::NoObject);
        assert_eq!(code_of(c.fetch(0, a).await), ErrorCode::NoObject);
        // Malformed requests.
        assert_eq!(code_of(c.read(0, 0, 0, 1).await), ErrorCode::BadRequest, "oid 0 names no VDI");
        assert_eq!(code_of(c.create(0, a, 1000, 0, 0, b"x").await), ErrorCode::BadRequest);
        assert_eq!(code_of(c.create(0, a, OBJ, a, 0, b"x").await), ErrorCode::BadRequest);
        assert_eq!(code_of(c.create(0, a, OBJ, 0, OBJ - 1, b"xy").await), ErrorCode::BadRequest);

        // Create, read, write across blocks, partial blocks.
        let mut model = vec![0u8; OBJ as usize];
        let d1 = pattern(10_000, 1);
        c.create(0, a, OBJ, 0, 3000, &d1).await.unwrap();
        model[3000..13_000].copy_from_slice(&d1);
        let d2 = pattern(5, 2);
        c.write(0, a, 4094, &d2, true).await.unwrap();
        model[4094..4099].copy_from_slice(&d2);
        assert_eq!(c.read(0, a, 0, 20_000).await.unwrap(), model[..20_000]);
        assert_eq!(c.read(0, a, 4095, 2).await.unwrap(), model[4095..4097]);
        assert_eq!(code_of(c.read(0, a, OBJ - 1, 2).await), ErrorCode::BadRequest);
        // createAndWrite on an existing object writes into it.
        c.create(0, a, OBJ, 0, 0, b"head").await.unwrap();
        model[..4].copy_from_slice(b"head");
        c.flush(0).await.unwrap();
        let whole = c.fetch(0, a).await.unwrap();
        assert!(!whole.is_stale());
        assert_eq!(whole.data, model);

        // Copy-on-write from a base held here.
        c.create(0, b, OBJ, a, 0, b"child").await.unwrap();
        let mut child = model.clone();
        child[..5].copy_from_slice(b"child");
        assert_eq!(c.fetch(0, b).await.unwrap().data, child);
        assert_eq!(code_of(c.create(0, oid(0x10, 2), OBJ, oid(0x11, 0), 0, b"").await), ErrorCode::NoObject);

        assert_eq!(all_and_stale(&c.list(0).await.unwrap()), (vec![a, b], vec![]));
        let st = c.stat().await.unwrap();
        assert_eq!(st.objects, 2);
        assert!(st.used > 0 && st.used < 4 * u64::from(OBJ), "used {}", st.used);
        assert!(st.capacity >= st.free && st.free > 0);
        let idle = RecoveryStatus::default();
        assert_eq!(c.recovery().await.unwrap(), idle);

        // Zero: ragged ends, whole blocks punched, FUA or not; the errors of write.
        c.zero(0, b, 3000, 70_000, true).await.unwrap();
        child[3000..73_000].fill(0);
        c.zero(0, b, 100, 10, false).await.unwrap();
        child[100..110].fill(0);
        assert_eq!(c.read(0, b, 0, 80_000).await.unwrap(), child[..80_000]);
        assert_eq!(c.fetch(0, b).await.unwrap().data, child);
        assert_eq!(code_of(c.zero(0, b, OBJ - 1, 2, false).await), ErrorCode::BadRequest);
        assert_eq!(code_of(c.zero(0, b, OBJ, 1, true).await), ErrorCode::BadRequest);
        assert_eq!(code_of(c.zero(0, oid(0x10, 9), 0, 1, false).await), ErrorCode::NoObject);
        assert_eq!(code_of(c.zero(0, 0, 0, 1, false).await), ErrorCode::BadRequest, "oid 0 names no VDI");
        assert_eq!(all_and_stale(&c.list(0).await.unwrap()).0, vec![a, b], "zero creates nothing");
        let used_before = c.stat().await.unwrap().used;
        c.zero(0, b, 0, OBJ, false).await.unwrap();
        assert_eq!(c.read(0, b, 0, OBJ).await.unwrap(), vec![0; OBJ as usize]);
        let used_after = c.stat().await.unwrap().used;
        assert!(used_after <= used_before, "zeroing a whole object frees space: {used_before} -> {used_after}");

        c.remove(0, b).await.unwrap();
        c.remove(0, b).await.unwrap();
        assert_eq!(all_and_stale(&c.list(0).await.unwrap()).0, vec![a]);

        // A flipped byte on disk: an error, never data; the other blocks still read.
        let path = tmp.path().join(format!("store/obj/{a:016x}"));
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let data_off = 4096; // 64 bytes of header + 256 crcs, rounded up to a block
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, data_off + 5000).unwrap();
        f.write_all_at(&[byte[0] ^ 1], data_off + 5000).unwrap();
        assert_eq!(code_of(c.read(0, a, 4096, 4096).await), ErrorCode::Corrupt);
        assert_eq!(code_of(c.fetch(0, a).await), ErrorCode::Corrupt);
        assert_eq!(c.read(0, a, 0, 4096).await.unwrap(), model[..4096]);
        f.write_all_at(&byte, data_off + 5000).unwrap();
        assert_eq!(c.read(0, a, 4096, 4096).await.unwrap(), model[4096..8192]);
    });

    // After a restart, old objects are never served to clients: they wait in .stale/ (and
    // are still given to peers).
    proc.kill();
    proc.restart();
    block_on(async {
        let pool = store::pool();
        let c = StoreNode::new(&pool, &addr);
        c.wait_listening().await;
        let a = oid(0x10, 0);
        assert_eq!(code_of(c.read(0, a, 0, 1).await), ErrorCode::NoObject);
        assert_eq!(all_and_stale(&c.list(0).await.unwrap()), (vec![a], vec![a]));
        let whole = c.fetch(0, a).await.unwrap();
        assert!(whole.is_stale());
        assert_eq!(&whole.data[..4], b"head");
        assert_eq!(c.stat().await.unwrap().objects, 0);
    });
}

#[test]
fn a_newer_epoch_waits_then_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_proc, addr) = start_alone(tmp.path(), &Loopback::new(), &["--join-timeout", "300"]);
    block_on(async {
        let pool = store::pool();
        let c = StoreNode::new(&pool, &addr);
        c.wait_listening().await;
        let t = Instant::now();
        // A read and a zero from epoch 3, both held, then both refused.
        let (r, z) = futures::join!(c.read(3, oid(0x20, 0), 0, 1), c.zero(3, oid(0x20, 0), 0, 1, false));
        assert_eq!(code_of(r), ErrorCode::StaleEpoch);
        assert_eq!(code_of(z), ErrorCode::StaleEpoch);
        let waited = t.elapsed();
        assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(15), "waited {waited:?}");
    });
}
