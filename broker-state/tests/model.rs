//! Model-based test of the broker core (proptest-state-machine).
//!
//! Random sequences of operations by three clients (`c0`, `c1`, `c2`, so sessions
//! are taken over) run against the real broker through the simulation harness
//! (`tests/sim`: every packet is encoded, decoded and re-encoded on the wire) and
//! against [`Model`], a reference model of sessions, subscriptions, retained
//! messages, in-flight windows and session queues. Operations: CONNECT (3.1.1 or
//! 5.0, clean or persistent, session expiry 0/60/300 s, Receive Maximum 1-3,
//! keep-alive on or off), SUBSCRIBE / UNSUBSCRIBE on filters with `+` and `#`,
//! PUBLISH at QoS 0/1/2 with or without RETAIN on topics `a`, `a/b`, `b`,
//! resending an unreleased QoS 2 PUBLISH (DUP), PUBREL, acknowledging (or not)
//! what was received, DISCONNECT, an abrupt close, and clock ticks (keep-alive
//! and session expiry). Small limits (window 2 for 3.1.1, online queue 3, offline
//! queue 2, each offline overflow policy) make queues overflow.
//!
//! Checked after every operation:
//!
//! * every packet each connection receives (PUBLISH with its packet id, QoS, DUP,
//!   RETAIN; PUBREL; CONNACK's Session Present; acks; DISCONNECT reason) equals the
//!   model's prediction, in order, and the same connections are closed;
//! * as a client application sees it: QoS 2 messages are delivered at most once
//!   per session (duplicate PUBLISHes are recognised by packet id, as a client
//!   must), first deliveries keep publication order per publisher, topic and QoS,
//!   and a non-retained message only reaches a session that held a matching
//!   subscription when it was published (nothing after UNSUBSCRIBE);
//! * each session queue equals the model's and stays within its bound; session
//!   and connection counts match; every drop the model predicts is counted in
//!   `Stats`; the broker's internal invariants hold (`Broker::check_invariants`).
//!
//! At the end of each case every client reconnects to its session and acknowledges
//! everything until nothing is left, and every QoS 1/2 message owed to a session
//! (routed to it and not dropped by an overflow policy) must have been delivered:
//! QoS 1 at least once, QoS 2 exactly once.
//!
//! The test prints one line with what it exercised (`cargo test -p broker-state
//! --test model -- --nocapture`), e.g.
//!
//! ```text
//! model: 1000 cases, 50084 ops; 9411 PUBLISH delivered (820 DUP resends,
//! 3252 retained), 2644 takeovers, 518 overflows, 1851 QoS 2 flows,
//! 765 keep-alive timeouts, 643 session expiries
//! ```
//!
//! 1000 cases of up to 100 operations take about 6 s of CPU in a debug build; set
//! `MODEL_CASES` for a longer run. "cases" counts shrinking replays too.
//!
//! # It catches bugs (demonstrated, then reverted)
//!
//! Each mutation below was applied to `src/broker.rs` in a copy of the workspace
//! and the test run there; every one failed in a second or two of testing and
//! shrank to the case shown.
//!
//! 1. Resent in-flight PUBLISH without DUP (`p.dup = true` deleted in
//!    `resend_inflight`): after `Connect c0 (3.1.1,
//!    persistent)`, `Subscribe c0 a QoS 1`, `Publish c0 a QoS 1`, `Connect c0`
//!    (takeover): `received [ConnAck { present: true }, Publish { msg: 0, pid:
//!    Some(1), qos: AtLeastOnce, dup: false, .. }]`, the model expects `dup: true`.
//! 2. One queued message silently lost (`fill_window` popped two when more than
//!    one waited): five QoS 1 publishes to a 3.1.1 subscriber (window 2, queue 3)
//!    and the final settle: `received [Publish { msg: 3, pid: Some(3) .. },
//!    Publish { msg: 4, pid: Some(4) .. }]`, the model expects messages 2, 3, 4.
//! 3. Takeover of a session with expiry 0 by a Clean Session 0 CONNECT keeping the
//!    stale session key (the bug fixed in `on_connect`, `is_none_or` put back to
//!    `is_some_and`): `Connect c2 (5.0, clean 0, expiry 0)`, `Connect c2 (3.1.1,
//!    clean 0)`: `received [ConnAck { present: true }]`, expected `present: false`.
//! 4. QoS 2 duplicate routed again (the `incoming_qos2.contains` check disabled):
//!    `Connect c2`, `Subscribe c2 b QoS 0`, `Publish c2 b QoS 2`, `Republish c2`:
//!    `received [Publish { msg: 0, .. }, PubRec(2)]`, expected only `[PubRec(2)]`.
//! 5. UNSUBSCRIBE left the route in the trie (`router.unsubscribe` skipped in
//!    `on_unsubscribe`): `Connect c1`, `Subscribe c1 a/+`, `Unsubscribe c1 a/+`:
//!    `broker invariant: the route table holds 1 subscriptions, the sessions 0`.
//!
//! The mutations were reverted. Mutation 3 puts back a real bug, already fixed in
//! `Broker::on_connect` when this test was written.
#![allow(clippy::too_many_lines)]

