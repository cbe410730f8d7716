//! Byte vectors for every packet type, decoded and encoded.
//!
//! Each vector says where its bytes come from: a non-normative example of the OASIS
//! MQTT 5.0 or 3.1.1 specification (section given), or written by hand from the
//! packet layout in the section cited. A vector is checked both ways: the bytes
//! decode to the packet, and the packet encodes to exactly the bytes (with
//! `encoded_len` equal to their length). Forms the specification allows but the
//! encoder does not produce are checked decode-only, at the end.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use mqtt_proto::{
    decode_packet, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, Decoder, Disconnect, DisconnectProperties, FixedHeader, MqttString, Packet,
    PayloadFormat, ProtocolVersion, PubAck, Publish, PublishProperties, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, SubscribeProperties, SubscriptionOptions, TopicFilter,
    TopicName, UnsubAck, Unsubscribe, UnsubscribeProperties, UserProperties, Will, WillProperties,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

fn topic(s: &'static str) -> TopicName {
    TopicName::from_static(s).expect("valid topic name")
}

fn filter(s: &'static str) -> TopicFilter {
    TopicFilter::from_static(s).expect("valid topic filter")
}

fn string(s: &'static str) -> MqttString {
    MqttString::from_static(s).expect("valid string")
}

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("non-zero packet id")
}

fn user(pairs: &[(&str, &str)]) -> UserProperties {
    UserProperties::from_pairs(pairs.iter().copied()).expect("valid user properties")
}

/// `bytes` decode to `packet` at `version` (through a `Decoder` of that version and,
/// for CONNECT, through a server decoder that learns it) and `packet` encodes to
/// exactly `bytes`.
fn vector(version: ProtocolVersion, bytes: &[u8], packet: Packet) {
    let decoded = decode_packet(Some(version), Bytes::copy_from_slice(bytes))
        .unwrap_or_else(|e| panic!("decoding {bytes:02x?} at {version}: {e}"));
    assert_eq!(decoded, packet, "decoded {bytes:02x?}");

    let mut buf = BytesMut::from(bytes);
    let mut decoder = if matches!(packet, Packet::Connect(_)) {
        Decoder::new(1 << 20)
    } else {
        Decoder::with_version(version, 1 << 20)
    };
    assert_eq!(decoder.decode(&mut buf), Ok(Some(packet.clone())));
    assert!(buf.is_empty());
    assert_eq!(decoder.version(), Some(version));

    let mut out = BytesMut::new();
    packet
        .encode(version, &mut out)
        .unwrap_or_else(|e| panic!("encoding {packet:?}: {e}"));
    assert_eq!(&out[..], bytes, "encoding of {packet:?}");
    assert_eq!(packet.encoded_len(version), bytes.len());
}

/// `bytes` decode to `packet`, which encodes to the (shorter) `canonical` bytes.
fn decode_only(version: ProtocolVersion, bytes: &[u8], packet: Packet, canonical: &[u8]) {
    let decoded = decode_packet(Some(version), Bytes::copy_from_slice(bytes))
        .unwrap_or_else(|e| panic!("decoding {bytes:02x?}: {e}"));
    assert_eq!(decoded, packet);
    vector(version, canonical, packet);
}

// ---------------------------------------------------------------------------
// Data representation
// ---------------------------------------------------------------------------

/// 5.0 section 1.5.5 Table 1-1 and 3.1.1 section 2.2.3 Table 2.4: the smallest and
/// largest value of each Variable Byte Integer length.
#[test]
fn remaining_length_table_1_5_5() {
    let table: [(&[u8], u32); 8] = [
        (&[0x00], 0),
        (&[0x7F], 127),
        (&[0x80, 0x01], 128),
        (&[0xFF, 0x7F], 16_383),
        (&[0x80, 0x80, 0x01], 16_384),
        (&[0xFF, 0xFF, 0x7F], 2_097_151),
        (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
        (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455),
    ];
    for (encoded, value) in table {
        let header = [&[0x30][..], encoded].concat();
        let parsed = FixedHeader::parse(&header)
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.remaining_length, value, "{encoded:02x?}");
        assert_eq!(parsed.header_len, 1 + encoded.len());
        assert_eq!(mqtt_proto::vbi_len(value), encoded.len());
    }
}

