//! Channels: SUBSCRIBE, UNSUBSCRIBE, PUBLISH, EVENT and the upstream API
//! `POST /api/publish` (protocol.md §5.4, §6.2, §6.3).

use std::time::Duration;

use serde_json::json;
use wsgate_client::{Connection, login};
use wsgate_proto::envelope::{FLAG_ENC, MessageType};

use crate::util::*;

pub(crate) const API_KEY: &str = "test-api-key-0123456789abcdef";

pub(crate) fn channels_toml() -> String {
    format!(
        r#"api_keys = ["{API_KEY}"]
[[channels]]
pattern = "user.{{user}}.*"
sensitive = true
subscribe = "owner"
publish = "api"
[[channels]]
pattern = "news"
[[channels]]
pattern = "chat.*"
publish = "authenticated"
[[channels]]
pattern = "closed"
subscribe = "none"
"#
    )
}

async fn connect(gw: &TestGateway, user: &str, password: &str) -> Connection {
    let session = login(&gw.client(), user, password).await.unwrap();
    session.connect(&gw.client()).await.unwrap()
}

/// `POST /api/publish` with the test key.
pub(crate) async fn api_publish(
    addr: std::net::SocketAddr,
    channel: &str,
    data: serde_json::Value,
) -> Reply {
    api_call(
        addr,
        "/api/publish",
        Some(API_KEY),
        &json!({"channel": channel, "data": data}),
    )
    .await
}

pub(crate) async fn api_call(
    addr: std::net::SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &serde_json::Value,
) -> Reply {
    let mut http = RawHttp::connect(addr, None).await;
    let auth = key.map(|k| format!("Bearer {k}"));
    http.request_with("POST", path, auth.as_deref(), body.to_string().as_bytes())
        .await
}

async fn next_event(conn: &mut Connection) -> wsgate_client::Message {
    let msg = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("no event in time")
        .unwrap();
    assert_eq!(msg.msg_type, MessageType::Event as u8, "{msg:?}");
    assert_eq!(msg.id, 0);
    msg
}

#[tokio::test]
async fn api_publish_reaches_subscribers_with_compact_json() {
    let gw = TestGateway::start(&channels_toml()).await;
    let mut alice = connect(&gw, ALICE, ALICE_PASSWORD).await;
    let mut bob = connect(&gw, BOB, BOB_PASSWORD).await;
    alice
        .call(MessageType::Subscribe, "news", b"", false)
        .await
        .unwrap();
    bob.call(MessageType::Subscribe, "news", b"", true)
        .await
        .unwrap();
    let reply = api_publish(gw.addr, "news", json!({"headline": "hi", "n": [1, 2]})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    for conn in [&mut alice, &mut bob] {
        let ev = next_event(conn).await;
        assert_eq!(ev.name, "news");
        assert_eq!(ev.flags, 0, "news is not sensitive: readable, tagged");
        assert_eq!(ev.body, br#"{"headline":"hi","n":[1,2]}"#);
    }
    // A string keeps its quotes.
    api_publish(gw.addr, "news", json!("plain text")).await;
    assert_eq!(next_event(&mut alice).await.body, br#""plain text""#);
}

#[tokio::test]
async fn private_sensitive_channels_are_encrypted_and_refuse_others() {
    let gw = TestGateway::start(&channels_toml()).await;
    let mut alice = connect(&gw, ALICE, ALICE_PASSWORD).await;
    let mut bob = connect(&gw, BOB, BOB_PASSWORD).await;
    // Order of checks: not_found, encryption_required, forbidden.
    let e = alice
        .call(MessageType::Subscribe, "nope", b"", false)
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some("not_found"));
    let e = alice
        .call(MessageType::Subscribe, "user.alice.orders", b"", false)
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some("encryption_required"));
    let e = bob
        .call(MessageType::Subscribe, "user.alice.orders", b"", false)
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some("encryption_required"));
    let e = bob
        .call(MessageType::Subscribe, "user.alice.orders", b"", true)
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some("forbidden"));
    let e = alice
        .call(MessageType::Subscribe, "closed", b"", false)
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some("forbidden"));

    alice
        .call(MessageType::Subscribe, "user.alice.orders", b"", true)
        .await
        .unwrap();
    api_publish(gw.addr, "user.alice.orders", json!({"order": 42})).await;
    let ev = next_event(&mut alice).await;
    assert_eq!(ev.flags, FLAG_ENC, "sensitive channel events are encrypted");
    assert_eq!(ev.body, br#"{"order":42}"#);
    // Clients may not publish to an api-only channel.
    let e = alice
        .call(MessageType::Publish, "user.alice.orders", b"x", true)
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some("forbidden"));
}

