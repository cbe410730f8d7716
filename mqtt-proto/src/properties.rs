//! MQTT 5.0 properties [MQTT-2.2.2], grouped per packet.
//!
//! 3.1 and 3.1.1 packets carry the same structs, left at their `Default` (empty),
//! and the encoder writes nothing for them at those versions. Properties are
//! written in ascending identifier order.

use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::fmt;
use core::num::{NonZeroU16, NonZeroU32};

use crate::error::DecodeError;
use crate::io::{Counter, Reader, Sink};
use crate::string::{validate_utf8, MqttString, StringError, TopicName};
use crate::types::QoS;

/// Property identifiers [MQTT-2.2.2.2].
#[allow(missing_docs)]
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Payload Format Indicator [MQTT-3.3.2.3.2].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    Unspecified = 0,
    /// 1: UTF-8 encoded character data.
    Utf8 = 1,
}

/// User Properties [MQTT-3.3.2.3.7], kept in their encoded form: a run of
/// `0x26, key, value` entries. Decoding them costs no allocation, forwarding them
/// is a reference count, and order and duplicates are preserved as the spec requires
/// [MQTT-3.3.2-18].
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct UserProperties(Bytes);

impl UserProperties {
    /// No user properties.
    pub const fn new() -> Self {
        UserProperties(Bytes::new())
    }

    /// Encodes the given pairs, in order.
    pub fn from_pairs<'a, I>(pairs: I) -> Result<Self, StringError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut buf = BytesMut::new();
        for (k, v) in pairs {
            validate_utf8(k.as_bytes())?;
            validate_utf8(v.as_bytes())?;
            buf.put_u8(id::USER_PROPERTY);
            buf.put_lp(k.as_bytes());
            buf.put_lp(v.as_bytes());
        }
        Ok(UserProperties(buf.freeze()))
    }

    /// The pairs in the order they were sent.
    pub fn iter(&self) -> UserPropertiesIter<'_> {
        UserPropertiesIter { rest: &self.0 }
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes these properties take on the wire.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn write<S: Sink + ?Sized>(&self, s: &mut S) {
        s.put_slice(&self.0);
    }
}

impl fmt::Debug for UserProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over `(key, value)` user property pairs.
pub struct UserPropertiesIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for UserPropertiesIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        // Entries were validated when the value was built; a short or invalid entry
        // cannot occur, and ends the iteration if it somehow did.
        let rest = self.rest.get(1..)?;
        let (k, rest) = take_lp(rest)?;
        let (v, rest) = take_lp(rest)?;
        self.rest = rest;
        Some((core::str::from_utf8(k).ok()?, core::str::from_utf8(v).ok()?))
    }
}

fn take_lp(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
    let s = b.get(2..2 + n)?;
    Some((s, &b[2 + n..]))
}

/// A decoded property value, typed by the identifier's data type.
pub(crate) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    Vbi(u32),
    Str(MqttString),
    Bin(Bytes),
}

fn kind_of(id: u8) -> Option<u8> {
    // 0 byte, 1 two-byte int, 2 four-byte int, 3 vbi, 4 string, 5 binary, 6 pair
    Some(match id {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::REQUEST_PROBLEM_INFORMATION
        | id::REQUEST_RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => 0,
        id::SERVER_KEEP_ALIVE | id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::TOPIC_ALIAS => {
            1
        }
        id::MESSAGE_EXPIRY_INTERVAL
        | id::SESSION_EXPIRY_INTERVAL
        | id::WILL_DELAY_INTERVAL
        | id::MAXIMUM_PACKET_SIZE => 2,
        id::SUBSCRIPTION_IDENTIFIER => 3,
        id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::ASSIGNED_CLIENT_IDENTIFIER
        | id::AUTHENTICATION_METHOD
        | id::RESPONSE_INFORMATION
        | id::SERVER_REFERENCE
        | id::REASON_STRING => 4,
        id::CORRELATION_DATA | id::AUTHENTICATION_DATA => 5,
        id::USER_PROPERTY => 6,
        _ => return None,
    })
}

