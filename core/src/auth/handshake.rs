//! The handshake every connection starts with, before any request (all sizes fixed or
//! bounded, so a reader knows how much to read):
//!
//! ```text
//! client → server  hello:   "SHEEPAU1" | flags u8 | entity length u8 | entity | client nonce (32)
//!                           | (if flags has TICKET) ticket length u16 | ticket
//! server → client  answer:  status u8 | (if ok) server flags u8 | server nonce (32) | server proof (32)
//! client → server  proof:   client proof (32)
//! server → client  verdict: status u8
//! ```
//!
//! Both proofs are HMAC-SHA-256, under the key the entity holds, of the transcript (the
//! hello, the server's flags and its nonce): the server proves it knows that key (so the client knows
//! it talks to a member of its own cluster), then the client proves it holds it. Fresh nonces
//! on both sides: a recorded handshake replayed gets another server nonce, and its proof no
//! longer matches. The session's frame keys come from the same transcript.
//!
//! A client other than the admin shows storage nodes its ticket (`super::ticket`) in its hello:
//! it tells them the generation of the client's key, so the proofs are made with that key.
//!
//! Encryption: the session's frames are encrypted when the client asks ([`flags::SECURE`] in
//! its hello) or the server's cluster was formatted `--secure`; the server's flags say which,
//! and are in the transcript, so a man in the middle cannot turn it off unseen.

use sha2::{Digest, Sha256};

use super::{mac, mac_matches, validate_entity, Key, KEY_LEN};

pub const MAGIC: &[u8; 8] = b"SHEEPAU1";
/// Bytes of the hello before the entity's name.
pub const HELLO_HEAD: usize = MAGIC.len() + 2;
pub const NONCE_LEN: usize = 32;
/// Bytes of a successful answer after its status byte.
pub const ANSWER_BODY: usize = 1 + NONCE_LEN + KEY_LEN;

/// The flags of a hello and of an answer.
pub mod flags {
    /// In a hello: the client wants its frames encrypted (not only integrity-checked). In an
    /// answer: the session's frames are encrypted.
    pub const SECURE: u8 = 1;
    /// In a hello: a ticket follows the nonce.
    pub const TICKET: u8 = 2;
}

/// What the server answers (the answer's and the verdict's status byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// The hello was malformed (or not a hello at all).
    BadHello = 1,
    /// The server knows no such entity.
    UnknownEntity = 2,
    /// The client's proof did not match: it does not hold the entity's key.
    WrongProof = 3,
    /// The ticket shown is expired, forged, or another client's.
    BadTicket = 4,
}

impl Status {
    pub fn from_byte(b: u8) -> Option<Status> {
        [Status::Ok, Status::BadHello, Status::UnknownEntity, Status::WrongProof, Status::BadTicket]
            .into_iter()
            .find(|s| *s as u8 == b)
    }

    /// Why a connection was refused, for people.
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "accepted",
            Status::BadHello => "the handshake was malformed",
            Status::UnknownEntity => "the peer knows no such entity (removed? or a storage node asked for a ticket)",
            Status::BadTicket => "the ticket is expired, forged or another client's (get a new one from groupd)",
            Status::WrongProof => "wrong key: the proof does not match (a keyring of another cluster?)",
        }
    }
}

