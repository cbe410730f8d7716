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

#[cfg(test)]
mod tests {
    //! Config errors of the authorization tables: each names the file, the key
    //! and what was expected, as the operator reads it.

    use std::path::Path;

    use broker_state::authz::{Mode, Permission};

    use crate::config::Config;

    const FILE: &str = "/etc/brokk/brokk.toml";

    /// A group, a topic space and a binding between them, all valid.
    const VALID: &str = "[authorization]\nmode = \"bindings\"\n\
        [[client_group]]\nname = \"sensors\"\nquery = \"attributes.type = 'sensor'\"\n\
        [[topic_space]]\nname = \"telemetry\"\n\
        templates = [\"devices/${client.authenticationName}/telemetry/#\"]\n\
        [[permission_binding]]\nname = \"sensors-publish\"\nclient_group = \"sensors\"\n\
        topic_space = \"telemetry\"\npermission = \"publisher\"\n";

    fn group(name: &str, query: &str) -> String {
        format!("[[client_group]]\nname = {name:?}\nquery = {query:?}\n")
    }

    fn space(name: &str, templates: &[&str]) -> String {
        let templates: Vec<String> = templates.iter().map(|t| format!("{t:?}")).collect();
        format!(
            "[[topic_space]]\nname = {name:?}\ntemplates = [{}]\n",
            templates.join(", ")
        )
    }

    fn binding(name: &str, group: &str, space: &str, permission: &str) -> String {
        format!(
            "[[permission_binding]]\nname = {name:?}\nclient_group = {group:?}\n\
             topic_space = {space:?}\npermission = {permission:?}\n"
        )
    }

    /// The error reading `text` as /etc/brokk/brokk.toml gives, as displayed.
    fn error(text: &str) -> String {
        match Config::parse(Path::new(FILE), text) {
            Ok(config) => panic!("expected an error, got {:?}", config.authorization),
            Err(e) => e.to_string(),
        }
    }

    /// Writes `brokk.toml` (including `authz.toml`) and `authz.toml` in a
    /// temporary directory and reads the config as the broker does.
    fn read_with_include(
        main: &str,
        included: &str,
    ) -> (tempfile::TempDir, Result<Config, String>) {
        let dir = tempfile::tempdir().expect("test setup: a temporary directory");
        std::fs::write(
            dir.path().join("brokk.toml"),
            format!("include = [\"authz.toml\"]\n{main}"),
        )
        .expect("test setup: brokk.toml written");
        std::fs::write(dir.path().join("authz.toml"), included)
            .expect("test setup: authz.toml written");
        let read = Config::read(&dir.path().join("brokk.toml")).map_err(|e| e.to_string());
        (dir, read)
    }

    #[test]
    fn a_valid_config_builds_its_policy_and_open_is_the_default() {
        let config = Config::parse(Path::new(FILE), VALID).expect("a valid config");
        assert_eq!(config.authorization.mode(), Mode::Bindings);
        let policy = config.authorization.build().expect("the policy builds");
        assert_eq!(policy.groups[0].name, "sensors");
        assert_eq!(policy.spaces[0].templates.len(), 1);
        assert_eq!(policy.bindings[0].permission, Permission::Publisher);
        assert_eq!(
            (
                policy.bindings[0].client_group,
                policy.bindings[0].topic_space
            ),
            (0, 0)
        );

        let open = Config::parse(Path::new(FILE), "").expect("an empty config");
        assert_eq!(open.authorization.mode(), Mode::Open);
        let open = Config::parse(Path::new(FILE), "[authorization]\nmode = \"open\"\n")
            .expect("mode = open");
        assert_eq!(open.authorization.build().map(|p| p.mode), Ok(Mode::Open));
    }

