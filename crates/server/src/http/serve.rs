//! The accept loop: hyper HTTP/1.1 with a header-read deadline, a cap on
//! concurrent connections and, per peer address, on connections that have
//! not sent a request yet, and graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::{get, post, put};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower_service::Service as _;

use crate::config::Config;
use crate::keys::{KeySet, ServerSecret};
use crate::store::{CredentialStore, StateStore};
use crate::ws::registry::SessionRegistry;
use crate::{Shared, http, ws};

/// Concurrent connections the metrics listener serves.
pub(crate) const METRICS_CONNECTIONS: usize = 16;

/// How long a graceful stop waits for WebSocket connections to answer what
/// is in flight and close (1001) before it stops anyway: each connection
/// fits its close handshake inside this (`ws::connection`).
pub(crate) const WEBSOCKET_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// One gateway node, ready to serve.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Assembles a node from its parts.
    pub fn new(
        config: Config,
        keys: KeySet,
        secret: ServerSecret,
        credentials: Arc<dyn CredentialStore>,
        state: Arc<dyn StateStore>,
    ) -> Self {
        // Every backend, whoever built it, sits behind the one seal.
        let metrics = crate::metrics::Metrics::default();
        let state = crate::store::SealedState::new(
            state,
            &secret,
            Arc::clone(&metrics.state_records_refused),
        );
        // The registry only asks whether a session is still there (after a
        // missed revocation); it needs no opened record.
        let sessions = SessionRegistry::new(Arc::clone(state.backend()));
        let config_upstream = config.upstream.clone();
        Self {
            shared: Arc::new(Shared {
                config,
                keys,
                secret,
                credentials,
                state,
                sessions,
                open_connections: Arc::new(AtomicUsize::new(0)),
                hub: crate::hub::Hub::default(),
                presence: Arc::default(),
                metrics,
                upstreams: crate::upstream::Upstreams::new(&config_upstream),
            }),
        }
    }

    /// The configuration this node runs on.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The axum router of every endpoint, for embedding in an existing
    /// service. Requests need a `ConnectInfo<SocketAddr>` extension
    /// ([`Gateway::serve`] adds it; with `axum::serve`, use
    /// `into_make_service_with_connect_info::<SocketAddr>()`). Must be called
    /// inside a tokio runtime: it starts the node's revocation and event
    /// listeners.
    pub fn router(&self) -> Router {
        self.shared.sessions.start();
        self.shared.hub.start(
            &self.shared.state,
            &self.shared.config.limits,
            &self.shared.config.channels,
            &self.shared.metrics.history_gaps_filled,
        );
        if self.shared.config.channels.has_presence() {
            self.shared.presence.start(
                Arc::clone(self.shared.state.backend()),
                self.shared.config.limits.presence_ttl,
            );
        }
        let mut router = Router::new()
            .route("/auth/key", get(http::auth::get_key))
            .route("/auth/session", put(http::auth::put_session))
            .route("/ws", get(ws::upgrade))
            .route("/sm.js", get(http::assets::sm_js))
            .route("/sm-worker.js", get(http::assets::sm_worker_js))
            .route("/healthz", get(|| async { "ok" }));
        if self.shared.config.raw_echo {
            tracing::warn!(
                "[testing] raw_echo is on: /raw-echo and /raw-echo-frames echo anything, unauthenticated"
            );
            router = router
                .route("/raw-echo", get(ws::raw_echo::upgrade))
                .route("/raw-echo-frames", get(ws::raw_echo_frames::upgrade));
        }
        if self.shared.config.demo {
            router = router.route("/", get(http::assets::demo_page));
        }
        // The upstream API checks its bearer key on the headers, outside
        // the body buffering: an unauthenticated request never gets its
        // body read (layers added later run first).
        let api = Router::new()
            .route("/api/publish", post(http::api::publish))
            .route("/api/history", post(http::api::history))
            .route("/api/presence", post(http::api::presence))
            .route("/auth/introspect", post(http::api::introspect))
            .route_layer(axum::extract::DefaultBodyLimit::disable())
            .route_layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                http::body::bounded,
            ))
            // `route_layer`, not `layer`: the merged fallback (404) must
            // not sit behind the key check.
            .route_layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                http::api::require_api_key,
            ));
        router
            // Bodies are buffered (limit + deadline) by `http::body`.
            .layer(axum::extract::DefaultBodyLimit::disable())
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                http::body::bounded,
            ))
            .merge(api)
            // Before routing: preflights of the login endpoints never reach
            // a route that has no OPTIONS.
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                http::cors::cors,
            ))
            // Outermost: every answer, the 404s and the API's 401s included.
            .layer(axum::middleware::from_fn(http::headers::security_headers))
            .with_state(self.shared.clone())
    }

    /// The router of `GET /metrics` alone (Prometheus text format), to be
    /// served on its own listener (`metrics_listen`, loopback by default),
    /// never on the client-facing one: the counters tell an outsider how
    /// many logins fail, how many sessions live, which causes close
    /// connections.
    pub fn metrics_router(&self) -> Router {
        Router::new()
            .route("/metrics", get(http::metrics))
            .layer(axum::middleware::from_fn(http::headers::security_headers))
            .with_state(self.shared.clone())
    }

    /// Serves [`metrics_router`](Self::metrics_router) on `listener` (the
    /// `metrics_listen` address) until the returned future is dropped. Its
    /// own small accept loop: the header deadline of `[limits]` and at most
    /// 16 scrapers at once, so a stuck client cannot
    /// pile up connections on it either.
    pub fn serve_metrics(
        &self,
        listener: TcpListener,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        let router = self.metrics_router();
        let header_timeout = self.shared.config.limits.http_header_timeout;
        async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "metrics listener busy: connection refused");
                    continue;
                };
                let router = router.clone();
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                        router.clone().call(req)
                    },
                );
                tokio::spawn(async move {
                    let _slot = slot;
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .max_buf_size(16 * 1024)
                        .serve_connection(TokioIo::new(tcp), service);
                    // A scrape takes milliseconds; a minute bounds a stuck one.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
                });
            }
        }
    }

    /// Serves connections from `listener` until `shutdown` completes, then
    /// stops accepting and lets HTTP requests in progress finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let router = self.router();
        let limits = self.shared.config.limits.clone();
        let tls = match &self.shared.config.tls {
            Some(files) => Some(http::tls::acceptor(files)?),
            None => None,
        };
        let open = self.shared.open_connections.clone();
        let silent = Arc::new(Silent::default());
        // Each connection task holds a sender; when all are gone, all are done.
        let (draining, mut drained) = tokio::sync::mpsc::channel::<()>(1);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            if open.load(Ordering::Relaxed) >= limits.max_connections {
                self.shared.metrics.connections_refused_full.inc();
                tracing::warn!(%peer, "connection refused: limits.max_connections reached");
                drop(tcp);
                continue;
            }
            // Until its first request head, a connection has said nothing:
            // one source may hold only so many such (the header deadline
            // ends each), or it could fill `max_connections` with them.
            // Trusted proxies are exempt: their clients are counted by
            // their own address at the WebSocket upgrade.
            let place = if self
                .shared
                .config
                .trusted_proxies
                .nets
                .iter()
                .any(|n| n.contains(&peer.ip()))
            {
                None
            } else {
                let group = self.shared.config.login.ip_group(peer.ip().to_canonical());
                match silent.take(group, limits.max_unauthenticated_per_ip) {
                    Some(place) => Some(place),
                    None => {
                        self.shared.metrics.connections_refused_silent.inc();
                        tracing::debug!(%peer, "connection refused: too many from its address without a request");
                        drop(tcp);
                        continue;
                    }
                }
            };
            let _ = tcp.set_nodelay(true);
            let guard = ConnGuard::new(open.clone());
            let router = router.clone();
            // Given back at the first request (or when the connection goes).
            let place = Mutex::new(place);
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    drop(place.lock().unwrap_or_else(|p| p.into_inner()).take());
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    router.clone().call(req)
                },
            );
            let (draining, mut stop) = (draining.clone(), stop_rx.clone());
            let (tls, header_timeout) = (tls.clone(), limits.http_header_timeout);
            tokio::spawn(async move {
                let (_guard, _draining) = (guard, draining);
                // Plain TCP, or TLS once its handshake is done (`[tls]`).
                let Some(io) = http::tls::accept(tls.as_ref(), tcp, header_timeout, peer).await
                else {
                    return;
                };
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades();
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "http connection ended with an error");
                }
            });
        }
        drop(listener);
        // WebSockets: answer what is in flight, then close 1001 (10 s at most).
        self.shared.sessions.shutdown_all();
        let deadline = tokio::time::Instant::now() + WEBSOCKET_DRAIN;
        while self.shared.metrics.connections_open.get() > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(draining);
        let _ = stop_tx.send(true);
        tokio::select! {
            _ = drained.recv() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
                tracing::warn!("HTTP connections still open after 10 s; stopping anyway");
            }
        }
        Ok(())
    }
}

