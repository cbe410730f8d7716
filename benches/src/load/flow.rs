//! Message-flow scenarios: publishers and subscribers over one broker, with exact
//! accounting of every delivery.
//!
//! Everything runs on one thread (a current-thread runtime and a `LocalSet`), so the
//! generator's cost is one CPU that `/proc/self/stat` measures, and shared state is
//! `Rc<Cell<_>>` without atomics.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::account::{Integrity, SeqTracker};
use super::client::{self, ConnectError};
use super::payload::{self, Stamp};
use super::procfs::{self, CpuMeter, Neighbours};
use super::report::Record;
use super::wire::{self, Incoming, Version};

/// Who publishes where and who listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// `pubs` publishers on `bench/in/<i>`, one subscriber on `bench/in/+`.
    FanIn {
        /// Publishers.
        pubs: usize,
    },
    /// One publisher on `bench/out`, `subs` subscribers on it.
    FanOut {
        /// Subscribers.
        subs: usize,
    },
    /// `n` publishers on `bench/pair/<i>`, each with its own subscriber.
    Pairs {
        /// Pairs.
        n: usize,
    },
    /// Publishers only, for the sink (which routes nothing): the publish ceiling.
    PublishOnly {
        /// Publishers.
        pubs: usize,
    },
    /// One subscriber that the sink floods: the receive ceiling.
    SinkFlood,
}

impl Topology {
    fn publishers(self) -> usize {
        match self {
            Topology::FanIn { pubs } | Topology::PublishOnly { pubs } => pubs,
            Topology::FanOut { .. } => 1,
            Topology::Pairs { n } => n,
            Topology::SinkFlood => 0,
        }
    }

    fn subscribers(self) -> usize {
        match self {
            Topology::FanIn { .. } | Topology::SinkFlood => 1,
            Topology::FanOut { subs } => subs,
            Topology::Pairs { n } => n,
            Topology::PublishOnly { .. } => 0,
        }
    }

    fn topic(self, publisher: usize) -> String {
        match self {
            Topology::FanIn { .. } | Topology::PublishOnly { .. } => {
                format!("bench/in/{publisher}")
            }
            Topology::FanOut { .. } => "bench/out".into(),
            Topology::Pairs { .. } => format!("bench/pair/{publisher}"),
            Topology::SinkFlood => unreachable!("SinkFlood has no publishers"),
        }
    }

    fn filter(self, subscriber: usize, qos: u8) -> String {
        match self {
            Topology::FanIn { .. } => "bench/in/+".into(),
            Topology::FanOut { .. } => "bench/out".into(),
            Topology::Pairs { .. } => format!("bench/pair/{subscriber}"),
            Topology::SinkFlood => format!("sink/flood/{qos}"),
            Topology::PublishOnly { .. } => unreachable!("PublishOnly has no subscribers"),
        }
    }

    /// Whether `subscriber` should receive what `publisher` sends.
    pub fn routes(self, publisher: usize, subscriber: usize) -> bool {
        match self {
            Topology::FanIn { .. } | Topology::FanOut { .. } => true,
            Topology::Pairs { .. } => publisher == subscriber,
            Topology::PublishOnly { .. } | Topology::SinkFlood => false,
        }
    }
}

/// One flow run's parameters.
#[derive(Debug, Clone)]
pub struct FlowSpec {
    /// Who talks to whom.
    pub topology: Topology,
    /// Protocol version of every client.
    pub version: Version,
    /// QoS of publishes and subscriptions (0 or 1).
    pub qos: u8,
    /// Payload bytes (at least [`payload::HEADER_LEN`]).
    pub payload: usize,
    /// Excluded from rates and latency.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Longest wait for outstanding deliveries and acks after publishing stops.
    pub drain: Duration,
    /// QoS 1 messages in flight per publisher (capped by the broker's Receive Maximum).
    pub window: u16,
    /// Per publisher: pause while this many of its messages are not yet seen by
    /// every subscriber that should get them (0: no limit, a pure flood).
    pub max_lag: u64,
    /// Total publish rate in messages/s, spread over the publishers (None: as fast as
    /// allowed).
    pub rate: Option<f64>,
    /// PUBLISH packets encoded into one write.
    pub batch: usize,
    /// Record end-to-end latency of each message sent inside the window.
    pub latency: bool,
    /// Subscribers keep persistent sessions (a durable broker then writes every
    /// QoS 1/2 message for them to disk before acknowledging it).
    pub persistent: bool,
    /// Subscribers connect here instead of to the publishers' broker (another
    /// node of a cluster); the flow starts once a probe has crossed.
    pub subscriber_addr: Option<SocketAddr>,
    /// Wait between the subscriptions and the first publish.
    pub settle: Duration,
}

