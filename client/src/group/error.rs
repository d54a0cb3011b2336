//! Errors of the groupd client.

use std::time::Duration;

use sheep_rpc::error::{self, ErrorCode};

use crate::rpc::secs;

/// What a groupd call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No groupd could be reached; `0` lists every address tried with its reason, e.g.
    /// `127.0.0.1:7000 (connection refused), 127.0.0.2:7000 (timed out after 1.0 s)`.
    #[error("cannot reach groupd at {0}")]
    Unreachable(String),
    /// A groupd accepted the connection but did not answer in time.
    #[error("groupd at {addr} did not answer within {}", secs(*.after))]
    Timeout { addr: String, after: Duration },
    /// groupd refused the request with `code` (`NotFormatted`, `AlreadyFormatted`,
    /// `WrongCluster`, `NoSession`, `NoMaster`, …); `message` is meant to be shown to people.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// Anything else: a broken connection that could not be replaced, a malformed answer.
    #[error("groupd at {addr}: {message}")]
    Rpc { addr: String, message: String },
    /// Bad arguments given to the client itself (no addresses, …).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The code of a refusal (`Some(ErrorCode::NoSession)`), `None` for other errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_code(&self, code: ErrorCode) -> bool {
        self.code() == Some(code)
    }

    /// Converts a capnp error from a call to `addr`: a refusal becomes [`Error::Refused`],
    /// the rest [`Error::Rpc`].
    pub(crate) fn from_capnp(addr: &str, e: &capnp::Error) -> Error {
        let message = error::message_of(e).to_string();
        match error::code_of(e) {
            Some(code) => Error::Refused { code, message },
            None => Error::Rpc { addr: addr.into(), message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_capnp_errors() {
        let refused = error::refusal(ErrorCode::WrongCluster, "this store belongs to cluster a");
        let e = capnp::Error::failed(format!("remote exception: {}", refused.extra));
        let c = Error::from_capnp("127.0.0.1:7000", &e);
        assert!(c.is_code(ErrorCode::WrongCluster));
        assert_eq!(c.to_string(), "this store belongs to cluster a");
        // Not a refusal: its text as it came, capnp-rpc's words included.
        let d = Error::from_capnp("127.0.0.1:7000", &capnp::Error::disconnected("remote exception: gone".into()));
        assert_eq!(d.to_string(), "groupd at 127.0.0.1:7000: remote exception: gone");
    }

    #[test]
    fn formats_durations() {
        assert_eq!(secs(Duration::from_millis(250)), "250 ms");
        assert_eq!(secs(Duration::from_millis(4500)), "4.5 s");
        let t = Error::Timeout { addr: "a:1".into(), after: Duration::from_secs(4) };
        assert_eq!(t.to_string(), "groupd at a:1 did not answer within 4.0 s");
    }
}
