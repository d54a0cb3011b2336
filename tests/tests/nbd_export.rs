//! The NBD export on real processes: `sheepctl export` serving a VDI, QEMU's own tools
//! (`qemu-io`, `qemu-img`, from Debian's qemu-utils) as clients, a storaged killed under it,
//! exclusive attach, and the protocol spoken by hand for the error and disconnect paths.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sheep_core::group::ClusterStatus;
use sheep_tests::nbd::{listen_addr, qemu_io_ok, run_tool, serving, start_export, url_or_exit, LIMIT as T};
use sheep_tests::nbd_client::{option, option_reply, request};
use sheep_tests::rand::Rng;
use sheep_tests::{wait_until, Cluster};
const MIB: u64 = 1 << 20;

/// One groupd, `nodes` storaged, formatted with 3 copies, and a VDI `disk0` of `size`.
fn cluster(nodes: usize, size: &str) -> Cluster {
    let c = Cluster::formatted(nodes, 3, &[]);
    c.ctl_ok(&["vdi", "create", "disk0", size]);
    c
}

/// `qemu-io` commands given as owned strings.
fn qemu_io(url: &str, cmds: &[String]) -> String {
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io_ok(url, &cmds)
}

/// (offset, length, pattern byte): pieces that cross 4 MiB object boundaries, the first
/// and last bytes of the disk, and small unaligned ones.
fn pieces(size: u64) -> Vec<(u64, u64, u8)> {
    vec![
        (0, 4096, 0x11),
        (4 * MIB - 2048, 4096, 0x22),
        (8 * MIB - 512, MIB + 1024, 0x33),
        (12 * MIB + 4096 - 1, 3 * 4096 + 7, 0x44),
        (16 * MIB - 3 * MIB, 6 * MIB, 0x55),
        (size - 4096, 4096, 0x66),
    ]
}

#[test]
fn qemu_io_patterns_cross_object_boundaries() {
    let c = cluster(3, "32M");
    let (mut export, url) = serving(&c, "disk0", "export.log");
    let size = 32 * MIB;
    let writes: Vec<String> = pieces(size).iter().map(|(o, l, p)| format!("write -P {p:#x} {o} {l}")).collect();
    qemu_io(&url, &writes);
    // Read back through a new connection, plus a gap that was never written.
    let mut reads: Vec<String> = pieces(size).iter().map(|(o, l, p)| format!("read -P {p:#x} {o} {l}")).collect();
    reads.push(format!("read -P 0 {} {}", 20 * MIB, 4 * MIB));
    qemu_io(&url, &reads);
    // The bytes are the VDI's, as the engine reads them.
    for (o, l, p) in pieces(size) {
        let out = c.ctl(&["vdi", "read", "disk0", &o.to_string(), &l.to_string()]);
        assert!(out.status.success(), "vdi read: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.len() == l as usize && out.stdout.iter().all(|&b| b == p), "bytes at {o}+{l}");
    }
    // Write-zeroes (with and without NO_HOLE) and discard read back as zeros.
    qemu_io(&url, &["write -z 4190208 8192".into(), "discard 8388096 4096".into(), "write -z -u 0 512".into()]);
    qemu_io(
        &url,
        &[
            "read -P 0 4190208 8192".into(),
            "read -P 0 8388096 4096".into(),
            "read -P 0 0 512".into(),
            "read -P 0x11 512 3584".into(),
        ],
    );
    // Requests past the end are refused, the server goes on.
    let out = run_tool("qemu-io", &["-f", "raw", &url, "-c", &format!("read {} 4096", size)], T);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("Input/output error") || text.contains("Invalid argument") || text.contains("out of"),
        "{text}"
    );
    assert!(export.is_running(), "the export survived a bad request");
    export.signal(Signal::SIGTERM);
    assert_eq!(export.wait_exit(T), Some(0), "clean stop on SIGTERM");
}

