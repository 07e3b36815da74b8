//! One WebSocket connection: HELLO, KEY_INIT, KEY_ACK, then protected
//! request/response frames until close (DESIGN §5.2–5.4).
//!
//! A single task owns the connection. The read half lives inside a boxed
//! future that is re-armed after every frame, so the task can also react to
//! timers and revocations while a read is pending without cancelling it
//! (fastwebsockets' reads are not cancel-safe).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{
    Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::time::{Instant, sleep_until};
use wsgate_proto::envelope::{self, FLAG_ENC, FLAG_ERR, MessageType};
use wsgate_proto::key_exchange::{self, Hello, KeyAck, TrafficKeys};
use wsgate_proto::protect::{Opener, Sealer};
use wsgate_proto::{b64, ip};

use super::registry::Registration;
use crate::Shared;
use crate::handler::HandlerRequest;
use crate::http::serve::ConnGuard;
use crate::hub::{HubMessage, Mailbox};
use crate::routes::{Builtin, Target};
use crate::upstream::Caller;

type Io = TokioIo<Upgraded>;
type Reader = WebSocketRead<ReadHalf<Io>>;
type Writer = WebSocketWrite<WriteHalf<Io>>;
type ReadFuture = Pin<Box<dyn Future<Output = (Reader, ReadResult)> + Send>>;

/// Close codes of DESIGN §5.4.
pub(crate) mod close {
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    pub(crate) const UNSUPPORTED_DATA: u16 = 1003;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const SESSION_ENDED: u16 = 4001;
    pub(crate) const INTERNAL_ERROR: u16 = 1011;
    pub(crate) const SLOW_CONSUMER: u16 = 4429;
    pub(crate) const PROTOCOL_VIOLATION: u16 = 4400;
    pub(crate) const AUTH_FAILED: u16 = 4401;
    pub(crate) const KEY_INIT_TIMEOUT: u16 = 4408;
}

/// One whole WebSocket message or the reason there is none.
enum ReadResult {
    Binary(Vec<u8>),
    Text,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
    TooBig,
    ProtocolError,
    Gone,
}

/// Reads until a whole message, control frame, or failure. Binary
/// fragments are joined here so the size limit covers the whole message.
async fn read_message(mut reader: Reader, max: usize) -> (Reader, ReadResult) {
    let mut assembling: Option<Vec<u8>> = None;
    let result = loop {
        let frame = match reader
            .read_frame::<_, std::io::Error>(&mut |_| async { Ok(()) })
            .await
        {
            Ok(f) => f,
            Err(WebSocketError::FrameTooLarge) => break ReadResult::TooBig,
            Err(WebSocketError::UnexpectedEOF | WebSocketError::IoError(_)) => {
                break ReadResult::Gone;
            }
            Err(_) => break ReadResult::ProtocolError,
        };
        match frame.opcode {
            OpCode::Text => break ReadResult::Text,
            OpCode::Binary if assembling.is_some() => break ReadResult::ProtocolError,
            OpCode::Binary if frame.fin => break ReadResult::Binary(frame.payload.to_vec()),
            OpCode::Binary => assembling = Some(frame.payload.to_vec()),
            OpCode::Continuation => {
                let Some(buf) = assembling.as_mut() else {
                    break ReadResult::ProtocolError;
                };
                if buf.len() + frame.payload.len() > max {
                    break ReadResult::TooBig;
                }
                buf.extend_from_slice(&frame.payload);
                if frame.fin {
                    break ReadResult::Binary(assembling.take().unwrap_or_default());
                }
            }
            OpCode::Ping => break ReadResult::Ping(frame.payload.to_vec()),
            OpCode::Pong => break ReadResult::Pong,
            OpCode::Close => break parse_close(&frame.payload),
        }
    };
    (reader, result)
}

