//! CONNECT and CONNACK: protocol checks, client identifiers, authentication, keep
//! alive, the connect timeout, Session Present.
mod sim;

use std::time::Duration;

use broker_state::{AuthDecision, AuthRequest, Authenticator, Config};
use mqtt_proto::bytes::Bytes;
use mqtt_proto::*;
use sim::*;

const V3: ProtocolVersion = ProtocolVersion::V3_1;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

// ------------------------------------------------------------------ first packet

#[test]
fn first_packet_not_connect_closes_without_reply_mqtt_3_1_0_1() {
    let mut sim = Sim::default();
    // Through the decoder, as an adapter sees it: PINGREQ before CONNECT.
    let c = sim.accept(V4);
    sim.send_bytes(c, b"\xC0\x00");
    assert_eq!(sim.closed(c), Some(ReasonCode::ProtocolError));
    assert!(sim.clients[c].raw.is_empty(), "no CONNACK to a non-CONNECT");

    // Handed a decoded packet directly (an adapter with its own decoder).
    let c = sim.accept(V5);
    let conn = sim.clients[c].conn;
    let now = sim.now;
    sim.broker.handle_packet(
        now,
        conn,
        Packet::Publish(publish_packet("t", QoS::AtMostOnce, false, None, b"x")),
    );
    sim.drain();
    assert_eq!(sim.closed(c), Some(ReasonCode::ProtocolError));
    assert!(sim.clients[c].raw.is_empty());
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn second_connect_is_protocol_error_mqtt_3_1_0_2() {
    let mut sim = Sim::default();
    let watcher = sim.connect(V4, "watcher", true);
    sim.subscribe(watcher, "will/#", QoS::AtMostOnce);

    // 5.0: DISCONNECT 0x82, then close; the will is published (not a normal end).
    let mut p = connect_packet(V5, "twice5", true);
    p.will = Some(will("will/5", b"gone", QoS::AtMostOnce, false));
    let (c5, _) = sim.connect_with(p);
    sim.send(
        c5,
        Packet::Connect(Box::new(connect_packet(V5, "twice5", true))),
    );
    assert_eq!(sim.expect_disconnect(c5), ReasonCode::ProtocolError);
    assert_eq!(sim.closed(c5), Some(ReasonCode::ProtocolError));
    sim.assert_silent(c5);

    // 3.1.1: no DISCONNECT exists from server to client; the connection just closes.
    let c4 = sim.connect(V4, "twice4", true);
    let before = sim.clients[c4].raw.len();
    sim.send(
        c4,
        Packet::Connect(Box::new(connect_packet(V4, "twice4", true))),
    );
    assert_eq!(sim.closed(c4), Some(ReasonCode::ProtocolError));
    assert_eq!(sim.clients[c4].raw.len(), before, "nothing after CONNACK");

    let got = sim.publishes(watcher);
    assert_eq!(payloads(&got), vec![&b"gone"[..]]);
}

// ------------------------------------------------------------------ client ids

#[test]
fn zero_length_client_id_needs_clean_session_mqtt_3_1_3_8() {
    let mut sim = Sim::default();
    let (c, ack) = sim.connect_with(connect_packet(V4, "", false));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(!ack.session_present);
    // On the wire: CONNACK, return code 0x02 (identifier rejected).
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x02");
    assert_eq!(sim.closed(c), Some(ReasonCode::ClientIdentifierNotValid));
    assert_eq!(sim.broker.session_count(), 0);

    // With Clean Session 1 it is accepted [MQTT-3.1.3-7].
    let (c, ack) = sim.connect_with(connect_packet(V4, "", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x00");
    assert_eq!(sim.closed(c), None);
}

#[test]
fn zero_length_client_id_is_assigned_a_unique_identifier_mqtt_3_2_2_16() {
    let mut sim = Sim::default();
    // 5.0 allows a zero-length id with Clean Start 0 as well [MQTT-3.1.3-6].
    let (a, ack_a) = sim.connect_v5("", false, Some(100));
    let (b, ack_b) = sim.connect_v5("", true, None);
    assert_eq!(ack_a.reason_code, ReasonCode::Success);
    assert_eq!(ack_b.reason_code, ReasonCode::Success);
    let id_a = ack_a
        .properties
        .assigned_client_identifier
        .expect("Assigned Client Identifier");
    let id_b = ack_b
        .properties
        .assigned_client_identifier
        .expect("Assigned Client Identifier");
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b);
    assert_eq!(
        sim.broker.client_id(sim.clients[a].conn),
        Some(&id_a),
        "the session is known by the assigned id"
    );
    let _ = b;

    // The assigned id names a real session: reconnecting with it resumes it.
    sim.subscribe(a, "x", QoS::AtLeastOnce);
    sim.disconnect(a);
    let (_, ack) = sim.connect_v5(id_a.as_str(), false, Some(100));
    assert!(ack.session_present);
    assert_eq!(ack.properties.assigned_client_identifier, None);
}

#[test]
fn mqtt_3_1_client_id_over_23_characters_is_refused_with_0x02() {
    let mut sim = Sim::default();
    let c = sim.accept(V3);
    let mut bytes = mqtt_proto::bytes::BytesMut::new();
    Packet::Connect(Box::new(connect_packet(
        V3,
        "abcdefghijklmnopqrstuvwxyz",
        true,
    )))
    .encode(V3, &mut bytes)
    .unwrap();
    sim.send_bytes(c, &bytes);
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x02");
    assert_eq!(sim.closed(c), Some(ReasonCode::ClientIdentifierNotValid));
}

#[test]
fn mqtt_3_1_clients_connect_and_exchange_messages() {
    let mut sim = Sim::default();
    let a = sim.connect(V3, "old-a", true);
    let b = sim.connect(V5, "new-b", true);
    sim.subscribe(a, "t", QoS::AtLeastOnce);
    sim.publish(b, "t", QoS::AtLeastOnce, false, b"to 3.1");
    let got = sim.publishes(a);
    assert_eq!(payloads(&got), vec![&b"to 3.1"[..]]);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_eq!(sim.broker.protocol(sim.clients[a].conn), Some(V3));
}

// ------------------------------------------------------------------ protocol level

#[test]
fn unsupported_protocol_level_gets_connack_0x01_mqtt_3_1_2_2() {
    let mut sim = Sim::default();
    let c = sim.accept(V4);
    // "MQTT", level 6.
    sim.send_bytes(c, b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x01x");
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x01");
    assert_eq!(sim.closed(c), Some(ReasonCode::UnsupportedProtocolVersion));
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn unknown_protocol_name_is_closed_without_connack_mqtt_3_1_2_1() {
    let mut sim = Sim::default();
    let c = sim.accept(V4);
    sim.send_bytes(c, b"\x10\x0d\x00\x04MQXX\x04\x02\x00\x3c\x00\x01x");
    assert!(sim.clients[c].raw.is_empty());
    assert_eq!(sim.closed(c), Some(ReasonCode::MalformedPacket));
}

// ------------------------------------------------------------------ authentication

/// Accepts only the password "secret"; refuses user "banned" with Banned.
struct PasswordCheck;

impl Authenticator for PasswordCheck {
    fn authenticate(&mut self, r: &AuthRequest<'_>) -> AuthDecision {
        if r.username == Some("banned") {
            return Err(ReasonCode::Banned);
        }
        if r.username == Some("confused") {
            // A hook refusing with a success code must still refuse.
            return Err(ReasonCode::Success);
        }
        match r.password {
            Some(b"secret") => Ok(r.username.map(|u| format!("auth:{u}"))),
            _ => Err(ReasonCode::BadUserNameOrPassword),
        }
    }
}

fn with_credentials(version: ProtocolVersion, id: &str, user: &str, pass: &[u8]) -> Connect {
    let mut p = connect_packet(version, id, true);
    p.username = Some(MqttString::copy_from_str(user).unwrap());
    p.password = Some(Bytes::copy_from_slice(pass));
    p
}

#[test]
fn authentication_hook_refusal_is_sent_in_connack_mqtt_3_2_2_6() {
    let mut sim = Sim::default();
    sim.broker.set_authenticator(Box::new(PasswordCheck));

    // 5.0 sees the hook's reason code.
    let (c, ack) = sim.connect_with(with_credentials(V5, "a", "u", b"wrong"));
    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
    assert!(
        !ack.session_present,
        "[MQTT-3.2.2-6] refusal: Session Present 0"
    );
    assert_eq!(sim.closed(c), Some(ReasonCode::BadUserNameOrPassword));
    let (_, ack) = sim.connect_with(with_credentials(V5, "b", "banned", b"secret"));
    assert_eq!(ack.reason_code, ReasonCode::Banned);

    // 3.1.1 sees the nearest of its six return codes [MQTT-3.2.2-5].
    let (c, _) = sim.connect_with(with_credentials(V4, "c", "u", b"wrong"));
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x04");
    let (c, _) = sim.connect_with(with_credentials(V4, "d", "banned", b"secret"));
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x05");
    assert_eq!(sim.closed(c), Some(ReasonCode::Banned));

    // A refusal never creates a session.
    assert_eq!(sim.broker.session_count(), 0);
}

#[test]
fn authentication_hook_refusing_with_a_success_code_is_not_authorized() {
    let mut sim = Sim::default();
    sim.broker.set_authenticator(Box::new(PasswordCheck));
    let (c, ack) = sim.connect_with(with_credentials(V5, "a", "confused", b"secret"));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(sim.closed(c), Some(ReasonCode::NotAuthorized));
}

#[test]
fn authentication_hook_accepts_and_names_the_session_owner() {
    let mut sim = Sim::default();
    sim.broker.set_authenticator(Box::new(PasswordCheck));
    let mut p = with_credentials(V4, "dev", "alice", b"secret");
    p.clean_start = false;
    let (c, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(sim.closed(c), None);
    sim.disconnect(c);
    // The session belongs to alice: bob (also authenticated) may not take it over.
    let mut p = with_credentials(V5, "dev", "bob", b"secret");
    p.clean_start = false;
    let (c, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(sim.closed(c), Some(ReasonCode::NotAuthorized));
    let (_, ack) = sim.connect_with(with_credentials(V5, "dev", "alice", b"secret"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
}

// ------------------------------------------------------------------ keep alive

#[test]
fn keepalive_is_one_and_a_half_times_and_reset_by_any_packet_mqtt_3_1_2_24() {
    let mut sim = Sim::default();
    let c = sim.connect(V4, "k", true); // keep alive 60 s
    sim.advance(Duration::from_secs(80));
    sim.send(c, Packet::PingReq);
    assert_eq!(sim.recv(c), Some(Packet::PingResp));
    sim.advance(Duration::from_secs(89));
    assert_eq!(
        sim.closed(c),
        None,
        "80 + 89 s: within 1.5 x 60 s of the PINGREQ"
    );
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.closed(c), Some(ReasonCode::KeepAliveTimeout));
    sim.assert_silent(c); // 3.1.1: no DISCONNECT, just closed
}

#[test]
fn a_keep_alive_shorter_than_the_connect_timeout_is_checked_on_time_mqtt_3_1_2_24() {
    // One timer per connection, armed for the connect timeout (10 s): a keep-alive
    // of 2 s must still end the connection at 3 s, not at 10.
    let mut sim = Sim::default();
    let mut p = connect_packet(V5, "short", true);
    p.keep_alive = 2;
    let (c, _) = sim.connect_with(p);
    sim.advance(Duration::from_millis(2_900));
    assert_eq!(sim.closed(c), None);
    sim.advance(Duration::from_millis(200));
    assert_eq!(sim.closed(c), Some(ReasonCode::KeepAliveTimeout));
    // A long keep-alive rides on the connect timeout's entry and is re-armed.
    let long = sim.connect(V4, "long", true); // 60 s: 90 s
    sim.advance(Duration::from_secs(89));
    assert_eq!(sim.closed(long), None);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.closed(long), Some(ReasonCode::KeepAliveTimeout));
}

#[test]
fn keepalive_zero_never_times_out_mqtt_3_1_2_10() {
    let mut sim = Sim::default();
    let mut p = connect_packet(V5, "never", true);
    p.keep_alive = 0;
    let (c, _) = sim.connect_with(p);
    sim.advance(Duration::from_secs(100_000));
    assert_eq!(sim.closed(c), None);
}

#[test]
fn max_keep_alive_gives_5_0_clients_server_keep_alive_mqtt_3_2_2_21() {
    let mut sim = Sim::new(Config {
        max_keep_alive: 30,
        ..Config::default()
    });
    // Asked for 60: told 30, and timed out at 1.5 x 30 s.
    let (c, ack) = sim.connect_with(connect_packet(V5, "long", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    sim.advance(Duration::from_secs(44));
    assert_eq!(sim.closed(c), None);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.closed(c), Some(ReasonCode::KeepAliveTimeout));
    assert_eq!(sim.expect_disconnect(c), ReasonCode::KeepAliveTimeout);

    // Asked for 0 (no keep alive): told 30.
    let mut p = connect_packet(V5, "zero", true);
    p.keep_alive = 0;
    let (_, ack) = sim.connect_with(p);
    assert_eq!(ack.properties.server_keep_alive, Some(30));

    // Asked for less: nothing to say.
    let mut p = connect_packet(V5, "short", true);
    p.keep_alive = 10;
    let (_, ack) = sim.connect_with(p);
    assert_eq!(ack.properties.server_keep_alive, None);
}

#[test]
fn max_keep_alive_refuses_3_1_1_clients_above_it_with_0x02() {
    let mut sim = Sim::new(Config {
        max_keep_alive: 30,
        ..Config::default()
    });
    let (c, _) = sim.connect_with(connect_packet(V4, "long", true));
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x02");
    assert_eq!(sim.closed(c), Some(ReasonCode::ClientIdentifierNotValid));
    let mut p = connect_packet(V4, "zero", true);
    p.keep_alive = 0;
    let (c, _) = sim.connect_with(p);
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x02");
    let mut p = connect_packet(V4, "ok", true);
    p.keep_alive = 30;
    let (_, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::Success);
}

// ------------------------------------------------------------------ connect timeout

#[test]
fn connection_that_never_sends_connect_is_closed_after_connect_timeout() {
    let mut sim = Sim::default(); // connect_timeout 10 s
    let c = sim.accept(V4);
    sim.advance(Duration::from_millis(9_999));
    assert_eq!(sim.closed(c), None);
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.closed(c), Some(ReasonCode::MaximumConnectTime));
    assert!(sim.clients[c].raw.is_empty());
    assert_eq!(sim.broker.connection_count(), 0);

    // One that did connect in time is not affected.
    let c = sim.connect(V4, "prompt", true);
    sim.advance(Duration::from_secs(20));
    assert_eq!(sim.closed(c), None);
}

// ------------------------------------------------------------------ session present

#[test]
fn session_present_reflects_a_resumed_session_mqtt_3_2_2_2() {
    let mut sim = Sim::default();
    for v in [V4, V5] {
        let id = format!("sp-{v}");
        let mut p = connect_packet(v, &id, false);
        p.properties.session_expiry_interval = v.is_v5().then_some(60);
        let (c, ack) = sim.connect_with(p.clone());
        assert!(!ack.session_present, "{v}: no session yet");
        sim.disconnect(c);
        let (c, ack) = sim.connect_with(p.clone());
        assert!(ack.session_present, "{v}: session resumed");
        sim.disconnect(c);
        // Clean Session / Clean Start 1: Session Present 0 [MQTT-3.2.2-1] [MQTT-3.2.2-2].
        p.clean_start = true;
        let (_, ack) = sim.connect_with(p);
        assert!(!ack.session_present, "{v}: clean start");
    }
}

#[test]
fn connack_5_0_announces_the_broker_limits_mqtt_3_2_2_3() {
    let mut sim = Sim::new(Config {
        receive_maximum: 7,
        max_packet_size: 4096,
        topic_alias_maximum: 3,
        retain_available: false,
        ..Config::default()
    });
    let (_, ack) = sim.connect_with(connect_packet(V5, "limits", true));
    let p = ack.properties;
    assert_eq!(p.receive_maximum.map(|r| r.get()), Some(7));
    assert_eq!(p.maximum_packet_size.map(|m| m.get()), Some(4096));
    assert_eq!(p.topic_alias_maximum, Some(3));
    assert_eq!(p.retain_available, Some(false));
}

#[test]
fn auth_packet_without_an_authentication_method_is_a_protocol_error_mqtt_4_12_0_1() {
    let mut sim = Sim::default();
    let c = sim.connect(V5, "a", true);
    sim.send(
        c,
        Packet::Auth(Auth {
            reason_code: ReasonCode::ReAuthenticate,
            properties: Default::default(),
        }),
    );
    assert_eq!(sim.expect_disconnect(c), ReasonCode::ProtocolError);
    assert_eq!(sim.closed(c), Some(ReasonCode::ProtocolError));

    // And a CONNECT asking for enhanced authentication is refused: no method is
    // supported [MQTT-4.12.0-1].
    let mut p = connect_packet(V5, "b", true);
    p.properties.authentication_method = Some(MqttString::from_static("SCRAM-SHA-1").unwrap());
    let (_, ack) = sim.connect_with(p);
    assert_eq!(ack.reason_code, ReasonCode::BadAuthenticationMethod);
}
