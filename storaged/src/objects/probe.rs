//! The store's health probe: its directories are still the ones it opened (not removed,
//! renamed or replaced under it), and a small file can be written, synced, read back and
//! removed. A full disk is not a failed one: `NoSpace` while probing passes.

use std::fs;
use std::io;

use super::{dir_id, ObjectStore, StoreError};

const PROBE_DATA: &[u8] = b"sheepdog storaged disk probe\n";

impl ObjectStore {
    /// Checks the disk under the store (see the module's doc). `Err` only for a failed disk.
    pub fn probe(&self) -> Result<(), StoreError> {
        // Tests hang the disk here (`sleep(MS)`): a probe past its deadline fails the disk.
        fail::fail_point!("object-probe");
        for (dir, opened) in [&self.obj, &self.stale, &self.tmp].into_iter().zip(self.dir_ids) {
            let now = dir_id(dir)?;
            if now != opened {
                return Err(StoreError::Io(format!("{} was replaced while in use", dir.display())));
            }
        }
        let path = self.tmp.join("probe");
        let written = fs::File::create(&path).and_then(|f| {
            use std::io::Write;
            let mut f = f;
            f.write_all(PROBE_DATA)?;
            f.sync_all()
        });
        let result = match written.and_then(|()| fs::read(&path)) {
            Ok(back) if back == PROBE_DATA => Ok(()),
            Ok(_) => Err(StoreError::Io("the probe file read back differently".into())),
            Err(e) => match StoreError::io("probe write", &e) {
                StoreError::NoSpace(_) => Ok(()),
                other => Err(other),
            },
        };
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound && result.is_ok() => Err(StoreError::io("probe remove", &e)),
            _ => result,
        }
    }
}
