//! Acknowledgements against the flow of the packet identifier they name (section
//! 4.3), and the client's Maximum Packet Size as a hard ceiling on everything the
//! broker sends ([MQTT-3.1.2-24]).
mod sim;

use core::num::NonZeroU32;
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A subscriber on "t" at `qos` with one message in flight; returns the subscriber,
/// the publisher and the in-flight packet id.
fn one_in_flight(sim: &mut Sim, v: ProtocolVersion, qos: QoS) -> (C, C, PacketId) {
    let s = sim.connect(v, "s", true);
    sim.subscribe(s, "t", qos);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", qos, false, b"m");
    sim.recv_all(p);
    let got = sim.publishes(s);
    assert_eq!(got.len(), 1);
    (s, p, got[0].packet_id.expect("QoS 1/2 has an id"))
}

/// The subscriber broke the flow: 5.0 gets DISCONNECT 0x82, 3.1.1 is closed without
/// a packet [MQTT-4.13.1-1] [MQTT-4.8.0-1].
fn assert_protocol_error(sim: &mut Sim, s: C, v: ProtocolVersion, what: &str) {
    if v.is_v5() {
        assert_eq!(
            sim.expect_disconnect(s),
            ReasonCode::ProtocolError,
            "{what}"
        );
    }
    assert_eq!(sim.closed(s), Some(ReasonCode::ProtocolError), "{what}");
    sim.assert_silent(s);
}

fn ack(kind: fn(PubAck) -> Packet, id: PacketId, code: ReasonCode) -> Packet {
    let mut a = PubAck::new(id);
    a.reason_code = code;
    kind(a)
}

#[test]
fn an_acknowledgement_that_does_not_fit_its_flow_is_a_protocol_error_4_3() {
    type Kind = fn(PubAck) -> Packet;
    let cases: Vec<(QoS, Vec<Kind>, &str)> = vec![
        (QoS::AtLeastOnce, vec![Packet::PubRec], "PUBREC for QoS 1"),
        (QoS::AtLeastOnce, vec![Packet::PubComp], "PUBCOMP for QoS 1"),
        (QoS::ExactlyOnce, vec![Packet::PubAck], "PUBACK for QoS 2"),
        (
            QoS::ExactlyOnce,
            vec![Packet::PubComp],
            "PUBCOMP before PUBREL",
        ),
        (
            QoS::ExactlyOnce,
            vec![Packet::PubRec, Packet::PubAck],
            "PUBACK for a released QoS 2",
        ),
    ];
    for v in [V4, V5] {
        for (qos, acks, what) in &cases {
            let mut sim = Sim::default();
            let (s, _, id) = one_in_flight(&mut sim, v, *qos);
            let (last, first) = acks.split_last().expect("one ack at least");
            for kind in first {
                sim.send(s, kind(PubAck::new(id)));
                assert!(matches!(sim.recv(s), Some(Packet::PubRel(_))), "{what}");
            }
            sim.send(s, last(PubAck::new(id)));
            assert_protocol_error(&mut sim, s, v, &format!("{v}: {what}"));
        }
    }
}

#[test]
fn a_failed_pubrec_after_a_successful_one_is_a_protocol_error_4_3_3() {
    let mut sim = Sim::default();
    let (s, _, id) = one_in_flight(&mut sim, V5, QoS::ExactlyOnce);
    sim.send(s, Packet::PubRec(PubAck::new(id)));
    assert!(matches!(sim.recv(s), Some(Packet::PubRel(_))));
    sim.send(s, ack(Packet::PubRec, id, ReasonCode::UnspecifiedError));
    assert_protocol_error(&mut sim, s, V5, "PUBREC 0x80 after PUBREC 0x00");
}

#[test]
fn a_repeated_pubrec_gets_the_pubrel_again_4_3_3() {
    let mut sim = Sim::default();
    let (s, _, id) = one_in_flight(&mut sim, V5, QoS::ExactlyOnce);
    for _ in 0..2 {
        sim.send(s, Packet::PubRec(PubAck::new(id)));
        match sim.recv(s) {
            Some(Packet::PubRel(r)) => {
                assert_eq!((r.packet_id, r.reason_code), (id, ReasonCode::Success))
            }
            other => panic!("expected PUBREL, got {other:?}"),
        }
    }
    sim.send(s, Packet::PubComp(PubAck::new(id)));
    sim.assert_silent(s);
    assert_eq!(sim.closed(s), None);
}

