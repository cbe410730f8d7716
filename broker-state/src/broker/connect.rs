//! CONNECT once authenticated: the checks that need no decision, the session it
//! binds to (new, resumed or taken over), CONNACK, and what a resumed session
//! resends.

use super::*;

impl Broker {
    /// The checks of CONNECT that need no decision about the client: its client
    /// identifier (assigned if empty) and its Keep Alive. Done before it is
    /// authenticated, so a CONNECT that would be refused anyway costs no
    /// verification.
    pub(super) fn plan_connect(&mut self, p: &Connect) -> Result<ConnectPlan, ReasonCode> {
        let v5 = p.protocol.is_v5();
        // Client identifier rules.
        if p.client_id.len() > self.config.max_client_id_length {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        let mut assigned = None;
        let client_id = if p.client_id.is_empty() {
            // [MQTT-3.1.3-8] 3.1.1: a zero-length id needs Clean Session 1.
            if !v5 && !p.clean_start {
                return Err(ReasonCode::ClientIdentifierNotValid);
            }
            // [MQTT-3.1.3-6] assign a unique identifier.
            let id = self.assign_client_id();
            assigned = Some(id.clone());
            id
        } else {
            // Sessions outlive connections: own the id rather than pin the read buffer
            // the CONNECT was decoded from.
            MqttString::copy_from_str(p.client_id.as_str()).unwrap_or_else(|_| p.client_id.clone())
        };
        // Keep alive (Mosquitto's max_keepalive rule for 3.1.1, Server Keep Alive in 5.0).
        let mut keep_alive = p.keep_alive;
        let mut server_keep_alive = None;
        let max_ka = self.config.max_keep_alive;
        if max_ka < u16::MAX && (keep_alive == 0 || keep_alive > max_ka) {
            if v5 {
                keep_alive = max_ka;
                server_keep_alive = Some(max_ka);
            } else {
                return Err(ReasonCode::ClientIdentifierNotValid);
            }
        }
        Ok(ConnectPlan {
            client_id,
            assigned,
            keep_alive,
            server_keep_alive,
        })
    }

    /// The rest of CONNECT, once the client is authenticated.
    pub(super) fn finish_connect(
        &mut self,
        now: Now,
        k: ConnKey,
        p: Connect,
        plan: ConnectPlan,
        auth: Authenticated,
    ) {
        let v5 = p.protocol.is_v5();
        let ConnectPlan {
            client_id,
            assigned,
            keep_alive,
            server_keep_alive,
        } = plan;
        let Authenticated {
            authentication_name: auth_name,
            enhanced: enhanced_ack,
            attributes,
        } = auth;
        // Session ownership (Event Grid): a session owned by another authentication
        // name is not for this client. A session without an owner (created by a
        // client without an authentication name) follows the plain MQTT rules, and
        // a client with a name that resumes or replaces it becomes its owner.
        let existing = self.by_client_id.get(&self.sessions, client_id.as_bytes());
        let existing_owner = existing
            .and_then(|sk| self.sessions.get(sk))
            .map(|s| s.auth_name.as_ref());
        if let Some(Some(owner)) = existing_owner {
            if Some(owner) != auth_name.as_ref() {
                return self.refuse(k, ReasonCode::NotAuthorized);
            }
        }
        if existing.is_none() && self.sessions.len() >= self.config.max_sessions {
            return self.refuse(k, ReasonCode::QuotaExceeded);
        }
        // A session the name does not own yet, new or claimed, takes a place in its
        // quota.
        let owned_already = matches!(existing_owner, Some(Some(_)));
        if let (Some(max), Some(name), false) = (
            self.config.max_sessions_per_authentication_name,
            &auth_name,
            owned_already,
        ) {
            if self.sessions_per_auth.get(name).copied().unwrap_or(0) >= max {
                return self.refuse(k, ReasonCode::QuotaExceeded);
            }
        }
        // What the client may do under the permission bindings: its will is the
        // first thing decided by them.
        let grants = self.grants_for(auth_name.as_deref(), attributes.as_deref());
        // Will: validated and authorized now, published only on an abnormal end.
        let mut will = None;
        if let Some(w) = p.will {
            if !self.topic_within_limits(&w.topic) {
                return self.refuse(k, ReasonCode::TopicNameInvalid);
            }
            if w.retain && !self.config.retain_available {
                return self.refuse(k, ReasonCode::RetainNotSupported);
            }
            let allowed = self.will_granted(grants.as_deref(), &w.topic)
                && self.authorizer.may_publish(
                    ClientInfo {
                        client_id: client_id.as_str(),
                        authentication_name: auth_name.as_deref(),
                        attributes: attributes.as_deref(),
                    },
                    &w.topic,
                    w.retain,
                );
            if !allowed {
                if v5 {
                    return self.refuse(k, ReasonCode::NotAuthorized);
                }
                // 3.1.1 has no way to say so: the will is dropped.
                self.stats.publish_not_authorized += 1;
            } else {
                let props = w.properties;
                let delay = props.will_delay_interval.unwrap_or(0);
                let mut publish = Publish {
                    dup: false,
                    qos: w.qos,
                    retain: w.retain,
                    topic: w.topic,
                    packet_id: None,
                    properties: mqtt_proto::PublishProperties {
                        payload_format_indicator: props.payload_format_indicator,
                        message_expiry_interval: props.message_expiry_interval,
                        content_type: props.content_type,
                        response_topic: props.response_topic,
                        correlation_data: props.correlation_data,
                        subscription_identifiers: Vec::new(),
                        topic_alias: None,
                        user_properties: props.user_properties,
                    },
                    payload: w.payload,
                };
                // The will waits for the connection's end: it must not pin the read
                // buffer the CONNECT came in.
                detach_publish(&mut publish);
                will = Some(PendingWill { publish, delay });
            }
        }
        // Session expiry granted.
        let requested = if v5 {
            p.properties.session_expiry_interval.unwrap_or(0)
        } else if p.clean_start {
            0
        } else {
            self.config.default_session_expiry
        };
        let granted = requested.min(self.config.max_session_expiry);
        // CONNACK, built before anything changes: a 5.0 client whose Maximum Packet
        // Size is too small for it cannot be served without breaking [MQTT-3.1.2-24]
        // (nothing above its maximum is sent), so it is closed without a CONNACK and
        // before it can take a session over.
        let mut ack = ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties::default(),
        };
        if v5 {
            let props = &mut ack.properties;
            if let Some((method, data)) = enhanced_ack {
                props.authentication_method = Some(method);
                props.authentication_data = data;
            }
            props.receive_maximum = NonZeroU16::new(self.config.receive_maximum);
            props.maximum_packet_size = NonZeroU32::new(self.config.max_packet_size);
            props.topic_alias_maximum =
                (self.config.topic_alias_maximum > 0).then_some(self.config.topic_alias_maximum);
            props.assigned_client_identifier = assigned;
            props.server_keep_alive = server_keep_alive;
            if granted != requested {
                props.session_expiry_interval = Some(granted);
            }
            if !self.config.retain_available {
                props.retain_available = Some(false);
            }
            if !self.config.wildcard_subscriptions {
                props.wildcard_subscription_available = Some(false);
            }
            if !self.config.shared_subscriptions {
                props.shared_subscription_available = Some(false);
            }
            if !self.config.subscription_identifiers {
                props.subscription_identifiers_available = Some(false);
            }
            if p.properties.request_response_information == Some(true) {
                if let Some(prefix) = &self.config.response_information_prefix {
                    let info = format!("{prefix}{}", client_id.as_str());
                    props.response_information = MqttString::copy_from_str(&info).ok();
                }
            }
        }
        let mut ack = Packet::ConnAck(Box::new(ack));
        if !self.conns.get(k).is_some_and(|c| fits(&ack, c)) {
            return self.close(k, ReasonCode::PacketTooLarge);
        }
        // Takeover [MQTT-3.1.4-3]: the old connection gets DISCONNECT 0x8E (5.0).
        let mut existing = existing;
        if let Some(sk) = existing {
            if let Some(old) = self.sessions.get(sk).and_then(|s| s.conn) {
                self.stats.takeovers += 1;
                self.close_taken_over(now, old, sk);
            }
            // Clean Start, or a session that ended with its connection, starts anew.
            // A taken-over session with expiry 0 was already ended by `detach`: its
            // key is stale, and Session Present must be 0 [MQTT-3.2.2-2].
            if p.clean_start || self.sessions.get(sk).is_none_or(|s| s.expiry_interval == 0) {
                // Replaced by the new session of the same client.
                self.end_session_as(now, sk, false);
                existing = None;
            }
        }
        let session_present = existing.is_some();
        let sk = match existing {
            Some(sk) => {
                // An unowned session resumed with an authentication name: claimed.
                if let (Some(s), Some(name)) = (self.sessions.get_mut(sk), &auth_name) {
                    if s.auth_name.is_none() {
                        s.auth_name = Some(name.clone());
                        self.count_owned_session(name);
                    }
                }
                sk
            }
            None => {
                let sk = self
                    .sessions
                    .insert(Session::new(client_id.clone(), auth_name.clone()));
                self.by_client_id.insert(&self.sessions, sk);
                if let Some(a) = &auth_name {
                    self.count_owned_session(a);
                }
                sk
            }
        };
        let conn = conn_id(k);
        if let Some(s) = self.sessions.get_mut(sk) {
            s.conn = Some(conn);
            s.attributes = attributes;
            s.grants = grants;
            s.identified = true;
            s.expires_at = None;
            s.expiry_interval = granted;
            // The send quota starts afresh with the connection (5.0 section 4.9).
            if let Some(f) = s.flows.allocated() {
                f.incoming_qos2.new_connection();
            }
            // [MQTT-3.1.3-9] a resumed session cancels a will whose delay is running.
            s.delayed_will = None;
        }
        let keep_alive_deadline = if keep_alive > 0 {
            // [MQTT-3.1.2-24] 1.5 times the Keep Alive (65,535 s at most: fits
            // in 32 bits of milliseconds).
            let ka_ms = u32::from(keep_alive) * 1500;
            Some((ka_ms, now.instant + Duration::from_millis(u64::from(ka_ms))))
        } else {
            None
        };
        if let Some(c) = self.conns.get_mut(k) {
            c.state = ConnState::Active { session: sk };
            c.will = will.map(Box::new);
            c.connect_expiry_zero = requested == 0;
            if v5 {
                c.peer_receive_max = p.properties.receive_maximum.map_or(u16::MAX, |r| r.get());
                c.peer_max_packet = p
                    .properties
                    .maximum_packet_size
                    .map_or(u32::MAX, |m| m.get());
                c.peer_topic_alias_max = p.properties.topic_alias_maximum.unwrap_or(0);
                c.problem_info = p.properties.request_problem_information.unwrap_or(true);
            } else {
                c.peer_receive_max = self.config.max_inflight_v3;
            }
            if let Some((ka, deadline)) = keep_alive_deadline {
                c.keep_alive_ms = ka;
                // The connection's timer (armed for the connect timeout) checks the
                // keep-alive when it fires; a new entry only if that is too late.
                if c.timer_at.is_none_or(|at| at > deadline) {
                    c.timer_at = Some(deadline);
                    self.timers.schedule(deadline, TimerKind::Conn(k));
                }
            }
        }
        self.store_session(now, sk);
        if let Packet::ConnAck(a) = &mut ack {
            a.session_present = session_present;
        }
        self.push_out(k, ack);
        self.events.push_back(Event::Connected {
            conn,
            client_id,
            protocol: p.protocol,
            session_present,
        });
        self.lifecycle_connected(now, k, sk, session_present);
        if session_present {
            self.resend_inflight(now, k, sk);
        }
        self.fill_window(now, sk);
    }

