//! `brokk-cluster`: several brokk nodes acting as one broker over NATS with
//! JetStream (issue 21).
//!
//! Interest travels as NATS subscriptions on subjects mapped from MQTT topic
//! filters, publishes are forwarded on subjects mapped from MQTT topic names, and
//! shared subscriptions become NATS queue groups. This crate holds that mapping,
//! [`SubjectMap`] (the scheme, with examples and the reason for each rule, is in
//! [`subject`]); the transport built on it comes in later pieces of the issue.
//!
//! What it never does: I/O. It opens no connection, depends on no NATS client,
//! spawns nothing and reads no clock; every function is a pure string mapping that
//! the adapter calls on its own threads.
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

pub mod subject;

pub use subject::{SubjectMap, DEFAULT_PREFIX};
