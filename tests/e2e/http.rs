//! Scenario: the operations listener (`kind = "http"` / `"https"`) and publishing
//! over HTTP, driven by a real HTTP client: `curl`, run as a child process with a
//! deadline (it is required: a missing curl fails the test with the install hint,
//! nothing is skipped). The broker runs in this process on the runtime
//! `BROKK_RUNTIME` names.
//!
//! What is asserted is what a user sees: the status line, the headers that matter
//! (`Allow`, `WWW-Authenticate`), the body of the health endpoints, the HTTP
//! version curl negotiated, and on the MQTT side (a hand-written MQTT 5.0
//! subscriber that shows every property, or a WebSocket one) the message each
//! request became: topic, payload, QoS, retain, and every property of Event Grid's
//! mapping (response topic, correlation data, user properties in order, content
//! type, message expiry, payload format indicator), with query values overriding
//! headers. (curl sends `Content-Type: application/x-www-form-urlencoded` with
//! `--data-binary` unless told otherwise, and that becomes the message's content
//! type like any other; the tests that look at content types set it.)
//!
//! Refusals: 400 for a request that is not a publish (no topic, a wildcard, a bad
//! QoS, bad base64, ...), 413 for a body over `limits.max_packet_size`, 401 for
//! missing or wrong credentials (Basic from a password file, Bearer as a JWT), 403
//! for a topic the permission bindings deny, 503 when the authentication webhook
//! does not answer in time. Refused requests never become messages: a subscriber
//! to `#` sees a marker published after them as its first message. A refusal is
//! never reported as a success, at QoS 0 either, and a 401 always carries
//! `WWW-Authenticate`.
//!
//! Also: HTTP/2 by prior knowledge (plain) and by ALPN (TLS, the dev CA), POST on
//! `ws` and `wss` listeners beside WebSocket clients on the same port, and HTTP
//! publishes leaving MQTT clients' sessions alone whatever their client ids.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adapter_common::config::{Config, ListenerKind};
use adapter_common::passwd::{HashScheme, PasswordFile};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use brokk_e2e::process::{assert_success, require, run};
use brokk_e2e::raw::{connect_packet, encode, Next, RawClient};
use brokk_e2e::server::WS_PATH;
use brokk_e2e::ws::{client_frame, opcode, WsClient};
use brokk_e2e::{within, RunningServer, Setup};
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mqtt_proto::{
    Connect, MqttString, Packet, PayloadFormat, ProtocolVersion, Publish, QoS, ReasonCode,
    Subscribe, SubscriptionOptions, TopicFilter,
};
use serde_json::json;
use tokio::process::Command;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// How long one curl run may take (it has its own `--max-time` below this).
const CURL_LIMIT: Duration = Duration::from_secs(30);

/// "Nothing more arrives" is watched for this long, where order cannot show it.
const QUIET: Duration = Duration::from_millis(300);

// ------------------------------------------------------------------ curl

/// What curl saw of one response.
#[derive(Debug)]
struct Reply {
    /// The status code.
    status: u16,
    /// `%{http_version}`: "1.1" or "2".
    version: String,
    /// The final response's header fields, names in lower case.
    headers: Vec<(String, String)>,
    /// The body as text.
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Marks where curl's `--write-out` starts in its output.
const WRITE_OUT_MARK: &str = "\n@@brokk-curl@@";

/// Runs `curl` with `args` after its own options; fails the test if curl is not
/// installed or fails as a program (a refused request is not a failure: curl
/// reports its status).
async fn curl<I, S>(args: I) -> Reply
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let curl = require("curl");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let headers_path = dir.path().join("headers");
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = Command::new(&curl);
    command
        .args(["--silent", "--show-error", "--max-time", "20"])
        .arg("--dump-header")
        .arg(&headers_path)
        .args([
            "--write-out",
            "\\n@@brokk-curl@@%{http_code} %{http_version}",
        ])
        .args(&args);
    let out = run(command, CURL_LIMIT).await;
    let what = format!("curl {args:?}");
    assert_success(&what, &out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = stdout
        .rsplit_once(WRITE_OUT_MARK)
        .unwrap_or_else(|| panic!("{what}: no --write-out in {stdout:?}"));
    let (status, version) = trailer
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("{what}: --write-out {trailer:?}"));
    let dump = std::fs::read_to_string(&headers_path).unwrap_or_default();
    // Interim responses (100 Continue) come first: the last block is the answer.
    let last = dump
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .last()
        .unwrap_or("");
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status: status
            .parse()
            .unwrap_or_else(|_| panic!("{what}: status {status:?}")),
        version: version.to_owned(),
        headers,
        body: body.to_owned(),
    }
}

/// A POST of `body` (sent as is, from a file) to `url` with curl's further
/// `options` (headers, `-u`, protocol flags).
async fn post(url: &str, body: &[u8], options: &[&str]) -> Reply {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("body");
    std::fs::write(&file, body).expect("the request body");
    let mut args: Vec<OsString> = options.iter().map(OsString::from).collect();
    args.push("--data-binary".into());
    let mut at = OsString::from("@");
    at.push(&file);
    args.push(at);
    args.push(url.into());
    curl(args).await
}

/// `http://ADDR/mqtt/messages?QUERY`.
fn messages_url(addr: SocketAddr, query: &str) -> String {
    format!("http://{addr}/mqtt/messages?{query}")
}

