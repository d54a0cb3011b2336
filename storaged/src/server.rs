//! The `Storaged` capnp interface: what the node is and what it has seen of the cluster,
//! and the object operations (see `ops` for their rules).

use std::rc::Rc;

use capnp::capability::Rc as CapRc;
use sheep_core::auth::caps::Access;
use sheep_core::object::ObjectId;
use sheep_core::store::{RecoveryStatus, StoreStatus};
use sheep_rpc::clock::now_unix_ms;
use sheep_rpc::codec;
use sheep_rpc::codec::storaged::{self as wire, read_oid};
use sheep_rpc::error::{refusal, ErrorCode};
use sheep_rpc::storaged_capnp::storaged;
use sheep_rpc::transport::Peer;
use tokio::net::TcpListener;
use tracing::debug;

use sheep_client::rpc::{Admission, Admitted, ConnectionBounds, Reserved};

use crate::metrics::{Op, Served};
use crate::node::Node;
use crate::ops::{self, bad_request};

/// The API as one connection's peer sees it: its rights are checked on every object request.
struct StoragedImpl {
    node: Rc<Node>,
    peer: Peer,
    /// The node's bound on the bytes its handlers work on (see `sheep_client::rpc::admission`).
    admission: Rc<Admission>,
    /// This connection's bounds: its requests not finished, its replies not sent.
    connection: ConnectionBounds,
}

/// A connection reads no more requests while its handlers hold this many bytes.
const CONNECTION_REQUESTS: usize = 16 << 20;
/// A request's reply is made only while fewer bytes than this wait to be sent to its peer.
const REPLY_BACKLOG: usize = 8 << 20;

/// What a request holds while it is served.
struct Held {
    _connection: Admitted,
    _reply: Reserved,
    _node: Option<Admitted>,
}

impl StoragedImpl {
    /// Holds a request of `request` bytes whose reply will carry `reply` bytes: the request
    /// on its connection at once, the reply in its connection's backlog once the peer took in
    /// what it was sent before, then both on the node. A peer that does not read its replies
    /// waits in the backlog without holding any of the node's room.
    async fn hold(&self, request: usize, reply: usize) -> Held {
        let (connection, reserved) = self.hold_on_connection(request, reply).await;
        let node = self.admission.admit(request + reply).await;
        Held { _connection: connection, _reply: reserved, _node: Some(node) }
    }

    /// [`Self::hold`] for a request other nodes make while they serve one of their own (a
    /// copy-on-write's base): it does not wait for the node's room, which could be full of
    /// requests waiting for them. The callers' own bounds bound these.
    async fn hold_for_a_node(&self, request: usize, reply: usize) -> Held {
        let (connection, reserved) = self.hold_on_connection(request, reply).await;
        Held { _connection: connection, _reply: reserved, _node: None }
    }

    async fn hold_on_connection(&self, request: usize, reply: usize) -> (Admitted, Reserved) {
        let connection = self.connection.requests.admit_now(request + reply);
        (connection, self.connection.replies.reserve(REPLY_BACKLOG, reply).await)
    }

    /// Whether the peer may touch `oid` so (its ticket names the object's VDI with that access).
    fn allow(&self, oid: ObjectId, wanted: Access) -> Result<(), capnp::Error> {
        let Peer::Client { entity, ticket, .. } = &self.peer else { return Ok(()) };
        let Some(ticket) = ticket else {
            return Err(refusal(ErrorCode::Denied, format!("{entity} showed no ticket: it may touch no object")));
        };
        if ticket.expires_ms <= now_unix_ms() {
            return Err(refusal(ErrorCode::TicketExpired, format!("the ticket of {entity} expired")));
        }
        let vid = oid.vid().get();
        match ticket.access(vid) {
            Some(access) if access.allows(wanted) => Ok(()),
            got => Err(refusal(
                ErrorCode::Denied,
                format!(
                    "{entity} has no capability `{}` on VDI {vid:06x} (object {oid}): its ticket grants {}",
                    wanted.as_str(),
                    got.map_or("nothing on that VDI", |a| if a == Access::Read { "only `r`" } else { "`rw`" })
                ),
            )),
        }
    }

    /// Node-wide requests (every object's listing): daemons' and the administrator's only.
    fn privileged(&self, what: &str) -> Result<(), capnp::Error> {
        if self.peer.is_privileged() {
            return Ok(());
        }
        Err(refusal(ErrorCode::Denied, format!("{what} is the administrator's; {} may not", self.peer.name())))
    }
}

