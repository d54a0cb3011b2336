//! A model test in the spirit of Ceph's `rbd_fsx`: seeded random sequences of operations on
//! the VDIs of a real 3-node cluster (1 MiB objects, 3 copies), driven through the VDI engine
//! from this process, every read compared byte for byte with an in-memory model.
//!
//! Operations: writes (unaligned, crossing object boundaries, 1 B .. 256 KiB), reads, zeroing,
//! flushes, snapshots (under the VDI's lock, held by the test's own session), reads of
//! snapshots, clones (which join the VDIs written to), rollbacks, resizes (growing; shrinking
//! must be refused), deletes of snapshots and of whole VDIs (half of them with the reclaim of
//! what no live VDI reads any more: the rest must still read what the model says), creation
//! of new VDIs. At the end
//! every VDI and snapshot is read in full, then everything is deleted and no object may be
//! left on any node.
//!
//! CI runs seeds 1, 2 and 3 (one test each). Longer runs:
//!   `SHEEP_MODEL_SEEDS=7,8,9` (a list: `5,` is seed 5 alone) or `SHEEP_MODEL_SEEDS=20` (a
//!   count: 20 seeds from a clock-derived start, each printed), `SHEEP_MODEL_OPS=5000` (ops
//!   per seed), run by the ignored test `seeds_from_env`:
//!   `SHEEP_MODEL_SEEDS=20 cargo test -p sheep-tests --test vdi_model -- --ignored --nocapture`;
//!   `SHEEP_MODEL_HISTORY=100`: how many of the last ops a failure shows (20).

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use sheep_client::group::attach_lock::AttachLock as HeldLock;
use sheep_client::group::{GroupClient, Options};
use sheep_client::vdi::{lifecycle, reclaim, CallLimits, Cluster as VdiCluster, Vdi, VdiOptions};
use sheep_client::ErrorCode;
use sheep_core::group::ClusterStatus;
use sheep_core::namespace::VdiEntry;
use sheep_tests::rand::Rng;
use sheep_tests::{wait_until, Cluster};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// The test cluster's object size.
const OBJ: usize = MIB;
const MAX_SIZE: usize = 24 * MIB;
const MAX_LIVE: usize = 4;
const MAX_SNAPS: usize = 6;
const DEFAULT_OPS: usize = 800;
const HISTORY: usize = 20;

// ---- the CI seeds and the long runs ----

#[test]
fn seed_1() {
    ci_seed(1);
}

#[test]
fn seed_2() {
    ci_seed(2);
}

#[test]
fn seed_3() {
    ci_seed(3);
}

/// Longer runs: the seeds of `SHEEP_MODEL_SEEDS`, `SHEEP_MODEL_OPS` ops each.
#[test]
#[ignore = "longer runs: SHEEP_MODEL_SEEDS=20 cargo test -p sheep-tests --test vdi_model -- --ignored --nocapture"]
fn seeds_from_env() {
    let seeds = env_seeds().expect("set SHEEP_MODEL_SEEDS (a comma list of seeds, or a count)");
    eprintln!("vdi_model: seeds {seeds:?}, {} ops each", env_ops());
    for seed in seeds {
        run(seed, env_ops());
    }
}

/// A seed CI runs, with the default op count (or `SHEEP_MODEL_OPS`).
fn ci_seed(seed: u64) {
    run(seed, env_ops());
}

fn env_ops() -> usize {
    match std::env::var("SHEEP_MODEL_OPS") {
        Ok(s) => s.trim().parse().unwrap_or_else(|e| panic!("SHEEP_MODEL_OPS={s:?}: {e}")),
        Err(_) => DEFAULT_OPS,
    }
}

/// `SHEEP_MODEL_SEEDS`: a comma list of seeds, or a count of seeds from a clock-derived start.
fn env_seeds() -> Option<Vec<u64>> {
    let s = std::env::var("SHEEP_MODEL_SEEDS").ok()?;
    let s = s.trim();
    if s.contains(',') {
        return Some(
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| x.parse().unwrap_or_else(|e| panic!("SHEEP_MODEL_SEEDS: {x:?}: {e}")))
                .collect(),
        );
    }
    let n: u64 = s.parse().unwrap_or_else(|e| panic!("SHEEP_MODEL_SEEDS={s:?}: {e}"));
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
        % 1_000_000
        * 1000;
    Some((start..start + n).collect())
}

