//! Presence (protocol.md §6.6): which users are subscribed to a channel, on
//! any node, and the join and leave changes every node hears.
//!
//! A *member* is one connection's subscription (`<node id>:<connection id>`);
//! a user is present while any of their members is. Members expire unless
//! their node refreshes them, so the members of a node that died are
//! removed by whichever surviving node sweeps first — each removal, and so
//! each leave, happens once, in one atomic step of the store.

use std::time::Duration;

/// A change of who is present on a channel, fanned out to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// The user's first member joined.
    Join(String),
    /// The user's last member left (unsubscribed, closed, or expired).
    Leave(String),
}

impl PresenceChange {
    /// The PRESENCE_EVENT body: `{"join":"<user>"}` or `{"leave":"<user>"}`.
    pub fn body(&self) -> Vec<u8> {
        let value = match self {
            Self::Join(user) => serde_json::json!({ "join": user }),
            Self::Leave(user) => serde_json::json!({ "leave": user }),
        };
        value.to_string().into_bytes()
    }
}

/// One connection's presence on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PresenceMember {
    /// The channel.
    pub channel: String,
    /// The stored user name.
    pub user: String,
    /// Unique in the fleet: `<node id>:<connection id>`.
    pub member: String,
}

/// Who is present on a channel, as [`StateStore::presence_list`](super::StateStore::presence_list) reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceList {
    /// `(user, live members)`, sorted by user, at most the limit asked.
    pub users: Vec<(String, u32)>,
    /// Whether more users were present than listed.
    pub truncated: bool,
}

/// How long a member lives without its node's refresh.
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(30);
