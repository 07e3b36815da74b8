//! The attack suite (issue 6): what a hostile client or an active
//! intermediary on the plain-`ws://` path can throw at a gateway, over real
//! sockets on 127.0.0.0/8, beyond the foundation tests in `login.rs` and
//! `websocket.rs`.
//!
//! The heavy tests (timing, thousands of sockets, floods) take [`HEAVY`] so
//! they do not measure each other; the whole file runs in well under a
//! minute on two cores.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use wsgate_client::{ClientConfig, Error, RawSocket, login};
use wsgate_proto::envelope::{self, FLAG_ENC, MessageType};
use wsgate_proto::key_exchange;
use wsgate_proto::scram::client::ClientFirst;
use wsgate_proto::{b64, login_seal};

use crate::util::*;

/// Serializes the tests that load the machine or measure time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

// ---------------------------------------------------------------------------
// Login: brute force, enumeration, exchanges
// ---------------------------------------------------------------------------

/// One guess with a wrong password, done by hand so the attacker pays no
/// PBKDF2 (the proof is made from a made-up SaltedPassword). Returns the
/// status of the first request and, if there was one, of the second.
async fn guess(gw: &TestGateway, from: Option<IpAddr>, user: &str) -> (u16, Option<u16>) {
    let mut http = RawHttp::connect(gw.addr, from).await;
    crate::limits::guess_with(&mut http, gw, user).await
}

fn assert_rate_limited(status: (u16, Option<u16>)) {
    assert!(
        status.0 == 429 || status.1 == Some(429),
        "expected 429, got {status:?}"
    );
}

#[tokio::test]
async fn brute_force_across_many_users_from_one_ip_is_cut_off_at_the_ip_limit() {
    let gw =
        TestGateway::start("[login]\nmax_failures_per_ip = 20\nmax_failures_per_user = 1000").await;
    let attacker = Some(ip(3));
    // Known and unknown names alike: each guess is one failure for the IP.
    for i in 0..20 {
        let user = match i % 4 {
            0 => ALICE.to_owned(),
            1 => BOB.to_owned(),
            _ => format!("victim{i}"),
        };
        assert_eq!(
            guess(&gw, attacker, &user).await,
            (401, Some(401)),
            "guess {i}"
        );
    }
    for user in [ALICE, "victim99", "anyone"] {
        let mut http = RawHttp::connect(gw.addr, attacker).await;
        let start = ClientFirst::new(user, "x", &[9u8; 18]).unwrap();
        let (reply, _) = http.put_first(&start.message()).await;
        assert_eq!(reply.status, 429, "{:?}", reply.json);
        assert_eq!(reply.json, json!({"status": "rate_limited"}));
        let retry: u64 = reply.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=300).contains(&retry), "Retry-After {retry}");
    }
    // Even the right password from that IP is refused for the window...
    let from_attacker = gw.client().local_addr(ip(3));
    let err = login(&from_attacker, ALICE, ALICE_PASSWORD)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    // ...while alice from her own address is untouched (5 failures < 1000).
    login(&gw.client().local_addr(ip(4)), ALICE, ALICE_PASSWORD)
        .await
        .unwrap();
}

