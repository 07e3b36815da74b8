//! The `connect` scenario's baseline: what a web framework would do
//! instead of wsgate. It belongs to the bench, not to the gateway: a
//! separate process (`wsgate bench baseline-login-server`, hidden), pinned
//! like a gateway so that its CPU time can be read from `/proc`.
//!
//! * TLS 1.3 on every connection: rustls with the `ring` provider, ECDSA
//!   P-256 self-signed certificate, ALPN `http/1.1` — the settings of the
//!   gateway's own `[tls]` listener, including rustls' default server-side
//!   session cache (so a second connection may resume).
//! * `POST /login`, JSON `{"user", "password"}`: the password is checked
//!   against a stored PBKDF2-HMAC-SHA-256 hash (`ring::pbkdf2::verify`,
//!   constant time) at the same iteration count as the wsgate user, as web
//!   frameworks store passwords, on the blocking pool; success sets a
//!   random session cookie (`sid`, 16 random bytes).
//! * `GET /me` with that cookie: a returning user (a lookup, no hash).
//! * `GET /ws` with that cookie: a WebSocket upgrade (hyper +
//!   fastwebsockets, like the gateway's `/raw-echo`), then an echo of every
//!   binary or text message.
//!
//! The client half ([`Target::connect`]) behaves as a browser: the login
//! request on one TLS connection, the WebSocket on a new one, both with a
//! fresh TLS session cache per connect (so the first handshake is a full
//! one and the second resumes, as a browser's would).

use std::collections::HashMap;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use http_body_util::{BodyExt as _, Empty, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::rand::SecureRandom as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

use crate::gateway::Gw;

/// The user the baseline stores.
pub(crate) const USER: &str = "bench";
/// The cookie's name.
const COOKIE: &str = "sid";
/// Largest request body the baseline reads.
const MAX_BODY: usize = 4096;

/// What the server process reads from its directory (`user.json`).
#[derive(Debug, Serialize, Deserialize)]
struct StoredUser {
    user: String,
    /// Hex.
    salt: String,
    iterations: u32,
    /// Hex of the 32-byte PBKDF2-HMAC-SHA-256 output.
    hash: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        bail!("odd-length hex");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow!("not hex: {text:?}"))
        })
        .collect()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| anyhow!("the system random generator failed"))?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

struct State {
    user: StoredUser,
    salt: Vec<u8>,
    hash: Vec<u8>,
    iterations: NonZeroU32,
    /// cookie value → user.
    sessions: Mutex<HashMap<String, String>>,
}

/// `wsgate bench baseline-login-server --baseline-dir DIR`: serves on a
/// free loopback port, prints `listening on 127.0.0.1:PORT`, and exits when
/// its stdin closes (the bench holds it) or on SIGTERM.
pub(crate) fn serve_main(dir: &Path) -> Result<std::process::ExitCode> {
    // The bench holds our stdin: when it goes away, so do we.
    std::thread::spawn(|| {
        let mut line = String::new();
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read_line(&mut line), Ok(n) if n > 0) {
            line.clear();
        }
        std::process::exit(0);
    });
    // A thread (and a runtime) of its own: `wsgate` calls this from inside
    // its own runtime, where another cannot be started.
    let dir = dir.to_path_buf();
    let server = std::thread::Builder::new()
        .name("baseline-server".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the baseline server's runtime")?;
            runtime.block_on(serve(&dir, |addr| println!("listening on {addr}")))
        })
        .context("starting the baseline server's thread")?;
    match server.join() {
        Ok(result) => result.map(|()| std::process::ExitCode::SUCCESS),
        Err(_) => bail!("the baseline server's thread panicked"),
    }
}

fn tls_acceptor(dir: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let cert_path = dir.join("cert.pem");
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert_path.display()))?;
    let key_path = dir.join("key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the private key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the baseline's certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves from `dir` until the process ends; `ready` gets the address.
async fn serve(dir: &Path, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let user_path = dir.join("user.json");
    let text = std::fs::read_to_string(&user_path)
        .with_context(|| format!("reading {}", user_path.display()))?;
    let user: StoredUser = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a stored user", user_path.display()))?;
    let state = Arc::new(State {
        salt: unhex(&user.salt).context("user.json salt")?,
        hash: unhex(&user.hash).context("user.json hash")?,
        iterations: NonZeroU32::new(user.iterations)
            .ok_or_else(|| anyhow!("user.json: iterations must be at least 1"))?,
        user,
        sessions: Mutex::new(HashMap::new()),
    });
    let acceptor = tls_acceptor(dir)?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    ready(listener.local_addr()?);
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// The `sid` cookie's value, if the request carries one.
fn cookie(req: &Request<hyper::body::Incoming>) -> Option<String> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(COOKIE)
                .and_then(|r| r.strip_prefix('='))
        })
        .map(str::to_owned)
}