/// The client's first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// [`flags::SECURE`]; [`flags::TICKET`] is set by `encode` when there is a ticket.
    pub flags: u8,
    pub entity: String,
    pub nonce: [u8; NONCE_LEN],
    /// The client's sealed ticket, or empty.
    pub ticket: Vec<u8>,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.entity.len() <= super::MAX_ENTITY_LEN);
        debug_assert!(self.ticket.len() <= super::ticket::MAX_TICKET);
        let mut out = Vec::with_capacity(HELLO_HEAD + self.entity.len() + NONCE_LEN + 2 + self.ticket.len());
        out.extend_from_slice(MAGIC);
        let ticket = if self.ticket.is_empty() { 0 } else { flags::TICKET };
        out.push((self.flags & !flags::TICKET) | ticket);
        out.push(self.entity.len() as u8);
        out.extend_from_slice(self.entity.as_bytes());
        out.extend_from_slice(&self.nonce);
        if !self.ticket.is_empty() {
            out.extend_from_slice(&(self.ticket.len() as u16).to_be_bytes());
            out.extend_from_slice(&self.ticket);
        }
        out
    }

    /// Whether a ticket (its u16 length, then it) follows the part `rest_len` counts.
    pub fn has_ticket(head: &[u8; HELLO_HEAD]) -> bool {
        head[MAGIC.len()] & flags::TICKET != 0
    }

    /// The length of the ticket from its two length bytes; None beyond the bound.
    pub fn ticket_len(len: [u8; 2]) -> Option<usize> {
        let n = usize::from(u16::from_be_bytes(len));
        (n > 0 && n <= super::ticket::MAX_TICKET).then_some(n)
    }

    /// From the first [`HELLO_HEAD`] bytes: how many bytes follow (the entity and the nonce);
    /// None if they are no hello's.
    pub fn rest_len(head: &[u8; HELLO_HEAD]) -> Option<usize> {
        let n = usize::from(head[MAGIC.len() + 1]);
        (head[..MAGIC.len()] == MAGIC[..] && n > 0 && n <= super::MAX_ENTITY_LEN).then_some(n + NONCE_LEN)
    }

    pub fn decode(head: &[u8; HELLO_HEAD], rest: &[u8]) -> Option<Hello> {
        let n = Hello::rest_len(head)?;
        if rest.len() != n {
            return None;
        }
        let (name, nonce) = rest.split_at(n - NONCE_LEN);
        let entity = std::str::from_utf8(name).ok()?.to_string();
        validate_entity(&entity).ok()?;
        Some(Hello { flags: head[MAGIC.len()], entity, nonce: nonce.try_into().ok()?, ticket: Vec::new() })
    }
}

/// The body of a successful answer (what follows its status byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub flags: u8,
    pub nonce: [u8; NONCE_LEN],
    pub proof: Key,
}

impl Answer {
    pub fn encode(&self) -> [u8; ANSWER_BODY] {
        let mut out = [0u8; ANSWER_BODY];
        out[0] = self.flags;
        out[1..1 + NONCE_LEN].copy_from_slice(&self.nonce);
        out[1 + NONCE_LEN..].copy_from_slice(&self.proof);
        out
    }

    pub fn decode(body: &[u8; ANSWER_BODY]) -> Answer {
        Answer {
            flags: body[0],
            nonce: body[1..1 + NONCE_LEN].try_into().expect("nonce length"),
            proof: body[1 + NONCE_LEN..].try_into().expect("proof length"),
        }
    }

    pub fn is_secure(&self) -> bool {
        self.flags & flags::SECURE != 0
    }
}

