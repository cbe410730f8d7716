//! Several brokk nodes acting as one broker over NATS with JetStream (issue 21):
//! a 3-server NATS cluster with JetStream and 3 brokk binaries on loopback, each
//! node connected to a different NATS server first.
//!
//! - messages cross nodes at QoS 0, 1 and 2 between 3.1.1 and 5.0 clients, with
//!   their properties, once per subscriber even through overlapping filters;
//! - a shared subscription with members on every node gets each message once in
//!   the whole cluster;
//! - a retained message set on one node is seen from every node, and cleared
//!   from another;
//! - a client that connects to another node with the same client identifier
//!   takes its session over: the old connection gets DISCONNECT 0x8E;
//! - a brokk node killed with SIGKILL while a publisher's QoS 1 messages flow
//!   through it: the publisher reconnects to another node and resends what was
//!   not acknowledged; the subscriber on a third node has every message that
//!   was acknowledged;
//! - the node of two persistent subscribers killed with SIGKILL while QoS 1
//!   messages flow to it: the clients come back at once on two other nodes and
//!   find every acknowledged message (one node adopts the dead one's sessions
//!   and queue; the other gets its session from the adopter);
//! - a NATS server killed: the nodes that used it reconnect to another one, and
//!   messages and retained messages (3 JetStream replicas) keep working.
//!
//! Interest travels between nodes asynchronously (a SUBACK on one node does not
//! wait for the others to learn of it), so each scenario first sends probes
//! until one arrives.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use adapter_common::config::ListenerKind;
use brokk_e2e::nats::NatsCluster;
use brokk_e2e::raw::{publish_packet, Next, RawClient};
use brokk_e2e::{within, within_for, BrokkProcess, Runtime, TIMEOUT};
use bytes::Bytes;
use mqtt_proto::{
    Packet, ProtocolVersion, PubAck, Publish, PublishProperties, QoS, ReasonCode, TopicName,
    UserProperties,
};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// One scenario at a time: each starts 6 processes, and on two cores three
/// clusters at once starve each other's NATS elections and reconnections.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a node may take to reconnect to another NATS server and subscribe
/// again there (async-nats backs off between attempts).
const RECONNECT: Duration = Duration::from_secs(60);
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// The NATS cluster and the brokk nodes, node `i` connected to NATS server `i`
/// first.
struct Cluster {
    nats: NatsCluster,
    nodes: Vec<Option<BrokkProcess>>,
    dir: tempfile::TempDir,
    /// The end of every node's config file.
    extra: String,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, "").await
    }

    /// Nodes whose config files end with `extra` (TOML).
    async fn start_with(n: usize, extra: &str) -> Cluster {
        let nats = NatsCluster::start(n).await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut cluster = Cluster {
            nats,
            nodes: Vec::new(),
            dir,
            extra: extra.to_owned(),
        };
        for i in 0..n {
            let node = cluster.spawn(i, &format!("node-{i}")).await;
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    /// Starts node `id` with NATS server `i` first.
    async fn spawn(&self, i: usize, id: &str) -> BrokkProcess {
        BrokkProcess::spawn(Runtime::from_env(), self.node_args(i, id), 2).await
    }

    /// Runs node `id` (NATS server `i` first) expecting it to refuse to start.
    async fn refused(&self, i: usize, id: &str) -> std::process::Output {
        let args = self.node_args(i, id);
        BrokkProcess::run(Runtime::from_env(), args, "", Duration::from_secs(60)).await
    }

    /// The command line of node `id` (its config file written).
    fn node_args(&self, i: usize, id: &str) -> Vec<OsString> {
        let servers: Vec<String> = self
            .nats
            .urls_from(i)
            .iter()
            .map(|u| format!("{u:?}"))
            .collect();
        let config = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "[cluster]\nnode_id = \"{id}\"\nnats = [{}]\nreplicas = 3\nconnect_timeout_secs = 30\n{}",
                servers.join(", "),
                self.extra
            ),
        )
        .expect("write the node's config");
        let args: Vec<OsString> = vec![
            "--config".into(),
            config.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--listen".into(),
            "http://127.0.0.1:0".into(),
            "--in-memory".into(),
        ];
        args
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i]
            .as_ref()
            .expect("the node is running")
            .addr(ListenerKind::Mqtt)
    }

    /// The value of a metric without labels in node `i`'s `GET /metrics`.
    async fn metric(&self, i: usize, name: &str) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let http = self.nodes[i]
            .as_ref()
            .expect("the node is running")
            .addr(ListenerKind::Http);
        let mut stream = tokio::net::TcpStream::connect(http)
            .await
            .expect("connect to the HTTP listener");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: brokk\r\nConnection: close\r\n\r\n")
            .await
            .expect("send GET /metrics");
        let mut text = String::new();
        within("GET /metrics", stream.read_to_string(&mut text))
            .await
            .expect("read GET /metrics");
        text.lines()
            .find_map(|line| {
                let (n, v) = line.split_once(' ')?;
                (n == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// What the nodes logged, for a failure's message.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| format!("--- node-{i}\n{}", n.stderr())))
            .collect()
    }

    /// A client connected to node `i` with a clean session (the nodes' logs
    /// in the failure if it is not).
    async fn client(&self, i: usize, version: ProtocolVersion, id: &str) -> RawClient {
        self.connect(i, brokk_e2e::raw::connect_packet(version, id))
            .await
    }

    /// Sends `connect` to node `i` and expects CONNACK 0x00. While JetStream
    /// fails over (a NATS server died) a node answers 0x88 Server unavailable,
    /// and the client tries again, as clients do.
    async fn connect(&self, i: usize, connect: mqtt_proto::Connect) -> RawClient {
        let id = connect.client_id.as_str().to_owned();
        let deadline = tokio::time::Instant::now() + RECONNECT;
        loop {
            let mut client = RawClient::open(self.addr(i), connect.protocol).await;
            client
                .send(&Packet::Connect(Box::new(connect.clone())))
                .await;
            match client.next(TIMEOUT).await {
                Next::Packet(p, _) => match *p {
                    Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => {
                        return client
                    }
                    Packet::ConnAck(ack)
                        if ack.reason_code == ReasonCode::ServerUnavailable
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => panic!(
                        "{id} on node {i}: expected CONNACK 0x00, got {other:?}\n{}",
                        self.logs()
                    ),
                },
                other => panic!(
                    "no CONNACK for {id} on node {i}: {other:?}\n{}",
                    self.logs()
                ),
            }
        }
    }
}

/// Publishes QoS 0 probes on `topic` from `publisher` until `subscriber` gets
/// one (the subscriber's node has announced its interest), then takes every
/// probe still on its way.
async fn until_routed(publisher: &mut RawClient, subscriber: &mut RawClient, topic: &str) {
    until_routed_within(TIMEOUT, publisher, subscriber, topic).await;
}

async fn until_routed_within(
    limit: Duration,
    publisher: &mut RawClient,
    subscriber: &mut RawClient,
    topic: &str,
) {
    within_for(limit, "interest to reach the publisher's node", async {
        loop {
            publisher
                .publish(topic, b"probe", QoS::AtMostOnce, false)
                .await;
            if let Next::Packet(p, _) = subscriber.next(Duration::from_millis(200)).await {
                if let Packet::Publish(p) = *p {
                    assert_eq!(p.topic.as_str(), topic, "only probes so far");
                    break;
                }
            }
        }
    })
    .await;
    quiet(subscriber, Duration::from_millis(300)).await;
}

/// Reads and drops whatever arrives until nothing has for `gap`.
async fn quiet(client: &mut RawClient, gap: Duration) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        match client.next(gap).await {
            Next::Packet(p, _) => {
                if let Packet::Publish(p) = *p {
                    ack(client, &p).await;
                    got.push(p);
                }
            }
            Next::Closed | Next::TimedOut => return got,
        }
    }
}

