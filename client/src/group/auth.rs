//! The calls about clients and their capabilities: `sheepctl auth`'s, and the ticket a client
//! other than the admin shows storage nodes.

use std::time::Duration;

use sheep_core::auth::caps::Caps;
use sheep_core::auth::clients::ClientEntry;
use sheep_rpc::codec;

use super::{Error, GroupClient};

impl GroupClient {
    /// Adds client `name` (`client.NAME`) with `caps`; its key is derived from the cluster's
    /// secret, its name and the generation answered.
    pub async fn auth_add(&self, name: &str, caps: &Caps) -> Result<ClientEntry, Error> {
        let caps = caps.render();
        self.change("auth add", |c, id| {
            let caps = caps.clone();
            async move {
                let mut req = c.auth_add_request();
                req.get().set_name(name);
                req.get().set_caps(caps.as_str());
                codec::write_request(req.get().init_request(), &id);
                let resp = req.send().promise.await?;
                codec::read_auth_client(resp.get()?.get_client()?)
            }
        })
        .await
    }

    /// Gives client `name` new capabilities (its key stays).
    pub async fn auth_caps(&self, name: &str, caps: &Caps) -> Result<ClientEntry, Error> {
        let caps = caps.render();
        self.change("auth caps", |c, id| {
            let caps = caps.clone();
            async move {
                let mut req = c.auth_caps_request();
                req.get().set_name(name);
                req.get().set_caps(caps.as_str());
                codec::write_request(req.get().init_request(), &id);
                let resp = req.send().promise.await?;
                codec::read_auth_client(resp.get()?.get_client()?)
            }
        })
        .await
    }

    /// Removes client `name`: groupd refuses its key at once, storage nodes once the ticket
    /// it holds expires.
    pub async fn auth_rm(&self, name: &str) -> Result<ClientEntry, Error> {
        self.change("auth rm", |c, id| async move {
            let mut req = c.auth_rm_request();
            req.get().set_name(name);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            codec::read_auth_client(resp.get()?.get_client()?)
        })
        .await
    }

    /// Every client other than the admin.
    pub async fn auth_list(&self) -> Result<Vec<ClientEntry>, Error> {
        self.call("auth list", Duration::ZERO, |c| async move {
            let resp = c.auth_list_request().send().promise.await?;
            resp.get()?.get_clients()?.iter().map(codec::read_auth_client).collect()
        })
        .await
    }

    /// This client's ticket for storage nodes, and how long it is valid.
    pub async fn ticket(&self) -> Result<(Vec<u8>, Duration), Error> {
        self.call("ticket", Duration::ZERO, |c| async move {
            let resp = c.ticket_request().send().promise.await?;
            let r = resp.get()?;
            Ok((r.get_ticket()?.to_vec(), Duration::from_millis(u64::from(r.get_lifetime_ms()))))
        })
        .await
    }
}