/// Asserts a 204 with an empty body.
fn assert_published(what: &str, reply: &Reply) {
    assert_eq!(reply.status, 204, "{what}: {reply:?}");
    assert!(
        reply.body.is_empty(),
        "{what}: a 204 has no body: {reply:?}"
    );
}

/// Asserts `status` with a body that says why.
fn assert_refused(what: &str, reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert!(
        !reply.body.trim().is_empty(),
        "{what}: a refusal says why in its body: {reply:?}"
    );
}

// ------------------------------------------------------------------ MQTT side

/// A 5.0 CONNECT with a user name and password.
fn login(client_id: &str, user: &str, password: &str) -> Connect {
    let mut connect = connect_packet(V5, client_id);
    connect.username = Some(MqttString::copy_from_str(user).expect("a valid user name"));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

/// An MQTT 5.0 subscriber to `filter` at QoS 2 (so it sees each message at the
/// QoS it was published with).
async fn subscriber(addr: SocketAddr, client_id: &str, filter: &str) -> RawClient {
    subscribed(RawClient::connect(addr, V5, client_id).await, filter).await
}

async fn subscribed(mut client: RawClient, filter: &str) -> RawClient {
    assert_eq!(
        client.subscribe(filter, QoS::ExactlyOnce).await,
        ReasonCode::GrantedQoS2,
        "SUBACK for {filter}"
    );
    client
}

/// The next message, asserting its topic.
async fn expect_message(client: &mut RawClient, topic: &str) -> Publish {
    let got = client.recv_publish().await;
    assert_eq!(got.topic.as_str(), topic, "{got:?}");
    got
}

/// Asserts nothing arrives for [`QUIET`].
async fn expect_quiet(client: &mut RawClient, why: &str) {
    match client.next(QUIET).await {
        Next::TimedOut => {}
        Next::Packet(p, _) => panic!("{why}: unexpected {p:?}"),
        Next::Closed => panic!("{why}: the broker closed the connection"),
    }
}

fn user_properties(p: &Publish) -> Vec<(String, String)> {
    p.properties
        .user_properties
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

// ------------------------------------------------------------------ configs

/// Starts a broker with `kinds` whose identity and authorization tables (and
/// password file) are those of the config text, parsed as the broker parses it in
/// `dir`; anonymous clients are refused.
fn start_with_policy(kinds: &[ListenerKind], dir: &Path, text: &str) -> RunningServer {
    let path = dir.join("brokk.toml");
    std::fs::write(&path, text).expect("brokk.toml");
    let parsed = Config::parse(&path, text).unwrap_or_else(|e| panic!("{text}\n{e}"));
    let mut setup = Setup::new(kinds);
    let config = setup.config_mut();
    config.identity = parsed.identity;
    config.authorization = parsed.authorization;
    config.password_file = parsed.password_file;
    config.allow_anonymous = Some(false);
    setup.start()
}

/// A password file in `dir` with these users.
fn write_passwords(dir: &Path, users: &[(&str, &str)]) {
    let mut file = PasswordFile::new();
    for (user, password) in users {
        // Mosquitto's PBKDF2 form: cheap to verify in a debug build.
        file.set_password_with(user, password.as_bytes(), HashScheme::Pbkdf2Sha512)
            .expect("a valid user and password");
    }
    file.write(&dir.join("passwords"))
        .expect("the password file");
}

/// Everyone may publish and subscribe under `allowed/`, nothing else.
const ALLOWED_ONLY: &str = r#"
password_file = "passwords"

[authorization]
mode = "bindings"

[[client_group]]
name = "everyone"
query = "$all"

[[topic_space]]
name = "allowed"
templates = ["allowed/#"]

[[permission_binding]]
name = "everyone-publish-allowed"
client_group = "everyone"
topic_space = "allowed"
permission = "publisher"

[[permission_binding]]
name = "everyone-subscribe-allowed"
client_group = "everyone"
topic_space = "allowed"
permission = "subscriber"
"#;

// ------------------------------------------------------------------ 1. endpoints

#[tokio::test]
async fn health_readiness_unknown_paths_and_wrong_methods() {
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Http]).start();
    let http = server.addr(ListenerKind::Http);

    let health = curl([format!("http://{http}/healthz")]).await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body, "ok\n", "{health:?}");
    assert_eq!(health.version, "1.1", "{health:?}");

    // Ready once the server started: every listener accepts.
    let ready = within("GET /readyz to answer 200", async {
        loop {
            let r = curl([format!("http://{http}/readyz")]).await;
            match r.status {
                200 => return r,
                503 => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => panic!("GET /readyz: {r:?}"),
            }
        }
    })
    .await;
    assert_eq!(ready.body.trim(), "ready", "{ready:?}");

    for path in ["/", "/nothing-here", "/metrics/extra", "/mqtt/messages/x"] {
        let r = curl([format!("http://{http}{path}")]).await;
        assert_eq!(r.status, 404, "GET {path}: {r:?}");
    }

    // Each endpoint answers other methods with 405 and the method it takes.
    for (method, path, allow) in [
        ("GET", "/mqtt/messages?topic=t", "POST"),
        ("PUT", "/mqtt/messages?topic=t", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("POST", "/readyz", "GET, HEAD"),
    ] {
        let r = curl(["--request", method, &format!("http://{http}{path}")]).await;
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}: {r:?}");
    }

    // HEAD is answered wherever GET is; a `+` in the query is a `+` (a wildcard,
    // refused), not a space.
    let r = curl(["--head", &format!("http://{http}/healthz")]).await;
    assert_eq!(r.status, 200, "HEAD /healthz: {r:?}");
    let r = curl(["--data", "x", &messages_url(http, "topic=a/+")]).await;
    assert_eq!(r.status, 400, "topic=a/+: {r:?}");

    // The MQTT listener is untouched by all this.
    let mut client = RawClient::connect(server.addr(ListenerKind::Mqtt), V5, "bystander").await;
    client.round_trip("still/working").await;
}

