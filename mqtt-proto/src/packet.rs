//! The control packets. One `Packet` type serves 3.1, 3.1.1 and 5.0; what exists
//! only in 5.0 sits in each packet's `properties` (and reason codes), which stay at
//! their defaults for older versions and are not written for them.

use alloc::boxed::Box;
use alloc::vec::Vec;
use bytes::Bytes;

use crate::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};
use crate::reason::ReasonCode;
use crate::string::{MqttString, TopicFilter, TopicName};
use crate::types::{PacketId, ProtocolVersion, QoS, SubscriptionOptions};

/// Packet type numbers of the fixed header [MQTT-2.1.2].
#[allow(missing_docs)]
pub mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Packet {
    /// Boxed, as is CONNACK: they come once per connection and are the largest
    /// packets, so that every other `Packet` (a PUBLISH waiting in a queue) stays
    /// small.
    Connect(Box<Connect>),
    /// Boxed (see `Connect`).
    ConnAck(Box<ConnAck>),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// 5.0 only.
    Auth(Auth),
}

impl Packet {
    /// The packet type number of the fixed header.
    pub fn packet_type(&self) -> u8 {
        use packet_type::*;
        match self {
            Packet::Connect(_) => CONNECT,
            Packet::ConnAck(_) => CONNACK,
            Packet::Publish(_) => PUBLISH,
            Packet::PubAck(_) => PUBACK,
            Packet::PubRec(_) => PUBREC,
            Packet::PubRel(_) => PUBREL,
            Packet::PubComp(_) => PUBCOMP,
            Packet::Subscribe(_) => SUBSCRIBE,
            Packet::SubAck(_) => SUBACK,
            Packet::Unsubscribe(_) => UNSUBSCRIBE,
            Packet::UnsubAck(_) => UNSUBACK,
            Packet::PingReq => PINGREQ,
            Packet::PingResp => PINGRESP,
            Packet::Disconnect(_) => DISCONNECT,
            Packet::Auth(_) => AUTH,
        }
    }

    /// The packet's name as the specification writes it, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT [MQTT-3.1].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol name and level.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// Client Identifier; may be empty in 3.1.1 and 5.0.
    pub client_id: MqttString,
    /// Last will.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<MqttString>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// 5.0 properties.
    pub properties: ConnectProperties,
}

/// The last will of a CONNECT [MQTT-3.1.2.5].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will Topic.
    pub topic: TopicName,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// 5.0 will properties.
    pub properties: WillProperties,
}

/// CONNACK [MQTT-3.2].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// 5.0 reason code; for 3.1.1 the return code maps to and from the nearest
    /// (see [`ReasonCode::connack_v3_code`]).
    pub reason_code: ReasonCode,
    /// 5.0 properties.
    pub properties: ConnAckProperties,
}

/// PUBLISH [MQTT-3.3].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this may be a redelivery [MQTT-3.3.1-1].
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name; empty only in 5.0 with a Topic Alias.
    pub topic: TopicName,
    /// Present exactly when QoS > 0.
    pub packet_id: Option<PacketId>,
    /// 5.0 properties.
    pub properties: PublishProperties,
    /// Application message, a slice of the received buffer.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape [MQTT-3.4] - [MQTT-3.7].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// 5.0 reason code (Success for 3.1.1).
    pub reason_code: ReasonCode,
    /// 5.0 properties.
    pub properties: AckProperties,
}

impl PubAck {
    /// A success acknowledgement without properties.
    pub fn new(packet_id: PacketId) -> Self {
        PubAck {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }
}

/// SUBSCRIBE [MQTT-3.8].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// Topic filters and their options, in order; never empty [MQTT-3.8.3-3].
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    /// 5.0 properties.
    pub properties: SubscribeProperties,
}

/// SUBACK [MQTT-3.9].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// One per filter, in order: Granted QoS 0/1/2 or a failure (3.1.1: 0x80).
    pub reason_codes: Vec<ReasonCode>,
    /// 5.0 properties.
    pub properties: AckProperties,
}

/// UNSUBSCRIBE [MQTT-3.10].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// Topic filters; never empty [MQTT-3.10.3-2].
    pub filters: Vec<TopicFilter>,
    /// 5.0 properties.
    pub properties: UnsubscribeProperties,
}

/// UNSUBACK [MQTT-3.11].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// 5.0: one per filter, in order. Empty for 3.1.1, which has no payload.
    pub reason_codes: Vec<ReasonCode>,
    /// 5.0 properties.
    pub properties: AckProperties,
}

/// DISCONNECT [MQTT-3.14].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// 5.0 reason code (Normal disconnection = Success for 3.1.1).
    pub reason_code: ReasonCode,
    /// 5.0 properties.
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with a reason code and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Disconnect {
            reason_code,
            properties: DisconnectProperties::default(),
        }
    }
}

/// AUTH [MQTT-3.15], 5.0 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}
