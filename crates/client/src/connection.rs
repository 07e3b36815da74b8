//! The WebSocket side: HELLO, KEY_INIT, KEY_ACK, protected frames.

use std::collections::VecDeque;
use std::future::Future;

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, Role, WebSocket};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, Sleep};
use wsgate_proto::envelope::{self, FLAG_ENC, FLAG_ERR, MessageType};
use wsgate_proto::key_exchange::{self, Hello, KeyAck, TrafficKeys};
use wsgate_proto::protect::{Opener, Sealer};
use zeroize::Zeroizing;

use crate::{ClientConfig, Error, HandshakeFailure, Result, Session};

type Ws = FragmentCollector<TokioIo<Upgraded>>;

/// A WebSocket to `/ws` with the subprotocol negotiated and nothing else:
/// the building block for [`Connection`] and for tests that need to send
/// what a well-behaved client never would.
pub struct RawSocket {
    ws: Ws,
    timeout: Duration,
    /// The receive timer. It stays armed across calls and is moved only when
    /// it fires before the current call's limit: arming a timer per message
    /// was a timer-wheel insert and removal per message.
    recv_timer: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for RawSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawSocket(..)")
    }
}

/// The client side of the upgrade (RFC 6455 §4.1) over an open stream:
/// the request, then either the upgraded socket or what the server
/// answered instead (status and the start of the body) or how the
/// connection failed. `fastwebsockets::handshake::client` reports only
/// "connection error" or the status, which says too little when a
/// benchmark's connection fails.
async fn upgrade(
    stream: crate::http::Stream,
    req: hyper::Request<Empty<Bytes>>,
    protocol: Option<&str>,
) -> std::result::Result<WebSocket<TokioIo<Upgraded>>, HandshakeFailure> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(handshake_failure)?;
    tokio::spawn(async move {
        // Its errors reach the request below (or the upgraded socket).
        let _ = conn.with_upgrades().await;
    });
    let mut resp = sender.send_request(req).await.map_err(handshake_failure)?;
    let status = resp.status();
    if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return Err(HandshakeFailure::Refused {
            status: status.as_u16(),
            body: body_excerpt(resp.into_body()).await,
        });
    }
    let header_is = |name: &str, want: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(want))
    };
    if !header_is("Upgrade", "websocket") {
        return Err(HandshakeFailure::BadUpgrade(
            "without `Upgrade: websocket`".into(),
        ));
    }
    if !header_is("Connection", "upgrade") {
        return Err(HandshakeFailure::BadUpgrade(
            "without `Connection: upgrade`".into(),
        ));
    }
    let echoed = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if let Some(p) = protocol
        && echoed != Some(p)
    {
        return Err(HandshakeFailure::BadUpgrade(format!(
            "did not accept subprotocol {p}"
        )));
    }
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(handshake_failure)?;
    Ok(WebSocket::after_handshake(
        TokioIo::new(upgraded),
        Role::Client,
    ))
}

/// At most this much of a refused upgrade's body goes into the error.
const BODY_EXCERPT: usize = 200;

/// The start of a body, as lossy UTF-8; reading stops at
/// [`BODY_EXCERPT`] bytes, at the end, or at an error.
async fn body_excerpt(mut body: hyper::body::Incoming) -> String {
    use http_body_util::BodyExt as _;
    let mut bytes = Vec::new();
    while bytes.len() < BODY_EXCERPT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if text.len() > BODY_EXCERPT {
        let mut end = BODY_EXCERPT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn handshake_failure(e: hyper::Error) -> HandshakeFailure {
    if let Some(io) = crate::http::io_cause(&e) {
        return HandshakeFailure::Io(match io.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(io.kind(), io.to_string()),
        });
    }
    if e.is_incomplete_message() || e.is_closed() {
        return HandshakeFailure::Closed;
    }
    HandshakeFailure::Http(e.to_string())
}

/// One message received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A binary message.
    Binary(Vec<u8>),
    /// The server closed the connection.
    Closed {
        /// Close code.
        code: Option<u16>,
        /// Reason text.
        reason: String,
    },
}

impl RawSocket {
    /// Opens `ws://addr/ws` with subprotocol `wsgate.v1`.
    pub async fn open(config: &ClientConfig) -> Result<Self> {
        Self::open_with_protocol(config, Some("wsgate.v1")).await
    }

    /// Like [`RawSocket::open`] with another (or no) subprotocol.
    pub async fn open_with_protocol(config: &ClientConfig, protocol: Option<&str>) -> Result<Self> {
        Self::open_inner(config, "/ws", protocol).await
    }

    /// A plain WebSocket to `path` with no subprotocol (e.g. `/raw-echo`).
    pub async fn open_raw_path(config: &ClientConfig, path: &str) -> Result<Self> {
        Self::open_inner(config, path, None).await
    }

