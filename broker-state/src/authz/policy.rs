//! The policy (groups, topic spaces, bindings), a client's grants and the
//! explanation of a decision.

use core::fmt;
use std::collections::BTreeSet;

use super::coverage::{filter_covers, strip_share_prefix, valid_filter, valid_topic};
use super::query::Query;
use super::template::Template;
use crate::hooks::{AttributeValue, Attributes};
use crate::router::filter_matches;

/// What a permission binding allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// PUBLISH to topics the topic space's filters match.
    Publisher,
    /// SUBSCRIBE to filters the topic space's filters cover (see
    /// [`filter_covers`](super::filter_covers)).
    Subscriber,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::Publisher => "publisher",
            Permission::Subscriber => "subscriber",
        })
    }
}

/// How the broker authorizes PUBLISH and SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Everything is allowed; groups and bindings are ignored (the default).
    #[default]
    Open,
    /// Denied unless a permission binding allows it.
    Bindings,
}

/// A named set of clients, chosen by a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientGroup {
    /// The group's name, as configuration spells it.
    pub name: String,
    /// Which clients belong to it.
    pub query: Query,
}

/// A named set of topic templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpace {
    /// The topic space's name, as configuration spells it.
    pub name: String,
    /// Its templates: the text as configured, and the parsed template.
    pub templates: Vec<(String, Template)>,
}

/// Gives a client group a permission on a topic space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionBinding {
    /// The binding's name, as configuration spells it.
    pub name: String,
    /// Index into [`Policy::groups`].
    pub client_group: usize,
    /// Index into [`Policy::spaces`].
    pub topic_space: usize,
    /// What the binding allows.
    pub permission: Permission,
}

/// The whole authorization configuration. Bindings refer to groups and spaces by
/// index; an index that points nowhere makes its binding inert (and
/// [`Policy::explain`] says so) rather than panic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// Open (everything allowed) or bindings (denied unless bound).
    pub mode: Mode,
    /// Client groups.
    pub groups: Vec<ClientGroup>,
    /// Topic spaces.
    pub spaces: Vec<TopicSpace>,
    /// Permission bindings, in configuration order: the first that allows a
    /// request is the one reported.
    pub bindings: Vec<PermissionBinding>,
}

/// Which binding and template allowed a request: indices into
/// [`Policy::bindings`] and into its topic space's [`TopicSpace::templates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrantRef {
    /// Index into [`Policy::bindings`].
    pub binding: usize,
    /// Index into the binding's topic space's templates.
    pub template: usize,
}

impl GrantRef {
    /// What open grants ([`Grants::allow_all`]) answer: no binding decided. Its
    /// indices are `usize::MAX`, which index nothing; test with
    /// [`GrantRef::is_open`], and resolve indices with [`Policy::binding`] and
    /// [`Policy::template`], which return `None` for it.
    pub const OPEN: GrantRef = GrantRef {
        binding: usize::MAX,
        template: usize::MAX,
    };

    /// Was this allowed by open mode rather than by a binding?
    pub fn is_open(self) -> bool {
        self == GrantRef::OPEN
    }
}

/// What one client may do, computed once per connection by [`Policy::grants`]:
/// its groups' bindings' templates, expanded for it, stored as one string and
/// offsets. Checking a request does not allocate. The default is deny-all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    open: bool,
    /// Every expanded filter, concatenated; entries slice it.
    text: Box<str>,
    publish: Box<[Entry]>,
    subscribe: Box<[Entry]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    start: u32,
    end: u32,
    binding: u32,
    template: u32,
    /// No wildcard: a publish matches by byte equality.
    exact: bool,
}

impl Entry {
    fn grant(self) -> GrantRef {
        GrantRef {
            binding: self.binding as usize,
            template: self.template as usize,
        }
    }
}

impl Grants {
    /// Grants that allow everything (authorization mode "open").
    pub fn allow_all() -> Grants {
        Grants {
            open: true,
            ..Grants::default()
        }
    }

    /// Are these open grants?
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The grant that allows publishing to `topic` (a valid topic name), if any:
    /// the first of the client's publisher filters that matches it, or
    /// [`GrantRef::OPEN`] for open grants. No allocation.
    pub fn publish(&self, topic: &[u8]) -> Option<GrantRef> {
        if self.open {
            return Some(GrantRef::OPEN);
        }
        let text = self.text.as_bytes();
        self.publish.iter().find_map(|entry| {
            let filter = text.get(entry.start as usize..entry.end as usize)?;
            let hit = if entry.exact {
                filter == topic
            } else {
                filter_matches(filter, topic)
            };
            hit.then(|| entry.grant())
        })
    }

