//! Configured limits and the reason codes a client sees when it reaches one.
mod sim;

use core::num::NonZeroU32;

use broker_state::Config;
use mqtt_proto::bytes::BytesMut;
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn sim_with(f: impl FnOnce(&mut Config)) -> Sim {
    let mut config = Config::default();
    f(&mut config);
    Sim::new(config)
}

// ------------------------------------------------------------------ connections

#[test]
fn connections_beyond_max_connections_are_closed_server_busy() {
    let mut sim = sim_with(|c| c.max_connections = 2);
    let a = sim.connect(V4, "a", true);
    let _b = sim.accept(V4);
    let c = sim.accept(V4);
    assert_eq!(sim.closed(c), Some(ReasonCode::ServerBusy));
    assert!(sim.clients[c].raw.is_empty());
    assert_eq!(sim.broker.connection_count(), 2);
    sim.disconnect(a);
    let d = sim.connect(V5, "d", true);
    assert_eq!(sim.closed(d), None);
}

// ------------------------------------------------------------------ sessions

#[test]
fn sessions_beyond_max_sessions_are_refused_with_0x97() {
    let mut sim = sim_with(|c| c.max_sessions = 2);
    let a = sim.connect(V4, "a", false);
    sim.disconnect(a); // offline sessions count
    sim.connect(V5, "b", true);
    let (c, ack) = sim.connect_v5("c", true, None);
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    assert_eq!(sim.closed(c), Some(ReasonCode::QuotaExceeded));
    // 3.1.1: the nearest return code, 0x03 Server unavailable.
    let (c, _) = sim.connect_with(connect_packet(V4, "d", true));
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x03");
    // An existing session can still be resumed.
    let (_, ack) = sim.connect_with(connect_packet(V4, "a", false));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
}

