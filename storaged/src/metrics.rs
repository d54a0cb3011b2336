//! storaged's Prometheus metrics (`sheep_storage_…`): every object request counted by its
//! RPC method (requests, payload bytes, errors by code, latency), and gauges of the store
//! (objects, disk space, a failed disk), of the epoch served and of recovery. The series are
//! looked up once here, so that counting a request takes a few atomics and no allocation;
//! they are counted whether or not `--metrics` serves them (the registry is then dropped).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sheep_core::epoch::Epoch;
use sheep_core::iostat::{Direction, IoTable, NodeIo};
use sheep_core::object::{ObjectId, VdiId};
use sheep_core::store::StoreStat;
use sheep_metrics::{Gauge, OpFamilies, OpMetrics, Registry};
use sheep_rpc::error::{code_of, ErrorCode};
use tracing::debug;

use crate::blocking::blocking;
use crate::disk_health::DiskHealth;
use crate::objects::ObjectStore;
use crate::recovery_plan::Plan;
use crate::recovery_progress::Progress;

/// The object requests counted, one `op` label each: the RPC method's name in
/// storaged.capnp. (`status`, `epochLog` and `recovery` only report on the node.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    CreateAndWrite,
    Zero,
    Remove,
    List,
    Fetch,
    Flush,
    Stat,
}

impl Op {
    const ALL: [Op; 9] =
        [Op::Read, Op::Write, Op::CreateAndWrite, Op::Zero, Op::Remove, Op::List, Op::Fetch, Op::Flush, Op::Stat];

    /// Which of `sheepctl node stat`'s and `vdi stat`'s counters the request goes to: the
    /// clients' reads and writes (a `fetch` is a peer's whole-object pull, not counted there).
    fn direction(self) -> Option<Direction> {
        match self {
            Op::Read => Some(Direction::Read),
            Op::Write | Op::CreateAndWrite | Op::Zero => Some(Direction::Write),
            Op::Remove | Op::List | Op::Fetch | Op::Flush | Op::Stat => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::CreateAndWrite => "createAndWrite",
            Op::Zero => "zero",
            Op::Remove => "remove",
            Op::List => "list",
            Op::Fetch => "fetch",
            Op::Flush => "flush",
            Op::Stat => "stat",
        }
    }
}

/// Where recovery stands, as `sheepctl node recovery` words it (`idle`: no pass has begun,
/// the node never joined an epoch it is a member of).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryState {
    Idle,
    Listing,
    Recovering,
    Waiting,
    Complete,
}

impl RecoveryState {
    const ALL: [RecoveryState; 5] = [
        RecoveryState::Idle,
        RecoveryState::Listing,
        RecoveryState::Recovering,
        RecoveryState::Waiting,
        RecoveryState::Complete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RecoveryState::Idle => "idle",
            RecoveryState::Listing => "listing",
            RecoveryState::Recovering => "recovering",
            RecoveryState::Waiting => "waiting",
            RecoveryState::Complete => "complete",
        }
    }

    /// The state of `p`, in the order sheepctl decides it: complete, else waiting for nodes
    /// that are down, else listing (some node's list is still missing), else recovering.
    /// Looks at every pending object: for where the progress changes as a whole, not per pull.
    pub fn of(p: &Progress) -> RecoveryState {
        if p.epoch == 0 {
            RecoveryState::Idle
        } else if p.complete {
            RecoveryState::Complete
        } else if !p.hidden_on.is_empty() || p.pending.values().any(|plan| matches!(plan, Plan::Wait(_))) {
            RecoveryState::Waiting
        } else if !p.listed {
            RecoveryState::Listing
        } else {
            RecoveryState::Recovering
        }
    }
}

/// The code label of a failed request: a refusal's code as error.capnp names it
/// (`staleEpoch`), `internal` for an exception that is no refusal (a malformed message).
pub fn error_code(e: &capnp::Error) -> &'static str {
    code_of(e).map_or("internal", ErrorCode::name)
}

/// The store's figures are read at most this often (see [`StoreMetrics::refresh`]).
const STORE_EVERY: Duration = Duration::from_secs(1);
/// ... and at most this share of one disk thread's time: a store so large that reading its
/// figures takes long is read less often.
const STORE_DUTY: u32 = 10;

/// What a request that succeeded did: its payload bytes, and the VDI it was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub bytes: u64,
    pub vdi: Option<VdiId>,
}

