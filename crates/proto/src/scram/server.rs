//! The authentication module's side of the SCRAM exchange.
//!
//! ```text
//! parse_client_first ─▶ ClientFirst ─▶ Exchange::new (server-first) ─▶ store it (60 s, take once)
//! take it ─▶ Exchange::verify_client_final ─▶ Verified { server_final, session_key, key_fp }
//! ```
//!
//! [`Exchange`] is plain data (serde), so the second request may land on any
//! node that shares the state store.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use super::{
    GS2_HEADER, MAX_NONCE_LEN, ScramError, Verifier, attr, decode_saslname, hmac_sha256,
    is_nonce_char, session_key, sha256,
};
use crate::b64;

/// A parsed client-first-message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The gs2 header exactly as sent (always [`GS2_HEADER`] once parsed).
    pub gs2_header: String,
    /// The decoded user name, looked up with no further mapping.
    pub username: String,
    /// The client nonce.
    pub client_nonce: String,
    /// `client-first-message-bare`, exactly as sent.
    pub bare: String,
}

/// Parses a client-first-message (`p=wsgate-v1,,n=<saslname>,r=<c-nonce>`).
pub fn parse_client_first(message: &str) -> Result<ClientFirst, ScramError> {
    let (flag, rest) = message.split_once(',').ok_or(ScramError::InvalidEncoding)?;
    match flag {
        "n" | "y" => return Err(ScramError::ServerDoesSupportChannelBinding),
        _ => match attr(flag, 'p') {
            Some(super::CHANNEL_BINDING) => {}
            Some(name)
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') =>
            {
                return Err(ScramError::UnsupportedChannelBindingType);
            }
            _ => return Err(ScramError::InvalidEncoding),
        },
    }
    let (authzid, bare) = rest.split_once(',').ok_or(ScramError::InvalidEncoding)?;
    if !authzid.is_empty() {
        return Err(if attr(authzid, 'a').is_some() {
            ScramError::OtherError
        } else {
            ScramError::InvalidEncoding
        });
    }
    let gs2_header = &message[..message.len() - bare.len()];
    debug_assert_eq!(gs2_header, GS2_HEADER);

    let mut parts = bare.split(',');
    let first = parts.next().unwrap_or_default();
    if attr(first, 'm').is_some() {
        return Err(ScramError::ExtensionsNotSupported);
    }
    let saslname = attr(first, 'n').ok_or(ScramError::InvalidEncoding)?;
    let username = decode_saslname(saslname)?;
    let client_nonce = parts
        .next()
        .and_then(|p| attr(p, 'r'))
        .ok_or(ScramError::InvalidEncoding)?;
    if client_nonce.is_empty()
        || client_nonce.len() > MAX_NONCE_LEN
        || !client_nonce.chars().all(is_nonce_char)
    {
        return Err(ScramError::InvalidEncoding);
    }
    // Optional extensions after the nonce are allowed by RFC 5802 and ignored,
    // but each must still look like an attribute.
    if parts.any(|p| p.len() < 2 || p.as_bytes()[1] != b'=') {
        return Err(ScramError::InvalidEncoding);
    }
    Ok(ClientFirst {
        gs2_header: gs2_header.to_owned(),
        username,
        client_nonce: client_nonce.to_owned(),
        bare: bare.to_owned(),
    })
}

/// The state of one login between its two requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// The user name as looked up (stored form when the user exists).
    pub username: String,
    /// The gs2 header of the first request.
    pub gs2_header: String,
    /// client-first-message-bare.
    pub client_first_bare: String,
    /// server-first-message, as sent.
    pub server_first: String,
    /// c-nonce || s-nonce.
    pub nonce: String,
    /// The observed IP of the first request, as sent in the reply.
    pub ip: String,
}

impl Exchange {
    /// Builds the server-first-message for a parsed client-first.
    /// `server_nonce` is raw randomness (≥ 18 bytes).
    pub fn new(
        client_first: &ClientFirst,
        salt: &[u8],
        iterations: u32,
        server_nonce: &[u8],
        ip: &str,
    ) -> Self {
        let nonce = format!(
            "{}{}",
            client_first.client_nonce,
            b64::encode_b64u(server_nonce)
        );
        let server_first = format!("r={nonce},s={},i={iterations}", b64::encode_b64(salt));
        Self {
            username: client_first.username.clone(),
            gs2_header: client_first.gs2_header.clone(),
            client_first_bare: client_first.bare.clone(),
            server_first,
            nonce,
            ip: ip.to_owned(),
        }
    }