// ------------------------------------------------------------------ 2. mapping

#[tokio::test]
async fn every_header_of_the_mapping_reaches_an_mqtt_5_subscriber() {
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Http]).start();
    let (mqtt, http) = (
        server.addr(ListenerKind::Mqtt),
        server.addr(ListenerKind::Http),
    );
    let mut sub = subscriber(mqtt, "watcher", "http/#").await;

    // Every property at once.
    let correlation: &[u8] = &[0x00, 0x01, 0xfe, 0xff, b'c'];
    let user_props = STANDARD.encode(r#"[{"Urgency":"alert"},{"RequestId":"55f4"}]"#);
    let body = br#"{"temperature": 21.5}"#;
    let reply = post(
        &messages_url(http, "topic=http/full"),
        body,
        &[
            "-H",
            "Content-Type: application/json",
            "-H",
            "mqtt-response-topic: replies%2Fto%20me",
            "-H",
            &format!("mqtt-correlation-data: {}", STANDARD.encode(correlation)),
            "-H",
            &format!("mqtt-user-properties: {user_props}"),
            "-H",
            "mqtt-message-expiry: 3600",
            "-H",
            "mqtt-payload-format-indicator: 1",
        ],
    )
    .await;
    assert_published("POST with every header", &reply);
    let got = expect_message(&mut sub, "http/full").await;
    assert_eq!(&got.payload[..], body, "the body is the payload");
    assert_eq!(got.qos, QoS::AtLeastOnce, "QoS 1 by default");
    assert!(!got.retain, "not retained by default");
    let props = &got.properties;
    assert_eq!(
        props.response_topic.as_ref().map(|t| t.as_str()),
        Some("replies/to me"),
        "mqtt-response-topic is percent-decoded: {got:?}"
    );
    assert_eq!(
        props.correlation_data.as_deref(),
        Some(correlation),
        "mqtt-correlation-data is base64: {got:?}"
    );
    assert_eq!(
        user_properties(&got),
        [
            ("Urgency".to_owned(), "alert".to_owned()),
            ("RequestId".to_owned(), "55f4".to_owned())
        ],
        "mqtt-user-properties in order: {got:?}"
    );
    assert_eq!(
        props.content_type.as_ref().map(|c| c.as_str()),
        Some("application/json"),
        "{got:?}"
    );
    let expiry = props
        .message_expiry_interval
        .unwrap_or_else(|| panic!("mqtt-message-expiry: no Message Expiry Interval: {got:?}"));
    assert!(
        (3590..=3600).contains(&expiry),
        "the expiry left is about 3600 s: {expiry}"
    );
    assert_eq!(props.payload_format_indicator, Some(PayloadFormat::Utf8));

    // Nothing is made up when the request says nothing: curl sends no Content-Type
    // with -H "Content-Type:" (it would send form encoding otherwise).
    let reply = post(
        &messages_url(http, "topic=http/bare"),
        b"bare",
        &["-H", "Content-Type:"],
    )
    .await;
    assert_published("a bare POST", &reply);
    let got = expect_message(&mut sub, "http/bare").await;
    assert_eq!(&got.payload[..], b"bare");
    let p = &got.properties;
    assert!(
        p.response_topic.is_none()
            && p.correlation_data.is_none()
            && p.user_properties.is_empty()
            && p.content_type.is_none()
            && p.message_expiry_interval.is_none()
            && p.payload_format_indicator.is_none(),
        "no properties were asked for: {got:?}"
    );

    // A payload of any bytes, and an empty one.
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 13, 10]).collect();
    let reply = post(&messages_url(http, "topic=http/binary"), &binary, &[]).await;
    assert_published("a binary body", &reply);
    assert_eq!(
        expect_message(&mut sub, "http/binary").await.payload,
        binary
    );
    let reply = post(&messages_url(http, "topic=http/empty"), b"", &[]).await;
    assert_published("an empty body", &reply);
    assert!(expect_message(&mut sub, "http/empty")
        .await
        .payload
        .is_empty());

    // The query is percent-decoded (UTF-8), `+` in it is a space (form encoding).
    let reply = post(
        &messages_url(http, "topic=http%2Fencoded%2Fcaf%C3%A9%20au%20lait"),
        b"x",
        &[],
    )
    .await;
    assert_published("an encoded topic", &reply);
    expect_message(&mut sub, "http/encoded/caf\u{e9} au lait").await;

    // QoS: from the header or the query, each delivered at that QoS.
    for (case, query, headers, qos) in [
        ("default", "", vec![], QoS::AtLeastOnce),
        ("header-0", "", vec!["mqtt-qos: 0"], QoS::AtMostOnce),
        ("header-1", "", vec!["mqtt-qos: 1"], QoS::AtLeastOnce),
        ("header-2", "", vec!["mqtt-qos: 2"], QoS::ExactlyOnce),
        ("query-0", "&qos=0", vec![], QoS::AtMostOnce),
        ("query-2", "&qos=2", vec![], QoS::ExactlyOnce),
        // A query value overrides a header.
        ("override-0", "&qos=0", vec!["mqtt-qos: 2"], QoS::AtMostOnce),
        (
            "override-2",
            "&qos=2",
            vec!["mqtt-qos: 0"],
            QoS::ExactlyOnce,
        ),
    ] {
        let topic = format!("http/qos/{case}");
        let mut options = Vec::new();
        for h in &headers {
            options.extend(["-H", *h]);
        }
        let reply = post(
            &messages_url(http, &format!("topic={topic}{query}")),
            case.as_bytes(),
            &options,
        )
        .await;
        assert_published(&topic, &reply);
        let got = expect_message(&mut sub, &topic).await;
        assert_eq!(got.qos, qos, "{case}: {got:?}");
        assert_eq!(&got.payload[..], case.as_bytes());
    }

    // Properties in the query override their headers too.
    let reply = post(
        &messages_url(
            http,
            "topic=http/override&mqtt-response-topic=from%2Fquery&content-type=text%2Fplain",
        ),
        b"o",
        &[
            "-H",
            "mqtt-response-topic: from%2Fheader",
            "-H",
            "Content-Type: application/json",
        ],
    )
    .await;
    assert_published("properties in the query", &reply);
    let got = expect_message(&mut sub, "http/override").await;
    assert_eq!(
        got.properties.response_topic.as_ref().map(|t| t.as_str()),
        Some("from/query"),
        "{got:?}"
    );
    assert_eq!(
        got.properties.content_type.as_ref().map(|c| c.as_str()),
        Some("text/plain"),
        "{got:?}"
    );

    // Retain: by header, by query; a query `retain=false` overrides the header.
    for (topic, query, header) in [
        ("http/keep/header", "", Some("mqtt-retain: true")),
        ("http/keep/query", "&retain=true", None),
        (
            "http/keep/overridden",
            "&retain=false",
            Some("mqtt-retain: true"),
        ),
    ] {
        let mut options = Vec::new();
        if let Some(h) = header {
            options.extend(["-H", h]);
        }
        let reply = post(
            &messages_url(http, &format!("topic={topic}{query}")),
            topic.as_bytes(),
            &options,
        )
        .await;
        assert_published(topic, &reply);
        expect_message(&mut sub, topic).await;
    }
    expect_quiet(&mut sub, "every message arrived once").await;
    // A later subscriber gets the retained ones only, flagged as retained.
    let mut late = subscriber(mqtt, "late", "http/keep/+").await;
    let mut retained = Vec::new();
    for _ in 0..2 {
        let got = late.recv_publish().await;
        assert!(
            got.retain,
            "a retained message is delivered as one: {got:?}"
        );
        assert_eq!(got.payload, got.topic.as_str().as_bytes());
        retained.push(got.topic.as_str().to_owned());
    }
    retained.sort();
    assert_eq!(retained, ["http/keep/header", "http/keep/query"]);
    expect_quiet(&mut late, "retain=false in the query wins over the header").await;
}

