//! Retained messages: set, cleared, bounded, expired.

use super::*;

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
        let topic = p.topic.as_bytes();
        // A message that has already expired (Message Expiry Interval 0) replaces the
        // retained message and is deleted at once [MQTT-3.3.2-5].
        let dead = expires_at.is_some_and(|at| at <= now.instant);
        if p.payload.is_empty() || dead {
            if let Some(old) = self.retained.remove(topic) {
                self.retained_bytes -= old.size;
                if self.config.store_effects {
                    self.events.push_back(Event::store(StoreOp::RetainClear {
                        topic: old.publish.topic,
                    }));
                }
            }
            return true;
        }
        let size = approx_size(p);
        let old_size = self.retained.get(topic).map(|r| r.size);
        let count_after = self.retained.len() + usize::from(old_size.is_none());
        if count_after > self.config.max_retained_messages
            || self.retained_bytes - old_size.unwrap_or(0) + size > self.config.max_retained_bytes
        {
            self.stats.retained_refused += 1;
            return false;
        }
        let mut publish = p.clone();
        publish.retain = true;
        publish.dup = false;
        publish.packet_id = None;
        publish.properties.topic_alias = None;
        publish.properties.subscription_identifiers = Vec::new();
        detach_publish(&mut publish);
        self.retained_bytes = self.retained_bytes - old_size.unwrap_or(0) + size;
        if self.config.store_effects {
            self.events
                .push_back(Event::store(StoreOp::RetainSet(StoredMessage {
                    publish: publish.clone(),
                    expires_at_unix_ms: expiry_wall(now, expires_at),
                })));
        }
        let topic = publish.topic.as_shared().clone();
        if let Some(at) = expires_at {
            self.schedule_retained_expiry(at, topic.clone());
        }
        self.retained.insert(
            topic,
            Retained {
                publish,
                expires_at,
                size,
            },
        );
        true
    }

    pub(super) fn schedule_retained_expiry(&mut self, at: Instant, topic: Bytes) {
        self.retained_expiry.schedule(at, topic);
        // Replaced and cleared messages leave stale entries: once they could
        // outnumber the live ones, drop them, so churn cannot grow the queue.
        let retained = &self.retained;
        self.retained_expiry
            .compact_if_over(2 * retained.len(), |topic, at| {
                retained_live(retained, topic, at)
            });
    }

    /// Deletes the retained messages whose Message Expiry Interval has run out
    /// [MQTT-3.3.2-5], so that they no longer count toward the retained limits.
    /// Called before the retained messages are looked at or changed, and from
    /// `handle_timeout` (`poll_timeout` includes their deadlines); O(1) when none
    /// is due.
    pub(super) fn expire_retained(&mut self, now: Now) {
        while let Some((at, topic)) = self.retained_expiry.pop_due(now.instant) {
            if !retained_live(&self.retained, &topic, at) {
                continue;
            }
            if let Some(old) = self.retained.remove(&topic) {
                self.retained_bytes -= old.size;
                self.stats.retained_expired += 1;
                if self.config.store_effects {
                    self.events.push_back(Event::store(StoreOp::RetainClear {
                        topic: old.publish.topic,
                    }));
                }
            }
        }
    }
}
