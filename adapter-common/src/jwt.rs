//! JSON Web Tokens for enhanced authentication (method `CUSTOM-JWT`).
//!
//! An MQTT 5 client that connects with Authentication Method [`METHOD`]
//! (`CUSTOM-JWT`, as Azure Event Grid's MQTT broker names it) puts a compact JWS
//! (`header.payload.signature`, RFC 7515/7519) in its Authentication Data. The
//! broker is configured with
//!
//! ```toml
//! [authentication.jwt]
//! issuer = "https://issuer.example"
//! audience = "brokk"
//! jwks_file = "jwks.json"  # a JWKS document (RFC 7517) of RS256 and ES256 public keys
//! name_claim = "sub"       # default "sub"
//! leeway_secs = 5          # default 5, at most 60
//! ```
//!
//! which deserializes into [`JwtSettings`]; [`JwtVerifier::load`] reads the key
//! set once (blocking, at startup) and [`JwtVerifier::verify`] checks a token
//! against it at a wall-clock time the caller passes in.
//!
//! # What is checked, in order, and why
//!
//! 1. **Shape.** At most [`MAX_TOKEN_BYTES`] bytes (the most MQTT's binary data
//!    can carry), UTF-8, exactly three parts of base64url characters separated by
//!    dots. Anything else is [`JwtRefusal::Malformed`]. No input panics.
//! 2. **Header.** `alg` must be `RS256` or `ES256`. `none` (an unsigned token)
//!    and `HS*` are refused as [`JwtRefusal::WrongAlgorithm`]: HMAC would take a
//!    *public* key as its shared secret, the classic algorithm-confusion forgery.
//!    A header with `crit` is refused (RFC 7515 section 4.1.11: an extension the
//!    verifier does not understand must not be ignored). Keys or key URLs the
//!    header carries (`jwk`, `jku`, `x5u`, `x5c`) are ignored: a token never
//!    brings its own key. `typ` and `cty` are not checked.
//! 3. **Key selection.** With a `kid`, the key with that `kid` must exist
//!    ([`JwtRefusal::UnknownKey`]) and allow the header's `alg` (its JWK `alg`,
//!    else the one its type implies: RSA -> RS256, EC P-256 -> ES256), else
//!    [`JwtRefusal::WrongAlgorithm`]. Without a `kid`, every key allowing the
//!    header's `alg` is tried in file order and the first whose signature
//!    verifies is used; if none allows that `alg` the token is
//!    [`JwtRefusal::WrongAlgorithm`], if none verifies it is
//!    [`JwtRefusal::BadSignature`]. The key set is the operator's own file, so
//!    the number of tries is bounded by what the operator configured.
//! 4. **Signature**, by `jsonwebtoken` (ring), before any claim is believed.
//! 5. **Issuer**: `iss` must be present and a string equal to the configured
//!    issuer (`jsonwebtoken` alone would also accept an array containing it;
//!    RFC 7519 makes `iss` a single string, so an array is refused).
//! 6. **Audience**: `aud` must be present and either the configured audience or
//!    an array containing it (RFC 7519 section 4.1.3).
//! 7. **Time**: `exp` is required ([`JwtRefusal::NoExpiry`]), so no token is
//!    good forever; the token is [`JwtRefusal::Expired`] from `exp + leeway`
//!    on (RFC 7519: valid only *before* `exp`). `nbf`, when present, must be at
//!    most `now + leeway` ([`JwtRefusal::NotYetValid`]). `jsonwebtoken`'s own
//!    time checks read the system clock, so they are switched off and these two
//!    are checked here against the caller's `now_unix`: tests are
//!    deterministic and the broker judges tokens by the same clock it uses for
//!    everything else. The leeway (default 5 s, at most
//!    [`MAX_LEEWAY_SECS`]) absorbs clock skew between issuer and broker.
//!    Fractional NumericDates are accepted, rounded towards refusal (`exp`
//!    down, `nbf` up). `iat` and `jti` are not checked: there is no replay
//!    cache, and a token may be presented again until it expires.
//! 8. **Name**: the configured `name_claim` must be a non-empty string
//!    ([`JwtRefusal::MissingNameClaim`]); it becomes the client's authentication
//!    name.
//! 9. **Attributes**: every other claim except the registered `iss`, `aud`,
//!    `exp`, `nbf`, `iat` and `jti` becomes an attribute when it is a string, an
//!    integer that fits `i64` or an array of strings (possibly empty); anything
//!    else (objects, booleans, floats, mixed arrays, null) is skipped. So `sub`
//!    is an attribute when it is not the name claim.
//!
//! The registered claims are read by `jsonwebtoken` too, which cannot read a
//! `sub` or `exp` that is an array or object (RFC 7519 allows neither): such a
//! token is [`JwtRefusal::Malformed`] whatever the name claim.
//!
//! The grant carries `exp` as [`JwtGrant::expires_unix`] (without the leeway),
//! so the caller can end the session, or ask for re-authentication, when the
//! token runs out.
//!
//! # The key set
//!
//! The JWKS file is read once, as given (the config resolves relative paths).
//! It is the operator's file, not a document fetched from an identity
//! provider, so it is checked strictly and every mistake is an error naming
//! the file and the key: a key with `"use": "enc"` is skipped; every other key
//! must be an RSA key of 2048 to 8192 bits (exponent odd, 3 to 2^33 - 1) or an
//! EC P-256 key, with no `alg` or the one its type implies, and without
//! private parts (`d`). Key ids must be unique, and at least one key must be
//! left.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use broker_state::{AttributeValue, Attributes};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// The MQTT 5 Authentication Method whose Authentication Data is a compact JWT.
pub const METHOD: &str = "CUSTOM-JWT";

/// The leeway when the config gives none, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// The largest leeway the config may give, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// The longest token accepted: the most an MQTT Authentication Data (binary
/// data with a two-byte length) can hold.
pub const MAX_TOKEN_BYTES: usize = 65_535;

/// Claims that never become attributes (besides the name claim).
const REGISTERED_CLAIMS: [&str; 6] = ["iss", "aud", "exp", "nbf", "iat", "jti"];

/// The `[authentication.jwt]` table of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` every token must carry, compared exactly.
    pub issuer: String,
    /// The audience every token's `aud` must be or contain.
    pub audience: String,
    /// The JWKS document holding the RS256 and ES256 public keys.
    pub jwks_file: PathBuf,
    /// The claim that is the client's authentication name (default `sub`).
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default
    /// [`DEFAULT_LEEWAY_SECS`], at most [`MAX_LEEWAY_SECS`]).
    #[serde(
        default = "default_leeway_secs",
        deserialize_with = "deserialize_leeway"
    )]
    pub leeway_secs: u64,
}

