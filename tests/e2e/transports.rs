//! Scenario 1: rumqttc's 3.1.1 and 5.0 clients connect, subscribe, publish and
//! receive over every transport: TCP, TLS, WebSocket and secure WebSocket. TLS
//! clients trust only the broker's generated dev CA.

use adapter_common::config::ListenerKind;
use brokk_e2e::raw::{connect_packet, encode, publish_packet, RawClient};
use brokk_e2e::rumqtt::{Client, ClientOptions};
use brokk_e2e::server::WS_PATH;
use brokk_e2e::ws::{client_frame, opcode, WsClient};
use brokk_e2e::{RunningServer, Setup};
use mqtt_proto::{Packet, ProtocolVersion, QoS, ReasonCode};

async fn publish_to_self(
    server: &RunningServer,
    transport: ListenerKind,
    version: ProtocolVersion,
) {
    let id = format!("self-{transport}-{}", version.level());
    let topic = format!("transports/{transport}/{}", version.level());
    let options = ClientOptions::new(version, transport, &id);
    let (mut client, session_present) = Client::connect(server, options).await;
    assert!(
        !session_present,
        "{id}: a clean session has no session present"
    );
    client.subscribe(&topic, QoS::AtLeastOnce).await;
    let payload = format!("hello over {transport}");
    client
        .publish(&topic, payload.as_bytes(), QoS::AtLeastOnce, false)
        .await;
    let got = client.recv().await;
    assert_eq!(got.topic, topic);
    assert_eq!(&got.payload[..], payload.as_bytes());
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert!(!got.retain);

    // A message spanning many reads (and WebSocket frames), then a run of small ones
    // that arrive in order.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    client.publish(&topic, &big, QoS::AtLeastOnce, false).await;
    assert!(
        client.recv().await.payload == big,
        "{id}: the large payload changed"
    );
    for i in 0..50 {
        let payload = format!("{i}");
        client
            .publish(&topic, payload.as_bytes(), QoS::AtMostOnce, false)
            .await;
    }
    for i in 0..50 {
        assert_eq!(
            client.recv().await.payload,
            format!("{i}").as_bytes(),
            "{id}"
        );
    }
    client.disconnect().await;
}

async fn both_versions(transport: ListenerKind) {
    let server = Setup::new(&[transport]).start();
    publish_to_self(&server, transport, ProtocolVersion::V3_1_1).await;
    publish_to_self(&server, transport, ProtocolVersion::V5).await;
}

#[tokio::test]
async fn rumqttc_over_tcp() {
    both_versions(ListenerKind::Mqtt).await;
}

#[tokio::test]
async fn rumqttc_over_tls_trusting_the_dev_ca() {
    both_versions(ListenerKind::Mqtts).await;
}

#[tokio::test]
async fn rumqttc_over_websocket() {
    both_versions(ListenerKind::Ws).await;
}

#[tokio::test]
async fn rumqttc_over_secure_websocket() {
    both_versions(ListenerKind::Wss).await;
}

#[tokio::test]
async fn graceful_shutdown_sends_disconnect_0x8b_to_v5_clients_on_every_transport() {
    let server = Setup::all_transports().start();
    let mut v5_clients = Vec::new();
    let mut v3_clients = Vec::new();
    for transport in ListenerKind::MQTT {
        let v5 = ClientOptions::new(
            ProtocolVersion::V5,
            transport,
            &format!("bye-5-{transport}"),
        );
        v5_clients.push(Client::connect(&server, v5).await.0);
        let v3 = ClientOptions::new(
            ProtocolVersion::V3_1_1,
            transport,
            &format!("bye-3-{transport}"),
        );
        v3_clients.push(Client::connect(&server, v3).await.0);
    }
    // shutdown() blocks until the server has stopped, so it runs off this thread
    // while the clients are polled.
    let stopped = tokio::task::spawn_blocking(move || server.shutdown());
    for (client, transport) in v5_clients.iter_mut().zip(ListenerKind::MQTT) {
        assert_eq!(
            client.recv_disconnect().await,
            ReasonCode::ServerShuttingDown,
            "5.0 over {transport}"
        );
    }
    // 3.1.1 has no server DISCONNECT: the connection just ends.
    for (client, transport) in v3_clients.iter_mut().zip(ListenerKind::MQTT) {
        let error = client.connection_error().await;
        assert!(!error.is_empty(), "3.1.1 over {transport}");
    }
    brokk_e2e::within("the server to stop", stopped)
        .await
        .unwrap();
}