    pub(super) fn assign_client_id(&mut self) -> MqttString {
        loop {
            let id = format!("brokk-{:016x}", self.rng.next_u64());
            if self
                .by_client_id
                .get(&self.sessions, id.as_bytes())
                .is_none()
            {
                // Only ASCII hex digits: always a valid MQTT string.
                if let Ok(s) = MqttString::copy_from_str(&id) {
                    return s;
                }
            }
        }
    }

    /// Refuses a CONNECT: CONNACK with `code` (mapped for 3.1.1), then close.
    pub(super) fn refuse(&mut self, k: ConnKey, code: ReasonCode) {
        let mut ack = connack(false, code);
        if let Packet::ConnAck(a) = &mut ack {
            // The encoder drops properties for 3.1.1.
            a.properties.reason_string = reason_string(code);
        }
        self.push_out(k, ack);
        self.close(k, code);
    }

    /// [MQTT-4.4.0-1] on reconnect, resend unacknowledged PUBLISH (DUP set) and PUBREL,
    /// in their original order; never at any other time.
    pub(super) fn resend_inflight(&mut self, now: Now, k: ConnKey, sk: SessionKey) {
        let (Some(s), Some(c)) = (self.sessions.get_mut(sk), self.conns.get(k)) else {
            return;
        };
        let mut packets = Vec::with_capacity(s.flows.inflight.len());
        let mut expired = Vec::new();
        let mut too_large = Vec::new();
        let window = s.flows.allocated().map(|f| f.inflight.iter_mut());
        for f in window.into_iter().flatten() {
            // Resent as copies below: no output queue names them any more.
            f.sent = true;
            match f.state {
                FlightState::Published => {
                    let expires_at = self.msgs.expires_at(f.msg.msg);
                    let Some(left) = time_left(expires_at, now.instant) else {
                        expired.push(f.packet_id);
                        continue;
                    };
                    f.msg.expiry_left = left;
                    let Some(p) = delivered_form(&self.msgs, &f.msg, Some(f.packet_id), true)
                    else {
                        continue;
                    };
                    let packet = Packet::Publish(p);
                    // [MQTT-3.1.2-25] the client came back with a smaller Maximum
                    // Packet Size: discarded as if its delivery had completed.
                    if !fits(&packet, c) {
                        too_large.push(f.packet_id);
                        continue;
                    }
                    packets.push(packet);
                }
                FlightState::Released => packets.push(Packet::PubRel(PubAck::new(f.packet_id))),
            }
        }
        for id in expired {
            self.stats.expired += 1;
            self.remove_inflight(sk, id);
        }
        for id in too_large {
            self.stats.dropped_too_large += 1;
            self.remove_inflight(sk, id);
        }
        // Resent once everything the store was told so far is durable (a message
        // whose packet id is not yet durable must not reach the receiver first;
        // see `push_flight`).
        for p in packets {
            self.push_ack(k, p, 0);
        }
    }
}
