//! One node of a cluster (`Config::cluster`): interest announced as the route
//! table changes, messages published here forwarded, and the other nodes'
//! messages, retained messages and session claims taken as input.
//!
//! The core does no I/O: what travels between nodes, and how, is the adapter's
//! (`brokk-cluster` carries it over NATS). A message forwarded from here is
//! delivered here to non-shared subscriptions at once; the other nodes deliver it
//! to theirs when it reaches them. Shared subscriptions are the cluster's: each
//! message goes to one member in the whole cluster, so the transport picks a node
//! (a NATS queue group) and that node picks a member
//! ([`Broker::handle_cluster_publish`] with the group).

use super::*;

impl Broker {
    /// Adds a subscription to the route table, announcing the filter's first
    /// local subscription to the cluster.
    pub(super) fn route_subscribe(
        &mut self,
        group: Option<&Bytes>,
        match_filter: &Bytes,
        filter: &TopicFilter,
        entry: SubEntry,
    ) {
        let (_, first) = self.router.subscribe(group, match_filter, filter, entry);
        if first && self.config.cluster {
            self.events.push_back(Event::Cluster(ClusterOp::Interest {
                filter: owned_filter(filter),
                on: true,
            }));
        }
    }

    /// Removes `sk`'s subscription to `filter` from the route table, withdrawing
    /// the filter's interest from the cluster with its last local subscription.
    pub(super) fn route_unsubscribe(&mut self, filter: &TopicFilter, sk: SessionKey) {
        let (group, match_filter) = split_shared(filter);
        let (_, last) = self.router.unsubscribe(group.as_ref(), &match_filter, sk);
        if last && self.config.cluster {
            self.events.push_back(Event::Cluster(ClusterOp::Interest {
                filter: owned_filter(filter),
                on: false,
            }));
        }
    }

    /// Hands a message accepted on this node to the cluster (when this is a
    /// node of one), if anyone elsewhere wants it: another node announced a
    /// matching non-shared filter (those nodes are named in the forward), a
    /// shared group here or elsewhere matched (`shared_here`: a local one; the
    /// cluster picks the member, maybe here), or it is retained (the retained
    /// store is the cluster's). A QoS 1 or 2 forward is numbered with the store
    /// effects, so that the publisher's acknowledgement waits until the adapter
    /// reports it handed over (see [`ClusterOp::Forward`]).
    pub(super) fn forward(&mut self, p: &Publish, shared_here: bool) {
        if !self.config.cluster {
            return;
        }
        let mut nodes = Vec::new();
        self.remote.direct_nodes(p.topic.as_bytes(), &mut nodes);
        let shared = shared_here || self.remote.wants_shared(p.topic.as_bytes());
        if !p.retain && !shared && nodes.is_empty() {
            self.stats.cluster_not_forwarded += 1;
            return;
        }
        if p.qos != QoS::AtMostOnce {
            self.durability.emitted += 1;
        }
        let mut p = p.clone();
        p.dup = false;
        p.packet_id = None;
        p.properties.topic_alias = None;
        p.properties.subscription_identifiers = Vec::new();
        self.events.push_back(Event::Cluster(ClusterOp::Forward {
            publish: Box::new(p),
            nodes,
            shared,
        }));
    }

    /// A message another node of the cluster accepted and addressed to this
    /// node (one of [`ClusterOp::Forward`]'s `nodes`): one copy per node, so it
    /// is delivered to every matching non-shared subscription here, as if
    /// published here (by nobody: No Local excludes no one). Shared groups
    /// get their messages through [`Broker::handle_cluster_publish`]. The
    /// deliveries' store effects are emitted now: the transport keeps the
    /// message until they are durable (a persistent session's queue holds it
    /// from then on). Returns the deliveries made.
    pub fn handle_cluster_delivery(&mut self, now: Now, p: Publish) -> usize {
        let (p, expires_at) = from_cluster(now, p);
        self.route(now, None, &p, expires_at).matched
    }