#[test]
fn sessions_per_authentication_name_are_limited_with_0x97() {
    let mut sim = sim_with(|c| c.max_sessions_per_authentication_name = Some(1));
    let with_user = |id: &str| {
        let mut p = connect_packet(V5, id, true);
        p.username = Some(MqttString::copy_from_str("alice").unwrap());
        p
    };
    let (a, ack) = sim.connect_with(with_user("a"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (_, ack) = sim.connect_with(with_user("b"));
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    sim.disconnect(a); // clean: the session ends, the slot frees
    let (_, ack) = sim.connect_with(with_user("b"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
}

#[test]
fn client_id_longer_than_the_limit_is_0x85() {
    let mut sim = sim_with(|c| c.max_client_id_length = 8);
    let (c, ack) = sim.connect_with(connect_packet(V5, "123456789", true));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert_eq!(sim.closed(c), Some(ReasonCode::ClientIdentifierNotValid));
    let (c, _) = sim.connect_with(connect_packet(V4, "123456789", true));
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x02");
    let (_, ack) = sim.connect_with(connect_packet(V4, "12345678", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
}

// ------------------------------------------------------------------ subscriptions

#[test]
fn subscriptions_beyond_the_per_session_limit_get_0x97() {
    let mut sim = sim_with(|c| c.max_subscriptions_per_session = 2);
    let s = sim.connect(V5, "s", true);
    let ack = sim.subscribe_many(
        s,
        &[
            ("a", QoS::AtMostOnce),
            ("b", QoS::AtMostOnce),
            ("c", QoS::AtMostOnce),
        ],
    );
    assert_eq!(
        ack.reason_codes,
        [
            ReasonCode::Success,
            ReasonCode::Success,
            ReasonCode::QuotaExceeded
        ]
    );
    // Replacing an existing subscription is not a new one.
    assert_eq!(
        sim.subscribe(s, "a", QoS::AtLeastOnce).reason_codes,
        [ReasonCode::GrantedQoS1]
    );
    sim.unsubscribe(s, "b");
    assert_eq!(
        sim.subscribe(s, "c", QoS::AtMostOnce).reason_codes,
        [ReasonCode::Success]
    );

    let s4 = sim.connect(V4, "s4", true);
    sim.subscribe_many(s4, &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce)]);
    let before = sim.clients[s4].raw.len();
    sim.subscribe(s4, "c", QoS::AtMostOnce);
    assert_eq!(&sim.clients[s4].raw[before..], b"\x90\x03\x00\x02\x80");
}

#[test]
fn one_session_holds_ten_thousand_subscriptions_with_the_default_config() {
    let mut sim = Sim::default();
    let s = sim.connect(V5, "backend", true);
    let filters: Vec<String> = (0..10_000)
        .map(|i| format!("devices/d{i}/+/state"))
        .collect();
    for chunk in filters.chunks(500) {
        let chunk: Vec<(&str, QoS)> = chunk
            .iter()
            .map(|f| (f.as_str(), QoS::AtLeastOnce))
            .collect();
        let ack = sim.subscribe_many(s, &chunk);
        assert!(ack
            .reason_codes
            .iter()
            .all(|c| *c == ReasonCode::GrantedQoS1));
    }
    // Each filter is live: the last, the first and one in between route.
    let p = sim.connect(V5, "p", true);
    for d in [9_999, 0, 4_321] {
        sim.publish(
            p,
            &format!("devices/d{d}/x/state"),
            QoS::AtMostOnce,
            false,
            b"on",
        );
    }
    assert_eq!(sim.publishes(s).len(), 3);
    // Unsubscribing one in the middle leaves the others (the index follows the
    // moved entry).
    sim.unsubscribe(s, "devices/d17/+/state");
    sim.publish(p, "devices/d17/x/state", QoS::AtMostOnce, false, b"off");
    sim.publish(p, "devices/d9999/x/state", QoS::AtMostOnce, false, b"on");
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"on"[..]]);
    assert_eq!(
        sim.subscribe(s, "devices/d9999/+/state", QoS::AtMostOnce)
            .reason_codes,
        [ReasonCode::Success],
        "a replaced subscription is not a new one"
    );
}

#[test]
fn subscriptions_beyond_the_broker_wide_limit_get_0x97_and_0x80() {
    let mut sim = sim_with(|c| c.max_subscriptions = 3);
    let a = sim.connect(V5, "a", true);
    let b = sim.connect(V4, "b", true);
    sim.subscribe_many(a, &[("x", QoS::AtMostOnce), ("y", QoS::AtMostOnce)]);
    let ack = sim.subscribe_many(
        a,
        &[
            ("y", QoS::AtLeastOnce),
            ("z", QoS::AtMostOnce),
            ("w", QoS::AtMostOnce),
        ],
    );
    assert_eq!(
        ack.reason_codes,
        [
            ReasonCode::GrantedQoS1,
            ReasonCode::Success,
            ReasonCode::QuotaExceeded
        ]
    );
    let before = sim.clients[b].raw.len();
    sim.subscribe(b, "x", QoS::AtMostOnce);
    assert_eq!(
        &sim.clients[b].raw[before..],
        b"\x90\x03\x00\x01\x80",
        "3.1.1: 0x80"
    );
    assert_eq!(sim.broker.stats().subscriptions_refused, 2);
    // Room again once a session lets one go.
    sim.unsubscribe(a, "z");
    assert_eq!(
        sim.subscribe(b, "x", QoS::AtMostOnce).reason_codes,
        [ReasonCode::Success]
    );
}

// ------------------------------------------------------------------ topics

#[test]
fn topic_filter_over_length_or_levels_is_0x8f_in_suback() {
    let mut sim = sim_with(|c| {
        c.max_topic_length = 10;
        c.max_topic_levels = 3;
    });
    let s = sim.connect(V5, "s", true);
    let ack = sim.subscribe_many(
        s,
        &[
            ("0123456789x", QoS::AtMostOnce),
            ("a/b/c/d", QoS::AtMostOnce),
            ("a/b/#", QoS::AtMostOnce),
            ("$share/group/a", QoS::AtMostOnce), // the share prefix counts in length
        ],
    );
    assert_eq!(
        ack.reason_codes,
        [
            ReasonCode::TopicFilterInvalid,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::Success,
            ReasonCode::TopicFilterInvalid,
        ]
    );
    let s4 = sim.connect(V4, "s4", true);
    let before = sim.clients[s4].raw.len();
    sim.subscribe(s4, "a/b/c/d", QoS::AtMostOnce);
    assert_eq!(&sim.clients[s4].raw[before..], b"\x90\x03\x00\x01\x80");
}

#[test]
fn topic_name_over_length_or_levels_is_0x90_in_puback() {
    let mut sim = sim_with(|c| {
        c.max_topic_length = 10;
        c.max_topic_levels = 3;
    });
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "#", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "0123456789x", QoS::AtLeastOnce, false, b"x");
    assert_eq!(
        sim.expect_puback(p).reason_code,
        ReasonCode::TopicNameInvalid
    );
    sim.publish(p, "a/b/c/d", QoS::ExactlyOnce, false, b"x");
    assert_eq!(
        sim.expect_pubrec(p).reason_code,
        ReasonCode::TopicNameInvalid
    );
    sim.publish(p, "a/b/c/d", QoS::AtMostOnce, false, b"x");
    sim.assert_silent(s);
    assert_eq!(sim.closed(p), None);

    // A will topic over the limit refuses the CONNECT.
    let mut c = connect_packet(V5, "w", true);
    c.will = Some(will("a/b/c/d", b"x", QoS::AtMostOnce, false));
    let (_, ack) = sim.connect_with(c);
    assert_eq!(ack.reason_code, ReasonCode::TopicNameInvalid);
}

// ------------------------------------------------------------------ retained

#[test]
fn retained_messages_beyond_the_count_limit_are_refused_with_0x97() {
    let mut sim = sim_with(|c| c.max_retained_messages = 2);
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "#", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "r/1", QoS::AtLeastOnce, true, b"1");
    sim.publish(p, "r/2", QoS::AtLeastOnce, true, b"2");
    sim.recv_all(p);
    let got = sim.publishes(s);
    sim.ack_all(s, &got);
    sim.publish(p, "r/3", QoS::AtLeastOnce, true, b"3");
    assert_eq!(sim.expect_puback(p).reason_code, ReasonCode::QuotaExceeded);
    sim.assert_silent(s); // refused, not routed
    assert_eq!(sim.broker.retained_count(), 2);
    assert_eq!(sim.broker.stats().retained_refused, 1);

    // Replacing one that exists is fine; clearing one makes room.
    sim.publish(p, "r/1", QoS::AtLeastOnce, true, b"1b");
    assert_eq!(sim.expect_puback(p).reason_code, ReasonCode::Success);
    sim.publish(p, "r/2", QoS::AtMostOnce, true, b"");
    sim.publish(p, "r/3", QoS::AtLeastOnce, true, b"3");
    assert_eq!(sim.expect_puback(p).reason_code, ReasonCode::Success);
    let got = sim.publishes(s);
    sim.ack_all(s, &got);

    // 3.1.1 cannot be told: acknowledged, and dropped.
    let p4 = sim.connect(V4, "p4", true);
    sim.publish(p4, "r/4", QoS::AtLeastOnce, true, b"4");
    assert_eq!(sim.expect_puback(p4).reason_code, ReasonCode::Success);
    assert_eq!(sim.broker.retained_count(), 2);
    sim.assert_silent(s);
}

