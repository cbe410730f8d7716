//! One connection: TLS and WebSocket handshakes, then the read/write loop around
//! the shared hub.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adapter_common::driver::{ConnIo, Framing, Hub, Wake};
use adapter_common::websocket::{self, FrameDecoder, Handshake};
use broker_state::{Now, PeerInfo};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Wakes a task on the server thread.
#[derive(Clone)]
pub(crate) struct Waker(pub(crate) Rc<Notify>);

impl Wake for Waker {
    fn wake(&self) {
        self.0.notify_one();
    }
}

pub(crate) type SharedHub = Rc<RefCell<Hub<Waker>>>;

/// Both clocks, read by the adapter and handed to the core.
pub(crate) fn now() -> Now {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Now::new(Instant::now(), unix_ms)
}

/// Bytes pulled from the core per write.
const WRITE_BUDGET: usize = 64 * 1024;
/// Time a closing connection gets to take its last bytes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the WebSocket upgrade request and answers it. Returns the bytes that
/// followed the request (already frames), or `None` if the request was refused.
pub(crate) async fn websocket_handshake<S>(stream: &mut S, path: Option<&str>) -> Option<BytesMut>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match websocket::parse_handshake(&buf, path) {
            Handshake::NeedMore => {
                if buf.len() >= websocket::MAX_HANDSHAKE_LEN {
                    return None;
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
            Handshake::Error(e) => {
                tracing::debug!(error = %e, "websocket handshake refused");
                let mut out = BytesMut::new();
                e.write_response(&mut out);
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
                return None;
            }
            Handshake::Request(req) => {
                let mut out = BytesMut::new();
                req.write_response(&mut out);
                stream.write_all(&out).await.ok()?;
                return Some(buf.split_off(req.header_len));
            }
        }
    }
}

/// The MQTT connection loop: read, feed the core, pull its output, write; until the
/// core or the peer ends it.
pub(crate) async fn run<S>(
    hub: SharedHub,
    stream: S,
    peer: PeerInfo,
    websocket: bool,
    initial: BytesMut,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max_packet = hub.borrow().broker().max_packet_size();
    let framing = if websocket {
        // A WebSocket message may hold several packets: allow some slack over one.
        let max = max_packet as usize;
        Framing::WebSocket(Box::new(FrameDecoder::new(max + 16, max.saturating_mul(2))))
    } else {
        Framing::Raw
    };
    let notify = Rc::new(Notify::new());
    let conn = hub.borrow_mut().accept(now(), peer, Waker(notify.clone()));
    let mut io = ConnIo::new(framing, max_packet);
    io.input = initial;
    if !io.input.is_empty() {
        hub.borrow_mut().feed(now(), conn, &mut io);
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    loop {
        let closing = {
            let mut hub = hub.borrow_mut();
            while io.output.len() < WRITE_BUDGET && hub.pull(conn, &mut io, WRITE_BUDGET) > 0 {}
            hub.closing(conn).is_some()
        };
        if closing || io.finished {
            hub.borrow_mut().pull_final(conn, &mut io);
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
                wr.write_all(&io.output).await?;
                wr.shutdown().await
            })
            .await;
            break;
        }
        io.release_idle_buffers();
        io.reserve_for_read();
        tokio::select! {
            read = rd.read_buf(&mut io.input) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => hub.borrow_mut().feed(now(), conn, &mut io),
            },
            written = wr.write(&io.output), if !io.output.is_empty() => match written {
                Ok(0) | Err(_) => break,
                Ok(n) => io.output.advance(n),
            },
            _ = notify.notified(), if io.output.is_empty() => {}
        }
    }
    hub.borrow_mut().closed(now(), conn);
}