impl Served {
    /// A request on object `oid` that moved `bytes`.
    pub fn object(oid: ObjectId, bytes: u64) -> Served {
        Served { bytes, vdi: Some(oid.vid()) }
    }

    /// A request on the node as a whole.
    pub fn node() -> Served {
        Served { bytes: 0, vdi: None }
    }
}

pub struct StoreMetrics {
    ops: [OpMetrics; Op::ALL.len()],
    /// The same requests for `ioStats` (`sheepctl node stat`, `vdi stat`): totals and per
    /// VDI, bounded. Only the event loop touches it.
    io: std::cell::RefCell<IoTable>,
    objects: Gauge,
    capacity: Gauge,
    free: Gauge,
    used: Gauge,
    disk_failed: Gauge,
    epoch: Gauge,
    recovery_done: Gauge,
    recovery_total: Gauge,
    recovery_state: [Gauge; RecoveryState::ALL.len()],
}

impl StoreMetrics {
    /// The metrics, and the registry that holds them (to serve, or to drop).
    pub fn new() -> (StoreMetrics, Registry) {
        let mut registry = sheep_metrics::daemon_registry("storaged");
        let families = OpFamilies::register(&mut registry, "storage", "object requests");
        let ops = Op::ALL.map(|op| families.op(vec![("op", op.name().into())]));
        let sub = registry.sub_registry_with_prefix("storage");
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            sub.register(name, help, g.clone());
            g
        };
        let objects = gauge("objects", "Live object copies on this node, not counting stale ones");
        let capacity = gauge("disk_capacity_bytes", "Bytes of the file system holding the store");
        let free = gauge("disk_free_bytes", "Bytes still free on the file system holding the store");
        let used = gauge("disk_used_bytes", "Bytes the live objects take on disk");
        let disk_failed = gauge("disk_failed", "1 once the disk failed (every object request is refused), else 0");
        let epoch = gauge("epoch", "The newest epoch this node has applied (0: none yet)");
        let recovery_done = gauge("recovery_objects_done", "Objects recovered so far in the current or last recovery");
        let recovery_total =
            gauge("recovery_objects_total", "Objects this node must hold in the epoch it recovers (known once listed)");
        let states = sheep_metrics::Family::<sheep_metrics::Labels, Gauge>::default();
        sub.register(
            "recovery_state",
            "Where recovery stands: 1 for the current state, 0 for the others",
            states.clone(),
        );
        let recovery_state =
            RecoveryState::ALL.map(|s| states.get_or_create(&vec![("state", s.name().into())]).clone());
        let metrics = StoreMetrics {
            ops,
            io: std::cell::RefCell::default(),
            objects,
            capacity,
            free,
            used,
            disk_failed,
            epoch,
            recovery_done,
            recovery_total,
            recovery_state,
        };
        metrics.set_recovery_state(RecoveryState::Idle);
        (metrics, registry)
    }

    /// Runs one request and counts it: from now, when it is taken, to when its answer is
    /// made; `request` says what it served.
    pub async fn count(
        &self,
        op: Op,
        request: impl Future<Output = Result<Served, capnp::Error>>,
    ) -> Result<(), capnp::Error> {
        let started = Instant::now();
        let metrics = &self.ops[op as usize];
        let result = request.await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match &result {
            Ok(served) => metrics.succeeded(started, served.bytes),
            Err(e) => metrics.failed(started, error_code(e)),
        }
        if let Some(dir) = op.direction() {
            let (vdi, bytes) = result.as_ref().map_or((None, 0), |s| (s.vdi, s.bytes));
            self.io.borrow_mut().record(vdi, dir, micros, bytes, result.is_ok());
        }
        result.map(drop)
    }

    /// The counters of `ioStats`.
    pub fn io(&self, uptime_ms: u64) -> NodeIo {
        self.io.borrow().snapshot(uptime_ms)
    }

    pub fn set_epoch(&self, epoch: Epoch) {
        self.epoch.set(i64::from(epoch));
    }

    /// Recovery's progress changed as a whole (a new pass, its plan, its end).
    pub fn recovery_changed(&self, p: &Progress) {
        self.recovery_pulled(p);
        self.recovery_total.set(gauge_value(p.total));
        self.set_recovery_state(RecoveryState::of(p));
    }

    /// One more object recovered: only the count moved.
    pub fn recovery_pulled(&self, p: &Progress) {
        self.recovery_done.set(gauge_value(p.done));
    }

    fn set_recovery_state(&self, state: RecoveryState) {
        for (s, gauge) in RecoveryState::ALL.iter().zip(&self.recovery_state) {
            gauge.set(i64::from(*s == state));
        }
    }

    fn set_store(&self, st: &StoreStat) {
        self.objects.set(gauge_value(st.objects));
        self.capacity.set(gauge_value(st.capacity));
        self.free.set(gauge_value(st.free));
        self.used.set(gauge_value(st.used));
    }

    /// Keeps the store's gauges current, for the rest of the process. They are the figures
    /// `stat` answers (`sheepctl node info`), read on a disk thread: a `statvfs`, and a scan
    /// of the live objects' directory with a `stat` per file (the node keeps no count), so
    /// once a second at most, and less often when a scan takes longer than a tenth of that.
    /// A failed disk is touched no more (a read stuck on a hung one is left behind): its
    /// gauges keep their last figures.
    pub async fn refresh(&self, objects: &Arc<ObjectStore>, disk: &DiskHealth) {
        loop {
            let read = async {
                let started = Instant::now();
                let store = objects.clone();
                match blocking(move || store.stat()).await {
                    Ok(st) => self.set_store(&st),
                    // The probe decides whether the disk failed (see `disk_watch`).
                    Err(e) => debug!("cannot read the store's figures for the metrics: {e}"),
                }
                tokio::time::sleep(STORE_EVERY.max(started.elapsed() * STORE_DUTY)).await;
            };
            tokio::select! {
                biased;
                _ = disk.failed() => break,
                () = read => {}
            }
        }
        self.disk_failed.set(1);
    }
}