/// Acknowledges a received PUBLISH as its QoS asks (QoS 2: PUBREC, and the
/// PUBREL/PUBCOMP exchange is left to `recv_publish`'s caller when needed).
async fn ack(client: &mut RawClient, p: &Publish) {
    if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
        client.send(&Packet::PubAck(PubAck::new(id))).await;
    }
}

/// The next PUBLISH other than probes, acknowledged.
async fn next_message(client: &mut RawClient) -> Publish {
    loop {
        let p = client.recv_publish().await;
        if p.topic.as_str().ends_with("/probe") {
            continue;
        }
        return p;
    }
}

#[tokio::test]
async fn messages_retained_shared_and_takeover_cross_nodes() {
    let _one_at_a_time = SERIAL.lock().await;
    let cluster = Cluster::start(3).await;

    // --- pub/sub at QoS 0, 1 and 2 between 3.1.1 and 5.0, across nodes.
    let mut sub5 = cluster.client(0, V5, "sub-5").await;
    assert_eq!(
        sub5.subscribe("x/#", QoS::ExactlyOnce).await,
        ReasonCode::GrantedQoS2
    );
    // Overlapping filters on one node: still one delivery (dedup of NATS copies
    // and MQTT's own merging).
    assert_eq!(
        sub5.subscribe("x/+", QoS::ExactlyOnce).await,
        ReasonCode::GrantedQoS2
    );
    let mut sub3 = cluster.client(2, V311, "sub-311").await;
    assert_eq!(
        sub3.subscribe("x/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut pub3 = cluster.client(1, V311, "pub-311").await;
    until_routed(&mut pub3, &mut sub5, "x/probe").await;
    until_routed(&mut pub3, &mut sub3, "x/probe").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let payload = format!("from 3.1.1 at {qos:?}");
        pub3.publish("x/a", payload.as_bytes(), qos, false).await;
        let got = next_message(&mut sub5).await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("x/a", payload.as_bytes())
        );
        assert_eq!(
            got.qos, qos,
            "5.0 subscriber at QoS 2 gets the published QoS"
        );
        let got = next_message(&mut sub3).await;
        assert_eq!(&got.payload[..], payload.as_bytes());
        assert_eq!(got.qos, qos.min(QoS::AtLeastOnce));
    }
    // 5.0 properties travel with the message.
    let mut pub5 = cluster.client(2, V5, "pub-5").await;
    let mut p = publish_packet(
        "x/props",
        b"with properties",
        QoS::AtLeastOnce,
        false,
        NonZeroU16::new(7),
    );
    p.properties = PublishProperties {
        content_type: Some(mqtt_proto::MqttString::copy_from_str("text/plain").expect("valid")),
        response_topic: Some(TopicName::copy_from_str("reply/here").expect("valid")),
        correlation_data: Some(Bytes::from_static(b"\x00corr\r\n")),
        message_expiry_interval: Some(3600),
        user_properties: UserProperties::from_pairs([("k", "v 1"), ("k", "=v2"), ("é", "日本")])
            .expect("valid pairs"),
        ..PublishProperties::default()
    };
    pub5.send(&Packet::Publish(p.clone())).await;
    match pub5.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let got = next_message(&mut sub5).await;
    assert_eq!(got.payload, p.payload);
    assert_eq!(got.properties.content_type, p.properties.content_type);
    assert_eq!(got.properties.response_topic, p.properties.response_topic);
    assert_eq!(
        got.properties.correlation_data,
        p.properties.correlation_data
    );
    assert_eq!(got.properties.user_properties, p.properties.user_properties);
    let expiry = got.properties.message_expiry_interval.expect("expiry kept");
    assert!((3590..=3600).contains(&expiry), "{expiry}");
    // Nothing twice.
    let extra: Vec<_> = quiet(&mut sub5, Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|p| !p.topic.as_str().ends_with("/probe"))
        .collect();
    assert!(extra.is_empty(), "duplicates: {extra:?}");

    // --- a shared subscription with a member on every node.
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = cluster.client(i, V5, &format!("worker-{i}")).await;
        assert_eq!(
            m.subscribe("$share/w/jobs/#", QoS::AtLeastOnce).await,
            ReasonCode::GrantedQoS1
        );
        members.push(m);
    }
    let mut boss = cluster.client(0, V5, "boss").await;
    // Each member's node has joined the queue group once a probe reached it.
    for m in members.iter_mut() {
        within("every member to receive a probe", async {
            loop {
                boss.publish("jobs/probe", b"probe", QoS::AtMostOnce, false)
                    .await;
                if let Next::Packet(p, _) = m.next(Duration::from_millis(100)).await {
                    if matches!(*p, Packet::Publish(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }
    for m in members.iter_mut() {
        quiet(m, Duration::from_millis(300)).await;
    }
    const JOBS: usize = 60;
    for n in 0..JOBS {
        boss.publish(
            "jobs/x",
            format!("job {n}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node = [0usize; 3];
    within("every job to reach one member", async {
        while seen.values().sum::<usize>() < JOBS {
            for (i, m) in members.iter_mut().enumerate() {
                if let Next::Packet(p, _) = m.next(Duration::from_millis(50)).await {
                    if let Packet::Publish(p) = *p {
                        ack(m, &p).await;
                        if p.topic.as_str() == "jobs/x" {
                            *seen
                                .entry(String::from_utf8_lossy(&p.payload).into())
                                .or_default() += 1;
                            per_node[i] += 1;
                        }
                    }
                }
            }
        }
    })
    .await;
    for m in members.iter_mut() {
        for p in quiet(m, Duration::from_millis(300)).await {
            if p.topic.as_str() == "jobs/x" {
                *seen
                    .entry(String::from_utf8_lossy(&p.payload).into())
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(seen.len(), JOBS, "every job arrived: {seen:?}");
    assert!(
        seen.values().all(|&n| n == 1),
        "each job once in the cluster: {seen:?}"
    );
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() >= 2,
        "the cluster spread the jobs over its nodes: {per_node:?}"
    );

    // --- retained: set on node 0, seen from nodes 1 and 2, cleared from node 2.
    let mut setter = cluster.client(0, V311, "setter").await;
    setter
        .publish("status/door", b"open", QoS::AtLeastOnce, true)
        .await;
    for i in [1, 2, 0] {
        let got = retained_from(&cluster, i, "status/door").await;
        assert_eq!(got.as_deref(), Some(&b"open"[..]), "node {i}");
    }
    let mut clearer = cluster.client(2, V5, "clearer").await;
    clearer
        .publish("status/door", b"", QoS::AtLeastOnce, true)
        .await;
    let cleared = tokio::time::timeout(TIMEOUT, async {
        while retained_once(&cluster, 0, "status/door").await.is_some() {}
    })
    .await;
    assert!(
        cleared.is_ok(),
        "the clearing did not reach node 0\n{}",
        cluster.logs()
    );
    assert_eq!(retained_from(&cluster, 1, "status/door").await, None);

    // --- takeover across nodes.
    let mut first = cluster.client(0, V5, "device-7").await;
    first.round_trip("device-7/self").await;
    let mut second = cluster.client(1, V5, "device-7").await;
    first
        .expect_disconnect(ReasonCode::SessionTakenOver, TIMEOUT)
        .await;
    second.round_trip("device-7/self").await;
    // A 3.1.1 client is closed without DISCONNECT.
    let mut old311 = cluster.client(2, V311, "device-8").await;
    old311.round_trip("device-8/self").await;
    let _new311 = cluster.client(0, V311, "device-8").await;
    let before = old311.expect_closed(TIMEOUT).await;
    assert!(
        before.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {before:?}"
    );
}

/// The retained message node `i` has for `topic` (a fresh subscriber's view):
/// `None` when it sends none within a short wait.
async fn retained_from(cluster: &Cluster, i: usize, topic: &str) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = retained_once(cluster, i, topic).await;
        if got.is_some() || tokio::time::Instant::now() >= deadline {
            return got;
        }
        // Nothing yet: the retained message may still be on its way to node i.
        if tokio::time::Instant::now() + Duration::from_millis(300) >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a new subscriber on node `i` gets as the retained message of
/// `topic` within 300 ms.
async fn retained_once(cluster: &Cluster, i: usize, topic: &str) -> Option<Vec<u8>> {
    let mut c = cluster.client(i, V5, &format!("reader-{i}")).await;
    c.subscribe(topic, QoS::AtMostOnce).await;
    let got = match c.next(Duration::from_millis(300)).await {
        Next::Packet(p, _) => match *p {
            Packet::Publish(p) => {
                assert!(p.retain, "a retained message has RETAIN set");
                Some(p.payload.to_vec())
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        },
        Next::TimedOut => None,
        Next::Closed => panic!("node {i} closed the reader"),
    };
    c.disconnect().await;
    got
}

#[tokio::test]
async fn a_brokk_node_killed_with_sigkill_loses_no_acknowledged_message() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    let mut sub = cluster.client(0, V5, "watcher").await;
    assert_eq!(
        sub.subscribe("kill/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut publisher = cluster.client(2, V5, "sender").await;
    until_routed(&mut publisher, &mut sub, "kill/probe").await;

    // The publisher keeps up to WINDOW QoS 1 messages in flight through node 2;
    // node 2 is killed while they flow.
    const WINDOW: u64 = 16;
    const TOTAL: u64 = 3_000;
    let mut acked: HashSet<u64> = HashSet::new();
    let mut next = 0u64;
    let mut in_flight: BTreeMap<u16, u64> = BTreeMap::new();
    let mut killed = false;
    'flow: loop {
        while (in_flight.len() as u64) < WINDOW && next < TOTAL {
            let id = (next % 60_000 + 1) as u16;
            let p = publish_packet(
                "kill/seq",
                &next.to_be_bytes(),
                QoS::AtLeastOnce,
                false,
                NonZeroU16::new(id),
            );
            in_flight.insert(id, next);
            next += 1;
            // Once its node is killed, a write may fail: the client reconnects.
            if let Err(e) = publisher.try_send(&Packet::Publish(p)).await {
                assert!(killed, "write to node 2 failed before it was killed: {e}");
                break 'flow;
            }
        }
        if !killed && next >= TOTAL / 3 {
            let node = cluster.nodes[2].take().expect("node 2 runs");
            node.signal(libc::SIGKILL);
            drop(node);
            killed = true;
        }
        match publisher.next(TIMEOUT).await {
            Next::Packet(p, _) => match *p {
                Packet::PubAck(a) => {
                    if let Some(seq) = in_flight.remove(&a.packet_id.get()) {
                        acked.insert(seq);
                    }
                    if next == TOTAL && in_flight.is_empty() {
                        break 'flow;
                    }
                }
                other => panic!("expected PUBACK, got {other:?}"),
            },
            Next::Closed => break 'flow,
            Next::TimedOut => panic!("no PUBACK within {TIMEOUT:?}"),
        }
    }
    assert!(killed, "node 2 was killed while messages flowed");
    assert!(
        next < TOTAL || !in_flight.is_empty(),
        "the kill interrupted the flow"
    );
    // As a client does: reconnect elsewhere and send again what was not
    // acknowledged (QoS 1 allows the duplicates), then the rest.
    let mut publisher = cluster.client(1, V5, "sender").await;
    let resend: Vec<u64> = in_flight.values().copied().chain(next..TOTAL).collect();
    for chunk in resend.chunks(WINDOW as usize) {
        for &seq in chunk {
            let id = (seq % 60_000 + 1) as u16;
            let p = publish_packet(
                "kill/seq",
                &seq.to_be_bytes(),
                QoS::AtLeastOnce,
                false,
                NonZeroU16::new(id),
            );
            publisher.send(&Packet::Publish(p)).await;
        }
        for _ in chunk {
            match publisher.recv().await {
                Packet::PubAck(a) => {
                    let seq = chunk
                        .iter()
                        .copied()
                        .find(|s| (s % 60_000 + 1) as u16 == a.packet_id.get())
                        .expect("a PUBACK for a message in this chunk");
                    acked.insert(seq);
                }
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }
    assert_eq!(
        acked.len() as u64,
        TOTAL,
        "every message acknowledged in the end"
    );
    // The subscriber on node 0 has every acknowledged message, in order apart
    // from the resent ones.
    let mut got: HashSet<u64> = HashSet::new();
    let mut last = None;
    let mut resent_seen = 0usize;
    // Until every acknowledged message is in, or nothing more comes.
    while !acked.is_subset(&got) {
        let p = match sub.next(Duration::from_secs(5)).await {
            Next::Packet(p, _) => match *p {
                Packet::Publish(p) => {
                    ack(&mut sub, &p).await;
                    p
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            },
            Next::Closed | Next::TimedOut => break,
        };
        if p.topic.as_str() != "kill/seq" {
            continue;
        }
        {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p.payload[..8]);
            let seq = u64::from_be_bytes(b);
            if last.is_some_and(|l| seq <= l) {
                resent_seen += 1;
            }
            last = Some(seq);
            got.insert(seq);
        }
    }
    let missing: Vec<u64> = acked.difference(&got).copied().collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    assert!(
        resent_seen <= WINDOW as usize,
        "only resent messages come out of order: {resent_seen}"
    );
}

/// A CONNECT that resumes (or starts) a persistent session: 5.0 with an hour
/// of session expiry, 3.1.1 with Clean Session 0.
fn persistent(version: ProtocolVersion, id: &str) -> mqtt_proto::Connect {
    let mut c = brokk_e2e::raw::connect_packet(version, id);
    c.clean_start = false;
    if version == V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

/// `n` messages (acknowledged as their QoS asks), as (topic, payload byte).
async fn receive(client: &mut RawClient, n: usize) -> Vec<(String, u8)> {
    let mut got = Vec::new();
    within("the queued messages", async {
        while got.len() < n {
            let p = client.recv_publish().await;
            if p.topic.as_str().ends_with("/probe") {
                continue;
            }
            got.push((p.topic.as_str().to_owned(), p.payload[0]));
        }
    })
    .await;
    got
}

/// Connects a persistent session on node `i`; returns it and Session Present.
async fn resume(
    cluster: &Cluster,
    i: usize,
    version: ProtocolVersion,
    id: &str,
) -> (RawClient, bool) {
    let mut client = RawClient::open(cluster.addr(i), version).await;
    client
        .send(&Packet::Connect(Box::new(persistent(version, id))))
        .await;
    let ack = match client.next(TIMEOUT).await {
        Next::Packet(p, _) => match *p {
            Packet::ConnAck(ack) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        },
        other => panic!(
            "no CONNACK for {id} on node {i}: {other:?}\n{}",
            cluster.logs()
        ),
    };
    assert_eq!(
        ack.reason_code,
        ReasonCode::Success,
        "{id} on node {i}\n{}",
        cluster.logs()
    );
    (client, ack.session_present)
}

#[tokio::test]
async fn a_persistent_session_moves_with_its_queue_and_outlives_its_node() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut cluster =
        Cluster::start_with(3, "[limits]\nmax_sessions_per_authentication_name = 2\n").await;
    // A 5.0 session at QoS 1 and a 3.1.1 session at QoS 2, on node 0.
    let (mut a, present) = resume(&cluster, 0, V5, "mover-5").await;
    assert!(!present);
    assert_eq!(
        a.subscribe("move/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let (mut b, _) = resume(&cluster, 0, V311, "mover-3").await;
    assert_eq!(
        b.subscribe("move/#", QoS::ExactlyOnce).await,
        ReasonCode::GrantedQoS2
    );
    let mut watch0 = cluster.client(0, V5, "watch-0").await;
    watch0.subscribe("move/#", QoS::AtLeastOnce).await;
    let mut publisher = cluster.client(1, V5, "move-pub").await;
    until_routed(&mut publisher, &mut a, "move/probe").await;
    quiet(&mut b, Duration::from_millis(300)).await;
    quiet(&mut watch0, Duration::from_millis(300)).await;

    // Offline, 20 QoS 1 and 20 QoS 2 messages are queued for them on node 0
    // (a watcher there sees all of them go by).
    a.disconnect().await;
    b.disconnect().await;
    for i in 0..20u8 {
        publisher
            .publish("move/q1", &[i], QoS::AtLeastOnce, false)
            .await;
    }
    for i in 0..20u8 {
        publisher
            .publish("move/q2", &[i], QoS::ExactlyOnce, false)
            .await;
    }
    assert_eq!(receive(&mut watch0, 40).await.len(), 40);

    // They come back on node 2: the session is there with everything queued,
    // in order, QoS 2 once; node 0 let it go.
    let expected: Vec<(String, u8)> = (0..20u8)
        .map(|i| ("move/q1".to_owned(), i))
        .chain((0..20u8).map(|i| ("move/q2".to_owned(), i)))
        .collect();
    let (mut a, present) = resume(&cluster, 2, V5, "mover-5").await;
    assert!(
        present,
        "5.0 session present on another node\n{}",
        cluster.logs()
    );
    assert_eq!(receive(&mut a, 40).await, expected);
    let (mut b, present) = resume(&cluster, 2, V311, "mover-3").await;
    assert!(present, "3.1.1 session present on another node");
    assert_eq!(receive(&mut b, 40).await, expected);
    assert!(
        quiet(&mut b, Duration::from_millis(500)).await.is_empty(),
        "no duplicate"
    );
    assert_eq!(
        cluster
            .metric(2, "brokk_cluster_sessions_moved_total")
            .await,
        2.0
    );
    assert_eq!(
        cluster
            .metric(0, "brokk_cluster_sessions_moved_total")
            .await,
        0.0
    );
    // Their subscriptions came along: a live message reaches them on node 2.
    publisher
        .publish("move/live", &[99], QoS::AtLeastOnce, false)
        .await;
    assert_eq!(receive(&mut a, 1).await, [("move/live".to_owned(), 99)]);
    assert_eq!(receive(&mut b, 1).await, [("move/live".to_owned(), 99)]);

    // Offline again, 10 more queued on node 2, then node 2 is killed.
    a.disconnect().await;
    b.disconnect().await;
    let mut watch2 = cluster.client(2, V5, "watch-2").await;
    watch2.subscribe("move/#", QoS::AtLeastOnce).await;
    until_routed(&mut publisher, &mut watch2, "move/probe").await;
    for i in 0..10u8 {
        publisher
            .publish("move/after", &[i], QoS::AtLeastOnce, false)
            .await;
    }
    assert_eq!(receive(&mut watch2, 10).await.len(), 10);
    // A QoS 1 message published on node 2 itself is acknowledged only once
    // the sessions' queues up to it are in the cluster's store.
    watch2
        .publish("move/after", &[10], QoS::AtLeastOnce, false)
        .await;
    let node = cluster.nodes[2].take().expect("node 2 runs");
    node.signal(libc::SIGKILL);
    drop(node);

    // The sessions outlive their node: back on node 0 with what was queued.
    let after: Vec<(String, u8)> = (0..11u8).map(|i| ("move/after".to_owned(), i)).collect();
    let (mut a, present) = resume(&cluster, 0, V5, "mover-5").await;
    assert!(present, "the session outlived its node\n{}", cluster.logs());
    assert_eq!(receive(&mut a, 11).await, after);
    let (mut b, present) = resume(&cluster, 0, V311, "mover-3").await;
    assert!(present);
    assert_eq!(receive(&mut b, 11).await, after);
    assert!(
        quiet(&mut b, Duration::from_millis(500)).await.is_empty(),
        "no duplicate"
    );
    // A clean start elsewhere (a session that ends with its connection)
    // leaves nothing of it in the cluster.
    a.disconnect().await;
    let (a, _) = RawClient::connect_with(cluster.addr(1), {
        let mut c = persistent(V5, "mover-5");
        c.clean_start = true;
        c.properties.session_expiry_interval = None;
        c
    })
    .await;
    a.disconnect().await;
    let (_a, present) = resume(&cluster, 0, V5, "mover-5").await;
    assert!(!present, "a clean start ended it everywhere");

    // A client that sends SUBSCRIBE and PUBLISH right behind its CONNECT, in
    // one write: they wait while the node asks the cluster for its session,
    // then go in order.
    let mut eager = RawClient::open(cluster.addr(1), V5).await;
    let mut bytes = brokk_e2e::raw::encode(
        &Packet::Connect(Box::new(brokk_e2e::raw::connect_packet(V5, "eager"))),
        V5,
    );
    bytes.extend_from_slice(&brokk_e2e::raw::encode(
        &Packet::Subscribe(mqtt_proto::Subscribe {
            packet_id: NonZeroU16::new(1).expect("nonzero"),
            filters: vec![(
                mqtt_proto::TopicFilter::copy_from_str("eager/#").expect("a valid filter"),
                mqtt_proto::SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
            properties: Default::default(),
        }),
        V5,
    ));
    bytes.extend_from_slice(&brokk_e2e::raw::encode(
        &Packet::Publish(publish_packet(
            "eager/x",
            b"first",
            QoS::AtLeastOnce,
            false,
            NonZeroU16::new(2),
        )),
        V5,
    ));
    eager.send_bytes(&bytes).await;
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        match eager.next(TIMEOUT).await {
            Next::Packet(p, _) => kinds.push(match *p {
                Packet::ConnAck(a) => format!("CONNACK {:?}", a.reason_code),
                Packet::SubAck(_) => "SUBACK".to_owned(),
                Packet::PubAck(_) => "PUBACK".to_owned(),
                Packet::Publish(p) => format!("PUBLISH {}", String::from_utf8_lossy(&p.payload)),
                other => format!("{other:?}"),
            }),
            other => panic!(
                "eager client: {other:?} after {kinds:?}\n{}",
                cluster.logs()
            ),
        }
    }
    assert_eq!(
        kinds[..2],
        ["CONNACK Success", "SUBACK"],
        "CONNACK, then SUBACK: {kinds:?}"
    );
    kinds[2..].sort();
    assert_eq!(
        kinds[2..],
        ["PUBACK", "PUBLISH first"],
        "then the delivery and the PUBACK, in either order: {kinds:?}"
    );

    // A second node with a running node's name is refused.
    let out = cluster.refused(2, "node-1").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second node-1 started\n{stderr}");
    assert!(
        stderr.contains("node_id \"node-1\" is in use"),
        "the refusal names the node id:\n{stderr}"
    );

    // Event Grid's session limit per authentication name (2 here) counts the
    // sessions on every node.
    let (_alice1, code) = login(&cluster, 0, "alice-1", "alice").await;
    assert_eq!(code, ReasonCode::Success);
    let (alice2, code) = login(&cluster, 1, "alice-2", "alice").await;
    assert_eq!(code, ReasonCode::Success);
    let (_, code) = login(&cluster, 0, "alice-3", "alice").await;
    assert_eq!(
        code,
        ReasonCode::QuotaExceeded,
        "a third session of alice, on node 0"
    );
    let (_bob, code) = login(&cluster, 0, "bob-1", "bob").await;
    assert_eq!(
        code,
        ReasonCode::Success,
        "another name is not limited by alice's"
    );
    // A session of alice's moving to another node keeps its place.
    let (_alice1, code) = login(&cluster, 1, "alice-1", "alice").await;
    assert_eq!(code, ReasonCode::Success);
    // A session that ends (clean start, no expiry) frees its place everywhere.
    alice2.disconnect().await;
    within("alice-3 after alice-2 left", async {
        loop {
            match login(&cluster, 0, "alice-3", "alice").await {
                (_, ReasonCode::Success) => break,
                // The end of alice-2 is still on its way.
                (_, ReasonCode::QuotaExceeded) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                (_, code) => panic!("alice-3 refused with {code:?}"),
            }
        }
    })
    .await;
}

/// A 5.0 client with a user name (its authentication name) connects to node
/// `i`; the client and its CONNACK's reason code.
async fn login(cluster: &Cluster, i: usize, id: &str, user: &str) -> (RawClient, ReasonCode) {
    let mut connect = brokk_e2e::raw::connect_packet(V5, id);
    connect.username = Some(mqtt_proto::MqttString::copy_from_str(user).expect("a valid name"));
    let (client, ack) = RawClient::connect_with(cluster.addr(i), connect).await;
    (client, ack.reason_code)
}

#[tokio::test]
async fn a_killed_nats_server_is_survived() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    let mut sub = cluster.client(1, V311, "far").await;
    assert_eq!(
        sub.subscribe("n/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut publisher = cluster.client(0, V5, "near").await;
    until_routed(&mut publisher, &mut sub, "n/probe").await;
    publisher
        .publish("n/before", b"before", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&next_message(&mut sub).await.payload[..], b"before");

    // Node 1's NATS server dies: node 1 reconnects to another and subscribes
    // again; messages flow once it has.
    cluster.nats.kill(1).await;
    until_routed_within(RECONNECT, &mut publisher, &mut sub, "n/probe").await;
    publisher
        .publish("n/after", b"after", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&next_message(&mut sub).await.payload[..], b"after");

    // The retained bucket has 3 replicas: it still takes and serves messages.
    let mut setter = cluster.client(1, V5, "setter").await;
    setter
        .publish("n/state", b"kept", QoS::AtLeastOnce, true)
        .await;
    for i in [0, 2, 1] {
        assert_eq!(
            retained_from(&cluster, i, "n/state").await.as_deref(),
            Some(&b"kept"[..]),
            "node {i}\n{}",
            cluster.logs()
        );
    }
    // A node started now, its first NATS server dead, joins through another and
    // reads the retained messages before it serves anyone.
    let late = cluster.spawn(1, "late").await;
    let mut c = RawClient::connect(late.addr(ListenerKind::Mqtt), V311, "late").await;
    c.subscribe("n/state", QoS::AtMostOnce).await;
    let p = c.recv_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"kept"[..], true));

    // With every NATS server gone, a node still shuts down promptly when asked
    // (it does not wait for a reconnection to flush).
    cluster.nats.kill(0).await;
    cluster.nats.kill(2).await;
    let mut node = cluster.nodes[0].take().expect("node 0 runs");
    node.signal(libc::SIGTERM);
    let status = node.wait(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "node 0 exited with {status:?}\n{}",
        node.stderr()
    );
}

/// Publishes `total` QoS 1 messages on `topic` (payload: the number, 8 bytes
/// big-endian), at most `window` unacknowledged; `acked` counts the
/// acknowledgements as they come. Returns the numbers acknowledged.
async fn publish_window(
    client: &mut RawClient,
    topic: &str,
    total: u64,
    window: usize,
    acked: &std::sync::atomic::AtomicU64,
) -> HashSet<u64> {
    let mut done = HashSet::new();
    let mut in_flight: BTreeMap<u16, u64> = BTreeMap::new();
    let mut next = 0u64;
    while next < total || !in_flight.is_empty() {
        while in_flight.len() < window && next < total {
            let id = (next % 60_000 + 1) as u16;
            let p = publish_packet(
                topic,
                &next.to_be_bytes(),
                QoS::AtLeastOnce,
                false,
                NonZeroU16::new(id),
            );
            client.send(&Packet::Publish(p)).await;
            in_flight.insert(id, next);
            next += 1;
        }
        match client.recv().await {
            Packet::PubAck(a) => {
                assert_eq!(a.reason_code, ReasonCode::Success);
                if let Some(seq) = in_flight.remove(&a.packet_id.get()) {
                    done.insert(seq);
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    done
}

/// Every message number (8 bytes big-endian) on `topic` that arrives until
/// `expected` are all in or nothing comes for `gap`, acknowledged.
async fn collect_numbers(
    client: &mut RawClient,
    topic: &str,
    expected: &HashSet<u64>,
    gap: Duration,
) -> HashSet<u64> {
    let mut got = HashSet::new();
    while !expected.is_subset(&got) {
        let p = match client.next(gap).await {
            Next::Packet(p, _) => match *p {
                Packet::Publish(p) => {
                    ack(client, &p).await;
                    p
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            },
            Next::Closed | Next::TimedOut => break,
        };
        if p.topic.as_str() == topic && p.payload.len() == 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p.payload);
            got.insert(u64::from_be_bytes(b));
        }
    }
    got
}

#[tokio::test]
async fn a_subscribers_node_killed_with_sigkill_loses_no_acknowledged_message() {
    let _one_at_a_time = SERIAL.lock().await;
    // Room for every message in an offline session's queue (the default,
    // Event Grid's, is 100).
    let mut cluster = Cluster::start_with(3, "[limits]\noffline_queue_messages = 10000\n").await;
    // Two persistent sessions on node 1 (5.0 and 3.1.1), which do not read
    // while the messages flow: what node 1 took is in their queues, in its
    // TCP buffers or on its way from the publisher's node when it dies.
    let (mut a, _) = resume(&cluster, 1, V5, "durable-5").await;
    assert_eq!(
        a.subscribe("gone/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let (mut b, _) = resume(&cluster, 1, V311, "durable-3").await;
    assert_eq!(
        b.subscribe("gone/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut publisher = cluster.client(0, V5, "gone-pub").await;
    until_routed(&mut publisher, &mut a, "gone/probe").await;
    quiet(&mut b, Duration::from_millis(300)).await;

    // Node 1 is killed once a third of the messages are acknowledged; the
    // publisher (on node 0) goes on.
    const TOTAL: u64 = 3_000;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flow = {
        let acked = acked.clone();
        tokio::spawn(
            async move { publish_window(&mut publisher, "gone/seq", TOTAL, 16, &acked).await },
        )
    };
    within("a third of the messages acknowledged", async {
        while acked.load(std::sync::atomic::Ordering::Relaxed) < TOTAL / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let node = cluster.nodes[1].take().expect("node 1 runs");
    node.signal(libc::SIGKILL);
    drop(node);
    let sent = flow.await.expect("the publisher");
    assert_eq!(sent.len() as u64, TOTAL, "node 0 acknowledged everything");
    drop(a);
    drop(b);

    // The clients come back at once, each to another node: both sessions are
    // there with every acknowledged message.
    let ((mut a, a_present), (mut b, b_present)) = tokio::join!(
        resume(&cluster, 2, V5, "durable-5"),
        resume(&cluster, 0, V311, "durable-3"),
    );
    assert!(a_present && b_present, "{}", cluster.logs());
    for (client, who) in [(&mut a, "durable-5"), (&mut b, "durable-3")] {
        let got = collect_numbers(client, "gone/seq", &sent, Duration::from_secs(20)).await;
        let mut missing: Vec<u64> = sent.difference(&got).copied().collect();
        missing.sort_unstable();
        assert!(
            missing.is_empty(),
            "{who}: {} acknowledged messages never delivered, first {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(20)],
            cluster.logs()
        );
    }
}

#[tokio::test]
async fn a_burst_that_queues_thousands_of_session_writes_at_once_is_acknowledged() {
    let _one_at_a_time = SERIAL.lock().await;
    let cluster = Cluster::start_with(3, "[limits]\noffline_queue_messages = 10000\n").await;
    // Four offline persistent sessions on node 0: each QoS 1 message is four
    // queued records in the cluster's store.
    const SESSIONS: usize = 4;
    for i in 0..SESSIONS {
        let (mut c, _) = resume(&cluster, 0, V5, &format!("burst-{i}")).await;
        assert_eq!(
            c.subscribe("burst/#", QoS::AtLeastOnce).await,
            ReasonCode::GrantedQoS1
        );
        c.disconnect().await;
    }
    // 2,000 QoS 1 messages in one write: the node's rounds hand thousands of
    // session writes to JetStream at once, more than async-nats lets wait
    // for an answer (5,000).
    const TOTAL: u16 = 2_000;
    let mut publisher = cluster.client(0, V5, "burst-pub").await;
    let mut burst = Vec::new();
    for i in 1..=TOTAL {
        let p = publish_packet(
            "burst/x",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            false,
            NonZeroU16::new(i),
        );
        burst.extend_from_slice(&brokk_e2e::raw::encode(&Packet::Publish(p), V5));
    }
    publisher.send_bytes(&burst).await;
    let mut acked = 0;
    while acked < TOTAL {
        match publisher.next(TIMEOUT).await {
            Next::Packet(p, _) => match *p {
                Packet::PubAck(a) => {
                    assert_eq!(a.reason_code, ReasonCode::Success, "{}", cluster.logs());
                    acked += 1;
                }
                other => panic!("expected PUBACK, got {other:?}"),
            },
            other => panic!(
                "{acked} of {TOTAL} acknowledged, then {other:?}\n{}",
                cluster.logs()
            ),
        }
    }
    // Every session has every message, from another node.
    let (mut c, present) = resume(&cluster, 1, V5, "burst-0").await;
    assert!(present);
    assert_eq!(receive(&mut c, TOTAL as usize).await.len(), TOTAL as usize);
}
