//! Authentication as an exchange (`set_external_authentication`): a CONNECT or AUTH
//! becomes a question, the connection waits, the answer comes back as input. Input
//! while waiting, a close, the connect timeout, a takeover racing the answer, a
//! refusal, and an AUTH exchange across several answers.
mod sim;

use std::time::Duration;

use broker_state::{AuthKind, AuthStep, Config, MAX_HELD_PACKETS};
use mqtt_proto::bytes::Bytes;
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn external() -> Sim {
    let mut sim = Sim::new(Config::default());
    sim.broker.set_external_authentication(true);
    sim
}

fn with_password(
    version: ProtocolVersion,
    client_id: &str,
    user: &str,
    password: &[u8],
) -> Connect {
    let mut c = connect_packet(version, client_id, true);
    c.username = Some(MqttString::copy_from_str(user).expect("user"));
    c.password = Some(Bytes::copy_from_slice(password));
    c
}

fn allow(name: &str) -> AuthStep {
    AuthStep::allow(Some(name.to_owned()))
}

/// Sends CONNECT on a new connection and returns it; nothing is answered yet.
fn pending(sim: &mut Sim, connect: Connect) -> C {
    let c = sim.accept(connect.protocol);
    sim.send(c, Packet::Connect(Box::new(connect)));
    c
}

fn connack(sim: &mut Sim, c: C) -> ConnAck {
    match sim.recv(c) {
        Some(Packet::ConnAck(a)) => *a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn a_connect_waits_for_its_answer_and_the_question_carries_the_credentials() {
    let mut sim = external();
    let c = pending(&mut sim, with_password(V5, "dev-1", "alice", b"s3cret"));
    sim.assert_silent(c);
    assert!(sim.broker.is_authenticating(sim.clients[c].conn));
    let q = sim.question();
    assert_eq!(q.client_id.as_str(), "dev-1");
    assert_eq!(q.protocol, V5);
    assert_eq!(
        q.kind,
        AuthKind::Password {
            username: Some(MqttString::copy_from_str("alice").unwrap()),
            password: Some(Bytes::from_static(b"s3cret")),
        }
    );
    sim.answer(&q, allow("alice"));
    assert_eq!(connack(&mut sim, c).reason_code, ReasonCode::Success);
    assert!(!sim.broker.is_authenticating(sim.clients[c].conn));
    // The answer's name owns the session: another name may not take it.
    let other = pending(&mut sim, with_password(V5, "dev-1", "mallory", b"x"));
    let q = sim.question();
    sim.answer(&q, allow("mallory"));
    assert_eq!(
        connack(&mut sim, other).reason_code,
        ReasonCode::NotAuthorized
    );
}

#[test]
fn input_while_pending_is_handled_after_the_connack_in_order() {
    let mut sim = external();
    let c = pending(&mut sim, with_password(V5, "pipelined", "bob", b"pw"));
    // A client need not wait for CONNACK: SUBSCRIBE and a QoS 1 PUBLISH follow.
    let id = sim.next_id(c);
    sim.send(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: vec![(
                TopicFilter::copy_from_str("p/#").unwrap(),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
            properties: Default::default(),
        }),
    );
    let pid = sim.next_id(c);
    sim.send_publish(
        c,
        publish_packet("p/1", QoS::AtLeastOnce, false, Some(pid), b"hi"),
    );
    sim.assert_silent(c);
    let q = sim.question();
    sim.answer(&q, allow("bob"));
    let got = sim.recv_all(c);
    assert!(
        matches!(&got[0], Packet::ConnAck(a) if a.reason_code == ReasonCode::Success),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Packet::SubAck(a) if a.packet_id == id),
        "{got:?}"
    );
    // Its own message comes back to it, and the PUBACK follows.
    let rest: Vec<_> = got[2..].iter().collect();
    assert!(
        rest.iter()
            .any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"hi")),
        "{got:?}"
    );
    assert!(
        rest.iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id == pid)),
        "{got:?}"
    );
}

