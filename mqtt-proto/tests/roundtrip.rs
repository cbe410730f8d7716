//! Property tests: for arbitrary packets of each version,
//!
//! * `decode(encode(p)) == p`, through `decode_packet` and through a `Decoder`;
//! * `encoded_len(p) == encode(p).len()`, and `Publish::encode` writes what
//!   `Packet::encode` of the same PUBLISH writes;
//! * a stream of several packets decodes to the same packets however its bytes are
//!   split into reads.
//!
//! The strategies generate every packet type with every field and property its
//! version can carry, and nothing else: 5.0-only fields (properties, reason codes
//! other than the ones 3.1.1 can express) stay at their defaults for 3.1 and 3.1.1,
//! and every invariant the types and the decoder demand is respected (it is cited
//! where it is applied).

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use mqtt_proto::{
    decode_packet, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, Decoder, Disconnect, DisconnectProperties, MqttString, Packet,
    PayloadFormat, ProtocolVersion, PubAck, Publish, PublishProperties, QoS, ReasonCode,
    ReasonContext, RetainHandling, SubAck, Subscribe, SubscribeProperties, SubscriptionOptions,
    TopicFilter, TopicName, UnsubAck, Unsubscribe, UnsubscribeProperties, UserProperties, Will,
    WillProperties, MAX_VARIABLE_BYTE_INTEGER,
};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::Union;

use ProtocolVersion::{V3_1, V3_1_1, V5};

// ---------------------------------------------------------------------------
// Strings, topics, binary data
// ---------------------------------------------------------------------------

/// Any character an MQTT string may hold: every Unicode scalar value except U+0000
/// [MQTT-1.5.4-2] (a `char` is never a surrogate [MQTT-1.5.4-1]), biased to ASCII so
/// that topics look like topics, with multi-byte characters often enough to matter.
fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        1 => any::<char>().prop_filter("U+0000 is forbidden [MQTT-1.5.4-2]", |c| *c != '\0'),
        1 => select(vec!['é', '€', '𪛔', '😀', '\u{FEFF}', '$', ' ']),
    ]
}

fn string(max_chars: usize) -> impl Strategy<Value = String> {
    vec(text_char(), 0..=max_chars).prop_map(String::from_iter)
}

fn mqtt_string(max_chars: usize) -> impl Strategy<Value = MqttString> {
    string(max_chars).prop_map(|s| MqttString::copy_from_str(&s).expect("no U+0000"))
}

/// A character of one topic level: not the separator, not a wildcard.
fn level_char() -> impl Strategy<Value = char> {
    text_char().prop_filter("not '/', '+' or '#'", |c| !matches!(c, '/' | '+' | '#'))
}

fn level() -> impl Strategy<Value = String> {
    vec(level_char(), 0..5).prop_map(String::from_iter)
}

/// A non-empty topic name without wildcards [MQTT-3.3.2-2] [MQTT-4.7.3-1]; levels may
/// be empty ("a//b", "/a") and may start with '$'.
fn topic_name() -> impl Strategy<Value = TopicName> {
    vec(level(), 1..4)
        .prop_map(|levels| levels.join("/"))
        .prop_filter(
            "a topic name is at least one character [MQTT-4.7.3-1]",
            |s| !s.is_empty(),
        )
        .prop_map(|s| TopicName::copy_from_str(&s).expect("no wildcards, no U+0000"))
}

