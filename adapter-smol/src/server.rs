//! Listeners, the timer task and graceful shutdown on one server thread, with a
//! smol `LocalExecutor` driven by smol's or async-std's `block_on`.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adapter_common::config::{Config, ListenerKind};
use adapter_common::connection::{self, LocalNotify, SharedHub, Start, Transport};
use adapter_common::park::{self, ParkingLot};
use adapter_common::server::{prepare, BoundListener, Prepared, ServerHandle, StartError};
use broker_state::Now;
use bytes::BytesMut;
use smol::io::{AsyncRead, AsyncWrite};
use smol::stream::Stream;
use smol::{Async, LocalExecutor, Timer};

/// Which runtime drives the executor and owns the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// smol.
    #[default]
    Smol,
    /// async-std (compatibility target).
    #[cfg(feature = "async-std")]
    AsyncStd,
}

/// The smol (and async-std) server.
pub struct Server;

fn now() -> Now {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Now::new(Instant::now(), unix_ms)
}

impl Server {
    /// Starts on smol.
    pub fn start(config: Config) -> Result<ServerHandle, StartError> {
        Server::start_with(config, Flavor::Smol)
    }

    /// Binds every listener of `config` (so the addresses are known when this
    /// returns) and serves on a thread of its own, on the given runtime.
    pub fn start_with(config: Config, flavor: Flavor) -> Result<ServerHandle, StartError> {
        let prepared = prepare(&config)?;
        let (stop_tx, stop_rx) = smol::channel::bounded(1);
        let stop = move || {
            let _ = stop_tx.try_send(());
        };
        ServerHandle::spawn(prepared, stop, move |prepared| {
            let ex = Rc::new(LocalExecutor::new());
            let fut = ex.run(run_server(ex.clone(), prepared, flavor, stop_rx));
            match flavor {
                Flavor::Smol => smol::block_on(fut),
                #[cfg(feature = "async-std")]
                Flavor::AsyncStd => async_std::task::block_on(fut),
            }
        })
    }
}

/// Serves `config` on the caller's executor, for programs that embed the broker in
/// their own smol runtime: returns the bound addresses and the future to spawn (or
/// run). It ends, after a graceful shutdown, when `stop` receives a message or is
/// closed.
pub fn serve_on(
    ex: Rc<LocalExecutor<'static>>,
    config: &Config,
    stop: smol::channel::Receiver<()>,
) -> Result<(Vec<(ListenerKind, SocketAddr)>, impl Future<Output = ()>), StartError> {
    let prepared = prepare(config)?;
    let addrs = prepared.addrs();
    Ok((addrs, run_server(ex, prepared, Flavor::Smol, stop)))
}

/// `Some(output)`, or `None` if `d` passed first.
async fn timeout<T>(d: Duration, fut: impl Future<Output = T>) -> Option<T> {
    connection::timeout(
        async move {
            Timer::after(d).await;
        },
        fut,
    )
    .await
}

async fn run_server(
    ex: Rc<LocalExecutor<'static>>,
    prepared: Prepared,
    flavor: Flavor,
    stop: smol::channel::Receiver<()>,
) {
    let Prepared {
        broker,
        listeners,
        handshake_timeout,
        ..
    } = prepared;
    let (hub, timer_notify) = connection::shared_hub(broker);
    let timer = ex.spawn(connection::run_timer(
        hub.clone(),
        timer_notify,
        now,
        |at| async move {
            Timer::at(at).await;
        },
    ));
    // async-std's streams cannot be taken off its reactor without a second
    // descriptor, so only smol parks idle connections.
    let (lot, lot_task) = match flavor {
        Flavor::Smol => match parking_lot() {
            Ok((lot, ready_fd)) => {
                let lot = Rc::new(RefCell::new(lot));
                let notify = LocalNotify::new();
                hub.borrow_mut().set_lot_waker(notify.clone());
                let task = run_lot(ex.clone(), hub.clone(), lot.clone(), ready_fd, notify);
                (Some(lot), Some(ex.spawn(task)))
            }
            Err(error) => {
                tracing::debug!(%error, "no parking lot: idle connections keep their tasks");
                (None, None)
            }
        },
        #[cfg(feature = "async-std")]
        Flavor::AsyncStd => (None, None),
    };
    let mut accept_tasks = Vec::new();
    for l in listeners {
        let socket = match l.socket.try_clone() {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(listener = %l.label, %error, "cannot register listener");
                continue;
            }
        };
        let task = match flavor {
            Flavor::Smol => match smol::net::TcpListener::try_from(socket) {
                Ok(listener) => ex.spawn(accept_loop(
                    ex.clone(),
                    hub.clone(),
                    lot.clone(),
                    listener,
                    l,
                    handshake_timeout,
                )),
                Err(error) => {
                    tracing::error!(listener = %l.label, %error, "cannot register listener");
                    continue;
                }
            },
            #[cfg(feature = "async-std")]
            Flavor::AsyncStd => {
                let listener = async_std::net::TcpListener::from(socket);
                ex.spawn(accept_loop(
                    ex.clone(),
                    hub.clone(),
                    None,
                    listener,
                    l,
                    handshake_timeout,
                ))
            }
        };
        accept_tasks.push(task);
    }
    let _ = stop.recv().await;
    tracing::info!("shutting down");
    drop(accept_tasks);
    connection::shutdown(&hub, now, |d| async move {
        Timer::after(d).await;
    })
    .await;
    drop(lot_task);
    drop(timer);
    tracing::info!("stopped");
}

