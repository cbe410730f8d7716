//! Lifecycle events (`Config::lifecycle_events`): a connected event when CONNECT
//! is accepted, a disconnected event with Event Grid's reason for every way a
//! connected session's connection ends, sequence numbers that order them, nothing
//! at all when they are off; and `publish_from_broker`, how an adapter publishes
//! them on `$events/...`.
mod sim;

use std::time::Duration;

use broker_state::{Config, DisconnectionReason, LifecycleEvent, LifecycleKind};
use mqtt_proto::bytes::Bytes;
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn on() -> Sim {
    Sim::new(Config {
        lifecycle_events: true,
        ..Config::default()
    })
}

/// Takes the events emitted so far.
fn taken(sim: &mut Sim) -> Vec<LifecycleEvent> {
    std::mem::take(&mut sim.lifecycle)
}

/// The one event emitted since the last look, which must be a disconnected one:
/// its client id, reason and MQTT reason code.
fn ended(sim: &mut Sim) -> (String, DisconnectionReason, Option<ReasonCode>) {
    let events = taken(sim);
    assert_eq!(events.len(), 1, "one event expected: {events:?}");
    match events[0].kind {
        LifecycleKind::Disconnected {
            reason,
            reason_code,
        } => (events[0].client_id.as_str().to_owned(), reason, reason_code),
        other => panic!("expected a disconnected event, got {other:?}"),
    }
}

/// Connects `id` and forgets its connected event.
fn connected(sim: &mut Sim, version: ProtocolVersion, id: &str) -> C {
    let c = sim.connect(version, id, true);
    let events = taken(sim);
    assert!(
        matches!(
            events.as_slice(),
            [LifecycleEvent {
                kind: LifecycleKind::Connected { .. },
                ..
            }]
        ),
        "{events:?}"
    );
    c
}

fn topic(t: &str) -> TopicName {
    TopicName::copy_from_str(t).expect("topic")
}

// ------------------------------------------------------------------ connected

#[test]
fn connect_emits_connected_with_the_session_and_authentication_name() {
    let mut sim = on();
    sim.broker.set_external_authentication(true);
    sim.auto_answer = true;
    let mut p = connect_packet(V5, "dev-1", false);
    p.username = Some(MqttString::copy_from_str("alice").unwrap());
    p.properties.session_expiry_interval = Some(600);
    let (c, ack) = sim.connect_with(p.clone());
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let events = taken(&mut sim);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(
        e.kind,
        LifecycleKind::Connected {
            session_present: false
        }
    );
    assert_eq!(
        e.kind.event_type(),
        "Microsoft.EventGrid.MQTTClientSessionConnected"
    );
    assert_eq!(e.conn, sim.clients[c].conn);
    assert_eq!(e.client_id.as_str(), "dev-1");
    assert_eq!(e.authentication_name.as_deref(), Some("alice"));
    assert_eq!(e.unix_ms, sim.now.unix_ms);
    // Resumed: Session Present is carried.
    sim.disconnect(c);
    taken(&mut sim);
    let (_, ack) = sim.connect_with(p);
    assert!(ack.session_present);
    assert_eq!(
        taken(&mut sim)[0].kind,
        LifecycleKind::Connected {
            session_present: true
        }
    );
}

#[test]
fn a_refused_connect_emits_nothing() {
    let mut sim = on();
    sim.broker.set_external_authentication(true);
    let c = sim.accept(V5);
    sim.send(
        c,
        Packet::Connect(Box::new(connect_packet(V5, "nobody", true))),
    );
    let q = sim.question();
    sim.answer(
        &q,
        broker_state::AuthStep::Failure(ReasonCode::NotAuthorized),
    );
    assert!(
        matches!(sim.recv(c), Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::NotAuthorized)
    );
    sim.kill(c);
    assert_eq!(taken(&mut sim), []);
}

// ------------------------------------------------------------------ every end

