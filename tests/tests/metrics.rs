//! Every daemon's `/metrics` (`--metrics ADDR`): groupd, storaged and the NBD export answer
//! in the Prometheus text format, count exactly the requests that were made, and answer 404
//! off their path. The harness gives every groupd and storaged of every test a metrics
//! address, so the flag is on in every other test too. And the live figures of `sheepctl
//! node stat` and `vdi stat`, from the storage nodes' counters, while a writer runs.

use std::time::Duration;

use sheep_tests::http::{request, sample, scrape, sum};
use sheep_tests::nbd::{listen_addr, url_or_exit};
use sheep_tests::nbd_client::NbdClient;
use sheep_tests::{wait_until, Cluster, Daemon};

const BLOCK: usize = 4096;

/// The storage nodes' figure of `metric{op}` summed over every node.
fn storage_sum(c: &Cluster, metric: &str, op: &str) -> f64 {
    let label = format!("op=\"{op}\"");
    c.storaged_metrics.iter().map(|a| sum(&scrape(a), metric, &[&label])).sum()
}

#[test]
fn every_daemon_counts_the_requests_made_and_answers_only_at_its_path() {
    let c = Cluster::formatted(3, 3, &[]);
    c.ctl_ok(&["vdi", "create", "m", "64M"]);
    let export_metrics = c.net.free_addr(200);
    let args = [
        "--groupd",
        &c.groupd_addrs.join(","),
        "export",
        "m",
        "--listen",
        &listen_addr(&c),
        "--metrics",
        &export_metrics,
    ];
    let mut export = Daemon::start("sheepctl", args.iter().map(|s| s.to_string()).collect(), c.path("export.log"));
    let url = url_or_exit(&mut export).unwrap_or_else(|log| panic!("the export stopped:\n{log}"));
    let nbd_addr = url.trim_start_matches("nbd://").split('/').next().expect("nbd://ADDR/NAME").to_string();
    let mut nbd = NbdClient::connect(&nbd_addr, "m", Duration::from_secs(30)).expect("connect to the export");

    // The first write creates the object (and sets the inode's entry); the counted ones
    // after it only write into it, on each of the 3 replicas.
    nbd.write(0, &[1; BLOCK], false).expect("first write");
    let (writes_before, bytes_before) = (
        storage_sum(&c, "sheep_storage_ops_total", "write"),
        storage_sum(&c, "sheep_storage_data_bytes_total", "write"),
    );
    for i in 1..=3u8 {
        nbd.write(u64::from(i) * BLOCK as u64, &[i; BLOCK], false).expect("write");
    }
    let mut buf = vec![0; 2 * BLOCK];
    nbd.read(0, &mut buf).expect("read");
    assert_eq!(&buf[..BLOCK], &[1; BLOCK][..]);
    nbd.read(2 * BLOCK as u64, &mut buf).expect("read");
    assert_eq!(&buf[..BLOCK], &[2; BLOCK][..]);
    nbd.flush().expect("flush");
    nbd.trim(1 << 20, 64 << 10).expect("trim");

    let front = scrape(&export_metrics);
    let series = |name: &str, op: &str| sample(&front, &format!("{name}{{vdi=\"m\",op=\"{op}\"}}"));
    assert_eq!(series("sheep_frontend_ops_total", "write"), Some(4.0), "{front}");
    assert_eq!(series("sheep_frontend_data_bytes_total", "write"), Some(4.0 * BLOCK as f64), "{front}");
    assert_eq!(series("sheep_frontend_op_duration_seconds_count", "write"), Some(4.0), "{front}");
    assert_eq!(series("sheep_frontend_ops_total", "read"), Some(2.0), "{front}");
    assert_eq!(series("sheep_frontend_data_bytes_total", "read"), Some(4.0 * BLOCK as f64), "{front}");
    assert_eq!(series("sheep_frontend_ops_total", "flush"), Some(1.0), "{front}");
    assert_eq!(series("sheep_frontend_ops_total", "discard"), Some(1.0), "{front}");
    assert_eq!(series("sheep_frontend_ops_total", "write_zeroes"), Some(0.0), "{front}");
    assert_eq!(sum(&front, "sheep_frontend_errors_total", &[]), 0.0, "{front}");
    assert!(front.contains("sheep_build_info{daemon=\"nbd\",version=\""), "{front}");

    let writes = storage_sum(&c, "sheep_storage_ops_total", "write") - writes_before;
    let bytes = storage_sum(&c, "sheep_storage_data_bytes_total", "write") - bytes_before;
    assert_eq!(writes, 9.0, "3 writes on 3 replicas each\n{}", c.logs());
    assert_eq!(bytes, 9.0 * BLOCK as f64);
    // The store's gauges are read once a second: the VDI's data object and its inode, on
    // each of the 3 nodes; every node recovered into the one epoch.
    wait_until(Duration::from_secs(15), "every node to count its 2 objects", || {
        let texts: Vec<String> = c.storaged_metrics.iter().map(|a| scrape(a)).collect();
        let objects: Vec<Option<f64>> = texts.iter().map(|t| sample(t, "sheep_storage_objects")).collect();
        if objects.iter().any(|o| *o != Some(2.0)) {
            return Err(format!("objects per node: {objects:?}"));
        }
        Ok(())
    });
    for addr in &c.storaged_metrics {
        let text = scrape(addr);
        assert!(sample(&text, "sheep_storage_disk_capacity_bytes").is_some_and(|b| b > 0.0), "{text}");
        assert!(sample(&text, "sheep_storage_disk_used_bytes").is_some_and(|b| b >= BLOCK as f64), "{text}");
        assert_eq!(sample(&text, "sheep_storage_disk_failed"), Some(0.0), "{text}");
        assert_eq!(sample(&text, "sheep_storage_recovery_state{state=\"complete\"}"), Some(1.0), "{text}");
        assert_eq!(sum(&text, "sheep_storage_recovery_state", &[]), 1.0, "{text}");
        assert!(text.contains("sheep_build_info{daemon=\"storaged\",version=\""), "{text}");
    }

    // groupd: one leader (the only groupd), the export's session and lock among the rest.
    let group = scrape(&c.groupd_metrics[0]);
    assert_eq!(sample(&group, "sheep_group_role{role=\"leader\"}"), Some(1.0), "{group}");
    assert_eq!(sum(&group, "sheep_group_role", &[]), 1.0, "{group}");
    assert_eq!(sample(&group, "sheep_group_locks"), Some(1.0), "{group}");
    let sessions = sample(&group, "sheep_group_sessions").expect("sessions");
    assert!(sessions >= 4.0, "3 storage nodes and the export: {group}");
    assert_eq!(sample(&group, "sheep_group_storage_nodes"), Some(3.0), "{group}");
    assert!(group.contains("sheep_build_info{daemon=\"groupd\",version=\""), "{group}");

    let every = c.groupd_metrics.iter().chain(&c.storaged_metrics).chain([&export_metrics]);
    for addr in every {
        let text = scrape(addr);
        assert!(text.contains("# TYPE sheep_uptime_seconds gauge\n"), "{addr}: {text}");
        assert_eq!(request(addr, "GET", "/nope").map(|r| r.0), Ok(404), "{addr}");
        assert_eq!(request(addr, "HEAD", "/metrics").map(|r| r.0), Ok(200), "{addr}");
        assert_eq!(request(addr, "DELETE", "/metrics").map(|r| r.0), Ok(405), "{addr}");
    }
    nbd.disconnect().expect("disconnect");
}

