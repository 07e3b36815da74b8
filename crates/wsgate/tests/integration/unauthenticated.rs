//! What a connection that has not completed KEY_INIT may cost (issue 11,
//! items 5 and 13): its first message is limited to what a KEY_INIT can be
//! (1009 above it, found at the frame header, nothing buffered), such
//! connections are capped per IP (`[limits] max_unauthenticated_per_ip`,
//! HTTP 429 at the upgrade), and one source cannot fill `max_connections`
//! with them. Also the event queue's bound in bytes (`send_queue_bytes`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use wsgate_client::login;
use wsgate_proto::envelope::MessageType;

use crate::channels::{api_publish, channels_toml};
use crate::metrics::{scrape, value};
use crate::util::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wsgate.v1\r\n\r\n";

/// The default `[limits] max_unauthenticated_per_ip`.
const CAP: usize = 64;

/// A `/ws` socket spoken by hand, from a chosen source address.
struct Ws {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// What an upgrade request got.
enum Opened {
    Upgraded(Ws),
    /// Not a 101: the status and the response head.
    Refused(u16, String),
}

impl Opened {
    fn upgraded(self) -> Ws {
        match self {
            Self::Upgraded(ws) => ws,
            Self::Refused(status, head) => panic!("refused with {status}: {head}"),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn open(addr: SocketAddr, from: IpAddr) -> Opened {
    open_with(addr, from, "").await
}

/// [`open`] with `extra` header lines (each ending in CRLF) in the upgrade.
async fn open_with(addr: SocketAddr, from: IpAddr, extra: &str) -> Opened {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let request = UPGRADE.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1);
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).into_owned();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
            if status != 101 {
                return Opened::Refused(status, head);
            }
            buf.drain(..p + 4);
            return Opened::Upgraded(Ws { tcp, buf });
        }
        let mut chunk = [0u8; 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) => panic!("closed before a response: {buf:?}"),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no response in time"),
        }
    }
}

/// The length of the server frame at the start of `buf`, if its header is there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)?;
    let (header, len) = match b1 & 0x7f {
        126 => (
            4,
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (10, usize::try_from(u64::from_be_bytes(bytes)).ok()?)
        }
        n => (2, usize::from(n)),
    };
    Some(header + len)
}

/// One masked client frame (mask 0: the payload goes as it is).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = client_header(fin, opcode, payload.len());
    f.extend_from_slice(payload);
    f
}

/// The header of a masked client frame of `len` bytes, mask 0.
fn client_header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match len {
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
    f.extend_from_slice(&[0; 4]);
    f
}

impl Ws {
    /// The next server frame: opcode and payload; `None` at EOF.
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

    async fn hello(&mut self) -> wsgate_proto::key_exchange::Hello {
        let (opcode, hello) = tokio::time::timeout(Duration::from_secs(10), self.frame())
            .await
            .expect("HELLO in time")
            .expect("HELLO");
        assert_eq!((opcode, hello[0]), (0x2, MessageType::Hello as u8));
        serde_json::from_slice(&hello[8..]).unwrap()
    }