#[test]
fn client_disconnect_is_client_initiated_whatever_its_code() {
    let mut sim = on();
    let c = connected(&mut sim, V4, "a");
    sim.disconnect(c);
    assert_eq!(
        ended(&mut sim),
        (
            "a".into(),
            DisconnectionReason::ClientInitiatedDisconnect,
            Some(ReasonCode::Success)
        )
    );
    let c = connected(&mut sim, V5, "b");
    sim.send(
        c,
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
    assert_eq!(
        ended(&mut sim),
        (
            "b".into(),
            DisconnectionReason::ClientInitiatedDisconnect,
            Some(ReasonCode::DisconnectWithWillMessage)
        )
    );
}

#[test]
fn a_lost_transport_is_connection_lost() {
    let mut sim = on();
    let c = connected(&mut sim, V4, "gone");
    sim.kill(c);
    assert_eq!(
        ended(&mut sim),
        ("gone".into(), DisconnectionReason::ConnectionLost, None)
    );
}

#[test]
fn keep_alive_expiry_is_connection_lost_mqtt_3_1_2_24() {
    let mut sim = on();
    let c = connected(&mut sim, V5, "silent");
    // Keep Alive 60 s: ended after 90 s without a packet.
    sim.advance(Duration::from_secs(89));
    assert_eq!(taken(&mut sim), []);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.expect_disconnect(c), ReasonCode::KeepAliveTimeout);
    assert_eq!(
        ended(&mut sim),
        (
            "silent".into(),
            DisconnectionReason::ConnectionLost,
            Some(ReasonCode::KeepAliveTimeout)
        )
    );
}

#[test]
fn takeover_ends_the_old_connection_before_the_new_one_connects_mqtt_3_1_4_3() {
    let mut sim = on();
    let old = connected(&mut sim, V5, "twin");
    let new = sim.connect(V4, "twin", true);
    assert_eq!(sim.expect_disconnect(old), ReasonCode::SessionTakenOver);
    let events = taken(&mut sim);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].conn, sim.clients[old].conn);
    assert_eq!(
        events[0].kind,
        LifecycleKind::Disconnected {
            reason: DisconnectionReason::SessionTakenOver,
            reason_code: Some(ReasonCode::SessionTakenOver)
        }
    );
    assert_eq!(events[1].conn, sim.clients[new].conn);
    assert!(matches!(events[1].kind, LifecycleKind::Connected { .. }));
    assert!(events[0].sequence_number < events[1].sequence_number);
}

#[test]
fn a_protocol_violation_is_a_client_error() {
    let mut sim = on();
    let c = connected(&mut sim, V5, "rude");
    // [MQTT-3.1.0-2] a second CONNECT.
    sim.send(
        c,
        Packet::Connect(Box::new(connect_packet(V5, "rude", true))),
    );
    assert_eq!(sim.expect_disconnect(c), ReasonCode::ProtocolError);
    assert_eq!(
        ended(&mut sim),
        (
            "rude".into(),
            DisconnectionReason::ClientError,
            Some(ReasonCode::ProtocolError)
        )
    );
    // Bytes that do not decode.
    let c = connected(&mut sim, V5, "garbled");
    sim.send_bytes(c, &[0x30, 0x03, 0x00, 0x05, b'x']);
    assert!(sim.closed(c).is_some());
    let (id, reason, _) = ended(&mut sim);
    assert_eq!(
        (id.as_str(), reason),
        ("garbled", DisconnectionReason::ClientError)
    );
}

