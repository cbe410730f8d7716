//! Outside programs, always with a deadline: the `brokk` binary of a runtime, and
//! the third-party clients `scripts/install-clients.sh` installs. A missing client
//! fails the test with a message saying to run that script; nothing is skipped.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapter_common::config::ListenerKind;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{within, within_for, Runtime};

/// What to tell the person running the tests when an outside client is missing.
pub const INSTALL_HINT: &str =
    "run scripts/install-clients.sh (scripts/test.sh does) to install the outside MQTT clients";

/// The workspace root.
pub fn workspace_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate sits in the workspace")
}

/// The directory of the e2e crate (`tests/`), where `clients/` lives.
pub fn e2e_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The full path of `program` on `PATH`; fails the test with [`INSTALL_HINT`] if
/// it is not there.
pub fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed (not found on PATH): {INSTALL_HINT}"))
}

/// The Python interpreter the tests use (`PYTHON`, as for the install script, or
/// `python3`), after checking paho-mqtt 2.x imports in it.
pub async fn require_python_paho() -> PathBuf {
    let name = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let python = if name.contains('/') {
        PathBuf::from(name)
    } else {
        require(&name)
    };
    let mut check = Command::new(&python);
    check.args([
        "-c",
        "import sys, paho.mqtt; sys.exit(0 if paho.mqtt.__version__.startswith('2.') else 1)",
    ]);
    let out = run(check, Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "paho-mqtt 2.x is not importable by {}: {INSTALL_HINT}\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// `node`, after checking MQTT.js is installed in `tests/clients/js`.
pub fn require_node_mqtt() -> PathBuf {
    let node = require("node");
    let package = e2e_dir().join("clients/js/node_modules/mqtt/package.json");
    assert!(
        package.is_file(),
        "MQTT.js is not installed ({} is missing): {INSTALL_HINT}",
        package.display()
    );
    node
}

/// Runs `command` to completion with its output captured; fails the test if it
/// takes longer than `limit` (the child is killed).
pub async fn run(mut command: Command, limit: Duration) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{:?}", command.as_std());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    within_for(limit, &what, child.wait_with_output())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Panics with the command's output unless it exited 0.
pub fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Collects a child's output stream in the background so it never blocks on a full
/// pipe; the text so far is always available.
#[derive(Clone)]
pub struct Captured {
    text: Arc<Mutex<String>>,
    ended: tokio::sync::watch::Receiver<bool>,
}

impl Captured {
    /// Starts draining `stream`.
    pub fn drain<R: AsyncRead + Unpin + Send + 'static>(mut stream: R) -> Captured {
        let text = Arc::new(Mutex::new(String::new()));
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        let sink = text.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            let _ = ended_tx.send(true);
        });
        Captured { text, ended }
    }

    /// What came so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Everything, once the stream has ended (the child exited and closed it).
    pub async fn all(&self) -> String {
        let mut ended = self.ended.clone();
        within("a child's output to end", ended.wait_for(|&e| e))
            .await
            .expect("the drain task ends only after sending");
        self.text()
    }
}

/// A running `brokk` binary.
pub struct BrokkProcess {
    child: Child,
    addrs: Vec<(ListenerKind, SocketAddr)>,
    stdout: Captured,
    stderr: Captured,
}

/// The prefix of the lines `brokk` prints for each listener it bound.
const LISTENING: &str = "brokk listening: ";

impl BrokkProcess {
    /// Starts `runtime`'s binary with `args` and waits until it has printed a
    /// `brokk listening:` line for each of its `listeners` listeners.
    pub async fn spawn<I, S>(runtime: Runtime, args: I, listeners: usize) -> BrokkProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let binary = runtime.binary();
        let mut command = Command::new(&binary);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stderr = Captured::drain(child.stderr.take().expect("piped stderr"));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut addrs = Vec::new();
        let mut seen = String::new();
        within("brokk to print its listening addresses", async {
            while addrs.len() < listeners {
                let line = match lines.next_line().await {
                    Ok(Some(line)) => line,
                    // Its last words (why it stopped) may still be on their way.
                    _ => panic!(
                        "brokk exited before listening\n--- stdout\n{seen}\n--- stderr\n{}",
                        stderr.all().await
                    ),
                };
                seen.push_str(&line);
                seen.push('\n');
                if let Some(url) = line.strip_prefix(LISTENING) {
                    addrs.push(parse_listening(url));
                }
            }
        })
        .await;
        let stdout = Captured::drain(lines.into_inner());
        BrokkProcess {
            child,
            addrs,
            stdout,
            stderr,
        }
    }

    /// Runs `runtime`'s binary with `args` to completion (at most `limit`), with
    /// `stdin` as its standard input.
    pub async fn run<I, S>(runtime: Runtime, args: I, stdin: &str, limit: Duration) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        use tokio::io::AsyncWriteExt;
        let binary = runtime.binary();
        let mut command = Command::new(&binary);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = format!("{:?}", command.as_std());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut input = child.stdin.take().expect("piped stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{what}: writing stdin: {e}"));
        drop(input);
        within_for(limit, &what, child.wait_with_output())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// The address of the first listener of `kind`.
    pub fn addr(&self, kind: ListenerKind) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("brokk printed no {kind} listener: {:?}", self.addrs))
    }

    /// Every listener brokk printed, in order.
    pub fn local_addrs(&self) -> &[(ListenerKind, SocketAddr)] {
        &self.addrs
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("brokk is still running");
        let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child,
        // which has not been reaped yet, so it cannot name another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits at most `limit` for the process to exit.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let what = format!(
            "brokk to exit\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout.text(),
            self.stderr.text()
        );
        within_for(limit, &what, self.child.wait())
            .await
            .expect("waiting for brokk")
    }

    /// What brokk wrote to standard output after its listening lines, so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// What brokk wrote to standard error, so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }
}

fn parse_listening(url: &str) -> (ListenerKind, SocketAddr) {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("a listening line without a scheme: {url:?}"));
    let kind = ListenerKind::from_name(scheme)
        .unwrap_or_else(|| panic!("unknown listener kind in {url:?}"));
    let host_port = rest.split('/').next().unwrap_or(rest);
    let addr = host_port
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {url:?}: {e}"));
    (kind, addr)
}
