//! Who a client is: Event Grid's identity model, self-hosted.
//!
//! The config registers **client resources** (`[[client]]`: a resource name, an
//! authentication name unique ignoring case, enabled or not, attributes, and how
//! the client proves itself) and **CA certificates** (`[[ca_certificate]]`), and
//! says where a client's authentication name comes from (`name_sources`: the
//! username or a field of its certificate, first non-empty wins). A client proves
//! who it is with:
//!
//! - an X.509 certificate: by its SHA-256 thumbprint (`validation = "thumbprint"`,
//!   a primary and a secondary), or by a chain that verifies against a registered
//!   CA and a field that equals its authentication name (`"subject-"`, `"dns-"`,
//!   `"uri-"`, `"ip-"` or `"email-matches-authentication-name"`: the subject's CN
//!   or the first matching SAN entry);
//! - a password: a client without `certificate` gives its authentication name as
//!   the username and a password the password file accepts;
//! - a JWT (MQTT 5.0 enhanced authentication, method `CUSTOM-JWT`; see
//!   [`crate::jwt`]): the token vouches for the name, registered or not;
//! - the webhook's answer ([`crate::webhook`]), asked for every client that is
//!   neither registered nor using a JWT.
//!
//! A client that is registered but disabled, whose certificate does not pass its
//! scheme or whose password is wrong is refused (0x87 Not authorized, or 0x86 Bad
//! user name or password for a password; 3.1.1 return codes 5 and 4); a webhook
//! that fails or times out is 0x88 Server unavailable (3.1.1: 3). With
//! `require_registered_client = false` (the default) a client that is not
//! registered gets in as before: by a password from the file, or anonymously where
//! that is allowed; a certificate name counts when its chain verifies against a
//! registered CA.
//!
//! In the TLS handshake, listeners with `client_certificates = "optional"` or
//! `"required"` accept a certificate whose chain verifies against a registered CA,
//! or whose thumbprint some client registered (self-signed devices); anything else
//! fails the handshake. Which client the certificate belongs to, and whether its
//! scheme accepts it, is decided afterwards on an authentication worker, with the
//! rest of the CONNECT ([`Policy::decide`]); the chain is verified again there for
//! the CA schemes, since the handshake may have let it in by thumbprint.
//!
//! The whole policy is one immutable value ([`Policy`]), built from the config
//! (reading PEM and JWKS files) and swapped whole by a reload: a connection is
//! decided by one policy, never half of two.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker_state::{
    AttributeValue, Attributes, AuthKind, AuthQuestion, AuthStep, CertificateChain,
};
use mqtt_proto::ReasonCode;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use crate::jwt::{JwtSettings, JwtVerifier};
use crate::passwd::PasswordFile;
use crate::webhook::{Webhook, WebhookDecision, WebhookRequest, WebhookSettings};

// ------------------------------------------------------------------ config

/// Where a client's authentication name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// The CONNECT's User Name.
    Username,
    /// The client certificate's subject common name.
    CertSubjectCn,
    /// The first DNS name among the certificate's subject alternative names.
    CertDns,
    /// The first URI among them.
    CertUri,
    /// The first IP address among them.
    CertIp,
    /// The first email address among them.
    CertEmail,
}

impl NameSource {
    const ALL: [NameSource; 6] = [
        NameSource::Username,
        NameSource::CertSubjectCn,
        NameSource::CertDns,
        NameSource::CertUri,
        NameSource::CertIp,
        NameSource::CertEmail,
    ];

    /// The config file's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Username => "username",
            NameSource::CertSubjectCn => "cert-subject-cn",
            NameSource::CertDns => "cert-dns",
            NameSource::CertUri => "cert-uri",
            NameSource::CertIp => "cert-ip",
            NameSource::CertEmail => "cert-email",
        }
    }
}

impl<'de> Deserialize<'de> for NameSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::config::named(d, &NameSource::ALL, NameSource::as_str)
    }
}

/// Whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCertificates {
    /// Not asked for (the default).
    #[default]
    None,
    /// Asked for; a client without one still connects (and proves itself
    /// otherwise).
    Optional,
    /// A client without an acceptable certificate fails the handshake.
    Required,
}

impl ClientCertificates {
    const ALL: [ClientCertificates; 3] = [
        ClientCertificates::None,
        ClientCertificates::Optional,
        ClientCertificates::Required,
    ];

    /// The config file's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCertificates::None => "none",
            ClientCertificates::Optional => "optional",
            ClientCertificates::Required => "required",
        }
    }
}

impl<'de> Deserialize<'de> for ClientCertificates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::config::named(d, &ClientCertificates::ALL, ClientCertificates::as_str)
    }
}

/// How a registered client's certificate is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateValidation {
    /// The SHA-256 of the certificate's DER is one of these (primary, secondary).
    Thumbprint(Vec<[u8; 32]>),
    /// The chain verifies against a registered CA and this field of the
    /// certificate equals the authentication name.
    Matches(CertField),
}

/// A field of a certificate that can name a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// The subject's common name.
    SubjectCn,
    /// A DNS subject alternative name.
    Dns,
    /// A URI subject alternative name.
    Uri,
    /// An IP address subject alternative name.
    Ip,
    /// An email (RFC 822) subject alternative name.
    Email,
}

impl CertField {
    fn validation_name(self) -> &'static str {
        match self {
            CertField::SubjectCn => "subject-matches-authentication-name",
            CertField::Dns => "dns-matches-authentication-name",
            CertField::Uri => "uri-matches-authentication-name",
            CertField::Ip => "ip-matches-authentication-name",
            CertField::Email => "email-matches-authentication-name",
        }
    }
}

/// A registered client (Event Grid's client resource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResource {
    /// The resource name.
    pub name: String,
    /// Who the client is: the owner of its sessions (unique ignoring case).
    pub authentication_name: String,
    /// A disabled client cannot connect.
    pub enabled: bool,
    /// For authorization's client groups.
    pub attributes: Attributes,
    /// How its certificate is validated; `None`: it proves itself with a password.
    pub certificate: Option<CertificateValidation>,
}

/// A CA certificate that client certificate chains may verify against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    /// Its name, for logs and errors.
    pub name: String,
    /// The PEM file.
    pub pem: PathBuf,
}

