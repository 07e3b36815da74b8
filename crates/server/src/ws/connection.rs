//! One WebSocket connection: HELLO, KEY_INIT, KEY_ACK, then protected
//! request/response frames until close (protocol.md §5.2–5.5).
//!
//! A single task owns the connection. Its loop waits for whichever comes
//! first — a frame, a revocation, the deadline or ping timer, an upstream
//! answer, a channel event — handles it, takes whatever else is ready
//! without waiting (frames already read, queued events, answers), and only
//! then writes: every frame produced in one turn leaves in one `write`.
//!
//! The costs per message are kept to what the work needs (measured in
//! `docs/benchmarks.md`):
//!
//! * client frames are parsed by [`FrameReader`] (`frames.rs`: the checks of
//!   the fastwebsockets reader it replaced) from a buffer the connection owns:
//!   reading is a poll on that struct, cancel-safe by construction, so no
//!   read future is boxed or re-armed per message, and an idle connection
//!   can give its buffer back;
//! * frames are opened in place in that buffer, and responses are sealed
//!   straight into the outgoing buffer behind a WebSocket header written
//!   here (server frames are unmasked, so framing is a few bytes): a
//!   message is copied once, into its reply;
//! * one timer serves the key/expiry deadline and the ping tick and is reset
//!   only when one of them changes; the revocation future is made once, and
//!   neither is polled on turns where a cheap check says nothing happened;
//! * on `ws://` the TCP stream is taken back from hyper (`Upgraded::downcast`)
//!   and split into owned halves, so reading and writing take no lock.
//!
//! Every wait is bounded, writes included, at no cost per message: a turn's
//! write is tried at once, and only a write the socket does not take (the
//! client reads slower than it is sent to, or not at all) arms the same one
//! timer, for `send_timeout_secs` without progress; then the connection is
//! dropped (counted in `wsgate_send_timeouts_total`). While it waits, a
//! revocation, a graceful stop or the deadline still closes the connection.
//!
//! Every close the server starts (a revocation, expiry, the idle timeout, a
//! slow consumer, a graceful stop, a protocol violation) sends the close
//! frame and then waits briefly for the client's, reading what the client
//! still sends: closing a socket with the client's frames unread, or still
//! arriving, resets it, and a client busy sending would see a broken pipe
//! instead of the close code.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use fastwebsockets::WebSocket;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use wsgate_proto::continuity::{SubscribeReply, SubscribeRequest};
use wsgate_proto::envelope::{self, FLAG_ENC, FLAG_ERR, MessageType, TAG_LEN};
use wsgate_proto::key_exchange::{self, Hello, KeyAck, TrafficKeys};
use wsgate_proto::protect::{Opener, Sealer};
use wsgate_proto::{b64, ip};

use super::Unauthenticated;
use super::frames::{FrameReader, FrameWriter, ReadResult, opcode};
use super::registry::Registration;
use crate::Shared;
use crate::handler::HandlerRequest;
use crate::http::serve::{ConnGuard, WEBSOCKET_DRAIN};
use crate::http::tls::MaybeTls;
use crate::hub::{HubMessage, Mailbox};
use crate::routes::{Builtin, Target};
use crate::store::{Position, StoreEvent, StreamAt};
use crate::upstream::Caller;

type Io = TokioIo<Upgraded>;

/// Frames handled in one turn of the loop before its output is written.
const MAX_BATCH: usize = 64;
/// Bytes queued in one turn before they are written.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// How long to wait for the peer's close after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long answering the requests in flight may take at a graceful stop.
const FINISH_IN_FLIGHT: Duration = Duration::from_secs(5);
/// What a connection has, from the moment it learns of a graceful stop, to
/// answer what is in flight and finish its close handshake: the server's
/// drain, with a second to spare.
const SHUTDOWN_BUDGET: Duration = WEBSOCKET_DRAIN.saturating_sub(Duration::from_secs(1));

/// Close codes of protocol.md §5.5.
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

/// The reason of every 4401 close, whatever the cause (protocol.md §5.2,
/// §5.5): the cause is logged and counted, never sent.
const AUTH_FAILED_REASON: &str = "authentication failed; log in again";

// ---------------------------------------------------------------------------
// The byte stream under the WebSocket.

/// Any stream the connection can fall back to splitting with a lock.
pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A stream with the bytes hyper had read past the upgrade request in
/// front of it (a client may send frames before it sees the 101).
pub(super) struct Prefixed<T> {
    pending: Bytes,
    io: T,
}

