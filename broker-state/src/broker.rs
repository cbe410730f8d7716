//! The broker state machine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use core::num::{NonZeroU16, NonZeroU32};
use mqtt_proto::{
    AckProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, MqttString,
    Packet, PacketId, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, ReasonContext,
    RetainHandling, SubAck, Subscribe, TopicFilter, TopicName, UnsubAck, Unsubscribe,
};

use crate::alias::{Budget, PeerLimits};
use crate::config::{Config, OverflowPolicy};
use crate::event::{
    ClusterOp, Event, Input, Now, PeerInfo, SessionEnd, SessionRecord, StoreOp, StoredMessage,
    StoredWill,
};
use crate::hash::{Map, SeededState};
use crate::hooks::{AllowAll, Authenticator, Authorizer, ClientInfo, EnhancedAuthenticator};
use crate::ids::{ConnId, ConnKey, SessionKey, Slab};
use crate::outq::{Front, MsgRef, OutPool, SharedMsgs, SharedTag};
use crate::retained::RetainedStore;
use crate::rng::Rng;
use crate::router::{Match, Picker, Router, SubEntry};
use crate::session::{
    approx_size, qos_min, Conn, ConnState, FlightState, InFlight, PendingWill, Queued, Session,
    SubIds,
};
use crate::subscriptions::Subscription;
use crate::timer::{TimerKind, Timers};

mod auth;
mod authorization;
mod cluster;
mod connect;
mod durability;
mod events;
mod flight;
mod gauges;
mod invariants;
mod lifecycle;
mod publish;
mod restore;
mod retained;
mod subscribe;

pub use gauges::Gauges;

/// Counters of what the broker did and dropped. Every drop is counted here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// PUBLISH packets received from clients.
    pub publishes_received: u64,
    /// The same, by QoS (index 0, 1, 2).
    pub publishes_received_by_qos: [u64; 3],
    /// PUBLISH packets queued for delivery to clients.
    pub deliveries: u64,
    /// QoS 0 messages dropped because a connection's outbound buffer was full.
    pub dropped_qos0_slow_consumer: u64,
    /// QoS 1/2 messages dropped from a full online session queue (oldest QoS 1 first).
    pub dropped_online_queue_full: u64,
    /// Messages dropped from a full offline session queue (drop-oldest/newest policy).
    pub dropped_offline_queue_full: u64,
    /// Sessions ended because their offline queue overflowed (end-session policy).
    pub sessions_ended_by_overflow: u64,
    /// Messages not sent because they exceed the receiver's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Messages whose Message Expiry Interval ran out before delivery.
    pub expired: u64,
    /// Retained messages refused because the retained store was full.
    pub retained_refused: u64,
    /// Retained messages deleted because their Message Expiry Interval ran out.
    pub retained_expired: u64,
    /// Publications refused by the authorization hook.
    pub publish_not_authorized: u64,
    /// Subscriptions removed because a new authorization policy no longer allows
    /// them.
    pub subscriptions_revoked: u64,
    /// SUBSCRIBE filters refused by authorization.
    pub subscribe_not_authorized: u64,
    /// Takeovers of a live session by a new connection.
    pub takeovers: u64,
    /// QoS 1 messages of a shared subscription sent to another member because the
    /// session they were in flight to ended.
    pub shared_redeliveries: u64,
    /// Subscriptions refused with Quota exceeded (per-session or broker-wide limit).
    pub subscriptions_refused: u64,
    /// Acknowledgements refused (or connections closed) because the store could
    /// not make what they acknowledged durable.
    pub store_failures_refused: u64,
    /// Messages of a shared subscription the cluster sent to this node for a
    /// group that had no member here any more (gone for that group).
    pub cluster_shared_unmatched: u64,
    /// Copies of another node's message that came through a filter other than
    /// the oldest local one it matches (or one no longer subscribed), dropped.
    pub cluster_duplicates: u64,
    /// Messages accepted here that no other node wanted (nothing forwarded).
    pub cluster_not_forwarded: u64,
    /// Sessions that ended here because a client connected to another node of
    /// the cluster with their client identifier.
    pub cluster_takeovers: u64,
    /// Sessions that came to this node from another one (read from the
    /// cluster's store when their client connected here).
    pub cluster_sessions_moved: u64,
    /// Sessions this node took over from a node that left the cluster
    /// without letting them go ([`Broker::handle_sessions_adopted`]).
    pub cluster_sessions_adopted: u64,
}

