//! The core as one node of a cluster (`Config::cluster`): the interest it
//! announces as subscriptions come and go, the messages it forwards, how it
//! takes the other nodes' messages, retained messages and session claims, and
//! the acknowledgement that waits until a QoS 1/2 forward is handed over.
mod sim;

use broker_state::{
    Acquired, AuthTicket, ClusterOp, Config, Input, SessionRecord, StoreOp, StoredMessage,
};
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn node() -> Sim {
    Sim::new(Config {
        cluster: true,
        ..Config::default()
    })
}

/// The interest changes emitted since the last call, as `(filter, on)`.
fn interest(sim: &mut Sim) -> Vec<(String, bool)> {
    let ops = std::mem::take(&mut sim.cluster);
    ops.into_iter()
        .filter_map(|op| match op {
            ClusterOp::Interest { filter, on } => Some((filter.as_str().to_owned(), on)),
            _ => None,
        })
        .collect()
}

/// The messages forwarded since the last call.
fn forwards(sim: &mut Sim) -> Vec<Publish> {
    addressed(sim).into_iter().map(|(p, _, _)| p).collect()
}

/// The messages forwarded since the last call, with the nodes they are
/// addressed to and whether a shared group wants them.
fn addressed(sim: &mut Sim) -> Vec<(Publish, Vec<u32>, bool)> {
    let ops = std::mem::take(&mut sim.cluster);
    ops.into_iter()
        .filter_map(|op| match op {
            ClusterOp::Forward {
                publish,
                nodes,
                shared,
            } => Some((*publish, nodes, shared)),
            _ => None,
        })
        .collect()
}

fn owned(s: &str) -> (String, bool) {
    (s.to_owned(), true)
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::copy_from_str(s).expect("a valid filter")
}

#[test]
fn interest_is_announced_with_a_filters_first_subscription_and_withdrawn_with_its_last() {
    let mut sim = node();
    let a = sim.connect(V5, "a", true);
    let b = sim.connect(V4, "b", true);
    sim.subscribe(a, "t/#", QoS::AtLeastOnce);
    assert_eq!(interest(&mut sim), [owned("t/#")]);
    // A second subscriber, or the same one again: nothing new.
    sim.subscribe(b, "t/#", QoS::AtMostOnce);
    sim.subscribe(a, "t/#", QoS::ExactlyOnce);
    assert_eq!(interest(&mut sim), []);
    // Shared groups are their own interest, per group.
    sim.subscribe(a, "$share/g/t/#", QoS::AtLeastOnce);
    sim.subscribe(b, "$share/g/t/#", QoS::AtLeastOnce);
    sim.subscribe(b, "$share/h/t/#", QoS::AtLeastOnce);
    assert_eq!(
        interest(&mut sim),
        [owned("$share/g/t/#"), owned("$share/h/t/#")]
    );
    sim.unsubscribe(a, "t/#");
    assert_eq!(interest(&mut sim), []);
    sim.unsubscribe(b, "t/#");
    assert_eq!(interest(&mut sim), [("t/#".to_owned(), false)]);
    // A session that ends takes its subscriptions' interest with it.
    sim.disconnect(b);
    assert_eq!(interest(&mut sim), [("$share/h/t/#".to_owned(), false)]);
    sim.disconnect(a);
    assert_eq!(interest(&mut sim), [("$share/g/t/#".to_owned(), false)]);
    sim.broker.check_invariants().expect("invariants");
}

#[test]
fn a_single_broker_emits_no_cluster_effects() {
    let mut sim = Sim::default();
    let a = sim.connect(V5, "a", true);
    sim.subscribe(a, "t", QoS::AtLeastOnce);
    sim.publish(a, "t", QoS::AtLeastOnce, true, b"x");
    assert!(sim.cluster.is_empty(), "{:?}", sim.cluster);
}