/// A valid topic filter: '+' alone in any level, '#' alone in the last level
/// [MQTT-4.7.1-1] [MQTT-4.7.1-2], optionally shared as `$share/{name}/{filter}`
/// [MQTT-4.8.2-1] [MQTT-4.8.2-2]. Returns whether it is shared.
fn topic_filter() -> impl Strategy<Value = (TopicFilter, bool)> {
    let level = prop_oneof![3 => level(), 1 => Just("+".to_string())];
    let share_name = vec(level_char(), 1..5).prop_map(String::from_iter);
    (vec(level, 1..4), any::<bool>(), of(share_name))
        .prop_map(|(levels, multi, share)| {
            let mut f = levels.join("/");
            if multi {
                f = if f.is_empty() { "#".into() } else { f + "/#" };
            }
            let shared = share.is_some();
            if let Some(name) = share {
                f = format!("$share/{name}/{f}");
            }
            (f, shared)
        })
        .prop_filter(
            "a topic filter is at least one character [MQTT-4.7.3-1]",
            |(f, _)| !f.is_empty() && !f.ends_with("$share/"),
        )
        .prop_filter(
            "a shared filter names a non-empty filter [MQTT-4.8.2-2]",
            |(f, shared)| !*shared || !f.ends_with('/') || f.matches('/').count() > 2,
        )
        .prop_map(|(f, shared)| {
            let filter = TopicFilter::copy_from_str(&f)
                .unwrap_or_else(|e| panic!("strategy built an invalid filter {f:?}: {e}"));
            (filter, shared)
        })
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn packet_id() -> impl Strategy<Value = NonZeroU16> {
    // [MQTT-2.2.1-3] packet identifiers are non-zero.
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).expect("range starts at 1"))
}

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    packet_id()
}

fn nz32() -> impl Strategy<Value = NonZeroU32> {
    prop_oneof![
        (1..=u32::MAX).prop_map(|v| NonZeroU32::new(v).expect("range starts at 1")),
        Just(NonZeroU32::MIN),
    ]
}

/// A Subscription Identifier: a Variable Byte Integer from 1 to 268,435,455
/// [MQTT-3.8.2.1.2]; the edges of each encoded length are over-represented.
fn subscription_identifier() -> impl Strategy<Value = NonZeroU32> {
    prop_oneof![
        (1..=MAX_VARIABLE_BYTE_INTEGER),
        select(vec![
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_VARIABLE_BYTE_INTEGER
        ]),
    ]
    .prop_map(|v| NonZeroU32::new(v).expect("range starts at 1"))
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    // Keys may repeat: order and duplicates are significant [MQTT-3.3.2-18].
    vec((string(6), string(6)), 0..3).prop_map(|pairs| {
        UserProperties::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .expect("no U+0000")
    })
}

fn payload_format() -> impl Strategy<Value = PayloadFormat> {
    select(vec![PayloadFormat::Unspecified, PayloadFormat::Utf8])
}

/// Every reason code the 5.0 tables allow in `ctx`.
fn reason_in(ctx: ReasonContext) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = (0..=u8::MAX)
        .filter_map(ReasonCode::from_u8)
        .filter(|c| c.valid_in(ctx))
        .collect();
    select(codes)
}

