//! Memory and backpressure (ARCHITECTURE.md): slow consumers never block anyone,
//! every queue is bounded, every drop is counted.
mod sim;

use core::num::NonZeroU16;
use core::time::Duration;

use broker_state::{Config, OverflowPolicy, QueueLimits, SessionEnd};
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A 5.0 subscriber to `t` at `qos` with a Receive Maximum, persistent if `expiry`.
fn subscriber(sim: &mut Sim, id: &str, receive_max: u16, expiry: Option<u32>, qos: QoS) -> C {
    let mut p = connect_packet(V5, id, false);
    p.properties.receive_maximum = NonZeroU16::new(receive_max);
    p.properties.session_expiry_interval = expiry;
    let (c, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sim.subscribe(c, "t", qos);
    c
}

fn numbered(sim: &mut Sim, publisher: C, qos: QoS, range: core::ops::RangeInclusive<u8>) {
    for i in range {
        sim.publish(publisher, "t", qos, false, &[i]);
    }
}

fn numbers(ps: &[Publish]) -> Vec<u8> {
    ps.iter().map(|p| p.payload[0]).collect()
}

/// Reads and acknowledges until nothing more comes; returns what arrived.
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

// ------------------------------------------------------------------ slow consumer

#[test]
fn slow_subscriber_blocks_neither_publisher_nor_other_subscribers_qos0() {
    let mut sim = Sim::new(Config {
        outbound_buffer_bytes: 10_000,
        outbound_burst_bytes: 0,
        ..Config::default()
    });
    let slow = sim.connect(V4, "slow", true);
    let fast = sim.connect(V5, "fast", true);
    sim.subscribe(slow, "t", QoS::AtMostOnce);
    sim.subscribe(fast, "t", QoS::AtMostOnce);
    sim.reading[slow] = false;
    let p = sim.connect(V5, "p", true);
    for i in 0..1000u32 {
        sim.publish(
            p,
            "t",
            QoS::AtMostOnce,
            false,
            &[&i.to_be_bytes()[..], &[0; 96]].concat(),
        );
    }
    assert_eq!(sim.publishes(fast).len(), 1000);
    assert_eq!(sim.closed(p), None);

    sim.resume_reading(slow);
    let got = sim.publishes(slow);
    let dropped = sim.broker.stats().dropped_qos0_slow_consumer;
    assert!(!got.is_empty() && got.len() < 100, "bounded: {}", got.len());
    assert_eq!(got.len() as u64 + dropped, 1000, "every drop counted");
    // The oldest were kept: a QoS 0 message is dropped when the buffer is full.
    assert_eq!(&got[0].payload[..4], &0u32.to_be_bytes());

    // Reading again, it gets new messages again.
    sim.publish(p, "t", QoS::AtMostOnce, false, b"fresh");
    assert_eq!(payloads(&sim.publishes(slow)), vec![&b"fresh"[..]]);
}

#[test]
fn a_burst_beyond_the_buffer_is_held_while_the_shared_allowance_lasts() {
    let mut sim = Sim::new(Config {
        outbound_buffer_bytes: 10_000,
        outbound_burst_bytes: 30_000,
        ..Config::default()
    });
    let first = sim.connect(V5, "first", true);
    let second = sim.connect(V5, "second", true);
    sim.subscribe(first, "a", QoS::AtMostOnce);
    sim.subscribe(second, "b", QoS::AtMostOnce);
    sim.reading[first] = false;
    sim.reading[second] = false;
    let p = sim.connect(V5, "p", true);
    let message = |i: u32| [&i.to_be_bytes()[..], &[0; 96]].concat();
    // The first subscriber to fall behind takes the whole allowance: its buffer
    // and the burst, about 40 KB.
    for i in 0..1000u32 {
        sim.publish(p, "a", QoS::AtMostOnce, false, &message(i));
    }
    sim.broker.check_invariants().unwrap();
    // The second gets its own buffer only.
    for i in 0..1000u32 {
        sim.publish(p, "b", QoS::AtMostOnce, false, &message(i));
    }
    sim.resume_reading(first);
    sim.resume_reading(second);
    let (a, b) = (sim.publishes(first), sim.publishes(second));
    assert!(
        a.len() > 3 * b.len() && b.len() > 10,
        "the burst went to the first: {} and {} held",
        a.len(),
        b.len()
    );
    assert_eq!(
        (a.len() + b.len()) as u64 + sim.broker.stats().dropped_qos0_slow_consumer,
        2000,
        "every drop counted"
    );
    // Drained, the allowance is free again: now the second may burst.
    sim.reading[second] = false;
    for i in 0..1000u32 {
        sim.publish(p, "b", QoS::AtMostOnce, false, &message(i));
    }
    sim.resume_reading(second);
    let again = sim.publishes(second);
    assert!(again.len() > 3 * b.len(), "{} after the drain", again.len());
    sim.broker.check_invariants().unwrap();
}

#[test]
fn slow_subscriber_blocks_neither_publisher_nor_other_subscribers_qos1() {
    let mut sim = Sim::new(Config {
        online_queue: QueueLimits {
            messages: 50,
            bytes: 1 << 20,
        },
        ..Config::default()
    });
    let slow = subscriber(&mut sim, "slow", 10, None, QoS::AtLeastOnce);
    let fast = subscriber(&mut sim, "fast", 10, None, QoS::AtLeastOnce);
    sim.reading[slow] = false;
    let p = sim.connect(V4, "p", true);
    let mut fast_got = Vec::new();
    for i in 0..=199u8 {
        let pid = sim.publish(p, "t", QoS::AtLeastOnce, false, &[i]).unwrap();
        assert_eq!(sim.expect_puback(p).packet_id, pid, "publisher never waits");
        let batch = sim.publishes(fast);
        sim.ack_all(fast, &batch);
        fast_got.extend(batch);
    }
    assert_eq!(numbers(&fast_got), (0..=199).collect::<Vec<u8>>());
    // The slow one holds its window (10) and a full queue (50); older ones dropped.
    assert_eq!(sim.broker.queued_messages("slow"), Some(50));
    assert_eq!(sim.broker.stats().dropped_online_queue_full, 140);
    sim.resume_reading(slow);
    let got = drain_acking(&mut sim, slow);
    let mut expected: Vec<u8> = (0..10).collect();
    expected.extend(150..=199);
    assert_eq!(numbers(&got), expected);
}

// ------------------------------------------------------------------ in-flight window

#[test]
fn qos1_beyond_the_receive_maximum_waits_in_the_session_queue_mqtt_4_9_0_2() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, "s", 2, None, QoS::ExactlyOnce);
    let p = sim.connect(V5, "p", true);
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=5);
    let first = sim.publishes(s);
    assert_eq!(
        numbers(&first),
        [1, 2],
        "no more than Receive Maximum in flight"
    );
    assert_eq!(sim.broker.queued_messages("s"), Some(3));
    sim.send(s, Packet::PubAck(PubAck::new(first[0].packet_id.unwrap())));
    assert_eq!(
        numbers(&sim.publishes(s)),
        [3],
        "one acknowledged, one more sent"
    );
    sim.ack_all(s, &first[1..]);
    let rest = drain_acking(&mut sim, s);
    assert_eq!(numbers(&rest), [4, 5]);
    assert_eq!(sim.broker.stats().dropped_online_queue_full, 0);
}

