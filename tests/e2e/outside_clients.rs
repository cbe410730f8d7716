//! Scenario 3: clients written by others, run as processes, each doing a real round
//! trip through brokk (subscribe, publish, receive): Debian's mosquitto clients over
//! TCP and TLS, paho-mqtt for Python, and MQTT.js over WebSocket; MQTT 3.1.1 and 5.0
//! each. A missing client fails the test with a pointer to
//! `scripts/install-clients.sh`.

use std::process::Stdio;
use std::time::Duration;

use adapter_common::config::ListenerKind;
use brokk_e2e::process::{
    assert_success, e2e_dir, require, require_node_mqtt, require_python_paho, run, Captured,
};
use brokk_e2e::{within, RunningServer, Setup};
use tokio::process::Command;

/// Long enough for a cold interpreter on a busy machine; each script has its own
/// 10 s limit inside.
const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// `mosquitto_sub` waits for one message while `mosquitto_pub` sends it.
async fn mosquitto_round_trip(server: &RunningServer, version: &str, tls: bool) {
    let sub = require("mosquitto_sub");
    let publisher = require("mosquitto_pub");
    let (host, port) = if tls {
        // The dev certificate names localhost; the client checks the name.
        ("localhost", server.port(ListenerKind::Mqtts))
    } else {
        ("127.0.0.1", server.port(ListenerKind::Mqtt))
    };
    let port = port.to_string();
    let transport = if tls { "tls" } else { "tcp" };
    let topic = format!("outside/mosquitto/{version}/{transport}");
    let payload = format!("mosquitto {version} over {transport}");
    let common = |command: &mut Command| {
        command.args([
            "-h", host, "-p", &port, "-V", version, "-q", "1", "-t", &topic,
        ]);
        if tls {
            command.arg("--cafile").arg(server.ca_cert());
        }
    };

    let mut sub_command = Command::new(&sub);
    common(&mut sub_command);
    // -C 1: exit after one message; -W 10: give up after 10 s; -d: print the
    // protocol exchange, for the failure message.
    sub_command
        .args(["-d", "-C", "1", "-W", "10", "-i"])
        .arg(format!("sub-{version}-{transport}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = sub_command.spawn().expect("start mosquitto_sub");
    let stdout = Captured::drain(child.stdout.take().unwrap());
    let stderr = Captured::drain(child.stderr.take().unwrap());

    // mosquitto_sub's output is block-buffered in a pipe, so it cannot say when it
    // has subscribed: publish until it has received a message and exited.
    let status = within(
        "mosquitto_sub to receive a message from mosquitto_pub",
        async {
            loop {
                let mut pub_command = Command::new(&publisher);
                common(&mut pub_command);
                pub_command.args(["-m", &payload]);
                assert_success("mosquitto_pub", &run(pub_command, TOOL_LIMIT).await);
                if let Ok(status) =
                    tokio::time::timeout(Duration::from_millis(200), child.wait()).await
                {
                    return status.expect("mosquitto_sub's exit status");
                }
            }
        },
    )
    .await;
    let (stdout, stderr) = (stdout.all().await, stderr.all().await);
    assert!(
        status.success() && stdout.lines().any(|l| l == payload),
        "mosquitto_sub ({status}) did not print {payload:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

#[tokio::test]
async fn mosquitto_clients_round_trip_over_tcp_with_mqtt_3_1_1_and_5() {
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    mosquitto_round_trip(&server, "mqttv311", false).await;
    mosquitto_round_trip(&server, "mqttv5", false).await;
}

#[tokio::test]
async fn mosquitto_clients_round_trip_over_tls_trusting_the_dev_ca() {
    let server = Setup::new(&[ListenerKind::Mqtts]).start();
    mosquitto_round_trip(&server, "mqttv311", true).await;
    mosquitto_round_trip(&server, "mqttv5", true).await;
}

#[tokio::test]
async fn paho_mqtt_python_round_trip_with_mqtt_3_1_1_and_5() {
    let python = require_python_paho().await;
    let server = Setup::new(&[ListenerKind::Mqtt]).start();
    let script = e2e_dir().join("clients/python/roundtrip.py");
    for version in ["3.1.1", "5"] {
        let mut command = Command::new(&python);
        command
            .arg(&script)
            .args(["127.0.0.1", &server.port(ListenerKind::Mqtt).to_string()])
            .args([version, &format!("outside/paho/{version}")]);
        let out = run(command, TOOL_LIMIT).await;
        assert_success(&format!("roundtrip.py {version}"), &out);
    }
}

#[tokio::test]
async fn mqtt_js_round_trip_over_websocket_with_protocol_versions_4_and_5() {
    let node = require_node_mqtt();
    let server = Setup::new(&[ListenerKind::Ws]).start();
    let url = server.ws_url(ListenerKind::Ws);
    for version in ["4", "5"] {
        let mut command = Command::new(&node);
        command.current_dir(e2e_dir().join("clients/js")).args([
            "roundtrip.js",
            &url,
            version,
            &format!("outside/mqttjs/{version}"),
        ]);
        let out = run(command, TOOL_LIMIT).await;
        assert_success(&format!("roundtrip.js {url} {version}"), &out);
    }
}
