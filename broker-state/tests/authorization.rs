//! Authorization by permission bindings (issue 19): every decision and reason code
//! on 3.1.1 and 5.0, through the core's public interface with a simulated clock.
//! The policy: sensors (type = 'sensor') publish to
//! `devices/${client.authenticationName}/telemetry/#` and subscribe to
//! `devices/${client.authenticationName}/commands`; the backend (type =
//! 'service') subscribes to `devices/+/telemetry/#`; everyone may publish and
//! subscribe to `zones/${client.attributes.zones}/status`.
mod sim;

use std::sync::Arc;

use broker_state::authz::{
    ClientGroup, Mode, Permission, PermissionBinding, Policy, Query, Template, TopicSpace,
};
use broker_state::{AttributeValue, Attributes, AuthStep, Config};
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn space(name: &str, templates: &[&str]) -> TopicSpace {
    TopicSpace {
        name: name.into(),
        templates: templates
            .iter()
            .map(|t| ((*t).to_owned(), Template::parse(t).expect("template")))
            .collect(),
    }
}

fn group(name: &str, query: &str) -> ClientGroup {
    ClientGroup {
        name: name.into(),
        query: Query::parse(query).expect("query"),
    }
}

fn bind(name: &str, group: usize, space: usize, permission: Permission) -> PermissionBinding {
    PermissionBinding {
        name: name.into(),
        client_group: group,
        topic_space: space,
        permission,
    }
}

fn policy(with_commands: bool) -> Arc<Policy> {
    let mut bindings = vec![
        bind("sensors-publish", 0, 0, Permission::Publisher),
        bind("backend-reads", 1, 2, Permission::Subscriber),
        bind("all-zones-pub", 2, 3, Permission::Publisher),
        bind("all-zones-sub", 2, 3, Permission::Subscriber),
    ];
    if with_commands {
        bindings.push(bind("sensors-commands", 0, 1, Permission::Subscriber));
    }
    Arc::new(Policy {
        mode: Mode::Bindings,
        groups: vec![
            group("sensors", "attributes.type = 'sensor'"),
            group("backend", "attributes.type = 'service'"),
            group("everyone", "$all"),
        ],
        spaces: vec![
            space(
                "telemetry",
                &["devices/${client.authenticationName}/telemetry/#"],
            ),
            space(
                "commands",
                &["devices/${client.authenticationName}/commands"],
            ),
            space("all-telemetry", &["devices/+/telemetry/#"]),
            space("zones", &["zones/${client.attributes.zones}/status"]),
        ],
        bindings,
    })
}

fn attrs(kind: &str, zones: &[&str]) -> Arc<Attributes> {
    let mut a = Attributes::new();
    a.insert("type".into(), AttributeValue::String(kind.into()));
    a.insert(
        "zones".into(),
        AttributeValue::StringList(zones.iter().map(|z| (*z).to_owned()).collect()),
    );
    Arc::new(a)
}

fn sim() -> Sim {
    let mut sim = Sim::new(Config::default());
    sim.broker.set_external_authentication(true);
    let now = sim.now;
    assert_eq!(sim.broker.set_authorization(now, Some(policy(true))), 0);
    sim
}

/// Connects `name` with these attributes (the answer to its authentication).
fn client(sim: &mut Sim, v: ProtocolVersion, name: &str, a: Arc<Attributes>) -> C {
    let (c, ack) = try_client(sim, connect_packet(v, name, true), name, a);
    assert_eq!(ack.reason_code, ReasonCode::Success, "{name} connects");
    c
}