#[tokio::test]
async fn one_user_guessed_from_many_ips_is_cut_off_at_the_user_limit() {
    let gw =
        TestGateway::start("[login]\nmax_failures_per_user = 10\nmax_failures_per_ip = 1000").await;
    // 39 source addresses, one guess each: the per-IP limit never triggers.
    let mut outcomes = Vec::new();
    for last in 2..=40 {
        outcomes.push(guess(&gw, Some(ip(last)), ALICE).await);
    }
    assert!(
        outcomes[..10].iter().all(|o| *o == (401, Some(401))),
        "{outcomes:?}"
    );
    for o in &outcomes[10..] {
        assert_rate_limited(*o);
    }
    // The account is locked for the window, whatever the address and even
    // with the right password (the price of stopping distributed guessing).
    let err = login(&gw.client().local_addr(ip(41)), ALICE, ALICE_PASSWORD)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    // Other users are not affected.
    login(&gw.client().local_addr(ip(41)), BOB, BOB_PASSWORD)
        .await
        .unwrap();
    // An unknown name locks in exactly the same way, so the 429 tells an
    // attacker nothing about whether the name exists.
    let mut unknown = Vec::new();
    for last in 2..=15 {
        unknown.push(guess(&gw, Some(ip(last)), "nobody-here").await);
    }
    assert!(
        unknown[..10].iter().all(|o| *o == (401, Some(401))),
        "{unknown:?}"
    );
    for o in &unknown[10..] {
        assert_rate_limited(*o);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Mean of the middle 80 %.
fn trimmed_mean(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let cut = s.len() / 10;
    let mid = &s[cut..s.len() - cut];
    mid.iter().sum::<f64>() / mid.len() as f64
}

/// The Mann-Whitney U statistic of `a` against `b` as a z-score (normal
/// approximation; ties get their average rank).
fn mann_whitney_z(a: &[f64], b: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|x| (*x, true))
        .chain(b.iter().map(|x| (*x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut rank_sum_a = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += rank * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    (u - n1 * n2 / 2.0) / (n1 * n2 * (n1 + n2 + 1.0) / 12.0).sqrt()
}

/// Latencies in µs: (first request known, unknown, whole failed login known, unknown).
async fn enumeration_samples(gw: &TestGateway, rounds: usize) -> [Vec<f64>; 4] {
    let mut http = RawHttp::connect(gw.addr, None).await;
    let mut out: [Vec<f64>; 4] = Default::default();
    let mut flip = 0x9e37_79b9_u32;
    for round in 0..rounds + 20 {
        // Interleave in a pseudo-random order so drift hits both alike.
        flip ^= flip << 13;
        flip ^= flip >> 17;
        flip ^= flip << 5;
        let known_first = flip & 1 == 0;
        for known in [known_first, !known_first] {
            let user = if known {
                [ALICE, BOB][round % 2].to_owned()
            } else {
                format!("ghost{round}")
            };
            let start = ClientFirst::new(&user, "wrong", &[5u8; 18]).unwrap();
            // Sealing and opening happen outside the timed requests.
            let inner = login_seal::padded_first_request(&start.message());
            let (body, login_key) = http.seal_first_plaintext(inner.as_bytes()).await;
            let t0 = Instant::now();
            let first = http.put_session(&body).await;
            let t1 = t0.elapsed();
            assert_eq!(first.status, 401);
            let begun = open_reply_1(&first, &login_key).unwrap();
            let (_, client_final) = start
                .handle_server_first(
                    &begun.server_first,
                    &begun.ip,
                    &gw.fingerprint,
                    Some(&[0u8; 32]),
                )
                .unwrap();
            let ct = begun.key.seal(
                login_seal::BoxNumber::Request2,
                &login_seal::request2_inner(&client_final),
            );
            let body = json!({"sid": begun.sid, "ct": ct});
            let t2 = Instant::now();
            let second = http.put_session(&body).await;
            let t3 = t2.elapsed();
            let opened = begun
                .key
                .open(
                    login_seal::BoxNumber::Reply2,
                    second.json["ct"].as_str().unwrap(),
                )
                .unwrap();
            assert_eq!(&opened[..], br#"{"scram":"e=invalid-proof"}"#);
            if round >= 20 {
                let k = usize::from(!known);
                out[k].push(t1.as_secs_f64() * 1e6);
                out[2 + k].push((t1 + t3).as_secs_f64() * 1e6);
            }
        }
    }
    out
}

/// `Some(description)` when `known` and `unknown` differ both statistically
/// (|z| > 3.5) and by an amount that matters (medians and trimmed means
/// more than 25 % and 100 µs apart). A leak worth the name — a database
/// round trip or a key derivation on one path only — is far above that; the
/// noise of a shared two-core machine stays under it.
fn leaks(what: &str, known: &[f64], unknown: &[f64]) -> Option<String> {
    let (mk, mu) = (median(known), median(unknown));
    let (tk, tu) = (trimmed_mean(known), trimmed_mean(unknown));
    let z = mann_whitney_z(known, unknown);
    let report = format!(
        "{what}: known median {mk:.0} µs (trimmed mean {tk:.0}), unknown median {mu:.0} µs \
         (trimmed mean {tu:.0}), Mann-Whitney z = {z:.2}, n = {}+{}",
        known.len(),
        unknown.len()
    );
    eprintln!("{report}");
    let far = |a: f64, b: f64| (a - b).abs() > 100.0 && (a - b).abs() > 0.25 * a.min(b);
    (z.abs() > 3.5 && far(mk, mu) && far(tk, tu)).then_some(report)
}

#[tokio::test]
async fn known_and_unknown_users_are_indistinguishable_by_reply_and_timing() {
    let _heavy = HEAVY.lock().await;
    // Same iteration count for stored and fake users, or the reply itself
    // would tell them apart (see docs/threat-model.md).
    let gw = TestGateway::start(
        "[login]\niterations = 4096\nmax_failures_per_user = 1000000\nmax_failures_per_ip = 1000000",
    )
    .await;
    // Shape: same fields, same salt length, same iterations.
    let mut http = RawHttp::connect(gw.addr, None).await;
    let (known, _) = first_request(&mut http, ALICE, "x").await;
    let (unknown, _) = first_request(&mut http, "ghost", "x").await;
    assert_eq!(
        known.outer["ct"].as_str().unwrap().len(),
        unknown.outer["ct"].as_str().unwrap().len()
    );
    let (known, unknown) = (known.server_first, unknown.server_first);
    let shape = |sf: &str| -> (usize, String) {
        let parts: Vec<&str> = sf.split(',').collect();
        let salt = b64::decode_b64(parts[1].strip_prefix("s=").unwrap()).unwrap();
        (salt.len(), parts[2].to_owned())
    };
    assert_eq!(shape(&known), shape(&unknown));

    // Timing: 200 failed logins each, interleaved. A difference found once
    // is measured again before it counts, so a burst of noise does not fail
    // the test.
    let mut verdicts = Vec::new();
    for attempt in 0..2 {
        let [fk, fu, lk, lu] = enumeration_samples(&gw, 200).await;
        let found: Vec<String> = [
            leaks("first request", &fk, &fu),
            leaks("whole failed login", &lk, &lu),
        ]
        .into_iter()
        .flatten()
        .collect();
        if found.is_empty() {
            return;
        }
        eprintln!("attempt {attempt}: difference found, measuring again");
        verdicts = found;
    }
    panic!("known and unknown users are distinguishable by timing: {verdicts:?}");
}

#[tokio::test]
async fn a_flood_of_first_requests_from_one_ip_is_limited() {
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, Some(ip(5))).await;
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let start = ClientFirst::new(&format!("flood{i}"), "x", &[1u8; 18]).unwrap();
        let (reply, _) = http.put_first(&start.message()).await;
        *statuses.entry(reply.status).or_insert(0) += 1;
    }
    assert!(
        statuses.contains_key(&429),
        "1000 open exchanges from one IP, none refused: {statuses:?}"
    );
}

#[tokio::test]
async fn login_exchanges_expire_are_taken_once_and_bound_to_their_nonce() {
    let gw = TestGateway::start("[login]\nexchange_ttl_secs = 1").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let fp = gw.fingerprint.clone();

    // Within the TTL the correct proof works...
    let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let cf = client_final(&begun, start, &fp);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = http.put_second(&begun, &cf).await;
    assert_eq!(ok.reply.status, 200, "{:?}", ok.reply.json);

    // ...after it even the correct proof is refused.
    let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let cf = client_final(&begun, start, &fp);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = http.put_second(&begun, &cf).await;
    assert_eq!(scram_error(&late.reply), "e=other-error");

    // A failed second request consumes the exchange: the right proof after a
    // wrong one (an attacker racing the user, or a retried PUT) starts over.
    let (begun, start) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let cf = client_final(&begun, start, &fp);
    let mut forged = cf.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let bad = http.put_second(&begun, &forged).await;
    assert_eq!(sealed_error(&bad), "e=invalid-encoding");
    let retry = http.put_second(&begun, &cf).await;
    assert_eq!(scram_error(&retry.reply), "e=other-error");

    // A client-final made for one exchange does not fit another one's sid:
    // its box is under the other exchange's key.
    let (begun_a, _) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let (begun_b, start_b) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let cf_b = client_final(&begun_b, start_b, &fp);
    let ct_b = begun_b.key.seal(
        login_seal::BoxNumber::Request2,
        &login_seal::request2_inner(&cf_b),
    );
    let swapped = http
        .put_second_raw(&begun_a, &json!({"sid": begun_a.sid, "ct": ct_b}))
        .await;
    assert_eq!(sealed_error(&swapped), "e=invalid-encoding");
    // Under the right key but with the other exchange's nonce: refused too.
    let (begun_c, _) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let (begun_d, start_d) = first_request(&mut http, ALICE, ALICE_PASSWORD).await;
    let cf_d = client_final(&begun_d, start_d, &fp);
    let swapped = http.put_second(&begun_c, &cf_d).await;
    assert_eq!(sealed_error(&swapped), "e=other-error");

    // Garbage and foreign sids are refused the same way, in clear.
    for sid in ["", "AAAAAAAAAAAAAAAAAAAAAA", "../../etc", &"x".repeat(5000)] {
        let reply = http.put_session(&json!({"sid": sid, "ct": "AAAA"})).await;
        assert_eq!(scram_error(&reply), "e=other-error", "sid {sid:.20}");
    }
}

#[tokio::test]
async fn non_utf8_and_lone_surrogates_in_login_bodies_are_400() {
    let gw = TestGateway::start("[login]\nmax_failures_per_ip = 4").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    let bodies: [&[u8]; 4] = [
        b"{\"scram\":\"p=wsgate-v1,,n=\xff\xfe,r=abcdefghijklmnopqrstuvwx\"}",
        b"{\"scram\":\"p=wsgate-v1,,n=\\ud800,r=abcdefghijklmnopqrstuvwx\"}",
        b"{\"scram\":\"p=wsgate-v1,,n=\xc0\xaf,r=abcdefghijklmnopqrstuvwx\"}",
        b"\xef\xbb\xbf{\"scram\":\"x\"}",
    ];
    for body in bodies {
        let reply = http.request("PUT", "/auth/session", body).await;
        assert_eq!(reply.status, 400, "{:?}", String::from_utf8_lossy(body));
    }
    // A name that is valid UTF-8 but that no client would send (SASLprep
    // prohibits controls and bidi overrides) is just an unknown user: the
    // usual reply, no crash, no hint.
    let (reply, _) = http
        .put_first("p=wsgate-v1,,n=\u{202e}admin\u{0000}\u{0007},r=abcdefghijklmnopqrstuvwx")
        .await;
    assert_eq!(reply.status, 401, "{:?}", reply.json);
    assert_eq!(reply.json["status"], "unauthenticated");
    // Sealed plaintexts that are not UTF-8 JSON: a clear invalid-encoding.
    for plaintext in [
        &b"{\"scram\":\"p=wsgate-v1,,n=\xff\xfe,r=abcdefghijklmnopqrstuvwx\"}"[..],
        b"{\"scram\":\"p=wsgate-v1,,n=\\ud800,r=abcdefghijklmnopqrstuvwx\"}",
        b"\xef\xbb\xbf{\"scram\":\"x\"}",
    ] {
        let (body, _) = http.seal_first_plaintext(plaintext).await;
        let reply = http.put_session(&body).await;
        assert_eq!(scram_error(&reply), "e=invalid-encoding");
    }
    login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
}

// ---------------------------------------------------------------------------
// The WebSocket: frames an attacker sends
// ---------------------------------------------------------------------------

async fn connected(gw: &TestGateway) -> (wsgate_client::Session, wsgate_client::Connection) {
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let conn = session.connect(&gw.client()).await.unwrap();
    (session, conn)
}

#[tokio::test]
async fn reordered_dropped_and_duplicated_client_frames_close_with_4400() {
    let gw = TestGateway::start("").await;
    let req = MessageType::Request as u8;

    // Reordered: frame 1 before frame 0.
    let (_, mut conn) = connected(&gw).await;
    let f0 = conn.seal(req, 0, 1, "sys.echo", b"zero").unwrap();
    let f1 = conn.seal(req, FLAG_ENC, 2, "sys.echo", b"one").unwrap();
    conn.raw().send_binary(f1).await.unwrap();
    conn.raw().send_binary(f0).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));

    // Dropped in the middle of a working exchange.
    let (_, mut conn) = connected(&gw).await;
    assert_eq!(conn.request("sys.echo", b"a", false).await.unwrap(), b"a");
    let _lost = conn.seal(req, 0, 50, "sys.echo", b"lost").unwrap();
    let after = conn.seal(req, 0, 51, "sys.echo", b"after").unwrap();
    conn.raw().send_binary(after).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));

    // Duplicated an encrypted frame, and the KEY_INIT after establishment.
    let (_, mut conn) = connected(&gw).await;
    let f = conn.seal(req, FLAG_ENC, 7, "sys.echo", b"pay 100").unwrap();
    conn.raw().send_binary(f.clone()).await.unwrap();
    assert_eq!(conn.recv().await.unwrap().body, b"pay 100");
    conn.raw().send_binary(f).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));

    let (_, mut conn) = connected(&gw).await;
    let key_init = conn.key_init_message().to_vec();
    conn.raw().send_binary(key_init).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));

    // A frame from another connection of the same session (same user, same
    // IP, but other traffic keys) does not verify.
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut a = session.connect(&gw.client()).await.unwrap();
    let mut b = session.connect(&gw.client()).await.unwrap();
    let from_a = a.seal(req, 0, 1, "sys.echo", b"hi").unwrap();
    b.raw().send_binary(from_a).await.unwrap();
    assert_eq!(b.raw().expect_close().await.unwrap(), Some(4400));
    let mut c = session.connect(&gw.client()).await.unwrap();
    assert_eq!(c.request("sys.echo", b"c ok", true).await.unwrap(), b"c ok");
}