mod sim;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use broker_state::{Config, OverflowPolicy, QueueLimits};
use mqtt_proto::bytes::Bytes;
use mqtt_proto::{
    Connect, ConnectProperties, Disconnect, MqttString, Packet, PacketId, ProtocolVersion, PubAck,
    Publish, PublishProperties, QoS, ReasonCode, SubscriptionOptions, TopicFilter, TopicName,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use sim::Sim;

const TOPICS: [&str; 3] = ["a", "a/b", "b"];
const FILTERS: [&str; 8] = ["a", "a/b", "b", "a/+", "+", "#", "a/#", "+/b"];
const CLIENTS: usize = 3;
const ONLINE_QUEUE: usize = 3;
const OFFLINE_QUEUE: usize = 2;
const WINDOW_V3: u16 = 2;
/// Session expiry of a 3.1.1 client with Clean Session 0.
const DEFAULT_EXPIRY: u32 = 300;
const MAX_EXPIRY: u32 = 3600;
const KEEP_ALIVE: u16 = 60;
/// 1.5 x Keep Alive [MQTT-3.1.2-24].
const KEEP_ALIVE_TIMEOUT: u64 = 90;

fn config(policy: OverflowPolicy) -> Config {
    Config {
        max_inflight_v3: WINDOW_V3,
        default_session_expiry: DEFAULT_EXPIRY,
        max_session_expiry: MAX_EXPIRY,
        online_queue: QueueLimits {
            messages: ONLINE_QUEUE,
            bytes: 1 << 20,
        },
        offline_queue: QueueLimits {
            messages: OFFLINE_QUEUE,
            bytes: 1 << 20,
        },
        offline_overflow: policy,
        ..Config::default()
    }
}

/// The MQTT matching rules for the small alphabet above (no `$` topics).
fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

// ------------------------------------------------------------------ operations

#[derive(Clone, Debug)]
enum Op {
    Connect {
        c: usize,
        v5: bool,
        clean: bool,
        /// Session Expiry Interval requested (5.0 only).
        expiry: u32,
        /// Receive Maximum (5.0 only).
        window: u16,
        keep_alive: bool,
    },
    Subscribe {
        c: usize,
        filter: usize,
        qos: QoS,
    },
    Unsubscribe {
        c: usize,
        filter: usize,
    },
    Publish {
        c: usize,
        topic: usize,
        qos: QoS,
        retain: bool,
    },
    /// Resend the oldest unreleased QoS 2 PUBLISH of this client with DUP set.
    Republish {
        c: usize,
    },
    /// PUBREL for the oldest unreleased QoS 2 PUBLISH of this client.
    Release {
        c: usize,
    },
    /// Answer the next `n` packets that need an answer (PUBACK, PUBREC, PUBCOMP).
    Ack {
        c: usize,
        n: usize,
    },
    Disconnect {
        c: usize,
    },
    /// The transport drops without DISCONNECT.
    Crash {
        c: usize,
    },
    Tick {
        secs: u64,
    },
}

impl Op {
    fn client(&self) -> Option<usize> {
        match *self {
            Op::Connect { .. } | Op::Tick { .. } => None,
            Op::Subscribe { c, .. }
            | Op::Unsubscribe { c, .. }
            | Op::Publish { c, .. }
            | Op::Republish { c }
            | Op::Release { c }
            | Op::Ack { c, .. }
            | Op::Disconnect { c }
            | Op::Crash { c } => Some(c),
        }
    }
}

/// What a connection receives, in a form both sides compute: PUBLISH carries the
/// message number (its payload) and the packet id the broker chose.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Obs {
    ConnAck {
        present: bool,
    },
    SubAck(QoS),
    UnsubAck,
    Publish {
        msg: u32,
        pid: Option<u16>,
        qos: QoS,
        dup: bool,
        retain: bool,
    },
    PubRel(u16),
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
    Disconnect(ReasonCode),
}

/// A packet a client owes the broker, by packet id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named after the packets
enum Todo {
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
}

// ------------------------------------------------------------------ the model

#[derive(Clone, Debug)]
struct Flight {
    pid: u16,
    msg: u32,
    qos: QoS,
    retain: bool,
    released: bool,
}

#[derive(Clone, Debug)]
struct QueuedM {
    msg: u32,
    qos: QoS,
    retain: bool,
}

#[derive(Clone, Debug)]
struct SessionM {
    expiry: u32,
    offline_since: Option<u64>,
    subs: BTreeMap<usize, QoS>,
    inflight: VecDeque<Flight>,
    queue: VecDeque<QueuedM>,
    last_pid: u16,
    /// QoS 2 messages this client published and has not released, with their ids.
    unreleased: VecDeque<(u16, u32)>,
    /// QoS 1/2 messages routed here (not retained copies) and not dropped.
    owed: BTreeSet<u32>,
}

impl SessionM {
    fn new() -> Self {
        SessionM {
            expiry: 0,
            offline_since: None,
            subs: BTreeMap::new(),
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            last_pid: 0,
            unreleased: VecDeque::new(),
            owed: BTreeSet::new(),
        }
    }
}

#[derive(Clone, Debug)]
struct ConnM {
    serial: u32,
    v5: bool,
    window: usize,
    keep_alive: bool,
    last_rx: u64,
}

#[derive(Clone, Debug, Default)]
struct ClientM {
    conn: Option<ConnM>,
    serials: u32,
    /// Client-chosen packet ids of its own QoS 1/2 publishes.
    last_pid: u16,
    todo: VecDeque<Todo>,
    session: Option<SessionM>,
}

#[derive(Clone)]
struct Model {
    policy: OverflowPolicy,
    now: u64,
    clients: Vec<ClientM>,
    /// Topic index -> (message, QoS as published); topic indexes sort like the
    /// topics' bytes.
    retained: BTreeMap<usize, (u32, QoS)>,
    /// Messages published so far (the next message's number).
    msgs: u32,
    overflows: u64,
    expiries: u64,
    keep_alive_timeouts: u64,
    /// What the last operation sent, by (client, connection serial).
    expect: BTreeMap<(usize, u32), Vec<Obs>>,
    /// Connections the last operation closed.
    closed: BTreeSet<(usize, u32)>,
}

/// Failing cases print the initial state: only the policy is interesting there.
impl core::fmt::Debug for Model {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Model {{ policy: {:?}, now: {} }}",
            self.policy, self.now
        )
    }
}

impl Model {
    fn new(policy: OverflowPolicy) -> Self {
        Model {
            policy,
            now: 0,
            clients: vec![ClientM::default(); CLIENTS],
            retained: BTreeMap::new(),
            msgs: 0,
            overflows: 0,
            expiries: 0,
            keep_alive_timeouts: 0,
            expect: BTreeMap::new(),
            closed: BTreeSet::new(),
        }
    }