/// `strategy` at 5.0, `T::default()` (what the older versions carry) otherwise.
fn v5_only<T, S>(v: ProtocolVersion, strategy: S) -> BoxedStrategy<T>
where
    T: Default + Clone + std::fmt::Debug + 'static,
    S: Strategy<Value = T> + 'static,
{
    if v.is_v5() {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

/// A reason code of `ctx` at 5.0; before 5.0 acknowledgements carry none, which the
/// `Packet` type spells Success.
fn success_before_v5(v: ProtocolVersion, ctx: ReasonContext) -> BoxedStrategy<ReasonCode> {
    if v.is_v5() {
        reason_in(ctx).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    }
}

/// Authentication Method and Data: Data only with a Method [MQTT-3.1.2.11.10].
fn authentication() -> impl Strategy<Value = (Option<MqttString>, Option<Bytes>)> {
    of((mqtt_string(8), of(binary(8)))).prop_map(|auth| match auth {
        Some((method, data)) => (Some(method), data),
        None => (None, None),
    })
}

// ---------------------------------------------------------------------------
// Properties, one strategy per packet
// ---------------------------------------------------------------------------

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        authentication(),
        of(any::<bool>()),
        of(any::<bool>()),
        of(nz16()),
        of(any::<u16>()),
        user_properties(),
        of(nz32()),
    )
        .prop_map(
            |(sei, (am, ad), rpi, rri, rm, tam, up, mps)| ConnectProperties {
                session_expiry_interval: sei,
                authentication_method: am,
                authentication_data: ad,
                request_problem_information: rpi,
                request_response_information: rri,
                receive_maximum: rm,
                topic_alias_maximum: tam,
                user_properties: up,
                maximum_packet_size: mps,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        of(payload_format()),
        of(any::<u32>()),
        of(mqtt_string(8)),
        of(topic_name()),
        of(binary(8)),
        of(any::<u32>()),
        user_properties(),
    )
        .prop_map(|(pfi, mei, ct, rt, cd, wdi, up)| WillProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            will_delay_interval: wdi,
            user_properties: up,
        })
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        of(payload_format()),
        of(any::<u32>()),
        of(mqtt_string(8)),
        of(topic_name()),
        of(binary(8)),
        vec(subscription_identifier(), 0..3),
        of(nz16()),
        user_properties(),
    )
        .prop_map(|(pfi, mei, ct, rt, cd, sids, ta, up)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: sids,
            topic_alias: ta,
            user_properties: up,
        })
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let first = (
        of(any::<u32>()),
        of(mqtt_string(8)),
        of(any::<u16>()),
        of((mqtt_string(8), of(binary(8)))),
        of(mqtt_string(8)),
        of(mqtt_string(8)),
        of(mqtt_string(8)),
    );
    let second = (
        of(nz16()),
        of(any::<u16>()),
        // Maximum QoS is 0 or 1 [MQTT-3.2.2-9].
        of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        of(any::<bool>()),
        user_properties(),
        of(nz32()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
    );
    (first, second).prop_map(
        |((sei, aci, ska, auth, ri, sr, rs), (rm, tam, mq, ra, up, mps, wsa, sia, ssa))| {
            let (am, ad) = match auth {
                Some((m, d)) => (Some(m), d),
                None => (None, None),
            };
            ConnAckProperties {
                session_expiry_interval: sei,
                assigned_client_identifier: aci,
                server_keep_alive: ska,
                authentication_method: am,
                authentication_data: ad,
                response_information: ri,
                server_reference: sr,
                reason_string: rs,
                receive_maximum: rm,
                topic_alias_maximum: tam,
                maximum_qos: mq,
                retain_available: ra,
                user_properties: up,
                maximum_packet_size: mps,
                wildcard_subscription_available: wsa,
                subscription_identifiers_available: sia,
                shared_subscription_available: ssa,
            }
        },
    )
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (of(mqtt_string(8)), user_properties()).prop_map(|(rs, up)| AckProperties {
        reason_string: rs,
        user_properties: up,
    })
}

fn subscribe_properties() -> impl Strategy<Value = SubscribeProperties> {
    (of(subscription_identifier()), user_properties()).prop_map(|(sid, up)| SubscribeProperties {
        subscription_identifier: sid,
        user_properties: up,
    })
}

fn unsubscribe_properties() -> impl Strategy<Value = UnsubscribeProperties> {
    user_properties().prop_map(|up| UnsubscribeProperties {
        user_properties: up,
    })
}

fn disconnect_properties() -> impl Strategy<Value = DisconnectProperties> {
    (
        of(any::<u32>()),
        of(mqtt_string(8)),
        of(mqtt_string(8)),
        user_properties(),
    )
        .prop_map(|(sei, sr, rs, up)| DisconnectProperties {
            session_expiry_interval: sei,
            server_reference: sr,
            reason_string: rs,
            user_properties: up,
        })
}

fn auth_properties() -> impl Strategy<Value = AuthProperties> {
    (authentication(), of(mqtt_string(8)), user_properties()).prop_map(|((am, ad), rs, up)| {
        AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: up,
        }
    })
}

// ---------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------

