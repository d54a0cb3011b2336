//! storaged's messages and the `sheep_core::store` values they carry: written by the node
//! that answers, read by every caller (the client's `StorePool`, so storaged's peers too).

use std::collections::HashSet;

use sheep_core::iostat::{IoCounters, NodeIo, ReadWrite, BUCKETS};
use sheep_core::object::{ObjectId, VdiId};
use sheep_core::store::{Listing, RecoveryStatus, StoreStat, StoreStatus, WholeObject};

use super::{read_node, text, write_node};
use crate::error::{refusal, ErrorCode};
use crate::storaged_capnp::storaged::{fetch_results, list_results};
use crate::storaged_capnp::{io_counters, io_stats, read_write, recovery_status, store_stat, store_status};

/// An object id off the wire; one that names no object is a bad request.
pub fn read_oid(raw: u64) -> capnp::Result<ObjectId> {
    ObjectId::from_raw(raw).map_err(|e| refusal(ErrorCode::BadRequest, e))
}

fn read_oids(r: capnp::primitive_list::Reader<'_, u64>) -> capnp::Result<Vec<ObjectId>> {
    r.iter().map(read_oid).collect()
}

fn list_len(n: usize) -> capnp::Result<u32> {
    u32::try_from(n).map_err(|_| refusal(ErrorCode::BadRequest, format!("a list of {n} entries is too long")))
}

pub fn write_status(mut b: store_status::Builder<'_>, s: &StoreStatus) {
    write_node(b.reborrow().init_node(), &s.node);
    b.set_cluster_id(s.cluster_id.as_str());
    b.set_epoch(s.epoch);
    b.set_session(s.session);
    b.set_joined(s.joined);
    b.set_data_dir(s.data_dir.as_str());
    b.set_uptime_ms(s.uptime_ms);
}

pub fn read_status(r: store_status::Reader<'_>) -> capnp::Result<StoreStatus> {
    Ok(StoreStatus {
        node: read_node(r.get_node()?)?,
        cluster_id: text(r.get_cluster_id())?,
        epoch: r.get_epoch(),
        session: r.get_session(),
        joined: r.get_joined(),
        data_dir: text(r.get_data_dir())?,
        uptime_ms: r.get_uptime_ms(),
    })
}

pub fn write_stat(mut b: store_stat::Builder<'_>, s: &StoreStat) {
    b.set_capacity(s.capacity);
    b.set_used(s.used);
    b.set_free(s.free);
    b.set_objects(s.objects);
    b.set_filesystem(s.filesystem);
}

pub fn read_stat(r: store_stat::Reader<'_>) -> StoreStat {
    StoreStat {
        capacity: r.get_capacity(),
        used: r.get_used(),
        free: r.get_free(),
        objects: r.get_objects(),
        filesystem: r.get_filesystem(),
    }
}

fn write_counters(mut b: io_counters::Builder<'_>, c: &IoCounters) {
    b.set_ops(c.ops);
    b.set_bytes(c.bytes);
    b.set_errors(c.errors);
    let mut buckets = b.init_buckets(BUCKETS as u32);
    for (i, n) in c.buckets.iter().enumerate() {
        buckets.set(i as u32, *n);
    }
}

/// A histogram of another length than ours is a node of another build: refused, not guessed.
fn read_counters(r: io_counters::Reader<'_>) -> capnp::Result<IoCounters> {
    let list = r.get_buckets()?;
    if list.len() as usize != BUCKETS {
        return Err(refusal(ErrorCode::BadRequest, format!("a histogram of {} buckets, not {BUCKETS}", list.len())));
    }
    let mut buckets = [0; BUCKETS];
    for (i, n) in list.iter().enumerate() {
        buckets[i] = n;
    }
    Ok(IoCounters { ops: r.get_ops(), bytes: r.get_bytes(), errors: r.get_errors(), buckets })
}

fn write_read_write(mut b: read_write::Builder<'_>, rw: &ReadWrite) {
    write_counters(b.reborrow().init_read(), &rw.read);
    write_counters(b.init_write(), &rw.write);
}

fn read_read_write(r: read_write::Reader<'_>) -> capnp::Result<ReadWrite> {
    Ok(ReadWrite { read: read_counters(r.get_read()?)?, write: read_counters(r.get_write()?)? })
}

pub fn write_io(mut b: io_stats::Builder<'_>, io: &NodeIo) -> capnp::Result<()> {
    b.set_uptime_ms(io.uptime_ms);
    b.set_untracked(io.untracked);
    write_read_write(b.reborrow().init_total(), &io.total);
    let mut vdis = b.init_vdis(list_len(io.vdis.len())?);
    for (i, (vid, rw)) in io.vdis.iter().enumerate() {
        let mut v = vdis.reborrow().get(i as u32);
        v.set_vid(vid.get());
        write_read_write(v.init_io(), rw);
    }
    Ok(())
}

