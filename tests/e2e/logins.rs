//! Password logins never stall the broker: many clients log in at once (Argon2 on
//! the worker pool, a bounded number at a time) while another client keeps
//! exchanging messages; every login succeeds, every message arrives. Then the same
//! fleet again (remembered verifications), and a password file changed on disk,
//! which forgets them.

use std::time::Duration;

use adapter_common::config::ListenerKind;
use adapter_common::passwd::PasswordFile;
use brokk_e2e::raw::{connect_packet, RawClient};
use brokk_e2e::Setup;
use bytes::Bytes;
use mqtt_proto::{Connect, MqttString, ProtocolVersion, QoS, ReasonCode};

const LOGINS: usize = 60;

fn login(version: ProtocolVersion, client_id: &str, user: &str, password: &str) -> Connect {
    let mut connect = connect_packet(version, client_id);
    connect.username = Some(MqttString::copy_from_str(user).expect("user name"));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

/// `LOGINS` clients log in at once; returns their CONNACK codes.
async fn storm(addr: std::net::SocketAddr, round: &str, password: &str) -> Vec<ReasonCode> {
    let mut logins = Vec::new();
    for i in 0..LOGINS {
        let version = if i % 2 == 0 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        };
        let connect = login(version, &format!("{round}-{i}"), "fleet", password);
        logins.push(tokio::spawn(async move {
            let (client, connack) = RawClient::connect_with(addr, connect).await;
            if connack.reason_code == ReasonCode::Success {
                client.disconnect().await;
            }
            connack.reason_code
        }));
    }
    let mut codes = Vec::new();
    for l in logins {
        codes.push(l.await.expect("login task"));
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_succeeds_while_another_client_keeps_exchanging_messages() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let passwords = dir.path().join("passwords");
    let mut file = PasswordFile::new();
    file.set_password("fleet", b"first")
        .expect("a valid user and password");
    file.write(&passwords).expect("password file written");
    let mut setup = Setup::new(&[ListenerKind::Mqtt]);
    setup.config_mut().password_file = Some(passwords.clone());
    let server = setup.start();
    let addr = server.addr(ListenerKind::Mqtt);

    // Anonymous clients are allowed on loopback: the bystander needs no password.
    let mut bystander = RawClient::connect(addr, ProtocolVersion::V5, "bystander").await;
    assert_eq!(
        bystander.subscribe("chat", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let chat = tokio::spawn(async move {
        for i in 0..200u32 {
            let payload = format!("message {i}");
            bystander
                .publish("chat", payload.as_bytes(), QoS::AtLeastOnce, false)
                .await;
            let got = bystander.recv_publish().await;
            assert_eq!(&got.payload[..], payload.as_bytes());
        }
        bystander
    });
    let codes = storm(addr, "first", "first").await;
    assert!(
        codes.iter().all(|c| *c == ReasonCode::Success),
        "every login succeeds: {codes:?}"
    );
    let bystander = chat.await.expect("every message arrived");

    // Again: remembered, and the wrong password still fails.
    let codes = storm(addr, "again", "first").await;
    assert!(codes.iter().all(|c| *c == ReasonCode::Success), "{codes:?}");
    let (_, refused) =
        RawClient::connect_with(addr, login(ProtocolVersion::V5, "wrong", "fleet", "second")).await;
    assert_eq!(refused.reason_code, ReasonCode::BadUserNameOrPassword);

    // The file changes on disk: the remembered password is forgotten within about a
    // second (the authentication task checks the file every second).
    let mut file = PasswordFile::load(&passwords).expect("password file");
    file.set_password("fleet", b"second")
        .expect("a valid user and password");
    file.write(&passwords).expect("password file written");
    let deadline = tokio::time::Instant::now() + brokk_e2e::TIMEOUT;
    loop {
        let (_, old) =
            RawClient::connect_with(addr, login(ProtocolVersion::V5, "old", "fleet", "first"))
                .await;
        if old.reason_code == ReasonCode::BadUserNameOrPassword {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old password still works after the file changed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, new) =
        RawClient::connect_with(addr, login(ProtocolVersion::V5, "new", "fleet", "second")).await;
    assert_eq!(new.reason_code, ReasonCode::Success);
    bystander.disconnect().await;
}
