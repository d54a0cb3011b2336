//! Resident memory stays bounded under load and with peers that stop reading: storaged and
//! the NBD export serve fio's 1 MiB writes at queue depth 128, a client of storaged sends
//! 200 reads of 4 MiB and reads none of the replies (a proxy holds them back), and an NBD
//! client sends 300 reads of 1 MiB and reads nothing. The peak (`VmHWM`) of each process
//! stays under the bound the README states, and a stalled peer stalls only itself: the node
//! keeps serving everyone else, and the stalled calls complete once their peer reads again.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sheep_tests::nbd::serving;
use sheep_tests::nbd_client::{request, NbdClient};
use sheep_tests::store::{pool, StoreNode};
use sheep_tests::{block_on, Cluster};

const MIB: u64 = 1 << 20;
/// storaged's `--inflight-mib` default: the bytes its handlers work on, each held twice at
/// most (e.g. a read's data and its reply).
const INFLIGHT: u64 = 64 * MIB;
/// What the README states per connection of storaged: its requests not finished (16 MiB, and
/// one more request), its replies not sent (8 MiB, and as much again being made) and its
/// read buffer.
const PER_STORAGED_CONNECTION: u64 = 32 * MIB;
/// What the README states per NBD connection: 32 MiB of request data held, and for each
/// write its message to each of the 3 replicas and those messages' bytes waiting to be sent.
const PER_NBD_CONNECTION: u64 = (1 + 2 * 3) * 32 * MIB;

/// A field of `/proc/PID/status` in bytes (`VmHWM`, `VmRSS`).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} for {pid}"));
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a size in kB");
    kib * 1024
}

/// The process's open sockets (its TCP connections and listeners).
fn sockets(pid: u32) -> u64 {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd");
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count() as u64
}

