//! An async Rust client for wsgate: SCRAM login (with mutual
//! authentication), HPKE key establishment and protected requests. Tests,
//! benchmarks and the CLI all use it, so it follows docs/protocol.md exactly.
//!
//! ```no_run
//! # async fn run() -> wsgate_client::Result<()> {
//! use wsgate_client::{ClientConfig, login};
//! let config = ClientConfig::new("http://127.0.0.1:8080")?;
//! let session = login(&config, "demo", "wsgate-demo").await?;
//! let mut conn = session.connect(&config).await?;
//! let reply = conn.request("sys.echo", b"hello", true).await?;
//! assert_eq!(reply, b"hello");
//! conn.logout().await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod channels;
mod connection;
mod error;
mod http;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use wsgate_proto::b64;
use wsgate_proto::keys::{KeySetResponse, fingerprint_of};
use wsgate_proto::login_seal::{self, BoxNumber, ExchangeKey};
use wsgate_proto::scram::client::ClientFirst;
use zeroize::Zeroizing;

pub use crate::channels::{ChannelEvent, Delivery, PresenceReply, PresentUser, StreamTracker};
pub use crate::connection::{Connection, Incoming, Message, RawSocket};
pub use crate::error::{Error, HandshakeFailure, Result};
pub use rustls;
pub use wsgate_proto::continuity::{Position, SubscribeReply, SubscribeRequest};

/// Where and how to reach a gateway.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `host:port` of the gateway.
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
    /// Source address to bind (e.g. `127.0.0.2` in tests).
    pub local_addr: Option<IpAddr>,
    /// Expected key fingerprint (`fp`); login fails if the server's differs.
    pub pin: Option<String>,
    /// Deadline for every wait.
    pub timeout: Duration,
    https: bool,
    /// TLS settings for an `https://` gateway ([`ClientConfig::tls_root_pem`]).
    pub tls: Option<TlsSettings>,
}

/// TLS 1.3 settings for an `https://` / `wss://` gateway: the roots to
/// trust and the name to check the certificate against.
#[derive(Clone)]
pub struct TlsSettings {
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// From `http://host:port` (host must be an IP address or `localhost`).
    pub fn new(base_url: &str) -> Result<Self> {
        let uri: ::http::Uri = base_url
            .parse()
            .map_err(|_| Error::InvalidUrl(base_url.to_owned()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(Error::InvalidUrl(base_url.to_owned())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| Error::InvalidUrl(base_url.to_owned()))?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let ip: IpAddr = if host == "localhost" {
            IpAddr::from([127, 0, 0, 1])
        } else {
            host.parse()
                .map_err(|_| Error::InvalidUrl(base_url.to_owned()))?
        };
        let mut config = Self::from_addr(SocketAddr::new(ip, port)).with_host(authority.as_str());
        config.https = https;
        Ok(config)
    }

    /// For a socket address.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            local_addr: None,
            pin: None,
            timeout: Duration::from_secs(10),
            tls: None,
            https: false,
        }
    }

    fn with_host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// Binds the client's sockets to `ip`.
    pub fn local_addr(mut self, ip: IpAddr) -> Self {
        self.local_addr = Some(ip);
        self
    }

    /// Pins the server key fingerprint.
    pub fn pin(mut self, fp: impl Into<String>) -> Self {
        self.pin = Some(fp.into());
        self
    }

    /// Sets the deadline for every wait.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Talks TLS 1.3 (`https://`, `wss://`) to the gateway, trusting only
    /// the certificates in `pem` (e.g. a self-signed one) and checking the
    /// server's certificate against `server_name` (a DNS name or an IP).
    pub fn tls_root_pem(mut self, pem: &[u8], server_name: &str) -> Result<Self> {
        use rustls::pki_types::pem::PemObject as _;
        let bad = |what: String| Error::Tls(what);
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| bad(format!("unreadable PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("unusable root certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the PEM data".into()));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| bad(format!("{server_name:?} is not a server name: {e}")))?;
        self.tls = Some(TlsSettings {
            config: std::sync::Arc::new(config),
            server_name,
        });
        self.https = true;
        Ok(self)
    }

    /// Whether this configuration talks TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.https
    }
}

/// The server key a session is bound to.
#[derive(Debug, Clone)]
pub struct ServerKey {
    /// Raw X25519 public key.
    pub pk: [u8; 32],
    /// `kid`.
    pub kid: String,
    /// `fp`.
    pub fp: String,
}

/// An authenticated session: usable from any node of the fleet, for any
/// number of connections.
#[derive(Clone)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// Stored user name.
    pub user: String,
    /// The IP the login was bound to.
    pub ip: String,
    /// Seconds left at login.
    pub expires_in: u64,
    /// The key the login bound.
    pub server_key: ServerKey,
    session_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session key (for tests that build frames by hand).
    pub fn session_key(&self) -> &[u8; 32] {
        &self.session_key
    }

