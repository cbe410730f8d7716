//! The `brokk` command line, shared by every adapter's binary:
//!
//! ```text
//! brokk [--config FILE] [--listen URL]... [--dev-tls] [--data-dir DIR] [--allow-anonymous]
//!       [--log-format text|json]
//! brokk passwd FILE USERNAME [--password PASSWORD] [--scheme argon2id|pbkdf2-sha512]
//! ```
//!
//! Flags override the config file; `--listen` replaces the file's listeners (or the
//! defaults) as a whole, so what the operator typed is exactly what listens.

use std::io::BufRead;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_bind, Config, ConfigError, Listener, ListenerKind, Origin};
use crate::passwd::{HashScheme, PasswdError, PasswordFile, SetPassword};

/// The parsed command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "brokk",
    version,
    about = "A self-hostable MQTT 3.1, 3.1.1 and 5.0 broker",
    long_about = "A self-hostable MQTT 3.1, 3.1.1 and 5.0 broker.\n\n\
        With no options it accepts MQTT on 127.0.0.1:1883 and MQTT over WebSocket on \
        127.0.0.1:8083, without passwords, reachable from this machine only.\n\n\
        Logs go to standard error. RUST_LOG filters them (default: info), e.g. \
        RUST_LOG=debug or RUST_LOG=warn,adapter_common=info; --log-format chooses \
        text or JSON lines.",
    after_help = "Examples:\n  \
        brokk\n  \
        brokk --listen mqtts://127.0.0.1:8883 --dev-tls\n  \
        brokk --config /etc/brokk/brokk.toml --log-format json\n  \
        brokk passwd /etc/brokk/passwords alice",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Options for running the broker.
    #[command(flatten)]
    pub run: RunArgs,
    /// A maintenance command instead of running the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options for running the broker.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Read settings from this TOML file (see brokk.example.toml); the flags below
    /// override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Accept connections at URL instead of the configured listeners; repeat for
    /// several. 127.0.0.1:1884 or mqtt://HOST:PORT is plain MQTT, mqtts://HOST:PORT
    /// MQTT over TLS, ws://HOST:PORT[/PATH] and wss://HOST:PORT[/PATH] MQTT over
    /// WebSocket (without PATH any path is accepted). HOST is an IP address or
    /// localhost; `[::]` for IPv6
    #[arg(long = "listen", value_name = "URL")]
    pub listen: Vec<ListenUrl>,

    /// For development on this machine: serve TLS listeners that have no cert and
    /// key with a self-signed certificate for localhost, 127.0.0.1 and ::1, created
    /// in the data directory (clients trust its ca.pem). In production give each TLS
    /// listener a cert and key in the config file
    #[arg(long)]
    pub dev_tls: bool,

    /// Keep the development certificates and broker state in DIR, relative to the
    /// current directory [default: the config file's data_dir, else ./brokk-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Keep sessions, subscriptions, queued and retained messages in memory only
    /// (lost when the broker stops), instead of in the data directory
    #[arg(long)]
    pub in_memory: bool,

    /// If the store file is damaged, move it aside, start with what can be read of
    /// it and say what was dropped (without this flag the broker refuses to start)
    #[arg(long)]
    pub recover: bool,

    /// Accept clients without a username and password even on listeners other
    /// machines can reach: anyone who reaches the port may then publish and
    /// subscribe. Without it (or allow_anonymous = true in the config file) they
    /// are accepted only while every listener is loopback and no password file is set
    #[arg(long)]
    pub allow_anonymous: bool,

    /// How log lines are written to standard error: text for people, json for log
    /// shippers (one JSON object per line)
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        env = "BROKK_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    /// Run as node ID of a cluster over NATS with JetStream (as [cluster]
    /// node_id in the config file); with --nats, or nats://127.0.0.1:4222
    #[arg(long = "cluster-node", value_name = "ID")]
    pub cluster_node: Option<String>,

    /// A NATS server of the cluster (nats://HOST:PORT); repeat for several.
    /// Replaces [cluster] nats
    #[arg(long = "nats", value_name = "URL", requires = "cluster_node")]
    pub nats: Vec<String>,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL target: message key=value ...`, for people.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, and the event's fields
    /// (its message among them) under "fields".
    Json,
}

/// Maintenance commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Add a user to a password file, or change the password of an existing one. The
    /// password is read from the first line of standard input unless --password is
    /// given.
    Passwd(PasswdArgs),
    /// Authorization tools: `brokk authz explain` says whether a client may publish
    /// to a topic or subscribe to a filter under a config's permission bindings, and
    /// which group, binding and template decided it, without starting a broker
    #[command(subcommand)]
    Authz(AuthzCommand),
}

/// `brokk authz` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AuthzCommand {
    /// Explain one decision. Exits 0 when allowed, 1 when denied, 2 when the config
    /// cannot be read
    Explain(ExplainArgs),
}

/// Arguments of `brokk authz explain`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The config file with the [[client]], [[client_group]], [[topic_space]] and
    /// [[permission_binding]] tables
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,

    /// The client's authentication name; a registered [[client]] brings its
    /// attributes
    #[arg(long, value_name = "NAME")]
    pub client: String,

    /// An attribute the client has (or has instead of its registered one), as
    /// KEY=VALUE: an integer when VALUE is one, a list of strings as [a,b], else a
    /// string. Repeat for several
    #[arg(long = "attribute", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,

    /// The topic to publish to, or the filter to subscribe to
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,

    /// publish or subscribe
    #[arg(long, value_enum)]
    pub action: Action,
}

/// What `brokk authz explain` asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Publishing to the topic.
    Publish,
    /// Subscribing to the filter.
    Subscribe,
}

/// Runs `brokk authz explain`: whether it is allowed, and the explanation to
/// print.
pub fn run_explain(args: &ExplainArgs) -> Result<(bool, String), String> {
    use broker_state::authz::{Mode, Permission};
    use broker_state::{AttributeValue, Attributes};
    let config = Config::read(&args.config).map_err(|e| e.to_string())?;
    let policy = config.authorization.build().map_err(|e| e.to_string())?;
    let registered = config
        .identity
        .clients
        .iter()
        .find(|c| c.authentication_name.eq_ignore_ascii_case(&args.client));
    let mut attributes: Attributes = registered.map(|c| c.attributes.clone()).unwrap_or_default();
    let mut out = String::new();
    match registered {
        Some(c) => out.push_str(&format!(
            "client {:?} is the registered [[client]] {:?}{}\n",
            args.client,
            c.name,
            if c.enabled { "" } else { " (disabled: it cannot connect)" }
        )),
        None => out.push_str(&format!(
            "client {:?} is not registered: only the attributes given here (a token or the webhook may give it others)\n",
            args.client
        )),
    }
    for a in &args.attributes {
        let (key, value) = a
            .split_once('=')
            .ok_or_else(|| format!("--attribute {a:?}: expected KEY=VALUE"))?;
        let value = if let Ok(i) = value.parse::<i64>() {
            AttributeValue::Integer(i)
        } else if let Some(list) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            AttributeValue::StringList(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        } else {
            AttributeValue::String(value.to_owned())
        };
        attributes.insert(key.to_owned(), value);
    }
    if policy.mode == Mode::Open {
        out.push_str("allow\n  authorization mode is \"open\": every client may publish and subscribe to everything\n");
        return Ok((true, out));
    }
    let permission = match args.action {
        Action::Publish => Permission::Publisher,
        Action::Subscribe => Permission::Subscriber,
    };
    let attrs = (!attributes.is_empty()).then_some(&attributes);
    // A registered client is who the broker authorizes, named as registered.
    let name = registered.map_or(args.client.as_str(), |c| c.authentication_name.as_str());
    let explanation = policy.explain(Some(name), attrs, &args.topic, permission);
    out.push_str(&explanation.to_string());
    out.push('\n');
    Ok((explanation.allowed, out))
}

/// Arguments of `brokk passwd`.
#[derive(Debug, Clone, Args)]
pub struct PasswdArgs {
    /// The password file; created if it does not exist
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The user to add or update
    #[arg(value_name = "USERNAME")]
    pub username: String,

    /// The password (visible to other users of this machine in the process list;
    /// prefer standard input)
    #[arg(long, value_name = "PASSWORD")]
    pub password: Option<String>,

    /// How to hash the password. pbkdf2-sha512 writes Mosquitto's own $7$ form, for
    /// a file that Mosquitto reads too. Other users' lines keep their format
    #[arg(long, value_enum, value_name = "SCHEME", default_value_t = HashScheme::Argon2id)]
    pub scheme: HashScheme,
}

/// A `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenUrl {
    /// The transport, from the scheme (`mqtt` when there is none).
    pub kind: ListenerKind,
    /// Address and port.
    pub bind: std::net::SocketAddr,
    /// The only WebSocket path served, if given.
    pub path: Option<String>,
    /// The text as typed, for error messages.
    pub text: String,
}

