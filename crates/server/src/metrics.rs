//! Counters for `/metrics`, in the Prometheus text format.
//!
//! A fixed set of atomics: cheap on the hot path (one relaxed add), no
//! labels chosen by clients (so no unbounded series), nothing secret.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the upstream latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge that goes up and down.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Frame counters of one direction.
#[derive(Debug, Default)]
pub(crate) struct FrameCounters {
    pub(crate) plain_frames: Counter,
    pub(crate) plain_bytes: Counter,
    pub(crate) enc_frames: Counter,
    pub(crate) enc_bytes: Counter,
}

impl FrameCounters {
    pub(crate) fn record(&self, encrypted: bool, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        if encrypted {
            self.enc_frames.inc();
            self.enc_bytes.add(bytes);
        } else {
            self.plain_frames.inc();
            self.plain_bytes.add(bytes);
        }
    }
}

/// Why a KEY_INIT was refused with 4401 (protocol.md §5.2).
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyInitRefusal {
    /// No such session in the state store.
    UnknownSession,
    /// The session has expired.
    Expired,
    /// The connection's observed IP is not the session's.
    IpMismatch,
    /// `kid` is not the key the login bound.
    WrongKey,
    /// The HPKE open failed (wrong session key, another HELLO's nonce).
    OpenFailed,
}

impl KeyInitRefusal {
    /// The `cause` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::UnknownSession => "unknown_session",
            Self::Expired => "expired",
            Self::IpMismatch => "ip_mismatch",
            Self::WrongKey => "wrong_key",
            Self::OpenFailed => "open_failed",
        }
    }

    const ALL: [Self; 5] = [
        Self::UnknownSession,
        Self::Expired,
        Self::IpMismatch,
        Self::WrongKey,
        Self::OpenFailed,
    ];
}

/// One counter per [`KeyInitRefusal`].
#[derive(Debug, Default)]
pub(crate) struct KeyInitRefusals([Counter; 5]);

impl KeyInitRefusals {
    /// Counts one refusal.
    pub(crate) fn inc(&self, cause: KeyInitRefusal) {
        self.0[cause as usize].inc();
    }
}

