//! What waits for the store: acknowledgements of what a restart must keep go out
//! once the store has made it durable (`handle_store_committed`), are refused when
//! it could not (`handle_store_failed`), and what comes back after a restart:
//! in-flight packet ids, QoS 2 exactly-once state, wills.
mod sim;

use std::time::Duration;

use broker_state::Config;
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn durable() -> Config {
    Config {
        store_effects: true,
        ..Config::default()
    }
}

/// A sim whose store commits only when the test says so.
fn held() -> Sim {
    let mut sim = Sim::new(durable());
    sim.auto_commit = false;
    sim
}

/// A persistent subscriber on `t` (5.0, expiry 600 s), online.
fn persistent_subscriber(sim: &mut Sim, id: &str) -> C {
    let (s, _) = sim.connect_v5(id, false, Some(600));
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    s
}

#[test]
fn puback_waits_until_the_message_is_durable_for_a_persistent_session() {
    let mut sim = Sim::new(durable());
    let s = persistent_subscriber(&mut sim, "s");
    sim.auto_commit = false;
    let p = sim.connect(V5, "p", true);
    let id = sim.publish(p, "t", QoS::AtLeastOnce, false, b"1").unwrap();
    // Delivered at once; acknowledged only once durable.
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"1"[..]]);
    sim.assert_silent(p);
    assert_eq!(sim.broker.acks_waiting_for_store(), 1);
    sim.commit_store();
    let ack = sim.expect_puback(p);
    assert_eq!((ack.packet_id, ack.reason_code), (id, ReasonCode::Success));
    sim.broker.check_invariants().unwrap();
}

#[test]
fn a_message_no_persistent_session_wanted_is_acknowledged_at_once() {
    let mut sim = Sim::new(durable());
    let _s = persistent_subscriber(&mut sim, "s");
    let clean = sim.connect(V5, "clean", true);
    sim.subscribe(clean, "c", QoS::AtLeastOnce);
    sim.auto_commit = false;
    let p = sim.connect(V5, "p", true);
    let other = sim.connect(V5, "other", true);
    // Something durable is outstanding (another client's message)...
    sim.publish(other, "t", QoS::AtLeastOnce, false, b"durable");
    sim.assert_silent(other);
    // ...and a message only a clean session wants does not wait for it.
    let id = sim.publish(p, "c", QoS::AtLeastOnce, false, b"x").unwrap();
    assert_eq!(sim.expect_puback(p).packet_id, id);
    // QoS 0 never waits.
    sim.publish(p, "t", QoS::AtMostOnce, false, b"q0");
    sim.assert_silent(p);
    sim.commit_store();
    sim.expect_puback(other);
}

#[test]
fn acknowledgements_keep_the_order_of_the_packets_they_answer() {
    let mut sim = Sim::new(durable());
    let _s = persistent_subscriber(&mut sim, "s");
    sim.auto_commit = false;
    let p = sim.connect(V5, "p", true);
    let first = sim.publish(p, "t", QoS::AtLeastOnce, false, b"1").unwrap();
    // Needs no store, but must not overtake the first [MQTT-4.6.0-2].
    let second = sim
        .publish(p, "nobody", QoS::AtLeastOnce, false, b"2")
        .unwrap();
    sim.assert_silent(p);
    sim.commit_store();
    assert_eq!(sim.expect_puback(p).packet_id, first);
    assert_eq!(sim.expect_puback(p).packet_id, second);
    sim.broker.check_invariants().unwrap();
}

#[test]
fn suback_of_a_persistent_session_waits_and_its_retained_messages_follow_it() {
    let mut sim = Sim::new(durable());
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "r", QoS::AtMostOnce, true, b"kept");
    sim.auto_commit = false;
    let (s, _) = sim.connect_v5("s", false, Some(600));
    let id = sim.next_id(s);
    sim.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: vec![(
                TopicFilter::copy_from_str("r").unwrap(),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
            properties: Default::default(),
        }),
    );
    sim.assert_silent(s);
    sim.commit_store();
    match sim.recv(s) {
        Some(Packet::SubAck(a)) => assert_eq!(a.packet_id, id),
        other => panic!("expected SUBACK first, got {other:?}"),
    }
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"kept"[..]]);
    // A clean session's SUBACK does not wait.
    let c = sim.connect(V5, "c", true);
    sim.subscribe(c, "x", QoS::AtMostOnce);
}