/// The identity part of the config, as written (files not read yet).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityConfig {
    /// Where the authentication name comes from, in order.
    pub name_sources: Vec<NameSource>,
    /// A client must be registered (or vouched for by a JWT or the webhook).
    pub require_registered_client: bool,
    /// Registered CAs.
    pub ca_certificates: Vec<CaCertificate>,
    /// Registered clients.
    pub clients: Vec<ClientResource>,
    /// JWT authentication (method `CUSTOM-JWT`).
    pub jwt: Option<JwtSettings>,
    /// The authentication webhook.
    pub webhook: Option<WebhookSettings>,
}

impl IdentityConfig {
    /// Whether anything beyond the password file is configured, which means
    /// clients are expected to bring credentials.
    pub fn expects_credentials(&self) -> bool {
        self.require_registered_client
            || !self.clients.is_empty()
            || !self.ca_certificates.is_empty()
            || self.jwt.is_some()
            || self.webhook.is_some()
    }
}

/// `[authentication]` as written in a config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthenticationFile {
    pub(crate) name_sources: Option<Vec<NameSource>>,
    pub(crate) password_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) require_registered_client: bool,
    pub(crate) jwt: Option<JwtSettings>,
    pub(crate) webhook: Option<WebhookSettings>,
}

/// `[[ca_certificate]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaCertificateFile {
    pub(crate) name: String,
    pub(crate) pem: PathBuf,
}

/// `[[client]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientFile {
    pub(crate) name: String,
    pub(crate) authentication_name: Option<String>,
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    #[serde(default, deserialize_with = "deserialize_attributes")]
    pub(crate) attributes: Attributes,
    pub(crate) certificate: Option<CertificateFile>,
}

fn yes() -> bool {
    true
}

/// `certificate = { ... }` of a `[[client]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateFile {
    pub(crate) validation: String,
    #[serde(default)]
    pub(crate) thumbprints: Vec<String>,
}

fn deserialize_attributes<'de, D: Deserializer<'de>>(d: D) -> Result<Attributes, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Integer(i64),
        String(String),
        List(Vec<String>),
    }
    let map = BTreeMap::<String, toml::Value>::deserialize(d)?;
    let mut attributes = Attributes::new();
    for (name, value) in map {
        let value = match Value::deserialize(value) {
            Ok(Value::Integer(i)) => AttributeValue::Integer(i),
            Ok(Value::String(s)) => AttributeValue::String(s),
            Ok(Value::List(l)) => AttributeValue::StringList(l),
            Err(_) => {
                return Err(serde::de::Error::custom(format_args!(
                    "attribute {name:?}: expected a string, an integer or a list of strings"
                )))
            }
        };
        attributes.insert(name, value);
    }
    Ok(attributes)
}

/// What is wrong with the identity part of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfigError {
    /// The config file.
    pub file: PathBuf,
    /// The key, e.g. `client[2].certificate.thumbprints`.
    pub key: String,
    /// What was expected.
    pub problem: String,
}

impl fmt::Display for IdentityConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.problem)
    }
}

/// Builds the identity config from one file's tables (`index_base`: how many
/// clients and CAs earlier files declared, so keys number them across files);
/// `resolve` anchors relative paths at the file's directory.
pub(crate) fn identity_from_file(
    file: &Path,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    authentication: Option<AuthenticationFile>,
    cas: Vec<CaCertificateFile>,
    clients: Vec<ClientFile>,
    into: &mut IdentityConfig,
) -> Result<Option<PathBuf>, IdentityConfigError> {
    let err = |key: String, problem: String| IdentityConfigError {
        file: file.to_path_buf(),
        key,
        problem,
    };
    let mut password_file = None;
    if let Some(a) = authentication {
        if let Some(sources) = a.name_sources {
            if sources.is_empty() {
                return Err(err(
                    "authentication.name_sources".into(),
                    "expected at least one source".into(),
                ));
            }
            into.name_sources = sources;
        }
        into.require_registered_client |= a.require_registered_client;
        password_file = a.password_file.map(resolve);
        if let Some(mut jwt) = a.jwt {
            jwt.jwks_file = resolve(jwt.jwks_file);
            into.jwt = Some(jwt);
        }
        if let Some(webhook) = a.webhook {
            webhook
                .validate()
                .map_err(|p| err("authentication.webhook".into(), p))?;
            into.webhook = Some(webhook);
        }
    }
    for (i, ca) in cas.into_iter().enumerate() {
        if ca.name.is_empty() {
            return Err(err(
                format!("ca_certificate[{i}].name"),
                "expected a non-empty name".into(),
            ));
        }
        into.ca_certificates.push(CaCertificate {
            name: ca.name,
            pem: resolve(ca.pem),
        });
    }
    for (i, c) in clients.into_iter().enumerate() {
        let key = |k: &str| format!("client[{i}].{k}");
        if c.name.is_empty() {
            return Err(err(key("name"), "expected a non-empty name".into()));
        }
        let authentication_name = c.authentication_name.unwrap_or_else(|| c.name.clone());
        if authentication_name.is_empty() {
            return Err(err(
                key("authentication_name"),
                "expected a non-empty name".into(),
            ));
        }
        let certificate = match c.certificate {
            None => None,
            Some(cert) => Some(parse_validation(&cert).map_err(|(k, p)| err(key(k), p))?),
        };
        into.clients.push(ClientResource {
            name: c.name,
            authentication_name,
            enabled: c.enabled,
            attributes: c.attributes,
            certificate,
        });
    }
    Ok(password_file)
}

