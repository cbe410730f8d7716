//! Listeners, the timer task and graceful shutdown, on one server thread.

use std::time::Duration;

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use adapter_common::config::Config;
use adapter_common::connection::{self, LocalNotify, SharedHub, Start};
use adapter_common::park::{self, ParkedGauge, ParkingLot, SharedLot};
use adapter_common::server::{prepare, BoundListener, Prepared, ServerHandle, StartError};
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::conn::{now, TokioIo};

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
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, run_server(prepared, stop_rx));
            },
        )
    }
}

async fn run_server(prepared: Prepared, stop: oneshot::Receiver<()>) {
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
    let timer = tokio::task::spawn_local(connection::run_timer(
        hub.clone(),
        timer_notify,
        now,
        |at| tokio::time::sleep_until(tokio::time::Instant::from_std(at)),
    ));
    let auth_notify = LocalNotify::new();
    hub.borrow_mut()
        .set_authentication(verifier.clone(), auth_notify.clone());
    let auth = tokio::task::spawn_local(connection::run_authentication(
        hub.clone(),
        auth_notify,
        verifier,
        max_verifications,
        now,
        |f| {
            tokio::task::spawn_local(f);
        },
        tokio::time::sleep,
    ));
    let (lot, lot_task) = match parking_lot(parked) {
        Ok((lot, ready_fd)) => {
            let lot = Rc::new(RefCell::new(lot));
            let notify = LocalNotify::new();
            hub.borrow_mut().set_lot_waker(notify.clone());
            let task = run_lot(hub.clone(), lot.clone(), ready_fd, notify, park_tick);
            (Some(lot), Some(tokio::task::spawn_local(task)))
        }
        Err(error) => {
            tracing::debug!(%error, "no parking lot: idle connections keep their tasks");
            let reports = connection::run_reports(hub.clone(), park_tick, tokio::time::sleep);
            (None, Some(tokio::task::spawn_local(reports)))
        }
    };
    let mut accept_tasks = Vec::new();
    for l in listeners {
        accept_tasks.push(tokio::task::spawn_local(accept_loop(
            hub.clone(),
            lot.clone(),
            l,
            handshake_timeout,
        )));
    }
    let _ = stop.await;
    tracing::info!("shutting down");
    for t in &accept_tasks {
        t.abort();
    }
    // The lot keeps running: parked connections get their tasks back to close.
    connection::shutdown(&hub, now, tokio::time::sleep).await;
    if let Some(t) = lot_task {
        t.abort();
    }
    timer.abort();
    auth.abort();
    tracing::info!("stopped");
}

/// A parking lot and (a duplicate of) its epoll descriptor registered with this
/// runtime.
fn parking_lot(parked: ParkedGauge) -> std::io::Result<(ParkingLot, AsyncFd<OwnedFd>)> {
    let lot = ParkingLot::new(parked)?;
    let fd = lot.epoll_fd().try_clone_to_owned()?;
    // SAFETY: the AsyncFd owns `fd`, so it stays open and the same while registered.
    let ready_fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
    Ok((lot, ready_fd))
}

/// The parking lot's task: sweeps for idle connections every tick, and gives a
/// task back to each parked connection whose socket is ready or that the core has
/// output for.
async fn run_lot(
    hub: SharedHub,
    lot: SharedLot,
    ready_fd: AsyncFd<OwnedFd>,
    notify: Rc<LocalNotify>,
    park_tick: Duration,
) {
    let mut tick = tokio::time::interval(park_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = Vec::new();
    loop {
        tokio::select! {
            guard = ready_fd.readable() => {
                let Ok(mut guard) = guard else { return };
                if lot.borrow_mut().take_ready(&hub, &mut ready) {
                    guard.clear_ready();
                }
            }
            () = notify.notified() => {
                lot.borrow_mut().take_ready(&hub, &mut ready);
            }
            _ = tick.tick() => park::sweep_idle(&hub),
        }
        for parked in ready.drain(..) {
            if let Some((t, conn)) = parked.resume::<TokioIo<TcpStream>>(&hub, now()) {
                let lot = Some(lot.clone());
                let start = Start::Opened(conn);
                let sleep = |d| tokio::time::sleep(d);
                let serve = connection::serve_plain(hub.clone(), lot, t, start, now, sleep);
                tokio::task::spawn_local(serve);
            }
        }
    }
}

async fn accept_loop(
    hub: SharedHub,
    lot: Option<SharedLot>,
    l: BoundListener,
    handshake_timeout: Duration,
) {
    let listener = match l.socket.try_clone().and_then(TcpListener::from_std) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(listener = %l.label, %error, "cannot register listener");
            return;
        }
    };
    let tls = l.tls.clone().map(TlsAcceptor::from);
    loop {
        let (socket, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = %l.label, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let peer = l.peer(remote);
        let (hub, tls, websocket, path) = (
            hub.clone(),
            tls.clone(),
            l.kind.is_websocket(),
            l.path.clone(),
        );
        let sleep = |d| tokio::time::sleep(d);
        if tls.is_none() && !websocket {
            let (t, start) = (TokioIo(socket), Start::New(peer));
            let serve = connection::serve_plain(hub, lot.clone(), t, start, now, sleep);
            tokio::task::spawn_local(serve);
            continue;
        }
        let Some(acceptor) = tls else {
            // A task per plain connection holds only what the connection loop needs.
            let t = TokioIo(socket);
            tokio::task::spawn_local(connection::serve(
                hub,
                t,
                peer,
                websocket,
                path,
                handshake_timeout,
                now,
                sleep,
            ));
            continue;
        };
        tokio::task::spawn_local(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => {
                    let t = TokioIo(stream);
                    connection::serve(hub, t, peer, websocket, path, handshake_timeout, now, sleep)
                        .await
                }
                Ok(Err(error)) => {
                    tracing::debug!(remote = %peer.remote, %error, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(remote = %peer.remote, "TLS handshake timed out"),
            }
        });
    }
}
