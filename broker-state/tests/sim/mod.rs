//! Deterministic simulation harness: a virtual clock and N in-memory clients.
//!
//! Everything the broker sends goes through `poll_transmit` into bytes and is decoded
//! again with `mqtt-proto`, so tests see exactly what a client on the wire would see.
//! `advance` jumps the virtual clock from deadline to deadline (like quinn-proto's
//! test pair), so keep-alive and expiry tests run in microseconds.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use broker_state::{
    AuthKind, AuthQuestion, AuthStep, Authorizer, Broker, ClientInfo, Config, ConnId,
    EnhancedAuthenticator, Event, LifecycleEvent, MemoryStore, Now, PeerInfo, SessionEnd, StoreOp,
};
use mqtt_proto::bytes::{Bytes, BytesMut};
use mqtt_proto::*;

pub struct Client {
    pub conn: ConnId,
    pub version: ProtocolVersion,
    decoder: Decoder,
    wire: BytesMut,
    pub inbox: VecDeque<Packet>,
    /// Reason the broker gave when it closed this connection.
    pub closed: Option<ReasonCode>,
    /// Every byte the broker wrote to this connection, in order.
    pub raw: Vec<u8>,
    next_id: u16,
}

pub struct Sim {
    pub broker: Broker,
    pub now: Now,
    pub start: Instant,
    pub clients: Vec<Client>,
    /// Store operations emitted, applied to `store`.
    pub store: MemoryStore,
    pub store_ops: Vec<StoreOp>,
    /// Bytes per `poll_transmit` call (a slow socket can be simulated with a small budget).
    pub budget: usize,
    /// When false, Transmit events are not drained (a consumer that stopped reading).
    pub reading: Vec<bool>,
    /// Sessions the broker ended on its own: client id, reason, messages queued.
    pub ended: Vec<(String, SessionEnd, usize)>,
    /// Authentication questions asked (external authentication), oldest first.
    pub questions: Vec<AuthQuestion>,
    /// Lifecycle events emitted (`Config::lifecycle_events`), oldest first.
    pub lifecycle: Vec<LifecycleEvent>,
    /// Cluster effects (`Config::cluster`), in order.
    pub cluster: Vec<broker_state::ClusterOp>,
    /// Answer every authentication question as soon as it is asked, as the
    /// default hook would (the User Name is the authentication name; no enhanced
    /// method), through `handle_auth_answer`.
    pub auto_answer: bool,
    /// Tell the broker its store effects are durable as soon as they are applied
    /// to `store` (true unless a test holds them back to watch what waits).
    pub auto_commit: bool,
    /// On a node of a cluster: answer every `ClusterOp::Acquire` at once with
    /// "no session elsewhere" (true unless a test answers them itself; then
    /// they stay in `cluster`).
    pub auto_acquire: bool,
}

pub type C = usize;

impl Sim {
    pub fn new(config: Config) -> Sim {
        Sim::with_seed(config, [42; 32])
    }

    pub fn with_seed(config: Config, seed: [u8; 32]) -> Sim {
        let start = Instant::now();
        Sim {
            broker: Broker::new(config, seed),
            now: Now::new(start, 1_800_000_000_000),
            start,
            clients: Vec::new(),
            store: MemoryStore::new(),
            store_ops: Vec::new(),
            budget: 64 * 1024,
            reading: Vec::new(),
            ended: Vec::new(),
            questions: Vec::new(),
            lifecycle: Vec::new(),
            cluster: Vec::new(),
            auto_answer: false,
            auto_commit: true,
            auto_acquire: true,
        }
    }

    pub fn default() -> Sim {
        Sim::new(Config::default())
    }

    /// A fresh broker, fed the store's contents, at the same time.
    pub fn restart_from_store(&mut self, config: Config) {
        let mut broker = Broker::new(config, [43; 32]);
        for op in self.store.replay() {
            broker.handle_restore(self.now, op);
        }
        self.broker = broker;
        self.clients.clear();
        self.reading.clear();
    }

