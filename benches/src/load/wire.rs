//! The few MQTT packets a load generator (and its sink) needs, encoded and parsed by
//! hand.
//!
//! Deliberately not `mqtt-proto`: the generator measures brokk, so it must not share
//! brokk's codec, or a codec bug would agree with itself and go unnoticed. The unit
//! tests cross-check every encoder here against `mqtt-proto`'s decoder instead.

/// MQTT 3.1.1 (protocol level 4) or 5.0 (level 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.0.
    V5,
}

impl Version {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Version::V4 => 4,
            Version::V5 => 5,
        }
    }
}

/// Appends a Variable Byte Integer [MQTT-1.5.5].
pub fn put_vbi(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn vbi_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// CONNECT with clean start, no will, no credentials. A v5 CONNECT states Receive
/// Maximum 65535 so that the broker's window towards our subscribers is its own
/// limit, not ours. `persistent`: the session outlives the connection (v5: Session
/// Expiry Interval 3600 s, still with clean start; v4: clean session 0), so that a
/// broker with a durable store keeps what is queued for it on disk.
pub fn connect(
    out: &mut Vec<u8>,
    version: Version,
    client_id: &[u8],
    keep_alive: u16,
    persistent: bool,
) {
    let props: &[u8] = match (version, persistent) {
        (Version::V4, _) => &[],
        // properties length 3: Receive Maximum (0x21) = 65535
        (Version::V5, false) => &[3, 0x21, 0xFF, 0xFF],
        // ... and Session Expiry Interval (0x11) = 3600
        (Version::V5, true) => &[8, 0x21, 0xFF, 0xFF, 0x11, 0, 0, 0x0E, 0x10],
    };
    let remaining = 2 + 4 + 1 + 1 + 2 + props.len() + 2 + client_id.len();
    out.push(0x10);
    put_vbi(out, remaining);
    put_str(out, b"MQTT");
    out.push(version.level());
    // clean session / clean start (a v4 persistent session must not say clean)
    out.push(if persistent && version == Version::V4 {
        0
    } else {
        0x02
    });
    out.extend_from_slice(&keep_alive.to_be_bytes());
    out.extend_from_slice(props);
    put_str(out, client_id);
}

/// SUBSCRIBE to one filter at `qos`.
pub fn subscribe(out: &mut Vec<u8>, version: Version, packet_id: u16, filter: &[u8], qos: u8) {
    let props = usize::from(version == Version::V5);
    out.push(0x82);
    put_vbi(out, 2 + props + 2 + filter.len() + 1);
    out.extend_from_slice(&packet_id.to_be_bytes());
    if props == 1 {
        out.push(0); // no properties
    }
    put_str(out, filter);
    out.push(qos);
}

/// PUBLISH; `packet_id` is ignored at QoS 0.
pub fn publish(
    out: &mut Vec<u8>,
    version: Version,
    qos: u8,
    packet_id: u16,
    topic: &[u8],
    payload: &[u8],
) {
    let id_len = if qos > 0 { 2 } else { 0 };
    let props = usize::from(version == Version::V5);
    out.push(0x30 | (qos << 1));
    put_vbi(out, 2 + topic.len() + id_len + props + payload.len());
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    if props == 1 {
        out.push(0);
    }
    out.extend_from_slice(payload);
}

/// The size [`publish`] appends.
pub fn publish_len(version: Version, qos: u8, topic_len: usize, payload_len: usize) -> usize {
    let id_len = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic_len + id_len + usize::from(version == Version::V5) + payload_len;
    1 + vbi_len(remaining) + remaining
}

/// PUBACK, success; the two-byte form is valid in both versions [MQTT-3.4.2.1].
pub fn puback(out: &mut Vec<u8>, packet_id: u16) {
    let [hi, lo] = packet_id.to_be_bytes();
    out.extend_from_slice(&[0x40, 0x02, hi, lo]);
}

/// DISCONNECT, normal.
pub fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xE0, 0x00]);
}

/// CONNACK accepting a session, as the sink sends it.
pub fn connack(out: &mut Vec<u8>, version: Version) {
    match version {
        Version::V4 => out.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]),
        // no properties: Receive Maximum defaults to 65535
        Version::V5 => out.extend_from_slice(&[0x20, 0x03, 0x00, 0x00, 0x00]),
    }
}

/// SUBACK granting `qos` to one filter, as the sink sends it.
pub fn suback(out: &mut Vec<u8>, version: Version, packet_id: u16, qos: u8) {
    let [hi, lo] = packet_id.to_be_bytes();
    match version {
        Version::V4 => out.extend_from_slice(&[0x90, 0x03, hi, lo, qos]),
        Version::V5 => out.extend_from_slice(&[0x90, 0x04, hi, lo, 0, qos]),
    }
}

