//! Fixtures: a gateway on an ephemeral port with a temporary data directory,
//! and raw HTTP for hand-built login messages.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use wsgate_client::ClientConfig;
use wsgate_proto::{b64, login_seal, scram};
use wsgate_server::Gateway;
use wsgate_server::config::{Config, FileConfig};
use wsgate_server::keys::DataDir;
use wsgate_server::store::{CredentialStore, MemoryStateStore, SqliteCredentialStore, UserRecord};

pub(crate) const ALICE: &str = "alice";
pub(crate) const ALICE_PASSWORD: &str = "correct horse battery staple";
pub(crate) const BOB: &str = "bob";
pub(crate) const BOB_PASSWORD: &str = "hunter2-but-longer";
pub(crate) const SECOND_CLIENT_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// A running gateway; stops when dropped.
pub(crate) struct TestGateway {
    pub(crate) addr: SocketAddr,
    /// Where its `/metrics` is served (never on `addr`).
    pub(crate) metrics_addr: SocketAddr,
    pub(crate) fingerprint: String,
    _data: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What the nodes of an in-process fleet share: the data directory (keys,
/// server secret), the users and the state.
#[derive(Clone)]
pub(crate) struct Fleet {
    pub(crate) data: Arc<tempfile::TempDir>,
    pub(crate) credentials: Arc<SqliteCredentialStore>,
    pub(crate) state: Arc<MemoryStateStore>,
}

impl Fleet {
    pub(crate) async fn new() -> Self {
        let data = tempfile::tempdir().unwrap();
        let dir = DataDir::new(data.path());
        dir.load_or_init(&mut rand::rng()).unwrap();
        let credentials = Arc::new(SqliteCredentialStore::open(&dir.credentials_path()).unwrap());
        for (name, password) in [(ALICE, ALICE_PASSWORD), (BOB, BOB_PASSWORD)] {
            credentials
                .add_user(user_record(name, password))
                .await
                .unwrap();
        }
        Self {
            data: Arc::new(data),
            credentials,
            state: Arc::new(MemoryStateStore::new()),
        }
    }
}

/// Parses test TOML into a Config.
pub(crate) fn config(toml: &str) -> Config {
    Config::from_file(FileConfig::from_toml(toml, "test.toml".as_ref()).unwrap()).unwrap()
}

impl TestGateway {
    /// Default config plus `toml`, users alice and bob (4096 iterations).
    pub(crate) async fn start(toml: &str) -> Self {
        Self::start_in(&Fleet::new().await, config(toml)).await
    }

    /// A node of `fleet` running `config`.
    pub(crate) async fn start_in(fleet: &Fleet, config: Config) -> Self {
        Self::start_with_state(fleet, config, fleet.state.clone()).await
    }

    /// A node of `fleet` (its keys and users) running `config` on `state`
    /// instead of the fleet's in-memory one (e.g. a Redis store).
    pub(crate) async fn start_with_state(
        fleet: &Fleet,
        mut config: Config,
        state: Arc<dyn wsgate_server::store::StateStore>,
    ) -> Self {
        config.data_dir = fleet.data.path().to_owned();
        let (keys, secret) = DataDir::new(fleet.data.path()).load().unwrap();
        let fingerprint = keys.current().fingerprint().to_owned();
        let gateway = Gateway::new(config, keys, secret, fleet.credentials.clone(), state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics_listener.local_addr().unwrap();
        let metrics = gateway.serve_metrics(metrics_listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                _ = gateway.serve(listener, async {
                    let _ = stopped.await;
                }) => {}
                _ = metrics => {}
            }
        });
        Self {
            addr,
            metrics_addr,
            fingerprint,
            _data: fleet.data.clone(),
            stop: Some(stop),
        }
    }

    pub(crate) fn client(&self) -> ClientConfig {
        ClientConfig::from_addr(self.addr).timeout(Duration::from_secs(10))
    }
}

pub(crate) fn user_record(name: &str, password: &str) -> UserRecord {
    let salt = vec![0x5a; 16];
    let verifier = scram::derive_verifier(password, &salt, 4096).unwrap();
    UserRecord::from_verifier(name, salt, 4096, &verifier)
}

/// One HTTP reply.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) json: Value,
}

