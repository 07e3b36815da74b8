//! `PUT /auth/session` and `GET /auth/key` (DESIGN §3–4).

use serde_json::json;
use wsgate_client::{Error, login};
use wsgate_proto::b64;
use wsgate_proto::scram::ScramError;
use wsgate_proto::scram::client::ClientError;

use crate::util::*;

#[tokio::test]
async fn login_succeeds_and_binds_user_ip_and_key() {
    let gw = TestGateway::start("").await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    assert_eq!(session.user, ALICE);
    assert_eq!(session.ip, "127.0.0.1");
    assert_eq!(session.expires_in, 12 * 3600);
    assert_eq!(session.server_key.fp, gw.fingerprint);
    assert_eq!(session.id.len(), 22);
}

#[tokio::test]
async fn key_endpoint_serves_the_current_key() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let reply = http.request("GET", "/auth/key", b"").await;
    assert_eq!(reply.status, 200);
    let key = &reply.json["keys"][0];
    assert_eq!(
        (
            key["kem_id"].as_u64(),
            key["kdf_id"].as_u64(),
            key["aead_id"].as_u64()
        ),
        (Some(32), Some(1), Some(2))
    );
    let pk: [u8; 32] = b64::decode_b64u_array(key["pk"].as_str().unwrap()).unwrap();
    assert_eq!(wsgate_proto::keys::fingerprint_of(&pk), gw.fingerprint);
    assert_eq!(
        key["kid"].as_str().unwrap(),
        wsgate_proto::keys::kid_of(&pk)
    );
}

#[tokio::test]
async fn wrong_password_is_refused_with_invalid_proof() {
    let gw = TestGateway::start("").await;
    let err = login(&gw.client(), ALICE, "not the password")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Login(ClientError::Server(ScramError::InvalidProof))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_user_gets_a_reply_of_the_same_shape() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (_, known_first, _, _) = first_request(&mut http, ALICE, "x").await;
    let mut replies = Vec::new();
    for _ in 0..2 {
        let start =
            wsgate_proto::scram::client::ClientFirst::new("nobody", "x", &[7u8; 18]).unwrap();
        let reply = http.put_session(&json!({"scram": start.message()})).await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.headers["www-authenticate"], "wsgate-v1");
        let keys: Vec<&String> = reply.json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["ip", "scram", "sid", "status"]);
        replies.push(reply.json["scram"].as_str().unwrap().to_owned());
    }
    let salt_of = |sf: &str| sf.split(',').nth(1).unwrap().to_owned();
    assert_eq!(
        salt_of(&replies[0]),
        salt_of(&replies[1]),
        "fake salt is deterministic"
    );
    let salt = b64::decode_b64(salt_of(&replies[0]).strip_prefix("s=").unwrap()).unwrap();
    assert_eq!(salt.len(), 16);
    assert_eq!(
        known_first.split(',').count(),
        replies[0].split(',').count()
    );
    assert!(
        replies[0].ends_with(",i=600000"),
        "unknown users get the default iterations: {}",
        replies[0]
    );

    let err = login(&gw.client(), "nobody", "x").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Login(ClientError::Server(ScramError::InvalidProof))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_replayed_second_request_is_refused() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (sid, server_first, ip, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let (_, client_final) = start
        .handle_server_first(&server_first, &ip, &gw.fingerprint, None)
        .unwrap();
    let second = json!({"sid": sid, "scram": client_final});
    let ok = http.put_session(&second).await;
    assert_eq!(ok.status, 200, "{:?}", ok.json);
    assert_eq!(ok.json["status"], "authenticated");
    let replay = http.put_session(&second).await;
    assert_eq!(scram_error(&replay), "e=other-error");
}

#[tokio::test]
async fn channel_binding_with_a_wrong_ip_is_refused() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (sid, server_first, _, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let (_, client_final) = start
        .handle_server_first(&server_first, "10.9.9.9", &gw.fingerprint, None)
        .unwrap();
    let reply = http
        .put_session(&json!({"sid": sid, "scram": client_final}))
        .await;
    assert_eq!(scram_error(&reply), "e=channel-bindings-dont-match");
}

#[tokio::test]
async fn channel_binding_with_a_wrong_key_fingerprint_is_refused() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (sid, server_first, ip, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let other_fp = wsgate_proto::keys::fingerprint_of(&[9; 32]);
    let (_, client_final) = start
        .handle_server_first(&server_first, &ip, &other_fp, None)
        .unwrap();
    let reply = http
        .put_session(&json!({"sid": sid, "scram": client_final}))
        .await;
    assert_eq!(scram_error(&reply), "e=channel-bindings-dont-match");
}