/// A packet parsed from the front of a buffer; slices borrow the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// CONNECT (what the sink receives).
    Connect {
        /// Protocol level.
        version: Version,
    },
    /// CONNACK: return code (v4) or reason code (v5), and the v5 Receive Maximum.
    ConnAck {
        /// 0 is success in both versions.
        code: u8,
        /// Receive Maximum from the properties (65535 when absent or v4).
        receive_maximum: u16,
    },
    /// PUBLISH.
    Publish {
        /// 0, 1 or 2.
        qos: u8,
        /// 0 at QoS 0.
        packet_id: u16,
        /// Topic name.
        topic: &'a [u8],
        /// Application message.
        payload: &'a [u8],
    },
    /// PUBACK.
    PubAck {
        /// Packet identifier acknowledged.
        packet_id: u16,
        /// Reason code (0 when omitted).
        code: u8,
    },
    /// SUBSCRIBE (what the sink receives): packet id and the first filter.
    Subscribe {
        /// Packet identifier.
        packet_id: u16,
        /// The first topic filter.
        filter: &'a [u8],
    },
    /// SUBACK: the first granted QoS or failure code.
    SubAck {
        /// Packet identifier.
        packet_id: u16,
        /// First return/reason code (0x80 and above are failures).
        code: u8,
    },
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT, with its reason code (0 when absent).
    Disconnect {
        /// Reason code.
        code: u8,
    },
    /// Any other packet type, skipped.
    Other {
        /// The packet type nibble.
        packet_type: u8,
    },
}

/// Why a received packet could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed packet from peer: {}", self.0)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Result<u8, Malformed> {
        let b = *self.buf.get(self.pos).ok_or(Malformed("truncated"))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or(Malformed("length"))?;
        let s = self.buf.get(self.pos..end).ok_or(Malformed("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    fn string(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u16()?;
        self.bytes(n.into())
    }
    fn vbi(&mut self) -> Result<usize, Malformed> {
        let mut value = 0usize;
        for shift in [0, 7, 14, 21] {
            let b = self.u8()?;
            value |= usize::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed("variable byte integer longer than 4 bytes"))
    }
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }
}

/// Walks a v5 property list, calling `f(id, value bytes)` for fixed-size values.
fn properties(c: &mut Cursor<'_>, mut f: impl FnMut(u8, &[u8])) -> Result<(), Malformed> {
    let len = c.vbi()?;
    let mut p = Cursor {
        buf: c.bytes(len)?,
        pos: 0,
    };
    while p.pos < p.buf.len() {
        let id = p.u8()?;
        match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => f(id, p.bytes(1)?),
            0x13 | 0x21 | 0x22 | 0x23 => f(id, p.bytes(2)?),
            0x02 | 0x11 | 0x18 | 0x27 => f(id, p.bytes(4)?),
            0x0B => {
                p.vbi()?;
            }
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                p.string()?;
            }
            0x26 => {
                p.string()?;
                p.string()?;
            }
            _ => return Err(Malformed("unknown property identifier")),
        }
    }
    Ok(())
}

