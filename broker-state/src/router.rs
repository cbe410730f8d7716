//! The route table: topic filter -> subscribers, as a trie over topic levels.
//!
//! Matching walks the levels of a topic name once, following exact children, `+`
//! children and collecting `#` subscribers on the way [MQTT-4.7.1]. Results go into a
//! caller-owned scratch vector, so a publish in steady state allocates nothing.

use bytes::Bytes;
use core::num::NonZeroU32;
use mqtt_proto::{split_levels, SubscriptionOptions, TopicFilter};

use crate::hash::{Map, SeededState};
use crate::ids::SessionKey;

/// One subscription as the router stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubEntry {
    pub(crate) session: SessionKey,
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<NonZeroU32>,
}

/// A matching subscription, before per-session merging.
#[derive(Debug, Clone)]
pub(crate) struct Match {
    pub(crate) entry: SubEntry,
    /// The `$share/{group}/{filter}` it matched through, if shared: never merged
    /// away, never subject to No Local (which shared subscriptions cannot set
    /// [MQTT-3.8.3-4]).
    pub(crate) shared: Option<TopicFilter>,
}

struct Group {
    name: Bytes,
    /// The whole `$share/{group}/{filter}`.
    filter: TopicFilter,
    members: Vec<SubEntry>,
}

#[derive(Default)]
struct Node {
    parent: u32,
    key: Bytes,
    children: Option<Map<Bytes, u32>>,
    plus: Option<u32>,
    /// Subscribers of `<this node's path>/#`.
    hash: Vec<SubEntry>,
    /// Subscribers of exactly this node's path.
    exact: Vec<SubEntry>,
    /// When `hash` and `exact` last became non-empty (the router's interest
    /// clock): a cluster node takes a message that several of its filters match
    /// through the oldest of them (see [`Router::oldest_match`]).
    hash_since: u64,
    exact_since: u64,
    shared_hash: Vec<Group>,
    shared_exact: Vec<Group>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.as_ref().is_none_or(|c| c.is_empty())
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
            && self.shared_hash.is_empty()
            && self.shared_exact.is_empty()
    }
}

const ROOT: u32 = 0;
const PLUS: &[u8] = b"+";

/// The topic trie.
pub(crate) struct Router {
    nodes: Vec<Node>,
    free: Vec<u32>,
    hasher: SeededState,
    subscriptions: usize,
    /// Counts the times a filter's subscriber list became non-empty.
    interest_clock: u64,
}

/// Picks one member of a shared group (the broker prefers online members, and
/// draws from its seeded rng).
pub(crate) trait Picker {
    fn pick(&mut self, members: &[SubEntry]) -> usize;
}

impl Router {
    pub(crate) fn new(hasher: SeededState) -> Self {
        Router {
            nodes: vec![Node::default()],
            free: Vec::new(),
            hasher,
            subscriptions: 0,
            interest_clock: 0,
        }
    }

    /// Number of subscriptions in the table.
    pub(crate) fn len(&self) -> usize {
        self.subscriptions
    }

