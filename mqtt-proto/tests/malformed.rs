//! Malformed and forbidden input, one row per rule: the exact `DecodeError` a
//! `Decoder` returns and the 5.0 reason code (`DecodeError::reason_code`) the peer is
//! sent in its CONNACK or DISCONNECT. Test names cite the normative statement
//! (`mqtt_x_y_z_n` = [MQTT-x.y.z-n]; a bare section number where the rule has no
//! numbered statement). Statement numbers are MQTT 5.0 unless the name says 3.1.1;
//! the MQTT 3.1 rules come from the IBM 3.1 specification, which numbers none.
//!
//! Each row is decoded twice: with all bytes in the buffer at once, and fed one byte
//! at a time (the error must not depend on how the bytes arrive).

use bytes::BytesMut;
use mqtt_proto::{DecodeError, Decoder, ProtocolVersion, ReasonCode, StringError};

use DecodeError::*;
use ProtocolVersion::{V3_1, V3_1_1, V5};

/// A server's decoder before CONNECT: it learns the version from CONNECT.
const SERVER: Option<ProtocolVersion> = None;
const V31: Option<ProtocolVersion> = Some(V3_1);
const V311: Option<ProtocolVersion> = Some(V3_1_1);
const V50: Option<ProtocolVersion> = Some(V5);

/// The decoder's Maximum Packet Size in every row but the packet-too-large ones.
const MAX: u32 = 1 << 20;

// ---------------------------------------------------------------------------
// Packet builders
// ---------------------------------------------------------------------------

