//! SUBSCRIBE and UNSUBSCRIBE: wildcards, granted QoS, overlapping subscriptions,
//! the authorization hook, UNSUBACK.
mod sim;

use mqtt_proto::*;
use sim::*;

const V3: ProtocolVersion = ProtocolVersion::V3_1;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Which of `topics` reach a subscriber of `filter`.
fn matched(filter: &str, topics: &[&str]) -> Vec<String> {
    let mut sim = Sim::default();
    let s = sim.connect(V5, "s", true);
    let p = sim.connect(V5, "p", true);
    sim.subscribe(s, filter, QoS::AtMostOnce);
    for t in topics {
        sim.publish(p, t, QoS::AtMostOnce, false, t.as_bytes());
    }
    sim.publishes(s)
        .into_iter()
        .map(|p| p.topic.as_str().to_owned())
        .collect()
}

// ------------------------------------------------------------------ wildcards

#[test]
fn single_level_wildcard_matches_exactly_one_level_mqtt_4_7_1_3() {
    let topics = ["a/b/c", "a//c", "a/b/d", "a/b/c/d", "a/c", "x/b/c"];
    assert_eq!(matched("a/+/c", &topics), ["a/b/c", "a//c"]);
    assert_eq!(matched("+/+/c", &topics), ["a/b/c", "a//c", "x/b/c"]);
    assert_eq!(matched("a/+", &["a", "a/", "a/b", "a/b/c"]), ["a/", "a/b"]);
}

#[test]
fn multi_level_wildcard_matches_the_parent_and_every_child_mqtt_4_7_1_2() {
    let topics = ["a", "a/b", "a/b/c", "ab", "b/a", "/a"];
    assert_eq!(matched("a/#", &topics), ["a", "a/b", "a/b/c"]);
    assert_eq!(matched("#", &topics), topics);
    assert_eq!(matched("+/#", &topics), topics);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
    let topics = ["$SYS/load", "$SYS", "normal/x"];
    assert_eq!(matched("#", &topics), ["normal/x"]);
    assert_eq!(matched("+/load", &topics), Vec::<String>::new());
    assert_eq!(matched("+/x", &topics), ["normal/x"]);
    assert_eq!(matched("$SYS/#", &topics), ["$SYS/load", "$SYS"]);
    assert_eq!(matched("$SYS/+", &topics), ["$SYS/load"]);
}

#[test]
fn retained_dollar_topics_are_not_sent_to_leading_wildcards_mqtt_4_7_2_1() {
    let mut sim = Sim::default();
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "$SYS/x", QoS::AtMostOnce, true, b"sys");
    sim.publish(p, "a/x", QoS::AtMostOnce, true, b"a");
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "#", QoS::AtMostOnce);
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"a"[..]]);
    sim.subscribe(s, "+/x", QoS::AtMostOnce);
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"a"[..]]);
    sim.subscribe(s, "$SYS/+", QoS::AtMostOnce);
    assert_eq!(payloads(&sim.publishes(s)), vec![&b"sys"[..]]);
}

// ------------------------------------------------------------------ granted QoS

#[test]
fn suback_grants_the_requested_qos_in_order_mqtt_3_9_3_1() {
    for v in [V3, V4, V5] {
        let mut sim = Sim::default();
        let s = sim.connect(v, "s", true);
        let ack = sim.subscribe_many(
            s,
            &[
                ("q0", QoS::AtMostOnce),
                ("q1", QoS::AtLeastOnce),
                ("q2", QoS::ExactlyOnce),
            ],
        );
        assert_eq!(
            ack.reason_codes,
            [
                ReasonCode::Success,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2
            ],
            "{v}"
        );
    }
}

#[test]
fn delivery_qos_is_the_minimum_of_published_and_granted_mqtt_3_8_4_6() {
    let mut sim = Sim::default();
    let s = sim.connect(V5, "s", true);
    let p = sim.connect(V5, "p", true);
    sim.subscribe(s, "q0", QoS::AtMostOnce);
    sim.subscribe(s, "q1", QoS::AtLeastOnce);
    sim.subscribe(s, "q2", QoS::ExactlyOnce);
    let cases = [
        ("q0", QoS::ExactlyOnce, QoS::AtMostOnce),
        ("q1", QoS::ExactlyOnce, QoS::AtLeastOnce),
        ("q1", QoS::AtMostOnce, QoS::AtMostOnce),
        ("q2", QoS::AtLeastOnce, QoS::AtLeastOnce),
        ("q2", QoS::ExactlyOnce, QoS::ExactlyOnce),
    ];
    for (topic, published, expected) in cases {
        sim.publish(p, topic, published, false, b"m");
        sim.recv_all(p);
        let got = sim.publishes(s);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].qos, expected, "{topic} published at {published:?}");
        assert_eq!(got[0].packet_id.is_some(), expected != QoS::AtMostOnce);
        sim.ack_all(s, &got);
    }
}