fn default_name_claim() -> String {
    "sub".to_owned()
}

fn default_leeway_secs() -> u64 {
    DEFAULT_LEEWAY_SECS
}

fn deserialize_leeway<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let secs = u64::deserialize(deserializer)?;
    if secs > MAX_LEEWAY_SECS {
        return Err(serde::de::Error::custom(format_args!(
            "leeway_secs is {secs}, at most {MAX_LEEWAY_SECS} seconds allowed"
        )));
    }
    Ok(secs)
}

/// What a valid token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtGrant {
    /// The name claim's value.
    pub authentication_name: String,
    /// The token's other claims that are strings, integers or string lists.
    pub attributes: Attributes,
    /// The token's `exp` (Unix seconds, without the leeway).
    pub expires_unix: u64,
}

/// Why a token was refused. The Display text is meant for the broker's log,
/// not for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtRefusal {
    /// Not a compact JWS with a JSON header and a JSON object as payload: too
    /// long, not UTF-8, not three base64url parts, a `crit` header, a `kid` that
    /// is not a string, an `nbf` that is not a NumericDate, or a `sub` or `exp`
    /// that is an array or object (which `jsonwebtoken` cannot read).
    Malformed,
    /// The header's `kid` names no key of the key set.
    UnknownKey,
    /// No key that could verify the token did.
    BadSignature,
    /// The header's `alg` is not RS256 or ES256, or not the one the key allows
    /// (or, without `kid`, one no key allows).
    WrongAlgorithm,
    /// `exp + leeway` has passed.
    Expired,
    /// `nbf` is more than the leeway in the future.
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    WrongIssuer,
    /// `aud` is missing or neither is nor contains the configured audience.
    WrongAudience,
    /// `exp` is missing, or a string, negative or otherwise not a NumericDate
    /// (an array or object makes the token [`JwtRefusal::Malformed`]).
    NoExpiry,
    /// The name claim is missing, not a string or empty.
    MissingNameClaim,
}

impl fmt::Display for JwtRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JwtRefusal::Malformed => "the token is not a well-formed JWT",
            JwtRefusal::UnknownKey => "the token's kid names no key of the key set",
            JwtRefusal::BadSignature => "the token's signature does not verify",
            JwtRefusal::WrongAlgorithm => {
                "the token's alg is not RS256 or ES256, or not the one its key allows"
            }
            JwtRefusal::Expired => "the token has expired",
            JwtRefusal::NotYetValid => "the token is not valid yet (nbf)",
            JwtRefusal::WrongIssuer => "the token's issuer (iss) is not the configured one",
            JwtRefusal::WrongAudience => {
                "the token's audience (aud) does not include the configured one"
            }
            JwtRefusal::NoExpiry => "the token has no expiry (exp)",
            JwtRefusal::MissingNameClaim => {
                "the token lacks the name claim, or it is not a non-empty string"
            }
        })
    }
}

impl std::error::Error for JwtRefusal {}

/// Why the JWT settings or key set cannot be used.
#[derive(Debug)]
pub struct JwtError {
    /// The JWKS file, for problems with it; `None` for problems with the
    /// settings themselves.
    path: Option<PathBuf>,
    problem: String,
}

impl JwtError {
    fn file(path: &Path, problem: impl Into<String>) -> Self {
        JwtError {
            path: Some(path.to_path_buf()),
            problem: problem.into(),
        }
    }

    fn settings(problem: impl Into<String>) -> Self {
        JwtError {
            path: None,
            problem: problem.into(),
        }
    }

    /// The JWKS file the problem is in, if it is in the file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What is wrong, without the file name.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.problem),
            None => write!(f, "[authentication.jwt]: {}", self.problem),
        }
    }
}

impl std::error::Error for JwtError {}

/// One verification key of the set.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    decoding: DecodingKey,
}

