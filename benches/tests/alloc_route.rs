//! Routing allocates nothing per delivered message in steady state: after a
//! warm-up, 1000 publishes routed to 1 and to 100 subscribers (QoS 0, and QoS 1 with
//! the subscribers' PUBACKs fed back) make zero heap allocations, from
//! `handle_packet` to encoded bytes out of `poll_transmit`. Counted by the counting
//! global allocator the codec allocation test and the fuzz targets share.

include!("../../mqtt-proto/tests/support/counting_alloc.rs");

use mqtt_proto::QoS;

use brokk_benches::routing::Fanout;

const WARM_UP: usize = 1000;
const MEASURED: u64 = 1000;

/// Allocations made by `MEASURED` publishes after the warm-up.
fn allocations_per_1000(subscribers: usize, qos: QoS) -> u64 {
    let mut f = Fanout::new(subscribers, qos);
    for _ in 0..WARM_UP {
        f.publish_once();
    }
    let delivered = f.deliveries();
    let before = allocations();
    for _ in 0..MEASURED {
        f.publish_once();
    }
    let made = allocations() - before;
    assert_eq!(
        f.deliveries() - delivered,
        MEASURED * subscribers as u64,
        "every publish reached every subscriber"
    );
    made
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![0u8; 64]);
    assert!(allocations() > before);
    drop(v);
}

#[test]
fn qos0_to_1_subscriber_allocates_nothing() {
    assert_eq!(allocations_per_1000(1, QoS::AtMostOnce), 0);
}

#[test]
fn qos0_to_100_subscribers_allocates_nothing() {
    assert_eq!(allocations_per_1000(100, QoS::AtMostOnce), 0);
}

#[test]
fn qos1_to_1_subscriber_with_acks_allocates_nothing() {
    assert_eq!(allocations_per_1000(1, QoS::AtLeastOnce), 0);
}

#[test]
fn qos1_to_100_subscribers_with_acks_allocates_nothing() {
    assert_eq!(allocations_per_1000(100, QoS::AtLeastOnce), 0);
}
