//! The recipient side of HPKE (RFC 9180) for the one suite wsgate uses:
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, single-shot open
//! with an empty AAD — `mode_psk` for KEY_INIT (protocol.md §5.2) and
//! `mode_base` with one export for the sealed login's first request
//! (protocol.md §4.1).
//!
//! Why not the `hpke` crate here, as on the sealing side: opening KEY_INIT
//! is the server's cost of every new WebSocket connection, and opening a
//! login's first request the cost of every login. The `hpke` crate
//! computes X25519 on curve25519-dalek's portable ladder and re-derives the
//! recipient's public key from its private key at every decapsulation, two
//! scalar multiplications where one is needed. This module does the one
//! Diffie-Hellman on AWS-LC (assembly X25519), with the public key computed
//! once when the key is loaded, and the key schedule with AWS-LC's
//! HMAC-SHA-256 (HKDF with `L <= Nh` is one HMAC per expand). Same bytes:
//! `testdata/key_init*.json` (sealed by this crate and by pyhpke) and a
//! property test against the `hpke` crate's own open check it.

use aws_lc_rs::{aead, agreement, hmac};
use zeroize::Zeroizing;

use crate::keys::{AEAD_ID, KDF_ID, KEM_ID};
use crate::{Error, Result};

/// `mode_base` and `mode_psk` (RFC 9180 §5).
const MODE_BASE: u8 = 0x00;
const MODE_PSK: u8 = 0x01;
/// `Nsecret`, `Nk` (AES-256-GCM), `Nh`.
const N_SECRET: usize = 32;
const N_K: usize = 32;
const N_N: usize = 12;

/// `"KEM" || I2OSP(kem_id, 2)`.
const KEM_SUITE_ID: [u8; 5] = {
    let id = KEM_ID.to_be_bytes();
    [b'K', b'E', b'M', id[0], id[1]]
};

/// `"HPKE" || I2OSP(kem_id, 2) || I2OSP(kdf_id, 2) || I2OSP(aead_id, 2)`.
const HPKE_SUITE_ID: [u8; 10] = {
    let (k, d, a) = (
        KEM_ID.to_be_bytes(),
        KDF_ID.to_be_bytes(),
        AEAD_ID.to_be_bytes(),
    );
    [b'H', b'P', b'K', b'E', k[0], k[1], d[0], d[1], a[0], a[1]]
};

/// A plaintext and the 32-byte secret exported from its context.
pub(crate) type OpenedAndExported = (Zeroizing<Vec<u8>>, Zeroizing<[u8; 32]>);

/// The recipient's static X25519 key, parsed once.
pub(crate) struct RecipientKey {
    secret: agreement::PrivateKey,
    public: [u8; 32],
}

impl RecipientKey {
    /// Loads a raw X25519 private key whose public key is `public` (the
    /// caller computed it; it is part of the KEM context).
    pub(crate) fn new(secret: &[u8; 32], public: [u8; 32]) -> Result<Self> {
        let secret = agreement::PrivateKey::from_private_key(&agreement::X25519, secret)
            .map_err(|_| Error::InvalidKey("not an X25519 private key"))?;
        Ok(Self { secret, public })
    }

    /// `OpenPSK(enc, skR, info, aad = "", ct, psk, psk_id)`: the plaintext,
    /// or an error for any failure (bad `enc`, all-zero shared secret, wrong
    /// key, PSK or `info`, tampered ciphertext) — deliberately not saying
    /// which.
    pub(crate) fn open_psk(
        &self,
        enc: &[u8; 32],
        info: &[u8],
        psk: &[u8],
        psk_id: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        // RFC 9180 §5.1.2: mode_psk needs both, and a PSK of 32 bytes or more.
        if psk.len() < 32 || psk_id.is_empty() {
            return Err(OPEN_FAILED);
        }
        let schedule = KeySchedule::new(&self.decap(enc)?[..], MODE_PSK, info, psk, psk_id);
        schedule.open_single_shot(ct)
    }