type Lot = Rc<RefCell<ParkingLot>>;

/// A parking lot and (a duplicate of) its epoll descriptor registered with
/// async-io.
fn parking_lot() -> io::Result<(ParkingLot, Async<OwnedFd>)> {
    let lot = ParkingLot::new()?;
    let fd = lot.epoll_fd().try_clone_to_owned()?;
    Ok((lot, Async::new(fd)?))
}

/// The parking lot's task: sweeps for idle connections every tick, and gives a
/// task back to each parked connection whose socket is ready or that the core has
/// output for.
async fn run_lot(
    ex: Rc<LocalExecutor<'static>>,
    hub: SharedHub,
    lot: Lot,
    ready_fd: Async<OwnedFd>,
    notify: Rc<LocalNotify>,
) {
    let mut tick = Timer::interval(park::PARK_TICK);
    let mut ready = Vec::new();
    loop {
        let sweep = poll_fn(|cx| {
            if ready_fd.poll_readable(cx).is_ready() || notify.poll_notified(cx).is_ready() {
                return Poll::Ready(false);
            }
            Pin::new(&mut tick).poll_next(cx).map(|_| true)
        })
        .await;
        if sweep {
            park::sweep_idle(&hub);
        }
        lot.borrow_mut().take_ready(&hub, &mut ready);
        for parked in ready.drain(..) {
            let (fd, conn) = parked.into_parts(&hub);
            match smol::net::TcpStream::try_from(std::net::TcpStream::from(fd)) {
                Ok(socket) => {
                    let start = Start::Resume(conn);
                    let task = serve_plain::<smol::net::TcpListener>(
                        hub.clone(),
                        Some(lot.clone()),
                        socket,
                        start,
                    );
                    ex.spawn(task).detach();
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot register a parked connection again");
                    conn.closed(&hub, now());
                }
            }
        }
    }
}

/// A plain-TCP connection's task: serves it until it ends or parks.
async fn serve_plain<L: Accept>(hub: SharedHub, lot: Option<Lot>, socket: L::Stream, start: Start) {
    let (mut socket, mut start) = (socket, start);
    loop {
        let sleep = |d| async move {
            Timer::after(d).await;
        };
        let parkable = lot.is_some();
        let served =
            connection::serve_plain(hub.clone(), FuturesIo(socket), start, parkable, now, sleep);
        let Some((FuturesIo(idle), conn)) = served.await else {
            return;
        };
        let Some(lot) = &lot else { return };
        let fd = match L::into_fd(idle) {
            Ok(fd) => fd,
            Err(error) => {
                tracing::debug!(%error, "cannot take an idle connection off the reactor");
                conn.closed(&hub, now());
                return;
            }
        };
        let Err((fd, conn)) = lot.borrow_mut().park(&hub, fd, conn) else {
            return;
        };
        // Could not park: go on serving it here.
        match L::from_fd(fd) {
            Ok(s) => (socket, start) = (s, Start::Resume(conn)),
            Err(_) => {
                conn.closed(&hub, now());
                return;
            }
        }
    }
}

/// A listening socket of smol or async-std.
trait Accept: 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
    fn set_nodelay(stream: &Self::Stream);
    /// Takes a stream off the reactor, for the parking lot.
    fn into_fd(stream: Self::Stream) -> io::Result<OwnedFd>;
    /// A parked stream back on the reactor.
    fn from_fd(fd: OwnedFd) -> io::Result<Self::Stream>;
}

