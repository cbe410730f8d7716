//! The bridge from the operator's config to the broker core: limits mapped onto
//! `broker_state::Config`, and the password file as the authentication hook.

use broker_state::{AuthDecision, AuthRequest, Authenticator};
use mqtt_proto::ReasonCode;

use crate::config::{Config, Limits};
use crate::passwd::PasswordFile;

/// The core's config: its defaults, with every limit the operator set applied
/// (the mapping is the limits table, [`crate::limits`]).
pub fn broker_config(limits: &Limits) -> broker_state::Config {
    let mut c = broker_state::Config::default();
    limits.apply_to(&mut c);
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
