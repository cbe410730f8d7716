//! Lifecycle events: client sessions connecting and disconnecting, as Event Grid
//! reports them, published by the broker on `$events/...` and, optionally, POSTed
//! to a webhook as CloudEvents.
//!
//! # Lifecycle events
//!
//! ```toml
//! [lifecycle_events]
//! enabled = true            # publish on $events/clients/<session>/connected|disconnected
//! namespace = "brokk"       # namespaceName in the events and their CloudEvents source
//! webhook_url = "http://127.0.0.1:9100/events"   # optional: POST each event there
//! webhook_queue = 10000     # events waiting for the webhook, at most
//! webhook_timeout_ms = 5000 # one request, from connecting to the end of the answer
//! webhook_retry_base_ms = 1000  # the first retry's wait; each next one doubles it
//! ```
//!
//! **What.** When a client's CONNECT is accepted the broker emits
//! `Microsoft.EventGrid.MQTTClientSessionConnected`; when the connection of a
//! connected session ends, for whatever reason,
//! `Microsoft.EventGrid.MQTTClientSessionDisconnected` with Event Grid's
//! `disconnectionReason`. The core decides the reason
//! ([`broker_state::DisconnectionReason`]):
//!
//! | how the connection ended | reason |
//! |---|---|
//! | the client sent DISCONNECT (any reason code) | `ClientInitiatedDisconnect` |
//! | the transport closed without DISCONNECT | `ConnectionLost` |
//! | nothing received for 1.5 x Keep Alive (0x8D) | `ConnectionLost` |
//! | another connection took the session over (0x8E) | `SessionTakenOver` |
//! | credentials expired (0xA0), re-authentication failed, 0x86, 0x8A, 0x8C | `ClientAuthenticationError` |
//! | not authorized (0x87) | `ClientAuthorizationError` |
//! | quota or rate exceeded (0x97, 0x96, 0x9F) | `QuotaExceeded` |
//! | the broker's own error, e.g. the store failed (0x80, 0x83) | `ServerError` |
//! | shutdown (0x8B), busy (0x89), administrative action (0x98), moved (0x9C, 0x9D) | `ServerInitiatedDisconnect` |
//! | any other violation by the client (malformed packet, protocol error, a packet over its Maximum Packet Size, ...) | `ClientError` |
//!
//! brokk never reports `IpForbidden` (it has no address filter) or
//! `SessionOverflow` (a connected session's full queue drops its oldest QoS 1
//! message; only offline sessions end for overflow, and they have no connection
//! to report).
//!
//! **Payload.** Each event is one CloudEvents 1.0 JSON object (structured mode):
//! `specversion` "1.0", `type` as above, `source` the namespace, `id`
//! `<boot>-<sequenceNumber>` (the boot id is random per server start, so ids are
//! unique across restarts and brokers), `time` (RFC 3339, UTC, milliseconds),
//! `subject` `clients/<authenticationName>/sessions/<sessionName>`
//! (`sessions/<sessionName>` for a client without an authentication name),
//! `datacontenttype` "application/json", `mqttreasoncode` (an extension: the
//! MQTT reason code of the end, when there is one) and `data`:
//! `namespaceName`, `clientAuthenticationName` (null without one),
//! `clientSessionName` (the client id), `sequenceNumber` and, for disconnections,
//! `disconnectionReason`. `sequenceNumber` orders the events of a session: each
//! event has a higher one than every event before it, across connections,
//! sessions of the same name and restarts (see
//! [`broker_state::LifecycleEvent::sequence_number`]).
//!
//! **Topics.** With `enabled`, the broker publishes the JSON on
//! `$events/clients/<session>/connected` and `$events/clients/<session>/disconnected`,
//! QoS 1, not retained, with Content Type `application/cloudevents+json` and
//! Payload Format Indicator 1 (5.0). The session name is the client id, written
//! into one topic level by [`topic_level`]: the bytes `/`, `+`, `#`, `%`, U+0000
//! and a leading `$` become `%2F`, `%2B`, `%23`, `%25`, `%00` and `%24`
//! (percent-encoding, so a consumer decodes the level with any URL decoder);
//! everything else is written as it is. Like every topic starting with `$`, these
//! are matched only by filters whose first level is `$events`, never by `#` or
//! `+/...` [MQTT-4.7.2-1]; under `[authorization] mode = "bindings"` a client
//! needs a subscriber binding whose topic space names `$events/...` to subscribe
//! (a `+` or `#` at the start of a template does not cover it). Events are
//! messages from no client: no publish permission is asked.
//!
//! **Webhook.** With `webhook_url`, every event is also POSTed there with
//! `Content-Type: application/cloudevents+json`, from a thread of its own
//! (`brokk-events`), so a slow or dead webhook never delays the broker: the
//! broker's thread only puts the event in a bounded queue (`webhook_queue`
//! events); when the queue is full the event is dropped and counted. A 2xx answer
//! is success; a transport error, a timeout, 5xx, 408 or 429 is retried after
//! `webhook_retry_base_ms`, then twice that, then four times (four tries in all),
//! and dropped and counted after the last; any other answer is dropped and
//! counted at once. At shutdown the worker gets [`SHUTDOWN_GRACE`] to deliver what
//! is queued (one try each, no retries), and what is left is dropped and counted.
//! [`counters`] counts every outcome: sent, retried, dropped because the queue was
//! full, dropped because the webhook failed. `enabled = false` with a
//! `webhook_url` sends to the webhook only. The settings are read at start; a
//! reload does not change them.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use broker_state::{LifecycleEvent, LifecycleKind};
use bytes::Bytes;
use mqtt_proto::{MqttString, PayloadFormat, PublishProperties, TopicName};
use serde::Deserialize;

