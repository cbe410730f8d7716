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
use adapter_common::park::{self, Parkable, ParkedGauge, ParkingLot, SharedLot};
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
    connection::timeout(sleep(d), fut).await
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
        park_tick,
        parked,
        verifier,
        max_verifications,
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
    let auth_notify = LocalNotify::new();
    hub.borrow_mut()
        .set_authentication(verifier.clone(), auth_notify.clone());
    let spawner = ex.clone();
    let auth = ex.spawn(connection::run_authentication(
        hub.clone(),
        auth_notify,
        verifier,
        max_verifications,
        now,
        move |f| spawner.spawn(f).detach(),
        sleep,
    ));
    // async-std's streams cannot be taken off its reactor without a second
    // descriptor, so only smol parks idle connections.
    let (lot, lot_task) = match flavor {
        Flavor::Smol => match parking_lot(parked) {
            Ok((lot, ready_fd)) => {
                let lot = Rc::new(RefCell::new(lot));
                let notify = LocalNotify::new();
                hub.borrow_mut().set_lot_waker(notify.clone());
                let task = run_lot(
                    ex.clone(),
                    hub.clone(),
                    lot.clone(),
                    ready_fd,
                    notify,
                    park_tick,
                );
                (Some(lot), Some(ex.spawn(task)))
            }
            Err(error) => {
                tracing::debug!(%error, "no parking lot: idle connections keep their tasks");
                let reports = connection::run_reports(hub.clone(), park_tick, sleep);
                (None, Some(ex.spawn(reports)))
            }
        },
        #[cfg(feature = "async-std")]
        Flavor::AsyncStd => {
            let reports = connection::run_reports(hub.clone(), park_tick, sleep);
            (None, Some(ex.spawn(reports)))
        }
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
    connection::shutdown(&hub, now, sleep).await;
    drop(lot_task);
    drop(timer);
    drop(auth);
    tracing::info!("stopped");
}

/// A parking lot and (a duplicate of) its epoll descriptor registered with
/// async-io.
fn parking_lot(parked: ParkedGauge) -> io::Result<(ParkingLot, Async<OwnedFd>)> {
    let lot = ParkingLot::new(parked)?;
    let fd = lot.epoll_fd().try_clone_to_owned()?;
    Ok((lot, Async::new(fd)?))
}

/// The parking lot's task: sweeps for idle connections every tick, and gives a
/// task back to each parked connection whose socket is ready or that the core has
/// output for.
async fn run_lot(
    ex: Rc<LocalExecutor<'static>>,
    hub: SharedHub,
    lot: SharedLot,
    ready_fd: Async<OwnedFd>,
    notify: Rc<LocalNotify>,
    park_tick: Duration,
) {
    let mut tick = Timer::interval(park_tick);
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
            if let Some((t, conn)) = parked.resume::<FuturesIo<smol::net::TcpStream>>(&hub, now()) {
                let (lot, start) = (Some(lot.clone()), Start::Opened(conn));
                let serve = connection::serve_plain(hub.clone(), lot, t, start, now, sleep);
                ex.spawn(serve).detach();
            }
        }
    }
}

/// The runtime's timer as the connection code takes it.
async fn sleep(d: Duration) {
    Timer::after(d).await;
}

/// A listening socket of smol or async-std.
trait Accept: 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
    fn set_nodelay(stream: &Self::Stream);
}

impl Accept for smol::net::TcpListener {
    type Stream = smol::net::TcpStream;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> {
        smol::net::TcpListener::accept(self)
    }
    fn set_nodelay(stream: &Self::Stream) {
        let _ = stream.set_nodelay(true);
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
}

async fn accept_loop<L: Accept>(
    ex: Rc<LocalExecutor<'static>>,
    hub: SharedHub,
    lot: Option<SharedLot>,
    listener: L,
    l: BoundListener,
    handshake_timeout: Duration,
) where
    FuturesIo<L::Stream>: Parkable,
{
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
        if tls.is_none() && !websocket {
            let (t, start) = (FuturesIo(socket), Start::New(peer));
            let serve = connection::serve_plain(hub, lot.clone(), t, start, now, sleep);
            ex.spawn(serve).detach();
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

impl Parkable for FuturesIo<smol::net::TcpStream> {
    fn into_fd(self) -> io::Result<OwnedFd> {
        let shared: Arc<Async<std::net::TcpStream>> = self.0.into();
        let only = Arc::try_unwrap(shared)
            .map_err(|_| io::Error::other("the stream has other handles"))?;
        Ok(OwnedFd::from(only.into_inner()?))
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        smol::net::TcpStream::try_from(std::net::TcpStream::from(fd)).map(FuturesIo)
    }
}

/// async-std runs without a parking lot: its streams can give up their descriptor
/// only as a duplicate (and its conversion panics when none is left).
#[cfg(feature = "async-std")]
impl Parkable for FuturesIo<async_std::net::TcpStream> {
    fn into_fd(self) -> io::Result<OwnedFd> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        Ok(FuturesIo(std::net::TcpStream::from(fd).into()))
    }
}
