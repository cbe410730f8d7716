//! `GET /metrics`: the broker's counters in Prometheus text format
//! (prometheus-client), built from a [`Snapshot`] taken on the broker's thread
//! when a scrape comes. Nothing here runs per message: the core counts into plain
//! integers it already keeps ([`broker_state::Stats`]), sizes are counted at scrape
//! time ([`broker_state::Gauges`]), and the hub counts connections and logins.
//!
//! Names follow Event Grid's MQTT metrics where one exists, as
//! `brokk_<event grid name in snake case>`:
//!
//! | Event Grid | brokk |
//! |---|---|
//! | MQTT.Connections | `brokk_mqtt_connections` |
//! | MQTT.SuccessfulPublishedMessages / FailedPublishedMessages | `brokk_mqtt_published_messages_total{qos, result}` |
//! | MQTT.SuccessfulDeliveredMessages | `brokk_mqtt_delivered_messages_total` |
//! | MQTT.DroppedSessions | `brokk_mqtt_dropped_sessions_total{reason}` |
//! | MQTT.SuccessfulSubscriptionOperations / Failed... | `brokk_mqtt_subscription_refusals_total{reason}` |
//! | MQTT.RequestCount (CONNECT) | `brokk_mqtt_connects_total{result}` |
//! | MQTT.ThrottlingEnforcements | `brokk_mqtt_throttling_enforcements_total{type}` |
//!
//! and brokk's own: sessions, subscriptions, retained messages and bytes, queued
//! messages and bytes, in-flight messages, dropped messages by cause, closed
//! connections by reason, authorization outcomes, store commits, fsyncs and commit
//! time, parked connections.

use std::collections::BTreeMap;

use broker_state::{Gauges, Stats};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Connections and logins as the hub saw them.
#[derive(Debug, Clone, Default)]
pub struct HubCounters {
    /// Transport connections accepted.
    pub accepted: u64,
    /// Connections closed, by the reason in the disconnect log line.
    pub closed: BTreeMap<String, u64>,
    /// Authentication answers: accepted.
    pub auth_success: u64,
    /// Authentication answers: refused, by reason code name.
    pub auth_failure: BTreeMap<String, u64>,
}

impl HubCounters {
    /// A connection closed for `reason`.
    pub fn closed(&mut self, reason: &str) {
        match self.closed.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.closed.insert(reason.to_owned(), 1);
            }
        }
    }

    /// An authentication answer.
    pub fn answered(&mut self, step: &broker_state::AuthStep) {
        match step {
            broker_state::AuthStep::Success { .. } => self.auth_success += 1,
            broker_state::AuthStep::Failure(code) => {
                let name = code.to_string();
                *self.auth_failure.entry(name).or_insert(0) += 1;
            }
            broker_state::AuthStep::Continue(_) => {}
        }
    }
}

/// Everything a scrape reports, read at once on the broker's thread.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The core's counters.
    pub stats: Stats,
    /// The core's sizes.
    pub gauges: Gauges,
    /// Connections parked (idle, without a task).
    pub parked: usize,
    /// The hub's counters.
    pub hub: HubCounters,
    /// The durable store's counters, when there is one.
    pub store: Option<brokk_store::StoreStats>,
    /// What this node's cluster transport did (a node of a cluster only).
    pub cluster: Option<[(&'static str, u64); 6]>,
    /// Lifecycle events sent to the webhook, retried, dropped (when configured).
    pub lifecycle: Option<[(&'static str, u64); 4]>,
    /// HTTP requests served, by endpoint and status.
    pub http: BTreeMap<(String, u16), u64>,
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: usize) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

type Labels = Vec<(String, String)>;

fn family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, u64)>,
) {
    let f: Family<Labels, Counter> = Family::default();
    for (labels, v) in values {
        f.get_or_create(&labels).inc_by(v);
    }
    registry.register(name, help, f);
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), label_value(v)))
        .collect()
}

