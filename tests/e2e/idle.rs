//! Idle connections give up their tasks (the adapter's parking lot, plain TCP) and
//! lose nothing by it: after standing idle past the lot's sweeps, a connection
//! still receives what is routed to it, is answered when it speaks, is ended by
//! its keep-alive with its will published, finishes a packet it had started, and
//! hears the server shut down. Every connection here is idle far longer than the
//! two sweep ticks (`adapter_common::park::PARK_TICK`) after which any connection
//! is parked; a new one parks at once after its CONNACK.

use std::time::Duration;

use adapter_common::config::ListenerKind;
use adapter_common::park::PARK_TICK;
use brokk_e2e::raw::{connect_packet, encode, publish_packet, will, RawClient};
use brokk_e2e::Setup;
use mqtt_proto::{Packet, ProtocolVersion, QoS, ReasonCode};

/// Longer than two sweep ticks: every idle connection is parked by then.
fn idle_long_enough() -> Duration {
    PARK_TICK * 5 / 2
}

fn version(i: usize) -> ProtocolVersion {
    if i % 2 == 0 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V3_1_1
    }
}

#[tokio::test]
async fn parked_subscribers_receive_and_answer_pings_mqtt_3_12_4_1() {
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut subscribers = Vec::new();
    for i in 0..100 {
        let mut c = RawClient::connect(addr, version(i), &format!("idle-sub-{i}")).await;
        assert_eq!(
            c.subscribe(&format!("idle/{i}"), QoS::AtLeastOnce).await,
            ReasonCode::GrantedQoS1
        );
        subscribers.push(c);
    }
    let mut publisher = RawClient::connect(addr, ProtocolVersion::V5, "idle-pub").await;
    tokio::time::sleep(idle_long_enough()).await;

    // Output for a parked connection gives it a task again.
    for i in 0..100 {
        let payload = format!("to {i}");
        publisher
            .publish(
                &format!("idle/{i}"),
                payload.as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    for (i, c) in subscribers.iter_mut().enumerate() {
        let p = c.recv_publish().await;
        assert_eq!(p.topic.as_str(), format!("idle/{i}"));
        assert_eq!(&p.payload[..], format!("to {i}").as_bytes());
    }
    tokio::time::sleep(idle_long_enough()).await;

    // Bytes on a parked socket give it a task again [MQTT-3.12.4-1].
    for c in subscribers.iter_mut() {
        c.send(&Packet::PingReq).await;
    }
    for c in subscribers.iter_mut() {
        assert!(matches!(c.recv().await, Packet::PingResp));
    }
    tokio::time::sleep(idle_long_enough()).await;

    // And both again, after parking a second time: a QoS 1 round trip each.
    for (i, c) in subscribers.iter_mut().enumerate() {
        c.round_trip(&format!("idle/{i}")).await;
    }
    for c in subscribers {
        c.disconnect().await;
    }
    publisher.disconnect().await;
}

#[tokio::test]
async fn a_parked_connection_is_ended_by_its_keep_alive_with_its_will_mqtt_3_1_2_22() {
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut watcher = RawClient::connect(addr, ProtocolVersion::V5, "idle-watcher").await;
    watcher.subscribe("idle/will", QoS::AtLeastOnce).await;
    let mut connect = connect_packet(ProtocolVersion::V5, "idle-silent");
    connect.keep_alive = 1;
    connect.will = Some(will("idle/will", "silent too long"));
    let (mut silent, connack) = RawClient::connect_with(addr, connect).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    // Parked at once (a new connection after its CONNACK), then ended by the keep-alive
    // timer after 1.5 s [MQTT-3.1.2-22]: DISCONNECT 0x8D, close, will published.
    silent
        .expect_disconnect(ReasonCode::KeepAliveTimeout, Duration::from_secs(5))
        .await;
    let p = watcher.recv_publish().await;
    assert_eq!(&p.payload[..], b"silent too long");
}

#[tokio::test]
async fn a_packet_started_before_idling_is_finished_after_it() {
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut sub = RawClient::connect(addr, ProtocolVersion::V3_1_1, "idle-half-sub").await;
    sub.subscribe("idle/half", QoS::AtMostOnce).await;
    let mut publisher = RawClient::connect(addr, ProtocolVersion::V3_1_1, "idle-half").await;
    let bytes = encode(
        &Packet::Publish(publish_packet(
            "idle/half",
            b"in two parts",
            QoS::AtMostOnce,
            false,
            None,
        )),
        ProtocolVersion::V3_1_1,
    );
    let (first, rest) = bytes.split_at(5);
    publisher.send_bytes(first).await;
    tokio::time::sleep(idle_long_enough()).await;
    publisher.send_bytes(rest).await;
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"in two parts");
    publisher.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test]
async fn parked_connections_hear_the_server_shut_down_mqtt_3_14_2_1() {
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut v5 = RawClient::connect(addr, ProtocolVersion::V5, "idle-v5").await;
    let mut v4 = RawClient::connect(addr, ProtocolVersion::V3_1_1, "idle-v4").await;
    tokio::time::sleep(idle_long_enough()).await;
    let stop = tokio::task::spawn_blocking(move || server.shutdown());
    v5.expect_disconnect(ReasonCode::ServerShuttingDown, Duration::from_secs(5))
        .await;
    assert!(v4.expect_closed(Duration::from_secs(5)).await.is_empty());
    stop.await.expect("shutdown finished");
}