#[test]
fn resubscribing_replaces_the_subscription_mqtt_3_8_4_3() {
    let mut sim = Sim::default();
    let s = sim.connect(V4, "s", true);
    let p = sim.connect(V4, "p", true);
    sim.subscribe(s, "t", QoS::ExactlyOnce);
    sim.subscribe(s, "t", QoS::AtMostOnce);
    sim.publish(p, "t", QoS::ExactlyOnce, false, b"once");
    let got = sim.publishes(s);
    assert_eq!(payloads(&got), vec![&b"once"[..]]);
    assert_eq!(got[0].qos, QoS::AtMostOnce);
}

// ------------------------------------------------------------------ overlapping

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos_mqtt_3_3_5_1() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let s = sim.connect(v, "s", true);
        let p = sim.connect(V5, "p", true);
        sim.subscribe(s, "a/b", QoS::AtMostOnce);
        sim.subscribe(s, "a/+", QoS::ExactlyOnce);
        sim.subscribe(s, "a/#", QoS::AtLeastOnce);
        sim.subscribe(s, "#", QoS::AtMostOnce);
        sim.publish(p, "a/b", QoS::ExactlyOnce, false, b"one");
        let got = sim.publishes(s);
        assert_eq!(payloads(&got), vec![&b"one"[..]], "{v}");
        assert_eq!(got[0].qos, QoS::ExactlyOnce, "{v}");
    }
}

#[test]
fn overlapping_subscriptions_carry_every_subscription_identifier_mqtt_3_3_4_3() {
    let mut sim = Sim::default();
    let s = sim.connect(V5, "s", true);
    let p = sim.connect(V5, "p", true);
    sim.subscribe_opts(s, "a/+", SubscriptionOptions::qos(QoS::AtMostOnce), Some(7));
    sim.subscribe_opts(s, "a/#", SubscriptionOptions::qos(QoS::AtMostOnce), Some(9));
    sim.subscribe(s, "#", QoS::AtMostOnce);
    sim.publish(p, "a/b", QoS::AtMostOnce, false, b"x");
    let got = sim.publishes(s);
    assert_eq!(got.len(), 1);
    let mut ids: Vec<u32> = got[0]
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort();
    assert_eq!(ids, [7, 9]);

    // A single match carries its own identifier only.
    sim.publish(p, "z", QoS::AtMostOnce, false, b"y");
    let got = sim.publishes(s);
    assert!(got[0].properties.subscription_identifiers.is_empty());
}

// ------------------------------------------------------------------ authorization

#[test]
fn refused_subscription_gets_0x87_in_5_0_and_0x80_in_3_1_1_mqtt_3_9_3_1() {
    let mut sim = Sim::default();
    sim.broker.set_authorizer(Box::new(DenySecret));
    let s5 = sim.connect(V5, "s5", true);
    let ack = sim.subscribe_many(
        s5,
        &[("open", QoS::AtLeastOnce), ("secret/x", QoS::AtLeastOnce)],
    );
    assert_eq!(
        ack.reason_codes,
        [ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized]
    );

    let s4 = sim.connect(V4, "s4", true);
    let before = sim.clients[s4].raw.len();
    sim.subscribe_many(
        s4,
        &[("secret/y", QoS::AtMostOnce), ("open", QoS::ExactlyOnce)],
    );
    // SUBACK, packet id 1, return codes 0x80 (failure) and 0x02.
    assert_eq!(&sim.clients[s4].raw[before..], b"\x90\x04\x00\x01\x80\x02");

    // The refused filters route nothing.
    let p = sim.connect(V5, "p", true);
    sim.broker.set_authorizer(Box::new(broker_state::AllowAll));
    sim.publish(p, "secret/x", QoS::AtMostOnce, false, b"no");
    sim.publish(p, "secret/y", QoS::AtMostOnce, false, b"no");
    sim.publish(p, "open", QoS::AtMostOnce, false, b"yes");
    assert_eq!(payloads(&sim.publishes(s5)), vec![&b"yes"[..]]);
    assert_eq!(payloads(&sim.publishes(s4)), vec![&b"yes"[..]]);
}

