//! Authentication: CONNECT's decision, enhanced authentication and
//! re-authentication (MQTT 5.0 section 4.12), as questions and answers (see
//! [`crate::authentication`]).

use mqtt_proto::{Auth, AuthProperties, Connect, MqttString, Packet, ReasonCode, ReasonContext};

use super::{conn_id, key, Authenticated, Broker};
use crate::authentication::{AuthKind, AuthQuestion, AuthTicket, MAX_HELD_PACKETS};
use crate::event::{Acquired, ClusterOp, Event, Now};
use crate::hooks::{AuthRequest, AuthStep};
use crate::ids::ConnKey;
use crate::session::{ConnExtras, ConnState, PendingConnect};
use crate::timer::TimerKind;
use std::time::Instant;

impl Broker {
    /// CONNECT: the checks that need no decision, then the question (password, or
    /// the first step of the Authentication Method it names).
    pub(super) fn on_connect(&mut self, now: Now, k: ConnKey, p: Connect) {
        // [MQTT-3.2.2-19] even a refusal must fit the client's Maximum Packet Size.
        if let Some(c) = self.conns.get_mut(k) {
            if let Some(max) = p.properties.maximum_packet_size {
                c.peer_max_packet = max.get();
            }
            c.version = p.protocol;
        }
        let plan = match self.plan_connect(&p) {
            Ok(plan) => plan,
            Err(code) => return self.refuse(k, code),
        };
        let kind = match &p.properties.authentication_method {
            None => AuthKind::Password {
                username: p.username.clone(),
                password: p.password.clone(),
            },
            Some(method) => {
                // [MQTT-4.12.0-1] a method the server does not support. With external
                // authentication the adapter's answer says so.
                let supported = self.external_auth
                    || self
                        .enhanced
                        .as_ref()
                        .is_some_and(|h| h.supports(method.as_str()));
                if !supported {
                    return self.refuse(k, ReasonCode::BadAuthenticationMethod);
                }
                AuthKind::Start {
                    method: method.clone(),
                    data: p.properties.authentication_data.clone(),
                    reauthenticate: false,
                }
            }
        };
        let client_id = plan.client_id.clone();
        if let Some(c) = self.conns.get_mut(k) {
            c.pending_connect = Some(Box::new(PendingConnect {
                connect: p,
                plan,
                held: Vec::new(),
                authenticated: None,
            }));
        }
        self.ask(now, k, client_id, kind);
    }

    /// Asks who the client is: as `Event::Authenticate` with external
    /// authentication, else of the synchronous hooks, whose answer is handled at
    /// once.
    fn ask(&mut self, now: Now, k: ConnKey, client_id: MqttString, kind: AuthKind) {
        let seq = self.next_question();
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.auth_ticket = seq;
        if self.external_auth {
            let question = AuthQuestion {
                ticket: AuthTicket {
                    conn: conn_id(k),
                    seq,
                },
                peer: c.peer.clone(),
                protocol: c.version,
                client_id,
                kind,
            };
            self.events
                .push_back(Event::Authenticate(Box::new(question)));
            return;
        }
        let step = match kind {
            AuthKind::Password { username, password } => {
                let decision = self.authenticator.authenticate(&AuthRequest {
                    peer: &c.peer,
                    protocol: c.version,
                    client_id: client_id.as_str(),
                    username: username.as_ref().map(|u| u.as_str()),
                    password: password.as_deref(),
                });
                match decision {
                    Ok(authentication_name) => AuthStep::allow(authentication_name),
                    Err(code) => AuthStep::Failure(code),
                }
            }
            AuthKind::Start {
                method,
                data,
                reauthenticate,
            } => match self.enhanced.as_mut() {
                Some(hook) if hook.supports(method.as_str()) => hook.start(
                    method.as_str(),
                    client_id.as_str(),
                    data.as_deref(),
                    reauthenticate,
                ),
                _ => AuthStep::Failure(ReasonCode::BadAuthenticationMethod),
            },
            AuthKind::Step { method, data } => match self.enhanced.as_mut() {
                Some(hook) => hook.step(method.as_str(), client_id.as_str(), data.as_deref()),
                None => AuthStep::Failure(ReasonCode::ProtocolError),
            },
        };
        if let Some(c) = self.conns.get_mut(k) {
            c.auth_ticket = 0;
        }
        self.answer(now, k, step);
    }

