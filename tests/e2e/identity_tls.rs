//! Certificate authentication and reloading, end to end: the broker runs (in this
//! process on the runtime `BROKK_RUNTIME` names, or as its binary) with a TLS
//! listener that asks for client certificates, and real clients log in with
//! certificates made here with rcgen: a registered CA ("fleet"), a CA nobody
//! registered ("rogue"), self-signed devices known by their thumbprints. What is
//! asserted is what a client sees: the CONNACK code (5.0 reason code and the 3.1.1
//! return code, on the wire), a TLS handshake the broker ends with an alert,
//! messages delivered.
//!
//! The reload scenarios keep several clients publishing QoS 1 while the config is
//! rewritten and reloaded (in process, and by SIGHUP to the binary): established
//! connections stay and lose nothing, new logins follow the new config, and a
//! config that does not load changes nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapter_common::config::{Config, ListenerKind};
use adapter_common::passwd::PasswordFile;
use brokk_e2e::process::{assert_success, require, run, Captured};
use brokk_e2e::raw::{connect_packet, encode, publish_packet};
use brokk_e2e::{within, BrokkProcess, RunningServer, Runtime, TIMEOUT};
use bytes::{Bytes, BytesMut};
use mqtt_proto::{
    decode_packet, ConnAck, Connect, FixedHeader, MqttString, Packet, ProtocolVersion, PubAck, QoS,
    ReasonCode, Subscribe, SubscriptionOptions, TopicFilter,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rumqttc::tokio_rustls::TlsConnector;
use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

// ------------------------------------------------------------------ certificates

/// A CA: its certificate and the key that signs with it.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn authority(cn: &str) -> Authority {
    authority_under(cn, None)
}

/// A CA issued by `issuer` (an intermediate), or self-signed (a root).
fn authority_under(cn: &str, issuer: Option<&Authority>) -> Authority {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = match issuer {
        Some(ca) => params.signed_by(&key, &ca.cert, &ca.key),
        None => params.self_signed(&key),
    }
    .expect("a CA certificate");
    Authority { cert, key }
}