/// `sheepctl --json ARGS` parsed.
fn ctl_json(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = c.ctl_ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("sheepctl {args:?}: {e}: {out}"))
}

#[test]
fn node_stat_and_vdi_stat_show_the_rates_of_a_running_writer() {
    let c = Cluster::formatted(3, 3, &[]);
    c.ctl_ok(&["vdi", "create", "busy", "64M"]);
    c.ctl_ok(&["vdi", "create", "idle", "64M"]);
    let (export, url) = sheep_tests::nbd::serving(&c, "busy", "export.log");
    let nbd_addr = url.trim_start_matches("nbd://").split('/').next().expect("nbd://ADDR/NAME").to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut nbd = NbdClient::connect(&nbd_addr, "busy", Duration::from_secs(30)).expect("connect");
            let mut n = 0u64;
            // Bounded: the reports below take about 2 s.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 200_000 {
                nbd.write((n % 256) * BLOCK as u64, &[n as u8; BLOCK], false).expect("write");
                n += 1;
            }
            n
        });
        let vdi = ctl_json(&c, &["vdi", "stat"]);
        let named = ctl_json(&c, &["vdi", "stat", "idle"]);
        let node = ctl_json(&c, &["node", "stat"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().expect("the writer");
        (vdi, named, node, written)
    });
    let (vdi, named, node, written) = report;
    assert!(written > 0);
    let vdis = vdi["vdis"].as_array().expect("vdis");
    assert_eq!(vdis.len(), 1, "only the busy VDI: {vdi}");
    assert_eq!(vdis[0]["name"], "busy");
    let w = &vdis[0]["write"];
    assert!(w["ops_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{vdi}");
    assert!(w["bytes_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{vdi}");
    assert!(w["p99_us"].as_f64().is_some_and(|p| p > 0.0), "{vdi}");
    let idle = named["vdis"].as_array().expect("vdis");
    assert_eq!(idle.len(), 1, "a named VDI shows even idle: {named}");
    assert_eq!(idle[0]["write"]["ops_per_sec"].as_f64(), Some(0.0), "{named}");
    let nodes = node["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{node}");
    for n in nodes {
        assert!(n["write"]["ops_per_sec"].as_f64().is_some_and(|r| r > 0.0), "every replica writes: {node}");
    }
    let text = c.ctl_ok(&["vdi", "stat", "--watch", "0.5", "--count", "2"]);
    assert!(text.contains("WRITE/S") || text.contains("no VDI did any I/O"), "{text}");
    // `sheepctl status`: healthy while all is up; degraded, saying why, once a node is gone.
    let status = ctl_json(&c, &["status"]);
    assert_eq!(status["health"], "healthy", "{status}");
    assert_eq!((status["nodes_up"].as_u64(), status["vdis"].as_u64()), (Some(3), Some(2)), "{status}");
    let mut c = c;
    c.storageds[2].kill();
    wait_until(Duration::from_secs(30), "status to say the cluster is degraded", || {
        let s = ctl_json(&c, &["status"]);
        let why = s["reasons"].to_string();
        if s["health"] == "degraded" && why.contains("2 zone(s) up for 3 copies") {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let text = c.ctl_ok(&["status"]);
    assert!(text.starts_with("health: DEGRADED\n"), "{text}");
    let missing = c.ctl(&["vdi", "stat", "nosuch"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("there is no VDI named \"nosuch\""));
    drop(export);
}
