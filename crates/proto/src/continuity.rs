//! Channel continuity (protocol.md §6.5): stream positions, the EVENT_AT
//! body, the SUBSCRIBE body and its RESPONSE.
//!
//! A channel with history has a stream: an `epoch` (b64u of 8 random bytes,
//! new whenever the stream's history may have been lost) and an `offset`
//! (events published in this epoch; the first is 1). Everything here is
//! pure encoding; keeping streams is the gateway's state store.

use serde::{Deserialize, Serialize};

use crate::b64;
use crate::rand_core::CryptoRng;

/// Bytes of the big-endian offset that starts an EVENT_AT body.
pub const EVENT_AT_OFFSET_LEN: usize = 8;

/// Random bytes in an epoch (b64u-encoded: 11 characters).
pub const EPOCH_LEN: usize = 8;

/// The longest epoch a peer may send (the gateway's are 11 characters;
/// anything longer cannot be one of them).
pub const MAX_EPOCH_TEXT_LEN: usize = 64;

/// A position in a channel's stream: `{"epoch":"…","offset":N}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The stream's epoch.
    pub epoch: String,
    /// Events published to the stream in this epoch (0: none yet).
    pub offset: u64,
}

/// A fresh epoch: b64u of [`EPOCH_LEN`] random bytes.
pub fn new_epoch<R: CryptoRng + ?Sized>(rng: &mut R) -> String {
    let mut bytes = [0u8; EPOCH_LEN];
    rng.fill_bytes(&mut bytes);
    b64::encode_b64u(&bytes)
}

/// An EVENT_AT body: `offset` as 8 bytes big-endian, then the payload.
pub fn event_at_body(offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(EVENT_AT_OFFSET_LEN + payload.len());
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(payload);
    body
}

/// Splits an EVENT_AT body into its offset and payload; `None` if it is
/// shorter than the offset.
pub fn split_event_at_body(body: &[u8]) -> Option<(u64, &[u8])> {
    let (head, payload) = body.split_at_checked(EVENT_AT_OFFSET_LEN)?;
    let offset = u64::from_be_bytes(head.try_into().ok()?);
    Some((offset, payload))
}

/// What a SUBSCRIBE body asks for (protocol.md §6.5, §6.6). One parser for
/// every member, so history and presence never disagree on the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// Replay what was published after this position, if still kept.
    pub since: Option<Position>,
    /// Also send PRESENCE_EVENTs for this channel.
    pub presence_events: bool,
}

/// A SUBSCRIBE body that is neither empty nor a JSON object of that shape
/// (answered `ERR bad_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SUBSCRIBE body: {0}")]
pub struct SubscribeBodyError(pub &'static str);

impl SubscribeRequest {
    /// Parses a SUBSCRIBE body: empty, or a JSON object with optional
    /// `since` (a position) and `presence_events` (a boolean). Members it
    /// does not know are ignored, as everywhere in the protocol.
    pub fn parse(body: &[u8]) -> Result<Self, SubscribeBodyError> {
        if body.is_empty() {
            return Ok(Self::default());
        }
        #[derive(Deserialize)]
        struct Wire {
            since: Option<serde_json::Value>,
            presence_events: Option<serde_json::Value>,
        }
        let wire: Wire = serde_json::from_slice(body)
            .map_err(|_| SubscribeBodyError("not empty and not a JSON object"))?;
        let since = match wire.since {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let p: Position = serde_json::from_value(v).map_err(|_| {
                    SubscribeBodyError("since must be {\"epoch\": string, \"offset\": integer ≥ 0}")
                })?;
                if p.epoch.len() > MAX_EPOCH_TEXT_LEN {
                    return Err(SubscribeBodyError("since.epoch is too long to be an epoch"));
                }
                Some(p)
            }
        };
        let presence_events = match wire.presence_events {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => b,
            Some(_) => return Err(SubscribeBodyError("presence_events must be a boolean")),
        };
        Ok(Self {
            since,
            presence_events,
        })
    }

    /// The body that asks for this (empty for a plain subscription).
    pub fn to_body(&self) -> Vec<u8> {
        if self.since.is_none() && !self.presence_events {
            return Vec::new();
        }
        let mut obj = serde_json::Map::new();
        if let Some(p) = &self.since {
            obj.insert("since".into(), serde_json::json!(p));
        }
        if self.presence_events {
            obj.insert("presence_events".into(), true.into());
        }
        serde_json::Value::Object(obj).to_string().into_bytes()
    }
}

/// The RESPONSE to a SUBSCRIBE on a history channel:
/// `{"epoch","offset","recovered"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeReply {
    /// The stream's epoch.
    pub epoch: String,
    /// The stream's last offset when the subscription took effect.
    pub offset: u64,
    /// Whether every event after `since` follows (as EVENT_AT, before any
    /// later event).
    pub recovered: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn event_at_bodies_round_trip_and_short_ones_are_refused() {
        let body = event_at_body(0x0102_0304_0506_0708, b"hi");
        assert_eq!(&body[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            split_event_at_body(&body),
            Some((0x0102_0304_0506_0708, &b"hi"[..]))
        );
        assert_eq!(
            split_event_at_body(&event_at_body(1, b"")),
            Some((1, &b""[..]))
        );
        assert_eq!(split_event_at_body(&[0; 7]), None);
    }

    #[test]
    fn subscribe_bodies() {
        assert_eq!(
            SubscribeRequest::parse(b"").unwrap(),
            SubscribeRequest::default()
        );
        assert_eq!(
            SubscribeRequest::parse(b"{}").unwrap(),
            SubscribeRequest::default()
        );
        let r = SubscribeRequest::parse(
            br#"{"since":{"epoch":"AAAAAAAAAAA","offset":7},"presence_events":true,"x":1}"#,
        )
        .unwrap();
        assert_eq!(
            r.since,
            Some(Position {
                epoch: "AAAAAAAAAAA".into(),
                offset: 7
            })
        );
        assert!(r.presence_events);
        assert_eq!(SubscribeRequest::parse(&r.to_body()).unwrap(), r);
        assert!(SubscribeRequest::default().to_body().is_empty());
        for bad in [
            &b"[]"[..],
            b"null",
            b"\"since\"",
            b"{",
            br#"{"since":{"epoch":"x"}}"#,
            br#"{"since":{"epoch":"x","offset":-1}}"#,
            br#"{"since":{"epoch":1,"offset":1}}"#,
            br#"{"since":7}"#,
            br#"{"presence_events":"yes"}"#,
        ] {
            assert!(
                SubscribeRequest::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"since":{{"epoch":"{}","offset":1}}}}"#, "A".repeat(65));
        assert!(SubscribeRequest::parse(long.as_bytes()).is_err());
    }

    #[test]
    fn epochs_are_11_b64u_characters() {
        use rand::SeedableRng as _;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = new_epoch(&mut rng);
        assert_eq!(a.len(), 11);
        assert_ne!(a, new_epoch(&mut rng));
        assert!(b64::decode_b64u(&a).is_ok());
    }
}
