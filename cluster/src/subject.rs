//! MQTT topic names and topic filters as NATS subjects, and back.
//!
//! # The rules on each side
//!
//! A NATS subject is a list of tokens joined by `.`. A token is never empty and never
//! holds whitespace (the protocol separates `PUB subject reply size` by whitespace);
//! a token that is exactly `*` matches one token and a last token that is exactly `>`
//! matches one or more. The NATS documentation recommends `A-Z a-z 0-9 - _`, and
//! subjects that start with `$` (`$JS`, `$KV`, `$SYS`, ...) belong to the system.
//!
//! An MQTT topic is a list of levels joined by `/`. A level may be empty (`a//b`,
//! `/a`, `a/`) and may hold `.`, spaces, `*`, `>` and any other UTF-8 except U+0000.
//! Topics whose first level starts with `$` are the server's: filters that start with
//! a wildcard never match them [MQTT-4.7.2-1]. In a filter `+` is a whole level and
//! matches exactly one (possibly empty) level; `#` is the whole last level and
//! matches any number of levels *including none*, so `a/#` matches `a` itself
//! [MQTT-4.7.1-2].
//!
//! # The mapping
//!
//! `subject = <prefix> "." <space> ("." <token>)+`, one token per MQTT level:
//!
//! | MQTT topic            | NATS subject (prefix `brokk`)   | why                                   |
//! |-----------------------|---------------------------------|---------------------------------------|
//! | `a/b`                 | `brokk.t.a.b`                   | `/` becomes `.`                       |
//! | `a.b`                 | `brokk.t.a%2Eb`                 | `.` separates NATS tokens             |
//! | `room 1`              | `brokk.t.room%201`              | no whitespace in a subject            |
//! | `*` / `>`             | `brokk.t.%2A` / `brokk.t.%3E`   | a literal level is never a wildcard   |
//! | `100%`                | `brokk.t.100%25`                | the escape character escapes itself   |
//! | `a//b`, `/a`          | `brokk.t.a.%.b`, `brokk.t.%.a`  | NATS tokens are never empty           |
//! | `é/日本`              | `brokk.t.é.日本`                | other UTF-8 is kept, it is legal      |
//! | `$SYS/broker`         | `brokk.s.$SYS.broker`           | `$` topics live in their own space    |
//!
//! **Prefix.** Every subject starts with the configured prefix (default
//! [`DEFAULT_PREFIX`], one or more tokens of `A-Z a-z 0-9 - _`), so brokk's subjects
//! never start with `$` and never collide with `$JS`, `$KV` or another application
//! on the same NATS account; `<prefix>.>` covers all of them (one JetStream stream can
//! hold everything brokk publishes).
//!
//! **Space token.** The token after the prefix is `t` for ordinary topics and `s` for
//! the server's topics (first level starting with `$`). A filter whose first level is
//! a wildcard maps into `t` only, so NATS never matches it against a `$` topic, which
//! is exactly [MQTT-4.7.2-1]. A token-level marker could not do this: `*` and `>`
//! match any token, whatever it starts with. A filter whose first level starts with
//! `$` (`$SYS/#`) maps into `s`. The `$` itself is kept: inside a subject it is just a
//! character, NATS reserves it only at the start.
//!
//! **Escaping.** Inside a level, `%` `.` `*` `>` and every character that Rust calls
//! whitespace or control (ASCII space, tab, CR, LF, DEL, but also U+0085, U+00A0,
//! U+3000, ...) become `%XX` for each byte of their UTF-8 encoding, with uppercase
//! hex. Everything else is copied. Unicode whitespace is escaped too because NATS
//! clients differ in what they reject; the set is a superset of all of them.
//!
//! **Empty level.** An empty level becomes the token `%`, which no escape produces
//! (an escape is always `%` and two hex digits).
//!
//! **Reversible.** [`SubjectMap::subject_to_topic`] undoes all of this and accepts
//! only the exact subject [`SubjectMap::topic_to_subject`] produces for a valid
//! topic: a subject another NATS application publishes under the prefix with an
//! unnecessary escape, lowercase hex, a literal `+`, or a topic in the wrong space is
//! refused (`None`) rather than guessed at. So topics and subjects correspond one to
//! one, and equal topics always travel on equal subjects.
//!
//! # Filters
//!
//! A filter maps level by level like a topic, with `+` to `*` and a final `#` to
//! `>`. Because NATS `a.>` does not match `a`, a filter ending in `/#` also needs its
//! parent: [`SubjectMap::filter_to_subjects`] returns both subjects, and the node
//! subscribes to both (the NATS server's own MQTT support does the same). The two
//! never match the same subject, so a message is never received twice through them.
//! A filter that is only `#` needs one subject: a topic always has a first level.
//!
//! | MQTT filter  | NATS subjects                           |
//! |--------------|-----------------------------------------|
//! | `a/+/c`      | `brokk.t.a.*.c`                         |
//! | `#`          | `brokk.t.>`                             |
//! | `a/#`        | `brokk.t.a.>`, `brokk.t.a`              |
//! | `+/#`        | `brokk.t.*.>`, `brokk.t.*`              |
//! | `$SYS/#`     | `brokk.s.$SYS.>`, `brokk.s.$SYS`        |
//!
//! For every valid topic `T` and filter `F`: `F` matches `T` under MQTT 5.0 section
//! 4.7 if and only if some subject of `filter_to_subjects(F)` matches
//! `topic_to_subject(T)` under NATS rules. The tests check this over generated
//! topics and filters and over every pair in a small alphabet.
//!
//! # Shared subscriptions
//!
//! `$share/{group}/{filter}` subscribes to the subjects of `{filter}` in the queue
//! group [`SubjectMap::shared_queue_group`]`(group, filter)`. The name holds the
//! filter as well as the group because the NATS server merges queue subscribers of
//! the same name across every subscription that matches a message (nats-server's
//! sublist, `findQSlot`), while MQTT keeps `$share/g/a/+` and `$share/g/a/#` apart:
//! each must receive its own copy.
//!
//! # Length
//!
//! MQTT topics reach 65,535 bytes; NATS has no subject limit of its own, but a
//! subject travels in a protocol line bounded by the server's `max_control_line`
//! (4 KiB by default, subject and queue group together). Escaping at most triples a
//! topic: a subject is at most [`SubjectMap::max_subject_len`] bytes, the prefix plus
//! 3 plus three times the topic's length. Topics of ordinary characters keep their
//! length plus the prefix and space token.

