//! Sessions (keyed by client id, outliving connections) and connections.

use std::collections::VecDeque;
use std::time::Instant;

use core::num::NonZeroU32;
use mqtt_proto::{MqttString, PacketId, ProtocolVersion, Publish, QoS, TopicFilter, TopicName};

use crate::event::PeerInfo;
use crate::ids::{ConnId, SessionKey};
use crate::subscriptions::Subscriptions;

/// A QoS 1/2 message waiting in a session queue or in flight: a reference to the
/// message, held once in the broker's [`SharedMsgs`](crate::outq::SharedMsgs)
/// however many receive it, and what this delivery sets in it (see
/// [`mqtt_proto::Delivery`]). Each `Queued` holds one reference: whoever drops one
/// gives it back (`SharedMsgs::release`).
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) msg: crate::outq::MsgRef,
    /// The granted QoS of this delivery (1 or 2).
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) sub_ids: SubIds,
    /// The Message Expiry Interval sent: the time left when it went in flight.
    /// (The deadline itself is the message's, kept with it in `SharedMsgs`.)
    pub(crate) expiry_left: Option<u32>,
    pub(crate) seq: u64,
    /// The shared subscription (`$share/{group}/{filter}`) it came through, if any,
    /// and the QoS it was published with (a redelivery to another member gets the
    /// smaller of that and the member's granted QoS [MQTT-3.8.4-8]).
    pub(crate) shared: Option<(TopicFilter, QoS)>,
}

impl Queued {
    /// This delivery of the message, with `packet_id`.
    pub(crate) fn delivery(&self, packet_id: PacketId, dup: bool) -> mqtt_proto::Delivery<'_> {
        mqtt_proto::Delivery {
            dup,
            qos: self.qos,
            retain: self.retain,
            packet_id: Some(packet_id),
            message_expiry_interval: self.expiry_left,
            subscription_identifiers: self.sub_ids.as_slice(),
            topic_alias: None,
            omit_topic: false,
        }
    }
}

/// The Subscription Identifiers of one delivery: usually none or one, kept inline
/// (a `Vec` would make every in-flight entry 8 bytes larger).
#[derive(Debug)]
pub(crate) enum SubIds {
    One(Option<NonZeroU32>),
    Many(Box<[NonZeroU32]>),
}

impl SubIds {
    pub(crate) fn from_vec(ids: Vec<NonZeroU32>) -> Self {
        match ids.as_slice() {
            [] => SubIds::One(None),
            [id] => SubIds::One(Some(*id)),
            _ => SubIds::Many(ids.into_boxed_slice()),
        }
    }

    pub(crate) fn as_slice(&self) -> &[NonZeroU32] {
        match self {
            SubIds::One(id) => id.as_slice(),
            SubIds::Many(ids) => ids,
        }
    }
}

/// Where an outbound QoS 1/2 message is in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlightState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREC received, PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) packet_id: PacketId,
    pub(crate) state: FlightState,
    pub(crate) msg: Queued,
    /// Allocation counter when the packet id was taken (see `Session::next_id`).
    pub(crate) allocated: u64,
    /// The PUBLISH has been written by `poll_transmit` (or resent as a copy); until
    /// then the connection's output queue names it.
    pub(crate) sent: bool,
}

/// A CONNECT while it is authenticated: the packet, what was decided about it
/// already, and the packets the client sent after it in the meantime.
pub(crate) struct PendingConnect {
    pub(crate) connect: mqtt_proto::Connect,
    pub(crate) plan: crate::broker::ConnectPlan,
    /// At most [`crate::MAX_HELD_PACKETS`], handled after the CONNACK.
    pub(crate) held: Vec<mqtt_proto::Packet>,
    /// Once authenticated on a node of a cluster: who the client is and when
    /// its credentials expire, while the cluster hands its session over
    /// (`ClusterOp::Acquire`).
    pub(crate) authenticated:
        Option<Box<(crate::broker::Authenticated, Option<std::time::Instant>)>>,
}

/// A will waiting for its connection to end abnormally, or for its delay.
#[derive(Debug, Clone)]
pub(crate) struct PendingWill {
    pub(crate) publish: Publish,
    pub(crate) delay: u32,
}