/// The encoder writes the same Remaining Length bytes at the table's boundaries: a
/// QoS 0 PUBLISH to "t" (3 bytes of topic) with a payload sized to land on each.
#[test]
fn encoder_remaining_length_boundaries_1_5_5() {
    for (remaining, header) in [
        (127usize, &[0x7F][..]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
    ] {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic("t"),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0xA5; remaining - 3]),
        });
        let mut out = BytesMut::new();
        packet.encode(V3_1_1, &mut out).expect("encodes");
        assert_eq!(
            &out[1..1 + header.len()],
            header,
            "remaining length {remaining}"
        );
        assert_eq!(out.len(), 1 + header.len() + remaining);
        vector(V3_1_1, &out, packet);
    }
}

/// 5.0 section 1.5.4 (Figure 1-1) and 3.1.1 section 1.5.3 (Figure 1.3): the string
/// "A𪛔" (U+0041, U+2A6D4) is 00 05 41 F0 AA 9B 94. Here it is the topic of a 3.1.1
/// QoS 0 PUBLISH without payload.
#[test]
fn utf8_string_example_1_5_4() {
    vector(
        V3_1_1,
        &[0x30, 0x07, 0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic("A\u{2A6D4}"),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::new(),
        }),
    );
}

/// [MQTT-1.5.4-3]: a ZERO WIDTH NO-BREAK SPACE (EF BB BF) is kept, never skipped or
/// stripped. Hand-written: 5.0 QoS 0 PUBLISH, topic U+FEFF "a", no properties.
#[test]
fn bom_is_not_stripped_mqtt_1_5_4_3() {
    vector(
        V5,
        &[0x30, 0x07, 0x00, 0x04, 0xEF, 0xBB, 0xBF, b'a', 0x00],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic("\u{FEFF}a"),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::new(),
        }),
    );
}

// ---------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------

/// 3.1.1 section 3.1.2.10, "Variable header non normative example" (Figure 3.6):
/// 00 04 'MQTT', level 4, flags 0xCE (User Name, Password, Will QoS 1, Will Flag,
/// Clean Session), Keep Alive 10. The payload (section 3.1.3 order: Client
/// Identifier, Will Topic, Will Message, User Name, Password) is written by hand.
#[test]
fn connect_3_1_1_spec_example_3_1_2_10() {
    let bytes = [
        0x10, 0x1C, // fixed header, remaining length 28
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A, // spec example
        0x00, 0x02, b'c', b'1', // client id
        0x00, 0x01, b'w', // will topic
        0x00, 0x03, b'b', b'y', b'e', // will message
        0x00, 0x01, b'u', // user name
        0x00, 0x01, b'p', // password
    ];
    vector(
        V3_1_1,
        &bytes,
        Packet::Connect(Box::new(Connect {
            protocol: V3_1_1,
            clean_start: true,
            keep_alive: 10,
            client_id: string("c1"),
            will: Some(Will {
                topic: topic("w"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties::default(),
            }),
            username: Some(string("u")),
            password: Some(Bytes::from_static(b"p")),
            properties: ConnectProperties::default(),
        })),
    );
}

/// 5.0 section 3.1.2.12, "Variable Header non-normative example" (Figure 3-8): as in
/// 3.1.1 but level 5 and a property block of length 5 holding Session Expiry
/// Interval (0x11) = 10. Payload by hand (section 3.1.3 order, Will Properties empty).
#[test]
fn connect_5_0_spec_example_3_1_2_12() {
    let bytes = [
        0x10, 0x23, // fixed header, remaining length 35
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xCE, 0x00, 0x0A, // spec example
        0x05, 0x11, 0x00, 0x00, 0x00, 0x0A, // properties, spec example
        0x00, 0x02, b'c', b'1', // client id
        0x00, // will properties: none
        0x00, 0x01, b'w', // will topic
        0x00, 0x03, b'b', b'y', b'e', // will payload
        0x00, 0x01, b'u', // user name
        0x00, 0x01, b'p', // password
    ];
    vector(
        V5,
        &bytes,
        Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 10,
            client_id: string("c1"),
            will: Some(Will {
                topic: topic("w"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties::default(),
            }),
            username: Some(string("u")),
            password: Some(Bytes::from_static(b"p")),
            properties: ConnectProperties {
                session_expiry_interval: Some(10),
                ..Default::default()
            },
        })),
    );
}

