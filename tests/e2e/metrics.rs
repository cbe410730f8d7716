//! Scenario: `GET /metrics` on the operations listener after known traffic, as a
//! Prometheus server would see it. The broker runs in this process on the runtime
//! `BROKK_RUNTIME` names; `curl` scrapes it and Python's `prometheus_client`
//! (its OpenMetrics parser, `text_string_to_metric_families`) parses what it
//! serves. Both are required: a missing one fails the test with the install hint.
//!
//! The parser enforces the format (`# EOF`, a TYPE before the samples, names and
//! suffixes that fit the type); on top of that every family must have HELP and a
//! type. The values asserted are the ones the traffic made: connections open,
//! PUBLISH packets by QoS, deliveries, a retained message, a refused login, a
//! publish the permission bindings denied, sessions and subscriptions, HTTP
//! requests served. A second scrape after more traffic shows the counters moved by
//! exactly that much.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use adapter_common::config::{Config, ListenerKind};
use adapter_common::passwd::{HashScheme, PasswordFile};
use brokk_e2e::process::{assert_success, require, run, INSTALL_HINT};
use brokk_e2e::raw::{connect_packet, publish_packet, RawClient};
use brokk_e2e::rumqtt::{Client, ClientOptions};
use brokk_e2e::{within, RunningServer, Setup};
use bytes::Bytes;
use mqtt_proto::{MqttString, Packet, ProtocolVersion, QoS, ReasonCode};
use serde_json::Value;
use tokio::process::Command;

const V5: ProtocolVersion = ProtocolVersion::V5;
const TOOL_LIMIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "metrics-pw";

/// Parses OpenMetrics text (the file named by argv[1]) with prometheus_client and
/// prints the families as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = open(sys.argv[1], encoding="utf-8").read()
families = []
for f in text_string_to_metric_families(text):
    families.append({
        "name": f.name,
        "type": f.type,
        "help": f.documentation,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples],
    })
print(json.dumps(families))
"#;

