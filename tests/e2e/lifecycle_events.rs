//! Lifecycle events end to end: the broker runs in this process on the runtime
//! `BROKK_RUNTIME` names, configured from TOML with `[lifecycle_events]`, and a
//! webhook the test runs on loopback (a plain `TcpListener` thread that reads
//! POSTs and answers each with the status the scenario wants).
//!
//! What is asserted is what a consumer sees: the CloudEvents JSON a rumqttc
//! subscriber on `$events/clients/+/connected` and `.../disconnected` receives for
//! other clients connecting and ending (DISCONNECT, a killed socket, a takeover,
//! a keep-alive timeout), the same events POSTed to the webhook with
//! `Content-Type: application/cloudevents+json`, nothing for a subscriber on `#`,
//! SUBACK 0x87 for a client without a binding for `$events/...` and events for one
//! with it, a webhook answering 500 twice getting the event on the third try, and
//! a dead webhook slowing nothing while its events are counted dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adapter_common::config::{Config, ListenerKind};
use brokk_e2e::raw::{connect_packet, Next, RawClient};
use brokk_e2e::rumqtt::{Client, ClientOptions};
use brokk_e2e::{within, RunningServer, Runtime, TIMEOUT};
use mqtt_proto::{MqttString, ProtocolVersion, QoS, ReasonCode};
use serde_json::Value;

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

const CONNECTED: &str = "Microsoft.EventGrid.MQTTClientSessionConnected";
const DISCONNECTED: &str = "Microsoft.EventGrid.MQTTClientSessionDisconnected";

// ------------------------------------------------------------------ the webhook

/// One POST the webhook received.
#[derive(Debug, Clone)]
struct Post {
    content_type: String,
    event: Value,
}

/// A webhook on loopback: answers the n-th request with the n-th status of its
/// script (200 once the script is used up) and reports every request.
struct Webhook {
    url: String,
    posts: Receiver<Post>,
}

impl Webhook {
    fn start(script: &[u16]) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!("http://{}/events", listener.local_addr().expect("bound"));
        let (tx, posts) = channel();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (tx, script) = (tx.clone(), script.clone());
                std::thread::spawn(move || serve(stream, &tx, &script));
            }
        });
        Webhook { url, posts }
    }

    /// The next POST, waiting at most [`TIMEOUT`].
    fn next(&self) -> Post {
        self.posts
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("the webhook got no POST within {TIMEOUT:?}"))
    }

    /// The POSTs of events about `session`, until `n` of them came.
    fn events_about(&self, session: &str, n: usize) -> Vec<Post> {
        let mut got = Vec::new();
        while got.len() < n {
            let post = self.next();
            if post.event["data"]["clientSessionName"] == session {
                got.push(post);
            }
        }
        got
    }
}

/// Reads HTTP/1.1 requests from one connection (kept alive) and answers each.
fn serve(stream: TcpStream, tx: &Sender<Post>, script: &Mutex<VecDeque<u16>>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut content_type) = (0, String::new());
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(200);
        let event = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let _ = tx.send(Post {
            content_type,
            event,
        });
        let answer = format!("HTTP/1.1 {status} Scripted\r\nContent-Length: 0\r\n\r\n");
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A URL nobody listens on: every request is refused at once.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    drop(listener);
    format!("http://{addr}/events")
}

// ------------------------------------------------------------------ the broker

