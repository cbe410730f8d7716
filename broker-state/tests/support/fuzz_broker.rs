// The broker fuzz check, shared word for word (through `include!`) by the cargo-fuzz
// target `fuzz/fuzz_targets/broker.rs` and the stable replay test
// `broker-state/tests/fuzz_corpus.rs`, so a finding is re-checked by exactly the code
// that found it. Include it inside a module; it needs the `arbitrary` crate (with
// `derive`), `broker-state` and `mqtt-proto`.
//
// The input is a small broker configuration and a sequence of operations: accept a
// connection; send it a packet built from structured fields (encoded and decoded
// through mqtt-proto as an adapter would, so only packets the decoder can produce
// reach the broker) or raw bytes appended to its read buffer; feed a decode error;
// close it; stop or resume reading its output; advance the clock (deadline by
// deadline, or in one jump) or call `handle_timeout` spuriously. Every input goes
// through `Broker::handle`. After each one every output is drained as the run-loop
// contract says, and checked:
//
// * nothing panics;
// * every byte `poll_transmit` yields decodes with mqtt-proto at the connection's
//   version into whole packets that re-encode canonically, each within the
//   Maximum Packet Size the client announced;
// * no event names a connection after its `Close` was handled, and a closed
//   connection yields no more bytes;
// * after `handle_timeout(now)`, `poll_timeout` is later than `now` (an adapter
//   never spins);
// * connections and sessions stay within the configured limits, and
//   `Broker::check_invariants` holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use broker_state::{
    AuthDecision, AuthKind, AuthQuestion, AuthRequest, AuthStep, Authenticator, Authorizer, Broker,
    ClientInfo, ClusterOp, Config, ConnId, Event, Input, Now, OverflowPolicy, PeerInfo, QueueLimits,
};
use mqtt_proto::bytes::{Bytes, BytesMut};
use mqtt_proto::{
    Auth, ConnAck, Connect, ConnectProperties, DecodeError, Decoder, Disconnect, MqttString,
    Packet, PacketId, ProtocolVersion, PubAck, Publish, PublishProperties, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, TopicFilter, TopicName, UnsubAck,
    Unsubscribe, UserProperties, Will, WillProperties,
};

/// Operations per input, so one input cannot run for long.
const MAX_OPS: usize = 256;

const CLIENT_IDS: [&str; 5] = ["a", "b", "c", "", "a-very-long-client-identifier-over-23"];
const USERS: [&str; 3] = ["u1", "u2", "u3"];
const TOPICS: [&str; 8] = [
    "a",
    "a/b",
    "b",
    "$SYS/x",
    "x/denied",
    "a/b/c/d/e/f/g/h/i/j",
    "",
    "a//b",
];
const FILTERS: [&str; 12] = [
    "#",
    "+",
    "a/#",
    "+/b",
    "a",
    "a/b",
    "$share/g/a/#",
    "$share/g/+",
    "$SYS/#",
    "x/#",
    "+/+/+/+/+/+/+/+/+/+",
    "$share/h/#",
];

#[derive(Arbitrary, Debug)]
pub struct Setup {
    max_connections: u8,
    max_sessions: u8,
    max_subscriptions: u8,
    max_retained: u8,
    max_retained_bytes: u16,
    small_max_keep_alive: Option<u8>,
    receive_maximum: u8,
    max_inflight_v3: u8,
    topic_alias_maximum: u8,
    default_session_expiry: u8,
    max_session_expiry: u8,
    online_messages: u8,
    online_bytes: u16,
    offline_messages: u8,
    offline_bytes: u16,
    outbound_buffer_bytes: u16,
    policy: u8,
    max_packet_size: u16,
    max_topic_length: u8,
    max_topic_levels: u8,
    max_client_id_length: u8,
    max_user_properties: u8,
    max_per_auth: Option<u8>,
    retain_available: bool,
    wildcard_subscriptions: bool,
    shared_subscriptions: bool,
    subscription_identifiers: bool,
    store_effects: bool,
    seed: u8,
}

