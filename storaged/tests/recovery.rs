//! Recovery and repair across real processes: one groupd, three storaged on loopback.
//! Needs the groupd binary of the same build (`cargo build -p groupd`).

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use sheep_client::group::{GroupClient, Options};
use sheep_core::epoch::EpochRecord;
use sheep_core::object::ObjectId;
use sheep_core::placement::PlacementRing;

const OBJ: u32 = 1 << 20;
const COPIES: usize = 2;
const TIMEOUT: Duration = Duration::from_secs(60);

struct Cluster {
    dir: tempfile::TempDir,
    net: [u8; 2],
    _groupd: Proc,
    group: Rc<GroupClient>,
    nodes: Vec<Proc>,
    addrs: Vec<String>,
}

fn net() -> [u8; 2] {
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let h = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    [(h >> 40) as u8 % 200 + 20, (h >> 48) as u8 % 250 + 1]
}

impl Cluster {
    fn new() -> Cluster {
        let groupd = bin("groupd");
        assert!(groupd.exists(), "{} is missing: run `cargo build -p groupd` first", groupd.display());
        let dir = tempfile::Builder::new().prefix("storaged-recovery-").tempdir().unwrap();
        let net = net();
        let ip = format!("127.{}.{}.1", net[0], net[1]);
        let gaddr = format!("{ip}:{}", free_port(&ip));
        let args = vec![
            "--listen".to_string(),
            gaddr.clone(),
            "--data".into(),
            dir.path().join("groupd").display().to_string(),
            "--lease-ms".into(),
            "1500".into(),
        ];
        let g = Proc::start("groupd", args, dir.path().join("groupd.log"));
        let opts = Options { wait_for_groupd: true, retry_for: Duration::from_secs(20), ..Options::default() };
        let group = Rc::new(GroupClient::new(vec![gaddr], opts).unwrap());
        Cluster { dir, net, _groupd: g, group, nodes: Vec::new(), addrs: Vec::new() }
    }

    fn add_node(&mut self) -> usize {
        let n = self.nodes.len() + 2;
        let ip = format!("127.{}.{}.{n}", self.net[0], self.net[1]);
        let addr = format!("{ip}:{}", free_port(&ip));
        let args = vec![
            "--listen".to_string(),
            addr.clone(),
            "--data".into(),
            self.data(n - 2).display().to_string(),
            "--groupd".into(),
            self.group.addrs().join(","),
            "--zone".into(),
            n.to_string(),
        ];
        self.nodes.push(Proc::start("storaged", args, self.dir.path().join(format!("storaged{}.log", n - 2))));
        self.addrs.push(addr);
        self.nodes.len() - 1
    }

    fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("storaged{i}"))
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(|p| format!("--- {:?}\n{}\n", p.args.get(1), p.log_tail())).collect()
    }

    /// Waits for an epoch whose nodes are exactly those of `live` (indexes).
    async fn wait_epoch(&self, live: &[usize]) -> EpochRecord {
        let mut want: Vec<String> = live.iter().map(|&i| self.addrs[i].clone()).collect();
        want.sort();
        wait(&format!("an epoch of {want:?}"), || async {
            let info = self.group.info().await.map_err(|e| e.to_string())?;
            let last = info.epochs.last().cloned().ok_or("no epoch")?;
            let mut ids: Vec<String> = last.nodes.iter().map(|n| n.id.clone()).collect();
            ids.sort();
            if ids == want {
                Ok(last)
            } else {
                Err(format!("{ids:?}"))
            }
        })
        .await
    }

    /// Waits until every node in `live` reports its recovery to `epoch` complete.
    async fn wait_recovered(&self, live: &[usize], epoch: u32) {
        for &i in live {
            let addr = self.addrs[i].clone();
            wait(&format!("{addr} to recover epoch {epoch}"), || async {
                let conn = sheep_client::rpc::connect::<sheep_rpc::storaged_capnp::storaged::Client>(
                    &addr,
                    Duration::from_secs(1),
                )
                .await?;
                let st = recovery(&conn.client()).await.map_err(|e| e.to_string())?;
                if st.0 == epoch && st.3 && st.4 {
                    Ok(())
                } else {
                    Err(format!("{st:?}"))
                }
            })
            .await;
        }
    }
}

