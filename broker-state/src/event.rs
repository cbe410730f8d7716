//! What goes in besides packets (time, peers) and what comes out besides bytes.

use std::time::Instant;

use mqtt_proto::{
    DecodeError, MqttString, Packet, ProtocolVersion, Publish, ReasonCode, SubscriptionOptions,
    TopicFilter, TopicName,
};

use crate::ids::ConnId;

/// The time of an input: the monotonic instant that drives timers, and the wall
/// clock (milliseconds since the Unix epoch) for deadlines that must survive a
/// restart. The core reads neither clock; the caller supplies both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time, milliseconds since 1970-01-01T00:00:00Z.
    pub unix_ms: u64,
}

impl Now {
    /// Bundles both clocks.
    pub fn new(instant: Instant, unix_ms: u64) -> Self {
        Now { instant, unix_ms }
    }

    /// `self` moved forward by `d` on both clocks (simulations and tests).
    pub fn after(self, d: core::time::Duration) -> Now {
        Now {
            instant: self.instant + d,
            unix_ms: self.unix_ms + d.as_millis() as u64,
        }
    }
}

/// How a connection reached the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    WebSocket,
    /// MQTT over WebSocket over TLS.
    SecureWebSocket,
    /// In-process (tests, embedding).
    Memory,
}

/// What the adapter knows about a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Transport.
    pub transport: Transport,
    /// Listener name or address, for logs (shared by the listener's connections).
    pub listener: std::sync::Arc<str>,
    /// Remote address as text, for logs and the authentication hook. A boxed
    /// `str`: 16 bytes in every connection, not a `String`'s 24.
    pub remote: Box<str>,
    /// The certificate chain the client presented in the TLS handshake, if any.
    /// The core only carries it to the authentication question (and the
    /// synchronous hook); checking it is the authenticator's work.
    pub certificates: Option<std::sync::Arc<CertificateChain>>,
}

/// A client's certificate chain as sent in the TLS handshake: DER, the client's
/// own certificate first. Boxed behind an `Arc` in [`PeerInfo`] so that a
/// connection without one pays a pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateChain {
    /// DER-encoded certificates, leaf first.
    pub der: Vec<bytes::Bytes>,
}

impl CertificateChain {
    /// The client's own certificate (the chain's first).
    pub fn leaf(&self) -> Option<&[u8]> {
        self.der.first().map(|c| &c[..])
    }
}

impl PeerInfo {
    /// A peer for tests and in-process clients.
    pub fn memory(name: &str) -> Self {
        PeerInfo {
            transport: Transport::Memory,
            listener: "memory".into(),
            remote: name.into(),
            certificates: None,
        }
    }
}

/// An output of the broker other than bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection has bytes to send: call [`crate::Broker::poll_transmit`] while
    /// the transport is writable until it returns 0. Emitted when the connection's
    /// output goes from empty to non-empty.
    Transmit(ConnId),
    /// A CONNECT was accepted (CONNACK 0x00 is queued). For logs and metrics.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Client identifier (assigned by the broker if the client sent none).
        client_id: MqttString,
        /// Protocol version.
        protocol: ProtocolVersion,
        /// Whether an existing session was resumed.
        session_present: bool,
    },
    /// Close the transport: first write out what `poll_transmit` still yields (a
    /// CONNACK or DISCONNECT with the reason), then close, then call
    /// [`crate::Broker::handle_closed`]. The broker has already finished with the
    /// connection (its will, if due, is published).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why: Success for a normal DISCONNECT by the client, otherwise the reason
        /// code sent (5.0) or that would have been sent (3.1.1).
        reason: ReasonCode,
    },
    /// The broker ended a session on its own, not at its client's request: for logs
    /// and metrics (a client learns of it only from Session Present 0).
    SessionEnded {
        /// The session's client identifier.
        client_id: MqttString,
        /// Why.
        reason: SessionEnd,
        /// Messages that were queued for it and are gone with it.
        queued_messages: usize,
        /// Their bytes (topic, payload and properties).
        queued_bytes: usize,
    },
    /// Who is this client? Answer with [`crate::Broker::handle_auth_answer`] (only
    /// with [`crate::Broker::set_external_authentication`]; see
    /// [`crate::authentication`]). Boxed: rare next to `Transmit`.
    Authenticate(Box<crate::AuthQuestion>),
    /// A durable change for the store (only when `Config::store_effects` is set).
    /// Boxed: store operations are rare, and every other event stays small.
    Store(Box<StoreOp>),
    /// A client session connected or disconnected (Event Grid's
    /// `MQTTClientSessionConnected` / `MQTTClientSessionDisconnected`); only when
    /// `Config::lifecycle_events` is set. The adapter may publish it with
    /// [`crate::Broker::publish_from_broker`]. Boxed: rare next to `Transmit`.
    Lifecycle(Box<LifecycleEvent>),
    /// Work for the other nodes of a cluster (only when `Config::cluster` is set):
    /// interest to announce or withdraw, a message to forward. See
    /// [`ClusterOp`].
    Cluster(ClusterOp),
}

