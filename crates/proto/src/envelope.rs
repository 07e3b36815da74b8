//! The binary envelope every WebSocket message carries (protocol.md §5.1).
//!
//! ```text
//! 0      1       2           6        8             8+nlen
//! │ type │ flags │ id (u32BE)│nlen u16│ name (UTF-8) │ body …
//! └──────────────── header ───────────────────────────┘
//! ```

use core::fmt;

/// Bytes before the name.
pub const FIXED_HEADER_LEN: usize = 8;
/// The protocol's upper bound on `nlen`.
pub const MAX_NAME_LEN: usize = 1024;
/// Length of the AES-GCM tag that ends every protected body.
pub const TAG_LEN: usize = 16;

/// Flag bit 0: the body is encrypted.
pub const FLAG_ENC: u8 = 0b01;
/// Flag bit 1: the message is an error response.
pub const FLAG_ERR: u8 = 0b10;
const KNOWN_FLAGS: u8 = FLAG_ENC | FLAG_ERR;

/// The message types of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Server → client, unprotected: nonce, observed IP, key ids.
    Hello = 0x01,
    /// Client → server, unprotected: the sealed dynamic password.
    KeyInit = 0x02,
    /// Server → client, the first protected frame.
    KeyAck = 0x03,
    /// Client → server request to a route.
    Request = 0x10,
    /// Server → client answer to a request.
    Response = 0x11,
    /// Client → server: subscribe to a channel.
    Subscribe = 0x20,
    /// Client → server: leave a channel.
    Unsubscribe = 0x21,
    /// Client → server: publish to a channel.
    Publish = 0x22,
    /// Server → client: an event on a subscribed channel.
    Event = 0x23,
    /// Server → client: an event on a channel with history, its body the
    /// 8-byte big-endian offset then the payload (protocol.md §6.5).
    EventAt = 0x24,
    /// Server → client: events before a position may have been missed
    /// (protocol.md §6.5).
    Resync = 0x25,
    /// Client → server: who is present on a channel (protocol.md §6.6).
    Presence = 0x26,
    /// Server → client: a user joined or left a channel (protocol.md §6.6).
    PresenceEvent = 0x27,
    /// Client → server: end the session.
    Logout = 0x31,
}

impl MessageType {
    /// Parses a type byte.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => Self::Hello,
            0x02 => Self::KeyInit,
            0x03 => Self::KeyAck,
            0x10 => Self::Request,
            0x11 => Self::Response,
            0x20 => Self::Subscribe,
            0x21 => Self::Unsubscribe,
            0x22 => Self::Publish,
            0x23 => Self::Event,
            0x24 => Self::EventAt,
            0x25 => Self::Resync,
            0x26 => Self::Presence,
            0x27 => Self::PresenceEvent,
            0x31 => Self::Logout,
            _ => return None,
        })
    }

    /// Whether a client may send this type after key establishment.
    pub fn is_client_request(self) -> bool {
        matches!(
            self,
            Self::Request
                | Self::Subscribe
                | Self::Unsubscribe
                | Self::Publish
                | Self::Presence
                | Self::Logout
        )
    }
}

/// Why an envelope was refused; every variant closes the connection with 4400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Fewer than 8 bytes.
    #[error("message shorter than the 8-byte envelope header")]
    TooShort,
    /// `nlen` above 1024 or above the configured limit.
    #[error("name longer than allowed")]
    NameTooLong,
    /// `nlen` runs past the end of the message.
    #[error("name runs past the end of the message")]
    Truncated,
    /// The name is not UTF-8.
    #[error("name is not valid UTF-8")]
    NameNotUtf8,
    /// Flag bits other than ENC and ERR are set.
    #[error("reserved flag bits set")]
    ReservedFlags,
    /// A protected body shorter than its tag.
    #[error("protected body shorter than the 16-byte tag")]
    ShortProtectedBody,
}

/// A decoded envelope borrowing from the message bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The type byte (may be unknown; see [`MessageType::from_u8`]).
    pub msg_type: u8,
    /// Flag bits (only ENC and ERR can be set).
    pub flags: u8,
    /// Request id.
    pub id: u32,
    /// Route, channel or session id.
    pub name: &'a str,
    /// Everything after the header.
    pub body: &'a [u8],
    /// Length of the header, `8 + nlen`.
    pub header_len: usize,
}

impl fmt::Debug for Envelope<'_> {
    // Bodies may be secret: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("msg_type", &format_args!("{:#04x}", self.msg_type))
            .field("flags", &self.flags)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Envelope<'_> {
    /// Whether the ENC flag is set.
    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENC != 0
    }
    /// Whether the ERR flag is set.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERR != 0
    }
}

/// Decodes an envelope, checking every rule of protocol.md §5.1 except the
/// minimum protected body length (see [`crate::protect`]).
pub fn decode(message: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    decode_with_limit(message, MAX_NAME_LEN)
}

/// Like [`decode`] with a stricter name limit (`max_name_len` ≤ 1024).
pub fn decode_with_limit(
    message: &[u8],
    max_name_len: usize,
) -> Result<Envelope<'_>, EnvelopeError> {
    let head = decode_fixed(message, max_name_len)?;
    let (name, body) = message[FIXED_HEADER_LEN..].split_at(head.header_len - FIXED_HEADER_LEN);
    let name = core::str::from_utf8(name).map_err(|_| EnvelopeError::NameNotUtf8)?;
    Ok(Envelope {
        msg_type: head.msg_type,
        flags: head.flags,
        id: head.id,
        name,
        body,
        header_len: head.header_len,
    })
}