fn session_user(state: &State, req: &Request<hyper::body::Incoming>) -> Option<String> {
    let sid = cookie(req)?;
    state.sessions.lock().ok()?.get(&sid).cloned()
}

#[derive(Deserialize)]
struct LoginBody {
    user: String,
    password: String,
}

async fn handle(
    state: Arc<State>,
    mut req: Request<hyper::body::Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::POST, "/login") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, "unreadable body\n")),
            };
            let Ok(login) = serde_json::from_slice::<LoginBody>(&body) else {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    "expected {user, password}\n",
                ));
            };
            // PBKDF2 is CPU-bound: off the async worker, as a framework would.
            let st = state.clone();
            let ok = tokio::task::spawn_blocking(move || {
                login.user == st.user.user
                    && ring::pbkdf2::verify(
                        ring::pbkdf2::PBKDF2_HMAC_SHA256,
                        st.iterations,
                        &st.salt,
                        login.password.as_bytes(),
                        &st.hash,
                    )
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if !ok {
                return Ok(reply(StatusCode::UNAUTHORIZED, "wrong user or password\n"));
            }
            let Ok(token) = random::<16>().map(|t| hex(&t)) else {
                return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n"));
            };
            if let Ok(mut sessions) = state.sessions.lock() {
                sessions.insert(token.clone(), state.user.user.clone());
            }
            let mut r = reply(StatusCode::OK, "{\"status\":\"authenticated\"}");
            if let Ok(v) = hyper::header::HeaderValue::from_str(&format!(
                "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict"
            )) {
                r.headers_mut().insert(hyper::header::SET_COOKIE, v);
            }
            r
        }
        (Method::GET, "/me") => match session_user(&state, &req) {
            Some(_) => reply(StatusCode::OK, "{\"status\":\"authenticated\"}"),
            None => reply(StatusCode::UNAUTHORIZED, "no session\n"),
        },
        (Method::GET, "/ws") => {
            if session_user(&state, &req).is_none() {
                return Ok(reply(StatusCode::UNAUTHORIZED, "no session\n"));
            }
            if !fastwebsockets::upgrade::is_upgrade_request(&req) {
                return Ok(reply(StatusCode::BAD_REQUEST, "WebSocket upgrades only\n"));
            }
            let Ok((response, upgraded)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                return Ok(reply(StatusCode::BAD_REQUEST, "bad WebSocket upgrade\n"));
            };
            tokio::spawn(async move {
                let Ok(mut ws) = upgraded.await else { return };
                ws.set_auto_close(true);
                ws.set_auto_pong(true);
                while let Ok(frame) = ws.read_frame().await {
                    match frame.opcode {
                        OpCode::Binary | OpCode::Text => {
                            let echo = Frame::new(true, frame.opcode, None, frame.payload);
                            if ws.write_frame(echo).await.is_err() {
                                break;
                            }
                        }
                        OpCode::Close => break,
                        _ => {}
                    }
                }
            });
            let (parts, _) = response.into_parts();
            Response::from_parts(parts, Full::new(Bytes::new()))
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    })
}

// ---------------------------------------------------------------------------
// The bench's side: starting it, and a browser's connect
// ---------------------------------------------------------------------------

/// A running baseline server and how to reach it.
pub(crate) struct Target {
    /// The process (stopped on drop) and its CPU meter; `None` for a
    /// server in this process (tests).
    pub(crate) gw: Option<Gw>,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    password: String,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// How a connect authenticates on its first connection.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// `POST /login` with the password: the server runs PBKDF2.
    Password,
    /// `GET /me` with a session cookie: no hash check.
    Cookie(String),
}

/// A TLS stream to the baseline.
type Tls = tokio_rustls::client::TlsStream<TcpStream>;

struct Exec;

