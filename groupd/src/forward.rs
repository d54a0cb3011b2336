//! Forwarding a state-changing call to the master: each [`Op`] is sent as the API method it
//! came from, and the master's answer is turned back into an [`Outcome`].

use sheep_core::group::{Op, Reply, RequestId, SessionKind};
use sheep_rpc::codec;
use sheep_rpc::error::{self, refusal, ErrorCode};
use sheep_rpc::groupd_capnp::{groupd, SessionKind as WireKind};

/// What a state-changing call answers.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub reply: Reply,
    /// The master's lease time (openSession).
    pub lease_ms: u32,
    /// The lock holder's name (lock).
    pub holder: String,
}

impl Outcome {
    pub fn done() -> Outcome {
        Outcome { reply: Reply::Done, lease_ms: 0, holder: String::new() }
    }
}

/// An error from another groupd, ready to be passed on to our caller: a refusal as our own
/// (its code and message, without what capnp-rpc added on the way); a lost connection as
/// `noMaster`, since the call may or may not have taken effect; anything else as it came.
pub fn relay(e: capnp::Error) -> capnp::Error {
    match error::code_of(&e) {
        Some(code) if e.kind != capnp::ErrorKind::Disconnected => refusal(code, error::message_of(&e)),
        _ if e.kind == capnp::ErrorKind::Disconnected => {
            refusal(ErrorCode::NoMaster, format!("lost the master during the call: {}", error::message_of(&e)))
        }
        _ => e,
    }
}

fn unexpected(what: &str) -> capnp::Error {
    refusal(ErrorCode::BadRequest, format!("unexpected answer from the master to {what}"))
}

/// Writes a call's request id into its params, if it has one.
macro_rules! set_request {
    ($params:expr, $request:expr) => {
        if let Some(r) = $request {
            codec::write_request($params.init_request(), r);
        }
    };
}

/// Sends `op` to the master behind `client` as the API call it came from, with the request
/// id of the client's call (the master's table decides whether it was applied already).
pub async fn forward(client: &groupd::Client, op: &Op, request: Option<&RequestId>) -> Result<Outcome, capnp::Error> {
    match op {
        Op::OpenSession { kind, store_cluster } => {
            let mut req = client.open_session_request();
            let mut p = req.get();
            p.set_cluster_id(store_cluster.as_str());
            match kind {
                SessionKind::Storage(n) => {
                    p.set_kind(WireKind::Storage);
                    codec::write_node(p.init_node(), n);
                }
                SessionKind::Client { name } => {
                    p.set_kind(WireKind::Client);
                    p.set_name(name.as_str());
                }
            }
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            Ok(Outcome { reply: Reply::Session(r.get_session()), lease_ms: r.get_lease_ms(), holder: String::new() })
        }
        Op::CloseSession { session, .. } => {
            let mut req = client.close_session_request();
            req.get().set_session(*session);
            set_request!(req.get(), request);
            req.send().promise.await?;
            Ok(Outcome::done())
        }
        Op::Broadcast { session, payload } => {
            let mut req = client.propose_request();
            req.get().set_session(*session);
            req.get().set_payload(payload);
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            Ok(Outcome { reply: Reply::Seq(resp.get()?.get_seq()), lease_ms: 0, holder: String::new() })
        }
        Op::Format { copies, object_size_shift, voters, force, policy, .. } => {
            let mut req = client.format_request();
            let mut p = req.get();
            p.set_copies(*copies);
            p.set_object_size_shift(*object_size_shift);
            p.set_voters(*voters);
            p.set_force(*force);
            p.set_min_copies(policy.min_copies);
            p.set_hold_ms(policy.hold_ms);
            p.set_allow_fewer_zones(policy.allow_fewer_zones);
            p.set_secure(policy.secure);
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            let config = codec::read_config(resp.get()?.get_config()?)?;
            Ok(Outcome { reply: Reply::Formatted(config), lease_ms: 0, holder: String::new() })
        }
        Op::Lock { session, vdi } => {
            let mut req = client.lock_request();
            req.get().set_session(*session);
            req.get().set_vdi(vdi.as_str());
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            let info = codec::read_lock_info(resp.get()?.get_lock()?)?;
            Ok(Outcome { reply: Reply::Locked(info.lock), lease_ms: 0, holder: info.holder })
        }
        Op::Unlock { session, vdi, force } => {
            let mut req = client.unlock_request();
            req.get().set_session(*session);
            req.get().set_vdi(vdi.as_str());
            req.get().set_force(*force);
            set_request!(req.get(), request);
            req.send().promise.await?;
            Ok(Outcome::done())
        }
        Op::Shutdown => {
            let mut req = client.shutdown_request();
            set_request!(req.get(), request);
            req.send().promise.await?;
            Ok(Outcome::done())
        }
        Op::RecoverForce => {
            let mut req = client.recover_force_request();
            set_request!(req.get(), request);
            req.send().promise.await?;
            Ok(Outcome::done())
        }
        Op::VdiCreate { name, size, copies, allow_fewer_zones } => {
            let mut req = client.vdi_create_request();
            req.get().set_name(name.as_str());
            req.get().set_size(*size);
            req.get().set_copies(*copies);
            req.get().set_allow_fewer_zones(*allow_fewer_zones);
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            let vdi = codec::read_vdi(resp.get()?.get_vdi()?)?;
            Ok(Outcome { reply: Reply::Vdi(vdi), lease_ms: 0, holder: String::new() })
        }
        Op::VdiDelete { name, tag: None } => {
            let mut req = client.vdi_delete_request();
            req.get().set_name(name.as_str());
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            vdi_outcome(codec::read_vdi(resp.get()?.get_vdi()?)?)
        }
        Op::VdiDelete { name, tag: Some(tag) } => {
            let mut req = client.vdi_delete_snapshot_request();
            req.get().set_name(name.as_str());
            req.get().set_tag(tag.as_str());
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            vdi_outcome(codec::read_vdi(resp.get()?.get_vdi()?)?)
        }
        Op::VdiSnapshot { session, name, tag } => {
            let mut req = client.vdi_snapshot_request();
            req.get().set_session(*session);
            req.get().set_name(name.as_str());
            req.get().set_tag(tag.as_str());
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            let reply = Reply::Snapshot {
                snapshot: codec::read_vdi(r.get_snapshot()?)?,
                working: codec::read_vdi(r.get_working()?)?,
            };
            Ok(Outcome { reply, lease_ms: 0, holder: String::new() })
        }
        Op::VdiClone { name, tag, new_name } => {
            let mut req = client.vdi_clone_request();
            req.get().set_name(name.as_str());
            req.get().set_tag(tag.as_str());
            req.get().set_new_name(new_name.as_str());
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            vdi_outcome(codec::read_vdi(resp.get()?.get_vdi()?)?)
        }
        Op::VdiRollback { name, tag } => {
            let mut req = client.vdi_rollback_request();
            req.get().set_name(name.as_str());
            req.get().set_tag(tag.as_str());
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            vdi_outcome(codec::read_vdi(resp.get()?.get_vdi()?)?)
        }
        Op::VdiResize { name, size } => {
            let mut req = client.vdi_resize_request();
            req.get().set_name(name.as_str());
            req.get().set_size(*size);
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            vdi_outcome(codec::read_vdi(resp.get()?.get_vdi()?)?)
        }
        Op::VdiSetAttr { name, key, value, exclusive } => {
            let mut req = client.vdi_set_attr_request();
            let mut p = req.get();
            p.set_name(name.as_str());
            p.set_key(key.as_str());
            p.set_value(value.as_deref().unwrap_or(&[]));
            p.set_delete(value.is_none());
            p.set_exclusive(*exclusive);
            set_request!(req.get(), request);
            req.send().promise.await?;
            Ok(Outcome::done())
        }
        Op::RecoveryDone { session, epoch } => {
            let mut req = client.recovery_done_request();
            req.get().set_session(*session);
            req.get().set_epoch(*epoch);
            set_request!(req.get(), request);
            req.send().promise.await?;
            Ok(Outcome::done())
        }
        Op::NodeFailed { session, reason } => {
            let mut req = client.node_failed_request();
            req.get().set_session(*session);
            req.get().set_reason(reason.as_str());
            set_request!(req.get(), request);
            req.send().promise.await?;
            Ok(Outcome::done())
        }
        Op::AuthAdd { name, caps } => {
            let mut req = client.auth_add_request();
            req.get().set_name(name.as_str());
            req.get().set_caps(caps.render().as_str());
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            client_outcome(codec::read_auth_client(resp.get()?.get_client()?)?)
        }
        Op::AuthCaps { name, caps } => {
            let mut req = client.auth_caps_request();
            req.get().set_name(name.as_str());
            req.get().set_caps(caps.render().as_str());
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            client_outcome(codec::read_auth_client(resp.get()?.get_client()?)?)
        }
        Op::AuthRm { name } => {
            let mut req = client.auth_rm_request();
            req.get().set_name(name.as_str());
            set_request!(req.get(), request);
            let resp = req.send().promise.await?;
            client_outcome(codec::read_auth_client(resp.get()?.get_client()?)?)
        }
    }
}

