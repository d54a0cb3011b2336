//! Watching the disk: the periodic probe, and the report of a failed disk to groupd.

use std::rc::Rc;
use std::time::Duration;

use sheep_client::group::GroupClient;
use sheep_core::group::SessionId;
use sheep_rpc::error::ErrorCode;
use tracing::{info, warn};

use crate::blocking::blocking;
use crate::node::Node;

/// How often the disk is probed: a failure is noticed within this, well inside a lease.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may take: a disk that does not answer within it (a hung device, an
/// unreachable network disk) has failed, as one that answers with an error has. Every
/// request on it would wait as long, and its node would hold its replicas' writes up.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between two tries of the report.
const REPORT_RETRY: Duration = Duration::from_secs(1);

/// Probes the store every [`PROBE_EVERY`] until the disk fails.
pub async fn probe(node: Rc<Node>) {
    while node.disk.failure().is_none() {
        tokio::time::sleep(PROBE_EVERY).await;
        let objects = node.objects.clone();
        match tokio::time::timeout(PROBE_DEADLINE, blocking(move || objects.probe())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => node.disk.fail(&e.to_string()),
            // The probe's thread stays stuck with the disk; nothing else is asked of it.
            Err(_) => node.disk.fail(&format!("the disk did not answer a probe within {PROBE_DEADLINE:?}")),
        }
    }
}

/// Once the disk failed, tells groupd (for `session`), trying again until it is told or
/// the session is gone. The session stays open: the node is listed as failed, with why.
pub async fn report(node: Rc<Node>, client: Rc<GroupClient>, session: SessionId) {
    let why = node.disk.failed().await;
    loop {
        match client.node_failed(session, &why).await {
            Ok(()) => {
                info!("groupd knows the disk failed: the node left the data membership");
                return;
            }
            Err(e) if e.is_code(ErrorCode::NoSession) => return,
            Err(e) => warn!("cannot report the failed disk to groupd yet: {e}"),
        }
        tokio::time::sleep(REPORT_RETRY).await;
    }
}