/// A client certificate with its key: DER for rustls, PEM files for mosquitto.
struct Identity {
    cert: CertificateDer<'static>,
    /// CA certificates the client sends after its own (intermediates).
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Identity {
    /// The SHA-256 of the certificate's DER, as 64 lower-case hex digits.
    fn thumbprint(&self) -> String {
        Sha256::digest(&self.cert)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The same, as `openssl x509 -fingerprint -sha256` prints it (upper case,
    /// colons between bytes).
    fn openssl_fingerprint(&self) -> String {
        Sha256::digest(&self.cert)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The test's certificates, in a temporary directory that also holds the config
/// files (so they name PEM files by relative paths).
struct Pki {
    dir: tempfile::TempDir,
    server_ca: Authority,
    fleet: Authority,
    rogue: Authority,
}

impl Pki {
    /// The server CA (which clients trust), a server certificate for 127.0.0.1 and
    /// localhost, the fleet CA (`fleet-ca.pem`, which configs register) and a rogue
    /// CA (`rogue-ca.pem`, which none does).
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("a temporary directory"),
            server_ca: authority("brokk test server CA"),
            fleet: authority("fleet CA"),
            rogue: authority("rogue CA"),
        };
        pki.write("server-ca.pem", &pki.server_ca.cert.pem());
        pki.write("fleet-ca.pem", &pki.fleet.cert.pem());
        pki.write("rogue-ca.pem", &pki.rogue.cert.pem());
        let key = KeyPair::generate().expect("the server key");
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server names");
        params
            .distinguished_name
            .push(DnType::CommonName, "brokk test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &pki.server_ca.cert, &pki.server_ca.key)
            .expect("the server certificate");
        pki.write("server.pem", &cert.pem());
        pki.write("server.key", &key.serialize_pem());
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` to `name` in the directory (creating subdirectories).
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("a directory for test files");
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// A client certificate with subject `CN=cn` and the alternative names `sans`,
    /// issued by `issuer`, or self-signed without one; written to `<file>.pem` and
    /// `<file>.key`.
    fn client(
        &self,
        file: &str,
        issuer: Option<&Authority>,
        cn: &str,
        sans: Vec<SanType>,
    ) -> Identity {
        self.client_with(file, issuer, cn, sans, |_| {})
    }

    /// [`Pki::client`], with `change` applied to the certificate's parameters.
    fn client_with(
        &self,
        file: &str,
        issuer: Option<&Authority>,
        cn: &str,
        sans: Vec<SanType>,
        change: impl FnOnce(&mut CertificateParams),
    ) -> Identity {
        let key = KeyPair::generate().expect("a client key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        change(&mut params);
        let cert = match issuer {
            Some(ca) => params.signed_by(&key, &ca.cert, &ca.key),
            None => params.self_signed(&key),
        }
        .expect("a client certificate");
        Identity {
            cert: cert.der().clone(),
            chain: Vec::new(),
            key_pkcs8: key.serialize_der(),
            cert_file: self.write(&format!("{file}.pem"), &cert.pem()),
            key_file: self.write(&format!("{file}.key"), &key.serialize_pem()),
        }
    }

    /// A client certificate issued by the fleet CA with subject `CN=cn` only.
    fn fleet_client(&self, cn: &str) -> Identity {
        self.client(cn, Some(&self.fleet), cn, Vec::new())
    }

    /// A TLS client config that trusts the server CA and presents `identity`, if
    /// any.
    fn tls(&self, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.server_ca.cert.der().clone())
            .expect("the server CA is a usable trust anchor");
        let builder =
            rustls::ClientConfig::builder_with_provider(adapter_common::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .expect("the provider supports TLS 1.2 and 1.3")
                .with_root_certificates(roots);
        let config = match identity {
            Some(id) => builder
                .with_client_auth_cert(
                    std::iter::once(&id.cert)
                        .chain(&id.chain)
                        .cloned()
                        .collect(),
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_pkcs8.clone())),
                )
                .expect("the client key matches its certificate"),
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }
}

fn ia5(text: &str) -> rcgen::Ia5String {
    text.try_into().expect("an IA5 string")
}

// ------------------------------------------------------------------ configs

/// Start of every config: state in memory, the data directory next to the file.
const HEAD: &str = "data_dir = \"data\"\npersistence = \"memory\"\n";

/// `[authentication]` with `name_sources` and registration required.
fn authentication(sources: &[&str]) -> String {
    let sources: Vec<String> = sources.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[authentication]\nname_sources = [{}]\nrequire_registered_client = true\n",
        sources.join(", ")
    )
}

/// `[[ca_certificate]]` for the fleet CA.
const FLEET_CA: &str = "[[ca_certificate]]\nname = \"fleet-ca\"\npem = \"fleet-ca.pem\"\n";

/// A `[[listener]]`: mqtts on 127.0.0.1 port 0 with the test's server certificate.
fn mqtts_listener(client_certificates: &str) -> String {
    format!(
        "[[listener]]\nkind = \"mqtts\"\nbind = \"127.0.0.1:0\"\ncert = \"server.pem\"\n\
         key = \"server.key\"\nclient_certificates = \"{client_certificates}\"\n"
    )
}

/// A `[[client]]` whose certificate is validated by `validation` (one of the
/// `*-matches-authentication-name` schemes).
fn matching_client(name: &str, authentication_name: &str, validation: &str) -> String {
    format!(
        "[[client]]\nname = {name:?}\nauthentication_name = {authentication_name:?}\n\
         certificate = {{ validation = {validation:?} }}\n"
    )
}

/// A `[[client]]` named after its certificate's subject CN (the name is the
/// authentication name).
fn subject_client(name: &str, enabled: bool) -> String {
    format!(
        "[[client]]\nname = {name:?}\nenabled = {enabled}\n\
         attributes = {{ type = \"sensor\", floor = 3 }}\n\
         certificate = {{ validation = \"subject-matches-authentication-name\" }}\n"
    )
}

/// A `[[client]]` known by certificate thumbprints (primary, secondary).
fn thumbprint_client(name: &str, thumbprints: &[String]) -> String {
    let prints: Vec<String> = thumbprints.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[[client]]\nname = {name:?}\n\
         certificate = {{ validation = \"thumbprint\", thumbprints = [{}] }}\n",
        prints.join(", ")
    )
}

/// Reads and validates a config file as the binary does.
fn read_config(path: &Path) -> Config {
    let config = Config::read(path).unwrap_or_else(|e| panic!("test config: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("test config: {e}"));
    config
}

/// Writes `brokk.toml` and starts the broker on it in this process.
fn start(pki: &Pki, text: &str) -> (RunningServer, PathBuf) {
    let path = pki.write("brokk.toml", text);
    let server = brokk_e2e::start(Runtime::from_env(), read_config(&path));
    (server, path)
}

// ------------------------------------------------------------------ a raw client over TLS

type TlsStream = rumqttc::tokio_rustls::client::TlsStream<TcpStream>;

/// A hand-written MQTT client over TLS (mqtt-proto packets): it sees the CONNACK
/// exactly as sent and tells a TLS alert from anything else.
struct TlsClient {
    stream: TlsStream,
    version: ProtocolVersion,
    input: BytesMut,
    next_id: u16,
    name: String,
}

/// How a login over TLS ended.
enum Login {
    /// CONNACK 0.
    Accepted(Box<TlsClient>),
    /// A CONNACK refusing the connection, with its bytes as sent.
    Refused(Box<ConnAck>, Bytes),
    /// The broker ended the TLS handshake with this alert.
    HandshakeFailed(String),
}

/// The TLS alert behind `error`; fails the test if it is anything else (a reset, a
/// close without alert), since that is not how a refused certificate should end.
fn tls_alert(what: &str, error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => format!("{alert:?}"),
        _ => panic!("{what}: expected a TLS alert from the broker, got {error:?}"),
    }
}

/// A CONNECT with an optional user name and password.
fn connect(
    version: ProtocolVersion,
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> Connect {
    let mut connect = connect_packet(version, client_id);
    if let Some((user, password)) = credentials {
        connect.username = Some(MqttString::copy_from_str(user).expect("a user name"));
        connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    }
    connect
}

/// Connects over TLS with `tls`, sends `connect` and reads the answer.
async fn login(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, connect: Connect) -> Login {
    let version = connect.protocol;
    let name = format!("{} ({version:?})", connect.client_id.as_str());
    let tcp = within(&format!("{name}: TCP connect"), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("{name}: cannot connect to {addr}: {e}"));
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let server = ServerName::try_from("127.0.0.1").expect("an IP address");
    let handshake = TlsConnector::from(tls).connect(server, tcp);
    let stream = match within(&format!("{name}: TLS handshake"), handshake).await {
        Ok(stream) => stream,
        Err(e) => return Login::HandshakeFailed(tls_alert(&name, &e)),
    };
    let mut client = TlsClient {
        stream,
        version,
        input: BytesMut::new(),
        next_id: 0,
        name: name.clone(),
    };
    // With TLS 1.3 the client finishes its side of the handshake before the broker
    // has looked at its certificate: a refusal comes as an alert on the first read.
    // A failed write is left for that read to explain.
    let bytes = encode(&Packet::Connect(Box::new(connect)), version);
    let _ = client.stream.write_all(&bytes).await;
    let _ = client.stream.flush().await;
    match client.next().await {
        Ok(Some((Packet::ConnAck(ack), frame))) => {
            if ack.reason_code == ReasonCode::Success {
                Login::Accepted(Box::new(client))
            } else {
                Login::Refused(ack, frame)
            }
        }
        Ok(Some((other, _))) => panic!("{name}: expected CONNACK, got {other:?}"),
        Ok(None) => panic!("{name}: the broker closed the connection without CONNACK or alert"),
        Err(e) => Login::HandshakeFailed(tls_alert(&name, &e)),
    }
}

impl TlsClient {
    /// The next packet with its bytes; `None` when the broker closed the stream.
    async fn next(&mut self) -> std::io::Result<Option<(Packet, Bytes)>> {
        let what = format!("{}: a packet from the broker", self.name);
        within(&what, async {
            loop {
                if let Some(header) = FixedHeader::parse(&self.input)
                    .unwrap_or_else(|e| panic!("{}: bad fixed header: {e}", self.name))
                {
                    if self.input.len() >= header.packet_len() {
                        let frame = self.input.split_to(header.packet_len()).freeze();
                        let packet = decode_packet(Some(self.version), frame.clone())
                            .unwrap_or_else(|e| panic!("{}: undecodable packet: {e}", self.name));
                        return Ok(Some((packet, frame)));
                    }
                }
                if self.stream.read_buf(&mut self.input).await? == 0 {
                    return Ok(None);
                }
            }
        })
        .await
    }

    async fn recv(&mut self) -> Packet {
        match self.next().await {
            Ok(Some((packet, _))) => packet,
            Ok(None) => panic!("{}: the broker closed the connection", self.name),
            Err(e) => panic!("{}: connection error: {e}", self.name),
        }
    }

    async fn send(&mut self, packet: &Packet) {
        let bytes = encode(packet, self.version);
        let name = self.name.clone();
        within(&format!("{name}: write"), async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: write failed: {e}"));
    }

    fn packet_id(&mut self) -> std::num::NonZeroU16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        std::num::NonZeroU16::new(self.next_id).expect("never zero")
    }

    /// Subscribes to `topic`, publishes to it at QoS 1 and receives the message:
    /// the broker serves this connection.
    async fn round_trip(&mut self, topic: &str) {
        let sub_id = self.packet_id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: sub_id,
            filters: vec![(
                TopicFilter::copy_from_str(topic).expect("a topic filter"),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
            properties: Default::default(),
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(ack) if ack.packet_id == sub_id => {
                assert_eq!(ack.reason_codes, [ReasonCode::GrantedQoS1], "{}", self.name)
            }
            other => panic!("{}: expected SUBACK, got {other:?}", self.name),
        }
        let payload = format!("round trip of {}", self.name);
        let pub_id = self.packet_id();
        let publish = publish_packet(
            topic,
            payload.as_bytes(),
            QoS::AtLeastOnce,
            false,
            Some(pub_id),
        );
        self.send(&Packet::Publish(publish)).await;
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            match self.recv().await {
                Packet::PubAck(ack) if ack.packet_id == pub_id => acked = true,
                Packet::Publish(p) => {
                    assert_eq!(p.topic.as_str(), topic, "{}", self.name);
                    assert_eq!(&p.payload[..], payload.as_bytes(), "{}", self.name);
                    let id = p.packet_id.expect("a QoS 1 delivery has a packet id");
                    self.send(&Packet::PubAck(PubAck::new(id))).await;
                    delivered = true;
                }
                other => panic!("{}: unexpected {other:?}", self.name),
            }
        }
    }

    async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(mqtt_proto::Disconnect::new(
            ReasonCode::Success,
        )))
        .await;
        let _ = self.stream.shutdown().await;
    }
}

/// Who logs in: a certificate (or none) and a user name and password (or none).
#[derive(Clone, Copy)]
struct Creds<'a> {
    cert: Option<&'a Identity>,
    user: Option<(&'a str, &'a str)>,
}

fn cert(identity: &Identity) -> Creds<'_> {
    Creds {
        cert: Some(identity),
        user: None,
    }
}

fn password<'a>(user: &'a str, password: &'a str) -> Creds<'a> {
    Creds {
        cert: None,
        user: Some((user, password)),
    }
}

/// Logs in with MQTT 3.1.1 and 5.0; asserts CONNACK 0 and a round trip each time.
async fn assert_connects(pki: &Pki, addr: SocketAddr, creds: Creds<'_>, client_id: &str) {
    for version in [V3, V5] {
        let id = format!("{client_id}-{}", version.level());
        match login(addr, pki.tls(creds.cert), connect(version, &id, creds.user)).await {
            Login::Accepted(mut client) => {
                client.round_trip(&format!("tls/{id}")).await;
                client.disconnect().await;
            }
            Login::Refused(ack, frame) => {
                panic!("{id} ({version:?}): refused with {ack:?} ({frame:02x?})")
            }
            Login::HandshakeFailed(alert) => {
                panic!("{id} ({version:?}): the TLS handshake failed: {alert}")
            }
        }
    }
}

/// Logs in with MQTT 3.1.1 and 5.0; asserts the CONNACK refuses with `code` (5.0)
/// and its 3.1.1 return code, byte for byte.
async fn assert_refused(
    pki: &Pki,
    addr: SocketAddr,
    creds: Creds<'_>,
    client_id: &str,
    code: ReasonCode,
) {
    for version in [V3, V5] {
        match login(
            addr,
            pki.tls(creds.cert),
            connect(version, client_id, creds.user),
        )
        .await
        {
            Login::Refused(ack, frame) => {
                assert_eq!(
                    ack.reason_code, code,
                    "{client_id} ({version:?}): {frame:02x?}"
                );
                assert!(!ack.session_present, "{client_id} ({version:?})");
                if version == V3 {
                    assert_eq!(
                        &frame[..],
                        [0x20, 0x02, 0x00, code.connack_v3_code()],
                        "{client_id}: the 3.1.1 CONNACK"
                    );
                } else {
                    assert_eq!(frame[0], 0x20, "{client_id}: a 5.0 CONNACK");
                    assert_eq!(frame[3], code as u8, "{client_id}: {frame:02x?}");
                }
            }
            Login::Accepted(client) => {
                client.disconnect().await;
                panic!("{client_id} ({version:?}): the broker accepted it; expected {code:?}")
            }
            Login::HandshakeFailed(alert) => panic!(
                "{client_id} ({version:?}): the TLS handshake failed ({alert}); expected \
                 CONNACK {code:?}"
            ),
        }
    }
}

/// Logs in with MQTT 3.1.1 and 5.0; asserts the broker ends the TLS handshake with
/// an alert, before any CONNACK.
async fn assert_handshake_fails(pki: &Pki, addr: SocketAddr, creds: Creds<'_>, client_id: &str) {
    for version in [V3, V5] {
        match login(
            addr,
            pki.tls(creds.cert),
            connect(version, client_id, creds.user),
        )
        .await
        {
            Login::HandshakeFailed(_) => {}
            Login::Accepted(client) => {
                client.disconnect().await;
                panic!("{client_id} ({version:?}): accepted; expected a failed handshake")
            }
            Login::Refused(ack, _) => panic!(
                "{client_id} ({version:?}): the handshake succeeded and CONNACK refused \
                 ({:?}); expected a failed handshake",
                ack.reason_code
            ),
        }
    }
}

// ------------------------------------------------------------------ rumqttc

/// rumqttc's 3.1.1 or 5.0 client handle.
#[derive(Clone)]
enum Rq {
    V3(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// Its event loop.
enum RqLoop {
    V3(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What a poll of the event loop brought.
#[derive(Debug)]
enum Ev {
    ConnAck,
    SubAck,
    PubAck,
    Publish(String, Bytes),
    Other,
}

/// A rumqttc client for `client_id` over TLS to `addr`, with `tls` (client
/// certificate included); nothing happens until its loop is polled.
fn rumqttc_client(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    tls: Arc<rustls::ClientConfig>,
) -> (Rq, RqLoop) {
    let transport = Transport::Tls(TlsConfiguration::Rustls(tls));
    if version == V5 {
        let mut options = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", addr.port());
        options.set_transport(transport);
        options.set_keep_alive(Duration::from_secs(60));
        options.set_connection_timeout(TIMEOUT.as_secs());
        let (client, events) = rumqttc::v5::AsyncClient::new(options, 64);
        (Rq::V5(client), RqLoop::V5(Box::new(events)))
    } else {
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", addr.port());
        options.set_transport(transport);
        options.set_keep_alive(Duration::from_secs(60));
        let (client, events) = rumqttc::AsyncClient::new(options, 64);
        (Rq::V3(client), RqLoop::V3(Box::new(events)))
    }
}

impl RqLoop {
    async fn poll(&mut self) -> Result<Ev, String> {
        match self {
            RqLoop::V3(events) => {
                use rumqttc::{Event, Packet as P};
                Ok(match events.poll().await.map_err(|e| format!("{e:?}"))? {
                    Event::Incoming(P::ConnAck(_)) => Ev::ConnAck,
                    Event::Incoming(P::SubAck(_)) => Ev::SubAck,
                    Event::Incoming(P::PubAck(_)) => Ev::PubAck,
                    Event::Incoming(P::Publish(p)) => Ev::Publish(p.topic, p.payload),
                    _ => Ev::Other,
                })
            }
            RqLoop::V5(events) => {
                use rumqttc::v5::mqttbytes::v5::Packet as P;
                use rumqttc::v5::Event;
                Ok(match events.poll().await.map_err(|e| format!("{e:?}"))? {
                    Event::Incoming(P::ConnAck(_)) => Ev::ConnAck,
                    Event::Incoming(P::SubAck(_)) => Ev::SubAck,
                    Event::Incoming(P::PubAck(_)) => Ev::PubAck,
                    Event::Incoming(P::Publish(p)) => Ev::Publish(
                        String::from_utf8(p.topic.to_vec()).expect("a UTF-8 topic"),
                        p.payload,
                    ),
                    _ => Ev::Other,
                })
            }
        }
    }

    /// Polls until `pick` takes an event; fails the test on an error.
    async fn until(&mut self, what: &str, mut pick: impl FnMut(&Ev) -> bool) {
        within(what, async {
            loop {
                match self.poll().await {
                    Ok(ev) if pick(&ev) => return,
                    Ok(_) => {}
                    Err(e) => panic!("{what}: {e}"),
                }
            }
        })
        .await
    }
}

impl Rq {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Rq::V3(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
            Rq::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn subscribe(&self, filter: &str) {
        match self {
            Rq::V3(c) => c
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Rq::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
        }
        .unwrap_or_else(|e| panic!("subscribe {filter}: {e}"));
    }

    async fn disconnect(&self) {
        let _ = match self {
            Rq::V3(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Rq::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

/// rumqttc connects with `identity`'s certificate (CONNACK 0), subscribes,
/// publishes at QoS 1 and receives its message, then disconnects.
async fn rumqttc_round_trip(pki: &Pki, addr: SocketAddr, identity: &Identity, client_id: &str) {
    for version in [V3, V5] {
        let id = format!("{client_id}-rumqttc-{}", version.level());
        let topic = format!("tls/rumqttc/{id}");
        let (client, mut events) = rumqttc_client(addr, version, &id, pki.tls(Some(identity)));
        events
            .until(&format!("{id}: CONNACK"), |ev| matches!(ev, Ev::ConnAck))
            .await;
        client.subscribe(&topic).await;
        events
            .until(&format!("{id}: SUBACK"), |ev| matches!(ev, Ev::SubAck))
            .await;
        client
            .publish(&topic, id.clone().into_bytes())
            .await
            .unwrap_or_else(|e| panic!("{id}: publish: {e}"));
        let (mut acked, mut delivered) = (false, false);
        events
            .until(&format!("{id}: PUBACK and delivery"), |ev| {
                match ev {
                    Ev::PubAck => acked = true,
                    Ev::Publish(t, p) => {
                        assert_eq!((t.as_str(), &p[..]), (topic.as_str(), id.as_bytes()));
                        delivered = true;
                    }
                    _ => {}
                }
                acked && delivered
            })
            .await;
        client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    }
}

// ------------------------------------------------------------------ load

/// What a driven client's event loop saw.
#[derive(Default)]
struct Stats {
    connacks: AtomicU32,
    subacks: AtomicU32,
    acked: AtomicU32,
    /// Messages received, by topic: their payloads (sequence numbers) in order.
    received: Mutex<HashMap<String, Vec<u32>>>,
    received_total: AtomicU32,
    /// The first connection error; the loop stops there (rumqttc would reconnect).
    error: Mutex<Option<String>>,
}

/// A rumqttc client whose event loop a task polls until told to stop.
struct Driven {
    name: String,
    client: Rq,
    stats: Arc<Stats>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn drive(name: &str, (client, mut events): (Rq, RqLoop)) -> Driven {
    let stats = Arc::new(Stats::default());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let s = stats.clone();
    let task = tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                ev = events.poll() => ev,
                _ = stopped.changed() => return,
            };
            let counter = match ev {
                Ok(Ev::ConnAck) => &s.connacks,
                Ok(Ev::SubAck) => &s.subacks,
                Ok(Ev::PubAck) => &s.acked,
                Ok(Ev::Publish(topic, payload)) => {
                    let seq = std::str::from_utf8(&payload)
                        .ok()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or_else(|| panic!("{topic}: unexpected payload {payload:?}"));
                    let mut received = s.received.lock().unwrap_or_else(|e| e.into_inner());
                    received.entry(topic).or_default().push(seq);
                    &s.received_total
                }
                Ok(Ev::Other) => continue,
                Err(e) => {
                    *s.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    return;
                }
            };
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    Driven {
        name: name.to_owned(),
        client,
        stats,
        stop,
        task,
    }
}

impl Driven {
    /// Fails the test if the connection has failed.
    fn assert_alive(&self) {
        let error = self.stats.error.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &*error {
            panic!(
                "{}: the connection failed (dropped by the broker?): {e}",
                self.name
            );
        }
    }

    /// Waits until `done` holds, failing the test if the connection fails first.
    async fn wait(&self, what: &str, done: impl Fn(&Stats) -> bool) {
        within(&format!("{}: {what}", self.name), async {
            loop {
                self.assert_alive();
                if done(&self.stats) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    async fn close(self) {
        self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The reload scenarios' publishers (with their MQTT versions) and subscriber.
const PUBLISHERS: [(&str, ProtocolVersion); 3] = [("sensor-1", V5), ("pump-a", V3), ("pump-b", V5)];
const SINK: &str = "sink";
/// The pause between two publishes of one client: about 150 messages/s each.
const PACE: Duration = Duration::from_millis(7);

/// Clients publishing QoS 1 in a loop to one subscriber while a test does other
/// things.
struct Load {
    sink: Driven,
    publishers: Vec<(Driven, tokio::task::JoinHandle<u32>)>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Load {
    /// Connects the subscriber and the publishers with their certificates and
    /// returns once every publisher has had messages acknowledged.
    async fn start(pki: &Pki, addr: SocketAddr, ids: &HashMap<&str, Identity>) -> Load {
        let sink = drive(
            SINK,
            rumqttc_client(addr, V5, SINK, pki.tls(Some(&ids[SINK]))),
        );
        sink.wait("CONNACK", |s| s.connacks.load(Ordering::SeqCst) > 0)
            .await;
        sink.client.subscribe("load/#").await;
        sink.wait("SUBACK", |s| s.subacks.load(Ordering::SeqCst) > 0)
            .await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut publishers = Vec::new();
        for (name, version) in PUBLISHERS {
            let tls = pki.tls(Some(&ids[name]));
            let driven = drive(name, rumqttc_client(addr, version, name, tls));
            driven
                .wait("CONNACK", |s| s.connacks.load(Ordering::SeqCst) > 0)
                .await;
            let client = driven.client.clone();
            let stopped = stopped.clone();
            let topic = format!("load/{name}");
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(PACE);
                let mut sent = 0u32;
                while !*stopped.borrow() {
                    tick.tick().await;
                    // A failed publish means the event loop ended: its error is
                    // what finish() reports.
                    if client
                        .publish(&topic, sent.to_string().into_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                }
                sent
            });
            publishers.push((driven, task));
        }
        for (driven, _) in &publishers {
            driven
                .wait("20 acknowledged messages", |s| {
                    s.acked.load(Ordering::SeqCst) >= 20
                })
                .await;
        }
        Load {
            sink,
            publishers,
            stop,
        }
    }

    /// Waits until every publisher has had `n` more messages acknowledged and the
    /// subscriber has received as many more: the load flows on.
    async fn keeps_flowing(&self, n: u32) {
        let received = self.sink.stats.received_total.load(Ordering::SeqCst);
        for (driven, _) in &self.publishers {
            let acked = driven.stats.acked.load(Ordering::SeqCst);
            driven
                .wait(&format!("{n} more acknowledged messages"), |s| {
                    s.acked.load(Ordering::SeqCst) >= acked + n
                })
                .await;
        }
        let more = n * self.publishers.len() as u32;
        self.sink
            .wait(&format!("{more} more messages"), |s| {
                s.received_total.load(Ordering::SeqCst) >= received + more
            })
            .await;
    }

    /// Stops publishing and asserts that nothing was lost: every message each
    /// publisher sent was acknowledged and delivered once, in order, and no
    /// connection failed or connected twice. Returns how many messages went through.
    async fn finish(mut self) -> u32 {
        let _ = self.stop.send(true);
        let mut sent_by_topic = Vec::new();
        for (driven, task) in self.publishers.iter_mut() {
            let sent = within(&format!("{}: publishing to stop", driven.name), task)
                .await
                .expect("the publishing task");
            driven
                .wait(&format!("PUBACK for all {sent} messages"), |s| {
                    s.acked.load(Ordering::SeqCst) >= sent
                })
                .await;
            sent_by_topic.push((format!("load/{}", driven.name), sent));
        }
        let total: u32 = sent_by_topic.iter().map(|(_, n)| n).sum();
        self.sink
            .wait(&format!("all {total} messages"), |s| {
                s.received_total.load(Ordering::SeqCst) >= total
            })
            .await;
        // Time for a duplicate, if the broker sent any.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for driven in self
            .publishers
            .iter()
            .map(|(d, _)| d)
            .chain(std::iter::once(&self.sink))
        {
            driven.assert_alive();
            assert_eq!(
                driven.stats.connacks.load(Ordering::SeqCst),
                1,
                "{}: connected more than once",
                driven.name
            );
        }
        {
            let received = self
                .sink
                .stats
                .received
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (topic, sent) in &sent_by_topic {
                let got = received.get(topic).map_or(&[][..], |v| &v[..]);
                let expected: Vec<u32> = (0..*sent).collect();
                if got != expected {
                    let missing: Vec<&u32> = expected.iter().filter(|n| !got.contains(n)).collect();
                    panic!(
                        "{topic}: {sent} sent and acknowledged, {} delivered; missing {missing:?}; \
                         delivered {got:?}",
                        got.len()
                    );
                }
            }
        }
        for (driven, _) in self.publishers {
            driven.close().await;
        }
        self.sink.close().await;
        total
    }
}

// ------------------------------------------------------------------ mosquitto

/// Long enough for a cold start on a busy machine.
const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// `mosquitto_pub`/`mosquitto_sub` options: TLS to 127.0.0.1:`port` trusting the
/// server CA, with `identity`'s certificate and key.
fn mosquitto_args(command: &mut Command, pki: &Pki, port: u16, identity: &Identity) {
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .arg("--cafile")
        .arg(pki.path("server-ca.pem"))
        .arg("--cert")
        .arg(&identity.cert_file)
        .arg("--key")
        .arg(&identity.key_file);
}

/// `mosquitto_sub` waits for one message while `mosquitto_pub` sends it, both
/// logged in with `identity`'s certificate.
async fn mosquitto_round_trip(pki: &Pki, port: u16, identity: &Identity, version: &str) {
    let sub = require("mosquitto_sub");
    let publisher = require("mosquitto_pub");
    let topic = format!("tls/mosquitto/{version}");
    let payload = format!("mosquitto {version} with a client certificate");
    let mut sub_command = Command::new(&sub);
    mosquitto_args(&mut sub_command, pki, port, identity);
    sub_command
        .args([
            "-V", version, "-q", "1", "-t", &topic, "-d", "-C", "1", "-W", "10",
        ])
        .args(["-i", &format!("mosquitto-sub-{version}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = sub_command.spawn().expect("start mosquitto_sub");
    let stdout = Captured::drain(child.stdout.take().expect("piped stdout"));
    let stderr = Captured::drain(child.stderr.take().expect("piped stderr"));
    // mosquitto_sub's output is block-buffered in a pipe, so it cannot say when it
    // has subscribed: publish until it has received a message and exited.
    let status = within("mosquitto_sub to receive from mosquitto_pub", async {
        loop {
            let mut pub_command = Command::new(&publisher);
            mosquitto_args(&mut pub_command, pki, port, identity);
            pub_command
                .args(["-V", version, "-q", "1", "-t", &topic, "-m", &payload])
                .args(["-i", &format!("mosquitto-pub-{version}")]);
            assert_success("mosquitto_pub", &run(pub_command, TOOL_LIMIT).await);
            if let Ok(status) = tokio::time::timeout(Duration::from_millis(200), child.wait()).await
            {
                return status.expect("mosquitto_sub's exit status");
            }
        }
    })
    .await;
    let (stdout, stderr) = (stdout.all().await, stderr.all().await);
    assert!(
        status.success() && stdout.lines().any(|l| l == payload),
        "mosquitto_sub ({status}) did not print {payload:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

// ------------------------------------------------------------------ the scenarios

/// Names from the subject CN (else the user name), registration required, the
/// fleet CA registered, sensor-1 registered by subject, plus `more` tables.
fn subject_config(more: &str) -> String {
    format!(
        "{HEAD}{}{FLEET_CA}{}{more}{}",
        authentication(&["cert-subject-cn", "username"]),
        subject_client("sensor-1", true),
        mqtts_listener("required")
    )
}

#[tokio::test]
async fn a_certificate_whose_subject_cn_is_a_registered_name_from_the_registered_ca_connects() {
    let pki = Pki::new();
    let sensor1 = pki.fleet_client("sensor-1");
    let impostor = pki.client("impostor", Some(&pki.rogue), "sensor-1", Vec::new());
    let sensor2 = pki.fleet_client("sensor-2");
    let (server, _) = start(&pki, &subject_config(""));
    let addr = server.addr(ListenerKind::Mqtts);

    assert_connects(&pki, addr, cert(&sensor1), "sensor-1").await;
    rumqttc_round_trip(&pki, addr, &sensor1, "sensor-1").await;
    // The right name from a CA nobody registered: no handshake.
    assert_handshake_fails(&pki, addr, cert(&impostor), "impostor").await;
    // The right CA, a name nobody registered (registration is required).
    assert_refused(
        &pki,
        addr,
        cert(&sensor2),
        "sensor-2",
        ReasonCode::NotAuthorized,
    )
    .await;
}

#[tokio::test]
async fn chains_through_an_intermediate_names_in_another_case_and_expired_certificates() {
    let pki = Pki::new();
    let intermediate = authority_under("fleet issuing CA", Some(&pki.fleet));
    let mut chained = pki.client("chained", Some(&intermediate), "sensor-1", Vec::new());
    chained.chain.push(intermediate.cert.der().clone());
    let leaf_only = pki.client("leaf-only", Some(&intermediate), "sensor-1", Vec::new());
    let upper = pki.fleet_client("SENSOR-1");
    let expired = pki.client_with("expired", Some(&pki.fleet), "sensor-1", Vec::new(), |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (server, _) = start(&pki, &subject_config(""));
    let addr = server.addr(ListenerKind::Mqtts);

    // The client sends its intermediate; only the root is registered.
    assert_connects(&pki, addr, cert(&chained), "chained").await;
    // Without the intermediate the chain does not reach the registered root.
    assert_handshake_fails(&pki, addr, cert(&leaf_only), "leaf-only").await;
    // Authentication names are compared ignoring case.
    assert_connects(&pki, addr, cert(&upper), "upper").await;
    assert_handshake_fails(&pki, addr, cert(&expired), "expired").await;
}

#[tokio::test]
async fn mosquitto_clients_log_in_with_a_certificate_and_an_unregistered_one_is_refused() {
    let pki = Pki::new();
    let sensor1 = pki.fleet_client("sensor-1");
    let sensor2 = pki.fleet_client("sensor-2");
    let (server, _) = start(&pki, &subject_config(""));
    let port = server.port(ListenerKind::Mqtts);

    for version in ["mqttv311", "mqttv5"] {
        mosquitto_round_trip(&pki, port, &sensor1, version).await;
        let mut command = Command::new(require("mosquitto_pub"));
        mosquitto_args(&mut command, &pki, port, &sensor2);
        command.args([
            "-V",
            version,
            "-t",
            "tls/refused",
            "-m",
            "x",
            "-i",
            "sensor-2",
        ]);
        let out = run(command, TOOL_LIMIT).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() && text.to_lowercase().contains("not authori"),
            "mosquitto_pub {version} with an unregistered certificate ({}):\n{text}",
            out.status
        );
    }
}

/// One alternative-name scheme: names come from `source` (else the user name); a
/// client registered as `registered` with `validation`. The certificate whose
/// `make(registered)` entry names it connects; one whose entry names someone
/// unregistered is refused; so is a certificate without such an entry whose user
/// name (and CN) claim the registered name.
async fn san_scheme(
    source: &str,
    validation: &str,
    registered: &str,
    unregistered: &str,
    make: fn(&str) -> SanType,
) {
    let pki = Pki::new();
    let good = pki.client("good", Some(&pki.fleet), "device", vec![make(registered)]);
    let other = pki.client(
        "other",
        Some(&pki.fleet),
        "device",
        vec![make(unregistered)],
    );
    let lookalike = pki.client("lookalike", Some(&pki.fleet), registered, Vec::new());
    let text = format!(
        "{HEAD}{}{FLEET_CA}{}{}",
        authentication(&[source, "username"]),
        matching_client("device", registered, validation),
        mqtts_listener("required")
    );
    let (server, _) = start(&pki, &text);
    let addr = server.addr(ListenerKind::Mqtts);

    assert_connects(&pki, addr, cert(&good), "good").await;
    assert_refused(&pki, addr, cert(&other), "other", ReasonCode::NotAuthorized).await;
    let claim = Creds {
        cert: Some(&lookalike),
        user: Some((registered, "no password needed")),
    };
    assert_refused(&pki, addr, claim, "lookalike", ReasonCode::NotAuthorized).await;
}

#[tokio::test]
async fn dns_san_matching_the_authentication_name() {
    san_scheme(
        "cert-dns",
        "dns-matches-authentication-name",
        "sensor-1.fleet.example",
        "sensor-9.fleet.example",
        |name| SanType::DnsName(ia5(name)),
    )
    .await;
}

#[tokio::test]
async fn uri_san_matching_the_authentication_name() {
    san_scheme(
        "cert-uri",
        "uri-matches-authentication-name",
        "spiffe://fleet.example/sensor-1",
        "spiffe://fleet.example/sensor-9",
        |name| SanType::URI(ia5(name)),
    )
    .await;
}

#[tokio::test]
async fn ip_san_matching_the_authentication_name() {
    san_scheme(
        "cert-ip",
        "ip-matches-authentication-name",
        "10.0.0.7",
        "10.0.0.9",
        |name| SanType::IpAddress(name.parse().expect("an IP address")),
    )
    .await;
}

#[tokio::test]
async fn email_san_matching_the_authentication_name() {
    san_scheme(
        "cert-email",
        "email-matches-authentication-name",
        "sensor-1@fleet.example",
        "sensor-9@fleet.example",
        |name| SanType::Rfc822Name(ia5(name)),
    )
    .await;
}

#[tokio::test]
async fn self_signed_devices_are_known_by_their_registered_thumbprints() {
    let pki = Pki::new();
    let a1 = pki.client("device-a-1", None, "device-a", Vec::new());
    let a2 = pki.client("device-a-2", None, "device-a", Vec::new());
    let b = pki.client("device-b", None, "device-b", Vec::new());
    // Registered for device-c, but its subject names device-b.
    let c = pki.client("device-c", None, "device-b", Vec::new());
    let stranger = pki.client("stranger", None, "device-a", Vec::new());
    let text = format!(
        "{HEAD}{}{}{}{}{}",
        authentication(&["cert-subject-cn", "username"]),
        // The secondary as openssl prints it: upper case with colons.
        thumbprint_client("device-a", &[a1.thumbprint(), a2.openssl_fingerprint()]),
        thumbprint_client("device-b", &[b.thumbprint()]),
        thumbprint_client("device-c", &[c.thumbprint()]),
        mqtts_listener("required")
    );
    let (server, _) = start(&pki, &text);
    let addr = server.addr(ListenerKind::Mqtts);

    assert_connects(&pki, addr, cert(&a1), "primary").await;
    assert_connects(&pki, addr, cert(&a2), "secondary").await;
    assert_connects(&pki, addr, cert(&b), "device-b").await;
    // Self-signed, thumbprint registered nowhere: no handshake.
    assert_handshake_fails(&pki, addr, cert(&stranger), "stranger").await;
    // Its thumbprint belongs to device-c, its name to device-b.
    assert_refused(&pki, addr, cert(&c), "device-c", ReasonCode::NotAuthorized).await;
}

#[tokio::test]
async fn a_disabled_client_is_refused_though_its_certificate_is_valid() {
    let pki = Pki::new();
    let sensor1 = pki.fleet_client("sensor-1");
    let sensor4 = pki.fleet_client("sensor-4");
    let (server, _) = start(&pki, &subject_config(&subject_client("sensor-4", false)));
    let addr = server.addr(ListenerKind::Mqtts);

    assert_refused(
        &pki,
        addr,
        cert(&sensor4),
        "sensor-4",
        ReasonCode::NotAuthorized,
    )
    .await;
    assert_connects(&pki, addr, cert(&sensor1), "sensor-1").await;
}

#[tokio::test]
async fn optional_client_certificates_admit_password_clients_and_required_ones_do_not() {
    let pki = Pki::new();
    let sensor1 = pki.fleet_client("sensor-1");
    let impostor = pki.client("impostor", Some(&pki.rogue), "sensor-1", Vec::new());
    let mut passwords = PasswordFile::new();
    passwords
        .set_password("app-1", b"s3cret")
        .expect("a valid user and password");
    passwords
        .write(&pki.path("passwords"))
        .expect("the password file");
    let text = format!(
        "{HEAD}password_file = \"passwords\"\n{}{FLEET_CA}{}[[client]]\nname = \"app-1\"\n{}{}",
        authentication(&["cert-subject-cn", "username"]),
        subject_client("sensor-1", true),
        mqtts_listener("optional"),
        mqtts_listener("required")
    );
    let (server, _) = start(&pki, &text);
    let (optional, required) = match server.local_addrs() {
        [(ListenerKind::Mqtts, optional), (ListenerKind::Mqtts, required)] => {
            (*optional, *required)
        }
        other => panic!("expected two mqtts listeners: {other:?}"),
    };

    // Optional: a password client without a certificate, a certificate client.
    assert_connects(&pki, optional, password("app-1", "s3cret"), "app-1").await;
    assert_refused(
        &pki,
        optional,
        password("app-1", "wrong"),
        "app-1-wrong",
        ReasonCode::BadUserNameOrPassword,
    )
    .await;
    assert_refused(
        &pki,
        optional,
        password("app-9", "s3cret"),
        "app-9",
        ReasonCode::NotAuthorized,
    )
    .await;
    let nobody = Creds {
        cert: None,
        user: None,
    };
    assert_refused(&pki, optional, nobody, "nobody", ReasonCode::NotAuthorized).await;
    assert_connects(&pki, optional, cert(&sensor1), "sensor-1").await;
    // A client registered with a certificate cannot log in by password instead.
    assert_refused(
        &pki,
        optional,
        password("sensor-1", "s3cret"),
        "sensor-1-by-password",
        ReasonCode::NotAuthorized,
    )
    .await;
    // A certificate that is offered is still checked.
    assert_handshake_fails(&pki, optional, cert(&impostor), "impostor").await;

    // Required: no certificate, no handshake, whatever the password.
    assert_handshake_fails(&pki, required, password("app-1", "s3cret"), "app-1").await;
    assert_connects(&pki, required, cert(&sensor1), "sensor-1").await;
}

#[tokio::test]
async fn clients_and_cas_from_an_included_file_work_the_same() {
    let pki = Pki::new();
    let sensor1 = pki.fleet_client("sensor-1");
    let sensor2 = pki.fleet_client("sensor-2");
    let sensor4 = pki.fleet_client("sensor-4");
    let impostor = pki.client("impostor", Some(&pki.rogue), "sensor-1", Vec::new());
    // Paths in the included file are relative to it: the CA is only in fleet/.
    pki.write("fleet/issuing-ca.pem", &pki.fleet.cert.pem());
    pki.write(
        "fleet/clients.toml",
        &format!(
            "[[ca_certificate]]\nname = \"fleet-ca\"\npem = \"issuing-ca.pem\"\n{}{}",
            subject_client("sensor-1", true),
            subject_client("sensor-4", false)
        ),
    );
    let text = format!(
        "{HEAD}include = [\"fleet/clients.toml\"]\n{}{}",
        authentication(&["cert-subject-cn", "username"]),
        mqtts_listener("required")
    );
    let (server, _) = start(&pki, &text);
    let addr = server.addr(ListenerKind::Mqtts);

    assert_connects(&pki, addr, cert(&sensor1), "sensor-1").await;
    assert_refused(
        &pki,
        addr,
        cert(&sensor2),
        "sensor-2",
        ReasonCode::NotAuthorized,
    )
    .await;
    assert_refused(
        &pki,
        addr,
        cert(&sensor4),
        "sensor-4",
        ReasonCode::NotAuthorized,
    )
    .await;
    assert_handshake_fails(&pki, addr, cert(&impostor), "impostor").await;
}

// ------------------------------------------------------------------ reloading

/// The reload scenarios' config: the load's clients, and sensor-1 enabled
/// (`before`) or disabled with sensor-3 registered (after).
fn reload_config(after: bool) -> String {
    let mut text = format!("{HEAD}{}{FLEET_CA}", authentication(&["cert-subject-cn"]));
    for name in [SINK, "pump-a", "pump-b"] {
        text.push_str(&subject_client(name, true));
    }
    text.push_str(&subject_client("sensor-1", !after));
    if after {
        text.push_str(&subject_client("sensor-3", true));
    }
    text + &mqtts_listener("required")
}

/// A config that must not load, and would let sensor-1 back in and sensor-3 out
/// if it did: its second CA file does not exist.
fn config_with_missing_ca() -> String {
    reload_config(false) + "[[ca_certificate]]\nname = \"gone\"\npem = \"missing-ca.pem\"\n"
}

/// Certificates of the reload scenarios' clients, by name.
fn reload_identities(pki: &Pki) -> HashMap<&'static str, Identity> {
    [SINK, "pump-a", "pump-b", "sensor-1", "sensor-3"]
        .into_iter()
        .map(|name| (name, pki.fleet_client(name)))
        .collect()
}

/// New logins follow the reloaded config: sensor-1 is refused (also with the
/// client id its established connection uses), sensor-3 connects.
async fn assert_reloaded_policy(pki: &Pki, addr: SocketAddr, ids: &HashMap<&str, Identity>) {
    let sensor1 = cert(&ids["sensor-1"]);
    assert_refused(pki, addr, sensor1, "sensor-1", ReasonCode::NotAuthorized).await;
    assert_refused(
        pki,
        addr,
        sensor1,
        "sensor-1-again",
        ReasonCode::NotAuthorized,
    )
    .await;
    assert_connects(pki, addr, cert(&ids["sensor-3"]), "sensor-3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_in_process_under_load_keeps_connections_and_refuses_a_broken_config() {
    let pki = Pki::new();
    let ids = reload_identities(&pki);
    let (server, path) = start(&pki, &reload_config(false));
    let addr = server.addr(ListenerKind::Mqtts);
    assert_refused(
        &pki,
        addr,
        cert(&ids["sensor-3"]),
        "sensor-3",
        ReasonCode::NotAuthorized,
    )
    .await;
    let load = Load::start(&pki, addr, &ids).await;

    pki.write("brokk.toml", &reload_config(true));
    server
        .reload(&read_config(&path))
        .unwrap_or_else(|e| panic!("the new config does not reload: {e}"));
    assert_reloaded_policy(&pki, addr, &ids).await;
    load.keeps_flowing(30).await;

    pki.write("brokk.toml", &config_with_missing_ca());
    let error = server
        .reload(&read_config(&path))
        .expect_err("a config naming a missing CA file reloaded");
    assert!(error.to_string().contains("missing-ca.pem"), "{error}");
    assert_reloaded_policy(&pki, addr, &ids).await;
    load.keeps_flowing(30).await;

    let delivered = load.finish().await;
    assert!(delivered >= 300, "only {delivered} messages under load");
}

#[tokio::test]
async fn a_reload_changes_which_certificates_the_handshake_admits() {
    let pki = Pki::new();
    let sensor1 = pki.fleet_client("sensor-1");
    let device = pki.client("device-x", None, "device-x", Vec::new());
    let (server, path) = start(&pki, &subject_config(""));
    let addr = server.addr(ListenerKind::Mqtts);
    assert_handshake_fails(&pki, addr, cert(&device), "device-x").await;
    let mut established =
        match login(addr, pki.tls(Some(&sensor1)), connect(V5, "sensor-1", None)).await {
            Login::Accepted(client) => client,
            _ => panic!("sensor-1 does not connect"),
        };

    // The fleet CA and sensor-1 go, a self-signed device comes.
    let text = format!(
        "{HEAD}{}{}{}",
        authentication(&["cert-subject-cn"]),
        thumbprint_client("device-x", &[device.thumbprint()]),
        mqtts_listener("required")
    );
    pki.write("brokk.toml", &text);
    server
        .reload(&read_config(&path))
        .unwrap_or_else(|e| panic!("the new config does not reload: {e}"));
    assert_connects(&pki, addr, cert(&device), "device-x").await;
    assert_handshake_fails(&pki, addr, cert(&sensor1), "sensor-1-again").await;
    // The connection made under the old config carries on.
    established.round_trip("reload/established").await;
    established.disconnect().await;
}

/// Sends SIGHUP and waits until brokk's log has one more line containing `line`.
async fn sighup(brokk: &BrokkProcess, line: &str) {
    let before = brokk.stderr().matches(line).count();
    brokk.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while brokk.stderr().matches(line).count() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "brokk did not log {line:?} after SIGHUP\n--- stderr\n{}",
            brokk.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_to_the_binary_under_load_keeps_connections_and_refuses_a_broken_config() {
    let runtime = Runtime::from_env();
    let pki = Pki::new();
    let ids = reload_identities(&pki);
    let path = pki.write("brokk.toml", &reload_config(false));
    let mut brokk = BrokkProcess::spawn(runtime, ["--config".as_ref(), path.as_os_str()], 1).await;
    let addr = brokk.addr(ListenerKind::Mqtts);
    assert_refused(
        &pki,
        addr,
        cert(&ids["sensor-3"]),
        "sensor-3",
        ReasonCode::NotAuthorized,
    )
    .await;
    let load = Load::start(&pki, addr, &ids).await;

    pki.write("brokk.toml", &reload_config(true));
    sighup(&brokk, "SIGHUP: identity reloaded").await;
    assert_reloaded_policy(&pki, addr, &ids).await;
    load.keeps_flowing(30).await;

    pki.write("brokk.toml", "[[client]\nname = \"sensor-1\"\n");
    sighup(&brokk, "reload refused").await;
    let log = brokk.stderr();
    assert!(log.contains("invalid TOML"), "{log}");
    assert_reloaded_policy(&pki, addr, &ids).await;
    load.keeps_flowing(30).await;

    pki.write("brokk.toml", &config_with_missing_ca());
    sighup(&brokk, "reload refused").await;
    let log = brokk.stderr();
    assert!(log.contains("missing-ca.pem"), "{log}");
    assert_reloaded_policy(&pki, addr, &ids).await;
    load.keeps_flowing(30).await;

    let delivered = load.finish().await;
    assert!(delivered >= 300, "only {delivered} messages under load");
    brokk.signal(libc::SIGTERM);
    let status = brokk.wait(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "brokk exited with {status}\n{}",
        brokk.stderr()
    );
}
