//! Consistency checks over the broker's internal state, for the fuzzer and the model
//! test: they run after every input there, so a state that only goes wrong later
//! (a dangling session key, a queue over its bound, a byte count that drifts) is
//! reported at the input that caused it.

use super::{out_size, Broker};
use crate::session::ConnState;

impl Broker {
    /// Checks that the broker's internal state is consistent; `Err` names the first
    /// broken rule. Not part of the API: for fuzzers and tests, and not cheap (it
    /// walks every connection and session).
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let d = &self.durability;
        if d.done > d.emitted
            || d.held
                .iter()
                .any(|h| h.needs <= d.done || h.needs > d.emitted)
        {
            return Err(format!(
                "store: {} effects emitted, {} done, waiting acknowledgements need {:?}",
                d.emitted,
                d.done,
                d.held.iter().map(|h| h.needs).collect::<Vec<_>>()
            ));
        }
        if d.held
            .iter()
            .zip(d.held.iter().skip(1))
            .any(|(a, b)| a.needs > b.needs)
        {
            return Err("store: waiting acknowledgements out of order".into());
        }
        let burst: usize = self.conns.iter().map(|(_, c)| c.burst as usize).sum();
        if burst != self.outbound_burst {
            return Err(format!(
                "connections count {burst} bytes of output beyond their buffers, the \
                 broker {}",
                self.outbound_burst
            ));
        }
        for (k, c) in self.conns.iter() {
            let id = super::conn_id(k);
            if let ConnState::Active { session } = c.state {
                let Some(s) = self.sessions.get(session) else {
                    return Err(format!("{id} is bound to a session that is gone"));
                };
                if s.conn != Some(id) {
                    return Err(format!(
                        "{id} is bound to session {:?}, which is bound to {:?}",
                        s.client_id, s.conn
                    ));
                }
            }
            c.out
                .check()
                .map_err(|e| format!("{id}: output queue: {e}"))?;
            let held = self.durability.held.iter().filter(|h| h.conn == k).count();
            if held != c.held_acks as usize {
                return Err(format!(
                    "{id} counts {} acknowledgements waiting for the store, {held} wait",
                    c.held_acks
                ));
            }
            let out = c.out.recount(out_size, |m| self.msgs.size(m));
            if out != c.out.bytes() {
                return Err(format!(
                    "{id}: output counts {} bytes but {out} bytes are waiting",
                    c.out.bytes()
                ));
            }
            if !c.out.is_empty() && !c.transmit_signalled {
                return Err(format!(
                    "{id} has output waiting and no Transmit outstanding"
                ));
            }
        }
        let max_queue = self
            .config
            .online_queue
            .messages
            .max(self.config.offline_queue.messages);
        let max_queue_bytes = self
            .config
            .online_queue
            .bytes
            .max(self.config.offline_queue.bytes);
        let mut subscriptions = 0;
        let mut owned = 0;
        for (sk, s) in self.sessions.iter() {
            let name = &s.client_id;
            if self.by_client_id.get(&self.sessions, name.as_bytes()) != Some(sk) {
                return Err(format!("session {name:?} is not indexed by its client id"));
            }
            if let Some(c) = s.conn {
                let bound = self
                    .conns
                    .get(super::key(c))
                    .is_some_and(|conn| conn.session() == Some(sk));
                if !bound {
                    return Err(format!("session {name:?} is bound to {c}, not bound to it"));
                }
                if s.expires_at.is_some() {
                    return Err(format!("online session {name:?} has an expiry deadline"));
                }
            }
            let bytes: usize = s.flows.queue.iter().map(|q| self.msgs.size(q.msg)).sum();
            if bytes != s.flows.queue_bytes {
                return Err(format!(
                    "session {name:?}: queue_bytes {} but {bytes} bytes queued",
                    s.flows.queue_bytes
                ));
            }
            if s.flows.queue.len() > max_queue || s.flows.queue_bytes > max_queue_bytes {
                return Err(format!(
                    "session {name:?}: {} messages / {} bytes queued, over the limits",
                    s.flows.queue.len(),
                    s.flows.queue_bytes
                ));
            }
            for (i, f) in s.flows.inflight.iter().enumerate() {
                if s.flows
                    .inflight
                    .iter()
                    .skip(i + 1)
                    .any(|g| g.packet_id == f.packet_id)
                {
                    return Err(format!(
                        "session {name:?}: packet id {} in flight twice",
                        f.packet_id
                    ));
                }
            }
            let (ids, earlier) = s.flows.incoming_qos2.ids();
            if earlier > ids.len() {
                return Err(format!(
                    "session {name:?}: {earlier} incoming QoS 2 ids of earlier connections, \
                     {} in all",
                    ids.len()
                ));
            }
            let mut sorted = ids.to_vec();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(format!(
                    "session {name:?}: incoming QoS 2 id {} unreleased twice",
                    w[0]
                ));
            }
            subscriptions += s.subscriptions.len();
            owned += usize::from(s.auth_name.is_some());
        }
        if self.by_client_id.len() != self.sessions.len() {
            return Err(format!(
                "{} client ids indexed for {} sessions",
                self.by_client_id.len(),
                self.sessions.len()
            ));
        }
        if self.router.len() != subscriptions {
            return Err(format!(
                "the route table holds {} subscriptions, the sessions {subscriptions}",
                self.router.len()
            ));
        }
        // Every shared message is referred to exactly as often as it counts: by
        // output-queue tags, session queues and in-flight windows (no route is in
        // progress between inputs).
        let mut refs: std::collections::BTreeMap<_, u32> = Default::default();
        for (_, c) in self.conns.iter() {
            for m in c.out.shared_refs() {
                *refs.entry(m).or_default() += 1;
            }
        }
        for (_, s) in self.sessions.iter() {
            for q in s
                .flows
                .queue
                .iter()
                .chain(s.flows.inflight.iter().map(|f| &f.msg))
            {
                *refs.entry(q.msg).or_default() += 1;
            }
        }
        for (m, held) in self.msgs.held() {
            let tags = refs.remove(&m).unwrap_or(0);
            if tags != held {
                return Err(format!(
                    "shared message {m:?} counts {held} references, {tags} tags name it"
                ));
            }
        }
        if let Some(m) = refs.keys().next() {
            return Err(format!("a tag names shared message {m:?}, which is gone"));
        }
        let counted: usize = self.sessions_per_auth.values().sum();
        if counted != owned {
            return Err(format!(
                "{counted} sessions counted per authentication name, {owned} owned"
            ));
        }
        Ok(())
    }
}
