//! The authentication webhook, in Event Grid's format.
//!
//! With `[authentication.webhook]` configured, the broker asks an HTTP endpoint who
//! each connecting client is, as Azure Event Grid's MQTT broker does for "custom
//! webhook authentication". [`Webhook::ask`] blocks: it runs on an authentication
//! worker, never on the broker's thread, and the caller bounds how many run at once.
//!
//! # The request
//!
//! `POST <url>` with `Content-Type: application/json` and a JSON object:
//!
//! | field                    | value                                                  |
//! |--------------------------|--------------------------------------------------------|
//! | `clientId`               | the client identifier (always present, maybe `""`)     |
//! | `userName`               | the CONNECT user name                                  |
//! | `password`               | the CONNECT password, base64 (standard, padded)        |
//! | `authenticationMethod`   | the MQTT 5.0 authentication method                     |
//! | `authenticationData`     | the MQTT 5.0 authentication data, base64               |
//! | `clientCertificate`      | the client's TLS certificate (the leaf), PEM           |
//! | `clientCertificateChain` | the rest of the chain the client sent, PEMs one after another |
//! | `remoteAddress`          | the client's address, `ip:port` (always present)       |
//!
//! A value the client did not send is **omitted** (never `null`): no user name, no
//! password, no certificate, or a certificate without intermediates (no
//! `clientCertificateChain`). PEM blocks are `-----BEGIN CERTIFICATE-----`, base64 in
//! lines of 64 characters, `-----END CERTIFICATE-----`, each line ending in `\n`.
//!
//! # The answer
//!
//! Only HTTP 200 with a JSON object (at most [`MAX_ANSWER`] bytes) is an answer:
//!
//! - `{"decision": "allow", "clientAuthenticationName": "...", "attributes": {...},
//!   "expiration": ...}`: the client is who the name says. `attributes` (optional)
//!   maps names to a string, an integer (`i64`) or an array of strings.
//!   `expiration` (optional) is when the authentication ends, either Unix seconds (a
//!   non-negative JSON integer) or an RFC 3339 UTC time in exactly the form
//!   `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)` (upper-case `T` and `Z`; the fraction
//!   is truncated; no leap second; parsed here, no date crate is involved). An allow
//!   whose expiration is not after `now` becomes a deny with the reason `"expired"`.
//! - `{"decision": "deny", "errorReason": "..."}`: the client is refused ("Not
//!   authorized"); a missing `errorReason` is an empty reason.
//!
//! The decision is matched ignoring ASCII case (`"Allow"` is `"allow"`); fields this
//! module does not know are ignored, and `null` counts as absent for the optional
//! ones. Redirects are not followed (a 3xx is an error).
//!
//! # Errors
//!
//! Everything else is a [`WebhookError`], which the broker answers with "Server
//! unavailable" (the client may retry), never with "Not authorized":
//!
//! - [`WebhookError::Timeout`]: no complete answer within `timeout_ms` (connecting,
//!   sending, the status line and the body all count against one deadline; name
//!   resolution does not, a limit of the HTTP client: prefer an IP address or a
//!   fast resolver).
//! - [`WebhookError::Status`]: any status but 200.
//! - [`WebhookError::Transport`]: no connection, TLS failure, a broken response.
//! - [`WebhookError::Malformed`]: not JSON, not an object, an unknown decision, an
//!   allow without a non-empty `clientAuthenticationName`, an attribute or an
//!   expiration of another type, a body larger than [`MAX_ANSWER`].
//!
//! # Caching
//!
//! An allow is remembered until its expiration, or for [`CACHE_TTL`] when it has
//! none, under a digest of every credential in the request: client identifier, user
//! name, password, authentication method and data, and the certificates (not the
//! remote address). The digest is SipHash-1-3 (128 bits) keyed with the secret given
//! to [`Webhook::new`], each field length-prefixed and marked present or absent, so
//! the cache holds nothing an attacker could test passwords against offline. The same
//! credentials within that time get the same allow without an HTTP request; denies,
//! expired allows and errors are never remembered. The cache holds at most
//! [`CACHE_MAX`] entries: when full, expired entries are dropped, and if that frees
//! nothing it starts over. Its lock is never held during an HTTP request; two workers
//! asking for the same new credentials at once both ask the webhook.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hasher;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use broker_state::{AttributeValue, Attributes};
use serde_json::{Map, Value};
use siphasher::sip128::{Hasher128, SipHasher13};

/// The timeout when the config gives none, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;

/// The largest timeout the config accepts, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// How long an allow without an expiration is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// Allows remembered at most; beyond it the cache drops expired ones or starts over.
pub const CACHE_MAX: usize = 100_000;

