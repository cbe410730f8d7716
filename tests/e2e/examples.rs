//! The fleet example (`examples/fleet/`) run as its README tells a user to run it:
//! `make-certs.sh` makes the certificates, the broker runs the example's own
//! `brokk.toml` (copied next to the certificates, with port 0 for 8883), and each
//! Python sample runs against it and must exit 0 saying what happened; the samples'
//! refusals (a certificate from another CA, a fleet certificate of an unregistered
//! client) must exit 2 saying why; and the README's `[[client]]` added to the config
//! lets its device in after SIGHUP. python3 with paho-mqtt 2.x and openssl are
//! required: a missing one fails the test (`scripts/install-clients.sh`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use adapter_common::config::ListenerKind;
use brokk_e2e::process::{assert_success, require, require_python_paho, run, workspace_dir};
use brokk_e2e::{BrokkProcess, Runtime};
use tempfile::TempDir;
use tokio::process::Command;

/// A sample gives up after `--timeout` (10 s); this is for a cold interpreter on a
/// busy machine on top of that.
const SCRIPT_LIMIT: Duration = Duration::from_secs(30);

/// The listener line of `examples/fleet/brokk.toml`, replaced by port 0 here.
const EXAMPLE_BIND: &str = "bind = \"127.0.0.1:8883\"";

/// The example's directory in the workspace.
fn example_dir() -> PathBuf {
    workspace_dir().join("examples/fleet")
}

/// `examples/fleet/make-certs.sh DIR`.
async fn make_certs(dir: &Path) -> Output {
    require("openssl");
    let mut command = Command::new("bash");
    command.arg(example_dir().join("make-certs.sh")).arg(dir);
    run(command, SCRIPT_LIMIT).await
}

/// The broker running the example's config over fresh certificates.
struct Fleet {
    python: PathBuf,
    brokk: BrokkProcess,
    certs: PathBuf,
    config: PathBuf,
    port: u16,
    _dir: TempDir,
}

impl Fleet {
    async fn start() -> Fleet {
        let python = require_python_paho().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let certs = dir.path().join("certs");
        assert_success("make-certs.sh", &make_certs(&certs).await);

        // The example's config, as shipped, next to the certificates (its paths are
        // relative to the file: certs/...), on a free port instead of 8883.
        let text = std::fs::read_to_string(example_dir().join("brokk.toml"))
            .expect("examples/fleet/brokk.toml");
        assert_eq!(
            text.matches(EXAMPLE_BIND).count(),
            1,
            "examples/fleet/brokk.toml should have one `{EXAMPLE_BIND}` line for the test \
             to replace"
        );
        let config = dir.path().join("brokk.toml");
        std::fs::write(
            &config,
            text.replace(EXAMPLE_BIND, "bind = \"127.0.0.1:0\""),
        )
        .expect("write the config");

        let brokk = BrokkProcess::spawn(
            Runtime::from_env(),
            ["--config".as_ref(), config.as_os_str()],
            1,
        )
        .await;
        let port = brokk.addr(ListenerKind::Mqtts).port();
        Fleet {
            python,
            brokk,
            certs,
            config,
            port,
            _dir: dir,
        }
    }

    /// Runs `examples/fleet/<script>` with `args` against the broker.
    async fn sample(&self, script: &str, args: &[&str]) -> Sample {
        let mut command = Command::new(&self.python);
        command
            .arg(example_dir().join(script))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--certs")
            .arg(&self.certs)
            .args(["--timeout", "10"])
            .args(args)
            // No __pycache__ in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let what = format!("{script} {}", args.join(" "));
        let out = run(command, SCRIPT_LIMIT).await;
        Sample {
            what,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            broker_log: self.brokk.stderr(),
        }
    }
}

/// What a sample did.
struct Sample {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    broker_log: String,
}

impl Sample {
    #[track_caller]
    fn fail(&self, why: &str) -> ! {
        panic!(
            "{}: {why} (exit status {:?})\n--- stdout\n{}\n--- stderr\n{}\n--- brokk's log\n{}",
            self.what, self.code, self.stdout, self.stderr, self.broker_log
        )
    }

    /// The sample exited with `code`.
    #[track_caller]
    fn exited(&self, code: i32) -> &Self {
        if self.code != Some(code) {
            self.fail(&format!("expected exit status {code}"));
        }
        self
    }

    /// Its output has a line containing `text`.
    #[track_caller]
    fn said(&self, text: &str) -> &Self {
        if !self.stdout.lines().any(|l| l.contains(text)) {
            self.fail(&format!("expected a line with {text:?}"));
        }
        self
    }

    /// Its output has `n` lines containing `text`.
    #[track_caller]
    fn said_times(&self, n: usize, text: &str) -> &Self {
        let found = self.stdout.lines().filter(|l| l.contains(text)).count();
        if found != n {
            self.fail(&format!("expected {n} lines with {text:?}, found {found}"));
        }
        self
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn make_certs_creates_the_fleet_and_keeps_it_when_run_again() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let certs = dir.path().join("certs");
    let first = make_certs(&certs).await;
    assert_success("make-certs.sh", &first);
    let names = [
        "fleet-ca",
        "server",
        "device-1",
        "device-2",
        "service-1",
        "device-3",
        "rogue-ca",
        "rogue",
    ];
    for name in names {
        for ext in ["pem", "key"] {
            let file = certs.join(format!("{name}.{ext}"));
            assert!(file.is_file(), "{} missing", file.display());
        }
    }
    let text = stdout(&first);
    for line in [
        "created device-1.pem (CN=device-1, issued by fleet-ca)",
        "created service-1.pem (CN=service-1, issued by fleet-ca)",
        "created rogue.pem (CN=device-1, issued by rogue-ca)",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    let ca = std::fs::read(certs.join("fleet-ca.pem")).expect("fleet-ca.pem");

    // Again: nothing changes, the CA (and so what it issued) is kept.
    let second = make_certs(&certs).await;
    assert_success("make-certs.sh again", &second);
    let text = stdout(&second);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("kept ")).count(),
        names.len(),
        "{text}"
    );
    assert_eq!(std::fs::read(certs.join("fleet-ca.pem")).ok(), Some(ca));

