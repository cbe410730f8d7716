//! Scenario 2: MQTT 3.1.1 and 5.0 clients (rumqttc, and the raw client where a
//! connection must die without DISCONNECT) sharing one broker: messages both ways
//! at every QoS, retained messages, wills and persistent sessions.

use std::time::Duration;

use adapter_common::config::ListenerKind;
use brokk_e2e::raw::{self, RawClient};
use brokk_e2e::rumqtt::{Client, ClientOptions};
use brokk_e2e::{RunningServer, Setup};
use mqtt_proto::{Packet, ProtocolVersion, QoS, ReasonCode};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

/// How long a test waits to be sure a message does NOT come.
const QUIET: Duration = Duration::from_millis(500);

fn tcp() -> RunningServer {
    Setup::new(&[ListenerKind::Mqtt]).start()
}

async fn connect(server: &RunningServer, version: ProtocolVersion, id: &str) -> Client {
    Client::connect(server, ClientOptions::new(version, ListenerKind::Mqtt, id))
        .await
        .0
}

#[tokio::test]
async fn v3_and_v5_clients_exchange_messages_both_ways_at_qos_0_1_and_2() {
    let server = tcp();
    let mut v3 = connect(&server, V3, "interop-v3").await;
    let mut v5 = connect(&server, V5, "interop-v5").await;
    v3.subscribe("interop/to-v3", QoS::ExactlyOnce).await;
    v5.subscribe("interop/to-v5", QoS::ExactlyOnce).await;

    for qos in QOS {
        let payload = format!("from 3.1.1 at {qos:?}");
        v3.publish("interop/to-v5", payload.as_bytes(), qos, false)
            .await;
        let got = v5.recv().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..], got.qos, got.retain),
            ("interop/to-v5", payload.as_bytes(), qos, false)
        );

        let payload = format!("from 5.0 at {qos:?}");
        v5.publish("interop/to-v3", payload.as_bytes(), qos, false)
            .await;
        let got = v3.recv().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..], got.qos, got.retain),
            ("interop/to-v3", payload.as_bytes(), qos, false)
        );
    }
    // Each publisher is not subscribed to its own topic, so it got nothing back.
    assert_eq!(v3.try_recv(QUIET).await, None);
    assert_eq!(v5.try_recv(Duration::ZERO).await, None);
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_publish_and_subscription_qos() {
    let server = tcp();
    let mut v3 = connect(&server, V3, "downgrade-v3").await;
    let mut v5 = connect(&server, V5, "downgrade-v5").await;
    v3.subscribe("downgrade/v3", QoS::AtLeastOnce).await;
    v5.subscribe("downgrade/v5", QoS::AtMostOnce).await;
    v5.publish("downgrade/v3", b"2 to 1", QoS::ExactlyOnce, false)
        .await;
    assert_eq!(v3.recv().await.qos, QoS::AtLeastOnce);
    v3.publish("downgrade/v5", b"1 to 0", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(v5.recv().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn retained_message_reaches_later_subscribers_with_the_retain_flag() {
    let server = tcp();
    let mut publisher = connect(&server, V5, "retain-pub").await;
    publisher
        .publish("interop/retained", b"kept", QoS::AtLeastOnce, true)
        .await;
    publisher.disconnect().await;

    // [MQTT-3.3.1-8], [MQTT-3.3.1-9]: a retained message sent because of a new
    // subscription carries RETAIN 1; a live message to an existing one carries 0.
    for (version, id) in [(V3, "retain-late-v3"), (V5, "retain-late-v5")] {
        let mut late = connect(&server, version, id).await;
        late.subscribe("interop/#", QoS::AtLeastOnce).await;
        let got = late.recv().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..], got.qos, got.retain),
            ("interop/retained", &b"kept"[..], QoS::AtLeastOnce, true),
            "{id}"
        );
        late.publish("interop/live", b"live", QoS::AtLeastOnce, false)
            .await;
        let live = late.recv().await;
        assert_eq!((live.topic.as_str(), live.retain), ("interop/live", false));
    }
}

