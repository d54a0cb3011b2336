@0xed362cb1450f89b7;
# groupd's API: the cluster's group communication service.
#
# Any groupd answers every method. What changes cluster state (sessions, proposals, format,
# locks, shutdown) is decided by the master (the Raft leader); another groupd forwards such a
# call to the master and returns its answer. Reads (`info`, `watch`) are served from the
# answering groupd's own applied state, which is always a prefix of the one total order.
#
# A refused call is a capnp exception carrying an `ErrorCode` of error.capnp and a human
# sentence (the methods below name the codes they refuse with).

struct NodeInfo {
  # A storage node (storaged) as it appears in an epoch's node list.
  id @0 :Text;        # stable identity: the node's listen address "ip:port"
  addr @1 :Text;      # where its storaged API listens
  zone @2 :UInt32;    # failure domain; replicas of one object go to distinct zones
  weight @3 :UInt32;  # relative capacity; scales the node's share of the ring
}

enum SessionKind {
  storage @0;  # a storaged: its session is its membership
  client @1;   # a user of the cluster (sheepctl, a block device daemon): may hold locks
}

struct Session {
  id @0 :UInt64;
  kind @1 :SessionKind;
  node @2 :NodeInfo;     # set for storage sessions
  name @3 :Text;         # free text for client sessions ("ublk-dev pid 42 on host")
  openedMs @4 :UInt64;
  failed @5 :Text;       # a storage node whose disk failed: why (out of the data membership)
}

struct EpochRecord {
  epoch @0 :UInt32;
  timeMs @1 :UInt64;        # unix ms, stamped by the master that ordered the change
  nodes @2 :List(NodeInfo); # the full ordered node list of this epoch
}

struct ClusterConfig {
  clusterId @0 :Text;
  createdMs @1 :UInt64;
  copies @2 :UInt8;
  objectSizeShift @3 :UInt8;  # object size = 1 << shift
  voters @4 :UInt8;           # how many groupd instances vote (3 or 5)
  minCopies @5 :UInt8;        # a write is acked once this many replicas hold it; 0: a majority
  holdMs @6 :UInt64;          # how long writes are held below minCopies; 0: 60 s
  allowFewerZones @7 :Bool;   # VDIs may have more copies than there are zones
  secure @8 :Bool;            # every session is encrypted, not only integrity-checked
}

enum ClusterStatus {
  unformatted @0;
  running @1;
  shutdown @2;        # shut down; waiting until every member of the last epoch is back
  halted @3;          # every storage node left by crashing: waiting, as after a shutdown, for
                      # every member of the last epoch (no epoch is ever empty)
}

struct GroupMember {
  # A groupd instance.
  raftId @0 :UInt64;
  addr @1 :Text;
  role @2 :Role;
  enum Role {
    master @0;
    submaster @1;
    member @2;        # non-voting: follows the log, serves reads and forwards writes
  }
}

struct Lock {
  vdi @0 :Text;
  session @1 :UInt64;
  token @2 :UInt64;   # fencing token: the log position that granted the lock
  holder @3 :Text;    # the holding session's name, for people
}

struct ClusterInfo {
  status @0 :ClusterStatus;
  config @1 :ClusterConfig;           # unset while unformatted
  members @2 :List(GroupMember);
  epochs @3 :List(EpochRecord);       # the whole history, oldest first
  sessions @4 :List(Session);
  locks @5 :List(Lock);
  missing @6 :List(NodeInfo);         # while shut down: last-epoch nodes not back yet
  appliedSeq @7 :UInt64;              # events applied by the answering groupd
  answeredBy @8 :Text;
  cleanEpoch @9 :UInt32;              # the newest epoch every node of which recovered
}

struct VdiInfo {
  # A virtual disk in the cluster's namespace. Its data layout (which object holds what)
  # lives in its inode object on the storage nodes.
  name @0 :Text;
  vid @1 :UInt32;            # 24-bit VDI id; never reused, even after a delete
  size @2 :UInt64;           # bytes
  copies @3 :UInt8;
  objectSizeShift @4 :UInt8;
  createdMs @5 :UInt64;
  parent @6 :UInt32;         # the snapshot it goes on from or was cloned from; 0: none
  isSnapshot @7 :Bool;       # a read-only snapshot of `name`, tagged `tag`
  tag @8 :Text;
}

