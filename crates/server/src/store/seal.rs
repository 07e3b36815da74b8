//! Sealed state records (issue 11, item 4): the state store is not a
//! bearer-credential store.
//!
//! Every session record and every login exchange is sealed with
//! AES-256-GCM before it reaches a backend, under a key derived from
//! `server_secret` (which only the nodes hold):
//!
//! ```text
//! key    = HKDF-SHA256(ikm = server_secret, salt = "", info = "wsgate-v1 state record key")
//! record = version (1 byte, 0x01) || expires_at (u64 BE, unix seconds)
//!          || nonce (12 random bytes) || AES-256-GCM(plaintext) || tag (16)
//! aad    = "wsgate-v1 state record" || 0x00 || kind ("session" | "exchange")
//!          || len(id) (u32 BE) || id || version || expires_at
//! ```
//!
//! The record's id is in the AAD, so a sealed record copied under another
//! id does not open; so is its kind (an exchange cannot pass for a
//! session) and every field kept in clear beside the ciphertext (the
//! version and `expires_at`, which a backend needs to expire the record),
//! so none can be altered. A record that does not open is treated as
//! absent: logged at warn with its kind and a short prefix of its id,
//! nothing more, and counted (`wsgate_state_records_refused_total`).
//!
//! Nonces are random: with 96 bits, a key must seal fewer than 2^32
//! records (NIST SP 800-38D §8.3) — two per login (its exchange and its
//! session), so about two billion logins per `server_secret`.
//!
//! [`SealedState`] is the one boundary: the node holds it instead of the
//! bare backend, and the backend trait ([`StateStore`]) only carries sealed
//! sessions ([`SealedSession`]) and sealed exchange bytes, so no backend
//! (memory, Redis, the `sessions.sqlite3` journal) ever sees a session key
//! and none can forget to seal.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use super::{
    ExchangeAdmission, ExchangeQuota, SealedSession, SessionRecord, StateStore, StoreError,
    unix_now,
};
use crate::keys::ServerSecret;
use crate::metrics::Counter;

/// HKDF `info` of the record key.
const KEY_INFO: &[u8] = b"wsgate-v1 state record key";
/// First part of every record's AAD.
const AAD_LABEL: &[u8] = b"wsgate-v1 state record";
/// The record format this build writes and reads.
const VERSION: u8 = 1;
/// Version and `expires_at`: the clear header of a record.
pub(super) const HEADER_LEN: usize = 1 + 8;
const TAG_LEN: usize = 16;

/// How far node clocks may disagree. An exchange's sealed deadline is its
/// TTL plus this: it only bounds how long a copied exchange can be replayed
/// into Redis; the backend expires the exchange at its TTL anyway.
const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// What a record is; part of its AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Session,
    Exchange,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Exchange => "exchange",
        }
    }
}

/// `value` as JSON in one buffer allocated at its exact size: growing a
/// buffer would leave copies of the secrets in it behind, unzeroized.
pub(crate) fn to_json_zeroizing<T: serde::Serialize>(
    value: &T,
) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    /// Counts what would be written.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    let mut out = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *out, value)?;
    Ok(out)
}

/// The clear `expires_at` of a sealed record, if it is one.
pub(super) fn header_expires_at(blob: &[u8]) -> Option<u64> {
    let (version, rest) = blob.split_first()?;
    let expires: &[u8; 8] = rest.first_chunk()?;
    (*version == VERSION).then(|| u64::from_be_bytes(*expires))
}

/// The AEAD of state records, keyed from `server_secret`.
pub(crate) struct RecordSeal {
    key: LessSafeKey,
}

impl fmt::Debug for RecordSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordSeal(..)")
    }
}