impl ListenUrl {
    /// The listener this URL declares.
    pub fn to_listener(&self) -> Listener {
        let mut listener = Listener::new(
            self.kind,
            self.bind,
            Origin::Flag {
                flag: "--listen",
                value: self.text.clone(),
            },
        );
        listener.path = self.path.clone();
        listener
    }
}

impl FromStr for ListenUrl {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ConfigError::BadListenUrl {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, rest) = match text.split_once("://") {
            Some((scheme, rest)) => match ListenerKind::from_name(scheme) {
                Some(kind) => (kind, rest),
                None => {
                    return Err(bad(&format!(
                        "expected the scheme mqtt://, mqtts://, ws://, wss://, http:// or https://, found {scheme:?}"
                    )))
                }
            },
            None => (ListenerKind::Mqtt, text),
        };
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        if path.is_some() && !kind.is_websocket() {
            return Err(bad("a path only applies to ws:// and wss://"));
        }
        let bind = parse_bind(host_port).ok_or_else(|| {
            bad(&format!(
                "expected HOST:PORT with an IP address or localhost, such as 0.0.0.0:1883 or \
                 [::1]:1883, found {host_port:?}"
            ))
        })?;
        Ok(ListenUrl {
            kind,
            bind,
            path: path.map(str::to_owned),
            text: text.to_owned(),
        })
    }
}