/// Reads a property block (length + properties), handing each non-user property to
/// `f` and returning the user properties. `f` rejects identifiers the packet may not
/// carry [MQTT-2.2.2-1].
pub(crate) fn read_properties(
    r: &mut Reader,
    mut f: impl FnMut(u8, Value) -> Result<(), DecodeError>,
) -> Result<UserProperties, DecodeError> {
    let len = r.vbi()? as usize;
    let mut p = r.sub(len)?;
    let block = p.position()..p.position() + len;
    // User properties are usually one contiguous run; then they are a slice of the
    // packet. If other properties are interleaved they are gathered into one buffer.
    let mut run: Option<(usize, usize)> = None;
    let mut fragmented = false;
    while p.remaining() > 0 {
        let start = p.position();
        let pid = p.vbi()?;
        let pid = u8::try_from(pid).map_err(|_| DecodeError::InvalidPropertyId(0xFF))?;
        let kind = kind_of(pid).ok_or(DecodeError::InvalidPropertyId(pid))?;
        let value = match kind {
            0 => Value::Byte(p.u8()?),
            1 => Value::U16(p.u16()?),
            2 => Value::U32(p.u32()?),
            3 => Value::Vbi(p.vbi()?),
            4 => Value::Str(p.string()?),
            5 => Value::Bin(p.binary()?),
            _ => {
                // Checked in place: the run is sliced once, below.
                p.skip_string()?;
                p.skip_string()?;
                let end = p.position();
                run = match run {
                    None => Some((start, end)),
                    Some((s, e)) => {
                        fragmented |= e != start;
                        Some((s, end))
                    }
                };
                continue;
            }
        };
        f(pid, value)?;
    }
    let Some((s, e)) = run else {
        return Ok(UserProperties::new());
    };
    if !fragmented {
        return Ok(UserProperties(p.buffer().slice(s..e)));
    }
    // Sized once: the gathered pairs are never longer than the block they came from.
    let mut out = BytesMut::with_capacity(block.len());
    let mut again = r.sub_of(block);
    while again.remaining() > 0 {
        let start = again.position();
        // The first pass checked every identifier, length and string.
        let pid = again.vbi()? as u8;
        let skip = match kind_of(pid) {
            Some(0) => 1,
            Some(1) => 2,
            Some(2) => 4,
            Some(3) => {
                again.vbi()?;
                0
            }
            Some(4 | 5) => again.u16()? as usize,
            _ => {
                let key = again.u16()? as usize;
                again.skip(key)?;
                let value = again.u16()? as usize;
                again.skip(value)?;
                out.put_slice(&again.buffer()[start..again.position()]);
                0
            }
        };
        again.skip(skip)?;
    }
    Ok(UserProperties(out.freeze()))
}

/// A property block's contents, written the same way into a counter or a buffer.
pub(crate) trait WriteProperties {
    fn write<S: Sink>(&self, s: &mut S);
    /// True when there is nothing to write (a cheap test; `false` is always safe).
    fn nothing_to_write(&self) -> bool {
        false
    }
}

/// Writes a property block: its length, then the properties [MQTT-2.2.2].
pub(crate) fn write_block<S: Sink, P: WriteProperties>(s: &mut S, properties: &P) {
    // Most PUBLISHes carry no properties: one zero byte, without walking them twice.
    if properties.nothing_to_write() {
        s.put_vbi(0);
        return;
    }
    let mut c = Counter::default();
    properties.write(&mut c);
    s.put_vbi(c.0 as u32);
    // A counter has just counted them: add, do not count twice.
    if !s.add_counted(c.0) {
        properties.write(s);
    }
}

fn set<T>(slot: &mut Option<T>, v: T, pid: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(pid));
    }
    *slot = Some(v);
    Ok(())
}

impl Value {
    fn byte(self, pid: u8) -> Result<u8, DecodeError> {
        match self {
            Value::Byte(b) => Ok(b),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        }
    }
    fn bool(self, pid: u8) -> Result<bool, DecodeError> {
        match self.byte(pid)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidPropertyValue(pid)),
        }
    }
    fn u16(self, pid: u8) -> Result<u16, DecodeError> {
        match self {
            Value::U16(v) => Ok(v),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        }
    }
    fn nz16(self, pid: u8) -> Result<NonZeroU16, DecodeError> {
        NonZeroU16::new(self.u16(pid)?).ok_or(DecodeError::InvalidPropertyValue(pid))
    }
    fn u32(self, pid: u8) -> Result<u32, DecodeError> {
        match self {
            Value::U32(v) | Value::Vbi(v) => Ok(v),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        }
    }
    fn nz32(self, pid: u8) -> Result<NonZeroU32, DecodeError> {
        NonZeroU32::new(self.u32(pid)?).ok_or(DecodeError::InvalidPropertyValue(pid))
    }
    fn string(self, pid: u8) -> Result<MqttString, DecodeError> {
        match self {
            Value::Str(s) => Ok(s),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        }
    }
    fn topic(self, pid: u8) -> Result<TopicName, DecodeError> {
        let t = TopicName::from_string(self.string(pid)?)?;
        // A Response Topic is a Topic Name: non-empty and without wildcards [MQTT-3.3.2-14].
        if t.is_empty() {
            return Err(DecodeError::InvalidPropertyValue(pid));
        }
        Ok(t)
    }
    fn binary(self, pid: u8) -> Result<Bytes, DecodeError> {
        match self {
            Value::Bin(b) => Ok(b),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        }
    }
    fn payload_format(self, pid: u8) -> Result<PayloadFormat, DecodeError> {
        Ok(if self.bool(pid)? {
            PayloadFormat::Utf8
        } else {
            PayloadFormat::Unspecified
        })
    }
}

