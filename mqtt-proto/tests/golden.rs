//! Golden vectors: packets written by implementations nobody on this team wrote
//! (mosquitto broker and clients, paho-mqtt, MQTT.js), captured byte for byte into
//! `tests/fixtures/golden/` by `scripts/capture-golden.py` (see the README there).
//!
//! For every manifest entry: decode the file at its protocol level (a CONNECT through
//! a server decoder that must learn the level from it; anything else through a
//! decoder of that version, as after CONNECT), check every field the entry's `expect`
//! names (its `properties` exhaustively), and re-encode byte for byte. Where the other
//! implementation chose a form the specification allows but our encoder does not
//! write, the fixture is listed in [`NON_CANONICAL`] with the reason, the difference
//! is checked to be exactly of that kind, and the re-encoding must decode to the same
//! packet. Nothing is skipped silently: a listed fixture that re-encodes identically
//! fails too, so the list cannot go stale.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use mqtt_proto::{
    decode_packet, AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, Decoder,
    DisconnectProperties, Packet, ProtocolVersion, PublishProperties, QoS, ReasonCode,
    SubscribeProperties, UnsubscribeProperties, UserProperties, WillProperties,
};
use serde_json::{json, Map, Value};

/// Why a fixture's bytes differ from our encoding of what they decode to.
#[derive(Debug, Clone, Copy)]
enum Difference {
    /// 5.0 allows properties in any order (section 2.2.2.2); we write them in
    /// ascending identifier order. Checked: same length and the same bytes, permuted.
    PropertyOrder,
    /// 5.0 lets a Success reason code and an empty property block be omitted from
    /// PUBACK / PUBREC / PUBREL / PUBCOMP (section 3.4.2.1 and its siblings); we omit
    /// them. Checked: the fixture is our encoding plus `00 00` (Remaining Length 4).
    ExplicitSuccessAndNoProperties,
}

/// Fixtures whose bytes are a legitimate non-canonical encoding, with the reason.
const NON_CANONICAL: &[(&str, Difference, &str)] = &[
    (
        "mosquitto_pub-v5-001-connect.bin",
        Difference::PropertyOrder,
        "libmosquitto writes CONNECT properties in its own order \
         (0x11 0x21 0x27 0x22 0x19 0x17 0x26), not ascending",
    ),
    (
        "mosquitto_pub-v5-002-publish.bin",
        Difference::PropertyOrder,
        "mosquitto_pub writes PUBLISH properties in the order of its -D options, \
         user properties first",
    ),
    (
        "mosquitto_pub-v5-004-connect.bin",
        Difference::PropertyOrder,
        "libmosquitto writes Will Delay Interval (0x18) before the other will properties",
    ),
    (
        "mosquitto_sub-v5-001-connect.bin",
        Difference::PropertyOrder,
        "mosquitto_sub writes its user property (0x26) before Receive Maximum (0x21)",
    ),
    (
        "mqttjs-v5-001-connect.bin",
        Difference::PropertyOrder,
        "MQTT.js writes CONNECT properties in its own order (0x11 0x21 0x27 0x22 0x19 \
         0x17 0x26) and Will Delay Interval first among the will properties",
    ),
    (
        "mqttjs-v5-003-pubrec.bin",
        Difference::ExplicitSuccessAndNoProperties,
        "MQTT.js spells out reason code 0x00 and property length 0 in PUBREC",
    ),
    (
        "mqttjs-v5-004-pubcomp.bin",
        Difference::ExplicitSuccessAndNoProperties,
        "MQTT.js spells out reason code 0x00 and property length 0 in PUBCOMP",
    ),
    (
        "mqttjs-v5-007-pubrel.bin",
        Difference::ExplicitSuccessAndNoProperties,
        "MQTT.js spells out reason code 0x00 and property length 0 in PUBREL",
    ),
    (
        "mosquitto-broker-v5-001-connack.bin",
        Difference::PropertyOrder,
        "mosquitto writes Topic Alias Maximum (0x22) before Receive Maximum (0x21)",
    ),
    (
        "mosquitto-broker-v5-002-connack.bin",
        Difference::PropertyOrder,
        "mosquitto writes 0x22, 0x13, 0x12, 0x21: descending-ish, not ascending",
    ),
    (
        "mosquitto-broker-v5-005-publish.bin",
        Difference::PropertyOrder,
        "mosquitto puts the Subscription Identifier (0x0B) first and the publisher's \
         properties after it, in the order it stored them",
    ),
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn version(level: u64) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        5 => ProtocolVersion::V5,
        other => panic!("manifest protocol_level {other} is not 3, 4 or 5"),
    }
}

