//! PUBLISH at QoS 0, 1 and 2 in both directions: the flows, packet identifiers, DUP,
//! exactly-once, offline queueing, ordering, expiry and topic aliases.
mod sim;

use std::collections::HashSet;
use std::time::Duration;

use core::num::NonZeroU16;
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// A persistent subscriber (3.1.1 Clean Session 0, or 5.0 with expiry 600).
fn persistent(sim: &mut Sim, v: ProtocolVersion, client_id: &str) -> (C, ConnAck) {
    let mut p = connect_packet(v, client_id, false);
    p.properties.session_expiry_interval = v.is_v5().then_some(600);
    sim.connect_with(p)
}

// ------------------------------------------------------------------ flows

#[test]
fn qos0_is_forwarded_without_packet_id_or_acknowledgement_mqtt_4_3_1() {
    for (pv, sv) in [(V4, V5), (V5, V4)] {
        let mut sim = Sim::default();
        let s = sim.connect(sv, "s", true);
        let p = sim.connect(pv, "p", true);
        sim.subscribe(s, "t", QoS::ExactlyOnce);
        sim.publish(p, "t", QoS::AtMostOnce, false, b"fire and forget");
        sim.assert_silent(p);
        let got = sim.publishes(s);
        assert_eq!(payloads(&got), vec![&b"fire and forget"[..]]);
        assert_eq!(
            (got[0].qos, got[0].packet_id, got[0].dup),
            (QoS::AtMostOnce, None, false)
        );
    }
}

#[test]
fn qos1_flow_publish_puback_both_directions_mqtt_4_3_2() {
    for (pv, sv) in [(V4, V5), (V5, V4)] {
        let mut sim = Sim::default();
        let s = sim.connect(sv, "s", true);
        let p = sim.connect(pv, "p", true);
        sim.subscribe(s, "t", QoS::AtLeastOnce);
        let pid = sim.publish(p, "t", QoS::AtLeastOnce, false, b"m").unwrap();
        let ack = sim.expect_puback(p);
        assert_eq!((ack.packet_id, ack.reason_code), (pid, ReasonCode::Success));
        sim.assert_silent(p);

        let got = sim.publishes(s);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].qos, QoS::AtLeastOnce);
        assert!(!got[0].dup);
        let sid = got[0].packet_id.expect("QoS 1 has a packet id");
        sim.send(s, Packet::PubAck(PubAck::new(sid)));
        sim.assert_silent(s);
    }
}

#[test]
fn qos2_flow_publish_pubrec_pubrel_pubcomp_both_directions_mqtt_4_3_3() {
    for (pv, sv) in [(V4, V5), (V5, V4)] {
        let mut sim = Sim::default();
        let s = sim.connect(sv, "s", true);
        let p = sim.connect(pv, "p", true);
        sim.subscribe(s, "t", QoS::ExactlyOnce);

        // Client to broker.
        sim.publish_qos2_complete(p, "t", b"m");
        sim.assert_silent(p);

        // Broker to client.
        let got = sim.publishes(s);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].qos, QoS::ExactlyOnce);
        let sid = got[0].packet_id.unwrap();
        sim.send(s, Packet::PubRec(PubAck::new(sid)));
        match sim.recv(s) {
            Some(Packet::PubRel(r)) => {
                assert_eq!((r.packet_id, r.reason_code), (sid, ReasonCode::Success))
            }
            other => panic!("expected PUBREL, got {other:?}"),
        }
        sim.send(s, Packet::PubComp(PubAck::new(sid)));
        sim.assert_silent(s);
    }
}

#[test]
fn publish_without_subscribers_gets_0x10_in_5_0_mqtt_3_4_2_1() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "nobody", QoS::AtLeastOnce, false, b"m");
    assert_eq!(
        sim.expect_puback(p).reason_code,
        ReasonCode::NoMatchingSubscribers
    );
    let p4 = sim.connect(V4, "p4", true);
    sim.publish(p4, "nobody", QoS::AtLeastOnce, false, b"m");
    assert_eq!(sim.expect_puback(p4).reason_code, ReasonCode::Success);
}

// ------------------------------------------------------------------ exactly once

#[test]
fn qos2_duplicate_publish_is_not_routed_twice_mqtt_4_3_3_9() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let s = sim.connect(V5, "s", true);
        sim.subscribe(s, "t", QoS::ExactlyOnce);
        let p = sim.connect(v, "p", true);
        let mut m = publish_packet("t", QoS::ExactlyOnce, false, Some(id(1)), b"once");
        sim.send_publish(p, m.clone());
        assert_eq!(sim.expect_pubrec(p).packet_id, id(1));
        m.dup = true;
        sim.send_publish(p, m.clone());
        assert_eq!(sim.expect_pubrec(p).packet_id, id(1));
        assert_eq!(sim.publishes(s).len(), 1, "{v}: routed once");

        // Released: the id is free again, and a new message with it is a new message.
        sim.send(p, Packet::PubRel(PubAck::new(id(1))));
        assert!(matches!(sim.recv(p), Some(Packet::PubComp(_))));
        m.dup = false;
        m.payload = b"again".to_vec().into();
        sim.send_publish(p, m);
        assert_eq!(sim.expect_pubrec(p).packet_id, id(1));
        assert_eq!(payloads(&sim.publishes(s)), vec![&b"again"[..]]);
    }
}

