//! How connections and sessions end: DISCONNECT, violations, lost transports,
//! takeovers, session expiry and overflow, keep-alive, shared-subscription
//! redelivery.

use super::events::Ending;
use super::*;

impl Broker {
    pub(super) fn on_disconnect(&mut self, now: Now, k: ConnKey, sk: SessionKey, d: Disconnect) {
        let Some(c) = self.conns.get(k) else { return };
        if let Some(expiry) = d.properties.session_expiry_interval {
            // [MQTT-3.14.2-2] a session expiry of 0 at CONNECT cannot be raised.
            if c.connect_expiry_zero && expiry != 0 {
                return self.violation(now, k, ReasonCode::ProtocolError);
            }
            let granted = expiry.min(self.config.max_session_expiry);
            if let Some(s) = self.sessions.get_mut(sk) {
                s.expiry_interval = granted;
            }
        }
        // [MQTT-3.1.2-10] a normal DISCONNECT discards the will; 0x04 keeps it.
        let with_will = d.reason_code == ReasonCode::DisconnectWithWillMessage;
        if let Some(c) = self.conns.get_mut(k) {
            c.start_closing(&self.sessions);
        }
        self.events.push_back(Event::Close {
            conn: conn_id(k),
            reason: d.reason_code,
        });
        self.detach(now, k, sk, with_will, Ending::Client(d.reason_code));
    }

    // ---------------------------------------------------------------- ending

    /// A protocol violation or server-side decision ends the connection: DISCONNECT
    /// with `code` for 5.0 [MQTT-4.13.1-1], the will is published (abnormal end).
    pub(super) fn violation(&mut self, now: Now, k: ConnKey, code: ReasonCode) {
        let Some(c) = self.conns.get(k) else { return };
        let sk = c.session();
        // [MQTT-3.14.0-1] no DISCONNECT before CONNACK: a violation during the AUTH
        // exchange of CONNECT is refused with CONNACK [MQTT-4.12.0-4].
        if matches!(c.state, ConnState::AwaitingConnect { .. }) {
            return self.refuse(k, code);
        }
        self.push_disconnect(k, code);
        if let Some(c) = self.conns.get_mut(k) {
            c.start_closing(&self.sessions);
        }
        self.events.push_back(Event::Close {
            conn: conn_id(k),
            reason: code,
        });
        if let Some(sk) = sk {
            self.detach(now, k, sk, true, Ending::Server(code));
        }
    }

    /// DISCONNECT with a Reason Code and Reason String (5.0 only; a 3.1.1 client is
    /// just disconnected). Reason Strings are allowed on DISCONNECT even when the
    /// client asked for no problem information [MQTT-3.1.2-29].
    pub(super) fn push_disconnect(&mut self, k: ConnKey, code: ReasonCode) {
        if self.conns.get(k).is_some_and(|c| c.version.is_v5()) {
            let mut d = Disconnect::new(code);
            d.properties.reason_string = reason_string(code);
            self.push_out(k, Packet::Disconnect(d));
        }
    }

    /// Reason String for a negative acknowledgement, if the client wants problem
    /// information (Request Problem Information, default 1 [MQTT-3.1.2-29]).
    pub(super) fn ack_properties(&self, k: ConnKey, code: ReasonCode) -> AckProperties {
        let wanted = self
            .conns
            .get(k)
            .is_some_and(|c| c.version.is_v5() && c.problem_info);
        AckProperties {
            reason_string: if wanted && !code.is_success() {
                reason_string(code)
            } else {
                None
            },
            ..AckProperties::default()
        }
    }

    /// Marks a connection closing without a session (before CONNACK or a refusal).
    pub(super) fn close(&mut self, k: ConnKey, reason: ReasonCode) {
        if let Some(c) = self.conns.get_mut(k) {
            if matches!(c.state, ConnState::Closing { .. }) {
                return;
            }
            c.start_closing(&self.sessions);
            self.events.push_back(Event::Close {
                conn: conn_id(k),
                reason,
            });
        }
    }