/// Verifies `CUSTOM-JWT` tokens against the settings and the keys of the JWKS
/// file. Cheap to share (`Send + Sync`); verifying does no I/O.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuer: String,
    name_claim: String,
    leeway_secs: u64,
    /// `jsonwebtoken`'s checks for RS256 tokens: signature, `iss`, `aud`, and
    /// the presence of `exp` (its clock-based checks are off).
    validation_rs256: Validation,
    /// The same for ES256 tokens.
    validation_es256: Validation,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(Option<&str>, Algorithm)> = self
            .keys
            .iter()
            .map(|key| (key.kid.as_deref(), key.alg))
            .collect();
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("name_claim", &self.name_claim)
            .field("leeway_secs", &self.leeway_secs)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Reads the JWKS file (blocking). Errors name the file and what is wrong
    /// (unreadable, not JSON, not a key set, a key of an unsupported type,
    /// curve, size or `alg`, private key parts, a duplicate `kid`, no usable
    /// key), or the setting that is out of range.
    pub fn load(settings: &JwtSettings) -> Result<JwtVerifier, JwtError> {
        check_settings(settings)?;
        let bytes = std::fs::read(&settings.jwks_file).map_err(|e| {
            JwtError::file(
                &settings.jwks_file,
                format!("cannot read the JWKS file: {e}"),
            )
        })?;
        Self::from_jwks_json(settings, &bytes)
    }

    /// Like [`JwtVerifier::load`] with the JWKS document given instead of read;
    /// errors still name `settings.jwks_file`.
    pub fn from_jwks_json(settings: &JwtSettings, jwks: &[u8]) -> Result<JwtVerifier, JwtError> {
        check_settings(settings)?;
        let path = settings.jwks_file.as_path();
        let document: Value = serde_json::from_slice(jwks)
            .map_err(|e| JwtError::file(path, format!("the JWKS file is not JSON: {e}")))?;
        let entries = document
            .as_object()
            .and_then(|object| object.get("keys"))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                JwtError::file(
                    path,
                    "not a JWKS document: expected a JSON object with a \"keys\" array",
                )
            })?;
        let mut keys: Vec<Key> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let label = key_label(index, entry);
            match parse_key(entry) {
                Ok(Some(key)) => {
                    if let Some(kid) = &key.kid {
                        if keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                            return Err(JwtError::file(
                                path,
                                format!("{label}: another key has the same kid"),
                            ));
                        }
                    }
                    keys.push(key);
                }
                Ok(None) => {}
                Err(problem) => return Err(JwtError::file(path, format!("{label}: {problem}"))),
            }
        }
        if keys.is_empty() {
            return Err(JwtError::file(
                path,
                "no usable key: the key set needs at least one RSA (RS256) or EC P-256 (ES256) \
                 signature key",
            ));
        }
        Ok(JwtVerifier {
            keys,
            issuer: settings.issuer.clone(),
            name_claim: settings.name_claim.clone(),
            leeway_secs: settings.leeway_secs,
            validation_rs256: validation(Algorithm::RS256, settings),
            validation_es256: validation(Algorithm::ES256, settings),
        })
    }

    /// How many verification keys were loaded (keys marked `"use": "enc"` are
    /// not counted).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The clock leeway: a token is accepted until `exp` plus this, so the
    /// connection it authenticates lasts that long too.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Verifies a token at wall-clock `now_unix` seconds (see the module
    /// documentation for every check). Any bytes may be given: whatever is not
    /// a valid token is refused, never a panic.
    pub fn verify(&self, token: &[u8], now_unix: u64) -> Result<JwtGrant, JwtRefusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtRefusal::Malformed);
        }
        let text = std::str::from_utf8(token).map_err(|_| JwtRefusal::Malformed)?;
        let mut parts = text.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtRefusal::Malformed);
        };
        if [header, payload, signature]
            .iter()
            .any(|part| !part.bytes().all(is_base64url))
        {
            return Err(JwtRefusal::Malformed);
        }
        let header = parse_header(header)?;
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(JwtRefusal::WrongAlgorithm),
        };
        let validation = match alg {
            Algorithm::ES256 => &self.validation_es256,
            _ => &self.validation_rs256,
        };

        let claims = match &header.kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|key| key.kid.as_deref() == Some(kid.as_str()))
                    .ok_or(JwtRefusal::UnknownKey)?;
                if key.alg != alg {
                    return Err(JwtRefusal::WrongAlgorithm);
                }
                decode(text, key, validation)?
            }
            None => {
                let mut candidates = self.keys.iter().filter(|key| key.alg == alg).peekable();
                if candidates.peek().is_none() {
                    return Err(JwtRefusal::WrongAlgorithm);
                }
                let mut verified = None;
                for key in candidates {
                    match decode(text, key, validation) {
                        Err(JwtRefusal::BadSignature) => continue,
                        other => {
                            verified = Some(other?);
                            break;
                        }
                    }
                }
                verified.ok_or(JwtRefusal::BadSignature)?
            }
        };
        self.check_claims(claims, now_unix)
    }

    /// The checks after the signature, `iss`, `aud` and the presence of `exp`
    /// (done by `jsonwebtoken`), and the grant.
    fn check_claims(
        &self,
        claims: Map<String, Value>,
        now_unix: u64,
    ) -> Result<JwtGrant, JwtRefusal> {
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.issuer => {}
            _ => return Err(JwtRefusal::WrongIssuer),
        }
        let expires_unix = claims
            .get("exp")
            .and_then(|exp| numeric_date(exp, false))
            .ok_or(JwtRefusal::NoExpiry)?;
        if now_unix >= expires_unix.saturating_add(self.leeway_secs) {
            return Err(JwtRefusal::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let not_before = numeric_date(nbf, true).ok_or(JwtRefusal::Malformed)?;
            if now_unix.saturating_add(self.leeway_secs) < not_before {
                return Err(JwtRefusal::NotYetValid);
            }
        }
        let authentication_name = match claims.get(&self.name_claim) {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err(JwtRefusal::MissingNameClaim),
        };
        let attributes: Attributes = claims
            .into_iter()
            .filter(|(name, _)| {
                *name != self.name_claim && !REGISTERED_CLAIMS.contains(&name.as_str())
            })
            .filter_map(|(name, value)| attribute(value).map(|value| (name, value)))
            .collect::<BTreeMap<_, _>>();
        Ok(JwtGrant {
            authentication_name,
            attributes,
            expires_unix,
        })
    }
}

/// The settings checks that do not depend on the file: the ranges serde
/// enforces, again, for settings built in code.
fn check_settings(settings: &JwtSettings) -> Result<(), JwtError> {
    if settings.leeway_secs > MAX_LEEWAY_SECS {
        return Err(JwtError::settings(format!(
            "leeway_secs is {}, at most {MAX_LEEWAY_SECS} seconds allowed",
            settings.leeway_secs
        )));
    }
    for (name, value) in [
        ("issuer", &settings.issuer),
        ("audience", &settings.audience),
        ("name_claim", &settings.name_claim),
    ] {
        if value.is_empty() {
            return Err(JwtError::settings(format!("{name} is empty")));
        }
    }
    Ok(())
}

/// `jsonwebtoken`'s part of the checks for tokens of `alg`: the signature (with
/// exactly that algorithm), `iss` and `aud` present and matching, `exp`
/// present. Its `exp`/`nbf` checks read the system clock, so they are off and
/// [`JwtVerifier::check_claims`] does them against the caller's time.
fn validation(alg: Algorithm, settings: &JwtSettings) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&[settings.issuer.as_str()]);
    validation.set_audience(&[settings.audience.as_str()]);
    validation.validate_aud = true;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation
}

/// The header fields this module reads; the rest are ignored.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn parse_header(encoded: &str) -> Result<Header, JwtRefusal> {
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| JwtRefusal::Malformed)?;
    let header: Header = serde_json::from_slice(&json).map_err(|_| JwtRefusal::Malformed)?;
    if header.crit.is_some() {
        return Err(JwtRefusal::Malformed);
    }
    Ok(header)
}

fn is_base64url(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// Verifies the token with one key and returns its claims.
fn decode(
    token: &str,
    key: &Key,
    validation: &Validation,
) -> Result<Map<String, Value>, JwtRefusal> {
    jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation)
        .map(|data| data.claims)
        .map_err(|error| refusal(error.kind()))
}

fn refusal(kind: &ErrorKind) -> JwtRefusal {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Crypto(_) => JwtRefusal::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => JwtRefusal::WrongAlgorithm,
        ErrorKind::InvalidIssuer => JwtRefusal::WrongIssuer,
        ErrorKind::InvalidAudience => JwtRefusal::WrongAudience,
        ErrorKind::ExpiredSignature => JwtRefusal::Expired,
        ErrorKind::ImmatureSignature => JwtRefusal::NotYetValid,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => JwtRefusal::WrongIssuer,
            "aud" => JwtRefusal::WrongAudience,
            "exp" => JwtRefusal::NoExpiry,
            _ => JwtRefusal::Malformed,
        },
        _ => JwtRefusal::Malformed,
    }
}

/// A NumericDate (RFC 7519 section 2): a non-negative JSON number of seconds.
/// Fractions are rounded up when `round_up`, else down.
fn numeric_date(value: &Value, round_up: bool) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(secs) = number.as_u64() {
        return Some(secs);
    }
    let secs = number.as_f64()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let secs = if round_up { secs.ceil() } else { secs.floor() };
    // `as` saturates; a date past u64::MAX seconds is as good as never.
    Some(secs as u64)
}