    /// Opens a WebSocket and establishes keys.
    pub async fn connect(&self, config: &ClientConfig) -> Result<Connection> {
        Connection::open(config, self).await
    }
}

/// Fetches `GET /auth/key` and returns the current key.
pub async fn fetch_server_key(config: &ClientConfig) -> Result<ServerKey> {
    let mut conn = http::HttpConn::open(config).await?;
    current_key(&mut conn, config).await
}

async fn current_key(conn: &mut http::HttpConn, config: &ClientConfig) -> Result<ServerKey> {
    let reply = conn.send(::http::Method::GET, "/auth/key", None).await?;
    if reply.status != 200 {
        return Err(reply.unexpected());
    }
    let set: KeySetResponse =
        serde_json::from_slice(&reply.body).map_err(|_| reply.unexpected())?;
    let entry = set
        .keys
        .first()
        .ok_or_else(|| Error::Protocol("the gateway offers no key".into()))?;
    let pk = entry
        .public_key()
        .map_err(|e| Error::Protocol(e.to_string()))?;
    let fp = fingerprint_of(&pk);
    if let Some(pin) = config.pin.as_ref().filter(|pin| **pin != fp) {
        return Err(Error::ServerKeyMismatch {
            expected: pin.clone(),
            actual: fp,
        });
    }
    Ok(ServerKey {
        pk,
        kid: entry.kid.clone(),
        fp,
    })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::Rng as _;
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}

fn login_failure(reply: &http::Reply) -> Error {
    if reply.status == 429 {
        let retry_after = reply
            .headers
            .get(::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        return Error::RateLimited { retry_after };
    }
    let v = reply.json().ok();
    if reply.status == 400 {
        let error = v
            .as_ref()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()));
        if let Some(error @ ("bad_seal" | "sealed_login_required")) = error {
            return Error::Protocol(format!(
                "the gateway refused the sealed login ({error}): it could not open it with the key it serves; fetch the key again and retry"
            ));
        }
    }
    v.as_ref()
        .and_then(|v| v.get("scram").and_then(|s| s.as_str()))
        .and_then(scram_failure)
        .unwrap_or_else(|| reply.unexpected())
}

/// The login error of a server-final `e=<code>`.
fn scram_failure(server_final: &str) -> Option<Error> {
    let code = server_final.strip_prefix("e=")?;
    Some(match wsgate_proto::scram::ScramError::from_code(code) {
        Some(e) => Error::Login(wsgate_proto::scram::client::ClientError::Server(e)),
        None => Error::Login(
            wsgate_proto::scram::client::ClientError::UnknownServerError(code.to_owned()),
        ),
    })
}

/// Logs in with SCRAM-SHA-256-PLUS and verifies the server's signature.
pub async fn login(config: &ClientConfig, username: &str, password: &str) -> Result<Session> {
    login_inner(config, username, password, None).await
}

/// Remembers `SaltedPassword` per user, salt and iteration count, so
/// repeated logins skip PBKDF2 (protocol.md §4 lets a client cache it). Use one
/// cache per password: a wrong cached value only makes the login fail.
#[derive(Clone, Default)]
pub struct SaltedPasswordCache(std::sync::Arc<std::sync::Mutex<SaltedPasswords>>);

/// (user, `s=…,i=…`) → `SaltedPassword`.
type SaltedPasswords = std::collections::HashMap<(String, String), Zeroizing<[u8; 32]>>;

impl std::fmt::Debug for SaltedPasswordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltedPasswordCache(..)")
    }
}

impl SaltedPasswordCache {
    fn get(&self, key: &(String, String)) -> Option<Zeroizing<[u8; 32]>> {
        self.0.lock().ok()?.get(key).cloned()
    }

    fn put(&self, key: (String, String), salted: &[u8; 32]) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(key, Zeroizing::new(*salted));
        }
    }
}

/// Like [`login`], computing PBKDF2 only the first time for a given salt
/// and iteration count (benchmarks and clients that log in often).
pub async fn login_cached(
    config: &ClientConfig,
    username: &str,
    password: &str,
    cache: &SaltedPasswordCache,
) -> Result<Session> {
    login_inner(config, username, password, Some(cache)).await
}

/// The `s=…,i=…` part of a server-first-message: the cache key's salt part.
fn salt_and_iterations(server_first: &str) -> String {
    server_first
        .split(',')
        .filter(|p| p.starts_with("s=") || p.starts_with("i="))
        .collect::<Vec<_>>()
        .join(",")
}