impl<F> hyper::rt::Executor<F> for Exec
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// A new directory for the server: a self-signed ECDSA P-256 certificate
/// and the stored user (`iterations` of PBKDF2-HMAC-SHA-256 over a random
/// password). Returns it, the certificate (PEM) and the password.
fn prepare(iterations: u32) -> Result<(tempfile::TempDir, String, String)> {
    let dir = tempfile::Builder::new()
        .prefix("wsgate-bench-baseline-")
        .tempdir()
        .context("creating a temporary directory")?;
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .context("generating a self-signed certificate")?;
    let cert_pem = certified.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem)?;
    std::fs::write(
        dir.path().join("key.pem"),
        certified.signing_key.serialize_pem(),
    )?;
    let password = hex(&random::<16>()?);
    let salt = random::<16>()?;
    let mut hash = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations).ok_or_else(|| anyhow!("--iterations must be at least 1"))?,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    let stored = StoredUser {
        user: USER.to_owned(),
        salt: hex(&salt),
        iterations,
        hash: hex(&hash),
    };
    std::fs::write(
        dir.path().join("user.json"),
        serde_json::to_string(&stored)?,
    )?;
    Ok((dir, cert_pem, password))
}

impl Target {
    /// Writes a certificate and the stored user (`iterations` of
    /// PBKDF2-HMAC-SHA-256 over a random password), then starts `bin bench
    /// baseline-login-server` (`taskset -c 0` when `pin`).
    pub(crate) fn start(bin: &Path, iterations: u32, pin: bool, ticks: f64) -> Result<Target> {
        let (dir, cert_pem, password) = prepare(iterations)?;

        let mut cmd = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        let log_path = dir.path().join("baseline.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = cmd
            .args(["bench", "baseline-login-server", "--baseline-dir"])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} bench baseline-login-server", bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from the baseline server"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut first = String::new();
            let _ = tx.send(reader.read_line(&mut first).map(|_| first));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(line)) => line
                .trim()
                .strip_prefix("listening on ")
                .and_then(|a| a.parse::<SocketAddr>().ok()),
            _ => None,
        };
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the baseline login server did not start: {}", log.trim());
        };
        let config = wsgate_client::ClientConfig::from_addr(addr).timeout(Duration::from_secs(30));
        let gw = Gw::foreign(config, child, ticks);
        Self::reach(Some(gw), addr, &cert_pem, password, dir)
    }

    /// How to reach a started server at `addr` whose certificate is `cert_pem`.
    fn reach(
        gw: Option<Gw>,
        addr: SocketAddr,
        cert_pem: &str,
        password: String,
        dir: tempfile::TempDir,
    ) -> Result<Target> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            roots
                .add(cert.context("the baseline's certificate")?)
                .context("trusting the baseline's certificate")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 is not available")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Target {
            gw,
            addr,
            tls: Arc::new(tls),
            password,
            _dir: dir,
        })
    }

    /// A client TLS configuration with a session cache of its own: a new
    /// browser (`resume`), or one that never resumes.
    pub(crate) fn browser(&self, resume: bool) -> Arc<rustls::ClientConfig> {
        let mut c = (*self.tls).clone();
        c.resumption = if resume {
            rustls::client::Resumption::in_memory_sessions(4)
        } else {
            rustls::client::Resumption::disabled()
        };
        Arc::new(c)
    }

    async fn tls(&self, tls: &Arc<rustls::ClientConfig>) -> Result<Tls> {
        let tcp = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(self.addr))
            .await
            .map_err(|_| anyhow!("TCP connect to the baseline at {} timed out", self.addr))?
            .with_context(|| format!("TCP connect to the baseline at {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost")?;
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| anyhow!("TLS handshake with the baseline at {} timed out", self.addr))?
        .with_context(|| format!("TLS handshake with the baseline at {}", self.addr))
    }

    /// One request on a new TLS connection; the reply's status and the
    /// cookie it set, if any.
    async fn request(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<String>)> {
        let what = format!("{} {}", req.method(), req.uri());
        let stream = self.tls(tls).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 to the baseline at {}", self.addr))?;
        tokio::spawn(conn);
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .map_err(|_| anyhow!("{what} at the baseline {} timed out", self.addr))?
            .with_context(|| format!("{what} at the baseline {}", self.addr))?;
        let status = resp.status();
        let set_cookie = resp
            .headers()
            .get(hyper::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|c| c.strip_prefix(COOKIE)?.strip_prefix('='))
            .map(str::to_owned);
        let _ = resp.into_body().collect().await;
        Ok((status, set_cookie))
    }

    /// Logs in with the password; returns the session cookie.
    pub(crate) async fn login(&self, tls: &Arc<rustls::ClientConfig>) -> Result<String> {
        let body = serde_json::json!({"user": USER, "password": self.password}).to_string();
        let req = Request::post("/login")
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        match self.request(tls, req).await? {
            (StatusCode::OK, Some(cookie)) => Ok(cookie),
            (status, cookie) => bail!(
                "POST /login at the baseline {} answered {status} (cookie set: {})",
                self.addr,
                cookie.is_some()
            ),
        }
    }

    /// From nothing to the first reply: the first connection authenticates
    /// (`credential`), a new one upgrades `/ws` with the cookie and sends
    /// one `payload` request, whose echo is checked.
    pub(crate) async fn connect(
        &self,
        credential: &Credential,
        resume: bool,
        payload: &[u8],
    ) -> Result<()> {
        let tls = self.browser(resume);
        let cookie = match credential {
            Credential::Password => self.login(&tls).await?,
            Credential::Cookie(c) => {
                let req = Request::get("/me")
                    .header(hyper::header::HOST, "localhost")
                    .header(hyper::header::COOKIE, format!("{COOKIE}={c}"))
                    .body(Full::new(Bytes::new()))?;
                let (status, _) = self.request(&tls, req).await?;
                if status != StatusCode::OK {
                    bail!(
                        "GET /me with the cookie at the baseline {} answered {status}",
                        self.addr
                    );
                }
                c.clone()
            }
        };
        let stream = self.tls(&tls).await?;
        let req = Request::get("/ws")
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13")
            .header(hyper::header::COOKIE, format!("{COOKIE}={cookie}"))
            .body(Empty::<Bytes>::new())?;
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            fastwebsockets::handshake::client(&Exec, req, stream),
        )
        .await
        .map_err(|_| anyhow!("the wss:// upgrade at the baseline {} timed out", self.addr))?
        .with_context(|| format!("the wss:// upgrade at the baseline {}", self.addr))?;
        ws.write_frame(Frame::binary(Payload::Borrowed(payload)))
            .await
            .with_context(|| format!("sending the request to the baseline {}", self.addr))?;
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.read_frame())
            .await
            .map_err(|_| anyhow!("the baseline {} did not answer the request", self.addr))?
            .with_context(|| format!("reading the reply from the baseline {}", self.addr))?;
        if frame.opcode != OpCode::Binary || &frame.payload[..] != payload {
            bail!(
                "the baseline {} answered {:?} with {} bytes, not the echo",
                self.addr,
                frame.opcode,
                frame.payload.len()
            );
        }
        Ok(())
    }
}

