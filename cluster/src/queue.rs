//! Every node's durable queue of the QoS 1 and 2 messages other nodes send it.
//!
//! One JetStream stream, `<prefix>_forward` (a file stream with the buckets'
//! replicas), holds the subjects `<prefix>.q.<node>.<topic's subject>`: a node
//! that accepts a QoS 1 or 2 message publishes one copy on the subject of each
//! node whose filters match it (the core names them), and acknowledges its
//! publisher only once JetStream has stored every copy. Each node reads its own
//! subjects through a durable pull consumer named after it, and acknowledges
//! what it read (JetStream's "ack all": the last message acknowledges every one
//! before it) only once the core's deliveries of it are stored: a message in a
//! persistent session's queue is in the cluster's store by then. Until then
//! JetStream keeps it, so a node that dies, restarts or falls behind loses
//! nothing it was sent, and a node that is behind is sent no more than its
//! consumer's `max_ack_pending` until it catches up (backpressure instead of
//! dropped messages). The stream keeps a message until the consumer it is for
//! acknowledged it (interest retention), at most [`MAX_AGE`].
//!
//! A copy carries a `Nats-Msg-Id` (the sending node and a number), so that a
//! publish sent again after a lost acknowledgement is stored once.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::node::{Settings, StartError};
use crate::state::session_key;
use crate::SubjectMap;

/// How long a message waits for a node that never comes back.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Messages a node may have read and not yet acknowledged: the most it holds
/// in memory for the cluster when its store is behind.
pub const MAX_ACK_PENDING: i64 = 8_192;

/// What the queue's NATS connection holds per subscription: more than
/// JetStream ever sends without an acknowledgement, so that the client never
/// drops one as a slow consumer's.
pub const SUBSCRIPTION_CAPACITY: usize = 2 * MAX_ACK_PENDING as usize;

/// How long JetStream waits for an acknowledgement before it sends a message
/// again (a node whose store stalls for longer gets it twice).
pub const ACK_WAIT: Duration = Duration::from_secs(60);

/// The subjects of `node`'s queue: `<prefix>.q.<node, base64url>` and the
/// topic's subject after it.
pub(crate) fn queue_map(prefix: &str, node: &str) -> Result<SubjectMap, String> {
    SubjectMap::new(&format!("{prefix}.q.{}", session_key(node.as_bytes())))
}

/// The consumer's name for `node` (base64url: a valid JetStream name).
pub(crate) fn consumer_name(node: &str) -> String {
    session_key(node.as_bytes())
}

/// Opens (or creates) the stream, asking again while JetStream elects a
/// leader, for at most the connect timeout.
pub(crate) async fn open(
    js: &jetstream::Context,
    settings: &Settings,
) -> Result<stream::Stream, StartError> {
    let name = settings.bucket("forward");
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    let config = stream::Config {
        name: name.clone(),
        description: Some("brokk: QoS 1 and 2 messages between nodes".into()),
        subjects: vec![format!("{}.q.>", settings.prefix)],
        retention: stream::RetentionPolicy::Interest,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas.max(1),
        max_age: MAX_AGE,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    crate::node::persist(deadline, || async {
        js.get_or_create_stream(config.clone())
            .await
            .map_err(|e| crate::state::StateError(e.to_string()))
    })
    .await
    .map_err(|e| StartError(format!("JetStream stream {name}: {e}")))
}

/// The configuration of `node`'s consumer: its own subjects, ack all.
fn config(
    prefix: &str,
    node: &str,
    name: String,
    deliver: consumer::DeliverPolicy,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name),
        description: Some(format!("brokk node {node}")),
        filter_subject: format!("{prefix}.q.{}.>", consumer_name(node)),
        ack_policy: consumer::AckPolicy::All,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        deliver_policy: deliver,
        ..Default::default()
    }
}

/// The consumer of `node`'s queue (created if it is new).
pub(crate) async fn consumer(
    stream: &stream::Stream,
    prefix: &str,
    node: &str,
) -> Result<consumer::PullConsumer, String> {
    let name = consumer_name(node);
    let config = config(prefix, node, name.clone(), consumer::DeliverPolicy::All);
    stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|e| e.to_string())
}

/// The name of the consumer another node reads a departed node's queue with.
pub(crate) fn adopted_name(node: &str) -> String {
    format!("{}-adopted", consumer_name(node))
}

/// Takes `node`'s queue over: a consumer of this node's own, from the first
/// message `node` did not acknowledge (what it read and did not acknowledge
/// comes again at once, not after the ack wait), made before `node`'s own
/// consumer is deleted so that JetStream keeps every message in between.
/// A consumer left by an earlier adopter that stopped is taken as it is.
pub(crate) async fn take_over(
    stream: &stream::Stream,
    prefix: &str,
    node: &str,
) -> Result<(), String> {
    let name = adopted_name(node);
    let own = consumer_name(node);
    let deliver = match stream.consumer_info(&own).await {
        Ok(info) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: info.ack_floor.stream_sequence + 1,
        },
        Err(_) => consumer::DeliverPolicy::All,
    };
    stream
        .get_or_create_consumer::<consumer::pull::Config>(
            &name,
            config(prefix, node, name.clone(), deliver),
        )
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = stream.delete_consumer(&own).await {
        tracing::debug!(node, error = %e, "the departed node's consumer was not there to delete");
    }
    Ok(())
}

/// Whether the consumer `name` has nothing left to deliver or to be
/// acknowledged (a consumer that is gone has nothing left either).
pub(crate) async fn drained(stream: &stream::Stream, name: &str) -> bool {
    match stream.consumer_info(name).await {
        Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
        Err(_) => false,
    }
}

/// A message of a queue, and which of the queues this node reads it came
/// from (0: its own; an adopted one's number otherwise).
pub(crate) type Queued = (u32, jetstream::Message);

/// Reads the consumer `name` on a task of its own and hands its messages
/// over, tagged with `tag`; when reading fails (the consumer's server went
/// away), it starts again twice a second until it works (JetStream sends
/// what was not acknowledged again). The consumer is made by the caller
/// (the node's own is made again if it is missing).
pub(crate) fn follow(
    stream: stream::Stream,
    prefix: String,
    node: String,
    name: String,
    tag: u32,
    tx: mpsc::Sender<Queued>,
) -> tokio::task::AbortHandle {
    let task = tokio::spawn(async move {
        loop {
            let found = if tag == 0 {
                consumer(&stream, &prefix, &node).await
            } else {
                stream
                    .get_consumer::<consumer::pull::Config>(&name)
                    .await
                    .map_err(|e| e.to_string())
            };
            let messages = match found {
                Ok(c) => c.stream().max_messages_per_batch(1024).messages().await,
                Err(e) => {
                    tracing::warn!(node, error = e, "cannot open the queue yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(node, error = %e, "cannot read the queue yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                match messages.next().await {
                    Some(Ok(m)) => {
                        if tx.send((tag, m)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(node, error = %e, "reading the queue failed; reading again");
                        break;
                    }
                    None => break,
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    task.abort_handle()
}