/// The sans-IO MQTT broker. See the crate documentation for the run-loop contract.
pub struct Broker {
    /// The secret key of every map keyed by client-chosen bytes (HashDoS).
    hash_keys: SeededState,
    config: Config,
    conns: Slab<Conn>,
    sessions: Slab<Session>,
    by_client_id: crate::client_ids::ClientIds,
    sessions_per_auth: Map<String, usize>,
    router: Router,
    /// On a node of a cluster: the filters the other nodes announced (shared
    /// ones by their filter part), to forward only what someone elsewhere
    /// wants; see `broker/cluster.rs`.
    remote: cluster::RemoteInterest,
    retained: RetainedStore,
    timers: Timers,
    events: VecDeque<Event>,
    rng: Rng,
    authenticator: Box<dyn Authenticator + Send>,
    authorizer: Box<dyn Authorizer + Send>,
    /// `authorizer` is still [`AllowAll`].
    authorizer_is_default: bool,
    /// Permission bindings in force (`None`: everything allowed); see
    /// `broker/authorization.rs`.
    authz: Option<std::sync::Arc<crate::authz::Policy>>,
    enhanced: Option<Box<dyn EnhancedAuthenticator + Send>>,
    /// Authentication questions go out as `Event::Authenticate` instead of to the
    /// hooks.
    external_auth: bool,
    /// The last authentication question's number (see `AuthTicket`).
    auth_seq: u32,
    scratch: Vec<Match>,
    /// Empty output queues of drained connections, reused by the next connection
    /// with output: idle connections hold no queue memory, and routing allocates
    /// none per message.
    out_pool: OutPool,
    /// Routed messages on their way out, each held once however many receive it.
    msgs: SharedMsgs,
    /// Routes that matched more than one subscription, numbered (see `route`).
    route_count: u32,
    stats: Stats,
    /// Store effects emitted and durable, and the acknowledgements that wait.
    durability: durability::Durability,
    /// Output held beyond `outbound_buffer_bytes` by connections, together (as
    /// last counted: see `sync_burst`), bounded by `outbound_burst_bytes`.
    outbound_burst: usize,
    /// Lifecycle events' sequence numbers (see `broker/events.rs`).
    lifecycle: events::LifecycleState,
}

/// Picks a shared-subscription member: uniformly among those whose session is
/// online (a member that left stops receiving), else among all of them; drawn from
/// the seeded rng so the choice is deterministic.
struct OnlinePicker<'a> {
    rng: &'a mut Rng,
    sessions: &'a Slab<Session>,
    /// A member not to pick (the one whose session ended, on redelivery).
    exclude: Option<SessionKey>,
}

impl Picker for OnlinePicker<'_> {
    fn pick(&mut self, members: &[SubEntry]) -> usize {
        let eligible = |e: &SubEntry| Some(e.session) != self.exclude;
        let online = |e: &SubEntry| {
            eligible(e)
                && self
                    .sessions
                    .get(e.session)
                    .is_some_and(|s| s.conn.is_some())
        };
        let n_online = members.iter().filter(|e| online(e)).count();
        let (n, pred): (usize, &dyn Fn(&SubEntry) -> bool) = if n_online > 0 {
            (n_online, &online)
        } else {
            (members.iter().filter(|e| eligible(e)).count(), &eligible)
        };
        if n == 0 {
            return 0;
        }
        let nth = self.rng.below(n);
        members
            .iter()
            .enumerate()
            .filter(|(_, e)| pred(e))
            .nth(nth)
            .map_or(0, |(i, _)| i)
    }
}

/// A successful authentication, carried into the rest of CONNECT.
pub(crate) struct Authenticated {
    /// Who the client is: the owner of its session.
    pub(super) authentication_name: Option<String>,
    /// The Authentication Method agreed and the final Authentication Data, for
    /// CONNACK (enhanced authentication only).
    pub(super) enhanced: Option<(MqttString, Option<Bytes>)>,
    /// The client's attributes.
    pub(super) attributes: Option<std::sync::Arc<crate::hooks::Attributes>>,
}

/// What CONNECT asks for that needs no decision about the client (see
/// `plan_connect`), kept while it is authenticated.
pub(crate) struct ConnectPlan {
    client_id: MqttString,
    assigned: Option<MqttString>,
    keep_alive: u16,
    server_keep_alive: Option<u16>,
}

/// Outcome of routing one message.
struct Routed {
    matched: usize,
    /// A shared subscription of this broker matched (on a node of a cluster
    /// its delivery is the cluster's to decide).
    shared: bool,
}

/// The copies of one routed message its receivers share (see [`SharedMsgs`]), made
/// when the first receiver needs each; the route holds one reference to each until
/// `release`.
#[derive(Default)]
struct RouteCopies {
    /// More than one receiver: QoS 0 receivers share a copy too.
    fan_out: bool,
    /// For online receivers: slices of the read buffer it came in.
    live: Option<MsgRef>,
    /// For offline sessions' queues: copied out of that buffer.
    detached: Option<MsgRef>,
}

impl RouteCopies {
    /// The copy for an online receiver (`detach`: for an offline session's queue).
    fn copy(
        &mut self,
        msgs: &mut SharedMsgs,
        template: &Publish,
        expires_at: Option<Instant>,
        now: Now,
        detach: bool,
    ) -> MsgRef {
        let slot = if detach {
            &mut self.detached
        } else {
            &mut self.live
        };
        *slot.get_or_insert_with(|| {
            msgs.insert(stored_form(template, expires_at, now, detach), expires_at)
        })
    }

    fn release(self, msgs: &mut SharedMsgs) {
        for m in [self.live, self.detached].into_iter().flatten() {
            msgs.release(m);
        }
    }
}

/// A message as `SharedMsgs` holds it: QoS 0, no DUP, packet id, Subscription
/// Identifiers or Topic Alias (each delivery sets its own), the Message Expiry
/// Interval left at `now`, optionally copied out of its read buffer.
fn stored_form(template: &Publish, expires_at: Option<Instant>, now: Now, detach: bool) -> Publish {
    let mut p = template.clone();
    p.properties.subscription_identifiers = Vec::new();
    strip_delivery(&mut p);
    refresh_expiry(&mut p, expires_at, now.instant);
    if detach {
        detach_publish(&mut p);
    }
    p
}