#[test]
fn qos2_publish_resent_after_reconnect_is_not_routed_twice_mqtt_4_3_3_9() {
    let mut sim = Sim::default();
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "t", QoS::ExactlyOnce);
    let (p, _) = persistent(&mut sim, V4, "p");
    let mut m = publish_packet("t", QoS::ExactlyOnce, false, Some(id(9)), b"once");
    sim.send_publish(p, m.clone());
    sim.kill(p); // the PUBREC is lost with the connection
    let (p, ack) = persistent(&mut sim, V4, "p");
    assert!(ack.session_present);
    m.dup = true;
    sim.send_publish(p, m);
    assert_eq!(sim.expect_pubrec(p).packet_id, id(9));
    sim.send(p, Packet::PubRel(PubAck::new(id(9))));
    assert!(
        matches!(sim.recv(p), Some(Packet::PubComp(c)) if c.reason_code == ReasonCode::Success)
    );
    assert_eq!(sim.publishes(s).len(), 1);
}

#[test]
fn pubrel_for_an_unknown_packet_id_gets_pubcomp_0x92_in_5_0_mqtt_3_7_2_1() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    sim.send(p, Packet::PubRel(PubAck::new(id(77))));
    match sim.recv(p) {
        Some(Packet::PubComp(c)) => {
            assert_eq!(c.packet_id, id(77));
            assert_eq!(c.reason_code, ReasonCode::PacketIdentifierNotFound);
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
}

#[test]
fn more_unreleased_qos2_than_receive_maximum_is_0x93_mqtt_3_3_4_9() {
    let mut sim = Sim::new(broker_state::Config {
        receive_maximum: 2,
        ..broker_state::Config::default()
    });
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::ExactlyOnce, false, b"1");
    sim.publish(p, "t", QoS::ExactlyOnce, false, b"2");
    sim.recv_all(p);
    sim.publish(p, "t", QoS::ExactlyOnce, false, b"3");
    assert_eq!(sim.expect_disconnect(p), ReasonCode::ReceiveMaximumExceeded);
    assert_eq!(sim.closed(p), Some(ReasonCode::ReceiveMaximumExceeded));
}

/// The server's Receive Maximum is a 5.0 CONNACK property: a 3.1.1 (or 3.1) client is
/// never told one, and may keep as many QoS 2 flows unreleased as it has packet ids,
/// each kept until its PUBREL [MQTT-4.3.3-2] and completed exactly once.
#[test]
fn mqtt_3_1_1_has_no_receive_maximum_unreleased_qos2_beyond_it_are_kept_mqtt_4_3_3_2() {
    for v in [ProtocolVersion::V3_1, V4] {
        let mut sim = Sim::new(broker_state::Config {
            receive_maximum: 2,
            ..broker_state::Config::default()
        });
        let s = sim.connect(V5, "s", true);
        sim.subscribe(s, "t", QoS::AtMostOnce);
        let p = sim.connect(v, "p", true);
        for n in 1..=50u8 {
            sim.publish(p, "t", QoS::ExactlyOnce, false, &[n]);
            assert_eq!(sim.expect_pubrec(p).packet_id, id(u16::from(n)), "{v}");
        }
        assert_eq!(sim.closed(p), None, "{v}: not disconnected");
        assert_eq!(sim.publishes(s).len(), 50, "{v}");
        // A duplicate is still recognised, and every flow completes.
        let mut dup = publish_packet("t", QoS::ExactlyOnce, false, Some(id(1)), &[1]);
        dup.dup = true;
        sim.send_publish(p, dup);
        assert_eq!(sim.expect_pubrec(p).packet_id, id(1));
        for n in 1..=50 {
            sim.send(p, Packet::PubRel(PubAck::new(id(n))));
            assert!(
                matches!(sim.recv(p), Some(Packet::PubComp(c)) if c.packet_id == id(n) && c.reason_code == ReasonCode::Success),
                "{v}: PUBCOMP {n}"
            );
        }
        sim.assert_silent(s);
        assert_eq!(sim.closed(p), None, "{v}");
    }
}

// ------------------------------------------------------------------ packet ids