/// A keep-alive HTTP connection from a chosen source address.
pub(crate) struct RawHttp {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The gateway's current public key, fetched on first use.
    server_pk: Option<[u8; 32]>,
    /// An `X-Forwarded-For` sent with every request (see
    /// [`forwarded_for`](Self::forwarded_for)).
    forwarded_for: Option<String>,
}

/// An exchange begun by a sealed first request, its reply 1 opened.
pub(crate) struct Begun {
    pub(crate) sid: String,
    pub(crate) server_first: String,
    pub(crate) ip: String,
    pub(crate) key: login_seal::ExchangeKey,
    /// The reply's outer JSON.
    pub(crate) outer: Value,
}

/// A reply 2: the outer reply and its box opened (`Null` when it has none).
pub(crate) struct SecondReply {
    pub(crate) reply: Reply,
    pub(crate) inner: Value,
}

impl RawHttp {
    pub(crate) async fn connect(addr: SocketAddr, from: Option<IpAddr>) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
        }
        let tcp = socket.connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self {
            sender,
            server_pk: None,
            forwarded_for: None,
        }
    }

    /// Sends `X-Forwarded-For: <ip>` with every request: the gateway takes
    /// it for the client's address when the connection comes from a trusted
    /// proxy (configure `trusted_proxies = ["127.0.0.1"]` and `[proxy]
    /// client_ip_header = "x-forwarded-for"`).
    pub(crate) fn forwarded_for(mut self, ip: IpAddr) -> Self {
        self.forwarded_for = Some(ip.to_string());
        self
    }

    /// The current key of `GET /auth/key`.
    pub(crate) async fn server_pk(&mut self) -> [u8; 32] {
        if let Some(pk) = self.server_pk {
            return pk;
        }
        let reply = self.request("GET", "/auth/key", b"").await;
        let pk = b64::decode_b64u_array(reply.json["keys"][0]["pk"].as_str().unwrap()).unwrap();
        self.server_pk = Some(pk);
        pk
    }

    /// Request 1 with `plaintext` sealed to the current key, as sent
    /// (`{"kid","enc","ct"}`); the login key is returned to open the reply.
    pub(crate) async fn seal_first_plaintext(
        &mut self,
        plaintext: &[u8],
    ) -> (Value, login_seal::LoginKey) {
        let pk = self.server_pk().await;
        let (sealed, login_key) =
            login_seal::seal_first_plaintext(&mut rand::rng(), &pk, plaintext).unwrap();
        (serde_json::to_value(&sealed).unwrap(), login_key)
    }

    /// Sends `client_first` as a sealed request 1 (padded, as clients do);
    /// for a `401 unauthenticated` reply, the exchange with reply 1 opened.
    pub(crate) async fn put_first(&mut self, client_first: &str) -> (Reply, Option<Begun>) {
        let inner = login_seal::padded_first_request(client_first);
        let (body, login_key) = self.seal_first_plaintext(inner.as_bytes()).await;
        let reply = self.put_session(&body).await;
        let begun = open_reply_1(&reply, &login_key);
        (reply, begun)
    }

    /// Sends `client_final` as request 2 of `begun`, and opens reply 2.
    pub(crate) async fn put_second(&mut self, begun: &Begun, client_final: &str) -> SecondReply {
        let ct = begun.key.seal(
            login_seal::BoxNumber::Request2,
            &login_seal::request2_inner(client_final),
        );
        self.put_second_raw(begun, &serde_json::json!({"sid": begun.sid, "ct": ct}))
            .await
    }

    /// Sends any body as request 2 of `begun`, and opens reply 2 if boxed.
    pub(crate) async fn put_second_raw(&mut self, begun: &Begun, body: &Value) -> SecondReply {
        let reply = self.put_session(body).await;
        let inner = match reply.json["ct"].as_str() {
            Some(ct) => {
                let plain = begun
                    .key
                    .open(login_seal::BoxNumber::Reply2, ct)
                    .expect("reply 2's box opens under the exchange key");
                serde_json::from_slice(&plain).unwrap()
            }
            None => Value::Null,
        };
        SecondReply { reply, inner }
    }

    pub(crate) async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        if let Some(ip) = &self.forwarded_for {
            req = req.header("x-forwarded-for", ip);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
        }
    }

    pub(crate) async fn put_session(&mut self, body: &Value) -> Reply {
        self.request("PUT", "/auth/session", body.to_string().as_bytes())
            .await
    }
}