fn client_outcome(c: sheep_core::auth::clients::ClientEntry) -> Result<Outcome, capnp::Error> {
    Ok(Outcome { reply: Reply::Client(c), lease_ms: 0, holder: String::new() })
}

fn vdi_outcome(vdi: sheep_core::namespace::VdiEntry) -> Result<Outcome, capnp::Error> {
    Ok(Outcome { reply: Reply::Vdi(vdi), lease_ms: 0, holder: String::new() })
}

/// Forwards a keepalive.
pub async fn keepalive(client: &groupd::Client, session: u64) -> Result<(), capnp::Error> {
    let mut req = client.keepalive_request();
    req.get().set_session(session);
    req.send().promise.await?;
    Ok(())
}

/// Forwards (or sends, when joining) an addMember call.
pub async fn add_member(client: &groupd::Client, raft_id: u64, addr: &str) -> Result<(), capnp::Error> {
    let mut req = client.add_member_request();
    req.get().set_raft_id(raft_id);
    req.get().set_addr(addr);
    req.send().promise.await?;
    Ok(())
}

/// Checks that an answer has the expected shape.
pub fn expect_session(o: &Outcome) -> Result<u64, capnp::Error> {
    match o.reply {
        Reply::Session(id) => Ok(id),
        _ => Err(unexpected("openSession")),
    }
}

pub fn expect_seq(o: &Outcome) -> Result<u64, capnp::Error> {
    match o.reply {
        Reply::Seq(s) => Ok(s),
        _ => Err(unexpected("propose")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_keeps_the_code_and_the_message() {
        let refused = refusal(ErrorCode::NoSession, "session 4 does not exist");
        let e = capnp::Error::failed(format!("remote exception: remote exception: {}", refused.extra));
        let r = relay(e);
        assert_eq!(error::code_of(&r), Some(ErrorCode::NoSession));
        assert_eq!(error::message_of(&r), "session 4 does not exist");
        assert_eq!(r.extra, refused.extra, "relayed as if refused here");
        let d = relay(capnp::Error::disconnected("remote exception: gone".into()));
        assert_eq!(error::code_of(&d), Some(ErrorCode::NoMaster));
        let other = relay(capnp::Error::failed("remote exception: Message too large".into()));
        assert_eq!(error::code_of(&other), None);
    }
}
