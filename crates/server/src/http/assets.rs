//! Static assets compiled into the binary: the browser module and the demo
//! page. The bundle is built from `js/` and committed, so building the
//! gateway never needs npm.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const SM_JS: &[u8] = include_bytes!("../../assets/sm.js");
const SM_WORKER_JS: &[u8] = include_bytes!("../../assets/sm-worker.js");
const DEMO_HTML: &[u8] = include_bytes!("../../assets/demo.html");

/// `GET /sm.js`.
pub(crate) async fn sm_js() -> Response {
    script(SM_JS)
}

/// `GET /sm-worker.js`: sm.js's shared worker (`connect({ shared: true })`).
/// Its policy is its own (a worker's CSP comes from its script's response):
/// it may reach only this origin (the login and `/ws`) and compile the
/// WebAssembly of its PBKDF2, nothing else.
pub(crate) async fn sm_worker_js() -> Response {
    let mut resp = script(SM_WORKER_JS);
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; connect-src 'self'; script-src 'wasm-unsafe-eval'; \
             frame-ancestors 'none'",
        ),
    );
    resp
}

fn script(body: &'static [u8]) -> Response {
    let mut resp = body.into_response();
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
    h.insert(header::CONTENT_SECURITY_POLICY, demo_policy().clone());
    resp
}

/// The demo page's Content-Security-Policy: its one inline style sheet and
/// one inline module script by hash, `/sm.js` from this origin,
/// WebAssembly compilation (sm.js's PBKDF2 without Web Crypto), WebSockets
/// and requests to this origin only, nothing framed, no form posted
/// anywhere, no `<base>`.
fn demo_policy() -> &'static HeaderValue {
    static POLICY: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        let page = String::from_utf8_lossy(DEMO_HTML);
        let script = inline_hash(&page, "<script type=\"module\">", "</script>");
        let style = inline_hash(&page, "<style>", "</style>");
        let policy = format!(
            "default-src 'none'; script-src 'self' {script} 'wasm-unsafe-eval'; \
             style-src {style}; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        // Hashes are base64: always a valid header value.
        HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
    });
    &POLICY
}

/// `'sha256-…'` of the text between the first `open` and the next `close`
/// in `page` (an element's content, as CSP hashes it); `'none'` if absent.
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    let Some(start) = page.find(open).map(|i| i + open.len()) else {
        return "'none'".into();
    };
    let Some(len) = page[start..].find(close) else {
        return "'none'".into();
    };
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &page.as_bytes()[start..start + len],
    );
    format!(
        "'sha256-{}'",
        wsgate_proto::b64::encode_b64(digest.as_ref())
    )
}
