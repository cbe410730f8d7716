//! SUBSCRIBE and UNSUBSCRIBE: checks, authorization, limits, retained messages on
//! subscribe.

use super::*;

impl Broker {
    pub(super) fn on_subscribe(&mut self, now: Now, k: ConnKey, sk: SessionKey, sub: Subscribe) {
        let mark = self.durability.emitted;
        let Some(c) = self.conns.get(k) else { return };
        let version = c.version;
        let v5 = version.is_v5();
        let sub_id = sub.properties.subscription_identifier;
        if sub_id.is_some() && !self.config.subscription_identifiers {
            return self.violation(now, k, ReasonCode::SubscriptionIdentifiersNotSupported);
        }
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut retained_for: Vec<(mqtt_proto::TopicFilter, QoS)> = Vec::new();
        for (filter, options) in sub.filters {
            let shared = filter.shared().is_some();
            let code = if filter.len() > self.config.max_topic_length
                || mqtt_proto::split_levels(filter.match_filter()).count()
                    > self.config.max_topic_levels
            {
                ReasonCode::TopicFilterInvalid
            } else if shared && !self.config.shared_subscriptions {
                ReasonCode::SharedSubscriptionsNotSupported
            } else if filter.has_wildcards() && !self.config.wildcard_subscriptions {
                ReasonCode::WildcardSubscriptionsNotSupported
            } else {
                let granted = self.subscribe_granted(sk, &filter);
                let Some(s) = self.sessions.get(sk) else {
                    return;
                };
                let allowed = granted
                    && self.authorizer.may_subscribe(
                        ClientInfo {
                            client_id: s.client_id.as_str(),
                            authentication_name: s.auth_name.as_deref(),
                            attributes: s.attributes.as_deref(),
                        },
                        &filter,
                    );
                let Some(s) = self.sessions.get(sk) else {
                    return;
                };
                let existed = s.subscriptions.contains(&filter);
                if !allowed {
                    self.stats.subscribe_not_authorized += 1;
                    ReasonCode::NotAuthorized
                } else if !existed
                    && (s.subscriptions.len() >= self.config.max_subscriptions_per_session
                        || self.router.len() >= self.config.max_subscriptions)
                {
                    self.stats.subscriptions_refused += 1;
                    ReasonCode::QuotaExceeded
                } else {
                    self.add_subscription(sk, filter.clone(), options, sub_id);
                    let send_retained = !shared
                        && match options.retain_handling {
                            RetainHandling::SendAtSubscribe => true,
                            RetainHandling::SendIfNew => !existed,
                            RetainHandling::DoNotSend => false,
                        };
                    if send_retained {
                        retained_for.push((filter, options.qos));
                    }
                    match options.qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                    }
                }
            };
            codes.push(code);
        }
        // MQTT 3.1 has no SUBACK failure code: a refused subscription closes the
        // connection rather than pretend it was granted.
        if version == ProtocolVersion::V3_1 && codes.iter().any(|c| !c.is_success()) {
            return self.violation(now, k, ReasonCode::NotAuthorized);
        }
        let first_failure = codes.iter().copied().find(|c| !c.is_success());
        let properties = match first_failure {
            Some(code) if v5 => self.ack_properties(k, code),
            _ => AckProperties::default(),
        };
        // A persistent session's SUBACK waits until its record is durable, and the
        // retained messages wait with it.
        self.store_session(now, sk);
        let sent = self.push_ack(
            k,
            Packet::SubAck(SubAck {
                packet_id: sub.packet_id,
                reason_codes: codes,
                properties,
            }),
            mark,
        );
        let retained = RetainedFor {
            filters: retained_for,
            sub_id,
        };
        if sent {
            self.send_retained(now, sk, retained);
        } else if !retained.filters.is_empty() {
            self.after_held_ack(retained);
        }
    }

    /// Retained messages for new subscriptions, after the SUBACK [MQTT-3.8.4-4],
    /// RETAIN set [MQTT-3.3.1-8]; expired ones are deleted rather than sent
    /// [MQTT-3.3.2-5].
    pub(super) fn send_retained(&mut self, now: Now, sk: SessionKey, retained: RetainedFor) {
        let RetainedFor { filters, sub_id } = retained;
        if !filters.is_empty() {
            self.expire_retained(now);
        }
        for (filter, granted) in filters {
            for (p, expires_at) in self.retained.matching(filter.match_filter()) {
                let qos = qos_min(p.qos, granted);
                let mut copies = RouteCopies::default();
                self.deliver(
                    now,
                    sk,
                    &p,
                    qos,
                    true,
                    sub_id.into_iter().collect(),
                    expires_at,
                    None,
                    &mut copies,
                );
                copies.release(&mut self.msgs);
            }
        }
    }
}

/// Retained messages due to a session for the filters of a SUBSCRIBE.
pub(crate) struct RetainedFor {
    filters: Vec<(mqtt_proto::TopicFilter, QoS)>,
    sub_id: Option<NonZeroU32>,
}

impl Broker {
    pub(super) fn add_subscription(
        &mut self,
        sk: SessionKey,
        filter: mqtt_proto::TopicFilter,
        options: mqtt_proto::SubscriptionOptions,
        id: Option<NonZeroU32>,
    ) {
        // The subscription outlives the SUBSCRIBE's read buffer: own the filter.
        let filter = mqtt_proto::TopicFilter::new(Bytes::copy_from_slice(filter.as_bytes()))
            .unwrap_or(filter);
        let (group, match_filter) = split_shared(&filter);
        self.route_subscribe(
            group.as_ref(),
            &match_filter,
            &filter,
            SubEntry {
                session: sk,
                options,
                id,
            },
        );
        if let Some(s) = self.sessions.get_mut(sk) {
            s.subscriptions.upsert(
                Subscription {
                    filter,
                    options,
                    id,
                },
                self.hash_keys,
            );
        }
    }

    pub(super) fn on_unsubscribe(&mut self, now: Now, k: ConnKey, sk: SessionKey, u: Unsubscribe) {
        let mark = self.durability.emitted;
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in u.filters {
            let Some(s) = self.sessions.get_mut(sk) else {
                return;
            };
            let code = match s.subscriptions.remove(&filter) {
                true => {
                    self.route_unsubscribe(&filter, sk);
                    ReasonCode::Success
                }
                false => ReasonCode::NoSubscriptionExisted,
            };
            codes.push(code);
        }
        let v5 = self.conns.get(k).is_some_and(|c| c.version.is_v5());
        self.store_session(now, sk);
        self.push_ack(
            k,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reason_codes: if v5 { codes } else { Vec::new() },
                properties: AckProperties::default(),
            }),
            mark,
        );
    }
}
