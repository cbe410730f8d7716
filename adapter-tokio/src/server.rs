//! Listeners, the timer task and graceful shutdown, on one server thread.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use adapter_common::config::{Config, ListenerKind, TlsSource};
use adapter_common::connection::{self, Connection, LocalNotify, SharedHub};
use adapter_common::core::{broker_config, PasswordAuthenticator};
use adapter_common::driver::Hub;
use adapter_common::passwd::{PasswdError, PasswordFile};
use adapter_common::tls::{self, TlsError};
use broker_state::{Broker, PeerInfo, Transport};
use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::conn::{now, TokioIo};

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not bind.
    Bind {
        /// The listener's address.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
    /// The TLS material could not be loaded or created.
    Tls(TlsError),
    /// The password file could not be read.
    Passwords(PasswdError),
    /// The runtime could not start.
    Runtime(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::Passwords(e) => write!(f, "{e}"),
            StartError::Runtime(e) => write!(f, "cannot start the runtime: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running server. Dropping it shuts the server down.
pub struct Server {
    addrs: Vec<(ListenerKind, SocketAddr)>,
    ca_cert: Option<std::path::PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Bound {
    kind: ListenerKind,
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    path: Option<String>,
    label: Arc<str>,
}

/// How long a connection has for its TLS and WebSocket handshakes.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// Binds every listener of `config` (so the addresses are known when this
    /// returns) and starts serving on a thread of its own.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let dev = if config.dev_tls {
            let dev = tls::dev_tls(&config.data_dir).map_err(StartError::Tls)?;
            Some(dev)
        } else {
            None
        };
        let passwords = match &config.password_file {
            Some(path) => Some(PasswordFile::load(path).map_err(StartError::Passwords)?),
            None => None,
        };
        let mut bound = Vec::new();
        let mut addrs = Vec::new();
        for l in &config.listeners {
            let tls = match (&l.tls, &dev) {
                (Some(TlsSource::Files { cert, key }), _) => {
                    Some(tls::server_config(cert, key).map_err(StartError::Tls)?)
                }
                (Some(TlsSource::Dev), Some(dev)) => {
                    Some(dev.server_config().map_err(StartError::Tls)?)
                }
                _ => None,
            };
            let listener =
                std::net::TcpListener::bind(l.bind).map_err(|error| StartError::Bind {
                    addr: l.bind,
                    error,
                })?;
            listener
                .set_nonblocking(true)
                .map_err(|error| StartError::Bind {
                    addr: l.bind,
                    error,
                })?;
            let addr = listener.local_addr().map_err(|error| StartError::Bind {
                addr: l.bind,
                error,
            })?;
            addrs.push((l.kind, addr));
            let label: Arc<str> = format!("{}://{addr}", l.kind.as_str()).into();
            tracing::info!(listener = %label, "listening");
            bound.push(Bound {
                kind: l.kind,
                listener,
                tls: tls.map(|c| TlsAcceptor::from(Arc::new(c))),
                path: l.path.clone(),
                label,
            });
        }
        let handshake_timeout = config
            .limits
            .tls_handshake_timeout_secs
            .map_or(DEFAULT_HANDSHAKE_TIMEOUT, Duration::from_secs);
        let mut broker = Broker::new(broker_config(&config.limits), os_seed());
        broker.set_authenticator(Box::new(PasswordAuthenticator::new(&config, passwords)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("brokk".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(
                    &runtime,
                    run_server(broker, bound, handshake_timeout, stop_rx),
                );
            })
            .map_err(StartError::Runtime)?;
        Ok(Server {
            addrs,
            ca_cert: dev.map(|d| d.ca_cert),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound addresses, in the order of the config's listeners.
    pub fn local_addrs(&self) -> &[(ListenerKind, SocketAddr)] {
        &self.addrs
    }

    /// The first bound address of a kind.
    pub fn addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.addrs.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a)
    }

    /// With dev TLS, the CA certificate clients should trust.
    pub fn dev_ca_cert(&self) -> Option<&std::path::Path> {
        self.ca_cert.as_deref()
    }

    /// Graceful shutdown: stop accepting, DISCONNECT 0x8B to 5.0 clients, close every
    /// connection, return when done.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    /// Waits until the server stops on its own (it does not, unless shut down).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

async fn run_server(
    broker: Broker,
    listeners: Vec<Bound>,
    handshake_timeout: Duration,
    stop: oneshot::Receiver<()>,
) {
    let hub: SharedHub = Rc::new(RefCell::new(Hub::new(broker)));
    let timer_notify = LocalNotify::new();
    hub.borrow_mut().set_timer_waker(timer_notify.clone());
    let timer = tokio::task::spawn_local(run_timer(hub.clone(), timer_notify));
    let mut accept_tasks = Vec::new();
    for l in listeners {
        match TcpListener::from_std(l.listener) {
            Ok(listener) => accept_tasks.push(tokio::task::spawn_local(accept_loop(
                hub.clone(),
                listener,
                l.kind,
                l.tls,
                l.path,
                l.label,
                handshake_timeout,
            ))),
            Err(error) => tracing::error!(listener = %l.label, %error, "cannot register listener"),
        }
    }
    let _ = stop.await;
    tracing::info!("shutting down");
    for t in &accept_tasks {
        t.abort();
    }
    hub.borrow_mut().shutdown(now());
    // Connections flush their DISCONNECT and close; give them a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !hub.borrow().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    timer.abort();
    tracing::info!("stopped");
}

async fn run_timer(hub: SharedHub, notify: Rc<LocalNotify>) {
    loop {
        let deadline = hub.borrow_mut().arm_timer();
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {
                        hub.borrow_mut().timeout(now());
                    }
                    _ = notify.notified() => {}
                }
            }
            None => notify.notified().await,
        }
    }
}

async fn accept_loop(
    hub: SharedHub,
    listener: TcpListener,
    kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    path: Option<String>,
    label: Arc<str>,
    handshake_timeout: Duration,
) {
    loop {
        let (socket, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = %label, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let peer = PeerInfo {
            transport: match kind {
                ListenerKind::Mqtt => Transport::Tcp,
                ListenerKind::Mqtts => Transport::Tls,
                ListenerKind::Ws => Transport::WebSocket,
                ListenerKind::Wss => Transport::SecureWebSocket,
            },
            listener: label.to_string(),
            remote: remote.to_string(),
        };
        tokio::task::spawn_local(handle_socket(
            hub.clone(),
            socket,
            peer,
            tls.clone(),
            kind.is_websocket(),
            path.clone(),
            handshake_timeout,
        ));
    }
}

async fn handle_socket(
    hub: SharedHub,
    socket: TcpStream,
    peer: PeerInfo,
    tls: Option<TlsAcceptor>,
    websocket: bool,
    path: Option<String>,
    handshake_timeout: Duration,
) {
    match tls {
        None => {
            serve(
                hub,
                TokioIo(socket),
                peer,
                websocket,
                path,
                handshake_timeout,
            )
            .await
        }
        Some(acceptor) => {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => {
                    serve(
                        hub,
                        TokioIo(stream),
                        peer,
                        websocket,
                        path,
                        handshake_timeout,
                    )
                    .await
                }
                Ok(Err(error)) => {
                    tracing::debug!(remote = %peer.remote, %error, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(remote = %peer.remote, "TLS handshake timed out"),
            }
        }
    }
}

/// Time a closing connection gets to take its last bytes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

async fn serve<T: connection::Transport>(
    hub: SharedHub,
    mut t: T,
    peer: PeerInfo,
    websocket: bool,
    path: Option<String>,
    handshake_timeout: Duration,
) {
    let initial = if websocket {
        let upgrade = connection::handshake(&mut t, path.as_deref());
        match tokio::time::timeout(handshake_timeout, upgrade).await {
            Ok(Some(rest)) => rest,
            _ => return,
        }
    } else {
        BytesMut::new()
    };
    let mut conn = Connection::open(&hub, now(), peer, websocket, initial);
    if conn.run(&hub, &mut t, now).await {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, conn.finish(&hub, &mut t)).await;
    }
    conn.closed(&hub, now());
}

/// 32 bytes from the operating system for the core's seed (assigned client ids,
/// shared-subscription picks, hash seeds).
fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut seed).is_ok() {
            return seed;
        }
    }
    // No /dev/urandom: the std hasher's per-process random keys are the fallback.
    use std::hash::{BuildHasher, Hasher};
    for chunk in seed.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    seed
}