fn parse_close(payload: &[u8]) -> ReadResult {
    match payload {
        [] => ReadResult::Close(None),
        [_] => ReadResult::ProtocolError,
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed || std::str::from_utf8(reason).is_err() {
                ReadResult::ProtocolError
            } else {
                ReadResult::Close(Some(code))
            }
        }
    }
}

fn arm_read(reader: Reader, max: usize) -> ReadFuture {
    Box::pin(read_message(reader, max))
}

/// Why the connection ends, with the close frame to send (if any).
struct Ending {
    code: u16,
    reason: &'static str,
}

impl Ending {
    fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// What woke the connection task.
enum Wake {
    Revoked,
    Deadline(Ending),
    Tick,
    Completed(Completion),
    Hub(HubMessage),
    Read(Reader, ReadResult),
}

/// Key establishment state.
enum Phase {
    AwaitKeyInit {
        nonce: [u8; key_exchange::HELLO_NONCE_LEN],
        deadline: Instant,
    },
    Established(Box<Established>),
}

struct Established {
    session_id: String,
    user: String,
    expires_at: u64,
    sealer: Sealer,
    opener: Opener,
    registration: Registration,
    in_flight: std::collections::HashSet<u32>,
    /// Created on the first SUBSCRIBE.
    mailbox: Option<Mailbox>,
    subscriptions: std::collections::HashSet<String>,
}

/// A request answered by a task (upstream or in-process handler).
struct Completion {
    id: u32,
    enc: bool,
    result: Result<Vec<u8>, (String, String)>,
}

struct Conn {
    shared: Arc<Shared>,
    writer: Writer,
    ip_text: String,
    phase: Phase,
    last_activity: Instant,
    completions_tx: tokio::sync::mpsc::Sender<Completion>,
    completions_rx: tokio::sync::mpsc::Receiver<Completion>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Phase::Established(est) = &mut self.phase
            && let Some(mailbox) = &est.mailbox
        {
            self.shared
                .hub
                .remove(mailbox.id, est.subscriptions.drain());
        }
    }
}

/// Runs a connection to its end.
pub(crate) async fn run(shared: Arc<Shared>, ws: WebSocket<Io>, ip: IpAddr) {
    let _guard = ConnGuard::new(shared.open_connections.clone());
    let (mut reader, writer) = ws.split(tokio::io::split);
    let limits = shared.config.limits.clone();
    // Frames of exactly the limit are allowed; fastwebsockets refuses `>=`.
    reader.set_max_message_size(limits.max_message_size.saturating_add(1));
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    let nonce = crate::random_bytes::<{ key_exchange::HELLO_NONCE_LEN }>();
    let (completions_tx, completions_rx) = tokio::sync::mpsc::channel(limits.max_in_flight.max(1));
    let mut conn = Conn {
        completions_tx,
        completions_rx,
        ip_text: ip::to_text(ip),
        phase: Phase::AwaitKeyInit {
            nonce,
            deadline: Instant::now() + limits.key_init_timeout,
        },
        writer,
        shared,
        last_activity: Instant::now(),
    };
    let hello = Hello {
        v: 1,
        nonce: b64::encode_b64u(&nonce),
        ip: conn.ip_text.clone(),
        keys: conn.shared.keys.kids(),
    };
    let hello_body = serde_json::to_vec(&hello).unwrap_or_default();
    let sent = match envelope::encode(MessageType::Hello as u8, 0, 0, "", &hello_body) {
        Ok(bytes) => conn.send_raw(bytes).await,
        Err(_) => false,
    };
    if !sent {
        return;
    }
    let read = arm_read(reader, limits.max_message_size);
    let (ending, reader) = conn.drive(read).await;
    if let Some(ending) = ending {
        conn.close(ending, reader).await;
    }
}

