//! Crash safety of the durable store (issue 17): persistent subscribers (QoS 1 and
//! QoS 2) and publishers at full speed while the broker binary is killed with
//! SIGKILL at random moments, several times. After the last restart every message
//! acknowledged to its publisher has reached every subscriber (QoS 1: duplicates
//! allowed; QoS 2: exactly once), in order per topic per publisher; the sessions
//! came back without resubscribing and the retained message is still there.
//!
//! The moments are drawn from a seeded generator; the seed is printed and
//! `CRASH_SEED=<seed>` replays the same durations.
//!
//! `BROKK_CRASH_IN_MEMORY=1` runs the same scenario on `--in-memory` instead of a
//! data directory: a broker that forgets everything on a crash. The test must then
//! FAIL (sessions gone, acknowledged messages lost); that is how to check it can.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use adapter_common::config::ListenerKind;
use brokk_e2e::raw::{connect_packet, encode, publish_packet, RawClient};
use brokk_e2e::{within, within_for, BrokkProcess, Runtime, TIMEOUT};
use bytes::BytesMut;
use mqtt_proto::{
    decode_packet, ConnAck, Connect, FixedHeader, Packet, ProtocolVersion, PubAck, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions, TopicFilter,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Crashes before the final restart.
const CRASHES: usize = 5;
/// Unacknowledged messages a publisher keeps in flight.
const WINDOW: usize = 32;
/// Bytes after the 8-byte sequence number in each payload.
const PADDING: usize = 56;
/// Messages each publisher sends (and sees acknowledged) in the final round, to
/// show the restored sessions still route without a new SUBSCRIBE.
const FINAL_BATCH: u64 = 20;
/// The final drain ends when nothing has come for this long.
const QUIET: Duration = Duration::from_secs(2);
/// How long brokk may take to die after SIGKILL.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

const FILTER: &str = "crash/#";
const RETAINED_TOPIC: &str = "crash/retained";
const RETAINED_PAYLOAD: &[u8] = b"retained before the first crash";

/// Which publisher a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    P1,
    P2,
}

impl Source {
    fn of_topic(topic: &str) -> Option<Source> {
        match topic {
            "crash/p1" => Some(Source::P1),
            "crash/p2" => Some(Source::P2),
            _ => None,
        }
    }
}

/// xorshift64*: enough randomness for crash moments, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) if !s.is_empty() => s
            .parse()
            .unwrap_or_else(|e| panic!("CRASH_SEED={s:?} is not a u64: {e}")),
        _ => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("the clock is after 1970")
                .as_nanos();
            (nanos as u64) ^ u64::from(std::process::id()) | 1
        }
    }
}

/// Why a read brought no packet.
#[derive(Debug)]
enum Gone {
    /// End of stream or an error: the broker is gone. A packet cut off by the kill
    /// is dropped, as a real client would.
    Closed,
    /// Nothing within the limit.
    TimedOut,
}

/// A client connection whose reads and writes report a dead broker instead of
/// failing the test (unlike `RawClient`, which expects the broker to stay up).
struct Conn {
    stream: TcpStream,
    version: ProtocolVersion,
    input: BytesMut,
}