    /// Accepts a transport connection without sending anything.
    pub fn accept(&mut self, version: ProtocolVersion) -> C {
        let conn = self.broker.handle_accept(
            self.now,
            PeerInfo::memory(&format!("c{}", self.clients.len())),
        );
        self.clients.push(Client {
            conn,
            version,
            decoder: Decoder::with_version(version, u32::MAX),
            wire: BytesMut::new(),
            inbox: VecDeque::new(),
            closed: None,
            raw: Vec::new(),
            next_id: 0,
        });
        self.reading.push(true);
        self.drain();
        self.clients.len() - 1
    }

    /// Connects and returns the client and its CONNACK.
    pub fn connect_with(&mut self, connect: Connect) -> (C, ConnAck) {
        let c = self.accept(connect.protocol);
        self.send(c, Packet::Connect(Box::new(connect)));
        match self.recv(c) {
            Some(Packet::ConnAck(ack)) => (c, *ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn connect(&mut self, version: ProtocolVersion, client_id: &str, clean: bool) -> C {
        let (c, ack) = self.connect_with(connect_packet(version, client_id, clean));
        assert_eq!(
            ack.reason_code,
            ReasonCode::Success,
            "CONNACK for {client_id}"
        );
        c
    }

    /// Encodes `packet` as the client would and feeds the decoded result to the broker.
    pub fn send(&mut self, c: C, packet: Packet) {
        let version = self.clients[c].version;
        let mut buf = BytesMut::new();
        packet
            .encode(version, &mut buf)
            .expect("test packets encode");
        self.send_bytes(c, &buf);
    }

    /// Feeds raw bytes through a server-side decoder, as an adapter would.
    pub fn send_bytes(&mut self, c: C, bytes: &[u8]) {
        let conn = self.clients[c].conn;
        let mut decoder = match self.broker.protocol(conn) {
            Some(v) => Decoder::with_version(v, self.broker.max_packet_size()),
            None => Decoder::new(self.broker.max_packet_size()),
        };
        let mut buf = BytesMut::from(bytes);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(p)) => self.broker.handle_packet(self.now, conn, p),
                Ok(None) => break,
                Err(e) => {
                    self.broker.handle_decode_error(self.now, conn, &e);
                    break;
                }
            }
        }
        self.drain();
    }

    /// Drains every output of the broker, as the run-loop contract says.
    pub fn drain(&mut self) {
        self.drain_events();
        self.commit_if_auto();
        while self.auto_answer && !self.questions.is_empty() {
            for q in std::mem::take(&mut self.questions) {
                let step = match q.kind {
                    AuthKind::Password { username, .. } => {
                        AuthStep::allow(username.map(|u| u.as_str().to_owned()))
                    }
                    _ => AuthStep::Failure(ReasonCode::BadAuthenticationMethod),
                };
                self.broker.handle_auth_answer(self.now, q.ticket, step);
            }
            self.drain_events();
            self.commit_if_auto();
        }
    }

    fn commit_if_auto(&mut self) {
        if self.auto_commit {
            self.commit_store();
        }
    }

    /// Tells the broker every store effect so far is durable, and drains.
    pub fn commit_store(&mut self) {
        let through = self.broker.store_effects_emitted();
        self.broker.handle_store_committed(self.now, through);
        self.drain_events();
    }

