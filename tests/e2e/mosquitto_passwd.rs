//! Mosquitto's password files work in brokk, and brokk's in Mosquitto: a file made
//! by the real `mosquitto_passwd` (its `$7$` PBKDF2-SHA512 default and the 1.x `$6$`
//! SHA-512) lets each user in with their password only, and a file written by
//! `brokk passwd --scheme pbkdf2-sha512` is read by the real Mosquitto broker.
//!
//! Both programs come with the `mosquitto` package that scripts/install-clients.sh
//! installs; a missing one fails the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use adapter_common::config::ListenerKind;
use brokk_e2e::process::{assert_success, require, run, Captured, INSTALL_HINT};
use brokk_e2e::raw::{connect_packet, RawClient};
use brokk_e2e::{BrokkProcess, Runtime, TIMEOUT};
use bytes::Bytes;
use mqtt_proto::{Connect, MqttString, Packet, ProtocolVersion, ReasonCode};
use tokio::process::Command;

/// A CONNECT with a user name and password.
fn login(version: ProtocolVersion, client_id: &str, user: &str, password: &str) -> Connect {
    let mut connect = connect_packet(version, client_id);
    connect.username = Some(MqttString::copy_from_str(user).expect("a valid user name"));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

/// Sends `connect` and returns the CONNACK's bytes on the wire.
async fn connack_bytes(addr: SocketAddr, connect: Connect) -> Bytes {
    let mut client = RawClient::open(addr, connect.protocol).await;
    client.send(&Packet::Connect(Box::new(connect))).await;
    let (packet, bytes) = client.recv_frame().await;
    assert!(matches!(packet, Packet::ConnAck(_)), "{packet:?}");
    bytes
}

/// Runs `mosquitto_passwd` with `args`; it must succeed.
async fn mosquitto_passwd(args: &[&str], file: &Path) {
    let mut command = Command::new(require("mosquitto_passwd"));
    let (flags, user_and_password) = args.split_at(args.len() - 2);
    command.args(flags).arg(file).args(user_and_password);
    let out = run(command, Duration::from_secs(30)).await;
    assert_success(&format!("mosquitto_passwd {args:?}"), &out);
}

#[tokio::test]
async fn mosquitto_passwd_users_connect_with_the_right_password_only() {
    let runtime = Runtime::from_env();
    let dir = tempfile::tempdir().expect("temporary directory");
    let passwords = dir.path().join("passwords");
    // Mosquitto 2's default, PBKDF2-SHA512 ($7$), and 1.x's SHA-512 ($6$).
    mosquitto_passwd(&["-c", "-b", "alice", "wonderland"], &passwords).await;
    mosquitto_passwd(&["-H", "sha512", "-b", "bob", "builder"], &passwords).await;
    let text = std::fs::read_to_string(&passwords).expect("mosquitto_passwd wrote the file");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("alice:$7$") && lines[1].starts_with("bob:$6$"),
        "not the formats this test is about:\n{text}"
    );

    let config = dir.path().join("brokk.toml");
    std::fs::write(
        &config,
        "password_file = \"passwords\"\nallow_anonymous = false\n",
    )
    .expect("config written");
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
        for (user, password) in [("alice", "wonderland"), ("bob", "builder")] {
            let connect = login(version, &format!("{user}-ok"), user, password);
            let (mut client, connack) = RawClient::connect_with(addr, connect).await;
            assert_eq!(
                connack.reason_code,
                ReasonCode::Success,
                "{user} {version:?}\n--- brokk stderr\n{}",
                brokk.stderr()
            );
            client.round_trip(&format!("mosquitto_passwd/{user}")).await;
            client.disconnect().await;
        }
    }

    // One user's password is not another's, and a wrong one is refused: 3.1.1
    // return code 4, 5.0 reason code 0x86, both "bad user name or password".
    for (user, password) in [
        ("alice", "builder"),
        ("alice", "Wonderland"),
        ("bob", "wonderland"),
        ("bob", ""),
        ("mallory", "wonderland"),
    ] {
        let bytes = connack_bytes(addr, login(ProtocolVersion::V3_1_1, "w3", user, password)).await;
        assert_eq!(&bytes[..], [0x20, 0x02, 0x00, 0x04], "{user}/{password:?}");
        let bytes = connack_bytes(addr, login(ProtocolVersion::V5, "w5", user, password)).await;
        assert_eq!(
            &bytes[..4],
            [0x20, bytes[1], 0x00, 0x86],
            "{user}/{password:?}: {bytes:02x?}"
        );
    }
}

/// The Mosquitto broker, which apt installs in /usr/sbin, often not on a user's PATH.
fn require_mosquitto_broker() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("mosquitto"))
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("the mosquitto broker is not installed: {INSTALL_HINT}"))
}

/// A port nothing listens on right now, for Mosquitto, which cannot report the
/// port it was given by the OS.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("bound address").port()
}

#[tokio::test]
async fn brokk_passwd_pbkdf2_sha512_file_is_accepted_by_mosquitto() {
    let runtime = Runtime::from_env();
    let dir = tempfile::tempdir().expect("temporary directory");
    let passwords = dir.path().join("passwords");
    let out = BrokkProcess::run(
        runtime,
        [
            "passwd".as_ref(),
            passwords.as_os_str(),
            "alice".as_ref(),
            "--scheme".as_ref(),
            "pbkdf2-sha512".as_ref(),
        ],
        "wonderland\n",
        Duration::from_secs(30),
    )
    .await;
    assert_success("brokk passwd --scheme pbkdf2-sha512", &out);
    let text = std::fs::read_to_string(&passwords).expect("brokk passwd wrote the file");
    assert!(text.starts_with("alice:$7$101$"), "{text}");

    let port = free_port();
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            // Started as root, Mosquitto would switch to the `mosquitto` user, who
            // cannot read the private temporary directory; `user root` keeps it as it
            // is, and means nothing when not started as root.
            "user root\npersistence false\nlog_dest stderr\n\
             listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    )
    .expect("mosquitto config written");
    let mut mosquitto = Command::new(require_mosquitto_broker());
    mosquitto
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut mosquitto = mosquitto.spawn().expect("mosquitto starts");
    let log = Captured::drain(mosquitto.stderr.take().expect("piped stderr"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        let exited = mosquitto.try_wait().expect("mosquitto's status");
        assert!(
            exited.is_none() && tokio::time::Instant::now() < deadline,
            "mosquitto is not listening on {addr} ({exited:?})\n--- mosquitto log\n{}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let connect = login(version, "alice-ok", "alice", "wonderland");
        let (client, connack) = RawClient::connect_with(addr, connect).await;
        assert_eq!(
            connack.reason_code,
            ReasonCode::Success,
            "{version:?}\n--- mosquitto log\n{}",
            log.text()
        );
        client.disconnect().await;
        // Mosquitto's own codes for a wrong password (3.1.1: 5, not authorised).
        let connect = login(version, "alice-wrong", "alice", "rabbit");
        let (_, connack) = RawClient::connect_with(addr, connect).await;
        assert_ne!(connack.reason_code, ReasonCode::Success, "{version:?}");
    }
    mosquitto.start_kill().expect("stop mosquitto");
}