/// Clears what one delivery sets (QoS, RETAIN, DUP, packet id, Topic Alias) for
/// `SharedMsgs`; the caller has taken the Subscription Identifiers out.
fn strip_delivery(p: &mut Publish) {
    p.qos = QoS::AtMostOnce;
    p.retain = false;
    p.dup = false;
    p.packet_id = None;
    p.properties.topic_alias = None;
}

/// A message as one delivery sends it (for packets built whole: resends, the store).
fn delivered_form(
    msgs: &SharedMsgs,
    q: &Queued,
    packet_id: Option<PacketId>,
    dup: bool,
) -> Option<Publish> {
    let (p, _) = msgs.get(q.msg)?;
    let mut p = p.clone();
    p.dup = dup;
    p.qos = q.qos;
    p.retain = q.retain;
    p.packet_id = packet_id;
    p.properties.subscription_identifiers = q.sub_ids.as_slice().to_vec();
    if q.expiry_left.is_some() {
        p.properties.message_expiry_interval = q.expiry_left;
    }
    Some(p)
}

impl Broker {
    /// A broker with `config`, randomness from `rng_seed` (assigned client ids,
    /// shared-subscription picks), and hooks that accept everything.
    pub fn new(config: Config, rng_seed: [u8; 32]) -> Self {
        let mut rng = Rng::from_seed(rng_seed);
        let hasher = SeededState::new(rng.next_u64(), rng.next_u64());
        Broker {
            hash_keys: hasher,
            config,
            conns: Slab::new(),
            sessions: Slab::new(),
            by_client_id: crate::client_ids::ClientIds::new(hasher),
            sessions_per_auth: Map::with_hasher(hasher),
            router: Router::new(hasher),
            remote: cluster::RemoteInterest::new(hasher),
            retained: RetainedStore::new(hasher),
            timers: Timers::default(),
            events: VecDeque::new(),
            rng,
            authenticator: Box::new(AllowAll),
            authorizer: Box::new(AllowAll),
            authorizer_is_default: true,
            authz: None,
            enhanced: None,
            external_auth: false,
            auth_seq: 0,
            scratch: Vec::new(),
            out_pool: OutPool::default(),
            route_count: 0,
            msgs: SharedMsgs::default(),
            stats: Stats::default(),
            durability: Default::default(),
            outbound_burst: 0,
            lifecycle: events::LifecycleState::default(),
        }
    }

    /// Replaces the authentication hook.
    pub fn set_authenticator(&mut self, hook: Box<dyn Authenticator + Send>) {
        self.authenticator = hook;
    }

    /// Asks the adapter, rather than the hooks, who each client is: every CONNECT,
    /// and every AUTH of enhanced authentication or re-authentication, becomes
    /// [`Event::Authenticate`], answered with [`Broker::handle_auth_answer`] (see
    /// [`crate::authentication`]). Off by default: the hooks answer at once.
    pub fn set_external_authentication(&mut self, on: bool) {
        self.external_auth = on;
    }

    /// Enables enhanced authentication (AUTH packets, re-authentication) with this
    /// hook.
    pub fn set_enhanced_authenticator(&mut self, hook: Box<dyn EnhancedAuthenticator + Send>) {
        self.enhanced = Some(hook);
    }

    /// Replaces the authorization hook.
    pub fn set_authorizer(&mut self, hook: Box<dyn Authorizer + Send>) {
        self.authorizer = hook;
        self.authorizer_is_default = false;
    }

    // ---------------------------------------------------------------- getters

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// `stats().deliveries` without copying every counter: adapters read it around
    /// each batch of input.
    pub fn deliveries(&self) -> u64 {
        self.stats.deliveries
    }

    /// Open connections (including ones not yet past CONNECT).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Sessions, online and offline.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Retained messages held. One whose Message Expiry Interval ran out is gone
    /// once `handle_timeout` has been called for its deadline (or it was looked up
    /// since).
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// Protocol version of a connection once its CONNECT was seen.
    pub fn protocol(&self, conn: ConnId) -> Option<ProtocolVersion> {
        let c = self.conns.get(key(conn))?;
        match c.state {
            // During an enhanced-authentication exchange CONNECT was seen, and AUTH
            // packets (5.0 only) flow both ways before CONNACK.
            ConnState::AwaitingConnect { .. } if !c.pending_auth() => None,
            _ => Some(c.version),
        }
    }

    /// Whether a connection's CONNECT waits for the answer to its authentication:
    /// until it comes, the adapter should not read or feed the connection's further
    /// input (the core would only hold it, see [`crate::MAX_HELD_PACKETS`]).
    pub fn is_authenticating(&self, conn: ConnId) -> bool {
        self.conns.get(key(conn)).is_some_and(|c| {
            matches!(c.state, ConnState::AwaitingConnect { .. }) && c.awaiting_answer()
        })
    }

    /// Client identifier bound to a connection.
    pub fn client_id(&self, conn: ConnId) -> Option<&MqttString> {
        self.conns.get(key(conn))?.client_id(&self.sessions)
    }

