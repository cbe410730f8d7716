//! Restoring a broker from its store's replay.

use super::*;

impl Broker {
    /// The session a store record names, if it was restored.
    fn restored_session(&mut self, client_id: &MqttString) -> Option<&mut Session> {
        let k = self
            .by_client_id
            .get(&self.sessions, client_id.as_bytes())?;
        self.sessions.get_mut(k)
    }

    /// Restores one record from the store into a fresh broker, before any
    /// connection is accepted. Sessions come back offline, with their
    /// subscriptions and queued messages; expiry deadlines continue from the wall
    /// clock.
    pub fn handle_restore(&mut self, now: Now, op: StoreOp) {
        match op {
            StoreOp::SessionUpsert(rec) => {
                let k = match self
                    .by_client_id
                    .get(&self.sessions, rec.client_id.as_bytes())
                {
                    Some(k) => k,
                    None => {
                        let k = self.sessions.insert(Session::new(
                            rec.client_id.clone(),
                            rec.authentication_name.clone(),
                        ));
                        self.by_client_id.insert(&self.sessions, k);
                        if let Some(a) = &rec.authentication_name {
                            self.count_owned_session(a);
                        }
                        k
                    }
                };
                let Some(s) = self.sessions.get_mut(k) else {
                    return;
                };
                s.expiry_interval = rec.expiry_interval;
                s.stored = true;
                let remaining = rec
                    .expires_at_unix_ms
                    .map(|at| Duration::from_millis(at.saturating_sub(now.unix_ms)));
                let subs: Vec<_> = rec.subscriptions.clone();
                for (filter, options, id) in subs {
                    self.add_subscription(k, filter, options, id);
                }
                if rec.expiry_interval != u32::MAX {
                    let d =
                        remaining.unwrap_or(Duration::from_secs(u64::from(rec.expiry_interval)));
                    let at = now.instant + d;
                    if let Some(s) = self.sessions.get_mut(k) {
                        s.expires_at = Some(at);
                    }
                    self.timers.schedule(at, TimerKind::SessionExpiry(k));
                }
                // A will: its delay ran on (wall clock), or its connection was live
                // when the broker stopped, and the restart ends that connection: the
                // delay starts now [MQTT-3.1.3-9]. Published by the timer, after
                // every record is back, so that it reaches restored subscribers.
                if let Some(w) = rec.will {
                    let at = match w.publish_at_unix_ms {
                        Some(ms) => {
                            now.instant + Duration::from_millis(ms.saturating_sub(now.unix_ms))
                        }
                        None => {
                            let delay = w.delay_interval.min(rec.expiry_interval);
                            now.instant + Duration::from_secs(u64::from(delay))
                        }
                    };
                    if let Some(s) = self.sessions.get_mut(k) {
                        s.delayed_will = Some(Box::new((at, w.message.publish)));
                    }
                    self.timers.schedule(at, TimerKind::WillDelay(k));
                }
            }
            StoreOp::SessionRemove { client_id } => {
                if let Some(k) = self.by_client_id.get(&self.sessions, client_id.as_bytes()) {
                    self.end_session(now, k);
                }
            }
            StoreOp::MessageEnqueue {
                client_id,
                seq,
                message,
            } => {
                let Some(k) = self.by_client_id.get(&self.sessions, client_id.as_bytes()) else {
                    return;
                };
                let Some(expires_at) = wall_to_instant(now, message.expires_at_unix_ms) else {
                    return;
                };
                if let Some(s) = self.sessions.get_mut(k) {
                    let mut p = message.publish;
                    let (qos, retain) = (p.qos, p.retain);
                    let sub_ids = SubIds::from_vec(core::mem::take(
                        &mut p.properties.subscription_identifiers,
                    ));
                    strip_delivery(&mut p);
                    let msg = self.msgs.insert(p, expires_at);
                    s.next_seq = s.next_seq.max(seq);
                    s.flows.queue_bytes += self.msgs.size(msg);
                    s.flows.queue.push_back(Queued {
                        msg,
                        qos,
                        retain,
                        sub_ids,
                        expiry_left: None,
                        seq,
                        shared: None,
                    });
                }
            }
            StoreOp::MessageRemove { client_id, seq } => {
                let Some(k) = self.by_client_id.get(&self.sessions, client_id.as_bytes()) else {
                    return;
                };
                if let Some(s) = self.sessions.get_mut(k) {
                    if let Some(i) = s.flows.queue.iter().position(|q| q.seq == seq) {
                        if let Some(q) = s.flows.queue.remove(i) {
                            s.flows.queue_bytes -= self.msgs.size(q.msg);
                            self.msgs.release(q.msg);
                        }
                    }
                }
            }
            StoreOp::RetainSet(m) => {
                if let Some(expires_at) = wall_to_instant(now, m.expires_at_unix_ms) {
                    self.retained.insert(m.publish, expires_at);
                }
            }
            StoreOp::RetainClear { topic } => {
                self.retained.remove(topic.as_bytes());
            }
            // A queued message that went out: back in flight with its packet id,
            // resent with DUP when the client returns [MQTT-4.4.0-1].
            StoreOp::MessageSent {
                client_id,
                seq,
                packet_id,
            } => {
                let Some(k) = self.by_client_id.get(&self.sessions, client_id.as_bytes()) else {
                    return;
                };
                let Some(id) = PacketId::new(packet_id) else {
                    return;
                };
                let Some(s) = self.sessions.get_mut(k) else {
                    return;
                };
                let Some(i) = s.flows.queue.iter().position(|q| q.seq == seq) else {
                    return;
                };
                if s.flows.inflight.iter().any(|f| f.packet_id == id) {
                    return;
                }
                if let Some(q) = s.flows.queue.remove(i) {
                    s.flows.queue_bytes -= self.msgs.size(q.msg);
                    // Restored ids are not in allocation order: `next_packet_id`
                    // searches the window until they are gone (see there).
                    s.flows.allocations = s.flows.allocations.max(u64::from(u16::MAX));
                    s.flows.inflight.push_back(InFlight {
                        packet_id: id,
                        state: FlightState::Published,
                        msg: q,
                        allocated: 0,
                        sent: true,
                    });
                }
            }
            StoreOp::MessageReleased { client_id, seq } => {
                if let Some(f) = self
                    .restored_session(&client_id)
                    .and_then(|s| s.flows.inflight.iter_mut().find(|f| f.msg.seq == seq))
                {
                    f.state = FlightState::Released;
                }
            }
            StoreOp::Qos2Received {
                client_id,
                packet_id,
            } => {
                let id = PacketId::new(packet_id);
                if let (Some(s), Some(id)) = (self.restored_session(&client_id), id) {
                    if !s.flows.incoming_qos2.received_again(id) {
                        s.flows.incoming_qos2.insert(id);
                    }
                    // Received on a connection before the restart.
                    s.flows.incoming_qos2.new_connection();
                }
            }
            StoreOp::Qos2Released {
                client_id,
                packet_id,
            } => {
                let id = PacketId::new(packet_id);
                if let (Some(s), Some(id)) = (self.restored_session(&client_id), id) {
                    s.flows.incoming_qos2.release(id);
                }
            }
        }
    }
}