#[tokio::test]
async fn every_non_request_type_and_every_reserved_flag_bit_closes_with_4400() {
    let gw = TestGateway::start("").await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    // Types a client may not send after KEY_ACK, including unassigned ones.
    for msg_type in [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x12, 0x23, 0x24, 0x30, 0x32, 0x80, 0xff,
    ] {
        let mut conn = session.connect(&gw.client()).await.unwrap();
        conn.send(msg_type, 0, 1, "sys.echo", b"").await.unwrap();
        assert_eq!(
            conn.raw().expect_close().await.unwrap(),
            Some(4400),
            "type {msg_type:#04x}"
        );
    }
    // Each reserved flag bit, on a frame otherwise sealed correctly: the
    // envelope is refused before any verification.
    for bit in 2..8 {
        let mut conn = session.connect(&gw.client()).await.unwrap();
        let mut frame = conn
            .seal(MessageType::Request as u8, 0, 1, "sys.echo", b"x")
            .unwrap();
        frame[1] |= 1 << bit;
        conn.raw().send_binary(frame).await.unwrap();
        assert_eq!(
            conn.raw().expect_close().await.unwrap(),
            Some(4400),
            "bit {bit}"
        );
    }
    // Reserved bits on the unprotected KEY_INIT.
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    let hello = raw.recv_hello().await.unwrap();
    let mut msg = key_init_message(&session, &hello, &session.id);
    msg[1] = 0x80;
    raw.send_binary(msg).await.unwrap();
    assert_eq!(raw.expect_close().await.unwrap(), Some(4400));
}