impl Conn {
    /// Connects and returns the CONNACK; the broker is up, so anything else fails.
    async fn connect(addr: SocketAddr, connect: Connect) -> (Conn, ConnAck) {
        let who = connect.client_id.as_str().to_owned();
        let stream = within(
            &format!("{who}: TCP connect to {addr}"),
            TcpStream::connect(addr),
        )
        .await
        .unwrap_or_else(|e| panic!("{who}: cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let mut conn = Conn {
            stream,
            version: connect.protocol,
            input: BytesMut::new(),
        };
        assert!(
            conn.send(&Packet::Connect(Box::new(connect))).await,
            "{who}: the broker closed the connection before CONNECT was written"
        );
        match conn.read(TIMEOUT).await {
            Ok(Packet::ConnAck(connack)) => (conn, *connack),
            Ok(other) => panic!("{who}: expected CONNACK, got {other:?}"),
            Err(Gone::Closed) => {
                panic!("{who}: the broker closed the connection instead of CONNACK")
            }
            Err(Gone::TimedOut) => panic!("{who}: no CONNACK within {TIMEOUT:?}"),
        }
    }

    /// Writes one packet; false if the broker is gone.
    async fn send(&mut self, packet: &Packet) -> bool {
        let bytes = encode(packet, self.version);
        within("a write to the broker", self.stream.write_all(&bytes))
            .await
            .is_ok()
    }

    /// The next packet, waiting at most `limit`.
    async fn read(&mut self, limit: Duration) -> Result<Packet, Gone> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let header = FixedHeader::parse(&self.input).unwrap_or_else(|e| {
                panic!(
                    "broker sent a bad fixed header ({e}): {:02x?}",
                    &self.input[..]
                )
            });
            if let Some(header) = header {
                if self.input.len() >= header.packet_len() {
                    let frame = self.input.split_to(header.packet_len()).freeze();
                    let packet =
                        decode_packet(Some(self.version), frame.clone()).unwrap_or_else(|e| {
                            panic!("broker sent an undecodable packet ({e}): {frame:02x?}")
                        });
                    return Ok(packet);
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
                Err(_) => return Err(Gone::TimedOut),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Gone::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// How a client's part of a round ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The connection closed (the broker was killed).
    Closed,
    /// Nothing came for the idle limit.
    Quiet,
    /// A publisher's batch was sent and fully acknowledged.
    Done,
}

/// One message as a subscriber received it.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    source: Source,
    seq: u64,
    qos: QoS,
    round: usize,
    packet_id: Option<u16>,
    dup: bool,
}

/// A persistent subscriber on `crash/#`, with what it received over all rounds.
struct Subscriber {
    name: &'static str,
    version: ProtocolVersion,
    qos: QoS,
    received: Vec<Delivery>,
    /// MQTT "Method B" receiver state, kept across reconnects and broker restarts:
    /// QoS 2 packet ids answered with PUBREC and not yet released by PUBREL, with
    /// the message each one carried. A PUBLISH with such an id is a resend.
    awaiting_release: HashMap<u16, Option<(Source, u64)>>,
    /// QoS 2 resends recognised by their packet id (not new deliveries).
    resends: usize,
    /// Messages on other topics (the retained one).
    others: usize,
    /// Protocol surprises worth failing the test for.
    anomalies: Vec<String>,
    round: usize,
}

impl Subscriber {
    fn new(name: &'static str, version: ProtocolVersion, qos: QoS) -> Subscriber {
        Subscriber {
            name,
            version,
            qos,
            received: Vec::new(),
            awaiting_release: HashMap::new(),
            resends: 0,
            others: 0,
            anomalies: Vec::new(),
            round: 0,
        }
    }

    /// Connects with clean start 0 (5.0: session expiry 3600 s). In the first
    /// round it subscribes; afterwards it must find its session (session present)
    /// and does NOT subscribe again. A missing session goes into `failures`.
    async fn connect(
        &mut self,
        addr: SocketAddr,
        round: usize,
        failures: &mut Vec<String>,
    ) -> Conn {
        self.round = round;
        let mut connect = connect_packet(self.version, self.name);
        connect.clean_start = false;
        if self.version == ProtocolVersion::V5 {
            connect.properties.session_expiry_interval = Some(3600);
        }
        let (mut conn, connack) = Conn::connect(addr, connect).await;
        assert_eq!(
            connack.reason_code,
            ReasonCode::Success,
            "{}: CONNACK refused in round {round}: {connack:?}",
            self.name
        );
        if round == 0 {
            assert!(
                !connack.session_present,
                "{}: a session in a fresh data directory",
                self.name
            );
            self.subscribe(&mut conn).await;
        } else if !connack.session_present {
            failures.push(format!(
                "{}: CONNACK session present = false after restart {round}: the persistent \
                 session (and its subscription to {FILTER}) was lost",
                self.name
            ));
        }
        conn
    }

    async fn subscribe(&mut self, conn: &mut Conn) {
        let packet_id = NonZeroU16::new(1).expect("not zero");
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(
                TopicFilter::copy_from_str(FILTER).expect("a valid filter"),
                SubscriptionOptions::qos(self.qos),
            )],
            properties: Default::default(),
        });
        assert!(conn.send(&subscribe).await, "{}: SUBSCRIBE", self.name);
        let granted = match self.qos {
            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            _ => ReasonCode::GrantedQoS2,
        };
        loop {
            match conn.read(TIMEOUT).await {
                Ok(Packet::SubAck(ack)) => {
                    assert_eq!(ack.packet_id, packet_id, "{}: SUBACK id", self.name);
                    assert_eq!(ack.reason_codes, [granted], "{}: SUBACK", self.name);
                    return;
                }
                Ok(packet) => self.handle(conn, packet).await,
                Err(Gone::Closed) => panic!("{}: connection closed before SUBACK", self.name),
                Err(Gone::TimedOut) => panic!("{}: no SUBACK within {TIMEOUT:?}", self.name),
            }
        }
    }

    /// Receives and acknowledges until the connection closes or, with `idle`,
    /// nothing comes for that long. Without `idle` a silence of [`TIMEOUT`] fails
    /// the test: the broker runs (or should have closed the connection by dying).
    async fn serve(&mut self, conn: &mut Conn, idle: Option<Duration>) -> End {
        loop {
            match conn.read(idle.unwrap_or(TIMEOUT)).await {
                Ok(packet) => self.handle(conn, packet).await,
                Err(Gone::Closed) => return End::Closed,
                Err(Gone::TimedOut) if idle.is_some() => return End::Quiet,
                Err(Gone::TimedOut) => panic!(
                    "{}: nothing from the broker for {TIMEOUT:?} in round {}",
                    self.name, self.round
                ),
            }
        }
    }

    /// Records and acknowledges one packet. A failed write means the broker is
    /// gone; the next read says so.
    async fn handle(&mut self, conn: &mut Conn, packet: Packet) {
        match packet {
            Packet::Publish(publish) => {
                let id = publish.packet_id;
                match (publish.qos, id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        self.record(&publish);
                        conn.send(&Packet::PubAck(PubAck::new(id))).await;
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        let message = self.message_of(&publish);
                        match self.awaiting_release.get(&id.get()) {
                            Some(earlier) => {
                                self.resends += 1;
                                if *earlier != message {
                                    self.anomalies.push(format!(
                                        "{}: QoS 2 packet id {id} awaiting PUBREL (carrying \
                                         {earlier:?}) came again with another message \
                                         {message:?} in round {}",
                                        self.name, self.round
                                    ));
                                }
                                if !publish.dup {
                                    self.anomalies.push(format!(
                                        "{}: QoS 2 resend of packet id {id} ({message:?}) \
                                         without DUP in round {}",
                                        self.name, self.round
                                    ));
                                }
                            }
                            None => {
                                self.awaiting_release.insert(id.get(), message);
                                self.record(&publish);
                            }
                        }
                        conn.send(&Packet::PubRec(PubAck::new(id))).await;
                    }
                    _ => self.anomalies.push(format!(
                        "{}: unexpected {:?} PUBLISH (packet id {id:?}) on {} in round {}",
                        self.name,
                        publish.qos,
                        publish.topic.as_str(),
                        self.round
                    )),
                }
            }
            Packet::PubRel(rel) => {
                self.awaiting_release.remove(&rel.packet_id.get());
                conn.send(&Packet::PubComp(PubAck::new(rel.packet_id)))
                    .await;
            }
            other => panic!(
                "{}: unexpected packet in round {}: {other:?}",
                self.name, self.round
            ),
        }
    }

    fn message_of(&self, publish: &Publish) -> Option<(Source, u64)> {
        let source = Source::of_topic(publish.topic.as_str())?;
        let seq = publish
            .payload
            .get(..8)
            .unwrap_or_else(|| panic!("{}: a payload without a sequence number", self.name));
        Some((source, u64::from_be_bytes(seq.try_into().expect("8 bytes"))))
    }

    fn record(&mut self, publish: &Publish) {
        match self.message_of(publish) {
            Some((source, seq)) => self.received.push(Delivery {
                source,
                seq,
                qos: publish.qos,
                round: self.round,
                packet_id: publish.packet_id.map(NonZeroU16::get),
                dup: publish.dup,
            }),
            None => self.others += 1,
        }
    }
}