#[test]
fn outbound_packet_ids_are_distinct_and_non_zero_mqtt_2_2_1_3() {
    let mut sim = Sim::default();
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "t", QoS::ExactlyOnce);
    let p = sim.connect(V5, "p", true);
    for i in 0..200u16 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        sim.publish(p, "t", qos, false, &i.to_be_bytes());
    }
    let got = sim.publishes(s);
    assert_eq!(got.len(), 200);
    let ids: HashSet<u16> = got.iter().map(|p| p.packet_id.unwrap().get()).collect();
    assert_eq!(ids.len(), 200, "all in flight at once: all distinct");
}

#[test]
fn packet_id_in_flight_is_not_reused_when_ids_wrap_mqtt_2_2_1_3() {
    let mut sim = Sim::default();
    let s = sim.connect(V4, "s", true);
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    let p = sim.connect(V4, "p", true);
    // The first message stays unacknowledged while 70,000 others go through.
    sim.publish(p, "t", QoS::AtMostOnce, false, b"warm-up");
    sim.recv_all(s);
    let m = publish_packet("t", QoS::AtLeastOnce, false, Some(id(1)), b"held");
    sim.send_publish(p, m.clone());
    let held = sim.publishes(s)[0].packet_id.unwrap();
    for _ in 0..70_000u32 {
        sim.send_publish(p, m.clone());
        let got = sim.publishes(s);
        let pid = got[0].packet_id.unwrap();
        assert_ne!(pid, held, "an id in flight was handed out again");
        sim.send(s, Packet::PubAck(PubAck::new(pid)));
    }
    sim.recv_all(p);
    sim.send(s, Packet::PubAck(PubAck::new(held)));
    sim.assert_silent(s);
}

// ------------------------------------------------------------------ DUP

#[test]
fn dup_is_set_on_redelivery_after_reconnect_and_never_otherwise_mqtt_4_4_0_1() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let (s, _) = persistent(&mut sim, v, "s");
        sim.subscribe(s, "t", QoS::ExactlyOnce);
        let p = sim.connect(V5, "p", true);
        sim.publish(p, "t", QoS::AtLeastOnce, false, b"one");
        sim.publish(p, "t", QoS::ExactlyOnce, false, b"two");
        let first = sim.publishes(s);
        assert!(
            first.iter().all(|m| !m.dup),
            "{v}: first delivery has DUP 0"
        );
        sim.kill(s);
        sim.publish(p, "t", QoS::AtLeastOnce, false, b"three"); // queued, never sent

        let (s, ack) = persistent(&mut sim, v, "s");
        assert!(ack.session_present);
        let again = sim.publishes(s);
        assert_eq!(payloads(&again), vec![&b"one"[..], b"two", b"three"], "{v}");
        for (a, b) in first.iter().zip(&again) {
            assert!(b.dup, "{v}: redelivery has DUP 1 [MQTT-3.3.1-1]");
            assert_eq!(a.packet_id, b.packet_id, "{v}: same packet id");
        }
        assert!(!again[2].dup, "{v}: first sent now: DUP 0");
        sim.ack_all(s, &again);

        // Acknowledged: not sent again on the next reconnect.
        sim.disconnect(s);
        let (s, _) = persistent(&mut sim, v, "s");
        sim.assert_silent(s);
    }
}

#[test]
fn pubrel_is_resent_for_a_released_qos2_message_after_reconnect_mqtt_4_4_0_1() {
    let mut sim = Sim::default();
    let (s, _) = persistent(&mut sim, V5, "s");
    sim.subscribe(s, "t", QoS::ExactlyOnce);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::ExactlyOnce, false, b"m");
    let got = sim.publishes(s);
    let sid = got[0].packet_id.unwrap();
    sim.send(s, Packet::PubRec(PubAck::new(sid)));
    assert!(matches!(sim.recv(s), Some(Packet::PubRel(_))));
    sim.kill(s);

    let (s, _) = persistent(&mut sim, V5, "s");
    match sim.recv_all(s).as_slice() {
        [Packet::PubRel(r)] => assert_eq!(r.packet_id, sid),
        other => panic!("expected only PUBREL, got {other:?}"),
    }
    sim.send(s, Packet::PubComp(PubAck::new(sid)));
    sim.disconnect(s);
    let (s, _) = persistent(&mut sim, V5, "s");
    sim.assert_silent(s);
}

// ------------------------------------------------------------------ offline queue