#[test]
fn retained_messages_beyond_the_byte_limit_are_refused_with_0x97() {
    let mut sim = sim_with(|c| c.max_retained_bytes = 300);
    let p = sim.connect(V5, "p", true);
    let big = [7u8; 100];
    sim.publish(p, "r/1", QoS::AtLeastOnce, true, &big);
    sim.publish(p, "r/2", QoS::AtLeastOnce, true, &big);
    sim.recv_all(p);
    sim.publish(p, "r/3", QoS::AtLeastOnce, true, &big);
    assert_eq!(sim.expect_puback(p).reason_code, ReasonCode::QuotaExceeded);
    // A smaller replacement of an existing one fits.
    sim.publish(p, "r/1", QoS::AtLeastOnce, true, b"small");
    assert_ne!(sim.expect_puback(p).reason_code, ReasonCode::QuotaExceeded);
    sim.publish(p, "r/3", QoS::AtLeastOnce, true, &big[..50]);
    assert_ne!(sim.expect_puback(p).reason_code, ReasonCode::QuotaExceeded);
    assert_eq!(sim.broker.retained_count(), 3);
}

// ------------------------------------------------------------------ properties

#[test]
fn publish_with_too_many_user_properties_is_refused() {
    let mut sim = sim_with(|c| c.max_user_properties = 2);
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    let mut m = publish_packet("t", QoS::AtLeastOnce, false, PacketId::new(1), b"x");
    m.properties.user_properties =
        UserProperties::from_pairs([("a", "1"), ("b", "2"), ("c", "3")]).unwrap();
    sim.send_publish(p, m.clone());
    assert_eq!(
        sim.expect_puback(p).reason_code,
        ReasonCode::ImplementationSpecificError
    );
    sim.assert_silent(s);
    m.properties.user_properties = UserProperties::from_pairs([("a", "1"), ("b", "2")]).unwrap();
    sim.send_publish(p, m);
    assert_eq!(sim.expect_puback(p).reason_code, ReasonCode::Success);
    assert_eq!(sim.publishes(s)[0].properties.user_properties.len(), 2);
}