impl<T> Prefixed<T> {
    fn new(pending: Bytes, io: T) -> Self {
        // An empty `Bytes` from hyper may still hold its whole read buffer.
        let pending = if pending.is_empty() {
            Bytes::new()
        } else {
            pending
        };
        Self { pending, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        if this.pending.is_empty() {
            // Let go of hyper's buffer.
            this.pending = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The read half: a TCP stream's own half (no lock), or a locked half of
/// anything else (TLS).
pub(super) enum ReadSide {
    Tcp(Prefixed<OwnedReadHalf>),
    Shared(tokio::io::ReadHalf<Box<dyn Stream>>),
}

/// The write half, as [`ReadSide`].
pub(super) enum WriteSide {
    /// `None` only while dropping.
    Tcp(Option<OwnedWriteHalf>),
    Shared(tokio::io::WriteHalf<Box<dyn Stream>>),
}

impl Drop for WriteSide {
    fn drop(&mut self) {
        // An owned write half sends its own shutdown(2) when dropped; the
        // read half's close(2) right after sends the FIN anyway, so the
        // extra syscall (and its FIN handling, ~6 % of a reconnect's server
        // CPU) is skipped.
        if let Self::Tcp(w) = self
            && let Some(w) = w.take()
        {
            w.forget();
        }
    }
}

/// The write half of a TCP connection that is being dropped: never used.
fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            Self::Shared(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(Some(w)) => Pin::new(w).poll_write(cx, buf),
            Self::Tcp(None) => Poll::Ready(Err(gone())),
            Self::Shared(w) => Pin::new(w).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(Some(w)) => Pin::new(w).poll_flush(cx),
            Self::Tcp(None) => Poll::Ready(Err(gone())),
            Self::Shared(w) => Pin::new(w).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(Some(w)) => Pin::new(w).poll_shutdown(cx),
            Self::Tcp(None) => Poll::Ready(Err(gone())),
            Self::Shared(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Takes the upgraded connection apart: on plain TCP into owned halves; on
/// anything else (TLS) into the two halves of a lock. The bytes returned
/// must be written before anything else: the 101 that plain TCP held back
/// to send with HELLO (`http::tls::PlainTcp`).
pub(super) fn split(ws: WebSocket<Io>) -> (ReadSide, WriteSide, Vec<u8>) {
    // Nothing was read through the WebSocket yet, so its own buffer is empty.
    let upgraded = ws.into_inner().into_inner();
    let stream: Box<dyn Stream> = match upgraded.downcast::<TokioIo<MaybeTls>>() {
        Ok(parts) => match parts.io.into_inner() {
            MaybeTls::Plain(plain) => {
                let (tcp, held) = plain.into_parts();
                let (r, w) = tcp.into_split();
                let read = Prefixed::new(parts.read_buf, r);
                return (ReadSide::Tcp(read), WriteSide::Tcp(Some(w)), held);
            }
            MaybeTls::Tls(tls) => Box::new(Prefixed::new(parts.read_buf, tls)),
        },
        Err(upgraded) => Box::new(TokioIo::new(upgraded)),
    };
    let (r, w) = tokio::io::split(stream);
    (ReadSide::Shared(r), WriteSide::Shared(w), Vec::new())
}

// ---------------------------------------------------------------------------
// Writing: frames queued in one buffer (`frames::FrameWriter`), written
// once per turn.

type Out = FrameWriter<WriteSide>;

impl Out {
    /// Seals a protected frame straight behind its WebSocket header. On
    /// error nothing is queued.
    #[inline]
    fn sealed(
        &mut self,
        sealer: &mut Sealer,
        msg_type: u8,
        flags: u8,
        id: u32,
        name: &str,
        body: &[u8],
    ) -> Result<(), Ending> {
        let start = self.buf.len();
        let len = envelope::FIXED_HEADER_LEN + name.len() + body.len() + TAG_LEN;
        self.buf.reserve(len + 10);
        self.header(opcode::BINARY, len);
        let frame_start = self.buf.len();
        let sealed = sealer.seal_into(&mut self.buf, msg_type, flags, id, name, body);
        if sealed.is_err() || self.buf.len() - frame_start != len {
            self.buf.truncate(start);
            return Err(Ending::new(close::GOING_AWAY, "cannot seal"));
        }
        Ok(())
    }
}

/// Resolves when `rx` turns true: the session was revoked, or (before
/// KEY_INIT, when there is no session yet) the server began to stop. Never
/// without a receiver.
async fn revoked(rx: Option<watch::Receiver<bool>>) {
    if let Some(mut rx) = rx
        && rx.wait_for(|r| *r).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// Polls `fut` once: its output if it is ready now.
async fn now<F: Future>(fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = fut => Some(out),
        () = std::future::ready(()) => None,
    }
}

// ---------------------------------------------------------------------------
// The connection.

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
    Timer,
    Completed(Completion),
    Hub(HubMessage),
    Read(ReadResult),
}

/// Key establishment state.
enum Phase {
    AwaitKeyInit {
        nonce: [u8; key_exchange::HELLO_NONCE_LEN],
    },
    Established(Box<Established>),
}

struct Established {
    session_id: String,
    user: String,
    expires_at: u64,
    sealer: Sealer,
    opener: Opener,
    /// Unregisters the connection when dropped.
    _registration: Registration,
    /// Ids of requests an upstream or handler is answering, at most
    /// `max_in_flight` of them: foldhash, as the route table. (An empty set,
    /// the usual case with built-in routes, is not hashed at all.)
    in_flight: std::collections::HashSet<u32, foldhash::fast::RandomState>,
    /// Made on the first request that a task answers (upstream or handler).
    completions: Option<(mpsc::Sender<Completion>, mpsc::Receiver<Completion>)>,
    /// Created on the first SUBSCRIBE.
    mailbox: Option<Mailbox>,
    subscriptions: std::collections::HashSet<String>,
    /// For each subscribed history channel: the last position this client
    /// was given (protocol.md §6.5), so it gets every later event once.
    streams: std::collections::HashMap<String, (Arc<str>, u64)>,
    /// Presence channels this connection is a member of (protocol.md §6.6).
    presence: std::collections::HashSet<String>,
    /// The last event's channel and the flags its rule gives (ENC or not).
    event_flags: Option<(String, u8)>,
}

/// A request answered by a task (upstream or in-process handler).
struct Completion {
    id: u32,
    enc: bool,
    result: Result<Vec<u8>, (String, String)>,
}

/// The key/expiry deadline and the ping tick, served by one timer.
struct Clock {
    /// KEY_INIT deadline, then the session's expiry.
    deadline: Instant,
    /// The next ping/idle check.
    tick: Instant,
}

impl Clock {
    fn next(&self) -> Instant {
        self.deadline.min(self.tick)
    }
}

/// What the turn's work decided.
type Step = Result<(), Ending>;

struct Conn {
    shared: Arc<Shared>,
    out: Out,
    ip_text: String,
    phase: Phase,
    last_activity: Instant,
    /// Whether anything arrived since the last ping tick.
    active: bool,
    clock: Clock,
    /// Set when `clock` changed and the timer must be reset.
    clock_changed: bool,
    /// The registration's revocation feed, once established, for the loop to
    /// build its (one) revocation future from.
    revocation: Option<watch::Receiver<bool>>,
    /// Set at a graceful stop: the close handshake ends by then.
    shutdown_by: Option<Instant>,
    /// This connection's place in `max_unauthenticated_per_ip`, held until
    /// KEY_INIT succeeds (or the connection ends).
    unauthenticated: Option<Unauthenticated>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Phase::Established(est) = &mut self.phase
            && let Some(mailbox) = &est.mailbox
        {
            self.shared
                .hub
                .remove(mailbox.id, est.subscriptions.drain());
            // This connection's presence ends with it: its users leave
            // (once their last member anywhere is gone).
            let members: Vec<_> = est
                .presence
                .drain()
                .map(|channel| self.shared.presence.member(&channel, &est.user, mailbox.id))
                .collect();
            if !members.is_empty() {
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    for member in members {
                        shared.presence.untrack(&member).await;
                        if let Err(e) = shared.state.presence_remove(&member).await {
                            // Its node stops refreshing it: it expires.
                            tracing::debug!(error = %e, "presence member left to expire");
                        }
                    }
                });
            }
        }
    }
}

/// Counts the connection in `/metrics` while it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: Arc<Shared>) -> Self {
        shared.metrics.connections_total.inc();
        shared.metrics.connections_open.inc();
        Self(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.connections_open.dec();
    }
}

/// Runs a connection to its end. `unauthenticated` is its place among its
/// IP's connections without KEY_INIT, given back at KEY_ACK.
pub(crate) fn run(
    shared: Arc<Shared>,
    ws: WebSocket<Io>,
    ip: IpAddr,
    unauthenticated: Unauthenticated,
) -> impl Future<Output = ()> + Send + 'static {
    // Set up here, not in the task: what only the set-up needs (the
    // WebSocket before its split, HELLO's text) then never becomes part of
    // the task's state, which every idle connection holds for its life.
    let guard = ConnGuard::new(shared.open_connections.clone());
    let counted = OpenConnection::new(shared.clone());
    let (read, write, held_101) = split(ws);
    let limits = &shared.config.limits;
    // Until KEY_INIT the only valid message is a KEY_INIT: anything larger
    // is refused (1009) at its frame header, so an unauthenticated
    // connection never makes the gateway buffer more than this. The
    // normal limit applies once established (`on_wake`).
    let mut reader = FrameReader::new(read, key_exchange::key_init_max_len(limits.max_name_len));
    let nonce = crate::random_bytes::<{ key_exchange::HELLO_NONCE_LEN }>();
    let start = Instant::now();
    let clock = Clock {
        deadline: start + limits.key_init_timeout,
        tick: start + limits.ping_interval,
    };
    let shutdown = shared.sessions.shutdown_watch();
    let mut conn = Conn {
        ip_text: ip::to_text(ip),
        phase: Phase::AwaitKeyInit { nonce },
        out: Out::behind(write, held_101),
        shared,
        last_activity: start,
        active: false,
        clock,
        clock_changed: false,
        // Until KEY_INIT there is no session to revoke, but a graceful stop
        // must not wait for the KEY_INIT deadline.
        revocation: Some(shutdown),
        shutdown_by: None,
        unauthenticated: Some(unauthenticated),
    };
    let hello = Hello {
        v: 1,
        nonce: b64::encode_b64u(&nonce),
        ip: conn.ip_text.clone(),
        keys: conn.shared.keys.kids(),
    };
    let hello_body = serde_json::to_vec(&hello).unwrap_or_default();
    // Written by the loop's first turn, bounded like every write.
    let ok = match envelope::encode(MessageType::Hello as u8, 0, 0, "", &hello_body) {
        Ok(bytes) => {
            conn.out.frame(opcode::BINARY, &bytes);
            true
        }
        Err(_) => false,
    };
    // Everything it needs is moved in once (rebinding a captured value
    // inside would store it twice).
    async move {
        let _held = (&guard, &counted);
        if !ok {
            return;
        }
        match conn.drive(&mut reader).await {
            End::Close(ending) => conn.close(ending, &mut reader).await,
            End::Answered => {
                conn.flush_within().await;
            }
            End::Drop => {}
        }
    }
}

