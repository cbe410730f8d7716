//! Test 1: random op sequences applied to `MemoryStore` and submitted to the
//! durable store in random batches; after close and reopen, the durable store's
//! replay equals `MemoryStore::replay`.

mod common;

use std::num::{NonZeroU16, NonZeroU32};

use broker_state::{MemoryStore, SessionRecord, StoreOp, StoredMessage, StoredWill};
use brokk_store::FsyncPolicy;
use bytes::Bytes;
use mqtt_proto::{
    MqttString, PayloadFormat, Publish, PublishProperties, QoS, RetainHandling,
    SubscriptionOptions, TopicFilter, TopicName, UserProperties,
};
use proptest::prelude::*;

const CLIENTS: &[&str] = &["a", "b", "c", "", "ü-client"];
const TOPICS: &[&str] = &["a", "a/b", "c/d/e", "é/ü", "$SYS/x"];
const FILTERS: &[&str] = &["#", "a/+", "$share/g/a/#", "+/+/e", "a/b"];

fn client() -> impl Strategy<Value = MqttString> {
    prop::sample::select(CLIENTS).prop_map(|s| MqttString::copy_from_str(s).unwrap())
}

fn topic() -> impl Strategy<Value = TopicName> {
    prop::sample::select(TOPICS).prop_map(|s| TopicName::copy_from_str(s).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn properties() -> impl Strategy<Value = PublishProperties> {
    (
        prop::option::of(prop_oneof![
            Just(PayloadFormat::Unspecified),
            Just(PayloadFormat::Utf8)
        ]),
        prop::option::of(any::<u32>()),
        prop::option::of(prop::sample::select(
            &["text/plain", "", "application/ü"][..],
        )),
        prop::option::of(topic()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        prop::collection::vec(1u32..=268_435_455, 0..3),
        prop::option::of(1u16..),
        prop::collection::vec(
            (
                prop::sample::select(&["k", "key", "", "ü"][..]),
                prop::sample::select(&["v", "", "value ü"][..]),
            ),
            0..3,
        ),
    )
        .prop_map(
            |(pfi, mei, ct, rt, cd, ids, alias, ups)| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                content_type: ct.map(|s| MqttString::copy_from_str(s).unwrap()),
                response_topic: rt,
                correlation_data: cd.map(Bytes::from),
                subscription_identifiers: ids.into_iter().filter_map(NonZeroU32::new).collect(),
                topic_alias: alias.and_then(NonZeroU16::new),
                user_properties: UserProperties::from_pairs(ups).unwrap(),
            },
        )
}

fn message() -> impl Strategy<Value = StoredMessage> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        prop_oneof![9 => topic(), 1 => Just(TopicName::default())],
        prop::option::of(1u16..),
        prop_oneof![1 => properties(), 1 => Just(PublishProperties::default())],
        prop::collection::vec(any::<u8>(), 0..40),
        prop::option::of(any::<u64>()),
    )
        .prop_map(
            |(dup, qos, retain, topic, pid, properties, payload, expires)| StoredMessage {
                publish: Publish {
                    dup,
                    qos,
                    retain,
                    topic,
                    packet_id: pid.and_then(NonZeroU16::new),
                    properties,
                    payload: Bytes::from(payload),
                },
                expires_at_unix_ms: expires,
            },
        )
}

fn options() -> impl Strategy<Value = SubscriptionOptions> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendIfNew),
            Just(RetainHandling::DoNotSend)
        ],
    )
        .prop_map(|(qos, no_local, rap, rh)| SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: rap,
            retain_handling: rh,
        })
}

fn record() -> impl Strategy<Value = SessionRecord> {
    (
        client(),
        prop::option::of(prop::sample::select(&["alice", "", "bøb"][..])),
        any::<u32>(),
        prop::option::of(any::<u64>()),
        prop::collection::vec(
            (
                prop::sample::select(FILTERS),
                options(),
                prop::option::of(1u32..=268_435_455),
            ),
            0..4,
        ),
        prop::option::of((message(), any::<u32>(), prop::option::of(any::<u64>()))),
    )
        .prop_map(
            |(client_id, auth, expiry, expires_at, subs, will)| SessionRecord {
                client_id,
                authentication_name: auth.map(str::to_string),
                expiry_interval: expiry,
                expires_at_unix_ms: expires_at,
                subscriptions: subs
                    .into_iter()
                    .map(|(f, o, id)| {
                        (
                            TopicFilter::copy_from_str(f).unwrap(),
                            o,
                            id.and_then(NonZeroU32::new),
                        )
                    })
                    .collect(),
                will: will.map(|(message, delay, at)| StoredWill {
                    message,
                    delay_interval: delay,
                    publish_at_unix_ms: at,
                }),
            },
        )
}