async fn wait<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}; last: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which nodes (indexes into `addrs`) must hold `oid` in `rec`.
fn owners(rec: &EpochRecord, addrs: &[String], oid: u64) -> Vec<usize> {
    let ring = PlacementRing::new(&rec.nodes);
    let oid = ObjectId::from_raw(oid).unwrap();
    ring.replicas(oid, COPIES).iter().map(|n| addrs.iter().position(|a| *a == n.id).unwrap()).collect()
}

/// (live, stale) objects of every node in `live`.
async fn lists(c: &Cluster, live: &[usize], epoch: u32) -> BTreeMap<usize, (Vec<u64>, Vec<u64>)> {
    let mut out = BTreeMap::new();
    for &i in live {
        let conn = connect(&c.addrs[i]).await;
        let (all, stale) = list(&conn.client(), epoch).await.unwrap();
        let live_only = all.into_iter().filter(|o| !stale.contains(o)).collect();
        out.insert(i, (live_only, stale));
    }
    out
}

/// Every object is live exactly on its owners in `rec`, with the expected contents, and
/// (once .stale is purged) nowhere else.
async fn check_placement(c: &Cluster, rec: &EpochRecord, live: &[usize], model: &BTreeMap<u64, Vec<u8>>) {
    let held = lists(c, live, rec.epoch).await;
    for (&oid, want) in model {
        let mut own = owners(rec, &c.addrs, oid);
        own.sort();
        let mut have: Vec<usize> = held.iter().filter(|(_, (l, _))| l.contains(&oid)).map(|(&i, _)| i).collect();
        have.sort();
        assert_eq!(have, own, "object {oid:016x}: live copies on {have:?}, owners {own:?}\n{}", c.logs());
        for &i in &own {
            let conn = connect(&c.addrs[i]).await;
            let got = read(&conn.client(), rec.epoch, oid, 0, OBJ).await.unwrap();
            assert!(got == *want, "object {oid:016x} on node {i} has other contents");
        }
    }
}