/// Hand-written from 5.0 sections 3.1.2.11 and 3.1.3.2: every CONNECT property and
/// every Will Property, each in ascending identifier order, Will QoS 2 retained,
/// Password without User Name (allowed in 5.0, section 3.1.2.9).
#[test]
fn connect_5_0_all_properties_3_1_2_11() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x68,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
        0x74, // password, will retain, will QoS 2, will flag, no clean start
        0x00, 0x00, // keep alive 0
        0x30, // property length 48
        0x11, 0x00, 0x00, 0x0E, 0x10, // session expiry 3600
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // authentication method
        0x16, 0x00, 0x02, 0x01, 0x02, // authentication data
        0x17, 0x00, // request problem information 0
        0x19, 0x01, // request response information 1
        0x21, 0x00, 0x14, // receive maximum 20
        0x22, 0x00, 0x0A, // topic alias maximum 10
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
        0x26, 0x00, 0x01, b'k', 0x00, 0x02, b'v', b'2', // user property k=v2
        0x27, 0x00, 0x01, 0x00, 0x00, // maximum packet size 65536
        0x00, 0x00, // empty client id
        0x1D, // will property length 29
        0x01, 0x01, // payload format: UTF-8
        0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry 60
        0x03, 0x00, 0x01, b't', // content type
        0x08, 0x00, 0x01, b'r', // response topic
        0x09, 0x00, 0x01, 0xFF, // correlation data
        0x18, 0x00, 0x00, 0x00, 0x05, // will delay 5
        0x26, 0x00, 0x00, 0x00, 0x00, // user property "" = ""
        0x00, 0x03, b'w', b'/', b'x', // will topic
        0x00, 0x02, b'o', b'k', // will payload
        0x00, 0x02, 0x00, 0xFF, // password (binary)
    ];
    assert_eq!(bytes.len(), 2 + 0x68);
    vector(
        V5,
        &bytes,
        Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: false,
            keep_alive: 0,
            client_id: MqttString::empty(),
            will: Some(Will {
                topic: topic("w/x"),
                payload: Bytes::from_static(b"ok"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: WillProperties {
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    message_expiry_interval: Some(60),
                    content_type: Some(string("t")),
                    response_topic: Some(topic("r")),
                    correlation_data: Some(Bytes::from_static(&[0xFF])),
                    will_delay_interval: Some(5),
                    user_properties: user(&[("", "")]),
                },
            }),
            username: None,
            password: Some(Bytes::from_static(&[0x00, 0xFF])),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                authentication_method: Some(string("SCRAM")),
                authentication_data: Some(Bytes::from_static(&[1, 2])),
                request_problem_information: Some(false),
                request_response_information: Some(true),
                receive_maximum: NonZeroU16::new(20),
                topic_alias_maximum: Some(10),
                user_properties: user(&[("k", "v"), ("k", "v2")]),
                maximum_packet_size: NonZeroU32::new(65_536),
            },
        })),
    );
}

/// Hand-written from the MQTT 3.1 specification (IBM, section 3.1 CONNECT): protocol
/// name "MQIsdp", version 3, Clean Session, Keep Alive 10, Client Identifier "c".
#[test]
fn connect_3_1_mqisdp() {
    let bytes = [
        0x10, 0x0F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x0A, 0x00,
        0x01, b'c',
    ];
    vector(
        V3_1,
        &bytes,
        Packet::Connect(Box::new(Connect {
            protocol: V3_1,
            clean_start: true,
            keep_alive: 10,
            client_id: string("c"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        })),
    );
}

// ---------------------------------------------------------------------------
// CONNACK
// ---------------------------------------------------------------------------

/// 3.1.1 section 3.2: Session Present 1, return code 0 (accepted); and return code 5
/// (not authorized), Session Present 0 [MQTT-3.2.2-4].
#[test]
fn connack_3_1_1_3_2() {
    vector(
        V3_1_1,
        &[0x20, 0x02, 0x01, 0x00],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: true,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties::default(),
        })),
    );
    vector(
        V3_1_1,
        &[0x20, 0x02, 0x00, 0x05],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason_code: ReasonCode::NotAuthorized,
            properties: ConnAckProperties::default(),
        })),
    );
}

/// 3.1.1 CONNACK return codes 1-5 (Table 3.1) and the 5.0 codes they stand for.
#[test]
fn connack_3_1_1_return_codes_table_3_1() {
    for (code, reason) in [
        (0x01, ReasonCode::UnsupportedProtocolVersion),
        (0x02, ReasonCode::ClientIdentifierNotValid),
        (0x03, ReasonCode::ServerUnavailable),
        (0x04, ReasonCode::BadUserNameOrPassword),
        (0x05, ReasonCode::NotAuthorized),
    ] {
        vector(
            V3_1_1,
            &[0x20, 0x02, 0x00, code],
            Packet::ConnAck(Box::new(ConnAck {
                session_present: false,
                reason_code: reason,
                properties: ConnAckProperties::default(),
            })),
        );
    }
}

