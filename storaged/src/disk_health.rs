//! Whether the node's disk failed. A disk error other than a full disk (EIO, a vanished,
//! replaced or read-only directory, a failed sync), seen by a request or by the periodic
//! probe, fails the disk for the rest of the process: from then on every object request
//! is refused with `diskFailed` (clients wait for the next epoch and go on at the other
//! replicas), and the node tells groupd, which takes it out of the data membership. The
//! node comes back only when restarted (its disk replaced or repaired).

use sheep_rpc::error::{refusal, ErrorCode};
use tokio::sync::watch;

use crate::objects::StoreError;

pub struct DiskHealth {
    failure: watch::Sender<Option<String>>,
}

impl DiskHealth {
    pub fn new() -> DiskHealth {
        DiskHealth { failure: watch::channel(None).0 }
    }

    /// Why the disk failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Fails the disk (once: the first reason stays).
    pub fn fail(&self, why: &str) {
        self.failure.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            tracing::error!("the disk failed: {why}; this node leaves the data membership");
            *f = Some(why.to_string());
            true
        });
    }

    /// Resolves with the reason once the disk failed.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.subscribe();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => return std::future::pending().await,
        };
        why
    }

    /// The refusal of every object request once the disk failed.
    pub fn refusal(&self) -> Option<capnp::Error> {
        self.failure().map(|why| {
            refusal(ErrorCode::DiskFailed, format!("this node's disk failed ({why}); it left the data membership"))
        })
    }

    /// A store error as the refusal the node answers with; an I/O error fails the disk.
    pub fn refuse(&self, e: &StoreError) -> capnp::Error {
        if let StoreError::Io(why) = e {
            self.fail(why);
        }
        match self.refusal() {
            Some(r) if matches!(e, StoreError::Io(_)) => r,
            _ => refusal(e.code(), e),
        }
    }
}

impl Default for DiskHealth {
    fn default() -> Self {
        DiskHealth::new()
    }
}
