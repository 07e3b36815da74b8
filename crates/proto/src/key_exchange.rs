//! Key establishment on the WebSocket (protocol.md §5.2): HELLO, KEY_INIT with the
//! HPKE-sealed dynamic password, KEY_ACK, and the per-direction traffic keys.
//!
//! KEY_INIT is an HPKE `mode_psk` single-shot seal to the server's static key
//! with `psk = session_key` and `psk_id = session id`, so only a client that
//! completed the SCRAM login can produce one the server opens, and `info`
//! carries this connection's HELLO nonce, so a KEY_INIT replayed on another
//! connection fails to open.

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable as _, OpModeS, PskBundle, Serializable as _};
use ring::hkdf;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{Kem, ServerKeyPair};
use crate::protect::{Opener, Sealer, TrafficKey};
use crate::rand_core::CryptoRng;
use crate::{Error, Result, b64};

/// Length of the HELLO nonce.
pub const HELLO_NONCE_LEN: usize = 32;
/// Raw length of a key id (`kid`, the first bytes of SHA-256(pk)).
pub const KID_LEN: usize = 8;
/// Raw length of KEY_INIT's `enc`: an X25519 public key.
pub const KEY_INIT_ENC_LEN: usize = 32;
/// Raw length of KEY_INIT's `ct`: the 32-byte dynamic password and the
/// AES-GCM tag.
pub const KEY_INIT_CT_LEN: usize = 32 + crate::envelope::TAG_LEN;
/// Length of the KEY_INIT body as clients write it: compact JSON
/// `{"kid":"…","enc":"…","ct":"…"}` (145 bytes).
pub const KEY_INIT_BODY_LEN: usize = r#"{"kid":"","enc":"","ct":""}"#.len()
    + b64::b64u_len(KID_LEN)
    + b64::b64u_len(KEY_INIT_ENC_LEN)
    + b64::b64u_len(KEY_INIT_CT_LEN);

/// The largest KEY_INIT message: envelope header, a name (the session id)
/// of up to `max_name_len` bytes and the body. A receiver can refuse a
/// larger first message unread (protocol.md §5.2). Real session ids are 22
/// characters, so a client's KEY_INIT fits with room to spare for JSON
/// written differently.
pub const fn key_init_max_len(max_name_len: usize) -> usize {
    crate::envelope::FIXED_HEADER_LEN + max_name_len + KEY_INIT_BODY_LEN
}
/// The dynamic password: 32 random bytes made by the client.
pub type DynamicPassword = Zeroizing<[u8; 32]>;

/// Body of HELLO (server → client, unprotected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version, 1.
    pub v: u32,
    /// b64u of 32 random bytes.
    pub nonce: String,
    /// The IP the server observes for this connection.
    pub ip: String,
    /// Accepted key ids, current first.
    pub keys: Vec<String>,
}

impl Hello {
    /// The raw nonce, checked to be 32 bytes.
    pub fn raw_nonce(&self) -> Result<[u8; HELLO_NONCE_LEN]> {
        b64::decode_b64u_array(&self.nonce)
            .map_err(|_| Error::KeyInit("HELLO nonce is not 32 bytes of b64u"))
    }
}

/// Body of KEY_INIT (client → server, unprotected; name = session id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInit {
    /// The key the dynamic password is sealed to.
    pub kid: String,
    /// b64u HPKE encapsulated key (32 bytes).
    pub enc: String,
    /// b64u HPKE ciphertext (48 bytes).
    pub ct: String,
}

/// Body of KEY_ACK (server → client, first protected frame, ENC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAck {
    /// The stored user name.
    pub user: String,
    /// Whole seconds left in the session.
    pub expires_in: u64,
}

/// HPKE `info`: `"wsgate-v1 key" || 0x00 || nonce`.
pub fn hpke_info(hello_nonce: &[u8; HELLO_NONCE_LEN]) -> Vec<u8> {
    let mut info = Vec::with_capacity(14 + HELLO_NONCE_LEN);
    info.extend_from_slice(b"wsgate-v1 key\0");
    info.extend_from_slice(hello_nonce);
    info
}

