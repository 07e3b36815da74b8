//! Configuration: the TOML file as written ([`FileConfig`]) and the
//! validated, resolved form the gateway runs on ([`Config`]).
//!
//! Raw input → validated config → run: nothing starts until every value has
//! been checked, and every error names the setting and what to do about it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::channels::{ChannelRule, ChannelTable, PublishPolicy, SubscribePolicy};
pub use crate::forwarded::{ClientIpHeader, TrustedProxies};
use crate::routes::{Builtin, Route, RouteTable, Target};

/// A configuration problem, worded for the person fixing it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid setting `{setting}`: {message}")]
    Invalid {
        /// The setting, as written in the file.
        setting: String,
        /// What is wrong and what to do.
        message: String,
    },
}

fn invalid(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        message: message.into(),
    }
}

/// The configuration file as written. Every field is optional; defaults are
/// documented on [`Config`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `listen = "127.0.0.1:8080"`.
    pub listen: Option<String>,
    /// `data_dir = "wsgate-data"`.
    pub data_dir: Option<PathBuf>,
    /// `trusted_proxies = ["127.0.0.1/32"]`: peers whose client-IP header
    /// (`[proxy] client_ip_header`) is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// `[proxy]`: what the trusted proxies write.
    #[serde(default)]
    pub proxy: FileProxy,
    /// `allowed_origins = ["https://www.example.com"]`: pages on these
    /// origins may log in (CORS on `/auth/key`, `/auth/session`); `/ws`
    /// then refuses any other `Origin` but the gateway's own.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// `metrics_listen = "127.0.0.1:9090"`: where `GET /metrics` is served,
    /// apart from the client-facing listener. `"off"`: nowhere.
    pub metrics_listen: Option<String>,
    /// `session_ip_check = true`: a WebSocket must come from the login's IP.
    pub session_ip_check: Option<bool>,
    /// `state = "memory"`, `"redis://host:port"` or
    /// `"redis+cluster://host:port,host:port"`.
    pub state: Option<String>,
    /// `credentials = "sqlite"`, `"sqlite://PATH"` or `"postgres://…"`.
    pub credentials: Option<String>,
    /// `auth_module = true`: this node answers `PUT /auth/session`.
    pub auth_module: Option<bool>,
    /// `auth_redirect = "http://auth-node:8080"`: where a node without the
    /// authentication module sends logins (307) instead of answering 404.
    pub auth_redirect: Option<String>,
    /// `api_keys = ["…"]`: bearer keys for `/api/publish` and `/auth/introspect`.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// `[upstream]`.
    #[serde(default)]
    pub upstream: FileUpstream,
    /// `[[channels]]`.
    #[serde(default)]
    pub channels: Vec<FileChannel>,
    /// `[limits]`.
    #[serde(default)]
    pub limits: FileLimits,
    /// `[login]`.
    #[serde(default)]
    pub login: FileLogin,
    /// `[[routes]]`.
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    /// `[testing]`: endpoints for conformance tests and benchmarks only.
    #[serde(default)]
    pub testing: FileTesting,
    /// `[tls]`: serve `https://` / `wss://` (TLS 1.3) with this certificate.
    pub tls: Option<FileTls>,
}

/// `[tls]` as written: PEM files, paths relative to the working directory.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// `cert = "cert.pem"`: the certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// `key = "key.pem"`: the private key (PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
}

/// The certificate and key of `[tls]`; with them the gateway serves only
/// `https://` and `wss://` (TLS 1.3) on its listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

fn tls_from_file(tls: Option<&FileTls>) -> Result<Option<TlsFiles>, ConfigError> {
    let Some(t) = tls else { return Ok(None) };
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })),
        (None, _) => Err(invalid(
            "tls.cert",
            "[tls] needs `cert = \"cert.pem\"` (PEM certificate chain) and `key = \"key.pem\"`",
        )),
        (_, None) => Err(invalid(
            "tls.key",
            "[tls] needs `key = \"key.pem\"` (PEM private key) next to `cert`",
        )),
    }
}

/// `[proxy]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxy {
    /// `client_ip_header = "x-forwarded-for"` or `"forwarded"`: the one
    /// header the trusted proxies write the client's address into.
    pub client_ip_header: Option<String>,
}

/// `[upstream]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileUpstream {
    pub timeout_secs: Option<u64>,
    pub connect_timeout_secs: Option<u64>,
    pub max_idle_per_host: Option<usize>,
}

/// One `[[channels]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChannel {
    /// `user.{user}.*`, `news`, `chat.*`.
    pub pattern: String,
    /// EVENTs encrypted per connection; SUBSCRIBE and PUBLISH need ENC.
    #[serde(default)]
    pub sensitive: bool,
    /// `authenticated` (default), `owner` or `none`.
    pub subscribe: Option<String>,
    /// `api` (default), `authenticated` or `owner`.
    pub publish: Option<String>,
    /// `history = 100`: events kept per channel (protocol.md §6.5); 0 (the
    /// default) keeps none.
    pub history: Option<usize>,
    /// `history_ttl_secs = 300`: a channel's stream is forgotten after this
    /// long without a publish.
    pub history_ttl_secs: Option<u64>,
    /// `presence = true`: who is subscribed is known fleet-wide
    /// (protocol.md §6.6).
    #[serde(default)]
    pub presence: bool,
}

