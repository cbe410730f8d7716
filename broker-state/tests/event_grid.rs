//! Azure Event Grid's MQTT session and identity rules (issue 6): the authentication
//! name owns its sessions, a per-name session limit, the session expiry ceiling, the
//! offline queue overflow policy, and assigned client identifiers that never collide.
mod sim;

use std::collections::HashSet;
use std::time::Duration;

use broker_state::{
    AuthDecision, AuthRequest, AuthStep, Authenticator, Config, OverflowPolicy, QueueLimits,
};
use mqtt_proto::bytes::Bytes;
use mqtt_proto::*;
use sim::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn sim_with(f: impl FnOnce(&mut Config)) -> Sim {
    let mut config = Config::default();
    f(&mut config);
    Sim::new(config)
}

/// A persistent CONNECT (Clean Start 0; 5.0 asks for an hour) for `client_id`, as
/// `user` if given.
fn as_user(v: ProtocolVersion, client_id: &str, user: Option<&str>) -> Connect {
    let mut p = connect_packet(v, client_id, false);
    if v.is_v5() {
        p.properties.session_expiry_interval = Some(3600);
    }
    p.username = user.map(|u| MqttString::copy_from_str(u).unwrap());
    p
}

fn code(sim: &mut Sim, p: Connect) -> (C, ConnAck) {
    sim.connect_with(p)
}

// ------------------------------------------------------------------ ownership

