//! First checks of the core through the simulation harness.
mod sim;

use std::time::Duration;

use mqtt_proto::{Packet, ProtocolVersion, QoS, ReasonCode};
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

#[test]
fn v311_and_v5_clients_exchange_messages_both_ways() {
    let mut sim = Sim::default();
    let a = sim.connect(V4, "a", true);
    let b = sim.connect(V5, "b", true);
    sim.subscribe(a, "to/a", QoS::AtLeastOnce);
    sim.subscribe(b, "to/b", QoS::ExactlyOnce);
    sim.publish(b, "to/a", QoS::AtLeastOnce, false, b"hello a");
    sim.publish(a, "to/b", QoS::ExactlyOnce, false, b"hello b");
    let got_a = sim.publishes(a);
    let got_b = sim.publishes(b);
    assert_eq!(payloads(&got_a), vec![&b"hello a"[..]]);
    assert_eq!(payloads(&got_b), vec![&b"hello b"[..]]);
    assert_eq!(got_a[0].qos, QoS::AtLeastOnce);
    assert_eq!(got_b[0].qos, QoS::ExactlyOnce);
}

#[test]
fn keepalive_expires_after_one_and_a_half_times_mqtt_3_1_2_24() {
    let mut sim = Sim::default();
    let c = sim.connect(V5, "k", true); // keep alive 60 s
    sim.advance(Duration::from_secs(89));
    assert_eq!(sim.closed(c), None);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.closed(c), Some(ReasonCode::KeepAliveTimeout));
    let last = sim.recv_all(c).pop();
    assert!(
        matches!(last, Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::KeepAliveTimeout)
    );
}

#[test]
fn persistent_session_receives_messages_queued_while_offline() {
    let mut sim = Sim::default();
    let s = sim.connect(V4, "sub", false);
    sim.subscribe(s, "q/#", QoS::AtLeastOnce);
    sim.disconnect(s);
    let p = sim.connect(V4, "pub", true);
    for i in 0..3u8 {
        sim.publish(p, "q/x", QoS::AtLeastOnce, false, &[i]);
    }
    let (s2, ack) = sim.connect_with(connect_packet(V4, "sub", false));
    assert!(ack.session_present);
    let got = sim.publishes(s2);
    assert_eq!(payloads(&got), vec![&[0u8][..], &[1], &[2]]);
}
