//! Scenario 4: bad input over the wire. Each offending connection is dropped for the
//! right reason while another client, connected before, keeps being served (shown
//! by a round trip on it afterwards).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use adapter_common::config::ListenerKind;
use brokk_e2e::raw::{self, read_until_closed, RawClient};
use brokk_e2e::server::WS_PATH;
use brokk_e2e::ws::{self, WsClient};
use brokk_e2e::{RunningServer, Setup, TIMEOUT};
use mqtt_proto::{Packet, ProtocolVersion, QoS, ReasonCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A client connected before the bad input arrives; its round trip afterwards shows
/// the broker kept serving.
async fn bystander(server: &RunningServer, id: &str) -> RawClient {
    RawClient::connect(server.addr(ListenerKind::Mqtt), V5, id).await
}

async fn raw_stream(addr: std::net::SocketAddr) -> TcpStream {
    brokk_e2e::within("TCP connect", TcpStream::connect(addr))
        .await
        .expect("TCP connect")
}

#[tokio::test]
async fn garbage_as_first_packet_is_closed_without_a_connack_mqtt_3_1_0_1() {
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    let mut other = bystander(&server, "garbage-bystander").await;

    // [MQTT-3.1.0-1]: the first packet must be CONNECT; anything else closes the
    // connection, and with no CONNECT there is no version to answer in.
    for garbage in [
        &b"\x00\x01\x02\x03garbage"[..],
        b"\xff\xff\xff\xff\xff",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        let mut stream = raw_stream(server.addr(ListenerKind::Mqtt)).await;
        stream.write_all(garbage).await.unwrap();
        let reply = read_until_closed(&mut stream, TIMEOUT).await;
        assert!(
            reply.is_empty(),
            "{garbage:02x?} was answered with {reply:02x?}"
        );
    }
    other.round_trip("bad/garbage").await;
}

#[tokio::test]
async fn malformed_packet_after_connect_gets_disconnect_0x81() {
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    let mut other = bystander(&server, "malformed-bystander").await;

    let mut bad = RawClient::connect(server.addr(ListenerKind::Mqtt), V5, "malformed").await;
    // A SUBSCRIBE with reserved flags 0000 instead of 0010 is malformed [MQTT-3.8.1-1].
    bad.send_bytes(b"\x80\x07\x00\x01\x00\x00\x01a\x01").await;
    bad.expect_disconnect(ReasonCode::MalformedPacket, TIMEOUT)
        .await;
    other.round_trip("bad/malformed").await;
}

const MAX_PACKET: u32 = 256;

fn small_packets() -> RunningServer {
    Setup::new(&[ListenerKind::Mqtt])
        .limits(|l| l.max_packet_size = NonZeroU32::new(MAX_PACKET))
        .start()
}

fn oversized_publish(client: &mut RawClient) -> bytes::BytesMut {
    let id = client.packet_id();
    let publish = raw::publish_packet("big", &[b'x'; 1000], QoS::AtLeastOnce, false, Some(id));
    let bytes = raw::encode(&Packet::Publish(publish), client.version());
    assert!(bytes.len() > MAX_PACKET as usize);
    bytes
}

#[tokio::test]
async fn packet_over_maximum_size_gets_disconnect_0x95_for_v5_mqtt_3_2_2_15() {
    let server = small_packets();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut other = bystander(&server, "big-bystander").await;

    let (mut big, connack) = RawClient::connect_with(addr, raw::connect_packet(V5, "big-v5")).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    // The broker tells 5.0 clients its limit in CONNACK [MQTT-3.2.2.3.6].
    assert_eq!(
        connack.properties.maximum_packet_size,
        NonZeroU32::new(MAX_PACKET),
        "CONNACK's Maximum Packet Size"
    );
    // [MQTT-3.2.2-15] forbids sending more; a server that receives more treats it as
    // a Protocol Error and "uses DISCONNECT with Reason Code 0x95 (Packet too large)"
    // (3.2.2.3.6, 4.13), then closes the connection [MQTT-4.13.1-1].
    let bytes = oversized_publish(&mut big);
    big.send_bytes(&bytes).await;
    big.expect_disconnect(ReasonCode::PacketTooLarge, TIMEOUT)
        .await;
    other.round_trip("bad/big-v5").await;
}

#[tokio::test]
async fn packet_over_maximum_size_closes_a_v3_connection() {
    let server = small_packets();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut other = bystander(&server, "big3-bystander").await;

    // 3.1.1 has no server DISCONNECT: the connection closes with nothing sent.
    let mut big = RawClient::connect(addr, V3, "big-v3").await;
    let bytes = oversized_publish(&mut big);
    big.send_bytes(&bytes).await;
    let before_close = big.expect_closed(TIMEOUT).await;
    assert!(before_close.is_empty(), "got {before_close:?}");
    other.round_trip("bad/big-v3").await;
}

#[tokio::test]
async fn half_a_connect_then_silence_is_closed_after_the_connect_timeout() {
    let server = Setup::new(&[ListenerKind::Mqtt])
        .limits(|l| l.connect_timeout_secs = Some(1))
        .start();
    let mut other = bystander(&server, "stall-bystander").await;

    let connect = raw::encode(
        &Packet::Connect(Box::new(raw::connect_packet(V5, "staller"))),
        V5,
    );
    let mut stalled = RawClient::open(server.addr(ListenerKind::Mqtt), V5).await;
    let started = Instant::now();
    stalled.send_bytes(&connect[..connect.len() / 2]).await;
    let before_close = stalled.expect_closed(Duration::from_secs(5)).await;
    assert!(before_close.is_empty(), "got {before_close:?}");
    // Not closed for the half packet itself, but for the silence after it.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the 1 s connect timeout",
        started.elapsed()
    );
    other.round_trip("bad/stall").await;
}

