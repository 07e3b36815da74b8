//! `/raw-echo-frames` (only with `[testing] raw_echo = true`): a plain
//! WebSocket echo served by the `/ws` driver's own framing — the
//! [`FrameReader`] that parses every client frame of `/ws` and the
//! [`FrameWriter`] that writes its frames, on the same split of the upgraded
//! stream — so that the Autobahn conformance suite (`scripts/autobahn`)
//! tests the reader production traffic goes through. `/raw-echo` (the
//! benchmark baseline) reads with fastwebsockets instead; the script runs
//! the suite against both.
//!
//! A separate path rather than a query parameter on `/raw-echo`: each
//! endpoint is one stack end to end, and the benchmarks' `/raw-echo` stays
//! exactly what it was.
//!
//! What differs from `/ws` is only what `/ws` has no use for:
//!
//! * the reader [accepts text](FrameReader::accept_text) (`/ws` refuses it
//!   with 1003): fragments are joined under the message limit and UTF-8 is
//!   validated fragment by fragment, failing with 1007 at the first fragment
//!   that cannot continue valid UTF-8;
//! * messages up to 64 MiB, as the suite needs (its 9.* cases send 16 MiB);
//! * no subprotocol, envelope, login or crypto: each message comes back as
//!   it came, with its opcode.
//!
//! The rest is the driver's: pings are answered, a close is answered with
//! its code, a failed connection gets a close frame (1002 protocol error,
//! 1007 invalid UTF-8, 1009 too big) and then the peer's close is awaited
//! for 2 s; everything ready in one turn is written in one batch. Waits are
//! bounded: the next message and each write by `idle_timeout_secs` (then
//! close 1001), like `/ws`'s idle timeout.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::split;
use super::frames::{FrameReader, FrameWriter, ReadResult, opcode};
use super::raw_echo::MAX_MESSAGE;
use crate::Shared;
use crate::http::serve::ConnGuard;

/// How long to wait for the peer's close after sending ours (as `/ws`).
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Bytes queued in one turn before they are written (as `/ws`).
const MAX_BATCH_BYTES: usize = 64 * 1024;

const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const PROTOCOL_ERROR: u16 = 1002;
const UNSUPPORTED_DATA: u16 = 1003;
const INVALID_DATA: u16 = 1007;
const TOO_BIG: u16 = 1009;

pub(crate) async fn upgrade(State(shared): State<Arc<Shared>>, mut req: Request) -> Response {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return (StatusCode::BAD_REQUEST, "WebSocket upgrades only\n").into_response();
    }
    let (response, upgraded) = match super::accept(&mut req) {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    tokio::spawn(async move {
        // Counted against max_connections, as /ws connections are.
        let _guard = ConnGuard::new(shared.open_connections.clone());
        let Ok(ws) = upgraded.await else { return };
        // Nothing is held: this 101 has no `wsgate.v1` (and the echo
        // writes only after reading).
        let (read, write, held) = split(ws);
        let reader = FrameReader::new(Own(read), MAX_MESSAGE).accept_text();
        echo(
            reader,
            FrameWriter::behind(write, held),
            shared.config.limits.idle_timeout,
        )
        .await;
    });
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, axum::body::Body::new(body))
}

/// The read half, passed through. A type of the echo's own, so that the
/// echo's `FrameReader<Own<ReadSide>>` is a copy of the reader's code apart
/// from `/ws`'s `FrameReader<ReadSide>`: a second caller of the same copy
/// would change how the compiler inlines `/ws`'s benchmark-tuned loop.
struct Own<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for Own<R> {
    #[inline]
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// Why the echo stops: with a close frame to send, or without (the peer
/// closed and was answered, or is gone).
type Ending = Option<(u16, &'static str)>;

/// Echoes messages until the peer closes, fails or goes quiet for `idle`.
async fn echo<R, W>(mut reader: FrameReader<R>, mut out: FrameWriter<W>, idle: Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ending = 'turns: loop {
        let Ok(mut result) = tokio::time::timeout(idle, reader.next()).await else {
            break Some((GOING_AWAY, "idle timeout"));
        };
        // Like the driver: whatever else is already read joins this turn's
        // write.
        loop {
            if let Err(ending) = on_read(result, &mut out) {
                break 'turns ending;
            }
            if out.queued() >= MAX_BATCH_BYTES || !reader.has_buffered() {
                break;
            }
            match std::future::poll_fn(|cx| Poll::Ready(reader.poll_message(cx).map(Some))).await {
                Poll::Ready(Some(next)) => result = next,
                _ => break,
            }
        }
        if !matches!(tokio::time::timeout(idle, out.flush()).await, Ok(Ok(()))) {
            return;
        }
    };
    let Some((code, reason)) = ending else {
        // The peer's close was answered (or the peer is gone).
        let _ = tokio::time::timeout(idle, out.flush()).await;
        return;
    };
    out.close_frame(code, reason.as_bytes());
    if !matches!(tokio::time::timeout(idle, out.flush()).await, Ok(Ok(()))) {
        return;
    }
    // As /ws: give the peer's close a moment to arrive, so our close frame
    // is not lost to a reset of a socket with unread data.
    reader.limit_message(1 << 16);
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            match reader.next().await {
                ReadResult::Close(_)
                | ReadResult::Gone
                | ReadResult::ProtocolError
                | ReadResult::TooBig => break,
                _ => {}
            }
        }
    })
    .await;
}

