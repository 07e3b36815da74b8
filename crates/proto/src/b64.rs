//! The two base64 flavours of the protocol, both strict.
//!
//! `b64u` (RFC 4648 §5, no padding) is used everywhere outside SCRAM;
//! receivers reject padding, characters outside `[A-Za-z0-9_-]`, a length
//! ≡ 1 (mod 4) and non-zero trailing bits. `b64` (standard, padded) is used
//! only inside SCRAM messages, as RFC 5802 requires, and is decoded just as
//! strictly.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::{Error, Result};

const B64U: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(false),
);

/// base64url without padding.
pub fn encode_b64u(bytes: &[u8]) -> String {
    B64U.encode(bytes)
}

/// Length of the b64u text of `n` bytes (no padding).
pub const fn b64u_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Strict base64url-without-padding decoding.
pub fn decode_b64u(text: &str) -> Result<Vec<u8>> {
    B64U.decode(text).map_err(|_| Error::Base64)
}

/// Decodes b64u that must be exactly `N` bytes long.
pub fn decode_b64u_array<const N: usize>(text: &str) -> Result<[u8; N]> {
    let bytes = decode_b64u(text)?;
    bytes.try_into().map_err(|_| Error::Base64)
}

/// Standard base64 with padding (SCRAM only).
pub fn encode_b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Strict standard-base64 decoding (SCRAM only).
pub fn decode_b64(text: &str) -> Result<Vec<u8>> {
    B64.decode(text).map_err(|_| Error::Base64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64u_round_trips_and_rejects_non_canonical_input() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            assert_eq!(decode_b64u(&encode_b64u(&data)).unwrap(), data);
        }
        assert!(decode_b64u("AA==").is_err(), "padding");
        assert!(decode_b64u("A+").is_err(), "standard alphabet");
        assert!(decode_b64u("AAAAA").is_err(), "length 1 mod 4");
        assert!(decode_b64u("AB").is_err(), "non-zero trailing bits");
        assert_eq!(decode_b64u("AA").unwrap(), vec![0]);
        assert!(decode_b64u("A A").is_err(), "whitespace");
    }

    #[test]
    fn b64_requires_canonical_padding() {
        assert_eq!(decode_b64("cGVuY2ls").unwrap(), b"pencil");
        assert_eq!(decode_b64("YQ==").unwrap(), b"a");
        assert!(decode_b64("YQ").is_err());
        assert!(decode_b64("YR==").is_err());
    }
}