/// How the loop ends.
enum End {
    /// Send this close, then wait briefly for the peer's.
    Close(Ending),
    /// The peer closed: write what is queued (the answering close), then
    /// drop the connection.
    Answered,
    /// The connection is gone, or writing to it stalled: drop it.
    Drop,
}

/// What ended a stalled write's wait.
enum Stalled {
    /// Everything was written (`true`), or the stream failed.
    Flushed(bool),
    Revoked,
    Timer,
}

impl Conn {
    /// The event loop.
    async fn drive(&mut self, reader: &mut FrameReader<ReadSide>) -> End {
        let timer = tokio::time::sleep_until(self.clock.next());
        let revocation = revoked(None);
        tokio::pin!(timer, revocation);
        // A timer or revocation future registers its waker when polled and
        // keeps it until it fires, so each is polled only when it was just
        // (re)armed or when a cheap check (an atomic load) says it has
        // fired: not on every wake (polling a waiting `Notified` takes a
        // lock). `news` is a second receiver of the revocation feed, only
        // ever asked whether something was sent.
        let (mut arm_timer, mut arm_revocation) = (true, false);
        let mut news: Option<watch::Receiver<bool>> = None;
        loop {
            if let Some(rx) = self.revocation.take() {
                news = Some(rx.clone());
                revocation.set(revoked(Some(rx)));
                arm_revocation = true;
            }
            // Everything the last turn produced leaves in one write, which
            // the socket nearly always takes at once. When it does not (the
            // client reads slower than it is sent to, or not at all), the
            // wait is bounded: no timer is armed for a write that is done.
            match std::future::poll_fn(|cx| Poll::Ready(self.out.poll_flush(cx))).await {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return End::Drop,
                Poll::Pending => {
                    if let Err(end) = self
                        .write_stalled(timer.as_mut(), revocation.as_mut())
                        .await
                    {
                        return end;
                    }
                }
            }
            if self.clock_changed {
                self.clock_changed = false;
                timer.as_mut().reset(self.clock.next());
                arm_timer = true;
            }
            let timer_due = |t: &Sleep| arm_timer || t.is_elapsed();
            let revocation_due = || {
                arm_revocation
                    || news
                        .as_ref()
                        .is_some_and(|rx| rx.has_changed().unwrap_or(true))
            };
            let mut wake = self
                .next_wake(
                    reader,
                    std::future::poll_fn(|cx| {
                        if timer_due(&timer) {
                            timer.as_mut().poll(cx)
                        } else {
                            Poll::Pending
                        }
                    }),
                    std::future::poll_fn(|cx| {
                        if revocation_due() {
                            revocation.as_mut().poll(cx)
                        } else {
                            Poll::Pending
                        }
                    }),
                )
                .await;
            (arm_timer, arm_revocation) = (false, false);
            let mut handled = 0;
            loop {
                if let Err(end) = self.on_wake(wake, reader).await {
                    return end;
                }
                handled += 1;
                if handled >= MAX_BATCH || self.out.queued() >= MAX_BATCH_BYTES {
                    break;
                }
                // More that is ready now joins this turn's write.
                match now(self.next_ready(reader)).await {
                    Some(Some(w)) => wake = w,
                    _ => break,
                }
            }
        }
    }

    /// Handles one wake; `Err` ends the loop.
    async fn on_wake(&mut self, wake: Wake, reader: &mut FrameReader<ReadSide>) -> Result<(), End> {
        match wake {
            // Boxed, as every rare path below: an async fn's state is as large
            // as the largest state it awaits, and every idle connection holds
            // its task's whole state (docs/benchmarks.md, round 7).
            Wake::Revoked => Err(Box::pin(self.on_revoked()).await),
            Wake::Timer => {
                let quiet = self.on_timer().map_err(End::Close)?;
                if quiet {
                    // Quiet for a whole interval: give the buffers back.
                    self.out.shrink();
                    reader.shrink();
                }
                Ok(())
            }
            Wake::Completed(done) => self.on_completion(done).map_err(End::Close),
            Wake::Hub(message) => self.on_hub_message(message).map_err(End::Close),
            Wake::Read(result) => {
                self.last_activity = Instant::now();
                self.active = true;
                let awaiting_key_init = self.unauthenticated.is_some();
                let step = self.on_read(result).await;
                if awaiting_key_init && matches!(self.phase, Phase::Established(_)) {
                    // KEY_INIT done: frames after it may be full size.
                    self.unauthenticated = None;
                    reader.set_limit(self.shared.config.limits.max_message_size);
                    // Many connections sit idle after KEY_ACK: they hold no
                    // read buffer until their next message arrives.
                    reader.shrink();
                }
                step
            }
        }
    }

    /// The session was revoked (4001), or the server is stopping (1001,
    /// once the requests in flight are answered).
    async fn on_revoked(&mut self) -> End {
        if !self.shared.sessions.is_shutting_down() {
            return End::Close(Ending::new(close::SESSION_ENDED, "session ended"));
        }
        self.shutdown_by = Some(Instant::now() + SHUTDOWN_BUDGET);
        self.finish_in_flight().await;
        End::Close(Ending::new(close::GOING_AWAY, "server shutting down"))
    }

