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
    let mut bound = None;
    if let Some(ip) = local {
        let failed = |cause| Error::Connect {
            addr,
            local: Some(SocketAddr::new(ip, 0)),
            cause,
        };
        socket.bind(SocketAddr::new(ip, 0)).map_err(failed)?;
        bound = Some(socket.local_addr().map_err(failed)?);
    }
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| Error::Timeout("TCP connect"))?
        .map_err(|cause| Error::Connect {
            addr,
            local: bound,
            cause,
        })?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A hyper error as text, with the IO error underneath it when there is
/// one (hyper alone says only "connection error").
pub(crate) fn hyper_error_text(e: &hyper::Error) -> String {
    match io_cause(e) {
        Some(io) => format!("{e}: {}", crate::error::describe_io(io)),
        None => e.to_string(),
    }
}

/// The IO error in `e`'s source chain.
pub(crate) fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// A connected byte stream: plain TCP, or TLS over TCP for `https://`
/// gateways (see [`crate::ClientConfig::tls_root_pem`]).
pub(crate) enum Stream {
    /// `http://` / `ws://`.
    Plain(TcpStream),
    /// `https://` / `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The local end of the TCP connection.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Plain(s) => s.local_addr().ok(),
            Self::Tls(s) => s.get_ref().0.local_addr().ok(),
        }
    }
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
    let local = tcp.local_addr().ok();
    let stream = tokio::time::timeout(
        config.timeout,
        connector.connect(tls.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| Error::Timeout("the TLS handshake"))?
    .map_err(|e| {
        Error::Tls(format!(
            "handshake with {}{} failed: {}",
            config.addr,
            local.map_or_else(String::new, |l| format!(" from {l}")),
            crate::error::describe_io(&e)
        ))
    })?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// A keep-alive HTTP/1.1 connection.
pub(crate) struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    addr: SocketAddr,
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
            .map_err(|e| Error::Http(hyper_error_text(&e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host: host.to_owned(),
            addr: config.addr,
            timeout,
        })
    }

    pub(crate) async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply> {
        let req_method = method.clone();
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
            let failed = |e: hyper::Error| {
                Error::Http(format!(
                    "{} {path} to {}: {}",
                    req_method,
                    self.addr,
                    hyper_error_text(&e)
                ))
            };
            self.sender.ready().await.map_err(failed)?;
            let resp = self.sender.send_request(req).await.map_err(failed)?;
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