    /// A message another node of the cluster accepted, which reached this node
    /// `through` one of the filters it announced ([`ClusterOp::Interest`]).
    ///
    /// Through a non-shared filter, it is delivered to every matching
    /// non-shared subscription here, as if published here (by nobody: No Local
    /// excludes no one). The transport hands a message over once per announced
    /// filter it matches (NATS delivers once per matching subscription), so
    /// only the copy that came through the oldest of them is taken, and the
    /// others are counted as duplicates: the oldest one's subscription on the
    /// transport existed before the newer ones', so while the filters stay,
    /// each message comes through it. A copy through a filter that is no
    /// longer subscribed here is dropped the same way.
    ///
    /// Through a `$share/{group}/{filter}`, the cluster chose this node for
    /// that group: one of its local members gets it (an online one if there is
    /// one); if the group has no member here any more, the message is gone for
    /// that group (the transport delivers shared messages at most once).
    ///
    /// `p.retain` is as published (a subscriber with Retain As Published sees
    /// it); the retained store is not changed here (see
    /// [`Broker::handle_cluster_retained`]). The message expiry interval is
    /// what is left of it. Returns the deliveries made.
    pub fn handle_cluster_publish(&mut self, now: Now, p: Publish, through: &TopicFilter) -> usize {
        let (p, expires_at) = from_cluster(now, p);
        if through.shared().is_none() {
            let taken = self.router.interest_since(through.as_bytes());
            if taken.is_none() || taken != self.router.oldest_match(p.topic.as_bytes()) {
                self.stats.cluster_duplicates += 1;
                return 0;
            }
            return self.route(now, None, &p, expires_at).matched;
        }
        let full = through;
        let members = self.router.shared_members(full);
        if members.is_empty() {
            self.stats.cluster_shared_unmatched += 1;
            return 0;
        }
        let mut picker = OnlinePicker {
            rng: &mut self.rng,
            sessions: &self.sessions,
            exclude: None,
        };
        let entry = members[picker.pick(members)];
        let mut copies = RouteCopies::default();
        let retain = entry.options.retain_as_published && p.retain;
        self.deliver(
            now,
            entry.session,
            &p,
            qos_min(p.qos, entry.options.qos),
            retain,
            entry.id.into_iter().collect(),
            expires_at,
            Some(full.clone()),
            &mut copies,
        );
        copies.release(&mut self.msgs);
        1
    }

    /// A retained message (or, with an empty payload, the clearing of one) from
    /// the cluster's retained store: this node's retained store takes it, and
    /// subscriptions made here from now on see it. Nothing is delivered (the
    /// live message reaches subscribers through
    /// [`Broker::handle_cluster_publish`]). Every node applies every retained
    /// message in the order of the cluster's store, its own included, so all
    /// nodes end with the same one per topic. Returns false if the retained
    /// store's limits refused it.
    pub fn handle_cluster_retained(&mut self, now: Now, mut p: Publish) -> bool {
        p.retain = true;
        let (p, expires_at) = from_cluster(now, p);
        let ok = self.set_retained(now, &p, expires_at);
        if !ok {
            self.stats.retained_refused += 1;
        }
        ok
    }

    /// Node `node` of the cluster (a number the adapter gives each other
    /// node) announced interest in `filter` (`on`), or withdrew it. From then
    /// on a message published here is forwarded only if some node's filter
    /// matches it (or it is retained, or a local shared group matched), and a
    /// forward names the nodes whose non-shared filters match. Announcements
    /// are idempotent: the same filter of the same node on twice counts once.
    pub fn handle_remote_interest(&mut self, node: u32, filter: &TopicFilter, on: bool) {
        self.remote.set(node, filter, on);
    }

    /// Another node of the cluster took the session of `client_id` over: a
    /// client connected there with that identifier. The connection here (if
    /// any) gets DISCONNECT 0x8E Session taken over [MQTT-3.1.4-3] and closes
    /// (its will follows as on a takeover here), and the session leaves this
    /// node: it lives on the other node now, which read it from the cluster's
    /// store. The store keeps it: the changes emitted here up to now (the
    /// disconnection's included) must reach the cluster's store before the
    /// other node reads it, which the transport sees to. Returns whether there
    /// was one.
    pub fn handle_session_claimed(&mut self, now: Now, client_id: &[u8]) -> bool {
        let Some(sk) = self.by_client_id.get(&self.sessions, client_id) else {
            return false;
        };
        self.stats.cluster_takeovers += 1;
        self.release_session(now, sk);
        true
    }

    /// The sessions of a node that left the cluster without letting them go,
    /// which the transport took over for this node (it claimed them and read
    /// them from the cluster's store; `records` in the store's replay order).
    /// They come back here offline, as after a restart: their subscriptions
    /// (announced to the cluster like any subscription here), queued
    /// messages, in-flight state and delayed wills. A local copy of one is
    /// stale (the departed node held it since) and goes first. Their clients
    /// find them here, or on another node that acquires them from this one.
    /// Returns how many sessions came.
    pub fn handle_sessions_adopted(&mut self, now: Now, records: Vec<StoreOp>) -> usize {
        let mut n = 0;
        for op in records {
            if let StoreOp::SessionUpsert(rec) = &op {
                if let Some(sk) = self
                    .by_client_id
                    .get(&self.sessions, rec.client_id.as_bytes())
                {
                    self.release_session(now, sk);
                }
                n += 1;
            }
            self.handle_restore(now, op);
        }
        self.stats.cluster_sessions_adopted += n as u64;
        n
    }

