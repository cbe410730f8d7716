//! `mqtt-proto`: the MQTT 3.1, 3.1.1 and 5.0 codec of brokk.
//!
//! Bytes in, [`Packet`]s out, and back. One [`Packet`] type serves every protocol
//! version; what only 5.0 has (properties, reason codes) lives in each packet's
//! `properties` and `reason_code` fields, left at their defaults for 3.1 and 3.1.1.
//!
//! What this crate does **not** do: no I/O, no clock, no threads, no async runtime.
//! It never reads from a socket: the caller appends received bytes to a `BytesMut`
//! and asks the [`Decoder`] for packets; "need more bytes" is `Ok(None)`. Encoding
//! appends to a caller-owned `BytesMut`, and [`Packet::encoded_len`] tells the size
//! first, so a peer's Maximum Packet Size can be honoured without encoding twice.
//! With default features off the crate is `#![no_std]` + `alloc`.
//!
//! Topics, strings and payloads of decoded packets are `Bytes` slices of the input
//! buffer: decoding copies nothing, and a message routed to many subscribers is
//! shared until each encoder writes it.
//!
//! Every decode failure is a [`DecodeError`] whose [`DecodeError::reason_code`] is the
//! reason code a 5.0 peer should be sent; each validation rule cites its normative
//! statement from the OASIS specifications (`[MQTT-x.y.z-n]`).
//!
//! ```
//! use bytes::BytesMut;
//! use mqtt_proto::{Decoder, Packet, ProtocolVersion, Publish, QoS, TopicName};
//!
//! // A server-side decoder learns the protocol version from CONNECT.
//! let mut decoder = Decoder::new(1024 * 1024);
//! let mut input = BytesMut::from(
//!     &b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc"[..],
//! );
//! let Some(Packet::Connect(connect)) = decoder.decode(&mut input)? else { panic!() };
//! assert_eq!(connect.protocol, ProtocolVersion::V5);
//! assert_eq!(connect.client_id.as_str(), "abc");
//!
//! // Encoding writes into a caller-owned buffer.
//! let publish = Packet::Publish(Publish {
//!     dup: false,
//!     qos: QoS::AtMostOnce,
//!     retain: false,
//!     topic: TopicName::from_static("a/b")?,
//!     packet_id: None,
//!     properties: Default::default(),
//!     payload: bytes::Bytes::from_static(b"hi"),
//! });
//! let mut out = BytesMut::new();
//! publish.encode(ProtocolVersion::V5, &mut out)?;
//! assert_eq!(out.len(), publish.encoded_len(ProtocolVersion::V5));
//! assert_eq!(&out[..], b"\x30\x08\x00\x03a/b\x00hi");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

extern crate alloc;

mod decode;
mod encode;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod io;
mod packet;
mod properties;
mod reason;
mod string;
mod types;

pub use decode::{decode_packet, Decoder, FixedHeader};
pub use encode::Delivery;
pub use error::{DecodeError, EncodeError};
pub use io::{vbi_len, MAX_VARIABLE_BYTE_INTEGER};
pub use packet::{
    packet_type, Auth, ConnAck, Connect, Disconnect, Packet, PubAck, Publish, SubAck, Subscribe,
    UnsubAck, Unsubscribe, Will,
};
pub use properties::{
    id as property_id, AckProperties, AuthProperties, ConnAckProperties, ConnectProperties,
    DisconnectProperties, PayloadFormat, PublishProperties, SubscribeProperties,
    UnsubscribeProperties, UserProperties, UserPropertiesIter, WillProperties,
};
pub use reason::{ReasonCode, ReasonContext};
pub use string::{split_levels, MqttString, StringError, TopicFilter, TopicName};
pub use types::{PacketId, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};

pub use bytes;
