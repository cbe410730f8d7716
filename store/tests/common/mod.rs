//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::num::{NonZeroU16, NonZeroU32};
use std::path::Path;
use std::time::{Duration, Instant};

use broker_state::{SessionRecord, StoreOp, StoredMessage, StoredWill};
use brokk_store::{Completion, DurableStore, FsyncPolicy, Opened, StoreOptions};
use bytes::Bytes;
use mqtt_proto::{
    MqttString, PayloadFormat, Publish, PublishProperties, QoS, RetainHandling,
    SubscriptionOptions, TopicFilter, TopicName, UserProperties,
};

pub fn options(dir: &Path, fsync: FsyncPolicy) -> StoreOptions {
    StoreOptions {
        dir: dir.to_path_buf(),
        fsync,
        recover: false,
    }
}

pub fn open(dir: &Path, fsync: FsyncPolicy) -> Opened {
    match brokk_store::open(&options(dir, fsync)) {
        Ok(o) => o,
        Err(e) => panic!("open failed: {e}"),
    }
}

/// Waits until `n` completions have arrived (panics after a minute).
pub fn wait_for(store: &DurableStore, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions arrived",
            out.len()
        );
        store.wait_completions(&mut out, Duration::from_millis(200));
    }
    out
}

pub fn cid(s: &str) -> MqttString {
    MqttString::copy_from_str(s).expect("client id")
}

pub fn message(topic: &str, payload: &[u8], qos: QoS) -> StoredMessage {
    StoredMessage {
        publish: Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicName::copy_from_str(topic).expect("topic"),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::copy_from_slice(payload),
        },
        expires_at_unix_ms: None,
    }
}

/// A message with every kind of property.
pub fn rich_message(topic: &str, n: u32) -> StoredMessage {
    let mut m = message(topic, format!("payload {n}").as_bytes(), QoS::ExactlyOnce);
    m.publish.retain = n.is_multiple_of(2);
    m.publish.dup = n.is_multiple_of(3);
    m.publish.properties = PublishProperties {
        payload_format_indicator: Some(PayloadFormat::Utf8),
        message_expiry_interval: Some(n + 10),
        content_type: Some(MqttString::copy_from_str("text/plain").expect("ct")),
        response_topic: Some(TopicName::copy_from_str("reply/here").expect("rt")),
        correlation_data: Some(Bytes::from(vec![n as u8; 5])),
        subscription_identifiers: vec![NonZeroU32::new(n + 1).expect("id"), NonZeroU32::MIN],
        topic_alias: None,
        user_properties: UserProperties::from_pairs([("k", "v"), ("k", "v2"), ("é", "ü")])
            .expect("user properties"),
    };
    m.expires_at_unix_ms = Some(1_700_000_000_000 + u64::from(n));
    m
}

pub fn session(client_id: &str, n: u32) -> SessionRecord {
    SessionRecord {
        client_id: cid(client_id),
        authentication_name: Some(format!("user{n}")),
        expiry_interval: 3600 + n,
        expires_at_unix_ms: if n.is_multiple_of(2) {
            Some(1_800_000_000_000)
        } else {
            None
        },
        subscriptions: vec![
            (
                TopicFilter::copy_from_str("a/+/c").expect("filter"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendIfNew,
                },
                NonZeroU32::new(7),
            ),
            (
                TopicFilter::copy_from_str("$share/g/x/#").expect("filter"),
                SubscriptionOptions::qos(QoS::ExactlyOnce),
                None,
            ),
        ],
        will: Some(StoredWill {
            message: rich_message("will/topic", n),
            delay_interval: 30,
            publish_at_unix_ms: None,
        }),
    }
}

/// A small session with `msgs` queued messages, as ops.
pub fn session_with_messages(client_id: &str, msgs: u64, payload: &[u8]) -> Vec<StoreOp> {
    let mut ops = vec![StoreOp::SessionUpsert(SessionRecord {
        client_id: cid(client_id),
        authentication_name: None,
        expiry_interval: u32::MAX,
        expires_at_unix_ms: None,
        subscriptions: vec![(
            TopicFilter::copy_from_str("devices/+/telemetry").expect("filter"),
            SubscriptionOptions::qos(QoS::AtLeastOnce),
            None,
        )],
        will: None,
    })];
    for seq in 0..msgs {
        ops.push(StoreOp::MessageEnqueue {
            client_id: cid(client_id),
            seq,
            message: message("devices/42/telemetry", payload, QoS::AtLeastOnce),
        });
    }
    ops
}

pub fn packet_id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("nonzero")
}
