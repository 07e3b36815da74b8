//! `/raw-echo` (only with `[testing] raw_echo = true`): a plain WebSocket
//! echo on the gateway's own WebSocket stack — no subprotocol, envelope,
//! login or crypto. The Autobahn conformance suite (`scripts/autobahn`) runs
//! against it, and the benchmarks use it as the baseline ("the limit" of the
//! stack). It reads with fastwebsockets; `/ws` has its own reader, which
//! the suite checks through `/raw-echo-frames` ([`super::raw_echo_frames`]).
//!
//! fastwebsockets parses frames, answers pings and echoes close frames, but
//! leaves several RFC 6455 duties to its caller; this endpoint does them, so
//! the suite measures what a careful driver on this stack achieves:
//!
//! * a client frame without a mask is refused (RFC 6455 §5.1) — checked on
//!   the raw bytes by [`MaskCheck`], since fastwebsockets does not expose the
//!   mask bit;
//! * a failed connection gets a close frame with the right code (1002
//!   protocol error, 1007 invalid UTF-8, 1009 too big) instead of a bare TCP
//!   drop, then the peer's close is awaited briefly;
//! * fragments are joined here with a limit on the *whole* message (the
//!   library's limit is per frame) and text is validated as it arrives, so
//!   invalid UTF-8 fails fast, mid-message.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Messages up to 64 MiB, as conformance cases need (9.x sends 16 MiB).
pub(super) const MAX_MESSAGE: usize = 64 << 20;
/// How long to wait for the peer's close after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

const PROTOCOL_ERROR: u16 = 1002;
const INVALID_DATA: u16 = 1007;
const TOO_BIG: u16 = 1009;

pub(crate) async fn upgrade(mut req: Request) -> Response {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return (StatusCode::BAD_REQUEST, "WebSocket upgrades only\n").into_response();
    }
    let (response, upgraded) = match super::accept(&mut req) {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    tokio::spawn(async move {
        let Ok(ws) = upgraded.await else { return };
        // Nothing has been read through the WebSocket yet, so its buffer is
        // empty and the stream can be rewrapped.
        let mut ws = WebSocket::after_handshake(MaskCheck::new(ws.into_inner()), Role::Server);
        ws.set_max_message_size(MAX_MESSAGE);
        // Close frames are checked and answered here: fastwebsockets does
        // not check a close frame's length (control frames are at most 125
        // bytes). Pings it answers itself (and refuses over 125 bytes).
        ws.set_auto_close(false);
        ws.set_auto_pong(true);
        echo(ws).await;
    });
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, axum::body::Body::new(body))
}

/// A text or binary message being reassembled from fragments.
struct Partial {
    opcode: OpCode,
    data: Vec<u8>,
    /// For text: how much of `data` is known to be valid UTF-8.
    checked: usize,
}

impl Partial {
    /// Validates the new bytes of a text message. An incomplete sequence at
    /// the end is fine until the last fragment.
    fn check_utf8(&mut self, last: bool) -> bool {
        if self.opcode != OpCode::Text {
            return true;
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => {
                self.checked = self.data.len();
                true
            }
            Err(e) if e.error_len().is_none() && !last => {
                self.checked += e.valid_up_to();
                true
            }
            Err(_) => false,
        }
    }
}