// ------------------------------------------------------------------ packet size

fn encoded(version: ProtocolVersion, p: Packet) -> BytesMut {
    let mut b = BytesMut::new();
    p.encode(version, &mut b).unwrap();
    b
}

#[test]
fn packet_over_maximum_packet_size_is_disconnected_with_0x95_mqtt_3_2_2_15() {
    let mut sim = sim_with(|c| c.max_packet_size = 100);
    let watcher = sim.connect(V5, "w", true);
    sim.subscribe(watcher, "will/#", QoS::AtMostOnce);
    for v in [V5, V4] {
        let mut c = connect_packet(v, &format!("big-{v}"), true);
        c.will = Some(will(
            "will/x",
            v.to_string().as_bytes(),
            QoS::AtMostOnce,
            false,
        ));
        let (big, ack) = sim.connect_with(c);
        if v.is_v5() {
            assert_eq!(ack.properties.maximum_packet_size, NonZeroU32::new(100));
        }
        let before = sim.clients[big].raw.len();
        let m = publish_packet("t", QoS::AtMostOnce, false, None, &[0; 200]);
        sim.send_bytes(big, &encoded(v, Packet::Publish(m)));
        assert_eq!(sim.closed(big), Some(ReasonCode::PacketTooLarge), "{v}");
        if v.is_v5() {
            assert_eq!(sim.expect_disconnect(big), ReasonCode::PacketTooLarge);
        } else {
            assert_eq!(sim.clients[big].raw.len(), before, "3.1.1: just closed");
        }
        // A decode error is an abnormal end: the will goes out.
        assert_eq!(sim.publishes(watcher).len(), 1, "{v}");
    }
}

#[test]
fn message_over_a_subscribers_maximum_packet_size_is_dropped_for_it_mqtt_3_1_2_25() {
    let mut sim = Sim::default();
    let mut c = connect_packet(V5, "small", true);
    c.properties.maximum_packet_size = NonZeroU32::new(64);
    let (small, _) = sim.connect_with(c);
    let big_ok = sim.connect(V5, "big", true);
    sim.subscribe(small, "t", QoS::AtLeastOnce);
    sim.subscribe(big_ok, "t", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[1; 100]);
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[2; 10]);
    assert_eq!(payloads(&sim.publishes(small)), vec![&[2u8; 10][..]]);
    assert_eq!(sim.publishes(big_ok).len(), 2);
    assert_eq!(sim.broker.stats().dropped_too_large, 1);
}

#[test]
fn queued_message_over_the_reconnected_clients_maximum_packet_size_is_dropped_mqtt_3_1_2_25() {
    let mut sim = Sim::default();
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[1; 500]);
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[2; 10]);
    // Back with a Maximum Packet Size the first message does not fit in
    // [MQTT-3.1.2-24]: it is discarded as if sent [MQTT-3.1.2-25].
    let mut c = connect_packet(V5, "s", false);
    c.properties.session_expiry_interval = Some(600);
    c.properties.maximum_packet_size = NonZeroU32::new(100);
    let (s, ack) = sim.connect_with(c.clone());
    assert!(ack.session_present);
    let got = sim.publishes(s);
    assert_eq!(payloads(&got), vec![&[2u8; 10][..]]);
    assert_eq!(sim.broker.stats().dropped_too_large, 1);
    sim.ack_all(s, &got);

    // The same for a message in flight when the client comes back with a smaller
    // limit: not resent.
    sim.disconnect(s);
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[3; 500]);
    assert_eq!(sim.publishes(s).len(), 1);
    sim.kill(s);
    let (s, _) = sim.connect_with(c);
    sim.assert_silent(s);
    assert_eq!(sim.broker.stats().dropped_too_large, 2);
    sim.disconnect(s);
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.assert_silent(s); // discarded "as if it had completed sending"
}
