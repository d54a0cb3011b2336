//! The one place where refusals become capnp exceptions and back. A refusal's exception text
//! is our marker with the code's name from error.capnp, then the human message:
//! `[sheep:noSession] session 3 does not exist (expired or closed)`. Decoding looks for the
//! marker anywhere in the text, so the prefixes capnp-rpc adds on the way
//! ("remote exception: …", once per hop) never matter; an exception without it is not a
//! refusal (capnp-rpc's own: a broken connection, a malformed message).

use std::fmt;

use sheep_core::group::GroupError;
use sheep_core::namespace::NamespaceError;

pub use crate::error_capnp::ErrorCode;

/// Opens the code in an exception's text; the code's name and `]` follow.
const MARKER: &str = "[sheep:";

impl ErrorCode {
    /// The code's name in error.capnp (`noSession`).
    pub fn name(self) -> &'static str {
        let value: capnp::dynamic_value::Reader<'static> = self.into();
        let enumerant = value.downcast::<capnp::dynamic_value::Enum>().get_enumerant();
        let name = enumerant.ok().flatten().map(|e| e.get_proto().get_name());
        // The schema is compiled into this crate: every value has its enumerant and name.
        name.and_then(|n| n.ok()).and_then(|n| n.to_str().ok()).expect("ErrorCode enumerant in the schema")
    }

    /// The code named `name`, if error.capnp has it.
    fn named(name: &str) -> Option<ErrorCode> {
        (0u16..).map_while(|n| ErrorCode::try_from(n).ok()).find(|code| code.name() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refusal with `code`, as the exception a server answers with.
pub fn refusal(code: ErrorCode, message: impl fmt::Display) -> capnp::Error {
    capnp::Error::failed(format!("{MARKER}{code}] {message}"))
}

/// The code and the human message of an exception; no code without our marker.
fn decode(e: &capnp::Error) -> (Option<ErrorCode>, &str) {
    let text = e.extra.as_str();
    let coded = text.find(MARKER).and_then(|at| {
        let (name, message) = text[at + MARKER.len()..].split_once(']')?;
        Some((ErrorCode::named(name)?, message.trim()))
    });
    match coded {
        Some((code, message)) => (Some(code), message),
        None => (None, text.trim()),
    }
}

/// The code of a refusal, wherever in the exception's text it sits; `None` for an exception
/// that is not a refusal.
pub fn code_of(e: &capnp::Error) -> Option<ErrorCode> {
    decode(e).0
}

/// What to show people: a refusal's message (what follows the code), or the whole text of
/// any other exception.
pub fn message_of(e: &capnp::Error) -> &str {
    decode(e).1
}

/// The code groupd refuses a command with.
pub fn group_error_code(e: &GroupError) -> ErrorCode {
    match e {
        GroupError::NotFormatted => ErrorCode::NotFormatted,
        GroupError::AlreadyFormatted(_) => ErrorCode::AlreadyFormatted,
        GroupError::WrongCluster { .. } => ErrorCode::WrongCluster,
        GroupError::NoSession(_) => ErrorCode::NoSession,
        GroupError::LockHeld { .. } => ErrorCode::LockHeld,
        GroupError::NotLocked { .. } => ErrorCode::NotLocked,
        GroupError::ShutDown => ErrorCode::ShuttingDown,
        // Nobody waits for the answer of a stale request: the client has moved on.
        GroupError::BadRequest(_) | GroupError::StaleRequest { .. } => ErrorCode::BadRequest,
        GroupError::Invariant { .. } => ErrorCode::Internal,
        GroupError::Namespace(n) => match n {
            NamespaceError::Exists(_) | NamespaceError::SnapshotExists { .. } => ErrorCode::VdiExists,
            NamespaceError::NoVdi(_) | NamespaceError::NoSnapshot { .. } => ErrorCode::NoVdi,
            NamespaceError::AttrExists { .. } => ErrorCode::AttrExists,
            NamespaceError::NoAttr { .. } => ErrorCode::NoAttr,
            NamespaceError::Invalid(_) | NamespaceError::Full => ErrorCode::BadRequest,
            NamespaceError::Invariant { .. } => ErrorCode::Internal,
        },
    }
}

/// A refused command as the exception groupd answers with.
pub fn group_error(e: &GroupError) -> capnp::Error {
    refusal(group_error_code(e), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_named_as_in_the_schema_and_found_by_its_name() {
        let all: Vec<ErrorCode> = (0u16..).map_while(|n| ErrorCode::try_from(n).ok()).collect();
        assert_eq!(all.len(), 24);
        assert_eq!(ErrorCode::NoSession.name(), "noSession");
        assert_eq!(ErrorCode::StaleEpoch.to_string(), "staleEpoch");
        for code in all {
            assert_eq!(ErrorCode::named(code.name()), Some(code));
            let e = refusal(code, "why");
            assert_eq!((code_of(&e), message_of(&e)), (Some(code), "why"));
        }
        assert_eq!(ErrorCode::named("notACode"), None);
    }

    #[test]
    fn group_errors_carry_their_code_and_a_message_for_people() {
        let e = group_error(&GroupError::NoSession(3));
        assert_eq!(code_of(&e), Some(ErrorCode::NoSession));
        assert_eq!(message_of(&e), "session 3 does not exist (expired or closed)");
        let e = group_error(&GroupError::Namespace(NamespaceError::NoSnapshot { name: "v".into(), tag: "t".into() }));
        assert_eq!(code_of(&e), Some(ErrorCode::NoVdi));
        assert_eq!(message_of(&e), "VDI \"v\" has no snapshot \"t\"");
    }

    #[test]
    fn the_code_is_found_behind_any_prefix() {
        let once = capnp::Error::failed(format!(
            "remote exception: {}",
            refusal(ErrorCode::LockHeld, "VDI a is locked").extra
        ));
        assert_eq!(code_of(&once), Some(ErrorCode::LockHeld));
        assert_eq!(message_of(&once), "VDI a is locked");
        let relayed = capnp::Error::failed(format!("hop 2: hop 1: {}", once.extra));
        assert_eq!((code_of(&relayed), message_of(&relayed)), (Some(ErrorCode::LockHeld), "VDI a is locked"));
    }

    #[test]
    fn exceptions_without_our_marker_have_no_code() {
        for text in ["connection reset: peer went away", "remote exception: Peer disconnected: x", "noSession: old"] {
            let e = capnp::Error::failed(text.into());
            assert_eq!((code_of(&e), message_of(&e)), (None, text));
        }
        let unknown = capnp::Error::failed("[sheep:fromTheFuture] something".into());
        assert_eq!(code_of(&unknown), None, "a code this build does not know is no code");
        assert_eq!(message_of(&unknown), "[sheep:fromTheFuture] something");
        let d = capnp::Error::disconnected(" gone ".into());
        assert_eq!((code_of(&d), message_of(&d)), (None, "gone"));
    }
}