/// A client's grants under the permission bindings in force, and the decision for
/// the topic it published to last: a client that publishes to the same topic
/// again (most devices do) costs one comparison instead of a scan.
#[derive(Debug)]
pub(crate) struct Authorized {
    pub(crate) grants: crate::authz::Grants,
    /// The last topic decided (empty: none; topics are never empty).
    memo: Vec<u8>,
    memo_allowed: bool,
}

/// Topics longer than this are decided every time rather than remembered.
const MEMO_MAX: usize = 256;

impl Authorized {
    pub(crate) fn new(grants: crate::authz::Grants) -> Self {
        Authorized {
            grants,
            memo: Vec::new(),
            memo_allowed: false,
        }
    }

    /// May the client publish to `topic`? Remembered for the next one.
    pub(crate) fn may_publish(&mut self, topic: &[u8]) -> bool {
        if !self.memo.is_empty() && self.memo == topic {
            return self.memo_allowed;
        }
        let allowed = self.grants.publish(topic).is_some();
        if topic.len() <= MEMO_MAX {
            self.memo.clear();
            self.memo.extend_from_slice(topic);
            self.memo_allowed = allowed;
        }
        allowed
    }
}

pub(crate) struct Session {
    pub(crate) client_id: MqttString,
    pub(crate) auth_name: Option<String>,
    /// The attributes of the client's last authentication (not stored: every
    /// connection brings its own).
    pub(crate) attributes: Option<std::sync::Arc<crate::hooks::Attributes>>,
    /// What the client may publish and subscribe to under the permission bindings
    /// in force (`None` without a policy, or while the client is not known).
    pub(crate) grants: Option<Box<Authorized>>,
    /// The client connected since the broker started, so its name and attributes
    /// are known (a session restored from the store has neither until then).
    pub(crate) identified: bool,
    pub(crate) conn: Option<ConnId>,
    /// Seconds; 0 ends the session with its connection, `u32::MAX` never expires.
    pub(crate) expiry_interval: u32,
    /// Deadline while offline.
    pub(crate) expires_at: Option<Instant>,
    pub(crate) subscriptions: Subscriptions,
    /// The in-flight window, the queue and the incoming QoS 2 ids: allocated by
    /// the first message flow (see [`Flows`]).
    pub(crate) flows: Flows,
    /// The store's number of the last message queued: never reused within the
    /// session, so it lives outside `flows`, which may be given back.
    pub(crate) next_seq: u64,
    /// The packet id handed out last: kept across connections (and when `flows`
    /// is given back), so that ids go on in sequence.
    pub(crate) last_packet_id: u16,
    /// A will whose delay is running (the connection is gone).
    /// Boxed: most sessions have none, and a `Publish` is ~240 bytes.
    pub(crate) delayed_will: Option<Box<(Instant, Publish)>>,
    /// The store holds a record of this session (an upsert went out, no removal
    /// since). A session can stop being persistent while it lives (a resume or a
    /// DISCONNECT with expiry 0), and its record must then still be removed.
    pub(crate) stored: bool,
    /// The last route (by the broker's route count) that matched this session; a
    /// second match in the same route means overlapping subscriptions.
    pub(crate) route_mark: u32,
}

impl Session {
    pub(crate) fn new(client_id: MqttString, auth_name: Option<String>) -> Self {
        Session {
            client_id,
            auth_name,
            attributes: None,
            grants: None,
            identified: false,
            conn: None,
            expiry_interval: 0,
            expires_at: None,
            subscriptions: Subscriptions::default(),
            flows: Flows::default(),
            next_seq: 0,
            last_packet_id: 0,
            delayed_will: None,
            stored: false,
            route_mark: 0,
        }
    }

    pub(crate) fn persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    /// The next free packet id for an outbound message (see
    /// [`FlowState::next_packet_id`]).
    pub(crate) fn next_packet_id(&mut self) -> Option<PacketId> {
        let last = &mut self.last_packet_id;
        self.flows.next_packet_id(last)
    }