#[derive(Default)]
struct Totals {
    sent: Cell<u64>,
    acked: Cell<u64>,
    received: Cell<u64>,
    refused_acks: Cell<u64>,
    lag_stalls: Cell<u64>,
}

/// How long a lag-bound publisher waits for its oldest undelivered messages before
/// taking them as lost.
const LAG_STALL: Duration = Duration::from_millis(50);

struct Publisher {
    sent: Cell<u64>,
    acked: Cell<u64>,
    wake: Notify,
}

#[derive(Default)]
struct Subscriber {
    /// Indexed by publisher id.
    from: Vec<SeqTracker>,
    misrouted: u64,
    foreign: u64,
    /// (send time, latency) in ns.
    latencies: Vec<(u64, u64)>,
}

struct Shared {
    spec: FlowSpec,
    totals: Totals,
    publishers: Vec<Publisher>,
    subscribers: Vec<RefCell<Subscriber>>,
    stop: Cell<bool>,
    /// The drain is over: publishers may close their write halves.
    drained: Cell<bool>,
    errors: RefCell<Vec<String>>,
}

impl Shared {
    fn error(&self, what: String) {
        let mut e = self.errors.borrow_mut();
        if e.len() < 20 {
            e.push(what);
        }
    }

    /// The lowest high-water mark of `publisher` over the subscribers that should
    /// receive it.
    fn delivered_high_water(&self, publisher: usize) -> u64 {
        let t = self.spec.topology;
        let mut low = u64::MAX;
        for (s, sub) in self.subscribers.iter().enumerate() {
            if t.routes(publisher, s) {
                let hw = sub.borrow().from.get(publisher).map_or(0, |t| t.high_water);
                low = low.min(hw);
            }
        }
        if low == u64::MAX {
            self.publishers[publisher].sent.get()
        } else {
            low
        }
    }

    fn integrity(&self) -> Integrity {
        let mut i = Integrity::default();
        let t = self.spec.topology;
        for (s, sub) in self.subscribers.iter().enumerate() {
            let sub = sub.borrow();
            for (p, publisher) in self.publishers.iter().enumerate() {
                if t.routes(p, s) {
                    let empty = SeqTracker::default();
                    i.add(sub.from.get(p).unwrap_or(&empty), publisher.sent.get());
                }
            }
        }
        i
    }

    fn complete(&self) -> bool {
        let i = self.integrity();
        let acked = self.spec.qos == 0 || self.totals.acked.get() >= self.totals.sent.get();
        acked && i.unique >= i.expected
    }
}

