//! Every broker limit the operator may set, defined once: the config key, what it
//! means, its range, how it reaches the core, and where its default comes from.
//!
//! The `limits!` table below generates the `[limits]` section of the config file
//! ([`Limits`], parsed with serde), the checks of their ranges
//! ([`Limits::out_of_range`]), the mapping onto `broker_state::Config`
//! ([`Limits::apply_to`]) and the reference ([`table`]: key, documentation,
//! default, range). The core's defaults stay in `broker_state::Config::default()`
//! (embedders use them without this crate); the table reads them from there, so
//! they are written in one place. `brokk.example.toml` is checked against the
//! table by a test: every key, with its true default.

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use broker_state::{Config as CoreConfig, OverflowPolicy};
use serde::Deserialize;

use crate::config::OfflineOverflow;

/// The largest packet MQTT can express (Remaining Length 268,435,455 + 5 bytes of
/// fixed header).
pub const MQTT_MAX_PACKET_SIZE: u32 = 268_435_460;

/// One limit, as the reference lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitInfo {
    /// The key under `[limits]`.
    pub key: &'static str,
    /// What it means (the doc comment of its field).
    pub doc: &'static str,
    /// The default as the config file would write it; `None` where the default is
    /// "unset" (no limit, or nothing given).
    pub default: Option<String>,
    /// The accepted range of a number, inclusive, where it is narrower than its type.
    pub range: Option<(u64, u64)>,
}

/// A limit's value as a number, for range checks (`None` for the others).
pub trait AsNumber {
    /// The value as an unsigned number, if it is one.
    fn as_number(&self) -> Option<u64>;
}

macro_rules! numbers {
    ($($t:ty => $conv:expr),* $(,)?) => {
        $(impl AsNumber for $t {
            fn as_number(&self) -> Option<u64> {
                #[allow(clippy::redundant_closure_call)]
                Some(($conv)(*self))
            }
        })*
    };
}
numbers!(
    u16 => u64::from,
    u32 => u64::from,
    u64 => |v| v,
    NonZeroU16 => |v: NonZeroU16| u64::from(v.get()),
    NonZeroU32 => |v: NonZeroU32| u64::from(v.get()),
);
impl AsNumber for bool {
    fn as_number(&self) -> Option<u64> {
        None
    }
}
impl AsNumber for String {
    fn as_number(&self) -> Option<u64> {
        None
    }
}
impl AsNumber for OfflineOverflow {
    fn as_number(&self) -> Option<u64> {
        None
    }
}

