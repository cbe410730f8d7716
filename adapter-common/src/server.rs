//! Starting a server, the parts every adapter shares: TLS material and passwords
//! loaded, listeners bound (so their addresses are known before any runtime
//! starts), the core configured; and the `brokk` command-line `main`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use broker_state::{Broker, PeerInfo, Transport};
use clap::Parser;

use crate::authentication::Verifier;
use crate::cli::{load_config, run_explain, run_passwd, AuthzCommand, Cli, Command};
use crate::config::{ClientCertificates, Config, Fsync, ListenerKind, Persistence, TlsSource};
use crate::core::broker_config;
use crate::identity::{FleetCertVerifier, Policy};
use crate::passwd::{PasswdError, PasswordFile, SetPassword};
use crate::tls::{self, TlsError};

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not bind.
    Bind {
        /// The listener's address.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
    /// The development TLS material could not be loaded or created.
    Tls(TlsError),
    /// A listener's certificate or key could not be loaded: `at` names the listener
    /// and the key, as in `brokk.toml: listener[0].cert`.
    ListenerTls {
        /// Where the file was configured.
        at: String,
        /// What is wrong with it (this names the resolved path); boxed, as it
        /// is large and every `StartError` would pay for it.
        error: Box<TlsError>,
    },
    /// The password file could not be read.
    Passwords(PasswdError),
    /// The runtime or its thread could not start.
    Runtime(std::io::Error),
    /// The durable store could not be opened (in use, damaged, unreadable).
    Store(brokk_store::StoreError),
    /// The node could not join its cluster (NATS unreachable, JetStream
    /// refused the buckets).
    Cluster(brokk_cluster::StartError),
    /// The identity policy could not be built (a CA or JWKS file, clashing
    /// clients).
    Identity {
        /// The config file.
        file: Option<PathBuf>,
        /// What is wrong.
        error: crate::identity::PolicyError,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::ListenerTls { at, error } => write!(f, "{at}: {error}"),
            StartError::Passwords(e) => write!(f, "{e}"),
            StartError::Runtime(e) => write!(f, "cannot start the runtime: {e}"),
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Cluster(e) => write!(f, "cluster: {e}"),
            StartError::Identity { file, error } => match file {
                Some(file) => write!(f, "{}: {error}", file.display()),
                None => write!(f, "{error}"),
            },
        }
    }
}

impl std::error::Error for StartError {}

/// A bound listener, ready to be handed to a runtime.
pub struct BoundListener {
    /// The transport.
    pub kind: ListenerKind,
    /// The bound socket, non-blocking.
    pub socket: std::net::TcpListener,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// TLS server config for `mqtts` and `wss`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// WebSocket path required, if any.
    pub path: Option<String>,
    /// `kind://addr`, for logs.
    pub label: Arc<str>,
}

impl BoundListener {
    /// What the core is told about a connection accepted here.
    pub fn peer(&self, remote: SocketAddr) -> PeerInfo {
        PeerInfo {
            transport: match self.kind {
                ListenerKind::Mqtt => Transport::Tcp,
                ListenerKind::Mqtts => Transport::Tls,
                ListenerKind::Ws => Transport::WebSocket,
                ListenerKind::Wss => Transport::SecureWebSocket,
                ListenerKind::Http => Transport::Tcp,
                ListenerKind::Https => Transport::Tls,
            },
            listener: self.label.clone(),
            remote: remote.to_string().into_boxed_str(),
            certificates: None,
        }
    }
}

