//! The one place where wire messages and `sheep_core` types meet: for each message a
//! `write_*` (core → builder) and a `read_*` (reader → core). Servers and clients both use
//! these, so a field can never be encoded one way and decoded another. groupd's messages are
//! here, storaged's in [`storaged`].

pub mod storaged;

use capnp::text;
use sheep_core::auth::caps::Caps;
use sheep_core::auth::clients::ClientEntry;
use sheep_core::epoch::{EpochRecord, NodeInfo};
use sheep_core::group::{
    ClusterConfig, ClusterInfo, ClusterStatus, Event, EventKind, GroupMember, Lock, LockInfo, MemberRole, Policy,
    RequestId, Session, SessionKind,
};
use sheep_core::namespace::VdiEntry;
use sheep_core::object::VdiId;

use crate::error::{refusal, ErrorCode};
use crate::groupd_capnp::{
    auth_client, cluster_config, cluster_info, epoch_record, event, group_member, lock, node_info, request_id, session,
    vdi_info, ClusterStatus as WireStatus, SessionKind as WireKind,
};

pub(crate) fn text(r: capnp::Result<text::Reader<'_>>) -> capnp::Result<String> {
    Ok(r?.to_str()?.to_string())
}

pub fn write_node(mut b: node_info::Builder<'_>, n: &NodeInfo) {
    b.set_id(n.id.as_str());
    b.set_addr(n.addr.as_str());
    b.set_zone(n.zone);
    b.set_weight(n.weight);
}

pub fn read_node(r: node_info::Reader<'_>) -> capnp::Result<NodeInfo> {
    Ok(NodeInfo { id: text(r.get_id())?, addr: text(r.get_addr())?, zone: r.get_zone(), weight: r.get_weight() })
}

pub fn write_nodes(mut b: capnp::struct_list::Builder<'_, node_info::Owned>, nodes: &[NodeInfo]) {
    for (i, n) in nodes.iter().enumerate() {
        write_node(b.reborrow().get(i as u32), n);
    }
}

pub fn read_nodes(r: capnp::struct_list::Reader<'_, node_info::Owned>) -> capnp::Result<Vec<NodeInfo>> {
    r.iter().map(read_node).collect()
}

pub fn write_epoch(mut b: epoch_record::Builder<'_>, e: &EpochRecord) {
    b.set_epoch(e.epoch);
    b.set_time_ms(e.time_ms);
    write_nodes(b.init_nodes(e.nodes.len() as u32), &e.nodes);
}

pub fn read_epoch(r: epoch_record::Reader<'_>) -> capnp::Result<EpochRecord> {
    Ok(EpochRecord { epoch: r.get_epoch(), time_ms: r.get_time_ms(), nodes: read_nodes(r.get_nodes()?)? })
}

pub fn write_epochs(mut b: capnp::struct_list::Builder<'_, epoch_record::Owned>, epochs: &[EpochRecord]) {
    for (i, e) in epochs.iter().enumerate() {
        write_epoch(b.reborrow().get(i as u32), e);
    }
}

pub fn read_epochs(r: capnp::struct_list::Reader<'_, epoch_record::Owned>) -> capnp::Result<Vec<EpochRecord>> {
    r.iter().map(read_epoch).collect()
}

pub fn write_config(mut b: cluster_config::Builder<'_>, c: &ClusterConfig) {
    b.set_cluster_id(c.cluster_id.as_str());
    b.set_created_ms(c.created_ms);
    b.set_copies(c.copies);
    b.set_object_size_shift(c.object_size_shift);
    b.set_voters(c.voters);
    b.set_min_copies(c.policy.min_copies);
    b.set_hold_ms(c.policy.hold_ms);
    b.set_allow_fewer_zones(c.policy.allow_fewer_zones);
    b.set_secure(c.policy.secure);
}

pub fn read_config(r: cluster_config::Reader<'_>) -> capnp::Result<ClusterConfig> {
    Ok(ClusterConfig {
        cluster_id: text(r.get_cluster_id())?,
        created_ms: r.get_created_ms(),
        copies: r.get_copies(),
        object_size_shift: r.get_object_size_shift(),
        voters: r.get_voters(),
        policy: Policy {
            min_copies: r.get_min_copies(),
            hold_ms: r.get_hold_ms(),
            allow_fewer_zones: r.get_allow_fewer_zones(),
            secure: r.get_secure(),
        },
    })
}

