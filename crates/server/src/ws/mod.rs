//! The WebSocket endpoint `GET /ws` (protocol.md §5).

mod connection;
mod frames;
pub(crate) mod raw_echo;
pub(crate) mod raw_echo_frames;
pub(crate) mod registry;

use std::net::SocketAddr;
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
    let ip = crate::http::auth::observed_ip(&shared, peer, req.headers());
    let (response, upgraded) = match accept(&mut req) {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    tokio::spawn(async move {
        match upgraded.await {
            Ok(ws) => connection::run(shared, ws, ip).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
        }
    });
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Response::from_parts(parts, axum::body::Body::new(body))
}