/// `[testing]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTesting {
    /// Serve `/raw-echo` and `/raw-echo-frames`: plain WebSocket echoes on
    /// the same stack, with no envelope, login or crypto (Autobahn
    /// conformance of both frame readers, benchmark baseline).
    pub raw_echo: Option<bool>,
}

/// `[limits]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileLimits {
    pub max_message_size: Option<usize>,
    pub max_name_len: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub key_init_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub ping_interval_secs: Option<u64>,
    pub http_body_limit: Option<usize>,
    pub http_header_timeout_secs: Option<u64>,
    pub http_body_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_unauthenticated_per_ip: Option<usize>,
    pub send_queue: Option<usize>,
    pub send_queue_bytes: Option<usize>,
    pub send_timeout_secs: Option<u64>,
    pub max_subscriptions: Option<usize>,
    pub max_history_bytes: Option<usize>,
    pub max_replay: Option<usize>,
    pub max_presence_list: Option<usize>,
    pub presence_ttl_secs: Option<u64>,
}

/// `[login]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileLogin {
    pub iterations: Option<u32>,
    pub max_failures_per_user: Option<u32>,
    pub max_failures_per_ip: Option<u32>,
    pub max_starts_per_ip: Option<u32>,
    pub failure_window_secs: Option<u64>,
    pub session_ttl_secs: Option<u64>,
    pub exchange_ttl_secs: Option<u64>,
    pub ipv6_prefix_len: Option<u8>,
    pub max_exchanges: Option<u32>,
    pub max_exchanges_per_ip: Option<u32>,
}

/// One `[[routes]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Exact name, or a prefix ending in `.*`.
    pub name: String,
    /// `echo` or `whoami`.
    pub builtin: Option<String>,
    /// `http://host:port` (forwarding arrives in a later version).
    pub upstream: Option<String>,
    /// Refuse frames without ENC.
    #[serde(default)]
    pub sensitive: bool,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses TOML text; `path` only labels errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// Limits on sizes, counts and waits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest WebSocket message; larger closes with 1009. Default 1 MiB.
    /// Until KEY_INIT the limit is the largest KEY_INIT instead
    /// ([`key_init_max_len`](wsgate_proto::key_exchange::key_init_max_len)
    /// of `max_name_len`: 1177 bytes by default), so an unauthenticated
    /// connection never makes the gateway buffer more than that.
    pub max_message_size: usize,
    /// Longest envelope name (≤ 1024). Default 1024.
    pub max_name_len: usize,
    /// Requests in flight per connection before `ERR busy`. Default 64.
    pub max_in_flight: usize,
    /// HELLO → KEY_INIT deadline; then close 4408. Default 10 s.
    pub key_init_timeout: Duration,
    /// Silence after which a connection is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// Silence after which the server pings. Default 20 s.
    pub ping_interval: Duration,
    /// Largest HTTP request body. Default 16 KiB.
    pub http_body_limit: usize,
    /// Deadline for a client to send its HTTP request headers. Default 10 s.
    pub http_header_timeout: Duration,
    /// Deadline for a client to send an HTTP request body (after the
    /// headers); then 408. Default 10 s.
    pub http_body_timeout: Duration,
    /// Concurrent TCP connections before new ones are refused. Default 200 000.
    pub max_connections: usize,
    /// WebSocket connections per IP (IPv6: per `[login] ipv6_prefix_len`
    /// prefix) that have not completed KEY_INIT; one more upgrade gets HTTP
    /// 429 with `Retry-After` (the KEY_INIT timeout) before the 101. With
    /// `key_init_timeout` this bounds what one source holds of
    /// `max_connections`. The same number caps, separately, TCP
    /// connections per peer address (trusted proxies exempt) that have not
    /// sent a request head yet: one more is closed at accept. 1..=1 000 000
    /// (no "off": set it high instead). Default 64.
    pub max_unauthenticated_per_ip: usize,
    /// Events queued per connection before a slow consumer is disconnected
    /// (close 4429). Default 1024.
    pub send_queue: usize,
    /// Bytes of events (payload and channel name) queued per connection
    /// before a slow consumer is disconnected (close 4429), whichever of
    /// this and `send_queue` is reached first; an empty queue takes one
    /// event of any size. 4096..=1 GiB. Default 4 MiB (four messages of
    /// the default `max_message_size`).
    pub send_queue_bytes: usize,
    /// How long a write to a WebSocket client may make no progress (the
    /// client stopped reading) before the connection is dropped; also
    /// bounds writing the close frame. Default 10 s.
    pub send_timeout: Duration,
    /// Channels one connection may be subscribed to. Default 256.
    pub max_subscriptions: usize,
    /// Payload bytes a channel with history keeps, beside its `history`
    /// count; the oldest events go first. Default 4 MiB.
    pub max_history_bytes: usize,
    /// Events one SUBSCRIBE with `since` may replay; a client further
    /// behind gets `recovered: false` instead of a flood. Default 1000.
    pub max_replay: usize,
    /// Users one presence reply lists; more are cut with
    /// `"truncated": true`. Default 1000.
    pub max_presence_list: usize,
    /// Within this a node that died takes its users' presence with it
    /// (each node refreshes its members every quarter of it, each alive for
    /// two thirds of it, and sweeps as often: `presence.rs`). Default 30 s.
    pub presence_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 1 << 20,
            max_name_len: wsgate_proto::envelope::MAX_NAME_LEN,
            max_in_flight: 64,
            key_init_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            http_body_limit: 16 << 10,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(10),
            max_connections: 200_000,
            max_unauthenticated_per_ip: 64,
            send_queue: 1024,
            send_queue_bytes: 4 << 20,
            send_timeout: Duration::from_secs(10),
            max_subscriptions: 256,
            max_history_bytes: 4 << 20,
            max_replay: 1000,
            max_presence_list: 1000,
            presence_ttl: Duration::from_secs(30),
        }
    }
}

