//! Streaming decoder: bytes in a `BytesMut` -> `Packet`s.

use alloc::boxed::Box;
use alloc::vec::Vec;
use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::io::{decode_vbi, Reader};
use crate::packet::*;
use crate::properties::*;
use crate::reason::{ReasonCode, ReasonContext};
use crate::types::{PacketId, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};

/// The fixed header of a packet [MQTT-2.1.1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Byte 1: packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// Remaining Length: bytes after the fixed header.
    pub remaining_length: u32,
    /// Bytes the fixed header itself takes (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    /// Packet type number.
    pub fn packet_type(&self) -> u8 {
        self.first_byte >> 4
    }

    /// Size of the whole packet.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_length as usize
    }

    /// Reads a fixed header from the start of `buf`; `Ok(None)` if more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
        let Some(&first_byte) = buf.first() else {
            return Ok(None);
        };
        match decode_vbi(&buf[1..])? {
            None => Ok(None),
            Some((remaining_length, n)) => Ok(Some(FixedHeader {
                first_byte,
                remaining_length,
                header_len: 1 + n,
            })),
        }
    }
}

/// A streaming decoder for one connection.
///
/// Feed it the connection's read buffer; each call to [`Decoder::decode`] removes one
/// complete packet from the front, or returns `Ok(None)` when more bytes are needed
/// (a packet arriving one byte at a time decodes the same as one arriving whole).
/// A server-side decoder starts without a version and learns it from CONNECT, so one
/// listener serves every protocol version. After an `Err` the connection must be
/// closed; the decoder does not resynchronise.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
}

impl Decoder {
    /// A decoder whose first packet must be CONNECT [MQTT-3.1.0-1].
    pub fn new(max_packet_size: u32) -> Self {
        Decoder {
            version: None,
            max_packet_size,
        }
    }

    /// A decoder for a known version (client side, or tests).
    pub fn with_version(version: ProtocolVersion, max_packet_size: u32) -> Self {
        Decoder {
            version: Some(version),
            max_packet_size,
        }
    }

    /// The version learned from CONNECT, if any.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The Maximum Packet Size enforced on input.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Changes the Maximum Packet Size enforced on input.
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Takes one packet off the front of `buf`.
    ///
    /// The Maximum Packet Size is checked from the fixed header, before the body is
    /// buffered, so an oversized packet is refused without reading it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        if self.version.is_none() {
            if let Some(&b) = buf.first() {
                if b >> 4 != packet_type::CONNECT {
                    return Err(DecodeError::FirstPacketNotConnect);
                }
            }
        }
        let Some(header) = FixedHeader::parse(buf)? else {
            return Ok(None);
        };
        let size = header.packet_len();
        if size > self.max_packet_size as usize {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        if buf.len() < size {
            return Ok(None);
        }
        // The short acknowledgement (packet id only, [MQTT-3.4.2.1]), a subscriber's
        // half of every QoS 1/2 delivery: read in place, without taking a reference
        // to the read buffer. Anything unusual (wrong flags, id 0) takes the full
        // path below, which reports it.
        if let (true, Some(_), Some(&first), Some(&[hi, lo])) = (
            size == header.header_len + 2,
            self.version,
            buf.first(),
            buf.get(header.header_len..size),
        ) {
            let ack = PacketId::new(u16::from_be_bytes([hi, lo])).map(PubAck::new);
            let packet = match (first, ack) {
                (0x40, Some(a)) => Some(Packet::PubAck(a)),
                (0x50, Some(a)) => Some(Packet::PubRec(a)),
                (0x62, Some(a)) => Some(Packet::PubRel(a)),
                (0x70, Some(a)) => Some(Packet::PubComp(a)),
                _ => None,
            };
            if packet.is_some() {
                buf.advance(size);
                return Ok(packet);
            }
        }
        // One reference to the read buffer for the whole packet; the fields are
        // slices of it (and a PUBLISH payload takes this reference over).
        let frame = buf.split_to(size).freeze();
        if let (packet_type::PUBLISH, Some(v)) = (header.packet_type(), self.version) {
            // The hot path returns what `decode_publish` built, where it built it: a
            // `Packet` is a few hundred bytes, and every move of one is a memcpy.
            return decode_publish(frame, header.header_len, v.is_v5());
        }
        let packet = decode_frame(self.version, frame, header.header_len)?;
        if let Packet::Connect(c) = &packet {
            if self.version.is_none() {
                self.version = Some(c.protocol);
            }
        }
        Ok(Some(packet))
    }
}

