//! Channel fan-out on one node.
//!
//! Every node watches the state store's event feed (fleet-wide: Redis
//! pub/sub in a fleet, a broadcast in-process) from start-up on, so a
//! subscription registered here receives every publish made after it — the
//! condition for answering SUBSCRIBE (protocol.md §6.2). The hub hands each event
//! to the local subscribers' queues; each connection seals and writes its
//! own copy (sensitive events are encrypted per connection).
//!
//! Queues are bounded by a per-connection counter: a subscriber whose queue
//! is full gets one final `Overflow` message and is dropped from the hub, so
//! a slow consumer is disconnected and never slows the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{broadcast, mpsc};

use crate::store::{StateStore, StoreEvent};

/// What a connection receives from the hub.
#[derive(Debug)]
pub(crate) enum HubMessage {
    /// An event on a subscribed channel.
    Event(Arc<StoreEvent>),
    /// The queue overflowed: the connection must close (4429).
    Overflow,
}

/// A connection's mailbox.
#[derive(Debug)]
pub(crate) struct Mailbox {
    pub(crate) id: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<HubMessage>,
    queued: Arc<AtomicUsize>,
}

impl Mailbox {
    /// Receives the next message and frees its queue slot.
    pub(crate) async fn recv(&mut self) -> Option<HubMessage> {
        let msg = self.rx.recv().await;
        if matches!(msg, Some(HubMessage::Event(_))) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        msg
    }

    /// A message that is already queued, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<HubMessage> {
        let msg = self.rx.try_recv().ok();
        if matches!(msg, Some(HubMessage::Event(_))) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        msg
    }
}

#[derive(Debug, Clone)]
struct Subscriber {
    tx: mpsc::UnboundedSender<HubMessage>,
    queued: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Inner {
    channels: Mutex<HashMap<String, HashMap<u64, Subscriber>>>,
    mailboxes: Mutex<HashMap<u64, Subscriber>>,
    next_id: AtomicU64,
    started: OnceLock<()>,
    queue_limit: AtomicUsize,
}

/// The node's subscriptions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

impl Inner {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, Subscriber>>> {
        // Critical sections are single map operations; a poisoned lock holds consistent data.
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mailboxes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Subscriber>> {
        self.mailboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dispatch(&self, event: StoreEvent) {
        let limit = self.queue_limit.load(Ordering::Relaxed).max(1);
        let event = Arc::new(event);
        let mut overflowed = Vec::new();
        if let Some(subs) = self.channels().get(&event.channel) {
            for (id, sub) in subs {
                if sub.queued.fetch_add(1, Ordering::Relaxed) >= limit {
                    overflowed.push(*id);
                    continue;
                }
                let _ = sub.tx.send(HubMessage::Event(event.clone()));
            }
        }
        for id in overflowed {
            if let Some(sub) = self.mailboxes().remove(&id) {
                let _ = sub.tx.send(HubMessage::Overflow);
            }
            self.channels().values_mut().for_each(|subs| {
                subs.remove(&id);
            });
        }
    }
}

impl Hub {
    /// Starts consuming the store's event feed (once). Must run before the
    /// node accepts connections, so no SUBSCRIBE is answered early.
    pub(crate) fn start(&self, state: &Arc<dyn StateStore>, queue_limit: usize) {
        if self.inner.started.set(()).is_err() {
            return;
        }
        self.inner.queue_limit.store(queue_limit, Ordering::Relaxed);
        let mut feed = state.watch_events();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    Ok(event) => inner.dispatch(event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "event feed lagged; events were dropped on this node"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// A mailbox for a new connection.
    pub(crate) fn mailbox(&self) -> Mailbox {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        self.inner.mailboxes().insert(
            id,
            Subscriber {
                tx,
                queued: queued.clone(),
            },
        );
        Mailbox { id, rx, queued }
    }

    /// Adds mailbox `id` to `channel`. Returns false if the mailbox is gone
    /// (it overflowed).
    pub(crate) fn subscribe(&self, id: u64, channel: &str) -> bool {
        let Some(sub) = self.inner.mailboxes().get(&id).cloned() else {
            return false;
        };
        self.inner
            .channels()
            .entry(channel.to_owned())
            .or_default()
            .insert(id, sub);
        true
    }

    /// Removes mailbox `id` from `channel`.
    pub(crate) fn unsubscribe(&self, id: u64, channel: &str) {
        let mut channels = self.inner.channels();
        if let Some(subs) = channels.get_mut(channel) {
            subs.remove(&id);
            if subs.is_empty() {
                channels.remove(channel);
            }
        }
    }

    /// Forgets a connection and its subscriptions.
    pub(crate) fn remove(&self, id: u64, channels: impl IntoIterator<Item = String>) {
        self.inner.mailboxes().remove(&id);
        for channel in channels {
            self.unsubscribe(id, &channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStateStore;

    #[tokio::test]
    async fn events_reach_subscribers_and_overflow_disconnects_only_the_slow_one() {
        let state: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let hub = Hub::default();
        hub.start(&state, 2);
        let mut fast = hub.mailbox();
        let mut slow = hub.mailbox();
        assert!(hub.subscribe(fast.id, "news"));
        assert!(hub.subscribe(slow.id, "news"));
        for i in 0..4u8 {
            state.publish_event("news", &[i]).await.unwrap();
            // The fast consumer keeps up.
            match tokio::time::timeout(std::time::Duration::from_secs(2), fast.recv())
                .await
                .unwrap()
            {
                Some(HubMessage::Event(e)) => assert_eq!(&e.payload[..], &[i]),
                other => panic!("{other:?}"),
            }
        }
        let mut got = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), slow.recv()).await
        {
            got.push(m);
        }
        assert!(
            matches!(
                got.as_slice(),
                [
                    HubMessage::Event(_),
                    HubMessage::Event(_),
                    HubMessage::Overflow
                ]
            ),
            "{got:?}"
        );
        assert!(
            !hub.subscribe(slow.id, "news"),
            "an overflowed mailbox is gone"
        );
        hub.unsubscribe(fast.id, "news");
        state.publish_event("news", b"x").await.unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), fast.recv())
                .await
                .is_err()
        );
    }
}
