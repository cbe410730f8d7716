//! MQTT 5.0 as a whole (issue 6): flow control, topic aliases both ways, message and
//! session expiry, will properties, subscription options, shared subscriptions,
//! request/response, properties forwarded unchanged, reason codes and Reason
//! Strings, and enhanced authentication. Every assertion is on what a client
//! receives on the wire.
mod sim;

use std::collections::HashMap;
use std::time::Duration;

use broker_state::{AuthStep, Config, EnhancedAuthenticator};
use core::num::{NonZeroU16, NonZeroU32};
use mqtt_proto::bytes::{Bytes, BytesMut};
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn sim_with(f: impl FnOnce(&mut Config)) -> Sim {
    let mut config = Config::default();
    f(&mut config);
    Sim::new(config)
}

/// A 5.0 CONNECT, adjusted by `f`.
fn v5(client_id: &str, f: impl FnOnce(&mut Connect)) -> Connect {
    let mut p = connect_packet(V5, client_id, true);
    f(&mut p);
    p
}

fn ok(sim: &mut Sim, p: Connect) -> C {
    let id = p.client_id.as_str().to_owned();
    let (c, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::Success, "CONNACK for {id}");
    c
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

fn props(pairs: &[(&str, &str)]) -> UserProperties {
    UserProperties::from_pairs(pairs.iter().copied()).expect("valid UTF-8")
}

fn pairs(u: &UserProperties) -> Vec<(String, String)> {
    u.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn numbers(ps: &[Publish]) -> Vec<u8> {
    ps.iter().map(|p| p.payload[0]).collect()
}

/// The next packet must be a DISCONNECT; returns it whole.
fn disconnect_packet(sim: &mut Sim, c: C) -> Disconnect {
    match sim.recv(c) {
        Some(Packet::Disconnect(d)) => d,
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

fn reason_string(r: &Option<MqttString>) -> &str {
    r.as_ref().map_or("", |s| s.as_str())
}

// ------------------------------------------------------------------ flow control

#[test]
fn client_receive_maximum_bounds_qos1_and_qos2_in_flight_mqtt_3_3_4_9() {
    let mut sim = Sim::default();
    let s = ok(
        &mut sim,
        v5("s", |c| c.properties.receive_maximum = NonZeroU16::new(2)),
    );
    sim.subscribe(s, "t", QoS::ExactlyOnce);
    let p = sim.connect(V5, "p", true);
    for (i, qos) in [
        QoS::AtLeastOnce,
        QoS::ExactlyOnce,
        QoS::AtLeastOnce,
        QoS::ExactlyOnce,
        QoS::AtLeastOnce,
    ]
    .into_iter()
    .enumerate()
    {
        sim.publish(p, "t", qos, false, &[i as u8]);
    }
    let first = sim.publishes(s);
    assert_eq!(numbers(&first), [0, 1], "two in flight, three wait");
    assert_eq!(sim.broker.queued_messages("s"), Some(3));

    // A PUBACK frees a slot: the next one goes out.
    sim.send(s, Packet::PubAck(PubAck::new(first[0].packet_id.unwrap())));
    let next = sim.publishes(s);
    assert_eq!(numbers(&next), [2]);
    // PUBREC does not free the QoS 2 slot [MQTT-4.9.0-2]; PUBCOMP does.
    let q2 = first[1].packet_id.unwrap();
    sim.send(s, Packet::PubRec(PubAck::new(q2)));
    assert!(matches!(sim.recv(s), Some(Packet::PubRel(_))));
    sim.assert_silent(s);
    sim.send(s, Packet::PubComp(PubAck::new(q2)));
    let next2 = sim.publishes(s);
    assert_eq!(numbers(&next2), [3]);
    sim.ack_all(s, &next2);
    assert_eq!(numbers(&sim.publishes(s)), [4]);
    sim.ack_all(s, &next);
    sim.assert_silent(s);
    assert_eq!(sim.broker.queued_messages("s"), Some(0));
}

#[test]
fn server_receive_maximum_is_in_connack_and_exceeding_it_with_qos2_is_0x93_mqtt_3_3_4_9() {
    let mut sim = sim_with(|c| c.receive_maximum = 2);
    let (p, ack) = sim.connect_with(v5("p", |_| {}));
    assert_eq!(ack.properties.receive_maximum, NonZeroU16::new(2));
    for n in 1..=2 {
        sim.send_publish(
            p,
            publish_packet("t", QoS::ExactlyOnce, false, Some(pid(n)), b"x"),
        );
        assert_eq!(sim.expect_pubrec(p).packet_id, pid(n));
    }
    // Releasing one makes room again.
    sim.send(p, Packet::PubRel(PubAck::new(pid(1))));
    assert!(matches!(sim.recv(p), Some(Packet::PubComp(_))));
    sim.send_publish(
        p,
        publish_packet("t", QoS::ExactlyOnce, false, Some(pid(3)), b"x"),
    );
    assert_eq!(sim.expect_pubrec(p).packet_id, pid(3));
    // A third unreleased QoS 2 PUBLISH exceeds the Receive Maximum of 2.
    sim.send_publish(
        p,
        publish_packet("t", QoS::ExactlyOnce, false, Some(pid(4)), b"x"),
    );
    let d = disconnect_packet(&mut sim, p);
    assert_eq!(d.reason_code, ReasonCode::ReceiveMaximumExceeded);
    assert!(!reason_string(&d.properties.reason_string).is_empty());
    assert_eq!(sim.closed(p), Some(ReasonCode::ReceiveMaximumExceeded));
}

/// The send quota starts at the Receive Maximum on each Network Connection (5.0
/// section 4.9): QoS 2 PUBLISHes left unreleased by the last connection of the
/// session do not count against the new one, while their packet ids are kept for
/// exactly-once delivery until the client resends PUBREL [MQTT-4.3.3-2].
#[test]
fn send_quota_starts_afresh_on_each_connection_unreleased_qos2_of_the_last_do_not_count_mqtt_4_9_0_1(
) {
    let mut sim = sim_with(|c| c.receive_maximum = 2);
    let s = ok(&mut sim, v5("s", |_| {}));
    sim.subscribe(s, "t", QoS::AtMostOnce);
    let resume = || {
        v5("p", |c| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(600);
        })
    };
    let qos2 = |n: u16| publish_packet("t", QoS::ExactlyOnce, false, Some(pid(n)), &[n as u8]);
    let p = ok(&mut sim, resume());
    for n in 1..=2 {
        sim.send_publish(p, qos2(n));
        assert_eq!(sim.expect_pubrec(p).packet_id, pid(n));
    }
    sim.kill(p);

    // New QoS 2 messages before the PUBRELs are resent: the quota is 2 again.
    let (p, ack) = sim.connect_with(resume());
    assert!(ack.session_present);
    for n in 3..=4 {
        sim.send_publish(p, qos2(n));
        assert_eq!(sim.expect_pubrec(p).packet_id, pid(n));
    }
    assert_eq!(
        sim.closed(p),
        None,
        "no 0x93 for ids of the last connection"
    );
    assert_eq!(numbers(&sim.publishes(s)), vec![1, 2, 3, 4]);
    // The old flows complete exactly once.
    for n in 1..=2 {
        sim.send(p, Packet::PubRel(PubAck::new(pid(n))));
        assert!(
            matches!(sim.recv(p), Some(Packet::PubComp(c)) if c.reason_code == ReasonCode::Success)
        );
    }
    sim.assert_silent(s);
    // Releasing them gave nothing back to this connection's quota: 3 and 4 are
    // still unreleased, and a third is one too many [MQTT-3.3.4-9].
    sim.send_publish(p, qos2(5));
    assert_eq!(sim.expect_disconnect(p), ReasonCode::ReceiveMaximumExceeded);

    // A PUBLISH of the last connection resent with DUP is recognised (not routed
    // again), and, like any PUBLISH received on this connection, uses its quota.
    let (p, _) = sim.connect_with(resume());
    let mut dup = qos2(3);
    dup.dup = true;
    sim.send_publish(p, dup);
    assert_eq!(sim.expect_pubrec(p).packet_id, pid(3));
    sim.send_publish(p, qos2(6));
    assert_eq!(sim.expect_pubrec(p).packet_id, pid(6));
    assert_eq!(numbers(&sim.publishes(s)), vec![6]);
    sim.send_publish(p, qos2(7));
    assert_eq!(sim.expect_disconnect(p), ReasonCode::ReceiveMaximumExceeded);
}

#[test]
fn message_too_large_for_a_client_is_dropped_for_it_and_delivered_to_others_mqtt_3_1_2_25() {
    let mut sim = Sim::default();
    let small = ok(
        &mut sim,
        v5("small", |c| {
            c.properties.maximum_packet_size = NonZeroU32::new(50)
        }),
    );
    let large = sim.connect(V5, "large", true);
    let v311 = sim.connect(V4, "v311", true);
    for c in [small, large, v311] {
        sim.subscribe(c, "t", QoS::AtLeastOnce);
    }
    let p = sim.connect(V5, "p", true);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        sim.publish(p, "t", qos, false, &[1; 100]);
        sim.publish(p, "t", qos, false, &[2; 10]);
    }
    let got = sim.publishes(small);
    assert_eq!(got.len(), 2, "only the small ones");
    assert!(got.iter().all(|m| m.payload.len() == 10));
    assert_eq!(sim.publishes(large).len(), 4);
    assert_eq!(sim.publishes(v311).len(), 4);
    assert_eq!(sim.broker.stats().dropped_too_large, 2);
}

#[test]
fn packet_too_large_for_the_server_is_disconnect_0x95_mqtt_3_2_2_15() {
    let mut sim = sim_with(|c| c.max_packet_size = 128);
    let (p, ack) = sim.connect_with(v5("p", |_| {}));
    assert_eq!(ack.properties.maximum_packet_size, NonZeroU32::new(128));
    let mut bytes = BytesMut::new();
    Packet::Publish(publish_packet("t", QoS::AtMostOnce, false, None, &[0; 200]))
        .encode(V5, &mut bytes)
        .unwrap();
    sim.send_bytes(p, &bytes);
    let d = disconnect_packet(&mut sim, p);
    assert_eq!(d.reason_code, ReasonCode::PacketTooLarge);
    assert!(!reason_string(&d.properties.reason_string).is_empty());
    assert_eq!(sim.closed(p), Some(ReasonCode::PacketTooLarge));
}

// ------------------------------------------------------------------ inbound aliases

#[test]
fn inbound_topic_aliases_up_to_the_connack_maximum_mqtt_3_3_2_8_and_3_3_2_9() {
    let mut sim = sim_with(|c| c.topic_alias_maximum = 2);
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "#", QoS::AtMostOnce);
    let (p, ack) = sim.connect_with(v5("p", |_| {}));
    assert_eq!(ack.properties.topic_alias_maximum, Some(2));

    let aliased = |topic: &str, alias: u16, payload: u8| {
        let mut m = publish_packet(
            if topic.is_empty() { "x" } else { topic },
            QoS::AtMostOnce,
            false,
            None,
            &[payload],
        );
        if topic.is_empty() {
            m.topic = TopicName::default();
        }
        m.properties.topic_alias = NonZeroU16::new(alias);
        m
    };
    sim.send_publish(p, aliased("a/one", 1, 1));
    sim.send_publish(p, aliased("b/two", 2, 2));
    sim.send_publish(p, aliased("", 1, 3));
    sim.send_publish(p, aliased("", 2, 4));
    // An alias may be given a new topic [MQTT-3.3.2-10 ... 12].
    sim.send_publish(p, aliased("c/three", 1, 5));
    sim.send_publish(p, aliased("", 1, 6));
    let got: Vec<(String, u8)> = sim
        .publishes(s)
        .iter()
        .map(|m| (m.topic.as_str().to_owned(), m.payload[0]))
        .collect();
    let want = [
        ("a/one", 1),
        ("b/two", 2),
        ("a/one", 3),
        ("b/two", 4),
        ("c/three", 5),
        ("c/three", 6),
    ];
    assert_eq!(got, want.map(|(t, n)| (t.to_owned(), n)), "[MQTT-3.3.2-12]");

    // Above the maximum: 0x94 [MQTT-3.3.2-9].
    sim.send_publish(p, aliased("d", 3, 7));
    let d = disconnect_packet(&mut sim, p);
    assert_eq!(d.reason_code, ReasonCode::TopicAliasInvalid);
    assert!(!reason_string(&d.properties.reason_string).is_empty());
    sim.assert_silent(s);
}

#[test]
fn empty_topic_with_an_unknown_alias_is_a_protocol_error_and_aliases_die_with_the_connection() {
    let mut sim = Sim::default();
    let (p, _) = sim.connect_v5("p", false, Some(60));
    let mut m = publish_packet("t", QoS::AtMostOnce, false, None, b"x");
    m.properties.topic_alias = NonZeroU16::new(1);
    sim.send_publish(p, m.clone());
    assert_eq!(sim.closed(p), None);
    sim.disconnect(p);
    // A new connection starts without aliases [MQTT-3.3.2-7], even on the same
    // session.
    let (p, ack) = sim.connect_v5("p", false, Some(60));
    assert!(ack.session_present);
    m.topic = TopicName::default();
    sim.send_publish(p, m);
    assert_eq!(sim.expect_disconnect(p), ReasonCode::ProtocolError);
    assert_eq!(sim.closed(p), Some(ReasonCode::ProtocolError));
}

#[test]
fn topic_alias_maximum_zero_refuses_every_inbound_alias_mqtt_3_3_2_8() {
    let mut sim = sim_with(|c| c.topic_alias_maximum = 0);
    let (p, ack) = sim.connect_with(v5("p", |_| {}));
    assert_eq!(ack.properties.topic_alias_maximum, None, "0 is the default");
    let mut m = publish_packet("t", QoS::AtMostOnce, false, None, b"x");
    m.properties.topic_alias = NonZeroU16::new(1);
    sim.send_publish(p, m);
    assert_eq!(sim.expect_disconnect(p), ReasonCode::TopicAliasInvalid);
}

// ------------------------------------------------------------------ outbound aliases

/// The client side of outbound aliases: resolves each PUBLISH to its topic, checking
/// that an empty topic only ever comes with an alias set before on this connection.
#[derive(Default)]
struct AliasTable {
    map: HashMap<u16, String>,
    max_seen: u16,
}

impl AliasTable {
    fn resolve(&mut self, p: &Publish) -> String {
        match (p.topic.as_str(), p.properties.topic_alias) {
            ("", Some(a)) => self
                .map
                .get(&a.get())
                .unwrap_or_else(|| panic!("alias {a} used before it was set"))
                .clone(),
            ("", None) => panic!("empty topic without alias"),
            (t, Some(a)) => {
                self.max_seen = self.max_seen.max(a.get());
                self.map.insert(a.get(), t.to_owned());
                t.to_owned()
            }
            (t, None) => t.to_owned(),
        }
    }
}

#[test]
fn outbound_aliases_topic_and_alias_first_then_alias_alone_within_the_clients_maximum_mqtt_3_3_2_12(
) {
    let mut sim = Sim::default();
    let s = ok(
        &mut sim,
        v5("s", |c| c.properties.topic_alias_maximum = Some(2)),
    );
    sim.subscribe(s, "#", QoS::AtMostOnce);
    let p = sim.connect(V5, "p", true);
    for t in ["a/1", "b/2", "a/1", "c/3", "b/2", "c/3", "a/1"] {
        sim.publish(p, t, QoS::AtMostOnce, false, t.as_bytes());
    }
    let got: Vec<(String, Option<u16>)> = sim
        .publishes(s)
        .iter()
        .map(|m| {
            (
                m.topic.as_str().to_owned(),
                m.properties.topic_alias.map(|a| a.get()),
            )
        })
        .collect();
    let want = [
        ("a/1", Some(1)),
        ("b/2", Some(2)),
        ("", Some(1)),
        // Both aliases taken: the client allowed only 2 [MQTT-3.3.2-11].
        ("c/3", None),
        ("", Some(2)),
        ("c/3", None),
        ("", Some(1)),
    ];
    assert_eq!(got, want.map(|(t, a)| (t.to_owned(), a)));
}

#[test]
fn outbound_aliases_never_exceed_the_clients_maximum_and_resolve_to_the_right_topics() {
    let mut sim = Sim::default();
    let s = ok(
        &mut sim,
        v5("s", |c| c.properties.topic_alias_maximum = Some(3)),
    );
    sim.subscribe(s, "#", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    let mut sent = Vec::new();
    for i in 0..60u32 {
        let t = format!("topic/{}", (i * 7) % 10);
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        sim.publish(p, &t, qos, false, t.as_bytes());
        sent.push(t);
    }
    let got = sim.publishes(s);
    let mut table = AliasTable::default();
    let resolved: Vec<String> = got.iter().map(|m| table.resolve(m)).collect();
    assert_eq!(resolved, sent);
    assert_eq!(table.max_seen, 3, "aliases 1..=3 used, never more");
    // The three aliased topics come six times each: once with the topic, then alone.
    assert_eq!(got.iter().filter(|m| m.topic.is_empty()).count(), 15);
}

#[test]
fn no_outbound_aliases_for_a_client_that_set_no_maximum_mqtt_3_3_2_11() {
    let mut sim = Sim::default();
    let s5 = sim.connect(V5, "s5", true);
    let s4 = sim.connect(V4, "s4", true);
    let zero = ok(
        &mut sim,
        v5("zero", |c| c.properties.topic_alias_maximum = Some(0)),
    );
    for c in [s5, s4, zero] {
        sim.subscribe(c, "#", QoS::AtLeastOnce);
    }
    let p = sim.connect(V5, "p", true);
    for _ in 0..3 {
        sim.publish(p, "same/topic", QoS::AtLeastOnce, false, b"x");
    }
    for c in [s5, s4, zero] {
        let got = sim.publishes(c);
        assert_eq!(got.len(), 3);
        assert!(got
            .iter()
            .all(|m| m.topic.as_str() == "same/topic" && m.properties.topic_alias.is_none()));
    }
}

#[test]
fn outbound_alias_table_is_fresh_after_reconnect_and_redeliveries_carry_their_topic_mqtt_3_3_2_10()
{
    let mut sim = Sim::default();
    let connect = v5("s", |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        c.properties.topic_alias_maximum = Some(4);
    });
    let s = ok(&mut sim, connect.clone());
    sim.subscribe(s, "x/#", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "x/1", QoS::AtLeastOnce, false, b"1");
    sim.publish(p, "x/1", QoS::AtLeastOnce, false, b"2");
    let first = sim.publishes(s);
    assert_eq!(first[0].topic.as_str(), "x/1");
    assert_eq!(first[1].topic.as_str(), "", "alias in use");
    sim.kill(s); // neither acknowledged

    // Queued while offline, behind the two unacknowledged ones.
    sim.publish(p, "x/1", QoS::AtLeastOnce, false, b"3");
    let s = ok(&mut sim, connect.clone());
    let again = sim.publishes(s);
    assert_eq!(numbers(&again), [b'1', b'2', b'3']);
    assert!(again[0].dup && again[1].dup && !again[2].dup);
    // The new connection's first PUBLISH of x/1 carries the topic again.
    assert_eq!(again[0].topic.as_str(), "x/1");
    let mut table = AliasTable::default();
    assert!(again.iter().all(|m| table.resolve(m) == "x/1"));
    sim.ack_all(s, &again);
    sim.disconnect(s);

    // Back without a Topic Alias Maximum: full topics only.
    let mut plain = connect;
    plain.properties.topic_alias_maximum = None;
    let s = ok(&mut sim, plain);
    sim.publish(p, "x/1", QoS::AtLeastOnce, false, b"4");
    sim.publish(p, "x/1", QoS::AtLeastOnce, false, b"5");
    let got = sim.publishes(s);
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .all(|m| m.topic.as_str() == "x/1" && m.properties.topic_alias.is_none()));
}