// ------------------------------------------------------------------ 3. refusals

#[tokio::test]
async fn requests_that_are_not_publishes_are_refused_with_400_and_413() {
    const MAX: u32 = 1024;
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Http])
        .limits(|l| l.max_packet_size = std::num::NonZeroU32::new(MAX))
        .start();
    let (mqtt, http) = (
        server.addr(ListenerKind::Mqtt),
        server.addr(ListenerKind::Http),
    );

    // No subscriber: still a success, at every QoS.
    for qos in ["0", "1", "2"] {
        let reply = post(
            &messages_url(http, &format!("topic=nobody/listens&qos={qos}")),
            b"into the void",
            &[],
        )
        .await;
        assert_published(&format!("QoS {qos} without a subscriber"), &reply);
    }

    let mut all = subscriber(mqtt, "everything", "#").await;
    let bad = STANDARD.encode("not json");
    let not_pairs = STANDARD.encode(r#"[{"a":"1","b":"2"}]"#);
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("no query", format!("http://{http}/mqtt/messages"), vec![]),
        ("no topic", messages_url(http, "qos=1"), vec![]),
        ("an empty topic", messages_url(http, "topic="), vec![]),
        ("a # wildcard", messages_url(http, "topic=a/%23"), vec![]),
        ("a + wildcard", messages_url(http, "topic=a/%2B/b"), vec![]),
        ("qos 3", messages_url(http, "topic=t&qos=3"), vec![]),
        (
            "qos in a header",
            messages_url(http, "topic=t"),
            vec!["mqtt-qos: high".into()],
        ),
        (
            "retain=maybe",
            messages_url(http, "topic=t&retain=maybe"),
            vec![],
        ),
        (
            "correlation data not base64",
            messages_url(http, "topic=t"),
            vec!["mqtt-correlation-data: %%%not base64%%%".into()],
        ),
        (
            "user properties not base64",
            messages_url(http, "topic=t"),
            vec!["mqtt-user-properties: {\"a\":\"b\"}".into()],
        ),
        (
            "user properties not a JSON array",
            messages_url(http, "topic=t"),
            vec![format!("mqtt-user-properties: {bad}")],
        ),
        (
            "user properties with two keys in one object",
            messages_url(http, "topic=t"),
            vec![format!("mqtt-user-properties: {not_pairs}")],
        ),
        (
            "message expiry not a number",
            messages_url(http, "topic=t"),
            vec!["mqtt-message-expiry: soon".into()],
        ),
        (
            "payload format indicator 2",
            messages_url(http, "topic=t"),
            vec!["mqtt-payload-format-indicator: 2".into()],
        ),
        (
            "a wildcard response topic",
            messages_url(http, "topic=t"),
            vec!["mqtt-response-topic: replies%2F%23".into()],
        ),
    ];
    for (what, url, headers) in &cases {
        let mut options = Vec::new();
        for h in headers {
            options.extend(["-H", h.as_str()]);
        }
        let reply = post(url, b"refused", &options).await;
        assert_refused(what, &reply, 400);
    }

    // A body over the broker's maximum packet size.
    let big = vec![b'x'; 2 * MAX as usize];
    for qos in ["0", "1"] {
        let reply = post(
            &messages_url(http, &format!("topic=too/big&qos={qos}")),
            &big,
            &[],
        )
        .await;
        assert_refused(
            &format!("a {} byte body at QoS {qos}", big.len()),
            &reply,
            413,
        );
    }
    // A body under the limit whose PUBLISH (topic and header added) is over it:
    // the broker refuses the packet (DISCONNECT 0x95), and says so.
    let almost = vec![b'y'; MAX as usize - 4];
    for qos in ["1", "2"] {
        let reply = post(
            &messages_url(http, &format!("topic=almost/too/big&qos={qos}")),
            &almost,
            &[],
        )
        .await;
        assert_refused(
            &format!(
                "a {} byte body whose PUBLISH is over {MAX} bytes, QoS {qos}",
                almost.len()
            ),
            &reply,
            413,
        );
    }

    // None of that became a message: the marker is the first thing to arrive.
    let reply = post(&messages_url(http, "topic=marker"), b"after", &[]).await;
    assert_published("the marker", &reply);
    let got = all.recv_publish().await;
    assert_eq!(
        got.topic.as_str(),
        "marker",
        "a refused request was published: {got:?}"
    );
}

