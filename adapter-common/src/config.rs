//! The TOML config file, the built-in defaults, and the rules a config must pass
//! before the broker opens a single socket.
//!
//! Reading a config happens in two steps so the CLI can sit in between:
//! [`Config::read`] (or [`Config::parse`]) turns a file into a [`Config`] without
//! judging it, the CLI applies its flags on top, and [`Config::validate`] checks the
//! result. Every error names where the offending setting came from: the file and the
//! dotted key, or the command-line flag.
//!
//! Relative paths in a file (`data_dir`, `password_file`, `cert`, `key`) are resolved
//! against the directory holding that file, so a config works the same whatever
//! directory the broker is started from.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub use crate::authorization::AuthorizationConfig;
use crate::authorization::{
    AuthorizationFile, ClientGroupFile, PermissionBindingFile, TopicSpaceFile,
};
pub use crate::identity::ClientCertificates;
use crate::identity::{
    identity_from_file, AuthenticationFile, CaCertificateFile, ClientFile, IdentityConfig,
    IdentityConfigError,
};

/// Where the plain MQTT listener binds when neither a file nor `--listen` names one.
pub const DEFAULT_MQTT_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883);
/// Where the WebSocket listener binds when neither a file nor `--listen` names one.
pub const DEFAULT_WS_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8083);
/// The data directory (dev TLS material and, later, the durable store) by default.
pub const DEFAULT_DATA_DIR: &str = "brokk-data";

/// The transport a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket over plain TCP.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// The operations endpoints over plain HTTP ([`crate::http`]): metrics,
    /// health, publish over HTTP.
    Http,
    /// The same over TLS.
    Https,
}

impl ListenerKind {
    /// Every kind, in the order the config file documents them.
    pub const ALL: [ListenerKind; 6] = [
        Self::Mqtt,
        Self::Mqtts,
        Self::Ws,
        Self::Wss,
        Self::Http,
        Self::Https,
    ];

    /// The kinds that speak MQTT (all but the HTTP ones).
    pub const MQTT: [ListenerKind; 4] = [Self::Mqtt, Self::Mqtts, Self::Ws, Self::Wss];

    /// The name used in the config file and as the `--listen` URL scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Mqtts => "mqtts",
            Self::Ws => "ws",
            Self::Wss => "wss",
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The kind with this config-file name, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether the listener wraps its connections in TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Mqtts | Self::Wss | Self::Https)
    }

    /// Whether the listener expects a WebSocket handshake before MQTT.
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }

    /// Whether the listener serves HTTP (metrics, health, publish).
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Https)
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ListenerKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = ListenerKind::ALL.map(ListenerKind::as_str);
        let name = String::deserialize(d)?;
        ListenerKind::from_name(&name).ok_or_else(|| one_of_error(&names, &name))
    }
}

/// What happens when an offline session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OfflineOverflow {
    /// The session ends and its queue is dropped (Event Grid's behaviour).
    EndSession,
    /// The oldest queued message makes room for the new one.
    DropOldest,
    /// The new message is dropped.
    DropNewest,
}

impl OfflineOverflow {
    const ALL: [OfflineOverflow; 3] = [Self::EndSession, Self::DropOldest, Self::DropNewest];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndSession => "end-session",
            Self::DropOldest => "drop-oldest",
            Self::DropNewest => "drop-newest",
        }
    }
}

impl fmt::Display for OfflineOverflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OfflineOverflow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        named(d, &OfflineOverflow::ALL, OfflineOverflow::as_str)
    }
}

/// Where sessions, subscriptions, queued and retained messages live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Persistence {
    /// In one database file in the data directory; what was acknowledged survives
    /// a crash (the default).
    #[default]
    Disk,
    /// In memory only: lost when the process ends.
    Memory,
}

impl Persistence {
    const ALL: [Persistence; 2] = [Self::Disk, Self::Memory];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disk => "disk",
            Self::Memory => "memory",
        }
    }
}

impl<'de> Deserialize<'de> for Persistence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        named(d, &Persistence::ALL, Persistence::as_str)
    }
}

/// When the store forces its writes to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fsync {
    /// Every commit (a group of writes) is synced before what it holds is
    /// acknowledged: nothing acknowledged is lost on power loss (the default).
    #[default]
    Always,
    /// At most every `fsync_interval_ms`: a crash of the process loses nothing, a
    /// power loss at most that much.
    Interval,
    /// Only at shutdown: a crash of the process loses nothing (the operating
    /// system has the writes), a power loss may lose everything since.
    Never,
}

impl Fsync {
    const ALL: [Fsync; 3] = [Self::Always, Self::Interval, Self::Never];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Interval => "interval",
            Self::Never => "never",
        }
    }
}

impl<'de> Deserialize<'de> for Fsync {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        named(d, &Fsync::ALL, Fsync::as_str)
    }
}

/// The default of `fsync_interval_ms`.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 100;
/// The largest `fsync_interval_ms`.
pub const MAX_FSYNC_INTERVAL_MS: u64 = 60_000;

/// One of `all`, by its name in the config file (`name`).
pub(crate) fn named<'de, D: Deserializer<'de>, T: Copy>(
    d: D,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, D::Error> {
    let found = String::deserialize(d)?;
    all.iter()
        .copied()
        .find(|v| name(*v) == found)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            one_of_error(&names, &found)
        })
}

fn one_of_error<E: serde::de::Error>(names: &[&str], found: &str) -> E {
    let expected: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    E::custom(format_args!(
        "expected one of {}, found {found:?}",
        expected.join(", ")
    ))
}

pub use crate::limits::Limits;

/// Where a listener's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files named by the operator.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// The self-signed development CA in the data directory (`--dev-tls`).
    Dev,
}

