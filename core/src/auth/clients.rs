//! A client's entry as groupd keeps it (`sheepctl auth`), and what it lets the client touch
//! in a namespace: the grants of its ticket.

use serde::{Deserialize, Serialize};

use super::caps::{Access, Caps};
use crate::namespace::Namespace;

/// The most clients a cluster keeps.
pub const MAX_CLIENTS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEntry {
    pub name: String,
    pub generation: u64,
    pub caps: Caps,
}

/// The VDI ids whose objects a client with `caps` may touch now, for its ticket: every VDI,
/// snapshot and retired snapshot whose name a capability covers, with that access, and read
/// access to the snapshots each of them goes on from (their blocks are read through it).
pub fn grants(vdis: &Namespace, caps: &Caps) -> Vec<(u32, Access)> {
    let mut out = Vec::new();
    for e in vdis.list().chain(vdis.retired()) {
        let Some(access) = caps.access(&e.name) else { continue };
        out.push((e.vid.get(), access));
        out.extend(vdis.ancestors(e).map(|a| (a.get(), Access::Read)));
    }
    out
}