/// Login policy.
///
/// Every per-IP limit here — failures, starts, live exchanges — counts an
/// IPv4 client by its address and an IPv6 client by its
/// [`ipv6_prefix_len`](Self::ipv6_prefix_len) prefix: one host usually
/// holds a whole `/64` and may rotate through it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginPolicy {
    /// PBKDF2 iterations for new users (and the fake ones). Default 600 000.
    pub iterations: u32,
    /// Proofs evaluated per user name in a window; one more is refused with
    /// 429 before its proof is checked. Checked and counted in one atomic
    /// step in the state store, so concurrent requests (on any node of a
    /// fleet) never get more. Default 10.
    pub max_failures_per_user: u32,
    /// Failures per IP (IPv6: per prefix) in a window before 429; proofs
    /// are counted as for `max_failures_per_user`, and a success gives its
    /// count back. Default 50.
    pub max_failures_per_ip: u32,
    /// First login requests (each holds an exchange for a minute) per IP
    /// (IPv6: per prefix) in a window before 429. Default 600.
    pub max_starts_per_ip: u32,
    /// The failure window. Default 5 minutes.
    pub failure_window: Duration,
    /// Session lifetime, absolute from login. Default 12 hours.
    pub session_ttl: Duration,
    /// Lifetime of a login exchange between its two requests. Default 60 s
    /// (the protocol's value; lower it only in tests).
    pub exchange_ttl: Duration,
    /// The prefix length an IPv6 client is counted by in every per-IP
    /// limit (`[login] ipv6_prefix_len`, 32..=128; 128 counts single
    /// addresses). IPv4 clients are counted by address. Default 64.
    pub ipv6_prefix_len: u8,
    /// Login exchanges (first requests awaiting their second) live at once
    /// in the state store, fleet-wide on Redis; a first request beyond it
    /// gets `503` and stores nothing. Default 100 000.
    pub max_exchanges: u32,
    /// Live login exchanges per IP (IPv6: per prefix); beyond it `429`.
    /// Default 1000.
    pub max_exchanges_per_ip: u32,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            iterations: wsgate_proto::scram::DEFAULT_ITERATIONS,
            max_failures_per_user: 10,
            max_failures_per_ip: 50,
            max_starts_per_ip: 600,
            failure_window: Duration::from_secs(300),
            session_ttl: Duration::from_secs(12 * 3600),
            exchange_ttl: Duration::from_secs(60),
            ipv6_prefix_len: 64,
            max_exchanges: 100_000,
            max_exchanges_per_ip: 1000,
        }
    }
}

impl LoginPolicy {
    /// The name `ip` is counted under by every per-IP limit: an IPv4
    /// address as itself (`198.51.100.7`), an IPv6 address as its
    /// [`ipv6_prefix_len`](Self::ipv6_prefix_len) network (`2001:db8:1:2::/64`),
    /// so that rotating addresses inside one prefix gains nothing. `ip`
    /// should be canonical (an IPv4-mapped address as IPv4), as observed
    /// IPs are ([`crate::forwarded::observed_ip`]).
    pub fn ip_group(&self, ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let len = self.ipv6_prefix_len.min(128);
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                format!("{}/{len}", Ipv6Addr::from(bits & mask))
            }
        }
    }
}

/// Upstream HTTP client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamSettings {
    /// Whole-request deadline; then `ERR upstream_timeout`. Default 10 s.
    pub timeout: Duration,
    /// TCP connect deadline. Default 2 s.
    pub connect_timeout: Duration,
    /// Idle pooled connections kept per upstream host. Default 32.
    pub max_idle_per_host: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_idle_per_host: 32,
        }
    }
}

/// An API key for upstream applications; compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(zeroize::Zeroizing<String>);

impl ApiKey {
    /// Wraps a key (at least 16 characters).
    pub fn new(key: &str) -> Result<Self, String> {
        if key.len() < 16 {
            return Err(
                "API keys must be at least 16 characters; generate one with `openssl rand -hex 32`"
                    .into(),
            );
        }
        Ok(Self(zeroize::Zeroizing::new(key.to_owned())))
    }

