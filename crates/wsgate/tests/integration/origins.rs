//! Pages on other origins (issue 14, `allowed_origins`): CORS on the two
//! login endpoints for the listed origins only, and `/ws` refusing any
//! other `Origin` but the gateway's own.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::util::*;

const APP: &str = "http://app.example:3000";
const OTHER: &str = "http://evil.example";

/// Sends `request` as is and returns the answer's head (status line and
/// headers).
async fn head_of(gw: &TestGateway, request: String) -> String {
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn preflight(origin: &str, path: &str, method: &str) -> String {
    format!(
        "OPTIONS {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: content-type\r\n\
         Connection: close\r\n\r\n"
    )
}

fn upgrade(origin: Option<&str>, host: &str) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: wsgate.v1\r\n{origin}\r\n"
    )
}

#[tokio::test]
async fn listed_origins_get_cors_on_the_login_endpoints_and_others_get_nothing() {
    let gw = TestGateway::start(&format!(
        "allowed_origins = [\"{APP}\", \"https://www.example.com:443/\"]"
    ))
    .await;
    for (path, method) in [("/auth/key", "GET"), ("/auth/session", "PUT")] {
        let ok = head_of(&gw, preflight(APP, path, method)).await;
        assert!(ok.starts_with("HTTP/1.1 204"), "{path}: {ok}");
        assert_eq!(
            header(&ok, "access-control-allow-origin"),
            Some(APP),
            "{ok}"
        );
        assert!(
            header(&ok, "access-control-allow-methods")
                .unwrap()
                .contains(method)
        );
        assert!(
            header(&ok, "access-control-allow-headers")
                .unwrap()
                .eq_ignore_ascii_case("content-type")
        );
        assert_eq!(header(&ok, "access-control-allow-credentials"), None);
        let refused = head_of(&gw, preflight(OTHER, path, method)).await;
        assert!(refused.starts_with("HTTP/1.1 403"), "{path}: {refused}");
        assert_eq!(header(&refused, "access-control-allow-origin"), None);
    }
    // The default port and a trailing slash were normalized away.
    let https = head_of(
        &gw,
        preflight("https://www.example.com", "/auth/key", "GET"),
    )
    .await;
    assert!(https.starts_with("HTTP/1.1 204"), "{https}");
    // Actual requests: the listed origin is allowed to read, others are not.
    let get = |origin: &str| {
        format!(
            "GET /auth/key HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
        )
    };
    let ok = head_of(&gw, get(APP)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(header(&ok, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&ok, "vary"), Some("Origin"));
    let other = head_of(&gw, get(OTHER)).await;
    assert_eq!(
        header(&other, "access-control-allow-origin"),
        None,
        "{other}"
    );
    let put = format!(
        "PUT /auth/session HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {APP}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    let answered = head_of(&gw, put).await;
    assert!(answered.starts_with("HTTP/1.1 400"), "{answered}");
    assert_eq!(header(&answered, "access-control-allow-origin"), Some(APP));
    // Nothing else answers cross-origin.
    let api = head_of(&gw, preflight(APP, "/api/publish", "POST")).await;
    assert_eq!(header(&api, "access-control-allow-origin"), None, "{api}");
}

#[tokio::test]
async fn with_allowed_origins_the_websocket_refuses_other_origins() {
    let gw = TestGateway::start(&format!("allowed_origins = [\"{APP}\"]")).await;
    let host = gw.addr.to_string();
    for (origin, allowed) in [
        (Some(APP), true),
        (None, true),
        // The gateway's own pages (the demo page).
        (Some(format!("http://{host}")).as_deref(), true),
        (Some(OTHER), false),
        (Some("null"), false),
    ] {
        let answer = head_of(&gw, upgrade(origin, &host)).await;
        let status = if allowed {
            "HTTP/1.1 101"
        } else {
            "HTTP/1.1 403"
        };
        assert!(answer.starts_with(status), "{origin:?}: {answer}");
    }
    // A real client still connects and logs in.
    let session = wsgate_client::login(&gw.client(), ALICE, ALICE_PASSWORD)
        .await
        .unwrap();
    let mut conn = session.connect(&gw.client()).await.unwrap();
    assert_eq!(conn.request("sys.echo", b"hi", true).await.unwrap(), b"hi");
}

#[tokio::test]
async fn without_allowed_origins_nothing_is_cross_origin_and_the_websocket_checks_no_origin() {
    let gw = TestGateway::start("").await;
    let ok = head_of(&gw, preflight(APP, "/auth/key", "GET")).await;
    assert_eq!(header(&ok, "access-control-allow-origin"), None, "{ok}");
    let answer = head_of(&gw, upgrade(Some(OTHER), &gw.addr.to_string())).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
}
