//! The bridge from the operator's config to the broker core: limits mapped onto
//! `broker_state::Config`, and the password file as the authentication hook.

use std::time::Duration;

use broker_state::{AuthDecision, AuthRequest, Authenticator, OverflowPolicy};
use mqtt_proto::ReasonCode;

use crate::config::{Config, Limits, OfflineOverflow};
use crate::passwd::PasswordFile;

/// The core's config: its defaults, with every limit the operator set applied.
pub fn broker_config(limits: &Limits) -> broker_state::Config {
    let mut c = broker_state::Config::default();
    let usize_of = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
    let usize_of64 = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    if let Some(v) = limits.max_packet_size {
        c.max_packet_size = v.get();
    }
    if let Some(v) = limits.max_keep_alive {
        c.max_keep_alive = v;
    }
    if let Some(v) = limits.connect_timeout_secs {
        c.connect_timeout = Duration::from_secs(v);
    }
    if let Some(v) = limits.max_connections {
        c.max_connections = usize_of(v);
    }
    if let Some(v) = limits.max_sessions {
        c.max_sessions = usize_of(v);
    }
    if let Some(v) = limits.max_subscriptions_per_session {
        c.max_subscriptions_per_session = usize_of(v);
    }
    if let Some(v) = limits.max_subscriptions {
        c.max_subscriptions = usize_of(v);
    }
    if let Some(v) = limits.max_retained_messages {
        c.max_retained_messages = usize_of(v);
    }
    if let Some(v) = limits.max_retained_bytes {
        c.max_retained_bytes = usize_of64(v);
    }
    if let Some(v) = limits.max_topic_length {
        c.max_topic_length = usize::from(v);
    }
    if let Some(v) = limits.max_topic_levels {
        c.max_topic_levels = usize::from(v);
    }
    if let Some(v) = limits.max_client_id_length {
        c.max_client_id_length = usize::from(v);
    }
    if let Some(v) = limits.max_user_properties {
        c.max_user_properties = usize::from(v);
    }
    if let Some(v) = limits.receive_maximum {
        c.receive_maximum = v.get();
    }
    if let Some(v) = limits.max_inflight_v3 {
        c.max_inflight_v3 = v.get();
    }
    if let Some(v) = limits.topic_alias_maximum {
        c.topic_alias_maximum = v;
    }
    if let Some(v) = limits.default_session_expiry_secs {
        c.default_session_expiry = v;
    }
    if let Some(v) = limits.max_session_expiry_secs {
        c.max_session_expiry = v;
    }
    if let Some(v) = limits.max_sessions_per_authentication_name {
        c.max_sessions_per_authentication_name = Some(usize_of(v));
    }
    if let Some(v) = limits.offline_queue_messages {
        c.offline_queue.messages = usize_of(v);
    }
    if let Some(v) = limits.offline_queue_bytes {
        c.offline_queue.bytes = usize_of64(v);
    }
    if let Some(v) = limits.online_queue_messages {
        c.online_queue.messages = usize_of(v);
    }
    if let Some(v) = limits.online_queue_bytes {
        c.online_queue.bytes = usize_of64(v);
    }
    if let Some(v) = limits.outbound_buffer_bytes {
        c.outbound_buffer_bytes = usize_of64(v);
    }
    if let Some(v) = limits.offline_overflow {
        c.offline_overflow = match v {
            OfflineOverflow::EndSession => OverflowPolicy::EndSession,
            OfflineOverflow::DropOldest => OverflowPolicy::DropOldest,
            OfflineOverflow::DropNewest => OverflowPolicy::DropNewest,
        };
    }
    if let Some(v) = &limits.response_information_prefix {
        c.response_information_prefix = Some(v.clone());
    }
    if let Some(v) = limits.retain_available {
        c.retain_available = v;
    }
    if let Some(v) = limits.wildcard_subscriptions {
        c.wildcard_subscriptions = v;
    }
    if let Some(v) = limits.shared_subscriptions {
        c.shared_subscriptions = v;
    }
    if let Some(v) = limits.subscription_identifiers {
        c.subscription_identifiers = v;
    }
    c
}

/// The authentication hook of the server: users from the password file, and
/// anonymous clients only where the config allows them.
pub struct PasswordAuthenticator {
    passwords: Option<PasswordFile>,
    allow_anonymous: bool,
}

impl PasswordAuthenticator {
    /// From the loaded config and password file.
    pub fn new(config: &Config, passwords: Option<PasswordFile>) -> Self {
        PasswordAuthenticator {
            passwords,
            allow_anonymous: config.anonymous_allowed(),
        }
    }
}

impl Authenticator for PasswordAuthenticator {
    fn authenticate(&mut self, request: &AuthRequest<'_>) -> AuthDecision {
        match (request.username, &self.passwords) {
            // `verify` spends the same time on unknown users as on known ones.
            (Some(user), Some(file)) => {
                let password = request.password.unwrap_or_default();
                if file.verify(user, password) {
                    Ok(Some(user.to_owned()))
                } else {
                    Err(ReasonCode::BadUserNameOrPassword)
                }
            }
            // No password file: the user name names the session's owner.
            (Some(user), None) if self.allow_anonymous => Ok(Some(user.to_owned())),
            (None, _) if self.allow_anonymous => Ok(None),
            _ => Err(ReasonCode::NotAuthorized),
        }
    }
}
