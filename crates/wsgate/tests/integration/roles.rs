//! Several nodes sharing a data directory, users and state (in-process
//! here; `fleet.rs` runs real processes on Redis and PostgreSQL): node roles,
//! sessions accepted everywhere, logout everywhere, introspection.

use serde_json::json;
use wsgate_client::login;

use crate::channels::{API_KEY, api_call};
use crate::util::*;

#[tokio::test]
async fn a_login_on_one_node_is_accepted_by_another_and_logout_anywhere_ends_it() {
    let fleet = Fleet::new().await;
    let auth = TestGateway::start_in(&fleet, config("")).await;
    let other = TestGateway::start_in(&fleet, config("auth_module = false")).await;
    let session = login(&auth.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut on_auth = session.connect(&auth.client()).await.unwrap();
    let on_other = session.connect(&other.client()).await.unwrap();
    assert_eq!(on_auth.request("sys.echo", b"a", true).await.unwrap(), b"a");
    on_other.logout().await.unwrap();
    assert_eq!(on_auth.raw().expect_close().await.unwrap(), Some(4001));
    let err = session.connect(&auth.client()).await.unwrap_err();
    assert_eq!(err.close_code(), Some(4401));
}

#[tokio::test]
async fn a_node_without_the_auth_module_answers_404_or_redirects() {
    let fleet = Fleet::new().await;
    let plain = TestGateway::start_in(&fleet, config("auth_module = false")).await;
    let mut http = RawHttp::connect(plain.addr, None).await;
    let reply = http
        .put_session(&json!({"scram": "p=wsgate-v1,,n=alice,r=abc"}))
        .await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.json["message"]
            .as_str()
            .unwrap()
            .contains("auth_module")
    );
    // The key endpoint still works: every node serves the key set.
    assert_eq!(http.request("GET", "/auth/key", b"").await.status, 200);

    let redirecting = TestGateway::start_in(
        &fleet,
        config("auth_module = false\nauth_redirect = \"http://auth.example:8080/\""),
    )
    .await;
    let mut http = RawHttp::connect(redirecting.addr, None).await;
    let reply = http.put_session(&json!({"scram": "x"})).await;
    assert_eq!(reply.status, 307);
    assert_eq!(
        reply.headers["location"],
        "http://auth.example:8080/auth/session"
    );
}

#[tokio::test]
async fn introspection_answers_for_live_and_ended_sessions() {
    let toml = format!("api_keys = [\"{API_KEY}\"]");
    let gw = TestGateway::start(&toml).await;
    let session = login(&gw.client(), BOB, BOB_PASSWORD).await.unwrap();
    let reply = api_call(
        gw.addr,
        "/auth/introspect",
        Some(API_KEY),
        &json!({"session": session.id}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["active"], true);
    assert_eq!(reply.json["user"], BOB);
    assert_eq!(reply.json["ip"], "127.0.0.1");
    assert!(reply.json["expires_in"].as_u64().unwrap() > 0);
    let unknown = api_call(
        gw.addr,
        "/auth/introspect",
        Some(API_KEY),
        &json!({"session": "nope"}),
    )
    .await;
    assert_eq!(unknown.json, json!({"active": false}));
    session
        .connect(&gw.client())
        .await
        .unwrap()
        .logout()
        .await
        .unwrap();
    let ended = api_call(
        gw.addr,
        "/auth/introspect",
        Some(API_KEY),
        &json!({"session": session.id}),
    )
    .await;
    assert_eq!(ended.json, json!({"active": false}));
    let no_key = api_call(
        gw.addr,
        "/auth/introspect",
        None,
        &json!({"session": session.id}),
    )
    .await;
    assert_eq!(no_key.status, 401);
}

#[tokio::test]
async fn an_event_published_on_one_node_reaches_subscribers_on_another() {
    let fleet = Fleet::new().await;
    let toml = crate::channels::channels_toml();
    let a = TestGateway::start_in(&fleet, config(&toml)).await;
    let b = TestGateway::start_in(&fleet, config(&toml)).await;
    let session = login(&a.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut conn = session.connect(&a.client()).await.unwrap();
    conn.call(
        wsgate_proto::envelope::MessageType::Subscribe,
        "user.alice.inbox",
        b"",
        true,
    )
    .await
    .unwrap();
    let reply =
        crate::channels::api_publish(b.addr, "user.alice.inbox", json!({"from": "b"})).await;
    assert_eq!(reply.status, 200);
    let ev = conn.recv().await.unwrap();
    assert_eq!(
        (ev.name.as_str(), ev.body.as_slice()),
        ("user.alice.inbox", &br#"{"from":"b"}"#[..])
    );
}
