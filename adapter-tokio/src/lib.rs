//! `adapter-tokio`: brokk's broker core driven by tokio over TCP, TLS (rustls) and
//! WebSocket, and the `brokk` server binary.
//!
//! The server runs the core on one thread with a current-thread runtime: every
//! connection task on that thread shares the core directly (no channel hop per
//! message), decodes all complete packets of one read in a batch, and writes all the
//! core has for it in one write. Everything that is not tokio-specific (config, TLS
//! setup, WebSocket rules, the hub's decisions) lives in `adapter-common`.
//!
//! ```no_run
//! let config = adapter_common::config::Config::default();
//! let server = adapter_tokio::Server::start(config)?;
//! println!("listening on {:?}", server.local_addrs());
//! server.shutdown(); // DISCONNECT 0x8B to 5.0 clients, close, return
//! # Ok::<(), adapter_tokio::StartError>(())
//! ```
#![warn(missing_docs)]

mod conn;
mod server;

pub use adapter_common::server::{ServerHandle, StartError};
pub use server::Server;
