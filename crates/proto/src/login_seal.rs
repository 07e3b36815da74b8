//! The sealed login (protocol.md §4.1): every SCRAM message of
//! `PUT /auth/session` travels encrypted, so a recorded login shows neither
//! the user name nor anything a password guess could be tested against.
//!
//! ```text
//! client                                              auth node
//! seal_first_request(pk, client-first) ── {kid,enc,ct} ─▶ open_first_request
//!   └ login_key (HPKE export)                               └ login_key
//! login_key.exchange_key(sid)         ◀─ {sid, ct: box 1} ─ exchange_key(sid)
//! box 2 (client-final)                ── {sid, ct: box 2} ─▶ open box 2
//! open box 3                          ◀─ {ct: box 3} ───────  box 3 (v= or e=)
//! ```
//!
//! Request 1 is HPKE `mode_base` to the server key with
//! `info = "wsgate-v1 login"`; both sides export `login_key` from that
//! context. The server picks a fresh `sid` per exchange and both derive
//! `exchange_key = HKDF-SHA-256(salt = sid, ikm = login_key,
//! info = "wsgate-v1 login exchange")`; the later three messages are
//! AES-256-GCM boxes under it with the nonce `0^11 || m`. Each exchange key
//! seals each `m` at most once: the server consumes the exchange at the
//! second request, so no nonce is ever reused.

use aws_lc_rs::aead;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable as _, OpModeS, Serializable as _};
use ring::hkdf;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{Kem, ServerKeyPair};
use crate::rand_core::CryptoRng;
use crate::scram::ScramError;
use crate::{Error, Result, b64};

/// HPKE `info` of request 1.
pub const LOGIN_INFO: &[u8] = b"wsgate-v1 login";
/// HPKE exporter context of `login_key`.
pub const LOGIN_KEY_EXPORT: &[u8] = b"wsgate-v1 login key";
/// HKDF `info` of `exchange_key`.
pub const EXCHANGE_INFO: &[u8] = b"wsgate-v1 login exchange";
/// Request 1's plaintext is padded to a multiple of this many bytes.
pub const PAD_BLOCK: usize = 64;
/// Length of a raw exchange id (`sid`).
pub const SID_LEN: usize = 16;
/// Longest `ct` of request 1 a server opens (b64u characters): far above a
/// padded client-first with a 256-byte name and nonce, far below the HTTP
/// body limit.
pub const MAX_FIRST_CT_LEN: usize = 4096;

const SEAL_FAILED: Error = Error::Seal("sealed message did not open");

/// The outer body of request 1: `{"kid","enc","ct"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedFirstRequest {
    /// The key request 1 is sealed to.
    pub kid: String,
    /// b64u HPKE encapsulated key (32 bytes).
    pub enc: String,
    /// b64u HPKE ciphertext of the inner first request.
    pub ct: String,
}

/// Which message of an exchange a box is: its number `m`, the last byte of
/// its nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BoxNumber {
    /// Reply 1: `{"scram": server-first, "ip"}`.
    Reply1 = 1,
    /// Request 2: `{"scram": client-final}`.
    Request2 = 2,
    /// Reply 2: `{"scram": "v=…", session, user, expires_in}` or `{"scram": "e=…"}`.
    Reply2 = 3,
}

/// `login_key`: exported from request 1's HPKE context by both sides.
pub struct LoginKey(Zeroizing<[u8; 32]>);

impl core::fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LoginKey(..)")
    }
}

impl LoginKey {
    /// Wraps raw bytes (test vectors).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw key (test vectors only; never log it).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `exchange_key = HKDF-SHA-256(salt = raw sid, ikm = login_key,
    /// info = "wsgate-v1 login exchange", L = 32)`.
    pub fn exchange_key(&self, sid: &[u8; SID_LEN]) -> ExchangeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, sid).extract(&self.0[..]);
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is within HKDF-SHA-256's limit, so neither step can fail.
        if prk
            .expand(&[EXCHANGE_INFO], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out[..]))
            .is_err()
        {
            unreachable!("HKDF-SHA-256 can expand 32 bytes");
        }
        ExchangeKey(out)
    }
}

