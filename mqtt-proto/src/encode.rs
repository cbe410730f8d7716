//! Encoder: `Packet` -> bytes in a caller-owned `BytesMut`.
//!
//! `encoded_len` and `encode` run the same writer (once into a counter, once into the
//! buffer), so the length is exact by construction. 5.0-only fields are not written
//! for 3.1 and 3.1.1.

use bytes::BytesMut;
use core::num::{NonZeroU16, NonZeroU32};

use crate::error::EncodeError;
use crate::io::{vbi_len, Counter, Sink, MAX_VARIABLE_BYTE_INTEGER};
use crate::packet::*;
use crate::properties::{write_block, DeliveredProperties};
use crate::reason::ReasonCode;
use crate::types::{PacketId, ProtocolVersion, QoS};

impl Packet {
    /// Bytes this packet takes on the wire at `version`, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let body = self.body_len(version);
        1 + vbi_len(body.min(MAX_VARIABLE_BYTE_INTEGER as usize) as u32) + body
    }

    /// Appends the packet, encoded for `version`, to `buf`.
    ///
    /// On error nothing is written.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.check(version)?;
        frame(self.first_byte(), self.body_len(version), buf, |buf| {
            self.write_body(version, buf)
        })
    }

    fn first_byte(&self) -> u8 {
        let flags = match self {
            Packet::Publish(p) => flags(&p.as_delivery()),
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
            _ => 0,
        };
        (self.packet_type() << 4) | flags
    }

    fn body_len(&self, v: ProtocolVersion) -> usize {
        let mut c = Counter::default();
        self.write_body(v, &mut c);
        c.0
    }

    /// Fields the wire format cannot carry at this version.
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        let too_long = |b: Option<&[u8]>| b.is_some_and(|b| b.len() > u16::MAX as usize);
        // A Subscription Identifier is a Variable Byte Integer [MQTT-3.3.2.3.8].
        let too_big = |id: NonZeroU32| id.get() > MAX_VARIABLE_BYTE_INTEGER;
        match self {
            Packet::Connect(c) => {
                if too_long(c.password.as_deref())
                    || too_long(c.properties.authentication_data.as_deref())
                {
                    return Err(EncodeError::Unrepresentable(BIN));
                }
                if let Some(w) = &c.will {
                    if too_long(Some(&w.payload))
                        || too_long(w.properties.correlation_data.as_deref())
                    {
                        return Err(EncodeError::Unrepresentable(BIN));
                    }
                }
                if c.password.is_some() && c.username.is_none() && !c.protocol.is_v5() {
                    return Err(EncodeError::Unrepresentable(
                        "a password without a user name before 5.0",
                    ));
                }
            }
            Packet::Publish(p) => return p.check(&p.as_delivery()),
            Packet::ConnAck(c) if too_long(c.properties.authentication_data.as_deref()) => {
                return Err(EncodeError::Unrepresentable(BIN));
            }
            Packet::Auth(a) => {
                if !v.is_v5() {
                    return Err(EncodeError::Unrepresentable("AUTH before 5.0"));
                }
                if too_long(a.properties.authentication_data.as_deref()) {
                    return Err(EncodeError::Unrepresentable(BIN));
                }
            }
            Packet::Subscribe(s) if s.properties.subscription_identifier.is_some_and(too_big) => {
                return Err(EncodeError::Unrepresentable(SUB_ID));
            }
            // 3.1 has only the granted QoS codes: no failure code, and a 5.0 success code
            // such as 0x10 has no 3.1 form either.
            Packet::SubAck(s)
                if v == ProtocolVersion::V3_1
                    && s.reason_codes.iter().any(|c| suback_v3_code(*c) == 0x80) =>
            {
                return Err(EncodeError::Unrepresentable("a SUBACK failure in MQTT 3.1"));
            }
            _ => {}
        }
        Ok(())
    }

    fn write_body<S: Sink>(&self, v: ProtocolVersion, s: &mut S) {
        let v5 = v.is_v5();
        match self {
            Packet::Connect(c) => write_connect(c, s),
            Packet::ConnAck(c) => {
                s.put_u8(u8::from(c.session_present));
                if v5 {
                    s.put_u8(c.reason_code.as_u8());
                    write_block(s, &c.properties);
                } else {
                    s.put_u8(c.reason_code.connack_v3_code());
                }
            }
            Packet::Publish(p) => p.write_body(v, &p.as_delivery(), s),
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                s.put_u16(a.packet_id.get());
                // [MQTT-3.4.2.1] Success without properties is sent as the short form.
                if v5 && (a.reason_code != ReasonCode::Success || !a.properties.is_empty()) {
                    s.put_u8(a.reason_code.as_u8());
                    if !a.properties.is_empty() {
                        write_block(s, &a.properties);
                    }
                }
            }
            Packet::Subscribe(sub) => {
                s.put_u16(sub.packet_id.get());
                if v5 {
                    write_block(s, &sub.properties);
                }
                for (filter, options) in &sub.filters {
                    s.put_lp(filter.as_bytes());
                    s.put_u8(if v5 {
                        options.to_byte()
                    } else {
                        options.qos.as_u8()
                    });
                }
            }
            Packet::SubAck(a) => {
                s.put_u16(a.packet_id.get());
                if v5 {
                    write_block(s, &a.properties);
                }
                for code in &a.reason_codes {
                    s.put_u8(if v5 {
                        code.as_u8()
                    } else {
                        suback_v3_code(*code)
                    });
                }
            }
            Packet::Unsubscribe(u) => {
                s.put_u16(u.packet_id.get());
                if v5 {
                    write_block(s, &u.properties);
                }
                for filter in &u.filters {
                    s.put_lp(filter.as_bytes());
                }
            }
            Packet::UnsubAck(a) => {
                s.put_u16(a.packet_id.get());
                if v5 {
                    write_block(s, &a.properties);
                    for code in &a.reason_codes {
                        s.put_u8(code.as_u8());
                    }
                }
            }
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(d) => {
                // [MQTT-3.14.2.1] Normal disconnection without properties: no body.
                if v5 && (d.reason_code != ReasonCode::Success || !d.properties.is_empty()) {
                    s.put_u8(d.reason_code.as_u8());
                    if !d.properties.is_empty() {
                        write_block(s, &d.properties);
                    }
                }
            }
            Packet::Auth(a) => {
                // [MQTT-3.15.2.1] Success without properties: Remaining Length 0.
                if v5 && (a.reason_code != ReasonCode::Success || !a.properties.is_empty()) {
                    s.put_u8(a.reason_code.as_u8());
                    write_block(s, &a.properties);
                }
            }
        }
    }
}

