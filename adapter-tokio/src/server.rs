//! The server thread: a current-thread tokio runtime with a `LocalSet`, serving
//! with adapter-common's server loop over [`Tokio`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use adapter_common::config::Config;
use adapter_common::connection::Transport;
use adapter_common::runtime::CertificateChain;
use adapter_common::runtime::{peer_certificates, run_server, Runtime};
use adapter_common::server::{prepare, ServerHandle, StartError};
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::conn::TokioIo;

/// The tokio server.
pub struct Server;

impl Server {
    /// Binds every listener of `config` (so the addresses are known when this
    /// returns) and starts serving on a thread of its own.
    pub fn start(config: Config) -> Result<ServerHandle, StartError> {
        let prepared = prepare(&config)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        ServerHandle::spawn(
            prepared,
            move || {
                let _ = stop_tx.send(());
            },
            move |prepared| {
                let stop = async {
                    let _ = stop_rx.await;
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, run_server(Tokio, prepared, stop));
            },
        )
    }
}

/// tokio as adapter-common's [`Runtime`], inside a `LocalSet` on a current-thread
/// runtime.
#[derive(Clone, Copy)]
struct Tokio;

/// A tokio task that is aborted when this handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Runtime for Tokio {
    type Task = AbortOnDrop;

    fn spawn<F: Future<Output = ()> + 'static>(&self, task: F) -> AbortOnDrop {
        AbortOnDrop(tokio::task::spawn_local(task))
    }

    fn spawn_detached<F: Future<Output = ()> + 'static>(&self, task: F) {
        tokio::task::spawn_local(task);
    }

    fn sleep(d: Duration) -> impl Future<Output = ()> + 'static {
        tokio::time::sleep(d)
    }

    fn sleep_until(at: Instant) -> impl Future<Output = ()> + 'static {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at))
    }

    fn interval(period: Duration) -> impl FnMut(&mut Context<'_>) -> Poll<()> + 'static {
        // The first tick is at once; a late tick pushes the next ones back.
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        move |cx| tick.poll_tick(cx).map(drop)
    }

    type LotFd = AsyncFd<OwnedFd>;

    fn watch_lot(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: the AsyncFd owns `fd`, so it stays open and the same while registered.
        let ready_fd =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(ready_fd)
    }

    fn poll_lot(
        fd: &AsyncFd<OwnedFd>,
        cx: &mut Context<'_>,
        take: impl FnOnce() -> bool,
    ) -> Poll<io::Result<()>> {
        let mut guard = ready!(fd.poll_read_ready(cx))?;
        if take() {
            guard.clear_ready();
        }
        Poll::Ready(Ok(()))
    }

    type Plain = TokioIo<TcpStream>;

    type Listener = TcpListener;

    fn listen(socket: std::net::TcpListener) -> io::Result<TcpListener> {
        TcpListener::from_std(socket)
    }

    async fn accept(listener: &TcpListener) -> io::Result<(TokioIo<TcpStream>, SocketAddr)> {
        let (socket, remote) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        Ok((TokioIo(socket), remote))
    }

    async fn tls_accept(
        config: Arc<tokio_rustls::rustls::ServerConfig>,
        plain: TokioIo<TcpStream>,
    ) -> io::Result<(impl Transport + 'static, Option<Arc<CertificateChain>>)> {
        let tls = TlsAcceptor::from(config).accept(plain.0).await?;
        let certificates = peer_certificates(tls.get_ref().1);
        Ok((TokioIo(tls), certificates))
    }
}
