//! Client errors.

use wsgate_proto::scram::client::ClientError as ScramClientError;

/// Anything that can go wrong talking to a gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The base URL is not `http://host:port`.
    #[error("invalid gateway URL {0:?}: use http://host:port")]
    InvalidUrl(String),
    /// TCP or WebSocket IO failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// An HTTP exchange failed below the protocol.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The server answered with an unexpected status or body.
    #[error("unexpected reply from the gateway (HTTP {status}): {body}")]
    UnexpectedReply {
        /// HTTP status.
        status: u16,
        /// Body text (truncated).
        body: String,
    },
    /// The SCRAM login failed (wrong password, unknown user, channel binding, …).
    #[error("login failed: {0}")]
    Login(#[from] ScramClientError),
    /// Too many failed logins; retry after this many seconds.
    #[error("too many failed logins; retry in {retry_after} s")]
    RateLimited {
        /// `Retry-After`.
        retry_after: u64,
    },
    /// The server's key does not match the pinned fingerprint.
    #[error("server key {actual} does not match the pinned fingerprint {expected}")]
    ServerKeyMismatch {
        /// The pin.
        expected: String,
        /// What the server offered.
        actual: String,
    },
    /// The gateway broke the protocol (or a frame failed to verify).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection closed, with the close code if one was received.
    #[error("connection closed (code {code:?}: {reason})")]
    Closed {
        /// WebSocket close code.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// The gateway answered a request with `ERR`.
    #[error("request failed: {code}: {message}")]
    Server {
        /// Stable error code (`not_found`, `encryption_required`, `busy`, …).
        code: String,
        /// Human-readable message.
        message: String,
    },
    /// The gateway sees another IP than the login was bound to: log in again.
    #[error("the gateway sees IP {now} but the login was bound to {login}; log in again")]
    IpChanged {
        /// IP bound at login.
        login: String,
        /// IP in HELLO.
        now: String,
    },
    /// TLS could not be set up (bad root certificate or server name, failed handshake).
    #[error("TLS: {0}")]
    Tls(String),
    /// A wait ran past its deadline.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl Error {
    /// The close code, when the connection was closed.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::Closed { code, .. } => *code,
            _ => None,
        }
    }

    /// The `ERR` code, when the server refused a request.
    pub fn server_code(&self) -> Option<&str> {
        match self {
            Self::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
