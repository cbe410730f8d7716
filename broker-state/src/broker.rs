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
    Event, Input, Now, PeerInfo, SessionEnd, SessionRecord, StoreOp, StoredMessage,
};
use crate::hash::{Map, SeededState};
use crate::hooks::{AllowAll, Authenticator, Authorizer, ClientInfo, EnhancedAuthenticator};
use crate::ids::{ConnId, Key, Slab};
use crate::outq::{Front, MsgRef, OutPool, SharedMsgs, SharedTag};
use crate::rng::Rng;
use crate::router::{filter_matches, Match, Picker, Router, SubEntry};
use crate::session::{
    approx_size, qos_min, Conn, ConnState, FlightState, InFlight, PendingWill, Queued, Session,
    SubIds,
};
use crate::subscriptions::Subscription;
use crate::timer::{TimerKind, Timers};

mod auth;
mod invariants;

/// Counters of what the broker did and dropped. Every drop is counted here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// PUBLISH packets received from clients.
    pub publishes_received: u64,
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
    /// Takeovers of a live session by a new connection.
    pub takeovers: u64,
    /// QoS 1 messages of a shared subscription sent to another member because the
    /// session they were in flight to ended.
    pub shared_redeliveries: u64,
    /// Subscriptions refused with Quota exceeded (per-session or broker-wide limit).
    pub subscriptions_refused: u64,
}

struct Retained {
    publish: Publish,
    expires_at: Option<Instant>,
    size: usize,
}

/// The sans-IO MQTT broker. See the crate documentation for the run-loop contract.
pub struct Broker {
    /// The secret key of every map keyed by client-chosen bytes (HashDoS).
    hash_keys: SeededState,
    config: Config,
    conns: Slab<Conn>,
    sessions: Slab<Session>,
    by_client_id: Map<Bytes, Key>,
    sessions_per_auth: Map<String, usize>,
    router: Router,
    retained: Map<Bytes, Retained>,
    retained_bytes: usize,
    /// Deadlines of retained messages with a Message Expiry Interval, by topic. An
    /// entry whose message was replaced or cleared since is stale and skipped (see
    /// `retained_live`).
    retained_expiry: Timers<Bytes>,
    timers: Timers,
    events: VecDeque<Event>,
    rng: Rng,
    authenticator: Box<dyn Authenticator + Send>,
    authorizer: Box<dyn Authorizer + Send>,
    /// `authorizer` is still [`AllowAll`].
    authorizer_is_default: bool,
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
}

