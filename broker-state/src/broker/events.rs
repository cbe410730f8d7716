//! Lifecycle events (Event Grid's session connected / disconnected) and messages
//! the broker publishes itself.
//!
//! With `Config::lifecycle_events` on, `finish_connect` emits
//! [`Event::Lifecycle`] with [`LifecycleKind::Connected`] once CONNACK 0x00 is
//! queued, and every end of a connected session's connection emits one with
//! [`LifecycleKind::Disconnected`]: `detach` (client DISCONNECT, a violation or
//! another decision of the broker, keep-alive, takeover, a lost transport) and
//! `handle_shutdown`. Off, the only cost is the flag's test at those places.
//!
//! How an end maps onto Event Grid's `disconnectionReason`
//! ([`disconnection_reason`]):
//!
//! | how the connection ended | MQTT reason code | reason |
//! |---|---|---|
//! | the client sent DISCONNECT | any (0x00, 0x04, errors) | `ClientInitiatedDisconnect` |
//! | the transport closed without DISCONNECT | none | `ConnectionLost` |
//! | nothing received for 1.5 x Keep Alive | 0x8D | `ConnectionLost` |
//! | another connection took the session over | 0x8E | `SessionTakenOver` |
//! | re-authentication failed (any code) | its code | `ClientAuthenticationError` |
//! | credentials expired, bad credentials, banned, bad method | 0xA0, 0x86, 0x8A, 0x8C | `ClientAuthenticationError` |
//! | not authorized | 0x87 | `ClientAuthorizationError` |
//! | quota or rate exceeded | 0x97, 0x96, 0x9F | `QuotaExceeded` |
//! | the broker's own error (the store failed) | 0x80, 0x83 | `ServerError` |
//! | shutdown, busy, administrative action, another server | 0x8B, 0x89, 0x88, 0x98, 0x9C, 0x9D | `ServerInitiatedDisconnect` |
//! | a packet the client cannot take (its Maximum Packet Size) | 0x95 | `ClientError` |
//! | any other violation by the client (malformed, protocol error, topic alias, ...) | its code | `ClientError` |
//!
//! brokk never reports `IpForbidden` (it has no address filter) nor
//! `SessionOverflow` (an online session's queue drops its oldest QoS 1 message
//! instead of ending; an offline one has no connection to report).

use super::*;
use crate::event::{DisconnectionReason, LifecycleEvent, LifecycleKind};

/// How a connected session's connection ended, as the code that ends it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// The client sent DISCONNECT with this reason code.
    Client(ReasonCode),
    /// The broker ended it with this reason code (DISCONNECT to a 5.0 client).
    Server(ReasonCode),
    /// The transport closed without DISCONNECT.
    Lost,
}

/// Event Grid's reason for an end, and the MQTT reason code it carries.
/// `reauthenticating`: a re-authentication was under way when the broker ended
/// the connection (its failure is an authentication error, whatever the code).
pub(super) fn disconnection_reason(
    ending: Ending,
    reauthenticating: bool,
) -> (DisconnectionReason, Option<ReasonCode>) {
    use DisconnectionReason as R;
    let code = match ending {
        Ending::Client(code) => return (R::ClientInitiatedDisconnect, Some(code)),
        Ending::Lost => return (R::ConnectionLost, None),
        Ending::Server(code) => code,
    };
    if reauthenticating {
        return (R::ClientAuthenticationError, Some(code));
    }
    let reason = match code {
        ReasonCode::KeepAliveTimeout => R::ConnectionLost,
        ReasonCode::SessionTakenOver => R::SessionTakenOver,
        ReasonCode::MaximumConnectTime
        | ReasonCode::BadUserNameOrPassword
        | ReasonCode::Banned
        | ReasonCode::BadAuthenticationMethod => R::ClientAuthenticationError,
        ReasonCode::NotAuthorized => R::ClientAuthorizationError,
        ReasonCode::QuotaExceeded
        | ReasonCode::MessageRateTooHigh
        | ReasonCode::ConnectionRateExceeded => R::QuotaExceeded,
        ReasonCode::UnspecifiedError | ReasonCode::ImplementationSpecificError => R::ServerError,
        ReasonCode::ServerShuttingDown
        | ReasonCode::ServerBusy
        | ReasonCode::ServerUnavailable
        | ReasonCode::AdministrativeAction
        | ReasonCode::UseAnotherServer
        | ReasonCode::ServerMoved => R::ServerInitiatedDisconnect,
        _ => R::ClientError,
    };
    (reason, Some(code))
}

/// The lifecycle events' state: the last sequence number given out.
#[derive(Debug, Default)]
pub(super) struct LifecycleState {
    last_sequence: u64,
}

impl LifecycleState {
    /// The next sequence number at wall-clock time `unix_ms` (see
    /// [`LifecycleEvent::sequence_number`]).
    fn next_sequence(&mut self, unix_ms: u64) -> u64 {
        let next = self
            .last_sequence
            .saturating_add(1)
            .max(unix_ms.saturating_mul(1000));
        self.last_sequence = next;
        next
    }
}

impl Broker {
    /// Turns lifecycle events ([`Event::Lifecycle`]) on or off from now on, as
    /// `Config::lifecycle_events` does from the start (for an adapter that
    /// learns only after the core is built whether anyone wants them).
    pub fn set_lifecycle_events(&mut self, on: bool) {
        self.config.lifecycle_events = on;
    }

