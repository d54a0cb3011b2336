//! The engine against in-process fake storage nodes (objects in memory).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use sheep_core::epoch::NodeInfo;
use sheep_core::namespace::VdiEntry;
use sheep_core::object::VdiId;
use sheep_rpc::error::{refusal, ErrorCode};
use sheep_rpc::storaged_capnp::storaged;
use tokio::net::TcpListener;

use super::*;
use crate::group::{GroupClient, Options};

#[derive(Default)]
struct Fake {
    objects: RefCell<HashMap<u64, Vec<u8>>>,
    creates: Cell<usize>,
    reads: Cell<usize>,
    flushes: Cell<usize>,
    zeros: Cell<usize>,
    /// Every read fails with this code.
    fail_reads: RefCell<Option<ErrorCode>>,
    /// Writes, creates and zeroings with a fence below this are refused with `fenced`.
    min_fence: Cell<u64>,
    /// Refused as fenced so far.
    fenced: Cell<usize>,
}

impl Fake {
    fn fence(&self, fence: u64) -> Result<(), capnp::Error> {
        if fence < self.min_fence.get() {
            self.fenced.set(self.fenced.get() + 1);
            return Err(refusal(ErrorCode::Fenced, "stale token"));
        }
        Ok(())
    }
}

struct Server(Rc<Fake>);

impl storaged::Server for Server {
    async fn read(
        self: CapRc<Self>,
        params: storaged::ReadParams,
        mut results: storaged::ReadResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        self.0.reads.set(self.0.reads.get() + 1);
        if let Some(code) = *self.0.fail_reads.borrow() {
            return Err(refusal(code, "injected"));
        }
        let objects = self.0.objects.borrow();
        let obj = objects.get(&p.get_oid()).ok_or_else(|| refusal(ErrorCode::NoObject, "absent"))?;
        let (off, len) = (p.get_offset() as usize, p.get_length() as usize);
        let data = obj.get(off..off + len).ok_or_else(|| refusal(ErrorCode::BadRequest, "out of range"))?;
        results.get().set_data(data);
        Ok(())
    }

    async fn write(
        self: CapRc<Self>,
        params: storaged::WriteParams,
        _: storaged::WriteResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        self.0.fence(p.get_fence())?;
        let mut objects = self.0.objects.borrow_mut();
        let obj = objects.get_mut(&p.get_oid()).ok_or_else(|| refusal(ErrorCode::NoObject, "absent"))?;
        let (off, data) = (p.get_offset() as usize, p.get_data()?);
        obj.get_mut(off..off + data.len())
            .ok_or_else(|| refusal(ErrorCode::BadRequest, "out of range"))?
            .copy_from_slice(data);
        Ok(())
    }

    async fn create_and_write(
        self: CapRc<Self>,
        params: storaged::CreateAndWriteParams,
        _: storaged::CreateAndWriteResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        self.0.fence(p.get_fence())?;
        // Give concurrent calls a chance to interleave, as a real node would.
        tokio::task::yield_now().await;
        let size = p.get_object_size() as usize;
        if !size.is_multiple_of(4096) {
            return Err(refusal(ErrorCode::BadRequest, "object size not a multiple of 4096"));
        }
        let mut objects = self.0.objects.borrow_mut();
        // Copy-on-write: the base from this node (the tests keep every copy everywhere).
        let base = match p.get_base_oid() {
            0 => None,
            b => Some(objects.get(&b).cloned().ok_or_else(|| refusal(ErrorCode::NoObject, "no base"))?),
        };
        let obj = objects.entry(p.get_oid()).or_insert_with(|| {
            self.0.creates.set(self.0.creates.get() + 1);
            base.unwrap_or_else(|| vec![0; size])
        });
        let (off, data) = (p.get_offset() as usize, p.get_data()?);
        obj.get_mut(off..off + data.len())
            .ok_or_else(|| refusal(ErrorCode::BadRequest, "out of range"))?
            .copy_from_slice(data);
        Ok(())
    }

    async fn zero(
        self: CapRc<Self>,
        params: storaged::ZeroParams,
        _: storaged::ZeroResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        self.0.fence(p.get_fence())?;
        self.0.zeros.set(self.0.zeros.get() + 1);
        let mut objects = self.0.objects.borrow_mut();
        let obj = objects.get_mut(&p.get_oid()).ok_or_else(|| refusal(ErrorCode::NoObject, "absent"))?;
        let (off, len) = (p.get_offset() as usize, p.get_length() as usize);
        obj.get_mut(off..off + len).ok_or_else(|| refusal(ErrorCode::BadRequest, "out of range"))?.fill(0);
        Ok(())
    }

