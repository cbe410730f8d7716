//! `[cluster]`: this broker as one node of several, joined by NATS with
//! JetStream (the transport is `brokk-cluster`).
//!
//! ```toml
//! [cluster]
//! node_id = "brokk-1"                       # unique in the cluster
//! nats = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
//! replicas = 3                              # JetStream copies of the buckets
//! # prefix = "brokk"                        # subjects and bucket names
//! # user = "brokk"  password = "..."        # or token = "...", or credentials_file = "brokk.creds"
//! # tls_ca = "nats-ca.pem"  tls_required = true
//! # connect_timeout_secs = 10
//! ```
//!
//! Without the table (and without `--cluster-node`), the broker has no NATS
//! dependency at run time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::identity::IdentityConfigError;

/// The `[cluster]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterFile {
    node_id: String,
    #[serde(default)]
    nats: Vec<String>,
    prefix: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    credentials_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    #[serde(default)]
    tls_required: bool,
    replicas: Option<usize>,
    connect_timeout_secs: Option<u64>,
}

/// The NATS server a node uses when none is named.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

impl ClusterFile {
    /// Checks the table of `file` (relative paths against `resolve`); an error
    /// names the file, the key and what was expected.
    pub(crate) fn into_settings(
        self,
        file: &Path,
        resolve: &dyn Fn(PathBuf) -> PathBuf,
    ) -> Result<brokk_cluster::Settings, IdentityConfigError> {
        let error = |key: &str, problem: String| IdentityConfigError {
            file: file.to_path_buf(),
            key: format!("cluster.{key}"),
            problem,
        };
        check_node_id(&self.node_id).map_err(|p| error("node_id", p))?;
        let nats = if self.nats.is_empty() {
            vec![DEFAULT_NATS.to_owned()]
        } else {
            self.nats
        };
        for (i, url) in nats.iter().enumerate() {
            check_nats_url(url).map_err(|p| error(&format!("nats[{i}]"), p))?;
        }
        let mut settings = brokk_cluster::Settings::new(&self.node_id, nats);
        if let Some(prefix) = self.prefix {
            brokk_cluster::SubjectMap::new(&prefix).map_err(|p| error("prefix", p))?;
            settings.prefix = prefix;
        }
        settings.user = match (self.user, self.password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(error("password", "expected with cluster.user".into()));
            }
            (None, Some(_)) => {
                return Err(error("user", "expected with cluster.password".into()));
            }
        };
        settings.token = self.token;
        settings.credentials_file = self.credentials_file.map(resolve);
        settings.tls_ca = self.tls_ca.map(resolve);
        settings.tls_required = self.tls_required;
        if let Some(r) = self.replicas {
            if !(1..=5).contains(&r) {
                return Err(error(
                    "replicas",
                    format!("expected 1 to 5 (JetStream's limit), got {r}"),
                ));
            }
            settings.replicas = r;
        }
        if let Some(s) = self.connect_timeout_secs {
            if s == 0 {
                return Err(error("connect_timeout_secs", "expected at least 1".into()));
            }
            settings.connect_timeout = Duration::from_secs(s);
        }
        Ok(settings)
    }
}

/// A node name: 1 to 64 of `A-Z a-z 0-9 - _` (it is a header value and part of
/// log lines).
pub fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "expected 1 to 64 letters, digits, '-' or '_', got {id:?}"
        ));
    }
    Ok(())
}

/// A NATS server address: `nats://`, `tls://`, `ws://` or `wss://` and a host.
pub fn check_nats_url(url: &str) -> Result<(), String> {
    let ok = ["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
    if !ok {
        return Err(format!(
            "expected a NATS server URL such as nats://127.0.0.1:4222, got {url:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<brokk_cluster::Settings, String> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| e.to_string())?;
        file.into_settings(Path::new("brokk.toml"), &|p| Path::new("/etc").join(p))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn settings_and_their_errors_name_the_key() {
        let s = parse(
            r#"node_id = "n-1"
               nats = ["nats://a:4222", "tls://b:4222"]
               replicas = 3
               user = "u"
               password = "p"
               credentials_file = "x.creds""#,
        )
        .expect("valid");
        assert_eq!(s.node_id, "n-1");
        assert_eq!(s.servers, ["nats://a:4222", "tls://b:4222"]);
        assert_eq!(s.replicas, 3);
        assert_eq!(s.user, Some(("u".into(), "p".into())));
        assert_eq!(s.credentials_file, Some(PathBuf::from("/etc/x.creds")));
        assert_eq!(
            parse(r#"node_id = "n""#).expect("valid").servers,
            [DEFAULT_NATS]
        );
        for (text, key) in [
            (r#"node_id = "a b""#, "cluster.node_id"),
            (r#"node_id = """#, "cluster.node_id"),
            (
                r#"node_id = "n"
                nats = ["127.0.0.1:4222"]"#,
                "cluster.nats[0]",
            ),
            (
                r#"node_id = "n"
                replicas = 0"#,
                "cluster.replicas",
            ),
            (
                r#"node_id = "n"
                user = "u""#,
                "cluster.password",
            ),
            (
                r#"node_id = "n"
                prefix = "$bad""#,
                "cluster.prefix",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains("brokk.toml") && e.contains(key), "{text}: {e}");
        }
        let unknown = parse("node_id = \"n\"\nnat = []").expect_err("unknown key");
        assert!(unknown.contains("nat"), "{unknown}");
    }
}