#[test]
fn qemu_img_convert_into_the_export_then_compare() {
    let c = cluster(3, "40M");
    let (_export, url) = serving(&c, "disk0", "export.log");
    // Data with holes: random parts, zero parts, a part of a written object zeroed.
    let mut data = vec![0u8; 40 * MIB as usize];
    let mut rng = Rng::new(7);
    for (start, len) in [(0, 5 * MIB), (9 * MIB + 12345, 7 * MIB), (24 * MIB, 64 * 1024), (36 * MIB, 4 * MIB)] {
        let (s, l) = (start as usize, len as usize);
        data[s..s + l].copy_from_slice(&rng.bytes(l));
    }
    let src = c.path("source.img");
    std::fs::write(&src, &data).unwrap();
    let src = src.to_str().unwrap();
    let out = run_tool("qemu-img", &["convert", "-n", "-f", "raw", "-O", "raw", src, &url], T);
    assert!(out.status.success(), "qemu-img convert: {}", String::from_utf8_lossy(&out.stderr));
    let out = run_tool("qemu-img", &["compare", "-f", "raw", "-F", "raw", src, &url], T);
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A second convert over what is there (zero parts now written over data) compares too.
    data[..5 * MIB as usize].fill(0);
    data[30 * MIB as usize..34 * MIB as usize].copy_from_slice(&rng.bytes(4 * MIB as usize));
    std::fs::write(src, &data).unwrap();
    let out = run_tool("qemu-img", &["convert", "-n", "-f", "raw", "-O", "raw", src, &url], T);
    assert!(out.status.success(), "qemu-img convert: {}", String::from_utf8_lossy(&out.stderr));
    let out = run_tool("qemu-img", &["compare", "-f", "raw", "-F", "raw", src, &url], T);
    assert!(out.status.success(), "second compare: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_flush_after_writes_survives_a_storaged_kill() {
    let mut c = cluster(3, "32M");
    let (mut export, url) = serving(&c, "disk0", "export.log");
    let mut writes: Vec<String> = pieces(32 * MIB).iter().map(|(o, l, p)| format!("write -P {p:#x} {o} {l}")).collect();
    writes.push("flush".into());
    qemu_io(&url, &writes);
    c.storageds[1].kill();
    let reads: Vec<String> = pieces(32 * MIB).iter().map(|(o, l, p)| format!("read -P {p:#x} {o} {l}")).collect();
    qemu_io(&url, &reads);
    // Once the cluster has moved on, writes go on too.
    c.wait_epoch_nodes(0, 2, ClusterStatus::Running);
    qemu_io(&url, &["write -P 0x77 20971520 65536".into(), "flush".into()]);
    qemu_io(&url, &["read -P 0x77 20971520 65536".into(), "read -P 0x22 4192256 4096".into()]);
    assert!(export.is_running());
}

#[test]
fn a_second_export_is_refused_naming_the_holder_until_the_first_stops() {
    let c = cluster(3, "16M");
    let (mut first, url) = serving(&c, "disk0", "first.log");
    let addr_of_first = url.trim_start_matches("nbd://").split('/').next().unwrap().to_string();

    let mut second = start_export(&c, "disk0", &listen_addr(&c), "second.log");
    let log = url_or_exit(&mut second).expect_err("a second export of a locked VDI started");
    assert_eq!(second.wait_exit(T), Some(1));
    assert!(log.contains("VDI disk0 is locked by session") && log.contains("(nbd-export "), "{log}");

    // Other refusals are as clear.
    let mut busy = start_export(&c, "disk0", &addr_of_first, "busy.log");
    let log = url_or_exit(&mut busy).expect_err("an export on a used address started");
    assert!(log.contains("address is already in use"), "{log}");
    let mut unknown = start_export(&c, "nosuch", &listen_addr(&c), "unknown.log");
    let log = url_or_exit(&mut unknown).expect_err("an export of an unknown VDI started");
    assert!(log.contains("no VDI named \"nosuch\""), "{log}");
    // Not on an address beyond loopback: NBD goes in the clear (refused before it listens).
    let mut open = start_export(&c, "disk0", "0.0.0.0:0", "open.log");
    let log = url_or_exit(&mut open).expect_err("an export on a non-loopback address started");
    assert!(log.contains("not loopback") && log.contains("--insecure-listen"), "{log}");

    // The first one stops cleanly and releases the lock; now the second can start.
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(T), Some(0));
    let (mut third, url) = serving(&c, "disk0", "third.log");
    qemu_io(&url, &["write -P 0x5a 0 4096".into()]);

    // A daemon that dies holds the lock only until its session expires.
    third.kill();
    let start = Instant::now();
    let (_fourth, url) = wait_until(T, "the lock of a killed export to expire", || {
        let mut d = start_export(&c, "disk0", &listen_addr(&c), "fourth.log");
        match url_or_exit(&mut d) {
            Ok(url) => Ok((d, url)),
            Err(log) => Err(log.lines().last().unwrap_or("").to_string()),
        }
    });
    assert!(start.elapsed() < Duration::from_millis(c.lease_ms * 4), "lock released by the lease");
    qemu_io(&url, &["read -P 0x5a 0 4096".into()]);
}