async fn subscriber_task(shared: Rc<Shared>, index: usize, session: client::Session) {
    let client::Session {
        mut stream,
        mut pending,
        ..
    } = session;
    let spec = &shared.spec;
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = pending.len().min(buf.len());
    buf[..filled].copy_from_slice(&pending[..filled]);
    pending.clear();
    let mut acks = Vec::with_capacity(64 * 1024);
    loop {
        let mut at = 0;
        let mut got = 0u64;
        {
            let mut sub = shared.subscribers[index].borrow_mut();
            let now = if spec.latency { payload::now_ns() } else { 0 };
            loop {
                match wire::parse(&buf[at..filled], Some(spec.version)) {
                    Ok(Some((packet, used))) => {
                        if let Incoming::Publish {
                            qos,
                            packet_id,
                            payload: body,
                            ..
                        } = packet
                        {
                            got += 1;
                            if qos == 1 {
                                wire::puback(&mut acks, packet_id);
                            }
                            match payload::read(body) {
                                Some(Stamp {
                                    publisher,
                                    seq,
                                    sent_ns,
                                }) if (publisher as usize) < 1 << 20 && seq < 1 << 36 => {
                                    let p = publisher as usize;
                                    if p >= sub.from.len() {
                                        sub.from.resize_with(p + 1, SeqTracker::default);
                                    }
                                    sub.from[p].record(seq);
                                    if !spec.topology.routes(p, index)
                                        && spec.topology != Topology::SinkFlood
                                    {
                                        sub.misrouted += 1;
                                    }
                                    if spec.latency {
                                        sub.latencies.push((sent_ns, now.saturating_sub(sent_ns)));
                                    }
                                }
                                _ => sub.foreign += 1,
                            }
                        } else if let Incoming::Disconnect { code } = packet {
                            shared.error(format!("subscriber {index}: DISCONNECT 0x{code:02x}"));
                        }
                        at += used;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        shared.error(format!("subscriber {index}: {e}"));
                        return;
                    }
                }
            }
        }
        if got > 0 {
            shared
                .totals
                .received
                .set(shared.totals.received.get() + got);
            for (p, publisher) in shared.publishers.iter().enumerate() {
                if spec.topology.routes(p, index) {
                    publisher.wake.notify_one();
                }
            }
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        if !acks.is_empty() {
            if let Err(e) = stream.write_all(&acks).await {
                shared.error(format!("subscriber {index}: writing PUBACKs: {e}"));
                return;
            }
            acks.clear();
        }
        if filled == buf.len() {
            shared.error(format!(
                "subscriber {index}: packet larger than the read buffer"
            ));
            return;
        }
        // A subscriber that always finds data waiting (a broker, or the sink,
        // faster than the generator) would otherwise keep the thread and starve
        // the timers that end the measured window.
        tokio::task::yield_now().await;
        match stream.read(&mut buf[filled..]).await {
            Ok(0) => {
                if !shared.stop.get() {
                    shared.error(format!("subscriber {index}: closed by the broker"));
                }
                return;
            }
            Ok(n) => filled += n,
            Err(e) => {
                shared.error(format!("subscriber {index}: {e}"));
                return;
            }
        }
    }
}

/// Packet ids in flight for one QoS 1 publisher.
struct InFlight {
    used: Vec<bool>,
    count: usize,
    next: u16,
}

impl InFlight {
    fn new() -> Self {
        InFlight {
            used: vec![false; 65536],
            count: 0,
            next: 0,
        }
    }

    fn take(&mut self) -> u16 {
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            if !self.used[usize::from(self.next)] {
                self.used[usize::from(self.next)] = true;
                self.count += 1;
                return self.next;
            }
        }
    }

    fn release(&mut self, id: u16) -> bool {
        let slot = &mut self.used[usize::from(id)];
        let was = *slot;
        *slot = false;
        self.count -= usize::from(was);
        was
    }
}

async fn ack_reader(
    shared: Rc<Shared>,
    index: usize,
    mut rd: OwnedReadHalf,
    mut pending: Vec<u8>,
    inflight: Rc<RefCell<InFlight>>,
) {
    let version = shared.spec.version;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut at = 0;
        let mut acked = 0u64;
        loop {
            match wire::parse(&pending[at..], Some(version)) {
                Ok(Some((packet, used))) => {
                    match packet {
                        Incoming::PubAck { packet_id, code } => {
                            if inflight.borrow_mut().release(packet_id) {
                                acked += 1;
                                if code >= 0x80 {
                                    let t = &shared.totals.refused_acks;
                                    t.set(t.get() + 1);
                                }
                            } else {
                                shared.error(format!(
                                    "publisher {index}: PUBACK for unknown packet id {packet_id}"
                                ));
                            }
                        }
                        Incoming::Disconnect { code } => {
                            shared.error(format!("publisher {index}: DISCONNECT 0x{code:02x}"))
                        }
                        _ => {}
                    }
                    at += used;
                }
                Ok(None) => break,
                Err(e) => {
                    shared.error(format!("publisher {index}: {e}"));
                    return;
                }
            }
        }
        pending.drain(..at);
        if acked > 0 {
            let p = &shared.publishers[index];
            p.acked.set(p.acked.get() + acked);
            shared.totals.acked.set(shared.totals.acked.get() + acked);
            p.wake.notify_one();
        }
        tokio::task::yield_now().await;
        match rd.read(&mut chunk).await {
            Ok(0) => {
                if !shared.stop.get() {
                    shared.error(format!("publisher {index}: closed by the broker"));
                }
                return;
            }
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) => {
                shared.error(format!("publisher {index}: {e}"));
                return;
            }
        }
    }
}