#[test]
fn messages_accepted_here_are_forwarded_and_delivered_here_at_once() {
    let mut sim = node();
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    let p = sim.connect(V5, "p", true);
    // Node 2 wants t, node 3 has a shared group on wills/#.
    sim.broker.handle_remote_interest(2, &filter("t"), true);
    sim.broker
        .handle_remote_interest(3, &filter("$share/g/wills/#"), true);
    sim.cluster.clear();
    sim.publish(p, "t", QoS::AtLeastOnce, true, b"1");
    assert_eq!(payloads(&sim.publishes(s)), [&b"1"[..]]);
    let f = addressed(&mut sim);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].1.as_slice(), f[0].2), (&[2][..], false));
    let f: Vec<Publish> = f.into_iter().map(|(p, _, _)| p).collect();
    assert_eq!(
        (f[0].topic.as_str(), f[0].retain, f[0].qos),
        ("t", true, QoS::AtLeastOnce)
    );
    assert_eq!(
        f[0].packet_id, None,
        "the forward is the message, not a packet"
    );
    // No subscriber anywhere: not forwarded, and still 5.0's 0x10 is not
    // claimed (a node may subscribe at any moment).
    sim.publish(p, "nobody/here", QoS::AtLeastOnce, false, b"2");
    assert_eq!(sim.expect_puback(p).reason_code, ReasonCode::Success);
    assert_eq!(forwards(&mut sim).len(), 0);
    assert_eq!(sim.broker.stats().cluster_not_forwarded, 1);
    // Retained: forwarded all the same (the retained store is the cluster's).
    sim.publish(p, "nobody/here", QoS::AtLeastOnce, true, b"r");
    assert_eq!(forwards(&mut sim).len(), 1);
    // Every node with a matching filter is named once, however many of its
    // filters match.
    sim.broker.handle_remote_interest(4, &filter("#"), true);
    sim.broker.handle_remote_interest(4, &filter("+"), true);
    sim.broker
        .handle_remote_interest(5, &filter("$share/h/t"), true);
    sim.publish(p, "t", QoS::AtMostOnce, false, b"3");
    let f = addressed(&mut sim);
    let mut nodes = f[0].1.clone();
    nodes.sort_unstable();
    assert_eq!((nodes, f[0].2), (vec![2, 4], true));
    // A node's filters withdrawn (as when its keys leave the interest bucket).
    sim.broker.handle_remote_interest(4, &filter("#"), false);
    sim.broker.handle_remote_interest(4, &filter("+"), false);
    sim.broker
        .handle_remote_interest(5, &filter("$share/h/t"), false);
    // Interest withdrawn: no longer forwarded. Announced twice, withdrawn
    // once: gone (announcements are idempotent per node).
    sim.broker.handle_remote_interest(2, &filter("t"), true);
    sim.broker.handle_remote_interest(2, &filter("t"), false);
    sim.publish(p, "t", QoS::AtMostOnce, false, b"3");
    assert_eq!(forwards(&mut sim).len(), 0);
    // A local shared group's messages go through the cluster even when no
    // other node wants them: the cluster picks the member.
    let sh = sim.connect(V5, "sh", true);
    sim.subscribe(sh, "$share/local/jobs", QoS::AtLeastOnce);
    sim.cluster.clear();
    sim.publish(p, "jobs", QoS::AtMostOnce, false, b"4");
    assert_eq!(forwards(&mut sim).len(), 1);
    assert!(
        sim.publishes(sh).is_empty(),
        "delivered only when the cluster hands it back"
    );
    // A will is forwarded too.
    let mut c = connect_packet(V5, "w", true);
    c.will = Some(will("wills/w", b"gone", QoS::AtLeastOnce, false));
    let (w, _) = sim.connect_with(c);
    sim.kill(w);
    let f = addressed(&mut sim);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0.topic.as_str(), "wills/w");
    assert_eq!(
        (f[0].1.as_slice(), f[0].2),
        (&[][..], true),
        "for node 3's shared group"
    );
}

