//! The keyring of every cluster the tests start: one file beside the binaries under test
//! (made by the first test process that needs it, atomically), given to every daemon and
//! sheepctl as `SHEEP_KEYRING`; the test process's own clients authenticate with it too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sheep_core::auth::keyring::Keyring;
use sheep_rpc::keyfile;
use sheep_rpc::transport::{self, Identity};

use crate::bins::bin;

/// The test keyring's path; this process authenticates with it from the first call on.
pub fn keyring() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = bin("sheepctl").parent().expect("the binaries' directory").to_path_buf();
        let path = dir.join("test-keyring");
        if !path.exists() {
            let mut secret = [0u8; sheep_core::auth::KEY_LEN];
            getrandom::fill(&mut secret).expect("random bytes");
            let tmp = dir.join(format!("test-keyring.{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            keyfile::create(&tmp, &Keyring::new_cluster(secret)).expect("write the test keyring");
            // Only one process's file becomes the keyring (a link never replaces a file).
            let _ = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
        }
        let keyring = keyfile::load(&path).expect("the test keyring");
        transport::set_identity(Identity::Client { keyring }).expect("the test process's identity");
        path
    })
}

/// A command running one of the project's binaries with the test keyring.
pub fn command(name: &str) -> Command {
    let mut c = Command::new(bin(name));
    c.env("SHEEP_KEYRING", keyring());
    c
}