/// Everything a runtime needs to serve a config.
pub struct Prepared {
    /// The configured core, restored from the store.
    pub broker: Broker,
    /// The durable store the core's effects go to (`persistence = "disk"`).
    pub store: Option<brokk_store::DurableStore>,
    /// This node's link to its cluster (`[cluster]`).
    pub cluster: Option<brokk_cluster::ClusterNode>,
    /// The listeners, bound.
    pub listeners: Vec<BoundListener>,
    /// Time for TLS and WebSocket handshakes.
    pub handshake_timeout: Duration,
    /// With dev TLS, the CA clients should trust.
    pub ca_cert: Option<PathBuf>,
    /// The parking lot's sweep tick ([`crate::park`]).
    pub park_tick: Duration,
    /// Connections parked right now, for [`RunningServer::parked_connections`].
    pub parked: crate::park::ParkedGauge,
    /// Who clients are: the password file and the anonymous policy.
    pub verifier: Arc<Verifier>,
    /// Password verifications running at once, at most (the rest wait in line).
    pub max_verifications: usize,
    /// Lifecycle events: topics and webhook (`[lifecycle_events]`), set on the
    /// hub when the server thread starts.
    pub lifecycle_events: crate::lifecycle::LifecycleEvents,
    /// The listeners' certificates read from files, which a reload reads again.
    pub certificates: Vec<Arc<tls::ReloadableCert>>,
}

/// How long a connection has for its TLS and WebSocket handshakes by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a closing connection gets to take its last bytes.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// After the broker closes a connection (DISCONNECT sent, write side shut), how
/// long its input is still read and thrown away, at most: a socket closed with
/// unread input makes the kernel answer the client's next write with a reset, and a
/// client that writes before it reads sees "connection reset" and never the
/// DISCONNECT. The client normally closes as soon as it has read the DISCONNECT,
/// which ends the wait at once.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// How many bytes of input a lingering close throws away, at most.
pub const LINGER_BYTES: usize = 1024 * 1024;

/// Time connections get to flush their DISCONNECT at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

impl Prepared {
    /// The addresses, in the order of the config's listeners.
    pub fn addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.listeners.iter().map(|l| (l.kind, l.addr)).collect()
    }
}

/// Opens the durable store (unless persistence is off) and restores the core from
/// it: sessions, subscriptions, queued and in-flight messages, retained messages,
/// wills.
fn open_store(config: &Config) -> Result<(Broker, Option<brokk_store::DurableStore>), StartError> {
    let mut core = broker_config(&config.limits);
    core.cluster = config.cluster.is_some();
    // A node of a cluster keeps its sessions in the cluster's store (JetStream),
    // so that they outlive the node: its data directory is not used.
    if core.cluster {
        core.store_effects = true;
        tracing::info!("cluster: sessions are kept in JetStream, not in the data directory");
        return Ok((Broker::new(core, os_seed()), None));
    }
    if config.persistence == Persistence::Memory {
        return Ok((Broker::new(core, os_seed()), None));
    }
    let options = brokk_store::StoreOptions {
        dir: config.data_dir.clone(),
        fsync: match config.fsync {
            Fsync::Always => brokk_store::FsyncPolicy::Always,
            Fsync::Interval => brokk_store::FsyncPolicy::EveryMs(config.fsync_interval_ms),
            Fsync::Never => brokk_store::FsyncPolicy::Never,
        },
        recover: config.recover,
    };
    let started = std::time::Instant::now();
    let opened = brokk_store::open(&options).map_err(StartError::Store)?;
    if let Some(report) = &opened.recovery {
        tracing::warn!(%report, "the store file was damaged and has been moved aside");
    }
    core.store_effects = true;
    let mut broker = Broker::new(core, os_seed());
    let now = crate::runtime::now();
    let records = opened.replay.len();
    for op in opened.replay {
        broker.handle_restore(now, op);
    }
    tracing::info!(
        path = %opened.store.path().display(),
        records,
        sessions = broker.session_count(),
        retained = broker.retained_count(),
        millis = started.elapsed().as_millis() as u64,
        "state restored from the store"
    );
    Ok((broker, Some(opened.store)))
}