/// A QoS 1 PUBLISH waiting to be written is encoded from the session's in-flight
/// window, not from a copy: a client that acknowledges packet ids it has not been
/// sent yet (a protocol error the broker tolerates) must not make the broker send a
/// stale or wrong message, and the rest keep their order.
#[test]
fn puback_for_a_publish_not_yet_written_drops_it_and_keeps_the_rest_in_order() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, "s", 10, None, QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    sim.reading[s] = false;
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=4);
    // Ids are given out 1, 2, 3, 4 in publication order; acknowledge 2 early.
    let early = PacketId::new(2).unwrap();
    sim.send(s, Packet::PubAck(PubAck::new(early)));
    sim.broker
        .check_invariants()
        .expect("invariants after the early PUBACK");
    sim.resume_reading(s);
    let got = sim.publishes(s);
    assert_eq!(numbers(&got), [1, 3, 4]);
    assert!(got.iter().all(|p| p.packet_id != Some(early) && !p.dup));
    sim.ack_all(s, &got);
    sim.broker
        .check_invariants()
        .expect("invariants after the acks");
    // The window is empty again: new messages flow.
    numbered(&mut sim, p, QoS::AtLeastOnce, 5..=5);
    assert_eq!(numbers(&sim.publishes(s)), [5]);
}

