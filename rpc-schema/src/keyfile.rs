//! Keyring files: made once (`sheepctl auth init`, `auth add`), read by every daemon and
//! client at start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sheep_core::auth::keyring::Keyring;

use crate::transport::Identity;

/// The line a process without a keyring prints.
pub const HOW_TO_MAKE_ONE: &str = "make one with `sheepctl auth init --out FILE` and pass it with --keyring FILE \
                                   (or SHEEP_KEYRING), or run with --insecure on a cluster without keys";

/// Reads the keyring at `path`.
pub fn load(path: &Path) -> Result<Keyring, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read the keyring {}: {e}", path.display()))?;
    let k = Keyring::parse(&text).map_err(|e| format!("the keyring {} is not valid: {e}", path.display()))?;
    if let Ok(m) = fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "the keyring {} can be read by others (mode {:o}): chmod 600 it",
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
    Ok(k)
}

/// Writes `k` to a new file at `path`, mode 0600; an existing file is never overwritten.
pub fn create(path: &Path, k: &Keyring) -> Result<(), String> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists already: a keyring is never overwritten (remove it first if you mean it)",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        }
    })?;
    f.write_all(k.render().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The flags every daemon and client takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// The keyring to authenticate with (`sheepctl auth init` makes a cluster's)
    #[arg(long, global = true, env = "SHEEP_KEYRING", value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Run without keys: anyone who reaches a port can read and write everything (a trusted
    /// network only); such a process talks only to others that run so too
    #[arg(long, global = true)]
    pub insecure: bool,
}

impl KeyArgs {
    /// Who this process is (see [`identity`]).
    pub fn identity(&self, daemon: bool) -> Result<Identity, String> {
        identity(self.keyring.as_deref(), self.insecure, daemon)
    }
}

/// Who a process is, from its `--keyring` and `--insecure` flags; `daemon`: it serves (and
/// needs the cluster's secret).
pub fn identity(keyring: Option<&Path>, insecure: bool, daemon: bool) -> Result<Identity, String> {
    match (keyring, insecure) {
        // --insecure says it outright: it wins over a keyring (e.g. an exported SHEEP_KEYRING).
        (_, true) => Ok(Identity::Insecure),
        (None, false) => Err(format!("no keyring: {HOW_TO_MAKE_ONE}")),
        (Some(path), false) => {
            let keyring = load(path)?;
            if daemon {
                if keyring.secret.is_none() {
                    return Err(format!(
                        "the keyring {} is {}'s, without the cluster's secret: a daemon needs the cluster's keyring \
                         (the one `sheepctl auth init` made)",
                        path.display(),
                        keyring.entity
                    ));
                }
                Ok(Identity::Daemon { keyring })
            } else {
                Ok(Identity::Client { keyring })
            }
        }
    }
}