    async fn open_inner(config: &ClientConfig, path: &str, protocol: Option<&str>) -> Result<Self> {
        let tcp = crate::http::connect(config).await?;
        let mut req = hyper::Request::builder()
            .method("GET")
            .uri(path)
            .header("Host", &config.host)
            .header("Upgrade", "websocket")
            .header("Connection", "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13");
        if let Some(p) = protocol {
            req = req.header("Sec-WebSocket-Protocol", p);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::Http(e.to_string()))?;
        let local = tcp.local_addr();
        let failed = |answer| Error::Handshake {
            url: format!(
                "{}://{}{path}",
                if config.tls.is_some() { "wss" } else { "ws" },
                config.addr
            ),
            local,
            answer,
        };
        let ws = tokio::time::timeout(config.timeout, upgrade(tcp, req, protocol))
            .await
            .map_err(|_| Error::Timeout("the WebSocket handshake"))?
            .map_err(failed)?;
        Ok(Self {
            ws: FragmentCollector::new(ws),
            timeout: config.timeout,
            recv_timer: Box::pin(tokio::time::sleep(config.timeout)),
        })
    }

    /// Sends one binary message.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.ws
            .write_frame(Frame::binary(Payload::Owned(bytes)))
            .await
            .map_err(|e| Error::Protocol(format!("write failed: {e}")))
    }

    /// Sends one text message (the gateway closes with 1003).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws
            .write_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec())))
            .await
            .map_err(|e| Error::Protocol(format!("write failed: {e}")))
    }

    /// Receives the next binary message or the close.
    pub async fn recv(&mut self) -> Result<Incoming> {
        let limit = Instant::now() + self.timeout;
        let timer = &mut self.recv_timer;
        if timer.deadline() > limit {
            timer.as_mut().reset(limit);
        }
        // The read is never dropped for a timer that fired early (reading a
        // frame is not cancel-safe): the timer is moved and the same read
        // polled again.
        let read = Self::recv_inner(&mut self.ws);
        let mut read = std::pin::pin!(read);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = read.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            while timer.as_mut().poll(cx).is_ready() {
                if timer.deadline() >= limit {
                    return Poll::Ready(Err(Error::Timeout("a message")));
                }
                timer.as_mut().reset(limit);
            }
            Poll::Pending
        })
        .await
    }

    async fn recv_inner(ws: &mut Ws) -> Result<Incoming> {
        loop {
            let frame = match ws.read_frame().await {
                Ok(f) => f,
                Err(
                    fastwebsockets::WebSocketError::ConnectionClosed
                    | fastwebsockets::WebSocketError::UnexpectedEOF,
                ) => {
                    return Ok(Incoming::Closed {
                        code: None,
                        reason: "connection lost".into(),
                    });
                }
                Err(e) => return Err(Error::Protocol(format!("read failed: {e}"))),
            };
            match frame.opcode {
                OpCode::Binary => return Ok(Incoming::Binary(frame.payload.to_vec())),
                OpCode::Close => {
                    let p = &frame.payload;
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    let reason =
                        String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned();
                    return Ok(Incoming::Closed { code, reason });
                }
                OpCode::Text => {
                    return Err(Error::Protocol("the gateway sent a text frame".into()));
                }
                _ => {}
            }
        }
    }

    /// Receives a binary message; a close becomes [`Error::Closed`].
    pub async fn recv_binary(&mut self) -> Result<Vec<u8>> {
        match self.recv().await? {
            Incoming::Binary(b) => Ok(b),
            Incoming::Closed { code, reason } => Err(Error::Closed { code, reason }),
        }
    }

    /// Reads HELLO.
    pub async fn recv_hello(&mut self) -> Result<Hello> {
        let msg = self.recv_binary().await?;
        let env = envelope::decode(&msg).map_err(|e| Error::Protocol(e.to_string()))?;
        if env.msg_type != MessageType::Hello as u8 {
            return Err(Error::Protocol(format!(
                "expected HELLO, got type {:#04x}",
                env.msg_type
            )));
        }
        serde_json::from_slice(env.body).map_err(|_| Error::Protocol("malformed HELLO".into()))
    }

    /// Waits for the server's close and returns its code.
    pub async fn expect_close(&mut self) -> Result<Option<u16>> {
        loop {
            match self.recv().await? {
                Incoming::Closed { code, .. } => return Ok(code),
                Incoming::Binary(_) => continue,
            }
        }
    }
}

/// An opened protected frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Type byte.
    pub msg_type: u8,
    /// Flags.
    pub flags: u8,
    /// Request id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Plaintext body.
    pub body: Vec<u8>,
}

