//! The hub of one server thread: the broker core, its connections, and what to do
//! with bytes read, what to write, when to wake whom, when to close, free of any
//! runtime. The tokio and smol adapters only move bytes between sockets and these
//! functions, and arm one timer.
//!
//! One [`Hub`] owns the broker core and a table of connections. A connection task
//! owns a [`ConnIo`] (its buffers and framing). After any input the hub drains the
//! core's events at once: a `Transmit` wakes the connection's task (through its
//! [`Wake`] handle), a `Close` marks it closing and wakes it, and an earlier timer
//! deadline wakes the timer task. Each wake-up of a connection decodes every complete
//! packet in its read buffer and hands them to the core together, then pulls all the
//! core has for it into one write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use broker_state::{
    AuthQuestion, AuthStep, AuthTicket, Broker, ConnId, Event, Now, PeerInfo, StoreOp,
};
use bytes::BytesMut;
use mqtt_proto::{Decoder, FixedHeader, Packet, ReasonCode};

use crate::authentication::Verifier;
use crate::reports::Reports;
use crate::websocket::{self, DecodeStatus, FrameDecoder};

/// Wakes a task: a connection that has output or must close, or the timer task.
pub trait Wake {
    /// Schedules the task to run. Coalescing several wakes into one run is fine.
    fn wake(&self);
}

/// How MQTT bytes travel on the transport.
pub enum Framing {
    /// MQTT directly on TCP or TLS.
    Raw,
    /// MQTT in WebSocket binary frames (a frame may hold part of a packet or several).
    /// Boxed with its buffers, so that a plain connection carries none of them.
    WebSocket(Box<WebSocketIo>),
}

/// The WebSocket side of a connection: frame decoder and its two MQTT buffers.
pub struct WebSocketIo {
    frames: FrameDecoder,
    /// The MQTT stream unwrapped from frames.
    mqtt: BytesMut,
    /// The MQTT bytes of one pull before framing.
    stage: BytesMut,
}

impl WebSocketIo {
    /// WebSocket framing around `frames`.
    pub fn new(frames: FrameDecoder) -> Self {
        WebSocketIo {
            frames,
            mqtt: BytesMut::new(),
            stage: BytesMut::new(),
        }
    }
}

/// One connection's buffers and framing, owned by its task.
pub struct ConnIo {
    decoder: Decoder,
    framing: Framing,
    /// Bytes read from the transport and not yet consumed.
    pub input: BytesMut,
    /// Bytes to write to the transport.
    pub output: BytesMut,
    /// The transport must close after `output` is written (WebSocket close, decode
    /// failure handled).
    pub finished: bool,
    /// Decoding stopped after CONNECT (or AUTH) because the core waits for the
    /// answer to the client's authentication: the rest of the input waits too, and
    /// nothing more is read until the answer came.
    pub held: bool,
}

/// Read size when no packet is in progress.
const READ_CHUNK: usize = 4096;
/// Size of a block of the shared read buffer.
const SHARED_READ_BLOCK: usize = 64 * 1024;
/// A packet at least this long, cut by the end of a read into the shared buffer,
/// keeps the block with its connection (see [`ConnIo::keeps_read_block`]).
const LARGE_PACKET: usize = 8 * 1024;

impl ConnIo {
    /// Buffers for a new connection; the decoder learns the version from CONNECT and
    /// refuses packets above `max_packet_size` from their fixed header.
    pub fn new(framing: Framing, max_packet_size: u32) -> Self {
        ConnIo {
            decoder: Decoder::new(max_packet_size),
            framing,
            input: BytesMut::new(),
            output: BytesMut::new(),
            finished: false,
            held: false,
        }
    }

    /// Makes room in `input` for the next read: the rest of a packet in progress
    /// (bounded by the maximum packet size, which the decoder enforces from the fixed
    /// header), or a small chunk.
    pub fn reserve_for_read(&mut self) {
        let want = match (&self.framing, FixedHeader::parse(&self.input)) {
            (Framing::Raw, Ok(Some(h))) => h.packet_len().saturating_sub(self.input.len()),
            _ => 0,
        };
        self.input.reserve(want.clamp(READ_CHUNK, 1024 * 1024));
    }

    /// After a read into the shared buffer left `rest`, the head of a packet: true
    /// when that packet is large (plain framing), so that the connection should keep
    /// the shared block, the rest of the packet and what follows it read into the
    /// same block, instead of copying the head into a buffer of its own.
    pub(crate) fn keeps_read_block(&self, rest: &[u8]) -> bool {
        matches!(
            (&self.framing, FixedHeader::parse(rest)),
            (Framing::Raw, Ok(Some(h))) if h.packet_len() >= LARGE_PACKET
        )
    }