/// Gauges are i64: a u64 past it (never, for bytes or objects) shows as the largest.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_core::object::{ObjectId, VdiId};
    use sheep_rpc::error::refusal;

    fn lines(registry: &Registry) -> Vec<String> {
        sheep_metrics::encode(registry).lines().map(str::to_string).collect()
    }

    fn has(registry: &Registry, line: &str) -> bool {
        lines(registry).iter().any(|l| l == line)
    }

    /// The state series say `current` is 1 and every other state 0.
    fn assert_state(registry: &Registry, current: &str) {
        let got: Vec<String> =
            lines(registry).into_iter().filter(|l| l.starts_with("sheep_storage_recovery_state{")).collect();
        assert_eq!(got.len(), RecoveryState::ALL.len(), "{got:?}");
        for s in RecoveryState::ALL {
            let value = i32::from(s.name() == current);
            let line = format!("sheep_storage_recovery_state{{state=\"{}\"}} {value}", s.name());
            assert!(got.contains(&line), "{line} not in {got:?}");
        }
    }

    #[test]
    fn the_recovery_state_is_one_series_at_1_and_the_others_at_0() {
        let (metrics, registry) = StoreMetrics::new();
        assert_state(&registry, "idle");
        let mut p = Progress { epoch: 3, ..Progress::default() };
        metrics.recovery_changed(&p);
        assert_state(&registry, "listing");
        p.listed = true;
        metrics.recovery_changed(&p);
        assert_state(&registry, "recovering");
        p.hidden_on = vec!["n2".into()];
        metrics.recovery_changed(&p);
        assert_state(&registry, "waiting");
        p.hidden_on.clear();
        let oid = ObjectId::data(VdiId::new(1).unwrap(), 0);
        p.pending.insert(oid, Plan::Wait(vec!["n3".into()]));
        metrics.recovery_changed(&p);
        assert_state(&registry, "waiting");
        p.complete = true;
        metrics.recovery_changed(&p);
        assert_state(&registry, "complete");
        (p.total, p.done) = (7, 2);
        metrics.recovery_changed(&p);
        p.done = 3;
        metrics.recovery_pulled(&p);
        assert!(has(&registry, "sheep_storage_recovery_objects_done 3"));
        assert!(has(&registry, "sheep_storage_recovery_objects_total 7"));
    }

    #[test]
    fn a_refusal_is_labelled_by_its_code_name_and_any_other_failure_internal() {
        assert_eq!(error_code(&refusal(ErrorCode::StaleEpoch, "request of epoch 2")), "staleEpoch");
        assert_eq!(error_code(&refusal(ErrorCode::DiskFailed, "gone")), "diskFailed");
        let relayed = capnp::Error::failed(format!("remote exception: {}", refusal(ErrorCode::NoSpace, "full").extra));
        assert_eq!(error_code(&relayed), "noSpace");
        assert_eq!(error_code(&capnp::Error::failed("message too short".into())), "internal");
    }

    #[tokio::test]
    async fn requests_are_counted_by_op_with_their_bytes_and_failures_by_code() {
        let (metrics, registry) = StoreMetrics::new();
        let oid = ObjectId::data(VdiId::new(9).unwrap(), 0);
        metrics.count(Op::Read, async { Ok(Served::object(oid, 4096)) }).await.unwrap();
        metrics.count(Op::CreateAndWrite, async { Ok(Served::object(oid, 512)) }).await.unwrap();
        metrics.count(Op::List, async { Ok(Served::node()) }).await.unwrap();
        let refused = metrics.count(Op::CreateAndWrite, async { Err(refusal(ErrorCode::Fenced, "old token")) }).await;
        assert_eq!(error_code(&refused.unwrap_err()), "fenced");
        assert!(has(&registry, "sheep_storage_ops_total{op=\"read\"} 1"));
        assert!(has(&registry, "sheep_storage_data_bytes_total{op=\"read\"} 4096"));
        assert!(has(&registry, "sheep_storage_ops_total{op=\"createAndWrite\"} 2"));
        assert!(has(&registry, "sheep_storage_data_bytes_total{op=\"createAndWrite\"} 512"));
        assert!(has(&registry, "sheep_storage_errors_total{op=\"createAndWrite\",code=\"fenced\"} 1"));
        // The same requests for `ioStats`: the VDI's read and write, the refused write in
        // the totals only (it named no VDI it served), the listing nowhere.
        let io = metrics.io(7);
        assert_eq!((io.total.read.ops, io.total.write.ops, io.total.write.errors), (1, 2, 1));
        assert_eq!(io.vdis.len(), 1);
        let (vid, rw) = io.vdis[0];
        assert_eq!((vid, rw.read.bytes, rw.write.ops, rw.write.bytes), (oid.vid(), 4096, 1, 512));
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op as usize, i, "{op:?} counts in its own series");
            let line = format!("sheep_storage_op_duration_seconds_count{{op=\"{}\"}}", op.name());
            assert!(lines(&registry).iter().any(|l| l.starts_with(&line)), "every op is listed from the start: {line}");
        }
    }

    #[test]
    fn the_store_and_epoch_show_as_gauges() {
        let (metrics, registry) = StoreMetrics::new();
        metrics.set_store(&StoreStat { capacity: 1 << 30, used: 8192, free: 1 << 29, objects: 3, filesystem: 1 });
        metrics.set_epoch(5);
        for line in [
            "sheep_storage_objects 3",
            "sheep_storage_disk_capacity_bytes 1073741824",
            "sheep_storage_disk_free_bytes 536870912",
            "sheep_storage_disk_used_bytes 8192",
            "sheep_storage_disk_failed 0",
            "sheep_storage_epoch 5",
        ] {
            assert!(has(&registry, line), "{line} not in {:?}", lines(&registry));
        }
        assert_eq!(gauge_value(u64::MAX), i64::MAX);
    }

    #[tokio::test]
    async fn the_store_is_read_until_its_disk_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = Arc::new(ObjectStore::open(tmp.path()).unwrap());
        for idx in 0..2 {
            let oid = ObjectId::data(VdiId::new(1).unwrap(), idx);
            objects.create_and_write(oid, 4 << 20, None, 0, &[7; 4096], false, 1).unwrap();
        }
        let (metrics, registry) = StoreMetrics::new();
        let disk = DiskHealth::new();
        let watched = async {
            while !has(&registry, "sheep_storage_objects 2") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            disk.fail("test");
        };
        let (_, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(metrics.refresh(&objects, &disk), watched)
        })
        .await
        .expect("the store's figures are read, and the loop ends once the disk fails");
        assert!(has(&registry, "sheep_storage_disk_failed 1"));
        let capacity = lines(&registry).into_iter().find(|l| l.starts_with("sheep_storage_disk_capacity_bytes "));
        assert!(capacity.is_some_and(|l| l != "sheep_storage_disk_capacity_bytes 0"));
    }
}
