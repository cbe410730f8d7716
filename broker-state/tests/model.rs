//! Model-based test of the broker core (proptest-state-machine).
//!
//! Random sequences of operations by three clients (`c0`, `c1`, `c2`, so sessions
//! are taken over) run against the real broker through the simulation harness
//! (`tests/sim`: every packet is encoded, decoded and re-encoded on the wire) and
//! against [`Model`], a reference model of sessions, subscriptions (shared ones too),
//! retained messages, in-flight windows, session queues and message expiry.
//! Operations: CONNECT (3.1.1 or 5.0, clean or persistent, session expiry 0/60/300 s,
//! Receive Maximum 1-3, Topic Alias Maximum 0-3, keep-alive on or off), SUBSCRIBE /
//! UNSUBSCRIBE on filters with `+` and `#` and on the shared subscriptions
//! `$share/g/a`, `$share/g/#` and `$share/h/a/+`, PUBLISH at QoS 0/1/2 with or
//! without RETAIN on topics `a`, `a/b`, `b`, with or without a Message Expiry
//! Interval (0/1/5/30/120 s) and a Topic Alias (set with the topic, used with an
//! empty topic, or invalid: 0, above the broker's maximum, never set), resending an
//! unreleased QoS 2 PUBLISH (DUP), PUBREL (a client withholds it until this
//! operation, so its QoS 2 publications stay unreleased), acknowledging (or not) what
//! was received, DISCONNECT, an abrupt close, and clock ticks (keep-alive, session
//! and message expiry). Small limits make the edges common: window 2 for 3.1.1,
//! online queue 3, offline queue 2, each offline overflow policy, and the broker's
//! Receive Maximum and Topic Alias Maximum of 2.
//!
//! Some choices are the broker's: the member of a shared subscription that gets a
//! message (any online member, else any member; the broker draws from its seeded
//! rng), the order of the copies one session gets of one message (through a normal
//! and a shared subscription), and the order of timers due at the same instant. The
//! model asks a [`Chooser`] at each such point, and the harness runs it once per
//! combination of answers and keeps the outcomes, "worlds", that agree with what
//! the broker did. A choice that does not show at once (a message queued for one of
//! two offline members) keeps several worlds until one is contradicted; a test fails
//! when none is left.
//!
//! Checked after every operation, against some world:
//!
//! * every packet each connection receives (PUBLISH with its message, resolved topic,
//!   packet id, QoS, DUP, RETAIN and Message Expiry Interval; PUBREL; CONNACK's
//!   Session Present; acks; DISCONNECT reason) equals the model's prediction, in
//!   order, and the same connections are closed. So a shared subscription's message
//!   reaches exactly one member that held it when the message was published (online
//!   members first; none that unsubscribed or whose session ended), a member with a
//!   matching normal subscription also gets its normal copy (5.0 section 4.8.2), and
//!   the QoS 1 messages in flight or queued to a member whose session ends go to
//!   another member, QoS 2 ones do not [MQTT-4.8.2-5]; a message that expires while
//!   queued (offline or behind a full window), retained, or in flight until a
//!   reconnect is never sent, and one sent later carries the interval less the time
//!   it waited [MQTT-3.3.2-5] [MQTT-3.3.2-6]; an inbound Topic Alias 0 or one never
//!   set on the connection ends it with DISCONNECT 0x82, one above the maximum with
//!   0x94 [MQTT-3.3.2-8] [MQTT-3.3.2-9]; a third incoming QoS 2 PUBLISH unreleased
//!   on the same connection (a DUP resend of an earlier connection's counts from
//!   its resend on) ends a 5.0 connection with 0x93 [MQTT-3.3.4-7], the send quota
//!   starting afresh with each connection (5.0 section 4.9), while a 3.1.1 client,
//!   which has no Receive Maximum, may leave any number unreleased; a retained
//!   message is deleted at its expiry (`retained_count` and
//!   `Stats::retained_expired` follow) and one published with expiry 0 clears the
//!   topic [MQTT-3.3.2-5];
//! * outbound topic aliases, resolved as a client must (a topic with an alias sets
//!   the alias, an empty topic uses it, on this connection only [MQTT-3.3.2-7]): no
//!   alias above the client's Topic Alias Maximum [MQTT-3.3.2-11], none used before
//!   it was set on the connection;
//! * as a client application sees it: a QoS 2 message is delivered once per session
//!   and shared subscription (duplicate PUBLISHes are recognised by packet id, as a
//!   client must), first deliveries keep publication order per publisher, topic and
//!   QoS (not promised through a shared subscription, whose redeliveries come late),
//!   and a non-retained message only reaches a session that held a matching
//!   subscription when it was published, or a matching shared one at some time since
//!   (nothing after UNSUBSCRIBE);
//! * each session queue equals the model's and stays within its bound; session,
//!   connection and retained message counts match; the broker counts in `Stats`
//!   every overflow drop, expired message, expired retained message and shared
//!   redelivery the model predicts; the broker's internal
//!   invariants hold (`Broker::check_invariants`).
//!
//! At the end of each case every client reconnects to its session and acknowledges
//! everything until nothing is left, and every QoS 1/2 message owed to a session
//! (routed to it and not dropped by an overflow policy or expiry) must have been
//! delivered: QoS 1 at least once, QoS 2 exactly once.
//!
//! The test prints one line with what it exercised (`cargo test -p broker-state
//! --test model -- --nocapture`), e.g.
//!
//! ```text
//! model: 1000 cases, 51327 ops; 8225 PUBLISH delivered (715 DUP resends, 1833
//! retained, 2267 through shared subscriptions, 1092 by topic alias alone, 64 with a
//! reduced expiry interval), 19 shared redeliveries, 509 expired, 2565 takeovers,
//! 505 overflows, 1616 QoS 2 flows, DISCONNECT 0x93 x372, 0x94 x215, 0x82 (alias)
//! x346, 720 keep-alive timeouts, 763 session expiries; at most 36 worlds at once
//! ```
//!
//! 1000 cases of up to 100 operations take about 6 s of CPU in a debug build; set
//! `MODEL_CASES` for a longer run (20,000 cases: about 2 minutes, at most 108
//! worlds). "cases" counts shrinking replays too.
//!
//! Shrinking: proptest-state-machine 0.3 can end shrinking on a case that passes
//! when a shrunk operation is rejected by `preconditions` or cannot be complicated
//! back, so there are no preconditions (an operation of an offline client is a
//! no-op on both sides) and the minimal case is replayed at the end, so that the
//! failure shown is its own. Publications are drawn per client rather than with
//! `prop_flat_map`, whose shrinking does not return to the last failing case.
//!
//! # A broker bug it found (fixed)
//!
//! A QoS 1 message redelivered to another member of a shared subscription went out
//! at the QoS of its first delivery instead of the smaller of the published QoS and
//! the new member's granted QoS [MQTT-3.8.4-8]. Shrunk to: `Connect c2 (3.1.1,
//! persistent)`, `Subscribe c2 $share/g/a QoS 1`, `Publish c2 a QoS 2` (c2 gets it
//! at QoS 1 and does not acknowledge it), `Connect c0 (3.1.1, persistent)`,
//! `Subscribe c0 $share/g/a QoS 2`, `Connect c2 clean` (its session ends): c0
//! `received [Publish { msg: 0, pid: Some(1), qos: AtLeastOnce, .. }]`, the model
//! expects `qos: ExactlyOnce`. Fixed in `Broker::redeliver_shared`, which now keeps
//! the published QoS with each shared-subscription delivery.
//!
//! # It catches bugs (demonstrated, then reverted)
//!
//! Each mutation below was applied to `src/` in a copy of the workspace and the
//! test run there; every one failed within the first few hundred cases (a second or
//! two) and shrank to the case shown. Mutations 1-5 predate the shared
//! subscriptions, aliases, expiry and flow control, and the extended test still
//! catches each of them.
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
//! 6. Message Expiry Interval not reduced (`refresh_expiry` kept the published
//!    interval; the deadline still applied): `Connect c2 (5.0)`, `Publish c2 a QoS 0
//!    retained, expiry 5 s`, `Tick 1 s`, `Connect c0 (5.0)`, `Subscribe c0 a QoS 0`:
//!    `received [SubAck(AtMostOnce), Publish { msg: 0, retain: true, expiry: Some(5),
//!    .. }]`, the model expects `expiry: Some(4)` [MQTT-3.3.2-6].
//! 7. A shared subscription's message to two members (the router's `push_all` also
//!    gave it to the member after the picked one): `Connect c1 (3.1.1)`, `Subscribe
//!    c1 $share/g/a QoS 0`, `Connect c0 (3.1.1)`, `Subscribe c0 $share/g/a QoS 0`,
//!    `Publish c0 a QoS 0`: c1 `received [Publish { msg: 0, .. }]`, the model in the
//!    world where c0 got it expects nothing, and no world agrees (`2 tried`).
//! 8. An outbound alias above the client's maximum (`OutboundAliases::apply` with
//!    `>` for `>=`): `Connect c2 (3.1.1)`, `Publish c2 a retained`, `Publish c2 a/b
//!    retained`, `Connect c2 (5.0, Topic Alias Maximum 1)`, `Subscribe c2 #`: `c2 got
//!    Topic Alias 2, above the maximum 1 its CONNECT stated [MQTT-3.3.2-11]`.
//! 9. No 0x93 (the Receive Maximum check in `on_publish` with `>` for `>=`):
//!    `Connect c0 (5.0, persistent)` and three `Publish c0 a QoS 2`, none
//!    released: `received [PubRec(3)]`, the model expects
//!    `[Disconnect(ReceiveMaximumExceeded)]`. (Written when 3.1.1 clients were
//!    held to the Receive Maximum too, with a 3.1.1 client; they no longer are.)
//!
//! The mutations were reverted. Mutation 3 puts back a real bug, already fixed in
//! `Broker::on_connect` when this test was written.
#![allow(clippy::too_many_lines)]

