//! rumqttc's MQTT 3.1.1 client (`rumqttc::AsyncClient`) and 5.0 client
//! (`rumqttc::v5::AsyncClient`) behind one [`Client`], over TCP, TLS, WebSocket and
//! secure WebSocket.
//!
//! rumqttc only moves bytes while its event loop is polled, so every method polls
//! it until what it waits for happens (a CONNACK, a SUBACK, the acknowledgement of
//! a publish), keeping the messages that arrive meanwhile for [`Client::recv`].

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use adapter_common::config::ListenerKind;
use bytes::Bytes;
use mqtt_proto::{ProtocolVersion, QoS, ReasonCode};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{tokio_rustls::rustls, TlsConfiguration, Transport};

use crate::{within, RunningServer, TIMEOUT};

/// A TLS client config that trusts only the CA certificate at `ca` (the broker's dev
/// CA), with the same ring provider the broker uses.
pub fn tls_client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in adapter_common::tls::read_certs(ca).unwrap_or_else(|e| panic!("{e}")) {
        roots.add(cert).expect("the dev CA certificate parses");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(adapter_common::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    version: ProtocolVersion,
    transport: ListenerKind,
    client_id: String,
    persistent: Option<u32>,
    will: Option<(String, Bytes)>,
    credentials: Option<(String, String)>,
}

impl ClientOptions {
    /// A clean-session client speaking `version` (3.1.1 or 5.0) over `transport`.
    pub fn new(version: ProtocolVersion, transport: ListenerKind, client_id: &str) -> Self {
        assert!(
            matches!(version, ProtocolVersion::V3_1_1 | ProtocolVersion::V5),
            "rumqttc speaks 3.1.1 and 5.0, not {version:?}"
        );
        ClientOptions {
            version,
            transport,
            client_id: client_id.to_owned(),
            persistent: None,
            will: None,
            credentials: None,
        }
    }

    /// A persistent session: clean session 0 (3.1.1), or clean start 0 with this
    /// session expiry (5.0).
    pub fn persistent(mut self, session_expiry_secs: u32) -> Self {
        self.persistent = Some(session_expiry_secs);
        self
    }

    /// A QoS 1 will on `topic`.
    pub fn will(mut self, topic: &str, payload: &str) -> Self {
        self.will = Some((topic.to_owned(), Bytes::copy_from_slice(payload.as_bytes())));
        self
    }

    /// A user name and password.
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some((username.to_owned(), password.to_owned()));
        self
    }
}

/// A message a client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// The RETAIN flag as delivered.
    pub retain: bool,
}

enum Inner {
    V3 {
        client: rumqttc::AsyncClient,
        events: Box<rumqttc::EventLoop>,
    },
    V5 {
        client: rumqttc::v5::AsyncClient,
        events: Box<rumqttc::v5::EventLoop>,
    },
}

/// What a poll of the event loop brought that a helper may wait for.
enum Seen {
    ConnAck {
        session_present: bool,
    },
    SubAck {
        granted: Vec<Option<QoS>>,
    },
    Acked,
    PublishSent,
    DisconnectSent,
    /// A DISCONNECT from the broker (5.0), with its reason code.
    Disconnected(ReasonCode),
    Other,
}

/// A connected rumqttc client of either version.
pub struct Client {
    name: String,
    inner: Inner,
    received: VecDeque<Message>,
}