impl Accept for smol::net::TcpListener {
    type Stream = smol::net::TcpStream;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> {
        smol::net::TcpListener::accept(self)
    }
    fn set_nodelay(stream: &Self::Stream) {
        let _ = stream.set_nodelay(true);
    }
    fn into_fd(stream: Self::Stream) -> io::Result<OwnedFd> {
        let shared: Arc<Async<std::net::TcpStream>> = stream.into();
        let only = Arc::try_unwrap(shared)
            .map_err(|_| io::Error::other("the stream has other handles"))?;
        Ok(OwnedFd::from(only.into_inner()?))
    }
    fn from_fd(fd: OwnedFd) -> io::Result<Self::Stream> {
        smol::net::TcpStream::try_from(std::net::TcpStream::from(fd))
    }
}

#[cfg(feature = "async-std")]
impl Accept for async_std::net::TcpListener {
    type Stream = async_std::net::TcpStream;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> {
        async_std::net::TcpListener::accept(self)
    }
    fn set_nodelay(stream: &Self::Stream) {
        let _ = stream.set_nodelay(true);
    }
    fn into_fd(_stream: Self::Stream) -> io::Result<OwnedFd> {
        // Never asked: async-std runs without a parking lot.
        Err(io::ErrorKind::Unsupported.into())
    }
    fn from_fd(fd: OwnedFd) -> io::Result<Self::Stream> {
        Ok(async_std::net::TcpStream::from(std::net::TcpStream::from(
            fd,
        )))
    }
}

async fn accept_loop<L: Accept>(
    ex: Rc<LocalExecutor<'static>>,
    hub: SharedHub,
    lot: Option<Lot>,
    listener: L,
    l: BoundListener,
    handshake_timeout: Duration,
) {
    let tls = l.tls.clone().map(futures_rustls::TlsAcceptor::from);
    loop {
        let (socket, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = %l.label, %error, "accept failed");
                Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        L::set_nodelay(&socket);
        let peer = l.peer(remote);
        let (hub, tls, websocket, path) = (
            hub.clone(),
            tls.clone(),
            l.kind.is_websocket(),
            l.path.clone(),
        );
        let sleep = |d| async move {
            Timer::after(d).await;
        };
        if tls.is_none() && !websocket {
            let start = Start::New(peer);
            ex.spawn(serve_plain::<L>(hub, lot.clone(), socket, start))
                .detach();
            continue;
        }
        let Some(acceptor) = tls else {
            // A task per plain connection holds only what the connection loop needs.
            let t = FuturesIo(socket);
            ex.spawn(connection::serve(
                hub,
                t,
                peer,
                websocket,
                path,
                handshake_timeout,
                now,
                sleep,
            ))
            .detach();
            continue;
        };
        ex.spawn(async move {
            match timeout(handshake_timeout, acceptor.accept(socket)).await {
                Some(Ok(stream)) => {
                    let t = FuturesIo(stream);
                    connection::serve(hub, t, peer, websocket, path, handshake_timeout, now, sleep)
                        .await
                }
                Some(Err(error)) => {
                    tracing::debug!(remote = %peer.remote, %error, "TLS handshake failed")
                }
                None => tracing::debug!(remote = %peer.remote, "TLS handshake timed out"),
            }
        })
        .detach();
    }
}

/// Size of the per-thread read scratch block: the most one read takes.
const SCRATCH_LEN: usize = 64 * 1024;

std::thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SCRATCH_LEN]);
}

/// Any futures-io stream (smol or async-std TCP, futures-rustls) as a [`Transport`].
struct FuturesIo<S>(S);

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for FuturesIo<S> {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        // futures-io reads into initialised memory. Zeroing the caller's spare room
        // before every read cost more than the reads (most return a few acks, or
        // nothing): read into this thread's scratch block, zeroed once, and copy
        // only what arrived.
        let want = (buf.capacity() - buf.len()).clamp(1, SCRATCH_LEN);
        SCRATCH.with_borrow_mut(|scratch| {
            let r = Pin::new(&mut self.0).poll_read(cx, &mut scratch[..want]);
            if let Poll::Ready(Ok(n)) = r {
                buf.extend_from_slice(&scratch[..n]);
            }
            r
        })
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
