//! The groupd client against small in-process stand-ins for groupd: the real state machine
//! (`GroupState`) without Raft, served on loopback.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use sheep_client::group::{Error, GroupClient, Options, Watcher};
use sheep_core::group::{Command, EventKind, GroupState, Op, Reply, RequestId, SessionKind};
use sheep_rpc::codec;
use sheep_rpc::error::{self, ErrorCode};
use sheep_rpc::groupd_capnp::groupd;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, LocalSet};
use tokio::time::Instant;

/// One replicated state shared by every fake groupd: what Raft would give.
#[derive(Default)]
struct Shared {
    state: GroupState,
    index: u64,
    /// How many of the next calls that carry a request id are applied and then never
    /// answered, as when the connection breaks after the commit.
    lose_answers: u32,
}

type State = Rc<RefCell<Shared>>;

struct Fake {
    state: State,
    addr: String,
}

impl Fake {
    fn apply(&self, op: Op) -> Result<Reply, capnp::Error> {
        let mut s = self.state.borrow_mut();
        s.index += 1;
        let index = s.index;
        s.state.apply(index, &Command::new(1000 + index, op)).map_err(|e| error::group_error(&e))
    }

    /// Applies a client call with its request id, then loses the answer if told to.
    async fn apply_call(&self, op: Op, request: Option<RequestId>) -> Result<Reply, capnp::Error> {
        let (answer, lose) = {
            let mut s = self.state.borrow_mut();
            s.index += 1;
            let index = s.index;
            let answer = s.state.apply(index, &Command { time_ms: 1000 + index, op, request });
            let lose = request.is_some() && s.lose_answers > 0;
            if lose {
                s.lose_answers -= 1;
            }
            (answer, lose)
        };
        if lose {
            std::future::pending::<()>().await;
        }
        answer.map_err(|e| error::group_error(&e))
    }
}

impl groupd::Server for Fake {
    async fn open_session(
        self: CapRc<Self>,
        p: groupd::OpenSessionParams,
        mut r: groupd::OpenSessionResults,
    ) -> Result<(), capnp::Error> {
        let p = p.get()?;
        let kind = match p.get_kind()? {
            sheep_rpc::groupd_capnp::SessionKind::Storage => SessionKind::Storage(codec::read_node(p.get_node()?)?),
            sheep_rpc::groupd_capnp::SessionKind::Client => SessionKind::Client { name: p.get_name()?.to_string()? },
        };
        let store_cluster = p.get_cluster_id()?.to_string()?;
        let request = codec::read_request(p.get_request()?);
        let Reply::Session(id) = self.apply_call(Op::OpenSession { kind, store_cluster }, request).await? else {
            unreachable!()
        };
        r.get().set_session(id);
        r.get().set_lease_ms(1000);
        Ok(())
    }

    async fn keepalive(
        self: CapRc<Self>,
        p: groupd::KeepaliveParams,
        _: groupd::KeepaliveResults,
    ) -> Result<(), capnp::Error> {
        let id = p.get()?.get_session();
        if self.state.borrow().state.sessions.contains_key(&id) {
            Ok(())
        } else {
            Err(error::refusal(ErrorCode::NoSession, format!("session {id} does not exist")))
        }
    }

    async fn close_session(
        self: CapRc<Self>,
        p: groupd::CloseSessionParams,
        _: groupd::CloseSessionResults,
    ) -> Result<(), capnp::Error> {
        self.apply(Op::CloseSession { session: p.get()?.get_session(), expired: false })?;
        Ok(())
    }

    async fn propose(
        self: CapRc<Self>,
        p: groupd::ProposeParams,
        mut r: groupd::ProposeResults,
    ) -> Result<(), capnp::Error> {
        let p = p.get()?;
        let op = Op::Broadcast { session: p.get_session(), payload: p.get_payload()?.to_vec() };
        let Reply::Seq(seq) = self.apply(op)? else { unreachable!() };
        r.get().set_seq(seq);
        Ok(())
    }