fn client_id(v: ProtocolVersion) -> BoxedStrategy<MqttString> {
    if v == V3_1 {
        // MQTT 3.1 section 3.1: 1 to 23 characters.
        vec(text_char(), 1..=23)
            .prop_map(|c| MqttString::copy_from_str(&String::from_iter(c)).expect("no U+0000"))
            .boxed()
    } else {
        // 3.1.1 and 5.0 allow a zero-length Client Identifier [MQTT-3.1.3-6].
        mqtt_string(30).boxed()
    }
}

fn will(v: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        binary(16),
        qos(),
        any::<bool>(),
        v5_only(v, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        client_id(v),
        of(will(v)),
        of(mqtt_string(8)),
        of(binary(8)),
        v5_only(v, connect_properties()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1 and 3.1.1: a password needs a user name [MQTT-3.1.2-22]; 5.0 allows
                // a password alone (3.1.2.9).
                let password = if v.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        reason_in(ReasonContext::ConnAck).boxed()
    } else {
        // The six return codes of 3.1/3.1.1 (3.1.1 Table 3.1), as their 5.0 names.
        (0..=5u8)
            .prop_map(|c| ReasonCode::from_connack_v3_code(c).expect("0..=5 are defined"))
            .boxed()
    };
    (any::<bool>(), code, v5_only(v, connack_properties())).prop_map(
        |(session_present, reason_code, properties)| {
            Packet::ConnAck(Box::new(ConnAck {
                session_present,
                reason_code,
                properties,
            }))
        },
    )
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let properties = v5_only(v, publish_properties());
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        properties,
        binary(32),
    )
        .prop_map(
            |(qos, dup, retain, topic, empty_topic, id, properties, payload)| {
                // [MQTT-3.3.1-2] DUP is 0 for QoS 0; the Packet Identifier is present
                // exactly when QoS > 0 [MQTT-2.2.1-2].
                let at_most_once = qos == QoS::AtMostOnce;
                // 5.0: an empty Topic Name only with a Topic Alias [MQTT-3.3.2-1]
                // (properties are default, so no alias, before 5.0).
                let topic = if empty_topic && properties.topic_alias.is_some() {
                    TopicName::default()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: (!at_most_once).then_some(id),
                    properties,
                    payload,
                })
            },
        )
}

fn pub_ack(v: ProtocolVersion, ctx: ReasonContext) -> impl Strategy<Value = PubAck> {
    (
        packet_id(),
        success_before_v5(v, ctx),
        v5_only(v, ack_properties()),
    )
        .prop_map(|(packet_id, reason_code, properties)| PubAck {
            packet_id,
            reason_code,
            properties,
        })
}

fn subscription_options(v: ProtocolVersion, shared: bool) -> BoxedStrategy<SubscriptionOptions> {
    if !v.is_v5() {
        return qos().prop_map(SubscriptionOptions::qos).boxed();
    }
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        select(vec![
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendIfNew,
            RetainHandling::DoNotSend,
        ]),
    )
        .prop_map(move |(qos, no_local, rap, rh)| SubscriptionOptions {
            qos,
            // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
            no_local: no_local && !shared,
            retain_as_published: rap,
            retain_handling: rh,
        })
        .boxed()
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let entry = topic_filter()
        .prop_flat_map(move |(filter, shared)| (Just(filter), subscription_options(v, shared)));
    // At least one filter [MQTT-3.8.3-3].
    (
        packet_id(),
        vec(entry, 1..4),
        v5_only(v, subscribe_properties()),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let granted = vec![
        ReasonCode::Success,
        ReasonCode::GrantedQoS1,
        ReasonCode::GrantedQoS2,
    ];
    let code = match v {
        V5 => reason_in(ReasonContext::SubAck).boxed(),
        // 3.1.1 adds one failure code, 0x80 [MQTT-3.9.3-2].
        V3_1_1 => select([granted, vec![ReasonCode::UnspecifiedError]].concat()).boxed(),
        // 3.1 has granted QoS codes only.
        V3_1 => select(granted).boxed(),
    };
    (packet_id(), vec(code, 1..5), v5_only(v, ack_properties())).prop_map(
        |(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        },
    )
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    // At least one filter [MQTT-3.10.3-2].
    (
        packet_id(),
        vec(topic_filter().prop_map(|(f, _)| f), 1..4),
        v5_only(v, unsubscribe_properties()),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    // 3.1.1 UNSUBACK has no payload; 5.0 has one code per filter, at least one.
    (
        packet_id(),
        v5_only(v, vec(reason_in(ReasonContext::UnsubAck), 1..5)),
        v5_only(v, ack_properties()),
    )
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
}

fn disconnect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        success_before_v5(v, ReasonContext::Disconnect),
        v5_only(v, disconnect_properties()),
    )
        .prop_map(|(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        })
}