    fn online(&self, c: usize) -> bool {
        self.clients[c].conn.is_some()
    }

    fn obs(&mut self, c: usize, o: Obs) {
        let serial = self.clients[c].conn.as_ref().expect("online").serial;
        self.expect.entry((c, serial)).or_default().push(o);
    }

    fn touch(&mut self, c: usize) {
        let now = self.now;
        if let Some(conn) = self.clients[c].conn.as_mut() {
            conn.last_rx = now;
        }
    }

    fn apply(&mut self, op: &Op) {
        self.expect.clear();
        self.closed.clear();
        if let Some(c) = op.client() {
            if !self.online(c) {
                return;
            }
        }
        match *op {
            Op::Connect {
                c,
                v5,
                clean,
                expiry,
                window,
                keep_alive,
            } => self.connect(c, v5, clean, expiry, window, keep_alive),
            Op::Subscribe { c, filter, qos } => {
                self.touch(c);
                self.clients[c].last_pid += 1;
                let s = self.clients[c].session.as_mut().expect("online session");
                s.subs.insert(filter, qos);
                self.obs(c, Obs::SubAck(qos));
                // [MQTT-3.8.4-4] retained messages after the SUBACK, by topic.
                let retained: Vec<_> = self
                    .retained
                    .iter()
                    .filter(|(t, _)| filter_matches(FILTERS[filter], TOPICS[**t]))
                    .map(|(_, &(msg, q))| (msg, q))
                    .collect();
                for (msg, rq) in retained {
                    self.deliver(c, msg, rq.min(qos), true);
                }
            }
            Op::Unsubscribe { c, filter } => {
                self.touch(c);
                self.clients[c].last_pid += 1;
                let s = self.clients[c].session.as_mut().expect("online session");
                s.subs.remove(&filter);
                self.obs(c, Obs::UnsubAck);
            }
            Op::Publish {
                c,
                topic,
                qos,
                retain,
            } => {
                self.touch(c);
                let msg = self.msgs;
                self.msgs += 1;
                let pid = (qos != QoS::AtMostOnce).then(|| {
                    let cl = &mut self.clients[c];
                    cl.last_pid += 1;
                    cl.last_pid
                });
                if retain {
                    self.retained.insert(topic, (msg, qos));
                }
                for s in 0..CLIENTS {
                    let granted = self.clients[s].session.as_ref().and_then(|sess| {
                        sess.subs
                            .iter()
                            .filter(|(f, _)| filter_matches(FILTERS[**f], TOPICS[topic]))
                            .map(|(_, q)| *q)
                            .max()
                    });
                    if let Some(g) = granted {
                        self.deliver(s, msg, qos.min(g), false);
                    }
                }
                match (qos, pid) {
                    (QoS::AtLeastOnce, Some(pid)) => self.obs(c, Obs::PubAck(pid)),
                    (QoS::ExactlyOnce, Some(pid)) => {
                        self.obs(c, Obs::PubRec(pid));
                        let s = self.clients[c].session.as_mut().expect("online session");
                        s.unreleased.push_back((pid, msg));
                    }
                    _ => {}
                }
            }
            Op::Republish { c } => {
                let s = self.clients[c].session.as_ref().expect("online session");
                // A duplicate is acknowledged again and not routed again.
                if let Some(&(pid, _)) = s.unreleased.front() {
                    self.touch(c);
                    self.obs(c, Obs::PubRec(pid));
                }
            }
            Op::Release { c } => {
                let s = self.clients[c].session.as_mut().expect("online session");
                if let Some((pid, _)) = s.unreleased.pop_front() {
                    self.touch(c);
                    self.obs(c, Obs::PubComp(pid));
                }
            }
            Op::Ack { c, n } => {
                for _ in 0..n {
                    let Some(todo) = self.clients[c].todo.pop_front() else {
                        break;
                    };
                    self.touch(c);
                    self.answer(c, todo);
                }
            }
            Op::Disconnect { c } | Op::Crash { c } => {
                let serial = self.clients[c].conn.as_ref().expect("online").serial;
                self.closed.insert((c, serial));
                self.detach(c);
            }
            Op::Tick { secs } => self.tick(secs),
        }
    }

    fn connect(&mut self, c: usize, v5: bool, clean: bool, expiry: u32, window: u16, ka: bool) {
        let requested = if v5 {
            expiry
        } else if clean {
            0
        } else {
            DEFAULT_EXPIRY
        };
        let granted = requested.min(MAX_EXPIRY);
        if let Some(old) = self.clients[c].conn.clone() {
            // Takeover [MQTT-3.1.4-3].
            if old.v5 {
                self.obs(c, Obs::Disconnect(ReasonCode::SessionTakenOver));
            }
            self.closed.insert((c, old.serial));
            self.detach(c);
        }
        let cl = &mut self.clients[c];
        if clean {
            cl.session = None;
        }
        let present = cl.session.is_some();
        let s = cl.session.get_or_insert_with(SessionM::new);
        s.expiry = granted;
        s.offline_since = None;
        cl.serials += 1;
        cl.conn = Some(ConnM {
            serial: cl.serials,
            v5,
            window: if v5 {
                usize::from(window)
            } else {
                usize::from(WINDOW_V3)
            },
            keep_alive: ka,
            last_rx: self.now,
        });
        cl.todo.clear();
        self.obs(c, Obs::ConnAck { present });
        if present {
            // [MQTT-4.4.0-1] resend unacknowledged PUBLISH (DUP) and PUBREL.
            let flights: Vec<Flight> = self.clients[c]
                .session
                .as_ref()
                .map(|s| s.inflight.iter().cloned().collect())
                .unwrap_or_default();
            for f in flights {
                if f.released {
                    self.obs(c, Obs::PubRel(f.pid));
                    self.clients[c].todo.push_back(Todo::PubComp(f.pid));
                } else {
                    self.obs(
                        c,
                        Obs::Publish {
                            msg: f.msg,
                            pid: Some(f.pid),
                            qos: f.qos,
                            dup: true,
                            retain: f.retain,
                        },
                    );
                    let todo = if f.qos == QoS::AtLeastOnce {
                        Todo::PubAck(f.pid)
                    } else {
                        Todo::PubRec(f.pid)
                    };
                    self.clients[c].todo.push_back(todo);
                }
            }
        }
        self.fill_window(c);
    }

