//! The durable store as an operator meets it: state kept across a restart, a second
//! broker on the same data directory refused, a damaged file refused by name and
//! moved aside with `--recover`, `--in-memory` writing nothing.

use std::path::Path;
use std::time::Duration;

use adapter_common::config::ListenerKind;
use brokk_e2e::raw::{connect_packet, RawClient};
use brokk_e2e::{BrokkProcess, Runtime};
use mqtt_proto::{ProtocolVersion, QoS};

const EXIT_LIMIT: Duration = Duration::from_secs(10);

async fn start(data_dir: &Path, extra: &[&str]) -> BrokkProcess {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data_dir.into(),
    ];
    args.extend(extra.iter().map(Into::into));
    BrokkProcess::spawn(Runtime::from_env(), args, 1).await
}

/// Runs the broker to completion (it is expected to refuse to start).
async fn refused(data_dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data_dir.into(),
    ];
    args.extend(extra.iter().map(Into::into));
    let out = BrokkProcess::run(Runtime::from_env(), args, "", EXIT_LIMIT).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn stop(mut brokk: BrokkProcess) {
    brokk.signal(libc::SIGTERM);
    let status = brokk.wait(EXIT_LIMIT).await;
    assert!(status.success(), "exit {status}\n{}", brokk.stderr());
}

/// A client that keeps its session: clean start 0 and (5.0) Session Expiry
/// Interval 3600 s.
async fn persistent(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
) -> (RawClient, mqtt_proto::ConnAck) {
    let mut connect = connect_packet(version, client_id);
    connect.clean_start = false;
    if version == ProtocolVersion::V5 {
        connect.properties.session_expiry_interval = Some(3600);
    }
    RawClient::connect_with(addr, connect).await
}

/// A persistent 5.0 session "keeper" subscribed to `kept/#` at QoS 1 (offline
/// afterwards), a message queued for it and a retained message.
async fn leave_state(addr: std::net::SocketAddr) {
    let (mut keeper, _) = persistent(addr, ProtocolVersion::V5, "keeper").await;
    keeper.subscribe("kept/#", QoS::AtLeastOnce).await;
    keeper.disconnect().await;
    let mut p = RawClient::connect(addr, ProtocolVersion::V3_1_1, "leaver").await;
    p.publish("kept/queued", b"for keeper", QoS::AtLeastOnce, false)
        .await;
    p.publish("kept/retained", b"retained", QoS::AtLeastOnce, true)
        .await;
    p.disconnect().await;
}

/// "keeper" comes back to its session and its queued message (which does not
/// need a new SUBSCRIBE).
async fn check_state(addr: std::net::SocketAddr) {
    let (mut keeper, ack) = persistent(addr, ProtocolVersion::V5, "keeper").await;
    assert!(ack.session_present, "the session did not survive");
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = keeper.recv_publish().await;
        got.push((m.topic.as_str().to_owned(), m.payload.to_vec()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("kept/queued".to_owned(), b"for keeper".to_vec()),
            ("kept/retained".to_owned(), b"retained".to_vec()),
        ]
    );
    // Retained for a new subscriber too.
    let mut fresh = RawClient::connect(addr, ProtocolVersion::V5, "fresh").await;
    fresh.subscribe("kept/retained", QoS::AtMostOnce).await;
    let m = fresh.recv_publish().await;
    assert!(m.retain && &m.payload[..] == b"retained");
}

#[tokio::test]
async fn sessions_queues_and_retained_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let brokk = start(&data, &[]).await;
    leave_state(brokk.addr(ListenerKind::Mqtt)).await;
    stop(brokk).await;
    assert!(data.join("brokk.redb").is_file());
    let brokk = start(&data, &[]).await;
    check_state(brokk.addr(ListenerKind::Mqtt)).await;
    stop(brokk).await;
}

#[tokio::test]
async fn in_memory_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let brokk = start(&data, &["--in-memory"]).await;
    leave_state(brokk.addr(ListenerKind::Mqtt)).await;
    stop(brokk).await;
    assert!(!data.join("brokk.redb").exists());
    let brokk = start(&data, &["--in-memory"]).await;
    let (_keeper, ack) = persistent(
        brokk.addr(ListenerKind::Mqtt),
        ProtocolVersion::V5,
        "keeper",
    )
    .await;
    assert!(!ack.session_present);
    stop(brokk).await;
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = start(&data, &[]).await;
    let (ok, stderr) = refused(&data, &[]).await;
    assert!(!ok, "a second broker started on the same data directory");
    assert!(
        stderr.contains(&data.display().to_string()) && stderr.contains("in use"),
        "the refusal should name the directory and say it is in use:\n{stderr}"
    );
    // The first one is unharmed.
    let mut c = RawClient::connect(first.addr(ListenerKind::Mqtt), ProtocolVersion::V5, "x").await;
    c.round_trip("still/here").await;
    stop(first).await;
}