async fn publisher_task(
    shared: Rc<Shared>,
    index: usize,
    mut wr: OwnedWriteHalf,
    receive_maximum: u16,
    inflight: Rc<RefCell<InFlight>>,
    start: Instant,
) {
    let spec = &shared.spec;
    let me = &shared.publishers[index];
    let topic = spec.topology.topic(index);
    let window = usize::from(spec.window.min(receive_maximum).max(1));
    let per_publisher_rate = spec.rate.map(|r| r / spec.topology.publishers() as f64);
    let mut body = vec![0x2Au8; spec.payload];
    let mut out = Vec::with_capacity(
        spec.batch * wire::publish_len(spec.version, spec.qos, topic.len(), spec.payload),
    );
    let mut seq = 0u64;
    let mut forgiven = 0u64;
    let mut stall = (u64::MAX, Instant::now());
    while !shared.stop.get() {
        let mut n = spec.batch as u64;
        if spec.qos == 1 {
            n = n.min(window.saturating_sub(inflight.borrow().count) as u64);
        }
        if spec.max_lag > 0 {
            let delivered = shared.delivered_high_water(index).min(seq).max(forgiven);
            let lag = seq - delivered;
            if lag >= spec.max_lag {
                // Lost messages never raise the high-water mark: if nothing newer
                // arrives for a while, the broker may have dropped the whole tail.
                // Count the stall and allow one more batch (not a whole lag's worth,
                // so that a broker that is merely slow gains little backlog); once
                // that batch arrives the high-water mark catches up.
                if delivered != stall.0 {
                    stall = (delivered, Instant::now());
                } else if stall.1.elapsed() >= LAG_STALL {
                    let allow = (spec.batch as u64).min(spec.max_lag);
                    forgiven = seq - (spec.max_lag - allow);
                    shared
                        .totals
                        .lag_stalls
                        .set(shared.totals.lag_stalls.get() + 1);
                    continue;
                }
            }
            n = n.min(spec.max_lag.saturating_sub(lag));
        }
        if let Some(rate) = per_publisher_rate {
            let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
            let allowed = due.saturating_sub(seq);
            if allowed == 0 {
                let at = start + Duration::from_secs_f64(seq as f64 / rate);
                tokio::time::sleep_until(at).await;
                continue;
            }
            n = n.min(allowed);
        }
        if n == 0 {
            // woken by a PUBACK or by a subscriber's progress; the timeout only
            // bounds how late a stop is noticed
            let _ = tokio::time::timeout(Duration::from_millis(20), me.wake.notified()).await;
            continue;
        }
        out.clear();
        for _ in 0..n {
            let packet_id = if spec.qos == 1 {
                inflight.borrow_mut().take()
            } else {
                0
            };
            payload::write(
                &mut body,
                Stamp {
                    publisher: index as u32,
                    seq,
                    sent_ns: payload::now_ns(),
                },
            );
            wire::publish(
                &mut out,
                spec.version,
                spec.qos,
                packet_id,
                topic.as_bytes(),
                &body,
            );
            seq += 1;
        }
        if let Err(e) = wr.write_all(&out).await {
            shared.error(format!("publisher {index}: {e}"));
            return;
        }
        me.sent.set(seq);
        shared.totals.sent.set(shared.totals.sent.get() + n);
    }
    // Dropping the write half shuts the socket's sending side down, and a broker
    // takes that as the client gone, with whatever it has not acknowledged yet
    // (a durable broker acknowledges after its disk): keep it open until the
    // drain has seen the last acknowledgements.
    while !shared.drained.get() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(wr);
}

/// Snapshot of the counters a rate is computed from.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    sent: u64,
    acked: u64,
    received: u64,
}