    async fn flush(self: CapRc<Self>, _: storaged::FlushParams, _: storaged::FlushResults) -> Result<(), capnp::Error> {
        self.0.flushes.set(self.0.flushes.get() + 1);
        Ok(())
    }

    async fn remove(
        self: CapRc<Self>,
        params: storaged::RemoveParams,
        _: storaged::RemoveResults,
    ) -> Result<(), capnp::Error> {
        let oid = params.get()?.get_oid();
        self.0.objects.borrow_mut().remove(&oid).ok_or_else(|| refusal(ErrorCode::NoObject, "absent"))?;
        Ok(())
    }
}

/// Starts `n` fake nodes (zones 1..=n) on 127.0.0.1.
async fn fakes(n: u32) -> (Vec<Rc<Fake>>, Vec<NodeInfo>) {
    let mut out = Vec::new();
    let mut nodes = Vec::new();
    for zone in 1..=n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let fake = Rc::new(Fake::default());
        let f = fake.clone();
        tokio::task::spawn_local(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let client: storaged::Client = capnp_rpc::new_client(Server(f.clone()));
                tokio::task::spawn_local(crate::rpc::serve(stream, peer, move |_| client.client));
            }
        });
        nodes.push(NodeInfo { id: addr.clone(), addr, zone, weight: 1 });
        out.push(fake);
    }
    (out, nodes)
}

fn entry(size: u64, shift: u8) -> VdiEntry {
    VdiEntry {
        name: "t".into(),
        vid: VdiId::new(0x1234).unwrap(),
        size,
        copies: 3,
        object_size_shift: shift,
        created_ms: 1,
        parent: None,
        snapshot: None,
    }
}

fn run(f: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f);
}

async fn cluster(nodes: &[NodeInfo]) -> Rc<Cluster> {
    // No groupd: the fixed view never asks it.
    let group = Rc::new(GroupClient::new(vec!["127.0.0.1:1".into()], Options::default()).unwrap());
    let limits = CallLimits { connect: Duration::from_secs(1), call: Duration::from_secs(2) };
    Cluster::fixed(group, 1, nodes, limits)
}

fn opts() -> VdiOptions {
    VdiOptions { retry_for: Duration::from_secs(2), read_replica: None, fence: 0 }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1).collect()
}

#[test]
fn writes_across_objects_read_back_and_survive_reopening() {
    run(async {
        let (fakes, nodes) = fakes(3).await;
        let c = cluster(&nodes).await;
        let e = entry(64 << 12, 12); // 64 objects of 4 KiB
        let vdi = Vdi::open_entry(c.clone(), e.clone(), opts()).await.unwrap();
        let reads = || fakes.iter().map(|f| f.reads.get()).sum::<usize>();
        assert_eq!(reads(), 3, "opening asked every replica for the inode (absent)");
        let mut zeros = vec![1u8; 10000];
        vdi.read(100, &mut zeros).await.unwrap();
        assert!(zeros.iter().all(|&b| b == 0), "never written reads as zeros");
        assert_eq!(reads(), 3, "without asking anyone");

        let data = pattern(3 * 4096 + 10, 3);
        vdi.write(4000, &data, false).await.unwrap();
        let mut back = vec![0u8; data.len()];
        vdi.read(4000, &mut back).await.unwrap();
        assert_eq!(back, data);
        // Objects 0..=3 were written; every node holds all of them and the inode.
        assert!((0..4).all(|i| vdi.is_written(i)) && !vdi.is_written(4));
        for f in &fakes {
            assert_eq!(f.objects.borrow().len(), 5);
        }
        vdi.flush().await.unwrap();
        assert!(fakes.iter().all(|f| f.flushes.get() == 1));

        let again = Vdi::open_entry(c, e, opts()).await.unwrap();
        assert!((0..4).all(|i| again.is_written(i)) && !again.is_written(4), "the inode table was reloaded");
        let mut back = vec![0u8; data.len() + 200];
        again.read(3900, &mut back).await.unwrap();
        assert!(back[..100].iter().all(|&b| b == 0));
        assert_eq!(&back[100..100 + data.len()], &data[..]);
    });
}

