//! Sessions: clean start, expiry, takeover, and the DISCONNECT expiry rules.
mod sim;

use std::time::Duration;

use broker_state::{Config, SessionEnd};
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn disconnect_with_expiry(sim: &mut Sim, c: C, expiry: u32) {
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(expiry);
    sim.send(c, Packet::Disconnect(d));
}

/// Is a session for `id` still there? Reconnects (5.0, Clean Start 0) and reads
/// Session Present, then leaves the session as it found it (expiry 3600).
fn session_exists(sim: &mut Sim, id: &str) -> bool {
    let (c, ack) = sim.connect_v5(id, false, Some(3600));
    sim.disconnect(c);
    ack.session_present
}

// ------------------------------------------------------------------ clean start

#[test]
fn clean_start_discards_the_existing_session_mqtt_3_1_2_4() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let mut p = connect_packet(v, "s", false);
        p.properties.session_expiry_interval = v.is_v5().then_some(600);
        let (s, _) = sim.connect_with(p.clone());
        sim.subscribe(s, "t", QoS::AtLeastOnce);
        sim.disconnect(s);
        let pb = sim.connect(V4, "pub", true);
        sim.publish(pb, "t", QoS::AtLeastOnce, false, b"queued");
        assert_eq!(sim.broker.queued_messages("s"), Some(1));

        p.clean_start = true;
        let (s, ack) = sim.connect_with(p);
        assert!(!ack.session_present, "{v}");
        sim.assert_silent(s); // the queued message went with the old session
        sim.publish(pb, "t", QoS::AtLeastOnce, false, b"after");
        sim.assert_silent(s); // and so did the subscription
    }
}

// ------------------------------------------------------------------ expiry

#[test]
fn session_ends_when_its_expiry_interval_passes_after_disconnect_mqtt_3_1_2_23() {
    let mut sim = Sim::default();
    let (s, ack) = sim.connect_v5("s", false, Some(10));
    assert_eq!(
        ack.properties.session_expiry_interval, None,
        "granted as asked"
    );
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    sim.advance(Duration::from_secs(9));
    assert_eq!(sim.broker.session_count(), 1);
    let pb = sim.connect(V5, "pub", true);
    sim.publish(pb, "t", QoS::AtLeastOnce, false, b"too late");
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.broker.session_count(), 1, "only the publisher's");
    assert_eq!(
        sim.ended,
        [("s".to_owned(), SessionEnd::Expired, 1)],
        "visible to the operator, with the message lost"
    );
    let (s, ack) = sim.connect_v5("s", false, Some(10));
    assert!(!ack.session_present);
    sim.assert_silent(s);
}

#[test]
fn session_expiry_absent_means_the_session_ends_with_the_connection_mqtt_3_1_2_23() {
    let mut sim = Sim::default();
    let (s, _) = sim.connect_v5("s", false, None);
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    assert_eq!(sim.broker.session_count(), 0);
    let (_, ack) = sim.connect_v5("s", false, None);
    assert!(!ack.session_present);
}

#[test]
fn reconnecting_before_expiry_keeps_the_session_and_restarts_the_clock() {
    let mut sim = Sim::default();
    let (s, _) = sim.connect_v5("s", false, Some(10));
    sim.disconnect(s);
    sim.advance(Duration::from_secs(8));
    let (s, ack) = sim.connect_v5("s", false, Some(10));
    assert!(ack.session_present);
    sim.advance(Duration::from_secs(30)); // online: no expiry
    sim.send(s, Packet::PingReq);
    sim.disconnect(s);
    sim.advance(Duration::from_secs(9));
    assert_eq!(sim.broker.session_count(), 1);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn persistent_3_1_1_sessions_get_the_default_session_expiry() {
    let mut sim = Sim::new(Config {
        default_session_expiry: 100,
        ..Config::default()
    });
    let s = sim.connect(V4, "s", false);
    sim.disconnect(s);
    sim.advance(Duration::from_secs(99));
    assert_eq!(sim.broker.session_count(), 1);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.broker.session_count(), 0);
    let (_, ack) = sim.connect_with(connect_packet(V4, "s", false));
    assert!(!ack.session_present);
}