/// The output queue names in-flight PUBLISHes; one still waiting when the broker
/// closes the connection (here: keep-alive [MQTT-3.1.2-24]) is written before the
/// DISCONNECT, as any queued packet is, and comes again with DUP on reconnect.
#[test]
fn publish_waiting_when_the_broker_closes_the_connection_is_still_written() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, "s", 10, Some(300), QoS::AtLeastOnce);
    let mut p = connect_packet(V5, "p", true);
    p.keep_alive = 0;
    let (p, _) = sim.connect_with(p);
    sim.reading[s] = false;
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=2);
    // 1.5 x 60 s of silence from s.
    sim.advance(Duration::from_secs(91));
    assert_eq!(sim.closed(s), Some(ReasonCode::KeepAliveTimeout));
    let got: Vec<Packet> = sim.recv_all(s);
    let publishes: Vec<u8> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.payload[0]),
            _ => None,
        })
        .collect();
    assert_eq!(publishes, [1, 2]);
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::KeepAliveTimeout),
        "DISCONNECT last: {got:?}"
    );
    // Unacknowledged: resent with DUP to the next connection of the session.
    let mut again = connect_packet(V5, "s", false);
    again.properties.session_expiry_interval = Some(300);
    let (s2, ack) = sim.connect_with(again);
    assert!(ack.session_present);
    let resent = sim.publishes(s2);
    assert_eq!(numbers(&resent), [1, 2]);
    assert!(resent.iter().all(|p| p.dup));
}

#[test]
fn qos2_holds_its_window_slot_until_pubcomp_mqtt_4_9_0_2() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, "s", 1, None, QoS::ExactlyOnce);
    let p = sim.connect(V5, "p", true);
    numbered(&mut sim, p, QoS::ExactlyOnce, 1..=2);
    let first = sim.publishes(s);
    assert_eq!(numbers(&first), [1]);
    let sid = first[0].packet_id.unwrap();
    sim.send(s, Packet::PubRec(PubAck::new(sid)));
    assert!(matches!(sim.recv(s), Some(Packet::PubRel(_))));
    sim.assert_silent(s); // PUBREC alone does not free the slot
    sim.send(s, Packet::PubComp(PubAck::new(sid)));
    assert_eq!(numbers(&sim.publishes(s)), [2]);
}

#[test]
fn mqtt_3_1_1_window_is_max_inflight_v3() {
    let mut sim = Sim::new(Config {
        max_inflight_v3: 3,
        ..Config::default()
    });
    let s = sim.connect(V4, "s", true);
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    let p = sim.connect(V4, "p", true);
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=5);
    assert_eq!(numbers(&sim.publishes(s)).len(), 3);
    assert_eq!(sim.broker.queued_messages("s"), Some(2));
}

// ------------------------------------------------------------------ online queue

#[test]
fn full_online_queue_drops_the_oldest_qos1_message_and_counts_it() {
    let mut sim = Sim::new(Config {
        online_queue: QueueLimits {
            messages: 3,
            bytes: 1 << 20,
        },
        ..Config::default()
    });
    let s = subscriber(&mut sim, "s", 1, None, QoS::ExactlyOnce);
    let p = sim.connect(V5, "p", true);
    // 1 in flight; the queue holds 3; 5 and 6 push out 2 and 3.
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=6);
    assert_eq!(sim.broker.stats().dropped_online_queue_full, 2);
    assert_eq!(numbers(&drain_acking(&mut sim, s)), [1, 4, 5, 6]);
}

#[test]
fn full_online_queue_never_drops_queued_qos2() {
    let mut sim = Sim::new(Config {
        online_queue: QueueLimits {
            messages: 2,
            bytes: 1 << 20,
        },
        ..Config::default()
    });
    let s = subscriber(&mut sim, "s", 1, None, QoS::ExactlyOnce);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[1]); // in flight
    sim.publish(p, "t", QoS::ExactlyOnce, false, &[2]); // queued
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[3]); // queued
    sim.publish(p, "t", QoS::ExactlyOnce, false, &[4]); // drops 3
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[5]); // only QoS 2 queued: dropped
    assert_eq!(sim.broker.stats().dropped_online_queue_full, 2);
    assert_eq!(numbers(&drain_acking(&mut sim, s)), [1, 2, 4]);
}

// ------------------------------------------------------------------ offline queue