impl RecordSeal {
    /// The seal of every node holding `secret`.
    pub(crate) fn new(secret: &ServerSecret) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(secret.as_bytes());
        let mut raw = Zeroizing::new([0u8; 32]);
        // 32 bytes from HKDF-SHA256 and a 32-byte AES-256 key cannot fail.
        let filled = prk
            .expand(&[KEY_INFO], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut raw[..]));
        let key = filled.and_then(|()| UnboundKey::new(&AES_256_GCM, &raw[..]));
        match key {
            Ok(k) => Self {
                key: LessSafeKey::new(k),
            },
            Err(_) => unreachable!("HKDF-SHA256 gives 32 bytes, AES-256-GCM takes them"),
        }
    }

    fn aad(kind: Kind, id: &str, header: &[u8]) -> Vec<u8> {
        let label = kind.label().as_bytes();
        let mut aad = Vec::with_capacity(AAD_LABEL.len() + 1 + label.len() + 4 + id.len() + 9);
        aad.extend_from_slice(AAD_LABEL);
        aad.push(0);
        aad.extend_from_slice(label);
        // Ids are short (sids, session ids); one past u32 would not be.
        let len = u32::try_from(id.len()).unwrap_or(u32::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(id.as_bytes());
        aad.extend_from_slice(header);
        aad
    }

    /// Seals `plaintext` as the record `id` of `kind`, `expires_at` in clear.
    pub(crate) fn seal(&self, kind: Kind, id: &str, expires_at: u64, plaintext: &[u8]) -> Vec<u8> {
        let nonce = crate::random_bytes::<NONCE_LEN>();
        // Sized once: no reallocation leaves a copy of the plaintext behind.
        let mut blob = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        blob.push(VERSION);
        blob.extend_from_slice(&expires_at.to_be_bytes());
        let aad = Self::aad(kind, id, &blob);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(plaintext);
        let body = HEADER_LEN + NONCE_LEN;
        let tag = self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut blob[body..],
        );
        match tag {
            Ok(tag) => blob.extend_from_slice(tag.as_ref()),
            // Only a plaintext beyond GCM's 64 GiB bound fails.
            Err(_) => unreachable!("state records are far below AES-GCM's length bound"),
        }
        blob
    }

    /// Opens the record `id` of `kind`: its clear `expires_at` and its
    /// plaintext, or None if it was not sealed by this key as exactly that.
    pub(crate) fn open(
        &self,
        kind: Kind,
        id: &str,
        blob: &[u8],
    ) -> Option<(u64, Zeroizing<Vec<u8>>)> {
        let expires_at = header_expires_at(blob)?;
        let (header, rest) = blob.split_at_checked(HEADER_LEN)?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        if sealed.len() < TAG_LEN {
            return None;
        }
        let aad = Self::aad(kind, id, header);
        let mut buf = Zeroizing::new(sealed.to_vec());
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(&aad[..]),
                &mut buf[..],
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some((expires_at, buf))
    }
}

/// The state store as the node uses it: the backend, with every session and
/// exchange sealed on the way in and opened on the way out.
///
/// Dereferences to the backend for everything that holds no secret
/// (failure counters, revocations, events, health). The session and
/// exchange methods here shadow the backend's, which only take and give
/// sealed records.
#[derive(Clone)]
pub(crate) struct SealedState {
    backend: Arc<dyn StateStore>,
    seal: Arc<RecordSeal>,
    refused: Arc<Counter>,
}

impl fmt::Debug for SealedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedState")
            .field("backend", &self.backend)
            .field("refused", &self.refused.get())
            .finish_non_exhaustive()
    }
}

impl Deref for SealedState {
    type Target = Arc<dyn StateStore>;

    fn deref(&self) -> &Self::Target {
        &self.backend
    }
}

/// A short prefix of a record id for the log: enough to correlate, not
/// enough to use (ids are also chosen by clients: escaped by Debug).
fn id_prefix(id: &str) -> String {
    id.chars().take(6).collect()
}

impl SealedState {
    /// `backend` behind the seal of `secret`; refused records are counted
    /// in `refused`.
    pub(crate) fn new(
        backend: Arc<dyn StateStore>,
        secret: &ServerSecret,
        refused: Arc<Counter>,
    ) -> Self {
        Self {
            backend,
            seal: Arc::new(RecordSeal::new(secret)),
            refused,
        }
    }

    /// The bare backend (sealed records only).
    pub(crate) fn backend(&self) -> &Arc<dyn StateStore> {
        &self.backend
    }

    /// Records that did not open, since this node started.
    #[cfg(test)]
    pub(crate) fn records_refused(&self) -> u64 {
        self.refused.get()
    }

    fn refuse(&self, kind: Kind, id: &str) {
        self.refused.inc();
        tracing::warn!(
            kind = kind.label(),
            id_prefix = ?id_prefix(id),
            "a state record did not open (forged, copied, altered, or sealed under another \
             server_secret): treated as absent"
        );
    }

