//! The authorization tables of the config (Event Grid's client groups, topic
//! spaces and permission bindings) and the policy they build
//! ([`broker_state::authz::Policy`]).
//!
//! ```toml
//! [authorization]
//! mode = "bindings"        # "open" (the default): everything allowed
//! [[client_group]]
//! name = "sensors"
//! query = "attributes.type = 'sensor'"
//! [[topic_space]]
//! name = "telemetry"
//! templates = ["devices/${client.authenticationName}/telemetry/#"]
//! [[permission_binding]]
//! name = "sensors-publish-telemetry"
//! client_group = "sensors"
//! topic_space = "telemetry"
//! permission = "publisher"  # or "subscriber"
//! ```
//!
//! Every query and template is parsed when the config is read, so a malformed one
//! is an error naming the file, the table, the group and the position; a binding
//! naming a group or topic space that does not exist is one too. Names are unique
//! within their kind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use broker_state::authz::{
    ClientGroup, Mode, Permission, PermissionBinding, Policy, Query, Template, TopicSpace,
};
use serde::{Deserialize, Deserializer};

use crate::identity::IdentityConfigError;

/// `[authorization]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthorizationFile {
    #[serde(default, deserialize_with = "deserialize_mode")]
    pub(crate) mode: Option<Mode>,
}

/// `[[client_group]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientGroupFile {
    pub(crate) name: String,
    pub(crate) query: String,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

/// `[[topic_space]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicSpaceFile {
    pub(crate) name: String,
    pub(crate) templates: Vec<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

/// `[[permission_binding]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PermissionBindingFile {
    pub(crate) name: String,
    pub(crate) client_group: String,
    pub(crate) topic_space: String,
    #[serde(deserialize_with = "deserialize_permission")]
    pub(crate) permission: Permission,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

fn deserialize_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mode>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "open" => Ok(Some(Mode::Open)),
        "bindings" => Ok(Some(Mode::Bindings)),
        other => Err(serde::de::Error::custom(format_args!(
            "expected one of \"open\", \"bindings\", found {other:?}"
        ))),
    }
}

fn deserialize_permission<'de, D: Deserializer<'de>>(d: D) -> Result<Permission, D::Error> {
    match String::deserialize(d)?.as_str() {
        "publisher" => Ok(Permission::Publisher),
        "subscriber" => Ok(Permission::Subscriber),
        other => Err(serde::de::Error::custom(format_args!(
            "expected one of \"publisher\", \"subscriber\", found {other:?}"
        ))),
    }
}

/// One table as read, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    file: PathBuf,
    key: String,
}

/// The authorization part of the config, checked (every query and template
/// parses, every binding's names resolve) and kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthorizationConfig {
    mode: Option<(Mode, Origin)>,
    groups: Vec<(String, String, Origin)>,
    spaces: Vec<(String, Vec<String>, Origin)>,
    bindings: Vec<(String, String, String, Permission, Origin)>,
}

impl AuthorizationConfig {
    /// The mode in force: bindings, or open (everything allowed, the default).
    pub fn mode(&self) -> Mode {
        self.mode.as_ref().map_or(Mode::Open, |(m, _)| *m)
    }

    /// Adds one file's tables.
    pub(crate) fn add_file(
        &mut self,
        file: &Path,
        authorization: Option<AuthorizationFile>,
        groups: Vec<ClientGroupFile>,
        spaces: Vec<TopicSpaceFile>,
        bindings: Vec<PermissionBindingFile>,
    ) -> Result<(), IdentityConfigError> {
        let at = |key: String| Origin {
            file: file.to_path_buf(),
            key,
        };
        if let Some(mode) = authorization.and_then(|a| a.mode) {
            if let Some((_, first)) = &self.mode {
                return Err(err(
                    &at("authorization.mode".into()),
                    format!(
                        "the mode is already set in {}: set it once",
                        first.file.display()
                    ),
                ));
            }
            self.mode = Some((mode, at("authorization.mode".into())));
        }
        let base = self.groups.len();
        for (i, g) in groups.into_iter().enumerate() {
            let _ = g.description;
            self.groups
                .push((g.name, g.query, at(format!("client_group[{}]", base + i))));
        }
        let base = self.spaces.len();
        for (i, s) in spaces.into_iter().enumerate() {
            let _ = s.description;
            self.spaces.push((
                s.name,
                s.templates,
                at(format!("topic_space[{}]", base + i)),
            ));
        }
        let base = self.bindings.len();
        for (i, b) in bindings.into_iter().enumerate() {
            let _ = b.description;
            self.bindings.push((
                b.name,
                b.client_group,
                b.topic_space,
                b.permission,
                at(format!("permission_binding[{}]", base + i)),
            ));
        }
        Ok(())
    }