    pub(crate) fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// A session's message flows: its in-flight window, its queue, the incoming QoS 2
/// ids it has not seen released, and its packet id sequence.
#[derive(Debug, Default)]
pub(crate) struct FlowState {
    pub(crate) inflight: VecDeque<InFlight>,
    pub(crate) queue: VecDeque<Queued>,
    pub(crate) queue_bytes: usize,
    /// Incoming QoS 2 packet ids received and not yet released (PUBREL).
    pub(crate) incoming_qos2: IncomingQos2,
    /// Packet ids handed out while this state lived (see `next_packet_id`).
    pub(crate) allocations: u64,
}

/// What every session without a flow reads.
static NO_FLOWS: FlowState = FlowState {
    inflight: VecDeque::new(),
    queue: VecDeque::new(),
    queue_bytes: 0,
    incoming_qos2: IncomingQos2 {
        ids: Vec::new(),
        earlier: 0,
    },
    allocations: 0,
};

/// A session's [`FlowState`], boxed and allocated by the first write: most of a
/// fleet's sessions sit idle with nothing in flight, and keep 8 bytes instead of
/// the state's 112. Reading through it never allocates (an absent state reads
/// as empty); writing through it does (`DerefMut`), so code that may find
/// nothing to do checks with a read first. [`Flows::release_if_idle`] gives the
/// box back once everything in it is done.
#[derive(Debug, Default)]
pub(crate) struct Flows(Option<Box<FlowState>>);

impl core::ops::Deref for Flows {
    type Target = FlowState;
    #[inline]
    fn deref(&self) -> &FlowState {
        self.0.as_deref().unwrap_or(&NO_FLOWS)
    }
}

impl core::ops::DerefMut for Flows {
    #[inline]
    fn deref_mut(&mut self) -> &mut FlowState {
        self.0.get_or_insert_with(Box::default)
    }
}

impl Flows {
    /// The state, if it is allocated: for changes that have nothing to change
    /// in an empty one.
    pub(crate) fn allocated(&mut self) -> Option<&mut FlowState> {
        self.0.as_deref_mut()
    }

    /// Frees the state once nothing is queued, in flight or unreleased (the
    /// session keeps its last packet id and its store sequence).
    pub(crate) fn release_if_idle(&mut self) {
        if self.0.as_deref().is_some_and(|f| {
            f.inflight.is_empty() && f.queue.is_empty() && f.incoming_qos2.ids.is_empty()
        }) {
            self.0 = None;
        }
    }
}

impl FlowState {
    /// The next free packet id for an outbound message, or `None` if all 65,535 are
    /// in flight.
    ///
    /// Ids are handed out in sequence and `inflight` is kept in allocation order, so
    /// the candidate can only be taken if the oldest in-flight entry was allocated at
    /// least 65,535 allocations ago; only then is the in-flight list searched.
    /// `last_packet_id` is the session's, which outlives this state.
    pub(crate) fn next_packet_id(&mut self, last_packet_id: &mut u16) -> Option<PacketId> {
        if self.inflight.len() >= u16::MAX as usize {
            return None;
        }
        loop {
            *last_packet_id = last_packet_id.wrapping_add(1);
            if *last_packet_id == 0 {
                *last_packet_id = 1;
            }
            self.allocations += 1;
            let candidate = *last_packet_id;
            let maybe_taken = self
                .inflight
                .front()
                .is_some_and(|f| self.allocations - f.allocated >= u64::from(u16::MAX) - 1);
            if !maybe_taken || !self.inflight.iter().any(|f| f.packet_id.get() == candidate) {
                return PacketId::new(candidate);
            }
        }
    }
}

/// The packet ids of incoming QoS 2 messages received and not yet released by
/// PUBREL: the session's exactly-once state, kept across connections so that a
/// PUBLISH resent after a reconnect is not routed twice [MQTT-4.3.3-2].
///
/// Only the ids received on the current network connection count against the
/// server's Receive Maximum: the client's send quota starts afresh with each
/// connection (5.0 section 4.9). Those are kept at the back; the first `earlier`
/// ids came on an earlier connection of the session.
///
/// Ids are unique (a known id is a duplicate, answered and not stored again), so
/// the list never holds more than the 65,535 packet ids (128 KiB), whatever the
/// protocol version; a 5.0 client is further held to the Receive Maximum per
/// connection.
#[derive(Debug, Default)]
pub(crate) struct IncomingQos2 {
    ids: Vec<PacketId>,
    earlier: usize,
}

impl IncomingQos2 {
    /// A new network connection took the session: every id so far is an earlier
    /// connection's.
    pub(crate) fn new_connection(&mut self) {
        self.earlier = self.ids.len();
    }