/// What a node of a cluster asks of the transport that joins it to the others
/// (the adapter's `brokk-cluster`). The core does no I/O: it says where its
/// subscribers are and what was published here, and takes what the other nodes
/// publish as input ([`crate::Broker::handle_cluster_publish`],
/// [`crate::Broker::handle_cluster_retained`],
/// [`crate::Broker::handle_session_claimed`]).
///
/// The same seam can carry shards of one process (a core per CPU): a place that a
/// filter's subscribers live in, whether another node or another core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOp {
    /// This node's first subscription to `filter` appeared (`on`), or its last
    /// one went (`!on`). For a shared subscription the filter is the whole
    /// `$share/{group}/{filter}`, and the change is the group's first or last
    /// local member: each message of a shared subscription goes to one member in
    /// the whole cluster, so a shared group's messages come back to this node
    /// through the transport (as [`crate::Broker::handle_cluster_publish`] with
    /// the group) rather than being delivered where they were published.
    Interest {
        /// The filter (owned: it outlives any read buffer).
        filter: TopicFilter,
        /// Interest begins (true) or ends (false).
        on: bool,
    },
    /// A message accepted on this node (from a client, a will, or the broker):
    /// the other nodes deliver it to their subscribers. `retain` is as
    /// published: a retained message (or an empty one that clears) is also for
    /// the cluster's retained store. Properties are as the receivers should see
    /// them (no topic alias, no subscription identifiers).
    ///
    /// A QoS 1 or 2 forward is numbered with the store effects
    /// ([`crate::Broker::store_effects_emitted`] counts it): the publisher's
    /// PUBACK or PUBREC waits, as for a durable message, until the adapter says
    /// with [`crate::Broker::handle_store_committed`] that everything up to its
    /// number is done, here meaning that the cluster's transport has it: kept
    /// durably for each of `nodes` (QoS 1 and 2), flushed to it (QoS 0 and
    /// shared groups'). So a node that dies after acknowledging a message has
    /// already passed it on, and one that dies before its subscribers got it
    /// finds it waiting.
    Forward {
        /// The message.
        publish: Box<Publish>,
        /// The other nodes with a non-shared filter matching the topic (as
        /// [`crate::Broker::handle_remote_interest`] numbered them), each once:
        /// each gets one copy ([`crate::Broker::handle_cluster_delivery`]).
        nodes: Vec<u32>,
        /// A shared group matches, here or on another node: the transport picks
        /// a node with a member ([`crate::Broker::handle_cluster_publish`]).
        shared: bool,
    },
    /// A client authenticated here and wants its session: the transport takes
    /// the session over for this node (a compare-and-set on its owner), asks the
    /// node that held it to let it go (that node closes the old connection with
    /// 0x8E and hands its last changes to the cluster's store first), and reads
    /// what the cluster keeps of it. The CONNECT waits (its packets are held)
    /// until [`crate::Broker::handle_session_acquired`] answers with the
    /// `ticket`, or its connect timeout ends it.
    ///
    /// The session's durable changes (`Event::Store`) go to the cluster's store
    /// on a node of a cluster, so a session outlives the node it was on.
    Acquire {
        /// Quote it in the answer.
        ticket: crate::AuthTicket,
        /// The client identifier (as assigned, if the client sent none).
        client_id: MqttString,
        /// The client asked for a new session: what the cluster kept of an
        /// old one is discarded, not read.
        clean_start: bool,
        /// Who the client authenticated as (the session's owner).
        authentication_name: Option<String>,
    },
    /// A session ended on this node (not moved to another one, nor replaced
    /// by a new session of the same client here): the cluster forgets that
    /// this node holds the client identifier, and the count of its owner's
    /// sessions goes down (see [`Acquired::QuotaExceeded`]).
    SessionEnded {
        /// The session's client identifier.
        client_id: MqttString,
        /// Its owner, if it has one.
        authentication_name: Option<String>,
    },
}