/// The largest answer body read, in bytes; a longer one is [`WebhookError::Malformed`].
pub const MAX_ANSWER: usize = 64 * 1024;

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// `[authentication.webhook]`: where the webhook is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// The endpoint, `http://` or `https://` (server certificates are checked
    /// against the Mozilla roots).
    pub url: String,
    /// The deadline for one request, from connecting to the end of the answer, in
    /// milliseconds: 1 to [`MAX_TIMEOUT_MS`], default [`DEFAULT_TIMEOUT_MS`].
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Webhook calls waiting for their answer at once, at most: 1 to
    /// [`MAX_IN_FLIGHT`], default [`DEFAULT_IN_FLIGHT`]. They wait on I/O, not on a
    /// CPU, so they have a bound of their own, apart from password and token
    /// checks: a slow webhook delays only the logins it is asked about.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
}

/// Webhook calls in flight at once by default.
pub const DEFAULT_IN_FLIGHT: usize = 64;
/// The most `max_in_flight` may be.
pub const MAX_IN_FLIGHT: usize = 1024;

fn default_in_flight() -> usize {
    DEFAULT_IN_FLIGHT
}

impl WebhookSettings {
    /// Checks the settings: the URL must be an `http://` or `https://` URL with a
    /// host, the timeout within 1..=[`MAX_TIMEOUT_MS`] ms. The error says what is
    /// wrong, for the config's error message.
    pub fn validate(&self) -> Result<(), String> {
        let scheme_ok = ["http://", "https://"].iter().any(|scheme| {
            self.url.len() > scheme.len()
                && self.url.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        });
        if !scheme_ok {
            return Err(format!(
                "url must start with http:// or https://, not {:?}",
                self.url
            ));
        }
        // ureq's own parser, so that whatever passes here can be requested.
        match ureq::request("POST", &self.url).request_url() {
            Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {}
            Ok(url) => return Err(format!("url has the unsupported scheme {}", url.scheme())),
            Err(error) => return Err(format!("url {:?} is not a valid URL: {error}", self.url)),
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(format!(
                "timeout_ms must be within 1..={MAX_TIMEOUT_MS}, not {}",
                self.timeout_ms
            ));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(format!(
                "max_in_flight must be within 1..={MAX_IN_FLIGHT}, not {}",
                self.max_in_flight
            ));
        }
        Ok(())
    }
}

/// What the webhook is told about a connecting client. Borrowed from the CONNECT
/// packet and the connection.
#[derive(Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// The client identifier.
    pub client_id: &'a str,
    /// The CONNECT user name.
    pub username: Option<&'a str>,
    /// The CONNECT password.
    pub password: Option<&'a [u8]>,
    /// The MQTT 5.0 authentication method.
    pub authentication_method: Option<&'a str>,
    /// The MQTT 5.0 authentication data.
    pub authentication_data: Option<&'a [u8]>,
    /// The client's TLS certificates, DER, the leaf first; empty without one.
    pub certificates: &'a [bytes::Bytes],
    /// The client's address, `ip:port`.
    pub remote: &'a str,
}

impl fmt::Debug for WebhookRequest<'_> {
    /// Leaves the password and the authentication data out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookRequest")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field("authentication_method", &self.authentication_method)
            .field(
                "authentication_data",
                &self.authentication_data.map(|_| "<redacted>"),
            )
            .field("certificates", &self.certificates.len())
            .field("remote", &self.remote)
            .finish()
    }
}

impl WebhookRequest<'_> {
    /// The JSON body sent to the webhook (see the module's documentation).
    pub fn to_json(&self) -> String {
        let mut body = Map::new();
        body.insert("clientId".into(), self.client_id.into());
        if let Some(username) = self.username {
            body.insert("userName".into(), username.into());
        }
        if let Some(password) = self.password {
            body.insert("password".into(), BASE64.encode(password).into());
        }
        if let Some(method) = self.authentication_method {
            body.insert("authenticationMethod".into(), method.into());
        }
        if let Some(data) = self.authentication_data {
            body.insert("authenticationData".into(), BASE64.encode(data).into());
        }
        if let Some((leaf, chain)) = self.certificates.split_first() {
            body.insert("clientCertificate".into(), pem(leaf).into());
            if !chain.is_empty() {
                let chain: String = chain.iter().map(|der| pem(der)).collect();
                body.insert("clientCertificateChain".into(), chain.into());
            }
        }
        body.insert("remoteAddress".into(), self.remote.into());
        Value::Object(body).to_string()
    }

    /// The keyed digest of every credential (not the remote address): each field
    /// marked present or absent and length-prefixed, so no two requests that differ
    /// share their input.
    fn digest(&self, key: (u64, u64)) -> u128 {
        fn field(h: &mut SipHasher13, value: Option<&[u8]>) {
            match value {
                None => h.write_u8(0),
                Some(bytes) => {
                    h.write_u8(1);
                    h.write(&(bytes.len() as u64).to_le_bytes());
                    h.write(bytes);
                }
            }
        }
        let mut h = SipHasher13::new_with_keys(key.0, key.1);
        field(&mut h, Some(self.client_id.as_bytes()));
        field(&mut h, self.username.map(str::as_bytes));
        field(&mut h, self.password);
        field(&mut h, self.authentication_method.map(str::as_bytes));
        field(&mut h, self.authentication_data);
        h.write(&(self.certificates.len() as u64).to_le_bytes());
        for certificate in self.certificates {
            field(&mut h, Some(certificate));
        }
        h.finish128().as_u128()
    }
}