/// Where a setting came from, so an error can send the operator to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A `[[listener]]` table in a config file.
    File {
        /// The config file.
        path: PathBuf,
        /// Position of the table among the file's listeners, from 0 as in
        /// `listener[0]`.
        index: usize,
    },
    /// A command-line flag and its value.
    Flag {
        /// The flag, e.g. `--listen`.
        flag: &'static str,
        /// The value given to it.
        value: String,
    },
    /// The built-in defaults.
    Default,
}

impl Origin {
    /// How to name `field` of the thing from this origin, e.g. `brokk.toml: listener[1].bind`.
    fn field(&self, field: &str) -> String {
        match self {
            Origin::File { path, index } => {
                format!("{}: listener[{index}].{field}", path.display())
            }
            Origin::Flag { flag, value } => format!("{flag} {value}"),
            Origin::Default => format!("default listener ({field})"),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, index } => write!(f, "{}: listener[{index}]", path.display()),
            Origin::Flag { flag, value } => write!(f, "{flag} {value}"),
            Origin::Default => f.write_str("default listener"),
        }
    }
}

/// One socket the broker accepts connections on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The transport.
    pub kind: ListenerKind,
    /// The address and port to bind.
    pub bind: SocketAddr,
    /// The certificate; set exactly when `kind` is a TLS kind once validated.
    pub tls: Option<TlsSource>,
    /// For WebSocket listeners, the only request path accepted (others get 404);
    /// `None` accepts any path.
    pub path: Option<String>,
    /// The operator's consent to plain MQTT or WebSocket on a non-loopback address.
    pub allow_plain_non_loopback: bool,
    /// Whether a TLS listener asks clients for a certificate.
    pub client_certificates: ClientCertificates,
    /// Where this listener was declared.
    pub origin: Origin,
}

impl Listener {
    /// A listener from the built-in defaults or a flag, with no TLS files and no
    /// consent to plain non-loopback traffic.
    pub fn new(kind: ListenerKind, bind: SocketAddr, origin: Origin) -> Self {
        Listener {
            kind,
            bind,
            tls: None,
            path: None,
            allow_plain_non_loopback: false,
            client_certificates: ClientCertificates::None,
            origin,
        }
    }

    /// Whether only this machine can reach the listener.
    pub fn is_loopback(&self) -> bool {
        is_loopback(self.bind.ip())
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    // `::ffff:127.0.0.1` is loopback too, though `Ipv6Addr::is_loopback` says no.
    ip.to_canonical().is_loopback()
}

/// The broker's settings: a file (or the defaults) with the command-line flags applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The config file these settings came from, if any; errors name it.
    pub source: Option<PathBuf>,
    /// Where dev TLS material and the durable store live.
    pub data_dir: PathBuf,
    /// Whether the broker's state is kept on disk.
    pub persistence: Persistence,
    /// When the store syncs to the disk.
    pub fsync: Fsync,
    /// With `Fsync::Interval`: the longest time between syncs.
    pub fsync_interval_ms: u64,
    /// A damaged store file is moved aside and what can be read of it kept
    /// (`--recover`), instead of refusing to start.
    pub recover: bool,
    /// The operator's explicit choice about clients without credentials; see
    /// [`Config::anonymous_allowed`] for what happens when it is unset.
    pub allow_anonymous: Option<bool>,
    /// The password file checked for clients that send a username.
    pub password_file: Option<PathBuf>,
    /// Registered clients and CAs, name sources, JWT and webhook
    /// ([`crate::identity`]).
    pub identity: IdentityConfig,
    /// Client groups, topic spaces and permission bindings
    /// ([`crate::authorization`]).
    pub authorization: AuthorizationConfig,
    /// The config files read, the main one first (a reload reads them again).
    pub files: Vec<PathBuf>,
    /// Whether TLS listeners without a certificate use the development CA.
    pub dev_tls: bool,
    /// The sockets to accept connections on.
    pub listeners: Vec<Listener>,
    /// Broker limits the operator set.
    pub limits: Limits,
    /// Session connected / disconnected events on `$events/...` and to a webhook
    /// (`[lifecycle_events]`, [`crate::lifecycle`]).
    pub lifecycle_events: crate::lifecycle::LifecycleEvents,
    /// This broker as a node of a cluster over NATS (`[cluster]`,
    /// [`crate::cluster`]); `None`: a single broker, no NATS.
    pub cluster: Option<brokk_cluster::Settings>,
}

impl Default for Config {
    /// No file, no flags: plain MQTT on 127.0.0.1:1883 and WebSocket on
    /// 127.0.0.1:8083 (any path). Anonymous clients are allowed because only this
    /// machine can reach either listener.
    fn default() -> Self {
        Config {
            source: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            persistence: Persistence::Disk,
            fsync: Fsync::Always,
            fsync_interval_ms: DEFAULT_FSYNC_INTERVAL_MS,
            recover: false,
            allow_anonymous: None,
            password_file: None,
            identity: IdentityConfig::default(),
            authorization: AuthorizationConfig::default(),
            files: Vec::new(),
            dev_tls: false,
            listeners: default_listeners(),
            limits: Limits::default(),
            lifecycle_events: crate::lifecycle::LifecycleEvents::default(),
            cluster: None,
        }
    }
}

/// The listeners used when neither a file nor `--listen` names any.
pub fn default_listeners() -> Vec<Listener> {
    vec![
        Listener::new(ListenerKind::Mqtt, DEFAULT_MQTT_BIND, Origin::Default),
        Listener::new(ListenerKind::Ws, DEFAULT_WS_BIND, Origin::Default),
    ]
}