impl Setup {
    pub fn config(&self) -> Config {
        Config {
            max_packet_size: 64 + u32::from(self.max_packet_size % 4096),
            max_keep_alive: self.small_max_keep_alive.map_or(u16::MAX, u16::from),
            connect_timeout: Duration::from_secs(10),
            max_connections: 1 + usize::from(self.max_connections % 6),
            max_sessions: 1 + usize::from(self.max_sessions % 6),
            max_subscriptions_per_session: usize::from(self.max_subscriptions % 5),
            // From the same byte, so that recorded corpora keep their meaning.
            max_subscriptions: usize::from(self.max_subscriptions / 5 % 12),
            max_retained_messages: usize::from(self.max_retained % 5),
            max_retained_bytes: usize::from(self.max_retained_bytes % 2048),
            max_topic_length: 1 + usize::from(self.max_topic_length % 64),
            max_topic_levels: 1 + usize::from(self.max_topic_levels % 12),
            max_client_id_length: usize::from(self.max_client_id_length % 40),
            max_user_properties: usize::from(self.max_user_properties % 4),
            receive_maximum: 1 + u16::from(self.receive_maximum % 8),
            max_inflight_v3: 1 + u16::from(self.max_inflight_v3 % 8),
            topic_alias_maximum: u16::from(self.topic_alias_maximum % 4),
            default_session_expiry: u32::from(self.default_session_expiry % 100),
            max_session_expiry: u32::from(self.max_session_expiry),
            max_sessions_per_authentication_name: self.max_per_auth.map(|n| usize::from(n % 4)),
            offline_queue: QueueLimits {
                messages: usize::from(self.offline_messages % 6),
                bytes: usize::from(self.offline_bytes % 4096),
            },
            online_queue: QueueLimits {
                messages: usize::from(self.online_messages % 6),
                bytes: usize::from(self.online_bytes % 4096),
            },
            outbound_buffer_bytes: usize::from(self.outbound_buffer_bytes % 4096),
            // From bytes the setup already has (saved corpora keep their meaning):
            // a third of the seeds have no burst allowance.
            outbound_burst_bytes: usize::from(self.seed % 3) * 4096,
            offline_overflow: match self.policy % 3 {
                0 => OverflowPolicy::EndSession,
                1 => OverflowPolicy::DropOldest,
                _ => OverflowPolicy::DropNewest,
            },
            response_information_prefix: (self.seed.is_multiple_of(2)).then(|| "resp/".to_owned()),
            retain_available: self.retain_available,
            wildcard_subscriptions: self.wildcard_subscriptions,
            shared_subscriptions: self.shared_subscriptions,
            subscription_identifiers: self.subscription_identifiers,
            store_effects: self.store_effects,
            // From a byte the setup already has (saved corpora keep their meaning).
            lifecycle_events: self.seed & 4 != 0,
            // Likewise: an eighth of the seeds run as a node of a cluster whose
            // other node is this same broker (see `Harness::cluster`).
            cluster: self.seed % 8 == 5,
        }
    }
}

/// A topic or filter: one of a small alphabet (so routes meet), or any string.
#[derive(Arbitrary, Debug)]
pub enum Name {
    Known(u8),
    Any(String),
}

impl Name {
    fn topic(&self) -> Option<TopicName> {
        match self {
            Name::Known(i) => TopicName::from_static(TOPICS[usize::from(*i) % TOPICS.len()]).ok(),
            Name::Any(s) => TopicName::copy_from_str(s).ok(),
        }
    }

