//! Scenario: JWT (`CUSTOM-JWT`) and webhook authentication end to end, through the
//! real server on the runtime `BROKK_RUNTIME` names, configured from the TOML an
//! operator writes (`[authentication.jwt]`, `[authentication.webhook]`).
//!
//! JWT: MQTT 5.0 clients put a compact JWS in the CONNECT's Authentication Data
//! (the raw client, which can also send AUTH 0x19; rumqttc 0.25 cannot
//! re-authenticate, so it only shows a library client logging in). Tokens are
//! signed in the test: ES256 with a P-256 key made at start, RS256 with the
//! throwaway key of adapter-common's fixtures. What is checked: who owns the
//! session (the name claim), the CONNACK codes of refused tokens, the leeway,
//! re-authentication renewing the credentials, and DISCONNECT 0xA0 when they run
//! out.
//!
//! Webhook: a loopback HTTP server written here (std `TcpListener`, one thread per
//! connection, keep-alive) records every request and answers as the test says:
//! allow, deny, hang, HTTP 500, malformed JSON. What is checked: the request's
//! JSON, who owns the session, the CONNACK codes (5.0 and 3.1.1), that a hanging
//! webhook stalls nobody else, the cache of allows, an allow's expiration ending
//! the connection, and that registered clients and token holders are never asked
//! about.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adapter_common::config::{Config, ListenerKind};
use adapter_common::passwd::PasswordFile;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use brokk_e2e::raw::{self, Next, RawClient};
use brokk_e2e::rumqtt::{Client, ClientOptions};
use brokk_e2e::{within, RunningServer, Setup, TIMEOUT};
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mqtt_proto::{
    Auth, AuthProperties, Connect, MqttString, Packet, ProtocolVersion, QoS, ReasonCode,
};
use serde_json::{json, Value};
use tempfile::TempDir;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const METHOD: &str = "CUSTOM-JWT";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "brokk";
const EC_KID: &str = "ec-1";
const RSA_KID: &str = "rsa-1";

// ------------------------------------------------------------------ clock

/// Wall-clock milliseconds since the Unix epoch: what tokens and the broker's
/// expiry timers are measured in.
fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    since.as_millis() as u64
}

fn unix_secs() -> u64 {
    unix_ms() / 1000
}

