//! Topic aliases the broker assigns towards a 5.0 client (MQTT 5.0 section 3.3.2.3.4).
//!
//! The first `Topic Alias Maximum` distinct topics sent to a connection get aliases
//! 1, 2, ...; the first PUBLISH of a topic carries topic and alias, later ones an
//! empty topic and the alias [MQTT-3.3.2-12]. Aliases never change meaning during a
//! connection and are forgotten with it [MQTT-3.3.2-10]. Clients that set no
//! maximum cost nothing: the table is allocated on first use.

use core::num::NonZeroU16;

use bytes::Bytes;
use mqtt_proto::{Packet, ProtocolVersion, Publish, TopicName};

use crate::hash::{Map, SeededState};

/// One connection's outbound alias table.
#[derive(Default)]
pub(crate) struct OutboundAliases {
    map: Option<Box<Map<Bytes, NonZeroU16>>>,
}

impl OutboundAliases {
    /// Rewrites `p` to use an alias if one exists or can be assigned, keeping the
    /// packet within the peer's Maximum Packet Size.
    pub(crate) fn apply(
        &mut self,
        p: &mut Publish,
        max: u16,
        peer_max_packet: u32,
        v: ProtocolVersion,
    ) {
        if p.topic.is_empty() || p.properties.topic_alias.is_some() {
            return;
        }
        let map = self
            .map
            .get_or_insert_with(|| Box::new(Map::with_hasher(SeededState::new(0))));
        if let Some(&alias) = map.get(p.topic.as_bytes()) {
            p.properties.topic_alias = Some(alias);
            p.topic = TopicName::default();
            return;
        }
        if map.len() >= usize::from(max) {
            return;
        }
        let Some(alias) = u16::try_from(map.len() + 1).ok().and_then(NonZeroU16::new) else {
            return;
        };
        p.properties.topic_alias = Some(alias);
        // The alias property adds three bytes: never push a packet over the limit.
        if peer_max_packet != u32::MAX {
            let probe = Packet::Publish(p.clone());
            if probe.encoded_len(v) > peer_max_packet as usize {
                p.properties.topic_alias = None;
                return;
            }
        }
        // The table outlives the read buffer the topic points into: copy it.
        map.insert(Bytes::copy_from_slice(p.topic.as_bytes()), alias);
    }
}