    #[test]
    fn duplicate_group_names_are_refused_naming_the_second() {
        let e = error(&format!("{VALID}{}", group("sensors", "$all")));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: client_group[1].name: another client_group is named \"sensors\""
        );
    }

    #[test]
    fn duplicate_topic_space_names_are_refused_naming_the_second() {
        let e = error(&format!("{VALID}{}", space("telemetry", &["other/#"])));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: topic_space[1].name: another topic_space is named \"telemetry\""
        );
    }

    #[test]
    fn duplicate_binding_names_are_refused_naming_the_second() {
        let e = error(&format!(
            "{VALID}{}",
            binding("sensors-publish", "sensors", "telemetry", "subscriber")
        ));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: permission_binding[1].name: another permission_binding is \
             named \"sensors-publish\""
        );
    }

    #[test]
    fn the_same_name_in_different_kinds_is_allowed() {
        let text = format!(
            "{}{}{}",
            group("telemetry", "$all"),
            space("telemetry", &["a/#"]),
            binding("telemetry", "telemetry", "telemetry", "subscriber")
        );
        let config = Config::parse(Path::new(FILE), &text).expect("names are unique per kind");
        assert_eq!(
            config.authorization.build().map(|p| p.bindings.len()),
            Ok(1)
        );
    }

    #[test]
    fn empty_names_are_refused() {
        let e = error(&group("", "$all"));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: client_group[0].name: expected a non-empty name"
        );
        let e = error(&space("", &["a"]));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: topic_space[0].name: expected a non-empty name"
        );
        let e = error(&format!(
            "{VALID}{}",
            binding("", "sensors", "telemetry", "publisher")
        ));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: permission_binding[1].name: expected a non-empty name"
        );
    }

    #[test]
    fn a_binding_naming_an_unknown_group_or_topic_space_is_refused() {
        let e = error(&format!(
            "{VALID}{}",
            binding("b", "nobody", "telemetry", "publisher")
        ));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: permission_binding[1].client_group: no [[client_group]] is \
             named \"nobody\""
        );
        let e = error(&format!(
            "{VALID}{}",
            binding("b", "sensors", "nowhere", "publisher")
        ));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: permission_binding[1].topic_space: no [[topic_space]] is \
             named \"nowhere\""
        );
        // Names are exact: another case is another name.
        let e = error(&format!(
            "{VALID}{}",
            binding("b", "Sensors", "telemetry", "publisher")
        ));
        assert!(
            e.contains(
                "permission_binding[1].client_group: no [[client_group]] is named \"Sensors\""
            ),
            "{e}"
        );
    }

    #[test]
    fn a_bad_permission_names_the_key_and_the_two_permissions() {
        let e = error(&format!(
            "{VALID}{}",
            binding("b", "sensors", "telemetry", "admin")
        ));
        assert!(
            e.starts_with(
                "/etc/brokk/brokk.toml: permission_binding[1].permission: expected one of \
                 \"publisher\", \"subscriber\", found \"admin\""
            ),
            "{e}"
        );
        assert!(e.ends_with("found \"admin\" (line 18, column 14)"), "{e}");
        // A value that is not a string at all.
        let e = error(&format!(
            "{VALID}{}",
            binding("b", "sensors", "telemetry", "publisher").replace("\"publisher\"\n", "1\n")
        ));
        assert!(
            e.starts_with("/etc/brokk/brokk.toml: permission_binding[1].permission: "),
            "{e}"
        );
    }

    #[test]
    fn a_bad_mode_names_the_key_and_the_two_modes() {
        let e = error("[authorization]\nmode = \"closed\"\n");
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: authorization.mode: expected one of \"open\", \"bindings\", \
             found \"closed\" (line 2, column 8)"
        );
        let e = error("[authorization]\nmodes = \"bindings\"\n");
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: authorization.modes: unknown key \"modes\", expected \
             \"mode\" (line 2, column 1)"
        );
    }

    #[test]
    fn missing_and_unknown_keys_are_named() {
        let e = error("[[client_group]]\nname = \"g\"\n");
        assert!(
            e.starts_with("/etc/brokk/brokk.toml: client_group[0]: missing key \"query\""),
            "{e}"
        );
        let e = error("[[topic_space]]\nname = \"s\"\ntemplate = [\"a\"]\n");
        assert!(
            e.starts_with(
                "/etc/brokk/brokk.toml: topic_space[0].template: unknown key \"template\", \
                 expected one of \"name\", \"templates\", \"description\""
            ),
            "{e}"
        );
        let e = error(&format!(
            "{VALID}[[permission_binding]]\nname = \"b\"\nclient_group = \"sensors\"\n\
             topic_space = \"telemetry\"\n"
        ));
        assert!(
            e.starts_with(
                "/etc/brokk/brokk.toml: permission_binding[1]: missing key \"permission\""
            ),
            "{e}"
        );
    }

    #[test]
    fn a_topic_space_without_templates_is_refused() {
        let e = error(&space("empty", &[]));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: topic_space[0].templates: expected at least one topic template"
        );
    }

    #[test]
    fn a_malformed_template_names_its_index_the_space_and_the_problem() {
        let e = error(&format!(
            "{VALID}{}",
            space("bad", &["ok/#", "devices/${client.foo}/x"])
        ));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: topic_space[1].templates[1]: topic space \"bad\": \
             \"devices/${client.foo}/x\": unknown variable '${client.foo}': expected \
             ${client.authenticationName} or ${client.attributes.<key>}"
        );
        for (template, problem) in [
            ("a/#/b", "'#' must be the last level"),
            ("a/b+", "'+' and '#' must be a whole level"),
            (
                "a/x${client.authenticationName}",
                "a variable must be a whole topic level",
            ),
            ("a/${client.authenticationName", "unterminated variable"),
            ("a/${client.attributes.a b}", "invalid attribute key 'a b'"),
            ("", "a topic template cannot be empty"),
        ] {
            let e = error(&space("s", &[template]));
            assert!(
                e.starts_with(&format!(
                    "/etc/brokk/brokk.toml: topic_space[0].templates[0]: topic space \"s\": \
                     {template:?}: "
                )) && e.contains(problem),
                "{template}: {e}"
            );
        }
    }

    #[test]
    fn a_malformed_query_names_the_group_and_the_position() {
        let e = error(&group("sensors", "attributes.type = 'sensor' and"));
        assert_eq!(
            e,
            "/etc/brokk/brokk.toml: client_group[0].query: client group \"sensors\": at 30: \
             expected a comparison (authenticationName or attributes.<key>), 'not' or '(', found the end \
             of the query"
        );
        let e = error(&format!(
            "{}{}",
            group("ok", "$all"),
            group("ranged", "attributes.floor > 'high'")
        ));
        assert!(
            e.starts_with(
                "/etc/brokk/brokk.toml: client_group[1].query: client group \"ranged\": at "
            ),
            "{e}"
        );
    }

    #[test]
    fn the_mode_set_in_two_files_is_refused_naming_both() {
        let (dir, read) = read_with_include(
            "[authorization]\nmode = \"bindings\"\n",
            "[authorization]\nmode = \"open\"\n",
        );
        let e = read.expect_err("the mode is set twice");
        assert_eq!(
            e,
            format!(
                "{}: authorization.mode: the mode is already set in {}: set it once",
                dir.path().join("authz.toml").display(),
                dir.path().join("brokk.toml").display()
            )
        );
    }

    #[test]
    fn the_mode_may_come_from_the_included_file_alone() {
        let (_dir, read) = read_with_include("", "[authorization]\nmode = \"bindings\"\n");
        let config = read.expect("a mode set once, in the included file");
        assert_eq!(config.authorization.mode(), Mode::Bindings);
    }

    #[test]
    fn tables_from_an_included_file_are_numbered_after_the_main_files() {
        // A malformed query in the included file's first group: the main file has
        // one group, so it is client_group[1], in the included file.
        let (dir, read) = read_with_include(VALID, &group("broken", "attributes.x = "));
        let e = read.expect_err("a malformed query");
        assert!(
            e.starts_with(&format!(
                "{}: client_group[1].query: client group \"broken\": at 15: ",
                dir.path().join("authz.toml").display()
            )),
            "{e}"
        );

        // The included file's second topic space, after the main file's one.
        let (dir, read) = read_with_include(
            VALID,
            &format!("{}{}", space("fine", &["a/#"]), space("bad", &["a/#/b"])),
        );
        let e = read.expect_err("a malformed template");
        assert!(
            e.starts_with(&format!(
                "{}: topic_space[2].templates[0]: topic space \"bad\": \"a/#/b\": ",
                dir.path().join("authz.toml").display()
            )),
            "{e}"
        );

        // Duplicate names across files: the included one is named.
        let (dir, read) = read_with_include(VALID, &group("sensors", "$all"));
        assert_eq!(
            read.expect_err("a duplicate group"),
            format!(
                "{}: client_group[1].name: another client_group is named \"sensors\"",
                dir.path().join("authz.toml").display()
            )
        );

        // A binding in the included file naming a group nobody declared.
        let (dir, read) =
            read_with_include(VALID, &binding("b", "ghosts", "telemetry", "subscriber"));
        assert_eq!(
            read.expect_err("an unknown group"),
            format!(
                "{}: permission_binding[1].client_group: no [[client_group]] is named \"ghosts\"",
                dir.path().join("authz.toml").display()
            )
        );

        // A serde error in the included file names it and the key within it.
        let (dir, read) = read_with_include(VALID, &binding("b", "sensors", "telemetry", "owner"));
        let e = read.expect_err("a bad permission");
        assert!(
            e.starts_with(&format!(
                "{}: permission_binding[0].permission: expected one of \"publisher\", \
                 \"subscriber\", found \"owner\"",
                dir.path().join("authz.toml").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn bindings_resolve_names_across_files_in_both_directions() {
        // The main file binds a group the included file declares, and the included
        // file binds the main file's group to its own topic space.
        let main = format!(
            "[authorization]\nmode = \"bindings\"\n{}{}{}",
            group("sensors", "attributes.type = 'sensor'"),
            space("telemetry", &["t/#"]),
            binding("auditors-subscribe", "auditors", "telemetry", "subscriber")
        );
        let included = format!(
            "{}{}{}",
            group("auditors", "attributes.role = 'auditor'"),
            space("alerts", &["alerts/${client.authenticationName}"]),
            binding("sensors-alert", "sensors", "alerts", "publisher")
        );
        let (_dir, read) = read_with_include(&main, &included);
        let config = read.expect("names resolve across files");
        let policy = config.authorization.build().expect("the policy builds");
        let names = |i: usize| {
            let b = &policy.bindings[i];
            (
                b.name.as_str(),
                policy.groups[b.client_group].name.as_str(),
                policy.spaces[b.topic_space].name.as_str(),
                b.permission,
            )
        };
        assert_eq!(
            names(0),
            (
                "auditors-subscribe",
                "auditors",
                "telemetry",
                Permission::Subscriber
            )
        );
        assert_eq!(
            names(1),
            ("sensors-alert", "sensors", "alerts", Permission::Publisher)
        );
    }
}