    async fn on_read(&mut self, result: ReadResult) -> Result<(), End> {
        match result {
            ReadResult::Binary(mut message) => {
                self.on_message(&mut message).await.map_err(End::Close)
            }
            ReadResult::Ping(payload) => {
                self.out.frame(opcode::PONG, &payload);
                Ok(())
            }
            ReadResult::Pong => Ok(()),
            // The last two come only from a reader that accepts text, which
            // this one does not.
            ReadResult::Text | ReadResult::TextMessage(_) | ReadResult::InvalidUtf8 => {
                Err(End::Close(Ending::new(
                    close::UNSUPPORTED_DATA,
                    "text frames are not accepted",
                )))
            }
            ReadResult::TooBig => Err(End::Close(Ending::new(close::TOO_BIG, "message too big"))),
            ReadResult::ProtocolError => Err(End::Close(Ending::new(
                close::PROTOCOL_ERROR,
                "WebSocket protocol error",
            ))),
            ReadResult::Close(code) => {
                self.out.close_frame(code.unwrap_or(1000), b"");
                Err(End::Answered)
            }
            ReadResult::Gone => Err(End::Drop),
        }
    }

    /// Why the connection ends when `clock.deadline` passes.
    fn deadline_ending(&self) -> Ending {
        match self.phase {
            Phase::AwaitKeyInit { .. } => {
                Ending::new(close::KEY_INIT_TIMEOUT, "no KEY_INIT in time")
            }
            Phase::Established(_) => Ending::new(close::SESSION_ENDED, "session expired"),
        }
    }

    /// The deadline, or a ping tick. `Ok(true)`: the connection was quiet
    /// for a whole ping interval.
    fn on_timer(&mut self) -> Result<bool, Ending> {
        let now = Instant::now();
        if now >= self.clock.deadline {
            return Err(self.deadline_ending());
        }
        if now < self.clock.tick {
            // Woken early (the timer was due for the other one).
            self.clock_changed = true;
            return Ok(false);
        }
        let limits = &self.shared.config.limits;
        let idle = self.last_activity.elapsed();
        if idle >= limits.idle_timeout {
            return Err(Ending::new(close::GOING_AWAY, "idle timeout"));
        }
        if idle >= limits.ping_interval {
            self.out.frame(opcode::PING, b"");
        }
        let quiet = !self.active;
        self.active = false;
        self.clock.tick = (self.clock.tick + limits.ping_interval).max(now);
        self.clock_changed = true;
        Ok(quiet)
    }

    /// Waits for whatever happens next. Every future borrowed from `self`
    /// is dropped when this returns, so the caller may act on `self` freely.
    async fn next_wake(
        &mut self,
        reader: &mut FrameReader<ReadSide>,
        timer: impl Future<Output = ()>,
        revocation: impl Future<Output = ()>,
    ) -> Wake {
        let (completions, mailbox) = self.sources();
        tokio::select! {
            biased;
            () = revocation => Wake::Revoked,
            () = timer => Wake::Timer,
            done = recv_completion(completions) => Wake::Completed(done),
            message = recv_hub(mailbox) => Wake::Hub(message),
            result = reader.next() => Wake::Read(result),
        }
    }

    /// What else is ready without waiting: answers, events, frames already
    /// read (the revocation and the timer wait for the next turn).
    async fn next_ready(&mut self, reader: &mut FrameReader<ReadSide>) -> Option<Wake> {
        let (completions, mailbox) = self.sources();
        if let Some(rx) = completions
            && let Ok(done) = rx.try_recv()
        {
            return Some(Wake::Completed(done));
        }
        if let Some(m) = mailbox
            && let Some(message) = m.try_recv()
        {
            return Some(Wake::Hub(message));
        }
        // Polling the socket costs a readiness check (and its lock) even
        // when nothing is there: only look when bytes are left over.
        if !reader.has_buffered() {
            return None;
        }
        Some(Wake::Read(reader.next().await))
    }

    fn sources(
        &mut self,
    ) -> (
        Option<&mut mpsc::Receiver<Completion>>,
        Option<&mut Mailbox>,
    ) {
        match &mut self.phase {
            Phase::Established(est) => (
                est.completions.as_mut().map(|(_, rx)| rx),
                est.mailbox.as_mut(),
            ),
            Phase::AwaitKeyInit { .. } => (None, None),
        }
    }

    /// The turn's write did not fit in the socket: the client reads slower
    /// than it is sent to, or not at all. Waits for the write on the loop's
    /// one timer, re-armed here only, and meanwhile still ends the
    /// connection on revocation, a graceful stop or the deadline (the close
    /// is queued behind the data). A write that makes no progress for
    /// `send_timeout` drops the connection: a client that does not read
    /// would not read a close frame either. Nothing is read meanwhile.
    #[cold]
    #[inline(never)]
    async fn write_stalled(
        &mut self,
        mut timer: Pin<&mut Sleep>,
        mut revocation: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), End> {
        let send_timeout = self.shared.config.limits.send_timeout;
        let mut written = self.out.written();
        let mut progress_at = Instant::now();
        timer
            .as_mut()
            .reset(self.clock.deadline.min(progress_at + send_timeout));
        // The loop puts the timer back on its schedule afterwards.
        self.clock_changed = true;
        loop {
            let out = &mut self.out;
            let stalled = std::future::poll_fn(|cx| {
                if revocation.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Stalled::Revoked);
                }
                if let Poll::Ready(result) = out.poll_flush(cx) {
                    return Poll::Ready(Stalled::Flushed(result.is_ok()));
                }
                if out.written() != written {
                    written = out.written();
                    progress_at = Instant::now();
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Stalled::Timer),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match stalled {
                Stalled::Flushed(true) => {
                    // The client took the data, so it is there: the idle
                    // clock (whose ticks waited meanwhile) starts again.
                    self.last_activity = Instant::now();
                    return Ok(());
                }
                Stalled::Flushed(false) => return Err(End::Drop),
                Stalled::Revoked => return Err(Box::pin(self.on_revoked()).await),
                Stalled::Timer => {
                    let now = Instant::now();
                    if now >= self.clock.deadline {
                        return Err(End::Close(self.deadline_ending()));
                    }
                    if now >= progress_at + send_timeout {
                        self.shared.metrics.send_timeouts.inc();
                        tracing::debug!(ip = %self.ip_text, "dropping a connection whose writes stalled");
                        return Err(End::Drop);
                    }
                    timer
                        .as_mut()
                        .reset(self.clock.deadline.min(progress_at + send_timeout));
                }
            }
        }
    }

    /// `at`, or a graceful stop's deadline if that comes first.
    fn bounded(&self, at: Instant) -> Instant {
        self.shutdown_by.map_or(at, |by| at.min(by))
    }

