//! A hand-written MQTT client on a bare `TcpStream`, built on mqtt-proto: it sends
//! exactly the bytes a test asks for (including garbage and half packets), shows
//! every packet the broker sends with its bytes on the wire, and can vanish without
//! DISCONNECT by dropping its socket.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqtt_proto::{
    decode_packet, ConnAck, Connect, FixedHeader, MqttString, Packet, ProtocolVersion, PubAck,
    Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName, Will,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{within, within_for, TIMEOUT};

/// What the next read brought.
#[derive(Debug)]
pub enum Next {
    /// A whole packet, with its bytes as they came off the wire.
    Packet(Box<Packet>, Bytes),
    /// The broker closed the connection (end of stream or reset).
    Closed,
    /// Nothing within the limit.
    TimedOut,
}

/// One client connection.
pub struct RawClient {
    stream: TcpStream,
    version: ProtocolVersion,
    input: BytesMut,
    next_id: u16,
    /// PUBLISH packets that arrived while an acknowledgement was awaited.
    stashed: VecDeque<Publish>,
}

/// A CONNECT for `client_id` with clean start, keep-alive 60 s and nothing else.
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttString::copy_from_str(client_id).expect("a valid client id"),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

/// A will for `topic` with `payload` at QoS 1, sent at once (no will delay).
pub fn will(topic: &str, payload: &str) -> Will {
    Will {
        topic: TopicName::copy_from_str(topic).expect("a valid will topic"),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    }
}

/// A PUBLISH; `packet_id` is needed for QoS 1 and 2.
pub fn publish_packet(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    packet_id: Option<NonZeroU16>,
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::copy_from_str(topic).expect("a valid topic"),
        packet_id,
        properties: Default::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Encodes `packet` as `version` speaks it.
pub fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    packet
        .encode(version, &mut out)
        .unwrap_or_else(|e| panic!("cannot encode {}: {e}", packet.name()));
    out
}