pub fn write_request(mut b: request_id::Builder<'_>, r: &RequestId) {
    b.set_client(r.client);
    b.set_seq(r.seq);
    b.set_first_pending(r.first_pending);
}

/// `None` for an unset id (client 0, what a caller that sends none leaves): such a call is
/// applied each time it arrives.
pub fn read_request(r: request_id::Reader<'_>) -> Option<RequestId> {
    let client = r.get_client();
    (client != 0).then(|| RequestId { client, seq: r.get_seq(), first_pending: r.get_first_pending() })
}

pub fn write_session(mut b: session::Builder<'_>, s: &Session) {
    b.set_id(s.id);
    b.set_opened_ms(s.opened_ms);
    b.set_failed(s.failed.as_deref().unwrap_or(""));
    match &s.kind {
        SessionKind::Storage(n) => {
            b.set_kind(WireKind::Storage);
            write_node(b.init_node(), n);
        }
        SessionKind::Client { name } => {
            b.set_kind(WireKind::Client);
            b.set_name(name.as_str());
        }
    }
}

pub fn read_session(r: session::Reader<'_>) -> capnp::Result<Session> {
    let kind = match r.get_kind()? {
        WireKind::Storage => SessionKind::Storage(read_node(r.get_node()?)?),
        WireKind::Client => SessionKind::Client { name: text(r.get_name())? },
    };
    let failed = Some(text(r.get_failed())?).filter(|f| !f.is_empty());
    Ok(Session { id: r.get_id(), kind, opened_ms: r.get_opened_ms(), failed })
}

pub fn write_vdi(mut b: vdi_info::Builder<'_>, v: &VdiEntry) {
    b.set_name(v.name.as_str());
    b.set_vid(v.vid.get());
    b.set_size(v.size);
    b.set_copies(v.copies);
    b.set_object_size_shift(v.object_size_shift);
    b.set_created_ms(v.created_ms);
    b.set_parent(v.parent.map_or(0, |p| p.get()));
    b.set_is_snapshot(v.snapshot.is_some());
    b.set_tag(v.snapshot.as_deref().unwrap_or(""));
}

pub fn read_vid(raw: u32) -> capnp::Result<VdiId> {
    VdiId::new(raw).map_err(|e| refusal(ErrorCode::BadRequest, e))
}

pub fn read_vdi(r: vdi_info::Reader<'_>) -> capnp::Result<VdiEntry> {
    Ok(VdiEntry {
        name: text(r.get_name())?,
        vid: read_vid(r.get_vid())?,
        size: r.get_size(),
        copies: r.get_copies(),
        object_size_shift: r.get_object_size_shift(),
        created_ms: r.get_created_ms(),
        parent: match r.get_parent() {
            0 => None,
            p => Some(read_vid(p)?),
        },
        snapshot: if r.get_is_snapshot() { Some(text(r.get_tag())?) } else { None },
    })
}

pub fn write_auth_client(mut b: auth_client::Builder<'_>, c: &ClientEntry) {
    b.set_name(c.name.as_str());
    b.set_generation(c.generation);
    b.set_caps(c.caps.render().as_str());
}

pub fn read_auth_client(r: auth_client::Reader<'_>) -> capnp::Result<ClientEntry> {
    Ok(ClientEntry { name: text(r.get_name())?, generation: r.get_generation(), caps: read_caps(r.get_caps())? })
}

/// Capabilities as `auth add --caps` spells them; a malformed text is a bad request.
pub fn read_caps(r: capnp::Result<text::Reader<'_>>) -> capnp::Result<Caps> {
    Caps::parse(&text(r)?).map_err(|e| refusal(ErrorCode::BadRequest, e))
}

pub fn write_lock(mut b: lock::Builder<'_>, l: &Lock, holder: &str) {
    b.set_vdi(l.vdi.as_str());
    b.set_session(l.session);
    b.set_token(l.token);
    b.set_holder(holder);
}

pub fn read_lock_info(r: lock::Reader<'_>) -> capnp::Result<LockInfo> {
    Ok(LockInfo {
        lock: Lock { vdi: text(r.get_vdi())?, session: r.get_session(), token: r.get_token() },
        holder: text(r.get_holder())?,
    })
}