fn parse_validation(
    cert: &CertificateFile,
) -> Result<CertificateValidation, (&'static str, String)> {
    let field = match cert.validation.as_str() {
        "thumbprint" => None,
        "subject-matches-authentication-name" => Some(CertField::SubjectCn),
        "dns-matches-authentication-name" => Some(CertField::Dns),
        "uri-matches-authentication-name" => Some(CertField::Uri),
        "ip-matches-authentication-name" => Some(CertField::Ip),
        "email-matches-authentication-name" => Some(CertField::Email),
        other => {
            return Err((
                "certificate.validation",
                format!(
                    "expected one of \"thumbprint\", \"subject-matches-authentication-name\", \
                     \"dns-matches-authentication-name\", \"uri-matches-authentication-name\", \
                     \"ip-matches-authentication-name\", \"email-matches-authentication-name\", \
                     found {other:?}"
                ),
            ))
        }
    };
    if let Some(field) = field {
        if !cert.thumbprints.is_empty() {
            return Err((
                "certificate.thumbprints",
                format!(
                    "thumbprints belong to validation = \"thumbprint\", not {:?}",
                    field.validation_name()
                ),
            ));
        }
        return Ok(CertificateValidation::Matches(field));
    }
    if cert.thumbprints.is_empty() || cert.thumbprints.len() > 2 {
        return Err((
            "certificate.thumbprints",
            "expected one or two SHA-256 thumbprints (primary, secondary) as 64 hex digits".into(),
        ));
    }
    let mut prints = Vec::with_capacity(cert.thumbprints.len());
    for t in &cert.thumbprints {
        prints.push(parse_thumbprint(t).ok_or((
            "certificate.thumbprints",
            format!("expected 64 hex digits (SHA-256 of the certificate's DER), found {t:?}"),
        ))?);
    }
    Ok(CertificateValidation::Thumbprint(prints))
}

/// 64 hex digits (colons between bytes allowed, as `openssl x509 -fingerprint`
/// prints them), either case.
pub fn parse_thumbprint(text: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// The SHA-256 thumbprint of a certificate's DER.
pub fn thumbprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

// ------------------------------------------------------------------ the policy

/// Why a policy could not be built (a file that cannot be read, a bad key).
#[derive(Debug)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

/// One loaded, immutable identity policy (see the module documentation).
pub struct Policy {
    sources: Vec<NameSource>,
    require_registered: bool,
    allow_anonymous: bool,
    /// Authentication name, lower-cased -> client.
    clients: HashMap<String, Arc<Registered>>,
    /// The registered CAs, for chain verification; `None` without any.
    roots: Option<Arc<dyn ClientCertVerifier>>,
    /// Every registered thumbprint: the handshake lets these in.
    thumbprints: HashSet<[u8; 32]>,
    jwt: Option<JwtVerifier>,
    webhook: Option<Webhook>,
    has_password_file: bool,
}

struct Registered {
    resource: ClientResource,
    /// Shared by every connection of the client.
    attributes: Option<Arc<Attributes>>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("sources", &self.sources)
            .field("clients", &self.clients.len())
            .field("cas", &self.roots.is_some())
            .field("jwt", &self.jwt.is_some())
            .field("webhook", &self.webhook.is_some())
            .finish()
    }
}

impl Policy {
    /// Builds the policy: reads the CA PEM files and the JWKS file (blocking).
    /// `key` is secret randomness for the webhook cache's digests.
    pub fn load(
        config: &IdentityConfig,
        allow_anonymous: bool,
        has_password_file: bool,
        key: (u64, u64),
    ) -> Result<Policy, PolicyError> {
        let mut clients = HashMap::with_capacity(config.clients.len());
        let mut thumbprints = HashSet::new();
        for c in &config.clients {
            let folded = c.authentication_name.to_lowercase();
            if let Some(other) = clients.get(&folded).map(|r: &Arc<Registered>| &r.resource) {
                return Err(PolicyError(format!(
                    "clients {:?} and {:?} have the same authentication name {:?} (names are compared ignoring case)",
                    other.name, c.name, c.authentication_name
                )));
            }
            if let Some(CertificateValidation::Thumbprint(prints)) = &c.certificate {
                thumbprints.extend(prints.iter().copied());
            }
            if matches!(c.certificate, Some(CertificateValidation::Matches(_)))
                && config.ca_certificates.is_empty()
            {
                return Err(PolicyError(format!(
                    "client {:?} validates its certificate against a CA, but no [[ca_certificate]] is registered",
                    c.name
                )));
            }
            let attributes = (!c.attributes.is_empty()).then(|| Arc::new(c.attributes.clone()));
            clients.insert(
                folded,
                Arc::new(Registered {
                    resource: c.clone(),
                    attributes,
                }),
            );
        }
        let roots = if config.ca_certificates.is_empty() {
            None
        } else {
            let mut store = RootCertStore::empty();
            for ca in &config.ca_certificates {
                let certs = crate::tls::read_certs(&ca.pem)
                    .map_err(|e| PolicyError(format!("ca_certificate {:?}: {e}", ca.name)))?;
                for cert in certs {
                    store.add(cert).map_err(|e| {
                        PolicyError(format!(
                            "ca_certificate {:?}: {}: not a usable CA certificate: {e}",
                            ca.name,
                            ca.pem.display()
                        ))
                    })?;
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(store),
                crate::tls::crypto_provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| PolicyError(format!("ca_certificate: {e}")))?;
            Some(verifier)
        };
        let jwt = match &config.jwt {
            Some(settings) => Some(
                JwtVerifier::load(settings)
                    .map_err(|e| PolicyError(format!("authentication.jwt: {e}")))?,
            ),
            None => None,
        };
        let webhook = config.webhook.clone().map(|s| Webhook::new(s, key));
        let sources = if config.name_sources.is_empty() {
            vec![NameSource::Username]
        } else {
            config.name_sources.clone()
        };
        Ok(Policy {
            sources,
            require_registered: config.require_registered_client,
            allow_anonymous,
            clients,
            roots,
            thumbprints,
            jwt,
            webhook,
            has_password_file,
        })
    }

    /// Whether the TLS handshake should let this certificate in: its chain verifies
    /// against a registered CA, or its thumbprint is registered.
    pub fn admits_certificate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        self.chain_verifies(end_entity, intermediates, now)
            || self.thumbprints.contains(&thumbprint(end_entity))
    }

    fn chain_verifies(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        self.roots.as_ref().is_some_and(|roots| {
            roots
                .verify_client_cert(end_entity, intermediates, now)
                .is_ok()
        })
    }

