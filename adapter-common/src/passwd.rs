//! The password file: one `username:hash` line per user, where the hash is an
//! Argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) with its own
//! random salt. Blank lines and lines starting with `#` are kept as they are.
//!
//! The username is everything before the line's last `:`, since a PHC string never
//! contains one; usernames may therefore contain `:` themselves.
//!
//! Checking a password costs tens of milliseconds of CPU on purpose (that is what
//! makes a stolen file expensive to crack), so an async adapter should call
//! [`PasswordFile::verify`] off its I/O threads.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHashString, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};

use crate::atomic;

/// Users and their password hashes, in file order.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// Username -> index into `lines`.
    users: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
enum Line {
    /// A blank or `#` comment line, written back unchanged.
    Other(String),
    User {
        name: String,
        hash: PasswordHashString,
    },
}

/// Whether [`PasswordFile::set_password`] created the user or changed an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetPassword {
    /// The user is new.
    Added,
    /// The user existed; the old password no longer works.
    Replaced,
}

impl PasswordFile {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, PasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswdError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Like [`PasswordFile::load`], but a file that does not exist yet is empty:
    /// `brokk passwd` creates the file with its first user.
    pub fn load_or_new(path: &Path) -> Result<Self, PasswdError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::new()),
            _ => Self::load(path),
        }
    }

    /// Parses the text of a password file; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PasswdError> {
        let mut file = Self::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let err = |problem| PasswdError::Line {
                path: path.to_path_buf(),
                line: line_no,
                problem,
            };
            if raw.trim().is_empty() || raw.starts_with('#') {
                file.lines.push(Line::Other(raw.to_owned()));
                continue;
            }
            let (name, hash) = raw.rsplit_once(':').ok_or(err(LineProblem::NoColon))?;
            if name.is_empty() {
                return Err(err(LineProblem::EmptyUsername));
            }
            let hash = parse_hash(hash).map_err(err)?;
            if let Some(&first) = file.users.get(name) {
                return Err(err(LineProblem::DuplicateUser {
                    username: name.to_owned(),
                    // One entry per input line, so the index is the line number less one.
                    first_line: first + 1,
                }));
            }
            file.users.insert(name.to_owned(), file.lines.len());
            file.lines.push(Line::User {
                name: name.to_owned(),
                hash,
            });
        }
        Ok(file)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `username` has a line.
    pub fn contains_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// The usernames, in file order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::User { name, .. } => Some(name.as_str()),
            Line::Other(_) => None,
        })
    }

    /// Whether `password` is the password of `username`. The comparison is constant
    /// time, and an unknown user costs as much as a known one, so timing tells a
    /// client nothing about which usernames exist.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let stored = self
            .users
            .get(username)
            .and_then(|&i| match &self.lines[i] {
                Line::User { hash, .. } => Some(hash),
                Line::Other(_) => None,
            });
        let argon2 = Argon2::default();
        match stored {
            Some(hash) => argon2
                .verify_password(password, &hash.password_hash())
                .is_ok(),
            None => {
                if let Some(dummy) = dummy_hash() {
                    // Spend the same time as a real check; the answer is no regardless.
                    let _ = argon2.verify_password(password, &dummy.password_hash());
                }
                false
            }
        }
    }

    /// Adds `username`, or replaces its password if it exists, with a fresh salt.
    pub fn set_password(
        &mut self,
        username: &str,
        password: &[u8],
    ) -> Result<SetPassword, PasswdError> {
        check_username(username)?;
        if password.is_empty() {
            return Err(PasswdError::EmptyPassword);
        }
        let hash = hash_password(password)?;
        match self.users.get(username) {
            Some(&i) => {
                self.lines[i] = Line::User {
                    name: username.to_owned(),
                    hash,
                };
                Ok(SetPassword::Replaced)
            }
            None => {
                self.users.insert(username.to_owned(), self.lines.len());
                self.lines.push(Line::User {
                    name: username.to_owned(),
                    hash,
                });
                Ok(SetPassword::Added)
            }
        }
    }

    /// The file's text, as [`PasswordFile::write`] stores it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(text) => out.push_str(text),
                Line::User { name, hash } => {
                    out.push_str(name);
                    out.push(':');
                    out.push_str(hash.as_str());
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically (a temporary file renamed over `path`) and
    /// readable by its owner only: a reader never sees half a file, and a crash
    /// leaves the old one.
    pub fn write(&self, path: &Path) -> Result<(), PasswdError> {
        atomic::write(path, self.to_text().as_bytes(), atomic::Access::Owner).map_err(|source| {
            PasswdError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

fn check_username(username: &str) -> Result<(), PasswdError> {
    let problem = if username.is_empty() {
        Some("it is empty")
    } else if username.contains(['\n', '\r']) {
        Some("it contains a line break")
    } else if username.starts_with('#') {
        Some("a line starting with '#' is a comment")
    } else if username.trim() != username {
        Some("it starts or ends with whitespace, which is easy to get wrong in a client")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(PasswdError::BadUsername {
            username: username.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

fn parse_hash(text: &str) -> Result<PasswordHashString, LineProblem> {
    let hash = PasswordHashString::new(text).map_err(|e| LineProblem::BadHash {
        problem: e.to_string(),
    })?;
    let algorithm = hash.algorithm();
    if !matches!(algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
        return Err(LineProblem::UnsupportedAlgorithm {
            algorithm: algorithm.as_str().to_owned(),
        });
    }
    // Checked now so a bad cost is reported with its line instead of making every
    // login for that user fail.
    Params::try_from(&hash.password_hash()).map_err(|e| LineProblem::BadHash {
        problem: e.to_string(),
    })?;
    if hash.salt().is_none() || hash.hash().is_none() {
        return Err(LineProblem::BadHash {
            problem: "salt or hash missing".to_owned(),
        });
    }
    Ok(hash)
}

fn hash_password(password: &[u8]) -> Result<PasswordHashString, PasswdError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.serialize())
        .map_err(|e| PasswdError::Hash {
            problem: e.to_string(),
        })
}

/// A hash of nothing in particular, verified against when the username is unknown.
fn dummy_hash() -> Option<&'static PasswordHashString> {
    static DUMMY: OnceLock<Option<PasswordHashString>> = OnceLock::new();
    DUMMY
        .get_or_init(|| hash_password(b"brokk-unknown-user").ok())
        .as_ref()
}

/// What is wrong with one line of a password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// No `:` separates the username from the hash.
    NoColon,
    /// Nothing before the `:`.
    EmptyUsername,
    /// The hash is not a valid PHC string with Argon2 parameters.
    BadHash {
        /// The parser's explanation.
        problem: String,
    },
    /// A PHC string for an algorithm other than Argon2.
    UnsupportedAlgorithm {
        /// The algorithm named in the hash.
        algorithm: String,
    },
    /// The username appeared earlier in the file.
    DuplicateUser {
        /// The username.
        username: String,
        /// Line of the first appearance.
        first_line: usize,
    },
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::NoColon => f.write_str("expected username:hash"),
            LineProblem::EmptyUsername => f.write_str("the username before ':' is empty"),
            LineProblem::BadHash { problem } => {
                write!(f, "the hash after ':' is not a valid Argon2 PHC string: {problem}")
            }
            LineProblem::UnsupportedAlgorithm { algorithm } => write!(
                f,
                "the hash uses {algorithm:?}, expected \"argon2id\" (create hashes with `brokk passwd`)"
            ),
            LineProblem::DuplicateUser {
                username,
                first_line,
            } => write!(f, "user {username:?} already appears on line {first_line}"),
        }
    }
}

/// Everything that can go wrong with a password file.
#[derive(Debug)]
pub enum PasswdError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line of the file is not `username:hash`.
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: LineProblem,
    },
    /// The file could not be written.
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A username the file cannot hold.
    BadUsername {
        /// The username given.
        username: String,
        /// Why it is refused.
        problem: &'static str,
    },
    /// An empty password, which would let anyone who knows the username in.
    EmptyPassword,
    /// The password could not be read from standard input.
    ReadPassword {
        /// Why.
        source: io::Error,
    },
    /// Hashing failed (the OS random source or Argon2 itself).
    Hash {
        /// The hasher's explanation.
        problem: String,
    },
}