    /// A session leaves this node for another one (or a stale copy of one that
    /// another node held since is dropped): its connection closed as on a
    /// takeover; then it goes without a trace in the store (the cluster's
    /// store keeps it for its new node), without its delayed will (the session
    /// goes on), and without handing its shared messages to other members
    /// (they go with the session).
    pub(super) fn release_session(&mut self, now: Now, sk: SessionKey) {
        if let Some(old) = self.sessions.get(sk).and_then(|s| s.conn) {
            self.close_taken_over(now, old, sk);
        }
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        s.stored = false;
        s.delayed_will = None;
        if let Some(flows) = s.flows.allocated() {
            for q in flows.queue.iter_mut() {
                q.shared = None;
            }
            for f in flows.inflight.iter_mut() {
                f.msg.shared = None;
            }
        }
        // It lives on elsewhere: not ended for the cluster.
        self.end_session_as(now, sk, false);
    }
}

/// A message from the cluster as this node routes or keeps it: no packet id,
/// no DUP, no alias or subscription identifiers (those are per delivery), and
/// the instant its expiry interval ends.
fn from_cluster(now: Now, mut p: Publish) -> (Publish, Option<Instant>) {
    p.dup = false;
    p.packet_id = None;
    p.properties.topic_alias = None;
    p.properties.subscription_identifiers = Vec::new();
    let expires_at = p
        .properties
        .message_expiry_interval
        .map(|secs| now.instant + Duration::from_secs(u64::from(secs)));
    (p, expires_at)
}

/// The filter as an owned value (an interest outlives the packet it came in).
fn owned_filter(filter: &TopicFilter) -> TopicFilter {
    TopicFilter::new(Bytes::copy_from_slice(filter.as_bytes())).unwrap_or_else(|_| filter.clone())
}

/// The filters other nodes announced, in two route tables of their own whose
/// "sessions" are the nodes: their non-shared filters (a publish asks one trie
/// walk which nodes want it), and their shared groups' filter parts (a shared
/// group's messages are wanted wherever its filter matches).
pub(crate) struct RemoteInterest {
    direct: Router,
    shared: Router,
    /// Announced filters (whole, `$share/...` included), by node.
    announced: crate::hash::Map<(u32, Bytes), ()>,
    /// How many of a node's announced shared groups share each filter part.
    parts: crate::hash::Map<(u32, Bytes), u32>,
    scratch: Vec<crate::router::Match>,
}

/// A node as the "session" its filters are held for.
fn node_key(node: u32) -> SessionKey {
    SessionKey::new(node, u32::MAX)
}

/// No shared groups are in the direct table: nothing to pick from.
struct NoPick;

impl crate::router::Picker for NoPick {
    fn pick(&mut self, _members: &[SubEntry]) -> usize {
        0
    }
}

impl RemoteInterest {
    pub(crate) fn new(hasher: crate::hash::SeededState) -> Self {
        RemoteInterest {
            direct: Router::new(hasher),
            shared: Router::new(hasher),
            announced: crate::hash::Map::with_hasher(hasher),
            parts: crate::hash::Map::with_hasher(hasher),
            scratch: Vec::new(),
        }
    }

    fn set(&mut self, node: u32, filter: &TopicFilter, on: bool) {
        let whole = Bytes::copy_from_slice(filter.as_bytes());
        let entry = SubEntry {
            session: node_key(node),
            options: mqtt_proto::SubscriptionOptions::qos(QoS::AtMostOnce),
            id: None,
        };
        let key = (node, whole);
        if on {
            if self.announced.insert(key.clone(), ()).is_some() {
                return;
            }
        } else if self.announced.remove(&key).is_none() {
            return;
        }
        let (group, part) = split_shared(filter);
        let part = Bytes::copy_from_slice(&part);
        if group.is_none() {
            if on {
                self.direct.subscribe(None, &part, filter, entry);
            } else {
                self.direct.unsubscribe(None, &part, entry.session);
            }
            return;
        }
        let key = (node, part.clone());
        if on {
            let n = self.parts.entry(key).or_insert(0);
            *n += 1;
            if *n == 1 {
                if let Ok(f) = TopicFilter::new(part.clone()) {
                    self.shared.subscribe(None, &part, &f, entry);
                }
            }
        } else if let Some(n) = self.parts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.parts.remove(&key);
                self.shared.unsubscribe(None, &part, entry.session);
            }
        }
    }

    /// Appends the nodes with a non-shared filter matching `topic`, each once.
    pub(crate) fn direct_nodes(&mut self, topic: &[u8], out: &mut Vec<u32>) {
        if self.announced.is_empty() {
            return;
        }
        let mut matches = core::mem::take(&mut self.scratch);
        matches.clear();
        self.direct.matches(topic, &mut NoPick, &mut matches);
        for m in &matches {
            let node = m.entry.session.index;
            if !out.contains(&node) {
                out.push(node);
            }
        }
        self.scratch = matches;
    }

    /// Whether some other node has a shared group whose filter matches `topic`.
    pub(crate) fn wants_shared(&self, topic: &[u8]) -> bool {
        !self.parts.is_empty() && self.shared.oldest_match(topic).is_some()
    }
}
