//! Protected frames (protocol.md §5.3): AES-256-GCM under a per-direction key,
//! with an implicit 64-bit sequence number as the nonce.
//!
//! * `ENC` set: `body = AES-GCM-Seal(key, nonce, aad = header, plaintext)`.
//! * `ENC` clear: `body = plaintext || tag`, the tag being AES-GCM over an
//!   empty plaintext with `aad = header || plaintext` — readable, not
//!   changeable.
//!
//! The counter is never on the wire, so a dropped, replayed or reordered
//! frame fails to verify and the connection ends.
//!
//! AES-GCM comes from `aws-lc-rs` (AWS-LC), not `ring`: a tag-only frame is
//! all AAD, and AWS-LC hashes long AAD with its bulk GHASH, about 10× faster
//! than ring at 16 KiB (`docs/benchmarks.md`). The bytes are the same. Its
//! key schedule lives in an `EVP_AEAD_CTX` that AWS-LC wipes
//! (`OPENSSL_cleanse`) when it frees it, i.e. when the `Sealer`/`Opener`
//! drops.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::envelope::{self, EnvelopeError, FLAG_ENC, TAG_LEN};
use crate::{Error, Result};

/// A 32-byte traffic key for one direction.
pub type TrafficKey = Zeroizing<[u8; 32]>;

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    // AES-256 accepts any 32-byte key, so this cannot fail.
    match UnboundKey::new(&AES_256_GCM, key) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("AES-256-GCM takes 32-byte keys"),
    }
}

fn nonce_for(seq: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals outgoing frames of one direction.
pub struct Sealer {
    key: LessSafeKey,
    seq: u64,
}

impl core::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sealer")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer starting at sequence number 0.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            key: aead_key(key),
            seq: 0,
        }
    }

    /// The sequence number the next frame will use.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Seals a frame and returns its bytes.
    pub fn seal(
        &mut self,
        msg_type: u8,
        flags: u8,
        id: u32,
        name: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.seal_into(&mut out, msg_type, flags, id, name, plaintext)?;
        Ok(out)
    }

    /// Appends a sealed frame to `out` (lets a writer batch several frames in
    /// one buffer). On error nothing is appended and the counter is unchanged.
    pub fn seal_into(
        &mut self,
        out: &mut Vec<u8>,
        msg_type: u8,
        flags: u8,
        id: u32,
        name: &str,
        plaintext: &[u8],
    ) -> Result<()> {
        if self.seq == u64::MAX {
            return Err(Error::SequenceExhausted);
        }
        let start = out.len();
        out.reserve(envelope::FIXED_HEADER_LEN + name.len() + plaintext.len() + TAG_LEN);
        envelope::encode_header(out, msg_type, flags, id, name)?;
        let header_end = out.len();
        out.extend_from_slice(plaintext);
        let nonce = nonce_for(self.seq);
        let tag = if flags & FLAG_ENC != 0 {
            let (head, body) = out.split_at_mut(header_end);
            self.key
                .seal_in_place_separate_tag(nonce, Aad::from(&head[start..]), body)
        } else {
            self.key
                .seal_in_place_separate_tag(nonce, Aad::from(&out[start..]), &mut [])
        };
        match tag {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.seq += 1;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(Error::Verify)
            }
        }
    }
}

/// A verified incoming frame; `body` is the plaintext.
#[derive(Debug)]
pub struct Opened<'a> {
    /// Type byte.
    pub msg_type: u8,
    /// Flag bits.
    pub flags: u8,
    /// Request id.
    pub id: u32,
    /// Route, channel or session id.
    pub name: &'a str,
    /// The verified (and, with ENC, decrypted) plaintext.
    pub body: &'a [u8],
}

impl Opened<'_> {
    /// Whether the frame was encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENC != 0
    }
}

/// Verifies and decrypts incoming frames of one direction.
pub struct Opener {
    key: LessSafeKey,
    seq: u64,
    max_name_len: usize,
}