    /// The transport details given at accept.
    pub fn peer(&self, conn: ConnId) -> Option<&PeerInfo> {
        self.conns.get(key(conn)).map(|c| &c.peer)
    }

    /// The Maximum Packet Size the broker accepts from this connection (for the
    /// adapter's decoder).
    pub fn max_packet_size(&self) -> u32 {
        self.config.max_packet_size
    }

    /// Whether `poll_transmit` has bytes for this connection.
    pub fn has_pending_output(&self, conn: ConnId) -> bool {
        self.conns.get(key(conn)).is_some_and(|c| !c.out.is_empty())
    }

    /// Messages queued (not in flight) for a session, by client id.
    pub fn queued_messages(&self, client_id: &str) -> Option<usize> {
        let k = self
            .by_client_id
            .get(&self.sessions, client_id.as_bytes())?;
        self.sessions.get(k).map(|s| s.flows.queue.len())
    }

    // ---------------------------------------------------------------- inputs

    /// Feeds one [`Input`]; returns the new connection's id for `Input::Accept`.
    pub fn handle(&mut self, now: Now, input: Input) -> Option<ConnId> {
        match input {
            Input::Accept(peer) => return Some(self.handle_accept(now, peer)),
            Input::Packet(conn, p) => self.handle_packet(now, conn, p),
            Input::DecodeError(conn, e) => self.handle_decode_error(now, conn, &e),
            Input::Closed(conn) => self.handle_closed(now, conn),
            Input::Timeout => self.handle_timeout(now),
            Input::AuthAnswer(ticket, answer) => self.handle_auth_answer(now, ticket, answer),
            Input::StoreCommitted(through) => self.handle_store_committed(now, through),
            Input::StoreFailed(through) => self.handle_store_failed(now, through),
            Input::ClusterPublish(p, through) => {
                self.handle_cluster_publish(now, *p, &through);
            }
            Input::ClusterDelivery(p) => {
                self.handle_cluster_delivery(now, *p);
            }
            Input::SessionsAdopted(records) => {
                self.handle_sessions_adopted(now, records);
            }
            Input::ClusterRetained(p) => {
                self.handle_cluster_retained(now, *p);
            }
            Input::RemoteInterest(node, filter, on) => {
                self.handle_remote_interest(node, &filter, on)
            }
            Input::SessionClaimed(client_id) => {
                self.handle_session_claimed(now, &client_id);
            }
            Input::SessionAcquired(ticket, answer) => {
                self.handle_session_acquired(now, ticket, answer)
            }
        }
        None
    }

    /// A transport connection was accepted. The client has `connect_timeout` to send
    /// CONNECT.
    pub fn handle_accept(&mut self, now: Now, peer: PeerInfo) -> ConnId {
        let deadline = now.instant + self.config.connect_timeout;
        let mut conn = Conn::new(peer, now.instant);
        // One timer entry per connection: the connect timeout, which becomes the
        // keep-alive check once CONNECT came (`check_connection`).
        conn.timer_at = Some(deadline);
        let k = self.conns.insert(conn);
        let id = conn_id(k);
        self.timers.schedule(deadline, TimerKind::Conn(k));
        if self.conns.len() > self.config.max_connections {
            self.close(k, ReasonCode::ServerBusy);
        }
        id
    }

    /// A decoded packet from a connection. Protocol violations become output
    /// (DISCONNECT with a reason code, then `Event::Close`), never an error.
    pub fn handle_packet(&mut self, now: Now, conn: ConnId, packet: Packet) {
        let k = key(conn);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.last_rx = now.instant;
        let session = match c.state {
            ConnState::Closing { .. } => return,
            // Pipelined after CONNECT, before the answer to its authentication.
            ConnState::AwaitingConnect { .. } if c.awaiting_answer() => {
                return self.hold(k, packet);
            }
            ConnState::AwaitingConnect { .. } => {
                match packet {
                    Packet::Connect(connect) if !c.pending_auth() => {
                        self.on_connect(now, k, *connect)
                    }
                    Packet::Auth(a) if c.pending_auth() => self.on_auth(now, k, a),
                    // [MQTT-3.1.0-1] the first packet must be CONNECT; during the AUTH
                    // exchange only AUTH may follow it.
                    _ => self.close(k, ReasonCode::ProtocolError),
                }
                return;
            }
            ConnState::Active { session } => session,
        };
        match packet {
            // [MQTT-3.1.0-2] a second CONNECT is a protocol error.
            Packet::Connect(_) => self.violation(now, k, ReasonCode::ProtocolError),
            Packet::Publish(p) => self.on_publish(now, k, session, p),
            Packet::PubAck(a) => {
                let fits = (QoS::AtLeastOnce, FlightState::Published);
                self.on_flow_end(now, k, session, a.packet_id, fits)
            }
            Packet::PubRec(a) => self.on_pubrec(now, k, session, a),
            Packet::PubRel(a) => self.on_pubrel(k, session, a),
            Packet::PubComp(a) => {
                let fits = (QoS::ExactlyOnce, FlightState::Released);
                self.on_flow_end(now, k, session, a.packet_id, fits)
            }
            Packet::Subscribe(s) => self.on_subscribe(now, k, session, s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(now, k, session, u),
            Packet::PingReq => self.push_out(k, Packet::PingResp),
            Packet::Disconnect(d) => self.on_disconnect(now, k, session, d),
            Packet::Auth(a) => self.on_auth(now, k, a),
            // Packets only a server sends.
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.violation(now, k, ReasonCode::ProtocolError)
            }
        }
    }