#[test]
fn max_session_expiry_lowers_the_request_and_connack_says_so_mqtt_3_2_2_3() {
    let mut sim = Sim::new(Config {
        max_session_expiry: 50,
        ..Config::default()
    });
    let (s, ack) = sim.connect_v5("s", false, Some(7200));
    assert_eq!(ack.properties.session_expiry_interval, Some(50));
    sim.disconnect(s);
    sim.advance(Duration::from_secs(49));
    assert_eq!(sim.broker.session_count(), 1);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.broker.session_count(), 0);

    // "Never expires" is lowered too.
    let (_, ack) = sim.connect_v5("forever", false, Some(u32::MAX));
    assert_eq!(ack.properties.session_expiry_interval, Some(50));
    // Within the maximum: no property.
    let (_, ack) = sim.connect_v5("short", false, Some(20));
    assert_eq!(ack.properties.session_expiry_interval, None);
}

// ------------------------------------------------------------------ takeover

#[test]
fn takeover_sends_0x8e_to_the_old_5_0_connection_mqtt_3_1_4_3() {
    let mut sim = Sim::default();
    let (old, _) = sim.connect_v5("dev", false, Some(600));
    sim.subscribe(old, "t", QoS::AtLeastOnce);
    let (new, ack) = sim.connect_v5("dev", false, Some(600));
    assert!(ack.session_present);
    assert_eq!(sim.expect_disconnect(old), ReasonCode::SessionTakenOver);
    assert_eq!(sim.closed(old), Some(ReasonCode::SessionTakenOver));
    sim.assert_silent(old);
    assert_eq!(sim.broker.stats().takeovers, 1);

    // The subscription moved with the session to the new connection.
    let pb = sim.connect(V5, "pub", true);
    sim.publish(pb, "t", QoS::AtLeastOnce, false, b"hi");
    assert_eq!(payloads(&sim.publishes(new)), vec![&b"hi"[..]]);
    assert!(sim.clients[old].inbox.is_empty());
    assert_eq!(sim.closed(new), None);
}

#[test]
fn takeover_closes_the_old_3_1_1_connection_without_a_packet_mqtt_3_1_4_2() {
    let mut sim = Sim::default();
    let old = sim.connect(V4, "dev", false);
    let before = sim.clients[old].raw.len();
    let (_, ack) = sim.connect_with(connect_packet(V4, "dev", false));
    assert!(ack.session_present);
    assert_eq!(sim.closed(old), Some(ReasonCode::SessionTakenOver));
    assert_eq!(sim.clients[old].raw.len(), before);
}

#[test]
fn takeover_of_a_session_that_ends_with_its_connection_starts_a_new_one_mqtt_3_2_2_2() {
    // The old connection's session has expiry 0 (3.1.1 Clean Session 1, 5.0 without
    // Session Expiry): it ends when the old connection is taken over, so the new
    // connection, even with Clean Start 0, gets a new session: Session Present 0.
    for (old_p, new_p) in [
        (
            connect_packet(V4, "dev", true),
            connect_packet(V4, "dev", false),
        ),
        (connect_packet(V5, "dev", false), {
            let mut p = connect_packet(V5, "dev", false);
            p.properties.session_expiry_interval = Some(60);
            p
        }),
    ] {
        let mut sim = Sim::default();
        let (old, _) = sim.connect_with(old_p);
        sim.subscribe(old, "old/sub", QoS::AtLeastOnce);
        let (new, ack) = sim.connect_with(new_p);
        assert_eq!(ack.reason_code, ReasonCode::Success);
        assert!(!ack.session_present);
        assert_eq!(sim.closed(old), Some(ReasonCode::SessionTakenOver));
        assert_eq!(sim.broker.session_count(), 1);
        // The new session works and has none of the old subscriptions.
        sim.subscribe(new, "new/sub", QoS::AtLeastOnce);
        let pb = sim.connect(V4, "pub", true);
        sim.publish(pb, "old/sub", QoS::AtLeastOnce, false, b"old");
        sim.publish(pb, "new/sub", QoS::AtLeastOnce, false, b"new");
        assert_eq!(payloads(&sim.publishes(new)), vec![&b"new"[..]]);
        sim.disconnect(new);
        let (_, ack) = sim.connect_with(connect_packet(V4, "dev", false));
        assert!(ack.session_present, "the new session persists");
    }
}

