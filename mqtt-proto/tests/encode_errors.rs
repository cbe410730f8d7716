//! What the encoder refuses: packets the wire format of a version cannot carry. Each
//! refusal is an `EncodeError` and leaves the output buffer untouched, so a caller
//! never sends half a packet.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use mqtt_proto::{
    Auth, AuthProperties, Connect, ConnectProperties, EncodeError, MqttString, Packet,
    ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, SubAck, Subscribe,
    SubscribeProperties, SubscriptionOptions, TopicFilter, TopicName,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

fn refused(packet: &Packet, v: ProtocolVersion) -> EncodeError {
    let mut buf = BytesMut::from(&b"kept"[..]);
    let err = packet
        .encode(v, &mut buf)
        .expect_err("the encoder must refuse this packet");
    assert_eq!(&buf[..], b"kept", "a refused packet wrote bytes");
    err
}

fn publish(qos: QoS, packet_id: Option<u16>, properties: PublishProperties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::from_static("t").expect("valid"),
        packet_id: packet_id.and_then(NonZeroU16::new),
        properties,
        payload: Bytes::new(),
    })
}

/// [MQTT-2.2.1-2]: a QoS 0 PUBLISH has no Packet Identifier, a QoS 1 or 2 one has.
#[test]
fn packet_identifier_exactly_when_qos_above_0_mqtt_2_2_1_2() {
    for p in [
        publish(QoS::AtMostOnce, Some(1), PublishProperties::default()),
        publish(QoS::AtLeastOnce, None, PublishProperties::default()),
    ] {
        assert!(matches!(
            refused(&p, V3_1_1),
            EncodeError::Unrepresentable(_)
        ));
    }
}

/// Regression: a Subscription Identifier above 268,435,455 was silently clamped to
/// it, sending a different identifier than the caller asked for. It is a Variable
/// Byte Integer (3.3.2.3.8, 3.8.2.1.2), so it is refused.
#[test]
fn subscription_identifier_above_the_variable_byte_integer_range_3_3_2_3_8() {
    let too_big = NonZeroU32::new(268_435_456).expect("non-zero");
    let p = publish(
        QoS::AtMostOnce,
        None,
        PublishProperties {
            subscription_identifiers: vec![too_big],
            ..Default::default()
        },
    );
    assert!(matches!(refused(&p, V5), EncodeError::Unrepresentable(_)));

    let s = Packet::Subscribe(Subscribe {
        packet_id: NonZeroU16::MIN,
        filters: vec![(
            TopicFilter::from_static("a").expect("valid"),
            SubscriptionOptions::qos(QoS::AtMostOnce),
        )],
        properties: SubscribeProperties {
            subscription_identifier: Some(too_big),
            ..Default::default()
        },
    });
    assert!(matches!(refused(&s, V5), EncodeError::Unrepresentable(_)));

    // The largest one is fine.
    let max = NonZeroU32::new(268_435_455).expect("non-zero");
    let p = publish(
        QoS::AtMostOnce,
        None,
        PublishProperties {
            subscription_identifiers: vec![max],
            ..Default::default()
        },
    );
    let mut buf = BytesMut::new();
    p.encode(V5, &mut buf).expect("encodes");
    assert!(buf.ends_with(&[0x0B, 0xFF, 0xFF, 0xFF, 0x7F]));
}

/// Regression: a 3.1 SUBACK carrying a 5.0 success code that is not a granted QoS
/// (0x10) was written as 0x80, a byte 3.1 does not define. 3.1 SUBACKs hold granted
/// QoS values only.
#[test]
fn suback_code_without_a_3_1_form() {
    for code in [ReasonCode::NoMatchingSubscribers, ReasonCode::NotAuthorized] {
        let p = Packet::SubAck(SubAck {
            packet_id: NonZeroU16::MIN,
            reason_codes: vec![ReasonCode::GrantedQoS1, code],
            properties: Default::default(),
        });
        assert!(matches!(refused(&p, V3_1), EncodeError::Unrepresentable(_)));
        // 3.1.1 has 0x80 for every failure.
        let mut buf = BytesMut::new();
        if !code.is_success() {
            p.encode(V3_1_1, &mut buf).expect("3.1.1 has 0x80");
            assert_eq!(&buf[..], &[0x90, 0x04, 0x00, 0x01, 0x01, 0x80]);
        }
    }
}

#[test]
fn auth_before_5_0() {
    let p = Packet::Auth(Auth {
        reason_code: ReasonCode::Success,
        properties: AuthProperties::default(),
    });
    assert!(matches!(
        refused(&p, V3_1_1),
        EncodeError::Unrepresentable(_)
    ));
}

/// [MQTT-3.1.2-22]: before 5.0 a Password needs a User Name.
#[test]
fn password_without_username_before_5_0_mqtt_3_1_2_22() {
    for v in [V3_1, V3_1_1] {
        let p = Packet::Connect(Box::new(Connect {
            protocol: v,
            clean_start: true,
            keep_alive: 0,
            client_id: MqttString::from_static("c").expect("valid"),
            will: None,
            username: None,
            password: Some(Bytes::from_static(b"pw")),
            properties: ConnectProperties::default(),
        }));
        assert!(matches!(refused(&p, v), EncodeError::Unrepresentable(_)));
    }
}

/// Binary Data is at most 65,535 bytes (1.5.6): its length prefix has two bytes.
#[test]
fn binary_data_over_65535_bytes_1_5_6() {
    let p = publish(
        QoS::AtMostOnce,
        None,
        PublishProperties {
            correlation_data: Some(Bytes::from(vec![0; 65_536])),
            ..Default::default()
        },
    );
    assert!(matches!(refused(&p, V5), EncodeError::Unrepresentable(_)));
}