/// Parses one packet from the front of `buf`: `Ok(Some((packet, bytes used)))`, or
/// `Ok(None)` when `buf` does not hold a whole packet yet. `version` is the
/// connection's protocol version (the sink passes `None` until CONNECT).
pub fn parse(
    buf: &[u8],
    version: Option<Version>,
) -> Result<Option<(Incoming<'_>, usize)>, Malformed> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut header = 1;
    loop {
        let Some(&b) = buf.get(header) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7F) << (7 * (header - 1));
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header == 5 {
            return Err(Malformed("remaining length longer than 4 bytes"));
        }
    }
    let total = header + remaining;
    if buf.len() < total {
        return Ok(None);
    }
    let mut c = Cursor {
        buf: &buf[header..total],
        pos: 0,
    };
    let v5 = version == Some(Version::V5);
    let packet = match first >> 4 {
        1 => {
            c.string()?;
            let version = match c.u8()? {
                5 => Version::V5,
                3 | 4 => Version::V4,
                _ => return Err(Malformed("unsupported protocol level")),
            };
            Incoming::Connect { version }
        }
        2 => {
            c.u8()?;
            let code = c.u8()?;
            let mut receive_maximum = u16::MAX;
            if v5 && c.pos < c.buf.len() {
                properties(&mut c, |id, v| {
                    if id == 0x21 {
                        receive_maximum = u16::from_be_bytes([v[0], v[1]]);
                    }
                })?;
            }
            Incoming::ConnAck {
                code,
                receive_maximum,
            }
        }
        3 => {
            let qos = (first >> 1) & 3;
            let topic = c.string()?;
            let packet_id = if qos > 0 { c.u16()? } else { 0 };
            if v5 {
                properties(&mut c, |_, _| {})?;
            }
            Incoming::Publish {
                qos,
                packet_id,
                topic,
                payload: c.rest(),
            }
        }
        4 => {
            let packet_id = c.u16()?;
            let code = if c.pos < c.buf.len() { c.u8()? } else { 0 };
            Incoming::PubAck { packet_id, code }
        }
        8 => {
            let packet_id = c.u16()?;
            if v5 {
                properties(&mut c, |_, _| {})?;
            }
            Incoming::Subscribe {
                packet_id,
                filter: c.string()?,
            }
        }
        9 => {
            let packet_id = c.u16()?;
            if v5 {
                properties(&mut c, |_, _| {})?;
            }
            Incoming::SubAck {
                packet_id,
                code: c.u8()?,
            }
        }
        12 => Incoming::PingReq,
        13 => Incoming::PingResp,
        14 => Incoming::Disconnect {
            code: if c.pos < c.buf.len() { c.u8()? } else { 0 },
        },
        packet_type => Incoming::Other { packet_type },
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use mqtt_proto::{Decoder, Packet, ProtocolVersion};

    fn proto(v: Version) -> ProtocolVersion {
        match v {
            Version::V4 => ProtocolVersion::V3_1_1,
            Version::V5 => ProtocolVersion::V5,
        }
    }

    /// Every packet the generator sends must be one brokk's own codec accepts, and
    /// the other way round for what the sink sends.
    #[test]
    fn encoders_agree_with_mqtt_proto() {
        for v in [Version::V4, Version::V5] {
            for persistent in [false, true] {
                let mut out = Vec::new();
                connect(&mut out, v, b"gen-1", 300, persistent);
                let mut input = BytesMut::from(&out[..]);
                let Some(Packet::Connect(c)) = Decoder::new(1 << 20).decode(&mut input).unwrap()
                else {
                    panic!("not a CONNECT")
                };
                assert_eq!(c.client_id.as_str(), "gen-1");
                assert_eq!(c.protocol, proto(v));
                let expiry = c.properties.session_expiry_interval.unwrap_or(0);
                let keeps = match v {
                    Version::V4 => !c.clean_start,
                    Version::V5 => expiry > 0,
                };
                assert_eq!(keeps, persistent, "{v:?}: a persistent session or not");
            }

            let mut dec = Decoder::with_version(proto(v), 1 << 20);
            for qos in [0u8, 1] {
                let mut out = Vec::new();
                publish(&mut out, v, qos, 7, b"bench/in/3", &[0xAB; 64]);
                assert_eq!(out.len(), publish_len(v, qos, 10, 64));
                let mut input = BytesMut::from(&out[..]);
                let Some(Packet::Publish(p)) = dec.decode(&mut input).unwrap() else {
                    panic!("not a PUBLISH")
                };
                assert_eq!(p.topic.as_str(), "bench/in/3");
                assert_eq!(p.payload.len(), 64);
                assert_eq!(p.packet_id.map(|id| id.get()), (qos == 1).then_some(7));
            }
            let mut out = Vec::new();
            subscribe(&mut out, v, 1, b"bench/in/+", 1);
            puback(&mut out, 9);
            disconnect(&mut out);
            let mut input = BytesMut::from(&out[..]);
            assert!(matches!(
                dec.decode(&mut input).unwrap(),
                Some(Packet::Subscribe(_))
            ));
            assert!(matches!(
                dec.decode(&mut input).unwrap(),
                Some(Packet::PubAck(_))
            ));
            assert!(matches!(
                dec.decode(&mut input).unwrap(),
                Some(Packet::Disconnect(_))
            ));
            assert!(input.is_empty());
        }
    }

    #[test]
    fn parser_reads_what_the_encoders_write_and_waits_for_whole_packets() {
        for v in [Version::V4, Version::V5] {
            let mut out = Vec::new();
            publish(&mut out, v, 1, 300, b"t/1", b"hello");
            puback(&mut out, 300);
            connack(&mut out, v);
            suback(&mut out, v, 2, 1);
            for cut in 0..out.len() {
                // a prefix of the first packet is never a packet
                if cut < publish_len(v, 1, 3, 5) {
                    assert_eq!(parse(&out[..cut], Some(v)).unwrap(), None);
                }
            }
            let mut at = 0;
            let mut got = Vec::new();
            while let Some((p, n)) = parse(&out[at..], Some(v)).unwrap() {
                got.push(format!("{p:?}"));
                at += n;
            }
            assert_eq!(at, out.len());
            assert_eq!(
                got,
                [
                    format!(
                        "{:?}",
                        Incoming::Publish {
                            qos: 1,
                            packet_id: 300,
                            topic: b"t/1",
                            payload: b"hello"
                        }
                    ),
                    format!(
                        "{:?}",
                        Incoming::PubAck {
                            packet_id: 300,
                            code: 0
                        }
                    ),
                    format!(
                        "{:?}",
                        Incoming::ConnAck {
                            code: 0,
                            receive_maximum: 65535
                        }
                    ),
                    format!(
                        "{:?}",
                        Incoming::SubAck {
                            packet_id: 2,
                            code: 1
                        }
                    ),
                ]
            );
        }
    }

    #[test]
    fn connack_properties_are_walked_for_receive_maximum() {
        // v5 CONNACK: flags 0, reason 0, properties: Topic Alias Maximum 10,
        // Assigned Client Identifier "ab", Receive Maximum 100
        let p = [
            0x20, 0x0E, 0, 0, 0x0B, 0x22, 0, 10, 0x12, 0, 2, b'a', b'b', 0x21, 0, 100,
        ];
        assert_eq!(
            parse(&p, Some(Version::V5)).unwrap(),
            Some((
                Incoming::ConnAck {
                    code: 0,
                    receive_maximum: 100
                },
                p.len()
            ))
        );
    }
}