/// A claim as an attribute, when it is one of the kinds attributes have.
fn attribute(value: Value) -> Option<AttributeValue> {
    match value {
        Value::String(text) => Some(AttributeValue::String(text)),
        Value::Number(number) => number.as_i64().map(AttributeValue::Integer),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Some(text),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .map(AttributeValue::StringList),
        _ => None,
    }
}

/// "key 2 (kid \"a\")" or "key 2 (no kid)", to name a key in errors.
fn key_label(index: usize, entry: &Value) -> String {
    match entry.get("kid") {
        Some(Value::String(kid)) => format!("key {index} (kid {kid:?})"),
        _ => format!("key {index} (no kid)"),
    }
}

/// One JWK of the file: `Ok(None)` for an encryption key, which is skipped.
fn parse_key(entry: &Value) -> Result<Option<Key>, String> {
    let Some(jwk) = entry.as_object() else {
        return Err("is not a JSON object".to_owned());
    };
    match jwk.get("use") {
        None => {}
        Some(Value::String(usage)) if usage == "sig" => {}
        Some(Value::String(usage)) if usage == "enc" => return Ok(None),
        Some(other) => return Err(format!("unsupported use {other}: expected \"sig\"")),
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("kid is not a string".to_owned()),
    };
    let kty = match jwk.get("kty") {
        Some(Value::String(kty)) => kty.as_str(),
        Some(_) => return Err("kty is not a string".to_owned()),
        None => return Err("has no kty".to_owned()),
    };
    if jwk.contains_key("d") {
        return Err(
            "holds private key material (\"d\"): the JWKS file must hold public keys only"
                .to_owned(),
        );
    }
    let (alg, implied) = match kty {
        "RSA" => (Algorithm::RS256, "RS256"),
        "EC" => (Algorithm::ES256, "ES256"),
        other => {
            return Err(format!(
                "unsupported key type (kty) {other:?}: only RSA (RS256) and EC P-256 (ES256) keys \
                 are supported"
            ))
        }
    };
    match jwk.get("alg") {
        None => {}
        Some(Value::String(given)) if given == implied => {}
        Some(Value::String(given)) => {
            return Err(format!(
                "unsupported alg {given:?} for a {kty} key: only {implied} is supported"
            ))
        }
        Some(_) => return Err("alg is not a string".to_owned()),
    }
    let decoding = match alg {
        Algorithm::ES256 => ec_key(jwk)?,
        _ => rsa_key(jwk)?,
    };
    Ok(Some(Key { kid, alg, decoding }))
}

fn rsa_key(jwk: &Map<String, Value>) -> Result<DecodingKey, String> {
    let n = base64url_member(jwk, "n")?;
    let e = base64url_member(jwk, "e")?;
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    let bits = match n.first() {
        Some(first) => (n.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    };
    if !(2048..=8192).contains(&bits) {
        return Err(format!(
            "the RSA modulus (n) has {bits} bits: 2048 to 8192 are supported"
        ));
    }
    let exponent = if e.len() <= 8 {
        e.iter()
            .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte))
    } else {
        u64::MAX
    };
    if !(3..1 << 33).contains(&exponent) || exponent % 2 == 0 {
        return Err("the RSA exponent (e) must be odd and from 3 to 2^33 - 1".to_owned());
    }
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

fn ec_key(jwk: &Map<String, Value>) -> Result<DecodingKey, String> {
    match jwk.get("crv") {
        Some(Value::String(crv)) if crv == "P-256" => {}
        Some(Value::String(crv)) => {
            return Err(format!(
                "unsupported curve (crv) {crv:?}: only P-256 (ES256) is supported"
            ))
        }
        Some(_) => return Err("crv is not a string".to_owned()),
        None => return Err("has no crv".to_owned()),
    }
    let x = base64url_member(jwk, "x")?;
    let y = base64url_member(jwk, "y")?;
    if x.len() != 32 || y.len() != 32 {
        return Err(format!(
            "the P-256 coordinates must be 32 bytes each, x has {} and y {}",
            x.len(),
            y.len()
        ));
    }
    DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(&x), &URL_SAFE_NO_PAD.encode(&y))
        .map_err(|e| format!("unusable EC key: {e}"))
}