#[test]
fn a_failed_write_is_never_acknowledged() {
    let mut sim = held();
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.subscribe_opts_nowait(s, "t");
    sim.commit_store();
    sim.recv_all(s);
    let p5 = sim.connect(V5, "p5", true);
    let p4 = sim.connect(V4, "p4", true);
    let id = sim.publish(p5, "t", QoS::AtLeastOnce, false, b"5").unwrap();
    sim.publish(p4, "t", QoS::AtLeastOnce, false, b"4");
    let rec_id = sim
        .publish(p5, "t", QoS::ExactlyOnce, false, b"q2")
        .unwrap();
    sim.fail_store();
    // 5.0: refused with Unspecified error.
    let ack = sim.expect_puback(p5);
    assert_eq!(
        (ack.packet_id, ack.reason_code),
        (id, ReasonCode::UnspecifiedError)
    );
    let rec = sim.expect_pubrec(p5);
    assert_eq!(
        (rec.packet_id, rec.reason_code),
        (rec_id, ReasonCode::UnspecifiedError)
    );
    // 3.1.1 cannot be told: closed without a PUBACK.
    assert!(sim.recv_all(p4).is_empty());
    assert!(sim.closed(p4).is_some());
    assert_eq!(sim.broker.stats().store_failures_refused, 3);
    // The refused QoS 2 id is free again: the same id is a new message, routed.
    sim.recv_all(s);
    let again = publish_packet("t", QoS::ExactlyOnce, false, Some(rec_id), b"q2 again");
    sim.send_publish(p5, again);
    sim.commit_store();
    assert_eq!(sim.expect_pubrec(p5).reason_code, ReasonCode::Success);
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"q2 again"[..]]);
    sim.broker.check_invariants().unwrap();
}

#[test]
fn a_failed_subscription_closes_the_connection() {
    let mut sim = held();
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.commit_store();
    sim.subscribe_opts_nowait(s, "t");
    sim.fail_store();
    assert_eq!(sim.expect_disconnect(s), ReasonCode::UnspecifiedError);
}