    /// Constant-time comparison with a presented key.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        // Length is not secret (and ct_eq of different lengths is false).
        a.len() == b.len() && bool::from(a.ct_eq(b))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Listen address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Key set, server secret and SQLite credentials. Default `wsgate-data`.
    pub data_dir: PathBuf,
    /// Proxies whose client-IP header is believed, and which header that
    /// is. Default none.
    pub trusted_proxies: TrustedProxies,
    /// Where `/metrics` is served: its own listener, loopback by default
    /// (`127.0.0.1:9090`); `None` (`metrics_listen = "off"`): nowhere.
    /// Never on the client-facing listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Origins whose pages may log in (normalized `scheme://host[:port]`).
    /// Empty (the default): none but the gateway's own, and `/ws` checks
    /// no `Origin`.
    pub allowed_origins: Vec<String>,
    /// Whether KEY_INIT must come from the login's IP. Default true.
    pub session_ip_check: bool,
    /// Sizes, counts and waits.
    pub limits: Limits,
    /// Login policy.
    pub login: LoginPolicy,
    /// Route table (defaults `sys.echo`, `sys.whoami` included).
    pub routes: RouteTable,
    /// Serve the demo page at `/`.
    pub demo: bool,
    /// Serve the unauthenticated `/raw-echo` and `/raw-echo-frames` WebSocket
    /// endpoints (testing only).
    pub raw_echo: bool,
    /// `[tls]`: serve `https://` / `wss://` instead of plain HTTP. Default off.
    pub tls: Option<TlsFiles>,
    /// State store URL: `memory` or `redis://…`. Default `memory`.
    pub state: String,
    /// Credential store URL: `sqlite` (in the data directory), `sqlite://PATH`
    /// or `postgres://…`. Default `sqlite`.
    pub credentials: String,
    /// Whether this node hosts the authentication module. Default true.
    pub auth_module: bool,
    /// Where a node without the module redirects logins (307).
    pub auth_redirect: Option<String>,
    /// Bearer keys for the upstream API.
    pub api_keys: Vec<ApiKey>,
    /// Upstream HTTP client settings.
    pub upstream: UpstreamSettings,
    /// Channel rules.
    pub channels: ChannelTable,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("wsgate-data"),
            trusted_proxies: TrustedProxies::default(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            allowed_origins: Vec::new(),
            session_ip_check: true,
            limits: Limits::default(),
            login: LoginPolicy::default(),
            routes: RouteTable::with_defaults(),
            demo: false,
            raw_echo: false,
            tls: None,
            state: "memory".into(),
            credentials: "sqlite".into(),
            auth_module: true,
            auth_redirect: None,
            api_keys: Vec::new(),
            upstream: UpstreamSettings::default(),
            channels: ChannelTable::default(),
        }
    }
}

fn secs(
    setting: &str,
    value: Option<u64>,
    default: Duration,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => Ok(Duration::from_secs(v)),
        Some(v) => Err(invalid(
            setting,
            format!("{v} is out of range; use {min}..={max} seconds"),
        )),
    }
}

fn ranged<T: PartialOrd + Copy + std::fmt::Display>(
    setting: &str,
    value: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v >= min && v <= max => Ok(v),
        Some(v) => Err(invalid(
            setting,
            format!("{v} is out of range; use {min}..={max}"),
        )),
    }
}

impl Config {
    /// Serves `pattern` (exact or `prefix.*`) with in-process Rust code.
    pub fn add_handler(
        &mut self,
        pattern: &str,
        sensitive: bool,
        handler: std::sync::Arc<dyn crate::handler::RouteHandler>,
    ) -> Result<(), ConfigError> {
        let route = Route::new(pattern, Target::Handler(handler), sensitive)
            .map_err(|m| invalid("route", m))?;
        self.routes.insert(route).map_err(|m| invalid("route", m))
    }