/// Hand-written from 5.0 section 3.2.2.3: success with the properties a broker
/// typically sends, ascending identifiers.
#[test]
fn connack_5_0_properties_3_2_2_3() {
    #[rustfmt::skip]
    let bytes = [
        0x20, 0x1F, 0x00, 0x00,
        0x1C, // property length 28
        0x12, 0x00, 0x03, b'i', b'd', b'1', // assigned client identifier
        0x13, 0x00, 0x1E, // server keep alive 30
        0x21, 0x00, 0x0A, // receive maximum 10
        0x22, 0x00, 0x05, // topic alias maximum 5
        0x24, 0x01, // maximum QoS 1
        0x25, 0x00, // retain not available
        0x27, 0x00, 0x00, 0x10, 0x00, // maximum packet size 4096
        0x28, 0x01, // wildcard subscriptions available
        0x2A, 0x00, // shared subscriptions not available
    ];
    vector(
        V5,
        &bytes,
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties {
                assigned_client_identifier: Some(string("id1")),
                server_keep_alive: Some(30),
                receive_maximum: NonZeroU16::new(10),
                topic_alias_maximum: Some(5),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: NonZeroU32::new(4096),
                wildcard_subscription_available: Some(true),
                shared_subscription_available: Some(false),
                ..Default::default()
            },
        })),
    );
}

/// 5.0 section 3.2.2.2: a refusal, 0x84 Unsupported Protocol Version, no properties;
/// and 0x9C Use another server with a Server Reference (3.2.2.3.16).
#[test]
fn connack_5_0_refusals_3_2_2_2() {
    vector(
        V5,
        &[0x20, 0x03, 0x00, 0x84, 0x00],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason_code: ReasonCode::UnsupportedProtocolVersion,
            properties: ConnAckProperties::default(),
        })),
    );
    vector(
        V5,
        &[
            0x20, 0x09, 0x00, 0x9C, 0x06, 0x1C, 0x00, 0x03, b'h', b':', b'1',
        ],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason_code: ReasonCode::UseAnotherServer,
            properties: ConnAckProperties {
                server_reference: Some(string("h:1")),
                ..Default::default()
            },
        })),
    );
}

// ---------------------------------------------------------------------------
// PUBLISH
// ---------------------------------------------------------------------------

/// 3.1.1 section 3.3.2.3, "Publish Packet non normative example" (Figure 3.11):
/// Topic Name "a/b", Packet Identifier 10. Fixed header (QoS 1) and payload "hi" by
/// hand.
#[test]
fn publish_3_1_1_spec_example_3_3_2_3() {
    vector(
        V3_1_1,
        &[
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
        ],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic("a/b"),
            packet_id: Some(pid(10)),
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"hi"),
        }),
    );
}

/// 5.0 section 3.3.2.4 (PUBLISH Variable Header non-normative example): Topic Name
/// "a/b", Packet Identifier 10, Property Length 0. Fixed header (QoS 2, DUP, RETAIN)
/// and payload "hi" by hand.
#[test]
fn publish_5_0_spec_example_3_3_2() {
    vector(
        V5,
        &[
            0x3D, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x00, b'h', b'i',
        ],
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: topic("a/b"),
            packet_id: Some(pid(10)),
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"hi"),
        }),
    );
}

