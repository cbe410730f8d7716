//! The retained messages: one per topic, bounded in count and bytes, each with its
//! expiry deadline, in a store the broker owns. The store decides and keeps; the
//! broker turns what it reports into store effects and counters.

use std::time::Instant;

use bytes::Bytes;
use mqtt_proto::{Publish, TopicName};

use crate::hash::{Map, SeededState};
use crate::router::filter_matches;
use crate::session::approx_size;
use crate::timer::Timers;

/// One retained message.
pub(crate) struct Retained {
    pub(crate) publish: Publish,
    pub(crate) expires_at: Option<Instant>,
    /// `approx_size` of the message, as counted against the byte limit.
    size: usize,
}

/// What setting a retained message did.
pub(crate) enum SetOutcome {
    /// Stored (replacing any older one).
    Stored,
    /// The topic's retained message is gone (an empty payload, or a message that
    /// expired on arrival [MQTT-3.3.2-5]); `Some` if there was one.
    Cleared(Option<TopicName>),
    /// The store is full: refused.
    Full,
}

/// The retained messages, their byte total and their expiry deadlines.
pub(crate) struct RetainedStore {
    messages: Map<Bytes, Retained>,
    bytes: usize,
    /// Deadlines of messages with a Message Expiry Interval, by topic. An entry of a
    /// message replaced or cleared since is stale (see `is_live`).
    expiry: Timers<Bytes>,
}

impl RetainedStore {
    pub(crate) fn new(keys: SeededState) -> Self {
        RetainedStore {
            messages: Map::with_hasher(keys),
            bytes: 0,
            expiry: Timers::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Bytes of every retained message.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The earliest expiry deadline (stale ones included: a spurious wake-up is
    /// harmless).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.expiry.next_deadline()
    }

    /// Sets or clears (empty payload, [MQTT-3.3.1-6] [MQTT-3.3.1-7]) the retained
    /// message of `p`'s topic, within `max_messages` and `max_bytes`. `p` is kept
    /// as given: the caller has made it the stored form.
    pub(crate) fn set(
        &mut self,
        p: Publish,
        expires_at: Option<Instant>,
        now: Instant,
        max_messages: usize,
        max_bytes: usize,
    ) -> SetOutcome {
        let topic = p.topic.as_bytes();
        // A message that has already expired (Message Expiry Interval 0) replaces the
        // retained message and is deleted at once [MQTT-3.3.2-5].
        let dead = expires_at.is_some_and(|at| at <= now);
        if p.payload.is_empty() || dead {
            return SetOutcome::Cleared(self.remove(topic).map(|old| old.publish.topic));
        }
        let size = approx_size(&p);
        let old_size = self.messages.get(topic).map(|r| r.size);
        let count_after = self.messages.len() + usize::from(old_size.is_none());
        if count_after > max_messages || self.bytes - old_size.unwrap_or(0) + size > max_bytes {
            return SetOutcome::Full;
        }
        self.insert(p, expires_at);
        SetOutcome::Stored
    }

    /// Keeps `p` as its topic's retained message, unchecked (a restore replays what
    /// was accepted before).
    pub(crate) fn insert(&mut self, p: Publish, expires_at: Option<Instant>) {
        let size = approx_size(&p);
        let topic = p.topic.as_shared().clone();
        if let Some(at) = expires_at {
            self.schedule_expiry(at, topic.clone());
        }
        self.bytes += size;
        let new = Retained {
            publish: p,
            expires_at,
            size,
        };
        if let Some(old) = self.messages.insert(topic, new) {
            self.bytes -= old.size;
        }
    }

    /// Removes a topic's retained message.
    pub(crate) fn remove(&mut self, topic: &[u8]) -> Option<Retained> {
        let old = self.messages.remove(topic)?;
        self.bytes -= old.size;
        Some(old)
    }

    fn schedule_expiry(&mut self, at: Instant, topic: Bytes) {
        self.expiry.schedule(at, topic);
        // Replaced and cleared messages leave stale entries: once they could
        // outnumber the live ones, drop them, so churn cannot grow the queue.
        let messages = &self.messages;
        self.expiry
            .compact_if_over(2 * messages.len(), |topic, at| is_live(messages, topic, at));
    }

    /// Takes out the next message whose Message Expiry Interval has run out by
    /// `now` [MQTT-3.3.2-5]; O(1) when none is due.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Retained> {
        while let Some((at, topic)) = self.expiry.pop_due(now) {
            if is_live(&self.messages, &topic, at) {
                return self.remove(&topic);
            }
        }
        None
    }

    /// The retained messages a filter matches (the filter part of a shared
    /// subscription's filter), in topic order, with their deadlines.
    pub(crate) fn matching(&self, filter: &[u8]) -> Vec<(Publish, Option<Instant>)> {
        let mut matching: Vec<(Publish, Option<Instant>)> = self
            .messages
            .values()
            .filter(|r| filter_matches(filter, r.publish.topic.as_bytes()))
            .map(|r| (r.publish.clone(), r.expires_at))
            .collect();
        matching.sort_by(|a, b| a.0.topic.cmp(&b.0.topic));
        matching
    }
}

/// Whether the retained message of `topic` is the one that expires at `at` (an
/// expiry entry of a message replaced or cleared since is stale).
fn is_live(messages: &Map<Bytes, Retained>, topic: &Bytes, at: Instant) -> bool {
    messages
        .get(topic)
        .is_some_and(|r| r.expires_at == Some(at))
}
