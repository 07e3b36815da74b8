//! The WebSocket side: HELLO, KEY_INIT, KEY_ACK, protected frames.

use std::collections::VecDeque;
use std::future::Future;

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, Sleep};
use wsgate_proto::envelope::{self, FLAG_ENC, FLAG_ERR, MessageType};
use wsgate_proto::key_exchange::{self, Hello, KeyAck, TrafficKeys};
use wsgate_proto::protect::{Opener, Sealer};
use zeroize::Zeroizing;

use crate::{ClientConfig, Error, Result, Session};

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

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
        let handshake = fastwebsockets::handshake::client(&SpawnExecutor, req, tcp);
        let (ws, resp) = tokio::time::timeout(config.timeout, handshake)
            .await
            .map_err(|_| Error::Timeout("the WebSocket handshake"))?
            .map_err(|e| Error::Protocol(format!("WebSocket handshake failed: {e}")))?;
        if let Some(p) = protocol {
            let echoed = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok());
            if echoed != Some(p) {
                return Err(Error::Protocol(format!(
                    "server did not accept subprotocol {p}"
                )));
            }
        }
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