#[test]
fn expired_credentials_and_failed_reauthentication_are_authentication_errors() {
    let mut sim = on();
    sim.broker.set_external_authentication(true);
    let t0 = sim.now.unix_ms;
    let until = |ms| broker_state::AuthStep::Success {
        data: None,
        authentication_name: Some("dev".into()),
        attributes: None,
        valid_until_ms: Some(ms),
    };
    let mut p = connect_packet(V5, "tok", true);
    p.properties.authentication_method = Some(MqttString::copy_from_str("JWT").unwrap());
    let c = sim.accept(V5);
    sim.send(c, Packet::Connect(Box::new(p.clone())));
    let q = sim.question();
    sim.answer(&q, until(t0 + 10_000));
    assert!(matches!(sim.recv(c), Some(Packet::ConnAck(_))));
    taken(&mut sim);
    sim.advance(Duration::from_secs(11));
    assert_eq!(sim.expect_disconnect(c), ReasonCode::MaximumConnectTime);
    assert_eq!(
        ended(&mut sim),
        (
            "tok".into(),
            DisconnectionReason::ClientAuthenticationError,
            Some(ReasonCode::MaximumConnectTime)
        )
    );
    // A re-authentication the authenticator refuses: disconnected with its code,
    // an authentication error whatever the code says.
    let c = sim.accept(V5);
    sim.send(c, Packet::Connect(Box::new(p)));
    let q = sim.question();
    sim.answer(&q, until(sim.now.unix_ms + 60_000));
    assert!(matches!(sim.recv(c), Some(Packet::ConnAck(_))));
    taken(&mut sim);
    sim.send(c, auth(ReasonCode::ReAuthenticate, "JWT", b"bad"));
    let q = sim.question();
    sim.answer(
        &q,
        broker_state::AuthStep::Failure(ReasonCode::NotAuthorized),
    );
    assert_eq!(sim.expect_disconnect(c), ReasonCode::NotAuthorized);
    assert_eq!(
        ended(&mut sim),
        (
            "tok".into(),
            DisconnectionReason::ClientAuthenticationError,
            Some(ReasonCode::NotAuthorized)
        )
    );
}

#[test]
fn a_refused_subscription_of_a_3_1_client_is_an_authorization_error() {
    let mut sim = on();
    sim.broker.set_authorizer(Box::new(DenySecret));
    let c = connected(&mut sim, ProtocolVersion::V3_1, "old");
    sim.send(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![(
                TopicFilter::copy_from_str("secret/x").unwrap(),
                SubscriptionOptions::qos(QoS::AtMostOnce),
            )],
            properties: Default::default(),
        }),
    );
    assert_eq!(sim.closed(c), Some(ReasonCode::NotAuthorized));
    assert_eq!(
        ended(&mut sim),
        (
            "old".into(),
            DisconnectionReason::ClientAuthorizationError,
            Some(ReasonCode::NotAuthorized)
        )
    );
}

#[test]
fn a_store_failure_is_a_server_error() {
    let mut sim = Sim::new(Config {
        lifecycle_events: true,
        store_effects: true,
        ..Config::default()
    });
    sim.auto_commit = false;
    let (s, _) = sim.connect_v5("s", false, Some(600));
    sim.commit_store();
    taken(&mut sim);
    sim.subscribe_opts_nowait(s, "t");
    sim.fail_store();
    assert_eq!(sim.expect_disconnect(s), ReasonCode::UnspecifiedError);
    assert_eq!(
        ended(&mut sim),
        (
            "s".into(),
            DisconnectionReason::ServerError,
            Some(ReasonCode::UnspecifiedError)
        )
    );
}

#[test]
fn shutdown_is_server_initiated_for_every_connected_session() {
    let mut sim = on();
    let a = connected(&mut sim, V5, "a");
    let b = connected(&mut sim, V4, "b");
    // Not connected yet: no session, no event.
    let _waiting = sim.accept(V5);
    sim.broker.handle_shutdown(sim.now);
    sim.drain();
    let events = taken(&mut sim);
    let conns: Vec<_> = events.iter().map(|e| e.conn).collect();
    assert_eq!(conns, [sim.clients[a].conn, sim.clients[b].conn]);
    for e in &events {
        assert_eq!(
            e.kind,
            LifecycleKind::Disconnected {
                reason: DisconnectionReason::ServerInitiatedDisconnect,
                reason_code: Some(ReasonCode::ServerShuttingDown)
            }
        );
    }
    // The closes that follow add nothing.
    sim.drain();
    assert_eq!(taken(&mut sim), []);
}