#[tokio::test]
async fn malformed_utf8_in_names_closes_with_4400() {
    let gw = TestGateway::start("[limits]\nmax_name_len = 32").await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();

    // A protected frame: seal with a placeholder name, then patch it. The
    // AEAD covers the header, so the patched frame could never verify; the
    // gateway refuses it earlier, at the envelope, all the same.
    for patch in [
        &[0xff][..],
        &[0xc0, 0xaf],
        &[0xed, 0xa0, 0x80],
        &[0xe2, 0x82],
    ] {
        let mut conn = session.connect(&gw.client()).await.unwrap();
        let mut frame = conn
            .seal(MessageType::Request as u8, 0, 1, "sys.echo", b"x")
            .unwrap();
        frame[8..8 + patch.len()].copy_from_slice(patch);
        assert!(envelope::decode(&frame).is_err());
        conn.raw().send_binary(frame).await.unwrap();
        assert_eq!(
            conn.raw().expect_close().await.unwrap(),
            Some(4400),
            "{patch:x?}"
        );
    }
    // A name over the configured limit, before any verification.
    let mut conn = session.connect(&gw.client()).await.unwrap();
    conn.send(MessageType::Request as u8, 0, 1, &"n".repeat(33), b"")
        .await
        .unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));

    // An unprotected KEY_INIT whose name (the session id) is not UTF-8.
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    let hello = raw.recv_hello().await.unwrap();
    let mut msg = key_init_message(&session, &hello, &session.id);
    msg[8] = 0xff;
    raw.send_binary(msg).await.unwrap();
    assert_eq!(raw.expect_close().await.unwrap(), Some(4400));

    // The session itself is unharmed by all of it.
    let mut conn = session.connect(&gw.client()).await.unwrap();
    assert_eq!(
        conn.request("sys.echo", b"still", true).await.unwrap(),
        b"still"
    );
}

#[tokio::test]
async fn requests_before_key_init_close_with_4400() {
    let gw = TestGateway::start("").await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let keys = key_exchange::TrafficKeys::derive(&[1; 32], &[2; 32]);
    for msg_type in [
        MessageType::Request,
        MessageType::Subscribe,
        MessageType::Publish,
        MessageType::Logout,
    ] {
        // Protected with some key, as a confused or hostile client would.
        let mut raw = RawSocket::open(&gw.client()).await.unwrap();
        raw.recv_hello().await.unwrap();
        let (mut sealer, _) = keys.client_pair();
        let frame = sealer
            .seal(msg_type as u8, FLAG_ENC, 1, "sys.echo", b"early")
            .unwrap();
        raw.send_binary(frame).await.unwrap();
        assert_eq!(
            raw.expect_close().await.unwrap(),
            Some(4400),
            "{msg_type:?}"
        );
    }
    // KEY_INIT with a request id, or with the ENC flag: not a KEY_INIT.
    for (flags, id) in [(0u8, 1u32), (FLAG_ENC, 0)] {
        let mut raw = RawSocket::open(&gw.client()).await.unwrap();
        let hello = raw.recv_hello().await.unwrap();
        let mut msg = key_init_message(&session, &hello, &session.id);
        msg[1] = flags;
        msg[2..6].copy_from_slice(&id.to_be_bytes());
        raw.send_binary(msg).await.unwrap();
        assert_eq!(
            raw.expect_close().await.unwrap(),
            Some(4400),
            "flags {flags} id {id}"
        );
    }
    // A text frame first: 1003, as everywhere.
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    raw.recv_hello().await.unwrap();
    raw.send_text("{\"kid\":\"x\"}").await.unwrap();
    assert_eq!(raw.expect_close().await.unwrap(), Some(1003));
}

