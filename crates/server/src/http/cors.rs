//! Pages on other origins (`allowed_origins`): CORS for the two login
//! endpoints, and the `Origin` check of `/ws`.
//!
//! Only `GET /auth/key` and `PUT /auth/session` answer cross-origin, and only
//! to the listed origins; credentials (cookies) are never involved, so no
//! `Access-Control-Allow-Credentials`. An origin not listed gets no CORS
//! header at all (its preflight a 403), so the browser keeps the answer
//! from the page.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Shared;

/// The paths a page on another origin may call.
fn is_cors_path(path: &str) -> bool {
    path == "/auth/key" || path == "/auth/session"
}

/// The request's `Origin`, if it is one of `allowed` (exact match of the
/// normalized `scheme://host[:port]`).
fn allowed_origin<'a>(headers: &'a HeaderMap, allowed: &[String]) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    let normalized = crate::config::normalize_origin(text).ok()?;
    allowed.contains(&normalized).then_some(origin)
}

/// Answers preflights and adds `Access-Control-Allow-Origin` for the listed
/// origins on the login endpoints; everything else passes untouched.
pub(crate) async fn cors(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = &shared.config.allowed_origins;
    if allowed.is_empty() || !is_cors_path(request.uri().path()) {
        return next.run(request).await;
    }
    let origin = allowed_origin(request.headers(), allowed).cloned();
    if request.method() == Method::OPTIONS {
        let wanted = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .unwrap_or_default();
        let Some(origin) = origin.filter(|_| matches!(wanted, "GET" | "PUT")) else {
            return (
                StatusCode::FORBIDDEN,
                [(header::VARY, HeaderValue::from_static("Origin"))],
                "this origin may not call the gateway's login endpoints (allowed_origins)\n",
            )
                .into_response();
        };
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, PUT"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Content-Type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        return resp;
    }
    let mut resp = next.run(request).await;
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        // sm.js reads Retry-After of a 429.
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After"),
        );
    }
    resp
}

/// Whether `/ws` may be opened from a page whose `Origin` is in `headers`:
/// always without the list (v1) or without an `Origin` (not a browser);
/// with it, a listed origin or the gateway's own (the `Host` the request
/// names), so the demo page keeps working.
pub(crate) fn websocket_origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(text) = origin.to_str() else {
        return false;
    };
    let Ok(normalized) = crate::config::normalize_origin(text) else {
        return false;
    };
    if allowed.contains(&normalized) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let origin_host = normalized.split_once("://").map(|(_, h)| h);
    matches!((host.as_deref(), origin_host), (Some(h), Some(o)) if h == o)
}
