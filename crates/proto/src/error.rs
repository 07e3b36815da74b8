//! Errors of the protocol core.
//!
//! Crypto failures are deliberately short of detail: a frame that fails to
//! verify says only that, so no error can become an oracle.

use crate::envelope::EnvelopeError;
use crate::scram::ScramError;

/// Any failure in the protocol core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A malformed envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A SCRAM failure, carrying the `e=` code to send to the peer.
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// A base64 or base64url string that is not canonical.
    #[error("invalid base64 encoding")]
    Base64,
    /// A protected frame failed to verify or decrypt (tampered, replayed,
    /// reordered or dropped frame, or wrong key).
    #[error("frame failed to verify")]
    Verify,
    /// Key establishment failed (malformed KEY_INIT, unknown key id, or the
    /// HPKE open failed).
    #[error("key establishment failed: {0}")]
    KeyInit(&'static str),
    /// A sealed login message failed to seal or open (protocol.md §4.1).
    #[error("sealed login: {0}")]
    Seal(&'static str),
    /// A key file or key bytes of the wrong shape.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// A counter would wrap; the connection must be closed.
    #[error("sequence number exhausted")]
    SequenceExhausted,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
