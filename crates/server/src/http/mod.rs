//! HTTP: the accept loop and the plain-HTTP endpoints.

pub(crate) mod api;
pub(crate) mod assets;
pub(crate) mod auth;
pub(crate) mod body;
pub(crate) mod cors;
pub(crate) mod headers;
pub(crate) mod serve;
pub(crate) mod tls;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A JSON response with `Cache-Control: no-store` (login replies must never
/// be cached by an intermediary).
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /metrics`: Prometheus text format. Counts only; nothing secret.
pub(crate) async fn metrics(
    axum::extract::State(shared): axum::extract::State<std::sync::Arc<crate::Shared>>,
) -> Response {
    auth::refresh_gauges(&shared).await;
    shared
        .metrics
        .presence_users
        .set(shared.presence.present_users() as u64);
    let mut resp = shared.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