// ------------------------------------------------------------------ message expiry

#[test]
fn expired_queued_message_is_never_delivered_and_the_rest_carry_the_time_left_mqtt_3_3_2_5_and_6() {
    let mut sim = Sim::default();
    // Online, behind a Receive Maximum of 1.
    let mut sc = v5("s", |c| c.properties.receive_maximum = NonZeroU16::new(1));
    sc.keep_alive = 0;
    let s = ok(&mut sim, sc);
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    let mut pc = v5("p", |_| {});
    pc.keep_alive = 0;
    let p = ok(&mut sim, pc);
    let with_expiry = |n: u16, secs: Option<u32>| {
        let mut m = publish_packet("t", QoS::AtLeastOnce, false, Some(pid(n)), &[n as u8]);
        m.properties.message_expiry_interval = secs;
        m
    };
    sim.send_publish(p, with_expiry(1, Some(100)));
    sim.send_publish(p, with_expiry(2, Some(5)));
    sim.send_publish(p, with_expiry(3, Some(100)));
    sim.send_publish(p, with_expiry(4, None));
    let first = sim.publishes(s);
    assert_eq!(numbers(&first), [1]);
    assert_eq!(first[0].properties.message_expiry_interval, Some(100));

    sim.advance(Duration::from_secs(30));
    sim.ack_all(s, &first);
    let next = sim.publishes(s);
    // 2 expired while it waited [MQTT-3.3.2-5]; 3 waited 30 s [MQTT-3.3.2-6].
    assert_eq!(numbers(&next), [3]);
    assert_eq!(next[0].properties.message_expiry_interval, Some(70));
    sim.ack_all(s, &next);
    let last = sim.publishes(s);
    assert_eq!(numbers(&last), [4]);
    assert_eq!(last[0].properties.message_expiry_interval, None);
    assert_eq!(sim.broker.stats().expired, 1);
}