#[test]
fn input_beyond_the_held_bound_closes_the_connection() {
    let mut sim = external();
    let c = pending(&mut sim, with_password(V5, "flooder", "eve", b"pw"));
    for _ in 0..MAX_HELD_PACKETS {
        sim.send(c, Packet::PingReq);
    }
    assert_eq!(sim.closed(c), None);
    sim.send(c, Packet::PingReq);
    assert_eq!(sim.closed(c), Some(ReasonCode::QuotaExceeded));
    // The answer that comes later finds nobody.
    let q = sim.question();
    sim.answer(&q, allow("eve"));
    assert!(sim.clients[c].raw.is_empty());
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn a_close_while_pending_is_clean_and_the_late_answer_is_ignored() {
    let mut sim = external();
    let c = pending(&mut sim, with_password(V4, "gone", "carol", b"pw"));
    let q = sim.question();
    sim.kill(c);
    assert_eq!(sim.broker.connection_count(), 0);
    // The slot is reused by a new connection: the old ticket must not touch it.
    let d = pending(&mut sim, with_password(V4, "next", "dave", b"pw"));
    sim.answer(&q, allow("carol"));
    sim.assert_silent(d);
    assert_eq!(sim.broker.session_count(), 0);
    let q2 = sim.question();
    sim.answer(&q2, allow("dave"));
    assert_eq!(connack(&mut sim, d).reason_code, ReasonCode::Success);
}

#[test]
fn the_connect_timeout_runs_while_pending() {
    let mut sim = external();
    let c = pending(&mut sim, with_password(V5, "slow", "sam", b"pw"));
    let q = sim.question();
    sim.advance(Config::default().connect_timeout + Duration::from_millis(1));
    assert_eq!(sim.closed(c), Some(ReasonCode::MaximumConnectTime));
    sim.answer(&q, allow("sam"));
    assert!(
        sim.clients[c].raw.is_empty(),
        "no CONNACK after the timeout"
    );
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn a_takeover_happens_only_after_the_answer_accepts_the_new_connection() {
    let mut sim = external();
    let old = pending(&mut sim, with_password(V5, "dev", "alice", b"pw"));
    let q = sim.question();
    sim.answer(&q, allow("alice"));
    connack(&mut sim, old);
    sim.subscribe(old, "t", QoS::AtMostOnce);
    // A second CONNECT for the same client id: pending, the old one keeps working.
    let new = pending(&mut sim, with_password(V5, "dev", "alice", b"wrong"));
    let q_new = sim.question();
    let p = pending(&mut sim, connect_packet(V4, "p", true));
    let q = sim.question();
    sim.answer(&q, AuthStep::allow(None));
    assert_eq!(connack(&mut sim, p).reason_code, ReasonCode::Success);
    sim.publish(p, "t", QoS::AtMostOnce, false, b"still mine");
    assert_eq!(payloads(&sim.publishes(old)), vec![&b"still mine"[..]]);
    // Refused: the old connection is untouched.
    sim.answer(&q_new, AuthStep::Failure(ReasonCode::BadUserNameOrPassword));
    assert_eq!(
        connack(&mut sim, new).reason_code,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(sim.closed(old), None);
    // Accepted: now it takes over (DISCONNECT 0x8E to the old one).
    let again = pending(&mut sim, with_password(V5, "dev", "alice", b"pw"));
    let q = sim.question();
    assert_eq!(sim.closed(old), None);
    sim.answer(&q, allow("alice"));
    assert_eq!(connack(&mut sim, again).reason_code, ReasonCode::Success);
    assert_eq!(sim.expect_disconnect(old), ReasonCode::SessionTakenOver);
}

#[test]
fn a_refusal_is_the_connack_code_for_each_version() {
    // 5.0: CONNACK 0x86 (with its Reason String); 3.1.1: return code 4.
    for (v, code) in [(V5, 0x86), (V4, 0x04)] {
        let mut sim = external();
        let c = pending(&mut sim, with_password(v, "r", "u", b"bad"));
        let q = sim.question();
        sim.answer(&q, AuthStep::Failure(ReasonCode::BadUserNameOrPassword));
        let raw = &sim.clients[c].raw;
        assert_eq!(
            (raw[0], raw[2], raw[3]),
            (0x20, 0x00, code),
            "{v}: {raw:02x?}"
        );
        assert_eq!(sim.closed(c), Some(ReasonCode::BadUserNameOrPassword));
    }
}

#[test]
fn an_auth_exchange_across_several_answers_then_reauthentication_mqtt_4_12() {
    let mut sim = external();
    let mut connect = connect_packet(V5, "scram", true);
    connect.properties.authentication_method = Some(MqttString::copy_from_str("SCRAM").unwrap());
    connect.properties.authentication_data = Some(Bytes::from_static(b"client-first"));
    let c = pending(&mut sim, connect);
    let q = sim.question();
    assert!(
        matches!(&q.kind, AuthKind::Start { method, data, reauthenticate: false }
        if method.as_str() == "SCRAM" && data.as_deref() == Some(&b"client-first"[..]))
    );
    sim.answer(
        &q,
        AuthStep::Continue(Some(Bytes::from_static(b"server-first"))),
    );
    match sim.recv(c) {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason_code, ReasonCode::ContinueAuthentication);
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"server-first"[..])
            );
        }
        other => panic!("expected AUTH 0x18, got {other:?}"),
    }
    sim.send(
        c,
        auth(ReasonCode::ContinueAuthentication, "SCRAM", b"client-final"),
    );
    let q = sim.question();
    assert!(
        matches!(&q.kind, AuthKind::Step { data, .. } if data.as_deref() == Some(&b"client-final"[..]))
    );
    sim.answer(
        &q,
        AuthStep::Success {
            data: Some(Bytes::from_static(b"server-final")),
            authentication_name: Some("scram-user".into()),
            attributes: None,
            valid_until_ms: None,
        },
    );
    let ack = connack(&mut sim, c);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(
        ack.properties.authentication_data.as_deref(),
        Some(&b"server-final"[..])
    );

    // Re-authentication: the connection works while the answer is awaited; a
    // second AUTH before it is a Protocol Error.
    sim.send(c, auth(ReasonCode::ReAuthenticate, "SCRAM", b"again"));
    let q = sim.question();
    assert!(matches!(
        &q.kind,
        AuthKind::Start {
            reauthenticate: true,
            ..
        }
    ));
    sim.subscribe(c, "still/working", QoS::AtMostOnce);
    sim.answer(&q, AuthStep::allow(Some("scram-user".into())));
    match sim.recv(c) {
        Some(Packet::Auth(a)) => assert_eq!(a.reason_code, ReasonCode::Success),
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }
    sim.send(c, auth(ReasonCode::ReAuthenticate, "SCRAM", b"third"));
    let _ = sim.question();
    sim.send(
        c,
        auth(ReasonCode::ContinueAuthentication, "SCRAM", b"too early"),
    );
    assert_eq!(sim.expect_disconnect(c), ReasonCode::ProtocolError);
}

