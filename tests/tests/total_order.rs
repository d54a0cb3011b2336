//! Total order: clients propose concurrently through different groupd; every watcher sees
//! the identical sequence, also one that moves to another groupd half way.

use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use sheep_client::group::{GroupClient, Options, Watcher};
use sheep_core::group::{Event, EventKind, SessionKind};
use sheep_tests::Cluster;

const CLIENTS: usize = 3;
const PER_CLIENT: usize = 334; // 1002 entries in all
const IN_FLIGHT: usize = 8;

fn run_local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn client(addrs: Vec<String>) -> Rc<GroupClient> {
    let opts = Options { retry_for: Duration::from_secs(30), wait_for_groupd: true, ..Options::default() };
    Rc::new(GroupClient::new(addrs, opts).unwrap())
}

/// Proposes `PER_CLIENT` payloads "c{id}-{k}" through the groupd at `addr`.
fn propose_all(id: usize, addr: String) {
    run_local(async move {
        let c = client(vec![addr]);
        let kind = SessionKind::Client { name: format!("test client {id}") };
        let (session, _) = c.open_session(&kind, "").await.expect("open session");
        let results: Vec<_> = futures::stream::iter(0..PER_CLIENT)
            .map(|k| {
                let c = c.clone();
                async move { c.propose(session, format!("c{id}-{k}").as_bytes()).await }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for r in results {
            r.expect("propose");
        }
    })
}

/// Reads events from seq 1 until `broadcasts` broadcast events were seen (bounded).
async fn read_until(w: &mut Watcher, broadcasts: usize, into: &mut Vec<Event>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while into.iter().filter(|e| matches!(e.kind, EventKind::Broadcast { .. })).count() < broadcasts {
        assert!(tokio::time::Instant::now() < deadline, "watch did not deliver every entry in time");
        into.extend(w.next_batch().await.expect("watch"));
    }
}

#[test]
fn concurrent_proposals_are_seen_in_one_order_by_every_watcher() {
    let mut c = Cluster::new();
    c.add_group(3);
    c.ctl_ok(&["cluster", "format"]);

    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = c.groupd_addrs[i].clone();
            std::thread::spawn(move || propose_all(i, addr))
        })
        .collect();
    for t in threads {
        t.join().expect("proposer");
    }
    let total = CLIENTS * PER_CLIENT;

    // One watcher per groupd, each from the beginning.
    let mut sequences = Vec::new();
    for addr in &c.groupd_addrs {
        let seq = run_local(async {
            let mut w = Watcher::new(client(vec![addr.clone()]), 1, 250, Duration::from_secs(2));
            let mut events = Vec::new();
            read_until(&mut w, total, &mut events).await;
            events
        });
        sequences.push(seq);
    }
    let reference = &sequences[0];
    for (i, s) in sequences.iter().enumerate() {
        let n = reference.len().min(s.len());
        assert_eq!(&s[..n], &reference[..n], "groupd {i} delivers another order");
    }
    for (i, e) in reference.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "no gap, no duplicate");
    }
    // Every proposal is there exactly once.
    let mut payloads: Vec<Vec<u8>> = reference
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Broadcast { payload, .. } => Some(payload.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(payloads.len(), total);
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), total, "a proposal was delivered twice");

    // A watcher whose groupd dies half way resumes on another with no gap or duplicate.
    let first = 2;
    let order = vec![c.groupd_addrs[first].clone(), c.groupd_addrs[0].clone(), c.groupd_addrs[1].clone()];
    let resumed = run_local(async {
        let mut w = Watcher::new(client(order), 1, 100, Duration::from_secs(2));
        let mut events = Vec::new();
        read_until(&mut w, total / 3, &mut events).await;
        c.groupds[first].signal(Signal::SIGKILL);
        read_until(&mut w, total, &mut events).await;
        events
    });
    let n = resumed.len().min(reference.len());
    assert_eq!(&resumed[..n], &reference[..n], "the resumed watcher saw another sequence");
    assert!(n >= reference.len() - 5, "resumed watcher got {} of {}", resumed.len(), reference.len());
}
