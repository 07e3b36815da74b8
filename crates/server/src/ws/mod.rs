//! The WebSocket endpoint `GET /ws` (protocol.md §5).

mod connection;
pub(crate) use connection::presence_reply;
mod frames;
pub(crate) mod raw_echo;
pub(crate) mod raw_echo_frames;
pub(crate) mod registry;

use futures_util::FutureExt as _;
use futures_util::future::Either;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::Shared;

/// The subprotocol every connection must offer.
pub(crate) const SUBPROTOCOL: &str = "wsgate.v1";

fn offers_subprotocol(req: &Request) -> bool {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// Holds one place of its IP group in `[limits] max_unauthenticated_per_ip`
/// while its connection has not completed KEY_INIT: given back when it
/// drops, which is at KEY_ACK or whenever the connection (or an upgrade
/// that never completed) goes, so no path keeps a count.
pub(crate) struct Unauthenticated {
    shared: Arc<Shared>,
    group: String,
}

impl Unauthenticated {
    /// A place for a connection from `ip`, if its group has one left.
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<Self> {
        let group = shared.config.login.ip_group(ip);
        let cap = shared.config.limits.max_unauthenticated_per_ip;
        if !shared.sessions.try_add_unauthenticated(&group, cap) {
            return None;
        }
        shared.metrics.connections_unauthenticated.inc();
        Some(Self {
            shared: shared.clone(),
            group,
        })
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.shared.sessions.release_unauthenticated(&self.group);
        self.shared.metrics.connections_unauthenticated.dec();
    }
}

/// The 101 response fastwebsockets builds for an upgrade.
type UpgradeResponse = axum::http::Response<http_body_util::Empty<bytes::Bytes>>;

/// Answers a WebSocket upgrade request: the 101 response and the socket to
/// come, or a 400 that says what was wrong with the request.
#[allow(
    clippy::result_large_err,
    reason = "both sides are HTTP responses, made once per upgrade"
)]
pub(crate) fn accept(
    req: &mut Request,
) -> Result<(UpgradeResponse, fastwebsockets::upgrade::UpgradeFut), Response> {
    fastwebsockets::upgrade::upgrade(req).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid WebSocket upgrade: {e}\n"),
        )
            .into_response()
    })
}

/// `GET /ws`: checks the upgrade, answers 101 with `wsgate.v1`, and hands the
/// socket to a connection task.
pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return (
            StatusCode::BAD_REQUEST,
            "this endpoint only accepts WebSocket upgrades (subprotocol wsgate.v1)\n",
        )
            .into_response();
    }
    if !offers_subprotocol(&req) {
        return (
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol wsgate.v1 is required (Sec-WebSocket-Protocol: wsgate.v1)\n",
        )
            .into_response();
    }
    // Cross-site WebSocket hijacking, belt and braces (the session key is
    // what really guards a connection): with `allowed_origins` set, a page
    // from an origin outside it may not even open one.
    if !crate::http::cors::websocket_origin_allowed(req.headers(), &shared.config.allowed_origins) {
        return (
            StatusCode::FORBIDDEN,
            "this page's origin is not in the gateway's allowed_origins\n",
        )
            .into_response();
    }
    let ip = crate::http::auth::observed_ip(&shared, peer, req.headers());
    // Before the 101: a refused client costs no WebSocket task, and the
    // HTTP connection closes after the answer.
    let Some(unauthenticated) = Unauthenticated::take(&shared, ip) else {
        shared.metrics.upgrades_refused_unauthenticated.inc();
        tracing::debug!(
            ip = %wsgate_proto::ip::to_text(ip),
            "upgrade refused: limits.max_unauthenticated_per_ip reached"
        );
        // By the KEY_INIT timeout every connection counted now has
        // established or been closed.
        let retry = shared.config.limits.key_init_timeout.as_secs().max(1);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::RETRY_AFTER, HeaderValue::from(retry)),
                (header::CONNECTION, HeaderValue::from_static("close")),
            ],
            "too many connections from your address are waiting for KEY_INIT; retry later\n",
        )
            .into_response();
    };
    let (response, upgraded) = match accept(&mut req) {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    // `then`: the task holds the upgrade's future or the connection's, never
    // both, nor the WebSocket it was built from (an idle connection holds
    // its task's state for its whole life).
    tokio::spawn(upgraded.then(move |result| match result {
        Ok(ws) => Either::Left(connection::run(shared, ws, ip, unauthenticated)),
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade did not complete");
            Either::Right(std::future::ready(()))
        }
    }));
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Response::from_parts(parts, axum::body::Body::new(body))
}
