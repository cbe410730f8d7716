//! A password-login storm against a running broker, and what it does to a client
//! that is already connected (the figures in `benches/README.md`, "Logins").
//!
//! ```text
//! cargo run --release -p brokk-benches --example login_storm -- \
//!     ADDR LOGINS THREADS USER_PREFIX PASSWORD USERS
//! ```
//!
//! `THREADS` threads log in `LOGINS` times in all (CONNECT with User Name
//! `USER_PREFIX<i % USERS>` and `PASSWORD`, wait for CONNACK, DISCONNECT), while one
//! more connection, connected before the storm, sends itself a QoS 0 message every
//! millisecond and times each round trip. Prints logins/s, the refused logins, and
//! the round trip's p50 / p99 / max during the storm. Plain blocking sockets, no
//! runtime: nothing here competes with the broker for more than it must.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqtt_proto::{
    Connect, ConnectProperties, Decoder, Disconnect, MqttString, Packet, ProtocolVersion, Publish,
    QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;

fn connect(client_id: &str, user: Option<(&str, &str)>) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: V,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttString::copy_from_str(client_id).expect("client id"),
        will: None,
        username: user.map(|(u, _)| MqttString::copy_from_str(u).expect("user name")),
        password: user.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
        properties: ConnectProperties::default(),
    }))
}

fn send(stream: &mut TcpStream, packet: &Packet) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    packet
        .encode(V, &mut buf)
        .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    stream.write_all(&buf)
}

fn recv(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    input: &mut BytesMut,
) -> std::io::Result<Packet> {
    loop {
        match decoder.decode(input) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(format!("{e}"))),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        input.extend_from_slice(&chunk[..n]);
    }
}

/// One login: CONNECT, CONNACK, DISCONNECT. True if accepted.
fn login(addr: SocketAddr, client_id: &str, user: &str, password: &str) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    send(&mut stream, &connect(client_id, Some((user, password))))?;
    let mut decoder = Decoder::with_version(V, u32::MAX);
    let mut input = BytesMut::new();
    let accepted = match recv(&mut stream, &mut decoder, &mut input)? {
        Packet::ConnAck(a) => a.reason_code == ReasonCode::Success,
        _ => false,
    };
    if accepted {
        send(
            &mut stream,
            &Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        )?;
    }
    Ok(accepted)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, logins, threads, prefix, password, users] = args.as_slice() else {
        eprintln!("usage: login_storm ADDR LOGINS THREADS USER_PREFIX PASSWORD USERS");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR: host:port");
    let logins: usize = logins.parse().expect("LOGINS: a number");
    let threads: usize = threads.parse().expect("THREADS: a number");
    let users: usize = users.parse().expect("USERS: a number");

    // The bystander: subscribed to its own topic, connected before the storm.
    let mut by = TcpStream::connect(addr).expect("bystander connects");
    by.set_nodelay(true).expect("TCP_NODELAY");
    let mut decoder = Decoder::with_version(V, u32::MAX);
    let mut input = BytesMut::new();
    send(&mut by, &connect("storm-bystander", None)).expect("CONNECT");
    let ack = recv(&mut by, &mut decoder, &mut input).expect("CONNACK");
    assert!(
        matches!(&ack, Packet::ConnAck(a) if a.reason_code == ReasonCode::Success),
        "the bystander must connect anonymously: {ack:?}"
    );
    let filter = TopicFilter::copy_from_str("storm/bystander").expect("filter");
    send(
        &mut by,
        &Packet::Subscribe(Subscribe {
            packet_id: mqtt_proto::PacketId::new(1).expect("non-zero"),
            filters: vec![(filter, SubscriptionOptions::qos(QoS::AtMostOnce))],
            properties: Default::default(),
        }),
    )
    .expect("SUBSCRIBE");
    recv(&mut by, &mut decoder, &mut input).expect("SUBACK");

    let done = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, accepted) = (next.clone(), accepted.clone());
            let (prefix, password) = (prefix.clone(), password.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= logins {
                    return;
                }
                let user = format!("{prefix}{}", i % users.max(1));
                if let Ok(true) = login(addr, &format!("storm-{i}"), &user, &password) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let topic = TopicName::copy_from_str("storm/bystander").expect("topic");
    let mut rtts = Vec::new();
    let watcher_done = done.clone();
    let finisher = std::thread::spawn(move || {
        for w in workers {
            let _ = w.join();
        }
        watcher_done.store(true, Ordering::Relaxed);
        start.elapsed()
    });
    while !done.load(Ordering::Relaxed) {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.clone(),
            packet_id: None,
            properties: Default::default(),
            payload: Bytes::from_static(b"ping"),
        });
        let sent = Instant::now();
        send(&mut by, &p).expect("bystander PUBLISH");
        loop {
            if let Packet::Publish(_) =
                recv(&mut by, &mut decoder, &mut input).expect("bystander receives")
            {
                break;
            }
        }
        rtts.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = finisher.join().expect("storm threads");
    rtts.sort();
    let accepted = accepted.load(Ordering::Relaxed);
    println!(
        "{logins} logins from {threads} threads ({users} users): {:.0} logins/s, {} refused, {:.2} s",
        logins as f64 / elapsed.as_secs_f64(),
        logins - accepted,
        elapsed.as_secs_f64()
    );
    println!(
        "bystander QoS 0 round trip during the storm ({} samples): p50 {:?}, p99 {:?}, max {:?}",
        rtts.len(),
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
        rtts.last().copied().unwrap_or_default()
    );
}