/// Parses `bind` values: an IP address and a port, with `localhost` standing for
/// 127.0.0.1. Host names are not resolved: that would be I/O, and which address a
/// name resolves to should not change where the broker listens.
pub fn parse_bind(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let port = text.strip_prefix("localhost:")?.parse().ok()?;
    Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

fn deserialize_bind<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_bind(&text).ok_or_else(|| {
        serde::de::Error::custom(format_args!(
            "expected an IP address and port such as \"0.0.0.0:8883\" or \"[::]:8883\", found {text:?}"
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Further files with `[authentication]`, `[[ca_certificate]]` and
    /// `[[client]]` tables, relative to this one.
    #[serde(default)]
    include: Vec<PathBuf>,
    authentication: Option<AuthenticationFile>,
    #[serde(default, rename = "ca_certificate")]
    ca_certificates: Vec<CaCertificateFile>,
    #[serde(default, rename = "client")]
    clients: Vec<ClientFile>,
    authorization: Option<AuthorizationFile>,
    #[serde(default, rename = "client_group")]
    client_groups: Vec<ClientGroupFile>,
    #[serde(default, rename = "topic_space")]
    topic_spaces: Vec<TopicSpaceFile>,
    #[serde(default, rename = "permission_binding")]
    permission_bindings: Vec<PermissionBindingFile>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    persistence: Persistence,
    #[serde(default)]
    fsync: Fsync,
    fsync_interval_ms: Option<u64>,
    allow_anonymous: Option<bool>,
    password_file: Option<PathBuf>,
    #[serde(default, rename = "listener")]
    listeners: Vec<ListenerFile>,
    #[serde(default)]
    limits: Limits,
    lifecycle_events: Option<crate::lifecycle::LifecycleEventsFile>,
    cluster: Option<crate::cluster::ClusterFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerFile {
    kind: ListenerKind,
    #[serde(deserialize_with = "deserialize_bind")]
    bind: SocketAddr,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    path: Option<String>,
    #[serde(default)]
    allow_plain_non_loopback: bool,
    #[serde(default)]
    client_certificates: ClientCertificates,
}

/// A file named by `include`: identity and authorization tables only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncludedFile {
    authentication: Option<AuthenticationFile>,
    #[serde(default, rename = "ca_certificate")]
    ca_certificates: Vec<CaCertificateFile>,
    #[serde(default, rename = "client")]
    clients: Vec<ClientFile>,
    authorization: Option<AuthorizationFile>,
    #[serde(default, rename = "client_group")]
    client_groups: Vec<ClientGroupFile>,
    #[serde(default, rename = "topic_space")]
    topic_spaces: Vec<TopicSpaceFile>,
    #[serde(default, rename = "permission_binding")]
    permission_bindings: Vec<PermissionBindingFile>,
}

impl Config {
    /// Reads and parses a config file; the result still needs the CLI flags and
    /// [`Config::validate`].
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses the text of a config file. `path` names the file in errors and anchors
    /// its relative paths. A file without `[[listener]]` tables gets the default
    /// listeners.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let file: ConfigFile = serde_path_to_error::deserialize(de)
            .map_err(|e| ConfigError::from_toml(path, text, e))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let mut listeners = Vec::with_capacity(file.listeners.len());
        for (index, l) in file.listeners.into_iter().enumerate() {
            let origin = Origin::File {
                path: path.to_path_buf(),
                index,
            };
            let tls = match (l.cert, l.key) {
                (Some(cert), Some(key)) => Some(TlsSource::Files {
                    cert: resolve(cert),
                    key: resolve(key),
                }),
                (None, None) => None,
                (Some(_), None) => return Err(ConfigError::CertWithoutKey { at: origin }),
                (None, Some(_)) => return Err(ConfigError::KeyWithoutCert { at: origin }),
            };
            listeners.push(Listener {
                kind: l.kind,
                bind: l.bind,
                tls,
                path: l.path,
                allow_plain_non_loopback: l.allow_plain_non_loopback,
                client_certificates: l.client_certificates,
                origin,
            });
        }
        if listeners.is_empty() {
            listeners = default_listeners();
        }

        let mut identity = IdentityConfig::default();
        let mut files = vec![path.to_path_buf()];
        let mut password_file = file.password_file.map(resolve);
        let mut take_password_file = |at: &Path, found: Option<PathBuf>| {
            if let Some(found) = found {
                if password_file.is_some() {
                    return Err(ConfigError::Identity(IdentityConfigError {
                        file: at.to_path_buf(),
                        key: "authentication.password_file".into(),
                        problem: "the password file is already set (password_file, or \
                                  [authentication] of another file): set it once"
                            .into(),
                    }));
                }
                password_file = Some(found);
            }
            Ok(())
        };
        let found = identity_from_file(
            path,
            &resolve,
            file.authentication,
            file.ca_certificates,
            file.clients,
            &mut identity,
        )
        .map_err(ConfigError::Identity)?;
        take_password_file(path, found)?;
        let mut authorization = AuthorizationConfig::default();
        authorization
            .add_file(
                path,
                file.authorization,
                file.client_groups,
                file.topic_spaces,
                file.permission_bindings,
            )
            .map_err(ConfigError::Identity)?;
        for include in file.include {
            let included = resolve(include);
            let text = std::fs::read_to_string(&included).map_err(|source| ConfigError::Read {
                path: included.clone(),
                source,
            })?;
            let de = toml::Deserializer::new(&text);
            let inc: IncludedFile = serde_path_to_error::deserialize(de)
                .map_err(|e| ConfigError::from_toml(&included, &text, e))?;
            let base = included.parent().unwrap_or(Path::new("")).to_path_buf();
            let resolve_here = move |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
            let found = identity_from_file(
                &included,
                &resolve_here,
                inc.authentication,
                inc.ca_certificates,
                inc.clients,
                &mut identity,
            )
            .map_err(ConfigError::Identity)?;
            take_password_file(&included, found)?;
            authorization
                .add_file(
                    &included,
                    inc.authorization,
                    inc.client_groups,
                    inc.topic_spaces,
                    inc.permission_bindings,
                )
                .map_err(ConfigError::Identity)?;
            files.push(included);
        }
        // Every query and template parses, every binding's names resolve.
        authorization.build().map_err(ConfigError::Identity)?;
        let lifecycle_events = match file.lifecycle_events {
            Some(table) => table.into_settings(path).map_err(ConfigError::Identity)?,
            None => crate::lifecycle::LifecycleEvents::default(),
        };
        let cluster = match file.cluster {
            Some(table) => Some(
                table
                    .into_settings(path, &resolve)
                    .map_err(ConfigError::Identity)?,
            ),
            None => None,
        };

        Ok(Config {
            source: Some(path.to_path_buf()),
            data_dir: resolve(file.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into())),
            persistence: file.persistence,
            fsync: file.fsync,
            fsync_interval_ms: file.fsync_interval_ms.unwrap_or(DEFAULT_FSYNC_INTERVAL_MS),
            recover: false,
            allow_anonymous: file.allow_anonymous,
            password_file,
            identity,
            authorization,
            files,
            dev_tls: false,
            listeners,
            limits: file.limits,
            lifecycle_events,
            cluster,
        })
    }

    /// Turns on dev TLS: every TLS listener without certificate files uses the
    /// development CA from the data directory.
    pub fn enable_dev_tls(&mut self) {
        self.dev_tls = true;
        for listener in &mut self.listeners {
            if listener.kind.is_tls() && listener.tls.is_none() {
                listener.tls = Some(TlsSource::Dev);
            }
        }
    }

    /// Whether clients may connect without a username and password. Unless the
    /// operator said so explicitly, only when every listener is loopback and no
    /// password file is configured: a password file means credentials are expected.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or_else(|| {
            self.password_file.is_none()
                && !self.identity.expects_credentials()
                && self.listeners.iter().all(Listener::is_loopback)
        })
    }

    /// Checks the rules a config must pass before any socket is opened; the first
    /// broken rule is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::NoListeners {
                file: self.source.clone(),
            });
        }
        for l in &self.listeners {
            validate_listener(l)?;
        }
        for (i, a) in self.listeners.iter().enumerate() {
            if let Some(b) = self.listeners[i + 1..]
                .iter()
                .find(|b| binds_overlap(a.bind, b.bind))
            {
                return Err(ConfigError::DuplicateBind {
                    bind: b.bind,
                    first: a.origin.clone(),
                    second: b.origin.clone(),
                });
            }
        }
        let credentials = self.password_file.is_some() || self.identity.expects_credentials();
        match (self.allow_anonymous, credentials) {
            (Some(false), false) => {
                return Err(ConfigError::NoCredentials {
                    file: self.source.clone(),
                })
            }
            (None, false) => {
                if let Some(l) = self.listeners.iter().find(|l| !l.is_loopback()) {
                    return Err(ConfigError::AnonymousNotExplicit {
                        at: l.origin.clone(),
                        bind: l.bind,
                    });
                }
            }
            _ => {}
        }
        self.validate_limits()
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_FSYNC_INTERVAL_MS).contains(&self.fsync_interval_ms) {
            return Err(ConfigError::FsyncInterval {
                file: self.source.clone(),
                value: self.fsync_interval_ms,
            });
        }
        let limits = &self.limits;
        if let Some((key, value, min, max)) = limits.out_of_range() {
            return Err(ConfigError::LimitOutOfRange {
                file: self.source.clone(),
                key,
                value,
                min,
                max,
            });
        }
        if let (Some(default), Some(max)) = (
            limits.default_session_expiry_secs,
            limits.max_session_expiry_secs,
        ) {
            if default > max {
                return Err(ConfigError::SessionExpiryDefaultAboveMax {
                    file: self.source.clone(),
                    default,
                    max,
                });
            }
        }
        Ok(())
    }
}