    /// Writes what is queued as the connection ends, within `send_timeout`
    /// (and a graceful stop's deadline). `false`: it was not all written.
    async fn flush_within(&mut self) -> bool {
        let timeout = Instant::now() + self.shared.config.limits.send_timeout;
        let until = self.bounded(timeout);
        match tokio::time::timeout_at(until, self.out.flush()).await {
            Ok(result) => result.is_ok(),
            Err(_) => {
                if until == timeout {
                    self.shared.metrics.send_timeouts.inc();
                }
                false
            }
        }
    }

    /// Sends a close frame (behind anything still queued), then waits
    /// briefly for the peer's close, reading and throwing away what the
    /// peer sent before it saw ours. Every server-initiated close goes this
    /// way: a socket closed with the client's frames unread, or still
    /// arriving, is reset, and a client busy sending would see a broken pipe
    /// instead of the code. Bounded: the write by `send_timeout`, the wait
    /// by [`CLOSE_WAIT`], and both by a graceful stop's deadline.
    async fn close(&mut self, ending: Ending, reader: &mut FrameReader<ReadSide>) {
        if ending.code != close::SESSION_ENDED && ending.code != close::GOING_AWAY {
            tracing::debug!(code = ending.code, reason = ending.reason, ip = %self.ip_text, "closing connection");
        }
        self.out.close_frame(ending.code, ending.reason.as_bytes());
        if !self.flush_within().await {
            return;
        }
        reader.limit_message(1 << 16);
        let until = self.bounded(Instant::now() + CLOSE_WAIT);
        let _ = tokio::time::timeout_at(until, async {
            loop {
                match reader.next().await {
                    ReadResult::Close(_) | ReadResult::Gone | ReadResult::ProtocolError => break,
                    // Messages (a too big one is skipped), pings and pongs
                    // sent before the peer saw the close.
                    _ => {}
                }
            }
        })
        .await;
    }

    async fn on_message(&mut self, message: &mut [u8]) -> Step {
        match &self.phase {
            Phase::AwaitKeyInit { nonce } => {
                let nonce = *nonce;
                Box::pin(self.on_key_init(message, &nonce)).await
            }
            Phase::Established(_) => self.on_protected(message).await,
        }
    }

    async fn on_key_init(&mut self, message: &[u8], nonce: &[u8; 32]) -> Step {
        let violation = || Ending::new(close::PROTOCOL_VIOLATION, "expected KEY_INIT");
        let shared = self.shared.clone();
        // One close for every cause (issue 11, item 9): a reason that told
        // "unknown session" from "did not open" would let anyone who saw a
        // session id test whether it is still live. The cause goes to the
        // log (escaped: the session id is the client's) and the metrics.
        let ip_text = self.ip_text.clone();
        let auth_failed = |cause: crate::metrics::KeyInitRefusal, session_id: &str| {
            shared.metrics.key_establishments_failed.inc();
            shared.metrics.key_init_refusals.inc(cause);
            let shown: String = session_id.chars().take(64).collect();
            tracing::info!(
                session = ?shown,
                ip = %ip_text,
                cause = cause.label(),
                "KEY_INIT refused (4401)"
            );
            Ending::new(close::AUTH_FAILED, AUTH_FAILED_REASON)
        };
        use crate::metrics::KeyInitRefusal as Cause;
        let env = envelope::decode(message).map_err(|_| violation())?;
        if env.msg_type != MessageType::KeyInit as u8 || env.flags != 0 || env.id != 0 {
            return Err(violation());
        }
        let key_init = key_exchange::parse_key_init(env.body).map_err(|_| violation())?;
        let session_id = env.name;
        let record = match self.shared.state.get_session(session_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(auth_failed(Cause::UnknownSession, session_id)),
            Err(e) => {
                crate::log_limit::error_limited!(e, "state store unavailable at KEY_INIT");
                return Err(Ending::new(
                    close::INTERNAL_ERROR,
                    "state store unavailable; retry",
                ));
            }
        };
        let now = crate::store::unix_now();
        if record.expires_at <= now {
            return Err(auth_failed(Cause::Expired, session_id));
        }
        if self.shared.config.session_ip_check && record.ip != self.ip_text {
            return Err(auth_failed(Cause::IpMismatch, session_id));
        }
        let Some(key) = self
            .shared
            .keys
            .by_kid(&key_init.kid)
            .filter(|k| k.fingerprint() == record.key_fp)
        else {
            return Err(auth_failed(Cause::WrongKey, session_id));
        };
        let dp =
            key_exchange::open_key_init(key, &key_init, session_id, &record.session_key, nonce)
                .map_err(|_| auth_failed(Cause::OpenFailed, session_id))?;
        self.shared.metrics.key_establishments_ok.inc();
        let keys = TrafficKeys::derive(&dp, nonce);
        let (sealer, opener) = keys.server_pair();
        let registration = self.shared.sessions.register(session_id);
        self.revocation = Some(registration.revoked.clone());
        self.clock.deadline = expiry_instant(record.expires_at);
        self.clock_changed = true;
        self.phase = Phase::Established(Box::new(Established {
            session_id: session_id.to_owned(),
            user: record.user.clone(),
            expires_at: record.expires_at,
            sealer,
            opener: opener.with_max_name_len(self.shared.config.limits.max_name_len),
            _registration: registration,
            in_flight: std::collections::HashSet::default(),
            completions: None,
            mailbox: None,
            subscriptions: std::collections::HashSet::new(),
            streams: std::collections::HashMap::new(),
            presence: std::collections::HashSet::new(),
            event_flags: None,
        }));
        let ack = KeyAck {
            user: record.user,
            expires_in: record.expires_at.saturating_sub(now),
        };
        let body = serde_json::to_vec(&ack).unwrap_or_default();
        self.send_protected(MessageType::KeyAck as u8, FLAG_ENC, 0, "", &body)
    }

    /// Queues a protected frame (written at the end of the turn).
    fn send_protected(
        &mut self,
        msg_type: u8,
        flags: u8,
        id: u32,
        name: &str,
        body: &[u8],
    ) -> Step {
        let Phase::Established(est) = &mut self.phase else {
            return Err(Ending::new(close::PROTOCOL_VIOLATION, "not established"));
        };
        self.shared
            .metrics
            .frames_out
            .record(flags & FLAG_ENC != 0, body.len());
        self.out
            .sealed(&mut est.sealer, msg_type, flags, id, name, body)
    }

    fn respond(&mut self, id: u32, enc: bool, body: &[u8]) -> Step {
        let flags = if enc { FLAG_ENC } else { 0 };
        self.send_protected(MessageType::Response as u8, flags, id, "", body)
    }

    /// A SUBSCRIBE the state store could not serve: the subscription made
    /// for it is taken back and the client told to retry (`unavailable`).
    fn undo_subscribe(
        &mut self,
        mailbox_id: u64,
        name: &str,
        id: u32,
        enc: bool,
        why: &str,
    ) -> Step {
        if let Some(est) = self.established_mut() {
            est.subscriptions.remove(name);
        }
        self.shared.hub.unsubscribe(mailbox_id, name);
        self.respond_error(id, enc, "unavailable", why)
    }