use crate::identity::IdentityConfigError;

/// The namespace when the config names none.
pub const DEFAULT_NAMESPACE: &str = "brokk";
/// Events waiting for the webhook, at most, when the config says nothing.
pub const DEFAULT_WEBHOOK_QUEUE: usize = 10_000;
/// The largest `webhook_queue` accepted.
pub const MAX_WEBHOOK_QUEUE: usize = 1_000_000;
/// One request's deadline when the config says nothing, in milliseconds.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 5_000;
/// The wait before the first retry when the config says nothing, in milliseconds.
pub const DEFAULT_RETRY_BASE_MS: u64 = 1_000;
/// The largest `webhook_timeout_ms` and `webhook_retry_base_ms` accepted.
pub const MAX_WEBHOOK_MS: u64 = 60_000;
/// Retries after the first try (waits: base, 2 x base, 4 x base).
pub const WEBHOOK_RETRIES: u32 = 3;
/// The longest a namespace name may be.
pub const MAX_NAMESPACE_LEN: usize = 128;
/// Time the webhook worker gets at shutdown to deliver what is queued.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The content type of a CloudEvent in structured mode.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// The first level of every lifecycle event's topic.
pub const TOPIC_PREFIX: &str = "$events/clients/";

// ------------------------------------------------------------------ settings

/// `[lifecycle_events]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LifecycleEventsFile {
    #[serde(default)]
    enabled: bool,
    namespace: Option<String>,
    webhook_url: Option<String>,
    webhook_queue: Option<usize>,
    webhook_timeout_ms: Option<u64>,
    webhook_retry_base_ms: Option<u64>,
}

/// The lifecycle events' settings (`[lifecycle_events]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvents {
    /// Publish the events on `$events/clients/<session>/connected|disconnected`.
    pub enabled: bool,
    /// Event Grid's `namespaceName`, and the CloudEvents `source`.
    pub namespace: String,
    /// Where the events are POSTed, if anywhere.
    pub webhook: Option<LifecycleWebhook>,
}

impl Default for LifecycleEvents {
    /// Off: no events, no webhook.
    fn default() -> Self {
        LifecycleEvents {
            enabled: false,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            webhook: None,
        }
    }
}

impl LifecycleEvents {
    /// Whether the core should emit events at all (for the topics or the
    /// webhook).
    pub fn is_active(&self) -> bool {
        self.enabled || self.webhook.is_some()
    }
}

/// The webhook lifecycle events are POSTed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleWebhook {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Events waiting to be sent, at most; more are dropped and counted.
    pub queue: usize,
    /// One request's deadline, from connecting to the end of the answer.
    pub timeout_ms: u64,
    /// The wait before the first retry; each next one waits twice as long.
    pub retry_base_ms: u64,
}