    /// Tells the broker every store effect so far failed, and drains.
    pub fn fail_store(&mut self) {
        let through = self.broker.store_effects_emitted();
        self.broker.handle_store_failed(self.now, through);
        self.drain_events();
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.broker.poll_event() {
            match ev {
                Event::Transmit(conn) => {
                    if let Some(i) = self.index(conn) {
                        if self.reading[i] {
                            self.pull(i);
                        }
                    }
                }
                Event::Close { conn, reason } => {
                    if let Some(i) = self.index(conn) {
                        self.pull(i);
                        self.clients[i].closed = Some(reason);
                    }
                    self.broker.handle_closed(self.now, conn);
                }
                Event::Store(op) => {
                    self.store.apply(&op).expect("memory store");
                    self.store_ops.push(*op);
                }
                Event::Connected { .. } => {}
                Event::Authenticate(q) => self.questions.push(*q),
                Event::Lifecycle(e) => self.lifecycle.push(*e),
                Event::Cluster(broker_state::ClusterOp::Acquire { ticket, .. })
                    if self.auto_acquire =>
                {
                    self.broker.handle_session_acquired(
                        self.now,
                        ticket,
                        broker_state::Acquired::Session(Vec::new()),
                    );
                }
                Event::Cluster(op) => self.cluster.push(op),
                Event::SessionEnded {
                    client_id,
                    reason,
                    queued_messages,
                    ..
                } => {
                    self.ended
                        .push((client_id.as_str().to_owned(), reason, queued_messages));
                }
            }
        }
    }

    fn index(&self, conn: ConnId) -> Option<usize> {
        self.clients.iter().position(|c| c.conn == conn)
    }

    fn pull(&mut self, i: usize) {
        let conn = self.clients[i].conn;
        let budget = self.budget;
        let client = &mut self.clients[i];
        let before = client.wire.len();
        while self.broker.poll_transmit(conn, &mut client.wire, budget) > 0 {}
        client.raw.extend_from_slice(&client.wire[before..]);
        while let Some(p) = client
            .decoder
            .decode(&mut client.wire)
            .expect("broker output decodes")
        {
            client.inbox.push_back(p);
        }
    }

    /// The oldest authentication question not yet taken.
    pub fn question(&mut self) -> AuthQuestion {
        assert!(
            !self.questions.is_empty(),
            "no authentication question was asked"
        );
        self.questions.remove(0)
    }

    /// Answers an authentication question, then drains.
    pub fn answer(&mut self, q: &AuthQuestion, step: AuthStep) {
        self.broker.handle_auth_answer(self.now, q.ticket, step);
        self.drain();
    }

    /// Lets a client that stopped reading read again.
    pub fn resume_reading(&mut self, c: C) {
        self.reading[c] = true;
        self.pull(c);
    }

    pub fn recv(&mut self, c: C) -> Option<Packet> {
        self.clients[c].inbox.pop_front()
    }

    pub fn recv_all(&mut self, c: C) -> Vec<Packet> {
        self.clients[c].inbox.drain(..).collect()
    }

    /// Received PUBLISH packets only (acks are not answered automatically).
    pub fn publishes(&mut self, c: C) -> Vec<Publish> {
        self.recv_all(c)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    pub fn closed(&self, c: C) -> Option<ReasonCode> {
        self.clients[c].closed
    }

    /// The transport of `c` drops without DISCONNECT.
    pub fn kill(&mut self, c: C) {
        let conn = self.clients[c].conn;
        self.broker.handle_closed(self.now, conn);
        self.clients[c].closed = Some(ReasonCode::UnspecifiedError);
        self.drain();
    }

    /// Moves the clock forward, firing each timer at its own deadline.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now.instant + d;
        while let Some(at) = self.broker.poll_timeout() {
            if at > end {
                break;
            }
            let step = at.saturating_duration_since(self.now.instant);
            self.now = self.now.after(step);
            self.broker.handle_timeout(self.now);
            self.drain();
        }
        let rest = end.saturating_duration_since(self.now.instant);
        self.now = self.now.after(rest);
        self.broker.handle_timeout(self.now);
        self.drain();
    }

    pub fn next_id(&mut self, c: C) -> PacketId {
        let client = &mut self.clients[c];
        client.next_id = client.next_id.wrapping_add(1).max(1);
        PacketId::new(client.next_id).expect("non-zero")
    }