    /// Validates a file config into a runnable config.
    pub fn from_file(file: FileConfig) -> Result<Self, ConfigError> {
        let d = Self::default();
        let listen = match &file.listen {
            None => d.listen,
            Some(s) => parse_listen(s)?,
        };
        let trusted_proxies = file
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            format!("trusted_proxies[{i}]"),
                            format!("{s:?} is not an IP address or CIDR block like \"10.0.0.0/8\""),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trusted_proxies = trusted_proxies_from_file(trusted_proxies, &file.proxy)?;
        let metrics_listen = match file.metrics_listen.as_deref().map(str::trim) {
            None => d.metrics_listen,
            Some("off") => None,
            Some(s) => Some(parse_listen(s).map_err(|e| match e {
                ConfigError::Invalid { message, .. } => invalid("metrics_listen", message),
                other => other,
            })?),
        };
        let l = &file.limits;
        let dl = Limits::default();
        let limits = Limits {
            max_message_size: ranged(
                "limits.max_message_size",
                l.max_message_size,
                dl.max_message_size,
                64,
                64 << 20,
            )?,
            max_name_len: ranged(
                "limits.max_name_len",
                l.max_name_len,
                dl.max_name_len,
                16,
                1024,
            )?,
            max_in_flight: ranged(
                "limits.max_in_flight",
                l.max_in_flight,
                dl.max_in_flight,
                1,
                4096,
            )?,
            key_init_timeout: secs(
                "limits.key_init_timeout_secs",
                l.key_init_timeout_secs,
                dl.key_init_timeout,
                1,
                300,
            )?,
            idle_timeout: secs(
                "limits.idle_timeout_secs",
                l.idle_timeout_secs,
                dl.idle_timeout,
                2,
                86_400,
            )?,
            ping_interval: secs(
                "limits.ping_interval_secs",
                l.ping_interval_secs,
                dl.ping_interval,
                1,
                86_400,
            )?,
            http_body_limit: ranged(
                "limits.http_body_limit",
                l.http_body_limit,
                dl.http_body_limit,
                1024,
                16 << 20,
            )?,
            http_header_timeout: secs(
                "limits.http_header_timeout_secs",
                l.http_header_timeout_secs,
                dl.http_header_timeout,
                1,
                300,
            )?,
            http_body_timeout: secs(
                "limits.http_body_timeout_secs",
                l.http_body_timeout_secs,
                dl.http_body_timeout,
                1,
                300,
            )?,
            max_connections: ranged(
                "limits.max_connections",
                l.max_connections,
                dl.max_connections,
                1,
                10_000_000,
            )?,
            max_unauthenticated_per_ip: ranged(
                "limits.max_unauthenticated_per_ip",
                l.max_unauthenticated_per_ip,
                dl.max_unauthenticated_per_ip,
                1,
                1_000_000,
            )?,
            send_queue: ranged(
                "limits.send_queue",
                l.send_queue,
                dl.send_queue,
                1,
                1_000_000,
            )?,
            send_queue_bytes: ranged(
                "limits.send_queue_bytes",
                l.send_queue_bytes,
                dl.send_queue_bytes,
                4096,
                1 << 30,
            )?,
            send_timeout: secs(
                "limits.send_timeout_secs",
                l.send_timeout_secs,
                dl.send_timeout,
                1,
                300,
            )?,
            max_subscriptions: ranged(
                "limits.max_subscriptions",
                l.max_subscriptions,
                dl.max_subscriptions,
                1,
                100_000,
            )?,
            max_history_bytes: ranged(
                "limits.max_history_bytes",
                l.max_history_bytes,
                dl.max_history_bytes,
                1024,
                1 << 30,
            )?,
            max_replay: ranged(
                "limits.max_replay",
                l.max_replay,
                dl.max_replay,
                1,
                MAX_HISTORY,
            )?,
            max_presence_list: ranged(
                "limits.max_presence_list",
                l.max_presence_list,
                dl.max_presence_list,
                1,
                100_000,
            )?,
            presence_ttl: secs(
                "limits.presence_ttl_secs",
                l.presence_ttl_secs,
                dl.presence_ttl,
                3,
                3600,
            )?,
        };
        if limits.ping_interval >= limits.idle_timeout {
            return Err(invalid(
                "limits.ping_interval_secs",
                "must be shorter than limits.idle_timeout_secs, or idle connections are closed before they are pinged",
            ));
        }
        let g = &file.login;
        let dg = LoginPolicy::default();
        let login = LoginPolicy {
            iterations: ranged(
                "login.iterations",
                g.iterations,
                dg.iterations,
                wsgate_proto::scram::MIN_ITERATIONS,
                wsgate_proto::scram::MAX_ITERATIONS,
            )?,
            max_failures_per_user: ranged(
                "login.max_failures_per_user",
                g.max_failures_per_user,
                dg.max_failures_per_user,
                1,
                1_000_000,
            )?,
            max_failures_per_ip: ranged(
                "login.max_failures_per_ip",
                g.max_failures_per_ip,
                dg.max_failures_per_ip,
                1,
                1_000_000,
            )?,
            max_starts_per_ip: ranged(
                "login.max_starts_per_ip",
                g.max_starts_per_ip,
                dg.max_starts_per_ip,
                1,
                10_000_000,
            )?,
            failure_window: secs(
                "login.failure_window_secs",
                g.failure_window_secs,
                dg.failure_window,
                1,
                86_400,
            )?,
            session_ttl: secs(
                "login.session_ttl_secs",
                g.session_ttl_secs,
                dg.session_ttl,
                1,
                90 * 86_400,
            )?,
            exchange_ttl: secs(
                "login.exchange_ttl_secs",
                g.exchange_ttl_secs,
                dg.exchange_ttl,
                1,
                60,
            )?,
            ipv6_prefix_len: ranged(
                "login.ipv6_prefix_len",
                g.ipv6_prefix_len,
                dg.ipv6_prefix_len,
                32,
                128,
            )?,
            max_exchanges: ranged(
                "login.max_exchanges",
                g.max_exchanges,
                dg.max_exchanges,
                1,
                100_000_000,
            )?,
            max_exchanges_per_ip: ranged(
                "login.max_exchanges_per_ip",
                g.max_exchanges_per_ip,
                dg.max_exchanges_per_ip,
                1,
                10_000_000,
            )?,
        };
        let mut routes = RouteTable::with_defaults();
        for (i, r) in file.routes.iter().enumerate() {
            routes
                .insert(route_from_file(i, r)?)
                .map_err(|m| invalid(format!("routes[{i}].name"), m))?;
        }
        let api_keys = file
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| ApiKey::new(k).map_err(|m| invalid(format!("api_keys[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let du = UpstreamSettings::default();
        let upstream = UpstreamSettings {
            timeout: secs(
                "upstream.timeout_secs",
                file.upstream.timeout_secs,
                du.timeout,
                1,
                3600,
            )?,
            connect_timeout: secs(
                "upstream.connect_timeout_secs",
                file.upstream.connect_timeout_secs,
                du.connect_timeout,
                1,
                60,
            )?,
            max_idle_per_host: ranged(
                "upstream.max_idle_per_host",
                file.upstream.max_idle_per_host,
                du.max_idle_per_host,
                0,
                10_000,
            )?,
        };
        let mut channels = ChannelTable::default();
        for (i, c) in file.channels.iter().enumerate() {
            channels.push(channel_from_file(i, c, &limits)?);
        }
        if let Some(url) = file
            .auth_redirect
            .as_ref()
            .filter(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(invalid(
                "auth_redirect",
                format!(
                    "{url:?} must be an http:// or https:// URL of a node with auth_module = true"
                ),
            ));
        }
        let state = file.state.clone().unwrap_or_else(|| "memory".into());
        const STATE_SCHEMES: [&str; 6] = [
            "redis://",
            "rediss://",
            "redis+unix://",
            "unix://",
            "redis+cluster://",
            "rediss+cluster://",
        ];
        if !(state == "memory" || STATE_SCHEMES.iter().any(|s| state.starts_with(s))) {
            return Err(invalid(
                "state",
                format!(
                    "{:?}: use \"memory\", \"redis://host:port\" (one Redis) or \
                     \"redis+cluster://host:port,host:port\" (a Redis Cluster)",
                    crate::store::redact_url(&state)
                ),
            ));
        }
        let credentials = file.credentials.clone().unwrap_or_else(|| "sqlite".into());
        if !(credentials == "sqlite"
            || credentials.starts_with("sqlite://")
            || credentials.starts_with("postgres://")
            || credentials.starts_with("postgresql://"))
        {
            return Err(invalid(
                "credentials",
                format!(
                    "{:?}: use \"sqlite\", \"sqlite:///path/users.sqlite3\" or \"postgres://user@host/db\"",
                    crate::store::redact_url(&credentials)
                ),
            ));
        }
        Ok(Self {
            state,
            credentials,
            auth_module: file.auth_module.unwrap_or(true),
            auth_redirect: file.auth_redirect.clone(),
            api_keys,
            upstream,
            channels,
            listen,
            data_dir: file.data_dir.unwrap_or(d.data_dir),
            trusted_proxies,
            metrics_listen,
            allowed_origins: file
                .allowed_origins
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    normalize_origin(o).map_err(|m| invalid(format!("allowed_origins[{i}]"), m))
                })
                .collect::<Result<Vec<_>, _>>()?,
            session_ip_check: file.session_ip_check.unwrap_or(true),
            limits,
            login,
            routes,
            demo: false,
            raw_echo: file.testing.raw_echo.unwrap_or(false),
            tls: tls_from_file(file.tls.as_ref())?,
        })
    }
}

/// The trusted proxies with the header they write: `[proxy]
/// client_ip_header` must be named whenever a proxy is trusted, since
/// reading the header the proxy does not write lets clients choose their IP.
fn trusted_proxies_from_file(
    nets: Vec<IpNet>,
    proxy: &FileProxy,
) -> Result<TrustedProxies, ConfigError> {
    let header = match proxy.client_ip_header.as_deref().map(str::trim) {
        Some(h) if h.eq_ignore_ascii_case("x-forwarded-for") => ClientIpHeader::XForwardedFor,
        Some(h) if h.eq_ignore_ascii_case("forwarded") => ClientIpHeader::Forwarded,
        Some(other) => {
            return Err(invalid(
                "proxy.client_ip_header",
                format!("{other:?}: use \"x-forwarded-for\" or \"forwarded\" (RFC 7239)"),
            ));
        }
        None if nets.is_empty() => ClientIpHeader::XForwardedFor,
        None => {
            return Err(invalid(
                "proxy.client_ip_header",
                "trusted_proxies is set: name the one header your proxy writes the client's \
                 address into, under [proxy]: client_ip_header = \"x-forwarded-for\" (nginx \
                 $proxy_add_x_forwarded_for, HAProxy option forwardfor) or \"forwarded\" \
                 (RFC 7239); the other header is then ignored",
            ));
        }
    };
    Ok(TrustedProxies { nets, header })
}

/// An origin as browsers send it, normalized: `scheme://host[:port]` with
/// the scheme and host lowercased, the default port dropped and no path.
pub fn normalize_origin(text: &str) -> Result<String, String> {
    let hint = || {
        format!(
            "{text:?} is not an origin; write it like \"https://www.example.com\" or \"http://127.0.0.1:3000\" (scheme, host, optional port, no path)"
        )
    };
    let (scheme, rest) = text.trim().split_once("://").ok_or_else(hint)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return Err(hint()),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(hint());
    }
    let host = rest.to_ascii_lowercase();
    let host = host.strip_suffix(default_port).unwrap_or(&host);
    Ok(format!("{scheme}://{host}"))
}

