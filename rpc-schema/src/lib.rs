//! The wire schemas. The Rust code under `generated/` is produced by `ci/gen-capnp` from
//! `schema/*.capnp` and committed, so building needs no Cap'n Proto compiler.

#[allow(clippy::all, unused, missing_docs)]
pub mod error_capnp {
    include!("generated/error_capnp.rs");
}

#[allow(clippy::all, unused, missing_docs)]
pub mod groupd_capnp {
    include!("generated/groupd_capnp.rs");
}

#[allow(clippy::all, unused, missing_docs)]
pub mod storaged_capnp {
    include!("generated/storaged_capnp.rs");
}

pub mod codec;
pub mod error;