/// Appends a fixed header (`first_byte`, Remaining Length `body`) and the body that
/// `write` puts, or nothing if the body is too long for a Remaining Length.
fn frame(
    first_byte: u8,
    body: usize,
    buf: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut),
) -> Result<(), EncodeError> {
    if body > MAX_VARIABLE_BYTE_INTEGER as usize {
        return Err(EncodeError::PacketTooLarge {
            remaining_length: body,
        });
    }
    buf.reserve(1 + vbi_len(body as u32) + body);
    buf.put_u8(first_byte);
    buf.put_vbi(body as u32);
    write(buf);
    Ok(())
}

const BIN: &str = "binary data longer than 65535 bytes";

/// The fixed header flags of a PUBLISH as delivered with `d` [MQTT-3.3.1].
fn flags(d: &Delivery<'_>) -> u8 {
    (u8::from(d.dup) << 3) | (d.qos.as_u8() << 1) | u8::from(d.retain)
}
const SUB_ID: &str = "a subscription identifier above 268435455";

/// What a broker sets per receiver when it forwards a stored message: the fields of
/// the PUBLISH that differ from one delivery to the next. [`Publish::encode_for`]
/// writes the message with these in place of its own, so one stored `Publish` can
/// be sent to many receivers without a copy per receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// DUP [MQTT-3.3.1-1].
    pub dup: bool,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN of this delivery.
    pub retain: bool,
    /// Present exactly when `qos` is above 0.
    pub packet_id: Option<PacketId>,
    /// The Message Expiry Interval to send (the time left), instead of the message's.
    pub message_expiry_interval: Option<u32>,
    /// Subscription Identifiers to send, instead of the message's.
    pub subscription_identifiers: &'a [NonZeroU32],
    /// Topic Alias to send, instead of the message's.
    pub topic_alias: Option<NonZeroU16>,
    /// Send an empty Topic Name (the alias stands for it) [MQTT-3.3.2-12].
    pub omit_topic: bool,
}

