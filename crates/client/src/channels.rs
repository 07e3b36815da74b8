//! Channels with history (protocol.md §6.5) from the client's side:
//! SUBSCRIBE with `since`, EVENT_AT and RESYNC, and a tracker that
//! remembers the last position per channel so that a new connection can
//! resubscribe where the old one stopped and never deliver an event twice.

use std::collections::HashMap;

use wsgate_proto::continuity::{self, Position, SubscribeReply, SubscribeRequest};
use wsgate_proto::envelope::MessageType;

use crate::connection::{Connection, Message};
use crate::error::{Error, Result};

/// What a subscribed channel sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// An EVENT: a channel without history.
    Event {
        /// The channel.
        channel: String,
        /// The payload.
        payload: Vec<u8>,
    },
    /// An EVENT_AT: an event of a history channel and its offset.
    EventAt {
        /// The channel.
        channel: String,
        /// Its offset in the stream's current epoch.
        offset: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A RESYNC: events before `position` may have been missed; EVENT_AT
    /// continue from `position.offset + 1`.
    Resync {
        /// The channel.
        channel: String,
        /// The new position (its epoch may be new).
        position: Position,
    },
    /// A PRESENCE_EVENT (protocol.md §6.6): a user joined or left.
    Presence {
        /// The channel.
        channel: String,
        /// The user.
        user: String,
        /// `true` for a join, `false` for a leave.
        joined: bool,
    },
}

/// Who is present on a channel: the PRESENCE reply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PresenceReply {
    /// Users and their subscribed connections, sorted by user.
    pub users: Vec<PresentUser>,
    /// Whether the server cut the list (`[limits] max_presence_list`).
    #[serde(default)]
    pub truncated: bool,
}

/// One present user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PresentUser {
    /// The stored user name.
    pub user: String,
    /// Their connections subscribed to the channel, on every node.
    pub connections: u32,
}

impl ChannelEvent {
    /// Reads a channel message; `None` for any other type.
    pub fn from_message(msg: Message) -> Result<Option<Self>> {
        Ok(Some(match MessageType::from_u8(msg.msg_type) {
            Some(MessageType::Event) => Self::Event {
                channel: msg.name,
                payload: msg.body,
            },
            Some(MessageType::EventAt) => {
                let Some((offset, payload)) = continuity::split_event_at_body(&msg.body) else {
                    return Err(Error::Protocol(
                        "EVENT_AT body shorter than its offset".into(),
                    ));
                };
                Self::EventAt {
                    offset,
                    payload: payload.to_vec(),
                    channel: msg.name,
                }
            }
            Some(MessageType::PresenceEvent) => {
                #[derive(serde::Deserialize)]
                struct Change {
                    join: Option<String>,
                    leave: Option<String>,
                }
                let change: Change = serde_json::from_slice(&msg.body)
                    .map_err(|e| Error::Protocol(format!("PRESENCE_EVENT body: {e}")))?;
                let (user, joined) = match (change.join, change.leave) {
                    (Some(user), None) => (user, true),
                    (None, Some(user)) => (user, false),
                    _ => {
                        return Err(Error::Protocol(
                            "PRESENCE_EVENT body names neither one join nor one leave".into(),
                        ));
                    }
                };
                Self::Presence {
                    channel: msg.name,
                    user,
                    joined,
                }
            }
            Some(MessageType::Resync) => {
                let position = serde_json::from_slice(&msg.body)
                    .map_err(|e| Error::Protocol(format!("RESYNC body: {e}")))?;
                Self::Resync {
                    channel: msg.name,
                    position,
                }
            }
            _ => return Ok(None),
        }))
    }
}

