//! Connections to other groupd instances (one cached capnp client per address), and the
//! openraft network on top of them: each Raft RPC is one `raft` call whose body is the
//! openraft request (resp. `Result<response, RaftError>`) in JSON.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sheep_rpc::groupd_capnp::groupd::{self, RaftKind};
use sheep_rpc::transport::Stream;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::types::{Node, NodeId, RaftError, TypeConfig};

/// How long a TCP connect to another groupd may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens a capnp connection on an accepted or connected socket. Returns the RPC system to
/// spawn; `bootstrap` is what this side serves.
pub fn rpc_system(stream: Stream, side: Side, bootstrap: Option<capnp::capability::Client>) -> RpcSystem<Side> {
    let (r, w) = stream.into_split();
    let network = twoparty::VatNetwork::new(r.compat(), w.compat_write(), side, Default::default());
    RpcSystem::new(Box::new(network), bootstrap)
}

/// Cached clients of other groupd instances, by address. A connection is dropped from the
/// cache when it breaks; the next call connects anew.
#[derive(Default)]
pub struct Peers {
    clients: RefCell<HashMap<String, (u64, groupd::Client)>>,
    next_gen: Cell<u64>,
    /// Addresses whose last connection attempt failed.
    down: RefCell<HashSet<String>>,
}

impl Peers {
    /// The client of the groupd at `addr`, connecting if needed (bounded by [`CONNECT_TIMEOUT`]).
    pub async fn client(self: &Rc<Self>, addr: &str) -> io::Result<groupd::Client> {
        if let Some((_, c)) = self.clients.borrow().get(addr) {
            return Ok(c.clone());
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, sheep_rpc::transport::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.unreachable(addr, e)),
            Err(_) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out"));
                return Err(self.unreachable(addr, e));
            }
        };
        if self.down.borrow_mut().remove(addr) {
            tracing::info!(peer = addr, "groupd reachable again");
        }
        // Another task may have connected meanwhile: keep the first connection.
        if let Some((_, c)) = self.clients.borrow().get(addr) {
            return Ok(c.clone());
        }
        let mut rpc = rpc_system(stream, Side::Client, None);
        let client: groupd::Client = rpc.bootstrap(Side::Server);
        let gen = self.next_gen.get() + 1;
        self.next_gen.set(gen);
        self.clients.borrow_mut().insert(addr.to_string(), (gen, client.clone()));
        let peers = Rc::clone(self);
        let key = addr.to_string();
        tokio::task::spawn_local(async move {
            if let Err(e) = rpc.await {
                tracing::debug!("connection to {key} ended: {e}");
            }
            peers.forget_gen(&key, gen);
        });
        Ok(client)
    }

    /// Logs the first failure to reach `addr` (not every retry).
    fn unreachable(&self, addr: &str, e: io::Error) -> io::Error {
        if self.down.borrow_mut().insert(addr.to_string()) {
            tracing::warn!(peer = addr, "groupd unreachable: {e}");
        }
        e
    }

    fn forget_gen(&self, addr: &str, gen: u64) {
        let mut clients = self.clients.borrow_mut();
        if clients.get(addr).is_some_and(|(g, _)| *g == gen) {
            clients.remove(addr);
        }
    }

    /// Drops the cached connection to `addr` (after it reported a disconnection).
    pub fn forget(&self, addr: &str) {
        self.clients.borrow_mut().remove(addr);
    }

    /// Records a failed call: a broken connection is forgotten so the next call reconnects.
    pub fn note_error(&self, addr: &str, e: &capnp::Error) {
        if e.kind == capnp::ErrorKind::Disconnected {
            self.forget(addr);
        }
    }
}

/// The openraft network factory.
#[derive(Clone)]
pub struct Network {
    pub peers: Rc<Peers>,
}

/// The openraft connection to one target; every call goes through the shared cache.
pub struct PeerConn {
    peers: Rc<Peers>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConn {
        PeerConn { peers: self.peers.clone(), target, addr: node.addr.clone() }
    }
}

type RpcErr<E> = RPCError<NodeId, Node, RaftError<E>>;

impl PeerConn {
    async fn call<Req, Resp, E>(&self, kind: RaftKind, req: &Req, ttl: Duration) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = self.peers.client(&self.addr).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = client.raft_request();
        request.get().set_kind(kind);
        request.get().set_body(&body);
        // openraft bounds every call itself; this only guards against a lost answer.
        let sent = tokio::time::timeout(ttl + Duration::from_secs(1), request.send().promise).await;
        let response = match sent {
            Err(_) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, format!("no answer from {}", self.addr));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Ok(Err(e)) => {
                self.peers.note_error(&self.addr, &e);
                return Err(if e.kind == capnp::ErrorKind::Disconnected {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                });
            }
            Ok(Ok(r)) => r,
        };
        let bytes = response.get().and_then(|r| r.get_body()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer: Result<Resp, RaftError<E>> =
            serde_json::from_slice(bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(RaftKind::AppendEntries, &req, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(RaftKind::InstallSnapshot, &req, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(RaftKind::Vote, &req, option.hard_ttl()).await
    }
}