/// The fixed header of a message, its name not yet checked as UTF-8.
pub(crate) struct FixedHeader {
    pub(crate) msg_type: u8,
    pub(crate) flags: u8,
    pub(crate) id: u32,
    /// `8 + nlen`, within the message.
    pub(crate) header_len: usize,
}

/// Checks everything of the header but the name's UTF-8, which the caller
/// checks once (a protected frame's only after its tag verified).
pub(crate) fn decode_fixed(
    message: &[u8],
    max_name_len: usize,
) -> Result<FixedHeader, EnvelopeError> {
    let Some((fixed, rest)) = message.split_first_chunk::<FIXED_HEADER_LEN>() else {
        return Err(EnvelopeError::TooShort);
    };
    let [msg_type, flags, i0, i1, i2, i3, n0, n1] = *fixed;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(EnvelopeError::ReservedFlags);
    }
    let nlen = usize::from(u16::from_be_bytes([n0, n1]));
    if nlen > max_name_len.min(MAX_NAME_LEN) {
        return Err(EnvelopeError::NameTooLong);
    }
    if rest.len() < nlen {
        return Err(EnvelopeError::Truncated);
    }
    Ok(FixedHeader {
        msg_type,
        flags,
        id: u32::from_be_bytes([i0, i1, i2, i3]),
        header_len: FIXED_HEADER_LEN + nlen,
    })
}

/// Appends a header to `out`. Fails if the name is longer than 1024 bytes.
pub fn encode_header(
    out: &mut Vec<u8>,
    msg_type: u8,
    flags: u8,
    id: u32,
    name: &str,
) -> Result<(), EnvelopeError> {
    if name.len() > MAX_NAME_LEN {
        return Err(EnvelopeError::NameTooLong);
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err(EnvelopeError::ReservedFlags);
    }
    // Cannot truncate: checked against MAX_NAME_LEN above.
    let [n0, n1] = (name.len() as u16).to_be_bytes();
    let [i0, i1, i2, i3] = id.to_be_bytes();
    // One copy of the fixed part, not six pushes that each check capacity.
    out.reserve(FIXED_HEADER_LEN + name.len());
    out.extend_from_slice(&[msg_type, flags, i0, i1, i2, i3, n0, n1]);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// Encodes a whole unprotected message (HELLO, KEY_INIT).
pub fn encode(
    msg_type: u8,
    flags: u8,
    id: u32,
    name: &str,
    body: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(FIXED_HEADER_LEN + name.len() + body.len());
    encode_header(&mut out, msg_type, flags, id, name)?;
    out.extend_from_slice(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_a_known_message() {
        let wire = [0x10, 0x01, 0, 0, 0, 7, 0, 2, b'h', b'i', 0xAA, 0xBB];
        let env = decode(&wire).unwrap();
        assert_eq!(env.msg_type, 0x10);
        assert!(env.is_encrypted());
        assert!(!env.is_error());
        assert_eq!(env.id, 7);
        assert_eq!(env.name, "hi");
        assert_eq!(env.body, &[0xAA, 0xBB]);
        assert_eq!(env.header_len, 10);
    }

    #[test]
    fn refuses_malformed_envelopes() {
        assert_eq!(decode(&[0; 7]), Err(EnvelopeError::TooShort));
        assert_eq!(
            decode(&[0x10, 0x04, 0, 0, 0, 1, 0, 0]),
            Err(EnvelopeError::ReservedFlags)
        );
        assert_eq!(
            decode(&[0x10, 0x80, 0, 0, 0, 1, 0, 0]),
            Err(EnvelopeError::ReservedFlags)
        );
        assert_eq!(
            decode(&[0x10, 0, 0, 0, 0, 1, 0x04, 0x01]),
            Err(EnvelopeError::NameTooLong)
        );
        assert_eq!(
            decode(&[0x10, 0, 0, 0, 0, 1, 0, 3, b'a']),
            Err(EnvelopeError::Truncated)
        );
        assert_eq!(
            decode(&[0x10, 0, 0, 0, 0, 1, 0, 1, 0xFF]),
            Err(EnvelopeError::NameNotUtf8)
        );
        assert_eq!(
            decode_with_limit(&[0x10, 0, 0, 0, 0, 1, 0, 3, b'a', b'b', b'c'], 2),
            Err(EnvelopeError::NameTooLong)
        );
    }

    #[test]
    fn accepts_the_longest_name() {
        let name = "n".repeat(MAX_NAME_LEN);
        let wire = encode(0x10, 0, 1, &name, b"x").unwrap();
        assert_eq!(decode(&wire).unwrap().name, name);
        assert!(encode(0x10, 0, 1, &"n".repeat(MAX_NAME_LEN + 1), b"").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(t in any::<u8>(), flags in 0u8..4, id in any::<u32>(),
                       name in "\\PC{0,64}", body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let wire = encode(t, flags, id, &name, &body).unwrap();
            let env = decode(&wire).unwrap();
            prop_assert_eq!(env.msg_type, t);
            prop_assert_eq!(env.flags, flags);
            prop_assert_eq!(env.id, id);
            prop_assert_eq!(env.name, name.as_str());
            prop_assert_eq!(env.body, body.as_slice());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }
    }
}
