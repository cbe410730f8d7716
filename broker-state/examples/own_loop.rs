//! Linking `broker-state` into your own run loop, with no async runtime and no
//! adapter: std's non-blocking sockets, one thread, the run-loop contract from the
//! crate docs. A toy (it polls every millisecond instead of waiting on readiness),
//! but a complete MQTT broker.
//!
//! Run with `cargo run -p broker-state --example own_loop`, then
//! `mosquitto_sub -p 1884 -t '#' -v` and `mosquitto_pub -p 1884 -t a -m hi`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker_state::{Broker, Config, ConnId, Event, Now, PeerInfo};
use mqtt_proto::bytes::BytesMut;
use mqtt_proto::Decoder;

struct Client {
    socket: TcpStream,
    decoder: Decoder,
    input: BytesMut,
}

fn now() -> Now {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Now::new(Instant::now(), unix_ms)
}

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:1884")?;
    listener.set_nonblocking(true)?;
    let mut broker = Broker::new(Config::default(), [1; 32]);
    let mut clients: HashMap<ConnId, Client> = HashMap::new();
    let mut out = BytesMut::new();
    loop {
        // Inputs: new connections, bytes from clients, time.
        while let Ok((socket, addr)) = listener.accept() {
            socket.set_nonblocking(true)?;
            let conn = broker.handle_accept(now(), PeerInfo::memory(&addr.to_string()));
            let decoder = Decoder::new(broker.max_packet_size());
            clients.insert(
                conn,
                Client {
                    socket,
                    decoder,
                    input: BytesMut::new(),
                },
            );
        }
        let mut gone = Vec::new();
        for (&conn, c) in clients.iter_mut() {
            let mut chunk = [0u8; 4096];
            match c.socket.read(&mut chunk) {
                Ok(0) => gone.push(conn),
                Ok(n) => c.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => gone.push(conn),
            }
            loop {
                match c.decoder.decode(&mut c.input) {
                    Ok(Some(packet)) => broker.handle_packet(now(), conn, packet),
                    Ok(None) => break,
                    Err(e) => {
                        broker.handle_decode_error(now(), conn, &e);
                        break;
                    }
                }
            }
        }
        for conn in gone {
            clients.remove(&conn);
            broker.handle_closed(now(), conn);
        }
        if broker.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            broker.handle_timeout(now());
        }
        // Outputs: drain every event after the inputs.
        while let Some(event) = broker.poll_event() {
            match event {
                Event::Transmit(conn) => {
                    out.clear();
                    while broker.poll_transmit(conn, &mut out, 64 * 1024) > 0 {}
                    if let Some(c) = clients.get_mut(&conn) {
                        // A toy: blocking briefly on a full socket is acceptable here.
                        let _ = c.socket.set_nonblocking(false);
                        let _ = c.socket.write_all(&out);
                        let _ = c.socket.set_nonblocking(true);
                    }
                }
                Event::Close { conn, .. } => {
                    out.clear();
                    while broker.poll_transmit(conn, &mut out, usize::MAX) > 0 {}
                    if let Some(mut c) = clients.remove(&conn) {
                        let _ = c.socket.write_all(&out);
                    }
                    broker.handle_closed(now(), conn);
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