fn put_byte<S: Sink>(s: &mut S, pid: u8, v: Option<u8>) {
    if let Some(v) = v {
        s.put_u8(pid);
        s.put_u8(v);
    }
}
fn put_u16<S: Sink>(s: &mut S, pid: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.put_u8(pid);
        s.put_u16(v);
    }
}
fn put_u32<S: Sink>(s: &mut S, pid: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.put_u8(pid);
        s.put_u32(v);
    }
}
fn put_lp<S: Sink>(s: &mut S, pid: u8, v: Option<&[u8]>) {
    if let Some(v) = v {
        s.put_u8(pid);
        s.put_lp(v);
    }
}
/// The caller checked `v <= MAX_VARIABLE_BYTE_INTEGER` (`Packet::encode` refuses
/// larger Subscription Identifiers before writing anything).
fn put_vbi<S: Sink>(s: &mut S, pid: u8, v: u32) {
    s.put_u8(pid);
    s.put_vbi(v);
}

fn b(v: Option<bool>) -> Option<u8> {
    v.map(u8::from)
}
fn pf(v: Option<PayloadFormat>) -> Option<u8> {
    v.map(|v| v as u8)
}
fn st(v: &Option<MqttString>) -> Option<&[u8]> {
    v.as_ref().map(|s| s.as_bytes())
}
fn tp(v: &Option<TopicName>) -> Option<&[u8]> {
    v.as_ref().map(|s| s.as_bytes())
}
fn bi(v: &Option<Bytes>) -> Option<&[u8]> {
    v.as_deref()
}

/// Properties of CONNECT [MQTT-3.1.2.11].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub authentication_method: Option<MqttString>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<bool>,
    pub request_response_information: Option<bool>,
    pub receive_maximum: Option<NonZeroU16>,
    pub topic_alias_maximum: Option<u16>,
    pub user_properties: UserProperties,
    pub maximum_packet_size: Option<NonZeroU32>,
}

impl ConnectProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = ConnectProperties::default();
        p.user_properties = read_properties(r, |pid, v| match pid {
            id::SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, v.u32(pid)?, pid),
            id::AUTHENTICATION_METHOD => set(&mut p.authentication_method, v.string(pid)?, pid),
            id::AUTHENTICATION_DATA => set(&mut p.authentication_data, v.binary(pid)?, pid),
            id::REQUEST_PROBLEM_INFORMATION => {
                set(&mut p.request_problem_information, v.bool(pid)?, pid)
            }
            id::REQUEST_RESPONSE_INFORMATION => {
                set(&mut p.request_response_information, v.bool(pid)?, pid)
            }
            id::RECEIVE_MAXIMUM => set(&mut p.receive_maximum, v.nz16(pid)?, pid),
            id::TOPIC_ALIAS_MAXIMUM => set(&mut p.topic_alias_maximum, v.u16(pid)?, pid),
            id::MAXIMUM_PACKET_SIZE => set(&mut p.maximum_packet_size, v.nz32(pid)?, pid),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        })?;
        // Authentication Data without an Authentication Method [MQTT-3.1.2.11.10].
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::InvalidPropertyValue(id::AUTHENTICATION_DATA));
        }
        Ok(p)
    }
}

impl WriteProperties for ConnectProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        put_u32(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_lp(
            s,
            id::AUTHENTICATION_METHOD,
            st(&self.authentication_method),
        );
        put_lp(s, id::AUTHENTICATION_DATA, bi(&self.authentication_data));
        put_byte(
            s,
            id::REQUEST_PROBLEM_INFORMATION,
            b(self.request_problem_information),
        );
        put_byte(
            s,
            id::REQUEST_RESPONSE_INFORMATION,
            b(self.request_response_information),
        );
        put_u16(
            s,
            id::RECEIVE_MAXIMUM,
            self.receive_maximum.map(|v| v.get()),
        );
        put_u16(s, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        self.user_properties.write(s);
        put_u32(
            s,
            id::MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(|v| v.get()),
        );
    }
}

