@0xf49b2deec9ca1c89;
# storaged's API. This is the control part (what a node is and what it has seen of the
# cluster); the object operations come with the data path.

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

interface Storaged {
  status @0 () -> (status :StoreStatus);
  epochLog @1 () -> (epochs :List(G.EpochRecord));
  # The node's own copy of the epoch history, as kept in its data dir.
}
