//! A small harness for groupd tests: starts real `groupd` processes on loopback addresses
//! and calls their API with a capnp client.

#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sheep_core::epoch::NodeInfo;
use sheep_core::group::{ClusterConfig, ClusterInfo, Event, MemberRole};
use sheep_rpc::codec;
use sheep_rpc::groupd_capnp::{groupd, SessionKind};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

pub struct Groupd {
    pub addr: String,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

/// A free port on `ip` (bound then released).
pub fn free_addr(ip: &str) -> String {
    let l = TcpListener::bind((ip, 0)).expect("bind a free port");
    l.local_addr().unwrap().to_string()
}

impl Groupd {
    /// Starts a groupd on a free port of `ip`, with its data in `root/<name>`.
    pub fn start(root: &Path, name: &str, ip: &str, extra: &[&str]) -> Groupd {
        let addr = free_addr(ip);
        let dir = root.join(name);
        let mut args = vec!["--listen".to_string(), addr.clone(), "--data".into(), dir.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log_path = root.join(format!("{name}.log"));
        let mut g = Groupd { addr, dir, log_path, args, child: None };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_groupd"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start groupd");
        self.child = Some(child);
    }

    /// Starts it again with the same arguments (same address and data directory).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = &mut self.child {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Some(st);
                }
            } else {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Groupd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `f` with a client of the groupd at `addr`, on a fresh connection (10 s limit).
pub fn with_client<T, F, Fut>(addr: &str, f: F) -> Result<T, capnp::Error>
where
    F: FnOnce(groupd::Client) -> Fut,
    Fut: Future<Output = Result<T, capnp::Error>>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| capnp::Error::disconnected(format!("connect {addr}: {e}")))?;
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        let net = twoparty::VatNetwork::new(r.compat(), w.compat_write(), Side::Client, Default::default());
        let mut rpc = RpcSystem::new(Box::new(net), None);
        let client: groupd::Client = rpc.bootstrap(Side::Server);
        tokio::task::spawn_local(rpc);
        tokio::time::timeout(Duration::from_secs(10), f(client))
            .await
            .map_err(|_| capnp::Error::failed("test client: call timed out".into()))?
    })
}

pub fn info(addr: &str) -> Result<ClusterInfo, capnp::Error> {
    with_client(addr, |c| async move {
        let r = c.info_request().send().promise.await?;
        codec::read_cluster_info(r.get()?.get_info()?)
    })
}

pub fn format(addr: &str, voters: u8) -> Result<ClusterConfig, capnp::Error> {
    with_client(addr, |c| async move {
        let mut req = c.format_request();
        req.get().set_copies(3);
        req.get().set_object_size_shift(22);
        req.get().set_voters(voters);
        let r = req.send().promise.await?;
        codec::read_config(r.get()?.get_config()?)
    })
}

pub fn open_client(addr: &str, name: &str) -> Result<(u64, u32), capnp::Error> {
    let name = name.to_string();
    with_client(addr, |c| async move {
        let mut req = c.open_session_request();
        req.get().set_kind(SessionKind::Client);
        req.get().set_name(name.as_str());
        let r = req.send().promise.await?;
        Ok((r.get()?.get_session(), r.get()?.get_lease_ms()))
    })
}

pub fn open_storage(addr: &str, node: &NodeInfo, cluster_id: &str) -> Result<u64, capnp::Error> {
    let (node, cluster_id) = (node.clone(), cluster_id.to_string());
    with_client(addr, |c| async move {
        let mut req = c.open_session_request();
        req.get().set_kind(SessionKind::Storage);
        codec::write_node(req.get().init_node(), &node);
        req.get().set_cluster_id(cluster_id.as_str());
        let r = req.send().promise.await?;
        Ok(r.get()?.get_session())
    })
}

pub fn keepalive(addr: &str, session: u64) -> Result<(), capnp::Error> {
    with_client(addr, |c| async move {
        let mut req = c.keepalive_request();
        req.get().set_session(session);
        req.send().promise.await?;
        Ok(())
    })
}

