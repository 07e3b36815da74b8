//! A minimal HTTP/1.1 client over a socket this crate opens itself, so the
//! source address can be chosen (tests bind 127.0.0.2) and both login
//! requests share one connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

use crate::{Error, Result};

/// Opens a TCP connection from `local` (if given) to `addr`.
pub(crate) async fn tcp_connect(
    addr: SocketAddr,
    local: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| Error::Timeout("TCP connect"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A connected byte stream: plain TCP, or TLS over TCP for `https://`
/// gateways (see [`crate::ClientConfig::tls_root_pem`]).
pub(crate) enum Stream {
    /// `http://` / `ws://`.
    Plain(TcpStream),
    /// `https://` / `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens the gateway connection `config` describes: TCP, then a TLS 1.3
/// handshake when the gateway is `https://`.
pub(crate) async fn connect(config: &crate::ClientConfig) -> Result<Stream> {
    let tcp = tcp_connect(config.addr, config.local_addr, config.timeout).await?;
    let Some(tls) = &config.tls else {
        if config.is_tls() {
            return Err(Error::Tls(
                "an https:// gateway needs trusted roots: call ClientConfig::tls_root_pem".into(),
            ));
        }
        return Ok(Stream::Plain(tcp));
    };
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let stream = tokio::time::timeout(
        config.timeout,
        connector.connect(tls.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| Error::Timeout("the TLS handshake"))??;
    Ok(Stream::Tls(Box::new(stream)))
}

/// A keep-alive HTTP/1.1 connection.
pub(crate) struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    timeout: Duration,
}

/// A reply: status, headers, body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|_| self.unexpected())
    }

    pub(crate) fn unexpected(&self) -> Error {
        let mut body = String::from_utf8_lossy(&self.body).into_owned();
        body.truncate(200);
        Error::UnexpectedReply {
            status: self.status,
            body,
        }
    }
}

impl HttpConn {
    pub(crate) async fn open(config: &crate::ClientConfig) -> Result<Self> {
        let (host, timeout) = (config.host.as_str(), config.timeout);
        let stream = connect(config).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host: host.to_owned(),
            timeout,
        })
    }

    pub(crate) async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Http(e.to_string()))?;
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| Error::Http(e.to_string()))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| Error::Http(e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, 1 << 20)
                .collect()
                .await
                .map_err(|e| Error::Http(e.to_string()))?
                .to_bytes();
            Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout("an HTTP reply"))?
    }
}