/// Everything a node counts.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) connections_open: Gauge,
    pub(crate) connections_total: Counter,
    /// WebSocket connections open now that have not completed KEY_INIT.
    pub(crate) connections_unauthenticated: Gauge,
    /// Upgrades refused with 429: their IP (prefix) held
    /// `max_unauthenticated_per_ip` connections without KEY_INIT.
    pub(crate) upgrades_refused_unauthenticated: Counter,
    /// TCP connections closed at accept: `max_connections` reached.
    pub(crate) connections_refused_full: Counter,
    /// TCP connections closed at accept: their IP (prefix) held
    /// `max_unauthenticated_per_ip` connections without a request yet.
    pub(crate) connections_refused_silent: Counter,
    pub(crate) logins_ok: Counter,
    pub(crate) logins_failed: Counter,
    pub(crate) logins_limited: Counter,
    /// Sealed login messages that did not open (protocol.md §4.1).
    pub(crate) logins_bad_seal: Counter,
    /// Login exchanges live in the state store (fleet-wide on Redis), as
    /// read at the last scrape (`http::auth::refresh_gauges`).
    pub(crate) login_exchanges: Gauge,
    /// First requests refused because their IP (prefix) held
    /// `max_exchanges_per_ip` live exchanges (429).
    pub(crate) login_exchanges_refused_ip: Counter,
    /// First requests refused because the store held `max_exchanges` (503).
    pub(crate) login_exchanges_refused_full: Counter,
    pub(crate) key_establishments_ok: Counter,
    pub(crate) key_establishments_failed: Counter,
    /// Refused KEY_INITs (close 4401) by cause; on the wire every cause
    /// gets the same close (issue 11, item 9).
    pub(crate) key_init_refusals: KeyInitRefusals,
    pub(crate) frames_in: FrameCounters,
    pub(crate) frames_out: FrameCounters,
    pub(crate) verification_failures: Counter,
    pub(crate) upstream_latency: Histogram,
    pub(crate) upstream_errors: Counter,
    pub(crate) queue_drops: Counter,
    pub(crate) send_timeouts: Counter,
    /// Events replayed after a SUBSCRIBE with `since` (protocol.md §6.5).
    pub(crate) history_replayed: Counter,
    /// Gaps in a stream (events this node did not get from the feed)
    /// filled from the stream. Shared with the hub's task.
    pub(crate) history_gaps_filled: std::sync::Arc<Counter>,
    /// RESYNCs sent to clients.
    pub(crate) history_resyncs: Counter,
    /// PRESENCE_EVENTs sent to clients (protocol.md §6.6).
    pub(crate) presence_events_sent: Counter,
    /// Users present through this node (one per channel and user), as
    /// read at the last scrape.
    pub(crate) presence_users: Gauge,
    /// Session and exchange records that did not open (forged, copied
    /// under another id, altered, or sealed under another `server_secret`)
    /// and were treated as absent. Shared with the node's
    /// `store::SealedState`.
    pub(crate) state_records_refused: std::sync::Arc<Counter>,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Metrics {
    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        family(
            &mut o,
            "wsgate_connections_open",
            "gauge",
            "WebSocket connections open now.",
        );
        let _ = writeln!(o, "wsgate_connections_open {}", self.connections_open.get());
        family(
            &mut o,
            "wsgate_connections_total",
            "counter",
            "WebSocket connections accepted.",
        );
        let _ = writeln!(
            o,
            "wsgate_connections_total {}",
            self.connections_total.get()
        );
        family(
            &mut o,
            "wsgate_connections_unauthenticated",
            "gauge",
            "WebSocket connections open now that have not completed KEY_INIT.",
        );
        let _ = writeln!(
            o,
            "wsgate_connections_unauthenticated {}",
            self.connections_unauthenticated.get()
        );
        family(
            &mut o,
            "wsgate_upgrades_refused_total",
            "counter",
            "WebSocket upgrades refused with 429, by reason: unauthenticated_per_ip, the IP or IPv6 prefix held limits.max_unauthenticated_per_ip connections without KEY_INIT.",
        );
        let _ = writeln!(
            o,
            "wsgate_upgrades_refused_total{{reason=\"unauthenticated_per_ip\"}} {}",
            self.upgrades_refused_unauthenticated.get()
        );
        family(
            &mut o,
            "wsgate_connections_refused_total",
            "counter",
            "TCP connections closed at accept, by reason: max_connections reached, or no_request_per_ip, the IP or IPv6 prefix held limits.max_unauthenticated_per_ip connections that had not sent a request yet.",
        );
        for (reason, c) in [
            ("max_connections", &self.connections_refused_full),
            ("no_request_per_ip", &self.connections_refused_silent),
        ] {
            let _ = writeln!(
                o,
                "wsgate_connections_refused_total{{reason=\"{reason}\"}} {}",
                c.get()
            );
        }
        family(
            &mut o,
            "wsgate_logins_total",
            "counter",
            "Login requests by outcome: ok, failed and limited count second requests; bad_seal, sealed messages of either request that did not open.",
        );
        for (result, c) in [
            ("ok", &self.logins_ok),
            ("failed", &self.logins_failed),
            ("limited", &self.logins_limited),
            ("bad_seal", &self.logins_bad_seal),
        ] {
            let _ = writeln!(o, "wsgate_logins_total{{result=\"{result}\"}} {}", c.get());
        }
        family(
            &mut o,
            "wsgate_login_exchanges",
            "gauge",
            "Login exchanges live now (first requests awaiting their second), in the whole state store (every node's, on Redis).",
        );
        let _ = writeln!(o, "wsgate_login_exchanges {}", self.login_exchanges.get());
        family(
            &mut o,
            "wsgate_login_exchanges_refused_total",
            "counter",
            "First login requests refused because the exchange table was full: for their IP or IPv6 prefix (ip, 429) or in the whole store (store, 503).",
        );
        for (reason, c) in [
            ("ip", &self.login_exchanges_refused_ip),
            ("store", &self.login_exchanges_refused_full),
        ] {
            let _ = writeln!(
                o,
                "wsgate_login_exchanges_refused_total{{reason=\"{reason}\"}} {}",
                c.get()
            );
        }
        family(
            &mut o,
            "wsgate_key_establishments_total",
            "counter",
            "KEY_INITs by outcome.",
        );
        for (result, c) in [
            ("ok", &self.key_establishments_ok),
            ("failed", &self.key_establishments_failed),
        ] {
            let _ = writeln!(
                o,
                "wsgate_key_establishments_total{{result=\"{result}\"}} {}",
                c.get()
            );
        }
        family(
            &mut o,
            "wsgate_key_init_refusals_total",
            "counter",
            "KEY_INITs refused with 4401, by cause (the close itself does not tell them apart).",
        );
        for cause in KeyInitRefusal::ALL {
            let _ = writeln!(
                o,
                "wsgate_key_init_refusals_total{{cause=\"{}\"}} {}",
                cause.label(),
                self.key_init_refusals.0[cause as usize].get()
            );
        }
        family(
            &mut o,
            "wsgate_frames_total",
            "counter",
            "Protected frames by direction and ENC.",
        );
        family(
            &mut o,
            "wsgate_frame_bytes_total",
            "counter",
            "Bytes of protected frames by direction and ENC.",
        );
        for (dir, f) in [("in", &self.frames_in), ("out", &self.frames_out)] {
            for (enc, frames, bytes) in [
                ("false", &f.plain_frames, &f.plain_bytes),
                ("true", &f.enc_frames, &f.enc_bytes),
            ] {
                let _ = writeln!(
                    o,
                    "wsgate_frames_total{{direction=\"{dir}\",enc=\"{enc}\"}} {}",
                    frames.get()
                );
                let _ = writeln!(
                    o,
                    "wsgate_frame_bytes_total{{direction=\"{dir}\",enc=\"{enc}\"}} {}",
                    bytes.get()
                );
            }
        }
        family(
            &mut o,
            "wsgate_verification_failures_total",
            "counter",
            "Protected frames that failed to verify (closed 4400).",
        );
        let _ = writeln!(
            o,
            "wsgate_verification_failures_total {}",
            self.verification_failures.get()
        );
        family(
            &mut o,
            "wsgate_upstream_request_duration_seconds",
            "histogram",
            "Upstream route latency.",
        );
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.upstream_latency.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "wsgate_upstream_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.upstream_latency.count.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "wsgate_upstream_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.upstream_latency.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "wsgate_upstream_request_duration_seconds_sum {sum}");
        let _ = writeln!(o, "wsgate_upstream_request_duration_seconds_count {count}");
        family(
            &mut o,
            "wsgate_upstream_errors_total",
            "counter",
            "Upstream requests that ended in an ERR.",
        );
        let _ = writeln!(
            o,
            "wsgate_upstream_errors_total {}",
            self.upstream_errors.get()
        );
        family(
            &mut o,
            "wsgate_queue_drops_total",
            "counter",
            "Slow consumers disconnected because their event queue was full.",
        );
        let _ = writeln!(o, "wsgate_queue_drops_total {}", self.queue_drops.get());
        family(
            &mut o,
            "wsgate_send_timeouts_total",
            "counter",
            "Connections dropped because writing to them stalled for limits.send_timeout_secs.",
        );
        let _ = writeln!(o, "wsgate_send_timeouts_total {}", self.send_timeouts.get());
        family(
            &mut o,
            "wsgate_state_records_refused_total",
            "counter",
            "Session and login-exchange records of the state store that did not open (forged, copied under another id, altered, or sealed under another server_secret) and were treated as absent.",
        );
        let _ = writeln!(
            o,
            "wsgate_state_records_refused_total {}",
            self.state_records_refused.get()
        );
        family(
            &mut o,
            "wsgate_history_replayed_total",
            "counter",
            "Events replayed from channel history after a SUBSCRIBE with since.",
        );
        let _ = writeln!(
            o,
            "wsgate_history_replayed_total {}",
            self.history_replayed.get()
        );
        family(
            &mut o,
            "wsgate_history_gaps_filled_total",
            "counter",
            "Gaps in a history channel's events on this node (missed from the fan-out) filled from its stream.",
        );
        let _ = writeln!(
            o,
            "wsgate_history_gaps_filled_total {}",
            self.history_gaps_filled.get()
        );
        family(
            &mut o,
            "wsgate_history_resyncs_total",
            "counter",
            "RESYNCs sent: events of a history channel may have been missed.",
        );
        let _ = writeln!(
            o,
            "wsgate_history_resyncs_total {}",
            self.history_resyncs.get()
        );
        family(
            &mut o,
            "wsgate_presence_users",
            "gauge",
            "Users present on a channel through a connection of this node (per channel and user).",
        );
        let _ = writeln!(o, "wsgate_presence_users {}", self.presence_users.get());
        family(
            &mut o,
            "wsgate_presence_events_total",
            "counter",
            "PRESENCE_EVENTs (join, leave) sent to clients.",
        );
        let _ = writeln!(
            o,
            "wsgate_presence_events_total {}",
            self.presence_events_sent.get()
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_cumulative_buckets() {
        let m = Metrics::default();
        m.logins_ok.inc();
        m.frames_in.record(true, 100);
        m.upstream_latency.observe(Duration::from_millis(3));
        m.upstream_latency.observe(Duration::from_secs(20));
        let text = m.render();
        assert!(text.contains("wsgate_logins_total{result=\"ok\"} 1"));
        assert!(text.contains("wsgate_frame_bytes_total{direction=\"in\",enc=\"true\"} 100"));
        assert!(text.contains("wsgate_upstream_request_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("wsgate_upstream_request_duration_seconds_bucket{le=\"10\"} 1"));
        assert!(text.contains("wsgate_upstream_request_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("wsgate_upstream_request_duration_seconds_count 2"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }
}