#[test]
fn message_expiry_counts_down_in_an_offline_queue_too_mqtt_3_3_2_6() {
    let mut sim = Sim::default();
    let (s, _) = sim.connect_v5("s", false, Some(3600));
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    let mut pc = v5("p", |_| {});
    pc.keep_alive = 0;
    let p = ok(&mut sim, pc);
    let mut m = publish_packet("t", QoS::AtLeastOnce, false, Some(pid(1)), b"m");
    m.properties.message_expiry_interval = Some(60);
    sim.send_publish(p, m.clone());
    m.packet_id = Some(pid(2));
    m.properties.message_expiry_interval = Some(10);
    sim.send_publish(p, m);
    sim.advance(Duration::from_millis(20_500));
    let (s, _) = sim.connect_v5("s", false, Some(3600));
    let got = sim.publishes(s);
    assert_eq!(got.len(), 1);
    // 39.5 s left, rounded up: never longer than the publisher allowed nor zero.
    assert_eq!(got[0].properties.message_expiry_interval, Some(40));
}

// ------------------------------------------------------------------ session expiry

#[test]
fn session_expiry_from_connect_and_changed_by_disconnect_mqtt_3_1_2_23_and_3_14_2_2() {
    let mut sim = Sim::default();
    // Set at CONNECT: the session outlives its connection by that long.
    let (s, ack) = sim.connect_v5("s", false, Some(20));
    assert_eq!(
        ack.properties.session_expiry_interval, None,
        "granted as asked"
    );
    sim.disconnect(s);
    sim.advance(Duration::from_secs(19));
    let (s, ack) = sim.connect_v5("s", false, Some(20));
    assert!(ack.session_present);

    // Lengthened on DISCONNECT (non-zero at CONNECT): 20 s no longer ends it.
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(100);
    sim.send(s, Packet::Disconnect(d));
    sim.advance(Duration::from_secs(50));
    let (s, ack) = sim.connect_v5("s", false, Some(20));
    assert!(ack.session_present, "DISCONNECT set 100 s");

    // Shortened to 0 on DISCONNECT: the session ends with the connection.
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(0);
    sim.send(s, Packet::Disconnect(d));
    let (s, ack) = sim.connect_v5("s", false, None);
    assert!(!ack.session_present);

    // 0 at CONNECT (here: absent) may not be raised on DISCONNECT [MQTT-3.14.2-2].
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(100);
    sim.send(s, Packet::Disconnect(d));
    let d = disconnect_packet(&mut sim, s);
    assert_eq!(d.reason_code, ReasonCode::ProtocolError);
    assert!(!reason_string(&d.properties.reason_string).is_empty());
    let (_, ack) = sim.connect_v5("s", false, None);
    assert!(!ack.session_present, "the session ended with 0");
}

// ------------------------------------------------------------------ will

/// A watcher (keep alive off) on `will/#`.
fn watcher(sim: &mut Sim) -> C {
    let mut w = v5("watcher", |_| {});
    w.keep_alive = 0;
    let w = ok(sim, w);
    sim.subscribe(w, "will/#", QoS::AtLeastOnce);
    w
}

#[test]
fn will_delay_is_capped_by_the_session_expiry_mqtt_3_1_3_9() {
    let mut sim = Sim::default();
    let w = watcher(&mut sim);
    let mut c = v5("c", |c| {
        c.clean_start = false;
        c.keep_alive = 0;
        c.properties.session_expiry_interval = Some(10);
    });
    let mut wl = will("will/c", b"gone", QoS::AtLeastOnce, false);
    wl.properties.will_delay_interval = Some(100);
    c.will = Some(wl);
    let c = ok(&mut sim, c);
    sim.kill(c);
    sim.advance(Duration::from_secs(9));
    sim.assert_silent(w);
    sim.advance(Duration::from_secs(2));
    assert_eq!(payloads(&sim.publishes(w)), vec![&b"gone"[..]]);
    sim.advance(Duration::from_secs(200));
    sim.assert_silent(w); // once only
}

#[test]
fn will_properties_are_forwarded_unchanged_and_in_order_mqtt_3_1_3_10() {
    let mut sim = Sim::default();
    let w = watcher(&mut sim);
    let user = [("k", "1"), ("z", "2"), ("k", "3"), ("a", "")];
    let mut wl = will("will/c", b"{\"gone\":true}", QoS::AtLeastOnce, true);
    wl.properties.user_properties = props(&user);
    wl.properties.content_type = Some(MqttString::from_static("application/json").unwrap());
    wl.properties.payload_format_indicator = Some(PayloadFormat::Utf8);
    wl.properties.response_topic = Some(TopicName::from_static("reply/here").unwrap());
    wl.properties.correlation_data = Some(Bytes::from_static(b"\x00corr\xff"));
    wl.properties.message_expiry_interval = Some(3600);
    let c = ok(
        &mut sim,
        v5("c", |c| {
            c.will = Some(wl);
        }),
    );
    sim.kill(c);
    let check = |m: &Publish| {
        assert_eq!(pairs(&m.properties.user_properties), owned(&user));
        assert_eq!(
            m.properties.content_type.as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            m.properties.payload_format_indicator,
            Some(PayloadFormat::Utf8)
        );
        assert_eq!(
            m.properties.response_topic.as_ref().map(|t| t.as_str()),
            Some("reply/here")
        );
        assert_eq!(
            m.properties.correlation_data.as_deref(),
            Some(&b"\x00corr\xff"[..])
        );
        assert_eq!(m.properties.message_expiry_interval, Some(3600));
        assert_eq!(&m.payload[..], b"{\"gone\":true}");
    };
    let got = sim.publishes(w);
    assert_eq!(got.len(), 1);
    check(&got[0]);
    // The retained will keeps them too.
    let late = sim.connect(V5, "late", true);
    sim.subscribe(late, "will/#", QoS::AtLeastOnce);
    let got = sim.publishes(late);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    check(&got[0]);
}