/// Decodes one complete packet (fixed header included) from `bytes`.
///
/// `version` is the connection's version; `None` accepts only CONNECT.
pub fn decode_packet(
    version: Option<ProtocolVersion>,
    bytes: Bytes,
) -> Result<Packet, DecodeError> {
    let header = FixedHeader::parse(&bytes)?.ok_or(DecodeError::UnexpectedEnd)?;
    if bytes.len() < header.packet_len() {
        return Err(DecodeError::UnexpectedEnd);
    }
    if bytes.len() > header.packet_len() {
        return Err(DecodeError::TrailingBytes);
    }
    decode_frame(version, bytes, header.header_len)
}

/// Decodes one whole packet, `frame`, whose body starts at `body_start`.
fn decode_frame(
    version: Option<ProtocolVersion>,
    frame: Bytes,
    body_start: usize,
) -> Result<Packet, DecodeError> {
    let first_byte = frame[0];
    let ptype = first_byte >> 4;
    let flags = first_byte & 0x0F;
    if let (packet_type::PUBLISH, Some(v)) = (ptype, version) {
        // `decode_publish` never returns `Ok(None)`.
        return decode_publish(frame, body_start, v.is_v5())?.ok_or(DecodeError::UnexpectedEnd);
    }
    let mut r = Reader::new(&frame, body_start);
    // Before CONNECT the version is unknown and only CONNECT may arrive
    // [MQTT-3.1.0-1]; CONNECT itself names its version, so it decodes alike either way.
    if ptype == packet_type::CONNECT {
        let connect = decode_connect(&mut r)?;
        // [MQTT-2.2.2-2] the fixed header's flags are 0000. MQTT 3.1 had no such rule
        // and real 3.1 clients set them: accepted at level 3, as Mosquitto does.
        if connect.protocol != ProtocolVersion::V3_1 {
            check_flags(ptype, flags, 0)?;
        }
        r.expect_end()?;
        return Ok(Packet::Connect(Box::new(connect)));
    }
    let Some(v) = version else {
        return Err(DecodeError::FirstPacketNotConnect);
    };
    let v5 = v.is_v5();
    use packet_type::*;
    let packet = match ptype {
        CONNACK => {
            check_flags(ptype, flags, 0)?;
            Packet::ConnAck(Box::new(decode_connack(&mut r, v)?))
        }
        PUBACK => {
            check_flags(ptype, flags, 0)?;
            Packet::PubAck(decode_puback(&mut r, v5, ReasonContext::PubAckOrPubRec)?)
        }
        PUBREC => {
            check_flags(ptype, flags, 0)?;
            Packet::PubRec(decode_puback(&mut r, v5, ReasonContext::PubAckOrPubRec)?)
        }
        // [MQTT-3.6.1-1] PUBREL, SUBSCRIBE and UNSUBSCRIBE carry flags 0010.
        PUBREL => {
            check_flags(ptype, flags, 0b0010)?;
            Packet::PubRel(decode_puback(&mut r, v5, ReasonContext::PubRelOrPubComp)?)
        }
        PUBCOMP => {
            check_flags(ptype, flags, 0)?;
            Packet::PubComp(decode_puback(&mut r, v5, ReasonContext::PubRelOrPubComp)?)
        }
        SUBSCRIBE => {
            check_flags(ptype, flags, 0b0010)?;
            Packet::Subscribe(decode_subscribe(&mut r, v5)?)
        }
        SUBACK => {
            check_flags(ptype, flags, 0)?;
            Packet::SubAck(decode_suback(&mut r, v)?)
        }
        UNSUBSCRIBE => {
            check_flags(ptype, flags, 0b0010)?;
            Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?)
        }
        UNSUBACK => {
            check_flags(ptype, flags, 0)?;
            Packet::UnsubAck(decode_unsuback(&mut r, v5)?)
        }
        PINGREQ => {
            check_flags(ptype, flags, 0)?;
            Packet::PingReq
        }
        PINGRESP => {
            check_flags(ptype, flags, 0)?;
            Packet::PingResp
        }
        DISCONNECT => {
            check_flags(ptype, flags, 0)?;
            Packet::Disconnect(decode_disconnect(&mut r, v5)?)
        }
        AUTH if v5 => {
            check_flags(ptype, flags, 0)?;
            Packet::Auth(decode_auth(&mut r)?)
        }
        // Type 15 is reserved before 5.0.
        AUTH => return Err(DecodeError::AuthBeforeV5),
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    r.expect_end()?;
    Ok(packet)
}