/// Hand-written from 5.0 section 3.3.2.3: every PUBLISH property, including two
/// Subscription Identifiers (a server-to-client PUBLISH matching two subscriptions,
/// [MQTT-3.3.4-5]) and a Topic Alias with an empty Topic Name (3.3.2.3.4).
#[test]
fn publish_5_0_all_properties_3_3_2_3() {
    #[rustfmt::skip]
    let bytes = [
        0x30, 0x2F,
        0x00, 0x00, // empty topic name: the alias stands for it
        0x2A, // property length 42
        0x01, 0x01, // payload format: UTF-8
        0x02, 0x00, 0x00, 0x00, 0x0A, // message expiry 10
        0x03, 0x00, 0x04, b'j', b's', b'o', b'n', // content type
        0x08, 0x00, 0x03, b'r', b'/', b'1', // response topic
        0x09, 0x00, 0x02, 0xC0, 0xDE, // correlation data
        0x0B, 0x01, // subscription identifier 1
        0x0B, 0xFF, 0xFF, 0xFF, 0x7F, // subscription identifier 268435455
        0x23, 0x00, 0x02, // topic alias 2
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // user property
        b'{', b'}', // payload
    ];
    vector(
        V5,
        &bytes,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::default(),
            packet_id: None,
            properties: PublishProperties {
                payload_format_indicator: Some(PayloadFormat::Utf8),
                message_expiry_interval: Some(10),
                content_type: Some(string("json")),
                response_topic: Some(topic("r/1")),
                correlation_data: Some(Bytes::from_static(&[0xC0, 0xDE])),
                subscription_identifiers: vec![
                    NonZeroU32::MIN,
                    NonZeroU32::new(268_435_455).expect("non-zero"),
                ],
                topic_alias: NonZeroU16::new(2),
                user_properties: user(&[("a", "b")]),
            },
            payload: Bytes::from_static(b"{}"),
        }),
    );
}

/// MQTT 3.1 PUBLISH (IBM 3.1 specification section 3.3): same layout as 3.1.1.
#[test]
fn publish_3_1() {
    vector(
        V3_1,
        &[0x34, 0x06, 0x00, 0x01, b'x', 0x00, 0x01, b'!'],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: topic("x"),
            packet_id: Some(pid(1)),
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"!"),
        }),
    );
}

// ---------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP
// ---------------------------------------------------------------------------

/// 3.1.1 sections 3.4-3.7: packet identifier only; PUBREL with flags 0010
/// [MQTT-3.6.1-1]. By hand, packet identifier 10.
#[test]
fn publish_acknowledgements_3_1_1_3_4_to_3_7() {
    let ack = PubAck::new(pid(10));
    vector(
        V3_1_1,
        &[0x40, 0x02, 0x00, 0x0A],
        Packet::PubAck(ack.clone()),
    );
    vector(
        V3_1_1,
        &[0x50, 0x02, 0x00, 0x0A],
        Packet::PubRec(ack.clone()),
    );
    vector(
        V3_1_1,
        &[0x62, 0x02, 0x00, 0x0A],
        Packet::PubRel(ack.clone()),
    );
    vector(
        V3_1_1,
        &[0x70, 0x02, 0x00, 0x0A],
        Packet::PubComp(ack.clone()),
    );
    vector(V3_1, &[0x62, 0x02, 0x00, 0x0A], Packet::PubRel(ack));
}

/// 5.0 section 3.4.2.1: "The Reason Code and Property Length can be omitted if the
/// Reason Code is 0x00 (Success) and there are no Properties": Remaining Length 2.
#[test]
fn puback_5_0_success_short_form_3_4_2_1() {
    vector(
        V5,
        &[0x40, 0x02, 0x00, 0x0A],
        Packet::PubAck(PubAck::new(pid(10))),
    );
}

/// 5.0 section 3.4.2.2.1: "If the Remaining Length is less than 4 there is no Property
/// Length": a reason code alone. By hand: PUBACK 0x10 No matching subscribers,
/// PUBREC 0x80 Unspecified error, PUBREL and PUBCOMP 0x92 Packet Identifier not found.
#[test]
fn publish_acknowledgements_5_0_reason_only_3_4_2_2() {
    let with = |code| PubAck {
        packet_id: pid(10),
        reason_code: code,
        properties: AckProperties::default(),
    };
    vector(
        V5,
        &[0x40, 0x03, 0x00, 0x0A, 0x10],
        Packet::PubAck(with(ReasonCode::NoMatchingSubscribers)),
    );
    vector(
        V5,
        &[0x50, 0x03, 0x00, 0x0A, 0x80],
        Packet::PubRec(with(ReasonCode::UnspecifiedError)),
    );
    vector(
        V5,
        &[0x62, 0x03, 0x00, 0x0A, 0x92],
        Packet::PubRel(with(ReasonCode::PacketIdentifierNotFound)),
    );
    vector(
        V5,
        &[0x70, 0x03, 0x00, 0x0A, 0x92],
        Packet::PubComp(with(ReasonCode::PacketIdentifierNotFound)),
    );
}