/// Opens a `401 unauthenticated` reply 1 under the exchange key its `sid`
/// gives; `None` for any other reply.
pub(crate) fn open_reply_1(reply: &Reply, login_key: &login_seal::LoginKey) -> Option<Begun> {
    if reply.status != 401 || reply.json["status"] != "unauthenticated" {
        return None;
    }
    let sid = reply.json["sid"].as_str().unwrap().to_owned();
    let raw_sid = b64::decode_b64u_array(&sid).unwrap();
    let key = login_key.exchange_key(&raw_sid);
    let plain = key
        .open(
            login_seal::BoxNumber::Reply1,
            reply.json["ct"].as_str().unwrap(),
        )
        .expect("reply 1's box opens under the exchange key");
    let inner: Value = serde_json::from_slice(&plain).unwrap();
    Some(Begun {
        sid,
        server_first: inner["scram"].as_str().unwrap().to_owned(),
        ip: inner["ip"].as_str().unwrap().to_owned(),
        key,
        outer: reply.json.clone(),
    })
}

/// The first half of a login done by hand: the exchange and the client state.
pub(crate) async fn first_request(
    http: &mut RawHttp,
    user: &str,
    password: &str,
) -> (Begun, scram::client::ClientFirst) {
    let start = scram::client::ClientFirst::new(user, password, &[7u8; 18]).unwrap();
    let (reply, begun) = http.put_first(&start.message()).await;
    assert_eq!(reply.status, 401, "{:?}", reply.json);
    assert_eq!(reply.json["status"], "unauthenticated");
    (begun.unwrap(), start)
}

/// The client-final of `begun` for `start`, bound to the observed IP and
/// `fp`.
pub(crate) fn client_final(begun: &Begun, start: scram::client::ClientFirst, fp: &str) -> String {
    start
        .handle_server_first(&begun.server_first, &begun.ip, fp, None)
        .unwrap()
        .1
}

/// The `e=` code of a failed reply sent in clear.
pub(crate) fn scram_error(reply: &Reply) -> String {
    assert_eq!(reply.status, 401, "{:?}", reply.json);
    assert_eq!(reply.json["status"], "failed", "{:?}", reply.json);
    assert!(reply.json.get("ct").is_none(), "sealed: {:?}", reply.json);
    reply.json["scram"].as_str().unwrap().to_owned()
}

/// The `e=` code of a failed reply 2 sent in `box(3, …)`.
pub(crate) fn sealed_error(second: &SecondReply) -> String {
    let reply = &second.reply;
    assert_eq!(reply.status, 401, "{:?}", reply.json);
    assert_eq!(reply.json["status"], "failed", "{:?}", reply.json);
    assert!(
        reply.json.get("scram").is_none(),
        "in clear: {:?}",
        reply.json
    );
    second.inner["scram"].as_str().unwrap().to_owned()
}

impl RawHttp {
    /// A request with an optional `Authorization` header.
    pub(crate) async fn request_with(
        &mut self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
        }
    }
}

/// `WSGATE_SKIP_SERVICE_TESTS=1` skips tests that need nginx, Redis or
/// PostgreSQL; without it a missing service fails the test with the package
/// to install.
pub(crate) fn skip_services() -> bool {
    let skip = std::env::var_os("WSGATE_SKIP_SERVICE_TESTS").is_some_and(|v| v == "1");
    if skip {
        eprintln!("skipped: WSGATE_SKIP_SERVICE_TESTS=1");
    }
    skip
}

/// A KEY_INIT message (envelope name `name`) sealing the dynamic password
/// `[3; 32]` for `session` to the HELLO's connection.
pub(crate) fn key_init_message(
    session: &wsgate_client::Session,
    hello: &wsgate_proto::key_exchange::Hello,
    name: &str,
) -> Vec<u8> {
    use wsgate_proto::envelope::{self, MessageType};
    let nonce = hello.raw_nonce().unwrap();
    let ki = wsgate_proto::key_exchange::seal_key_init(
        &mut rand::rng(),
        &session.server_key.pk,
        &session.id,
        session.session_key(),
        &nonce,
        &[3; 32],
    )
    .unwrap();
    envelope::encode(
        MessageType::KeyInit as u8,
        0,
        0,
        name,
        &serde_json::to_vec(&ki).unwrap(),
    )
    .unwrap()
}
