//! The `Storaged` capnp interface: what the node is and what it has seen of the cluster.

use std::rc::Rc;

use capnp::capability::Rc as CapRc;
use sheep_rpc::codec;
use sheep_rpc::storaged_capnp::storaged;
use tokio::net::TcpListener;
use tracing::debug;

use crate::node::Node;

struct StoragedImpl {
    node: Rc<Node>,
}

impl storaged::Server for StoragedImpl {
    async fn status(
        self: CapRc<Self>,
        _: storaged::StatusParams,
        mut results: storaged::StatusResults,
    ) -> Result<(), capnp::Error> {
        let node = &self.node;
        let st = node.status();
        let mut b = results.get().init_status();
        codec::write_node(b.reborrow().init_node(), &node.info);
        b.set_cluster_id(st.cluster_id.as_str());
        b.set_epoch(st.epoch);
        b.set_session(st.session);
        b.set_joined(st.session != 0);
        b.set_data_dir(node.store.path().to_string_lossy().as_ref());
        b.set_uptime_ms(u64::try_from(node.started.elapsed().as_millis()).unwrap_or(u64::MAX));
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
}

/// Serves the node's API on every connection accepted by `listener`, forever.
pub async fn serve(listener: TcpListener, node: Rc<Node>) {
    let client: storaged::Client = capnp_rpc::new_client(StoragedImpl { node });
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!("connection from {peer}");
                tokio::task::spawn_local(sheep_client::rpc::serve(stream, client.clone().client));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                debug!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