/// Hand-written from 5.0 section 3.4.2.2: PUBACK 0x87 Not authorized with a Reason
/// String and a User Property.
#[test]
fn puback_5_0_with_properties_3_4_2_2() {
    #[rustfmt::skip]
    let bytes = [
        0x40, 0x12, 0x00, 0x0A, 0x87,
        0x0E, // property length 14
        0x1F, 0x00, 0x04, b'd', b'e', b'n', b'y', // reason string
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
    ];
    vector(
        V5,
        &bytes,
        Packet::PubAck(PubAck {
            packet_id: pid(10),
            reason_code: ReasonCode::NotAuthorized,
            properties: AckProperties {
                reason_string: Some(string("deny")),
                user_properties: user(&[("k", "v")]),
            },
        }),
    );
}

// ---------------------------------------------------------------------------
// SUBSCRIBE, SUBACK
// ---------------------------------------------------------------------------

/// 3.1.1 section 3.8.2 (Packet Identifier 10, Figure 3.21) and section 3.8.3.1,
/// "Payload non normative example" (Figure 3.22): "a/b" Requested QoS 1, "c/d"
/// Requested QoS 2.
#[test]
fn subscribe_3_1_1_spec_example_3_8_3() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x0E, 0x00, 0x0A,
        0x00, 0x03, b'a', b'/', b'b', 0x01,
        0x00, 0x03, b'c', b'/', b'd', 0x02,
    ];
    vector(
        V3_1_1,
        &bytes,
        Packet::Subscribe(Subscribe {
            packet_id: pid(10),
            filters: vec![
                (filter("a/b"), SubscriptionOptions::qos(QoS::AtLeastOnce)),
                (filter("c/d"), SubscriptionOptions::qos(QoS::ExactlyOnce)),
            ],
            properties: SubscribeProperties::default(),
        }),
    );
}

/// 5.0 section 3.8.3 payload non-normative example ("a/b" QoS 1, "c/d" QoS 2) with
/// Packet Identifier 10 and no properties (section 3.8.2).
#[test]
fn subscribe_5_0_spec_example_3_8_3() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x0F, 0x00, 0x0A, 0x00,
        0x00, 0x03, b'a', b'/', b'b', 0x01,
        0x00, 0x03, b'c', b'/', b'd', 0x02,
    ];
    vector(
        V5,
        &bytes,
        Packet::Subscribe(Subscribe {
            packet_id: pid(10),
            filters: vec![
                (filter("a/b"), SubscriptionOptions::qos(QoS::AtLeastOnce)),
                (filter("c/d"), SubscriptionOptions::qos(QoS::ExactlyOnce)),
            ],
            properties: SubscribeProperties::default(),
        }),
    );
}

/// Hand-written from 5.0 sections 3.8.2.1 and 3.8.3.1: a Subscription Identifier of
/// 128 (two-byte Variable Byte Integer), and every subscription option bit: a shared
/// subscription (No Local must stay 0 there, [MQTT-3.8.3-4]) with QoS 2, Retain As
/// Published, Retain Handling 2 (0x2A), and "+/#" with No Local, Retain Handling 1
/// (0x14).
#[test]
fn subscribe_5_0_options_and_identifier_3_8_3_1() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x19, 0x00, 0x01,
        0x03, 0x0B, 0x80, 0x01, // subscription identifier 128
        0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', 0x2A,
        0x00, 0x03, b'+', b'/', b'#', 0x14,
    ];
    vector(
        V5,
        &bytes,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![
                (
                    filter("$share/g/x"),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: false,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                ),
                (
                    filter("+/#"),
                    SubscriptionOptions {
                        qos: QoS::AtMostOnce,
                        no_local: true,
                        retain_as_published: false,
                        retain_handling: RetainHandling::SendIfNew,
                    },
                ),
            ],
            properties: SubscribeProperties {
                subscription_identifier: NonZeroU32::new(128),
                user_properties: UserProperties::new(),
            },
        }),
    );
}

/// 3.1.1 section 3.9.3, "Payload byte format non normative example" (Figure 3.26):
/// Success QoS 0, Success QoS 1, Success QoS 2, Failure (0x80). Packet Identifier 10
/// by hand.
#[test]
fn suback_3_1_1_spec_example_3_9_3() {
    vector(
        V3_1_1,
        &[0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80],
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            reason_codes: vec![
                ReasonCode::Success,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ],
            properties: AckProperties::default(),
        }),
    );
}

/// MQTT 3.1 SUBACK: granted QoS only (IBM 3.1 specification section 3.9).
#[test]
fn suback_3_1() {
    vector(
        V3_1,
        &[0x90, 0x04, 0x00, 0x0A, 0x02, 0x00],
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            reason_codes: vec![ReasonCode::GrantedQoS2, ReasonCode::Success],
            properties: AckProperties::default(),
        }),
    );
}

