//! How a message travels between nodes: a forwarded PUBLISH as NATS headers and
//! payload, and a retained message as a value of the retained bucket.
//!
//! # Forwarded messages
//!
//! The subject is the topic's ([`crate::SubjectMap::topic_to_subject`]), the NATS
//! payload is the MQTT payload (unchanged, so another NATS application reads it
//! as it was published), and every MQTT property is a header, readable by
//! anything that speaks NATS:
//!
//! | header                  | value                                                  |
//! |-------------------------|--------------------------------------------------------|
//! | `Brokk-Origin`          | the node that accepted the message                     |
//! | `Mqtt-Qos`              | `0`, `1` or `2`, as published                          |
//! | `Mqtt-Retain`           | `1` if published with RETAIN                           |
//! | `Mqtt-Format`           | Payload Format Indicator (`0` / `1`)                   |
//! | `Mqtt-Expiry`           | Message Expiry Interval, seconds                       |
//! | `Content-Type`          | Content Type (escaped)                                 |
//! | `Mqtt-Response-Topic`   | Response Topic (escaped)                               |
//! | `Mqtt-Correlation-Data` | Correlation Data, base64 (standard, padded)            |
//! | `Mqtt-User-Property`    | one per User Property, in order: `key=value`, escaped |
//!
//! **Escaping.** A header value cannot hold CR or LF, and NATS clients trim
//! surrounding blanks, so `%`, `=`, and every character below U+0021 or equal to
//! U+007F become `%XX`; other UTF-8 is kept.
//!
//! # Retained messages
//!
//! The retained bucket's value is the wall-clock time the message was accepted
//! (8 bytes, milliseconds since the Unix epoch, big-endian) followed by the
//! message as an MQTT 5.0 PUBLISH packet: the specification's own encoding, with
//! every property. The receiving node counts the Message Expiry Interval from
//! the time stored, so a message read long after it was retained expires when
//! it would have on its own node. Its key is the topic in base64url without
//! padding (KV keys allow `A-Z a-z 0-9 - _ = . /`).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use mqtt_proto::{
    Decoder, MqttString, Packet, PayloadFormat, ProtocolVersion, Publish, PublishProperties, QoS,
    TopicName, UserProperties,
};

/// Header: the node that accepted the message.
pub const ORIGIN: &str = "Brokk-Origin";
/// Header: QoS as published.
pub const QOS: &str = "Mqtt-Qos";
/// Header: RETAIN as published.
pub const RETAIN: &str = "Mqtt-Retain";
/// Header: Payload Format Indicator.
pub const FORMAT: &str = "Mqtt-Format";
/// Header: Message Expiry Interval (seconds).
pub const EXPIRY: &str = "Mqtt-Expiry";
/// Header: Content Type.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Header: Response Topic.
pub const RESPONSE_TOPIC: &str = "Mqtt-Response-Topic";
/// Header: Correlation Data (base64).
pub const CORRELATION_DATA: &str = "Mqtt-Correlation-Data";
/// Header: one User Property.
pub const USER_PROPERTY: &str = "Mqtt-User-Property";

/// Why a message from the cluster was refused (it is dropped, and counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A header that must be there is not.
    Missing(&'static str),
    /// A header's value is not what it must be.
    Invalid(&'static str),
    /// The subject is not one brokk forwards on.
    Subject,
    /// A retained value that does not decode.
    Retained,
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Missing(h) => write!(f, "header {h} is missing"),
            WireError::Invalid(h) => write!(f, "header {h} is invalid"),
            WireError::Subject => f.write_str("the subject is not a mapped MQTT topic"),
            WireError::Retained => f.write_str("the retained value does not decode"),
        }
    }
}

impl std::error::Error for WireError {}

/// Where a forwarded message came from (borrowed from its header: nothing is
/// copied per message for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The node that accepted it.
    pub node: &'a str,
}

/// The headers of a forwarded message, in order (names may repeat).
pub fn to_headers(p: &Publish, origin: &str) -> Vec<(&'static str, String)> {
    let mut h = Vec::with_capacity(4);
    h.push((ORIGIN, origin.to_owned()));
    h.push((QOS, (p.qos as u8).to_string()));
    if p.retain {
        h.push((RETAIN, "1".to_owned()));
    }
    let props = &p.properties;
    if let Some(f) = props.payload_format_indicator {
        h.push((FORMAT, (f as u8).to_string()));
    }
    if let Some(e) = props.message_expiry_interval {
        h.push((EXPIRY, e.to_string()));
    }
    if let Some(c) = &props.content_type {
        h.push((CONTENT_TYPE, escape(c.as_str())));
    }
    if let Some(t) = &props.response_topic {
        h.push((RESPONSE_TOPIC, escape(t.as_str())));
    }
    if let Some(d) = &props.correlation_data {
        h.push((CORRELATION_DATA, STANDARD.encode(d)));
    }
    for (k, v) in props.user_properties.iter() {
        h.push((USER_PROPERTY, format!("{}={}", escape(k), escape(v))));
    }
    h
}