    /// The connection of `c` is gone: the session ends (expiry 0) or waits.
    fn detach(&mut self, c: usize) {
        let now = self.now;
        let cl = &mut self.clients[c];
        cl.conn = None;
        cl.todo.clear();
        if let Some(s) = cl.session.as_mut() {
            if s.expiry == 0 {
                cl.session = None;
            } else {
                s.offline_since = Some(now);
            }
        }
    }

    fn tick(&mut self, secs: u64) {
        let end = self.now + secs;
        loop {
            // The earliest keep-alive expiry or session expiry due by `end`.
            let mut next: Option<(u64, usize, bool)> = None;
            for (c, cl) in self.clients.iter().enumerate() {
                let due = match (&cl.conn, &cl.session) {
                    (Some(conn), _) if conn.keep_alive => {
                        Some((conn.last_rx + KEEP_ALIVE_TIMEOUT, c, true))
                    }
                    (None, Some(s)) => s
                        .offline_since
                        .map(|since| (since + u64::from(s.expiry), c, false)),
                    _ => None,
                };
                if let Some(d) = due {
                    if d.0 <= end && next.is_none_or(|n| d.0 < n.0) {
                        next = Some(d);
                    }
                }
            }
            let Some((at, c, keep_alive)) = next else {
                break;
            };
            self.now = at;
            if keep_alive {
                // [MQTT-3.1.2-24]
                self.keep_alive_timeouts += 1;
                let conn = self.clients[c].conn.clone().expect("online");
                if conn.v5 {
                    self.obs(c, Obs::Disconnect(ReasonCode::KeepAliveTimeout));
                }
                self.closed.insert((c, conn.serial));
                self.detach(c);
            } else {
                self.expiries += 1;
                self.clients[c].session = None;
            }
        }
        self.now = end;
    }

    fn answer(&mut self, c: usize, todo: Todo) {
        let Some(s) = self.clients[c].session.as_mut() else {
            return;
        };
        match todo {
            Todo::PubAck(pid) => {
                if let Some(i) = s
                    .inflight
                    .iter()
                    .position(|f| f.pid == pid && !f.released && f.qos == QoS::AtLeastOnce)
                {
                    s.inflight.remove(i);
                    self.fill_window(c);
                }
            }
            Todo::PubRec(pid) => {
                if let Some(f) = s
                    .inflight
                    .iter_mut()
                    .find(|f| f.pid == pid && f.qos == QoS::ExactlyOnce)
                {
                    f.released = true;
                }
                self.obs(c, Obs::PubRel(pid));
                self.clients[c].todo.push_back(Todo::PubComp(pid));
            }
            Todo::PubComp(pid) => {
                if let Some(i) = s.inflight.iter().position(|f| f.pid == pid && f.released) {
                    s.inflight.remove(i);
                    self.fill_window(c);
                }
            }
        }
    }

    /// One message to one session at QoS `qos`: out now, in flight, or queued.
    fn deliver(&mut self, c: usize, msg: u32, qos: QoS, retain: bool) {
        let online = self.online(c);
        let Some(s) = self.clients[c].session.as_mut() else {
            return;
        };
        if qos == QoS::AtMostOnce {
            // QoS 0 goes out at once, or nowhere.
            if online {
                self.obs(
                    c,
                    Obs::Publish {
                        msg,
                        pid: None,
                        qos,
                        dup: false,
                        retain,
                    },
                );
            }
            return;
        }
        if !online && s.expiry == 0 {
            return;
        }
        if !retain {
            s.owed.insert(msg);
        }
        let q = QueuedM { msg, qos, retain };
        if online {
            let window = self.clients[c].conn.as_ref().expect("online").window;
            let s = self.clients[c].session.as_mut().expect("session");
            if s.inflight.len() < window && s.queue.is_empty() {
                self.send(c, q);
            } else {
                self.enqueue(c, q, true);
            }
        } else {
            self.enqueue(c, q, false);
        }
    }

    fn send(&mut self, c: usize, q: QueuedM) {
        let s = self.clients[c].session.as_mut().expect("session");
        s.last_pid += 1;
        let pid = s.last_pid;
        s.inflight.push_back(Flight {
            pid,
            msg: q.msg,
            qos: q.qos,
            retain: q.retain,
            released: false,
        });
        self.obs(
            c,
            Obs::Publish {
                msg: q.msg,
                pid: Some(pid),
                qos: q.qos,
                dup: false,
                retain: q.retain,
            },
        );
        let todo = if q.qos == QoS::AtLeastOnce {
            Todo::PubAck(pid)
        } else {
            Todo::PubRec(pid)
        };
        self.clients[c].todo.push_back(todo);
    }