/// Why the echo loop stops.
enum Stop {
    /// The peer closed (and its close was answered) or vanished.
    Done,
    /// Fail the connection with this close code.
    Fail(u16, &'static str),
}

async fn echo<S>(mut ws: WebSocket<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut partial: Option<Partial> = None;
    let stop = loop {
        let frame = match ws.read_frame().await {
            Ok(frame) => frame,
            Err(e) => break stop_for(&e),
        };
        match frame.opcode {
            OpCode::Close => break answer_close(&mut ws, &frame.payload).await,
            OpCode::Ping | OpCode::Pong if frame.payload.len() > 125 => {
                break Stop::Fail(PROTOCOL_ERROR, "control frame over 125 bytes");
            }
            OpCode::Ping | OpCode::Pong => {}
            OpCode::Text | OpCode::Binary if partial.is_some() => {
                break Stop::Fail(PROTOCOL_ERROR, "new message inside a fragmented one");
            }
            OpCode::Text | OpCode::Binary if frame.fin => {
                // fastwebsockets has validated a single-frame text message.
                // A new frame: the one read still carries the client's mask
                // key, which would be written back in the header.
                let echo = Frame::new(true, frame.opcode, None, frame.payload);
                if ws.write_frame(echo).await.is_err() {
                    break Stop::Done;
                }
            }
            OpCode::Text | OpCode::Binary => {
                let mut p = Partial {
                    opcode: frame.opcode,
                    data: frame.payload.to_vec(),
                    checked: 0,
                };
                if !p.check_utf8(false) {
                    break Stop::Fail(INVALID_DATA, "invalid UTF-8 in a text message");
                }
                partial = Some(p);
            }
            OpCode::Continuation => {
                let Some(p) = partial.as_mut() else {
                    break Stop::Fail(PROTOCOL_ERROR, "continuation without a message");
                };
                if p.data.len() + frame.payload.len() > MAX_MESSAGE {
                    break Stop::Fail(TOO_BIG, "message too big");
                }
                p.data.extend_from_slice(&frame.payload);
                if !p.check_utf8(frame.fin) {
                    break Stop::Fail(INVALID_DATA, "invalid UTF-8 in a text message");
                }
                if frame.fin {
                    let Some(p) = partial.take() else {
                        break Stop::Done;
                    };
                    let whole = Frame::new(true, p.opcode, None, Payload::Owned(p.data));
                    if ws.write_frame(whole).await.is_err() {
                        break Stop::Done;
                    }
                }
            }
        }
    };
    if let Stop::Fail(code, reason) = stop
        && ws
            .write_frame(Frame::close(code, reason.as_bytes()))
            .await
            .is_ok()
    {
        // Give the peer's close a moment to arrive, so our close frame is
        // not lost to a reset of a socket with unread data.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            loop {
                match ws.read_frame().await {
                    Ok(f) if f.opcode == OpCode::Close => break,
                    Ok(_) | Err(WebSocketError::ConnectionClosed) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
    }
}

/// Answers a client's close frame (RFC 6455 §5.5.1, §7.4): a valid one is
/// echoed, an invalid one fails the connection.
async fn answer_close<S>(ws: &mut WebSocket<S>, payload: &[u8]) -> Stop
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match payload {
        [] => {}
        [_] => return Stop::Fail(PROTOCOL_ERROR, "close frame of one byte"),
        _ if payload.len() > 125 => {
            return Stop::Fail(PROTOCOL_ERROR, "control frame over 125 bytes");
        }
        [a, b, reason @ ..] => {
            if !fastwebsockets::CloseCode::from(u16::from_be_bytes([*a, *b])).is_allowed() {
                return Stop::Fail(PROTOCOL_ERROR, "close code not allowed");
            }
            if std::str::from_utf8(reason).is_err() {
                return Stop::Fail(INVALID_DATA, "close reason is not UTF-8");
            }
        }
    }
    let _ = ws
        .write_frame(Frame::close_raw(Payload::Owned(payload.to_vec())))
        .await;
    Stop::Done
}

/// The close code for a read error (RFC 6455 §7.4.1), if one should be sent.
fn stop_for(e: &WebSocketError) -> Stop {
    match e {
        WebSocketError::InvalidUTF8 => Stop::Fail(INVALID_DATA, "invalid UTF-8"),
        WebSocketError::FrameTooLarge => Stop::Fail(TOO_BIG, "message too big"),
        WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed => Stop::Done,
        WebSocketError::IoError(io) if MaskCheck::<()>::is_unmasked_error(io) => {
            Stop::Fail(PROTOCOL_ERROR, "client frames must be masked")
        }
        WebSocketError::IoError(_) => Stop::Done,
        _ => Stop::Fail(PROTOCOL_ERROR, "WebSocket protocol error"),
    }
}

/// Where [`MaskCheck`] is in the client's frame stream.
#[derive(Debug, Clone, Copy)]
enum MaskState {
    /// Collecting a frame header; `have` bytes of it so far.
    Header { head: [u8; 14], have: usize },
    /// Inside a payload; this many bytes to go.
    Payload(u64),
    /// An unmasked frame was seen: every further read fails.
    Refused,
}

/// Passes a server-side WebSocket stream through, following the client's
/// frame headers, and fails the read (`InvalidData`, see
/// [`MaskCheck::is_unmasked_error`]) at the first frame whose mask bit is
/// clear. RFC 6455 §5.1: "a server MUST close the connection upon receiving
/// a frame that is not masked". Masking is what keeps a script in a browser
/// from choosing the bytes an intermediary sees, which matters on exactly
/// the plain `ws://` paths wsgate is for.
#[derive(Debug)]
pub(crate) struct MaskCheck<S> {
    inner: S,
    state: MaskState,
}

const UNMASKED: &str = "unmasked client frame";

impl<S> MaskCheck<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            state: MaskState::Header {
                head: [0; 14],
                have: 0,
            },
        }
    }

    /// Whether a read error is this adapter refusing an unmasked frame.
    pub(crate) fn is_unmasked_error(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::InvalidData && e.to_string() == UNMASKED
    }

    /// Advances the frame tracker over bytes the client sent. `false` when
    /// an unmasked frame starts.
    fn track(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.state {
                MaskState::Refused => return false,
                MaskState::Payload(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    bytes = &bytes[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = MaskState::Header {
                            head: [0; 14],
                            have: 0,
                        };
                    }
                }
                MaskState::Header { head, have } => {
                    head[*have] = bytes[0];
                    *have += 1;
                    bytes = &bytes[1..];
                    if *have < 2 {
                        continue;
                    }
                    if head[1] & 0x80 == 0 {
                        self.state = MaskState::Refused;
                        return false;
                    }
                    let extended = match head[1] & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    if *have < 2 + extended + 4 {
                        continue;
                    }
                    let len = match extended {
                        0 => u64::from(head[1] & 0x7f),
                        2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
                        _ => {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(&head[2..10]);
                            u64::from_be_bytes(b)
                        }
                    };
                    self.state = if len == 0 {
                        MaskState::Header {
                            head: [0; 14],
                            have: 0,
                        }
                    } else {
                        MaskState::Payload(len)
                    };
                }
            }
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MaskCheck<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if matches!(self.state, MaskState::Refused) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, UNMASKED)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if self.track(&buf.filled()[before..]) {
                    Poll::Ready(Ok(()))
                } else {
                    // Hand nothing of the offending frame to the parser.
                    buf.set_filled(before);
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, UNMASKED)))
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MaskCheck<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        f
    }

    #[test]
    fn masked_frames_pass_in_any_split() {
        let mut stream = Vec::new();
        for len in [0, 1, 125, 126, 300, 70_000] {
            stream.extend(masked(0x2, &vec![7; len]));
        }
        for chunk in [1, 2, 3, 7, 14, 1000, stream.len()] {
            let mut m = MaskCheck::new(());
            assert!(stream.chunks(chunk).all(|c| m.track(c)), "chunk {chunk}");
            assert!(matches!(m.state, MaskState::Header { have: 0, .. }));
        }
    }

    #[test]
    fn an_unmasked_frame_is_refused_wherever_it_starts() {
        let mut stream = masked(0x1, b"hello");
        stream.extend_from_slice(&[0x82, 0x03, 1, 2, 3]);
        for chunk in [1, 4, stream.len()] {
            let mut m = MaskCheck::new(());
            assert!(!stream.chunks(chunk).all(|c| m.track(c)), "chunk {chunk}");
            assert!(!m.track(b"x"), "stays refused");
        }
        let e = io::Error::new(io::ErrorKind::InvalidData, UNMASKED);
        assert!(MaskCheck::<()>::is_unmasked_error(&e));
    }

    #[test]
    fn utf8_is_checked_across_fragments() {
        let mut p = Partial {
            opcode: OpCode::Text,
            data: "κό".as_bytes()[..3].to_vec(),
            checked: 0,
        };
        assert!(p.check_utf8(false), "incomplete sequence may continue");
        assert!(!p.check_utf8(true), "but not end the message");
        p.data.extend_from_slice(&"κό".as_bytes()[3..]);
        assert!(p.check_utf8(true));
        p.data.extend_from_slice(&[0xff]);
        assert!(!p.check_utf8(false), "invalid byte fails at once");
    }
}