#[test]
fn pubcomp_waits_until_the_released_id_is_durable() {
    let mut sim = held();
    let (p, _) = sim.connect_v5("p", false, Some(600));
    let id = sim
        .publish(p, "nobody", QoS::ExactlyOnce, false, b"x")
        .unwrap();
    sim.assert_silent(p);
    sim.commit_store();
    sim.expect_pubrec(p);
    sim.send(p, Packet::PubRel(PubAck::new(id)));
    sim.assert_silent(p);
    sim.commit_store();
    match sim.recv(p) {
        Some(Packet::PubComp(a)) => assert_eq!(a.packet_id, id),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
}

#[test]
fn qos2_received_before_a_restart_is_not_delivered_twice() {
    let mut sim = Sim::new(durable());
    let s = persistent_subscriber(&mut sim, "s");
    let (p, _) = sim.connect_v5("p", false, Some(600));
    let id = sim
        .publish(p, "t", QoS::ExactlyOnce, false, b"once")
        .unwrap();
    sim.expect_pubrec(p);
    assert_eq!(sim.publishes(s).len(), 1);

    sim.restart_from_store(durable());
    let (s, _) = sim.connect_v5("s", false, Some(600));
    // The undelivered-to-completion QoS 1 copy comes back once (it was not acked).
    let first = sim.publishes(s);
    assert_eq!(payloads(&first), vec![&b"once"[..]]);
    sim.ack_all(s, &first);
    let (p, ack) = sim.connect_v5("p", false, Some(600));
    assert!(ack.session_present);
    // The publisher did not see PUBCOMP: it resends with DUP [MQTT-4.3.3-2].
    let mut resend = publish_packet("t", QoS::ExactlyOnce, false, Some(id), b"once");
    resend.dup = true;
    sim.send_publish(p, resend);
    assert_eq!(sim.expect_pubrec(p).reason_code, ReasonCode::Success);
    assert!(sim.publishes(s).is_empty(), "delivered twice");
    sim.send(p, Packet::PubRel(PubAck::new(id)));
    match sim.recv(p) {
        Some(Packet::PubComp(a)) => {
            assert_eq!((a.packet_id, a.reason_code), (id, ReasonCode::Success))
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
}

#[test]
fn in_flight_messages_come_back_with_their_packet_ids_and_dup() {
    let mut sim = Sim::new(durable());
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.subscribe(s, "t", QoS::ExactlyOnce);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, b"q1");
    sim.publish(p, "t", QoS::ExactlyOnce, false, b"q2 received");
    sim.publish(p, "t", QoS::ExactlyOnce, false, b"q2 sent");
    let sent = sim.publishes(s);
    assert_eq!(sent.len(), 3);
    // The second QoS 2 flow reaches PUBREC (the subscriber has the message).
    sim.send(s, Packet::PubRec(PubAck::new(sent[1].packet_id.unwrap())));
    assert!(matches!(sim.recv(s), Some(Packet::PubRel(_))));

    sim.restart_from_store(durable());
    let (s, ack) = sim.connect_v5("s", false, Some(600));
    assert!(ack.session_present);
    let again = sim.recv_all(s);
    assert_eq!(again.len(), 3, "{again:?}");
    match &again[0] {
        Packet::Publish(m) => {
            assert_eq!(&m.payload[..], b"q1");
            assert_eq!(m.packet_id, sent[0].packet_id);
            assert!(m.dup);
        }
        other => panic!("{other:?}"),
    }
    // Past PUBREC: only the PUBREL is resent, for the same id.
    match &again[1] {
        Packet::PubRel(a) => assert_eq!(Some(a.packet_id), sent[1].packet_id),
        other => panic!("{other:?}"),
    }
    match &again[2] {
        Packet::Publish(m) => {
            assert_eq!(&m.payload[..], b"q2 sent");
            assert_eq!(m.packet_id, sent[2].packet_id);
            assert!(m.dup);
        }
        other => panic!("{other:?}"),
    }
    sim.broker.check_invariants().unwrap();
    // New messages take ids that are not in flight.
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, b"new");
    let new = sim.publishes(s);
    assert_eq!(new.len(), 1);
    assert!(!sent.iter().any(|m| m.packet_id == new[0].packet_id));
}

#[test]
fn a_will_outlives_a_crash_and_a_finished_one_does_not_come_back() {
    let mut sim = Sim::new(durable());
    let (w, _) = sim.connect_v5("watcher", false, Some(600));
    sim.subscribe(w, "wills/#", QoS::AtLeastOnce);
    let mut connect = connect_packet(V5, "dev", false);
    connect.properties.session_expiry_interval = Some(600);
    connect.will = Some(Will {
        topic: TopicName::copy_from_str("wills/dev").unwrap(),
        payload: bytes::Bytes::from_static(b"dev is gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(5),
            ..Default::default()
        },
    });
    sim.connect_with(connect);

    // The broker dies while "dev" is connected: after the restart its connection
    // is gone, and the will follows after its delay.
    sim.restart_from_store(durable());
    let (w, _) = sim.connect_v5("watcher", false, Some(600));
    sim.advance(Duration::from_secs(4));
    assert!(sim.publishes(w).is_empty());
    sim.advance(Duration::from_secs(2));
    let got = sim.publishes(w);
    assert_eq!(payloads(&got), vec![&b"dev is gone"[..]]);
    sim.ack_all(w, &got);

    // Published once: another restart does not bring it back.
    sim.restart_from_store(durable());
    let (w, _) = sim.connect_v5("watcher", false, Some(600));
    sim.advance(Duration::from_secs(10));
    assert!(sim.publishes(w).is_empty());
}

#[test]
fn a_qos2_publish_to_a_persistent_session_waits_until_its_packet_id_is_durable() {
    let mut sim = Sim::new(durable());
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.subscribe(s, "t", QoS::ExactlyOnce);
    sim.auto_commit = false;
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::ExactlyOnce, false, b"two");
    // A receiver keeps the id of a QoS 2 message until PUBREL: it must not get an
    // id the broker could forget in a crash.
    assert!(sim.publishes(s).is_empty());
    sim.commit_store();
    let got = sim.publishes(s);
    assert_eq!(payloads(&got), vec![&b"two"[..]]);
    // PUBREC: the PUBREL waits until the release is durable (else a restart
    // resends a PUBLISH the receiver has released).
    let id = got[0].packet_id.unwrap();
    sim.send(s, Packet::PubRec(PubAck::new(id)));
    sim.assert_silent(s);
    sim.commit_store();
    match sim.recv(s) {
        Some(Packet::PubRel(a)) => assert_eq!(a.packet_id, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    // QoS 1 to the same session does not wait for its id.
    let (s1, _) = sim.connect_v5("s1", false, Some(600));
    sim.subscribe_opts_nowait(s1, "u");
    sim.commit_store();
    sim.recv_all(s1);
    sim.publish(p, "u", QoS::AtLeastOnce, false, b"one");
    assert_eq!(payloads(&sim.publishes(s1)), vec![&b"one"[..]]);
    sim.broker.check_invariants().unwrap();
}
