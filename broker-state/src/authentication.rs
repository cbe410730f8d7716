//! Authentication as an exchange: the core asks, the adapter answers.
//!
//! Verifying a password (Argon2 takes ~13 ms and 19 MiB), a certificate chain, a
//! token or a webhook's opinion must not happen on the thread that routes
//! messages. So a CONNECT (or an AUTH of enhanced authentication or
//! re-authentication) that needs a decision becomes [`Event::Authenticate`]
//! carrying an [`AuthQuestion`]; the connection waits in a pending state, and the
//! answer comes back as [`Broker::handle_auth_answer`] (or [`Input::AuthAnswer`]).
//!
//! While a CONNECT waits for its answer:
//! - the connection's further input is not handled: the adapter stops reading it
//!   ([`Broker::is_authenticating`]); packets fed anyway are held (up to
//!   [`MAX_HELD_PACKETS`]) and handled after the CONNACK, in order;
//! - the connect timeout still runs; a close is clean; a late answer for a
//!   connection that is gone, or for a question no longer asked, is ignored;
//! - nothing else changes: a session it would take over stays with its current
//!   connection until the answer accepts the new one.
//!
//! With [`Broker::set_external_authentication`] off (the default) the synchronous
//! hooks ([`crate::Authenticator`], [`crate::EnhancedAuthenticator`]) answer at
//! once, through the same path: embedders and tests need no event loop for it.
//!
//! [`Event::Authenticate`]: crate::Event::Authenticate
//! [`Broker::handle_auth_answer`]: crate::Broker::handle_auth_answer
//! [`Broker::is_authenticating`]: crate::Broker::is_authenticating
//! [`Broker::set_external_authentication`]: crate::Broker::set_external_authentication
//! [`Input::AuthAnswer`]: crate::Input::AuthAnswer

use bytes::Bytes;
use mqtt_proto::{MqttString, ProtocolVersion};

use crate::{ConnId, PeerInfo};

/// Packets a connection may send after its CONNECT, before the answer to its
/// authentication comes, that the core holds for it (an adapter that stops reading
/// never gets near it). One more closes the connection.
pub const MAX_HELD_PACKETS: usize = 64;

/// Names one question: the connection it is about and which of its questions.
/// An answer with a ticket that is no longer current is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthTicket {
    pub(crate) conn: ConnId,
    pub(crate) seq: u32,
}

impl AuthTicket {
    /// A ticket that names no question: an answer quoting it is always ignored.
    /// For authenticators' own tests, which build questions by hand.
    pub fn detached() -> AuthTicket {
        AuthTicket {
            conn: ConnId {
                index: u32::MAX,
                generation: u32::MAX,
            },
            seq: 0,
        }
    }

    /// The connection the question is about.
    pub fn conn(self) -> ConnId {
        self.conn
    }
}

/// What the core asks about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthQuestion {
    /// Quote it in the answer.
    pub ticket: AuthTicket,
    /// The connection's transport details.
    pub peer: PeerInfo,
    /// Protocol version of the CONNECT.
    pub protocol: ProtocolVersion,
    /// Client identifier as sent (may be empty).
    pub client_id: MqttString,
    /// What there is to check.
    pub kind: AuthKind,
}

/// The credentials a question is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKind {
    /// A CONNECT without an Authentication Method: User Name and Password. The
    /// answer is [`crate::AuthStep::Success`] or [`crate::AuthStep::Failure`].
    Password {
        /// User Name.
        username: Option<MqttString>,
        /// Password.
        password: Option<Bytes>,
    },
    /// The first step of enhanced authentication (MQTT 5.0 section 4.12): from
    /// CONNECT, or from AUTH 0x19 when a connected client re-authenticates.
    Start {
        /// Authentication Method.
        method: MqttString,
        /// Authentication Data.
        data: Option<Bytes>,
        /// AUTH 0x19 (re-authentication) rather than CONNECT.
        reauthenticate: bool,
    },
    /// A further step of enhanced authentication: the client's AUTH 0x18.
    Step {
        /// Authentication Method.
        method: MqttString,
        /// Authentication Data.
        data: Option<Bytes>,
    },
}