/// A TCP proxy that always forwards what its client sends and forwards the server's replies
/// only while it is open.
struct StallingProxy {
    addr: String,
    open: Arc<AtomicBool>,
    accepter: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl StallingProxy {
    /// Serves one connection to `upstream`, open until [`Self::stall`].
    fn start(listen: &str, upstream: String) -> StallingProxy {
        let listener = TcpListener::bind(listen).expect("bind the proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(true));
        let gate = open.clone();
        let accepter = std::thread::spawn(move || {
            let (client, _) = listener.accept().expect("accept the proxy's client");
            let server = TcpStream::connect(&upstream).expect("connect upstream");
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = std::thread::spawn(move || copy(client, server, None));
            let down = std::thread::spawn(move || copy(s2, c2, Some(gate)));
            vec![up, down]
        });
        StallingProxy { addr, open, accepter: Some(accepter) }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    fn stall(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// Waits for both directions to end (the client closed its connection).
    fn join(mut self) {
        self.open();
        for t in self.accepter.take().unwrap().join().expect("proxy accepter") {
            t.join().expect("proxy copier");
        }
    }
}

/// Copies `from` to `to` until EOF or an error, reading only while `gate` (if any) is open.
fn copy(mut from: TcpStream, mut to: TcpStream, gate: Option<Arc<AtomicBool>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while gate.as_ref().is_some_and(|g| !g.load(Ordering::SeqCst)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// fio's 1 MiB sequential writes at queue depth 128 through the export, for `secs`.
fn fio_writes(uri: &str, secs: u32) {
    let out = Command::new("fio")
        .args([
            "--name=qd128",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=write",
            "--bs=1M",
            "--iodepth=128",
            "--size=256M",
            "--time_based",
            &format!("--runtime={secs}"),
            "--eta=never",
        ])
        .output()
        .expect("run fio (ci/install-deps installs it)");
    assert!(out.status.success(), "fio failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn storaged_and_the_export_stay_bounded_under_load_and_stalled_peers() {
    let c = Cluster::formatted(3, 3, &[]);
    c.ctl_ok(&["vdi", "create", "disk0", "1G"]);
    let (export, uri) = serving(&c, "disk0", "export.log");
    let export_pid = export.pid().expect("the export runs");
    let storaged_pids: Vec<u32> = c.storageds.iter().map(|d| d.pid().expect("storaged runs")).collect();
    let idle: Vec<u64> = storaged_pids.iter().map(|&p| status_bytes(p, "VmRSS")).collect();
    let export_idle = status_bytes(export_pid, "VmRSS");

    fio_writes(&uri, 5);
    let after_fio: Vec<u64> = storaged_pids.iter().map(|&p| status_bytes(p, "VmHWM") / MIB).collect();
    eprintln!(
        "storaged peaks after fio's writes (MiB): {after_fio:?}, the export's {}",
        status_bytes(export_pid, "VmHWM") / MIB
    );

    // A peer of storaged 1 that stops reading: 200 reads of 4 MiB (800 MiB of replies).
    let target = c.storaged_addrs[0].clone();
    let proxy = StallingProxy::start(&c.net.free_addr(210), target.clone());
    let stalled_reads = block_on(async {
        let direct = StoreNode::new(&pool(), &target);
        let epoch = direct.status().await.expect("status").epoch;
        let listing = direct.list(epoch).await.expect("list");
        let oid = listing.live.first().expect("fio wrote objects to every replica").raw();
        let slow = StoreNode::new(&pool(), &proxy.addr);
        // Connected (and authenticated) through the proxy, then its replies held back.
        slow.status().await.expect("status through the proxy");
        proxy.stall();
        let reads = futures::future::join_all((0..200).map(|_| slow.read(epoch, oid, 0, 4 << 20)));
        let meanwhile = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            // Everyone else is still served, at once.
            let start = Instant::now();
            let got = tokio::time::timeout(Duration::from_secs(5), direct.read(epoch, oid, 0, 4 << 20)).await;
            assert!(matches!(got, Ok(Ok(ref d)) if d.len() == 4 << 20), "a read beside the stalled peer: {got:?}");
            eprintln!("a read beside the stalled peer took {:?}", start.elapsed());
            proxy.open();
        };
        let (results, ()) = futures::join!(reads, meanwhile);
        results.into_iter().filter(|r| r.as_ref().is_ok_and(|d| d.len() == 4 << 20)).count()
    });
    assert_eq!(stalled_reads, 200, "every stalled read completes once its peer reads again");
    proxy.join();

    // A client of the export that stops reading: 300 reads of 1 MiB.
    let addr = uri.trim_start_matches("nbd://").split('/').next().unwrap().to_string();
    let mut nbd = NbdClient::connect(&addr, "disk0", Duration::from_secs(30)).expect("connect").into_stream();
    for h in 0..300u64 {
        request(&mut nbd, 0, 0, h, (h % 1000) * MIB, MIB as u32).unwrap(); // NBD_CMD_READ
    }
    std::thread::sleep(Duration::from_secs(3));
    // Meanwhile the export serves another connection.
    fio_writes(&uri, 2);
    drop(nbd);

    let mut report = Vec::new();
    for (i, (&pid, &idle)) in storaged_pids.iter().zip(&idle).enumerate() {
        let (peak, conns) = (status_bytes(pid, "VmHWM"), sockets(pid));
        let bound = idle + 2 * INFLIGHT + conns * PER_STORAGED_CONNECTION;
        report.push(format!(
            "storaged {}: idle {} MiB, peak {} MiB, bound {} MiB ({conns} sockets)",
            i + 1,
            idle / MIB,
            peak / MIB,
            bound / MIB
        ));
        assert!(
            peak <= bound,
            "storaged {} peaked at {} MiB over its bound {} MiB\n{}",
            i + 1,
            peak / MIB,
            bound / MIB,
            report.join("\n")
        );
    }
    let export_peak = status_bytes(export_pid, "VmHWM");
    // Two NBD connections were open at once (fio's and the stalled one).
    let export_bound = export_idle + 2 * PER_NBD_CONNECTION;
    report.push(format!(
        "export: idle {} MiB, peak {} MiB, bound {} MiB",
        export_idle / MIB,
        export_peak / MIB,
        export_bound / MIB
    ));
    eprintln!("{}", report.join("\n"));
    assert!(export_peak <= export_bound, "the export peaked over its bound\n{}", report.join("\n"));
}
