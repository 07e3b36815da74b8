//! SCRAM-SHA-256-PLUS (RFC 5802 / RFC 7677) with the `wsgate-v1` channel
//! binding (protocol.md §4).
//!
//! The channel binding data is `"ip=" <observed IP> ";key=" fp(server key)`,
//! so a login is bound both to the address the auth node saw and to the
//! server key the browser will seal its dynamic password to.
//!
//! [`server`] holds the authentication module's side (parse client-first,
//! build server-first, verify client-final); [`client`] the browser side.
//! Both derive the same `session_key`, which never crosses the wire.

pub mod client;
pub mod server;

use ring::{digest, hmac, pbkdf2};
use zeroize::Zeroizing;

/// The channel binding type name.
pub const CHANNEL_BINDING: &str = "wsgate-v1";
/// The only gs2 header this protocol accepts.
pub const GS2_HEADER: &str = "p=wsgate-v1,,";
/// Fewest PBKDF2 iterations anyone accepts.
pub const MIN_ITERATIONS: u32 = 4096;
/// Most PBKDF2 iterations a client accepts.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Iterations for new users.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Shortest salt.
pub const MIN_SALT_LEN: usize = 16;
/// Longest client nonce a server accepts.
pub const MAX_NONCE_LEN: usize = 256;

/// A SCRAM failure, sent as `e=<code>` (protocol.md §4.4 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// Bad proof or unknown user.
    #[error("invalid-proof")]
    InvalidProof,
    /// gs2 header, IP or key fingerprint mismatch.
    #[error("channel-bindings-dont-match")]
    ChannelBindingsDontMatch,
    /// The client sent `n,,` or `y,,`.
    #[error("server-does-support-channel-binding")]
    ServerDoesSupportChannelBinding,
    /// Another channel binding name.
    #[error("unsupported-channel-binding-type")]
    UnsupportedChannelBindingType,
    /// An `m=` extension.
    #[error("extensions-not-supported")]
    ExtensionsNotSupported,
    /// A bad saslname.
    #[error("invalid-username-encoding")]
    InvalidUsernameEncoding,
    /// A malformed message.
    #[error("invalid-encoding")]
    InvalidEncoding,
    /// Unknown, used or expired exchange; nonce mismatch; authzid present.
    #[error("other-error")]
    OtherError,
}

impl ScramError {
    /// The `e=` value.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidProof => "invalid-proof",
            Self::ChannelBindingsDontMatch => "channel-bindings-dont-match",
            Self::ServerDoesSupportChannelBinding => "server-does-support-channel-binding",
            Self::UnsupportedChannelBindingType => "unsupported-channel-binding-type",
            Self::ExtensionsNotSupported => "extensions-not-supported",
            Self::InvalidUsernameEncoding => "invalid-username-encoding",
            Self::InvalidEncoding => "invalid-encoding",
            Self::OtherError => "other-error",
        }
    }

    /// Parses an `e=` value (client side).
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "invalid-proof" => Self::InvalidProof,
            "channel-bindings-dont-match" => Self::ChannelBindingsDontMatch,
            "server-does-support-channel-binding" => Self::ServerDoesSupportChannelBinding,
            "unsupported-channel-binding-type" => Self::UnsupportedChannelBindingType,
            "extensions-not-supported" => Self::ExtensionsNotSupported,
            "invalid-username-encoding" => Self::InvalidUsernameEncoding,
            "invalid-encoding" => Self::InvalidEncoding,
            "other-error" => Self::OtherError,
            _ => return None,
        })
    }

    /// The server-final-message for this failure.
    pub fn server_final(self) -> String {
        format!("e={}", self.code())
    }
}

/// What the credential store keeps per user: never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// `SHA-256(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Zeroizing<[u8; 32]>,
}

impl core::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

/// `SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations)`;
/// `password` must already be SASLprep'd.
pub fn salted_password(
    prepared_password: &str,
    salt: &[u8],
    iterations: u32,
) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let iterations =
        core::num::NonZeroU32::new(iterations.max(1)).unwrap_or(core::num::NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        prepared_password.as_bytes(),
        &mut out[..],
    );
    out
}

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// `ClientKey = HMAC(SaltedPassword, "Client Key")`.
pub fn client_key(salted: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(hmac_sha256(salted, &[b"Client Key"]))
}

/// The verifier for a salted password.
pub fn verifier_from_salted(salted: &[u8; 32]) -> Verifier {
    Verifier {
        stored_key: sha256(&client_key(salted)[..]),
        server_key: Zeroizing::new(hmac_sha256(salted, &[b"Server Key"])),
    }
}

/// Computes a user's verifier from a password (SASLprep'd here, query rules).
pub fn derive_verifier(
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<Verifier, crate::saslprep::SaslprepError> {
    let prepared = Zeroizing::new(crate::saslprep::prepare_query(password)?);
    Ok(verifier_from_salted(&salted_password(
        &prepared, salt, iterations,
    )))
}

/// `session_key = HMAC-SHA-256(ClientKey, "wsgate-v1 session" || AuthMessage)`.
pub fn session_key(client_key: &[u8; 32], auth_message: &str) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(hmac_sha256(
        client_key,
        &[b"wsgate-v1 session", auth_message.as_bytes()],
    ))
}

/// Encodes a (SASLprep'd) user name as a SCRAM `saslname`.
pub fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// Decodes a `saslname`; `=` must start `=2C` or `=3D`.
pub fn decode_saslname(encoded: &str) -> Result<String, ScramError> {
    if encoded.is_empty() {
        return Err(ScramError::InvalidUsernameEncoding);
    }
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix("2C") {
            out.push(',');
            rest = r;
        } else if let Some(r) = after.strip_prefix("3D") {
            out.push('=');
            rest = r;
        } else {
            return Err(ScramError::InvalidUsernameEncoding);
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The channel binding data of a login.
pub fn cbind_data(ip: &str, key_fp: &str) -> String {
    format!("ip={ip};key={key_fp}")
}

/// Whether a character may appear in a nonce (`%x21-2B / %x2D-7E`).
pub(crate) fn is_nonce_char(c: char) -> bool {
    matches!(c, '\x21'..='\x2B' | '\x2D'..='\x7E')
}

/// Splits `key=value` for the expected one-letter key.
pub(crate) fn attr(part: &str, key: char) -> Option<&str> {
    let mut chars = part.chars();
    (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &part[2..])
}

#[cfg(test)]
mod tests;