fn auth() -> impl Strategy<Value = Packet> {
    (reason_in(ReasonContext::Auth), auth_properties()).prop_map(|(reason_code, properties)| {
        Packet::Auth(Auth {
            reason_code,
            properties,
        })
    })
}

/// Any packet version `v` can carry, every type equally likely.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut types = vec![
        connect(v).boxed(),
        connack(v).boxed(),
        publish(v).boxed(),
        pub_ack(v, ReasonContext::PubAckOrPubRec)
            .prop_map(Packet::PubAck)
            .boxed(),
        pub_ack(v, ReasonContext::PubAckOrPubRec)
            .prop_map(Packet::PubRec)
            .boxed(),
        pub_ack(v, ReasonContext::PubRelOrPubComp)
            .prop_map(Packet::PubRel)
            .boxed(),
        pub_ack(v, ReasonContext::PubRelOrPubComp)
            .prop_map(Packet::PubComp)
            .boxed(),
        subscribe(v).boxed(),
        suback(v).boxed(),
        unsubscribe(v).boxed(),
        unsuback(v).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(v).boxed(),
    ];
    if v.is_v5() {
        types.push(auth().boxed());
    }
    Union::new(types).boxed()
}

// ---------------------------------------------------------------------------
// Properties under test
// ---------------------------------------------------------------------------

fn encode(v: ProtocolVersion, p: &Packet) -> Result<BytesMut, TestCaseError> {
    let mut buf = BytesMut::new();
    p.encode(v, &mut buf)
        .map_err(|e| TestCaseError::fail(format!("encode {p:?} at {v}: {e}")))?;
    Ok(buf)
}

fn check_roundtrip(v: ProtocolVersion, p: &Packet) -> Result<(), TestCaseError> {
    let bytes = encode(v, p)?;
    prop_assert_eq!(bytes.len(), p.encoded_len(v), "encoded_len of {:?}", p);
    // A PUBLISH encodes the same without being moved into a `Packet`.
    if let Packet::Publish(publish) = p {
        let mut alone = BytesMut::new();
        publish
            .encode(v, &mut alone)
            .map_err(|e| TestCaseError::fail(format!("Publish::encode {p:?}: {e}")))?;
        prop_assert_eq!(&alone[..], &bytes[..], "Publish::encode of {:?}", p);
        prop_assert_eq!(publish.encoded_len(v), bytes.len());
    }

    let decoded = decode_packet(Some(v), bytes.clone().freeze())
        .map_err(|e| TestCaseError::fail(format!("decode {bytes:02x?}: {e}")))?;
    prop_assert_eq!(&decoded, p, "decode_packet of {:02x?}", &bytes[..]);

    let mut buf = bytes.clone();
    let mut decoder = Decoder::with_version(v, u32::MAX);
    let streamed = decoder
        .decode(&mut buf)
        .map_err(|e| TestCaseError::fail(format!("Decoder on {bytes:02x?}: {e}")))?;
    prop_assert_eq!(streamed.as_ref(), Some(p));
    prop_assert!(buf.is_empty(), "Decoder left {} bytes", buf.len());
    Ok(())
}