#[test]
fn disconnect_0x04_publishes_the_will_and_0x00_does_not_mqtt_3_14_2_1() {
    let mut sim = Sim::default();
    let w = watcher(&mut sim);
    let with_will = |id: &str| {
        v5(id, |c| {
            c.will = Some(will(
                &format!("will/{id}"),
                id.as_bytes(),
                QoS::AtMostOnce,
                false,
            ))
        })
    };
    let a = ok(&mut sim, with_will("a"));
    let b = ok(&mut sim, with_will("b"));
    sim.send(
        a,
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
    sim.send(b, Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    assert_eq!(payloads(&sim.publishes(w)), vec![&b"a"[..]]);
    assert!(sim.closed(a).is_some() && sim.closed(b).is_some());
}

// ------------------------------------------------------------------ subscription options

fn opts(qos: QoS, f: impl FnOnce(&mut SubscriptionOptions)) -> SubscriptionOptions {
    let mut o = SubscriptionOptions::qos(qos);
    f(&mut o);
    o
}

#[test]
fn no_local_keeps_a_clients_own_publications_from_it_mqtt_3_8_3_3() {
    let mut sim = Sim::default();
    let a = sim.connect(V5, "a", true);
    let b = sim.connect(V5, "b", true);
    sim.subscribe_opts(a, "t", opts(QoS::AtLeastOnce, |o| o.no_local = true), None);
    sim.subscribe_opts(b, "t", opts(QoS::AtLeastOnce, |o| o.no_local = false), None);
    sim.publish(a, "t", QoS::AtLeastOnce, false, b"from a");
    assert_eq!(sim.expect_puback(a).reason_code, ReasonCode::Success);
    sim.publish(b, "t", QoS::AtLeastOnce, false, b"from b");
    assert_eq!(payloads(&sim.publishes(a)), vec![&b"from b"[..]]);
    assert_eq!(
        payloads(&sim.publishes(b)),
        vec![&b"from a"[..], &b"from b"[..]],
        "No Local 0: its own message too"
    );
}

#[test]
fn retain_as_published_keeps_the_retain_flag_when_forwarding_mqtt_3_3_1_12() {
    let mut sim = Sim::default();
    let keep = sim.connect(V5, "keep", true);
    let clear = sim.connect(V5, "clear", true);
    sim.subscribe_opts(
        keep,
        "t",
        opts(QoS::AtMostOnce, |o| o.retain_as_published = true),
        None,
    );
    sim.subscribe_opts(clear, "t", opts(QoS::AtMostOnce, |_| {}), None);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::AtMostOnce, true, b"r");
    sim.publish(p, "t", QoS::AtMostOnce, false, b"n");
    let flags = |ps: Vec<Publish>| ps.iter().map(|m| m.retain).collect::<Vec<_>>();
    assert_eq!(flags(sim.publishes(keep)), [true, false]);
    assert_eq!(
        flags(sim.publishes(clear)),
        [false, false],
        "[MQTT-3.3.1-12]"
    );
}

#[test]
fn retain_handling_0_1_2_at_subscribe_mqtt_3_3_1_9_to_11() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "r/1", QoS::AtMostOnce, true, b"one");
    let s = sim.connect(V5, "s", true);
    let rh = |h| opts(QoS::AtMostOnce, |o| o.retain_handling = h);
    let count = |sim: &mut Sim, filter: &str, h| {
        sim.subscribe_opts(s, filter, rh(h), None);
        let got = sim.publishes(s);
        assert!(got.iter().all(|m| m.retain), "[MQTT-3.3.1-8]");
        got.len()
    };
    use RetainHandling::*;
    assert_eq!(count(&mut sim, "r/+", SendAtSubscribe), 1);
    assert_eq!(count(&mut sim, "r/+", SendAtSubscribe), 1, "every time");
    assert_eq!(count(&mut sim, "r/+", SendIfNew), 0, "exists already");
    assert_eq!(count(&mut sim, "r/#", SendIfNew), 1, "new subscription");
    assert_eq!(count(&mut sim, "#", DoNotSend), 0);
    assert_eq!(count(&mut sim, "#", DoNotSend), 0);
}

#[test]
fn resuming_a_session_does_not_resend_retained_messages_mqtt_3_3_1_10() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "r/1", QoS::AtLeastOnce, true, b"one");
    sim.expect_puback(p);
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.subscribe_opts(
        s,
        "r/+",
        opts(QoS::AtLeastOnce, |o| {
            o.retain_handling = RetainHandling::SendIfNew
        }),
        None,
    );
    let got = sim.publishes(s);
    assert_eq!(got.len(), 1);
    sim.ack_all(s, &got);
    sim.disconnect(s);

    let (s, ack) = sim.connect_v5("s", false, Some(600));
    assert!(ack.session_present);
    sim.assert_silent(s);
    // The subscription came back with the session: Retain Handling 1 sends nothing.
    sim.subscribe_opts(
        s,
        "r/+",
        opts(QoS::AtLeastOnce, |o| {
            o.retain_handling = RetainHandling::SendIfNew
        }),
        None,
    );
    sim.assert_silent(s);
}

#[test]
fn subscription_identifiers_all_come_with_one_delivery_mqtt_3_3_4_3_and_3_8_4_6() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "a/b", QoS::AtMostOnce, true, b"retained");
    let s = sim.connect(V5, "s", true);
    sim.subscribe_opts(s, "a/b", opts(QoS::AtMostOnce, |_| {}), Some(1));
    let got = sim.publishes(s);
    let ids = |m: &Publish| {
        let mut v: Vec<u32> = m
            .properties
            .subscription_identifiers
            .iter()
            .map(|i| i.get())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&got[0]),
        [1],
        "a retained message carries its subscription's id"
    );
    sim.subscribe_opts(
        s,
        "a/+",
        opts(QoS::AtMostOnce, |o| {
            o.retain_handling = RetainHandling::DoNotSend
        }),
        Some(2),
    );
    sim.subscribe_opts(
        s,
        "#",
        opts(QoS::AtMostOnce, |o| {
            o.retain_handling = RetainHandling::DoNotSend
        }),
        Some(300_000),
    );
    sim.subscribe_opts(
        s,
        "+/b",
        opts(QoS::AtMostOnce, |o| {
            o.retain_handling = RetainHandling::DoNotSend
        }),
        None,
    );
    sim.publish(p, "a/b", QoS::AtMostOnce, false, b"x");
    let got = sim.publishes(s);
    assert_eq!(got.len(), 1, "one delivery [MQTT-3.3.4-2]");
    assert_eq!(ids(&got[0]), [1, 2, 300_000]);
    // A resubscription replaces the identifier.
    sim.subscribe_opts(
        s,
        "a/b",
        opts(QoS::AtMostOnce, |o| {
            o.retain_handling = RetainHandling::DoNotSend
        }),
        Some(5),
    );
    sim.unsubscribe(s, "a/+");
    sim.unsubscribe(s, "#");
    sim.publish(p, "a/b", QoS::AtMostOnce, false, b"y");
    assert_eq!(ids(&sim.publishes(s)[0]), [5]);
}

// ------------------------------------------------------------------ shared subscriptions

/// Three members of `$share/g/jobs` and a publisher sending `n` QoS 0 messages: which
/// member got each one.
fn shared_picks(seed: [u8; 32], n: usize) -> Vec<usize> {
    let mut sim = Sim::with_seed(Config::default(), seed);
    let members: Vec<C> = (0..3)
        .map(|i| sim.connect(V5, &format!("m{i}"), true))
        .collect();
    for &m in &members {
        sim.subscribe(m, "$share/g/jobs", QoS::AtMostOnce);
    }
    let p = sim.connect(V5, "p", true);
    let mut picks = Vec::with_capacity(n);
    for i in 0..n {
        sim.publish(p, "jobs", QoS::AtMostOnce, false, &(i as u32).to_be_bytes());
        let got: Vec<usize> = members
            .iter()
            .enumerate()
            .flat_map(|(j, &m)| sim.publishes(m).into_iter().map(move |_| j))
            .collect();
        assert_eq!(got.len(), 1, "message {i} went to exactly one member");
        picks.push(got[0]);
    }
    picks
}

#[test]
fn shared_subscription_gives_each_message_to_one_member_deterministically_and_spread_mqtt_4_8_2() {
    let picks = shared_picks([9; 32], 300);
    let mut counts = [0usize; 3];
    for &i in &picks {
        counts[i] += 1;
    }
    println!("300 messages over 3 members (seed [9; 32]): {counts:?}");
    assert!(counts.iter().all(|&n| n >= 60), "{counts:?}");
    assert_eq!(picks, shared_picks([9; 32], 300), "same seed, same choices");
    assert_ne!(picks, shared_picks([10; 32], 300), "the seed decides");
}

#[test]
fn shared_member_that_unsubscribes_or_disconnects_stops_receiving_mqtt_4_8_2() {
    let mut sim = Sim::default();
    let a = sim.connect(V5, "a", true);
    let b = sim.connect(V5, "b", true);
    let c = sim.connect(V4, "c", true);
    for m in [a, b, c] {
        sim.subscribe(m, "$share/g/t", QoS::AtLeastOnce);
    }
    let p = sim.connect(V5, "p", true);
    sim.unsubscribe(a, "$share/g/t");
    sim.disconnect(b); // clean session: its subscriptions go with it
    for i in 0..20u8 {
        sim.publish(p, "t", QoS::AtLeastOnce, false, &[i]);
    }
    sim.assert_silent(a);
    assert_eq!(sim.publishes(c).len(), 20, "the remaining member gets all");
}

#[test]
fn offline_persistent_member_is_skipped_while_others_are_online_mqtt_4_8_2() {
    let mut sim = Sim::default();
    let (a, _) = sim.connect_v5("a", false, Some(600));
    let b = sim.connect(V5, "b", true);
    sim.subscribe(a, "$share/g/t", QoS::AtLeastOnce);
    sim.subscribe(b, "$share/g/t", QoS::AtLeastOnce);
    sim.disconnect(a);
    let p = sim.connect(V5, "p", true);
    for i in 0..20u8 {
        sim.publish(p, "t", QoS::AtLeastOnce, false, &[i]);
    }
    let got = sim.publishes(b);
    assert_eq!(got.len(), 20);
    sim.ack_all(b, &got);
    assert_eq!(sim.broker.queued_messages("a"), Some(0));

    // With nobody online, the offline member's session keeps them.
    sim.disconnect(b);
    sim.publish(p, "t", QoS::AtLeastOnce, false, b"w");
    assert_eq!(sim.broker.queued_messages("a"), Some(1));
    let (a, _) = sim.connect_v5("a", false, Some(600));
    assert_eq!(payloads(&sim.publishes(a)), vec![&b"w"[..]]);
}

#[test]
fn mqtt_3_1_1_client_can_join_a_shared_subscription_group() {
    let mut sim = Sim::default();
    let a = sim.connect(V4, "a", true);
    let b = sim.connect(V5, "b", true);
    assert_eq!(
        sim.subscribe(a, "$share/g/t/#", QoS::AtLeastOnce)
            .reason_codes,
        [ReasonCode::GrantedQoS1]
    );
    sim.subscribe(b, "$share/g/t/#", QoS::AtLeastOnce);
    let p = sim.connect(V4, "p", true);
    for i in 0..40u8 {
        sim.publish(p, "t/x", QoS::AtLeastOnce, false, &[i]);
    }
    let (ga, gb) = (sim.publishes(a), sim.publishes(b));
    assert_eq!(ga.len() + gb.len(), 40);
    assert!(
        !ga.is_empty() && !gb.is_empty(),
        "{} / {}",
        ga.len(),
        gb.len()
    );
}