/// [MQTT-2.1.3-1]: reserved flag bits must be exactly as the table lists.
fn check_flags(packet_type: u8, flags: u8, expected: u8) -> Result<(), DecodeError> {
    if flags == expected {
        Ok(())
    } else {
        Err(DecodeError::InvalidFixedHeaderFlags { packet_type, flags })
    }
}

fn packet_id(r: &mut Reader) -> Result<PacketId, DecodeError> {
    // [MQTT-2.2.1-3] a packet identifier is non-zero.
    PacketId::new(r.u16()?).ok_or(DecodeError::ZeroPacketId)
}

fn reason(r: &mut Reader, ctx: ReasonContext) -> Result<ReasonCode, DecodeError> {
    let b = r.u8()?;
    match ReasonCode::from_u8(b) {
        Some(c) if c.valid_in(ctx) => Ok(c),
        _ => Err(DecodeError::InvalidReasonCode(b)),
    }
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        // [MQTT-3.1.2-2] a known name with an unknown level: CONNACK 0x84 / 0x01.
        (b"MQTT" | b"MQIsdp", l) => return Err(DecodeError::UnsupportedProtocolVersion(l)),
        // [MQTT-3.1.2-1] any other protocol name.
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let flags = r.u8()?;
    // [MQTT-3.1.2-3] the reserved flag is zero. MQTT 3.1 (level 3) had no rule for
    // it and real 3.1 clients set it: ignored there, as Mosquitto does.
    if flags & 0x01 != 0 && protocol != ProtocolVersion::V3_1 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    // [MQTT-3.1.2-11] [MQTT-3.1.2-13] (3.1.1) / [MQTT-3.1.2-11] [MQTT-3.1.2-13] (5.0).
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    // [MQTT-3.1.2-14] (3.1.1) / [MQTT-3.1.2-12] (5.0): Will QoS 3.
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS)?;
    // [MQTT-3.1.2-22] 3.1.1: a password needs a user name. 5.0 allows it alone.
    if password_flag && !username_flag && !protocol.is_v5() {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        ConnectProperties::read(r)?
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string()?;
    // MQTT 3.1 section 3.1: the Client Identifier is 1 to 23 characters.
    if protocol == ProtocolVersion::V3_1 {
        let chars = client_id.as_str().chars().count();
        if chars == 0 || chars > 23 {
            return Err(DecodeError::ClientIdRejected);
        }
    }
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            WillProperties::read(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.topic_name()?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    // [MQTT-3.2.2-1] bits 7-1 of the acknowledge flags are reserved.
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::InvalidFixedHeaderFlags {
            packet_type: packet_type::CONNACK,
            flags: ack_flags,
        });
    }
    let session_present = ack_flags & 1 != 0;
    let code = r.u8()?;
    if !v.is_v5() {
        let reason_code =
            ReasonCode::from_connack_v3_code(code).ok_or(DecodeError::InvalidReasonCode(code))?;
        return Ok(ConnAck {
            session_present,
            reason_code,
            properties: ConnAckProperties::default(),
        });
    }
    let reason_code = match ReasonCode::from_u8(code) {
        Some(c) if c.valid_in(ReasonContext::ConnAck) => c,
        _ => return Err(DecodeError::InvalidReasonCode(code)),
    };
    let properties = ConnAckProperties::read(r)?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

