//! Decode and encode errors, each mapped to the reason code a 5.0 peer should see.

use core::fmt;

use crate::reason::ReasonCode;
use crate::string::StringError;

/// Why bytes could not be decoded into a packet.
///
/// [`DecodeError::reason_code`] gives the 5.0 reason code to send in the CONNACK or
/// DISCONNECT that answers it; a 3.1.1 peer is simply disconnected [MQTT-4.8.0-1].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet (fixed header included) is larger than the receiver's Maximum Packet
    /// Size; detected from the fixed header, before the body is buffered.
    PacketTooLarge {
        /// Size of the whole packet in bytes.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// Remaining Length longer than four bytes or not minimally encoded [MQTT-1.5.5-1];
    /// also any other Variable Byte Integer in the packet.
    MalformedVariableByteInteger,
    /// Packet type 0, or 15 before 5.0 [MQTT-2.1.2].
    InvalidPacketType(u8),
    /// Reserved flag bits of the fixed header not as the table requires [MQTT-2.1.3-1].
    InvalidFixedHeaderFlags {
        /// Packet type (upper nibble of byte 1).
        packet_type: u8,
        /// The flags received (lower nibble).
        flags: u8,
    },
    /// QoS 3 in a PUBLISH [MQTT-3.3.1-4], a will [MQTT-3.1.2-12], or a subscription
    /// [MQTT-3.8.3-4].
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    DupWithQoS0,
    /// The body ended before a field it must contain.
    UnexpectedEnd,
    /// Bytes left over after the last field of the packet.
    TrailingBytes,
    /// A string that breaks the rules for strings, topic names or filters.
    InvalidString(StringError),
    /// A packet identifier of zero [MQTT-2.2.1-3].
    ZeroPacketId,
    /// The first packet on a connection was not CONNECT [MQTT-3.1.0-1].
    FirstPacketNotConnect,
    /// Protocol name not `MQTT` (or `MQIsdp` for level 3) [MQTT-3.1.2-1].
    InvalidProtocolName,
    /// A protocol level this codec does not speak [MQTT-3.1.2-2]: answered with
    /// CONNACK 0x84 (5.0) / 0x01 (3.1.1) before closing.
    UnsupportedProtocolVersion(u8),
    /// CONNECT reserved flag set [MQTT-3.1.2-3].
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the Will Flag [MQTT-3.1.2-11] [MQTT-3.1.2-13].
    WillFlagsWithoutWill,
    /// 3.1.1: Password Flag without User Name Flag [MQTT-3.1.2-22].
    PasswordWithoutUsername,
    /// 3.1: Client Identifier of 0 or more than 23 characters (3.1 section 3.1).
    ClientIdRejected,
    /// A property identifier that does not exist, or may not appear in this packet
    /// [MQTT-2.2.2-1].
    InvalidPropertyId(u8),
    /// A property that may appear once appeared twice [MQTT-2.2.2-1].
    DuplicateProperty(u8),
    /// A property value outside its range (Receive Maximum 0, Maximum Packet Size 0,
    /// Topic Alias 0, Payload Format Indicator > 1, a boolean > 1, Maximum QoS > 1,
    /// Subscription Identifier 0, ...).
    InvalidPropertyValue(u8),
    /// A reason code not in the table for this packet.
    InvalidReasonCode(u8),
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter [MQTT-3.8.3-3] [MQTT-3.10.3-2].
    NoTopicFilters,
    /// Reserved bits of a subscription options byte set: a Malformed Packet
    /// [MQTT-3.8.3-5] (3.1.1: [MQTT-3.8.3-4]).
    InvalidSubscriptionOptions,
    /// Retain Handling 3 in a subscription options byte: a Protocol Error (5.0
    /// section 3.8.3.1).
    InvalidRetainHandling,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    NoLocalOnSharedSubscription,
    /// A 5.0 PUBLISH with an empty topic name and no Topic Alias [MQTT-3.3.2-1] /
    /// [MQTT-4.7.3-1].
    EmptyTopicWithoutAlias,
    /// AUTH before 5.0: type 15 is reserved in 3.1 and 3.1.1.
    AuthBeforeV5,
}