#[tokio::test]
async fn silent_client_is_dropped_after_one_and_a_half_keep_alives_mqtt_3_1_2_24() {
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut other = bystander(&server, "keepalive-bystander").await;

    // [MQTT-3.1.2-24]: nothing from the client for 1.5 x Keep Alive closes the
    // connection; a 5.0 client is told 0x8D Keep Alive timeout.
    let mut silent = Vec::new();
    for version in [V5, V3] {
        let mut connect = raw::connect_packet(version, &format!("silent-{}", version.level()));
        connect.keep_alive = 1;
        let (client, connack) = RawClient::connect_with(addr, connect).await;
        assert_eq!(connack.reason_code, ReasonCode::Success);
        silent.push(client);
    }
    silent[0]
        .expect_disconnect(ReasonCode::KeepAliveTimeout, Duration::from_secs(5))
        .await;
    let before_close = silent[1].expect_closed(Duration::from_secs(5)).await;
    assert!(before_close.is_empty(), "3.1.1 got {before_close:?}");
    other.round_trip("bad/keepalive").await;
}

#[tokio::test]
async fn plain_mqtt_to_a_tls_listener_fails_the_handshake_and_closes() {
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Mqtts]).start();
    let mut other = bystander(&server, "tls-bystander").await;

    let connect = raw::encode(
        &Packet::Connect(Box::new(raw::connect_packet(V5, "plain"))),
        V5,
    );
    let mut stream = raw_stream(server.addr(ListenerKind::Mqtts)).await;
    stream.write_all(&connect).await.unwrap();
    let reply = read_until_closed(&mut stream, TIMEOUT).await;
    // Nothing MQTT comes back: at most a TLS alert record (content type 21).
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "expected nothing or a TLS alert, got {reply:02x?}"
    );
    other.round_trip("bad/tls").await;
}

/// Sends `request` to the WebSocket listener and returns the whole response; the
/// broker must close the connection after it.
async fn upgrade_response(server: &RunningServer, request: &str) -> String {
    let mut stream = raw_stream(server.addr(ListenerKind::Ws)).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&read_until_closed(&mut stream, TIMEOUT).await).into_owned()
}

#[tokio::test]
async fn invalid_websocket_upgrades_get_an_http_error_and_are_closed() {
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Ws]).start();
    let mut other = bystander(&server, "ws-bystander").await;

    // A plain GET without Upgrade: 400 [RFC 6455 4.2.1].
    let response = upgrade_response(&server, "GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(
        response.starts_with("HTTP/1.1 400 "),
        "expected 400, got {response:?}"
    );

    // An upgrade with a key that is not 16 bytes of base64: 400.
    let response = upgrade_response(
        &server,
        "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 400 "),
        "expected 400, got {response:?}"
    );

    // A good upgrade on a path the listener does not serve: 404.
    let response = upgrade_response(
        &server,
        "GET /elsewhere HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 404 "),
        "expected 404, got {response:?}"
    );
    other.round_trip("bad/ws").await;
}