#[test]
fn takeover_with_clean_start_discards_the_session() {
    let mut sim = Sim::default();
    let (old, _) = sim.connect_v5("dev", false, Some(600));
    sim.subscribe(old, "t", QoS::AtLeastOnce);
    let (new, ack) = sim.connect_v5("dev", true, Some(600));
    assert!(!ack.session_present);
    assert_eq!(sim.expect_disconnect(old), ReasonCode::SessionTakenOver);
    let pb = sim.connect(V5, "pub", true);
    sim.publish(pb, "t", QoS::AtLeastOnce, false, b"x");
    sim.assert_silent(new);
}

// ------------------------------------------------------------------ DISCONNECT expiry

#[test]
fn disconnect_may_not_set_expiry_when_connect_had_zero_mqtt_3_14_2_2() {
    let mut sim = Sim::default();
    let watcher = sim.connect(V5, "w", true);
    sim.subscribe(watcher, "will", QoS::AtMostOnce);
    let mut p = connect_packet(V5, "s", false);
    p.will = Some(will("will", b"abnormal", QoS::AtMostOnce, false));
    let (s, _) = sim.connect_with(p);
    disconnect_with_expiry(&mut sim, s, 30);
    assert_eq!(sim.expect_disconnect(s), ReasonCode::ProtocolError);
    assert_eq!(sim.closed(s), Some(ReasonCode::ProtocolError));
    // Not a valid DISCONNECT: the will is published and the session is gone.
    assert_eq!(payloads(&sim.publishes(watcher)), vec![&b"abnormal"[..]]);
    assert_eq!(sim.broker.session_count(), 1);
}

#[test]
fn disconnect_with_expiry_zero_ends_the_session_now_mqtt_3_14_2_2() {
    let mut sim = Sim::default();
    let (s, _) = sim.connect_v5("s", false, Some(100));
    disconnect_with_expiry(&mut sim, s, 0);
    assert_eq!(sim.closed(s), Some(ReasonCode::Success));
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn disconnect_may_lengthen_a_non_zero_expiry_mqtt_3_14_2_2() {
    let mut sim = Sim::default();
    let (s, _) = sim.connect_v5("s", false, Some(10));
    disconnect_with_expiry(&mut sim, s, 500);
    sim.advance(Duration::from_secs(499));
    assert!(session_exists(&mut sim, "s"));
}

#[test]
fn disconnect_expiry_is_capped_by_max_session_expiry() {
    let mut sim = Sim::new(Config {
        max_session_expiry: 50,
        ..Config::default()
    });
    let (s, _) = sim.connect_v5("s", false, Some(10));
    disconnect_with_expiry(&mut sim, s, 5000);
    sim.advance(Duration::from_secs(51));
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn takeover_resends_unacknowledged_messages_on_the_new_connection_mqtt_4_4_0_1() {
    let mut sim = Sim::default();
    let old = sim.connect(V4, "dev", false);
    sim.subscribe(old, "t", QoS::AtLeastOnce);
    let p = sim.connect(V4, "pub", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, b"unacked");
    let first = sim.publishes(old);
    let (new, ack) = sim.connect_with(connect_packet(V4, "dev", false));
    assert!(ack.session_present);
    let again = sim.publishes(new);
    assert_eq!(payloads(&again), vec![&b"unacked"[..]]);
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, first[0].packet_id);
}