    fn filter(&self) -> Option<TopicFilter> {
        match self {
            Name::Known(i) => {
                TopicFilter::from_static(FILTERS[usize::from(*i) % FILTERS.len()]).ok()
            }
            Name::Any(s) => TopicFilter::copy_from_str(s).ok(),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct WillSpec {
    topic: Name,
    qos: u8,
    retain: bool,
    delay: Option<u8>,
    expiry: Option<u8>,
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
pub enum PacketSpec {
    Connect {
        version: u8,
        clean: bool,
        client: u8,
        keep_alive: u8,
        expiry: Option<u16>,
        receive_maximum: Option<u8>,
        maximum_packet_size: Option<u16>,
        topic_alias_maximum: Option<u8>,
        will: Option<WillSpec>,
        user: Option<u8>,
        bad_password: bool,
        auth_method: bool,
        request_response: bool,
        request_problem: Option<bool>,
    },
    Publish {
        topic: Name,
        qos: u8,
        retain: bool,
        dup: bool,
        id: u16,
        payload: Vec<u8>,
        alias: Option<u8>,
        expiry: Option<u8>,
        subscription_identifier: bool,
        user_properties: u8,
    },
    Subscribe {
        id: u16,
        filters: Vec<(Name, u8)>,
        identifier: Option<u32>,
    },
    Unsubscribe {
        id: u16,
        filters: Vec<Name>,
    },
    PubAck {
        id: u16,
        code: u8,
    },
    PubRec {
        id: u16,
        code: u8,
    },
    PubRel {
        id: u16,
        code: u8,
    },
    PubComp {
        id: u16,
        code: u8,
    },
    PingReq,
    Disconnect {
        code: u8,
        expiry: Option<u16>,
    },
    Auth {
        code: u8,
    },
    /// A packet only a server sends.
    ServerOnly(u8),
}

fn packet_id(id: u16) -> PacketId {
    PacketId::new(id).unwrap_or(PacketId::MIN)
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q % 3).unwrap_or(QoS::AtMostOnce)
}

fn reason(code: u8) -> ReasonCode {
    ReasonCode::from_u8(code).unwrap_or(ReasonCode::Success)
}

impl PacketSpec {
    /// The packet, or `None` when the fields make no packet (an invalid string).
    fn build(&self) -> Option<Packet> {
        Some(match self {
            PacketSpec::Connect {
                version,
                clean,
                client,
                keep_alive,
                expiry,
                receive_maximum,
                maximum_packet_size,
                topic_alias_maximum,
                will,
                user,
                bad_password,
                auth_method,
                request_response,
                request_problem,
            } => {
                let protocol = match version % 3 {
                    0 => ProtocolVersion::V3_1,
                    1 => ProtocolVersion::V3_1_1,
                    _ => ProtocolVersion::V5,
                };
                let v5 = protocol.is_v5();
                let will = match will {
                    Some(w) => Some(Will {
                        topic: w.topic.topic()?,
                        payload: Bytes::copy_from_slice(&w.payload),
                        qos: qos(w.qos),
                        retain: w.retain,
                        properties: WillProperties {
                            will_delay_interval: w.delay.filter(|_| v5).map(u32::from),
                            message_expiry_interval: w.expiry.filter(|_| v5).map(u32::from),
                            ..WillProperties::default()
                        },
                    }),
                    None => None,
                };
                let username = user.map(|u| {
                    MqttString::from_static(USERS[usize::from(u) % USERS.len()])
                        .unwrap_or(MqttString::empty())
                });
                let mut properties = ConnectProperties::default();
                if v5 {
                    properties.session_expiry_interval = expiry.map(u32::from);
                    properties.receive_maximum =
                        receive_maximum.and_then(|r| core::num::NonZeroU16::new(r.into()));
                    properties.maximum_packet_size =
                        maximum_packet_size.and_then(|m| core::num::NonZeroU32::new(m.into()));
                    properties.topic_alias_maximum = topic_alias_maximum.map(u16::from);
                    properties.request_response_information = Some(*request_response);
                    properties.request_problem_information = *request_problem;
                    if *auth_method {
                        properties.authentication_method = MqttString::from_static("SCRAM").ok();
                    }
                }
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start: *clean,
                    keep_alive: u16::from(*keep_alive),
                    client_id: MqttString::from_static(
                        CLIENT_IDS[usize::from(*client) % CLIENT_IDS.len()],
                    )
                    .ok()?,
                    will,
                    password: username
                        .is_some()
                        .then(|| Bytes::from_static(if *bad_password { b"bad" } else { b"ok" })),
                    username,
                    properties,
                }))
            }
            PacketSpec::Publish {
                topic,
                qos: q,
                retain,
                dup,
                id,
                payload,
                alias,
                expiry,
                subscription_identifier,
                user_properties,
            } => {
                let q = qos(*q);
                let pairs = (0..*user_properties % 6).map(|_| ("k", "v"));
                Packet::Publish(Publish {
                    dup: *dup && q != QoS::AtMostOnce,
                    qos: q,
                    retain: *retain,
                    topic: topic.topic()?,
                    packet_id: (q != QoS::AtMostOnce).then(|| packet_id(*id)),
                    properties: PublishProperties {
                        message_expiry_interval: expiry.map(u32::from),
                        topic_alias: alias.and_then(|a| core::num::NonZeroU16::new(a.into())),
                        subscription_identifiers: if *subscription_identifier {
                            vec![core::num::NonZeroU32::MIN]
                        } else {
                            Vec::new()
                        },
                        user_properties: UserProperties::from_pairs(pairs).ok()?,
                        ..PublishProperties::default()
                    },
                    payload: Bytes::copy_from_slice(payload),
                })
            }
            PacketSpec::Subscribe {
                id,
                filters,
                identifier,
            } => {
                let mut list = Vec::new();
                for (name, options) in filters.iter().take(8) {
                    let filter = name.filter()?;
                    let shared = filter.shared().is_some();
                    list.push((
                        filter,
                        SubscriptionOptions {
                            qos: qos(*options),
                            // No Local on a shared subscription does not decode.
                            no_local: options & 0x04 != 0 && !shared,
                            retain_as_published: options & 0x08 != 0,
                            retain_handling: match (options >> 4) % 3 {
                                0 => RetainHandling::SendAtSubscribe,
                                1 => RetainHandling::SendIfNew,
                                _ => RetainHandling::DoNotSend,
                            },
                        },
                    ));
                }
                Packet::Subscribe(Subscribe {
                    packet_id: packet_id(*id),
                    filters: list,
                    properties: mqtt_proto::SubscribeProperties {
                        subscription_identifier: identifier
                            .and_then(|i| core::num::NonZeroU32::new(i % 268_435_456)),
                        ..Default::default()
                    },
                })
            }
            PacketSpec::Unsubscribe { id, filters } => {
                let mut list = Vec::new();
                for name in filters.iter().take(8) {
                    list.push(name.filter()?);
                }
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: packet_id(*id),
                    filters: list,
                    properties: Default::default(),
                })
            }
            PacketSpec::PubAck { id, code } => Packet::PubAck(ack(*id, *code)),
            PacketSpec::PubRec { id, code } => Packet::PubRec(ack(*id, *code)),
            PacketSpec::PubRel { id, code } => Packet::PubRel(ack(*id, *code)),
            PacketSpec::PubComp { id, code } => Packet::PubComp(ack(*id, *code)),
            PacketSpec::PingReq => Packet::PingReq,
            PacketSpec::Disconnect { code, expiry } => {
                let mut d = Disconnect::new(reason(*code));
                d.properties.session_expiry_interval = expiry.map(u32::from);
                Packet::Disconnect(d)
            }
            PacketSpec::Auth { code } => Packet::Auth(Auth {
                reason_code: reason(*code),
                properties: Default::default(),
            }),
            PacketSpec::ServerOnly(k) => match k % 4 {
                0 => Packet::ConnAck(Box::new(ConnAck {
                    session_present: false,
                    reason_code: ReasonCode::Success,
                    properties: Default::default(),
                })),
                1 => Packet::SubAck(SubAck {
                    packet_id: PacketId::MIN,
                    reason_codes: vec![ReasonCode::Success],
                    properties: Default::default(),
                }),
                2 => Packet::UnsubAck(UnsubAck {
                    packet_id: PacketId::MIN,
                    reason_codes: Vec::new(),
                    properties: Default::default(),
                }),
                _ => Packet::PingResp,
            },
        })
    }
}

