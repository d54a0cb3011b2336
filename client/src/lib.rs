//! Client side of the cluster.