#[test]
fn refused_subscription_closes_an_mqtt_3_1_connection_which_has_no_failure_code() {
    let mut sim = Sim::default();
    sim.broker.set_authorizer(Box::new(DenySecret));
    let s = sim.connect(V3, "s3", true);
    let before = sim.clients[s].raw.len();
    let id = sim.next_id(s);
    sim.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: vec![(
                TopicFilter::from_static("secret").unwrap(),
                SubscriptionOptions::qos(QoS::AtMostOnce),
            )],
            properties: Default::default(),
        }),
    );
    assert_eq!(
        sim.clients[s].raw.len(),
        before,
        "no SUBACK it cannot express"
    );
    assert_eq!(sim.closed(s), Some(ReasonCode::NotAuthorized));
}

#[test]
fn refused_publish_gets_0x87_in_5_0_mqtt_3_4_2_1() {
    let mut sim = Sim::default();
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "#", QoS::ExactlyOnce);
    sim.broker.set_authorizer(Box::new(DenySecret));
    let p = sim.connect(V5, "p", true);
    let id = sim
        .publish(p, "secret/a", QoS::AtLeastOnce, false, b"1")
        .unwrap();
    let ack = sim.expect_puback(p);
    assert_eq!(
        (ack.packet_id, ack.reason_code),
        (id, ReasonCode::NotAuthorized)
    );
    let id = sim
        .publish(p, "secret/b", QoS::ExactlyOnce, false, b"2")
        .unwrap();
    let rec = sim.expect_pubrec(p);
    assert_eq!(
        (rec.packet_id, rec.reason_code),
        (id, ReasonCode::NotAuthorized)
    );
    sim.publish(p, "secret/c", QoS::AtMostOnce, false, b"3");
    sim.assert_silent(p);
    sim.assert_silent(s);
    assert_eq!(sim.broker.stats().publish_not_authorized, 3);
    assert_eq!(sim.closed(p), None);
}

#[test]
fn refused_publish_is_acknowledged_and_dropped_in_3_1_1_mqtt_3_3_5_2() {
    let mut sim = Sim::default();
    let s = sim.connect(V4, "s", true);
    sim.subscribe(s, "#", QoS::ExactlyOnce);
    sim.broker.set_authorizer(Box::new(DenySecret));
    let p = sim.connect(V4, "p", true);
    let before = sim.clients[p].raw.len();
    let id = sim
        .publish(p, "secret/a", QoS::AtLeastOnce, false, b"1")
        .unwrap();
    assert_eq!(
        &sim.clients[p].raw[before..],
        [0x40, 0x02, 0x00, id.get() as u8],
        "plain PUBACK"
    );
    sim.recv_all(p);
    let id = sim
        .publish(p, "secret/b", QoS::ExactlyOnce, false, b"2")
        .unwrap();
    let rec = sim.expect_pubrec(p);
    assert_eq!((rec.packet_id, rec.reason_code), (id, ReasonCode::Success));
    sim.send(p, Packet::PubRel(PubAck::new(id)));
    assert!(matches!(sim.recv(p), Some(Packet::PubComp(c)) if c.packet_id == id));
    sim.assert_silent(s);
    assert_eq!(sim.closed(p), None);
}

// ------------------------------------------------------------------ unsubscribe

#[test]
fn nothing_is_delivered_after_unsubscribe_mqtt_3_10_4_2() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let s = sim.connect(v, "s", true);
        let p = sim.connect(V5, "p", true);
        sim.subscribe(s, "a/+", QoS::AtLeastOnce);
        sim.subscribe(s, "b", QoS::AtLeastOnce);
        sim.publish(p, "a/1", QoS::AtLeastOnce, false, b"before");
        let got = sim.publishes(s);
        assert_eq!(got.len(), 1);
        sim.ack_all(s, &got);
        sim.unsubscribe(s, "a/+");
        sim.publish(p, "a/1", QoS::AtLeastOnce, false, b"after");
        sim.publish(p, "a/2", QoS::AtMostOnce, false, b"after");
        sim.publish(p, "b", QoS::AtMostOnce, false, b"still");
        assert_eq!(payloads(&sim.publishes(s)), vec![&b"still"[..]], "{v}");
    }
}

