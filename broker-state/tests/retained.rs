//! Retained messages: set, replace, clear, delivery on subscribe, the RETAIN flag.
mod sim;

use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

#[test]
fn retained_message_is_sent_to_a_new_subscriber_with_retain_1_mqtt_3_3_1_6() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let p = sim.connect(V5, "p", true);
        sim.publish(p, "r/a", QoS::AtLeastOnce, true, b"state a");
        sim.publish(p, "r/b", QoS::AtMostOnce, true, b"state b");
        sim.recv_all(p);
        let s = sim.connect(v, "s", true);
        sim.subscribe(s, "r/+", QoS::AtLeastOnce); // SUBACK first [MQTT-3.8.4-4]
        let got = sim.publishes(s);
        assert_eq!(payloads(&got), vec![&b"state a"[..], b"state b"], "{v}");
        assert!(got.iter().all(|m| m.retain), "{v}: RETAIN 1 [MQTT-3.3.1-8]");
        assert_eq!(got[0].qos, QoS::AtLeastOnce);
        assert_eq!(got[1].qos, QoS::AtMostOnce);
        assert_eq!(sim.broker.retained_count(), 2);
    }
}

#[test]
fn retained_message_is_replaced_by_the_next_one_mqtt_3_3_1_5() {
    let mut sim = Sim::default();
    let p = sim.connect(V4, "p", true);
    sim.publish(p, "r", QoS::AtMostOnce, true, b"old");
    sim.publish(p, "r", QoS::AtMostOnce, true, b"new");
    sim.publish(p, "r", QoS::AtMostOnce, false, b"not retained");
    let s = sim.connect(V4, "s", true);
    sim.subscribe(s, "r", QoS::AtMostOnce);
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"new"[..]]);
    assert_eq!(sim.broker.retained_count(), 1);
}

#[test]
fn empty_retained_payload_clears_and_is_still_forwarded_mqtt_3_3_1_10() {
    let mut sim = Sim::default();
    let p = sim.connect(V4, "p", true);
    let live = sim.connect(V4, "live", true);
    sim.subscribe(live, "r", QoS::AtMostOnce);
    sim.publish(p, "r", QoS::AtMostOnce, true, b"state");
    sim.publish(p, "r", QoS::AtLeastOnce, true, b"");
    // A current subscriber gets the empty message like any other [MQTT-3.3.1-12].
    let got = sim.publishes(live);
    assert_eq!(payloads(&got), vec![&b"state"[..], b""]);
    assert_eq!(sim.broker.retained_count(), 0, "[MQTT-3.3.1-11] not stored");
    let s = sim.connect(V4, "s", true);
    sim.subscribe(s, "r", QoS::AtMostOnce);
    sim.assert_silent(s);
}

#[test]
fn normal_forward_of_a_retained_publish_has_retain_0_mqtt_3_3_1_9() {
    let mut sim = Sim::default();
    let s4 = sim.connect(V4, "s4", true);
    let s5 = sim.connect(V5, "s5", true);
    let rap = sim.connect(V5, "rap", true);
    sim.subscribe(s4, "r", QoS::AtMostOnce);
    sim.subscribe(s5, "r", QoS::AtMostOnce);
    let opts = SubscriptionOptions {
        retain_as_published: true,
        ..SubscriptionOptions::qos(QoS::AtMostOnce)
    };
    sim.subscribe_opts(rap, "r", opts, None);
    let p = sim.connect(V4, "p", true);
    sim.publish(p, "r", QoS::AtMostOnce, true, b"x");
    assert!(!sim.publishes(s4)[0].retain, "3.1.1 [MQTT-3.3.1-9]");
    assert!(!sim.publishes(s5)[0].retain, "5.0 [MQTT-3.3.1-12]");
    assert!(
        sim.publishes(rap)[0].retain,
        "Retain As Published [MQTT-3.3.1-13]"
    );
}

#[test]
fn retain_handling_controls_retained_delivery_at_subscribe_mqtt_3_3_1_9() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "r", QoS::AtMostOnce, true, b"x");
    let s = sim.connect(V5, "s", true);
    let with = |rh| SubscriptionOptions {
        retain_handling: rh,
        ..SubscriptionOptions::qos(QoS::AtMostOnce)
    };
    // 2: never.
    sim.subscribe_opts(s, "r", with(RetainHandling::DoNotSend), None);
    sim.assert_silent(s);
    // 1: only when the subscription is new; it exists now.
    sim.subscribe_opts(s, "r", with(RetainHandling::SendIfNew), None);
    sim.assert_silent(s);
    sim.unsubscribe(s, "r");
    sim.subscribe_opts(s, "r", with(RetainHandling::SendIfNew), None);
    assert_eq!(sim.publishes(s).len(), 1);
    // 0: every time [MQTT-3.8.4-3].
    sim.subscribe_opts(s, "r", with(RetainHandling::SendAtSubscribe), None);
    assert_eq!(sim.publishes(s).len(), 1);
}

