//! The frames of an authenticated connection: each carries at most [`MAX_FRAME`] bytes of
//! the stream and a 16-byte AES-256-GCM tag, under a key of its direction and a counter as
//! its nonce (never reused: one key per direction and session, the counter only grows).
//! Integrity only (the default): the payload travels as it is, authenticated as associated
//! data. Secure: the payload is encrypted too. A frame that was changed, dropped, replayed or
//! reordered fails its tag, and the connection ends.
//!
//! ```text
//! frame: header u32 LE (payload length | ENCRYPTED bit) | payload | tag (16)
//! ```

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};

use super::Key;

/// The most bytes of the stream one frame carries.
pub const MAX_FRAME: usize = 256 << 10;
pub const HEADER_LEN: usize = 4;
pub const TAG_LEN: usize = 16;
/// The header bit of an encrypted frame.
const ENCRYPTED: u32 = 1 << 31;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("a frame's header says {0} bytes, more than {MAX_FRAME}")]
    TooLong(usize),
    #[error("a frame failed its integrity check (changed, replayed or out of order)")]
    Forged,
    #[error("a frame is {got} where the session is {want}")]
    Mode { got: &'static str, want: &'static str },
}

fn mode(encrypted: bool) -> &'static str {
    if encrypted {
        "encrypted"
    } else {
        "integrity-checked only"
    }
}

fn nonce(counter: u64) -> Nonce<aes_gcm::aes::cipher::consts::U12> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    n.into()
}

/// One direction of a session, sending.
pub struct Sealer {
    cipher: Aes256Gcm,
    counter: u64,
    encrypt: bool,
}

impl Sealer {
    pub fn new(key: &Key, encrypt: bool) -> Sealer {
        Sealer { cipher: Aes256Gcm::new(key.into()), counter: 0, encrypt }
    }

    /// Appends the frame of `payload` (at most [`MAX_FRAME`] bytes) to `out`.
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        assert!(payload.len() <= MAX_FRAME, "a frame of {} bytes", payload.len());
        let header = payload.len() as u32 | if self.encrypt { ENCRYPTED } else { 0 };
        let start = out.len();
        out.extend_from_slice(&header.to_le_bytes());
        out.extend_from_slice(payload);
        let n = nonce(self.counter);
        self.counter += 1;
        let tag = if self.encrypt {
            let (head, body) = out[start..].split_at_mut(HEADER_LEN);
            self.cipher.encrypt_in_place_detached(&n, head, body)
        } else {
            self.cipher.encrypt_in_place_detached(&n, &out[start..], &mut [])
        }
        .expect("AES-GCM seals any frame of at most MAX_FRAME bytes");
        out.extend_from_slice(&tag);
    }
}

/// One direction of a session, receiving.
pub struct Opener {
    cipher: Aes256Gcm,
    counter: u64,
    encrypted: bool,
}

impl Opener {
    pub fn new(key: &Key, encrypted: bool) -> Opener {
        Opener { cipher: Aes256Gcm::new(key.into()), counter: 0, encrypted }
    }

    /// The payload length a frame header announces.
    pub fn payload_len(&self, header: [u8; HEADER_LEN]) -> Result<usize, SealError> {
        let h = u32::from_le_bytes(header);
        let encrypted = h & ENCRYPTED != 0;
        if encrypted != self.encrypted {
            return Err(SealError::Mode { got: mode(encrypted), want: mode(self.encrypted) });
        }
        let len = (h & !ENCRYPTED) as usize;
        if len > MAX_FRAME {
            return Err(SealError::TooLong(len));
        }
        Ok(len)
    }

    /// Checks (and decrypts in place) `frame`: its header and payload, as they came; `tag`
    /// follows them. The payload is `frame[HEADER_LEN..]` then.
    pub fn open(&mut self, frame: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), SealError> {
        assert!(frame.len() >= HEADER_LEN);
        let n = nonce(self.counter);
        let tag = Tag::from_slice(tag);
        let ok = if self.encrypted {
            let (head, body) = frame.split_at_mut(HEADER_LEN);
            self.cipher.decrypt_in_place_detached(&n, head, body, tag)
        } else {
            self.cipher.decrypt_in_place_detached(&n, frame, &mut [], tag)
        };
        ok.map_err(|_| SealError::Forged)?;
        self.counter += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens every frame in `wire` with `o`; the payloads, concatenated.
    fn open_all(o: &mut Opener, mut wire: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let header: [u8; HEADER_LEN] = wire[..HEADER_LEN].try_into().unwrap();
            let n = o.payload_len(header)?;
            let mut frame = wire[..HEADER_LEN + n].to_vec();
            let tag: [u8; TAG_LEN] = wire[HEADER_LEN + n..HEADER_LEN + n + TAG_LEN].try_into().unwrap();
            o.open(&mut frame, &tag)?;
            out.extend_from_slice(&frame[HEADER_LEN..]);
            wire = &wire[HEADER_LEN + n + TAG_LEN..];
        }
        Ok(out)
    }

    #[test]
    fn frames_open_in_order_and_nothing_else_does() {
        for encrypt in [false, true] {
            let key = [4u8; 32];
            let mut s = Sealer::new(&key, encrypt);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            s.seal(b"first frame", &mut a);
            s.seal(b"second", &mut b);
            assert_eq!(a[HEADER_LEN..HEADER_LEN + 11] == b"first frame"[..], !encrypt, "plain only without secure");
            let both = [a.clone(), b.clone()].concat();
            assert_eq!(open_all(&mut Opener::new(&key, encrypt), &both).unwrap(), b"first framesecond");
            // Reordered, replayed, changed, another key, the other mode: refused.
            let swapped = [b.clone(), a.clone()].concat();
            assert_eq!(open_all(&mut Opener::new(&key, encrypt), &swapped), Err(SealError::Forged));
            let replayed = [a.clone(), a.clone()].concat();
            assert_eq!(open_all(&mut Opener::new(&key, encrypt), &replayed), Err(SealError::Forged));
            let mut changed = a.clone();
            changed[HEADER_LEN + 2] ^= 1;
            assert_eq!(open_all(&mut Opener::new(&key, encrypt), &changed), Err(SealError::Forged));
            assert_eq!(open_all(&mut Opener::new(&[5u8; 32], encrypt), &a), Err(SealError::Forged));
            assert!(matches!(open_all(&mut Opener::new(&key, !encrypt), &a), Err(SealError::Mode { .. })));
        }
        let mut long = (MAX_FRAME as u32 + 1).to_le_bytes().to_vec();
        long.extend_from_slice(&[0u8; 16]);
        let header: [u8; HEADER_LEN] = long[..4].try_into().unwrap();
        assert!(matches!(Opener::new(&[4u8; 32], false).payload_len(header), Err(SealError::TooLong(_))));
    }
}