/// A base64url member of a JWK, decoded (padding tolerated).
fn base64url_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let Some(value) = jwk.get(name) else {
        return Err(format!("has no {name:?}"));
    };
    let Value::String(text) = value else {
        return Err(format!("{name:?} is not a string"));
    };
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("{name:?} is not base64url: {e}"))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    /// The wall clock every test verifies at.
    const NOW: u64 = 1_700_000_000;
    const ISSUER: &str = "https://issuer.example";
    const AUDIENCE: &str = "brokk";

    /// A throwaway 2048-bit RSA key made for these tests with `openssl genrsa`,
    /// its public half as PEM and as a JWK (kid `rsa-1`).
    const RSA_PRIVATE_PEM: &str = include_str!("../tests/fixtures/jwt/rsa-private.pem");
    const RSA_PUBLIC_PEM: &str = include_str!("../tests/fixtures/jwt/rsa-public.pem");
    const RSA_PUBLIC_JWK: &str = include_str!("../tests/fixtures/jwt/rsa-public.jwk.json");

    fn settings(jwks_file: &Path) -> JwtSettings {
        JwtSettings {
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            jwks_file: jwks_file.to_path_buf(),
            name_claim: "sub".to_owned(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }

    /// A fresh P-256 key: its signing key and its public JWK.
    fn ec_key_pair(kid: Option<&str>) -> (EncodingKey, Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC PEM");
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        let mut jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        (signing, jwk)
    }

    fn rsa_signing_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("RSA PEM")
    }

    fn rsa_jwk() -> Value {
        serde_json::from_str(RSA_PUBLIC_JWK).expect("RSA JWK")
    }

    /// A verifier loaded from a JWKS file with an EC key (`ec-1`) and the RSA
    /// key (`rsa-1`), and the keys to sign with.
    struct Fixture {
        verifier: JwtVerifier,
        ec: EncodingKey,
        rsa: EncodingKey,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Self::with_leeway(DEFAULT_LEEWAY_SECS)
        }

        fn with_leeway(leeway_secs: u64) -> Self {
            let (ec, ec_jwk) = ec_key_pair(Some("ec-1"));
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("jwks.json");
            let jwks = json!({ "keys": [ec_jwk, rsa_jwk()] });
            std::fs::write(&path, jwks.to_string()).expect("write JWKS");
            let mut settings = settings(&path);
            settings.leeway_secs = leeway_secs;
            let verifier = JwtVerifier::load(&settings).expect("load JWKS");
            assert_eq!(verifier.key_count(), 2);
            Fixture {
                verifier,
                ec,
                rsa: rsa_signing_key(),
                _dir: dir,
            }
        }

        fn key(&self, alg: Algorithm) -> &EncodingKey {
            match alg {
                Algorithm::ES256 => &self.ec,
                _ => &self.rsa,
            }
        }

        /// A token of `claims` signed with the fixture's key for `alg`.
        fn sign(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, self.key(alg)).expect("encode")
        }

        fn verify(&self, token: &str) -> Result<JwtGrant, JwtRefusal> {
            self.verifier.verify(token.as_bytes(), NOW)
        }
    }

    /// Valid claims with one attribute of each kind and some that are skipped.
    fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "device-7",
            "exp": NOW + 600,
            "nbf": NOW - 60,
            "iat": NOW - 60,
            "jti": "token-1",
            "site": "plant-3",
            "floor": 3,
            "groups": ["sensors", "north"],
            "no_groups": [],
            "meta": {"skipped": true},
            "ratio": 0.5,
            "enabled": true,
            "mixed": ["a", 1],
            "huge": u64::MAX,
            "nothing": null,
        })
    }

    fn expected_attributes() -> Attributes {
        let mut attributes = Attributes::new();
        attributes.insert("site".into(), AttributeValue::String("plant-3".into()));
        attributes.insert("floor".into(), AttributeValue::Integer(3));
        attributes.insert(
            "groups".into(),
            AttributeValue::StringList(vec!["sensors".into(), "north".into()]),
        );
        attributes.insert("no_groups".into(), AttributeValue::StringList(vec![]));
        attributes
    }

    /// `claims()` with `changes` applied (a null value removes the claim).
    fn claims_with(changes: Value) -> Value {
        let mut claims = claims();
        if let (Some(target), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
            for (name, value) in changes {
                if value.is_null() {
                    target.remove(name);
                } else {
                    target.insert(name.clone(), value.clone());
                }
            }
        }
        claims
    }

    /// A compact token from a raw header and claims, signed by `sign` over
    /// `header.payload` (so the header may say anything).
    fn compact(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> String) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = sign(message.as_bytes());
        format!("{message}.{signature}")
    }

    #[test]
    fn es256_token_gives_name_attributes_and_expiry() {
        let fixture = Fixture::new();
        let token = fixture.sign(Algorithm::ES256, Some("ec-1"), &claims());
        let grant = fixture.verify(&token).expect("valid ES256 token");
        assert_eq!(grant.authentication_name, "device-7");
        assert_eq!(grant.attributes, expected_attributes());
        assert_eq!(grant.expires_unix, NOW + 600);
    }

    #[test]
    fn rs256_token_gives_name_attributes_and_expiry() {
        let fixture = Fixture::new();
        let token = fixture.sign(Algorithm::RS256, Some("rsa-1"), &claims());
        let grant = fixture.verify(&token).expect("valid RS256 token");
        assert_eq!(grant.authentication_name, "device-7");
        assert_eq!(grant.attributes, expected_attributes());
        assert_eq!(grant.expires_unix, NOW + 600);
    }

    #[test]
    fn another_name_claim_leaves_sub_as_an_attribute() {
        let (ec, ec_jwk) = ec_key_pair(Some("ec-1"));
        let mut settings = settings(Path::new("jwks.json"));
        settings.name_claim = "client_id".to_owned();
        let jwks = json!({ "keys": [ec_jwk] }).to_string();
        let verifier = JwtVerifier::from_jwks_json(&settings, jwks.as_bytes()).expect("JWKS");
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("ec-1".to_owned());
        let claims = claims_with(json!({"client_id": "c-1"}));
        let token = jsonwebtoken::encode(&header, &claims, &ec).expect("encode");
        let grant = verifier.verify(token.as_bytes(), NOW).expect("valid");
        assert_eq!(grant.authentication_name, "c-1");
        let mut expected = expected_attributes();
        expected.insert("sub".into(), AttributeValue::String("device-7".into()));
        assert_eq!(grant.attributes, expected);
        // and then `sub` missing is fine, `client_id` missing is not
        let token =
            jsonwebtoken::encode(&header, &claims_with(json!({"sub": null})), &ec).expect("encode");
        assert_eq!(
            verifier
                .verify(token.as_bytes(), NOW)
                .map(|grant| grant.authentication_name),
            Err(JwtRefusal::MissingNameClaim)
        );
    }

    #[test]
    fn tokens_without_kid_are_tried_against_the_keys_of_their_alg() {
        let fixture = Fixture::new();
        for alg in [Algorithm::ES256, Algorithm::RS256] {
            let token = fixture.sign(alg, None, &claims());
            assert_eq!(
                fixture.verify(&token).map(|g| g.authentication_name),
                Ok("device-7".into())
            );
        }
        // Two EC keys without kids: the second one verifies.
        let (_, first) = ec_key_pair(None);
        let (second_key, second) = ec_key_pair(None);
        let jwks = json!({ "keys": [first, rsa_jwk(), second] }).to_string();
        let settings = settings(Path::new("jwks.json"));
        let verifier = JwtVerifier::from_jwks_json(&settings, jwks.as_bytes()).expect("JWKS");
        let header = jsonwebtoken::Header::new(Algorithm::ES256);
        let token = jsonwebtoken::encode(&header, &claims(), &second_key).expect("encode");
        assert!(verifier.verify(token.as_bytes(), NOW).is_ok());
        // Signed by a key not in the set: no key verifies it.
        let (stranger, _) = ec_key_pair(None);
        let token = jsonwebtoken::encode(&header, &claims(), &stranger).expect("encode");
        assert_eq!(
            verifier.verify(token.as_bytes(), NOW),
            Err(JwtRefusal::BadSignature)
        );
    }

    #[test]
    fn expiry_is_checked_against_now_with_the_leeway() {
        let fixture = Fixture::new(); // leeway 5
        let at = |exp: u64| {
            fixture.verify(&fixture.sign(
                Algorithm::ES256,
                Some("ec-1"),
                &claims_with(json!({"exp": exp})),
            ))
        };
        assert!(at(NOW + 1).is_ok());
        assert!(at(NOW).is_ok(), "expired, but within the leeway");
        assert!(at(NOW - 4).is_ok(), "expired, but within the leeway");
        assert_eq!(
            at(NOW - 5),
            Err(JwtRefusal::Expired),
            "valid only before exp + leeway"
        );
        assert_eq!(at(NOW - 3600), Err(JwtRefusal::Expired));
        assert_eq!(at(0), Err(JwtRefusal::Expired));
        assert_eq!(at(u64::MAX).map(|g| g.expires_unix), Ok(u64::MAX));

        let strict = Fixture::with_leeway(0);
        let at = |exp: u64| {
            strict.verify(&strict.sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &claims_with(json!({"exp": exp})),
            ))
        };
        assert!(at(NOW + 1).is_ok());
        assert_eq!(at(NOW), Err(JwtRefusal::Expired));
    }

    #[test]
    fn fractional_and_malformed_times() {
        let fixture = Fixture::with_leeway(0);
        let verify = |changes: Value| {
            fixture.verify(&fixture.sign(Algorithm::ES256, Some("ec-1"), &claims_with(changes)))
        };
        // exp rounds down, nbf rounds up
        assert_eq!(
            verify(json!({"exp": NOW as f64 + 1.5})).map(|g| g.expires_unix),
            Ok(NOW + 1)
        );
        assert_eq!(
            verify(json!({"exp": NOW as f64 + 0.5})),
            Err(JwtRefusal::Expired)
        );
        assert_eq!(
            verify(json!({"nbf": NOW as f64 + 0.5})),
            Err(JwtRefusal::NotYetValid)
        );
        assert!(verify(json!({"nbf": NOW as f64 - 0.5})).is_ok());
        // exp missing or not a NumericDate
        assert_eq!(verify(json!({"exp": null})), Err(JwtRefusal::NoExpiry));
        assert_eq!(
            verify(json!({"exp": "tomorrow"})),
            Err(JwtRefusal::NoExpiry)
        );
        assert_eq!(verify(json!({"exp": -1})), Err(JwtRefusal::NoExpiry));
        assert_eq!(
            verify(json!({"nbf": "yesterday"})),
            Err(JwtRefusal::Malformed)
        );
        assert_eq!(verify(json!({"nbf": -1})), Err(JwtRefusal::Malformed));
        assert_eq!(
            verify(json!({"nbf": {"at": NOW}})),
            Err(JwtRefusal::Malformed)
        );
        assert_eq!(
            verify(json!({"exp": [NOW + 600]})),
            Err(JwtRefusal::Malformed)
        );
    }

    #[test]
    fn not_before_is_checked_with_the_leeway() {
        let fixture = Fixture::new(); // leeway 5
        let at = |nbf: u64| {
            fixture.verify(&fixture.sign(
                Algorithm::ES256,
                Some("ec-1"),
                &claims_with(json!({"nbf": nbf})),
            ))
        };
        assert!(at(NOW).is_ok());
        assert!(at(NOW + 5).is_ok(), "within the leeway");
        assert_eq!(at(NOW + 6), Err(JwtRefusal::NotYetValid));
        assert_eq!(at(NOW + 3600), Err(JwtRefusal::NotYetValid));
        assert!(
            fixture
                .verify(&fixture.sign(
                    Algorithm::ES256,
                    Some("ec-1"),
                    &claims_with(json!({"nbf": null}))
                ))
                .is_ok(),
            "nbf is optional"
        );
    }

    #[test]
    fn issuer_must_be_the_configured_string() {
        let fixture = Fixture::new();
        for iss in [
            json!("https://other.example"),
            json!("https://issuer.example/"),
            json!(null),
            json!(7),
            json!([ISSUER]),
            json!([ISSUER, "https://other.example"]),
        ] {
            let token = fixture.sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &claims_with(json!({"iss": iss})),
            );
            assert_eq!(
                fixture.verify(&token),
                Err(JwtRefusal::WrongIssuer),
                "iss {iss}"
            );
        }
    }

    #[test]
    fn audience_must_be_or_contain_the_configured_one() {
        let fixture = Fixture::new();
        let verify = |aud: Value| {
            fixture.verify(&fixture.sign(
                Algorithm::ES256,
                Some("ec-1"),
                &claims_with(json!({"aud": aud})),
            ))
        };
        assert!(verify(json!(AUDIENCE)).is_ok());
        assert!(verify(json!([AUDIENCE])).is_ok());
        assert!(verify(json!(["other", AUDIENCE])).is_ok());
        for aud in [
            json!("other"),
            json!(["other", "more"]),
            json!([]),
            json!(null),
            json!(1),
            json!("Brokk"),
        ] {
            assert_eq!(
                verify(aud.clone()),
                Err(JwtRefusal::WrongAudience),
                "aud {aud}"
            );
        }
    }

    #[test]
    fn rs256_signature_under_an_es256_header_is_refused() {
        let fixture = Fixture::new();
        let rsa_sign = |message: &[u8]| {
            jsonwebtoken::crypto::sign(message, &fixture.rsa, Algorithm::RS256).expect("sign")
        };
        // The RSA key's kid, but the header claims ES256.
        let token = compact(
            &json!({"alg": "ES256", "kid": "rsa-1"}),
            &claims(),
            rsa_sign,
        );
        assert_eq!(fixture.verify(&token), Err(JwtRefusal::WrongAlgorithm));
        // No kid: only the EC key is tried, and it does not verify an RSA signature.
        let token = compact(&json!({"alg": "ES256"}), &claims(), rsa_sign);
        assert_eq!(fixture.verify(&token), Err(JwtRefusal::BadSignature));
        // And the other way round.
        let ec_sign = |message: &[u8]| {
            jsonwebtoken::crypto::sign(message, &fixture.ec, Algorithm::ES256).expect("sign")
        };
        let token = compact(&json!({"alg": "RS256", "kid": "ec-1"}), &claims(), ec_sign);
        assert_eq!(fixture.verify(&token), Err(JwtRefusal::WrongAlgorithm));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let fixture = Fixture::new();
        for alg in [
            "none", "None", "NONE", "", "HS256", "RS384", "ES384", "PS256", "EdDSA", "rs256",
        ] {
            for header in [json!({"alg": alg}), json!({"alg": alg, "kid": "rsa-1"})] {
                let token = compact(&header, &claims(), |_| String::new());
                assert_eq!(
                    fixture.verify(&token),
                    Err(JwtRefusal::WrongAlgorithm),
                    "{header}"
                );
            }
        }
        // An RSA or EC signature does not make another alg acceptable either.
        let es384 = compact(
            &json!({"alg": "ES384", "kid": "ec-1"}),
            &claims(),
            |message| {
                jsonwebtoken::crypto::sign(message, &fixture.ec, Algorithm::ES256).expect("sign")
            },
        );
        assert_eq!(fixture.verify(&es384), Err(JwtRefusal::WrongAlgorithm));
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let fixture = Fixture::new();
        let n = rsa_jwk()["n"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_default();
        let secrets: [&[u8]; 3] = [
            RSA_PUBLIC_PEM.as_bytes(),
            RSA_PUBLIC_JWK.as_bytes(),
            n.as_bytes(),
        ];
        for secret in secrets {
            for kid in [Some("rsa-1"), None] {
                let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
                header.kid = kid.map(str::to_owned);
                let token =
                    jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret))
                        .expect("encode");
                assert_eq!(fixture.verify(&token), Err(JwtRefusal::WrongAlgorithm));
            }
        }
    }

    #[test]
    fn unknown_kid_is_refused() {
        let fixture = Fixture::new();
        for kid in ["ec-2", "", "EC-1", "rsa-1 "] {
            let token = fixture.sign(Algorithm::ES256, Some(kid), &claims());
            assert_eq!(
                fixture.verify(&token),
                Err(JwtRefusal::UnknownKey),
                "kid {kid:?}"
            );
        }
    }

    #[test]
    fn tampered_payload_is_refused() {
        let fixture = Fixture::new();
        for (alg, kid) in [(Algorithm::ES256, "ec-1"), (Algorithm::RS256, "rsa-1")] {
            let token = fixture.sign(alg, Some(kid), &claims());
            let parts: Vec<&str> = token.split('.').collect();
            assert_eq!(parts.len(), 3);
            let forged = URL_SAFE_NO_PAD.encode(claims_with(json!({"sub": "admin"})).to_string());
            let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
            assert_eq!(fixture.verify(&tampered), Err(JwtRefusal::BadSignature));
            // and a token whose signature is cut off or swapped
            let unsigned = format!("{}.{}.", parts[0], parts[1]);
            assert_eq!(fixture.verify(&unsigned), Err(JwtRefusal::BadSignature));
        }
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let fixture = Fixture::new();
        let token = fixture.sign(Algorithm::ES256, Some("ec-1"), &claims());
        assert!(fixture.verify(&token).is_ok());
        let bytes = token.as_bytes();
        for index in 0..bytes.len() {
            for replacement in [b'A', b'.', 0xff] {
                if bytes[index] == replacement {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[index] = replacement;
                assert!(
                    fixture.verifier.verify(&changed, NOW).is_err(),
                    "byte {index} set to {replacement:#x} was accepted"
                );
            }
        }
    }

    #[test]
    fn missing_name_claim_is_refused() {
        let fixture = Fixture::new();
        for sub in [json!(null), json!(""), json!(42), json!(true)] {
            let token = fixture.sign(
                Algorithm::ES256,
                Some("ec-1"),
                &claims_with(json!({"sub": sub})),
            );
            assert_eq!(
                fixture.verify(&token),
                Err(JwtRefusal::MissingNameClaim),
                "sub {sub}"
            );
        }
        // A `sub` that is an array or object is one jsonwebtoken cannot read
        // (RFC 7519 makes it a string): the whole token is malformed.
        for sub in [json!(["device-7"]), json!({"id": "device-7"})] {
            let token = fixture.sign(
                Algorithm::ES256,
                Some("ec-1"),
                &claims_with(json!({"sub": sub})),
            );
            assert_eq!(
                fixture.verify(&token),
                Err(JwtRefusal::Malformed),
                "sub {sub}"
            );
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let fixture = Fixture::new();
        let good = fixture.sign(Algorithm::ES256, Some("ec-1"), &claims());
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"ec-1"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
        let b64 = |text: &str| URL_SAFE_NO_PAD.encode(text);
        let malformed: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b".".to_vec(),
            b"..".to_vec(),
            b"...".to_vec(),
            b"abc".to_vec(),
            b"a.b".to_vec(),
            b"a.b.c".to_vec(),
            vec![0xff, 0xfe, b'.', 0x80, b'.', 0x00],
            vec![0u8; 100],
            vec![b'a'; MAX_TOKEN_BYTES + 1],
            format!("{good}.").into_bytes(),
            format!("{good}.{good}").into_bytes(),
            format!(" {good}").into_bytes(),
            format!("{good}\n").into_bytes(),
            format!("{header}==.{payload}.sig").into_bytes(),
            format!("{}.{payload}.c2ln", b64("not json")).into_bytes(),
            format!("{}.{payload}.c2ln", b64("[1,2]")).into_bytes(),
            format!("{}.{payload}.c2ln", b64("{}")).into_bytes(),
            format!("{}.{payload}.c2ln", b64(r#"{"alg":5}"#)).into_bytes(),
            format!("{}.{payload}.c2ln", b64(r#"{"alg":"ES256","kid":1}"#)).into_bytes(),
            format!("{}.{payload}.c2ln", b64(r#"{"alg":"ES256","alg":"ES256"}"#)).into_bytes(),
            format!(
                "{}.{payload}.c2ln",
                b64(r#"{"alg":"ES256","kid":"ec-1","crit":["b64"]}"#)
            )
            .into_bytes(),
            format!(
                "{}.{payload}.c2ln",
                b64(&format!("{}{}", "[".repeat(5000), "]".repeat(5000)))
            )
            .into_bytes(),
            // A well-formed header with a payload that is not base64url / not JSON.
            format!("{header}.%%%.c2ln").into_bytes(),
        ];
        for token in &malformed {
            let shown = String::from_utf8_lossy(&token[..token.len().min(80)]).into_owned();
            assert_eq!(
                fixture.verifier.verify(token, NOW),
                Err(JwtRefusal::Malformed),
                "token {shown:?}"
            );
        }
        // Garbage in the signed parts fails the signature first, and is refused either way.
        let refused: Vec<String> = vec![
            format!("{header}.{}.c2ln", b64("not json")),
            format!("{header}.{}.c2ln", b64("[1]")),
            format!("{header}.{payload}.x"),
            format!("{header}.{payload}.{}", "A".repeat(20_000)),
        ];
        for token in &refused {
            assert!(fixture.verify(token).is_err(), "token {token:?}");
        }
        // Unsigned payload garbage with a valid signature over it still has to parse.
        let not_an_object = compact(
            &json!({"alg": "ES256", "kid": "ec-1"}),
            &json!([1, 2]),
            |message| {
                jsonwebtoken::crypto::sign(message, &fixture.ec, Algorithm::ES256).expect("sign")
            },
        );
        assert_eq!(fixture.verify(&not_an_object), Err(JwtRefusal::Malformed));
    }

    #[test]
    fn jwks_file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.jwks");
        let shown = path.display().to_string();
        let (_, ec) = ec_key_pair(Some("ec-1"));
        let rsa = rsa_jwk();
        let with = |base: &Value, changes: Value| {
            let mut key = base.clone();
            if let (Some(key), Some(changes)) = (key.as_object_mut(), changes.as_object()) {
                for (name, value) in changes {
                    if value.is_null() {
                        key.remove(name);
                    } else {
                        key.insert(name.clone(), value.clone());
                    }
                }
            }
            key
        };
        let keys = |keys: Vec<Value>| json!({ "keys": keys }).to_string().into_bytes();

        // A file that is not there.
        let error = JwtVerifier::load(&settings(&path)).expect_err("missing file");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{shown}: cannot read")),
            "{error}"
        );
        assert_eq!(error.path(), Some(path.as_path()));

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0xff, 0xfe], "not JSON"),
            (b"{\"keys\": [".to_vec(), "not JSON"),
            (b"[]".to_vec(), "not a JWKS document"),
            (b"{}".to_vec(), "not a JWKS document"),
            (b"{\"keys\": {}}".to_vec(), "not a JWKS document"),
            (keys(vec![]), "no usable key"),
            (
                keys(vec![with(&ec, json!({"use": "enc"}))]),
                "no usable key",
            ),
            (
                keys(vec![json!("key")]),
                "key 0 (no kid): is not a JSON object",
            ),
            (
                keys(vec![json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"})]),
                "key 0 (kid \"h\"): unsupported key type (kty) \"oct\"",
            ),
            (
                keys(vec![json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"})]),
                "unsupported key type (kty) \"OKP\"",
            ),
            (keys(vec![with(&ec, json!({"kty": null}))]), "has no kty"),
            (
                keys(vec![ec.clone(), with(&rsa, json!({"alg": "RS384"}))]),
                "key 1 (kid \"rsa-1\"): unsupported alg \"RS384\"",
            ),
            (
                keys(vec![with(&ec, json!({"alg": "RS256"}))]),
                "unsupported alg \"RS256\" for a EC key",
            ),
            (
                keys(vec![with(&ec, json!({"alg": "none"}))]),
                "unsupported alg \"none\"",
            ),
            (
                keys(vec![with(&ec, json!({"crv": "P-384"}))]),
                "unsupported curve (crv) \"P-384\"",
            ),
            (keys(vec![with(&ec, json!({"x": "AAAA"}))]), "32 bytes each"),
            (
                keys(vec![with(&ec, json!({"y": "!!"}))]),
                "\"y\" is not base64url",
            ),
            (
                keys(vec![with(&ec, json!({"d": "AAAA"}))]),
                "private key material",
            ),
            (
                keys(vec![with(
                    &rsa,
                    json!({"n": URL_SAFE_NO_PAD.encode([0xffu8; 128])}),
                )]),
                "has 1024 bits",
            ),
            (
                keys(vec![with(&rsa, json!({"e": "Aw", "n": null}))]),
                "has no \"n\"",
            ),
            (keys(vec![with(&rsa, json!({"e": "AQAA"}))]), "exponent"),
            (
                keys(vec![with(&rsa, json!({"use": "verify"}))]),
                "unsupported use",
            ),
            (
                keys(vec![with(&rsa, json!({"kid": 3}))]),
                "kid is not a string",
            ),
            (
                keys(vec![ec.clone(), with(&rsa, json!({"kid": "ec-1"}))]),
                "key 1 (kid \"ec-1\"): another key has the same kid",
            ),
        ];
        for (content, expected) in cases {
            std::fs::write(&path, &content).expect("write");
            let error = JwtVerifier::load(&settings(&path)).expect_err(expected);
            let text = error.to_string();
            assert!(text.starts_with(&format!("{shown}: ")), "{text}");
            assert!(
                text.contains(expected),
                "{text:?} should contain {expected:?}"
            );
        }

        // Encryption keys are skipped; padded base64url and a leading zero in n are fine.
        let padded_n = {
            let mut n = vec![0u8];
            n.extend(
                URL_SAFE_NO_PAD
                    .decode(rsa["n"].as_str().unwrap_or_default())
                    .expect("n"),
            );
            base64::engine::general_purpose::URL_SAFE.encode(n)
        };
        let content = keys(vec![
            with(&ec, json!({"use": "enc", "kid": "enc"})),
            with(&rsa, json!({"n": padded_n, "alg": null, "use": null})),
        ]);
        std::fs::write(&path, &content).expect("write");
        let verifier = JwtVerifier::load(&settings(&path)).expect("usable JWKS");
        assert_eq!(verifier.key_count(), 1);
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".to_owned());
        let token = jsonwebtoken::encode(&header, &claims(), &rsa_signing_key()).expect("encode");
        assert!(verifier.verify(token.as_bytes(), NOW).is_ok());
    }

    #[test]
    fn settings_read_from_toml_with_defaults_and_limits() {
        let parse = |text: &str| toml::from_str::<JwtSettings>(text).map_err(|e| e.to_string());
        let base = "issuer = \"https://issuer.example\"\naudience = \"brokk\"\njwks_file = \"jwks.json\"\n";
        let settings = parse(base).expect("defaults");
        assert_eq!(
            settings,
            JwtSettings {
                issuer: ISSUER.to_owned(),
                audience: AUDIENCE.to_owned(),
                jwks_file: PathBuf::from("jwks.json"),
                name_claim: "sub".to_owned(),
                leeway_secs: 5,
            }
        );
        let settings = parse(&format!(
            "{base}name_claim = \"client_id\"\nleeway_secs = 60\n"
        ))
        .expect("all keys");
        assert_eq!(
            (settings.name_claim.as_str(), settings.leeway_secs),
            ("client_id", 60)
        );
        let error = parse(&format!("{base}leeway_secs = 61\n")).expect_err("leeway too large");
        assert!(error.contains("at most 60"), "{error}");
        assert!(parse(&format!("{base}leeway_secs = -1\n")).is_err());
        let error = parse(&format!("{base}jwks_url = \"https://x\"\n")).expect_err("unknown key");
        assert!(error.contains("jwks_url"), "{error}");
        assert!(
            parse("issuer = \"x\"\naudience = \"y\"\n").is_err(),
            "jwks_file is required"
        );

        // Settings built in code are held to the same limits.
        let jwks = json!({ "keys": [rsa_jwk()] }).to_string();
        let mut settings = settings_for_code();
        settings.leeway_secs = 61;
        let error = JwtVerifier::from_jwks_json(&settings, jwks.as_bytes()).expect_err("leeway");
        assert!(error.to_string().contains("leeway_secs is 61"), "{error}");
        assert_eq!(error.path(), None);
        let mut settings = settings_for_code();
        settings.audience.clear();
        let error = JwtVerifier::from_jwks_json(&settings, jwks.as_bytes()).expect_err("audience");
        assert_eq!(error.to_string(), "[authentication.jwt]: audience is empty");
    }

    fn settings_for_code() -> JwtSettings {
        settings(Path::new("jwks.json"))
    }

    #[test]
    fn refusals_and_verifier_display_without_secrets() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<JwtVerifier>();
        assert_eq!(JwtRefusal::Expired.to_string(), "the token has expired");
        assert_eq!(METHOD, "CUSTOM-JWT");
        let fixture = Fixture::new();
        let shown = format!("{:?}", fixture.verifier);
        assert!(
            shown.contains("rsa-1") && shown.contains("ES256"),
            "{shown}"
        );
        let n = rsa_jwk()["n"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_default();
        assert!(!shown.contains(&n[..20]), "{shown}");
    }
}
