//! Object ids and VDI ids, laid out as in Sheepdog, and the rules for VDI names.
//!
//! Every piece of data in the cluster is an object named by a 64-bit id:
//!
//! ```text
//!  63   62   61   60..56   55 ........ 32   31 ........ 0
//! inode vm  attr  (zero)    VDI id (24)     object index (32)
//! ```
//!
//! A data object is `vid << 32 | idx`; a VDI's inode object is `1 << 63 | vid << 32`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bit 63: the object is a VDI's inode.
pub const INODE_BIT: u64 = 1 << 63;
/// Bit 62: the object holds saved VM state.
pub const VMSTATE_BIT: u64 = 1 << 62;
/// Bit 61: the object holds a VDI attribute.
pub const ATTR_BIT: u64 = 1 << 61;
const KIND_BITS: u64 = INODE_BIT | VMSTATE_BIT | ATTR_BIT;
/// Bits 56..=60 have no meaning yet; a well-formed id keeps them zero.
const UNUSED_BITS: u64 = 0x1f << 56;
const VID_SHIFT: u32 = 32;

/// The 64-bit FNV-1a hash. VDI ids and the placement ring are derived from it, so every
/// process must compute exactly this function.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// A VDI id: 24 bits, never 0 (0 in an inode's `data_vdi_id` table means "never written").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct VdiId(u32);

impl VdiId {
    /// The largest VDI id; there are `MAX` usable ids, 1..=MAX.
    pub const MAX: u32 = (1 << 24) - 1;

    pub fn new(raw: u32) -> Result<VdiId, VdiIdOutOfRange> {
        if raw == 0 || raw > Self::MAX {
            return Err(VdiIdOutOfRange(raw));
        }
        Ok(VdiId(raw))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The id after this one in probing order: 1, 2, …, MAX, 1, … (0 is skipped).
    pub fn next_wrapping(self) -> VdiId {
        VdiId(if self.0 == Self::MAX { 1 } else { self.0 + 1 })
    }
}

impl TryFrom<u32> for VdiId {
    type Error = VdiIdOutOfRange;
    fn try_from(raw: u32) -> Result<Self, Self::Error> {
        VdiId::new(raw)
    }
}

impl From<VdiId> for u32 {
    fn from(vid: VdiId) -> u32 {
        vid.0
    }
}

/// Shown in hex, as Sheepdog's tools do (`7c2b25`).
impl fmt::Display for VdiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06x}", self.0)
    }
}

/// Parses 1 to 6 hex digits, without prefix.
impl FromStr for VdiId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = parse_hex(s, 6).ok_or_else(|| ParseIdError::vdi(s))? as u32;
        VdiId::new(raw).map_err(|_| ParseIdError::vdi(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VDI id {0:#x} is out of range (VDI ids are 1..=0xffffff)")]
pub struct VdiIdOutOfRange(pub u32);

/// Where the search for a free VDI id for `name` starts: FNV-1a-64 of the name masked to 24
/// bits (0, which is reserved, becomes 1). Collisions are resolved with [`probe`].
pub fn vdi_id_for_name(name: &str) -> VdiId {
    let masked = (fnv1a64(name.as_bytes()) & u64::from(VdiId::MAX)) as u32;
    VdiId(masked.max(1))
}

/// Linear probing: the first id from `start` on (wrapping past `VdiId::MAX` to 1) for which
/// `taken` is false, or `None` when every id is taken.
pub fn probe(start: VdiId, taken: impl Fn(VdiId) -> bool) -> Option<VdiId> {
    let mut vid = start;
    for _ in 0..VdiId::MAX {
        if !taken(vid) {
            return Some(vid);
        }
        vid = vid.next_wrapping();
    }
    None
}

/// What an object holds, from its top bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Data,
    Inode,
    VmState,
    Attribute,
}

/// A well-formed object id: at most one kind bit, the unused bits zero, a non-zero VDI id,
/// and index 0 for an inode. Ids from the wire or from file names go through `TryFrom<u64>`
/// or `FromStr`, which check exactly that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct ObjectId(u64);

impl ObjectId {
    /// Data object `idx` of VDI `vid`.
    pub fn data(vid: VdiId, idx: u32) -> ObjectId {
        ObjectId(Self::vid_bits(vid) | u64::from(idx))
    }

    /// The inode object of VDI `vid`.
    pub fn inode(vid: VdiId) -> ObjectId {
        ObjectId(INODE_BIT | Self::vid_bits(vid))
    }

    /// VM state object `idx` of VDI `vid`.
    pub fn vmstate(vid: VdiId, idx: u32) -> ObjectId {
        ObjectId(VMSTATE_BIT | Self::vid_bits(vid) | u64::from(idx))
    }

    /// Attribute object `idx` of VDI `vid`.
    pub fn attribute(vid: VdiId, idx: u32) -> ObjectId {
        ObjectId(ATTR_BIT | Self::vid_bits(vid) | u64::from(idx))
    }

    fn vid_bits(vid: VdiId) -> u64 {
        u64::from(vid.0) << VID_SHIFT
    }

    /// Checks the layout; see the type's documentation.
    pub fn from_raw(raw: u64) -> Result<ObjectId, BadObjectId> {
        let kind_bits = raw & KIND_BITS;
        let well_formed = kind_bits.count_ones() <= 1
            && raw & UNUSED_BITS == 0
            && (raw >> VID_SHIFT) as u32 & VdiId::MAX != 0
            && (kind_bits != INODE_BIT || raw as u32 == 0);
        if well_formed {
            Ok(ObjectId(raw))
        } else {
            Err(BadObjectId(raw))
        }
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    pub fn vid(self) -> VdiId {
        let vid = (self.0 >> VID_SHIFT) as u32 & VdiId::MAX;
        debug_assert_ne!(vid, 0, "an ObjectId always names a VDI");
        VdiId(vid)
    }

    /// The object's index in its VDI (always 0 for an inode).
    pub fn index(self) -> u32 {
        self.0 as u32
    }

    pub fn kind(self) -> ObjectKind {
        match self.0 & KIND_BITS {
            0 => ObjectKind::Data,
            INODE_BIT => ObjectKind::Inode,
            VMSTATE_BIT => ObjectKind::VmState,
            ATTR_BIT => ObjectKind::Attribute,
            _ => unreachable!("from_raw admits at most one kind bit"),
        }
    }

    pub fn is_data(self) -> bool {
        self.kind() == ObjectKind::Data
    }

    pub fn is_inode(self) -> bool {
        self.kind() == ObjectKind::Inode
    }

    pub fn is_vmstate(self) -> bool {
        self.kind() == ObjectKind::VmState
    }

    pub fn is_attribute(self) -> bool {
        self.kind() == ObjectKind::Attribute
    }
}

impl TryFrom<u64> for ObjectId {
    type Error = BadObjectId;
    fn try_from(raw: u64) -> Result<Self, Self::Error> {
        ObjectId::from_raw(raw)
    }
}

impl From<ObjectId> for u64 {
    fn from(oid: ObjectId) -> u64 {
        oid.0
    }
}

/// Always 16 lower-case hex digits: the canonical form, also used as the object's file name.
impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Parses exactly 16 hex digits (either case), so that one object has one spelling.
impl FromStr for ObjectId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(ParseIdError::object(s));
        }
        let raw = parse_hex(s, 16).ok_or_else(|| ParseIdError::object(s))?;
        ObjectId::from_raw(raw).map_err(|_| ParseIdError::object(s))
    }
}