pub fn read_io(r: io_stats::Reader<'_>) -> capnp::Result<NodeIo> {
    let vdis = r
        .get_vdis()?
        .iter()
        .map(|v| {
            let vid = VdiId::new(v.get_vid()).map_err(|e| refusal(ErrorCode::BadRequest, e))?;
            Ok((vid, read_read_write(v.get_io()?)?))
        })
        .collect::<capnp::Result<_>>()?;
    Ok(NodeIo {
        uptime_ms: r.get_uptime_ms(),
        total: read_read_write(r.get_total()?)?,
        vdis,
        untracked: r.get_untracked(),
    })
}

pub fn write_recovery(mut b: recovery_status::Builder<'_>, s: &RecoveryStatus) {
    b.set_epoch(s.epoch);
    b.set_done(s.done);
    b.set_total(s.total);
    b.set_complete(s.complete);
    b.set_listed(s.listed);
    b.set_waiting(s.waiting);
    let mut nodes = b.init_waiting_for(s.waiting_for.len() as u32);
    for (i, n) in s.waiting_for.iter().enumerate() {
        nodes.set(i as u32, n.as_str());
    }
}

pub fn read_recovery(r: recovery_status::Reader<'_>) -> capnp::Result<RecoveryStatus> {
    let mut waiting_for = Vec::new();
    for n in r.get_waiting_for()? {
        waiting_for.push(n?.to_string()?);
    }
    Ok(RecoveryStatus {
        epoch: r.get_epoch(),
        done: r.get_done(),
        total: r.get_total(),
        complete: r.get_complete(),
        listed: r.get_listed(),
        waiting: r.get_waiting(),
        waiting_for,
    })
}

/// `oids`: every object held, live ones first; `stale` and `staleEpochs`: those held only
/// in `.stale/`, each with the last epoch in which it was live.
pub fn write_listing(mut b: list_results::Builder<'_>, l: &Listing) -> capnp::Result<()> {
    let mut oids = b.reborrow().init_oids(list_len(l.live.len() + l.stale_only.len())?);
    for (i, oid) in l.live.iter().chain(l.stale_only.iter().map(|(o, _)| o)).enumerate() {
        oids.set(i as u32, oid.raw());
    }
    let n = list_len(l.stale_only.len())?;
    let mut stale = b.reborrow().init_stale(n);
    for (i, (oid, _)) in l.stale_only.iter().enumerate() {
        stale.set(i as u32, oid.raw());
    }
    let mut epochs = b.reborrow().init_stale_epochs(n);
    for (i, (_, e)) in l.stale_only.iter().enumerate() {
        epochs.set(i as u32, *e);
    }
    let mut versions = b.init_versions(list_len(l.live.len() + l.stale_only.len())?);
    for (i, oid) in l.live.iter().chain(l.stale_only.iter().map(|(o, _)| o)).enumerate() {
        versions.set(i as u32, l.versions.get(oid).copied().unwrap_or(0));
    }
    Ok(())
}

/// A stale copy always names an epoch, at least 1 (1 when the node did not say).
pub fn read_listing(r: list_results::Reader<'_>) -> capnp::Result<Listing> {
    let stale = read_oids(r.get_stale()?)?;
    let epochs = r.get_stale_epochs()?;
    let stale_only: Vec<_> =
        stale.iter().enumerate().map(|(i, &o)| (o, epochs.try_get(i as u32).unwrap_or(1).max(1))).collect();
    let stale: HashSet<ObjectId> = stale.into_iter().collect();
    let all = read_oids(r.get_oids()?)?;
    let v = r.get_versions()?;
    // A node that sends no versions (0): its copies count as the oldest.
    let versions = all.iter().enumerate().map(|(i, &o)| (o, v.try_get(i as u32).unwrap_or(0))).collect();
    let live = all.into_iter().filter(|o| !stale.contains(o)).collect();
    Ok(Listing { live, stale_only, versions })
}

pub fn write_whole(mut b: fetch_results::Builder<'_>, w: &WholeObject) {
    b.set_data(&w.data);
    b.set_stale(w.is_stale());
    b.set_stale_epoch(w.stale_epoch);
    b.set_version(w.version);
}

/// A stale copy always names an epoch, at least 1.
pub fn read_whole(r: fetch_results::Reader<'_>) -> capnp::Result<WholeObject> {
    let stale_epoch = if r.get_stale() { r.get_stale_epoch().max(1) } else { 0 };
    Ok(WholeObject { data: r.get_data()?.to_vec(), stale_epoch, version: r.get_version() })
}

#[cfg(test)]
mod tests {
    use capnp::message::Builder;
    use sheep_core::epoch::NodeInfo;

    use super::*;

    fn oid(vid: u32, idx: u32) -> ObjectId {
        ObjectId::from_raw((u64::from(vid) << 32) | u64::from(idx)).unwrap()
    }