#[test]
fn recovery_moves_objects_purges_stale_and_quarantines_a_returning_node() {
    let mut c = Cluster::new();
    let (rt, local) = runtime();
    local.block_on(&rt, async {
        c.group.format(COPIES as u8, 20, 1, false).await.unwrap();
        c.add_node();
        c.add_node();
        let e1 = c.wait_epoch(&[0, 1]).await;
        c.wait_recovered(&[0, 1], e1.epoch).await;
        let vdi = c.group.vdi_create("disk", 64 << 20, 0).await.unwrap();
        let gone = c.group.vdi_create("gone", 64 << 20, 0).await.unwrap();

        // 2 nodes, 2 copies: every object on both.
        let mut model = BTreeMap::new();
        for idx in 0..24 {
            let o = oid(vdi.vid.get(), idx);
            let data = pattern(OBJ as usize, idx as u8);
            model.insert(o, data);
        }
        for i in 0..2 {
            let conn = connect(&c.addrs[i]).await;
            for (&o, d) in &model {
                create(&conn.client(), e1.epoch, o, OBJ, 0, 0, d).await.unwrap();
            }
            create(&conn.client(), e1.epoch, oid(gone.vid.get(), 0), OBJ, 0, 0, b"gone").await.unwrap();
        }

        // A third node: it pulls what it owns, the others give up what they no longer own,
        // and .stale is purged once all three reported.
        c.add_node();
        let e2 = c.wait_epoch(&[0, 1, 2]).await;
        c.wait_recovered(&[0, 1, 2], e2.epoch).await;
        check_placement(&c, &e2, &[0, 1, 2], &model).await;
        wait("stale copies to be purged", || async {
            let held = lists(&c, &[0, 1, 2], e2.epoch).await;
            let stale: usize = held.values().map(|(_, s)| s.len()).sum();
            if stale == 0 {
                Ok(())
            } else {
                Err(format!("{stale} stale"))
            }
        })
        .await;
        let n2 = lists(&c, &[2], e2.epoch).await[&2].0.len();
        assert!(n2 > 0 && n2 < model.len(), "the new node got {n2} of {} objects", model.len());

        // A read of the old epoch is refused now.
        let conn = connect(&c.addrs[0]).await;
        let r = read(&conn.client(), e1.epoch, *model.keys().next().unwrap(), 0, 1).await;
        assert_eq!(code_of(r), "staleEpoch");
        let r = zero(&conn.client(), e1.epoch, *model.keys().next().unwrap(), 0, 1, false).await;
        assert_eq!(code_of(r), "staleEpoch", "zero follows the epoch rule too");
        drop(conn);

        // Node 2 dies: the other two hold everything again. Meanwhile one object changes
        // and a VDI is deleted.
        c.nodes[2].kill();
        let e3 = c.wait_epoch(&[0, 1]).await;
        c.wait_recovered(&[0, 1], e3.epoch).await;
        check_placement(&c, &e3, &[0, 1], &model).await;
        let (&changed, _) = model.iter().find(|(&o, _)| owners(&e2, &c.addrs, o).contains(&2)).unwrap();
        let new = pattern(OBJ as usize, 200);
        for i in 0..2 {
            let conn = connect(&c.addrs[i]).await;
            write(&conn.client(), e3.epoch, changed, 0, &new, true).await.unwrap();
        }
        model.insert(changed, new);
        c.group.vdi_delete("gone").await.unwrap();

        // It comes back: its old copies are quarantined, never served; it pulls the
        // current ones, and drops the deleted VDI's objects.
        c.nodes[2].restart();
        let e4 = c.wait_epoch(&[0, 1, 2]).await;
        c.wait_recovered(&[0, 1, 2], e4.epoch).await;
        check_placement(&c, &e4, &[0, 1, 2], &model).await;
        wait("no object of the deleted VDI anywhere", || async {
            let held = lists(&c, &[0, 1, 2], e4.epoch).await;
            let left: Vec<u64> = held
                .values()
                .flat_map(|(l, s)| l.iter().chain(s))
                .copied()
                .filter(|&o| (o >> 32) as u32 == gone.vid.get())
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:x?}"))
            }
        })
        .await;
        if std::env::var_os("SHOW_LOGS").is_some() {
            eprintln!("{}", c.logs());
        }
    });
}