struct RequestId {
  # Names one call of one client. Every try of the call carries the same id, and groupd
  # applies the call at most once: a retry of a call applied already (its answer was lost
  # with a broken connection) gets the answer of the first try, refusal included. The
  # group remembers the answers of the last calls of the last 1024 clients. Unset (client
  # 0): the call is applied each time it arrives.
  client @0 :UInt64;        # chosen at random by the client when it starts
  seq @1 :UInt64;           # the call's number among the client's calls, from 1
  firstPending @2 :UInt64;  # the lowest seq of the client's calls still waiting for an
                            # answer (this one included); a late copy of a lower one is
                            # refused with badRequest, never applied
}

struct Event {
  # One entry of the total order, as watchers see it.
  seq @0 :UInt64;      # 1, 2, 3, … with no gap
  timeMs @1 :UInt64;
  union {
    formatted @2 :ClusterConfig;
    joined @3 :Session;             # a session opened (storage or client)
    left :group {                   # a session closed
      session @4 :UInt64;
      expired @5 :Bool;             # true: its lease ran out; false: it left
    }
    epoch @6 :EpochRecord;          # a new epoch began
    broadcast :group {
      session @7 :UInt64;
      payload @8 :Data;
    }
    locked @9 :Lock;
    unlocked :group {
      vdi @10 :Text;
      session @11 :UInt64;
      forced @12 :Bool;
    }
    shutdown @13 :Void;
    resumed @14 :Void;              # every node is back after a shutdown, or recover force
    vdiCreated @15 :VdiInfo;
    vdiDeleted @16 :VdiInfo;        # storage nodes remove its objects, now or when back
    recovered :group {              # a storage node holds everything it owns in `epoch`
      node @17 :Text;
      epoch @18 :UInt32;
    }
    recoveryComplete @19 :UInt32;   # every node of this epoch recovered: `.stale` may go
    vdiRetired @20 :VdiInfo;        # deleted, but a live VDI still reads its objects: kept
    vdiSnapshotted :group {
      snapshot @21 :VdiInfo;        # the frozen former working VDI
      working @22 :VdiInfo;         # the new working VDI, going on from it
    }
    vdiResized @23 :VdiInfo;
    halted @24 :Void;               # every storage node left: see ClusterStatus.halted
    nodeFailed :group {             # a storage node's disk failed: it left the data membership
      session @25 :UInt64;
      node @26 :Text;
      reason @27 :Text;
    }
  }
}

interface Groupd {
  # Every call that changes the cluster state (all but keepalive, watch, info, vdiList,
  # vdiGetAttr and the calls between groupd instances) takes a `request`: see RequestId.

  openSession @0 (kind :SessionKind, node :NodeInfo, name :Text, clusterId :Text,
                   request :RequestId)
      -> (session :UInt64, leaseMs :UInt32);
  # clusterId: the cluster a storage node's store belongs to ("" for a new store). A storage
  # node whose store belongs to another cluster is refused with wrongCluster.

  keepalive @1 (session :UInt64) -> ();
  closeSession @2 (session :UInt64, request :RequestId) -> ();

  propose @3 (session :UInt64, payload :Data, request :RequestId) -> (seq :UInt64);
  # A user broadcast: one entry in the total order.

  watch @4 (fromSeq :UInt64, maxEntries :UInt32, waitMs :UInt32)
      -> (events :List(Event), nextSeq :UInt64);
  # Long poll: events with seq >= fromSeq, waiting up to waitMs for the first one.
  # Fails with `compacted` if fromSeq is older than what this groupd still keeps.

  info @5 () -> (info :ClusterInfo);

  format @6 (copies :UInt8, objectSizeShift :UInt8, voters :UInt8, force :Bool,
             minCopies :UInt8, holdMs :UInt64, allowFewerZones :Bool, request :RequestId,
             secure :Bool)
      -> (config :ClusterConfig);
  # Refused (badRequest) if minCopies > copies, or if the storage nodes up span fewer zones
  # than copies and allowFewerZones is not set.
  shutdown @7 (request :RequestId) -> ();
  recoverForce @8 (request :RequestId) -> ();

