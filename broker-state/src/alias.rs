//! Topic aliases the broker assigns towards a 5.0 client (MQTT 5.0 section 3.3.2.3.4).
//!
//! The first `Topic Alias Maximum` distinct topics sent to a connection get aliases
//! 1, 2, ...; the first PUBLISH of a topic carries topic and alias, later ones an
//! empty topic and the alias [MQTT-3.3.2-12]. Aliases never change meaning during a
//! connection and are forgotten with it [MQTT-3.3.2-10]. Clients that set no
//! maximum cost nothing: the table is allocated on first use.

use core::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use mqtt_proto::{Delivery, ProtocolVersion, Publish, TopicName};

use crate::hash::{Map, SeededState};

/// One connection's outbound alias table.
#[derive(Default)]
pub(crate) struct OutboundAliases {
    map: Option<Box<Map<Bytes, NonZeroU16>>>,
}

/// How a PUBLISH goes out.
enum Use {
    Plain,
    /// The topic has this alias: send the alias alone.
    Known(NonZeroU16),
    /// The topic gets this new alias: send both; remembered once it is on the wire.
    New(NonZeroU16),
}

/// What a connection's peer allows, for `encode`.
pub(crate) struct PeerLimits {
    /// The peer's Topic Alias Maximum.
    pub(crate) alias_max: u16,
    /// The peer's Maximum Packet Size (`u32::MAX` when it set none).
    pub(crate) max_packet: u32,
    pub(crate) version: ProtocolVersion,
    /// The broker's hash key: the table is keyed by topics that clients choose.
    pub(crate) keys: SeededState,
}

/// Where `encode` puts a packet, and how much of the buffer a write may take.
pub(crate) struct Budget {
    /// `buf.len()` when the write began.
    pub(crate) start: usize,
    pub(crate) bytes: usize,
}

impl OutboundAliases {
    fn decide(&self, p: &Publish, d: &Delivery<'_>, max: u16) -> Use {
        if max == 0 || p.topic.is_empty() || d.topic_alias.is_some() {
            return Use::Plain;
        }
        let Some(map) = &self.map else {
            return NonZeroU16::new(1).map_or(Use::Plain, Use::New);
        };
        if let Some(&alias) = map.get(p.topic.as_bytes()) {
            return Use::Known(alias);
        }
        if map.len() >= usize::from(max) {
            return Use::Plain;
        }
        u16::try_from(map.len() + 1)
            .ok()
            .and_then(NonZeroU16::new)
            .map_or(Use::Plain, Use::New)
    }

    /// Appends `p` as delivered with `d` to `buf`, with an alias if one exists or
    /// can be assigned within the peer's `max` (0: none), never pushing it over
    /// `peer_max_packet`. Returns false, writing nothing and assigning nothing, when
    /// the packet would take the write past its budget and is not the first in it.
    pub(crate) fn encode(
        &mut self,
        p: &Publish,
        mut d: Delivery<'_>,
        peer: &PeerLimits,
        buf: &mut BytesMut,
        budget: &Budget,
    ) -> bool {
        let (v, peer_max_packet) = (peer.version, peer.max_packet);
        let before = buf.len();
        let mut used = self.decide(p, &d, peer.alias_max);
        match used {
            Use::Plain => {}
            Use::Known(alias) => {
                d.topic_alias = Some(alias);
                d.omit_topic = true;
            }
            Use::New(alias) => {
                d.topic_alias = Some(alias);
                // The alias property adds three bytes: never push a packet over the
                // limit for it.
                if peer_max_packet != u32::MAX
                    && p.encoded_len_for(v, &d) > peer_max_packet as usize
                {
                    d.topic_alias = None;
                    used = Use::Plain;
                }
            }
        }
        // Encoding can only fail for packets the version cannot express, which the
        // broker does not queue; such a packet is skipped rather than sent wrong.
        let _ = p.encode_for(v, &d, buf);
        if before > budget.start && buf.len() - budget.start > budget.bytes {
            buf.truncate(before);
            return false;
        }
        if let Use::New(alias) = used {
            self.remember(&p.topic, alias, peer.keys);
        }
        true
    }

    fn remember(&mut self, topic: &TopicName, alias: NonZeroU16, keys: SeededState) {
        let map = self
            .map
            .get_or_insert_with(|| Box::new(Map::with_hasher(keys)));
        // The table outlives the read buffer the topic points into: copy it.
        map.insert(Bytes::copy_from_slice(topic.as_bytes()), alias);
    }
}
