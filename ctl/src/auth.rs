//! `sheepctl auth`: a cluster's keyring.

use anyhow::Result;
use sheep_rpc::keyfile;

use crate::cli::AuthCmd;
use crate::keys::new_cluster_keyring;

pub fn run(cmd: &AuthCmd, json: bool) -> Result<()> {
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
    }
}