    async fn watch(self: CapRc<Self>, p: groupd::WatchParams, mut r: groupd::WatchResults) -> Result<(), capnp::Error> {
        let p = p.get()?;
        let (from, max) = (p.get_from_seq(), p.get_max_entries() as usize);
        let until = Instant::now() + Duration::from_millis(u64::from(p.get_wait_ms()));
        loop {
            let events = self
                .state
                .borrow()
                .state
                .events_from(from, max)
                .map_err(|_| error::refusal(ErrorCode::Compacted, "gone"))?;
            if !events.is_empty() || Instant::now() >= until {
                let next = events.last().map_or(from, |e| e.seq + 1);
                codec::write_events(r.get().init_events(events.len() as u32), &events);
                r.get().set_next_seq(next);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn info(self: CapRc<Self>, _: groupd::InfoParams, mut r: groupd::InfoResults) -> Result<(), capnp::Error> {
        let mut info = self.state.borrow().state.info();
        info.answered_by = self.addr.clone();
        codec::write_cluster_info(r.get().init_info(), &info);
        Ok(())
    }

    async fn format(
        self: CapRc<Self>,
        p: groupd::FormatParams,
        mut r: groupd::FormatResults,
    ) -> Result<(), capnp::Error> {
        let p = p.get()?;
        let op = Op::Format {
            cluster_id: "test-cluster".into(),
            copies: p.get_copies(),
            object_size_shift: p.get_object_size_shift(),
            voters: p.get_voters(),
            force: p.get_force(),
            policy: Default::default(),
        };
        let Reply::Formatted(cfg) = self.apply(op)? else { unreachable!() };
        codec::write_config(r.get().init_config(), &cfg);
        Ok(())
    }

    async fn vdi_create(
        self: CapRc<Self>,
        p: groupd::VdiCreateParams,
        mut r: groupd::VdiCreateResults,
    ) -> Result<(), capnp::Error> {
        let p = p.get()?;
        let op = Op::VdiCreate {
            name: p.get_name()?.to_string()?,
            size: p.get_size(),
            copies: p.get_copies(),
            allow_fewer_zones: true,
        };
        let Reply::Vdi(vdi) = self.apply_call(op, codec::read_request(p.get_request()?)).await? else { unreachable!() };
        codec::write_vdi(r.get().init_vdi(), &vdi);
        Ok(())
    }
}

/// A fake groupd on a free loopback port; `kill` stops it and drops its connections.
struct Server {
    addr: String,
    tasks: Rc<RefCell<Vec<JoinHandle<()>>>>,
}

impl Server {
    async fn start(state: &State) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let client: groupd::Client = capnp_rpc::new_client(Fake { state: state.clone(), addr: addr.clone() });
        let tasks = Rc::new(RefCell::new(Vec::new()));
        let conns = tasks.clone();
        let accept = tokio::task::spawn_local(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let bootstrap = client.clone().client;
                let t = tokio::task::spawn_local(sheep_client::rpc::serve(stream, peer, move |_| bootstrap));
                conns.borrow_mut().push(t);
            }
        });
        tasks.borrow_mut().push(accept);
        Server { addr, tasks }
    }

    fn kill(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }
}

/// A port where nothing listens.
async fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

fn quick() -> Options {
    Options {
        connect_timeout: Duration::from_millis(500),
        call_timeout: Duration::from_millis(700),
        retry_for: Duration::from_secs(3),
        wait_for_groupd: false,
    }
}

fn run<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    LocalSet::new().block_on(&rt, f);
}

#[test]
fn unreachable_groupd_is_reported_at_once_with_every_address() {
    run(async {
        let (a, b) = (closed_port().await, closed_port().await);
        let client = GroupClient::new(vec![a.clone(), b.clone()], quick()).unwrap();
        let t = Instant::now();
        let err = client.info().await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
        assert_eq!(
            err.to_string(),
            format!("cannot reach groupd at {a} (connection refused), {b} (connection refused)")
        );
    });
}

#[test]
fn calls_and_refusals() {
    run(async {
        let state = State::default();
        let server = Server::start(&state).await;
        let client = GroupClient::new(vec![server.addr.clone()], quick()).unwrap();
        let info = client.info().await.unwrap();
        assert_eq!(info.answered_by, server.addr);
        let cfg = client.format(3, 22, 3, false).await.unwrap();
        assert_eq!(cfg.cluster_id, "test-cluster");
        let err = client.format(3, 22, 3, false).await.unwrap_err();
        assert!(err.is_code(ErrorCode::AlreadyFormatted), "{err:?}");
        assert!(err.to_string().starts_with("the cluster is already formatted"), "{err}");
        let (id, lease) = client.open_session(&SessionKind::Client { name: "t".into() }, "").await.unwrap();
        assert_eq!(lease, Duration::from_millis(1000));
        client.keepalive(id, Duration::from_secs(3)).await.unwrap();
        client.close_session(id).await.unwrap();
        assert!(client.keepalive(id, Duration::from_secs(3)).await.unwrap_err().is_code(ErrorCode::NoSession));
    });
}

#[test]
fn a_hung_groupd_times_out_and_the_next_one_answers() {
    run(async {
        // Accepts connections, never answers.
        let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hung_addr = hung.local_addr().unwrap().to_string();
        let _hold = tokio::task::spawn_local(async move {
            let mut keep = Vec::new();
            while let Ok((s, _)) = hung.accept().await {
                keep.push(s);
            }
        });
        let alone = GroupClient::new(vec![hung_addr.clone()], quick()).unwrap();
        let t = Instant::now();
        let err = alone.info().await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
        assert!(matches!(&err, Error::Timeout { addr, .. } if *addr == hung_addr), "{err:?}");

        let state = State::default();
        let good = Server::start(&state).await;
        let client = GroupClient::new(vec![hung_addr, good.addr.clone()], quick()).unwrap();
        assert_eq!(client.info().await.unwrap().answered_by, good.addr);
        assert_eq!(client.connected_to(), Some(good.addr.clone()));
    });
}