    /// A plain connection's buffers around the decoder it had when it was parked.
    pub(crate) fn resumed(decoder: Decoder) -> Self {
        ConnIo {
            decoder,
            framing: Framing::Raw,
            input: BytesMut::new(),
            output: BytesMut::new(),
            finished: false,
            held: false,
        }
    }

    /// The decoder, all a parked connection keeps of its buffers.
    pub(crate) fn into_decoder(self) -> Decoder {
        self.decoder
    }

    /// Nothing to read or write, plain framing, not finishing: it may park.
    pub(crate) fn is_idle(&self) -> bool {
        matches!(self.framing, Framing::Raw)
            && self.input.is_empty()
            && self.output.is_empty()
            && !self.finished
    }

    /// Gives back the memory of buffers that are empty: reads and writes go through
    /// the thread's shared buffers, so an idle connection holds none of its own.
    pub fn release_idle_buffers(&mut self) {
        if self.input.is_empty() && self.input.capacity() > 0 {
            self.input = BytesMut::new();
        }
        if let Framing::WebSocket(ws) = &mut self.framing {
            if ws.mqtt.is_empty() && ws.mqtt.capacity() > 0 {
                ws.mqtt = BytesMut::new();
            }
        }
        if self.output.is_empty() && self.output.capacity() > 0 {
            self.output = BytesMut::new();
        }
    }
}

struct Entry<W> {
    /// Its task's wake handle; none while it is parked.
    waker: Option<W>,
    /// Its slot in the parking lot, while it is parked (no waker).
    slot: u32,
    closing: Option<ReasonCode>,
}

/// The hub's entries by connection: a vector indexed by the core's connection
/// index, which is dense (the core reuses freed indices), so about 32 bytes a
/// connection where a hash map took 54 (the load factor and control bytes).
struct ConnTable<W> {
    slots: Vec<Option<(ConnId, Entry<W>)>>,
    len: usize,
}

impl<W> ConnTable<W> {
    fn new() -> Self {
        ConnTable {
            slots: Vec::new(),
            len: 0,
        }
    }

    fn get(&self, conn: &ConnId) -> Option<&Entry<W>> {
        match self.slots.get(conn.index()) {
            Some(Some((id, e))) if id == conn => Some(e),
            _ => None,
        }
    }

    fn get_mut(&mut self, conn: &ConnId) -> Option<&mut Entry<W>> {
        match self.slots.get_mut(conn.index()) {
            Some(Some((id, e))) if id == conn => Some(e),
            _ => None,
        }
    }

    fn insert(&mut self, conn: ConnId, entry: Entry<W>) {
        let i = conn.index();
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        if let Some(slot) = self.slots.get_mut(i) {
            if slot.is_none() {
                self.len += 1;
            }
            *slot = Some((conn, entry));
        }
    }

    fn remove(&mut self, conn: &ConnId) -> Option<Entry<W>> {
        let slot = self.slots.get_mut(conn.index())?;
        if !matches!(slot, Some((id, _)) if id == conn) {
            return None;
        }
        self.len -= 1;
        slot.take().map(|(_, e)| e)
    }

