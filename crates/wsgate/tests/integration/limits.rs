//! The login limits under pressure (issue 11, items 1–3), over real
//! sockets, in memory and on a real Redis fleet:
//!
//! * concurrent second requests never evaluate more proofs than the
//!   failure limits allow (the check and the count are one atomic step);
//! * IPv6 clients are counted per prefix (`[login] ipv6_prefix_len`), seen
//!   here through a trusted proxy's `X-Forwarded-For`, since loopback IPv6
//!   offers only `::1` (the key derivation itself is a unit test in
//!   `wsgate_server::config`);
//! * user names are bounded, and live exchanges are capped per IP prefix
//!   (`429`) and in all (`503`), counted by the `wsgate_login_exchanges`
//!   gauge.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use wsgate_client::{Error, login};
use wsgate_proto::scram::client::ClientFirst;
use wsgate_server::store::{RedisStateStore, StateStore};

use crate::metrics::{scrape, value};
use crate::util::*;

/// Serializes the tests of this file that open hundreds of sockets.
static BURST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn v6(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Two nodes of one fleet on a real Redis (a private prefix of the shared
/// server), or None when service tests are skipped.
async fn redis_fleet(toml: &str) -> Option<(TestGateway, TestGateway)> {
    if skip_services() {
        return None;
    }
    let fleet = Fleet::new().await;
    let (url, prefix) = (
        wsgate_test_support::shared_redis().url(),
        wsgate_test_support::unique_prefix(),
    );
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let store: Arc<dyn StateStore> = Arc::new(
            RedisStateStore::connect_with_prefix(&url, &prefix)
                .await
                .unwrap(),
        );
        nodes.push(TestGateway::start_with_state(&fleet, config(toml), store).await);
    }
    let b = nodes.pop().unwrap();
    Some((nodes.pop().unwrap(), b))
}

/// A sum of one series over every node.
async fn total(nodes: &[&TestGateway], series: &str) -> u64 {
    let mut sum = 0;
    for node in nodes {
        sum += value(&scrape(node).await, series);
    }
    sum
}

const FAILED: &str = "wsgate_logins_total{result=\"failed\"}";
const OK: &str = "wsgate_logins_total{result=\"ok\"}";
const EXCHANGES: &str = "wsgate_login_exchanges";

// ---------------------------------------------------------------------------
// Item 1: the failure limits hold under concurrency
// ---------------------------------------------------------------------------

/// The burst of issue 11: `count` exchanges for alice from one IP, spread
/// over `nodes`, then all their second requests (wrong proofs, made
/// without PBKDF2) at once. Returns how many were not refused with 429.
async fn burst_of_second_requests(nodes: &[&TestGateway], count: usize) -> usize {
    let from = Some(v4(7));
    let mut prepared = Vec::new();
    for i in 0..count {
        let node = nodes[i % nodes.len()];
        let mut http = RawHttp::connect(node.addr, from).await;
        let start = ClientFirst::new(ALICE, "not the password", &[9u8; 18]).unwrap();
        let (reply, begun) = http.put_first(&start.message()).await;
        let begun = begun.unwrap_or_else(|| panic!("first request {i}: {:?}", reply.json));
        let (_, client_final) = start
            .handle_server_first(
                &begun.server_first,
                &begun.ip,
                &node.fingerprint,
                Some(&[0u8; 32]),
            )
            .unwrap();
        prepared.push((http, begun, client_final));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(count));
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|(mut http, begun, client_final)| {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let second = http.put_second(&begun, &client_final).await;
                match second.reply.status {
                    429 => false,
                    401 => {
                        assert_eq!(sealed_error(&second), "e=invalid-proof");
                        true
                    }
                    other => panic!("unexpected {other}: {:?}", second.reply.json),
                }
            })
        })
        .collect();
    let mut evaluated = 0;
    for task in tasks {
        evaluated += usize::from(task.await.unwrap());
    }
    evaluated
}

async fn assert_the_burst_is_cut_at_the_user_limit(nodes: &[&TestGateway]) {
    let _burst = BURST.lock().await;
    let failed_before = total(nodes, FAILED).await;
    let evaluated = burst_of_second_requests(nodes, 300).await;
    let failed = total(nodes, FAILED).await - failed_before;
    // Limits: 10 per user, 50 per IP. Not one proof more than 10 was
    // evaluated, by the replies and by the nodes' own counts.
    assert_eq!(evaluated, 10, "non-429 replies");
    assert_eq!(failed, 10, "proofs evaluated, by the metrics");
    assert_eq!(total(nodes, OK).await, 0);
    // The right password after the burst: refused, on every node.
    for node in nodes {
        let err = login(&node.client().local_addr(v4(8)), ALICE, ALICE_PASSWORD)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    }
}

