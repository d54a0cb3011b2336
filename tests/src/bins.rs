//! Where the binaries under test are.

use std::path::{Path, PathBuf};

/// The path of one of the project's binaries, from the same build as the running test
/// (`target/<profile>/`), or from `SHEEP_BIN_DIR`.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("SHEEP_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` first", path.display());
    path
}