/// The Python interpreter (`PYTHON` or `python3`), after checking
/// prometheus_client's OpenMetrics parser imports in it.
async fn require_python_prometheus() -> PathBuf {
    let name = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let python = if name.contains('/') {
        PathBuf::from(name)
    } else {
        require(&name)
    };
    let mut check = Command::new(&python);
    check.args([
        "-c",
        "from prometheus_client.openmetrics.parser import text_string_to_metric_families",
    ]);
    let out = run(check, TOOL_LIMIT).await;
    assert!(
        out.status.success(),
        "prometheus_client is not importable by {}: {INSTALL_HINT}\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// One scrape, parsed.
struct Scrape {
    text: String,
    families: Vec<Value>,
}

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`; fails the
    /// test if there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in the scrape:\n{}", self.text))
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.families
            .iter()
            .flat_map(|f| f["samples"].as_array().into_iter().flatten())
            .find(|s| {
                let got: BTreeMap<&str, &str> = s["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                s["name"] == name && got == want
            })
            .map(|s| s["value"].as_f64().expect("a numeric value"))
    }

    /// Every sample of `name`, labels as `k=v` joined with commas.
    fn samples(&self, name: &str) -> BTreeMap<String, f64> {
        self.families
            .iter()
            .flat_map(|f| f["samples"].as_array().into_iter().flatten())
            .filter(|s| s["name"] == name)
            .map(|s| {
                let labels = s["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                (labels, s["value"].as_f64().expect("a numeric value"))
            })
            .collect()
    }
}

/// `GET /metrics` with curl, checked and parsed.
async fn scrape(http: SocketAddr, python: &PathBuf) -> Scrape {
    let curl = require("curl");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (body, headers) = (dir.path().join("body"), dir.path().join("headers"));
    let mut command = Command::new(curl);
    command
        .args(["--silent", "--show-error", "--fail", "--max-time", "20"])
        .arg("--output")
        .arg(&body)
        .arg("--dump-header")
        .arg(&headers)
        .arg(format!("http://{http}/metrics"));
    let out = run(command, TOOL_LIMIT).await;
    assert_success("curl GET /metrics", &out);
    let headers = std::fs::read_to_string(&headers).expect("the response headers");
    let content_type = headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| panic!("GET /metrics: no Content-Type in\n{headers}"));
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "GET /metrics serves OpenMetrics text: {content_type}"
    );
    let text = std::fs::read_to_string(&body).expect("the scrape is UTF-8");

    let mut parse = Command::new(python);
    parse.arg("-c").arg(PARSE).arg(&body);
    let out = run(parse, TOOL_LIMIT).await;
    assert!(
        out.status.success(),
        "prometheus_client's OpenMetrics parser rejects the scrape:\n{}\n--- scrape\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    assert!(!families.is_empty(), "an empty scrape:\n{text}");
    for f in &families {
        let name = f["name"].as_str().unwrap_or("");
        assert!(
            name.starts_with("brokk_"),
            "{name}: every family has the brokk_ prefix"
        );
        assert!(
            f["help"].as_str().is_some_and(|h| !h.trim().is_empty()),
            "{name} has no HELP:\n{text}"
        );
        assert!(
            matches!(f["type"].as_str(), Some("counter" | "gauge")),
            "{name} has no TYPE (or an unexpected one: {}):\n{text}",
            f["type"]
        );
    }
    Scrape { text, families }
}

/// Scrapes until `ready` holds (gauges follow closed connections a moment later);
/// fails the test after the usual timeout.
async fn scrape_until(
    http: SocketAddr,
    python: &PathBuf,
    what: &str,
    ready: impl Fn(&Scrape) -> bool,
) -> Scrape {
    within(what, async {
        loop {
            let s = scrape(http, python).await;
            if ready(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The policy: everyone may publish and subscribe under `open/`, nothing else.
const POLICY: &str = r#"
password_file = "passwords"

[authorization]
mode = "bindings"

[[client_group]]
name = "everyone"
query = "$all"

[[topic_space]]
name = "open"
templates = ["open/#"]

[[permission_binding]]
name = "everyone-publish-open"
client_group = "everyone"
topic_space = "open"
permission = "publisher"

[[permission_binding]]
name = "everyone-subscribe-open"
client_group = "everyone"
topic_space = "open"
permission = "subscriber"
"#;

const USERS: [&str; 5] = ["publisher", "watcher", "idle-1", "idle-2", "denied"];

fn start(dir: &std::path::Path) -> RunningServer {
    let mut file = PasswordFile::new();
    for user in USERS {
        // Mosquitto's PBKDF2 form: cheap to verify in a debug build.
        file.set_password_with(user, PASSWORD.as_bytes(), HashScheme::Pbkdf2Sha512)
            .expect("a valid user and password");
    }
    file.write(&dir.join("passwords"))
        .expect("the password file");
    let path = dir.join("brokk.toml");
    std::fs::write(&path, POLICY).expect("brokk.toml");
    let parsed = Config::parse(&path, POLICY).unwrap_or_else(|e| panic!("{e}"));
    let mut setup = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Http]);
    let config = setup.config_mut();
    config.identity = parsed.identity;
    config.authorization = parsed.authorization;
    config.password_file = parsed.password_file;
    config.allow_anonymous = Some(false);
    setup.start()
}

fn options(user: &str) -> ClientOptions {
    ClientOptions::new(V5, ListenerKind::Mqtt, user).credentials(user, PASSWORD)
}

fn login(client_id: &str, user: &str, password: &str) -> mqtt_proto::Connect {
    let mut connect = connect_packet(V5, client_id);
    connect.username = Some(MqttString::copy_from_str(user).expect("a valid user name"));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

#[tokio::test]
async fn a_scrape_reports_the_traffic_it_followed_in_openmetrics_text() {
    const N: usize = 6; // QoS 0 publishes, the last one retained
    const M: usize = 4; // QoS 1 publishes
    let python = require_python_prometheus().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = start(dir.path());
    let (mqtt, http) = (
        server.addr(ListenerKind::Mqtt),
        server.addr(ListenerKind::Http),
    );

    // Before any traffic: the families are there, at zero.
    let empty = scrape(http, &python).await;
    assert_eq!(empty.value("brokk_mqtt_connections", &[]), 0.0);
    assert_eq!(empty.value("brokk_connections_accepted_total", &[]), 0.0);
    assert_eq!(
        empty.value("brokk_mqtt_published_messages_total", &[("qos", "0")]),
        0.0
    );

    // K connections: a watcher, a publisher, two idle clients and the client whose
    // publish is denied.
    let (mut watcher, _) = Client::connect(&server, options("watcher")).await;
    watcher.subscribe("open/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = Client::connect(&server, options("publisher")).await;
    let (idle_1, _) = Client::connect(&server, options("idle-1")).await;
    let (idle_2, _) = Client::connect(&server, options("idle-2")).await;
    let (mut denied, ack) =
        RawClient::connect_with(mqtt, login("denied", "denied", PASSWORD)).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    const K: f64 = 5.0;

    // A refused login (wrong password): CONNACK 0x86, the broker closes the
    // connection, and so does the client (until it does, the broker's end lingers
    // and still counts as open).
    let (mut refused, ack) =
        RawClient::connect_with(mqtt, login("refused", "watcher", "wrong")).await;
    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
    refused.expect_closed(brokk_e2e::TIMEOUT).await;
    drop(refused);

    // N QoS 0 (the last retained) and M QoS 1, all delivered to the watcher.
    for i in 0..N {
        let retain = i == N - 1;
        let topic = if retain { "open/retained" } else { "open/q0" };
        publisher
            .publish(topic, format!("q0 {i}").as_bytes(), QoS::AtMostOnce, retain)
            .await;
    }
    for i in 0..M {
        publisher
            .publish(
                "open/q1",
                format!("q1 {i}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    for _ in 0..N + M {
        watcher.recv().await;
    }

    // A QoS 2 publish outside the bindings: PUBREC 0x87.
    let id = denied.packet_id();
    let publish = publish_packet("closed/door", b"no", QoS::ExactlyOnce, false, Some(id));
    denied.send(&Packet::Publish(publish)).await;
    match denied.recv().await {
        Packet::PubRec(a) => assert_eq!(a.reason_code, ReasonCode::NotAuthorized, "{a:?}"),
        other => panic!("expected PUBREC 0x87, got {other:?}"),
    }

    // The refused connection is gone once the gauge says K.
    let first = scrape_until(http, &python, "brokk_mqtt_connections to be K", |s| {
        s.find("brokk_mqtt_connections", &[]) == Some(K)
    })
    .await;
    let received =
        |s: &Scrape, qos: &str| s.value("brokk_mqtt_published_messages_total", &[("qos", qos)]);
    assert_eq!(received(&first, "0"), N as f64, "QoS 0 PUBLISH packets");
    assert_eq!(received(&first, "1"), M as f64, "QoS 1 PUBLISH packets");
    // Every PUBLISH packet received counts, the refused one too.
    assert_eq!(received(&first, "2"), 1.0, "QoS 2 PUBLISH packets");
    assert_eq!(
        first.value(
            "brokk_mqtt_failed_published_messages_total",
            &[("reason", "not_authorized")]
        ),
        1.0
    );
    assert_eq!(
        first.value(
            "brokk_dropped_messages_total",
            &[("cause", "not_authorized")]
        ),
        1.0
    );
    assert_eq!(
        first.value("brokk_mqtt_delivered_messages_total", &[]),
        (N + M) as f64
    );
    assert_eq!(first.value("brokk_retained_messages", &[]), 1.0);
    assert!(first.value("brokk_retained_bytes", &[]) > 0.0);
    assert_eq!(first.value("brokk_sessions", &[]), K);
    assert_eq!(first.value("brokk_sessions_offline", &[]), 0.0);
    assert_eq!(first.value("brokk_subscriptions", &[]), 1.0);
    let accepted = first.value("brokk_connections_accepted_total", &[]);
    assert!(
        accepted >= K + 1.0,
        "K connections and the refused one were accepted: {accepted}"
    );
    let connects = first.samples("brokk_mqtt_connects_total");
    assert_eq!(
        connects.get("result=success"),
        Some(&K),
        "one successful login per connection: {connects:?}"
    );
    let failures: Vec<(&String, &f64)> = connects
        .iter()
        .filter(|(labels, _)| *labels != "result=success")
        .collect();
    assert_eq!(
        failures.len(),
        1,
        "one failure label, for the refused login: {connects:?}"
    );
    let (label, count) = failures[0];
    assert_eq!(*count, 1.0, "{connects:?}");
    assert!(
        label.contains("0x86") || label.to_ascii_lowercase().contains("password"),
        "the failure is labelled as a bad user name or password: {label}"
    );
    for cause in [
        "slow_consumer_qos0",
        "online_queue_full",
        "offline_queue_full",
        "too_large_for_receiver",
        "expired",
        "store_failure",
    ] {
        assert_eq!(
            first.value("brokk_dropped_messages_total", &[("cause", cause)]),
            0.0,
            "nothing was dropped for {cause}"
        );
    }
    assert!(
        first
            .samples("brokk_connections_closed_total")
            .values()
            .sum::<f64>()
            >= 1.0,
        "the refused connection was closed: {:?}",
        first.samples("brokk_connections_closed_total")
    );
    // The scrapes before this one were counted (this one is not yet: it is
    // counted once answered).
    let scrapes = first.value(
        "brokk_http_requests_total",
        &[("endpoint", "/metrics"), ("status", "200")],
    );
    assert!(scrapes >= 1.0, "earlier scrapes: {scrapes}");

    // More traffic: 3 QoS 0, 2 QoS 1, one idle client leaves, one new one comes.
    for i in 0..3 {
        publisher
            .publish(
                "open/more",
                format!("{i}").as_bytes(),
                QoS::AtMostOnce,
                false,
            )
            .await;
    }
    for i in 0..2 {
        publisher
            .publish(
                "open/more",
                format!("{i}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    for _ in 0..5 {
        watcher.recv().await;
    }
    idle_1.disconnect().await;
    let (late, _) = Client::connect(&server, options("idle-1")).await;
    let health = {
        let mut c = Command::new(require("curl"));
        c.args(["--silent", "--fail", "--max-time", "20"])
            .arg(format!("http://{http}/healthz"));
        run(c, TOOL_LIMIT).await
    };
    assert_success("curl GET /healthz", &health);

    let second = scrape_until(http, &python, "the left client to be gone", |s| {
        s.find("brokk_mqtt_connections", &[]) == Some(K) && s.find("brokk_sessions", &[]) == Some(K)
    })
    .await;
    assert_eq!(received(&second, "0"), received(&first, "0") + 3.0);
    assert_eq!(received(&second, "1"), received(&first, "1") + 2.0);
    assert_eq!(received(&second, "2"), received(&first, "2"));
    assert_eq!(
        second.value("brokk_mqtt_delivered_messages_total", &[]),
        first.value("brokk_mqtt_delivered_messages_total", &[]) + 5.0
    );
    assert!(
        second.value("brokk_connections_accepted_total", &[]) >= accepted + 1.0,
        "the new connection was accepted"
    );
    assert_eq!(
        second
            .samples("brokk_mqtt_connects_total")
            .get("result=success"),
        Some(&(K + 1.0)),
        "one more login"
    );
    assert!(
        second
            .samples("brokk_connections_closed_total")
            .values()
            .sum::<f64>()
            >= first
                .samples("brokk_connections_closed_total")
                .values()
                .sum::<f64>()
                + 1.0,
        "the idle client's connection was closed"
    );
    assert!(
        second.value(
            "brokk_http_requests_total",
            &[("endpoint", "/metrics"), ("status", "200")]
        ) > scrapes,
        "the first scrape was counted"
    );
    assert_eq!(
        second.value(
            "brokk_http_requests_total",
            &[("endpoint", "/healthz"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(second.value("brokk_retained_messages", &[]), 1.0);

    drop((idle_2, late, denied));
}
