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

impl AuthStep {
    /// Success with this authentication name, no attributes, no end of validity
    /// and no Authentication Data.
    pub fn allow(authentication_name: Option<String>) -> Self {
        AuthStep::Success {
            data: None,
            authentication_name,
            attributes: None,
            valid_until_ms: None,
        }
    }
}

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
    /// The client's attributes from its authentication, if it has any.
    pub attributes: Option<&'a Attributes>,
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

/// The value of one of a client's attributes, as Event Grid's client resources
/// have them: a string, an integer or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttributeValue {
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A list of strings.
    StringList(Vec<String>),
}

/// A client's attributes by name (from its registration, its token's claims or a
/// webhook's answer); authorization's client groups query them.
pub type Attributes = std::collections::BTreeMap<String, AttributeValue>;

/// One step of enhanced authentication (MQTT 5.0 section 4.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send AUTH 0x18 (Continue authentication) with this Authentication Data and
    /// wait for the client's next AUTH.
    Continue(Option<bytes::Bytes>),
    /// Authenticated: CONNACK 0x00 (or AUTH 0x00 on re-authentication) with this
    /// final Authentication Data; the session's owner is `authentication_name`.
    Success {
        /// Final Authentication Data for the client, if the method has any.
        data: Option<bytes::Bytes>,
        /// The authentication name that owns the session.
        authentication_name: Option<String>,
        /// The client's attributes, for authorization.
        attributes: Option<std::sync::Arc<Attributes>>,
        /// When the credentials stop being valid (a token's `exp`), as wall-clock
        /// milliseconds since the Unix epoch: the connection is ended then unless a
        /// re-authentication renewed them (5.0 DISCONNECT 0xA0 Maximum connect
        /// time). Already past at CONNECT: refused with 0x87 Not authorized.
        valid_until_ms: Option<u64>,
    },
    /// Refused: CONNACK (or, on re-authentication, DISCONNECT) with this code,
    /// typically 0x87 Not authorized or 0x8C Bad authentication method.
    Failure(ReasonCode),
}

/// Enhanced authentication through AUTH packets: SCRAM, Kerberos, token exchanges
/// and the like. Without one, a CONNECT naming an Authentication Method is refused
/// with 0x8C [MQTT-4.12.0-1].
pub trait EnhancedAuthenticator {
    /// Whether the broker accepts this Authentication Method.
    fn supports(&self, method: &str) -> bool;
    /// The first step, with the Authentication Data of CONNECT, or of AUTH 0x19 when
    /// an authenticated client re-authenticates (`reauthenticate`).
    fn start(
        &mut self,
        method: &str,
        client_id: &str,
        data: Option<&[u8]>,
        reauthenticate: bool,
    ) -> AuthStep;
    /// A further step, with the Authentication Data of the client's AUTH 0x18.
    fn step(&mut self, method: &str, client_id: &str, data: Option<&[u8]>) -> AuthStep;
}