/// Parses a listen address, with a hint for the common mistakes.
pub fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>().map_err(|_| {
        invalid("listen", format!("{s:?} is not an address with a port; write it like \"127.0.0.1:8080\" or \"[::1]:8080\""))
    })
}

fn channel_from_file(
    i: usize,
    c: &FileChannel,
    limits: &Limits,
) -> Result<ChannelRule, ConfigError> {
    let subscribe = match c.subscribe.as_deref().unwrap_or("authenticated") {
        "authenticated" => SubscribePolicy::Authenticated,
        "owner" => SubscribePolicy::Owner,
        "none" => SubscribePolicy::None,
        other => {
            return Err(invalid(
                format!("channels[{i}].subscribe"),
                format!("{other:?}: use \"authenticated\", \"owner\" or \"none\""),
            ));
        }
    };
    let publish = match c.publish.as_deref().unwrap_or("api") {
        "api" => PublishPolicy::Api,
        "authenticated" => PublishPolicy::Authenticated,
        "owner" => PublishPolicy::Owner,
        other => {
            return Err(invalid(
                format!("channels[{i}].publish"),
                format!("{other:?}: use \"api\", \"authenticated\" or \"owner\""),
            ));
        }
    };
    let history = match c.history.unwrap_or(0) {
        0 => {
            if c.history_ttl_secs.is_some() {
                return Err(invalid(
                    format!("channels[{i}].history_ttl_secs"),
                    "needs `history = N` (events kept per channel) next to it",
                ));
            }
            None
        }
        keep if keep > MAX_HISTORY => {
            return Err(invalid(
                format!("channels[{i}].history"),
                format!("{keep} events per channel is more than the {MAX_HISTORY} allowed"),
            ));
        }
        keep => {
            let ttl = c.history_ttl_secs.unwrap_or(DEFAULT_HISTORY_TTL_SECS);
            if !(1..=MAX_HISTORY_TTL_SECS).contains(&ttl) {
                return Err(invalid(
                    format!("channels[{i}].history_ttl_secs"),
                    format!("{ttl}: use 1 to {MAX_HISTORY_TTL_SECS} seconds"),
                ));
            }
            Some(crate::store::HistoryPolicy {
                keep,
                ttl: Duration::from_secs(ttl),
                max_bytes: limits.max_history_bytes,
            })
        }
    };
    Ok(
        ChannelRule::new(&c.pattern, c.sensitive, subscribe, publish)
            .map_err(|m| invalid(format!("channels[{i}].pattern"), m))?
            .with_history(history)
            .with_presence(c.presence),
    )
}