    // Without a directory it says how to call it, and fails.
    let mut command = Command::new("bash");
    command.arg(example_dir().join("make-certs.sh"));
    let out = run(command, SCRIPT_LIMIT).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}

#[tokio::test]
async fn device_telemetry_reaches_the_service() {
    let fleet = Fleet::start().await;
    fleet
        .sample("device_telemetry.py", &["--count", "5"])
        .await
        .exited(0)
        .said("[service-1] connected (CONNACK Success)")
        .said("[service-1] subscribed to fleet/+/telemetry")
        .said("[device-1] connected (CONNACK Success)")
        .said_times(5, "(PUBACK received)")
        .said("[device-1] published reading 5/5 to fleet/device-1/telemetry")
        .said_times(
            5,
            "[service-1] received on fleet/device-1/telemetry (QoS 1): {\"device\": \"device-1\"",
        )
        .said("[service-1] all 5 readings received");
}

#[tokio::test]
async fn command_gets_its_response_with_the_same_correlation_data() {
    let fleet = Fleet::start().await;
    fleet
        .sample("command_response.py", &[])
        .await
        .exited(0)
        .said("[device-2] subscribed to fleet/device-2/commands")
        .said("[device-2] command on fleet/device-2/commands: {\"command\": \"reboot\"")
        .said("(response topic 'fleet/service-1/responses', correlation data ")
        .said("[device-2] answered on fleet/service-1/responses")
        .said("[service-1] answer from device-2: ")
        .said("(correlation data matches)");
}

#[tokio::test]
async fn broadcast_alert_reaches_both_devices_even_after_it_was_sent() {
    let fleet = Fleet::start().await;
    fleet
        .sample("broadcast_alert.py", &["--message", "fire drill at noon"])
        .await
        .exited(0)
        .said("[service-1] published retained alert to fleet/alerts")
        .said("[device-1] received retained alert on fleet/alerts: [warning] fire drill at noon")
        .said("[device-2] received retained alert on fleet/alerts: [warning] fire drill at noon")
        .said("all 2 devices received the alert");

    // A device that comes later still gets it (retained), then the service clears it.
    fleet
        .sample("broadcast_alert.py", &["--role", "devices"])
        .await
        .exited(0)
        .said("[device-1] received retained alert on fleet/alerts: [warning] fire drill at noon");
    fleet
        .sample("broadcast_alert.py", &["--role", "service", "--clear"])
        .await
        .exited(0)
        .said("[service-1] cleared the retained alert");
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_an_unregistered_client_is_refused() {
    let fleet = Fleet::start().await;
    // rogue.pem says CN=device-1, but the rogue CA is not registered: the TLS
    // handshake fails (alert unknown_ca) and the sample says so.
    let rogue = fleet
        .sample(
            "device_telemetry.py",
            &["--role", "device", "--device", "rogue"],
        )
        .await;
    rogue
        .exited(2)
        .said("[rogue] connection refused: ")
        .said("unknown ca");
    if rogue.stdout.contains("published reading") {
        rogue.fail("the rogue device published");
    }

    // device-3.pem is the fleet CA's, but no [[client]] registers device-3 and the
    // config requires registration: CONNACK 0x87.
    fleet
        .sample(
            "device_telemetry.py",
            &["--role", "device", "--device", "device-3"],
        )
        .await
        .exited(2)
        .said("[device-3] connection refused: CONNACK Not authorized (0x87)");

    // The registered devices still get in.
    fleet
        .sample("device_telemetry.py", &["--count", "1"])
        .await
        .exited(0)
        .said("[service-1] all 1 readings received");
}

/// The `[[client]]` the example's README appends to brokk.toml before its SIGHUP.
fn readme_device_3_client() -> String {
    let readme =
        std::fs::read_to_string(example_dir().join("README.md")).expect("examples/fleet/README.md");
    let start = "cat >> examples/fleet/brokk.toml <<'EOF'\n";
    let snippet = readme
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once("\nEOF\n"))
        .map(|(snippet, _)| snippet)
        .unwrap_or_else(|| {
            panic!(
                "examples/fleet/README.md has no `{}...EOF` block",
                start.trim()
            )
        });
    assert!(snippet.contains("name = \"device-3\""), "{snippet}");
    format!("{snippet}\n")
}

#[tokio::test]
async fn a_client_added_as_the_readme_shows_gets_in_after_sighup() {
    let fleet = Fleet::start().await;
    fleet
        .sample(
            "device_telemetry.py",
            &["--role", "device", "--device", "device-3"],
        )
        .await
        .exited(2)
        .said("CONNACK Not authorized (0x87)");

    let mut config = std::fs::read_to_string(&fleet.config).expect("the config");
    config.push_str(&readme_device_3_client());
    std::fs::write(&fleet.config, config).expect("write the config");
    fleet.brokk.signal(libc::SIGHUP);
    brokk_e2e::within("brokk to log the reload", async {
        while !fleet.brokk.stderr().contains("SIGHUP: identity reloaded") {
            assert!(
                !fleet.brokk.stderr().contains("reload refused"),
                "{}",
                fleet.brokk.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    fleet
        .sample(
            "device_telemetry.py",
            &["--device", "device-3", "--count", "2"],
        )
        .await
        .exited(0)
        .said("[device-3] connected (CONNACK Success)")
        .said("[service-1] all 2 readings received");
}