#[test]
fn an_export_whose_session_expired_stops_serving() {
    let c = cluster(3, "8M");
    let (mut first, _) = serving(&c, "disk0", "first.log");
    // Hung longer than its lease: its session expires and the lock goes to another export.
    first.signal(Signal::SIGSTOP);
    let (_second, url) = wait_until(T, "the lock of the paused export to expire", || {
        let mut d = start_export(&c, "disk0", &listen_addr(&c), "second.log");
        match url_or_exit(&mut d) {
            Ok(url) => Ok((d, url)),
            Err(log) => Err(log.lines().last().unwrap_or("").to_string()),
        }
    });
    first.signal(Signal::SIGCONT);
    // The first one notices at its next keepalive and stops, without unlocking anything.
    assert_eq!(first.wait_exit(T), Some(1));
    let log = std::fs::read_to_string(&first.log).unwrap_or_default();
    assert!(log.contains("the VDI lock may belong to someone else now"), "{log}");
    qemu_io(&url, &["write -P 0x3c 0 4096".into(), "read -P 0x3c 0 4096".into()]);
}

/// Connects and negotiates by hand (a refused option, then NBD_OPT_GO); returns the stream
/// in transmission, and the export's size and flags.
fn connect_by_hand(addr: &str) -> (TcpStream, u64, u16) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    option(&mut s, 8, &[]).unwrap(); // structured replies: not offered
    assert_eq!(option_reply(&mut s).unwrap().0, (1 << 31) | 1);
    let mut go = 5u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"disk0\0\0");
    option(&mut s, 7, &go).unwrap();
    let (kind, info) = option_reply(&mut s).unwrap();
    assert_eq!(kind, 3);
    let size = u64::from_be_bytes(info[2..10].try_into().unwrap());
    let flags = u16::from_be_bytes([info[10], info[11]]);
    while option_reply(&mut s).unwrap().0 != 1 {} // up to the ACK
    (s, size, flags)
}

/// Speaks the protocol by hand: option haggling, an error reply, NBD_CMD_DISC, and a
/// SIGTERM while a client is connected.
#[test]
fn clean_disconnect_and_error_replies_by_hand() {
    let c = cluster(3, "8M");
    let (mut export, url) = serving(&c, "disk0", "export.log");
    let addr = url.trim_start_matches("nbd://").split('/').next().unwrap().to_string();
    let (mut s, size, flags) = connect_by_hand(&addr);
    assert_eq!(size, 8 * MIB);
    assert_eq!(flags & 0x16d, 0x16d, "flush, FUA, trim, write-zeroes, multi-conn: {flags:#x}");
    request(&mut s, 0, 0, 42, 8 * MIB - 512, 1024).unwrap(); // a read past the end
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(u32::from_be_bytes(r[4..8].try_into().unwrap()), 22, "EINVAL");
    assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), 42);
    request(&mut s, 0, 0, 43, 0, 512).unwrap();
    let mut r = [0u8; 16 + 512];
    s.read_exact(&mut r).unwrap();
    assert_eq!(&r[4..8], &[0, 0, 0, 0]);
    request(&mut s, 2, 0, 44, 0, 0).unwrap(); // NBD_CMD_DISC
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the server closes without a reply");
    wait_until(T, "the server to log the disconnect", || {
        let log = std::fs::read_to_string(&export.log).unwrap_or_default();
        if log.contains(": disconnected") {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert!(export.is_running(), "the export goes on serving");
    qemu_io(&url, &["read -P 0 0 4096".into()]);

    // SIGTERM with a client connected: its connection is closed, the lock released.
    let (mut s, _, _) = connect_by_hand(&addr);
    export.signal(Signal::SIGTERM);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(export.wait_exit(T), Some(0));
    let log = std::fs::read_to_string(&export.log).unwrap_or_default();
    assert!(log.contains("unlocked VDI disk0"), "{log}");
    let (_again, _) = serving(&c, "disk0", "again.log");
}