#[test]
fn concurrent_first_writes_create_each_object_once() {
    run(async {
        let (fakes, nodes) = fakes(3).await;
        let c = cluster(&nodes).await;
        let vdi = Rc::new(Vdi::open_entry(c, entry(8 << 12, 12), opts()).await.unwrap());
        let writes = (0..8u64).map(|k| {
            let vdi = vdi.clone();
            async move { vdi.write(k * 512, &pattern(512, k as u8), false).await }
        });
        futures::future::try_join_all(writes).await.unwrap();
        // One data object and one inode per node.
        assert!(
            fakes.iter().all(|f| f.creates.get() == 2),
            "{:?}",
            fakes.iter().map(|f| f.creates.get()).collect::<Vec<_>>()
        );
        let mut back = vec![0u8; 4096];
        vdi.read(0, &mut back).await.unwrap();
        for k in 0..8usize {
            assert_eq!(&back[k * 512..(k + 1) * 512], &pattern(512, k as u8)[..]);
        }
    });
}

#[test]
fn reads_fail_over_and_bad_requests_are_refused() {
    run(async {
        let (fakes, nodes) = fakes(3).await;
        let c = cluster(&nodes).await;
        let vdi = Vdi::open_entry(c, entry(4 << 12, 12), opts()).await.unwrap();
        let data = pattern(4096, 9);
        vdi.write(4096, &data, false).await.unwrap();
        *fakes[0].fail_reads.borrow_mut() = Some(ErrorCode::Corrupt);
        *fakes[1].fail_reads.borrow_mut() = Some(ErrorCode::NoObject);
        for _ in 0..4 {
            let mut back = vec![0u8; 4096];
            vdi.read(4096, &mut back).await.unwrap();
            assert_eq!(back, data);
        }
        assert!(matches!(vdi.read(4 << 12, &mut [0u8; 1]).await, Err(VdiError::OutOfRange { .. })));
        assert!(matches!(vdi.write(u64::MAX, &[0u8; 2], false).await, Err(VdiError::OutOfRange { .. })));
        // Every replica failing: an I/O error after the retry time, not a hang.
        *fakes[2].fail_reads.borrow_mut() = Some(ErrorCode::Corrupt);
        let started = std::time::Instant::now();
        let e = vdi.read(4096, &mut [0u8; 16]).await.unwrap_err();
        assert!(matches!(e, VdiError::Io { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn fenced_writes_fail_at_once_and_carry_the_token() {
    run(async {
        let (fakes, nodes) = fakes(3).await;
        let c = cluster(&nodes).await;
        for f in &fakes {
            f.min_fence.set(5);
        }
        let vdi = Vdi::open_entry(c.clone(), entry(4 << 12, 12), VdiOptions { fence: 5, ..opts() }).await.unwrap();
        vdi.write(0, &pattern(4096, 1), false).await.unwrap();
        vdi.write_zeroes(0, 512, false).await.unwrap();
        // The lock moved on: on one replica only is enough to stop the writer, at once.
        fakes[1].min_fence.set(9);
        let started = std::time::Instant::now();
        let e = vdi.write(0, &pattern(4096, 2), false).await.unwrap_err();
        assert!(matches!(&e, VdiError::Fenced(n) if n.is_fenced()), "{e}");
        assert_eq!(fakes[1].fenced.get(), 1, "never retried");
        assert!(started.elapsed() < Duration::from_secs(1));
        let e = vdi.write_zeroes(0, 4096, false).await.unwrap_err();
        assert!(matches!(e, VdiError::Fenced(_)), "{e}");
        // A writer without a lock (fence 0) is refused the same way.
        let unlocked = Vdi::open_entry(c, entry(4 << 12, 12), opts()).await.unwrap();
        assert!(matches!(unlocked.write(8192, &[1; 16], false).await, Err(VdiError::Fenced(_))));
    });
}

#[test]
fn a_chosen_replica_is_read_first() {
    run(async {
        let (fakes, nodes) = fakes(3).await;
        let c = cluster(&nodes).await;
        let e = entry(4 << 12, 12);
        let writer = Vdi::open_entry(c.clone(), e.clone(), opts()).await.unwrap();
        writer.write(0, &pattern(4096, 1), false).await.unwrap();
        let oid = writer.data_oid(0).unwrap();
        for k in 0..3 {
            let reader =
                Vdi::open_entry(c.clone(), e.clone(), VdiOptions { read_replica: Some(k), ..opts() }).await.unwrap();
            let before: Vec<usize> = fakes.iter().map(|f| f.reads.get()).collect();
            let mut back = vec![0u8; 4096];
            reader.read(0, &mut back).await.unwrap();
            let asked: Vec<usize> = (0..3).filter(|&i| fakes[i].reads.get() > before[i]).collect();
            let want = nodes.iter().position(|n| n.addr == reader.replicas(oid)[k].addr).unwrap();
            assert_eq!(asked, vec![want], "replica {k}");
        }
    });
}

#[test]
fn write_zeroes_zeroes_written_objects_and_creates_nothing() {
    run(async {
        let (fakes, nodes) = fakes(3).await;
        let c = cluster(&nodes).await;
        let e = entry(16 << 12, 12); // 16 objects of 4 KiB
        let vdi = Vdi::open_entry(c.clone(), e.clone(), opts()).await.unwrap();
        // Objects 1..=3 written with data; a model of the whole VDI.
        let mut model = vec![0u8; 16 << 12];
        let data = pattern(3 << 12, 5);
        vdi.write(1 << 12, &data, false).await.unwrap();
        model[1 << 12..4 << 12].copy_from_slice(&data);
        let objects = || fakes.iter().map(|f| f.objects.borrow().len()).collect::<Vec<_>>();
        let before = objects();
        // The end of object 1, all of object 2, the start of object 3.
        let (off, len) = ((1 << 12) + 1000, 4096 - 1000 + 4096 + 10);
        vdi.write_zeroes(off as u64, len as u64, true).await.unwrap();
        model[off..off + len].fill(0);
        let mut back = vec![0u8; model.len()];
        vdi.read(0, &mut back).await.unwrap();
        assert_eq!(back, model);
        // Objects 1 and 3 in part: a zero each on every replica; object 2 whole: unmapped,
        // its object removed (a discard gives the space back).
        assert!(fakes.iter().all(|f| f.zeros.get() == 2), "one zero per partial object on every replica");
        assert!(!vdi.is_written(2) && vdi.is_written(1) && vdi.is_written(3));
        let after_unmap = objects();
        assert!(after_unmap.iter().zip(&before).all(|(a, b)| a + 1 == *b), "{after_unmap:?} vs {before:?}");
        // Never-written objects: nothing sent, nothing created.
        vdi.write_zeroes(8 << 12, 8 << 12, false).await.unwrap();
        vdi.write_zeroes(0, 1 << 12, false).await.unwrap();
        assert!(fakes.iter().all(|f| f.zeros.get() == 2));
        assert_eq!(objects(), after_unmap);
        assert!(!vdi.is_written(0) && !vdi.is_written(8));
        // The replicas agree.
        let first = fakes[0].objects.borrow().clone();
        assert!(fakes.iter().all(|f| *f.objects.borrow() == first));
        // Zeroing is remembered by the nodes: a new opener reads the same.
        let again = Vdi::open_entry(c, e, opts()).await.unwrap();
        let mut back = vec![0u8; model.len()];
        again.read(0, &mut back).await.unwrap();
        assert_eq!(back, model);
        // Range checks as for write; nothing is a no-op.
        assert!(matches!(vdi.write_zeroes(16 << 12, 1, false).await, Err(VdiError::OutOfRange { .. })));
        assert!(matches!(vdi.write_zeroes(u64::MAX, 2, false).await, Err(VdiError::OutOfRange { .. })));
        vdi.write_zeroes(16 << 12, 0, false).await.unwrap();
        // Non-FUA zeroes are flushed by the next flush.
        vdi.write_zeroes(2 << 12, 1, false).await.unwrap();
        vdi.flush().await.unwrap();
        assert!(fakes.iter().all(|f| f.flushes.get() == 1));
    });
}

#[test]
fn write_zeroes_copies_an_object_shared_with_a_parent_first() {
    run(async {
        let (fakes, nodes) = fakes(3).await;
        let c = cluster(&nodes).await;
        let parent = entry(4 << 12, 12);
        let pv = Vdi::open_entry(c.clone(), parent.clone(), opts()).await.unwrap();
        let data = pattern(4 << 12, 8);
        pv.write(0, &data, false).await.unwrap();
        // A child whose table still points at the parent's objects (what a clone looks like).
        let child = VdiEntry { name: "c".into(), vid: VdiId::new(0x5678).unwrap(), ..parent.clone() };
        let cv = Vdi::open_entry(c.clone(), child, opts()).await.unwrap();
        for i in 0..4 {
            cv.set_owner_for_test(i, parent.vid);
        }
        cv.write_zeroes(100, 200, false).await.unwrap();
        let mut back = vec![0u8; 4 << 12];
        cv.read(0, &mut back).await.unwrap();
        let mut want = data.clone();
        want[100..300].fill(0);
        assert_eq!(back, want);
        assert_eq!(cv.owner(0), Some(cv.vid()), "the child has its own object now");
        pv.read(0, &mut back).await.unwrap();
        assert_eq!(back, data, "the parent's object is untouched");
        assert!(fakes.iter().all(|f| f.objects.borrow().contains_key(&cv.data_oid(0).unwrap().raw())));
    });
}
