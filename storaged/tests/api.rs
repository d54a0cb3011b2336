//! The storaged binary on its own (no groupd to join): it serves its API while it tries to
//! join, and stops cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sheep_client::rpc;
use sheep_rpc::codec;
use sheep_rpc::storaged_capnp::storaged;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn serves_status_while_joining_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("store");
    let addr = format!("127.0.0.1:{}", free_port());
    let nowhere = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_storaged"))
        .args(["--listen", &addr, "--data"])
        .arg(&data)
        .args(["--groupd", &nowhere, "--zone", "4", "--weight", "2", "--join-timeout", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = tokio::task::LocalSet::new().block_on(&rt, async {
        let deadline = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match rpc::connect::<storaged::Client>(&addr, Duration::from_secs(1)).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("storaged does not listen: {e}"),
            }
        };
        let resp = conn.client().status_request().send().promise.await.unwrap();
        let st = resp.get().unwrap().get_status().unwrap();
        let node = codec::read_node(st.get_node().unwrap()).unwrap();
        let epochs = conn.client().epoch_log_request().send().promise.await.unwrap();
        let n_epochs = epochs.get().unwrap().get_epochs().unwrap().len();
        (
            node,
            st.get_cluster_id().unwrap().to_string().unwrap(),
            st.get_joined(),
            st.get_session(),
            st.get_data_dir().unwrap().to_string().unwrap(),
            n_epochs,
        )
    });
    let (node, cluster, joined, session, dir, n_epochs) = status;
    assert_eq!(node.id, addr);
    assert_eq!(node.addr, addr);
    assert_eq!((node.zone, node.weight), (4, 2));
    assert_eq!(cluster, "");
    assert!(!joined);
    assert_eq!(session, 0);
    assert_eq!(dir, data.to_string_lossy());
    assert_eq!(n_epochs, 0);

    let config = std::fs::read_to_string(data.join("config")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(v["node_id"], addr.as_str());
    assert_eq!(v["cluster_id"], "");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "storaged did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_data_dir_it_cannot_write_is_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_storaged"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port()), "--data"])
        .arg(file.join("store"))
        .args(["--groupd", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot create data dir"), "{err}");
}
