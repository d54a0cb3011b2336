//! `sheepctl auth`: a cluster's keyring, and its clients with their capabilities.

use anyhow::{bail, Context, Result};
use sheep_core::auth::caps::Caps;
use sheep_core::auth::clients::ClientEntry;
use sheep_core::auth::keyring::Keyring;
use sheep_core::auth::{Key, ADMIN};
use sheep_rpc::keyfile;
use sheep_rpc::transport::{self, Identity};

use crate::cli::AuthCmd;
use crate::connect::client;
use crate::keys::new_cluster_keyring;

pub async fn run(groupd: &str, cmd: &AuthCmd, json: bool) -> Result<()> {
    match cmd {
        AuthCmd::Init { out } => {
            let k = new_cluster_keyring()?;
            keyfile::create(out, &k).map_err(anyhow::Error::msg)?;
            if json {
                return crate::output::print_json(&serde_json::json!({ "keyring": out, "entity": k.entity }));
            }
            println!(
                "wrote a new cluster keyring to {} ({}, with the cluster's secret; mode 0600): give it to every \
                 daemon with --keyring, and keep it secret",
                out.display(),
                k.entity
            );
            Ok(())
        }
        AuthCmd::Add { entity, caps, out } => {
            let caps = Caps::parse(caps).map_err(anyhow::Error::msg).context("--caps")?;
            let secret = cluster_secret()?;
            let entry = client(groupd)?.auth_add(entity, &caps).await?;
            hand_out(&secret, &entry, out.as_deref(), json)
        }
        AuthCmd::Get { entity, out } => {
            let secret = cluster_secret()?;
            let clients = client(groupd)?.auth_list().await?;
            let Some(entry) = clients.into_iter().find(|c| &c.name == entity) else {
                bail!("there is no client {entity} (`sheepctl auth list` shows them)");
            };
            hand_out(&secret, &entry, out.as_deref(), json)
        }
        AuthCmd::Caps { entity, caps } => {
            let caps = Caps::parse(caps).map_err(anyhow::Error::msg).context("--caps")?;
            let entry = client(groupd)?.auth_caps(entity, &caps).await?;
            if json {
                return crate::output::print_json(&entry_json(&entry));
            }
            println!("{}: {} (storage nodes apply it when its ticket is renewed)", entry.name, entry.caps.render());
            Ok(())
        }
        AuthCmd::Rm { entity } => {
            let entry = client(groupd)?.auth_rm(entity).await?;
            if json {
                return crate::output::print_json(&entry_json(&entry));
            }
            println!("removed {}: groupd refuses its key now, storage nodes once its ticket expires", entry.name);
            Ok(())
        }
        AuthCmd::List => {
            let clients = client(groupd)?.auth_list().await?;
            if json {
                return crate::output::print_json(&clients.iter().map(entry_json).collect::<Vec<_>>());
            }
            let rows: Vec<Vec<String>> =
                clients.iter().map(|c| vec![c.name.clone(), c.generation.to_string(), c.caps.render()]).collect();
            print!("{}", crate::output::table("", &["ENTITY", "GENERATION", "CAPS"], &rows));
            println!("({ADMIN} may do everything)");
            Ok(())
        }
    }
}

fn entry_json(c: &ClientEntry) -> serde_json::Value {
    serde_json::json!({ "entity": c.name, "generation": c.generation, "caps": c.caps.render() })
}

/// The cluster's secret, from the keyring this process authenticates with: a client's key
/// is derived from it.
fn cluster_secret() -> Result<Key> {
    match transport::identity() {
        Identity::Client { keyring } | Identity::Daemon { keyring } => keyring.secret.with_context(|| {
            format!(
                "the keyring of {} has no cluster secret: use the cluster's keyring (`auth init`'s)",
                keyring.entity
            )
        }),
        Identity::Insecure => bail!("without keys (--insecure) there are no clients to make"),
    }
}

/// Prints the keyring of `entry` (or writes it to `out`).
fn hand_out(secret: &Key, entry: &ClientEntry, out: Option<&std::path::Path>, json: bool) -> Result<()> {
    let k = Keyring::for_client(secret, &entry.name, entry.generation).map_err(anyhow::Error::msg)?;
    match out {
        Some(path) => {
            keyfile::create(path, &k).map_err(anyhow::Error::msg)?;
            if json {
                let mut v = entry_json(entry);
                v["keyring"] = serde_json::json!(path);
                return crate::output::print_json(&v);
            }
            println!("{} ({}): keyring written to {} (mode 0600)", entry.name, entry.caps.render(), path.display());
        }
        None if json => {
            let mut v = entry_json(entry);
            v["keyring_text"] = serde_json::json!(k.render());
            return crate::output::print_json(&v);
        }
        None => print!("{}", k.render()),
    }
    Ok(())
}