#[tokio::test]
async fn a_qos_0_publish_whose_packet_is_too_large_is_not_reported_as_published() {
    const MAX: u32 = 1024;
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Http])
        .limits(|l| l.max_packet_size = std::num::NonZeroU32::new(MAX))
        .start();
    let (mqtt, http) = (
        server.addr(ListenerKind::Mqtt),
        server.addr(ListenerKind::Http),
    );
    let mut all = subscriber(mqtt, "everything", "#").await;
    // The body fits the limit, the PUBLISH it becomes (fixed header, topic,
    // properties) does not: the broker refuses the packet, so the message is lost.
    // A 204 would tell the client it was published.
    let almost = vec![b'y'; MAX as usize - 4];
    let reply = post(
        &messages_url(http, "topic=almost/too/big&qos=0"),
        &almost,
        &[],
    )
    .await;
    let marker = post(&messages_url(http, "topic=marker&qos=0"), b"m", &[]).await;
    assert_published("the marker", &marker);
    let first = all.recv_publish().await;
    let delivered = first.topic.as_str() == "almost/too/big";
    assert!(
        delivered || reply.status == 413,
        "a {} byte body at QoS 0 under max_packet_size {MAX}: HTTP {} but the message was \
         not delivered (the first message is {:?}): expected 413",
        almost.len(),
        reply.status,
        first.topic
    );
}

#[tokio::test]
async fn basic_credentials_and_bindings_give_401_403_and_204() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_passwords(
        dir.path(),
        &[("alice", "alice-pw"), ("watcher", "watcher-pw")],
    );
    let server = start_with_policy(
        &[ListenerKind::Mqtt, ListenerKind::Http],
        dir.path(),
        ALLOWED_ONLY,
    );
    let (mqtt, http) = (
        server.addr(ListenerKind::Mqtt),
        server.addr(ListenerKind::Http),
    );
    let (client, ack) =
        RawClient::connect_with(mqtt, login("watcher", "watcher", "watcher-pw")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    let mut sub = subscribed(client, "allowed/#").await;

    let url = messages_url(http, "topic=allowed/one");
    for (what, options) in [
        ("no credentials", vec![]),
        ("a wrong password", vec!["-u", "alice:wrong"]),
        ("an unknown user", vec!["-u", "mallory:alice-pw"]),
        ("no password", vec!["-u", "alice:"]),
    ] {
        let reply = post(&url, what.as_bytes(), &options).await;
        assert_refused(what, &reply, 401);
        let challenge = reply.header("www-authenticate").unwrap_or("");
        assert!(
            challenge.contains("Basic"),
            "{what}: a 401 names the schemes it takes: {reply:?}"
        );
    }
    // An Authorization header that cannot be read is refused the same way (its
    // WWW-Authenticate is checked in `every_401_carries_www_authenticate`).
    for (what, header) in [
        ("another scheme", "Authorization: Digest username=\"alice\""),
        ("Basic that is not base64", "Authorization: Basic !!!"),
    ] {
        let reply = post(&url, what.as_bytes(), &["-H", header]).await;
        assert_refused(what, &reply, 401);
    }

    // The right password: published, as alice.
    let reply = post(&url, b"from alice", &["-u", "alice:alice-pw"]).await;
    assert_published("the right password", &reply);
    let got = expect_message(&mut sub, "allowed/one").await;
    assert_eq!(&got.payload[..], b"from alice");

    // A topic no binding lets alice publish to: 403 at QoS 1 (the default) and 2.
    for query in [
        "topic=denied/x",
        "topic=denied/x&qos=1",
        "topic=denied/x&qos=2",
    ] {
        let reply = post(
            &messages_url(http, query),
            b"nope",
            &["-u", "alice:alice-pw"],
        )
        .await;
        assert_refused(query, &reply, 403);
    }
    // And an allowed topic again, at every QoS; nothing else reached the watcher.
    for qos in ["0", "1", "2"] {
        let reply = post(
            &messages_url(http, &format!("topic=allowed/two&qos={qos}")),
            qos.as_bytes(),
            &["-u", "alice:alice-pw"],
        )
        .await;
        assert_published(&format!("allowed at QoS {qos}"), &reply);
        let got = expect_message(&mut sub, "allowed/two").await;
        assert_eq!(&got.payload[..], qos.as_bytes());
    }
}