async fn sleep_until_unix_ms(at_ms: u64) {
    let now = unix_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

// ------------------------------------------------------------------ tokens

/// The test's identity provider: the keys its JWKS file publishes, and one it
/// does not.
struct Issuer {
    ec: EncodingKey,
    /// A P-256 key the broker does not know: signatures by it are bad.
    stranger: EncodingKey,
    rsa: EncodingKey,
    jwks: String,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../adapter-common/tests/fixtures/jwt")
        .join(name)
}

fn read_fixture(name: &str) -> String {
    let path = fixture(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The keys, made once per test process.
fn issuer() -> &'static Issuer {
    static ISSUER_KEYS: OnceLock<Issuer> = OnceLock::new();
    ISSUER_KEYS.get_or_init(|| {
        let ec_key = |pair: &rcgen::KeyPair| {
            EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("a P-256 PKCS#8 key")
        };
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let point = ec.public_key_raw();
        assert_eq!(
            point.len(),
            65,
            "an uncompressed P-256 point: 0x04 || x || y"
        );
        let ec_jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "kid": EC_KID,
            "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        let rsa_jwk: Value =
            serde_json::from_str(&read_fixture("rsa-public.jwk.json")).expect("the RSA JWK");
        assert_eq!(rsa_jwk["kid"], RSA_KID);
        Issuer {
            ec: ec_key(&ec),
            stranger: ec_key(&stranger),
            rsa: EncodingKey::from_rsa_pem(read_fixture("rsa-private.pem").as_bytes())
                .expect("the RSA fixture key"),
            jwks: json!({ "keys": [ec_jwk, rsa_jwk] }).to_string(),
        }
    })
}

/// Claims the broker accepts for `name`, expiring at `exp` (Unix seconds).
fn claims(name: &str, exp: u64) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": name,
        "exp": exp,
        "iat": unix_secs(),
        "role": "sensor",
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("the token is signed")
}

/// An ES256 token for `name` valid for an hour.
fn es256(name: &str) -> String {
    es256_claims(&claims(name, unix_secs() + 3600))
}

fn es256_claims(claims: &Value) -> String {
    sign(Algorithm::ES256, Some(EC_KID), &issuer().ec, claims)
}

/// `claims` with `change`'s members set (a `null` removes the member).
fn claims_with(name: &str, change: Value) -> Value {
    let mut c = claims(name, unix_secs() + 3600);
    for (k, v) in change.as_object().expect("an object of changes") {
        if v.is_null() {
            c.as_object_mut().expect("claims").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// A broker with `[authentication.jwt]` as an operator writes it (anonymous
/// clients refused), and the directory of its config and key set.
struct JwtBroker {
    server: RunningServer,
    _dir: TempDir,
}

impl JwtBroker {
    fn start(leeway_secs: u64) -> JwtBroker {
        JwtBroker::start_with(leeway_secs, "")
    }

    /// With more of the config file after `[authentication.jwt]`.
    fn start_with(leeway_secs: u64, more: &str) -> JwtBroker {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("jwks.json"), &issuer().jwks).expect("jwks.json");
        let text = format!(
            "[authentication.jwt]\n\
             issuer = \"{ISSUER}\"\n\
             audience = \"{AUDIENCE}\"\n\
             jwks_file = \"jwks.json\"\n\
             name_claim = \"sub\"\n\
             leeway_secs = {leeway_secs}\n\
             {more}"
        );
        let server = start_with_identity(&dir.path().join("brokk.toml"), &text);
        JwtBroker { server, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr(ListenerKind::Mqtt)
    }
}

/// Starts a broker with one plain listener whose identity tables are those of the
/// config file text (parsed as the broker parses it, relative paths anchored at
/// `path`'s directory); anonymous clients are refused.
fn start_with_identity(path: &Path, text: &str) -> RunningServer {
    let parsed = Config::parse(path, text).unwrap_or_else(|e| panic!("{text}\n{e}"));
    let mut setup = Setup::new(&[ListenerKind::Mqtt]);
    let config = setup.config_mut();
    config.identity = parsed.identity;
    config.password_file = parsed.password_file;
    config.allow_anonymous = Some(false);
    setup.start()
}

/// A 5.0 CONNECT with an Authentication Method and (maybe) Data.
fn enhanced(client_id: &str, method: &str, data: Option<&[u8]>) -> Connect {
    let mut connect = raw::connect_packet(V5, client_id);
    connect.properties.authentication_method =
        Some(MqttString::copy_from_str(method).expect("a valid method"));
    connect.properties.authentication_data = data.map(Bytes::copy_from_slice);
    connect
}

/// Connects with `token`; asserts CONNACK 0 and that it names the method agreed.
async fn token_login(addr: SocketAddr, client_id: &str, token: &str) -> RawClient {
    let connect = enhanced(client_id, METHOD, Some(token.as_bytes()));
    let (client, ack) = RawClient::connect_with(addr, connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{client_id}: {ack:?}");
    assert_eq!(
        ack.properties
            .authentication_method
            .as_ref()
            .map(|m| m.as_str()),
        Some(METHOD),
        "{client_id}: the CONNACK names the method agreed: {ack:?}"
    );
    client
}

/// Sends `connect` and returns the CONNACK's code; a refused client must then be
/// disconnected without anything further.
async fn connack_code(addr: SocketAddr, connect: Connect) -> ReasonCode {
    let client_id = connect.client_id.as_str().to_owned();
    let (mut client, ack) = RawClient::connect_with(addr, connect).await;
    if ack.reason_code == ReasonCode::Success {
        client.disconnect().await;
    } else {
        let after = client.expect_closed(TIMEOUT).await;
        assert!(
            after.is_empty(),
            "{client_id}: after the refusal: {after:?}"
        );
    }
    ack.reason_code
}

/// AUTH 0x19 with `token`.
async fn send_reauth(client: &mut RawClient, method: &str, token: &str) {
    client
        .send(&Packet::Auth(Auth {
            reason_code: ReasonCode::ReAuthenticate,
            properties: AuthProperties {
                authentication_method: Some(MqttString::copy_from_str(method).expect("method")),
                authentication_data: Some(Bytes::copy_from_slice(token.as_bytes())),
                ..AuthProperties::default()
            },
        }))
        .await;
}

/// Re-authenticates with `token` and asserts AUTH 0x00 (Success) comes back.
async fn reauthenticate(client: &mut RawClient, token: &str) {
    send_reauth(client, METHOD, token).await;
    match client.recv().await {
        Packet::Auth(a) => {
            assert_eq!(a.reason_code, ReasonCode::Success, "{a:?}");
            assert_eq!(
                a.properties
                    .authentication_method
                    .as_ref()
                    .map(|m| m.as_str()),
                Some(METHOD),
                "{a:?}"
            );
        }
        other => panic!("expected AUTH Success, got {other:?}"),
    }
}

/// Asserts the connection is open and quiet (no DISCONNECT waiting).
async fn still_connected(client: &mut RawClient, why: &str) {
    match client.next(Duration::from_millis(50)).await {
        Next::TimedOut => {}
        Next::Packet(p, _) => panic!("{why}: unexpected {p:?}"),
        Next::Closed => panic!("{why}: the broker closed the connection"),
    }
}

/// Waits for DISCONNECT `code`, due at wall-clock `at_ms`: not before it (less a
/// little for the two clocks being read at different moments), and at most 3 s
/// after it.
async fn disconnect_comes_at(client: &mut RawClient, code: ReasonCode, at_ms: u64) {
    let limit = Duration::from_millis(at_ms.saturating_sub(unix_ms()) + 3_000);
    match client.next(limit).await {
        Next::Packet(p, _) => match *p {
            Packet::Disconnect(d) => assert_eq!(d.reason_code, code, "{d:?}"),
            other => panic!("expected DISCONNECT {code}, got {other:?}"),
        },
        Next::Closed => panic!("closed without DISCONNECT {code}"),
        Next::TimedOut => panic!("no DISCONNECT {code} within {limit:?}"),
    }
    let now = unix_ms();
    assert!(
        now + 100 >= at_ms,
        "DISCONNECT {code} came {} ms before the credentials expired",
        at_ms - now
    );
}

/// [`disconnect_comes_at`], then the broker closes the connection.
async fn disconnected_at(client: &mut RawClient, code: ReasonCode, at_ms: u64) {
    disconnect_comes_at(client, code, at_ms).await;
    let after = client.expect_closed(TIMEOUT).await;
    assert!(after.is_empty(), "after DISCONNECT {code}: {after:?}");
}

/// Waits for the broker to end a 3.1.1 connection (no DISCONNECT in 3.1.1) due at
/// `at_ms`.
async fn closed_at(client: &mut RawClient, at_ms: u64) {
    let limit = Duration::from_millis(at_ms.saturating_sub(unix_ms()) + 3_000);
    let before = client.expect_closed(limit).await;
    assert!(before.is_empty(), "3.1.1 has no DISCONNECT: {before:?}");
    let now = unix_ms();
    assert!(
        now + 100 >= at_ms,
        "closed {} ms before the credentials expired",
        at_ms - now
    );
}

// ------------------------------------------------------------------ JWT

#[tokio::test]
async fn a_valid_es256_token_connects_and_its_name_claim_owns_the_session() {
    let broker = JwtBroker::start(5);
    let addr = broker.addr();

    // A library client: rumqttc's 5.0 client with the token in its CONNECT.
    library_client_logs_in_with_a_token(&broker.server).await;

    // The raw client: alice's device connects and works.
    let mut alice = token_login(addr, "device-1", &es256("alice")).await;
    alice.round_trip("jwt/alice").await;

    // Bob's valid token does not give him alice's session.
    let bob = enhanced("device-1", METHOD, Some(es256("bob").as_bytes()));
    assert_eq!(connack_code(addr, bob).await, ReasonCode::NotAuthorized);
    still_connected(&mut alice, "alice after bob's attempt").await;

    // Another token of alice's takes it over.
    let mut again = token_login(addr, "device-1", &es256("alice")).await;
    alice
        .expect_disconnect(ReasonCode::SessionTakenOver, TIMEOUT)
        .await;
    again.round_trip("jwt/alice").await;

    // No token, no anonymous login: credentials are expected.
    let plain = raw::connect_packet(V5, "no-token");
    assert_eq!(connack_code(addr, plain).await, ReasonCode::NotAuthorized);
    again.disconnect().await;
}

async fn library_client_logs_in_with_a_token(server: &RunningServer) {
    use rumqttc::v5::mqttbytes::v5 as p5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let mut options = MqttOptions::new("library", "127.0.0.1", server.port(ListenerKind::Mqtt));
    options.set_keep_alive(Duration::from_secs(60));
    options.set_connection_timeout(TIMEOUT.as_secs());
    options.set_authentication_method(Some(METHOD.to_owned()));
    options.set_authentication_data(Some(Bytes::from(es256("carol"))));
    let (client, mut events) = AsyncClient::new(options, 16);
    let ack = within("rumqttc: CONNACK", async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p5::Packet::ConnAck(ack))) => return ack,
                Ok(_) => {}
                Err(e) => panic!("rumqttc: {e:?}"),
            }
        }
    })
    .await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success, "{ack:?}");
    client
        .subscribe("jwt/library", Q5::AtLeastOnce)
        .await
        .expect("subscribe queued");
    client
        .publish("jwt/library", Q5::AtLeastOnce, false, "hello")
        .await
        .expect("publish queued");
    let got = within("rumqttc: the message back", async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p5::Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("rumqttc: {e:?}"),
            }
        }
    })
    .await;
    assert_eq!(&got.payload[..], b"hello");
}

