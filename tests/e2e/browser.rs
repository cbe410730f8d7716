//! A browser is an MQTT client: Debian's chromium, headless, driven by puppeteer-core
//! (`tests/clients/js/browser.js`), opens `tests/clients/js/browser/index.html`,
//! where MQTT.js (its browser bundle) connects to brokk over WebSocket over TLS,
//! subscribes, publishes and shows the message that comes back. A rumqttc client on
//! plain TCP subscribes to the same topic, so the message is seen to pass through
//! the broker, not only the page.
//!
//! The browser trusts the broker's dev certificate by its key: `browser.js` checks
//! that the certificate is signed by the dev CA for the URL's host and pins it with
//! `--ignore-certificate-errors-spki-list`; any other certificate fails the
//! handshake.
//!
//! Missing node, puppeteer-core or chromium fail the test with a pointer to
//! `scripts/install-clients.sh`.

use std::path::PathBuf;
use std::time::Duration;

use adapter_common::config::ListenerKind;
use brokk_e2e::process::{
    assert_success, e2e_dir, require_node_mqtt, run, workspace_dir, INSTALL_HINT,
};
use brokk_e2e::rumqtt::{Client, ClientOptions};
use brokk_e2e::Setup;
use mqtt_proto::{ProtocolVersion, QoS};
use tokio::process::Command;

/// Browser start, page and shutdown on a busy machine; `browser.js` gives up by
/// itself after 45 s, with the page's log.
const BROWSER_LIMIT: Duration = Duration::from_secs(60);

/// The chromium binary `browser.js` starts: `$CHROMIUM`, or Debian's
/// `/usr/bin/chromium`.
fn require_chromium() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "chromium is not installed ({} is missing): {INSTALL_HINT}",
        chromium.display()
    );
    chromium
}

/// `node`, after checking MQTT.js and puppeteer-core are installed.
fn require_node_puppeteer() -> PathBuf {
    let node = require_node_mqtt();
    let package = e2e_dir().join("clients/js/node_modules/puppeteer-core/package.json");
    assert!(
        package.is_file(),
        "puppeteer-core is not installed ({} is missing): {INSTALL_HINT}",
        package.display()
    );
    node
}

#[tokio::test]
async fn chromium_page_with_mqtt_js_round_trips_over_wss() {
    let node = require_node_puppeteer();
    let chromium = require_chromium();
    let server = Setup::new(&[ListenerKind::Wss, ListenerKind::Mqtt]).start();
    let runtime = server.runtime();
    let topic = format!("browser/{runtime}/{}", std::process::id());
    let payload = format!("hello from chromium, through brokk on {runtime}");

    let options = ClientOptions::new(ProtocolVersion::V5, ListenerKind::Mqtt, "browser-observer");
    let (mut observer, _) = Client::connect(&server, options).await;
    observer.subscribe(&topic, QoS::AtLeastOnce).await;

    let ca = server.ca_cert();
    let cert = ca.with_file_name(adapter_common::tls::DEV_SERVER_CERT);
    let url = server.ws_url(ListenerKind::Wss);
    let mut command = Command::new(&node);
    command
        .current_dir(workspace_dir())
        .env("CHROMIUM", &chromium)
        .arg(e2e_dir().join("clients/js/browser.js"))
        .args(["--url", &url, "--topic", &topic, "--payload", &payload])
        .arg("--cert")
        .arg(&cert)
        .arg("--ca")
        .arg(ca);
    let out = run(command, BROWSER_LIMIT).await;
    let what = format!("browser.js --url {url} --topic {topic}");
    assert_success(&what, &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("received: {payload}");
    assert!(
        stdout.lines().any(|l| l == expected),
        "{what}: the page did not show {payload:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("browser: ") && l.contains("Chrome/")),
        "{what}: no chromium version on stdout\n--- stdout\n{stdout}"
    );

    // The browser's publish reached another client, over another transport.
    let message = observer.recv().await;
    assert_eq!(message.topic, topic, "the observer's message: {message:?}");
    assert_eq!(
        message.payload,
        payload.as_bytes(),
        "the observer's message: {message:?}\n--- browser.js stderr\n{stderr}"
    );
    assert_eq!(message.qos, QoS::AtLeastOnce);
    observer.disconnect().await;
}