/// Hand-written from 5.0 section 3.9.3: granted QoS 1, 0x87 Not authorized, 0xA2
/// Wildcard Subscriptions not supported, with a Reason String.
#[test]
fn suback_5_0_3_9_3() {
    vector(
        V5,
        &[
            0x90, 0x0A, 0x00, 0x0A, 0x04, 0x1F, 0x00, 0x01, b'!', 0x01, 0x87, 0xA2,
        ],
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            reason_codes: vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::NotAuthorized,
                ReasonCode::WildcardSubscriptionsNotSupported,
            ],
            properties: AckProperties {
                reason_string: Some(string("!")),
                user_properties: UserProperties::new(),
            },
        }),
    );
}

// ---------------------------------------------------------------------------
// UNSUBSCRIBE, UNSUBACK
// ---------------------------------------------------------------------------

/// 3.1.1 section 3.10.3, "Payload non normative example" (Figure 3.30): "a/b" and
/// "c/d". Packet Identifier 10 by hand.
#[test]
fn unsubscribe_3_1_1_spec_example_3_10_3() {
    #[rustfmt::skip]
    let bytes = [
        0xA2, 0x0C, 0x00, 0x0A,
        0x00, 0x03, b'a', b'/', b'b',
        0x00, 0x03, b'c', b'/', b'd',
    ];
    vector(
        V3_1_1,
        &bytes,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(10),
            filters: vec![filter("a/b"), filter("c/d")],
            properties: UnsubscribeProperties::default(),
        }),
    );
}

/// 5.0 section 3.10.3 payload non-normative example ("a/b", "c/d"), with a User
/// Property (3.10.2.1.2) by hand.
#[test]
fn unsubscribe_5_0_spec_example_3_10_3() {
    #[rustfmt::skip]
    let bytes = [
        0xA2, 0x14, 0x00, 0x0A,
        0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',
        0x00, 0x03, b'a', b'/', b'b',
        0x00, 0x03, b'c', b'/', b'd',
    ];
    vector(
        V5,
        &bytes,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(10),
            filters: vec![filter("a/b"), filter("c/d")],
            properties: UnsubscribeProperties {
                user_properties: user(&[("k", "v")]),
            },
        }),
    );
}

/// 3.1.1 section 3.11: Packet Identifier only.
#[test]
fn unsuback_3_1_1_3_11() {
    vector(
        V3_1_1,
        &[0xB0, 0x02, 0x00, 0x0A],
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(10),
            reason_codes: vec![],
            properties: AckProperties::default(),
        }),
    );
}

/// Hand-written from 5.0 section 3.11.3: Success and 0x11 No subscription existed.
#[test]
fn unsuback_5_0_3_11_3() {
    vector(
        V5,
        &[0xB0, 0x05, 0x00, 0x0A, 0x00, 0x00, 0x11],
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(10),
            reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: AckProperties::default(),
        }),
    );
}

// ---------------------------------------------------------------------------
// PINGREQ, PINGRESP, DISCONNECT, AUTH
// ---------------------------------------------------------------------------

/// Sections 3.12 and 3.13 (both versions): a fixed header only.
#[test]
fn ping_3_12_and_3_13() {
    for v in [V3_1, V3_1_1, V5] {
        vector(v, &[0xC0, 0x00], Packet::PingReq);
        vector(v, &[0xD0, 0x00], Packet::PingResp);
    }
}

/// 3.1.1 section 3.14 and 5.0 section 3.14.2.1 ("If the Remaining Length is less than
/// 1 the value of 0x00 (Normal disconnection) is used"): E0 00.
#[test]
fn disconnect_normal_3_14() {
    for v in [V3_1, V3_1_1, V5] {
        vector(
            v,
            &[0xE0, 0x00],
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        );
    }
}

/// 5.0 section 3.14.2.2.1: "If the Remaining Length is less than 2, a value of 0 is
/// used" for the Property Length: 0x04 Disconnect with Will Message alone.
#[test]
fn disconnect_5_0_reason_only_3_14_2_2_1() {
    vector(
        V5,
        &[0xE0, 0x01, 0x04],
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
}

/// Hand-written from 5.0 section 3.14.2.2: 0x8B Server shutting down, with Session
/// Expiry Interval 0, Server Reference and Reason String.
#[test]
fn disconnect_5_0_with_properties_3_14_2_2() {
    #[rustfmt::skip]
    let bytes = [
        0xE0, 0x12, 0x8B,
        0x10, // property length 16
        0x11, 0x00, 0x00, 0x00, 0x00, // session expiry 0
        0x1C, 0x00, 0x02, b'h', b'2', // server reference
        0x1F, 0x00, 0x03, b'b', b'y', b'e', // reason string
    ];
    vector(
        V5,
        &bytes,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::ServerShuttingDown,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                server_reference: Some(string("h2")),
                reason_string: Some(string("bye")),
                user_properties: UserProperties::new(),
            },
        }),
    );
}