fn write_status(s: ClusterStatus) -> WireStatus {
    match s {
        ClusterStatus::Unformatted => WireStatus::Unformatted,
        ClusterStatus::Running => WireStatus::Running,
        ClusterStatus::Shutdown => WireStatus::Shutdown,
        ClusterStatus::Halted => WireStatus::Halted,
    }
}

fn read_status(s: WireStatus) -> ClusterStatus {
    match s {
        WireStatus::Unformatted => ClusterStatus::Unformatted,
        WireStatus::Running => ClusterStatus::Running,
        WireStatus::Shutdown => ClusterStatus::Shutdown,
        WireStatus::Halted => ClusterStatus::Halted,
    }
}

pub fn write_member(mut b: group_member::Builder<'_>, m: &GroupMember) {
    b.set_raft_id(m.raft_id);
    b.set_addr(m.addr.as_str());
    b.set_role(match m.role {
        MemberRole::Master => group_member::Role::Master,
        MemberRole::Submaster => group_member::Role::Submaster,
        MemberRole::Member => group_member::Role::Member,
    });
}

pub fn read_member(r: group_member::Reader<'_>) -> capnp::Result<GroupMember> {
    let role = match r.get_role()? {
        group_member::Role::Master => MemberRole::Master,
        group_member::Role::Submaster => MemberRole::Submaster,
        group_member::Role::Member => MemberRole::Member,
    };
    Ok(GroupMember { raft_id: r.get_raft_id(), addr: text(r.get_addr())?, role })
}

pub fn write_cluster_info(mut b: cluster_info::Builder<'_>, info: &ClusterInfo) {
    b.set_status(write_status(info.status));
    if let Some(c) = &info.config {
        write_config(b.reborrow().init_config(), c);
    }
    let mut members = b.reborrow().init_members(info.members.len() as u32);
    for (i, m) in info.members.iter().enumerate() {
        write_member(members.reborrow().get(i as u32), m);
    }
    write_epochs(b.reborrow().init_epochs(info.epochs.len() as u32), &info.epochs);
    let mut sessions = b.reborrow().init_sessions(info.sessions.len() as u32);
    for (i, s) in info.sessions.iter().enumerate() {
        write_session(sessions.reborrow().get(i as u32), s);
    }
    let mut locks = b.reborrow().init_locks(info.locks.len() as u32);
    for (i, l) in info.locks.iter().enumerate() {
        write_lock(locks.reborrow().get(i as u32), &l.lock, &l.holder);
    }
    write_nodes(b.reborrow().init_missing(info.missing.len() as u32), &info.missing);
    b.set_applied_seq(info.applied_seq);
    b.set_clean_epoch(info.clean_epoch);
    b.set_answered_by(info.answered_by.as_str());
}

pub fn read_cluster_info(r: cluster_info::Reader<'_>) -> capnp::Result<ClusterInfo> {
    Ok(ClusterInfo {
        status: read_status(r.get_status()?),
        config: if r.has_config() { Some(read_config(r.get_config()?)?) } else { None },
        members: r.get_members()?.iter().map(read_member).collect::<capnp::Result<_>>()?,
        epochs: read_epochs(r.get_epochs()?)?,
        sessions: r.get_sessions()?.iter().map(read_session).collect::<capnp::Result<_>>()?,
        locks: r.get_locks()?.iter().map(read_lock_info).collect::<capnp::Result<_>>()?,
        missing: read_nodes(r.get_missing()?)?,
        clean_epoch: r.get_clean_epoch(),
        applied_seq: r.get_applied_seq(),
        answered_by: text(r.get_answered_by())?,
    })
}