/// `exchange_key`: the key of one exchange's boxes.
#[derive(Clone)]
pub struct ExchangeKey(Zeroizing<[u8; 32]>);

impl core::fmt::Debug for ExchangeKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ExchangeKey(..)")
    }
}

impl ExchangeKey {
    /// Wraps raw bytes (the server's stored exchange record).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw key, for the server's exchange record (never log it).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> aead::LessSafeKey {
        match aead::UnboundKey::new(&aead::AES_256_GCM, &self.0[..]) {
            Ok(key) => aead::LessSafeKey::new(key),
            Err(_) => unreachable!("a 32-byte key is an AES-256-GCM key"),
        }
    }

    fn nonce(m: BoxNumber) -> aead::Nonce {
        let mut nonce = [0u8; 12];
        nonce[11] = m as u8;
        // Unique: each exchange key seals each `m` once (module docs).
        aead::Nonce::assume_unique_for_key(nonce)
    }

    /// `box(m, inner)`: b64u of the AES-256-GCM seal of `inner` (UTF-8 JSON).
    pub fn seal(&self, m: BoxNumber, inner: &[u8]) -> String {
        let mut out = inner.to_vec();
        if self
            .aead()
            .seal_in_place_append_tag(Self::nonce(m), aead::Aad::empty(), &mut out)
            .is_err()
        {
            unreachable!("AES-256-GCM seals any message under 64 GiB");
        }
        b64::encode_b64u(&out)
    }

    /// Opens `box(m, …)`; any failure (not b64u, wrong key, wrong `m`,
    /// tampered) is the same error.
    pub fn open(&self, m: BoxNumber, ct: &str) -> Result<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(b64::decode_b64u(ct).map_err(|_| SEAL_FAILED)?);
        let len = self
            .aead()
            .open_in_place(Self::nonce(m), aead::Aad::empty(), &mut buf[..])
            .map_err(|_| SEAL_FAILED)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// The inner first request, padded: exactly
/// `{"scram":"<client-first>","pad":"<n spaces>"}` with the fewest `n ≥ 0`
/// that make its UTF-8 length a multiple of [`PAD_BLOCK`], so the
/// ciphertext's length does not tell the user name's.
pub fn padded_first_request(client_first: &str) -> String {
    #[derive(Serialize)]
    struct Inner<'a> {
        scram: &'a str,
        pad: &'a str,
    }
    let unpadded = serde_json::to_string(&Inner {
        scram: client_first,
        pad: "",
    })
    .unwrap_or_else(|_| unreachable!("a struct of two strings serializes"));
    let spaces = (PAD_BLOCK - unpadded.len() % PAD_BLOCK) % PAD_BLOCK;
    // The spaces go inside the empty "pad" string, the last 2 bytes being `"}`.
    let (head, tail) = unpadded.split_at(unpadded.len() - 2);
    let mut padded = String::with_capacity(unpadded.len() + spaces);
    padded.push_str(head);
    padded.extend(core::iter::repeat_n(' ', spaces));
    padded.push_str(tail);
    padded
}

/// Reply 1's inner body: `{"scram":"<server-first>","ip":"<observed IP>"}`.
pub fn reply1_inner(server_first: &str, ip: &str) -> Zeroizing<Vec<u8>> {
    #[derive(Serialize)]
    struct Inner<'a> {
        scram: &'a str,
        ip: &'a str,
    }
    to_json(&Inner {
        scram: server_first,
        ip,
    })
}

/// Request 2's inner body: `{"scram":"<client-final>"}`.
pub fn request2_inner(client_final: &str) -> Zeroizing<Vec<u8>> {
    to_json(&ScramOnly {
        scram: client_final,
    })
}