fn offline_overflow(policy: OverflowPolicy, limits: QueueLimits) -> (Sim, C) {
    let mut sim = Sim::new(Config {
        offline_queue: limits,
        offline_overflow: policy,
        ..Config::default()
    });
    let s = subscriber(&mut sim, "s", 100, Some(600), QoS::AtLeastOnce);
    sim.disconnect(s);
    let p = sim.connect(V5, "p", true);
    (sim, p)
}

fn reconnect(sim: &mut Sim) -> (C, bool) {
    let (c, ack) = sim.connect_v5("s", false, Some(600));
    (c, ack.session_present)
}

const THREE: QueueLimits = QueueLimits {
    messages: 3,
    bytes: 1 << 20,
};

#[test]
fn offline_queue_overflow_ends_the_session_by_default() {
    let (mut sim, p) = offline_overflow(OverflowPolicy::default(), THREE);
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=3);
    assert_eq!(sim.broker.session_count(), 2);
    numbered(&mut sim, p, QoS::AtLeastOnce, 4..=4);
    assert_eq!(sim.broker.stats().sessions_ended_by_overflow, 1);
    assert_eq!(sim.broker.session_count(), 1);
    // The decision is visible to the operator: client id, reason, what was lost.
    assert_eq!(sim.ended, [("s".to_owned(), SessionEnd::QueueOverflow, 3)]);
    let (s, present) = reconnect(&mut sim);
    assert!(!present);
    sim.assert_silent(s);
}

#[test]
fn offline_queue_overflow_drop_oldest_keeps_the_newest() {
    let (mut sim, p) = offline_overflow(OverflowPolicy::DropOldest, THREE);
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=5);
    assert_eq!(sim.broker.stats().dropped_offline_queue_full, 2);
    let (s, present) = reconnect(&mut sim);
    assert!(present);
    assert_eq!(numbers(&drain_acking(&mut sim, s)), [3, 4, 5]);
}

#[test]
fn offline_queue_overflow_drop_newest_keeps_the_oldest() {
    let (mut sim, p) = offline_overflow(OverflowPolicy::DropNewest, THREE);
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=5);
    assert_eq!(sim.broker.stats().dropped_offline_queue_full, 2);
    let (s, present) = reconnect(&mut sim);
    assert!(present);
    assert_eq!(numbers(&drain_acking(&mut sim, s)), [1, 2, 3]);
}

#[test]
fn offline_queue_byte_limit_applies_too() {
    // Each message is about 1 KiB: 4 fit in 4,500 bytes.
    let limits = QueueLimits {
        messages: 100,
        bytes: 4_500,
    };
    let (mut sim, p) = offline_overflow(OverflowPolicy::DropOldest, limits);
    for i in 1..=6u8 {
        sim.publish(
            p,
            "t",
            QoS::AtLeastOnce,
            false,
            &[&[i][..], &[0; 1023]].concat(),
        );
    }
    assert_eq!(sim.broker.stats().dropped_offline_queue_full, 2);
    let (s, _) = reconnect(&mut sim);
    assert_eq!(numbers(&drain_acking(&mut sim, s)), [3, 4, 5, 6]);
}

#[test]
fn a_message_larger_than_the_whole_offline_queue_does_not_flush_it() {
    // DropOldest makes room for a new message; one that can never fit is dropped
    // alone rather than after discarding everything queued before it.
    let limits = QueueLimits {
        messages: 100,
        bytes: 300,
    };
    let (mut sim, p) = offline_overflow(OverflowPolicy::DropOldest, limits);
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=2);
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[9; 1000]);
    assert_eq!(sim.broker.stats().dropped_offline_queue_full, 1);
    let (s, _) = reconnect(&mut sim);
    assert_eq!(numbers(&drain_acking(&mut sim, s)), [1, 2]);
}

#[test]
fn a_message_larger_than_the_whole_online_queue_does_not_flush_it() {
    let mut sim = Sim::new(Config {
        online_queue: QueueLimits {
            messages: 100,
            bytes: 300,
        },
        ..Config::default()
    });
    let s = subscriber(&mut sim, "s", 1, None, QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    numbered(&mut sim, p, QoS::AtLeastOnce, 1..=3); // 1 in flight, 2 and 3 queued
    sim.publish(p, "t", QoS::AtLeastOnce, false, &[9; 1000]);
    assert_eq!(sim.broker.stats().dropped_online_queue_full, 1);
    assert_eq!(numbers(&drain_acking(&mut sim, s)), [1, 2, 3]);
}