const BURST_CONFIG: &str = "[login]\nmax_failures_per_user = 10\nmax_failures_per_ip = 50";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_second_requests_evaluate_at_most_the_user_limit_in_memory() {
    let gw = TestGateway::start(BURST_CONFIG).await;
    assert_the_burst_is_cut_at_the_user_limit(&[&gw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_second_requests_on_a_redis_fleet_evaluate_at_most_the_user_limit() {
    let Some((a, b)) = redis_fleet(BURST_CONFIG).await else {
        return;
    };
    assert_the_burst_is_cut_at_the_user_limit(&[&a, &b]).await;
}

#[tokio::test]
async fn a_success_gives_back_the_ip_count_and_resets_the_users() {
    let gw = TestGateway::start(
        "[login]\nmax_failures_per_user = 3\nmax_failures_per_ip = 4\nmax_starts_per_ip = 1000",
    )
    .await;
    // Every proof is counted before it is evaluated; a success takes its
    // IP count back. So ten successes from one address leave it room for
    // exactly its 4 failures...
    for _ in 0..10 {
        login(&gw.client().local_addr(v4(9)), ALICE, ALICE_PASSWORD)
            .await
            .unwrap();
    }
    for i in 0..4 {
        let mut http = RawHttp::connect(gw.addr, Some(v4(9))).await;
        assert_eq!(
            guess_with(&mut http, &gw, &format!("u{i}")).await,
            (401, Some(401))
        );
    }
    let mut http = RawHttp::connect(gw.addr, Some(v4(9))).await;
    assert!(limited(guess_with(&mut http, &gw, "u9").await));
    // ...and a success resets the user's count: 2 failures, a success,
    // then the user's full 3 again.
    for _ in 0..2 {
        let mut http = RawHttp::connect(gw.addr, Some(v4(10))).await;
        assert_eq!(guess_with(&mut http, &gw, BOB).await, (401, Some(401)));
    }
    login(&gw.client().local_addr(v4(10)), BOB, BOB_PASSWORD)
        .await
        .unwrap();
    for _ in 0..3 {
        let mut http = RawHttp::connect(gw.addr, Some(v4(11))).await;
        assert_eq!(guess_with(&mut http, &gw, BOB).await, (401, Some(401)));
    }
    let mut http = RawHttp::connect(gw.addr, Some(v4(12))).await;
    assert!(limited(guess_with(&mut http, &gw, BOB).await));
}

// ---------------------------------------------------------------------------
// Item 2: IPv6 clients are counted per prefix
// ---------------------------------------------------------------------------

/// One wrong guess for `user` on `http` (no PBKDF2: the proof is made from
/// a made-up SaltedPassword): the status of the first request and of the
/// second, if any.
pub(crate) async fn guess_with(
    http: &mut RawHttp,
    gw: &TestGateway,
    user: &str,
) -> (u16, Option<u16>) {
    let start = ClientFirst::new(user, "not the password", &[9u8; 18]).unwrap();
    let (first, begun) = http.put_first(&start.message()).await;
    let Some(begun) = begun else {
        return (first.status, None);
    };
    let (_, client_final) = start
        .handle_server_first(
            &begun.server_first,
            &begun.ip,
            &gw.fingerprint,
            Some(&[0u8; 32]),
        )
        .unwrap();
    let second = http.put_second(&begun, &client_final).await;
    if second.reply.status == 401 {
        assert_eq!(sealed_error(&second), "e=invalid-proof");
    }
    (first.status, Some(second.reply.status))
}

/// One wrong guess for `user`, reported from `ip` by the trusted proxy on
/// 127.0.0.1.
async fn guess_via_proxy(gw: &TestGateway, ip: IpAddr, user: &str) -> (u16, Option<u16>) {
    let mut http = RawHttp::connect(gw.addr, None).await.forwarded_for(ip);
    guess_with(&mut http, gw, user).await
}

fn limited(outcome: (u16, Option<u16>)) -> bool {
    outcome.0 == 429 || outcome.1 == Some(429)
}

const PROXIED: &str =
    "trusted_proxies = [\"127.0.0.1\"]\n[proxy]\nclient_ip_header = \"x-forwarded-for\"\n";

#[tokio::test]
async fn ipv6_addresses_rotated_inside_one_64_share_the_failure_limit() {
    let gw = TestGateway::start(&format!(
        "{PROXIED}[login]\nmax_failures_per_ip = 50\nmax_failures_per_user = 1000"
    ))
    .await;
    // The login binds the address itself; only the limits count its prefix.
    let (_, begun) = start_from(&gw, v6("2001:db8:1:2::abcd")).await;
    assert_eq!(begun.unwrap().1.ip, "2001:db8:1:2::abcd");
    let mut outcomes = Vec::new();
    for n in 1..=70u32 {
        let ip = v6(&format!("2001:db8:1:2::{n:x}"));
        outcomes.push(guess_via_proxy(&gw, ip, &format!("victim{n}")).await);
    }
    assert!(
        outcomes[..50].iter().all(|o| *o == (401, Some(401))),
        "{outcomes:?}"
    );
    assert!(outcomes[50..].iter().all(|o| limited(*o)), "{outcomes:?}");
    assert_eq!(value(&scrape(&gw).await, FAILED), 50);
    // The next /64 is another client; so is an IPv4 address.
    assert_eq!(
        guess_via_proxy(&gw, v6("2001:db8:1:3::1"), "victim1").await,
        (401, Some(401))
    );
    assert_eq!(
        guess_via_proxy(&gw, v6("198.51.100.7"), "victim1").await,
        (401, Some(401))
    );
}

#[tokio::test]
async fn ipv6_first_requests_are_limited_per_prefix_of_the_configured_length() {
    // A /48: the whole site is one client for the starts limit.
    let gw = TestGateway::start(&format!(
        "{PROXIED}[login]\nipv6_prefix_len = 48\nmax_starts_per_ip = 20"
    ))
    .await;
    let mut statuses = Vec::new();
    for n in 1..=30u32 {
        // Another /64 each time, all in 2001:db8:7::/48.
        let ip = v6(&format!("2001:db8:7:{n:x}::1"));
        let mut http = RawHttp::connect(gw.addr, None).await.forwarded_for(ip);
        let start = ClientFirst::new("someone", "x", &[1u8; 18]).unwrap();
        statuses.push(http.put_first(&start.message()).await.0.status);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    let mut other = RawHttp::connect(gw.addr, None)
        .await
        .forwarded_for(v6("2001:db8:8::1"));
    let start = ClientFirst::new("someone", "x", &[1u8; 18]).unwrap();
    assert_eq!(other.put_first(&start.message()).await.0.status, 401);

    // With `ipv6_prefix_len = 128` every address is its own client again.
    let gw = TestGateway::start(&format!(
        "{PROXIED}[login]\nipv6_prefix_len = 128\nmax_failures_per_ip = 5\nmax_failures_per_user = 1000"
    ))
    .await;
    for n in 1..=10u32 {
        let ip = v6(&format!("2001:db8:1:2::{n:x}"));
        assert_eq!(
            guess_via_proxy(&gw, ip, "victim").await,
            (401, Some(401)),
            "address {n}"
        );
    }
}

// ---------------------------------------------------------------------------
// Item 3: bounded names, capped exchanges
// ---------------------------------------------------------------------------

#[tokio::test]
async fn user_names_over_256_bytes_are_refused_and_store_nothing() {
    let gw = TestGateway::start("[login]\nmax_failures_per_ip = 100000").await;
    let mut http = RawHttp::connect(gw.addr, Some(v4(20))).await;
    // 256 bytes is the limit, counted in bytes, not characters.
    for (name, accepted) in [
        ("a".repeat(256), true),
        ("a".repeat(257), false),
        ("é".repeat(128), true),
        ("é".repeat(129), false),
    ] {
        let start = ClientFirst::new(&name, "x", &[1u8; 18]).unwrap();
        let (reply, begun) = http.put_first(&start.message()).await;
        if accepted {
            assert!(begun.is_some(), "{} bytes: {:?}", name.len(), reply.json);
        } else {
            assert_eq!(
                scram_error(&reply),
                "e=invalid-encoding",
                "{} bytes",
                name.len()
            );
        }
    }
    assert_eq!(value(&scrape(&gw).await, EXCHANGES), 2);
    // A flood of long names: every one refused in clear, none kept.
    for i in 0..500 {
        let name = format!("{i:04}{}", "x".repeat(2000));
        let start = ClientFirst::new(&name, "x", &[1u8; 18]).unwrap();
        let (reply, begun) = http.put_first(&start.message()).await;
        assert!(begun.is_none());
        assert_eq!(scram_error(&reply), "e=invalid-encoding", "request {i}");
    }
    assert_eq!(value(&scrape(&gw).await, EXCHANGES), 2);
}

/// A first request for `user` from `ip` (through the proxy), its reply
/// status and, if it made one, the exchange.
async fn start_from(gw: &TestGateway, ip: IpAddr) -> (Reply, Option<(RawHttp, Begun)>) {
    let mut http = RawHttp::connect(gw.addr, None).await.forwarded_for(ip);
    let start = ClientFirst::new("someone", "x", &[1u8; 18]).unwrap();
    let (reply, begun) = http.put_first(&start.message()).await;
    (reply, begun.map(|b| (http, b)))
}

fn retry_after(reply: &Reply) -> u64 {
    reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Fills the exchange table of `nodes` (one fleet) to its caps — 20 per IP
/// prefix, 50 in all, 5 s each — and checks that a full table refuses and
/// never grows, that consuming an exchange frees its slot at once, and
/// expiry every slot.
async fn assert_the_exchange_caps_hold(nodes: &[&TestGateway]) {
    let node = |i: usize| nodes[i % nodes.len()];
    let live = || async { value(&scrape(nodes[0]).await, EXCHANGES) };
    assert_eq!(live().await, 0);
    // One /64, rotating addresses: 20 exchanges, then 429.
    let mut held = Vec::new();
    for n in 1..=25u32 {
        let (reply, begun) = start_from(node(n as usize), v6(&format!("2001:db8:a::{n:x}"))).await;
        if n <= 20 {
            held.push(begun.unwrap_or_else(|| panic!("{n}: {:?}", reply.json)));
        } else {
            assert!(begun.is_none());
            assert_eq!(reply.status, 429, "{n}: {:?}", reply.json);
            assert_eq!(reply.json["status"], "rate_limited");
            assert!(
                (1..=5).contains(&retry_after(&reply)),
                "{:?}",
                reply.headers
            );
        }
    }
    assert_eq!(live().await, 20);
    // Other clients fill the rest: 30 more in all, then 503 for everyone.
    for i in 0..30usize {
        let ip = if i % 2 == 0 {
            v6(&format!("2001:db8:b:{i:x}::1"))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, u8::try_from(i).unwrap()))
        };
        let (reply, begun) = start_from(node(i), ip).await;
        held.push(begun.unwrap_or_else(|| panic!("{i}: {:?}", reply.json)));
    }
    assert_eq!(live().await, 50);
    for (i, ip) in [v6("2001:db8:c::1"), v4(30), v6("2001:db8:a::99")]
        .into_iter()
        .enumerate()
    {
        let (reply, begun) = start_from(node(i), ip).await;
        assert!(begun.is_none());
        let expected = if i == 2 { 429 } else { 503 };
        assert_eq!(reply.status, expected, "{ip}: {:?}", reply.json);
        assert!(
            (1..=5).contains(&retry_after(&reply)),
            "{:?}",
            reply.headers
        );
    }
    assert_eq!(live().await, 50, "a full table does not grow");
    // A second request consumes its exchange: its slot is free at once.
    let (mut http, begun) = held.pop().unwrap();
    let second = http
        .put_second_raw(&begun, &serde_json::json!({"sid": begun.sid}))
        .await;
    assert_eq!(sealed_error(&second), "e=invalid-encoding");
    assert_eq!(live().await, 49);
    let (reply, begun) = start_from(node(1), v6("2001:db8:c::1")).await;
    assert!(begun.is_some(), "{:?}", reply.json);
    assert_eq!(live().await, 50);
    // Expiry frees every slot, and counts nothing after.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(live().await, 0);
    let (reply, begun) = start_from(node(0), v6("2001:db8:a::1")).await;
    assert!(begun.is_some(), "{:?}", reply.json);
    assert_eq!(live().await, 1);
    for node in nodes {
        let text = scrape(node).await;
        let refused = value(&text, "wsgate_login_exchanges_refused_total{reason=\"ip\"}")
            + value(
                &text,
                "wsgate_login_exchanges_refused_total{reason=\"store\"}",
            );
        assert!(refused > 0, "{text}");
    }
}

const CAPPED: &str = "trusted_proxies = [\"127.0.0.1\"]\n[proxy]\nclient_ip_header = \"x-forwarded-for\"\n[login]\nmax_exchanges = 50\nmax_exchanges_per_ip = 20\nexchange_ttl_secs = 5";

#[tokio::test]
async fn live_exchanges_are_capped_per_ip_prefix_and_in_all_in_memory() {
    let gw = TestGateway::start(CAPPED).await;
    assert_the_exchange_caps_hold(&[&gw]).await;
}

#[tokio::test]
async fn live_exchanges_are_capped_per_ip_prefix_and_in_all_on_a_redis_fleet() {
    let Some((a, b)) = redis_fleet(CAPPED).await else {
        return;
    };
    assert_the_exchange_caps_hold(&[&a, &b]).await;
}