impl fmt::Display for PasswdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswdError::Read { path, source } => {
                write!(
                    f,
                    "{}: cannot read the password file: {source}",
                    path.display()
                )
            }
            PasswdError::Line {
                path,
                line,
                problem,
            } => write!(f, "{}:{line}: {problem}", path.display()),
            PasswdError::Write { path, source } => {
                write!(
                    f,
                    "{}: cannot write the password file: {source}",
                    path.display()
                )
            }
            PasswdError::BadUsername { username, problem } => {
                write!(f, "username {username:?} cannot be stored: {problem}")
            }
            PasswdError::EmptyPassword => f.write_str("the password is empty"),
            PasswdError::ReadPassword { source } => {
                write!(f, "cannot read the password from standard input: {source}")
            }
            PasswdError::Hash { problem } => write!(f, "cannot hash the password: {problem}"),
        }
    }
}

impl std::error::Error for PasswdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PasswdError::Read { source, .. }
            | PasswdError::Write { source, .. }
            | PasswdError::ReadPassword { source } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("passwords")
    }

    #[test]
    fn set_then_verify_and_round_trip_through_text() {
        let mut file = PasswordFile::new();
        assert_eq!(
            file.set_password("alice", b"wonderland")
                .expect("test setup: a failure here is the test failing"),
            SetPassword::Added
        );
        assert!(file.verify("alice", b"wonderland"));
        assert!(!file.verify("alice", b"Wonderland"));
        assert!(!file.verify("bob", b"wonderland"));

        let text = file.to_text();
        assert!(text.starts_with("alice:$argon2id$v=19$"), "{text}");
        let reloaded = PasswordFile::parse(path(), &text)
            .expect("test setup: a failure here is the test failing");
        assert!(reloaded.verify("alice", b"wonderland"));
    }

    #[test]
    fn same_password_gets_a_different_salt_each_time() {
        let mut a = PasswordFile::new();
        let mut b = PasswordFile::new();
        a.set_password("u", b"same")
            .expect("test setup: a failure here is the test failing");
        b.set_password("u", b"same")
            .expect("test setup: a failure here is the test failing");
        assert_ne!(a.to_text(), b.to_text());
    }

    #[test]
    fn replacing_a_user_keeps_comments_and_order_and_drops_the_old_password() {
        let mut file = PasswordFile::new();
        file.set_password("a", b"1")
            .expect("test setup: a failure here is the test failing");
        file.set_password("b", b"2")
            .expect("test setup: a failure here is the test failing");
        let text = format!("# operators\n{}", file.to_text());
        let mut file = PasswordFile::parse(path(), &text)
            .expect("test setup: a failure here is the test failing");
        assert_eq!(
            file.set_password("a", b"new")
                .expect("test setup: a failure here is the test failing"),
            SetPassword::Replaced
        );
        assert!(file.verify("a", b"new"));
        assert!(!file.verify("a", b"1"));
        let text = file.to_text();
        assert!(text.starts_with("# operators\na:"), "{text}");
        assert_eq!(file.usernames().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(file.len(), 2);
    }

    #[test]
    fn usernames_may_contain_colons() {
        let mut file = PasswordFile::new();
        file.set_password("tenant:device-1", b"pw")
            .expect("test setup: a failure here is the test failing");
        let file = PasswordFile::parse(path(), &file.to_text())
            .expect("test setup: a failure here is the test failing");
        assert!(file.verify("tenant:device-1", b"pw"));
    }

    #[test]
    fn load_errors_name_file_and_line() {
        let e = PasswordFile::parse(path(), "# users\n\nalice\n").unwrap_err();
        assert_eq!(e.to_string(), "passwords:3: expected username:hash");

        let e = PasswordFile::parse(path(), "alice:plaintext\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("passwords:1: the hash after ':' is not a valid Argon2 PHC string"),
            "{e}"
        );

        let pbkdf2 = "$pbkdf2-sha256$i=600000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        let e = PasswordFile::parse(path(), &format!("alice:{pbkdf2}\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "passwords:1: the hash uses \"pbkdf2-sha256\", expected \"argon2id\" (create hashes with `brokk passwd`)"
        );

        let mut file = PasswordFile::new();
        file.set_password("alice", b"x")
            .expect("test setup: a failure here is the test failing");
        let twice = format!("{0}\n{0}", file.to_text().trim_end());
        let e = PasswordFile::parse(path(), &twice).unwrap_err();
        assert_eq!(
            e.to_string(),
            "passwords:2: user \"alice\" already appears on line 1"
        );
    }

    #[test]
    fn bad_usernames_and_empty_passwords_are_refused() {
        let mut file = PasswordFile::new();
        for name in ["", "a\nb", "#admin", " padded"] {
            let e = file.set_password(name, b"pw").unwrap_err();
            assert!(
                matches!(e, PasswdError::BadUsername { .. }),
                "{name:?}: {e}"
            );
        }
        assert!(matches!(
            file.set_password("a", b""),
            Err(PasswdError::EmptyPassword)
        ));
        assert!(file.is_empty());
    }

    #[test]
    fn write_then_load_round_trips_and_is_private() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let p = dir.path().join("passwords");
        let mut file =
            PasswordFile::load_or_new(&p).expect("test setup: a failure here is the test failing");
        assert!(file.is_empty());
        file.set_password("alice", b"pw")
            .expect("test setup: a failure here is the test failing");
        file.write(&p)
            .expect("test setup: a failure here is the test failing");
        let loaded =
            PasswordFile::load(&p).expect("test setup: a failure here is the test failing");
        assert!(loaded.verify("alice", b"pw"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p)
                .expect("test setup: a failure here is the test failing")
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "password file readable by others: {mode:o}"
            );
        }
    }

    #[test]
    fn missing_file_error_names_it() {
        let e = PasswordFile::load(Path::new("/nonexistent/passwords")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("/nonexistent/passwords: cannot read the password file:"));
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let mut file = PasswordFile::new();
        file.set_password("alice", b"pw")
            .expect("test setup: a failure here is the test failing");
        let crlf = file.to_text().replace('\n', "\r\n");
        let file = PasswordFile::parse(path(), &crlf)
            .expect("test setup: a failure here is the test failing");
        assert!(file.verify("alice", b"pw"));
    }
}