// ---- the cluster ----

/// One groupd, 3 storaged, 3 copies of 1 MiB objects. Nothing here is killed: a long lease
/// keeps a CPU-starved test (CI runs two at once on two cores) from losing its locks or its
/// nodes' sessions to a late keepalive, which the model would take for a bug.
fn cluster() -> Cluster {
    let mut c = Cluster::new();
    c.lease_ms = 15_000;
    c.add_groupd();
    c.wait_group(0, 1, 1);
    c.ctl_ok(&["cluster", "format", "--copies", "3", "--object-size", "1M"]);
    for _ in 0..3 {
        c.add_storaged();
    }
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    c
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn run(seed: u64, ops: usize) {
    eprintln!("vdi_model: seed {seed}, {ops} ops");
    let started = Instant::now();
    let c = cluster();
    let counts = block_on(async {
        let opts = Options { wait_for_groupd: true, retry_for: Duration::from_secs(20), ..Options::default() };
        let group = Rc::new(GroupClient::new(c.groupd_addrs.clone(), opts).unwrap());
        let cluster = VdiCluster::connect(group.clone(), CallLimits::default()).await.unwrap();
        let mut r = Run {
            ctx: Ctx { seed, ops, op: 0, history: VecDeque::new() },
            rng: Rng::new(seed),
            group,
            cluster,
            live: Vec::new(),
            snaps: Vec::new(),
            next_id: 0,
            counts: BTreeMap::new(),
        };
        let size = 8 * MIB + 512 * r.rng.below((8 * MIB / 512) as u64) as usize;
        r.create(size).await;
        while r.ctx.op < ops {
            r.ctx.op += 1;
            r.step().await;
        }
        r.ctx.op = ops + 1;
        r.ctx.log("final check".into());
        r.check_all().await;
        r.delete_all().await;
        r.counts
    });
    // Nothing is left on any node (the inode objects and retired snapshots' objects go too).
    wait_until(Duration::from_secs(20), &format!("seed {seed}: every object removed from every node"), || {
        let left: Vec<(usize, String)> =
            (0..c.storageds.len()).flat_map(|i| c.objects_on(i).into_iter().map(move |o| (i, o))).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} objects left, e.g. {:?}", left.len(), &left[..left.len().min(8)]))
        }
    });
    eprintln!(
        "vdi_model: seed {seed}, {ops} ops: ok in {:.1} s; ops done: {counts:?}",
        started.elapsed().as_secs_f64()
    );
}

// ---- the model ----

/// What a failure message needs: the seed, the op, the last ops.
struct Ctx {
    seed: u64,
    ops: usize,
    op: usize,
    history: VecDeque<String>,
}

impl Ctx {
    fn log(&mut self, what: String) {
        let keep = std::env::var("SHEEP_MODEL_HISTORY").ok().and_then(|s| s.parse().ok()).unwrap_or(HISTORY);
        while self.history.len() >= keep.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(format!("#{} {what}", self.op));
    }

    fn fail(&self, msg: &str) -> ! {
        let history: Vec<&str> = self.history.iter().map(String::as_str).collect();
        panic!(
            "vdi_model seed {} ({} ops): op {}: {msg}\nreplay: SHEEP_MODEL_SEEDS={}, SHEEP_MODEL_OPS={}\nlast ops:\n \
                 {}",
            self.seed,
            self.ops,
            self.op,
            self.seed,
            self.ops,
            history.join("\n  ")
        );
    }

    fn ok<T, E: std::fmt::Display>(&self, r: Result<T, E>, what: &str) -> T {
        r.unwrap_or_else(|e| self.fail(&format!("{what}: {e}")))
    }

