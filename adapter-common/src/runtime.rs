//! One server thread's tasks, written once for every runtime: the timer, the
//! authentication task, the parking lot (or the reports where there is none), an
//! accept loop per listener, and graceful shutdown.
//!
//! What differs between runtimes is the [`Runtime`] trait: spawning on the
//! thread's executor, the timer, the reactor the parking lot's epoll descriptor is
//! registered with, and the socket types (listener, plain TCP stream, TLS). An
//! adapter implements it and runs [`run_server`] on its executor.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use broker_state::CertificateChain;
use broker_state::{Now, PeerInfo};
use bytes::BytesMut;

use crate::connection::{self, LocalNotify, SharedHub, Start, Transport};
use crate::http::{self, HttpContext};
use crate::park::{self, Parkable, ParkedGauge, ParkingLot, SharedLot};
use crate::server::{BoundListener, Prepared};

/// What a server thread needs from an async runtime. All of it is used from the
/// one thread the server runs on, inside the runtime's executor (tokio: a
/// `LocalSet`; smol: a `LocalExecutor`); the tasks are `!Send`.
pub trait Runtime: Clone + 'static {
    /// A spawned task that is cancelled when this handle is dropped.
    type Task;

    /// Spawns `task` on this thread's executor; dropping the handle cancels it.
    fn spawn<F: Future<Output = ()> + 'static>(&self, task: F) -> Self::Task;

    /// Spawns `task` on this thread's executor to run until it ends (a
    /// connection's task).
    fn spawn_detached<F: Future<Output = ()> + 'static>(&self, task: F);

    /// The runtime's timer: ready after `d`.
    fn sleep(d: Duration) -> impl Future<Output = ()> + 'static;

    /// The runtime's timer: ready at `at`.
    fn sleep_until(at: Instant) -> impl Future<Output = ()> + 'static;

    /// A ticker every `period` (the parking lot's sweep), polled through the
    /// returned function: ready at each tick. Each runtime keeps its own rule for
    /// the first tick and for ticks missed while the thread was busy.
    fn interval(period: Duration) -> impl FnMut(&mut Context<'_>) -> Poll<()> + 'static;

    /// Whether idle plain-TCP connections may park: the runtime's stream can give
    /// its descriptor up ([`Parkable`]). Without it there is no parking lot.
    const PARKS: bool = true;

    /// The parking lot's epoll descriptor registered with the runtime's reactor.
    type LotFd: 'static;

    /// Registers (a duplicate of) the parking lot's epoll descriptor with the
    /// runtime's reactor, for reading.
    fn watch_lot(fd: OwnedFd) -> io::Result<Self::LotFd>;

    /// Ready once the lot's descriptor is readable: then `take` takes the lot's
    /// ready connections ([`ParkingLot::take_ready`]), and if it says none are left
    /// the runtime clears the descriptor's readiness (where it keeps one, as tokio's
    /// `AsyncFd` does), so that the next poll waits for the reactor again.
    fn poll_lot(
        fd: &Self::LotFd,
        cx: &mut Context<'_>,
        take: impl FnOnce() -> bool,
    ) -> Poll<io::Result<()>>;

    /// An accepted plain TCP stream, as the connection loop and the parking lot
    /// take it.
    type Plain: Parkable + 'static;

    /// A listening socket on the runtime's reactor.
    type Listener: 'static;

    /// A bound listening socket (non-blocking) registered with the reactor.
    fn listen(socket: std::net::TcpListener) -> io::Result<Self::Listener>;

    /// The next connection on `listener`, with Nagle's algorithm off.
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Plain, SocketAddr)>>;

    /// The server side of a TLS handshake over an accepted stream, and the
    /// certificate chain the client presented ([`peer_certificates`]).
    fn tls_accept(
        config: Arc<rustls::ServerConfig>,
        plain: Self::Plain,
    ) -> impl Future<Output = io::Result<(impl Transport + 'static, Option<Arc<CertificateChain>>)>>
           + 'static;
}