fn mark(shared: &Shared) -> Mark {
    Mark {
        at: Instant::now(),
        sent: shared.totals.sent.get(),
        acked: shared.totals.acked.get(),
        received: shared.totals.received.get(),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs one flow against the broker at `addr`; the record holds rates, integrity,
/// latency and CPU. `gen_stat` is the `/proc` stat file of the generator's thread(s).
pub async fn run(
    spec: FlowSpec,
    addr: SocketAddr,
    broker_pid: Option<u32>,
    gen_stat: String,
    tag: &str,
) -> Record {
    assert!(
        spec.payload >= payload::HEADER_LEN,
        "payload below header size"
    );
    let t = spec.topology;
    let shared = Rc::new(Shared {
        publishers: (0..t.publishers())
            .map(|_| Publisher {
                sent: Cell::new(0),
                acked: Cell::new(0),
                wake: Notify::new(),
            })
            .collect(),
        subscribers: (0..t.subscribers()).map(|_| RefCell::default()).collect(),
        spec,
        totals: Totals::default(),
        stop: Cell::new(false),
        drained: Cell::new(false),
        errors: RefCell::default(),
    });
    let spec = &shared.spec;
    let mut record = Record::default();
    let mut setup_failures = Vec::new();

    // subscribers first, so that nothing published is missed
    let mut subs = Vec::new();
    for s in 0..t.subscribers() {
        let filter = t.filter(s, spec.qos);
        let (version, qos, persistent) = (spec.version, spec.qos, spec.persistent);
        let id = format!("bl-{tag}-s{s}");
        let sub_addr = spec.subscriber_addr.unwrap_or(addr);
        subs.push(tokio::task::spawn_local(async move {
            let mut session =
                client::connect(sub_addr, None, version, &id, 300, persistent).await?;
            session.subscribe(&filter, qos).await?;
            Ok::<_, ConnectError>(session)
        }));
    }
    let mut pubs = Vec::new();
    for p in 0..t.publishers() {
        let version = spec.version;
        let id = format!("bl-{tag}-p{p}");
        pubs.push(tokio::task::spawn_local(async move {
            client::connect(addr, None, version, &id, 300, false).await
        }));
    }
    let mut sub_sessions = Vec::new();
    for h in subs {
        match h.await.expect("connect task panicked") {
            Ok(s) => sub_sessions.push(s),
            Err(e) => setup_failures.push(format!("subscriber: {e}")),
        }
    }
    // Another node's subscriptions take a moment to reach the publishers' node.
    if !spec.settle.is_zero() {
        tokio::time::sleep(spec.settle).await;
    }
    let mut pub_sessions = Vec::new();
    for h in pubs {
        match h.await.expect("connect task panicked") {
            Ok(s) => pub_sessions.push(s),
            Err(e) => setup_failures.push(format!("publisher: {e}")),
        }
    }
    if !setup_failures.is_empty() {
        record.push("ok", false);
        record.push("setup_failures", setup_failures.len());
        record.push_text("error", &setup_failures[0]);
        return record;
    }
    let receive_maximum = pub_sessions.iter().map(|s| s.receive_maximum).min();

    for (s, session) in sub_sessions.into_iter().enumerate() {
        tokio::task::spawn_local(subscriber_task(shared.clone(), s, session));
    }
    let start = Instant::now();
    for (p, session) in pub_sessions.into_iter().enumerate() {
        let (rd, wr) = session.stream.into_split();
        let inflight = Rc::new(RefCell::new(InFlight::new()));
        tokio::task::spawn_local(ack_reader(
            shared.clone(),
            p,
            rd,
            session.pending,
            inflight.clone(),
        ));
        tokio::task::spawn_local(publisher_task(
            shared.clone(),
            p,
            wr,
            session.receive_maximum,
            inflight,
            start,
        ));
    }

    tokio::time::sleep_until(start + spec.warmup).await;
    let window_start_ns = payload::now_ns();
    let m0 = mark(&shared);
    let neighbours = Neighbours::start(broker_pid, &gen_stat);
    let gen_cpu = CpuMeter::start(gen_stat);
    let broker_cpu = broker_pid.map(|pid| CpuMeter::start(format!("/proc/{pid}/stat")));
    tokio::time::sleep_until(start + spec.warmup + spec.duration).await;
    let m1 = mark(&shared);
    let window_end_ns = payload::now_ns();
    let secs = (m1.at - m0.at).as_secs_f64();
    let gen_cpu_pct = gen_cpu.percent(secs);
    let broker_cpu_pct = broker_cpu.and_then(|c| c.percent(secs));
    neighbours.record(&mut record, secs);
    shared.stop.set(true);

    // drain: until every expected delivery and ack arrived, nothing moved for a
    // second, or the drain time ran out
    let drain_start = Instant::now();
    let mut last = (shared.totals.received.get(), shared.totals.acked.get());
    let mut last_change = Instant::now();
    while !shared.complete() && drain_start.elapsed() < spec.drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = (shared.totals.received.get(), shared.totals.acked.get());
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    shared.drained.set(true);

    let integrity = shared.integrity();
    let (misrouted, foreign) = shared.subscribers.iter().fold((0, 0), |(m, f), s| {
        let s = s.borrow();
        (m + s.misrouted, f + s.foreign)
    });
    let errors = shared.errors.borrow();
    let unacked = m1.sent.max(shared.totals.sent.get()) - shared.totals.acked.get();
    let unacked = if spec.qos == 1 { unacked } else { 0 };
    let ok = errors.is_empty()
        && misrouted == 0
        && foreign == 0
        && (spec.qos == 0
            || (integrity.lost == 0
                && integrity.duplicates == 0
                && integrity.reordered == 0
                && unacked == 0));
    record.push("ok", ok);
    record.push("window_s", format!("{secs:.2}"));
    record.push(
        "sent_per_s",
        format!("{:.0}", (m1.sent - m0.sent) as f64 / secs),
    );
    if spec.qos == 1 {
        record.push(
            "acked_per_s",
            format!("{:.0}", (m1.acked - m0.acked) as f64 / secs),
        );
    }
    record.push(
        "rx_per_s",
        format!("{:.0}", (m1.received - m0.received) as f64 / secs),
    );
    record.push("sent", shared.totals.sent.get());
    record.push("expected", integrity.expected);
    record.push("unique", integrity.unique);
    record.push("lost", integrity.lost);
    record.push("lost_tail", integrity.lost_tail);
    record.push("dup", integrity.duplicates);
    record.push("reorder", integrity.reordered);
    record.push("unacked", unacked);
    record.push("refused_acks", shared.totals.refused_acks.get());
    record.push("lag_stalls", shared.totals.lag_stalls.get());
    record.push("misrouted", misrouted);
    record.push("foreign", foreign);
    record.push("drain_s", format!("{drain_secs:.2}"));
    if let Some(r) = receive_maximum {
        record.push("receive_maximum", r);
    }
    if spec.latency {
        let mut lat: Vec<u64> = shared
            .subscribers
            .iter()
            .flat_map(|s| {
                s.borrow()
                    .latencies
                    .iter()
                    .filter(|(sent, _)| (window_start_ns..window_end_ns).contains(sent))
                    .map(|&(_, l)| l)
                    .collect::<Vec<_>>()
            })
            .collect();
        lat.sort_unstable();
        record.push("lat_samples", lat.len());
        for (k, p) in [("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)] {
            record.push(k, format!("{:.1}", percentile(&lat, p) as f64 / 1000.0));
        }
        record.push(
            "max_us",
            format!("{:.1}", lat.last().copied().unwrap_or(0) as f64 / 1000.0),
        );
    }
    if let Some(c) = gen_cpu_pct {
        record.push("gen_cpu", format!("{c:.1}"));
    }
    if let Some(c) = broker_cpu_pct {
        record.push("broker_cpu", format!("{c:.1}"));
    }
    if let Some(pid) = broker_pid {
        if let Some(hwm) = procfs::status_kib(pid, "VmHWM") {
            record.push("broker_hwm_kib", hwm);
        }
    }
    record.push("errors", errors.len());
    if let Some(e) = errors.first() {
        record.push_text("error", e);
    }
    record
}