    /// `got` read at `offset` of `what` against the model's `want`.
    fn compare(&self, what: &str, offset: usize, got: &[u8], want: &[u8]) {
        if let Some(i) = first_difference(got, want) {
            let at = offset + i;
            self.fail(&format!(
                "{what}: read [{offset}, +{}) differs first at offset {at} (object {}, +{}): got {:?}, model {:?}",
                want.len(),
                at / OBJ,
                at % OBJ,
                got.get(i),
                want.get(i)
            ));
        }
    }
}

/// A working VDI the test writes to, with its lock and its model.
struct Live {
    name: String,
    vdi: Vdi,
    lock: HeldLock,
    model: Vec<u8>,
}

/// One request of a batch.
enum Kind {
    Write(Vec<u8>),
    Zero,
    Read,
}

/// A live snapshot and what it holds.
struct Snap {
    entry: VdiEntry,
    data: Vec<u8>,
}

impl Snap {
    fn label(&self) -> String {
        self.entry.label()
    }
}

struct Run {
    ctx: Ctx,
    rng: Rng,
    group: Rc<GroupClient>,
    cluster: Rc<VdiCluster>,
    live: Vec<Live>,
    snaps: Vec<Snap>,
    next_id: usize,
    counts: BTreeMap<&'static str, usize>,
}

