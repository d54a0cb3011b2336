//! The `Groupd` capnp interface, and the loop accepting connections.

use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use sheep_core::group::{Op, Reply, RequestId, SessionKind};
use sheep_core::group::{DEFAULT_COPIES, DEFAULT_OBJECT_SIZE_SHIFT, DEFAULT_VOTERS};
use sheep_rpc::codec;
use sheep_rpc::error::{refusal, ErrorCode};
use sheep_rpc::groupd_capnp::groupd::{self, RaftKind};
use sheep_rpc::groupd_capnp::SessionKind as WireKind;
use tokio::net::TcpListener;

use sheep_core::auth::caps::Access;
use sheep_rpc::transport::Peer;

use crate::forward::{expect_seq, expect_session, Outcome};
use crate::network::rpc_system;
use crate::node::Node;
use crate::rights;
use crate::types::TypeConfig;

/// The longest a watch call waits for a first event.
pub const MAX_WAIT_MS: u32 = 30_000;
/// The most events one watch call returns.
pub const MAX_ENTRIES: u32 = 10_000;
/// The largest broadcast payload (it is kept in the log, the events and snapshots).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The longest name, VDI name, address or cluster id accepted.
pub const MAX_TEXT: usize = 4096;

/// The API as one connection's peer sees it (its rights: `rights`).
pub struct GroupdServer {
    pub node: Rc<Node>,
    pub peer: Peer,
}

fn bad_request(msg: impl std::fmt::Display) -> capnp::Error {
    refusal(ErrorCode::BadRequest, msg)
}

fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    let s = r?.to_str().map_err(|e| bad_request(format!("invalid UTF-8: {e}")))?;
    if s.len() > MAX_TEXT {
        return Err(bad_request(format!("a text field is longer than {MAX_TEXT} bytes")));
    }
    Ok(s.to_string())
}

/// Runs the openraft call for one `raft` RPC; the answer is `Result<response, RaftError>`.
async fn raft_call(node: &Node, kind: RaftKind, body: &[u8]) -> Result<Vec<u8>, capnp::Error> {
    fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, capnp::Error> {
        serde_json::to_vec(v).map_err(|e| capnp::Error::failed(format!("cannot encode a raft answer: {e}")))
    }
    let bad = |e: serde_json::Error| bad_request(format!("undecodable raft request: {e}"));
    match kind {
        RaftKind::AppendEntries => {
            let req: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(body).map_err(bad)?;
            encode(&node.raft.append_entries(req).await)
        }
        RaftKind::Vote => {
            let req: VoteRequest<u64> = serde_json::from_slice(body).map_err(bad)?;
            encode(&node.raft.vote(req).await)
        }
        RaftKind::InstallSnapshot => {
            let req: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(body).map_err(bad)?;
            encode(&node.raft.install_snapshot(req).await)
        }
    }
}

impl GroupdServer {
    /// Submits a state change the peer has the rights for.
    async fn submit(&self, op: Op, request: Option<RequestId>) -> Result<Outcome, capnp::Error> {
        self.check(&op)?;
        self.node.submit(op, request).await
    }

    /// The rights `op` needs.
    fn check(&self, op: &Op) -> Result<(), capnp::Error> {
        let (node, peer) = (&self.node, &self.peer);
        if peer.is_privileged() {
            return Ok(());
        }
        // A client acts only through sessions it opened itself (another client's session
        // closed or kept alive would release or keep its locks).
        match op {
            Op::CloseSession { session, .. }
            | Op::Lock { session, .. }
            | Op::Unlock { session, force: false, .. }
            | Op::VdiSnapshot { session, .. }
            | Op::Broadcast { session, .. } => rights::owns(node, peer, *session)?,
            _ => {}
        }
        match op {
            Op::OpenSession { kind: SessionKind::Client { .. }, .. } | Op::CloseSession { .. } => {
                rights::live(node, peer)
            }
            Op::Lock { vdi: name, .. }
            | Op::Unlock { vdi: name, .. }
            | Op::VdiCreate { name, .. }
            | Op::VdiDelete { name, .. }
            | Op::VdiSnapshot { name, .. }
            | Op::VdiRollback { name, .. }
            | Op::VdiResize { name, .. }
            | Op::VdiSetAttr { name, .. } => rights::allow(node, peer, name, Access::ReadWrite),
            // A client may ask the holder of a VDI it may write for a snapshot (and the
            // holder answer): nothing else is its to broadcast.
            Op::Broadcast { payload, .. } => match sheep_core::group::holder::HolderRequest::decode(payload) {
                Some(r) => rights::allow(node, peer, r.vdi(), Access::ReadWrite),
                None => rights::privileged(peer, "broadcasting other than a holder request"),
            },
            Op::VdiClone { name, new_name, .. } => {
                rights::allow(node, peer, name, Access::Read)?;
                rights::allow(node, peer, new_name, Access::ReadWrite)
            }
            Op::Format { .. } => rights::privileged(peer, "cluster format"),
            Op::Shutdown => rights::privileged(peer, "cluster shutdown"),
            Op::RecoverForce => rights::privileged(peer, "cluster recover force"),
            Op::AuthAdd { .. } | Op::AuthCaps { .. } | Op::AuthRm { .. } => {
                rights::privileged(peer, "changing clients")
            }
            _ => rights::privileged(peer, "a daemon's command"),
        }
    }

