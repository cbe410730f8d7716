//! Persistence as effects: what a broker rebuilt from its store shows reconnecting
//! clients, and the determinism property (same inputs, same seed: same bytes).
mod sim;

use std::time::Duration;

use broker_state::{Config, OverflowPolicy, QueueLimits};
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

fn drain_acking(sim: &mut Sim, c: C) -> Vec<Publish> {
    let mut all = Vec::new();
    loop {
        let batch = sim.publishes(c);
        if batch.is_empty() {
            return all;
        }
        sim.ack_all(c, &batch);
        all.extend(batch);
    }
}

#[test]
fn restart_restores_sessions_subscriptions_queues_and_retained() {
    let mut sim = Sim::new(durable());
    let a = sim.connect(V4, "a", false);
    sim.subscribe(a, "q/#", QoS::AtLeastOnce);
    sim.disconnect(a);
    let (b, _) = sim.connect_v5("b", false, Some(600));
    sim.subscribe(b, "q/b", QoS::ExactlyOnce);
    sim.disconnect(b);
    let clean = sim.connect(V4, "clean", true);
    sim.subscribe(clean, "q/#", QoS::AtLeastOnce);

    let p = sim.connect(V5, "p", true);
    for i in 1..=3u8 {
        sim.publish(p, "q/a", QoS::AtLeastOnce, false, &[i]);
    }
    sim.publish(p, "q/b", QoS::ExactlyOnce, false, b"two");
    sim.publish(p, "q/a", QoS::AtMostOnce, false, b"qos0: not queued");
    sim.publish(p, "r/x", QoS::AtMostOnce, true, b"retained");
    sim.publish(p, "r/gone", QoS::AtMostOnce, true, b"cleared below");
    sim.publish(p, "r/gone", QoS::AtMostOnce, true, b"");

    sim.restart_from_store(durable());

    let (a, ack) = sim.connect_with(connect_packet(V4, "a", false));
    assert!(ack.session_present);
    let got = drain_acking(&mut sim, a);
    assert_eq!(payloads(&got), vec![&[1u8][..], &[2], &[3], b"two"]);
    assert!(got.iter().all(|m| m.qos == QoS::AtLeastOnce));

    let (b, ack) = sim.connect_v5("b", false, Some(600));
    assert!(ack.session_present);
    let got = drain_acking(&mut sim, b);
    assert_eq!(payloads(&got), vec![&b"two"[..]]);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);

    // The clean session was never stored.
    let (_, ack) = sim.connect_with(connect_packet(V4, "clean", false));
    assert!(!ack.session_present);

    // Subscriptions route again, retained messages are there for new subscriptions.
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "q/b", QoS::AtLeastOnce, false, b"after restart");
    assert_eq!(payloads(&sim.publishes(a)), vec![&b"after restart"[..]]);
    assert_eq!(payloads(&sim.publishes(b)), vec![&b"after restart"[..]]);
    sim.subscribe(b, "r/#", QoS::AtMostOnce);
    let got = sim.publishes(b);
    assert_eq!(payloads(&got), vec![&b"retained"[..]]);
    assert!(got[0].retain);
}

#[test]
fn acknowledged_messages_are_not_replayed_after_restart() {
    let mut sim = Sim::new(durable());
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    for i in 1..=3u8 {
        sim.publish(p, "t", QoS::AtLeastOnce, false, &[i]);
    }
    let got = sim.publishes(s);
    sim.ack_all(s, &got[..2]);
    sim.restart_from_store(durable());
    let (s, ack) = sim.connect_v5("s", false, Some(600));
    assert!(ack.session_present);
    assert_eq!(payloads(&drain_acking(&mut sim, s)), vec![&[3u8][..]]);
}

#[test]
fn unsubscribe_survives_a_restart() {
    let mut sim = Sim::new(durable());
    let s = sim.connect(V4, "s", false);
    sim.subscribe(s, "a", QoS::AtLeastOnce);
    sim.subscribe(s, "b", QoS::AtLeastOnce);
    sim.unsubscribe(s, "a");
    sim.disconnect(s);
    sim.restart_from_store(durable());
    let (s, _) = sim.connect_with(connect_packet(V4, "s", false));
    let p = sim.connect(V4, "p", true);
    sim.publish(p, "a", QoS::AtMostOnce, false, b"a");
    sim.publish(p, "b", QoS::AtMostOnce, false, b"b");
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"b"[..]]);
}

#[test]
fn session_expiry_continues_across_a_restart() {
    let mut sim = Sim::new(durable());
    let (s, _) = sim.connect_v5("s", false, Some(100));
    sim.disconnect(s);
    sim.advance(Duration::from_secs(50));
    sim.restart_from_store(durable());
    sim.advance(Duration::from_secs(49));
    assert_eq!(sim.broker.session_count(), 1);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.broker.session_count(), 0);
    let (_, ack) = sim.connect_v5("s", false, Some(100));
    assert!(!ack.session_present);
}

