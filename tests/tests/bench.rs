//! `sheepctl bench` on a real cluster: its jobs run, and it reports the CPU time per
//! operation of itself and of the daemons it is given, each by name.

use sheep_tests::Cluster;

#[test]
fn bench_reports_iops_and_cpu_per_op_of_every_process_named() {
    let c = Cluster::formatted(3, 3, &[]);
    let pids: Vec<String> = c.storageds.iter().map(|d| d.pid().expect("storaged runs").to_string()).collect();
    let out = c.ctl_ok(&[
        "--json",
        "bench",
        "--runtime",
        "1",
        "--size",
        "8M",
        "--jobs",
        "randwrite1,randread32",
        "--cpu-of",
        &pids.join(","),
    ]);
    let jobs: serde_json::Value = serde_json::from_str(&out).expect("bench --json");
    let jobs = jobs.as_array().expect("a list of jobs");
    assert_eq!(jobs.len(), 2);
    for j in jobs {
        assert!(j["ops"].as_u64().unwrap() > 0, "{j}");
        let cpu = j["cpu"].as_array().expect("cpu per process");
        let names: Vec<&str> = cpu.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["sheepctl", "storaged", "storaged", "storaged"], "{j}");
        assert_eq!(cpu[1]["pid"].as_u64().unwrap().to_string(), pids[0]);
        let sum: f64 = cpu.iter().map(|p| p["us_per_op"].as_f64().unwrap()).sum();
        assert!((sum - j["cpu_us_per_op"].as_f64().unwrap()).abs() < 1e-6, "{j}");
        // Every replica took every write; the reader spent time on its reads.
        let spent = if j["job"] == "randwrite1" { &cpu[1..] } else { &cpu[..1] };
        assert!(spent.iter().all(|p| p["us_per_op"].as_f64().unwrap() > 0.0), "{j}");
    }
    // A process that is not there is refused before anything runs.
    let out = c.ctl(&["bench", "--runtime", "1", "--cpu-of", &u32::MAX.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&u32::MAX.to_string()), "{err}");
    let out = c.ctl_ok(&["vdi", "list"]);
    assert!(!out.contains("sheep-bench"), "the refused bench created nothing: {out}");
}