/// A forwarded message back from its topic, headers and payload. `header`
/// returns every value of a header name, in order.
pub fn from_headers<'a, F, I>(
    topic: TopicName,
    header: F,
    payload: Bytes,
) -> Result<(Publish, Origin<'a>), WireError>
where
    F: Fn(&'static str) -> I,
    I: Iterator<Item = &'a str>,
{
    let one = |name: &'static str| header(name).next();
    let node = one(ORIGIN).ok_or(WireError::Missing(ORIGIN))?;
    let qos = match one(QOS).ok_or(WireError::Missing(QOS))? {
        "0" => QoS::AtMostOnce,
        "1" => QoS::AtLeastOnce,
        "2" => QoS::ExactlyOnce,
        _ => return Err(WireError::Invalid(QOS)),
    };
    let retain = match one(RETAIN) {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return Err(WireError::Invalid(RETAIN)),
    };
    let payload_format_indicator = match one(FORMAT) {
        None => None,
        Some("0") => Some(PayloadFormat::Unspecified),
        Some("1") => Some(PayloadFormat::Utf8),
        Some(_) => return Err(WireError::Invalid(FORMAT)),
    };
    let mut props = PublishProperties {
        payload_format_indicator,
        ..PublishProperties::default()
    };
    if let Some(e) = one(EXPIRY) {
        props.message_expiry_interval = Some(e.parse().map_err(|_| WireError::Invalid(EXPIRY))?);
    }
    if let Some(c) = one(CONTENT_TYPE) {
        let s = unescape(c).ok_or(WireError::Invalid(CONTENT_TYPE))?;
        props.content_type =
            Some(MqttString::copy_from_str(&s).map_err(|_| WireError::Invalid(CONTENT_TYPE))?);
    }
    if let Some(t) = one(RESPONSE_TOPIC) {
        let s = unescape(t).ok_or(WireError::Invalid(RESPONSE_TOPIC))?;
        props.response_topic =
            Some(TopicName::copy_from_str(&s).map_err(|_| WireError::Invalid(RESPONSE_TOPIC))?);
    }
    if let Some(d) = one(CORRELATION_DATA) {
        let d = STANDARD
            .decode(d)
            .map_err(|_| WireError::Invalid(CORRELATION_DATA))?;
        props.correlation_data = Some(Bytes::from(d));
    }
    let mut pairs = Vec::new();
    for kv in header(USER_PROPERTY) {
        let (k, v) = kv
            .split_once('=')
            .ok_or(WireError::Invalid(USER_PROPERTY))?;
        let k = unescape(k).ok_or(WireError::Invalid(USER_PROPERTY))?;
        let v = unescape(v).ok_or(WireError::Invalid(USER_PROPERTY))?;
        pairs.push((k, v));
    }
    if !pairs.is_empty() {
        props.user_properties =
            UserProperties::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|_| WireError::Invalid(USER_PROPERTY))?;
    }
    let p = Publish {
        dup: false,
        qos,
        retain,
        topic,
        packet_id: None,
        properties: props,
        payload,
    };
    Ok((p, Origin { node }))
}

/// `s` with `%`, `=`, controls, blanks and DEL as `%XX`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c == '=' || c <= ' ' || c == '\u{7f}' {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Undoes [`escape`]; `None` for a malformed escape.
pub fn unescape(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The retained bucket's key for `topic`.
pub fn retained_key(topic: &str) -> String {
    URL_SAFE_NO_PAD.encode(topic)
}

/// The topic of a retained bucket's key.
pub fn retained_topic(key: &str) -> Option<TopicName> {
    let bytes = URL_SAFE_NO_PAD.decode(key).ok()?;
    TopicName::new(Bytes::from(bytes)).ok()
}

/// The retained bucket's value for `p`, accepted at `unix_ms`.
pub fn retained_value(p: &Publish, unix_ms: u64) -> Bytes {
    let mut p = p.clone();
    p.dup = false;
    p.retain = true;
    p.packet_id = (p.qos != QoS::AtMostOnce)
        .then(|| mqtt_proto::PacketId::new(1))
        .flatten();
    let mut buf = BytesMut::with_capacity(p.payload.len() + 64);
    buf.put_u64(unix_ms);
    // A message that was accepted over MQTT always encodes; one that does not is
    // stored without properties rather than lost.
    if Packet::Publish(p.clone())
        .encode(ProtocolVersion::V5, &mut buf)
        .is_err()
    {
        buf.truncate(8);
        p.properties = PublishProperties::default();
        let _ = Packet::Publish(p).encode(ProtocolVersion::V5, &mut buf);
    }
    buf.freeze()
}

/// A retained bucket's value back as the message and the Message Expiry
/// Interval left of it at `now_ms` (`None` in the result: it has expired).
pub fn from_retained_value(value: &[u8], now_ms: u64) -> Result<Option<Publish>, WireError> {
    let (stamp, packet) = value.split_at_checked(8).ok_or(WireError::Retained)?;
    let mut at = [0u8; 8];
    at.copy_from_slice(stamp);
    let accepted = u64::from_be_bytes(at);
    let mut buf = BytesMut::from(packet);
    let mut d = Decoder::with_version(ProtocolVersion::V5, u32::MAX);
    let Ok(Some(Packet::Publish(mut p))) = d.decode(&mut buf) else {
        return Err(WireError::Retained);
    };
    p.packet_id = None;
    p.dup = false;
    if let Some(secs) = p.properties.message_expiry_interval {
        let elapsed = now_ms.saturating_sub(accepted) / 1000;
        let elapsed = u32::try_from(elapsed).unwrap_or(u32::MAX);
        if elapsed >= secs {
            return Ok(None);
        }
        p.properties.message_expiry_interval = Some(secs - elapsed);
    }
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn publish() -> Publish {
        let props = PublishProperties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(30),
            content_type: Some(MqttString::copy_from_str("text/plain; x=1").expect("valid")),
            response_topic: Some(TopicName::copy_from_str("re ply/%/=").expect("valid")),
            correlation_data: Some(Bytes::from_static(b"\0\r\n id")),
            user_properties: UserProperties::from_pairs([
                ("a", "1"),
                ("a", "2"),
                ("k=ey", " spaced\r\nvalue "),
                ("", ""),
                ("é", "日本"),
            ])
            .expect("valid pairs"),
            ..PublishProperties::default()
        };
        Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: TopicName::copy_from_str("a/b").expect("valid"),
            packet_id: None,
            properties: props,
            payload: Bytes::from_static(b"payload"),
        }
    }

    /// Decodes `headers` as NATS would hand them over.
    fn decode<'a>(
        p: &Publish,
        headers: &'a [(&'static str, String)],
    ) -> Result<(Publish, Origin<'a>), WireError> {
        let mut map: HashMap<&str, Vec<&str>> = HashMap::new();
        for (k, v) in headers {
            map.entry(k).or_default().push(v);
        }
        from_headers(
            p.topic.clone(),
            |name| map.get(name).into_iter().flatten().copied(),
            p.payload.clone(),
        )
    }

    #[test]
    fn every_property_survives_the_headers() {
        let p = publish();
        let headers = to_headers(&p, "node-1");
        for (_, v) in &headers {
            assert!(
                !v.contains(['\r', '\n']) && v.trim() == v,
                "{v:?} is not a header value NATS keeps as it is"
            );
        }
        let (back, origin) = decode(&p, &headers).expect("decodes");
        assert_eq!(back, p);
        assert_eq!(origin, Origin { node: "node-1" });
    }

    #[test]
    fn a_bare_message_has_two_headers_and_bad_ones_are_refused() {
        let mut p = publish();
        p.properties = PublishProperties::default();
        p.retain = false;
        p.qos = QoS::AtMostOnce;
        let headers = to_headers(&p, "n");
        assert_eq!(headers.len(), 2, "{headers:?}");
        let with = |name: &'static str, value: &str| {
            let mut h: Vec<_> = headers
                .iter()
                .filter(|(k, _)| *k != name)
                .cloned()
                .collect();
            h.push((name, value.to_owned()));
            decode(&p, &h).map(|(p, _)| p)
        };
        assert_eq!(with(QOS, "3"), Err(WireError::Invalid(QOS)));
        assert_eq!(with(RETAIN, "yes"), Err(WireError::Invalid(RETAIN)));
        assert_eq!(
            with(USER_PROPERTY, "no-equals"),
            Err(WireError::Invalid(USER_PROPERTY))
        );
        assert_eq!(
            with(CONTENT_TYPE, "%G0"),
            Err(WireError::Invalid(CONTENT_TYPE))
        );
        assert_eq!(
            with(CORRELATION_DATA, "not base64!"),
            Err(WireError::Invalid(CORRELATION_DATA))
        );
        assert_eq!(decode(&p, &headers[1..]), Err(WireError::Missing(ORIGIN)));
        assert!(with(FORMAT, "1").is_ok());
    }

    #[test]
    fn retained_values_keep_the_message_and_count_its_expiry_from_acceptance() {
        let p = publish();
        let value = retained_value(&p, 1_000_000);
        let back = from_retained_value(&value, 1_010_500)
            .expect("decodes")
            .expect("not expired");
        assert_eq!(back.properties.message_expiry_interval, Some(20));
        let mut expected = p.clone();
        expected.properties.message_expiry_interval = Some(20);
        assert_eq!(back, expected);
        assert_eq!(from_retained_value(&value, 1_030_000), Ok(None));
        assert_eq!(
            from_retained_value(&value[..value.len() - 1], 0),
            Err(WireError::Retained)
        );
        assert_eq!(from_retained_value(b"short", 0), Err(WireError::Retained));
        let key = retained_key("a/b c/日本");
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(
            retained_topic(&key).map(|t| t.as_str().to_owned()),
            Some("a/b c/日本".to_owned())
        );
    }
}