/// Fixed header (type and flags in `first`, minimal Remaining Length) + `body`.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A two-byte length prefixed string or binary field.
fn s(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A CONNECT: protocol name, level, connect flags, Keep Alive 60, the property block
/// (5.0 only, given with its length byte) and the payload.
fn connect(name: &[u8], level: u8, flags: u8, props: &[u8], payload: &[u8]) -> Vec<u8> {
    pkt(
        0x10,
        &cat(&[&s(name), &[level, flags, 0x00, 0x3C], props, payload]),
    )
}

/// A 5.0 CONNECT, Clean Start, with the given property block body and client id "c".
fn connect_v5_props(props: &[u8]) -> Vec<u8> {
    let block = cat(&[&[props.len() as u8], props]);
    connect(b"MQTT", 5, 0x02, &block, &s(b"c"))
}

/// A 3.1.1 CONNECT with the given connect flags and payload.
fn connect_v311(flags: u8, payload: &[u8]) -> Vec<u8> {
    connect(b"MQTT", 4, flags, &[], payload)
}

/// A 3.1 CONNECT (MQIsdp, level 3) with the given Client Identifier.
fn connect_v31(client_id: &[u8]) -> Vec<u8> {
    connect(b"MQIsdp", 3, 0x02, &[], &s(client_id))
}

/// A 3.1.1 QoS 0 PUBLISH to `topic`, payload "x".
fn publish_v311(topic: &[u8]) -> Vec<u8> {
    pkt(0x30, &cat(&[&s(topic), b"x"]))
}

/// A 5.0 QoS 0 PUBLISH to "t" with the given property block body.
fn publish_v5_props(props: &[u8]) -> Vec<u8> {
    pkt(0x30, &cat(&[&s(b"t"), &[props.len() as u8], props, b"x"]))
}

/// A SUBSCRIBE, packet id 1, one filter with the given options byte; 5.0 adds an
/// empty property block.
fn subscribe(v5: bool, filter: &[u8], options: u8) -> Vec<u8> {
    let props: &[u8] = if v5 { &[0x00] } else { &[] };
    pkt(0x82, &cat(&[&[0x00, 0x01], props, &s(filter), &[options]]))
}

fn unsubscribe_v311(filter: &[u8]) -> Vec<u8> {
    pkt(0xA2, &cat(&[&[0x00, 0x01], &s(filter)]))
}

/// A 5.0 SUBSCRIBE to "a" (QoS 0) with the given property block body.
fn subscribe_v5_props(props: &[u8]) -> Vec<u8> {
    pkt(
        0x82,
        &cat(&[&[0x00, 0x01, props.len() as u8], props, &s(b"a"), &[0x00]]),
    )
}

// ---------------------------------------------------------------------------
// The check
// ---------------------------------------------------------------------------

fn decoder(start: Option<ProtocolVersion>, max: u32) -> Decoder {
    match start {
        None => Decoder::new(max),
        Some(v) => Decoder::with_version(v, max),
    }
}

fn assert_rejected(
    start: Option<ProtocolVersion>,
    max: u32,
    input: &[u8],
    expected: DecodeError,
    code: ReasonCode,
) {
    // All at once.
    let mut buf = BytesMut::from(input);
    let got = decoder(start, max).decode(&mut buf);
    assert_eq!(got, Err(expected.clone()), "input {input:02x?}");
    assert_eq!(
        expected.reason_code(),
        code,
        "reason code of {expected:?} ({expected})"
    );

    // One byte at a time: `Ok(None)` until the error, never a packet.
    let mut d = decoder(start, max);
    let mut buf = BytesMut::new();
    let mut result = Ok(None);
    for &b in input {
        buf.extend_from_slice(&[b]);
        result = d.decode(&mut buf);
        match &result {
            Ok(None) => {}
            Ok(Some(p)) => panic!("decoded {p:?} from a prefix of {input:02x?}"),
            Err(_) => break,
        }
    }
    assert_eq!(result, Err(expected), "byte-at-a-time input {input:02x?}");
}

macro_rules! malformed {
    ($( $(#[$doc:meta])* $name:ident: $start:expr, $input:expr => $err:expr, $code:ident; )*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                assert_rejected($start, MAX, &$input, $err, ReasonCode::$code);
            }
        )*
        const ROWS: &[&str] = &[$(stringify!($name)),*];
    };
}

malformed! {
    // --- Fixed header -----------------------------------------------------------
    /// Remaining Length continuing into a fifth byte.
    remaining_length_of_five_bytes_is_malformed_mqtt_1_5_5:
        V50, [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01] => MalformedVariableByteInteger, MalformedPacket;
    /// PINGREQ with Remaining Length 0 written in two bytes.
    remaining_length_not_minimal_is_malformed_mqtt_1_5_5_1:
        V311, [0xC0, 0x80, 0x00] => MalformedVariableByteInteger, MalformedPacket;
    /// 5.0 Property Length 0 written in two bytes.
    property_length_not_minimal_is_malformed_mqtt_1_5_5_1:
        V50, pkt(0x30, &[0x00, 0x01, b't', 0x80, 0x00]) => MalformedVariableByteInteger, MalformedPacket;
    packet_type_0_is_malformed_mqtt_2_1_2:
        V50, [0x00, 0x00] => InvalidPacketType(0), MalformedPacket;
    reserved_flags_connect_mqtt_2_1_3:
        SERVER, {
            let mut p = connect_v5_props(&[]);
            p[0] = 0x11;
            p
        } => InvalidFixedHeaderFlags { packet_type: 1, flags: 0x1 }, MalformedPacket;
    reserved_flags_connack_mqtt_2_1_3:
        V50, [0x28, 0x03, 0x00, 0x00, 0x00] => InvalidFixedHeaderFlags { packet_type: 2, flags: 0x8 }, MalformedPacket;
    reserved_flags_puback_mqtt_2_1_3:
        V50, [0x42, 0x02, 0x00, 0x01] => InvalidFixedHeaderFlags { packet_type: 4, flags: 0x2 }, MalformedPacket;
    reserved_flags_pubrec_mqtt_2_1_3:
        V311, [0x51, 0x02, 0x00, 0x01] => InvalidFixedHeaderFlags { packet_type: 5, flags: 0x1 }, MalformedPacket;
    /// PUBREL must carry 0010 [MQTT-3.6.1-1]; 0000 is the common mistake.
    reserved_flags_pubrel_mqtt_3_6_1_1:
        V311, [0x60, 0x02, 0x00, 0x01] => InvalidFixedHeaderFlags { packet_type: 6, flags: 0x0 }, MalformedPacket;
    reserved_flags_pubcomp_mqtt_2_1_3:
        V50, [0x74, 0x02, 0x00, 0x01] => InvalidFixedHeaderFlags { packet_type: 7, flags: 0x4 }, MalformedPacket;
    reserved_flags_subscribe_mqtt_3_8_1_1:
        V311, {
            let mut p = subscribe(false, b"a", 0);
            p[0] = 0x80;
            p
        } => InvalidFixedHeaderFlags { packet_type: 8, flags: 0x0 }, MalformedPacket;
    reserved_flags_suback_mqtt_2_1_3:
        V311, [0x92, 0x03, 0x00, 0x01, 0x00] => InvalidFixedHeaderFlags { packet_type: 9, flags: 0x2 }, MalformedPacket;
    reserved_flags_unsubscribe_mqtt_3_10_1_1:
        V311, {
            let mut p = unsubscribe_v311(b"a");
            p[0] = 0xA3;
            p
        } => InvalidFixedHeaderFlags { packet_type: 10, flags: 0x3 }, MalformedPacket;
    reserved_flags_unsuback_mqtt_2_1_3:
        V311, [0xB1, 0x02, 0x00, 0x01] => InvalidFixedHeaderFlags { packet_type: 11, flags: 0x1 }, MalformedPacket;
    reserved_flags_pingreq_mqtt_2_1_3:
        V311, [0xC8, 0x00] => InvalidFixedHeaderFlags { packet_type: 12, flags: 0x8 }, MalformedPacket;
    reserved_flags_pingresp_mqtt_2_1_3:
        V311, [0xD1, 0x00] => InvalidFixedHeaderFlags { packet_type: 13, flags: 0x1 }, MalformedPacket;
    reserved_flags_disconnect_mqtt_2_1_3:
        V50, [0xE2, 0x00] => InvalidFixedHeaderFlags { packet_type: 14, flags: 0x2 }, MalformedPacket;
    reserved_flags_auth_mqtt_2_1_3:
        V50, [0xF1, 0x00] => InvalidFixedHeaderFlags { packet_type: 15, flags: 0x1 }, MalformedPacket;
    /// Bits 7-1 of the CONNACK Acknowledge Flags are reserved.
    connack_reserved_acknowledge_flags_mqtt_3_2_2_1:
        V311, [0x20, 0x02, 0x02, 0x00] => InvalidFixedHeaderFlags { packet_type: 2, flags: 0x2 }, MalformedPacket;

    // --- PUBLISH flags and packet identifiers ----------------------------------
    qos_3_is_malformed_mqtt_3_3_1_4:
        V311, pkt(0x36, &cat(&[&s(b"a"), &[0x00, 0x01]])) => InvalidQoS, MalformedPacket;
    dup_on_qos0_is_malformed_mqtt_3_3_1_2:
        V50, pkt(0x38, &cat(&[&s(b"a"), &[0x00]])) => DupWithQoS0, MalformedPacket;
    zero_packet_id_in_publish_mqtt_2_2_1_3:
        V311, pkt(0x32, &cat(&[&s(b"a"), &[0x00, 0x00]])) => ZeroPacketId, MalformedPacket;
    zero_packet_id_in_puback_mqtt_2_2_1_3:
        V50, [0x40, 0x02, 0x00, 0x00] => ZeroPacketId, MalformedPacket;
    zero_packet_id_in_pubrel_mqtt_2_2_1_3:
        V311, [0x62, 0x02, 0x00, 0x00] => ZeroPacketId, MalformedPacket;
    zero_packet_id_in_subscribe_mqtt_2_2_1_3:
        V311, pkt(0x82, &cat(&[&[0x00, 0x00], &s(b"a"), &[0x00]])) => ZeroPacketId, MalformedPacket;
    zero_packet_id_in_unsubscribe_mqtt_2_2_1_3:
        V311, pkt(0xA2, &cat(&[&[0x00, 0x00], &s(b"a")])) => ZeroPacketId, MalformedPacket;

    // --- Strings --------------------------------------------------------------
    invalid_utf8_in_topic_mqtt_1_5_4_1:
        V311, publish_v311(&[b'a', 0xFF]) => InvalidString(StringError::InvalidUtf8), MalformedPacket;
    /// U+D800 encoded as ED A0 80.
    utf16_surrogate_in_topic_mqtt_1_5_4_1:
        V311, publish_v311(&[0xED, 0xA0, 0x80]) => InvalidString(StringError::InvalidUtf8), MalformedPacket;
    /// U+002F '/' in an overlong two-byte form (C0 AF).
    overlong_utf8_in_topic_mqtt_1_5_4_1:
        V50, pkt(0x30, &cat(&[&s(&[b'a', 0xC0, 0xAF]), &[0x00]])) => InvalidString(StringError::InvalidUtf8), MalformedPacket;
    null_character_in_topic_mqtt_1_5_4_2:
        V311, publish_v311(b"a\0b") => InvalidString(StringError::NullCharacter), MalformedPacket;
    null_character_in_client_id_mqtt_1_5_4_2:
        SERVER, connect_v311(0x02, &s(b"c\0")) => InvalidString(StringError::NullCharacter), MalformedPacket;
    invalid_utf8_in_user_property_mqtt_1_5_4_1:
        V50, publish_v5_props(&cat(&[&[0x26], &s(b"k"), &s(&[0xC3])])) => InvalidString(StringError::InvalidUtf8), MalformedPacket;

    // --- Topic names and filters -------------------------------------------------
    plus_wildcard_in_topic_name_mqtt_3_3_2_2:
        V50, pkt(0x30, &cat(&[&s(b"a/+"), &[0x00]])) => InvalidString(StringError::WildcardInTopicName), TopicNameInvalid;
    hash_wildcard_in_topic_name_mqtt_3_3_2_2:
        V311, publish_v311(b"a/#") => InvalidString(StringError::WildcardInTopicName), TopicNameInvalid;
    wildcard_in_will_topic_mqtt_3_1_3_11:
        SERVER, connect_v311(0x06, &cat(&[&s(b"c"), &s(b"w/#"), &s(b"")])) => InvalidString(StringError::WildcardInTopicName), TopicNameInvalid;
    empty_topic_without_alias_is_a_protocol_error_3_3_2_3_4:
        V50, pkt(0x30, &cat(&[&s(b""), &[0x00]])) => EmptyTopicWithoutAlias, ProtocolError;
    empty_topic_name_3_1_1_mqtt_4_7_3_1:
        V311, publish_v311(b"") => EmptyTopicWithoutAlias, ProtocolError;
    hash_not_last_in_filter_mqtt_4_7_1_1:
        V311, subscribe(false, b"a/#/b", 0) => InvalidString(StringError::InvalidWildcard), TopicFilterInvalid;
    hash_sharing_a_level_mqtt_4_7_1_1:
        V50, subscribe(true, b"a/b#", 0) => InvalidString(StringError::InvalidWildcard), TopicFilterInvalid;
    plus_sharing_a_level_mqtt_4_7_1_2:
        V311, subscribe(false, b"a/+b/c", 0) => InvalidString(StringError::InvalidWildcard), TopicFilterInvalid;
    misplaced_wildcard_in_unsubscribe_mqtt_4_7_1_2:
        V311, unsubscribe_v311(b"+a") => InvalidString(StringError::InvalidWildcard), TopicFilterInvalid;
    empty_topic_filter_mqtt_4_7_3_1:
        V311, unsubscribe_v311(b"") => InvalidString(StringError::Empty), TopicFilterInvalid;
    shared_subscription_without_share_name_mqtt_4_8_2_1:
        V50, subscribe(true, b"$share//a", 0) => InvalidString(StringError::InvalidSharedSubscription), TopicFilterInvalid;
    shared_subscription_without_filter_mqtt_4_8_2_2:
        V50, subscribe(true, b"$share/group/", 0) => InvalidString(StringError::InvalidSharedSubscription), TopicFilterInvalid;
    shared_subscription_without_slash_after_name_mqtt_4_8_2_2:
        V50, subscribe(true, b"$share/group", 0) => InvalidString(StringError::InvalidSharedSubscription), TopicFilterInvalid;
    wildcard_in_share_name_mqtt_4_8_2_2:
        V50, subscribe(true, b"$share/g+/a", 0) => InvalidString(StringError::InvalidSharedSubscription), TopicFilterInvalid;

    // --- Properties -------------------------------------------------------------
    /// Payload Format Indicator twice.
    duplicate_property_is_a_protocol_error_3_3_2_3_2:
        V50, publish_v5_props(&[0x01, 0x00, 0x01, 0x01]) => DuplicateProperty(0x01), ProtocolError;
    /// Session Expiry Interval twice in CONNECT.
    duplicate_session_expiry_is_a_protocol_error_3_1_2_11_2:
        SERVER, connect_v5_props(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]) => DuplicateProperty(0x11), ProtocolError;
    /// Session Expiry Interval is not a PUBLISH property.
    property_not_allowed_in_publish_is_malformed_2_2_2_2:
        V50, publish_v5_props(&[0x11, 0, 0, 0, 1]) => InvalidPropertyId(0x11), MalformedPacket;
    /// Topic Alias is not a CONNECT property.
    property_not_allowed_in_connect_is_malformed_2_2_2_2:
        SERVER, connect_v5_props(&[0x23, 0x00, 0x01]) => InvalidPropertyId(0x23), MalformedPacket;
    /// Subscription Identifier is not an UNSUBSCRIBE property.
    property_not_allowed_in_unsubscribe_is_malformed_2_2_2_2:
        V50, pkt(0xA2, &cat(&[&[0x00, 0x01, 0x02, 0x0B, 0x01], &s(b"a")])) => InvalidPropertyId(0x0B), MalformedPacket;
    unknown_property_identifier_is_malformed_2_2_2_2:
        V50, publish_v5_props(&[0x7F, 0x00]) => InvalidPropertyId(0x7F), MalformedPacket;
    receive_maximum_0_is_a_protocol_error_3_1_2_11_3:
        SERVER, connect_v5_props(&[0x21, 0x00, 0x00]) => InvalidPropertyValue(0x21), ProtocolError;
    maximum_packet_size_0_is_a_protocol_error_3_1_2_11_4:
        SERVER, connect_v5_props(&[0x27, 0, 0, 0, 0]) => InvalidPropertyValue(0x27), ProtocolError;
    request_problem_information_2_is_a_protocol_error_3_1_2_11_7:
        SERVER, connect_v5_props(&[0x17, 0x02]) => InvalidPropertyValue(0x17), ProtocolError;
    authentication_data_without_method_is_a_protocol_error_3_1_2_11_10:
        SERVER, connect_v5_props(&cat(&[&[0x16], &s(b"data")])) => InvalidPropertyValue(0x16), ProtocolError;
    topic_alias_0_mqtt_3_3_2_8:
        V50, publish_v5_props(&[0x23, 0x00, 0x00]) => InvalidPropertyValue(0x23), ProtocolError;
    payload_format_indicator_2_3_3_2_3_2:
        V50, publish_v5_props(&[0x01, 0x02]) => InvalidPropertyValue(0x01), ProtocolError;
    response_topic_with_wildcard_mqtt_3_3_2_14:
        V50, publish_v5_props(&cat(&[&[0x08], &s(b"r/+")])) => InvalidString(StringError::WildcardInTopicName), TopicNameInvalid;
    maximum_qos_2_is_a_protocol_error_3_2_2_3_4:
        V50, pkt(0x20, &[0x00, 0x00, 0x02, 0x24, 0x02]) => InvalidPropertyValue(0x24), ProtocolError;
    subscription_identifier_0_is_a_protocol_error_3_8_2_1_2:
        V50, subscribe_v5_props(&[0x0B, 0x00]) => InvalidPropertyValue(0x0B), ProtocolError;
    subscription_identifier_0_in_publish_3_3_2_3_8:
        V50, publish_v5_props(&[0x0B, 0x00]) => InvalidPropertyValue(0x0B), ProtocolError;
    property_running_past_its_block_is_malformed_2_2_2_1:
        V50, publish_v5_props(&[0x02, 0x00, 0x00]) => UnexpectedEnd, MalformedPacket;

    // --- Reason codes -----------------------------------------------------------
    /// 0x02 Granted QoS 2 is a SUBACK code, not a PUBACK one.
    invalid_reason_code_in_puback_3_4_2_1:
        V50, [0x40, 0x03, 0x00, 0x01, 0x02] => InvalidReasonCode(0x02), ProtocolError;
    invalid_reason_code_in_pubrel_3_6_2_1:
        V50, [0x62, 0x03, 0x00, 0x01, 0x10] => InvalidReasonCode(0x10), ProtocolError;
    invalid_reason_code_in_pubcomp_3_7_2_1:
        V50, [0x70, 0x03, 0x00, 0x01, 0x80] => InvalidReasonCode(0x80), ProtocolError;
    invalid_reason_code_in_connack_3_2_2_2:
        V50, [0x20, 0x03, 0x00, 0x04, 0x00] => InvalidReasonCode(0x04), ProtocolError;
    /// 3.1.1 CONNACK return codes 6-255 are reserved (3.1.1 section 3.2.2.3).
    reserved_connack_return_code_3_1_1_3_2_2_3:
        V311, [0x20, 0x02, 0x00, 0x06] => InvalidReasonCode(0x06), ProtocolError;
    invalid_reason_code_in_suback_3_9_3:
        V50, [0x90, 0x04, 0x00, 0x01, 0x00, 0x03] => InvalidReasonCode(0x03), ProtocolError;
    /// 3.1.1 SUBACK return codes other than 0x00-0x02 and 0x80 are reserved [MQTT-3.9.3-2].
    reserved_suback_return_code_3_1_1_mqtt_3_9_3_2:
        V311, [0x90, 0x03, 0x00, 0x01, 0x81] => InvalidReasonCode(0x81), ProtocolError;
    /// MQTT 3.1 SUBACK has granted QoS values only: no 0x80 failure.
    suback_failure_code_in_3_1:
        V31, [0x90, 0x03, 0x00, 0x01, 0x80] => InvalidReasonCode(0x80), ProtocolError;
    invalid_reason_code_in_unsuback_3_11_3:
        V50, [0xB0, 0x04, 0x00, 0x01, 0x00, 0x01] => InvalidReasonCode(0x01), ProtocolError;
    invalid_reason_code_in_disconnect_3_14_2_1:
        V50, [0xE0, 0x01, 0x01] => InvalidReasonCode(0x01), ProtocolError;
    invalid_reason_code_in_auth_3_15_2_1:
        V50, [0xF0, 0x02, 0x01, 0x00] => InvalidReasonCode(0x01), ProtocolError;

    // --- SUBSCRIBE and UNSUBSCRIBE payloads -------------------------------------
    empty_subscribe_mqtt_3_8_3_3:
        V311, [0x82, 0x02, 0x00, 0x01] => NoTopicFilters, ProtocolError;
    empty_subscribe_v5_mqtt_3_8_3_3:
        V50, [0x82, 0x03, 0x00, 0x01, 0x00] => NoTopicFilters, ProtocolError;
    empty_unsubscribe_mqtt_3_10_3_2:
        V50, [0xA2, 0x03, 0x00, 0x01, 0x00] => NoTopicFilters, ProtocolError;
    empty_suback_3_9_3:
        V311, [0x90, 0x02, 0x00, 0x01] => NoTopicFilters, ProtocolError;
    subscription_qos_3_is_malformed_3_8_3_1:
        V50, subscribe(true, b"a", 0x03) => InvalidQoS, MalformedPacket;
    retain_handling_3_is_a_protocol_error_3_8_3_1:
        V50, subscribe(true, b"a", 0x30) => InvalidRetainHandling, ProtocolError;
    reserved_subscription_option_bits_mqtt_3_8_3_5:
        V50, subscribe(true, b"a", 0x40) => InvalidSubscriptionOptions, MalformedPacket;
    /// 3.1.1: the upper six bits of the Requested QoS byte are reserved.
    reserved_requested_qos_bits_3_1_1_mqtt_3_8_3_4:
        V311, subscribe(false, b"a", 0x04) => InvalidSubscriptionOptions, MalformedPacket;
    no_local_on_shared_subscription_mqtt_3_8_3_4:
        V50, subscribe(true, b"$share/g/a", 0x04) => NoLocalOnSharedSubscription, ProtocolError;

    // --- CONNECT ----------------------------------------------------------------
    connect_reserved_flag_mqtt_3_1_2_3:
        SERVER, connect_v311(0x03, &s(b"c")) => ConnectReservedFlag, MalformedPacket;
    will_qos_without_will_flag_mqtt_3_1_2_11:
        SERVER, connect_v311(0x0A, &s(b"c")) => WillFlagsWithoutWill, MalformedPacket;
    will_retain_without_will_flag_mqtt_3_1_2_13:
        SERVER, connect(b"MQTT", 5, 0x22, &[0x00], &s(b"c")) => WillFlagsWithoutWill, MalformedPacket;
    will_qos_3_is_malformed_mqtt_3_1_2_12:
        SERVER, connect_v311(0x1E, &cat(&[&s(b"c"), &s(b"w"), &s(b"")])) => InvalidQoS, MalformedPacket;
    password_without_username_3_1_1_mqtt_3_1_2_22:
        SERVER, connect_v311(0x42, &cat(&[&s(b"c"), &s(b"pw")])) => PasswordWithoutUsername, MalformedPacket;
    /// The Will Topic is a topic name: at least one character.
    empty_will_topic_mqtt_4_7_3_1:
        SERVER, connect_v311(0x06, &cat(&[&s(b"c"), &s(b""), &s(b"")])) => EmptyTopicWithoutAlias, ProtocolError;
    client_id_of_0_characters_in_3_1:
        SERVER, connect_v31(b"") => ClientIdRejected, ClientIdentifierNotValid;
    client_id_of_24_characters_in_3_1:
        SERVER, connect_v31(b"abcdefghijklmnopqrstuvwx") => ClientIdRejected, ClientIdentifierNotValid;
    unknown_protocol_level_mqtt_3_1_2_2:
        SERVER, connect(b"MQTT", 6, 0x02, &[], &s(b"c")) => UnsupportedProtocolVersion(6), UnsupportedProtocolVersion;
    /// MQIsdp is 3.1's name; with level 4 it is neither 3.1 nor 3.1.1.
    mqisdp_with_level_4_mqtt_3_1_2_2:
        SERVER, connect(b"MQIsdp", 4, 0x02, &[], &s(b"c")) => UnsupportedProtocolVersion(4), UnsupportedProtocolVersion;
    bad_protocol_name_mqtt_3_1_2_1:
        SERVER, connect(b"MQTX", 4, 0x02, &[], &s(b"c")) => InvalidProtocolName, MalformedPacket;
    lowercase_protocol_name_mqtt_3_1_2_1:
        SERVER, connect(b"mqtt", 5, 0x02, &[0x00], &s(b"c")) => InvalidProtocolName, MalformedPacket;

    // --- Packet order and version --------------------------------------------
    first_packet_publish_mqtt_3_1_0_1:
        SERVER, publish_v311(b"a") => FirstPacketNotConnect, ProtocolError;
    /// Detected from the first byte alone, before the rest of the packet arrives.
    first_packet_pingreq_mqtt_3_1_0_1:
        SERVER, [0xC0] => FirstPacketNotConnect, ProtocolError;
    /// Type 15 is reserved in 3.1.1 (3.1.1 section 2.2.1, Table 2.1).
    auth_in_3_1_1_2_2_1:
        V311, [0xF0, 0x00] => AuthBeforeV5, ProtocolError;
    auth_in_3_1:
        V31, [0xF0, 0x00] => AuthBeforeV5, ProtocolError;

    // --- Lengths ----------------------------------------------------------------
    trailing_bytes_after_pingreq_3_12:
        V311, [0xC0, 0x01, 0x00] => TrailingBytes, MalformedPacket;
    /// A 3.1.1 PUBACK is exactly two bytes: no reason code before 5.0.
    trailing_bytes_after_puback_3_1_1_3_4_2:
        V311, [0x40, 0x03, 0x00, 0x01, 0x00] => TrailingBytes, MalformedPacket;
    /// A 3.1.1 DISCONNECT has no variable header.
    trailing_bytes_after_disconnect_3_1_1_3_14:
        V311, [0xE0, 0x01, 0x00] => TrailingBytes, MalformedPacket;
    /// Regression: the first CONNECT (version still unknown) took a different path that
    /// accepted anything after the payload.
    trailing_bytes_after_first_connect_3_1_3:
        SERVER, connect_v311(0x02, &cat(&[&s(b"c"), b"junk"])) => TrailingBytes, MalformedPacket;
    trailing_bytes_after_connack_properties_3_2:
        V50, [0x20, 0x04, 0x00, 0x00, 0x00, 0xFF] => TrailingBytes, MalformedPacket;
    truncated_topic_in_publish_1_5_4:
        V311, [0x30, 0x03, 0x00, 0x05, b'a'] => UnexpectedEnd, MalformedPacket;
    truncated_packet_id_in_publish_3_3_2_2:
        V311, pkt(0x32, &cat(&[&s(b"a"), &[0x00]])) => UnexpectedEnd, MalformedPacket;
    truncated_connect_without_keep_alive_3_1_2_10:
        SERVER, pkt(0x10, &cat(&[&s(b"MQTT"), &[0x04, 0x02, 0x00]])) => UnexpectedEnd, MalformedPacket;
    truncated_puback_3_4_2:
        V50, [0x40, 0x01, 0x00] => UnexpectedEnd, MalformedPacket;
    property_length_past_the_packet_2_2_2_1:
        V50, pkt(0x30, &[0x00, 0x01, b't', 0x05, 0x01]) => UnexpectedEnd, MalformedPacket;
    truncated_will_payload_3_1_3_4:
        SERVER, connect_v311(0x06, &cat(&[&s(b"c"), &s(b"w"), &[0x00, 0x09, b'x']])) => UnexpectedEnd, MalformedPacket;
    subscribe_missing_options_byte_3_8_3:
        V311, pkt(0x82, &cat(&[&[0x00, 0x01], &s(b"a")])) => UnexpectedEnd, MalformedPacket;
}