    /// `SetupBaseR(enc, skR, info)`, then `Open(aad = "", ct)` and
    /// `Export(exporter_context, 32)` of that context: the plaintext and the
    /// exported secret, or an error for any failure, not saying which.
    pub(crate) fn open_base_export(
        &self,
        enc: &[u8; 32],
        info: &[u8],
        ct: &[u8],
        exporter_context: &[u8],
    ) -> Result<OpenedAndExported> {
        let schedule = KeySchedule::new(&self.decap(enc)?[..], MODE_BASE, info, &[], &[]);
        let plain = schedule.open_single_shot(ct)?;
        Ok((plain, schedule.export(exporter_context)))
    }

    /// `Decap(enc, skR)` of DHKEM(X25519, HKDF-SHA256) (§4.1).
    fn decap(&self, enc: &[u8; 32]) -> Result<Zeroizing<[u8; N_SECRET]>> {
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, enc);
        // AWS-LC refuses an all-zero shared secret (a low-order `enc`), the
        // check RFC 9180 §7.1.4 requires.
        agreement::agree(&self.secret, peer, OPEN_FAILED, |dh| {
            let eae_prk = labeled_extract(&[], &KEM_SUITE_ID, b"eae_prk", &[dh]);
            let eae_prk = hmac::Key::new(hmac::HMAC_SHA256, eae_prk.as_ref());
            Ok(labeled_expand::<N_SECRET>(
                &eae_prk,
                &KEM_SUITE_ID,
                b"shared_secret",
                &[enc, &self.public],
            ))
        })
    }
}

/// Every failure to open looks the same: no oracle.
const OPEN_FAILED: Error = Error::KeyInit("HPKE open failed");

/// The context `KeySchedule` (RFC 9180 §5.1) makes for one mode.
struct KeySchedule {
    key: Zeroizing<[u8; N_K]>,
    base_nonce: Zeroizing<[u8; N_N]>,
    /// `secret`, kept as an HMAC key for the exporter.
    secret: hmac::Key,
    context: [u8; 1 + 2 * 32],
}

impl KeySchedule {
    fn new(shared_secret: &[u8], mode: u8, info: &[u8], psk: &[u8], psk_id: &[u8]) -> Self {
        let psk_id_hash = labeled_extract(&[], &HPKE_SUITE_ID, b"psk_id_hash", &[psk_id]);
        let info_hash = labeled_extract(&[], &HPKE_SUITE_ID, b"info_hash", &[info]);
        let mut context = [0u8; 1 + 2 * 32];
        context[0] = mode;
        context[1..33].copy_from_slice(psk_id_hash.as_ref());
        context[33..].copy_from_slice(info_hash.as_ref());
        let secret = labeled_extract(shared_secret, &HPKE_SUITE_ID, b"secret", &[psk]);
        let secret = hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref());
        let key = labeled_expand::<N_K>(&secret, &HPKE_SUITE_ID, b"key", &[&context]);
        let base_nonce = labeled_expand::<N_N>(&secret, &HPKE_SUITE_ID, b"base_nonce", &[&context]);
        Self {
            key,
            base_nonce,
            secret,
            context,
        }
    }

    /// Single shot: sequence number 0, so the nonce is the base nonce.
    fn open_single_shot(&self, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, &self.key[..])
            .map(aead::LessSafeKey::new)
            .map_err(|_| OPEN_FAILED)?;
        let nonce = aead::Nonce::assume_unique_for_key(*self.base_nonce);
        let mut plain = Zeroizing::new(ct.to_vec());
        let len = key
            .open_in_place(nonce, aead::Aad::empty(), &mut plain[..])
            .map_err(|_| OPEN_FAILED)?
            .len();
        plain.truncate(len);
        Ok(plain)
    }

    /// `Export(exporter_context, 32)` (§5.3):
    /// `LabeledExpand(exporter_secret, "sec", exporter_context, 32)` with
    /// `exporter_secret = LabeledExpand(secret, "exp", context, Nh)`.
    fn export(&self, exporter_context: &[u8]) -> Zeroizing<[u8; 32]> {
        let exporter_secret =
            labeled_expand::<32>(&self.secret, &HPKE_SUITE_ID, b"exp", &[&self.context]);
        let exporter_secret = hmac::Key::new(hmac::HMAC_SHA256, &exporter_secret[..]);
        labeled_expand::<32>(
            &exporter_secret,
            &HPKE_SUITE_ID,
            b"sec",
            &[exporter_context],
        )
    }
}