/// The table: for each limit its doc comment, `key: type`, its default (from the
/// core's config, or a value of the adapter's), an optional range, and how a value
/// set in the file reaches the core's config (`|_, _| {}` for the adapter's own).
macro_rules! limits {
    ($(
        $(#[doc = $doc:literal])*
        $key:ident: $ty:ty,
        default = $default:expr,
        range = $range:expr,
        apply = $apply:expr;
    )*) => {
        /// Every broker limit the operator may set (the `[limits]` table). `None`
        /// means the default; [`table`] lists them all with their defaults.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Limits {
            $(
                $(#[doc = $doc])*
                pub $key: Option<$ty>,
            )*
        }

        impl Limits {
            /// Sets every limit given in the file on the core's config; the others
            /// keep the core's defaults.
            pub fn apply_to(&self, core: &mut CoreConfig) {
                $(
                    if let Some(v) = &self.$key {
                        let apply: fn(&mut CoreConfig, $ty) = $apply;
                        apply(core, v.clone());
                    }
                )*
            }

            /// The first limit set outside its range: key, value, min, max.
            pub fn out_of_range(&self) -> Option<(&'static str, u64, u64, u64)> {
                $(
                    let range: Option<(u64, u64)> = $range;
                    if let (Some(v), Some((min, max))) =
                        (self.$key.as_ref().and_then(AsNumber::as_number), range)
                    {
                        if v < min || v > max {
                            return Some((stringify!($key), v, min, max));
                        }
                    }
                )*
                None
            }
        }

        /// Every limit: key, documentation, default, range, in the file's order.
        pub fn table() -> Vec<LimitInfo> {
            let core = CoreConfig::default();
            vec![$(
                LimitInfo {
                    key: stringify!($key),
                    doc: concat!($($doc, "\n"),*),
                    default: {
                        let default: fn(&CoreConfig) -> Option<String> = $default;
                        default(&core)
                    },
                    range: $range,
                },
            )*]
        }
    };
}

fn usize_of(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn usize_of64(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn some<T: ToString>(v: T) -> Option<String> {
    Some(v.to_string())
}

limits! {
    /// Largest MQTT packet accepted or sent, in bytes (the v5 Maximum Packet Size).
    max_packet_size: NonZeroU32,
    default = |c| some(c.max_packet_size),
    range = Some((1, u64::from(MQTT_MAX_PACKET_SIZE))),
    apply = |c, v| c.max_packet_size = v.get();

    /// Largest Keep Alive a client may ask for, in seconds; larger requests get the
    /// v5 Server Keep Alive, and v3.1.1 clients asking for more (or 0) are refused.
    max_keep_alive: u16,
    default = |c| some(c.max_keep_alive),
    range = None,
    apply = |c, v| c.max_keep_alive = v;

    /// Seconds a new connection has to send CONNECT (a zero timeout would drop
    /// every connection before it could say anything).
    connect_timeout_secs: u64,
    default = |c| some(c.connect_timeout.as_secs()),
    range = Some((1, 3600)),
    apply = |c, v| c.connect_timeout = Duration::from_secs(v);

    /// Seconds a new TLS connection has to finish its handshake.
    tls_handshake_timeout_secs: u64,
    default = |_| some(crate::server::DEFAULT_HANDSHAKE_TIMEOUT.as_secs()),
    range = Some((1, 3600)),
    apply = |_, _| {};

    /// Password verifications (Argon2, ~13 ms and 19 MiB each) running at once, at
    /// most; further logins wait in line. Unset: the number of CPUs.
    max_verifications_in_flight: NonZeroU32,
    default = |_| None,
    range = Some((1, 1024)),
    apply = |_, _| {};

    /// Milliseconds a plain-TCP connection must stay idle, at least, before it
    /// gives up its task (the parking lot's sweep tick).
    park_idle_ms: u64,
    default = |_| some(crate::park::PARK_TICK.as_millis()),
    range = Some((10, 3_600_000)),
    apply = |_, _| {};

    /// Open connections across all listeners.
    max_connections: u32,
    default = |c| some(c.max_connections),
    range = None,
    apply = |c, v| c.max_connections = usize_of(v);

    /// Sessions, connected or not.
    max_sessions: u32,
    default = |c| some(c.max_sessions),
    range = None,
    apply = |c, v| c.max_sessions = usize_of(v);

    /// Subscriptions one session may hold.
    max_subscriptions_per_session: u32,
    default = |c| some(c.max_subscriptions_per_session),
    range = None,
    apply = |c, v| c.max_subscriptions_per_session = usize_of(v);

    /// Subscriptions in the broker, all sessions together: what bounds their
    /// memory; beyond it a SUBSCRIBE gets Quota exceeded (0x97).
    max_subscriptions: u32,
    default = |c| some(c.max_subscriptions),
    range = None,
    apply = |c, v| c.max_subscriptions = usize_of(v);

    /// Retained messages across all topics.
    max_retained_messages: u32,
    default = |c| some(c.max_retained_messages),
    range = None,
    apply = |c, v| c.max_retained_messages = usize_of(v);

    /// Bytes of all retained messages together.
    max_retained_bytes: u64,
    default = |c| some(c.max_retained_bytes),
    range = None,
    apply = |c, v| c.max_retained_bytes = usize_of64(v);

    /// Longest topic name or filter, in bytes.
    max_topic_length: u16,
    default = |c| some(c.max_topic_length),
    range = None,
    apply = |c, v| c.max_topic_length = usize::from(v);

    /// Most `/`-separated levels in a topic name or filter.
    max_topic_levels: u16,
    default = |c| some(c.max_topic_levels),
    range = None,
    apply = |c, v| c.max_topic_levels = usize::from(v);

    /// Longest client id (Event Grid's session name), in bytes.
    max_client_id_length: u16,
    default = |c| some(c.max_client_id_length),
    range = None,
    apply = |c, v| c.max_client_id_length = usize::from(v);

    /// Most user properties on one packet.
    max_user_properties: u16,
    default = |c| some(c.max_user_properties),
    range = None,
    apply = |c, v| c.max_user_properties = usize::from(v);

    /// The broker's v5 Receive Maximum: QoS 1/2 publishes a client may have
    /// unacknowledged.
    receive_maximum: NonZeroU16,
    default = |c| some(c.receive_maximum),
    range = None,
    apply = |c, v| c.receive_maximum = v.get();

    /// QoS 1/2 publishes in flight towards an MQTT 3.1.1 client, which cannot state
    /// a Receive Maximum of its own.
    max_inflight_v3: NonZeroU16,
    default = |c| some(c.max_inflight_v3),
    range = None,
    apply = |c, v| c.max_inflight_v3 = v.get();

    /// The broker's v5 Topic Alias Maximum (0 turns topic aliases from clients off).
    topic_alias_maximum: u16,
    default = |c| some(c.topic_alias_maximum),
    range = None,
    apply = |c, v| c.topic_alias_maximum = v;

    /// Session expiry, in seconds, of MQTT 3.1.1 clients that connect with clean
    /// session 0, which have no way to ask for one.
    default_session_expiry_secs: u32,
    default = |c| some(c.default_session_expiry),
    range = None,
    apply = |c, v| c.default_session_expiry = v;

    /// Largest session expiry a client may ask for, in seconds.
    max_session_expiry_secs: u32,
    default = |c| some(c.max_session_expiry),
    range = None,
    apply = |c, v| c.max_session_expiry = v;

    /// Sessions one authentication name may hold at once. Unset: no limit.
    max_sessions_per_authentication_name: u32,
    default = |c| c.max_sessions_per_authentication_name.map(|v| v.to_string()),
    range = None,
    apply = |c, v| c.max_sessions_per_authentication_name = Some(usize_of(v));

    /// Messages queued for a session while its client is offline.
    offline_queue_messages: u32,
    default = |c| some(c.offline_queue.messages),
    range = None,
    apply = |c, v| c.offline_queue.messages = usize_of(v);

    /// Bytes queued for a session while its client is offline.
    offline_queue_bytes: u64,
    default = |c| some(c.offline_queue.bytes),
    range = None,
    apply = |c, v| c.offline_queue.bytes = usize_of64(v);

    /// Messages queued beyond the in-flight window while the client is online.
    online_queue_messages: u32,
    default = |c| some(c.online_queue.messages),
    range = None,
    apply = |c, v| c.online_queue.messages = usize_of(v);

    /// Bytes queued beyond the in-flight window while the client is online.
    online_queue_bytes: u64,
    default = |c| some(c.online_queue.bytes),
    range = None,
    apply = |c, v| c.online_queue.bytes = usize_of64(v);

    /// Memory of packets waiting to be written to one connection; QoS 0 messages
    /// beyond it are dropped for that connection.
    outbound_buffer_bytes: u64,
    default = |c| some(c.outbound_buffer_bytes),
    range = None,
    apply = |c, v| c.outbound_buffer_bytes = usize_of64(v);

    /// Output beyond `outbound_buffer_bytes`, all connections together: a burst a
    /// subscriber that falls behind for a moment may hold before its QoS 0 messages
    /// are dropped.
    outbound_burst_bytes: u64,
    default = |c| some(c.outbound_burst_bytes),
    range = None,
    apply = |c, v| c.outbound_burst_bytes = usize_of64(v);

    /// What happens when an offline session's queue is full.
    offline_overflow: OfflineOverflow,
    default = |c| Some(format!("{:?}", OfflineOverflow::from_core(c.offline_overflow).as_str())),
    range = None,
    apply = |c, v| c.offline_overflow = v.to_core();

    /// Prefix of the v5 Response Information given to clients that request it;
    /// unset: none is given.
    response_information_prefix: String,
    default = |c| c.response_information_prefix.as_ref().map(|p| format!("{p:?}")),
    range = None,
    apply = |c, v| c.response_information_prefix = Some(v);

    /// Whether retained messages are supported.
    retain_available: bool,
    default = |c| some(c.retain_available),
    range = None,
    apply = |c, v| c.retain_available = v;

    /// Whether subscriptions may use `+` and `#`.
    wildcard_subscriptions: bool,
    default = |c| some(c.wildcard_subscriptions),
    range = None,
    apply = |c, v| c.wildcard_subscriptions = v;

    /// Whether `$share/` subscriptions are supported.
    shared_subscriptions: bool,
    default = |c| some(c.shared_subscriptions),
    range = None,
    apply = |c, v| c.shared_subscriptions = v;

    /// Whether v5 subscription identifiers are supported.
    subscription_identifiers: bool,
    default = |c| some(c.subscription_identifiers),
    range = None,
    apply = |c, v| c.subscription_identifiers = v;
}

impl OfflineOverflow {
    fn to_core(self) -> OverflowPolicy {
        match self {
            OfflineOverflow::EndSession => OverflowPolicy::EndSession,
            OfflineOverflow::DropOldest => OverflowPolicy::DropOldest,
            OfflineOverflow::DropNewest => OverflowPolicy::DropNewest,
        }
    }

    fn from_core(p: OverflowPolicy) -> Self {
        match p {
            OverflowPolicy::EndSession => OfflineOverflow::EndSession,
            OverflowPolicy::DropOldest => OfflineOverflow::DropOldest,
            OverflowPolicy::DropNewest => OfflineOverflow::DropNewest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example config lists every limit with its true default (or says it is
    /// unset): the table is the reference, the example may not drift from it.
    #[test]
    fn the_example_config_lists_every_limit_with_its_default() {
        let example = include_str!("../../brokk.example.toml");
        let section = example
            .split("\n[limits]\n")
            .nth(1)
            .expect("brokk.example.toml has a [limits] section");
        let section = section.split("\n[").next().unwrap_or(section);
        for info in table() {
            let line = section
                .lines()
                .find(|l| {
                    l.strip_prefix("# ")
                        .and_then(|l| l.strip_prefix(info.key))
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
                .unwrap_or_else(|| panic!("brokk.example.toml: [limits] lacks {}", info.key));
            match &info.default {
                Some(default) => {
                    let shown = line
                        .split_once('=')
                        .map(|(_, v)| v.trim_start())
                        .unwrap_or_default();
                    let shown = shown.split("  #").next().unwrap_or(shown).trim_end();
                    let shown = shown.split(" #").next().unwrap_or(shown).trim_end();
                    assert_eq!(shown, default, "brokk.example.toml: {line:?}");
                }
                None => assert!(
                    line.contains("default: unset"),
                    "brokk.example.toml: {line:?} shows a value for {}, whose default is unset: \
                     say 'default: unset' on the line",
                    info.key
                ),
            }
        }
    }

    #[test]
    fn every_limit_reaches_the_core() {
        // Set every core-bound limit to a value other than its default and see that
        // the core's config changes (the adapter's own limits leave it alone).
        let text = "max_packet_size = 1000\nmax_keep_alive = 30\nconnect_timeout_secs = 3\n\
            max_connections = 5\nmax_sessions = 6\nmax_subscriptions_per_session = 7\n\
            max_subscriptions = 8\nmax_retained_messages = 9\nmax_retained_bytes = 10\n\
            max_topic_length = 11\nmax_topic_levels = 12\nmax_client_id_length = 13\n\
            max_user_properties = 14\nreceive_maximum = 15\nmax_inflight_v3 = 16\n\
            topic_alias_maximum = 17\ndefault_session_expiry_secs = 18\n\
            max_session_expiry_secs = 19\nmax_sessions_per_authentication_name = 20\n\
            offline_queue_messages = 21\noffline_queue_bytes = 22\n\
            online_queue_messages = 23\nonline_queue_bytes = 24\noutbound_buffer_bytes = 25\n\
            outbound_burst_bytes = 26\n\
            offline_overflow = \"drop-oldest\"\nresponse_information_prefix = \"r/\"\n\
            retain_available = false\nwildcard_subscriptions = false\n\
            shared_subscriptions = false\nsubscription_identifiers = false\n";
        let limits: Limits = toml::from_str(text).expect("valid limits");
        let mut core = CoreConfig::default();
        limits.apply_to(&mut core);
        let expected = CoreConfig {
            max_packet_size: 1000,
            max_keep_alive: 30,
            connect_timeout: Duration::from_secs(3),
            max_connections: 5,
            max_sessions: 6,
            max_subscriptions_per_session: 7,
            max_subscriptions: 8,
            max_retained_messages: 9,
            max_retained_bytes: 10,
            max_topic_length: 11,
            max_topic_levels: 12,
            max_client_id_length: 13,
            max_user_properties: 14,
            receive_maximum: 15,
            max_inflight_v3: 16,
            topic_alias_maximum: 17,
            default_session_expiry: 18,
            max_session_expiry: 19,
            max_sessions_per_authentication_name: Some(20),
            offline_queue: broker_state::QueueLimits {
                messages: 21,
                bytes: 22,
            },
            online_queue: broker_state::QueueLimits {
                messages: 23,
                bytes: 24,
            },
            outbound_buffer_bytes: 25,
            outbound_burst_bytes: 26,
            offline_overflow: OverflowPolicy::DropOldest,
            response_information_prefix: Some("r/".into()),
            retain_available: false,
            wildcard_subscriptions: false,
            shared_subscriptions: false,
            subscription_identifiers: false,
            store_effects: false,
            lifecycle_events: false,
            cluster: false,
        };
        assert_eq!(core, expected);
    }

    #[test]
    fn ranges_are_checked_with_the_key() {
        let limits: Limits = toml::from_str("park_idle_ms = 5\n").expect("a number");
        assert_eq!(
            limits.out_of_range(),
            Some(("park_idle_ms", 5, 10, 3_600_000))
        );
        let limits: Limits = toml::from_str("connect_timeout_secs = 10\n").expect("a number");
        assert_eq!(limits.out_of_range(), None);
    }
}