#[test]
fn the_puback_of_a_qos1_message_waits_until_its_forward_is_handed_over() {
    let mut sim = node();
    sim.auto_commit = false;
    sim.broker.handle_remote_interest(1, &filter("t"), true);
    let p = sim.connect(V5, "p", true);
    let before = sim.broker.store_effects_emitted();
    let id = sim
        .publish(p, "t", QoS::AtLeastOnce, false, b"1")
        .expect("an id");
    assert_eq!(sim.broker.store_effects_emitted(), before + 1);
    sim.assert_silent(p);
    sim.commit_store();
    assert_eq!(sim.expect_puback(p).packet_id, id);
    // QoS 0 is not numbered and waits for nothing.
    sim.publish(p, "t", QoS::AtMostOnce, false, b"0");
    assert_eq!(sim.broker.store_effects_emitted(), before + 1);
    // A forward that could not be handed over refuses the PUBREC (5.0: 0x80).
    let id = sim
        .publish(p, "t", QoS::ExactlyOnce, false, b"2")
        .expect("an id");
    sim.assert_silent(p);
    sim.fail_store();
    let rec = sim.expect_pubrec(p);
    assert_eq!(
        (rec.packet_id, rec.reason_code),
        (id, ReasonCode::UnspecifiedError)
    );
}

#[test]
fn another_nodes_message_reaches_the_non_shared_subscriptions_once() {
    let mut sim = node();
    let s5 = sim.connect(V5, "s5", true);
    sim.subscribe(s5, "t/+", QoS::ExactlyOnce);
    sim.subscribe(s5, "t/#", QoS::AtLeastOnce);
    let s4 = sim.connect(V4, "s4", true);
    sim.subscribe(s4, "t/a", QoS::AtMostOnce);
    let sh = sim.connect(V5, "sh", true);
    sim.subscribe(sh, "$share/g/t/#", QoS::AtLeastOnce);
    let mut p = publish_packet("t/a", QoS::ExactlyOnce, true, None, b"remote");
    p.properties.user_properties = UserProperties::from_pairs([("k", "v")]).expect("valid pairs");
    // The transport hands it over once per matching filter this node
    // announced; the copy through the oldest one (t/+) is the one taken.
    let mut taken = Vec::new();
    for through in ["t/#", "t/a", "t/+"] {
        let f = TopicFilter::copy_from_str(through).expect("valid");
        taken.push(sim.broker.handle_cluster_publish(sim.now, p.clone(), &f));
    }
    sim.drain();
    assert_eq!(taken, [0, 0, 3], "three subscriptions matched, once");
    assert_eq!(sim.broker.stats().cluster_duplicates, 2);
    // A copy through a filter not subscribed here is dropped too.
    let gone = TopicFilter::copy_from_str("t/b").expect("valid");
    assert_eq!(
        sim.broker.handle_cluster_publish(sim.now, p.clone(), &gone),
        0
    );
    let got = sim.publishes(s5);
    assert_eq!(got.len(), 1, "overlapping filters: one delivery");
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
    assert!(!got[0].retain, "Retain As Published is off");
    assert_eq!(
        got[0].properties.user_properties,
        p.properties.user_properties
    );
    assert_eq!(payloads(&sim.publishes(s4)), [&b"remote"[..]]);
    assert!(
        sim.publishes(sh).is_empty(),
        "shared groups only through the group"
    );
    // Nothing of it goes back to the cluster, and the retained store is not
    // changed by a live message.
    assert!(forwards(&mut sim).is_empty());
    let late = sim.connect(V5, "late", true);
    sim.subscribe(late, "t/a", QoS::AtMostOnce);
    assert!(sim.publishes(late).is_empty());
}