#[tokio::test]
async fn refused_tokens_get_the_connack_code_for_their_fault() {
    let broker = JwtBroker::start(5);
    let addr = broker.addr();
    let stranger_signed = sign(
        Algorithm::ES256,
        Some(EC_KID),
        &issuer().stranger,
        &claims("mallory", unix_secs() + 3600),
    );
    // A valid token whose payload was changed after signing (exp pushed out).
    let tampered = {
        let token = es256_claims(&claims("mallory", unix_secs() + 60));
        let parts: Vec<&str> = token.split('.').collect();
        let payload = claims("mallory", unix_secs() + 86_400).to_string();
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload),
            parts[2]
        )
    };
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("mallory", unix_secs() + 3600).to_string()),
    );
    let cases: Vec<(&str, &str, Option<Vec<u8>>, ReasonCode)> = vec![
        (
            "expired two minutes ago",
            METHOD,
            Some(es256_claims(&claims("mallory", unix_secs() - 120)).into_bytes()),
            ReasonCode::NotAuthorized,
        ),
        (
            "another issuer",
            METHOD,
            Some(
                es256_claims(&claims_with(
                    "mallory",
                    json!({"iss": "https://evil.example"}),
                ))
                .into_bytes(),
            ),
            ReasonCode::NotAuthorized,
        ),
        (
            "another audience",
            METHOD,
            Some(es256_claims(&claims_with("mallory", json!({"aud": "not-brokk"}))).into_bytes()),
            ReasonCode::NotAuthorized,
        ),
        (
            "signed by a key not in the key set",
            METHOD,
            Some(stranger_signed.into_bytes()),
            ReasonCode::NotAuthorized,
        ),
        (
            "payload changed after signing",
            METHOD,
            Some(tampered.into_bytes()),
            ReasonCode::NotAuthorized,
        ),
        (
            "unsigned (alg none)",
            METHOD,
            Some(unsigned.into_bytes()),
            ReasonCode::NotAuthorized,
        ),
        (
            "not valid before ten minutes from now",
            METHOD,
            Some(
                es256_claims(&claims_with("mallory", json!({"nbf": unix_secs() + 600})))
                    .into_bytes(),
            ),
            ReasonCode::NotAuthorized,
        ),
        (
            "no exp",
            METHOD,
            Some(es256_claims(&claims_with("mallory", json!({"exp": null}))).into_bytes()),
            ReasonCode::NotAuthorized,
        ),
        (
            "no name claim",
            METHOD,
            Some(es256_claims(&claims_with("mallory", json!({"sub": null}))).into_bytes()),
            ReasonCode::NotAuthorized,
        ),
        (
            "garbage",
            METHOD,
            Some(b"\xff\x00not a token at all".to_vec()),
            ReasonCode::NotAuthorized,
        ),
        ("no data", METHOD, None, ReasonCode::NotAuthorized),
        (
            "a valid token under another method",
            "FOO",
            Some(es256("mallory").into_bytes()),
            ReasonCode::BadAuthenticationMethod,
        ),
    ];
    for (i, (what, method, data, expected)) in cases.into_iter().enumerate() {
        let connect = enhanced(&format!("refused-{i}"), method, data.as_deref());
        let got = connack_code(addr, connect).await;
        assert_eq!(got, expected, "{what}: CONNACK {got}, expected {expected}");
    }
    // The broker is none the worse for it.
    let mut fine = token_login(addr, "after-refusals", &es256("mallory")).await;
    fine.round_trip("jwt/after").await;
    fine.disconnect().await;
}

