//! The parts of brokk's server that do not depend on an async runtime, shared by
//! the tokio adapter (the `brokk` binary) and the smol adapter so that both read the
//! same config, accept the same flags, check passwords the same way and speak the
//! same WebSocket.
//!
//! - [`config`]: the TOML config file, the built-in defaults and the rules a config
//!   must pass before anything listens; errors name the file, the key and what was
//!   expected.
//! - [`cli`]: the `brokk` command line and how its flags override the file.
//! - [`passwd`]: the password file (Argon2id PHC hashes) and `brokk passwd`.
//! - [`tls`]: a rustls server config from PEM files, or from a self-signed
//!   development CA (`--dev-tls`).
//! - [`websocket`]: a sans-IO RFC 6455 server: upgrade handshake, frame decoder
//!   producing the MQTT byte stream, frame encoder.
//! - [`core`]: the config's limits mapped onto the broker core.
//! - [`limits`]: every `[limits]` key defined once: its meaning, range, default
//!   (read from the core's) and how it reaches the core.
//! - [`hub`]: one server thread's hub around a `broker_state::Broker`: decode
//!   batches, pull output, wake tasks, close, answer authentication, log reports;
//!   behind a `Wake` trait.
//! - [`authentication`]: who a client is (password file, anonymous policy, a cache
//!   of recent verifications), answered off the broker's thread.
//! - [`reports`]: sessions the broker ended and messages it dropped, in the log.
//! - [`lifecycle`]: client sessions connected and disconnected (Event Grid's
//!   events) as CloudEvents on `$events/...` topics and to a webhook, POSTed from
//!   a thread of its own.
//! - [`server`]: binding listeners and configuring the core before a runtime
//!   starts, the server thread, and the `brokk` command-line `main` every adapter's
//!   binary calls.
//! - [`connection`]: one connection's life (WebSocket upgrade, the read/feed/pull/
//!   write loop, the last flush and lingering close) over a poll-based
//!   [`connection::Transport`], and the server thread's timer, authentication and
//!   report tasks, so the tokio and smol adapters share them and only wrap their
//!   socket types, timers and spawning.
//! - [`runtime`]: what the adapters' runtimes differ in (spawning, the timer, the
//!   reactor, the socket types) as a [`runtime::Runtime`] trait, and the server
//!   thread's tasks written once over it: the accept loops, the parking lot's task
//!   and graceful shutdown ([`runtime::run_server`]).
//! - [`park`]: the parking lot where idle plain-TCP connections wait without a task
//!   (an epoll set of its own, which the adapter registers with its runtime).
//! - [`alloc`]: the servers' global allocator (small cache-aligned blocks pooled).
//!
//! What this crate does and does not: it depends on no async runtime (tokio,
//! smol, async-std) and never blocks one: the tasks it defines are futures the
//! adapter spawns, over the adapter's sockets, timer and spawner. It does touch
//! the world where the adapters share the code that does: [`server::prepare`] binds
//! the listening sockets and [`server::ServerHandle::spawn`] starts the server
//! thread; the parking lot owns an epoll instance and the sockets parked in it; the
//! authentication task runs password verifications on the `blocking` crate's
//! worker threads and checks the password file for changes there; the connection
//! loop reads the clock the adapter hands it. Files are read and written at startup
//! or from the command line (config, PEM files, the dev TLS directory, `brokk
//! passwd`), and the password file again only on a worker, never on the thread that
//! routes messages.
//!
//! An adapter's `main` goes roughly like this:
//!
//! ```no_run
//! use adapter_common::cli::{load_config, run_passwd, Cli, Command};
//! use adapter_common::config::TlsSource;
//! use adapter_common::passwd::PasswordFile;
//! use adapter_common::tls;
//! use clap::Parser;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cli = Cli::parse();
//!     if let Some(Command::Passwd(args)) = &cli.command {
//!         run_passwd(args, &mut std::io::stdin().lock())?;
//!         return Ok(());
//!     }
//!     let config = load_config(&cli.run)?;
//!     let passwords = config.password_file.as_deref().map(PasswordFile::load).transpose()?;
//!     let dev = if config.dev_tls { Some(tls::dev_tls(&config.data_dir)?) } else { None };
//!     for listener in &config.listeners {
//!         let tls_config = match (&listener.tls, &dev) {
//!             (Some(TlsSource::Files { cert, key }), _) => Some(tls::server_config(cert, key, None)?),
//!             (Some(TlsSource::Dev), Some(dev)) => Some(dev.server_config(None)?),
//!             _ => None,
//!         };
//!         // bind listener.bind, wrap in TLS, run websocket::parse_handshake when
//!         // listener.kind.is_websocket(), and hand MQTT bytes to the broker core
//!         let _ = (tls_config, &passwords);
//!     }
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]

pub mod alloc;
mod atomic;
pub mod authentication;
pub mod authorization;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod core;
mod epoll;
pub mod http;
pub mod hub;
pub mod identity;
pub mod jwt;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod park;
pub mod passwd;
pub mod reports;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod webhook;
pub mod websocket;