/// A successful reply 2's inner body:
/// `{"scram":"v=…","session","user","expires_in"}`.
pub fn reply2_success_inner(
    server_final: &str,
    session: &str,
    user: &str,
    expires_in: u64,
) -> Zeroizing<Vec<u8>> {
    #[derive(Serialize)]
    struct Inner<'a> {
        scram: &'a str,
        session: &'a str,
        user: &'a str,
        expires_in: u64,
    }
    to_json(&Inner {
        scram: server_final,
        session,
        user,
        expires_in,
    })
}

/// A failed reply 2's inner body: `{"scram":"e=<code>"}`.
pub fn reply2_failure_inner(error: ScramError) -> Zeroizing<Vec<u8>> {
    to_json(&ScramOnly {
        scram: &error.server_final(),
    })
}

#[derive(Serialize)]
struct ScramOnly<'a> {
    scram: &'a str,
}

fn to_json(inner: &impl Serialize) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        serde_json::to_vec(inner)
            .unwrap_or_else(|_| unreachable!("a struct of strings and integers serializes")),
    )
}

/// Client side: seals `client_first` (padded) to the server key `pk` in
/// HPKE `mode_base`, returning request 1's outer body and `login_key`.
pub fn seal_first_request(
    rng: &mut impl CryptoRng,
    server_pk: &[u8; 32],
    client_first: &str,
) -> Result<(SealedFirstRequest, LoginKey)> {
    seal_first_plaintext(
        rng,
        server_pk,
        padded_first_request(client_first).as_bytes(),
    )
}

/// [`seal_first_request`] for an exact plaintext (tests build odd ones).
pub fn seal_first_plaintext(
    rng: &mut impl CryptoRng,
    server_pk: &[u8; 32],
    plaintext: &[u8],
) -> Result<(SealedFirstRequest, LoginKey)> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(server_pk)
        .map_err(|_| Error::InvalidKey("not an X25519 public key"))?;
    let (enc, mut ctx) = hpke::setup_sender_with_rng::<AesGcm256, HkdfSha256, Kem>(
        &OpModeS::Base,
        &pk,
        LOGIN_INFO,
        rng,
    )
    .map_err(|_| Error::Seal("HPKE setup failed"))?;
    let ct = ctx
        .seal(plaintext, b"")
        .map_err(|_| Error::Seal("HPKE seal failed"))?;
    let mut login_key = Zeroizing::new([0u8; 32]);
    ctx.export(LOGIN_KEY_EXPORT, &mut login_key[..])
        .map_err(|_| Error::Seal("HPKE export failed"))?;
    Ok((
        SealedFirstRequest {
            kid: crate::keys::kid_of(server_pk),
            enc: b64::encode_b64u(&enc.to_bytes()),
            ct: b64::encode_b64u(&ct),
        },
        LoginKey(login_key),
    ))
}

