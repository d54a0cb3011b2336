//! groupd's API called directly, one call on a fresh connection to one groupd (no failover,
//! no retry: what that groupd answers is what the test sees), every call within 10 s.

use std::future::Future;
use std::time::Duration;

use sheep_client::rpc;
use sheep_client::ErrorCode;
use sheep_core::epoch::NodeInfo;
use sheep_core::group::{ClusterConfig, ClusterInfo, Event, LockInfo, MemberRole, RequestId};
use sheep_core::namespace::VdiEntry;
use sheep_rpc::codec;
use sheep_rpc::error;
use sheep_rpc::groupd_capnp::{groupd, SessionKind};

/// Runs `f` with a client of the groupd at `addr`, on a fresh connection.
pub fn with_client<T, F, Fut>(addr: &str, f: F) -> Result<T, capnp::Error>
where
    F: FnOnce(groupd::Client) -> Fut,
    Fut: Future<Output = Result<T, capnp::Error>>,
{
    crate::block_on(async move {
        let conn = rpc::connect::<groupd::Client>(addr, Duration::from_secs(1))
            .await
            .map_err(|e| capnp::Error::disconnected(format!("connect {addr}: {e}")))?;
        tokio::time::timeout(Duration::from_secs(10), f(conn.client()))
            .await
            .map_err(|_| capnp::Error::failed("test client: call timed out".into()))?
    })
}

/// The code of a refusal; `None` for any other error.
pub fn code(e: &capnp::Error) -> Option<ErrorCode> {
    error::code_of(e)
}

pub fn info(addr: &str) -> Result<ClusterInfo, capnp::Error> {
    with_client(addr, |c| async move {
        let r = c.info_request().send().promise.await?;
        codec::read_cluster_info(r.get()?.get_info()?)
    })
}

/// Formats with 3 copies of 4 MiB objects and `voters` voters.
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

/// (session, lease in ms)
pub fn open_client(addr: &str, name: &str) -> Result<(u64, u32), capnp::Error> {
    open_client_as(addr, name, None)
}

/// [`open_client`] as the client call `request` (what a retry of one call sends again).
pub fn open_client_as(addr: &str, name: &str, request: Option<RequestId>) -> Result<(u64, u32), capnp::Error> {
    let name = name.to_string();
    with_client(addr, |c| async move {
        let mut req = c.open_session_request();
        req.get().set_kind(SessionKind::Client);
        req.get().set_name(name.as_str());
        if let Some(r) = &request {
            codec::write_request(req.get().init_request(), r);
        }
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
    propose_as(addr, session, payload, None)
}

/// [`propose`] as the client call `request`.
pub fn propose_as(addr: &str, session: u64, payload: &[u8], request: Option<RequestId>) -> Result<u64, capnp::Error> {
    let payload = payload.to_vec();
    with_client(addr, |c| async move {
        let mut req = c.propose_request();
        req.get().set_session(session);
        req.get().set_payload(&payload);
        if let Some(r) = &request {
            codec::write_request(req.get().init_request(), r);
        }
        Ok(req.send().promise.await?.get()?.get_seq())
    })
}

pub fn lock(addr: &str, session: u64, vdi: &str) -> Result<LockInfo, capnp::Error> {
    let vdi = vdi.to_string();
    with_client(addr, |c| async move {
        let mut req = c.lock_request();
        req.get().set_session(session);
        req.get().set_vdi(vdi.as_str());
        codec::read_lock_info(req.send().promise.await?.get()?.get_lock()?)
    })
}

pub fn shutdown(addr: &str) -> Result<(), capnp::Error> {
    with_client(addr, |c| async move {
        c.shutdown_request().send().promise.await?;
        Ok(())
    })
}

/// (events, next sequence number)
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

pub fn vdi_create(addr: &str, name: &str, size: u64) -> Result<VdiEntry, capnp::Error> {
    vdi_create_as(addr, name, size, None)
}

/// [`vdi_create`] as the client call `request`.
pub fn vdi_create_as(addr: &str, name: &str, size: u64, request: Option<RequestId>) -> Result<VdiEntry, capnp::Error> {
    let name = name.to_string();
    with_client(addr, |c| async move {
        let mut req = c.vdi_create_request();
        req.get().set_name(name.as_str());
        req.get().set_size(size);
        if let Some(r) = &request {
            codec::write_request(req.get().init_request(), r);
        }
        codec::read_vdi(req.send().promise.await?.get()?.get_vdi()?)
    })
}

/// Snapshot `tag` of VDI `name` by `session`, as the client call `request`: (the snapshot,
/// the new working VDI).
pub fn vdi_snapshot_as(
    addr: &str,
    session: u64,
    name: &str,
    tag: &str,
    request: Option<RequestId>,
) -> Result<(VdiEntry, VdiEntry), capnp::Error> {
    let (name, tag) = (name.to_string(), tag.to_string());
    with_client(addr, |c| async move {
        let mut req = c.vdi_snapshot_request();
        req.get().set_session(session);
        req.get().set_name(name.as_str());
        req.get().set_tag(tag.as_str());
        if let Some(r) = &request {
            codec::write_request(req.get().init_request(), r);
        }
        let resp = req.send().promise.await?;
        let r = resp.get()?;
        Ok((codec::read_vdi(r.get_snapshot()?)?, codec::read_vdi(r.get_working()?)?))
    })
}

/// Every working VDI and live snapshot, as the groupd at `addr` has applied them.
pub fn vdi_entries(addr: &str) -> Result<Vec<VdiEntry>, capnp::Error> {
    with_client(addr, |c| async move {
        let r = c.vdi_list_request().send().promise.await?;
        r.get()?.get_vdis()?.iter().map(codec::read_vdi).collect()
    })
}

pub fn vdi_delete(addr: &str, name: &str) -> Result<VdiEntry, capnp::Error> {
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

/// The master's address as the groupd at `addr` sees it.
pub fn master_of(addr: &str) -> Option<String> {
    let i = info(addr).ok()?;
    i.members.iter().find(|m| m.role == MemberRole::Master).map(|m| m.addr.clone())
}

pub fn count_roles(i: &ClusterInfo, role: MemberRole) -> usize {
    i.members.iter().filter(|m| m.role == role).count()
}