#[tokio::test]
async fn websocket_text_frame_is_closed_with_1003_mqtt_6_0_0_1() {
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Ws]).start();
    let mut other = bystander(&server, "text-bystander").await;

    // [MQTT-6.0.0-1]: MQTT travels in binary frames; a text frame closes the
    // connection, with close code 1003 (unsupported data) [RFC 6455 7.4.1].
    let mut ws = WsClient::upgrade(server.addr(ListenerKind::Ws), WS_PATH).await;
    let connect = raw::encode(
        &Packet::Connect(Box::new(raw::connect_packet(V5, "texter"))),
        V5,
    );
    ws.send_raw(&ws::client_frame(true, ws::opcode::TEXT, &connect))
        .await;
    let close = ws.recv_frame().await.expect("a close frame");
    assert_eq!(close.opcode, ws::opcode::CLOSE, "{close:?}");
    assert_eq!(close.payload[..2], 1003u16.to_be_bytes(), "{close:?}");
    assert_eq!(ws.recv_frame().await, None, "the connection stays open");
    other.round_trip("bad/text").await;
}

#[tokio::test]
async fn silent_tls_and_websocket_handshakes_are_closed_after_the_handshake_timeout() {
    let server = Setup::new(&[ListenerKind::Mqtt, ListenerKind::Mqtts, ListenerKind::Ws])
        .limits(|l| l.tls_handshake_timeout_secs = Some(1))
        .start();
    let mut other = bystander(&server, "handshake-bystander").await;

    // Connections that never finish their handshake must not be kept forever.
    for kind in [ListenerKind::Mqtts, ListenerKind::Ws] {
        let mut stream = raw_stream(server.addr(kind)).await;
        let started = Instant::now();
        let reply = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(reply.is_empty(), "{kind}: got {reply:02x?}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{kind}: closed after {:?}, before the 1 s handshake timeout",
            started.elapsed()
        );
    }
    other.round_trip("bad/handshake").await;
}

/// A client that overruns the Receive Maximum and keeps writing gets DISCONNECT 0x93
/// (section 4.9, [MQTT-3.3.4-7]), not a TCP reset: the broker half-closes, then
/// reads and discards the client's input until the client closes (a lingering
/// close). Closed with unread input, the socket would answer the client's next
/// write with a reset, and a client that writes before it reads (as simple clients
/// and test suites do) sees "connection reset" and never the DISCONNECT.
#[tokio::test]
async fn a_client_that_keeps_writing_gets_its_disconnect_not_a_reset() {
    use mqtt_proto::{Decoder, PacketId};
    use tokio::io::AsyncReadExt;
    let server = Setup::new(&[ListenerKind::Mqtt])
        .limits(|l| l.receive_maximum = std::num::NonZeroU16::new(2))
        .start();
    let addr = server.addr(ListenerKind::Mqtt);
    let mut other = bystander(&server, "overrun-bystander").await;
    // Three QoS 2 messages never released: the third is one too many. Then 700 KB
    // of QoS 0 messages (within the broker's lingering bound of 1 MiB), more than
    // the sockets' buffers hold while nobody reads them.
    let mut burst = bytes::BytesMut::new();
    for id in 1..=3 {
        let p = raw::publish_packet("t", b"x", QoS::ExactlyOnce, false, PacketId::new(id));
        burst.extend_from_slice(&raw::encode(&Packet::Publish(p), V5));
    }
    let flood = raw::publish_packet("t", &[b'f'; 1000], QoS::AtMostOnce, false, None);
    let flood = raw::encode(&Packet::Publish(flood), V5);
    for round in 0..5 {
        let client = RawClient::connect(addr, V5, &format!("overrun-{round}")).await;
        let mut stream = client.into_stream();
        brokk_e2e::within("writing", async {
            stream.write_all(&burst).await.expect("the overrun");
            for i in 0..700 {
                if let Err(e) = stream.write_all(&flood).await {
                    panic!("round {round}: write {i} after the overrun failed: {e}");
                }
            }
        })
        .await;
        // Then read, as such a client does: the DISCONNECT, then the end.
        let mut decoder = Decoder::with_version(V5, u32::MAX);
        let mut input = bytes::BytesMut::new();
        let mut got = Vec::new();
        let mut end = None;
        brokk_e2e::within("the DISCONNECT and the end of the stream", async {
            loop {
                input.reserve(4096);
                match stream.read_buf(&mut input).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        end = Some(e);
                        break;
                    }
                }
                while let Ok(Some(p)) = decoder.decode(&mut input) {
                    got.push(p);
                }
                if got.iter().any(|p| matches!(p, Packet::Disconnect(_))) {
                    break;
                }
            }
        })
        .await;
        let disconnect = got.iter().find_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason_code),
            _ => None,
        });
        assert_eq!(
            disconnect,
            Some(ReasonCode::ReceiveMaximumExceeded),
            "round {round}: got {got:?}, then {end:?}"
        );
    }
    other.round_trip("bad/overrun").await;
}
