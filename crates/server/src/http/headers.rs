//! Response headers every answer carries (issue 11, item 11): no content
//! sniffing, no referrer, no framing, and nothing under `/auth/` cached.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// The policy of every response that sets none of its own: nothing may
/// frame it. The demo page sets a full policy ([`super::assets`]).
const FRAME_NONE: &str = "frame-ancestors 'none'";

/// Adds `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
/// `X-Frame-Options: DENY` and a `frame-ancestors 'none'` policy to every
/// response, and `Cache-Control: no-store` to everything under `/auth/`
/// (login replies, the key, introspection: never kept by a shared cache).
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let auth = request.uri().path().starts_with("/auth/");
    let mut resp = next.run(request).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // For browsers that predate `frame-ancestors`.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(FRAME_NONE),
        );
    }
    if auth {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