/// The broker in this process, configured by `extra` TOML after a plain
/// listener on port 0, anonymous clients and state in memory.
fn start(extra: &str) -> (RunningServer, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let text = format!(
        "data_dir = \"data\"\npersistence = \"memory\"\nallow_anonymous = true\n\
         [[listener]]\nkind = \"mqtt\"\nbind = \"127.0.0.1:0\"\n{extra}"
    );
    let path = dir.path().join("brokk.toml");
    let config =
        Config::parse(Path::new(&path), &text).unwrap_or_else(|e| panic!("test config: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("test config: {e}"));
    let server = brokk_e2e::start(Runtime::from_env(), config);
    let addr = server.addr(ListenerKind::Mqtt);
    (server, addr, dir)
}

fn lifecycle_toml(webhook_url: Option<&str>, retry_base_ms: u64) -> String {
    let mut text = "[lifecycle_events]\nenabled = true\nnamespace = \"plant-7\"\n".to_owned();
    if let Some(url) = webhook_url {
        text.push_str(&format!(
            "webhook_url = \"{url}\"\nwebhook_retry_base_ms = {retry_base_ms}\n"
        ));
    }
    text
}

/// A rumqttc 5.0 subscriber to every connected and disconnected event.
async fn watcher(server: &RunningServer, id: &str) -> Client {
    let (mut client, _) =
        Client::connect(server, ClientOptions::new(V5, ListenerKind::Mqtt, id)).await;
    client
        .subscribe("$events/clients/+/connected", QoS::AtLeastOnce)
        .await;
    client
        .subscribe("$events/clients/+/disconnected", QoS::AtLeastOnce)
        .await;
    client
}

/// The next event the watcher receives: its topic and JSON.
async fn next_event(watcher: &mut Client) -> (String, Value) {
    let m = watcher.recv().await;
    let json = serde_json::from_slice(&m.payload)
        .unwrap_or_else(|e| panic!("an event on {} is not JSON: {e}", m.topic));
    (m.topic, json)
}

/// Checks an event's CloudEvents envelope and Event Grid data.
fn check(event: &Value, kind: &str, session: &str, auth: Option<&str>) {
    assert_eq!(event["specversion"], "1.0", "{event}");
    assert_eq!(event["type"], kind, "{event}");
    assert_eq!(event["source"], "plant-7", "{event}");
    assert_eq!(event["datacontenttype"], "application/json", "{event}");
    let time = event["time"].as_str().expect("time");
    assert!(
        time.len() == 24 && time.ends_with('Z'),
        "RFC 3339 UTC: {time}"
    );
    assert!(event["id"].as_str().is_some_and(|id| !id.is_empty()));
    let data = &event["data"];
    assert_eq!(data["namespaceName"], "plant-7", "{event}");
    assert_eq!(data["clientSessionName"], session, "{event}");
    match auth {
        Some(name) => {
            assert_eq!(data["clientAuthenticationName"], name, "{event}");
            assert_eq!(
                event["subject"],
                format!("clients/{name}/sessions/{session}")
            );
        }
        None => {
            assert_eq!(data["clientAuthenticationName"], Value::Null, "{event}");
            assert_eq!(event["subject"], format!("sessions/{session}"));
        }
    }
    assert!(data["sequenceNumber"].as_u64().is_some(), "{event}");
}

fn reason(event: &Value) -> &str {
    event["data"]["disconnectionReason"]
        .as_str()
        .unwrap_or_else(|| panic!("no disconnectionReason: {event}"))
}

fn sequence(event: &Value) -> u64 {
    event["data"]["sequenceNumber"]
        .as_u64()
        .expect("a sequence number")
}

// ------------------------------------------------------------------ scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_and_webhook_receive_connects_and_every_kind_of_end() {
    let hook = Webhook::start(&[]);
    let (server, addr, _dir) = start(&lifecycle_toml(Some(&hook.url), 1000));
    // A subscriber to everything sees none of it [MQTT-4.7.2-1].
    let mut everything = RawClient::connect(addr, V5, "everything").await;
    assert_eq!(
        everything.subscribe("#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut watcher = watcher(&server, "watcher").await;
    let mut seen = Vec::new();

    // A client id with a '/' and a DISCONNECT.
    let dev = RawClient::connect(addr, V5, "site/7").await;
    let (topic, event) = next_event(&mut watcher).await;
    assert_eq!(topic, "$events/clients/site%2F7/connected");
    check(&event, CONNECTED, "site/7", None);
    seen.push(event);
    dev.disconnect().await;
    let (topic, event) = next_event(&mut watcher).await;
    assert_eq!(topic, "$events/clients/site%2F7/disconnected");
    check(&event, DISCONNECTED, "site/7", None);
    assert_eq!(reason(&event), "ClientInitiatedDisconnect");
    assert_eq!(event["mqttreasoncode"], 0);
    seen.push(event);

    // A socket that vanishes; a user name is the authentication name.
    let mut connect = connect_packet(V3, "crash");
    connect.username = Some(MqttString::copy_from_str("alice").expect("a name"));
    let (crash, _) = RawClient::connect_with(addr, connect).await;
    let (_, event) = next_event(&mut watcher).await;
    check(&event, CONNECTED, "crash", Some("alice"));
    seen.push(event);
    crash.kill();
    let (_, event) = next_event(&mut watcher).await;
    check(&event, DISCONNECTED, "crash", Some("alice"));
    assert_eq!(reason(&event), "ConnectionLost");
    assert!(event.get("mqttreasoncode").is_none(), "{event}");
    seen.push(event);

    // A takeover: the old connection's end comes before the new one's connect.
    let mut first = RawClient::connect(addr, V5, "twin").await;
    let (_, event) = next_event(&mut watcher).await;
    check(&event, CONNECTED, "twin", None);
    seen.push(event);
    let _second = RawClient::connect(addr, V3, "twin").await;
    first
        .expect_disconnect(ReasonCode::SessionTakenOver, TIMEOUT)
        .await;
    let (_, taken) = next_event(&mut watcher).await;
    check(&taken, DISCONNECTED, "twin", None);
    assert_eq!(reason(&taken), "SessionTakenOver");
    assert_eq!(taken["mqttreasoncode"], 0x8E);
    let (_, again) = next_event(&mut watcher).await;
    check(&again, CONNECTED, "twin", None);
    assert!(sequence(&taken) < sequence(&again));
    seen.push(taken);
    seen.push(again);

    // Keep-alive 1 s and silence: ended after 1.5 s.
    let mut connect = connect_packet(V5, "sleepy");
    connect.keep_alive = 1;
    let (mut sleepy, _) = RawClient::connect_with(addr, connect).await;
    let (_, event) = next_event(&mut watcher).await;
    check(&event, CONNECTED, "sleepy", None);
    seen.push(event);
    sleepy
        .expect_disconnect(ReasonCode::KeepAliveTimeout, TIMEOUT)
        .await;
    let (_, event) = next_event(&mut watcher).await;
    check(&event, DISCONNECTED, "sleepy", None);
    assert_eq!(reason(&event), "ConnectionLost");
    assert_eq!(event["mqttreasoncode"], 0x8D);
    seen.push(event);

    // The subscriber on '#' got nothing: the next message it gets is a marker
    // published after all of the above.
    let mut marker = RawClient::connect(addr, V5, "marker").await;
    marker
        .publish("after/events", b"marker", QoS::AtLeastOnce, false)
        .await;
    let next = within("the marker", everything.recv_publish()).await;
    assert_eq!(next.topic.as_str(), "after/events");

    // The webhook got the same events, in the same order, as CloudEvents.
    let mut posted = Vec::new();
    for (session, n) in [("site/7", 2), ("crash", 2), ("twin", 3), ("sleepy", 2)] {
        posted.extend(hook.events_about(session, n));
    }
    for post in &posted {
        assert_eq!(post.content_type, "application/cloudevents+json");
    }
    let posted: Vec<Value> = posted.into_iter().map(|p| p.event).collect();
    assert_eq!(posted, seen);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_decide_who_may_read_lifecycle_events() {
    let policy = r#"
[authorization]
mode = "bindings"

[[client_group]]
name = "monitors"
query = "authenticationName = 'monitor'"

[[client_group]]
name = "everyone"
query = "$all"

[[topic_space]]
name = "lifecycle"
templates = ["$events/clients/+/connected", "$events/clients/+/disconnected"]

[[topic_space]]
name = "work"
templates = ["work/#"]

[[permission_binding]]
name = "monitors-read-lifecycle"
client_group = "monitors"
topic_space = "lifecycle"
permission = "subscriber"

[[permission_binding]]
name = "everyone-subscribes-work"
client_group = "everyone"
topic_space = "work"
permission = "subscriber"
"#;
    let (server, addr, _dir) = start(&format!("{}{policy}", lifecycle_toml(None, 1000)));
    let login = |id: &str, user: &str| {
        let mut c = connect_packet(V5, id);
        c.username = Some(MqttString::copy_from_str(user).expect("a name"));
        c
    };
    // Not a monitor: refused, and '#' reaches no '$' topic anyway.
    let (mut peeker, _) = RawClient::connect_with(addr, login("peeker", "guest")).await;
    assert_eq!(
        peeker
            .subscribe("$events/clients/+/connected", QoS::AtLeastOnce)
            .await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        peeker.subscribe("work/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    // A monitor.
    let (mut monitor, _) = RawClient::connect_with(addr, login("mon-1", "monitor")).await;
    assert_eq!(
        monitor
            .subscribe("$events/clients/+/connected", QoS::AtLeastOnce)
            .await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        monitor
            .subscribe("$events/clients/+/disconnected", QoS::AtMostOnce)
            .await,
        ReasonCode::Success
    );
    let (dev, _) = RawClient::connect_with(addr, login("dev-7", "dev")).await;
    let p = within("the connected event", monitor.recv_publish()).await;
    assert_eq!(p.topic.as_str(), "$events/clients/dev-7/connected");
    let event: Value = serde_json::from_slice(&p.payload).expect("JSON");
    check(&event, CONNECTED, "dev-7", Some("dev"));
    assert_eq!(
        p.properties.content_type.as_ref().map(|c| c.as_str()),
        Some("application/cloudevents+json")
    );
    dev.disconnect().await;
    let p = within("the disconnected event", monitor.recv_publish()).await;
    assert_eq!(p.topic.as_str(), "$events/clients/dev-7/disconnected");
    assert_eq!(p.qos, QoS::AtMostOnce, "as the monitor subscribed");
    let event: Value = serde_json::from_slice(&p.payload).expect("JSON");
    assert_eq!(reason(&event), "ClientInitiatedDisconnect");
    // The peeker got neither (nothing is published on work/..., so anything it
    // received would be an event).
    assert!(
        matches!(
            peeker.next(Duration::from_millis(300)).await,
            Next::TimedOut
        ),
        "the peeker received something"
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_twice_gets_the_event_on_the_third_try() {
    let hook = Webhook::start(&[500, 500]);
    let (server, addr, _dir) = start(&lifecycle_toml(Some(&hook.url), 20));
    let retried = adapter_common::lifecycle::counters().retried();
    let _dev = RawClient::connect(addr, V5, "flaky").await;
    let tries: Vec<Post> = (0..3).map(|_| hook.next()).collect();
    for post in &tries {
        assert_eq!(post.content_type, "application/cloudevents+json");
        check(&post.event, CONNECTED, "flaky", None);
    }
    assert_eq!(tries[0].event, tries[1].event, "the same event, again");
    assert_eq!(tries[1].event, tries[2].event);
    assert!(adapter_common::lifecycle::counters().retried() >= retried + 2);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_slows_nothing_and_its_events_are_dropped_after_the_retries() {
    // Each event is tried four times, 0.4 + 0.8 + 1.6 s apart: 2.8 s each, had
    // the broker's thread waited for the webhook.
    let (server, addr, _dir) = start(&lifecycle_toml(Some(&dead_url()), 400));
    let counters = adapter_common::lifecycle::counters();
    let (dropped, retried) = (counters.dropped_failed(), counters.retried());
    let started = Instant::now();
    let mut a = RawClient::connect(addr, V5, "a").await;
    let mut b = RawClient::connect(addr, V3, "b").await;
    assert_eq!(
        a.subscribe("rt", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    b.publish("rt", b"ping", QoS::AtLeastOnce, false).await;
    assert_eq!(&a.recv_publish().await.payload[..], b"ping");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "two connects and a round trip took {took:?} while the webhook was down"
    );
    // Both connected events are dropped once their retries are spent.
    within("the dead webhook's events to be dropped", async {
        while counters.dropped_failed() < dropped + 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        counters.retried() >= retried + 6,
        "{:?}",
        counters.outcomes()
    );
    server.shutdown();
}