/// A minimal upstream that holds every request until `release`, then
/// answers `200 ok`.
async fn holding_upstream(release: Arc<tokio::sync::Notify>, held: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let (release, held) = (release.clone(), held.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: headers, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(p) = find(&buf, b"\r\n\r\n") {
                            break p + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    held.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tcp.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn requests_over_max_in_flight_get_err_busy_and_the_rest_complete() {
    let release = Arc::new(tokio::sync::Notify::new());
    let held = Arc::new(AtomicU64::new(0));
    let upstream = holding_upstream(release.clone(), held.clone()).await;
    let gw = TestGateway::start(&format!(
        "[limits]\nmax_in_flight = 4\n[[routes]]\nname = \"slow.*\"\nupstream = \"http://{upstream}\"\n"
    ))
    .await;
    let (_, mut conn) = connected(&gw).await;
    let req = MessageType::Request as u8;
    // max_in_flight + 6 requests, written without reading anything.
    for id in 1..=10u32 {
        conn.send(req, u8::from(id % 2 == 0), id, "slow.op", b"x")
            .await
            .unwrap();
    }
    let mut busy = Vec::new();
    while busy.len() < 6 {
        let msg = conn.recv().await.unwrap();
        assert_eq!(msg.msg_type, MessageType::Response as u8);
        let body: serde_json::Value = serde_json::from_slice(&msg.body).unwrap();
        assert_eq!(body["code"], "busy", "id {}", msg.id);
        assert_eq!(
            msg.flags & FLAG_ENC,
            u8::from(msg.id % 2 == 0),
            "ENC mirrored"
        );
        busy.push(msg.id);
    }
    busy.sort_unstable();
    assert_eq!(busy, [5, 6, 7, 8, 9, 10]);
    // The four in flight reached the upstream and complete once it answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(held.load(Ordering::SeqCst), 4);
    let mut done = Vec::new();
    while done.len() < 4 {
        release.notify_waiters();
        if let Ok(msg) = tokio::time::timeout(Duration::from_millis(200), conn.recv()).await {
            let msg = msg.unwrap();
            assert_eq!(msg.body, b"ok", "id {}", msg.id);
            done.push(msg.id);
        }
    }
    done.sort_unstable();
    assert_eq!(done, [1, 2, 3, 4]);
    // Capacity is back: a new request goes through.
    let id = 11;
    conn.send(req, 0, id, "slow.op", b"x").await.unwrap();
    loop {
        release.notify_waiters();
        if let Ok(msg) = tokio::time::timeout(Duration::from_millis(200), conn.recv()).await {
            assert_eq!(msg.unwrap().id, id);
            break;
        }
    }
}

#[tokio::test]
async fn an_id_already_in_flight_closes_with_4400_and_inline_routes_never_pile_up() {
    let release = Arc::new(tokio::sync::Notify::new());
    let held = Arc::new(AtomicU64::new(0));
    let upstream = holding_upstream(release, held).await;
    let gw = TestGateway::start(&format!(
        "[limits]\nmax_in_flight = 4\n[[routes]]\nname = \"slow.*\"\nupstream = \"http://{upstream}\"\n"
    ))
    .await;
    let (_, mut conn) = connected(&gw).await;
    let req = MessageType::Request as u8;
    conn.send(req, 0, 9, "slow.op", b"x").await.unwrap();
    conn.send(req, 0, 9, "slow.op", b"again").await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));

    // Built-in routes are answered inline, in order: 200 pipelined requests
    // (50 times max_in_flight) all succeed, none is `busy`.
    let (_, mut conn) = connected(&gw).await;
    for id in 1..=200u32 {
        conn.send(req, 0, id, "sys.echo", &id.to_be_bytes())
            .await
            .unwrap();
    }
    for id in 1..=200u32 {
        let msg = conn.recv().await.unwrap();
        assert_eq!((msg.id, msg.flags), (id, 0));
        assert_eq!(msg.body, id.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------
// An active intermediary on the server → client path
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// Drop the n-th binary message from the server (0 = HELLO, 1 = KEY_ACK).
    Drop(usize),
    /// Deliver the n-th binary message twice.
    Duplicate(usize),
    /// Swap the n-th and (n+1)-th binary messages.
    Swap(usize),
    /// Replace the nonce in HELLO (unauthenticated) with another one.
    HelloNonce,
}

#[tokio::test]
async fn an_intermediary_dropping_duplicating_or_swapping_server_frames_is_detected() {
    let gw = TestGateway::start("").await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let req = MessageType::Request as u8;
    // Binary messages from the server: 0 HELLO, 1 KEY_ACK, 2.. responses.
    for tamper in [Tamper::Drop(2), Tamper::Duplicate(2), Tamper::Swap(2)] {
        let proxy = spawn_tampering_proxy(gw.addr, tamper).await;
        let via = ClientConfig::from_addr(proxy).timeout(Duration::from_secs(5));
        let mut conn = session.connect(&via).await.unwrap();
        conn.send(req, 0, 1, "sys.echo", b"first").await.unwrap();
        conn.send(req, FLAG_ENC, 2, "sys.echo", b"second")
            .await
            .unwrap();
        conn.send(req, 0, 3, "sys.echo", b"third").await.unwrap();
        let mut outcome = Vec::new();
        for _ in 0..3 {
            match conn.recv().await {
                Ok(msg) => outcome.push(Ok(msg.body)),
                Err(e) => {
                    outcome.push(Err(e.to_string()));
                    break;
                }
            }
        }
        let failure = outcome
            .iter()
            .find_map(|o| o.as_ref().err())
            .unwrap_or_else(|| panic!("{tamper:?} went unnoticed: {outcome:?}"));
        assert!(
            failure.contains("frame from server"),
            "{tamper:?}: {failure}"
        );
        // Nothing tampered was ever accepted as genuine.
        let accepted: Vec<&[u8]> = outcome.iter().filter_map(|o| o.as_deref().ok()).collect();
        let genuine: [&[u8]; 3] = [b"first", b"second", b"third"];
        assert_eq!(accepted, genuine[..accepted.len()], "{tamper:?}");
    }
    // HELLO is not authenticated: an intermediary can change its nonce, but
    // the KEY_INIT is then bound to a nonce the server never sent, so the
    // connection fails (4401) instead of being hijacked.
    let proxy = spawn_tampering_proxy(gw.addr, Tamper::HelloNonce).await;
    let via = ClientConfig::from_addr(proxy).timeout(Duration::from_secs(5));
    let err = session.connect(&via).await.unwrap_err();
    assert_eq!(err.close_code(), Some(4401), "{err:?}");
    // The session survives all of it.
    let mut conn = session.connect(&gw.client()).await.unwrap();
    assert_eq!(
        conn.request("sys.echo", b"fine", true).await.unwrap(),
        b"fine"
    );
}

async fn spawn_tampering_proxy(gateway: SocketAddr, tamper: Tamper) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let Ok(server) = TcpStream::connect(gateway).await else {
            return;
        };
        let (mut c_read, mut c_write) = client.into_split();
        let (mut s_read, mut s_write) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut c_read, &mut s_write).await;
            let _ = s_write.shutdown().await;
        });
        // The 101 response, verbatim.
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            match s_read.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buf.drain(..head_end).collect();
        if c_write.write_all(&head).await.is_err() {
            return;
        }
        let mut binary_index = 0;
        let mut held: Option<Vec<u8>> = None;
        while let Some(mut frame) = read_server_frame_half(&mut s_read, &mut buf).await {
            let is_binary = frame[0] & 0x0f == 0x2;
            let mut out = vec![];
            if is_binary {
                let n = binary_index;
                binary_index += 1;
                match tamper {
                    Tamper::Drop(k) if k == n => {}
                    Tamper::Duplicate(k) if k == n => {
                        out.push(frame.clone());
                        out.push(frame);
                    }
                    Tamper::Swap(k) if k == n => held = Some(frame),
                    Tamper::Swap(k) if k + 1 == n => {
                        out.push(frame);
                        out.extend(held.take());
                    }
                    Tamper::HelloNonce if n == 0 => {
                        let start = find(&frame, b"\"nonce\":\"").unwrap() + 9;
                        let other = b64::encode_b64u(&[0x42; 32]);
                        frame[start..start + other.len()].copy_from_slice(other.as_bytes());
                        out.push(frame);
                    }
                    _ => out.push(frame),
                }
            } else {
                out.push(frame);
            }
            for f in out {
                if c_write.write_all(&f).await.is_err() {
                    return;
                }
            }
        }
        let _ = c_write.shutdown().await;
    });
    addr
}