#[test]
fn a_failed_pubrec_ends_the_flow_without_any_pubrel_4_3_3() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let mut c = connect_packet(v, "s", true);
        // A window of one: the next message only goes out once the flow has ended.
        c.properties.receive_maximum = core::num::NonZeroU16::new(1);
        let (s, _) = sim.connect_with(c);
        sim.subscribe(s, "t", QoS::ExactlyOnce);
        let p = sim.connect(V5, "p", true);
        sim.publish(p, "t", QoS::ExactlyOnce, false, b"one");
        sim.publish(p, "t", QoS::ExactlyOnce, false, b"two");
        let first = sim.publishes(s);
        let id = first[0].packet_id.expect("QoS 2");
        if v.is_v5() {
            assert_eq!(payloads(&first), vec![&b"one"[..]]);
            sim.send(s, ack(Packet::PubRec, id, ReasonCode::QuotaExceeded));
            let next = sim.publishes(s);
            assert_eq!(payloads(&next), vec![&b"two"[..]], "the window moved on");
            // An unknown id with a failure code: nothing, not even PUBREL 0x92.
            let unknown = PacketId::new(999).expect("non-zero");
            sim.send(
                s,
                ack(Packet::PubRec, unknown, ReasonCode::UnspecifiedError),
            );
            sim.assert_silent(s);
            // With success: PUBREL 0x92 Packet Identifier not found.
            sim.send(s, Packet::PubRec(PubAck::new(unknown)));
            match sim.recv(s) {
                Some(Packet::PubRel(r)) => assert_eq!(
                    (r.packet_id, r.reason_code),
                    (unknown, ReasonCode::PacketIdentifierNotFound)
                ),
                other => panic!("expected PUBREL 0x92, got {other:?}"),
            }
            assert_eq!(sim.closed(s), None);
        } else {
            // 3.1.1 has no failure codes: the flow goes on as usual.
            sim.ack_all(s, &first);
        }
    }
}

#[test]
fn acknowledgements_for_ids_not_in_flight_are_ignored() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let (s, _, id) = one_in_flight(&mut sim, v, QoS::AtLeastOnce);
        sim.send(s, Packet::PubAck(PubAck::new(id)));
        for kind in [Packet::PubAck, Packet::PubComp] {
            sim.send(s, kind(PubAck::new(id)));
        }
        sim.assert_silent(s);
        assert_eq!(sim.closed(s), None, "{v}");
    }
}

// ------------------------------------------------------------------ Maximum Packet Size

/// The sizes of the packets in `raw`, read off their fixed headers.
fn packet_sizes(raw: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        loop {
            let b = raw[i];
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let size = i - at + len;
        sizes.push(size);
        at += size;
    }
    sizes
}

#[test]
fn a_client_whose_maximum_packet_size_cannot_hold_the_connack_is_closed_without_it_mqtt_3_1_2_24() {
    let mut sim = Sim::default();
    // Its session is online elsewhere: the refused client must not take it over.
    let (old, _) = sim.connect_v5("dev", false, Some(600));
    let mut c = connect_packet(V5, "dev", false);
    c.properties.session_expiry_interval = Some(600);
    c.properties.maximum_packet_size = NonZeroU32::new(8);
    let new = sim.accept(V5);
    sim.send(new, Packet::Connect(Box::new(c)));
    assert!(sim.clients[new].raw.is_empty(), "nothing may be sent to it");
    assert_eq!(sim.closed(new), Some(ReasonCode::PacketTooLarge));
    assert_eq!(sim.closed(old), None, "no takeover");
    sim.assert_silent(old);
}

#[test]
fn nothing_above_the_clients_maximum_packet_size_is_ever_sent_mqtt_3_1_2_24() {
    let mut sim = Sim::default();
    let max = 24;
    let mut c = connect_packet(V5, "small", true);
    c.properties.maximum_packet_size = NonZeroU32::new(max);
    let (s, ack) = sim.connect_with(c);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    // A SUBACK with one reason code fits.
    sim.subscribe(s, "a", QoS::AtLeastOnce);
    // One with 30 cannot, even without its Reason String: the connection ends.
    let packet_id = sim.next_id(s);
    let sub = Subscribe {
        packet_id,
        filters: (0..30)
            .map(|i| {
                (
                    TopicFilter::copy_from_str(&format!("f/{i}")).expect("filter"),
                    SubscriptionOptions::qos(QoS::AtMostOnce),
                )
            })
            .collect(),
        properties: Default::default(),
    };
    sim.send(s, Packet::Subscribe(sub));
    assert_eq!(sim.closed(s), Some(ReasonCode::PacketTooLarge));
    let sizes = packet_sizes(&sim.clients[s].raw);
    assert!(sizes.iter().all(|&n| n <= max as usize), "{sizes:?}");
    // The session is detached as if the transport had dropped.
    assert_eq!(sim.broker.connection_count(), 0);
}