/// The answer to [`ClusterOp::Acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The session is this node's now. The records are what the cluster's
    /// store kept of it when another node held it (in the order a store
    /// replays them: its `SessionUpsert` first, then its queued and in-flight
    /// messages and received QoS 2 packet ids); empty when there is none, it
    /// was this node's already, or the client asked for a clean start.
    Session(Vec<StoreOp>),
    /// The cluster could not be asked (NATS unreachable for the connect
    /// timeout): CONNACK 0x88 Server unavailable (3.1.1: 0x03).
    Unavailable,
    /// The client's authentication name owns as many sessions in the whole
    /// cluster as it may (`max_sessions_per_authentication_name`): CONNACK
    /// 0x97 Quota exceeded (3.1.1: 0x03).
    QuotaExceeded,
}

/// A session's connection began or ended: what Event Grid reports as
/// `Microsoft.EventGrid.MQTTClientSessionConnected` and
/// `Microsoft.EventGrid.MQTTClientSessionDisconnected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// Connected, or disconnected and why.
    pub kind: LifecycleKind,
    /// The connection that connected or ended.
    pub conn: ConnId,
    /// The session's client identifier (Event Grid's `clientSessionName`).
    pub client_id: MqttString,
    /// Who the client authenticated as (Event Grid's `clientAuthenticationName`);
    /// `None` for a client without a name (anonymous, no username).
    pub authentication_name: Option<String>,
    /// Orders the events of a session: every event the broker emits has a higher
    /// number than the one before it, whichever session it belongs to. It is
    /// `max(previous + 1, unix_ms * 1000)`, so that it keeps growing across
    /// restarts too (as long as the wall clock does not step back and fewer than a
    /// thousand events a millisecond are emitted on average), and stays below 2^53
    /// (exact in JSON) until the year 2255.
    pub sequence_number: u64,
    /// When it happened: wall clock, milliseconds since the Unix epoch (the
    /// input's [`Now::unix_ms`]).
    pub unix_ms: u64,
}

/// Which lifecycle event, with what only one of them carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleKind {
    /// CONNECT was accepted (CONNACK 0x00 is queued).
    Connected {
        /// Whether an existing session was resumed.
        session_present: bool,
    },
    /// The session's connection ended.
    Disconnected {
        /// Event Grid's name for why.
        reason: DisconnectionReason,
        /// The MQTT reason code of the end: the client's DISCONNECT, or the one
        /// the broker sent (5.0) or would have sent (3.1.1); `None` when the
        /// transport closed without either.
        reason_code: Option<ReasonCode>,
    },
}

impl LifecycleKind {
    /// Event Grid's event type, e.g. `Microsoft.EventGrid.MQTTClientSessionConnected`.
    pub fn event_type(&self) -> &'static str {
        match self {
            LifecycleKind::Connected { .. } => "Microsoft.EventGrid.MQTTClientSessionConnected",
            LifecycleKind::Disconnected { .. } => {
                "Microsoft.EventGrid.MQTTClientSessionDisconnected"
            }
        }
    }
}

