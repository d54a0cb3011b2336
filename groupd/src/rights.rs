//! Who may do what at groupd: daemons and `client.admin` everything; any other client only
//! what its capabilities in the replicated state allow, checked on every call against the
//! state as it is then (so `auth caps` and `auth rm` take effect here at once), and tickets
//! for storage nodes.

use sheep_core::auth::caps::Access;
use sheep_core::auth::clients::grants;
use sheep_core::auth::ticket::Ticket;
use sheep_core::group::SessionKind;
use sheep_rpc::error::{refusal, ErrorCode};
use sheep_rpc::transport::{self, Identity, Peer};

use crate::node::Node;

fn denied(msg: impl std::fmt::Display) -> capnp::Error {
    refusal(ErrorCode::Denied, msg)
}

/// The administrator's and the daemons' calls (format, shutdown, auth, raft, ...).
pub fn privileged(peer: &Peer, what: &str) -> Result<(), capnp::Error> {
    if peer.is_privileged() {
        return Ok(());
    }
    Err(denied(format!("{what} is the administrator's; {} may not", peer.name())))
}

/// A client other than the admin must still be in the state with the key it proved.
pub fn live(node: &Node, peer: &Peer) -> Result<(), capnp::Error> {
    let Peer::Client { entity, generation, .. } = peer else { return Ok(()) };
    match node.sm.state().client(entity, *generation) {
        Some(_) => Ok(()),
        None => Err(denied(format!("{entity} was removed (or added anew with another key): it may do nothing"))),
    }
}

/// The peer may act on VDI `name` with `wanted` access.
pub fn allow(node: &Node, peer: &Peer, name: &str, wanted: Access) -> Result<(), capnp::Error> {
    let Peer::Client { entity, generation, .. } = peer else { return Ok(()) };
    let state = node.sm.state();
    let Some(entry) = state.client(entity, *generation) else {
        return Err(denied(format!("{entity} was removed (or added anew with another key): it may do nothing")));
    };
    match entry.caps.access(name) {
        Some(a) if a.allows(wanted) => Ok(()),
        _ => Err(denied(format!(
            "{entity} has no capability `{}` on VDI {name:?} (its capabilities: {})",
            wanted.as_str(),
            entry.caps.render()
        ))),
    }
}

/// The name a session opened by `peer` gets: a client other than the admin's begins with
/// its entity, which is what says the session is its own ([`owns`]).
pub fn session_name(peer: &Peer, asked: String) -> String {
    match peer {
        Peer::Client { entity, .. } => format!("{entity}: {asked}"),
        _ => asked,
    }
}

/// A client other than the admin may use only the sessions it opened.
pub fn owns(node: &Node, peer: &Peer, session: u64) -> Result<(), capnp::Error> {
    let Peer::Client { entity, .. } = peer else { return Ok(()) };
    let state = node.sm.state();
    let mine = state.sessions.get(&session).is_some_and(|s| match &s.kind {
        SessionKind::Client { name } => name.strip_prefix(entity.as_str()).is_some_and(|r| r.starts_with(": ")),
        SessionKind::Storage(_) => false,
    });
    if mine || !state.sessions.contains_key(&session) {
        // A session that does not exist is refused as such by the command itself.
        return Ok(());
    }
    Err(denied(format!("session {session} is not one {entity} opened")))
}

/// A client's ticket: its capabilities resolved to VDI ids now, sealed, valid for
/// `lifetime_ms`.
pub fn ticket(node: &Node, peer: &Peer, lifetime_ms: u32) -> Result<Vec<u8>, capnp::Error> {
    let Peer::Client { entity, generation, .. } = peer else {
        return Err(refusal(ErrorCode::BadRequest, format!("{} needs no ticket: it has every right", peer.name())));
    };
    let Identity::Daemon { keyring } = transport::identity() else {
        return Err(refusal(ErrorCode::BadRequest, "this groupd runs without keys: there are no tickets"));
    };
    let secret = keyring.secret.expect("a daemon's keyring holds the secret");
    let state = node.sm.state();
    let Some(entry) = state.client(entity, *generation) else {
        return Err(denied(format!("{entity} was removed (or added anew with another key): no ticket")));
    };
    let now = crate::types::now_unix_ms();
    let t = Ticket::new(entity, *generation, now + u64::from(lifetime_ms), grants(&state.vdis, &entry.caps));
    Ok(t.seal(&secret))
}