    fn enqueue(&mut self, c: usize, q: QueuedM, online: bool) {
        let policy = self.policy;
        let s = self.clients[c].session.as_mut().expect("session");
        let drop_owed = |s: &mut SessionM, q: &QueuedM| {
            if !q.retain {
                s.owed.remove(&q.msg);
            }
        };
        if online {
            // Slow consumer: the oldest queued QoS 1 message goes; with only QoS 2
            // waiting, the new message goes.
            while s.queue.len() + 1 > ONLINE_QUEUE {
                self.overflows += 1;
                match s.queue.iter().position(|m| m.qos == QoS::AtLeastOnce) {
                    Some(i) => {
                        let old = s.queue.remove(i).expect("position is in range");
                        drop_owed(s, &old);
                    }
                    None => return drop_owed(s, &q),
                }
            }
        } else if s.queue.len() + 1 > OFFLINE_QUEUE {
            self.overflows += 1;
            match policy {
                OverflowPolicy::EndSession => {
                    self.clients[c].session = None;
                    return;
                }
                OverflowPolicy::DropNewest => return drop_owed(s, &q),
                OverflowPolicy::DropOldest => {
                    let old = s.queue.pop_front().expect("a full queue has a front");
                    drop_owed(s, &old);
                    while s.queue.len() + 1 > OFFLINE_QUEUE {
                        self.overflows += 1;
                        let old = s.queue.pop_front().expect("a full queue has a front");
                        drop_owed(s, &old);
                    }
                }
            }
        }
        s.queue.push_back(q);
    }

    fn fill_window(&mut self, c: usize) {
        loop {
            let Some(window) = self.clients[c].conn.as_ref().map(|c| c.window) else {
                return;
            };
            let Some(s) = self.clients[c].session.as_mut() else {
                return;
            };
            if s.inflight.len() >= window {
                return;
            }
            let Some(q) = s.queue.pop_front() else { return };
            self.send(c, q);
        }
    }
}

struct Reference;

fn qos_strategy() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        prop_oneof![
            Just(OverflowPolicy::EndSession),
            Just(OverflowPolicy::DropOldest),
            Just(OverflowPolicy::DropNewest)
        ]
        .prop_map(Model::new)
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let connect = (
            0..CLIENTS,
            any::<bool>(),
            prop::bool::weighted(0.3),
            prop_oneof![Just(0u32), Just(60), Just(300)],
            1u16..=3,
            any::<bool>(),
        )
            .prop_map(|(c, v5, clean, expiry, window, keep_alive)| Op::Connect {
                c,
                v5,
                clean,
                expiry,
                window,
                keep_alive,
            });
        let tick = prop_oneof![
            4 => Just(1u64),
            3 => Just(30),
            2 => Just(60),
            2 => Just(91),
            1 => Just(301),
            1 => Just(3601)
        ]
        .prop_map(|secs| Op::Tick { secs });
        let online: Vec<usize> = (0..CLIENTS).filter(|&c| state.online(c)).collect();
        if online.is_empty() {
            return prop_oneof![4 => connect, 1 => tick].boxed();
        }
        let c = prop::sample::select(online);
        prop_oneof![
            3 => connect,
            3 => (c.clone(), 0..FILTERS.len(), qos_strategy())
                .prop_map(|(c, filter, qos)| Op::Subscribe { c, filter, qos }),
            1 => (c.clone(), 0..FILTERS.len()).prop_map(|(c, filter)| Op::Unsubscribe { c, filter }),
            8 => (c.clone(), 0..TOPICS.len(), qos_strategy(), prop::bool::weighted(0.2))
                .prop_map(|(c, topic, qos, retain)| Op::Publish { c, topic, qos, retain }),
            1 => c.clone().prop_map(|c| Op::Republish { c }),
            2 => c.clone().prop_map(|c| Op::Release { c }),
            5 => (c.clone(), 1usize..4).prop_map(|(c, n)| Op::Ack { c, n }),
            1 => c.clone().prop_map(|c| Op::Disconnect { c }),
            1 => c.prop_map(|c| Op::Crash { c }),
            2 => tick,
        ]
        .boxed()
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        op.client().is_none_or(|c| state.online(c))
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        state.apply(op);
        state
    }
}

// ------------------------------------------------------------------ the system

/// What a client application has seen in its current session.
#[derive(Default)]
struct App {
    incarnation: u32,
    /// QoS 2 packet ids received and not yet completed (PUBCOMP sent).
    qos2_ids: BTreeSet<u16>,
    /// Messages delivered (not as retained copies).
    delivered: BTreeSet<u32>,
    qos2_count: BTreeMap<u32, u32>,
    last_seq: BTreeMap<(usize, usize, QoS), u32>,
    /// The session's subscriptions, as acknowledged on the wire.
    subs: BTreeSet<usize>,
    pending_sub: Option<usize>,
    pending_unsub: Option<usize>,
}

struct MsgInfo {
    publisher: usize,
    topic: usize,
    seq: u32,
    /// Per client: its session incarnation and subscriptions when this was published.
    subs_then: Vec<(u32, BTreeSet<usize>)>,
}

struct Harness {
    sim: Sim,
    /// Per client: its live connection's sim index.
    conn: Vec<Option<usize>>,
    /// Per sim client index: (client, connection serial).
    sim_of: Vec<(usize, u32)>,
    /// Per sim client index: not yet seen closed.
    live: Vec<bool>,
    serials: Vec<u32>,
    last_pid: Vec<u16>,
    todo: Vec<VecDeque<Todo>>,
    unreleased: Vec<VecDeque<(u16, u32)>>,
    app: Vec<App>,
    msgs: Vec<MsgInfo>,
    seq: BTreeMap<(usize, usize), u32>,
    seen: BTreeMap<(usize, u32), Vec<Obs>>,
    closed: BTreeSet<(usize, u32)>,
    model: Option<Model>,
}

static CASES: AtomicU64 = AtomicU64::new(0);
static OPS: AtomicU64 = AtomicU64::new(0);
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static DUPS: AtomicU64 = AtomicU64::new(0);
static RETAINED: AtomicU64 = AtomicU64::new(0);
static TAKEOVERS: AtomicU64 = AtomicU64::new(0);
static OVERFLOWS: AtomicU64 = AtomicU64::new(0);
static QOS2_FLOWS: AtomicU64 = AtomicU64::new(0);
static KEEP_ALIVE_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
static EXPIRIES: AtomicU64 = AtomicU64::new(0);

fn client_id(c: usize) -> String {
    format!("c{c}")
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("packet ids start at 1")
}