impl Publish {
    /// The delivery this PUBLISH describes by itself: its own flags and fields.
    pub fn as_delivery(&self) -> Delivery<'_> {
        Delivery {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            packet_id: self.packet_id,
            message_expiry_interval: self.properties.message_expiry_interval,
            subscription_identifiers: &self.properties.subscription_identifiers,
            topic_alias: self.properties.topic_alias,
            omit_topic: false,
        }
    }

    /// Bytes this PUBLISH takes on the wire at `version`, as
    /// [`Packet::encoded_len`] of `Packet::Publish` (without moving it into one).
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        self.encoded_len_for(version, &self.as_delivery())
    }

    /// Bytes [`Publish::encode_for`] writes.
    pub fn encoded_len_for(&self, version: ProtocolVersion, d: &Delivery<'_>) -> usize {
        let mut c = Counter::default();
        self.write_body(version, d, &mut c);
        1 + vbi_len(c.0.min(MAX_VARIABLE_BYTE_INTEGER as usize) as u32) + c.0
    }

    /// Appends this PUBLISH, as [`Packet::encode`] of `Packet::Publish` would.
    ///
    /// On error nothing is written.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_for(version, &self.as_delivery(), buf)
    }

    /// Appends this message as delivered with `d`: topic, payload and the other
    /// properties are the message's, the fields of `d` replace its own.
    ///
    /// On error nothing is written.
    pub fn encode_for(
        &self,
        version: ProtocolVersion,
        d: &Delivery<'_>,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.check(d)?;
        let mut c = Counter::default();
        self.write_body(version, d, &mut c);
        frame(flags(d) | (3 << 4), c.0, buf, |buf| {
            self.write_body(version, d, buf)
        })
    }

    fn check(&self, d: &Delivery<'_>) -> Result<(), EncodeError> {
        if self
            .properties
            .correlation_data
            .as_deref()
            .is_some_and(|b| b.len() > u16::MAX as usize)
        {
            return Err(EncodeError::Unrepresentable(BIN));
        }
        // A Subscription Identifier is a Variable Byte Integer [MQTT-3.3.2.3.8].
        if d.subscription_identifiers
            .iter()
            .any(|id| id.get() > MAX_VARIABLE_BYTE_INTEGER)
        {
            return Err(EncodeError::Unrepresentable(SUB_ID));
        }
        if (d.qos == QoS::AtMostOnce) != d.packet_id.is_none() {
            return Err(EncodeError::Unrepresentable(
                "a PUBLISH has a packet identifier exactly when its QoS is above 0",
            ));
        }
        Ok(())
    }

    fn write_body<S: Sink>(&self, v: ProtocolVersion, d: &Delivery<'_>, s: &mut S) {
        s.put_lp(if d.omit_topic {
            &[]
        } else {
            self.topic.as_bytes()
        });
        if d.qos != QoS::AtMostOnce {
            s.put_u16(d.packet_id.map_or(0, |id| id.get()));
        }
        if v.is_v5() {
            write_block(
                s,
                &DeliveredProperties {
                    p: &self.properties,
                    d,
                },
            );
        }
        s.put_slice(&self.payload);
    }
}

fn suback_v3_code(code: ReasonCode) -> u8 {
    match code {
        ReasonCode::Success => 0x00,
        ReasonCode::GrantedQoS1 => 0x01,
        ReasonCode::GrantedQoS2 => 0x02,
        _ => 0x80,
    }
}

fn write_connect<S: Sink>(c: &Connect, s: &mut S) {
    let v5 = c.protocol.is_v5();
    s.put_lp(c.protocol.protocol_name());
    s.put_u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos.as_u8() << 3) | (u8::from(w.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    if v5 {
        write_block(s, &c.properties);
    }
    s.put_lp(c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            write_block(s, &w.properties);
        }
        s.put_lp(w.topic.as_bytes());
        s.put_lp(&w.payload);
    }
    if let Some(u) = &c.username {
        s.put_lp(u.as_bytes());
    }
    if let Some(p) = &c.password {
        s.put_lp(p);
    }
}
