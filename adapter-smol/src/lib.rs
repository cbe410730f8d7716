//! `adapter-smol`: brokk's broker core driven by smol over TCP, TLS
//! (futures-rustls) and WebSocket, and the `brokk-smol` server binary.
//!
//! Written against the futures-io traits, so the same code also runs under
//! async-std (feature `async-std`, [`Flavor::AsyncStd`]). async-std is deprecated in
//! favour of smol; it is supported as a tested compatibility target only.
//!
//! Everything that is not runtime-specific (config, TLS setup, WebSocket rules, the
//! connection loop, the hub's decisions, the accept loops, the parking lot's task
//! and shutdown) comes from `adapter-common`, shared with the tokio adapter; this
//! crate only gives it smol's executor, timer, reactor and socket types (its
//! `Runtime` trait).
//!
//! Embedding it in a smol program: see `examples/embed.rs`.
#![warn(missing_docs)]

mod fallback;
mod server;

pub use adapter_common::server::{ServerHandle, StartError};
pub use fallback::yield_async_io_thread;
pub use server::{serve_on, Flavor, Server};
