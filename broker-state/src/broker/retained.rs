//! Retained messages as the broker uses its store (`crate::retained`): set,
//! cleared and expired, with their store effects and counters.

use super::*;
use crate::retained::SetOutcome;

impl Broker {
    /// Sets or clears (empty payload, [MQTT-3.3.1-6] [MQTT-3.3.1-7]) the retained
    /// message of a topic. False when the retained store is full.
    pub(super) fn set_retained(
        &mut self,
        now: Now,
        p: &Publish,
        expires_at: Option<Instant>,
    ) -> bool {
        // Expired messages leave the limits before they are checked.
        self.expire_retained(now);
        let mut publish = p.clone();
        if !p.payload.is_empty() {
            publish.retain = true;
            publish.dup = false;
            publish.packet_id = None;
            publish.properties.topic_alias = None;
            publish.properties.subscription_identifiers = Vec::new();
            detach_publish(&mut publish);
        }
        let (max_messages, max_bytes) = (
            self.config.max_retained_messages,
            self.config.max_retained_bytes,
        );
        // The store's copy, only when there is a store to tell.
        let effect = self.config.store_effects.then(|| publish.clone());
        match self
            .retained
            .set(publish, expires_at, now.instant, max_messages, max_bytes)
        {
            SetOutcome::Stored => {
                if let Some(publish) = effect {
                    self.emit_store(StoreOp::RetainSet(StoredMessage {
                        publish,
                        expires_at_unix_ms: expiry_wall(now, expires_at),
                    }));
                }
                true
            }
            SetOutcome::Cleared(topic) => {
                if let (Some(topic), true) = (topic, self.config.store_effects) {
                    self.emit_store(StoreOp::RetainClear { topic });
                }
                true
            }
            SetOutcome::Full => {
                self.stats.retained_refused += 1;
                false
            }
        }
    }

    /// Deletes the retained messages whose Message Expiry Interval has run out
    /// [MQTT-3.3.2-5], so that they no longer count toward the retained limits.
    /// Called before the retained messages are looked at or changed, and from
    /// `handle_timeout` (`poll_timeout` includes their deadlines); O(1) when none
    /// is due.
    pub(super) fn expire_retained(&mut self, now: Now) {
        while let Some(old) = self.retained.pop_expired(now.instant) {
            self.stats.retained_expired += 1;
            if self.config.store_effects {
                self.emit_store(StoreOp::RetainClear {
                    topic: old.publish.topic,
                });
            }
        }
    }
}