/// A clean-session publisher sending numbered messages on one topic with a window
/// of [`WINDOW`] unacknowledged ones. Sequence numbers never repeat across rounds.
struct Publisher {
    name: &'static str,
    version: ProtocolVersion,
    topic: &'static str,
    qos: QoS,
    source: Source,
    next_seq: u64,
    /// Sequence numbers whose PUBACK / PUBREC came with a success code, with the
    /// round each was published in.
    acked: Vec<(u64, usize)>,
    /// Sequence numbers the broker refused, with the reason.
    refused: Vec<(u64, ReasonCode)>,
    round: usize,
}

impl Publisher {
    fn new(
        name: &'static str,
        version: ProtocolVersion,
        topic: &'static str,
        qos: QoS,
        source: Source,
    ) -> Publisher {
        Publisher {
            name,
            version,
            topic,
            qos,
            source,
            next_seq: 1,
            acked: Vec::new(),
            refused: Vec::new(),
            round: 0,
        }
    }

    async fn connect(&mut self, addr: SocketAddr, round: usize) -> Conn {
        self.round = round;
        let (conn, connack) = Conn::connect(addr, connect_packet(self.version, self.name)).await;
        assert_eq!(
            connack.reason_code,
            ReasonCode::Success,
            "{}: CONNACK refused in round {round}: {connack:?}",
            self.name
        );
        conn
    }