impl LifecycleEventsFile {
    /// Checks the table of `file` and makes the settings of it; an error names
    /// the file, the key and what was expected.
    pub(crate) fn into_settings(self, file: &Path) -> Result<LifecycleEvents, IdentityConfigError> {
        let error = |key: &str, problem: String| IdentityConfigError {
            file: file.to_path_buf(),
            key: format!("lifecycle_events.{key}"),
            problem,
        };
        let namespace = self
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let namespace_ok = !namespace.is_empty()
            && namespace.len() <= MAX_NAMESPACE_LEN
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !namespace_ok {
            return Err(error(
                "namespace",
                format!(
                    "expected 1 to {MAX_NAMESPACE_LEN} letters, digits, '-', '_' or '.', \
                     found {namespace:?}"
                ),
            ));
        }
        let Some(url) = self.webhook_url else {
            let stray = [
                ("webhook_queue", self.webhook_queue.is_some()),
                ("webhook_timeout_ms", self.webhook_timeout_ms.is_some()),
                (
                    "webhook_retry_base_ms",
                    self.webhook_retry_base_ms.is_some(),
                ),
            ];
            if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(error(
                    key,
                    "means something only with webhook_url: set webhook_url or remove it".into(),
                ));
            }
            return Ok(LifecycleEvents {
                enabled: self.enabled,
                namespace,
                webhook: None,
            });
        };
        check_url(&url).map_err(|problem| error("webhook_url", problem))?;
        let queue = self.webhook_queue.unwrap_or(DEFAULT_WEBHOOK_QUEUE);
        if !(1..=MAX_WEBHOOK_QUEUE).contains(&queue) {
            return Err(error(
                "webhook_queue",
                format!("expected 1 to {MAX_WEBHOOK_QUEUE} events, found {queue}"),
            ));
        }
        let ms = |key: &str, value: Option<u64>, default: u64| {
            let value = value.unwrap_or(default);
            if (1..=MAX_WEBHOOK_MS).contains(&value) {
                Ok(value)
            } else {
                Err(error(
                    key,
                    format!("expected 1 to {MAX_WEBHOOK_MS} milliseconds, found {value}"),
                ))
            }
        };
        let timeout_ms = ms(
            "webhook_timeout_ms",
            self.webhook_timeout_ms,
            DEFAULT_WEBHOOK_TIMEOUT_MS,
        )?;
        let retry_base_ms = ms(
            "webhook_retry_base_ms",
            self.webhook_retry_base_ms,
            DEFAULT_RETRY_BASE_MS,
        )?;
        Ok(LifecycleEvents {
            enabled: self.enabled,
            namespace,
            webhook: Some(LifecycleWebhook {
                url,
                queue,
                timeout_ms,
                retry_base_ms,
            }),
        })
    }
}

/// An `http://` or `https://` URL with a host, as ureq will request it.
fn check_url(url: &str) -> Result<(), String> {
    let scheme_ok = ["http://", "https://"].iter().any(|scheme| {
        url.len() > scheme.len()
            && url.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
    });
    if !scheme_ok {
        return Err(format!(
            "expected an http:// or https:// URL, found {url:?}"
        ));
    }
    match ureq::request("POST", url).request_url() {
        Ok(parsed) if !parsed.host().is_empty() => Ok(()),
        Ok(_) => Err(format!("expected a URL with a host, found {url:?}")),
        Err(error) => Err(format!("{url:?} is not a valid URL: {error}")),
    }
}

// ------------------------------------------------------------------ the event

/// Writes a session name (a client id) into one topic level: `/`, `+`, `#`, `%`,
/// U+0000 and a leading `$` are percent-encoded (`%2F`, `%2B`, `%23`, `%25`,
/// `%00`, `%24`), everything else is kept, so the level is never a wildcard,
/// never splits into two and is decoded by any URL decoder.
pub fn topic_level(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, ch) in name.char_indices() {
        match ch {
            '/' | '+' | '#' | '%' | '\0' => out.push_str(&format!("%{:02X}", ch as u32)),
            '$' if i == 0 => out.push_str("%24"),
            _ => out.push(ch),
        }
    }
    out
}

/// The topic an event is published on:
/// `$events/clients/<session>/connected` or `.../disconnected`.
pub fn event_topic(event: &LifecycleEvent) -> String {
    let what = match event.kind {
        LifecycleKind::Connected { .. } => "connected",
        LifecycleKind::Disconnected { .. } => "disconnected",
    };
    format!(
        "{TOPIC_PREFIX}{}/{what}",
        topic_level(event.client_id.as_str())
    )
}

