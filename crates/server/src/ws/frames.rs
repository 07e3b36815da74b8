//! RFC 6455 framing as the `/ws` connection driver does it: client frames
//! are parsed by [`FrameReader`] from a buffer the connection owns, and
//! server frames are queued by [`FrameWriter`] in one buffer that is
//! written once per turn.
//!
//! Both are generic over the byte stream (`AsyncRead` / `AsyncWrite` +
//! `Unpin`) and monomorphised: the driver's `FrameReader<ReadSide>` and
//! `FrameWriter<WriteSide>` are the same code, with the same reads and
//! writes, as when they lived in `connection.rs` — no boxing, no extra copy,
//! no extra syscall.
//!
//! The same two serve `/raw-echo-frames` ([`super::raw_echo_frames`],
//! `[testing] raw_echo`), where `scripts/autobahn` runs the Autobahn
//! conformance cases against them. For that endpoint only, the reader
//! [accepts text](FrameReader::accept_text) (joined, UTF-8 checked fragment
//! by fragment); `/ws` refuses text at its first frame, as before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};

/// WebSocket opcodes (RFC 6455 §5.2).
pub(super) mod opcode {
    pub(in crate::ws) const CONTINUATION: u8 = 0x0;
    pub(in crate::ws) const TEXT: u8 = 0x1;
    pub(in crate::ws) const BINARY: u8 = 0x2;
    pub(in crate::ws) const CLOSE: u8 = 0x8;
    pub(in crate::ws) const PING: u8 = 0x9;
    pub(in crate::ws) const PONG: u8 = 0xA;
}

// ---------------------------------------------------------------------------
// Writing: frames queued in one buffer, written once per turn.

/// An outgoing buffer larger than this is given back after it is written.
const KEEP_OUT_CAPACITY: usize = 64 * 1024;

