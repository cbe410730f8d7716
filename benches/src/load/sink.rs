//! The sink: a minimal fake broker that accepts every CONNECT and SUBSCRIBE, acks
//! QoS 1 publishes and discards them. It routes nothing, so the generator measured
//! against it shows its own ceiling. A subscription to `sink/flood/<qos>` makes the
//! sink flood that subscriber with generator payloads instead (the receive ceiling).

use std::net::SocketAddr;
use std::sync::mpsc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};

use super::payload::{self, Stamp};
use super::wire::{self, Incoming, Version};

/// Publishers the flood pretends to come from.
const FLOOD_PUBLISHERS: u32 = 8;

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, CPU_SET writes inside it, and
    // sched_setaffinity(0, ..) only reads the set for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts the sink on its own thread (pinned to `cpu` if given) on an ephemeral
/// loopback port; returns its address and the thread's id (for `/proc/self/task`).
pub fn spawn(cpu: Option<usize>) -> (SocketAddr, i64) {
    spawn_on(cpu, 0)
}

/// [`spawn`] on a given loopback port (0: an ephemeral one).
pub fn spawn_on(cpu: Option<usize>, port: u16) -> (SocketAddr, i64) {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("brokk-load-sink".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                if let Err(e) = pin_current_thread(cpu) {
                    eprintln!("sink: could not pin to CPU {cpu}: {e}");
                }
            }
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("sink runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                // A backlog as deep as brokk's, so that a burst of connects is not
                // slowed by SYNs dropped at a full queue (tokio's default is 1024).
                let listener = TcpSocket::new_v4()
                    .and_then(|s| {
                        s.set_reuseaddr(true)?;
                        s.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
                        s.listen(4096)
                    })
                    .expect("sink bind");
                tx.send((listener.local_addr().expect("sink addr"), tid))
                    .expect("generator waits for the sink");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::task::spawn_local(serve(stream));
                }
            });
        })
        .expect("spawn sink thread");
    rx.recv().expect("sink started")
}

async fn serve(stream: TcpStream) {
    let (mut rd, wr) = stream.into_split();
    // handed to the flood once a subscriber asks for one; this task then only reads
    // (and discards PUBACKs) until the subscriber goes away
    let mut wr = Some(wr);
    let mut version = None;
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let mut at = 0;
        while let Ok(Some((packet, used))) = wire::parse(&buf[at..filled], version) {
            match packet {
                Incoming::Connect { version: v } => {
                    version = Some(v);
                    wire::connack(&mut out, v);
                }
                Incoming::Publish {
                    qos: 1, packet_id, ..
                } => wire::puback(&mut out, packet_id),
                Incoming::Subscribe { packet_id, filter } => {
                    let v = version.unwrap_or(Version::V5);
                    let qos = match filter {
                        b"sink/flood/1" => Some(1),
                        b"sink/flood/0" => Some(0),
                        _ => None,
                    };
                    wire::suback(&mut out, v, packet_id, qos.unwrap_or(0));
                    if let (Some(qos), Some(mut w)) = (qos, wr.take()) {
                        if w.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        tokio::task::spawn_local(flood(w, v, qos));
                    }
                }
                Incoming::PingReq => out.extend_from_slice(&[0xD0, 0x00]),
                Incoming::Disconnect { .. } => return,
                _ => {}
            }
            at += used;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        if let Some(w) = wr.as_mut().filter(|_| !out.is_empty()) {
            if w.write_all(&out).await.is_err() {
                return;
            }
        }
        out.clear();
        if filled == buf.len() {
            return;
        }
        match rd.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
    }
}

async fn flood(mut wr: OwnedWriteHalf, version: Version, qos: u8) {
    let mut body = vec![0x2Au8; 64];
    let mut seqs = [0u64; FLOOD_PUBLISHERS as usize];
    let mut out = Vec::with_capacity(64 * 96);
    let mut packet_id = 0u16;
    let mut publisher = 0u32;
    loop {
        out.clear();
        for _ in 0..64 {
            let seq = &mut seqs[publisher as usize];
            payload::write(
                &mut body,
                Stamp {
                    publisher,
                    seq: *seq,
                    sent_ns: payload::now_ns(),
                },
            );
            *seq += 1;
            packet_id = packet_id.wrapping_add(1).max(1);
            wire::publish(&mut out, version, qos, packet_id, b"sink/flood", &body);
            publisher = (publisher + 1) % FLOOD_PUBLISHERS;
        }
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}
