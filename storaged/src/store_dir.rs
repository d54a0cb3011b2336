//! The node's data directory: `config` (which cluster and node the store belongs to) and
//! `epoch/` (its copy of the epoch history, one file per epoch). Every file is written
//! atomically: a temporary file, fsync, rename, fsync of the directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sheep_core::epoch::{EpochLog, EpochRecord};

/// `DIR/config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// The cluster this store belongs to; "" until the node joined a formatted cluster.
    pub cluster_id: String,
    /// The node this store belongs to (its listen address).
    pub node_id: String,
}

pub struct StoreDir {
    root: PathBuf,
}

impl StoreDir {
    /// Opens (creating it if needed) the data directory and checks that it is writable:
    /// a probe file is written, synced and removed.
    pub fn open(root: &Path) -> Result<StoreDir> {
        fs::create_dir_all(root).with_context(|| format!("cannot create data dir {}", root.display()))?;
        let probe = root.join(format!(".probe-{}", std::process::id()));
        let written = fs::File::create(&probe).and_then(|mut f| {
            f.write_all(b"probe")?;
            f.sync_all()
        });
        let removed = fs::remove_file(&probe);
        written.and(removed).with_context(|| format!("data dir {} is not writable", root.display()))?;
        let epochs = root.join("epoch");
        fs::create_dir_all(&epochs).with_context(|| format!("cannot create {}", epochs.display()))?;
        Ok(StoreDir { root: root.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn config_path(&self) -> PathBuf {
        self.root.join("config")
    }

    fn epoch_dir(&self) -> PathBuf {
        self.root.join("epoch")
    }

    /// The store's config; `None` for a new store.
    pub fn load_config(&self) -> Result<Option<StoreConfig>> {
        let path = self.config_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let cfg =
            serde_json::from_str(&text).with_context(|| format!("{} is not a valid store config", path.display()))?;
        Ok(Some(cfg))
    }

    pub fn save_config(&self, cfg: &StoreConfig) -> Result<()> {
        let mut text = serde_json::to_string_pretty(cfg)?;
        text.push('\n');
        write_atomic(&self.config_path(), text.as_bytes())
    }

    /// Loads the store's config for node `node_id`, creating it for a new store. A store
    /// that belongs to another node is refused.
    pub fn claim(&self, node_id: &str) -> Result<StoreConfig> {
        match self.load_config()? {
            Some(cfg) if cfg.node_id == node_id => Ok(cfg),
            Some(cfg) => bail!(
                "data dir {} belongs to node {}, not {node_id}; start storaged with --listen {} or use another data \
                    dir",
                self.root.display(),
                cfg.node_id,
                cfg.node_id
            ),
            None => {
                let cfg = StoreConfig { cluster_id: String::new(), node_id: node_id.to_string() };
                self.save_config(&cfg)?;
                Ok(cfg)
            }
        }
    }

    /// The epoch history kept in `epoch/`.
    pub fn load_epochs(&self) -> Result<EpochLog> {
        let dir = self.epoch_dir();
        let mut numbered = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            // Leftover temporary files of an interrupted write have a suffix; skip them.
            if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                numbered.push((n, entry.path()));
            }
        }
        numbered.sort();
        let mut log = EpochLog::default();
        for (n, path) in numbered {
            let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let rec: EpochRecord = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid epoch record", path.display()))?;
            if rec.epoch != n {
                bail!("{} holds epoch {}", path.display(), rec.epoch);
            }
            log.record(rec).with_context(|| format!("epoch files in {}", dir.display()))?;
        }
        Ok(log)
    }

    pub fn save_epoch(&self, rec: &EpochRecord) -> Result<()> {
        let text = serde_json::to_string(rec)?;
        write_atomic(&self.epoch_dir().join(rec.epoch.to_string()), text.as_bytes())
    }

    /// Forgets the epoch history (a new one begins, after a format).
    pub fn clear_epochs(&self) -> Result<()> {
        let dir = self.epoch_dir();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = entry?.path();
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        sync_dir(&dir)
    }
}

/// Writes `path` atomically: `path.tmp`, fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("a file path needs a directory")?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_core::epoch::NodeInfo;

    fn rec(epoch: u32, ids: &[&str]) -> EpochRecord {
        EpochRecord {
            epoch,
            time_ms: u64::from(epoch) * 1000,
            nodes: ids
                .iter()
                .map(|id| NodeInfo { id: id.to_string(), addr: id.to_string(), zone: 0, weight: 1 })
                .collect(),
        }
    }

    #[test]
    fn a_new_store_is_claimed_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StoreDir::open(&tmp.path().join("store")).unwrap();
        assert_eq!(dir.load_config().unwrap(), None);
        let cfg = dir.claim("127.0.0.1:7001").unwrap();
        assert_eq!(cfg.cluster_id, "");
        let adopted = StoreConfig { cluster_id: "c1".into(), ..cfg };
        dir.save_config(&adopted).unwrap();
        let again = StoreDir::open(&tmp.path().join("store")).unwrap();
        assert_eq!(again.claim("127.0.0.1:7001").unwrap(), adopted);
        let err = again.claim("127.0.0.2:7001").unwrap_err().to_string();
        assert!(err.contains("belongs to node 127.0.0.1:7001"), "{err}");
        assert!(!tmp.path().join("store/config.tmp").exists());
    }

    #[test]
    fn a_corrupt_config_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StoreDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join("config"), "{not json").unwrap();
        assert!(dir.load_config().unwrap_err().to_string().contains("not a valid store config"));
    }

    #[test]
    fn an_unwritable_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = StoreDir::open(&file.join("sub")).err().unwrap();
        assert!(format!("{err:#}").contains("cannot create data dir"), "{err:#}");
    }

    #[test]
    fn epochs_round_trip_and_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StoreDir::open(tmp.path()).unwrap();
        for r in [rec(1, &["a"]), rec(2, &["a", "b"]), rec(10, &["b"])].iter().take(2) {
            dir.save_epoch(r).unwrap();
        }
        fs::write(tmp.path().join("epoch/3.tmp"), "garbage").unwrap();
        let log = dir.load_epochs().unwrap();
        assert_eq!(log.current(), 2);
        assert_eq!(log.records(), &[rec(1, &["a"]), rec(2, &["a", "b"])]);
        dir.clear_epochs().unwrap();
        assert_eq!(dir.load_epochs().unwrap().current(), 0);
    }

    #[test]
    fn a_gap_in_epoch_files_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StoreDir::open(tmp.path()).unwrap();
        dir.save_epoch(&rec(1, &["a"])).unwrap();
        dir.save_epoch(&rec(3, &["a"])).unwrap();
        assert!(dir.load_epochs().is_err());
    }
}
