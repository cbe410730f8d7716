//! TLS server settings: a [`rustls::ServerConfig`] from the operator's PEM files, or
//! from a self-signed development CA that [`dev_tls`] creates in the data directory.
//!
//! Only TLS 1.2 and 1.3 are offered, with rustls' `ring` provider. No ALPN protocol is
//! configured, so clients that send ALPN (Event Grid documents `mqtt`) and clients
//! that do not are both accepted.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::atomic;

/// The crypto provider every config in brokk uses.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server side of TLS from a PEM certificate chain (leaf first) and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1).
///
/// `client_auth`: how client certificates are asked for and checked
/// ([`crate::identity::FleetCertVerifier`]); `None` asks for none.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(cert_path)?;
    let key = read_private_key(key_path)?;
    let rejected = |source| TlsError::Rejected {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rejected)?;
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(rejected)
}

/// A listener's certificate and key that a reload (SIGHUP) reads again from the
/// same files: a renewed certificate is served to new connections without a
/// restart; connections already open keep theirs.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableCert {
    /// Reads the pair (the key must match the certificate).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<ReloadableCert, TlsError> {
        Ok(ReloadableCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: std::sync::RwLock::new(Arc::new(certified_key(cert_path, key_path)?)),
        })
    }

    /// Reads the files again and serves them from now on; on an error the pair in
    /// use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = Arc::new(certified_key(&self.cert_path, &self.key_path)?);
        if let Ok(mut current) = self.current.write() {
            *current = key;
        }
        Ok(())
    }

    /// Reads the files again without serving them: a reload checks every
    /// listener's pair before it replaces any.
    pub fn check(&self) -> Result<(), TlsError> {
        certified_key(&self.cert_path, &self.key_path).map(|_| ())
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let certs = read_certs(cert_path)?;
    let key = read_private_key(key_path)?;
    rustls::sign::CertifiedKey::from_der(certs, key, &crypto_provider()).map_err(|source| {
        TlsError::Rejected {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            source,
        }
    })
}

/// The server side of TLS for a listener whose certificate a reload may replace
/// ([`ReloadableCert`]); otherwise as [`server_config`].
pub fn reloadable_server_config(
    cert_path: &Path,
    key_path: &Path,
    client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<(ServerConfig, Arc<ReloadableCert>), TlsError> {
    let resolver = Arc::new(ReloadableCert::load(cert_path, key_path)?);
    let rejected = |source| TlsError::Rejected {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rejected)?;
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    Ok((builder.with_cert_resolver(resolver.clone()), resolver))
}

/// Reads every certificate in a PEM file, in file order. Sections of other kinds
/// (a private key in the same file, say) are skipped.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_reader_iter(open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file: `PRIVATE KEY` (PKCS#8),
/// `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1). Sections of other kinds
/// (certificates in the same file, say) are skipped.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_reader(open(path)?) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(pem_error(path, e)),
    }
}