impl Conn {
    /// The event loop; returns how to end, and the reader if it is still usable.
    async fn drive(&mut self, mut read: ReadFuture) -> (Option<Ending>, Option<Reader>) {
        let limits = self.shared.config.limits.clone();
        let mut ping_timer =
            tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
        loop {
            let wake = self.next_wake(&mut read, &mut ping_timer).await;
            let (reader, result) = match wake {
                Wake::Revoked => {
                    return (
                        Some(Ending::new(close::SESSION_ENDED, "session ended")),
                        None,
                    );
                }
                Wake::Deadline(ending) => return (Some(ending), None),
                Wake::Tick => {
                    let idle = self.last_activity.elapsed();
                    if idle >= limits.idle_timeout {
                        return (Some(Ending::new(close::GOING_AWAY, "idle timeout")), None);
                    }
                    if idle >= limits.ping_interval {
                        let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""));
                        if self.writer.write_frame(ping).await.is_err() {
                            return (None, None);
                        }
                    }
                    continue;
                }
                Wake::Completed(done) => {
                    if let Err(ending) = self.on_completion(done).await {
                        return (Some(ending), None);
                    }
                    continue;
                }
                Wake::Hub(message) => {
                    if let Err(ending) = self.on_hub_message(message).await {
                        return (Some(ending), None);
                    }
                    continue;
                }
                Wake::Read(reader, result) => (reader, result),
            };
            self.last_activity = Instant::now();
            let outcome = match result {
                ReadResult::Binary(mut message) => self.on_message(&mut message).await,
                ReadResult::Ping(payload) => {
                    if self
                        .writer
                        .write_frame(Frame::pong(Payload::Owned(payload)))
                        .await
                        .is_err()
                    {
                        return (None, None);
                    }
                    Ok(())
                }
                ReadResult::Pong => Ok(()),
                ReadResult::Text => Err(Ending::new(
                    close::UNSUPPORTED_DATA,
                    "text frames are not accepted",
                )),
                ReadResult::TooBig => Err(Ending::new(close::TOO_BIG, "message too big")),
                ReadResult::ProtocolError => Err(Ending::new(
                    close::PROTOCOL_ERROR,
                    "WebSocket protocol error",
                )),
                ReadResult::Close(code) => {
                    let _ = self
                        .writer
                        .write_frame(Frame::close(code.unwrap_or(1000), b""))
                        .await;
                    return (None, None);
                }
                ReadResult::Gone => return (None, None),
            };
            if let Err(ending) = outcome {
                return (Some(ending), Some(reader));
            }
            read = arm_read(reader, limits.max_message_size);
        }
    }

    /// Waits for whatever happens next. Every future borrowed from `self`
    /// is dropped when this returns, so the caller may act on `self` freely.
    async fn next_wake(
        &mut self,
        read: &mut ReadFuture,
        ping_timer: &mut tokio::time::Interval,
    ) -> Wake {
        let (deadline, ending) = match &self.phase {
            Phase::AwaitKeyInit { deadline, .. } => (
                *deadline,
                Ending::new(close::KEY_INIT_TIMEOUT, "no KEY_INIT in time"),
            ),
            Phase::Established(est) => (
                expiry_instant(est.expires_at),
                Ending::new(close::SESSION_ENDED, "session expired"),
            ),
        };
        let (revoked, completions, mailbox) = match &mut self.phase {
            Phase::Established(est) => (
                Some(&mut est.registration.revoked),
                Some(&mut self.completions_rx),
                est.mailbox.as_mut(),
            ),
            Phase::AwaitKeyInit { .. } => (None, None, None),
        };
        let revoked = async {
            if let Some(r) = revoked
                && r.wait_for(|r| *r).await.is_ok()
            {
                return;
            }
            std::future::pending::<()>().await;
        };
        let completion = async {
            match completions {
                Some(rx) => match rx.recv().await {
                    Some(done) => done,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let hub_message = async {
            match mailbox {
                Some(m) => match m.recv().await {
                    Some(msg) => msg,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = revoked => Wake::Revoked,
            () = sleep_until(deadline) => Wake::Deadline(ending),
            done = completion => Wake::Completed(done),
            message = hub_message => Wake::Hub(message),
            _ = ping_timer.tick() => Wake::Tick,
            (reader, result) = read => Wake::Read(reader, result),
        }
    }

    /// Sends a close frame, then waits briefly for the peer's close so the
    /// code reaches it before the TCP connection goes away.
    async fn close(&mut self, ending: Ending, reader: Option<Reader>) {
        if ending.code != close::SESSION_ENDED && ending.code != close::GOING_AWAY {
            tracing::debug!(code = ending.code, reason = ending.reason, ip = %self.ip_text, "closing connection");
        }
        if self
            .writer
            .write_frame(Frame::close(ending.code, ending.reason.as_bytes()))
            .await
            .is_err()
        {
            return;
        }
        let Some(reader) = reader else { return };
        let mut read = arm_read(reader, 1 << 16);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let (r, result) = (&mut read).await;
                match result {
                    ReadResult::Close(_)
                    | ReadResult::Gone
                    | ReadResult::ProtocolError
                    | ReadResult::TooBig => break,
                    _ => read = arm_read(r, 1 << 16),
                }
            }
        })
        .await;
    }

    async fn send_raw(&mut self, bytes: Vec<u8>) -> bool {
        self.writer
            .write_frame(Frame::binary(Payload::Owned(bytes)))
            .await
            .is_ok()
    }

    async fn on_message(&mut self, message: &mut [u8]) -> Result<(), Ending> {
        match &self.phase {
            Phase::AwaitKeyInit { nonce, .. } => {
                let nonce = *nonce;
                self.on_key_init(message, &nonce).await
            }
            Phase::Established(_) => self.on_protected(message).await,
        }
    }

    async fn on_key_init(&mut self, message: &[u8], nonce: &[u8; 32]) -> Result<(), Ending> {
        let violation = || Ending::new(close::PROTOCOL_VIOLATION, "expected KEY_INIT");
        let auth_failed = |reason| Ending::new(close::AUTH_FAILED, reason);
        let env = envelope::decode(message).map_err(|_| violation())?;
        if env.msg_type != MessageType::KeyInit as u8 || env.flags != 0 || env.id != 0 {
            return Err(violation());
        }
        let key_init = key_exchange::parse_key_init(env.body).map_err(|_| violation())?;
        let session_id = env.name;
        let record = match self.shared.state.get_session(session_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(auth_failed("unknown or expired session")),
            Err(e) => {
                tracing::error!(error = %e, "state store unavailable at KEY_INIT");
                return Err(Ending::new(
                    close::INTERNAL_ERROR,
                    "state store unavailable; retry",
                ));
            }
        };
        let now = crate::store::unix_now();
        if record.expires_at <= now {
            return Err(auth_failed("session expired"));
        }
        if self.shared.config.session_ip_check && record.ip != self.ip_text {
            return Err(auth_failed("connection IP differs from the login IP"));
        }
        let Some(key) = self
            .shared
            .keys
            .by_kid(&key_init.kid)
            .filter(|k| k.fingerprint() == record.key_fp)
        else {
            return Err(auth_failed(
                "KEY_INIT names another key than the login bound",
            ));
        };
        let dp =
            key_exchange::open_key_init(key, &key_init, session_id, &record.session_key, nonce)
                .map_err(|_| auth_failed("KEY_INIT did not open"))?;
        let keys = TrafficKeys::derive(&dp, nonce);
        let (sealer, opener) = keys.server_pair();
        let registration = self.shared.sessions.register(session_id);
        self.phase = Phase::Established(Box::new(Established {
            session_id: session_id.to_owned(),
            user: record.user.clone(),
            expires_at: record.expires_at,
            sealer,
            opener: opener.with_max_name_len(self.shared.config.limits.max_name_len),
            registration,
            in_flight: std::collections::HashSet::new(),
            mailbox: None,
            subscriptions: std::collections::HashSet::new(),
        }));
        let ack = KeyAck {
            user: record.user,
            expires_in: record.expires_at.saturating_sub(now),
        };
        let body = serde_json::to_vec(&ack).unwrap_or_default();
        self.send_protected(MessageType::KeyAck as u8, FLAG_ENC, 0, "", &body)
            .await
    }

    async fn send_protected(
        &mut self,
        msg_type: u8,
        flags: u8,
        id: u32,
        name: &str,
        body: &[u8],
    ) -> Result<(), Ending> {
        let Phase::Established(est) = &mut self.phase else {
            return Err(Ending::new(close::PROTOCOL_VIOLATION, "not established"));
        };
        let frame = est
            .sealer
            .seal(msg_type, flags, id, name, body)
            .map_err(|_| Ending::new(close::GOING_AWAY, "cannot seal"))?;
        if self.send_raw(frame).await {
            Ok(())
        } else {
            Err(Ending::new(close::GOING_AWAY, "write failed"))
        }
    }

    async fn respond_error(
        &mut self,
        id: u32,
        enc: bool,
        code: &str,
        message: &str,
    ) -> Result<(), Ending> {
        let body = json!({"code": code, "message": message}).to_string();
        let flags = FLAG_ERR | if enc { FLAG_ENC } else { 0 };
        self.send_protected(MessageType::Response as u8, flags, id, "", body.as_bytes())
            .await
    }

    async fn on_protected(&mut self, message: &mut [u8]) -> Result<(), Ending> {
        let violation = |reason| Ending::new(close::PROTOCOL_VIOLATION, reason);
        let Phase::Established(est) = &mut self.phase else {
            return Err(violation("not established"));
        };
        let opened = est
            .opener
            .open(message)
            .map_err(|_| violation("frame failed to verify"))?;
        let enc = opened.is_encrypted();
        if opened.flags & FLAG_ERR != 0 {
            return Err(violation("ERR flag on a client frame"));
        }
        let msg_type = MessageType::from_u8(opened.msg_type)
            .filter(|t| t.is_client_request())
            .ok_or_else(|| violation("unknown or server-to-client message type"))?;
        if opened.id == 0 {
            return Err(violation("request id 0"));
        }
        if est.in_flight.contains(&opened.id) {
            return Err(violation("request id already in flight"));
        }
        let id = opened.id;
        if est.in_flight.len() >= self.shared.config.limits.max_in_flight {
            return self
                .respond_error(
                    id,
                    enc,
                    "busy",
                    "too many requests in flight; wait for responses",
                )
                .await;
        }
        let name = opened.name.to_owned();
        let body = opened.body.to_vec();
        match msg_type {
            MessageType::Request => self.on_request(id, enc, &name, body).await,
            MessageType::Logout => self.on_logout(id, enc).await,
            MessageType::Subscribe => self.on_subscribe(id, enc, &name).await,
            MessageType::Unsubscribe => self.on_unsubscribe(id, enc, &name).await,
            MessageType::Publish => self.on_publish(id, enc, &name, &body).await,
            _ => Err(violation("unexpected message type")),
        }
    }

    async fn on_request(
        &mut self,
        id: u32,
        enc: bool,
        route_name: &str,
        body: Vec<u8>,
    ) -> Result<(), Ending> {
        let Some(route) = self.shared.config.routes.lookup(route_name).cloned() else {
            return self
                .respond_error(id, enc, "not_found", &format!("no route {route_name:?}"))
                .await;
        };
        if route.sensitive && !enc {
            return self
                .respond_error(
                    id,
                    enc,
                    "encryption_required",
                    &format!("route {route_name:?} is sensitive; send it with ENC"),
                )
                .await;
        }
        let flags = if enc { FLAG_ENC } else { 0 };
        match route.target {
            Target::Builtin(Builtin::Echo) => {
                self.send_protected(MessageType::Response as u8, flags, id, "", &body)
                    .await
            }
            Target::Builtin(Builtin::Whoami) => {
                let Phase::Established(est) = &self.phase else {
                    return Ok(());
                };
                let reply = json!({
                    "user": est.user,
                    "ip": self.ip_text,
                    "session_expires_in": est.expires_at.saturating_sub(crate::store::unix_now()),
                })
                .to_string();
                self.send_protected(MessageType::Response as u8, flags, id, "", reply.as_bytes())
                    .await
            }
            Target::Upstream(base) => {
                let Phase::Established(est) = &mut self.phase else {
                    return Ok(());
                };
                est.in_flight.insert(id);
                let (shared, tx) = (self.shared.clone(), self.completions_tx.clone());
                let (user, session_id, ip) = (
                    est.user.clone(),
                    est.session_id.clone(),
                    self.ip_text.clone(),
                );
                let route_name = route_name.to_owned();
                tokio::spawn(async move {
                    let caller = Caller {
                        user: &user,
                        session_id: &session_id,
                        client_ip: &ip,
                    };
                    let max = shared.config.limits.max_message_size;
                    let result = shared
                        .upstreams
                        .forward(&base, &route_name, &caller, body.into(), max)
                        .await
                        .map(|b| b.to_vec())
                        .map_err(|e| (e.code(), e.message()));
                    let _ = tx.send(Completion { id, enc, result }).await;
                });
                Ok(())
            }
            Target::Handler(handler) => {
                let Phase::Established(est) = &mut self.phase else {
                    return Ok(());
                };
                est.in_flight.insert(id);
                let tx = self.completions_tx.clone();
                let request = HandlerRequest {
                    route: route_name.to_owned(),
                    user: est.user.clone(),
                    client_ip: self.ip_text.clone(),
                    body: body.into(),
                    encrypted: enc,
                };
                tokio::spawn(async move {
                    let result = handler
                        .handle(request)
                        .await
                        .map_err(|e| (e.code, e.message));
                    let _ = tx.send(Completion { id, enc, result }).await;
                });
                Ok(())
            }
        }
    }

    async fn on_completion(&mut self, done: Completion) -> Result<(), Ending> {
        if let Phase::Established(est) = &mut self.phase {
            est.in_flight.remove(&done.id);
        }
        match done.result {
            Ok(body) => {
                let flags = if done.enc { FLAG_ENC } else { 0 };
                self.send_protected(MessageType::Response as u8, flags, done.id, "", &body)
                    .await
            }
            Err((code, message)) => self.respond_error(done.id, done.enc, &code, &message).await,
        }
    }

    async fn on_hub_message(&mut self, message: HubMessage) -> Result<(), Ending> {
        match message {
            HubMessage::Overflow => Err(Ending::new(
                close::SLOW_CONSUMER,
                "slow consumer: event queue full",
            )),
            HubMessage::Event(event) => {
                let sensitive = self
                    .shared
                    .config
                    .channels
                    .lookup(&event.channel)
                    .is_some_and(|m| m.rule.sensitive);
                let flags = if sensitive { FLAG_ENC } else { 0 };
                self.send_protected(
                    MessageType::Event as u8,
                    flags,
                    0,
                    &event.channel,
                    &event.payload,
                )
                .await
            }
        }
    }

    /// DESIGN §6 order: not_found, then encryption_required, then forbidden.
    fn check_channel(
        &self,
        enc: bool,
        name: &str,
        subscribe: bool,
    ) -> Result<(), (&'static str, String)> {
        let Phase::Established(est) = &self.phase else {
            return Err(("forbidden", "not established".into()));
        };
        let Some(m) = self.shared.config.channels.lookup(name) else {
            return Err(("not_found", format!("no channel matches {name:?}")));
        };
        if m.rule.sensitive && !enc {
            return Err((
                "encryption_required",
                format!("channel {name:?} is sensitive; send it with ENC"),
            ));
        }
        let allowed = if subscribe {
            m.may_subscribe(&est.user)
        } else {
            m.may_publish(&est.user)
        };
        if !allowed {
            let what = if subscribe {
                "subscribe to"
            } else {
                "publish to"
            };
            return Err(("forbidden", format!("you may not {what} {name:?}")));
        }
        Ok(())
    }

    async fn on_subscribe(&mut self, id: u32, enc: bool, name: &str) -> Result<(), Ending> {
        if let Err((code, message)) = self.check_channel(enc, name, true) {
            return self.respond_error(id, enc, code, &message).await;
        }
        // While the fleet's event feed is down, a subscription could not
        // promise to receive every later publish: refuse rather than lie.
        if !self.shared.state.is_healthy() {
            return self
                .respond_error(
                    id,
                    enc,
                    "unavailable",
                    "the event feed is reconnecting; retry shortly",
                )
                .await;
        }
        let max = self.shared.config.limits.max_subscriptions;
        let hub = self.shared.hub.clone();
        let Phase::Established(est) = &mut self.phase else {
            return Ok(());
        };
        if !est.subscriptions.contains(name) && est.subscriptions.len() >= max {
            return self
                .respond_error(id, enc, "busy", "too many subscriptions on this connection")
                .await;
        }
        let mailbox = est.mailbox.get_or_insert_with(|| hub.mailbox());
        if !hub.subscribe(mailbox.id, name) {
            return Err(Ending::new(
                close::SLOW_CONSUMER,
                "slow consumer: event queue full",
            ));
        }
        est.subscriptions.insert(name.to_owned());
        // The node's event feed runs from start-up, so every publish from
        // now on reaches this mailbox: the subscription is live.
        let flags = if enc { FLAG_ENC } else { 0 };
        self.send_protected(MessageType::Response as u8, flags, id, "", b"")
            .await
    }

    async fn on_unsubscribe(&mut self, id: u32, enc: bool, name: &str) -> Result<(), Ending> {
        let hub = self.shared.hub.clone();
        if let Phase::Established(est) = &mut self.phase
            && est.subscriptions.remove(name)
            && let Some(mailbox) = &est.mailbox
        {
            hub.unsubscribe(mailbox.id, name);
        }
        let flags = if enc { FLAG_ENC } else { 0 };
        self.send_protected(MessageType::Response as u8, flags, id, "", b"")
            .await
    }

    async fn on_publish(
        &mut self,
        id: u32,
        enc: bool,
        name: &str,
        body: &[u8],
    ) -> Result<(), Ending> {
        if let Err((code, message)) = self.check_channel(enc, name, false) {
            return self.respond_error(id, enc, code, &message).await;
        }
        if let Err(e) = self.shared.state.publish_event(name, body).await {
            tracing::error!(error = %e, "state store unavailable at PUBLISH");
            return self
                .respond_error(id, enc, "unavailable", "could not publish; retry")
                .await;
        }
        let flags = if enc { FLAG_ENC } else { 0 };
        self.send_protected(MessageType::Response as u8, flags, id, "", b"")
            .await
    }

    async fn on_logout(&mut self, id: u32, enc: bool) -> Result<(), Ending> {
        let Phase::Established(est) = &self.phase else {
            return Ok(());
        };
        let session_id = est.session_id.clone();
        if let Err(e) = self.shared.state.revoke_session(&session_id).await {
            tracing::error!(error = %e, "state store unavailable at LOGOUT");
            return self
                .respond_error(
                    id,
                    enc,
                    "unavailable",
                    "could not revoke the session; retry",
                )
                .await;
        }
        let flags = if enc { FLAG_ENC } else { 0 };
        self.send_protected(MessageType::Response as u8, flags, id, "", b"")
            .await?;
        Err(Ending::new(close::SESSION_ENDED, "logged out"))
    }
}

fn expiry_instant(expires_at: u64) -> Instant {
    let left = expires_at.saturating_sub(crate::store::unix_now());
    Instant::now() + Duration::from_secs(left)
}