fn validate_listener(l: &Listener) -> Result<(), ConfigError> {
    let at = || l.origin.clone();
    if !l.kind.is_tls() && l.client_certificates != ClientCertificates::None {
        return Err(ConfigError::ClientCertificatesOnPlainListener { at: at() });
    }
    if let Some(path) = &l.path {
        if !l.kind.is_websocket() {
            return Err(ConfigError::PathOnNonWebSocket {
                at: at(),
                kind: l.kind,
            });
        }
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(ConfigError::BadWebSocketPath {
                at: at(),
                path: path.clone(),
            });
        }
    }
    match (l.kind.is_tls(), &l.tls) {
        (true, None) => {
            return Err(ConfigError::TlsWithoutCertificate {
                at: at(),
                kind: l.kind,
            })
        }
        (false, Some(_)) => {
            return Err(ConfigError::TlsOnPlainListener {
                at: at(),
                kind: l.kind,
            })
        }
        _ => {}
    }
    if !l.kind.is_tls() && !l.is_loopback() && !l.allow_plain_non_loopback {
        return Err(ConfigError::PlainNonLoopback {
            at: at(),
            kind: l.kind,
            bind: l.bind,
        });
    }
    Ok(())
}

/// Two binds collide when the OS would refuse the second: the same address and
/// port, or the same port where one side is the wildcard address of its family.
fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    // Port 0 asks the system for a free port: two of them never collide.
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// Everything that can be wrong with a config, worded for the operator.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not valid TOML.
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// A key has the wrong type or value, is unknown, or is missing.
    Value {
        /// The file.
        path: PathBuf,
        /// Dotted path of the key, e.g. `listener[0].kind`.
        key: String,
        /// What was expected and what was found.
        message: String,
        /// 1-based line and column of the value, when known.
        position: Option<(usize, usize)>,
    },
    /// A listener names a certificate but no private key.
    CertWithoutKey {
        /// The listener.
        at: Origin,
    },
    /// A listener names a private key but no certificate.
    KeyWithoutCert {
        /// The listener.
        at: Origin,
    },
    /// No listener is configured.
    NoListeners {
        /// The config file, if any.
        file: Option<PathBuf>,
    },
    /// A TLS listener has no certificate and dev TLS is off.
    TlsWithoutCertificate {
        /// The listener.
        at: Origin,
        /// Its kind.
        kind: ListenerKind,
    },
    /// A plain listener names a certificate, which suggests the kind is a typo.
    TlsOnPlainListener {
        /// The listener.
        at: Origin,
        /// Its kind.
        kind: ListenerKind,
    },
    /// A non-WebSocket listener has a `path`.
    PathOnNonWebSocket {
        /// The listener.
        at: Origin,
        /// Its kind.
        kind: ListenerKind,
    },
    /// A WebSocket path that no request could match.
    BadWebSocketPath {
        /// The listener.
        at: Origin,
        /// The path given.
        path: String,
    },
    /// Plain MQTT or WebSocket on an address other machines can reach, without consent.
    PlainNonLoopback {
        /// The listener.
        at: Origin,
        /// Its kind.
        kind: ListenerKind,
        /// Its address.
        bind: SocketAddr,
    },
    /// A non-loopback listener would let anyone in, and the operator did not say so.
    AnonymousNotExplicit {
        /// The first non-loopback listener.
        at: Origin,
        /// Its address.
        bind: SocketAddr,
    },
    /// `allow_anonymous = false` without a password file: nobody could connect.
    NoCredentials {
        /// The config file, if any.
        file: Option<PathBuf>,
    },
    /// Two listeners on the same address and port.
    DuplicateBind {
        /// The address of the second listener.
        bind: SocketAddr,
        /// The first listener.
        first: Origin,
        /// The second listener.
        second: Origin,
    },
    /// A limit outside the range the broker can honour.
    LimitOutOfRange {
        /// The config file, if any.
        file: Option<PathBuf>,
        /// The key under `[limits]`.
        key: &'static str,
        /// The value given.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// `fsync_interval_ms` is out of range.
    FsyncInterval {
        /// The config file, if any.
        file: Option<PathBuf>,
        /// The value given.
        value: u64,
    },
    /// The session expiry given to 3.1.1 clients exceeds the maximum.
    SessionExpiryDefaultAboveMax {
        /// The config file, if any.
        file: Option<PathBuf>,
        /// `limits.default_session_expiry_secs`.
        default: u32,
        /// `limits.max_session_expiry_secs`.
        max: u32,
    },
    /// Something in the identity tables (`[authentication]`, `[[client]]`,
    /// `[[ca_certificate]]`).
    Identity(IdentityConfigError),
    /// A listener asks for client certificates but is not a TLS listener.
    ClientCertificatesOnPlainListener {
        /// The listener.
        at: Origin,
    },
    /// A `--listen` value that is not a listener URL. Displays as the reason alone,
    /// since clap already names the flag and the value.
    BadListenUrl {
        /// The value given.
        url: String,
        /// What was expected and what was found.
        reason: String,
    },
}