    /// The answer the broker's thread can give without a worker, if any: no
    /// certificate to check, no webhook or token to ask, and no password to verify
    /// (anonymous clients, unknown methods, refusals by rule). `Some(Err(user))`: a
    /// password check of `user` that a cache may answer.
    pub fn quick(&self, q: &AuthQuestion, passwords: bool) -> Option<Quick> {
        let (username, _) = match &q.kind {
            AuthKind::Password { username, password } => (username, password),
            AuthKind::Start { method, .. } => {
                let jwt = self.jwt.is_some() && method.as_str() == crate::jwt::METHOD;
                return (!jwt && self.webhook.is_none())
                    // [MQTT-4.12.0-1] a method the server does not support.
                    .then_some(Quick::Answer(AuthStep::Failure(
                        ReasonCode::BadAuthenticationMethod,
                    )));
            }
            // No method of brokk's takes more than one step.
            AuthKind::Step { .. } => {
                return Some(Quick::Answer(AuthStep::Failure(ReasonCode::ProtocolError)))
            }
        };
        if q.peer.certificates.is_some() || self.webhook.is_some() {
            return None;
        }
        // No certificate: only the username can name the client.
        let name = username
            .as_ref()
            .map(|u| u.as_str())
            .filter(|u| !u.is_empty() && self.sources.contains(&NameSource::Username));
        let Some(name) = name else {
            return Some(Quick::Answer(
                self.anonymous(username.as_ref().map(|u| u.as_str())),
            ));
        };
        match self.registered(name) {
            Some(r) if !r.resource.enabled || r.resource.certificate.is_some() => {
                Some(Quick::Answer(AuthStep::Failure(ReasonCode::NotAuthorized)))
            }
            Some(_) => Some(Quick::Password),
            None if self.require_registered => {
                Some(Quick::Answer(AuthStep::Failure(ReasonCode::NotAuthorized)))
            }
            None if passwords => Some(Quick::Password),
            None => Some(Quick::Answer(self.anonymous(Some(name)))),
        }
    }

    /// Whether deciding `q` will most likely ask the webhook: an I/O wait, which
    /// runs in a lane of its own ([`crate::connection::run_authentication`]).
    /// Cheap enough for the broker's thread: a client with a certificate whose
    /// name comes from it is classed as a certificate check (the certificate is
    /// parsed on a worker), even if it ends at the webhook.
    pub fn asks_webhook(&self, q: &AuthQuestion) -> bool {
        if self.webhook.is_none() {
            return false;
        }
        match &q.kind {
            AuthKind::Step { .. } => false,
            AuthKind::Start { method, .. } => {
                !(self.jwt.is_some() && method.as_str() == crate::jwt::METHOD)
            }
            AuthKind::Password { username, .. } => {
                let certificate_named = q.peer.certificates.is_some()
                    && self.sources.iter().any(|s| *s != NameSource::Username);
                if certificate_named {
                    return false;
                }
                let name = username
                    .as_ref()
                    .map(|u| u.as_str())
                    .filter(|u| !u.is_empty() && self.sources.contains(&NameSource::Username));
                name.is_none_or(|n| self.registered(n).is_none())
            }
        }
    }

    /// Decides who the client is (blocking: a certificate chain, a token, a
    /// password hash, a webhook call). `passwords`: the password file as loaded
    /// now; `now_unix`: wall-clock seconds.
    pub fn decide(
        &self,
        q: &AuthQuestion,
        passwords: Option<&PasswordFile>,
        now_unix: u64,
    ) -> AuthStep {
        match &q.kind {
            AuthKind::Step { .. } => AuthStep::Failure(ReasonCode::ProtocolError),
            AuthKind::Start { method, data, .. } => {
                if method.as_str() == crate::jwt::METHOD {
                    if let Some(jwt) = &self.jwt {
                        return self.token_login(
                            jwt,
                            data.as_deref().unwrap_or_default(),
                            now_unix,
                        );
                    }
                }
                match &self.webhook {
                    Some(hook) => self.ask_webhook(hook, q, now_unix),
                    None => AuthStep::Failure(ReasonCode::BadAuthenticationMethod),
                }
            }
            AuthKind::Password { username, password } => {
                let username = username.as_ref().map(|u| u.as_str());
                self.password_login(q, username, password.as_deref(), passwords, now_unix)
            }
        }
    }

    fn password_login(
        &self,
        q: &AuthQuestion,
        username: Option<&str>,
        password: Option<&[u8]>,
        passwords: Option<&PasswordFile>,
        now_unix: u64,
    ) -> AuthStep {
        let chain = q.peer.certificates.as_deref();
        let fields = match chain
            .and_then(CertificateChain::leaf)
            .map(CertFields::parse)
        {
            Some(Some(fields)) => Some(fields),
            Some(None) => return AuthStep::Failure(ReasonCode::NotAuthorized),
            None => None,
        };
        let named = self.sources.iter().find_map(|source| {
            let name = match source {
                NameSource::Username => username.map(str::to_owned),
                other => fields.as_ref()?.first(field_of(*other)?),
            };
            name.filter(|n| !n.is_empty()).map(|n| (n, *source))
        });
        let Some((name, source)) = named else {
            if let Some(hook) = &self.webhook {
                return self.ask_webhook(hook, q, now_unix);
            }
            if username.is_none() && chain.is_none() {
                return self.anonymous(None);
            }
            return AuthStep::Failure(ReasonCode::NotAuthorized);
        };
        if let Some(r) = self.registered(&name) {
            return self.registered_login(r, chain, fields.as_ref(), username, password, passwords);
        }
        if let Some(hook) = &self.webhook {
            return self.ask_webhook(hook, q, now_unix);
        }
        if self.require_registered {
            return AuthStep::Failure(ReasonCode::NotAuthorized);
        }
        if source != NameSource::Username {
            // Not registered, named by a certificate: the certificate must be one a
            // registered CA issued.
            return match chain {
                Some(chain) if self.chain_of(chain) => AuthStep::allow(Some(name)),
                _ => AuthStep::Failure(ReasonCode::NotAuthorized),
            };
        }
        match passwords {
            Some(file) => {
                if file.verify(&name, password.unwrap_or_default()) {
                    AuthStep::allow(Some(name))
                } else {
                    AuthStep::Failure(ReasonCode::BadUserNameOrPassword)
                }
            }
            None if self.has_password_file => AuthStep::Failure(ReasonCode::ServerUnavailable),
            None => self.anonymous(Some(&name)),
        }
    }

