//! The node's transport: a thread of its own running the NATS client (async-nats
//! on a single-threaded tokio runtime), so that the broker's thread, whatever
//! runtime drives it, never waits on the network.
//!
//! The broker's thread hands the core's [`ClusterOp`]s and store effects over
//! with [`ClusterNode::submit`] (never blocking), and takes what the cluster
//! sends with [`ClusterNode::poll_inbound`] (a waker, no runtime needed). On
//! the thread:
//!
//! - **Interest**: a local filter's first subscription subscribes its subjects
//!   ([`SubjectMap::filter_to_subjects`]) on the node's main connection, which
//!   is opened with `no_echo`: what this node forwards never comes back to it.
//!   A shared group's first local member joins the NATS queue group of
//!   `(group, filter)` on a second connection (with echo, so that the node
//!   that published can be the one chosen).
//! - **Forward**: a QoS 1 or 2 message goes to the durable queue of each node
//!   the core names ([`crate::queue`]: JetStream, acknowledged to the
//!   publisher once stored); a QoS 0 message is published on the topic's
//!   subject, a shared group's on the shared space's subject
//!   (`<prefix>.g....`), with the properties as headers ([`crate::wire`]); a
//!   retained message is also put in the retained bucket (an empty one
//!   deletes its key).
//! - **Retained**: a JetStream key-value bucket, one value per topic. Every node
//!   reads all of it when it starts ([`ClusterNode::start`] returns it) and
//!   follows its changes, so a subscription on any node sees the same retained
//!   messages.
//! - **Sessions**: the store effects go to the state bucket
//!   ([`crate::state`]); a key-value bucket names the node that holds each
//!   client's session. [`ClusterOp::Acquire`] claims it there with a
//!   compare-and-set, asks the node that held it to let it go (a NATS request
//!   to `<prefix>.release.<node>`; that node hands [`Inbound::Claimed`] to
//!   its core and answers with [`ClusterNode::released`] once the session's
//!   last changes are stored), reads the session back and answers with
//!   [`Inbound::Acquired`]. Every node also watches the bucket: one whose
//!   client was claimed by another node with a later revision than its own
//!   claim lets it go too (the revisions order claims that race).
//!
//! Delivery between nodes: QoS 1 and 2 through JetStream, at least once (a
//! node's queue keeps a message until the node stored what it did with it);
//! QoS 0 and shared groups' messages through NATS core, at most once.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use broker_state::{Acquired, AuthTicket, ClusterOp, StoreOp};
use bytes::Bytes;
use futures_util::StreamExt;
use mqtt_proto::{MqttString, Publish, TopicFilter, TopicName};
use tokio::sync::mpsc;

use crate::adopt;
use crate::queue;
use crate::state::{self, session_key, StateStore};
use crate::wire;
use crate::SubjectMap;

/// How a node joins the cluster (`[cluster]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This node's name, unique in the cluster.
    pub node_id: String,
    /// NATS servers (`nats://host:port`, `tls://host:port`), tried in turn.
    pub servers: Vec<String>,
    /// The first token(s) of every subject and the buckets' names.
    pub prefix: String,
    /// User name and password for NATS.
    pub user: Option<(String, String)>,
    /// A token for NATS.
    pub token: Option<String>,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// CA certificates (PEM) that the NATS servers' certificates chain to.
    pub tls_ca: Option<PathBuf>,
    /// Refuse to talk to NATS without TLS.
    pub tls_required: bool,
    /// Copies JetStream keeps of the buckets (1 for a single NATS server, 3
    /// for a cluster of three or more).
    pub replicas: usize,
    /// How long [`ClusterNode::start`] waits for NATS.
    pub connect_timeout: Duration,
    /// Event Grid's session limit per authentication name, counted over the
    /// whole cluster (`limits.max_sessions_per_authentication_name`).
    pub max_sessions_per_authentication_name: Option<usize>,
}

impl Settings {
    /// Defaults for `node_id` on `servers`.
    pub fn new(node_id: &str, servers: Vec<String>) -> Settings {
        Settings {
            node_id: node_id.to_owned(),
            servers,
            prefix: crate::DEFAULT_PREFIX.to_owned(),
            user: None,
            token: None,
            credentials_file: None,
            tls_ca: None,
            tls_required: false,
            replicas: 1,
            connect_timeout: Duration::from_secs(10),
            max_sessions_per_authentication_name: None,
        }
    }

    pub(crate) fn bucket(&self, what: &str) -> String {
        // Bucket names allow `A-Z a-z 0-9 - _`; the prefix's dots become `_`.
        format!("{}_{what}", self.prefix.replace('.', "_"))
    }
}

/// What the cluster sends this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A message another node accepted, and the filter this node announced
    /// that it came through (once per matching filter: the core takes the
    /// copy through the oldest; a `$share/{group}/{filter}` when the cluster
    /// chose this node for that group).
    Publish {
        /// The message.
        publish: Publish,
        /// The filter (or shared subscription) it came through.
        through: TopicFilter,
    },
    /// The retained message of a topic changed (`None`: cleared).
    Retained {
        /// The topic.
        topic: TopicName,
        /// The message, its expiry interval what is left of it.
        publish: Option<Publish>,
    },
    /// Another node took the session of this client identifier over. With
    /// `reply`, that node waits for this one to let the session go: once the
    /// core has, [`ClusterNode::released`] answers (after the session's last
    /// changes reached the cluster's store).
    Claimed {
        /// The client identifier.
        client_id: Bytes,
        /// Where the other node waits for the answer.
        reply: Option<async_nats::Subject>,
    },
    /// The answer to a [`ClusterOp::Acquire`].
    Acquired {
        /// The ticket it quoted.
        ticket: broker_state::AuthTicket,
        /// The session (or why not).
        answer: broker_state::Acquired,
    },
    /// Another node announced interest in this filter (`on`), or withdrew
    /// it.
    RemoteInterest {
        /// The node, as this node numbers the others (the numbers
        /// [`ClusterOp::Forward`] names).
        node: u32,
        /// The filter (`$share/...` for a shared group).
        filter: TopicFilter,
        /// Begins or ends.
        on: bool,
    },
    /// A QoS 1 or 2 message another node sent this one (from this node's
    /// durable queue, see [`crate::queue`]): JetStream keeps it until the
    /// broker says, with a later [`ClusterNode::submit`] whose `delivered` is
    /// at least `seq`, that its deliveries' store effects are in the batch.
    Delivery {
        /// The message.
        publish: Publish,
        /// Its number, counted up from 1 by this node.
        seq: u64,
    },
    /// The sessions of a node that left the cluster without letting them go,
    /// now this node's (in the store's replay order; see the crate's `adopt`
    /// module):
    /// for [`broker_state::Broker::handle_sessions_adopted`].
    Adopted {
        /// The sessions' records.
        records: Vec<StoreOp>,
    },
    /// The forwards submitted with this ticket (and every earlier one) are
    /// flushed to NATS; `ok` is false when a retained message among them could
    /// not be stored in JetStream (its publisher must not hear it was).
    Forwarded {
        /// The ticket given to [`ClusterNode::submit`].
        ticket: u64,
        /// Everything was handed over.
        ok: bool,
    },
}

/// What a node finds in the cluster when it joins, for the core before it
/// serves anyone.
#[derive(Debug, Default)]
pub struct Joined {
    /// The cluster's retained messages.
    pub retained: Vec<Publish>,
    /// The filters the other nodes subscribe to, with the number of the node
    /// that announced each.
    pub interest: Vec<(u32, TopicFilter)>,
    /// The sessions this node held when it stopped, as the cluster's store
    /// keeps them (the records that restore them, session by session).
    pub sessions: Vec<broker_state::StoreOp>,
}

/// Why the node could not join.
#[derive(Debug)]
pub struct StartError(pub String);

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// What the node did, for metrics and logs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages forwarded to NATS.
    pub forwarded: AtomicU64,
    /// Forwards dropped: the queue to the NATS thread was full, or the subject
    /// would be longer than NATS takes.
    pub forward_dropped: AtomicU64,
    /// Messages received from other nodes (a QoS 0 message that matches
    /// several of this node's filters counts once per filter; a QoS 1 or 2
    /// message from this node's queue once).
    pub received: AtomicU64,
    /// Messages from NATS that did not decode.
    pub malformed: AtomicU64,
    /// Retained messages or session claims that JetStream refused.
    pub jetstream_errors: AtomicU64,
    /// Times the NATS client dropped messages for a subscription this node
    /// did not take fast enough (async-nats's slow consumer event).
    pub slow_consumer: AtomicU64,
}

impl Counters {
    /// Each counter with its name, for metrics.
    pub fn outcomes(&self) -> [(&'static str, u64); 6] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("forwarded", v(&self.forwarded)),
            ("forward_dropped", v(&self.forward_dropped)),
            ("received", v(&self.received)),
            ("malformed", v(&self.malformed)),
            ("jetstream_error", v(&self.jetstream_errors)),
            ("slow_consumer", v(&self.slow_consumer)),
        ]
    }
}

/// The most forwards waiting for the NATS thread; beyond it they are dropped
/// (and counted), so a NATS outage cannot grow the broker's memory without
/// bound.
pub const MAX_QUEUED_FORWARDS: usize = 65_536;

/// The longest subject forwarded (NATS's default control line is 4 KiB).
pub const MAX_SUBJECT_LEN: usize = 3_840;

enum Command {
    /// The ops, how many of them are forwards, the store effects for the
    /// cluster's store, the ticket to report once they are flushed and
    /// stored, and the last [`Inbound::Delivery`] they include the effects of.
    Ops(Vec<ClusterOp>, u64, Vec<StoreOp>, Option<u64>, Option<u64>),
    /// The core let this session go: answer the node that claimed it.
    Released(Bytes, Option<async_nats::Subject>),
    Shutdown,
}