impl Harness {
    fn new(policy: OverflowPolicy) -> Self {
        Harness {
            sim: Sim::new(config(policy)),
            conn: vec![None; CLIENTS],
            sim_of: Vec::new(),
            live: Vec::new(),
            serials: vec![0; CLIENTS],
            last_pid: vec![0; CLIENTS],
            todo: vec![VecDeque::new(); CLIENTS],
            unreleased: vec![VecDeque::new(); CLIENTS],
            app: (0..CLIENTS).map(|_| App::default()).collect(),
            msgs: Vec::new(),
            seq: BTreeMap::new(),
            seen: BTreeMap::new(),
            closed: BTreeSet::new(),
            model: None,
        }
    }

    /// Sends a packet on `c`'s connection and reads everything that comes back.
    fn send(&mut self, c: usize, packet: Packet) {
        let i = self.conn[c].expect("online");
        self.sim.send(i, packet);
        self.pump();
    }

    /// Reads every connection's received packets, answering nothing (that is what
    /// `Op::Ack` is for) but keeping the client's books.
    fn pump(&mut self) {
        for i in 0..self.sim_of.len() {
            let (c, serial) = self.sim_of[i];
            for packet in self.sim.recv_all(i) {
                let obs = self.receive(c, packet);
                self.seen.entry((c, serial)).or_default().push(obs);
            }
            if self.sim.closed(i).is_some() && self.live[i] {
                self.live[i] = false;
                self.closed.insert((c, serial));
                if self.conn[c] == Some(i) {
                    self.conn[c] = None;
                    self.todo[c].clear();
                }
            }
        }
    }

    fn receive(&mut self, c: usize, packet: Packet) -> Obs {
        let app = &mut self.app[c];
        match packet {
            Packet::ConnAck(ack) => {
                assert_eq!(ack.reason_code, ReasonCode::Success, "CONNACK of c{c}");
                if !ack.session_present {
                    // A new session: the client forgets its session state too.
                    app.incarnation += 1;
                    app.qos2_ids.clear();
                    app.delivered.clear();
                    app.qos2_count.clear();
                    app.last_seq.clear();
                    app.subs.clear();
                    self.unreleased[c].clear();
                }
                Obs::ConnAck {
                    present: ack.session_present,
                }
            }
            Packet::SubAck(ack) => {
                let f = app.pending_sub.take().expect("a SUBSCRIBE was sent");
                let qos = match ack.reason_codes[..] {
                    [ReasonCode::Success] => QoS::AtMostOnce,
                    [ReasonCode::GrantedQoS1] => QoS::AtLeastOnce,
                    [ReasonCode::GrantedQoS2] => QoS::ExactlyOnce,
                    ref other => panic!("SUBACK of c{c} refused: {other:?}"),
                };
                app.subs.insert(f);
                Obs::SubAck(qos)
            }
            Packet::UnsubAck(_) => {
                let f = app.pending_unsub.take().expect("an UNSUBSCRIBE was sent");
                app.subs.remove(&f);
                Obs::UnsubAck
            }
            Packet::Publish(p) => self.receive_publish(c, p),
            Packet::PubRel(a) => {
                self.todo[c].push_back(Todo::PubComp(a.packet_id.get()));
                Obs::PubRel(a.packet_id.get())
            }
            Packet::PubAck(a) => Obs::PubAck(a.packet_id.get()),
            Packet::PubRec(a) => Obs::PubRec(a.packet_id.get()),
            Packet::PubComp(a) => {
                QOS2_FLOWS.fetch_add(1, Relaxed);
                Obs::PubComp(a.packet_id.get())
            }
            Packet::Disconnect(d) => Obs::Disconnect(d.reason_code),
            other => panic!("c{c} received an unexpected {other:?}"),
        }
    }

    fn receive_publish(&mut self, c: usize, p: Publish) -> Obs {
        let msg = u32::from_be_bytes(p.payload[..].try_into().expect("4-byte payload"));
        let info = &self.msgs[msg as usize];
        assert_eq!(
            p.topic.as_str(),
            TOPICS[info.topic],
            "topic of message {msg}"
        );
        DELIVERED.fetch_add(1, Relaxed);
        if p.dup {
            DUPS.fetch_add(1, Relaxed);
        }
        if p.retain {
            RETAINED.fetch_add(1, Relaxed);
        }
        let app = &mut self.app[c];
        let id = p.packet_id.map(|id| id.get());
        match (p.qos, id) {
            (QoS::AtMostOnce, None) => {}
            (QoS::AtLeastOnce, Some(id)) => self.todo[c].push_back(Todo::PubAck(id)),
            (QoS::ExactlyOnce, Some(id)) => self.todo[c].push_back(Todo::PubRec(id)),
            _ => panic!("c{c}: QoS and packet id disagree in {p:?}"),
        }
        // The application sees a QoS 2 message once per packet id (method B of
        // [MQTT-4.3.3]): a resend before PUBREL is the same message.
        let fresh = match (p.qos, id) {
            (QoS::ExactlyOnce, Some(id)) => app.qos2_ids.insert(id),
            _ => true,
        };
        if fresh && !p.retain {
            let (inc, subs) = &info.subs_then[c];
            assert!(
                *inc == app.incarnation
                    && subs
                        .iter()
                        .any(|f| filter_matches(FILTERS[*f], TOPICS[info.topic])),
                "c{c} got message {msg} on {} without a matching subscription when it was \
                 published (session then {inc}, now {}; filters then {:?})",
                TOPICS[info.topic],
                app.incarnation,
                subs.iter().map(|f| FILTERS[*f]).collect::<Vec<_>>(),
            );
            if p.qos == QoS::ExactlyOnce {
                let n = app.qos2_count.entry(msg).or_default();
                *n += 1;
                assert_eq!(*n, 1, "c{c} got QoS 2 message {msg} twice");
            }
            if app.delivered.insert(msg) {
                let key = (info.publisher, info.topic, p.qos);
                if let Some(&last) = app.last_seq.get(&key) {
                    assert!(
                        info.seq > last,
                        "c{c} got message {msg} (#{} of c{} on {} at QoS {:?}) after #{last}",
                        info.seq,
                        info.publisher,
                        TOPICS[info.topic],
                        p.qos,
                    );
                }
                app.last_seq.insert(key, info.seq);
            }
        }
        Obs::Publish {
            msg,
            pid: id,
            qos: p.qos,
            dup: p.dup,
            retain: p.retain,
        }
    }

