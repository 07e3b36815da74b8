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
    pub(crate) async fn open(
        addr: SocketAddr,
        host: &str,
        local: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Self> {
        let tcp = tcp_connect(addr, local, timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
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