    /// Bytes from a connection failed to decode. A malformed CONNECT of an unknown
    /// protocol level is answered with CONNACK 0x01 (3.1.1 form, [MQTT-3.1.2-2]);
    /// after CONNECT a 5.0 client gets DISCONNECT with the error's reason code
    /// [MQTT-4.13.1-1]; a 3.1.1 client is disconnected [MQTT-4.8.0-1].
    pub fn handle_decode_error(&mut self, now: Now, conn: ConnId, error: &DecodeError) {
        let k = key(conn);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let code = error.reason_code();
        match c.state {
            ConnState::Closing { .. } => {}
            ConnState::AwaitingConnect { .. } => {
                match error {
                    DecodeError::UnsupportedProtocolVersion(_) => {
                        c.version = ProtocolVersion::V3_1_1;
                        self.push_out(k, connack(false, ReasonCode::UnsupportedProtocolVersion));
                    }
                    DecodeError::ClientIdRejected => {
                        c.version = ProtocolVersion::V3_1;
                        self.push_out(k, connack(false, ReasonCode::ClientIdentifierNotValid));
                    }
                    _ => {}
                }
                self.close(k, code);
            }
            // Some codes exist only in CONNACK (a second CONNECT of an unknown level
            // or a 3.1 client id the decoder refuses); after CONNECT that CONNECT is
            // itself the Protocol Error [MQTT-3.1.0-2], and DISCONNECT may only carry
            // codes from its own table [MQTT-3.14.2.1].
            ConnState::Active { .. } => {
                let code = if code.valid_in(ReasonContext::Disconnect) {
                    code
                } else {
                    ReasonCode::ProtocolError
                };
                self.violation(now, k, code)
            }
        }
    }

    /// The transport closed. Without a prior DISCONNECT this is an abnormal close:
    /// the will is published (after its delay) [MQTT-3.1.2-8].
    pub fn handle_closed(&mut self, now: Now, conn: ConnId) {
        let k = key(conn);
        let Some(c) = self.conns.get(k) else {
            return;
        };
        if let ConnState::Active { .. } = c.state {
            self.lose_connection(now, k, true);
        }
        // Output never sent gives back the shared messages it names.
        if let Some(c) = self.conns.remove(k) {
            self.outbound_burst -= c.burst as usize;
            for m in c.out.shared_refs() {
                self.msgs.release(m);
            }
        }
    }

    /// Time passed: fires every due timer. Safe to call at any time; a call with
    /// nothing due does nothing.
    pub fn handle_timeout(&mut self, now: Now) {
        self.expire_retained(now);
        while let Some((at, kind)) = self.timers.pop_due(now.instant) {
            match kind {
                TimerKind::Conn(k) => self.check_connection(now, k, at),
                TimerKind::SessionExpiry(k) => {
                    if let Some(s) = self.sessions.get(k) {
                        if s.conn.is_none() && s.expires_at == Some(at) {
                            self.session_ended(k, SessionEnd::Expired);
                            self.end_session(now, k);
                        }
                    }
                }
                TimerKind::WillDelay(k) => {
                    let due = self
                        .sessions
                        .get(k)
                        .is_some_and(|s| s.delayed_will.as_deref().is_some_and(|(d, _)| *d == at));
                    if due {
                        if let Some((_, will)) = self
                            .sessions
                            .get_mut(k)
                            .and_then(|s| s.delayed_will.take())
                            .map(|w| *w)
                        {
                            self.publish_will(now, will);
                            // The record no longer holds the will.
                            self.store_session(now, k);
                        }
                    }
                }
            }
        }
        let bound = 4 * (self.conns.len() + self.sessions.len());
        let (conns, sessions) = (&self.conns, &self.sessions);
        self.timers.compact_if_over(bound, |kind, at| match *kind {
            TimerKind::Conn(k) => conns.get(k).is_some_and(|c| c.timer_at == Some(at)),
            TimerKind::SessionExpiry(k) => {
                sessions.get(k).is_some_and(|s| s.expires_at == Some(at))
            }
            TimerKind::WillDelay(k) => sessions
                .get(k)
                .is_some_and(|s| s.delayed_will.as_deref().is_some_and(|(d, _)| *d == at)),
        });
    }

    /// The server is shutting down: every connection gets DISCONNECT 0x8B (5.0) and
    /// `Event::Close`; no will is published, since the broker, not the client, ends
    /// the connection and its sessions go with the process.
    pub fn handle_shutdown(&mut self, now: Now) {
        let mut live = Vec::new();
        for (k, c) in self.conns.iter() {
            if !matches!(c.state, ConnState::Closing { .. }) {
                live.push((k, c.session()));
            }
        }
        for (k, session) in live {
            if let Some(sk) = session {
                self.push_disconnect(k, ReasonCode::ServerShuttingDown);
                let ending = events::Ending::Server(ReasonCode::ServerShuttingDown);
                self.lifecycle_disconnected(now, k, sk, ending);
            }
            if let Some(c) = self.conns.get_mut(k) {
                c.will = None;
            }
            self.close(k, ReasonCode::ServerShuttingDown);
        }
    }