#[test]
fn a_message_addressed_to_this_node_reaches_every_matching_subscription_once() {
    let mut sim = Sim::new(Config {
        cluster: true,
        store_effects: true,
        ..Config::default()
    });
    let s5 = sim.connect(V5, "s5", true);
    sim.subscribe(s5, "t/+", QoS::ExactlyOnce);
    sim.subscribe(s5, "t/#", QoS::AtLeastOnce);
    let s4 = sim.connect(V4, "s4", true);
    sim.subscribe(s4, "t/a", QoS::AtMostOnce);
    let sh = sim.connect(V5, "sh", true);
    sim.subscribe(sh, "$share/g/t/#", QoS::AtLeastOnce);
    // A persistent session, offline: its queue keeps the message, durably.
    let off = sim.connect(V4, "off", false);
    sim.subscribe(off, "t/a", QoS::AtLeastOnce);
    sim.disconnect(off);
    sim.drain();
    let stored = sim.store_ops.len();
    let p = publish_packet("t/a", QoS::ExactlyOnce, false, None, b"remote");
    assert_eq!(sim.broker.handle_cluster_delivery(sim.now, p), 4);
    sim.drain();
    let got = sim.publishes(s5);
    assert_eq!(got.len(), 1, "overlapping filters: one delivery");
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
    assert_eq!(payloads(&sim.publishes(s4)), [&b"remote"[..]]);
    assert!(
        sim.publishes(sh).is_empty(),
        "shared groups only through the group"
    );
    assert!(
        sim.store_ops.len() > stored,
        "the offline session's queue is stored: {:?}",
        &sim.store_ops[stored..]
    );
    assert!(forwards(&mut sim).is_empty(), "nothing goes back");
}

#[test]
fn a_shared_groups_message_from_the_cluster_goes_to_one_local_member() {
    let mut sim = node();
    let a = sim.connect(V5, "a", true);
    let b = sim.connect(V5, "b", true);
    sim.subscribe(a, "$share/g/jobs/#", QoS::AtLeastOnce);
    sim.subscribe(b, "$share/g/jobs/#", QoS::AtLeastOnce);
    // Published here: not delivered to the group here (the cluster picks).
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "jobs/1", QoS::AtLeastOnce, false, b"local");
    assert!(sim.publishes(a).is_empty() && sim.publishes(b).is_empty());
    let group = TopicFilter::copy_from_str("$share/g/jobs/#").expect("valid");
    for i in 0..10 {
        let m = publish_packet("jobs/1", QoS::AtLeastOnce, false, None, &[i]);
        assert_eq!(sim.broker.handle_cluster_publish(sim.now, m, &group), 1);
    }
    sim.drain();
    let (ga, gb) = (sim.publishes(a), sim.publishes(b));
    assert_eq!(ga.len() + gb.len(), 10, "each message to one member");
    // A group with no member here any more: gone, and counted.
    let gone = TopicFilter::copy_from_str("$share/other/jobs/#").expect("valid");
    let m = publish_packet("jobs/1", QoS::AtLeastOnce, false, None, b"x");
    assert_eq!(sim.broker.handle_cluster_publish(sim.now, m, &gone), 0);
    assert_eq!(sim.broker.stats().cluster_shared_unmatched, 1);
    sim.broker.check_invariants().expect("invariants");
}

#[test]
fn retained_messages_from_the_cluster_are_kept_and_cleared_without_delivery() {
    let mut sim = node();
    let s = sim.connect(V5, "s", true);
    sim.subscribe(s, "r", QoS::AtLeastOnce);
    let m = publish_packet("r", QoS::AtLeastOnce, true, None, b"kept");
    assert!(sim.broker.handle_cluster_retained(sim.now, m));
    sim.drain();
    assert!(
        sim.publishes(s).is_empty(),
        "a retained update delivers nothing"
    );
    let late = sim.connect(V5, "late", true);
    sim.subscribe(late, "r", QoS::AtLeastOnce);
    let got = sim.publishes(late);
    assert_eq!((payloads(&got), got[0].retain), (vec![&b"kept"[..]], true));
    let clear = publish_packet("r", QoS::AtMostOnce, true, None, b"");
    sim.broker.handle_cluster_retained(sim.now, clear);
    sim.drain();
    let later = sim.connect(V5, "later", true);
    sim.subscribe(later, "r", QoS::AtLeastOnce);
    assert!(sim.publishes(later).is_empty());
}

