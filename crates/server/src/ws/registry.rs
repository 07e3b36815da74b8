//! Which sessions have connections on this node, so a revocation (LOGOUT on
//! any connection, on any node) closes all of them.
//!
//! One task consumes the state store's revocation feed and wakes only the
//! connections of the revoked session, instead of every connection
//! listening to every revocation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{broadcast, watch};

use crate::store::StateStore;

#[derive(Debug)]
struct Entry {
    revoked: watch::Sender<bool>,
    connections: usize,
}

/// Sessions with live connections on this node.
#[derive(Debug, Clone)]
pub(crate) struct SessionRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Arc<dyn StateStore>,
    sessions: Mutex<HashMap<String, Entry>>,
    started: OnceLock<()>,
    /// True once a graceful stop began; connections that have no session
    /// yet (waiting for KEY_INIT) watch this instead of a revocation.
    shutting_down: watch::Sender<bool>,
    /// Connections without KEY_INIT yet, per IP group
    /// (`LoginPolicy::ip_group`); a group is removed at zero, so the map
    /// holds at most one entry per such connection.
    unauthenticated: Mutex<HashMap<String, usize>>,
}

/// A connection's registration; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct Registration {
    inner: Arc<Inner>,
    session_id: String,
    pub(crate) revoked: watch::Receiver<bool>,
}

impl SessionRegistry {
    pub(crate) fn new(state: Arc<dyn StateStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state,
                sessions: Mutex::new(HashMap::new()),
                started: OnceLock::new(),
                shutting_down: watch::channel(false).0,
                unauthenticated: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the revocation listener (once).
    pub(crate) fn start(&self) {
        if self.inner.started.set(()).is_err() {
            return;
        }
        let inner = self.inner.clone();
        let mut feed = inner.state.watch_revocations();
        tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    Ok(id) => inner.revoke_local(&id),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some (or the store was away): re-check
                        // every local session, in the background so the
                        // feed keeps being drained.
                        let inner = inner.clone();
                        tokio::spawn(async move { inner.recheck_all().await });
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Wakes every registered connection for a graceful shutdown: they
    /// see [`is_shutting_down`](Self::is_shutting_down) and close with 1001.
    /// (The revocation wake-up is reused so idle connections cost nothing
    /// extra per message.)
    pub(crate) fn shutdown_all(&self) {
        self.inner.shutting_down.send_replace(true);
        for entry in self.inner.lock().values() {
            entry.revoked.send_replace(true);
        }
    }

    /// Whether [`shutdown_all`](Self::shutdown_all) was called.
    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.inner.shutting_down.borrow()
    }

    /// Fires (turns true) when a graceful stop begins: what a connection
    /// without a session yet waits on instead of a revocation.
    pub(crate) fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.inner.shutting_down.subscribe()
    }

    /// Counts one more connection of `group` that has not completed
    /// KEY_INIT, unless `group` already has `cap`: then `false`, and
    /// nothing is counted. Give it back with
    /// [`release_unauthenticated`](Self::release_unauthenticated).
    pub(crate) fn try_add_unauthenticated(&self, group: &str, cap: usize) -> bool {
        let mut map = self.inner.unauthenticated();
        match map.get_mut(group) {
            Some(n) if *n >= cap => false,
            Some(n) => {
                *n += 1;
                true
            }
            None if cap == 0 => false,
            None => {
                map.insert(group.to_owned(), 1);
                true
            }
        }
    }

    /// Gives back a count of [`try_add_unauthenticated`](Self::try_add_unauthenticated).
    pub(crate) fn release_unauthenticated(&self, group: &str) {
        let mut map = self.inner.unauthenticated();
        if let Some(n) = map.get_mut(group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(group);
            }
        }
    }

    /// Registers a connection of `session_id`.
    pub(crate) fn register(&self, session_id: &str) -> Registration {
        let mut map = self.inner.lock();
        let entry = map.entry(session_id.to_owned()).or_insert_with(|| Entry {
            revoked: watch::channel(false).0,
            connections: 0,
        });
        entry.connections += 1;
        let revoked = entry.revoked.subscribe();
        drop(map);
        Registration {
            inner: self.inner.clone(),
            session_id: session_id.to_owned(),
            revoked,
        }
    }
}

impl Inner {
    fn unauthenticated(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Every critical section is one update: a poisoned lock is consistent.
        self.unauthenticated
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every critical section is a single insert/update/remove).
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the store about every local session and closes the revoked
    /// ones. While the store answers with errors, retries with backoff (up
    /// to about five minutes), so a revocation made during an outage still
    /// closes its connections once the store is back.
    async fn recheck_all(&self) {
        let mut pending: Vec<String> = self.lock().keys().cloned().collect();
        let mut delay = std::time::Duration::from_millis(250);
        for _ in 0..20 {
            let mut failed = Vec::new();
            for id in pending {
                match self.state.get_session(&id).await {
                    Ok(None) => self.revoke_local(&id),
                    Ok(Some(_)) => {}
                    Err(_) => failed.push(id),
                }
            }
            if failed.is_empty() {
                return;
            }
            pending = failed;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(30));
        }
        tracing::warn!(
            sessions = pending.len(),
            "could not re-check sessions after a store outage"
        );
    }

    fn revoke_local(&self, session_id: &str) {
        if let Some(entry) = self.lock().get(session_id) {
            entry.revoked.send_replace(true);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.inner.lock();
        if let Some(entry) = map.get_mut(&self.session_id) {
            entry.connections -= 1;
            if entry.connections == 0 {
                map.remove(&self.session_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStateStore;

    #[test]
    fn unauthenticated_counts_are_capped_per_group_and_forgotten_at_zero() {
        let reg = SessionRegistry::new(Arc::new(MemoryStateStore::new()));
        assert!(reg.try_add_unauthenticated("a", 2));
        assert!(reg.try_add_unauthenticated("a", 2));
        assert!(!reg.try_add_unauthenticated("a", 2), "a third over the cap");
        assert!(reg.try_add_unauthenticated("b", 2), "another group");
        reg.release_unauthenticated("a");
        assert!(reg.try_add_unauthenticated("a", 2));
        reg.release_unauthenticated("a");
        reg.release_unauthenticated("a");
        reg.release_unauthenticated("b");
        assert!(reg.inner.unauthenticated().is_empty(), "no entry at zero");
        // Giving back what was never counted changes nothing.
        reg.release_unauthenticated("c");
        assert!(reg.inner.unauthenticated().is_empty());
    }
}