/// The most store effects waiting for the cluster's store: beyond it, the node
/// takes no more messages from the other nodes until JetStream catches up (NATS
/// then holds them, and drops them for a subscription that stays too slow,
/// counted as `slow_consumer`), so a cluster's store slower than the traffic
/// cannot grow a node's memory without bound.
pub const MAX_STATE_BACKLOG: usize = 65_536;

/// Messages async-nats holds for one subscription of this node while the node
/// does not take them (its cluster's store is behind, see
/// [`MAX_STATE_BACKLOG`]); beyond it NATS drops them for this node (counted as
/// `slow_consumer`). Per subscription, so a node's memory under such a backlog
/// grows with its filters: 4,096 keeps it near 1 MiB of 256-byte messages each.
pub const SUBSCRIPTION_CAPACITY: usize = 4_096;

/// What the broker's thread and the node's thread share about the work waiting.
#[derive(Default)]
struct Backlog {
    /// Store effects submitted and not yet written.
    state: AtomicUsize,
    /// Shutting down: a store write that fails is not tried again, and what
    /// waits behind it is dropped (NATS gone, the process must still end).
    stopping: std::sync::atomic::AtomicBool,
}

/// This node's link to the cluster. Owned by the broker's thread.
pub struct ClusterNode {
    commands: mpsc::UnboundedSender<Command>,
    inbound: mpsc::Receiver<Inbound>,
    backlog: Arc<Backlog>,
    queued: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClusterNode {
    /// Connects to NATS, creates (or opens) the buckets, reads the retained
    /// messages, and starts the node's thread. Returns the node and the
    /// cluster's retained messages, for the core before it serves anyone.
    pub fn start(settings: Settings) -> Result<(ClusterNode, Joined), StartError> {
        let map = SubjectMap::new(&settings.prefix)
            .map_err(|e| StartError(format!("cluster prefix: {e}")))?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::channel(4096);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let counters = Arc::new(Counters::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let backlog = Arc::new(Backlog::default());
        let timeout = settings.connect_timeout;
        let thread = {
            let (counters, queued, backlog) = (counters.clone(), queued.clone(), backlog.clone());
            std::thread::Builder::new()
                .name("brokk-cluster".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(StartError(format!("runtime: {e}"))));
                            return;
                        }
                    };
                    rt.block_on(run(
                        settings, map, cmd_rx, in_tx, ready_tx, counters, queued, backlog,
                    ));
                })
                .map_err(|e| StartError(format!("cannot start the cluster thread: {e}")))?
        };
        let retained = match ready_rx.recv_timeout(timeout + Duration::from_secs(5)) {
            Ok(Ok(joined)) => joined,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = cmd_tx.send(Command::Shutdown);
                return Err(StartError(format!(
                    "NATS did not answer within {} s",
                    timeout.as_secs()
                )));
            }
        };
        Ok((
            ClusterNode {
                commands: cmd_tx,
                inbound: in_rx,
                backlog,
                queued,
                counters,
                thread: Some(thread),
            },
            retained,
        ))
    }

    /// Hands the core's cluster effects to the NATS thread; with a `ticket`,
    /// [`Inbound::Forwarded`] says when they are flushed to NATS. QoS 0
    /// forwards beyond [`MAX_QUEUED_FORWARDS`] waiting are dropped and
    /// counted (QoS 1 and 2 ones hold their publishers' acknowledgements, which
    /// bounds them).
    ///
    /// `delivered`: the core has handled every [`Inbound::Delivery`] up to
    /// this number, and `state` (or an earlier submission) holds their store
    /// effects; once those are stored, JetStream may forget the messages.
    pub fn submit(
        &self,
        mut ops: Vec<ClusterOp>,
        state: Vec<StoreOp>,
        ticket: Option<u64>,
        delivered: Option<u64>,
    ) {
        let forwards = ops
            .iter()
            .filter(|o| matches!(o, ClusterOp::Forward { .. }))
            .count();
        let waiting = self.queued.load(Ordering::Relaxed);
        if waiting + forwards > MAX_QUEUED_FORWARDS {
            let before = ops.len();
            ops.retain(
                |o| !matches!(o, ClusterOp::Forward { publish, .. } if publish.qos == mqtt_proto::QoS::AtMostOnce),
            );
            self.counters
                .forward_dropped
                .fetch_add((before - ops.len()) as u64, Ordering::Relaxed);
        }
        if ops.is_empty() && state.is_empty() && ticket.is_none() && delivered.is_none() {
            return;
        }
        let n = ops
            .iter()
            .filter(|o| matches!(o, ClusterOp::Forward { .. }))
            .count();
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.backlog.state.fetch_add(state.len(), Ordering::Relaxed);
        let _ = self
            .commands
            .send(Command::Ops(ops, n as u64, state, ticket, delivered));
    }

    /// The core let the session of `client_id` go ([`Inbound::Claimed`]):
    /// once what was submitted before is stored, the node that claimed it
    /// hears so through `reply`.
    pub fn released(&self, client_id: Bytes, reply: Option<async_nats::Subject>) {
        let _ = self.commands.send(Command::Released(client_id, reply));
    }

    /// Moves what arrived into `out` (at most 1,024 at a time); when nothing
    /// has, registers `cx`'s waker and is pending. `Ready` with nothing in
    /// `out` means the node's thread has ended.
    pub fn poll_inbound(&mut self, cx: &mut Context<'_>, out: &mut Vec<Inbound>) -> Poll<()> {
        match self.inbound.poll_recv_many(cx, out, 1024) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// What the node did so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Flushes what was forwarded and stored and closes the connections
    /// (giving up on what NATS does not take within a couple of seconds).
    pub fn shutdown(mut self) {
        self.backlog.stopping.store(true, Ordering::Relaxed);
        // Nothing more is taken from the thread: one that waits to hand
        // something over stops waiting.
        self.inbound.close();
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

async fn connect(
    settings: &Settings,
    no_echo: bool,
    capacity: usize,
    what: &str,
    counters: Arc<Counters>,
) -> Result<async_nats::Client, StartError> {
    let name = format!("{} {what}", settings.node_id);
    let mut opts = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let (counters, name) = (counters.clone(), name.clone());
            async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        counters.slow_consumer.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            connection = name,
                            sid,
                            "NATS slow consumer: messages dropped"
                        );
                    }
                    async_nats::Event::Connected => {
                        tracing::info!(connection = name, "NATS connected")
                    }
                    other => tracing::warn!(connection = name, event = %other, "NATS"),
                }
            }
        })
        .name(format!("brokk {} {what}", settings.node_id))
        .connection_timeout(settings.connect_timeout)
        .max_reconnects(None)
        .subscription_capacity(capacity)
        .require_tls(settings.tls_required);
    if no_echo {
        opts = opts.no_echo();
    }
    if let Some((user, password)) = &settings.user {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &settings.token {
        opts = opts.token(token.clone());
    }
    if let Some(path) = &settings.credentials_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| StartError(format!("NATS credentials {}: {e}", path.display())))?;
    }
    if let Some(ca) = &settings.tls_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    let addrs: Vec<async_nats::ServerAddr> = settings
        .servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| StartError(format!("NATS server {s:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    opts.connect(addrs).await.map_err(|e| {
        StartError(format!(
            "cannot connect to NATS at {}: {e}",
            settings.servers.join(", ")
        ))
    })
}

async fn bucket(
    js: &jetstream::Context,
    settings: &Settings,
    what: &str,
) -> Result<jetstream::kv::Store, StartError> {
    bucket_with(js, settings, what, None).await
}

