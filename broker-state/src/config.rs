//! Broker limits and behaviour switches. Every piece of state a client can grow is
//! bounded by one of these.

use core::time::Duration;

/// What happens when an offline session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// End the session, as Event Grid does (the default).
    #[default]
    EndSession,
    /// Keep the session and drop its oldest queued message.
    DropOldest,
    /// Keep the session and drop the new message.
    DropNewest,
}

/// Limits of one session queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages.
    pub messages: usize,
    /// Bytes of topic + payload + properties.
    pub bytes: usize,
}

/// The broker's configuration. `Config::default()` is a sensible production default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest packet accepted, advertised as Maximum Packet Size (5.0). Default 1 MiB.
    pub max_packet_size: u32,
    /// Largest Keep Alive accepted, in seconds. A 5.0 client asking for more is told
    /// Server Keep Alive; a 3.1.1 client asking for more (or for 0, "no keep-alive")
    /// is refused with return code 0x02, as Mosquitto's `max_keepalive` does.
    /// 65535 (the default) accepts everything.
    pub max_keep_alive: u16,
    /// Time a new connection has to send CONNECT. Default 10 s.
    pub connect_timeout: Duration,
    /// Concurrent network connections. Default 100,000.
    pub max_connections: usize,
    /// Sessions, online and offline. Default 1,000,000.
    pub max_sessions: usize,
    /// Subscriptions per session. Default 1,000,000: no limit of its own, so that
    /// a backend session may hold as many filters as the broker-wide limit allows.
    pub max_subscriptions_per_session: usize,
    /// Subscriptions in the broker, all sessions together: what bounds subscription
    /// memory. A SUBSCRIBE beyond it
    /// gets Quota exceeded (0x97; 0x80 in 3.1.1). Default 1,000,000.
    pub max_subscriptions: usize,
    /// Retained messages in the broker. Default 100,000.
    pub max_retained_messages: usize,
    /// Bytes of retained messages in the broker. Default 64 MiB.
    pub max_retained_bytes: usize,
    /// Bytes in a topic name or filter. Default 1,024.
    pub max_topic_length: usize,
    /// Levels in a topic name or filter. Default 32.
    pub max_topic_levels: usize,
    /// Bytes in a client identifier. Default 256.
    pub max_client_id_length: usize,
    /// User properties in one packet. Default 64.
    pub max_user_properties: usize,
    /// QoS 1/2 publications a 5.0 client may have unacknowledged towards the
    /// broker (Receive Maximum in CONNACK). Default 1,024.
    pub receive_maximum: u16,
    /// Outbound QoS 1/2 window for 3.1.1 clients, which cannot state a Receive
    /// Maximum. Default 1,024.
    pub max_inflight_v3: u16,
    /// Topic aliases a client may set (Topic Alias Maximum in CONNACK). Default 10.
    pub topic_alias_maximum: u16,
    /// Session expiry for 3.1.1 sessions with Clean Session 0, seconds. Default 3,600.
    pub default_session_expiry: u32,
    /// Largest session expiry granted, seconds; 5.0 requests above it are lowered and
    /// CONNACK says so. Default 3,600 (Event Grid's default).
    pub max_session_expiry: u32,
    /// Sessions one authentication name may own, online and offline. `None`: no limit.
    pub max_sessions_per_authentication_name: Option<usize>,
    /// Limits of an offline session's queue (Event Grid: 100 messages / 1 MB).
    pub offline_queue: QueueLimits,
    /// Limits of an online session's queue of QoS 1/2 messages waiting for the
    /// in-flight window. Beyond it the oldest QoS 1 message is dropped.
    pub online_queue: QueueLimits,
    /// Memory of packets waiting to be written to one connection (queue slots and
    /// the message bytes they hold). QoS 0 messages beyond it are dropped for that
    /// connection. Default 1 MiB (about 2,000 small messages: a queued 64-byte
    /// message costs ~540 bytes with its queue slot), so that one read's worth of
    /// publications fanned out to a subscriber that keeps up is never dropped;
    /// 64 stalled subscribers hold at most 64 MiB.
    pub outbound_buffer_bytes: usize,
    /// Output beyond `outbound_buffer_bytes`, all connections together: a
    /// subscriber that falls behind for a moment may hold a burst (QoS 0 is dropped
    /// for it only once this is used up), while the memory of a flood stays bounded
    /// (every connection's own buffer plus this). Default 32 MiB: a burst of 20,000
    /// small messages to one subscriber, or 2,000 of 16 KiB.
    pub outbound_burst_bytes: usize,
    /// What a full offline queue does.
    pub offline_overflow: OverflowPolicy,
    /// Response Information prefix given to 5.0 clients that request it. `None`: not
    /// offered.
    pub response_information_prefix: Option<String>,
    /// Retained messages supported.
    pub retain_available: bool,
    /// Wildcard subscriptions supported.
    pub wildcard_subscriptions: bool,
    /// Shared subscriptions supported.
    pub shared_subscriptions: bool,
    /// Subscription identifiers supported.
    pub subscription_identifiers: bool,
    /// Emit store operations for durable changes ([`crate::StoreOp`]). Off by
    /// default: with the in-memory store there is nothing to persist to.
    pub store_effects: bool,
    /// Emit [`crate::Event::Lifecycle`] when a session's connection begins or
    /// ends (Event Grid's session connected / disconnected events). Off by
    /// default: without it, connecting and disconnecting do no work for them.
    pub lifecycle_events: bool,
    /// This broker is one node of a cluster: it emits [`crate::Event::Cluster`]
    /// (interest and forwarded messages), delivers shared subscriptions only
    /// from what the cluster hands back, and does not answer 0x10 No Matching
    /// Subscribers (the other nodes' subscribers are not known here). Off by
    /// default.
    pub cluster: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_packet_size: 1024 * 1024,
            max_keep_alive: u16::MAX,
            connect_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_sessions: 1_000_000,
            max_subscriptions_per_session: 1_000_000,
            max_subscriptions: 1_000_000,
            max_retained_messages: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_client_id_length: 256,
            max_user_properties: 64,
            receive_maximum: 1024,
            max_inflight_v3: 1024,
            topic_alias_maximum: 10,
            default_session_expiry: 3600,
            max_session_expiry: 3600,
            max_sessions_per_authentication_name: None,
            offline_queue: QueueLimits {
                messages: 100,
                bytes: 1024 * 1024,
            },
            online_queue: QueueLimits {
                messages: 10_000,
                bytes: 16 * 1024 * 1024,
            },
            outbound_buffer_bytes: 1024 * 1024,
            outbound_burst_bytes: 32 * 1024 * 1024,
            offline_overflow: OverflowPolicy::EndSession,
            response_information_prefix: None,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            store_effects: false,
            lifecycle_events: false,
            cluster: false,
        }
    }
}