#[tokio::test]
async fn a_token_that_expired_less_than_the_leeway_ago_is_still_accepted() {
    // `leeway_secs` is "clock skew tolerated on exp and nbf" (5 s here): a token is
    // expired "from exp + leeway on" (adapter-common's jwt module).
    let broker = JwtBroker::start(5);
    // A token not valid before 2 s from now is good already...
    let early = es256_claims(&claims_with("kim", json!({"nbf": unix_secs() + 2})));
    let mut client = token_login(broker.addr(), "early", &early).await;
    client.round_trip("jwt/early").await;
    client.disconnect().await;
    // ...and one whose exp passed 2 s ago by the broker's clock (which may run
    // ahead of the issuer's) is still good.
    let late = es256_claims(&claims("kim", unix_secs() - 2));
    let connect = enhanced("late", METHOD, Some(late.as_bytes()));
    assert_eq!(
        connack_code(broker.addr(), connect).await,
        ReasonCode::Success,
        "a token within the leeway of its exp"
    );
}

#[tokio::test]
async fn rs256_tokens_verify_against_the_rsa_key_of_the_key_set() {
    let broker = JwtBroker::start(5);
    let addr = broker.addr();
    let rsa = |kid: Option<&str>| {
        sign(
            Algorithm::RS256,
            kid,
            &issuer().rsa,
            &claims("dave", unix_secs() + 3600),
        )
    };
    let mut with_kid = token_login(addr, "rsa-kid", &rsa(Some(RSA_KID))).await;
    with_kid.round_trip("jwt/rsa").await;
    // Without a kid the broker tries the keys that allow RS256.
    let mut without_kid = token_login(addr, "rsa-no-kid", &rsa(None)).await;
    without_kid.round_trip("jwt/rsa-2").await;

    // An RS256 token naming the EC key, and one whose signature was altered.
    let wrong_key = rsa(Some(EC_KID));
    let mut altered = rsa(Some(RSA_KID));
    let last = altered.pop().expect("a signature");
    altered.push(if last == 'A' { 'B' } else { 'A' });
    for (what, token) in [
        ("kid of the EC key", wrong_key),
        ("altered signature", altered),
    ] {
        let connect = enhanced("rsa-bad", METHOD, Some(token.as_bytes()));
        assert_eq!(
            connack_code(addr, connect).await,
            ReasonCode::NotAuthorized,
            "{what}"
        );
    }
    with_kid.disconnect().await;
    without_kid.disconnect().await;
}

#[tokio::test]
async fn reauthentication_with_a_fresh_token_outlives_the_first_expiry_then_ends_at_the_second() {
    // No leeway: a token is good until its exp exactly.
    let broker = JwtBroker::start(0);
    let addr = broker.addr();
    let first_exp = unix_secs() + 3;
    let first = es256_claims(&claims("erin", first_exp));

    // One client renews, another does not.
    let mut renewing = token_login(addr, "renewing", &first).await;
    let mut lapsing = token_login(addr, "lapsing", &first).await;
    renewing.round_trip("jwt/renewing").await;

    let second_exp = unix_secs() + 5;
    assert!(second_exp > first_exp);
    assert!(
        unix_ms() < first_exp * 1000 - 500,
        "the machine is too slow for this test's timing: re-authenticating too late"
    );
    reauthenticate(&mut renewing, &es256_claims(&claims("erin", second_exp))).await;

    // At the first expiry the client that did not renew is ended...
    disconnect_comes_at(
        &mut lapsing,
        ReasonCode::MaximumConnectTime,
        first_exp * 1000,
    )
    .await;
    // ...while the renewed one still works past it.
    sleep_until_unix_ms(first_exp * 1000 + 300).await;
    still_connected(&mut renewing, "past the first token's expiry").await;
    renewing.round_trip("jwt/renewing").await;
    let after = lapsing.expect_closed(TIMEOUT).await;
    assert!(after.is_empty(), "after DISCONNECT: {after:?}");
    // And it ends at the second expiry, without another renewal.
    disconnected_at(
        &mut renewing,
        ReasonCode::MaximumConnectTime,
        second_exp * 1000,
    )
    .await;
}