/// 5.0 section 3.15.2.1: "The Reason Code and Property Length can be omitted if the
/// Reason Code is 0x00 (Success) and there are no Properties. In this case the AUTH
/// has a Remaining Length of 0."
#[test]
fn auth_success_short_form_3_15_2_1() {
    vector(
        V5,
        &[0xF0, 0x00],
        Packet::Auth(Auth {
            reason_code: ReasonCode::Success,
            properties: AuthProperties::default(),
        }),
    );
}

/// Hand-written from 5.0 section 3.15.2.2 and 4.12 (enhanced authentication): 0x18
/// Continue authentication with Authentication Method and Data.
#[test]
fn auth_continue_5_0_3_15_2_2() {
    #[rustfmt::skip]
    let bytes = [
        0xF0, 0x10, 0x18,
        0x0E, // property length 14
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // authentication method
        0x16, 0x00, 0x03, 0x01, 0x02, 0x03, // authentication data
    ];
    vector(
        V5,
        &bytes,
        Packet::Auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some(string("SCRAM")),
                authentication_data: Some(Bytes::from_static(&[1, 2, 3])),
                ..Default::default()
            },
        }),
    );
}

// ---------------------------------------------------------------------------
// Forms the specification allows and the encoder does not produce
// ---------------------------------------------------------------------------

/// 5.0 section 3.4.2.1: a PUBACK may carry Success and a zero Property Length
/// explicitly (Remaining Length 4); it means the same as the two-byte form, which is
/// what the encoder writes. MQTT.js sends PUBREC, PUBREL and PUBCOMP in the long
/// form (see the golden fixtures).
#[test]
fn puback_5_0_explicit_success_and_empty_properties_3_4_2_1() {
    decode_only(
        V5,
        &[0x40, 0x04, 0x00, 0x0A, 0x00, 0x00],
        Packet::PubAck(PubAck::new(pid(10))),
        &[0x40, 0x02, 0x00, 0x0A],
    );
    decode_only(
        V5,
        &[0x62, 0x03, 0x00, 0x0A, 0x00],
        Packet::PubRel(PubAck::new(pid(10))),
        &[0x62, 0x02, 0x00, 0x0A],
    );
}

/// 5.0 section 3.14.2.1: a DISCONNECT with Reason Code 0x00 and Property Length 0
/// written out equals E0 00.
#[test]
fn disconnect_5_0_explicit_normal_3_14_2_1() {
    decode_only(
        V5,
        &[0xE0, 0x02, 0x00, 0x00],
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        &[0xE0, 0x00],
    );
}

/// 5.0 section 2.2.2.2: properties may come in any order; the encoder writes them in
/// ascending identifier order. User properties interleaved with others keep their
/// relative order [MQTT-3.3.2-18].
#[test]
fn properties_in_any_order_2_2_2_2() {
    #[rustfmt::skip]
    let bytes = [
        0x30, 0x17, 0x00, 0x01, b't',
        0x13, // property length 19
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'1',
        0x23, 0x00, 0x01, // topic alias 1
        0x26, 0x00, 0x01, b'b', 0x00, 0x01, b'2',
        0x01, 0x00, // payload format: unspecified
    ];
    #[rustfmt::skip]
    let canonical = [
        0x30, 0x17, 0x00, 0x01, b't',
        0x13,
        0x01, 0x00,
        0x23, 0x00, 0x01,
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'1',
        0x26, 0x00, 0x01, b'b', 0x00, 0x01, b'2',
    ];
    decode_only(
        V5,
        &bytes,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic("t"),
            packet_id: None,
            properties: PublishProperties {
                payload_format_indicator: Some(PayloadFormat::Unspecified),
                topic_alias: NonZeroU16::new(1),
                user_properties: user(&[("a", "1"), ("b", "2")]),
                ..Default::default()
            },
            payload: Bytes::new(),
        }),
        &canonical,
    );
}