    /// Publishes as fast as acknowledgements come back until the connection
    /// closes, or with `batch`, until that many were sent and all answered.
    async fn run(&mut self, conn: &mut Conn, batch: Option<u64>) -> End {
        // Packet id -> (sequence number, PUBREC seen).
        let mut in_flight: HashMap<u16, (u64, bool)> = HashMap::new();
        let mut last_id: u16 = 0;
        let mut sent = 0u64;
        loop {
            while in_flight.len() < WINDOW && batch.is_none_or(|n| sent < n) {
                let id = loop {
                    last_id = last_id.wrapping_add(1).max(1);
                    if !in_flight.contains_key(&last_id) {
                        break NonZeroU16::new(last_id).expect("not zero");
                    }
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                let mut payload = seq.to_be_bytes().to_vec();
                payload.resize(8 + PADDING, b'.');
                let publish = publish_packet(self.topic, &payload, self.qos, false, Some(id));
                if !conn.send(&Packet::Publish(publish)).await {
                    return End::Closed;
                }
                in_flight.insert(id.get(), (seq, false));
                sent += 1;
            }
            if in_flight.is_empty() {
                return End::Done;
            }
            let packet = match conn.read(TIMEOUT).await {
                Ok(packet) => packet,
                Err(Gone::Closed) => return End::Closed,
                Err(Gone::TimedOut) => panic!(
                    "{}: no acknowledgement for {TIMEOUT:?} in round {} ({} in flight)",
                    self.name,
                    self.round,
                    in_flight.len()
                ),
            };
            match (self.qos, packet) {
                (QoS::AtLeastOnce, Packet::PubAck(ack)) => {
                    let (seq, _) = in_flight
                        .remove(&ack.packet_id.get())
                        .unwrap_or_else(|| panic!("{}: PUBACK for unknown {ack:?}", self.name));
                    self.answered(seq, ack.reason_code);
                }
                (QoS::ExactlyOnce, Packet::PubRec(rec)) => {
                    let id = rec.packet_id;
                    let entry = in_flight
                        .get_mut(&id.get())
                        .unwrap_or_else(|| panic!("{}: PUBREC for unknown {rec:?}", self.name));
                    if entry.1 {
                        panic!("{}: a second PUBREC for {rec:?}", self.name);
                    }
                    entry.1 = true;
                    let seq = entry.0;
                    self.answered(seq, rec.reason_code);
                    if rec.reason_code.is_success() {
                        if !conn.send(&Packet::PubRel(PubAck::new(id))).await {
                            return End::Closed;
                        }
                    } else {
                        // An error PUBREC ends the exchange (5.0, 4.3.3).
                        in_flight.remove(&id.get());
                    }
                }
                (QoS::ExactlyOnce, Packet::PubComp(comp)) => {
                    match in_flight.remove(&comp.packet_id.get()) {
                        Some((_, true)) => {}
                        other => panic!(
                            "{}: PUBCOMP {comp:?} for a packet in state {other:?}",
                            self.name
                        ),
                    }
                }
                (_, other) => panic!(
                    "{}: unexpected packet in round {}: {other:?}",
                    self.name, self.round
                ),
            }
        }
    }

    fn answered(&mut self, seq: u64, code: ReasonCode) {
        if code.is_success() {
            self.acked.push((seq, self.round));
        } else {
            self.refused.push((seq, code));
        }
    }
}

/// The first `n` items of a list, for failure messages that stay readable.
fn first_few<T: std::fmt::Debug>(items: &[T], n: usize) -> String {
    if items.len() <= n {
        format!("{items:?}")
    } else {
        format!("{:?} and {} more", &items[..n], items.len() - n)
    }
}

/// Checks `sub` against what `publisher` had acknowledged; failures go into
/// `failures`. Returns (deliveries, duplicate deliveries) for the report.
fn check(
    sub: &Subscriber,
    publisher: &Publisher,
    exactly_once: bool,
    failures: &mut Vec<String>,
) -> (usize, usize) {
    let expected_qos = if exactly_once {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut counts: HashMap<u64, usize> = HashMap::new();
    // Every delivery of a message: (round, packet id, DUP flag).
    let mut deliveries: HashMap<u64, Vec<(usize, Option<u16>, bool)>> = HashMap::new();
    let mut firsts: Vec<(u64, usize)> = Vec::new();
    let mut wrong_qos = Vec::new();
    for d in sub.received.iter().filter(|d| d.source == publisher.source) {
        let count = counts.entry(d.seq).or_default();
        if *count == 0 {
            firsts.push((d.seq, d.round));
        }
        *count += 1;
        deliveries
            .entry(d.seq)
            .or_default()
            .push((d.round, d.packet_id, d.dup));
        if d.qos != expected_qos {
            wrong_qos.push((d.seq, d.qos));
        }
    }
    let delivered: usize = counts.values().sum();
    let duplicates = delivered - counts.len();
    let what = format!(
        "{} ({:?} on {}) -> {} ({:?} subscription)",
        publisher.name, publisher.qos, publisher.topic, sub.name, sub.qos
    );

    let lost: Vec<(u64, usize)> = publisher
        .acked
        .iter()
        .copied()
        .filter(|(seq, _)| !counts.contains_key(seq))
        .collect();
    if !lost.is_empty() {
        failures.push(format!(
            "{what}: LOST {} of {} acknowledged messages; (seq, round published): {}",
            lost.len(),
            publisher.acked.len(),
            first_few(&lost, 30)
        ));
    }
    if exactly_once {
        let acked: HashSet<u64> = publisher.acked.iter().map(|(seq, _)| *seq).collect();
        let mut twice: Vec<_> = deliveries
            .iter()
            .filter(|(_, all)| all.len() > 1)
            .map(|(&seq, all)| (seq, acked.contains(&seq), all.clone()))
            .collect();
        twice.sort_unstable_by_key(|(seq, _, _)| *seq);
        if !twice.is_empty() {
            failures.push(format!(
                "{what}: DUPLICATED at QoS 2 (exactly once): {} messages; (seq, acknowledged, \
                 [(round, packet id, DUP)]): {}",
                twice.len(),
                first_few(&twice, 30)
            ));
        }
    }
    let disorder: Vec<String> = firsts
        .windows(2)
        .filter(|w| w[1].0 <= w[0].0)
        .map(|w| {
            format!(
                "seq {} (round {}) first came after seq {} (round {})",
                w[1].0, w[1].1, w[0].0, w[0].1
            )
        })
        .collect();
    if !disorder.is_empty() {
        failures.push(format!(
            "{what}: OUT OF ORDER ({} times): {}",
            disorder.len(),
            first_few(&disorder, 10)
        ));
    }
    if !wrong_qos.is_empty() {
        failures.push(format!(
            "{what}: delivered at the wrong QoS (expected {expected_qos:?}); (seq, qos): {}",
            first_few(&wrong_qos, 10)
        ));
    }
    (delivered, duplicates)
}

#[tokio::test]
async fn acknowledged_messages_sessions_and_retained_survive_sigkill_at_random_moments() {
    let runtime = Runtime::from_env();
    let seed = seed();
    eprintln!("crash test seed: {seed} (replay with CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let in_memory = std::env::var("BROKK_CRASH_IN_MEMORY").is_ok_and(|v| v == "1");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut args: Vec<OsString> = vec!["--listen".into(), "127.0.0.1:0".into()];
    if in_memory {
        eprintln!("BROKK_CRASH_IN_MEMORY=1: running on --in-memory; this run must fail");
        args.push("--in-memory".into());
    } else {
        args.push("--data-dir".into());
        args.push(data_dir.clone().into());
    }

    let mut sub1 = Subscriber::new("crash-sub1", ProtocolVersion::V5, QoS::AtLeastOnce);
    let mut sub2 = Subscriber::new("crash-sub2", ProtocolVersion::V3_1_1, QoS::ExactlyOnce);
    let mut pub1 = Publisher::new(
        "crash-pub1",
        ProtocolVersion::V5,
        "crash/p1",
        QoS::AtLeastOnce,
        Source::P1,
    );
    let mut pub2 = Publisher::new(
        "crash-pub2",
        ProtocolVersion::V3_1_1,
        "crash/p2",
        QoS::ExactlyOnce,
        Source::P2,
    );
    let mut failures: Vec<String> = Vec::new();
    let started = std::time::Instant::now();

    for round in 0..CRASHES {
        let mut brokk = BrokkProcess::spawn(runtime, &args, 1).await;
        let addr = brokk.addr(ListenerKind::Mqtt);
        if round == 0 {
            let mut setter = RawClient::connect(addr, ProtocolVersion::V5, "crash-retain").await;
            setter
                .publish(RETAINED_TOPIC, RETAINED_PAYLOAD, QoS::AtLeastOnce, true)
                .await;
            setter.disconnect().await;
        }
        // Subscribers first, so that nothing is published while their sessions are
        // offline (where the small offline queue could overflow).
        let mut c1 = sub1.connect(addr, round, &mut failures).await;
        let mut c2 = sub2.connect(addr, round, &mut failures).await;
        let mut p1 = pub1.connect(addr, round).await;
        let mut p2 = pub2.connect(addr, round).await;
        let run_for = Duration::from_millis(rng.between(300, 1200));
        let acked_before = (pub1.acked.len(), pub2.acked.len());
        let (e1, e2, e3, e4, status) = tokio::join!(
            sub1.serve(&mut c1, None),
            sub2.serve(&mut c2, None),
            pub1.run(&mut p1, None),
            pub2.run(&mut p2, None),
            async {
                tokio::time::sleep(run_for).await;
                brokk.signal(libc::SIGKILL);
                brokk.wait(EXIT_LIMIT).await
            },
        );
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "brokk was to die of SIGKILL in round {round}, ended {status}\n--- stderr\n{}",
            brokk.stderr()
        );
        for (who, end) in [
            (sub1.name, e1),
            (sub2.name, e2),
            (pub1.name, e3),
            (pub2.name, e4),
        ] {
            assert_eq!(end, End::Closed, "{who} in round {round}");
        }
        eprintln!(
            "round {round}: SIGKILL after {run_for:?}; acknowledged this round: pub1 {}, \
             pub2 {}; received so far: sub1 {}, sub2 {}",
            pub1.acked.len() - acked_before.0,
            pub2.acked.len() - acked_before.1,
            sub1.received.len(),
            sub2.received.len()
        );
    }

    // The final restart: the sessions come back, resend what is in flight, and
    // route a last batch from each publisher without a new SUBSCRIBE.
    let round = CRASHES;
    let brokk = BrokkProcess::spawn(runtime, &args, 1).await;
    let addr = brokk.addr(ListenerKind::Mqtt);
    let mut c1 = sub1.connect(addr, round, &mut failures).await;
    let mut c2 = sub2.connect(addr, round, &mut failures).await;
    let mut p1 = pub1.connect(addr, round).await;
    let mut p2 = pub2.connect(addr, round).await;
    let refused_before = (pub1.refused.len(), pub2.refused.len());
    let (e1, e2, e3, e4) = within_for(Duration::from_secs(30), "the final round", async {
        tokio::join!(
            pub1.run(&mut p1, Some(FINAL_BATCH)),
            pub2.run(&mut p2, Some(FINAL_BATCH)),
            sub1.serve(&mut c1, Some(QUIET)),
            sub2.serve(&mut c2, Some(QUIET)),
        )
    })
    .await;
    assert_eq!((e1, e2), (End::Done, End::Done), "final batches");
    assert_eq!(
        (pub1.refused.len(), pub2.refused.len()),
        refused_before,
        "the broker refused messages of the final batch: pub1 {:?}, pub2 {:?}",
        pub1.refused,
        pub2.refused
    );
    // Drain: the subscribers stop once nothing has come for QUIET after the batch.
    let (e5, e6) = within_for(Duration::from_secs(30), "the final drain", async {
        tokio::join!(
            sub1.serve(&mut c1, Some(QUIET)),
            sub2.serve(&mut c2, Some(QUIET))
        )
    })
    .await;
    for (who, end) in [
        (sub1.name, e3),
        (sub2.name, e4),
        (sub1.name, e5),
        (sub2.name, e6),
    ] {
        assert_eq!(end, End::Quiet, "{who}: the broker closed the connection");
    }

    // The retained message survived every crash.
    let mut fresh = RawClient::connect(addr, ProtocolVersion::V5, "crash-retained-check").await;
    fresh.subscribe(RETAINED_TOPIC, QoS::AtLeastOnce).await;
    match fresh.next(Duration::from_secs(3)).await {
        brokk_e2e::raw::Next::Packet(packet, _) => match *packet {
            Packet::Publish(p) => {
                assert_eq!(p.topic.as_str(), RETAINED_TOPIC);
                if !p.retain || &p.payload[..] != RETAINED_PAYLOAD {
                    failures.push(format!(
                        "the retained message on {RETAINED_TOPIC} changed: {p:?}"
                    ));
                }
            }
            other => panic!("expected the retained PUBLISH, got {other:?}"),
        },
        other => failures.push(format!(
            "the retained message on {RETAINED_TOPIC} was lost: a new subscriber got {other:?}"
        )),
    }

    let (d11, dup11) = check(&sub1, &pub1, false, &mut failures);
    let (d12, dup12) = check(&sub1, &pub2, false, &mut failures);
    let (d21, dup21) = check(&sub2, &pub1, false, &mut failures);
    let (d22, dup22) = check(&sub2, &pub2, true, &mut failures);
    for sub in [&sub1, &sub2] {
        if !sub.anomalies.is_empty() {
            failures.push(format!(
                "{}: {} protocol anomalies: {}",
                sub.name,
                sub.anomalies.len(),
                first_few(&sub.anomalies, 10)
            ));
        }
    }
    if !sub2.awaiting_release.is_empty() {
        let acked: HashSet<u64> = pub2.acked.iter().map(|(seq, _)| *seq).collect();
        let mut pending: Vec<_> = sub2
            .awaiting_release
            .iter()
            .map(|(&id, &message)| {
                let acknowledged = message.is_some_and(|(_, seq)| acked.contains(&seq));
                (id, message, acknowledged)
            })
            .collect();
        pending.sort_unstable_by_key(|(id, _, _)| *id);
        failures.push(format!(
            "{}: {} QoS 2 packet ids answered with PUBREC and never released by PUBREL; \
             (packet id, message, acknowledged to its publisher): {}",
            sub2.name,
            pending.len(),
            first_few(&pending, 40)
        ));
    }

    eprintln!(
        "crash test: {CRASHES} SIGKILLs + final restart in {:.1?}; seed {seed}",
        started.elapsed()
    );
    eprintln!(
        "  acknowledged: pub1 (QoS 1) {} (refused {}), pub2 (QoS 2) {} (refused {}); \
         sent: pub1 {}, pub2 {}",
        pub1.acked.len(),
        pub1.refused.len(),
        pub2.acked.len(),
        pub2.refused.len(),
        pub1.next_seq - 1,
        pub2.next_seq - 1
    );
    eprintln!("  sub1 (5.0, QoS 1): from pub1 {d11} delivered, {dup11} duplicates; from pub2 {d12} delivered, {dup12} duplicates; other topics {}", sub1.others);
    eprintln!(
        "  sub2 (3.1.1, QoS 2): from pub1 {d21} delivered, {dup21} duplicates; from pub2 {d22} \
         delivered, {dup22} duplicates; QoS 2 resends recognised by packet id {}; other topics {}",
        sub2.resends, sub2.others
    );
    assert!(
        failures.is_empty(),
        "{} failure(s) after {CRASHES} crashes (seed {seed}, replay with CRASH_SEED={seed}):\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}