    /// The answer to an authentication question ([`Event::Authenticate`]). An answer
    /// for a connection that is gone, or to a question no longer asked (it timed
    /// out, or the connection closed and its slot was reused), is ignored.
    ///
    /// [`Event::Authenticate`]: crate::Event::Authenticate
    pub fn handle_auth_answer(&mut self, now: Now, ticket: AuthTicket, answer: AuthStep) {
        if let Some(k) = self.take_question(ticket) {
            self.answer(now, k, answer);
        }
    }

    /// The number of a new question (authentication or acquisition), never 0.
    fn next_question(&mut self) -> u32 {
        self.auth_seq = self.auth_seq.wrapping_add(1).max(1);
        self.auth_seq
    }

    /// The connection whose current question `ticket` answers, which no
    /// longer waits for it; `None` for a connection that is gone or a
    /// question no longer asked.
    fn take_question(&mut self, ticket: AuthTicket) -> Option<ConnKey> {
        let k = key(ticket.conn);
        let c = self.conns.get_mut(k)?;
        if ticket.seq == 0 || c.auth_ticket != ticket.seq {
            return None;
        }
        c.auth_ticket = 0;
        Some(k)
    }

    fn answer(&mut self, now: Now, k: ConnKey, step: AuthStep) {
        let Some(c) = self.conns.get(k) else { return };
        match c.state {
            ConnState::AwaitingConnect { .. } => self.connect_answer(now, k, step),
            ConnState::Active { .. } => self.reauthentication_answer(now, k, step),
            ConnState::Closing { .. } => {}
        }
    }

    fn connect_answer(&mut self, now: Now, k: ConnKey, step: AuthStep) {
        let Some(pending) = self.conns.get_mut(k).and_then(|c| c.pending_connect.take()) else {
            return;
        };
        // The client id names the connection in the adapter's logs, also when the
        // answer refuses it.
        if let Some(c) = self.conns.get_mut(k) {
            if let ConnState::AwaitingConnect {
                client_id: id @ None,
            } = &mut c.state
            {
                *id = Some(Box::new(pending.plan.client_id.clone()));
            }
        }
        let method = pending.connect.properties.authentication_method.clone();
        // The method agreed, also when the first step succeeds at once: the client
        // may re-authenticate with it later [MQTT-4.12.1-1].
        if let (Some(c), Some(m), false) = (
            self.conns.get_mut(k),
            &method,
            matches!(step, AuthStep::Failure(_)),
        ) {
            c.extras.get_or_insert_with(Box::default).method = Some(m.clone());
        }
        match (step, method) {
            (AuthStep::Continue(data), Some(method)) => {
                if let Some(c) = self.conns.get_mut(k) {
                    c.pending_connect = Some(pending);
                }
                self.push_auth(k, ReasonCode::ContinueAuthentication, method, data);
            }
            // A password has no further steps.
            (AuthStep::Continue(_), None) => self.refuse(k, ReasonCode::NotAuthorized),
            (
                AuthStep::Success {
                    data,
                    authentication_name,
                    attributes,
                    valid_until_ms,
                },
                method,
            ) => {
                let Some(expires) = credentials_expiry(now, valid_until_ms) else {
                    return self.refuse(k, ReasonCode::NotAuthorized);
                };
                let PendingConnect {
                    connect,
                    plan,
                    held,
                    ..
                } = *pending;
                let enhanced = method.map(|m| (m, data));
                let auth = Authenticated {
                    authentication_name,
                    enhanced,
                    attributes,
                };
                if self.config.cluster {
                    return self.acquire(k, connect, plan, held, (auth, expires));
                }
                self.connect_authenticated(now, k, connect, plan, held, auth, expires);
            }
            (AuthStep::Failure(code), _) => {
                self.refuse(k, failure_code(code, ReasonContext::ConnAck))
            }
        }
    }