    /// The code of the server's close frame, reading past anything else.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (opcode, payload) = self.frame().await?;
            if opcode == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }

    /// The close code, or `None` if none came within `within`.
    async fn close_within(&mut self, within: Duration) -> Option<u16> {
        tokio::time::timeout(within, self.close_code())
            .await
            .ok()
            .flatten()
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// 0. The 101 and HELLO leave in one write
// ---------------------------------------------------------------------------

/// How many data-carrying TCP segments the socket with local port `port`
/// has received, from the kernel's own count (`ss -ti`: `data_segs_in`).
fn data_segments_in(port: u16) -> u64 {
    let out = std::process::Command::new("ss")
        .args(["-tinH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|field| field.strip_prefix("data_segs_in:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no data_segs_in in `ss -ti` for port {port}: {text:?}"))
}

/// The gateway holds a `/ws` upgrade's 101 until HELLO is queued and writes
/// both with one `send(2)`: the client's kernel counts one data segment
/// for the two (without the hold it counts two: hyper's write of the 101,
/// then the connection task's HELLO).
#[tokio::test]
async fn the_101_and_hello_arrive_in_one_segment() {
    let gw = TestGateway::start("").await;
    for _ in 0..10 {
        let mut tcp = tcp_from(gw.addr, ip(1)).await;
        let port = tcp.local_addr().unwrap().port();
        tcp.write_all(UPGRADE.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let (end, hello_len) = loop {
            if let Some(p) = find(&got, b"\r\n\r\n")
                && let Some(len) = frame_len(&got[p + 4..])
                && got.len() >= p + 4 + len
            {
                break (p + 4, len);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
                .await
                .expect("the 101 and HELLO in time")
                .unwrap();
            assert!(n > 0, "closed before HELLO: {got:?}");
            got.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
        assert!(head.starts_with("http/1.1 101 "), "{head}");
        assert!(
            head.contains("sec-websocket-protocol: wsgate.v1\r\n"),
            "{head}"
        );
        assert_eq!(
            got.len(),
            end + hello_len,
            "nothing but HELLO behind the 101"
        );
        assert_eq!(
            data_segments_in(port),
            1,
            "the 101 and HELLO came in separate segments"
        );
        // And the connection goes on as ever: HELLO parses.
        let mut ws = Ws {
            tcp,
            buf: got[end..].to_vec(),
        };
        assert_eq!(ws.hello().await.ip, "127.0.0.1");
    }
}

// ---------------------------------------------------------------------------
// 1. The first message is a KEY_INIT or too big
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_first_message_larger_than_any_key_init_closes_1009_without_being_buffered() {
    let gw = TestGateway::start("").await;
    // One frame over the limit (the largest KEY_INIT is 8 + max_name_len +
    // 145 = 1177 bytes by default).
    let mut ws = open(gw.addr, ip(1)).await.upgraded();
    ws.hello().await;
    ws.send(&client_frame(true, 2, &[0x02; 1178])).await;
    assert_eq!(ws.close_within(Duration::from_secs(5)).await, Some(1009));

    // The header of a 1 MiB frame alone: refused at once, before any of
    // its payload arrives (nothing waits for, or buffers, the megabyte).
    let mut ws = open(gw.addr, ip(1)).await.upgraded();
    ws.hello().await;
    ws.send(&client_header(true, 2, 1 << 20)).await;
    ws.send(&[0x02; 100]).await;
    assert_eq!(ws.close_within(Duration::from_secs(3)).await, Some(1009));

    // Fragments, each small, too big together.
    let mut ws = open(gw.addr, ip(1)).await.upgraded();
    ws.hello().await;
    ws.send(&client_frame(false, 2, &[0x02; 500])).await;
    for _ in 0..2 {
        ws.send(&client_frame(false, 0, &[0x02; 500])).await;
    }
    ws.send(&client_frame(true, 0, &[0x02; 10])).await;
    assert_eq!(ws.close_within(Duration::from_secs(5)).await, Some(1009));

    // A message of KEY_INIT size that is no KEY_INIT is still a 4400.
    let mut ws = open(gw.addr, ip(1)).await.upgraded();
    ws.hello().await;
    ws.send(&client_frame(true, 2, &[0x02; 1177])).await;
    assert_eq!(ws.close_within(Duration::from_secs(5)).await, Some(4400));

    // A real login and KEY_INIT work, and after KEY_INIT the normal limit
    // (1 MiB) applies.
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut conn = session.connect(&gw.client()).await.unwrap();
    let big = vec![7u8; 200_000];
    assert_eq!(conn.request("sys.echo", &big, true).await.unwrap(), big);
    // A KEY_INIT with a long session id (the name) is not too big: 4401.
    let mut ws = open(gw.addr, ip(1)).await.upgraded();
    let hello = ws.hello().await;
    let long_name = "A".repeat(1024);
    ws.send(&client_frame(
        true,
        2,
        &key_init_message(&session, &hello, &long_name),
    ))
    .await;
    assert_eq!(ws.close_within(Duration::from_secs(5)).await, Some(4401));
}

// ---------------------------------------------------------------------------
// 2. 500 unauthenticated senders of 1 MB leave the RSS where it was
// ---------------------------------------------------------------------------

/// `VmRSS` (or another `/proc/<pid>/status` field) in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        * 1024
}

/// `count` sockets from 127.0.0.`first_ip`.. (50 per address, under the
/// per-IP cap) that each read HELLO and then send a 1 MiB binary frame;
/// returns their close codes once all are done.
async fn senders_of_a_megabyte(
    addr: SocketAddr,
    count: usize,
    first_ip: u8,
) -> std::collections::BTreeMap<Option<u16>, usize> {
    let frame = Arc::new(client_frame(true, 2, &vec![0x02; 1 << 20]));
    let permits = Arc::new(tokio::sync::Semaphore::new(100));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let from = ip(first_ip + (i / 50) as u8);
        opening.spawn(async move {
            let mut ws = open(addr, from).await.upgraded();
            ws.hello().await;
            drop(permit);
            ws
        });
    }
    let mut sockets = Vec::with_capacity(count);
    while let Some(ws) = opening.join_next().await {
        sockets.push(ws.unwrap());
    }
    // All of them open at once, then all send.
    let mut sending = tokio::task::JoinSet::new();
    for mut ws in sockets {
        let frame = frame.clone();
        sending.spawn(async move {
            let _ = ws.tcp.write_all(&frame).await;
            ws.close_within(Duration::from_secs(15)).await
        });
    }
    let mut codes = std::collections::BTreeMap::new();
    while let Some(code) = sending.join_next().await {
        *codes.entry(code.unwrap()).or_insert(0) += 1;
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_unauthenticated_senders_of_a_megabyte_leave_the_rss_where_it_was() {
    const MB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, "metrics_listen = \"off\"\n").unwrap();
    let data = dir.path().join("data");
    let gw = crate::cli::serve(&[
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let pid = gw.child.id();
    // A first round warms the process up (worker threads, their allocator
    // arenas, the tokio and hyper pools): the baseline is a server that
    // has served this once.
    let warm = senders_of_a_megabyte(gw.addr, 50, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc_status(pid, "VmRSS:");
    let peak_before = proc_status(pid, "VmHWM:");
    let started = Instant::now();
    let codes = senders_of_a_megabyte(gw.addr, 500, 10).await;
    let sent_in = started.elapsed();
    let peak = proc_status(pid, "VmHWM:");
    // Every connection is gone once the server has seen each close.
    let mut after = proc_status(pid, "VmRSS:");
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = after.min(proc_status(pid, "VmRSS:"));
    }
    eprintln!(
        "RSS before {} KiB, after {} KiB (grew {} KiB); peak {} KiB (was {} KiB); \
         500 senders done in {sent_in:?}: {codes:?}; warm-up: {warm:?}",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024,
        peak / 1024,
        peak_before / 1024,
    );
    assert!(
        after < before + 10 * MB,
        "RSS grew by {} KiB (before {} KiB, after {} KiB)",
        (after - before) / 1024,
        before / 1024,
        after / 1024
    );
    assert_eq!(codes.get(&Some(1009)), Some(&500), "{codes:?}");
}

// ---------------------------------------------------------------------------
// 3. max_unauthenticated_per_ip
// ---------------------------------------------------------------------------

/// The `Retry-After` of a refused upgrade, checked to be there.
fn retry_after(head: &str) -> u64 {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no Retry-After in {head}"))
}

/// Opens from `from` until one is accepted, for up to 3 s (a closed
/// socket's count is given back when the server has seen it go).
async fn open_eventually(addr: SocketAddr, from: IpAddr) -> Ws {
    let started = Instant::now();
    loop {
        match open(addr, from).await {
            Opened::Upgraded(ws) => return ws,
            Opened::Refused(status, head) => {
                assert_eq!(status, 429, "{head}");
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "still refused: {head}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn unauthenticated_sockets_are_capped_per_ip_until_key_ack_or_close() {
    let gw = TestGateway::start("").await;
    let (a, b) = (ip(30), ip(31));
    let session_a = login(&gw.client().local_addr(a), ALICE, ALICE_PASSWORD)
        .await
        .unwrap();
    let mut held = Vec::new();
    for i in 0..CAP {
        let mut ws = match open(gw.addr, a).await {
            Opened::Upgraded(ws) => ws,
            Opened::Refused(status, head) => panic!("socket {i} refused with {status}: {head}"),
        };
        let hello = ws.hello().await;
        held.push((ws, hello));
    }
    // One more from that address: 429 at the upgrade, with Retry-After.
    match open(gw.addr, a).await {
        Opened::Upgraded(_) => panic!("socket {} from one IP was accepted", CAP + 1),
        Opened::Refused(status, head) => {
            assert_eq!(status, 429, "{head}");
            assert!((1..=300).contains(&retry_after(&head)), "{head}");
        }
    }
    // Another address is untouched: it connects, logs in and establishes.
    let mut other = open(gw.addr, b).await.upgraded();
    other.hello().await;
    let from_b = gw.client().local_addr(b);
    let bob = login(&from_b, BOB, BOB_PASSWORD).await.unwrap();
    let mut conn = bob.connect(&from_b).await.unwrap();
    assert_eq!(conn.request("sys.echo", b"b", true).await.unwrap(), b"b");

    // One of the held sockets completes KEY_INIT: its place is free.
    let (mut ws, hello) = held.pop().unwrap();
    ws.send(&client_frame(
        true,
        2,
        &key_init_message(&session_a, &hello, &session_a.id),
    ))
    .await;
    let (opcode, ack) = ws.frame().await.expect("KEY_ACK");
    assert_eq!((opcode, ack[0]), (0x2, MessageType::KeyAck as u8));
    let mut replacement = open_eventually(gw.addr, a).await;
    replacement.hello().await;
    assert!(matches!(open(gw.addr, a).await, Opened::Refused(429, _)));
    // One closes: its place is free too.
    drop(held.pop());
    let mut replacement = open_eventually(gw.addr, a).await;
    replacement.hello().await;
    assert!(matches!(open(gw.addr, a).await, Opened::Refused(429, _)));

    let metrics = scrape(&gw).await;
    assert!(
        value(
            &metrics,
            "wsgate_upgrades_refused_total{reason=\"unauthenticated_per_ip\"}"
        ) >= 3,
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "wsgate_connections_unauthenticated"),
        CAP as u64 + 1,
        "{metrics}"
    );
    drop(ws);
}

#[tokio::test]
async fn behind_a_trusted_proxy_ipv6_clients_are_capped_per_prefix() {
    let gw = TestGateway::start(
        "trusted_proxies = [\"127.0.0.1\"]\n[proxy]\nclient_ip_header = \"x-forwarded-for\"\n",
    )
    .await;
    let proxy = ip(1);
    let from = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    // Every address of one /64 (the default `ipv6_prefix_len`) counts as one.
    let mut held = Vec::new();
    for i in 0..CAP {
        let client = format!("2001:db8:1:2::{:x}", i + 1);
        let mut ws = open_with(gw.addr, proxy, &from(&client)).await.upgraded();
        ws.hello().await;
        held.push(ws);
    }
    let rotated = from("2001:db8:1:2:ffff:ffff:ffff:ffff");
    assert!(matches!(
        open_with(gw.addr, proxy, &rotated).await,
        Opened::Refused(429, _)
    ));
    // The next /64, and an IPv4 client through the same proxy, are not.
    for client in ["2001:db8:1:3::1", "198.51.100.7"] {
        let mut ws = open_with(gw.addr, proxy, &from(client)).await.upgraded();
        ws.hello().await;
    }
    drop(held);
}

// ---------------------------------------------------------------------------
// 5. One source cannot fill max_connections with sockets that never
//    send KEY_INIT
// ---------------------------------------------------------------------------

#[tokio::test]
async fn one_source_cannot_fill_max_connections_with_sockets_that_never_send_key_init() {
    let gw = TestGateway::start("[limits]\nmax_connections = 100").await;
    let attacker = ip(40);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        match open(gw.addr, attacker).await {
            Opened::Upgraded(mut ws) => {
                ws.hello().await;
                held.push(ws);
            }
            // Dropped at once, as a client told 429 would.
            Opened::Refused(status, head) => {
                assert_eq!(status, 429, "{head}");
                refused += 1;
            }
        }
    }
    assert_eq!((held.len(), refused), (CAP, 100 - CAP));
    // Someone else still gets in, logs in and works.
    let from = gw.client().local_addr(ip(41));
    let session = login(&from, ALICE, ALICE_PASSWORD).await.unwrap();
    let mut conn = session.connect(&from).await.unwrap();
    assert_eq!(conn.request("sys.echo", b"in", true).await.unwrap(), b"in");
    drop(held);
}

// ---------------------------------------------------------------------------
// 4. The event queue is bounded in bytes too
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_is_disconnected_after_send_queue_bytes() {
    // Default send_queue (1024 events) and send_queue_bytes (4 MiB); the
    // write timeout out of the way, so only the queue can end it.
    let toml = format!("{}\n[limits]\nsend_timeout_secs = 120\n", channels_toml());
    let gw = TestGateway::start(&toml).await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut slow = session.connect(&gw.client()).await.unwrap();
    let bob = login(&gw.client(), BOB, BOB_PASSWORD).await.unwrap();
    let mut fast = bob.connect(&gw.client()).await.unwrap();
    for conn in [&mut slow, &mut fast] {
        conn.call(MessageType::Subscribe, "news", b"", false)
            .await
            .unwrap();
    }
    // 200 events of 256 KiB (50 MiB); `slow` reads none of them meanwhile.
    const EVENTS: usize = 200;
    const EVENT: usize = 256 << 10;
    let pad = "x".repeat(EVENT - 64);
    for i in 0..EVENTS {
        let reply = api_publish(gw.addr, "news", json!({"i": i, "pad": pad})).await;
        assert_eq!(reply.status, 200);
        let ev = tokio::time::timeout(Duration::from_secs(10), fast.recv())
            .await
            .expect("the fast consumer is served")
            .unwrap();
        assert!(ev.body.starts_with(format!("{{\"i\":{i},").as_bytes()));
    }
    // Now `slow` reads: the events that were in flight (socket buffers and
    // its queue), then the close.
    let mut received = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.recv()).await {
            Ok(Ok(_)) => received += 1,
            Ok(Err(e)) => break e.close_code(),
            Err(_) => break None,
        }
    };
    eprintln!("the slow consumer got {received} of {EVENTS} events, then close {code:?}");
    assert_eq!(code, Some(4429), "after {received} events");
    // Its queue held at most 4 MiB: beyond that only what the kernel's
    // socket buffers (a few MiB on loopback) and one written batch held.
    assert!(
        received * EVENT < (4 << 20) + (12 << 20),
        "{received} events of {EVENT} bytes before the close"
    );
    let metrics = scrape(&gw).await;
    assert_eq!(value(&metrics, "wsgate_queue_drops_total"), 1, "{metrics}");
}

// ---------------------------------------------------------------------------
// 6. TCP connections that send no request are capped per IP too
// ---------------------------------------------------------------------------

async fn tcp_from(addr: SocketAddr, from: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether the server closed `tcp` within `within` (EOF or reset).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 256];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn tcp_connections_that_send_no_request_are_capped_per_ip() {
    let gw = TestGateway::start("").await;
    let (a, b) = (ip(50), ip(51));
    let mut silent = Vec::new();
    for _ in 0..CAP {
        silent.push(tcp_from(gw.addr, a).await);
    }
    // One more from that address is closed at once (not after the 10 s
    // header deadline); the others stay open.
    let mut extra = tcp_from(gw.addr, a).await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "socket {} from one IP sending nothing was kept",
        CAP + 1
    );
    assert!(!closed_within(&mut silent[0], Duration::from_millis(200)).await);
    // Another address is untouched.
    let from_b = gw.client().local_addr(b);
    let session = login(&from_b, BOB, BOB_PASSWORD).await.unwrap();
    let mut conn = session.connect(&from_b).await.unwrap();
    assert_eq!(conn.request("sys.echo", b"b", true).await.unwrap(), b"b");
    // A request on one of them frees its place (the connection stays, as
    // a keep-alive connection, under the header deadline).
    let mut talker = silent.pop().unwrap();
    talker
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut reply = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), talker.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &reply[..n]);
    let started = Instant::now();
    loop {
        let mut again = tcp_from(gw.addr, a).await;
        if !closed_within(&mut again, Duration::from_millis(300)).await {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the place was not given back"
        );
    }
    let metrics = scrape(&gw).await;
    assert!(
        value(
            &metrics,
            "wsgate_connections_refused_total{reason=\"no_request_per_ip\"}"
        ) >= 1,
        "{metrics}"
    );
    drop((silent, talker));
}
