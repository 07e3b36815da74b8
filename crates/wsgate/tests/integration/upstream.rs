//! Upstream routes against a real HTTP application on 127.0.0.1 (protocol.md §6.1).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use wsgate_client::login;

use crate::util::*;

/// A tiny application: `/app.info` answers with what it received,
/// `/app.fail` with 500, `/app.slow` after 3 s.
async fn start_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let method = req.method().to_string();
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .map(|v| v.to_str().unwrap_or("?").to_owned())
                        };
                        let (user, session, ip) = (
                            h("x-wsgate-user"),
                            h("x-wsgate-session"),
                            h("x-wsgate-client-ip"),
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let (status, reply) = match path.as_str() {
                        "/app.info" => (
                            200,
                            json!({"method": method, "user": user, "session": session, "ip": ip,
                                   "body": String::from_utf8_lossy(&body)})
                            .to_string(),
                        ),
                        "/app.fail" => (500, "boom".into()),
                        "/app.slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            (200, "late".into())
                        }
                        _ => (404, "no".into()),
                    };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(reply)))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn toml(app: SocketAddr) -> String {
    format!(
        r#"[upstream]
timeout_secs = 1
[[routes]]
name = "app.*"
upstream = "http://{app}"
[[routes]]
name = "vault.info"
upstream = "http://{app}"
sensitive = true
[[routes]]
name = "down.info"
upstream = "http://127.0.0.1:9"
"#
    )
}

#[tokio::test]
async fn requests_are_forwarded_with_the_caller_headers_plain_and_sensitive() {
    let app = start_app().await;
    let gw = TestGateway::start(&toml(app)).await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut conn = session.connect(&gw.client()).await.unwrap();
    for sensitive in [false, true] {
        let reply = conn
            .request("app.info", b"payload bytes", sensitive)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["user"], ALICE);
        assert_eq!(v["session"], session.id.as_str());
        assert_eq!(v["ip"], "127.0.0.1");
        assert_eq!(
            v["body"], "payload bytes",
            "the application gets the decrypted payload"
        );
    }
    let e = conn.request("vault.info", b"x", false).await.unwrap_err();
    assert_eq!(e.server_code(), Some("encryption_required"));
    // With ENC it is forwarded (this app has no /vault.info: its 404 comes back).
    let e = conn.request("vault.info", b"x", true).await.unwrap_err();
    assert_eq!(e.server_code(), Some("upstream_404"));
}

#[tokio::test]
async fn upstream_failures_become_clear_errors_and_the_connection_stays_usable() {
    let app = start_app().await;
    let gw = TestGateway::start(&toml(app)).await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut conn = session.connect(&gw.client()).await.unwrap();
    let e = conn.request("app.fail", b"", true).await.unwrap_err();
    assert_eq!(e.server_code(), Some("upstream_500"));
    let e = conn.request("app.missing", b"", false).await.unwrap_err();
    assert_eq!(e.server_code(), Some("upstream_404"));
    let started = std::time::Instant::now();
    let e = conn.request("app.slow", b"", false).await.unwrap_err();
    assert_eq!(e.server_code(), Some("upstream_timeout"));
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "timeout honoured"
    );
    let e = conn.request("down.info", b"", false).await.unwrap_err();
    assert_eq!(e.server_code(), Some("upstream_unavailable"));
    assert_eq!(
        conn.request("sys.echo", b"still here", false)
            .await
            .unwrap(),
        b"still here"
    );
}

#[tokio::test]
async fn slow_upstream_requests_do_not_block_other_requests_on_the_connection() {
    let app = start_app().await;
    let gw = TestGateway::start(&toml(app)).await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut conn = session.connect(&gw.client()).await.unwrap();
    let slow_id = conn.next_request_id();
    conn.send(0x10, 0, slow_id, "app.slow", b"").await.unwrap();
    // A duplicate id while the first is in flight is a protocol violation…
    // …but first, a different request is answered while the slow one waits.
    let echo_id = conn.next_request_id();
    conn.send(0x10, 0, echo_id, "sys.echo", b"fast")
        .await
        .unwrap();
    let first = conn.recv().await.unwrap();
    assert_eq!((first.id, first.body.as_slice()), (echo_id, &b"fast"[..]));
    conn.send(0x10, 0, slow_id, "sys.echo", b"dup")
        .await
        .unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));
}

#[tokio::test]
async fn too_many_requests_in_flight_get_busy() {
    let app = start_app().await;
    let gw = TestGateway::start(&format!("{}\n[limits]\nmax_in_flight = 2\n", toml(app))).await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut conn = session.connect(&gw.client()).await.unwrap();
    for id in 1..=3 {
        conn.send(0x10, 0, id, "app.slow", b"").await.unwrap();
    }
    let busy = conn.recv().await.unwrap();
    assert_eq!(busy.id, 3);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&busy.body).unwrap()["code"],
        "busy"
    );
}