/// Queues the answer to one read; `Err` ends the echo.
fn on_read<W: AsyncWrite + Unpin>(
    result: ReadResult,
    out: &mut FrameWriter<W>,
) -> Result<(), Ending> {
    match result {
        ReadResult::Binary(message) => out.frame(opcode::BINARY, &message),
        ReadResult::TextMessage(message) => out.frame(opcode::TEXT, &message),
        ReadResult::Ping(payload) => out.frame(opcode::PONG, &payload),
        ReadResult::Pong => {}
        ReadResult::Close(code) => {
            // As /ws: the close is answered with its code.
            out.close_frame(code.unwrap_or(NORMAL), b"");
            return Err(None);
        }
        ReadResult::Gone => return Err(None),
        // Not from a reader that accepts text.
        ReadResult::Text => return Err(Some((UNSUPPORTED_DATA, "text refused"))),
        ReadResult::InvalidUtf8 => {
            return Err(Some((INVALID_DATA, "invalid UTF-8 in a text message")));
        }
        ReadResult::TooBig => return Err(Some((TOO_BIG, "message too big"))),
        ReadResult::ProtocolError => {
            return Err(Some((PROTOCOL_ERROR, "WebSocket protocol error")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::*;

    use crate::ws::frames::masked_frame as frame;

    fn close(code: u16, reason: &[u8]) -> Vec<u8> {
        frame(
            true,
            opcode::CLOSE,
            &[&code.to_be_bytes()[..], reason].concat(),
        )
    }

    /// The client's side of an echo running on in-memory streams.
    struct Client {
        tx: DuplexStream,
        rx: DuplexStream,
        echo: tokio::task::JoinHandle<()>,
    }

    impl Client {
        fn start(max: usize, idle: Duration) -> Self {
            let (tx, server_rx) = tokio::io::duplex(1 << 22);
            let (server_tx, rx) = tokio::io::duplex(1 << 22);
            let reader = FrameReader::new(server_rx, max).accept_text();
            let echo = tokio::spawn(echo(reader, FrameWriter::new(server_tx), idle));
            Self { tx, rx, echo }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.tx.write_all(bytes).await.unwrap();
        }

        /// The next server frame as (first byte, payload); `None` at the end
        /// of the stream.
        async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
            let mut head = [0u8; 2];
            self.rx.read_exact(&mut head).await.ok()?;
            assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
            let len = match head[1] {
                126 => usize::from(self.rx.read_u16().await.unwrap()),
                127 => usize::try_from(self.rx.read_u64().await.unwrap()).unwrap(),
                n => usize::from(n),
            };
            let mut payload = vec![0; len];
            self.rx.read_exact(&mut payload).await.unwrap();
            Some((head[0], payload))
        }

        /// The close code the server sent next.
        async fn close_code(&mut self) -> u16 {
            let (b0, payload) = self.frame().await.expect("a close frame");
            assert_eq!(b0, 0x80 | opcode::CLOSE);
            u16::from_be_bytes([payload[0], payload[1]])
        }

        /// Asserts the server closed the stream and the echo ended.
        async fn ends(mut self) {
            assert_eq!(self.frame().await, None);
            tokio::time::timeout(Duration::from_secs(1), self.echo)
                .await
                .expect("the echo ends")
                .unwrap();
        }
    }

    const IDLE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn echoes_text_and_binary_and_answers_pings_in_order() {
        let mut c = Client::start(1 << 20, IDLE);
        let word = "κόσμε".as_bytes();
        let mut bytes = frame(false, opcode::TEXT, &word[..3]);
        bytes.extend(frame(true, opcode::PING, b"are you there"));
        bytes.extend(frame(true, opcode::CONTINUATION, &word[3..]));
        bytes.extend(frame(true, opcode::BINARY, &[0, 255, 7]));
        bytes.extend(frame(true, opcode::PONG, b"ignored"));
        bytes.extend(frame(true, opcode::BINARY, &vec![9; 70_000]));
        c.send(&bytes).await;
        assert_eq!(c.frame().await, Some((0x8A, b"are you there".to_vec())));
        assert_eq!(c.frame().await, Some((0x81, word.to_vec())));
        assert_eq!(c.frame().await, Some((0x82, vec![0, 255, 7])));
        assert_eq!(c.frame().await, Some((0x82, vec![9; 70_000])));
        c.send(&close(1000, b"done")).await;
        assert_eq!(c.close_code().await, 1000);
        c.ends().await;
    }

    #[tokio::test]
    async fn a_close_is_answered_with_its_code_and_nothing_after_it_is() {
        let mut c = Client::start(1 << 20, IDLE);
        let mut bytes = close(3000, b"bye");
        bytes.extend(frame(true, opcode::PING, b"too late"));
        c.send(&bytes).await;
        assert_eq!(
            c.frame().await,
            Some((0x88, 3000u16.to_be_bytes().to_vec()))
        );
        c.ends().await;
        // An empty close is answered with 1000.
        let mut c = Client::start(1 << 20, IDLE);
        c.send(&frame(true, opcode::CLOSE, b"")).await;
        assert_eq!(c.close_code().await, 1000);
        c.ends().await;
    }

    #[tokio::test(start_paused = true)]
    async fn each_failure_closes_with_its_code_after_what_came_before() {
        let mut unmasked = vec![0x82, 0x02, b'h', b'i'];
        unmasked.extend(close(1000, b""));
        let mut reserved = frame(true, opcode::BINARY, b"x");
        reserved[0] |= 0x40;
        // (what, bytes, close code, whether the stream is still framed
        // after it, so that the peer's close can be read)
        let cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
            (
                "invalid UTF-8",
                frame(true, opcode::TEXT, b"\xff"),
                1007,
                true,
            ),
            (
                "invalid UTF-8 mid-message",
                [
                    frame(false, opcode::TEXT, b"ok"),
                    frame(false, opcode::CONTINUATION, b"\xc0\xaf"),
                ]
                .concat(),
                1007,
                true,
            ),
            ("close code 1005", close(1005, b""), 1002, true),
            ("close reason not UTF-8", close(1000, b"\xff"), 1002, true),
            (
                "too big",
                frame(true, opcode::BINARY, &[0; 101]),
                1009,
                true,
            ),
            ("unmasked", unmasked, 1002, false),
            ("reserved bit", reserved, 1002, false),
            ("opcode 3", frame(true, 3, b""), 1002, false),
            (
                "fragmented ping",
                frame(false, opcode::PING, b""),
                1002,
                false,
            ),
        ];
        for (what, bad, code, framed) in cases {
            let mut c = Client::start(100, IDLE);
            let mut bytes = frame(true, opcode::BINARY, b"first");
            bytes.extend(bad);
            c.send(&bytes).await;
            assert_eq!(c.frame().await, Some((0x82, b"first".to_vec())), "{what}");
            assert_eq!(c.close_code().await, code, "{what}");
            // The peer's close ends the connection at once if it can be
            // read; after garbage, only the close wait does.
            let started = tokio::time::Instant::now();
            c.send(&close(1000, b"")).await;
            assert_eq!(c.rx.read_u8().await.ok(), None, "{what}");
            let waited = started.elapsed();
            if framed {
                assert!(waited < CLOSE_WAIT, "{what}: {waited:?}");
            } else {
                assert!(waited >= CLOSE_WAIT, "{what}: {waited:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_bounded() {
        // A quiet peer is closed with 1001 after the idle timeout...
        let mut c = Client::start(100, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        assert_eq!(c.close_code().await, 1001);
        assert!(started.elapsed() >= Duration::from_secs(5));
        // ...and its close is awaited for CLOSE_WAIT only.
        c.ends().await;
        assert!(started.elapsed() >= Duration::from_secs(5) + CLOSE_WAIT);
        assert!(started.elapsed() < Duration::from_secs(5) + CLOSE_WAIT * 2);
        // So is a message that stops halfway.
        let mut c = Client::start(100, Duration::from_secs(5));
        c.send(&frame(true, opcode::BINARY, b"half a frame")[..8])
            .await;
        assert_eq!(c.close_code().await, 1001);
    }
}