    /// Builds the policy; every error names the file, the table and what is wrong.
    pub fn build(&self) -> Result<Policy, IdentityConfigError> {
        let mut group_index = HashMap::new();
        let mut groups = Vec::with_capacity(self.groups.len());
        for (name, query, origin) in &self.groups {
            let o = |k: &str| sub(origin, k);
            check_name(name, &o("name"))?;
            if group_index.insert(name.as_str(), groups.len()).is_some() {
                return Err(err(
                    &o("name"),
                    format!("another client_group is named {name:?}"),
                ));
            }
            let query = Query::parse(query)
                .map_err(|e| err(&o("query"), format!("client group {name:?}: {e}")))?;
            groups.push(ClientGroup {
                name: name.clone(),
                query,
            });
        }
        let mut space_index = HashMap::new();
        let mut spaces = Vec::with_capacity(self.spaces.len());
        for (name, templates, origin) in &self.spaces {
            check_name(name, &sub(origin, "name"))?;
            if space_index.insert(name.as_str(), spaces.len()).is_some() {
                return Err(err(
                    &sub(origin, "name"),
                    format!("another topic_space is named {name:?}"),
                ));
            }
            if templates.is_empty() {
                return Err(err(
                    &sub(origin, "templates"),
                    "expected at least one topic template".into(),
                ));
            }
            let mut parsed = Vec::with_capacity(templates.len());
            for (j, text) in templates.iter().enumerate() {
                let template = Template::parse(text).map_err(|e| {
                    err(
                        &sub(origin, &format!("templates[{j}]")),
                        format!("topic space {name:?}: {text:?}: {e}"),
                    )
                })?;
                parsed.push((text.clone(), template));
            }
            spaces.push(TopicSpace {
                name: name.clone(),
                templates: parsed,
            });
        }
        let mut seen = HashMap::new();
        let mut bindings = Vec::with_capacity(self.bindings.len());
        for (name, group, space, permission, origin) in &self.bindings {
            check_name(name, &sub(origin, "name"))?;
            if seen.insert(name.as_str(), ()).is_some() {
                return Err(err(
                    &sub(origin, "name"),
                    format!("another permission_binding is named {name:?}"),
                ));
            }
            let client_group = *group_index.get(group.as_str()).ok_or_else(|| {
                err(
                    &sub(origin, "client_group"),
                    format!("no [[client_group]] is named {group:?}"),
                )
            })?;
            let topic_space = *space_index.get(space.as_str()).ok_or_else(|| {
                err(
                    &sub(origin, "topic_space"),
                    format!("no [[topic_space]] is named {space:?}"),
                )
            })?;
            bindings.push(PermissionBinding {
                name: name.clone(),
                client_group,
                topic_space,
                permission: *permission,
            });
        }
        Ok(Policy {
            mode: self.mode(),
            groups,
            spaces,
            bindings,
        })
    }
}

fn sub(origin: &Origin, key: &str) -> Origin {
    Origin {
        file: origin.file.clone(),
        key: format!("{}.{key}", origin.key),
    }
}

fn err(origin: &Origin, problem: String) -> IdentityConfigError {
    IdentityConfigError {
        file: origin.file.clone(),
        key: origin.key.clone(),
        problem,
    }
}

fn check_name(name: &str, origin: &Origin) -> Result<(), IdentityConfigError> {
    if name.is_empty() {
        return Err(err(origin, "expected a non-empty name".into()));
    }
    Ok(())
}
