//! This node's presence members and their heartbeat (protocol.md §6.6).
//!
//! Every connection subscribed to a presence channel is one member, named
//! `<node id>:<connection id>` so that members of different nodes never
//! collide. The node refreshes its members every quarter of
//! `[limits] presence_ttl_secs` ([`heartbeat`]), each alive for two thirds
//! of it ([`member_ttl`]), and sweeps the store for members nobody
//! refreshed — those of a node that died — so their users leave within
//! the TTL, announced once by whichever node sweeps first.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wsgate_proto::b64;

use crate::store::{PresenceMember, StateStore};

/// How often a node refreshes its members and sweeps everyone's expired
/// ones: every quarter of `[limits] presence_ttl_secs`.
pub(crate) fn heartbeat(ttl: Duration) -> Duration {
    ttl / 4
}

/// How long a member lives without a refresh: two thirds of `[limits]
/// presence_ttl_secs`. A dead node refreshed its members at most when it
/// died, so they expire within 2/3 of the TTL and the next sweep of a
/// surviving node (at most a [`heartbeat`] later) removes them: its users
/// leave within 11/12 of the TTL, as protocol.md §6.6 promises ("within
/// `presence_ttl_secs`"). A live node's refresh may be 5/12 of the TTL
/// late before its members are swept.
pub(crate) fn member_ttl(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

/// Members refreshed per store call (one Lua script on Redis).
const REFRESH_BATCH: usize = 500;

/// This node's members.
#[derive(Debug)]
pub(crate) struct NodePresence {
    node: String,
    members: Mutex<HashSet<PresenceMember>>,
    /// Held while a member is refreshed, and to stop refreshing one: a
    /// refresh re-adds a member the store lost (swept while this node was
    /// slow), so one that began before a removal must end before it.
    refreshing: tokio::sync::Mutex<()>,
    started: OnceLock<()>,
}

impl Default for NodePresence {
    fn default() -> Self {
        Self {
            node: b64::encode_b64u(&crate::random_bytes::<9>()),
            members: Mutex::default(),
            refreshing: tokio::sync::Mutex::const_new(()),
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

    /// Stops refreshing `member`, before it is removed from the store:
    /// once this returns, no refresh of it is under way or will start, so
    /// none can bring it back (a second join, and a leave when it expires).
    pub(crate) async fn untrack(&self, member: &PresenceMember) {
        let _refreshing = self.refreshing.lock().await;
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
    /// sweep everyone's expired ones, every [`heartbeat`] of `ttl` (the
    /// configured `presence_ttl_secs`).
    pub(crate) fn start(self: &Arc<Self>, state: Arc<dyn StateStore>, ttl: Duration) {
        if self.started.set(()).is_err() {
            return;
        }
        let this = Arc::downgrade(self);
        let (period, ttl) = (heartbeat(ttl), member_ttl(ttl));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { return };
                let members: Vec<PresenceMember> = this.members().iter().cloned().collect();
                let mut failed = None;
                for batch in members.chunks(REFRESH_BATCH) {
                    // Each batch only with the members still tracked: one
                    // untracked since the list was taken is being removed,
                    // and refreshing it would add it back. `untrack` waits
                    // for the batch under way (one store call).
                    let _refreshing = this.refreshing.lock().await;
                    let tracked: Vec<PresenceMember> = {
                        let now = this.members();
                        batch.iter().filter(|m| now.contains(*m)).cloned().collect()
                    };
                    if tracked.is_empty() {
                        continue;
                    }
                    if let Err(e) = state.presence_refresh(&tracked, ttl).await {
                        failed = Some(e);
                    }
                }
                drop(this);
                if let Some(e) = failed {
                    tracing::warn!(error = %e, "cannot refresh this node's presence members");
                }
                if let Err(e) = state.presence_sweep().await {
                    tracing::debug!(error = %e, "cannot sweep expired presence members");
                }
            }
        });
    }
}
