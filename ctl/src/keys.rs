//! Which keyring sheepctl authenticates with, what the daemons it starts are given, and
//! `sheepctl auth`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use sheep_core::auth::keyring::Keyring;
use sheep_core::auth::KEY_LEN;
use sheep_rpc::keyfile::{self, KeyArgs, HOW_TO_MAKE_ONE};
use sheep_rpc::transport::{self, Identity};

/// The keyring this process chose (None: `--insecure`), for the daemons it starts.
static CHOSEN: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Where `sheepctl up` keeps its local cluster by default.
pub const DEFAULT_DIR: &str = "sheep-cluster";

/// The keyring file of a local cluster's DIR (`sheepctl up` makes it).
pub fn keyring_in(dir: &Path) -> PathBuf {
    dir.join("keyring")
}

/// Where sheepctl looks for a keyring when neither `--keyring` nor `SHEEP_KEYRING` names one:
/// the local cluster of `sheepctl up` in this directory, then the host's.
fn default_keyring() -> Option<PathBuf> {
    [keyring_in(Path::new(DEFAULT_DIR)), PathBuf::from("/etc/sheep/keyring")].into_iter().find(|p| p.is_file())
}

/// Authenticates this process as the client of `keys` (or of the default keyring).
pub fn use_keys(keys: &KeyArgs) -> Result<()> {
    let path = match (&keys.keyring, keys.insecure) {
        (Some(p), false) => Some(p.clone()),
        (None, false) => Some(default_keyring().with_context(|| format!("no keyring: {HOW_TO_MAKE_ONE}"))?),
        (_, true) => None,
    };
    use_keyring(path.as_deref(), keys.insecure)
}

/// Authenticates this process with the keyring at `path`, or without keys if `insecure`.
pub fn use_keyring(path: Option<&Path>, insecure: bool) -> Result<()> {
    let absolute = path.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
    let id = keyfile::identity(absolute.as_deref(), insecure, false).map_err(anyhow::Error::msg)?;
    transport::set_identity(id).map_err(anyhow::Error::msg)?;
    let _ = CHOSEN.set(absolute);
    Ok(())
}

/// The flags that give a daemon this process starts the same keys.
pub fn child_flags() -> Vec<String> {
    match CHOSEN.get() {
        Some(Some(path)) => vec!["--keyring".into(), path.to_string_lossy().into_owned()],
        _ if matches!(transport::identity(), Identity::Insecure) => vec!["--insecure".into()],
        _ => Vec::new(),
    }
}

/// A new cluster's keyring: a fresh secret and the administrator's key.
pub fn new_cluster_keyring() -> Result<Keyring> {
    let mut secret = [0u8; KEY_LEN];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no random bytes for a key: {e}"))?;
    Ok(Keyring::new_cluster(secret))
}
