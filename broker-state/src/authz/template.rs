//! Topic templates: MQTT topic filters whose levels may be client variables.
//!
//! A template is a topic filter ([MQTT-4.7.1-1], [MQTT-4.7.1-2]: `#` only as the
//! whole last level, `+` only as a whole level) in which a level may be, as a
//! **whole level**, one of:
//!
//! - `${client.authenticationName}`: the client's authentication name;
//! - `${client.attributes.<key>}`: one of its attributes (key: ASCII letters,
//!   digits, `_`, `-`; case-sensitive, like the variable names).
//!
//! A variable sharing a level with other text (`a${client.authenticationName}`),
//! an unknown variable (`${client.foo}`) or an unterminated one is refused when the
//! template is parsed.
//!
//! # Expansion
//!
//! For one client a template expands to zero or more topic filters:
//!
//! - a string substitutes as is, an integer as its decimal form;
//! - a string list gives one filter per element, and several list variables give
//!   their cross product; more than [`MAX_EXPANSIONS`] filters give none at all
//!   (fail closed rather than grant an arbitrary subset);
//! - a value that could change the filter's shape gives nothing: empty, or holding
//!   `/`, `+`, `#` or U+0000, or starting with `$` in the first level (which would
//!   turn the filter into a `$` topic such as `$SYS/#`). For a list only such
//!   elements are dropped; the others still expand;
//! - a missing attribute, or a missing authentication name, gives nothing.

use core::fmt;
use std::borrow::Cow;

use super::query::is_attribute_key;
use crate::hooks::{AttributeValue, Attributes};

/// The most filters one template may expand to for one client.
pub const MAX_EXPANSIONS: usize = 64;

/// The longest template accepted, in bytes (an MQTT string's limit).
pub const MAX_TEMPLATE_LEN: usize = 65_535;

const AUTHENTICATION_NAME: &str = "client.authenticationName";
const ATTRIBUTES: &str = "client.attributes.";

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: Box<str>,
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    SingleWildcard,
    MultiWildcard,
    AuthenticationName,
    Attribute(String),
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// What was wrong, for the operator.
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TemplateError {}

/// Why a template expanded to nothing for a client (for explanations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unexpandable {
    NoAuthenticationName,
    MissingAttribute(String),
    EmptyList(String),
    InvalidValue { variable: String, value: String },
    TooMany(usize),
}

impl fmt::Display for Unexpandable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unexpandable::NoAuthenticationName => {
                f.write_str("the client has no authentication name")
            }
            Unexpandable::MissingAttribute(key) => {
                write!(f, "the client has no attribute '{key}'")
            }
            Unexpandable::EmptyList(key) => write!(f, "attribute '{key}' is an empty list"),
            Unexpandable::InvalidValue { variable, value } => write!(
                f,
                "${{{variable}}} is {value:?}, which is not a usable topic level (empty, or \
                 holding '/', '+', '#' or U+0000, or starting with '$' in the first level)"
            ),
            Unexpandable::TooMany(count) => write!(
                f,
                "it would expand to {count} filters, more than the {MAX_EXPANSIONS} allowed"
            ),
        }
    }
}

fn error(message: String) -> TemplateError {
    TemplateError { message }
}