#[tokio::test]
async fn a_denied_qos_0_publish_is_not_reported_as_published() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_passwords(dir.path(), &[("alice", "alice-pw")]);
    let server = start_with_policy(&[ListenerKind::Http], dir.path(), ALLOWED_ONLY);
    let http = server.addr(ListenerKind::Http);
    // HTTP answers every request: a publish the bindings refuse must not read as a
    // success at QoS 0 either (as it is refused at QoS 1 and 2).
    let reply = post(
        &messages_url(http, "topic=denied/x&qos=0"),
        b"nope",
        &["-u", "alice:alice-pw"],
    )
    .await;
    assert_refused("a denied topic at QoS 0", &reply, 403);
}

#[tokio::test]
async fn every_401_carries_www_authenticate() {
    // RFC 9110 15.5.2: a 401 MUST carry WWW-Authenticate, whether the credentials
    // were wrong or the Authorization header could not be read at all.
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_passwords(dir.path(), &[("alice", "alice-pw")]);
    let server = start_with_policy(
        &[ListenerKind::Http],
        dir.path(),
        "password_file = \"passwords\"\n",
    );
    let url = messages_url(server.addr(ListenerKind::Http), "topic=t");
    for (what, options) in [
        ("a wrong password", vec!["-u", "alice:wrong"]),
        ("no credentials", vec![]),
        (
            "another scheme",
            vec!["-H", "Authorization: Digest username=\"alice\""],
        ),
        (
            "Basic that is not base64",
            vec!["-H", "Authorization: Basic !!!"],
        ),
        (
            "Basic with a user name that is not UTF-8",
            vec!["-H", "Authorization: Basic /w=="],
        ),
    ] {
        let reply = post(&url, what.as_bytes(), &options).await;
        assert_eq!(reply.status, 401, "{what}: {reply:?}");
        assert!(
            reply.header("www-authenticate").is_some(),
            "{what}: a 401 without WWW-Authenticate: {reply:?}"
        );
    }
}

#[tokio::test]
async fn an_authentication_webhook_that_does_not_answer_gives_503() {
    // A webhook that accepts connections (the kernel's backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind the silent webhook");
    let hook = silent.local_addr().expect("its address");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let text = format!(
        "[authentication.webhook]\nurl = \"http://{hook}/authenticate\"\ntimeout_ms = 300\n"
    );
    let server = start_with_policy(&[ListenerKind::Http], dir.path(), &text);
    let http = server.addr(ListenerKind::Http);
    let reply = post(
        &messages_url(http, "topic=t"),
        b"x",
        &["-u", "device:secret"],
    )
    .await;
    assert_refused("the webhook timed out (CONNACK 0x88)", &reply, 503);
    drop(silent);
}

#[tokio::test]
async fn http_publishes_never_take_over_an_mqtt_clients_session() {
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Http]).start();
    let (mqtt, http) = (
        server.addr(ListenerKind::Mqtt),
        server.addr(ListenerKind::Http),
    );
    // Devices whose client ids look like the ones HTTP publishes might use.
    let mut devices = Vec::new();
    for n in 0..=3 {
        let id = format!("http-publish-{n}");
        let device = RawClient::connect(mqtt, V5, &id).await;
        devices.push((id, device));
    }
    let mut sub = subscriber(mqtt, "takeover-watcher", "takeover/#").await;
    for i in 0..3 {
        let topic = format!("takeover/{i}");
        let reply = post(&messages_url(http, &format!("topic={topic}")), b"x", &[]).await;
        assert_published(&topic, &reply);
        expect_message(&mut sub, &topic).await;
    }
    // Every device is still connected, undisturbed, and served.
    for (id, mut device) in devices {
        match device.next(QUIET).await {
            Next::TimedOut => {}
            Next::Packet(p, _) => panic!("{id}: an HTTP publish disturbed it: {p:?}"),
            Next::Closed => panic!("{id}: an HTTP publish closed its connection"),
        }
        device.round_trip(&format!("takeover/{id}")).await;
        expect_message(&mut sub, &format!("takeover/{id}")).await;
    }
}

// ------------------------------------------------------------------ 4. HTTP/2