impl DecodeError {
    /// The 5.0 reason code that answers this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            ClientIdRejected => ReasonCode::ClientIdentifierNotValid,
            InvalidString(StringError::WildcardInTopicName) => ReasonCode::TopicNameInvalid,
            InvalidString(
                StringError::Empty
                | StringError::InvalidWildcard
                | StringError::InvalidSharedSubscription,
            ) => ReasonCode::TopicFilterInvalid,
            // "It is a Protocol Error if the Topic Name is zero length and there is no
            // Topic Alias" (5.0 section 3.3.2.3.4).
            EmptyTopicWithoutAlias
            | DuplicateProperty(_)
            | FirstPacketNotConnect
            | NoLocalOnSharedSubscription
            | InvalidPropertyValue(_)
            | InvalidReasonCode(_)
            | NoTopicFilters
            | AuthBeforeV5
            | InvalidRetainHandling => ReasonCode::ProtocolError,
            MalformedVariableByteInteger
            | InvalidPacketType(_)
            | InvalidFixedHeaderFlags { .. }
            | InvalidQoS
            | DupWithQoS0
            | UnexpectedEnd
            | TrailingBytes
            | InvalidString(_)
            | ZeroPacketId
            | InvalidProtocolName
            | ConnectReservedFlag
            | WillFlagsWithoutWill
            | PasswordWithoutUsername
            | InvalidSubscriptionOptions
            | InvalidPropertyId(_) => ReasonCode::MalformedPacket,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match self {
            PacketTooLarge { size, max } => {
                write!(
                    f,
                    "packet of {size} bytes exceeds the maximum packet size {max}"
                )
            }
            MalformedVariableByteInteger => f.write_str("malformed variable byte integer"),
            InvalidPacketType(t) => write!(f, "invalid packet type {t}"),
            InvalidFixedHeaderFlags { packet_type, flags } => {
                write!(
                    f,
                    "invalid fixed header flags {flags:#06b} for packet type {packet_type}"
                )
            }
            InvalidQoS => f.write_str("QoS 3 is not a valid QoS"),
            DupWithQoS0 => f.write_str("DUP flag set on a QoS 0 PUBLISH"),
            UnexpectedEnd => f.write_str("packet ended before a required field"),
            TrailingBytes => f.write_str("unexpected bytes after the last field"),
            InvalidString(e) => write!(f, "invalid string: {e}"),
            ZeroPacketId => f.write_str("packet identifier 0"),
            FirstPacketNotConnect => f.write_str("first packet was not CONNECT"),
            InvalidProtocolName => f.write_str("invalid protocol name"),
            UnsupportedProtocolVersion(v) => write!(f, "unsupported protocol level {v}"),
            ConnectReservedFlag => f.write_str("CONNECT reserved flag set"),
            WillFlagsWithoutWill => f.write_str("will QoS or retain set without will flag"),
            PasswordWithoutUsername => f.write_str("password flag without user name flag"),
            ClientIdRejected => {
                f.write_str("MQTT 3.1 client identifier must be 1 to 23 characters")
            }
            InvalidPropertyId(id) => write!(f, "property 0x{id:02X} not valid in this packet"),
            DuplicateProperty(id) => write!(f, "property 0x{id:02X} included more than once"),
            InvalidPropertyValue(id) => write!(f, "property 0x{id:02X} has an invalid value"),
            InvalidReasonCode(c) => write!(f, "reason code 0x{c:02X} not valid in this packet"),
            NoTopicFilters => f.write_str("no topic filters"),
            InvalidSubscriptionOptions => f.write_str("reserved subscription option bits set"),
            InvalidRetainHandling => f.write_str("retain handling 3"),
            NoLocalOnSharedSubscription => f.write_str("No Local set on a shared subscription"),
            EmptyTopicWithoutAlias => f.write_str("empty topic name without a topic alias"),
            AuthBeforeV5 => f.write_str("AUTH packet before MQTT 5.0"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// Remaining Length above 268,435,455, the largest the fixed header can carry.
    PacketTooLarge {
        /// The remaining length the packet would need.
        remaining_length: usize,
    },
    /// The packet or a field of it does not exist in this protocol version (AUTH
    /// before 5.0, a SUBACK failure code in 3.1, a binary field over 65,535 bytes).
    Unrepresentable(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::PacketTooLarge { remaining_length } => {
                write!(f, "remaining length {remaining_length} exceeds 268435455")
            }
            EncodeError::Unrepresentable(what) => write!(f, "cannot encode: {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}
