//! An async Rust client for wsgate: SCRAM login (with mutual
//! authentication), HPKE key establishment and protected requests. Tests,
//! benchmarks and the CLI all use it, so it follows DESIGN.md exactly.
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

mod connection;
mod error;
mod http;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use wsgate_proto::keys::{KeySetResponse, fingerprint_of};
use wsgate_proto::scram::client::ClientFirst;
use zeroize::Zeroizing;

pub use crate::connection::{Connection, Incoming, Message, RawSocket};
pub use crate::error::{Error, Result};

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
}

impl ClientConfig {
    /// From `http://host:port` (host must be an IP address or `localhost`).
    pub fn new(base_url: &str) -> Result<Self> {
        let uri: ::http::Uri = base_url
            .parse()
            .map_err(|_| Error::InvalidUrl(base_url.to_owned()))?;
        if uri.scheme_str() != Some("http") {
            return Err(Error::InvalidUrl(base_url.to_owned()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| Error::InvalidUrl(base_url.to_owned()))?;
        let port = authority.port_u16().unwrap_or(80);
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
        Ok(Self::from_addr(SocketAddr::new(ip, port)).with_host(authority.as_str()))
    }

    /// For a socket address.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            local_addr: None,
            pin: None,
            timeout: Duration::from_secs(10),
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
    let mut conn =
        http::HttpConn::open(config.addr, &config.host, config.local_addr, config.timeout).await?;
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
    let scram = reply
        .json()
        .ok()
        .and_then(|v| v.get("scram").and_then(|s| s.as_str()).map(str::to_owned));
    match scram.as_deref().and_then(|s| s.strip_prefix("e=")) {
        Some(code) => match wsgate_proto::scram::ScramError::from_code(code) {
            Some(e) => Error::Login(wsgate_proto::scram::client::ClientError::Server(e)),
            None => Error::Login(
                wsgate_proto::scram::client::ClientError::UnknownServerError(code.to_owned()),
            ),
        },
        None => reply.unexpected(),
    }
}

/// Logs in with SCRAM-SHA-256-PLUS and verifies the server's signature.
pub async fn login(config: &ClientConfig, username: &str, password: &str) -> Result<Session> {
    let mut conn =
        http::HttpConn::open(config.addr, &config.host, config.local_addr, config.timeout).await?;
    let key = current_key(&mut conn, config).await?;

    let first = ClientFirst::new(username, password, &random_bytes::<18>())?;
    let body = json!({"scram": first.message()}).to_string().into_bytes();
    let reply = conn
        .send(::http::Method::PUT, "/auth/session", Some(body))
        .await?;
    let v = reply.json()?;
    if reply.status != 401 || v.get("status").and_then(|s| s.as_str()) != Some("unauthenticated") {
        return Err(login_failure(&reply));
    }
    let field = |name: &str| {
        v.get(name)
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .ok_or_else(|| reply.unexpected())
    };
    let (sid, server_first, ip) = (field("sid")?, field("scram")?, field("ip")?);

    // PBKDF2 is CPU-bound; keep it off the async workers.
    let (pk_fp, sf, ipc) = (key.fp.clone(), server_first.clone(), ip.clone());
    let (expect, client_final) =
        tokio::task::spawn_blocking(move || first.handle_server_first(&sf, &ipc, &pk_fp, None))
            .await
            .map_err(|e| Error::Protocol(format!("login worker failed: {e}")))??;

    let body = json!({"sid": sid, "scram": client_final})
        .to_string()
        .into_bytes();
    let reply = conn
        .send(::http::Method::PUT, "/auth/session", Some(body))
        .await?;
    if reply.status != 200 {
        return Err(login_failure(&reply));
    }
    let v = reply.json()?;
    let field = |name: &str| {
        v.get(name)
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .ok_or_else(|| reply.unexpected())
    };
    let session_key = expect.handle_server_final(&field("scram")?)?;
    Ok(Session {
        id: field("session")?,
        user: field("user")?,
        expires_in: v
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .ok_or_else(|| reply.unexpected())?,
        ip,
        server_key: key,
        session_key,
    })
}