/// Writes an event. Lock events carry no holder name on the wire (watchers have the
/// session from its `joined` event).
pub fn write_event(mut b: event::Builder<'_>, e: &Event) {
    b.set_seq(e.seq);
    b.set_time_ms(e.time_ms);
    match &e.kind {
        EventKind::Formatted(c) => write_config(b.init_formatted(), c),
        EventKind::Joined(s) => write_session(b.init_joined(), s),
        EventKind::Left { session, expired } => {
            let mut l = b.init_left();
            l.set_session(*session);
            l.set_expired(*expired);
        }
        EventKind::Epoch(rec) => write_epoch(b.init_epoch(), rec),
        EventKind::Broadcast { session, payload } => {
            let mut bc = b.init_broadcast();
            bc.set_session(*session);
            bc.set_payload(payload);
        }
        EventKind::Locked(l) => write_lock(b.init_locked(), l, ""),
        EventKind::Unlocked { vdi, session, forced } => {
            let mut u = b.init_unlocked();
            u.set_vdi(vdi.as_str());
            u.set_session(*session);
            u.set_forced(*forced);
        }
        EventKind::Shutdown => b.set_shutdown(()),
        EventKind::Halted => b.set_halted(()),
        EventKind::Resumed => b.set_resumed(()),
        EventKind::VdiCreated(v) => write_vdi(b.init_vdi_created(), v),
        EventKind::VdiDeleted(v) => write_vdi(b.init_vdi_deleted(), v),
        EventKind::VdiRetired(v) => write_vdi(b.init_vdi_retired(), v),
        EventKind::VdiSnapshotted { snapshot, working } => {
            let mut g = b.init_vdi_snapshotted();
            write_vdi(g.reborrow().init_snapshot(), snapshot);
            write_vdi(g.init_working(), working);
        }
        EventKind::VdiResized(v) => write_vdi(b.init_vdi_resized(), v),
        EventKind::Recovered { node, epoch } => {
            let mut r = b.init_recovered();
            r.set_node(node.as_str());
            r.set_epoch(*epoch);
        }
        EventKind::RecoveryComplete(epoch) => b.set_recovery_complete(*epoch),
        EventKind::NodeFailed { session, node, reason } => {
            let mut f = b.init_node_failed();
            f.set_session(*session);
            f.set_node(node.as_str());
            f.set_reason(reason.as_str());
        }
    }
}

pub fn read_event(r: event::Reader<'_>) -> capnp::Result<Event> {
    use event::Which;
    let kind = match r.which()? {
        Which::Formatted(c) => EventKind::Formatted(read_config(c?)?),
        Which::Joined(s) => EventKind::Joined(read_session(s?)?),
        Which::Left(l) => EventKind::Left { session: l.get_session(), expired: l.get_expired() },
        Which::Epoch(rec) => EventKind::Epoch(read_epoch(rec?)?),
        Which::Broadcast(bc) => EventKind::Broadcast { session: bc.get_session(), payload: bc.get_payload()?.to_vec() },
        Which::Locked(l) => EventKind::Locked(read_lock_info(l?)?.lock),
        Which::Unlocked(u) => {
            EventKind::Unlocked { vdi: text(u.get_vdi())?, session: u.get_session(), forced: u.get_forced() }
        }
        Which::Shutdown(()) => EventKind::Shutdown,
        Which::Halted(()) => EventKind::Halted,
        Which::Resumed(()) => EventKind::Resumed,
        Which::VdiCreated(v) => EventKind::VdiCreated(read_vdi(v?)?),
        Which::VdiDeleted(v) => EventKind::VdiDeleted(read_vdi(v?)?),
        Which::VdiRetired(v) => EventKind::VdiRetired(read_vdi(v?)?),
        Which::VdiSnapshotted(g) => {
            EventKind::VdiSnapshotted { snapshot: read_vdi(g.get_snapshot()?)?, working: read_vdi(g.get_working()?)? }
        }
        Which::VdiResized(v) => EventKind::VdiResized(read_vdi(v?)?),
        Which::Recovered(r) => EventKind::Recovered { node: text(r.get_node())?, epoch: r.get_epoch() },
        Which::RecoveryComplete(epoch) => EventKind::RecoveryComplete(epoch),
        Which::NodeFailed(f) => {
            EventKind::NodeFailed { session: f.get_session(), node: text(f.get_node())?, reason: text(f.get_reason())? }
        }
    };
    Ok(Event { seq: r.get_seq(), time_ms: r.get_time_ms(), kind })
}

pub fn write_events(mut b: capnp::struct_list::Builder<'_, event::Owned>, events: &[Event]) {
    for (i, e) in events.iter().enumerate() {
        write_event(b.reborrow().get(i as u32), e);
    }
}

pub fn read_events(r: capnp::struct_list::Reader<'_, event::Owned>) -> capnp::Result<Vec<Event>> {
    r.iter().map(read_event).collect()
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