#[test]
fn qos1_in_flight_to_a_member_whose_session_ends_goes_to_another_member_mqtt_4_8_2() {
    let mut sim = Sim::default();
    // `a` ends with its connection (expiry 0) and has a window of 2, so some of its
    // messages are in flight and some queued when it drops.
    let a = ok(
        &mut sim,
        v5("a", |c| c.properties.receive_maximum = NonZeroU16::new(2)),
    );
    let b = sim.connect(V5, "b", true);
    sim.subscribe(a, "$share/g/t", QoS::AtLeastOnce);
    sim.subscribe(b, "$share/g/t", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    for i in 0..20u8 {
        sim.publish(p, "t", QoS::AtLeastOnce, false, &[i]);
    }
    let to_a = sim.publishes(a);
    let to_b = sim.publishes(b);
    let queued_a = sim.broker.queued_messages("a").unwrap();
    assert_eq!(to_a.len(), 2);
    assert_eq!(to_a.len() + queued_a + to_b.len(), 20);
    // `a` acknowledges one, then drops.
    sim.send(a, Packet::PubAck(PubAck::new(to_a[0].packet_id.unwrap())));
    assert_eq!(sim.publishes(a).len(), usize::from(queued_a > 0));
    sim.kill(a);
    let redelivered = sim.publishes(b);
    assert_eq!(
        redelivered.len(),
        1 + queued_a,
        "every unacknowledged one, in flight or queued"
    );
    assert!(redelivered
        .iter()
        .all(|m| !m.dup && m.qos == QoS::AtLeastOnce));
    let mut all: Vec<u8> = to_b
        .iter()
        .chain(&redelivered)
        .map(|m| m.payload[0])
        .collect();
    all.push(to_a[0].payload[0]);
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<u8>>(), "each exactly once");
    assert_eq!(
        sim.broker.stats().shared_redeliveries,
        redelivered.len() as u64
    );
}

#[test]
fn qos2_in_flight_to_a_member_whose_session_ends_is_not_sent_elsewhere_mqtt_4_8_2_5() {
    let mut sim = Sim::default();
    let a = sim.connect(V5, "a", true);
    let b = sim.connect(V5, "b", true);
    sim.subscribe(a, "$share/g/t", QoS::ExactlyOnce);
    sim.subscribe(b, "$share/g/t", QoS::ExactlyOnce);
    let p = sim.connect(V5, "p", true);
    for i in 0..10u8 {
        sim.publish_qos2_complete(p, "t", &[i]);
    }
    let to_a = sim.publishes(a);
    let to_b = sim.publishes(b);
    assert!(!to_a.is_empty(), "seeded picks gave a some");
    assert_eq!(to_a.len() + to_b.len(), 10);
    sim.kill(a);
    sim.assert_silent(b);
    assert_eq!(sim.broker.stats().shared_redeliveries, 0);
}

#[test]
fn negative_puback_from_a_shared_member_discards_the_message_mqtt_4_8_2_6() {
    let mut sim = Sim::default();
    let a = sim.connect(V5, "a", true);
    let b = sim.connect(V5, "b", true);
    sim.subscribe(a, "$share/g/t", QoS::AtLeastOnce);
    sim.subscribe(b, "$share/g/t", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    for i in 0..10u8 {
        sim.publish(p, "t", QoS::AtLeastOnce, false, &[i]);
    }
    let to_a = sim.publishes(a);
    sim.publishes(b);
    for m in &to_a {
        let mut nack = PubAck::new(m.packet_id.unwrap());
        nack.reason_code = ReasonCode::ImplementationSpecificError;
        sim.send(a, Packet::PubAck(nack));
    }
    sim.kill(a);
    sim.assert_silent(b);
    assert_eq!(sim.broker.stats().shared_redeliveries, 0);
}

// ------------------------------------------------------------------ request / response

#[test]
fn response_topic_and_correlation_data_are_forwarded_unchanged_mqtt_3_3_2_15_and_16() {
    let mut sim = Sim::default();
    let responder = sim.connect(V5, "responder", true);
    sim.subscribe(responder, "svc/req", QoS::AtLeastOnce);
    let requester = sim.connect(V5, "requester", true);
    sim.subscribe(requester, "svc/resp/requester", QoS::AtLeastOnce);
    let mut req = publish_packet("svc/req", QoS::AtLeastOnce, false, Some(pid(1)), b"ping");
    req.properties.response_topic = Some(TopicName::from_static("svc/resp/requester").unwrap());
    req.properties.correlation_data = Some(Bytes::from_static(&[0, 1, 2, 255]));
    sim.send_publish(requester, req);
    sim.expect_puback(requester);
    let got = sim.publishes(responder);
    let r = &got[0].properties;
    let topic = r.response_topic.clone().expect("Response Topic");
    assert_eq!(topic.as_str(), "svc/resp/requester");
    assert_eq!(r.correlation_data.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    sim.ack_all(responder, &got);

    let mut resp = publish_packet(
        topic.as_str(),
        QoS::AtLeastOnce,
        false,
        Some(pid(1)),
        b"pong",
    );
    resp.properties.correlation_data = r.correlation_data.clone();
    sim.send_publish(responder, resp);
    let back = sim.publishes(requester);
    assert_eq!(payloads(&back), vec![&b"pong"[..]]);
    assert_eq!(
        back[0].properties.correlation_data.as_deref(),
        Some(&[0u8, 1, 2, 255][..])
    );
}

#[test]
fn response_information_only_when_requested_and_configured_mqtt_3_1_2_28_and_3_2_2_19() {
    let asking =
        |id: &str, ask: Option<bool>| v5(id, |c| c.properties.request_response_information = ask);
    let mut sim = sim_with(|c| c.response_information_prefix = Some("resp/".into()));
    let (_, ack) = sim.connect_with(asking("dev-1", Some(true)));
    assert_eq!(
        ack.properties
            .response_information
            .map(|s| s.as_str().to_owned()),
        Some("resp/dev-1".to_owned())
    );
    for ask in [None, Some(false)] {
        let (_, ack) = sim.connect_with(asking("dev-2", ask));
        assert_eq!(ack.properties.response_information, None, "{ask:?}");
    }
    let mut sim = Sim::default(); // no prefix configured
    let (_, ack) = sim.connect_with(asking("dev-1", Some(true)));
    assert_eq!(ack.properties.response_information, None);
}

// ------------------------------------------------------------------ properties forwarded

#[test]
fn user_properties_content_type_and_payload_format_are_forwarded_unchanged_mqtt_3_3_2_17_and_18() {
    let mut sim = Sim::default();
    let live = sim.connect(V5, "live", true);
    sim.subscribe(live, "t", QoS::AtLeastOnce);
    let (off, _) = sim.connect_v5("off", false, Some(600));
    sim.subscribe(off, "t", QoS::AtLeastOnce);
    sim.disconnect(off);
    let user = [("b", "2"), ("a", "1"), ("b", "two"), ("ü", "✓")];
    let p = sim.connect(V5, "p", true);
    let mut m = publish_packet("t", QoS::AtLeastOnce, true, Some(pid(1)), "ü".as_bytes());
    m.properties.user_properties = props(&user);
    m.properties.content_type = Some(MqttString::from_static("text/plain; charset=utf-8").unwrap());
    m.properties.payload_format_indicator = Some(PayloadFormat::Utf8);
    sim.send_publish(p, m);
    sim.expect_puback(p);
    let check = |m: &Publish, how: &str| {
        assert_eq!(pairs(&m.properties.user_properties), owned(&user), "{how}");
        assert_eq!(
            m.properties.content_type.as_ref().map(|c| c.as_str()),
            Some("text/plain; charset=utf-8"),
            "{how}"
        );
        assert_eq!(
            m.properties.payload_format_indicator,
            Some(PayloadFormat::Utf8),
            "{how}"
        );
    };
    check(&sim.publishes(live)[0], "live");
    let (off, _) = sim.connect_v5("off", false, Some(600));
    check(&sim.publishes(off)[0], "queued");
    let late = sim.connect(V5, "late", true);
    sim.subscribe(late, "t", QoS::AtLeastOnce);
    check(&sim.publishes(late)[0], "retained");
}

#[test]
fn user_properties_on_every_client_packet_are_accepted_mqtt_3_1_3_11() {
    let mut sim = Sim::default();
    let up = props(&[("trace", "abc")]);
    let mut cc = v5("c", |_| {});
    cc.properties.user_properties = up.clone();
    let c = ok(&mut sim, cc);
    let f = TopicFilter::from_static("t").unwrap();
    sim.send(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(f.clone(), SubscriptionOptions::qos(QoS::ExactlyOnce))],
            properties: SubscribeProperties {
                user_properties: up.clone(),
                ..Default::default()
            },
        }),
    );
    assert!(matches!(sim.recv(c), Some(Packet::SubAck(_))));
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, b"1");
    sim.publish(p, "t", QoS::ExactlyOnce, false, b"2");
    let got = sim.publishes(c);
    let ack = |id| PubAck {
        packet_id: id,
        reason_code: ReasonCode::Success,
        properties: AckProperties {
            reason_string: None,
            user_properties: up.clone(),
        },
    };
    sim.send(c, Packet::PubAck(ack(got[0].packet_id.unwrap())));
    sim.send(c, Packet::PubRec(ack(got[1].packet_id.unwrap())));
    assert!(matches!(sim.recv(c), Some(Packet::PubRel(_))));
    sim.send(c, Packet::PubComp(ack(got[1].packet_id.unwrap())));
    // Inbound QoS 2 with PUBREL carrying user properties.
    sim.publish(c, "u", QoS::ExactlyOnce, false, b"3");
    let rec = sim.expect_pubrec(c);
    sim.send(c, Packet::PubRel(ack(rec.packet_id)));
    assert!(
        matches!(sim.recv(c), Some(Packet::PubComp(a)) if a.reason_code == ReasonCode::Success)
    );
    sim.send(
        c,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(2),
            filters: vec![f],
            properties: UnsubscribeProperties {
                user_properties: up.clone(),
            },
        }),
    );
    assert!(
        matches!(sim.recv(c), Some(Packet::UnsubAck(a)) if a.reason_codes == [ReasonCode::Success])
    );
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.user_properties = up;
    sim.send(c, Packet::Disconnect(d));
    assert_eq!(sim.closed(c), Some(ReasonCode::Success));
    sim.assert_silent(c);
}

