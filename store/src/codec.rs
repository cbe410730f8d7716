//! The record format: a compact, versioned binary encoding of what the broker stores.
//!
//! Every value starts with [`FORMAT_VERSION`]. Integers are LEB128 varints unless a
//! fixed width is stated; byte strings are a varint length and the bytes. A message
//! ([`StoredMessage`]) is a flags byte, the fields PUBLISH cannot carry for a stored
//! message (its own packet id, its wall-clock expiry), and the PUBLISH itself as an
//! MQTT 5.0 packet written by `mqtt-proto` (so topic, payload and every property,
//! user properties and subscription identifiers included, use the wire codec).
//!
//! The PUBLISH is always written as QoS 1 with packet id 1, DUP and RETAIN clear,
//! whatever the message has: the real DUP, QoS, RETAIN and packet id live in the
//! flags byte. That keeps every stored `Publish` representable (the wire format
//! refuses DUP on QoS 0, and needs a packet id exactly when QoS > 0) and makes the
//! round trip exact. An empty topic without a Topic Alias (which 5.0 refuses to
//! decode) is written with a placeholder alias, flagged and removed on decode.

use core::num::{NonZeroU16, NonZeroU32};

use broker_state::{SessionRecord, StoredMessage, StoredWill};
use bytes::{BufMut, Bytes, BytesMut};
use mqtt_proto::{
    decode_packet, Delivery, MqttString, Packet, PacketId, ProtocolVersion, QoS, RetainHandling,
    SubscriptionOptions, TopicFilter,
};

/// The version byte every value starts with, and the `meta` table's format version.
pub const FORMAT_VERSION: u8 = 1;

/// Why a record did not decode (the caller adds table and key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord(pub String);

impl BadRecord {
    fn new(s: impl Into<String>) -> Self {
        BadRecord(s.into())
    }
}