    fn values(&self) -> impl Iterator<Item = &Entry<W>> {
        self.slots.iter().flatten().map(|(_, e)| e)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The broker core and its connections, for one runtime thread.
pub struct Hub<W: Wake> {
    broker: Broker,
    conns: ConnTable<W>,
    timer: Option<W>,
    armed: Option<Instant>,
    /// The parking lot's task, woken when a parked connection must run again.
    lot: Option<W>,
    /// Parked connections (lot slot, id) the core has output for or closes.
    unpark: Vec<(u32, ConnId)>,
    /// The read buffer every connection of this thread reads into, one at a time.
    read_buffer: BytesMut,
    /// The write buffer every connection of this thread writes from, one at a time.
    write_buffer: BytesMut,
    /// Sessions ended and messages dropped by the core, for the log.
    reports: Reports,
    /// Who clients are (quick answers here; verifications on the workers).
    verifier: Option<Arc<Verifier>>,
    /// Authentication questions waiting for a worker, oldest first: the ones the
    /// webhook will be asked about (an I/O wait), and the rest (CPU work).
    questions: VecDeque<AuthQuestion>,
    webhook_questions: VecDeque<AuthQuestion>,
    /// The authentication task, woken when a question waits.
    auth_waker: Option<W>,
    /// The durable store, when persistence is on, and the store effects of the
    /// current round, handed to it together at the end of the round.
    store: Option<brokk_store::DurableStore>,
    store_batch: Vec<StoreOp>,
    /// Lifecycle events: published on `$events/...`, handed to the webhook
    /// worker ([`crate::lifecycle`]); `None` when neither is configured.
    lifecycle: Option<crate::lifecycle::Lifecycle>,
    /// Connections and logins, for the metrics.
    counters: crate::metrics::HubCounters,
    /// This node's link to the cluster, and the cluster effects of the current
    /// round, handed to it together at the end of the round.
    cluster: Option<brokk_cluster::ClusterNode>,
    cluster_batch: Vec<broker_state::ClusterOp>,
    /// On a node of a cluster, the store effects for the cluster's store
    /// (JetStream), handed over with the cluster effects.
    state_batch: Vec<StoreOp>,
    /// Sessions let go to other nodes this round, whose new nodes wait for
    /// the answer.
    releases: Vec<(bytes::Bytes, Option<brokk_cluster::ReplyTo>)>,
    /// The last message from this node's queue the core took since the last
    /// hand-over: JetStream keeps it until the round's store effects are
    /// stored.
    delivered: Option<u64>,
    /// The numbered effects handed to the store and to the cluster and not yet
    /// done (see [`Tickets`]).
    tickets: Tickets,
}

/// Numbered effects (store operations, a cluster node's QoS 1/2 forwards) go
/// to two places that finish at their own pace: the store commits, the
/// cluster's thread flushes to NATS. A round's effects (numbers after the
/// previous round's last, up to its own last) leave together, one batch per
/// place, each with the round's ticket (its last number). Each place finishes
/// its batches in order, so every round before the one of the smallest ticket
/// still outstanding anywhere is done.
#[derive(Default)]
struct Tickets {
    store: VecDeque<u64>,
    cluster: VecDeque<u64>,
    /// Tickets of the rounds that handed something over, not yet known done.
    rounds: VecDeque<u64>,
    /// The last round known done.
    base: u64,
    /// The number of the last effect emitted when the last round ended.
    submitted: u64,
}

impl Tickets {
    /// A round ended with `ticket` as its last number, having handed batches
    /// over (`handed`) or not.
    fn round(&mut self, ticket: u64, handed: bool) {
        if handed && self.rounds.back() != Some(&ticket) {
            self.rounds.push_back(ticket);
        }
        self.submitted = ticket;
    }

    /// Everything up to this number is done.
    fn done(&mut self) -> u64 {
        let first = |q: &VecDeque<u64>| q.front().copied().unwrap_or(u64::MAX);
        let outstanding = first(&self.store).min(first(&self.cluster));
        if outstanding == u64::MAX {
            self.rounds.clear();
            self.base = self.submitted;
        }
        while let Some(&t) = self.rounds.front().filter(|&&t| t < outstanding) {
            self.base = t;
            self.rounds.pop_front();
        }
        self.base
    }

    fn completed(queue: &mut VecDeque<u64>, ticket: u64) {
        while queue.front().is_some_and(|&t| t <= ticket) {
            queue.pop_front();
        }
    }
}

impl<W: Wake> Hub<W> {
    /// A hub around a configured broker.
    pub fn new(broker: Broker) -> Self {
        Hub {
            broker,
            conns: ConnTable::new(),
            timer: None,
            armed: None,
            lot: None,
            unpark: Vec::new(),
            read_buffer: BytesMut::new(),
            write_buffer: BytesMut::new(),
            reports: Reports::default(),
            verifier: None,
            questions: VecDeque::new(),
            webhook_questions: VecDeque::new(),
            auth_waker: None,
            store: None,
            store_batch: Vec::new(),
            lifecycle: None,
            counters: crate::metrics::HubCounters::default(),
            cluster: None,
            cluster_batch: Vec::new(),
            state_batch: Vec::new(),
            releases: Vec::new(),
            delivered: None,
            tickets: Tickets::default(),
        }
    }

    /// Joins the core (built with `Config::cluster`) to the cluster through
    /// `node` from now on.
    pub fn set_cluster(&mut self, node: brokk_cluster::ClusterNode) {
        self.cluster = Some(node);
    }

    /// This node's link to the cluster, if it is one (for its counters).
    pub fn cluster(&self) -> Option<&brokk_cluster::ClusterNode> {
        self.cluster.as_ref()
    }

    /// This node's link to the cluster, if it is one.
    pub fn cluster_mut(&mut self) -> Option<&mut brokk_cluster::ClusterNode> {
        self.cluster.as_mut()
    }

    /// Takes the cluster link out (at shutdown, to flush and close it).
    pub fn take_cluster(&mut self) -> Option<brokk_cluster::ClusterNode> {
        let handed = self.submit_cluster_batch();
        self.tickets
            .round(self.broker.store_effects_emitted(), handed);
        self.cluster.take()
    }

    /// What the other nodes sent: their messages, retained messages and
    /// session claims, handed to the core.
    pub fn cluster_inbound(&mut self, now: Now, inbound: &mut Vec<brokk_cluster::Inbound>) {
        for i in inbound.drain(..) {
            match i {
                brokk_cluster::Inbound::Publish { publish, through } => {
                    self.broker.handle_cluster_publish(now, publish, &through);
                }
                brokk_cluster::Inbound::Retained { topic, publish } => {
                    let publish = publish.unwrap_or_else(|| mqtt_proto::Publish {
                        dup: false,
                        qos: mqtt_proto::QoS::AtMostOnce,
                        retain: true,
                        topic,
                        packet_id: None,
                        properties: Default::default(),
                        payload: bytes::Bytes::new(),
                    });
                    self.broker.handle_cluster_retained(now, publish);
                }
                brokk_cluster::Inbound::Forwarded { ticket, ok } => {
                    Tickets::completed(&mut self.tickets.cluster, ticket);
                    if ok {
                        let done = self.tickets.done();
                        self.broker.handle_store_committed(now, done);
                    } else {
                        self.broker.handle_store_failed(now, ticket);
                    }
                }
                brokk_cluster::Inbound::RemoteInterest { node, filter, on } => {
                    self.broker.handle_remote_interest(node, &filter, on);
                }
                brokk_cluster::Inbound::Delivery { publish, seq } => {
                    self.broker.handle_cluster_delivery(now, publish);
                    self.delivered = Some(seq);
                }
                brokk_cluster::Inbound::Claimed { client_id, reply } => {
                    if self.broker.handle_session_claimed(now, &client_id) {
                        tracing::info!(
                            client_id = %String::from_utf8_lossy(&client_id),
                            "session taken over by another node"
                        );
                    }
                    // Answered once this round's changes are handed over.
                    self.releases.push((client_id, reply));
                }
                brokk_cluster::Inbound::Adopted { records } => {
                    let n = self.broker.handle_sessions_adopted(now, records);
                    tracing::info!(sessions = n, "took over the sessions of a node that left");
                }
                brokk_cluster::Inbound::Acquired { ticket, answer } => {
                    self.broker.handle_session_acquired(now, ticket, answer);
                }
            }
        }
        self.dispatch(now);
    }

    /// Hands the round's cluster effects to the cluster's thread, with a
    /// ticket when QoS 1/2 forwards among them hold acknowledgements.
    fn submit_cluster_batch(&mut self) -> bool {
        if self.cluster_batch.is_empty() && self.state_batch.is_empty() && self.delivered.is_none()
        {
            return false;
        }
        let len = self.cluster_batch.len();
        let batch = core::mem::replace(&mut self.cluster_batch, Vec::with_capacity(len.min(1024)));
        let state = core::mem::take(&mut self.state_batch);
        let numbered = !state.is_empty()
            || batch.iter().any(|op| {
                matches!(op, broker_state::ClusterOp::Forward { publish, .. } if publish.qos != mqtt_proto::QoS::AtMostOnce)
            });
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let ticket = numbered.then(|| self.broker.store_effects_emitted());
        if let Some(t) = ticket {
            self.tickets.cluster.push_back(t);
        }
        cluster.submit(batch, state, ticket, self.delivered.take());
        ticket.is_some()
    }

    /// Answers the nodes waiting for sessions this node let go, after the
    /// round's changes (a hand-over is answered once those are stored).
    fn answer_releases(&mut self) {
        if let Some(cluster) = &self.cluster {
            for (client_id, reply) in self.releases.drain(..) {
                cluster.released(client_id, reply);
            }
        }
    }

    /// Lifecycle events as `settings` ask (nothing when they ask for nothing):
    /// the core emits them from now on, the hub publishes them on `$events/...`
    /// and starts the webhook worker if there is a webhook.
    pub fn set_lifecycle(&mut self, settings: &crate::lifecycle::LifecycleEvents) {
        let seed = crate::server::os_seed();
        let boot = u64::from_le_bytes([
            seed[0], seed[1], seed[2], seed[3], seed[4], seed[5], seed[6], seed[7],
        ]);
        self.lifecycle = crate::lifecycle::Lifecycle::start(settings, boot);
        self.broker.set_lifecycle_events(self.lifecycle.is_some());
    }

    /// Takes the lifecycle events' part out (at shutdown, to stop the webhook
    /// worker); the core emits no more of them.
    pub fn take_lifecycle(&mut self) -> Option<crate::lifecycle::Lifecycle> {
        self.broker.set_lifecycle_events(false);
        self.lifecycle.take()
    }

    /// What became of this server's lifecycle events at the webhook (sent,
    /// retried, dropped because the queue was full, dropped because the webhook
    /// failed), when it has one.
    pub fn lifecycle_counters(&self) -> Option<[(&'static str, u64); 4]> {
        self.lifecycle
            .as_ref()
            .and_then(|l| l.counters())
            .map(|c| c.outcomes())
    }

    /// Whether the connected client `client_id` may publish to `topic`
    /// ([`broker_state::Broker::may_publish`]).
    pub fn may_publish(
        &mut self,
        client_id: &[u8],
        topic: &mqtt_proto::TopicName,
        retain: bool,
    ) -> bool {
        self.broker.may_publish(client_id, topic, retain)
    }

    /// Connections and logins so far, for the metrics.
    pub fn counters(&self) -> &crate::metrics::HubCounters {
        &self.counters
    }

    /// Hands the core's store effects to `store` from now on (the core must have
    /// `store_effects` on, and be restored from this store).
    pub fn set_store(&mut self, store: brokk_store::DurableStore) {
        self.store = Some(store);
    }

    /// The durable store, if there is one.
    pub fn store(&self) -> Option<&brokk_store::DurableStore> {
        self.store.as_ref()
    }

    /// Takes the store out (at shutdown, to flush and close it).
    pub fn take_store(&mut self) -> Option<brokk_store::DurableStore> {
        let handed = self.submit_store_batch();
        self.tickets
            .round(self.broker.store_effects_emitted(), handed);
        self.store.take()
    }

    /// The store's answers: what it made durable (or could not) releases the
    /// acknowledgements that waited for it.
    pub fn store_completed(&mut self, now: Now, completions: &mut Vec<brokk_store::Completion>) {
        for c in completions.drain(..) {
            Tickets::completed(&mut self.tickets.store, c.ticket);
            match c.result {
                Ok(()) => {
                    let done = self.tickets.done();
                    self.broker.handle_store_committed(now, done)
                }
                Err(error) => {
                    self.reports.store_failed(&error);
                    self.broker.handle_store_failed(now, c.ticket);
                }
            }
        }
        self.dispatch(now);
    }

    /// Hands the round's store effects to the store, numbered by the last of them.
    fn submit_store_batch(&mut self) -> bool {
        if self.store_batch.is_empty() {
            return false;
        }
        // The next round's batch starts with this one's size: a round of a flood
        // holds thousands of effects, and growing a vector of them copies each
        // several times.
        let len = self.store_batch.len();
        let batch = core::mem::replace(&mut self.store_batch, Vec::with_capacity(len));
        if let Some(store) = &self.store {
            let ticket = self.broker.store_effects_emitted();
            self.tickets.store.push_back(ticket);
            store.submit(batch, ticket);
            return true;
        }
        false
    }

    /// The core, for getters.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The shared read buffer, empty, with room for a read. Decoded packets keep
    /// slices of it alive; once they are gone its memory is reused, else a fresh
    /// block is allocated (one allocation per many reads, not per message).
    pub fn take_read_buffer(&mut self) -> BytesMut {
        let mut buf = core::mem::take(&mut self.read_buffer);
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(SHARED_READ_BLOCK);
        }
        buf
    }

    /// Returns the shared read buffer (emptied by the caller).
    pub fn put_read_buffer(&mut self, buf: BytesMut) {
        debug_assert!(buf.is_empty());
        self.read_buffer = buf;
    }

    /// The shared write buffer, empty. A connection pulls its output into it and
    /// keeps only what its socket did not take.
    pub fn take_write_buffer(&mut self) -> BytesMut {
        core::mem::take(&mut self.write_buffer)
    }

    /// Returns the shared write buffer (emptied by the caller).
    pub fn put_write_buffer(&mut self, buf: BytesMut) {
        debug_assert!(buf.is_empty());
        self.write_buffer = buf;
    }

    /// Answers the core's authentication questions with `verifier`: quick answers
    /// at once, the rest through the authentication task, woken with `waker`
    /// ([`crate::connection::run_authentication`]).
    pub fn set_authentication(&mut self, verifier: Arc<Verifier>, waker: W) {
        self.verifier = Some(verifier);
        self.auth_waker = Some(waker);
    }

    /// Authorizes by `policy` from now on (a reload): subscriptions it no longer
    /// allows are removed, connections stay.
    pub fn set_authorization(
        &mut self,
        now: Now,
        policy: Option<Arc<broker_state::authz::Policy>>,
    ) {
        let bindings = policy.as_ref().map_or(0, |p| p.bindings.len());
        let revoked = self.broker.set_authorization(now, policy);
        tracing::info!(bindings, revoked, "authorization reloaded");
        self.dispatch(now);
    }

    /// The oldest authentication question waiting for a worker: of the webhook's
    /// lane, or of the other.
    pub fn take_question(&mut self, webhook: bool) -> Option<AuthQuestion> {
        if webhook {
            self.webhook_questions.pop_front()
        } else {
            self.questions.pop_front()
        }
    }

    /// The answer to an authentication question, from a worker.
    pub fn answer(&mut self, now: Now, ticket: AuthTicket, step: AuthStep) {
        self.counters.answered(&step);
        self.broker.handle_auth_answer(now, ticket, step);
        self.dispatch(now);
    }

    /// The waker of the timer task, woken when the core's next deadline moves earlier
    /// than the one the timer sleeps to.
    pub fn set_timer_waker(&mut self, waker: W) {
        self.timer = Some(waker);
    }

    /// The waker of the parking lot's task, woken when a parked connection has
    /// output or must close.
    pub fn set_lot_waker(&mut self, waker: W) {
        self.lot = Some(waker);
    }

    /// Records that a connection is parked in lot slot `slot`; its task's wake
    /// handle is dropped.
    pub fn park(&mut self, conn: ConnId, slot: u32) {
        if let Some(e) = self.conns.get_mut(&conn) {
            e.slot = slot;
            e.waker = None;
        }
    }

    /// Records that a parked connection has a task again, woken through `waker`.
    pub fn unpark(&mut self, conn: ConnId, waker: W) {
        if let Some(e) = self.conns.get_mut(&conn) {
            e.waker = Some(waker);
        }
    }

    /// Moves the parked connections that must run again (lot slot, id) into `out`.
    pub fn take_unpark_requests(&mut self, out: &mut Vec<(u32, ConnId)>) {
        out.append(&mut self.unpark);
    }

    /// The wake handles of the connections that have a task and are not closing.
    pub fn task_wakers(&self) -> impl Iterator<Item = &W> {
        self.conns
            .values()
            .filter(|e| e.closing.is_none())
            .filter_map(|e| e.waker.as_ref())
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A transport connection was accepted.
    pub fn accept(&mut self, now: Now, peer: PeerInfo, waker: W) -> ConnId {
        let conn = self.broker.handle_accept(now, peer);
        self.counters.accepted += 1;
        self.conns.insert(
            conn,
            Entry {
                waker: Some(waker),
                slot: 0,
                closing: None,
            },
        );
        self.dispatch(now);
        conn
    }

    /// Consumes what was read into `io.input`: unwraps WebSocket frames, decodes every
    /// complete packet and hands them to the core together, then drains the core.
    /// Returns the PUBLISHes the core queued for delivery meanwhile (to any client).
    pub fn feed(&mut self, now: Now, conn: ConnId, io: &mut ConnIo) -> u64 {
        if io.finished || self.closing(conn).is_some() {
            io.input.clear();
            return 0;
        }
        let before = self.broker.deliveries();
        let stream = match &mut io.framing {
            Framing::Raw => &mut io.input,
            Framing::WebSocket(ws) => {
                let status = ws.frames.decode(&mut io.input, &mut ws.mqtt);
                let _ = ws.frames.poll_control(&mut io.output);
                if let DecodeStatus::Close(reason) = status {
                    tracing::debug!(%conn, %reason, "websocket closed");
                    io.finished = true;
                }
                &mut ws.mqtt
            }
        };
        io.held = false;
        loop {
            match io.decoder.decode(stream) {
                Ok(Some(packet)) => {
                    let asks = matches!(packet, Packet::Connect(_) | Packet::Auth(_));
                    self.broker.handle_packet(now, conn, packet);
                    // A CONNECT waiting for its answer: the rest waits with it.
                    if asks && self.broker.is_authenticating(conn) {
                        io.held = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%conn, %error, "undecodable input");
                    self.broker.handle_decode_error(now, conn, &error);
                    stream.clear();
                    break;
                }
            }
        }
        self.dispatch(now);
        self.broker.deliveries().wrapping_sub(before)
    }

    /// Appends what the core has for this connection to `out` (framed for
    /// WebSocket), at most about `budget` bytes. Returns the MQTT bytes pulled.
    pub fn pull(
        &mut self,
        conn: ConnId,
        io: &mut ConnIo,
        out: &mut BytesMut,
        budget: usize,
    ) -> usize {
        match &mut io.framing {
            Framing::Raw => self.broker.poll_transmit(conn, out, budget),
            Framing::WebSocket(ws) => {
                let _ = ws.frames.poll_control(out);
                ws.stage.clear();
                let n = self.broker.poll_transmit(conn, &mut ws.stage, budget);
                if n > 0 {
                    websocket::encode_binary(&ws.stage, out);
                }
                n
            }
        }
    }

    /// Pulls everything the core has for the connection (the last bytes before a
    /// close), and starts the WebSocket close handshake if there is one.
    pub fn pull_final(&mut self, conn: ConnId, io: &mut ConnIo) {
        let mut out = core::mem::take(&mut io.output);
        while self.pull(conn, io, &mut out, usize::MAX) > 0 {}
        io.output = out;
        if let Framing::WebSocket(ws) = &mut io.framing {
            ws.frames.close(websocket::close_code::NORMAL);
            let _ = ws.frames.poll_control(&mut io.output);
        }
    }

    /// Whether the core wants this connection closed (after its output is written),
    /// and why.
    pub fn closing(&self, conn: ConnId) -> Option<ReasonCode> {
        self.conns.get(&conn).and_then(|e| e.closing)
    }

    /// The transport is closed; the core forgets the connection.
    pub fn closed(&mut self, now: Now, conn: ConnId) {
        if let Some(entry) = self.conns.remove(&conn) {
            if entry.closing.is_none() {
                self.log_disconnect(conn, "connection lost");
            }
        }
        self.broker.handle_closed(now, conn);
        self.dispatch(now);
    }

    /// Fires the core's due timers.
    pub fn timeout(&mut self, now: Now) {
        self.armed = None;
        self.broker.handle_timeout(now);
        self.dispatch(now);
    }

    /// The deadline the timer task should sleep to; remembered so that an earlier
    /// one wakes the timer task.
    pub fn arm_timer(&mut self) -> Option<Instant> {
        self.armed = self.broker.poll_timeout();
        self.armed
    }

    /// The periodic report of what the core dropped since the last one (see
    /// [`Reports`]); called every park tick (`limits.park_idle_ms`), by the parking
    /// lot's sweep or, without a lot, by [`run_reports`](crate::connection::run_reports).
    pub fn report(&mut self) {
        let stats = self.broker.stats();
        self.reports.tick(&stats);
    }

    /// Graceful shutdown: DISCONNECT 0x8B to 5.0 clients and close every connection.
    pub fn shutdown(&mut self, now: Now) {
        self.broker.handle_shutdown(now);
        self.dispatch(now);
    }

    fn dispatch(&mut self, now: Now) {
        while let Some(event) = self.broker.poll_event() {
            match event {
                Event::Transmit(conn) => {
                    if let Some(e) = self.conns.get(&conn) {
                        Self::wake_entry(e, conn, &mut self.unpark, self.lot.as_ref());
                    }
                }
                Event::Close { conn, reason } => {
                    let label = if reason == ReasonCode::Success {
                        "client disconnected".to_owned()
                    } else {
                        reason.to_string()
                    };
                    self.log_disconnect(conn, &label);
                    if let Some(e) = self.conns.get_mut(&conn) {
                        e.closing = Some(reason);
                        Self::wake_entry(e, conn, &mut self.unpark, self.lot.as_ref());
                    }
                }
                Event::Connected {
                    conn,
                    client_id,
                    protocol,
                    session_present,
                } => {
                    let peer = self.broker.peer(conn);
                    tracing::info!(
                        client_id = client_id.as_str(),
                        protocol = %protocol,
                        listener = peer.map_or("", |p| &*p.listener),
                        remote = peer.map_or("", |p| &*p.remote),
                        session_present,
                        "connect"
                    );
                }
                Event::Authenticate(question) => {
                    let quick = match &self.verifier {
                        Some(v) => v.quick(&question, now.instant),
                        // Nobody to ask: nobody gets in.
                        None => Some(AuthStep::Failure(ReasonCode::ServerUnavailable)),
                    };
                    match quick {
                        Some(step) => {
                            self.counters.answered(&step);
                            self.broker.handle_auth_answer(now, question.ticket, step)
                        }
                        None => {
                            let webhook = self
                                .verifier
                                .as_ref()
                                .is_some_and(|v| v.asks_webhook(&question));
                            if webhook {
                                self.webhook_questions.push_back(*question);
                            } else {
                                self.questions.push_back(*question);
                            }
                            if let Some(w) = &self.auth_waker {
                                w.wake();
                            }
                        }
                    }
                }
                Event::SessionEnded {
                    client_id,
                    reason,
                    queued_messages,
                    queued_bytes,
                } => self.reports.session_ended(
                    client_id.as_str(),
                    reason,
                    queued_messages,
                    queued_bytes,
                ),
                // Collected for the store, handed over once the round's events
                // are drained (the store commits many rounds at once).
                Event::Store(op) => {
                    if self.store.is_some() {
                        self.store_batch.push(*op);
                    } else if self.cluster.is_some() {
                        // A node of a cluster: the cluster's store.
                        self.state_batch.push(*op);
                    }
                }
                // Published from the broker itself; its deliveries are events
                // this loop drains too.
                Event::Lifecycle(event) => {
                    if let Some(m) = self.lifecycle.as_ref().and_then(|l| l.on_event(&event)) {
                        self.broker
                            .publish_from_broker(now, m.topic, m.payload, m.properties);
                    }
                }
                // Collected for the cluster's thread, handed over once the
                // round's events are drained.
                Event::Cluster(op) => {
                    if self.cluster.is_some() {
                        self.cluster_batch.push(op);
                    }
                }
            }
        }
        let handed = self.submit_store_batch() | self.submit_cluster_batch();
        self.tickets
            .round(self.broker.store_effects_emitted(), handed);
        self.answer_releases();
        if let (Some(next), Some(timer)) = (self.broker.poll_timeout(), &self.timer) {
            if self.armed.is_none_or(|armed| next < armed) {
                self.armed = Some(next);
                timer.wake();
            }
        }
    }

    /// Wakes a connection's task, or asks the parking lot to give it one again.
    fn wake_entry(e: &Entry<W>, conn: ConnId, unpark: &mut Vec<(u32, ConnId)>, lot: Option<&W>) {
        if let Some(waker) = &e.waker {
            waker.wake();
        } else {
            unpark.push((e.slot, conn));
            if let Some(lot) = lot {
                lot.wake();
            }
        }
    }

    fn log_disconnect(&mut self, conn: ConnId, reason: &str) {
        self.counters.closed(reason);
        let peer = self.broker.peer(conn);
        let client_id = self.broker.client_id(conn).map_or("", |c| c.as_str());
        // As in the connect line: "3.1.1", "5.0"; left out before CONNECT.
        let protocol = self.broker.protocol(conn).map(tracing::field::display);
        tracing::info!(
            client_id,
            protocol,
            listener = peer.map_or("", |p| &*p.listener),
            remote = peer.map_or("", |p| &*p.remote),
            reason,
            "disconnect"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self) {}
    }

    fn now() -> Now {
        Now::new(Instant::now(), 0)
    }

    /// A 3.1.1 client `id` (one byte), connected through `hub`.
    fn client(hub: &mut Hub<NoWake>, id: u8) -> (ConnId, ConnIo) {
        let conn = hub.accept(now(), PeerInfo::memory("test"), NoWake);
        let mut io = ConnIo::new(Framing::Raw, 1024 * 1024);
        io.input.extend_from_slice(&[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, id,
        ]);
        assert_eq!(
            hub.feed(now(), conn, &mut io),
            0,
            "CONNECT delivers nothing"
        );
        (conn, io)
    }

    #[test]
    fn a_closed_connections_reused_index_is_a_new_entry_and_the_old_id_misses() {
        let mut hub = Hub::new(Broker::new(broker_state::Config::default(), [7; 32]));
        let (a, _) = client(&mut hub, b'a');
        let (b, _) = client(&mut hub, b'b');
        assert_eq!(hub.len(), 2);
        hub.closed(now(), a);
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.closing(a), None);
        let (c, _) = client(&mut hub, b'c');
        assert_eq!(c.index(), a.index(), "the core reuses the freed index");
        assert_eq!(hub.len(), 2);
        hub.closed(now(), a);
        assert_eq!(hub.len(), 2, "the stale id does not remove its successor");
        hub.closed(now(), c);
        hub.closed(now(), b);
        assert!(hub.is_empty());
    }

    #[test]
    fn effects_are_done_once_every_place_has_finished_their_round() {
        let mut t = Tickets::default();
        // Round 1 (effects 1..=3): store and cluster. Round 2 (4..=5): store
        // only. Round 3 (6): cluster only.
        t.store.push_back(3);
        t.cluster.push_back(3);
        t.round(3, true);
        t.store.push_back(5);
        t.round(5, true);
        t.cluster.push_back(6);
        t.round(6, true);
        assert_eq!(t.done(), 0);
        Tickets::completed(&mut t.store, 3);
        assert_eq!(t.done(), 0, "round 1 still waits for the cluster");
        Tickets::completed(&mut t.store, 5);
        assert_eq!(t.done(), 0, "round 1 still waits for the cluster");
        Tickets::completed(&mut t.cluster, 3);
        assert_eq!(t.done(), 5, "rounds 1 and 2 are done; 3 waits");
        t.round(6, false);
        assert_eq!(t.done(), 5);
        Tickets::completed(&mut t.cluster, 6);
        assert_eq!(t.done(), 6);
    }

    #[test]
    fn feed_counts_the_deliveries_its_input_caused_for_every_client() {
        let mut hub = Hub::new(Broker::new(broker_state::Config::default(), [7; 32]));
        for id in [b'a', b'b'] {
            let (conn, mut io) = client(&mut hub, id);
            // SUBSCRIBE "t" at QoS 0.
            io.input.extend_from_slice(&[0x82, 6, 0, 1, 0, 1, b't', 0]);
            assert_eq!(
                hub.feed(now(), conn, &mut io),
                0,
                "SUBSCRIBE delivers nothing"
            );
        }
        let (publisher, mut io) = client(&mut hub, b'p');
        // Ten QoS 0 PUBLISHes to "t" in one read: each goes to both subscribers.
        for _ in 0..10 {
            io.input.extend_from_slice(&[0x30, 4, 0, 1, b't', b'x']);
        }
        assert_eq!(hub.feed(now(), publisher, &mut io), 20);
        // A read with only part of a PUBLISH delivers nothing yet.
        io.input.extend_from_slice(&[0x30, 4, 0]);
        assert_eq!(hub.feed(now(), publisher, &mut io), 0);
        io.input.extend_from_slice(&[1, b't', b'x']);
        assert_eq!(hub.feed(now(), publisher, &mut io), 2);
    }
}
