//! `broker-state`: the brokk MQTT broker as a pure state machine.
//!
//! Decoded packets, connection events and clock ticks go in; packets to send,
//! connections to close, timers and store operations come out. The crate does
//! **not** do I/O: it never touches a socket, a file, a thread or a clock, and
//! never reads the system clock. Every input carries the time ([`Now`]: a monotonic
//! instant for timers, wall-clock milliseconds for deadlines that outlive a
//! restart), and randomness comes from a seed. The same inputs give the same
//! outputs, bit for bit, which is what makes the fuzzers and the model tests
//! deterministic.
//!
//! Peer misbehaviour is output, not `Err`: a malformed packet, a protocol violation,
//! a keep-alive expiry or a session takeover becomes "send DISCONNECT with reason
//! code X (5.0), then [`Event::Close`]". A panic is a bug; no input from the network
//! may cause one.
//!
//! # Methods
//!
//! - getters take `&self` ([`Broker::stats`], [`Broker::client_id`], ...);
//! - `handle_*` feed input: [`Broker::handle_accept`], [`Broker::handle_packet`],
//!   [`Broker::handle_decode_error`], [`Broker::handle_closed`],
//!   [`Broker::handle_timeout`] (safe to call spuriously), [`Broker::handle_restore`];
//!   or all of them through one [`Input`] enum with [`Broker::handle`];
//! - `poll_*` drain output: [`Broker::poll_event`] (transmit wake-ups, closes,
//!   store operations, lifecycle events), [`Broker::poll_transmit`] (encode
//!   waiting packets of one connection into the caller's buffer, within a byte
//!   budget, so backpressure is pull-based) and [`Broker::poll_timeout`] (when to
//!   call `handle_timeout`).
//!
//! # The run-loop contract
//!
//! After every input, drain every output: `poll_event` until `None` (for each
//! `Transmit(conn)`, call `poll_transmit` while that connection's transport can take
//! bytes, until it returns 0; for each `Close`, flush and close the transport, then
//! call `handle_closed`), then wait for the next input or the `poll_timeout`
//! deadline, whichever comes first.
//!
//! ```
//! use std::time::{Duration, Instant as Clock};
//! use broker_state::{Broker, Config, Event, Now, PeerInfo};
//! use mqtt_proto::{bytes::BytesMut, Decoder, Packet, ProtocolVersion};
//!
//! let start = Clock::now(); // the adapter's clock, not the core's
//! let now = Now::new(start, 1_700_000_000_000);
//! let mut broker = Broker::new(Config::default(), [7; 32]);
//!
//! // A connection arrives and sends CONNECT (3.1.1, client id "dev-1").
//! let conn = broker.handle_accept(now, PeerInfo::memory("dev-1"));
//! let mut decoder = Decoder::new(broker.max_packet_size());
//! let mut input = BytesMut::from(&b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05dev-1"[..]);
//! while let Some(packet) = decoder.decode(&mut input).expect("valid bytes") {
//!     broker.handle_packet(now, conn, packet);
//! }
//!
//! // Drain every output.
//! let mut wire = BytesMut::new();
//! while let Some(event) = broker.poll_event() {
//!     match event {
//!         Event::Transmit(c) => while broker.poll_transmit(c, &mut wire, 64 * 1024) > 0 {},
//!         Event::Close { conn, .. } => broker.handle_closed(now, conn),
//!         _ => {}
//!     }
//! }
//! assert_eq!(&wire[..], b"\x20\x02\x00\x00"); // CONNACK, accepted
//!
//! // Then wait for the next input or the deadline: here, keep-alive (1.5 x 60 s).
//! let deadline = broker.poll_timeout().expect("keep-alive armed");
//! assert!(deadline <= start + Duration::from_secs(90));
//! # let _ = ProtocolVersion::V5; let _ = Packet::PingReq;
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod alias;
pub mod authentication;
pub mod authz;
mod broker;
mod client_ids;
mod config;
mod event;
mod hash;
mod hooks;
mod ids;
mod outq;
mod retained;
mod rng;
mod router;
mod session;
mod store;
mod subscriptions;
mod timer;

pub use authentication::{AuthKind, AuthQuestion, AuthTicket, MAX_HELD_PACKETS};
pub use broker::{Broker, Gauges, Stats};
pub use config::{Config, OverflowPolicy, QueueLimits};
pub use event::{
    Acquired, CertificateChain, ClusterOp, DisconnectionReason, Event, Input, LifecycleEvent,
    LifecycleKind, Now, PeerInfo, SessionEnd, SessionRecord, StoreOp, StoredMessage, StoredWill,
    Transport,
};
pub use hooks::{
    AllowAll, AttributeValue, Attributes, AuthDecision, AuthRequest, AuthStep, Authenticator,
    Authorizer, ClientInfo, EnhancedAuthenticator,
};
pub use ids::ConnId;
pub use router::filter_matches;
pub use store::MemoryStore;