impl Run {
    fn id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id
    }

    fn count(&mut self, op: &'static str) {
        *self.counts.entry(op).or_default() += 1;
    }

    /// A length for a write: 1 B .. 256 KiB, often small, sometimes 4 KiB multiples.
    fn write_len(&mut self, size: usize) -> usize {
        let r = &mut self.rng;
        let len = match r.below(10) {
            0..=2 => 1 + r.below(512) as usize,
            3..=5 => 1 + r.below(64 * KIB as u64) as usize,
            6..=7 => 4 * KIB * (1 + r.below(64) as usize),
            _ => 1 + r.below(256 * KIB as u64) as usize,
        };
        len.min(size)
    }

    /// A length for a read or a zeroing: up to 3 objects.
    fn long_len(&mut self, size: usize) -> usize {
        let r = &mut self.rng;
        let len = match r.below(6) {
            0 => 1 + r.below(4 * KIB as u64) as usize,
            1 => OBJ * (1 + r.below(2) as usize),
            2 => 1 + r.below(256 * KIB as u64) as usize,
            _ => 1 + r.below(3 * OBJ as u64) as usize,
        };
        len.min(size)
    }

    /// An offset for `len` bytes in `size`: often crossing an object boundary, sometimes
    /// 4 KiB aligned or object aligned, sometimes at the very end.
    fn offset(&mut self, size: usize, len: usize) -> usize {
        let last = size - len;
        let r = &mut self.rng;
        let off = match r.below(10) {
            0..=2 if len >= 2 && size > OBJ => {
                // off < boundary < off + len
                let boundaries = (size - 1) / OBJ;
                let b = OBJ * (1 + r.below(boundaries as u64) as usize);
                b - 1 - r.below((len - 1).min(b) as u64) as usize
            }
            3..=4 => r.below((last / (4 * KIB) + 1) as u64) as usize * 4 * KIB,
            5 => r.below((last / OBJ + 1) as u64) as usize * OBJ,
            6 => last,
            _ => r.below(last as u64 + 1) as usize,
        };
        off.min(last)
    }

    async fn step(&mut self) {
        let live = self.live.len();
        let snaps = self.snaps.len();
        // (weight, op); ops not possible in the current state weigh 0.
        let table: [(u64, &'static str); 14] = [
            (30, "write"),
            (6, "batch"),
            (18, "read"),
            (8, "zero"),
            (3, "flush"),
            (if snaps < MAX_SNAPS { 5 } else { 0 }, "snapshot"),
            (if snaps > 0 { 8 } else { 0 }, "read-snapshot"),
            (if snaps > 0 && live < MAX_LIVE { 3 } else { 0 }, "clone"),
            (if snaps > 0 { 3 } else { 0 }, "rollback"),
            (3, "resize"),
            (if snaps > 0 { 4 } else { 0 }, "delete-snapshot"),
            (if live > 1 { 2 } else { 0 }, "delete-vdi"),
            (if live < MAX_LIVE { 1 } else { 0 }, "create"),
            (1, "check-all"),
        ];
        let total: u64 = table.iter().map(|t| t.0).sum();
        let mut pick = self.rng.below(total);
        let op = table
            .iter()
            .find(|t| {
                if pick < t.0 {
                    true
                } else {
                    pick -= t.0;
                    false
                }
            })
            .unwrap()
            .1;
        let i = self.rng.below(live as u64) as usize;
        match op {
            "write" => self.write(i).await,
            "batch" => self.batch(i).await,
            "read" => self.read(i).await,
            "zero" => self.zero(i).await,
            "flush" => self.flush(i).await,
            "snapshot" => self.snapshot(i).await,
            "read-snapshot" => self.read_snapshot().await,
            "clone" => self.clone_snapshot().await,
            "rollback" => self.rollback(i).await,
            "resize" => self.resize(i).await,
            "delete-snapshot" => self.delete_snapshot().await,
            "delete-vdi" => self.delete_vdi(i).await,
            "create" => {
                let size = 512 * (1 + self.rng.below((16 * MIB / 512) as u64) as usize);
                self.create(size).await
            }
            "check-all" => {
                self.ctx.log("check every VDI and snapshot in full".into());
                self.check_all().await
            }
            _ => unreachable!(),
        }
        self.count(op);
    }

    async fn open(&self, entry: VdiEntry, fence: u64, what: &str) -> Vdi {
        let opts = VdiOptions { fence, ..VdiOptions::default() };
        self.ctx.ok(Vdi::open_entry(self.cluster.clone(), entry, opts).await, &format!("open {what}"))
    }

    async fn lock(&self, name: &str) -> HeldLock {
        self.ctx.ok(
            HeldLock::acquire(self.group.clone(), name, &format!("vdi-model-{name}")).await,
            &format!("lock {name}"),
        )
    }

    async fn create(&mut self, size: usize) {
        let name = format!("v{}", self.id());
        self.ctx.log(format!("create {name} size {size}"));
        let entry = self.ctx.ok(self.group.vdi_create(&name, size as u64, 0).await, "vdi create");
        let lock = self.lock(&name).await;
        let vdi = self.open(entry, lock.token(), &name).await;
        self.live.push(Live { name, vdi, lock, model: vec![0; size] });
    }

    async fn write(&mut self, i: usize) {
        let size = self.live[i].model.len();
        let len = self.write_len(size);
        let off = self.offset(size, len);
        let data = self.rng.bytes(len);
        let fua = self.rng.below(8) == 0;
        let l = &mut self.live[i];
        self.ctx.log(format!("write {} [{off}, +{len}) fua={fua}", l.name));
        self.ctx.ok(l.vdi.write(off as u64, &data, fua).await, "write");
        l.model[off..off + len].copy_from_slice(&data);
    }

    /// 2..8 writes, zeroings and reads of disjoint ranges of one VDI, all in flight at once
    /// (as a block device sends them): first writes to one object, inode creation and
    /// whole-object discards race with each other.
    async fn batch(&mut self, i: usize) {
        let size = self.live[i].model.len();
        let n = 2 + self.rng.below(7) as usize;
        // (offset, len, Some(data): write / None: zero / read)
        let mut ranges: Vec<(usize, usize, Kind)> = Vec::new();
        for _ in 0..3 * n {
            if ranges.len() == n {
                break;
            }
            let kind = match self.rng.below(5) {
                0..=2 => Kind::Write(Vec::new()),
                3 => Kind::Zero,
                _ => Kind::Read,
            };
            let len = if matches!(kind, Kind::Write(_)) { self.write_len(size) } else { self.long_len(size) };
            let off = self.offset(size, len);
            if ranges.iter().any(|&(o, l, _)| off < o + l && o < off + len) {
                continue;
            }
            let kind = match kind {
                Kind::Write(_) => Kind::Write(self.rng.bytes(len)),
                k => k,
            };
            ranges.push((off, len, kind));
        }
        let fua = self.rng.below(8) == 0;
        let l = &mut self.live[i];
        let what: Vec<String> = ranges
            .iter()
            .map(|(o, n, k)| {
                format!(
                    "{} [{o}, +{n})",
                    match k {
                        Kind::Write(_) => "write",
                        Kind::Zero => "zero",
                        Kind::Read => "read",
                    }
                )
            })
            .collect();
        self.ctx.log(format!("batch on {} fua={fua}: {}", l.name, what.join(", ")));
        let vdi = &l.vdi;
        let results = futures::future::join_all(ranges.iter().map(|(off, len, kind)| async move {
            match kind {
                Kind::Write(data) => vdi.write(*off as u64, data, fua).await.map(|()| None),
                Kind::Zero => vdi.write_zeroes(*off as u64, *len as u64, fua).await.map(|()| None),
                Kind::Read => {
                    let mut buf = vec![0xa5; *len];
                    vdi.read(*off as u64, &mut buf).await.map(|()| Some(buf))
                }
            }
        }))
        .await;
        for ((off, len, kind), r) in ranges.into_iter().zip(results) {
            let got = self.ctx.ok(r, &format!("batched op on [{off}, +{len})"));
            match kind {
                Kind::Write(data) => l.model[off..off + len].copy_from_slice(&data),
                Kind::Zero => l.model[off..off + len].fill(0),
                Kind::Read => self.ctx.compare(
                    &format!("{} (batched read)", l.name),
                    off,
                    &got.unwrap(),
                    &l.model[off..off + len],
                ),
            }
        }
    }

    async fn read(&mut self, i: usize) {
        let size = self.live[i].model.len();
        let len = self.long_len(size);
        let off = self.offset(size, len);
        let l = &self.live[i];
        self.ctx.log(format!("read {} [{off}, +{len})", l.name));
        let mut buf = vec![0xa5; len];
        self.ctx.ok(l.vdi.read(off as u64, &mut buf).await, "read");
        self.ctx.compare(&l.name, off, &buf, &l.model[off..off + len]);
    }

    async fn zero(&mut self, i: usize) {
        let size = self.live[i].model.len();
        let len = self.long_len(size);
        let off = self.offset(size, len);
        let fua = self.rng.below(8) == 0;
        let l = &mut self.live[i];
        self.ctx.log(format!("write_zeroes {} [{off}, +{len}) fua={fua}", l.name));
        self.ctx.ok(l.vdi.write_zeroes(off as u64, len as u64, fua).await, "write_zeroes");
        l.model[off..off + len].fill(0);
    }

    async fn flush(&mut self, i: usize) {
        let l = &self.live[i];
        self.ctx.log(format!("flush {}", l.name));
        self.ctx.ok(l.vdi.flush().await, "flush");
    }

    async fn snapshot(&mut self, i: usize) {
        let tag = format!("s{}", self.id());
        let l = &self.live[i];
        self.ctx.log(format!("snapshot {}@{tag}", l.name));
        let (snap, working) =
            self.ctx.ok(lifecycle::snapshot(&l.vdi, &self.group, l.lock.session(), &tag).await, "snapshot");
        if snap.snapshot.as_deref() != Some(tag.as_str()) || snap.vid != l.vdi.vid() || working.parent != Some(snap.vid)
        {
            self.ctx.fail(&format!("snapshot returned {snap:?} and {working:?} for {:?}", l.vdi.entry()));
        }
        let vdi = self.open(working, l.lock.token(), &l.name).await;
        let data = l.model.clone();
        self.live[i].vdi = vdi;
        self.snaps.push(Snap { entry: snap, data });
    }

    /// The snapshot's entry as `vdi_list` has it now.
    async fn listed(&self, s: &Snap) -> VdiEntry {
        let (list, _) = self.ctx.ok(self.group.vdi_list().await, "vdi list");
        let found = list.into_iter().find(|e| e.name == s.entry.name && e.snapshot == s.entry.snapshot);
        let e = found.unwrap_or_else(|| self.ctx.fail(&format!("snapshot {} is not listed", s.label())));
        if e.vid != s.entry.vid || e.size as usize != s.data.len() {
            self.ctx.fail(&format!("snapshot {} listed as {e:?}, was {:?}", s.label(), s.entry));
        }
        e
    }

    async fn read_snapshot(&mut self) {
        let k = self.rng.below(self.snaps.len() as u64) as usize;
        let size = self.snaps[k].data.len();
        let (off, len) = if self.rng.below(4) == 0 {
            (0, size)
        } else {
            let len = self.long_len(size);
            (self.offset(size, len), len)
        };
        let s = &self.snaps[k];
        self.ctx.log(format!("read snapshot {} [{off}, +{len})", s.label()));
        let entry = self.listed(s).await;
        let v = self.open(entry, 0, &s.label()).await;
        let mut buf = vec![0xa5; len];
        self.ctx.ok(v.read(off as u64, &mut buf).await, "read snapshot");
        self.ctx.compare(&s.label(), off, &buf, &s.data[off..off + len]);
    }

    async fn clone_snapshot(&mut self) {
        let k = self.rng.below(self.snaps.len() as u64) as usize;
        let name = format!("c{}", self.id());
        let s = &self.snaps[k];
        let tag = s.entry.snapshot.clone().unwrap();
        self.ctx.log(format!("clone {} -> {name}", s.label()));
        let entry = self.ctx.ok(self.group.vdi_clone(&s.entry.name, &tag, &name).await, "vdi clone");
        if entry.parent != Some(s.entry.vid) || entry.size as usize != s.data.len() {
            self.ctx.fail(&format!("clone of {:?} is {entry:?}", s.entry));
        }
        let model = s.data.clone();
        let lock = self.lock(&name).await;
        let vdi = self.open(entry, lock.token(), &name).await;
        self.live.push(Live { name, vdi, lock, model });
    }

    async fn rollback(&mut self, i: usize) {
        let name = self.live[i].name.clone();
        let mine: Vec<usize> = (0..self.snaps.len()).filter(|&k| self.snaps[k].entry.name == name).collect();
        if mine.is_empty() {
            return self.read(i).await;
        }
        let k = mine[self.rng.below(mine.len() as u64) as usize];
        let tag = self.snaps[k].entry.snapshot.clone().unwrap();
        self.ctx.log(format!("rollback {name} to @{tag}"));
        // Refused while locked.
        match self.group.vdi_rollback(&name, &tag).await {
            Err(e) if e.is_code(ErrorCode::LockHeld) => {}
            other => self.ctx.fail(&format!("rollback of a locked VDI: {other:?}, expected lockHeld")),
        }
        let Live { lock, .. } = self.live.remove(i);
        lock.release().await;
        let entry = self.ctx.ok(self.group.vdi_rollback(&name, &tag).await, "vdi rollback");
        let s = &self.snaps[k];
        if entry.parent != Some(s.entry.vid) || entry.size as usize != s.data.len() {
            self.ctx.fail(&format!("rollback to {:?} gave {entry:?}", s.entry));
        }
        let model = s.data.clone();
        let lock = self.lock(&name).await;
        let vdi = self.open(entry, lock.token(), &name).await;
        self.live.insert(i, Live { name, vdi, lock, model });
    }

    async fn resize(&mut self, i: usize) {
        let size = self.live[i].model.len();
        let name = self.live[i].name.clone();
        if size > 512 && (size >= MAX_SIZE || self.rng.below(4) == 0) {
            let smaller = size - 512 * (1 + self.rng.below((size / 512 - 1) as u64) as usize); // 512 ..= size - 512
            self.ctx.log(format!("shrink {name} {size} -> {smaller} (refused)"));
            match self.group.vdi_resize(&name, smaller as u64).await {
                Err(e) if e.is_code(ErrorCode::BadRequest) => {}
                other => self.ctx.fail(&format!("shrink {size} -> {smaller}: {other:?}, expected badRequest")),
            }
            return;
        }
        let bigger = (size + 512 * (1 + self.rng.below((4 * MIB / 512) as u64) as usize)).min(MAX_SIZE);
        self.ctx.log(format!("resize {name} {size} -> {bigger}"));
        let entry = self.ctx.ok(self.group.vdi_resize(&name, bigger as u64).await, "vdi resize");
        if entry.size as usize != bigger || entry.vid != self.live[i].vdi.vid() {
            self.ctx.fail(&format!("resize gave {entry:?}"));
        }
        let vdi = self.open(entry, self.live[i].lock.token(), &name).await;
        let l = &mut self.live[i];
        l.vdi = vdi;
        l.model.resize(bigger, 0);
    }

    async fn delete_snapshot(&mut self) {
        let k = self.rng.below(self.snaps.len() as u64) as usize;
        let reclaim = self.rng.below(2) == 0;
        let s = self.snaps.remove(k);
        let tag = s.entry.snapshot.clone().unwrap();
        self.ctx.log(format!("delete snapshot {}{}", s.label(), if reclaim { " + reclaim" } else { "" }));
        let delete = || self.group.vdi_delete_snapshot(&s.entry.name, &tag);
        let gone = if reclaim {
            let doomed = |e: &VdiEntry| e.vid == s.entry.vid;
            let (gone, r) = self.ctx.ok(reclaim::deleting(&self.cluster, doomed, delete).await, "delete snapshot");
            self.reclaimed(&s.label(), &r);
            gone
        } else {
            self.ctx.ok(delete().await, "vdi delete snapshot")
        };
        if gone.vid != s.entry.vid {
            self.ctx.fail(&format!("deleting {:?} removed {gone:?}", s.entry));
        }
        if reclaim {
            // The descendants must read as before: all of them, in full.
            self.check_all().await;
        }
    }

    /// A deletion's reclaim must complete: nothing in this test stops it (no faults).
    fn reclaimed(&mut self, what: &str, r: &reclaim::Reclaim) {
        self.ctx.log(format!("  reclaim after deleting {what} removed {} objects", r.removed));
        if let Some(why) = &r.incomplete {
            self.ctx.fail(&format!("the reclaim after deleting {what} stopped: {why}"));
        }
    }

    async fn delete_vdi(&mut self, i: usize) {
        let Live { name, lock, .. } = self.live.remove(i);
        self.ctx.log(format!("delete {name} (and its snapshots)"));
        match self.group.vdi_delete(&name).await {
            Err(e) if e.is_code(ErrorCode::LockHeld) => {}
            other => self.ctx.fail(&format!("delete of a locked VDI: {other:?}, expected lockHeld")),
        }
        lock.release().await;
        let reclaim = self.rng.below(2) == 0;
        let delete = || self.group.vdi_delete(&name);
        let gone = if reclaim {
            let doomed = |e: &VdiEntry| e.name == name;
            let (gone, r) = self.ctx.ok(reclaim::deleting(&self.cluster, doomed, delete).await, "vdi delete");
            self.reclaimed(&name, &r);
            gone
        } else {
            self.ctx.ok(delete().await, "vdi delete")
        };
        if gone.name != name || gone.is_snapshot() {
            self.ctx.fail(&format!("deleting {name} removed {gone:?}"));
        }
        self.snaps.retain(|s| s.entry.name != name);
        if reclaim {
            // Clones of its snapshots must read as before.
            self.check_all().await;
        }
    }

    /// Every live VDI and snapshot read in full and compared; the namespace lists exactly them.
    async fn check_all(&mut self) {
        let (list, _) = self.ctx.ok(self.group.vdi_list().await, "vdi list");
        let mut want: Vec<String> =
            self.live.iter().map(|l| l.name.clone()).chain(self.snaps.iter().map(Snap::label)).collect();
        let mut got: Vec<String> = list.iter().map(VdiEntry::label).collect();
        want.sort();
        got.sort();
        if want != got {
            self.ctx.fail(&format!("vdi list has {got:?}, the model {want:?}"));
        }
        for l in &self.live {
            let mut buf = vec![0xa5; l.model.len()];
            self.ctx.ok(l.vdi.read(0, &mut buf).await, &format!("read {} in full", l.name));
            self.ctx.compare(&format!("{} (in full)", l.name), 0, &buf, &l.model);
            // A fresh open (the table from storage, not this writer's cache) reads the same.
            let v = self.open(l.vdi.entry().clone(), 0, &l.name).await;
            buf.fill(0xa5);
            self.ctx.ok(v.read(0, &mut buf).await, &format!("read {} in full, reopened", l.name));
            self.ctx.compare(&format!("{} (in full, reopened)", l.name), 0, &buf, &l.model);
        }
        for s in &self.snaps {
            let v = self.open(s.entry.clone(), 0, &s.label()).await;
            let mut buf = vec![0xa5; s.data.len()];
            self.ctx.ok(v.read(0, &mut buf).await, &format!("read {} in full", s.label()));
            self.ctx.compare(&format!("{} (in full)", s.label()), 0, &buf, &s.data);
        }
    }

    /// Unlocks and deletes every VDI (and so every snapshot); the namespace ends empty.
    async fn delete_all(&mut self) {
        while let Some(l) = self.live.pop() {
            self.ctx.log(format!("delete {}", l.name));
            l.lock.release().await;
            self.ctx.ok(self.group.vdi_delete(&l.name).await, &format!("vdi delete {}", l.name));
        }
        self.snaps.clear();
        let (list, _) = self.ctx.ok(self.group.vdi_list().await, "vdi list");
        if !list.is_empty() {
            self.ctx.fail(&format!("after deleting everything, vdi list has {list:?}"));
        }
    }
}