#[tokio::test]
async fn will_is_published_when_a_client_is_killed_and_not_after_disconnect() {
    let server = tcp();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut watcher_v5 = connect(&server, V5, "will-watcher-v5").await;
    watcher_v5.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut watcher_v3 = connect(&server, V3, "will-watcher-v3").await;
    watcher_v3.subscribe("will/#", QoS::AtLeastOnce).await;

    // A raw 3.1.1 client whose socket is dropped without DISCONNECT [MQTT-3.1.2-8].
    let mut connect = raw::connect_packet(V3, "doomed-v3");
    connect.will = Some(raw::will("will/doomed-v3", "v3 gone"));
    let (doomed, connack) = RawClient::connect_with(addr, connect).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    doomed.kill();
    for watcher in [&mut watcher_v5, &mut watcher_v3] {
        let got = watcher.recv().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..], got.qos),
            ("will/doomed-v3", &b"v3 gone"[..], QoS::AtLeastOnce)
        );
    }

    // A rumqttc 5.0 client whose event loop (and socket) is dropped.
    let options =
        ClientOptions::new(V5, ListenerKind::Mqtt, "doomed-v5").will("will/doomed-v5", "v5 gone");
    let (doomed, _) = Client::connect(&server, options).await;
    doomed.kill();
    for watcher in [&mut watcher_v3, &mut watcher_v5] {
        let got = watcher.recv().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("will/doomed-v5", &b"v5 gone"[..])
        );
    }

    // A normal DISCONNECT discards the will [MQTT-3.1.2-10].
    for (version, id) in [(V3, "polite-v3"), (V5, "polite-v5")] {
        let options = ClientOptions::new(version, ListenerKind::Mqtt, id)
            .will("will/polite", "should not appear");
        let (polite, _) = Client::connect(&server, options).await;
        polite.disconnect().await;
    }
    assert_eq!(watcher_v5.try_recv(QUIET).await, None);
    assert_eq!(watcher_v3.try_recv(Duration::ZERO).await, None);
}

async fn offline_messages_are_delivered_on_reconnect(version: ProtocolVersion, id: &str) {
    let server = tcp();
    let topic = format!("persistent/{id}");
    let options = ClientOptions::new(version, ListenerKind::Mqtt, id).persistent(300);

    let (mut sub, session_present) = Client::connect(&server, options.clone()).await;
    assert!(!session_present, "{id}: first connection has no session");
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = connect(&server, V5, &format!("{id}-publisher")).await;
    for i in 0..3 {
        publisher
            .publish(
                &topic,
                format!("queued {i}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }

    let (mut sub, session_present) = Client::connect(&server, options).await;
    assert!(session_present, "{id}: the session was kept");
    for i in 0..3 {
        let got = sub.recv().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..], got.qos),
            (
                topic.as_str(),
                format!("queued {i}").as_bytes(),
                QoS::AtLeastOnce
            ),
            "{id}: message {i}"
        );
    }
    // The subscription survived too: a live message arrives without resubscribing.
    publisher
        .publish(&topic, b"live", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&sub.recv().await.payload[..], b"live");
}

#[tokio::test]
async fn v3_clean_session_0_receives_qos1_messages_queued_while_offline() {
    offline_messages_are_delivered_on_reconnect(V3, "persistent-v3").await;
}

#[tokio::test]
async fn v5_clean_start_0_with_session_expiry_receives_qos1_messages_queued_while_offline() {
    offline_messages_are_delivered_on_reconnect(V5, "persistent-v5").await;
}

#[tokio::test]
async fn session_takeover_closes_the_first_connection_with_disconnect_0x8e() {
    // A second CONNECT with the same client id takes the session over: the first
    // connection is closed, with DISCONNECT 0x8E for 5.0 [MQTT-3.1.4-3].
    let server = tcp();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut first = RawClient::connect(addr, V5, "taken").await;
    let mut second = RawClient::connect(addr, V5, "taken").await;
    let before_close = first.expect_closed(brokk_e2e::TIMEOUT).await;
    match before_close.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason_code, ReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    second.round_trip("takeover/works").await;
}

#[tokio::test]
async fn empty_retained_message_clears_the_retained_one_mqtt_3_3_1_10() {
    let server = tcp();
    let mut publisher = connect(&server, V3, "clear-pub").await;
    publisher
        .publish("clear/me", b"old", QoS::AtLeastOnce, true)
        .await;
    // A retained PUBLISH with an empty payload removes the retained message.
    publisher
        .publish("clear/me", b"", QoS::AtLeastOnce, true)
        .await;
    let mut late = connect(&server, V5, "clear-late").await;
    late.subscribe("clear/#", QoS::AtLeastOnce).await;
    assert_eq!(late.try_recv(QUIET).await, None);
}

