//! The `Storaged` capnp interface: what the node is and what it has seen of the cluster,
//! and the object operations (see `ops` for their rules).

use std::rc::Rc;

use capnp::capability::Rc as CapRc;
use sheep_rpc::codec;
use sheep_rpc::storaged_capnp::storaged;
use tokio::net::TcpListener;
use tracing::debug;

use crate::node::Node;
use crate::ops::{self, bad_request, oid_of};

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

    async fn read(
        self: CapRc<Self>,
        params: storaged::ReadParams,
        mut results: storaged::ReadResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let oid = oid_of(p.get_oid())?;
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
        let oid = oid_of(p.get_oid())?;
        ops::write(&self.node, p.get_epoch(), oid, u64::from(p.get_offset()), p.get_data()?, p.get_fua(), p.get_fence())
            .await
    }

    async fn zero(
        self: CapRc<Self>,
        params: storaged::ZeroParams,
        _: storaged::ZeroResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let oid = oid_of(p.get_oid())?;
        let (offset, len) = (u64::from(p.get_offset()), u64::from(p.get_length()));
        ops::zero(&self.node, p.get_epoch(), oid, offset, len, p.get_fua(), p.get_fence()).await
    }

    async fn create_and_write(
        self: CapRc<Self>,
        params: storaged::CreateAndWriteParams,
        _: storaged::CreateAndWriteResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let oid = oid_of(p.get_oid())?;
        let base = match p.get_base_oid() {
            0 => None,
            raw => Some(oid_of(raw)?),
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
        ops::remove(&self.node, p.get_epoch(), oid_of(p.get_oid())?).await
    }

    async fn list(
        self: CapRc<Self>,
        params: storaged::ListParams,
        mut results: storaged::ListResults,
    ) -> Result<(), capnp::Error> {
        let l = ops::list(&self.node, params.get()?.get_epoch()).await?;
        let mut r = results.get();
        let n = l.live.len() + l.stale_only.len();
        let mut oids = r.reborrow().init_oids(u32::try_from(n).map_err(bad_request)?);
        for (i, oid) in l.live.iter().chain(l.stale_only.iter().map(|(o, _)| o)).enumerate() {
            oids.set(i as u32, oid.raw());
        }
        let mut stale = r.reborrow().init_stale(l.stale_only.len() as u32);
        for (i, (oid, _)) in l.stale_only.iter().enumerate() {
            stale.set(i as u32, oid.raw());
        }
        let mut epochs = r.init_stale_epochs(l.stale_only.len() as u32);
        for (i, (_, e)) in l.stale_only.iter().enumerate() {
            epochs.set(i as u32, *e);
        }
        Ok(())
    }

    async fn fetch(
        self: CapRc<Self>,
        params: storaged::FetchParams,
        mut results: storaged::FetchResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let whole = ops::fetch(&self.node, p.get_epoch(), oid_of(p.get_oid())?).await?;
        let mut r = results.get();
        r.set_data(&whole.data);
        r.set_stale(whole.stale_epoch != 0);
        r.set_stale_epoch(whole.stale_epoch);
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
        let mut b = results.get().init_stat();
        b.set_capacity(st.capacity);
        b.set_used(st.used);
        b.set_free(st.free);
        b.set_objects(st.objects);
        Ok(())
    }

    async fn recovery(
        self: CapRc<Self>,
        _: storaged::RecoveryParams,
        mut results: storaged::RecoveryResults,
    ) -> Result<(), capnp::Error> {
        let p = self.node.recovery.borrow();
        let mut b = results.get().init_status();
        b.set_epoch(p.epoch);
        b.set_done(p.done);
        b.set_total(p.total);
        b.set_complete(p.complete);
        b.set_listed(p.listed);
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
