//! Scenario: MQTT 5.0 features end to end, through the real server on the runtime
//! `BROKK_RUNTIME` names and a real 5.0 client (rumqttc's v5 client where it exposes
//! the feature; the raw client where a test must see or send exact packets): topic
//! aliases both ways, flow control, request/response, shared subscriptions, several
//! sessions per authentication name (Event Grid), and properties forwarded unchanged.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU16;
use std::time::Duration;

use adapter_common::config::{Limits, ListenerKind};
use brokk_e2e::raw::{self, Next, RawClient};
use brokk_e2e::{within, RunningServer, Setup, TIMEOUT};
use bytes::Bytes;
use mqtt_proto::{
    MqttString, Packet, PayloadFormat, ProtocolVersion, PubAck, Publish, QoS, ReasonCode,
    TopicName, UserProperties,
};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use rumqttc::Outgoing;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// How long a test waits to be sure a packet does NOT come.
const QUIET: Duration = Duration::from_millis(500);

fn server_with(change: impl FnOnce(&mut Limits)) -> RunningServer {
    Setup::new(&[ListenerKind::Mqtt]).limits(change).start()
}

fn server() -> RunningServer {
    server_with(|_| {})
}

// ------------------------------------------------------------------ rumqttc v5

/// rumqttc's 5.0 client, polled until what a test waits for happens. Unlike the
/// suite's `rumqtt::Client` it keeps whole packets, with their properties, and
/// hands back the CONNACK.
struct V5Client {
    name: String,
    client: AsyncClient,
    events: EventLoop,
    received: VecDeque<p5::Publish>,
}

fn options(server: &RunningServer, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", server.port(ListenerKind::Mqtt));
    o.set_keep_alive(Duration::from_secs(60));
    o.set_connection_timeout(TIMEOUT.as_secs());
    o
}

fn q5(qos: QoS) -> Q5 {
    match qos {
        QoS::AtMostOnce => Q5::AtMostOnce,
        QoS::AtLeastOnce => Q5::AtLeastOnce,
        QoS::ExactlyOnce => Q5::ExactlyOnce,
    }
}

fn topic_of(p: &p5::Publish) -> &str {
    std::str::from_utf8(&p.topic).expect("a UTF-8 topic")
}

fn props_of(p: &p5::Publish) -> p5::PublishProperties {
    p.properties.clone().unwrap_or_default()
}