#[test]
fn offline_persistent_sessions_queue_qos1_and_qos2_but_not_qos0_mqtt_3_1_2_5() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let (s, _) = persistent(&mut sim, v, "s");
        sim.subscribe(s, "t", QoS::ExactlyOnce);
        sim.disconnect(s);
        let p = sim.connect(V5, "p", true);
        sim.publish(p, "t", QoS::AtMostOnce, false, b"q0");
        sim.publish(p, "t", QoS::AtLeastOnce, false, b"q1");
        sim.publish(p, "t", QoS::ExactlyOnce, false, b"q2");
        assert_eq!(sim.broker.queued_messages("s"), Some(2));
        let (s, _) = persistent(&mut sim, v, "s");
        let got = sim.publishes(s);
        assert_eq!(payloads(&got), vec![&b"q1"[..], b"q2"], "{v}");
        assert_eq!(got[0].qos, QoS::AtLeastOnce);
        assert_eq!(got[1].qos, QoS::ExactlyOnce);
    }
}

#[test]
fn clean_sessions_queue_nothing_after_the_connection_ends() {
    let mut sim = Sim::default();
    let s = sim.connect(V4, "s", true);
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    let p = sim.connect(V4, "p", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, b"lost");
    assert_eq!(sim.broker.queued_messages("s"), None);
    let (s, ack) = sim.connect_with(connect_packet(V4, "s", false));
    assert!(!ack.session_present);
    sim.assert_silent(s);
}

// ------------------------------------------------------------------ ordering

#[test]
fn messages_keep_their_order_per_topic_per_publisher_mqtt_4_6_0_5() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let mut c = connect_packet(v, "s", false);
        if v.is_v5() {
            c.properties.session_expiry_interval = Some(600);
            c.properties.receive_maximum = NonZeroU16::new(3);
        }
        let (s, _) = sim.connect_with(c.clone());
        sim.subscribe(s, "t", QoS::ExactlyOnce);
        let p = sim.connect(V5, "p", true);
        let mut got = Vec::new();
        for i in 0..30u8 {
            let qos = if i % 3 == 0 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            sim.publish(p, "t", qos, false, &[i]);
            if i == 10 {
                // Part of the stream is in flight, part queued, when the client drops.
                sim.kill(s);
            }
        }
        // After the reconnect: the unacknowledged ones again (DUP 1), then the
        // queued ones, as the window allows; together, the publisher's order.
        let (s, _) = sim.connect_with(c);
        loop {
            let batch = sim.publishes(s);
            if batch.is_empty() {
                break;
            }
            sim.ack_all(s, &batch);
            got.extend(batch);
        }
        let order: Vec<u8> = got.iter().map(|m| m.payload[0]).collect();
        assert_eq!(order, (0..30).collect::<Vec<u8>>(), "{v}");
        let resent = got.iter().take_while(|m| m.dup).count();
        assert_eq!(resent, if v.is_v5() { 3 } else { 11 }, "{v}");
    }
}

// ------------------------------------------------------------------ 5.0 expiry

#[test]
fn queued_message_expires_and_delivered_expiry_is_the_time_left_mqtt_3_3_2_5() {
    let mut sim = Sim::default();
    let (s, _) = persistent(&mut sim, V5, "s");
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    let p = sim.connect(V5, "p", true);
    let mut short = publish_packet("t", QoS::AtLeastOnce, false, Some(id(1)), b"short");
    short.properties.message_expiry_interval = Some(5);
    let mut long = publish_packet("t", QoS::AtLeastOnce, false, Some(id(2)), b"long");
    long.properties.message_expiry_interval = Some(100);
    sim.send_publish(p, short);
    sim.send_publish(p, long);
    sim.advance(Duration::from_secs(10));
    let (s, _) = persistent(&mut sim, V5, "s");
    let got = sim.publishes(s);
    assert_eq!(payloads(&got), vec![&b"long"[..]], "[MQTT-3.3.2-5]");
    assert_eq!(
        got[0].properties.message_expiry_interval,
        Some(90),
        "[MQTT-3.3.2-6]"
    );
    assert_eq!(sim.broker.stats().expired, 1);
}

// ------------------------------------------------------------------ topic aliases

#[test]
fn inbound_topic_alias_stands_for_the_topic_it_was_set_with_mqtt_3_3_2_12() {
    let mut sim = Sim::default();
    let s = sim.connect(V4, "s", true);
    sim.subscribe(s, "#", QoS::AtMostOnce);
    let p = sim.connect(V5, "p", true);
    let mut m = publish_packet("long/topic/name", QoS::AtMostOnce, false, None, b"1");
    m.properties.topic_alias = NonZeroU16::new(1);
    sim.send_publish(p, m.clone());
    m.topic = TopicName::from_static("").unwrap();
    m.payload = b"2".to_vec().into();
    sim.send_publish(p, m.clone());
    let got = sim.publishes(s);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| g.topic.as_str() == "long/topic/name"));

    // An alias above Topic Alias Maximum (10 by default) is 0x94.
    m.properties.topic_alias = NonZeroU16::new(11);
    sim.send_publish(p, m);
    assert_eq!(sim.expect_disconnect(p), ReasonCode::TopicAliasInvalid);
}