/// A key-established connection.
pub struct Connection {
    raw: RawSocket,
    sealer: Sealer,
    opener: Opener,
    next_id: u32,
    key_init: Vec<u8>,
    events: VecDeque<Message>,
    /// User name from KEY_ACK.
    pub user: String,
    /// Seconds left in the session at KEY_ACK.
    pub expires_in: u64,
    /// The IP the gateway observes (from HELLO).
    pub ip: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) async fn open(config: &ClientConfig, session: &Session) -> Result<Self> {
        let raw = RawSocket::open(config).await?;
        Self::establish(raw, session).await
    }

    /// Runs key establishment on an open socket.
    pub async fn establish(mut raw: RawSocket, session: &Session) -> Result<Self> {
        let hello = raw.recv_hello().await?;
        if hello.ip != session.ip {
            return Err(Error::IpChanged {
                login: session.ip.clone(),
                now: hello.ip,
            });
        }
        let nonce = hello
            .raw_nonce()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let dynamic_password = Zeroizing::new(crate::random_bytes::<32>());
        let key_init = key_exchange::seal_key_init(
            &mut rand::rng(),
            &session.server_key.pk,
            &session.id,
            session.session_key(),
            &nonce,
            &dynamic_password,
        )
        .map_err(|e| Error::Protocol(e.to_string()))?;
        let body = serde_json::to_vec(&key_init).map_err(|e| Error::Protocol(e.to_string()))?;
        let key_init = envelope::encode(MessageType::KeyInit as u8, 0, 0, &session.id, &body)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        raw.send_binary(key_init.clone()).await?;
        let (sealer, opener) = TrafficKeys::derive(&dynamic_password, &nonce).client_pair();
        let mut conn = Self {
            raw,
            sealer,
            opener,
            next_id: 1,
            key_init,
            events: VecDeque::new(),
            user: String::new(),
            expires_in: 0,
            ip: hello.ip,
        };
        let ack = conn.recv().await?;
        if ack.msg_type != MessageType::KeyAck as u8 || ack.flags != FLAG_ENC {
            return Err(Error::Protocol("expected KEY_ACK".into()));
        }
        let ack: KeyAck = serde_json::from_slice(&ack.body)
            .map_err(|_| Error::Protocol("malformed KEY_ACK".into()))?;
        conn.user = ack.user;
        conn.expires_in = ack.expires_in;
        Ok(conn)
    }

    /// The KEY_INIT message this connection sent (tests replay it).
    pub fn key_init_message(&self) -> &[u8] {
        &self.key_init
    }

    /// The underlying socket, to send frames a correct client never would.
    pub fn raw(&mut self) -> &mut RawSocket {
        &mut self.raw
    }

    /// Seals a frame with the next client sequence number without sending it.
    pub fn seal(
        &mut self,
        msg_type: u8,
        flags: u8,
        id: u32,
        name: &str,
        body: &[u8],
    ) -> Result<Vec<u8>> {
        self.sealer
            .seal(msg_type, flags, id, name, body)
            .map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Seals and sends a frame.
    pub async fn send(
        &mut self,
        msg_type: u8,
        flags: u8,
        id: u32,
        name: &str,
        body: &[u8],
    ) -> Result<()> {
        let frame = self.seal(msg_type, flags, id, name, body)?;
        self.raw.send_binary(frame).await
    }

    /// Receives and verifies the next protected frame.
    pub async fn recv(&mut self) -> Result<Message> {
        let mut msg = self.raw.recv_binary().await?;
        let opened = self
            .opener
            .open(&mut msg)
            .map_err(|e| Error::Protocol(format!("frame from server: {e}")))?;
        Ok(Message {
            msg_type: opened.msg_type,
            flags: opened.flags,
            id: opened.id,
            name: opened.name.to_owned(),
            body: opened.body.to_vec(),
        })
    }

    /// A fresh request id.
    pub fn next_request_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Sends a frame that expects a RESPONSE and waits for it.
    pub async fn call(
        &mut self,
        msg_type: MessageType,
        name: &str,
        body: &[u8],
        sensitive: bool,
    ) -> Result<Vec<u8>> {
        let id = self.next_request_id();
        let flags = if sensitive { FLAG_ENC } else { 0 };
        self.send(msg_type as u8, flags, id, name, body).await?;
        loop {
            let msg = self.recv().await?;
            if msg.msg_type == MessageType::Response as u8 && msg.id == id {
                if msg.flags & FLAG_ENC != flags {
                    return Err(Error::Protocol(
                        "response ENC flag does not mirror the request".into(),
                    ));
                }
                if msg.flags & FLAG_ERR != 0 {
                    let v: serde_json::Value =
                        serde_json::from_slice(&msg.body).unwrap_or_default();
                    let text = |k: &str| {
                        v.get(k)
                            .and_then(|s| s.as_str())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    return Err(Error::Server {
                        code: text("code"),
                        message: text("message"),
                    });
                }
                return Ok(msg.body);
            }
            if matches!(
                MessageType::from_u8(msg.msg_type),
                Some(
                    MessageType::Event
                        | MessageType::EventAt
                        | MessageType::Resync
                        | MessageType::PresenceEvent
                )
            ) {
                self.events.push_back(msg);
            }
        }
    }

    /// Sends a REQUEST to `route`, encrypted when `sensitive`, and returns
    /// the RESPONSE body.
    pub async fn request(&mut self, route: &str, body: &[u8], sensitive: bool) -> Result<Vec<u8>> {
        self.call(MessageType::Request, route, body, sensitive)
            .await
    }

    /// Ends the session everywhere: LOGOUT, its RESPONSE, then close 4001.
    pub async fn logout(mut self) -> Result<()> {
        self.call(MessageType::Logout, "", b"", true).await?;
        match self.raw.expect_close().await? {
            Some(4001) => Ok(()),
            code => Err(Error::Protocol(format!(
                "expected close 4001 after LOGOUT, got {code:?}"
            ))),
        }
    }

    /// The oldest event received while waiting for a response, if any.
    pub(crate) fn pop_event(&mut self) -> Option<Message> {
        self.events.pop_front()
    }

    /// Events received while waiting for responses.
    pub fn take_events(&mut self) -> Vec<Message> {
        self.events.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::RawSocket;
    use crate::{ClientConfig, Error, HandshakeFailure};

    /// A plain TCP listener that reads one request head and then does
    /// `answer` with the socket.
    async fn fake_server(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if !answer.is_empty() {
                    let _ = sock.write_all(answer).await;
                }
                // Dropping the socket closes it (with nothing written: before answering).
            }
        });
        addr
    }

    fn config(addr: SocketAddr) -> ClientConfig {
        ClientConfig::from_addr(addr).timeout(Duration::from_secs(5))
    }

    #[tokio::test]
    async fn a_refused_upgrade_names_the_url_the_local_address_and_the_answer() {
        let addr = fake_server(
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 32\r\nconnection: close\r\n\r\norigin https://evil.test refused",
        )
        .await;
        let err = RawSocket::open_raw_path(&config(addr), "/raw-echo")
            .await
            .unwrap_err();
        let text = err.to_string();
        let Error::Handshake { url, local, answer } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(url, &format!("ws://{addr}/raw-echo"));
        let local = local.expect("the local address is known after connect");
        assert!(
            text.contains(&format!("ws://{addr}/raw-echo from {local}")),
            "{text}"
        );
        assert_eq!(answer.status(), Some(403), "{text}");
        assert!(text.contains("HTTP 403"), "{text}");
        assert!(text.contains("origin https://evil.test refused"), "{text}");
    }

    #[tokio::test]
    async fn a_server_that_closes_without_answering_is_named() {
        let addr = fake_server(b"").await;
        let err = RawSocket::open(&config(addr)).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                &err,
                Error::Handshake {
                    answer: HandshakeFailure::Closed | HandshakeFailure::Io(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(text.contains(&format!("ws://{addr}/ws")), "{text}");
        assert!(
            text.contains("closed the connection before answering") || text.contains("ECONNRESET"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_101_without_the_subprotocol_is_named() {
        let addr = fake_server(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        )
        .await;
        let err = RawSocket::open(&config(addr)).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                &err,
                Error::Handshake {
                    answer: HandshakeFailure::BadUpgrade(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            text.contains("did not accept subprotocol wsgate.v1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_refused_tcp_connect_names_the_address_and_the_errno() {
        // A port that was just free: nothing listens there.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = RawSocket::open_raw_path(&config(addr), "/raw-echo")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(&err, Error::Connect { .. }), "{err:?}");
        assert_eq!(
            err.io_kind(),
            Some(std::io::ErrorKind::ConnectionRefused),
            "{text}"
        );
        assert!(
            text.contains(&format!("TCP connect to {addr} failed")),
            "{text}"
        );
        if cfg!(target_os = "linux") {
            assert!(text.contains("ECONNREFUSED"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_bound_source_address_is_named() {
        let addr = fake_server(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
        let via = config(addr).local_addr("127.0.0.2".parse().unwrap());
        let err = RawSocket::open(&via).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(" from 127.0.0.2:"), "{text}");
        assert!(text.contains("HTTP 404 instead of 101"), "{text}");
        assert!(
            !text.contains("instead of 101:"),
            "no body, no excerpt: {text}"
        );
    }
}
