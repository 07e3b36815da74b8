//! The clear v1 login (`PUT /auth/session` with bare `{"scram": …}`
//! bodies), kept inside the bench for one reason: `login --before-bin`
//! against a build from before the sealed login (docs/protocol.md §4.1),
//! which speaks only this form, while `wsgate_client` speaks only the
//! sealed one. Built on `wsgate_proto::scram::client`, over plain
//! `http://` only (the `[before]` rows are plain).
//!
//! Which form a gateway speaks is found out once per gateway
//! ([`LoginForm::detect`]): an old gateway answers a sealed first request
//! with `401 … e=invalid-encoding` (it sees no `scram` member), a new one
//! answers a clear one with `400 sealed_login_required`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use ring::rand::SecureRandom as _;
use serde_json::{Value, json};
use wsgate_proto::keys::{KeySetResponse, fingerprint_of};
use wsgate_proto::scram::client::ClientFirst;
use zeroize::Zeroizing;

/// Which login a gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginForm {
    /// docs/protocol.md §4.1: every SCRAM message sealed (this client).
    Sealed,
    /// The clear v1 form of builds before it.
    Clear,
}

impl LoginForm {
    /// Whether a failed sealed login says the gateway only knows the clear
    /// form: an old gateway reads the sealed first request's body as a
    /// clear one without `scram` and answers `e=invalid-encoding`.
    pub(crate) fn clear_wanted(error: &wsgate_client::Error) -> bool {
        use wsgate_proto::scram::ScramError;
        use wsgate_proto::scram::client::ClientError;
        matches!(
            error,
            wsgate_client::Error::Login(ClientError::Server(ScramError::InvalidEncoding))
        )
    }
}

/// `SaltedPassword` per `s=…,i=…`, as the client's own cache (one password).
#[derive(Clone, Default)]
pub(crate) struct SaltCache(Arc<Mutex<HashMap<String, Zeroizing<[u8; 32]>>>>);

impl std::fmt::Debug for SaltCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltCache(..)")
    }
}

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| anyhow!("TCP connect to {addr} timed out"))?
        .with_context(|| format!("TCP connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .with_context(|| format!("HTTP/1.1 to {addr}"))?;
        tokio::spawn(conn);
        Ok(Self { sender, addr })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let what = format!("{method} {path} at {}", self.addr);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string());
        let body = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.sender.send_request(req))
            .await
            .map_err(|_| anyhow!("{what} timed out"))?
            .with_context(|| what.clone())?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the reply to {what}"))?
            .to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, v))
    }
}

fn field<'a>(v: &'a Value, name: &str, what: &str) -> Result<&'a str> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{what}: no string `{name}` in {v}"))
}

/// One clear v1 login at `addr` (new TCP connection, `GET /auth/key`, two
/// `PUT /auth/session`), checking the server's signature; PBKDF2 only the
/// first time per salt (`cache`). Returns the session id.
pub(crate) async fn login(
    addr: SocketAddr,
    user: &str,
    password: &str,
    cache: &SaltCache,
) -> Result<String> {
    let mut conn = Conn::open(addr).await?;
    let (status, keys) = conn.send("GET", "/auth/key", None).await?;
    if status != 200 {
        bail!("GET /auth/key at {addr} answered {status} {keys}");
    }
    let keys: KeySetResponse = serde_json::from_value(keys)
        .with_context(|| format!("GET /auth/key at {addr}: not a key set"))?;
    let entry = keys
        .keys
        .first()
        .ok_or_else(|| anyhow!("GET /auth/key at {addr}: no key"))?;
    let fp = fingerprint_of(&entry.public_key()?);

    let mut nonce = [0u8; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| anyhow!("the system random generator failed"))?;
    let first = ClientFirst::new(user, password, &nonce)
        .map_err(|e| anyhow!("preparing the login of {user:?}: {e}"))?;
    let (status, v) = conn
        .send(
            "PUT",
            "/auth/session",
            Some(json!({"scram": first.message()})),
        )
        .await?;
    let what = format!("the first clear PUT /auth/session at {addr}");
    if status != 401 || v.get("status").and_then(Value::as_str) != Some("unauthenticated") {
        bail!("{what} answered {status} {v}");
    }
    let (sid, server_first, ip) = (
        field(&v, "sid", &what)?,
        field(&v, "scram", &what)?,
        field(&v, "ip", &what)?,
    );
    let salt_key: String = server_first
        .split(',')
        .filter(|p| p.starts_with("s=") || p.starts_with("i="))
        .collect::<Vec<_>>()
        .join(",");
    let cached = cache.0.lock().ok().and_then(|m| m.get(&salt_key).cloned());
    let (expect, client_final) = match cached {
        Some(salted) => first.handle_server_first(server_first, ip, &fp, Some(&salted)),
        None => {
            let (sf, ip, fp) = (server_first.to_owned(), ip.to_owned(), fp.clone());
            tokio::task::spawn_blocking(move || first.handle_server_first(&sf, &ip, &fp, None))
                .await
                .map_err(|e| anyhow!("the PBKDF2 task failed: {e}"))?
        }
    }
    .map_err(|e| anyhow!("{what}: {e}"))?;
    if let Ok(mut m) = cache.0.lock() {
        m.entry(salt_key)
            .or_insert_with(|| Zeroizing::new(*expect.salted_password().0));
    }
    let (status, v) = conn
        .send(
            "PUT",
            "/auth/session",
            Some(json!({"sid": sid, "scram": client_final})),
        )
        .await?;
    let what = format!("the second clear PUT /auth/session at {addr}");
    if status != 200 {
        bail!("{what} answered {status} {v}");
    }
    expect
        .handle_server_final(field(&v, "scram", &what)?)
        .map_err(|e| anyhow!("{what}: {e}"))?;
    Ok(field(&v, "session", &what)?.to_owned())
}