fn ack(id: u16, code: u8) -> PubAck {
    let mut a = PubAck::new(packet_id(id));
    a.reason_code = reason(code);
    a
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    Accept,
    Packet {
        conn: u8,
        packet: PacketSpec,
    },
    Bytes {
        conn: u8,
        data: Vec<u8>,
    },
    DecodeError {
        conn: u8,
        kind: u8,
    },
    Close {
        conn: u8,
    },
    /// The client stops reading: its output stays in the broker.
    Pause {
        conn: u8,
    },
    Resume {
        conn: u8,
    },
    Advance {
        millis: u32,
        deadline_by_deadline: bool,
    },
    SpuriousTimeout,
}

/// Refuses the password "bad"; otherwise names the session's owner after the
/// User Name, as the default hook does.
struct FuzzAuthenticator;

impl FuzzAuthenticator {
    /// The password "bad" is refused; anyone else is their User Name. The same
    /// decision as the hook and as the harness's answers to external questions.
    fn decide(username: Option<&str>, password: Option<&[u8]>) -> AuthDecision {
        if password == Some(b"bad") {
            return Err(ReasonCode::BadUserNameOrPassword);
        }
        Ok(username.map(str::to_owned))
    }
}

impl Authenticator for FuzzAuthenticator {
    fn authenticate(&mut self, request: &AuthRequest<'_>) -> AuthDecision {
        Self::decide(request.username, request.password)
    }
}

