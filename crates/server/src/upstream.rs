//! Forwarding REQUESTs to upstream HTTP applications (protocol.md §6.1):
//! `POST <upstream>/<route>` with the plaintext payload and the
//! `X-Wsgate-User`, `X-Wsgate-Session`, `X-Wsgate-Client-Ip` headers, over
//! pooled keep-alive connections.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamSettings;

/// Why an upstream call produced no payload; maps to the ERR code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpstreamError {
    /// A non-2xx status → `upstream_<status>`.
    Status(u16),
    /// No answer in time → `upstream_timeout`.
    Timeout,
    /// Connection refused, reset, or a malformed reply → `upstream_unavailable`.
    Unavailable,
}

impl UpstreamError {
    pub(crate) fn code(&self) -> String {
        match self {
            Self::Status(s) => format!("upstream_{s}"),
            Self::Timeout => "upstream_timeout".into(),
            Self::Unavailable => "upstream_unavailable".into(),
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            Self::Status(s) => format!("the application answered HTTP {s}"),
            Self::Timeout => "the application did not answer in time; retry later".into(),
            Self::Unavailable => "the application is unreachable; retry later".into(),
        }
    }
}

/// What the gateway tells the application about a request.
#[derive(Debug)]
pub(crate) struct Caller<'a> {
    pub(crate) user: &'a str,
    pub(crate) session_id: &'a str,
    pub(crate) client_ip: &'a str,
}

/// The pooled HTTP client shared by every connection of a node.
#[derive(Debug, Clone)]
pub(crate) struct Upstreams {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Upstreams {
    pub(crate) fn new(settings: &UpstreamSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(settings.max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            timeout: settings.timeout,
        }
    }

    /// Forwards one request; the reply body is limited to `max_reply` bytes.
    pub(crate) async fn forward(
        &self,
        base: &Uri,
        route: &str,
        caller: &Caller<'_>,
        body: Bytes,
        max_reply: usize,
    ) -> Result<Bytes, UpstreamError> {
        let uri = target_uri(base, route).ok_or(UpstreamError::Unavailable)?;
        let header =
            |v: &str| HeaderValue::from_bytes(v.as_bytes()).map_err(|_| UpstreamError::Unavailable);
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header("x-wsgate-user", header(caller.user)?)
            .header("x-wsgate-session", header(caller.session_id)?)
            .header("x-wsgate-client-ip", header(caller.client_ip)?)
            .body(Full::new(body))
            .map_err(|_| UpstreamError::Unavailable)?;
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|_| UpstreamError::Unavailable)?;
            let status = response.status();
            if !status.is_success() {
                return Err(UpstreamError::Status(status.as_u16()));
            }
            let collected = Limited::new(response.into_body(), max_reply)
                .collect()
                .await
                .map_err(|_| UpstreamError::Unavailable)?;
            Ok(collected.to_bytes())
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }
}

/// `<base>/<route>`, the route percent-encoded as one path segment.
fn target_uri(base: &Uri, route: &str) -> Option<Uri> {
    let mut path = base.path().trim_end_matches('/').to_owned();
    path.push('/');
    for b in route.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_uri_appends_the_route_as_one_segment() {
        let base: Uri = "http://127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            target_uri(&base, "app.orders").unwrap().to_string(),
            "http://127.0.0.1:9000/app.orders"
        );
        let base: Uri = "http://h:1/api/".parse().unwrap();
        assert_eq!(
            target_uri(&base, "a b/c?").unwrap().to_string(),
            "http://h:1/api/a%20b%2Fc%3F"
        );
        assert_eq!(
            target_uri(&base, "ü").unwrap().to_string(),
            "http://h:1/api/%C3%BC"
        );
    }
}