#[tokio::test]
async fn failed_reauthentications_end_the_connection() {
    let broker = JwtBroker::start(5);
    let addr = broker.addr();

    // A valid token, but for another name: the session stays frank's.
    let mut frank = token_login(addr, "frank-1", &es256("frank")).await;
    send_reauth(&mut frank, METHOD, &es256("grace")).await;
    frank
        .expect_disconnect(ReasonCode::NotAuthorized, TIMEOUT)
        .await;

    // An expired token, and garbage.
    let expired = es256_claims(&claims("frank", unix_secs() - 120));
    for (i, token) in [expired, "garbage".to_owned()].into_iter().enumerate() {
        let mut frank = token_login(addr, &format!("frank-{}", i + 2), &es256("frank")).await;
        send_reauth(&mut frank, METHOD, &token).await;
        frank
            .expect_disconnect(ReasonCode::NotAuthorized, TIMEOUT)
            .await;
    }

    // Another method than the one agreed at CONNECT [MQTT-4.12.0-5].
    let mut frank = token_login(addr, "frank-4", &es256("frank")).await;
    send_reauth(&mut frank, "FOO", &es256("frank")).await;
    frank
        .expect_disconnect(ReasonCode::ProtocolError, TIMEOUT)
        .await;

    // A successful one keeps the session's owner and the connection.
    let mut frank = token_login(addr, "frank-5", &es256("frank")).await;
    reauthenticate(&mut frank, &es256("frank")).await;
    frank.round_trip("jwt/frank").await;
    frank.disconnect().await;
}

// ------------------------------------------------------------------ webhook

/// What the test's webhook answers a request.
#[derive(Debug, Clone)]
enum Reply {
    /// HTTP 200 with this JSON.
    Json(Value),
    /// This status and body.
    Status(u16, String),
    /// HTTP 200 with this body, whatever it is.
    Body(String),
    /// Reads the request and never answers (until the broker hangs up).
    Hang,
}

fn allow(name: &str) -> Reply {
    Reply::Json(json!({"decision": "allow", "clientAuthenticationName": name}))
}

/// One request the webhook received.
#[derive(Debug, Clone)]
struct HookRequest {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Value,
}

type Respond = dyn Fn(&Value) -> Reply + Send + Sync;

#[derive(Default)]
struct HookLog {
    requests: Vec<HookRequest>,
    /// When the broker hung up on requests the webhook never answered.
    hang_ups: Vec<Instant>,
}

/// A loopback HTTP server playing the authentication webhook.
struct Hook {
    addr: SocketAddr,
    log: Arc<Mutex<HookLog>>,
    stop: Arc<AtomicBool>,
}

impl Hook {
    fn start(respond: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook");
        let addr = listener.local_addr().expect("the webhook's address");
        let log = Arc::new(Mutex::new(HookLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let respond: Arc<Respond> = Arc::new(respond);
        let (log2, stop2) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (log, respond) = (Arc::clone(&log2), Arc::clone(&respond));
                std::thread::spawn(move || serve(stream, &log, &*respond));
            }
        });
        Hook { addr, log, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/authenticate", self.addr)
    }

    /// A broker asking this webhook, with `timeout_ms`.
    fn broker(&self, timeout_ms: u64) -> RunningServer {
        let text = format!(
            "[authentication.webhook]\nurl = \"{}\"\ntimeout_ms = {timeout_ms}\n",
            self.url()
        );
        start_with_identity(Path::new("brokk.toml"), &text)
    }

    fn requests_for(&self, client_id: &str) -> Vec<HookRequest> {
        let log = self.log.lock().expect("webhook log");
        log.requests
            .iter()
            .filter(|r| r.body["clientId"] == client_id)
            .cloned()
            .collect()
    }