/// `LabeledExtract(salt, label, ikm)` = `HMAC(salt, "HPKE-v1" || suite_id ||
/// label || ikm)`; an empty salt is HMAC's all-zero key, as HKDF says.
fn labeled_extract(salt: &[u8], suite_id: &[u8], label: &[u8], ikm: &[&[u8]]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, salt));
    ctx.update(b"HPKE-v1");
    ctx.update(suite_id);
    ctx.update(label);
    for part in ikm {
        ctx.update(part);
    }
    ctx.sign()
}

/// `LabeledExpand(prk, label, info, L)` for `L <= Nh`, where HKDF-Expand is
/// the first `L` bytes of `T(1) = HMAC(prk, labeled_info || 0x01)`.
fn labeled_expand<const L: usize>(
    prk: &hmac::Key,
    suite_id: &[u8],
    label: &[u8],
    info: &[&[u8]],
) -> Zeroizing<[u8; L]> {
    const { assert!(L <= 32) };
    let mut ctx = hmac::Context::with_key(prk);
    ctx.update(&(L as u16).to_be_bytes());
    ctx.update(b"HPKE-v1");
    ctx.update(suite_id);
    ctx.update(label);
    for part in info {
        ctx.update(part);
    }
    ctx.update(&[0x01]);
    let t1 = ctx.sign();
    let mut out = Zeroizing::new([0u8; L]);
    out.copy_from_slice(&t1.as_ref()[..L]);
    out
}

#[cfg(test)]
mod tests {
    use hpke::aead::AesGcm256;
    use hpke::kdf::HkdfSha256;
    use hpke::{OpModeR, OpModeS, PskBundle, Serializable as _};
    use proptest::prelude::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;
    use crate::keys::{Kem, ServerKeyPair};

    fn seal(
        seed: u64,
        pk: &[u8; 32],
        info: &[u8],
        psk: &[u8],
        psk_id: &[u8],
        plain: &[u8],
    ) -> ([u8; 32], Vec<u8>) {
        use hpke::Deserializable as _;
        let mut rng = StdRng::seed_from_u64(seed);
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(pk).unwrap();
        let (enc, ct) = hpke::single_shot_seal_with_rng::<AesGcm256, HkdfSha256, Kem>(
            &OpModeS::Psk(PskBundle::new(psk, psk_id).unwrap()),
            &pk,
            info,
            plain,
            b"",
            &mut rng,
        )
        .unwrap();
        (enc.to_bytes().into(), ct)
    }

    fn recipient(seed: u64) -> (ServerKeyPair, RecipientKey) {
        let pair = ServerKeyPair::generate(&mut StdRng::seed_from_u64(seed));
        let key = RecipientKey::new(pair.secret_bytes(), *pair.public_bytes()).unwrap();
        (pair, key)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the `hpke` crate seals, this opens to the same bytes, and
        /// the `hpke` crate's own open agrees.
        #[test]
        fn opens_what_the_hpke_crate_seals(
            seed in any::<u64>(),
            info in proptest::collection::vec(any::<u8>(), 0..80),
            psk in proptest::collection::vec(any::<u8>(), 32..64),
            psk_id in proptest::collection::vec(any::<u8>(), 1..48),
            plain in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let (pair, key) = recipient(seed);
            let (enc, ct) = seal(seed ^ 1, pair.public_bytes(), &info, &psk, &psk_id, &plain);
            let opened = key.open_psk(&enc, &info, &psk, &psk_id, &ct).unwrap();
            prop_assert_eq!(&opened[..], &plain[..]);

            use hpke::Deserializable as _;
            let theirs = hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
                &OpModeR::Psk(PskBundle::new(&psk, &psk_id).unwrap()),
                &pair.hpke_secret().unwrap(),
                &<Kem as hpke::Kem>::EncappedKey::from_bytes(&enc).unwrap(),
                &info,
                &ct,
                b"",
            )
            .unwrap();
            prop_assert_eq!(theirs, plain);
        }