#[tokio::test]
async fn http2_by_prior_knowledge_and_by_alpn_publishes() {
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Http, ListenerKind::Https]).start();
    let (mqtt, http, https) = (
        server.addr(ListenerKind::Mqtt),
        server.addr(ListenerKind::Http),
        server.addr(ListenerKind::Https),
    );
    let ca = server.ca_cert().to_str().expect("a UTF-8 path").to_owned();
    let mut sub = subscriber(mqtt, "h2-watcher", "h2/#").await;

    // Plain HTTP/2 with prior knowledge (no upgrade): the preface picks HTTP/2.
    let reply = post(
        &messages_url(http, "topic=h2/prior&qos=2"),
        b"prior knowledge",
        &["--http2-prior-knowledge"],
    )
    .await;
    assert_published("HTTP/2 with prior knowledge", &reply);
    assert_eq!(reply.version, "2", "{reply:?}");
    let got = expect_message(&mut sub, "h2/prior").await;
    assert_eq!(&got.payload[..], b"prior knowledge");
    assert_eq!(got.qos, QoS::ExactlyOnce);

    let health = curl(["--http2-prior-knowledge", &format!("http://{http}/healthz")]).await;
    assert_eq!(
        (health.status, health.version.as_str()),
        (200, "2"),
        "{health:?}"
    );
    assert_eq!(health.body, "ok\n");

    // HTTPS: ALPN offers h2, curl takes it; the dev CA is the only trust anchor.
    for host in ["127.0.0.1", "localhost"] {
        let url = format!(
            "https://{host}:{}/mqtt/messages?topic=h2/alpn",
            https.port()
        );
        let reply = post(
            &url,
            host.as_bytes(),
            &[
                "--http2",
                "--cacert",
                &ca,
                "-H",
                "mqtt-user-properties: W3siayI6InYifV0=",
            ],
        )
        .await;
        assert_published(&format!("HTTP/2 by ALPN to {host}"), &reply);
        assert_eq!(reply.version, "2", "{reply:?}");
        let got = expect_message(&mut sub, "h2/alpn").await;
        assert_eq!(&got.payload[..], host.as_bytes());
        assert_eq!(user_properties(&got), [("k".to_owned(), "v".to_owned())]);
    }

    // HTTP/1.1 over TLS still works when the client asks for it.
    let url = format!(
        "https://localhost:{}/mqtt/messages?topic=h2/tls11",
        https.port()
    );
    let reply = post(&url, b"one one", &["--http1.1", "--cacert", &ca]).await;
    assert_published("HTTP/1.1 over TLS", &reply);
    assert_eq!(reply.version, "1.1", "{reply:?}");
    expect_message(&mut sub, "h2/tls11").await;

    // Several streams on one HTTP/2 connection (curl multiplexes --parallel
    // transfers): every message arrives.
    let mut args: Vec<String> = [
        "--http2-prior-knowledge",
        "--parallel",
        "--parallel-immediate",
        "--output",
        "/dev/null",
    ]
    .map(str::to_owned)
    .to_vec();
    for i in 0..5 {
        if i > 0 {
            args.extend(["--output".to_owned(), "/dev/null".to_owned()]);
        }
        args.extend([
            "--data-binary".to_owned(),
            format!("stream {i}"),
            messages_url(http, &format!("topic=h2/many/{i}")),
        ]);
    }
    let _ = curl(args).await;
    let mut topics = Vec::new();
    for _ in 0..5 {
        topics.push(sub.recv_publish().await.topic.as_str().to_owned());
    }
    topics.sort();
    assert_eq!(
        topics,
        (0..5).map(|i| format!("h2/many/{i}")).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------------ 5. WebSocket port

#[tokio::test]
async fn websocket_listeners_take_http_publishes_and_websocket_clients_on_one_port() {
    let server = Setup::new(&[ListenerKind::Ws, ListenerKind::Wss]).start();
    let (ws, wss) = (
        server.addr(ListenerKind::Ws),
        server.addr(ListenerKind::Wss),
    );
    let ca = server.ca_cert().to_str().expect("a UTF-8 path").to_owned();

    // A WebSocket MQTT client on the ws port subscribes...
    let mut client = WsClient::upgrade(ws, WS_PATH).await;
    let connect = encode(&Packet::Connect(Box::new(connect_packet(V5, "ws-sub"))), V5);
    let subscribe = encode(
        &Packet::Subscribe(Subscribe {
            packet_id: std::num::NonZeroU16::new(1).expect("not zero"),
            filters: vec![(
                TopicFilter::copy_from_str("ws/#").expect("a valid filter"),
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            )],
            properties: Default::default(),
        }),
        V5,
    );
    client
        .send_raw(&client_frame(true, opcode::BINARY, &connect))
        .await;
    match client.recv_packet(V5).await {
        Packet::ConnAck(a) => assert_eq!(a.reason_code, ReasonCode::Success, "{a:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    client
        .send_raw(&client_frame(true, opcode::BINARY, &subscribe))
        .await;
    assert!(matches!(client.recv_packet(V5).await, Packet::SubAck(_)));

    // ...and a POST to the same port publishes, with the same mapping.
    let reply = post(
        &format!("http://{ws}/mqtt/messages?topic=ws/plain&qos=0"),
        b"over the ws port",
        &[
            "-H",
            "mqtt-response-topic: ws%2Freply",
            "-H",
            "Content-Type: text/plain",
        ],
    )
    .await;
    assert_published("POST on the ws port", &reply);
    let got = match client.recv_packet(V5).await {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(got.topic.as_str(), "ws/plain");
    assert_eq!(&got.payload[..], b"over the ws port");
    assert_eq!(got.qos, QoS::AtMostOnce);
    assert_eq!(
        got.properties.response_topic.as_ref().map(|t| t.as_str()),
        Some("ws/reply")
    );
    assert_eq!(
        got.properties.content_type.as_ref().map(|c| c.as_str()),
        Some("text/plain")
    );

    // The wss port too (TLS with the dev CA), refusals included.
    let url = format!(
        "https://localhost:{}/mqtt/messages?topic=ws/secure&qos=0",
        wss.port()
    );
    let reply = post(&url, b"over the wss port", &["--cacert", &ca]).await;
    assert_published("POST on the wss port", &reply);
    match client.recv_packet(V5).await {
        Packet::Publish(p) => {
            assert_eq!(p.topic.as_str(), "ws/secure");
            assert_eq!(&p.payload[..], b"over the wss port");
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    let reply = post(
        &format!("http://{ws}/mqtt/messages?topic=ws/%23"),
        b"x",
        &[],
    )
    .await;
    assert_refused("a wildcard topic on the ws port", &reply, 400);

    // A new WebSocket client still connects on that port afterwards.
    let mut second = WsClient::upgrade(ws, WS_PATH).await;
    let connect = encode(&Packet::Connect(Box::new(connect_packet(V5, "ws-2"))), V5);
    second
        .send_raw(&client_frame(true, opcode::BINARY, &connect))
        .await;
    assert!(matches!(second.recv_packet(V5).await, Packet::ConnAck(_)));
}

// ------------------------------------------------------------------ 6. Bearer JWT

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "brokk";
const KID: &str = "ec-1";

/// The test's identity provider: a P-256 key its JWKS publishes, and one it does
/// not (as in identity_tokens.rs).
struct Issuer {
    key: EncodingKey,
    stranger: EncodingKey,
    jwks: String,
}

fn issuer() -> &'static Issuer {
    static KEYS: OnceLock<Issuer> = OnceLock::new();
    KEYS.get_or_init(|| {
        let encoding = |pair: &rcgen::KeyPair| {
            EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("a P-256 key")
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let point = key.public_key_raw();
        assert_eq!(point.len(), 65, "an uncompressed P-256 point");
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "kid": KID,
            "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Issuer {
            key: encoding(&key),
            stranger: encoding(&stranger),
            jwks: json!({ "keys": [jwk] }).to_string(),
        }
    })
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// An ES256 token for `name` signed by `key`, expiring at `exp`.
fn token(key: &EncodingKey, name: &str, exp: u64) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KID.to_owned());
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": name,
        "exp": exp,
        "iat": unix_secs(),
    });
    jsonwebtoken::encode(&header, &claims, key).expect("the token is signed")
}

#[tokio::test]
async fn a_bearer_jwt_publishes_and_a_bad_one_gets_401() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("jwks.json"), &issuer().jwks).expect("jwks.json");
    let text = format!(
        "[authentication.jwt]\n\
         issuer = \"{ISSUER}\"\n\
         audience = \"{AUDIENCE}\"\n\
         jwks_file = \"jwks.json\"\n\
         name_claim = \"sub\"\n\
         leeway_secs = 0\n"
    );
    let server = start_with_policy(&[ListenerKind::Mqtt, ListenerKind::Http], dir.path(), &text);
    let (mqtt, http) = (
        server.addr(ListenerKind::Mqtt),
        server.addr(ListenerKind::Http),
    );
    // The subscriber logs in with a token too (MQTT 5.0 enhanced authentication).
    let mut connect = connect_packet(V5, "jwt-watcher");
    connect.properties.authentication_method =
        Some(MqttString::copy_from_str("CUSTOM-JWT").expect("a method"));
    connect.properties.authentication_data = Some(Bytes::from(token(
        &issuer().key,
        "watcher",
        unix_secs() + 3600,
    )));
    let (client, ack) = RawClient::connect_with(mqtt, connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    let mut sub = subscribed(client, "jwt/#").await;

    let url = messages_url(http, "topic=jwt/ok");
    let good = token(&issuer().key, "device-7", unix_secs() + 3600);
    let reply = post(
        &url,
        b"with a token",
        &["-H", &format!("Authorization: Bearer {good}")],
    )
    .await;
    assert_published("a valid bearer token", &reply);
    let got = expect_message(&mut sub, "jwt/ok").await;
    assert_eq!(&got.payload[..], b"with a token");

    let stranger = token(&issuer().stranger, "device-7", unix_secs() + 3600);
    let expired = token(&issuer().key, "device-7", unix_secs() - 600);
    for (what, header) in [
        (
            "signed by an unknown key",
            format!("Authorization: Bearer {stranger}"),
        ),
        ("expired", format!("Authorization: Bearer {expired}")),
        ("not a JWT", "Authorization: Bearer not.a.token".to_owned()),
        ("empty", "Authorization: Bearer".to_owned()),
    ] {
        let reply = post(&url, what.as_bytes(), &["-H", &header]).await;
        assert_refused(&format!("a bearer token {what}"), &reply, 401);
        assert!(
            reply.header("www-authenticate").is_some(),
            "{what}: {reply:?}"
        );
    }
    // No credentials at all: only tokens are accepted here.
    let reply = post(&url, b"anonymous", &[]).await;
    assert_refused("no credentials", &reply, 401);

    // None of the refused ones was published: the next message is this marker.
    let reply = post(
        &messages_url(http, "topic=jwt/marker"),
        b"marker",
        &["-H", &format!("Authorization: Bearer {good}")],
    )
    .await;
    assert_published("the marker", &reply);
    expect_message(&mut sub, "jwt/marker").await;
}
