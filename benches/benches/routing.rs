//! Routing benches of the broker core (`broker-state`): one PUBLISH from
//! `handle_packet` to encoded bytes out of `poll_transmit`, fanned out to 1, 100 and
//! 10,000 subscribers at QoS 0; QoS 1 to one subscriber with its PUBACK fed back;
//! and one publish matched against 100,000 subscriptions. Throughput is in
//! deliveries (fan-out) or publishes (trie) per second. Results and the command are
//! in `benches/README.md`; the setup is `brokk_benches::routing`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mqtt_proto::QoS;

use brokk_benches::routing::{Fanout, WideTrie};

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for (name, subscribers, qos) in [
        ("qos0_1_subscriber", 1, QoS::AtMostOnce),
        ("qos0_100_subscribers", 100, QoS::AtMostOnce),
        ("qos0_10000_subscribers", 10_000, QoS::AtMostOnce),
        ("qos1_1_subscriber_acked", 1, QoS::AtLeastOnce),
    ] {
        let mut f = Fanout::new(subscribers, qos);
        // Warm up buffers and queues to their steady-state capacity.
        for _ in 0..1000 {
            f.publish_once();
        }
        let before = f.deliveries();
        f.publish_once();
        assert_eq!(
            f.deliveries() - before,
            subscribers as u64,
            "{name}: one delivery per subscriber"
        );
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(name, |b| b.iter(|| black_box(f.publish_once())));
    }
    group.finish();
}

fn trie(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    let mut t = WideTrie::new(100_000);
    let topics = t.topics(4096);
    for _ in 0..4096 {
        t.publish_once(&topics);
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("match_100000_subscriptions", |b| {
        b.iter(|| black_box(t.publish_once(&topics)))
    });
    group.finish();
}

criterion_group!(benches, fanout, trie);
criterion_main!(benches);