/// Will Properties of CONNECT [MQTT-3.1.3.2].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct WillProperties {
    pub payload_format_indicator: Option<PayloadFormat>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<MqttString>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub will_delay_interval: Option<u32>,
    pub user_properties: UserProperties,
}

impl WillProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = WillProperties::default();
        p.user_properties = read_properties(r, |pid, v| match pid {
            id::PAYLOAD_FORMAT_INDICATOR => {
                set(&mut p.payload_format_indicator, v.payload_format(pid)?, pid)
            }
            id::MESSAGE_EXPIRY_INTERVAL => set(&mut p.message_expiry_interval, v.u32(pid)?, pid),
            id::CONTENT_TYPE => set(&mut p.content_type, v.string(pid)?, pid),
            id::RESPONSE_TOPIC => set(&mut p.response_topic, v.topic(pid)?, pid),
            id::CORRELATION_DATA => set(&mut p.correlation_data, v.binary(pid)?, pid),
            id::WILL_DELAY_INTERVAL => set(&mut p.will_delay_interval, v.u32(pid)?, pid),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        })?;
        Ok(p)
    }
}

impl WriteProperties for WillProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        put_byte(
            s,
            id::PAYLOAD_FORMAT_INDICATOR,
            pf(self.payload_format_indicator),
        );
        put_u32(s, id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_lp(s, id::CONTENT_TYPE, st(&self.content_type));
        put_lp(s, id::RESPONSE_TOPIC, tp(&self.response_topic));
        put_lp(s, id::CORRELATION_DATA, bi(&self.correlation_data));
        put_u32(s, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        self.user_properties.write(s);
    }
}

/// Properties of PUBLISH [MQTT-3.3.2.3].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<PayloadFormat>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<MqttString>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    /// Several when overlapping subscriptions matched (server to client only
    /// [MQTT-3.3.4-6]; the broker rejects them from clients).
    pub subscription_identifiers: Vec<NonZeroU32>,
    pub topic_alias: Option<NonZeroU16>,
    pub user_properties: UserProperties,
}

impl PublishProperties {
    /// True when no property is set: the 5.0 encoding is one zero byte.
    pub fn is_empty(&self) -> bool {
        self.message_expiry_interval.is_none()
            && self.subscription_identifiers.is_empty()
            && self.topic_alias.is_none()
            && self.message_fields_empty()
    }

    /// True when none of the properties that belong to the message itself (not to
    /// one delivery of it, see `Delivery`) is set.
    fn message_fields_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
    }

    /// Reads the property block into `self`, which is empty: a PUBLISH's properties
    /// are read in place, see `decode_publish`.
    pub(crate) fn read_from(&mut self, r: &mut Reader) -> Result<(), DecodeError> {
        let p = self;
        p.user_properties = read_properties(r, |pid, v| match pid {
            id::PAYLOAD_FORMAT_INDICATOR => {
                set(&mut p.payload_format_indicator, v.payload_format(pid)?, pid)
            }
            id::MESSAGE_EXPIRY_INTERVAL => set(&mut p.message_expiry_interval, v.u32(pid)?, pid),
            id::CONTENT_TYPE => set(&mut p.content_type, v.string(pid)?, pid),
            id::RESPONSE_TOPIC => set(&mut p.response_topic, v.topic(pid)?, pid),
            id::CORRELATION_DATA => set(&mut p.correlation_data, v.binary(pid)?, pid),
            id::SUBSCRIPTION_IDENTIFIER => {
                p.subscription_identifiers.push(v.nz32(pid)?);
                Ok(())
            }
            // Topic Alias 0 is a protocol error [MQTT-3.3.2-8].
            id::TOPIC_ALIAS => set(&mut p.topic_alias, v.nz16(pid)?, pid),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        })?;
        Ok(())
    }
}

/// A message's properties as one delivery sends them (see `Delivery`).
pub(crate) struct DeliveredProperties<'a> {
    pub(crate) p: &'a PublishProperties,
    pub(crate) d: &'a crate::encode::Delivery<'a>,
}