    fn registered_login(
        &self,
        r: &Registered,
        chain: Option<&CertificateChain>,
        fields: Option<&CertFields>,
        username: Option<&str>,
        password: Option<&[u8]>,
        passwords: Option<&PasswordFile>,
    ) -> AuthStep {
        let c = &r.resource;
        if !c.enabled {
            return AuthStep::Failure(ReasonCode::NotAuthorized);
        }
        let proven = match &c.certificate {
            Some(CertificateValidation::Thumbprint(prints)) => chain
                .and_then(CertificateChain::leaf)
                .is_some_and(|leaf| prints.contains(&thumbprint(leaf))),
            Some(CertificateValidation::Matches(field)) => {
                chain.is_some_and(|chain| self.chain_of(chain))
                    && fields.is_some_and(|f| f.matches(*field, &c.authentication_name))
            }
            None => {
                // A password: the authentication name is the username.
                let user = username.filter(|u| u.eq_ignore_ascii_case(&c.authentication_name));
                let ok = match (user, passwords) {
                    (Some(user), Some(file)) => file.verify(user, password.unwrap_or_default()),
                    _ => false,
                };
                if !ok {
                    return AuthStep::Failure(ReasonCode::BadUserNameOrPassword);
                }
                true
            }
        };
        if !proven {
            return AuthStep::Failure(ReasonCode::NotAuthorized);
        }
        grant(r, None, None)
    }

    fn token_login(&self, jwt: &JwtVerifier, token: &[u8], now_unix: u64) -> AuthStep {
        match jwt.verify(token, now_unix) {
            Ok(g) => {
                let registered = self.registered(&g.authentication_name);
                if registered.is_some_and(|r| !r.resource.enabled) {
                    return AuthStep::Failure(ReasonCode::NotAuthorized);
                }
                // The token was accepted up to `exp` plus the leeway: the connection
                // lasts as long.
                let until = g.expires_unix.saturating_add(jwt.leeway_secs());
                vouched(registered, g.authentication_name, g.attributes, Some(until))
            }
            Err(refusal) => {
                tracing::debug!(%refusal, "token refused");
                AuthStep::Failure(ReasonCode::NotAuthorized)
            }
        }
    }

    fn ask_webhook(&self, hook: &Webhook, q: &AuthQuestion, now_unix: u64) -> AuthStep {
        let (username, password, method, data) = match &q.kind {
            AuthKind::Password { username, password } => {
                (username.as_ref(), password.as_deref(), None, None)
            }
            AuthKind::Start { method, data, .. } | AuthKind::Step { method, data } => {
                (None, None, Some(method.as_str()), data.as_deref())
            }
        };
        let request = WebhookRequest {
            client_id: q.client_id.as_str(),
            username: username.map(|u| u.as_str()),
            password,
            authentication_method: method,
            authentication_data: data,
            certificates: q.peer.certificates.as_deref().map_or(&[], |c| &c.der[..]),
            remote: &q.peer.remote,
        };
        match hook.ask(&request, now_unix) {
            Ok(WebhookDecision::Allow {
                authentication_name,
                attributes,
                expiration_unix,
            }) => {
                let registered = self.registered(&authentication_name);
                if registered.is_some_and(|r| !r.resource.enabled) {
                    return AuthStep::Failure(ReasonCode::NotAuthorized);
                }
                vouched(registered, authentication_name, attributes, expiration_unix)
            }
            Ok(WebhookDecision::Deny { reason }) => {
                tracing::debug!(client_id = q.client_id.as_str(), %reason, "webhook denied");
                AuthStep::Failure(ReasonCode::NotAuthorized)
            }
            Err(error) => {
                tracing::warn!(client_id = q.client_id.as_str(), %error, "authentication webhook failed");
                AuthStep::Failure(ReasonCode::ServerUnavailable)
            }
        }
    }

    fn chain_of(&self, chain: &CertificateChain) -> bool {
        let Some((leaf, rest)) = chain.der.split_first() else {
            return false;
        };
        let end_entity = CertificateDer::from(&leaf[..]);
        let intermediates: Vec<CertificateDer<'_>> =
            rest.iter().map(|c| CertificateDer::from(&c[..])).collect();
        self.chain_verifies(&end_entity, &intermediates, UnixTime::now())
    }

    fn registered(&self, name: &str) -> Option<&Registered> {
        self.clients.get(&name.to_lowercase()).map(|r| &**r)
    }

    /// The maximum of webhook calls at once, when a webhook is configured.
    pub fn webhook_in_flight(&self) -> Option<usize> {
        self.webhook.as_ref().map(|w| w.settings().max_in_flight)
    }

    fn anonymous(&self, user: Option<&str>) -> AuthStep {
        if self.allow_anonymous && !self.require_registered {
            AuthStep::allow(user.map(str::to_owned))
        } else {
            AuthStep::Failure(ReasonCode::NotAuthorized)
        }
    }
}

/// What the broker's thread can do with a question ([`Policy::quick`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quick {
    /// This is the answer.
    Answer(AuthStep),
    /// A password check of the username: a cache may know it, else a worker.
    Password,
}

fn grant(r: &Registered, attributes: Option<Arc<Attributes>>, until: Option<u64>) -> AuthStep {
    AuthStep::Success {
        data: None,
        authentication_name: Some(r.resource.authentication_name.clone()),
        attributes: attributes.or_else(|| r.attributes.clone()),
        valid_until_ms: until.map(|s| s.saturating_mul(1000)),
    }
}

/// A name a token or the webhook vouched for, with its attributes; a registered
/// client's own attributes win over the voucher's of the same name.
fn vouched(
    registered: Option<&Registered>,
    name: String,
    mut attributes: Attributes,
    until: Option<u64>,
) -> AuthStep {
    if let Some(r) = registered {
        attributes.extend(r.resource.attributes.clone());
        let attributes = (!attributes.is_empty()).then(|| Arc::new(attributes));
        return grant(r, attributes, until);
    }
    AuthStep::Success {
        data: None,
        authentication_name: Some(name),
        attributes: (!attributes.is_empty()).then(|| Arc::new(attributes)),
        valid_until_ms: until.map(|s| s.saturating_mul(1000)),
    }
}

fn field_of(source: NameSource) -> Option<CertField> {
    Some(match source {
        NameSource::Username => return None,
        NameSource::CertSubjectCn => CertField::SubjectCn,
        NameSource::CertDns => CertField::Dns,
        NameSource::CertUri => CertField::Uri,
        NameSource::CertIp => CertField::Ip,
        NameSource::CertEmail => CertField::Email,
    })
}

// ------------------------------------------------------------------ certificates