fn op() -> impl Strategy<Value = StoreOp> {
    let seq = 0u64..6;
    let pid = 0u16..5;
    prop_oneof![
        3 => record().prop_map(StoreOp::SessionUpsert),
        1 => client().prop_map(|client_id| StoreOp::SessionRemove { client_id }),
        5 => (client(), seq.clone(), message()).prop_map(|(client_id, seq, message)| {
            StoreOp::MessageEnqueue { client_id, seq, message }
        }),
        2 => (client(), seq.clone(), pid.clone()).prop_map(|(client_id, seq, packet_id)| {
            StoreOp::MessageSent { client_id, seq, packet_id }
        }),
        1 => (client(), seq.clone())
            .prop_map(|(client_id, seq)| StoreOp::MessageReleased { client_id, seq }),
        2 => (client(), seq)
            .prop_map(|(client_id, seq)| StoreOp::MessageRemove { client_id, seq }),
        2 => message().prop_map(StoreOp::RetainSet),
        1 => topic().prop_map(|topic| StoreOp::RetainClear { topic }),
        2 => (client(), pid.clone())
            .prop_map(|(client_id, packet_id)| StoreOp::Qos2Received { client_id, packet_id }),
        1 => (client(), pid)
            .prop_map(|(client_id, packet_id)| StoreOp::Qos2Released { client_id, packet_id }),
    ]
}

fn policy() -> impl Strategy<Value = FsyncPolicy> {
    prop_oneof![
        Just(FsyncPolicy::Always),
        Just(FsyncPolicy::Never),
        Just(FsyncPolicy::EveryMs(2))
    ]
}

/// Submits `ops` split at `cuts` and waits for every ticket, in order, `Ok`.
fn submit_all(store: &brokk_store::DurableStore, ops: &[StoreOp], sizes: &[usize]) {
    let mut rest = ops;
    let mut ticket = 0u64;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (batch, tail) = rest.split_at(n);
        store.submit(batch.to_vec(), ticket);
        ticket += 1;
        rest = tail;
    }
    let done = common::wait_for(store, ticket as usize);
    for (i, c) in done.iter().enumerate() {
        assert_eq!(c.ticket, i as u64);
        assert_eq!(c.result, Ok(()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn replay_equals_memory_store(
        first in prop::collection::vec(op(), 0..60),
        second in prop::collection::vec(op(), 0..60),
        sizes in prop::collection::vec(1usize..8, 1..6),
        policy in policy(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = MemoryStore::new();

        let opened = common::open(dir.path(), policy);
        prop_assert!(opened.replay.is_empty());
        prop_assert!(opened.recovery.is_none());
        for op in &first {
            mem.apply(op).unwrap();
        }
        submit_all(&opened.store, &first, &sizes);
        opened.store.flush_and_close().unwrap();

        // Reopen, check, and write more on top of the existing file.
        let opened = common::open(dir.path(), policy);
        prop_assert_eq!(&opened.replay, &mem.replay());
        for op in &second {
            mem.apply(op).unwrap();
        }
        submit_all(&opened.store, &second, &sizes);
        opened.store.flush_and_close().unwrap();

        let opened = common::open(dir.path(), policy);
        prop_assert_eq!(&opened.replay, &mem.replay());
        // Replaying the replay into a fresh MemoryStore gives the same state.
        let mut again = MemoryStore::new();
        for op in &opened.replay {
            again.apply(op).unwrap();
        }
        prop_assert_eq!(again.replay(), mem.replay());
        opened.store.flush_and_close().unwrap();
    }
}

/// The round trip of a message with every property, QoS 0 with DUP, an empty
/// topic without alias, and packet ids: exact.
#[test]
fn awkward_messages_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut mem = MemoryStore::new();
    let mut ops = vec![StoreOp::SessionUpsert(common::session("s", 1))];
    let mut m = common::rich_message("t/1", 3);
    m.publish.qos = QoS::AtMostOnce;
    m.publish.dup = true;
    m.publish.packet_id = Some(common::packet_id(77));
    ops.push(StoreOp::MessageEnqueue {
        client_id: common::cid("s"),
        seq: 1,
        message: m,
    });
    let mut m = common::message("", b"no topic", QoS::AtLeastOnce);
    m.publish.retain = true;
    ops.push(StoreOp::RetainSet(m.clone()));
    m.publish.properties.topic_alias = Some(common::packet_id(9));
    ops.push(StoreOp::MessageEnqueue {
        client_id: common::cid("s"),
        seq: 2,
        message: m,
    });
    ops.push(StoreOp::MessageSent {
        client_id: common::cid("s"),
        seq: 2,
        packet_id: 0,
    });
    ops.push(StoreOp::MessageReleased {
        client_id: common::cid("s"),
        seq: 2,
    });
    ops.push(StoreOp::MessageSent {
        client_id: common::cid("s"),
        seq: 1,
        packet_id: u16::MAX,
    });
    for op in &ops {
        mem.apply(op).unwrap();
    }
    let opened = common::open(dir.path(), FsyncPolicy::Always);
    submit_all(&opened.store, &ops, &[2]);
    opened.store.flush_and_close().unwrap();
    let opened = common::open(dir.path(), FsyncPolicy::Always);
    assert_eq!(opened.replay, mem.replay());
    assert_eq!(opened.replay.len(), 7);
}