/// Loads TLS material and passwords, binds every listener and configures the core.
pub fn prepare(config: &Config) -> Result<Prepared, StartError> {
    // First: a second broker on the same data directory stops here, before it
    // binds anything.
    let (mut broker, store) = open_store(config)?;
    // Then the cluster: a node that cannot reach NATS does not serve (its
    // clients would see only part of the broker). The cluster's retained
    // messages go into the core before anyone can subscribe.
    let cluster = match &config.cluster {
        Some(settings) => {
            let mut settings = settings.clone();
            settings.max_sessions_per_authentication_name =
                broker.config().max_sessions_per_authentication_name;
            let node_id = settings.node_id.clone();
            let (node, joined) =
                brokk_cluster::ClusterNode::start(settings).map_err(StartError::Cluster)?;
            let now = crate::runtime::now();
            let (retained, filters) = (joined.retained.len(), joined.interest.len());
            for op in joined.sessions {
                broker.handle_restore(now, op);
            }
            let sessions = broker.session_count();
            for p in joined.retained {
                broker.handle_cluster_retained(now, p);
            }
            for (node, f) in &joined.interest {
                broker.handle_remote_interest(*node, f, true);
            }
            tracing::info!(
                node = node_id,
                retained,
                filters,
                sessions,
                "joined: the cluster's retained messages, the other nodes' filters and this node's sessions read"
            );
            Some(node)
        }
        None => None,
    };
    let dev = if config.dev_tls {
        Some(tls::dev_tls(&config.data_dir).map_err(StartError::Tls)?)
    } else {
        None
    };
    // Who a client is gets decided off the broker's thread (see
    // crate::authentication): the core asks, the hub and its workers answer.
    broker.set_external_authentication(true);
    let key = os_seed();
    let half = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&key[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let (policy, passwords) = load_identity(config, (half(16), half(24)))?;
    let verifier = Arc::new(Verifier::new(policy, passwords, (half(0), half(8))));
    // Client groups, topic spaces and permission bindings decide every PUBLISH and
    // SUBSCRIBE from now on (none in open mode).
    broker.set_authorization(crate::runtime::now(), load_authorization(config)?);
    let mut listeners = Vec::new();
    let mut certificates = Vec::new();
    for l in &config.listeners {
        let client_auth = match l.client_certificates {
            ClientCertificates::None => None,
            c => Some(Arc::new(FleetCertVerifier::new(
                verifier.clone(),
                c == ClientCertificates::Required,
            ))
                as Arc<dyn rustls::server::danger::ClientCertVerifier>),
        };
        let tls = match (&l.tls, &dev) {
            (Some(TlsSource::Files { cert, key }), _) => {
                Some(
                    tls::reloadable_server_config(cert, key, client_auth)
                        .map(|(config, cert)| {
                            certificates.push(cert);
                            config
                        })
                        .map_err(|error| {
                            // Send the operator to the key that names the file: `cert` is
                            // read first, so a file given as both is reported as `cert`
                            // unless it is the key that is missing from it.
                            let field = match &error {
                                TlsError::NoPrivateKey { .. } => Some("key"),
                                TlsError::Read { path, .. } | TlsError::BadPem { path, .. } => {
                                    Some(if path == cert { "cert" } else { "key" })
                                }
                                TlsError::NoCertificate { .. } => Some("cert"),
                                _ => None,
                            };
                            let at = match (&l.origin, field) {
                                (crate::config::Origin::File { path, index }, Some(field)) => {
                                    format!("{}: listener[{index}].{field}", path.display())
                                }
                                (origin, _) => origin.to_string(),
                            };
                            StartError::ListenerTls {
                                at,
                                error: Box::new(error),
                            }
                        })?,
                )
            }
            (Some(TlsSource::Dev), Some(dev)) => {
                Some(dev.server_config(client_auth).map_err(StartError::Tls)?)
            }
            _ => None,
        };
        // An HTTPS listener offers HTTP/2 by ALPN, and HTTP/1.1.
        let tls = tls.map(|mut c| {
            if l.kind == ListenerKind::Https {
                c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            }
            c
        });
        let bind_err = |error| StartError::Bind {
            addr: l.bind,
            error,
        };
        let socket = bind(l.bind).map_err(bind_err)?;
        let addr = socket.local_addr().map_err(bind_err)?;
        let label: Arc<str> = format!("{}://{addr}", l.kind.as_str()).into();
        tracing::info!(listener = %label, "listening");
        listeners.push(BoundListener {
            kind: l.kind,
            socket,
            addr,
            tls: tls.map(Arc::new),
            path: l.path.clone(),
            label,
        });
    }
    let handshake_timeout = config
        .limits
        .tls_handshake_timeout_secs
        .map_or(DEFAULT_HANDSHAKE_TIMEOUT, Duration::from_secs);
    let max_verifications = config.limits.max_verifications_in_flight.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n.get() as usize,
    );
    Ok(Prepared {
        verifier,
        max_verifications,
        broker,
        store,
        cluster,
        listeners,
        handshake_timeout,
        ca_cert: dev.map(|d| d.ca_cert),
        park_tick: config
            .limits
            .park_idle_ms
            .map_or(crate::park::PARK_TICK, Duration::from_millis),
        parked: crate::park::ParkedGauge::default(),
        lifecycle_events: config.lifecycle_events.clone(),
        certificates,
    })
}

