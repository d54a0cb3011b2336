@0xc7851f29029ca030;
# Why groupd or storaged refused a call: the one list of codes of both APIs.
#
# A refusal is a capnp exception whose text carries its code behind a marker of our own,
# "[sheep:" code "]", followed by a sentence for people, e.g.
# "[sheep:notFormatted] the cluster is not formatted (run `sheepctl cluster format`)".
# The marker is found wherever it sits in the text, so a refusal passed on by another
# groupd keeps its code. An exception without the marker (a broken connection, a malformed
# message) is not a refusal. Encoding and decoding: rpc-schema/src/error.rs.

enum ErrorCode {
  # --- both APIs ---
  badRequest @0;        # the request itself is wrong (bounds, names, sizes): never retried

  # --- groupd ---
  notFormatted @1;      # the cluster is not formatted yet
  alreadyFormatted @2;  # format without force on a formatted cluster
  wrongCluster @3;      # a storage node whose store belongs to another cluster
  noSession @4;         # the session expired or was closed
  lockHeld @5;          # the VDI is locked by another session
  notLocked @6;         # unlock of a VDI this session does not hold
  shuttingDown @7;      # the cluster is shut down
  compacted @8;         # watch from a position this groupd no longer keeps: resync from info
  noMaster @9;          # no master right now (an election, a lost master): retry
  vdiExists @10;        # a VDI (or a snapshot tag of it) of that name exists already
  noVdi @11;            # no VDI (or no snapshot) of that name
  attrExists @12;       # an exclusive set of an attribute that exists
  noAttr @13;           # no attribute of that key

  # --- storaged ---
  staleEpoch @14;       # the request's epoch is older than the node's (or newer, after a wait)
  noObject @15;         # the node does not hold the object
  corrupt @16;          # a block failed its checksum (the node repairs its copy)
  noSpace @17;          # the node's disk is full
  ioError @18;          # a disk error other than a full disk
  fenced @19;           # a write whose VDI lock token is stale: final, never retried

  # --- groupd ---
  internal @20;         # the group state breaks one of its own invariants: the command was
                        # refused, identically on every groupd, and changed nothing

  # --- storaged ---
  diskFailed @21;       # the node's disk failed: it left (or is leaving) the data membership;
                        # wait for the next epoch and retry on the others

  # --- both ---
  denied @22;           # the client's capabilities do not cover the VDI (or the command is
                        # the administrator's): final, never retried
  ticketExpired @23;    # storaged: the session's ticket expired: get a new one and reconnect
}