/// The prefix used when the operator configures none.
pub const DEFAULT_PREFIX: &str = "brokk";

/// The space token of topics whose first level does not start with `$`.
const SPACE_TOPICS: &str = "t";
/// The space token of the server's topics, those whose first level starts with `$`.
const SPACE_SERVER: &str = "s";
/// Starts every escape, `%XX`; alone it is the token of an empty level.
const ESCAPE: u8 = b'%';
const EMPTY_LEVEL: &str = "%";
const HEX: &[u8; 16] = b"0123456789ABCDEF";
/// An MQTT string's length is a 16-bit number [MQTT-1.5.4].
const MAX_MQTT_STRING: usize = u16::MAX as usize;

/// Maps MQTT topic names and topic filters to NATS subjects under one prefix, and
/// subjects back to topic names. See the [module documentation](self) for the scheme.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectMap {
    prefix: String,
}

impl SubjectMap {
    /// A map under `prefix`: one or more NATS tokens of `A-Z a-z 0-9 - _` joined by
    /// single dots, such as `brokk` or `brokk.prod-eu`. The error says what is wrong,
    /// for the operator who configured it.
    pub fn new(prefix: &str) -> Result<SubjectMap, String> {
        const EXPECTED: &str = "expected one or more tokens of A-Z, a-z, 0-9, '-' and '_' \
                                joined by single dots, such as \"brokk\" or \"brokk.prod\"";
        if prefix.is_empty() {
            return Err(format!("the cluster subject prefix is empty; {EXPECTED}"));
        }
        for (i, token) in prefix.split('.').enumerate() {
            if token.is_empty() {
                return Err(format!(
                    "cluster subject prefix {prefix:?}: token {} is empty; {EXPECTED}",
                    i + 1
                ));
            }
            if let Some(c) = token.chars().find(|&c| !is_prefix_char(c)) {
                return Err(format!(
                    "cluster subject prefix {prefix:?}: {c:?} is not allowed in token \
                     {token:?}; {EXPECTED}"
                ));
            }
        }
        Ok(SubjectMap {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix every subject of this map starts with; `<prefix>.>` matches them all.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The literal subject (no wildcards) a publish to `topic` travels on.
    ///
    /// `topic` is a valid MQTT topic name, as `mqtt_proto::TopicName` guarantees. Any
    /// other string still yields a valid literal subject, but one that
    /// [`subject_to_topic`](Self::subject_to_topic) refuses.
    pub fn topic_to_subject(&self, topic: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 3 + topic.len() + 8);
        self.write_subject(topic, &mut out);
        out
    }

    /// [`topic_to_subject`](Self::topic_to_subject) appended to a buffer the caller
    /// owns and reuses, for the publish path.
    pub fn write_subject(&self, topic: &str, out: &mut String) {
        out.push_str(&self.prefix);
        out.push('.');
        out.push_str(space_of(topic));
        for level in topic.split('/') {
            out.push('.');
            push_level(out, level);
        }
    }

    /// The topic name a subject of this map stands for, or `None` when `subject` is
    /// not exactly what [`topic_to_subject`](Self::topic_to_subject) makes of a valid
    /// topic name (another prefix, a wildcard, a malformed or unnecessary escape, a
    /// decoded topic that breaks MQTT's rules).
    pub fn subject_to_topic(&self, subject: &str) -> Option<String> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (space, tokens) = rest.split_once('.')?;
        if space != SPACE_TOPICS && space != SPACE_SERVER {
            return None;
        }
        let mut topic = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.split('.').enumerate() {
            if i > 0 {
                topic.push(b'/');
            }
            if token != EMPTY_LEVEL {
                unescape_token(token, &mut topic)?;
            }
        }
        let topic = String::from_utf8(topic).ok()?;
        if !is_valid_topic_name(&topic) {
            return None;
        }
        // Only the canonical spelling maps back: this rejects a topic in the wrong
        // space, escapes of characters that need none, lowercase hex and literal
        // wildcards in one comparison, and keeps topics and subjects one to one.
        let mut canonical = String::with_capacity(subject.len());
        self.write_subject(&topic, &mut canonical);
        (canonical == subject).then_some(topic)
    }

    /// The NATS subjects whose subscriptions together receive exactly the topics
    /// `filter` matches: one subject, or two for a filter ending in `/#` (the `>`
    /// subject first, then the parent level's subject, see the module documentation).
    ///
    /// A shared subscription's filter, `$share/{group}/{filter}`, gives the subjects of
    /// its `{filter}`; subscribe to them in [`shared_queue_group`](Self::shared_queue_group).
    /// An invalid filter gives no subject at all.
    pub fn filter_to_subjects(&self, filter: &str) -> Vec<String> {
        let filter = match shared_parts(filter) {
            Some(Some((_, filter))) => filter,
            Some(None) => return Vec::new(),
            None => filter,
        };
        if !is_valid_filter(filter) {
            return Vec::new();
        }
        let mut subject = String::with_capacity(self.prefix.len() + 3 + filter.len() + 8);
        subject.push_str(&self.prefix);
        subject.push('.');
        // A first level starting with `$` is literal (wildcards are `+` and `#`), so
        // it selects the server's space exactly as the topic's does.
        subject.push_str(space_of(filter));
        let mut parent = None;
        for (i, level) in filter.split('/').enumerate() {
            match level {
                "#" => {
                    // `a/#` matches `a` [MQTT-4.7.1-2]; a lone `#` has no parent level.
                    if i > 0 {
                        parent = Some(subject.clone());
                    }
                    subject.push_str(".>");
                }
                "+" => subject.push_str(".*"),
                _ => {
                    subject.push('.');
                    push_level(&mut subject, level);
                }
            }
        }
        let mut subjects = Vec::with_capacity(2);
        subjects.push(subject);
        subjects.extend(parent);
        subjects
    }

    /// The NATS queue group of the shared subscription `$share/{group}/{filter}`,
    /// given its two parts (as `mqtt_proto::TopicFilter::shared` returns them).
    ///
    /// Different `(group, filter)` pairs always get different names. The name is one
    /// token of `A-Z a-z 0-9 - % _` (escaped group, `_`, escaped filter; every other
    /// byte is `%XX`), so it is also a valid JetStream consumer name. It holds the
    /// filter because NATS would merge same-named queue groups of different filters,
    /// see the module documentation.
    pub fn shared_queue_group(&self, group: &str, filter: &str) -> String {
        let mut out = String::with_capacity(group.len() + 1 + filter.len() + 8);
        push_name_part(&mut out, group);
        out.push('_');
        push_name_part(&mut out, filter);
        out
    }

    /// The longest subject a topic (or filter) of `topic_len` bytes can map to.
    /// Compare it with the NATS server's `max_control_line` before forwarding.
    pub fn max_subject_len(&self, topic_len: usize) -> usize {
        // `.`, the space token, `.`, then the levels: each byte at most `%XX`; an
        // empty level's one-byte token is paid for by a `/` next to it, which becomes
        // a one-byte `.` but was counted as three. Only the empty topic exceeds 3x.
        self.prefix.len() + 3 + (3 * topic_len).max(1)
    }
}

fn is_prefix_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn space_of(topic_or_filter: &str) -> &'static str {
    if topic_or_filter.starts_with('$') {
        SPACE_SERVER
    } else {
        SPACE_TOPICS
    }
}