    /// Verifies a client-final-message.
    ///
    /// * `observed_ip`: the IP text of the second request;
    /// * `accepts_fp`: whether a key fingerprint names an accepted key;
    /// * `verifier`: the user's, or `None` for an unknown user (the work is
    ///   then done against `fallback`, the same shape, and fails).
    pub fn verify_client_final(
        &self,
        client_final: &str,
        observed_ip: &str,
        accepts_fp: impl Fn(&str) -> bool,
        verifier: Option<&Verifier>,
        fallback: &Verifier,
    ) -> Result<Verified, ScramError> {
        let (without_proof, proof_b64) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::InvalidEncoding)?;
        let mut parts = without_proof.split(',');
        let cbind_b64 = parts
            .next()
            .and_then(|p| attr(p, 'c'))
            .ok_or(ScramError::InvalidEncoding)?;
        let nonce = parts
            .next()
            .and_then(|p| attr(p, 'r'))
            .ok_or(ScramError::InvalidEncoding)?;
        if parts.any(|p| p.len() < 2 || p.as_bytes()[1] != b'=') {
            return Err(ScramError::InvalidEncoding);
        }
        let cbind = b64::decode_b64(cbind_b64).map_err(|_| ScramError::InvalidEncoding)?;
        let proof: [u8; 32] = b64::decode_b64(proof_b64)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::InvalidEncoding)?;
        if nonce != self.nonce {
            return Err(ScramError::OtherError);
        }
        let data = cbind
            .strip_prefix(self.gs2_header.as_bytes())
            .ok_or(ScramError::ChannelBindingsDontMatch)?;
        let data = core::str::from_utf8(data).map_err(|_| ScramError::ChannelBindingsDontMatch)?;
        let (ip_part, key_part) = data
            .split_once(';')
            .ok_or(ScramError::ChannelBindingsDontMatch)?;
        let ip = ip_part
            .strip_prefix("ip=")
            .ok_or(ScramError::ChannelBindingsDontMatch)?;
        let fp = key_part
            .strip_prefix("key=")
            .ok_or(ScramError::ChannelBindingsDontMatch)?;
        if ip != self.ip || ip != observed_ip || !accepts_fp(fp) {
            return Err(ScramError::ChannelBindingsDontMatch);
        }

        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let v = verifier.unwrap_or(fallback);
        let client_signature = hmac_sha256(&v.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = Zeroizing::new([0u8; 32]);
        for (k, (p, s)) in client_key
            .iter_mut()
            .zip(proof.iter().zip(client_signature.iter()))
        {
            *k = p ^ s;
        }
        let matches: bool = sha256(&client_key[..]).ct_eq(&v.stored_key).into();
        if !matches || verifier.is_none() {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac_sha256(&v.server_key[..], &[auth_message.as_bytes()]);
        Ok(Verified {
            server_final: format!("v={}", b64::encode_b64(&server_signature)),
            session_key: session_key(&client_key, &auth_message),
            key_fp: fp.to_owned(),
        })
    }
}

/// A successful login.
pub struct Verified {
    /// `v=<ServerSignature>`.
    pub server_final: String,
    /// The session key both sides now hold.
    pub session_key: Zeroizing<[u8; 32]>,
    /// The key fingerprint the login bound.
    pub key_fp: String,
}

impl core::fmt::Debug for Verified {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Verified")
            .field("key_fp", &self.key_fp)
            .finish_non_exhaustive()
    }
}

/// The deterministic fake salt of an unknown user:
/// `HMAC-SHA-256(server_secret, "wsgate-v1 unknown-user salt" || 0x00 || user)[0..16]`.
pub fn unknown_user_salt(server_secret: &[u8], username: &str) -> [u8; 16] {
    let mac = hmac_sha256(
        server_secret,
        &[b"wsgate-v1 unknown-user salt\0", username.as_bytes()],
    );
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&mac[..16]);
    salt
}

/// A verifier for an unknown user, so the second step does the same work.
pub fn unknown_user_verifier(server_secret: &[u8], username: &str) -> Verifier {
    Verifier {
        stored_key: hmac_sha256(
            server_secret,
            &[b"wsgate-v1 unknown-user stored-key\0", username.as_bytes()],
        ),
        server_key: Zeroizing::new(hmac_sha256(
            server_secret,
            &[b"wsgate-v1 unknown-user server-key\0", username.as_bytes()],
        )),
    }
}
