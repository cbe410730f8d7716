//! Routing through the broker core, shared by the routing bench
//! (`benches/routing.rs`), its allocation test (`tests/alloc_route.rs`) and the
//! fixed-iteration program for instruction counts (`examples/route_n.rs`), so the
//! three measure the same work.
//!
//! One iteration is what a broker does per incoming PUBLISH: `handle_packet` with
//! the decoded packet, then every event drained and every connection's waiting
//! packets encoded by `poll_transmit` into one reused `BytesMut` (cleared after each
//! connection, as if written to its socket). With QoS 1 the publisher's PUBACK is
//! encoded too, and each subscriber's PUBACK is fed back so the in-flight window
//! stays open.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use mqtt_proto::{
    Connect, ConnectProperties, MqttString, Packet, PacketId, ProtocolVersion, PubAck, Publish,
    PublishProperties, QoS, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
};

use broker_state::{Broker, Config, ConnId, Event, Now, PeerInfo};

/// The topic every fan-out subscriber subscribes to.
pub const TOPIC: &str = "bench/room-1/temperature";
/// Payload bytes of the routed message.
pub const PAYLOAD: usize = 64;

/// A broker with one publisher and `n` subscribers of [`TOPIC`].
pub struct Fanout {
    pub broker: Broker,
    pub now: Now,
    pub publisher: ConnId,
    pub subscribers: Vec<ConnId>,
    pub qos: QoS,
    publish: Publish,
    next_id: u16,
    out: BytesMut,
    acks: Vec<(ConnId, PacketId)>,
}

fn connect(broker: &mut Broker, now: Now, client_id: &str) -> ConnId {
    let conn = broker.handle_accept(now, PeerInfo::memory(client_id));
    let connect = Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 0,
        client_id: MqttString::copy_from_str(client_id).expect("valid client id"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    broker.handle_packet(now, conn, Packet::Connect(Box::new(connect)));
    conn
}

fn subscribe(broker: &mut Broker, now: Now, conn: ConnId, filters: &[String], qos: QoS) {
    for (i, chunk) in filters.chunks(64).enumerate() {
        let subscribe = Subscribe {
            packet_id: PacketId::new(i as u16 + 1).expect("non-zero"),
            filters: chunk
                .iter()
                .map(|f| {
                    (
                        TopicFilter::copy_from_str(f).expect("valid filter"),
                        SubscriptionOptions::qos(qos),
                    )
                })
                .collect(),
            properties: Default::default(),
        };
        broker.handle_packet(now, conn, Packet::Subscribe(subscribe));
    }
}

/// Drains every event and encodes every waiting packet into `out`, cleared after
/// each connection. Returns the bytes encoded.
fn drain(broker: &mut Broker, out: &mut BytesMut) -> usize {
    let mut bytes = 0;
    while let Some(event) = broker.poll_event() {
        if let Event::Transmit(conn) = event {
            loop {
                let n = broker.poll_transmit(conn, out, usize::MAX);
                if n == 0 {
                    break;
                }
                bytes += n;
            }
            out.clear();
        }
    }
    bytes
}

/// The packet id of the QoS 1/2 PUBLISH at the start of `wire` (3.1.1 encoding).
fn publish_packet_id(wire: &[u8]) -> Option<PacketId> {
    let mut i = 1;
    while wire.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let topic_len = usize::from(u16::from_be_bytes([*wire.get(i + 1)?, *wire.get(i + 2)?]));
    let at = i + 3 + topic_len;
    PacketId::new(u16::from_be_bytes([*wire.get(at)?, *wire.get(at + 1)?]))
}

/// The permission bindings of `benches/authz/bindings.toml`, built in code: every
/// client is in a group whose publisher and subscriber bindings give it five
/// templates (one with a variable the bench's clients lack); the one that allows
/// [`TOPIC`] is the last, so every publish pays the whole scan.
pub fn bench_policy() -> std::sync::Arc<broker_state::authz::Policy> {
    use broker_state::authz::*;
    let template = |t: &str| (t.to_owned(), Template::parse(t).expect("template"));
    let group = |name: &str, q: &str| ClientGroup {
        name: name.into(),
        query: Query::parse(q).expect("query"),
    };
    let bind = |name: &str, g: usize, s: usize, permission| PermissionBinding {
        name: name.into(),
        client_group: g,
        topic_space: s,
        permission,
    };
    std::sync::Arc::new(Policy {
        mode: Mode::Bindings,
        groups: vec![
            group("everyone", "$all"),
            group("sensors", "attributes.type = 'sensor'"),
        ],
        spaces: vec![
            TopicSpace {
                name: "fleet".into(),
                templates: vec![
                    template("devices/${client.authenticationName}/telemetry/#"),
                    template("fleet/alerts"),
                    template("zones/+/status"),
                    template("commands/+/reply"),
                    template("bench/#"),
                ],
            },
            TopicSpace {
                name: "sensor-data".into(),
                templates: vec![template("sensors/${client.attributes.zone}/#")],
            },
        ],
        bindings: vec![
            bind("everyone-publishes", 0, 0, Permission::Publisher),
            bind("everyone-subscribes", 0, 0, Permission::Subscriber),
            bind("sensors-publish", 1, 1, Permission::Publisher),
        ],
    })
}

impl Fanout {
    /// Connects a publisher and `subscribers` subscribers (3.1.1, clean sessions),
    /// subscribed at `qos`; the publisher publishes at `qos` too.
    pub fn new(subscribers: usize, qos: QoS) -> Fanout {
        Fanout::with_authorization(subscribers, qos, None)
    }

    /// As [`Fanout::new`], every PUBLISH and SUBSCRIBE decided by `policy`.
    pub fn with_authorization(
        subscribers: usize,
        qos: QoS,
        policy: Option<std::sync::Arc<broker_state::authz::Policy>>,
    ) -> Fanout {
        let config = Config {
            max_connections: subscribers + 16,
            ..Config::default()
        };
        let mut broker = Broker::new(config, [7; 32]);
        let now = Now::new(Instant::now(), 1_700_000_000_000);
        broker.set_authorization(now, policy);
        let publisher = connect(&mut broker, now, "publisher");
        let filter = [TOPIC.to_owned()];
        let subscribers: Vec<ConnId> = (0..subscribers)
            .map(|i| {
                let conn = connect(&mut broker, now, &format!("sub-{i}"));
                subscribe(&mut broker, now, conn, &filter, qos);
                conn
            })
            .collect();
        let mut out = BytesMut::with_capacity(64 * 1024);
        drain(&mut broker, &mut out);
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicName::from_static(TOPIC).expect("valid topic"),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![b'x'; PAYLOAD]),
        };
        Fanout {
            broker,
            now,
            publisher,
            acks: Vec::with_capacity(subscribers.len()),
            subscribers,
            qos,
            publish,
            next_id: 0,
            out,
        }
    }

    /// Routes one PUBLISH to every subscriber and encodes what goes out. Returns the
    /// bytes encoded.
    #[inline(never)]
    pub fn publish_once(&mut self) -> usize {
        let mut publish = self.publish.clone();
        if self.qos != QoS::AtMostOnce {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            publish.packet_id = PacketId::new(self.next_id);
        }
        self.broker
            .handle_packet(self.now, self.publisher, Packet::Publish(publish));
        if self.qos == QoS::AtMostOnce {
            return drain(&mut self.broker, &mut self.out);
        }
        // QoS 1: encode per connection, note the packet id each subscriber got, and
        // acknowledge it as the subscriber would.
        let mut bytes = 0;
        while let Some(event) = self.broker.poll_event() {
            if let Event::Transmit(conn) = event {
                loop {
                    let n = self.broker.poll_transmit(conn, &mut self.out, usize::MAX);
                    if n == 0 {
                        break;
                    }
                    bytes += n;
                }
                if conn != self.publisher {
                    if let Some(id) = publish_packet_id(&self.out) {
                        self.acks.push((conn, id));
                    }
                }
                self.out.clear();
            }
        }
        for (conn, id) in self.acks.drain(..) {
            self.broker
                .handle_packet(self.now, conn, Packet::PubAck(PubAck::new(id)));
        }
        bytes + drain(&mut self.broker, &mut self.out)
    }

    /// Deliveries so far, from the broker's counters.
    pub fn deliveries(&self) -> u64 {
        self.broker.stats().deliveries
    }
}