    // ---------------------------------------------------------------- outputs

    /// The next event, if any. Drain after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Encodes waiting packets for `conn` into `buf`, as many as fit in `budget`
    /// bytes (at least one if `buf` gets nothing otherwise). Returns the bytes written;
    /// 0 when nothing is waiting. Call while the transport is writable.
    pub fn poll_transmit(&mut self, conn: ConnId, buf: &mut BytesMut, budget: usize) -> usize {
        let Some(c) = self.conns.get_mut(key(conn)) else {
            return 0;
        };
        let budget = Budget {
            start: buf.len(),
            bytes: budget,
        };
        let v = c.version;
        // Outbound topic aliases are assigned here, so that they follow the order in
        // which packets reach the wire; only for clients that allow them.
        let peer = PeerLimits {
            alias_max: c.peer_topic_alias_max,
            max_packet: c.peer_max_packet,
            version: v,
            keys: self.hash_keys,
        };
        while let Some(front) = c.out.front() {
            match front {
                Front::Packet(p) => {
                    // Measured as queued.
                    let size = out_size(p);
                    if let Packet::Publish(p) = p {
                        if !c
                            .out_aliases
                            .encode(p, p.as_delivery(), &peer, buf, &budget)
                        {
                            break;
                        }
                    } else {
                        // Fitted to the client's Maximum Packet Size when queued
                        // (`push_out`).
                        // Encode, and take it back if it overshot the budget: one
                        // encoding pass per packet instead of measuring first.
                        let before = buf.len();
                        // Encoding can only fail for packets the version cannot
                        // express, which the broker does not queue; such a packet is
                        // skipped rather than sent wrong.
                        let _ = p.encode(v, buf);
                        if before > budget.start && buf.len() - budget.start > budget.bytes {
                            buf.truncate(before);
                            break;
                        }
                    }
                    c.out.pop_front(size);
                }
                Front::Flight(id) => {
                    let flights = c.out.flights();
                    // Not once the session belongs to another connection (a takeover
                    // resends its window there).
                    let flight = c
                        .flight_session()
                        .and_then(|sk| self.sessions.get_mut(sk))
                        .filter(|s| s.conn.is_none_or(|owner| owner == conn))
                        .and_then(|s| unsent_flight(&mut s.flows.inflight, id, flights));
                    // Gone (acknowledged early, or dropped): nothing to send.
                    if let Some((f, (p, _))) =
                        flight.and_then(|f| self.msgs.get(f.msg.msg).map(|m| (f, m)))
                    {
                        if !c.out_aliases.encode(
                            p,
                            f.msg.delivery(f.packet_id, false),
                            &peer,
                            buf,
                            &budget,
                        ) {
                            break;
                        }
                        f.sent = true;
                    }
                    c.out.pop_front(0);
                }
                Front::Shared(tag) => {
                    let Some((p, msg_size)) = self.msgs.get(tag.msg) else {
                        // Cannot happen: the tag holds a reference.
                        c.out.pop_front(0);
                        continue;
                    };
                    if !c
                        .out_aliases
                        .encode(p, tag.delivery(p), &peer, buf, &budget)
                    {
                        break;
                    }
                    c.out.pop_front(msg_size);
                    self.msgs.release(tag.msg);
                }
            }
        }
        if c.out.is_empty() {
            c.transmit_signalled = false;
            // An idle connection keeps no queue memory.
            c.out.release(&mut self.out_pool);
        }
        if c.burst > 0 {
            let guaranteed = self.config.outbound_buffer_bytes;
            sync_burst(c, &mut self.outbound_burst, guaranteed);
        }
        buf.len() - budget.start
    }

    /// When the broker next needs `handle_timeout`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next_deadline(), self.retained.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---------------------------------------------------------------- plumbing

