//! Authorization as Azure Event Grid's MQTT broker does it: client groups, topic
//! spaces and permission bindings.
//!
//! - A [`ClientGroup`] selects clients with a [`Query`] over their authentication
//!   name and attributes (`attributes.type = 'sensor' and attributes.floor in [1, 2]`,
//!   or `$all`).
//! - A [`TopicSpace`] is a set of [`Template`]s: topic filters whose whole levels
//!   may be `${client.authenticationName}` or `${client.attributes.<key>}`.
//! - A [`PermissionBinding`] gives a group [`Permission::Publisher`] or
//!   [`Permission::Subscriber`] on a topic space.
//!
//! In [`Mode::Open`] (the default) everything is allowed. In [`Mode::Bindings`] a
//! PUBLISH is allowed when one of the client's expanded publisher filters matches
//! its topic, and a SUBSCRIBE when one of its expanded subscriber filters covers
//! the requested filter ([`filter_covers`]; a shared subscription is judged on its
//! filter, see [`strip_share_prefix`]).
//!
//! The work is split by cost: [`Policy::grants`] evaluates the queries and expands
//! the templates once per connection (allocating), and [`Grants::publish`] /
//! [`Grants::subscribe`] decide each packet without allocating.
//! [`Policy::explain`] tells an operator why a decision is what it is.
//!
//! This module never reads configuration files: the adapter parses the TOML, names
//! the file and key in its errors, and builds the [`Policy`] from
//! [`Query::parse`] and [`Template::parse`].
//!
//! ```
//! use broker_state::authz::*;
//!
//! let policy = Policy {
//!     mode: Mode::Bindings,
//!     groups: vec![ClientGroup {
//!         name: "sensors".into(),
//!         query: Query::parse("attributes.type = 'sensor'").expect("the test\'s query parses"),
//!     }],
//!     spaces: vec![TopicSpace {
//!         name: "telemetry".into(),
//!         templates: vec![(
//!             "devices/${client.authenticationName}/#".into(),
//!             Template::parse("devices/${client.authenticationName}/#").expect("the test\'s template parses"),
//!         )],
//!     }],
//!     bindings: vec![PermissionBinding {
//!         name: "sensors-publish".into(),
//!         client_group: 0,
//!         topic_space: 0,
//!         permission: Permission::Publisher,
//!     }],
//! };
//! let attributes: Attributes =
//!     [("type".to_owned(), AttributeValue::String("sensor".into()))].into();
//!
//! let grants = policy.grants(Some("d1"), Some(&attributes)); // at CONNECT
//! assert!(grants.publish(b"devices/d1/temperature").is_some()); // per PUBLISH
//! assert!(grants.publish(b"devices/d2/temperature").is_none());
//! assert!(grants.subscribe(b"devices/d1/#").is_none()); // no subscriber binding
//!
//! let why = policy.explain(Some("d1"), Some(&attributes), "devices/d2/t", Permission::Publisher);
//! assert!(!why.allowed);
//! println!("{why}");
//! ```

mod coverage;
mod policy;
mod query;
mod template;

pub use crate::hooks::{AttributeValue, Attributes};
pub use coverage::{filter_covers, strip_share_prefix};
pub use policy::{
    ClientGroup, Explanation, GrantRef, Grants, Mode, Permission, PermissionBinding, Policy,
    TopicSpace,
};
pub use query::{Query, QueryError, MAX_QUERY_DEPTH, MAX_QUERY_LEN};
pub use template::{Template, TemplateError, MAX_EXPANSIONS, MAX_TEMPLATE_LEN};
