//! `https://` and `wss://` (protocol.md §5: "Plain `ws://` (or `wss://`)"):
//! TLS 1.3 only, rustls with the `ring` provider, enabled by
//! a `[tls]` block naming a PEM certificate chain and its private key.
//!
//! The handshake runs in the connection's own task, under the same deadline
//! as the HTTP request headers, so a client that stalls it holds only its
//! own slot. The benchmarks use it as the "TLS on everything" baseline.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsFiles;

/// Builds the acceptor from `[tls]`; errors name the setting and the file.
pub(crate) fn acceptor(files: &TlsFiles) -> std::io::Result<TlsAcceptor> {
    let fail = |setting: &str, path: &std::path::Path, what: String| {
        std::io::Error::other(format!(
            "invalid setting `tls.{setting}` ({}): {what}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| fail("cert", &files.cert, format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            fail(
                "cert",
                &files.cert,
                format!("not a PEM certificate chain: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(fail(
            "cert",
            &files.cert,
            "no CERTIFICATE block in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        fail(
            "key",
            &files.key,
            format!("no usable PEM private key (PKCS#8, SEC1 or PKCS#1): {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| std::io::Error::other(format!("TLS 1.3 is not available: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            fail(
                "key",
                &files.key,
                format!("does not match the certificate or is unsupported: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An accepted connection: plain TCP, or TLS over TCP.
pub(crate) enum MaybeTls {
    /// `http://` / `ws://`.
    Plain(PlainTcp),
    /// `https://` / `wss://`.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Completes the TLS handshake when `tls` is set, within `deadline`.
/// `None`: the handshake failed or timed out (logged at debug level).
pub(crate) async fn accept(
    tls: Option<&TlsAcceptor>,
    tcp: TcpStream,
    deadline: Duration,
    peer: SocketAddr,
) -> Option<MaybeTls> {
    let Some(acceptor) = tls else {
        return Some(MaybeTls::Plain(PlainTcp::new(tcp)));
    };
    match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(MaybeTls::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// A plain TCP connection that holds back the 101 of a `wsgate.v1`
/// upgrade, so that the connection task writes it in one `send(2)` (one
/// TCP segment) with HELLO, which the server always sends first
/// (protocol.md §5). Every other response goes out as hyper writes it.
///
/// hyper writes the 101 and flushes before it hands over the connection;
/// the flush of a held 101 writes nothing. The connection task takes the
/// held bytes at its split ([`PlainTcp::into_parts`]); any other write or a
/// shutdown through this type sends them first, so nothing is ever lost or
/// reordered, only a 101 that no HELLO follows is never sent (its
/// connection is dropped anyway).
pub(crate) struct PlainTcp {
    tcp: TcpStream,
    /// The held 101, or empty.
    held: Vec<u8>,
}

/// What a `/ws` upgrade's 101 starts with and holds (`ws::upgrade` sets
/// the subprotocol header; hyper writes header names in lower case).
const WSGATE_101: &[u8] = b"HTTP/1.1 101 ";
const WSGATE_SUBPROTOCOL_LINE: &[u8] = b"\r\nsec-websocket-protocol: wsgate.v1\r\n";

impl PlainTcp {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            held: Vec::new(),
        }
    }

    /// The socket, and the held 101 that must be written before anything
    /// else (empty if none).
    pub(crate) fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.tcp, self.held)
    }

    /// `bufs` as one write of a `wsgate.v1` 101 response: the only thing
    /// held.
    fn is_wsgate_101(bufs: &[IoSlice<'_>]) -> Option<usize> {
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        let head = nonempty.next()?;
        if nonempty.next().is_some() || !head.starts_with(WSGATE_101) {
            return None;
        }
        head.windows(WSGATE_SUBPROTOCOL_LINE.len())
            .any(|w| w == WSGATE_SUBPROTOCOL_LINE)
            .then_some(head.len())
    }

    /// Writes `bufs`, behind the held 101 if there is one. With `bufs`
    /// empty, writes only what is held.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.held.is_empty() {
            if let Some(len) = Self::is_wsgate_101(bufs) {
                self.held = bufs.iter().flat_map(|b| b.iter().copied()).collect();
                return Poll::Ready(Ok(len));
            }
            if bufs.is_empty() {
                return Poll::Ready(Ok(0));
            }
            return Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        }
        // Only when something other than the connection task writes after
        // a held 101 (not a path the gateway takes): the 101 goes first.
        loop {
            if self.held.is_empty() {
                if bufs.is_empty() {
                    return Poll::Ready(Ok(0));
                }
                return Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
            }
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&self.held));
            slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let n = std::task::ready!(Pin::new(&mut self.tcp).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            if n < self.held.len() {
                self.held.drain(..n);
                continue;
            }
            let past_held = n - self.held.len();
            self.held = Vec::new();
            if past_held > 0 {
                return Poll::Ready(Ok(past_held));
            }
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(&mut s.tcp).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => s.poll_write_vectored(cx, &[IoSlice::new(buf)]),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => s.poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.tcp.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            // A held 101 stays held: it goes out with HELLO.
            Self::Plain(s) => Pin::new(&mut s.tcp).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => {
                std::task::ready!(s.poll_write_vectored(cx, &[]))?;
                Pin::new(&mut s.tcp).poll_shutdown(cx)
            }
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FileConfig};

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_file(FileConfig::from_toml(text, std::path::Path::new("t.toml"))?)
    }

    /// A connected pair on loopback: ours wrapped, theirs plain.
    async fn pair() -> (MaybeTls, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let theirs = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(listener.accept(), theirs);
        (
            MaybeTls::Plain(PlainTcp::new(ours.unwrap().0)),
            theirs.unwrap(),
        )
    }

    const OK_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
        sec-websocket-protocol: wsgate.v1\r\n\r\n";

    async fn read_exactly(tcp: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
            .await
            .expect("in time")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn a_wsgate_101_is_held_through_flush_and_goes_first_with_the_next_write() {
        use tokio::io::AsyncWriteExt as _;
        let (mut ours, mut theirs) = pair().await;
        ours.write_all(OK_101).await.unwrap();
        ours.flush().await.unwrap();
        let MaybeTls::Plain(plain) = &ours else {
            unreachable!()
        };
        assert_eq!(plain.held, OK_101, "held, not written");
        ours.write_all(b"after").await.unwrap();
        let got = read_exactly(&mut theirs, OK_101.len() + 5).await;
        assert_eq!(&got[..OK_101.len()], OK_101);
        assert_eq!(&got[OK_101.len()..], b"after");
        // Taken apart: nothing left held.
        let MaybeTls::Plain(plain) = ours else {
            unreachable!()
        };
        assert!(plain.into_parts().1.is_empty());
    }

    #[tokio::test]
    async fn a_held_101_is_handed_over_whole_and_sent_at_shutdown() {
        use tokio::io::AsyncWriteExt as _;
        let (mut ours, _theirs) = pair().await;
        ours.write_all(OK_101).await.unwrap();
        let MaybeTls::Plain(plain) = ours else {
            unreachable!()
        };
        let (_tcp, held) = plain.into_parts();
        assert_eq!(held, OK_101);

        let (mut ours, mut theirs) = pair().await;
        ours.write_all(OK_101).await.unwrap();
        ours.shutdown().await.unwrap();
        assert_eq!(read_exactly(&mut theirs, OK_101.len()).await, OK_101);
    }

    #[tokio::test]
    async fn other_responses_and_other_101s_are_written_at_once() {
        use tokio::io::AsyncWriteExt as _;
        let other_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
        let ok_200: &[u8] = b"HTTP/1.1 200 OK\r\nsec-websocket-protocol: wsgate.v1\r\n\r\n";
        for response in [other_101, ok_200] {
            let (mut ours, mut theirs) = pair().await;
            ours.write_all(response).await.unwrap();
            assert_eq!(read_exactly(&mut theirs, response.len()).await, response);
        }
    }

    #[test]
    fn tls_block_is_optional_and_needs_both_files() {
        assert!(parse("").unwrap().tls.is_none());
        let c = parse("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        let e = parse("[tls]\ncert = \"c.pem\"\n").unwrap_err().to_string();
        assert!(e.contains("tls.key"), "{e}");
        let e = parse("[tls]\nkey = \"k.pem\"\n").unwrap_err().to_string();
        assert!(e.contains("tls.cert"), "{e}");
        assert!(parse("[tls]\ncertificate = \"c.pem\"\n").is_err());
    }

    #[test]
    fn missing_files_name_the_setting() {
        let files = TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        let err = acceptor(&files).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("tls.cert") && e.contains("/nonexistent/cert.pem")),
            "{err:?}"
        );
    }
}
