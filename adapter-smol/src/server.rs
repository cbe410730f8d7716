//! The server thread: a smol `LocalExecutor` driven by smol's or async-std's
//! `block_on`, serving with adapter-common's server loop over [`Smol`].

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use adapter_common::config::{Config, ListenerKind};
use adapter_common::connection::Transport;
use adapter_common::park::Parkable;
use adapter_common::runtime::CertificateChain;
use adapter_common::runtime::{run_server, Runtime};
use adapter_common::server::{prepare, ServerHandle, StartError};
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
            let stop = stopped(stop_rx);
            match flavor {
                Flavor::Smol => {
                    let rt = Smol::<smol::net::TcpListener>::new(ex.clone());
                    smol::block_on(ex.run(run_server(rt, prepared, stop)));
                }
                #[cfg(feature = "async-std")]
                Flavor::AsyncStd => {
                    let rt = Smol::<async_std::net::TcpListener>::new(ex.clone());
                    async_std::task::block_on(ex.run(run_server(rt, prepared, stop)));
                }
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
    let rt = Smol::<smol::net::TcpListener>::new(ex);
    Ok((addrs, run_server(rt, prepared, stopped(stop))))
}

/// Ready when `stop` receives a message or is closed.
async fn stopped(stop: smol::channel::Receiver<()>) {
    let _ = stop.recv().await;
}

/// smol's executor and timer as adapter-common's [`Runtime`], with the sockets of
/// smol or of async-std (`L`, the listener type): smol's `block_on` or async-std's
/// drives the executor.
struct Smol<L> {
    ex: Rc<LocalExecutor<'static>>,
    sockets: PhantomData<fn() -> L>,
}

impl<L> Smol<L> {
    fn new(ex: Rc<LocalExecutor<'static>>) -> Self {
        Smol {
            ex,
            sockets: PhantomData,
        }
    }
}

impl<L> Clone for Smol<L> {
    fn clone(&self) -> Self {
        Smol::new(self.ex.clone())
    }
}

impl<L: Accept> Runtime for Smol<L>
where
    FuturesIo<L::Stream>: Parkable,
{
    type Task = smol::Task<()>;

    fn spawn<F: Future<Output = ()> + 'static>(&self, task: F) -> smol::Task<()> {
        self.ex.spawn(task)
    }

    fn spawn_detached<F: Future<Output = ()> + 'static>(&self, task: F) {
        self.ex.spawn(task).detach();
    }

    async fn sleep(d: Duration) {
        Timer::after(d).await;
    }

    async fn sleep_until(at: Instant) {
        Timer::at(at).await;
    }

    fn interval(period: Duration) -> impl FnMut(&mut Context<'_>) -> Poll<()> + 'static {
        // The first tick after one period; missed ticks come at once.
        let mut tick = Timer::interval(period);
        move |cx| Pin::new(&mut tick).poll_next(cx).map(drop)
    }

    /// async-std's streams cannot be taken off its reactor without a second
    /// descriptor, so only smol parks idle connections.
    const PARKS: bool = L::PARKS;

    type LotFd = Async<OwnedFd>;

    fn watch_lot(fd: OwnedFd) -> io::Result<Async<OwnedFd>> {
        Async::new(fd)
    }

    fn poll_lot(
        fd: &Async<OwnedFd>,
        cx: &mut Context<'_>,
        take: impl FnOnce() -> bool,
    ) -> Poll<io::Result<()>> {
        ready!(fd.poll_readable(cx))?;
        // async-io reports each readiness once and watches the descriptor again at
        // the next poll: there is no readiness to clear.
        take();
        Poll::Ready(Ok(()))
    }

    type Plain = FuturesIo<L::Stream>;

    type Listener = L;

    fn listen(socket: std::net::TcpListener) -> io::Result<L> {
        L::from_std(socket)
    }

    async fn accept(listener: &L) -> io::Result<(FuturesIo<L::Stream>, SocketAddr)> {
        let (socket, remote) = listener.accept().await?;
        L::set_nodelay(&socket);
        Ok((FuturesIo(socket), remote))
    }

    async fn tls_accept(
        config: Arc<futures_rustls::rustls::ServerConfig>,
        plain: FuturesIo<L::Stream>,
    ) -> io::Result<(impl Transport + 'static, Option<Arc<CertificateChain>>)> {
        let acceptor = futures_rustls::TlsAcceptor::from(config);
        let tls = acceptor.accept(plain.0).await?;
        let certificates = adapter_common::runtime::peer_certificates(tls.get_ref().1);
        Ok((FuturesIo(tls), certificates))
    }
}

/// A listening socket of smol or async-std.
trait Accept: Sized + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    /// Whether its streams can leave the reactor for the parking lot.
    const PARKS: bool;
    fn from_std(socket: std::net::TcpListener) -> io::Result<Self>;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
    fn set_nodelay(stream: &Self::Stream);
}

impl Accept for smol::net::TcpListener {
    type Stream = smol::net::TcpStream;
    const PARKS: bool = true;
    fn from_std(socket: std::net::TcpListener) -> io::Result<Self> {
        smol::net::TcpListener::try_from(socket)
    }
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> {
        smol::net::TcpListener::accept(self)
    }
    fn set_nodelay(stream: &Self::Stream) {
        let _ = stream.set_nodelay(true);
    }
}

#[cfg(feature = "async-std")]
impl Accept for async_std::net::TcpListener {
    type Stream = AsyncStdStream;
    const PARKS: bool = false;
    fn from_std(socket: std::net::TcpListener) -> io::Result<Self> {
        Ok(async_std::net::TcpListener::from(socket))
    }
    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, remote) = async_std::net::TcpListener::accept(self).await?;
        Ok((AsyncStdStream(stream), remote))
    }
    fn set_nodelay(stream: &Self::Stream) {
        let _ = stream.0.set_nodelay(true);
    }
}

/// async-std's TCP stream, whose close also shuts the write side down: async-std's
/// own `poll_close` only flushes, so a client would see the end of a refused or
/// disconnected connection only when the broker's linger drops the socket (2 s
/// later), not right after the last packet.
#[cfg(feature = "async-std")]
struct AsyncStdStream(async_std::net::TcpStream);

#[cfg(feature = "async-std")]
impl AsyncRead for AsyncStdStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

#[cfg(feature = "async-std")]
impl AsyncWrite for AsyncStdStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.0).poll_close(cx))?;
        Poll::Ready(self.0.shutdown(std::net::Shutdown::Write))
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
impl Parkable for FuturesIo<AsyncStdStream> {
    fn into_fd(self) -> io::Result<OwnedFd> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        Ok(FuturesIo(AsyncStdStream(
            std::net::TcpStream::from(fd).into(),
        )))
    }
}