    fn push_out(&mut self, k: ConnKey, mut packet: Packet) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        // [MQTT-3.2.2-19] [MQTT-3.4.2-2] [MQTT-3.14.2-3] and their kin: Reason String
        // and User Properties are left out of a packet they would push over the
        // client's Maximum Packet Size (a PUBLISH is checked where it is routed).
        if c.peer_max_packet != u32::MAX
            && !matches!(packet, Packet::Publish(_))
            && !fits(&packet, c)
        {
            strip_problem_info(&mut packet);
            if !fits(&packet, c) {
                // [MQTT-3.1.2-24] nothing above the client's maximum is sent, and a
                // client that never gets its SUBACK or PUBACK cannot go on: the
                // connection ends as if the transport had dropped (Mosquitto does the
                // same). The adapter's `handle_closed` detaches the session.
                // A DISCONNECT's sender closes the connection itself.
                if matches!(packet, Packet::Disconnect(_)) {
                    return;
                }
                match c.state {
                    ConnState::AwaitingConnect { .. } => self.close(k, ReasonCode::PacketTooLarge),
                    ConnState::Active { .. } if !c.unsendable => {
                        c.unsendable = true;
                        self.events.push_back(Event::Close {
                            conn: conn_id(k),
                            reason: ReasonCode::PacketTooLarge,
                        });
                    }
                    _ => {}
                }
                return;
            }
        }
        let size = out_size(&packet);
        c.out.push_packet(packet, size, &mut self.out_pool);
        signal_transmit(c, &mut self.events, k);
    }

    /// Queues a reference to a shared QoS 0 message (its reference already taken).
    fn push_shared(&mut self, k: ConnKey, tag: SharedTag, size: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            self.msgs.release(tag.msg);
            return;
        };
        c.out.push_shared(tag, size, &mut self.out_pool);
        signal_transmit(c, &mut self.events, k);
    }

    /// Writes the session's record, or removes it once the session is no longer
    /// persistent (expiry 0 from a resuming CONNECT or a DISCONNECT): such a
    /// session ends with its connection and must not come back after a restart.
    fn store_session(&mut self, now: Now, sk: SessionKey) {
        if !self.config.store_effects {
            return;
        }
        if let Some(s) = self.sessions.get_mut(sk) {
            let op = if s.persistent() {
                s.stored = true;
                let expires = s.expires_at.map(|at| {
                    now.unix_ms + at.saturating_duration_since(now.instant).as_millis() as u64
                });
                // The will of its connection, or one whose delay runs.
                let stored = |publish: &Publish, delay_interval, publish_at_unix_ms| StoredWill {
                    message: StoredMessage {
                        publish: publish.clone(),
                        expires_at_unix_ms: None,
                    },
                    delay_interval,
                    publish_at_unix_ms,
                };
                let will = match s.conn.and_then(|c| self.conns.get(key(c))) {
                    Some(c) => c.will.as_deref().map(|w| stored(&w.publish, w.delay, None)),
                    None => s
                        .delayed_will
                        .as_deref()
                        .map(|(at, p)| stored(p, 0, expiry_wall(now, Some(*at)))),
                };
                StoreOp::SessionUpsert(session_record(s, expires, will))
            } else if s.stored {
                s.stored = false;
                StoreOp::SessionRemove {
                    client_id: s.client_id.clone(),
                }
            } else {
                return;
            };
            self.emit_store(op);
        }
    }

    fn store_enqueue(&mut self, sk: SessionKey, q: &Queued, now: Now) {
        if !self.config.store_effects {
            return;
        }
        if let Some(s) = self.sessions.get(sk) {
            if s.persistent() {
                if let Some(op) = enqueue_op(&self.msgs, s.client_id.clone(), q, now) {
                    self.emit_store(op);
                }
            }
        }
    }

    fn store_remove(&mut self, persistent: bool, client_id: MqttString, seq: u64) {
        if self.config.store_effects && persistent {
            self.emit_store(StoreOp::MessageRemove { client_id, seq });
        }
    }
}

/// Counts what `c` holds beyond its `guaranteed` output in the broker-wide burst
/// total. Done where QoS 0 is admitted beyond the guarantee and after each
/// transmit, so the total is exact for every connection holding a burst, up to
/// what other packets (acknowledgements, QoS 1/2 flights, each bounded on its own)
/// added since.
fn sync_burst(c: &mut Conn, total: &mut usize, guaranteed: usize) {
    let now = u32::try_from(c.out.bytes().saturating_sub(guaranteed)).unwrap_or(u32::MAX);
    *total = *total - c.burst as usize + now as usize;
    c.burst = now;
}

/// Output is waiting for `c`: one Transmit event until `poll_transmit` drains it.
fn signal_transmit(c: &mut Conn, events: &mut VecDeque<Event>, k: ConnKey) {
    if !c.transmit_signalled {
        c.transmit_signalled = true;
        events.push_back(Event::Transmit(conn_id(k)));
    }
}

fn session_record(
    s: &Session,
    expires_at_unix_ms: Option<u64>,
    will: Option<StoredWill>,
) -> SessionRecord {
    SessionRecord {
        client_id: s.client_id.clone(),
        authentication_name: s.auth_name.clone(),
        expiry_interval: s.expiry_interval,
        expires_at_unix_ms,
        subscriptions: s
            .subscriptions
            .iter()
            .map(|x| (x.filter.clone(), x.options, x.id))
            .collect(),
        will,
    }
}

fn enqueue_op(msgs: &SharedMsgs, client_id: MqttString, q: &Queued, now: Now) -> Option<StoreOp> {
    // The message's bytes are shared, not copied: the store writes them out
    // within a commit and lets go.
    let publish = delivered_form(msgs, q, None, false)?;
    Some(StoreOp::MessageEnqueue {
        client_id,
        seq: q.seq,
        message: StoredMessage {
            publish,
            expires_at_unix_ms: expiry_wall(now, msgs.expires_at(q.msg)),
        },
    })
}

fn expiry_wall(now: Now, at: Option<Instant>) -> Option<u64> {
    at.map(|at| now.unix_ms + at.saturating_duration_since(now.instant).as_millis() as u64)
}

/// `Some(deadline)` for a stored wall-clock expiry (`Some(None)`: never expires);
/// `None` when it has already passed.
fn wall_to_instant(now: Now, at: Option<u64>) -> Option<Option<Instant>> {
    match at {
        None => Some(None),
        Some(ms) if ms <= now.unix_ms => None,
        Some(ms) => Some(Some(now.instant + Duration::from_millis(ms - now.unix_ms))),
    }
}

/// Sets the Message Expiry Interval to the time left [MQTT-3.3.2-6]; false if the
/// message has expired [MQTT-3.3.2-5].
fn refresh_expiry(p: &mut Publish, expires_at: Option<Instant>, now: Instant) -> bool {
    match time_left(expires_at, now) {
        Some(Some(secs)) => {
            p.properties.message_expiry_interval = Some(secs);
            true
        }
        Some(None) => true,
        None => false,
    }
}

