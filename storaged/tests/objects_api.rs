//! The object operations of one storaged, on its own (no groupd: it stays at epoch 0).

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::*;

const OBJ: u32 = 1 << 20;

fn start(dir: &std::path::Path, addr: &str) -> Proc {
    let nowhere = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let args = vec![
        "--listen".to_string(),
        addr.to_string(),
        "--data".into(),
        dir.join("store").display().to_string(),
        "--groupd".into(),
        nowhere,
        "--join-timeout".into(),
        "300".into(),
    ];
    Proc::start("storaged", args, dir.join("storaged.log"))
}

#[test]
fn object_operations_over_rpc() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let mut proc = start(tmp.path(), &addr);
    let (rt, local) = runtime();
    local.block_on(&rt, async {
        let conn = connect(&addr).await;
        let c = conn.client();
        let a = oid(0x10, 0);
        let b = oid(0x10, 1);

        // Missing objects.
        assert_eq!(code_of(read(&c, 0, a, 0, 1).await), "noObject");
        assert_eq!(code_of(write(&c, 0, a, 0, b"x", false).await), "noObject");
        assert_eq!(code_of(fetch(&c, 0, a).await), "noObject");
        // Malformed requests.
        assert_eq!(code_of(read(&c, 0, 0, 0, 1).await), "badRequest", "oid 0 names no VDI");
        assert_eq!(code_of(create(&c, 0, a, 1000, 0, 0, b"x").await), "badRequest");
        assert_eq!(code_of(create(&c, 0, a, OBJ, a, 0, b"x").await), "badRequest");
        assert_eq!(code_of(create(&c, 0, a, OBJ, 0, OBJ - 1, b"xy").await), "badRequest");

        // Create, read, write across blocks, partial blocks.
        let mut model = vec![0u8; OBJ as usize];
        let d1 = pattern(10_000, 1);
        create(&c, 0, a, OBJ, 0, 3000, &d1).await.unwrap();
        model[3000..13_000].copy_from_slice(&d1);
        let d2 = pattern(5, 2);
        write(&c, 0, a, 4094, &d2, true).await.unwrap();
        model[4094..4099].copy_from_slice(&d2);
        assert_eq!(read(&c, 0, a, 0, 20_000).await.unwrap(), model[..20_000]);
        assert_eq!(read(&c, 0, a, 4095, 2).await.unwrap(), model[4095..4097]);
        assert_eq!(code_of(read(&c, 0, a, OBJ - 1, 2).await), "badRequest");
        // createAndWrite on an existing object writes into it.
        create(&c, 0, a, OBJ, 0, 0, b"head").await.unwrap();
        model[..4].copy_from_slice(b"head");
        flush(&c, 0).await.unwrap();
        let (whole, stale) = fetch(&c, 0, a).await.unwrap();
        assert!(!stale);
        assert_eq!(whole, model);

        // Copy-on-write from a base held here.
        create(&c, 0, b, OBJ, a, 0, b"child").await.unwrap();
        let mut child = model.clone();
        child[..5].copy_from_slice(b"child");
        assert_eq!(fetch(&c, 0, b).await.unwrap().0, child);
        assert_eq!(code_of(create(&c, 0, oid(0x10, 2), OBJ, oid(0x11, 0), 0, b"").await), "noObject");

        let (oids, stale) = list(&c, 0).await.unwrap();
        assert_eq!((oids, stale), (vec![a, b], vec![]));
        let (capacity, used, free, objects) = stat(&c).await.unwrap();
        assert_eq!(objects, 2);
        assert!(used > 0 && used < 4 * u64::from(OBJ), "used {used}");
        assert!(capacity >= free && free > 0);
        assert_eq!(recovery(&c).await.unwrap(), (0, 0, 0, false, false));

        // Zero: ragged ends, whole blocks punched, FUA or not; the errors of write.
        zero(&c, 0, b, 3000, 70_000, true).await.unwrap();
        child[3000..73_000].fill(0);
        zero(&c, 0, b, 100, 10, false).await.unwrap();
        child[100..110].fill(0);
        assert_eq!(read(&c, 0, b, 0, 80_000).await.unwrap(), child[..80_000]);
        assert_eq!(fetch(&c, 0, b).await.unwrap().0, child);
        assert_eq!(code_of(zero(&c, 0, b, OBJ - 1, 2, false).await), "badRequest");
        assert_eq!(code_of(zero(&c, 0, b, OBJ, 1, true).await), "badRequest");
        assert_eq!(code_of(zero(&c, 0, oid(0x10, 9), 0, 1, false).await), "noObject");
        assert_eq!(code_of(zero(&c, 0, 0, 0, 1, false).await), "badRequest", "oid 0 names no VDI");
        assert_eq!(list(&c, 0).await.unwrap().0, vec![a, b], "zero creates nothing");
        let used_before = stat(&c).await.unwrap().1;
        zero(&c, 0, b, 0, OBJ, false).await.unwrap();
        assert_eq!(read(&c, 0, b, 0, OBJ).await.unwrap(), vec![0; OBJ as usize]);
        let used_after = stat(&c).await.unwrap().1;
        assert!(used_after <= used_before, "zeroing a whole object frees space: {used_before} -> {used_after}");

        remove(&c, 0, b).await.unwrap();
        remove(&c, 0, b).await.unwrap();
        assert_eq!(list(&c, 0).await.unwrap().0, vec![a]);

        // A flipped byte on disk: an error, never data; the other blocks still read.
        let path = tmp.path().join(format!("store/obj/{a:016x}"));
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let data_off = 4096; // 64 bytes of header + 256 crcs, rounded up to a block
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, data_off + 5000).unwrap();
        f.write_all_at(&[byte[0] ^ 1], data_off + 5000).unwrap();
        assert_eq!(code_of(read(&c, 0, a, 4096, 4096).await), "corrupt");
        assert_eq!(code_of(fetch(&c, 0, a).await), "corrupt");
        assert_eq!(read(&c, 0, a, 0, 4096).await.unwrap(), model[..4096]);
        f.write_all_at(&byte, data_off + 5000).unwrap();
        assert_eq!(read(&c, 0, a, 4096, 4096).await.unwrap(), model[4096..8192]);
    });

    // After a restart, old objects are never served to clients: they wait in .stale/ (and
    // are still given to peers).
    proc.kill();
    proc.restart();
    local.block_on(&rt, async {
        let conn = connect(&addr).await;
        let c = conn.client();
        let a = oid(0x10, 0);
        assert_eq!(code_of(read(&c, 0, a, 0, 1).await), "noObject");
        assert_eq!(list(&c, 0).await.unwrap(), (vec![a], vec![a]));
        let (whole, stale) = fetch(&c, 0, a).await.unwrap();
        assert!(stale);
        assert_eq!(&whole[..4], b"head");
        assert_eq!(stat(&c).await.unwrap().3, 0);
    });
}

#[test]
fn a_newer_epoch_waits_then_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let _proc = start(tmp.path(), &addr);
    let (rt, local) = runtime();
    local.block_on(&rt, async {
        let conn = connect(&addr).await;
        let c = conn.client();
        let t = Instant::now();
        // A read and a zero from epoch 3, both held, then both refused.
        let (r, z) = futures::join!(read(&c, 3, oid(0x20, 0), 0, 1), zero(&c, 3, oid(0x20, 0), 0, 1, false));
        assert_eq!(code_of(r), "staleEpoch");
        assert_eq!(code_of(z), "staleEpoch");
        let waited = t.elapsed();
        assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(15), "waited {waited:?}");
    });
}
