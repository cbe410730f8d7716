//! Authentication and authorization hooks. The defaults accept everything.

use mqtt_proto::{ProtocolVersion, ReasonCode, TopicFilter, TopicName};

use crate::PeerInfo;

/// What the authentication hook is asked.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    /// The connection's transport details.
    pub peer: &'a PeerInfo,
    /// Protocol version of the CONNECT.
    pub protocol: ProtocolVersion,
    /// Client identifier as sent (may be empty).
    pub client_id: &'a str,
    /// User Name.
    pub username: Option<&'a str>,
    /// Password.
    pub password: Option<&'a [u8]>,
}

/// Accept with an authentication name (the owner of the session, Event Grid's
/// client authentication name), or refuse with a CONNACK reason code.
pub type AuthDecision = Result<Option<String>, ReasonCode>;

/// Decides who may connect.
pub trait Authenticator {
    /// Called for every CONNECT. The default hook accepts and names the session's
    /// owner after the User Name.
    fn authenticate(&mut self, request: &AuthRequest<'_>) -> AuthDecision;
}

/// Accepts every client; the authentication name is the User Name, if any.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&mut self, request: &AuthRequest<'_>) -> AuthDecision {
        Ok(request.username.map(str::to_owned))
    }
}

/// Who is asking, for authorization decisions.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// Authentication name from the authentication hook.
    pub authentication_name: Option<&'a str>,
}

/// Decides what a client may do. Every method defaults to "allowed".
pub trait Authorizer {
    /// May this client subscribe to `filter`? Refusal: SUBACK 0x87 (5.0) / 0x80 (3.1.1).
    fn may_subscribe(&mut self, _client: ClientInfo<'_>, _filter: &TopicFilter) -> bool {
        true
    }
    /// May this client publish to `topic` (also for its will and retained messages)?
    /// Refusal: PUBACK/PUBREC 0x87 (5.0); in 3.1.1 the message is acknowledged and
    /// dropped [MQTT-3.3.5-2].
    fn may_publish(&mut self, _client: ClientInfo<'_>, _topic: &TopicName, _retain: bool) -> bool {
        true
    }
}

impl Authorizer for AllowAll {}

/// Maps a refused authentication to what a 3.1.1 client can be told.
pub(crate) fn refusal_code(code: ReasonCode) -> ReasonCode {
    if code.is_success() {
        ReasonCode::NotAuthorized
    } else {
        code
    }
}