/// The CloudEvents 1.0 JSON of an event (structured mode; see the module docs).
/// `boot`: this server start's random id, which makes the event's `id` unique.
pub fn cloud_event(event: &LifecycleEvent, namespace: &str, boot: u64) -> String {
    let session = event.client_id.as_str();
    let auth = event.authentication_name.as_deref();
    let mut data = serde_json::json!({
        "namespaceName": namespace,
        "clientAuthenticationName": auth,
        "clientSessionName": session,
        "sequenceNumber": event.sequence_number,
    });
    let subject = match auth {
        Some(name) => format!("clients/{name}/sessions/{session}"),
        None => format!("sessions/{session}"),
    };
    let mut ce = serde_json::json!({
        "specversion": "1.0",
        "type": event.kind.event_type(),
        "source": namespace,
        "id": format!("{boot:016x}-{}", event.sequence_number),
        "time": rfc3339_utc(event.unix_ms),
        "subject": subject,
        "datacontenttype": "application/json",
    });
    if let LifecycleKind::Disconnected {
        reason,
        reason_code,
    } = event.kind
    {
        data["disconnectionReason"] = reason.as_str().into();
        if let Some(code) = reason_code {
            ce["mqttreasoncode"] = code.as_u8().into();
        }
    }
    ce["data"] = data;
    ce.to_string()
}

/// `unix_ms` as an RFC 3339 UTC timestamp with milliseconds,
/// e.g. `2023-11-14T22:13:20.123Z` (years past 9999 are written as 9999's end).
pub fn rfc3339_utc(unix_ms: u64) -> String {
    // 9999-12-31T23:59:59.999Z: RFC 3339 has four digits for the year.
    let unix_ms = unix_ms.min(253_402_300_799_999);
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

// ------------------------------------------------------------------ the hub's part

/// What one server does with lifecycle events: publish them on `$events/...`,
/// hand them to the webhook worker, or both. Made by
/// [`crate::hub::Hub::set_lifecycle`].
pub struct Lifecycle {
    publish: bool,
    namespace: String,
    boot: u64,
    webhook: Option<WebhookQueue>,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("publish", &self.publish)
            .field("namespace", &self.namespace)
            .field("webhook", &self.webhook.is_some())
            .finish_non_exhaustive()
    }
}

/// A message for [`broker_state::Broker::publish_from_broker`].
pub struct BrokerMessage {
    /// The topic.
    pub topic: TopicName,
    /// The CloudEvent's JSON.
    pub payload: Bytes,
    /// Content Type and Payload Format Indicator.
    pub properties: PublishProperties,
}

impl Lifecycle {
    /// What `settings` ask for, with the webhook worker started if they name one;
    /// `None` when they ask for nothing. `boot`: a random id of this server start.
    pub fn start(settings: &LifecycleEvents, boot: u64) -> Option<Lifecycle> {
        if !settings.is_active() {
            return None;
        }
        let webhook = settings.webhook.as_ref().and_then(|w| {
            WebhookQueue::start(w)
                .map_err(|error| {
                    tracing::error!(%error, "cannot start the lifecycle webhook's thread: events are not POSTed");
                })
                .ok()
        });
        Some(Lifecycle {
            publish: settings.enabled,
            namespace: settings.namespace.clone(),
            boot,
            webhook,
        })
    }

    /// Formats `event`: queues it for the webhook, and returns the message to
    /// publish when the topics are on.
    pub fn on_event(&self, event: &LifecycleEvent) -> Option<BrokerMessage> {
        let json = cloud_event(event, &self.namespace, self.boot);
        let message = if self.publish {
            // A valid MQTT string with every wildcard escaped: it fails only
            // for a client id too long for a topic once escaped (over 64 KiB),
            // whose event then goes to the webhook alone.
            let topic = TopicName::copy_from_str(&event_topic(event)).ok();
            topic.map(|topic| BrokerMessage {
                topic,
                payload: Bytes::copy_from_slice(json.as_bytes()),
                properties: PublishProperties {
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    content_type: MqttString::from_static(CLOUDEVENTS_JSON).ok(),
                    ..PublishProperties::default()
                },
            })
        } else {
            None
        };
        if let Some(webhook) = &self.webhook {
            webhook.push(json);
        }
        message
    }

    /// This server's webhook counters, when it has a webhook.
    pub fn counters(&self) -> Option<&WebhookCounters> {
        self.webhook.as_ref().map(|w| &*w.counters)
    }

    /// Stops the webhook worker: what is queued gets up to `grace` (one try each),
    /// the rest is dropped and counted. Waits for the worker at most `grace`.
    pub fn stop(self, grace: Duration) {
        if let Some(webhook) = self.webhook {
            webhook.stop(grace);
        }
    }
}

// ------------------------------------------------------------------ counters

/// What became of the events handed to a webhook worker.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    sent: AtomicU64,
    retried: AtomicU64,
    dropped_full: AtomicU64,
    dropped_failed: AtomicU64,
}