#[tokio::test]
async fn a_second_request_from_another_ip_is_refused() {
    let gw = TestGateway::start("").await;
    let mut first = RawHttp::connect(gw.addr, None).await;
    let (sid, server_first, ip, start) = first_request(&mut first, ALICE, ALICE_PASSWORD).await;
    let (_, client_final) = start
        .handle_server_first(&server_first, &ip, &gw.fingerprint, None)
        .unwrap();
    let mut other = RawHttp::connect(gw.addr, Some(SECOND_CLIENT_IP)).await;
    let reply = other
        .put_session(&json!({"sid": sid, "scram": client_final}))
        .await;
    assert_eq!(scram_error(&reply), "e=channel-bindings-dont-match");
}

#[tokio::test]
async fn an_expired_exchange_is_refused() {
    let gw = TestGateway::start("[login]\nexchange_ttl_secs = 1").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (sid, server_first, ip, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let (_, client_final) = start
        .handle_server_first(&server_first, &ip, &gw.fingerprint, None)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let reply = http
        .put_session(&json!({"sid": sid, "scram": client_final}))
        .await;
    assert_eq!(scram_error(&reply), "e=other-error");
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let reply = http
        .request("PUT", "/auth/session", b"this is not json")
        .await;
    assert_eq!(reply.status, 400);
    assert!(reply.json["message"].as_str().unwrap().contains("JSON"));
    let cases = [
        (json!({}), "e=invalid-encoding"),
        (
            json!({"scram": "n,,n=alice,r=abc"}),
            "e=server-does-support-channel-binding",
        ),
        (
            json!({"scram": "p=tls-exporter,,n=alice,r=abc"}),
            "e=unsupported-channel-binding-type",
        ),
        (
            json!({"scram": "p=wsgate-v1,,m=ext,n=alice,r=abc"}),
            "e=extensions-not-supported",
        ),
        (
            json!({"scram": "p=wsgate-v1,,n=al=ce,r=abc"}),
            "e=invalid-username-encoding",
        ),
        (
            json!({"scram": "p=wsgate-v1,a=admin,n=alice,r=abc"}),
            "e=other-error",
        ),
        (
            json!({"sid": "unknown", "scram": "c=biws,r=x,p=AAAA"}),
            "e=other-error",
        ),
    ];
    for (body, want) in cases {
        let reply = http.put_session(&body).await;
        assert_eq!(reply.headers["www-authenticate"], "wsgate-v1");
        assert_eq!(scram_error(&reply), want, "{body}");
    }
    // Nothing was lost: a correct login on the same connection still works.
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    assert_eq!(session.user, ALICE);
}

#[tokio::test]
async fn repeated_failures_for_one_user_are_rate_limited() {
    let gw = TestGateway::start("[login]\nmax_failures_per_user = 3").await;
    for _ in 0..3 {
        let err = login(&gw.client(), ALICE, "wrong").await.unwrap_err();
        assert!(matches!(err, Error::Login(_)), "{err:?}");
    }
    // Even the right password is refused now, with a Retry-After.
    let err = login(&gw.client(), ALICE, ALICE_PASSWORD)
        .await
        .unwrap_err();
    match err {
        Error::RateLimited { retry_after } => assert!((1..=300).contains(&retry_after)),
        other => panic!("expected 429, got {other:?}"),
    }
    // Another user is unaffected.
    login(&gw.client(), BOB, BOB_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn repeated_failures_from_one_ip_are_rate_limited_and_unknown_users_count_too() {
    let gw = TestGateway::start("[login]\nmax_failures_per_ip = 4").await;
    for user in ["u1", "u2", "u3", "u4"] {
        let err = login(&gw.client(), user, "guess").await.unwrap_err();
        assert!(matches!(err, Error::Login(_)), "{err:?}");
    }
    let err = login(&gw.client(), BOB, BOB_PASSWORD).await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    // A different source address is not limited.
    let from_other_ip = gw.client().local_addr(SECOND_CLIENT_IP);
    let session = login(&from_other_ip, BOB, BOB_PASSWORD).await.unwrap();
    assert_eq!(session.ip, "127.0.0.2");
}

#[tokio::test]
async fn a_wrong_pin_stops_the_login_before_any_password_work() {
    let gw = TestGateway::start("").await;
    let pinned = gw
        .client()
        .pin(wsgate_proto::keys::fingerprint_of(&[1; 32]));
    let err = login(&pinned, ALICE, ALICE_PASSWORD).await.unwrap_err();
    assert!(matches!(err, Error::ServerKeyMismatch { .. }), "{err:?}");
    let right = gw.client().pin(gw.fingerprint.clone());
    login(&right, ALICE, ALICE_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn an_oversized_body_is_refused_and_nothing_is_lost() {
    let gw = TestGateway::start("[limits]\nhttp_body_limit = 2048").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let big = format!("{{\"scram\":\"{}\"}}", "a".repeat(4096));
    let reply = http.request("PUT", "/auth/session", big.as_bytes()).await;
    assert_eq!(reply.status, 413);
    login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
}