/// Client side: seals `dynamic_password` into a KEY_INIT body.
pub fn seal_key_init(
    rng: &mut impl CryptoRng,
    server_pk: &[u8; 32],
    session_id: &str,
    session_key: &[u8; 32],
    hello_nonce: &[u8; HELLO_NONCE_LEN],
    dynamic_password: &[u8; 32],
) -> Result<KeyInit> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(server_pk)
        .map_err(|_| Error::InvalidKey("not an X25519 public key"))?;
    let psk = PskBundle::new(session_key, session_id.as_bytes())
        .map_err(|_| Error::KeyInit("empty session id"))?;
    let (enc, ct) = hpke::single_shot_seal_with_rng::<AesGcm256, HkdfSha256, Kem>(
        &OpModeS::Psk(psk),
        &pk,
        &hpke_info(hello_nonce),
        dynamic_password,
        b"",
        rng,
    )
    .map_err(|_| Error::KeyInit("HPKE seal failed"))?;
    Ok(KeyInit {
        kid: crate::keys::kid_of(server_pk),
        enc: b64::encode_b64u(&enc.to_bytes()),
        ct: b64::encode_b64u(&ct),
    })
}

/// Parses a KEY_INIT body. Malformed → the connection closes with 4400.
pub fn parse_key_init(body: &[u8]) -> Result<KeyInit> {
    let ki: KeyInit = serde_json::from_slice(body)
        .map_err(|_| Error::KeyInit("KEY_INIT body is not the expected JSON"))?;
    let enc_ok = b64::decode_b64u(&ki.enc).is_ok_and(|e| e.len() == KEY_INIT_ENC_LEN);
    let ct_ok = b64::decode_b64u(&ki.ct).is_ok_and(|c| c.len() == KEY_INIT_CT_LEN);
    let kid_ok = b64::decode_b64u(&ki.kid).is_ok_and(|k| k.len() == KID_LEN);
    if !(enc_ok && ct_ok && kid_ok) {
        return Err(Error::KeyInit(
            "KEY_INIT fields have the wrong encoding or length",
        ));
    }
    Ok(ki)
}

/// Server side: opens a KEY_INIT with the key its `kid` names (the caller
/// has already checked that it is the key the session is bound to). Any
/// failure → close 4401.
pub fn open_key_init(
    key: &ServerKeyPair,
    key_init: &KeyInit,
    session_id: &str,
    session_key: &[u8; 32],
    hello_nonce: &[u8; HELLO_NONCE_LEN],
) -> Result<DynamicPassword> {
    let enc: [u8; 32] = b64::decode_b64u_array(&key_init.enc)
        .map_err(|_| Error::KeyInit("enc is not 32 bytes of b64u"))?;
    let ct = b64::decode_b64u(&key_init.ct)?;
    if session_id.is_empty() {
        return Err(Error::KeyInit("empty session id"));
    }
    let plain = key.recipient().open_psk(
        &enc,
        &hpke_info(hello_nonce),
        session_key,
        session_id.as_bytes(),
        &ct,
    )?;
    let mut dp = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(Error::KeyInit("dynamic password is not 32 bytes"));
    }
    dp.copy_from_slice(&plain);
    Ok(dp)
}

/// The two traffic keys derived from the dynamic password.
#[derive(Clone)]
pub struct TrafficKeys {
    /// Client → server.
    pub c2s: TrafficKey,
    /// Server → client.
    pub s2c: TrafficKey,
}

impl core::fmt::Debug for TrafficKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TrafficKeys(..)")
    }
}