/// Why a session's connection ended, in Event Grid's words
/// (`disconnectionReason`). How brokk's ends map onto them is in
/// `broker/events.rs` (`disconnection_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectionReason {
    /// Authentication no longer holds: credentials expired (0xA0), a failed
    /// re-authentication, bad credentials (0x86), a banned client (0x8A), a bad
    /// authentication method (0x8C).
    ClientAuthenticationError,
    /// Not authorized (0x87) for something the client did.
    ClientAuthorizationError,
    /// The client broke the protocol or used what the broker does not support
    /// (malformed packets, protocol errors, invalid topic aliases, packets too
    /// large, ...).
    ClientError,
    /// The client sent DISCONNECT (whatever its reason code).
    ClientInitiatedDisconnect,
    /// The transport closed without DISCONNECT, or the client went silent for
    /// longer than its keep-alive allows (0x8D).
    ConnectionLost,
    /// The client's address is blocked. brokk has no address filter, so it never
    /// reports this (kept for Event Grid's full vocabulary).
    IpForbidden,
    /// The client exceeded a quota (0x97) or a rate (0x96, 0x9F).
    QuotaExceeded,
    /// An error of the broker's own (0x80, 0x83: e.g. the store failed).
    ServerError,
    /// The broker ended the connection on purpose: shutting down (0x8B), busy
    /// (0x89), an administrative action (0x98), another server (0x9C, 0x9D).
    ServerInitiatedDisconnect,
    /// The session's queue overflowed. brokk ends only offline sessions for
    /// that (an online queue drops its oldest QoS 1 message instead), so it
    /// never reports this for a connection (kept for Event Grid's full
    /// vocabulary).
    SessionOverflow,
    /// Another connection with the same client identifier took the session over
    /// (0x8E).
    SessionTakenOver,
}

impl DisconnectionReason {
    /// The name as Event Grid writes it, e.g. `ClientInitiatedDisconnect`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DisconnectionReason::ClientAuthenticationError => "ClientAuthenticationError",
            DisconnectionReason::ClientAuthorizationError => "ClientAuthorizationError",
            DisconnectionReason::ClientError => "ClientError",
            DisconnectionReason::ClientInitiatedDisconnect => "ClientInitiatedDisconnect",
            DisconnectionReason::ConnectionLost => "ConnectionLost",
            DisconnectionReason::IpForbidden => "IpForbidden",
            DisconnectionReason::QuotaExceeded => "QuotaExceeded",
            DisconnectionReason::ServerError => "ServerError",
            DisconnectionReason::ServerInitiatedDisconnect => "ServerInitiatedDisconnect",
            DisconnectionReason::SessionOverflow => "SessionOverflow",
            DisconnectionReason::SessionTakenOver => "SessionTakenOver",
        }
    }
}

impl core::fmt::Display for DisconnectionReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the broker ended a session on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Its offline queue overflowed under `OverflowPolicy::EndSession` (Event Grid's
    /// default).
    QueueOverflow,
    /// Its Session Expiry Interval ran out while it was offline.
    Expired,
}

impl core::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SessionEnd::QueueOverflow => "offline queue overflow",
            SessionEnd::Expired => "session expired",
        })
    }
}

impl Event {
    pub(crate) fn store(op: StoreOp) -> Event {
        Event::Store(Box::new(op))
    }
}

/// An input, mirroring the `handle_*` methods, so that fuzzers and model tests can
/// replay sequences directly through [`crate::Broker::handle`].
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a packet is the common case, not the outlier
pub enum Input {
    /// A connection was accepted; its id is the next one the broker hands out.
    Accept(PeerInfo),
    /// A decoded packet from a connection.
    Packet(ConnId, Packet),
    /// Bytes from a connection failed to decode.
    DecodeError(ConnId, DecodeError),
    /// The transport of a connection closed.
    Closed(ConnId),
    /// Time passed.
    Timeout,
    /// The answer to an authentication question ([`Event::Authenticate`]).
    AuthAnswer(crate::AuthTicket, crate::AuthStep),
    /// Store effects up to this number are durable
    /// ([`crate::Broker::handle_store_committed`]).
    StoreCommitted(u64),
    /// Store effects up to this number failed ([`crate::Broker::handle_store_failed`]).
    StoreFailed(u64),
    /// Another node's message, through one of this node's filters
    /// ([`crate::Broker::handle_cluster_publish`]).
    ClusterPublish(Box<Publish>, TopicFilter),
    /// Another node's message, addressed to this node
    /// ([`crate::Broker::handle_cluster_delivery`]).
    ClusterDelivery(Box<Publish>),
    /// A retained message from the cluster's retained store
    /// ([`crate::Broker::handle_cluster_retained`]).
    ClusterRetained(Box<Publish>),
    /// Another node's interest in a filter begins or ends
    /// ([`crate::Broker::handle_remote_interest`]).
    RemoteInterest(u32, TopicFilter, bool),
    /// A departed node's sessions, now this node's
    /// ([`crate::Broker::handle_sessions_adopted`]).
    SessionsAdopted(Vec<StoreOp>),
    /// Another node took this client's session
    /// ([`crate::Broker::handle_session_claimed`]).
    SessionClaimed(bytes::Bytes),
    /// The cluster's answer to [`ClusterOp::Acquire`]
    /// ([`crate::Broker::handle_session_acquired`]).
    SessionAcquired(crate::AuthTicket, Acquired),
}