#[test]
fn a_session_claimed_by_another_node_ends_here_with_0x8e() {
    let mut sim = node();
    let mut c = connect_packet(V5, "dev", false);
    c.will = Some(will("wills/dev", b"moved", QoS::AtMostOnce, false));
    let (d, _) = sim.connect_with(c);
    sim.subscribe(d, "dev/in", QoS::AtLeastOnce);
    let watcher = sim.connect(V4, "watcher", true);
    sim.subscribe(watcher, "wills/#", QoS::AtMostOnce);
    sim.cluster.clear();
    assert!(sim.broker.handle_session_claimed(sim.now, b"dev"));
    sim.drain();
    assert_eq!(sim.expect_disconnect(d), ReasonCode::SessionTakenOver);
    assert_eq!(sim.closed(d), Some(ReasonCode::SessionTakenOver));
    assert_eq!(payloads(&sim.publishes(watcher)), [&b"moved"[..]]);
    assert_eq!(interest(&mut sim), [("dev/in".to_owned(), false)]);
    assert_eq!(sim.broker.session_count(), 1, "only the watcher's is left");
    assert!(!sim.broker.handle_session_claimed(sim.now, b"dev"));
    assert!(!sim.broker.handle_session_claimed(sim.now, b"nobody"));
    assert_eq!(sim.broker.stats().cluster_takeovers, 1);
    sim.broker.check_invariants().expect("invariants");
}

/// The records the cluster's store keeps of a session "dev" that another node
/// held: subscribed to `dev/in` at QoS 1, two messages queued, the first of
/// them sent with packet id 7.
fn records_of_dev(sim: &Sim) -> Vec<StoreOp> {
    let client_id = MqttString::from_static("dev").expect("valid");
    let message = |payload: &'static [u8]| StoredMessage {
        publish: publish_packet("dev/in", QoS::AtLeastOnce, false, None, payload),
        expires_at_unix_ms: None,
    };
    vec![
        StoreOp::SessionUpsert(SessionRecord {
            client_id: client_id.clone(),
            authentication_name: None,
            expiry_interval: 3600,
            expires_at_unix_ms: Some(sim.now.unix_ms + 3_600_000),
            subscriptions: vec![(
                filter("dev/in"),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
                None,
            )],
            will: None,
        }),
        StoreOp::MessageEnqueue {
            client_id: client_id.clone(),
            seq: 1,
            message: message(b"one"),
        },
        StoreOp::MessageEnqueue {
            client_id: client_id.clone(),
            seq: 2,
            message: message(b"two"),
        },
        StoreOp::MessageSent {
            client_id,
            seq: 1,
            packet_id: 7,
        },
    ]
}