/// Decodes a PUBLISH, `frame`, whose body starts at `body_start`.
///
/// Returns `Ok(Some(_))` or `Err`: the `Option` is the shape [`Decoder::decode`]
/// returns, so that the packet is built once, in the caller's return slot. The payload
/// takes over `frame` instead of adding a reference to it.
fn decode_publish(
    frame: Bytes,
    body_start: usize,
    v5: bool,
) -> Result<Option<Packet>, DecodeError> {
    let flags = frame[0] & 0x0F;
    let r = &mut Reader::new(&frame, body_start);
    let dup = flags & 0b1000 != 0;
    // [MQTT-3.3.1-4] QoS 3 is malformed.
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain = flags & 1 != 0;
    // [MQTT-3.3.1-2] DUP is 0 for QoS 0.
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupWithQoS0);
    }
    let topic = r.topic_name()?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(r)?)
    };
    // Each version's tail ends in one struct expression of locals in the return
    // position, so the compiler writes the packet (nearly) straight into the caller's
    // return slot. A `Packet` is a few hundred bytes: building it in a local, filling
    // it in afterwards, calling a function inside the expression, or sharing one tail
    // between the versions each made the compiler memcpy most of it once or twice
    // more (seen in the disassembly; those copies were a third of the decode time of
    // a small 3.1.1 PUBLISH, whose tail now copies nothing).
    if !v5 {
        // [MQTT-4.7.3-1] a topic name is at least one character.
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
        // The payload is the rest of the packet: the packet's own reference,
        // advanced, which costs no reference-count update.
        let payload_start = r.position();
        let mut payload = frame;
        payload.advance(payload_start);
        return Ok(Some(Packet::Publish(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties: PublishProperties::default(),
            payload,
        })));
    }
    // 5.0: the properties are read into the packet where it will be returned, and
    // every path returns that one value, so it is never copied.
    let mut out = Ok(Some(Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::new(),
    })));
    if let Ok(Some(Packet::Publish(p))) = &mut out {
        if let Err(e) = p.properties.read_from(r) {
            out = Err(e);
        } else if p.topic.is_empty() && p.properties.topic_alias.is_none() {
            // 5.0 allows an empty topic name only with a Topic Alias [MQTT-3.3.2-1].
            out = Err(DecodeError::EmptyTopicWithoutAlias);
        } else {
            let payload_start = r.position();
            p.payload = frame;
            p.payload.advance(payload_start);
        }
    }
    out
}

fn decode_puback(r: &mut Reader, v5: bool, ctx: ReasonContext) -> Result<PubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut ack = PubAck::new(packet_id);
    // [MQTT-3.4.2.1] a Remaining Length of 2 means Success and no properties.
    if v5 && r.remaining() > 0 {
        ack.reason_code = reason(r, ctx)?;
        if r.remaining() > 0 {
            ack.properties = AckProperties::read(r)?;
        }
    }
    Ok(ack)
}

