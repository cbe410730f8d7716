//! Opening an MQTT client connection: TCP connect, CONNECT, CONNACK, SUBSCRIBE.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::wire::{self, Incoming, Version};

/// How long the handshake (TCP + CONNECT + CONNACK) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection attempt failed; [`ConnectError::cause`] groups them for reports.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect or I/O failed.
    Io(io::Error),
    /// No CONNACK (or SUBACK) within [`HANDSHAKE_TIMEOUT`].
    Timeout,
    /// CONNACK or SUBACK refused with this code.
    Refused(u8),
    /// The broker closed the connection during the handshake.
    Closed,
    /// The broker sent something we could not parse or did not expect.
    Protocol(String),
}

impl ConnectError {
    /// A short word for tallies: `refused`, `reset`, `timeout`, ...
    pub fn cause(&self) -> String {
        match self {
            ConnectError::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => "conn-refused".into(),
                io::ErrorKind::ConnectionReset => "reset".into(),
                io::ErrorKind::AddrNotAvailable => "addr-not-available".into(),
                _ if e.raw_os_error() == Some(libc::EMFILE) => "fd-limit".into(),
                k => format!("io-{k:?}").to_lowercase(),
            },
            ConnectError::Timeout => "timeout".into(),
            ConnectError::Refused(c) => format!("refused-0x{c:02x}"),
            ConnectError::Closed => "closed".into(),
            ConnectError::Protocol(_) => "protocol".into(),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Timeout => write!(f, "no CONNACK/SUBACK within {HANDSHAKE_TIMEOUT:?}"),
            ConnectError::Refused(c) => write!(f, "refused with code 0x{c:02x}"),
            ConnectError::Closed => write!(f, "closed by the broker during the handshake"),
            ConnectError::Protocol(s) => write!(f, "{s}"),
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

/// An open session: the stream, bytes read past the handshake, and the broker's
/// Receive Maximum.
pub struct Session {
    /// The connection.
    pub stream: TcpStream,
    /// Bytes already read that follow the last handshake packet.
    pub pending: Vec<u8>,
    /// The broker's Receive Maximum (65535 for 3.1.1 brokers).
    pub receive_maximum: u16,
    /// Protocol version.
    pub version: Version,
}

/// Reads until one packet is parsed; returns it as a closure result.
async fn read_packet<T>(
    session: &mut Session,
    mut pick: impl FnMut(Incoming<'_>) -> Option<Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((packet, used)) = wire::parse(&session.pending, Some(session.version))
            .map_err(|e| ConnectError::Protocol(e.to_string()))?
        {
            let r = pick(packet);
            session.pending.drain(..used);
            if let Some(r) = r {
                return r;
            }
        }
        let n = session.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnectError::Closed);
        }
        session.pending.extend_from_slice(&chunk[..n]);
    }
}

/// Connects to `addr` (from `bind` if given, port chosen by the kernel) and
/// completes CONNECT/CONNACK.
pub async fn connect(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    version: Version,
    client_id: &str,
    keep_alive: u16,
    persistent: bool,
) -> Result<Session, ConnectError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut out = Vec::with_capacity(64);
        wire::connect(
            &mut out,
            version,
            client_id.as_bytes(),
            keep_alive,
            persistent,
        );
        stream.write_all(&out).await?;
        let mut session = Session {
            stream,
            pending: Vec::new(),
            receive_maximum: u16::MAX,
            version,
        };
        let receive_maximum = read_packet(&mut session, |p| match p {
            Incoming::ConnAck {
                code: 0,
                receive_maximum,
            } => Some(Ok(receive_maximum)),
            Incoming::ConnAck { code, .. } => Some(Err(ConnectError::Refused(code))),
            other => Some(Err(ConnectError::Protocol(format!(
                "expected CONNACK, got {other:?}"
            )))),
        })
        .await?;
        session.receive_maximum = receive_maximum.max(1);
        Ok(session)
    })
    .await
    .unwrap_or(Err(ConnectError::Timeout))
}

impl Session {
    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<(), ConnectError> {
        let mut out = Vec::with_capacity(64);
        wire::subscribe(&mut out, self.version, 1, filter.as_bytes(), qos);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            self.stream.write_all(&out).await?;
            read_packet(self, |p| match p {
                Incoming::SubAck { code, .. } if code < 0x80 => Some(Ok(())),
                Incoming::SubAck { code, .. } => Some(Err(ConnectError::Refused(code))),
                other => Some(Err(ConnectError::Protocol(format!(
                    "expected SUBACK, got {other:?}"
                )))),
            })
            .await
        })
        .await
        .unwrap_or(Err(ConnectError::Timeout))
    }

    /// Sends PINGREQ and waits for PINGRESP.
    pub async fn ping(&mut self) -> Result<(), ConnectError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            self.stream.write_all(&[0xC0, 0x00]).await?;
            read_packet(self, |p| match p {
                Incoming::PingResp => Some(Ok(())),
                other => Some(Err(ConnectError::Protocol(format!(
                    "expected PINGRESP, got {other:?}"
                )))),
            })
            .await
        })
        .await
        .unwrap_or(Err(ConnectError::Timeout))
    }
}

/// Source address number `i` of the loopback range used to spread connections
/// (127.0.0.2 to 127.0.0.201), so that tens of thousands of connections do not run
/// out of ephemeral ports of one source address.
pub fn spread_source(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + (i % 200) as u8])
}

/// Waits until the broker at `addr` answers CONNECT with a CONNACK, or `wait` ends.
pub async fn probe(addr: SocketAddr, version: Version, wait: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match connect(addr, None, version, "brokk-load-probe", 30, false).await {
            Ok(mut s) => {
                let mut out = Vec::new();
                wire::disconnect(&mut out);
                let _ = s.stream.write_all(&out).await;
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "{addr} did not answer CONNECT within {wait:?}: {last}"
    ))
}