#[test]
fn a_connection_ends_once_whatever_follows() {
    let mut sim = on();
    let c = connected(&mut sim, V5, "once");
    sim.disconnect(c);
    // The transport closes after DISCONNECT: nothing more.
    sim.kill(c);
    sim.advance(Duration::from_secs(200));
    let (_, reason, _) = ended(&mut sim);
    assert_eq!(reason, DisconnectionReason::ClientInitiatedDisconnect);
}

// ------------------------------------------------------------------ sequence numbers

#[test]
fn sequence_numbers_order_a_sessions_events_across_connections_and_sessions() {
    let mut sim = on();
    let first = sim.now.unix_ms * 1000;
    // Connect, disconnect and reconnect in the same millisecond; a clean start
    // makes a new session of the same name, whose events still come later.
    let c = sim.connect(V4, "dev", true);
    sim.disconnect(c);
    let c = sim.connect(V5, "dev", true);
    sim.kill(c);
    let seqs: Vec<u64> = taken(&mut sim).iter().map(|e| e.sequence_number).collect();
    assert_eq!(seqs, [first, first + 1, first + 2, first + 3]);
    // Later, the wall clock leads.
    sim.advance(Duration::from_secs(5));
    sim.connect(V4, "dev", true);
    let e = taken(&mut sim);
    assert_eq!(e[0].sequence_number, sim.now.unix_ms * 1000);
    assert_eq!(e[0].unix_ms, sim.now.unix_ms);
}

// ------------------------------------------------------------------ off

#[test]
fn nothing_is_emitted_when_off() {
    let mut sim = Sim::default();
    let a = sim.connect(V5, "a", true);
    let b = sim.connect(V4, "b", true);
    sim.connect(V5, "a", true); // takeover
    sim.disconnect(b);
    let c = sim.connect(V4, "c", true);
    sim.kill(c);
    sim.advance(Duration::from_secs(200));
    sim.broker.handle_shutdown(sim.now);
    sim.drain();
    assert!(sim.closed(a).is_some());
    assert_eq!(taken(&mut sim), []);
}

#[test]
fn switched_on_at_run_time() {
    let mut sim = Sim::default();
    let a = sim.connect(V4, "a", true);
    sim.broker.set_lifecycle_events(true);
    assert!(sim.broker.config().lifecycle_events);
    // A connection that came before is reported when it ends.
    sim.disconnect(a);
    let (id, reason, _) = ended(&mut sim);
    assert_eq!(
        (id.as_str(), reason),
        ("a", DisconnectionReason::ClientInitiatedDisconnect)
    );
    sim.broker.set_lifecycle_events(false);
    let b = sim.connect(V4, "b", true);
    sim.disconnect(b);
    assert_eq!(taken(&mut sim), []);
}

// ------------------------------------------------------------------ publish_from_broker

#[test]
fn broker_messages_reach_only_filters_that_name_dollar_topics_mqtt_4_7_2_1() {
    let mut sim = Sim::default();
    let events = sim.connect(V5, "events", true);
    sim.subscribe(events, "$events/clients/+/connected", QoS::AtLeastOnce);
    let all = sim.connect(V5, "all", true);
    sim.subscribe(all, "#", QoS::AtLeastOnce);
    let plus = sim.connect(V4, "plus", true);
    sim.subscribe(plus, "+/clients/#", QoS::AtLeastOnce);
    let low = sim.connect(V4, "low", true);
    sim.subscribe(low, "$events/#", QoS::AtMostOnce);
    let props = PublishProperties {
        content_type: MqttString::copy_from_str("application/cloudevents+json").ok(),
        ..PublishProperties::default()
    };
    let matched = sim.broker.publish_from_broker(
        sim.now,
        topic("$events/clients/dev-1/connected"),
        Bytes::from_static(b"{}"),
        props,
    );
    sim.drain();
    assert_eq!(matched, 2);
    let got = sim.publishes(events);
    assert_eq!(got.len(), 1);
    let p = &got[0];
    assert_eq!(p.topic.as_str(), "$events/clients/dev-1/connected");
    assert_eq!((p.qos, p.retain), (QoS::AtLeastOnce, false));
    assert_eq!(&p.payload[..], b"{}");
    assert_eq!(
        p.properties.content_type.as_ref().map(|c| c.as_str()),
        Some("application/cloudevents+json")
    );
    // Granted QoS 0: delivered at QoS 0.
    let got = sim.publishes(low);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtMostOnce);
    assert!(sim.publishes(all).is_empty());
    assert!(sim.publishes(plus).is_empty());
}

