//! The client's side of the SCRAM exchange, as states consumed by each step:
//! [`ClientFirst`] → [`ExpectServerFinal`] → session key.

use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use super::{
    GS2_HEADER, MAX_ITERATIONS, MIN_ITERATIONS, MIN_SALT_LEN, ScramError, attr, cbind_data,
    client_key, encode_saslname, hmac_sha256, salted_password, session_key,
};
use crate::b64;
use crate::saslprep::{self, SaslprepError};

/// Why the client gave up on a login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The user name or password is refused by SASLprep.
    #[error("user name or password not allowed: {0}")]
    Saslprep(#[from] SaslprepError),
    /// The server answered `e=<code>`.
    #[error("server refused the login: {0}")]
    Server(ScramError),
    /// The server answered an `e=` code this client does not know.
    #[error("server refused the login: {0}")]
    UnknownServerError(String),
    /// The server-first-message is malformed or its nonce does not extend ours.
    #[error("malformed server-first-message")]
    BadServerFirst,
    /// Iterations outside 4096..=10 000 000, or a salt under 16 bytes.
    #[error("server asked for unsafe parameters (iterations {0})")]
    UnsafeParameters(u32),
    /// The server's signature is wrong: it does not know the password
    /// (not the real server, or a tampered reply).
    #[error("server signature does not verify (mutual authentication failed)")]
    BadServerSignature,
    /// The client nonce is too short.
    #[error("client nonce must be at least 18 random bytes")]
    ShortNonce,
}

/// The first step: holds the prepared credentials.
pub struct ClientFirst {
    password: Zeroizing<String>,
    username: String,
    client_nonce: String,
    bare: String,
}

impl core::fmt::Debug for ClientFirst {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientFirst")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ClientFirst {
    /// Prepares a login; `nonce` is raw randomness (≥ 18 bytes).
    pub fn new(username: &str, password: &str, nonce: &[u8]) -> Result<Self, ClientError> {
        if nonce.len() < 18 {
            return Err(ClientError::ShortNonce);
        }
        let username = saslprep::prepare_stored(username)?;
        let password = Zeroizing::new(saslprep::prepare_query(password)?);
        let client_nonce = b64::encode_b64u(nonce);
        let bare = format!("n={},r={client_nonce}", encode_saslname(&username));
        Ok(Self {
            password,
            username,
            client_nonce,
            bare,
        })
    }

    /// The SASLprep'd user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The client-first-message to send.
    pub fn message(&self) -> String {
        format!("{GS2_HEADER}{}", self.bare)
    }

    /// Handles the server-first-message. `ip` is the `ip` string of the
    /// server's first reply, `key_fp` the fingerprint of the key the client
    /// will seal to. `cached` is a `SaltedPassword` previously computed for
    /// this salt and iteration count, if any (PBKDF2 is the expensive step).
    pub fn handle_server_first(
        self,
        server_first: &str,
        ip: &str,
        key_fp: &str,
        cached: Option<&[u8; 32]>,
    ) -> Result<(ExpectServerFinal, String), ClientError> {
        let params = parse_server_first(server_first)?;
        if !params.nonce.starts_with(&self.client_nonce)
            || params.nonce.len() == self.client_nonce.len()
        {
            return Err(ClientError::BadServerFirst);
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&params.iterations)
            || params.salt.len() < MIN_SALT_LEN
        {
            return Err(ClientError::UnsafeParameters(params.iterations));
        }
        let salted = match cached {
            Some(c) => Zeroizing::new(*c),
            None => salted_password(&self.password, &params.salt, params.iterations),
        };
        let cbind = format!("{GS2_HEADER}{}", cbind_data(ip, key_fp));
        let without_proof = format!("c={},r={}", b64::encode_b64(cbind.as_bytes()), params.nonce);
        let auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let ck = client_key(&salted);
        let stored_key = super::sha256(&ck[..]);
        let signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = ck
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let message = format!("{without_proof},p={}", b64::encode_b64(&proof));
        let server_key = Zeroizing::new(hmac_sha256(&salted[..], &[b"Server Key"]));
        let session_key = session_key(&ck, &auth_message);
        Ok((
            ExpectServerFinal {
                server_key,
                auth_message,
                session_key,
                salted,
                salt: params.salt,
                iterations: params.iterations,
            },
            message,
        ))
    }
}

struct ServerFirstParams {
    nonce: String,
    salt: Vec<u8>,
    iterations: u32,
}

fn parse_server_first(message: &str) -> Result<ServerFirstParams, ClientError> {
    let mut parts = message.split(',');
    if parts.clone().next().is_some_and(|p| attr(p, 'm').is_some()) {
        return Err(ClientError::BadServerFirst);
    }
    let nonce = parts
        .next()
        .and_then(|p| attr(p, 'r'))
        .ok_or(ClientError::BadServerFirst)?;
    let salt = parts
        .next()
        .and_then(|p| attr(p, 's'))
        .ok_or(ClientError::BadServerFirst)?;
    let iterations = parts
        .next()
        .and_then(|p| attr(p, 'i'))
        .ok_or(ClientError::BadServerFirst)?;
    if !iterations.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ClientError::BadServerFirst);
    }
    Ok(ServerFirstParams {
        nonce: nonce.to_owned(),
        salt: b64::decode_b64(salt).map_err(|_| ClientError::BadServerFirst)?,
        iterations: iterations
            .parse()
            .map_err(|_| ClientError::BadServerFirst)?,
    })
}

/// The last step: waiting for `v=<ServerSignature>`.
pub struct ExpectServerFinal {
    server_key: Zeroizing<[u8; 32]>,
    auth_message: String,
    session_key: Zeroizing<[u8; 32]>,
    salted: Zeroizing<[u8; 32]>,
    salt: Vec<u8>,
    iterations: u32,
}

impl core::fmt::Debug for ExpectServerFinal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ExpectServerFinal(..)")
    }
}

impl ExpectServerFinal {
    /// The `SaltedPassword`, salt and iterations, for a client that caches it.
    pub fn salted_password(&self) -> (&[u8; 32], &[u8], u32) {
        (&self.salted, &self.salt, self.iterations)
    }

    /// The AuthMessage both sides signed.
    pub fn auth_message(&self) -> &str {
        &self.auth_message
    }

    /// Checks the server-final-message and returns the session key.
    pub fn handle_server_final(
        self,
        server_final: &str,
    ) -> Result<Zeroizing<[u8; 32]>, ClientError> {
        if let Some(code) = attr(server_final, 'e') {
            return Err(match ScramError::from_code(code) {
                Some(e) => ClientError::Server(e),
                None => ClientError::UnknownServerError(code.to_owned()),
            });
        }
        let sig = attr(server_final, 'v')
            .and_then(|v| b64::decode_b64(v).ok())
            .ok_or(ClientError::BadServerSignature)?;
        let expected = hmac_sha256(&self.server_key[..], &[self.auth_message.as_bytes()]);
        if !bool::from(sig.as_slice().ct_eq(&expected[..])) {
            return Err(ClientError::BadServerSignature);
        }
        Ok(self.session_key)
    }
}
