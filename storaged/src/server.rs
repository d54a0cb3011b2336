//! The `Storaged` capnp interface: what the node is and what it has seen of the cluster,
//! and the object operations (see `ops` for their rules).

use std::rc::Rc;

use capnp::capability::Rc as CapRc;
use sheep_core::store::{RecoveryStatus, StoreStatus};
use sheep_rpc::codec;
use sheep_rpc::codec::storaged::{self as wire, read_oid};
use sheep_rpc::storaged_capnp::storaged;
use tokio::net::TcpListener;
use tracing::debug;

use crate::node::Node;
use crate::ops::{self, bad_request};

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
        let status = StoreStatus {
            node: node.info.clone(),
            cluster_id: st.cluster_id,
            epoch: st.epoch,
            session: st.session,
            joined: st.session != 0,
            data_dir: node.store.path().to_string_lossy().into_owned(),
            uptime_ms: u64::try_from(node.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        wire::write_status(results.get().init_status(), &status);
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

    async fn read(
        self: CapRc<Self>,
        params: storaged::ReadParams,
        mut results: storaged::ReadResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let oid = read_oid(p.get_oid())?;
        let (offset, len) = (u64::from(p.get_offset()), u64::from(p.get_length()));
        let data = ops::read(&self.node, p.get_epoch(), oid, offset, len).await?;
        results.get().set_data(&data);
        Ok(())
    }

    async fn write(
        self: CapRc<Self>,
        params: storaged::WriteParams,
        _: storaged::WriteResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let oid = read_oid(p.get_oid())?;
        ops::write(&self.node, p.get_epoch(), oid, u64::from(p.get_offset()), p.get_data()?, p.get_fua(), p.get_fence())
            .await
    }

    async fn zero(
        self: CapRc<Self>,
        params: storaged::ZeroParams,
        _: storaged::ZeroResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let oid = read_oid(p.get_oid())?;
        let (offset, len) = (u64::from(p.get_offset()), u64::from(p.get_length()));
        ops::zero(&self.node, p.get_epoch(), oid, offset, len, p.get_fua(), p.get_fence()).await
    }

    async fn create_and_write(
        self: CapRc<Self>,
        params: storaged::CreateAndWriteParams,
        _: storaged::CreateAndWriteResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let oid = read_oid(p.get_oid())?;
        let base = match p.get_base_oid() {
            0 => None,
            raw => Some(read_oid(raw)?),
        };
        if base == Some(oid) {
            return Err(bad_request(format!("object {oid} cannot be its own base")));
        }
        let data = p.get_data()?.to_vec();
        let offset = u64::from(p.get_offset());
        let fence = p.get_fence();
        ops::create_and_write(
            &self.node,
            p.get_epoch(),
            oid,
            p.get_object_size(),
            base,
            offset,
            data,
            p.get_fua(),
            fence,
        )
        .await
    }

    async fn remove(
        self: CapRc<Self>,
        params: storaged::RemoveParams,
        _: storaged::RemoveResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        ops::remove(&self.node, p.get_epoch(), read_oid(p.get_oid())?).await
    }

    async fn list(
        self: CapRc<Self>,
        params: storaged::ListParams,
        mut results: storaged::ListResults,
    ) -> Result<(), capnp::Error> {
        let listing = ops::list(&self.node, params.get()?.get_epoch()).await?;
        wire::write_listing(results.get(), &listing)
    }

    async fn fetch(
        self: CapRc<Self>,
        params: storaged::FetchParams,
        mut results: storaged::FetchResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let whole = ops::fetch(&self.node, p.get_epoch(), read_oid(p.get_oid())?, !p.get_inspect()).await?;
        wire::write_whole(results.get(), &whole);
        Ok(())
    }

    async fn flush(
        self: CapRc<Self>,
        params: storaged::FlushParams,
        _: storaged::FlushResults,
    ) -> Result<(), capnp::Error> {
        ops::flush(&self.node, params.get()?.get_epoch()).await
    }

    async fn stat(
        self: CapRc<Self>,
        _: storaged::StatParams,
        mut results: storaged::StatResults,
    ) -> Result<(), capnp::Error> {
        let st = ops::stat(&self.node).await?;
        wire::write_stat(results.get().init_stat(), &st);
        Ok(())
    }

    async fn recovery(
        self: CapRc<Self>,
        _: storaged::RecoveryParams,
        mut results: storaged::RecoveryResults,
    ) -> Result<(), capnp::Error> {
        let p = self.node.recovery.borrow();
        let (waiting, mut nodes) = p.waits();
        nodes.extend(p.hidden_on.iter().cloned());
        let waiting_for: Vec<String> = nodes.into_iter().collect();
        let status = RecoveryStatus {
            epoch: p.epoch,
            done: p.done,
            total: p.total,
            complete: p.complete,
            listed: p.listed,
            waiting,
            waiting_for,
        };
        wire::write_recovery(results.get().init_status(), &status);
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
                tokio::task::spawn_local(sheep_client::rpc::serve(stream, peer, client.clone().client));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                debug!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