/// The counters of every webhook worker of the process together.
static PROCESS: WebhookCounters = WebhookCounters::new();

/// What became of the lifecycle events of every server in the process: sent,
/// retried, dropped because the queue was full, dropped because the webhook
/// failed. (One server's own: [`Lifecycle::counters`].)
pub fn counters() -> &'static WebhookCounters {
    &PROCESS
}

impl WebhookCounters {
    const fn new() -> Self {
        WebhookCounters {
            sent: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_failed: AtomicU64::new(0),
        }
    }

    /// Events the webhook accepted (2xx).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Tries repeated after a failure.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Events dropped because the queue was full.
    pub fn dropped_full(&self) -> u64 {
        self.dropped_full.load(Ordering::Relaxed)
    }

    /// Events dropped because the webhook failed them (after the retries, or an
    /// answer not worth retrying), or were still queued at shutdown.
    pub fn dropped_failed(&self) -> u64 {
        self.dropped_failed.load(Ordering::Relaxed)
    }

    /// Every counter with its name, for metrics: `sent`, `retried`,
    /// `dropped_full`, `dropped_failed`.
    pub fn outcomes(&self) -> [(&'static str, u64); 4] {
        [
            ("sent", self.sent()),
            ("retried", self.retried()),
            ("dropped_full", self.dropped_full()),
            ("dropped_failed", self.dropped_failed()),
        ]
    }
}

/// Adds to a worker's counter and the process's.
fn count(counters: &WebhookCounters, which: fn(&WebhookCounters) -> &AtomicU64, n: u64) {
    which(counters).fetch_add(n, Ordering::Relaxed);
    which(&PROCESS).fetch_add(n, Ordering::Relaxed);
}

// ------------------------------------------------------------------ the worker

/// The broker's end of the webhook worker: a bounded queue of events and the
/// worker thread's stop signal.
struct WebhookQueue {
    events: SyncSender<String>,
    counters: Arc<WebhookCounters>,
    stop: Arc<Stop>,
    thread: JoinHandle<()>,
}

/// The worker's stop signal: a deadline for what is still queued, and the
/// condition a backoff waits on, so that a stop cuts it short.
#[derive(Default)]
struct Stop {
    deadline: Mutex<Option<Instant>>,
    wake: Condvar,
}

impl Stop {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn request(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = Some(deadline);
        self.wake.notify_all();
    }

    /// Waits `d`, or less if a stop is requested; true if one was.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |deadline| deadline.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        guard.is_some()
    }
}

impl WebhookQueue {
    fn start(settings: &LifecycleWebhook) -> std::io::Result<WebhookQueue> {
        let (events, queue) = std::sync::mpsc::sync_channel(settings.queue);
        let counters = Arc::new(WebhookCounters::default());
        let stop = Arc::new(Stop::default());
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirects(0)
            .user_agent(concat!("brokk/", env!("CARGO_PKG_VERSION")))
            .build();
        let worker = Worker {
            agent,
            url: settings.url.clone(),
            retry_base: Duration::from_millis(settings.retry_base_ms),
            counters: counters.clone(),
            stop: stop.clone(),
            last_warning: None,
        };
        let thread = std::thread::Builder::new()
            .name("brokk-events".into())
            .spawn(move || worker.run(queue))?;
        Ok(WebhookQueue {
            events,
            counters,
            stop,
            thread,
        })
    }

    /// Queues an event; a full queue drops it (counted).
    fn push(&self, json: String) {
        match self.events.try_send(json) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => count(&self.counters, |c| &c.dropped_full, 1),
            // The worker is gone (it panicked): nothing will send it.
            Err(TrySendError::Disconnected(_)) => count(&self.counters, |c| &c.dropped_failed, 1),
        }
    }

    fn stop(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.stop.request(deadline);
        drop(self.events);
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        } else {
            tracing::warn!(
                "the lifecycle webhook did not finish within {grace:?} of shutdown; \
                 its last request is abandoned"
            );
        }
    }
}

/// Why a POST failed, and whether trying again may help.
struct Failure {
    retry: bool,
    why: String,
}

/// The worker thread: takes events off the queue in order and POSTs each.
struct Worker {
    agent: ureq::Agent,
    url: String,
    retry_base: Duration,
    counters: Arc<WebhookCounters>,
    stop: Arc<Stop>,
    /// When a failure was last logged (failures are logged at most every
    /// [`WARN_EVERY`]).
    last_warning: Option<Instant>,
}