/// Feeds `wire` into one `BytesMut` in chunks ending at `cuts`, draining the decoder
/// after each chunk as a connection would after each read.
fn decode_in_chunks(
    mut decoder: Decoder,
    wire: &[u8],
    cuts: &[Index],
) -> Result<Vec<Packet>, TestCaseError> {
    let mut ends: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
    ends.push(wire.len());
    ends.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for end in ends {
        buf.extend_from_slice(&wire[start..end]);
        start = end;
        while let Some(p) = decoder
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(format!("decode error {e} in {wire:02x?}")))?
        {
            out.push(p);
        }
    }
    prop_assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    Ok(out)
}

fn check_split_stream(
    v: ProtocolVersion,
    connect: Packet,
    rest: Vec<Packet>,
    cuts: Vec<Index>,
) -> Result<(), TestCaseError> {
    // A server-side decoder: learns the version from the CONNECT in front.
    let packets: Vec<Packet> = std::iter::once(connect).chain(rest).collect();
    let mut wire = BytesMut::new();
    for p in &packets {
        wire.extend_from_slice(&encode(v, p)?);
    }
    let server = decode_in_chunks(Decoder::new(u32::MAX), &wire, &cuts)?;
    prop_assert_eq!(&server, &packets);

    // A decoder that knows the version from the start, fed the same bytes one at a
    // time: the most extreme split.
    let mut decoder = Decoder::with_version(v, u32::MAX);
    let mut buf = BytesMut::new();
    let mut bytewise = Vec::new();
    for &b in wire.iter() {
        buf.extend_from_slice(&[b]);
        while let Some(p) = decoder
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(format!("decode error {e}")))?
        {
            bytewise.push(p);
        }
    }
    prop_assert_eq!(&bytewise, &packets);
    Ok(())
}

fn connect_only(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    connect(v)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        // Shrinking stops early: a failing packet is small enough to read anyway.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    })]

    #[test]
    fn roundtrip_v3_1(p in packet(V3_1)) {
        check_roundtrip(V3_1, &p)?;
    }

    #[test]
    fn roundtrip_v3_1_1(p in packet(V3_1_1)) {
        check_roundtrip(V3_1_1, &p)?;
    }

    #[test]
    fn roundtrip_v5(p in packet(V5)) {
        check_roundtrip(V5, &p)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_split_of_a_stream_decodes_identically_v3_1(
        c in connect_only(V3_1), rest in vec(packet(V3_1), 0..6), cuts in vec(any::<Index>(), 0..8)
    ) {
        check_split_stream(V3_1, c, rest, cuts)?;
    }

    #[test]
    fn any_split_of_a_stream_decodes_identically_v3_1_1(
        c in connect_only(V3_1_1), rest in vec(packet(V3_1_1), 0..6), cuts in vec(any::<Index>(), 0..8)
    ) {
        check_split_stream(V3_1_1, c, rest, cuts)?;
    }

    #[test]
    fn any_split_of_a_stream_decodes_identically_v5(
        c in connect_only(V5), rest in vec(packet(V5), 0..6), cuts in vec(any::<Index>(), 0..8)
    ) {
        check_split_stream(V5, c, rest, cuts)?;
    }
}

/// Every packet type is actually generated for each version (a strategy that
/// silently stopped producing a type would make the round trips above vacuous).
#[test]
fn strategies_cover_every_packet_type() {
    use proptest::test_runner::TestRunner;
    for v in [V3_1, V3_1_1, V5] {
        let mut runner = TestRunner::deterministic();
        let strategy = packet(v);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let p = strategy.new_tree(&mut runner).expect("strategy").current();
            seen.insert(p.packet_type());
        }
        let expected: Vec<u8> = if v.is_v5() {
            (1..=15).collect()
        } else {
            (1..=14).collect()
        };
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected, "at {v}");
    }
}