/// The identity policy and the password file of `config`, read from disk (at
/// start, and again by a reload). `key`: secret randomness for the webhook cache.
pub fn load_identity(
    config: &Config,
    key: (u64, u64),
) -> Result<(Policy, Option<(PathBuf, PasswordFile)>), StartError> {
    let passwords = match &config.password_file {
        Some(path) => Some((
            path.clone(),
            PasswordFile::load(path).map_err(StartError::Passwords)?,
        )),
        None => None,
    };
    let policy = Policy::load(
        &config.identity,
        config.anonymous_allowed(),
        passwords.is_some(),
        key,
    )
    .map_err(|e| StartError::Identity {
        file: config.source.clone(),
        error: e,
    })?;
    Ok((policy, passwords))
}

/// The authorization policy of `config`: `None` in open mode.
pub fn load_authorization(
    config: &Config,
) -> Result<Option<Arc<broker_state::authz::Policy>>, StartError> {
    let policy = config
        .authorization
        .build()
        .map_err(|e| StartError::Identity {
            file: None,
            error: crate::identity::PolicyError(e.to_string()),
        })?;
    Ok((policy.mode == broker_state::authz::Mode::Bindings).then(|| Arc::new(policy)))
}

/// 32 bytes from the operating system for the core's seed (assigned client ids,
/// shared-subscription picks, hash seeds).
pub fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut seed).is_ok() {
            return seed;
        }
    }
    // No /dev/urandom: the std hasher's per-process random keys are the fallback.
    use std::hash::{BuildHasher, Hasher};
    for chunk in seed.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    seed
}

/// A running server, whichever runtime serves it: its addresses, its dev CA, and
/// graceful shutdown. Dropping it shuts the server down.
pub struct ServerHandle {
    addrs: Vec<(ListenerKind, SocketAddr)>,
    verifier: Arc<Verifier>,
    certificates: Vec<Arc<tls::ReloadableCert>>,
    parked: crate::park::ParkedGauge,
    ca_cert: Option<PathBuf>,
    stop: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// Runs `serve(prepared)` on a thread of its own (named `brokk`); `stop` tells
    /// that thread to shut down gracefully.
    pub fn spawn<F>(
        prepared: Prepared,
        stop: impl FnOnce() + Send + 'static,
        serve: F,
    ) -> Result<ServerHandle, StartError>
    where
        F: FnOnce(Prepared) + Send + 'static,
    {
        let addrs = prepared.addrs();
        let ca_cert = prepared.ca_cert.clone();
        let parked = prepared.parked.clone();
        let verifier = prepared.verifier.clone();
        let certificates = prepared.certificates.clone();
        let thread = std::thread::Builder::new()
            .name("brokk".into())
            .spawn(move || serve(prepared))
            .map_err(StartError::Runtime)?;
        Ok(ServerHandle {
            addrs,
            verifier,
            certificates,
            parked,
            ca_cert,
            stop: Some(Box::new(stop)),
            thread: Some(thread),
        })
    }

    /// The bound addresses, in the order of the config's listeners.
    pub fn local_addrs(&self) -> &[(ListenerKind, SocketAddr)] {
        &self.addrs
    }