    /// The grant that allows subscribing to `filter` (without its `$share/{name}/`
    /// prefix: see [`strip_share_prefix`]), if any: the first of the client's
    /// subscriber filters that covers it, or [`GrantRef::OPEN`] for open grants.
    /// No allocation.
    pub fn subscribe(&self, filter: &[u8]) -> Option<GrantRef> {
        if self.open {
            return Some(GrantRef::OPEN);
        }
        let text = self.text.as_bytes();
        self.subscribe.iter().find_map(|entry| {
            let granted = text.get(entry.start as usize..entry.end as usize)?;
            filter_covers(granted, filter).then(|| entry.grant())
        })
    }

    /// The client's expanded filters for one permission, with the grant each came
    /// from, in decision order (for logs and diagnostics). Empty for open grants.
    pub fn filters(&self, permission: Permission) -> impl Iterator<Item = (&str, GrantRef)> {
        let entries = match permission {
            Permission::Publisher => &self.publish,
            Permission::Subscriber => &self.subscribe,
        };
        entries.iter().filter_map(|entry| {
            let filter = self.text.get(entry.start as usize..entry.end as usize)?;
            Some((filter, entry.grant()))
        })
    }
}

/// Why a request is allowed or denied, for `brokk authz explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The decision.
    pub allowed: bool,
    /// The grant that decided an allow ([`GrantRef::OPEN`] in open mode); the same
    /// one [`Grants::publish`] / [`Grants::subscribe`] return.
    pub grant: Option<GrantRef>,
    /// The reasoning, one finding per line.
    pub lines: Vec<String>,
}