/// 1..=`max_digits` hex digits and nothing else (`u64::from_str_radix` would also take a '+').
fn parse_hex(s: &str, max_digits: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0:#018x} is not a valid object id")]
pub struct BadObjectId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: expected {expected}")]
pub struct ParseIdError {
    what: &'static str,
    text: String,
    expected: &'static str,
}

impl ParseIdError {
    fn vdi(text: &str) -> Self {
        ParseIdError { what: "VDI id", text: text.into(), expected: "1 to 6 hex digits, not 0" }
    }

    fn object(text: &str) -> Self {
        ParseIdError { what: "object id", text: text.into(), expected: "16 hex digits of a well-formed object id" }
    }
}

/// The longest VDI name or snapshot tag, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a VDI name or snapshot tag is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} must not contain '/'")]
    Slash { what: &'static str },
    #[error("{what} must not contain a NUL byte")]
    Nul { what: &'static str },
    #[error("{what} must not contain control characters (found U+{code:04X})")]
    ControlChar { what: &'static str, code: u32 },
    #[error("{text:?} is not allowed as {what}")]
    Dots { what: &'static str, text: String },
}

/// A VDI name: 1..=255 bytes, no '/', NUL or control character, not "." or "..". Names
/// become parts of paths and log lines, so anything that could confuse those is refused.
pub fn validate_vdi_name(name: &str) -> Result<(), NameError> {
    check_label("a VDI name", name)
}

/// The tag of a new snapshot in the namespace: the rules of a VDI name (1..=255 bytes, no
/// '/', NUL or control character, not "." or ".."), with errors that say "a snapshot tag".
/// (An inode's own tag field is checked by [`validate_snapshot_tag`], which allows more.)
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    check_label("a snapshot tag", tag)
}

fn check_label(what: &'static str, text: &str) -> Result<(), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty { what });
    }
    if text == "." || text == ".." {
        return Err(NameError::Dots { what, text: text.into() });
    }
    if text.contains('/') {
        return Err(NameError::Slash { what });
    }
    check_text(what, text)
}

/// A snapshot tag: may be empty (no tag), otherwise like a name except that '/' is allowed.
pub fn validate_snapshot_tag(tag: &str) -> Result<(), NameError> {
    check_text("a snapshot tag", tag)
}

fn check_text(what: &'static str, text: &str) -> Result<(), NameError> {
    if text.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what, len: text.len() });
    }
    if text.contains('\0') {
        return Err(NameError::Nul { what });
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(NameError::ControlChar { what, code: c.into() });
    }
    Ok(())
}

#[cfg(test)]
#[path = "object_tests.rs"]
mod tests;