impl ConfigError {
    fn from_toml(
        path: &Path,
        text: &str,
        err: serde_path_to_error::Error<toml::de::Error>,
    ) -> ConfigError {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let position = inner.span().map(|span| line_column(text, span.start));
        // toml spreads some messages over lines; the operator's terminal shows one.
        let message = inner.message().trim_end().replace('\n', "; ");
        // An empty key path means the document never reached deserialization.
        if key == "." {
            if let Some((line, column)) = position {
                if !message.starts_with("unknown field") && !message.starts_with("missing field") {
                    return ConfigError::Syntax {
                        path: path.to_path_buf(),
                        line,
                        column,
                        message,
                    };
                }
            }
        }
        ConfigError::Value {
            path: path.to_path_buf(),
            key,
            message: humanize_serde_message(&message),
            position,
        }
    }
}

/// serde words its messages for Rust programmers ("unknown field `x`", "expected
/// u16"); the operator edits TOML keys and values.
fn humanize_serde_message(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return format!("unknown key {}", rest.replace('`', "\""));
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("missing key {}", rest.replace('`', "\""));
    }
    let mismatch = message
        .strip_prefix("invalid value: ")
        .or_else(|| message.strip_prefix("invalid type: "))
        .and_then(|rest| rest.split_once(", expected "));
    if let Some((found, expected)) = mismatch {
        let expected = match expected {
            "u16" => "an integer from 0 to 65535",
            "a nonzero u16" => "an integer from 1 to 65535",
            "u32" => "an integer from 0 to 4294967295",
            "a nonzero u32" => "an integer from 1 to 4294967295",
            "u64" => "an integer from 0 up",
            "a boolean" => "true or false",
            "a string" | "path string" => "a string in quotes",
            "a sequence" => "an array",
            other => other,
        };
        let found = found.replace('`', "");
        let found = found.strip_prefix("integer ").unwrap_or(&found);
        return format!("expected {expected}, found {found}");
    }
    message.to_owned()
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    match file {
        Some(path) => format!("{}: ", path.display()),
        None => String::new(),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "{}: cannot read the config file: {source}", path.display())
            }
            ConfigError::Syntax {
                path,
                line,
                column,
                message,
            } => write!(
                f,
                "{}: line {line}, column {column}: invalid TOML: {message}",
                path.display()
            ),
            ConfigError::Value {
                path,
                key,
                message,
                position,
            } => {
                write!(f, "{}: ", path.display())?;
                // A problem with the document's top level has no key to name.
                if key != "." {
                    write!(f, "{key}: ")?;
                }
                f.write_str(message)?;
                if let Some((line, column)) = position {
                    write!(f, " (line {line}, column {column})")?;
                }
                Ok(())
            }
            ConfigError::CertWithoutKey { at } => write!(
                f,
                "{}: a certificate needs its private key: set key too",
                at.field("cert")
            ),
            ConfigError::KeyWithoutCert { at } => write!(
                f,
                "{}: a private key needs its certificate: set cert too",
                at.field("key")
            ),
            ConfigError::NoListeners { file } => {
                write!(f, "{}no listener is configured", file_prefix(file))
            }
            ConfigError::TlsWithoutCertificate { at, kind } => match at {
                Origin::File { .. } => write!(
                    f,
                    "{}: this {kind} listener needs a certificate: set cert and key, \
                     or pass --dev-tls to use a self-signed development certificate",
                    at.field("cert")
                ),
                _ => write!(
                    f,
                    "{at}: this {kind} listener needs a certificate: pass --dev-tls to use a \
                     self-signed development certificate, or declare the listener with \
                     cert and key in a config file"
                ),
            },
            ConfigError::TlsOnPlainListener { at, kind } => write!(
                f,
                "{}: cert and key only apply to mqtts and wss listeners, this one is {kind}",
                at.field("cert")
            ),
            ConfigError::PathOnNonWebSocket { at, kind } => write!(
                f,
                "{}: a path only applies to ws and wss listeners, this one is {kind}",
                at.field("path")
            ),
            ConfigError::BadWebSocketPath { at, path } => write!(
                f,
                "{}: expected a path starting with \"/\" without query or spaces, such as \"/mqtt\", found {path:?}",
                at.field("path")
            ),
            ConfigError::PlainNonLoopback { at, kind, bind } => {
                let secure = if kind.is_websocket() { "wss" } else { "mqtts" };
                write!(
                    f,
                    "{}: {bind} is reachable from other machines, and {kind} sends passwords \
                     and messages unencrypted: use {secure}",
                    at.field("bind")
                )?;
                match at {
                    Origin::File { index, .. } => write!(
                        f,
                        ", or set listener[{index}].allow_plain_non_loopback = true"
                    ),
                    _ => write!(
                        f,
                        ", or declare the listener in a config file with \
                         allow_plain_non_loopback = true"
                    ),
                }
            }
            ConfigError::AnonymousNotExplicit { at, bind } => write!(
                f,
                "{}: {bind} is reachable from other machines and no password file is set, \
                 so anyone could connect: set password_file, or set allow_anonymous = true \
                 (or pass --allow-anonymous) to accept clients without credentials",
                at.field("bind")
            ),
            ConfigError::NoCredentials { file } => write!(
                f,
                "{}allow_anonymous is false but no password_file is set, so no client could \
                 connect: set password_file (create it with `brokk passwd FILE USERNAME`)",
                file_prefix(file)
            ),
            ConfigError::DuplicateBind {
                bind,
                first,
                second,
            } => write!(
                f,
                "{}: {bind} is already used by {first}",
                second.field("bind")
            ),
            ConfigError::LimitOutOfRange {
                file,
                key,
                value,
                min,
                max,
            } => write!(
                f,
                "{}limits.{key}: expected a value from {min} to {max}, found {value}",
                file_prefix(file)
            ),
            ConfigError::FsyncInterval { file, value } => write!(
                f,
                "{}fsync_interval_ms: expected a value from 1 to {MAX_FSYNC_INTERVAL_MS} \
                 (milliseconds), found {value}",
                file_prefix(file)
            ),
            ConfigError::SessionExpiryDefaultAboveMax { file, default, max } => write!(
                f,
                "{}limits.default_session_expiry_secs: {default} is above \
                 limits.max_session_expiry_secs ({max})",
                file_prefix(file)
            ),
            ConfigError::Identity(e) => e.fmt(f),
            ConfigError::ClientCertificatesOnPlainListener { at } => write!(
                f,
                "{}: expected \"none\" on a listener without TLS (client certificates \
                 come with the TLS handshake: use kind = \"mqtts\" or \"wss\")",
                at.field("client_certificates")
            ),
            // clap prints the flag and the value in front of this.
            ConfigError::BadListenUrl { reason, .. } => f.write_str(reason),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("brokk.toml"), text)
    }

    fn parse_valid(text: &str) -> Result<Config, String> {
        let config = parse(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn error(text: &str) -> String {
        match parse_valid(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn persistence_is_on_disk_and_synced_unless_the_file_says_otherwise() {
        let config = parse_valid("").expect("an empty file is a valid config");
        assert_eq!(
            (config.persistence, config.fsync),
            (Persistence::Disk, Fsync::Always)
        );
        let config = parse_valid(
            "persistence = \"memory\"\nfsync = \"interval\"\nfsync_interval_ms = 250\n",
        )
        .expect("memory persistence with an fsync interval is a valid config");
        assert_eq!(config.persistence, Persistence::Memory);
        assert_eq!(
            (config.fsync, config.fsync_interval_ms),
            (Fsync::Interval, 250)
        );
        let e = error("persistence = \"tape\"\n");
        assert!(
            e.starts_with(
                "brokk.toml: persistence: expected one of \"disk\", \"memory\", found \"tape\""
            ),
            "{e}"
        );
        let e = error("fsync = \"sometimes\"\n");
        assert!(
            e.contains("fsync: expected one of \"always\", \"interval\", \"never\""),
            "{e}"
        );
        let e = error("fsync_interval_ms = 0\n");
        assert!(
            e.starts_with("brokk.toml: fsync_interval_ms: expected a value from 1 to 60000"),
            "{e}"
        );
    }

    #[test]
    fn default_config_is_loopback_tcp_and_websocket_with_anonymous_clients() {
        let config = Config::default();
        config
            .validate()
            .expect("test setup: a failure here is the test failing");
        let listeners: Vec<_> = config
            .listeners
            .iter()
            .map(|l| (l.kind, l.bind.to_string(), l.path.clone()))
            .collect();
        assert_eq!(
            listeners,
            [
                (ListenerKind::Mqtt, "127.0.0.1:1883".to_owned(), None),
                (ListenerKind::Ws, "127.0.0.1:8083".to_owned(), None),
            ]
        );
        assert!(config.anonymous_allowed());
    }

    #[test]
    fn example_file_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../brokk.example.toml");
        let config = Config::read(&path).expect("test setup: a failure here is the test failing");
        config
            .validate()
            .expect("test setup: a failure here is the test failing");
        let base = path
            .parent()
            .expect("test setup: a failure here is the test failing");
        assert_eq!(config.password_file, Some(base.join("passwords")));
        assert!(!config.anonymous_allowed());
        let listeners: Vec<_> = config
            .listeners
            .iter()
            .map(|l| (l.kind, l.bind.to_string()))
            .collect();
        assert_eq!(
            listeners,
            [
                (ListenerKind::Mqtts, "0.0.0.0:8883".to_owned()),
                (ListenerKind::Wss, "0.0.0.0:443".to_owned()),
            ]
        );
        assert_eq!(
            config.listeners[0].tls,
            Some(TlsSource::Files {
                cert: base.join("server.pem"),
                key: base.join("server.key"),
            })
        );
        assert_eq!(config.listeners[1].path.as_deref(), Some("/mqtt"));
        // Every limit is commented out, so the broker's defaults apply.
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn example_file_authorization_section_parses_when_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../brokk.example.toml");
        let text =
            std::fs::read_to_string(&path).expect("test setup: a failure here is the test failing");
        let section: String = text
            .lines()
            .skip_while(|l| !l.contains("-- authorization"))
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let config = parse(&format!("allow_anonymous = true\n{section}"))
            .expect("the example's authorization section parses");
        let policy = config.authorization.build().expect("it builds");
        assert_eq!(policy.mode, broker_state::authz::Mode::Bindings);
        assert_eq!(
            (
                policy.groups.len(),
                policy.spaces.len(),
                policy.bindings.len()
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn example_file_limits_all_parse_when_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../brokk.example.toml");
        let text =
            std::fs::read_to_string(&path).expect("test setup: a failure here is the test failing");
        let mut in_limits = false;
        let mut uncommented = String::new();
        for line in text.lines() {
            if line.starts_with('[') {
                in_limits = line == "[limits]";
            }
            let line = match line.strip_prefix("# ") {
                Some(rest) if in_limits && rest.contains(" = ") => rest,
                _ => line,
            };
            uncommented.push_str(line);
            uncommented.push('\n');
        }
        let config = parse(&uncommented).expect("test setup: a failure here is the test failing");
        config
            .validate()
            .expect("test setup: a failure here is the test failing");
        let limits = config.limits;
        assert_eq!(limits.max_sessions_per_authentication_name, Some(100));
        assert_eq!(limits.offline_overflow, Some(OfflineOverflow::EndSession));
        // Every field of `Limits` appears in the example.
        let debug = format!("{limits:?}");
        assert!(
            !debug.contains("None"),
            "limits missing from the example: {debug}"
        );
    }

    #[test]
    fn unknown_listener_kind_names_file_key_and_choices() {
        let e = error(
            "allow_anonymous = true\n[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1883\"\n",
        );
        assert_eq!(
            e,
            "brokk.toml: listener[0].kind: expected one of \"mqtt\", \"mqtts\", \"ws\", \"wss\", \
             \"http\", \"https\", found \"tcp\" (line 3, column 8)"
        );
    }

    #[test]
    fn bad_bind_names_the_second_listener() {
        let e = error(
            "[[listener]]\nkind = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n\
             [[listener]]\nkind = \"ws\"\nbind = \"example.com:80\"\n",
        );
        assert!(
            e.starts_with(
                "brokk.toml: listener[1].bind: expected an IP address and port such as \
                 \"0.0.0.0:8883\" or \"[::]:8883\", found \"example.com:80\""
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let e = error("[limits]\nmax_packet_sise = 10\n");
        assert!(
            e.starts_with("brokk.toml: limits.max_packet_sise: unknown key \"max_packet_sise\", expected one of"),
            "{e}"
        );
        let e = error("listen = \"x\"\n");
        assert!(e.contains("unknown key \"listen\""), "{e}");
        assert!(e.starts_with("brokk.toml: listen: "), "{e}");
    }

    #[test]
    fn missing_bind_is_named() {
        let e = error("[[listener]]\nkind = \"mqtt\"\n");
        assert!(
            e.starts_with("brokk.toml: listener[0]: missing key \"bind\""),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_and_out_of_range_limits_are_named() {
        let e = error("[limits]\nmax_keep_alive = 70000\n");
        assert_eq!(
            e,
            "brokk.toml: limits.max_keep_alive: expected an integer from 0 to 65535, found 70000 \
             (line 2, column 18)"
        );
        let e = error("[limits]\nreceive_maximum = 0\n");
        assert!(
            e.starts_with(
                "brokk.toml: limits.receive_maximum: expected an integer from 1 to 65535, found 0"
            ),
            "{e}"
        );
        let e = error("[limits]\nretain_available = \"yes\"\n");
        assert!(
            e.starts_with(
                "brokk.toml: limits.retain_available: expected true or false, found string \"yes\""
            ),
            "{e}"
        );
        let e = error("data_dir = 3\n");
        assert!(
            e.starts_with("brokk.toml: data_dir: expected a string in quotes, found 3"),
            "{e}"
        );
        let e = error("[limits]\noffline_overflow = \"drop\"\n");
        assert!(
            e.starts_with(
                "brokk.toml: limits.offline_overflow: expected one of \"end-session\", \
                 \"drop-oldest\", \"drop-newest\", found \"drop\""
            ),
            "{e}"
        );
        let e = error("[limits]\nmax_packet_size = 300000000\n");
        assert_eq!(
            e,
            "brokk.toml: limits.max_packet_size: expected a value from 1 to 268435460, found 300000000"
        );
        let e = error("[limits]\nconnect_timeout_secs = 0\n");
        assert!(
            e.contains("limits.connect_timeout_secs: expected a value from 1"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_keeps_line_and_column() {
        let e = error("data_dir = \"x\"\n[[listener]\n");
        assert!(e.starts_with("brokk.toml: line 2, column "), "{e}");
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn plain_listener_on_public_address_needs_consent() {
        let e = error(
            "allow_anonymous = true\n[[listener]]\nkind = \"mqtt\"\nbind = \"0.0.0.0:1883\"\n",
        );
        assert_eq!(
            e,
            "brokk.toml: listener[0].bind: 0.0.0.0:1883 is reachable from other machines, and \
             mqtt sends passwords and messages unencrypted: use mqtts, or set \
             listener[0].allow_plain_non_loopback = true"
        );
        parse_valid(
            "allow_anonymous = true\n[[listener]]\nkind = \"mqtt\"\nbind = \"0.0.0.0:1883\"\n\
             allow_plain_non_loopback = true\n",
        )
        .expect("test setup: a failure here is the test failing");
    }

    #[test]
    fn anonymous_on_public_address_must_be_explicit() {
        let listener = "[[listener]]\nkind = \"mqtts\"\nbind = \"[::]:8883\"\n\
                        cert = \"c.pem\"\nkey = \"k.pem\"\n";
        let e = error(listener);
        assert!(
            e.starts_with("brokk.toml: listener[0].bind: [::]:8883 is reachable from other machines and no password file is set"),
            "{e}"
        );
        let open = parse_valid(&format!("allow_anonymous = true\n{listener}"))
            .expect("test setup: a failure here is the test failing");
        assert!(open.anonymous_allowed());
        let closed = parse_valid(&format!("password_file = \"pw\"\n{listener}"))
            .expect("test setup: a failure here is the test failing");
        assert!(!closed.anonymous_allowed());
        let both = parse_valid(&format!(
            "allow_anonymous = true\npassword_file = \"pw\"\n{listener}"
        ))
        .expect("test setup: a failure here is the test failing");
        assert!(both.anonymous_allowed());
    }

    #[test]
    fn password_file_turns_off_anonymous_on_loopback_too() {
        let config = parse_valid("password_file = \"pw\"\n")
            .expect("test setup: a failure here is the test failing");
        assert!(!config.anonymous_allowed());
    }

    #[test]
    fn refusing_anonymous_without_password_file_is_an_error() {
        let e = error("allow_anonymous = false\n");
        assert!(e.starts_with("brokk.toml: allow_anonymous is false but no password_file"));
    }

    #[test]
    fn tls_listener_needs_cert_and_key_or_dev_tls() {
        let text = "[[listener]]\nkind = \"wss\"\nbind = \"127.0.0.1:8443\"\n";
        let e = error(text);
        assert!(
            e.starts_with("brokk.toml: listener[0].cert: this wss listener needs a certificate"),
            "{e}"
        );
        let mut config = parse(text).expect("test setup: a failure here is the test failing");
        config.enable_dev_tls();
        config
            .validate()
            .expect("test setup: a failure here is the test failing");
        assert_eq!(config.listeners[0].tls, Some(TlsSource::Dev));

        let e = error(&format!("{text}cert = \"server.pem\"\n"));
        assert_eq!(
            e,
            "brokk.toml: listener[0].cert: a certificate needs its private key: set key too"
        );
        let e = error(
            "[[listener]]\nkind = \"mqtt\"\nbind = \"127.0.0.1:1883\"\ncert = \"a\"\nkey = \"b\"\n",
        );
        assert!(
            e.contains("cert and key only apply to mqtts and wss"),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_are_resolved_against_the_config_directory() {
        let config = Config::parse(
            Path::new("/etc/brokk/brokk.toml"),
            "data_dir = \"data\"\npassword_file = \"/srv/pw\"\n\
             [[listener]]\nkind = \"mqtts\"\nbind = \"127.0.0.1:8883\"\ncert = \"s.pem\"\nkey = \"s.key\"\n",
        )
        .expect("test setup: a failure here is the test failing");
        assert_eq!(config.data_dir, Path::new("/etc/brokk/data"));
        assert_eq!(config.password_file.as_deref(), Some(Path::new("/srv/pw")));
        assert_eq!(
            config.listeners[0].tls,
            Some(TlsSource::Files {
                cert: "/etc/brokk/s.pem".into(),
                key: "/etc/brokk/s.key".into()
            })
        );
    }

    #[test]
    fn duplicate_binds_are_rejected_including_wildcard_overlap() {
        let e = error(
            "[[listener]]\nkind = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n\
             [[listener]]\nkind = \"ws\"\nbind = \"127.0.0.1:1883\"\n",
        );
        assert_eq!(
            e,
            "brokk.toml: listener[1].bind: 127.0.0.1:1883 is already used by brokk.toml: listener[0]"
        );
        let e = error(
            "allow_anonymous = true\n\
             [[listener]]\nkind = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n\
             [[listener]]\nkind = \"mqtt\"\nbind = \"0.0.0.0:1883\"\nallow_plain_non_loopback = true\n",
        );
        assert!(e.contains("is already used by"), "{e}");
        parse_valid(
            "[[listener]]\nkind = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n\
             [[listener]]\nkind = \"mqtt\"\nbind = \"[::1]:1883\"\n",
        )
        .expect("test setup: a failure here is the test failing");
    }

    #[test]
    fn websocket_path_rules() {
        let e =
            error("[[listener]]\nkind = \"mqtt\"\nbind = \"127.0.0.1:1883\"\npath = \"/mqtt\"\n");
        assert!(
            e.starts_with("brokk.toml: listener[0].path: a path only applies to ws and wss"),
            "{e}"
        );
        let e = error("[[listener]]\nkind = \"ws\"\nbind = \"127.0.0.1:8083\"\npath = \"mqtt\"\n");
        assert!(e.contains("expected a path starting with \"/\""), "{e}");
    }

    #[test]
    fn session_expiry_default_must_not_exceed_max() {
        let e =
            error("[limits]\ndefault_session_expiry_secs = 7200\nmax_session_expiry_secs = 3600\n");
        assert_eq!(
            e,
            "brokk.toml: limits.default_session_expiry_secs: 7200 is above \
             limits.max_session_expiry_secs (3600)"
        );
    }

    #[test]
    fn mapped_ipv4_loopback_counts_as_loopback() {
        parse_valid("[[listener]]\nkind = \"mqtt\"\nbind = \"[::ffff:127.0.0.1]:1883\"\n")
            .expect("test setup: a failure here is the test failing");
    }

    #[test]
    fn missing_file_is_named() {
        let e = Config::read(Path::new("/nonexistent/brokk.toml")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("/nonexistent/brokk.toml: cannot read the config file: "));
    }
}