/// The fields of a certificate that can name a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFields {
    /// Subject common names.
    pub subject_cn: Vec<String>,
    /// DNS names (subject alternative names).
    pub dns: Vec<String>,
    /// URIs.
    pub uri: Vec<String>,
    /// IP addresses, as text.
    pub ip: Vec<String>,
    /// Email addresses.
    pub email: Vec<String>,
}

impl CertFields {
    /// Reads the fields of a DER certificate; `None` when it is not one.
    pub fn parse(der: &[u8]) -> Option<CertFields> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut fields = CertFields::default();
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                fields.subject_cn.push(s.to_owned());
            }
        }
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(s) => fields.dns.push((*s).to_owned()),
                    GeneralName::URI(s) => fields.uri.push((*s).to_owned()),
                    GeneralName::RFC822Name(s) => fields.email.push((*s).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            fields.ip.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(fields)
    }

    fn values(&self, field: CertField) -> &[String] {
        match field {
            CertField::SubjectCn => &self.subject_cn,
            CertField::Dns => &self.dns,
            CertField::Uri => &self.uri,
            CertField::Ip => &self.ip,
            CertField::Email => &self.email,
        }
    }

    /// The first value of `field`.
    pub fn first(&self, field: CertField) -> Option<String> {
        self.values(field).first().cloned()
    }

    /// Whether some value of `field` is `name` (ignoring ASCII case, as
    /// authentication names are compared).
    pub fn matches(&self, field: CertField, name: &str) -> bool {
        self.values(field)
            .iter()
            .any(|v| v.eq_ignore_ascii_case(name))
    }
}

/// The client-certificate verifier of TLS listeners with `client_certificates`
/// set: it asks for a certificate and lets in what the current policy admits
/// ([`Policy::admits_certificate`]); the signature of the handshake is checked as
/// rustls' own verifier does.
pub struct FleetCertVerifier {
    verifier: Arc<crate::authentication::Verifier>,
    mandatory: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl FleetCertVerifier {
    /// For a listener: `mandatory` with `client_certificates = "required"`.
    pub fn new(verifier: Arc<crate::authentication::Verifier>, mandatory: bool) -> Self {
        FleetCertVerifier {
            verifier,
            mandatory,
            provider: crate::tls::crypto_provider(),
        }
    }
}

impl fmt::Debug for FleetCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetCertVerifier")
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ClientCertVerifier for FleetCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the registered CAs can change with a reload, and self-signed
        // devices have none to match; clients send the certificate they were given.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self
            .verifier
            .policy()
            .admits_certificate(end_entity, intermediates, now)
        {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use broker_state::{AuthTicket, PeerInfo, Transport};
    use bytes::Bytes;
    use mqtt_proto::{MqttString, ProtocolVersion};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).expect("CA");
        Ca { cert, key }
    }

    /// A client certificate with this CN and SANs, signed by `ca` (self-signed
    /// without one).
    fn client_cert(cn: &str, sans: Vec<SanType>, ca: Option<&Ca>) -> Bytes {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = match ca {
            Some(ca) => p.signed_by(&key, &ca.cert, &ca.key).expect("signed"),
            None => p.self_signed(&key).expect("self-signed"),
        };
        Bytes::copy_from_slice(cert.der())
    }

    fn ia5(s: &str) -> rcgen::Ia5String {
        rcgen::Ia5String::try_from(s).expect("ia5")
    }

    struct Setup {
        dir: tempfile::TempDir,
        ca: Ca,
    }

    impl Setup {
        fn new() -> Setup {
            let dir = tempfile::tempdir().expect("tempdir");
            let ca = ca("fleet-ca");
            std::fs::write(dir.path().join("fleet-ca.pem"), ca.cert.pem()).expect("write");
            Setup { dir, ca }
        }

        fn config(&self, text: &str) -> Config {
            let path = self.dir.path().join("brokk.toml");
            std::fs::write(&path, text).expect("write");
            Config::parse(&path, text).expect("config parses")
        }

        fn policy(&self, text: &str) -> Policy {
            let config = self.config(text);
            Policy::load(&config.identity, config.anonymous_allowed(), false, (1, 2))
                .expect("policy loads")
        }
    }

    fn question(username: Option<&str>, password: &[u8], cert: Option<Bytes>) -> AuthQuestion {
        AuthQuestion {
            ticket: AuthTicket::detached(),
            peer: PeerInfo {
                transport: Transport::Tls,
                listener: "test".into(),
                remote: "127.0.0.1:1".into(),
                certificates: cert.map(|c| Arc::new(CertificateChain { der: vec![c] })),
            },
            protocol: ProtocolVersion::V5,
            client_id: MqttString::copy_from_str("c").expect("id"),
            kind: AuthKind::Password {
                username: username.map(|u| MqttString::copy_from_str(u).expect("user")),
                password: Some(Bytes::copy_from_slice(password)),
            },
        }
    }

    fn name_of(step: &AuthStep) -> Option<&str> {
        match step {
            AuthStep::Success {
                authentication_name,
                ..
            } => authentication_name.as_deref(),
            _ => None,
        }
    }

    const FLEET: &str = r#"