#[tokio::test]
async fn wildcards_match_across_versions_but_not_dollar_topics_mqtt_4_7_2_1() {
    let server = tcp();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut v3 = connect(&server, V3, "wild-v3").await;
    v3.subscribe("wild/+/temp", QoS::AtLeastOnce).await;
    v3.subscribe("#", QoS::AtMostOnce).await;
    let mut v5 = RawClient::connect(addr, V5, "wild-v5").await;
    v5.publish("$private/wild", b"hidden", QoS::AtLeastOnce, false)
        .await;
    v5.publish("wild/kitchen/temp", b"21", QoS::AtLeastOnce, false)
        .await;
    // Overlapping subscriptions: 3.1.1 may deliver once per match or once in all;
    // whichever, every copy is this message and "$private" never shows.
    let first = v3.recv().await;
    assert_eq!(
        (first.topic.as_str(), &first.payload[..]),
        ("wild/kitchen/temp", &b"21"[..])
    );
    while let Some(more) = v3.try_recv(QUIET).await {
        assert_eq!(more.topic, "wild/kitchen/temp", "{more:?}");
    }
}

#[tokio::test]
async fn unsubscribed_client_gets_nothing_more() {
    let server = tcp();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut sub = RawClient::connect(addr, V3, "unsub").await;
    sub.round_trip("unsub/topic").await;
    let packet_id = sub.packet_id();
    sub.send(&Packet::Unsubscribe(mqtt_proto::Unsubscribe {
        packet_id,
        filters: vec![mqtt_proto::TopicFilter::from_static("unsub/topic").unwrap()],
        properties: Default::default(),
    }))
    .await;
    match sub.recv().await {
        Packet::UnsubAck(ack) => assert_eq!(ack.packet_id, packet_id),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let mut publisher = connect(&server, V5, "unsub-pub").await;
    publisher
        .publish("unsub/topic", b"gone", QoS::AtLeastOnce, false)
        .await;
    match sub.next(QUIET).await {
        raw::Next::TimedOut => {}
        other => panic!("after UNSUBACK: {other:?}"),
    }
}

#[tokio::test]
async fn v5_client_maximum_packet_size_is_respected_mqtt_3_1_2_25() {
    let server = tcp();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut small_connect = raw::connect_packet(V5, "small-reader");
    small_connect.properties.maximum_packet_size = std::num::NonZeroU32::new(128);
    let (mut small, connack) = RawClient::connect_with(addr, small_connect).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert_eq!(
        small.subscribe("size/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );

    // [MQTT-3.1.2-25]: a packet larger than the client's Maximum Packet Size is
    // discarded for that client, which stays connected and gets the next one.
    let mut publisher = connect(&server, V3, "size-pub").await;
    publisher
        .publish("size/big", &[b'x'; 500], QoS::AtMostOnce, false)
        .await;
    publisher
        .publish("size/small", b"fits", QoS::AtMostOnce, false)
        .await;
    let got = small.recv_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("size/small", &b"fits"[..])
    );
}

#[tokio::test]
async fn connect_without_client_id_mqtt_3_1_3_6_and_3_1_3_8() {
    let server = tcp();
    let addr = server.addr(ListenerKind::Mqtt);
    // 5.0: the broker assigns an id and says which [MQTT-3.2.2-16].
    let (mut anonymous, connack) = RawClient::connect_with(addr, raw::connect_packet(V5, "")).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let assigned = connack
        .properties
        .assigned_client_identifier
        .expect("an Assigned Client Identifier");
    assert!(!assigned.is_empty());
    anonymous.round_trip("noid/v5").await;

    // 3.1.1 with clean session 0 and no id: CONNACK 0x02 identifier rejected.
    let mut connect = raw::connect_packet(V3, "");
    connect.clean_start = false;
    let mut refused = RawClient::open(addr, V3).await;
    refused.send(&Packet::Connect(Box::new(connect))).await;
    let (_, bytes) = refused.recv_frame().await;
    assert_eq!(&bytes[..], [0x20, 0x02, 0x00, 0x02]);
    refused.expect_closed(brokk_e2e::TIMEOUT).await;
}
