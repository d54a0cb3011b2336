//! Zeroing a range of a VDI on real processes (`Vdi::write_zeroes` → storaged's `zero`):
//! what was written reads back as the model says, never-written objects stay absent, every
//! replica ends up with the same bytes, and zeroed whole objects give their space back.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;
use std::time::Duration;

use sheep_client::group::{GroupClient, Options};
use sheep_client::vdi::{CallLimits, Cluster as VdiCluster, Vdi, VdiOptions};
use sheep_tests::rand::Rng;
use sheep_tests::Cluster;

const MIB: usize = 1 << 20;
const OBJ: usize = 4 * MIB;

/// One groupd, `nodes` storaged, formatted with 3 copies.
fn cluster(nodes: usize) -> Cluster {
    Cluster::formatted(nodes, 3, &[])
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

async fn open(c: &Cluster, name: &str) -> Vdi {
    let opts = Options { wait_for_groupd: true, retry_for: Duration::from_secs(20), ..Options::default() };
    let group = Rc::new(GroupClient::new(c.groupd_addrs.clone(), opts).unwrap());
    let cluster = VdiCluster::connect(group, CallLimits::default()).await.unwrap();
    Vdi::open(cluster, name, VdiOptions::default()).await.unwrap()
}

fn all_objects(c: &Cluster) -> BTreeSet<(usize, String)> {
    (0..c.storageds.len()).flat_map(|i| c.objects_on(i).into_iter().map(move |o| (i, o))).collect()
}

/// Bytes allocated on disk by the copies of object `oid` (16 hex digits) on every node.
fn allocated(c: &Cluster, oid: &str) -> u64 {
    (0..c.storageds.len())
        .filter_map(|i| std::fs::metadata(c.path(&format!("storaged{}/obj/{oid}", i + 1))).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i} (object {})", i / OBJ);
    }
}

#[test]
fn zeroing_a_range_reads_back_creates_nothing_and_replicas_agree() {
    let c = cluster(4);
    c.ctl_ok(&["vdi", "create", "v", "32M"]);
    let mut model = vec![0u8; 32 * MIB];
    block_on(async {
        let vdi = open(&c, "v").await;
        // Random data over objects 0, 1 and 2.
        let data = Rng::new(7).bytes(3 * OBJ);
        vdi.write(0, &data, false).await.unwrap();
        model[..3 * OBJ].copy_from_slice(&data);
        vdi.flush().await.unwrap();
        let data_oid = |idx: u32| format!("{:016x}", vdi.data_oid(idx).unwrap().raw());
        let (oid0, oid1) = (data_oid(0), data_oid(1));
        let ragged_before = allocated(&c, &oid0);

        // All of object 1 and ragged ends of objects 0 and 2.
        let (off, len) = (OBJ - 12_345, OBJ + 12_345 + 777);
        vdi.write_zeroes(off as u64, len as u64, true).await.unwrap();
        model[off..off + len].fill(0);
        let mut back = vec![0u8; model.len()];
        vdi.read(0, &mut back).await.unwrap();
        assert_same(&back, &model, "read after write_zeroes");

        // The object covered whole is unmapped: gone from every node.
        assert!(!vdi.is_written(1), "object 1 is unmapped");
        assert!(all_objects(&c).iter().all(|(_, o)| *o != oid1), "object 1's copies are removed");
        // Zeroed whole blocks of a ragged end give their space back (where the file system
        // punches holes: ext4, xfs, tmpfs; else they are written with zeros and stay allocated).
        let ragged_after = allocated(&c, &oid0);
        assert!(ragged_after <= ragged_before, "allocated {ragged_before} -> {ragged_after}");
        if ragged_after >= ragged_before {
            eprintln!("the store's file system did not punch holes ({ragged_before} bytes allocated before and after)");
        }

        // Never-written objects: nothing is created anywhere.
        let before = all_objects(&c);
        vdi.write_zeroes((4 * OBJ) as u64, (4 * OBJ) as u64, false).await.unwrap();
        vdi.write_zeroes((3 * OBJ + 100) as u64, 1000, true).await.unwrap();
        assert_eq!(all_objects(&c), before, "zeroing never-written objects created objects");
        assert!(!vdi.is_written(3) && !vdi.is_written(4));
        // Zeroing the unmapped object again is a no-op.
        vdi.write_zeroes(OBJ as u64, 4096, false).await.unwrap();
        assert_eq!(all_objects(&c), before);
        vdi.flush().await.unwrap();
    });

    // Every replica holds the same bytes: read each object from replica k, k = 0..3.
    for k in 0..3 {
        let file = c.path("replica.out");
        let _ = std::fs::remove_file(&file);
        c.ctl_ok(&["vdi", "export", "v", file.to_str().unwrap(), "--replica", &k.to_string()]);
        assert_same(&std::fs::read(&file).unwrap(), &model, &format!("export from replica {k}"));
    }
}