impl WriteProperties for DeliveredProperties<'_> {
    #[inline]
    fn nothing_to_write(&self) -> bool {
        let d = self.d;
        d.message_expiry_interval.is_none()
            && d.subscription_identifiers.is_empty()
            && d.topic_alias.is_none()
            && self.p.message_fields_empty()
    }
    fn write<S: Sink>(&self, s: &mut S) {
        let (p, d) = (self.p, self.d);
        put_byte(
            s,
            id::PAYLOAD_FORMAT_INDICATOR,
            pf(p.payload_format_indicator),
        );
        put_u32(s, id::MESSAGE_EXPIRY_INTERVAL, d.message_expiry_interval);
        put_lp(s, id::CONTENT_TYPE, st(&p.content_type));
        put_lp(s, id::RESPONSE_TOPIC, tp(&p.response_topic));
        put_lp(s, id::CORRELATION_DATA, bi(&p.correlation_data));
        for sid in d.subscription_identifiers {
            put_vbi(s, id::SUBSCRIPTION_IDENTIFIER, sid.get());
        }
        put_u16(s, id::TOPIC_ALIAS, d.topic_alias.map(|v| v.get()));
        p.user_properties.write(s);
    }
}

/// Properties of CONNACK [MQTT-3.2.2.3].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<MqttString>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<MqttString>,
    pub authentication_data: Option<Bytes>,
    pub response_information: Option<MqttString>,
    pub server_reference: Option<MqttString>,
    pub reason_string: Option<MqttString>,
    pub receive_maximum: Option<NonZeroU16>,
    pub topic_alias_maximum: Option<u16>,
    /// Only QoS 0 or 1 may be sent [MQTT-3.2.2-9].
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub user_properties: UserProperties,
    pub maximum_packet_size: Option<NonZeroU32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
}

impl ConnAckProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = ConnAckProperties::default();
        p.user_properties = read_properties(r, |pid, v| match pid {
            id::SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, v.u32(pid)?, pid),
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                set(&mut p.assigned_client_identifier, v.string(pid)?, pid)
            }
            id::SERVER_KEEP_ALIVE => set(&mut p.server_keep_alive, v.u16(pid)?, pid),
            id::AUTHENTICATION_METHOD => set(&mut p.authentication_method, v.string(pid)?, pid),
            id::AUTHENTICATION_DATA => set(&mut p.authentication_data, v.binary(pid)?, pid),
            id::RESPONSE_INFORMATION => set(&mut p.response_information, v.string(pid)?, pid),
            id::SERVER_REFERENCE => set(&mut p.server_reference, v.string(pid)?, pid),
            id::REASON_STRING => set(&mut p.reason_string, v.string(pid)?, pid),
            id::RECEIVE_MAXIMUM => set(&mut p.receive_maximum, v.nz16(pid)?, pid),
            id::TOPIC_ALIAS_MAXIMUM => set(&mut p.topic_alias_maximum, v.u16(pid)?, pid),
            id::MAXIMUM_QOS => {
                let q = match v.byte(pid)? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(DecodeError::InvalidPropertyValue(pid)),
                };
                set(&mut p.maximum_qos, q, pid)
            }
            id::RETAIN_AVAILABLE => set(&mut p.retain_available, v.bool(pid)?, pid),
            id::MAXIMUM_PACKET_SIZE => set(&mut p.maximum_packet_size, v.nz32(pid)?, pid),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                set(&mut p.wildcard_subscription_available, v.bool(pid)?, pid)
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                set(&mut p.subscription_identifiers_available, v.bool(pid)?, pid)
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                set(&mut p.shared_subscription_available, v.bool(pid)?, pid)
            }
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        })?;
        Ok(p)
    }
}

impl WriteProperties for ConnAckProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        put_u32(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_lp(
            s,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            st(&self.assigned_client_identifier),
        );
        put_u16(s, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_lp(
            s,
            id::AUTHENTICATION_METHOD,
            st(&self.authentication_method),
        );
        put_lp(s, id::AUTHENTICATION_DATA, bi(&self.authentication_data));
        put_lp(s, id::RESPONSE_INFORMATION, st(&self.response_information));
        put_lp(s, id::SERVER_REFERENCE, st(&self.server_reference));
        put_lp(s, id::REASON_STRING, st(&self.reason_string));
        put_u16(
            s,
            id::RECEIVE_MAXIMUM,
            self.receive_maximum.map(|v| v.get()),
        );
        put_u16(s, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_byte(s, id::MAXIMUM_QOS, self.maximum_qos.map(QoS::as_u8));
        put_byte(s, id::RETAIN_AVAILABLE, b(self.retain_available));
        self.user_properties.write(s);
        put_u32(
            s,
            id::MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(|v| v.get()),
        );
        put_byte(
            s,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            b(self.wildcard_subscription_available),
        );
        put_byte(
            s,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            b(self.subscription_identifiers_available),
        );
        put_byte(
            s,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            b(self.shared_subscription_available),
        );
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct AckProperties {
    pub reason_string: Option<MqttString>,
    pub user_properties: UserProperties,
}

impl AckProperties {
    /// True when neither is set.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = AckProperties::default();
        p.user_properties = read_properties(r, |pid, v| match pid {
            id::REASON_STRING => set(&mut p.reason_string, v.string(pid)?, pid),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        })?;
        Ok(p)
    }
}

impl WriteProperties for AckProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        put_lp(s, id::REASON_STRING, st(&self.reason_string));
        self.user_properties.write(s);
    }
}