/// A DER certificate as a PEM block, lines of 64 characters, each ending in `\n`.
fn pem(der: &[u8]) -> String {
    let encoded = BASE64.encode(der);
    let mut pem = String::with_capacity(encoded.len() + encoded.len() / 64 + 60);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    let mut column = 0;
    for c in encoded.chars() {
        pem.push(c);
        column += 1;
        if column == 64 {
            pem.push('\n');
            column = 0;
        }
    }
    if column > 0 {
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// What the webhook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookDecision {
    /// The client may connect.
    Allow {
        /// Who the client is (`clientAuthenticationName`), never empty.
        authentication_name: String,
        /// Its attributes, for authorization.
        attributes: broker_state::Attributes,
        /// When its authentication ends, Unix seconds; always after the `now` the
        /// answer was checked against.
        expiration_unix: Option<u64>,
    },
    /// The client is refused ("Not authorized").
    Deny {
        /// The webhook's `errorReason` (maybe empty), or `"expired"` for an allow
        /// whose expiration had passed.
        reason: String,
    },
}

/// Why the webhook gave no decision; the client is answered "Server unavailable".
#[derive(Debug)]
pub enum WebhookError {
    /// No complete answer within the timeout.
    Timeout,
    /// An HTTP status other than 200.
    Status(u16),
    /// No connection, a TLS failure, a broken HTTP response.
    Transport(String),
    /// An answer that is not a decision in the expected format.
    Malformed(String),
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookError::Timeout => write!(f, "the authentication webhook timed out"),
            WebhookError::Status(status) => {
                write!(
                    f,
                    "the authentication webhook answered HTTP status {status}"
                )
            }
            WebhookError::Transport(error) => {
                write!(f, "the authentication webhook is unreachable: {error}")
            }
            WebhookError::Malformed(error) => {
                write!(
                    f,
                    "the authentication webhook's answer is malformed: {error}"
                )
            }
        }
    }
}

impl std::error::Error for WebhookError {}

/// A remembered allow.
struct Cached {
    authentication_name: String,
    attributes: Attributes,
    expiration_unix: Option<u64>,
    /// Unix seconds; the entry is used while `now < until`.
    until: u64,
}