/// What both proofs and the frame keys are computed over: the hello, and the server's flags
/// and nonce.
pub fn transcript(hello: &Hello, server_flags: u8, server_nonce: &[u8; NONCE_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(hello.encode());
    h.update([server_flags]);
    h.update(server_nonce);
    h.finalize().into()
}

pub fn server_proof(key: &Key, transcript: &[u8; 32]) -> Key {
    mac(key, &[b"sheep server proof", transcript])
}

pub fn client_proof(key: &Key, transcript: &[u8; 32]) -> Key {
    mac(key, &[b"sheep client proof", transcript])
}

pub fn server_proof_matches(key: &Key, transcript: &[u8; 32], proof: &[u8]) -> bool {
    mac_matches(key, &[b"sheep server proof", transcript], proof)
}

pub fn client_proof_matches(key: &Key, transcript: &[u8; 32], proof: &[u8]) -> bool {
    mac_matches(key, &[b"sheep client proof", transcript], proof)
}

/// The frame keys of the session: (client to server, server to client).
pub fn frame_keys(key: &Key, transcript: &[u8; 32]) -> (Key, Key) {
    (mac(key, &[b"sheep frames c2s", transcript]), mac(key, &[b"sheep frames s2c", transcript]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello { flags: flags::SECURE, entity: "client.admin".into(), nonce: [9u8; NONCE_LEN], ticket: Vec::new() }
    }

    #[test]
    fn hello_round_trips_and_junk_is_no_hello() {
        let bytes = hello().encode();
        let head: [u8; HELLO_HEAD] = bytes[..HELLO_HEAD].try_into().unwrap();
        assert_eq!(Hello::rest_len(&head), Some(bytes.len() - HELLO_HEAD));
        assert_eq!(Hello::decode(&head, &bytes[HELLO_HEAD..]), Some(hello()));
        assert_eq!(Hello::decode(&head, &bytes[HELLO_HEAD + 1..]), None);
        // A capnp message (what a client without keys sends first) is no hello.
        let mut capnp = [0u8; HELLO_HEAD];
        capnp[4] = 3;
        assert_eq!(Hello::rest_len(&capnp), None);
        let mut bad = bytes.clone();
        bad[HELLO_HEAD] = b' ';
        assert_eq!(Hello::decode(&head, &bad[HELLO_HEAD..]), None, "an invalid entity name");
        assert!(!Hello::has_ticket(&head));
    }

    #[test]
    fn a_ticket_follows_the_nonce_and_is_in_the_transcript() {
        let with = Hello { ticket: vec![7u8; 40], ..hello() };
        let bytes = with.encode();
        let head: [u8; HELLO_HEAD] = bytes[..HELLO_HEAD].try_into().unwrap();
        assert!(Hello::has_ticket(&head));
        let n = Hello::rest_len(&head).unwrap();
        let mut got = Hello::decode(&head, &bytes[HELLO_HEAD..HELLO_HEAD + n]).unwrap();
        let len = Hello::ticket_len(bytes[HELLO_HEAD + n..HELLO_HEAD + n + 2].try_into().unwrap()).unwrap();
        got.ticket = bytes[HELLO_HEAD + n + 2..].to_vec();
        assert_eq!(len, 40);
        assert_eq!(got.encode(), bytes);
        assert_eq!(Hello::ticket_len([0, 0]), None);
        // Another ticket, another transcript: a ticket cannot be swapped under a proof.
        let other = Hello { ticket: vec![8u8; 40], ..hello() };
        assert_ne!(transcript(&with, 0, &[1u8; NONCE_LEN]), transcript(&other, 0, &[1u8; NONCE_LEN]));
    }

    #[test]
    fn proofs_bind_the_key_and_both_nonces() {
        let key = [1u8; KEY_LEN];
        let t = transcript(&hello(), 0, &[2u8; NONCE_LEN]);
        assert!(server_proof_matches(&key, &t, &server_proof(&key, &t)));
        assert!(client_proof_matches(&key, &t, &client_proof(&key, &t)));
        // The server's proof is no client proof (no reflection).
        assert!(!client_proof_matches(&key, &t, &server_proof(&key, &t)));
        // Another server nonce (a replay), another client nonce, another key: no match.
        let replayed = transcript(&hello(), 0, &[3u8; NONCE_LEN]);
        assert!(!client_proof_matches(&key, &replayed, &client_proof(&key, &t)));
        let other = Hello { nonce: [8u8; NONCE_LEN], ..hello() };
        assert!(!client_proof_matches(&key, &transcript(&other, 0, &[2u8; NONCE_LEN]), &client_proof(&key, &t)));
        assert!(!client_proof_matches(&[5u8; KEY_LEN], &t, &client_proof(&key, &t)));
        // The server's flags are bound too: an answer whose "encrypted" flag was cleared on
        // the way no longer matches its proof.
        let secure = transcript(&hello(), flags::SECURE, &[2u8; NONCE_LEN]);
        assert!(!server_proof_matches(&key, &t, &server_proof(&key, &secure)));
        let (c2s, s2c) = frame_keys(&key, &t);
        assert_ne!(c2s, s2c);
        assert_ne!(frame_keys(&key, &replayed).0, c2s);
    }

    #[test]
    fn answers_round_trip() {
        let a = Answer { flags: flags::SECURE, nonce: [4u8; NONCE_LEN], proof: [5u8; KEY_LEN] };
        assert_eq!(Answer::decode(&a.encode()), a);
        assert!(a.is_secure());
        assert!(!Answer { flags: 0, ..a }.is_secure());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [Status::Ok, Status::BadHello, Status::UnknownEntity, Status::WrongProof, Status::BadTicket] {
            assert_eq!(Status::from_byte(s as u8), Some(s));
        }
        assert_eq!(Status::from_byte(200), None);
    }
}
