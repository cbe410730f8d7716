//! Scenario 5: the server binary as an operator runs it: `--listen 127.0.0.1:0`, a
//! round trip, graceful exit on SIGTERM (DISCONNECT 0x8B to 5.0 clients), a bad config
//! file named in the error, and `brokk passwd` users checked at CONNECT.

use std::time::Duration;

use adapter_common::config::ListenerKind;
use brokk_e2e::raw::{connect_packet, RawClient};
use brokk_e2e::{BrokkProcess, Runtime};
use bytes::Bytes;
use mqtt_proto::{Connect, MqttString, Packet, ProtocolVersion, ReasonCode};

/// How long brokk may take to exit after SIGTERM: its own grace period for
/// connections to take their DISCONNECT is a few seconds.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn serves_a_round_trip_then_sigterm_sends_disconnect_0x8b_and_exits_0() {
    let runtime = Runtime::from_env();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let args = [
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ];
    let mut brokk = BrokkProcess::spawn(runtime, args, 1).await;
    let addr = brokk.addr(ListenerKind::Mqtt);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let mut v5 = RawClient::connect(addr, ProtocolVersion::V5, "bin-v5").await;
    v5.round_trip("binary/v5").await;
    let mut v3 = RawClient::connect(addr, ProtocolVersion::V3_1_1, "bin-v3").await;
    v3.round_trip("binary/v3").await;

    brokk.signal(libc::SIGTERM);

    // A 5.0 server says why it closes: DISCONNECT 0x8B Server shutting down (3.14.2.1).
    let before_close = v5.expect_closed(EXIT_LIMIT).await;
    match before_close.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason_code, ReasonCode::ServerShuttingDown),
        other => panic!("expected one DISCONNECT 0x8B before the close, got {other:?}"),
    }
    // 3.1.1 has no server DISCONNECT: the connection just closes.
    let before_close = v3.expect_closed(EXIT_LIMIT).await;
    assert!(before_close.is_empty(), "3.1.1 client got {before_close:?}");

    let status = brokk.wait(EXIT_LIMIT).await;
    assert!(
        status.success(),
        "brokk exited with {status} after SIGTERM\n--- stderr\n{}",
        brokk.stderr()
    );
}

#[tokio::test]
async fn several_listeners_on_port_0_each_get_a_free_port() {
    // Port 0 asks the OS for any free port, so two such listeners never collide.
    let runtime = Runtime::from_env();
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<std::ffi::OsString> = [
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "ws://127.0.0.1:0/mqtt",
        "--listen",
        "mqtts://127.0.0.1:0",
        "--dev-tls",
        "--data-dir",
    ]
    .map(Into::into)
    .into();
    args.push(dir.path().join("data").into());
    let brokk = BrokkProcess::spawn(runtime, args, 3).await;
    let kinds: Vec<_> = brokk.local_addrs().iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [ListenerKind::Mqtt, ListenerKind::Ws, ListenerKind::Mqtts]
    );
    let mut client =
        RawClient::connect(brokk.addr(ListenerKind::Mqtt), ProtocolVersion::V5, "ports").await;
    client.round_trip("binary/ports").await;
    assert!(dir.path().join("data/ca.pem").is_file());
}