/// The authentication webhook's client: the HTTP agent (its connections are kept
/// alive and reused), the cache of allows, the count of requests. Shared by the
/// authentication workers (`Send + Sync`).
pub struct Webhook {
    settings: WebhookSettings,
    agent: ureq::Agent,
    key: (u64, u64),
    cache: Mutex<HashMap<u128, Cached>>,
    calls: AtomicU64,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("settings", &self.settings)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// A client for the webhook at `settings.url` (validated by
    /// [`WebhookSettings::validate`] beforehand; an invalid URL makes every request a
    /// [`WebhookError::Transport`]). `key` is the secret of the cache's digests,
    /// drawn at random at start.
    pub fn new(settings: WebhookSettings, key: (u64, u64)) -> Webhook {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(settings.timeout_ms.max(1)))
            .redirects(0)
            .user_agent(concat!("brokk/", env!("CARGO_PKG_VERSION")))
            .build();
        Webhook {
            settings,
            agent,
            key,
            cache: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        }
    }

    /// The settings this client was made with.
    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// Asks the webhook (blocking, up to the timeout), or answers from the cache: an
    /// allow is remembered until its expiration (or, without one, for
    /// [`CACHE_TTL`]), keyed by a keyed digest of every credential of the request
    /// (client identifier, user name, password, authentication method and data,
    /// certificates), so the same credentials do not ask again; denies and errors are
    /// not remembered. An allow whose expiration is not after `now_unix` is answered
    /// as a deny with the reason `"expired"`. `now_unix`: wall-clock seconds since
    /// the Unix epoch.
    pub fn ask(
        &self,
        request: &WebhookRequest<'_>,
        now_unix: u64,
    ) -> Result<WebhookDecision, WebhookError> {
        let digest = request.digest(self.key);
        {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(cached) = cache.get(&digest) {
                if now_unix < cached.until {
                    return Ok(WebhookDecision::Allow {
                        authentication_name: cached.authentication_name.clone(),
                        attributes: cached.attributes.clone(),
                        expiration_unix: cached.expiration_unix,
                    });
                }
                cache.remove(&digest);
            }
        }
        let body = self.post(&request.to_json())?;
        let decision = parse_answer(&body, now_unix)?;
        if let WebhookDecision::Allow {
            authentication_name,
            attributes,
            expiration_unix,
        } = &decision
        {
            let ttl = CACHE_TTL.as_secs();
            let until = expiration_unix.unwrap_or_else(|| now_unix.saturating_add(ttl));
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, cached| now_unix < cached.until);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(
                digest,
                Cached {
                    authentication_name: authentication_name.clone(),
                    attributes: attributes.clone(),
                    expiration_unix: *expiration_unix,
                    until,
                },
            );
        }
        Ok(decision)
    }

    /// How many HTTP requests were made (answered or not), for tests and metrics.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Forgets every remembered allow (tests; a reload builds a new webhook client
    /// with an empty cache).
    #[cfg(test)]
    fn clear_cache(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// One HTTP request: the body of a 200 answer, at most [`MAX_ANSWER`] bytes.
    fn post(&self, body: &str) -> Result<Vec<u8>, WebhookError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let response = self
            .agent
            .post(&self.settings.url)
            .set("Content-Type", "application/json")
            .set("Accept", "application/json")
            .send_string(body)
            .map_err(|error| match error {
                ureq::Error::Status(status, _) => WebhookError::Status(status),
                ureq::Error::Transport(transport) => transport_error(&transport),
            })?;
        if response.status() != 200 {
            return Err(WebhookError::Status(response.status()));
        }
        let mut answer = Vec::new();
        response
            .into_reader()
            .take(MAX_ANSWER as u64 + 1)
            .read_to_end(&mut answer)
            .map_err(|error| {
                if is_timeout(&error) {
                    WebhookError::Timeout
                } else {
                    WebhookError::Transport(format!("reading the answer: {error}"))
                }
            })?;
        if answer.len() > MAX_ANSWER {
            return Err(WebhookError::Malformed(format!(
                "the answer is larger than {MAX_ANSWER} bytes"
            )));
        }
        Ok(answer)
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// A timeout anywhere in the error's chain is a [`WebhookError::Timeout`]; the rest
/// is described without the URL (it may carry a secret in its query).
fn transport_error(transport: &ureq::Transport) -> WebhookError {
    let mut source: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(transport);
    while let Some(error) = source {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(is_timeout)
        {
            return WebhookError::Timeout;
        }
        source = error.source();
    }
    let mut text = transport.kind().to_string();
    if let Some(message) = transport.message() {
        text.push_str(": ");
        text.push_str(message);
    }
    if let Some(source) = std::error::Error::source(transport) {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    WebhookError::Transport(text)
}

fn malformed(text: impl Into<String>) -> WebhookError {
    WebhookError::Malformed(text.into())
}

/// The decision in a 200 answer's body, checked against `now_unix`.
fn parse_answer(body: &[u8], now_unix: u64) -> Result<WebhookDecision, WebhookError> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|error| malformed(format!("not JSON: {error}")))?;
    let Value::Object(answer) = answer else {
        return Err(malformed("not a JSON object"));
    };
    let decision = match answer.get("decision") {
        Some(Value::String(decision)) => decision,
        Some(_) => return Err(malformed("\"decision\" is not a string")),
        None => return Err(malformed("no \"decision\"")),
    };
    if decision.eq_ignore_ascii_case("deny") {
        let reason = match answer.get("errorReason") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(reason)) => reason.clone(),
            Some(_) => return Err(malformed("\"errorReason\" is not a string")),
        };
        return Ok(WebhookDecision::Deny { reason });
    }
    if !decision.eq_ignore_ascii_case("allow") {
        return Err(malformed(format!("unknown decision {decision:?}")));
    }
    let authentication_name = match answer.get("clientAuthenticationName") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) => return Err(malformed("\"clientAuthenticationName\" is empty")),
        Some(Value::Null) | None => {
            return Err(malformed("an allow without \"clientAuthenticationName\""))
        }
        Some(_) => return Err(malformed("\"clientAuthenticationName\" is not a string")),
    };
    let attributes = match answer.get("attributes") {
        None | Some(Value::Null) => Attributes::new(),
        Some(Value::Object(attributes)) => attributes
            .iter()
            .map(|(name, value)| Ok((name.clone(), attribute(name, value)?)))
            .collect::<Result<Attributes, WebhookError>>()?,
        Some(_) => return Err(malformed("\"attributes\" is not an object")),
    };
    let expiration_unix = match answer.get("expiration") {
        None | Some(Value::Null) => None,
        Some(Value::Number(seconds)) => Some(seconds.as_u64().ok_or_else(|| {
            malformed(format!(
                "\"expiration\" {seconds} is not a non-negative integer of seconds"
            ))
        })?),
        Some(Value::String(time)) => Some(parse_rfc3339_utc(time).ok_or_else(|| {
            malformed(format!(
                "\"expiration\" {time:?} is not a UTC time like 2026-12-07T12:00:00Z"
            ))
        })?),
        Some(_) => return Err(malformed("\"expiration\" is neither a number nor a string")),
    };
    if expiration_unix.is_some_and(|expiration| expiration <= now_unix) {
        return Ok(WebhookDecision::Deny {
            reason: "expired".to_owned(),
        });
    }
    Ok(WebhookDecision::Allow {
        authentication_name,
        attributes,
        expiration_unix,
    })
}

/// One attribute: a string, an integer that fits `i64`, or an array of strings.
fn attribute(name: &str, value: &Value) -> Result<AttributeValue, WebhookError> {
    match value {
        Value::String(text) => Ok(AttributeValue::String(text.clone())),
        Value::Number(number) => number.as_i64().map(AttributeValue::Integer).ok_or_else(|| {
            malformed(format!(
                "attribute {name:?}: {number} is not a 64-bit integer"
            ))
        }),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                _ => Err(malformed(format!(
                    "attribute {name:?}: an array of other than strings"
                ))),
            })
            .collect::<Result<Vec<String>, WebhookError>>()
            .map(AttributeValue::StringList),
        _ => Err(malformed(format!(
            "attribute {name:?} is not a string, an integer or an array of strings"
        ))),
    }
}