    pub fn subscribe(&mut self, c: C, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_opts(c, filter, SubscriptionOptions::qos(qos), None)
    }

    pub fn subscribe_opts(
        &mut self,
        c: C,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> SubAck {
        let packet_id = self.next_id(c);
        let properties = SubscribeProperties {
            subscription_identifier: id.and_then(core::num::NonZeroU32::new),
            ..Default::default()
        };
        self.send(
            c,
            Packet::Subscribe(Subscribe {
                packet_id,
                filters: vec![(TopicFilter::copy_from_str(filter).expect("filter"), options)],
                properties,
            }),
        );
        match self.recv(c) {
            Some(Packet::SubAck(a)) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Sends a QoS 1 SUBSCRIBE to `filter` without waiting for its SUBACK.
    pub fn subscribe_opts_nowait(&mut self, c: C, filter: &str) -> PacketId {
        let packet_id = self.next_id(c);
        self.send(
            c,
            Packet::Subscribe(Subscribe {
                packet_id,
                filters: vec![(
                    TopicFilter::copy_from_str(filter).expect("filter"),
                    SubscriptionOptions::qos(QoS::AtLeastOnce),
                )],
                properties: Default::default(),
            }),
        );
        packet_id
    }

    pub fn unsubscribe(&mut self, c: C, filter: &str) -> UnsubAck {
        let packet_id = self.next_id(c);
        self.send(
            c,
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters: vec![TopicFilter::copy_from_str(filter).expect("filter")],
                properties: Default::default(),
            }),
        );
        match self.recv(c) {
            Some(Packet::UnsubAck(a)) => a,
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Publishes; for QoS 1/2 returns the packet id used (acks stay in the inbox).
    pub fn publish(
        &mut self,
        c: C,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
    ) -> Option<PacketId> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.next_id(c));
        self.send(
            c,
            Packet::Publish(publish_packet(topic, qos, retain, packet_id, payload)),
        );
        packet_id
    }

    /// Sends a PUBLISH as given (packet id, properties and flags untouched).
    pub fn send_publish(&mut self, c: C, p: Publish) {
        self.send(c, Packet::Publish(p));
    }

    /// A 5.0 CONNECT with a Session Expiry Interval (`None`: property absent).
    pub fn connect_v5(
        &mut self,
        client_id: &str,
        clean: bool,
        expiry: Option<u32>,
    ) -> (C, ConnAck) {
        let mut p = connect_packet(ProtocolVersion::V5, client_id, clean);
        p.properties.session_expiry_interval = expiry;
        self.connect_with(p)
    }

    /// Subscribes to several filters in one SUBSCRIBE.
    pub fn subscribe_many(&mut self, c: C, filters: &[(&str, QoS)]) -> SubAck {
        let packet_id = self.next_id(c);
        self.send(
            c,
            Packet::Subscribe(Subscribe {
                packet_id,
                filters: filters
                    .iter()
                    .map(|(f, q)| {
                        (
                            TopicFilter::copy_from_str(f).expect("filter"),
                            SubscriptionOptions::qos(*q),
                        )
                    })
                    .collect(),
                properties: Default::default(),
            }),
        );
        match self.recv(c) {
            Some(Packet::SubAck(a)) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next packet must be a PUBACK; returns it.
    pub fn expect_puback(&mut self, c: C) -> PubAck {
        match self.recv(c) {
            Some(Packet::PubAck(a)) => a,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// The next packet must be a PUBREC; returns it.
    pub fn expect_pubrec(&mut self, c: C) -> PubAck {
        match self.recv(c) {
            Some(Packet::PubRec(a)) => a,
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }

    /// The next packet must be a DISCONNECT; returns its reason code.
    pub fn expect_disconnect(&mut self, c: C) -> ReasonCode {
        match self.recv(c) {
            Some(Packet::Disconnect(d)) => d.reason_code,
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }

    /// Nothing waits in the client's inbox.
    pub fn assert_silent(&mut self, c: C) {
        let got = self.recv_all(c);
        assert!(got.is_empty(), "expected nothing, got {got:?}");
    }

    /// Publishes QoS 2 and completes the flow (PUBREC, PUBREL, PUBCOMP).
    pub fn publish_qos2_complete(&mut self, c: C, topic: &str, payload: &[u8]) {
        let id = self
            .publish(c, topic, QoS::ExactlyOnce, false, payload)
            .expect("QoS 2 has an id");
        let rec = self.expect_pubrec(c);
        assert_eq!(rec.packet_id, id);
        self.send(c, Packet::PubRel(PubAck::new(id)));
        match self.recv(c) {
            Some(Packet::PubComp(a)) => assert_eq!(a.packet_id, id),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
    }

    pub fn disconnect(&mut self, c: C) {
        self.send(c, Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    }

    /// Acknowledges every QoS 1/2 PUBLISH in `publishes` as a well-behaved client.
    pub fn ack_all(&mut self, c: C, publishes: &[Publish]) {
        for p in publishes {
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => self.send(c, Packet::PubAck(PubAck::new(id))),
                (QoS::ExactlyOnce, Some(id)) => {
                    self.send(c, Packet::PubRec(PubAck::new(id)));
                    let rel = self.recv(c);
                    assert!(
                        matches!(rel, Some(Packet::PubRel(_))),
                        "expected PUBREL, got {rel:?}"
                    );
                    self.send(c, Packet::PubComp(PubAck::new(id)));
                }
                _ => {}
            }
        }
    }
}

pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: MqttString::copy_from_str(client_id).expect("client id"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

pub fn publish_packet(
    topic: &str,
    qos: QoS,
    retain: bool,
    packet_id: Option<PacketId>,
    payload: &[u8],
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::copy_from_str(topic).expect("topic"),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A will for a CONNECT.
pub fn will(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Will {
    Will {
        topic: TopicName::copy_from_str(topic).expect("topic"),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain,
        properties: WillProperties::default(),
    }
}

pub fn payloads(ps: &[Publish]) -> Vec<&[u8]> {
    ps.iter().map(|p| &p.payload[..]).collect()
}

/// Authorizes everything except topics and filters starting with `secret`.
pub struct DenySecret;

impl Authorizer for DenySecret {
    fn may_subscribe(&mut self, _client: ClientInfo<'_>, filter: &TopicFilter) -> bool {
        !filter.as_str().starts_with("secret")
    }
    fn may_publish(&mut self, _client: ClientInfo<'_>, topic: &TopicName, _retain: bool) -> bool {
        !topic.as_str().starts_with("secret")
    }
}

/// A one-step enhanced authenticator for the method "TOKEN": the function maps the
/// Authentication Data, at CONNECT and on re-authentication, to the outcome; a
/// second step never succeeds.
pub struct OneStepToken(pub fn(Option<&[u8]>) -> AuthStep);

impl EnhancedAuthenticator for OneStepToken {
    fn supports(&self, method: &str) -> bool {
        method == "TOKEN"
    }
    fn start(
        &mut self,
        _method: &str,
        _client_id: &str,
        data: Option<&[u8]>,
        _reauthenticate: bool,
    ) -> AuthStep {
        (self.0)(data)
    }
    fn step(&mut self, _method: &str, _client_id: &str, _data: Option<&[u8]>) -> AuthStep {
        AuthStep::Failure(ReasonCode::NotAuthorized)
    }
}

/// An AUTH packet with `method` and `data`.
pub fn auth(code: ReasonCode, method: &str, data: &[u8]) -> Packet {
    Packet::Auth(Auth {
        reason_code: code,
        properties: AuthProperties {
            authentication_method: Some(MqttString::copy_from_str(method).unwrap()),
            authentication_data: Some(Bytes::copy_from_slice(data)),
            ..Default::default()
        },
    })
}