/// Server frames (final, unmasked) queued in one buffer until [`flush`].
///
/// [`flush`]: FrameWriter::flush
pub(super) struct FrameWriter<W> {
    io: W,
    /// What is queued; the driver seals protected frames straight into it.
    pub(super) buf: Vec<u8>,
    /// How much of `buf` is already written: a write the socket did not
    /// take at once goes on from here (so [`poll_flush`] is cancel-safe,
    /// and frames may be queued behind a stalled write).
    ///
    /// [`poll_flush`]: FrameWriter::poll_flush
    written: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer with nothing queued (the tests' echoes).
    #[cfg(test)]
    pub(super) fn new(io: W) -> Self {
        Self::behind(io, Vec::new())
    }

    /// A writer whose first write starts with `prefix` (bytes already due
    /// on the stream: the held 101 of an upgrade, so that it and HELLO
    /// leave in one write).
    pub(super) fn behind(io: W, prefix: Vec<u8>) -> Self {
        Self {
            io,
            buf: prefix,
            written: 0,
        }
    }

    /// A final, unmasked frame header for a payload of `len` bytes.
    #[inline]
    pub(super) fn header(&mut self, opcode: u8, len: usize) {
        self.buf.push(0x80 | opcode);
        if len < 126 {
            self.buf.push(len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            self.buf.push(126);
            self.buf.extend_from_slice(&len.to_be_bytes());
        } else {
            self.buf.push(127);
            self.buf.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }

    #[inline]
    pub(super) fn frame(&mut self, opcode: u8, payload: &[u8]) {
        self.header(opcode, payload.len());
        self.buf.extend_from_slice(payload);
    }

    #[inline]
    pub(super) fn close_frame(&mut self, code: u16, reason: &[u8]) {
        self.header(opcode::CLOSE, 2 + reason.len());
        self.buf.extend_from_slice(&code.to_be_bytes());
        self.buf.extend_from_slice(reason);
    }

    #[inline]
    pub(super) fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Bytes written so far of what is queued (they grow while a stalled
    /// write makes progress).
    #[inline]
    pub(super) fn written(&self) -> usize {
        self.written
    }

    /// Writes what is queued, as far as the stream takes it now; `Ready`
    /// once everything is written (or the stream failed). Cancel-safe: what
    /// was written is remembered, and more may be queued in between.
    #[inline]
    pub(super) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while self.written < self.buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]) {
                Poll::Ready(Ok(0)) => {
                    self.clear();
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => {
                    self.clear();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let flushed = std::task::ready!(Pin::new(&mut self.io).poll_flush(cx));
        self.clear();
        Poll::Ready(flushed)
    }

    /// Writes everything queued.
    #[inline]
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    #[inline]
    fn clear(&mut self) {
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > KEEP_OUT_CAPACITY {
            self.buf = Vec::new();
        }
    }

    /// Gives back the buffer of a connection gone quiet.
    #[inline]
    pub(super) fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }
}

// ---------------------------------------------------------------------------
// Reading: client frames (RFC 6455 §5), parsed from a buffer the
// connection owns.

/// Free space to read into when the buffer has none: enough for most
/// messages in one read, small enough that an idle connection stays cheap.
const READ_CHUNK: usize = 1024;

/// A frame larger than this leaves the buffer it was read into behind: the
/// reader starts a small one, so one big message does not keep its
/// allocation alive for the life of the connection.
const KEEP_READ_CAPACITY: usize = 64 * 1024;

/// One whole WebSocket message or the reason there is none.
pub(super) enum ReadResult {
    Binary(BytesMut),
    /// A text frame, refused at its first frame (`/ws`: the reader does not
    /// [accept text](FrameReader::accept_text)).
    Text,
    /// A whole text message, valid UTF-8 (only when text is accepted).
    TextMessage(BytesMut),
    /// A text message that is not UTF-8, found at the first fragment that
    /// cannot be the start of valid UTF-8 (only when text is accepted).
    InvalidUtf8,
    Ping(BytesMut),
    Pong,
    Close(Option<u16>),
    TooBig,
    ProtocolError,
    Gone,
}

/// One frame taken out of the buffer, unmasked.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: BytesMut,
}

/// Reads whole messages. All its progress lives in the struct, so
/// `poll_message` is cancel-safe: the loop can wait on it next to timers
/// and queues, and drop that wait, without losing a byte.
///
/// The checks are those of the fastwebsockets reader it replaces (same
/// failures, same close codes): reserved bits, unknown opcodes, fragmented
/// control frames and pings over 125 bytes are protocol errors; a frame over
/// the size limit is too big; a final text frame that is not UTF-8 is a
/// protocol error, any other text frame is refused as text. Masks are
/// applied when present.
///
/// With [`accept_text`](Self::accept_text) (the conformance echo, never
/// `/ws`), text messages are joined and checked like binary ones, and their
/// UTF-8 is validated fragment by fragment: [`ReadResult::InvalidUtf8`] as
/// soon as the bytes so far cannot start valid UTF-8.
pub(super) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    /// Largest payload of one frame (the message size limit).
    max_frame: usize,
    /// Largest message (the limit on fragments joined).
    max_message: usize,
    /// The fragments of a binary (or accepted text) message so far.
    assembling: Option<BytesMut>,
    /// Whether text messages are read rather than refused.
    text: bool,
    /// While a text message is joined: how much of it is known to be UTF-8.
    text_checked: Option<usize>,
    /// Bytes of a refused (too big) frame still to be thrown away, so
    /// frames after it (the peer's close) can still be read.
    skip: u64,
    /// A frame header made no sense: what follows is not framed, and is
    /// only drained (while the close handshake waits for the peer).
    broken: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(io: R, max_message: usize) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            max_frame: max_message,
            max_message,
            assembling: None,
            text: false,
            text_checked: None,
            skip: 0,
            broken: false,
        }
    }

    /// Whether bytes already read wait in the buffer (a frame may be
    /// complete without another read).
    #[inline]
    pub(super) fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads text messages too ([`ReadResult::TextMessage`]) instead of
    /// refusing them at their first frame. Only for the conformance echo:
    /// `/ws` refuses text.
    pub(super) fn accept_text(mut self) -> Self {
        self.text = true;
        self
    }

    /// Lowers the limit on a fragmented message (the limit on one frame
    /// stays), e.g. while only the peer's close is awaited. Never raises it.
    pub(super) fn limit_message(&mut self, max_message: usize) {
        self.max_message = self.max_message.min(max_message);
    }

    /// Sets the limit on one frame and on a whole message, e.g. from the
    /// KEY_INIT limit to `max_message_size` once the connection is
    /// established. Applies from the next frame header parsed: a frame
    /// already refused stays refused.
    pub(super) fn set_limit(&mut self, max_message: usize) {
        self.max_frame = max_message;
        self.max_message = max_message;
    }

    /// Gives the buffer back while nothing is pending in it.
    pub(super) fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// The next whole message, control frame or failure.
    #[inline]
    pub(super) fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<ReadResult> {
        loop {
            if self.skip > 0 || self.broken {
                let n = self
                    .buf
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.buf.advance(n);
                self.skip -= n as u64;
                if self.broken {
                    self.buf.clear();
                }
                if self.skip > 0 || self.broken {
                    match self.poll_fill(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(())) => return Poll::Ready(ReadResult::Gone),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            let frame = match self.parse() {
                Ok(Some(frame)) => frame,
                Ok(None) => match self.poll_fill(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(())) => return Poll::Ready(ReadResult::Gone),
                    Poll::Pending => return Poll::Pending,
                },
                Err(result) => return Poll::Ready(result),
            };
            if let Some(result) = self.on_frame(frame) {
                return Poll::Ready(result);
            }
        }
    }

    /// Joins fragments; returns a result when a message (or failure) is whole.
    #[inline]
    fn on_frame(&mut self, frame: Frame) -> Option<ReadResult> {
        Some(match frame.opcode {
            opcode::TEXT if self.text => return self.on_text(frame),
            opcode::TEXT => {
                if frame.fin && std::str::from_utf8(&frame.payload).is_err() {
                    ReadResult::ProtocolError
                } else {
                    ReadResult::Text
                }
            }
            opcode::BINARY if self.assembling.is_some() => ReadResult::ProtocolError,
            opcode::BINARY if frame.fin => ReadResult::Binary(frame.payload),
            opcode::BINARY => {
                self.assembling = Some(frame.payload);
                return None;
            }
            opcode::CONTINUATION => {
                let Some(buf) = self.assembling.as_mut() else {
                    return Some(ReadResult::ProtocolError);
                };
                if buf.len() + frame.payload.len() > self.max_message {
                    return Some(ReadResult::TooBig);
                }
                buf.extend_from_slice(&frame.payload);
                if let Some(checked) = self.text_checked.as_mut()
                    && !utf8_so_far(buf, checked, frame.fin)
                {
                    return Some(ReadResult::InvalidUtf8);
                }
                if !frame.fin {
                    return None;
                }
                let message = self.assembling.take().unwrap_or_default();
                if self.text_checked.take().is_some() {
                    ReadResult::TextMessage(message)
                } else {
                    ReadResult::Binary(message)
                }
            }
            opcode::PING => ReadResult::Ping(frame.payload),
            opcode::PONG => ReadResult::Pong,
            opcode::CLOSE => parse_close(&frame.payload),
            _ => ReadResult::ProtocolError,
        })
    }

    /// A text frame when text is accepted: a whole message, or the first
    /// fragment of one. Out of line: `/ws` never gets here.
    #[inline(never)]
    fn on_text(&mut self, frame: Frame) -> Option<ReadResult> {
        if self.assembling.is_some() {
            return Some(ReadResult::ProtocolError);
        }
        let mut checked = 0;
        if !utf8_so_far(&frame.payload, &mut checked, frame.fin) {
            return Some(ReadResult::InvalidUtf8);
        }
        if frame.fin {
            return Some(ReadResult::TextMessage(frame.payload));
        }
        self.assembling = Some(frame.payload);
        self.text_checked = Some(checked);
        None
    }

    /// Takes one whole frame out of the buffer: `Ok(None)` if more bytes
    /// are needed.
    #[inline]
    fn parse(&mut self) -> Result<Option<Frame>, ReadResult> {
        let [b0, b1, ..] = self.buf[..] else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            self.broken = true;
            return Err(ReadResult::ProtocolError);
        }
        let opcode = b0 & 0x0F;
        if !matches!(
            opcode,
            opcode::CONTINUATION
                | opcode::TEXT
                | opcode::BINARY
                | opcode::CLOSE
                | opcode::PING
                | opcode::PONG
        ) {
            self.broken = true;
            return Err(ReadResult::ProtocolError);
        }
        let masked = b1 & 0x80 != 0;
        // RFC 6455 §5.1: a server MUST close on an unmasked client frame.
        if !masked {
            self.broken = true;
            return Err(ReadResult::ProtocolError);
        }
        let extra = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + extra + if masked { 4 } else { 0 };
        if self.buf.len() < header_len {
            return Ok(None);
        }
        let payload_len = match extra {
            0 => usize::from(b1 & 0x7F),
            2 => usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            _ => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.buf[2..10]);
                usize::try_from(u64::from_be_bytes(len)).unwrap_or(usize::MAX)
            }
        };
        let mask = masked.then(|| {
            let at = 2 + extra;
            [
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ]
        });
        let control = opcode & 0x8 != 0;
        if control && !fin {
            self.broken = true;
            return Err(ReadResult::ProtocolError);
        }
        // RFC 6455 §5.5: every control frame carries at most 125 bytes.
        if control && payload_len > 125 {
            self.broken = true;
            return Err(ReadResult::ProtocolError);
        }
        let needed = header_len.checked_add(payload_len);
        if payload_len > self.max_frame || needed.is_none() {
            self.skip = (header_len as u64).saturating_add(payload_len as u64);
            return Err(ReadResult::TooBig);
        }
        let needed = needed.unwrap_or_default();
        if self.buf.len() < needed {
            // Room for the rest of this frame (and the next header).
            self.buf.reserve(needed - self.buf.len() + 14);
            return Ok(None);
        }
        self.buf.advance(header_len);
        let mut payload = self.buf.split_to(payload_len);
        if payload_len > KEEP_READ_CAPACITY {
            // `payload` shares the big allocation; what is left of it (a
            // few bytes of the next frame, if any) moves to a small buffer
            // so the allocation goes when the message does.
            self.buf = BytesMut::from(&self.buf[..]);
        }
        if let Some(mask) = mask {
            fastwebsockets::unmask(&mut payload, mask);
        }
        Ok(Some(Frame {
            fin,
            opcode,
            payload,
        }))
    }

    /// Reads more into the buffer. `Err`: end of stream or IO error.
    #[inline(always)]
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        if self.buf.capacity() == 0 {
            // No buffer (given back by `shrink`: after KEY_ACK, or quiet for
            // a ping interval): wait without one, so an idle connection
            // holds no read buffer. The read goes to the stack; only bytes
            // that came are copied into a buffer, which then stays while
            // the connection is busy (no allocation per message).
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = tokio::io::ReadBuf::new(&mut chunk);
            return match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    let got = rb.filled();
                    self.buf = BytesMut::with_capacity(got.len().max(READ_CHUNK));
                    self.buf.extend_from_slice(got);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(_) => Poll::Ready(Err(())),
                Poll::Pending => Poll::Pending,
            };
        }
        if self.buf.capacity() == self.buf.len() {
            self.buf.reserve(READ_CHUNK);
        }
        // A fresh `read_buf` per poll: dropping it while pending loses
        // nothing (nothing was read).
        match std::pin::pin!(self.io.read_buf(&mut self.buf)).poll(cx) {
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Err(())),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for the next message (cancel-safe).
    #[inline]
    pub(super) async fn next(&mut self) -> ReadResult {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }
}