    fn run(&mut self, op: &Op) {
        self.seen.clear();
        self.closed.clear();
        if let Some(c) = op.client() {
            if self.conn[c].is_none() {
                return;
            }
        }
        match *op {
            Op::Connect {
                c,
                v5,
                clean,
                expiry,
                window,
                keep_alive,
            } => {
                let version = if v5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V3_1_1
                };
                let i = self.sim.accept(version);
                self.serials[c] += 1;
                self.sim_of.push((c, self.serials[c]));
                self.live.push(true);
                let mut properties = ConnectProperties::default();
                if v5 {
                    properties.session_expiry_interval = (expiry > 0).then_some(expiry);
                    properties.receive_maximum = core::num::NonZeroU16::new(window);
                }
                let connect = Connect {
                    protocol: version,
                    clean_start: clean,
                    keep_alive: if keep_alive { KEEP_ALIVE } else { 0 },
                    client_id: MqttString::copy_from_str(&client_id(c)).expect("client id"),
                    will: None,
                    username: None,
                    password: None,
                    properties,
                };
                self.sim.send(i, Packet::Connect(connect));
                self.todo[c].clear();
                self.conn[c] = Some(i);
                self.pump();
            }
            Op::Subscribe { c, filter, qos } => {
                self.app[c].pending_sub = Some(filter);
                let id = self.next_pid(c);
                self.send(
                    c,
                    Packet::Subscribe(mqtt_proto::Subscribe {
                        packet_id: pid(id),
                        filters: vec![(
                            TopicFilter::copy_from_str(FILTERS[filter]).expect("filter"),
                            SubscriptionOptions::qos(qos),
                        )],
                        properties: Default::default(),
                    }),
                );
            }
            Op::Unsubscribe { c, filter } => {
                self.app[c].pending_unsub = Some(filter);
                let id = self.next_pid(c);
                self.send(
                    c,
                    Packet::Unsubscribe(mqtt_proto::Unsubscribe {
                        packet_id: pid(id),
                        filters: vec![TopicFilter::copy_from_str(FILTERS[filter]).expect("filter")],
                        properties: Default::default(),
                    }),
                );
            }
            Op::Publish {
                c,
                topic,
                qos,
                retain,
            } => {
                let msg = self.msgs.len() as u32;
                let seq = self.seq.entry((c, topic)).or_default();
                *seq += 1;
                let subs_then = self
                    .app
                    .iter()
                    .map(|a| (a.incarnation, a.subs.clone()))
                    .collect();
                self.msgs.push(MsgInfo {
                    publisher: c,
                    topic,
                    seq: *seq,
                    subs_then,
                });
                let id = (qos != QoS::AtMostOnce).then(|| self.next_pid(c));
                let publish = Publish {
                    dup: false,
                    qos,
                    retain,
                    topic: TopicName::from_static(TOPICS[topic]).expect("topic"),
                    packet_id: id.map(pid),
                    properties: PublishProperties::default(),
                    payload: Bytes::copy_from_slice(&msg.to_be_bytes()),
                };
                if let (QoS::ExactlyOnce, Some(id)) = (qos, id) {
                    self.unreleased[c].push_back((id, msg));
                }
                self.send(c, Packet::Publish(publish));
            }
            Op::Republish { c } => {
                if let Some(&(id, msg)) = self.unreleased[c].front() {
                    let info = &self.msgs[msg as usize];
                    let publish = Publish {
                        dup: true,
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        topic: TopicName::from_static(TOPICS[info.topic]).expect("topic"),
                        packet_id: Some(pid(id)),
                        properties: PublishProperties::default(),
                        payload: Bytes::copy_from_slice(&msg.to_be_bytes()),
                    };
                    self.send(c, Packet::Publish(publish));
                }
            }
            Op::Release { c } => {
                if let Some((id, _)) = self.unreleased[c].pop_front() {
                    self.send(c, Packet::PubRel(PubAck::new(pid(id))));
                }
            }
            Op::Ack { c, n } => {
                for _ in 0..n {
                    let Some(todo) = self.todo[c].pop_front() else {
                        break;
                    };
                    let packet = match todo {
                        Todo::PubAck(id) => Packet::PubAck(PubAck::new(pid(id))),
                        Todo::PubRec(id) => Packet::PubRec(PubAck::new(pid(id))),
                        Todo::PubComp(id) => {
                            self.app[c].qos2_ids.remove(&id);
                            QOS2_FLOWS.fetch_add(1, Relaxed);
                            Packet::PubComp(PubAck::new(pid(id)))
                        }
                    };
                    self.send(c, packet);
                }
            }
            Op::Disconnect { c } => {
                self.send(c, Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            }
            Op::Crash { c } => {
                let i = self.conn[c].expect("online");
                self.sim.kill(i);
                self.pump();
            }
            Op::Tick { secs } => {
                self.sim.advance(Duration::from_secs(secs));
                self.pump();
            }
        }
    }

    /// Client-chosen packet ids, never reused within a test case, so that an id
    /// still unreleased in the session never comes back.
    fn next_pid(&mut self, c: usize) -> u16 {
        self.last_pid[c] += 1;
        self.last_pid[c]
    }