    fn respond_error(&mut self, id: u32, enc: bool, code: &str, message: &str) -> Step {
        let body = json!({"code": code, "message": message}).to_string();
        let flags = FLAG_ERR | if enc { FLAG_ENC } else { 0 };
        self.send_protected(MessageType::Response as u8, flags, id, "", body.as_bytes())
    }

    async fn on_protected(&mut self, message: &mut [u8]) -> Step {
        let violation = |reason| Ending::new(close::PROTOCOL_VIOLATION, reason);
        let Phase::Established(est) = &mut self.phase else {
            return Err(violation("not established"));
        };
        // Opened in place: `name` and `body` borrow the read buffer.
        let metrics = &self.shared.metrics;
        let opened = est.opener.open(message).map_err(|_| {
            metrics.verification_failures.inc();
            violation("frame failed to verify")
        })?;
        let enc = opened.is_encrypted();
        metrics.frames_in.record(enc, opened.body.len());
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
            return self.respond_error(
                id,
                enc,
                "busy",
                "too many requests in flight; wait for responses",
            );
        }
        let (name, body) = (opened.name, opened.body);
        match msg_type {
            MessageType::Request => self.on_request(id, enc, name, body),
            // The control plane, boxed: a REQUEST (the hot path) keeps the
            // connection's state small.
            MessageType::Logout => Box::pin(self.on_logout(id, enc)).await,
            MessageType::Subscribe => Box::pin(self.on_subscribe(id, enc, name, body)).await,
            MessageType::Unsubscribe => Box::pin(self.on_unsubscribe(id, enc, name)).await,
            MessageType::Presence => Box::pin(self.on_presence(id, enc, name)).await,
            MessageType::Publish => Box::pin(self.on_publish(id, enc, name, body)).await,
            _ => Err(violation("unexpected message type")),
        }
    }

    fn on_request(&mut self, id: u32, enc: bool, route_name: &str, body: &[u8]) -> Step {
        /// What the route says to do, taken out of the shared table.
        enum Action {
            NotFound,
            NeedsEnc,
            Builtin(Builtin),
            Upstream(http::Uri),
            Handler(Arc<dyn crate::handler::RouteHandler>),
        }
        let action = match self.shared.config.routes.lookup(route_name) {
            None => Action::NotFound,
            Some(route) if route.sensitive && !enc => Action::NeedsEnc,
            Some(route) => match &route.target {
                Target::Builtin(b) => Action::Builtin(*b),
                Target::Upstream(base) => Action::Upstream(base.clone()),
                Target::Handler(h) => Action::Handler(h.clone()),
            },
        };
        match action {
            Action::NotFound => {
                self.respond_error(id, enc, "not_found", &format!("no route {route_name:?}"))
            }
            Action::NeedsEnc => self.respond_error(
                id,
                enc,
                "encryption_required",
                &format!("route {route_name:?} is sensitive; send it with ENC"),
            ),
            Action::Builtin(Builtin::Echo) => self.respond(id, enc, body),
            Action::Builtin(Builtin::Whoami) => {
                let Phase::Established(est) = &self.phase else {
                    return Ok(());
                };
                let reply = json!({
                    "user": est.user,
                    "ip": self.ip_text,
                    "session_expires_in": est.expires_at.saturating_sub(crate::store::unix_now()),
                })
                .to_string();
                self.respond(id, enc, reply.as_bytes())
            }
            Action::Upstream(base) => {
                let (shared, ip) = (self.shared.clone(), self.ip_text.clone());
                let Some(est) = self.established_mut() else {
                    return Ok(());
                };
                est.in_flight.insert(id);
                let tx = est.completion_sender(shared.config.limits.max_in_flight);
                let (user, session_id) = (est.user.clone(), est.session_id.clone());
                let (route_name, body) = (route_name.to_owned(), Bytes::copy_from_slice(body));
                tokio::spawn(async move {
                    let caller = Caller {
                        user: &user,
                        session_id: &session_id,
                        client_ip: &ip,
                    };
                    let max = shared.config.limits.max_message_size;
                    let started = std::time::Instant::now();
                    let result = shared
                        .upstreams
                        .forward(&base, &route_name, &caller, body, max)
                        .await
                        .map(|b| b.to_vec())
                        .map_err(|e| (e.code(), e.message()));
                    shared.metrics.upstream_latency.observe(started.elapsed());
                    if result.is_err() {
                        shared.metrics.upstream_errors.inc();
                    }
                    let _ = tx.send(Completion { id, enc, result }).await;
                });
                Ok(())
            }
            Action::Handler(handler) => {
                let (max_in_flight, ip) = (
                    self.shared.config.limits.max_in_flight,
                    self.ip_text.clone(),
                );
                let Some(est) = self.established_mut() else {
                    return Ok(());
                };
                est.in_flight.insert(id);
                let tx = est.completion_sender(max_in_flight);
                let request = HandlerRequest {
                    route: route_name.to_owned(),
                    user: est.user.clone(),
                    client_ip: ip,
                    body: Bytes::copy_from_slice(body),
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

    /// Answers the requests still in flight (up to 5 s) before a shutdown.
    async fn finish_in_flight(&mut self) {
        let deadline = self.bounded(Instant::now() + FINISH_IN_FLIGHT);
        while self
            .established_mut()
            .is_some_and(|est| !est.in_flight.is_empty())
        {
            let (completions, _) = self.sources();
            let Ok(done) = tokio::time::timeout_at(deadline, recv_completion(completions)).await
            else {
                return;
            };
            if self.on_completion(done).is_err() {
                return;
            }
        }
    }

    fn established_mut(&mut self) -> Option<&mut Established> {
        match &mut self.phase {
            Phase::Established(est) => Some(est),
            Phase::AwaitKeyInit { .. } => None,
        }
    }

    fn on_completion(&mut self, done: Completion) -> Step {
        if let Some(est) = self.established_mut() {
            est.in_flight.remove(&done.id);
        }
        match done.result {
            Ok(body) => self.respond(done.id, done.enc, &body),
            Err((code, message)) => self.respond_error(done.id, done.enc, &code, &message),
        }
    }

    fn on_hub_message(&mut self, message: HubMessage) -> Step {
        match message {
            HubMessage::Overflow => {
                self.shared.metrics.queue_drops.inc();
                Err(Ending::new(
                    close::SLOW_CONSUMER,
                    "slow consumer: event queue full",
                ))
            }
            HubMessage::Resync(resync) => self.on_stream_resync(&resync.0, &resync.1),
            HubMessage::PresencePending(channel) => self.on_presence_pending(&channel),
            HubMessage::Event(event) => {
                if let Some(at) = &event.at {
                    return self.on_stream_event(&event, at);
                }
                let flags = self.event_flags(&event.channel);
                self.send_protected(
                    MessageType::Event as u8,
                    flags,
                    0,
                    &event.channel,
                    &event.payload,
                )
            }
        }
    }

    /// Sends the presence changes of `channel` waiting for this connection.
    fn on_presence_pending(&mut self, channel: &str) -> Step {
        let Phase::Established(est) = &self.phase else {
            return Err(Ending::new(close::PROTOCOL_VIOLATION, "not established"));
        };
        let Some(mailbox) = &est.mailbox else {
            return Ok(());
        };
        let changes = self.shared.hub.take_presence(mailbox.id, channel);
        let flags = self.event_flags(channel);
        for change in changes {
            self.shared.metrics.presence_events_sent.inc();
            self.send_protected(
                MessageType::PresenceEvent as u8,
                flags,
                0,
                channel,
                &change.body(),
            )?;
        }
        Ok(())
    }

    /// The ENC flag of `channel`'s events (sensitive or not).
    /// Events come in runs on the same channel: its rule is looked up once
    /// per run, not per event.
    fn event_flags(&mut self, channel: &str) -> u8 {
        if let Phase::Established(est) = &self.phase
            && let Some((cached, flags)) = &est.event_flags
            && cached == channel
        {
            return *flags;
        }
        let sensitive = self
            .shared
            .config
            .channels
            .lookup(channel)
            .is_some_and(|m| m.rule.sensitive);
        let flags = if sensitive { FLAG_ENC } else { 0 };
        if let Phase::Established(est) = &mut self.phase {
            est.event_flags = Some((channel.to_owned(), flags));
        }
        flags
    }

    /// An event of a history channel: sent as EVENT_AT if it is after what
    /// this client was given; a jump in offsets or a new epoch is announced
    /// with RESYNC first (the node could not fill it: protocol.md §6.5).
    fn on_stream_event(&mut self, event: &StoreEvent, at: &StreamAt) -> Step {
        let Phase::Established(est) = &mut self.phase else {
            return Err(Ending::new(close::PROTOCOL_VIOLATION, "not established"));
        };
        let Some(last) = est.streams.get_mut(&event.channel) else {
            // Unsubscribed meanwhile, or its SUBSCRIBE is still reading.
            return Ok(());
        };
        let resync = if last.0 == at.epoch {
            if at.offset <= last.1 {
                return Ok(());
            }
            at.offset > last.1 + 1
        } else {
            true
        };
        *last = (at.epoch.clone(), at.offset);
        let flags = self.event_flags(&event.channel);
        if resync {
            self.send_resync(
                &event.channel,
                &Position {
                    epoch: at.epoch.to_string(),
                    offset: at.offset - 1,
                },
                flags,
            )?;
        }
        let body = wsgate_proto::continuity::event_at_body(at.offset, &event.payload);
        self.send_protected(MessageType::EventAt as u8, flags, 0, &event.channel, &body)
    }

    /// The node may have missed events of `channel` up to `position`.
    fn on_stream_resync(&mut self, channel: &str, position: &Position) -> Step {
        let Phase::Established(est) = &mut self.phase else {
            return Err(Ending::new(close::PROTOCOL_VIOLATION, "not established"));
        };
        let Some(last) = est.streams.get_mut(channel) else {
            return Ok(());
        };
        if *last.0 == *position.epoch && last.1 >= position.offset {
            // This client already has everything up to there.
            return Ok(());
        }
        *last = (position.epoch.as_str().into(), position.offset);
        let flags = self.event_flags(channel);
        self.send_resync(channel, position, flags)
    }

    fn send_resync(&mut self, channel: &str, position: &Position, flags: u8) -> Step {
        self.shared.metrics.history_resyncs.inc();
        let body = serde_json::to_vec(position).unwrap_or_default();
        self.send_protected(MessageType::Resync as u8, flags, 0, channel, &body)
    }

    /// protocol.md §6.2 order: not_found, then encryption_required, then forbidden.
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

    async fn on_subscribe(&mut self, id: u32, enc: bool, name: &str, body: &[u8]) -> Step {
        if let Err((code, message)) = self.check_channel(enc, name, true) {
            return self.respond_error(id, enc, code, &message);
        }
        // After the channel checks (protocol.md §6.5): a body that is not
        // empty and not a SUBSCRIBE object.
        let request = match SubscribeRequest::parse(body) {
            Ok(r) => r,
            Err(e) => return self.respond_error(id, enc, "bad_request", &e.to_string()),
        };
        // While the fleet's event feed is down, a subscription could not
        // promise to receive every later publish: refuse rather than lie.
        if !self.shared.state.is_healthy() {
            return self.respond_error(
                id,
                enc,
                "unavailable",
                "the event feed is reconnecting; retry shortly",
            );
        }
        let (history, presence) = self
            .shared
            .config
            .channels
            .lookup(name)
            .map_or((None, false), |m| (m.rule.history, m.rule.presence));
        let max = self.shared.config.limits.max_subscriptions;
        let hub = self.shared.hub.clone();
        let Some(est) = self.established_mut() else {
            return Ok(());
        };
        if !est.subscriptions.contains(name) && est.subscriptions.len() >= max {
            return self.respond_error(
                id,
                enc,
                "busy",
                "too many subscriptions on this connection",
            );
        }
        let mailbox = est.mailbox.get_or_insert_with(|| hub.mailbox());
        let mailbox_id = mailbox.id;
        if !hub.subscribe(mailbox_id, name) {
            return Err(Ending::new(
                close::SLOW_CONSUMER,
                "slow consumer: event queue full",
            ));
        }
        est.subscriptions.insert(name.to_owned());
        let user = est.user.clone();
        let already_member = est.presence.contains(name);
        // A presence member this SUBSCRIBE adds, taken back if it fails later.
        let mut joined = None;
        // A store with per-channel fan-out (Redis Cluster) subscribes this
        // node to the channel before the subscription is confirmed.
        if let Err(e) = self.shared.state.watch_channel(name).await {
            tracing::warn!(error = %e, "state store unavailable at SUBSCRIBE (fan-out)");
            return self.undo_subscribe(
                mailbox_id,
                name,
                id,
                enc,
                "could not subscribe this node to the channel; retry",
            );
        }
        if presence {
            hub.listen_presence(mailbox_id, name, request.presence_events);
            if !already_member {
                let member = self.shared.presence.member(name, &user, mailbox_id);
                let ttl = crate::presence::member_ttl(self.shared.config.limits.presence_ttl);
                if let Err(e) = self.shared.state.presence_add(&member, ttl).await {
                    tracing::warn!(error = %e, "state store unavailable at SUBSCRIBE (presence)");
                    return self.undo_subscribe(
                        mailbox_id,
                        name,
                        id,
                        enc,
                        "could not record presence; retry",
                    );
                }
                self.shared.presence.track(member.clone());
                joined = Some(member);
                if let Some(est) = self.established_mut() {
                    est.presence.insert(name.to_owned());
                }
            }
        }
        // The node's event feed runs from start-up, so every publish from
        // now on reaches this mailbox: the subscription is live.
        let Some(policy) = history else {
            return self.respond(id, enc, b"");
        };
        // A history channel: read the stream now that live events queue up
        // behind this SUBSCRIBE, answer with its position, replay what
        // `since` missed, and let through only later events (the mailbox is
        // read after this returns, so nothing overtakes the RESPONSE).
        let replay_limit = self.shared.config.limits.max_replay;
        let read = match self
            .shared
            .state
            .read_history(name, request.since.as_ref(), replay_limit, &policy)
            .await
        {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "state store unavailable at SUBSCRIBE");
                if let Some(member) = joined {
                    // Not subscribed, so not present either.
                    if let Some(est) = self.established_mut() {
                        est.presence.remove(name);
                    }
                    self.shared.presence.untrack(&member).await;
                    if let Err(e) = self.shared.state.presence_remove(&member).await {
                        tracing::warn!(error = %e, "presence member left to expire");
                    }
                }
                return self.undo_subscribe(
                    mailbox_id,
                    name,
                    id,
                    enc,
                    "could not read the channel's history; retry",
                );
            }
        };
        let recovered = request
            .since
            .as_ref()
            .is_some_and(|since| read.is_complete_after(since));
        hub.note_position(name, &read.position);
        if let Some(est) = self.established_mut() {
            est.streams.insert(
                name.to_owned(),
                (read.position.epoch.as_str().into(), read.position.offset),
            );
        }
        let reply = SubscribeReply {
            epoch: read.position.epoch.clone(),
            offset: read.position.offset,
            recovered,
        };
        let reply = serde_json::to_vec(&reply).unwrap_or_default();
        self.respond(id, enc, &reply)?;
        if recovered {
            let flags = self.event_flags(name);
            self.shared
                .metrics
                .history_replayed
                .add(read.events.len() as u64);
            for event in &read.events {
                let body = wsgate_proto::continuity::event_at_body(event.offset, &event.payload);
                self.send_protected(MessageType::EventAt as u8, flags, 0, name, &body)?;
            }
        }
        Ok(())
    }

    async fn on_unsubscribe(&mut self, id: u32, enc: bool, name: &str) -> Step {
        let hub = self.shared.hub.clone();
        let mut left = None;
        if let Some(est) = self.established_mut()
            && est.subscriptions.remove(name)
            && let Some(mailbox) = &est.mailbox
        {
            est.streams.remove(name);
            hub.unsubscribe(mailbox.id, name);
            if est.presence.remove(name) {
                left = Some((est.user.clone(), mailbox.id));
            }
        }
        if let Some((user, connection)) = left {
            let member = self.shared.presence.member(name, &user, connection);
            self.shared.presence.untrack(&member).await;
            if let Err(e) = self.shared.state.presence_remove(&member).await {
                tracing::warn!(error = %e, "presence member left to expire");
            }
        }
        self.respond(id, enc, b"")
    }

    /// PRESENCE (protocol.md §6.6): whoever may subscribe may ask; a
    /// channel without presence is `not_found`.
    async fn on_presence(&mut self, id: u32, enc: bool, name: &str) -> Step {
        if let Err((code, message)) = self.check_channel(enc, name, true) {
            return self.respond_error(id, enc, code, &message);
        }
        let has_presence = self
            .shared
            .config
            .channels
            .lookup(name)
            .is_some_and(|m| m.rule.presence);
        if !has_presence {
            return self.respond_error(
                id,
                enc,
                "not_found",
                &format!("channel {name:?} has no presence (set presence = true on its pattern)"),
            );
        }
        let limit = self.shared.config.limits.max_presence_list;
        match self.shared.state.presence_list(name, limit).await {
            Ok(list) => {
                let body = presence_reply(&list).to_string();
                self.respond(id, enc, body.as_bytes())
            }
            Err(e) => {
                tracing::warn!(error = %e, "state store unavailable at PRESENCE");
                self.respond_error(id, enc, "unavailable", "could not read presence; retry")
            }
        }
    }

    async fn on_publish(&mut self, id: u32, enc: bool, name: &str, body: &[u8]) -> Step {
        if let Err((code, message)) = self.check_channel(enc, name, false) {
            return self.respond_error(id, enc, code, &message);
        }
        let history = self
            .shared
            .config
            .channels
            .lookup(name)
            .and_then(|m| m.rule.history);
        let published = match &history {
            // A history channel answers with the event's position.
            Some(policy) => self
                .shared
                .state
                .publish_at(name, body, policy)
                .await
                .map(|p| serde_json::to_vec(&p).unwrap_or_default()),
            None => self
                .shared
                .state
                .publish_event(name, body)
                .await
                .map(|()| Vec::new()),
        };
        match published {
            Ok(reply) => self.respond(id, enc, &reply),
            Err(e) => {
                crate::log_limit::error_limited!(e, "state store unavailable at PUBLISH");
                self.respond_error(id, enc, "unavailable", "could not publish; retry")
            }
        }
    }

    async fn on_logout(&mut self, id: u32, enc: bool) -> Step {
        let Phase::Established(est) = &self.phase else {
            return Ok(());
        };
        let session_id = est.session_id.clone();
        if let Err(e) = self.shared.state.revoke_session(&session_id).await {
            crate::log_limit::error_limited!(e, "state store unavailable at LOGOUT");
            return self.respond_error(
                id,
                enc,
                "unavailable",
                "could not revoke the session; retry",
            );
        }
        self.respond(id, enc, b"")?;
        Err(Ending::new(close::SESSION_ENDED, "logged out"))
    }
}

impl Established {
    /// The sender for answers of requests handed to tasks, made on first use
    /// (most connections never need it).
    fn completion_sender(&mut self, capacity: usize) -> mpsc::Sender<Completion> {
        let (tx, _) = self
            .completions
            .get_or_insert_with(|| mpsc::channel(capacity.max(1)));
        tx.clone()
    }
}

async fn recv_completion(rx: Option<&mut mpsc::Receiver<Completion>>) -> Completion {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(done) => done,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn recv_hub(mailbox: Option<&mut Mailbox>) -> HubMessage {
    match mailbox {
        Some(m) => m.recv().await,
        None => std::future::pending().await,
    }
}

fn expiry_instant(expires_at: u64) -> Instant {
    let left = expires_at.saturating_sub(crate::store::unix_now());
    Instant::now() + Duration::from_secs(left)
}

/// The PRESENCE reply (and `/api/presence`'s): `{"users":[{"user",
/// "connections"}…]}`, with `"truncated": true` when cut.
pub(crate) fn presence_reply(list: &crate::store::PresenceList) -> serde_json::Value {
    let users: Vec<serde_json::Value> = list
        .users
        .iter()
        .map(|(user, n)| json!({"user": user, "connections": n}))
        .collect();
    if list.truncated {
        json!({"users": users, "truncated": true})
    } else {
        json!({"users": users})
    }
}