/// Server side: opens request 1 with `key` (the one its `kid` names; the
/// caller looks it up). Returns the inner plaintext and `login_key`; any
/// failure is one error, the `400 bad_seal` of protocol.md §4.1.
pub fn open_first_request(
    key: &ServerKeyPair,
    request: &SealedFirstRequest,
) -> Result<(Zeroizing<Vec<u8>>, LoginKey)> {
    if request.ct.len() > MAX_FIRST_CT_LEN {
        return Err(SEAL_FAILED);
    }
    let enc: [u8; 32] = b64::decode_b64u_array(&request.enc).map_err(|_| SEAL_FAILED)?;
    let ct = b64::decode_b64u(&request.ct).map_err(|_| SEAL_FAILED)?;
    let (plain, login_key) = key
        .recipient()
        .open_base_export(&enc, LOGIN_INFO, &ct, LOGIN_KEY_EXPORT)
        .map_err(|_| SEAL_FAILED)?;
    Ok((plain, LoginKey(login_key)))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    fn setup() -> (StdRng, ServerKeyPair) {
        let mut rng = StdRng::seed_from_u64(41);
        let key = ServerKeyPair::generate(&mut rng);
        (rng, key)
    }

    #[test]
    fn first_request_round_trips_and_both_sides_get_one_login_key() {
        let (mut rng, key) = setup();
        let (sealed, client_key) =
            seal_first_request(&mut rng, key.public_bytes(), "p=wsgate-v1,,n=alice,r=abc").unwrap();
        assert_eq!(sealed.kid, key.kid());
        let (plain, server_key) = open_first_request(&key, &sealed).unwrap();
        assert_eq!(client_key.as_bytes(), server_key.as_bytes());
        let inner: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(inner["scram"], "p=wsgate-v1,,n=alice,r=abc");
        assert_eq!(plain.len() % PAD_BLOCK, 0);
    }

    #[test]
    fn a_changed_byte_or_another_key_does_not_open() {
        let (mut rng, key) = setup();
        let (sealed, _) = seal_first_request(&mut rng, key.public_bytes(), "x").unwrap();
        let mut ct = b64::decode_b64u(&sealed.ct).unwrap();
        ct[3] ^= 1;
        let tampered = SealedFirstRequest {
            ct: b64::encode_b64u(&ct),
            ..sealed.clone()
        };
        assert_eq!(
            open_first_request(&key, &tampered).unwrap_err(),
            SEAL_FAILED
        );
        let other = ServerKeyPair::generate(&mut rng);
        assert!(open_first_request(&other, &sealed).is_err());
        for bad_enc in ["", "AAAA", &"A".repeat(44)] {
            let bad = SealedFirstRequest {
                enc: bad_enc.to_owned(),
                ..sealed.clone()
            };
            assert!(open_first_request(&key, &bad).is_err());
        }
        let long = SealedFirstRequest {
            ct: "A".repeat(MAX_FIRST_CT_LEN + 4),
            ..sealed
        };
        assert!(open_first_request(&key, &long).is_err());
    }

    #[test]
    fn padding_is_the_fewest_spaces_to_a_multiple_of_64() {
        for len in 0..200 {
            let cf = format!("p=wsgate-v1,,n={},r=n", "u".repeat(len));
            let padded = padded_first_request(&cf);
            assert_eq!(padded.len() % PAD_BLOCK, 0, "{padded}");
            let v: serde_json::Value = serde_json::from_str(&padded).unwrap();
            assert_eq!(v["scram"], cf.as_str());
            let pad = v["pad"].as_str().unwrap();
            assert!(pad.len() < PAD_BLOCK && pad.bytes().all(|b| b == b' '));
            assert!(padded.starts_with(r#"{"scram":""#) && padded.ends_with("\"}"));
        }
        // Multi-byte user names are counted in bytes.
        assert_eq!(padded_first_request("n=Ünï").len() % PAD_BLOCK, 0);
    }

    #[test]
    fn boxes_are_bound_to_their_key_and_number() {
        let login = LoginKey::from_bytes([9; 32]);
        let k1 = login.exchange_key(&[1; SID_LEN]);
        let k2 = login.exchange_key(&[2; SID_LEN]);
        assert_ne!(k1.as_bytes(), k2.as_bytes());
        let sealed = k1.seal(BoxNumber::Reply1, br#"{"scram":"r=x"}"#);
        assert_eq!(
            &k1.open(BoxNumber::Reply1, &sealed).unwrap()[..],
            br#"{"scram":"r=x"}"#
        );
        assert!(k1.open(BoxNumber::Reply2, &sealed).is_err(), "wrong m");
        assert!(k2.open(BoxNumber::Reply1, &sealed).is_err(), "wrong key");
        assert!(k1.open(BoxNumber::Reply1, "not b64u!").is_err());
        let mut raw = b64::decode_b64u(&sealed).unwrap();
        raw[0] ^= 0x80;
        assert!(k1.open(BoxNumber::Reply1, &b64::encode_b64u(&raw)).is_err());
    }
}