impl core::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a value cannot be stored (it has no wire form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unencodable(pub String);

// ---- primitives -------------------------------------------------------------------

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_lp(out: &mut BytesMut, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}

/// A cursor over a value copied into one shared buffer, so that the strings and
/// payloads decoded from it are slices of it, not copies.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    fn u8(&mut self, what: &str) -> Result<u8, BadRecord> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| BadRecord(format!("ends before {what}")))?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self, what: &str) -> Result<u16, BadRecord> {
        let hi = self.u8(what)?;
        let lo = self.u8(what)?;
        Ok(u16::from_be_bytes([hi, lo]))
    }

    fn varint(&mut self, what: &str) -> Result<u64, BadRecord> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7F);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BadRecord(format!("{what}: integer out of range")))
    }

    fn u32(&mut self, what: &str) -> Result<u32, BadRecord> {
        u32::try_from(self.varint(what)?)
            .map_err(|_| BadRecord(format!("{what}: integer out of range")))
    }

    fn bytes(&mut self, what: &str) -> Result<Bytes, BadRecord> {
        let len = self.varint(what)?;
        let len = usize::try_from(len).map_err(|_| BadRecord(format!("{what}: too long")))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| BadRecord(format!("{what}: length runs past the end")))?;
        let b = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(b)
    }

    fn version(&mut self) -> Result<(), BadRecord> {
        let v = self.u8("the format version")?;
        if v != FORMAT_VERSION {
            return Err(BadRecord(format!(
                "unknown record format version {v} (this brokk reads version {FORMAT_VERSION})"
            )));
        }
        Ok(())
    }

    fn end(&self) -> Result<(), BadRecord> {
        if self.pos != self.buf.len() {
            return Err(BadRecord(format!(
                "{} unexpected bytes after the record",
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}

// ---- messages ---------------------------------------------------------------------

const M_DUP: u8 = 1 << 0;
const M_QOS_SHIFT: u8 = 1;
const M_QOS_MASK: u8 = 0b11 << M_QOS_SHIFT;
const M_RETAIN: u8 = 1 << 3;
const M_PACKET_ID: u8 = 1 << 4;
const M_EXPIRES: u8 = 1 << 5;
const M_ALIAS_PLACEHOLDER: u8 = 1 << 6;
const M_KNOWN: u8 = M_DUP | M_QOS_MASK | M_RETAIN | M_PACKET_ID | M_EXPIRES | M_ALIAS_PLACEHOLDER;

const PLACEHOLDER_ID: PacketId = match NonZeroU16::new(1) {
    Some(id) => id,
    None => unreachable!(),
};

fn put_message(out: &mut BytesMut, m: &StoredMessage) -> Result<(), Unencodable> {
    let p = &m.publish;
    let placeholder_alias = p.topic.is_empty() && p.properties.topic_alias.is_none();
    let mut flags = (p.qos.as_u8() << M_QOS_SHIFT) & M_QOS_MASK;
    if p.dup {
        flags |= M_DUP;
    }
    if p.retain {
        flags |= M_RETAIN;
    }
    if p.packet_id.is_some() {
        flags |= M_PACKET_ID;
    }
    if m.expires_at_unix_ms.is_some() {
        flags |= M_EXPIRES;
    }
    if placeholder_alias {
        flags |= M_ALIAS_PLACEHOLDER;
    }
    out.put_u8(flags);
    if let Some(id) = p.packet_id {
        out.put_u16(id.get());
    }
    if let Some(t) = m.expires_at_unix_ms {
        put_varint(out, t);
    }
    let delivery = Delivery {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        packet_id: Some(PLACEHOLDER_ID),
        message_expiry_interval: p.properties.message_expiry_interval,
        subscription_identifiers: &p.properties.subscription_identifiers,
        topic_alias: if placeholder_alias {
            Some(PLACEHOLDER_ID)
        } else {
            p.properties.topic_alias
        },
        omit_topic: false,
    };
    let len = p.encoded_len_for(ProtocolVersion::V5, &delivery);
    put_varint(out, len as u64);
    let before = out.len();
    p.encode_for(ProtocolVersion::V5, &delivery, out)
        .map_err(|e| Unencodable(format!("the message has no MQTT 5.0 form: {e}")))?;
    if out.len() - before != len {
        return Err(Unencodable(
            "the PUBLISH encoder wrote an unexpected length".into(),
        ));
    }
    Ok(())
}

fn read_message(r: &mut Reader) -> Result<StoredMessage, BadRecord> {
    let flags = r.u8("the message flags")?;
    if flags & !M_KNOWN != 0 {
        return Err(BadRecord::new(format!(
            "unknown message flags {flags:#04x}"
        )));
    }
    let qos = QoS::from_u8((flags & M_QOS_MASK) >> M_QOS_SHIFT)
        .ok_or_else(|| BadRecord::new("message QoS 3"))?;
    let packet_id = if flags & M_PACKET_ID != 0 {
        Some(
            NonZeroU16::new(r.u16("the packet id")?)
                .ok_or_else(|| BadRecord::new("packet id 0"))?,
        )
    } else {
        None
    };
    let expires_at_unix_ms = if flags & M_EXPIRES != 0 {
        Some(r.varint("the expiry time")?)
    } else {
        None
    };
    let packet = r.bytes("the PUBLISH")?;
    let mut publish = match decode_packet(Some(ProtocolVersion::V5), packet) {
        Ok(Packet::Publish(p)) => p,
        Ok(other) => {
            return Err(BadRecord(format!(
                "holds a {} packet where a PUBLISH belongs",
                other.name()
            )))
        }
        Err(e) => return Err(BadRecord(format!("the PUBLISH does not decode: {e}"))),
    };
    if publish.qos != QoS::AtLeastOnce || publish.packet_id != Some(PLACEHOLDER_ID) {
        return Err(BadRecord::new("the PUBLISH is not in the stored form"));
    }
    if flags & M_ALIAS_PLACEHOLDER != 0 {
        if !publish.topic.is_empty() || publish.properties.topic_alias != Some(PLACEHOLDER_ID) {
            return Err(BadRecord::new(
                "placeholder topic alias flag on a PUBLISH with a topic",
            ));
        }
        publish.properties.topic_alias = None;
    }
    publish.dup = flags & M_DUP != 0;
    publish.qos = qos;
    publish.retain = flags & M_RETAIN != 0;
    publish.packet_id = packet_id;
    Ok(StoredMessage {
        publish,
        expires_at_unix_ms,
    })
}

// ---- queue entries (messages table) -----------------------------------------------

const E_SENT: u8 = 1 << 0;
const E_RELEASED: u8 = 1 << 1;
const E_KNOWN: u8 = E_SENT | E_RELEASED;

/// Bytes before the message in an entry: version, flags, packet id (fixed width so
/// that MessageSent / MessageReleased patch them without decoding the message).
const ENTRY_HEADER: usize = 4;

/// A queued message as stored: the message, the packet id it went out with, and
/// whether its QoS 2 flow was released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The message.
    pub message: StoredMessage,
    /// The packet id it was sent with, once sent.
    pub packet_id: Option<u16>,
    /// Its QoS 2 flow reached PUBREC.
    pub released: bool,
}

/// A freshly enqueued message: not sent, not released.
pub fn encode_new_entry(m: &StoredMessage) -> Result<Vec<u8>, Unencodable> {
    let mut out = BytesMut::with_capacity(64 + m.publish.payload.len());
    out.put_u8(FORMAT_VERSION);
    out.put_u8(0);
    out.put_u16(0);
    put_message(&mut out, m)?;
    Ok(out.to_vec())
}

fn entry_header(value: &[u8]) -> Result<(), BadRecord> {
    let mut r = Reader::new(Bytes::copy_from_slice(value.get(..1).unwrap_or_default()));
    r.version()?;
    if value.len() < ENTRY_HEADER {
        return Err(BadRecord::new("queue entry shorter than its header"));
    }
    Ok(())
}

/// The entry with its packet id set (MessageSent).
pub fn entry_set_sent(value: &[u8], packet_id: u16) -> Result<Vec<u8>, BadRecord> {
    let mut v = value.to_vec();
    entry_mark_sent(&mut v, packet_id)?;
    Ok(v)
}

/// The entry marked released (MessageReleased).
pub fn entry_set_released(value: &[u8]) -> Result<Vec<u8>, BadRecord> {
    let mut v = value.to_vec();
    entry_mark_released(&mut v)?;
    Ok(v)
}

/// Sets the packet id of an encoded entry in place.
pub fn entry_mark_sent(v: &mut [u8], packet_id: u16) -> Result<(), BadRecord> {
    entry_header(v)?;
    v[1] |= E_SENT;
    v[2..4].copy_from_slice(&packet_id.to_be_bytes());
    Ok(())
}

/// Marks an encoded entry released in place.
pub fn entry_mark_released(v: &mut [u8]) -> Result<(), BadRecord> {
    entry_header(v)?;
    v[1] |= E_RELEASED;
    Ok(())
}

/// A queue entry's value read back (what [`encode_new_entry`] and the patches made).
pub fn decode_entry(value: &[u8]) -> Result<Entry, BadRecord> {
    let mut r = Reader::new(Bytes::copy_from_slice(value));
    r.version()?;
    let flags = r.u8("the entry flags")?;
    if flags & !E_KNOWN != 0 {
        return Err(BadRecord(format!("unknown entry flags {flags:#04x}")));
    }
    let id = r.u16("the entry's packet id")?;
    let packet_id = if flags & E_SENT != 0 {
        Some(id)
    } else {
        if id != 0 {
            return Err(BadRecord::new("a packet id on an unsent entry"));
        }
        None
    };
    let message = read_message(&mut r)?;
    r.end()?;
    Ok(Entry {
        message,
        packet_id,
        released: flags & E_RELEASED != 0,
    })
}

// ---- retained messages ------------------------------------------------------------

pub fn encode_retained(m: &StoredMessage) -> Result<Vec<u8>, Unencodable> {
    let mut out = BytesMut::with_capacity(64 + m.publish.payload.len());
    out.put_u8(FORMAT_VERSION);
    put_message(&mut out, m)?;
    Ok(out.to_vec())
}

pub fn decode_retained(value: &[u8]) -> Result<StoredMessage, BadRecord> {
    let mut r = Reader::new(Bytes::copy_from_slice(value));
    r.version()?;
    let m = read_message(&mut r)?;
    r.end()?;
    Ok(m)
}

// ---- sessions ---------------------------------------------------------------------

const S_AUTH: u8 = 1 << 0;
const S_EXPIRES: u8 = 1 << 1;
const S_WILL: u8 = 1 << 2;
const S_KNOWN: u8 = S_AUTH | S_EXPIRES | S_WILL;
const W_PUBLISH_AT: u8 = 1 << 0;

fn options_byte(o: SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn options_from(b: u8) -> Result<SubscriptionOptions, BadRecord> {
    if b & 0b1100_0000 != 0 {
        return Err(BadRecord(format!("unknown subscription options {b:#04x}")));
    }
    Ok(SubscriptionOptions {
        qos: QoS::from_u8(b & 0b11).ok_or_else(|| BadRecord::new("subscription QoS 3"))?,
        no_local: b & 0b100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling: match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(BadRecord::new("retain handling 3")),
        },
    })
}

/// The session's value (its client id is the key).
pub fn encode_session(rec: &SessionRecord) -> Result<Vec<u8>, Unencodable> {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(FORMAT_VERSION);
    let mut flags = 0;
    if rec.authentication_name.is_some() {
        flags |= S_AUTH;
    }
    if rec.expires_at_unix_ms.is_some() {
        flags |= S_EXPIRES;
    }
    if rec.will.is_some() {
        flags |= S_WILL;
    }
    out.put_u8(flags);
    put_varint(&mut out, u64::from(rec.expiry_interval));
    if let Some(name) = &rec.authentication_name {
        put_lp(&mut out, name.as_bytes());
    }
    if let Some(t) = rec.expires_at_unix_ms {
        put_varint(&mut out, t);
    }
    put_varint(&mut out, rec.subscriptions.len() as u64);
    for (filter, options, id) in &rec.subscriptions {
        put_lp(&mut out, filter.as_bytes());
        out.put_u8(options_byte(*options));
        put_varint(&mut out, id.map_or(0, |id| u64::from(id.get())));
    }
    if let Some(will) = &rec.will {
        put_varint(&mut out, u64::from(will.delay_interval));
        match will.publish_at_unix_ms {
            Some(t) => {
                out.put_u8(W_PUBLISH_AT);
                put_varint(&mut out, t);
            }
            None => out.put_u8(0),
        }
        put_message(&mut out, &will.message)?;
    }
    Ok(out.to_vec())
}

/// A session's value read back, for the session of `client_id`.
pub fn decode_session(client_id: MqttString, value: &[u8]) -> Result<SessionRecord, BadRecord> {
    let mut r = Reader::new(Bytes::copy_from_slice(value));
    r.version()?;
    let flags = r.u8("the session flags")?;
    if flags & !S_KNOWN != 0 {
        return Err(BadRecord(format!("unknown session flags {flags:#04x}")));
    }
    let expiry_interval = r.u32("the session expiry interval")?;
    let authentication_name = if flags & S_AUTH != 0 {
        let b = r.bytes("the authentication name")?;
        Some(
            String::from_utf8(b.to_vec())
                .map_err(|_| BadRecord::new("the authentication name is not UTF-8"))?,
        )
    } else {
        None
    };
    let expires_at_unix_ms = if flags & S_EXPIRES != 0 {
        Some(r.varint("the session expiry time")?)
    } else {
        None
    };
    let count = r.varint("the subscription count")?;
    // Each subscription takes at least 3 bytes: a count beyond that is damage, not
    // a reason to reserve memory.
    if count > (r.buf.len() - r.pos) as u64 / 3 + 1 {
        return Err(BadRecord::new("subscription count beyond the record"));
    }
    let mut subscriptions = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let filter = TopicFilter::new(r.bytes("a topic filter")?)
            .map_err(|e| BadRecord(format!("invalid topic filter: {e}")))?;
        let options = options_from(r.u8("subscription options")?)?;
        let id = r.u32("a subscription identifier")?;
        subscriptions.push((filter, options, NonZeroU32::new(id)));
    }
    let will = if flags & S_WILL != 0 {
        let delay_interval = r.u32("the will delay")?;
        let wflags = r.u8("the will flags")?;
        if wflags & !W_PUBLISH_AT != 0 {
            return Err(BadRecord(format!("unknown will flags {wflags:#04x}")));
        }
        let publish_at_unix_ms = if wflags & W_PUBLISH_AT != 0 {
            Some(r.varint("the will publication time")?)
        } else {
            None
        };
        let message = read_message(&mut r)?;
        Some(StoredWill {
            message,
            delay_interval,
            publish_at_unix_ms,
        })
    } else {
        None
    };
    r.end()?;
    Ok(SessionRecord {
        client_id,
        authentication_name,
        expiry_interval,
        expires_at_unix_ms,
        subscriptions,
        will,
    })
}

/// A client id from a key: invalid bytes are a damaged record.
pub fn client_id_from_key(key: &[u8]) -> Result<MqttString, BadRecord> {
    MqttString::new(Bytes::copy_from_slice(key))
        .map_err(|e| BadRecord(format!("the client id is invalid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            let mut r = Reader::new(out.freeze());
            assert_eq!(r.varint("v"), Ok(v));
            assert!(r.end().is_ok());
        }
        // 11 bytes of continuation: refused, not wrapped.
        let mut r = Reader::new(Bytes::from_static(&[0xFF; 11]));
        assert!(r.varint("v").is_err());
        let mut r = Reader::new(Bytes::from_static(&[
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02,
        ]));
        assert!(r.varint("v").is_err());
    }

    #[test]
    fn truncated_entries_are_refused_not_panicking() {
        let m = StoredMessage {
            publish: mqtt_proto::Publish {
                dup: true,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: mqtt_proto::TopicName::from_static("a/b").unwrap(),
                packet_id: None,
                properties: Default::default(),
                payload: Bytes::from_static(b"payload"),
            },
            expires_at_unix_ms: Some(5),
        };
        let v = encode_new_entry(&m).unwrap();
        let e = decode_entry(&v).unwrap();
        assert_eq!(e.message, m);
        for n in 0..v.len() {
            assert!(decode_entry(&v[..n]).is_err(), "prefix {n}");
            let _ = entry_set_sent(&v[..n], 3);
        }
        let sent = entry_set_released(&entry_set_sent(&v, 7).unwrap()).unwrap();
        let e = decode_entry(&sent).unwrap();
        assert_eq!((e.packet_id, e.released), (Some(7), true));
    }
}