#[tokio::test]
async fn mqtt_packets_split_across_tcp_reads_and_websocket_frames_decode_alike() {
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Ws]).start();
    let v5 = ProtocolVersion::V5;
    let connect = encode(
        &Packet::Connect(Box::new(connect_packet(v5, "splitter"))),
        v5,
    );
    let subscribe = encode(
        &Packet::Subscribe(mqtt_proto::Subscribe {
            packet_id: std::num::NonZeroU16::MIN,
            filters: vec![(
                mqtt_proto::TopicFilter::from_static("split/#").unwrap(),
                mqtt_proto::SubscriptionOptions::qos(QoS::AtMostOnce),
            )],
            properties: Default::default(),
        }),
        v5,
    );
    let publish = encode(
        &Packet::Publish(publish_packet(
            "split/x",
            b"pieces",
            QoS::AtMostOnce,
            false,
            None,
        )),
        v5,
    );
    let all: Vec<u8> = [&connect[..], &subscribe[..], &publish[..]].concat();

    // TCP: one byte per write, each flushed on its own (TCP_NODELAY).
    let mut tcp = RawClient::open(server.addr(ListenerKind::Mqtt), v5).await;
    for byte in &all {
        tcp.send_bytes(std::slice::from_ref(byte)).await;
        tokio::task::yield_now().await;
    }
    assert!(matches!(tcp.recv().await, Packet::ConnAck(_)));
    assert!(matches!(tcp.recv().await, Packet::SubAck(_)));
    assert_eq!(&tcp.recv_publish().await.payload[..], b"pieces");

    // WebSocket: CONNECT split over a frame and two continuation frames [RFC 6455
    // 5.4], then SUBSCRIBE and PUBLISH together in one frame: packets need not align with
    // frames [MQTT-6.0.0-2].
    let mut ws = WsClient::upgrade(server.addr(ListenerKind::Ws), WS_PATH).await;
    let (a, rest) = connect.split_at(3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut frames = client_frame(false, opcode::BINARY, a);
    frames.extend(client_frame(false, opcode::CONTINUATION, b));
    frames.extend(client_frame(true, opcode::CONTINUATION, c));
    frames.extend(client_frame(
        true,
        opcode::BINARY,
        &[&subscribe[..], &publish[..]].concat(),
    ));
    ws.send_raw(&frames).await;
    assert!(matches!(ws.recv_packet(v5).await, Packet::ConnAck(_)));
    assert!(matches!(ws.recv_packet(v5).await, Packet::SubAck(_)));
    match ws.recv_packet(v5).await {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"pieces"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_of_large_packets_cut_anywhere_arrives_whole_and_in_order() {
    // Packets of 8 KiB and more, cut by a read, keep the read's block with their
    // connection (adapter-common `ConnIo::keeps_read_block`); small ones between them
    // take the other path. Every size must come out intact and in order.
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    let v5 = ProtocolVersion::V5;
    let mut tcp = RawClient::open(server.addr(ListenerKind::Mqtt), v5).await;
    tcp.send(&Packet::Connect(Box::new(connect_packet(
        v5,
        "large-stream",
    ))))
    .await;
    assert!(matches!(tcp.recv().await, Packet::ConnAck(_)));
    tcp.send(&Packet::Subscribe(mqtt_proto::Subscribe {
        packet_id: std::num::NonZeroU16::MIN,
        filters: vec![(
            mqtt_proto::TopicFilter::from_static("large/#").unwrap(),
            mqtt_proto::SubscriptionOptions::qos(QoS::AtMostOnce),
        )],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(tcp.recv().await, Packet::SubAck(_)));
    let sizes = [20_000usize, 9_000, 100, 70_000, 8_192, 8_180, 3, 40_000];
    let payloads: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let n = sizes[i % sizes.len()];
            (0..n).map(|j| ((i * 7 + j) % 253) as u8).collect()
        })
        .collect();
    let mut stream = Vec::new();
    for p in &payloads {
        stream.extend(encode(
            &Packet::Publish(publish_packet("large/x", p, QoS::AtMostOnce, false, None)),
            v5,
        ));
    }
    for piece in stream.chunks(7_001) {
        tcp.send_bytes(piece).await;
        tokio::task::yield_now().await;
    }
    for (i, p) in payloads.iter().enumerate() {
        let got = tcp.recv_publish().await;
        assert!(
            got.payload[..] == p[..],
            "message {i} ({} bytes) came out as {} bytes or changed",
            p.len(),
            got.payload.len()
        );
    }
}