/// Characters a level cannot carry verbatim in a NATS token.
fn needs_escape(c: char) -> bool {
    matches!(c, '%' | '.' | '*' | '>') || c.is_whitespace() || c.is_control()
}

fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push_str(EMPTY_LEVEL);
        return;
    }
    for c in level.chars() {
        if needs_escape(c) {
            let mut utf8 = [0; 4];
            for &b in c.encode_utf8(&mut utf8).as_bytes() {
                push_byte_escape(out, b);
            }
        } else {
            out.push(c);
        }
    }
}

fn push_byte_escape(out: &mut String, b: u8) {
    out.push(char::from(ESCAPE));
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xF)]));
}

/// Appends the bytes a non-empty token stands for; `None` for a malformed escape.
fn unescape_token(token: &str, out: &mut Vec<u8>) -> Option<()> {
    let mut bytes = token.bytes();
    while let Some(b) = bytes.next() {
        if b == ESCAPE {
            let hi = hex_value(bytes.next()?)?;
            let lo = hex_value(bytes.next()?)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    Some(())
}

/// Uppercase only: the canonical spelling (lowercase is refused later anyway).
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Every byte outside `A-Z a-z 0-9 -` becomes `%XX`, which leaves `_` free to
/// separate the parts of a queue group name.
fn push_name_part(out: &mut String, part: &str) {
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            push_byte_escape(out, b);
        }
    }
}

