//! The runtime under test, the broker running on it in this process, and configs
//! made for tests (loopback, port 0, dev TLS in a temporary directory).

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use adapter_common::config::{Config, Limits, Listener, ListenerKind, Origin};
use tempfile::TempDir;

/// The async runtime whose adapter is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `adapter-tokio`, binary `brokk`.
    Tokio,
    /// `adapter-smol` on smol, binary `brokk-smol`.
    Smol,
    /// `adapter-smol` on async-std. There is no async-std binary (`brokk-smol` runs
    /// on smol), so the binary scenarios run `brokk-smol` for it.
    AsyncStd,
}

/// The environment variable that picks the runtime.
pub const RUNTIME_ENV: &str = "BROKK_RUNTIME";

impl Runtime {
    /// Every runtime with an adapter.
    pub const ALL: [Runtime; 3] = [Runtime::Tokio, Runtime::Smol, Runtime::AsyncStd];

    /// The name `BROKK_RUNTIME` takes.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Tokio => "tokio",
            Runtime::Smol => "smol",
            Runtime::AsyncStd => "async-std",
        }
    }

    /// The runtime `BROKK_RUNTIME` names, `tokio` when it is unset or empty. An
    /// unknown name fails the test rather than silently testing another runtime.
    pub fn from_env() -> Runtime {
        match std::env::var(RUNTIME_ENV) {
            Ok(name) if !name.is_empty() => Runtime::ALL
                .into_iter()
                .find(|r| r.name() == name)
                .unwrap_or_else(|| {
                    let known: Vec<_> = Runtime::ALL.iter().map(|r| r.name()).collect();
                    panic!("{RUNTIME_ENV}={name:?}: expected one of {known:?}")
                }),
            _ => Runtime::Tokio,
        }
    }

    /// The Cargo package and binary name of this runtime's server.
    fn package_and_bin(self) -> (&'static str, &'static str) {
        match self {
            Runtime::Tokio => ("adapter-tokio", "brokk"),
            Runtime::Smol | Runtime::AsyncStd => ("adapter-smol", "brokk-smol"),
        }
    }

    /// This runtime's server binary, built once per test process with the profile
    /// and target directory the tests were built with (`cargo test` builds only the
    /// test crate's libraries, never another package's binary).
    pub fn binary(self) -> PathBuf {
        static BUILT: OnceLock<Mutex<HashMap<&'static str, PathBuf>>> = OnceLock::new();
        let (package, bin) = self.package_and_bin();
        let mut built = BUILT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        built
            .entry(bin)
            .or_insert_with(|| build_binary(package, bin))
            .clone()
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Variables `cargo test` sets for a test process (besides `CARGO_PKG_*` and
/// `CARGO_BIN_EXE_*`).
const TEST_ONLY_ENV: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

fn build_binary(package: &str, bin: &str) -> PathBuf {
    // The test executable is <target>/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    // What `cargo test` sets for the test process describes this crate, not the
    // build; some build scripts (ring's) watch CARGO_MANIFEST_DIR, so passing it on
    // would rebuild half the tree on every run.
    for (name, _) in std::env::vars_os() {
        let name_str = name.to_string_lossy();
        if name_str.starts_with("CARGO_PKG_")
            || name_str.starts_with("CARGO_BIN_EXE_")
            || TEST_ONLY_ENV.contains(&&*name_str)
        {
            command.env_remove(&name);
        }
    }
    // Naming this crate too resolves the dependencies' features as for the tests,
    // so the build reuses what `cargo test` just compiled and only links the binary.
    let status = command
        .current_dir(crate::process::workspace_dir())
        .args(["build", "--quiet", "--profile", profile])
        .args(["-p", package, "-p", env!("CARGO_PKG_NAME")])
        .args(["--bin", bin, "--target-dir"])
        .arg(target_dir)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build the {bin} binary: {e}"));
    assert!(
        status.success(),
        "`cargo build -p {package} --bin {bin}` failed ({status})"
    );
    let path = profile_dir.join(bin);
    assert!(path.is_file(), "{} missing after the build", path.display());
    path
}

/// A broker running in this process on one of the runtimes.
pub struct RunningServer {
    runtime: Runtime,
    addrs: Vec<(ListenerKind, SocketAddr)>,
    ca_cert: Option<PathBuf>,
    handle: Option<Box<dyn adapter_common::server::RunningServer + Send>>,
    // Declared after `handle`: the server stops before its data directory goes.
    _data_dir: Option<TempDir>,
}

/// Starts `config` on `runtime`. Listeners should bind port 0 (a fixed port may be
/// taken, e.g. by a system mosquitto); [`RunningServer::addr`] gives the real ones.
pub fn start(runtime: Runtime, config: Config) -> RunningServer {
    use adapter_common::server::RunningServer as Started;
    use adapter_smol::Flavor;
    let started: Result<Box<dyn Started + Send>, _> = match runtime {
        Runtime::Tokio => adapter_tokio::Server::start(config).map(|s| Box::new(s) as _),
        Runtime::Smol => {
            adapter_smol::Server::start_with(config, Flavor::Smol).map(|s| Box::new(s) as _)
        }
        Runtime::AsyncStd => {
            adapter_smol::Server::start_with(config, Flavor::AsyncStd).map(|s| Box::new(s) as _)
        }
    };
    let server = started.unwrap_or_else(|e| panic!("brokk on {runtime} did not start: {e}"));
    RunningServer {
        runtime,
        addrs: server.local_addrs(),
        ca_cert: server.dev_ca_cert().map(Path::to_path_buf),
        handle: Some(server),
        _data_dir: None,
    }
}

impl RunningServer {
    /// The runtime this server runs on.
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// The bound address of the first listener of `kind`.
    pub fn addr(&self, kind: ListenerKind) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("the server has no {kind} listener: {:?}", self.addrs))
    }

    /// The port of the first listener of `kind`.
    pub fn port(&self, kind: ListenerKind) -> u16 {
        self.addr(kind).port()
    }

    /// Every bound listener, in config order.
    pub fn local_addrs(&self) -> &[(ListenerKind, SocketAddr)] {
        &self.addrs
    }

    /// The URL a WebSocket client dials: `ws://127.0.0.1:PORT/mqtt` (or `wss://`).
    pub fn ws_url(&self, kind: ListenerKind) -> String {
        assert!(kind.is_websocket(), "{kind} is not a WebSocket listener");
        format!("{kind}://{}{WS_PATH}", self.addr(kind))
    }

    /// Connections parked right now (idle plain TCP without a task).
    pub fn parked_connections(&self) -> usize {
        self.handle.as_ref().map_or(0, |h| h.parked_connections())
    }

    /// Waits until at least `n` connections are parked; fails the test after
    /// [`crate::TIMEOUT`].
    pub async fn wait_parked(&self, n: usize) {
        crate::within("connections to park", async {
            while self.parked_connections() < n {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Reloads the identity policy from `config` (read anew by the caller), as
    /// SIGHUP does for the binary: on `Err` the running policy stays as it was.
    /// Blocks while the new policy's files are read.
    pub fn reload(&self, config: &Config) -> Result<(), adapter_common::server::StartError> {
        self.handle
            .as_ref()
            .expect("the server is running")
            .reload(config)
    }

    /// The development CA certificate, which TLS clients trust.
    pub fn ca_cert(&self) -> &Path {
        self.ca_cert
            .as_deref()
            .expect("the server runs without dev TLS, so there is no CA certificate")
    }

    /// Graceful shutdown (DISCONNECT 0x8B to 5.0 clients); returns when the server
    /// has stopped. Blocks the calling thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(server) = self.handle.take() {
            server.shutdown();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The path WebSocket listeners of a [`Setup`] serve.
pub const WS_PATH: &str = "/mqtt";

/// A config for one test: listeners on 127.0.0.1 port 0, WebSocket on [`WS_PATH`],
/// dev TLS in a temporary data directory, anonymous clients allowed.
pub struct Setup {
    runtime: Runtime,
    config: Config,
    data_dir: TempDir,
}

impl Setup {
    /// One listener of each kind given, on the runtime `BROKK_RUNTIME` names.
    pub fn new(kinds: &[ListenerKind]) -> Setup {
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        let mut config = Config {
            data_dir: data_dir.path().to_path_buf(),
            allow_anonymous: Some(true),
            listeners: kinds.iter().map(|&kind| listener(kind)).collect(),
            ..Config::default()
        };
        if kinds.iter().any(|k| k.is_tls()) {
            config.enable_dev_tls();
        }
        Setup {
            runtime: Runtime::from_env(),
            config,
            data_dir,
        }
    }

    /// One listener of every kind: mqtt, mqtts, ws and wss.
    pub fn all_transports() -> Setup {
        Setup::new(&ListenerKind::MQTT)
    }

    /// Changes broker limits.
    pub fn limits(mut self, change: impl FnOnce(&mut Limits)) -> Setup {
        change(&mut self.config.limits);
        self
    }

    /// The config as it stands, for changes [`Setup::limits`] does not cover.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Starts the broker; the data directory lives as long as the server.
    pub fn start(self) -> RunningServer {
        let mut server = start(self.runtime, self.config);
        server._data_dir = Some(self.data_dir);
        server
    }
}

fn listener(kind: ListenerKind) -> Listener {
    let mut l = Listener::new(
        kind,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        Origin::Default,
    );
    if kind.is_websocket() {
        l.path = Some(WS_PATH.to_owned());
    }
    l
}