    /// Unreleased ids received on the current connection.
    pub(crate) fn on_this_connection(&self) -> usize {
        self.ids.len() - self.earlier
    }

    /// Whether `id` is unreleased. A PUBLISH with it on the current connection (a
    /// resend with DUP after a reconnect) counts for this connection from now on,
    /// as it does in the client's send quota.
    pub(crate) fn received_again(&mut self, id: PacketId) -> bool {
        match self.position(id) {
            Some(i) => {
                if i < self.earlier {
                    self.ids.swap(i, self.earlier - 1);
                    self.earlier -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// A new id, received on the current connection.
    pub(crate) fn insert(&mut self, id: PacketId) {
        self.ids.push(id);
    }

    /// PUBREL: forgets `id`; false if it was not unreleased.
    pub(crate) fn release(&mut self, id: PacketId) -> bool {
        let Some(i) = self.position(id) else {
            return false;
        };
        if i < self.earlier {
            // Move it to the end of the earlier ids; `swap_remove` then fills its
            // place with the last id, one of the current connection's (or itself).
            self.earlier -= 1;
            self.ids.swap(i, self.earlier);
            self.ids.swap_remove(self.earlier);
        } else {
            self.ids.swap_remove(i);
        }
        true
    }

    /// The ids, earlier connections' first (for consistency checks).
    pub(crate) fn ids(&self) -> (&[PacketId], usize) {
        (&self.ids, self.earlier)
    }

    /// A linear search, in blocks compared without an early exit so that the
    /// compiler vectorises them: a 3.1.1 client may keep all 65,535 ids unreleased,
    /// and every QoS 2 PUBLISH and PUBREL looks its id up. Measured against
    /// `iter().position` (rustc -O, random hits): 2.3 vs 10.8 µs a lookup among
    /// 65,535 ids, 52 vs 175 ns among 1,000; about 1.3x slower among 20.
    fn position(&self, id: PacketId) -> Option<usize> {
        const BLOCK: usize = 32;
        let mut blocks = self.ids.chunks_exact(BLOCK);
        for (n, block) in (&mut blocks).enumerate() {
            if block.iter().fold(false, |hit, x| hit | (*x == id)) {
                return block.iter().position(|x| *x == id).map(|i| n * BLOCK + i);
            }
        }
        let rest = blocks.remainder();
        let start = self.ids.len() - rest.len();
        rest.iter().position(|x| *x == id).map(|i| start + i)
    }
}

/// Per-connection state. The client id that names the connection in the
/// adapter's logs is the session's while it is bound; before and after, the
/// state keeps it (boxed: 8 bytes in every connection, not a 32-byte string).
pub(crate) enum ConnState {
    /// Accepted, waiting for CONNECT until the connection's timer (`timer_at`,
    /// the connect timeout until CONNECT is accepted). `client_id` once a
    /// CONNECT is being authenticated.
    AwaitingConnect { client_id: Option<Box<MqttString>> },
    /// CONNECT accepted; bound to a session.
    Active { session: SessionKey },
    /// The broker is done with it; the adapter drains the output and closes it.
    /// `session` is the one it was bound to, whose in-flight PUBLISHes still queued
    /// for it are written before it closes (as copies would be).
    Closing {
        session: Option<SessionKey>,
        client_id: Option<Box<MqttString>>,
    },
}

/// What only some connections have: its authentication beyond its name (what
/// lasts for its life) and the topic aliases its client set.
#[derive(Debug, Default)]
pub(crate) struct ConnExtras {
    /// The Authentication Method agreed at CONNECT.
    pub(crate) method: Option<MqttString>,
    /// When the credentials stop being valid (monotonic).
    pub(crate) expires: Option<Instant>,
    /// Inbound topic aliases, indexed by alias - 1; allocated on first use.
    pub(crate) inbound_aliases: Box<[Option<TopicName>]>,
}

pub(crate) struct Conn {
    pub(crate) peer: PeerInfo,
    pub(crate) state: ConnState,
    pub(crate) version: ProtocolVersion,
    /// Packets waiting for `poll_transmit`, encoded lazily into the caller's buffer.
    pub(crate) out: crate::outq::OutQueue,
    /// A Transmit event is outstanding.
    pub(crate) transmit_signalled: bool,
    /// 1.5 x Keep Alive in milliseconds (at most 98,302,500), 0 when keep-alive
    /// is off: 4 bytes, not an `Option<Duration>`'s 16.
    pub(crate) keep_alive_ms: u32,
    pub(crate) last_rx: Instant,
    /// When the connection's one timer entry fires (connect timeout, then
    /// keep-alive check); other entries for it are stale.
    pub(crate) timer_at: Option<Instant>,
    /// Peer's Maximum Packet Size (u32::MAX when it set none).
    pub(crate) peer_max_packet: u32,
    /// Peer's Receive Maximum (our window towards it).
    pub(crate) peer_receive_max: u16,
    /// The Authentication Method agreed at CONNECT (enhanced authentication),
    /// when the credentials expire, the inbound topic aliases. Boxed: most
    /// connections have none of them (8 bytes instead of 56 in every `Conn`).
    pub(crate) extras: Option<Box<ConnExtras>>,
    /// A CONNECT waiting for its authentication (an answer, or the client's next
    /// AUTH).
    pub(crate) pending_connect: Option<Box<PendingConnect>>,
    /// The current authentication question's number while its answer is awaited
    /// (see [`crate::AuthTicket`]); 0 when none is.
    pub(crate) auth_ticket: u32,
    /// A re-authentication (AUTH 0x19) is in progress.
    pub(crate) reauthenticating: bool,
    /// Peer's Topic Alias Maximum: how many aliases the broker may set towards it.
    pub(crate) peer_topic_alias_max: u16,
    /// Aliases the broker set towards the peer.
    pub(crate) out_aliases: crate::alias::OutboundAliases,
    /// Boxed: most connections have none, and a `Publish` is ~240 bytes.
    pub(crate) will: Option<Box<crate::session::PendingWill>>,
    /// Whether the client asked for Reason Strings and User Properties on failures
    /// (Request Problem Information, default true).
    pub(crate) problem_info: bool,
    /// Session expiry requested at CONNECT was 0 (a DISCONNECT may not raise it
    /// [MQTT-3.14.2-2]).
    pub(crate) connect_expiry_zero: bool,
    /// A packet too large for the peer even without its Reason String could not be
    /// sent, and the connection was asked to close (once).
    pub(crate) unsendable: bool,
    /// Acknowledgements to this connection waiting for the store (see
    /// `broker/durability.rs`).
    pub(crate) held_acks: u32,
    /// What this connection's output held beyond `outbound_buffer_bytes` when last
    /// counted into the broker's burst total.
    pub(crate) burst: u32,
}

impl Conn {
    pub(crate) fn new(peer: PeerInfo, now: Instant) -> Self {
        Conn {
            peer,
            state: ConnState::AwaitingConnect { client_id: None },
            version: ProtocolVersion::V3_1_1,
            out: crate::outq::OutQueue::default(),
            transmit_signalled: false,
            keep_alive_ms: 0,
            last_rx: now,
            timer_at: None,
            peer_max_packet: u32::MAX,
            peer_receive_max: u16::MAX,
            peer_topic_alias_max: 0,
            extras: None,
            pending_connect: None,
            auth_ticket: 0,
            reauthenticating: false,
            out_aliases: crate::alias::OutboundAliases::default(),
            will: None,
            problem_info: true,
            connect_expiry_zero: true,
            unsendable: false,
            held_acks: 0,
            burst: 0,
        }
    }

    /// A CONNECT is waiting for its authentication to finish.
    pub(crate) fn pending_auth(&self) -> bool {
        self.pending_connect.is_some()
    }

    /// An answer to an authentication question is awaited.
    pub(crate) fn awaiting_answer(&self) -> bool {
        self.auth_ticket != 0
    }

    pub(crate) fn session(&self) -> Option<SessionKey> {
        match self.state {
            ConnState::Active { session } => Some(session),
            _ => None,
        }
    }

    /// The session whose in-flight window the output queue's flight tags name: the
    /// bound one, also while closing.
    pub(crate) fn flight_session(&self) -> Option<SessionKey> {
        match self.state {
            ConnState::Active { session } => Some(session),
            ConnState::Closing { session, .. } => session,
            ConnState::AwaitingConnect { .. } => None,
        }
    }

    /// The client id naming the connection: its session's while bound (looked
    /// up in `sessions`), else the one its state keeps.
    pub(crate) fn client_id<'a>(
        &'a self,
        sessions: &'a crate::ids::Slab<Session>,
    ) -> Option<&'a MqttString> {
        match &self.state {
            ConnState::Active { session } => sessions.get(*session).map(|s| &s.client_id),
            ConnState::AwaitingConnect { client_id } | ConnState::Closing { client_id, .. } => {
                client_id.as_deref()
            }
        }
    }

    /// Marks the connection closing (remembering its session, see `Closing`, and
    /// its client id, looked up in `sessions`).
    pub(crate) fn start_closing(&mut self, sessions: &crate::ids::Slab<Session>) {
        let client_id = match &mut self.state {
            ConnState::Active { session } => sessions
                .get(*session)
                .map(|s| Box::new(s.client_id.clone())),
            ConnState::AwaitingConnect { client_id } | ConnState::Closing { client_id, .. } => {
                client_id.take()
            }
        };
        self.state = ConnState::Closing {
            session: self.flight_session(),
            client_id,
        };
    }
}

/// Approximate wire size of a PUBLISH, for queue byte limits. Cheap on purpose: the
/// exact size is computed only where a peer's Maximum Packet Size needs it.
pub(crate) fn approx_size(p: &Publish) -> usize {
    let props = &p.properties;
    p.topic.len()
        + p.payload.len()
        + props.user_properties.encoded_len()
        + props.correlation_data.as_ref().map_or(0, |b| b.len())
        + props.response_topic.as_ref().map_or(0, |t| t.len())
        + props.content_type.as_ref().map_or(0, |t| t.len())
        + 16
}

pub(crate) fn qos_min(a: QoS, b: QoS) -> QoS {
    a.min(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(flows: &Flows) -> bool {
        flows.0.is_some()
    }

    #[test]
    fn an_idle_session_holds_no_flow_state_and_reading_it_allocates_none() {
        assert!(
            core::mem::size_of::<Flows>() == 8,
            "the point of Flows is one pointer in every session"
        );
        let mut s = Session::new(MqttString::default(), None);
        assert!(s.flows.inflight.is_empty() && s.flows.queue.is_empty());
        assert_eq!(s.flows.queue_bytes, 0);
        assert!(s.flows.allocated().is_none());
        assert!(
            !held(&s.flows),
            "reads and `allocated` leave it unallocated"
        );

        // The first packet id allocates it; ids go on in sequence after it is
        // given back.
        assert_eq!(s.next_packet_id().map(|p| p.get()), Some(1));
        assert!(held(&s.flows));
        s.flows.release_if_idle();
        assert!(!held(&s.flows), "nothing in flight: given back");
        assert_eq!(s.next_packet_id().map(|p| p.get()), Some(2));
    }

    #[test]
    fn flow_state_in_use_is_kept() {
        let mut s = Session::new(MqttString::default(), None);
        let id = PacketId::new(7).expect("non-zero");
        s.flows.incoming_qos2.insert(id);
        s.flows.release_if_idle();
        assert!(held(&s.flows), "an unreleased QoS 2 id keeps it");
        assert!(s.flows.incoming_qos2.release(id));
        s.flows.release_if_idle();
        assert!(!held(&s.flows));
    }
}