/// Runs brokk on `config_text` (written to `brokk.toml` in a fresh directory) and
/// returns the config path and what brokk said; asserts it exited non-zero.
async fn refused_config(config_text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("brokk.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = BrokkProcess::run(
        Runtime::from_env(),
        [
            "--config".as_ref(),
            path.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
        "",
        EXIT_LIMIT,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "brokk accepted the bad config {config_text:?}; stderr: {stderr}"
    );
    (path.display().to_string(), stderr)
}

#[tokio::test]
async fn bad_config_file_exits_non_zero_naming_the_file_the_key_and_what_was_expected() {
    let (path, stderr) = refused_config("[limits]\nmax_keep_alive = \"soon\"\n").await;
    assert!(stderr.contains(&path), "the file is not named: {stderr}");
    assert!(
        stderr.contains("limits.max_keep_alive"),
        "the key is not named: {stderr}"
    );
    assert!(
        stderr.contains("expected an integer from 0 to 65535"),
        "what was expected is not said: {stderr}"
    );

    let (path, stderr) =
        refused_config("[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n").await;
    assert!(stderr.contains(&path), "the file is not named: {stderr}");
    assert!(
        stderr.contains("listener[0].kind"),
        "the key is not named: {stderr}"
    );
    assert!(
        stderr.contains(r#"expected one of "mqtt", "mqtts", "ws", "wss""#),
        "what was expected is not said: {stderr}"
    );
}

/// A CONNECT with a user name and password.
fn login(version: ProtocolVersion, client_id: &str, user: &str, password: &str) -> Connect {
    let mut connect = connect_packet(version, client_id);
    connect.username = Some(MqttString::copy_from_str(user).unwrap());
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

/// Sends `connect` and returns the CONNACK's bytes on the wire.
async fn connack_bytes(addr: std::net::SocketAddr, connect: Connect) -> Bytes {
    let mut client = RawClient::open(addr, connect.protocol).await;
    client.send(&Packet::Connect(Box::new(connect))).await;
    let (packet, bytes) = client.recv_frame().await;
    assert!(matches!(packet, Packet::ConnAck(_)), "{packet:?}");
    bytes
}

#[tokio::test]
async fn passwd_users_connect_with_the_right_password_only() {
    let runtime = Runtime::from_env();
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwords");

    let out = BrokkProcess::run(
        runtime,
        ["passwd".as_ref(), passwords.as_os_str(), "alice".as_ref()],
        "wonderland\n",
        Duration::from_secs(30),
    )
    .await;
    brokk_e2e::process::assert_success("brokk passwd", &out);
    let text = std::fs::read_to_string(&passwords).unwrap();
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    assert!(
        !text.contains("wonderland"),
        "the password is stored in clear"
    );

    // A relative password_file is found next to the config file.
    let config = dir.path().join("brokk.toml");
    std::fs::write(&config, "password_file = \"passwords\"\n").unwrap();
    let brokk = BrokkProcess::spawn(
        runtime,
        [
            "--config".as_ref(),
            config.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            dir.path().join("data").as_os_str(),
        ],
        1,
    )
    .await;
    let addr = brokk.addr(ListenerKind::Mqtt);

    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let connect = login(version, "alice-ok", "alice", "wonderland");
        let (mut client, connack) = RawClient::connect_with(addr, connect).await;
        assert_eq!(connack.reason_code, ReasonCode::Success, "{version:?}");
        client.round_trip("binary/alice").await;
    }

    // 5.0: CONNACK reason code 0x86 Bad User Name or Password, no session present.
    let bytes = connack_bytes(addr, login(ProtocolVersion::V5, "a5", "alice", "rabbit")).await;
    assert_eq!(&bytes[..4], [0x20, bytes[1], 0x00, 0x86], "{bytes:02x?}");
    // 3.1.1: return code 4, "bad user name or password".
    let bytes = connack_bytes(
        addr,
        login(ProtocolVersion::V3_1_1, "a3", "alice", "rabbit"),
    )
    .await;
    assert_eq!(&bytes[..], [0x20, 0x02, 0x00, 0x04]);
    // An unknown user is refused the same way.
    let bytes = connack_bytes(addr, login(ProtocolVersion::V3_1_1, "m3", "mallory", "x")).await;
    assert_eq!(&bytes[..], [0x20, 0x02, 0x00, 0x04]);
}

/// Sessions the broker ends on its own are in the log with the client id, the
/// reason and what was lost: here an offline session whose queue overflowed (Event
/// Grid's default policy ends it), then the drop counters at the next tick.
#[tokio::test]
async fn a_session_ended_by_queue_overflow_is_logged_with_client_id_reason_and_counts() {
    use mqtt_proto::QoS;
    let runtime = Runtime::from_env();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("brokk.toml");
    std::fs::write(
        &config,
        "[limits]\noffline_queue_messages = 3\npark_idle_ms = 50\n",
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let args = [
        "--config".as_ref(),
        config.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ];
    let brokk = BrokkProcess::spawn(runtime, args, 1).await;
    let addr = brokk.addr(ListenerKind::Mqtt);
    let mut connect = connect_packet(ProtocolVersion::V5, "overflowing-device");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(600);
    let (mut sub, _) = RawClient::connect_with(addr, connect).await;
    sub.subscribe("fleet/cmd", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = RawClient::connect(addr, ProtocolVersion::V5, "overflow-pub").await;
    for _ in 0..4 {
        publisher
            .publish("fleet/cmd", b"reboot", QoS::AtLeastOnce, false)
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = brokk.stderr();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("session ended by the broker"))
        {
            break line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no session-end line in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for part in [
        "overflowing-device",
        "offline queue overflow",
        "queued_messages=3",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
}

/// A TLS certificate that cannot be read stops startup with a message naming the
/// config file, the key in it and the path it resolved to (next to the config).
#[tokio::test]
async fn an_unreadable_tls_certificate_is_named_by_config_file_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("brokk.toml");
    std::fs::write(
        &config,
        "persistence = \"memory\"\n\
         [[listener]]\nkind = \"mqtts\"\nbind = \"127.0.0.1:0\"\n\
         cert = \"missing.pem\"\nkey = \"missing.key\"\n",
    )
    .unwrap();
    let out = BrokkProcess::run(
        Runtime::from_env(),
        ["--config".as_ref(), config.as_os_str()],
        "",
        EXIT_LIMIT,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "brokk started: {stderr}");
    let expected = format!(
        "brokk: {}: listener[0].cert: {}: cannot read: ",
        config.display(),
        dir.path().join("missing.pem").display()
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
}

/// Waits until brokk's standard error holds a line for which `find` says yes, and
/// returns that line's answer.
async fn log_line<T>(brokk: &BrokkProcess, mut find: impl FnMut(&str) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = brokk.stderr();
        if let Some(found) = log.lines().find_map(&mut find) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the line looked for is not in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--log-format json`: every line brokk logs is one JSON object, and the connect
/// and disconnect events carry their fields (client id, protocol) by name, for log
/// shippers.
#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let args = [
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--log-format".as_ref(),
        "json".as_ref(),
    ];
    let brokk = BrokkProcess::spawn(Runtime::from_env(), args, 1).await;
    let client = RawClient::connect(
        brokk.addr(ListenerKind::Mqtt),
        ProtocolVersion::V5,
        "json-logger",
    )
    .await;
    client.disconnect().await;

    let event = |message: &'static str| {
        move |line: &str| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            (value["fields"]["message"] == message).then_some(value)
        }
    };
    let connect = log_line(&brokk, event("connect")).await;
    let disconnect = log_line(&brokk, event("disconnect")).await;
    for (event, line) in [("connect", &connect), ("disconnect", &disconnect)] {
        assert_eq!(line["level"], "INFO", "{event}: {line}");
        assert_eq!(
            line["fields"]["client_id"], "json-logger",
            "{event}: {line}"
        );
        assert_eq!(line["fields"]["protocol"], "5.0", "{event}: {line}");
    }
    for line in brokk.stderr().lines() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok_and(|v| v.is_object()),
            "not a JSON object: {line:?}"
        );
    }
}

/// The text log writes the protocol the same way in the connect and the
/// disconnect line (it was `protocol=3.1.1` in one and `protocol="3.1.1"` in the
/// other), so one pattern finds both.
#[tokio::test]
async fn connect_and_disconnect_lines_write_the_protocol_alike() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let args = [
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--log-format".as_ref(),
        "text".as_ref(),
    ];
    let brokk = BrokkProcess::spawn(Runtime::from_env(), args, 1).await;
    let client = RawClient::connect(
        brokk.addr(ListenerKind::Mqtt),
        ProtocolVersion::V3_1_1,
        "text-logger",
    )
    .await;
    client.disconnect().await;

    for event in [" connect ", " disconnect "] {
        let line = log_line(&brokk, |l| {
            (l.contains(event) && l.contains("text-logger")).then(|| l.to_owned())
        })
        .await;
        assert!(line.contains(" protocol=3.1.1 "), "{line}");
    }
}