async fn login_inner(
    config: &ClientConfig,
    username: &str,
    password: &str,
    cache: Option<&SaltedPasswordCache>,
) -> Result<Session> {
    let mut conn = http::HttpConn::open(config).await?;
    let key = current_key(&mut conn, config).await?;

    let first = ClientFirst::new(username, password, &random_bytes::<18>())?;
    let (sealed, login_key) =
        login_seal::seal_first_request(&mut rand::rng(), &key.pk, &first.message())
            .map_err(|e| Error::Protocol(format!("could not seal the login: {e}")))?;
    let body = serde_json::to_vec(&sealed).map_err(|e| Error::Protocol(e.to_string()))?;
    let reply = conn
        .send(::http::Method::PUT, "/auth/session", Some(body))
        .await?;
    let v = reply.json()?;
    if reply.status != 401 || v.get("status").and_then(|s| s.as_str()) != Some("unauthenticated") {
        return Err(login_failure(&reply));
    }
    let sid = v
        .get("sid")
        .and_then(|s| s.as_str())
        .ok_or_else(|| reply.unexpected())?
        .to_owned();
    let raw_sid: [u8; login_seal::SID_LEN] =
        b64::decode_b64u_array(&sid).map_err(|_| reply.unexpected())?;
    let exchange_key = login_key.exchange_key(&raw_sid);
    drop(login_key);
    #[derive(serde::Deserialize)]
    struct Reply1 {
        scram: String,
        ip: String,
    }
    let Reply1 {
        scram: server_first,
        ip,
    } = open_box(&exchange_key, BoxNumber::Reply1, &v, "first reply")?;

    let cache_key = (
        first.username().to_owned(),
        salt_and_iterations(&server_first),
    );
    let cached = cache.and_then(|c| c.get(&cache_key));
    let (expect, client_final) = if let Some(salted) = cached {
        // No PBKDF2: cheap enough to stay on the async worker.
        first.handle_server_first(&server_first, &ip, &key.fp, Some(&*salted))?
    } else {
        // PBKDF2 is CPU-bound; keep it off the async workers.
        let (pk_fp, sf, ipc) = (key.fp.clone(), server_first.clone(), ip.clone());
        let (expect, client_final) =
            tokio::task::spawn_blocking(move || first.handle_server_first(&sf, &ipc, &pk_fp, None))
                .await
                .map_err(|e| Error::Protocol(format!("login worker failed: {e}")))??;
        if let Some(c) = cache {
            c.put(cache_key, expect.salted_password().0);
        }
        (expect, client_final)
    };

    let inner = login_seal::request2_inner(&client_final);
    let body = json!({"sid": sid, "ct": exchange_key.seal(BoxNumber::Request2, &inner)})
        .to_string()
        .into_bytes();
    let reply = conn
        .send(::http::Method::PUT, "/auth/session", Some(body))
        .await?;
    let v = reply.json()?;
    let sealed_status = v.get("status").and_then(|s| s.as_str());
    let boxed = v.get("ct").is_some();
    if reply.status == 401 && sealed_status == Some("failed") && boxed {
        #[derive(serde::Deserialize)]
        struct Failure {
            scram: String,
        }
        let failure: Failure = open_box(&exchange_key, BoxNumber::Reply2, &v, "second reply")?;
        return Err(scram_failure(&failure.scram).unwrap_or_else(|| reply.unexpected()));
    }
    if reply.status != 200 || sealed_status != Some("authenticated") {
        return Err(login_failure(&reply));
    }
    #[derive(serde::Deserialize)]
    struct Reply2 {
        scram: String,
        session: String,
        user: String,
        expires_in: u64,
    }
    let reply2: Reply2 = open_box(&exchange_key, BoxNumber::Reply2, &v, "second reply")?;
    let session_key = expect.handle_server_final(&reply2.scram)?;
    Ok(Session {
        id: reply2.session,
        user: reply2.user,
        expires_in: reply2.expires_in,
        ip,
        server_key: key,
        session_key,
    })
}

/// Opens the `ct` box of a sealed reply and parses its inner JSON; any
/// failure means the reply is not from the server we sealed to, so the
/// login stops (fail closed).
fn open_box<T: serde::de::DeserializeOwned>(
    key: &ExchangeKey,
    m: BoxNumber,
    outer: &serde_json::Value,
    step: &str,
) -> Result<T> {
    let not_sealed = || {
        Error::Protocol(format!(
            "the gateway's {step} of the login is not sealed to this exchange (no box, or it does not open); refusing it"
        ))
    };
    let ct = outer
        .get("ct")
        .and_then(|c| c.as_str())
        .ok_or_else(not_sealed)?;
    let plain = key.open(m, ct).map_err(|_| not_sealed())?;
    serde_json::from_slice(&plain).map_err(|_| {
        Error::Protocol(format!(
            "the gateway's sealed {step} of the login does not have the expected members"
        ))
    })
}
