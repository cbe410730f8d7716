//! Support for brokk's end-to-end tests: real clients against a real broker over
//! loopback TCP, TLS and WebSocket.
//!
//! The runtime under test is a parameter. [`Runtime::from_env`] reads
//! `BROKK_RUNTIME` (`tokio`, the default, `smol` or `async-std`), [`start`] runs the
//! broker on it in this process and [`Runtime::binary`] builds and finds its server
//! binary; scenarios are written once against [`RunningServer`] and
//! [`BrokkProcess`], so a new adapter is one arm in each `match` on [`Runtime`], not
//! a copy of the scenarios:
//!
//! ```text
//! cargo test -p brokk-e2e                         # tokio
//! BROKK_RUNTIME=smol cargo test -p brokk-e2e
//! BROKK_RUNTIME=async-std cargo test -p brokk-e2e
//! ```
//!
//! - [`server`]: the runtime, the in-process server and configs for tests.
//! - [`raw`]: a hand-written MQTT client on a bare `TcpStream` (mqtt-proto), for
//!   bytes no well-behaved client sends and for killing a connection without
//!   DISCONNECT.
//! - [`rumqtt`]: rumqttc's 3.1.1 and 5.0 clients over every transport, driven by
//!   polling their event loops.
//! - [`ws`]: a hand-written WebSocket client, for frames shaped as no library
//!   shapes them.
//! - [`nats`]: a NATS cluster with JetStream (nats-server processes) for the
//!   cluster tests.
//! - [`process`]: outside programs: the `brokk` binary, mosquitto clients, Python and
//!   Node scripts, always run with a deadline.
//!
//! Nothing here waits without a deadline: every read, connect and child process is
//! bounded by [`TIMEOUT`] or a shorter limit the test names, so a broker bug fails a
//! test instead of hanging the suite.
//!
//! ```no_run
//! use adapter_common::config::ListenerKind;
//! use brokk_e2e::{raw::RawClient, Setup};
//! use mqtt_proto::ProtocolVersion;
//!
//! # async fn demo() {
//! let server = Setup::new(&[ListenerKind::Mqtt]).start();
//! let mut client =
//!     RawClient::connect(server.addr(ListenerKind::Mqtt), ProtocolVersion::V5, "demo").await;
//! client.round_trip("demo/topic").await;
//! server.shutdown();
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

pub mod nats;
pub mod process;
pub mod raw;
pub mod rumqtt;
pub mod server;
pub mod ws;

pub use process::BrokkProcess;
pub use server::{start, RunningServer, Runtime, Setup};

/// The longest any single step of a scenario may take before the test fails. Generous,
/// because two cores may be busy with other test binaries; no test measures speed.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Awaits `future` for at most [`TIMEOUT`]; on expiry the test fails naming `what`.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(TIMEOUT, what, future).await
}

/// Awaits `future` for at most `limit`; on expiry the test fails naming `what`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}
