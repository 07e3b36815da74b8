//! This node's presence members and their heartbeat (protocol.md §6.6).
//!
//! Every connection subscribed to a presence channel is one member, named
//! `<node id>:<connection id>` so that members of different nodes never
//! collide. The node refreshes its members every third of
//! `[limits] presence_ttl_secs` and sweeps the store for members nobody
//! refreshed — those of a node that died — so their users leave within
//! the TTL, announced once by whichever node sweeps first.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wsgate_proto::b64;

use crate::store::{PresenceMember, StateStore};

/// This node's members.
#[derive(Debug)]
pub(crate) struct NodePresence {
    node: String,
    members: Mutex<HashSet<PresenceMember>>,
    started: OnceLock<()>,
}

impl Default for NodePresence {
    fn default() -> Self {
        Self {
            node: b64::encode_b64u(&crate::random_bytes::<9>()),
            members: Mutex::default(),
            started: OnceLock::new(),
        }
    }
}

impl NodePresence {
    fn members(&self) -> std::sync::MutexGuard<'_, HashSet<PresenceMember>> {
        // Single set operations: a poisoned lock holds consistent data.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The member a connection is on `channel`.
    pub(crate) fn member(&self, channel: &str, user: &str, connection: u64) -> PresenceMember {
        PresenceMember {
            channel: channel.to_owned(),
            user: user.to_owned(),
            member: format!("{}:{connection}", self.node),
        }
    }

    /// Keeps `member` refreshed from now on.
    pub(crate) fn track(&self, member: PresenceMember) {
        self.members().insert(member);
    }

    /// Stops refreshing `member`.
    pub(crate) fn untrack(&self, member: &PresenceMember) {
        self.members().remove(member);
    }

    /// Users with a member on this node, counted once per channel.
    pub(crate) fn present_users(&self) -> usize {
        let members = self.members();
        let mut users: HashMap<&str, HashSet<&str>> = HashMap::new();
        for m in members.iter() {
            users.entry(&m.channel).or_default().insert(&m.user);
        }
        users.values().map(HashSet::len).sum()
    }

    /// Starts the heartbeat (once): refresh this node's members, then
    /// sweep everyone's expired ones, every third of `ttl`.
    pub(crate) fn start(self: &Arc<Self>, state: Arc<dyn StateStore>, ttl: Duration) {
        if self.started.set(()).is_err() {
            return;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { return };
                let members: Vec<PresenceMember> = this.members().iter().cloned().collect();
                drop(this);
                if !members.is_empty()
                    && let Err(e) = state.presence_refresh(&members, ttl).await
                {
                    tracing::warn!(error = %e, "cannot refresh this node's presence members");
                }
                if let Err(e) = state.presence_sweep().await {
                    tracing::debug!(error = %e, "cannot sweep expired presence members");
                }
            }
        });
    }
}