/// Denies everything under `x/`.
struct FuzzAuthorizer;

impl Authorizer for FuzzAuthorizer {
    fn may_subscribe(&mut self, _client: ClientInfo<'_>, filter: &TopicFilter) -> bool {
        !filter.as_str().starts_with("x/")
    }
    fn may_publish(&mut self, _client: ClientInfo<'_>, topic: &TopicName, _retain: bool) -> bool {
        !topic.as_str().starts_with("x/")
    }
}

/// What an adapter keeps per connection.
struct Conn {
    id: ConnId,
    /// The adapter's server-side decoder and read buffer.
    decoder: Decoder,
    read: BytesMut,
    /// The decoder failed: the adapter reads nothing more.
    input_dead: bool,
    /// Bytes the broker sent, decoded by a client-side decoder.
    write: BytesMut,
    client_decoder: Option<Decoder>,
    /// Maximum Packet Size the client announced in its first CONNECT.
    max_packet: u32,
    connect_seen: bool,
    reading: bool,
    /// `handle_closed` was called.
    closed: bool,
}

struct Harness {
    broker: Broker,
    config: Config,
    now: Now,
    conns: Vec<Conn>,
    by_id: BTreeMap<ConnId, usize>,
    /// With external authentication: questions asked and not answered yet. They
    /// are answered when time passes (an `Advance` or `SpuriousTimeout` op), so
    /// everything else the input does meanwhile meets pending connections, and
    /// answers for connections that closed are still given (and must be ignored).
    questions: Vec<AuthQuestion>,
    /// As a node of a cluster: the filters it announced interest in.
    interests: Vec<TopicFilter>,
}

impl Harness {
    /// A cluster effect, answered as a cluster whose other node (node 1) is
    /// this broker again: a forwarded message comes back addressed to the node
    /// (QoS 1 and 2) or through every announced non-shared filter it matches
    /// (QoS 0, as NATS would hand it over; only one copy may be taken), and
    /// through every matching shared group; a retained one goes to the
    /// retained store, and a forward whose payload starts with `t` claims the
    /// session of the client named by the rest for the "other" node.
    fn cluster(&mut self, op: ClusterOp) {
        match op {
            ClusterOp::Interest { filter, on: true } => {
                // The "other node" has the same interest.
                self.broker.handle_remote_interest(1, &filter, true);
                self.interests.push(filter);
            }
            ClusterOp::Interest { filter, on: false } => {
                self.broker.handle_remote_interest(1, &filter, false);
                let i = self.interests.iter().position(|f| *f == filter);
                let i = i.unwrap_or_else(|| panic!("interest in {filter:?} withdrawn twice"));
                self.interests.swap_remove(i);
            }
            ClusterOp::Forward {
                publish: p,
                nodes,
                shared,
            } => {
                let topic = p.topic.as_bytes();
                if p.retain {
                    self.broker.handle_cluster_retained(self.now, (*p).clone());
                }
                let matching = |f: &&TopicFilter| {
                    let m = f.shared().map_or(f.as_str(), |(_, m)| m);
                    broker_state::filter_matches(m.as_bytes(), topic)
                };
                let direct = self
                    .interests
                    .iter()
                    .filter(matching)
                    .any(|f| f.shared().is_none());
                assert_eq!(
                    nodes,
                    if direct { vec![1] } else { vec![] },
                    "the nodes named are those with a matching non-shared filter"
                );
                let through: Vec<TopicFilter> = self
                    .interests
                    .iter()
                    .filter(matching)
                    .filter(|f| f.shared().is_some() || p.qos == QoS::AtMostOnce)
                    .cloned()
                    .collect();
                assert!(
                    shared || through.iter().all(|f| f.shared().is_none()),
                    "a matching shared group is named"
                );
                if p.qos != QoS::AtMostOnce && direct {
                    self.broker.handle_cluster_delivery(self.now, (*p).clone());
                }
                let mut taken = 0;
                for f in through {
                    let n = self.broker.handle_cluster_publish(self.now, (*p).clone(), &f);
                    if f.shared().is_none() && n > 0 {
                        taken += 1;
                    }
                }
                assert!(taken <= 1, "a message taken through {taken} filters");
                if p.payload.first() == Some(&b't') {
                    self.broker.handle_session_claimed(self.now, &p.payload[1..]);
                }
            }
            // The cluster hands the session over at once (nothing elsewhere),
            // or cannot be asked for a client id whose length is 3 mod 7.
            ClusterOp::Acquire {
                ticket, client_id, ..
            } => {
                let answer = if client_id.len() % 7 == 3 {
                    broker_state::Acquired::Unavailable
                } else {
                    broker_state::Acquired::Session(Vec::new())
                };
                self.broker.handle_session_acquired(self.now, ticket, answer);
            }
            ClusterOp::SessionEnded { .. } => {}
        }
    }