    fn compare(&self, op: &Op, model: &Model) {
        let keys: BTreeSet<_> = self.seen.keys().chain(model.expect.keys()).collect();
        for key in keys {
            let got = self.seen.get(key).map_or(&[][..], |v| &v[..]);
            let want = model.expect.get(key).map_or(&[][..], |v| &v[..]);
            assert_eq!(
                got, want,
                "after {op:?}: connection {} of c{} received (left) not what the model \
                 expects (right)",
                key.1, key.0
            );
        }
        assert_eq!(
            self.closed, model.closed,
            "after {op:?}: connections closed (client, serial)"
        );
        for c in 0..CLIENTS {
            let todo: Vec<_> = self.todo[c].iter().collect();
            let want: Vec<_> = model.clients[c].todo.iter().collect();
            assert_eq!(todo, want, "after {op:?}: acks c{c} owes");
            let unreleased: Vec<_> = self.unreleased[c].iter().collect();
            let want: Vec<_> = model.clients[c]
                .session
                .as_ref()
                .map(|s| s.unreleased.iter().collect())
                .unwrap_or_default();
            if self.conn[c].is_some() {
                assert_eq!(unreleased, want, "after {op:?}: unreleased QoS 2 of c{c}");
            }
        }
    }

    fn check_state(&self, model: &Model) {
        let broker = &self.sim.broker;
        if let Err(e) = broker.check_invariants() {
            panic!("broker invariant: {e}");
        }
        let sessions = model.clients.iter().filter(|c| c.session.is_some()).count();
        assert_eq!(broker.session_count(), sessions, "sessions");
        let conns = model.clients.iter().filter(|c| c.conn.is_some()).count();
        assert_eq!(broker.connection_count(), conns, "connections");
        for (c, cl) in model.clients.iter().enumerate() {
            let queued = broker.queued_messages(&client_id(c));
            let want = cl.session.as_ref().map(|s| s.queue.len());
            assert_eq!(queued, want, "queued messages of c{c}");
            let bound = if cl.conn.is_some() {
                ONLINE_QUEUE
            } else {
                ONLINE_QUEUE.max(OFFLINE_QUEUE)
            };
            assert!(queued.unwrap_or(0) <= bound, "queue of c{c} over its bound");
        }
        let stats = broker.stats();
        let drops = stats.dropped_online_queue_full
            + stats.dropped_offline_queue_full
            + stats.sessions_ended_by_overflow;
        assert_eq!(drops, model.overflows, "drops counted in Stats");
    }
}

impl StateMachineTest for Harness {
    type SystemUnderTest = Harness;
    type Reference = Reference;

    fn init_test(model: &Model) -> Harness {
        CASES.fetch_add(1, Relaxed);
        Harness::new(model.policy)
    }

    fn apply(mut sut: Harness, model: &Model, op: Op) -> Harness {
        OPS.fetch_add(1, Relaxed);
        sut.run(&op);
        sut.compare(&op, model);
        sut.model = Some(model.clone());
        sut
    }

    fn check_invariants(sut: &Harness, model: &Model) {
        sut.check_state(model);
    }

    /// Every client takes its session back and answers everything; then every
    /// message owed to a session has been delivered.
    fn teardown(mut sut: Harness) {
        let Some(mut model) = sut.model.take() else {
            return;
        };
        let stats = sut.sim.broker.stats();
        TAKEOVERS.fetch_add(stats.takeovers, Relaxed);
        OVERFLOWS.fetch_add(model.overflows, Relaxed);
        KEEP_ALIVE_TIMEOUTS.fetch_add(model.keep_alive_timeouts, Relaxed);
        EXPIRIES.fetch_add(model.expiries, Relaxed);
        let step = |sut: Harness, model: Model, op: Op| {
            let model = Reference::apply(model, &op);
            let sut = Harness::apply(sut, &model, op);
            Harness::check_invariants(&sut, &model);
            (sut, model)
        };
        for c in 0..CLIENTS {
            if model.clients[c].session.is_some() && !model.online(c) {
                let op = Op::Connect {
                    c,
                    v5: true,
                    clean: false,
                    expiry: 300,
                    window: 3,
                    keep_alive: false,
                };
                (sut, model) = step(sut, model, op);
            }
        }
        for _ in 0..1000 {
            let busy: Vec<usize> = (0..CLIENTS)
                .filter(|&c| !model.clients[c].todo.is_empty())
                .collect();
            if busy.is_empty() {
                break;
            }
            for c in busy {
                (sut, model) = step(sut, model, Op::Ack { c, n: 100 });
            }
        }
        for (c, cl) in model.clients.iter().enumerate() {
            let Some(s) = &cl.session else { continue };
            assert!(
                s.queue.is_empty() && s.inflight.is_empty(),
                "c{c} settled with messages left"
            );
            let missing: Vec<_> = s.owed.difference(&sut.app[c].delivered).collect();
            assert!(
                missing.is_empty(),
                "c{c} never got QoS 1/2 messages {missing:?} owed to its session"
            );
        }
    }
}

#[test]
fn broker_agrees_with_the_reference_model() {
    let config = ProptestConfig {
        cases: std::env::var("MODEL_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
        max_shrink_iters: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config.clone());
    // Shrinking replays failing cases many times: keep their panics quiet and report
    // the minimal one below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = runner.run(
        &Reference::sequential_strategy(1..100),
        |(initial, ops, seen)| {
            Harness::test_sequential(config.clone(), initial, ops, seen);
            Ok(())
        },
    );
    std::panic::set_hook(hook);
    eprintln!(
        "model: {} cases, {} ops; {} PUBLISH delivered ({} DUP resends, {} retained), \
         {} takeovers, {} overflows, {} QoS 2 flows, {} keep-alive timeouts, \
         {} session expiries",
        CASES.load(Relaxed),
        OPS.load(Relaxed),
        DELIVERED.load(Relaxed),
        DUPS.load(Relaxed),
        RETAINED.load(Relaxed),
        TAKEOVERS.load(Relaxed),
        OVERFLOWS.load(Relaxed),
        QOS2_FLOWS.load(Relaxed),
        KEEP_ALIVE_TIMEOUTS.load(Relaxed),
        EXPIRIES.load(Relaxed),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