impl storaged::Server for StoragedImpl {
    async fn status(
        self: CapRc<Self>,
        _: storaged::StatusParams,
        mut results: storaged::StatusResults,
    ) -> Result<(), capnp::Error> {
        let node = &self.node;
        let st = node.status();
        let status = StoreStatus {
            node: node.info.clone(),
            cluster_id: st.cluster_id,
            epoch: st.epoch,
            session: st.session,
            joined: st.session != 0,
            data_dir: node.store.path().to_string_lossy().into_owned(),
            uptime_ms: u64::try_from(node.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        wire::write_status(results.get().init_status(), &status);
        Ok(())
    }

    async fn epoch_log(
        self: CapRc<Self>,
        _: storaged::EpochLogParams,
        mut results: storaged::EpochLogResults,
    ) -> Result<(), capnp::Error> {
        let epochs = self.node.epochs();
        codec::write_epochs(results.get().init_epochs(epochs.len() as u32), &epochs);
        Ok(())
    }

    async fn read(
        self: CapRc<Self>,
        params: storaged::ReadParams,
        mut results: storaged::ReadResults,
    ) -> Result<(), capnp::Error> {
        self.node
            .metrics
            .count(Op::Read, async {
                let p = params.get()?;
                let oid = read_oid(p.get_oid())?;
                self.allow(oid, Access::Read)?;
                let (offset, len) = (u64::from(p.get_offset()), u64::from(p.get_length()));
                let _held = self.hold(0, len as usize).await;
                let data = ops::read(&self.node, p.get_epoch(), oid, offset, len).await?;
                results.get().set_data(&data);
                Ok(Served::object(oid, data.len() as u64))
            })
            .await
    }

    async fn write(
        self: CapRc<Self>,
        params: storaged::WriteParams,
        _: storaged::WriteResults,
    ) -> Result<(), capnp::Error> {
        self.node
            .metrics
            .count(Op::Write, async {
                let p = params.get()?;
                let oid = read_oid(p.get_oid())?;
                self.allow(oid, Access::ReadWrite)?;
                let data = p.get_data()?;
                let _held = self.hold(data.len(), 0).await;
                ops::write(&self.node, p.get_epoch(), oid, u64::from(p.get_offset()), data, p.get_fua(), p.get_fence())
                    .await?;
                Ok(Served::object(oid, data.len() as u64))
            })
            .await
    }

    async fn zero(
        self: CapRc<Self>,
        params: storaged::ZeroParams,
        _: storaged::ZeroResults,
    ) -> Result<(), capnp::Error> {
        self.node
            .metrics
            .count(Op::Zero, async {
                let p = params.get()?;
                let oid = read_oid(p.get_oid())?;
                self.allow(oid, Access::ReadWrite)?;
                let (offset, len) = (u64::from(p.get_offset()), u64::from(p.get_length()));
                let _held = self.hold(0, 0).await;
                ops::zero(&self.node, p.get_epoch(), oid, offset, len, p.get_fua(), p.get_fence()).await?;
                Ok(Served::object(oid, 0))
            })
            .await
    }

    async fn create_and_write(
        self: CapRc<Self>,
        params: storaged::CreateAndWriteParams,
        _: storaged::CreateAndWriteResults,
    ) -> Result<(), capnp::Error> {
        self.node
            .metrics
            .count(Op::CreateAndWrite, async {
                let p = params.get()?;
                let oid = read_oid(p.get_oid())?;
                let base = match p.get_base_oid() {
                    0 => None,
                    raw => Some(read_oid(raw)?),
                };
                if base == Some(oid) {
                    return Err(bad_request(format!("object {oid} cannot be its own base")));
                }
                self.allow(oid, Access::ReadWrite)?;
                if let Some(base) = base {
                    // The node copies the base itself: the client must be allowed to read it.
                    self.allow(base, Access::Read)?;
                }
                // A base is copied whole into memory first.
                let base_bytes = if base.is_some() { p.get_object_size() as usize } else { 0 };
                let _held = self.hold(p.get_data()?.len() + base_bytes, 0).await;
                let data = p.get_data()?.to_vec();
                // The client's bytes only: a base copied under them is not the request's payload.
                let written = data.len() as u64;
                let offset = u64::from(p.get_offset());
                let fence = p.get_fence();
                ops::create_and_write(
                    &self.node,
                    p.get_epoch(),
                    oid,
                    p.get_object_size(),
                    base,
                    offset,
                    data,
                    p.get_fua(),
                    fence,
                )
                .await?;
                Ok(Served::object(oid, written))
            })
            .await
    }

    async fn remove(
        self: CapRc<Self>,
        params: storaged::RemoveParams,
        _: storaged::RemoveResults,
    ) -> Result<(), capnp::Error> {
        self.node
            .metrics
            .count(Op::Remove, async {
                let p = params.get()?;
                let oid = read_oid(p.get_oid())?;
                self.allow(oid, Access::ReadWrite)?;
                ops::remove(&self.node, p.get_epoch(), oid).await?;
                Ok(Served::object(oid, 0))
            })
            .await
    }

    async fn list(
        self: CapRc<Self>,
        params: storaged::ListParams,
        mut results: storaged::ListResults,
    ) -> Result<(), capnp::Error> {
        self.node
            .metrics
            .count(Op::List, async {
                self.privileged("listing every object of a node")?;
                let _held = self.hold(0, 0).await;
                let listing = ops::list(&self.node, params.get()?.get_epoch()).await?;
                wire::write_listing(results.get(), &listing)?;
                Ok(Served::node())
            })
            .await
    }

    async fn fetch(
        self: CapRc<Self>,
        params: storaged::FetchParams,
        mut results: storaged::FetchResults,
    ) -> Result<(), capnp::Error> {
        self.node
            .metrics
            .count(Op::Fetch, async {
                let p = params.get()?;
                let oid = read_oid(p.get_oid())?;
                self.allow(oid, Access::Read)?;
                // Counted at the usual object size (the object's own is known once it is read).
                let _held = self.hold_for_a_node(0, 1 << sheep_core::inode::DEFAULT_OBJECT_SIZE_SHIFT).await;
                let whole = ops::fetch(&self.node, p.get_epoch(), oid, !p.get_inspect()).await?;
                wire::write_whole(results.get(), &whole);
                Ok(Served::object(oid, whole.data.len() as u64))
            })
            .await
    }

    async fn flush(
        self: CapRc<Self>,
        params: storaged::FlushParams,
        _: storaged::FlushResults,
    ) -> Result<(), capnp::Error> {
        self.node
            .metrics
            .count(Op::Flush, async {
                ops::flush(&self.node, params.get()?.get_epoch()).await?;
                Ok(Served::node())
            })
            .await
    }

    async fn stat(
        self: CapRc<Self>,
        _: storaged::StatParams,
        mut results: storaged::StatResults,
    ) -> Result<(), capnp::Error> {
        self.node
            .metrics
            .count(Op::Stat, async {
                let st = ops::stat(&self.node).await?;
                wire::write_stat(results.get().init_stat(), &st);
                Ok(Served::node())
            })
            .await
    }

    async fn recovery(
        self: CapRc<Self>,
        _: storaged::RecoveryParams,
        mut results: storaged::RecoveryResults,
    ) -> Result<(), capnp::Error> {
        let p = self.node.recovery.borrow();
        let (waiting, mut nodes) = p.waits();
        nodes.extend(p.hidden_on.iter().cloned());
        let waiting_for: Vec<String> = nodes.into_iter().collect();
        let status = RecoveryStatus {
            epoch: p.epoch,
            done: p.done,
            total: p.total,
            complete: p.complete,
            listed: p.listed,
            waiting,
            waiting_for,
        };
        wire::write_recovery(results.get().init_status(), &status);
        Ok(())
    }

    async fn io_stats(
        self: CapRc<Self>,
        _: storaged::IoStatsParams,
        mut results: storaged::IoStatsResults,
    ) -> Result<(), capnp::Error> {
        // Per-VDI figures of every VDI: not for a client whose ticket names only its own.
        self.privileged("the node's I/O counters")?;
        let uptime_ms = u64::try_from(self.node.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        wire::write_io(results.get().init_stats(), &self.node.metrics.io(uptime_ms))
    }
}

/// Serves the node's API on every connection accepted by `listener`, forever: each
/// connection its own server, which knows who its peer proved to be. Handlers work on at
/// most about `inflight` bytes at once, node-wide.
pub async fn serve(listener: TcpListener, node: Rc<Node>, inflight: usize) {
    let admission = Admission::new(inflight);
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                debug!("connection from {addr}");
                let node = node.clone();
                let admission = admission.clone();
                tokio::task::spawn_local(sheep_client::rpc::serve_admitted(
                    stream,
                    addr,
                    CONNECTION_REQUESTS,
                    REPLY_BACKLOG,
                    move |peer, connection| {
                        let client: storaged::Client =
                            capnp_rpc::new_client(StoragedImpl { node, peer, admission, connection });
                        client.client
                    },
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                debug!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