    fn new(setup: &Setup) -> Harness {
        let config = setup.config();
        let mut broker = Broker::new(config.clone(), [setup.seed; 32]);
        broker.set_authenticator(Box::new(FuzzAuthenticator));
        broker.set_authorizer(Box::new(FuzzAuthorizer));
        // From a byte the setup already has, so that saved corpora keep their
        // meaning: half of the seeds ask the adapter (this harness) instead.
        broker.set_external_authentication(setup.seed / 2 % 2 == 1);
        Harness {
            broker,
            config,
            now: Now::new(Instant::now(), 1_700_000_000_000),
            conns: Vec::new(),
            by_id: BTreeMap::new(),
            questions: Vec::new(),
            interests: Vec::new(),
        }
    }

    fn conn(&self, i: u8) -> Option<usize> {
        (!self.conns.is_empty()).then(|| usize::from(i) % self.conns.len())
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Accept => {
                let peer = PeerInfo::memory("fuzz");
                let id = self
                    .broker
                    .handle(self.now, Input::Accept(peer))
                    .expect("Accept returns the new connection");
                assert!(
                    !self.by_id.contains_key(&id),
                    "connection id {id} handed out twice"
                );
                self.by_id.insert(id, self.conns.len());
                self.conns.push(Conn {
                    id,
                    decoder: Decoder::new(self.broker.max_packet_size()),
                    read: BytesMut::new(),
                    input_dead: false,
                    write: BytesMut::new(),
                    client_decoder: None,
                    max_packet: u32::MAX,
                    connect_seen: false,
                    reading: true,
                    closed: false,
                });
            }
            Op::Packet { conn, packet } => {
                let Some(i) = self.conn(*conn) else { return };
                let Some(packet) = packet.build() else { return };
                let version = match &packet {
                    Packet::Connect(c) => c.protocol,
                    _ => self.conns[i]
                        .decoder
                        .version()
                        .unwrap_or(ProtocolVersion::V5),
                };
                // Encoded at the connection's version and fed through its decoder,
                // like bytes off the wire; a packet the version cannot express is
                // not sent.
                let mut bytes = BytesMut::new();
                if packet.encode(version, &mut bytes).is_ok() {
                    self.receive_bytes(i, &bytes);
                }
            }
            Op::Bytes { conn, data } => {
                let Some(i) = self.conn(*conn) else { return };
                self.receive_bytes(i, data);
            }
            Op::DecodeError { conn, kind } => {
                let Some(i) = self.conn(*conn) else { return };
                let error = match kind % 6 {
                    0 => DecodeError::UnsupportedProtocolVersion(kind / 6),
                    1 => DecodeError::ClientIdRejected,
                    2 => DecodeError::PacketTooLarge {
                        size: 1 << 20,
                        max: self.broker.max_packet_size(),
                    },
                    3 => DecodeError::MalformedVariableByteInteger,
                    4 => DecodeError::FirstPacketNotConnect,
                    _ => DecodeError::InvalidQoS,
                };
                let id = self.conns[i].id;
                self.conns[i].input_dead = true;
                self.broker.handle(self.now, Input::DecodeError(id, error));
            }
            Op::Close { conn } => {
                let Some(i) = self.conn(*conn) else { return };
                let id = self.conns[i].id;
                self.broker.handle(self.now, Input::Closed(id));
                self.conns[i].closed = true;
            }
            Op::Pause { conn } => {
                if let Some(i) = self.conn(*conn) {
                    self.conns[i].reading = false;
                }
            }
            Op::Resume { conn } => {
                if let Some(i) = self.conn(*conn) {
                    self.conns[i].reading = true;
                    self.pull(i);
                }
            }
            Op::Advance {
                millis,
                deadline_by_deadline,
            } => {
                let end = self.now.instant + Duration::from_millis(u64::from(*millis) * 7);
                if *deadline_by_deadline {
                    while let Some(at) = self.broker.poll_timeout() {
                        if at > end {
                            break;
                        }
                        self.now = self
                            .now
                            .after(at.saturating_duration_since(self.now.instant));
                        self.timeout();
                    }
                }
                self.now = self
                    .now
                    .after(end.saturating_duration_since(self.now.instant));
                self.timeout();
            }
            Op::SpuriousTimeout => self.timeout(),
        }
        self.drain();
    }

    /// The adapter's answers, as `FuzzAuthenticator` would give them.
    fn answer_questions(&mut self) {
        for q in std::mem::take(&mut self.questions) {
            let step = match &q.kind {
                AuthKind::Password { username, password } => {
                    match FuzzAuthenticator::decide(
                        username.as_ref().map(|u| u.as_str()),
                        password.as_deref(),
                    ) {
                        Ok(authentication_name) => AuthStep::allow(authentication_name),
                        Err(code) => AuthStep::Failure(code),
                    }
                }
                _ => AuthStep::Failure(ReasonCode::BadAuthenticationMethod),
            };
            self.broker
                .handle(self.now, Input::AuthAnswer(q.ticket, step));
            self.drain();
        }
    }

    /// The store's answer when time passes: everything emitted so far is durable,
    /// or (one time in seven, decided by the count so that a saved input keeps its
    /// meaning) it failed.
    fn answer_store(&mut self) {
        let through = self.broker.store_effects_emitted();
        if through == 0 {
            return;
        }
        let input = if through % 7 == 3 {
            Input::StoreFailed(through)
        } else {
            Input::StoreCommitted(through)
        };
        self.broker.handle(self.now, input);
        self.drain();
    }

    fn timeout(&mut self) {
        self.answer_questions();
        self.answer_store();
        self.broker.handle(self.now, Input::Timeout);
        self.drain();
        if let Some(at) = self.broker.poll_timeout() {
            assert!(
                at > self.now.instant,
                "poll_timeout is due again right after handle_timeout"
            );
        }
    }

    /// Appends bytes to a connection's read buffer and hands every complete packet to
    /// the broker, as an adapter does; a decode error is reported and ends reading.
    fn receive_bytes(&mut self, i: usize, data: &[u8]) {
        let c = &mut self.conns[i];
        if c.input_dead || c.closed {
            return;
        }
        c.read.extend_from_slice(data);
        loop {
            let c = &mut self.conns[i];
            let id = c.id;
            match c.decoder.decode(&mut c.read) {
                Ok(Some(packet)) => {
                    if let Packet::Connect(connect) = &packet {
                        if !c.connect_seen {
                            c.connect_seen = true;
                            c.max_packet = connect
                                .properties
                                .maximum_packet_size
                                .map_or(u32::MAX, |m| m.get());
                        }
                    }
                    self.broker.handle(self.now, Input::Packet(id, packet));
                    self.drain();
                    // After a close the adapter reads no more.
                    if self.conns[i].closed {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    c.input_dead = true;
                    self.broker.handle(self.now, Input::DecodeError(id, e));
                    return;
                }
            }
        }
    }

    /// Drains every output, as the run-loop contract says.
    fn drain(&mut self) {
        while let Some(event) = self.broker.poll_event() {
            let id = match &event {
                Event::Transmit(id) | Event::Close { conn: id, .. } => Some(*id),
                Event::Connected { conn, .. } => Some(*conn),
                Event::Authenticate(q) => Some(q.ticket.conn()),
                Event::Store(_)
                | Event::SessionEnded { .. }
                | Event::Lifecycle(_)
                | Event::Cluster(_) => None,
            };
            let i = id.map(|id| {
                let i = *self
                    .by_id
                    .get(&id)
                    .unwrap_or_else(|| panic!("event {event:?} for a connection never accepted"));
                assert!(
                    !self.conns[i].closed,
                    "event {event:?} for a connection already closed"
                );
                i
            });
            match (event, i) {
                (Event::Authenticate(q), _) => self.questions.push(*q),
                (Event::Cluster(op), _) => self.cluster(op),
                (Event::Transmit(_), Some(i)) if self.conns[i].reading => self.pull(i),
                (Event::Close { conn, .. }, Some(i)) => {
                    self.pull(i);
                    self.broker.handle(self.now, Input::Closed(conn));
                    self.conns[i].closed = true;
                    let mut rest = BytesMut::new();
                    assert_eq!(
                        self.broker.poll_transmit(conn, &mut rest, usize::MAX),
                        0,
                        "bytes for {conn} after it closed"
                    );
                }
                _ => {}
            }
        }
        self.check();
    }

    /// Takes a connection's output and checks it as a client would read it.
    fn pull(&mut self, i: usize) {
        let id = self.conns[i].id;
        loop {
            let c = &mut self.conns[i];
            let before = c.write.len();
            let n = self.broker.poll_transmit(id, &mut c.write, 512);
            assert_eq!(c.write.len() - before, n, "poll_transmit miscounted");
            if n == 0 {
                break;
            }
        }
        let c = &mut self.conns[i];
        if c.write.is_empty() {
            return;
        }
        let version = self
            .broker
            .protocol(id)
            .expect("a connection that was sent bytes knows its version");
        let decoder = c
            .client_decoder
            .get_or_insert_with(|| Decoder::with_version(version, u32::MAX));
        loop {
            let size = c.write.len();
            match decoder.decode(&mut c.write) {
                Ok(Some(packet)) => {
                    let len = size - c.write.len();
                    // [MQTT-3.1.2-24]; checked for PUBLISH, the packets the broker
                    // must drop rather than send too large.
                    assert!(
                        !matches!(packet, Packet::Publish(_))
                            || len as u64 <= u64::from(c.max_packet),
                        "{len}-byte {} to a client whose Maximum Packet Size is {}",
                        packet.name(),
                        c.max_packet
                    );
                    mqtt_proto::fuzzing::check_packet(version, &packet);
                }
                Ok(None) => break,
                Err(e) => panic!("the broker sent bytes that do not decode at {version}: {e}"),
            }
        }
        assert!(
            c.write.is_empty(),
            "poll_transmit left a partial packet: {:02x?}",
            &c.write[..]
        );
    }

    fn check(&self) {
        if let Err(e) = self.broker.check_invariants() {
            panic!("broker invariant: {e}");
        }
        assert!(
            self.broker.connection_count() <= self.config.max_connections,
            "{} connections, limit {}",
            self.broker.connection_count(),
            self.config.max_connections
        );
        assert!(
            self.broker.session_count() <= self.config.max_sessions,
            "{} sessions, limit {}",
            self.broker.session_count(),
            self.config.max_sessions
        );
    }
}

/// The setup and operations a fuzz input stands for.
pub fn parse(data: &[u8]) -> Option<(Setup, Vec<Op>)> {
    let mut u = Unstructured::new(data);
    let setup = Setup::arbitrary(&mut u).ok()?;
    let mut ops = Vec::new();
    // Exhausted input would decode as endless `Accept`s: stop where the data does.
    while ops.len() < MAX_OPS && !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        ops.push(op);
    }
    Some((setup, ops))
}

/// Replays one fuzz input. Panics on any violation.
pub fn check_broker(data: &[u8]) {
    let Some((setup, ops)) = parse(data) else {
        return;
    };
    let mut h = Harness::new(&setup);
    for op in &ops {
        h.step(op);
    }
}