/// A broker holding `filters` subscriptions of the form `dev/{i}/+/temp`, plus
/// `dev/{i}/#` for every 1000th device and a few wildcard filters that match no
/// bench topic, spread over sessions of 100 subscriptions each.
pub struct WideTrie {
    pub broker: Broker,
    pub now: Now,
    pub publisher: ConnId,
    pub devices: usize,
    next: usize,
    out: BytesMut,
    publish: Publish,
}

impl WideTrie {
    pub fn new(filters: usize) -> WideTrie {
        const PER_SESSION: usize = 100;
        let sessions = filters.div_ceil(PER_SESSION) + 1;
        let config = Config {
            max_connections: sessions + 16,
            max_subscriptions_per_session: PER_SESSION + 16,
            ..Config::default()
        };
        let mut broker = Broker::new(config, [7; 32]);
        let now = Now::new(Instant::now(), 1_700_000_000_000);
        let publisher = connect(&mut broker, now, "publisher");
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut all: Vec<String> = (0..filters).map(|i| format!("dev/{i}/+/temp")).collect();
        all.extend((0..filters).step_by(1000).map(|i| format!("dev/{i}/#")));
        all.extend(
            [
                "+/+/+/humidity",
                "dev/+/+/pressure",
                "site/#",
                "+/+/+/+/deep",
            ]
            .map(str::to_owned),
        );
        for (s, chunk) in all.chunks(PER_SESSION).enumerate() {
            let conn = connect(&mut broker, now, &format!("sub-{s}"));
            subscribe(&mut broker, now, conn, chunk, QoS::AtMostOnce);
            drain(&mut broker, &mut out);
        }
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::from_static("dev/0/room/temp").expect("valid topic"),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![b'x'; PAYLOAD]),
        };
        WideTrie {
            broker,
            now,
            publisher,
            devices: filters,
            next: 0,
            out,
            publish,
        }
    }

    /// Topics to publish to, one per device, built once so the measured loop does
    /// not format strings.
    pub fn topics(&self, n: usize) -> Vec<TopicName> {
        (0..n)
            .map(|k| {
                let device = (k * 7919) % self.devices;
                TopicName::copy_from_str(&format!("dev/{device}/room/temp")).expect("valid topic")
            })
            .collect()
    }

    /// One QoS 0 PUBLISH to the next of `topics`, routed and encoded.
    #[inline(never)]
    pub fn publish_once(&mut self, topics: &[TopicName]) -> usize {
        let mut publish = self.publish.clone();
        publish.topic = topics[self.next % topics.len()].clone();
        self.next += 1;
        self.broker
            .handle_packet(self.now, self.publisher, Packet::Publish(publish));
        drain(&mut self.broker, &mut self.out)
    }
}