#[test]
fn retained_messages_are_not_sent_to_shared_subscriptions_mqtt_4_8_2() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "r", QoS::AtMostOnce, true, b"x");
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "$share/g/r", QoS::AtMostOnce);
    sim.assert_silent(s);
}

#[test]
fn retained_qos_is_capped_by_the_granted_qos_mqtt_3_8_4_6() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "r", QoS::ExactlyOnce, true, b"x");
    sim.recv_all(p);
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "r", QoS::AtLeastOnce);
    let got = sim.publishes(s);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert!(got[0].packet_id.is_some());
}

#[test]
fn retained_message_expires_with_its_message_expiry_interval_mqtt_3_3_2_5() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    let mut m = publish_packet("r", QoS::AtMostOnce, true, None, b"x");
    m.properties.message_expiry_interval = Some(5);
    sim.send_publish(p, m);
    sim.advance(std::time::Duration::from_secs(2));
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "r", QoS::AtMostOnce);
    let got = sim.publishes(s);
    assert_eq!(got[0].properties.message_expiry_interval, Some(3));
    sim.advance(std::time::Duration::from_secs(4));
    sim.subscribe(s, "r", QoS::AtMostOnce);
    sim.assert_silent(s);
}

/// A retained message whose Message Expiry Interval has passed is deleted
/// [MQTT-3.3.2-5]: it stops counting toward the retained limits and
/// `retained_count`, at its deadline (a timer) or when it is next looked at, and
/// the store forgets it too.
#[test]
fn expired_retained_message_is_deleted_and_leaves_the_retained_limits_mqtt_3_3_2_5() {
    use broker_state::{Config, StoreOp};
    use std::time::Duration;

    let expiring = |topic: &str, secs: u32, payload: &[u8]| {
        let mut m = publish_packet(topic, QoS::AtLeastOnce, true, PacketId::new(1), payload);
        m.properties.message_expiry_interval = Some(secs);
        m
    };

    // The count limit, freed at the deadline.
    let mut sim = Sim::new(Config {
        max_retained_messages: 2,
        store_effects: true,
        ..Config::default()
    });
    let p = sim.connect(V5, "p", true);
    sim.send_publish(p, expiring("r/1", 5, b"1"));
    sim.publish(p, "r/2", QoS::AtMostOnce, true, b"2");
    sim.recv_all(p);
    sim.publish(p, "r/3", QoS::AtLeastOnce, true, b"3");
    assert_eq!(sim.expect_puback(p).reason_code, ReasonCode::QuotaExceeded);
    assert_eq!(sim.broker.retained_count(), 2);
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.broker.retained_count(), 1, "deleted at its deadline");
    assert!(sim
        .store_ops
        .iter()
        .any(|op| matches!(op, StoreOp::RetainClear { topic } if topic.as_str() == "r/1")));
    sim.publish(p, "r/3", QoS::AtLeastOnce, true, b"3");
    assert!(sim.expect_puback(p).reason_code.is_success());
    assert_eq!(sim.broker.retained_count(), 2);
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "r/#", QoS::AtMostOnce);
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"2"[..], b"3"]);

    // The byte limit, freed when the full store is next written to, before any
    // timer has fired.
    let mut sim = Sim::new(Config {
        max_retained_bytes: 300,
        ..Config::default()
    });
    let p = sim.connect(V5, "p", true);
    let big = [7u8; 100];
    sim.send_publish(p, expiring("r/1", 5, &big));
    sim.send_publish(p, expiring("r/2", 5, &big));
    sim.recv_all(p);
    sim.publish(p, "r/3", QoS::AtLeastOnce, true, &big);
    assert_eq!(sim.expect_puback(p).reason_code, ReasonCode::QuotaExceeded);
    sim.now = sim.now.after(Duration::from_secs(6));
    sim.publish(p, "r/3", QoS::AtLeastOnce, true, &big);
    assert!(sim.expect_puback(p).reason_code.is_success());
    assert_eq!(sim.broker.retained_count(), 1);

    // Found expired by a new subscription, before any timer has fired: deleted, not
    // sent.
    sim.send_publish(p, expiring("q", 5, b"q"));
    sim.recv_all(p);
    assert_eq!(sim.broker.retained_count(), 2);
    sim.now = sim.now.after(Duration::from_secs(5));
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "q", QoS::AtMostOnce);
    sim.assert_silent(s);
    assert_eq!(sim.broker.retained_count(), 1);
}