/// TCP connections per IP group (`LoginPolicy::ip_group`) that have not
/// sent a request head yet, each under `http_header_timeout`; at most
/// `max_unauthenticated_per_ip` per group. A group is removed at zero.
#[derive(Debug, Default)]
struct Silent(Mutex<HashMap<String, usize>>);

/// A connection's place in [`Silent`], given back when dropped.
#[derive(Debug)]
struct SilentPlace {
    table: Arc<Silent>,
    group: String,
}

impl Silent {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Every critical section is one update: a poisoned lock is consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection of `group`, unless it has `cap` already.
    fn take(self: &Arc<Self>, group: String, cap: usize) -> Option<SilentPlace> {
        let mut counts = self.counts();
        let n = counts.entry(group.clone()).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                counts.remove(&group);
            }
            return None;
        }
        *n += 1;
        drop(counts);
        Some(SilentPlace {
            table: self.clone(),
            group,
        })
    }
}

impl Drop for SilentPlace {
    fn drop(&mut self) {
        let mut counts = self.table.counts();
        if let Some(n) = counts.get_mut(&self.group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.group);
            }
        }
    }
}

/// Counts an open TCP connection. The HTTP connection's guard drops when
/// hyper hands the socket to a WebSocket, which then takes its own.
pub(crate) struct ConnGuard(Arc<AtomicUsize>);

impl ConnGuard {
    pub(crate) fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