/// The hidden subcommand's directory argument, checked.
pub(crate) fn baseline_dir(dir: Option<&PathBuf>) -> Result<&Path> {
    dir.map(PathBuf::as_path).ok_or_else(|| {
        anyhow!("baseline-login-server needs --baseline-dir DIR (the bench passes it)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() -> Result<()> {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex("0001abff")?, bytes);
        assert!(unhex("0g").is_err());
        assert!(unhex("abc").is_err());
        Ok(())
    }

    #[test]
    fn the_stored_hash_verifies_only_the_password() -> Result<()> {
        let salt = random::<16>()?;
        let n = NonZeroU32::new(4096).ok_or_else(|| anyhow!("zero"))?;
        let mut hash = [0u8; 32];
        let alg = ring::pbkdf2::PBKDF2_HMAC_SHA256;
        ring::pbkdf2::derive(alg, n, &salt, b"secret", &mut hash);
        assert!(ring::pbkdf2::verify(alg, n, &salt, b"secret", &hash).is_ok());
        assert!(ring::pbkdf2::verify(alg, n, &salt, b"Secret", &hash).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_browser_logs_in_and_comes_back_with_its_cookie() -> Result<()> {
        let (dir, cert_pem, password) = prepare(4096)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = dir.path().to_path_buf();
        tokio::spawn(async move {
            let _ = serve(&path, |addr| {
                let _ = tx.send(addr);
            })
            .await;
        });
        let addr = rx.await?;
        let target = Target::reach(None, addr, &cert_pem, password, dir)?;
        for resume in [true, false] {
            target
                .connect(&Credential::Password, resume, b"hello")
                .await?;
        }
        let cookie = target.login(&target.browser(true)).await?;
        target
            .connect(&Credential::Cookie(cookie), true, &[7; 64])
            .await?;
        let wrong = target
            .connect(&Credential::Cookie("00".into()), true, b"x")
            .await;
        assert!(wrong.is_err(), "an unknown cookie must be refused");
        let bad = Target {
            password: "wrong".into(),
            ..target
        };
        assert!(bad.login(&bad.browser(true)).await.is_err());
        Ok(())
    }
}