    /// The first bound address of a kind.
    pub fn addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.addrs.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a)
    }

    /// With dev TLS, the CA certificate clients should trust.
    pub fn dev_ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// Reloads the identity policy (clients, CAs, JWT keys, webhook, password
    /// file), the authorization policy from `config`, read anew by the caller,
    /// and the listeners' certificate files (same paths as at start):
    /// all of it or, when anything in it cannot be loaded, none of it (the error
    /// says what, and the old policies stay). Connections are not dropped; new ones
    /// are decided by the new identity policy; the server thread applies the new
    /// authorization within a second (removing subscriptions it no longer allows).
    /// Other settings (listeners, limits) need a restart.
    pub fn reload(&self, config: &Config) -> Result<(), StartError> {
        let key = os_seed();
        let half = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&key[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let (policy, passwords) = load_identity(config, (half(0), half(8)))?;
        let authorization = load_authorization(config)?;
        // The listeners' certificate files, read again (renewed certificates): all
        // of them must load before any is replaced.
        for cert in &self.certificates {
            cert.check().map_err(StartError::Tls)?;
        }
        for cert in &self.certificates {
            cert.reload().map_err(StartError::Tls)?;
        }
        tracing::info!(?policy, "identity reloaded");
        self.verifier.reload(policy, passwords);
        self.verifier.offer_authorization(authorization);
        Ok(())
    }

    /// Graceful shutdown: stop accepting, DISCONNECT 0x8B to 5.0 clients, close every
    /// connection, return when done.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl RunningServer for ServerHandle {
    fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.addrs.clone()
    }

    fn dev_ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    fn shutdown(self: Box<Self>) {
        ServerHandle::shutdown(*self);
    }

    fn parked_connections(&self) -> usize {
        self.parked.get()
    }

    fn reload(&self, config: &Config) -> Result<(), StartError> {
        ServerHandle::reload(self, config)
    }
}

/// A server some adapter started.
pub trait RunningServer {
    /// Bound addresses.
    fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)>;
    /// The dev CA, with `--dev-tls`.
    fn dev_ca_cert(&self) -> Option<&Path>;
    /// Graceful shutdown; returns when done.
    fn shutdown(self: Box<Self>);
    /// Connections that are parked right now (idle, without a task).
    fn parked_connections(&self) -> usize;
    /// Reloads the identity policy from a config read anew
    /// ([`ServerHandle::reload`]).
    fn reload(&self, config: &Config) -> Result<(), StartError>;
}