mod sim;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use broker_state::{Config, OverflowPolicy, QueueLimits};
use core::num::NonZeroU16;
use mqtt_proto::bytes::{Bytes, BytesMut};
use mqtt_proto::{
    Connect, ConnectProperties, Disconnect, MqttString, Packet, PacketId, ProtocolVersion, PubAck,
    Publish, PublishProperties, QoS, ReasonCode, SubscriptionOptions, TopicFilter, TopicName,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestError, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use sim::Sim;

const TOPICS: [&str; 3] = ["a", "a/b", "b"];
/// The last three are shared subscriptions: three groups, two of them named `g`
/// (a group is its name and its filter together, 5.0 section 4.8.2).
const FILTERS: [&str; 11] = [
    "a",
    "a/b",
    "b",
    "a/+",
    "+",
    "#",
    "a/#",
    "+/b",
    "$share/g/a",
    "$share/g/#",
    "$share/h/a/+",
];
/// Where the shared subscriptions start in `FILTERS`.
const SHARED_FROM: usize = 8;
const CLIENTS: usize = 3;
const ONLINE_QUEUE: usize = 3;
const OFFLINE_QUEUE: usize = 2;
const WINDOW_V3: u16 = 2;
/// The broker's Receive Maximum: incoming QoS 2 PUBLISHes unreleased on one 5.0
/// connection.
const RECEIVE_MAXIMUM: u16 = 2;
/// The broker's Topic Alias Maximum for aliases clients set.
const TOPIC_ALIAS_MAXIMUM: u16 = 2;
/// Session expiry of a 3.1.1 client with Clean Session 0.
const DEFAULT_EXPIRY: u32 = 300;
const MAX_EXPIRY: u32 = 3600;
const KEEP_ALIVE: u16 = 60;
/// 1.5 x Keep Alive [MQTT-3.1.2-24].
const KEEP_ALIVE_TIMEOUT: u64 = 90;
/// Worlds (ways the broker may have chosen) the model follows at once before it
/// gives up; a bound on the test, never reached in practice.
const MAX_WORLDS: usize = 512;

fn config(policy: OverflowPolicy) -> Config {
    Config {
        max_inflight_v3: WINDOW_V3,
        default_session_expiry: DEFAULT_EXPIRY,
        max_session_expiry: MAX_EXPIRY,
        receive_maximum: RECEIVE_MAXIMUM,
        topic_alias_maximum: TOPIC_ALIAS_MAXIMUM,
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

fn is_shared(filter: usize) -> bool {
    filter >= SHARED_FROM
}

/// The MQTT matching rules for the small alphabet above (no `$` topics); a shared
/// subscription matches with the filter after `$share/{group}/`.
fn filter_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    };
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

/// A message with an expiry deadline (model seconds) is dead at the deadline
/// [MQTT-3.3.2-5].
fn expired(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

// ------------------------------------------------------------------ operations

/// How a PUBLISH uses a Topic Alias towards the broker (5.0 clients only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AliasUse {
    No,
    /// Topic and alias: sets the alias on this connection.
    Set(u16),
    /// Empty topic and alias: uses it.
    Use(u16),
}

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
        /// Topic Alias Maximum (5.0 only): aliases the broker may set.
        alias_max: u16,
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
        /// Message Expiry Interval (5.0 only).
        expiry: Option<u32>,
        /// Topic Alias (5.0 only); with `Use`, `topic` is not sent.
        alias: AliasUse,
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
/// message number (its payload), its topic (resolved through the connection's
/// aliases), the packet id the broker chose and the Message Expiry Interval.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Obs {
    ConnAck {
        present: bool,
    },
    SubAck(QoS),
    UnsubAck,
    Publish {
        msg: u32,
        topic: usize,
        pid: Option<u16>,
        qos: QoS,
        dup: bool,
        retain: bool,
        expiry: Option<u32>,
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

/// One copy of a message on its way to one session.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    msg: u32,
    topic: usize,
    qos: QoS,
    /// The QoS it was published with.
    published: QoS,
    retain: bool,
    /// Model seconds.
    expires_at: Option<u64>,
    /// The shared subscription (filter index) it came through.
    shared: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Flight {
    pid: u16,
    m: Msg,
    released: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SessionM {
    expiry: u32,
    offline_since: Option<u64>,
    subs: BTreeMap<usize, QoS>,
    inflight: VecDeque<Flight>,
    queue: VecDeque<Msg>,
    last_pid: u16,
    /// QoS 2 messages this client published and has not released, with their ids.
    unreleased: VecDeque<(u16, u32)>,
    /// The ids of `unreleased` received on the current connection: only these count
    /// against the Receive Maximum, the send quota starting afresh with each
    /// connection (5.0 section 4.9).
    unreleased_here: BTreeSet<u16>,
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
            unreleased_here: BTreeSet::new(),
            owed: BTreeSet::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ConnM {
    serial: u32,
    v5: bool,
    window: usize,
    keep_alive: bool,
    last_rx: u64,
    /// Topic aliases this client set on this connection [MQTT-3.3.2-7].
    aliases: BTreeMap<u16, usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ClientM {
    conn: Option<ConnM>,
    serials: u32,
    /// Client-chosen packet ids of its own QoS 1/2 publishes.
    last_pid: u16,
    todo: VecDeque<Todo>,
    session: Option<SessionM>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct RetainedM {
    msg: u32,
    qos: QoS,
    expires_at: Option<u64>,
}

/// Where the broker may choose (a shared-subscription member, the order of one
/// message's copies, the order of timers due at the same instant), the model asks
/// this. The harness runs the model once per combination of answers (`script`) and
/// keeps the outcomes that agree with what the broker did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Chooser {
    script: Vec<usize>,
    /// (answer, number of options) of every choice made so far.
    taken: Vec<(usize, usize)>,
}

impl Chooser {
    fn choose(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let v = self.script.get(self.taken.len()).copied().unwrap_or(0);
        self.taken.push((v, n));
        v
    }
}

#[derive(Clone, PartialEq, Eq)]
struct Model {
    policy: OverflowPolicy,
    now: u64,
    clients: Vec<ClientM>,
    /// Topic index -> retained message; topic indexes sort like the topics' bytes.
    retained: BTreeMap<usize, RetainedM>,
    /// Messages published so far (the next message's number).
    msgs: u32,
    overflows: u64,
    expiries: u64,
    keep_alive_timeouts: u64,
    /// Copies dropped because their Message Expiry Interval ran out.
    expired: u64,
    /// Retained messages deleted at their expiry.
    retained_expired: u64,
    /// QoS 1 messages of an ended session given to another group member.
    redeliveries: u64,
    /// PUBLISHes sent through a shared subscription (first sends).
    shared_sent: u64,
    /// Connections ended with 0x93, 0x94, and 0x82 (topic alias) by the broker.
    receive_maximum_exceeded: u64,
    alias_invalid: u64,
    alias_protocol_errors: u64,
    /// What the last operation sent, by (client, connection serial).
    expect: BTreeMap<(usize, u32), Vec<Obs>>,
    /// Connections the last operation closed.
    closed: BTreeSet<(usize, u32)>,
    chooser: Chooser,
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
            expired: 0,
            retained_expired: 0,
            redeliveries: 0,
            shared_sent: 0,
            receive_maximum_exceeded: 0,
            alias_invalid: 0,
            alias_protocol_errors: 0,
            expect: BTreeMap::new(),
            closed: BTreeSet::new(),
            chooser: Chooser::default(),
        }
    }

    /// Every state the broker may be in after `op`, one per combination of its
    /// choices (duplicates included).
    fn successors(&self, op: &Op) -> Vec<Model> {
        let mut out = Vec::new();
        let mut scripts = vec![Vec::new()];
        while let Some(script) = scripts.pop() {
            let mut m = self.clone();
            m.chooser = Chooser {
                script: script.clone(),
                taken: Vec::new(),
            };
            m.apply(op);
            let taken = core::mem::take(&mut m.chooser).taken;
            for i in script.len()..taken.len() {
                for alt in 1..taken[i].1 {
                    let mut s: Vec<usize> = taken[..i].iter().map(|t| t.0).collect();
                    s.push(alt);
                    scripts.push(s);
                }
            }
            out.push(m);
            assert!(
                out.len() <= 100_000,
                "after {op:?}: the model branches too much"
            );
        }
        out
    }

    fn online(&self, c: usize) -> bool {
        self.clients[c].conn.is_some()
    }

    fn session(&mut self, c: usize) -> &mut SessionM {
        self.clients[c].session.as_mut().expect("session")
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
                alias_max: _,
            } => self.connect(c, v5, clean, expiry, window, keep_alive),
            Op::Subscribe { c, filter, qos } => {
                self.touch(c);
                self.clients[c].last_pid += 1;
                self.session(c).subs.insert(filter, qos);
                self.obs(c, Obs::SubAck(qos));
                // [MQTT-3.8.4-4] retained messages after the SUBACK, by topic; none
                // for a shared subscription (5.0 section 4.8.2).
                if !is_shared(filter) {
                    let retained: Vec<_> = self
                        .retained
                        .iter()
                        .filter(|(t, _)| filter_matches(FILTERS[filter], TOPICS[**t]))
                        .map(|(&t, r)| (t, r.clone()))
                        .collect();
                    for (topic, r) in retained {
                        let m = Msg {
                            msg: r.msg,
                            topic,
                            qos: r.qos.min(qos),
                            published: r.qos,
                            retain: true,
                            expires_at: r.expires_at,
                            shared: None,
                        };
                        self.deliver(c, m);
                    }
                }
            }
            Op::Unsubscribe { c, filter } => {
                self.touch(c);
                self.clients[c].last_pid += 1;
                self.session(c).subs.remove(&filter);
                self.obs(c, Obs::UnsubAck);
            }
            Op::Publish {
                c,
                topic,
                qos,
                retain,
                expiry,
                alias,
            } => self.publish(c, topic, qos, retain, expiry, alias),
            Op::Republish { c } => {
                // A duplicate is acknowledged again and not routed again.
                if let Some(&(pid, _)) = self.session(c).unreleased.front() {
                    self.touch(c);
                    self.obs(c, Obs::PubRec(pid));
                    // Received on this connection: it uses this connection's quota.
                    self.session(c).unreleased_here.insert(pid);
                }
            }
            Op::Release { c } => {
                if let Some((pid, _)) = self.session(c).unreleased.pop_front() {
                    self.touch(c);
                    self.obs(c, Obs::PubComp(pid));
                    self.session(c).unreleased_here.remove(&pid);
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

    fn publish(
        &mut self,
        c: usize,
        topic: usize,
        qos: QoS,
        retain: bool,
        expiry: Option<u32>,
        alias: AliasUse,
    ) {
        self.touch(c);
        let msg = self.msgs;
        self.msgs += 1;
        let pid = (qos != QoS::AtMostOnce).then(|| {
            let cl = &mut self.clients[c];
            cl.last_pid += 1;
            cl.last_pid
        });
        let conn = self.clients[c].conn.as_mut().expect("online");
        let v5 = conn.v5;
        // 3.1.1 has no properties.
        let (expiry, alias) = if conn.v5 {
            (expiry, alias)
        } else {
            (None, AliasUse::No)
        };
        let topic = match alias {
            AliasUse::No => Ok(topic),
            // Alias 0 does not decode [MQTT-3.3.2-8]: a Protocol Error.
            AliasUse::Set(0) | AliasUse::Use(0) => Err(ReasonCode::ProtocolError),
            // Above the maximum in CONNACK [MQTT-3.3.2-9]: 0x94.
            AliasUse::Set(n) | AliasUse::Use(n) if n > TOPIC_ALIAS_MAXIMUM => {
                Err(ReasonCode::TopicAliasInvalid)
            }
            AliasUse::Set(n) => {
                conn.aliases.insert(n, topic);
                Ok(topic)
            }
            // An alias never set on this connection: a Protocol Error.
            AliasUse::Use(n) => conn
                .aliases
                .get(&n)
                .copied()
                .ok_or(ReasonCode::ProtocolError),
        };
        let topic = match topic {
            Ok(t) => t,
            Err(code) => return self.violation(c, code),
        };
        // More QoS 2 PUBLISHes unreleased on this connection than the Receive
        // Maximum in CONNACK [MQTT-3.3.4-7] (5.0 section 3.2.2.3.3): 0x93. 3.1.1 has
        // no Receive Maximum.
        if v5
            && qos == QoS::ExactlyOnce
            && self.session(c).unreleased_here.len() >= usize::from(RECEIVE_MAXIMUM)
        {
            return self.violation(c, ReasonCode::ReceiveMaximumExceeded);
        }
        let expires_at = expiry.map(|e| self.now + u64::from(e));
        if retain {
            if expired(expires_at, self.now) {
                // Expiry 0: it replaces the retained message and is gone at once
                // [MQTT-3.3.2-5].
                self.retained.remove(&topic);
            } else {
                self.retained.insert(
                    topic,
                    RetainedM {
                        msg,
                        qos,
                        expires_at,
                    },
                );
            }
        }
        self.route(&Msg {
            msg,
            topic,
            qos,
            published: qos,
            retain: false,
            expires_at,
            shared: None,
        });
        match (qos, pid) {
            (QoS::AtLeastOnce, Some(pid)) => self.obs(c, Obs::PubAck(pid)),
            (QoS::ExactlyOnce, Some(pid)) => {
                self.obs(c, Obs::PubRec(pid));
                let s = self.session(c);
                s.unreleased.push_back((pid, msg));
                s.unreleased_here.insert(pid);
            }
            _ => {}
        }
    }

    /// The members of shared subscription `filter`.
    fn members(&self, filter: usize) -> Vec<usize> {
        (0..CLIENTS)
            .filter(|&s| {
                self.clients[s]
                    .session
                    .as_ref()
                    .is_some_and(|x| x.subs.contains_key(&filter))
            })
            .collect()
    }

    /// The member of a shared subscription that gets a message: any online one,
    /// else any one (5.0 section 4.8.2); the broker's choice.
    fn pick(&mut self, filter: usize) -> Option<usize> {
        let members = self.members(filter);
        let online: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&s| self.online(s))
            .collect();
        let candidates = if online.is_empty() { members } else { online };
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.chooser.choose(candidates.len())])
    }

    fn granted(&self, s: usize, filter: usize) -> QoS {
        self.clients[s].session.as_ref().expect("session").subs[&filter]
    }

    /// One published message to every matching subscription: one copy per session
    /// for its non-shared subscriptions at the highest granted QoS [MQTT-3.3.5-1],
    /// and one copy per shared subscription to one member of its group, also to a
    /// member that has a non-shared copy (5.0 section 4.8.2).
    fn route(&mut self, m: &Msg) {
        let mut copies: Vec<(usize, Msg)> = Vec::new();
        for s in 0..CLIENTS {
            let granted = self.clients[s].session.as_ref().and_then(|sess| {
                sess.subs
                    .iter()
                    .filter(|(f, _)| {
                        !is_shared(**f) && filter_matches(FILTERS[**f], TOPICS[m.topic])
                    })
                    .map(|(_, q)| *q)
                    .max()
            });
            if let Some(g) = granted {
                copies.push((
                    s,
                    Msg {
                        qos: m.qos.min(g),
                        ..m.clone()
                    },
                ));
            }
        }
        // Every member is picked before any copy is delivered.
        for (f, filter) in FILTERS.iter().enumerate().skip(SHARED_FROM) {
            if !filter_matches(filter, TOPICS[m.topic]) {
                continue;
            }
            if let Some(s) = self.pick(f) {
                let qos = m.qos.min(self.granted(s, f));
                copies.push((
                    s,
                    Msg {
                        qos,
                        shared: Some(f),
                        ..m.clone()
                    },
                ));
            }
        }
        for (s, copy) in self.delivery_order(copies) {
            self.deliver(s, copy);
        }
    }

    /// The order of one message's copies is the broker's: it matters between the
    /// copies of one session (packet ids, queue order), and across sessions only
    /// when a copy can end an offline session whose shared messages then go to
    /// another member.
    fn delivery_order(&mut self, copies: Vec<(usize, Msg)>) -> Vec<(usize, Msg)> {
        let sessions: BTreeSet<usize> = copies.iter().map(|d| d.0).collect();
        let cascade = self.policy == OverflowPolicy::EndSession
            && sessions.len() > 1
            && sessions.iter().any(|&s| {
                let n = copies
                    .iter()
                    .filter(|d| d.0 == s && d.1.qos != QoS::AtMostOnce)
                    .count();
                !self.online(s)
                    && self.clients[s]
                        .session
                        .as_ref()
                        .is_some_and(|x| x.queue.len() + n > OFFLINE_QUEUE)
            });
        if cascade {
            return self.permute(copies);
        }
        let mut out = Vec::with_capacity(copies.len());
        for s in sessions {
            let mine = copies.iter().filter(|d| d.0 == s).cloned().collect();
            out.extend(self.permute(mine));
        }
        out
    }

    fn permute<T>(&mut self, mut items: Vec<T>) -> Vec<T> {
        let mut out = Vec::with_capacity(items.len());
        while !items.is_empty() {
            let i = self.chooser.choose(items.len());
            out.push(items.remove(i));
        }
        out
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
        if clean {
            self.end_session(c);
        }
        let now = self.now;
        let cl = &mut self.clients[c];
        let present = cl.session.is_some();
        let s = cl.session.get_or_insert_with(SessionM::new);
        s.expiry = granted;
        s.offline_since = None;
        s.unreleased_here.clear();
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
            last_rx: now,
            aliases: BTreeMap::new(),
        });
        cl.todo.clear();
        self.obs(c, Obs::ConnAck { present });
        if present {
            // [MQTT-4.4.0-1] resend unacknowledged PUBLISH (DUP) and PUBREL; a
            // PUBLISH whose message expired meanwhile is dropped instead.
            let flights = core::mem::take(&mut self.session(c).inflight);
            let mut kept = VecDeque::new();
            for f in flights {
                if f.released {
                    self.obs(c, Obs::PubRel(f.pid));
                    self.clients[c].todo.push_back(Todo::PubComp(f.pid));
                } else if expired(f.m.expires_at, now) {
                    self.expired += 1;
                    if !f.m.retain {
                        self.session(c).owed.remove(&f.m.msg);
                    }
                    continue;
                } else {
                    self.emit(c, &f.m, Some(f.pid), true);
                    let todo = if f.m.qos == QoS::AtLeastOnce {
                        Todo::PubAck(f.pid)
                    } else {
                        Todo::PubRec(f.pid)
                    };
                    self.clients[c].todo.push_back(todo);
                }
                kept.push_back(f);
            }
            self.session(c).inflight = kept;
        }
        self.fill_window(c);
    }

    /// A protocol violation: DISCONNECT with `code` (5.0), close, as an abnormal end.
    fn violation(&mut self, c: usize, code: ReasonCode) {
        let conn = self.clients[c].conn.clone().expect("online");
        if conn.v5 {
            self.obs(c, Obs::Disconnect(code));
        }
        self.closed.insert((c, conn.serial));
        match code {
            ReasonCode::KeepAliveTimeout => self.keep_alive_timeouts += 1,
            ReasonCode::ReceiveMaximumExceeded => self.receive_maximum_exceeded += 1,
            ReasonCode::TopicAliasInvalid => self.alias_invalid += 1,
            ReasonCode::ProtocolError => self.alias_protocol_errors += 1,
            _ => {}
        }
        self.detach(c);
    }

    /// The connection of `c` is gone: the session ends (expiry 0) or waits.
    fn detach(&mut self, c: usize) {
        let now = self.now;
        let cl = &mut self.clients[c];
        cl.conn = None;
        cl.todo.clear();
        let ends = match cl.session.as_mut() {
            Some(s) if s.expiry == 0 => true,
            Some(s) => {
                s.offline_since = Some(now);
                false
            }
            None => false,
        };
        if ends {
            self.end_session(c);
        }
    }

    /// The session of `c` ends. Its QoS 1 messages from shared subscriptions, in
    /// flight unacknowledged or queued, go to another member of the group (5.0
    /// section 4.8.2, a SHOULD); QoS 2 ones do not [MQTT-4.8.2-5].
    fn end_session(&mut self, c: usize) {
        let Some(s) = self.clients[c].session.take() else {
            return;
        };
        let unacked: Vec<Msg> = s
            .inflight
            .iter()
            .filter(|f| !f.released)
            .map(|f| f.m.clone())
            .chain(s.queue.iter().cloned())
            .collect();
        for m in unacked {
            let Some(filter) = m.shared else { continue };
            if m.qos != QoS::AtLeastOnce {
                continue;
            }
            let Some(to) = self.pick(filter) else {
                continue;
            };
            self.redeliveries += 1;
            // [MQTT-3.8.4-8] the smaller of the published QoS and the QoS granted to
            // the new member.
            let qos = m.published.min(self.granted(to, filter));
            self.deliver(
                to,
                Msg {
                    qos,
                    retain: false,
                    ..m
                },
            );
        }
    }

    fn tick(&mut self, secs: u64) {
        let end = self.now + secs;
        loop {
            // Keep-alive and session expiry deadlines due by `end`.
            let mut due: Vec<(u64, usize, bool)> = Vec::new();
            for (c, cl) in self.clients.iter().enumerate() {
                let d = match (&cl.conn, &cl.session) {
                    (Some(conn), _) if conn.keep_alive => {
                        Some((conn.last_rx + KEEP_ALIVE_TIMEOUT, c, true))
                    }
                    (None, Some(s)) => s
                        .offline_since
                        .map(|since| (since + u64::from(s.expiry), c, false)),
                    _ => None,
                };
                due.extend(d.filter(|d| d.0 <= end));
            }
            let Some(at) = due.iter().map(|d| d.0).min() else {
                break;
            };
            // Timers due at the same instant fire in the broker's order.
            due.retain(|d| d.0 == at);
            let (at, c, keep_alive) = due[self.chooser.choose(due.len())];
            self.now = at;
            if keep_alive {
                // [MQTT-3.1.2-24]
                self.violation(c, ReasonCode::KeepAliveTimeout);
            } else {
                self.expiries += 1;
                self.end_session(c);
            }
        }
        self.now = end;
        // Retained messages are deleted at their deadline [MQTT-3.3.2-5]; nothing
        // else shows when, so all at the end.
        let before = self.retained.len();
        self.retained.retain(|_, r| !expired(r.expires_at, end));
        self.retained_expired += (before - self.retained.len()) as u64;
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
                    .position(|f| f.pid == pid && !f.released && f.m.qos == QoS::AtLeastOnce)
                {
                    s.inflight.remove(i);
                    self.fill_window(c);
                }
            }
            Todo::PubRec(pid) => {
                if let Some(f) = s
                    .inflight
                    .iter_mut()
                    .find(|f| f.pid == pid && f.m.qos == QoS::ExactlyOnce)
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

    /// One copy to one session: out now, in flight, or queued.
    fn deliver(&mut self, c: usize, m: Msg) {
        let online = self.online(c);
        let now = self.now;
        let Some(s) = self.clients[c].session.as_mut() else {
            return;
        };
        if m.qos == QoS::AtMostOnce {
            // QoS 0 goes out at once, or nowhere.
            if online {
                if expired(m.expires_at, now) {
                    self.expired += 1;
                } else {
                    self.emit(c, &m, None, false);
                }
            }
            return;
        }
        if !online && s.expiry == 0 {
            return;
        }
        if !m.retain {
            s.owed.insert(m.msg);
        }
        if online {
            let window = self.clients[c].conn.as_ref().expect("online").window;
            let s = self.session(c);
            if s.inflight.len() < window && s.queue.is_empty() {
                self.send(c, m);
            } else {
                self.enqueue(c, m, true);
            }
        } else {
            self.enqueue(c, m, false);
        }
    }

    /// The PUBLISH as the connection of `c` sees it: the Message Expiry Interval is
    /// what is left of it [MQTT-3.3.2-6] (3.1.1 has no properties).
    fn emit(&mut self, c: usize, m: &Msg, pid: Option<u16>, dup: bool) {
        let v5 = self.clients[c].conn.as_ref().expect("online").v5;
        let now = self.now;
        let expiry = if v5 {
            m.expires_at
                .map(|at| u32::try_from(at - now).expect("small"))
        } else {
            None
        };
        if m.shared.is_some() && !dup {
            self.shared_sent += 1;
        }
        self.obs(
            c,
            Obs::Publish {
                msg: m.msg,
                topic: m.topic,
                pid,
                qos: m.qos,
                dup,
                retain: m.retain,
                expiry,
            },
        );
    }

    /// Puts a QoS 1/2 copy in flight, unless it expired while it waited
    /// [MQTT-3.3.2-5].
    fn send(&mut self, c: usize, m: Msg) {
        if expired(m.expires_at, self.now) {
            self.expired += 1;
            if !m.retain {
                self.session(c).owed.remove(&m.msg);
            }
            return;
        }
        let s = self.session(c);
        s.last_pid += 1;
        let pid = s.last_pid;
        s.inflight.push_back(Flight {
            pid,
            m: m.clone(),
            released: false,
        });
        self.emit(c, &m, Some(pid), false);
        let todo = if m.qos == QoS::AtLeastOnce {
            Todo::PubAck(pid)
        } else {
            Todo::PubRec(pid)
        };
        self.clients[c].todo.push_back(todo);
    }

    fn enqueue(&mut self, c: usize, m: Msg, online: bool) {
        let policy = self.policy;
        let drop_owed = |s: &mut SessionM, m: &Msg| {
            if !m.retain {
                s.owed.remove(&m.msg);
            }
        };
        if online {
            // Slow consumer: the oldest queued QoS 1 message goes; with only QoS 2
            // waiting, the new message goes.
            while self.session(c).queue.len() + 1 > ONLINE_QUEUE {
                self.overflows += 1;
                let s = self.session(c);
                match s.queue.iter().position(|q| q.qos == QoS::AtLeastOnce) {
                    Some(i) => {
                        let old = s.queue.remove(i).expect("position is in range");
                        drop_owed(s, &old);
                    }
                    None => return drop_owed(s, &m),
                }
            }
        } else if self.session(c).queue.len() + 1 > OFFLINE_QUEUE {
            self.overflows += 1;
            match policy {
                OverflowPolicy::EndSession => return self.end_session(c),
                OverflowPolicy::DropNewest => return drop_owed(self.session(c), &m),
                OverflowPolicy::DropOldest => {
                    let s = self.session(c);
                    let old = s.queue.pop_front().expect("a full queue has a front");
                    drop_owed(s, &old);
                    while self.session(c).queue.len() + 1 > OFFLINE_QUEUE {
                        self.overflows += 1;
                        let s = self.session(c);
                        let old = s.queue.pop_front().expect("a full queue has a front");
                        drop_owed(s, &old);
                    }
                }
            }
        }
        self.session(c).queue.push_back(m);
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
            let Some(m) = s.queue.pop_front() else { return };
            self.send(c, m);
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
            0u16..=3,
        )
            .prop_map(|(c, v5, clean, expiry, window, keep_alive, alias_max)| {
                Op::Connect {
                    c,
                    v5,
                    clean,
                    expiry,
                    window,
                    keep_alive,
                    alias_max,
                }
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
        let expiry = prop_oneof![
            6 => Just(None),
            1 => Just(Some(0u32)),
            2 => Just(Some(1)),
            2 => Just(Some(5)),
            2 => Just(Some(30)),
            2 => Just(Some(120))
        ];
        // Mostly aliases the client set on this connection; sometimes one it did not
        // (0x82), 0 (0x82) or one above the broker's maximum (0x94).
        let known: Vec<Vec<u16>> = state
            .clients
            .iter()
            .map(|cl| {
                cl.conn
                    .as_ref()
                    .map(|conn| conn.aliases.keys().copied().collect())
                    .unwrap_or_default()
            })
            .collect();
        let alias_for = move |c: usize| {
            let set = (1..=TOPIC_ALIAS_MAXIMUM).prop_map(AliasUse::Set);
            let bad = prop_oneof![
                Just(0),
                Just(TOPIC_ALIAS_MAXIMUM + 1),
                1..=TOPIC_ALIAS_MAXIMUM
            ];
            match known[c].clone() {
                k if k.is_empty() => prop_oneof![
                    12 => Just(AliasUse::No),
                    4 => set,
                    1 => bad.clone().prop_map(AliasUse::Use),
                    1 => bad.prop_map(AliasUse::Set),
                ]
                .boxed(),
                k => prop_oneof![
                    8 => Just(AliasUse::No),
                    3 => set,
                    6 => prop::sample::select(k).prop_map(AliasUse::Use),
                    1 => bad.clone().prop_map(AliasUse::Use),
                    1 => bad.prop_map(AliasUse::Set),
                ]
                .boxed(),
            }
        };
        // Shared subscriptions often enough that groups have several members.
        let filter = prop_oneof![2 => 0..SHARED_FROM, 1 => SHARED_FROM..FILTERS.len()];
        // One strategy per online client, not `prop_flat_map`, whose shrinking does
        // not return to the last failing case.
        let publish = prop::strategy::Union::new(online.iter().map(|&c| {
            (
                0..TOPICS.len(),
                qos_strategy(),
                prop::bool::weighted(0.2),
                expiry.clone(),
                alias_for(c),
            )
                .prop_map(move |(topic, qos, retain, expiry, alias)| Op::Publish {
                    c,
                    topic,
                    qos,
                    retain,
                    expiry,
                    alias,
                })
        }));
        let c = prop::sample::select(online);
        prop_oneof![
            3 => connect,
            3 => (c.clone(), filter, qos_strategy())
                .prop_map(|(c, filter, qos)| Op::Subscribe { c, filter, qos }),
            1 => (c.clone(), 0..FILTERS.len()).prop_map(|(c, filter)| Op::Unsubscribe { c, filter }),
            8 => publish,
            1 => c.clone().prop_map(|c| Op::Republish { c }),
            2 => c.clone().prop_map(|c| Op::Release { c }),
            5 => (c.clone(), 1usize..4).prop_map(|(c, n)| Op::Ack { c, n }),
            1 => c.clone().prop_map(|c| Op::Disconnect { c }),
            1 => c.prop_map(|c| Op::Crash { c }),
            2 => tick,
        ]
        .boxed()
    }

    /// None: an operation of a client that is offline is a no-op on both sides.
    /// (A precondition that rejects a shrunk operation can leave
    /// proptest-state-machine 0.3 at a passing case.)
    fn preconditions(_state: &Model, _op: &Op) -> bool {
        true
    }

    /// Generation follows one world: the first answer to every choice. Which
    /// clients are online, all that generation needs, hardly depends on it, and an
    /// operation of a client that turns out offline is a no-op on both sides.
    fn apply(mut state: Model, op: &Op) -> Model {
        state.apply(op);
        state.chooser = Chooser::default();
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
    /// Shared subscriptions held: (filter, first message published while held,
    /// first message published after they ended).
    shared_held: Vec<(usize, u32, Option<u32>)>,
    pending_sub: Option<usize>,
    pending_unsub: Option<usize>,
}

struct MsgInfo {
    publisher: usize,
    /// The topic as the broker knows it (through the publisher's alias, if used).
    topic: usize,
    seq: u32,
    /// Message Expiry Interval as published.
    expiry: Option<u32>,
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
    /// Per sim client index: the Topic Alias Maximum its CONNECT stated, and the
    /// aliases the broker set on it (alias -> topic index).
    alias_max: Vec<u16>,
    aliases_out: Vec<BTreeMap<u16, usize>>,
    /// Per client: the aliases it set towards the broker on its connection.
    aliases_in: Vec<BTreeMap<u16, usize>>,
    serials: Vec<u32>,
    last_pid: Vec<u16>,
    todo: Vec<VecDeque<Todo>>,
    unreleased: Vec<VecDeque<(u16, u32)>>,
    app: Vec<App>,
    msgs: Vec<MsgInfo>,
    seq: BTreeMap<(usize, usize), u32>,
    seen: BTreeMap<(usize, u32), Vec<Obs>>,
    closed: BTreeSet<(usize, u32)>,
    /// The model's states that agree with everything the broker did so far; more
    /// than one while a choice of the broker is not yet visible.
    worlds: Vec<Model>,
}

static CASES: AtomicU64 = AtomicU64::new(0);
static OPS: AtomicU64 = AtomicU64::new(0);
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static DUPS: AtomicU64 = AtomicU64::new(0);
static RETAINED: AtomicU64 = AtomicU64::new(0);
static SHARED: AtomicU64 = AtomicU64::new(0);
static REDELIVERIES: AtomicU64 = AtomicU64::new(0);
static ALIASED: AtomicU64 = AtomicU64::new(0);
static REDUCED_EXPIRY: AtomicU64 = AtomicU64::new(0);
static EXPIRED: AtomicU64 = AtomicU64::new(0);
static RETAINED_EXPIRED: AtomicU64 = AtomicU64::new(0);
static TAKEOVERS: AtomicU64 = AtomicU64::new(0);
static OVERFLOWS: AtomicU64 = AtomicU64::new(0);
static QOS2_FLOWS: AtomicU64 = AtomicU64::new(0);
static RECEIVE_MAXIMUM_EXCEEDED: AtomicU64 = AtomicU64::new(0);
static ALIAS_INVALID: AtomicU64 = AtomicU64::new(0);
static ALIAS_PROTOCOL_ERRORS: AtomicU64 = AtomicU64::new(0);
static KEEP_ALIVE_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
static EXPIRIES: AtomicU64 = AtomicU64::new(0);
static MOST_WORLDS: AtomicU64 = AtomicU64::new(0);

fn client_id(c: usize) -> String {
    format!("c{c}")
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("packet ids start at 1")
}

fn topic_index(topic: &str) -> usize {
    TOPICS
        .iter()
        .position(|t| *t == topic)
        .unwrap_or_else(|| panic!("a PUBLISH on topic {topic:?}, which nobody published to"))
}

/// A PUBLISH with Topic Alias 0, which `Publish` cannot hold: encoded with alias 1,
/// then the property's value rewritten in the bytes.
fn encode_with_alias_zero(p: Publish) -> BytesMut {
    let mut buf = BytesMut::new();
    Packet::Publish(p)
        .encode(ProtocolVersion::V5, &mut buf)
        .expect("test packets encode");
    // The payload (a small big-endian number) cannot hold these bytes; the alias
    // property is the last match.
    let at = buf
        .windows(3)
        .rposition(|w| w == [0x23, 0x00, 0x01])
        .expect("the Topic Alias property");
    buf[at + 2] = 0;
    buf
}

impl Harness {
    fn new(model: &Model) -> Self {
        // Every CONNECT goes through the authentication exchange: a question out,
        // the answer back as input (answered at once, as the default hook would).
        let mut sim = Sim::new(config(model.policy));
        sim.broker.set_external_authentication(true);
        sim.auto_answer = true;
        Harness {
            sim,
            conn: vec![None; CLIENTS],
            sim_of: Vec::new(),
            live: Vec::new(),
            alias_max: Vec::new(),
            aliases_out: Vec::new(),
            aliases_in: vec![BTreeMap::new(); CLIENTS],
            serials: vec![0; CLIENTS],
            last_pid: vec![0; CLIENTS],
            todo: vec![VecDeque::new(); CLIENTS],
            unreleased: vec![VecDeque::new(); CLIENTS],
            app: (0..CLIENTS).map(|_| App::default()).collect(),
            msgs: Vec::new(),
            seq: BTreeMap::new(),
            seen: BTreeMap::new(),
            closed: BTreeSet::new(),
            worlds: vec![model.clone()],
        }
    }

    /// Runs `op` against the broker, then moves every world of the model along it
    /// and keeps those that agree with what the broker did.
    fn step(&mut self, op: &Op) {
        self.run(op);
        let mut next: Vec<Model> = Vec::new();
        let mut first_error = None;
        let mut tried = 0usize;
        for world in &self.worlds {
            for m in world.successors(op) {
                tried += 1;
                match self.check(op, &m) {
                    Ok(()) => {
                        if !next.contains(&m) {
                            next.push(m);
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if next.is_empty() {
            let e = first_error.expect("a world was tried");
            if tried > 1 {
                panic!(
                    "{e}\n(no way the broker may choose agrees: {tried} tried; the first shown)"
                );
            }
            panic!("{e}");
        }
        assert!(
            next.len() <= MAX_WORLDS,
            "after {op:?}: the model follows {} worlds, more than it can",
            next.len()
        );
        MOST_WORLDS.fetch_max(next.len() as u64, Relaxed);
        self.worlds = next;
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
                let obs = self.receive(i, c, packet);
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

    fn receive(&mut self, i: usize, c: usize, packet: Packet) -> Obs {
        let published = self.msgs.len() as u32;
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
                    app.shared_held.clear();
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
                if is_shared(f) && app.subs.insert(f) {
                    app.shared_held.push((f, published, None));
                }
                app.subs.insert(f);
                Obs::SubAck(qos)
            }
            Packet::UnsubAck(_) => {
                let f = app.pending_unsub.take().expect("an UNSUBSCRIBE was sent");
                if app.subs.remove(&f) && is_shared(f) {
                    for held in &mut app.shared_held {
                        if held.0 == f && held.2.is_none() {
                            held.2 = Some(published);
                        }
                    }
                }
                Obs::UnsubAck
            }
            Packet::Publish(p) => self.receive_publish(i, c, p),
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

    /// A client resolves the topic as any 5.0 client must: a topic with an alias
    /// sets the alias, an empty topic uses it, on this connection only
    /// [MQTT-3.3.2-7]; the broker never uses an alias above the client's Topic Alias
    /// Maximum [MQTT-3.3.2-11].
    fn resolve_topic(&mut self, i: usize, c: usize, p: &Publish) -> usize {
        let Some(alias) = p.properties.topic_alias else {
            assert!(
                !p.topic.is_empty(),
                "c{c} got a PUBLISH without topic or alias"
            );
            return topic_index(p.topic.as_str());
        };
        let alias = alias.get();
        assert!(
            alias <= self.alias_max[i],
            "c{c} got Topic Alias {alias}, above the maximum {} its CONNECT stated \
             [MQTT-3.3.2-11]",
            self.alias_max[i]
        );
        if p.topic.is_empty() {
            ALIASED.fetch_add(1, Relaxed);
            *self.aliases_out[i].get(&alias).unwrap_or_else(|| {
                panic!("c{c} got Topic Alias {alias} alone, never set on this connection")
            })
        } else {
            let t = topic_index(p.topic.as_str());
            self.aliases_out[i].insert(alias, t);
            t
        }
    }

    fn receive_publish(&mut self, i: usize, c: usize, p: Publish) -> Obs {
        let msg = u32::from_be_bytes(p.payload[..].try_into().expect("4-byte payload"));
        let topic = self.resolve_topic(i, c, &p);
        let info = &self.msgs[msg as usize];
        assert_eq!(
            TOPICS[topic], TOPICS[info.topic],
            "topic of message {msg} as c{c} resolved it"
        );
        DELIVERED.fetch_add(1, Relaxed);
        if p.dup {
            DUPS.fetch_add(1, Relaxed);
        }
        if p.retain {
            RETAINED.fetch_add(1, Relaxed);
        }
        let expiry = p.properties.message_expiry_interval;
        if let (Some(left), Some(published)) = (expiry, info.expiry) {
            assert!(
                left <= published,
                "c{c} got message {msg} with expiry {left} s, published with {published} s"
            );
            if left < published {
                REDUCED_EXPIRY.fetch_add(1, Relaxed);
            }
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
            let normal = *inc == app.incarnation
                && subs
                    .iter()
                    .any(|&f| !is_shared(f) && filter_matches(FILTERS[f], TOPICS[info.topic]));
            // A shared subscription's message may come from a member whose session
            // ended later: one held at any time since publication counts.
            let shared: BTreeSet<usize> = app
                .shared_held
                .iter()
                .filter(|&&(f, _, until)| {
                    filter_matches(FILTERS[f], TOPICS[info.topic]) && until.is_none_or(|u| u > msg)
                })
                .map(|h| h.0)
                .collect();
            assert!(
                normal || !shared.is_empty(),
                "c{c} got message {msg} on {} without a matching subscription when it was \
                 published (session then {inc}, now {}; filters then {:?})",
                TOPICS[info.topic],
                app.incarnation,
                subs.iter().map(|f| FILTERS[*f]).collect::<Vec<_>>(),
            );
            if p.qos == QoS::ExactlyOnce {
                // Once per session, and once more per shared subscription.
                let n = app.qos2_count.entry(msg).or_default();
                *n += 1;
                let allowed = u32::from(normal) + shared.len() as u32;
                assert!(*n <= allowed, "c{c} got QoS 2 message {msg} {n} times");
            }
            // Order is not promised across a shared subscription's members (a
            // redelivered message comes late).
            if app.delivered.insert(msg) && shared.is_empty() {
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
            topic,
            pid: id,
            qos: p.qos,
            dup: p.dup,
            retain: p.retain,
            expiry,
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
                alias_max,
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
                self.alias_max.push(if v5 { alias_max } else { 0 });
                self.aliases_out.push(BTreeMap::new());
                self.aliases_in[c].clear();
                let mut properties = ConnectProperties::default();
                if v5 {
                    properties.session_expiry_interval = (expiry > 0).then_some(expiry);
                    properties.receive_maximum = NonZeroU16::new(window);
                    properties.topic_alias_maximum = (alias_max > 0).then_some(alias_max);
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
                self.sim.send(i, Packet::Connect(Box::new(connect)));
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
                expiry,
                alias,
            } => self.publish(c, topic, qos, retain, expiry, alias),
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

    fn publish(
        &mut self,
        c: usize,
        topic: usize,
        qos: QoS,
        retain: bool,
        expiry: Option<u32>,
        alias: AliasUse,
    ) {
        let i = self.conn[c].expect("online");
        let serial = self.sim_of[i].1;
        // 3.1.1 has no properties.
        let (expiry, alias) = if self.sim.clients[i].version.is_v5() {
            (expiry, alias)
        } else {
            (None, AliasUse::No)
        };
        // The topic the broker will see, if the alias is right.
        let topic = match alias {
            AliasUse::No => topic,
            AliasUse::Set(n) => {
                self.aliases_in[c].insert(n, topic);
                topic
            }
            AliasUse::Use(n) => self.aliases_in[c].get(&n).copied().unwrap_or(topic),
        };
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
            expiry,
            subs_then,
        });
        let id = (qos != QoS::AtMostOnce).then(|| self.next_pid(c));
        let (name, alias_value) = match alias {
            AliasUse::No => (TOPICS[topic], None),
            AliasUse::Set(n) => (TOPICS[topic], Some(n)),
            AliasUse::Use(n) => ("", Some(n)),
        };
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: TopicName::from_static(name).expect("topic"),
            packet_id: id.map(pid),
            properties: PublishProperties {
                message_expiry_interval: expiry,
                topic_alias: alias_value.map(|n| NonZeroU16::new(n.max(1)).expect("non-zero")),
                ..PublishProperties::default()
            },
            payload: Bytes::copy_from_slice(&msg.to_be_bytes()),
        };
        if alias_value == Some(0) {
            self.sim.send_bytes(i, &encode_with_alias_zero(publish));
            self.pump();
        } else {
            self.send(c, Packet::Publish(publish));
        }
        // Unreleased once the broker took it (PUBREC).
        if let (QoS::ExactlyOnce, Some(id)) = (qos, id) {
            let took = self
                .seen
                .get(&(c, serial))
                .is_some_and(|v| v.contains(&Obs::PubRec(id)));
            if took {
                self.unreleased[c].push_back((id, msg));
            }
        }
    }

    /// Client-chosen packet ids, never reused within a test case, so that an id
    /// still unreleased in the session never comes back.
    fn next_pid(&mut self, c: usize) -> u16 {
        self.last_pid[c] += 1;
        self.last_pid[c]
    }

    /// Whether the broker did what the model `m` predicts for `op`: the packets
    /// every connection received, the connections closed, the acks each client
    /// owes, queues, counts and the drops in `Stats`.
    fn check(&self, op: &Op, m: &Model) -> Result<(), String> {
        let keys: BTreeSet<_> = self.seen.keys().chain(m.expect.keys()).collect();
        for key in keys {
            let got = self.seen.get(key).map_or(&[][..], |v| &v[..]);
            let want = m.expect.get(key).map_or(&[][..], |v| &v[..]);
            if got != want {
                return Err(format!(
                    "after {op:?}: connection {} of c{} received (left) not what the model \
                     expects (right)\n  left: {got:?}\n right: {want:?}",
                    key.1, key.0
                ));
            }
        }
        if self.closed != m.closed {
            return Err(format!(
                "after {op:?}: connections closed (client, serial) {:?}, the model expects {:?}",
                self.closed, m.closed
            ));
        }
        for c in 0..CLIENTS {
            let todo: Vec<_> = self.todo[c].iter().collect();
            let want: Vec<_> = m.clients[c].todo.iter().collect();
            if todo != want {
                return Err(format!(
                    "after {op:?}: acks c{c} owes {todo:?}, the model says {want:?}"
                ));
            }
            if self.conn[c].is_some() {
                let unreleased: Vec<_> = self.unreleased[c].iter().collect();
                let want: Vec<_> = m.clients[c]
                    .session
                    .as_ref()
                    .map(|s| s.unreleased.iter().collect())
                    .unwrap_or_default();
                if unreleased != want {
                    return Err(format!(
                        "after {op:?}: unreleased QoS 2 of c{c} {unreleased:?}, the model \
                         says {want:?}"
                    ));
                }
            }
        }
        let broker = &self.sim.broker;
        let sessions = m.clients.iter().filter(|c| c.session.is_some()).count();
        if broker.session_count() != sessions {
            return Err(format!(
                "after {op:?}: {} sessions, the model has {sessions}",
                broker.session_count()
            ));
        }
        let conns = m.clients.iter().filter(|c| c.conn.is_some()).count();
        if broker.connection_count() != conns {
            return Err(format!(
                "after {op:?}: {} connections, the model has {conns}",
                broker.connection_count()
            ));
        }
        for (c, cl) in m.clients.iter().enumerate() {
            let queued = broker.queued_messages(&client_id(c));
            let want = cl.session.as_ref().map(|s| s.queue.len());
            if queued != want {
                return Err(format!(
                    "after {op:?}: {queued:?} messages queued for c{c}, the model has {want:?}"
                ));
            }
            let bound = if cl.conn.is_some() {
                ONLINE_QUEUE
            } else {
                ONLINE_QUEUE.max(OFFLINE_QUEUE)
            };
            if queued.unwrap_or(0) > bound {
                return Err(format!("after {op:?}: queue of c{c} over its bound"));
            }
        }
        if broker.retained_count() != m.retained.len() {
            return Err(format!(
                "after {op:?}: {} retained messages, the model has {}",
                broker.retained_count(),
                m.retained.len()
            ));
        }
        let stats = broker.stats();
        let drops = stats.dropped_online_queue_full
            + stats.dropped_offline_queue_full
            + stats.sessions_ended_by_overflow;
        let counted = [
            ("overflow drops", drops, m.overflows),
            ("expired messages", stats.expired, m.expired),
            (
                "expired retained messages",
                stats.retained_expired,
                m.retained_expired,
            ),
            (
                "shared redeliveries",
                stats.shared_redeliveries,
                m.redeliveries,
            ),
        ];
        for (what, got, want) in counted {
            if got != want {
                return Err(format!(
                    "after {op:?}: Stats count {got} {what}, the model {want}"
                ));
            }
        }
        Ok(())
    }
}

impl StateMachineTest for Harness {
    type SystemUnderTest = Harness;
    type Reference = Reference;

    fn init_test(model: &Model) -> Harness {
        CASES.fetch_add(1, Relaxed);
        Harness::new(model)
    }

    /// The reference state is generation's single world; the harness checks
    /// against its own worlds, which follow the broker's choices.
    fn apply(mut sut: Harness, _generated: &Model, op: Op) -> Harness {
        OPS.fetch_add(1, Relaxed);
        sut.step(&op);
        sut
    }

    fn check_invariants(sut: &Harness, _generated: &Model) {
        if let Err(e) = sut.sim.broker.check_invariants() {
            panic!("broker invariant: {e}");
        }
    }

    /// Every client takes its session back and answers everything; then every
    /// message owed to a session has been delivered.
    fn teardown(mut sut: Harness) {
        for c in 0..CLIENTS {
            let m = &sut.worlds[0];
            if m.clients[c].session.is_some() && !m.online(c) {
                let op = Op::Connect {
                    c,
                    v5: true,
                    clean: false,
                    expiry: 300,
                    window: 3,
                    keep_alive: false,
                    alias_max: 2,
                };
                sut.step(&op);
                Harness::check_invariants(&sut, &sut.worlds[0]);
            }
        }
        for _ in 0..1000 {
            let busy: Vec<usize> = (0..CLIENTS)
                .filter(|&c| !sut.worlds[0].clients[c].todo.is_empty())
                .collect();
            if busy.is_empty() {
                break;
            }
            for c in busy {
                sut.step(&Op::Ack { c, n: 100 });
                Harness::check_invariants(&sut, &sut.worlds[0]);
            }
        }
        for m in &sut.worlds {
            for (c, cl) in m.clients.iter().enumerate() {
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
        let m = &sut.worlds[0];
        let stats = sut.sim.broker.stats();
        TAKEOVERS.fetch_add(stats.takeovers, Relaxed);
        OVERFLOWS.fetch_add(m.overflows, Relaxed);
        EXPIRED.fetch_add(m.expired, Relaxed);
        RETAINED_EXPIRED.fetch_add(m.retained_expired, Relaxed);
        SHARED.fetch_add(m.shared_sent, Relaxed);
        REDELIVERIES.fetch_add(m.redeliveries, Relaxed);
        RECEIVE_MAXIMUM_EXCEEDED.fetch_add(m.receive_maximum_exceeded, Relaxed);
        ALIAS_INVALID.fetch_add(m.alias_invalid, Relaxed);
        ALIAS_PROTOCOL_ERRORS.fetch_add(m.alias_protocol_errors, Relaxed);
        KEEP_ALIVE_TIMEOUTS.fetch_add(m.keep_alive_timeouts, Relaxed);
        EXPIRIES.fetch_add(m.expiries, Relaxed);
    }
}

#[test]
fn broker_agrees_with_the_reference_model() {
    assert!(
        FILTERS
            .iter()
            .enumerate()
            .all(|(i, f)| f.starts_with("$share/") == is_shared(i)),
        "the shared subscriptions are the filters from SHARED_FROM on"
    );
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
    let n = |c: &AtomicU64| c.load(Relaxed);
    eprintln!(
        "model: {} cases, {} ops; {} PUBLISH delivered ({} DUP resends, {} retained, \
         {} through shared subscriptions, {} by topic alias alone, {} with a reduced \
         expiry interval), {} shared redeliveries, {} expired ({} retained messages \
         deleted), {} takeovers, \
         {} overflows, {} QoS 2 flows, DISCONNECT 0x93 x{}, 0x94 x{}, 0x82 (alias) x{}, \
         {} keep-alive timeouts, {} session expiries; at most {} worlds at once",
        n(&CASES),
        n(&OPS),
        n(&DELIVERED),
        n(&DUPS),
        n(&RETAINED),
        n(&SHARED),
        n(&ALIASED),
        n(&REDUCED_EXPIRY),
        n(&REDELIVERIES),
        n(&EXPIRED),
        n(&RETAINED_EXPIRED),
        n(&TAKEOVERS),
        n(&OVERFLOWS),
        n(&QOS2_FLOWS),
        n(&RECEIVE_MAXIMUM_EXCEEDED),
        n(&ALIAS_INVALID),
        n(&ALIAS_PROTOCOL_ERRORS),
        n(&KEEP_ALIVE_TIMEOUTS),
        n(&EXPIRIES),
        n(&MOST_WORLDS),
    );
    match result {
        Ok(()) => {}
        // Replayed so that the failure shown is the minimal case's own: shrinking can
        // end on a case that passes (see `preconditions`).
        Err(TestError::Fail(why, (initial, ops, _))) => {
            eprintln!("model: minimal failing case, replayed below: {ops:#?}");
            Harness::test_sequential(config, initial, ops, None);
            panic!("the minimal case passes when replayed; the failure was: {why}");
        }
        Err(e) => panic!("{e}"),
    }
}