    /// Submits a change of the clients, answered with the client's entry.
    async fn auth_reply(
        &self,
        op: Op,
        request: Option<RequestId>,
        out: sheep_rpc::groupd_capnp::auth_client::Builder<'_>,
    ) -> Result<(), capnp::Error> {
        match self.submit(op, request).await?.reply {
            Reply::Client(c) => {
                codec::write_auth_client(out, &c);
                Ok(())
            }
            _ => Err(bad_request("unexpected answer to an auth call")),
        }
    }

    /// Submits a namespace change whose answer is one VDI entry.
    async fn submit_vdi(
        &self,
        op: Op,
        request: Option<RequestId>,
        what: &str,
    ) -> Result<sheep_core::namespace::VdiEntry, capnp::Error> {
        match self.submit(op, request).await?.reply {
            Reply::Vdi(v) => Ok(v),
            _ => Err(bad_request(format!("unexpected answer to {what}"))),
        }
    }
}

impl groupd::Server for GroupdServer {
    async fn open_session(
        self: Rc<Self>,
        params: groupd::OpenSessionParams,
        mut results: groupd::OpenSessionResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            let kind = match p.get_kind().map_err(|_| bad_request("unknown session kind"))? {
                WireKind::Storage => {
                    if !p.has_node() {
                        return Err(bad_request("a storage session needs its node"));
                    }
                    SessionKind::Storage(codec::read_node(p.get_node()?)?)
                }
                WireKind::Client => SessionKind::Client { name: rights::session_name(&self.peer, text(p.get_name())?) },
            };
            Op::OpenSession { kind, store_cluster: text(p.get_cluster_id())? }
        };
        let out = self.submit(op, request).await?;
        let mut r = results.get();
        r.set_session(expect_session(&out)?);
        r.set_lease_ms(out.lease_ms);
        Ok(())
    }

    async fn keepalive(
        self: Rc<Self>,
        params: groupd::KeepaliveParams,
        _: groupd::KeepaliveResults,
    ) -> Result<(), capnp::Error> {
        rights::live(&self.node, &self.peer)?;
        let session = params.get()?.get_session();
        rights::owns(&self.node, &self.peer, session)?;
        self.node.keepalive(session).await
    }

    async fn close_session(
        self: Rc<Self>,
        params: groupd::CloseSessionParams,
        _: groupd::CloseSessionResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let (session, request) = (p.get_session(), codec::read_request(p.get_request()?));
        self.submit(Op::CloseSession { session, expired: false }, request).await?;
        Ok(())
    }

    async fn propose(
        self: Rc<Self>,
        params: groupd::ProposeParams,
        mut results: groupd::ProposeResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            let payload = p.get_payload()?;
            if payload.len() > MAX_PAYLOAD {
                return Err(bad_request(format!("a payload is limited to {MAX_PAYLOAD} bytes")));
            }
            Op::Broadcast { session: p.get_session(), payload: payload.to_vec() }
        };
        let out = self.submit(op, request).await?;
        results.get().set_seq(expect_seq(&out)?);
        Ok(())
    }

    async fn watch(
        self: Rc<Self>,
        params: groupd::WatchParams,
        mut results: groupd::WatchResults,
    ) -> Result<(), capnp::Error> {
        rights::live(&self.node, &self.peer)?;
        let (from, max, wait_ms) = {
            let p = params.get()?;
            let max = match p.get_max_entries() {
                0 => MAX_ENTRIES,
                n => n.min(MAX_ENTRIES),
            };
            (p.get_from_seq().max(1), max as usize, p.get_wait_ms().min(MAX_WAIT_MS))
        };
        let mut seq = self.node.sm.subscribe_seq();
        if *seq.borrow_and_update() <= from && wait_ms > 0 {
            let wait = Duration::from_millis(wait_ms as u64);
            let _ = tokio::time::timeout(wait, seq.wait_for(|&next| next > from)).await;
        }
        let events = self.node.sm.state().events_from(from, max).map_err(|oldest| {
            refusal(
                ErrorCode::Compacted,
                format!("events before {oldest} are no longer kept here; resynchronise from info"),
            )
        })?;
        let next = events.last().map_or(from, |e| e.seq + 1);
        let mut r = results.get();
        codec::write_events(r.reborrow().init_events(events.len() as u32), &events);
        r.set_next_seq(next);
        Ok(())
    }

    async fn info(self: Rc<Self>, _: groupd::InfoParams, mut results: groupd::InfoResults) -> Result<(), capnp::Error> {
        rights::live(&self.node, &self.peer)?;
        let info = self.node.info();
        codec::write_cluster_info(results.get().init_info(), &info);
        Ok(())
    }

    async fn format(
        self: Rc<Self>,
        params: groupd::FormatParams,
        mut results: groupd::FormatResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            let or = |v: u8, d: u8| if v == 0 { d } else { v };
            Op::Format {
                cluster_id: String::new(), // chosen by the master
                copies: or(p.get_copies(), DEFAULT_COPIES),
                object_size_shift: or(p.get_object_size_shift(), DEFAULT_OBJECT_SIZE_SHIFT),
                voters: or(p.get_voters(), DEFAULT_VOTERS),
                force: p.get_force(),
                policy: sheep_core::group::Policy {
                    min_copies: p.get_min_copies(),
                    hold_ms: p.get_hold_ms(),
                    allow_fewer_zones: p.get_allow_fewer_zones(),
                    secure: p.get_secure(),
                },
            }
        };
        let out = self.submit(op, request).await?;
        let Reply::Formatted(config) = out.reply else {
            return Err(bad_request("unexpected answer to format"));
        };
        codec::write_config(results.get().init_config(), &config);
        Ok(())
    }

    async fn shutdown(
        self: Rc<Self>,
        params: groupd::ShutdownParams,
        _: groupd::ShutdownResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        self.submit(Op::Shutdown, request).await?;
        Ok(())
    }

    async fn recover_force(
        self: Rc<Self>,
        params: groupd::RecoverForceParams,
        _: groupd::RecoverForceResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        self.submit(Op::RecoverForce, request).await?;
        Ok(())
    }

    async fn lock(
        self: Rc<Self>,
        params: groupd::LockParams,
        mut results: groupd::LockResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::Lock { session: p.get_session(), vdi: text(p.get_vdi())? }
        };
        let out = self.submit(op, request).await?;
        let Reply::Locked(lock) = &out.reply else {
            return Err(bad_request("unexpected answer to lock"));
        };
        codec::write_lock(results.get().init_lock(), lock, &out.holder);
        Ok(())
    }

    async fn unlock(
        self: Rc<Self>,
        params: groupd::UnlockParams,
        _: groupd::UnlockResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::Unlock { session: p.get_session(), vdi: text(p.get_vdi())?, force: p.get_force() }
        };
        self.submit(op, request).await?;
        Ok(())
    }

    async fn raft(
        self: Rc<Self>,
        params: groupd::RaftParams,
        mut results: groupd::RaftResults,
    ) -> Result<(), capnp::Error> {
        rights::privileged(&self.peer, "raft")?;
        let (kind, body) = {
            let p = params.get()?;
            (p.get_kind().map_err(|_| bad_request("unknown raft RPC kind"))?, p.get_body()?.to_vec())
        };
        let answer = raft_call(&self.node, kind, &body).await?;
        results.get().set_body(&answer);
        Ok(())
    }

    async fn vdi_create(
        self: Rc<Self>,
        params: groupd::VdiCreateParams,
        mut results: groupd::VdiCreateResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::VdiCreate {
                name: text(p.get_name())?,
                size: p.get_size(),
                copies: p.get_copies(),
                allow_fewer_zones: p.get_allow_fewer_zones(),
            }
        };
        let out = self.submit(op, request).await?;
        let Reply::Vdi(vdi) = &out.reply else {
            return Err(bad_request("unexpected answer to vdiCreate"));
        };
        codec::write_vdi(results.get().init_vdi(), vdi);
        Ok(())
    }

    async fn vdi_delete(
        self: Rc<Self>,
        params: groupd::VdiDeleteParams,
        mut results: groupd::VdiDeleteResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = Op::VdiDelete { name: text(params.get()?.get_name())?, tag: None };
        let vdi = self.submit_vdi(op, request, "vdiDelete").await?;
        codec::write_vdi(results.get().init_vdi(), &vdi);
        Ok(())
    }

    async fn vdi_delete_snapshot(
        self: Rc<Self>,
        params: groupd::VdiDeleteSnapshotParams,
        mut results: groupd::VdiDeleteSnapshotResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::VdiDelete { name: text(p.get_name())?, tag: Some(text(p.get_tag())?) }
        };
        let vdi = self.submit_vdi(op, request, "vdiDeleteSnapshot").await?;
        codec::write_vdi(results.get().init_vdi(), &vdi);
        Ok(())
    }

    async fn vdi_snapshot(
        self: Rc<Self>,
        params: groupd::VdiSnapshotParams,
        mut results: groupd::VdiSnapshotResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::VdiSnapshot { session: p.get_session(), name: text(p.get_name())?, tag: text(p.get_tag())? }
        };
        let out = self.submit(op, request).await?;
        let Reply::Snapshot { snapshot, working } = &out.reply else {
            return Err(bad_request("unexpected answer to vdiSnapshot"));
        };
        let mut r = results.get();
        codec::write_vdi(r.reborrow().init_snapshot(), snapshot);
        codec::write_vdi(r.init_working(), working);
        Ok(())
    }

    async fn vdi_clone(
        self: Rc<Self>,
        params: groupd::VdiCloneParams,
        mut results: groupd::VdiCloneResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::VdiClone { name: text(p.get_name())?, tag: text(p.get_tag())?, new_name: text(p.get_new_name())? }
        };
        let vdi = self.submit_vdi(op, request, "vdiClone").await?;
        codec::write_vdi(results.get().init_vdi(), &vdi);
        Ok(())
    }

    async fn vdi_rollback(
        self: Rc<Self>,
        params: groupd::VdiRollbackParams,
        mut results: groupd::VdiRollbackResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::VdiRollback { name: text(p.get_name())?, tag: text(p.get_tag())? }
        };
        let vdi = self.submit_vdi(op, request, "vdiRollback").await?;
        codec::write_vdi(results.get().init_vdi(), &vdi);
        Ok(())
    }

    async fn vdi_resize(
        self: Rc<Self>,
        params: groupd::VdiResizeParams,
        mut results: groupd::VdiResizeResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::VdiResize { name: text(p.get_name())?, size: p.get_size() }
        };
        let vdi = self.submit_vdi(op, request, "vdiResize").await?;
        codec::write_vdi(results.get().init_vdi(), &vdi);
        Ok(())
    }

    async fn vdi_set_attr(
        self: Rc<Self>,
        params: groupd::VdiSetAttrParams,
        _: groupd::VdiSetAttrResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            let value = if p.get_delete() { None } else { Some(p.get_value()?.to_vec()) };
            Op::VdiSetAttr { name: text(p.get_name())?, key: text(p.get_key())?, value, exclusive: p.get_exclusive() }
        };
        self.submit(op, request).await?;
        Ok(())
    }

    async fn vdi_get_attr(
        self: Rc<Self>,
        params: groupd::VdiGetAttrParams,
        mut results: groupd::VdiGetAttrResults,
    ) -> Result<(), capnp::Error> {
        let (name, key) = {
            let p = params.get()?;
            (text(p.get_name())?, text(p.get_key())?)
        };
        rights::allow(&self.node, &self.peer, &name, Access::Read)?;
        let value = {
            let state = self.node.sm.state();
            state.vdis.get_attr(&name, &key).map(<[u8]>::to_vec)
        };
        let value = value.map_err(|e| capnp::Error::failed(e.to_string()))?;
        results.get().set_value(&value);
        Ok(())
    }

    async fn vdi_list(
        self: Rc<Self>,
        _: groupd::VdiListParams,
        mut results: groupd::VdiListResults,
    ) -> Result<(), capnp::Error> {
        rights::live(&self.node, &self.peer)?;
        let (vdis, deleted, retired) = {
            let state = self.node.sm.state();
            // Every client sees every name (as `vdi list` shows them); what it may read or
            // write of them is checked where it asks, and refused naming the capability.
            let vdis: Vec<_> = state.vdis.list().cloned().collect();
            let deleted: Vec<u32> = state.vdis.deleted().map(|v| v.get()).collect();
            let retired: Vec<_> = state.vdis.retired().cloned().collect();
            (vdis, deleted, retired)
        };
        let mut r = results.get();
        let mut list = r.reborrow().init_vdis(vdis.len() as u32);
        for (i, v) in vdis.iter().enumerate() {
            codec::write_vdi(list.reborrow().get(i as u32), v);
        }
        let mut ids = r.reborrow().init_deleted_vids(deleted.len() as u32);
        for (i, v) in deleted.iter().enumerate() {
            ids.set(i as u32, *v);
        }
        let mut list = r.init_retired(retired.len() as u32);
        for (i, v) in retired.iter().enumerate() {
            codec::write_vdi(list.reborrow().get(i as u32), v);
        }
        Ok(())
    }

    async fn recovery_done(
        self: Rc<Self>,
        params: groupd::RecoveryDoneParams,
        _: groupd::RecoveryDoneResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::RecoveryDone { session: p.get_session(), epoch: p.get_epoch() }
        };
        self.submit(op, request).await?;
        Ok(())
    }

    async fn node_failed(
        self: Rc<Self>,
        params: groupd::NodeFailedParams,
        _: groupd::NodeFailedResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::NodeFailed { session: p.get_session(), reason: text(p.get_reason())? }
        };
        self.submit(op, request).await?;
        Ok(())
    }

    async fn add_member(
        self: Rc<Self>,
        params: groupd::AddMemberParams,
        _: groupd::AddMemberResults,
    ) -> Result<(), capnp::Error> {
        rights::privileged(&self.peer, "adding a groupd")?;
        let (id, addr) = {
            let p = params.get()?;
            (p.get_raft_id(), text(p.get_addr())?)
        };
        self.node.add_member(id, &addr).await
    }

    async fn auth_add(
        self: Rc<Self>,
        params: groupd::AuthAddParams,
        mut results: groupd::AuthAddResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::AuthAdd { name: text(p.get_name())?, caps: codec::read_caps(p.get_caps())? }
        };
        self.auth_reply(op, request, results.get().init_client()).await
    }

    async fn auth_caps(
        self: Rc<Self>,
        params: groupd::AuthCapsParams,
        mut results: groupd::AuthCapsResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = {
            let p = params.get()?;
            Op::AuthCaps { name: text(p.get_name())?, caps: codec::read_caps(p.get_caps())? }
        };
        self.auth_reply(op, request, results.get().init_client()).await
    }

    async fn auth_rm(
        self: Rc<Self>,
        params: groupd::AuthRmParams,
        mut results: groupd::AuthRmResults,
    ) -> Result<(), capnp::Error> {
        let request = codec::read_request(params.get()?.get_request()?);
        let op = Op::AuthRm { name: text(params.get()?.get_name())? };
        self.auth_reply(op, request, results.get().init_client()).await
    }

    async fn auth_list(
        self: Rc<Self>,
        _: groupd::AuthListParams,
        mut results: groupd::AuthListResults,
    ) -> Result<(), capnp::Error> {
        rights::privileged(&self.peer, "auth list")?;
        let clients: Vec<_> = self.node.sm.state().clients.values().cloned().collect();
        let mut list = results.get().init_clients(clients.len() as u32);
        for (i, c) in clients.iter().enumerate() {
            codec::write_auth_client(list.reborrow().get(i as u32), c);
        }
        Ok(())
    }

    async fn ticket(
        self: Rc<Self>,
        _: groupd::TicketParams,
        mut results: groupd::TicketResults,
    ) -> Result<(), capnp::Error> {
        let ticket = rights::ticket(&self.node, &self.peer, self.node.ticket_ms)?;
        let mut r = results.get();
        r.set_ticket(&ticket);
        r.set_lifetime_ms(self.node.ticket_ms);
        Ok(())
    }
}

/// Accepts connections forever, each served by its own RPC system on this thread, with a
/// server of its own that knows who the peer proved to be.
pub async fn serve(listener: TcpListener, node: Rc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "connection accepted");
                let node = node.clone();
                tokio::task::spawn_local(async move {
                    // Only a peer that authenticates gets to send a request.
                    let Ok((stream, who)) = sheep_rpc::transport::accept(stream, peer).await else { return };
                    let client: groupd::Client = capnp_rpc::new_client(GroupdServer { node, peer: who });
                    let rpc = rpc_system(stream, Side::Server, Some(client.client));
                    if let Err(e) = rpc.await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