/// The acquisitions asked since the last call: (ticket, client id, clean start).
fn acquisitions(sim: &mut Sim) -> Vec<(AuthTicket, String, bool)> {
    let ops = std::mem::take(&mut sim.cluster);
    ops.into_iter()
        .filter_map(|op| match op {
            ClusterOp::Acquire {
                ticket,
                client_id,
                clean_start,
                ..
            } => Some((ticket, client_id.as_str().to_owned(), clean_start)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_session_from_another_node_is_restored_before_its_connack_with_its_queue() {
    let mut sim = node();
    // A stale copy of "dev" here (from before it moved away and back).
    let (stale, _) = sim.connect_v5("dev", false, Some(3600));
    sim.subscribe(stale, "stale/#", QoS::AtLeastOnce);
    sim.kill(stale);
    sim.auto_acquire = false;
    interest(&mut sim);
    let mut connect = connect_packet(V5, "dev", false);
    connect.properties.session_expiry_interval = Some(3600);
    let c = sim.accept(V5);
    sim.send(c, Packet::Connect(Box::new(connect)));
    // A SUBSCRIBE sent before the CONNACK waits with the CONNECT.
    let sub = Subscribe {
        packet_id: PacketId::new(1).expect("nonzero"),
        properties: Default::default(),
        filters: vec![(filter("more"), SubscriptionOptions::qos(QoS::AtMostOnce))],
    };
    sim.send(c, Packet::Subscribe(sub));
    assert!(
        sim.recv(c).is_none(),
        "no CONNACK before the cluster answers"
    );
    let asked = acquisitions(&mut sim);
    assert_eq!(asked.len(), 1);
    let (ticket, client_id, clean) = asked[0].clone();
    assert_eq!((client_id.as_str(), clean), ("dev", false));
    let records = records_of_dev(&sim);
    // Through `handle`, as a replay of recorded inputs would.
    let input = Input::SessionAcquired(ticket, Acquired::Session(records));
    sim.broker.handle(sim.now, input);
    sim.drain();
    match sim.recv(c) {
        Some(Packet::ConnAck(a)) => assert!(a.session_present, "{a:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // The in-flight message again with DUP and its packet id, then the queued one.
    let all = sim.recv_all(c);
    let got: Vec<Publish> = all
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(payloads(&got), [&b"one"[..], &b"two"[..]]);
    assert_eq!(got[0].packet_id, PacketId::new(7));
    assert!(got[0].dup && !got[1].dup);
    assert!(
        all.iter().any(|p| matches!(p, Packet::SubAck(_))),
        "the held SUBSCRIBE answered: {all:?}"
    );
    // Its subscription is back (and announced); the stale one is gone.
    let filters = interest(&mut sim);
    assert!(filters.contains(&owned("dev/in")), "{filters:?}");
    assert!(
        filters.contains(&("stale/#".to_owned(), false)),
        "{filters:?}"
    );
    sim.auto_acquire = true;
    let p = sim.connect(V5, "pub", true);
    sim.publish(p, "dev/in", QoS::AtMostOnce, false, b"live");
    assert_eq!(payloads(&sim.publishes(c)), [&b"live"[..]]);
    sim.publish(p, "stale/x", QoS::AtMostOnce, false, b"gone");
    assert!(sim.publishes(c).is_empty());
    assert_eq!(sim.broker.stats().cluster_sessions_moved, 1);
    // An answer quoting the ticket again is ignored.
    sim.broker
        .handle_session_acquired(sim.now, ticket, Acquired::Session(records_of_dev(&sim)));
    sim.drain();
    assert!(sim.publishes(c).is_empty());
    sim.broker.check_invariants().expect("invariants");
}

#[test]
fn a_departed_nodes_sessions_come_back_offline_and_take_its_queue() {
    let mut sim = node();
    // A stale copy of "dev" here, from before it moved to the departed node.
    let (stale, _) = sim.connect_v5("dev", false, Some(3600));
    sim.subscribe(stale, "stale/#", QoS::AtLeastOnce);
    sim.kill(stale);
    interest(&mut sim);
    let records = records_of_dev(&sim);
    // Through `handle`, as a replay of recorded inputs would.
    sim.broker.handle(sim.now, Input::SessionsAdopted(records));
    sim.drain();
    assert_eq!(sim.broker.stats().cluster_sessions_adopted, 1);
    // Its subscription is announced as this node's; the stale one withdrawn.
    let filters = interest(&mut sim);
    assert!(filters.contains(&owned("dev/in")), "{filters:?}");
    assert!(
        filters.contains(&("stale/#".to_owned(), false)),
        "{filters:?}"
    );
    // The departed node's queue: delivered into the offline session.
    let m = publish_packet("dev/in", QoS::AtLeastOnce, false, None, b"three");
    assert_eq!(sim.broker.handle_cluster_delivery(sim.now, m), 1);
    let m = publish_packet("stale/x", QoS::AtLeastOnce, false, None, b"no");
    assert_eq!(sim.broker.handle_cluster_delivery(sim.now, m), 0);
    // Its client comes back here: in flight again, queued, then the queue's.
    let mut connect = connect_packet(V5, "dev", false);
    connect.properties.session_expiry_interval = Some(3600);
    let (c, ack) = sim.connect_with(connect);
    assert!(ack.session_present);
    let got = sim.publishes(c);
    assert_eq!(payloads(&got), [&b"one"[..], &b"two"[..], &b"three"[..]]);
    assert!(got[0].dup && got[0].packet_id == PacketId::new(7));
    sim.broker.check_invariants().expect("invariants");
}

#[test]
fn a_connect_the_cluster_cannot_place_is_refused_with_0x88_or_0x97() {
    let mut sim = node();
    sim.auto_acquire = false;
    for (answer, code) in [
        (Acquired::Unavailable, ReasonCode::ServerUnavailable),
        (Acquired::QuotaExceeded, ReasonCode::QuotaExceeded),
    ] {
        for version in [V5, V4] {
            let c = sim.accept(version);
            sim.send(
                c,
                Packet::Connect(Box::new(connect_packet(version, "x", true))),
            );
            let (ticket, _, clean) = acquisitions(&mut sim)[0].clone();
            assert!(clean);
            sim.broker
                .handle_session_acquired(sim.now, ticket, answer.clone());
            sim.drain();
            let ack = match sim.recv(c) {
                Some(Packet::ConnAck(a)) => a,
                other => panic!("expected CONNACK, got {other:?}"),
            };
            // 3.1.1 has 0x03 Server unavailable for both.
            let expected = if version == V5 {
                code
            } else {
                ReasonCode::ServerUnavailable
            };
            assert_eq!(ack.reason_code, expected, "{version:?}");
            assert!(sim.closed(c).is_some());
        }
    }
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn a_session_let_go_to_another_node_leaves_the_cluster_store_untouched() {
    let mut sim = Sim::new(Config {
        cluster: true,
        store_effects: true,
        ..Config::default()
    });
    let mut connect = connect_packet(V5, "dev", false);
    connect.properties.session_expiry_interval = Some(3600);
    let mut w = will("wills/dev", b"late", QoS::AtMostOnce, false);
    w.properties.will_delay_interval = Some(60);
    connect.will = Some(w);
    let (d, _) = sim.connect_with(connect);
    sim.subscribe(d, "dev/in", QoS::AtLeastOnce);
    let watcher = sim.connect(V4, "watcher", true);
    sim.subscribe(watcher, "wills/#", QoS::AtMostOnce);
    sim.store_ops.clear();
    assert!(sim.broker.handle_session_claimed(sim.now, b"dev"));
    sim.drain();
    assert_eq!(sim.expect_disconnect(d), ReasonCode::SessionTakenOver);
    assert!(
        !sim.store_ops
            .iter()
            .any(|op| matches!(op, StoreOp::SessionRemove { .. })),
        "{:?}",
        sim.store_ops
    );
    // The session lives on elsewhere: its delayed will is not this node's.
    assert_eq!(sim.broker.session_count(), 1, "the watcher's");
    sim.advance(std::time::Duration::from_secs(70));
    assert!(sim.publishes(watcher).is_empty());
}

/// The client identifiers the node said it no longer holds since the last call.
fn ended(sim: &mut Sim) -> Vec<String> {
    let ops = std::mem::take(&mut sim.cluster);
    ops.into_iter()
        .filter_map(|op| match op {
            ClusterOp::SessionEnded { client_id, .. } => Some(client_id.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_cluster_hears_of_a_session_that_ended_here_but_not_of_one_replaced_or_moved() {
    let mut sim = node();
    let a = sim.connect(V5, "a", true);
    sim.cluster.clear();
    // A new connection of "a" replaces its session here: still held here.
    let a2 = sim.connect(V5, "a", true);
    assert_eq!(sim.expect_disconnect(a), ReasonCode::SessionTakenOver);
    assert_eq!(ended(&mut sim), Vec::<String>::new());
    // Its end is the cluster's news.
    sim.disconnect(a2);
    assert_eq!(ended(&mut sim), ["a"]);
    // A session that moves to another node did not end.
    let (b, _) = sim.connect_v5("b", false, Some(60));
    sim.cluster.clear();
    sim.broker.handle_session_claimed(sim.now, b"b");
    sim.drain();
    assert_eq!(sim.expect_disconnect(b), ReasonCode::SessionTakenOver);
    assert_eq!(ended(&mut sim), Vec::<String>::new());
    // An offline session that expires ended.
    let (c, _) = sim.connect_v5("c", false, Some(60));
    sim.disconnect(c);
    assert_eq!(ended(&mut sim), Vec::<String>::new());
    sim.advance(std::time::Duration::from_secs(61));
    assert_eq!(ended(&mut sim), ["c"]);
}