    /// CONNECT once its client is known: the session bound, CONNACK, then what
    /// the client sent after CONNECT, in order (unless it was refused).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn connect_authenticated(
        &mut self,
        now: Now,
        k: ConnKey,
        connect: Connect,
        plan: super::ConnectPlan,
        held: Vec<Packet>,
        auth: Authenticated,
        expires: Option<Instant>,
    ) {
        self.finish_connect(now, k, connect, plan, auth);
        if self.conns.get(k).is_some_and(|c| c.session().is_some()) {
            self.set_credentials_expiry(k, expires);
        }
        // What the client sent after CONNECT, in order, now that it is
        // connected (if it is: a refusal drops it).
        let conn = conn_id(k);
        for packet in held {
            if self.conns.get(k).is_none_or(|c| c.session().is_none()) {
                break;
            }
            self.handle_packet(now, conn, packet);
        }
    }

    /// On a node of a cluster: asks the cluster for the client's session
    /// ([`ClusterOp::Acquire`]) and waits, holding what the client sends, for
    /// [`Broker::handle_session_acquired`].
    fn acquire(
        &mut self,
        k: ConnKey,
        connect: Connect,
        plan: super::ConnectPlan,
        held: Vec<Packet>,
        authenticated: (Authenticated, Option<Instant>),
    ) {
        let seq = self.next_question();
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.auth_ticket = seq;
        let op = ClusterOp::Acquire {
            ticket: AuthTicket {
                conn: conn_id(k),
                seq,
            },
            client_id: plan.client_id.clone(),
            clean_start: connect.clean_start,
            authentication_name: authenticated.0.authentication_name.clone(),
        };
        c.pending_connect = Some(Box::new(PendingConnect {
            connect,
            plan,
            held,
            authenticated: Some(Box::new(authenticated)),
        }));
        self.events.push_back(Event::Cluster(op));
    }

    /// The cluster's answer to [`ClusterOp::Acquire`]: the CONNECT goes on
    /// with the session as the cluster kept it (restored here first when it
    /// was on another node, replacing any stale copy here), or is refused
    /// (0x88 when the cluster cannot be asked, 0x97 when the client's
    /// authentication name owns too many sessions in the cluster). An answer
    /// to a connection that is gone or to a question no longer asked is
    /// ignored.
    pub fn handle_session_acquired(&mut self, now: Now, ticket: AuthTicket, answer: Acquired) {
        // Its ticket is only ever given to a CONNECT that holds who the
        // client is (`acquire`).
        let Some(k) = self.take_question(ticket) else {
            return;
        };
        let Some(pending) = self.conns.get_mut(k).and_then(|c| c.pending_connect.take()) else {
            return;
        };
        let PendingConnect {
            connect,
            plan,
            held,
            authenticated,
        } = *pending;
        let Some(authenticated) = authenticated else {
            return;
        };
        let records = match answer {
            Acquired::Session(records) => records,
            Acquired::Unavailable => return self.refuse(k, ReasonCode::ServerUnavailable),
            Acquired::QuotaExceeded => return self.refuse(k, ReasonCode::QuotaExceeded),
        };
        if !records.is_empty() && !connect.clean_start {
            if let Some(sk) = self
                .by_client_id
                .get(&self.sessions, plan.client_id.as_bytes())
            {
                self.release_session(now, sk);
            }
            for op in records {
                self.handle_restore(now, op);
            }
            self.stats.cluster_sessions_moved += 1;
        }
        let (auth, expires) = *authenticated;
        self.connect_authenticated(now, k, connect, plan, held, auth, expires);
    }

    /// A packet that arrived while the answer to its connection's CONNECT is
    /// awaited: held, in order, up to [`MAX_HELD_PACKETS`].
    pub(super) fn hold(&mut self, k: ConnKey, packet: Packet) {
        let Some(pending) = self
            .conns
            .get_mut(k)
            .and_then(|c| c.pending_connect.as_mut())
        else {
            return;
        };
        if pending.held.len() >= MAX_HELD_PACKETS {
            // A client that floods before it is even accepted: no CONNACK will
            // reach it in time to matter.
            return self.close(k, ReasonCode::QuotaExceeded);
        }
        pending.held.push(packet);
    }

    /// AUTH from the client: the next step of the CONNECT exchange, or
    /// re-authentication (0x19) and its steps once connected.
    pub(super) fn on_auth(&mut self, now: Now, k: ConnKey, a: Auth) {
        let Some(c) = self.conns.get(k) else { return };
        let connected = matches!(c.state, ConnState::Active { .. });
        let agreed = c.extras.as_ref().and_then(|a| a.method.clone());
        let method = a.properties.authentication_method.clone();
        // [MQTT-4.12.0-1] no method agreed at CONNECT; [MQTT-4.12.0-5] the method
        // may not change; and no AUTH while the server has not answered the last.
        let (Some(agreed), true, false) = (agreed, method.is_some(), c.awaiting_answer()) else {
            return self.violation(now, k, ReasonCode::ProtocolError);
        };
        if method.as_ref() != Some(&agreed) {
            return self.violation(now, k, ReasonCode::ProtocolError);
        }
        let data = a.properties.authentication_data;
        let pending = !connected && c.pending_connect.is_some();
        let reauth_running = connected && c.reauthenticating;
        let client_id = match &c.pending_connect {
            Some(p) => p.plan.client_id.clone(),
            None => c.client_id(&self.sessions).cloned().unwrap_or_default(),
        };
        let kind = match a.reason_code {
            ReasonCode::ContinueAuthentication if pending || reauth_running => AuthKind::Step {
                method: agreed,
                data,
            },
            // [MQTT-4.12.1-1] re-authentication only once connected.
            ReasonCode::ReAuthenticate if connected && !reauth_running => {
                if let Some(c) = self.conns.get_mut(k) {
                    c.reauthenticating = true;
                }
                AuthKind::Start {
                    method: agreed,
                    data,
                    reauthenticate: true,
                }
            }
            _ => return self.violation(now, k, ReasonCode::ProtocolError),
        };
        self.ask(now, k, client_id, kind);
    }

    fn reauthentication_answer(&mut self, now: Now, k: ConnKey, step: AuthStep) {
        let Some(agreed) = self
            .conns
            .get(k)
            .and_then(|c| c.extras.as_ref()?.method.clone())
        else {
            return;
        };
        match step {
            AuthStep::Continue(data) => {
                self.push_auth(k, ReasonCode::ContinueAuthentication, agreed, data);
            }
            AuthStep::Success {
                data,
                authentication_name,
                attributes,
                valid_until_ms,
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
                // Renewed credentials: their own end of validity, and attributes.
                let Some(expires) = credentials_expiry(now, valid_until_ms) else {
                    return self.violation(now, k, ReasonCode::NotAuthorized);
                };
                let session = self.conns.get_mut(k).and_then(|c| {
                    c.reauthenticating = false;
                    c.session()
                });
                if let Some(sk) = session {
                    // New attributes may mean other permissions.
                    let changed = self
                        .sessions
                        .get(sk)
                        .is_some_and(|s| s.attributes != attributes);
                    if let Some(s) = self.sessions.get_mut(sk) {
                        s.attributes = attributes;
                    }
                    if changed {
                        self.reauthorize_session(now, sk);
                    }
                }
                self.set_credentials_expiry(k, expires);
                self.push_auth(k, ReasonCode::Success, agreed, data);
            }
            // [MQTT-4.12.1-2] a failed re-authentication disconnects.
            AuthStep::Failure(code) => {
                self.violation(now, k, failure_code(code, ReasonContext::Disconnect))
            }
        }
    }

    /// Ends the connection at `expires` (or never): its one timer entry is moved
    /// earlier if it would fire later (`check_connection` ends it).
    fn set_credentials_expiry(&mut self, k: ConnKey, expires: Option<Instant>) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        match (&mut c.extras, expires) {
            (Some(a), _) => a.expires = expires,
            (None, None) => return,
            (slot @ None, Some(_)) => {
                *slot = Some(Box::new(ConnExtras {
                    expires,
                    ..ConnExtras::default()
                }))
            }
        }
        if let Some(at) = expires {
            if c.timer_at.is_none_or(|t| t > at) {
                c.timer_at = Some(at);
                self.timers.schedule(at, TimerKind::Conn(k));
            }
        }
    }

    fn push_auth(
        &mut self,
        k: ConnKey,
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

/// When credentials valid until `valid_until_ms` (wall clock) expire on the
/// monotonic clock: `Some(None)` never, `None` already.
fn credentials_expiry(now: Now, valid_until_ms: Option<u64>) -> Option<Option<Instant>> {
    match valid_until_ms {
        None => Some(None),
        Some(ms) if ms <= now.unix_ms => None,
        Some(ms) => Some(Some(
            now.instant + core::time::Duration::from_millis(ms - now.unix_ms),
        )),
    }
}

/// A failure code as CONNACK or DISCONNECT can carry it: a success code, or one
/// the packet's table lacks (0x86 Bad User Name or Password exists in CONNACK only
/// [MQTT-3.14.2.1]), is Not authorized; a peer would take any other code as a
/// malformed packet.
pub(crate) fn failure_code(code: ReasonCode, packet: ReasonContext) -> ReasonCode {
    if code.is_success() || !code.valid_in(packet) {
        ReasonCode::NotAuthorized
    } else {
        code
    }
}
