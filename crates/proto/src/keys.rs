//! The server's static X25519 key pair, and how it is named on the wire:
//! `kid = b64u(SHA-256(pk)[0..8])`, `fp = b64u(SHA-256(pk))`.

use std::sync::Arc;

use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, Kem as _, Serializable as _};
use ring::digest;
use zeroize::Zeroizing;

use crate::hpke_recipient::RecipientKey;
use crate::rand_core::CryptoRng;
use crate::{Error, Result, b64};

/// HPKE KEM id: DHKEM(X25519, HKDF-SHA256).
pub const KEM_ID: u16 = 0x0020;
/// HPKE KDF id: HKDF-SHA256.
pub const KDF_ID: u16 = 0x0001;
/// HPKE AEAD id: AES-256-GCM.
pub const AEAD_ID: u16 = 0x0002;

pub(crate) type Kem = X25519HkdfSha256;

/// `kid` of a raw public key.
pub fn kid_of(pk: &[u8; 32]) -> String {
    b64::encode_b64u(&digest::digest(&digest::SHA256, pk).as_ref()[..8])
}

/// `fp` of a raw public key: 43 b64u characters.
pub fn fingerprint_of(pk: &[u8; 32]) -> String {
    b64::encode_b64u(digest::digest(&digest::SHA256, pk).as_ref())
}

/// A server key pair. The secret is zeroized on drop and never printed.
#[derive(Clone)]
pub struct ServerKeyPair {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    kid: String,
    fingerprint: String,
    /// The private key parsed once for opening KEY_INITs.
    recipient: Arc<RecipientKey>,
}

impl core::fmt::Debug for ServerKeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerKeyPair")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ServerKeyPair {
    /// A fresh key pair from `rng`.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let (sk, _) = Kem::gen_keypair_with_rng(rng);
        let mut raw = Zeroizing::new([0u8; 32]);
        raw.copy_from_slice(&sk.to_bytes());
        Self::from_secret(*raw).unwrap_or_else(|_| unreachable!("a generated key is valid"))
    }

    /// The key pair of a raw X25519 private key.
    pub fn from_secret(secret: [u8; 32]) -> Result<Self> {
        let secret = Zeroizing::new(secret);
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&secret[..])
            .map_err(|_| Error::InvalidKey("not an X25519 private key"))?;
        let mut public = [0u8; 32];
        public.copy_from_slice(&Kem::sk_to_pk(&sk).to_bytes());
        Ok(Self {
            kid: kid_of(&public),
            fingerprint: fingerprint_of(&public),
            recipient: Arc::new(RecipientKey::new(&secret, public)?),
            secret,
            public,
        })
    }

    /// The raw private key, for persisting to a 0600 file.
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The raw public key.
    pub fn public_bytes(&self) -> &[u8; 32] {
        &self.public
    }

    /// `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `fp`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn recipient(&self) -> &RecipientKey {
        &self.recipient
    }

    #[cfg(test)]
    pub(crate) fn hpke_secret(&self) -> Result<<Kem as hpke::Kem>::PrivateKey> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&self.secret[..])
            .map_err(|_| Error::InvalidKey("not an X25519 private key"))
    }
}

/// One entry of `GET /auth/key`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublicKeyEntry {
    /// Key id.
    pub kid: String,
    /// Always 32 (X25519).
    pub kem_id: u16,
    /// Always 1 (HKDF-SHA256).
    pub kdf_id: u16,
    /// Always 2 (AES-256-GCM).
    pub aead_id: u16,
    /// b64u raw public key.
    pub pk: String,
}

impl PublicKeyEntry {
    /// The entry for a public key.
    pub fn for_public_key(pk: &[u8; 32]) -> Self {
        Self {
            kid: kid_of(pk),
            kem_id: KEM_ID,
            kdf_id: KDF_ID,
            aead_id: AEAD_ID,
            pk: b64::encode_b64u(pk),
        }
    }

    /// The raw public key, checking that `kid` and the suite match it.
    pub fn public_key(&self) -> Result<[u8; 32]> {
        let pk: [u8; 32] = b64::decode_b64u_array(&self.pk)
            .map_err(|_| Error::InvalidKey("pk is not 32 bytes of b64u"))?;
        if (self.kem_id, self.kdf_id, self.aead_id) != (KEM_ID, KDF_ID, AEAD_ID) {
            return Err(Error::InvalidKey("unsupported HPKE suite"));
        }
        if kid_of(&pk) != self.kid {
            return Err(Error::InvalidKey("kid does not match pk"));
        }
        Ok(pk)
    }
}

/// The body of `GET /auth/key`: the current key first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeySetResponse {
    /// Current key first, then keys still accepted.
    pub keys: Vec<PublicKeyEntry>,
}
