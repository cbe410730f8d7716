//! The core as one node of a cluster (`Config::cluster`): the interest it
//! announces as subscriptions come and go, the messages it forwards, how it
//! takes the other nodes' messages, retained messages and session claims, and
//! the acknowledgement that waits until a QoS 1/2 forward is handed over.
mod sim;

use broker_state::{ClusterOp, Config};
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
            ClusterOp::Forward(_) => None,
        })
        .collect()
}

/// The messages forwarded since the last call.
fn forwards(sim: &mut Sim) -> Vec<Publish> {
    let ops = std::mem::take(&mut sim.cluster);
    ops.into_iter()
        .filter_map(|op| match op {
            ClusterOp::Forward(p) => Some(*p),
            ClusterOp::Interest { .. } => None,
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
    // Another node wants t and wills/#.
    sim.broker.handle_remote_interest(&filter("t"), true);
    sim.broker
        .handle_remote_interest(&filter("$share/g/wills/#"), true);
    sim.cluster.clear();
    sim.publish(p, "t", QoS::AtLeastOnce, true, b"1");
    assert_eq!(payloads(&sim.publishes(s)), [&b"1"[..]]);
    let f = forwards(&mut sim);
    assert_eq!(f.len(), 1);
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
    // Interest withdrawn: no longer forwarded. Announced twice, withdrawn once:
    // gone (the adapter aggregates nodes).
    sim.broker.handle_remote_interest(&filter("t"), true);
    sim.broker.handle_remote_interest(&filter("t"), false);
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
    let f = forwards(&mut sim);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].topic.as_str(), "wills/w");
}

#[test]
fn the_puback_of_a_qos1_message_waits_until_its_forward_is_handed_over() {
    let mut sim = node();
    sim.auto_commit = false;
    sim.broker.handle_remote_interest(&filter("t"), true);
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
