//! Listeners, the timer task and graceful shutdown, on one server thread.

use std::time::Duration;

use adapter_common::config::Config;
use adapter_common::connection::{self, SharedHub};
use adapter_common::server::{prepare, BoundListener, Prepared, ServerHandle, StartError};
use tokio::net::TcpListener;
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
        ..
    } = prepared;
    let (hub, timer_notify) = connection::shared_hub(broker);
    let timer = tokio::task::spawn_local(connection::run_timer(
        hub.clone(),
        timer_notify,
        now,
        |at| tokio::time::sleep_until(tokio::time::Instant::from_std(at)),
    ));
    let mut accept_tasks = Vec::new();
    for l in listeners {
        accept_tasks.push(tokio::task::spawn_local(accept_loop(
            hub.clone(),
            l,
            handshake_timeout,
        )));
    }
    let _ = stop.await;
    tracing::info!("shutting down");
    for t in &accept_tasks {
        t.abort();
    }
    connection::shutdown(&hub, now, tokio::time::sleep).await;
    timer.abort();
    tracing::info!("stopped");
}

async fn accept_loop(hub: SharedHub, l: BoundListener, handshake_timeout: Duration) {
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