/// Non-empty, at most 65,535 bytes, no U+0000 [MQTT-1.5.4-2] and no wildcard
/// [MQTT-3.3.2-2]. (`&str` is well-formed UTF-8 already [MQTT-1.5.4-1].)
fn is_valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_MQTT_STRING
        && !topic.bytes().any(|b| matches!(b, 0 | b'+' | b'#'))
}

/// Non-empty, at most 65,535 bytes, no U+0000, `+` alone in its level
/// [MQTT-4.7.1-2] and `#` alone in the last level [MQTT-4.7.1-1]. Without any
/// `$share/` prefix.
fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_MQTT_STRING || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let wildcard_ok = match level {
            "+" => true,
            "#" => last,
            _ => !level.contains(['+', '#']),
        };
        if !wildcard_ok {
            return false;
        }
    }
    true
}

/// `None` for a filter that is not shared, `Some(None)` for a malformed
/// `$share/` filter, else the share name and the filter [MQTT-4.8.2-1] [MQTT-4.8.2-2].
fn shared_parts(filter: &str) -> Option<Option<(&str, &str)>> {
    let rest = filter.strip_prefix("$share/")?;
    let parts = rest
        .split_once('/')
        .filter(|(group, filter)| !group.is_empty() && !filter.is_empty())
        .filter(|(group, _)| !group.contains(['+', '#']));
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map() -> SubjectMap {
        SubjectMap::new("brokk").expect("a valid literal prefix") // a valid literal prefix
    }

    // ---- References, written from the two specifications -----------------------

    /// NATS matching: `*` is one token, a last `>` is one or more tokens.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut p = pattern.split('.');
        let mut s = subject.split('.');
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// A subject NATS accepts (literal: no wildcard character at all, stricter than
    /// NATS, which treats `a*` as literal) that is not a system subject.
    fn is_valid_nats_subject(subject: &str, wildcards: bool) -> bool {
        if subject.is_empty() || subject.starts_with('$') {
            return false;
        }
        let tokens: Vec<&str> = subject.split('.').collect();
        tokens.iter().enumerate().all(|(i, t)| {
            let last = i + 1 == tokens.len();
            !t.is_empty()
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
                && match *t {
                    "*" => wildcards,
                    ">" => wildcards && last,
                    _ => !t.contains(['*', '>']),
                }
        })
    }

    /// MQTT 5.0 section 4.7 matching of a (non-shared) filter against a topic.
    fn mqtt_matches(filter: &str, topic: &str) -> bool {
        // [MQTT-4.7.2-1]
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let topic: Vec<&str> = topic.split('/').collect();
        for (i, f) in filter.split('/').enumerate() {
            if f == "#" {
                // Any number of levels, including none: the parent matches too.
                return topic.len() >= i;
            }
            match topic.get(i) {
                Some(t) if f == "+" || f == *t => {}
                _ => return false,
            }
        }
        filter.split('/').count() == topic.len()
    }

    fn nats_agrees(map: &SubjectMap, filter: &str, topic: &str) -> bool {
        let subject = map.topic_to_subject(topic);
        map.filter_to_subjects(filter)
            .iter()
            .any(|pattern| nats_matches(pattern, &subject))
    }

    // ---- Topics ------------------------------------------------------------------

    const TOPICS: &[(&str, &str)] = &[
        ("a", "brokk.t.a"),
        ("a/b", "brokk.t.a.b"),
        ("sensors/temp/room-1", "brokk.t.sensors.temp.room-1"),
        ("under_score-dash", "brokk.t.under_score-dash"),
        ("t/s", "brokk.t.t.s"),
        ("/", "brokk.t.%.%"),
        ("/a", "brokk.t.%.a"),
        ("a/", "brokk.t.a.%"),
        ("a//b", "brokk.t.a.%.b"),
        ("//", "brokk.t.%.%.%"),
        (".", "brokk.t.%2E"),
        ("a.b", "brokk.t.a%2Eb"),
        ("...", "brokk.t.%2E%2E%2E"),
        (" ", "brokk.t.%20"),
        ("room 1", "brokk.t.room%201"),
        ("*", "brokk.t.%2A"),
        (">", "brokk.t.%3E"),
        ("a*b>c", "brokk.t.a%2Ab%3Ec"),
        ("%", "brokk.t.%25"),
        ("%2E", "brokk.t.%252E"),
        ("100%/done", "brokk.t.100%25.done"),
        ("tab\there", "brokk.t.tab%09here"),
        ("line\r\n", "brokk.t.line%0D%0A"),
        ("del\u{7f}", "brokk.t.del%7F"),
        ("nel\u{85}", "brokk.t.nel%C2%85"),
        ("nbsp\u{a0}x", "brokk.t.nbsp%C2%A0x"),
        (
            "ideographic\u{3000}space",
            "brokk.t.ideographic%E3%80%80space",
        ),
        ("é/日本", "brokk.t.é.日本"),
        ("emoji/😀", "brokk.t.emoji.😀"),
        ("a:b@c=d", "brokk.t.a:b@c=d"),
        ("a/$b", "brokk.t.a.$b"),
        ("$SYS/broker/uptime", "brokk.s.$SYS.broker.uptime"),
        (
            "$events/client/connected",
            "brokk.s.$events.client.connected",
        ),
        ("$", "brokk.s.$"),
        ("$/a", "brokk.s.$.a"),
        ("$a.b/", "brokk.s.$a%2Eb.%"),
        ("$share/g/x", "brokk.s.$share.g.x"),
    ];

    #[test]
    fn topics_map_to_the_documented_subjects_and_back() {
        let map = map();
        for &(topic, subject) in TOPICS {
            assert_eq!(map.topic_to_subject(topic), subject, "topic {topic:?}");
            assert_eq!(
                map.subject_to_topic(subject).as_deref(),
                Some(topic),
                "subject {subject:?}"
            );
            assert!(is_valid_nats_subject(subject, false), "{subject:?}");
            assert!(
                subject.len() <= map.max_subject_len(topic.len()),
                "{subject:?}"
            );
        }
    }

    #[test]
    fn write_subject_appends_to_the_callers_buffer() {
        let map = map();
        let mut out = String::from("x ");
        map.write_subject("a/b", &mut out);
        assert_eq!(out, "x brokk.t.a.b");
    }

    #[test]
    fn dollar_topics_never_make_a_dollar_subject() {
        let map = map();
        for topic in ["$SYS/x", "$JS/API", "$KV/bucket/key", "$"] {
            let subject = map.topic_to_subject(topic);
            assert!(subject.starts_with("brokk.s.$"), "{subject:?}");
            assert_eq!(map.subject_to_topic(&subject).as_deref(), Some(topic));
        }
    }

    #[test]
    fn subjects_that_no_topic_maps_to_are_refused() {
        let map = map();
        for subject in [
            "",
            "brokk",
            "brokk.t",
            "brokk.t.",
            "brokk.t..a",
            "brokkx.t.a",
            "other.t.a",
            "$JS.API.INFO",
            "brokk.x.a",
            "brokk.ts.a",
            "brokk.t.*",
            "brokk.t.>",
            "brokk.t.a.*",
            "brokk.t.%",        // the empty topic
            "brokk.t.%61",      // `a` needs no escape
            "brokk.t.a%2eb",    // lowercase hex
            "brokk.t.a%2",      // truncated escape
            "brokk.t.a%G0",     // not hex
            "brokk.t.%FF",      // not UTF-8
            "brokk.t.%00",      // U+0000 [MQTT-1.5.4-2]
            "brokk.t.a%2Fb",    // a `/` inside a level
            "brokk.t.a/b",      // ditto, unescaped
            "brokk.t.a+",       // wildcard in a topic name [MQTT-3.3.2-2]
            "brokk.t.#",        // ditto
            "brokk.t.a b",      // whitespace
            "brokk.t.$SYS.x",   // a `$` topic in the ordinary space
            "brokk.s.SYS.x",    // an ordinary topic in the `$` space
            "brokk.s.%24SYS.x", // `$` needs no escape
            "brokk.t.%%",
        ] {
            assert_eq!(map.subject_to_topic(subject), None, "{subject:?}");
        }
    }

    #[test]
    fn topics_longer_than_an_mqtt_string_are_refused_on_the_way_back() {
        let map = map();
        let at_limit = "a".repeat(MAX_MQTT_STRING);
        let subject = map.topic_to_subject(&at_limit);
        assert_eq!(map.subject_to_topic(&subject), Some(at_limit));
        let over = "a".repeat(MAX_MQTT_STRING + 1);
        assert_eq!(map.subject_to_topic(&map.topic_to_subject(&over)), None);
    }

    #[test]
    fn the_prefix_must_be_literal_ascii_tokens() {
        for ok in ["brokk", "mqtt", "brokk.prod-eu", "a_b.C9"] {
            assert_eq!(
                SubjectMap::new(ok).map(|m| m.prefix().to_owned()),
                Ok(ok.into())
            );
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "$JS", "a.$b", "a b", "a.*", "a.>", "é", "a/b",
        ] {
            let err = SubjectMap::new(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")) || bad.is_empty(), "{err}");
            assert!(err.contains("expected"), "{err}");
        }
    }

    #[test]
    fn another_prefix_is_another_namespace() {
        let (a, b) = (
            SubjectMap::new("brokk.a").expect("a valid literal prefix"),
            SubjectMap::new("brokk.b").expect("a valid literal prefix"),
        );
        let subject = a.topic_to_subject("x/y");
        assert_eq!(subject, "brokk.a.t.x.y");
        assert_eq!(b.subject_to_topic(&subject), None);
        assert!(!b
            .filter_to_subjects("#")
            .iter()
            .any(|p| nats_matches(p, &subject)));
    }

    // ---- Filters -----------------------------------------------------------------

    #[test]
    fn filters_map_to_the_documented_subjects() {
        let map = map();
        let table: &[(&str, &[&str])] = &[
            ("a/b", &["brokk.t.a.b"]),
            ("a/+", &["brokk.t.a.*"]),
            ("a/+/c", &["brokk.t.a.*.c"]),
            ("+", &["brokk.t.*"]),
            ("+/+", &["brokk.t.*.*"]),
            ("#", &["brokk.t.>"]),
            ("a/#", &["brokk.t.a.>", "brokk.t.a"]),
            ("+/#", &["brokk.t.*.>", "brokk.t.*"]),
            ("/#", &["brokk.t.%.>", "brokk.t.%"]),
            ("a//#", &["brokk.t.a.%.>", "brokk.t.a.%"]),
            ("a.b/+", &["brokk.t.a%2Eb.*"]),
            ("*/>", &["brokk.t.%2A.%3E"]),
            ("$SYS/#", &["brokk.s.$SYS.>", "brokk.s.$SYS"]),
            ("$SYS/+/x", &["brokk.s.$SYS.*.x"]),
            ("$share/g/a/#", &["brokk.t.a.>", "brokk.t.a"]),
            ("$share/g/$SYS/+", &["brokk.s.$SYS.*"]),
        ];
        for &(filter, subjects) in table {
            let got = map.filter_to_subjects(filter);
            assert_eq!(got, subjects, "filter {filter:?}");
            for s in &got {
                assert!(is_valid_nats_subject(s, true), "{s:?}");
                assert!(s.len() <= map.max_subject_len(filter.len()), "{s:?}");
            }
        }
    }

    #[test]
    fn invalid_filters_map_to_no_subject_mqtt_4_7_1_1() {
        let map = map();
        for filter in [
            "",
            "a/#/b",
            "#/a",
            "a#",
            "a/b#",
            "a+",
            "a/+b",
            "++",
            "##",
            "a\0",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/g+/a",
            "$share/#/a",
        ] {
            assert_eq!(
                map.filter_to_subjects(filter),
                Vec::<String>::new(),
                "{filter:?}"
            );
        }
    }

    #[test]
    fn hash_matches_the_parent_level_mqtt_4_7_1_2() {
        let map = map();
        // The specification's own example, non-normative comment of 4.7.1.2.
        for topic in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(
                nats_agrees(&map, "sport/tennis/player1/#", topic),
                "{topic}"
            );
        }
        assert!(nats_agrees(&map, "sport/#", "sport"));
        assert!(nats_agrees(&map, "sport/#", "sport/"));
        assert!(!nats_agrees(&map, "sport/#", "sports"));
        assert!(!nats_agrees(&map, "sport/tennis/#", "sport"));
        assert!(nats_agrees(&map, "#", "sport"));
        assert!(nats_agrees(&map, "#", "/"));
    }

    #[test]
    fn plus_matches_one_level_even_an_empty_one_mqtt_4_7_1_3() {
        let map = map();
        assert!(nats_agrees(&map, "sport/tennis/+", "sport/tennis/player1"));
        assert!(!nats_agrees(
            &map,
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(!nats_agrees(&map, "sport/+", "sport"));
        assert!(nats_agrees(&map, "sport/+", "sport/"));
        assert!(nats_agrees(&map, "+/+", "/finance"));
        assert!(nats_agrees(&map, "/+", "/finance"));
        assert!(!nats_agrees(&map, "+", "/finance"));
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics_mqtt_4_7_2_1() {
        let map = map();
        assert!(!nats_agrees(&map, "#", "$SYS/monitor/Clients"));
        assert!(!nats_agrees(
            &map,
            "+/monitor/Clients",
            "$SYS/monitor/Clients"
        ));
        assert!(!nats_agrees(&map, "+", "$"));
        assert!(nats_agrees(&map, "$SYS/#", "$SYS/monitor/Clients"));
        assert!(nats_agrees(&map, "$SYS/#", "$SYS"));
        assert!(nats_agrees(&map, "$SYS/monitor/+", "$SYS/monitor/Clients"));
        // `$` later in a topic is an ordinary character.
        assert!(nats_agrees(&map, "+/$x", "a/$x"));
        assert!(nats_agrees(&map, "#", "a/$x"));
    }

    #[test]
    fn literal_wildcard_characters_in_topics_match_only_themselves() {
        let map = map();
        assert!(nats_agrees(&map, "a/*", "a/*"));
        assert!(!nats_agrees(&map, "a/*", "a/b"));
        assert!(!nats_agrees(&map, "a/>", "a/b/c"));
        assert!(!nats_agrees(&map, "a.b", "a/b"));
        assert!(!nats_agrees(&map, "a/b", "a.b"));
    }

    /// Every pair of topic and filter over a small alphabet of levels, exhaustively.
    #[test]
    fn matching_agrees_with_mqtt_on_every_small_topic_and_filter() {
        let map = map();
        let levels = ["", "a", "b", "$", "$a", "*", ".", "%2E"];
        let mut topics = Vec::new();
        let mut paths: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..3 {
            paths = paths
                .iter()
                .flat_map(|p| levels.iter().map(move |l| [p.as_slice(), &[*l]].concat()))
                .collect();
            topics.extend(paths.iter().map(|p| p.join("/")).filter(|t| !t.is_empty()));
        }
        let mut filters = vec!["#".to_owned()];
        let mut paths: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..3 {
            paths = paths
                .iter()
                .flat_map(|p| {
                    levels
                        .iter()
                        .chain(&["+"])
                        .map(move |l| [p.as_slice(), &[*l]].concat())
                })
                .collect();
            for p in &paths {
                if p != &[""] {
                    filters.push(p.join("/"));
                }
                filters.push(format!("{}/#", p.join("/")));
            }
        }
        let subjects: Vec<String> = topics.iter().map(|t| map.topic_to_subject(t)).collect();
        let mut matched = 0usize;
        for filter in &filters {
            let patterns = map.filter_to_subjects(filter);
            assert!(!patterns.is_empty(), "{filter:?}");
            for (topic, subject) in topics.iter().zip(&subjects) {
                let nats = patterns.iter().any(|p| nats_matches(p, subject));
                assert_eq!(mqtt_matches(filter, topic), nats, "{filter:?} vs {topic:?}");
                matched += usize::from(nats);
            }
        }
        // Guard against a vacuous pass (say, nothing matching anything).
        assert!(matched > 10_000, "{matched}");
    }

    // ---- Shared subscriptions ----------------------------------------------------

    #[test]
    fn shared_queue_groups_name_group_and_filter() {
        let map = map();
        assert_eq!(map.shared_queue_group("g1", "sport/+"), "g1_sport%2F%2B");
        assert_eq!(map.shared_queue_group("g1", "sport/#"), "g1_sport%2F%23");
        assert_eq!(map.shared_queue_group("a_b", "c"), "a%5Fb_c");
        assert_eq!(map.shared_queue_group("a", "b_c"), "a_b%5Fc");
        assert_eq!(
            map.shared_queue_group("grüppe 1", "$SYS/x.y"),
            "gr%C3%BCppe%201_%24SYS%2Fx%2Ey"
        );
    }

    // ---- Properties ----------------------------------------------------------------

    /// Level contents from an alphabet of the characters the scheme cares about.
    const ATOMS: &[&str] = &[
        "a", "b", ".", " ", "*", ">", "%", "%2E", "%%", "$", "_", "-", "é", "日本", "\t", "\u{85}",
        "\u{a0}", "\u{3000}", "😀",
    ];

    fn level() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(ATOMS), 0..4).prop_map(|atoms| atoms.concat())
    }

    /// 1 to 5 levels (some empty), a quarter of them `$` topics.
    fn topic_levels() -> impl Strategy<Value = Vec<String>> {
        (
            prop::collection::vec(level(), 1..6),
            prop::bool::weighted(0.25),
        )
            .prop_map(|(mut levels, dollar)| {
                if dollar {
                    levels[0].insert(0, '$');
                }
                levels
            })
            .prop_filter("a topic name is never empty", |levels| levels != &[""])
    }

    fn topic() -> impl Strategy<Value = String> {
        topic_levels().prop_map(|levels| levels.join("/"))
    }

    /// A filter drawn independently of any topic.
    fn filter() -> impl Strategy<Value = String> {
        let level = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
        (
            prop::collection::vec(level, 0..5),
            any::<bool>(),
            prop::bool::weighted(0.25),
        )
            .prop_map(|(mut levels, hash, dollar)| {
                if dollar && levels.first().is_some_and(|l| l != "+") {
                    levels[0].insert(0, '$');
                }
                if hash || levels.is_empty() {
                    levels.push("#".to_owned());
                }
                levels.join("/")
            })
            .prop_filter("a filter is never empty", |filter| !filter.is_empty())
    }

    /// A topic and a filter made from it by replacing levels with `+` or other levels
    /// and cutting it off with `#`: pairs that match about half the time.
    fn topic_and_related_filter() -> impl Strategy<Value = (String, String)> {
        (
            topic_levels(),
            prop::collection::vec(0u8..5, 6),
            level(),
            prop::option::weighted(0.4, 0usize..7),
        )
            .prop_map(|(levels, edits, other, cut)| {
                let mut filter: Vec<String> = levels
                    .iter()
                    .zip(edits)
                    .map(|(level, edit)| match edit {
                        0 => "+".to_owned(),
                        1 => other.clone(),
                        _ => level.clone(),
                    })
                    .collect();
                if let Some(cut) = cut {
                    filter.truncate(cut);
                    filter.push("#".to_owned());
                }
                (levels.join("/"), filter.join("/"))
            })
            .prop_filter("a filter is never empty", |(_, filter)| !filter.is_empty())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn topics_round_trip_through_valid_literal_subjects(topic in topic()) {
            let map = map();
            let subject = map.topic_to_subject(&topic);
            prop_assert!(is_valid_nats_subject(&subject, false), "{:?}", subject);
            prop_assert!(subject.len() <= map.max_subject_len(topic.len()));
            prop_assert_eq!(map.subject_to_topic(&subject), Some(topic));
        }

        #[test]
        fn only_canonical_subjects_map_back(tail in "[a-z.%*>$ 0-9A-F/+#]{0,12}") {
            let map = map();
            for space in ["t", "s"] {
                let subject = format!("brokk.{space}.{tail}");
                if let Some(topic) = map.subject_to_topic(&subject) {
                    prop_assert_eq!(map.topic_to_subject(&topic), subject);
                }
            }
        }

        #[test]
        fn filters_map_to_valid_subjects_with_a_parent_only_for_hash(filter in filter()) {
            let map = map();
            let subjects = map.filter_to_subjects(&filter);
            let expected = if filter.ends_with("/#") { 2 } else { 1 };
            prop_assert_eq!(subjects.len(), expected);
            for s in &subjects {
                prop_assert!(is_valid_nats_subject(s, true), "{:?}", s);
                prop_assert!(s.len() <= map.max_subject_len(filter.len()));
            }
        }

        #[test]
        fn matching_agrees_with_mqtt_for_unrelated_pairs(topic in topic(), filter in filter()) {
            prop_assert_eq!(nats_agrees(&map(), &filter, &topic), mqtt_matches(&filter, &topic));
        }

        #[test]
        fn matching_agrees_with_mqtt_for_related_pairs(
            (topic, filter) in topic_and_related_filter()
        ) {
            prop_assert_eq!(nats_agrees(&map(), &filter, &topic), mqtt_matches(&filter, &topic));
        }

        #[test]
        fn shared_queue_groups_are_distinct_single_tokens(
            a in (level(), filter()),
            b in (level(), filter()),
        ) {
            let map = map();
            let (name_a, name_b) = (map.shared_queue_group(&a.0, &a.1), map.shared_queue_group(&b.0, &b.1));
            prop_assert!(name_a.bytes().all(|c| c.is_ascii_alphanumeric() || b"-%_".contains(&c)));
            prop_assert_eq!(a == b, name_a == name_b);
        }
    }
}