#[test]
fn session_of_another_authentication_name_is_refused_not_authorized() {
    let mut sim = Sim::default();
    let (alice, ack) = code(&mut sim, as_user(V5, "dev", Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::Success);

    // Online: bob neither takes it over nor disturbs alice.
    let (bob, ack) = code(&mut sim, as_user(V5, "dev", Some("bob")));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    assert!(!ack.session_present);
    assert!(ack.properties.reason_string.is_some());
    assert_eq!(sim.closed(bob), Some(ReasonCode::NotAuthorized));
    let (bob4, _) = code(&mut sim, as_user(V4, "dev", Some("bob")));
    assert_eq!(sim.clients[bob4].raw, b"\x20\x02\x00\x05", "3.1.1: 0x05");
    let (anon, ack) = code(&mut sim, as_user(V5, "dev", None));
    assert_eq!(
        ack.reason_code,
        ReasonCode::NotAuthorized,
        "no name is not alice"
    );
    assert_eq!(sim.closed(anon), Some(ReasonCode::NotAuthorized));
    assert_eq!(sim.closed(alice), None);
    sim.assert_silent(alice);
    assert_eq!(sim.broker.stats().takeovers, 0);

    // Offline: the same.
    sim.subscribe(alice, "t", QoS::AtLeastOnce);
    sim.disconnect(alice);
    let (_, ack) = code(&mut sim, as_user(V5, "dev", Some("bob")));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    // Not even with Clean Start 1, which would discard alice's session.
    let mut clean = as_user(V5, "dev", Some("bob"));
    clean.clean_start = true;
    let (_, ack) = code(&mut sim, clean);
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    let (_, ack) = code(&mut sim, as_user(V5, "dev", Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present, "alice's session is intact");
}

#[test]
fn same_authentication_name_may_take_its_session_over() {
    for v in [V4, V5] {
        let mut sim = Sim::default();
        let (first, _) = code(&mut sim, as_user(v, "dev", Some("alice")));
        sim.subscribe(first, "t", QoS::AtLeastOnce);
        let (second, ack) = code(&mut sim, as_user(V5, "dev", Some("alice")));
        assert_eq!(ack.reason_code, ReasonCode::Success, "{v}");
        assert!(ack.session_present, "{v}");
        if v.is_v5() {
            assert_eq!(sim.expect_disconnect(first), ReasonCode::SessionTakenOver);
        }
        assert_eq!(sim.closed(first), Some(ReasonCode::SessionTakenOver));
        let p = sim.connect(V5, "p", true);
        sim.publish(p, "t", QoS::AtLeastOnce, false, b"x");
        assert_eq!(
            sim.publishes(second).len(),
            1,
            "{v}: the subscription moved"
        );
    }
}

/// Names the session owner after the client certificate (here: the password
/// bytes stand in for its thumbprint), as Event Grid does; the User Name is free.
struct CertificateName;

impl Authenticator for CertificateName {
    fn authenticate(&mut self, request: &AuthRequest<'_>) -> AuthDecision {
        let cert = request.password.ok_or(ReasonCode::NotAuthorized)?;
        Ok(Some(format!("cert:{}", String::from_utf8_lossy(cert))))
    }
}

#[test]
fn the_authentication_name_comes_from_the_hook_not_the_user_name() {
    let mut sim = Sim::default();
    sim.broker.set_authenticator(Box::new(CertificateName));
    let with = |user: &str, cert: &'static [u8]| {
        let mut p = as_user(V5, "dev", Some(user));
        p.password = Some(cert.into());
        p
    };
    let (_, ack) = code(&mut sim, with("first-name", b"AAAA"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    // Another User Name, same certificate: the same owner.
    let (_, ack) = code(&mut sim, with("second-name", b"AAAA"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    // The same User Name, another certificate: another owner.
    let (_, ack) = code(&mut sim, with("second-name", b"BBBB"));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
}

#[test]
fn clients_without_a_user_name_follow_plain_mqtt_rules() {
    let mut sim = Sim::default();
    let (a, _) = code(&mut sim, as_user(V5, "anon", None));
    let (b, ack) = code(&mut sim, as_user(V5, "anon", None));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    assert_eq!(sim.expect_disconnect(a), ReasonCode::SessionTakenOver);
    sim.disconnect(b);
    let (_, ack) = code(&mut sim, as_user(V4, "anon", None));
    assert!(ack.session_present, "resumable across versions");
    // Unowned sessions count against no name.
    let limited = sim_with(|c| c.max_sessions_per_authentication_name = Some(1));
    let mut sim = limited;
    for i in 0..5 {
        let (_, ack) = code(&mut sim, as_user(V5, &format!("anon-{i}"), None));
        assert_eq!(ack.reason_code, ReasonCode::Success);
    }
}

/// A session created without an authentication name belongs to nobody; the first
/// client with a name that resumes it claims it (the plain MQTT rules let it resume,
/// and from then on the name owns it, in that name's session quota).
#[test]
fn resuming_an_unowned_session_with_an_authentication_name_claims_it() {
    let mut sim = Sim::default();
    let (anon, _) = code(&mut sim, as_user(V5, "dev", None));
    sim.subscribe(anon, "t", QoS::AtLeastOnce);
    sim.disconnect(anon);
    let (alice, ack) = code(&mut sim, as_user(V5, "dev", Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present, "the plain MQTT rules: resumed");
    // Now alice's: neither another name nor an anonymous client may take it.
    for user in [Some("bob"), None] {
        let (c, ack) = code(&mut sim, as_user(V5, "dev", user));
        assert_eq!(ack.reason_code, ReasonCode::NotAuthorized, "{user:?}");
        assert_eq!(sim.closed(c), Some(ReasonCode::NotAuthorized));
    }
    assert_eq!(sim.closed(alice), None);
    let p = sim.connect(V5, "p", true);
    sim.publish(p, "t", QoS::AtLeastOnce, false, b"x");
    assert_eq!(sim.publishes(alice).len(), 1, "the subscription came along");

    // A live anonymous session is taken over and claimed the same way.
    let (anon, _) = code(&mut sim, as_user(V4, "live", None));
    let (_, ack) = code(&mut sim, as_user(V5, "live", Some("alice")));
    assert!(ack.session_present);
    assert_eq!(sim.closed(anon), Some(ReasonCode::SessionTakenOver));
    let (_, ack) = code(&mut sim, as_user(V5, "live", None));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);

    // The claimed session counts in alice's quota, and a claim beyond the quota is
    // refused like a new session, leaving the session as it was.
    let mut sim = sim_with(|c| c.max_sessions_per_authentication_name = Some(2));
    for id in ["free-1", "free-2"] {
        let (c, _) = code(&mut sim, as_user(V5, id, None));
        sim.disconnect(c);
    }
    let (_, ack) = code(&mut sim, as_user(V5, "free-1", Some("alice")));
    assert!(ack.session_present);
    let (_, ack) = code(&mut sim, as_user(V5, "a2", Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (c, ack) = code(&mut sim, as_user(V5, "free-2", Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    assert_eq!(sim.closed(c), Some(ReasonCode::QuotaExceeded));
    let (_, ack) = code(&mut sim, as_user(V5, "a3", Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded, "two owned");
    let (_, ack) = code(&mut sim, as_user(V5, "free-2", None));
    assert!(ack.session_present, "still there, still unowned");
    let (_, ack) = code(&mut sim, as_user(V5, "free-2", Some("bob")));
    assert!(ack.session_present, "bob may claim it");
}

/// Names the owner after the Authentication Data of a one-step enhanced
/// authentication ("anonymous" names nobody), at CONNECT and on re-authentication.
const TOKEN_NAME: OneStepToken = OneStepToken(|data| match data {
    Some(b"anonymous") => AuthStep::allow(None),
    Some(name) => AuthStep::allow(Some(String::from_utf8_lossy(name).into_owned())),
    None => AuthStep::Failure(ReasonCode::NotAuthorized),
});

fn token_connect(client_id: &str, token: &'static [u8]) -> Connect {
    let mut p = as_user(V5, client_id, None);
    p.properties.authentication_method = Some(MqttString::from_static("TOKEN").unwrap());
    p.properties.authentication_data = Some(Bytes::from_static(token));
    p
}

fn reauth(token: &[u8]) -> Packet {
    auth(ReasonCode::ReAuthenticate, "TOKEN", token)
}

/// Re-authentication may renew the credentials of the session's owner, not change
/// who owns the session: another authentication name (or none, or one for a session
/// that had none) fails it, with DISCONNECT 0x87 [MQTT-4.12.1-2].
#[test]
fn reauthentication_as_another_authentication_name_is_disconnect_0x87_mqtt_4_12_1_2() {
    let mut sim = Sim::default();
    sim.broker.set_enhanced_authenticator(Box::new(TOKEN_NAME));
    let (c, ack) = code(&mut sim, token_connect("dev", b"alice"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sim.send(c, reauth(b"alice"));
    assert!(
        matches!(sim.recv(c), Some(Packet::Auth(a)) if a.reason_code == ReasonCode::Success),
        "the same name: renewed"
    );
    for other in [&b"bob"[..], b"anonymous"] {
        let (c, ack) = code(&mut sim, token_connect("dev", b"alice"));
        assert!(ack.session_present);
        sim.send(c, reauth(other));
        assert_eq!(sim.expect_disconnect(c), ReasonCode::NotAuthorized);
        assert_eq!(sim.closed(c), Some(ReasonCode::NotAuthorized));
    }
    // Still alice's session, not bob's.
    let (_, ack) = code(&mut sim, token_connect("dev", b"bob"));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    let (_, ack) = code(&mut sim, token_connect("dev", b"alice"));
    assert!(ack.session_present);

    // A session without an owner does not get one from a re-authentication.
    let (c, _) = code(&mut sim, token_connect("anon", b"anonymous"));
    sim.send(c, reauth(b"anonymous"));
    assert!(matches!(sim.recv(c), Some(Packet::Auth(a)) if a.reason_code == ReasonCode::Success));
    sim.send(c, reauth(b"bob"));
    assert_eq!(sim.expect_disconnect(c), ReasonCode::NotAuthorized);
    let (_, ack) = code(&mut sim, as_user(V5, "anon", None));
    assert!(ack.session_present, "still unowned");
}

// ------------------------------------------------------------------ sessions per name

#[test]
fn sessions_per_authentication_name_count_online_and_offline_and_the_next_gets_0x97() {
    let mut sim = sim_with(|c| c.max_sessions_per_authentication_name = Some(3));
    let (online, _) = code(&mut sim, as_user(V5, "a1", Some("alice")));
    let (offline, _) = code(&mut sim, as_user(V4, "a2", Some("alice")));
    sim.disconnect(offline);
    let (_, ack) = code(&mut sim, as_user(V5, "a3", Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sim.kill(online); // persistent: still counts

    let (c, ack) = code(&mut sim, as_user(V5, "a4", Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    assert!(ack.properties.reason_string.is_some());
    assert_eq!(sim.closed(c), Some(ReasonCode::QuotaExceeded));
    let (c, _) = code(&mut sim, as_user(V4, "a4", Some("alice")));
    assert_eq!(sim.clients[c].raw, b"\x20\x02\x00\x03", "3.1.1: 0x03");

    // Alice's own sessions can still be resumed and taken over; others are free.
    let (_, ack) = code(&mut sim, as_user(V5, "a2", Some("alice")));
    assert!(ack.session_present);
    let (_, ack) = code(&mut sim, as_user(V5, "a1", Some("alice")));
    assert!(ack.session_present);
    let (_, ack) = code(&mut sim, as_user(V5, "b1", Some("bob")));
    assert_eq!(ack.reason_code, ReasonCode::Success);

    // A session that ends frees its slot.
    let mut clean = as_user(V5, "a3", Some("alice"));
    clean.clean_start = true;
    clean.properties.session_expiry_interval = None;
    let (a3, _) = code(&mut sim, clean);
    sim.disconnect(a3);
    let (_, ack) = code(&mut sim, as_user(V5, "a4", Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::Success);
}

#[test]
fn no_session_limit_per_authentication_name_by_default() {
    let mut sim = Sim::default();
    assert_eq!(
        sim.broker.config().max_sessions_per_authentication_name,
        None
    );
    for i in 0..200 {
        let (c, ack) = code(&mut sim, as_user(V5, &format!("dev-{i}"), Some("fleet")));
        assert_eq!(ack.reason_code, ReasonCode::Success, "session {i}");
        if i % 2 == 0 {
            sim.disconnect(c); // offline sessions count as much as online ones
        }
    }
    assert_eq!(sim.broker.session_count(), 200);
}

// ------------------------------------------------------------------ session expiry

#[test]
fn session_expiry_above_the_maximum_is_lowered_and_connack_says_so() {
    let mut sim = Sim::default();
    assert_eq!(
        sim.broker.config().max_session_expiry,
        3600,
        "Event Grid's default"
    );
    for asked in [3601, u32::MAX] {
        let id = format!("s-{asked}");
        let (c, ack) = sim.connect_v5(&id, false, Some(asked));
        assert_eq!(
            ack.properties.session_expiry_interval,
            Some(3600),
            "{asked}"
        );
        sim.subscribe(c, "t", QoS::AtLeastOnce);
        sim.disconnect(c);
    }
    let (c, ack) = sim.connect_v5("within", false, Some(3600));
    assert_eq!(
        ack.properties.session_expiry_interval, None,
        "granted as asked"
    );
    sim.disconnect(c);
    sim.advance(Duration::from_secs(3599));
    assert_eq!(sim.broker.session_count(), 3);
    sim.advance(Duration::from_secs(2));
    assert_eq!(
        sim.broker.session_count(),
        0,
        "every one ended at the ceiling"
    );
}

#[test]
fn mqtt_3_1_1_persistent_sessions_get_the_default_session_expiry() {
    let mut sim = sim_with(|c| {
        c.default_session_expiry = 600;
        c.max_session_expiry = 3600;
    });
    let (c, _) = code(&mut sim, as_user(V4, "old", Some("alice")));
    sim.disconnect(c);
    sim.advance(Duration::from_secs(599));
    let (c, ack) = code(&mut sim, as_user(V4, "old", Some("alice")));
    assert!(ack.session_present);
    sim.disconnect(c);
    sim.advance(Duration::from_secs(601));
    let (_, ack) = code(&mut sim, as_user(V4, "old", Some("alice")));
    assert!(!ack.session_present, "ended after the default expiry");

    // The default is capped by the maximum too.
    let mut sim = sim_with(|c| {
        c.default_session_expiry = 7200;
        c.max_session_expiry = 60;
    });
    let (c, _) = code(&mut sim, as_user(V4, "old", None));
    sim.disconnect(c);
    sim.advance(Duration::from_secs(61));
    assert_eq!(sim.broker.session_count(), 0);
}

// ------------------------------------------------------------------ offline queue overflow

/// A persistent subscriber gone offline, a publisher, and `n` QoS 1 messages.
fn overflow(policy: OverflowPolicy, messages: usize, n: u8) -> Sim {
    let mut sim = sim_with(|c| {
        c.offline_overflow = policy;
        c.offline_queue = QueueLimits {
            messages,
            bytes: 1 << 20,
        };
    });
    let (s, _) = sim.connect_v5("s", false, Some(3600));
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.disconnect(s);
    let p = sim.connect(V5, "p", true);
    for i in 1..=n {
        sim.publish(p, "t", QoS::AtLeastOnce, false, &[i]);
    }
    sim
}

fn reconnect(sim: &mut Sim) -> (bool, Vec<u8>) {
    let (s, ack) = sim.connect_v5("s", false, Some(3600));
    let got = sim.publishes(s).iter().map(|m| m.payload[0]).collect();
    (ack.session_present, got)
}

#[test]
fn full_offline_queue_ends_the_session_by_default() {
    assert_eq!(
        Config::default().offline_overflow,
        OverflowPolicy::EndSession
    );
    assert_eq!(
        Config::default().offline_queue.messages,
        100,
        "Event Grid: 100"
    );
    // At the limit: kept.
    let mut sim = overflow(OverflowPolicy::default(), 100, 100);
    let (present, got) = reconnect(&mut sim);
    assert!(present);
    assert_eq!(got, (1..=100).collect::<Vec<u8>>());
    // One more: the session ends, with its subscription and queue.
    let mut sim = overflow(OverflowPolicy::default(), 100, 101);
    assert_eq!(sim.broker.stats().sessions_ended_by_overflow, 1);
    let (present, got) = reconnect(&mut sim);
    assert!(!present);
    assert!(got.is_empty());
}

#[test]
fn full_offline_queue_drops_oldest_or_newest_when_configured() {
    let mut sim = overflow(OverflowPolicy::DropOldest, 3, 5);
    assert_eq!(reconnect(&mut sim), (true, vec![3, 4, 5]));
    assert_eq!(sim.broker.stats().dropped_offline_queue_full, 2);
    let mut sim = overflow(OverflowPolicy::DropNewest, 3, 5);
    assert_eq!(reconnect(&mut sim), (true, vec![1, 2, 3]));
    assert_eq!(sim.broker.stats().dropped_offline_queue_full, 2);
}

// ------------------------------------------------------------------ assigned identifiers

fn assigned(ack: &ConnAck) -> String {
    ack.properties
        .assigned_client_identifier
        .as_ref()
        .expect("Assigned Client Identifier [MQTT-3.2.2-16]")
        .as_str()
        .to_owned()
}

#[test]
fn assigned_client_identifiers_never_collide_with_a_stored_or_live_session() {
    const SEED: [u8; 32] = [5; 32];
    // What a broker with this seed assigns first.
    let mut probe = Sim::with_seed(Config::default(), SEED);
    let (_, ack) = probe.connect_with(connect_packet(V5, "", true));
    let predicted = assigned(&ack);

    // Same seed, but a stored (offline) session and a live one already use the
    // first two identifiers it would assign.
    let (_, ack) = probe.connect_with(connect_packet(V5, "", true));
    let predicted2 = assigned(&ack);
    let mut sim = Sim::with_seed(Config::default(), SEED);
    let (stored, _) = sim.connect_v5(&predicted, false, Some(3600));
    sim.subscribe(stored, "mine", QoS::AtLeastOnce);
    sim.disconnect(stored);
    let live = sim.connect(V5, &predicted2, true);
    let (fresh, ack) = sim.connect_with(connect_packet(V5, "", true));
    let id = assigned(&ack);
    assert!(id != predicted && id != predicted2, "{id}");
    assert!(!ack.session_present);
    assert_eq!(
        sim.closed(live),
        None,
        "the live session was not taken over"
    );
    sim.assert_silent(live);
    sim.disconnect(fresh);
    let (_, ack) = sim.connect_v5(&predicted, false, Some(3600));
    assert!(ack.session_present, "the stored session is intact");
}

#[test]
fn assigned_client_identifiers_are_unique() {
    let mut sim = Sim::default();
    let mut seen = HashSet::new();
    for i in 0..500 {
        let v = if i % 2 == 0 { V5 } else { V4 };
        let (c, ack) = sim.connect_with(connect_packet(v, "", true));
        assert_eq!(ack.reason_code, ReasonCode::Success);
        let id = if v.is_v5() {
            assigned(&ack)
        } else {
            // 3.1.1 cannot be told; the broker still names the session.
            sim.broker
                .client_id(sim.clients[c].conn)
                .expect("bound")
                .as_str()
                .to_owned()
        };
        assert!(seen.insert(id.clone()), "{id} assigned twice");
        if i % 3 == 0 {
            sim.disconnect(c);
        }
    }
}