/// The certificate chain a client presented in a finished handshake, for the
/// authentication question.
pub fn peer_certificates(conn: &rustls::ServerConnection) -> Option<Arc<CertificateChain>> {
    let certs = conn.peer_certificates()?;
    let der = certs
        .iter()
        .map(|c| bytes::Bytes::copy_from_slice(c.as_ref()))
        .collect::<Vec<_>>();
    (!der.is_empty()).then(|| Arc::new(CertificateChain { der }))
}

/// Both clocks (the system's), read by the server and handed to the core.
pub fn now() -> Now {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Now::new(Instant::now(), unix_ms)
}

/// Serves `prepared` on the runtime `rt` until `stop` is ready, then shuts down
/// gracefully: the accept loops stop first, the connections get DISCONNECT 0x8B
/// (5.0) and are closed (the parking lot keeps running meanwhile, so that parked
/// connections get their tasks back to close), then the lot, timer and
/// authentication tasks stop.
pub async fn run_server<R: Runtime>(rt: R, prepared: Prepared, stop: impl Future<Output = ()>) {
    let Prepared {
        broker,
        listeners,
        handshake_timeout,
        park_tick,
        parked,
        verifier,
        max_verifications,
        store,
        cluster,
        lifecycle_events,
        ..
    } = prepared;
    let (hub, timer_notify) = connection::shared_hub(broker);
    hub.borrow_mut().set_lifecycle(&lifecycle_events);
    let store_task = store.map(|store| {
        hub.borrow_mut().set_store(store);
        rt.spawn(connection::run_store(hub.clone(), now))
    });
    let cluster_task = cluster.map(|node| {
        let mut h = hub.borrow_mut();
        h.set_cluster(node);
        // Interest restored from the store goes out now.
        h.cluster_inbound(now(), &mut Vec::new());
        drop(h);
        rt.spawn(connection::run_cluster(hub.clone(), now))
    });
    let timer = rt.spawn(connection::run_timer(
        hub.clone(),
        timer_notify,
        now,
        R::sleep_until,
    ));
    let auth_notify = LocalNotify::new();
    hub.borrow_mut()
        .set_authentication(verifier.clone(), auth_notify.clone());
    let spawner = rt.clone();
    let auth = rt.spawn(connection::run_authentication(
        hub.clone(),
        auth_notify,
        verifier,
        max_verifications,
        now,
        move |f| spawner.spawn_detached(f),
        R::sleep,
    ));
    let parking = if R::PARKS {
        parking_lot::<R>(parked.clone())
            .map_err(|error| {
                tracing::debug!(%error, "no parking lot: idle connections keep their tasks");
            })
            .ok()
    } else {
        None
    };
    let (lot, lot_task) = match parking {
        Some((lot, ready_fd)) => {
            let lot = Rc::new(RefCell::new(lot));
            let notify = LocalNotify::new();
            hub.borrow_mut().set_lot_waker(notify.clone());
            let task = run_lot(
                rt.clone(),
                hub.clone(),
                lot.clone(),
                ready_fd,
                notify,
                park_tick,
            );
            (Some(lot), rt.spawn(task))
        }
        None => {
            let reports = connection::run_reports(hub.clone(), park_tick, R::sleep);
            (None, rt.spawn(reports))
        }
    };
    // The HTTP listeners' shared state (metrics, health, publish over HTTP).
    let spawner = rt.clone();
    let http = HttpContext::new(
        hub.clone(),
        Rc::new(move |f| spawner.spawn_detached(f)),
        Rc::new(|d| Box::pin(R::sleep(d))),
        now,
        parked.clone(),
        handshake_timeout,
    );
    let mut accept_tasks = Vec::new();
    for l in listeners {
        let listener = match l.socket.try_clone().and_then(R::listen) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(listener = %l.label, %error, "cannot register listener");
                continue;
            }
        };
        accept_tasks.push(rt.spawn(accept_loop(
            rt.clone(),
            hub.clone(),
            lot.clone(),
            listener,
            l,
            handshake_timeout,
            http.clone(),
        )));
    }
    // The store was loaded before anything was bound; every listener accepts now.
    http.ready.set(true);
    stop.await;
    http.ready.set(false);
    tracing::info!("shutting down");
    drop(accept_tasks);
    // The lot keeps running: parked connections get their tasks back to close.
    connection::shutdown(&hub, now, R::sleep).await;
    drop(lot_task);
    drop(timer);
    drop(auth);
    drop(store_task);
    drop(cluster_task);
    // What this node forwarded last reaches NATS before it leaves.
    let cluster = hub.borrow_mut().take_cluster();
    if let Some(cluster) = cluster {
        cluster.shutdown();
    }
    // Everything the core handed the store is written and synced before the
    // process ends (the thread waits: nothing else runs any more).
    let store = hub.borrow_mut().take_store();
    if let Some(store) = store {
        let s = store.stats();
        match store.flush_and_close() {
            Ok(()) => tracing::info!(
                commits = s.commits,
                batches = s.batches,
                ops = s.ops_applied,
                elided = s.ops_elided,
                folded = s.ops_folded,
                fsyncs = s.fsyncs,
                bytes = s.bytes_written,
                commit_ms_total = s.commit_time_total.as_millis() as u64,
                commit_ms_max = s.commit_time_max.as_millis() as u64,
                failed_batches = s.failed_batches,
                "store flushed"
            ),
            Err(error) => tracing::error!(%error, "store flush failed at shutdown"),
        }
    }
    // What the last connections' ends queued for the webhook gets a moment to go
    // (after the store: what must survive comes first).
    let lifecycle = hub.borrow_mut().take_lifecycle();
    if let Some(lifecycle) = lifecycle {
        lifecycle.stop(crate::lifecycle::SHUTDOWN_GRACE);
    }
    tracing::info!("stopped");
}