/// A bucket whose purge markers JetStream forgets after `markers`.
async fn bucket_with(
    js: &jetstream::Context,
    settings: &Settings,
    what: &str,
    markers: Option<Duration>,
) -> Result<jetstream::kv::Store, StartError> {
    let name = settings.bucket(what);
    // A NATS cluster that is starting too elects its JetStream leader first:
    // until then the bucket is refused. Ask again until the connect timeout.
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    loop {
        let made = js
            .create_or_update_key_value(jetstream::kv::Config {
                bucket: name.clone(),
                description: format!("brokk {what}"),
                history: 1,
                num_replicas: settings.replicas.max(1),
                limit_markers: markers,
                ..Default::default()
            })
            .await;
        match made {
            Ok(store) => return Ok(store),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(StartError(format!("JetStream bucket {name}: {e}")));
            }
            Err(e) => {
                tracing::debug!(bucket = name, error = %e, "JetStream not ready; asking again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// A message from one of the node's subscriptions, and the filter (or shared
/// subscription) it subscribed for.
type Arrival = (async_nats::Message, TopicFilter);

#[allow(clippy::too_many_arguments)]
async fn run(
    settings: Settings,
    map: SubjectMap,
    mut commands: mpsc::UnboundedReceiver<Command>,
    inbound: mpsc::Sender<Inbound>,
    ready: std::sync::mpsc::Sender<Result<Joined, StartError>>,
    counters: Arc<Counters>,
    queued: Arc<AtomicUsize>,
    backlog: Arc<Backlog>,
) {
    // Shared groups' messages travel on subjects of their own, so that a
    // node's non-shared subscriptions never see them.
    let shared_map = match SubjectMap::new(&format!("{}.g", settings.prefix)) {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(StartError(format!("cluster prefix: {e}"))));
            return;
        }
    };
    let started = async {
        let main = connect(
            &settings,
            true,
            SUBSCRIPTION_CAPACITY,
            "main",
            counters.clone(),
        )
        .await?;
        // Two nodes with one name would take each other's sessions and
        // filters: a running node answers on its name's subject.
        let presence = format!(
            "{}.node.{}",
            settings.prefix,
            session_key(settings.node_id.as_bytes())
        );
        let asked = main.request(presence.clone(), Bytes::new());
        match tokio::time::timeout(Duration::from_secs(2), asked).await {
            Ok(Ok(_)) => {
                return Err(StartError(format!(
                    "node_id {:?} is in use by a running node of this cluster (prefix {:?}): every node needs its own",
                    settings.node_id, settings.prefix
                )))
            }
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not ask whether this node's name is in use"),
            Err(_) => tracing::warn!("could not ask whether this node's name is in use: no answer"),
        }
        let present = main
            .subscribe(presence)
            .await
            .map_err(|e| StartError(format!("NATS subscription for the node's name: {e}")))?;
        let queues = connect(
            &settings,
            false,
            SUBSCRIPTION_CAPACITY,
            "shared",
            counters.clone(),
        )
        .await?;
        let js = jetstream::new(main.clone());
        let retained = bucket(&js, &settings, "retained").await?;
        let sessions = bucket_with(&js, &settings, "sessions", Some(state::MARKER_TTL)).await?;
        // Started by its task (which tries again while JetStream has no leader
        // for the bucket).
        let claims = follow(sessions.clone(), 0, Resume::NewOnly);
        let (entries, last) = read_all(&retained, "retained", settings.connect_timeout).await?;
        let mut joined = Joined::default();
        for entry in &entries {
            if let Some(Inbound::Retained {
                publish: Some(p), ..
            }) = retained_entry(entry, &counters)
            {
                joined.retained.push(p);
            }
        }
        // Each watch is followed by a task that starts it again after the
        // revision it saw last when it fails (its consumer lived on a NATS
        // server that went away).
        let watch = follow(retained.clone(), last, Resume::FromRevision);
        let interest = bucket(&js, &settings, "interest").await?;
        let (entries, last) = read_all(&interest, "interest", settings.connect_timeout).await?;
        let mut peers = Peers::new(&settings.prefix);
        for entry in &entries {
            match interest_key(&entry.key) {
                // This node's own keys are from an earlier run: withdrawn.
                Some((node, _)) if node == settings.node_id => {
                    if entry.operation == jetstream::kv::Operation::Put {
                        let _ = interest.delete(&entry.key).await;
                    }
                }
                Some((node, filter)) if entry.operation == jetstream::kv::Operation::Put => {
                    joined.interest.push((peers.index(node), filter));
                }
                Some(_) => {}
                None => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let interest_watch = follow(interest.clone(), last, Resume::FromRevision);
        // This node's queue of QoS 1 and 2 messages: what the others sent
        // while it was away waits there.
        // This node's queue is read on a connection of its own, whose
        // subscriptions hold every message JetStream may have sent and not
        // had acknowledged: never a slow consumer's drop (which JetStream
        // would send again only after the ack wait).
        let queue_conn = connect(
            &settings,
            false,
            queue::SUBSCRIPTION_CAPACITY,
            "queue",
            counters.clone(),
        )
        .await?;
        let forward_stream = queue::open(&jetstream::new(queue_conn), &settings).await?;
        // Asked again while JetStream elects the stream's leader (a node
        // started right after a NATS server died met a time-out here).
        let deadline = tokio::time::Instant::now() + settings.connect_timeout;
        persist(deadline, || async {
            queue::consumer(&forward_stream, &settings.prefix, &settings.node_id)
                .await
                .map_err(state::StateError)
        })
        .await
        .map_err(|e| StartError(format!("JetStream consumer of this node's queue: {e}")))?;
        let (queued_tx, deliveries) = mpsc::channel::<queue::Queued>(4096);
        queue::follow(
            forward_stream.clone(),
            settings.prefix.clone(),
            settings.node_id.clone(),
            queue::consumer_name(&settings.node_id),
            0,
            queued_tx.clone(),
        );
        // The sessions this node held when it stopped: back from the
        // cluster's store, still claimed by it.
        let state_kv = bucket_with(&js, &settings, "state", Some(state::MARKER_TTL)).await?;
        let owners = bucket(&js, &settings, "owners").await?;
        wait_for_adoption(&owners, &main, &settings).await?;
        let mut state = StateStore::new(state_kv.clone(), js.clone());
        let mut owned: HashMap<String, Claim> = HashMap::new();
        let (entries, _) = read_all(&sessions, "sessions", settings.connect_timeout).await?;
        for entry in entries {
            let mine = entry.operation == jetstream::kv::Operation::Put
                && entry.value[..] == *settings.node_id.as_bytes();
            let Some(client_id) = claim_id(&entry.key).and_then(|id| MqttString::new(id).ok())
            else {
                continue;
            };
            if !mine {
                continue;
            }
            let (ops, marks) =
                state::read_session(&state_kv, &client_id, unix_ms(), settings.connect_timeout)
                    .await
                    .map_err(|e| StartError(e.to_string()))?;
            owned.insert(
                entry.key.clone(),
                Claim {
                    own: entry.revision,
                    ..Claim::default()
                },
            );
            if !ops.is_empty() {
                state.adopt(client_id.as_bytes(), marks);
                joined.sessions.extend(ops);
            }
        }
        let adopt_requests = main
            .subscribe(adopt::adopt_subject(&settings.prefix, &settings.node_id))
            .await
            .map_err(|e| StartError(format!("NATS subscription for adoptions: {e}")))?;
        let release = main
            .subscribe(format!(
                "{}.release.{}",
                settings.prefix,
                session_key(settings.node_id.as_bytes())
            ))
            .await
            .map_err(|e| StartError(format!("NATS subscription for session hand-overs: {e}")))?;
        Ok::<_, StartError>((
            (main, queues, retained, sessions, claims, watch),
            (interest, interest_watch, peers, deliveries),
            (state, owners, owned, release, present),
            (forward_stream, queued_tx, adopt_requests),
            joined,
        ))
    };
    let (
        (main, queues, retained, sessions, mut claims, mut watch),
        (interest, mut interest_watch, mut peers, mut deliveries),
        (mut state, owners, mut owned, mut release, mut present),
        (forward_stream, queued_tx, mut adopt_requests),
        joined,
    ) = match started.await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(joined)).is_err() {
        return;
    }
    tracing::info!(
        node = settings.node_id,
        servers = settings.servers.join(","),
        "joined the cluster"
    );
    let (arrive_tx, mut arrivals) = mpsc::channel::<Arrival>(4096);
    let (acquired_tx, mut acquired) = mpsc::unbounded_channel::<AcquireResult>();
    let mut subscriptions: HashMap<TopicFilter, Vec<tokio::task::AbortHandle>> = HashMap::new();
    let me = settings.node_id.clone();
    let hand_over = Arc::new(HandOver {
        sessions: sessions.clone(),
        state: state.kv.clone(),
        owners: owners.clone(),
        client: main.clone(),
        release_prefix: format!("{}.release", settings.prefix),
        prefix: settings.prefix.clone(),
        me: me.clone(),
        patience: settings.connect_timeout,
        limit: settings.max_sessions_per_authentication_name,
    });
    let mut shutdown = false;
    let mut gave_up = false;
    let outbox = Outbox {
        map: &map,
        shared: &shared_map,
        main: &main,
        js: jetstream::new(main.clone()),
        retained: &retained,
        me: &me,
        counters: &counters,
        patience: settings.connect_timeout,
    };
    let own_queue = match queue::queue_map(&settings.prefix, &me) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = e, "this node's queue has no subject");
            return;
        }
    };
    // The messages read from this node's queue and not yet acknowledged, with
    // the numbers the broker knows them by.
    let mut unacked: VecDeque<(u64, u32, jetstream::Message)> = VecDeque::new();
    let (adopt_tx, mut adopt_events) = mpsc::unbounded_channel::<AdoptEvent>();
    let mut adopting: Option<Adopting> = None;
    let mut tags = 0u32;
    let mut delivery_seq = 0u64;
    let mut msg_ids = 0u64;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None | Some(Command::Shutdown) => break,
                Some(Command::Released(client_id, reply)) => {
                    released(&main, &mut state, &client_id, reply).await;
                }
                Some(Command::Ops(ops, forwards, state_ops, ticket, delivered)) => {
                    let mut ticket = ticket;
                    let mut delivered = delivered;
                    let mut ok = true;
                    let mut batch = Some((ops, forwards, state_ops));
                    let mut replies = Vec::new();
                    let mut copies = Vec::new();
                    // Everything waiting goes out before one flush.
                    while let Some((ops, forwards, state_ops)) = batch.take() {
                    for op in ops {
                        match op {
                            ClusterOp::Interest { filter, on: true } => {
                                // Subscribed before announced: a node that
                                // forwards once it sees the announcement finds
                                // the subscription there.
                                let handles = subscribe(&map, &shared_map, &main, &queues, &filter, &arrive_tx).await;
                                let flushed = async {
                                    let _ = main.flush().await;
                                    let _ = queues.flush().await;
                                };
                                let _ = tokio::time::timeout(SHUTDOWN_FLUSH, flushed).await;
                                announce_within(&interest, &me, &filter, true, &counters, &backlog, &mut gave_up, settings.connect_timeout).await;
                                if let Some(old) = subscriptions.insert(filter, handles) {
                                    old.iter().for_each(|h| h.abort());
                                }
                            }
                            ClusterOp::Interest { filter, on: false } => {
                                announce_within(&interest, &me, &filter, false, &counters, &backlog, &mut gave_up, settings.connect_timeout).await;
                                if let Some(handles) = subscriptions.remove(&filter) {
                                    handles.iter().for_each(|h| h.abort());
                                }
                            }
                            ClusterOp::Forward { publish, nodes, shared } => {
                                ok &= outbox.forward(publish, &nodes, shared, &peers, &mut msg_ids, &mut copies).await;
                                // See `state::MAX_ACKS_WAITING`.
                                if copies.len() >= state::MAX_ACKS_WAITING {
                                    ok &= outbox.settle(core::mem::take(&mut copies), &peers).await;
                                }
                            }
                            ClusterOp::Acquire { ticket, client_id, clean_start, authentication_name } => {
                                owned.entry(session_key(client_id.as_bytes())).or_default().in_flight += 1;
                                let (hand_over, tx) = (hand_over.clone(), acquired_tx.clone());
                                tokio::spawn(async move {
                                    let r = hand_over.acquire(&client_id, clean_start, authentication_name.as_deref()).await;
                                    let _ = tx.send(AcquireResult { ticket, client_id, result: r });
                                });
                            }
                            ClusterOp::SessionEnded { client_id, authentication_name } => {
                                // The claim goes, unless a newer one (this
                                // node's or another's) replaced it.
                                let key = session_key(client_id.as_bytes());
                                let claimed = owned.remove(&key).filter(|c| c.in_flight == 0 && c.own > 0);
                                let name = authentication_name.filter(|_| hand_over.limit.is_some());
                                if claimed.is_some() || name.is_some() {
                                    let hand_over = hand_over.clone();
                                    tokio::spawn(async move {
                                        if let Some(c) = claimed {
                                            hand_over.unclaim(&key, c.own).await;
                                        }
                                        if let Some(name) = name {
                                            hand_over.quota_remove(&name, client_id.as_bytes()).await;
                                        }
                                    });
                                }
                            }
                        }
                    }
                    queued.fetch_sub(forwards as usize, Ordering::Relaxed);
                    if !state_ops.is_empty() {
                        let stopping = backlog.stopping.load(Ordering::Relaxed);
                        if stopping && gave_up {
                            ok = false;
                        } else {
                            let patience = if stopping { SHUTDOWN_FLUSH } else { settings.connect_timeout };
                            if let Err(e) = state.apply(&state_ops, patience).await {
                                counters.jetstream_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(error = %e, "the cluster's store refused a session's change");
                                ok = false;
                                if stopping {
                                    tracing::warn!("shutting down without the cluster's store: the sessions' last changes are lost");
                                    gave_up = true;
                                }
                            }
                        }
                        backlog.state.fetch_sub(state_ops.len(), Ordering::Relaxed);
                    }
                    match commands.try_recv() {
                        Ok(Command::Ops(o, f, st, t, d)) => {
                            ticket = t.or(ticket);
                            delivered = d.or(delivered);
                            batch = Some((o, f, st));
                        }
                        Ok(Command::Released(client_id, reply)) => replies.push((client_id, reply)),
                        Ok(Command::Shutdown) => {
                            shutdown = true;
                        }
                        Err(_) => {}
                    }
                    }
                    // What was submitted before a release is stored by now.
                    for (client_id, reply) in replies {
                        released(&main, &mut state, &client_id, reply).await;
                    }
                    // The deliveries' effects are stored: JetStream may
                    // forget the messages (one acknowledgement for all).
                    if let Some(delivered) = delivered.filter(|_| ok) {
                        // The last of each queue acknowledges those before it.
                        let mut last: Vec<(u32, jetstream::Message)> = Vec::new();
                        while unacked.front().is_some_and(|(seq, _, _)| *seq <= delivered) {
                            let Some((_, tag, m)) = unacked.pop_front() else { break };
                            match last.iter_mut().find(|(t, _)| *t == tag) {
                                Some(l) => l.1 = m,
                                None => last.push((tag, m)),
                            }
                        }
                        for (_, m) in last {
                            match tokio::time::timeout(SHUTDOWN_FLUSH, m.ack()).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => tracing::warn!(error = %e, "acknowledging a queue"),
                                // JetStream sends it again after the ack wait.
                                Err(_) => tracing::warn!("acknowledging a queue: NATS unreachable"),
                            }
                        }
                    }
                    // Every QoS 1 and 2 copy stored by JetStream.
                    ok &= outbox.settle(copies, &peers).await;
                    if let Some(ticket) = ticket {
                        // While NATS is unreachable a flush waits for the
                        // reconnection; the acknowledgements wait with it, for
                        // at most the connect timeout, and are then refused
                        // (the publishers send again).
                        match tokio::time::timeout(settings.connect_timeout, main.flush()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "flushing forwards to NATS");
                                ok = false;
                            }
                            Err(_) => {
                                tracing::warn!("NATS unreachable: acknowledgements of forwards refused");
                                ok = false;
                            }
                        }
                        if inbound.send(Inbound::Forwarded { ticket, ok }).await.is_err() {
                            break;
                        }
                    }
                    if shutdown {
                        break;
                    }
                }
            },
            Some((message, through)) = arrivals.recv(), if backlog.state.load(Ordering::Relaxed) < MAX_STATE_BACKLOG => {
                let Some(inbound_msg) = arrival(&map, &shared_map, message, through, &counters) else {
                    continue;
                };
                if inbound.send(inbound_msg).await.is_err() {
                    break;
                }
            }
            Some((tag, m)) = deliveries.recv(), if backlog.state.load(Ordering::Relaxed) < MAX_STATE_BACKLOG => {
                // While a departed node's queue is read, a message that
                // reached both queues is taken once.
                let again = adopting.as_mut().is_some_and(|a| {
                    adopt::forward_id(&m).is_some_and(|id| !a.seen.insert(id.to_owned()))
                });
                let queue_map = match &adopting {
                    Some(a) if a.tag == tag => &a.queue,
                    _ => &own_queue,
                };
                let decoded = if again { None } else { delivery(queue_map, &m, &counters) };
                match decoded {
                    Some(publish) => {
                        delivery_seq += 1;
                        unacked.push_back((delivery_seq, tag, m));
                        if inbound.send(Inbound::Delivery { publish, seq: delivery_seq }).await.is_err() {
                            break;
                        }
                    }
                    // Acknowledged with the message before it from its
                    // queue, or at once.
                    None => match unacked.iter_mut().rev().find(|(_, t, _)| *t == tag) {
                        Some(last) => last.2 = m,
                        None => {
                            let _ = tokio::time::timeout(SHUTDOWN_FLUSH, m.ack()).await;
                        }
                    },
                }
            }
            Some(event) = adopt_events.recv() => match event {
                AdoptEvent::Sessions { node, sessions, reply, trigger, initial } => {
                    // The departed queue is read once the sessions it had
                    // are here (the first claims, made under the lock).
                    let start = initial && adopting.as_ref().is_some_and(|a| a.node == node && a.follower.is_none());
                    if start {
                        tracing::info!(node, sessions = sessions.len(), "adopting a node that left the cluster");
                    }
                    let Some(a) = adopting.as_mut().filter(|a| a.node == node) else {
                        continue;
                    };
                    let mut records = Vec::new();
                    a.clients.extend(trigger);
                    for s in sessions {
                        owned.insert(s.key, Claim { own: s.revision, ..Claim::default() });
                        if !s.ops.is_empty() {
                            state.adopt(s.client_id.as_bytes(), s.marks);
                        }
                        a.clients.insert(s.client_id.as_shared().clone());
                        records.extend(s.ops);
                    }
                    if inbound.send(Inbound::Adopted { records }).await.is_err() {
                        break;
                    }
                    if let Some(reply) = reply {
                        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, main.publish(reply, Bytes::new())).await;
                    }
                    if start {
                        a.follower = Some(queue::follow(
                            forward_stream.clone(),
                            settings.prefix.clone(),
                            node.clone(),
                            queue::adopted_name(&node),
                            a.tag,
                            queued_tx.clone(),
                        ));
                        // Its filters go once this node announced the
                        // adopted sessions' own; then its queue drains.
                        let (stream, interest, tx, patience) = (forward_stream.clone(), interest.clone(), adopt_tx.clone(), settings.connect_timeout);
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            adopt::withdraw_interest(&interest, &node, patience).await;
                            let name = queue::adopted_name(&node);
                            let mut empty = 0;
                            for _ in 0..200 {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                empty = if queue::drained(&stream, &name).await { empty + 1 } else { 0 };
                                if empty >= 2 {
                                    break;
                                }
                            }
                            let _ = tx.send(AdoptEvent::Drained(node));
                        });
                    }
                }
                AdoptEvent::Drained(node) => {
                    let Some(a) = adopting.take_if(|a| a.node == node) else {
                        continue;
                    };
                    if let Some(f) = &a.follower {
                        f.abort();
                    }
                    let name = queue::adopted_name(&node);
                    if let Err(e) = forward_stream.delete_consumer(&name).await {
                        tracing::warn!(node, error = %e, "cannot delete the adopted queue's consumer");
                    }
                    let _ = owners.delete(adopt::lock_key(&node)).await;
                    tracing::info!(node, "adopted the node that left: its queue is read");
                    // The sessions asked for meanwhile go now.
                    for (client_id, reply) in a.deferred {
                        if inbound.send(Inbound::Claimed { client_id, reply }).await.is_err() {
                            break;
                        }
                    }
                }
            },
            Some(request) = adopt_requests.next() => {
                // Another node gave this adopter a session of the departed
                // node back.
                let Some(a) = &adopting else {
                    if let Some(reply) = request.reply {
                        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, main.publish(reply, Bytes::new())).await;
                    }
                    continue;
                };
                let key = String::from_utf8_lossy(&request.payload).into_owned();
                let (hand_over, node, tx) = (hand_over.clone(), a.node.clone(), adopt_tx.clone());
                tokio::spawn(async move {
                    let sessions = adopt::claim_sessions(&hand_over.sessions, &hand_over.state, &hand_over.me, &node, Some(&key), hand_over.patience).await;
                    let sessions = sessions.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "cannot take a session of the departed node");
                        Vec::new()
                    });
                    let _ = tx.send(AdoptEvent::Sessions { node, sessions, reply: request.reply, trigger: None, initial: false });
                });
            }
            Some(entry) = watch.recv() => {
                if let Some(i) = retained_entry(&entry, &counters) {
                    if inbound.send(i).await.is_err() {
                        break;
                    }
                }
            }
            Some(entry) = interest_watch.recv() => {
                let Some((node, filter)) = interest_key(&entry.key) else {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if node == me {
                    continue;
                }
                let on = entry.operation == jetstream::kv::Operation::Put;
                let node = peers.index(node);
                if inbound.send(Inbound::RemoteInterest { node, filter, on }).await.is_err() {
                    break;
                }
            }
            Some(entry) = claims.recv() => {
                if entry.operation != jetstream::kv::Operation::Put || entry.value[..] == *me.as_bytes() {
                    continue;
                }
                // Only a client this node claimed can be taken from it.
                let Some(c) = owned.get_mut(&entry.key) else {
                    continue;
                };
                c.later = c.later.max(entry.revision);
                if c.taken() {
                    owned.remove(&entry.key);
                    if let Some(client_id) = claim_id(&entry.key) {
                        if let Some(a) = adopting.as_mut().filter(|a| a.clients.contains(&client_id)) {
                            a.deferred.push((client_id, None));
                            continue;
                        }
                        if inbound.send(Inbound::Claimed { client_id, reply: None }).await.is_err() {
                            break;
                        }
                    }
                }
            }
            Some(ping) = present.next() => {
                // Another node starting with this node's name.
                if let Some(reply) = ping.reply {
                    if ping.payload.is_empty() {
                        tracing::warn!("another node tried to join with this node's name; it was refused");
                    }
                    let _ = tokio::time::timeout(SHUTDOWN_FLUSH, main.publish(reply, Bytes::from(me.clone()))).await;
                }
            }
            Some(request) = release.next() => {
                // Another node claimed a session this node holds, and waits
                // for it to be let go.
                let client_id = request.payload.clone();
                owned.remove(&session_key(&client_id));
                if let Some(a) = adopting.as_mut().filter(|a| a.clients.contains(&client_id)) {
                    a.deferred.push((client_id, request.reply));
                    continue;
                }
                if inbound.send(Inbound::Claimed { client_id, reply: request.reply }).await.is_err() {
                    break;
                }
            }
            Some(AcquireResult { ticket, client_id, result }) = acquired.recv() => {
                let key = session_key(client_id.as_bytes());
                let mut adopt = None;
                let (answer, taken) = match result {
                    Ok(Acquisition { answer, revision, marks, adopt: departed }) => {
                        adopt = departed;
                        let c = owned.entry(key.clone()).or_default();
                        c.in_flight = c.in_flight.saturating_sub(1);
                        if let Some(r) = revision {
                            c.own = c.own.max(r);
                        }
                        if matches!(&answer, broker_state::Acquired::Session(ops) if !ops.is_empty()) {
                            state.adopt(client_id.as_bytes(), marks);
                        }
                        (answer, c.taken())
                    }
                    Err(e) => {
                        counters.jetstream_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(client_id = client_id.as_str(), error = %e, "cannot take a session over from the cluster");
                        if let Some(c) = owned.get_mut(&key) {
                            c.in_flight = c.in_flight.saturating_sub(1);
                        }
                        (Acquired::Unavailable, false)
                    }
                };
                if inbound.send(Inbound::Acquired { ticket, answer }).await.is_err() {
                    break;
                }
                // The session's holder is gone: this node adopts it (after
                // the session went to the core, so that the departed
                // queue's messages for it find it there).
                if let Some(node) = adopt.filter(|_| adopting.is_none()) {
                    let queue = match queue::queue_map(&settings.prefix, &node) {
                        Ok(q) => q,
                        Err(e) => {
                            tracing::warn!(node, error = e, "the departed node's queue has no subject");
                            continue;
                        }
                    };
                    tags += 1;
                    adopting = Some(Adopting {
                        node: node.clone(),
                        tag: tags,
                        queue,
                        clients: Default::default(),
                        deferred: Vec::new(),
                        follower: None,
                        seen: Default::default(),
                    });
                    let (hand_over, stream, tx) = (hand_over.clone(), forward_stream.clone(), adopt_tx.clone());
                    let trigger = client_id.as_shared().clone();
                    tokio::spawn(async move {
                        if let Err(e) = queue::take_over(&stream, &hand_over.prefix, &node).await {
                            tracing::warn!(node, error = e, "cannot take the departed node's queue over");
                        }
                        let sessions = adopt::claim_sessions(&hand_over.sessions, &hand_over.state, &hand_over.me, &node, None, hand_over.patience).await;
                        let sessions = sessions.unwrap_or_else(|e| {
                            tracing::warn!(node, error = %e, "cannot take the departed node's sessions");
                            Vec::new()
                        });
                        let _ = tx.send(AdoptEvent::Sessions { node, sessions, reply: None, trigger: Some(trigger), initial: true });
                    });
                }
                // Another node claimed it again while this claim was on its
                // way: it goes there.
                if taken {
                    owned.remove(&key);
                    let client_id = client_id.as_shared().clone();
                    if inbound.send(Inbound::Claimed { client_id, reply: None }).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    // What was forwarded last goes out, unless NATS is gone (a flush waits for
    // the reconnection): shutting down never hangs on it.
    let flushed = async {
        let _ = main.flush().await;
        let _ = queues.flush().await;
    };
    if tokio::time::timeout(SHUTDOWN_FLUSH, flushed).await.is_err() {
        tracing::warn!("NATS unreachable at shutdown: the last forwards may not have reached it");
    }
}

/// How long shutting down waits for the last forwards to reach NATS.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Reads every current value of a bucket (the last per key, deletions
/// included); returns them and the revision of the last. While a NATS server
/// of the cluster has just died, JetStream refuses consumers until the bucket's
/// stream has a new leader: the read is tried again until `patience` is over.
pub(crate) async fn read_all(
    store: &jetstream::kv::Store,
    what: &str,
    patience: Duration,
) -> Result<(Vec<jetstream::kv::Entry>, u64), StartError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match read_all_once(store, what).await {
            Ok(read) => return Ok(read),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "JetStream not ready; reading again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

async fn read_all_once(
    store: &jetstream::kv::Store,
    what: &str,
) -> Result<(Vec<jetstream::kv::Entry>, u64), StartError> {
    let error = |e: &dyn std::fmt::Display| StartError(format!("reading the {what} bucket: {e}"));
    let mut watch = store.watch_with_history(">").await.map_err(|e| error(&e))?;
    let status = store.status().await.map_err(|e| error(&e))?;
    let mut entries = Vec::new();
    let mut left = status.values();
    let mut last = 0;
    while left > 0 {
        let Some(entry) = watch.next().await else {
            break;
        };
        let entry = entry.map_err(|e| error(&e))?;
        left = entry.delta;
        last = entry.revision;
        entries.push(entry);
    }
    Ok((entries, last))
}

/// The interest bucket's key of `filter` announced by `node`: the node's name,
/// a dot, and the filter in base64url (keys allow `A-Z a-z 0-9 - _ = . /`).
fn interest_key_of(node: &str, filter: &TopicFilter) -> String {
    use base64::Engine as _;
    format!(
        "{node}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(filter.as_bytes())
    )
}

/// The node and filter of an interest bucket's key.
pub(crate) fn interest_key(key: &str) -> Option<(&str, TopicFilter)> {
    use base64::Engine as _;
    let (node, filter) = key.split_once('.')?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(filter)
        .ok()?;
    Some((node, TopicFilter::new(Bytes::from(bytes)).ok()?))
}

/// Puts (or deletes) this node's key for `filter` in the interest bucket.
async fn announce(
    interest: &jetstream::kv::Store,
    me: &str,
    filter: &TopicFilter,
    on: bool,
    counters: &Counters,
) {
    let key = interest_key_of(me, filter);
    let result = if on {
        interest
            .put(&key, Bytes::new())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        interest.delete(&key).await.map_err(|e| e.to_string())
    };
    if let Err(e) = result {
        counters.jetstream_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = e, "announcing interest in the interest bucket");
    }
}

/// [`announce`], for at most the connect timeout; while shutting down for at
/// most [`SHUTDOWN_FLUSH`], and not at all once JetStream did not answer then
/// (a node that stops withdraws every filter at once: with NATS gone, each
/// would wait for JetStream's timeout). A node deletes its own keys when it
/// starts again.
#[allow(clippy::too_many_arguments)]
async fn announce_within(
    interest: &jetstream::kv::Store,
    me: &str,
    filter: &TopicFilter,
    on: bool,
    counters: &Counters,
    backlog: &Backlog,
    gave_up: &mut bool,
    patience: Duration,
) {
    let stopping = backlog.stopping.load(Ordering::Relaxed);
    if stopping && *gave_up {
        return;
    }
    let patience = if stopping { SHUTDOWN_FLUSH } else { patience };
    let announced = announce(interest, me, filter, on, counters);
    if tokio::time::timeout(patience, announced).await.is_err() {
        counters.jetstream_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("announcing interest: JetStream did not answer");
        if stopping {
            *gave_up = true;
        }
    }
}

/// The other nodes, numbered for the core in the order they appear (a number
/// is never reused while this node runs), with the subjects of their queues.
struct Peers {
    prefix: String,
    by_name: HashMap<String, u32>,
    queues: Vec<Option<SubjectMap>>,
}

impl Peers {
    fn new(prefix: &str) -> Peers {
        Peers {
            prefix: prefix.to_owned(),
            by_name: HashMap::new(),
            queues: Vec::new(),
        }
    }

    /// The number of the node `name`.
    fn index(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.queues.len() as u32;
        self.by_name.insert(name.to_owned(), i);
        self.queues.push(queue::queue_map(&self.prefix, name).ok());
        i
    }

    /// The subjects of node `i`'s queue.
    fn queue(&self, i: u32) -> Option<&SubjectMap> {
        self.queues.get(i as usize).and_then(Option::as_ref)
    }
}

/// How a watch starts again after it failed.
#[derive(Clone, Copy)]
enum Resume {
    /// Every change after the last one seen (the retained bucket: each node
    /// must apply every change).
    FromRevision,
    /// Only changes from now on (session claims: an old claim must not close
    /// a newer connection; the revisions decide the rest).
    NewOnly,
}

/// Watches `store` on a task of its own (from the revision after `last`, or
/// only what changes from now on) and hands its entries over; when the watch
/// cannot start or fails (its ephemeral consumer was on a NATS server that
/// died, a heartbeat was missed), it is started again after the last revision
/// seen, twice a second until that works.
fn follow(
    store: jetstream::kv::Store,
    mut last: u64,
    resume: Resume,
) -> mpsc::Receiver<jetstream::kv::Entry> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut watch = loop {
            let w = match resume {
                Resume::FromRevision => store.watch_all_from_revision(last + 1).await,
                Resume::NewOnly => store.watch_all().await,
            };
            match w {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(bucket = store.name, error = %e, "cannot watch the bucket yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        loop {
            match watch.next().await {
                Some(Ok(entry)) => {
                    last = entry.revision;
                    if tx.send(entry).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(bucket = store.name, error = %e, "bucket watch failed; watching again");
                }
                None => tracing::warn!(bucket = store.name, "bucket watch ended; watching again"),
            }
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let again = match resume {
                    Resume::FromRevision => store.watch_all_from_revision(last + 1).await,
                    Resume::NewOnly => store.watch_all().await,
                };
                match again {
                    Ok(w) => {
                        watch = w;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(bucket = store.name, error = %e, "cannot watch the bucket yet")
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        }
    });
    rx
}

/// This node's claim of one client's session in the sessions bucket.
#[derive(Default)]
struct Claim {
    /// Puts under way.
    in_flight: usize,
    /// The revision of this node's latest put.
    own: u64,
    /// The latest revision another node put (0: none seen).
    later: u64,
}

impl Claim {
    /// Another node claimed the client after this node's last claim (and no
    /// claim of this node is still on its way, whose revision would decide).
    fn taken(&self) -> bool {
        self.in_flight == 0 && self.later > self.own
    }
}

/// An acquisition's outcome, back on the node's loop.
struct AcquireResult {
    ticket: AuthTicket,
    client_id: MqttString,
    result: Result<Acquisition, state::StateError>,
}

/// A departed node this node adopts (see the `adopt` module).
struct Adopting {
    node: String,
    /// Its queue's messages' tag.
    tag: u32,
    /// Its queue's subjects.
    queue: SubjectMap,
    /// The sessions adopted (and the one whose acquisition found the node
    /// gone): another node that asks for one waits until the queue is read.
    clients: std::collections::HashSet<Bytes>,
    deferred: Vec<(Bytes, Option<async_nats::Subject>)>,
    /// Reads its queue, once its sessions are here.
    follower: Option<tokio::task::AbortHandle>,
    /// Forwards seen from either queue meanwhile.
    seen: std::collections::HashSet<String>,
}

/// Adoption's steps, back on the node's loop.
enum AdoptEvent {
    /// Sessions of `node` claimed and read (`reply`: the node that gave one
    /// back waits; `trigger`: the session whose acquisition found it gone).
    Sessions {
        node: String,
        sessions: Vec<adopt::Adopted>,
        reply: Option<async_nats::Subject>,
        trigger: Option<Bytes>,
        /// The claims made under the lock (its queue is read from then on).
        initial: bool,
    },
    /// Its filters are withdrawn and its queue is read to the end.
    Drained(String),
}

/// A node that starts while another adopts its sessions (it was taken for
/// gone) waits until that is over; an adopter that is gone too leaves a lock
/// that is dropped here.
async fn wait_for_adoption(
    owners: &jetstream::kv::Store,
    client: &async_nats::Client,
    settings: &Settings,
) -> Result<(), StartError> {
    let lock = adopt::lock_key(&settings.node_id);
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    loop {
        let entry = owners.entry(&lock).await.ok().flatten();
        let Some(entry) = entry.filter(|e| e.operation == jetstream::kv::Operation::Put) else {
            return Ok(());
        };
        let adopter = String::from_utf8_lossy(&entry.value).into_owned();
        if !adopt::alive(client, &settings.prefix, &adopter).await {
            let _ = owners.delete(&lock).await;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StartError(format!(
                "node {adopter:?} is taking this node's sessions over (it was taken for gone); start it again in a few seconds"
            )));
        }
        tracing::info!(
            adopter,
            "another node is taking this node's sessions over; waiting"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What an acquisition found.
struct Acquisition {
    answer: Acquired,
    /// The revision of this node's claim (none when refused before claiming).
    revision: Option<u64>,
    /// Which per-message keys the session read has (see `StateStore::adopt`).
    marks: state::Marks,
    /// The session's holder left the cluster, and this node adopts it.
    adopt: Option<String>,
}

/// What taking a session over needs, shared by the tasks that do it.
struct HandOver {
    sessions: jetstream::kv::Store,
    state: jetstream::kv::Store,
    owners: jetstream::kv::Store,
    client: async_nats::Client,
    release_prefix: String,
    prefix: String,
    me: String,
    patience: Duration,
    limit: Option<usize>,
}

/// How long taking a session over keeps asking JetStream while it refuses
/// (electing a new leader after a NATS server died takes seconds), well
/// within a client's connect timeout.
const ACQUIRE_PATIENCE: Duration = Duration::from_secs(8);

/// Runs `attempt` again every 100 ms while it fails, until `deadline`.
pub(crate) async fn persist<T, F, Fut>(
    deadline: tokio::time::Instant,
    mut attempt: F,
) -> Result<T, state::StateError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, state::StateError>>,
{
    loop {
        // An attempt that hangs (a request to a JetStream leader that just
        // died waits for its timeout) ends at the deadline too.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(50));
        let tried = tokio::time::timeout(left, attempt())
            .await
            .unwrap_or_else(|_| Err(state::StateError("JetStream did not answer in time".into())));
        match tried {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "JetStream refused; asking again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How many times a compare-and-set of a name's sessions is tried against
/// other nodes' writes.
const CAS_TRIES: usize = 32;

/// How long one request to the node that held a session waits for its answer.
const RELEASE_ATTEMPT: Duration = Duration::from_millis(500);

/// How long a node waits in all for the node that held a session to let it
/// go (well within a client's connect timeout).
const RELEASE_PATIENCE: Duration = Duration::from_secs(5);

impl HandOver {
    /// Takes the session of `client_id` over for this node: the name's quota
    /// (when there is a limit), the claim (compare-and-set on the sessions
    /// bucket, so that of two nodes claiming at once each sees the other's
    /// revision), the node that held it asked to let it go (it answers once
    /// its last changes are stored; a node that is gone has no responder and
    /// is not waited for), then the session read from the cluster's store
    /// (or, for a clean start, removed from it).
    async fn acquire(
        &self,
        client_id: &MqttString,
        clean_start: bool,
        authentication_name: Option<&str>,
    ) -> Result<Acquisition, state::StateError> {
        let refused = |answer| Acquisition {
            answer,
            revision: None,
            marks: state::Marks::new(),
            adopt: None,
        };
        // Every step shares one deadline, well within the client's connect
        // timeout: a cluster that cannot answer by then refuses with 0x88.
        let deadline = tokio::time::Instant::now() + self.patience.min(ACQUIRE_PATIENCE);
        if let (Some(max), Some(name)) = (self.limit, authentication_name) {
            let added =
                persist(deadline, || self.quota_add(name, client_id.as_bytes(), max)).await?;
            if !added {
                return Ok(refused(Acquired::QuotaExceeded));
            }
        }
        let key = session_key(client_id.as_bytes());
        let mut adopt = None;
        let (revision, before) = loop {
            // A departed holder's sessions are claimed by its adopter first
            // (its queue may hold messages for them): not from it directly.
            if let Some(holder) = self.holder(&key).await {
                if holder != self.me && !adopt::alive(&self.client, &self.prefix, &holder).await {
                    let gate = self.gate(&holder, &key, None).await?;
                    match gate {
                        adopt::Gate::Adopt => adopt = Some(holder),
                        adopt::Gate::Mine => {}
                        adopt::Gate::HandedTo if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        adopt::Gate::HandedTo => {
                            return Err(state::StateError(
                                "the session's departed node is being adopted".into(),
                            ))
                        }
                    }
                }
            }
            let (revision, before) = persist(deadline, || self.claim_once(&key)).await?;
            let Some(node) = before.as_deref().filter(|b| *b != self.me) else {
                break (revision, before);
            };
            if self.ask_release(node, client_id, deadline).await {
                break (revision, before);
            }
            // Gone: its queue may hold messages for this session.
            let gate = self.gate(node, &key, Some(revision)).await?;
            match gate {
                adopt::Gate::Adopt => {
                    adopt = Some(node.to_owned());
                    break (revision, before);
                }
                adopt::Gate::Mine => break (revision, before),
                // From the adopter, as from any node.
                adopt::Gate::HandedTo if tokio::time::Instant::now() < deadline => {}
                adopt::Gate::HandedTo => {
                    return Err(state::StateError(
                        "the session's departed node is being adopted".into(),
                    ))
                }
            }
        };
        if clean_start {
            if before.as_deref() != Some(self.me.as_str()) {
                persist(deadline, || state::purge_session(&self.state, &key)).await?;
            }
            return Ok(Acquisition {
                answer: Acquired::Session(Vec::new()),
                revision: Some(revision),
                marks: state::Marks::new(),
                adopt,
            });
        }
        if before.as_deref() == Some(self.me.as_str()) {
            // Here already (the core has it, or it ended here).
            return Ok(Acquisition {
                answer: Acquired::Session(Vec::new()),
                revision: Some(revision),
                marks: state::Marks::new(),
                adopt,
            });
        }
        let (ops, marks) = persist(deadline, || {
            state::read_session(&self.state, client_id, unix_ms(), self.patience)
        })
        .await?;
        Ok(Acquisition {
            answer: Acquired::Session(ops),
            revision: Some(revision),
            marks,
            adopt,
        })
    }

    /// Who adopts `node`, gone from the session `key` ([`adopt::gate`]).
    async fn gate(
        &self,
        node: &str,
        key: &str,
        revision: Option<u64>,
    ) -> Result<adopt::Gate, state::StateError> {
        adopt::gate(
            &self.owners,
            &self.sessions,
            &self.client,
            &self.prefix,
            &self.me,
            node,
            key,
            revision,
        )
        .await
    }

    /// The node the sessions bucket names for `key`, if any.
    async fn holder(&self, key: &str) -> Option<String> {
        let entry = self.sessions.entry(key).await.ok().flatten()?;
        (entry.operation == jetstream::kv::Operation::Put)
            .then(|| String::from_utf8_lossy(&entry.value).into_owned())
    }

    /// Puts this node's name under the client's key if nobody wrote it since
    /// it was read (once); returns the new revision and the node named
    /// before. Another node that wrote in between makes it fail, and
    /// [`persist`] reads again.
    async fn claim_once(&self, key: &str) -> Result<(u64, Option<String>), state::StateError> {
        let failed = |e: &dyn core::fmt::Display| {
            state::StateError(format!("claiming a session in the sessions bucket: {e}"))
        };
        let entry = self.sessions.entry(key).await.map_err(|e| failed(&e))?;
        let me = Bytes::from(self.me.clone());
        let (written, before) = match entry {
            Some(e) if e.operation == jetstream::kv::Operation::Put => {
                let before = String::from_utf8_lossy(&e.value).into_owned();
                (
                    self.sessions
                        .update(key, me, e.revision)
                        .await
                        .map_err(|e| failed(&e)),
                    Some(before),
                )
            }
            Some(e) => (
                self.sessions
                    .update(key, me, e.revision)
                    .await
                    .map_err(|e| failed(&e)),
                None,
            ),
            None => (
                self.sessions.create(key, me).await.map_err(|e| failed(&e)),
                None,
            ),
        };
        Ok((written?, before))
    }

    /// Takes this node's claim of a session that ended off the sessions
    /// bucket (if it is still the claim of `revision`), leaving a marker that
    /// JetStream forgets: client identifiers that come and go leave nothing.
    async fn unclaim(&self, key: &str, revision: u64) {
        let purged = self
            .sessions
            .purge_expect_revision_with_ttl(key, revision, state::MARKER_TTL)
            .await;
        if let Err(e) = purged {
            tracing::debug!(error = %e, "a claim changed since the session ended here; kept");
        }
    }

    /// Asks `node` to let the session go, and waits for its answer. A node
    /// that is gone has no responder, which NATS says at once; but for a
    /// moment after it died the NATS servers may still route to it, and the
    /// request goes unanswered: it is asked again every [`RELEASE_ATTEMPT`],
    /// for at most [`RELEASE_PATIENCE`] in all (then what the cluster's store
    /// has is taken: a CONNECT cannot wait for ever).
    async fn ask_release(
        &self,
        node: &str,
        client_id: &MqttString,
        until: tokio::time::Instant,
    ) -> bool {
        let subject = format!("{}.{}", self.release_prefix, session_key(node.as_bytes()));
        let deadline = until.min(tokio::time::Instant::now() + RELEASE_PATIENCE);
        loop {
            let asked = self
                .client
                .request(subject.clone(), client_id.as_shared().clone());
            match tokio::time::timeout(RELEASE_ATTEMPT, asked).await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                    tracing::info!(
                        node,
                        client_id = client_id.as_str(),
                        "the node that held the session is gone"
                    );
                    return false;
                }
                Ok(Err(e)) => {
                    tracing::debug!(node, error = %e, "asking for a session; asking again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    node,
                    client_id = client_id.as_str(),
                    "the node that held the session did not answer in time: taking what the cluster stored"
                );
                return true;
            }
        }
    }

    /// Adds `client_id` to the sessions of `name` unless it has `max`
    /// already; returns whether it is there now.
    async fn quota_add(
        &self,
        name: &str,
        client_id: &[u8],
        max: usize,
    ) -> Result<bool, state::StateError> {
        let key = session_key(name.as_bytes());
        let me = session_key(client_id);
        for _ in 0..CAS_TRIES {
            let entry =
                self.owners.entry(&key).await.map_err(|e| {
                    state::StateError(format!("reading the sessions of {name:?}: {e}"))
                })?;
            let (mut list, revision) = match &entry {
                Some(e) if e.operation == jetstream::kv::Operation::Put => {
                    (owner_list(&e.value), Some(e.revision))
                }
                Some(e) => (Vec::new(), Some(e.revision)),
                None => (Vec::new(), None),
            };
            if list.contains(&me) {
                return Ok(true);
            }
            if list.len() >= max {
                return Ok(false);
            }
            list.push(me.clone());
            let value = Bytes::from(list.join("\n"));
            let written = match revision {
                Some(r) => self
                    .owners
                    .update(&key, value, r)
                    .await
                    .map_err(|e| e.to_string()),
                None => self
                    .owners
                    .create(&key, value)
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(_) => return Ok(true),
                Err(e) => tracing::debug!(error = e, "session count raced; trying again"),
            }
        }
        Err(state::StateError(format!(
            "counting the sessions of {name:?}: other nodes kept changing it"
        )))
    }

    /// Takes `client_id` off the sessions of `name`.
    async fn quota_remove(&self, name: &str, client_id: &[u8]) {
        let key = session_key(name.as_bytes());
        let me = session_key(client_id);
        for _ in 0..CAS_TRIES {
            let Ok(Some(entry)) = self.owners.entry(&key).await else {
                return;
            };
            if entry.operation != jetstream::kv::Operation::Put {
                return;
            }
            let mut list = owner_list(&entry.value);
            let before = list.len();
            list.retain(|c| *c != me);
            if list.len() == before {
                return;
            }
            let value = Bytes::from(list.join("\n"));
            if self
                .owners
                .update(&key, value, entry.revision)
                .await
                .is_ok()
            {
                return;
            }
        }
        tracing::warn!(name, "could not take an ended session off its name's count");
    }
}

/// The client keys in an owners value (one per line).
fn owner_list(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The core let a session go: its marks are forgotten, and the node that
/// claimed it hears so (everything submitted before is stored by now).
async fn released(
    client: &async_nats::Client,
    state: &mut StateStore,
    client_id: &[u8],
    reply: Option<async_nats::Subject>,
) {
    state.forget(client_id);
    if let Some(reply) = reply {
        let answered = async {
            if let Err(e) = client.publish(reply, Bytes::new()).await {
                tracing::warn!(error = %e, "answering a session hand-over");
            }
            let _ = client.flush().await;
        };
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, answered).await;
    }
}

pub(crate) fn claim_id(key: &str) -> Option<Bytes> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key)
        .ok()
        .map(Bytes::from)
}

/// Subscribes a filter's subjects; each subscription's messages go to
/// `arrivals` from a task of its own (aborting it unsubscribes).
async fn subscribe(
    map: &SubjectMap,
    shared: &SubjectMap,
    main: &async_nats::Client,
    queues: &async_nats::Client,
    filter: &TopicFilter,
    arrivals: &mpsc::Sender<Arrival>,
) -> Vec<tokio::task::AbortHandle> {
    let (subjects, queue) = match filter.shared() {
        Some((group, f)) => (
            shared.filter_to_subjects(f),
            Some(map.shared_queue_group(group, f)),
        ),
        None => (map.filter_to_subjects(filter.as_str()), None),
    };
    let mut handles = Vec::with_capacity(subjects.len());
    for subject in subjects {
        let sub = match &queue {
            Some(q) => queues.queue_subscribe(subject.clone(), q.clone()).await,
            None => main.subscribe(subject.clone()).await,
        };
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(subject, error = %e, "NATS subscription refused");
                continue;
            }
        };
        let (tx, through) = (arrivals.clone(), filter.clone());
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if tx.send((m, through.clone())).await.is_err() {
                    break;
                }
            }
        });
        handles.push(task.abort_handle());
    }
    handles
}