    fn alloc(&mut self, parent: u32, key: Bytes) -> u32 {
        let node = Node {
            parent,
            key,
            ..Node::default()
        };
        if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    /// Finds or creates the node for `levels`; the final `#` is not a node.
    fn node_for(&mut self, filter: &Bytes, create: bool) -> Option<(u32, bool)> {
        let mut node = ROOT;
        let mut offset = 0usize;
        let bytes = &filter[..];
        let mut levels = split_levels(bytes).peekable();
        while let Some(level) = levels.next() {
            let start = offset;
            offset += level.len() + 1;
            if level == b"#" && levels.peek().is_none() {
                return Some((node, true));
            }
            let next = if level == PLUS {
                self.nodes[node as usize].plus
            } else {
                self.nodes[node as usize]
                    .children
                    .as_ref()
                    .and_then(|c| c.get(level).copied())
            };
            node = match next {
                Some(n) => n,
                None if create => {
                    let key = filter.slice(start..start + level.len());
                    let child = self.alloc(node, key.clone());
                    let hasher = self.hasher;
                    let n = &mut self.nodes[node as usize];
                    if level == PLUS {
                        n.plus = Some(child);
                    } else {
                        n.children
                            .get_or_insert_with(|| Map::with_hasher(hasher))
                            .insert(key, child);
                    }
                    child
                }
                None => return None,
            };
        }
        Some((node, false))
    }

    /// The node of a filter, if it exists; the final `#` is not a node.
    fn find_node(&self, filter: &[u8]) -> Option<(u32, bool)> {
        let mut node = ROOT;
        let mut levels = split_levels(filter).peekable();
        while let Some(level) = levels.next() {
            if level == b"#" && levels.peek().is_none() {
                return Some((node, true));
            }
            let n = &self.nodes[node as usize];
            node = if level == PLUS {
                n.plus?
            } else {
                *n.children.as_ref()?.get(level)?
            };
        }
        Some((node, false))
    }

    /// The members of a shared subscription group (`$share/{group}/{filter}`).
    pub(crate) fn shared_members(&self, full: &TopicFilter) -> &[SubEntry] {
        let Some((group, filter)) = full.shared() else {
            return &[];
        };
        let Some((node, hash)) = self.find_node(filter.as_bytes()) else {
            return &[];
        };
        let n = &self.nodes[node as usize];
        let groups = if hash {
            &n.shared_hash
        } else {
            &n.shared_exact
        };
        groups
            .iter()
            .find(|g| g.name == group.as_bytes())
            .map_or(&[], |g| &g.members[..])
    }

    /// Adds or replaces `session`'s subscription to `filter` (the part after any
    /// `$share/{group}/`; `full` is the whole filter). Returns whether it replaced
    /// one, and whether it is the first subscription to `full` (interest a cluster
    /// node announces).
    pub(crate) fn subscribe(
        &mut self,
        group: Option<&Bytes>,
        filter: &Bytes,
        full: &TopicFilter,
        entry: SubEntry,
    ) -> (bool, bool) {
        let Some((node, hash)) = self.node_for(filter, true) else {
            return (false, false);
        };
        let n = &mut self.nodes[node as usize];
        let list = match group {
            None => {
                let (list, since) = if hash {
                    (&mut n.hash, &mut n.hash_since)
                } else {
                    (&mut n.exact, &mut n.exact_since)
                };
                if list.is_empty() {
                    self.interest_clock += 1;
                    *since = self.interest_clock;
                }
                list
            }
            Some(name) => {
                let groups = if hash {
                    &mut n.shared_hash
                } else {
                    &mut n.shared_exact
                };
                let i = match groups.iter().position(|g| g.name == name) {
                    Some(i) => i,
                    None => {
                        groups.push(Group {
                            name: name.clone(),
                            filter: full.clone(),
                            members: Vec::new(),
                        });
                        groups.len() - 1
                    }
                };
                &mut groups[i].members
            }
        };
        if let Some(e) = list.iter_mut().find(|e| e.session == entry.session) {
            *e = entry;
            return (true, false);
        }
        list.push(entry);
        self.subscriptions += 1;
        (false, list.len() == 1)
    }

    /// Removes `session`'s subscription to `filter`. Returns whether there was one,
    /// and whether it was the last subscription to that filter (or the shared
    /// group's last member).
    pub(crate) fn unsubscribe(
        &mut self,
        group: Option<&Bytes>,
        filter: &Bytes,
        session: SessionKey,
    ) -> (bool, bool) {
        let Some((node, hash)) = self.node_for(filter, false) else {
            return (false, false);
        };
        let n = &mut self.nodes[node as usize];
        let mut last = false;
        let removed = match group {
            None => {
                let list = if hash { &mut n.hash } else { &mut n.exact };
                let r = remove_entry(list, session);
                last = list.is_empty();
                r
            }
            Some(name) => {
                let groups = if hash {
                    &mut n.shared_hash
                } else {
                    &mut n.shared_exact
                };
                match groups.iter().position(|g| g.name == name) {
                    Some(i) => {
                        let r = remove_entry(&mut groups[i].members, session);
                        if groups[i].members.is_empty() {
                            groups.swap_remove(i);
                            last = true;
                        }
                        r
                    }
                    None => false,
                }
            }
        };
        if removed {
            self.subscriptions -= 1;
            self.prune(node);
        }
        (removed, removed && last)
    }

    /// Frees empty nodes from `node` up towards the root, so the trie's size follows
    /// the live subscriptions.
    fn prune(&mut self, mut node: u32) {
        while node != ROOT && self.nodes[node as usize].is_empty() {
            let parent = self.nodes[node as usize].parent;
            let key = core::mem::take(&mut self.nodes[node as usize].key);
            let p = &mut self.nodes[parent as usize];
            if p.plus == Some(node) {
                p.plus = None;
            } else if let Some(children) = p.children.as_mut() {
                children.remove(&key[..]);
                if children.is_empty() {
                    p.children = None;
                }
            }
            self.nodes[node as usize] = Node::default();
            self.free.push(node);
            node = parent;
        }
    }

    /// When the non-shared subscriptions to `filter` began (their list last
    /// became non-empty), if there are any.
    pub(crate) fn interest_since(&self, filter: &[u8]) -> Option<u64> {
        let (node, hash) = self.find_node(filter)?;
        let n = &self.nodes[node as usize];
        match hash {
            true if !n.hash.is_empty() => Some(n.hash_since),
            false if !n.exact.is_empty() => Some(n.exact_since),
            _ => None,
        }
    }

    /// Of the non-shared filters matching `topic`, when the oldest began (see
    /// [`Router::interest_since`]).
    pub(crate) fn oldest_match(&self, topic: &[u8]) -> Option<u64> {
        let dollar = topic.first() == Some(&b'$');
        let mut oldest = None;
        self.walk_since(ROOT, topic, true, dollar, &mut oldest);
        oldest
    }

    fn walk_since(
        &self,
        node: u32,
        rest: &[u8],
        at_root: bool,
        dollar: bool,
        oldest: &mut Option<u64>,
    ) {
        let older = |list: &[SubEntry], since: u64, oldest: &mut Option<u64>| {
            if !list.is_empty() && oldest.is_none_or(|o| since < o) {
                *oldest = Some(since);
            }
        };
        let n = &self.nodes[node as usize];
        let wild_ok = !(at_root && dollar);
        if wild_ok {
            older(&n.hash, n.hash_since, oldest);
        }
        let (level, tail, at_end) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..], false),
            None => (rest, &[][..], true),
        };
        let step = |child: u32, oldest: &mut Option<u64>| {
            if at_end {
                let c = &self.nodes[child as usize];
                older(&c.exact, c.exact_since, oldest);
                older(&c.hash, c.hash_since, oldest);
            } else {
                self.walk_since(child, tail, false, dollar, oldest);
            }
        };
        if let Some(&child) = n.children.as_ref().and_then(|c| c.get(level)) {
            step(child, oldest);
        }
        if wild_ok {
            if let Some(child) = n.plus {
                step(child, oldest);
            }
        }
    }

    /// Appends every subscription matching `topic` to `out`. Topics starting with `$`
    /// are not matched by a leading wildcard [MQTT-4.7.2-1].
    pub(crate) fn matches(&self, topic: &[u8], picker: &mut dyn Picker, out: &mut Vec<Match>) {
        let dollar = topic.first() == Some(&b'$');
        self.walk(ROOT, topic, true, dollar, picker, out);
    }

    fn walk(
        &self,
        node: u32,
        rest: &[u8],
        at_root: bool,
        dollar: bool,
        picker: &mut dyn Picker,
        out: &mut Vec<Match>,
    ) {
        let n = &self.nodes[node as usize];
        let wild_ok = !(at_root && dollar);
        if wild_ok {
            push_all(&n.hash, &n.shared_hash, picker, out);
        }
        // `rest` is None-like when the topic is exhausted: signalled by at_end.
        let (level, tail, at_end) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..], false),
            None => (rest, &[][..], true),
        };
        let step = |child: u32, picker: &mut dyn Picker, out: &mut Vec<Match>| {
            if at_end {
                let c = &self.nodes[child as usize];
                push_all(&c.exact, &c.shared_exact, picker, out);
                // "a/#" also matches "a" [MQTT-4.7.1-1]
                push_all(&c.hash, &c.shared_hash, picker, out);
            } else {
                self.walk(child, tail, false, dollar, picker, out);
            }
        };
        if let Some(children) = &n.children {
            if let Some(&child) = children.get(level) {
                step(child, picker, out);
            }
        }
        if wild_ok {
            if let Some(child) = n.plus {
                step(child, picker, out);
            }
        }
    }
}

#[inline]
fn push_all(list: &[SubEntry], groups: &[Group], picker: &mut dyn Picker, out: &mut Vec<Match>) {
    // Most nodes on a walk hold no subscribers of the kind asked for.
    if list.is_empty() && groups.is_empty() {
        return;
    }
    out.extend(list.iter().map(|&entry| Match {
        entry,
        shared: None,
    }));
    for g in groups {
        if !g.members.is_empty() {
            let i = picker.pick(&g.members);
            out.push(Match {
                entry: g.members[i],
                shared: Some(g.filter.clone()),
            });
        }
    }
}

fn remove_entry(list: &mut Vec<SubEntry>, session: SessionKey) -> bool {
    match list.iter().position(|e| e.session == session) {
        Some(i) => {
            // Order of subscribers is not observable; swap_remove keeps this O(1).
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Does `filter` (without `$share/` prefix) match `topic`? Used for retained
/// messages, where the filter is the new subscription.
pub fn filter_matches(filter: &[u8], topic: &[u8]) -> bool {
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut f = split_levels(filter);
    let mut t = split_levels(topic);
    loop {
        match (f.next(), t.next()) {
            (Some(b"#"), _) => return true,
            (Some(fl), Some(tl)) => {
                if fl != b"+" && fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}