impl Template {
    /// Parses a template (see the module documentation).
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.is_empty() {
            return Err(error("a topic template cannot be empty".into()));
        }
        if text.len() > MAX_TEMPLATE_LEN {
            return Err(error(format!(
                "the template is {} bytes long; at most {MAX_TEMPLATE_LEN} are allowed",
                text.len()
            )));
        }
        if text.contains('\0') {
            return Err(error("a topic template cannot contain U+0000".into()));
        }
        let count = text.split('/').count();
        let mut levels = Vec::with_capacity(count);
        for (index, level) in text.split('/').enumerate() {
            let parsed = match level {
                "#" if index + 1 == count => Level::MultiWildcard,
                "#" => {
                    return Err(error(format!(
                        "'#' must be the last level [MQTT-4.7.1-1]; here it is level {} of {count}",
                        index + 1
                    )))
                }
                "+" => Level::SingleWildcard,
                _ if level.contains(['+', '#']) => {
                    return Err(error(format!(
                        "'+' and '#' must be a whole level [MQTT-4.7.1-1] [MQTT-4.7.1-2], found '{level}'"
                    )))
                }
                _ => parse_level(level)?,
            };
            levels.push(parsed);
        }
        Ok(Template {
            text: text.into(),
            levels,
        })
    }

    /// The text this template was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Does the template use any variable?
    pub fn has_variables(&self) -> bool {
        self.levels
            .iter()
            .any(|l| matches!(l, Level::AuthenticationName | Level::Attribute(_)))
    }

    /// Appends the filters this template expands to for a client to `out` (none
    /// when a variable cannot be substituted; see the module documentation).
    pub fn expand(
        &self,
        authentication_name: Option<&str>,
        attributes: Option<&Attributes>,
        out: &mut Vec<String>,
    ) {
        let _ = self.try_expand(authentication_name, attributes, out);
    }

    /// [`Template::expand`], saying why nothing was appended.
    pub(crate) fn try_expand(
        &self,
        authentication_name: Option<&str>,
        attributes: Option<&Attributes>,
        out: &mut Vec<String>,
    ) -> Result<(), Unexpandable> {
        let mut choices: Vec<Vec<Cow<'_, str>>> = Vec::with_capacity(self.levels.len());
        for (index, level) in self.levels.iter().enumerate() {
            let first = index == 0;
            let values = match level {
                Level::Literal(text) => vec![Cow::Borrowed(text.as_str())],
                Level::SingleWildcard => vec![Cow::Borrowed("+")],
                Level::MultiWildcard => vec![Cow::Borrowed("#")],
                Level::AuthenticationName => {
                    let name = authentication_name.ok_or(Unexpandable::NoAuthenticationName)?;
                    if !usable_level(name, first) {
                        return Err(Unexpandable::InvalidValue {
                            variable: AUTHENTICATION_NAME.into(),
                            value: name.into(),
                        });
                    }
                    vec![Cow::Borrowed(name)]
                }
                Level::Attribute(key) => {
                    let value = attributes
                        .and_then(|a| a.get(key))
                        .ok_or_else(|| Unexpandable::MissingAttribute(key.clone()))?;
                    let invalid = |value: &str| Unexpandable::InvalidValue {
                        variable: format!("{ATTRIBUTES}{key}"),
                        value: value.into(),
                    };
                    match value {
                        AttributeValue::String(s) if usable_level(s, first) => {
                            vec![Cow::Borrowed(s.as_str())]
                        }
                        AttributeValue::String(s) => return Err(invalid(s)),
                        AttributeValue::Integer(i) => vec![Cow::Owned(i.to_string())],
                        AttributeValue::StringList(items) => {
                            let Some(first_item) = items.first() else {
                                return Err(Unexpandable::EmptyList(key.clone()));
                            };
                            let usable: Vec<_> = items
                                .iter()
                                .filter(|s| usable_level(s, first))
                                .map(|s| Cow::Borrowed(s.as_str()))
                                .collect();
                            if usable.is_empty() {
                                return Err(invalid(first_item));
                            }
                            usable
                        }
                    }
                }
            };
            choices.push(values);
        }
        let total = choices
            .iter()
            .try_fold(1usize, |acc, c| acc.checked_mul(c.len()))
            .unwrap_or(usize::MAX);
        if total > MAX_EXPANSIONS {
            return Err(Unexpandable::TooMany(total));
        }
        // An odometer over the choices, last level fastest.
        let mut picks = vec![0usize; choices.len()];
        for _ in 0..total {
            let mut filter = String::new();
            for (index, (values, &pick)) in choices.iter().zip(&picks).enumerate() {
                if index > 0 {
                    filter.push('/');
                }
                if let Some(value) = values.get(pick) {
                    filter.push_str(value);
                }
            }
            out.push(filter);
            for (values, pick) in choices.iter().zip(picks.iter_mut()).rev() {
                *pick += 1;
                if *pick < values.len() {
                    break;
                }
                *pick = 0;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_level(level: &str) -> Result<Level, TemplateError> {
    let Some(open) = level.find("${") else {
        return Ok(Level::Literal(level.to_owned()));
    };
    let Some(close) = level[open..].find('}').map(|c| open + c) else {
        return Err(error(format!(
            "unterminated variable in level '{level}': expected '}}'"
        )));
    };
    if open != 0 || close + 1 != level.len() {
        return Err(error(format!(
            "a variable must be a whole topic level, found '{level}'"
        )));
    }
    let name = &level[2..close];
    if name == AUTHENTICATION_NAME {
        return Ok(Level::AuthenticationName);
    }
    if let Some(key) = name.strip_prefix(ATTRIBUTES) {
        if is_attribute_key(key) {
            return Ok(Level::Attribute(key.to_owned()));
        }
        return Err(error(format!(
            "invalid attribute key '{key}' in '{level}': keys are letters, digits, '_' and '-'"
        )));
    }
    Err(error(format!(
        "unknown variable '{level}': expected ${{{AUTHENTICATION_NAME}}} or ${{{ATTRIBUTES}<key>}}"
    )))
}

/// Can this value stand for one whole level without changing the filter's shape?
fn usable_level(value: &str, first_level: bool) -> bool {
    let reshapes = value.is_empty()
        || value.contains(['/', '+', '#', '\0'])
        || (first_level && value.starts_with('$'));
    !reshapes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(template: &str, name: Option<&str>, attributes: &Attributes) -> Vec<String> {
        let mut out = Vec::new();
        Template::parse(template)
            .unwrap_or_else(|e| panic!("{template}: {e}"))
            .expand(name, Some(attributes), &mut out);
        out
    }

    fn why(template: &str, name: Option<&str>, attributes: &Attributes) -> String {
        let mut out = Vec::new();
        let result = Template::parse(template)
            .expect("the test\'s template parses")
            .try_expand(name, Some(attributes), &mut out);
        assert!(out.is_empty());
        match result {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{template} expanded"),
        }
    }

    fn attributes() -> Attributes {
        [
            (
                "zones",
                AttributeValue::StringList(vec!["north".into(), "east".into()]),
            ),
            (
                "rooms",
                AttributeValue::StringList(vec!["r1".into(), "r2".into(), "r3".into()]),
            ),
            ("floor", AttributeValue::Integer(-2)),
            ("site", AttributeValue::String("oslo".into())),
            ("slash", AttributeValue::String("a/b".into())),
            ("plus", AttributeValue::String("+".into())),
            ("hash", AttributeValue::String("#".into())),
            ("nul", AttributeValue::String("a\0".into())),
            ("empty", AttributeValue::String(String::new())),
            ("dollar", AttributeValue::String("$SYS".into())),
            ("nolist", AttributeValue::StringList(vec![])),
            (
                "mixed",
                AttributeValue::StringList(vec!["ok".into(), "x/y".into(), "".into()]),
            ),
            ("bad", AttributeValue::StringList(vec!["x/y".into()])),
            (
                "many",
                AttributeValue::StringList((0..9).map(|i| i.to_string()).collect()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    #[test]
    fn valid_templates_parse() {
        for text in [
            "#",
            "+",
            "a",
            "a/b/c",
            "a/+/c/#",
            "$SYS/broker/#",
            "a//b",
            "/",
            "devices/${client.authenticationName}/telemetry/#",
            "zones/${client.attributes.zones}/status",
            "${client.attributes.site}/${client.attributes.floor-no_2}/+",
            "a/$/b}/{c",
        ] {
            let t = Template::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(t.text(), text);
        }
        assert!(Template::parse("a/${client.authenticationName}")
            .expect("the test\'s template parses")
            .has_variables());
        assert!(!Template::parse("a/#")
            .expect("the test\'s template parses")
            .has_variables());
    }

    #[test]
    fn malformed_templates_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "a topic template cannot be empty"),
            ("a/#/b", "'#' must be the last level [MQTT-4.7.1-1]; here it is level 2 of 3"),
            ("a/b#", "'+' and '#' must be a whole level [MQTT-4.7.1-1] [MQTT-4.7.1-2], found 'b#'"),
            ("a+/b", "'+' and '#' must be a whole level [MQTT-4.7.1-1] [MQTT-4.7.1-2], found 'a+'"),
            ("a\0b", "a topic template cannot contain U+0000"),
            (
                "devices/d-${client.authenticationName}",
                "a variable must be a whole topic level, found 'd-${client.authenticationName}'",
            ),
            (
                "devices/${client.authenticationName}-x",
                "a variable must be a whole topic level, found '${client.authenticationName}-x'",
            ),
            (
                "devices/${client.foo}",
                "unknown variable '${client.foo}': expected ${client.authenticationName} or ${client.attributes.<key>}",
            ),
            (
                "devices/${client.AuthenticationName}",
                "unknown variable '${client.AuthenticationName}': expected ${client.authenticationName} or ${client.attributes.<key>}",
            ),
            (
                "devices/${client.attributes.}",
                "invalid attribute key '' in '${client.attributes.}': keys are letters, digits, '_' and '-'",
            ),
            (
                "devices/${client.attributes.a.b}",
                "invalid attribute key 'a.b' in '${client.attributes.a.b}': keys are letters, digits, '_' and '-'",
            ),
            (
                "devices/${client.authenticationName",
                "unterminated variable in level '${client.authenticationName': expected '}'",
            ),
        ];
        for (text, message) in cases {
            match Template::parse(text) {
                Ok(t) => panic!("{text:?} parsed as {t:?}"),
                Err(e) => assert_eq!(&e.to_string(), message, "template {text:?}"),
            }
        }
        let long = "a".repeat(MAX_TEMPLATE_LEN + 1);
        assert!(Template::parse(&long).is_err());
    }

    #[test]
    fn expansion_substitutes_strings_integers_and_names() {
        let a = attributes();
        assert_eq!(
            expand(
                "devices/${client.authenticationName}/telemetry/#",
                Some("d1"),
                &a
            ),
            ["devices/d1/telemetry/#"]
        );
        assert_eq!(
            expand(
                "${client.attributes.site}/floor/${client.attributes.floor}",
                None,
                &a
            ),
            ["oslo/floor/-2"]
        );
        assert_eq!(expand("fixed/+/#", None, &a), ["fixed/+/#"]);
        // A '$' inside a later level is harmless.
        assert_eq!(
            expand("a/${client.attributes.dollar}", None, &a),
            ["a/$SYS"]
        );
    }

    #[test]
    fn expansion_of_lists_is_one_filter_per_element_and_a_cross_product() {
        let a = attributes();
        assert_eq!(
            expand("zones/${client.attributes.zones}/status", None, &a),
            ["zones/north/status", "zones/east/status"]
        );
        assert_eq!(
            expand(
                "${client.attributes.zones}/${client.attributes.rooms}",
                None,
                &a
            ),
            ["north/r1", "north/r2", "north/r3", "east/r1", "east/r2", "east/r3"]
        );
        // Unusable elements are dropped, the rest still expand.
        assert_eq!(expand("m/${client.attributes.mixed}", None, &a), ["m/ok"]);
        // 9 * 9 = 81 > 64: nothing at all.
        assert_eq!(
            why(
                "${client.attributes.many}/${client.attributes.many}",
                None,
                &a
            ),
            "it would expand to 81 filters, more than the 64 allowed"
        );
        assert_eq!(
            expand(
                "${client.attributes.many}/${client.attributes.zones}",
                None,
                &a
            )
            .len(),
            18
        );
    }

    #[test]
    fn expansion_gives_nothing_for_missing_or_unusable_values() {
        let a = attributes();
        assert_eq!(
            why("x/${client.attributes.missing}", Some("d"), &a),
            "the client has no attribute 'missing'"
        );
        assert_eq!(
            why("x/${client.authenticationName}", None, &a),
            "the client has no authentication name"
        );
        for key in ["slash", "plus", "hash", "nul", "empty"] {
            let text = format!("x/${{client.attributes.{key}}}/y");
            let message = why(&text, None, &a);
            assert!(
                message.contains("not a usable topic level"),
                "{key}: {message}"
            );
        }
        assert_eq!(
            why("x/${client.attributes.nolist}", None, &a),
            "attribute 'nolist' is an empty list"
        );
        assert!(why("x/${client.attributes.bad}", None, &a).contains("\"x/y\""));
        for name in ["a/b", "+", "#", "", "a\0"] {
            assert!(expand("x/${client.authenticationName}", Some(name), &a).is_empty());
        }
        // A first level starting with '$' would make a '$' topic filter.
        assert!(why("${client.attributes.dollar}/#", None, &a).contains("\"$SYS\""));
        assert!(expand("${client.authenticationName}/#", Some("$SYS"), &a).is_empty());
        // No attributes at all.
        let mut out = Vec::new();
        Template::parse("x/${client.attributes.site}")
            .expect("the test\'s template parses")
            .expand(Some("d"), None, &mut out);
        assert!(out.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn parse_and_expand_never_panic(text in "[a$/{}+#.]{0,12}|\\PC{0,24}") {
            if let Ok(t) = Template::parse(&text) {
                let mut out = Vec::new();
                t.expand(Some("n"), Some(&attributes()), &mut out);
                proptest::prop_assert!(out.len() <= MAX_EXPANSIONS);
            }
        }
    }
}