#[test]
fn watcher_follows_across_a_failover_without_gap_or_duplicate() {
    run(async {
        let state = State::default();
        let a = Server::start(&state).await;
        let b = Server::start(&state).await;
        let client = Rc::new(GroupClient::new(vec![a.addr.clone(), b.addr.clone()], quick()).unwrap());
        let (session, _) = client.open_session(&SessionKind::Client { name: "w".into() }, "").await.unwrap();
        for i in 0..10u8 {
            client.propose(session, &[i]).await.unwrap();
        }
        let mut watcher = Watcher::new(client.clone(), 1, 4, Duration::from_millis(200));
        let mut seen = Vec::new();
        while seen.len() < 6 {
            seen.extend(watcher.next_batch().await.unwrap());
        }
        assert_eq!(client.connected_to(), Some(a.addr.clone()));
        a.kill();
        for i in 10..20u8 {
            client.propose(session, &[i]).await.unwrap();
        }
        while seen.len() < 21 {
            seen.extend(watcher.next_batch().await.unwrap());
        }
        assert_eq!(client.connected_to(), Some(b.addr.clone()));
        let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=21).collect::<Vec<_>>());
        let payloads: Vec<u8> = seen
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Broadcast { payload, .. } => payload.first().copied(),
                _ => None,
            })
            .collect();
        assert_eq!(payloads, (0..20).collect::<Vec<_>>());
        assert!(watcher.next_batch().await.unwrap().is_empty());
        assert_eq!(watcher.next_seq(), 22);
    });
}

#[test]
fn calls_waiting_on_a_dropped_connection_move_on_at_once() {
    run(async {
        let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hung_addr = hung.local_addr().unwrap().to_string();
        let _hold = tokio::task::spawn_local(async move {
            let mut keep = Vec::new();
            while let Ok((s, _)) = hung.accept().await {
                keep.push(s);
            }
        });
        let state = State::default();
        let good = Server::start(&state).await;
        let client = Rc::new(GroupClient::new(vec![hung_addr, good.addr.clone()], quick()).unwrap());
        client.info().await.unwrap(); // now connected to the good one…
        let (session, _) = client.open_session(&SessionKind::Client { name: "w".into() }, "").await.unwrap();
        client.propose(session, b"x").await.unwrap();
        // …start over on the hung one: a long watch waits there, then a short call times out
        // and drops the connection; the watch must move on to the good groupd at once.
        let client = Rc::new(GroupClient::new(vec![client.addrs()[0].clone(), good.addr.clone()], quick()).unwrap());
        let t = Instant::now();
        let c2 = client.clone();
        let watch = tokio::task::spawn_local(async move { c2.watch(1, 10, Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        client.info().await.unwrap();
        let (events, next) = watch.await.unwrap().unwrap();
        assert_eq!((events.len(), next), (2, 3));
        assert!(t.elapsed() < Duration::from_secs(3), "the watch waited {:?}", t.elapsed());
    });
}

#[test]
fn a_call_whose_answer_was_lost_is_retried_elsewhere_and_takes_effect_once() {
    run(async {
        let state = State::default();
        let a = Server::start(&state).await;
        let b = Server::start(&state).await;
        let client = GroupClient::new(vec![a.addr.clone(), b.addr.clone()], quick()).unwrap();
        client.format(1, 22, 1, false).await.unwrap();
        let applied = |state: &State| state.borrow().index;

        // groupd a commits each call and never answers: the client times out and tries b.
        state.borrow_mut().lose_answers = 1;
        let before = applied(&state);
        let (session, _) = client.open_session(&SessionKind::Client { name: "c".into() }, "").await.unwrap();
        assert_eq!(client.connected_to(), Some(b.addr.clone()), "the retry went to the other groupd");
        assert_eq!(applied(&state), before + 2, "two tries reached the group");
        assert_eq!(state.borrow().state.sessions.keys().copied().collect::<Vec<_>>(), vec![session]);

        // Lost on b this time (the client is connected there now); a answers the retry.
        state.borrow_mut().lose_answers = 1;
        let vdi = client.vdi_create("v", 1 << 30, 1).await.unwrap();
        assert_eq!(client.connected_to(), Some(a.addr.clone()));
        {
            let s = state.borrow();
            let names: Vec<String> = s.state.vdis.list().map(|v| v.name.clone()).collect();
            assert_eq!(names, vec!["v".to_string()]);
            assert_eq!(s.state.vdis.get("v"), Some(&vdi), "the retry answers the VDI the first try made");
            let events = s.state.events_from(1, 100).unwrap();
            assert_eq!(events.iter().filter(|e| matches!(e.kind, EventKind::VdiCreated(_))).count(), 1);
        }

        // The next call is a new one: applied, not answered from the record.
        let err = client.vdi_create("v", 1 << 30, 1).await.unwrap_err();
        assert!(err.is_code(ErrorCode::VdiExists), "{err:?}");
    });
}