#[test]
fn unsuback_reports_each_filter_in_5_0_mqtt_3_11_3_1() {
    let mut sim = Sim::default();
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "x", QoS::AtMostOnce);
    let id = sim.next_id(s);
    sim.send(
        s,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            filters: vec![
                TopicFilter::from_static("x").unwrap(),
                TopicFilter::from_static("never").unwrap(),
                TopicFilter::from_static("x").unwrap(),
            ],
            properties: Default::default(),
        }),
    );
    match sim.recv(s) {
        Some(Packet::UnsubAck(a)) => {
            assert_eq!(a.packet_id, id);
            assert_eq!(
                a.reason_codes,
                [
                    ReasonCode::Success,
                    ReasonCode::NoSubscriptionExisted,
                    ReasonCode::NoSubscriptionExisted
                ]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

#[test]
fn unsuback_3_1_1_has_no_payload_even_without_a_subscription_mqtt_3_10_4_5() {
    let mut sim = Sim::default();
    let s = sim.connect(V4, "s", true);
    let before = sim.clients[s].raw.len();
    let ack = sim.unsubscribe(s, "never/subscribed");
    assert_eq!(&sim.clients[s].raw[before..], b"\xB0\x02\x00\x01");
    assert_eq!(ack.packet_id.get(), 1);
}

// ------------------------------------------------------------------ 5.0 options

#[test]
fn no_local_keeps_a_clients_own_messages_from_it_mqtt_3_8_3_3() {
    let mut sim = Sim::default();
    let c = sim.connect(V5, "c", true);
    let other = sim.connect(V5, "o", true);
    let opts = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::qos(QoS::AtMostOnce)
    };
    sim.subscribe_opts(c, "t", opts, None);
    sim.publish(c, "t", QoS::AtMostOnce, false, b"mine");
    sim.publish(other, "t", QoS::AtMostOnce, false, b"theirs");
    assert_eq!(payloads(&sim.publishes(c)), vec![&b"theirs"[..]]);
}

#[test]
fn shared_subscription_delivers_each_message_to_one_member_mqtt_4_8_2() {
    let mut sim = Sim::default();
    let a = sim.connect(V5, "a", true);
    let b = sim.connect(V5, "b", true);
    let p = sim.connect(V5, "p", true);
    sim.subscribe(a, "$share/g/jobs/+", QoS::AtLeastOnce);
    sim.subscribe(b, "$share/g/jobs/+", QoS::AtLeastOnce);
    for i in 0..20u8 {
        sim.publish(p, "jobs/x", QoS::AtMostOnce, false, &[i]);
    }
    let (ga, gb) = (sim.publishes(a), sim.publishes(b));
    assert_eq!(ga.len() + gb.len(), 20);
    assert!(
        !ga.is_empty() && !gb.is_empty(),
        "{} / {}",
        ga.len(),
        gb.len()
    );
}

#[test]
fn shared_and_non_shared_subscriptions_of_one_client_each_deliver_mqtt_4_8_2() {
    // "the Client will receive a copy of the message by virtue of it having the
    // Non-shared Subscription. A second copy of the message will be delivered to one
    // of the subscribers to the Shared Subscription" (5.0 section 4.8.2).
    let mut sim = Sim::default();
    let a = sim.connect(V5, "a", true);
    let p = sim.connect(V5, "p", true);
    sim.subscribe_opts(a, "t", SubscriptionOptions::qos(QoS::AtMostOnce), Some(1));
    sim.subscribe_opts(
        a,
        "$share/g/t",
        SubscriptionOptions::qos(QoS::AtLeastOnce),
        Some(2),
    );
    sim.publish(p, "t", QoS::AtLeastOnce, false, b"x");
    let got = sim.publishes(a);
    assert_eq!(got.len(), 2, "{got:?}");
    let mut seen: Vec<(QoS, Vec<u32>)> = got
        .iter()
        .map(|p| {
            let ids = p
                .properties
                .subscription_identifiers
                .iter()
                .map(|i| i.get());
            (p.qos, ids.collect())
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [(QoS::AtMostOnce, vec![1]), (QoS::AtLeastOnce, vec![2])]
    );
}