pub fn propose(addr: &str, session: u64, payload: &[u8]) -> Result<u64, capnp::Error> {
    let payload = payload.to_vec();
    with_client(addr, |c| async move {
        let mut req = c.propose_request();
        req.get().set_session(session);
        req.get().set_payload(&payload);
        Ok(req.send().promise.await?.get()?.get_seq())
    })
}

pub fn lock(addr: &str, session: u64, vdi: &str) -> Result<codec_lock::LockInfo, capnp::Error> {
    let vdi = vdi.to_string();
    with_client(addr, |c| async move {
        let mut req = c.lock_request();
        req.get().set_session(session);
        req.get().set_vdi(vdi.as_str());
        codec::read_lock_info(req.send().promise.await?.get()?.get_lock()?)
    })
}

pub mod codec_lock {
    pub use sheep_core::group::LockInfo;
}

pub fn shutdown(addr: &str) -> Result<(), capnp::Error> {
    with_client(addr, |c| async move {
        c.shutdown_request().send().promise.await?;
        Ok(())
    })
}

pub fn watch(addr: &str, from: u64, max: u32, wait_ms: u32) -> Result<(Vec<Event>, u64), capnp::Error> {
    with_client(addr, |c| async move {
        let mut req = c.watch_request();
        req.get().set_from_seq(from);
        req.get().set_max_entries(max);
        req.get().set_wait_ms(wait_ms);
        let r = req.send().promise.await?;
        Ok((codec::read_events(r.get()?.get_events()?)?, r.get()?.get_next_seq()))
    })
}

pub fn code(e: &capnp::Error) -> String {
    codec::error_code(e).unwrap_or("").to_string()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The master's address as the groupd at `addr` sees it.
pub fn master_of(addr: &str) -> Option<String> {
    let i = info(addr).ok()?;
    i.members.iter().find(|m| m.role == MemberRole::Master).map(|m| m.addr.clone())
}

/// A directory for one test's groupd instances; kept (and printed) if `GROUPD_TEST_KEEP` is set.
pub struct Root {
    path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Root {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn test_root() -> Root {
    let dir = tempfile::Builder::new().prefix("groupd-test-").tempdir().unwrap();
    if std::env::var_os("GROUPD_TEST_KEEP").is_some() {
        let path = dir.keep();
        eprintln!("test directory: {}", path.display());
        return Root { path, _tmp: None };
    }
    Root { path: dir.path().to_path_buf(), _tmp: Some(dir) }
}

pub fn count_roles(i: &ClusterInfo, role: MemberRole) -> usize {
    i.members.iter().filter(|m| m.role == role).count()
}

pub fn vdi_create(addr: &str, name: &str, size: u64) -> Result<sheep_core::namespace::VdiEntry, capnp::Error> {
    let name = name.to_string();
    with_client(addr, |c| async move {
        let mut req = c.vdi_create_request();
        req.get().set_name(name.as_str());
        req.get().set_size(size);
        codec::read_vdi(req.send().promise.await?.get()?.get_vdi()?)
    })
}

pub fn vdi_delete(addr: &str, name: &str) -> Result<sheep_core::namespace::VdiEntry, capnp::Error> {
    let name = name.to_string();
    with_client(addr, |c| async move {
        let mut req = c.vdi_delete_request();
        req.get().set_name(name.as_str());
        codec::read_vdi(req.send().promise.await?.get()?.get_vdi()?)
    })
}

/// (names, deleted vids)
pub fn vdi_list(addr: &str) -> Result<(Vec<String>, Vec<u32>), capnp::Error> {
    with_client(addr, |c| async move {
        let r = c.vdi_list_request().send().promise.await?;
        let r = r.get()?;
        let names = r.get_vdis()?.iter().map(|v| codec::read_vdi(v).map(|v| v.name)).collect::<Result<_, _>>()?;
        Ok((names, r.get_deleted_vids()?.iter().collect()))
    })
}