[authentication]
name_sources = ["cert-subject-cn", "username"]
require_registered_client = true
[[ca_certificate]]
name = "fleet-ca"
pem = "fleet-ca.pem"
[[client]]
name = "sensor-1"
attributes = { type = "sensor", floor = 3, zones = ["a", "b"] }
certificate = { validation = "subject-matches-authentication-name" }
[[client]]
name = "sensor-9"
enabled = false
certificate = { validation = "subject-matches-authentication-name" }
"#;

    #[test]
    fn subject_cn_from_a_registered_ca_names_a_registered_client_with_its_attributes() {
        let s = Setup::new();
        let policy = s.policy(FLEET);
        let cert = client_cert("sensor-1", vec![], Some(&s.ca));
        let step = policy.decide(&question(None, b"", Some(cert)), None, 0);
        let AuthStep::Success {
            authentication_name,
            attributes,
            valid_until_ms,
            ..
        } = step
        else {
            panic!("expected success, got {step:?}");
        };
        assert_eq!(authentication_name.as_deref(), Some("sensor-1"));
        assert_eq!(valid_until_ms, None);
        let attributes = attributes.expect("attributes");
        assert_eq!(attributes.get("floor"), Some(&AttributeValue::Integer(3)));
        assert_eq!(
            attributes.get("zones"),
            Some(&AttributeValue::StringList(vec!["a".into(), "b".into()]))
        );
    }

    #[test]
    fn another_ca_a_disabled_client_or_an_unregistered_name_is_not_authorized() {
        let s = Setup::new();
        let policy = s.policy(FLEET);
        let rogue = ca("rogue-ca");
        for (cert, why) in [
            (client_cert("sensor-1", vec![], Some(&rogue)), "another CA"),
            (client_cert("sensor-1", vec![], None), "self-signed"),
            (client_cert("sensor-9", vec![], Some(&s.ca)), "disabled"),
            (
                client_cert("sensor-2", vec![], Some(&s.ca)),
                "not registered",
            ),
        ] {
            let step = policy.decide(&question(None, b"", Some(cert)), None, 0);
            assert_eq!(step, AuthStep::Failure(ReasonCode::NotAuthorized), "{why}");
        }
        // The handshake lets in only what a registered CA issued.
        let now = UnixTime::now();
        let good = client_cert("anyone", vec![], Some(&s.ca));
        let bad = client_cert("sensor-1", vec![], Some(&rogue));
        assert!(policy.admits_certificate(&CertificateDer::from(&good[..]), &[], now));
        assert!(!policy.admits_certificate(&CertificateDer::from(&bad[..]), &[], now));
    }

    #[test]
    fn each_san_kind_names_and_validates() {
        let s = Setup::new();
        let cases: [(&str, &str, SanType, SanType); 4] = [
            (
                "cert-dns",
                "dns",
                SanType::DnsName(ia5("dev.example")),
                SanType::DnsName(ia5("other.example")),
            ),
            (
                "cert-uri",
                "uri",
                SanType::URI(ia5("urn:dev:1")),
                SanType::URI(ia5("urn:dev:2")),
            ),
            (
                "cert-ip",
                "ip",
                SanType::IpAddress("10.0.0.7".parse().expect("ip")),
                SanType::IpAddress("10.0.0.8".parse().expect("ip")),
            ),
            (
                "cert-email",
                "email",
                SanType::Rfc822Name(ia5("dev@example.com")),
                SanType::Rfc822Name(ia5("other@example.com")),
            ),
        ];
        for (source, kind, good, bad) in cases {
            let name = match &good {
                SanType::DnsName(n) | SanType::URI(n) | SanType::Rfc822Name(n) => {
                    n.as_str().to_owned()
                }
                SanType::IpAddress(ip) => ip.to_string(),
                _ => unreachable!(),
            };
            let policy = s.policy(&format!(
                r#"
[authentication]
name_sources = ["{source}"]
require_registered_client = true
[[ca_certificate]]
name = "fleet-ca"
pem = "fleet-ca.pem"
[[client]]
name = "device"
authentication_name = "{name}"
certificate = {{ validation = "{kind}-matches-authentication-name" }}
"#
            ));
            let cert = client_cert("cn-is-not-it", vec![good], Some(&s.ca));
            let step = policy.decide(&question(None, b"", Some(cert)), None, 0);
            assert_eq!(name_of(&step), Some(name.as_str()), "{source}: {step:?}");
            let cert = client_cert("cn-is-not-it", vec![bad], Some(&s.ca));
            let step = policy.decide(&question(None, b"", Some(cert)), None, 0);
            assert_eq!(
                step,
                AuthStep::Failure(ReasonCode::NotAuthorized),
                "{source}"
            );
        }
    }

    #[test]
    fn thumbprints_admit_self_signed_devices_primary_and_secondary() {
        let s = Setup::new();
        let primary = client_cert("cam-1", vec![], None);
        let secondary = client_cert("cam-1", vec![], None);
        let hex = |c: &Bytes| {
            thumbprint(c)
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let policy = s.policy(&format!(
            r#"
[authentication]
name_sources = ["cert-subject-cn"]
require_registered_client = true
[[client]]
name = "cam-1"
certificate = {{ validation = "thumbprint", thumbprints = ["{}", "{}"] }}
"#,
            hex(&primary),
            hex(&secondary).replace(':', "").to_lowercase()
        ));
        let now = UnixTime::now();
        for cert in [primary, secondary] {
            assert!(policy.admits_certificate(&CertificateDer::from(&cert[..]), &[], now));
            let step = policy.decide(&question(None, b"", Some(cert)), None, 0);
            assert_eq!(name_of(&step), Some("cam-1"));
        }
        let other = client_cert("cam-1", vec![], None);
        assert!(!policy.admits_certificate(&CertificateDer::from(&other[..]), &[], now));
        let step = policy.decide(&question(None, b"", Some(other)), None, 0);
        assert_eq!(step, AuthStep::Failure(ReasonCode::NotAuthorized));
    }

    #[test]
    fn a_client_without_certificate_proves_itself_with_its_password() {
        let s = Setup::new();
        let mut file = PasswordFile::new();
        file.set_password("backend", b"right").expect("hash");
        let policy = s.policy(
            r#"
[authentication]
require_registered_client = true
[[client]]
name = "backend"
attributes = { type = "service" }
"#,
        );
        let q = question(Some("backend"), b"right", None);
        assert_eq!(policy.quick(&q, true), Some(Quick::Password));
        assert_eq!(name_of(&policy.decide(&q, Some(&file), 0)), Some("backend"));
        let q = question(Some("backend"), b"wrong", None);
        assert_eq!(
            policy.decide(&q, Some(&file), 0),
            AuthStep::Failure(ReasonCode::BadUserNameOrPassword)
        );
        // Not registered: refused on the broker's thread, no hash computed.
        let q = question(Some("stranger"), b"x", None);
        assert_eq!(
            policy.quick(&q, true),
            Some(Quick::Answer(AuthStep::Failure(ReasonCode::NotAuthorized)))
        );
        // No credentials at all under require_registered_client.
        let q = question(None, b"", None);
        assert_eq!(
            policy.quick(&q, true),
            Some(Quick::Answer(AuthStep::Failure(ReasonCode::NotAuthorized)))
        );
    }

    #[test]
    fn name_sources_are_tried_in_order_and_the_first_non_empty_wins() {
        let s = Setup::new();
        let config = r#"
[authentication]
name_sources = ["cert-dns", "username"]
[[ca_certificate]]
name = "fleet-ca"
pem = "fleet-ca.pem"
"#;
        let policy = s.policy(config);
        // No DNS SAN: the username names it (no password file: the old rules).
        let cert = client_cert("cn", vec![], Some(&s.ca));
        let q = question(Some("alice"), b"", Some(cert));
        let config = s.config(config);
        assert!(!config.anonymous_allowed());
        let open = Policy::load(&config.identity, true, false, (1, 2)).expect("policy");
        assert_eq!(name_of(&open.decide(&q, None, 0)), Some("alice"));
        // A DNS SAN wins over the username; unregistered, it counts because a
        // registered CA issued it.
        let cert = client_cert(
            "cn",
            vec![SanType::DnsName(ia5("dev.example"))],
            Some(&s.ca),
        );
        let q = question(Some("alice"), b"", Some(cert));
        assert_eq!(name_of(&policy.decide(&q, None, 0)), Some("dev.example"));
        let rogue = ca("rogue");
        let cert = client_cert(
            "cn",
            vec![SanType::DnsName(ia5("dev.example"))],
            Some(&rogue),
        );
        let q = question(Some("alice"), b"", Some(cert));
        assert_eq!(
            policy.decide(&q, None, 0),
            AuthStep::Failure(ReasonCode::NotAuthorized)
        );
    }

    #[test]
    fn config_errors_name_the_file_the_key_and_what_was_expected() {
        let s = Setup::new();
        let path = s.dir.path().join("brokk.toml");
        let bad = |text: &str| {
            Config::parse(&path, text)
                .and_then(|c| c.validate())
                .expect_err("refused")
                .to_string()
        };
        let e = bad("[[client]]\nname = \"a\"\ncertificate = { validation = \"cn\" }\n");
        assert!(
            e.contains("brokk.toml") && e.contains("client[0].certificate.validation"),
            "{e}"
        );
        assert!(e.contains("thumbprint"), "{e}");
        let e = bad(
            "[[client]]\nname = \"a\"\ncertificate = { validation = \"thumbprint\", thumbprints = [\"abc\"] }\n",
        );
        assert!(
            e.contains("client[0].certificate.thumbprints") && e.contains("64 hex"),
            "{e}"
        );
        let e = bad("[[client]]\nname = \"a\"\nattributes = { x = 1.5 }\n");
        assert!(
            e.contains("client[0].attributes") && e.contains("integer"),
            "{e}"
        );
        let e = bad("[authentication]\nname_sources = [\"cert-cn\"]\n");
        assert!(
            e.contains("authentication.name_sources") && e.contains("cert-subject-cn"),
            "{e}"
        );
        let e = bad("[[listener]]\nkind = \"mqtt\"\nbind = \"127.0.0.1:0\"\nclient_certificates = \"required\"\n");
        assert!(e.contains("listener[0].client_certificates"), "{e}");
        let e = bad("password_file = \"a\"\n[authentication]\npassword_file = \"b\"\n");
        assert!(e.contains("authentication.password_file"), "{e}");
        let e = bad("include = [\"missing.toml\"]\n");
        assert!(e.contains("missing.toml"), "{e}");
        // Same authentication name ignoring case: refused when loaded.
        let config = s.config(
            "[[client]]\nname = \"a\"\n[[client]]\nname = \"b\"\nauthentication_name = \"A\"\n",
        );
        let e = Policy::load(&config.identity, false, false, (1, 2))
            .expect_err("clash")
            .to_string();
        assert!(e.contains("\"a\"") && e.contains("\"b\""), "{e}");
        // A CA scheme without any CA.
        let config = s.config("[[client]]\nname = \"a\"\ncertificate = { validation = \"dns-matches-authentication-name\" }\n");
        assert!(Policy::load(&config.identity, false, false, (1, 2)).is_err());
    }

    #[test]
    fn included_files_add_clients_with_their_own_relative_paths() {
        let s = Setup::new();
        let sub = s.dir.path().join("identity");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(sub.join("ca.pem"), s.ca.cert.pem()).expect("write");
        std::fs::write(
            sub.join("clients.toml"),
            "[[ca_certificate]]\nname = \"ca\"\npem = \"ca.pem\"\n[[client]]\nname = \"sensor-1\"\ncertificate = { validation = \"subject-matches-authentication-name\" }\n",
        )
        .expect("write");
        let config = s.config(
            "include = [\"identity/clients.toml\"]\n[authentication]\nname_sources = [\"cert-subject-cn\"]\nrequire_registered_client = true\n",
        );
        assert_eq!(config.files.len(), 2);
        assert_eq!(config.identity.ca_certificates[0].pem, sub.join("ca.pem"));
        let policy = Policy::load(&config.identity, false, false, (1, 2)).expect("policy");
        let cert = client_cert("sensor-1", vec![], Some(&s.ca));
        let step = policy.decide(&question(None, b"", Some(cert)), None, 0);
        assert_eq!(name_of(&step), Some("sensor-1"));
        // An included file holds identity tables only.
        std::fs::write(sub.join("clients.toml"), "data_dir = \"x\"\n").expect("write");
        let path = s.dir.path().join("brokk.toml");
        let e = Config::parse(&path, "include = [\"identity/clients.toml\"]\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("clients.toml") && e.contains("data_dir"), "{e}");
    }

    #[test]
    fn the_broker_thread_answers_only_what_needs_no_work() {
        let s = Setup::new();
        let policy = s.policy(FLEET);
        // A certificate always goes to a worker.
        let cert = client_cert("sensor-1", vec![], Some(&s.ca));
        assert_eq!(policy.quick(&question(None, b"", Some(cert)), false), None);
        // An unknown method is refused at once [MQTT-4.12.0-1].
        let mut q = question(None, b"", None);
        q.kind = AuthKind::Start {
            method: MqttString::copy_from_str("SCRAM-SHA-1").expect("m"),
            data: None,
            reauthenticate: false,
        };
        assert_eq!(
            policy.quick(&q, false),
            Some(Quick::Answer(AuthStep::Failure(
                ReasonCode::BadAuthenticationMethod
            )))
        );
        // Anonymous where allowed: at once, with no name.
        let open = Policy::load(&IdentityConfig::default(), true, false, (1, 2)).expect("policy");
        assert_eq!(
            open.quick(&question(None, b"", None), false),
            Some(Quick::Answer(AuthStep::allow(None)))
        );
    }
}