/// Unix seconds of an RFC 3339 time in exactly the form
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`, from 1970 to 9999, the fraction
/// truncated. Anything else (another offset, lower-case `t`/`z`, a leap second, an
/// impossible date) is `None`.
fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = &b[range];
        digits.iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
        })
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let mut rest = &b[19..];
    if let Some((b'.', fraction)) = rest.split_first() {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    if rest != b"Z" && rest != b"+00:00" {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil, years from March).
    let y = if month <= 2 { year - 1 } else { year };
    let (era, year_of_era) = (y / 400, y % 400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::thread;
    use std::time::Instant;

    /// One request the test server received.
    #[derive(Debug, Clone)]
    struct Recorded {
        head: String,
        body: Vec<u8>,
    }

    impl Recorded {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("the request body is JSON")
        }
    }

    /// A loopback HTTP/1.1 server: reads each request's head and Content-Length body,
    /// records it, then writes what `respond` returns and closes; `None` never
    /// answers (the connection stays open until the client gives up).
    struct Server {
        url: String,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl Server {
        fn start(respond: impl Fn(&Recorded) -> Option<String> + Send + 'static) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!(
                "http://{}/authenticate",
                listener.local_addr().expect("addr")
            );
            let requests = Arc::new(Mutex::new(Vec::new()));
            let recorded = Arc::clone(&requests);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let Some(request) = read_request(&mut stream) else {
                        continue;
                    };
                    recorded.lock().expect("lock").push(request.clone());
                    match respond(&request) {
                        Some(response) => {
                            let _ = stream.write_all(response.as_bytes());
                        }
                        None => {
                            // Hold the connection until the client closes it.
                            let _ = stream.read_to_end(&mut Vec::new());
                        }
                    }
                }
            });
            Server { url, requests }
        }

        fn answering(status: u16, body: &str) -> Server {
            let response = http(status, body);
            Server::start(move |_| Some(response.clone()))
        }

        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().expect("lock").clone()
        }

        fn webhook(&self) -> Webhook {
            webhook_at(&self.url, 2_000)
        }
    }

    fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
        let mut buffer = Vec::new();
        let mut byte = [0u8; 1];
        while !buffer.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            buffer.push(byte[0]);
        }
        let head = String::from_utf8(buffer).ok()?;
        let length = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        stream.read_exact(&mut body).ok()?;
        Some(Recorded { head, body })
    }

    fn http(status: u16, body: &str) -> String {
        format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn webhook_at(url: &str, timeout_ms: u64) -> Webhook {
        let settings = WebhookSettings {
            url: url.to_owned(),
            timeout_ms,
            max_in_flight: DEFAULT_IN_FLIGHT,
        };
        settings.validate().expect("valid settings");
        Webhook::new(settings, (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210))
    }

    fn request<'a>(password: &'a [u8], certificates: &'a [bytes::Bytes]) -> WebhookRequest<'a> {
        WebhookRequest {
            client_id: "device-1",
            username: Some("alice"),
            password: Some(password),
            authentication_method: Some("CUSTOM-X"),
            authentication_data: Some(b"\x00\x01data\xff"),
            certificates,
            remote: "192.0.2.7:51234",
        }
    }

    const NOW: u64 = 1_700_000_000;

    const ALLOW: &str = r#"{"decision":"allow","clientAuthenticationName":"device-1-name"}"#;

    fn allow(name: &str) -> WebhookDecision {
        WebhookDecision::Allow {
            authentication_name: name.to_owned(),
            attributes: Attributes::new(),
            expiration_unix: None,
        }
    }

    #[test]
    fn webhook_request_has_every_field() {
        let leaf = rcgen::generate_simple_self_signed(vec!["device-1".to_owned()]).expect("leaf");
        let ca1 = rcgen::generate_simple_self_signed(vec!["ca-1".to_owned()]).expect("ca1");
        let ca2 = rcgen::generate_simple_self_signed(vec!["ca-2".to_owned()]).expect("ca2");
        let certificates: Vec<bytes::Bytes> = [&leaf, &ca1, &ca2]
            .iter()
            .map(|c| bytes::Bytes::copy_from_slice(c.cert.der()))
            .collect();
        let server = Server::answering(200, ALLOW);
        let webhook = server.webhook();
        let decision = webhook.ask(&request(b"s3cret\x00\xff", &certificates), NOW);
        assert_eq!(decision.expect("allow"), allow("device-1-name"));

        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let head = requests[0].head.to_ascii_lowercase();
        assert!(
            head.starts_with("post /authenticate http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        let body = requests[0].json();
        let expected = serde_json::json!({
            "clientId": "device-1",
            "userName": "alice",
            "password": BASE64.encode(b"s3cret\x00\xff"),
            "authenticationMethod": "CUSTOM-X",
            "authenticationData": BASE64.encode(b"\x00\x01data\xff"),
            "clientCertificate": leaf.cert.pem(),
            "clientCertificateChain": format!("{}{}", ca1.cert.pem(), ca2.cert.pem()),
            "remoteAddress": "192.0.2.7:51234",
        });
        assert_eq!(body, expected);
        // Independently of rcgen's encoder: 64-character lines, the DER inside.
        let pem_text = body["clientCertificate"].as_str().expect("pem");
        let lines: Vec<&str> = pem_text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(*lines.last().expect("end"), "-----END CERTIFICATE-----");
        let inner = &lines[1..lines.len() - 1];
        assert!(inner[..inner.len() - 1].iter().all(|line| line.len() == 64));
        assert!(!inner[inner.len() - 1].is_empty() && inner[inner.len() - 1].len() <= 64);
        assert_eq!(
            BASE64.decode(inner.concat()).expect("base64"),
            leaf.cert.der().to_vec()
        );
    }

    #[test]
    fn webhook_request_omits_what_is_absent() {
        let only_leaf = [bytes::Bytes::from_static(b"\x30\x03\x02\x01\x01")];
        let request = WebhookRequest {
            client_id: "",
            username: None,
            password: None,
            authentication_method: None,
            authentication_data: None,
            certificates: &only_leaf,
            remote: "[::1]:1883",
        };
        let body: Value = serde_json::from_str(&request.to_json()).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "clientId": "",
                "clientCertificate": "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
                "remoteAddress": "[::1]:1883",
            })
        );
        let debug = format!("{:?}", self::request(b"hunter2", &[]));
        assert!(
            !debug.contains("hunter2") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    #[test]
    fn webhook_allow_with_attributes_and_expiration() {
        let server = Server::answering(
            200,
            r#"{"decision":"allow","clientAuthenticationName":"fleet/device-1",
                "attributes":{"floor":"3","level":-7,"groups":["a","b"],"none":[]},
                "expiration":1700003600,"somethingNew":true}"#,
        );
        let decision = server
            .webhook()
            .ask(&request(b"pw", &[]), NOW)
            .expect("allow");
        let attributes = Attributes::from([
            ("floor".to_owned(), AttributeValue::String("3".to_owned())),
            ("level".to_owned(), AttributeValue::Integer(-7)),
            (
                "groups".to_owned(),
                AttributeValue::StringList(vec!["a".to_owned(), "b".to_owned()]),
            ),
            ("none".to_owned(), AttributeValue::StringList(Vec::new())),
        ]);
        assert_eq!(
            decision,
            WebhookDecision::Allow {
                authentication_name: "fleet/device-1".to_owned(),
                attributes,
                expiration_unix: Some(1_700_003_600),
            }
        );
    }

    #[test]
    fn webhook_allow_with_rfc3339_expiration() {
        let server = Server::answering(
            200,
            r#"{"decision":"Allow","clientAuthenticationName":"d","expiration":"2026-12-07T12:00:00.25Z"}"#,
        );
        let decision = server
            .webhook()
            .ask(&request(b"pw", &[]), NOW)
            .expect("allow");
        let WebhookDecision::Allow {
            expiration_unix, ..
        } = decision
        else {
            panic!("not an allow: {decision:?}");
        };
        assert_eq!(expiration_unix, Some(1_796_644_800));
    }

    #[test]
    fn webhook_rfc3339_parser_is_strict() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2026-12-07T12:00:00Z"),
            Some(1_796_644_800)
        );
        assert_eq!(
            parse_rfc3339_utc("2026-12-07T12:00:00+00:00"),
            Some(1_796_644_800)
        );
        assert_eq!(
            parse_rfc3339_utc("2000-02-29T23:59:59.999999999Z"),
            Some(951_868_799)
        );
        assert_eq!(
            parse_rfc3339_utc("9999-12-31T23:59:59Z"),
            Some(253_402_300_799)
        );
        for bad in [
            "",
            "2026-12-07",
            "2026-12-07T12:00:00",
            "2026-12-07t12:00:00Z",
            "2026-12-07T12:00:00z",
            "2026-12-07 12:00:00Z",
            "2026-12-07T12:00:00+01:00",
            "2026-12-07T12:00:00-00:00",
            "2026-12-07T12:00:00.Z",
            "2026-12-07T12:00:00Zjunk",
            "2026-12-07T12:00Z",
            "2026-13-07T12:00:00Z",
            "2026-00-07T12:00:00Z",
            "2026-12-00T12:00:00Z",
            "2026-12-32T12:00:00Z",
            "2001-02-29T12:00:00Z",
            "1900-02-29T12:00:00Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07T12:60:00Z",
            "2026-12-31T23:59:60Z",
            "1969-12-31T23:59:59Z",
            "+026-12-07T12:00:00Z",
            "2026-1a-07T12:00:00Z",
            "２026-12-07T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_utc(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn webhook_deny() {
        let server = Server::answering(200, r#"{"decision":"deny","errorReason":"revoked"}"#);
        let webhook = server.webhook();
        let deny = WebhookDecision::Deny {
            reason: "revoked".to_owned(),
        };
        assert_eq!(webhook.ask(&request(b"pw", &[]), NOW).expect("deny"), deny);
        // Not remembered.
        assert_eq!(webhook.ask(&request(b"pw", &[]), NOW).expect("deny"), deny);
        assert_eq!(webhook.calls(), 2);
        assert_eq!(server.requests().len(), 2);
        assert_eq!(
            parse_answer(br#"{"decision":"deny"}"#, NOW).expect("deny"),
            WebhookDecision::Deny {
                reason: String::new()
            }
        );
    }

    #[test]
    fn webhook_timeout() {
        let server = Server::start(|_| None);
        let webhook = webhook_at(&server.url, 200);
        let start = Instant::now();
        let result = webhook.ask(&request(b"pw", &[]), NOW);
        assert!(matches!(result, Err(WebhookError::Timeout)), "{result:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(webhook.calls(), 1);
    }

    #[test]
    fn webhook_timeout_in_the_body() {
        // The head arrives, the promised body never does.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            if read_request(&mut stream).is_none() {
                return;
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"dec");
            let _ = stream.read_to_end(&mut Vec::new());
        });
        let result = webhook_at(&url, 200).ask(&request(b"pw", &[]), NOW);
        assert!(matches!(result, Err(WebhookError::Timeout)), "{result:?}");
    }

    #[test]
    fn webhook_status_other_than_200() {
        for status in [500, 404, 204, 302] {
            let server = Server::answering(status, ALLOW);
            let result = server.webhook().ask(&request(b"pw", &[]), NOW);
            assert!(
                matches!(result, Err(WebhookError::Status(s)) if s == status),
                "{status}: {result:?}"
            );
        }
    }

    #[test]
    fn webhook_malformed_answers() {
        for body in [
            "",
            "not json",
            "[1,2]",
            r#"{"clientAuthenticationName":"d"}"#,
            r#"{"decision":"maybe","clientAuthenticationName":"d"}"#,
            r#"{"decision":true}"#,
            r#"{"decision":"allow"}"#,
            r#"{"decision":"allow","clientAuthenticationName":""}"#,
            r#"{"decision":"allow","clientAuthenticationName":null}"#,
            r#"{"decision":"allow","clientAuthenticationName":7}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","attributes":{"a":true}}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","attributes":{"a":1.5}}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","attributes":{"a":9223372036854775808}}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","attributes":{"a":["x",1]}}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","attributes":{"a":{"b":"c"}}}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","attributes":{"a":null}}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","attributes":["a"]}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","expiration":-1}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","expiration":1.7e9}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","expiration":"tomorrow"}"#,
            r#"{"decision":"allow","clientAuthenticationName":"d","expiration":true}"#,
            r#"{"decision":"deny","errorReason":5}"#,
        ] {
            let result = parse_answer(body.as_bytes(), NOW);
            assert!(
                matches!(result, Err(WebhookError::Malformed(_))),
                "{body}: {result:?}"
            );
        }
        // And over HTTP, not JSON and without a name.
        for body in ["<html>oops</html>", r#"{"decision":"allow"}"#] {
            let server = Server::answering(200, body);
            let result = server.webhook().ask(&request(b"pw", &[]), NOW);
            assert!(
                matches!(result, Err(WebhookError::Malformed(_))),
                "{body}: {result:?}"
            );
        }
    }

    #[test]
    fn webhook_answer_size_is_bounded() {
        let padding = "x".repeat(MAX_ANSWER);
        let body =
            format!(r#"{{"decision":"allow","clientAuthenticationName":"d","pad":"{padding}"}}"#);
        let server = Server::answering(200, &body);
        let result = server.webhook().ask(&request(b"pw", &[]), NOW);
        assert!(
            matches!(result, Err(WebhookError::Malformed(_))),
            "{result:?}"
        );
    }

    #[test]
    fn webhook_cache_hit_and_miss() {
        let server = Server::answering(200, ALLOW);
        let webhook = server.webhook();
        let certificates = [bytes::Bytes::from_static(b"cert")];
        let first = webhook
            .ask(&request(b"pw", &certificates), NOW)
            .expect("allow");
        assert_eq!(first, allow("device-1-name"));
        // The same credentials, later and from elsewhere: no second request.
        let mut again = request(b"pw", &certificates);
        again.remote = "198.51.100.1:4000";
        assert_eq!(webhook.ask(&again, NOW + 299).expect("allow"), first);
        assert_eq!(webhook.calls(), 1);
        assert_eq!(server.requests().len(), 1);
        // Any other credential asks again.
        webhook
            .ask(&request(b"other", &certificates), NOW)
            .expect("allow");
        assert_eq!(webhook.calls(), 2);
        webhook.ask(&request(b"pw", &[]), NOW).expect("allow");
        assert_eq!(webhook.calls(), 3);
        let mut other_client = request(b"pw", &certificates);
        other_client.client_id = "device-2";
        webhook.ask(&other_client, NOW).expect("allow");
        assert_eq!(webhook.calls(), 4);
        let mut no_username = request(b"pw", &certificates);
        no_username.username = None;
        webhook.ask(&no_username, NOW).expect("allow");
        assert_eq!(webhook.calls(), 5);
        // Without an expiration, CACHE_TTL.
        webhook
            .ask(&request(b"pw", &certificates), NOW + CACHE_TTL.as_secs())
            .expect("allow");
        assert_eq!(webhook.calls(), 6);
        // Cleared.
        webhook.clear_cache();
        webhook
            .ask(&request(b"other", &certificates), NOW)
            .expect("allow");
        assert_eq!(webhook.calls(), 7);
        assert_eq!(server.requests().len(), 7);
    }

    #[test]
    fn webhook_expired_cached_entry_asks_again() {
        let server = Server::answering(
            200,
            r#"{"decision":"allow","clientAuthenticationName":"d","expiration":1700000010}"#,
        );
        let webhook = server.webhook();
        let expected = WebhookDecision::Allow {
            authentication_name: "d".to_owned(),
            attributes: Attributes::new(),
            expiration_unix: Some(1_700_000_010),
        };
        assert_eq!(
            webhook.ask(&request(b"pw", &[]), NOW).expect("allow"),
            expected
        );
        assert_eq!(
            webhook.ask(&request(b"pw", &[]), NOW + 9).expect("allow"),
            expected
        );
        assert_eq!(webhook.calls(), 1);
        // At the expiration the entry is gone; the webhook's answer is now past too.
        let expired = WebhookDecision::Deny {
            reason: "expired".to_owned(),
        };
        assert_eq!(
            webhook.ask(&request(b"pw", &[]), NOW + 10).expect("deny"),
            expired
        );
        assert_eq!(webhook.calls(), 2);
        // An expired allow is not remembered either.
        assert_eq!(
            webhook.ask(&request(b"pw", &[]), NOW + 10).expect("deny"),
            expired
        );
        assert_eq!(webhook.calls(), 3);
        assert_eq!(server.requests().len(), 3);
    }

    #[test]
    fn webhook_errors_are_not_cached() {
        let server = Server::answering(500, "");
        let webhook = server.webhook();
        for _ in 0..2 {
            let result = webhook.ask(&request(b"pw", &[]), NOW);
            assert!(
                matches!(result, Err(WebhookError::Status(500))),
                "{result:?}"
            );
        }
        assert_eq!(webhook.calls(), 2);
    }

    #[test]
    fn webhook_connection_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/authenticate",
            listener.local_addr().expect("addr")
        );
        drop(listener);
        let webhook = webhook_at(&url, 2_000);
        let result = webhook.ask(&request(b"pw", &[]), NOW);
        let Err(WebhookError::Transport(text)) = &result else {
            panic!("not a transport error: {result:?}");
        };
        assert!(!text.contains("/authenticate"), "{text}");
        assert_eq!(webhook.calls(), 1);
        assert!(result
            .expect_err("error")
            .to_string()
            .contains("unreachable"));
    }

    #[test]
    fn webhook_settings() {
        let parsed: WebhookSettings =
            toml::from_str(r#"url = "http://127.0.0.1:9000/authenticate""#).expect("toml");
        assert_eq!(parsed.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(parsed.validate(), Ok(()));
        assert!(toml::from_str::<WebhookSettings>("url = \"http://h\"\ntimeout = 5").is_err());
        let valid = |url: &str, timeout_ms: u64| {
            WebhookSettings {
                url: url.to_owned(),
                timeout_ms,
                max_in_flight: DEFAULT_IN_FLIGHT,
            }
            .validate()
        };
        assert_eq!(valid("https://auth.example.com/hook?x=1", 1), Ok(()));
        assert_eq!(valid("HTTP://[::1]:9000/", MAX_TIMEOUT_MS), Ok(()));
        for url in [
            "",
            "ftp://h/",
            "http://",
            "127.0.0.1:9000",
            "http://:80/",
            "http://a b/",
        ] {
            assert!(valid(url, 2_000).is_err(), "{url:?}");
        }
        assert!(valid("http://h/", 0).is_err());
        assert!(valid("http://h/", MAX_TIMEOUT_MS + 1).is_err());
    }

    #[test]
    fn webhook_digest_separates_fields() {
        let key = (1, 2);
        let base = WebhookRequest {
            client_id: "ab",
            username: Some("c"),
            password: None,
            authentication_method: None,
            authentication_data: None,
            certificates: &[],
            remote: "x",
        };
        let mut shifted = base;
        shifted.client_id = "a";
        shifted.username = Some("bc");
        assert_ne!(base.digest(key), shifted.digest(key));
        let mut empty_password = base;
        empty_password.password = Some(b"");
        assert_ne!(base.digest(key), empty_password.digest(key));
        let mut other_remote = base;
        other_remote.remote = "y";
        assert_eq!(base.digest(key), other_remote.digest(key));
        assert_ne!(base.digest(key), base.digest((1, 3)));
    }
}