    /// Publishes a message from the broker itself (lifecycle events, and the
    /// like): routed as a client's QoS 1 PUBLISH with RETAIN 0 would be, to every
    /// matching subscription at the QoS it granted (so persistent sessions keep it
    /// while offline), but from no session: no publish authorization is asked
    /// (subscribers were authorized when they subscribed), and No Local excludes
    /// nobody. A topic starting with `$` (such as `$events/...`) reaches only
    /// filters that name its first level [MQTT-4.7.2-1]. The properties are sent
    /// as given (Subscription Identifiers and Topic Alias are the broker's to
    /// set per delivery and are cleared). Returns the subscriptions it matched.
    pub fn publish_from_broker(
        &mut self,
        now: Now,
        topic: TopicName,
        payload: Bytes,
        properties: mqtt_proto::PublishProperties,
    ) -> usize {
        let mut p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: None,
            properties,
            payload,
        };
        p.properties.subscription_identifiers = Vec::new();
        p.properties.topic_alias = None;
        let expires_at = p
            .properties
            .message_expiry_interval
            .map(|secs| now.instant + Duration::from_secs(u64::from(secs)));
        let routed = self.route(now, None, &p, expires_at);
        self.forward(&p, routed.shared);
        routed.matched
    }

    /// Emits the connected event of session `sk` on connection `k` (when they
    /// are on).
    pub(super) fn lifecycle_connected(
        &mut self,
        now: Now,
        k: ConnKey,
        sk: SessionKey,
        session_present: bool,
    ) {
        if self.config.lifecycle_events {
            self.emit_lifecycle(now, k, sk, LifecycleKind::Connected { session_present });
        }
    }

    /// Emits the disconnected event of session `sk`, whose connection `k` ended
    /// as `ending` (when they are on). Call before the session lets go of the
    /// connection: a re-authentication under way is read from the connection.
    pub(super) fn lifecycle_disconnected(
        &mut self,
        now: Now,
        k: ConnKey,
        sk: SessionKey,
        ending: Ending,
    ) {
        if !self.config.lifecycle_events {
            return;
        }
        let reauthenticating = self.conns.get(k).is_some_and(|c| c.reauthenticating);
        let (reason, reason_code) = disconnection_reason(ending, reauthenticating);
        let kind = LifecycleKind::Disconnected {
            reason,
            reason_code,
        };
        self.emit_lifecycle(now, k, sk, kind);
    }

    fn emit_lifecycle(&mut self, now: Now, k: ConnKey, sk: SessionKey, kind: LifecycleKind) {
        let Some(s) = self.sessions.get(sk) else {
            return;
        };
        let event = LifecycleEvent {
            kind,
            conn: conn_id(k),
            client_id: s.client_id.clone(),
            authentication_name: s.auth_name.clone(),
            sequence_number: self.lifecycle.next_sequence(now.unix_ms),
            unix_ms: now.unix_ms,
        };
        self.events.push_back(Event::Lifecycle(Box::new(event)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_grow_with_the_clock_and_without_it() {
        let mut state = LifecycleState::default();
        let first = state.next_sequence(1_700_000_000_000);
        assert_eq!(first, 1_700_000_000_000_000);
        // Same millisecond, and a clock that stepped back: one more each time.
        assert_eq!(state.next_sequence(1_700_000_000_000), first + 1);
        assert_eq!(state.next_sequence(1_600_000_000_000), first + 2);
        // The clock moved on: it leads again.
        assert_eq!(
            state.next_sequence(1_700_000_000_005),
            1_700_000_000_005_000
        );
        // Below 2^53 (exact as a JSON number) for centuries.
        let year_2250_ms = 8_835_000_000_000u64;
        assert!(LifecycleState::default().next_sequence(year_2250_ms) < 1 << 53);
    }

    #[test]
    fn every_end_maps_to_an_event_grid_reason() {
        use DisconnectionReason as R;
        let server = |code| disconnection_reason(Ending::Server(code), false).0;
        assert_eq!(
            disconnection_reason(Ending::Client(ReasonCode::UnspecifiedError), false),
            (
                R::ClientInitiatedDisconnect,
                Some(ReasonCode::UnspecifiedError)
            )
        );
        assert_eq!(
            disconnection_reason(Ending::Lost, false),
            (R::ConnectionLost, None)
        );
        assert_eq!(server(ReasonCode::KeepAliveTimeout), R::ConnectionLost);
        assert_eq!(server(ReasonCode::SessionTakenOver), R::SessionTakenOver);
        assert_eq!(
            server(ReasonCode::MaximumConnectTime),
            R::ClientAuthenticationError
        );
        assert_eq!(
            server(ReasonCode::NotAuthorized),
            R::ClientAuthorizationError
        );
        assert_eq!(
            disconnection_reason(Ending::Server(ReasonCode::NotAuthorized), true).0,
            R::ClientAuthenticationError
        );
        assert_eq!(server(ReasonCode::QuotaExceeded), R::QuotaExceeded);
        assert_eq!(server(ReasonCode::UnspecifiedError), R::ServerError);
        assert_eq!(
            server(ReasonCode::ServerShuttingDown),
            R::ServerInitiatedDisconnect
        );
        for code in [
            ReasonCode::ProtocolError,
            ReasonCode::MalformedPacket,
            ReasonCode::TopicAliasInvalid,
            ReasonCode::PacketTooLarge,
            ReasonCode::ReceiveMaximumExceeded,
            ReasonCode::RetainNotSupported,
            ReasonCode::SubscriptionIdentifiersNotSupported,
        ] {
            assert_eq!(server(code), R::ClientError, "{code}");
        }
    }
}
