//! The will: published on every abnormal end, never on a normal DISCONNECT; will
//! delay; retained wills; authorization.
mod sim;

use std::time::Duration;

use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A watcher subscribed to `will/#`, and a client `id` whose will goes to `will/<id>`.
fn setup(sim: &mut Sim, v: ProtocolVersion, id: &str, delay: Option<u32>) -> (C, C) {
    // Keep Alive 0: the watcher outlives any clock jump.
    let mut wp = connect_packet(V5, &format!("watch-{id}"), true);
    wp.keep_alive = 0;
    let (watcher, _) = sim.connect_with(wp);
    sim.subscribe(watcher, "will/#", QoS::AtLeastOnce);
    let mut p = connect_packet(v, id, false);
    let mut w = will(&format!("will/{id}"), b"gone", QoS::AtLeastOnce, false);
    if v.is_v5() {
        p.properties.session_expiry_interval = Some(600);
        w.properties.will_delay_interval = delay;
    }
    p.will = Some(w);
    let (c, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    (watcher, c)
}

fn wills(sim: &mut Sim, watcher: C) -> Vec<Publish> {
    sim.publishes(watcher)
}

#[test]
fn will_is_published_when_the_connection_drops_mqtt_3_1_2_8() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let (w, c) = setup(&mut sim, v, "c", None);
        sim.assert_silent(w);
        sim.kill(c);
        let got = wills(&mut sim, w);
        assert_eq!(payloads(&got), vec![&b"gone"[..]], "{v}");
        assert_eq!(got[0].topic.as_str(), "will/c");
        assert_eq!(got[0].qos, QoS::AtLeastOnce);
        assert!(!got[0].retain);
    }
}

#[test]
fn will_is_published_when_keep_alive_expires_mqtt_3_1_2_8() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let (w, c) = setup(&mut sim, v, "c", None);
        sim.advance(Duration::from_secs(89));
        sim.assert_silent(w);
        sim.advance(Duration::from_secs(2));
        assert_eq!(sim.closed(c), Some(ReasonCode::KeepAliveTimeout));
        assert_eq!(payloads(&wills(&mut sim, w)), vec![&b"gone"[..]], "{v}");
    }
}

#[test]
fn will_is_published_on_a_protocol_error_mqtt_4_13_1_1() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let (w, c) = setup(&mut sim, v, "c", None);
        sim.send_bytes(c, b"\x00\x00"); // packet type 0: malformed
        assert_eq!(sim.closed(c), Some(ReasonCode::MalformedPacket));
        assert_eq!(payloads(&wills(&mut sim, w)), vec![&b"gone"[..]], "{v}");
    }
}

#[test]
fn will_is_not_published_after_a_normal_disconnect_mqtt_3_1_2_10() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let (w, c) = setup(&mut sim, v, "c", None);
        sim.disconnect(c);
        assert_eq!(sim.closed(c), Some(ReasonCode::Success));
        sim.advance(Duration::from_secs(1000));
        sim.assert_silent(w);
    }
}

#[test]
fn disconnect_with_will_message_publishes_the_will_mqtt_3_14_2_1() {
    let mut sim = Sim::default();
    let (w, c) = setup(&mut sim, V5, "c", None);
    sim.send(
        c,
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
    assert_eq!(sim.closed(c), Some(ReasonCode::DisconnectWithWillMessage));
    assert_eq!(payloads(&wills(&mut sim, w)), vec![&b"gone"[..]]);
}

#[test]
fn will_with_retain_becomes_the_retained_message_mqtt_3_1_2_17() {
    let mut sim = Sim::default();
    let mut p = connect_packet(V4, "c", true);
    p.will = Some(will("status/c", b"offline", QoS::AtMostOnce, true));
    let (c, _) = sim.connect_with(p);
    sim.kill(c);
    let s = sim.connect(V4, "s", true);
    sim.subscribe(s, "status/+", QoS::AtMostOnce);
    let got = sim.publishes(s);
    assert_eq!(payloads(&got), vec![&b"offline"[..]]);
    assert!(got[0].retain);
}

#[test]
fn takeover_publishes_the_old_connections_will_mqtt_3_1_4_3() {
    let mut sim = Sim::default();
    let (w, _old) = setup(&mut sim, V5, "c", None);
    sim.connect_v5("c", false, Some(600));
    assert_eq!(payloads(&wills(&mut sim, w)), vec![&b"gone"[..]]);
}

// ------------------------------------------------------------------ will delay (5.0)

#[test]
fn will_delay_postpones_the_will_mqtt_3_1_3_9() {
    let mut sim = Sim::default();
    let (w, c) = setup(&mut sim, V5, "c", Some(30));
    sim.kill(c);
    sim.advance(Duration::from_secs(29));
    sim.assert_silent(w);
    sim.advance(Duration::from_secs(2));
    assert_eq!(payloads(&wills(&mut sim, w)), vec![&b"gone"[..]]);
}

#[test]
fn reconnecting_within_the_will_delay_cancels_the_will_mqtt_3_1_3_9() {
    let mut sim = Sim::default();
    let (w, c) = setup(&mut sim, V5, "c", Some(30));
    sim.kill(c);
    sim.advance(Duration::from_secs(10));
    let (_, ack) = sim.connect_v5("c", false, Some(600));
    assert!(ack.session_present);
    sim.advance(Duration::from_secs(100));
    sim.assert_silent(w);
}

#[test]
fn will_is_published_when_the_session_ends_before_its_delay_mqtt_3_1_3_9() {
    let mut sim = Sim::default();
    let watcher = sim.connect(V5, "w", true);
    sim.subscribe(watcher, "will/#", QoS::AtMostOnce);
    let mut p = connect_packet(V5, "c", false);
    p.properties.session_expiry_interval = Some(10);
    let mut wl = will("will/c", b"gone", QoS::AtMostOnce, false);
    wl.properties.will_delay_interval = Some(60);
    p.will = Some(wl);
    let (c, _) = sim.connect_with(p);
    sim.kill(c);
    sim.advance(Duration::from_secs(9));
    sim.assert_silent(watcher);
    sim.advance(Duration::from_secs(2));
    assert_eq!(payloads(&sim.publishes(watcher)), vec![&b"gone"[..]]);
    assert_eq!(sim.broker.session_count(), 1, "only the watcher's");
}

// ------------------------------------------------------------------ authorization

#[test]
fn will_to_a_forbidden_topic_refuses_a_5_0_connect_and_is_dropped_for_3_1_1() {
    let mut sim = Sim::default();
    sim.broker.set_authorizer(Box::new(DenySecret));
    let watcher = sim.connect(V5, "w", true);
    sim.subscribe(watcher, "#", QoS::AtMostOnce);

    let mut p = connect_packet(V5, "c5", true);
    p.will = Some(will("secret/will", b"x", QoS::AtMostOnce, false));
    let (c5, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(sim.closed(c5), Some(ReasonCode::NotAuthorized));

    let mut p = connect_packet(V4, "c4", true);
    p.will = Some(will("secret/will", b"x", QoS::AtMostOnce, false));
    let (c4, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sim.kill(c4);
    sim.assert_silent(watcher);
}
