//! A listener's certificate is read again on reload (SIGHUP): a renewed
//! certificate reaches new connections without a restart, connections already
//! open keep working, and a pair that does not load refuses the reload while the
//! old certificate stays in service.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use adapter_common::config::{Config, ListenerKind};
use brokk_e2e::server::{start, Runtime};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "reload test CA");
    let cert = p.self_signed(&key).expect("CA");
    Ca { cert, key }
}

/// Writes a server certificate for 127.0.0.1 with this common name, signed by
/// `ca`, as server.pem / server.key in `dir`.
fn write_server_cert(dir: &Path, ca: &Ca, cn: &str) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("signed");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
}

/// The common name of the certificate a new TLS connection is served.
fn served_cn(port: u16, ca: &Ca) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert.der().to_vec()))
        .expect("CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("TLS handshake");
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone();
    let _ = sock.flush();
    x509_cn(&leaf)
}

/// The subject CN of a DER certificate (rcgen writes it as a UTF8String or
/// PrintableString; found by its OID).
fn x509_cn(der: &[u8]) -> String {
    // OID 2.5.4.3 (commonName), then a string tag and a one-byte length.
    let oid = [0x06, 0x03, 0x55, 0x04, 0x03];
    let mut last = String::new();
    for i in 0..der.len().saturating_sub(oid.len() + 2) {
        if der[i..i + oid.len()] == oid {
            let len = usize::from(der[i + oid.len() + 1]);
            let start = i + oid.len() + 2;
            if let Some(bytes) = der.get(start..start + len) {
                last = String::from_utf8_lossy(bytes).into_owned();
            }
        }
    }
    last
}

fn config(dir: &Path) -> Config {
    let text = "persistence = \"memory\"\nallow_anonymous = true\n\
                [[listener]]\nkind = \"mqtts\"\nbind = \"127.0.0.1:0\"\n\
                cert = \"server.pem\"\nkey = \"server.key\"\n";
    let path = dir.join("brokk.toml");
    std::fs::write(&path, text).expect("write config");
    let config = Config::read(&path).expect("config");
    config.validate().expect("valid");
    config
}

#[test]
fn a_reload_serves_a_renewed_certificate_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    write_server_cert(dir.path(), &ca, "first");
    let config = config(dir.path());
    let server = start(Runtime::from_env(), config.clone());
    let port = server.port(ListenerKind::Mqtts);
    assert_eq!(served_cn(port, &ca), "first");

    // Renewed on disk: served after the reload, not before.
    write_server_cert(dir.path(), &ca, "second");
    assert_eq!(
        served_cn(port, &ca),
        "first",
        "nothing changes before the reload"
    );
    server
        .reload(&config)
        .expect("the reload takes the renewed pair");
    assert_eq!(served_cn(port, &ca), "second");

    // A key that does not match its certificate: the reload is refused and the
    // certificate in service stays.
    let other = KeyPair::generate().expect("key");
    std::fs::write(dir.path().join("server.key"), other.serialize_pem()).expect("write");
    let error = server
        .reload(&config)
        .expect_err("a mismatched pair is refused")
        .to_string();
    assert!(
        error.contains("server.pem") || error.contains("server.key"),
        "{error}"
    );
    assert_eq!(served_cn(port, &ca), "second");
}