/// Picks a shared-subscription member: uniformly among those whose session is
/// online (a member that left stops receiving), else among all of them; drawn from
/// the seeded rng so the choice is deterministic.
struct OnlinePicker<'a> {
    rng: &'a mut Rng,
    sessions: &'a Slab<Session>,
    /// A member not to pick (the one whose session ended, on redelivery).
    exclude: Option<Key>,
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
pub(super) struct Authenticated {
    /// Who the client is: the owner of its session.
    pub(super) authentication_name: Option<String>,
    /// The Authentication Method agreed and the final Authentication Data, for
    /// CONNACK (enhanced authentication only).
    pub(super) enhanced: Option<(MqttString, Option<Bytes>)>,
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
            by_client_id: Map::with_hasher(hasher),
            sessions_per_auth: Map::with_hasher(hasher),
            router: Router::new(hasher),
            retained: Map::with_hasher(hasher),
            retained_bytes: 0,
            retained_expiry: Timers::default(),
            timers: Timers::default(),
            events: VecDeque::new(),
            rng,
            authenticator: Box::new(AllowAll),
            authorizer: Box::new(AllowAll),
            authorizer_is_default: true,
            enhanced: None,
            external_auth: false,
            auth_seq: 0,
            scratch: Vec::new(),
            out_pool: OutPool::default(),
            route_count: 0,
            msgs: SharedMsgs::default(),
            stats: Stats::default(),
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
        self.conns.get(key(conn))?.client_id.as_ref()
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
        let k = *self.by_client_id.get(client_id.as_bytes())?;
        self.sessions.get(k).map(|s| s.queue.len())
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
        }
        None
    }

    /// A transport connection was accepted. The client has `connect_timeout` to send
    /// CONNECT.
    pub fn handle_accept(&mut self, now: Now, peer: PeerInfo) -> ConnId {
        let deadline = now.instant + self.config.connect_timeout;
        let k = self.conns.insert(Conn::new(peer, deadline, now.instant));
        let id = conn_id(k);
        self.timers.schedule(deadline, TimerKind::Connect(k));
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
                TimerKind::Connect(k) => {
                    if let Some(c) = self.conns.get(k) {
                        if matches!(c.state, ConnState::AwaitingConnect { deadline } if deadline == at)
                        {
                            self.close(k, ReasonCode::MaximumConnectTime);
                        }
                    }
                }
                TimerKind::KeepAlive(k) => self.check_keep_alive(now, k, at),
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
                        }
                    }
                }
            }
        }
        let bound = 4 * (self.conns.len() + self.sessions.len());
        let (conns, sessions) = (&self.conns, &self.sessions);
        self.timers.compact_if_over(bound, |kind, at| match *kind {
            TimerKind::Connect(k) | TimerKind::KeepAlive(k) => conns.get(k).is_some(),
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
    pub fn handle_shutdown(&mut self, _now: Now) {
        let mut live = Vec::new();
        for (k, c) in self.conns.iter() {
            if !matches!(c.state, ConnState::Closing { .. }) {
                live.push((k, c.session()));
            }
        }
        for (k, session) in live {
            if session.is_some() {
                self.push_disconnect(k, ReasonCode::ServerShuttingDown);
            }
            if let Some(c) = self.conns.get_mut(k) {
                c.will = None;
            }
            self.close(k, ReasonCode::ServerShuttingDown);
        }
    }

    /// Restores one record from the store into a fresh broker, before any
    /// connection is accepted. Sessions come back offline, with their
    /// subscriptions and queued messages; expiry deadlines continue from the wall
    /// clock.
    pub fn handle_restore(&mut self, now: Now, op: StoreOp) {
        match op {
            StoreOp::SessionUpsert(rec) => {
                let k = match self.by_client_id.get(rec.client_id.as_bytes()) {
                    Some(&k) => k,
                    None => {
                        let k = self.sessions.insert(Session::new(
                            rec.client_id.clone(),
                            rec.authentication_name.clone(),
                        ));
                        self.by_client_id
                            .insert(rec.client_id.as_shared().clone(), k);
                        if let Some(a) = &rec.authentication_name {
                            self.count_owned_session(a);
                        }
                        k
                    }
                };
                let Some(s) = self.sessions.get_mut(k) else {
                    return;
                };
                s.expiry_interval = rec.expiry_interval;
                s.stored = true;
                let remaining = rec
                    .expires_at_unix_ms
                    .map(|at| Duration::from_millis(at.saturating_sub(now.unix_ms)));
                let subs: Vec<_> = rec.subscriptions.clone();
                for (filter, options, id) in subs {
                    self.add_subscription(k, filter, options, id);
                }
                if rec.expiry_interval != u32::MAX {
                    let d =
                        remaining.unwrap_or(Duration::from_secs(u64::from(rec.expiry_interval)));
                    let at = now.instant + d;
                    if let Some(s) = self.sessions.get_mut(k) {
                        s.expires_at = Some(at);
                    }
                    self.timers.schedule(at, TimerKind::SessionExpiry(k));
                }
            }
            StoreOp::SessionRemove { client_id } => {
                if let Some(&k) = self.by_client_id.get(client_id.as_bytes()) {
                    self.end_session(now, k);
                }
            }
            StoreOp::MessageEnqueue {
                client_id,
                seq,
                message,
            } => {
                let Some(&k) = self.by_client_id.get(client_id.as_bytes()) else {
                    return;
                };
                let Some(expires_at) = wall_to_instant(now, message.expires_at_unix_ms) else {
                    return;
                };
                if let Some(s) = self.sessions.get_mut(k) {
                    let mut p = message.publish;
                    let (qos, retain) = (p.qos, p.retain);
                    let sub_ids = SubIds::from_vec(core::mem::take(
                        &mut p.properties.subscription_identifiers,
                    ));
                    strip_delivery(&mut p);
                    let msg = self.msgs.insert(p, expires_at);
                    s.next_seq = s.next_seq.max(seq);
                    s.queue_bytes += self.msgs.size(msg);
                    s.queue.push_back(Queued {
                        msg,
                        qos,
                        retain,
                        sub_ids,
                        expiry_left: None,
                        seq,
                        shared: None,
                    });
                }
            }
            StoreOp::MessageRemove { client_id, seq } => {
                let Some(&k) = self.by_client_id.get(client_id.as_bytes()) else {
                    return;
                };
                if let Some(s) = self.sessions.get_mut(k) {
                    if let Some(i) = s.queue.iter().position(|q| q.seq == seq) {
                        if let Some(q) = s.queue.remove(i) {
                            s.queue_bytes -= self.msgs.size(q.msg);
                            self.msgs.release(q.msg);
                        }
                    }
                }
            }
            StoreOp::RetainSet(m) => {
                if let Some(expires_at) = wall_to_instant(now, m.expires_at_unix_ms) {
                    let size = approx_size(&m.publish);
                    self.retained_bytes += size;
                    let topic = m.publish.topic.as_shared().clone();
                    if let Some(at) = expires_at {
                        self.schedule_retained_expiry(at, topic.clone());
                    }
                    if let Some(old) = self.retained.insert(
                        topic,
                        Retained {
                            publish: m.publish,
                            expires_at,
                            size,
                        },
                    ) {
                        self.retained_bytes -= old.size;
                    }
                }
            }
            StoreOp::RetainClear { topic } => {
                if let Some(old) = self.retained.remove(topic.as_bytes()) {
                    self.retained_bytes -= old.size;
                }
            }
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
                        .and_then(|s| unsent_flight(&mut s.inflight, id, flights));
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
        buf.len() - budget.start
    }

    /// When the broker next needs `handle_timeout`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (
            self.timers.next_deadline(),
            self.retained_expiry.next_deadline(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---------------------------------------------------------------- CONNECT

    /// The checks of CONNECT that need no decision about the client: its client
    /// identifier (assigned if empty) and its Keep Alive. Done before it is
    /// authenticated, so a CONNECT that would be refused anyway costs no
    /// verification.
    pub(super) fn plan_connect(&mut self, p: &Connect) -> Result<ConnectPlan, ReasonCode> {
        let v5 = p.protocol.is_v5();
        // Client identifier rules.
        if p.client_id.len() > self.config.max_client_id_length {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        let mut assigned = None;
        let client_id = if p.client_id.is_empty() {
            // [MQTT-3.1.3-8] 3.1.1: a zero-length id needs Clean Session 1.
            if !v5 && !p.clean_start {
                return Err(ReasonCode::ClientIdentifierNotValid);
            }
            // [MQTT-3.1.3-6] assign a unique identifier.
            let id = self.assign_client_id();
            assigned = Some(id.clone());
            id
        } else {
            // Sessions outlive connections: own the id rather than pin the read buffer
            // the CONNECT was decoded from.
            MqttString::copy_from_str(p.client_id.as_str()).unwrap_or_else(|_| p.client_id.clone())
        };
        // Keep alive (Mosquitto's max_keepalive rule for 3.1.1, Server Keep Alive in 5.0).
        let mut keep_alive = p.keep_alive;
        let mut server_keep_alive = None;
        let max_ka = self.config.max_keep_alive;
        if max_ka < u16::MAX && (keep_alive == 0 || keep_alive > max_ka) {
            if v5 {
                keep_alive = max_ka;
                server_keep_alive = Some(max_ka);
            } else {
                return Err(ReasonCode::ClientIdentifierNotValid);
            }
        }
        Ok(ConnectPlan {
            client_id,
            assigned,
            keep_alive,
            server_keep_alive,
        })
    }

    /// The rest of CONNECT, once the client is authenticated.
    pub(super) fn finish_connect(
        &mut self,
        now: Now,
        k: Key,
        p: Connect,
        plan: ConnectPlan,
        auth: Authenticated,
    ) {
        let v5 = p.protocol.is_v5();
        let ConnectPlan {
            client_id,
            assigned,
            keep_alive,
            server_keep_alive,
        } = plan;
        let Authenticated {
            authentication_name: auth_name,
            enhanced: enhanced_ack,
        } = auth;
        // Session ownership (Event Grid): a session owned by another authentication
        // name is not for this client. A session without an owner (created by a
        // client without an authentication name) follows the plain MQTT rules, and
        // a client with a name that resumes or replaces it becomes its owner.
        let existing = self.by_client_id.get(client_id.as_bytes()).copied();
        let existing_owner = existing
            .and_then(|sk| self.sessions.get(sk))
            .map(|s| s.auth_name.as_ref());
        if let Some(Some(owner)) = existing_owner {
            if Some(owner) != auth_name.as_ref() {
                return self.refuse(k, ReasonCode::NotAuthorized);
            }
        }
        if existing.is_none() && self.sessions.len() >= self.config.max_sessions {
            return self.refuse(k, ReasonCode::QuotaExceeded);
        }
        // A session the name does not own yet, new or claimed, takes a place in its
        // quota.
        let owned_already = matches!(existing_owner, Some(Some(_)));
        if let (Some(max), Some(name), false) = (
            self.config.max_sessions_per_authentication_name,
            &auth_name,
            owned_already,
        ) {
            if self.sessions_per_auth.get(name).copied().unwrap_or(0) >= max {
                return self.refuse(k, ReasonCode::QuotaExceeded);
            }
        }
        // Will: validated and authorized now, published only on an abnormal end.
        let mut will = None;
        if let Some(w) = p.will {
            if !self.topic_within_limits(&w.topic) {
                return self.refuse(k, ReasonCode::TopicNameInvalid);
            }
            if w.retain && !self.config.retain_available {
                return self.refuse(k, ReasonCode::RetainNotSupported);
            }
            let allowed = self.authorizer.may_publish(
                ClientInfo {
                    client_id: client_id.as_str(),
                    authentication_name: auth_name.as_deref(),
                },
                &w.topic,
                w.retain,
            );
            if !allowed {
                if v5 {
                    return self.refuse(k, ReasonCode::NotAuthorized);
                }
                // 3.1.1 has no way to say so: the will is dropped.
                self.stats.publish_not_authorized += 1;
            } else {
                let props = w.properties;
                let delay = props.will_delay_interval.unwrap_or(0);
                let mut publish = Publish {
                    dup: false,
                    qos: w.qos,
                    retain: w.retain,
                    topic: w.topic,
                    packet_id: None,
                    properties: mqtt_proto::PublishProperties {
                        payload_format_indicator: props.payload_format_indicator,
                        message_expiry_interval: props.message_expiry_interval,
                        content_type: props.content_type,
                        response_topic: props.response_topic,
                        correlation_data: props.correlation_data,
                        subscription_identifiers: Vec::new(),
                        topic_alias: None,
                        user_properties: props.user_properties,
                    },
                    payload: w.payload,
                };
                // The will waits for the connection's end: it must not pin the read
                // buffer the CONNECT came in.
                detach_publish(&mut publish);
                will = Some(PendingWill { publish, delay });
            }
        }
        // Session expiry granted.
        let requested = if v5 {
            p.properties.session_expiry_interval.unwrap_or(0)
        } else if p.clean_start {
            0
        } else {
            self.config.default_session_expiry
        };
        let granted = requested.min(self.config.max_session_expiry);
        // CONNACK, built before anything changes: a 5.0 client whose Maximum Packet
        // Size is too small for it cannot be served without breaking [MQTT-3.1.2-24]
        // (nothing above its maximum is sent), so it is closed without a CONNACK and
        // before it can take a session over.
        let mut ack = ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties::default(),
        };
        if v5 {
            let props = &mut ack.properties;
            if let Some((method, data)) = enhanced_ack {
                props.authentication_method = Some(method);
                props.authentication_data = data;
            }
            props.receive_maximum = NonZeroU16::new(self.config.receive_maximum);
            props.maximum_packet_size = NonZeroU32::new(self.config.max_packet_size);
            props.topic_alias_maximum =
                (self.config.topic_alias_maximum > 0).then_some(self.config.topic_alias_maximum);
            props.assigned_client_identifier = assigned;
            props.server_keep_alive = server_keep_alive;
            if granted != requested {
                props.session_expiry_interval = Some(granted);
            }
            if !self.config.retain_available {
                props.retain_available = Some(false);
            }
            if !self.config.wildcard_subscriptions {
                props.wildcard_subscription_available = Some(false);
            }
            if !self.config.shared_subscriptions {
                props.shared_subscription_available = Some(false);
            }
            if !self.config.subscription_identifiers {
                props.subscription_identifiers_available = Some(false);
            }
            if p.properties.request_response_information == Some(true) {
                if let Some(prefix) = &self.config.response_information_prefix {
                    let info = format!("{prefix}{}", client_id.as_str());
                    props.response_information = MqttString::copy_from_str(&info).ok();
                }
            }
        }
        let mut ack = Packet::ConnAck(Box::new(ack));
        if !self.conns.get(k).is_some_and(|c| fits(&ack, c)) {
            return self.close(k, ReasonCode::PacketTooLarge);
        }
        // Takeover [MQTT-3.1.4-3]: the old connection gets DISCONNECT 0x8E (5.0).
        let mut existing = existing;
        if let Some(sk) = existing {
            if let Some(old) = self.sessions.get(sk).and_then(|s| s.conn) {
                self.stats.takeovers += 1;
                let ok = key(old);
                self.push_disconnect(ok, ReasonCode::SessionTakenOver);
                if let Some(c) = self.conns.get_mut(ok) {
                    c.start_closing();
                }
                self.events.push_back(Event::Close {
                    conn: old,
                    reason: ReasonCode::SessionTakenOver,
                });
                self.detach(now, ok, sk, true);
            }
            // Clean Start, or a session that ended with its connection, starts anew.
            // A taken-over session with expiry 0 was already ended by `detach`: its
            // key is stale, and Session Present must be 0 [MQTT-3.2.2-2].
            if p.clean_start || self.sessions.get(sk).is_none_or(|s| s.expiry_interval == 0) {
                self.end_session(now, sk);
                existing = None;
            }
        }
        let session_present = existing.is_some();
        let sk = match existing {
            Some(sk) => {
                // An unowned session resumed with an authentication name: claimed.
                if let (Some(s), Some(name)) = (self.sessions.get_mut(sk), &auth_name) {
                    if s.auth_name.is_none() {
                        s.auth_name = Some(name.clone());
                        self.count_owned_session(name);
                    }
                }
                sk
            }
            None => {
                let sk = self
                    .sessions
                    .insert(Session::new(client_id.clone(), auth_name.clone()));
                self.by_client_id.insert(client_id.as_shared().clone(), sk);
                if let Some(a) = &auth_name {
                    self.count_owned_session(a);
                }
                sk
            }
        };
        let conn = conn_id(k);
        if let Some(s) = self.sessions.get_mut(sk) {
            s.conn = Some(conn);
            s.expires_at = None;
            s.expiry_interval = granted;
            // The send quota starts afresh with the connection (5.0 section 4.9).
            s.incoming_qos2.new_connection();
            // [MQTT-3.1.3-9] a resumed session cancels a will whose delay is running.
            s.delayed_will = None;
        }
        let keep_alive_deadline = if keep_alive > 0 {
            // [MQTT-3.1.2-24] 1.5 times the Keep Alive.
            let ka = Duration::from_millis(u64::from(keep_alive) * 1500);
            Some((ka, now.instant + ka))
        } else {
            None
        };
        if let Some(c) = self.conns.get_mut(k) {
            c.state = ConnState::Active { session: sk };
            c.client_id = Some(client_id.clone());
            c.will = will.map(Box::new);
            c.connect_expiry_zero = requested == 0;
            if v5 {
                c.peer_receive_max = p.properties.receive_maximum.map_or(u16::MAX, |r| r.get());
                c.peer_max_packet = p
                    .properties
                    .maximum_packet_size
                    .map_or(u32::MAX, |m| m.get());
                c.peer_topic_alias_max = p.properties.topic_alias_maximum.unwrap_or(0);
                c.problem_info = p.properties.request_problem_information.unwrap_or(true);
            } else {
                c.peer_receive_max = self.config.max_inflight_v3;
            }
            if let Some((ka, deadline)) = keep_alive_deadline {
                c.keep_alive = Some(ka);
                c.keep_alive_deadline = Some(deadline);
            }
        }
        if let Some((_, deadline)) = keep_alive_deadline {
            self.timers.schedule(deadline, TimerKind::KeepAlive(k));
        }
        self.store_session(now, sk);
        if let Packet::ConnAck(a) = &mut ack {
            a.session_present = session_present;
        }
        self.push_out(k, ack);
        self.events.push_back(Event::Connected {
            conn,
            client_id,
            protocol: p.protocol,
            session_present,
        });
        if session_present {
            self.resend_inflight(now, k, sk);
        }
        self.fill_window(now, sk);
    }

    fn assign_client_id(&mut self) -> MqttString {
        loop {
            let id = format!("brokk-{:016x}", self.rng.next_u64());
            if !self.by_client_id.contains_key(id.as_bytes()) {
                // Only ASCII hex digits: always a valid MQTT string.
                if let Ok(s) = MqttString::copy_from_str(&id) {
                    return s;
                }
            }
        }
    }

    /// Refuses a CONNECT: CONNACK with `code` (mapped for 3.1.1), then close.
    fn refuse(&mut self, k: Key, code: ReasonCode) {
        let mut ack = connack(false, code);
        if let Packet::ConnAck(a) = &mut ack {
            // The encoder drops properties for 3.1.1.
            a.properties.reason_string = reason_string(code);
        }
        self.push_out(k, ack);
        self.close(k, code);
    }

    /// [MQTT-4.4.0-1] on reconnect, resend unacknowledged PUBLISH (DUP set) and PUBREL,
    /// in their original order; never at any other time.
    fn resend_inflight(&mut self, now: Now, k: Key, sk: Key) {
        let (Some(s), Some(c)) = (self.sessions.get_mut(sk), self.conns.get(k)) else {
            return;
        };
        let mut packets = Vec::with_capacity(s.inflight.len());
        let mut expired = Vec::new();
        let mut too_large = Vec::new();
        for f in s.inflight.iter_mut() {
            // Resent as copies below: no output queue names them any more.
            f.sent = true;
            match f.state {
                FlightState::Published => {
                    let expires_at = self.msgs.expires_at(f.msg.msg);
                    let Some(left) = time_left(expires_at, now.instant) else {
                        expired.push(f.packet_id);
                        continue;
                    };
                    f.msg.expiry_left = left;
                    let Some(p) = delivered_form(&self.msgs, &f.msg, Some(f.packet_id), true)
                    else {
                        continue;
                    };
                    let packet = Packet::Publish(p);
                    // [MQTT-3.1.2-25] the client came back with a smaller Maximum
                    // Packet Size: discarded as if its delivery had completed.
                    if !fits(&packet, c) {
                        too_large.push(f.packet_id);
                        continue;
                    }
                    packets.push(packet);
                }
                FlightState::Released => packets.push(Packet::PubRel(PubAck::new(f.packet_id))),
            }
        }
        for id in expired {
            self.stats.expired += 1;
            self.remove_inflight(now, sk, id);
        }
        for id in too_large {
            self.stats.dropped_too_large += 1;
            self.remove_inflight(now, sk, id);
        }
        for p in packets {
            self.push_out(k, p);
        }
    }

    // ---------------------------------------------------------------- PUBLISH in

    fn on_publish(&mut self, now: Now, k: Key, sk: Key, mut p: Publish) {
        self.stats.publishes_received += 1;
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let v5 = c.version.is_v5();
        if v5 {
            // [MQTT-3.3.4-6] a client may not send Subscription Identifiers.
            if !p.properties.subscription_identifiers.is_empty() {
                return self.violation(now, k, ReasonCode::ProtocolError);
            }
            if let Some(alias) = p.properties.topic_alias.take() {
                let max = self.config.topic_alias_maximum;
                // [MQTT-3.3.2-9] alias above the maximum we announced.
                if alias.get() > max {
                    return self.violation(now, k, ReasonCode::TopicAliasInvalid);
                }
                let slot = usize::from(alias.get() - 1);
                if c.inbound_aliases.len() < usize::from(max) {
                    c.inbound_aliases.resize(usize::from(max), None);
                }
                if p.topic.is_empty() {
                    match &c.inbound_aliases[slot] {
                        Some(t) => p.topic = t.clone(),
                        // Section 3.3.2.3.4: an empty topic with an alias that names no topic.
                        None => return self.violation(now, k, ReasonCode::ProtocolError),
                    }
                } else {
                    // Aliases live as long as the connection: keep the topic, not the
                    // read buffer it points into.
                    c.inbound_aliases[slot] = Some(detach_topic(&p.topic));
                }
            }
        }
        if p.retain && !self.config.retain_available {
            // Section 3.3.1.3: Retain not supported was announced in CONNACK (3.2.2.3.5).
            return self.violation(now, k, ReasonCode::RetainNotSupported);
        }
        let id = p.packet_id;
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, id) {
            let Some(s) = self.sessions.get_mut(sk) else {
                return;
            };
            // QoS 2 duplicate: acknowledge again, do not route again [MQTT-4.3.3-2].
            if s.incoming_qos2.received_again(id) {
                return self.push_out(k, Packet::PubRec(PubAck::new(id)));
            }
            // 5.0 section 3.3.4: more QoS 2 PUBLISHes unreleased on this connection
            // than the Receive Maximum in CONNACK [MQTT-3.3.4-7]. (QoS 1 is
            // acknowledged at once, so never counts.) 3.1.1 and 3.1 have no Receive
            // Maximum: such a client may use every packet id, and what bounds the
            // session's memory then is the id space itself (65,535 ids, see
            // `IncomingQos2`); closing a conforming client instead would lose its
            // messages.
            if v5
                && s.incoming_qos2.on_this_connection() >= usize::from(self.config.receive_maximum)
            {
                return self.violation(now, k, ReasonCode::ReceiveMaximumExceeded);
            }
        }
        let mut code = ReasonCode::Success;
        if !self.topic_within_limits(&p.topic) {
            code = ReasonCode::TopicNameInvalid;
        } else if p.properties.user_properties.len() > self.config.max_user_properties {
            code = ReasonCode::ImplementationSpecificError;
        } else {
            // The default hook allows everything: skip building its arguments (the
            // client id's UTF-8 check) on the hot path.
            let allowed = self.authorizer_is_default || {
                let Some(s) = self.sessions.get(sk) else {
                    return;
                };
                self.authorizer.may_publish(
                    ClientInfo {
                        client_id: s.client_id.as_str(),
                        authentication_name: s.auth_name.as_deref(),
                    },
                    &p.topic,
                    p.retain,
                )
            };
            if !allowed {
                self.stats.publish_not_authorized += 1;
                code = ReasonCode::NotAuthorized;
            }
        }
        if code == ReasonCode::Success {
            let expires_at = p
                .properties
                .message_expiry_interval
                .map(|secs| now.instant + Duration::from_secs(u64::from(secs)));
            if p.retain && !self.set_retained(now, &p, expires_at) {
                code = ReasonCode::QuotaExceeded;
            }
            if code == ReasonCode::Success {
                p.dup = false;
                p.packet_id = None;
                let routed = self.route(now, Some(sk), &p, expires_at);
                if routed.matched == 0 {
                    code = ReasonCode::NoMatchingSubscribers;
                }
            }
        }
        // 3.1.1 cannot report a refusal: the message is acknowledged and dropped
        // [MQTT-3.3.5-2].
        if !v5 {
            code = ReasonCode::Success;
        }
        match (p.qos, id) {
            (QoS::AtLeastOnce, Some(id)) => {
                let mut ack = PubAck::new(id);
                ack.reason_code = code;
                ack.properties = self.ack_properties(k, code);
                self.push_out(k, Packet::PubAck(ack));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if code.is_success() {
                    if let Some(s) = self.sessions.get_mut(sk) {
                        s.incoming_qos2.insert(id);
                    }
                }
                let mut ack = PubAck::new(id);
                ack.reason_code = code;
                ack.properties = self.ack_properties(k, code);
                self.push_out(k, Packet::PubRec(ack));
            }
            _ => {}
        }
    }

    fn topic_within_limits(&self, topic: &TopicName) -> bool {
        topic.len() <= self.config.max_topic_length
            && topic.levels().count() <= self.config.max_topic_levels
    }

    /// Routes a message to every matching subscription. Overlapping subscriptions of
    /// one session give one delivery at the highest granted QoS [MQTT-3.3.5-1], with
    /// all their subscription identifiers.
    fn route(
        &mut self,
        now: Now,
        publisher: Option<Key>,
        p: &Publish,
        expires_at: Option<Instant>,
    ) -> Routed {
        let mut matches = core::mem::take(&mut self.scratch);
        matches.clear();
        let mut picker = OnlinePicker {
            rng: &mut self.rng,
            sessions: &self.sessions,
            exclude: None,
        };
        self.router
            .matches(p.topic.as_bytes(), &mut picker, &mut matches);
        // No Local [MQTT-3.8.3-3]: not to the publisher's own non-shared subscriptions.
        if let Some(publisher) = publisher {
            matches.retain(|m| {
                m.shared.is_some() || !(m.entry.options.no_local && m.entry.session == publisher)
            });
        }
        let matched = matches.len();
        // The copies the receivers share, made at the first one that takes each.
        // (A QoS 0 message to one receiver is cheaper as a packet of its own.)
        let mut copies = RouteCopies {
            fan_out: matched > 1,
            ..RouteCopies::default()
        };
        // Merge duplicates only when a session appears twice through non-shared
        // subscriptions (overlapping filters). A shared subscription delivers its own
        // copy, even to a client that also has a matching non-shared one (5.0 4.8.2).
        //
        // Each session is marked with this route's number as it is seen: a session
        // already marked is a duplicate. (After 2^32 routes a mark left from long ago
        // can look current; that only sends the route through the merging path,
        // which gives the same deliveries when nothing overlaps.)
        let dup = matches.len() > 1 && {
            self.route_count = self.route_count.wrapping_add(1);
            let count = self.route_count;
            let sessions = &mut self.sessions;
            matches.iter().any(|m| {
                m.shared.is_none()
                    && sessions
                        .get_mut(m.entry.session)
                        .is_some_and(|s| core::mem::replace(&mut s.route_mark, count) == count)
            })
        };
        if dup {
            // Non-shared matches first, grouped by session; shared ones after, alone.
            matches.sort_by_key(|m| (m.shared.is_some(), m.entry.session));
            let mut i = 0;
            while i < matches.len() {
                let mut j = i + 1;
                let mut qos = matches[i].entry.options.qos;
                let mut rap = matches[i].entry.options.retain_as_published;
                let mut ids: Vec<NonZeroU32> = matches[i].entry.id.into_iter().collect();
                while j < matches.len()
                    && matches[j].shared.is_none()
                    && matches[j].entry.session == matches[i].entry.session
                {
                    qos = qos.max(matches[j].entry.options.qos);
                    rap |= matches[j].entry.options.retain_as_published;
                    ids.extend(matches[j].entry.id);
                    j += 1;
                }
                let session = matches[i].entry.session;
                let shared = matches[i].shared.clone();
                let retain = rap && p.retain;
                self.deliver(
                    now,
                    session,
                    p,
                    qos_min(p.qos, qos),
                    retain,
                    ids,
                    expires_at,
                    shared,
                    &mut copies,
                );
                i = j;
            }
        } else {
            for m in &matches {
                let retain = m.entry.options.retain_as_published && p.retain;
                let ids = m.entry.id.into_iter().collect();
                self.deliver(
                    now,
                    m.entry.session,
                    p,
                    qos_min(p.qos, m.entry.options.qos),
                    retain,
                    ids,
                    expires_at,
                    m.shared.clone(),
                    &mut copies,
                );
            }
        }
        copies.release(&mut self.msgs);
        self.scratch = matches;
        Routed { matched }
    }

    /// Delivers one message to one session: straight out if the connection is
    /// online and the window allows, else into the session queue.
    ///
    /// `copies` are the route's copies of the message, made by the first delivery
    /// that needs each; the caller releases them when its route is done.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        now: Now,
        sk: Key,
        template: &Publish,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<NonZeroU32>,
        expires_at: Option<Instant>,
        shared: Option<TopicFilter>,
        copies: &mut RouteCopies,
    ) {
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        let online = s.conn.and_then(|c| {
            let ck = key(c);
            self.conns
                .get(ck)
                .filter(|c| c.session() == Some(sk))
                .map(|c| (ck, c))
        });
        if qos == QoS::AtMostOnce {
            // QoS 0 is not queued for offline sessions.
            let Some((ck, c)) = online else { return };
            if c.out.bytes() >= self.config.outbound_buffer_bytes {
                self.stats.dropped_qos0_slow_consumer += 1;
                return;
            }
            if expires_at.is_some_and(|at| at <= now.instant) {
                self.stats.expired += 1;
                return;
            }
            // The fan-out case: a tag naming the route's one copy. A receiver with
            // several Subscription Identifiers (overlapping subscriptions) gets a
            // packet of its own.
            if copies.fan_out && sub_ids.len() <= 1 {
                let msg = copies.copy(&mut self.msgs, template, expires_at, now, false);
                let tag = SharedTag {
                    msg,
                    sub_id: sub_ids.first().copied(),
                    retain,
                };
                // [MQTT-3.1.2-25] too large for this client: dropped for it.
                let too_large = c.peer_max_packet != u32::MAX
                    && self.msgs.get(msg).is_some_and(|(p, _)| {
                        p.encoded_len_for(c.version, &tag.delivery(p)) > c.peer_max_packet as usize
                    });
                if too_large {
                    self.stats.dropped_too_large += 1;
                    return;
                }
                self.msgs.retain(msg);
                let size = self.msgs.size(msg);
                self.stats.deliveries += 1;
                return self.push_shared(ck, tag, size);
            }
            let mut p = template.clone();
            p.qos = qos;
            p.retain = retain;
            p.dup = false;
            p.packet_id = None;
            p.properties.subscription_identifiers = sub_ids;
            refresh_expiry(&mut p, expires_at, now.instant);
            let packet = Packet::Publish(p);
            if !fits(&packet, c) {
                // [MQTT-3.1.2-25] too large for this client: dropped for it.
                self.stats.dropped_too_large += 1;
                return;
            }
            self.stats.deliveries += 1;
            return self.push_out(ck, packet);
        }
        if online.is_none() && !s.persistent() {
            return;
        }
        // An offline session's message may wait hours: it gets the copy made out of
        // the read buffer the message shares, so it does not pin that buffer.
        let msg = copies.copy(&mut self.msgs, template, expires_at, now, online.is_none());
        self.msgs.retain(msg);
        let q = Queued {
            msg,
            qos,
            retain,
            sub_ids: SubIds::from_vec(sub_ids),
            expiry_left: None,
            seq: s.take_seq(),
            shared: shared.map(|filter| (filter, template.qos)),
        };
        match online {
            Some((ck, c)) => {
                // The size is checked where the message goes out, in
                // `send_inflight`, which queued messages pass through as well.
                let window = usize::from(c.peer_receive_max);
                if s.inflight.len() < window && s.queue.is_empty() {
                    self.store_enqueue(sk, &q, now);
                    self.send_inflight(now, ck, sk, q);
                } else {
                    self.enqueue(now, sk, q, true);
                }
            }
            None => self.enqueue(now, sk, q, false),
        }
    }

    /// Puts a QoS 1/2 message in flight on an online connection.
    fn send_inflight(&mut self, now: Now, ck: Key, sk: Key, q: Queued) {
        let (Some(s), Some(c)) = (self.sessions.get_mut(sk), self.conns.get(ck)) else {
            self.msgs.release(q.msg);
            return;
        };
        let mut q = q;
        let live = match time_left(self.msgs.expires_at(q.msg), now.instant) {
            Some(left) => {
                q.expiry_left = left;
                true
            }
            None => false,
        };
        // [MQTT-3.1.2-25] a message too large for the client (which may have
        // reconnected with a smaller Maximum Packet Size than when it was queued) is
        // discarded as if it had been sent. (The length of a QoS 1/2 PUBLISH counts
        // its packet id whether or not one is set yet.)
        let too_large = live
            && c.peer_max_packet != u32::MAX
            && self.msgs.get(q.msg).is_some_and(|(p, _)| {
                p.encoded_len_for(c.version, &q.delivery(PacketId::MIN, false))
                    > c.peer_max_packet as usize
            });
        if !live || too_large {
            if too_large {
                self.stats.dropped_too_large += 1;
            } else {
                self.stats.expired += 1;
            }
            let seq = q.seq;
            let client_id = s.client_id.clone();
            let persistent = s.persistent();
            self.msgs.release(q.msg);
            self.store_remove(persistent, client_id, seq);
            return;
        }
        let Some(id) = s.next_packet_id() else {
            // All 65,535 ids in flight: keep it queued.
            s.queue_bytes += self.msgs.size(q.msg);
            s.queue.push_front(q);
            return;
        };
        // The in-flight entry is what goes on the wire: the output queue only names it.
        let size = self.msgs.size(q.msg);
        let allocated = s.allocations;
        s.inflight.push_back(InFlight {
            packet_id: id,
            state: FlightState::Published,
            msg: q,
            allocated,
            sent: false,
        });
        self.stats.deliveries += 1;
        self.push_flight(ck, id, size);
    }

    /// Adds to a session queue within its limits (online or offline).
    fn enqueue(&mut self, now: Now, sk: Key, q: Queued, online: bool) {
        let limits = if online {
            self.config.online_queue
        } else {
            self.config.offline_queue
        };
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        let size = self.msgs.size(q.msg);
        let full = |s: &Session| {
            s.queue.len() + 1 > limits.messages || s.queue_bytes + size > limits.bytes
        };
        // A message larger than the queue's whole byte limit can never be queued:
        // drop it alone, whatever the policy, instead of first discarding (or ending
        // the session with) everything queued before it.
        if size > limits.bytes {
            if online {
                self.stats.dropped_online_queue_full += 1;
            } else {
                self.stats.dropped_offline_queue_full += 1;
            }
            self.msgs.release(q.msg);
            return;
        }
        let mut removed = Vec::new();
        let mut drop_new = false;
        if full(s) {
            if online {
                // Slow consumer, online: drop the oldest QoS 1 message; if only QoS 2
                // messages wait, drop the new one (QoS 2 is never dropped once queued).
                while full(s) {
                    match s.queue.iter().position(|m| m.qos == QoS::AtLeastOnce) {
                        Some(i) => {
                            if let Some(old) = s.queue.remove(i) {
                                s.queue_bytes -= self.msgs.size(old.msg);
                                removed.push(old.seq);
                                self.msgs.release(old.msg);
                            }
                            self.stats.dropped_online_queue_full += 1;
                        }
                        None => {
                            self.stats.dropped_online_queue_full += 1;
                            drop_new = true;
                            break;
                        }
                    }
                }
            } else {
                match self.config.offline_overflow {
                    OverflowPolicy::EndSession => {
                        self.stats.sessions_ended_by_overflow += 1;
                        self.msgs.release(q.msg);
                        self.session_ended(sk, SessionEnd::QueueOverflow);
                        self.end_session(now, sk);
                        return;
                    }
                    OverflowPolicy::DropNewest => {
                        self.stats.dropped_offline_queue_full += 1;
                        self.msgs.release(q.msg);
                        return;
                    }
                    OverflowPolicy::DropOldest => {
                        while full(s) {
                            match s.queue.pop_front() {
                                Some(old) => {
                                    s.queue_bytes -= self.msgs.size(old.msg);
                                    removed.push(old.seq);
                                    self.msgs.release(old.msg);
                                    self.stats.dropped_offline_queue_full += 1;
                                }
                                None => {
                                    // A message limit of 0: nothing can be queued.
                                    self.stats.dropped_offline_queue_full += 1;
                                    drop_new = true;
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        let persistent = s.persistent();
        let client_id = s.client_id.clone();
        if drop_new {
            self.msgs.release(q.msg);
        } else {
            s.queue_bytes += size;
            s.queue.push_back(q);
        }
        // The store forgets what was dropped, also when the new message was dropped
        // too (otherwise a restart would bring the dropped messages back).
        for seq in removed {
            self.store_remove(persistent, client_id.clone(), seq);
        }
        if self.config.store_effects && persistent && !drop_new {
            if let Some(q) = self.sessions.get(sk).and_then(|s| s.queue.back()) {
                if let Some(op) = enqueue_op(&self.msgs, client_id, q, now) {
                    self.events.push_back(Event::store(op));
                }
            }
        }
    }

    /// Moves queued messages into flight while the peer's window allows.
    fn fill_window(&mut self, now: Now, sk: Key) {
        loop {
            let Some(s) = self.sessions.get_mut(sk) else {
                return;
            };
            let Some(ck) = s.conn.map(key) else { return };
            let Some(c) = self.conns.get(ck) else { return };
            if c.session() != Some(sk) || s.inflight.len() >= usize::from(c.peer_receive_max) {
                return;
            }
            let Some(q) = s.queue.pop_front() else { return };
            s.queue_bytes -= self.msgs.size(q.msg);
            self.send_inflight(now, ck, sk, q);
        }
    }

    fn publish_will(&mut self, now: Now, will: Publish) {
        let expires_at = will
            .properties
            .message_expiry_interval
            .map(|secs| now.instant + Duration::from_secs(u64::from(secs)));
        if will.retain && !self.set_retained(now, &will, expires_at) {
            self.stats.retained_refused += 1;
        }
        self.route(now, None, &will, expires_at);
    }

    // ---------------------------------------------------------------- retained

    /// Sets or clears (empty payload, [MQTT-3.3.1-6] [MQTT-3.3.1-7]) the retained
    /// message of a topic. False when the retained store is full.
    fn set_retained(&mut self, now: Now, p: &Publish, expires_at: Option<Instant>) -> bool {
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

    fn schedule_retained_expiry(&mut self, at: Instant, topic: Bytes) {
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
    fn expire_retained(&mut self, now: Now) {
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

    // ---------------------------------------------------------------- acks

    /// The QoS and state of the outbound flow `id` names, if one is in flight.
    fn flight_of(&self, sk: Key, id: PacketId) -> Option<(QoS, FlightState)> {
        let s = self.sessions.get(sk)?;
        let f = s.inflight.iter().find(|f| f.packet_id == id)?;
        Some((f.msg.qos, f.state))
    }

    // An acknowledgement naming an id that is not in flight is ignored (a late
    // duplicate after a reconnect, as Mosquitto does); one that names an id whose
    // flow it does not fit is a Protocol Error (section 4.3, [MQTT-4.3.2-5],
    // [MQTT-4.3.3-9]): PUBACK for QoS 2, PUBREC or PUBCOMP for QoS 1, PUBCOMP before
    // the PUBREL was sent.

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2, after the PUBREL): the end of the flow of
    /// the id it names, if that flow is in the state `fits` says.
    fn on_flow_end(&mut self, now: Now, k: Key, sk: Key, id: PacketId, fits: (QoS, FlightState)) {
        match self.flight_of(sk, id) {
            None => {}
            Some(flight) if flight == fits => {
                self.remove_inflight(now, sk, id);
                self.fill_window(now, sk);
            }
            Some(_) => self.violation(now, k, ReasonCode::ProtocolError),
        }
    }

    fn on_pubrec(&mut self, now: Now, k: Key, sk: Key, a: PubAck) {
        match self.flight_of(sk, a.packet_id) {
            // Section 4.3.3: a PUBREC with a failure code (>= 0x80) ends the flow, and
            // no PUBREL follows it, not even one with 0x92.
            None if !a.reason_code.is_success() => {}
            None => {
                let mut rel = PubAck::new(a.packet_id);
                rel.reason_code = ReasonCode::PacketIdentifierNotFound;
                rel.properties = self.ack_properties(k, rel.reason_code);
                self.push_out(k, Packet::PubRel(rel));
            }
            Some((QoS::ExactlyOnce, state)) => {
                if !a.reason_code.is_success() {
                    if state == FlightState::Published {
                        self.remove_inflight(now, sk, a.packet_id);
                        self.fill_window(now, sk);
                    } else {
                        // The message was received (PUBREC 0x00 came before): a
                        // failure now contradicts the flow.
                        self.violation(now, k, ReasonCode::ProtocolError);
                    }
                    return;
                }
                // The message is delivered; only the id matters until PUBCOMP (the
                // entry keeps its reference to the message until then). A repeated
                // PUBREC gets the PUBREL again.
                if let Some(f) = self
                    .sessions
                    .get_mut(sk)
                    .and_then(|s| s.inflight.iter_mut().find(|f| f.packet_id == a.packet_id))
                {
                    f.state = FlightState::Released;
                }
                self.push_out(k, Packet::PubRel(PubAck::new(a.packet_id)));
            }
            Some(_) => self.violation(now, k, ReasonCode::ProtocolError),
        }
    }

    fn on_pubrel(&mut self, k: Key, sk: Key, a: PubAck) {
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        let mut comp = PubAck::new(a.packet_id);
        if !s.incoming_qos2.release(a.packet_id) {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        // [MQTT-3.7.2.2] a Reason String with the error, as on every negative ack.
        if !comp.reason_code.is_success() {
            comp.properties = self.ack_properties(k, comp.reason_code);
        }
        self.push_out(k, Packet::PubComp(comp));
    }

    fn remove_inflight(&mut self, _now: Now, sk: Key, id: mqtt_proto::PacketId) {
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        // Acks usually come in order: the entry is at or near the front.
        if let Some(i) = s.inflight.iter().position(|f| f.packet_id == id) {
            if let Some(f) = s.inflight.remove(i) {
                self.msgs.release(f.msg.msg);
                let persistent = s.persistent();
                let client_id = s.client_id.clone();
                self.store_remove(persistent, client_id, f.msg.seq);
            }
        }
    }

    // ---------------------------------------------------------------- SUBSCRIBE

    fn on_subscribe(&mut self, now: Now, k: Key, sk: Key, sub: Subscribe) {
        let Some(c) = self.conns.get(k) else { return };
        let version = c.version;
        let v5 = version.is_v5();
        let sub_id = sub.properties.subscription_identifier;
        if sub_id.is_some() && !self.config.subscription_identifiers {
            return self.violation(now, k, ReasonCode::SubscriptionIdentifiersNotSupported);
        }
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut retained_for: Vec<(mqtt_proto::TopicFilter, QoS)> = Vec::new();
        for (filter, options) in sub.filters {
            let shared = filter.shared().is_some();
            let code = if filter.len() > self.config.max_topic_length
                || mqtt_proto::split_levels(filter.match_filter()).count()
                    > self.config.max_topic_levels
            {
                ReasonCode::TopicFilterInvalid
            } else if shared && !self.config.shared_subscriptions {
                ReasonCode::SharedSubscriptionsNotSupported
            } else if filter.has_wildcards() && !self.config.wildcard_subscriptions {
                ReasonCode::WildcardSubscriptionsNotSupported
            } else {
                let (client_id, auth) = match self.sessions.get(sk) {
                    Some(s) => (s.client_id.clone(), s.auth_name.clone()),
                    None => return,
                };
                let allowed = self.authorizer.may_subscribe(
                    ClientInfo {
                        client_id: client_id.as_str(),
                        authentication_name: auth.as_deref(),
                    },
                    &filter,
                );
                let Some(s) = self.sessions.get(sk) else {
                    return;
                };
                let existed = s.subscriptions.contains(&filter);
                if !allowed {
                    ReasonCode::NotAuthorized
                } else if !existed
                    && (s.subscriptions.len() >= self.config.max_subscriptions_per_session
                        || self.router.len() >= self.config.max_subscriptions)
                {
                    self.stats.subscriptions_refused += 1;
                    ReasonCode::QuotaExceeded
                } else {
                    self.add_subscription(sk, filter.clone(), options, sub_id);
                    let send_retained = !shared
                        && match options.retain_handling {
                            RetainHandling::SendAtSubscribe => true,
                            RetainHandling::SendIfNew => !existed,
                            RetainHandling::DoNotSend => false,
                        };
                    if send_retained {
                        retained_for.push((filter, options.qos));
                    }
                    match options.qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                    }
                }
            };
            codes.push(code);
        }
        // MQTT 3.1 has no SUBACK failure code: a refused subscription closes the
        // connection rather than pretend it was granted.
        if version == ProtocolVersion::V3_1 && codes.iter().any(|c| !c.is_success()) {
            return self.violation(now, k, ReasonCode::NotAuthorized);
        }
        let first_failure = codes.iter().copied().find(|c| !c.is_success());
        let properties = match first_failure {
            Some(code) if v5 => self.ack_properties(k, code),
            _ => AckProperties::default(),
        };
        self.push_out(
            k,
            Packet::SubAck(SubAck {
                packet_id: sub.packet_id,
                reason_codes: codes,
                properties,
            }),
        );
        self.store_session(now, sk);
        // Retained messages after the SUBACK [MQTT-3.8.4-4], RETAIN set [MQTT-3.3.1-8];
        // expired ones are deleted rather than sent [MQTT-3.3.2-5].
        if !retained_for.is_empty() {
            self.expire_retained(now);
        }
        for (filter, granted) in retained_for {
            let mut matching: Vec<(Publish, Option<Instant>)> = self
                .retained
                .values()
                .filter(|r| filter_matches(filter.match_filter(), r.publish.topic.as_bytes()))
                .map(|r| (r.publish.clone(), r.expires_at))
                .collect();
            matching.sort_by(|a, b| a.0.topic.cmp(&b.0.topic));
            for (p, expires_at) in matching {
                let qos = qos_min(p.qos, granted);
                let mut copies = RouteCopies::default();
                self.deliver(
                    now,
                    sk,
                    &p,
                    qos,
                    true,
                    sub_id.into_iter().collect(),
                    expires_at,
                    None,
                    &mut copies,
                );
                copies.release(&mut self.msgs);
            }
        }
    }

    fn add_subscription(
        &mut self,
        sk: Key,
        filter: mqtt_proto::TopicFilter,
        options: mqtt_proto::SubscriptionOptions,
        id: Option<NonZeroU32>,
    ) {
        // The subscription outlives the SUBSCRIBE's read buffer: own the filter.
        let filter = mqtt_proto::TopicFilter::new(Bytes::copy_from_slice(filter.as_bytes()))
            .unwrap_or(filter);
        let (group, match_filter) = split_shared(&filter);
        self.router.subscribe(
            group.as_ref(),
            &match_filter,
            &filter,
            SubEntry {
                session: sk,
                options,
                id,
            },
        );
        if let Some(s) = self.sessions.get_mut(sk) {
            s.subscriptions.upsert(
                Subscription {
                    filter,
                    options,
                    id,
                },
                self.hash_keys,
            );
        }
    }

    fn on_unsubscribe(&mut self, now: Now, k: Key, sk: Key, u: Unsubscribe) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in u.filters {
            let Some(s) = self.sessions.get_mut(sk) else {
                return;
            };
            let code = match s.subscriptions.remove(&filter) {
                true => {
                    let (group, match_filter) = split_shared(&filter);
                    self.router.unsubscribe(group.as_ref(), &match_filter, sk);
                    ReasonCode::Success
                }
                false => ReasonCode::NoSubscriptionExisted,
            };
            codes.push(code);
        }
        let v5 = self.conns.get(k).is_some_and(|c| c.version.is_v5());
        self.push_out(
            k,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reason_codes: if v5 { codes } else { Vec::new() },
                properties: AckProperties::default(),
            }),
        );
        self.store_session(now, sk);
    }

    // ---------------------------------------------------------------- DISCONNECT

    fn on_disconnect(&mut self, now: Now, k: Key, sk: Key, d: Disconnect) {
        let Some(c) = self.conns.get(k) else { return };
        if let Some(expiry) = d.properties.session_expiry_interval {
            // [MQTT-3.14.2-2] a session expiry of 0 at CONNECT cannot be raised.
            if c.connect_expiry_zero && expiry != 0 {
                return self.violation(now, k, ReasonCode::ProtocolError);
            }
            let granted = expiry.min(self.config.max_session_expiry);
            if let Some(s) = self.sessions.get_mut(sk) {
                s.expiry_interval = granted;
            }
        }
        // [MQTT-3.1.2-10] a normal DISCONNECT discards the will; 0x04 keeps it.
        let with_will = d.reason_code == ReasonCode::DisconnectWithWillMessage;
        if let Some(c) = self.conns.get_mut(k) {
            c.start_closing();
        }
        self.events.push_back(Event::Close {
            conn: conn_id(k),
            reason: d.reason_code,
        });
        self.detach(now, k, sk, with_will);
    }

    // ---------------------------------------------------------------- ending

    /// A protocol violation or server-side decision ends the connection: DISCONNECT
    /// with `code` for 5.0 [MQTT-4.13.1-1], the will is published (abnormal end).
    fn violation(&mut self, now: Now, k: Key, code: ReasonCode) {
        let Some(c) = self.conns.get(k) else { return };
        let sk = c.session();
        // [MQTT-3.14.0-1] no DISCONNECT before CONNACK: a violation during the AUTH
        // exchange of CONNECT is refused with CONNACK [MQTT-4.12.0-4].
        if matches!(c.state, ConnState::AwaitingConnect { .. }) {
            return self.refuse(k, code);
        }
        self.push_disconnect(k, code);
        if let Some(c) = self.conns.get_mut(k) {
            c.start_closing();
        }
        self.events.push_back(Event::Close {
            conn: conn_id(k),
            reason: code,
        });
        if let Some(sk) = sk {
            self.detach(now, k, sk, true);
        }
    }

    /// DISCONNECT with a Reason Code and Reason String (5.0 only; a 3.1.1 client is
    /// just disconnected). Reason Strings are allowed on DISCONNECT even when the
    /// client asked for no problem information [MQTT-3.1.2-29].
    fn push_disconnect(&mut self, k: Key, code: ReasonCode) {
        if self.conns.get(k).is_some_and(|c| c.version.is_v5()) {
            let mut d = Disconnect::new(code);
            d.properties.reason_string = reason_string(code);
            self.push_out(k, Packet::Disconnect(d));
        }
    }

    /// Reason String for a negative acknowledgement, if the client wants problem
    /// information (Request Problem Information, default 1 [MQTT-3.1.2-29]).
    fn ack_properties(&self, k: Key, code: ReasonCode) -> AckProperties {
        let wanted = self
            .conns
            .get(k)
            .is_some_and(|c| c.version.is_v5() && c.problem_info);
        AckProperties {
            reason_string: if wanted && !code.is_success() {
                reason_string(code)
            } else {
                None
            },
            ..AckProperties::default()
        }
    }

    /// Marks a connection closing without a session (before CONNACK or a refusal).
    fn close(&mut self, k: Key, reason: ReasonCode) {
        if let Some(c) = self.conns.get_mut(k) {
            if matches!(c.state, ConnState::Closing { .. }) {
                return;
            }
            c.start_closing();
            self.events.push_back(Event::Close {
                conn: conn_id(k),
                reason,
            });
        }
    }

    /// The transport dropped without DISCONNECT.
    fn lose_connection(&mut self, now: Now, k: Key, publish_will: bool) {
        let Some(sk) = self.conns.get(k).and_then(|c| c.session()) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(k) {
            c.start_closing();
        }
        self.detach(now, k, sk, publish_will);
    }

    /// Separates a session from its connection: the will (if it is to be published)
    /// goes out now or after its delay, and the session either ends (expiry 0) or
    /// starts its expiry timer.
    fn detach(&mut self, now: Now, k: Key, sk: Key, publish_will: bool) {
        let will = self.conns.get_mut(k).and_then(|c| c.will.take());
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        if s.conn != Some(conn_id(k)) {
            return;
        }
        s.conn = None;
        let expiry = s.expiry_interval;
        if let (true, Some(w)) = (publish_will, will) {
            // [MQTT-3.1.3-9] the will waits for the smaller of its delay and the
            // session's expiry.
            let delay = w.delay.min(expiry);
            if delay == 0 {
                self.publish_will(now, w.publish);
            } else {
                let at = now.instant + Duration::from_secs(u64::from(delay));
                if let Some(s) = self.sessions.get_mut(sk) {
                    s.delayed_will = Some(Box::new((at, w.publish)));
                }
                self.timers.schedule(at, TimerKind::WillDelay(sk));
            }
        }
        if expiry == 0 {
            return self.end_session(now, sk);
        }
        // QoS 1 messages in flight stay with the session for redelivery; QoS 0 in
        // the connection's output are dropped with it.
        if expiry != u32::MAX {
            let at = now.instant + Duration::from_secs(u64::from(expiry));
            if let Some(s) = self.sessions.get_mut(sk) {
                s.expires_at = Some(at);
            }
            self.timers.schedule(at, TimerKind::SessionExpiry(sk));
        }
        self.store_session(now, sk);
    }

    /// One more session owned by `name` (`end_session` counts it down).
    fn count_owned_session(&mut self, name: &str) {
        match self.sessions_per_auth.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                self.sessions_per_auth.insert(name.to_owned(), 1);
            }
        }
    }

    /// Ends a session: subscriptions removed, a pending will published [MQTT-3.1.3-9],
    /// queued messages discarded.
    /// Tells the adapter that the broker is about to end a session on its own.
    fn session_ended(&mut self, sk: Key, reason: SessionEnd) {
        if let Some(s) = self.sessions.get(sk) {
            self.events.push_back(Event::SessionEnded {
                client_id: s.client_id.clone(),
                reason,
                queued_messages: s.queue.len() + s.inflight.len(),
                queued_bytes: s.queue_bytes,
            });
        }
    }

    fn end_session(&mut self, now: Now, sk: Key) {
        let Some(s) = self.sessions.remove(sk) else {
            return;
        };
        self.by_client_id.remove(s.client_id.as_bytes());
        if let Some(a) = &s.auth_name {
            if let Some(n) = self.sessions_per_auth.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    self.sessions_per_auth.remove(a);
                }
            }
        }
        for sub in s.subscriptions.iter() {
            let (group, match_filter) = split_shared(&sub.filter);
            self.router.unsubscribe(group.as_ref(), &match_filter, sk);
        }
        self.redeliver_shared(now, sk, &s);
        for q in s.queue.iter().chain(s.inflight.iter().map(|f| &f.msg)) {
            self.msgs.release(q.msg);
        }
        // `stored`, not `persistent()`: a DISCONNECT may have set the expiry to 0.
        if self.config.store_effects && s.stored {
            self.events.push_back(Event::store(StoreOp::SessionRemove {
                client_id: s.client_id.clone(),
            }));
        }
        // A session ended while online (overflow cannot happen online; clean start
        // replaces offline sessions) leaves nothing bound to a connection.
        if let Some(c) = s.conn {
            self.close(key(c), ReasonCode::SessionTakenOver);
        }
        if let Some(w) = s.delayed_will {
            self.publish_will(now, w.1);
        }
    }

    /// QoS 1 messages a shared subscription gave to a session that ended without
    /// acknowledging them go to another member of the group [MQTT-4.8.2] (5.0
    /// section 4.8.2: "the Server SHOULD send the Application Message to another
    /// Client that is subscribed to the same Shared Subscription"). QoS 2 stays with
    /// its session: once PUBREC may have been seen, a second delivery would break
    /// exactly once.
    fn redeliver_shared(&mut self, now: Now, ended: Key, s: &Session) {
        let unacked = s
            .inflight
            .iter()
            .filter(|f| f.state == FlightState::Published)
            .map(|f| &f.msg)
            .chain(s.queue.iter());
        for q in unacked {
            let Some((filter, published)) = &q.shared else {
                continue;
            };
            if q.qos != QoS::AtLeastOnce {
                continue;
            }
            let members = self.router.shared_members(filter);
            if members.is_empty() {
                continue;
            }
            let mut picker = OnlinePicker {
                rng: &mut self.rng,
                sessions: &self.sessions,
                exclude: Some(ended),
            };
            let entry = members[picker.pick(members)];
            if entry.session == ended {
                continue;
            }
            let Some((p, _)) = self.msgs.get(q.msg) else {
                continue;
            };
            let mut p = p.clone();
            let expires_at = self.msgs.expires_at(q.msg);
            // As published: the new member's own grant decides [MQTT-3.8.4-8].
            p.qos = *published;
            self.stats.shared_redeliveries += 1;
            let mut copies = RouteCopies::default();
            self.deliver(
                now,
                entry.session,
                &p,
                qos_min(*published, entry.options.qos),
                false,
                entry.id.into_iter().collect(),
                expires_at,
                Some(filter.clone()),
                &mut copies,
            );
            copies.release(&mut self.msgs);
        }
    }

    fn check_keep_alive(&mut self, now: Now, k: Key, at: Instant) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        if c.keep_alive_deadline != Some(at) || !matches!(c.state, ConnState::Active { .. }) {
            return;
        }
        let Some(ka) = c.keep_alive else { return };
        let deadline = c.last_rx + ka;
        if deadline > now.instant {
            c.keep_alive_deadline = Some(deadline);
            self.timers.schedule(deadline, TimerKind::KeepAlive(k));
            return;
        }
        // [MQTT-3.1.2-24] nothing received for 1.5 x Keep Alive.
        self.violation(now, k, ReasonCode::KeepAliveTimeout);
    }

    // ---------------------------------------------------------------- plumbing

    fn push_out(&mut self, k: Key, mut packet: Packet) {
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
    fn push_shared(&mut self, k: Key, tag: SharedTag, size: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            self.msgs.release(tag.msg);
            return;
        };
        c.out.push_shared(tag, size, &mut self.out_pool);
        signal_transmit(c, &mut self.events, k);
    }

    /// Queues the in-flight PUBLISH `id` (already in the session's window) for the
    /// wire.
    fn push_flight(&mut self, k: Key, id: PacketId, size: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.out.push_flight(id, size, &mut self.out_pool);
        signal_transmit(c, &mut self.events, k);
    }

    /// Writes the session's record, or removes it once the session is no longer
    /// persistent (expiry 0 from a resuming CONNECT or a DISCONNECT): such a
    /// session ends with its connection and must not come back after a restart.
    fn store_session(&mut self, now: Now, sk: Key) {
        if !self.config.store_effects {
            return;
        }
        if let Some(s) = self.sessions.get_mut(sk) {
            let op = if s.persistent() {
                s.stored = true;
                let expires = s.expires_at.map(|at| {
                    now.unix_ms + at.saturating_duration_since(now.instant).as_millis() as u64
                });
                StoreOp::SessionUpsert(session_record(s, expires))
            } else if s.stored {
                s.stored = false;
                StoreOp::SessionRemove {
                    client_id: s.client_id.clone(),
                }
            } else {
                return;
            };
            self.events.push_back(Event::store(op));
        }
    }

    fn store_enqueue(&mut self, sk: Key, q: &Queued, now: Now) {
        if !self.config.store_effects {
            return;
        }
        if let Some(s) = self.sessions.get(sk) {
            if s.persistent() {
                if let Some(op) = enqueue_op(&self.msgs, s.client_id.clone(), q, now) {
                    self.events.push_back(Event::store(op));
                }
            }
        }
    }

    fn store_remove(&mut self, persistent: bool, client_id: MqttString, seq: u64) {
        if self.config.store_effects && persistent {
            self.events
                .push_back(Event::store(StoreOp::MessageRemove { client_id, seq }));
        }
    }
}

/// Output is waiting for `c`: one Transmit event until `poll_transmit` drains it.
fn signal_transmit(c: &mut Conn, events: &mut VecDeque<Event>, k: Key) {
    if !c.transmit_signalled {
        c.transmit_signalled = true;
        events.push_back(Event::Transmit(conn_id(k)));
    }
}

fn session_record(s: &Session, expires_at_unix_ms: Option<u64>) -> SessionRecord {
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
    }
}

fn enqueue_op(msgs: &SharedMsgs, client_id: MqttString, q: &Queued, now: Now) -> Option<StoreOp> {
    let mut publish = delivered_form(msgs, q, None, false)?;
    detach_publish(&mut publish);
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

/// Whether the retained message of `topic` is the one that expires at `at` (an
/// expiry entry of a message replaced or cleared since is stale).
fn retained_live(retained: &Map<Bytes, Retained>, topic: &Bytes, at: Instant) -> bool {
    retained
        .get(topic)
        .is_some_and(|r| r.expires_at == Some(at))
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

fn key(c: ConnId) -> Key {
    Key {
        index: c.index,
        generation: c.generation,
    }
}

fn conn_id(k: Key) -> ConnId {
    ConnId {
        index: k.index,
        generation: k.generation,
    }
}