/// A parking lot and (a duplicate of) its epoll descriptor registered with the
/// runtime's reactor.
fn parking_lot<R: Runtime>(parked: ParkedGauge) -> io::Result<(ParkingLot, R::LotFd)> {
    let lot = ParkingLot::new(parked)?;
    let fd = lot.epoll_fd().try_clone_to_owned()?;
    Ok((lot, R::watch_lot(fd)?))
}

/// What woke the parking lot's task.
enum LotWake {
    /// Parked connections were taken (their sockets are ready, or the core has
    /// output for them or closes them), if any.
    Taken,
    /// The sweep tick.
    Tick,
    /// The runtime can no longer say when the lot's descriptor is readable.
    Failed,
}

/// The parking lot's task: sweeps for idle connections every tick, and gives a
/// task back to each parked connection whose socket is ready or that the core has
/// output for.
pub async fn run_lot<R: Runtime>(
    rt: R,
    hub: SharedHub,
    lot: SharedLot,
    ready_fd: R::LotFd,
    notify: Rc<LocalNotify>,
    park_tick: Duration,
) {
    let mut tick = R::interval(park_tick);
    let mut ready = Vec::new();
    loop {
        let woke = poll_fn(|cx| {
            let take = || lot.borrow_mut().take_ready(&hub, &mut ready);
            match R::poll_lot(&ready_fd, cx, take) {
                Poll::Ready(Ok(())) => return Poll::Ready(LotWake::Taken),
                Poll::Ready(Err(_)) => return Poll::Ready(LotWake::Failed),
                Poll::Pending => {}
            }
            if notify.poll_notified(cx).is_ready() {
                lot.borrow_mut().take_ready(&hub, &mut ready);
                return Poll::Ready(LotWake::Taken);
            }
            tick(cx).map(|()| LotWake::Tick)
        })
        .await;
        match woke {
            LotWake::Taken => {}
            LotWake::Tick => park::sweep_idle(&hub),
            LotWake::Failed => return,
        }
        for parked in ready.drain(..) {
            if let Some((t, conn)) = parked.resume::<R::Plain>(&hub, now()) {
                let (lot, start) = (Some(lot.clone()), Start::Opened(conn));
                let serve = connection::serve_plain(hub.clone(), lot, t, start, now, R::sleep);
                rt.spawn_detached(serve);
            }
        }
    }
}

