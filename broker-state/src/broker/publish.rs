//! PUBLISH in: checks, topic aliases, QoS 2 receipt, routing to every matching
//! subscription, delivery (shared copies, in-flight window, session queues and their
//! overflow policy), wills.

use super::*;

impl Broker {
    pub(super) fn on_publish(&mut self, now: Now, k: ConnKey, sk: SessionKey, mut p: Publish) {
        self.stats.publishes_received += 1;
        self.stats.publishes_received_by_qos[p.qos as usize] += 1;
        let mark = self.durability.emitted;
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let v5 = c.version.is_v5();
        if v5 {
            // [MQTT-3.3.4-6] a client may not send Subscription Identifiers.
            if !p.properties.subscription_identifiers.is_empty() {
                return self.violation(now, k, ReasonCode::ProtocolError);
            }
            if let Some(alias) = p.properties.topic_alias.take() {
                let max = self.config.topic_alias_maximum;
                // [MQTT-3.3.2-9] alias above the maximum we announced.
                if alias.get() > max {
                    return self.violation(now, k, ReasonCode::TopicAliasInvalid);
                }
                let slot = usize::from(alias.get() - 1);
                let aliases = &mut c.extras.get_or_insert_with(Box::default).inbound_aliases;
                if aliases.len() < usize::from(max) {
                    *aliases = vec![None; usize::from(max)].into_boxed_slice();
                }
                if p.topic.is_empty() {
                    match &aliases[slot] {
                        Some(t) => p.topic = t.clone(),
                        // Section 3.3.2.3.4: an empty topic with an alias that names no topic.
                        None => return self.violation(now, k, ReasonCode::ProtocolError),
                    }
                } else {
                    // Aliases live as long as the connection: keep the topic, not the
                    // read buffer it points into.
                    aliases[slot] = Some(detach_topic(&p.topic));
                }
            }
        }
        if p.retain && !self.config.retain_available {
            // Section 3.3.1.3: Retain not supported was announced in CONNACK (3.2.2.3.5).
            return self.violation(now, k, ReasonCode::RetainNotSupported);
        }
        let id = p.packet_id;
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, id) {
            let Some(s) = self.sessions.get_mut(sk) else {
                return;
            };
            // QoS 2 duplicate: acknowledge again, do not route again [MQTT-4.3.3-2].
            if s.flows.incoming_qos2.received_again(id) {
                self.push_ack(k, Packet::PubRec(PubAck::new(id)), mark);
                return;
            }
            // 5.0 section 3.3.4: more QoS 2 PUBLISHes unreleased on this connection
            // than the Receive Maximum in CONNACK [MQTT-3.3.4-7]. (QoS 1 is
            // acknowledged at once, so never counts.) 3.1.1 and 3.1 have no Receive
            // Maximum: such a client may use every packet id, and what bounds the
            // session's memory then is the id space itself (65,535 ids, see
            // `IncomingQos2`); closing a conforming client instead would lose its
            // messages.
            if v5
                && s.flows.incoming_qos2.on_this_connection()
                    >= usize::from(self.config.receive_maximum)
            {
                return self.violation(now, k, ReasonCode::ReceiveMaximumExceeded);
            }
        }
        let mut code = ReasonCode::Success;
        if !self.topic_within_limits(&p.topic) {
            code = ReasonCode::TopicNameInvalid;
        } else if p.properties.user_properties.len() > self.config.max_user_properties {
            code = ReasonCode::ImplementationSpecificError;
        } else {
            let allowed = self.session_may_publish(sk, &p.topic, p.retain);
            if !allowed {
                self.stats.publish_not_authorized += 1;
                code = ReasonCode::NotAuthorized;
            }
        }
        if code == ReasonCode::Success {
            let expires_at = p
                .properties
                .message_expiry_interval
                .map(|secs| now.instant + Duration::from_secs(u64::from(secs)));
            if p.retain && !self.set_retained(now, &p, expires_at) {
                code = ReasonCode::QuotaExceeded;
            }
            if code == ReasonCode::Success {
                p.dup = false;
                p.packet_id = None;
                let routed = self.route(now, Some(sk), &p, expires_at);
                // A node of a cluster does not know the others' subscribers.
                if routed.matched == 0 && !self.config.cluster {
                    code = ReasonCode::NoMatchingSubscribers;
                }
                self.forward(&p, routed.shared);
            }
        }
        // 3.1.1 cannot report a refusal: the message is acknowledged and dropped
        // [MQTT-3.3.5-2].
        if !v5 {
            code = ReasonCode::Success;
        }
        match (p.qos, id) {
            (QoS::AtLeastOnce, Some(id)) => {
                let mut ack = PubAck::new(id);
                ack.reason_code = code;
                ack.properties = self.ack_properties(k, code);
                self.push_ack(k, Packet::PubAck(ack), mark);
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if code.is_success() {
                    if let Some(s) = self.sessions.get_mut(sk) {
                        s.flows.incoming_qos2.insert(id);
                        if self.config.store_effects && s.persistent() {
                            let client_id = s.client_id.clone();
                            self.emit_store(StoreOp::Qos2Received {
                                client_id,
                                packet_id: id.get(),
                            });
                        }
                    }
                }
                let mut ack = PubAck::new(id);
                ack.reason_code = code;
                ack.properties = self.ack_properties(k, code);
                self.push_ack(k, Packet::PubRec(ack), mark);
            }
            _ => {}
        }
    }

    pub(super) fn topic_within_limits(&self, topic: &TopicName) -> bool {
        topic.len() <= self.config.max_topic_length
            && topic.levels().count() <= self.config.max_topic_levels
    }

    /// Routes a message to every matching subscription. Overlapping subscriptions of
    /// one session give one delivery at the highest granted QoS [MQTT-3.3.5-1], with
    /// all their subscription identifiers.
    pub(super) fn route(
        &mut self,
        now: Now,
        publisher: Option<SessionKey>,
        p: &Publish,
        expires_at: Option<Instant>,
    ) -> Routed {
        let mut matches = core::mem::take(&mut self.scratch);
        matches.clear();
        let mut picker = OnlinePicker {
            rng: &mut self.rng,
            sessions: &self.sessions,
            exclude: None,
        };
        self.router
            .matches(p.topic.as_bytes(), &mut picker, &mut matches);
        // A node of a cluster delivers shared subscriptions only from what the
        // cluster hands back (`handle_cluster_publish` with the group): each
        // message to one member in the whole cluster.
        let shared = self.config.cluster && matches.iter().any(|m| m.shared.is_some());
        if shared {
            matches.retain(|m| m.shared.is_none());
        }
        // No Local [MQTT-3.8.3-3]: not to the publisher's own non-shared subscriptions.
        if let Some(publisher) = publisher {
            matches.retain(|m| {
                m.shared.is_some() || !(m.entry.options.no_local && m.entry.session == publisher)
            });
        }
        let matched = matches.len();
        // The copies the receivers share, made at the first one that takes each.
        // (A QoS 0 message to one receiver is cheaper as a packet of its own.)
        let mut copies = RouteCopies {
            fan_out: matched > 1,
            ..RouteCopies::default()
        };
        // Merge duplicates only when a session appears twice through non-shared
        // subscriptions (overlapping filters). A shared subscription delivers its own
        // copy, even to a client that also has a matching non-shared one (5.0 4.8.2).
        //
        // Each session is marked with this route's number as it is seen: a session
        // already marked is a duplicate. (After 2^32 routes a mark left from long ago
        // can look current; that only sends the route through the merging path,
        // which gives the same deliveries when nothing overlaps.)
        let dup = matches.len() > 1 && {
            self.route_count = self.route_count.wrapping_add(1);
            let count = self.route_count;
            let sessions = &mut self.sessions;
            matches.iter().any(|m| {
                m.shared.is_none()
                    && sessions
                        .get_mut(m.entry.session)
                        .is_some_and(|s| core::mem::replace(&mut s.route_mark, count) == count)
            })
        };
        if dup {
            // Non-shared matches first, grouped by session; shared ones after, alone.
            matches.sort_by_key(|m| (m.shared.is_some(), m.entry.session));
            let mut i = 0;
            while i < matches.len() {
                let mut j = i + 1;
                let mut qos = matches[i].entry.options.qos;
                let mut rap = matches[i].entry.options.retain_as_published;
                let mut ids: Vec<NonZeroU32> = matches[i].entry.id.into_iter().collect();
                while j < matches.len()
                    && matches[j].shared.is_none()
                    && matches[j].entry.session == matches[i].entry.session
                {
                    qos = qos.max(matches[j].entry.options.qos);
                    rap |= matches[j].entry.options.retain_as_published;
                    ids.extend(matches[j].entry.id);
                    j += 1;
                }
                let session = matches[i].entry.session;
                let shared = matches[i].shared.clone();
                let retain = rap && p.retain;
                self.deliver(
                    now,
                    session,
                    p,
                    qos_min(p.qos, qos),
                    retain,
                    ids,
                    expires_at,
                    shared,
                    &mut copies,
                );
                i = j;
            }
        } else {
            for m in &matches {
                let retain = m.entry.options.retain_as_published && p.retain;
                let ids = m.entry.id.into_iter().collect();
                self.deliver(
                    now,
                    m.entry.session,
                    p,
                    qos_min(p.qos, m.entry.options.qos),
                    retain,
                    ids,
                    expires_at,
                    m.shared.clone(),
                    &mut copies,
                );
            }
        }
        copies.release(&mut self.msgs);
        self.scratch = matches;
        Routed { matched, shared }
    }

    /// Delivers one message to one session: straight out if the connection is
    /// online and the window allows, else into the session queue.
    ///
    /// `copies` are the route's copies of the message, made by the first delivery
    /// that needs each; the caller releases them when its route is done.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver(
        &mut self,
        now: Now,
        sk: SessionKey,
        template: &Publish,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<NonZeroU32>,
        expires_at: Option<Instant>,
        shared: Option<TopicFilter>,
        copies: &mut RouteCopies,
    ) {
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        let online = s.conn.and_then(|c| {
            let ck = key(c);
            self.conns
                .get(ck)
                .filter(|c| c.session() == Some(sk))
                .map(|c| (ck, c))
        });
        if qos == QoS::AtMostOnce {
            // QoS 0 is not queued for offline sessions.
            let Some((ck, c)) = online else { return };
            // Beyond its own buffer, a connection may hold a burst while the
            // broker's shared allowance lasts (counted on this slow path only).
            let guaranteed = self.config.outbound_buffer_bytes;
            let c = if c.out.bytes() < guaranteed {
                c
            } else {
                let Some(c) = self.conns.get_mut(ck) else {
                    return;
                };
                sync_burst(c, &mut self.outbound_burst, guaranteed);
                if self.outbound_burst >= self.config.outbound_burst_bytes {
                    self.stats.dropped_qos0_slow_consumer += 1;
                    return;
                }
                &*c
            };
            if expires_at.is_some_and(|at| at <= now.instant) {
                self.stats.expired += 1;
                return;
            }
            // The fan-out case: a tag naming the route's one copy. A receiver with
            // several Subscription Identifiers (overlapping subscriptions) gets a
            // packet of its own.
            if copies.fan_out && sub_ids.len() <= 1 {
                let msg = copies.copy(&mut self.msgs, template, expires_at, now, false);
                let tag = SharedTag {
                    msg,
                    sub_id: sub_ids.first().copied(),
                    retain,
                };
                // [MQTT-3.1.2-25] too large for this client: dropped for it.
                let too_large = c.peer_max_packet != u32::MAX
                    && self.msgs.get(msg).is_some_and(|(p, _)| {
                        p.encoded_len_for(c.version, &tag.delivery(p)) > c.peer_max_packet as usize
                    });
                if too_large {
                    self.stats.dropped_too_large += 1;
                    return;
                }
                self.msgs.retain(msg);
                let size = self.msgs.size(msg);
                self.stats.deliveries += 1;
                return self.push_shared(ck, tag, size);
            }
            let mut p = template.clone();
            p.qos = qos;
            p.retain = retain;
            p.dup = false;
            p.packet_id = None;
            p.properties.subscription_identifiers = sub_ids;
            refresh_expiry(&mut p, expires_at, now.instant);
            let packet = Packet::Publish(p);
            if !fits(&packet, c) {
                // [MQTT-3.1.2-25] too large for this client: dropped for it.
                self.stats.dropped_too_large += 1;
                return;
            }
            self.stats.deliveries += 1;
            return self.push_out(ck, packet);
        }
        if online.is_none() && !s.persistent() {
            return;
        }
        // An offline session's message may wait hours: it gets the copy made out of
        // the read buffer the message shares, so it does not pin that buffer.
        let msg = copies.copy(&mut self.msgs, template, expires_at, now, online.is_none());
        self.msgs.retain(msg);
        let q = Queued {
            msg,
            qos,
            retain,
            sub_ids: SubIds::from_vec(sub_ids),
            expiry_left: None,
            seq: s.take_seq(),
            shared: shared.map(|filter| (filter, template.qos)),
        };
        match online {
            Some((ck, c)) => {
                // The size is checked where the message goes out, in
                // `send_inflight`, which queued messages pass through as well.
                let window = usize::from(c.peer_receive_max);
                if s.flows.inflight.len() < window && s.flows.queue.is_empty() {
                    self.store_enqueue(sk, &q, now);
                    self.send_inflight(now, ck, sk, q);
                } else {
                    self.enqueue(now, sk, q, true);
                }
            }
            None => self.enqueue(now, sk, q, false),
        }
    }

    /// Puts a QoS 1/2 message in flight on an online connection.
    pub(super) fn send_inflight(&mut self, now: Now, ck: ConnKey, sk: SessionKey, q: Queued) {
        let (Some(s), Some(c)) = (self.sessions.get_mut(sk), self.conns.get(ck)) else {
            self.msgs.release(q.msg);
            return;
        };
        let mut q = q;
        let live = match time_left(self.msgs.expires_at(q.msg), now.instant) {
            Some(left) => {
                q.expiry_left = left;
                true
            }
            None => false,
        };
        // [MQTT-3.1.2-25] a message too large for the client (which may have
        // reconnected with a smaller Maximum Packet Size than when it was queued) is
        // discarded as if it had been sent. (The length of a QoS 1/2 PUBLISH counts
        // its packet id whether or not one is set yet.)
        let too_large = live
            && c.peer_max_packet != u32::MAX
            && self.msgs.get(q.msg).is_some_and(|(p, _)| {
                p.encoded_len_for(c.version, &q.delivery(PacketId::MIN, false))
                    > c.peer_max_packet as usize
            });
        if !live || too_large {
            if too_large {
                self.stats.dropped_too_large += 1;
            } else {
                self.stats.expired += 1;
            }
            let seq = q.seq;
            let client_id = s.client_id.clone();
            let persistent = s.persistent();
            self.msgs.release(q.msg);
            self.store_remove(persistent, client_id, seq);
            return;
        }
        let Some(id) = s.next_packet_id() else {
            // All 65,535 ids in flight: keep it queued.
            s.flows.queue_bytes += self.msgs.size(q.msg);
            s.flows.queue.push_front(q);
            return;
        };
        // The in-flight entry is what goes on the wire: the output queue only names it.
        let size = self.msgs.size(q.msg);
        let allocated = s.flows.allocations;
        let qos2 = q.qos == QoS::ExactlyOnce;
        let sent_op = (self.config.store_effects && s.persistent()).then(|| StoreOp::MessageSent {
            client_id: s.client_id.clone(),
            seq: q.seq,
            packet_id: id.get(),
        });
        s.flows.inflight.push_back(InFlight {
            packet_id: id,
            state: FlightState::Published,
            msg: q,
            allocated,
            sent: false,
        });
        let wait = sent_op.is_some() && qos2;
        if let Some(op) = sent_op {
            self.emit_store(op);
        }
        self.stats.deliveries += 1;
        self.push_flight(ck, id, size, wait);
    }

    /// Adds to a session queue within its limits (online or offline).
    pub(super) fn enqueue(&mut self, now: Now, sk: SessionKey, q: Queued, online: bool) {
        let limits = if online {
            self.config.online_queue
        } else {
            self.config.offline_queue
        };
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        let size = self.msgs.size(q.msg);
        let full = |s: &Session| {
            s.flows.queue.len() + 1 > limits.messages || s.flows.queue_bytes + size > limits.bytes
        };
        // A message larger than the queue's whole byte limit can never be queued:
        // drop it alone, whatever the policy, instead of first discarding (or ending
        // the session with) everything queued before it.
        if size > limits.bytes {
            if online {
                self.stats.dropped_online_queue_full += 1;
            } else {
                self.stats.dropped_offline_queue_full += 1;
            }
            self.msgs.release(q.msg);
            return;
        }
        let mut removed = Vec::new();
        let mut drop_new = false;
        if full(s) {
            if online {
                // Slow consumer, online: drop the oldest QoS 1 message; if only QoS 2
                // messages wait, drop the new one (QoS 2 is never dropped once queued).
                while full(s) {
                    match s.flows.queue.iter().position(|m| m.qos == QoS::AtLeastOnce) {
                        Some(i) => {
                            if let Some(old) = s.flows.queue.remove(i) {
                                s.flows.queue_bytes -= self.msgs.size(old.msg);
                                removed.push(old.seq);
                                self.msgs.release(old.msg);
                            }
                            self.stats.dropped_online_queue_full += 1;
                        }
                        None => {
                            self.stats.dropped_online_queue_full += 1;
                            drop_new = true;
                            break;
                        }
                    }
                }
            } else {
                match self.config.offline_overflow {
                    OverflowPolicy::EndSession => {
                        self.stats.sessions_ended_by_overflow += 1;
                        self.msgs.release(q.msg);
                        self.session_ended(sk, SessionEnd::QueueOverflow);
                        self.end_session(now, sk);
                        return;
                    }
                    OverflowPolicy::DropNewest => {
                        self.stats.dropped_offline_queue_full += 1;
                        self.msgs.release(q.msg);
                        return;
                    }
                    OverflowPolicy::DropOldest => {
                        while full(s) {
                            match s.flows.queue.pop_front() {
                                Some(old) => {
                                    s.flows.queue_bytes -= self.msgs.size(old.msg);
                                    removed.push(old.seq);
                                    self.msgs.release(old.msg);
                                    self.stats.dropped_offline_queue_full += 1;
                                }
                                None => {
                                    // A message limit of 0: nothing can be queued.
                                    self.stats.dropped_offline_queue_full += 1;
                                    drop_new = true;
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        let Some(s) = self.sessions.get_mut(sk) else {
            return;
        };
        let persistent = s.persistent();
        let client_id = s.client_id.clone();
        if drop_new {
            self.msgs.release(q.msg);
        } else {
            s.flows.queue_bytes += size;
            s.flows.queue.push_back(q);
        }
        // The store forgets what was dropped, also when the new message was dropped
        // too (otherwise a restart would bring the dropped messages back).
        for seq in removed {
            self.store_remove(persistent, client_id.clone(), seq);
        }
        if self.config.store_effects && persistent && !drop_new {
            if let Some(q) = self.sessions.get(sk).and_then(|s| s.flows.queue.back()) {
                if let Some(op) = enqueue_op(&self.msgs, client_id, q, now) {
                    self.emit_store(op);
                }
            }
        }
    }

    /// Moves queued messages into flight while the peer's window allows.
    pub(super) fn fill_window(&mut self, now: Now, sk: SessionKey) {
        loop {
            let Some(s) = self.sessions.get_mut(sk) else {
                return;
            };
            let Some(ck) = s.conn.map(key) else { return };
            let Some(c) = self.conns.get(ck) else { return };
            if c.session() != Some(sk) || s.flows.inflight.len() >= usize::from(c.peer_receive_max)
            {
                return;
            }
            // (A read first: a session without flows keeps none.)
            if s.flows.queue.is_empty() {
                return;
            }
            let Some(q) = s.flows.queue.pop_front() else {
                return;
            };
            s.flows.queue_bytes -= self.msgs.size(q.msg);
            self.send_inflight(now, ck, sk, q);
        }
    }

    pub(super) fn publish_will(&mut self, now: Now, will: Publish) {
        let expires_at = will
            .properties
            .message_expiry_interval
            .map(|secs| now.instant + Duration::from_secs(u64::from(secs)));
        if will.retain && !self.set_retained(now, &will, expires_at) {
            self.stats.retained_refused += 1;
        }
        let routed = self.route(now, None, &will, expires_at);
        self.forward(&will, routed.shared);
    }
}