  lock @9 (session :UInt64, vdi :Text, request :RequestId) -> (lock :Lock);
  unlock @10 (session :UInt64, vdi :Text, force :Bool, request :RequestId) -> ();

  # --- between groupd instances ---
  raft @11 (kind :RaftKind, body :Data) -> (body :Data);
  # One openraft RPC, its request and response serialized by groupd itself.
  enum RaftKind {
    appendEntries @0;
    vote @1;
    installSnapshot @2;
  }

  addMember @12 (raftId :UInt64, addr :Text) -> ();
  # A new groupd asks to join the group; the master adds it as a member, then a voter while
  # there are fewer voters than the cluster's `voters`.

  # --- the VDI namespace and recovery marks (data path) ---
  vdiCreate @13 (name :Text, size :UInt64, copies :UInt8, allowFewerZones :Bool, request :RequestId)
      -> (vdi :VdiInfo);
  # copies 0 = the cluster's default. Fails with vdiExists, badRequest.
  vdiDelete @14 (name :Text, request :RequestId) -> (vdi :VdiInfo);
  # Fails with noVdi.
  vdiList @15 () -> (vdis :List(VdiInfo), deletedVids :List(UInt32), retired :List(VdiInfo));
  # retired: deleted snapshots kept while a live VDI descends from them (for the parent links
  # a deletion's reclaim follows; an older groupd leaves it empty).
  recoveryDone @16 (session :UInt64, epoch :UInt32, request :RequestId) -> ();
  # A storage node (by its session) reports it holds every object it owns in `epoch`.

  # --- snapshots, clones, attributes ---
  vdiDeleteSnapshot @17 (name :Text, tag :Text, request :RequestId) -> (vdi :VdiInfo);
  # Fails with noVdi. Its objects stay while a live VDI still reads them.
  vdiSnapshot @18 (session :UInt64, name :Text, tag :Text, request :RequestId)
      -> (snapshot :VdiInfo, working :VdiInfo);
  # While the VDI is locked only the holder's session may (lockHeld otherwise).
  vdiClone @19 (name :Text, tag :Text, newName :Text, request :RequestId) -> (vdi :VdiInfo);
  vdiRollback @20 (name :Text, tag :Text, request :RequestId) -> (vdi :VdiInfo);
  # Fails with lockHeld while the VDI is attached.
  vdiResize @21 (name :Text, size :UInt64, request :RequestId) -> (vdi :VdiInfo);
  # Grows only (badRequest otherwise).
  vdiSetAttr @22 (name :Text, key :Text, value :Data, delete :Bool, exclusive :Bool,
                  request :RequestId) -> ();
  # Fails with attrExists (exclusive), noAttr (delete), noVdi.
  vdiGetAttr @23 (name :Text, key :Text) -> (value :Data);
  # Served from this groupd's applied state. Fails with noAttr, noVdi.

  nodeFailed @24 (session :UInt64, reason :Text, request :RequestId) -> ();
  # A storage node (by its session) whose disk failed leaves the data membership: a new
  # epoch without it; its session lives on, shown with the reason.

  # --- clients and their capabilities (the administrator's and the daemons' only) ---
  authAdd @25 (name :Text, caps :Text, request :RequestId) -> (client :AuthClient);
  # A new client `client.NAME` with caps `vdi=PATTERN:r|rw, ...`; its key is derived from
  # the cluster's secret, its name and the generation answered.
  authCaps @26 (name :Text, caps :Text, request :RequestId) -> (client :AuthClient);
  authRm @27 (name :Text, request :RequestId) -> (client :AuthClient);
  # The client's key is refused by groupd at once, by storage nodes when its ticket expires.
  authList @28 () -> (clients :List(AuthClient));

  ticket @29 () -> (ticket :Data, lifetimeMs :UInt32);
  # For a client other than the admin: its capabilities resolved to the VDI ids they cover
  # now, sealed for storage nodes (see sheep_core::auth::ticket). Denied for anyone else.
}

struct AuthClient {
  name @0 :Text;
  generation @1 :UInt64;
  caps @2 :Text;            # as `auth add --caps` takes them
}