/// The table is as long as the issue demands.
#[test]
fn table_has_at_least_40_rows() {
    assert!(ROWS.len() >= 40, "{} rows", ROWS.len());
}

// ---------------------------------------------------------------------------
// Maximum Packet Size, decided from the fixed header alone
// ---------------------------------------------------------------------------

/// A peer announces a 256 MiB PUBLISH; the first five bytes (type and a four-byte
/// Remaining Length) are enough to refuse it, so the body is never buffered
/// (3.1.2.11.4: a packet over the Maximum Packet Size is answered with 0x95).
#[test]
fn packet_too_large_detected_from_five_header_bytes_3_1_2_11_4() {
    let header = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    let expected = PacketTooLarge {
        size: 5 + 268_435_455,
        max: 1024,
    };
    assert_rejected(V50, 1024, &header, expected, ReasonCode::PacketTooLarge);
}

/// The limit counts the whole packet, fixed header included: a packet of exactly
/// the maximum passes and one byte more does not.
#[test]
fn packet_too_large_counts_the_fixed_header_3_1_2_11_4() {
    // PUBLISH "t" with a 3-byte payload: 2 + 3 + 3 = 8 bytes on the wire.
    let packet = pkt(0x30, &cat(&[&s(b"t"), b"abc"]));
    assert_eq!(packet.len(), 8);
    let mut buf = BytesMut::from(&packet[..]);
    assert!(Decoder::with_version(V3_1_1, 8)
        .decode(&mut buf)
        .expect("8 bytes within a maximum of 8")
        .is_some());
    let expected = PacketTooLarge { size: 8, max: 7 };
    assert_rejected(
        V311,
        7,
        &packet[..2],
        expected.clone(),
        ReasonCode::PacketTooLarge,
    );
    assert_rejected(V311, 7, &packet, expected, ReasonCode::PacketTooLarge);
}