/// A label value a dashboard can match: lower case, runs of anything but
/// letters and digits as one `_` ("Session taken over (0x8E)" ->
/// "session_taken_over_0x8e").
pub fn label_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// The Prometheus text exposition of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("brokk");
    let st = &s.stats;
    let g = &s.gauges;
    gauge(
        &mut r,
        "mqtt_connections",
        "Transport connections open (Event Grid MQTT.Connections)",
        g.connections,
    );
    gauge(
        &mut r,
        "parked_connections",
        "Idle connections parked without a task",
        s.parked,
    );
    counter(
        &mut r,
        "connections_accepted",
        "Transport connections accepted",
        s.hub.accepted,
    );
    family(
        &mut r,
        "connections_closed",
        "Connections closed, by reason",
        s.hub
            .closed
            .iter()
            .map(|(reason, n)| (l(&[("reason", reason)]), *n)),
    );
    family(
        &mut r,
        "mqtt_connects",
        "Authentication answers to CONNECT and AUTH (Event Grid MQTT.RequestCount), by result",
        std::iter::once((l(&[("result", "success")]), s.hub.auth_success)).chain(
            s.hub
                .auth_failure
                .iter()
                .map(|(code, n)| (l(&[("result", code)]), *n)),
        ),
    );
    gauge(
        &mut r,
        "sessions",
        "Sessions online (with a connection)",
        g.sessions_online,
    );
    gauge(
        &mut r,
        "sessions_offline",
        "Persistent sessions waiting for their client",
        g.sessions_offline,
    );
    gauge(&mut r, "subscriptions", "Subscriptions", g.subscriptions);
    gauge(
        &mut r,
        "retained_messages",
        "Retained messages",
        g.retained_messages,
    );
    gauge(
        &mut r,
        "retained_bytes",
        "Bytes of retained messages",
        g.retained_bytes,
    );
    gauge(
        &mut r,
        "queued_messages",
        "Messages queued in sessions, not in flight yet",
        g.queued_messages,
    );
    gauge(
        &mut r,
        "queued_bytes",
        "Approximate bytes of queued messages",
        g.queued_bytes,
    );
    gauge(
        &mut r,
        "inflight_messages",
        "QoS 1 and 2 messages sent and not acknowledged yet",
        g.inflight,
    );
    family(
        &mut r,
        "mqtt_published_messages",
        "PUBLISH packets received from clients, by QoS, refused ones included",
        [0usize, 1, 2].into_iter().map(|q| {
            (
                l(&[("qos", &q.to_string())]),
                st.publishes_received_by_qos[q],
            )
        }),
    );
    family(
        &mut r,
        "mqtt_failed_published_messages",
        "PUBLISH packets refused (Event Grid MQTT.FailedPublishedMessages), by reason",
        std::iter::once((
            l(&[("reason", "not_authorized")]),
            st.publish_not_authorized,
        )),
    );
    counter(
        &mut r,
        "mqtt_delivered_messages",
        "PUBLISH packets queued for delivery to clients (Event Grid MQTT.SuccessfulDeliveredMessages)",
        st.deliveries,
    );
    family(
        &mut r,
        "dropped_messages",
        "Messages dropped, by cause",
        [
            ("slow_consumer_qos0", st.dropped_qos0_slow_consumer),
            ("online_queue_full", st.dropped_online_queue_full),
            ("offline_queue_full", st.dropped_offline_queue_full),
            ("too_large_for_receiver", st.dropped_too_large),
            ("expired", st.expired),
            ("retained_refused", st.retained_refused),
            ("retained_expired", st.retained_expired),
            ("not_authorized", st.publish_not_authorized),
            ("store_failure", st.store_failures_refused),
            ("cluster_shared_group_gone", st.cluster_shared_unmatched),
        ]
        .map(|(cause, n)| (l(&[("cause", cause)]), n)),
    );
    family(
        &mut r,
        "mqtt_dropped_sessions",
        "Sessions ended by the broker (Event Grid MQTT.DroppedSessions), by reason",
        [
            ("offline_queue_overflow", st.sessions_ended_by_overflow),
            ("taken_over", st.takeovers),
            ("taken_over_by_another_node", st.cluster_takeovers),
        ]
        .map(|(reason, n)| (l(&[("reason", reason)]), n)),
    );
    family(
        &mut r,
        "mqtt_subscription_refusals",
        "SUBSCRIBE filters refused, by reason",
        [
            ("not_authorized", st.subscribe_not_authorized),
            ("quota_exceeded", st.subscriptions_refused),
            ("revoked_by_policy", st.subscriptions_revoked),
        ]
        .map(|(reason, n)| (l(&[("reason", reason)]), n)),
    );
    family(
        &mut r,
        "mqtt_throttling_enforcements",
        "Flow control the broker enforced (Event Grid MQTT.ThrottlingEnforcements), by type",
        [
            ("slow_consumer_qos0_dropped", st.dropped_qos0_slow_consumer),
            ("online_queue_full", st.dropped_online_queue_full),
        ]
        .map(|(t, n)| (l(&[("type", t)]), n)),
    );
    counter(
        &mut r,
        "shared_redeliveries",
        "QoS 1 messages of shared subscriptions sent to another member",
        st.shared_redeliveries,
    );
    if let Some(cluster) = &s.cluster {
        family(
            &mut r,
            "cluster_messages",
            "Messages this node forwarded to the cluster or received from it, by outcome",
            cluster.map(|(outcome, n)| (l(&[("outcome", outcome)]), n)),
        );
        counter(
            &mut r,
            "cluster_duplicate_copies",
            "Copies of another node's message that came through a newer of several matching filters, dropped",
            st.cluster_duplicates,
        );
        counter(
            &mut r,
            "cluster_sessions_moved",
            "Sessions read from the cluster's store when their client connected here after another node held them",
            st.cluster_sessions_moved,
        );
        counter(
            &mut r,
            "cluster_sessions_adopted",
            "Sessions taken over from a node that left the cluster without letting them go",
            st.cluster_sessions_adopted,
        );
    }
    if let Some(store) = &s.store {
        counter(
            &mut r,
            "store_commits",
            "Store write transactions",
            store.commits,
        );
        counter(&mut r, "store_fsyncs", "Store fsyncs", store.fsyncs);
        counter(
            &mut r,
            "store_ops_applied",
            "Store operations written",
            store.ops_applied,
        );
        counter(
            &mut r,
            "store_ops_elided",
            "Store operations that cancelled out before the disk",
            store.ops_elided,
        );
        counter(
            &mut r,
            "store_ops_folded",
            "Store operations written as part of the enqueue of their message",
            store.ops_folded,
        );
        counter(
            &mut r,
            "store_bytes_written",
            "Bytes of keys and values written",
            store.bytes_written,
        );
        counter(
            &mut r,
            "store_failed_commits",
            "Store commits that failed",
            store.failed_commits,
        );
        counter(
            &mut r,
            "store_commit_microseconds",
            "Time spent applying and committing, summed (divide by brokk_store_commits_total for the mean)",
            u64::try_from(store.commit_time_total.as_micros()).unwrap_or(u64::MAX),
        );
        gauge(
            &mut r,
            "store_commit_max_microseconds",
            "The longest commit so far",
            usize::try_from(store.commit_time_max.as_micros()).unwrap_or(usize::MAX),
        );
    }
    if let Some(lifecycle) = &s.lifecycle {
        family(
            &mut r,
            "lifecycle_webhook_events",
            "Lifecycle events for the webhook, by outcome",
            lifecycle.map(|(outcome, n)| (l(&[("outcome", outcome)]), n)),
        );
    }
    family(
        &mut r,
        "http_requests",
        "HTTP requests served, by endpoint and status",
        s.http.iter().map(|((endpoint, status), n)| {
            // Paths as they are: they are the endpoints' names.
            let labels = vec![
                ("endpoint".to_owned(), endpoint.clone()),
                ("status".to_owned(), status.to_string()),
            ];
            (labels, *n)
        }),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_renders_as_prometheus_text_with_labels_and_totals() {
        let mut s = Snapshot::default();
        s.stats.publishes_received_by_qos = [3, 5, 0];
        s.stats.deliveries = 8;
        s.gauges.connections = 2;
        s.hub.accepted = 4;
        s.hub.closed("client disconnected");
        s.hub.closed("client disconnected");
        s.hub.closed("Session taken over (0x8E)");
        let text = render(&s);
        for line in [
            "brokk_mqtt_connections 2",
            "brokk_connections_accepted_total 4",
            "brokk_connections_closed_total{reason=\"client_disconnected\"} 2",
            "brokk_connections_closed_total{reason=\"session_taken_over_0x8e\"} 1",
            "brokk_mqtt_published_messages_total{qos=\"1\"} 5",
            "brokk_mqtt_delivered_messages_total 8",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
