//! In-process route handlers: how an application embedding wsgate serves
//! routes with its own Rust code instead of an upstream HTTP server.
//!
//! ```no_run
//! # fn demo() -> Result<(), wsgate_server::config::ConfigError> {
//! use wsgate_server::config::Config;
//! use wsgate_server::handler::{HandlerError, handler_fn};
//!
//! let mut config = Config::default();
//! config.add_handler("app.greet", false, handler_fn(|req| async move {
//!     if req.body.is_empty() {
//!         return Err(HandlerError::new("bad_request", "send your name"));
//!     }
//!     Ok(format!("hello {} from {}", String::from_utf8_lossy(&req.body), req.user).into_bytes())
//! }))?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

/// One REQUEST, verified (and decrypted, if it was sent with ENC).
pub struct HandlerRequest {
    /// The route name as sent.
    pub route: String,
    /// The session's user.
    pub user: String,
    /// The connection's observed IP.
    pub client_ip: String,
    /// The plaintext payload.
    pub body: Bytes,
    /// Whether the request was encrypted (the response will be too).
    pub encrypted: bool,
}

impl fmt::Debug for HandlerRequest {
    // The body may be sensitive: print its length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRequest")
            .field("route", &self.route)
            .field("user", &self.user)
            .field("client_ip", &self.client_ip)
            .field("body_len", &self.body.len())
            .field("encrypted", &self.encrypted)
            .finish()
    }
}

/// A refusal: sent to the client as `ERR {"code","message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// Stable machine-readable code.
    pub code: String,
    /// What the user can do about it.
    pub message: String,
}

impl HandlerError {
    /// A new error.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Serves a route inside the gateway process.
#[async_trait::async_trait]
pub trait RouteHandler: Send + Sync + fmt::Debug + 'static {
    /// Handles one request; the returned bytes are the RESPONSE body.
    async fn handle(&self, request: HandlerRequest) -> Result<Vec<u8>, HandlerError>;
}

/// A [`RouteHandler`] made from an async closure.
pub struct FnHandler<F>(F);

impl<F> fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnHandler")
    }
}

#[async_trait::async_trait]
impl<F, Fut> RouteHandler for FnHandler<F>
where
    F: Fn(HandlerRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, HandlerError>> + Send + 'static,
{
    async fn handle(&self, request: HandlerRequest) -> Result<Vec<u8>, HandlerError> {
        (self.0)(request).await
    }
}

/// Wraps an async closure as a route handler.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn RouteHandler>
where
    F: Fn(HandlerRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, HandlerError>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}
