@0xf49b2deec9ca1c89;
# storaged's API: what a node is and what it has seen of the cluster, and the object
# operations of the data path.
#
# Every object operation carries the sender's epoch. Older than the node's → refused with
# `staleEpoch` (the client refreshes its ring and retries); newer → held until the node has
# caught up (bounded; then refused with `staleEpoch` too).
#
# A refused call is a capnp exception carrying an `ErrorCode` of error.capnp (as in
# groupd.capnp): staleEpoch, noObject, corrupt, noSpace, badRequest, ioError, fenced.

using G = import "groupd.capnp";

struct StoreStatus {
  node @0 :G.NodeInfo;
  clusterId @1 :Text;       # "" while the store belongs to no cluster yet
  epoch @2 :UInt32;         # the newest epoch this node has applied
  session @3 :UInt64;       # its groupd session (0 while not joined)
  joined @4 :Bool;          # true while its session is alive
  dataDir @5 :Text;
  uptimeMs @6 :UInt64;
}

struct StoreStat {
  capacity @0 :UInt64;      # bytes of the file system holding the store
  used @1 :UInt64;          # bytes used by objects
  free @2 :UInt64;          # bytes still free on that file system
  objects @3 :UInt64;       # objects held (not counting stale ones)
  filesystem @4 :UInt64;    # which file system that is: the same for nodes that share one
                            # (of one host's machine id and the device), 0 if unknown
}

struct IoCounters {
  ops @0 :UInt64;           # finished requests, failed ones too
  bytes @1 :UInt64;         # payload bytes of those that succeeded
  errors @2 :UInt64;
  buckets @3 :List(UInt64); # how many took how long: bucket i up to 50 µs << i, the last one
                            # the rest (sheep_core::iostat::BUCKETS of them)
}

struct ReadWrite {
  read @0 :IoCounters;
  write @1 :IoCounters;     # writes, creations with a write, zeroing
}

struct VdiIo {
  vid @0 :UInt32;
  io @1 :ReadWrite;
}

struct IoStats {
  uptimeMs @0 :UInt64;
  total @1 :ReadWrite;      # every object request of clients and peers
  vdis @2 :List(VdiIo);     # per VDI (of the object), for a bounded number of VDIs
  untracked @3 :UInt64;     # requests of VDIs past that bound (in `total` only)
}

struct RecoveryStatus {
  epoch @0 :UInt32;         # the epoch being recovered to
  done @1 :UInt64;          # objects recovered so far
  total @2 :UInt64;         # objects this node must hold in that epoch (known once listed)
  complete @3 :Bool;        # everything held; reported to groupd
  listed @4 :Bool;          # the object lists of the old holders are complete
  waiting @5 :UInt64;       # objects that wait: a newer copy may be on a node that is down,
  waitingFor @6 :List(Text); # ... on one of these
}

interface Storaged {
  status @0 () -> (status :StoreStatus);
  epochLog @1 () -> (epochs :List(G.EpochRecord));
  # The node's own copy of the epoch history, as kept in its data dir.

  read @2 (epoch :UInt32, oid :UInt64, offset :UInt32, length :UInt32) -> (data :Data);
  # noObject if the node does not hold it; corrupt if a block fails its checksum (the node
  # then repairs its copy from another replica).

  write @3 (epoch :UInt32, oid :UInt64, offset :UInt32, data :Data, fua :Bool,
            fence :UInt64) -> ();
  # Into an existing object; noObject if absent.
  # fence (here and in createAndWrite and zero): the writer's VDI lock token (the groupd
  # log index that granted its lock), 0 when it holds no lock. Refused with `fenced` when the
  # token is older than the newest lock this node has seen for the object's VDI, or when it
  # is 0 while that VDI is locked: a writer that lost its lock can never write again.

  createAndWrite @4 (epoch :UInt32, oid :UInt64, objectSize :UInt32, baseOid :UInt64,
                     offset :UInt32, data :Data, fua :Bool, fence :UInt64) -> ();
  # Creates the object (zeros, or a copy of baseOid when non-zero: copy-on-write, fetched by
  # the node itself from the base's replicas) and writes data into it, atomically: the object
  # appears whole or not at all. An object that exists already is written into.

  remove @5 (epoch :UInt32, oid :UInt64) -> ();

  list @6 (epoch :UInt32) -> (oids :List(UInt64), stale :List(UInt64), staleEpochs :List(UInt32),
                              versions :List(UInt64));
  # Every object the node holds, in obj/ and in .stale/ (for recovery). `stale`: the part of
  # `oids` held only in .stale/ (a copy that may be older than a live one elsewhere), and in
  # `staleEpochs` (same order) the last epoch in which each of those copies was live: of
  # several stale copies, the one with the highest epoch is the newest. `versions` (same order
  # as `oids`): each copy's version (epoch of its last write << 32 | writes in that epoch).

  fetch @7 (epoch :UInt32, oid :UInt64, inspect :Bool)
      -> (data :Data, stale :Bool, staleEpoch :UInt32, version :UInt64);
  # The whole object, verified, from obj/ or .stale/: what a recovering or repairing peer pulls.
  # stale: the copy came from .stale/ (the node no longer owns it, or it rejoined), and was
  # last live in staleEpoch. A corrupt copy is refused with `corrupt` and the node repairs it
  # from a replica, unless `inspect`: only look, change nothing (what `check` sends).

  flush @8 (epoch :UInt32) -> ();
  # Makes every write acknowledged before it durable.

  stat @9 () -> (stat :StoreStat);
  recovery @10 () -> (status :RecoveryStatus);

  zero @11 (epoch :UInt32, oid :UInt64, offset :UInt32, length :UInt32, fua :Bool,
            fence :UInt64) -> ();
  # Makes [offset, offset+length) of an existing object read as zeros, without sending them:
  # whole blocks become holes (when the file system can punch them), partial ones are
  # rewritten. Same bounds (badRequest) and missing object (noObject) rules as write; never
  # creates the object. fua: durable before the reply (else made durable by flush).

  ioStats @12 () -> (stats :IoStats);
  # The node's request counters since it started, as a whole and per VDI: what
  # `sheepctl node stat` and `vdi stat` turn into rates. The admin's, as node-wide listings.
}