impl core::fmt::Debug for Opener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Opener")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener expecting sequence number 0 first.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            key: aead_key(key),
            seq: 0,
            max_name_len: envelope::MAX_NAME_LEN,
        }
    }

    /// Refuses names longer than `max` bytes (capped at 1024).
    pub fn with_max_name_len(mut self, max: usize) -> Self {
        self.max_name_len = max.min(envelope::MAX_NAME_LEN);
        self
    }

    /// The sequence number expected next.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Verifies a frame in place and returns a view of its plaintext. Any
    /// failure is fatal for the connection (close 4400); the buffer's
    /// contents are then unspecified.
    pub fn open<'a>(&mut self, frame: &'a mut [u8]) -> Result<Opened<'a>> {
        let head = envelope::decode_fixed(frame, self.max_name_len)?;
        if frame.len() - head.header_len < TAG_LEN {
            return Err(EnvelopeError::ShortProtectedBody.into());
        }
        let (msg_type, flags, id, header_len) =
            (head.msg_type, head.flags, head.id, head.header_len);
        if self.seq == u64::MAX {
            return Err(Error::SequenceExhausted);
        }
        let nonce = nonce_for(self.seq);
        let plain_end = frame.len() - TAG_LEN;
        let (head, body): (&'a [u8], &'a [u8]) = if flags & FLAG_ENC != 0 {
            let (head, body) = frame.split_at_mut(header_len);
            match self.key.open_in_place(nonce, Aad::from(&*head), body) {
                Ok(plain) => (head, plain),
                Err(_) => return Err(Error::Verify),
            }
        } else {
            // The tag of an empty plaintext under aad = header || plaintext,
            // which is the frame up to its tag: verified without a copy.
            let frame: &'a [u8] = frame;
            let (aad, tag) = frame.split_at(plain_end);
            if self
                .key
                .open_in_place_separate_tag(nonce, Aad::from(aad), tag, &mut [])
                .is_err()
            {
                return Err(Error::Verify);
            }
            (&frame[..header_len], &frame[header_len..plain_end])
        };
        self.seq += 1;
        // The name's UTF-8 is checked once, here: a forged frame costs no
        // more than its tag check.
        let name = core::str::from_utf8(&head[envelope::FIXED_HEADER_LEN..])
            .map_err(|_| EnvelopeError::NameNotUtf8)?;
        Ok(Opened {
            msg_type,
            flags,
            id,
            name,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{FLAG_ERR, MessageType};

    const KEY: [u8; 32] = [7; 32];

    fn pair() -> (Sealer, Opener) {
        (Sealer::new(&KEY), Opener::new(&KEY))
    }

    #[test]
    fn plain_frames_stay_readable_and_verify() {
        let (mut s, mut o) = pair();
        let mut f = s
            .seal(MessageType::Request as u8, 0, 9, "sys.echo", b"hello")
            .unwrap();
        assert!(
            f.windows(5).any(|w| w == b"hello"),
            "plaintext visible to intermediaries"
        );
        let opened = o.open(&mut f).unwrap();
        assert_eq!(
            (opened.msg_type, opened.id, opened.name, opened.body),
            (0x10, 9, "sys.echo", &b"hello"[..])
        );
        assert!(!opened.is_encrypted());
    }

    #[test]
    fn encrypted_frames_hide_the_body() {
        let (mut s, mut o) = pair();
        let mut f = s
            .seal(0x10, FLAG_ENC, 1, "secret", b"top secret data")
            .unwrap();
        assert!(!f.windows(10).any(|w| w == b"top secret"));
        assert_eq!(o.open(&mut f).unwrap().body, b"top secret data");
    }

    #[test]
    fn every_flipped_bit_fails() {
        for flags in [0, FLAG_ENC, FLAG_ENC | FLAG_ERR] {
            let mut s = Sealer::new(&KEY);
            let f = s.seal(0x11, flags, 3, "r", b"payload").unwrap();
            for i in 0..f.len() {
                let mut t = f.clone();
                t[i] ^= 0x01;
                assert!(
                    Opener::new(&KEY).open(&mut t).is_err(),
                    "flip at byte {i} flags {flags}"
                );
            }
        }
    }

    #[test]
    fn replay_reorder_and_drop_fail() {
        let (mut s, _) = pair();
        let f0 = s.seal(0x10, 0, 1, "a", b"zero").unwrap();
        let f1 = s.seal(0x10, 0, 2, "a", b"one").unwrap();
        // Replay.
        let mut o = Opener::new(&KEY);
        assert!(o.open(&mut f0.clone()).is_ok());
        assert_eq!(o.open(&mut f0.clone()).unwrap_err(), Error::Verify);
        // Reorder / drop.
        let mut o = Opener::new(&KEY);
        assert_eq!(o.open(&mut f1.clone()).unwrap_err(), Error::Verify);
        // In order works.
        let (mut f0, mut f1) = (f0, f1);
        let mut o = Opener::new(&KEY);
        o.open(&mut f0).unwrap();
        o.open(&mut f1).unwrap();
        assert_eq!(o.next_seq(), 2);
    }

    #[test]
    fn wrong_key_and_short_body_fail() {
        let mut f = Sealer::new(&KEY).seal(0x10, 0, 1, "a", b"x").unwrap();
        assert_eq!(
            Opener::new(&[8; 32]).open(&mut f).unwrap_err(),
            Error::Verify
        );
        let mut short = envelope::encode(0x10, 0, 1, "a", &[0; 15]).unwrap();
        assert_eq!(
            Opener::new(&KEY).open(&mut short).unwrap_err(),
            Error::Envelope(EnvelopeError::ShortProtectedBody)
        );
    }

    #[test]
    fn a_name_that_is_not_utf8_fails_even_with_a_valid_tag() {
        // The name's UTF-8 is checked once, after the tag: a frame whose tag
        // is right but whose name is not UTF-8 must still be refused.
        for flags in [0, FLAG_ENC] {
            let mut frame = vec![0x10, flags, 0, 0, 0, 1, 0, 2, 0xc3, 0x28];
            let header_len = frame.len();
            frame.extend_from_slice(b"body");
            let key = aead_key(&KEY);
            let tag = if flags & FLAG_ENC != 0 {
                let (head, body) = frame.split_at_mut(header_len);
                key.seal_in_place_separate_tag(nonce_for(0), Aad::from(&*head), body)
            } else {
                key.seal_in_place_separate_tag(nonce_for(0), Aad::from(&frame[..]), &mut [])
            };
            frame.extend_from_slice(tag.unwrap().as_ref());
            let mut o = Opener::new(&KEY);
            assert_eq!(
                o.open(&mut frame).unwrap_err(),
                Error::Envelope(EnvelopeError::NameNotUtf8),
                "flags {flags}"
            );
        }
        // The same frame with a UTF-8 name opens: the tag above was right.
        let mut ok = Sealer::new(&KEY).seal(0x10, 0, 1, "é", b"body").unwrap();
        assert_eq!(Opener::new(&KEY).open(&mut ok).unwrap().name, "é");
    }

    #[test]
    fn seal_into_batches_frames() {
        let mut s = Sealer::new(&KEY);
        let mut buf = Vec::new();
        s.seal_into(&mut buf, 0x11, 0, 1, "", b"a").unwrap();
        let first_len = buf.len();
        s.seal_into(&mut buf, 0x11, FLAG_ENC, 2, "", b"b").unwrap();
        let mut o = Opener::new(&KEY);
        let (a, b) = buf.split_at_mut(first_len);
        assert_eq!(o.open(a).unwrap().body, b"a");
        assert_eq!(o.open(b).unwrap().body, b"b");
    }
}
