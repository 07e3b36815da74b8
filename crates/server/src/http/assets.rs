//! Static assets compiled into the binary: the browser module and the demo
//! page. The bundle is built from `js/` and committed, so building the
//! gateway never needs npm.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const SM_JS: &[u8] = include_bytes!("../../assets/sm.js");
const DEMO_HTML: &[u8] = include_bytes!("../../assets/demo.html");

/// `GET /sm.js`.
pub(crate) async fn sm_js() -> Response {
    let mut resp = SM_JS.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    // Revalidate each time: a stale module after an upgrade would speak an
    // old protocol. The ETag keeps revalidation cheap.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// `GET /` with `--demo`.
pub(crate) async fn demo_page() -> Response {
    let mut resp = DEMO_HTML.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
