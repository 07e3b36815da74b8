//! `https://` and `wss://` (protocol.md §5: "Plain `ws://` (or `wss://`)"):
//! TLS 1.3 only, rustls with the `ring` provider, enabled by
//! a `[tls]` block naming a PEM certificate chain and its private key.
//!
//! The handshake runs in the connection's own task, under the same deadline
//! as the HTTP request headers, so a client that stalls it holds only its
//! own slot. The benchmarks use it as the "TLS on everything" baseline.

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
    Plain(TcpStream),
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
        return Some(MaybeTls::Plain(tcp));
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

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
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
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
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
