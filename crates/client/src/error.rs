//! Client errors.

use std::net::SocketAddr;

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
    /// The TCP connection to the gateway could not be opened (or the
    /// source address bound): where to, from where, and the OS error.
    #[error("TCP connect to {addr}{} failed: {}", from_local(.local.as_ref()), describe_io(.cause))]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The source address, when one was bound (the port is the one
        /// the bind picked).
        local: Option<SocketAddr>,
        /// What the OS said (`ConnectionRefused`, `AddrNotAvailable`, …).
        /// In the message, not the error's source, so that a chain printed
        /// with `{:#}` does not say it twice.
        cause: std::io::Error,
    },
    /// The WebSocket upgrade failed after the connection was open: the URL,
    /// the local end of the connection, and what the server answered.
    #[error("WebSocket handshake with {url}{} failed: {answer}", from_local(.local.as_ref()))]
    Handshake {
        /// `ws://host:port/path` (or `wss://`) dialled.
        url: String,
        /// The connection's local address, when known.
        local: Option<SocketAddr>,
        /// What went wrong (in the message, not the error's source).
        answer: HandshakeFailure,
    },
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

/// How a WebSocket upgrade failed ([`Error::Handshake`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The server answered something other than `101 Switching Protocols`.
    #[error("the server answered HTTP {status} instead of 101{}", excerpt(.body))]
    Refused {
        /// HTTP status.
        status: u16,
        /// The start of the body (at most 200 bytes, lossy UTF-8).
        body: String,
    },
    /// The server answered 101 without the headers an upgrade needs (or
    /// without the subprotocol asked for).
    #[error("the server answered 101 but {0}")]
    BadUpgrade(String),
    /// The connection failed at the IO level before the answer arrived.
    #[error("{}", describe_io(.0))]
    Io(std::io::Error),
    /// The server closed the connection before answering.
    #[error("the server closed the connection before answering the upgrade")]
    Closed,
    /// The upgrade request could not be sent or parsed (HTTP layer).
    #[error("{0}")]
    Http(String),
}

impl HandshakeFailure {
    /// The HTTP status of a refused upgrade.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The IO error kind, when the upgrade failed at the IO level.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Self::Io(e) => Some(e.kind()),
            _ => None,
        }
    }
}

fn from_local(local: Option<&SocketAddr>) -> String {
    local.map_or_else(String::new, |l| format!(" from {l}"))
}

fn excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body:?}")
    }
}

/// An IO error with its kind spelled out, and the errno's name where the
/// OS gave one: `Connection refused (os error 111) [ECONNREFUSED]`.
pub(crate) fn describe_io(e: &std::io::Error) -> String {
    match e.raw_os_error().and_then(errno_name) {
        Some(name) => format!("{e} [{name}]"),
        None => format!("{e} [{:?}]", e.kind()),
    }
}

/// Names of the errno values a connection typically fails with (Linux
/// numbering; elsewhere the kind is shown instead).
fn errno_name(code: i32) -> Option<&'static str> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    Some(match code {
        23 => "ENFILE",
        24 => "EMFILE",
        32 => "EPIPE",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        _ => return None,
    })
}

impl Error {
    /// The close code, when the connection was closed.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::Closed { code, .. } => *code,
            _ => None,
        }
    }

    /// The IO error kind of a failed TCP connect or WebSocket upgrade.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Self::Io(e) | Self::Connect { cause: e, .. } => Some(e.kind()),
            Self::Handshake { answer, .. } => answer.io_kind(),
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