async fn read_server_frame_half(
    tcp: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    loop {
        if let Some(total) = frame_len(buf)
            && buf.len() >= total
        {
            return Some(buf.drain(..total).collect());
        }
        let mut chunk = [0u8; 16384];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The whole length of the frame at the start of `buf`, once its header is
/// there (server frames: no mask; client frames: 4 more bytes of mask).
fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 2 {
        return None;
    }
    let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    let (ext, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (2, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => (
            8,
            usize::try_from(u64::from_be_bytes(buf[2..10].try_into().unwrap())).unwrap(),
        ),
        126 | 127 => return None,
        n => (0, usize::from(n)),
    };
    Some(2 + ext + mask + len)
}

// ---------------------------------------------------------------------------
// Slow and many: slowloris, idle sockets, floods
// ---------------------------------------------------------------------------

/// A WebSocket to `/ws` spoken by hand: the cheapest possible client, so a
/// test can hold thousands of them.
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wsgate.v1\r\n\r\n";

async fn tcp_from(addr: SocketAddr, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

impl RawWs {
    async fn open(addr: SocketAddr, from: Option<IpAddr>) -> std::io::Result<Self> {
        let mut tcp = tcp_from(addr, from).await?;
        tcp.write_all(UPGRADE.as_bytes()).await?;
        let mut buf = Vec::new();
        loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 101") {
                    return Err(std::io::Error::other(
                        String::from_utf8_lossy(&buf[..p]).into_owned(),
                    ));
                }
                buf.drain(..p + 4);
                return Ok(Self { tcp, buf });
            }
            let mut chunk = [0u8; 1024];
            match tcp.read(&mut chunk).await? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads HELLO.
    async fn hello(&mut self) -> key_exchange::Hello {
        let (opcode, hello) = self.frame().await.expect("HELLO");
        assert_eq!((opcode, hello[0]), (0x2, MessageType::Hello as u8));
        serde_json::from_slice(&hello[8..]).unwrap()
    }

    /// Reads HELLO, sends a KEY_INIT for `session` (dynamic password
    /// `[3; 32]`) and reads KEY_ACK; returns the HELLO.
    async fn establish(&mut self, session: &wsgate_client::Session) -> key_exchange::Hello {
        let hello = self.hello().await;
        self.send(0x2, &key_init_message(session, &hello, &session.id))
            .await
            .unwrap();
        let (opcode, ack) = self.frame().await.expect("KEY_ACK");
        assert_eq!((opcode, ack[0]), (0x2, MessageType::KeyAck as u8));
        hello
    }

    /// The next frame's opcode and payload; `None` at EOF.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(total) = frame_len(&self.buf)
                && self.buf.len() >= total
            {
                let frame: Vec<u8> = self.buf.drain(..total).collect();
                let header = match frame[1] & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                return Some((frame[0] & 0x0f, frame[header..].to_vec()));
            }
            let mut chunk = [0u8; 4096];
            match self.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends one masked frame, as a client must.
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.tcp
            .write_all(&masked_frame(true, opcode, payload))
            .await
    }

    /// Reads until the server's close frame and returns its code.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (opcode, payload) = self.frame().await?;
            if opcode == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}

/// One masked client frame.
fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Writes `bytes` one at a time every `every` while watching for the server
/// to close. Returns how long the server took to close, or `None` if the
/// connection was still open after `give_up`.
async fn trickle(
    tcp: &mut TcpStream,
    bytes: &[u8],
    every: Duration,
    give_up: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let (mut r, mut w) = tcp.split();
    let mut next = 0;
    let mut chunk = [0u8; 1024];
    while started.elapsed() < give_up {
        tokio::select! {
            read = r.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {} // e.g. a 408; keep reading until the close
            },
            () = tokio::time::sleep(every) => {
                let b = bytes[next % bytes.len()];
                next += 1;
                if w.write_all(&[b]).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

/// Header lines that never end.
fn endless_headers(start: &str) -> Vec<u8> {
    let mut v = start.as_bytes().to_vec();
    v.extend_from_slice(
        "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
            .repeat(50)
            .as_bytes(),
    );
    v
}

#[tokio::test]
async fn slowloris_headers_on_http_and_on_the_upgrade_are_cut_off() {
    let gw = TestGateway::start("[limits]\nhttp_header_timeout_secs = 1").await;
    let cases = [
        (
            "login request",
            endless_headers("PUT /auth/session HTTP/1.1\r\nHost: x\r\n"),
        ),
        (
            "WebSocket upgrade",
            endless_headers(
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
            ),
        ),
    ];
    for (what, bytes) in cases {
        let mut tcp = tcp_from(gw.addr, None).await.unwrap();
        let took = trickle(
            &mut tcp,
            &bytes,
            Duration::from_millis(50),
            Duration::from_secs(6),
        )
        .await
        .unwrap_or_else(|| panic!("{what}: still open after 6 s of trickled headers"));
        eprintln!("{what}: trickled headers cut off after {took:?}");
        assert!(
            (Duration::from_millis(800)..Duration::from_secs(4)).contains(&took),
            "{what}: {took:?}"
        );
    }
    // A connection that sends nothing at all is cut off the same way.
    let mut tcp = tcp_from(gw.addr, None).await.unwrap();
    let mut b = [0u8; 64];
    let silent = tokio::time::timeout(Duration::from_secs(6), tcp.read(&mut b)).await;
    assert!(
        matches!(silent, Ok(Ok(0) | Err(_))),
        "a silent connection stayed open: {silent:?}"
    );
    // And the gateway still serves.
    login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn slowloris_bodies_are_cut_off() {
    let gw =
        TestGateway::start("[limits]\nhttp_header_timeout_secs = 1\nhttp_body_timeout_secs = 1")
            .await;
    let mut tcp = tcp_from(gw.addr, None).await.unwrap();
    tcp.write_all(b"PUT /auth/session HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n")
        .await
        .unwrap();
    let took = trickle(
        &mut tcp,
        b"{\"scram\":\"",
        Duration::from_millis(100),
        Duration::from_secs(8),
    )
    .await;
    assert!(
        took.is_some(),
        "a login body trickled at 10 bytes/s kept its connection for 8 s"
    );
}

#[tokio::test]
async fn a_key_init_trickled_byte_by_byte_is_cut_off_at_the_key_init_deadline() {
    let gw = TestGateway::start(
        "[limits]\nkey_init_timeout_secs = 1\nidle_timeout_secs = 2\nping_interval_secs = 1",
    )
    .await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut ws = RawWs::open(gw.addr, None).await.unwrap();
    let hello = ws.hello().await;
    let body = key_init_message(&session, &hello, &session.id);
    // A masked binary frame header announcing the whole KEY_INIT, then its
    // bytes one by one, far slower than the deadline allows.
    let mut frame = vec![0x82, 0x80 | 126];
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&body);
    let started = Instant::now();
    let took = trickle(
        &mut ws.tcp,
        &frame,
        Duration::from_millis(100),
        Duration::from_secs(5),
    )
    .await
    .expect("a trickled KEY_INIT kept the connection open");
    // The deadline, then at most 2 s waiting for the client's close (which
    // this client, in the middle of a frame, never sends).
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(started.elapsed() >= Duration::from_millis(800));

    // After key establishment, a message that never completes is ended by
    // the idle timeout (the timer counts whole messages, not bytes).
    let mut ws = RawWs::open(gw.addr, None).await.unwrap();
    ws.establish(&session).await;
    let mut ws_bytes = vec![0x82, 0x80 | 126, 0x01, 0x00, 0, 0, 0, 0];
    ws_bytes.extend_from_slice(&[0u8; 256]);
    let took = trickle(
        &mut ws.tcp,
        &ws_bytes,
        Duration::from_millis(100),
        Duration::from_secs(10),
    )
    .await
    .expect("a message trickled forever kept the connection open");
    // Idle after 2 s, closed at the next 1 s tick, then at most 2 s waiting
    // for the client's close.
    assert!(took < Duration::from_secs(7), "{took:?}");
}

/// Uploads one message that never ends, a 256-byte fragment every
/// millisecond (so the gateway never has a whole message, and its idle timer
/// runs), looking at what came back after each fragment as a busy client
/// does: the fragment sent just after the gateway's close is sent before
/// the close is seen. Once it is seen, answers it between two fragments, as
/// RFC 6455 allows, and reads to the end. Returns the close code, or how the
/// connection failed (a reset shows as a failed write or read).
async fn upload_until_closed(ws: &mut RawWs, give_up: Duration) -> Result<u16, String> {
    let started = Instant::now();
    let mut opcode = 0x2;
    let code = 'upload: loop {
        if started.elapsed() > give_up {
            return Err(format!("no close after {give_up:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        ws.tcp
            .write_all(&masked_frame(false, opcode, &[0x42; 256]))
            .await
            .map_err(|e| format!("sending a fragment: {e}"))?;
        opcode = 0x0;
        let mut chunk = [0u8; 4096];
        loop {
            match ws.tcp.try_read(&mut chunk) {
                Ok(0) => return Err("the connection ended without a close frame".into()),
                Ok(n) => ws.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("reading: {e}")),
            }
        }
        while let Some(total) = frame_len(&ws.buf)
            && ws.buf.len() >= total
        {
            let frame: Vec<u8> = ws.buf.drain(..total).collect();
            if frame[0] & 0x0f == 0x8 {
                break 'upload u16::from_be_bytes([frame[2], frame[3]]);
            }
        }
    };
    ws.tcp
        .write_all(&masked_frame(true, 0x8, &1000u16.to_be_bytes()))
        .await
        .map_err(|e| format!("answering the close {code}: {e}"))?;
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), ws.tcp.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => Ok(code),
        Ok(Err(e)) => Err(format!("after the close {code}: {e}")),
        Err(_) => Err(format!("still open 5 s after the close {code}")),
    }
}

#[tokio::test]
async fn a_client_busy_uploading_when_the_idle_timeout_closes_it_still_gets_1001() {
    // Fragments of a message are not activity: the idle timeout closes the
    // connection in the middle of the upload. The gateway then waits for the
    // client's close, reading what still comes: closing at once would reset
    // the connection under the client's next fragment, and its answer to the
    // close would fail with a broken pipe.
    let gw = TestGateway::start(
        "[limits]\nidle_timeout_secs = 2\nping_interval_secs = 1\nmax_message_size = 8388608",
    )
    .await;
    let (mut ws, _) = established_raw(&gw).await;
    let started = Instant::now();
    let closed = upload_until_closed(&mut ws, Duration::from_secs(15)).await;
    assert_eq!(closed, Ok(1001), "after {:?}", started.elapsed());
    assert!(started.elapsed() >= Duration::from_millis(1800));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_at_the_send_timeout_while_others_are_served() {
    let _heavy = HEAVY.lock().await;
    let gw = TestGateway::start("[limits]\nsend_timeout_secs = 1").await;
    let (_, conn) = connected(&gw).await;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(keep_working(conn, stop.clone()));

    // 60 KiB echo requests as fast as the gateway takes them, and not one
    // response read: once the socket buffers are full, the gateway's writes
    // stall (and it stops reading requests, so this client's writes stall
    // too).
    let (mut ws, mut sealer) = established_raw(&gw).await;
    let started = Instant::now();
    let flooding = tokio::spawn(async move {
        let body = vec![0x5a; 60 << 10];
        let mut id = 0u32;
        loop {
            id += 1;
            let frame = sealer
                .seal(MessageType::Request as u8, 0, id, "sys.echo", &body)
                .unwrap();
            if let Err(e) = ws.send(0x2, &frame).await {
                return (id, e);
            }
        }
    });
    let dropped_in = loop {
        let text = crate::metrics::scrape(&gw).await;
        if crate::metrics::value(&text, "wsgate_send_timeouts_total") == 1 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a client that reads nothing is still connected after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Dropped: the client's blocked write fails.
    let (requests_sent, error) = tokio::time::timeout(Duration::from_secs(10), flooding)
        .await
        .expect("the client's writes still block")
        .unwrap();
    let text = crate::metrics::scrape(&gw).await;
    assert_eq!(
        crate::metrics::value(&text, "wsgate_connections_open"),
        1,
        "{text}"
    );
    stop.store(true, Ordering::SeqCst);
    let (requests, slowest) = worker.await.unwrap();
    eprintln!(
        "a client sent {requests_sent} requests, read nothing and was dropped after \
         {dropped_in:?} ({error}); meanwhile {requests} requests, slowest {slowest:?}"
    );
    // One second without progress; the stall starts after the first few
    // megabytes, which take a moment on a loaded machine.
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(10)).contains(&dropped_in),
        "{dropped_in:?}"
    );
    assert!(requests >= 20, "the real client barely ran: {requests}");
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
}

/// How many sockets the idle test holds: 10 000, as the issue asks, unless
/// the descriptor limit cannot be raised that far. The gateway runs as its
/// own process (it inherits the raised limit), so each socket is one
/// descriptor here and one there. `WSGATE_ATTACK_SOCKETS` overrides.
fn idle_socket_count() -> usize {
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    if let Some(n) = std::env::var("WSGATE_ATTACK_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    let count = usize::try_from(soft.saturating_sub(1000)).unwrap_or(usize::MAX);
    if count < 10_000 {
        eprintln!(
            "RLIMIT_NOFILE allows {soft} descriptors: holding {count} idle sockets, not 10 000"
        );
    }
    count.clamp(200, 10_000)
}

/// Requests `sys.echo` every 10 ms until `stop`; returns how many and the
/// slowest.
async fn keep_working(
    mut conn: wsgate_client::Connection,
    stop: Arc<AtomicBool>,
) -> (u64, Duration) {
    let (mut done, mut slowest) = (0u64, Duration::ZERO);
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let body = done.to_be_bytes();
        let reply = conn
            .request("sys.echo", &body, done % 2 == 0)
            .await
            .unwrap();
        assert_eq!(reply, body);
        slowest = slowest.max(t.elapsed());
        done += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (done, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_unauthenticated_sockets_time_out_while_a_real_client_works() {
    let _heavy = HEAVY.lock().await;
    let count = idle_socket_count();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wsgate.toml");
    // 200 sockets per source address: over the default cap of sockets
    // without KEY_INIT per IP (64), which `unauthenticated.rs` tests.
    std::fs::write(
        &config,
        "[limits]\nkey_init_timeout_secs = 4\nmax_unauthenticated_per_ip = 1000\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let gw = crate::cli::serve(&[
        "--demo",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let client = ClientConfig::from_addr(gw.addr).timeout(Duration::from_secs(10));
    let session = login(&client, "demo", "wsgate-demo").await.unwrap();
    let conn = session.connect(&client).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(keep_working(conn, stop.clone()));

    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(128));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let from = Some(ip(100 + (i % 50) as u8));
        let addr = gw.addr;
        opening.spawn(async move {
            let ws = RawWs::open(addr, from).await;
            drop(permit);
            ws
        });
    }
    let mut sockets = Vec::with_capacity(count);
    while let Some(ws) = opening.join_next().await {
        sockets.push(ws.unwrap().expect("the gateway refused an idle socket"));
    }
    let opened_in = started.elapsed();

    let mut closing = tokio::task::JoinSet::new();
    for mut ws in sockets {
        closing.spawn(async move {
            tokio::time::timeout(Duration::from_secs(20), ws.close_code())
                .await
                .ok()
                .flatten()
        });
    }
    let mut codes = std::collections::BTreeMap::new();
    while let Some(code) = closing.join_next().await {
        *codes.entry(code.unwrap()).or_insert(0usize) += 1;
    }
    let all_closed_in = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (requests, slowest) = worker.await.unwrap();
    eprintln!(
        "{count} idle sockets opened in {opened_in:?}, all closed by {all_closed_in:?}: {codes:?}; \
         meanwhile {requests} requests, slowest {slowest:?}"
    );
    assert_eq!(codes.get(&Some(4408)), Some(&count), "{codes:?}");
    assert!(requests >= 50, "the real client barely ran: {requests}");
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    // The gateway serves new clients afterwards.
    let mut conn = session.connect(&client).await.unwrap();
    assert_eq!(
        conn.request("sys.echo", b"after", true).await.unwrap(),
        b"after"
    );
}

/// A small deterministic generator for garbage.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn b64u(&mut self, n: usize) -> String {
        let bytes = self.bytes(n);
        b64::encode_b64u(&bytes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_key_inits_is_refused_while_a_real_client_works() {
    let _heavy = HEAVY.lock().await;
    let gw = TestGateway::start("").await;
    let (session, conn) = connected(&gw).await;
    // What a passive observer recorded: the victim's session id (KEY_INIT's
    // name) and its whole KEY_INIT.
    let recorded = conn.key_init_message().to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(keep_working(conn, stop.clone()));

    const FLOOD: usize = 600;
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let mut g = Garbage(0x5eed_0000 + i as u64);
        let kind = i % 5;
        let message = match kind {
            // Random bytes.
            0 => {
                let n = (g.next() % 64) as usize;
                g.bytes(n)
            }
            // A KEY_INIT envelope around garbage.
            1 => envelope::encode(0x02, 0, 0, &g.b64u(16), &g.bytes(40)).unwrap(),
            // Well-formed, for a session that does not exist.
            2 => {
                let body = json!({"kid": g.b64u(8), "enc": g.b64u(32), "ct": g.b64u(48)});
                envelope::encode(0x02, 0, 0, &g.b64u(16), body.to_string().as_bytes()).unwrap()
            }
            // Well-formed, for the victim's real session and key: the
            // gateway has to try the HPKE open.
            3 => {
                let body =
                    json!({"kid": session.server_key.kid, "enc": g.b64u(32), "ct": g.b64u(48)});
                envelope::encode(0x02, 0, 0, &session.id, body.to_string().as_bytes()).unwrap()
            }
            // The victim's recorded KEY_INIT, replayed.
            _ => recorded.clone(),
        };
        // Attacks on the victim's session come from the victim's address
        // (the hardest case: the IP check passes); the rest from anywhere.
        let from = if kind >= 3 {
            None
        } else {
            Some(ip(60 + (i % 20) as u8))
        };
        let addr = gw.addr;
        tasks.spawn(async move {
            let mut ws = RawWs::open(addr, from).await.unwrap();
            let (opcode, _hello) = ws.frame().await.unwrap();
            assert_eq!(opcode, 0x2);
            ws.send(0x2, &message).await.unwrap();
            let code = tokio::time::timeout(Duration::from_secs(20), ws.close_code())
                .await
                .ok()
                .flatten();
            drop(permit);
            (kind, code)
        });
    }
    let mut outcomes = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (kind, code) = r.unwrap();
        *outcomes.entry((kind, code)).or_insert(0usize) += 1;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (requests, slowest) = worker.await.unwrap();
    eprintln!(
        "{FLOOD} garbage KEY_INITs in {elapsed:?}: {outcomes:?}; meanwhile {requests} requests, \
         slowest {slowest:?}"
    );
    let per_kind = FLOOD / 5;
    for (kind, code) in [(0, 4400), (1, 4400), (2, 4401), (3, 4401), (4, 4401)] {
        assert_eq!(
            outcomes.get(&(kind, Some(code))),
            Some(&per_kind),
            "kind {kind}: {outcomes:?}"
        );
    }
    // How many requests fit depends on how fast the flood ends on a shared
    // 2-core machine; what matters is that the client kept being served.
    assert!(requests >= 3, "the real client barely ran: {requests}");
    assert!(
        slowest < Duration::from_secs(5),
        "slowest request {slowest:?}"
    );
    // The victim's session is unharmed: a new connection works.
    let mut conn = session.connect(&gw.client()).await.unwrap();
    assert_eq!(
        conn.request("sys.echo", b"still mine", true).await.unwrap(),
        b"still mine"
    );
}

// ---------------------------------------------------------------------------
// RFC 6455 framing on /ws (the driver's own frame reader, which the Autobahn
// cases test through /raw-echo-frames)
// ---------------------------------------------------------------------------

/// A raw `/ws` connection after a hand-made KEY_INIT, with the client's
/// sealer for protected frames.
async fn established_raw(gw: &TestGateway) -> (RawWs, wsgate_proto::protect::Sealer) {
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut ws = RawWs::open(gw.addr, None).await.unwrap();
    let hello = ws.establish(&session).await;
    let nonce = hello.raw_nonce().unwrap();
    let (sealer, _) = key_exchange::TrafficKeys::derive(&[3; 32], &nonce).client_pair();
    (ws, sealer)
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let gw = TestGateway::start("").await;
    let (mut ws, mut sealer) = established_raw(&gw).await;
    let frame = sealer
        .seal(MessageType::Request as u8, 0, 1, "sys.echo", b"unmasked")
        .unwrap();
    let mut bytes = vec![0x82, u8::try_from(frame.len()).unwrap()];
    bytes.extend_from_slice(&frame);
    ws.tcp.write_all(&bytes).await.unwrap();
    let (opcode, payload) = tokio::time::timeout(Duration::from_secs(5), ws.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opcode, 0x8, "the unmasked request was answered instead");
    assert_eq!(payload[..2], 1002u16.to_be_bytes());
}

#[tokio::test]
async fn control_frames_over_125_bytes_close_with_1002() {
    let gw = TestGateway::start("").await;
    let (mut ws, _) = established_raw(&gw).await;
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b'a'; 124]);
    ws.send(0x8, &close).await.unwrap();
    assert_eq!(ws.close_code().await, Some(1002));
}