/// A message as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The PUBLISH as it will be delivered (no packet id, no topic alias, no
    /// subscription identifiers: those belong to one delivery).
    pub publish: Publish,
    /// Wall-clock expiry, milliseconds since the epoch, from Message Expiry Interval.
    pub expires_at_unix_ms: Option<u64>,
}

/// A session's durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Client identifier (Event Grid's session name).
    pub client_id: MqttString,
    /// Owner.
    pub authentication_name: Option<String>,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// When the session expires if it stays offline (wall clock, ms), `None` while
    /// connected.
    pub expires_at_unix_ms: Option<u64>,
    /// Subscriptions: filter as sent (with any `$share/` prefix), options, identifier.
    pub subscriptions: Vec<(
        TopicFilter,
        SubscriptionOptions,
        Option<core::num::NonZeroU32>,
    )>,
    /// The will of the session's connection, or a will whose delay is running.
    pub will: Option<StoredWill>,
}

/// A will as the store keeps it with its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    /// The will message (topic, payload, QoS, retain, properties).
    pub message: StoredMessage,
    /// Will Delay Interval, seconds.
    pub delay_interval: u32,
    /// When the delay runs out (wall clock, ms): set once the connection is gone.
    /// `None` while connected: a restart then counts as the connection ending.
    pub publish_at_unix_ms: Option<u64>,
}

/// A durable change. The store applies them in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Create or replace a session's record.
    SessionUpsert(SessionRecord),
    /// Forget a session and everything queued for it.
    SessionRemove {
        /// Client identifier.
        client_id: MqttString,
    },
    /// A message queued (or in flight) for a session; `seq` orders them.
    MessageEnqueue {
        /// Client identifier.
        client_id: MqttString,
        /// Per-session sequence number.
        seq: u64,
        /// The message.
        message: StoredMessage,
    },
    /// A queued message went out with `packet_id`: after a restart it is resent
    /// with DUP set and the same packet id [MQTT-4.4.0-1].
    MessageSent {
        /// Client identifier.
        client_id: MqttString,
        /// Its sequence number.
        seq: u64,
        /// The packet id it was sent with.
        packet_id: u16,
    },
    /// QoS 2 out: the receiver sent PUBREC. The message is no longer needed; after a
    /// restart PUBREL is resent for its packet id.
    MessageReleased {
        /// Client identifier.
        client_id: MqttString,
        /// Its sequence number.
        seq: u64,
    },
    /// A queued message was acknowledged (PUBACK, PUBCOMP), dropped or expired.
    MessageRemove {
        /// Client identifier.
        client_id: MqttString,
        /// Its sequence number.
        seq: u64,
    },
    /// Set the retained message of a topic.
    RetainSet(StoredMessage),
    /// Clear the retained message of a topic.
    RetainClear {
        /// Topic.
        topic: TopicName,
    },
    /// QoS 2 in: a PUBLISH with this packet id was received and acknowledged with
    /// PUBREC; until its PUBREL a resend must not be delivered again.
    Qos2Received {
        /// Client identifier.
        client_id: MqttString,
        /// Packet id.
        packet_id: u16,
    },
    /// QoS 2 in: the PUBREL for the packet id came; the id is free again.
    Qos2Released {
        /// Client identifier.
        client_id: MqttString,
        /// Packet id.
        packet_id: u16,
    },
}
