//! The wsgate gateway: HTTP login endpoints, the WebSocket connection driver,
//! routes and the stores behind them.
//!
//! ```text
//! TCP accept ─▶ hyper http1 (header timeout) ─▶ axum Router
//!     GET  /auth/key      ─▶ http::auth   (key set)
//!     PUT  /auth/session  ─▶ http::auth   (sealed SCRAM: wsgate_proto::login_seal + scram::server, StateStore, CredentialStore)
//!     GET  /ws            ─▶ ws::connection (HELLO, KEY_INIT, protected frames, routes)
//!     GET  /sm.js, /      ─▶ http::assets
//! ```
//!
//! The protocol logic itself lives in `wsgate_proto`; this crate does the IO,
//! owns the clock and the stores, and maps every failure to exactly one wire
//! status or close code.
//!
//! Embedding:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use wsgate_server::{Gateway, config::Config, keys::DataDir, store::{MemoryStateStore, SqliteCredentialStore}};
//! let config = Config::default();
//! let data = DataDir::new(&config.data_dir);
//! let (keys, secret) = data.load_or_init(&mut rand::rng())?;
//! let credentials = Arc::new(SqliteCredentialStore::open(&data.credentials_path())?);
//! let gateway = Gateway::new(config, keys, secret, credentials, Arc::new(MemoryStateStore::new()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! gateway.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod channels;
pub mod config;
pub mod forwarded;
pub mod handler;
mod http;
mod hub;
pub mod keys;
mod log_limit;
mod metrics;
mod presence;
pub mod routes;
pub mod store;
mod upstream;
mod ws;

use std::sync::Arc;

pub use crate::http::serve::Gateway;

/// Shared state of one gateway node.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: config::Config,
    pub(crate) keys: keys::KeySet,
    pub(crate) secret: keys::ServerSecret,
    pub(crate) credentials: Arc<dyn store::CredentialStore>,
    /// The state store behind the record seal: sessions and exchanges are
    /// sealed before any backend sees them (issue 11, item 4).
    pub(crate) state: store::SealedState,
    pub(crate) sessions: ws::registry::SessionRegistry,
    pub(crate) open_connections: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) hub: hub::Hub,
    /// This node's presence members and their heartbeat.
    pub(crate) presence: Arc<presence::NodePresence>,
    pub(crate) upstreams: upstream::Upstreams,
}

/// Fills `N` bytes from the OS-seeded thread RNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::Rng as _;
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}