    /// Waits until the webhook has received a request for `client_id`.
    async fn wait_request(&self, client_id: &str) -> HookRequest {
        within(
            &format!("the webhook to be asked about {client_id}"),
            async {
                loop {
                    if let Some(r) = self.requests_for(client_id).pop() {
                        return r;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        )
        .await
    }

    fn hang_ups(&self) -> Vec<Instant> {
        self.log.lock().expect("webhook log").hang_ups.clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one HTTP/1.1 connection: requests until the peer closes it.
fn serve(stream: TcpStream, log: &Mutex<HookLog>, respond: &Respond) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut writer = stream.try_clone().expect("clone the socket");
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        let reply = respond(&request.body);
        log.lock().expect("webhook log").requests.push(request);
        let (status, body) = match reply {
            Reply::Json(v) => (200, v.to_string()),
            Reply::Status(status, body) => (status, body),
            Reply::Body(body) => (200, body),
            Reply::Hang => {
                // Never answer; note when the broker gives up and hangs up.
                let mut sink = Vec::new();
                let _ = reader.read_to_end(&mut sink);
                log.lock()
                    .expect("webhook log")
                    .hang_ups
                    .push(Instant::now());
                return;
            }
        };
        let reason = if status == 200 { "OK" } else { "Error" };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads one request: request line, headers, a Content-Length body. `None` at the
/// end of the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<HookRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let (mut length, mut content_type) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse::<usize>().ok(),
            "content-type" => content_type = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length.expect("the broker sends a Content-Length")];
    reader.read_exact(&mut body).ok()?;
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Some(HookRequest {
        method,
        path,
        content_type,
        body,
    })
}

/// A CONNECT with a user name and password.
fn login(version: ProtocolVersion, client_id: &str, user: &str, password: &str) -> Connect {
    let mut connect = raw::connect_packet(version, client_id);
    connect.username = Some(MqttString::copy_from_str(user).expect("a user name"));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

/// Sends `connect` (3.1.1) and returns the CONNACK's return code as sent on the
/// wire; a refused client must then be disconnected.
async fn v3_return_code(addr: SocketAddr, connect: Connect) -> u8 {
    assert_eq!(connect.protocol, V3);
    let mut client = RawClient::open(addr, V3).await;
    client.send(&Packet::Connect(Box::new(connect))).await;
    let (packet, frame) = client.recv_frame().await;
    assert!(matches!(packet, Packet::ConnAck(_)), "{packet:?}");
    assert_eq!(frame.len(), 4, "a 3.1.1 CONNACK: {frame:02x?}");
    let code = frame[3];
    if code == 0 {
        client.disconnect().await;
    } else {
        let after = client.expect_closed(TIMEOUT).await;
        assert!(after.is_empty(), "after the refusal: {after:?}");
    }
    code
}

#[tokio::test]
async fn webhook_allow_connects_with_the_name_it_gives_and_sees_every_credential() {
    let hook = Hook::start(|req| {
        match (
            req["userName"].as_str(),
            req["authenticationMethod"].as_str(),
        ) {
            (Some("alice-laptop" | "alice-phone"), _) => Reply::Json(json!({
                "decision": "allow",
                "clientAuthenticationName": "alice",
                "attributes": {"site": "berlin", "floor": 3, "groups": ["a", "b"]},
            })),
            (Some(user), _) => allow(user),
            (None, Some("FOO")) => allow("foo-user"),
            _ => Reply::Json(json!({"decision": "deny", "errorReason": "who are you"})),
        }
    });
    let server = hook.broker(2_000);
    let addr = server.addr(ListenerKind::Mqtt);

    let (mut alice, ack) =
        RawClient::connect_with(addr, login(V5, "wh-device", "alice-laptop", "s3cret")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    let request = hook.wait_request("wh-device").await;
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/authenticate");
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    let body = request.body.as_object().expect("a JSON object");
    assert_eq!(body["clientId"], "wh-device");
    assert_eq!(body["userName"], "alice-laptop");
    assert_eq!(body["password"], STANDARD.encode("s3cret"));
    assert_eq!(body["remoteAddress"], alice.local_addr().to_string());
    for absent in [
        "authenticationMethod",
        "authenticationData",
        "clientCertificate",
        "clientCertificateChain",
    ] {
        assert!(!body.contains_key(absent), "{absent} in {body:?}");
    }
    alice.round_trip("hook/alice").await;

    // The session belongs to alice, not to whoever has the client identifier.
    let bob = login(V5, "wh-device", "bob", "hunter2");
    assert_eq!(connack_code(addr, bob).await, ReasonCode::NotAuthorized);
    still_connected(&mut alice, "alice after bob's attempt").await;
    let (mut phone, ack) =
        RawClient::connect_with(addr, login(V5, "wh-device", "alice-phone", "other")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    alice
        .expect_disconnect(ReasonCode::SessionTakenOver, TIMEOUT)
        .await;
    phone.round_trip("hook/alice").await;

    // A 5.0 method the broker does not know goes to the webhook too.
    let foo = enhanced("wh-foo", "FOO", Some(b"\x01\x02opaque"));
    let (foo_client, ack) = RawClient::connect_with(addr, foo).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    let request = hook.wait_request("wh-foo").await;
    assert_eq!(request.body["authenticationMethod"], "FOO");
    assert_eq!(
        request.body["authenticationData"],
        STANDARD.encode(b"\x01\x02opaque")
    );
    assert!(request.body.get("userName").is_none(), "{:?}", request.body);

    // A library client, 3.1.1.
    let options = ClientOptions::new(V3, ListenerKind::Mqtt, "wh-library").credentials("eve", "pw");
    let (mut library, _) = Client::connect(&server, options).await;
    library.subscribe("hook/library", QoS::AtLeastOnce).await;
    library
        .publish("hook/library", b"hi", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&library.recv().await.payload[..], b"hi");
    library.disconnect().await;
    phone.disconnect().await;
    foo_client.disconnect().await;
}

#[tokio::test]
async fn webhook_deny_is_not_authorized_on_3_1_1_and_5_0_and_is_not_cached() {
    let hook = Hook::start(|_| Reply::Json(json!({"decision": "deny", "errorReason": "banned"})));
    let server = hook.broker(2_000);
    let addr = server.addr(ListenerKind::Mqtt);

    let v5 = login(V5, "denied-5", "user", "pw");
    assert_eq!(connack_code(addr, v5).await, ReasonCode::NotAuthorized);
    // 3.1.1: return code 5, Not authorized.
    assert_eq!(
        v3_return_code(addr, login(V3, "denied-3", "user", "pw")).await,
        5
    );
    // A client without any credentials is asked about too, and denied.
    assert_eq!(
        v3_return_code(addr, raw::connect_packet(V3, "denied-anon")).await,
        5
    );
    assert_eq!(hook.requests_for("denied-anon").len(), 1);

    // A deny is not remembered: the same credentials ask again.
    let again = login(V5, "denied-5", "user", "pw");
    assert_eq!(connack_code(addr, again).await, ReasonCode::NotAuthorized);
    assert_eq!(hook.requests_for("denied-5").len(), 2);
}

#[tokio::test]
async fn webhook_timeout_is_server_unavailable_while_connected_clients_keep_working() {
    let hook = Hook::start(|req| match req["clientId"].as_str() {
        Some(id) if id.starts_with("stuck") => Reply::Hang,
        _ => allow(req["userName"].as_str().unwrap_or("nobody")),
    });
    let server = hook.broker(300);
    let addr = server.addr(ListenerKind::Mqtt);

    let (mut watcher, ack) = RawClient::connect_with(addr, login(V5, "watcher", "w", "pw")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    assert_eq!(
        watcher.subscribe("hook/watch", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );

    let stuck = tokio::spawn(async move {
        let (_, ack) = RawClient::connect_with(addr, login(V5, "stuck-5", "s", "pw")).await;
        (ack.reason_code, Instant::now())
    });
    let asked = Instant::now();
    hook.wait_request("stuck-5").await;

    // While the webhook hangs, the connected client's messages flow.
    watcher
        .publish("hook/watch", b"during the hang", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(
        &watcher.recv_publish().await.payload[..],
        b"during the hang"
    );
    let round_trip_done = Instant::now();

    let (code, refused_at) = stuck.await.expect("the stuck client's task");
    assert_eq!(code, ReasonCode::ServerUnavailable);
    let waited = refused_at - asked;
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "refused {waited:?} after connecting; the timeout is 300 ms"
    );
    let hung_up = within("the broker to hang up on the webhook", async {
        loop {
            if let Some(at) = hook.hang_ups().first() {
                return *at;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        round_trip_done < hung_up,
        "the round trip finished {:?} after the webhook's timeout",
        round_trip_done - hung_up
    );

    // 3.1.1: return code 3, Server unavailable.
    assert_eq!(
        v3_return_code(addr, login(V3, "stuck-3", "s", "pw")).await,
        3
    );
    watcher.round_trip("hook/watch-2").await;
    watcher.disconnect().await;
}

#[tokio::test]
async fn webhook_errors_and_malformed_answers_are_server_unavailable() {
    let hook = Hook::start(|req| match req["clientId"].as_str().unwrap_or("") {
        "status-500" | "status-500-v3" => Reply::Status(500, "{\"oops\": true}".to_owned()),
        "status-403" => Reply::Status(
            403,
            json!({"decision": "allow", "clientAuthenticationName": "x"}).to_string(),
        ),
        "not-json" => Reply::Body("<html>allow</html>".to_owned()),
        "no-name" => Reply::Json(json!({"decision": "allow"})),
        "unknown-decision" => Reply::Json(json!({"decision": "maybe"})),
        "bad-expiration" => Reply::Json(json!({
            "decision": "allow", "clientAuthenticationName": "x", "expiration": "soon"
        })),
        _ => allow("fine"),
    });
    let server = hook.broker(2_000);
    let addr = server.addr(ListenerKind::Mqtt);
    for client_id in [
        "status-500",
        "status-403",
        "not-json",
        "no-name",
        "unknown-decision",
        "bad-expiration",
    ] {
        let connect = login(V5, client_id, "user", "pw");
        assert_eq!(
            connack_code(addr, connect).await,
            ReasonCode::ServerUnavailable,
            "{client_id}"
        );
    }
    assert_eq!(
        v3_return_code(addr, login(V3, "status-500-v3", "user", "pw")).await,
        3
    );
    // Errors are not remembered: the same credentials ask again.
    let again = login(V5, "status-500", "user", "pw");
    assert_eq!(
        connack_code(addr, again).await,
        ReasonCode::ServerUnavailable
    );
    assert_eq!(hook.requests_for("status-500").len(), 2);
    // And a good answer still gets in.
    let fine = login(V5, "fine", "user", "pw");
    assert_eq!(connack_code(addr, fine).await, ReasonCode::Success);
}

#[tokio::test]
async fn webhook_allows_are_remembered_per_credentials() {
    let hook = Hook::start(|req| allow(req["userName"].as_str().unwrap_or("nobody")));
    let server = hook.broker(2_000);
    let addr = server.addr(ListenerKind::Mqtt);
    let attempt = |version, password: &'static str| async move {
        let code = match version {
            V3 => ReasonCode::from_connack_v3_code(
                v3_return_code(addr, login(V3, "cached", "user", password)).await,
            )
            .expect("a 3.1.1 return code"),
            _ => connack_code(addr, login(V5, "cached", "user", password)).await,
        };
        assert_eq!(code, ReasonCode::Success, "password {password}");
    };
    attempt(V5, "first").await;
    attempt(V5, "first").await;
    attempt(V3, "first").await;
    assert_eq!(hook.requests_for("cached").len(), 1, "one call for one set");
    attempt(V5, "second").await;
    assert_eq!(hook.requests_for("cached").len(), 2, "another password");
    attempt(V5, "first").await;
    attempt(V5, "second").await;
    assert_eq!(hook.requests_for("cached").len(), 2, "both remembered");
}

#[tokio::test]
async fn webhook_expiration_ends_the_connection_with_0xa0_at_that_time() {
    let expiration = Arc::new(Mutex::new(0u64));
    let shared = Arc::clone(&expiration);
    let hook = Hook::start(move |req| {
        let at = unix_secs() + 3;
        *shared.lock().expect("expiration") = at;
        Reply::Json(json!({
            "decision": "allow",
            "clientAuthenticationName": req["userName"],
            "expiration": at,
        }))
    });
    let server = hook.broker(2_000);
    let addr = server.addr(ListenerKind::Mqtt);

    let (mut v5, ack) = RawClient::connect_with(addr, login(V5, "expiring-5", "ivan", "pw")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    let v5_until = *expiration.lock().expect("expiration");
    let (mut v3, ack) = RawClient::connect_with(addr, login(V3, "expiring-3", "judy", "pw")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    let v3_until = *expiration.lock().expect("expiration");
    v5.round_trip("hook/expiring").await;

    disconnected_at(&mut v5, ReasonCode::MaximumConnectTime, v5_until * 1000).await;
    closed_at(&mut v3, v3_until * 1000).await;

    // The remembered allow expired with it: the webhook is asked again.
    let again = login(V5, "expiring-5", "ivan", "pw");
    assert_eq!(connack_code(addr, again).await, ReasonCode::Success);
    assert_eq!(hook.requests_for("expiring-5").len(), 2);
}

#[tokio::test]
async fn the_webhook_is_asked_only_about_clients_neither_registered_nor_using_a_token() {
    let hook = Hook::start(|req| allow(req["userName"].as_str().unwrap_or("anonymous")));
    let files = tempfile::tempdir().expect("a temporary directory");
    let password_file = files.path().join("passwords");
    let mut passwords = PasswordFile::new();
    passwords
        .set_password("registered", b"right")
        .expect("a valid user and password");
    passwords.write(&password_file).expect("the password file");
    let more = format!(
        "[authentication.webhook]\n\
         url = \"{}\"\n\
         timeout_ms = 2000\n\
         [authentication]\n\
         password_file = \"{}\"\n\
         [[client]]\n\
         name = \"registered\"\n",
        hook.url(),
        password_file.display()
    );
    let broker = JwtBroker::start_with(5, &more);
    let addr = broker.addr();

    // Tokens: accepted or refused by the broker itself.
    let mut jwt = token_login(addr, "with-token", &es256("lee")).await;
    jwt.round_trip("mixed/token").await;
    let bad = enhanced("with-bad-token", METHOD, Some(b"garbage"));
    assert_eq!(connack_code(addr, bad).await, ReasonCode::NotAuthorized);
    // The registered client: its password decides.
    let registered = login(V5, "registered-1", "registered", "right");
    assert_eq!(connack_code(addr, registered).await, ReasonCode::Success);
    let wrong = login(V5, "registered-2", "registered", "wrong");
    assert_eq!(
        connack_code(addr, wrong).await,
        ReasonCode::BadUserNameOrPassword
    );
    for client_id in [
        "with-token",
        "with-bad-token",
        "registered-1",
        "registered-2",
    ] {
        assert!(
            hook.requests_for(client_id).is_empty(),
            "{client_id}: the webhook was asked"
        );
    }

    // Everyone else: the webhook decides.
    let stranger = login(V5, "stranger", "someone", "pw");
    assert_eq!(connack_code(addr, stranger).await, ReasonCode::Success);
    let foo = enhanced("other-method", "FOO", Some(b"data"));
    assert_eq!(connack_code(addr, foo).await, ReasonCode::Success);
    assert_eq!(hook.requests_for("stranger").len(), 1);
    assert_eq!(hook.requests_for("other-method").len(), 1);
    jwt.disconnect().await;
}

#[tokio::test]
async fn a_hanging_webhook_delays_only_the_logins_it_is_asked_about() {
    // Webhook calls have a lane of their own: while more of them hang than the
    // broker runs password and token checks at once (the machine's CPUs), a token
    // and a registered client's password still get their answer.
    let hook = Hook::start(|req| match req["clientId"].as_str() {
        Some(id) if id.starts_with("stuck") => Reply::Hang,
        _ => allow(req["userName"].as_str().unwrap_or("nobody")),
    });
    let files = tempfile::tempdir().expect("a temporary directory");
    let password_file = files.path().join("passwords");
    let mut passwords = PasswordFile::new();
    passwords
        .set_password("registered", b"right")
        .expect("a valid user and password");
    passwords.write(&password_file).expect("the password file");
    let more = format!(
        "[authentication.webhook]\n\
         url = \"{}\"\n\
         timeout_ms = 5000\n\
         [authentication]\n\
         password_file = \"{}\"\n\
         [[client]]\n\
         name = \"registered\"\n",
        hook.url(),
        password_file.display()
    );
    let broker = JwtBroker::start_with(5, &more);
    let addr = broker.addr();
    let stuck: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(async move {
                let connect = login(V5, &format!("stuck-{i}"), "s", "pw");
                connack_code(addr, connect).await
            })
        })
        .collect();
    for i in 0..8 {
        hook.wait_request(&format!("stuck-{i}")).await;
    }
    // Eight webhook calls hang; a token and a password are answered meanwhile,
    // long before the webhook's 5 s timeout.
    let answered = within("a token login while the webhook hangs", async {
        let mut jwt = token_login(addr, "with-token", &es256("lee")).await;
        jwt.round_trip("lanes/token").await;
        let registered = login(V5, "registered-1", "registered", "right");
        assert_eq!(connack_code(addr, registered).await, ReasonCode::Success);
        jwt.disconnect().await;
    });
    tokio::time::timeout(Duration::from_secs(3), answered)
        .await
        .expect("token and password logins are not held behind the webhook");
    for s in stuck {
        assert_eq!(
            s.await.expect("a stuck client's task"),
            ReasonCode::ServerUnavailable
        );
    }
}
