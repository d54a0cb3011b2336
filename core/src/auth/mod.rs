//! Authentication, pure: keys and keyrings, the handshake every connection starts with, and
//! the sealing of the frames that follow it. The sockets are in `sheep_rpc::transport`.
//!
//! Every daemon holds the cluster's secret. Daemons prove to each other that they hold it
//! (entity [`DAEMON`]); a client proves it holds its own key, which is derived from the
//! secret, the client's name and the generation of its entry ([`client_key`]), so any daemon
//! that knows the generation can check it without a table of keys: groupd keeps the clients
//! and their capabilities in its replicated state, and gives each a [`ticket`] that tells
//! storage nodes the generation and the VDIs the client may touch. The proofs are
//! HMAC-SHA-256 over a transcript with a fresh nonce of each side:
//! no key ever crosses the wire, and a recorded handshake cannot be replayed.

pub mod caps;
pub mod clients;
pub mod handshake;
pub mod keyring;
pub mod seal;
pub mod ticket;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of every key and secret.
pub const KEY_LEN: usize = 32;

/// A 256-bit key.
pub type Key = [u8; KEY_LEN];

/// The entity daemons authenticate as (with the cluster's secret itself).
pub const DAEMON: &str = "daemon";

/// The administrator's entity: every right.
pub const ADMIN: &str = "client.admin";

/// The longest entity name accepted.
pub const MAX_ENTITY_LEN: usize = 128;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA-256 of the concatenation of `parts` under `key`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> Key {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA-256 of `parts` under `key` (in constant time).
pub fn mac_matches(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

/// The key of client `name` in the cluster of `secret`, for the `generation` of its entry
/// (`client.admin`'s key has no generation: it is given as 0 and it is never revoked).
pub fn client_key(secret: &Key, name: &str, generation: u64) -> Key {
    if name == ADMIN {
        return mac(secret, &[b"sheep client key\0", name.as_bytes()]);
    }
    mac(secret, &[b"sheep client key\0", name.as_bytes(), b"\0", &generation.to_be_bytes()])
}

/// The key `entity` proves it holds, as a daemon of the cluster of `secret` knows it without
/// asking groupd (the daemons' and the admin's); None for any other.
pub fn key_of(secret: &Key, entity: &str) -> Option<Key> {
    if entity == DAEMON {
        Some(*secret)
    } else if entity == ADMIN {
        Some(client_key(secret, entity, 0))
    } else {
        None
    }
}

/// Whether `name` can name an entity: `daemon` or `client.` and letters, digits, `-`, `_`, `.`.
pub fn validate_entity(name: &str) -> Result<(), String> {
    if name.len() > MAX_ENTITY_LEN {
        return Err(format!("an entity name is at most {MAX_ENTITY_LEN} bytes"));
    }
    if name == DAEMON {
        return Ok(());
    }
    let Some(rest) = name.strip_prefix("client.") else {
        return Err(format!("{name:?} is no entity: `client.NAME` (or `daemon`)"));
    };
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("{name:?}: a client's name is letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_derived_and_checked() {
        let secret = [7u8; KEY_LEN];
        assert_eq!(key_of(&secret, DAEMON), Some(secret));
        let admin = key_of(&secret, ADMIN).unwrap();
        assert_ne!(admin, secret);
        assert_eq!(admin, client_key(&secret, ADMIN, 0));
        assert_eq!(admin, client_key(&secret, ADMIN, 7), "the admin's key has no generation");
        assert_ne!(client_key(&[8u8; KEY_LEN], ADMIN, 0), admin, "another cluster, another key");
        let bob = client_key(&secret, "client.bob", 1);
        assert_ne!(bob, client_key(&secret, "client.bob", 2), "removed and added again: another key");
        assert_ne!(bob, client_key(&secret, "client.bobb", 1));
        assert_eq!(key_of(&secret, "client.bob"), None);
        let tag = mac(&admin, &[b"a", b"bc"]);
        assert!(mac_matches(&admin, &[b"ab", b"c"], &tag));
        assert!(!mac_matches(&secret, &[b"abc"], &tag));
        assert!(!mac_matches(&admin, &[b"abc"], &tag[..31]));
    }

    #[test]
    fn entity_names() {
        for ok in ["daemon", "client.admin", "client.vm-host_1.a"] {
            assert!(validate_entity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "client.", "admin", "client.a b", "osd.1", &format!("client.{}", "x".repeat(130))] {
            assert!(validate_entity(bad).is_err(), "{bad}");
        }
    }
}