/// The `brokk` command line, for any adapter: `brokk passwd`, or load the config,
/// start the server with `start`, print where it listens, wait for SIGINT/SIGTERM,
/// shut down gracefully and exit 0.
pub fn main<F>(start: F) -> ExitCode
where
    F: FnOnce(Config) -> Result<Box<dyn RunningServer>, StartError>,
{
    let cli = Cli::parse();
    if let Some(Command::Authz(AuthzCommand::Explain(args))) = &cli.command {
        return match run_explain(args) {
            Ok((allowed, text)) => {
                print!("{text}");
                if allowed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("brokk authz explain: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Passwd(args)) = &cli.command {
        return match run_passwd(args, &mut std::io::stdin().lock()) {
            Ok(SetPassword::Added) => {
                println!("added {} to {}", args.username, args.file.display());
                ExitCode::SUCCESS
            }
            Ok(SetPassword::Replaced) => {
                println!(
                    "changed the password of {} in {}",
                    args.username,
                    args.file.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("brokk passwd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Logs go to stderr, so stdout carries only what scripts read (the bound
    // addresses); colours only on a terminal, and never inside JSON.
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rustls warns for every client that sends an IP address as its
                // server name (mosquitto_pub -h 127.0.0.1 does): not the operator's
                // problem.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,rustls::msgs::handshake=error")
                }),
        );
    match cli.run.log_format {
        crate::cli::LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        crate::cli::LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    // Block the signals before any thread starts, so every thread inherits the mask
    // and the main thread alone takes them.
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("brokk: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match load_config(&cli.run) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("brokk: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("brokk: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(ca) = server.dev_ca_cert() {
        println!(
            "dev TLS: clients should trust the CA certificate at {}",
            ca.display()
        );
    }
    for (kind, addr) in server.local_addrs() {
        println!("brokk listening: {}://{addr}", kind.as_str());
    }
    let mut signals = signals;
    for signal in signals.forever() {
        if signal != signal_hook::consts::SIGHUP {
            tracing::info!(signal, "signal received");
            break;
        }
        // SIGHUP: the identity policy anew from the config files; a config that
        // does not load leaves the running one as it is.
        let reloaded = load_config(&cli.run)
            .map_err(|e| e.to_string())
            .and_then(|config| server.reload(&config).map_err(|e| e.to_string()));
        match reloaded {
            Ok(()) => tracing::info!(
                "SIGHUP: identity reloaded (clients, CAs, keys, passwords); authorization follows"
            ),
            Err(error) => {
                tracing::error!(%error, "SIGHUP: reload refused, the running configuration stays")
            }
        }
    }
    server.shutdown();
    ExitCode::SUCCESS
}

/// Connections the kernel queues for `accept` per listener (capped by
/// `net.core.somaxconn`). std's `TcpListener::bind` asks for 128: a burst of
/// reconnecting devices overflows that, and each dropped SYN costs its client a
/// retransmission a second later.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listening socket with address reuse (a restarted broker binds
/// again at once) and a deep accept queue.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does on Unix: TIME_WAIT connections of a previous run do not block it.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `prepare` says about a config whose second listener is MQTT over TLS
    /// with `cert.pem` and `key.pem` next to the config file, each written with the
    /// given text (`None`: the file does not exist).
    fn start_error(dir: &Path, cert: Option<&str>, key: Option<&str>) -> StartError {
        for (name, text) in [("cert.pem", cert), ("key.pem", key)] {
            let path = dir.join(name);
            match text {
                Some(text) => std::fs::write(&path, text),
                None => std::fs::remove_file(&path).or(Ok(())),
            }
            .expect("test setup: a failure here is the test failing");
        }
        let config = Config::parse(
            &dir.join("brokk.toml"),
            "persistence = \"memory\"\n\
             [[listener]]\nkind = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\
             [[listener]]\nkind = \"mqtts\"\nbind = \"127.0.0.1:0\"\n\
             cert = \"cert.pem\"\nkey = \"key.pem\"\n",
        )
        .expect("test setup: a failure here is the test failing");
        match prepare(&config) {
            Ok(_) => panic!("a listener with unusable TLS files started"),
            Err(e) => e,
        }
    }

    /// A certificate or key that cannot be used names the config file, the key in
    /// it and the file it resolved to, so the operator knows which line to fix.
    #[test]
    fn unusable_tls_files_are_named_by_config_file_key_and_resolved_path() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let dir = dir.path();
        let dev =
            tls::dev_tls(&dir.join("dev")).expect("test setup: a failure here is the test failing");
        let read = |p: &Path| {
            std::fs::read_to_string(p).expect("test setup: a failure here is the test failing")
        };
        let (good_cert, good_key) = (read(&dev.server_cert), read(&dev.server_key));
        let config = dir.join("brokk.toml").display().to_string();
        let cert = dir.join("cert.pem").display().to_string();
        let key = dir.join("key.pem").display().to_string();
        for (what, cert_text, key_text, expected) in [
            (
                "missing certificate",
                None,
                Some(good_key.as_str()),
                format!("{config}: listener[1].cert: {cert}: cannot read: "),
            ),
            (
                "no certificate in the file",
                Some("not PEM at all\n"),
                Some(&good_key),
                format!("{config}: listener[1].cert: {cert}: expected a PEM file"),
            ),
            (
                "missing key",
                Some(&good_cert),
                None,
                format!("{config}: listener[1].key: {key}: cannot read: "),
            ),
            (
                "key with a broken PEM section",
                Some(&good_cert),
                Some("-----BEGIN PRIVATE KEY-----\nMIIB\n"),
                format!("{config}: listener[1].key: {key}: invalid PEM: "),
            ),
            (
                "no key in the file",
                Some(&good_cert),
                Some(&good_cert),
                format!("{config}: listener[1].key: {key}: expected a PEM file with a private key"),
            ),
        ] {
            let e = start_error(dir, cert_text, key_text);
            assert!(matches!(e, StartError::ListenerTls { .. }), "{what}: {e:?}");
            let message = e.to_string();
            assert!(message.starts_with(&expected), "{what}: {message}");
        }
    }
}
