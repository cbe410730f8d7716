//! Enhanced authentication and re-authentication (MQTT 5.0 section 4.12).

use mqtt_proto::{Auth, AuthProperties, Connect, MqttString, Packet, ReasonCode, ReasonContext};

use super::{Broker, EnhancedOutcome};
use crate::event::Now;
use crate::hooks::AuthStep;
use crate::ids::Key;
use crate::session::ConnState;

impl Broker {
    /// CONNECT: with an Authentication Method the exchange starts here; without one,
    /// straight on to the rest of CONNECT handling.
    pub(super) fn on_connect(&mut self, now: Now, k: Key, p: Connect) {
        // [MQTT-3.2.2-19] even a refusal must fit the client's Maximum Packet Size.
        if let (Some(c), Some(max)) = (self.conns.get_mut(k), p.properties.maximum_packet_size) {
            c.peer_max_packet = max.get();
        }
        let Some(method) = p.properties.authentication_method.clone() else {
            return self.finish_connect(now, k, p, None);
        };
        if let Some(c) = self.conns.get_mut(k) {
            c.version = p.protocol;
        }
        let supported = self
            .enhanced
            .as_ref()
            .is_some_and(|h| h.supports(method.as_str()));
        let Some(hook) = self.enhanced.as_mut().filter(|_| supported) else {
            // [MQTT-4.12.0-1] a method the server does not support.
            return self.refuse(k, ReasonCode::BadAuthenticationMethod);
        };
        let data = p.properties.authentication_data.as_deref();
        let step = hook.start(method.as_str(), p.client_id.as_str(), data, false);
        self.connect_step(now, k, p, method, step);
    }

    fn connect_step(&mut self, now: Now, k: Key, p: Connect, method: MqttString, step: AuthStep) {
        // The method agreed, also when the first step succeeds at once: the client
        // may re-authenticate with it later [MQTT-4.12.1-1].
        if !matches!(step, AuthStep::Failure(_)) {
            if let Some(c) = self.conns.get_mut(k) {
                c.auth_method = Some(method.clone());
            }
        }
        match step {
            AuthStep::Continue(data) => {
                if let Some(c) = self.conns.get_mut(k) {
                    c.pending_connect = Some(Box::new(p));
                }
                self.push_auth(k, ReasonCode::ContinueAuthentication, method, data);
            }
            AuthStep::Success {
                data,
                authentication_name,
            } => self.finish_connect(
                now,
                k,
                p,
                Some(EnhancedOutcome {
                    method,
                    data,
                    authentication_name,
                }),
            ),
            AuthStep::Failure(code) => self.refuse(k, failure_code(code, ReasonContext::ConnAck)),
        }
    }

    /// AUTH from the client: the next step of the CONNECT exchange, or
    /// re-authentication (0x19) and its steps once connected.
    pub(super) fn on_auth(&mut self, now: Now, k: Key, a: Auth) {
        let Some(c) = self.conns.get(k) else { return };
        let connected = matches!(c.state, ConnState::Active { .. });
        let agreed = c.auth_method.clone();
        let method = a.properties.authentication_method.clone();
        // [MQTT-4.12.0-1] no method agreed at CONNECT; [MQTT-4.12.0-5] the method
        // may not change.
        let (Some(agreed), true) = (agreed, method.is_some()) else {
            return self.violation(now, k, ReasonCode::ProtocolError);
        };
        if method.as_ref() != Some(&agreed) {
            return self.violation(now, k, ReasonCode::ProtocolError);
        }
        let data = a.properties.authentication_data.as_deref();
        let client_id = c.client_id.clone().unwrap_or_default();
        let pending = !connected && c.pending_connect.is_some();
        let reauth_running = connected && c.reauthenticating;
        let Some(hook) = self.enhanced.as_mut() else {
            return self.violation(now, k, ReasonCode::ProtocolError);
        };
        let step = match a.reason_code {
            ReasonCode::ContinueAuthentication if pending || reauth_running => {
                let id = match self.conns.get(k).and_then(|c| c.pending_connect.as_ref()) {
                    Some(p) => p.client_id.clone(),
                    None => client_id,
                };
                hook.step(agreed.as_str(), id.as_str(), data)
            }
            // [MQTT-4.12.1-1] re-authentication only once connected.
            ReasonCode::ReAuthenticate if connected && !reauth_running => {
                hook.start(agreed.as_str(), client_id.as_str(), data, true)
            }
            _ => return self.violation(now, k, ReasonCode::ProtocolError),
        };
        if pending {
            let Some(p) = self.conns.get_mut(k).and_then(|c| c.pending_connect.take()) else {
                return;
            };
            return self.connect_step(now, k, *p, agreed, step);
        }
        match step {
            AuthStep::Continue(data) => {
                if let Some(c) = self.conns.get_mut(k) {
                    c.reauthenticating = true;
                }
                self.push_auth(k, ReasonCode::ContinueAuthentication, agreed, data);
            }
            AuthStep::Success {
                data,
                authentication_name,
            } => {
                // Re-authentication renews the credentials of the session's owner; it
                // does not hand the session (its subscriptions, authorized for the
                // owner) to another name, nor give an unowned one an owner mid-way:
                // another name fails it [MQTT-4.12.1-2].
                let same_owner = self
                    .conns
                    .get(k)
                    .and_then(|c| c.session())
                    .and_then(|sk| self.sessions.get(sk))
                    .is_some_and(|s| s.auth_name == authentication_name);
                if !same_owner {
                    return self.violation(now, k, ReasonCode::NotAuthorized);
                }
                if let Some(c) = self.conns.get_mut(k) {
                    c.reauthenticating = false;
                }
                self.push_auth(k, ReasonCode::Success, agreed, data);
            }
            // [MQTT-4.12.1-2] a failed re-authentication disconnects.
            AuthStep::Failure(code) => {
                self.violation(now, k, failure_code(code, ReasonContext::Disconnect))
            }
        }
    }

    fn push_auth(
        &mut self,
        k: Key,
        code: ReasonCode,
        method: MqttString,
        data: Option<bytes::Bytes>,
    ) {
        self.push_out(
            k,
            Packet::Auth(Auth {
                reason_code: code,
                properties: AuthProperties {
                    authentication_method: Some(method),
                    authentication_data: data,
                    ..AuthProperties::default()
                },
            }),
        );
    }
}

/// A hook's failure code as CONNACK or DISCONNECT can carry it: a success code, or
/// one the packet's table lacks (0x86 Bad User Name or Password exists in CONNACK
/// only [MQTT-3.14.2.1]), is Not authorized; a peer would take any other code as a
/// malformed packet.
fn failure_code(code: ReasonCode, packet: ReasonContext) -> ReasonCode {
    if code.is_success() || !code.valid_in(packet) {
        ReasonCode::NotAuthorized
    } else {
        code
    }
}