/// Before CONNECT the server's limit applies too: an oversized CONNECT is refused
/// from its header.
#[test]
fn oversized_first_connect_refused_from_its_header_3_1_2_11_4() {
    let header = [0x10, 0x80, 0x80, 0x04];
    let expected = PacketTooLarge {
        size: 4 + 65_536,
        max: 65_535,
    };
    assert_rejected(
        SERVER,
        65_535,
        &header,
        expected,
        ReasonCode::PacketTooLarge,
    );
}

// ---------------------------------------------------------------------------
// What is allowed, next to the rule it could be confused with
// ---------------------------------------------------------------------------

/// 5.0 allows a Password without a User Name (3.1.2.9), unlike 3.1.1.
#[test]
fn password_without_username_allowed_in_5_0_3_1_2_9() {
    let bytes = connect(b"MQTT", 5, 0x42, &[0x00], &cat(&[&s(b"c"), &s(b"pw")]));
    let mut buf = BytesMut::from(&bytes[..]);
    let packet = Decoder::new(MAX)
        .decode(&mut buf)
        .expect("valid 5.0 CONNECT");
    let Some(mqtt_proto::Packet::Connect(c)) = packet else {
        panic!("expected CONNECT, got {packet:?}");
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

/// 3.1 Client Identifiers of 1 and 23 characters are the limits, counted in
/// characters, not bytes.
#[test]
fn client_id_of_1_and_23_characters_in_3_1() {
    for id in ["a", "abcdefghijklmnopqrstuvw", "ééééééééééééééééééééééé"] {
        let bytes = connect_v31(id.as_bytes());
        let mut buf = BytesMut::from(&bytes[..]);
        let packet = Decoder::new(MAX).decode(&mut buf);
        assert!(
            matches!(packet, Ok(Some(mqtt_proto::Packet::Connect(_)))),
            "{id:?}: {packet:?}"
        );
    }
}

/// A 5.0 PUBLISH may have an empty Topic Name when it carries a Topic Alias (3.3.2.3.4).
#[test]
fn empty_topic_with_alias_allowed_3_3_2_3_4() {
    let bytes = pkt(0x30, &cat(&[&s(b""), &[0x03, 0x23, 0x00, 0x07], b"x"]));
    let mut buf = BytesMut::from(&bytes[..]);
    let packet = Decoder::with_version(V5, MAX).decode(&mut buf);
    let Ok(Some(mqtt_proto::Packet::Publish(p))) = packet else {
        panic!("{packet:?}");
    };
    assert!(p.topic.is_empty());
    assert_eq!(p.properties.topic_alias.map(|a| a.get()), Some(7));
}

/// MQTT 3.1 (MQIsdp, level 3) had no rule for CONNECT's reserved flag or its fixed
/// header flags, and real 3.1 clients set them: accepted at level 3 only. 3.1.1 and
/// 5.0 keep [MQTT-2.2.2-2] and [MQTT-3.1.2-3] (the rows above).
#[test]
fn reserved_connect_flags_are_accepted_in_3_1_only() {
    for (first, flags) in [(0x10, 0x03), (0x12, 0x02), (0x1F, 0x03)] {
        let mut bytes = connect(b"MQIsdp", 3, flags, &[], &s(b"c31"));
        bytes[0] = first;
        let mut buf = BytesMut::from(&bytes[..]);
        let packet = Decoder::new(MAX).decode(&mut buf);
        let Ok(Some(mqtt_proto::Packet::Connect(c))) = packet else {
            panic!("3.1 CONNECT {first:#04x}/{flags:#04x}: {packet:?}");
        };
        assert_eq!((c.protocol, c.client_id.as_str()), (V3_1, "c31"));
        assert!(c.clean_start);
    }
    for (name, level) in [(&b"MQTT"[..], 4), (b"MQTT", 5)] {
        let props: &[u8] = if level == 5 { &[0x00] } else { &[] };
        let mut bytes = connect(name, level, 0x02, props, &s(b"c"));
        bytes[0] = 0x12;
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            Decoder::new(MAX).decode(&mut buf).unwrap_err(),
            InvalidFixedHeaderFlags {
                packet_type: 1,
                flags: 0x2
            },
            "level {level}"
        );
        let bytes = connect(name, level, 0x03, props, &s(b"c"));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            Decoder::new(MAX).decode(&mut buf).unwrap_err(),
            ConnectReservedFlag,
            "level {level}"
        );
    }
}
