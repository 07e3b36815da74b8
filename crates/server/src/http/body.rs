//! Every HTTP request body is read here, whole, under a size limit and a
//! deadline, before any handler runs: a client trickling a body byte by
//! byte is cut off with 408 (the header deadline ends where the body
//! starts), and an oversized one gets 413 without being buffered.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::json;

use super::json_response;
use crate::Shared;

/// The largest body a path accepts.
fn limit_for(shared: &Shared, path: &str) -> usize {
    let limits = &shared.config.limits;
    if path == "/api/publish" {
        // Events may be as large as a WebSocket message.
        limits.max_message_size.saturating_add(4096)
    } else {
        limits.http_body_limit
    }
}

/// Middleware: buffers the body with a limit and a deadline.
pub(crate) async fn bounded(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let limit = limit_for(&shared, request.uri().path());
    let (parts, body) = request.into_parts();
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(shared.config.limits.http_body_timeout, read).await {
        Ok(Ok(collected)) => {
            next.run(Request::from_parts(parts, Body::from(collected.to_bytes())))
                .await
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"status": "bad_request", "message": format!("request body over {limit} bytes")}),
        ),
        Ok(Err(_)) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"status": "bad_request", "message": "the request body could not be read"}),
        ),
        Err(_) => json_response(
            StatusCode::REQUEST_TIMEOUT,
            &json!({"status": "timeout", "message": "the request body did not arrive in time"}),
        ),
    }
}
