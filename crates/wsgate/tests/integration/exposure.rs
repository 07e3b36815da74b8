//! Issue 11, item 11: what every answer tells a browser (no sniffing, no
//! referrer, no framing, nothing under `/auth/` cached), the demo page's
//! strict policy, and `/metrics` only on its own listener.

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::util::*;

/// One `GET` over a fresh connection: (status line and headers, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_string(&mut out),
    )
    .await
    .expect("the gateway answers within 10 s")
    .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_owned(), body.to_owned())
}

/// The value of header `name` (any case) in `head`.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

#[tokio::test]
async fn every_answer_forbids_sniffing_framing_and_referrers() {
    let gw = TestGateway::start("api_keys = [\"exposure-api-key-0123456789\"]").await;
    for path in [
        "/auth/key",
        "/auth/session",
        "/sm.js",
        "/sm-worker.js",
        "/healthz",
        "/nowhere",
        "/api/publish",
        "/ws",
    ] {
        let (head, _) = get(gw.addr, path).await;
        assert_eq!(
            header(&head, "x-content-type-options"),
            Some("nosniff"),
            "{path}: {head}"
        );
        assert_eq!(
            header(&head, "referrer-policy"),
            Some("no-referrer"),
            "{path}: {head}"
        );
        assert_eq!(
            header(&head, "x-frame-options"),
            Some("DENY"),
            "{path}: {head}"
        );
        let csp = header(&head, "content-security-policy").unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {head}");
        if path.starts_with("/auth/") {
            assert_eq!(
                header(&head, "cache-control"),
                Some("no-store"),
                "{path}: {head}"
            );
        }
    }
}

/// The shared worker's script (sm.js shared mode) is served with a policy of
/// its own: a worker's CSP comes from its script's response, and this one may
/// reach only the gateway's origin.
#[tokio::test]
async fn the_shared_worker_script_is_served_with_its_own_policy() {
    let gw = TestGateway::start("").await;
    let (head, body) = get(gw.addr, "/sm-worker.js").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(
        body.starts_with("/*! sm-worker.js "),
        "{}",
        &body[..80.min(body.len())]
    );
    let csp = header(&head, "content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "script-src 'wasm-unsafe-eval'",
    ] {
        assert!(csp.contains(directive), "{directive} missing: {csp}");
    }
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_only() {
    let gw = TestGateway::start("").await;
    let (head, _) = get(gw.addr, "/metrics").await;
    assert!(
        head.starts_with("HTTP/1.1 404"),
        "client-facing /metrics: {head}"
    );
    let (head, body) = get(gw.metrics_addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("wsgate_logins_total"), "{body}");
    // And the metrics listener serves nothing else.
    let (head, _) = get(gw.metrics_addr, "/auth/key").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[tokio::test]
async fn the_demo_page_has_a_strict_policy_naming_its_own_inline_code() {
    let mut config = config("");
    config.demo = true;
    let gw = TestGateway::start_in(&Fleet::new().await, config).await;
    let (head, page) = get(gw.addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let csp = header(&head, "content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "'wasm-unsafe-eval'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing: {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(
        !page.contains(" style=\""),
        "inline style attributes need 'unsafe-hashes'"
    );
    // The hashes are those of the page's inline script and style sheet.
    for (open, close) in [
        ("<script type=\"module\">", "</script>"),
        ("<style>", "</style>"),
    ] {
        let start = page.find(open).unwrap() + open.len();
        let len = page[start..].find(close).unwrap();
        let digest = aws_lc_rs_digest(&page.as_bytes()[start..start + len]);
        let hash = format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        assert!(csp.contains(&hash), "{hash} not in {csp}");
    }
}

fn aws_lc_rs_digest(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}