fn allow_until(name: &str, valid_until_ms: u64) -> AuthStep {
    AuthStep::Success {
        data: None,
        authentication_name: Some(name.to_owned()),
        attributes: None,
        valid_until_ms: Some(valid_until_ms),
    }
}

fn token_connect(client_id: &str, token: &'static [u8]) -> Connect {
    let mut connect = connect_packet(V5, client_id, true);
    connect.properties.authentication_method =
        Some(MqttString::copy_from_str("CUSTOM-JWT").unwrap());
    connect.properties.authentication_data = Some(Bytes::from_static(token));
    connect
}

#[test]
fn credentials_end_the_connection_when_they_expire_unless_renewed() {
    let mut sim = external();
    let c = pending(&mut sim, token_connect("tok", b"t1"));
    let q = sim.question();
    let t0 = sim.now.unix_ms;
    sim.answer(&q, allow_until("dev", t0 + 10_000));
    assert_eq!(connack(&mut sim, c).reason_code, ReasonCode::Success);
    // Renewed 5 s in with a token good for 20 s more: the first expiry passes.
    sim.advance(Duration::from_secs(5));
    sim.send(c, auth(ReasonCode::ReAuthenticate, "CUSTOM-JWT", b"t2"));
    let q = sim.question();
    sim.answer(&q, allow_until("dev", t0 + 25_000));
    match sim.recv(c) {
        Some(Packet::Auth(a)) => assert_eq!(a.reason_code, ReasonCode::Success),
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.closed(c), None, "renewed credentials outlive the first");
    sim.subscribe(c, "still/here", QoS::AtMostOnce);
    // Not renewed again: ended at the second expiry with Maximum connect time.
    sim.advance(Duration::from_secs(11));
    assert_eq!(sim.expect_disconnect(c), ReasonCode::MaximumConnectTime);
}

#[test]
fn credentials_already_expired_are_refused_and_a_later_token_cannot_be_stale() {
    let mut sim = external();
    let c = pending(&mut sim, token_connect("late", b"old"));
    let q = sim.question();
    let now = sim.now.unix_ms;
    sim.answer(&q, allow_until("dev", now));
    assert_eq!(connack(&mut sim, c).reason_code, ReasonCode::NotAuthorized);
    // A re-authentication whose answer is already expired fails it.
    let c = pending(&mut sim, token_connect("late", b"new"));
    let q = sim.question();
    sim.answer(&q, allow_until("dev", now + 60_000));
    assert_eq!(connack(&mut sim, c).reason_code, ReasonCode::Success);
    sim.send(c, auth(ReasonCode::ReAuthenticate, "CUSTOM-JWT", b"stale"));
    let q = sim.question();
    sim.answer(&q, allow_until("dev", now));
    assert_eq!(sim.expect_disconnect(c), ReasonCode::NotAuthorized);
}

#[test]
fn an_expiry_with_keep_alive_fires_whichever_comes_first() {
    let mut sim = external();
    // Keep-alive 60 s (checked at 90 s); credentials for 30 s: expiry first.
    let c = pending(&mut sim, with_password(V5, "pw", "alice", b"pw"));
    let q = sim.question();
    let t0 = sim.now.unix_ms;
    sim.answer(&q, allow_until("alice", t0 + 30_000));
    assert_eq!(connack(&mut sim, c).reason_code, ReasonCode::Success);
    sim.advance(Duration::from_secs(29));
    sim.send(c, Packet::PingReq);
    assert!(matches!(sim.recv(c), Some(Packet::PingResp)));
    assert_eq!(sim.closed(c), None);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.expect_disconnect(c), ReasonCode::MaximumConnectTime);
    // Without an expiry the keep-alive still ends a silent connection.
    let d = pending(&mut sim, with_password(V5, "pw2", "bob", b"pw"));
    let q = sim.question();
    sim.answer(&q, allow("bob"));
    assert_eq!(connack(&mut sim, d).reason_code, ReasonCode::Success);
    sim.advance(Duration::from_secs(91));
    assert_eq!(sim.expect_disconnect(d), ReasonCode::KeepAliveTimeout);
}