fn v3_qos(qos: QoS) -> rumqttc::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn from_v3_qos(qos: rumqttc::QoS) -> QoS {
    match qos {
        rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn v5_qos(qos: QoS) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS as Q;
    match qos {
        QoS::AtMostOnce => Q::AtMostOnce,
        QoS::AtLeastOnce => Q::AtLeastOnce,
        QoS::ExactlyOnce => Q::ExactlyOnce,
    }
}

fn from_v5_qos(qos: rumqttc::v5::mqttbytes::QoS) -> QoS {
    use rumqttc::v5::mqttbytes::QoS as Q;
    match qos {
        Q::AtMostOnce => QoS::AtMostOnce,
        Q::AtLeastOnce => QoS::AtLeastOnce,
        Q::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// A reason code from rumqttc's `repr(u8)` enums, which hold the wire values.
fn v5_reason(code: u8) -> ReasonCode {
    ReasonCode::from_u8(code).unwrap_or_else(|| panic!("unknown reason code {code:#04x}"))
}

/// Largest packet the clients send or accept: the broker's default limit (rumqttc's
/// own default is 10 KiB).
const MAX_PACKET_SIZE: u32 = 1024 * 1024;

/// Host and port (TCP, TLS) or URL (WebSocket) for rumqttc, and its transport.
fn endpoint(server: &RunningServer, kind: ListenerKind) -> (String, u16, Transport) {
    let port = server.port(kind);
    let tls = || TlsConfiguration::Rustls(tls_client_config(server.ca_cert()));
    match kind {
        ListenerKind::Mqtt => ("127.0.0.1".to_owned(), port, Transport::Tcp),
        ListenerKind::Mqtts => ("127.0.0.1".to_owned(), port, Transport::Tls(tls())),
        ListenerKind::Ws => (server.ws_url(kind), port, Transport::Ws),
        ListenerKind::Wss => (server.ws_url(kind), port, Transport::Wss(tls())),
        ListenerKind::Http | ListenerKind::Https => {
            panic!("test setup: {kind} listeners speak HTTP, not MQTT")
        }
    }
}

impl Client {
    /// Connects and waits for a successful CONNACK; returns the client and the
    /// CONNACK's session present flag.
    pub async fn connect(server: &RunningServer, options: ClientOptions) -> (Client, bool) {
        let mut client = Client::start(server, options);
        let session_present = client.wait_connack().await;
        (client, session_present)
    }

    /// Connects and returns the event loop's error; fails the test if the broker
    /// accepts the connection. For refused credentials and the like.
    pub async fn connect_refused(server: &RunningServer, options: ClientOptions) -> String {
        let mut client = Client::start(server, options);
        let name = client.name.clone();
        within(&format!("{name}: CONNACK"), async {
            loop {
                match client.poll().await {
                    Ok(Seen::ConnAck { .. }) => {
                        panic!("{name}: the broker accepted the connection")
                    }
                    Ok(_) => {}
                    Err(e) => return e,
                }
            }
        })
        .await
    }

    fn start(server: &RunningServer, o: ClientOptions) -> Client {
        let (host, port, transport) = endpoint(server, o.transport);
        let name = format!("{} ({:?} over {})", o.client_id, o.version, o.transport);
        let inner = match o.version {
            ProtocolVersion::V5 => {
                let mut mo = rumqttc::v5::MqttOptions::new(&o.client_id, host, port);
                mo.set_transport(transport);
                mo.set_keep_alive(Duration::from_secs(60));
                mo.set_connection_timeout(TIMEOUT.as_secs());
                mo.set_max_packet_size(Some(MAX_PACKET_SIZE));
                if let Some(expiry) = o.persistent {
                    mo.set_clean_start(false);
                    mo.set_session_expiry_interval(Some(expiry));
                }
                if let Some((topic, payload)) = &o.will {
                    mo.set_last_will(p5::LastWill::new(
                        topic,
                        payload.clone(),
                        v5_qos(QoS::AtLeastOnce),
                        false,
                        None,
                    ));
                }
                if let Some((user, password)) = &o.credentials {
                    mo.set_credentials(user, password);
                }
                let (client, events) = rumqttc::v5::AsyncClient::new(mo, 16);
                Inner::V5 {
                    client,
                    events: Box::new(events),
                }
            }
            _ => {
                let mut mo = rumqttc::MqttOptions::new(&o.client_id, host, port);
                mo.set_transport(transport);
                mo.set_keep_alive(Duration::from_secs(60));
                let max = MAX_PACKET_SIZE as usize;
                mo.set_max_packet_size(max, max);
                if o.persistent.is_some() {
                    mo.set_clean_session(false);
                }
                if let Some((topic, payload)) = &o.will {
                    mo.set_last_will(rumqttc::LastWill::new(
                        topic,
                        payload.clone(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                    ));
                }
                if let Some((user, password)) = &o.credentials {
                    mo.set_credentials(user, password);
                }
                let (client, events) = rumqttc::AsyncClient::new(mo, 16);
                Inner::V3 {
                    client,
                    events: Box::new(events),
                }
            }
        };
        Client {
            name,
            inner,
            received: VecDeque::new(),
        }
    }

    /// Polls the event loop once; keeps any PUBLISH received.
    async fn poll(&mut self) -> Result<Seen, String> {
        match &mut self.inner {
            Inner::V3 { events, .. } => {
                use rumqttc::{Event, Outgoing, Packet};
                let event = events.poll().await.map_err(|e| format!("{e:?}"))?;
                Ok(match event {
                    Event::Incoming(Packet::ConnAck(ack)) => {
                        if ack.code != rumqttc::ConnectReturnCode::Success {
                            return Err(format!("{:?}", ack.code));
                        }
                        Seen::ConnAck {
                            session_present: ack.session_present,
                        }
                    }
                    Event::Incoming(Packet::SubAck(ack)) => Seen::SubAck {
                        granted: ack
                            .return_codes
                            .into_iter()
                            .map(|c| match c {
                                rumqttc::SubscribeReasonCode::Success(q) => Some(from_v3_qos(q)),
                                rumqttc::SubscribeReasonCode::Failure => None,
                            })
                            .collect(),
                    },
                    Event::Incoming(Packet::Publish(p)) => {
                        self.received.push_back(Message {
                            topic: p.topic,
                            payload: p.payload,
                            qos: from_v3_qos(p.qos),
                            retain: p.retain,
                        });
                        Seen::Other
                    }
                    Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => Seen::Acked,
                    Event::Outgoing(Outgoing::Publish(_)) => Seen::PublishSent,
                    Event::Outgoing(Outgoing::Disconnect) => Seen::DisconnectSent,
                    _ => Seen::Other,
                })
            }
            Inner::V5 { events, .. } => {
                use rumqttc::v5::{ConnectionError, Event, StateError};
                use rumqttc::Outgoing;
                let event = match events.poll().await {
                    Ok(event) => event,
                    // rumqttc reports a DISCONNECT from the broker as an error.
                    Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code,
                        ..
                    })) => return Ok(Seen::Disconnected(v5_reason(reason_code as u8))),
                    Err(e) => return Err(format!("{e:?}")),
                };
                Ok(match event {
                    Event::Incoming(p5::Packet::ConnAck(ack)) => {
                        if ack.code != p5::ConnectReturnCode::Success {
                            return Err(format!("{:?}", ack.code));
                        }
                        Seen::ConnAck {
                            session_present: ack.session_present,
                        }
                    }
                    Event::Incoming(p5::Packet::SubAck(ack)) => Seen::SubAck {
                        granted: ack
                            .return_codes
                            .into_iter()
                            .map(|c| match c {
                                p5::SubscribeReasonCode::Success(q) => Some(from_v5_qos(q)),
                                _ => None,
                            })
                            .collect(),
                    },
                    Event::Incoming(p5::Packet::Publish(p)) => {
                        self.received.push_back(Message {
                            topic: String::from_utf8(p.topic.to_vec())
                                .expect("the broker sent a UTF-8 topic"),
                            payload: p.payload,
                            qos: from_v5_qos(p.qos),
                            retain: p.retain,
                        });
                        Seen::Other
                    }
                    Event::Incoming(p5::Packet::PubAck(_) | p5::Packet::PubComp(_)) => Seen::Acked,
                    Event::Incoming(p5::Packet::Disconnect(d)) => {
                        Seen::Disconnected(v5_reason(d.reason_code as u8))
                    }
                    Event::Outgoing(Outgoing::Publish(_)) => Seen::PublishSent,
                    Event::Outgoing(Outgoing::Disconnect) => Seen::DisconnectSent,
                    _ => Seen::Other,
                })
            }
        }
    }

    /// Polls until `pick` accepts an event, failing the test on a connection error
    /// or after [`TIMEOUT`].
    async fn poll_until<T>(&mut self, what: &str, mut pick: impl FnMut(Seen) -> Option<T>) -> T {
        let label = format!("{}: {what}", self.name);
        within(&label, async {
            loop {
                match self.poll().await {
                    Ok(Seen::Disconnected(code)) => match pick(Seen::Disconnected(code)) {
                        Some(t) => return t,
                        None => panic!("{label}: the broker sent DISCONNECT {code}"),
                    },
                    Ok(seen) => {
                        if let Some(t) = pick(seen) {
                            return t;
                        }
                    }
                    Err(e) => panic!("{label}: connection error: {e}"),
                }
            }
        })
        .await
    }

    async fn wait_connack(&mut self) -> bool {
        self.poll_until("CONNACK", |seen| match seen {
            Seen::ConnAck { session_present } => Some(session_present),
            _ => None,
        })
        .await
    }

    /// Subscribes and waits for the SUBACK; asserts the broker granted `qos`.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        let sent = match &self.inner {
            Inner::V3 { client, .. } => client
                .subscribe(filter, v3_qos(qos))
                .await
                .map_err(|e| e.to_string()),
            Inner::V5 { client, .. } => client
                .subscribe(filter, v5_qos(qos))
                .await
                .map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: subscribe {filter}: {e}", self.name));
        let granted = self
            .poll_until(&format!("SUBACK for {filter}"), |seen| match seen {
                Seen::SubAck { granted } => Some(granted),
                _ => None,
            })
            .await;
        assert_eq!(granted, [Some(qos)], "{}: SUBACK for {filter}", self.name);
    }

    /// Publishes and waits until the publish is on the wire (QoS 0), acknowledged
    /// (QoS 1) or complete (QoS 2).
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let payload = Bytes::copy_from_slice(payload);
        let sent = match &self.inner {
            Inner::V3 { client, .. } => client
                .publish(topic, v3_qos(qos), retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Inner::V5 { client, .. } => client
                .publish(topic, v5_qos(qos), retain, payload)
                .await
                .map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: publish to {topic}: {e}", self.name));
        let done = |seen: Seen| match (qos, seen) {
            (QoS::AtMostOnce, Seen::PublishSent) => Some(()),
            (QoS::AtLeastOnce | QoS::ExactlyOnce, Seen::Acked) => Some(()),
            _ => None,
        };
        self.poll_until(&format!("publish to {topic} at {qos:?}"), done)
            .await;
    }

    /// The next message received, waiting at most [`TIMEOUT`].
    pub async fn recv(&mut self) -> Message {
        match self.try_recv(TIMEOUT).await {
            Some(m) => m,
            None => panic!("{}: no PUBLISH within {TIMEOUT:?}", self.name),
        }
    }

    /// The next message, with a shorter wait: `None` if nothing arrives in `limit`.
    pub async fn try_recv(&mut self, limit: Duration) -> Option<Message> {
        let name = self.name.clone();
        let _ = tokio::time::timeout(limit, async {
            while self.received.is_empty() {
                match self.poll().await {
                    Ok(Seen::Disconnected(code)) => {
                        panic!("{name}: the broker sent DISCONNECT {code}")
                    }
                    Ok(_) => {}
                    Err(e) => panic!("{name}: connection error: {e}"),
                }
            }
        })
        .await;
        self.received.pop_front()
    }

    /// Waits for a DISCONNECT from the broker (5.0 only) and returns its reason code.
    pub async fn recv_disconnect(&mut self) -> ReasonCode {
        self.poll_until("DISCONNECT from the broker", |seen| match seen {
            Seen::Disconnected(code) => Some(code),
            _ => None,
        })
        .await
    }

    /// Polls until the connection fails (the broker closed it) and returns the
    /// error; fails the test if a message or DISCONNECT arrives instead.
    pub async fn connection_error(&mut self) -> String {
        let name = self.name.clone();
        within(&format!("{name}: the connection to end"), async {
            loop {
                match self.poll().await {
                    Ok(Seen::Disconnected(code)) => panic!("{name}: DISCONNECT {code}"),
                    Ok(_) => assert!(self.received.is_empty(), "{name}: {:?}", self.received),
                    Err(e) => return e,
                }
            }
        })
        .await
    }

    /// Sends DISCONNECT (normal disconnection, so no will) and closes the connection.
    pub async fn disconnect(mut self) {
        let sent = match &self.inner {
            Inner::V3 { client, .. } => client.disconnect().await.map_err(|e| e.to_string()),
            Inner::V5 { client, .. } => client.disconnect().await.map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: disconnect: {e}", self.name));
        self.poll_until("DISCONNECT sent", |seen| match seen {
            Seen::DisconnectSent => Some(()),
            _ => None,
        })
        .await;
        // rumqttc reports the DISCONNECT before flushing it; the next poll flushes and
        // ends the loop.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.poll()).await;
    }

    /// Vanishes without DISCONNECT: the event loop and its socket are dropped, as
    /// when the client's process dies.
    pub fn kill(self) {
        drop(self);
    }
}
