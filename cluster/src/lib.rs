//! `brokk-cluster`: several brokk nodes acting as one broker over NATS with
//! JetStream (issue 21).
//!
//! Interest travels as NATS subscriptions on subjects mapped from MQTT topic
//! filters (announced in a JetStream key-value bucket, per node), QoS 0
//! publishes are forwarded on subjects mapped from MQTT topic names, QoS 1 and
//! 2 publishes go to each interested node's durable queue ([`queue`]: a
//! JetStream stream, acknowledged by the receiver once it stored what it did
//! with them), and shared subscriptions become NATS queue groups; retained
//! messages, session ownership and the sessions themselves ([`state`]) live in
//! JetStream key-value buckets, and a node that leaves without letting its
//! sessions go is adopted by another (the crate's `adopt` module). This crate
//! holds the mapping, [`SubjectMap`] (the scheme, with examples and the reason
//! for each rule, is in [`subject`]), the wire form of a forwarded message
//! ([`wire`]), and the node's transport ([`node::ClusterNode`]: async-nats on a
//! thread of its own).
//!
//! The core stays sans-IO: it emits [`broker_state::ClusterOp`]s (interest,
//! forwards, session acquisitions and ends) and store effects, and takes what
//! the cluster sends as input (`Broker::handle_cluster_publish`,
//! `handle_cluster_delivery`, `handle_cluster_retained`,
//! `handle_session_claimed`, `handle_session_acquired`,
//! `handle_sessions_adopted`); the adapter's hub carries them between the two.
//!
//! ```
//! use brokk_cluster::SubjectMap;
//!
//! let map = SubjectMap::new("brokk").expect("a valid literal prefix");
//! // A publish is forwarded on the topic's subject...
//! let subject = map.topic_to_subject("sensors/room 1/temp");
//! assert_eq!(subject, "brokk.t.sensors.room%201.temp");
//! // ...and turned back into the topic where it arrives.
//! assert_eq!(map.subject_to_topic(&subject).as_deref(), Some("sensors/room 1/temp"));
//! // A subscription becomes one or two NATS subscriptions: `#` also matches its
//! // parent level in MQTT, which `>` does not in NATS.
//! assert_eq!(map.filter_to_subjects("sensors/#"), ["brokk.t.sensors.>", "brokk.t.sensors"]);
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod adopt;
pub mod node;
pub mod queue;
pub mod state;
pub mod subject;
pub mod wire;

pub use node::{ClusterNode, Inbound, Joined, Settings, StartError};
pub use subject::{SubjectMap, DEFAULT_PREFIX};

/// Where a node that claimed a session waits for the answer (a NATS inbox).
pub type ReplyTo = async_nats::Subject;
