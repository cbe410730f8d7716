//! Authorization by permission bindings (Event Grid's client groups, topic spaces
//! and bindings; see [`crate::authz`]): each session holds its client's grants,
//! expanded once when it connects (and again when the policy or its attributes
//! change), and every PUBLISH, will and SUBSCRIBE is decided against them without
//! allocating.
//!
//! A reload ([`Broker::set_authorization`]) re-evaluates every session whose
//! client is known (connected since the broker started): a subscription the new
//! policy no longer allows is removed. The connection stays: MQTT has no way to
//! tell a client one of its subscriptions ended, but dropping the connection would
//! punish what the client is still allowed to do; its next SUBSCRIBE to the same
//! filter is refused with 0x87 / 0x80, and its publishes are decided by the new
//! grants. Sessions restored from the store whose client has not connected since
//! keep their subscriptions (their attributes are not stored) until it connects.

use std::sync::Arc;

use super::*;
use crate::authz::{Grants, Mode, Policy};
use crate::hooks::Attributes;
use crate::session::Authorized;

impl Broker {
    /// Authorizes by `policy` from now on (`None`, or a policy in open mode:
    /// everything is allowed, today's behaviour). Every known session's grants are
    /// expanded anew and its subscriptions the policy no longer allows are removed;
    /// returns how many were.
    pub fn set_authorization(&mut self, now: Now, policy: Option<Arc<Policy>>) -> usize {
        self.authz = policy.filter(|p| p.mode == Mode::Bindings);
        let known: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.identified)
            .map(|(sk, _)| sk)
            .collect();
        let mut removed = 0;
        for sk in known {
            removed += self.reauthorize_session(now, sk);
        }
        removed
    }

    /// The grants of a client, when a policy with bindings is in force.
    pub(super) fn grants_for(
        &self,
        name: Option<&str>,
        attributes: Option<&Attributes>,
    ) -> Option<Box<Authorized>> {
        self.authz
            .as_ref()
            .map(|p| Box::new(Authorized::new(p.grants(name, attributes))))
    }

    /// Whether the session may publish to `topic`: not a reserved topic, allowed
    /// by the bindings (always, without a policy) and by the authorization hook.
    /// The one decision for a PUBLISH, a retained message and
    /// [`Broker::may_publish`].
    pub(super) fn session_may_publish(
        &mut self,
        sk: SessionKey,
        topic: &TopicName,
        retain: bool,
    ) -> bool {
        if reserved_topic(topic) || !self.publish_granted(sk, topic.as_bytes()) {
            return false;
        }
        // The default hook allows everything: skip building its arguments (the
        // client id's UTF-8 check) on the hot path.
        if self.authorizer_is_default {
            return true;
        }
        let Some(s) = self.sessions.get(sk) else {
            return false;
        };
        self.authorizer.may_publish(
            ClientInfo {
                client_id: s.client_id.as_str(),
                authentication_name: s.auth_name.as_deref(),
                attributes: s.attributes.as_deref(),
            },
            topic,
            retain,
        )
    }

    /// Whether a will on `topic` is allowed by the rules of [`Self::session_may_publish`]
    /// that come before the hook, for a client whose session is not bound yet
    /// (`grants`: its grants under the policy in force).
    pub(super) fn will_granted(&self, grants: Option<&Authorized>, topic: &TopicName) -> bool {
        !reserved_topic(topic)
            && (self.authz.is_none()
                || grants.is_some_and(|a| a.grants.publish(topic.as_bytes()).is_some()))
    }

    /// Whether the session may publish to `topic` by the bindings (always, without
    /// a policy).
    fn publish_granted(&mut self, sk: SessionKey, topic: &[u8]) -> bool {
        self.authz.is_none()
            || self
                .sessions
                .get_mut(sk)
                .and_then(|s| s.grants.as_deref_mut())
                .is_some_and(|a| a.may_publish(topic))
    }

    /// Whether the session may subscribe to `filter` (a `$share/` prefix is
    /// judged on its filter).
    pub(super) fn subscribe_granted(&self, sk: SessionKey, filter: &TopicFilter) -> bool {
        self.authz.is_none()
            || granted(self.sessions.get(sk), |g| {
                g.subscribe(filter.match_filter()).is_some()
            })
    }

    /// Expands the session's grants anew from its client's name and attributes and
    /// removes the subscriptions they no longer allow; returns how many.
    pub(super) fn reauthorize_session(&mut self, now: Now, sk: SessionKey) -> usize {
        let Some(s) = self.sessions.get(sk) else {
            return 0;
        };
        let grants = self.grants_for(s.auth_name.as_deref(), s.attributes.as_deref());
        let denied: Vec<TopicFilter> = match &grants {
            None => Vec::new(),
            Some(a) => s
                .subscriptions
                .iter()
                .filter(|x| a.grants.subscribe(x.filter.match_filter()).is_none())
                .map(|x| x.filter.clone())
                .collect(),
        };
        let Some(s) = self.sessions.get_mut(sk) else {
            return 0;
        };
        s.grants = grants;
        for filter in &denied {
            let removed = self
                .sessions
                .get_mut(sk)
                .is_some_and(|s| s.subscriptions.remove(filter));
            if removed {
                self.route_unsubscribe(filter, sk);
            }
        }
        if !denied.is_empty() {
            self.stats.subscriptions_revoked += denied.len() as u64;
            self.store_session(now, sk);
        }
        denied.len()
    }
}

/// A session's grants allow it (a session without grants under a policy is one
/// whose client is not known yet: nothing is allowed).
fn granted(s: Option<&Session>, allows: impl Fn(&Grants) -> bool) -> bool {
    s.and_then(|s| s.grants.as_deref())
        .is_some_and(|a| allows(&a.grants))
}

impl Broker {
    /// Whether the connected client with this client id may publish to `topic`
    /// (the reserved `$events/` topics, the permission bindings and the
    /// authorization hook, as its PUBLISH would be decided). For a publisher that
    /// must know before a QoS 0 message, which MQTT never acknowledges (publish
    /// over HTTP answers 403). `false` for a client id with no session.
    pub fn may_publish(&mut self, client_id: &[u8], topic: &TopicName, retain: bool) -> bool {
        match self.by_client_id.get(&self.sessions, client_id) {
            Some(sk) => self.session_may_publish(sk, topic, retain),
            None => false,
        }
    }
}

/// Topics only the broker publishes to: its lifecycle events (`$events/...`). A
/// client's PUBLISH or will there is refused as not authorized, so subscribers can
/// trust what arrives on them.
fn reserved_topic(topic: &TopicName) -> bool {
    topic.as_bytes().starts_with(b"$events/")
}