    /// The transport dropped without DISCONNECT (or the adapter closed it after
    /// the broker found a packet the client cannot take).
    pub(super) fn lose_connection(&mut self, now: Now, k: ConnKey, publish_will: bool) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Some(sk) = c.session() else {
            return;
        };
        let ending = if c.unsendable {
            Ending::Server(ReasonCode::PacketTooLarge)
        } else {
            Ending::Lost
        };
        c.start_closing(&self.sessions);
        self.detach(now, k, sk, publish_will, ending);
    }

    /// Separates a session from its connection, which ended as `ending` (the
    /// one place every end of a connected session passes, but shutdown): the
    /// lifecycle event goes out, the will (if it is to be published) goes out now
    /// or after its delay, and the session either ends (expiry 0) or starts its
    /// expiry timer.
    pub(super) fn detach(
        &mut self,
        now: Now,
        k: ConnKey,
        sk: SessionKey,
        publish_will: bool,
        ending: Ending,
    ) {
        let will = self.conns.get_mut(k).and_then(|c| c.will.take());
        if self
            .sessions
            .get(sk)
            .is_none_or(|s| s.conn != Some(conn_id(k)))
        {
            return;
        }
        self.lifecycle_disconnected(now, k, sk, ending);
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        s.conn = None;
        s.flows.release_if_idle();
        let expiry = s.expiry_interval;
        if let (true, Some(w)) = (publish_will, will) {
            // [MQTT-3.1.3-9] the will waits for the smaller of its delay and the
            // session's expiry.
            let delay = w.delay.min(expiry);
            if delay == 0 {
                self.publish_will(now, w.publish);
            } else {
                let at = now.instant + Duration::from_secs(u64::from(delay));
                if let Some(s) = self.sessions.get_mut(sk) {
                    s.delayed_will = Some(Box::new((at, w.publish)));
                }
                self.timers.schedule(at, TimerKind::WillDelay(sk));
            }
        }
        if expiry == 0 {
            // Taken over: the client identifier is held still (here by its new
            // connection, or on the node that took it).
            let taken = matches!(ending, Ending::Server(ReasonCode::SessionTakenOver));
            return self.end_session_as(now, sk, !taken);
        }
        // QoS 1 messages in flight stay with the session for redelivery; QoS 0 in
        // the connection's output are dropped with it.
        if expiry != u32::MAX {
            let at = now.instant + Duration::from_secs(u64::from(expiry));
            if let Some(s) = self.sessions.get_mut(sk) {
                s.expires_at = Some(at);
            }
            self.timers.schedule(at, TimerKind::SessionExpiry(sk));
        }
        self.store_session(now, sk);
    }

    /// Takeover [MQTT-3.1.4-3]: the connection `old` of session `sk` gets
    /// DISCONNECT 0x8E Session taken over (5.0), closes, and lets go of the
    /// session (its will follows as on any server-side end).
    pub(super) fn close_taken_over(&mut self, now: Now, old: ConnId, sk: SessionKey) {
        let ok = key(old);
        self.push_disconnect(ok, ReasonCode::SessionTakenOver);
        if let Some(c) = self.conns.get_mut(ok) {
            c.start_closing(&self.sessions);
        }
        self.events.push_back(Event::Close {
            conn: old,
            reason: ReasonCode::SessionTakenOver,
        });
        self.detach(
            now,
            ok,
            sk,
            true,
            Ending::Server(ReasonCode::SessionTakenOver),
        );
    }

    /// One more session owned by `name` (`end_session` counts it down).
    pub(super) fn count_owned_session(&mut self, name: &str) {
        match self.sessions_per_auth.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                self.sessions_per_auth.insert(name.to_owned(), 1);
            }
        }
    }

    /// One session fewer owned by `name`.
    pub(super) fn uncount_owned_session(&mut self, name: &str) {
        if let Some(n) = self.sessions_per_auth.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                self.sessions_per_auth.remove(name);
            }
        }
    }

    /// Ends a session: subscriptions removed, a pending will published [MQTT-3.1.3-9],
    /// queued messages discarded.
    /// Tells the adapter that the broker is about to end a session on its own.
    pub(super) fn session_ended(&mut self, sk: SessionKey, reason: SessionEnd) {
        if let Some(s) = self.sessions.get(sk) {
            self.events.push_back(Event::SessionEnded {
                client_id: s.client_id.clone(),
                reason,
                queued_messages: s.flows.queue.len() + s.flows.inflight.len(),
                queued_bytes: s.flows.queue_bytes,
            });
        }
    }

    pub(super) fn end_session(&mut self, now: Now, sk: SessionKey) {
        self.end_session_as(now, sk, true);
    }

    /// [`Broker::end_session`]; on a node of a cluster, `announce` says the
    /// client identifier is free in the cluster ([`ClusterOp::SessionEnded`]):
    /// not when a new session of the same client replaces it here, nor when it
    /// moves to another node.
    pub(super) fn end_session_as(&mut self, now: Now, sk: SessionKey, announce: bool) {
        let Some(s) = self.sessions.remove(sk) else {
            return;
        };
        self.by_client_id.remove(s.client_id.as_bytes(), sk);
        if let Some(a) = &s.auth_name {
            self.uncount_owned_session(a);
        }
        if announce && self.config.cluster {
            self.events
                .push_back(Event::Cluster(ClusterOp::SessionEnded {
                    client_id: s.client_id.clone(),
                    authentication_name: s.auth_name.clone(),
                }));
        }
        for sub in s.subscriptions.iter() {
            self.route_unsubscribe(&sub.filter, sk);
        }
        self.redeliver_shared(now, sk, &s);
        for q in s
            .flows
            .queue
            .iter()
            .chain(s.flows.inflight.iter().map(|f| &f.msg))
        {
            self.msgs.release(q.msg);
        }
        // `stored`, not `persistent()`: a DISCONNECT may have set the expiry to 0.
        if self.config.store_effects && s.stored {
            self.emit_store(StoreOp::SessionRemove {
                client_id: s.client_id.clone(),
            });
        }
        // A session ended while online (overflow cannot happen online; clean start
        // replaces offline sessions) leaves nothing bound to a connection.
        if let Some(c) = s.conn {
            self.close(key(c), ReasonCode::SessionTakenOver);
        }
        if let Some(w) = s.delayed_will {
            self.publish_will(now, w.1);
        }
    }

    /// QoS 1 messages a shared subscription gave to a session that ended without
    /// acknowledging them go to another member of the group [MQTT-4.8.2] (5.0
    /// section 4.8.2: "the Server SHOULD send the Application Message to another
    /// Client that is subscribed to the same Shared Subscription"). QoS 2 stays with
    /// its session: once PUBREC may have been seen, a second delivery would break
    /// exactly once.
    pub(super) fn redeliver_shared(&mut self, now: Now, ended: SessionKey, s: &Session) {
        let unacked = s
            .flows
            .inflight
            .iter()
            .filter(|f| f.state == FlightState::Published)
            .map(|f| &f.msg)
            .chain(s.flows.queue.iter());
        for q in unacked {
            let Some((filter, published)) = &q.shared else {
                continue;
            };
            if q.qos != QoS::AtLeastOnce {
                continue;
            }
            let members = self.router.shared_members(filter);
            if members.is_empty() {
                continue;
            }
            let mut picker = OnlinePicker {
                rng: &mut self.rng,
                sessions: &self.sessions,
                exclude: Some(ended),
            };
            let entry = members[picker.pick(members)];
            if entry.session == ended {
                continue;
            }
            let Some((p, _)) = self.msgs.get(q.msg) else {
                continue;
            };
            let mut p = p.clone();
            let expires_at = self.msgs.expires_at(q.msg);
            // As published: the new member's own grant decides [MQTT-3.8.4-8].
            p.qos = *published;
            self.stats.shared_redeliveries += 1;
            let mut copies = RouteCopies::default();
            self.deliver(
                now,
                entry.session,
                &p,
                qos_min(*published, entry.options.qos),
                false,
                entry.id.into_iter().collect(),
                expires_at,
                Some(filter.clone()),
                &mut copies,
            );
            copies.release(&mut self.msgs);
        }
    }

    /// A connection's timer (`TimerKind::Conn`) at `at`: the connect timeout while
    /// CONNECT has not come, then the keep-alive check, re-armed from the last
    /// packet received.
    pub(super) fn check_connection(&mut self, now: Now, k: ConnKey, at: Instant) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        if c.timer_at != Some(at) {
            return;
        }
        c.timer_at = None;
        let sk = match c.state {
            // Until CONNECT is accepted, the timer is the connect timeout.
            ConnState::AwaitingConnect { .. } => {
                return self.close(k, ReasonCode::MaximumConnectTime);
            }
            ConnState::Active { session } => session,
            _ => return,
        };
        // Credentials that expired (a token's `exp`) and were not renewed by a
        // re-authentication: the time this connection was authorized for is over.
        let expires = c.extras.as_ref().and_then(|a| a.expires);
        if expires.is_some_and(|at| at <= now.instant) {
            return self.violation(now, k, ReasonCode::MaximumConnectTime);
        }
        let keep_alive = (c.keep_alive_ms > 0)
            .then(|| c.last_rx + Duration::from_millis(u64::from(c.keep_alive_ms)));
        if keep_alive.is_some_and(|at| at <= now.instant) {
            // [MQTT-3.1.2-24] nothing received for 1.5 x Keep Alive.
            return self.violation(now, k, ReasonCode::KeepAliveTimeout);
        }
        if let Some(next) = keep_alive.into_iter().chain(expires).min() {
            c.timer_at = Some(next);
            self.timers.schedule(next, TimerKind::Conn(k));
        }
        // A connection that went quiet gives back its session's flow state (the
        // keep-alive check is its periodic visit).
        if let Some(s) = self.sessions.get_mut(sk) {
            s.flows.release_if_idle();
        }
    }
}