    /// Seals and stores a session; it lives until its `expires_at`.
    pub(crate) async fn put_session(
        &self,
        id: &str,
        record: &SessionRecord,
    ) -> Result<(), StoreError> {
        let plain = to_json_zeroizing(record)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode the session record ({e})")))?;
        let sealed = self.seal.seal(Kind::Session, id, record.expires_at, &plain);
        self.backend
            .put_session(id, &SealedSession::from_stored(sealed))
            .await
    }

    /// The session `id`; None if unknown, expired, revoked, or if its record
    /// does not open.
    pub(crate) async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let Some(sealed) = self.backend.get_session(id).await? else {
            return Ok(None);
        };
        let opened = self
            .seal
            .open(Kind::Session, id, sealed.as_bytes())
            .and_then(|(expires_at, plain)| {
                let record = serde_json::from_slice::<SessionRecord>(&plain).ok()?;
                // The clear expiry is authenticated; the sealed one must agree.
                (record.expires_at == expires_at).then_some(record)
            });
        let Some(record) = opened else {
            self.refuse(Kind::Session, id);
            return Ok(None);
        };
        Ok((!record.is_expired_at(unix_now())).then_some(record))
    }

    /// Seals and stores a login exchange; see [`StateStore::put_exchange`].
    pub(crate) async fn put_exchange(
        &self,
        sid: &str,
        state: Vec<u8>,
        ttl: Duration,
        quota: ExchangeQuota<'_>,
    ) -> Result<ExchangeAdmission, StoreError> {
        let state = Zeroizing::new(state);
        let deadline = unix_now()
            .saturating_add(ttl.as_secs())
            .saturating_add(1 + CLOCK_SKEW.as_secs());
        let sealed = self.seal.seal(Kind::Exchange, sid, deadline, &state);
        self.backend.put_exchange(sid, sealed, ttl, quota).await
    }

    /// Takes the exchange `sid` (at most once); None if unknown, taken,
    /// expired, or if its record does not open.
    pub(crate) async fn take_exchange(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(sealed) = self.backend.take_exchange(sid).await? else {
            return Ok(None);
        };
        let sealed = Zeroizing::new(sealed);
        match self.seal.open(Kind::Exchange, sid, &sealed) {
            Some((deadline, mut plain)) if unix_now() <= deadline => {
                Ok(Some(std::mem::take(&mut *plain)))
            }
            // Authentic but past its deadline: copied back in after its time.
            _ => {
                self.refuse(Kind::Exchange, sid);
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn seal(byte: u8) -> RecordSeal {
        RecordSeal::new(&ServerSecret::from_bytes([byte; 32]))
    }

    #[test]
    fn a_record_opens_only_as_itself_under_its_key() {
        let s = seal(1);
        let blob = s.seal(Kind::Session, "id-1", 1234, b"secret plaintext");
        let (exp, plain) = s.open(Kind::Session, "id-1", &blob).unwrap();
        assert_eq!((exp, &plain[..]), (1234, &b"secret plaintext"[..]));
        assert!(!blob.windows(6).any(|w| w == b"secret"));
        // Another id, another kind, another key.
        assert!(s.open(Kind::Session, "id-2", &blob).is_none());
        assert!(s.open(Kind::Exchange, "id-1", &blob).is_none());
        assert!(seal(2).open(Kind::Session, "id-1", &blob).is_none());
        // The clear expiry cannot be moved, nor any byte changed.
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(s.open(Kind::Session, "id-1", &bad).is_none(), "byte {i}");
        }
        // Truncated anywhere.
        for n in 0..blob.len() {
            assert!(
                s.open(Kind::Session, "id-1", &blob[..n]).is_none(),
                "len {n}"
            );
        }
        // An id that is a prefix plus the next byte of the header does not
        // collide (the id is length-prefixed).
        assert!(s.open(Kind::Session, "id-", &blob).is_none());
    }

    #[test]
    fn nonces_differ_between_seals() {
        let s = seal(1);
        let a = s.seal(Kind::Exchange, "x", 1, b"same");
        let b = s.seal(Kind::Exchange, "x", 1, b"same");
        assert_ne!(a, b);
    }
}