impl V5Client {
    /// Connects with the options `configure` leaves and returns the CONNACK, failing
    /// the test if the broker refuses.
    async fn connect(
        server: &RunningServer,
        client_id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> (V5Client, p5::ConnAck) {
        match V5Client::try_connect(server, client_id, configure).await {
            Ok(connected) => connected,
            Err(code) => panic!("{client_id}: CONNACK refused the connection: {code:?}"),
        }
    }

    /// Connects and returns the CONNACK's refusal; fails the test if the broker
    /// accepts the connection.
    async fn refused(
        server: &RunningServer,
        client_id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> p5::ConnectReturnCode {
        match V5Client::try_connect(server, client_id, configure).await {
            Ok((_, ack)) => panic!("{client_id}: the broker accepted the connection: {ack:?}"),
            Err(code) => code,
        }
    }

    /// Connects; the client and CONNACK, or the CONNACK's refusal.
    async fn try_connect(
        server: &RunningServer,
        client_id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> Result<(V5Client, p5::ConnAck), p5::ConnectReturnCode> {
        let mut o = options(server, client_id);
        configure(&mut o);
        let (client, mut events) = AsyncClient::new(o, 64);
        let ack = within(&format!("{client_id}: CONNACK"), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(p5::Packet::ConnAck(ack))) => return Ok(ack),
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                    Err(e) => panic!("{client_id}: expected CONNACK, got {e:?}"),
                }
            }
        })
        .await?;
        let client = V5Client {
            name: format!("{client_id} (rumqttc v5)"),
            client,
            events,
            received: VecDeque::new(),
        };
        Ok((client, ack))
    }

    /// One event; a PUBLISH is also kept for [`V5Client::recv`]. A DISCONNECT from
    /// the broker or a connection error fails the test.
    async fn poll(&mut self) -> Event {
        match self.events.poll().await {
            Ok(event) => {
                if let Event::Incoming(p5::Packet::Publish(p)) = &event {
                    self.received.push_back(p.clone());
                }
                event
            }
            Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code,
                reason_string,
            })) => panic!(
                "{}: the broker sent DISCONNECT {reason_code:?} ({reason_string:?})",
                self.name
            ),
            Err(e) => panic!("{}: connection error: {e:?}", self.name),
        }
    }

    async fn poll_until<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let label = format!("{}: {what}", self.name);
        within(&label, async {
            loop {
                let event = self.poll().await;
                if let Some(t) = pick(&event) {
                    return t;
                }
            }
        })
        .await
    }

    /// Subscribes and asserts the broker granted `qos`.
    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client
            .subscribe(filter, q5(qos))
            .await
            .unwrap_or_else(|e| panic!("{}: subscribe {filter}: {e}", self.name));
        let codes = self
            .poll_until(&format!("SUBACK for {filter}"), |e| match e {
                Event::Incoming(p5::Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            codes,
            [p5::SubscribeReasonCode::Success(q5(qos))],
            "{}: SUBACK for {filter}",
            self.name
        );
    }

    /// Publishes at QoS 0 or 1 and waits until it is on the wire (0) or
    /// acknowledged with a success code (1).
    async fn publish_with(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: p5::PublishProperties,
    ) {
        assert_ne!(qos, QoS::ExactlyOnce, "not needed here");
        self.client
            .publish_with_properties(
                topic,
                q5(qos),
                retain,
                Bytes::copy_from_slice(payload),
                properties,
            )
            .await
            .unwrap_or_else(|e| panic!("{}: publish to {topic:?}: {e}", self.name));
        let name = self.name.clone();
        self.poll_until(&format!("publish to {topic:?}"), |e| match (qos, e) {
            (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_))) => Some(()),
            (QoS::AtLeastOnce, Event::Incoming(p5::Packet::PubAck(ack))) => {
                assert!(
                    matches!(
                        ack.reason,
                        p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers
                    ),
                    "{name}: PUBACK {ack:?}"
                );
                Some(())
            }
            _ => None,
        })
        .await;
    }

    async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS) {
        self.publish_with(topic, payload, qos, false, Default::default())
            .await;
    }

    /// The next PUBLISH within [`TIMEOUT`].
    async fn recv(&mut self) -> p5::Publish {
        match self.try_recv(TIMEOUT).await {
            Some(p) => p,
            None => panic!("{}: no PUBLISH within {TIMEOUT:?}", self.name),
        }
    }

    /// The next PUBLISH, or `None` if none arrives within `limit`.
    async fn try_recv(&mut self, limit: Duration) -> Option<p5::Publish> {
        let _ = tokio::time::timeout(limit, async {
            while self.received.is_empty() {
                self.poll().await;
            }
        })
        .await;
        self.received.pop_front()
    }

    /// Sends DISCONNECT (normal) and lets the event loop flush it.
    async fn disconnect(mut self) {
        self.client
            .disconnect()
            .await
            .unwrap_or_else(|e| panic!("{}: disconnect: {e}", self.name));
        self.poll_until("DISCONNECT sent", |e| {
            matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.events.poll()).await;
    }
}

// ------------------------------------------------------------------ raw helpers