impl fmt::Display for Explanation {
    /// `allow` or `deny`, then each line indented by two spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed { "allow" } else { "deny" })?;
        for line in &self.lines {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

impl Policy {
    /// The binding behind a grant (`None` for [`GrantRef::OPEN`]).
    pub fn binding(&self, grant: GrantRef) -> Option<&PermissionBinding> {
        self.bindings.get(grant.binding)
    }

    /// The template text behind a grant (`None` for [`GrantRef::OPEN`]).
    pub fn template(&self, grant: GrantRef) -> Option<&str> {
        let binding = self.binding(grant)?;
        let space = self.spaces.get(binding.topic_space)?;
        space
            .templates
            .get(grant.template)
            .map(|(text, _)| text.as_str())
    }

    /// What a client may do: its groups' bindings' templates, expanded for it.
    /// Computed once per connection (allocates), then used per packet (does not).
    /// In [`Mode::Open`], [`Grants::allow_all`]. Duplicate filters are kept once,
    /// with the first binding that grants them.
    pub fn grants(
        &self,
        authentication_name: Option<&str>,
        attributes: Option<&Attributes>,
    ) -> Grants {
        if self.mode == Mode::Open {
            return Grants::allow_all();
        }
        let member = self.membership(authentication_name, attributes);
        let mut text = String::new();
        let mut publish = Vec::new();
        let mut subscribe = Vec::new();
        let mut seen: BTreeSet<(Permission, String)> = BTreeSet::new();
        let mut expanded = Vec::new();
        for (binding_index, binding) in self.bindings.iter().enumerate() {
            if !member.get(binding.client_group).copied().unwrap_or(false) {
                continue;
            }
            let Some(space) = self.spaces.get(binding.topic_space) else {
                continue;
            };
            for (template_index, (_, template)) in space.templates.iter().enumerate() {
                expanded.clear();
                template.expand(authentication_name, attributes, &mut expanded);
                for filter in expanded.drain(..) {
                    let key = (binding.permission, filter);
                    if seen.contains(&key) {
                        continue;
                    }
                    let filter = &key.1;
                    // Offsets are u32 to keep entries small; a policy whose grants
                    // overflow them (4 GiB of filters) grants nothing more.
                    let (Ok(start), Ok(end), Ok(b), Ok(t)) = (
                        u32::try_from(text.len()),
                        u32::try_from(text.len() + filter.len()),
                        u32::try_from(binding_index),
                        u32::try_from(template_index),
                    ) else {
                        continue;
                    };
                    text.push_str(filter);
                    let entry = Entry {
                        start,
                        end,
                        binding: b,
                        template: t,
                        exact: !filter.contains(['+', '#']),
                    };
                    match binding.permission {
                        Permission::Publisher => publish.push(entry),
                        Permission::Subscriber => subscribe.push(entry),
                    }
                    seen.insert(key);
                }
            }
        }
        Grants {
            open: false,
            text: text.into_boxed_str(),
            publish: publish.into_boxed_slice(),
            subscribe: subscribe.into_boxed_slice(),
        }
    }

    fn membership(&self, name: Option<&str>, attributes: Option<&Attributes>) -> Vec<bool> {
        self.groups
            .iter()
            .map(|g| g.query.matches(name, attributes))
            .collect()
    }

    /// Why a client may or may not publish to a topic (`Permission::Publisher`) or
    /// subscribe to a filter (`Permission::Subscriber`; a `$share/{name}/` prefix is
    /// stripped first). Decides exactly as [`Policy::grants`] does, in the same
    /// order. Allocates.
    pub fn explain(
        &self,
        authentication_name: Option<&str>,
        attributes: Option<&Attributes>,
        topic_or_filter: &str,
        permission: Permission,
    ) -> Explanation {
        let mut lines = vec![describe_client(authentication_name, attributes)];
        let deny = |mut lines: Vec<String>, line: String| {
            lines.push(line);
            Explanation {
                allowed: false,
                grant: None,
                lines,
            }
        };
        if self.mode == Mode::Open {
            lines.push(
                "authorization mode is \"open\": every client may publish and subscribe to \
                 everything"
                    .into(),
            );
            return Explanation {
                allowed: true,
                grant: Some(GrantRef::OPEN),
                lines,
            };
        }
        let (target, noun, verb) = match permission {
            Permission::Publisher => {
                if !valid_topic(topic_or_filter.as_bytes()) {
                    return deny(
                        lines,
                        format!(
                            "'{topic_or_filter}' is not a topic name: a PUBLISH topic is \
                             non-empty and has no '+' or '#' [MQTT-3.3.2-2]"
                        ),
                    );
                }
                (topic_or_filter, "topic", "matches")
            }
            Permission::Subscriber => {
                let bytes = strip_share_prefix(topic_or_filter.as_bytes());
                let filter = topic_or_filter
                    .get(topic_or_filter.len() - bytes.len()..)
                    .unwrap_or(topic_or_filter);
                if filter.len() != topic_or_filter.len() {
                    lines.push(format!(
                        "shared subscription '{topic_or_filter}': judged on its filter '{filter}'"
                    ));
                }
                if !valid_filter(filter.as_bytes()) {
                    return deny(
                        lines,
                        format!(
                            "'{filter}' is not a topic filter: '+' and '#' must be whole levels \
                             and '#' the last [MQTT-4.7.1-1] [MQTT-4.7.1-2]"
                        ),
                    );
                }
                (filter, "filter", "covers")
            }
        };

        let member = self.membership(authentication_name, attributes);
        let names: Vec<String> = self
            .groups
            .iter()
            .zip(&member)
            .filter(|(_, &m)| m)
            .map(|(g, _)| format!("'{}'", g.name))
            .collect();
        lines.push(if names.is_empty() {
            "client groups: none (no group's query matches the client)".into()
        } else {
            format!("client groups: {}", names.join(", "))
        });

        let mut findings = Vec::new();
        let mut applicable = 0usize;
        let mut expanded = Vec::new();
        for (binding_index, binding) in self.bindings.iter().enumerate() {
            if binding.permission != permission {
                continue;
            }
            let Some(group) = self.groups.get(binding.client_group) else {
                findings.push(format!(
                    "binding '{}' refers to client group #{}, which does not exist",
                    binding.name, binding.client_group
                ));
                continue;
            };
            if !member.get(binding.client_group).copied().unwrap_or(false) {
                findings.push(format!(
                    "binding '{}' does not apply: the client is not in group '{}' (query: {})",
                    binding.name, group.name, group.query
                ));
                continue;
            }
            let Some(space) = self.spaces.get(binding.topic_space) else {
                findings.push(format!(
                    "binding '{}' refers to topic space #{}, which does not exist",
                    binding.name, binding.topic_space
                ));
                continue;
            };
            applicable += 1;
            let context = format!(
                "binding '{}' ({permission} for group '{}' on topic space '{}')",
                binding.name, group.name, space.name
            );
            if space.templates.is_empty() {
                findings.push(format!("{context}: the topic space has no templates"));
            }
            for (template_index, (text, template)) in space.templates.iter().enumerate() {
                expanded.clear();
                if let Err(why) =
                    template.try_expand(authentication_name, attributes, &mut expanded)
                {
                    findings.push(format!(
                        "{context}: template '{text}' expands to nothing: {why}"
                    ));
                    continue;
                }
                let hit = expanded.iter().find(|f| match permission {
                    Permission::Publisher => filter_matches(f.as_bytes(), target.as_bytes()),
                    Permission::Subscriber => filter_covers(f.as_bytes(), target.as_bytes()),
                });
                if let Some(filter) = hit {
                    lines.push(format!(
                        "allowed by {context}: template '{text}' expands to '{filter}', which \
                         {verb} {noun} '{target}'"
                    ));
                    return Explanation {
                        allowed: true,
                        grant: Some(GrantRef {
                            binding: binding_index,
                            template: template_index,
                        }),
                        lines,
                    };
                }
                let list: Vec<String> = expanded.iter().map(|f| format!("'{f}'")).collect();
                findings.push(format!(
                    "{context}: template '{text}' expands to {}, {} {noun} '{target}'",
                    list.join(", "),
                    match (list.len(), permission) {
                        (1, Permission::Publisher) => "which does not match",
                        (1, Permission::Subscriber) => "which does not cover",
                        (_, Permission::Publisher) => "none of which matches",
                        (_, Permission::Subscriber) => "none of which covers",
                    }
                ));
            }
        }
        if applicable == 0 {
            findings.push(format!(
                "no {permission} binding applies to the client: none of its groups has one"
            ));
        }
        lines.extend(findings);
        Explanation {
            allowed: false,
            grant: None,
            lines,
        }
    }
}

fn describe_client(name: Option<&str>, attributes: Option<&Attributes>) -> String {
    let name = match name {
        Some(name) => format!("authenticationName '{name}'"),
        None => "no authenticationName".into(),
    };
    let attributes = match attributes {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|(k, v)| format!("{k} = {}", describe_value(v)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".into(),
    };
    format!("client: {name}; attributes: {attributes}")
}

fn describe_value(value: &AttributeValue) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    match value {
        AttributeValue::String(s) => quote(s),
        AttributeValue::Integer(i) => i.to_string(),
        AttributeValue::StringList(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(items: &[(&str, AttributeValue)]) -> Attributes {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn sensor_attributes() -> Attributes {
        attributes(&[
            ("type", AttributeValue::String("sensor".into())),
            ("floor", AttributeValue::Integer(2)),
            (
                "zones",
                AttributeValue::StringList(vec!["north".into(), "east".into()]),
            ),
        ])
    }

    fn space(name: &str, templates: &[&str]) -> TopicSpace {
        TopicSpace {
            name: name.into(),
            templates: templates
                .iter()
                .map(|t| {
                    (
                        (*t).to_owned(),
                        Template::parse(t).expect("the test\'s template parses"),
                    )
                })
                .collect(),
        }
    }

    fn group(name: &str, query: &str) -> ClientGroup {
        ClientGroup {
            name: name.into(),
            query: Query::parse(query).expect("the test\'s query parses"),
        }
    }

    fn binding(
        name: &str,
        group: usize,
        space: usize,
        permission: Permission,
    ) -> PermissionBinding {
        PermissionBinding {
            name: name.into(),
            client_group: group,
            topic_space: space,
            permission,
        }
    }

    /// The example, plus a subscriber binding for everyone.
    fn policy() -> Policy {
        Policy {
            mode: Mode::Bindings,
            groups: vec![
                group(
                    "sensors",
                    "attributes.type = 'sensor' and attributes.floor in [1, 2, 3]",
                ),
                group("everyone", "$all"),
            ],
            spaces: vec![
                space(
                    "telemetry",
                    &[
                        "devices/${client.authenticationName}/telemetry/#",
                        "zones/${client.attributes.zones}/status",
                    ],
                ),
                space("broadcast", &["broadcast/+/news", "$SYS/broker/#"]),
            ],
            bindings: vec![
                binding("sensors-publish-telemetry", 0, 0, Permission::Publisher),
                binding("everyone-subscribe-broadcast", 1, 1, Permission::Subscriber),
                binding("sensors-subscribe-telemetry", 0, 0, Permission::Subscriber),
            ],
        }
    }

    #[test]
    fn open_mode_allows_everything() {
        let policy = Policy::default();
        let grants = policy.grants(None, None);
        assert!(grants.is_open());
        assert_eq!(grants.publish(b"any/topic"), Some(GrantRef::OPEN));
        assert_eq!(grants.subscribe(b"#"), Some(GrantRef::OPEN));
        assert!(GrantRef::OPEN.is_open());
        assert_eq!(policy.binding(GrantRef::OPEN), None);
        assert_eq!(policy.template(GrantRef::OPEN), None);
        let explanation = policy.explain(None, None, "a/b", Permission::Publisher);
        assert!(explanation.allowed);
        assert_eq!(
            explanation.to_string(),
            "allow\n  client: no authenticationName; attributes: none\n  authorization mode \
             is \"open\": every client may publish and subscribe to everything"
        );
    }

    #[test]
    fn bindings_mode_denies_by_default() {
        let grants = Grants::default();
        assert_eq!(grants.publish(b"a"), None);
        assert_eq!(grants.subscribe(b"a"), None);
        let policy = Policy {
            mode: Mode::Bindings,
            ..Policy::default()
        };
        let grants = policy.grants(Some("d1"), None);
        assert!(!grants.is_open());
        assert_eq!(grants.publish(b"a"), None);
    }

    #[test]
    fn grants_decide_publish_and_subscribe() {
        let policy = policy();
        let attrs = sensor_attributes();
        let grants = policy.grants(Some("d1"), Some(&attrs));
        let telemetry = GrantRef {
            binding: 0,
            template: 0,
        };
        let zones = GrantRef {
            binding: 0,
            template: 1,
        };
        assert_eq!(grants.publish(b"devices/d1/telemetry"), Some(telemetry));
        assert_eq!(grants.publish(b"devices/d1/telemetry/t/1"), Some(telemetry));
        assert_eq!(grants.publish(b"devices/d2/telemetry"), None);
        assert_eq!(grants.publish(b"zones/east/status"), Some(zones));
        assert_eq!(grants.publish(b"zones/north/status"), Some(zones));
        assert_eq!(grants.publish(b"zones/south/status"), None);
        assert_eq!(grants.publish(b"broadcast/x/news"), None, "subscriber only");

        let broadcast = GrantRef {
            binding: 1,
            template: 0,
        };
        assert_eq!(grants.subscribe(b"broadcast/+/news"), Some(broadcast));
        assert_eq!(grants.subscribe(b"broadcast/eu/news"), Some(broadcast));
        assert_eq!(grants.subscribe(b"broadcast/#"), None);
        assert_eq!(
            grants.subscribe(b"$SYS/broker/load"),
            Some(GrantRef {
                binding: 1,
                template: 1
            })
        );
        assert_eq!(
            grants.subscribe(b"devices/d1/telemetry/+"),
            Some(GrantRef {
                binding: 2,
                template: 0
            })
        );
        assert_eq!(grants.subscribe(b"devices/+/telemetry/#"), None);
        assert_eq!(
            grants.subscribe(strip_share_prefix(b"$share/g/zones/east/status")),
            Some(GrantRef {
                binding: 2,
                template: 1
            })
        );
        assert_eq!(
            policy.binding(telemetry).map(|b| b.name.as_str()),
            Some("sensors-publish-telemetry")
        );
        assert_eq!(
            policy.template(zones),
            Some("zones/${client.attributes.zones}/status")
        );

        let filters: Vec<_> = grants
            .filters(Permission::Publisher)
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            filters,
            [
                "devices/d1/telemetry/#",
                "zones/north/status",
                "zones/east/status"
            ]
        );

        // Not a sensor: only the "everyone" binding.
        let grants = policy.grants(Some("d1"), None);
        assert_eq!(grants.publish(b"devices/d1/telemetry"), None);
        assert_eq!(grants.subscribe(b"broadcast/eu/news"), Some(broadcast));
        assert_eq!(grants.filters(Permission::Publisher).count(), 0);
    }

    #[test]
    fn duplicate_filters_are_kept_once_with_the_first_binding() {
        let mut policy = policy();
        policy
            .spaces
            .push(space("again", &["broadcast/+/news", "other"]));
        policy
            .bindings
            .push(binding("again", 1, 2, Permission::Subscriber));
        let grants = policy.grants(Some("d1"), None);
        let filters: Vec<_> = grants.filters(Permission::Subscriber).collect();
        assert_eq!(
            filters,
            [
                (
                    "broadcast/+/news",
                    GrantRef {
                        binding: 1,
                        template: 0
                    }
                ),
                (
                    "$SYS/broker/#",
                    GrantRef {
                        binding: 1,
                        template: 1
                    }
                ),
                (
                    "other",
                    GrantRef {
                        binding: 3,
                        template: 1
                    }
                ),
            ]
        );
    }

    #[test]
    fn dangling_indices_make_a_binding_inert() {
        let mut policy = policy();
        policy.bindings = vec![
            binding("no-group", 9, 0, Permission::Publisher),
            binding("no-space", 1, 9, Permission::Publisher),
        ];
        let grants = policy.grants(Some("d1"), Some(&sensor_attributes()));
        assert_eq!(grants.publish(b"devices/d1/telemetry"), None);
        let explanation = policy.explain(Some("d1"), None, "a", Permission::Publisher);
        assert!(!explanation.allowed);
        assert!(explanation.lines.contains(
            &"binding 'no-group' refers to client group #9, which does not exist".into()
        ));
        assert!(explanation
            .lines
            .contains(&"binding 'no-space' refers to topic space #9, which does not exist".into()));
    }

    #[test]
    fn explain_allow_names_the_binding_template_and_expanded_filter() {
        let policy = policy();
        let attrs = sensor_attributes();
        let explanation = policy.explain(
            Some("d1"),
            Some(&attrs),
            "zones/east/status",
            Permission::Publisher,
        );
        assert_eq!(
            explanation.to_string(),
            "allow\n  client: authenticationName 'd1'; attributes: floor = 2, type = 'sensor', \
             zones = ['north', 'east']\n  client groups: 'sensors', 'everyone'\n  allowed by \
             binding 'sensors-publish-telemetry' (publisher for group 'sensors' on topic space \
             'telemetry'): template 'zones/${client.attributes.zones}/status' expands to \
             'zones/east/status', which matches topic 'zones/east/status'"
        );
        assert_eq!(
            explanation.grant,
            policy
                .grants(Some("d1"), Some(&attrs))
                .publish(b"zones/east/status")
        );

        let explanation = policy.explain(
            Some("d1"),
            Some(&attrs),
            "$share/g/devices/d1/telemetry/+",
            Permission::Subscriber,
        );
        assert!(explanation.allowed);
        assert_eq!(
            explanation.grant,
            Some(GrantRef {
                binding: 2,
                template: 0
            })
        );
        assert!(explanation.lines.contains(
            &"shared subscription '$share/g/devices/d1/telemetry/+': judged on its filter \
              'devices/d1/telemetry/+'"
                .into()
        ));
        assert!(explanation
            .lines
            .last()
            .expect("an explanation has lines")
            .ends_with(
                "expands to 'devices/d1/telemetry/#', which covers filter 'devices/d1/telemetry/+'"
            ));
    }

    #[test]
    fn explain_deny_when_in_no_group_with_a_binding() {
        let policy = policy();
        let explanation = policy.explain(
            Some("d1"),
            None,
            "devices/d1/telemetry",
            Permission::Publisher,
        );
        assert!(!explanation.allowed);
        assert_eq!(explanation.grant, None);
        assert_eq!(
            explanation.to_string(),
            "deny\n  client: authenticationName 'd1'; attributes: none\n  client groups: \
             'everyone'\n  binding 'sensors-publish-telemetry' does not apply: the client is not \
             in group 'sensors' (query: attributes.type = 'sensor' and attributes.floor in [1, 2, \
             3])\n  no publisher binding applies to the client: none of its groups has one"
        );
        let mut nobody = policy.clone();
        nobody.groups.truncate(1);
        nobody.bindings.truncate(1);
        let explanation = nobody.explain(None, None, "a", Permission::Publisher);
        assert!(explanation
            .lines
            .contains(&"client groups: none (no group's query matches the client)".into()));
    }

    #[test]
    fn explain_deny_when_a_template_attribute_is_missing() {
        let policy = policy();
        let attrs = attributes(&[
            ("type", AttributeValue::String("sensor".into())),
            ("floor", AttributeValue::Integer(1)),
        ]);
        let explanation = policy.explain(
            Some("d1"),
            Some(&attrs),
            "zones/east/status",
            Permission::Publisher,
        );
        assert!(!explanation.allowed);
        let text = explanation.to_string();
        assert!(
            text.contains(
                "binding 'sensors-publish-telemetry' (publisher for group 'sensors' on topic \
                 space 'telemetry'): template 'zones/${client.attributes.zones}/status' expands \
                 to nothing: the client has no attribute 'zones'"
            ),
            "{text}"
        );
        let explanation = policy.explain(
            None,
            Some(&attrs),
            "devices/x/telemetry",
            Permission::Publisher,
        );
        assert!(explanation.to_string().contains(
            "template 'devices/${client.authenticationName}/telemetry/#' expands to nothing: the \
             client has no authentication name"
        ));
    }

    #[test]
    fn explain_deny_when_no_template_covers_the_filter() {
        let policy = policy();
        let attrs = sensor_attributes();
        let explanation = policy.explain(
            Some("d1"),
            Some(&attrs),
            "devices/+/telemetry",
            Permission::Subscriber,
        );
        assert!(!explanation.allowed);
        let text = explanation.to_string();
        for expected in [
            "binding 'everyone-subscribe-broadcast' (subscriber for group 'everyone' on topic \
             space 'broadcast'): template 'broadcast/+/news' expands to 'broadcast/+/news', which \
             does not cover filter 'devices/+/telemetry'",
            "binding 'sensors-subscribe-telemetry' (subscriber for group 'sensors' on topic \
             space 'telemetry'): template 'zones/${client.attributes.zones}/status' expands to \
             'zones/north/status', 'zones/east/status', none of which covers filter \
             'devices/+/telemetry'",
        ] {
            assert!(text.contains(expected), "{text}");
        }
        let explanation = policy.explain(
            Some("d1"),
            Some(&attrs),
            "devices/d2/telemetry",
            Permission::Publisher,
        );
        assert!(explanation.to_string().contains(
            "expands to 'devices/d1/telemetry/#', which does not match topic 'devices/d2/telemetry'"
        ));
    }

    #[test]
    fn explain_refuses_malformed_requests() {
        let policy = policy();
        let explanation = policy.explain(Some("d1"), None, "a/+", Permission::Publisher);
        assert!(!explanation.allowed);
        assert!(explanation
            .lines
            .last()
            .expect("an explanation has lines")
            .starts_with("'a/+' is not a topic name"));
        let explanation = policy.explain(Some("d1"), None, "a/#/b", Permission::Subscriber);
        assert!(explanation
            .lines
            .last()
            .expect("an explanation has lines")
            .starts_with("'a/#/b' is not a topic filter"));
    }

    #[test]
    fn explain_decides_like_grants() {
        let policy = policy();
        let clients: Vec<(Option<&str>, Option<Attributes>)> = vec![
            (Some("d1"), Some(sensor_attributes())),
            (Some("d1"), None),
            (None, Some(sensor_attributes())),
            (Some("$SYS"), Some(sensor_attributes())),
        ];
        let requests = [
            "devices/d1/telemetry",
            "devices/d1/telemetry/#",
            "devices/+/telemetry",
            "zones/east/status",
            "zones/+/status",
            "broadcast/eu/news",
            "broadcast/#",
            "$SYS/broker/load",
            "$SYS/#",
            "#",
        ];
        for (name, attrs) in &clients {
            let grants = policy.grants(*name, attrs.as_ref());
            for request in requests {
                let explained =
                    policy.explain(*name, attrs.as_ref(), request, Permission::Subscriber);
                assert_eq!(
                    explained.grant,
                    grants.subscribe(request.as_bytes()),
                    "{request}"
                );
                assert_eq!(explained.allowed, explained.grant.is_some());
                if !request.contains(['+', '#']) {
                    let explained =
                        policy.explain(*name, attrs.as_ref(), request, Permission::Publisher);
                    assert_eq!(
                        explained.grant,
                        grants.publish(request.as_bytes()),
                        "{request}"
                    );
                }
            }
        }
    }
}