#[tokio::test]
async fn clients_publish_where_allowed_and_unsubscribe_stops_events() {
    let gw = TestGateway::start(&channels_toml()).await;
    let mut alice = connect(&gw, ALICE, ALICE_PASSWORD).await;
    let mut bob = connect(&gw, BOB, BOB_PASSWORD).await;
    bob.call(MessageType::Subscribe, "chat.room1", b"", false)
        .await
        .unwrap();
    alice
        .call(MessageType::Publish, "chat.room1", b"hello bob", false)
        .await
        .unwrap();
    let ev = next_event(&mut bob).await;
    assert_eq!(
        (ev.name.as_str(), ev.body.as_slice()),
        ("chat.room1", &b"hello bob"[..])
    );
    let e = alice
        .call(MessageType::Publish, "news", b"x", false)
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some("forbidden"), "news is publish = api");

    bob.call(MessageType::Unsubscribe, "chat.room1", b"", false)
        .await
        .unwrap();
    // Unsubscribing from a channel one is not on succeeds.
    bob.call(MessageType::Unsubscribe, "chat.other", b"", false)
        .await
        .unwrap();
    alice
        .call(MessageType::Publish, "chat.room1", b"gone", false)
        .await
        .unwrap();
    // Bob gets no event: his next frame is the answer to a new request.
    assert_eq!(
        bob.request("sys.echo", b"ping", false).await.unwrap(),
        b"ping"
    );
    assert!(bob.take_events().is_empty());
}

#[tokio::test]
async fn the_publish_api_needs_a_valid_key_and_a_configured_channel() {
    let gw = TestGateway::start(&channels_toml()).await;
    let body = json!({"channel": "news", "data": 1});
    assert_eq!(
        api_call(gw.addr, "/api/publish", None, &body).await.status,
        401
    );
    let wrong = api_call(
        gw.addr,
        "/api/publish",
        Some("wrong-key-0123456789abcdef"),
        &body,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.json["message"].as_str().unwrap().contains("Bearer"));
    let unknown = api_publish(gw.addr, "unconfigured", json!(1)).await;
    assert_eq!(unknown.status, 404);
    let mut http = RawHttp::connect(gw.addr, None).await;
    let bad = http
        .request_with(
            "POST",
            "/api/publish",
            Some(&format!("Bearer {API_KEY}")),
            b"not json",
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_without_slowing_others() {
    let toml = format!("{}\n[limits]\nsend_queue = 8\n", channels_toml());
    let gw = TestGateway::start(&toml).await;
    let mut slow = connect(&gw, ALICE, ALICE_PASSWORD).await;
    let mut fast = connect(&gw, BOB, BOB_PASSWORD).await;
    slow.call(MessageType::Subscribe, "news", b"", false)
        .await
        .unwrap();
    fast.call(MessageType::Subscribe, "news", b"", false)
        .await
        .unwrap();
    // The slow client never reads; its socket buffers fill, then its queue.
    let big = "x".repeat(200_000);
    let mut fast_got = 0;
    for i in 0..60 {
        let reply = api_publish(gw.addr, "news", json!({"i": i, "pad": big})).await;
        assert_eq!(reply.status, 200);
        let ev = next_event(&mut fast).await;
        assert!(ev.body.starts_with(format!("{{\"i\":{i},").as_bytes()));
        fast_got += 1;
    }
    assert_eq!(
        fast_got, 60,
        "the fast consumer received everything, in order"
    );
    assert_eq!(slow.raw().expect_close().await.unwrap(), Some(4429));
}