#[test]
fn broker_messages_need_no_publish_authorization_and_wait_for_persistent_sessions() {
    let mut sim = Sim::default();
    sim.broker.set_authorizer(Box::new(DenySecret));
    // A persistent subscriber, offline when the message comes.
    let (s, _) = sim.connect_v5("keeper", false, Some(600));
    sim.subscribe(s, "$events/#", QoS::AtLeastOnce);
    sim.disconnect(s);
    let clean = sim.connect(V4, "clean", true);
    sim.subscribe(clean, "$events/#", QoS::AtLeastOnce);
    sim.disconnect(clean);
    let matched = sim.broker.publish_from_broker(
        sim.now,
        topic("$events/clients/x/disconnected"),
        Bytes::from_static(b"kept"),
        PublishProperties::default(),
    );
    sim.drain();
    assert_eq!(matched, 1, "the clean session ended with its connection");
    assert_eq!(sim.broker.queued_messages("keeper"), Some(1));
    let (s, ack) = sim.connect_v5("keeper", false, Some(600));
    assert!(ack.session_present);
    let got = sim.publishes(s);
    assert_eq!(payloads(&got), [&b"kept"[..]]);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    // A topic clients may not publish to: the broker may (the authorizer is not
    // asked; the subscriber was authorized when it subscribed).
    let sub = sim.connect(V5, "sub", true);
    sim.subscribe(sub, "#", QoS::AtMostOnce);
    let matched = sim.broker.publish_from_broker(
        sim.now,
        topic("secret/x"),
        Bytes::from_static(b"ok"),
        PublishProperties::default(),
    );
    sim.drain();
    assert_eq!(matched, 1);
    assert_eq!(payloads(&sim.publishes(sub)), [&b"ok"[..]]);
    sim.broker.check_invariants().unwrap();
}

#[test]
fn clients_cannot_publish_on_the_brokers_event_topics() {
    let mut sim = Sim::new(Config::default());
    let watcher = sim.connect(V5, "watcher", true);
    sim.subscribe(watcher, "$events/#", QoS::AtLeastOnce);
    let faker = sim.connect(V5, "faker", true);
    sim.publish(
        faker,
        "$events/clients/x/connected",
        QoS::AtLeastOnce,
        false,
        b"{}",
    );
    match sim.recv(faker) {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // A 3.1.1 client's is acknowledged and dropped [MQTT-3.3.5-2].
    let old = sim.connect(V4, "old", true);
    sim.publish(
        old,
        "$events/clients/x/disconnected",
        QoS::AtMostOnce,
        false,
        b"{}",
    );
    // A will there refuses a 5.0 CONNECT.
    let mut p = connect_packet(V5, "will-faker", true);
    p.will = Some(will(
        "$events/clients/x/disconnected",
        b"{}",
        QoS::AtMostOnce,
        false,
    ));
    let (_, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    assert!(sim.publishes(watcher).is_empty(), "nothing fake arrives");
    // The broker itself may.
    let now = sim.now;
    sim.broker.publish_from_broker(
        now,
        topic("$events/clients/real/connected"),
        Bytes::from_static(b"{}"),
        PublishProperties::default(),
    );
    sim.drain();
    assert_eq!(sim.publishes(watcher).len(), 1);
}