#[tokio::test]
async fn a_damaged_store_is_refused_by_name_and_recover_moves_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let brokk = start(&data, &[]).await;
    leave_state(brokk.addr(ListenerKind::Mqtt)).await;
    stop(brokk).await;
    // Garbage over the file's first page (its header): what power loss in the
    // middle of a header write would leave without redb's double-buffered header.
    let file = data.join("brokk.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len().min(4096);
    for (i, b) in bytes[..n].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    std::fs::write(&file, &bytes).unwrap();

    let (ok, stderr) = refused(&data, &[]).await;
    assert!(!ok, "the broker started on a damaged store");
    assert!(
        stderr.contains("brokk.redb") && stderr.contains("--recover"),
        "the refusal should name the file and the way out:\n{stderr}"
    );

    let brokk = start(&data, &["--recover"]).await;
    let moved: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("brokk.redb.damaged-"))
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "the damaged file should be kept aside: {moved:?}"
    );
    // The log is read by another task: under load its lines may still be on the
    // way when the broker already listens.
    let mut log = brokk.stderr();
    for _ in 0..200 {
        if log.contains("damaged") && log.contains(&moved[0]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        log = brokk.stderr();
    }
    assert!(
        log.contains("damaged") && log.contains(&moved[0]),
        "the log should say what happened and where the file went:\n{log}"
    );
    // The broker serves.
    let mut c = RawClient::connect(brokk.addr(ListenerKind::Mqtt), ProtocolVersion::V5, "y").await;
    c.round_trip("after/recovery").await;
    stop(brokk).await;
    // And the recovered store is a good one: it opens without --recover.
    let brokk = start(&data, &[]).await;
    stop(brokk).await;
}

#[tokio::test]
async fn qos2_both_ways_with_a_persistent_subscriber_completes() {
    // Every acknowledgement that waits for the disk (SUBACK, PUBREC, PUBCOMP) comes.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let brokk = start(&data, &[]).await;
    let addr = brokk.addr(ListenerKind::Mqtt);
    let (mut sub, _) = persistent(addr, ProtocolVersion::V3_1_1, "durable-sub").await;
    sub.subscribe("d/#", QoS::ExactlyOnce).await;
    let (mut p, _) = persistent(addr, ProtocolVersion::V5, "durable-pub").await;
    for i in 0..20u8 {
        p.publish("d/1", &[i], QoS::ExactlyOnce, false).await;
        let m = sub.recv_publish().await;
        assert_eq!(&m.payload[..], &[i]);
    }
    stop(brokk).await;
}

#[tokio::test]
async fn every_pipelined_qos1_publish_is_acknowledged_once_durable() {
    // Many QoS 1 PUBLISHes sent without waiting: each PUBACK waits for the disk
    // (a persistent subscriber wants the messages), and every one must come.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let brokk = start(&data, &[]).await;
    let addr = brokk.addr(ListenerKind::Mqtt);
    let (mut sub, _) = persistent(addr, ProtocolVersion::V5, "pipelined-sub").await;
    sub.subscribe("pipe/#", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(addr, ProtocolVersion::V5, "pipelined-pub").await;
    const N: u16 = 500;
    let mut wire = Vec::new();
    for i in 1..=N {
        let publish = brokk_e2e::raw::publish_packet(
            "pipe/x",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            false,
            std::num::NonZeroU16::new(i),
        );
        wire.extend_from_slice(&brokk_e2e::raw::encode(
            &mqtt_proto::Packet::Publish(publish),
            ProtocolVersion::V5,
        ));
    }
    p.send_bytes(&wire).await;
    let reader = tokio::spawn(async move {
        for _ in 0..N {
            sub.recv_publish().await;
        }
        sub
    });
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < usize::from(N) {
        match p.recv().await {
            mqtt_proto::Packet::PubAck(a) => {
                assert!(
                    acked.insert(a.packet_id.get()),
                    "PUBACK {} twice",
                    a.packet_id
                );
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let _sub = reader.await.unwrap();
    stop(brokk).await;
}