/// Validates the bytes of a text message after the first `checked` (known
/// to be UTF-8), and advances `checked`. A sequence cut at the end is fine
/// until the `last` fragment; anything else that is not UTF-8 fails at once.
fn utf8_so_far(data: &[u8], checked: &mut usize, last: bool) -> bool {
    match std::str::from_utf8(&data[*checked..]) {
        Ok(_) => {
            *checked = data.len();
            true
        }
        Err(e) if e.error_len().is_none() && !last => {
            *checked += e.valid_up_to();
            true
        }
        Err(_) => false,
    }
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

/// A masked client frame, for tests that play the client.
#[cfg(test)]
pub(super) fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    type Check = fn(&ReadResult) -> bool;

    use super::masked_frame as frame;

    fn reader(
        max: usize,
    ) -> (
        FrameReader<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        (FrameReader::new(ours, max), theirs)
    }

    async fn feed(peer: &mut tokio::io::DuplexStream, bytes: &[u8]) {
        peer.write_all(bytes).await.unwrap();
    }

    fn binary(r: ReadResult) -> Vec<u8> {
        match r {
            ReadResult::Binary(b) => b.to_vec(),
            _ => panic!("not a binary message"),
        }
    }

    #[tokio::test]
    async fn pipelined_frames_come_out_one_by_one_unmasked() {
        let (mut r, mut peer) = reader(1 << 20);
        let mut bytes = frame(true, 2, b"first");
        bytes.extend(frame(true, 2, &[7u8; 300]));
        bytes.extend(frame(true, 2, &vec![9u8; 70_000]));
        feed(&mut peer, &bytes).await;
        assert_eq!(binary(r.next().await), b"first");
        assert!(r.has_buffered());
        assert_eq!(binary(r.next().await), vec![7u8; 300]);
        assert_eq!(binary(r.next().await), vec![9u8; 70_000]);
        assert!(!r.has_buffered());
        drop(peer);
        assert!(matches!(r.next().await, ReadResult::Gone));
    }

    #[tokio::test]
    async fn a_stalled_write_goes_on_where_it_stopped_with_frames_queued_behind() {
        let (ours, mut peer) = tokio::io::duplex(1000);
        let mut out = FrameWriter::new(ours);
        let first: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        out.frame(opcode::BINARY, &first);
        // The peer reads nothing: the write stops part way, and each wait
        // for it can be dropped.
        for _ in 0..3 {
            assert!(
                tokio::time::timeout(Duration::from_millis(5), out.flush())
                    .await
                    .is_err()
            );
            assert_eq!(out.written(), 1000);
        }
        out.close_frame(4001, b"bye");
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        out.flush().await.unwrap();
        assert_eq!((out.queued(), out.written()), (0, 0));
        drop(out);
        let got = reading.await.unwrap();
        let mut expected = vec![0x82, 126, 0x0b, 0xb8];
        expected.extend_from_slice(&first);
        expected.extend_from_slice(&[0x88, 5, 0x0f, 0xa1, b'b', b'y', b'e']);
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_frame_trickled_byte_by_byte_survives_dropped_waits() {
        let (mut r, mut peer) = reader(1 << 20);
        let bytes = frame(true, 2, b"slowly");
        for b in &bytes {
            // Each wait is abandoned before the next byte: nothing is lost.
            assert!(
                tokio::time::timeout(Duration::from_millis(1), r.next())
                    .await
                    .is_err()
            );
            feed(&mut peer, &[*b]).await;
        }
        assert_eq!(binary(r.next().await), b"slowly");
        r.shrink();
        assert_eq!(r.buf.capacity(), 0, "an idle reader gives its buffer back");
    }

    /// A reader whose buffer was given back waits without one (the stack
    /// takes the read), and what arrives next, small or larger than one
    /// read, still comes whole.
    #[tokio::test]
    async fn a_reader_without_a_buffer_waits_without_one() {
        let (mut r, mut peer) = reader(1 << 20);
        feed(&mut peer, &frame(true, 2, b"first")).await;
        assert_eq!(binary(r.next().await), b"first");
        r.shrink();
        assert!(
            tokio::time::timeout(Duration::from_millis(5), r.next())
                .await
                .is_err()
        );
        assert_eq!(r.buf.capacity(), 0, "waiting: no buffer allocated");
        let big = vec![7u8; READ_CHUNK * 3 + 17];
        let bytes = [frame(true, 2, b"second"), frame(true, 2, &big)].concat();
        feed(&mut peer, &bytes).await;
        assert_eq!(binary(r.next().await), b"second");
        assert_eq!(binary(r.next().await), big);
    }

    #[tokio::test]
    async fn the_limit_is_raised_between_messages_and_big_frames_leave_no_big_buffer() {
        // A KEY_INIT-sized limit first; what is pipelined behind the first
        // message is parsed under the limit set after it.
        let (mut r, mut peer) = reader(10);
        let bytes = [frame(true, 2, b"small"), frame(true, 2, &[1; 100_000])].concat();
        feed(&mut peer, &bytes).await;
        assert_eq!(binary(r.next().await), b"small");
        r.set_limit(1 << 20);
        assert_eq!(binary(r.next().await).len(), 100_000);
        assert!(
            r.buf.capacity() <= KEEP_READ_CAPACITY,
            "a big frame's buffer stays: {}",
            r.buf.capacity()
        );
        // limit_message only ever lowers.
        r.limit_message(1 << 30);
        assert_eq!(r.max_message, 1 << 20);
        // Under the small limit, a big frame is refused at its header,
        // before its payload is read (let alone buffered).
        let (mut r, mut peer) = reader(10);
        feed(&mut peer, &frame(true, 2, &[0; 5000])[..20]).await;
        assert!(matches!(r.next().await, ReadResult::TooBig));
        assert!(r.buf.capacity() <= READ_CHUNK * 2, "{}", r.buf.capacity());
        // Fragments too: each small, too big together.
        let (mut r, mut peer) = reader(10);
        let bytes = [frame(false, 2, &[0; 6]), frame(true, 0, &[0; 6])].concat();
        feed(&mut peer, &bytes).await;
        assert!(matches!(r.next().await, ReadResult::TooBig));
    }

    #[tokio::test]
    async fn fragments_are_joined_under_the_message_limit() {
        let (mut r, mut peer) = reader(10);
        let mut bytes = frame(false, 2, b"abc");
        bytes.extend(frame(true, 9, b"ping"));
        bytes.extend(frame(false, 0, b"def"));
        bytes.extend(frame(true, 0, b"gh"));
        feed(&mut peer, &bytes).await;
        assert!(matches!(r.next().await, ReadResult::Ping(p) if &p[..] == b"ping"));
        assert_eq!(binary(r.next().await), b"abcdefgh");
        feed(
            &mut peer,
            &[frame(false, 2, b"123456"), frame(true, 0, b"78901")].concat(),
        )
        .await;
        assert!(matches!(r.next().await, ReadResult::TooBig));
    }

    #[tokio::test]
    async fn each_refusal_of_the_fastwebsockets_reader_is_kept() {
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (frame(true, 2, &[0; 11]), |r| {
                matches!(r, ReadResult::TooBig)
            }),
            (frame(true, 2, &[0; 10]), |r| {
                matches!(r, ReadResult::Binary(_))
            }),
            (frame(true, 1, b"text"), |r| matches!(r, ReadResult::Text)),
            (frame(true, 1, &[0xff]), |r| {
                matches!(r, ReadResult::ProtocolError)
            }),
            (frame(false, 1, &[0xff]), |r| matches!(r, ReadResult::Text)),
            ([0xC2, 0x80, 1, 2, 3, 4].to_vec(), |r| {
                matches!(r, ReadResult::ProtocolError)
            }),
            (frame(true, 3, b""), |r| {
                matches!(r, ReadResult::ProtocolError)
            }),
            (frame(false, 9, b""), |r| {
                matches!(r, ReadResult::ProtocolError)
            }),
            (frame(true, 0, b"x"), |r| {
                matches!(r, ReadResult::ProtocolError)
            }),
            // Control frames count against the limit too.
            (frame(true, 10, &[0; 11]), |r| {
                matches!(r, ReadResult::TooBig)
            }),
            (frame(true, 10, &[0; 10]), |r| matches!(r, ReadResult::Pong)),
            (frame(true, 8, &[0x03, 0xe8, b'o', b'k']), |r| {
                matches!(r, ReadResult::Close(Some(1000)))
            }),
            (frame(true, 8, &[0x03, 0xed]), |r| {
                matches!(r, ReadResult::ProtocolError)
            }),
        ];
        for (i, (bytes, ok)) in cases.into_iter().enumerate() {
            let (mut r, mut peer) = reader(10);
            feed(&mut peer, &bytes).await;
            let got = r.next().await;
            assert!(ok(&got), "case {i}");
        }
        // A ping over 125 bytes (the reader's limit does not matter).
        let (mut r, mut peer) = reader(1000);
        feed(&mut peer, &frame(true, 9, &[0; 126])).await;
        assert!(matches!(r.next().await, ReadResult::ProtocolError));
    }

    #[tokio::test]
    async fn after_a_too_big_frame_the_peers_close_is_still_read() {
        let (mut r, mut peer) = reader(10);
        feed(&mut peer, &frame(true, 2, &[0; 5000])[..100]).await;
        assert!(matches!(r.next().await, ReadResult::TooBig));
        let mut rest = frame(true, 2, &[0; 5000])[100..].to_vec();
        rest.extend(frame(true, 8, &[0x03, 0xe8]));
        feed(&mut peer, &rest).await;
        assert!(matches!(r.next().await, ReadResult::Close(Some(1000))));
    }

    // -----------------------------------------------------------------------
    // The reader's outcomes as text, from any stream and any split of it.

    /// One outcome, comparable in assertions.
    fn outcome(r: &ReadResult) -> String {
        let text = |b: &BytesMut| String::from_utf8_lossy(b).into_owned();
        match r {
            ReadResult::Binary(b) if b.len() > 32 => format!("binary {} bytes", b.len()),
            ReadResult::Binary(b) => format!("binary {}", text(b)),
            ReadResult::Text => "text refused".into(),
            ReadResult::TextMessage(b) => format!("text {}", text(b)),
            ReadResult::InvalidUtf8 => "invalid utf-8".into(),
            ReadResult::Ping(b) => format!("ping {}", text(b)),
            ReadResult::Pong => "pong".into(),
            ReadResult::Close(code) => format!("close {code:?}"),
            ReadResult::TooBig => "too big".into(),
            ReadResult::ProtocolError => "protocol error".into(),
            ReadResult::Gone => "gone".into(),
        }
    }

    /// Everything a reader makes of `stream`, up to the end of it.
    async fn read_all<R: AsyncRead + Unpin>(mut r: FrameReader<R>) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let got = outcome(&r.next().await);
            let gone = got == "gone";
            out.push(got);
            if gone || out.len() > 100 {
                return out;
            }
        }
    }

    /// `/ws`'s reader (text refused) over a byte slice.
    async fn ws(bytes: &[u8], max: usize) -> Vec<String> {
        read_all(FrameReader::new(bytes, max)).await
    }

    /// The conformance echo's reader (text accepted) over a byte slice.
    async fn echo(bytes: &[u8], max: usize) -> Vec<String> {
        read_all(FrameReader::new(bytes, max).accept_text()).await
    }

    /// A stream that hands out `chunk` bytes per read, and is not ready
    /// every other poll (it wakes itself), so each wait for a frame is
    /// dropped and taken up again mid-frame.
    struct Trickle<'a> {
        bytes: &'a [u8],
        chunk: usize,
        ready: bool,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
            buf.put_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Poll::Ready(Ok(()))
        }
    }

    /// A close frame's payload.
    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        [&code.to_be_bytes()[..], reason].concat()
    }

    #[tokio::test]
    async fn unknown_opcodes_fail_and_nothing_after_them_is_parsed() {
        for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let bytes = [frame(true, op, b"x"), frame(true, 2, b"after")].concat();
            let want = ["protocol error", "gone"];
            assert_eq!(ws(&bytes, 100).await, want, "opcode {op:#x}");
            assert_eq!(echo(&bytes, 100).await, want, "opcode {op:#x}");
        }
    }

    #[tokio::test]
    async fn reserved_bits_fail_whatever_the_frame() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            for op in [0, 1, 2, 8, 9, 10] {
                let mut bytes = frame(true, op, b"");
                bytes[0] |= rsv;
                bytes.extend(frame(true, 2, b"after"));
                let want = ["protocol error", "gone"];
                assert_eq!(ws(&bytes, 100).await, want, "rsv {rsv:#x} op {op}");
                assert_eq!(echo(&bytes, 100).await, want, "rsv {rsv:#x} op {op}");
            }
        }
    }

    #[tokio::test]
    async fn an_unmasked_frame_fails_before_its_length_is_read() {
        // A masked frame, then an unmasked one claiming 2^62 bytes.
        let mut bytes = frame(true, 2, b"masked");
        bytes.extend_from_slice(&[0x82, 127, 0x40, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend(frame(true, 2, b"after"));
        let want = ["binary masked", "protocol error", "gone"];
        assert_eq!(ws(&bytes, 100).await, want);
        assert_eq!(echo(&bytes, 100).await, want);
        // Unmasked control frames too.
        assert_eq!(ws(&[0x89, 0x00], 100).await, ["protocol error", "gone"]);
    }

    #[tokio::test]
    async fn fragmented_or_oversized_control_frames_fail() {
        for op in [8, 9, 10] {
            let bytes = [frame(false, op, b""), frame(true, 0, b"")].concat();
            assert_eq!(
                ws(&bytes, 1000).await,
                ["protocol error", "gone"],
                "op {op}"
            );
            assert_eq!(
                echo(&bytes, 1000).await,
                ["protocol error", "gone"],
                "op {op}"
            );
            // 125 bytes is the most a control frame may carry.
            let payload = if op == 8 {
                close_payload(1000, &[b'a'; 124])
            } else {
                vec![b'a'; 126]
            };
            let big = frame(true, op, &payload);
            assert_eq!(ws(&big, 1000).await, ["protocol error", "gone"], "op {op}");
        }
        let max = frame(true, 9, &[b'p'; 125]);
        assert_eq!(ws(&max, 1000).await[0], format!("ping {}", "p".repeat(125)));
    }

    #[tokio::test]
    async fn oversized_frames_and_messages_are_too_big_and_skipped() {
        // One frame over the limit: refused, skipped, and the next read.
        let bytes = [
            frame(true, 2, &[1; 101]),
            frame(true, 2, &[2; 100]),
            frame(true, 8, &close_payload(1000, b"")),
        ]
        .concat();
        let want = ["too big", "binary 100 bytes", "close Some(1000)", "gone"];
        assert_eq!(ws(&bytes, 100).await, want);
        // A 64-bit length with the top bit set is too big, not a panic.
        let mut huge = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        huge.extend_from_slice(b"rest");
        assert_eq!(ws(&huge, 100).await, ["too big", "gone"]);
        // Fragments are limited as a whole, text as binary.
        for op in [1, 2] {
            let bytes = [frame(false, op, &[b'a'; 60]), frame(true, 0, &[b'a'; 41])].concat();
            assert_eq!(echo(&bytes, 100).await[0], "too big", "op {op}");
        }
    }

    #[tokio::test]
    async fn close_frames_are_checked() {
        let close = |payload: &[u8]| frame(true, 8, payload);
        // Codes a peer may send (RFC 6455 §7.4, the IANA registry).
        for code in [1000, 1001, 1002, 1003, 1007, 1010, 1011, 1014, 3000, 4999] {
            let bytes = close(&close_payload(code, b"bye"));
            assert_eq!(ws(&bytes, 100).await[0], format!("close Some({code})"));
        }
        // Codes it may not: reserved, never sent on the wire, unassigned.
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let bytes = close(&close_payload(code, b""));
            assert_eq!(ws(&bytes, 100).await[0], "protocol error", "code {code}");
        }
        assert_eq!(ws(&close(b""), 100).await[0], "close None");
        assert_eq!(ws(&close(&[0x03]), 100).await[0], "protocol error");
        // The reason must be UTF-8, in full.
        let bytes = close(&close_payload(1000, "κόσμε".as_bytes()));
        assert_eq!(ws(&bytes, 100).await[0], "close Some(1000)");
        for reason in [
            &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"[..],
            b"ok\xff",
            b"\xce",
        ] {
            let bytes = close(&close_payload(1000, reason));
            assert_eq!(ws(&bytes, 100).await[0], "protocol error", "{reason:?}");
            assert_eq!(echo(&bytes, 100).await[0], "protocol error", "{reason:?}");
        }
    }

    #[tokio::test]
    async fn ws_refuses_text_at_its_first_frame() {
        // Even valid, even fragmented: /ws takes binary only.
        let bytes = [frame(false, 1, b"hel"), frame(true, 0, b"lo")].concat();
        assert_eq!(ws(&bytes, 100).await[0], "text refused");
        assert_eq!(ws(&frame(true, 1, b"hello"), 100).await[0], "text refused");
    }

    #[tokio::test]
    async fn accepted_text_is_joined_and_validated_across_fragments() {
        let word = "κόσμε".as_bytes();
        // Fragments split inside a character, a ping between them.
        let bytes = [
            frame(false, 1, &word[..1]),
            frame(true, 9, b"hi"),
            frame(false, 0, &word[1..6]),
            frame(false, 0, b""),
            frame(true, 0, &word[6..]),
            frame(true, 1, b""),
            frame(true, 2, b"bin"),
        ]
        .concat();
        assert_eq!(
            echo(&bytes, 100).await,
            ["ping hi", "text κόσμε", "text ", "binary bin", "gone"]
        );
        // Invalid UTF-8 fails at the fragment that shows it, before the
        // message ends: here an encoded surrogate (ED A0 80).
        let bytes = [
            frame(false, 1, b"ok"),
            frame(false, 0, b"\xed"),
            frame(false, 0, b"\xa0\x80"),
        ]
        .concat();
        assert_eq!(echo(&bytes, 100).await[0], "invalid utf-8");
        // A code point over U+10FFFF fails on its first two bytes.
        let bytes = [frame(false, 1, b"\xf4\x90"), frame(true, 0, b"\x80\x80")].concat();
        assert_eq!(echo(&bytes, 100).await[0], "invalid utf-8");
        // A character cut by the end of the message.
        let bytes = [frame(false, 1, b"a"), frame(true, 0, &word[..1])].concat();
        assert_eq!(echo(&bytes, 100).await[0], "invalid utf-8");
        assert_eq!(
            echo(&frame(true, 1, b"\xce"), 100).await[0],
            "invalid utf-8"
        );
        assert_eq!(
            echo(&frame(true, 1, b"\xff"), 100).await[0],
            "invalid utf-8"
        );
    }

    #[tokio::test]
    async fn accepted_text_keeps_the_fragmentation_rules() {
        let cases: [(&[Vec<u8>], &str); 4] = [
            // A new message inside a text message, either kind.
            (
                &[frame(false, 1, b"a"), frame(true, 1, b"b")],
                "protocol error",
            ),
            (
                &[frame(false, 1, b"a"), frame(true, 2, b"b")],
                "protocol error",
            ),
            (
                &[frame(false, 2, b"a"), frame(true, 1, b"b")],
                "protocol error",
            ),
            // A continuation with nothing to continue.
            (&[frame(true, 0, b"a")], "protocol error"),
        ];
        for (frames, want) in cases {
            assert_eq!(echo(&frames.concat(), 100).await[0], want, "{frames:?}");
        }
    }

    #[tokio::test]
    async fn any_split_of_the_stream_reads_the_same() {
        let word = "κόσμε".as_bytes();
        let frames = [
            frame(false, 1, &word[..3]),
            frame(true, 9, b"ping"),
            frame(true, 0, &word[3..]),
            frame(false, 2, &[7; 200]),
            frame(true, 10, b""),
            frame(true, 0, &[8; 70_000]),
            frame(true, 2, b"last"),
            frame(true, 8, &close_payload(1001, b"going")),
        ];
        let bytes = frames.concat();
        let whole = echo(&bytes, 1 << 20).await;
        assert_eq!(
            whole,
            [
                "ping ping",
                "text κόσμε",
                "pong",
                "binary 70200 bytes",
                "binary last",
                "close Some(1001)",
                "gone"
            ]
        );
        for chunk in [1, 2, 3, 5, 13, 1000] {
            let trickle = Trickle {
                bytes: &bytes,
                chunk,
                ready: false,
            };
            let got = read_all(FrameReader::new(trickle, 1 << 20).accept_text()).await;
            assert_eq!(got, whole, "chunks of {chunk}");
        }
        // And a refusal found mid-stream is found in any split too.
        let mut bad = frame(true, 2, b"fine");
        bad.extend(frame(true, 8, &close_payload(1000, b"\xff")));
        for chunk in [1, 4, bad.len()] {
            let trickle = Trickle {
                bytes: &bad,
                chunk,
                ready: false,
            };
            let got = read_all(FrameReader::new(trickle, 100)).await;
            assert_eq!(
                got[..2],
                ["binary fine", "protocol error"],
                "chunks of {chunk}"
            );
        }
    }
}