impl Connection {
    /// SUBSCRIBE to `channel` (ENC when `sensitive`), asking for what was
    /// published after `since`. The reply is `Some` on a history channel
    /// (`recovered` tells whether every missed event follows) and `None`
    /// on a channel without history.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<&Position>,
        sensitive: bool,
    ) -> Result<Option<SubscribeReply>> {
        let request = SubscribeRequest {
            since: since.cloned(),
            presence_events: false,
        };
        self.subscribe_with(channel, &request, sensitive).await
    }

    /// SUBSCRIBE with any body: `since` and `presence_events` (join and
    /// leave events of a presence channel, protocol.md §6.6).
    pub async fn subscribe_with(
        &mut self,
        channel: &str,
        request: &SubscribeRequest,
        sensitive: bool,
    ) -> Result<Option<SubscribeReply>> {
        let body = request.to_body();
        let reply = self
            .call(MessageType::Subscribe, channel, &body, sensitive)
            .await?;
        if reply.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&reply)
            .map(Some)
            .map_err(|e| Error::Protocol(format!("SUBSCRIBE reply: {e}")))
    }

    /// PRESENCE: who is present on `channel` now.
    pub async fn presence(&mut self, channel: &str, sensitive: bool) -> Result<PresenceReply> {
        let reply = self
            .call(MessageType::Presence, channel, b"", sensitive)
            .await?;
        serde_json::from_slice(&reply).map_err(|e| Error::Protocol(format!("PRESENCE reply: {e}")))
    }

    /// The next channel message: one buffered while waiting for a
    /// response first, then from the socket (other types are skipped).
    pub async fn next_channel_event(&mut self) -> Result<ChannelEvent> {
        loop {
            let msg = match self.pop_event() {
                Some(msg) => msg,
                None => self.recv().await?,
            };
            if let Some(event) = ChannelEvent::from_message(msg)? {
                return Ok(event);
            }
        }
    }
}

/// What [`StreamTracker::observe`] made of a channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// New: hand it to the application.
    New,
    /// Already delivered (a replay overlapping live events): drop it.
    Duplicate,
    /// Events before it may be missing (a RESYNC, a new epoch, or a jump
    /// in offsets): the application should refetch its state. For an
    /// EVENT_AT the event itself is still new.
    Gap(Position),
}

/// The last position per history channel: what to send as `since` after a
/// reconnect, and which events are new.
#[derive(Debug, Clone, Default)]
pub struct StreamTracker {
    positions: HashMap<String, Position>,
}

impl StreamTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position to resubscribe `channel` with, if any.
    pub fn since(&self, channel: &str) -> Option<&Position> {
        self.positions.get(channel)
    }

    /// Records a SUBSCRIBE reply to a SUBSCRIBE that asked with `since`:
    /// the client now stands at `since` if the replay follows (recovered),
    /// else at the reply's position. `Gap` if it asked and was not
    /// `recovered`.
    pub fn subscribed(
        &mut self,
        channel: &str,
        reply: &SubscribeReply,
        since: Option<&Position>,
    ) -> Delivery {
        let position = match since {
            Some(since) if reply.recovered => since.clone(),
            _ => Position {
                epoch: reply.epoch.clone(),
                offset: reply.offset,
            },
        };
        self.positions.insert(channel.to_owned(), position);
        if since.is_some() && !reply.recovered {
            Delivery::Gap(Position {
                epoch: reply.epoch.clone(),
                offset: reply.offset,
            })
        } else {
            Delivery::New
        }
    }

    /// Forgets `channel` (unsubscribed).
    pub fn forget(&mut self, channel: &str) {
        self.positions.remove(channel);
    }

    /// Classifies one channel message and moves the position.
    pub fn observe(&mut self, event: &ChannelEvent) -> Delivery {
        match event {
            ChannelEvent::Event { .. } | ChannelEvent::Presence { .. } => Delivery::New,
            ChannelEvent::Resync { channel, position } => {
                self.positions.insert(channel.clone(), position.clone());
                Delivery::Gap(position.clone())
            }
            ChannelEvent::EventAt {
                channel, offset, ..
            } => {
                let Some(p) = self.positions.get_mut(channel) else {
                    return Delivery::New;
                };
                if *offset <= p.offset {
                    return Delivery::Duplicate;
                }
                let gap = *offset > p.offset + 1;
                p.offset = *offset;
                if gap {
                    Delivery::Gap(Position {
                        epoch: p.epoch.clone(),
                        offset: offset - 1,
                    })
                } else {
                    Delivery::New
                }
            }
        }
    }
}