/// Most events a channel may keep (`history`).
pub const MAX_HISTORY: usize = 100_000;
/// `history_ttl_secs` unless set.
pub const DEFAULT_HISTORY_TTL_SECS: u64 = 300;
/// Longest `history_ttl_secs`: a week.
pub const MAX_HISTORY_TTL_SECS: u64 = 7 * 24 * 3600;

fn route_from_file(i: usize, r: &FileRoute) -> Result<Route, ConfigError> {
    let target = match (&r.builtin, &r.upstream) {
        (Some(b), None) => Target::Builtin(match b.as_str() {
            "echo" => Builtin::Echo,
            "whoami" => Builtin::Whoami,
            other => {
                return Err(invalid(
                    format!("routes[{i}].builtin"),
                    format!("unknown builtin {other:?}; use \"echo\" or \"whoami\""),
                ));
            }
        }),
        (None, Some(u)) => {
            let uri: http::Uri = u.parse().map_err(|_| {
                invalid(
                    format!("routes[{i}].upstream"),
                    format!("{u:?} is not a URL like \"http://127.0.0.1:9000\""),
                )
            })?;
            if uri.scheme_str() != Some("http")
                || uri.authority().is_none()
                || uri.query().is_some()
            {
                return Err(invalid(
                    format!("routes[{i}].upstream"),
                    format!("{u:?} must be an http:// URL with a host and no query"),
                ));
            }
            Target::Upstream(uri)
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("routes[{i}]"),
                "set either `builtin` or `upstream`, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                format!("routes[{i}]"),
                "needs a target: builtin = \"echo\" or upstream = \"http://…\"",
            ));
        }
    };
    Route::new(&r.name, target, r.sensitive).map_err(|m| invalid(format!("routes[{i}].name"), m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_file(FileConfig::from_toml(text, Path::new("test.toml"))?)
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(
            r#"
            listen = "127.0.0.1:9090"
            data_dir = "somewhere"
            trusted_proxies = ["127.0.0.1/32", "10.1.2.3"]
            [proxy]
            client_ip_header = "x-forwarded-for"
            [[routes]]
            name = "secret.echo"
            builtin = "echo"
            sensitive = true
            [[routes]]
            name = "app.*"
            builtin = "whoami"
            "#,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.trusted_proxies.nets.len(), 2);
        assert_eq!(c.trusted_proxies.header, ClientIpHeader::XForwardedFor);
        let r = c.routes.lookup("secret.echo").unwrap();
        assert!(r.sensitive);
        assert_eq!(
            c.routes.lookup("app.thing").unwrap().target,
            Target::Builtin(Builtin::Whoami)
        );
        assert!(c.routes.lookup("sys.echo").is_some(), "defaults stay");
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn errors_name_the_setting_and_the_line() {
        let e = parse("listen = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("listen") && e.contains("127.0.0.1:8080"), "{e}");
        let e = parse("lissen = \"127.0.0.1:1\"").unwrap_err().to_string();
        assert!(e.contains("lissen") && e.contains("line 1"), "{e}");
        let e = parse("[[routes]]\nname = \"x\"\nbuiltin = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].builtin") && e.contains("echo"), "{e}");
        let e = parse("[limits]\nmax_name_len = 5000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_name_len"), "{e}");
        let e = parse("trusted_proxies = [\"bogus\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("trusted_proxies[0]"), "{e}");
        // A trusted proxy without the header it writes: refused, saying
        // which setting to add (a guess would let clients choose their IP).
        let e = parse("trusted_proxies = [\"10.0.0.1\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("proxy.client_ip_header") && e.contains("x-forwarded-for"),
            "{e}"
        );
        let e = parse("[proxy]\nclient_ip_header = \"x-real-ip\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.client_ip_header"), "{e}");
        let c =
            parse("trusted_proxies = [\"10.0.0.1\"]\n[proxy]\nclient_ip_header = \"Forwarded\"")
                .unwrap();
        assert_eq!(c.trusted_proxies.header, ClientIpHeader::Forwarded);
        // Origins: normalized, and anything that is not one is refused.
        let c =
            parse("allowed_origins = [\"HTTPS://App.Example:443/\", \"http://127.0.0.1:3000\"]")
                .unwrap();
        assert_eq!(
            c.allowed_origins,
            ["https://app.example", "http://127.0.0.1:3000"]
        );
        for bad in [
            "ftp://x",
            "https://a.example/path",
            "app.example",
            "https://",
            "*",
        ] {
            let e = parse(&format!("allowed_origins = [{bad:?}]"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("allowed_origins[0]") && e.contains("origin"),
                "{bad}: {e}"
            );
        }
        // /metrics: loopback by default, configurable, or off.
        assert_eq!(
            parse("").unwrap().metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(
            parse("metrics_listen = \"off\"").unwrap().metrics_listen,
            None
        );
        let e = parse("metrics_listen = \"9090\"").unwrap_err().to_string();
        assert!(e.contains("metrics_listen"), "{e}");
        let e = parse("[[routes]]\nname = \"a\"\nupstream = \"ftp://127.0.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].upstream"), "{e}");
        let e = parse("api_keys = [\"short\"]").unwrap_err().to_string();
        assert!(e.contains("api_keys[0]"), "{e}");
        let e = parse("state = \"mysql://x\"").unwrap_err().to_string();
        assert!(
            e.contains("redis://") && e.contains("redis+cluster://"),
            "{e}"
        );
        for state in [
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            "redis+unix:///run/redis.sock",
        ] {
            assert!(parse(&format!("state = {state:?}")).is_ok(), "{state}");
        }
        let e = parse("[[channels]]\npattern = \"a.*.b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("channels[0].pattern"), "{e}");
        let e = parse("[[channels]]\npattern = \"news\"\nsubscribe = \"owner\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("{user}"), "{e}");
        let e = parse("[login]\niterations = 10").unwrap_err().to_string();
        assert!(e.contains("login.iterations"), "{e}");
        for bad in [
            "ipv6_prefix_len = 31",
            "ipv6_prefix_len = 129",
            "max_exchanges = 0",
            "max_exchanges_per_ip = 0",
        ] {
            let e = parse(&format!("[login]\n{bad}")).unwrap_err().to_string();
            let setting = format!("login.{}", bad.split(' ').next().unwrap_or_default());
            assert!(e.contains(&setting) && e.contains("out of range"), "{e}");
        }
    }

    #[test]
    fn unauthenticated_cap_and_queue_bytes_parse_with_defaults_and_ranges() {
        let d = Limits::default();
        assert_eq!(
            (d.max_unauthenticated_per_ip, d.send_queue_bytes),
            (64, 4 << 20)
        );
        let c =
            parse("[limits]\nmax_unauthenticated_per_ip = 3\nsend_queue_bytes = 65536").unwrap();
        assert_eq!(
            (
                c.limits.max_unauthenticated_per_ip,
                c.limits.send_queue_bytes
            ),
            (3, 65536)
        );
        for (bad, setting) in [
            (
                "max_unauthenticated_per_ip = 0",
                "limits.max_unauthenticated_per_ip",
            ),
            ("send_queue_bytes = 4095", "limits.send_queue_bytes"),
            ("send_queue_bytes = 1073741825", "limits.send_queue_bytes"),
        ] {
            let e = parse(&format!("[limits]\n{bad}")).unwrap_err().to_string();
            assert!(e.contains(setting), "{bad}: {e}");
        }
    }

    #[test]
    fn exchange_caps_and_the_ipv6_prefix_parse_with_defaults() {
        let d = parse("").unwrap().login;
        assert_eq!(
            (d.ipv6_prefix_len, d.max_exchanges, d.max_exchanges_per_ip),
            (64, 100_000, 1000)
        );
        let c = parse("[login]\nipv6_prefix_len = 48\nmax_exchanges = 7\nmax_exchanges_per_ip = 3")
            .unwrap()
            .login;
        assert_eq!(
            (c.ipv6_prefix_len, c.max_exchanges, c.max_exchanges_per_ip),
            (48, 7, 3)
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_prefix_and_ipv4_by_address() {
        let policy = |len: u8| LoginPolicy {
            ipv6_prefix_len: len,
            ..LoginPolicy::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p64 = policy(64);
        // One /64: one name, whatever the interface identifier.
        let names: std::collections::BTreeSet<String> = (1..=70u32)
            .map(|n| p64.ip_group(ip(&format!("2001:db8:1:2::{n:x}"))))
            .chain([p64.ip_group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))])
            .collect();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["2001:db8:1:2::/64"]);
        // The next /64 is another name.
        assert_eq!(p64.ip_group(ip("2001:db8:1:3::1")), "2001:db8:1:3::/64");
        // The prefix length is honoured, down to single addresses.
        assert_eq!(
            policy(48).ip_group(ip("2001:db8:1:2::1")),
            "2001:db8:1::/48"
        );
        assert_eq!(
            policy(48).ip_group(ip("2001:db8:1:ffff::1")),
            policy(48).ip_group(ip("2001:db8:1:2::1"))
        );
        assert_ne!(
            policy(48).ip_group(ip("2001:db8:2::1")),
            policy(48).ip_group(ip("2001:db8:1::1"))
        );
        assert_eq!(
            policy(56).ip_group(ip("2001:db8:1:2ff::1")),
            "2001:db8:1:200::/56"
        );
        assert_eq!(policy(128).ip_group(ip("2001:db8::1")), "2001:db8::1/128");
        assert_ne!(
            policy(128).ip_group(ip("2001:db8::1")),
            policy(128).ip_group(ip("2001:db8::2"))
        );
        assert_eq!(policy(32).ip_group(ip("2001:db8:ffff::1")), "2001:db8::/32");
        // IPv4 stays per address, whatever the IPv6 setting.
        assert_eq!(p64.ip_group(ip("198.51.100.7")), "198.51.100.7");
        assert_ne!(
            p64.ip_group(ip("198.51.100.7")),
            p64.ip_group(ip("198.51.100.8"))
        );
        assert_eq!(p64.ip_group(ip("::1")), "::/64");
    }
}