/// The Message Expiry Interval to send at `now` [MQTT-3.3.2-6]: `Some(None)` for
/// a message that never expires, `None` for one that has expired [MQTT-3.3.2-5].
fn time_left(expires_at: Option<Instant>, now: Instant) -> Option<Option<u32>> {
    let Some(at) = expires_at else {
        return Some(None);
    };
    if at <= now {
        return None;
    }
    let left = at - now;
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    Some(Some(secs.min(u64::from(u32::MAX)) as u32))
}

/// Copies a message's bytes out of the (possibly large) buffer it was decoded from,
/// for messages that outlive the moment (wills, offline queues, retained messages).
/// Properties are copied only when present.
fn detach_publish(p: &mut Publish) {
    p.topic = detach_topic(&p.topic);
    p.payload = Bytes::copy_from_slice(&p.payload);
    let props = &mut p.properties;
    if let Some(t) = &props.response_topic {
        props.response_topic = Some(detach_topic(t));
    }
    if let Some(c) = &props.content_type {
        props.content_type =
            Some(MqttString::copy_from_str(c.as_str()).unwrap_or_else(|_| c.clone()));
    }
    if let Some(d) = &props.correlation_data {
        props.correlation_data = Some(Bytes::copy_from_slice(d));
    }
    if !props.user_properties.is_empty() {
        if let Ok(u) = mqtt_proto::UserProperties::from_pairs(props.user_properties.iter()) {
            props.user_properties = u;
        }
    }
}

fn detach_topic(t: &TopicName) -> TopicName {
    TopicName::new(Bytes::copy_from_slice(t.as_bytes())).unwrap_or_else(|_| t.clone())
}

fn split_shared(filter: &mqtt_proto::TopicFilter) -> (Option<Bytes>, Bytes) {
    let bytes = filter.as_shared();
    match filter.shared() {
        Some((group, f)) => {
            let g_start = "$share/".len();
            let f_start = g_start + group.len() + 1;
            (
                Some(bytes.slice(g_start..g_start + group.len())),
                bytes.slice(f_start..f_start + f.len()),
            )
        }
        None => (None, bytes.clone()),
    }
}

/// Whether a packet fits the client's Maximum Packet Size [MQTT-3.1.2-24].
/// The in-flight entry a flight tag names: not yet sent, still waiting for its
/// PUBLISH to go out. `flights` tags wait, so it is normally the `flights`-th
/// entry from the end of the window; if an early acknowledgement removed entries,
/// it is searched for.
fn unsent_flight(
    inflight: &mut VecDeque<InFlight>,
    id: PacketId,
    flights: usize,
) -> Option<&mut InFlight> {
    let wanted = |f: &InFlight| f.packet_id == id && !f.sent && f.state == FlightState::Published;
    let at = inflight
        .len()
        .checked_sub(flights)
        .filter(|&i| inflight.get(i).is_some_and(wanted))
        .or_else(|| inflight.iter().position(wanted))?;
    inflight.get_mut(at)
}

fn fits(packet: &Packet, c: &Conn) -> bool {
    c.peer_max_packet == u32::MAX || packet.encoded_len(c.version) <= c.peer_max_packet as usize
}

/// Drops the Reason String and User Properties of a packet other than PUBLISH.
fn strip_problem_info(p: &mut Packet) {
    let (reason, user) = match p {
        Packet::ConnAck(a) => (
            &mut a.properties.reason_string,
            &mut a.properties.user_properties,
        ),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => (
            &mut a.properties.reason_string,
            &mut a.properties.user_properties,
        ),
        Packet::SubAck(a) => (
            &mut a.properties.reason_string,
            &mut a.properties.user_properties,
        ),
        Packet::UnsubAck(a) => (
            &mut a.properties.reason_string,
            &mut a.properties.user_properties,
        ),
        Packet::Disconnect(d) => (
            &mut d.properties.reason_string,
            &mut d.properties.user_properties,
        ),
        Packet::Auth(a) => (
            &mut a.properties.reason_string,
            &mut a.properties.user_properties,
        ),
        _ => return,
    };
    *reason = None;
    *user = mqtt_proto::UserProperties::new();
}

fn reason_string(code: ReasonCode) -> Option<MqttString> {
    MqttString::from_static(code.description()).ok()
}

fn connack(session_present: bool, reason_code: ReasonCode) -> Packet {
    Packet::ConnAck(Box::new(ConnAck {
        session_present,
        reason_code,
        properties: ConnAckProperties::default(),
    }))
}

/// Memory a queued packet holds: the queue slot itself plus, for a PUBLISH, the
/// bytes it keeps alive (an estimate; shared buffers are counted per receiver).
fn out_size(p: &Packet) -> usize {
    core::mem::size_of::<Packet>()
        + match p {
            Packet::Publish(p) => approx_size(p),
            _ => 0,
        }
}

fn key(c: ConnId) -> ConnKey {
    ConnKey::new(c.index, c.generation)
}

fn conn_id(k: ConnKey) -> ConnId {
    ConnId {
        index: k.index,
        generation: k.generation,
    }
}
