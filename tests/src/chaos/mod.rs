//! The seeded chaos test's parts: the [`model`] of acknowledged writes, the [`nemesis`] and
//! its fault schedule, the [`writers`], and the checks made once everything is healed.

pub mod model;
pub mod nemesis;
pub mod writers;

use std::collections::BTreeMap;
use std::time::Instant;

use sheep_client::vdi::{CallLimits, Cluster as VdiCluster, StorePool, Vdi, VdiOptions};

use model::{Model, SLOT};

/// Reads every slot of VDI `name` (or of its snapshot `tag`) through the engine and checks
/// each against `model` as a read over `[t0, t1]`. Returns the violations.
pub async fn check_slots(
    groupds: &[String],
    name: &str,
    tag: Option<&str>,
    model: &Model,
    stride: u64,
    (t0, t1): (Instant, Instant),
) -> Vec<String> {
    let group = writers::group_client(groupds);
    let what = match tag {
        Some(t) => format!("snapshot {t} of {name}"),
        None => name.to_string(),
    };
    let entry = match group.vdi_list().await {
        Ok((vdis, _)) => vdis.into_iter().find(|v| v.name == name && v.snapshot.as_deref() == tag),
        Err(e) => return vec![format!("cannot list the VDIs: {e}")],
    };
    let Some(entry) = entry else { return vec![format!("{what} is not in the VDI list")] };
    let vdi = match VdiCluster::connect(group, CallLimits::default()).await {
        Ok(c) => Vdi::open_entry(c, entry, VdiOptions::default()).await,
        Err(e) => Err(e),
    };
    let vdi = match vdi {
        Ok(v) => v,
        Err(e) => return vec![format!("cannot open {what}: {e}")],
    };
    let mut bad = Vec::new();
    for slot in 0..model.slots() {
        let mut buf = vec![0u8; SLOT];
        match vdi.read(slot as u64 * stride, &mut buf).await {
            Ok(()) => {
                if let Err(e) = model.check(slot, t0, t1, &buf) {
                    bad.push(format!("{what}: {e}"));
                }
            }
            Err(e) => bad.push(format!("{what}: slot {slot} cannot be read: {e}")),
        }
    }
    bad
}

/// One node's copy of an object: its digest, or why it could not be fetched.
type Copy = (String, Result<u64, String>);

/// Fetches every live copy of every object from every node in `addrs` (with `inspect`: a
/// look that repairs nothing) and reports the objects whose copies differ or are corrupt.
pub async fn compare_replicas(addrs: &[String], epoch: u32) -> Vec<String> {
    let pool = StorePool::new(CallLimits::BULK);
    let mut copies: BTreeMap<u64, Vec<Copy>> = BTreeMap::new();
    let mut bad = Vec::new();
    for addr in addrs {
        let listing = match pool.list(addr, epoch).await {
            Ok(l) => l,
            Err(e) => {
                bad.push(format!("cannot list {addr}: {e}"));
                continue;
            }
        };
        for oid in listing.live {
            let digest = match pool.inspect(addr, epoch, oid.raw()).await {
                Ok(w) => Ok(fnv(&w.data)),
                Err(e) => Err(e.to_string()),
            };
            copies.entry(oid.raw()).or_default().push((addr.clone(), digest));
        }
    }
    for (oid, cs) in copies {
        let first = &cs[0].1;
        if cs.iter().any(|(_, d)| d.is_err() || d != first) {
            bad.push(format!("object {oid:016x}: copies differ: {cs:?}"));
        }
    }
    bad
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