/// The shortest form of what seed 3 found (op 46): a VDI whose inode was created before a
/// resize, written past its old end, then snapshotted. The new working VDI reads the
/// snapshot's table; the part beyond the size in the inode's header (written before the
/// resize) must not be cut off.
#[test]
fn a_snapshot_of_a_resized_vdi_keeps_the_objects_past_its_old_end() {
    let c = cluster();
    block_on(async {
        let opts = Options { wait_for_groupd: true, retry_for: Duration::from_secs(20), ..Options::default() };
        let group = Rc::new(GroupClient::new(c.groupd_addrs.clone(), opts).unwrap());
        let cluster = VdiCluster::connect(group.clone(), CallLimits::default()).await.unwrap();
        group.vdi_create("r", 2 * MIB as u64, 0).await.unwrap();
        let lock = HeldLock::acquire(group.clone(), "r", "vdi-model").await.unwrap();
        let opts = VdiOptions { fence: lock.token(), ..VdiOptions::default() };
        let v = Vdi::open(cluster.clone(), "r", opts).await.unwrap();
        v.write(0, b"head", false).await.unwrap(); // creates the inode: its header says 2 objects
        let entry = group.vdi_resize("r", 4 * MIB as u64).await.unwrap();
        let v = Vdi::open_entry(cluster.clone(), entry, opts).await.unwrap();
        let tail = Rng::new(9).bytes(4096);
        v.write(3 * OBJ as u64, &tail, false).await.unwrap(); // object 3, past the header's size
        let (_, working) = lifecycle::snapshot(&v, &group, lock.session(), "t").await.unwrap();
        let w = Vdi::open_entry(cluster.clone(), working, opts).await.unwrap();
        let mut back = vec![0; 4096];
        w.read(3 * OBJ as u64, &mut back).await.unwrap();
        assert!(
            back == tail,
            "object 3 of the working VDI after the snapshot reads {:?}..., not what was written",
            &back[..8]
        );
        lock.release().await;
        group.vdi_delete("r").await.unwrap();
    });
}

/// The first index where `got` and `want` differ (or where one ends), `None` if equal.
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .or_else(|| (got.len() != want.len()).then(|| got.len().min(want.len())))
}