    #[test]
    fn io_stats_round_trip_and_a_histogram_of_another_length_is_refused() {
        let mut table = sheep_core::iostat::IoTable::default();
        let vid = VdiId::new(7).unwrap();
        table.record(Some(vid), sheep_core::iostat::Direction::Write, 120, 4096, true);
        table.record(Some(vid), sheep_core::iostat::Direction::Read, 60, 512, false);
        let io = table.snapshot(1234);
        let mut msg = Builder::new_default();
        write_io(msg.init_root(), &io).unwrap();
        assert_eq!(read_io(msg.get_root_as_reader().unwrap()).unwrap(), io);

        let mut msg = Builder::new_default();
        msg.init_root::<io_counters::Builder<'_>>().init_buckets(3);
        let err = read_counters(msg.get_root_as_reader().unwrap()).unwrap_err();
        assert!(err.to_string().contains("a histogram of 3 buckets"), "{err}");
    }

    #[test]
    fn status_stat_and_recovery_round_trip() {
        let status = StoreStatus {
            node: NodeInfo { id: "127.0.0.1:7001".into(), addr: "127.0.0.1:7001".into(), zone: 4, weight: 2 },
            cluster_id: "c0ffee".into(),
            epoch: 7,
            session: 12,
            joined: true,
            data_dir: "/srv/store".into(),
            uptime_ms: 99,
        };
        let mut msg = Builder::new_default();
        write_status(msg.init_root(), &status);
        assert_eq!(read_status(msg.get_root_as_reader().unwrap()).unwrap(), status);

        let stat = StoreStat { capacity: 100, used: 20, free: 70, objects: 3, filesystem: 0xfeed };
        let mut msg = Builder::new_default();
        write_stat(msg.init_root(), &stat);
        assert_eq!(read_stat(msg.get_root_as_reader().unwrap()), stat);

        let rec = RecoveryStatus {
            epoch: 5,
            done: 2,
            total: 9,
            complete: false,
            listed: true,
            waiting: 2,
            waiting_for: vec!["127.0.0.9:7001".into()],
        };
        let mut msg = Builder::new_default();
        write_recovery(msg.init_root(), &rec);
        assert_eq!(read_recovery(msg.get_root_as_reader().unwrap()).unwrap(), rec);
    }

    #[test]
    fn listings_keep_live_and_stale_copies_apart_with_their_epochs() {
        let versions = [(oid(1, 0), 7 << 32 | 2), (oid(1, 1), 0), (oid(2, 0), 4 << 32 | 1), (oid(2, 1), 9)];
        let l = Listing {
            live: vec![oid(1, 0), oid(1, 1)],
            stale_only: vec![(oid(2, 0), 4), (oid(2, 1), 1)],
            versions: versions.into_iter().collect(),
        };
        let mut msg = Builder::new_default();
        write_listing(msg.init_root(), &l).unwrap();
        let r: list_results::Reader<'_> = msg.get_root_as_reader().unwrap();
        let all: Vec<u64> = r.get_oids().unwrap().iter().collect();
        assert_eq!(all, [oid(1, 0), oid(1, 1), oid(2, 0), oid(2, 1)].map(ObjectId::raw), "every object in oids");
        assert_eq!(read_listing(r).unwrap(), l);
    }

    #[test]
    fn a_stale_copy_without_its_epoch_counts_as_last_live_in_epoch_1() {
        let mut msg = Builder::new_default();
        let mut b: list_results::Builder<'_> = msg.init_root();
        b.reborrow().init_oids(2).set(0, oid(1, 0).raw());
        b.reborrow().get_oids().unwrap().set(1, oid(1, 1).raw());
        b.reborrow().init_stale(1).set(0, oid(1, 1).raw());
        let l = read_listing(msg.get_root_as_reader().unwrap()).unwrap();
        let versions = [(oid(1, 0), 0), (oid(1, 1), 0)].into_iter().collect();
        assert_eq!(l, Listing { live: vec![oid(1, 0)], stale_only: vec![(oid(1, 1), 1)], versions });

        let mut msg = Builder::new_default();
        let mut b: list_results::Builder<'_> = msg.init_root();
        b.reborrow().init_oids(1).set(0, 0);
        assert!(read_listing(msg.get_root_as_reader().unwrap()).is_err(), "oid 0 names no object");
    }

    #[test]
    fn fetched_objects_say_whether_they_are_stale() {
        for w in [
            WholeObject { data: b"live".to_vec(), stale_epoch: 0, version: 5 << 32 | 3 },
            WholeObject { data: vec![1; 9], stale_epoch: 3, version: 1 },
        ] {
            let mut msg = Builder::new_default();
            write_whole(msg.init_root(), &w);
            assert_eq!(read_whole(msg.get_root_as_reader().unwrap()).unwrap(), w);
        }
        let mut msg = Builder::new_default();
        let mut b: fetch_results::Builder<'_> = msg.init_root();
        b.set_stale(true);
        let w = read_whole(msg.get_root_as_reader().unwrap()).unwrap();
        assert!(w.is_stale() && w.stale_epoch == 1);
    }
}
