//! A VDI opened through the engine of the client crate, and the chunks in which `vdi read`,
//! `write`, `import` and `export` move its bytes.

use std::rc::Rc;

use anyhow::{bail, Result};
use sheep_client::vdi::{CallLimits, Cluster, Vdi, VdiError, VdiOptions};
use sheep_core::object::validate_vdi_name;

use crate::cli::ReplicaArg;

/// Bytes per request of `read`, `write`, `import` and `export`, and how many are in flight.
pub const CHUNK: u64 = 4 << 20;
pub const IN_FLIGHT: usize = 8;

/// Opens `name` through the engine, with clear errors for a bad or unknown name.
pub async fn open(groupd: &str, name: &str) -> Result<Rc<Vdi>> {
    open_with(groupd, name, &ReplicaArg::default()).await
}

/// Like [`open`], reading from the given replica first, or opening a snapshot (read-only).
pub async fn open_with(groupd: &str, name: &str, from: &ReplicaArg) -> Result<Rc<Vdi>> {
    validate_vdi_name(name)?;
    let group = Rc::new(crate::client(groupd)?);
    let (vdis, _) = group.vdi_list().await?;
    let entry = match &from.snapshot {
        None => vdis.into_iter().find(|v| v.name == name && !v.is_snapshot()),
        Some(tag) => {
            sheep_core::object::validate_tag(tag)?;
            let found = vdis.iter().find(|v| v.name == name && v.snapshot.as_deref() == Some(tag.as_str())).cloned();
            if found.is_none() && vdis.iter().any(|v| v.name == name) {
                bail!("VDI {name:?} has no snapshot {tag:?} (see `sheepctl vdi list`)");
            }
            found
        }
    };
    let Some(entry) = entry else { bail!("there is no VDI named {name:?} (see `sheepctl vdi list`)") };
    let cluster = Cluster::connect(group, CallLimits::default()).await?;
    let opts = VdiOptions { read_replica: from.replica.map(usize::from), ..VdiOptions::default() };
    match Vdi::open_entry(cluster, entry, opts).await {
        Ok(v) => Ok(Rc::new(v)),
        Err(VdiError::NoVdi(n)) => bail!("there is no VDI named {n:?} (see `sheepctl vdi list`)"),
        Err(e) => Err(e.into()),
    }
}

/// `[offset, offset + len)` in chunks of at most [`CHUNK`] bytes, aligned to multiples of it.
pub fn chunks(offset: u64, len: u64) -> Vec<(u64, usize)> {
    let end = offset + len;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let next = ((pos / CHUNK) + 1) * CHUNK;
        let n = next.min(end) - pos;
        out.push((pos, n as usize));
        pos += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_aligned() {
        assert_eq!(chunks(0, 10), vec![(0, 10)]);
        assert_eq!(chunks(CHUNK - 1, 3), vec![(CHUNK - 1, 1), (CHUNK, 2)]);
        assert_eq!(chunks(0, 2 * CHUNK).len(), 2);
        assert!(chunks(5, 0).is_empty());
    }
}