fn try_client(sim: &mut Sim, p: Connect, name: &str, a: Arc<Attributes>) -> (C, ConnAck) {
    let c = sim.accept(p.protocol);
    sim.send(c, Packet::Connect(Box::new(p)));
    let q = sim.question();
    sim.answer(
        &q,
        AuthStep::Success {
            data: None,
            authentication_name: Some(name.into()),
            attributes: Some(a),
            valid_until_ms: None,
        },
    );
    match sim.recv(c) {
        Some(Packet::ConnAck(ack)) => (c, *ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn puback(sim: &mut Sim, c: C) -> ReasonCode {
    match sim.recv(c) {
        Some(Packet::PubAck(a)) => a.reason_code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[test]
fn a_publish_is_allowed_by_a_publisher_binding_of_one_of_the_clients_groups() {
    let mut sim = sim();
    let backend = client(&mut sim, V5, "backend", attrs("service", &[]));
    sim.subscribe(backend, "devices/+/telemetry/#", QoS::AtLeastOnce);
    let s1 = client(&mut sim, V5, "s1", attrs("sensor", &["north"]));
    sim.publish(
        s1,
        "devices/s1/telemetry/temp",
        QoS::AtLeastOnce,
        false,
        b"21",
    );
    assert_eq!(puback(&mut sim, s1), ReasonCode::Success);
    let got = sim.publishes(backend);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic.as_str(), "devices/s1/telemetry/temp");
}

#[test]
fn a_denied_publish_is_0x87_on_5_0_acknowledged_and_dropped_on_3_1_1_and_counted() {
    let mut sim = sim();
    let backend = client(&mut sim, V5, "backend", attrs("service", &[]));
    sim.subscribe(backend, "devices/+/telemetry/#", QoS::AtLeastOnce);
    let s1 = client(&mut sim, V5, "s1", attrs("sensor", &[]));
    // Another sensor's topic.
    sim.publish(s1, "devices/s2/telemetry/t", QoS::AtLeastOnce, false, b"x");
    assert_eq!(puback(&mut sim, s1), ReasonCode::NotAuthorized);
    sim.publish(s1, "devices/s2/telemetry/t", QoS::ExactlyOnce, false, b"x");
    match sim.recv(s1) {
        Some(Packet::PubRec(r)) => assert_eq!(r.reason_code, ReasonCode::NotAuthorized),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    sim.publish(s1, "devices/s2/telemetry/t", QoS::AtMostOnce, false, b"x");
    // 3.1.1: acknowledged as usual [MQTT-3.3.5-2], never delivered.
    let s2 = client(&mut sim, V4, "s2", attrs("sensor", &[]));
    sim.publish(s2, "devices/s1/telemetry/t", QoS::AtLeastOnce, false, b"x");
    assert_eq!(puback(&mut sim, s2), ReasonCode::Success);
    assert!(
        sim.publishes(backend).is_empty(),
        "nothing denied is delivered"
    );
    assert_eq!(sim.broker.stats().publish_not_authorized, 4);
    // A client in no group with a publisher binding for the topic at all.
    sim.publish(
        backend,
        "devices/backend/telemetry/t",
        QoS::AtLeastOnce,
        false,
        b"x",
    );
    assert_eq!(puback(&mut sim, backend), ReasonCode::NotAuthorized);
}

#[test]
fn a_subscribe_is_allowed_only_when_a_template_covers_the_whole_filter() {
    let mut sim = sim();
    let backend = client(&mut sim, V5, "backend", attrs("service", &[]));
    let ack = sim.subscribe_many(
        backend,
        &[
            ("devices/+/telemetry/#", QoS::AtLeastOnce),
            ("devices/s1/telemetry/temp", QoS::AtLeastOnce),
            ("$share/g/devices/+/telemetry/x", QoS::AtLeastOnce),
            // Broader than the template.
            ("devices/#", QoS::AtLeastOnce),
            ("#", QoS::AtLeastOnce),
            ("devices/s1/commands", QoS::AtLeastOnce),
        ],
    );
    assert_eq!(
        ack.reason_codes,
        vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS1,
            ReasonCode::NotAuthorized,
            ReasonCode::NotAuthorized,
            ReasonCode::NotAuthorized,
        ]
    );
    // 3.1.1: 0x80 for the refused filter.
    let s1 = client(&mut sim, V4, "s1", attrs("sensor", &[]));
    let ack = sim.subscribe_many(
        s1,
        &[
            ("devices/s1/commands", QoS::AtLeastOnce),
            ("devices/s2/commands", QoS::AtLeastOnce),
        ],
    );
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError]
    );
    assert_eq!(sim.broker.stats().subscribe_not_authorized, 4);
}

#[test]
fn list_attributes_grant_one_topic_per_element_and_a_missing_one_grants_nothing() {
    let mut sim = sim();
    let a = client(&mut sim, V5, "a", attrs("sensor", &["north", "south"]));
    for (topic, code) in [
        ("zones/north/status", ReasonCode::NoMatchingSubscribers),
        ("zones/south/status", ReasonCode::NoMatchingSubscribers),
        ("zones/east/status", ReasonCode::NotAuthorized),
    ] {
        sim.publish(a, topic, QoS::AtLeastOnce, false, b"x");
        assert_eq!(puback(&mut sim, a), code, "{topic}");
    }
    // No zones attribute at all: the template gives it nothing.
    let mut bare = Attributes::new();
    bare.insert("type".into(), AttributeValue::String("sensor".into()));
    let b = client(&mut sim, V5, "b", Arc::new(bare));
    sim.publish(b, "zones/north/status", QoS::AtLeastOnce, false, b"x");
    assert_eq!(puback(&mut sim, b), ReasonCode::NotAuthorized);
}

#[test]
fn wills_and_retained_messages_are_decided_like_any_publish() {
    let mut sim = sim();
    // 5.0: a will on a topic the client may not publish to refuses the CONNECT.
    let mut p = connect_packet(V5, "s1", true);
    p.will = Some(will(
        "devices/s2/telemetry/last",
        b"bye",
        QoS::AtMostOnce,
        false,
    ));
    let (_, ack) = try_client(&mut sim, p, "s1", attrs("sensor", &[]));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    // 3.1.1: connected, the will dropped (never published).
    let backend = client(&mut sim, V5, "backend", attrs("service", &[]));
    sim.subscribe(backend, "devices/+/telemetry/#", QoS::AtLeastOnce);
    let mut p = connect_packet(V4, "s1", true);
    p.will = Some(will(
        "devices/s2/telemetry/last",
        b"bye",
        QoS::AtMostOnce,
        false,
    ));
    let (s1, ack) = try_client(&mut sim, p, "s1", attrs("sensor", &[]));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sim.kill(s1);
    assert!(sim.publishes(backend).is_empty());
    // An allowed will is published.
    let mut p = connect_packet(V5, "s3", true);
    p.will = Some(will(
        "devices/s3/telemetry/last",
        b"bye",
        QoS::AtMostOnce,
        false,
    ));
    let (s3, _) = try_client(&mut sim, p, "s3", attrs("sensor", &[]));
    sim.kill(s3);
    assert_eq!(sim.publishes(backend).len(), 1);
    // A denied retained message is not stored.
    let s4 = client(&mut sim, V5, "s4", attrs("sensor", &[]));
    sim.publish(s4, "devices/s9/telemetry/r", QoS::AtLeastOnce, true, b"r");
    assert_eq!(puback(&mut sim, s4), ReasonCode::NotAuthorized);
    assert_eq!(sim.broker.retained_count(), 0);
    sim.publish(s4, "devices/s4/telemetry/r", QoS::AtLeastOnce, true, b"r");
    assert_eq!(puback(&mut sim, s4), ReasonCode::Success);
    assert_eq!(sim.broker.retained_count(), 1);
}

#[test]
fn a_new_policy_revokes_subscriptions_it_no_longer_allows_and_keeps_the_connection() {
    let mut sim = sim();
    let s1 = client(&mut sim, V5, "s1", attrs("sensor", &[]));
    sim.subscribe(s1, "devices/s1/commands", QoS::AtLeastOnce);
    let backend = client(&mut sim, V5, "backend", attrs("service", &[]));
    // Without the commands binding (and its publisher): the subscription goes.
    let now = sim.now;
    assert_eq!(sim.broker.set_authorization(now, Some(policy(false))), 1);
    assert_eq!(sim.broker.stats().subscriptions_revoked, 1);
    let mut open = (*policy(true)).clone();
    open.mode = Mode::Open;
    sim.publish(
        backend,
        "devices/s1/commands",
        QoS::AtLeastOnce,
        false,
        b"x",
    );
    assert_eq!(puback(&mut sim, backend), ReasonCode::NotAuthorized);
    // Open mode allows everything: the backend's command goes, but the revoked
    // subscription is gone.
    assert_eq!(sim.broker.set_authorization(now, Some(Arc::new(open))), 0);
    sim.publish(
        backend,
        "devices/s1/commands",
        QoS::AtLeastOnce,
        false,
        b"x",
    );
    assert_eq!(puback(&mut sim, backend), ReasonCode::NoMatchingSubscribers);
    assert!(sim.publishes(s1).is_empty());
    // s1 is still connected and may subscribe again under the open policy.
    assert_eq!(sim.closed(s1), None);
    let ack = sim.subscribe(s1, "anything/#", QoS::AtMostOnce);
    assert_eq!(ack.reason_codes, vec![ReasonCode::Success]);
}

#[test]
fn without_a_policy_everything_is_allowed_as_before() {
    let mut sim = Sim::new(Config::default());
    let a = sim.connect(V5, "a", true);
    let ack = sim.subscribe(a, "#", QoS::AtLeastOnce);
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
    let b = sim.connect(V5, "b", true);
    sim.publish(b, "any/topic", QoS::AtLeastOnce, false, b"x");
    assert_eq!(puback(&mut sim, b), ReasonCode::Success);
    assert_eq!(sim.publishes(a).len(), 1);
}

#[test]
fn the_remembered_decision_for_the_last_topic_follows_the_topic_and_the_policy() {
    let mut sim = sim();
    let s1 = client(&mut sim, V5, "s1", attrs("sensor", &["north"]));
    let topics = [
        ("devices/s1/telemetry/t", ReasonCode::NoMatchingSubscribers),
        ("devices/s1/telemetry/t", ReasonCode::NoMatchingSubscribers),
        ("devices/s2/telemetry/t", ReasonCode::NotAuthorized),
        ("devices/s2/telemetry/t", ReasonCode::NotAuthorized),
        ("devices/s1/telemetry/t", ReasonCode::NoMatchingSubscribers),
    ];
    for (topic, code) in topics {
        sim.publish(s1, topic, QoS::AtLeastOnce, false, b"x");
        assert_eq!(puback(&mut sim, s1), code, "{topic}");
    }
    // A policy without the sensors' publisher binding: the topic just allowed is
    // decided anew.
    let mut stricter = (*policy(true)).clone();
    stricter.bindings.retain(|b| b.name != "sensors-publish");
    let now = sim.now;
    sim.broker.set_authorization(now, Some(Arc::new(stricter)));
    sim.publish(s1, "devices/s1/telemetry/t", QoS::AtLeastOnce, false, b"x");
    assert_eq!(puback(&mut sim, s1), ReasonCode::NotAuthorized);
}