// ------------------------------------------------------------------ reason codes and strings

#[test]
fn every_negative_ack_carries_its_code_and_a_reason_string_mqtt_3_4_2_2() {
    let mut sim = sim_with(|c| c.max_topic_length = 16);
    sim.broker.set_authorizer(Box::new(DenySecret));
    let c = sim.connect(V5, "c", true);
    // PUBACK 0x87 and 0x90.
    sim.publish(c, "secret/x", QoS::AtLeastOnce, false, b"x");
    let a = sim.expect_puback(c);
    assert_eq!(a.reason_code, ReasonCode::NotAuthorized);
    assert!(!reason_string(&a.properties.reason_string).is_empty());
    sim.publish(c, "a/very/long/topic/name", QoS::AtLeastOnce, false, b"x");
    let a = sim.expect_puback(c);
    assert_eq!(a.reason_code, ReasonCode::TopicNameInvalid);
    assert!(!reason_string(&a.properties.reason_string).is_empty());
    // PUBREC 0x87.
    sim.publish(c, "secret/y", QoS::ExactlyOnce, false, b"x");
    let r = sim.expect_pubrec(c);
    assert_eq!(r.reason_code, ReasonCode::NotAuthorized);
    assert!(!reason_string(&r.properties.reason_string).is_empty());
    // SUBACK 0x87.
    let s = sim.subscribe(c, "secret/#", QoS::AtMostOnce);
    assert_eq!(s.reason_codes, [ReasonCode::NotAuthorized]);
    assert!(!reason_string(&s.properties.reason_string).is_empty());
    // PUBCOMP and PUBREL 0x92.
    sim.send(c, Packet::PubRel(PubAck::new(pid(77))));
    match sim.recv(c) {
        Some(Packet::PubComp(a)) => {
            assert_eq!(a.reason_code, ReasonCode::PacketIdentifierNotFound);
            assert!(!reason_string(&a.properties.reason_string).is_empty());
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    sim.send(c, Packet::PubRec(PubAck::new(pid(78))));
    match sim.recv(c) {
        Some(Packet::PubRel(a)) => {
            assert_eq!(a.reason_code, ReasonCode::PacketIdentifierNotFound);
            assert!(!reason_string(&a.properties.reason_string).is_empty());
        }
        other => panic!("expected PUBREL, got {other:?}"),
    }
    // Success codes carry none.
    sim.publish(c, "open", QoS::AtLeastOnce, false, b"x");
    let a = sim.expect_puback(c);
    assert_eq!(a.reason_code, ReasonCode::NoMatchingSubscribers);
    assert_eq!(a.properties.reason_string, None);
}

#[test]
fn every_server_disconnect_carries_a_reason_string_mqtt_3_14_2_3() {
    let mut sim = Sim::default();
    let mut seen = Vec::new();
    // Takeover, protocol error, keep-alive timeout.
    let a = sim.connect(V5, "a", true);
    sim.connect(V5, "a", true);
    seen.push(disconnect_packet(&mut sim, a));
    let b = sim.connect(V5, "b", true);
    sim.send(b, Packet::PingResp);
    seen.push(disconnect_packet(&mut sim, b));
    let k = sim.connect(V5, "k", true);
    sim.advance(Duration::from_secs(91));
    seen.push(disconnect_packet(&mut sim, k));
    let codes: Vec<ReasonCode> = seen.iter().map(|d| d.reason_code).collect();
    assert_eq!(
        codes,
        [
            ReasonCode::SessionTakenOver,
            ReasonCode::ProtocolError,
            ReasonCode::KeepAliveTimeout
        ]
    );
    for d in &seen {
        assert!(
            !reason_string(&d.properties.reason_string).is_empty(),
            "{d:?}"
        );
    }
}

#[test]
fn request_problem_information_0_leaves_reason_strings_off_acks_but_not_disconnect_mqtt_3_1_2_29() {
    let mut sim = Sim::default();
    sim.broker.set_authorizer(Box::new(DenySecret));
    let quiet = |id: &str| {
        v5(id, |c| {
            c.properties.request_problem_information = Some(false)
        })
    };
    let c = ok(&mut sim, quiet("c"));
    sim.publish(c, "secret/x", QoS::AtLeastOnce, false, b"x");
    let a = sim.expect_puback(c);
    assert_eq!(a.reason_code, ReasonCode::NotAuthorized, "the code still");
    assert_eq!(a.properties.reason_string, None);
    sim.publish(c, "secret/x", QoS::ExactlyOnce, false, b"x");
    let r = sim.expect_pubrec(c);
    assert_eq!(r.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(r.properties.reason_string, None);
    let s = sim.subscribe(c, "secret/#", QoS::AtMostOnce);
    assert_eq!(s.reason_codes, [ReasonCode::NotAuthorized]);
    assert_eq!(s.properties.reason_string, None);
    sim.send(c, Packet::PubRel(PubAck::new(pid(99))));
    match sim.recv(c) {
        Some(Packet::PubComp(a)) => assert_eq!(a.properties.reason_string, None),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // DISCONNECT may carry one regardless.
    sim.send(c, Packet::PingResp);
    let d = disconnect_packet(&mut sim, c);
    assert_eq!(d.reason_code, ReasonCode::ProtocolError);
    assert!(!reason_string(&d.properties.reason_string).is_empty());
}

#[test]
fn reason_string_is_left_out_where_it_would_exceed_the_clients_maximum_packet_size_mqtt_3_4_2_2() {
    // [MQTT-3.2.2-19] [MQTT-3.4.2-2] [MQTT-3.5.2-2] [MQTT-3.7.2-2] [MQTT-3.9.3-1]
    // [MQTT-3.14.2-3]: the Reason String goes only where it fits. 16 bytes hold the
    // CONNACK of the default config (a client whose maximum cannot hold it is closed
    // without one) but none of the negative acknowledgements with a Reason String.
    const MAX: usize = 16;
    let mut sim = sim_with(|c| c.max_client_id_length = 8);
    sim.broker.set_authorizer(Box::new(DenySecret));
    let small = |id: &str| {
        v5(id, |c| {
            c.properties.maximum_packet_size = NonZeroU32::new(MAX as u32);
        })
    };
    // Each step yields exactly one packet: measure it on the wire.
    let sizes = |sim: &mut Sim, c: C, f: &mut dyn FnMut(&mut Sim)| {
        let before = sim.clients[c].raw.len();
        f(sim);
        sim.clients[c].raw.len() - before
    };
    let (r, ack) = sim.connect_with(small("far-too-long-an-id"));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(sim.clients[r].raw.len() <= MAX, "CONNACK refusal");
    let c = sim.accept(V5);
    sim.send(c, Packet::Connect(Box::new(small("c"))));
    sim.recv_all(c);
    let mut checks: Vec<(&str, usize)> = Vec::new();
    checks.push((
        "PUBACK",
        sizes(&mut sim, c, &mut |sim| {
            sim.send_publish(
                c,
                publish_packet("secret/x", QoS::AtLeastOnce, false, Some(pid(1)), b""),
            );
        }),
    ));
    checks.push((
        "PUBREC",
        sizes(&mut sim, c, &mut |sim| {
            sim.send_publish(
                c,
                publish_packet("secret/x", QoS::ExactlyOnce, false, Some(pid(2)), b""),
            );
        }),
    ));
    checks.push((
        "SUBACK",
        sizes(&mut sim, c, &mut |sim| {
            sim.send(
                c,
                Packet::Subscribe(Subscribe {
                    packet_id: pid(3),
                    filters: vec![(
                        TopicFilter::from_static("secret/#").unwrap(),
                        SubscriptionOptions::qos(QoS::AtMostOnce),
                    )],
                    properties: Default::default(),
                }),
            );
        }),
    ));
    checks.push((
        "PUBCOMP",
        sizes(&mut sim, c, &mut |sim| {
            sim.send(c, Packet::PubRel(PubAck::new(pid(4))));
        }),
    ));
    checks.push((
        "DISCONNECT",
        sizes(&mut sim, c, &mut |sim| {
            sim.send(c, Packet::PingResp);
        }),
    ));
    for (name, size) in &checks {
        assert!(*size > 0 && *size <= MAX, "{name}: {size} bytes");
    }
    let got = sim.recv_all(c);
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(matches!(&got[0], Packet::PubAck(a) if a.reason_code == ReasonCode::NotAuthorized));
    assert!(matches!(&got[4], Packet::Disconnect(d) if d.reason_code == ReasonCode::ProtocolError));
}

/// Refuses everyone with a code CONNACK has no row for.
struct ConfusedHook;

impl broker_state::Authenticator for ConfusedHook {
    fn authenticate(
        &mut self,
        _request: &broker_state::AuthRequest<'_>,
    ) -> broker_state::AuthDecision {
        Err(ReasonCode::SessionTakenOver)
    }
}

#[test]
fn authentication_refusal_with_a_code_connack_cannot_carry_is_0x87_mqtt_3_2_2_8() {
    let mut sim = Sim::default();
    sim.broker.set_authenticator(Box::new(ConfusedHook));
    let (c, ack) = sim.connect_with(v5("c", |_| {}));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(sim.closed(c), Some(ReasonCode::NotAuthorized));
    let (c, _) = sim.connect_with(connect_packet(V4, "d", true));
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x05");
}

#[test]
fn mqtt_3_1_1_client_gets_3_1_1_behaviour_for_the_same_failures() {
    let mut sim = sim_with(|c| c.max_client_id_length = 8);
    sim.broker.set_authorizer(Box::new(DenySecret));
    let c = sim.connect(V4, "c", true);
    // Refused PUBLISH: a plain PUBACK/PUBREC [MQTT-3.3.5-2].
    let before = sim.clients[c].raw.len();
    sim.publish(c, "secret/x", QoS::AtLeastOnce, false, b"x");
    assert_eq!(&sim.clients[c].raw[before..], b"\x40\x02\x00\x01");
    sim.recv_all(c);
    let before = sim.clients[c].raw.len();
    sim.publish(c, "secret/y", QoS::ExactlyOnce, false, b"x");
    assert_eq!(&sim.clients[c].raw[before..], b"\x50\x02\x00\x02");
    sim.recv_all(c);
    // Refused SUBSCRIBE: 0x80.
    let before = sim.clients[c].raw.len();
    sim.subscribe(c, "secret/#", QoS::AtMostOnce);
    assert_eq!(&sim.clients[c].raw[before..], b"\x90\x03\x00\x03\x80");
    // PUBREL for an unknown id: a plain PUBCOMP.
    let before = sim.clients[c].raw.len();
    sim.send(c, Packet::PubRel(PubAck::new(pid(9))));
    assert_eq!(&sim.clients[c].raw[before..], b"\x70\x02\x00\x09");
    sim.recv_all(c);
    // A protocol violation: closed without a DISCONNECT.
    let before = sim.clients[c].raw.len();
    sim.send(c, Packet::PingResp);
    assert_eq!(sim.closed(c), Some(ReasonCode::ProtocolError));
    assert_eq!(sim.clients[c].raw.len(), before);
    // A refused CONNECT: the nearest 3.1.1 return code, where 5.0 gets the code and
    // a Reason String.
    let (c, ack) = sim.connect_with(connect_packet(V5, "far-too-long-an-id", true));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(!reason_string(&ack.properties.reason_string).is_empty());
    assert_eq!(sim.closed(c), Some(ReasonCode::ClientIdentifierNotValid));
    let (c, _) = sim.connect_with(connect_packet(V4, "far-too-long-an-id", true));
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x02");
}

// ------------------------------------------------------------------ enhanced authentication

/// "TEST-CR", a two-step challenge/response: CONNECT carries "hello", the server
/// answers "challenge-1", the client "response-1", the server "challenge-2", the
/// client "response-2", and the server finishes with "welcome". Re-authentication
/// (AUTH 0x19) runs the same steps. A wrong answer fails with `fail`.
struct TestCr {
    fail: ReasonCode,
}

const METHOD: &str = "TEST-CR";

impl EnhancedAuthenticator for TestCr {
    fn supports(&self, method: &str) -> bool {
        method == METHOD
    }
    fn start(
        &mut self,
        _method: &str,
        _client_id: &str,
        data: Option<&[u8]>,
        _reauthenticate: bool,
    ) -> AuthStep {
        match data {
            Some(b"hello") => AuthStep::Continue(Some(Bytes::from_static(b"challenge-1"))),
            _ => AuthStep::Failure(self.fail),
        }
    }
    fn step(&mut self, _method: &str, _client_id: &str, data: Option<&[u8]>) -> AuthStep {
        match data {
            Some(b"response-1") => AuthStep::Continue(Some(Bytes::from_static(b"challenge-2"))),
            Some(b"response-2") => AuthStep::Success {
                data: Some(Bytes::from_static(b"welcome")),
                authentication_name: Some("cr-user".into()),
                attributes: None,
                valid_until_ms: None,
            },
            _ => AuthStep::Failure(self.fail),
        }
    }
}

fn cr_sim(fail: ReasonCode) -> Sim {
    let mut sim = Sim::default();
    sim.broker
        .set_enhanced_authenticator(Box::new(TestCr { fail }));
    sim
}

fn expect_auth(sim: &mut Sim, c: C) -> Auth {
    match sim.recv(c) {
        Some(Packet::Auth(a)) => a,
        other => panic!("expected AUTH, got {other:?}"),
    }
}

/// Sends CONNECT with TEST-CR and "hello"; returns the client and the first AUTH.
fn start_cr(sim: &mut Sim, id: &str) -> (C, Auth) {
    let c = sim.accept(V5);
    let p = v5(id, |c| {
        c.properties.authentication_method = Some(MqttString::from_static(METHOD).unwrap());
        c.properties.authentication_data = Some(Bytes::from_static(b"hello"));
    });
    sim.send(c, Packet::Connect(Box::new(p)));
    let a = expect_auth(sim, c);
    (c, a)
}

fn assert_auth(a: &Auth, code: ReasonCode, data: &[u8]) {
    assert_eq!(a.reason_code, code);
    assert_eq!(
        a.properties
            .authentication_method
            .as_ref()
            .map(|m| m.as_str()),
        Some(METHOD),
        "[MQTT-4.12.0-5]"
    );
    assert_eq!(a.properties.authentication_data.as_deref(), Some(data));
}

/// Runs the whole exchange to CONNACK 0x00.
fn connect_cr(sim: &mut Sim, id: &str) -> C {
    let (c, a) = start_cr(sim, id);
    assert_auth(&a, ReasonCode::ContinueAuthentication, b"challenge-1");
    sim.send(
        c,
        auth(ReasonCode::ContinueAuthentication, METHOD, b"response-1"),
    );
    let a = expect_auth(sim, c);
    assert_auth(&a, ReasonCode::ContinueAuthentication, b"challenge-2");
    sim.send(
        c,
        auth(ReasonCode::ContinueAuthentication, METHOD, b"response-2"),
    );
    match sim.recv(c) {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::Success);
            assert_eq!(
                ack.properties
                    .authentication_method
                    .as_ref()
                    .map(|m| m.as_str()),
                Some(METHOD),
                "[MQTT-4.12.0-5]"
            );
            assert_eq!(
                ack.properties.authentication_data.as_deref(),
                Some(&b"welcome"[..])
            );
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c
}

#[test]
fn connect_with_an_unsupported_authentication_method_is_connack_0x8c_mqtt_4_12_0_1() {
    let mut sim = cr_sim(ReasonCode::NotAuthorized);
    let p = v5("c", |c| {
        c.properties.authentication_method = Some(MqttString::from_static("SCRAM-SHA-256").unwrap())
    });
    let (c, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::BadAuthenticationMethod);
    assert!(!reason_string(&ack.properties.reason_string).is_empty());
    assert_eq!(ack.properties.authentication_method, None);
    assert_eq!(sim.closed(c), Some(ReasonCode::BadAuthenticationMethod));
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn auth_exchange_continues_with_0x18_and_ends_in_connack_0x00_mqtt_4_12_0_2_to_5() {
    let mut sim = cr_sim(ReasonCode::NotAuthorized);
    let c = connect_cr(&mut sim, "c");
    assert_eq!(sim.closed(c), None);
    // The connection works like any other, and the session is owned by the name the
    // hook gave ("cr-user"): a plain client with another name cannot take it.
    sim.subscribe(c, "t", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, b"x");
    assert_eq!(sim.publishes(c).len(), 1);
    let mut other = v5("c", |_| {});
    other.username = Some(MqttString::from_static("mallory").unwrap());
    let (_, ack) = sim.connect_with(other);
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
}

#[test]
fn wrong_auth_response_is_connack_with_the_hooks_code_mqtt_4_12_0_4() {
    for fail in [ReasonCode::NotAuthorized, ReasonCode::BadUserNameOrPassword] {
        let mut sim = cr_sim(fail);
        let (c, _) = start_cr(&mut sim, "c");
        sim.send(
            c,
            auth(ReasonCode::ContinueAuthentication, METHOD, b"wrong"),
        );
        match sim.recv(c) {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.reason_code, fail);
                assert_eq!(ack.properties.authentication_method, None);
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        assert_eq!(sim.closed(c), Some(fail));
        assert_eq!(sim.broker.session_count(), 0);
    }
    // A hook failure without an error code is Not authorized.
    let mut sim = cr_sim(ReasonCode::Success);
    let (c, _) = start_cr(&mut sim, "c");
    sim.send(
        c,
        auth(ReasonCode::ContinueAuthentication, METHOD, b"wrong"),
    );
    assert!(
        matches!(sim.recv(c), Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::NotAuthorized)
    );
}

#[test]
fn auth_with_another_method_during_connect_is_refused_without_disconnect_mqtt_3_14_0_1() {
    // Before CONNACK the server may not send DISCONNECT [MQTT-3.14.0-1]: a
    // protocol error in the exchange is a CONNACK 0x82 [MQTT-4.12.0-4].
    let mut sim = cr_sim(ReasonCode::NotAuthorized);
    let (c, _) = start_cr(&mut sim, "c");
    sim.send(
        c,
        auth(ReasonCode::ContinueAuthentication, "OTHER", b"response-1"),
    );
    match sim.recv(c) {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::ProtocolError),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(sim.closed(c), Some(ReasonCode::ProtocolError));
    sim.assert_silent(c);
    // The same for re-authentication before CONNACK [MQTT-4.12.1-1].
    let (c, _) = start_cr(&mut sim, "d");
    sim.send(c, auth(ReasonCode::ReAuthenticate, METHOD, b"hello"));
    assert!(
        matches!(sim.recv(c), Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::ProtocolError)
    );
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn reauthentication_0x19_then_0x18_steps_then_auth_0x00_mqtt_4_12_1_1() {
    let mut sim = cr_sim(ReasonCode::NotAuthorized);
    let c = connect_cr(&mut sim, "c");
    sim.subscribe(c, "t", QoS::AtMostOnce);
    let p = sim.connect(V5, "p", true);
    sim.send(c, auth(ReasonCode::ReAuthenticate, METHOD, b"hello"));
    assert_auth(
        &expect_auth(&mut sim, c),
        ReasonCode::ContinueAuthentication,
        b"challenge-1",
    );
    // Other packets keep flowing during re-authentication.
    sim.publish(p, "t", QoS::AtMostOnce, false, b"meanwhile");
    assert_eq!(payloads(&sim.publishes(c)), vec![&b"meanwhile"[..]]);
    sim.send(
        c,
        auth(ReasonCode::ContinueAuthentication, METHOD, b"response-1"),
    );
    assert_auth(
        &expect_auth(&mut sim, c),
        ReasonCode::ContinueAuthentication,
        b"challenge-2",
    );
    sim.send(
        c,
        auth(ReasonCode::ContinueAuthentication, METHOD, b"response-2"),
    );
    assert_auth(&expect_auth(&mut sim, c), ReasonCode::Success, b"welcome");
    assert_eq!(sim.closed(c), None);
    // And again, later.
    sim.send(c, auth(ReasonCode::ReAuthenticate, METHOD, b"hello"));
    assert_auth(
        &expect_auth(&mut sim, c),
        ReasonCode::ContinueAuthentication,
        b"challenge-1",
    );
}

#[test]
fn failed_reauthentication_is_disconnect_with_the_hooks_code_mqtt_4_12_1_2() {
    // 0x86 exists in CONNACK only: on DISCONNECT it becomes 0x87 [MQTT-3.14.2.1].
    for (fail, sent) in [
        (ReasonCode::NotAuthorized, ReasonCode::NotAuthorized),
        (
            ReasonCode::BadAuthenticationMethod,
            ReasonCode::BadAuthenticationMethod,
        ),
        (ReasonCode::BadUserNameOrPassword, ReasonCode::NotAuthorized),
    ] {
        let mut sim = cr_sim(fail);
        let c = connect_cr(&mut sim, "c");
        sim.send(c, auth(ReasonCode::ReAuthenticate, METHOD, b"hello"));
        expect_auth(&mut sim, c);
        sim.send(
            c,
            auth(ReasonCode::ContinueAuthentication, METHOD, b"wrong"),
        );
        let d = disconnect_packet(&mut sim, c);
        assert_eq!(d.reason_code, sent, "{fail:?}");
        assert!(!reason_string(&d.properties.reason_string).is_empty());
        assert_eq!(sim.closed(c), Some(sent));
    }
    // A wrong first step fails at once.
    let mut sim = cr_sim(ReasonCode::NotAuthorized);
    let c = connect_cr(&mut sim, "c");
    sim.send(c, auth(ReasonCode::ReAuthenticate, METHOD, b"not hello"));
    assert_eq!(sim.expect_disconnect(c), ReasonCode::NotAuthorized);
}

#[test]
fn reauthentication_with_another_method_is_disconnect_0x82_mqtt_4_12_1_1() {
    let mut sim = cr_sim(ReasonCode::NotAuthorized);
    let c = connect_cr(&mut sim, "c");
    sim.send(c, auth(ReasonCode::ReAuthenticate, "OTHER", b"hello"));
    let d = disconnect_packet(&mut sim, c);
    assert_eq!(d.reason_code, ReasonCode::ProtocolError);
    assert!(!reason_string(&d.properties.reason_string).is_empty());
    // AUTH 0x18 with no re-authentication running is a protocol error too.
    let c = connect_cr(&mut sim, "d");
    sim.send(
        c,
        auth(ReasonCode::ContinueAuthentication, METHOD, b"response-1"),
    );
    assert_eq!(sim.expect_disconnect(c), ReasonCode::ProtocolError);
}

/// Accepts the right token at once: CONNACK follows CONNECT without AUTH packets.
const ONE_STEP: OneStepToken = OneStepToken(|data| match data {
    Some(b"token") => AuthStep::allow(Some("token-user".into())),
    _ => AuthStep::Failure(ReasonCode::NotAuthorized),
});

#[test]
fn reauthentication_after_a_connect_authenticated_in_one_step_mqtt_4_12_1_1() {
    let mut sim = Sim::default();
    sim.broker.set_enhanced_authenticator(Box::new(ONE_STEP));
    let c = ok(
        &mut sim,
        v5("c", |c| {
            c.properties.authentication_method = Some(MqttString::from_static("TOKEN").unwrap());
            c.properties.authentication_data = Some(Bytes::from_static(b"token"));
        }),
    );
    // "If the Client supplied an Authentication Method in the CONNECT packet it can
    // initiate a re-authentication at any time after receiving a CONNACK."
    sim.send(c, auth(ReasonCode::ReAuthenticate, "TOKEN", b"token"));
    let a = expect_auth(&mut sim, c);
    assert_eq!(a.reason_code, ReasonCode::Success);
    assert_eq!(sim.closed(c), None);
    sim.send(c, auth(ReasonCode::ReAuthenticate, "TOKEN", b"stale"));
    assert_eq!(sim.expect_disconnect(c), ReasonCode::NotAuthorized);
}

#[test]
fn auth_from_a_client_that_did_not_use_enhanced_auth_is_disconnect_0x82_mqtt_4_12_0_7() {
    let mut sim = cr_sim(ReasonCode::NotAuthorized);
    let (c, ack) = sim.connect_with(v5("plain", |_| {}));
    assert_eq!(
        ack.properties.authentication_method, None,
        "[MQTT-4.12.0-6]"
    );
    sim.send(c, auth(ReasonCode::ReAuthenticate, METHOD, b"hello"));
    let d = disconnect_packet(&mut sim, c);
    assert_eq!(d.reason_code, ReasonCode::ProtocolError);
    assert!(!reason_string(&d.properties.reason_string).is_empty());
    assert_eq!(sim.closed(c), Some(ReasonCode::ProtocolError));
}

/// A QoS 0 message to several receivers is held once and encoded for each: every
/// receiver still gets its own RETAIN flag [MQTT-3.3.1-12], its own Subscription
/// Identifier [MQTT-3.3.4-3], its protocol's encoding, its own topic alias, and
/// nothing over its Maximum Packet Size [MQTT-3.1.2-24]; a receiver that goes away
/// with the message unsent takes nothing from the others.
#[test]
fn a_qos0_fan_out_is_encoded_for_each_receiver_mqtt_3_3_1_12_and_3_3_4_3() {
    let mut sim = Sim::default();
    let old = sim.connect(V4, "old", true);
    let keep = sim.connect(V5, "keep", true);
    let alias = ok(
        &mut sim,
        v5("alias", |c| c.properties.topic_alias_maximum = Some(4)),
    );
    let small = ok(
        &mut sim,
        v5("small", |c| {
            c.properties.maximum_packet_size = NonZeroU32::new(40)
        }),
    );
    let gone = sim.connect(V5, "gone", true);
    sim.subscribe(old, "f/t", QoS::AtMostOnce);
    sim.subscribe_opts(
        keep,
        "f/+",
        opts(QoS::AtMostOnce, |o| o.retain_as_published = true),
        Some(9),
    );
    for c in [alias, small, gone] {
        sim.subscribe(c, "f/t", QoS::AtMostOnce);
    }
    sim.reading[gone] = false;

    let p = sim.connect(V5, "p", true);
    let mut m = publish_packet("f/t", QoS::AtMostOnce, true, None, &[7u8; 48]);
    m.properties.user_properties = props(&[("k", "v")]);
    m.properties.message_expiry_interval = Some(60);
    sim.send_publish(p, m.clone());
    sim.send_publish(p, m);
    sim.kill(gone);
    sim.broker.check_invariants().expect("invariants");

    let got = sim.publishes(old);
    assert_eq!(got.len(), 2);
    for m in &got {
        assert!(!m.retain, "[MQTT-3.3.1-12] without Retain As Published");
        assert_eq!(m.topic.as_str(), "f/t");
        assert_eq!(m.payload.as_ref(), &[7u8; 48]);
    }
    let got = sim.publishes(keep);
    assert_eq!(got.len(), 2);
    for m in &got {
        assert!(m.retain, "Retain As Published");
        let ids: Vec<u32> = m
            .properties
            .subscription_identifiers
            .iter()
            .map(|i| i.get())
            .collect();
        assert_eq!(ids, [9], "[MQTT-3.3.4-3]");
        assert_eq!(
            pairs(&m.properties.user_properties),
            [("k".into(), "v".into())]
        );
        assert_eq!(m.properties.message_expiry_interval, Some(60));
        assert_eq!(m.properties.topic_alias, None);
    }
    let got = sim.publishes(alias);
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].topic.as_str(), got[0].properties.topic_alias),
        ("f/t", NonZeroU16::new(1))
    );
    assert_eq!(
        (got[1].topic.as_str(), got[1].properties.topic_alias),
        ("", NonZeroU16::new(1)),
        "the second one by its alias alone"
    );
    assert!(got
        .iter()
        .all(|m| !m.retain && m.properties.subscription_identifiers.is_empty()));
    assert_eq!(sim.publishes(small).len(), 0, "[MQTT-3.1.2-24]");
    assert_eq!(sim.broker.stats().dropped_too_large, 2);
}