/// One listener's accept loop: each connection gets a task of its own, plain TCP
/// with the parking lot (when there is one), WebSocket after its upgrade, TLS (and
/// WebSocket over TLS) after its handshake, which has `handshake_timeout`.
async fn accept_loop<R: Runtime>(
    rt: R,
    hub: SharedHub,
    lot: Option<SharedLot>,
    listener: R::Listener,
    l: BoundListener,
    handshake_timeout: Duration,
    http: Rc<HttpContext>,
) {
    let websocket = l.kind.is_websocket();
    loop {
        let (t, remote) = match R::accept(&listener).await {
            Ok(s) => s,
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = %l.label, %error, "accept failed");
                R::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut peer = l.peer(remote);
        let (hub, path) = (hub.clone(), l.path.clone());
        let speaks = Speaks {
            websocket,
            http: l.kind.is_http(),
        };
        match l.tls.clone() {
            None if !websocket && !speaks.http => {
                let start = Start::New(peer);
                let serve = connection::serve_plain(hub, lot.clone(), t, start, now, R::sleep);
                rt.spawn_detached(serve);
            }
            // The connection's future itself is the task, so that it holds only
            // what the connection loop needs.
            None => {
                let http = http.clone();
                rt.spawn_detached(serve::<R>(
                    hub,
                    t,
                    peer,
                    speaks,
                    path,
                    handshake_timeout,
                    http,
                ))
            }
            Some(config) => {
                let http = http.clone();
                rt.spawn_detached(async move {
                let handshake = R::tls_accept(config, t);
                match connection::timeout(R::sleep(handshake_timeout), handshake).await {
                    Some(Ok((t, certificates))) => {
                        peer.certificates = certificates;
                        serve::<R>(hub, t, peer, speaks, path, handshake_timeout, http).await
                    }
                    // A refused client certificate is worth an operator's eye (a
                    // device with the wrong CA, or someone trying); other failures
                    // (scanners, clients giving up) are not.
                    Some(Err(error)) if refused_certificate(&error) => {
                        tracing::info!(remote = %peer.remote, %error, "TLS handshake failed: client certificate refused")
                    }
                    Some(Err(error)) => {
                        tracing::debug!(remote = %peer.remote, %error, "TLS handshake failed")
                    }
                    None => tracing::debug!(remote = %peer.remote, "TLS handshake timed out"),
                }
            })
            }
        }
    }
}

/// Whether a handshake failed because the client's certificate was refused.
fn refused_certificate(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

/// What a listener's connections speak once their TLS handshake, if any, is done.
#[derive(Clone, Copy)]
struct Speaks {
    /// MQTT over WebSocket (after an upgrade request).
    websocket: bool,
    /// HTTP (the operations endpoints).
    http: bool,
}

/// A WebSocket, TLS or HTTP connection (its TLS handshake done) from its WebSocket
/// upgrade, if any, to its end: [`connection::serve`] with the runtime's timer, or
/// the HTTP endpoints. On a WebSocket listener a `POST` (publish over HTTP, as
/// Event Grid serves it on its WebSocket port) goes to the HTTP endpoints instead
/// of the upgrade.
async fn serve<R: Runtime>(
    hub: SharedHub,
    mut t: impl Transport + 'static,
    peer: PeerInfo,
    speaks: Speaks,
    path: Option<String>,
    handshake_timeout: Duration,
    http: Rc<HttpContext>,
) {
    if speaks.http {
        return http::serve_http(http, t, peer, BytesMut::new()).await;
    }
    let websocket = speaks.websocket;
    let mut read = BytesMut::new();
    if websocket {
        // Enough of the request to see its method.
        let sniff = async {
            while read.len() < 5 && b"POST ".starts_with(&read[..]) {
                read.reserve(1024);
                match poll_fn(|cx| t.poll_read_buf(cx, &mut read)).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
            true
        };
        match connection::timeout(R::sleep(handshake_timeout), sniff).await {
            Some(true) => {}
            _ => return,
        }
        if read.starts_with(b"POST ") {
            return http::serve_http(http, t, peer, read).await;
        }
    }
    connection::serve(
        hub,
        t,
        peer,
        websocket,
        path,
        handshake_timeout,
        now,
        R::sleep,
        read,
    )
    .await
}
