//! Does a granted topic filter cover a requested one?

use mqtt_proto::split_levels;

/// Does the granted filter cover every topic the requested filter can match?
///
/// This is what allows a SUBSCRIBE: `requested` may only reach topics `granted`
/// reaches. Level by level:
///
/// - `#` in `granted` covers the rest, the parent level included (`a/#` covers `a`,
///   `a/+/b` and `a/#`) [MQTT-4.7.1-1];
/// - `#` in `requested` where `granted` has anything else is not covered (`a/+`
///   does not cover `a/#`, which also matches `a` and `a/b/c`);
/// - `+` in `granted` covers `+` or any literal level [MQTT-4.7.1-2]; `+/#` covers
///   `#` (no topic has zero levels, so they match the same topics);
/// - a literal in `granted` covers only the same literal, not `+`;
/// - a filter starting with a wildcard matches no topic starting with `$`
///   [MQTT-4.7.2-1], so `#` does not cover `$SYS/x`, while it does cover `+/x`.
///
/// Both arguments are filters without a `$share/{name}/` prefix (see
/// [`strip_share_prefix`]). An invalid filter (empty, or `+`/`#` not a whole
/// level, or `#` not last) covers and is covered by nothing. No allocation.
pub fn filter_covers(granted: &[u8], requested: &[u8]) -> bool {
    if !valid_filter(granted) || !valid_filter(requested) {
        return false;
    }
    // [MQTT-4.7.2-1]: a leading wildcard in `granted` reaches no `$` topic, and a
    // `requested` filter starting with `$` reaches only `$` topics.
    if matches!(granted.first(), Some(b'+' | b'#')) && requested.first() == Some(&b'$') {
        return false;
    }
    // A topic has at least one level, so `#`'s parent match is empty at the top
    // level and `+/#` matches exactly what `#` matches.
    let granted: &[u8] = if granted == b"+/#" { b"#" } else { granted };
    let mut g = split_levels(granted);
    let mut r = split_levels(requested);
    loop {
        match (g.next(), r.next()) {
            (Some(b"#"), _) => return true,
            (_, Some(b"#")) => return false,
            (Some(b"+"), Some(_)) => {}
            (Some(gl), Some(rl)) => {
                if gl != rl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The filter a subscription is judged on: `$share/{ShareName}/{filter}` gives
/// `{filter}` [MQTT-4.8.2-1]; anything else (including a malformed `$share/name`
/// without a filter, which the decoder refuses anyway) is returned unchanged.
pub fn strip_share_prefix(filter: &[u8]) -> &[u8] {
    if let Some(rest) = filter.strip_prefix(b"$share/") {
        if let Some(slash) = rest.iter().position(|&b| b == b'/') {
            return &rest[slash + 1..];
        }
    }
    filter
}

/// Non-empty, `+` and `#` only as whole levels, `#` only last [MQTT-4.7.1-1]
/// [MQTT-4.7.1-2] [MQTT-4.7.3-1].
pub(crate) fn valid_filter(filter: &[u8]) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = split_levels(filter).peekable();
    while let Some(level) = levels.next() {
        match level {
            b"#" => return levels.peek().is_none(),
            b"+" => {}
            _ if level.iter().any(|&b| b == b'+' || b == b'#') => return false,
            _ => {}
        }
    }
    true
}

/// A valid topic name: non-empty, no wildcard [MQTT-4.7.3-1] [MQTT-3.3.2-2].
pub(crate) fn valid_topic(topic: &[u8]) -> bool {
    !topic.is_empty() && !topic.iter().any(|&b| b == b'+' || b == b'#')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::filter_matches;
    use proptest::prelude::*;

    #[test]
    fn coverage_table() {
        let table: &[(&str, &str, bool)] = &[
            // exact
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a", false),
            ("a/b", "a/b/c", false),
            ("a/b", "a/+", false),
            ("a/b", "a/#", false),
            ("a//b", "a//b", true),
            ("a//b", "a/+/b", false),
            // '+'
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("a/+", "a//", false),
            ("a/+/c", "a/+/c", true),
            ("a/+/c", "a/b/+", false),
            ("+", "a", true),
            ("+", "+", true),
            ("+", "#", false),
            ("+/+", "a/+", true),
            // '#'
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "a/+/b", true),
            ("a/#", "a/#", true),
            ("a/#", "a/+/#", true),
            ("a/#", "b/#", false),
            ("a/#", "+/#", false),
            ("a/#", "#", false),
            ("a/b/#", "a/#", false),
            ("a/+/#", "a", false),
            ("a/+/#", "a/b", true),
            ("+/#", "+", true),
            ("+/#", "#", true),
            ("+/+/#", "#", false),
            ("a/+/#", "a/#", false),
            ("#", "#", true),
            ("#", "a/b/c", true),
            ("#", "+/+", true),
            // '$' topics [MQTT-4.7.2-1]
            ("#", "$SYS/x", false),
            ("#", "$SYS/#", false),
            ("+/x", "$SYS/x", false),
            ("+/#", "$SYS", false),
            ("$SYS/#", "$SYS/broker/load", true),
            ("$SYS/#", "$SYS/#", true),
            ("$SYS/#", "+/#", false),
            ("$SYS/+", "$SYS/uptime", true),
            ("$SYS", "$SYS", true),
            ("a/#", "a/$x", true),
            // invalid filters cover and are covered by nothing
            ("a/#/b", "a/x/b", false),
            ("a", "", false),
            ("", "a", false),
            ("#", "a#", false),
            ("a+", "a+", false),
        ];
        for &(granted, requested, expected) in table {
            assert_eq!(
                filter_covers(granted.as_bytes(), requested.as_bytes()),
                expected,
                "filter_covers({granted:?}, {requested:?})"
            );
        }
    }

    #[test]
    fn share_prefix_is_stripped() {
        assert_eq!(strip_share_prefix(b"$share/g/a/b"), b"a/b");
        assert_eq!(strip_share_prefix(b"$share/g/#"), b"#");
        assert_eq!(strip_share_prefix(b"$share/g"), b"$share/g");
        assert_eq!(strip_share_prefix(b"a/b"), b"a/b");
        assert_eq!(strip_share_prefix(b"$SYS/x"), b"$SYS/x");
    }

    fn filter_from(levels: &[&'static str]) -> Option<String> {
        let text = levels.join("/");
        valid_filter(text.as_bytes()).then_some(text)
    }

    fn all_sequences(alphabet: &[&'static str], max_len: usize) -> Vec<Vec<&'static str>> {
        let mut out: Vec<Vec<&'static str>> = vec![];
        let mut layer: Vec<Vec<&'static str>> = vec![vec![]];
        for _ in 0..max_len {
            layer = layer
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |l| {
                        let mut v = prefix.clone();
                        v.push(l);
                        v
                    })
                })
                .collect();
            out.extend(layer.iter().cloned());
        }
        out
    }

    /// Over a small universe, `filter_covers` is exactly "every topic the requested
    /// filter matches, the granted one matches too" (sound and complete): 'b' is a
    /// level no filter names, and topics are one level longer than any filter.
    #[test]
    fn coverage_is_exact_over_a_small_universe() {
        let filters: Vec<String> = all_sequences(&["a", "$s", "+", "#"], 3)
            .iter()
            .filter_map(|levels| filter_from(levels))
            .collect();
        let topics: Vec<String> = all_sequences(&["a", "b", "$s"], 4)
            .iter()
            .map(|levels| levels.join("/"))
            .collect();
        for g in &filters {
            for r in &filters {
                let semantic = topics.iter().all(|t| {
                    !filter_matches(r.as_bytes(), t.as_bytes())
                        || filter_matches(g.as_bytes(), t.as_bytes())
                });
                assert_eq!(
                    filter_covers(g.as_bytes(), r.as_bytes()),
                    semantic,
                    "filter_covers({g:?}, {r:?})"
                );
            }
        }
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof!["a", "b", "\\$s", "", "\\+"], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("empty filter", |(mut levels, hash)| {
                if hash {
                    levels.push("#".into());
                }
                let filter = levels.join("/");
                (!filter.is_empty()).then_some(filter)
            })
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof!["a", "b", "c", "\\$s", ""], 1..6)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("empty topic", |t| !t.is_empty())
    }

    /// A topic `filter` matches: its wildcards filled with levels of `fill` ('#'
    /// takes all the rest of them, possibly none).
    fn instantiate(filter: &str, fill: &str) -> String {
        let mut fill = fill.split('/');
        let mut levels = Vec::new();
        for level in filter.split('/') {
            match level {
                "+" => levels.push(fill.next().unwrap_or("a")),
                "#" => levels.extend(fill.by_ref()),
                _ => levels.push(level),
            }
        }
        if levels.is_empty() {
            levels.push("a");
        }
        let topic = levels.join("/");
        debug_assert!(
            filter_matches(filter.as_bytes(), topic.as_bytes()) || topic.starts_with('$')
        );
        topic
    }

    proptest! {
        #[test]
        fn covered_filters_match_only_topics_the_grant_matches(
            granted in filter_strategy(),
            requested in filter_strategy(),
            topics in proptest::collection::vec(topic_strategy(), 1..32),
        ) {
            if filter_covers(granted.as_bytes(), requested.as_bytes()) {
                // Random topics, and topics made from `requested` itself so that it
                // matches them often.
                let made: Vec<String> = topics.iter().map(|t| instantiate(&requested, t)).collect();
                for t in topics.iter().chain(&made) {
                    prop_assert!(
                        !filter_matches(requested.as_bytes(), t.as_bytes())
                            || filter_matches(granted.as_bytes(), t.as_bytes()),
                        "{granted} covers {requested} but {t} escapes"
                    );
                }
            }
        }

        #[test]
        fn a_filter_covers_itself_and_every_topic_it_matches(
            filter in filter_strategy(),
            topic in topic_strategy(),
        ) {
            prop_assert!(filter_covers(filter.as_bytes(), filter.as_bytes()));
            prop_assert_eq!(
                filter_covers(filter.as_bytes(), topic.as_bytes()),
                filter_matches(filter.as_bytes(), topic.as_bytes())
            );
        }
    }
}
