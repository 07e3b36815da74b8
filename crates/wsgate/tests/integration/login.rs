//! `PUT /auth/session` and `GET /auth/key` (protocol.md §3–4), every login
//! message sealed (§4.1).

use serde_json::json;
use wsgate_client::{Error, login};
use wsgate_proto::scram::ScramError;
use wsgate_proto::scram::client::ClientError;
use wsgate_proto::{b64, login_seal};

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
    let (known, _) = first_request(&mut http, ALICE, "x").await;
    let known_first = known.server_first.clone();
    let outer_keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let mut replies = Vec::new();
    for _ in 0..2 {
        let start =
            wsgate_proto::scram::client::ClientFirst::new("nobody", "x", &[7u8; 18]).unwrap();
        let (reply, begun) = http.put_first(&start.message()).await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.headers["www-authenticate"], "wsgate-v1");
        // The same outer shape as for a known user. (The box's length
        // follows the iteration count's digits: alice has 4096 here, the
        // unknown user the default; the timing test in attacks.rs compares
        // lengths at equal counts.)
        assert_eq!(outer_keys(&reply.json), ["ct", "sid", "status"]);
        assert_eq!(outer_keys(&reply.json), outer_keys(&known.outer));
        replies.push(begun.unwrap().server_first);
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
    let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let cf = client_final(&begun, start, &gw.fingerprint);
    let ok = http.put_second(&begun, &cf).await;
    assert_eq!(ok.reply.status, 200, "{:?}", ok.reply.json);
    assert_eq!(ok.reply.json["status"], "authenticated");
    assert_eq!(ok.inner["user"], ALICE);
    assert!(ok.inner["scram"].as_str().unwrap().starts_with("v="));
    // The same bytes again: the exchange is used, so the answer is in clear.
    let ct = ok.reply.json["ct"].clone();
    let replay = http.put_second(&begun, &cf).await;
    assert_eq!(scram_error(&replay.reply), "e=other-error");
    assert_ne!(replay.reply.json["ct"], ct);
}

#[tokio::test]
async fn channel_binding_with_a_wrong_ip_is_refused() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let (_, cf) = start
        .handle_server_first(&begun.server_first, "10.9.9.9", &gw.fingerprint, None)
        .unwrap();
    let reply = http.put_second(&begun, &cf).await;
    assert_eq!(sealed_error(&reply), "e=channel-bindings-dont-match");
}

#[tokio::test]
async fn channel_binding_with_a_wrong_key_fingerprint_is_refused() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let other_fp = wsgate_proto::keys::fingerprint_of(&[9; 32]);
    let cf = client_final(&begun, start, &other_fp);
    let reply = http.put_second(&begun, &cf).await;
    assert_eq!(sealed_error(&reply), "e=channel-bindings-dont-match");
}

#[tokio::test]
async fn a_second_request_from_another_ip_is_refused() {
    let gw = TestGateway::start("").await;
    let mut first = RawHttp::connect(gw.addr, None).await;
    let (begun, start) = first_request(&mut first, ALICE, ALICE_PASSWORD).await;
    let cf = client_final(&begun, start, &gw.fingerprint);
    let mut other = RawHttp::connect(gw.addr, Some(SECOND_CLIENT_IP)).await;
    let reply = other.put_second(&begun, &cf).await;
    assert_eq!(sealed_error(&reply), "e=channel-bindings-dont-match");
}