#[test]
fn expired_session_is_not_restored() {
    let mut sim = Sim::new(durable());
    let (s, _) = sim.connect_v5("s", false, Some(10));
    sim.disconnect(s);
    sim.advance(Duration::from_secs(11));
    sim.restart_from_store(durable());
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn session_ended_by_disconnect_expiry_zero_is_not_restored_mqtt_3_14_2_2() {
    let mut sim = Sim::new(durable());
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(0);
    sim.send(s, Packet::Disconnect(d));
    assert_eq!(sim.broker.session_count(), 0);
    sim.restart_from_store(durable());
    assert_eq!(sim.broker.session_count(), 0);
    let (_, ack) = sim.connect_v5("s", false, Some(600));
    assert!(!ack.session_present);
}

#[test]
fn session_resumed_with_expiry_zero_is_not_restored_mqtt_3_1_2_23() {
    let mut sim = Sim::new(durable());
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    // Resumed, now ending with its connection.
    let (s, ack) = sim.connect_v5("s", false, None);
    assert!(ack.session_present);
    sim.disconnect(s);
    assert_eq!(sim.broker.session_count(), 0);
    sim.restart_from_store(durable());
    assert_eq!(sim.broker.session_count(), 0);
    let (_, ack) = sim.connect_v5("s", false, Some(600));
    assert!(!ack.session_present);
}

#[test]
fn session_ended_by_offline_overflow_is_not_restored() {
    let config = Config {
        offline_queue: QueueLimits {
            messages: 2,
            bytes: 1 << 20,
        },
        ..durable()
    };
    let mut sim = Sim::new(config.clone());
    let s = sim.connect(V4, "s", false);
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    let p = sim.connect(V4, "p", true);
    for i in 0..3u8 {
        sim.publish(p, "t", QoS::AtLeastOnce, false, &[i]);
    }
    sim.restart_from_store(config);
    let (_, ack) = sim.connect_with(connect_packet(V4, "s", false));
    assert!(!ack.session_present);
}

#[test]
fn drop_oldest_overflow_is_reflected_in_the_store() {
    let config = Config {
        offline_queue: QueueLimits {
            messages: 2,
            bytes: 1 << 20,
        },
        offline_overflow: OverflowPolicy::DropOldest,
        ..durable()
    };
    let mut sim = Sim::new(config.clone());
    let s = sim.connect(V4, "s", false);
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    let p = sim.connect(V4, "p", true);
    for i in 1..=5u8 {
        sim.publish(p, "t", QoS::AtLeastOnce, false, &[i]);
    }
    assert_eq!(sim.store.queued("s"), 2);
    sim.restart_from_store(config);
    let (s, _) = sim.connect_with(connect_packet(V4, "s", false));
    assert_eq!(payloads(&drain_acking(&mut sim, s)), vec![&[4u8][..], &[5]]);
}

#[test]
fn clean_start_over_a_stored_session_replaces_it_in_the_store() {
    let mut sim = Sim::new(durable());
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.subscribe(s, "old", QoS::AtLeastOnce);
    sim.disconnect(s);
    let (s, ack) = sim.connect_v5("s", true, Some(600));
    assert!(!ack.session_present);
    sim.subscribe(s, "new", QoS::AtLeastOnce);
    sim.disconnect(s);
    sim.restart_from_store(durable());
    let (s, ack) = sim.connect_v5("s", false, Some(600));
    assert!(ack.session_present);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "old", QoS::AtMostOnce, false, b"old");
    sim.publish(p, "new", QoS::AtMostOnce, false, b"new");
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"new"[..]]);
}

// ------------------------------------------------------------------ determinism

/// A scenario touching every source of output: assigned ids, shared-subscription
/// picks, retained, QoS 1/2 flows, offline queues, wills, keep-alive and expiry
/// timers, store effects.
fn scenario(sim: &mut Sim) {
    let (anon, _) = sim.connect_v5("", false, Some(30));
    let a = sim.connect(V4, "a", false);
    let (b, _) = sim.connect_v5("b", true, Some(60));
    let mut wp = connect_packet(V5, "w", true);
    wp.will = Some(will("will/w", b"bye", QoS::AtLeastOnce, true));
    let (w, _) = sim.connect_with(wp);
    sim.subscribe(anon, "$share/g/jobs/#", QoS::AtLeastOnce);
    sim.subscribe(a, "$share/g/jobs/#", QoS::ExactlyOnce);
    sim.subscribe(b, "#", QoS::ExactlyOnce);
    sim.subscribe(a, "will/+", QoS::AtLeastOnce);
    for i in 0..40u8 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(i % 3)];
        sim.publish(w, &format!("jobs/{}", i % 4), qos, i % 5 == 0, &[i]);
        if i == 20 {
            sim.disconnect(a);
        }
    }
    sim.kill(w);
    for c in [anon, b] {
        let got = sim.publishes(c);
        sim.ack_all(c, &got);
    }
    sim.advance(Duration::from_secs(95)); // keep-alive of everyone still connected
    sim.connect_with(connect_packet(V4, "a", false));
    sim.advance(Duration::from_secs(3600));
}

#[test]
fn same_inputs_and_seed_give_byte_identical_output() {
    let mut one = Sim::new(durable());
    let mut two = Sim::new(durable());
    scenario(&mut one);
    scenario(&mut two);
    assert_eq!(one.clients.len(), two.clients.len());
    for (x, y) in one.clients.iter().zip(&two.clients) {
        assert!(!x.raw.is_empty());
        assert_eq!(x.raw, y.raw, "bytes to {:?}", x.conn);
        assert_eq!(x.closed, y.closed);
    }
    assert_eq!(one.store_ops, two.store_ops);
    assert!(!one.store_ops.is_empty());

    // The seed matters: another seed assigns other client ids.
    let mut three = Sim::with_seed(durable(), [1; 32]);
    scenario(&mut three);
    assert_ne!(one.clients[0].raw, three.clients[0].raw);
}