fn open(path: &Path) -> Result<File, TlsError> {
    File::open(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A read failure part-way through is a read error; anything else is the PEM's.
fn pem_error(path: &Path, error: pem::Error) -> TlsError {
    match error {
        pem::Error::Io(source) => TlsError::Read {
            path: path.to_path_buf(),
            source,
        },
        source => TlsError::BadPem {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// The development TLS material in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTls {
    /// The CA certificate clients must trust, e.g. `mosquitto_sub --cafile`.
    pub ca_cert: PathBuf,
    /// The server certificate for `localhost`, `127.0.0.1` and `::1`.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// Whether this call created the files (clients must trust the new CA) rather
    /// than reusing them.
    pub created: bool,
}

impl DevTls {
    /// The server config for the development certificate.
    pub fn server_config(
        &self,
        client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<ServerConfig, TlsError> {
        server_config(&self.server_cert, &self.server_key, client_auth)
    }
}

/// File names of the development material inside the data directory.
pub const DEV_CA_CERT: &str = "ca.pem";
/// See [`DEV_CA_CERT`].
pub const DEV_SERVER_CERT: &str = "server.pem";
/// See [`DEV_CA_CERT`].
pub const DEV_SERVER_KEY: &str = "server.key";

/// Creates a self-signed CA and a server certificate for `localhost`, `127.0.0.1` and
/// `::1` signed by it, as `ca.pem`, `server.pem` and `server.key` in `data_dir`; or
/// reuses them when all three are present, so clients that trust the CA keep working
/// across restarts.
///
/// The CA's private key is never written: nobody who reads the data directory can
/// mint certificates that clients trusting `ca.pem` would accept. The price is that
/// when any file is missing, all three are made anew and clients must fetch the new
/// `ca.pem`.
pub fn dev_tls(data_dir: &Path) -> Result<DevTls, TlsError> {
    let mut dev = DevTls {
        ca_cert: data_dir.join(DEV_CA_CERT),
        server_cert: data_dir.join(DEV_SERVER_CERT),
        server_key: data_dir.join(DEV_SERVER_KEY),
        created: false,
    };
    if dev.ca_cert.is_file() && dev.server_cert.is_file() && dev.server_key.is_file() {
        return Ok(dev);
    }
    std::fs::create_dir_all(data_dir).map_err(|source| TlsError::Write {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let generated = generate_dev_certificates()?;
    // The key goes first and the CA last, so an interrupted run leaves ca.pem missing
    // and the next start generates everything again instead of reusing a mismatch.
    for (path, contents, access) in [
        (
            &dev.server_key,
            &generated.server_key,
            atomic::Access::Owner,
        ),
        (
            &dev.server_cert,
            &generated.server_cert,
            atomic::Access::Public,
        ),
        (&dev.ca_cert, &generated.ca_cert, atomic::Access::Public),
    ] {
        atomic::write(path, contents.as_bytes(), access).map_err(|source| TlsError::Write {
            path: path.clone(),
            source,
        })?;
    }
    dev.created = true;
    Ok(dev)
}

struct GeneratedPems {
    ca_cert: String,
    server_cert: String,
    server_key: String,
}

fn generate_dev_certificates() -> Result<GeneratedPems, TlsError> {
    let generate = |source| TlsError::Generate { source };

    let ca_key = KeyPair::generate().map_err(generate)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "brokk development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(generate)?;

    let server_key = KeyPair::generate().map_err(generate)?;
    let mut server = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(generate)?;
    server.distinguished_name = DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, "brokk development server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .map_err(generate)?;

    Ok(GeneratedPems {
        ca_cert: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
    })
}

/// Everything that can go wrong setting up TLS, naming the file involved.
#[derive(Debug)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file has a malformed PEM section.
    BadPem {
        /// The file.
        path: PathBuf,
        /// The parser's explanation.
        source: pem::Error,
    },
    /// A certificate file holds no `CERTIFICATE` section.
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key section.
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the pair: the key does not match the certificate, or its type is
    /// unsupported.
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' explanation.
        source: rustls::Error,
    },
    /// The development certificates could not be generated.
    Generate {
        /// rcgen's explanation.
        source: rcgen::Error,
    },
    /// A development TLS file or its directory could not be written.
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => {
                write!(f, "{}: cannot read: {source}", path.display())
            }
            TlsError::BadPem { path, source } => {
                write!(f, "{}: invalid PEM: ", path.display())?;
                // The parser's own text shows these lines as lists of byte values.
                match source {
                    pem::Error::MissingSectionEnd { end_marker } => {
                        let label = String::from_utf8_lossy(end_marker);
                        write!(
                            f,
                            "no \"-----END {label}-----\" line after \"-----BEGIN {label}-----\""
                        )
                    }
                    pem::Error::IllegalSectionStart { line } => write!(
                        f,
                        "malformed section start {:?}",
                        String::from_utf8_lossy(line).trim_end()
                    ),
                    other => write!(f, "{other}"),
                }
            }
            TlsError::NoCertificate { path } => write!(
                f,
                "{}: expected a PEM file with at least one \"-----BEGIN CERTIFICATE-----\" section",
                path.display()
            ),
            TlsError::NoPrivateKey { path } => write!(
                f,
                "{}: expected a PEM file with a private key (\"-----BEGIN PRIVATE KEY-----\", \
                 \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")",
                path.display()
            ),
            TlsError::Rejected { cert, key, source } => write!(
                f,
                "{} with {}: cannot serve TLS with this certificate and key: {source}",
                cert.display(),
                key.display()
            ),
            TlsError::Generate { source } => {
                write!(f, "cannot generate the development certificates: {source}")
            }
            TlsError::Write { path, source } => {
                write!(f, "{}: cannot write: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } | TlsError::Write { source, .. } => Some(source),
            TlsError::BadPem { source, .. } => Some(source),
            TlsError::Rejected { source, .. } => Some(source),
            TlsError::Generate { source } => Some(source),
            TlsError::NoCertificate { .. } | TlsError::NoPrivateKey { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
    use std::io::{Read, Write};

    /// Shuttles TLS records between the two sides until neither has anything to
    /// say, the in-memory stand-in for a socket pair.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client
                    .write_tls(&mut buf)
                    .expect("test setup: a failure here is the test failing");
            }
            let to_server = !buf.is_empty();
            let mut slice = &buf[..];
            while !slice.is_empty() {
                server
                    .read_tls(&mut slice)
                    .expect("test setup: a failure here is the test failing");
            }
            server.process_new_packets()?;

            let mut buf = Vec::new();
            while server.wants_write() {
                server
                    .write_tls(&mut buf)
                    .expect("test setup: a failure here is the test failing");
            }
            let to_client = !buf.is_empty();
            let mut slice = &buf[..];
            while !slice.is_empty() {
                client
                    .read_tls(&mut slice)
                    .expect("test setup: a failure here is the test failing");
            }
            client.process_new_packets()?;

            if !to_server && !to_client {
                break;
            }
        }
        Ok(())
    }

    fn client_trusting(ca: &Path) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca).expect("test setup: a failure here is the test failing") {
            roots
                .add(cert)
                .expect("test setup: a failure here is the test failing");
        }
        Arc::new(
            ClientConfig::builder_with_provider(crypto_provider())
                .with_safe_default_protocol_versions()
                .expect("test setup: a failure here is the test failing")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    #[test]
    fn client_trusting_only_the_dev_ca_connects_by_name_and_by_ip() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let dev = dev_tls(dir.path()).expect("test setup: a failure here is the test failing");
        assert!(dev.created);
        assert_eq!(dev.ca_cert, dir.path().join("ca.pem"));
        let server_config = Arc::new(
            dev.server_config(None)
                .expect("test setup: a failure here is the test failing"),
        );
        let client_config = client_trusting(&dev.ca_cert);

        for name in ["localhost", "127.0.0.1", "::1"] {
            let server_name = ServerName::try_from(name)
                .expect("test setup: a failure here is the test failing")
                .to_owned();
            let mut client = ClientConnection::new(client_config.clone(), server_name)
                .expect("test setup: a failure here is the test failing");
            let mut server = ServerConnection::new(server_config.clone())
                .expect("test setup: a failure here is the test failing");
            handshake(&mut client, &mut server)
                .expect("test setup: a failure here is the test failing");
            assert!(
                !client.is_handshaking() && !server.is_handshaking(),
                "{name}"
            );

            // Application data flows once the handshake is done.
            client
                .writer()
                .write_all(b"\x10\x00")
                .expect("test setup: a failure here is the test failing");
            handshake(&mut client, &mut server)
                .expect("test setup: a failure here is the test failing");
            let mut got = [0u8; 2];
            server
                .reader()
                .read_exact(&mut got)
                .expect("test setup: a failure here is the test failing");
            assert_eq!(&got, b"\x10\x00");
        }
    }

    #[test]
    fn dev_certificate_is_refused_for_other_names() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let dev = dev_tls(dir.path()).expect("test setup: a failure here is the test failing");
        let server_name = ServerName::try_from("broker.example.com")
            .expect("test setup: a failure here is the test failing");
        let mut client = ClientConnection::new(client_trusting(&dev.ca_cert), server_name)
            .expect("test setup: a failure here is the test failing");
        let mut server = ServerConnection::new(Arc::new(
            dev.server_config(None)
                .expect("test setup: a failure here is the test failing"),
        ))
        .expect("test setup: a failure here is the test failing");
        assert!(handshake(&mut client, &mut server).is_err());
    }

    #[test]
    fn dev_tls_reuses_existing_files_and_keeps_the_ca_key_off_disk() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let first = dev_tls(dir.path()).expect("test setup: a failure here is the test failing");
        let ca =
            std::fs::read(&first.ca_cert).expect("test setup: a failure here is the test failing");
        let second = dev_tls(dir.path()).expect("test setup: a failure here is the test failing");
        assert!(!second.created);
        assert_eq!(
            std::fs::read(&second.ca_cert).expect("test setup: a failure here is the test failing"),
            ca
        );

        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("test setup: a failure here is the test failing")
            .map(|e| {
                e.expect("test setup: a failure here is the test failing")
                    .file_name()
                    .into_string()
                    .expect("test setup: a failure here is the test failing")
            })
            .collect();
        names.sort();
        assert_eq!(names, ["ca.pem", "server.key", "server.pem"]);

        // A missing server key means a fresh set, so no mismatched pair is served.
        std::fs::remove_file(&first.server_key)
            .expect("test setup: a failure here is the test failing");
        let third = dev_tls(dir.path()).expect("test setup: a failure here is the test failing");
        assert!(third.created);
        assert_ne!(
            std::fs::read(&third.ca_cert).expect("test setup: a failure here is the test failing"),
            ca
        );
        third
            .server_config(None)
            .expect("test setup: a failure here is the test failing");
    }

    /// Malformed PEM (a section without its end line, a body that is not base64) is
    /// reported as such, naming the file, rather than read as "no certificate".
    #[test]
    fn malformed_pem_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        for (name, text, fault) in [
            (
                "unterminated.pem",
                "-----BEGIN CERTIFICATE-----\nMIIB\n",
                "no \"-----END CERTIFICATE-----\" line after \"-----BEGIN CERTIFICATE-----\"",
            ),
            (
                "bad-start.pem",
                "-----BEGIN CERTIFICATE--\nMIIB\n-----END CERTIFICATE-----\n",
                "malformed section start \"-----BEGIN CERTIFICATE--\"",
            ),
            (
                "not-base64.pem",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "base64",
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("test setup: a failure here is the test failing");
            for e in [
                read_certs(&path).unwrap_err(),
                read_private_key(&path).unwrap_err(),
            ] {
                assert!(matches!(e, TlsError::BadPem { .. }), "{name}: {e:?}");
                let message = e.to_string();
                assert!(
                    message.starts_with(&format!("{}: invalid PEM: ", path.display())),
                    "{message}"
                );
                assert!(message.contains(fault), "{message}");
            }
        }
    }

    /// One file holding the chain and the key (as some tools write them): the
    /// certificates come back in file order and the key is found after them.
    #[test]
    fn chain_and_key_in_one_file_are_read_in_order() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let dev = dev_tls(dir.path()).expect("test setup: a failure here is the test failing");
        let read = |p: &Path| {
            std::fs::read_to_string(p).expect("test setup: a failure here is the test failing")
        };
        let combined = dir.path().join("combined.pem");
        std::fs::write(
            &combined,
            format!(
                "leading text is ignored\n{}{}{}",
                read(&dev.server_cert),
                read(&dev.ca_cert),
                read(&dev.server_key)
            ),
        )
        .expect("test setup: a failure here is the test failing");

        let server =
            read_certs(&dev.server_cert).expect("test setup: a failure here is the test failing");
        let ca = read_certs(&dev.ca_cert).expect("test setup: a failure here is the test failing");
        assert_eq!(server.len(), 1);
        assert_eq!(ca.len(), 1);
        assert_ne!(server, ca);
        let chain = read_certs(&combined).expect("the combined file's certificates");
        assert_eq!(chain, [server[0].clone(), ca[0].clone()]);

        let key = read_private_key(&combined).expect("the combined file's key");
        assert_eq!(
            key.secret_der(),
            read_private_key(&dev.server_key)
                .expect("test setup: a failure here is the test failing")
                .secret_der()
        );
        server_config(&combined, &combined, None).expect("the pair in one file is served");
    }

    /// All three private key encodings are recognised by their PEM label, and the
    /// first key in the file is the one taken.
    #[test]
    fn private_key_kinds_are_recognised_by_label() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let body = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
        for (label, der) in [
            ("PRIVATE KEY", [0x30, 0x01, 0x08]),
            ("RSA PRIVATE KEY", [0x30, 0x01, 0x01]),
            ("EC PRIVATE KEY", [0x30, 0x01, 0x0e]),
        ] {
            let path = dir.path().join("key.pem");
            std::fs::write(
                &path,
                format!(
                    "-----BEGIN {label}-----\n{}\n-----END {label}-----\n\
                     -----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                    body(&der),
                    body(&[0x30, 0x01, 0xff]),
                ),
            )
            .expect("test setup: a failure here is the test failing");
            let key = read_private_key(&path).expect("a key section");
            let kind_ok = match &key {
                PrivateKeyDer::Pkcs8(_) => label == "PRIVATE KEY",
                PrivateKeyDer::Pkcs1(_) => label == "RSA PRIVATE KEY",
                PrivateKeyDer::Sec1(_) => label == "EC PRIVATE KEY",
                _ => false,
            };
            assert!(kind_ok, "{label}: {key:?}");
            assert_eq!(key.secret_der(), der, "{label}");
        }
    }

    /// The development key is written readable by its owner only, the certificates
    /// readable by all (each less the umask), with the PEM that was generated.
    #[cfg(unix)]
    #[test]
    fn dev_tls_key_is_private_and_certificates_public() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let dev = dev_tls(dir.path()).expect("test setup: a failure here is the test failing");
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .expect("test setup: a failure here is the test failing")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&dev.server_key), 0o600, "server.key");
        for cert in [&dev.ca_cert, &dev.server_cert] {
            // 0644 less a umask: never writable by others, readable by the owner.
            let m = mode(cert);
            assert_eq!(m & !0o644, 0, "{}: {m:o}", cert.display());
            assert_eq!(m & 0o600, 0o600, "{}: {m:o}", cert.display());
        }
        let key = std::fs::read_to_string(&dev.server_key)
            .expect("test setup: a failure here is the test failing");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        for cert in [&dev.ca_cert, &dev.server_cert] {
            let text = std::fs::read_to_string(cert)
                .expect("test setup: a failure here is the test failing");
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &missing, None).unwrap_err();
        assert!(e
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display())));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n")
            .expect("test setup: a failure here is the test failing");
        let e = server_config(&empty, &empty, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: expected a PEM file with at least one \"-----BEGIN CERTIFICATE-----\" section",
                empty.display()
            )
        );

        let dev = dev_tls(dir.path()).expect("test setup: a failure here is the test failing");
        let e = server_config(&dev.server_cert, &dev.server_cert, None).unwrap_err();
        assert!(matches!(e, TlsError::NoPrivateKey { .. }), "{e}");

        // The CA certificate does not belong to the server key.
        let e = server_config(&dev.ca_cert, &dev.server_key, None).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "{} with {}: cannot serve TLS",
                dev.ca_cert.display(),
                dev.server_key.display()
            )),
            "{e}"
        );
    }
}