impl RawClient {
    /// A TCP connection on which nothing has been sent yet; `version` is how the
    /// broker's packets will be decoded.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        let stream = within(&format!("TCP connect to {addr}"), TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        RawClient {
            stream,
            version,
            input: BytesMut::new(),
            next_id: 0,
            stashed: VecDeque::new(),
        }
    }

    /// Connects with a plain CONNECT and asserts the broker accepted it.
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> RawClient {
        let (client, connack) =
            RawClient::connect_with(addr, connect_packet(version, client_id)).await;
        assert_eq!(
            connack.reason_code,
            ReasonCode::Success,
            "{client_id}: CONNACK refused the connection: {connack:?}"
        );
        client
    }

    /// Sends `connect` and returns the CONNACK, whatever its reason code.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let mut client = RawClient::open(addr, connect.protocol).await;
        client.send(&Packet::Connect(Box::new(connect))).await;
        let connack = match client.recv().await {
            Packet::ConnAck(c) => c,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        (client, *connack)
    }

    /// The protocol version this client speaks.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// A fresh packet identifier.
    pub fn packet_id(&mut self) -> NonZeroU16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        NonZeroU16::new(self.next_id).expect("never zero")
    }

    /// Encodes and sends one packet.
    pub async fn send(&mut self, packet: &Packet) {
        let bytes = encode(packet, self.version);
        self.send_bytes(&bytes).await;
    }

    /// Sends a packet; an error (the broker is gone) is returned, not a panic.
    pub async fn try_send(&mut self, packet: &Packet) -> std::io::Result<()> {
        let bytes = encode(packet, self.version);
        within("write to the broker", self.stream.write_all(&bytes)).await
    }

    /// Sends bytes as they are.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        within("write to the broker", self.stream.write_all(bytes))
            .await
            .unwrap_or_else(|e| panic!("write to the broker failed: {e}"));
    }

    /// The next packet or the end of the connection, waiting at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(packet) = self.take_packet() {
                return packet;
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
                Err(_) => return Next::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(
                        self.input.is_empty(),
                        "the connection closed in the middle of a packet: {:02x?}",
                        &self.input[..]
                    );
                    return Next::Closed;
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    fn take_packet(&mut self) -> Option<Next> {
        let header = FixedHeader::parse(&self.input).unwrap_or_else(|e| {
            panic!(
                "broker sent a bad fixed header ({e}): {:02x?}",
                &self.input[..]
            )
        })?;
        if self.input.len() < header.packet_len() {
            return None;
        }
        let frame = self.input.split_to(header.packet_len()).freeze();
        let packet = decode_packet(Some(self.version), frame.clone())
            .unwrap_or_else(|e| panic!("broker sent an undecodable packet ({e}): {frame:02x?}"));
        Some(Next::Packet(Box::new(packet), frame))
    }

    /// The next packet; fails the test if the connection closes or nothing arrives
    /// within [`TIMEOUT`].
    pub async fn recv(&mut self) -> Packet {
        match self.next(TIMEOUT).await {
            Next::Packet(p, _) => *p,
            Next::Closed => panic!("the broker closed the connection; expected a packet"),
            Next::TimedOut => panic!("no packet from the broker within {TIMEOUT:?}"),
        }
    }

    /// Like [`RawClient::recv`], with the packet's bytes as sent.
    pub async fn recv_frame(&mut self) -> (Packet, Bytes) {
        match self.next(TIMEOUT).await {
            Next::Packet(p, b) => (*p, b),
            Next::Closed => panic!("the broker closed the connection; expected a packet"),
            Next::TimedOut => panic!("no packet from the broker within {TIMEOUT:?}"),
        }
    }

    /// Waits for the broker to close the connection, at most `limit`; returns the
    /// packets that came first. Fails the test if the connection stays open.
    pub async fn expect_closed(&mut self, limit: Duration) -> Vec<Packet> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Next::Packet(p, _) => before.push(*p),
                Next::Closed => return before,
                Next::TimedOut => {
                    panic!("the broker kept the connection open for {limit:?}; received {before:?}")
                }
            }
        }
    }

    /// Waits for the broker to send DISCONNECT with `reason` and then close the
    /// connection, at most `limit`; fails the test otherwise.
    pub async fn expect_disconnect(&mut self, reason: ReasonCode, limit: Duration) {
        match self.expect_closed(limit).await.as_slice() {
            [Packet::Disconnect(d)] => assert_eq!(d.reason_code, reason),
            other => panic!("expected DISCONNECT {reason:?} then close, got {other:?}"),
        }
    }

    /// Subscribes to `filter` and returns the SUBACK's reason code.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> ReasonCode {
        let packet_id = self.packet_id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(
                TopicFilter::copy_from_str(filter).expect("a valid filter"),
                SubscriptionOptions::qos(qos),
            )],
            properties: Default::default(),
        }))
        .await;
        match self.recv_ack().await {
            Packet::SubAck(ack) if ack.packet_id == packet_id => ack.reason_codes[0],
            other => panic!("expected SUBACK {packet_id}, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS 1 or 2 handshake.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        let packet = publish_packet(topic, payload, qos, retain, packet_id);
        self.send(&Packet::Publish(packet)).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv_ack().await {
                Packet::PubAck(a) if Some(a.packet_id) == packet_id => {}
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                let id = match self.recv_ack().await {
                    Packet::PubRec(a) if Some(a.packet_id) == packet_id => a.packet_id,
                    other => panic!("expected PUBREC, got {other:?}"),
                };
                self.send(&Packet::PubRel(PubAck::new(id))).await;
                match self.recv_ack().await {
                    Packet::PubComp(a) if a.packet_id == id => {}
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// The next packet that is not a PUBLISH; PUBLISH packets met on the way are
    /// kept for [`RawClient::recv_publish`]. (A broker may deliver a client's own
    /// message before acknowledging it.)
    async fn recv_ack(&mut self) -> Packet {
        loop {
            match self.recv().await {
                Packet::Publish(p) => self.stashed.push_back(p),
                other => return other,
            }
        }
    }

    /// The next PUBLISH, acknowledged as its QoS asks.
    pub async fn recv_publish(&mut self) -> Publish {
        let publish = match self.stashed.pop_front() {
            Some(p) => p,
            None => match self.recv().await {
                Packet::Publish(p) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            },
        };
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(PubAck::new(id))).await,
            (QoS::ExactlyOnce, Some(id)) => {
                self.send(&Packet::PubRec(PubAck::new(id))).await;
                match self.recv_ack().await {
                    Packet::PubRel(a) if a.packet_id == id => {}
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(&Packet::PubComp(PubAck::new(id))).await;
            }
            _ => {}
        }
        publish
    }

    /// Subscribes to `topic`, publishes to it at QoS 1 and receives the message back:
    /// proof the broker serves this connection.
    pub async fn round_trip(&mut self, topic: &str) {
        let granted = self.subscribe(topic, QoS::AtLeastOnce).await;
        assert_eq!(granted, ReasonCode::GrantedQoS1, "SUBACK for {topic}");
        let payload = format!("round trip on {topic}");
        self.publish(topic, payload.as_bytes(), QoS::AtLeastOnce, false)
            .await;
        let got = self.recv_publish().await;
        assert_eq!(got.topic.as_str(), topic);
        assert_eq!(&got.payload[..], payload.as_bytes());
    }

    /// Sends DISCONNECT (normal) and closes.
    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(mqtt_proto::Disconnect::new(
            ReasonCode::Success,
        )))
        .await;
        let _ = self.stream.shutdown().await;
    }

    /// Vanishes without DISCONNECT: the socket is dropped, as when a client crashes.
    pub fn kill(self) {
        drop(self.stream);
    }

    /// The socket, for tests that take over the byte stream.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// Reads `stream` until the peer closes it, at most `limit`; returns what came.
/// Fails the test if the stream stays open.
pub async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    within_for(limit, "the broker to close the connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

impl RawClient {
    /// This client's end of the connection: the address the broker sees it at.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .expect("the socket's local address")
    }
}