fn user_properties(pairs: &[(&str, &str)]) -> UserProperties {
    UserProperties::from_pairs(pairs.iter().copied()).expect("valid UTF-8")
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A raw 5.0 connection whose CONNECT `configure` has shaped; the CONNACK must be
/// a success.
async fn raw_connect(
    server: &RunningServer,
    client_id: &str,
    configure: impl FnOnce(&mut mqtt_proto::Connect),
) -> (RawClient, mqtt_proto::ConnAck) {
    let mut connect = raw::connect_packet(V5, client_id);
    configure(&mut connect);
    let (client, ack) = RawClient::connect_with(server.addr(ListenerKind::Mqtt), connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{client_id}: {ack:?}");
    (client, ack)
}

/// A QoS 0 PUBLISH with a topic alias; an empty `topic` uses the alias alone.
fn aliased(topic: &str, alias: u16, payload: &[u8]) -> Packet {
    let mut p = raw::publish_packet("placeholder", payload, QoS::AtMostOnce, false, None);
    p.topic = if topic.is_empty() {
        TopicName::default()
    } else {
        TopicName::copy_from_str(topic).expect("a valid topic")
    };
    p.properties.topic_alias = NonZeroU16::new(alias);
    Packet::Publish(p)
}

/// The next packet, which must be a PUBLISH; not acknowledged.
async fn raw_publish(client: &mut RawClient) -> Publish {
    match client.recv().await {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Asserts nothing arrives within [`QUIET`].
async fn raw_silent(client: &mut RawClient, why: &str) {
    match client.next(QUIET).await {
        Next::TimedOut => {}
        Next::Packet(p, _) => panic!("{why}: unexpected {p:?}"),
        Next::Closed => panic!("{why}: the broker closed the connection"),
    }
}

/// Asserts the broker sends DISCONNECT with `code` and closes the connection.
async fn expect_disconnect(client: &mut RawClient, code: ReasonCode) {
    match client.expect_closed(TIMEOUT).await.as_slice() {
        [Packet::Disconnect(d)] => {
            assert_eq!(d.reason_code, code, "{d:?}");
            let reason = d.properties.reason_string.as_ref().map(|s| s.as_str());
            assert!(
                reason.is_some_and(|s| !s.is_empty()),
                "DISCONNECT {code} carries a reason string: {d:?}"
            );
        }
        other => panic!("expected DISCONNECT {code} then close, got {other:?}"),
    }
}

// ------------------------------------------------------------------ 1. topic aliases

#[tokio::test]
async fn client_topic_aliases_set_once_then_used_alone_reach_subscribers_on_the_right_topic() {
    let server = server();
    let mut sub = V5Client::connect(&server, "alias-in-sub", |_| {}).await.0;
    sub.subscribe("alias/#", QoS::AtLeastOnce).await;
    let (mut publisher, ack) = V5Client::connect(&server, "alias-in-pub", |_| {}).await;
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.topic_alias_max, Some(10), "the default maximum");

    // rumqttc sends what it is given: topic + alias sets the alias, an empty topic
    // with an alias uses it [MQTT-3.3.2-12]; an alias may be given a new topic.
    let with_alias = |alias| p5::PublishProperties {
        topic_alias: Some(alias),
        ..Default::default()
    };
    let sent = [
        ("alias/one", 1, "1"),
        ("alias/two", 2, "2"),
        ("", 1, "3"),
        ("", 2, "4"),
        ("", 1, "5"),
        ("alias/three", 1, "6"),
        ("", 1, "7"),
    ];
    for (topic, alias, payload) in sent {
        publisher
            .publish_with(
                topic,
                payload.as_bytes(),
                QoS::AtLeastOnce,
                false,
                with_alias(alias),
            )
            .await;
    }
    let want = [
        ("alias/one", "1"),
        ("alias/two", "2"),
        ("alias/one", "3"),
        ("alias/two", "4"),
        ("alias/one", "5"),
        ("alias/three", "6"),
        ("alias/three", "7"),
    ];
    for (topic, payload) in want {
        let got = sub.recv().await;
        assert_eq!(
            (topic_of(&got), &got.payload[..]),
            (topic, payload.as_bytes())
        );
        // The subscriber set no Topic Alias Maximum: no alias towards it
        // [MQTT-3.3.2-11], and the publisher's alias is not forwarded.
        assert_eq!(props_of(&got).topic_alias, None, "{got:?}");
    }
    assert_eq!(sub.try_recv(QUIET).await, None);
}

#[tokio::test]
async fn broker_assigns_topic_aliases_to_a_subscriber_that_sets_a_topic_alias_maximum() {
    let server = server();
    let (mut sub, _) = raw_connect(&server, "alias-out-sub", |c| {
        c.properties.topic_alias_maximum = Some(2)
    })
    .await;
    assert_eq!(
        sub.subscribe("out/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut publisher = V5Client::connect(&server, "alias-out-pub", |_| {}).await.0;
    let sent = [
        "out/a", "out/b", "out/a", "out/c", "out/b", "out/a", "out/a",
    ];
    for (i, topic) in sent.iter().enumerate() {
        publisher
            .publish(topic, i.to_string().as_bytes(), QoS::AtLeastOnce)
            .await;
    }

    // The client's side of the alias table: what each PUBLISH resolves to. (The raw
    // client, because rumqttc reports an incoming PUBLISH before it resolves the
    // alias: its event shows the empty topic.)
    let mut table: HashMap<u16, String> = HashMap::new();
    let mut first_alias: HashMap<&str, u16> = HashMap::new();
    for (i, topic) in sent.iter().enumerate() {
        let got = sub.recv_publish().await;
        assert_eq!(&got.payload[..], i.to_string().as_bytes(), "in order");
        let alias = got.properties.topic_alias.map(NonZeroU16::get);
        if let Some(a) = alias {
            assert!(
                a <= 2,
                "alias {a} above the client's maximum of 2 [MQTT-3.3.2-8]"
            );
        }
        let resolved = match (got.topic.as_str(), alias) {
            ("", Some(a)) => table
                .get(&a)
                .unwrap_or_else(|| panic!("message {i}: alias {a} used before it was set"))
                .clone(),
            ("", None) => panic!("message {i}: empty topic without an alias"),
            (t, Some(a)) => {
                table.insert(a, t.to_owned());
                t.to_owned()
            }
            (t, None) => t.to_owned(),
        };
        assert_eq!(resolved, *topic, "message {i}: {got:?}");

        // The first two topics take the two aliases: topic + alias the first time,
        // then the empty topic and the same alias.
        if matches!(*topic, "out/a" | "out/b") {
            let a = alias.unwrap_or_else(|| panic!("message {i} to {topic} has no alias"));
            match first_alias.get(topic) {
                None => {
                    assert_eq!(got.topic.as_str(), *topic, "message {i} sets the alias");
                    first_alias.insert(topic, a);
                }
                Some(&set) => {
                    assert_eq!(got.topic.as_str(), "", "message {i} uses the alias alone");
                    assert_eq!(a, set, "message {i}: the same alias");
                }
            }
        }
    }
    assert_ne!(first_alias["out/a"], first_alias["out/b"]);
    raw_silent(&mut sub, "after the last message").await;
}

#[tokio::test]
async fn topic_alias_above_the_servers_maximum_is_disconnect_0x94() {
    let server = server_with(|l| l.topic_alias_maximum = Some(3));
    let mut sub = V5Client::connect(&server, "alias-max-sub", |_| {}).await.0;
    sub.subscribe("max/#", QoS::AtMostOnce).await;

    let (mut publisher, ack) = raw_connect(&server, "alias-max-pub", |_| {}).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(3));
    // Up to the maximum is fine.
    publisher.send(&aliased("max/three", 3, b"ok")).await;
    publisher.send(&aliased("", 3, b"again")).await;
    for payload in ["ok", "again"] {
        let got = sub.recv().await;
        assert_eq!(
            (topic_of(&got), &got.payload[..]),
            ("max/three", payload.as_bytes())
        );
    }
    // One above: DISCONNECT 0x94 Topic Alias Invalid [MQTT-3.3.2-9].
    publisher.send(&aliased("max/four", 4, b"refused")).await;
    expect_disconnect(&mut publisher, ReasonCode::TopicAliasInvalid).await;

    // Alias 0 is never valid [MQTT-3.3.2-8]. 0x94 is defined for an alias above
    // the maximum; brokk (mqtt-proto's decoder) treats 0 as a Protocol Error, 0x82.
    // mqtt-proto cannot encode it, so by hand: PUBLISH QoS 0, topic "max/z",
    // properties {0x23: 0}, payload "x".
    let (mut zero, _) = raw_connect(&server, "alias-zero-pub", |_| {}).await;
    zero.send_bytes(&[
        0x30, 0x0c, 0x00, 0x05, b'm', b'a', b'x', b'/', b'z', 0x03, 0x23, 0x00, 0x00, b'x',
    ])
    .await;
    expect_disconnect(&mut zero, ReasonCode::ProtocolError).await;

    // Neither refused message was delivered.
    assert_eq!(sub.try_recv(QUIET).await, None);
}

// ------------------------------------------------------------------ 2. flow control

#[tokio::test]
async fn subscriber_receive_maximum_2_gets_two_qos1_messages_then_one_per_acknowledgement() {
    let server = server_with(|l| l.receive_maximum = NonZeroU16::new(7));
    let (mut sub, ack) = raw_connect(&server, "flow-sub", |c| {
        c.properties.receive_maximum = NonZeroU16::new(2)
    })
    .await;
    // The CONNACK advertises the server's own Receive Maximum.
    assert_eq!(ack.properties.receive_maximum, NonZeroU16::new(7));
    assert_eq!(
        sub.subscribe("flow/t", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let (mut publisher, ack) = V5Client::connect(&server, "flow-pub", |_| {}).await;
    assert_eq!(ack.properties.and_then(|p| p.receive_max), Some(7));
    for i in 0..6u8 {
        publisher
            .publish("flow/t", &[b'0' + i], QoS::AtLeastOnce)
            .await;
    }

    // Two in flight, and no more until one is acknowledged [MQTT-3.3.4-9].
    let mut in_flight = VecDeque::new();
    for want in [b'0', b'1'] {
        let p = raw_publish(&mut sub).await;
        assert_eq!(
            (&p.payload[..], p.qos, p.dup),
            (&[want][..], QoS::AtLeastOnce, false)
        );
        in_flight.push_back(p);
    }
    raw_silent(&mut sub, "with 2 unacknowledged").await;

    // Each PUBACK lets exactly one more out, in order.
    for want in b'2'..=b'5' {
        let oldest = in_flight.pop_front().expect("one in flight");
        sub.send(&Packet::PubAck(PubAck::new(
            oldest.packet_id.expect("QoS 1"),
        )))
        .await;
        let p = raw_publish(&mut sub).await;
        assert_eq!(
            (&p.payload[..], p.qos, p.dup),
            (&[want][..], QoS::AtLeastOnce, false)
        );
        in_flight.push_back(p);
        raw_silent(&mut sub, "window full again").await;
    }
    for p in in_flight {
        sub.send(&Packet::PubAck(PubAck::new(p.packet_id.expect("QoS 1"))))
            .await;
    }
    raw_silent(&mut sub, "everything acknowledged").await;
}

#[tokio::test]
async fn client_exceeding_the_servers_receive_maximum_with_qos2_is_disconnect_0x93() {
    let server = server_with(|l| l.receive_maximum = NonZeroU16::new(2));
    let (mut publisher, ack) = raw_connect(&server, "flow-over", |_| {}).await;
    assert_eq!(ack.properties.receive_maximum, NonZeroU16::new(2));
    for _ in 0..2 {
        let id = publisher.packet_id();
        let p = raw::publish_packet("flow/q2", b"x", QoS::ExactlyOnce, false, Some(id));
        publisher.send(&Packet::Publish(p)).await;
        match publisher.recv().await {
            Packet::PubRec(r) => assert_eq!(r.packet_id, id),
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    // A third QoS 2 PUBLISH before any PUBREL: 0x93 [MQTT-3.3.4-9].
    let id = publisher.packet_id();
    let p = raw::publish_packet("flow/q2", b"x", QoS::ExactlyOnce, false, Some(id));
    publisher.send(&Packet::Publish(p)).await;
    expect_disconnect(&mut publisher, ReasonCode::ReceiveMaximumExceeded).await;
}

// ------------------------------------------------------------------ 3. request / response

#[tokio::test]
async fn response_topic_and_correlation_data_reach_the_responder_and_the_reply_comes_back() {
    let server = server_with(|l| l.response_information_prefix = Some("reply/".to_owned()));
    let (mut requester, ack) = V5Client::connect(&server, "requester", |o| {
        o.set_request_response_info(Some(1));
    })
    .await;
    // Response Information: the configured prefix and the client id
    // [MQTT-3.2.2-19]; the requester uses it as its response topic.
    let info = ack
        .properties
        .and_then(|p| p.response_information)
        .expect("Response Information in CONNACK");
    assert_eq!(info, "reply/requester");
    let response_topic = format!("{info}/calc");
    requester.subscribe(&response_topic, QoS::AtLeastOnce).await;

    let (mut responder, ack) = V5Client::connect(&server, "responder", |_| {}).await;
    assert_eq!(
        ack.properties.and_then(|p| p.response_information),
        None,
        "not requested, not given"
    );
    responder.subscribe("svc/calc", QoS::AtLeastOnce).await;

    let correlation = Bytes::from_static(&[0, 1, 2, 0xfe, 0xff]);
    requester
        .publish_with(
            "svc/calc",
            b"6*7",
            QoS::AtLeastOnce,
            false,
            p5::PublishProperties {
                response_topic: Some(response_topic.clone()),
                correlation_data: Some(correlation.clone()),
                ..Default::default()
            },
        )
        .await;

    // [MQTT-3.3.2-15], [MQTT-3.3.2-16]: both arrive unchanged.
    let request = responder.recv().await;
    assert_eq!(
        (topic_of(&request), &request.payload[..]),
        ("svc/calc", &b"6*7"[..])
    );
    let props = props_of(&request);
    assert_eq!(
        props.response_topic.as_deref(),
        Some(response_topic.as_str())
    );
    assert_eq!(props.correlation_data.as_ref(), Some(&correlation));

    responder
        .publish_with(
            &props.response_topic.expect("a response topic"),
            b"42",
            QoS::AtLeastOnce,
            false,
            p5::PublishProperties {
                correlation_data: props.correlation_data,
                ..Default::default()
            },
        )
        .await;
    let reply = requester.recv().await;
    assert_eq!(
        (topic_of(&reply), &reply.payload[..]),
        (response_topic.as_str(), &b"42"[..])
    );
    assert_eq!(props_of(&reply).correlation_data, Some(correlation));
    assert_eq!(responder.try_recv(QUIET).await, None);
}

#[tokio::test]
async fn no_response_information_without_a_configured_prefix() {
    let server = server();
    let (_client, ack) = V5Client::connect(&server, "asks-for-info", |o| {
        o.set_request_response_info(Some(1));
    })
    .await;
    assert_eq!(ack.properties.and_then(|p| p.response_information), None);
}

// ------------------------------------------------------------------ 4. shared subscriptions

/// Receives from `members` (round robin, each poll short) until `n` messages have
/// come in all, then checks for [`QUIET`] that no more do. Returns who got which
/// payloads.
async fn collect_shared(members: &mut [V5Client], n: usize) -> Vec<Vec<u32>> {
    let mut got = vec![Vec::new(); members.len()];
    within(&format!("{n} shared messages"), async {
        while got.iter().map(Vec::len).sum::<usize>() < n {
            for (i, m) in members.iter_mut().enumerate() {
                while let Some(p) = m.try_recv(Duration::from_millis(20)).await {
                    assert_eq!(topic_of(&p), "jobs");
                    let text = std::str::from_utf8(&p.payload).expect("UTF-8 payload");
                    got[i].push(text.parse().expect("a number"));
                }
            }
        }
    })
    .await;
    for (i, m) in members.iter_mut().enumerate() {
        if let Some(extra) = m.try_recv(QUIET / 2).await {
            panic!("member {i} got more than the {n} sent: {extra:?}");
        }
    }
    got
}

/// Asserts every payload in `range` was received exactly once, by one member.
fn each_exactly_once(got: &[Vec<u32>], range: std::ops::Range<u32>) {
    let mut all: Vec<u32> = got.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, range.collect::<Vec<_>>(), "each message exactly once");
}

#[tokio::test]
async fn shared_subscription_gives_each_message_to_exactly_one_member_mqtt_4_8_2() {
    let server = server();
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = V5Client::connect(&server, &format!("worker-{i}"), |_| {})
            .await
            .0;
        m.subscribe("$share/g/jobs", QoS::AtLeastOnce).await;
        members.push(m);
    }
    let mut publisher = V5Client::connect(&server, "dispatcher", |_| {}).await.0;
    for i in 0..60u32 {
        publisher
            .publish("jobs", i.to_string().as_bytes(), QoS::AtLeastOnce)
            .await;
    }
    let got = collect_shared(&mut members, 60).await;
    each_exactly_once(&got, 0..60);
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    assert!(
        counts.iter().all(|&n| n > 0),
        "every member got some: {counts:?}"
    );

    // One member leaves (clean start: its subscription goes with it); the other two
    // share everything published after that.
    let gone = members.remove(1);
    gone.disconnect().await;
    for i in 60..90u32 {
        publisher
            .publish("jobs", i.to_string().as_bytes(), QoS::AtLeastOnce)
            .await;
    }
    let got = collect_shared(&mut members, 30).await;
    each_exactly_once(&got, 60..90);
}

// ------------------------------------------------------------------ 5. multi-session

#[tokio::test]
async fn one_user_name_holds_several_sessions_at_once_and_each_receives() {
    let server = server();
    let mut devices = Vec::new();
    for i in 0..3 {
        let (mut d, ack) = V5Client::connect(&server, &format!("fleet-dev-{i}"), |o| {
            o.set_credentials("fleet", "");
        })
        .await;
        assert_eq!(ack.code, p5::ConnectReturnCode::Success);
        d.subscribe("fleet/all", QoS::AtLeastOnce).await;
        d.subscribe(&format!("fleet/dev-{i}"), QoS::AtLeastOnce)
            .await;
        devices.push(d);
    }
    let mut publisher = V5Client::connect(&server, "fleet-ops", |_| {}).await.0;
    publisher
        .publish("fleet/all", b"to everyone", QoS::AtLeastOnce)
        .await;
    for i in 0..3 {
        publisher
            .publish(
                &format!("fleet/dev-{i}"),
                format!("to {i}").as_bytes(),
                QoS::AtLeastOnce,
            )
            .await;
    }
    // All three are still connected (none took another over, which would have been
    // a DISCONNECT 0x8E and failed `recv`) and each got its messages.
    for (i, d) in devices.iter_mut().enumerate() {
        let all = d.recv().await;
        assert_eq!(
            (topic_of(&all), &all.payload[..]),
            ("fleet/all", &b"to everyone"[..])
        );
        let own = d.recv().await;
        let topic = format!("fleet/dev-{i}");
        let payload = format!("to {i}");
        assert_eq!(
            (topic_of(&own), &own.payload[..]),
            (topic.as_str(), payload.as_bytes())
        );
        assert_eq!(d.try_recv(Duration::from_millis(100)).await, None);
    }
}

#[tokio::test]
async fn third_session_over_max_sessions_per_authentication_name_2_is_connack_0x97() {
    let server = server_with(|l| l.max_sessions_per_authentication_name = Some(2));
    let alice = |o: &mut MqttOptions| {
        o.set_credentials("alice", "");
    };
    let (mut a1, _) = V5Client::connect(&server, "alice-1", alice).await;
    let (a2, _) = V5Client::connect(&server, "alice-2", alice).await;
    let code = V5Client::refused(&server, "alice-3", alice).await;
    assert_eq!(code, p5::ConnectReturnCode::QuotaExceeded, "0x97");

    // The exact CONNACK, from the raw client: 0x97 with a reason string, then close.
    let mut connect = raw::connect_packet(V5, "alice-3");
    connect.username = Some(MqttString::from_static("alice").unwrap());
    let (mut raw3, ack) = RawClient::connect_with(server.addr(ListenerKind::Mqtt), connect).await;
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    assert!(!ack.session_present);
    assert!(ack.properties.reason_string.is_some(), "{ack:?}");
    raw3.expect_closed(TIMEOUT).await;

    // Another name is not limited by alice's sessions, and alice's two are intact.
    let (bob, _) = V5Client::connect(&server, "bob-1", |o| {
        o.set_credentials("bob", "");
    })
    .await;
    a1.subscribe("alice/inbox", QoS::AtLeastOnce).await;
    a1.publish("alice/inbox", b"still here", QoS::AtLeastOnce)
        .await;
    assert_eq!(&a1.recv().await.payload[..], b"still here");

    // A session that ends (clean start, no expiry) frees its slot.
    a2.disconnect().await;
    let (_a3, ack) = within("alice-3 after alice-2 left", async {
        loop {
            match V5Client::try_connect(&server, "alice-3", alice).await {
                Ok(connected) => return connected,
                // The broker may not have ended alice-2's session yet.
                Err(p5::ConnectReturnCode::QuotaExceeded) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(code) => panic!("alice-3: refused with {code:?}"),
            }
        }
    })
    .await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    drop(bob);
}

#[tokio::test]
async fn client_id_held_by_another_user_names_session_is_connack_0x87() {
    let server = server();
    let (mut alice, _) = V5Client::connect(&server, "shared-device", |o| {
        o.set_credentials("alice", "");
    })
    .await;
    alice.subscribe("device/cmd", QoS::AtLeastOnce).await;

    let code = V5Client::refused(&server, "shared-device", |o| {
        o.set_credentials("bob", "");
    })
    .await;
    assert_eq!(code, p5::ConnectReturnCode::NotAuthorized, "0x87");

    // The exact CONNACK, from the raw client; without a user name it is not alice's
    // either.
    for user in [Some("bob"), None] {
        let mut connect = raw::connect_packet(V5, "shared-device");
        connect.username = user.map(|u| MqttString::copy_from_str(u).unwrap());
        let (mut other, ack) =
            RawClient::connect_with(server.addr(ListenerKind::Mqtt), connect).await;
        assert_eq!(ack.reason_code, ReasonCode::NotAuthorized, "{user:?}");
        assert!(!ack.session_present, "{user:?}");
        other.expect_closed(TIMEOUT).await;
    }

    // Alice's session was neither taken over nor disturbed.
    let mut publisher = V5Client::connect(&server, "device-ops", |_| {}).await.0;
    publisher
        .publish("device/cmd", b"reboot", QoS::AtLeastOnce)
        .await;
    let got = alice.recv().await;
    assert_eq!(
        (topic_of(&got), &got.payload[..]),
        ("device/cmd", &b"reboot"[..])
    );
}

// ------------------------------------------------------------------ 6. properties

const USER: [(&str, &str); 4] = [("b", "2"), ("a", "1"), ("b", "two"), ("ü", "✓")];
const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

fn check_forwarded(got: &p5::Publish, how: &str) {
    let props = props_of(got);
    assert_eq!(props.user_properties, owned(&USER), "{how}: in order");
    assert_eq!(props.content_type.as_deref(), Some(CONTENT_TYPE), "{how}");
    assert_eq!(props.payload_format_indicator, Some(1), "{how}");
    assert_eq!(&got.payload[..], "grüße".as_bytes(), "{how}");
}

#[tokio::test]
async fn user_properties_in_order_content_type_and_payload_format_are_forwarded_unchanged() {
    let server = server();
    let mut live = V5Client::connect(&server, "props-live", |_| {}).await.0;
    live.subscribe("props/t", QoS::AtLeastOnce).await;

    // rumqttc publishes with the properties; a rumqttc and a raw subscriber see them.
    let (mut raw_sub, _) = raw_connect(&server, "props-raw", |_| {}).await;
    raw_sub.subscribe("props/t", QoS::AtLeastOnce).await;
    let mut publisher = V5Client::connect(&server, "props-pub", |_| {}).await.0;
    publisher
        .publish_with(
            "props/t",
            "grüße".as_bytes(),
            QoS::AtLeastOnce,
            true,
            p5::PublishProperties {
                user_properties: owned(&USER),
                content_type: Some(CONTENT_TYPE.to_owned()),
                payload_format_indicator: Some(1),
                ..Default::default()
            },
        )
        .await;
    check_forwarded(&live.recv().await, "live");

    let got = raw_sub.recv_publish().await;
    let pairs: Vec<(String, String)> = got
        .properties
        .user_properties
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(pairs, owned(&USER), "raw: in order, duplicates kept");
    assert_eq!(
        got.properties.content_type.as_ref().map(|c| c.as_str()),
        Some(CONTENT_TYPE)
    );
    assert_eq!(
        got.properties.payload_format_indicator,
        Some(PayloadFormat::Utf8)
    );

    // The retained copy keeps them too.
    let mut late = V5Client::connect(&server, "props-late", |_| {}).await.0;
    late.subscribe("props/#", QoS::AtLeastOnce).await;
    let retained = late.recv().await;
    assert!(retained.retain, "{retained:?}");
    check_forwarded(&retained, "retained");

    // And the other way: a raw publisher's properties reach the rumqttc clients
    // and the raw subscriber.
    let (mut raw_pub, _) = raw_connect(&server, "props-raw-pub", |_| {}).await;
    let mut p = raw::publish_packet("props/t", "grüße".as_bytes(), QoS::AtMostOnce, false, None);
    p.properties.user_properties = user_properties(&USER);
    p.properties.content_type = Some(MqttString::from_static(CONTENT_TYPE).unwrap());
    p.properties.payload_format_indicator = Some(PayloadFormat::Utf8);
    raw_pub.send(&Packet::Publish(p)).await;
    check_forwarded(&live.recv().await, "from the raw client");
    check_forwarded(&late.recv().await, "from the raw client, to the late one");
    let got = raw_sub.recv_publish().await;
    assert_eq!(got.properties.user_properties, user_properties(&USER));
    assert_eq!(
        got.properties.payload_format_indicator,
        Some(PayloadFormat::Utf8)
    );
}