#[tokio::test]
async fn an_expired_exchange_is_refused() {
    let gw = TestGateway::start("[login]\nexchange_ttl_secs = 1").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let cf = client_final(&begun, start, &gw.fingerprint);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let reply = http.put_second(&begun, &cf).await;
    assert_eq!(scram_error(&reply.reply), "e=other-error");
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
    // Malformed client-firsts, sealed: refused in clear (no exchange).
    let cases = [
        ("n,,n=alice,r=abc", "e=server-does-support-channel-binding"),
        (
            "p=tls-exporter,,n=alice,r=abc",
            "e=unsupported-channel-binding-type",
        ),
        (
            "p=wsgate-v1,,m=ext,n=alice,r=abc",
            "e=extensions-not-supported",
        ),
        ("p=wsgate-v1,,n=al=ce,r=abc", "e=invalid-username-encoding"),
        ("p=wsgate-v1,a=admin,n=alice,r=abc", "e=other-error"),
        ("garbage", "e=invalid-encoding"),
    ];
    for (client_first, want) in cases {
        let (reply, begun) = http.put_first(client_first).await;
        assert!(begun.is_none());
        assert_eq!(reply.headers["www-authenticate"], "wsgate-v1");
        assert_eq!(scram_error(&reply), want, "{client_first}");
    }
    // Sealed plaintexts that are not an inner first request.
    for plaintext in [&b"not json"[..], b"{}", br#"{"scram":7}"#, b"[]"] {
        let (body, _) = http.seal_first_plaintext(plaintext).await;
        let reply = http.put_session(&body).await;
        assert_eq!(
            scram_error(&reply),
            "e=invalid-encoding",
            "{}",
            String::from_utf8_lossy(plaintext)
        );
    }
    // A second request naming no live exchange: in clear.
    for body in [
        json!({"sid": "unknown", "ct": "AAAA"}),
        json!({"sid": 7, "ct": "AAAA"}),
    ] {
        let reply = http.put_session(&body).await;
        assert_eq!(scram_error(&reply), "e=other-error", "{body}");
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

// ---- The sealed exchange (protocol.md §4.1) ----

/// Exchanges the gateway holds right now.
fn exchanges_held(fleet: &Fleet) -> usize {
    fleet.state.entry_counts().0
}

#[tokio::test]
async fn the_clear_v1_first_request_is_refused_and_makes_no_exchange() {
    let fleet = Fleet::new().await;
    let gw = TestGateway::start_in(&fleet, config("")).await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let start = wsgate_proto::scram::client::ClientFirst::new(ALICE, "x", &[7u8; 18]).unwrap();
    let reply = http.put_session(&json!({"scram": start.message()})).await;
    assert_eq!(reply.status, 400, "{:?}", reply.json);
    assert_eq!(
        reply.json,
        json!({"status": "failed", "error": "sealed_login_required"})
    );
    assert_eq!(exchanges_held(&fleet), 0);
    // The sealed form on the same connection works.
    let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let cf = client_final(&begun, start, &gw.fingerprint);
    assert_eq!(http.put_second(&begun, &cf).await.reply.status, 200);
}

#[tokio::test]
async fn a_request_1_that_does_not_open_gets_bad_seal_and_makes_no_exchange() {
    let fleet = Fleet::new().await;
    let gw = TestGateway::start_in(&fleet, config("")).await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let start = wsgate_proto::scram::client::ClientFirst::new(ALICE, "x", &[7u8; 18]).unwrap();
    let inner = login_seal::padded_first_request(&start.message());
    let (good, _) = http.seal_first_plaintext(inner.as_bytes()).await;

    let flip_bit = |field: &str, at: usize| {
        let mut raw = b64::decode_b64u(good[field].as_str().unwrap()).unwrap();
        raw[at] ^= 0x01;
        let mut body = good.clone();
        body[field] = json!(b64::encode_b64u(&raw));
        body
    };
    let unknown_kid = {
        let mut body = good.clone();
        body["kid"] = json!(wsgate_proto::keys::kid_of(&[9; 32]));
        body
    };
    let mut cases = vec![
        ("one flipped ciphertext bit", flip_bit("ct", 5)),
        ("the last tag bit", {
            let len = b64::decode_b64u(good["ct"].as_str().unwrap())
                .unwrap()
                .len();
            flip_bit("ct", len - 1)
        }),
        ("another enc", flip_bit("enc", 0)),
        ("an unknown kid", unknown_kid),
    ];
    for missing in ["kid", "enc", "ct"] {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(missing);
        cases.push(("a missing member", body));
    }
    cases.push((
        "a number for ct",
        json!({"kid": good["kid"], "enc": good["enc"], "ct": 5}),
    ));
    cases.push(("enc of 31 bytes", {
        let mut body = good.clone();
        body["enc"] = json!(b64::encode_b64u(&[1; 31]));
        body
    }));
    cases.push(("an empty object", json!({})));
    for (what, body) in cases {
        let reply = http.put_session(&body).await;
        assert_eq!(reply.status, 400, "{what}: {:?}", reply.json);
        assert_eq!(
            reply.json,
            json!({"status": "failed", "error": "bad_seal"}),
            "{what}"
        );
        assert_eq!(exchanges_held(&fleet), 0, "{what}");
    }
    // The untouched request still opens.
    let reply = http.put_session(&good).await;
    assert_eq!(reply.json["status"], "unauthenticated");
    assert_eq!(exchanges_held(&fleet), 1);
}

#[tokio::test]
async fn a_replayed_request_1_makes_a_new_exchange_and_the_login_completes_once() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let start =
        wsgate_proto::scram::client::ClientFirst::new(ALICE, ALICE_PASSWORD, &[7u8; 18]).unwrap();
    let inner = login_seal::padded_first_request(&start.message());
    let (body, login_key) = http.seal_first_plaintext(inner.as_bytes()).await;
    let first = http.put_session(&body).await;
    // An intermediary replays the recorded request 1.
    let replayed = http.put_session(&body).await;
    assert_eq!(replayed.json["status"], "unauthenticated");
    assert_ne!(replayed.json["sid"], first.json["sid"], "a new sid");
    assert_ne!(replayed.json["ct"], first.json["ct"], "a different box");
    // Without the client's HPKE secret the replay's box does not open: the
    // exchange key depends on the new sid and on login_key, which the
    // intermediary does not have.
    let guessed_key = login_seal::LoginKey::from_bytes([0; 32]);
    let raw_sid = b64::decode_b64u_array(replayed.json["sid"].as_str().unwrap()).unwrap();
    assert!(
        guessed_key
            .exchange_key(&raw_sid)
            .open(
                login_seal::BoxNumber::Reply1,
                replayed.json["ct"].as_str().unwrap()
            )
            .is_err()
    );
    // The client completes its own exchange, once.
    let begun = open_reply_1(&first, &login_key).unwrap();
    let cf = client_final(&begun, start, &gw.fingerprint);
    let ok = http.put_second(&begun, &cf).await;
    assert_eq!(ok.reply.status, 200, "{:?}", ok.reply.json);
    let again = http.put_second(&begun, &cf).await;
    assert_eq!(scram_error(&again.reply), "e=other-error");
}

#[tokio::test]
async fn a_request_2_that_does_not_open_gets_a_boxed_invalid_encoding_and_uses_the_exchange() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    type BodyOf = Box<dyn Fn(&Begun, &str) -> serde_json::Value>;
    let cases: Vec<(&str, BodyOf)> = vec![
        (
            "a flipped bit",
            Box::new(|b: &Begun, cf: &str| {
                let ct = b.key.seal(
                    login_seal::BoxNumber::Request2,
                    &login_seal::request2_inner(cf),
                );
                let mut raw = b64::decode_b64u(&ct).unwrap();
                raw[2] ^= 0x10;
                json!({"sid": b.sid, "ct": b64::encode_b64u(&raw)})
            }),
        ),
        (
            "sealed as box 1",
            Box::new(|b: &Begun, cf: &str| {
                let ct = b.key.seal(
                    login_seal::BoxNumber::Reply1,
                    &login_seal::request2_inner(cf),
                );
                json!({"sid": b.sid, "ct": ct})
            }),
        ),
        (
            "the clear v1 form",
            Box::new(|b: &Begun, cf: &str| json!({"sid": b.sid, "scram": cf})),
        ),
        (
            "an inner body without scram",
            Box::new(|b: &Begun, _: &str| {
                let ct = b.key.seal(login_seal::BoxNumber::Request2, br#"{"x":1}"#);
                json!({"sid": b.sid, "ct": ct})
            }),
        ),
    ];
    for (what, body_of) in cases {
        let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
        let cf = client_final(&begun, start, &gw.fingerprint);
        let reply = http.put_second_raw(&begun, &body_of(&begun, &cf)).await;
        assert_eq!(sealed_error(&reply), "e=invalid-encoding", "{what}");
        // Consumed: the right request 2 now finds no exchange.
        let retry = http.put_second(&begun, &cf).await;
        assert_eq!(scram_error(&retry.reply), "e=other-error", "{what}");
    }
}

#[tokio::test]
async fn the_binding_must_name_the_key_request_1_was_sealed_to() {
    let fleet = Fleet::new().await;
    let dir = wsgate_server::keys::DataDir::new(fleet.data.path());
    let old = dir.load().unwrap().0.current().clone();
    // `wsgate keygen`: a new current key, the old one still accepted.
    let new = dir.generate_key(&mut rand::rng()).unwrap();
    let gw = TestGateway::start_in(&fleet, config("")).await;
    assert_eq!(gw.fingerprint, new.fingerprint());
    let mut http = RawHttp::connect(gw.addr, None).await;

    let login_sealed_to = |pk: [u8; 32]| {
        let start =
            wsgate_proto::scram::client::ClientFirst::new(ALICE, ALICE_PASSWORD, &[7u8; 18])
                .unwrap();
        let inner = login_seal::padded_first_request(&start.message());
        let (sealed, login_key) =
            login_seal::seal_first_plaintext(&mut rand::rng(), &pk, inner.as_bytes()).unwrap();
        (start, serde_json::to_value(&sealed).unwrap(), login_key)
    };
    // Sealed to the old key, bound to the new one: refused.
    let (start, body, login_key) = login_sealed_to(*old.public_bytes());
    let begun = open_reply_1(&http.put_session(&body).await, &login_key).unwrap();
    let cf = client_final(&begun, start, new.fingerprint());
    let reply = http.put_second(&begun, &cf).await;
    assert_eq!(sealed_error(&reply), "e=channel-bindings-dont-match");
    // Sealed to the new key, bound to the old one (an accepted key): refused.
    let (start, body, login_key) = login_sealed_to(*new.public_bytes());
    let begun = open_reply_1(&http.put_session(&body).await, &login_key).unwrap();
    let cf = client_final(&begun, start, old.fingerprint());
    let reply = http.put_second(&begun, &cf).await;
    assert_eq!(sealed_error(&reply), "e=channel-bindings-dont-match");
    // Sealed to and bound to the old key: it is still accepted.
    let (start, body, login_key) = login_sealed_to(*old.public_bytes());
    let begun = open_reply_1(&http.put_session(&body).await, &login_key).unwrap();
    let cf = client_final(&begun, start, old.fingerprint());
    let ok = http.put_second(&begun, &cf).await;
    assert_eq!(ok.reply.status, 200, "{:?}", ok.reply.json);
}

#[tokio::test]
async fn nothing_in_a_sealed_login_is_readable_on_the_wire() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let reply_1 = begun.outer.to_string();
    let cf = client_final(&begun, start, &gw.fingerprint);
    let ok = http.put_second(&begun, &cf).await;
    let reply_2 = ok.reply.json.to_string();
    for (what, text) in [("reply 1", &reply_1), ("reply 2", &reply_2)] {
        for needle in [ALICE, "r=", "s=", "i=4096", "v=", "127.0.0.1"] {
            assert!(!text.contains(needle), "{what} shows {needle:?}: {text}");
        }
    }
    assert_eq!(ok.inner["user"], ALICE);
    assert_eq!(ok.inner["session"].as_str().unwrap().len(), 22);
    assert!(ok.inner["expires_in"].as_u64().unwrap() >= 1);
}