/// How many complete entries (a non-empty length-prefixed topic filter followed by
/// `trailer` bytes) the payload of a SUBSCRIBE or UNSUBSCRIBE starts with: the
/// capacity of its filter list. Walking the length prefixes is cheaper than growing
/// the list, and it bounds what a hostile payload can make the decoder allocate to
/// one element per 3 (UNSUBSCRIBE) or 4 (SUBSCRIBE) bytes of input: an empty filter
/// is invalid and a truncated entry is not counted.
fn count_entries(payload: &[u8], trailer: usize) -> usize {
    let mut n = 0;
    let mut rest = payload;
    while let [hi, lo, ..] = *rest {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(after) = rest.get(2 + len + trailer..) else {
            break;
        };
        if len == 0 {
            break;
        }
        n += 1;
        rest = after;
    }
    n
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        SubscribeProperties::read(r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::with_capacity(count_entries(r.rest_slice(), 1));
    while r.remaining() > 0 {
        let filter = r.topic_filter()?;
        let b = r.u8()?;
        let qos = QoS::from_u8(b & 0b11).ok_or(DecodeError::InvalidQoS)?;
        let options = if v5 {
            // [MQTT-3.8.3-5] bits 6 and 7 are reserved: malformed; Retain Handling 3
            // is a protocol error (3.8.3.1).
            if b & 0xC0 != 0 {
                return Err(DecodeError::InvalidSubscriptionOptions);
            }
            let retain_handling = match (b >> 4) & 0b11 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(DecodeError::InvalidRetainHandling),
            };
            let no_local = b & 0b100 != 0;
            // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
            if no_local && filter.shared().is_some() {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: b & 0b1000 != 0,
                retain_handling,
            }
        } else {
            // [MQTT-3.8.3-4] (3.1.1): the upper six bits are zero.
            if b & 0xFC != 0 {
                return Err(DecodeError::InvalidSubscriptionOptions);
            }
            SubscriptionOptions::qos(qos)
        };
        filters.push((filter, options));
    }
    // [MQTT-3.8.3-3] at least one topic filter.
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_suback(r: &mut Reader, v: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v.is_v5() {
        AckProperties::read(r)?
    } else {
        AckProperties::default()
    };
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        let code = if v.is_v5() {
            reason(r, ReasonContext::SubAck)?
        } else {
            let b = r.u8()?;
            match b {
                0 => ReasonCode::Success,
                1 => ReasonCode::GrantedQoS1,
                2 => ReasonCode::GrantedQoS2,
                // 3.1 has no failure return code.
                0x80 if v == ProtocolVersion::V3_1_1 => ReasonCode::UnspecifiedError,
                _ => return Err(DecodeError::InvalidReasonCode(b)),
            }
        };
        reason_codes.push(code);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        UnsubscribeProperties::read(r)?
    } else {
        UnsubscribeProperties::default()
    };
    let mut filters = Vec::with_capacity(count_entries(r.rest_slice(), 0));
    while r.remaining() > 0 {
        filters.push(r.topic_filter()?);
    }
    // [MQTT-3.10.3-2] at least one topic filter.
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            reason_codes: Vec::new(),
            properties: AckProperties::default(),
        });
    }
    let properties = AckProperties::read(r)?;
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        reason_codes.push(reason(r, ReasonContext::UnsubAck)?);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::new(ReasonCode::Success);
    // [MQTT-3.14.2.1] no reason code means 0x00 Normal disconnection.
    if v5 && r.remaining() > 0 {
        d.reason_code = reason(r, ReasonContext::Disconnect)?;
        if r.remaining() > 0 {
            d.properties = DisconnectProperties::read(r)?;
        }
    }
    Ok(d)
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth {
        reason_code: ReasonCode::Success,
        properties: AuthProperties::default(),
    };
    // [MQTT-3.15.2.1] Remaining Length 0 means Success and no properties.
    if r.remaining() > 0 {
        a.reason_code = reason(r, ReasonContext::Auth)?;
        if r.remaining() > 0 {
            a.properties = AuthProperties::read(r)?;
        }
    }
    Ok(a)
}