        /// mode_base: the plaintext and the exported secret are the ones the
        /// `hpke` crate's sender context produces.
        #[test]
        fn base_open_and_export_match_the_hpke_crate(
            seed in any::<u64>(),
            info in proptest::collection::vec(any::<u8>(), 0..80),
            exporter_context in proptest::collection::vec(any::<u8>(), 0..40),
            plain in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            use hpke::Deserializable as _;
            let (pair, key) = recipient(seed);
            let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(pair.public_bytes()).unwrap();
            let mut rng = StdRng::seed_from_u64(seed ^ 2);
            let (enc, mut ctx) = hpke::setup_sender_with_rng::<AesGcm256, HkdfSha256, Kem>(
                &OpModeS::Base, &pk, &info, &mut rng,
            ).unwrap();
            let ct = ctx.seal(&plain, b"").unwrap();
            let mut exported = [0u8; 32];
            ctx.export(&exporter_context, &mut exported).unwrap();
            let enc: [u8; 32] = enc.to_bytes().into();
            let (opened, ours) = key.open_base_export(&enc, &info, &ct, &exporter_context).unwrap();
            prop_assert_eq!(&opened[..], &plain[..]);
            prop_assert_eq!(*ours, exported);
            // A psk-mode open of a base-mode seal must fail (mode is bound).
            prop_assert!(key.open_psk(&enc, &info, &[7; 32], b"x", &ct).is_err());
        }

        /// Changing any input byte makes the open fail.
        #[test]
        fn any_changed_input_fails(seed in any::<u64>(), which in 0usize..5, at in any::<prop::sample::Index>()) {
            let (pair, key) = recipient(seed);
            let (info, psk, psk_id) = (b"wsgate-v1 key\0nonce".to_vec(), [7u8; 32], b"sid".to_vec());
            let (mut enc, mut ct) = seal(seed, pair.public_bytes(), &info, &psk, &psk_id, &[1; 32]);
            let (mut info, mut psk, mut psk_id) = (info, psk.to_vec(), psk_id);
            let target: &mut [u8] = match which {
                0 => &mut enc,
                1 => &mut ct,
                2 => &mut info,
                3 => &mut psk,
                _ => &mut psk_id,
            };
            let i = at.index(target.len());
            target[i] ^= 0x01;
            prop_assert!(key.open_psk(&enc, &info, &psk, &psk_id, &ct).is_err());
        }
    }

    #[test]
    fn low_order_enc_is_refused() {
        let (pair, key) = recipient(3);
        let (_, ct) = seal(4, pair.public_bytes(), b"i", &[7; 32], b"sid", &[1; 32]);
        // u = 0 and u = 1 (points of order 2 and 4): a clamped scalar is a
        // multiple of 8, so the shared secret is all zero.
        let mut u1 = [0u8; 32];
        u1[0] = 1;
        for enc in [[0u8; 32], u1] {
            assert!(key.open_psk(&enc, b"i", &[7; 32], b"sid", &ct).is_err());
        }
    }

    #[test]
    fn short_psk_or_empty_psk_id_is_refused() {
        let (pair, key) = recipient(5);
        let (enc, ct) = seal(6, pair.public_bytes(), b"i", &[7; 32], b"sid", &[1; 32]);
        assert!(key.open_psk(&enc, b"i", &[7; 32], b"sid", &ct).is_ok());
        assert!(key.open_psk(&enc, b"i", &[7; 31], b"sid", &ct).is_err());
        assert!(key.open_psk(&enc, b"i", &[7; 32], b"", &ct).is_err());
    }
}
