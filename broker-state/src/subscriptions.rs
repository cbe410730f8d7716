//! One session's subscriptions: its filters in order, with an index once there are
//! many, so that a backend session with tens of thousands of filters subscribes and
//! unsubscribes each in constant time rather than scanning them all.

use bytes::Bytes;
use core::num::NonZeroU32;
use mqtt_proto::{SubscriptionOptions, TopicFilter};

use crate::hash::{Map, SeededState};

/// Below this many filters a scan is cheaper than an index (and costs no memory).
const INDEX_FROM: usize = 32;

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub(crate) filter: TopicFilter,
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<NonZeroU32>,
}

#[derive(Default)]
pub(crate) struct Subscriptions {
    list: Vec<Subscription>,
    /// Filter -> position in `list`, kept once `list` has grown past `INDEX_FROM`.
    index: Option<Box<Map<Bytes, u32>>>,
}

impl Subscriptions {
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn iter(&self) -> core::slice::Iter<'_, Subscription> {
        self.list.iter()
    }

    fn position(&self, filter: &TopicFilter) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(filter.as_bytes()).map(|&i| i as usize),
            None => self.list.iter().position(|s| s.filter == *filter),
        }
    }

    pub(crate) fn contains(&self, filter: &TopicFilter) -> bool {
        self.position(filter).is_some()
    }

    /// Adds the subscription, or replaces the options and identifier of the one with
    /// the same filter [MQTT-3.8.4-3].
    pub(crate) fn upsert(&mut self, sub: Subscription, keys: SeededState) {
        if let Some(i) = self.position(&sub.filter) {
            self.list[i] = sub;
            return;
        }
        let at = self.list.len() as u32;
        if let Some(index) = &mut self.index {
            index.insert(sub.filter.as_shared().clone(), at);
        }
        self.list.push(sub);
        if self.index.is_none() && self.list.len() > INDEX_FROM {
            let mut index = Map::with_capacity_and_hasher(self.list.len(), keys);
            for (i, s) in self.list.iter().enumerate() {
                index.insert(s.filter.as_shared().clone(), i as u32);
            }
            self.index = Some(Box::new(index));
        }
    }

    /// Removes the subscription with `filter`; false if there was none.
    pub(crate) fn remove(&mut self, filter: &TopicFilter) -> bool {
        let Some(i) = self.position(filter) else {
            return false;
        };
        let removed = self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(removed.filter.as_bytes());
            if let Some(moved) = self.list.get(i) {
                index.insert(moved.filter.as_shared().clone(), i as u32);
            }
        }
        true
    }
}
