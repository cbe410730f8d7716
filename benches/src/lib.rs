//! Packets the benches and their allocation tests share, so that the numbers in
//! `README.md` and the zero-allocation assertions in `tests/` are about the same
//! bytes.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use mqtt_proto::{
    Connect, ConnectProperties, MqttString, Packet, ProtocolVersion, Publish, PublishProperties,
    QoS, TopicName, UserProperties,
};

/// A QoS 1 PUBLISH with `payload_len` bytes of payload.
fn publish(topic: &'static str, properties: PublishProperties, payload_len: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::from_static(topic).expect("valid topic"),
        packet_id: NonZeroU16::new(42),
        properties,
        payload: Bytes::from(vec![b'x'; payload_len]),
    })
}

/// A QoS 1 PUBLISH whose payload is sized so that the packet is exactly `wire_len`
/// (at most 129) bytes at `version`.
fn publish_of_len(
    version: ProtocolVersion,
    topic: &'static str,
    properties: PublishProperties,
    wire_len: usize,
) -> Packet {
    let overhead = publish(topic, properties.clone(), 0).encoded_len(version);
    let packet = publish(topic, properties, wire_len - overhead);
    assert_eq!(packet.encoded_len(version), wire_len);
    packet
}

/// A 3.1.1 QoS 1 PUBLISH of 64 bytes on the wire: a 26-byte topic, 30 bytes of payload.
pub fn publish_64_v311() -> Packet {
    publish_of_len(
        ProtocolVersion::V3_1_1,
        "sensors/room-1/temperature",
        PublishProperties::default(),
        64,
    )
}

/// A 5.0 QoS 1 PUBLISH of 64 bytes on the wire carrying two user properties, a
/// Response Topic and Correlation Data (a request of a request/response exchange).
pub fn publish_64_v5() -> Packet {
    let properties = PublishProperties {
        response_topic: Some(TopicName::from_static("rsp/1").expect("valid topic")),
        correlation_data: Some(Bytes::from_static(b"c-42")),
        user_properties: UserProperties::from_pairs([("k1", "v1"), ("k2", "v2")])
            .expect("valid user properties"),
        ..PublishProperties::default()
    };
    publish_of_len(ProtocolVersion::V5, "s/r1/t", properties, 64)
}

/// A 3.1.1 QoS 1 PUBLISH with a 16 KiB payload.
pub fn publish_16k_v311() -> Packet {
    publish("bulk/data", PublishProperties::default(), 16 * 1024)
}

/// A 5.0 CONNECT as a typical client sends it: credentials, Keep Alive, and the
/// session, flow-control and size properties plus one user property.
pub fn connect_v5() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttString::from_static("bench-client-0001").expect("valid client id"),
        will: None,
        username: Some(MqttString::from_static("device-17").expect("valid user name")),
        password: Some(Bytes::from_static(b"correct horse battery staple")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: NonZeroU16::new(32),
            maximum_packet_size: NonZeroU32::new(256 * 1024),
            topic_alias_maximum: Some(10),
            request_problem_information: Some(true),
            user_properties: UserProperties::from_pairs([("app", "brokk-bench")])
                .expect("valid user properties"),
            ..ConnectProperties::default()
        },
    }))
}

/// `packet` encoded at `version`, `copies` times back to back: a read buffer full of
/// packets, as a busy connection's socket delivers them.
pub fn wire(packet: &Packet, version: ProtocolVersion, copies: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(packet.encoded_len(version) * copies);
    for _ in 0..copies {
        packet
            .encode(version, &mut buf)
            .expect("bench packets encode");
    }
    buf
}

pub mod routing;