/// What forwarding needs, for the node's loop.
struct Outbox<'a> {
    map: &'a SubjectMap,
    shared: &'a SubjectMap,
    main: &'a async_nats::Client,
    js: jetstream::Context,
    retained: &'a jetstream::kv::Store,
    me: &'a str,
    counters: &'a Counters,
    patience: Duration,
}

/// A QoS 1 or 2 copy published to another node's queue, until JetStream
/// says it stored it.
struct Copy {
    publish: Arc<Publish>,
    node: u32,
    id: String,
    ack: Option<jetstream::context::PublishAckFuture>,
}

impl Outbox<'_> {
    /// Sends a forward on its way: a QoS 1 or 2 copy to the queue of each of
    /// `nodes` (added to `copies`, see [`Outbox::settle`]), a QoS 0 message on
    /// its topic's subject, a shared group's on the shared subject (and a
    /// retained message into the retained bucket). Returns false when a
    /// retained message could not be stored within the patience (JetStream
    /// without a leader for that long).
    async fn forward(
        &self,
        p: Box<Publish>,
        nodes: &[u32],
        shared: bool,
        peers: &Peers,
        msg_ids: &mut u64,
        copies: &mut Vec<Copy>,
    ) -> bool {
        let too_long = self.map.max_subject_len(p.topic.len()) > MAX_SUBJECT_LEN
            && self.map.topic_to_subject(p.topic.as_str()).len() > MAX_SUBJECT_LEN;
        if too_long {
            self.counters
                .forward_dropped
                .fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let durable = p.qos != mqtt_proto::QoS::AtMostOnce;
        if !durable || nodes.is_empty() {
            return self
                .publish(&p, !durable && !nodes.is_empty(), shared)
                .await;
        }
        // Shared by the copies (each may be published again).
        let p: Arc<Publish> = Arc::from(p);
        // One id per forward, and the node each copy is for after it: a node
        // reading two queues takes the copies once (see `adopt`).
        *msg_ids += 1;
        for &node in nodes {
            let id = format!("{}-{}-{node}", self.me, msg_ids);
            let mut copy = Copy {
                publish: p.clone(),
                node,
                id,
                ack: None,
            };
            copy.ack = self.publish_copy(&copy, peers).await;
            copies.push(copy);
        }
        self.publish(&p, false, shared).await
    }

    /// Publishes a forward on its topic's subject (`on_topic`, QoS 0), on the
    /// shared space's subject (`shared`), and keeps a retained one in the
    /// retained bucket; false when that could not be stored.
    async fn publish(&self, p: &Publish, on_topic: bool, shared: bool) -> bool {
        let counters = self.counters;
        let mut subjects = Vec::with_capacity(2);
        if on_topic {
            subjects.push(self.map.topic_to_subject(p.topic.as_str()));
        }
        if shared {
            subjects.push(self.shared.topic_to_subject(p.topic.as_str()));
        }
        for subject in subjects {
            let sent =
                self.main
                    .publish_with_headers(subject, headers(p, self.me), p.payload.clone());
            match tokio::time::timeout(self.patience, sent).await {
                Ok(Ok(())) => {
                    counters.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    counters.forward_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "forwarding to NATS");
                }
                Err(_) => {
                    counters.forward_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !p.retain {
            return true;
        }
        // JetStream answers "no stream" or times out while the bucket's servers
        // elect a new leader (one of them died): ask again for a while.
        let key = wire::retained_key(p.topic.as_str());
        let value = wire::retained_value(p, unix_ms());
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            let result = if p.payload.is_empty() {
                self.retained.delete(&key).await.map_err(|e| e.to_string())
            } else {
                self.retained
                    .put(&key, value.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            match result {
                Ok(()) => return true,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    counters.jetstream_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = e, "storing a retained message in JetStream failed");
                    return false;
                }
                Err(e) => {
                    tracing::debug!(error = e, "storing a retained message in JetStream; again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Publishes `copy` to its node's queue; `None` when NATS refused it at
    /// once (it is published again in [`Outbox::settle`]).
    async fn publish_copy(
        &self,
        copy: &Copy,
        peers: &Peers,
    ) -> Option<jetstream::context::PublishAckFuture> {
        let queue = peers.queue(copy.node)?;
        let mut headers = headers(&copy.publish, self.me);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, copy.id.as_str());
        let subject = queue.topic_to_subject(copy.publish.topic.as_str());
        // While NATS is unreachable a publish waits for the reconnection.
        let sent = self
            .js
            .publish_with_headers(subject, headers, copy.publish.payload.clone());
        match tokio::time::timeout(self.patience, sent).await {
            Ok(Ok(ack)) => Some(ack),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "publishing to another node's queue; again");
                None
            }
            Err(_) => None,
        }
    }

    /// Waits until JetStream stored every copy, publishing again (the same
    /// message id: stored once) one it refused or did not confirm, for at most
    /// the patience. Returns false if one could not be stored: its
    /// publisher is refused the acknowledgement and sends it again.
    async fn settle(&self, copies: Vec<Copy>, peers: &Peers) -> bool {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut ok = true;
        for mut copy in copies {
            loop {
                let stored = match copy.ack.take() {
                    Some(ack) => match tokio::time::timeout_at(deadline, ack).await {
                        Ok(Ok(_)) => true,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "JetStream did not store a copy; again");
                            false
                        }
                        Err(_) => false,
                    },
                    None => false,
                };
                if stored {
                    self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if peers.queue(copy.node).is_none() {
                    // A node whose name makes no subject: never sent.
                    self.counters
                        .forward_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    self.counters
                        .jetstream_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("JetStream did not store a message for another node");
                    ok = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                copy.ack = self.publish_copy(&copy, peers).await;
            }
        }
        ok
    }
}

/// The wire headers of a forward.
fn headers(p: &Publish, me: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in wire::to_headers(p, me) {
        headers.append(header_name(name), value);
    }
    headers
}

/// A forwarded message as the core takes it: its topic from `subject` (as
/// `map` makes subjects), the rest from its headers; `None` (and counted) when
/// it does not decode.
fn decode(
    map: &SubjectMap,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
    counters: &Counters,
) -> Option<Publish> {
    let decoded = map
        .subject_to_topic(subject)
        .and_then(|t| TopicName::new(Bytes::from(t)).ok())
        .zip(headers)
        .and_then(|(topic, headers)| {
            wire::from_headers(
                topic,
                |name| headers.get_all(header_name(name)).map(|v| v.as_str()),
                payload.clone(),
            )
            .ok()
        });
    match decoded {
        Some((publish, _origin)) => {
            counters.received.fetch_add(1, Ordering::Relaxed);
            Some(publish)
        }
        None => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A message read from one of the queues this node reads.
fn delivery(queue: &SubjectMap, m: &jetstream::Message, counters: &Counters) -> Option<Publish> {
    decode(
        queue,
        m.subject.as_str(),
        m.headers.as_ref(),
        &m.payload,
        counters,
    )
}

/// A message from one of this node's subscriptions, and the filter it came
/// through.
fn arrival(
    map: &SubjectMap,
    shared: &SubjectMap,
    m: async_nats::Message,
    through: TopicFilter,
    counters: &Counters,
) -> Option<Inbound> {
    let map = if through.shared().is_some() {
        shared
    } else {
        map
    };
    let publish = decode(
        map,
        m.subject.as_str(),
        m.headers.as_ref(),
        &m.payload,
        counters,
    )?;
    Some(Inbound::Publish { publish, through })
}

/// The wire's header names, made once: a name given to async-nats as `&str`
/// is validated, compared with every standard header and copied for every
/// message (a third of a receiving node's CPU in the cross-node bench).
static HEADER_NAMES: [(&str, async_nats::HeaderName); 9] = [
    (
        wire::ORIGIN,
        async_nats::HeaderName::from_static(wire::ORIGIN),
    ),
    (wire::QOS, async_nats::HeaderName::from_static(wire::QOS)),
    (
        wire::RETAIN,
        async_nats::HeaderName::from_static(wire::RETAIN),
    ),
    (
        wire::FORMAT,
        async_nats::HeaderName::from_static(wire::FORMAT),
    ),
    (
        wire::EXPIRY,
        async_nats::HeaderName::from_static(wire::EXPIRY),
    ),
    (
        wire::CONTENT_TYPE,
        async_nats::HeaderName::from_static(wire::CONTENT_TYPE),
    ),
    (
        wire::RESPONSE_TOPIC,
        async_nats::HeaderName::from_static(wire::RESPONSE_TOPIC),
    ),
    (
        wire::CORRELATION_DATA,
        async_nats::HeaderName::from_static(wire::CORRELATION_DATA),
    ),
    (
        wire::USER_PROPERTY,
        async_nats::HeaderName::from_static(wire::USER_PROPERTY),
    ),
];

/// The prepared name of one of the wire's headers.
fn header_name(name: &'static str) -> async_nats::HeaderName {
    HEADER_NAMES.iter().find(|(n, _)| *n == name).map_or_else(
        || async_nats::HeaderName::from_static(name),
        |(_, h)| h.clone(),
    )
}

fn retained_entry(entry: &jetstream::kv::Entry, counters: &Counters) -> Option<Inbound> {
    let Some(topic) = wire::retained_topic(&entry.key) else {
        counters.malformed.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    if entry.operation != jetstream::kv::Operation::Put {
        return Some(Inbound::Retained {
            topic,
            publish: None,
        });
    }
    match wire::from_retained_value(&entry.value, unix_ms()) {
        Ok(publish) => Some(Inbound::Retained { topic, publish }),
        Err(_) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::copy_from_str(s).expect("a valid filter")
    }

    #[test]
    fn a_claim_is_taken_only_by_a_later_foreign_revision_once_own_puts_are_done() {
        let mut c = Claim {
            in_flight: 1,
            ..Claim::default()
        };
        c.later = 7;
        assert!(!c.taken(), "this node's put is still on its way");
        c.in_flight = 0;
        c.own = 9;
        assert!(!c.taken(), "the foreign claim came before this node's");
        c.later = 12;
        assert!(c.taken(), "a foreign claim after this node's");
    }

    #[test]
    fn interest_keys_name_the_node_and_the_filter() {
        let f = filter("a/+/c d/#");
        let key = interest_key_of("node-1", &f);
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{key}"
        );
        let (node, back) = interest_key(&key).expect("a key this node made");
        assert_eq!((node, back), ("node-1", f));
        assert!(interest_key("no-dot").is_none());
        assert!(interest_key("n.!!").is_none());
    }

    #[test]
    fn every_wire_header_has_its_name_made_once() {
        for name in [
            wire::ORIGIN,
            wire::QOS,
            wire::RETAIN,
            wire::FORMAT,
            wire::EXPIRY,
            wire::CONTENT_TYPE,
            wire::RESPONSE_TOPIC,
            wire::CORRELATION_DATA,
            wire::USER_PROPERTY,
        ] {
            assert!(HEADER_NAMES.iter().any(|(n, _)| *n == name), "{name}");
            assert_eq!(header_name(name).to_string(), name);
        }
    }
}