impl TrafficKeys {
    /// `HKDF-SHA-256(salt = HELLO nonce, ikm = dp, info = "wsgate-v1 c2s"/"wsgate-v1 s2c", L = 32)`.
    pub fn derive(dynamic_password: &[u8; 32], hello_nonce: &[u8; HELLO_NONCE_LEN]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, hello_nonce).extract(dynamic_password);
        let expand = |label: &[u8]| {
            let mut out = Zeroizing::new([0u8; 32]);
            // 32 bytes is within HKDF-SHA-256's limit, so neither step can fail.
            if prk
                .expand(&[label], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut out[..]))
                .is_err()
            {
                unreachable!("HKDF-SHA-256 can expand 32 bytes");
            }
            out
        };
        Self {
            c2s: expand(b"wsgate-v1 c2s"),
            s2c: expand(b"wsgate-v1 s2c"),
        }
    }

    /// Server view: seal with s2c, open with c2s.
    pub fn server_pair(&self) -> (Sealer, Opener) {
        (Sealer::new(&self.s2c), Opener::new(&self.c2s))
    }

    /// Client view: seal with c2s, open with s2c.
    pub fn client_pair(&self) -> (Sealer, Opener) {
        (Sealer::new(&self.c2s), Opener::new(&self.s2c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn setup() -> (StdRng, ServerKeyPair, [u8; 32], [u8; 32], [u8; 32]) {
        let mut rng = StdRng::seed_from_u64(1);
        let key = ServerKeyPair::generate(&mut rng);
        (rng, key, [3; 32], [4; 32], [5; 32])
    }

    #[test]
    fn key_init_round_trips() {
        let (mut rng, key, session_key, nonce, dp) = setup();
        let ki = seal_key_init(
            &mut rng,
            key.public_bytes(),
            "sid",
            &session_key,
            &nonce,
            &dp,
        )
        .unwrap();
        assert_eq!(ki.kid, key.kid());
        let body = serde_json::to_vec(&ki).unwrap();
        // The size the pre-KEY_INIT limit is made of.
        assert_eq!(body.len(), KEY_INIT_BODY_LEN);
        assert_eq!(KEY_INIT_BODY_LEN, 145);
        let message = crate::envelope::encode(0x02, 0, 0, "sid", &body).unwrap();
        assert_eq!(message.len(), key_init_max_len(3));
        let parsed = parse_key_init(&body).unwrap();
        let opened = open_key_init(&key, &parsed, "sid", &session_key, &nonce).unwrap();
        assert_eq!(*opened, dp);
    }

    #[test]
    fn key_init_is_bound_to_session_key_session_id_and_hello_nonce() {
        let (mut rng, key, session_key, nonce, dp) = setup();
        let ki = seal_key_init(
            &mut rng,
            key.public_bytes(),
            "sid",
            &session_key,
            &nonce,
            &dp,
        )
        .unwrap();
        assert!(
            open_key_init(&key, &ki, "sid", &[9; 32], &nonce).is_err(),
            "wrong session key"
        );
        assert!(
            open_key_init(&key, &ki, "other", &session_key, &nonce).is_err(),
            "wrong session id"
        );
        assert!(
            open_key_init(&key, &ki, "sid", &session_key, &[6; 32]).is_err(),
            "replay on another connection"
        );
        let other = ServerKeyPair::generate(&mut rng);
        assert!(
            open_key_init(&other, &ki, "sid", &session_key, &nonce).is_err(),
            "wrong server key"
        );
    }

    #[test]
    fn malformed_key_init_bodies_are_refused() {
        for body in [
            &b"not json"[..],
            br#"{"kid":"AAAAAAAAAAA","enc":"AA","ct":"AA"}"#,
            br#"{"kid":"x","enc":"y"}"#,
            b"[]",
        ] {
            assert!(parse_key_init(body).is_err());
        }
    }

    #[test]
    fn traffic_keys_differ_by_direction() {
        let keys = TrafficKeys::derive(&[1; 32], &[2; 32]);
        assert_ne!(*keys.c2s, *keys.s2c);
        let (mut client_sealer, _) = keys.client_pair();
        let (_, mut server_opener) = keys.server_pair();
        let mut f = client_sealer.seal(0x10, 1, 1, "a", b"x").unwrap();
        assert_eq!(server_opener.open(&mut f).unwrap().body, b"x");
    }
}