// ---------------------------------------------------------------------------
// The manifest's view of a packet
// ---------------------------------------------------------------------------

/// Binary data in the view: compared with a text `expect` as UTF-8, or with a
/// `*_hex` key as hex.
fn bin(b: &[u8]) -> Value {
    json!({ "$bin": hex(b) })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn as_bin(v: &Value) -> Option<Vec<u8>> {
    let h = v.as_object()?.get("$bin")?.as_str()?;
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
        .collect()
}

/// Builds a `properties` object holding only the properties present.
#[derive(Default)]
struct Props(Map<String, Value>);

impl Props {
    fn put(&mut self, name: &str, v: Option<Value>) -> &mut Self {
        if let Some(v) = v {
            self.0.insert(name.into(), v);
        }
        self
    }
    fn int<T: Into<u64>>(&mut self, name: &str, v: Option<T>) -> &mut Self {
        self.put(name, v.map(|v| json!(v.into())))
    }
    fn flag(&mut self, name: &str, v: Option<bool>) -> &mut Self {
        self.put(name, v.map(|v| json!(u64::from(v))))
    }
    fn text(&mut self, name: &str, v: Option<&str>) -> &mut Self {
        self.put(name, v.map(|v| json!(v)))
    }
    fn bin(&mut self, name: &str, v: Option<&Bytes>) -> &mut Self {
        self.put(name, v.map(|v| bin(v)))
    }
    fn user(&mut self, up: &UserProperties) -> &mut Self {
        if !up.is_empty() {
            let pairs: Vec<Value> = up.iter().map(|(k, v)| json!([k, v])).collect();
            self.0.insert("user_properties".into(), Value::Array(pairs));
        }
        self
    }
    fn done(&mut self) -> Value {
        Value::Object(std::mem::take(&mut self.0))
    }
}

fn connect_props(p: &ConnectProperties) -> Value {
    Props::default()
        .int("session_expiry_interval", p.session_expiry_interval)
        .text(
            "authentication_method",
            p.authentication_method.as_ref().map(|s| s.as_str()),
        )
        .bin("authentication_data", p.authentication_data.as_ref())
        .flag("request_problem_information", p.request_problem_information)
        .flag(
            "request_response_information",
            p.request_response_information,
        )
        .int("receive_maximum", p.receive_maximum.map(|v| v.get()))
        .int("topic_alias_maximum", p.topic_alias_maximum)
        .int(
            "maximum_packet_size",
            p.maximum_packet_size.map(|v| v.get()),
        )
        .user(&p.user_properties)
        .done()
}

fn will_props(p: &WillProperties) -> Value {
    Props::default()
        .int(
            "payload_format_indicator",
            p.payload_format_indicator.map(|f| f as u8),
        )
        .int("message_expiry_interval", p.message_expiry_interval)
        .text("content_type", p.content_type.as_ref().map(|s| s.as_str()))
        .text(
            "response_topic",
            p.response_topic.as_ref().map(|s| s.as_str()),
        )
        .bin("correlation_data", p.correlation_data.as_ref())
        .int("will_delay_interval", p.will_delay_interval)
        .user(&p.user_properties)
        .done()
}

fn publish_props(p: &PublishProperties) -> Value {
    let sids = (!p.subscription_identifiers.is_empty()).then(|| {
        Value::Array(
            p.subscription_identifiers
                .iter()
                .map(|s| json!(s.get()))
                .collect(),
        )
    });
    Props::default()
        .int(
            "payload_format_indicator",
            p.payload_format_indicator.map(|f| f as u8),
        )
        .int("message_expiry_interval", p.message_expiry_interval)
        .text("content_type", p.content_type.as_ref().map(|s| s.as_str()))
        .text(
            "response_topic",
            p.response_topic.as_ref().map(|s| s.as_str()),
        )
        .bin("correlation_data", p.correlation_data.as_ref())
        .put("subscription_identifiers", sids)
        .int("topic_alias", p.topic_alias.map(|v| v.get()))
        .user(&p.user_properties)
        .done()
}

fn connack_props(p: &ConnAckProperties) -> Value {
    Props::default()
        .int("session_expiry_interval", p.session_expiry_interval)
        .text(
            "assigned_client_identifier",
            p.assigned_client_identifier.as_ref().map(|s| s.as_str()),
        )
        .int("server_keep_alive", p.server_keep_alive)
        .text(
            "authentication_method",
            p.authentication_method.as_ref().map(|s| s.as_str()),
        )
        .bin("authentication_data", p.authentication_data.as_ref())
        .text(
            "response_information",
            p.response_information.as_ref().map(|s| s.as_str()),
        )
        .text(
            "server_reference",
            p.server_reference.as_ref().map(|s| s.as_str()),
        )
        .text(
            "reason_string",
            p.reason_string.as_ref().map(|s| s.as_str()),
        )
        .int("receive_maximum", p.receive_maximum.map(|v| v.get()))
        .int("topic_alias_maximum", p.topic_alias_maximum)
        .int("maximum_qos", p.maximum_qos.map(QoS::as_u8))
        .flag("retain_available", p.retain_available)
        .int(
            "maximum_packet_size",
            p.maximum_packet_size.map(|v| v.get()),
        )
        .flag(
            "wildcard_subscription_available",
            p.wildcard_subscription_available,
        )
        .flag(
            "subscription_identifier_available",
            p.subscription_identifiers_available,
        )
        .flag(
            "shared_subscription_available",
            p.shared_subscription_available,
        )
        .user(&p.user_properties)
        .done()
}

fn ack_props(p: &AckProperties) -> Value {
    Props::default()
        .text(
            "reason_string",
            p.reason_string.as_ref().map(|s| s.as_str()),
        )
        .user(&p.user_properties)
        .done()
}

fn subscribe_props(p: &SubscribeProperties) -> Value {
    Props::default()
        .int(
            "subscription_identifier",
            p.subscription_identifier.map(|v| v.get()),
        )
        .user(&p.user_properties)
        .done()
}

fn unsubscribe_props(p: &UnsubscribeProperties) -> Value {
    Props::default().user(&p.user_properties).done()
}

fn disconnect_props(p: &DisconnectProperties) -> Value {
    Props::default()
        .int("session_expiry_interval", p.session_expiry_interval)
        .text(
            "server_reference",
            p.server_reference.as_ref().map(|s| s.as_str()),
        )
        .text(
            "reason_string",
            p.reason_string.as_ref().map(|s| s.as_str()),
        )
        .user(&p.user_properties)
        .done()
}

fn auth_props(p: &AuthProperties) -> Value {
    Props::default()
        .text(
            "authentication_method",
            p.authentication_method.as_ref().map(|s| s.as_str()),
        )
        .bin("authentication_data", p.authentication_data.as_ref())
        .text(
            "reason_string",
            p.reason_string.as_ref().map(|s| s.as_str()),
        )
        .user(&p.user_properties)
        .done()
}

/// The 3.x SUBACK return code for a decoded reason code.
fn suback_v3(code: ReasonCode) -> u64 {
    match code {
        ReasonCode::Success => 0,
        ReasonCode::GrantedQoS1 => 1,
        ReasonCode::GrantedQoS2 => 2,
        _ => 0x80,
    }
}

/// The packet in the manifest's vocabulary (see the fixtures' README).
fn view(p: &Packet, v: ProtocolVersion) -> Value {
    let v5 = v.is_v5();
    let mut o = Map::new();
    let mut set = |k: &str, val: Value| {
        o.insert(k.to_string(), val);
    };
    match p {
        Packet::Connect(c) => {
            set(
                "protocol_name",
                json!(String::from_utf8_lossy(c.protocol.protocol_name())),
            );
            set("protocol_level", json!(c.protocol.level()));
            set("client_id", json!(c.client_id.as_str()));
            set("keep_alive", json!(c.keep_alive));
            set("clean_start", json!(c.clean_start));
            set("username", json!(c.username.as_ref().map(|u| u.as_str())));
            set(
                "password",
                c.password.as_ref().map_or(Value::Null, |p| bin(p)),
            );
            set(
                "will",
                c.will.as_ref().map_or(Value::Null, |w| {
                    let mut will = json!({
                        "topic": w.topic.as_str(),
                        "payload": bin(&w.payload),
                        "qos": w.qos.as_u8(),
                        "retain": w.retain,
                    });
                    if c.protocol.is_v5() {
                        will["properties"] = will_props(&w.properties);
                    }
                    will
                }),
            );
            if c.protocol.is_v5() {
                set("properties", connect_props(&c.properties));
            }
        }
        Packet::ConnAck(c) => {
            set("session_present", json!(c.session_present));
            if v5 {
                set("reason_code", json!(c.reason_code.as_u8()));
                set("properties", connack_props(&c.properties));
            } else {
                set("reason_code", json!(c.reason_code.connack_v3_code()));
            }
        }
        Packet::Publish(p) => {
            set("topic", json!(p.topic.as_str()));
            set("qos", json!(p.qos.as_u8()));
            set("retain", json!(p.retain));
            set("dup", json!(p.dup));
            if let Some(id) = p.packet_id {
                set("packet_id", json!(id.get()));
            }
            set("payload", bin(&p.payload));
            if v5 {
                set("properties", publish_props(&p.properties));
            }
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            set("packet_id", json!(a.packet_id.get()));
            if v5 {
                set("reason_code", json!(a.reason_code.as_u8()));
                set("properties", ack_props(&a.properties));
            }
        }
        Packet::Subscribe(s) => {
            set("packet_id", json!(s.packet_id.get()));
            let filters = s
                .filters
                .iter()
                .map(|(f, o)| {
                    let mut e = json!({ "filter": f.as_str(), "qos": o.qos.as_u8() });
                    if v5 {
                        e["no_local"] = json!(o.no_local);
                        e["retain_as_published"] = json!(o.retain_as_published);
                        e["retain_handling"] = json!(o.retain_handling as u8);
                    }
                    e
                })
                .collect();
            set("filters", Value::Array(filters));
            if v5 {
                set("properties", subscribe_props(&s.properties));
            }
        }
        Packet::SubAck(s) => {
            set("packet_id", json!(s.packet_id.get()));
            let codes = s
                .reason_codes
                .iter()
                .map(|c| {
                    json!(if v5 {
                        u64::from(c.as_u8())
                    } else {
                        suback_v3(*c)
                    })
                })
                .collect();
            set("reason_codes", Value::Array(codes));
            if v5 {
                set("properties", ack_props(&s.properties));
            }
        }
        Packet::Unsubscribe(u) => {
            set("packet_id", json!(u.packet_id.get()));
            let filters = u.filters.iter().map(|f| json!(f.as_str())).collect();
            set("filters", Value::Array(filters));
            if v5 {
                set("properties", unsubscribe_props(&u.properties));
            }
        }
        Packet::UnsubAck(u) => {
            set("packet_id", json!(u.packet_id.get()));
            if v5 {
                let codes = u.reason_codes.iter().map(|c| json!(c.as_u8())).collect();
                set("reason_codes", Value::Array(codes));
                set("properties", ack_props(&u.properties));
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                set("reason_code", json!(d.reason_code.as_u8()));
                set("properties", disconnect_props(&d.properties));
            }
        }
        Packet::Auth(a) => {
            set("reason_code", json!(a.reason_code.as_u8()));
            set("properties", auth_props(&a.properties));
        }
    }
    Value::Object(o)
}

/// Every key of `expect` must match `got` (as the capture script's `compare` does):
/// `*_hex` keys compare binary data as hex, text compares with binary data as UTF-8,
/// `"<any>"` accepts any present value, and a `properties` object is exhaustive.
fn compare(expect: &Value, got: &Value, path: &str, errs: &mut Vec<String>) {
    match expect {
        Value::Object(e) => {
            let Some(g) = got.as_object() else {
                errs.push(format!("{path}: expected an object, got {got}"));
                return;
            };
            for (k, ev) in e {
                let hex_key = k.strip_suffix("_hex");
                let (gk, as_hex) = match hex_key {
                    Some(base) if !g.contains_key(k) => (base, true),
                    _ => (k.as_str(), false),
                };
                let Some(gv) = g.get(gk) else {
                    errs.push(format!("{path}.{k}: missing in the decoded packet"));
                    continue;
                };
                if as_hex {
                    match as_bin(gv) {
                        Some(b) if Some(hex(&b).as_str()) == ev.as_str() => {}
                        _ => errs.push(format!("{path}.{k}: expected {ev}, got {gv}")),
                    }
                } else {
                    compare(ev, gv, &format!("{path}.{k}"), errs);
                }
            }
            if path.ends_with(".properties") {
                let named: BTreeSet<&str> = e
                    .keys()
                    .map(|k| k.strip_suffix("_hex").unwrap_or(k))
                    .collect();
                let extra: Vec<&String> =
                    g.keys().filter(|k| !named.contains(k.as_str())).collect();
                if !extra.is_empty() {
                    errs.push(format!("{path}: unexpected properties {extra:?} in {got}"));
                }
            }
        }
        Value::String(s) if s == "<any>" => {}
        Value::Array(e) => match got.as_array() {
            Some(g) if g.len() == e.len() => {
                for (i, (ev, gv)) in e.iter().zip(g).enumerate() {
                    compare(ev, gv, &format!("{path}[{i}]"), errs);
                }
            }
            _ => errs.push(format!("{path}: expected {expect}, got {got}")),
        },
        Value::String(s) if as_bin(got).is_some() => {
            let b = as_bin(got).unwrap_or_default();
            if std::str::from_utf8(&b) != Ok(s.as_str()) {
                errs.push(format!(
                    "{path}: expected text {s:?}, got bytes {}",
                    hex(&b)
                ));
            }
        }
        _ => {
            if expect != got {
                errs.push(format!("{path}: expected {expect}, got {got}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

fn load_manifest() -> Vec<Value> {
    let path = golden_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the golden fixtures are missing (scripts/capture-golden.py writes them)",
            path.display()
        )
    });
    let manifest: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let entries = manifest
        .as_array()
        .unwrap_or_else(|| panic!("{}: expected a list of entries", path.display()))
        .clone();
    assert!(
        !entries.is_empty(),
        "{}: no fixtures; a golden test over nothing proves nothing",
        path.display()
    );
    entries
}

fn field<'a>(entry: &'a Value, key: &str) -> &'a Value {
    entry
        .get(key)
        .unwrap_or_else(|| panic!("manifest entry without {key:?}: {entry}"))
}

/// Decodes one fixture, checks its `expect` and re-encodes it.
fn check_fixture(entry: &Value) -> Result<(), String> {
    let file = field(entry, "file")
        .as_str()
        .ok_or("file is not a string")?;
    let v = version(field(entry, "protocol_level").as_u64().ok_or("bad level")?);
    let packet_type = field(entry, "packet_type").as_str().ok_or("bad type")?;
    let bytes = std::fs::read(golden_dir().join(file)).map_err(|e| format!("read: {e}"))?;

    // A CONNECT arrives first on a connection: the server decoder learns the version
    // from it. Everything else is decoded as after CONNECT, at the fixture's version.
    let mut decoder = if packet_type == "CONNECT" {
        Decoder::new(1 << 20)
    } else {
        Decoder::with_version(v, 1 << 20)
    };
    let mut buf = BytesMut::from(&bytes[..]);
    let packet = match decoder.decode(&mut buf) {
        Ok(Some(p)) => p,
        Ok(None) => return Err("incomplete packet".into()),
        Err(e) => return Err(format!("decode error: {e} ({e:?}) in {}", hex(&bytes))),
    };
    if !buf.is_empty() {
        return Err(format!("{} bytes after the packet", buf.len()));
    }
    if decoder.version() != Some(v) {
        return Err(format!("decoder version {:?}, want {v}", decoder.version()));
    }
    if packet.name() != packet_type {
        return Err(format!("decoded a {}, want {packet_type}", packet.name()));
    }

    let mut errs = Vec::new();
    compare(
        field(entry, "expect"),
        &view(&packet, v),
        "expect",
        &mut errs,
    );
    if !errs.is_empty() {
        return Err(errs.join("\n    "));
    }

    let mut out = BytesMut::new();
    packet
        .encode(v, &mut out)
        .map_err(|e| format!("re-encode: {e}"))?;
    if out.len() != packet.encoded_len(v) {
        return Err("encoded_len disagrees with encode".into());
    }
    let listed = NON_CANONICAL.iter().find(|(f, _, _)| *f == file);
    // The capture script flags senders that wrote optional fields a shortest-form
    // encoder leaves out; those must be the fixtures listed for exactly that reason.
    let minimal = entry.get("minimal_encoding").and_then(Value::as_bool);
    let listed_explicit = matches!(
        listed,
        Some((_, Difference::ExplicitSuccessAndNoProperties, _))
    );
    if minimal == Some(false) && !listed_explicit {
        return Err("manifest says minimal_encoding: false; list it in NON_CANONICAL".into());
    }
    if listed_explicit && minimal != Some(false) {
        return Err("listed as ExplicitSuccessAndNoProperties, manifest disagrees".into());
    }
    match (out[..] == bytes[..], listed) {
        (true, None) => Ok(()),
        (true, Some(_)) => Err(format!(
            "listed in NON_CANONICAL but re-encodes byte for byte: remove it ({})",
            hex(&bytes)
        )),
        (false, None) => Err(format!(
            "re-encoding differs:\n      fixture {}\n      ours    {}",
            hex(&bytes),
            hex(&out)
        )),
        // The reason is for the reader of this file; the check is the difference's.
        (false, Some((_, difference, _reason))) => {
            check_difference(*difference, &bytes, &out)?;
            // The same packet either way: decode(encode(decode(bytes))) == decode(bytes).
            let again = decode_packet(Some(v), out.freeze())
                .map_err(|e| format!("our re-encoding does not decode: {e}"))?;
            if again != packet {
                return Err(format!("our re-encoding decodes to {again:?}"));
            }
            Ok(())
        }
    }
}

fn check_difference(d: Difference, theirs: &[u8], ours: &[u8]) -> Result<(), String> {
    let ok = match d {
        Difference::PropertyOrder => {
            let (mut a, mut b) = (theirs.to_vec(), ours.to_vec());
            a.sort_unstable();
            b.sort_unstable();
            theirs.len() == ours.len() && theirs[..2] == ours[..2] && a == b
        }
        Difference::ExplicitSuccessAndNoProperties => {
            ours.len() == 4
                && ours[1] == 2
                && theirs.len() == 6
                && theirs[0] == ours[0]
                && theirs[1] == 4
                && theirs[2..4] == ours[2..4]
                && theirs[4..] == [0, 0]
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "differs by more than {d:?}:\n      fixture {}\n      ours    {}",
            hex(theirs),
            hex(ours)
        ))
    }
}

#[test]
fn golden_fixtures_decode_and_reencode() {
    let entries = load_manifest();
    let mut failures = Vec::new();
    let mut files = BTreeSet::new();
    for entry in &entries {
        let file = field(entry, "file").as_str().unwrap_or("?").to_string();
        if let Err(e) = check_fixture(entry) {
            failures.push(format!("  {file}: {e}"));
        }
        files.insert(file);
    }
    for (file, _, _) in NON_CANONICAL {
        if !files.contains(*file) {
            failures.push(format!(
                "  {file}: listed in NON_CANONICAL but not in the manifest"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden fixtures failed:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}

/// Every fixture file is in the manifest, and every packet type of each version
/// is covered at least once: a capture run that silently lost a type shows here.
#[test]
fn golden_fixtures_are_complete() {
    let entries = load_manifest();
    let listed: BTreeSet<String> = entries
        .iter()
        .map(|e| field(e, "file").as_str().unwrap_or("?").to_string())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    let unlisted: Vec<_> = on_disk.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "fixtures not in the manifest: {unlisted:?}"
    );

    let mut types = std::collections::BTreeMap::<u64, BTreeSet<String>>::new();
    for e in &entries {
        types
            .entry(field(e, "protocol_level").as_u64().unwrap_or(0))
            .or_default()
            .insert(field(e, "packet_type").as_str().unwrap_or("?").to_string());
    }
    for (level, ts) in &types {
        eprintln!("protocol level {level}: {ts:?}");
    }
    for level in [4, 5] {
        let seen = types.get(&level).cloned().unwrap_or_default();
        for t in [
            "CONNECT",
            "CONNACK",
            "PUBLISH",
            "PUBACK",
            "PUBREC",
            "PUBREL",
            "PUBCOMP",
            "SUBSCRIBE",
            "SUBACK",
            "UNSUBSCRIBE",
            "UNSUBACK",
            "PINGRESP",
            "DISCONNECT",
        ] {
            assert!(seen.contains(t), "no {t} fixture at protocol level {level}");
        }
    }
}