/// Reads the `--config` file, if any, and applies the flags: the final, validated
/// config the broker runs with.
pub fn load_config(args: &RunArgs) -> Result<Config, ConfigError> {
    let file = args.config.as_deref().map(Config::read).transpose()?;
    build_config(args, file)
}

/// Applies the flags to a parsed config file (or the defaults, without one) and
/// validates the result.
pub fn build_config(args: &RunArgs, file: Option<Config>) -> Result<Config, ConfigError> {
    let mut config = file.unwrap_or_default();
    if !args.listen.is_empty() {
        config.listeners = args.listen.iter().map(ListenUrl::to_listener).collect();
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if args.allow_anonymous {
        config.allow_anonymous = Some(true);
    }
    if args.in_memory {
        config.persistence = crate::config::Persistence::Memory;
    }
    config.recover |= args.recover;
    if args.dev_tls {
        config.enable_dev_tls();
    }
    if let Some(node) = &args.cluster_node {
        let bad = |key: &str, problem: String| {
            ConfigError::Identity(crate::identity::IdentityConfigError {
                file: PathBuf::from("the command line"),
                key: key.to_owned(),
                problem,
            })
        };
        crate::cluster::check_node_id(node).map_err(|p| bad("--cluster-node", p))?;
        let mut settings = config
            .cluster
            .take()
            .unwrap_or_else(|| brokk_cluster::Settings::new(node, Vec::new()));
        settings.node_id = node.clone();
        if !args.nats.is_empty() {
            settings.servers = args.nats.clone();
        }
        if settings.servers.is_empty() {
            settings.servers = vec![crate::cluster::DEFAULT_NATS.to_owned()];
        }
        for url in &settings.servers {
            crate::cluster::check_nats_url(url).map_err(|p| bad("--nats", p))?;
        }
        config.cluster = Some(settings);
    }
    config.validate()?;
    Ok(config)
}

/// Runs `brokk passwd`: takes the password from `--password` or the first line of
/// `stdin`, then adds or updates the user, hashed with `--scheme`, and rewrites the
/// file atomically.
pub fn run_passwd(args: &PasswdArgs, stdin: &mut dyn BufRead) -> Result<SetPassword, PasswdError> {
    let password = match &args.password {
        Some(password) => password.clone(),
        None => {
            let mut line = String::new();
            stdin
                .read_line(&mut line)
                .map_err(|source| PasswdError::ReadPassword { source })?;
            let trimmed = line.strip_suffix('\n').unwrap_or(&line);
            trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
        }
    };
    let mut file = PasswordFile::load_or_new(&args.file)?;
    let outcome = file.set_password_with(&args.username, password.as_bytes(), args.scheme)?;
    file.write(&args.file)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsSource;
    use clap::CommandFactory;
    use std::path::Path;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("brokk").chain(args.iter().copied()))
    }

    fn config(args: &[&str]) -> Result<Config, String> {
        let cli = parse(args).map_err(|e| e.to_string())?;
        build_config(&cli.run, None).map_err(|e| e.to_string())
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_every_flag_and_the_passwd_command() {
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "--config <FILE>",
            "Read settings from this TOML file",
            "--listen <URL>",
            "mqtts://HOST:PORT",
            "--dev-tls",
            "self-signed certificate",
            "--data-dir <DIR>",
            "--allow-anonymous",
            "Accept clients without a username and password",
            "--log-format <FORMAT>",
            "json",
            "[default: text]",
            "BROKK_LOG_FORMAT",
            "RUST_LOG",
            "(default: info)",
            "passwd",
            "127.0.0.1:1883",
        ] {
            assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
        }
        // Anonymous access and a self-signed certificate belong on this machine:
        // no example puts them on an address others can reach.
        for line in help
            .lines()
            .filter(|l| l.trim_start().starts_with("brokk "))
        {
            assert!(
                !(line.contains("0.0.0.0") || line.contains("[::]"))
                    || !(line.contains("--dev-tls") || line.contains("--allow-anonymous")),
                "{line:?} in:\n{help}"
            );
        }
        let passwd_help = Cli::command()
            .find_subcommand_mut("passwd")
            .expect("test setup: a failure here is the test failing")
            .render_long_help()
            .to_string();
        for needle in [
            "<FILE>",
            "<USERNAME>",
            "--password <PASSWORD>",
            "standard input",
            "--scheme <SCHEME>",
            "argon2id",
            "pbkdf2-sha512",
            "[default: argon2id]",
        ] {
            assert!(
                passwd_help.contains(needle),
                "{needle:?} missing from:\n{passwd_help}"
            );
        }
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked_for() {
        let format = |args: &[&str]| {
            parse(args)
                .map(|cli| cli.run.log_format)
                .map_err(|e| e.to_string())
        };
        assert_eq!(format(&[]), Ok(LogFormat::Text));
        assert_eq!(format(&["--log-format", "json"]), Ok(LogFormat::Json));
        assert_eq!(format(&["--log-format", "text"]), Ok(LogFormat::Text));
        let e = format(&["--log-format", "xml"]).unwrap_err();
        assert!(
            e.contains("xml") && e.contains("text") && e.contains("json"),
            "{e}"
        );
    }

    #[test]
    fn no_flags_gives_the_loopback_defaults() {
        assert_eq!(
            config(&[]).expect("test setup: a failure here is the test failing"),
            Config::default()
        );
    }

    #[test]
    fn listen_urls_replace_the_defaults() {
        let config = config(&[
            "--listen",
            "127.0.0.1:1884",
            "--listen",
            "ws://[::1]:8080/mqtt",
            "--listen",
            "mqtt://localhost:1885",
        ])
        .expect("test setup: a failure here is the test failing");
        let got: Vec<_> = config
            .listeners
            .iter()
            .map(|l| (l.kind, l.bind.to_string(), l.path.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (ListenerKind::Mqtt, "127.0.0.1:1884".to_owned(), None),
                (ListenerKind::Ws, "[::1]:8080".to_owned(), Some("/mqtt")),
                (ListenerKind::Mqtt, "127.0.0.1:1885".to_owned(), None),
            ]
        );
    }

    #[test]
    fn bad_listen_urls_are_refused_by_the_parser() {
        for (url, reason) in [
            (
                "tcp://127.0.0.1:1883",
                "expected the scheme mqtt://, mqtts://, ws://, wss://, http:// or https://, found \"tcp\"",
            ),
            (
                "mqtt://127.0.0.1:1883/mqtt",
                "a path only applies to ws:// and wss://",
            ),
            ("mqtt://example.com:1883", "expected HOST:PORT"),
            ("ws://127.0.0.1", "expected HOST:PORT"),
        ] {
            let e = parse(&["--listen", url]).unwrap_err().to_string();
            assert!(e.contains(reason), "{url}: {e}");
        }
    }

    #[test]
    fn tls_listener_from_the_command_line_needs_dev_tls() {
        let e = config(&["--listen", "mqtts://127.0.0.1:8883"]).unwrap_err();
        assert!(
            e.starts_with("--listen mqtts://127.0.0.1:8883: this mqtts listener needs a certificate: pass --dev-tls"),
            "{e}"
        );
        let config = config(&["--listen", "mqtts://127.0.0.1:8883", "--dev-tls"])
            .expect("test setup: a failure here is the test failing");
        assert_eq!(config.listeners[0].tls, Some(TlsSource::Dev));
        assert!(config.dev_tls);
    }

    #[test]
    fn public_listeners_from_the_command_line_follow_the_same_rules() {
        let e = config(&["--listen", "mqtt://0.0.0.0:1883", "--allow-anonymous"]).unwrap_err();
        assert!(
            e.starts_with("--listen mqtt://0.0.0.0:1883: 0.0.0.0:1883 is reachable"),
            "{e}"
        );
        assert!(e.contains("declare the listener in a config file"), "{e}");

        let e = config(&["--listen", "mqtts://0.0.0.0:8883", "--dev-tls"]).unwrap_err();
        assert!(e.contains("no password file is set"), "{e}");
        let ok = config(&[
            "--listen",
            "mqtts://0.0.0.0:8883",
            "--dev-tls",
            "--allow-anonymous",
        ])
        .expect("test setup: a failure here is the test failing");
        assert!(ok.anonymous_allowed());
    }

    #[test]
    fn flags_override_the_file() {
        let file = Config::parse(
            Path::new("/etc/brokk/brokk.toml"),
            "data_dir = \"data\"\npassword_file = \"pw\"\n\
             [[listener]]\nkind = \"wss\"\nbind = \"0.0.0.0:443\"\n",
        )
        .expect("test setup: a failure here is the test failing");
        let cli = parse(&["--dev-tls", "--data-dir", "/var/lib/brokk"])
            .expect("test setup: a failure here is the test failing");
        let config = build_config(&cli.run, Some(file.clone()))
            .expect("test setup: a failure here is the test failing");
        assert_eq!(config.data_dir, Path::new("/var/lib/brokk"));
        assert_eq!(config.listeners[0].tls, Some(TlsSource::Dev));
        assert!(!config.anonymous_allowed());

        let cli = parse(&["--listen", "127.0.0.1:1884"])
            .expect("test setup: a failure here is the test failing");
        let config = build_config(&cli.run, Some(file))
            .expect("test setup: a failure here is the test failing");
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].bind.to_string(), "127.0.0.1:1884");
        assert_eq!(
            config.password_file.as_deref(),
            Some(Path::new("/etc/brokk/pw"))
        );
    }

    #[test]
    fn load_config_names_a_missing_file() {
        let cli = parse(&["--config", "/nonexistent/brokk.toml"])
            .expect("test setup: a failure here is the test failing");
        let e = load_config(&cli.run).unwrap_err().to_string();
        assert!(
            e.starts_with("/nonexistent/brokk.toml: cannot read the config file"),
            "{e}"
        );
    }

    #[test]
    fn passwd_reads_stdin_and_adds_then_replaces() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let file = dir.path().join("passwords");
        let file_arg = file
            .to_str()
            .expect("test setup: a failure here is the test failing");
        let cli = parse(&["passwd", file_arg, "alice"])
            .expect("test setup: a failure here is the test failing");
        let Some(Command::Passwd(args)) = cli.command else {
            panic!("passwd not parsed")
        };
        assert_eq!(
            run_passwd(&args, &mut &b"s3cret\r\nignored\n"[..])
                .expect("test setup: a failure here is the test failing"),
            SetPassword::Added
        );
        let loaded =
            PasswordFile::load(&file).expect("test setup: a failure here is the test failing");
        assert!(loaded.verify("alice", b"s3cret"));

        let cli = parse(&["passwd", file_arg, "alice", "--password", "new"])
            .expect("test setup: a failure here is the test failing");
        let Some(Command::Passwd(args)) = cli.command else {
            panic!("passwd not parsed")
        };
        assert_eq!(
            run_passwd(&args, &mut &b""[..])
                .expect("test setup: a failure here is the test failing"),
            SetPassword::Replaced
        );
        let loaded =
            PasswordFile::load(&file).expect("test setup: a failure here is the test failing");
        assert!(loaded.verify("alice", b"new"));
        assert!(!loaded.verify("alice", b"s3cret"));
    }

    #[test]
    fn passwd_refuses_an_empty_password_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let file = dir.path().join("passwords");
        let cli = parse(&[
            "passwd",
            file.to_str()
                .expect("test setup: a failure here is the test failing"),
            "alice",
        ])
        .expect("test setup: a failure here is the test failing");
        let Some(Command::Passwd(args)) = cli.command else {
            panic!("passwd not parsed")
        };
        let e = run_passwd(&args, &mut &b"\n"[..]).unwrap_err();
        assert_eq!(e.to_string(), "the password is empty");
        assert!(!file.exists());
    }

    #[test]
    fn passwd_scheme_pbkdf2_sha512_writes_a_mosquitto_line_beside_the_others() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let file = dir.path().join("passwords");
        let file_arg = file
            .to_str()
            .expect("test setup: a failure here is the test failing");
        let passwd = |args: &[&str], stdin: &[u8]| {
            let cli = parse(args).expect("test setup: a failure here is the test failing");
            let Some(Command::Passwd(args)) = cli.command else {
                panic!("passwd not parsed")
            };
            run_passwd(&args, &mut &stdin[..])
        };
        passwd(&["passwd", file_arg, "alice"], b"argon\n")
            .expect("test setup: a failure here is the test failing");
        let outcome = passwd(
            &["passwd", file_arg, "bob", "--scheme", "pbkdf2-sha512"],
            b"mosquitto\n",
        )
        .expect("test setup: a failure here is the test failing");
        assert_eq!(outcome, SetPassword::Added);

        let text =
            std::fs::read_to_string(&file).expect("test setup: a failure here is the test failing");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("alice:$argon2id$"), "{text}");
        assert!(lines[1].starts_with("bob:$7$101$"), "{text}");
        let loaded =
            PasswordFile::load(&file).expect("test setup: a failure here is the test failing");
        assert!(loaded.verify("alice", b"argon"));
        assert!(loaded.verify("bob", b"mosquitto"));
        assert!(!loaded.verify("bob", b"argon"));
    }

    #[test]
    fn passwd_refuses_an_unknown_scheme_listing_the_known_ones() {
        let e = parse(&["passwd", "f", "u", "--scheme", "md5"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("md5"), "{e}");
        assert!(e.contains("argon2id") && e.contains("pbkdf2-sha512"), "{e}");
    }

    #[test]
    fn run_flags_do_not_mix_with_passwd() {
        assert!(parse(&["--dev-tls", "passwd", "f", "u"]).is_err());
    }
}