/// How often a failing webhook is reported in the log, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Worker {
    fn run(mut self, queue: Receiver<String>) {
        while let Ok(json) = queue.recv() {
            if self.stop.deadline().is_some_and(|d| Instant::now() >= d) {
                let left = 1 + queue.try_iter().count() as u64;
                count(&self.counters, |c| &c.dropped_failed, left);
                tracing::warn!(
                    dropped = left,
                    "lifecycle events still queued for the webhook at shutdown were dropped"
                );
                return;
            }
            self.deliver(&json);
        }
    }

    /// POSTs one event, retrying with backoff while it may help and no stop is
    /// requested.
    fn deliver(&mut self, json: &str) {
        let mut retries = 0;
        loop {
            let failure = match self.post(json) {
                Ok(()) => return count(&self.counters, |c| &c.sent, 1),
                Err(failure) => failure,
            };
            let stopping = self.stop.deadline().is_some();
            if !failure.retry || retries == WEBHOOK_RETRIES || stopping {
                count(&self.counters, |c| &c.dropped_failed, 1);
                self.warn(&failure.why, true);
                return;
            }
            self.warn(&failure.why, false);
            count(&self.counters, |c| &c.retried, 1);
            if self.stop.sleep(self.retry_base * 2u32.pow(retries)) {
                // Stopping: one last try, without waiting the backoff out.
                retries = WEBHOOK_RETRIES;
            } else {
                retries += 1;
            }
        }
    }

    fn post(&self, json: &str) -> Result<(), Failure> {
        let response = self
            .agent
            .post(&self.url)
            .set("Content-Type", CLOUDEVENTS_JSON)
            .send_string(json);
        match response {
            Ok(response) => {
                let status = response.status();
                // Read the answer out, so that the connection can be reused.
                let mut body = std::io::Read::take(response.into_reader(), 64 * 1024);
                let _ = std::io::copy(&mut body, &mut std::io::sink());
                if (200..300).contains(&status) {
                    Ok(())
                } else {
                    Err(Failure {
                        retry: false,
                        why: format!("answered {status}"),
                    })
                }
            }
            Err(ureq::Error::Status(status, _)) => Err(Failure {
                retry: status >= 500 || status == 408 || status == 429,
                why: format!("answered {status}"),
            }),
            // The URL is left out: it may carry a secret in its query.
            Err(ureq::Error::Transport(transport)) => Err(Failure {
                retry: true,
                why: transport.kind().to_string(),
            }),
        }
    }

    /// Logs a failure, at most every [`WARN_EVERY`].
    fn warn(&mut self, why: &str, dropped: bool) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        self.last_warning = Some(now);
        let c = &self.counters;
        tracing::warn!(
            why,
            dropped,
            sent = c.sent(),
            retried = c.retried(),
            dropped_full = c.dropped_full(),
            dropped_failed = c.dropped_failed(),
            "the lifecycle webhook failed an event"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_state::DisconnectionReason;
    use mqtt_proto::ReasonCode;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    fn event(client_id: &str, auth: Option<&str>, kind: LifecycleKind) -> LifecycleEvent {
        let now = broker_state::Now::new(Instant::now(), 0);
        let mut broker = broker_state::Broker::new(broker_state::Config::default(), [1; 32]);
        let conn = broker.handle_accept(now, broker_state::PeerInfo::memory("test"));
        LifecycleEvent {
            kind,
            conn,
            client_id: MqttString::copy_from_str(client_id).expect("a valid client id"),
            authentication_name: auth.map(str::to_owned),
            sequence_number: 1_700_000_000_123_000,
            unix_ms: 1_700_000_000_123,
        }
    }

    const LOST: LifecycleKind = LifecycleKind::Disconnected {
        reason: DisconnectionReason::ConnectionLost,
        reason_code: None,
    };

    #[test]
    fn lifecycle_topic_levels_escape_what_a_topic_level_cannot_hold() {
        assert_eq!(topic_level("dev-1"), "dev-1");
        assert_eq!(topic_level("a/b+c#d%e"), "a%2Fb%2Bc%23d%25e");
        assert_eq!(topic_level("$sys$"), "%24sys$");
        assert_eq!(topic_level("ünï"), "ünï");
        let e = event(
            "site/7",
            None,
            LifecycleKind::Connected {
                session_present: false,
            },
        );
        assert_eq!(event_topic(&e), "$events/clients/site%2F7/connected");
        assert_eq!(
            event_topic(&event("#", None, LOST)),
            "$events/clients/%23/disconnected"
        );
    }

    #[test]
    fn lifecycle_times_are_rfc_3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        // A leap day, and the last millisecond of a leap year.
        assert_eq!(rfc3339_utc(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn lifecycle_cloud_events_carry_event_grids_data() {
        let connected = event(
            "dev-1",
            Some("alice"),
            LifecycleKind::Connected {
                session_present: true,
            },
        );
        let json: serde_json::Value =
            serde_json::from_str(&cloud_event(&connected, "ns", 0xab)).expect("the event is JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "specversion": "1.0",
                "type": "Microsoft.EventGrid.MQTTClientSessionConnected",
                "source": "ns",
                "id": "00000000000000ab-1700000000123000",
                "time": "2023-11-14T22:13:20.123Z",
                "subject": "clients/alice/sessions/dev-1",
                "datacontenttype": "application/json",
                "data": {
                    "namespaceName": "ns",
                    "clientAuthenticationName": "alice",
                    "clientSessionName": "dev-1",
                    "sequenceNumber": 1_700_000_000_123_000u64,
                }
            })
        );
        let taken = event(
            "dev-1",
            None,
            LifecycleKind::Disconnected {
                reason: DisconnectionReason::SessionTakenOver,
                reason_code: Some(ReasonCode::SessionTakenOver),
            },
        );
        let json: serde_json::Value =
            serde_json::from_str(&cloud_event(&taken, "ns", 1)).expect("the event is JSON");
        assert_eq!(
            json["type"],
            "Microsoft.EventGrid.MQTTClientSessionDisconnected"
        );
        assert_eq!(json["subject"], "sessions/dev-1");
        assert_eq!(json["mqttreasoncode"], 0x8E);
        assert_eq!(
            json["data"]["clientAuthenticationName"],
            serde_json::Value::Null
        );
        assert_eq!(json["data"]["disconnectionReason"], "SessionTakenOver");
        let lost: serde_json::Value =
            serde_json::from_str(&cloud_event(&event("x", None, LOST), "ns", 1))
                .expect("the event is JSON");
        assert_eq!(lost["data"]["disconnectionReason"], "ConnectionLost");
        assert!(lost.get("mqttreasoncode").is_none());
    }

    fn parse(text: &str) -> Result<LifecycleEvents, String> {
        let file: LifecycleEventsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        file.into_settings(Path::new("brokk.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn lifecycle_settings_and_their_errors_name_the_key() {
        assert_eq!(
            parse("enabled = true").expect("valid settings"),
            LifecycleEvents {
                enabled: true,
                ..LifecycleEvents::default()
            }
        );
        let full = parse(
            "enabled = true\nnamespace = \"plant-7\"\nwebhook_url = \"http://127.0.0.1:9100/events\"\n\
             webhook_queue = 5\nwebhook_timeout_ms = 100\nwebhook_retry_base_ms = 10\n",
        )
        .expect("valid settings");
        assert_eq!(
            full.webhook,
            Some(LifecycleWebhook {
                url: "http://127.0.0.1:9100/events".into(),
                queue: 5,
                timeout_ms: 100,
                retry_base_ms: 10,
            })
        );
        assert_eq!(full.namespace, "plant-7");
        let defaults = parse("webhook_url = \"https://hooks.example/x\"").expect("valid settings");
        assert!(!defaults.enabled && defaults.is_active());
        let w = defaults.webhook.expect("a webhook is configured");
        assert_eq!(
            (w.queue, w.timeout_ms, w.retry_base_ms),
            (
                DEFAULT_WEBHOOK_QUEUE,
                DEFAULT_WEBHOOK_TIMEOUT_MS,
                DEFAULT_RETRY_BASE_MS
            )
        );
        let fails = |text: &str, wanted: &str| {
            let error = parse(text).expect_err(text);
            assert!(error.contains(wanted), "{text}: {error}");
        };
        fails(
            "webhook_url = \"ftp://h/x\"",
            "brokk.toml: lifecycle_events.webhook_url: expected an http:// or https:// URL",
        );
        fails("webhook_url = \"http://\"", "lifecycle_events.webhook_url");
        fails(
            "webhook_url = \"http://h\"\nwebhook_queue = 0",
            "brokk.toml: lifecycle_events.webhook_queue: expected 1 to 1000000 events, found 0",
        );
        fails(
            "webhook_url = \"http://h\"\nwebhook_timeout_ms = 0",
            "lifecycle_events.webhook_timeout_ms: expected 1 to 60000 milliseconds",
        );
        fails(
            "enabled = true\nwebhook_queue = 10",
            "lifecycle_events.webhook_queue: means something only with webhook_url",
        );
        fails("namespace = \"a b\"", "lifecycle_events.namespace");
        fails("enabled = true\nwebhok_url = \"http://h\"", "unknown field");
    }

    /// A webhook on loopback that answers each request with the next status
    /// of `statuses` (then 200), and reports each request's content type and body.
    fn webhook(statuses: Vec<u16>) -> (String, std::sync::mpsc::Receiver<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!(
            "http://{}/events",
            listener.local_addr().expect("the listener\'s address")
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let statuses = Arc::new(Mutex::new(statuses.into_iter()));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (tx, statuses) = (tx.clone(), statuses.clone());
                std::thread::spawn(move || serve(stream, &tx, &statuses));
            }
        });
        (url, rx)
    }

    fn serve(
        stream: std::net::TcpStream,
        tx: &std::sync::mpsc::Sender<(String, String)>,
        statuses: &Mutex<std::vec::IntoIter<u16>>,
    ) {
        let mut reader = BufReader::new(stream.try_clone().expect("the stream clones"));
        let mut out = stream;
        loop {
            let (mut length, mut content_type) = (0, String::new());
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            loop {
                line.clear();
                reader.read_line(&mut line).expect("the request line reads");
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').expect("a header has a colon");
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => {
                        length = value.trim().parse().expect("a numeric content-length")
                    }
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("the body reads");
            let status = statuses
                .lock()
                .expect("the statuses lock")
                .next()
                .unwrap_or(200);
            let _ = tx.send((content_type, String::from_utf8(body).expect("a UTF-8 body")));
            write!(out, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n")
                .expect("the answer writes");
        }
    }

    fn settings(url: &str, queue: usize) -> LifecycleWebhook {
        LifecycleWebhook {
            url: url.to_owned(),
            queue,
            timeout_ms: 2_000,
            retry_base_ms: 10,
        }
    }

    #[test]
    fn lifecycle_webhook_retries_a_failing_answer_then_counts_it_sent() {
        let (url, requests) = webhook(vec![500, 503]);
        let queue = WebhookQueue::start(&settings(&url, 10)).expect("the webhook worker starts");
        let counters = queue.counters.clone();
        queue.push("{\"n\":1}".into());
        for _ in 0..3 {
            let (content_type, body) = requests
                .recv_timeout(Duration::from_secs(10))
                .expect("the webhook gets the event in time");
            assert_eq!(content_type, CLOUDEVENTS_JSON);
            assert_eq!(body, "{\"n\":1}");
        }
        queue.stop(Duration::from_secs(5));
        assert_eq!(
            counters.outcomes(),
            [
                ("sent", 1),
                ("retried", 2),
                ("dropped_full", 0),
                ("dropped_failed", 0)
            ]
        );
    }

    #[test]
    fn lifecycle_webhook_drops_what_fails_every_try_and_what_a_4xx_refuses() {
        let (url, requests) = webhook(vec![500, 500, 500, 500, 400]);
        let queue = WebhookQueue::start(&settings(&url, 10)).expect("the webhook worker starts");
        let counters = queue.counters.clone();
        queue.push("a".into());
        queue.push("b".into());
        let bodies: Vec<String> = (0..5)
            .map(|_| {
                requests
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the webhook gets the event in time")
                    .1
            })
            .collect();
        assert_eq!(bodies, ["a", "a", "a", "a", "b"]);
        queue.stop(Duration::from_secs(5));
        assert_eq!(counters.retried(), 3);
        assert_eq!(counters.dropped_failed(), 2);
        assert_eq!(counters.sent(), 0);
    }

    #[test]
    fn lifecycle_webhook_queue_is_bounded_and_a_dead_webhook_is_dropped_at_shutdown() {
        // Nobody listens: every try fails at once, and is retried.
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("a loopback port")
            .local_addr()
            .expect("the listener's address")
            .port();
        let mut s = settings(&format!("http://127.0.0.1:{port}/"), 2);
        s.retry_base_ms = 60_000;
        let queue = WebhookQueue::start(&s).expect("the webhook worker starts");
        let counters = queue.counters.clone();
        for n in 0..10 {
            queue.push(format!("{n}"));
        }
        // One in the worker's hands, two queued: at least seven dropped.
        assert!(counters.dropped_full() >= 7, "{:?}", counters.outcomes());
        let started = Instant::now();
        queue.stop(Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "a stop cuts the backoff short"
        );
        assert_eq!(counters.sent(), 0);
        assert_eq!(counters.dropped_full() + counters.dropped_failed(), 10);
    }
}