/// Properties of SUBSCRIBE [MQTT-3.8.2.1].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct SubscribeProperties {
    /// 1 to 268,435,455; 0 is a protocol error [MQTT-3.8.2.1.2].
    pub subscription_identifier: Option<NonZeroU32>,
    pub user_properties: UserProperties,
}

impl SubscribeProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = SubscribeProperties::default();
        p.user_properties = read_properties(r, |pid, v| match pid {
            id::SUBSCRIPTION_IDENTIFIER => set(&mut p.subscription_identifier, v.nz32(pid)?, pid),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        })?;
        Ok(p)
    }
}

impl WriteProperties for SubscribeProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        if let Some(sid) = self.subscription_identifier {
            put_vbi(s, id::SUBSCRIPTION_IDENTIFIER, sid.get());
        }
        self.user_properties.write(s);
    }
}

/// Properties of UNSUBSCRIBE [MQTT-3.10.2.1]: user properties only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct UnsubscribeProperties {
    pub user_properties: UserProperties,
}

impl UnsubscribeProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let user_properties =
            read_properties(r, |pid, _| Err(DecodeError::InvalidPropertyId(pid)))?;
        Ok(UnsubscribeProperties { user_properties })
    }
}

impl WriteProperties for UnsubscribeProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        self.user_properties.write(s);
    }
}

/// Properties of DISCONNECT [MQTT-3.14.2.2].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub server_reference: Option<MqttString>,
    pub reason_string: Option<MqttString>,
    pub user_properties: UserProperties,
}

impl DisconnectProperties {
    /// True when none is set.
    pub fn is_empty(&self) -> bool {
        self.session_expiry_interval.is_none()
            && self.server_reference.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = DisconnectProperties::default();
        p.user_properties = read_properties(r, |pid, v| match pid {
            id::SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, v.u32(pid)?, pid),
            id::SERVER_REFERENCE => set(&mut p.server_reference, v.string(pid)?, pid),
            id::REASON_STRING => set(&mut p.reason_string, v.string(pid)?, pid),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        })?;
        Ok(p)
    }
}

impl WriteProperties for DisconnectProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        put_u32(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_lp(s, id::SERVER_REFERENCE, st(&self.server_reference));
        put_lp(s, id::REASON_STRING, st(&self.reason_string));
        self.user_properties.write(s);
    }
}

/// Properties of AUTH [MQTT-3.15.2.2].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct AuthProperties {
    pub authentication_method: Option<MqttString>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<MqttString>,
    pub user_properties: UserProperties,
}

impl AuthProperties {
    /// True when none is set.
    pub fn is_empty(&self) -> bool {
        self.authentication_method.is_none()
            && self.authentication_data.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = AuthProperties::default();
        p.user_properties = read_properties(r, |pid, v| match pid {
            id::AUTHENTICATION_METHOD => set(&mut p.authentication_method, v.string(pid)?, pid),
            id::AUTHENTICATION_DATA => set(&mut p.authentication_data, v.binary(pid)?, pid),
            id::REASON_STRING => set(&mut p.reason_string, v.string(pid)?, pid),
            _ => Err(DecodeError::InvalidPropertyId(pid)),
        })?;
        Ok(p)
    }
}

impl WriteProperties for AuthProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        put_lp(
            s,
            id::AUTHENTICATION_METHOD,
            st(&self.authentication_method),
        );
        put_lp(s, id::AUTHENTICATION_DATA, bi(&self.authentication_data));
        put_lp(s, id::REASON_STRING, st(&self.reason_string));
        self.user_properties.write(s);
    }
}