#[test]
fn a_corrupt_copy_is_refused_then_repaired_from_a_replica() {
    let mut c = Cluster::new();
    let (rt, local) = runtime();
    local.block_on(&rt, async {
        c.group.format(COPIES as u8, 20, 1, false).await.unwrap();
        c.add_node();
        c.add_node();
        let e = c.wait_epoch(&[0, 1]).await;
        c.wait_recovered(&[0, 1], e.epoch).await;
        let vdi = c.group.vdi_create("disk", 64 << 20, 0).await.unwrap();
        let o = oid(vdi.vid.get(), 7);
        let data = pattern(OBJ as usize, 9);
        for i in 0..2 {
            let conn = connect(&c.addrs[i]).await;
            create(&conn.client(), e.epoch, o, OBJ, 0, 0, &data).await.unwrap();
        }
        let path = c.data(0).join(format!("obj/{o:016x}"));
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let at = 4096 + 100_000;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x80], at).unwrap();
        drop(f);

        let conn = connect(&c.addrs[0]).await;
        let r = read(&conn.client(), e.epoch, o, 98_304, 4096).await;
        assert_eq!(code_of(r), "corrupt");
        wait("the copy to be repaired", || async {
            match read(&conn.client(), e.epoch, o, 0, OBJ).await {
                Ok(got) if got == data => Ok(()),
                Ok(_) => Err("other contents".to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    });
}

/// Writes carry the writer's VDI lock token: once the lock moved (a forced unlock, then a
/// new holder), the old holder's writes are refused with `fenced`, the new one's accepted.
#[test]
fn writes_with_a_stale_lock_token_are_fenced() {
    let mut c = Cluster::new();
    let (rt, local) = runtime();
    local.block_on(&rt, async {
        c.group.format(1, 20, 1, false).await.unwrap();
        c.add_node();
        let e = c.wait_epoch(&[0]).await;
        c.wait_recovered(&[0], e.epoch).await;
        let vdi = c.group.vdi_create("fenced", 64 << 20, 0).await.unwrap();
        let o = oid(vdi.vid.get(), 0);
        let conn = connect(&c.addrs[0]).await;
        let n = conn.client();
        let kind = |name: &str| sheep_core::group::SessionKind::Client { name: name.into() };

        // Holder A.
        let (a, _) = c.group.open_session(&kind("a"), "").await.unwrap();
        let t1 = c.group.lock(a, "fenced").await.unwrap().lock.token;
        create_fenced(&n, e.epoch, o, OBJ, b"a", t1).await.unwrap();
        write_fenced(&n, e.epoch, o, 0, b"a", t1).await.unwrap();
        // A writer without the lock is refused while the VDI is locked.
        assert_eq!(code_of(write_fenced(&n, e.epoch, o, 0, b"x", 0).await), "fenced");
        assert_eq!(code_of(zero_fenced(&n, e.epoch, o, 0, 1, 0).await), "fenced");

        // A forced unlock, then holder B.
        c.group.unlock(0, "fenced", true).await.unwrap();
        let (b, _) = c.group.open_session(&kind("b"), "").await.unwrap();
        let t2 = c.group.lock(b, "fenced").await.unwrap().lock.token;
        assert!(t2 > t1);
        write_fenced(&n, e.epoch, o, 4096, b"b", t2).await.unwrap();
        // A's writes are refused from now on, whatever the node's event stream has seen.
        assert_eq!(code_of(write_fenced(&n, e.epoch, o, 0, b"x", t1).await), "fenced");
        assert_eq!(code_of(create_fenced(&n, e.epoch, o, OBJ, b"x", t1).await), "fenced");
        assert_eq!(code_of(zero_fenced(&n, e.epoch, o, 0, 1, t1).await), "fenced");
        assert_eq!(read(&n, e.epoch, o, 0, 1).await.unwrap(), b"a");
        assert_eq!(read(&n, e.epoch, o, 4096, 1).await.unwrap(), b"b");

        // B's lock ends (its lease runs out, nobody keeps it alive): a writer without a
        // lock may write again once the node saw it; A stays fenced.
        wait("B's lock to be released on the node", || async {
            write_fenced(&n, e.epoch, o, 8192, b"z", 0).await.map_err(|e| e.to_string())
        })
        .await;
        assert_eq!(code_of(write_fenced(&n, e.epoch, o, 0, b"x", t1).await), "fenced");
        // Other VDIs are not concerned.
        let other = c.group.vdi_create("other", 64 << 20, 0).await.unwrap();
        create_fenced(&n, e.epoch, oid(other.vid.get(), 0), OBJ, b"o", 0).await.unwrap();
    });
}

#[test]
fn a_quick_restart_serves_only_pulled_data() {
    let mut c = Cluster::new();
    let (rt, local) = runtime();
    local.block_on(&rt, async {
        c.group.format(COPIES as u8, 20, 1, false).await.unwrap();
        c.add_node();
        c.add_node();
        let e = c.wait_epoch(&[0, 1]).await;
        c.wait_recovered(&[0, 1], e.epoch).await;
        let vdi = c.group.vdi_create("disk", 64 << 20, 0).await.unwrap();
        let mut model = BTreeMap::new();
        for idx in 0..6 {
            model.insert(oid(vdi.vid.get(), idx), pattern(OBJ as usize, idx as u8));
        }
        for i in 0..2 {
            let conn = connect(&c.addrs[i]).await;
            for (&o, d) in &model {
                create(&conn.client(), e.epoch, o, OBJ, 0, 0, d).await.unwrap();
            }
        }
        // Node 1 restarts at once (usually within its lease: no new epoch). What it had is
        // quarantined; whatever a client asks for is pulled from node 0 first.
        c.nodes[1].kill();
        let changed = *model.keys().next().unwrap();
        let conn0 = connect(&c.addrs[0]).await;
        write(&conn0.client(), e.epoch, changed, 0, b"written while node 1 was down", false).await.unwrap();
        model.get_mut(&changed).unwrap()[..29].copy_from_slice(b"written while node 1 was down");
        c.nodes[1].restart();
        let e2 = c.wait_epoch(&[0, 1]).await;
        let conn1 = connect(&c.addrs[1]).await;
        // The first answer it gives is already the current data.
        let got = wait("node 1 to serve the object", || async {
            read(&conn1.client(), e2.epoch, changed, 0, OBJ).await.map_err(|e| e.to_string())
        })
        .await;
        assert!(got == model[&changed], "node 1 served its old copy");
        c.wait_recovered(&[0, 1], e2.epoch).await;
        check_placement(&c, &e2, &[0, 1], &model).await;
    });
}

#[test]
fn a_forced_format_removes_the_old_clusters_objects() {
    let mut c = Cluster::new();
    let (rt, local) = runtime();
    local.block_on(&rt, async {
        let first = c.group.format(1, 20, 1, false).await.unwrap();
        c.add_node();
        let e = c.wait_epoch(&[0]).await;
        c.wait_recovered(&[0], e.epoch).await;
        let vdi = c.group.vdi_create("disk", 64 << 20, 0).await.unwrap();
        let conn = connect(&c.addrs[0]).await;
        create(&conn.client(), e.epoch, oid(vdi.vid.get(), 0), OBJ, 0, 0, b"old cluster").await.unwrap();
        let second = c.group.format(1, 20, 1, true).await.unwrap();
        assert_ne!(first.cluster_id, second.cluster_id);
        wait("the old objects to go", || async {
            let status = conn.client().status_request().send().promise.await.map_err(|e| e.to_string())?;
            let id = status
                .get()
                .map_err(|e| e.to_string())?
                .get_status()
                .map_err(|e| e.to_string())?
                .get_cluster_id()
                .map_err(|e| e.to_string())?
                .to_string()
                .map_err(|e| e.to_string())?;
            let epoch = epoch_of(&conn.client()).await.map_err(|e| e.to_string())?;
            let (oids, _) = list(&conn.client(), epoch).await.map_err(|e| e.to_string())?;
            if id == second.cluster_id && oids.is_empty() {
                Ok(())
            } else {
                Err(format!("cluster {id}, {oids:x?}"))
            }
        })
        .await;
    });
}

#[test]
fn a_cluster_shutdown_and_restart_keeps_every_object() {
    let mut c = Cluster::new();
    let (rt, local) = runtime();
    local.block_on(&rt, async {
        c.group.format(COPIES as u8, 20, 1, false).await.unwrap();
        c.add_node();
        c.add_node();
        let e = c.wait_epoch(&[0, 1]).await;
        c.wait_recovered(&[0, 1], e.epoch).await;
        let vdi = c.group.vdi_create("disk", 64 << 20, 0).await.unwrap();
        let mut model = BTreeMap::new();
        for idx in 0..5 {
            model.insert(oid(vdi.vid.get(), idx), pattern(OBJ as usize, 50 + idx as u8));
        }
        for i in 0..2 {
            let conn = connect(&c.addrs[i]).await;
            for (&o, d) in &model {
                create(&conn.client(), e.epoch, o, OBJ, 0, 0, d).await.unwrap();
            }
        }
        c.group.shutdown().await.unwrap();
        for n in &mut c.nodes {
            assert_eq!(n.wait_exit(Duration::from_secs(20)), Some(0));
        }
        for n in &mut c.nodes {
            n.restart();
        }
        // Same nodes, same epoch: every copy was quarantined at start and is pulled back,
        // and the stale copies it replaces go.
        let e2 = c.wait_epoch(&[0, 1]).await;
        c.wait_recovered(&[0, 1], e2.epoch).await;
        check_placement(&c, &e2, &[0, 1], &model).await;
        let held = lists(&c, &[0, 1], e2.epoch).await;
        assert!(held.values().all(|(_, stale)| stale.is_empty()), "{held:?}");
        for i in 0..2 {
            assert_eq!(std::fs::read_dir(c.data(i).join(".stale")).unwrap().count(), 0);
        }
    });
}
