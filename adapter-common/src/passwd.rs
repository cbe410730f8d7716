//! The password file: one `username:hash` line per user. Blank lines and lines
//! starting with `#` are kept as they are. Three hash formats are read, so a
//! Mosquitto password file works unchanged:
//!
//! - `$argon2id$v=19$m=19456,t=2,p=1$salt$hash`: an Argon2id PHC string with its own
//!   random salt. `brokk passwd` writes it unless told otherwise; use it unless the
//!   file must also work with Mosquitto.
//! - `$7$iterations$salt$hash`: Mosquitto 2's default (`mosquitto_passwd`):
//!   PBKDF2-HMAC-SHA512 run `iterations` times (Mosquitto writes 101) over the
//!   salt, 12 random bytes, giving a 64-byte hash. Salt and hash are standard base64
//!   with padding. `brokk passwd --scheme pbkdf2-sha512` writes this form, so one
//!   file serves brokk and Mosquitto alike.
//! - `$6$salt$hash`: Mosquitto 1.x (`mosquitto_passwd -H sha512`): one SHA-512 of
//!   the password followed by the salt, both in standard base64. Read only, so an old
//!   file keeps working.
//!
//! Both Mosquitto formats take microseconds to check, so a stolen file is far
//! cheaper to crack than with Argon2id; replacing a user's password with
//! `brokk passwd` (default scheme) moves that user to Argon2id.
//!
//! Every line is written back as it was read: changing one user's password leaves
//! the other lines, whatever their format, as they were (only `\r\n` line endings
//! become `\n`).
//!
//! The username is everything before the line's last `:`, since no hash contains
//! one; usernames may therefore contain `:` themselves (Mosquitto itself splits at
//! the first `:`, so such users only work with brokk).
//!
//! Checking an Argon2id password costs tens of milliseconds of CPU on purpose (that
//! is what makes a stolen file expensive to crack), so an async adapter should call
//! [`PasswordFile::verify`] off its I/O threads.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHashString, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha512};

use crate::atomic;

/// Users and their password hashes, in file order.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// Username -> index into `lines`.
    users: HashMap<String, usize>,
    /// Indexes into `lines` of the user lines, in file order: an unknown username is
    /// checked against one of them (see [`PasswordFile::verify`]).
    user_lines: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Line {
    /// A blank or `#` comment line, written back unchanged.
    Other(String),
    User {
        name: String,
        hash: StoredHash,
    },
}

/// Length of a Mosquitto `$6$` or `$7$` hash: one SHA-512 output.
const SHA512_LEN: usize = 64;

/// The iterations `mosquitto_passwd` 2.x writes in `$7$` hashes; brokk writes the
/// same so its lines look like Mosquitto's own.
const MOSQUITTO_ITERATIONS: NonZeroU32 = NonZeroU32::new(101).expect("101 is not zero");

/// The salt length `mosquitto_passwd` 2.x writes.
const MOSQUITTO_SALT_LEN: usize = 12;

/// A user's hash, decoded once when the file is read so that a login only hashes
/// and compares.
#[derive(Debug, Clone)]
enum StoredHash {
    Argon2(PasswordHashString),
    /// Mosquitto's `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// The hash as read, written back unchanged.
        text: String,
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    /// Mosquitto 1.x's `$6$`: SHA-512 of the password, then the salt.
    Sha512 {
        /// The hash as read, written back unchanged.
        text: String,
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
}

impl StoredHash {
    fn as_str(&self) -> &str {
        match self {
            StoredHash::Argon2(hash) => hash.as_str(),
            StoredHash::Pbkdf2Sha512 { text, .. } | StoredHash::Sha512 { text, .. } => text,
        }
    }

    /// Whether `password` hashes to this; the hash comparison is constant time.
    fn matches(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Argon2(hash) => Argon2::default()
                .verify_password(password, &hash.password_hash())
                .is_ok(),
            StoredHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
                ..
            } => {
                let mut computed = [0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations.get(), &mut computed);
                constant_time_eq(&computed, hash)
            }
            StoredHash::Sha512 { salt, hash, .. } => {
                let computed: [u8; SHA512_LEN] = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize()
                    .into();
                constant_time_eq(&computed, hash)
            }
        }
    }
}

/// Compares without stopping at the first difference, so the time taken says
/// nothing about how much of a guessed hash was right.
fn constant_time_eq(a: &[u8; SHA512_LEN], b: &[u8; SHA512_LEN]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// How [`PasswordFile::set_password_with`] hashes a new password: the `--scheme` of
/// `brokk passwd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HashScheme {
    /// Argon2id, memory-hard and slow to crack; Mosquitto 2.0 cannot read it
    #[default]
    #[value(name = "argon2id")]
    Argon2id,
    /// Mosquitto's $7$ form, PBKDF2-HMAC-SHA512 with 101 iterations, so Mosquitto
    /// reads the file too; much cheaper to crack than argon2id
    #[value(name = "pbkdf2-sha512")]
    Pbkdf2Sha512,
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
            file.push_user(name, hash);
        }
        Ok(file)
    }

    fn push_user(&mut self, name: &str, hash: StoredHash) {
        let index = self.lines.len();
        self.users.insert(name.to_owned(), index);
        self.user_lines.push(index);
        self.lines.push(Line::User {
            name: name.to_owned(),
            hash,
        });
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
    ///
    /// The file may mix formats whose costs differ a thousandfold (Argon2id against
    /// Mosquitto's PBKDF2), so no single dummy hash costs what a known user does. An
    /// unknown username is instead checked against the hash of a user picked by
    /// hashing the name with this file's random keys: the same name always costs the
    /// same, and what it costs is what some real user costs.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        if let Some(hash) = self.users.get(username).and_then(|&i| self.hash_at(i)) {
            return hash.matches(password);
        }
        let decoy: Option<&StoredHash> = match self.decoy(username) {
            Some(hash) => Some(hash),
            None => dummy_hash(),
        };
        if let Some(decoy) = decoy {
            // The answer is no regardless; black_box keeps the work from being
            // optimised away.
            std::hint::black_box(decoy.matches(std::hint::black_box(password)));
        }
        false
    }

    fn hash_at(&self, line: usize) -> Option<&StoredHash> {
        match self.lines.get(line)? {
            Line::User { hash, .. } => Some(hash),
            Line::Other(_) => None,
        }
    }

    /// The hash an unknown `username` is checked against; `None` without users.
    fn decoy(&self, username: &str) -> Option<&StoredHash> {
        let users = u64::try_from(self.user_lines.len()).ok()?;
        let pick = self.users.hasher().hash_one(username).checked_rem(users)?;
        let line = *self.user_lines.get(usize::try_from(pick).ok()?)?;
        self.hash_at(line)
    }

    /// Adds `username`, or replaces its password if it exists, hashed with Argon2id
    /// and a fresh salt.
    pub fn set_password(
        &mut self,
        username: &str,
        password: &[u8],
    ) -> Result<SetPassword, PasswdError> {
        self.set_password_with(username, password, HashScheme::Argon2id)
    }

    /// Adds `username`, or replaces its password if it exists, hashed with `scheme`
    /// and a fresh salt. Every other line is left as it was.
    pub fn set_password_with(
        &mut self,
        username: &str,
        password: &[u8],
        scheme: HashScheme,
    ) -> Result<SetPassword, PasswdError> {
        check_username(username)?;
        if password.is_empty() {
            return Err(PasswdError::EmptyPassword);
        }
        let hash = match scheme {
            HashScheme::Argon2id => StoredHash::Argon2(hash_password(password)?),
            HashScheme::Pbkdf2Sha512 => hash_pbkdf2_sha512(password)?,
        };
        match self.users.get(username) {
            Some(&i) => {
                self.lines[i] = Line::User {
                    name: username.to_owned(),
                    hash,
                };
                Ok(SetPassword::Replaced)
            }
            None => {
                self.push_user(username, hash);
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

/// The form of a `$7$` hash, for errors.
const PBKDF2_SHA512_FORM: &str = "$7$ITERATIONS$SALT$HASH";
/// The form of a `$6$` hash, for errors.
const SHA512_FORM: &str = "$6$SALT$HASH";

fn parse_hash(text: &str) -> Result<StoredHash, LineProblem> {
    if let Some(rest) = text.strip_prefix("$7$") {
        parse_pbkdf2_sha512(text, rest)
    } else if let Some(rest) = text.strip_prefix("$6$") {
        parse_sha512(text, rest)
    } else if text.starts_with('$') {
        parse_argon2(text).map(StoredHash::Argon2)
    } else {
        // Most likely a plain-text password, as Mosquitto files hold before
        // `mosquitto_passwd -U`; the problem never repeats the text.
        Err(LineProblem::NotAHash)
    }
}

/// `rest` is the hash after `$7$`: `ITERATIONS$SALT$HASH`.
fn parse_pbkdf2_sha512(text: &str, rest: &str) -> Result<StoredHash, LineProblem> {
    let bad = |problem: String| LineProblem::BadMosquittoHash {
        expected: PBKDF2_SHA512_FORM,
        problem,
    };
    let fields: Vec<&str> = rest.split('$').collect();
    let [iterations, salt, hash] = fields[..] else {
        return Err(bad(fields_problem(fields.len() + 1, 4)));
    };
    // Digits only: `parse` would also take a leading '+'.
    let iterations = Some(iterations)
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<NonZeroU32>().ok())
        .ok_or_else(|| {
            bad(format!(
                "the iteration count is not a whole number from 1 to {}",
                u32::MAX
            ))
        })?;
    let salt = decode_salt(salt).map_err(bad)?;
    let hash = decode_sha512(hash).map_err(bad)?;
    Ok(StoredHash::Pbkdf2Sha512 {
        text: text.to_owned(),
        iterations,
        salt,
        hash,
    })
}

/// `rest` is the hash after `$6$`: `SALT$HASH`.
fn parse_sha512(text: &str, rest: &str) -> Result<StoredHash, LineProblem> {
    let bad = |problem: String| LineProblem::BadMosquittoHash {
        expected: SHA512_FORM,
        problem,
    };
    let fields: Vec<&str> = rest.split('$').collect();
    let [salt, hash] = fields[..] else {
        return Err(bad(fields_problem(fields.len() + 1, 3)));
    };
    let salt = decode_salt(salt).map_err(bad)?;
    let hash = decode_sha512(hash).map_err(bad)?;
    Ok(StoredHash::Sha512 {
        text: text.to_owned(),
        salt,
        hash,
    })
}

/// Counting the format's number as a field, as it appears on the line.
fn fields_problem(found: usize, expected: usize) -> String {
    format!("found {found} '$'-separated fields instead of {expected}")
}

fn decode_salt(salt: &str) -> Result<Vec<u8>, String> {
    let salt = BASE64
        .decode(salt)
        .map_err(|_| "the salt is not standard base64 with padding".to_owned())?;
    if salt.is_empty() {
        return Err("the salt is empty".to_owned());
    }
    Ok(salt)
}

fn decode_sha512(hash: &str) -> Result<[u8; SHA512_LEN], String> {
    let hash = BASE64
        .decode(hash)
        .map_err(|_| "the hash is not standard base64 with padding".to_owned())?;
    let len = hash.len();
    <[u8; SHA512_LEN]>::try_from(hash)
        .map_err(|_| format!("the hash is {len} bytes, expected {SHA512_LEN} (one SHA-512)"))
}

fn parse_argon2(text: &str) -> Result<PasswordHashString, LineProblem> {
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

/// Mosquitto's `$7$` form with the iterations and salt length `mosquitto_passwd`
/// uses, so Mosquitto reads the line as one of its own.
fn hash_pbkdf2_sha512(password: &[u8]) -> Result<StoredHash, PasswdError> {
    let mut salt = vec![0u8; MOSQUITTO_SALT_LEN];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| PasswdError::Hash {
            problem: format!("no random salt from the operating system: {e}"),
        })?;
    let mut hash = [0u8; SHA512_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, MOSQUITTO_ITERATIONS.get(), &mut hash);
    let text = format!(
        "$7${MOSQUITTO_ITERATIONS}${}${}",
        BASE64.encode(&salt),
        BASE64.encode(hash)
    );
    Ok(StoredHash::Pbkdf2Sha512 {
        text,
        iterations: MOSQUITTO_ITERATIONS,
        salt,
        hash,
    })
}

/// A hash of nothing in particular, verified against when the file has no users.
fn dummy_hash() -> Option<&'static StoredHash> {
    static DUMMY: OnceLock<Option<StoredHash>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            hash_password(b"brokk-unknown-user")
                .ok()
                .map(StoredHash::Argon2)
        })
        .as_ref()
}

/// What is wrong with one line of a password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// No `:` separates the username from the hash.
    NoColon,
    /// Nothing before the `:`.
    EmptyUsername,
    /// The text after the `:` does not start with `$`: no hash at all, most likely a
    /// password in plain text.
    NotAHash,
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
    /// A `$7$` or `$6$` hash without Mosquitto's layout.
    BadMosquittoHash {
        /// The layout expected: `$7$ITERATIONS$SALT$HASH` or `$6$SALT$HASH`.
        expected: &'static str,
        /// What differs from it.
        problem: String,
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
            LineProblem::NotAHash => f.write_str(
                "the text after ':' is not a password hash (expected $argon2id$..., or \
                 Mosquitto's $7$... or $6$...); if it is a plain-text password, set it \
                 again with `brokk passwd`",
            ),
            LineProblem::BadHash { problem } => {
                write!(
                    f,
                    "the hash after ':' is not a valid Argon2 PHC string: {problem}"
                )
            }
            LineProblem::UnsupportedAlgorithm { algorithm } => write!(
                f,
                "the hash uses {algorithm:?}, expected \"argon2id\", or Mosquitto's \"7\" \
                 (PBKDF2-SHA512) or \"6\" (SHA-512) (create hashes with `brokk passwd`)"
            ),
            LineProblem::BadMosquittoHash { expected, problem } => write!(
                f,
                "the hash after ':' is not a valid Mosquitto hash {expected}: {problem}"
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
                .starts_with("passwords:1: the text after ':' is not a password hash"),
            "{e}"
        );
        assert!(
            !e.to_string().contains("plaintext"),
            "the password is repeated: {e}"
        );

        let e = PasswordFile::parse(path(), "alice:$argon2id$v=19$nonsense\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("passwords:1: the hash after ':' is not a valid Argon2 PHC string"),
            "{e}"
        );

        let pbkdf2 = "$pbkdf2-sha256$i=600000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        let e = PasswordFile::parse(path(), &format!("alice:{pbkdf2}\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "passwords:1: the hash uses \"pbkdf2-sha256\", expected \"argon2id\", or \
             Mosquitto's \"7\" (PBKDF2-SHA512) or \"6\" (SHA-512) (create hashes with `brokk passwd`)"
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

    /// Made by `mosquitto_passwd -c -b FILE user secret` (Mosquitto 2.0.11).
    const MOSQUITTO_7: &str = "$7$101$46DNWiOZKHfdbBrR$6sonuBSaOc6ZsN7P4+aw8oJ0AFx86lXmen6G74d1jm9d1OA6Q3KSmcUc/a6JE8Synsyoat7gqOm1l9wDFmUhAg==";
    /// Made by `mosquitto_passwd -H sha512 -c -b FILE user secret` (Mosquitto
    /// 2.0.11), and checked with Python: base64(sha512(b"secret" + salt)).
    const MOSQUITTO_6: &str = "$6$s21TURPreTOl+X5m$21G7qDgfurN7pvnEQD1CcG4u1h+eqDoZtYSI/n9pXS5i4Sr2FcfciPC+PkqOxvcT+LppRTrmFYZ+Dk7OF7HM4Q==";
    /// Python: hashlib.pbkdf2_hmac("sha512", b"correct horse", bytes(range(64)),
    /// 1000, 64): another iteration count, and the 64-byte salt Mosquitto 2.1 writes.
    const PBKDF2_1000: &str = "$7$1000$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==$53KiEygVzVVEVUVTe4h79yMtYp0OxxoKFip82vf7OCrEbcm4/E88oGkCyN0NhQ7fLOSBIpiITuELG/0ldDPFMQ==";
    /// Python: sha512(b"correct horse" + b"brokk-salt!!").
    const SHA512_PY: &str = "$6$YnJva2stc2FsdCEh$5ENlaW+oZ0dn6mE2wCGUSiu7EpWfdyrFMaOVNECEj+WLoYcKfst2+AkQGicdZ+t6UJ+OvGD/yV5Csi3qWGAl7Q==";

    fn one_user(hash: &str) -> PasswordFile {
        PasswordFile::parse(path(), &format!("user:{hash}\n"))
            .expect("test setup: a failure here is the test failing")
    }

    #[test]
    fn mosquitto_passwd_pbkdf2_sha512_line_accepts_its_password_only() {
        let file = one_user(MOSQUITTO_7);
        assert!(file.verify("user", b"secret"));
        assert!(!file.verify("user", b"Secret"));
        assert!(!file.verify("user", b"secret "));
        assert!(!file.verify("user", b""));
        assert!(!file.verify("other", b"secret"));
    }

    #[test]
    fn mosquitto_passwd_sha512_line_accepts_its_password_only() {
        let file = one_user(MOSQUITTO_6);
        assert!(file.verify("user", b"secret"));
        assert!(!file.verify("user", b"secreT"));
        assert!(!file.verify("other", b"secret"));
    }

    #[test]
    fn independently_computed_vectors_verify() {
        let file = one_user(PBKDF2_1000);
        assert!(file.verify("user", b"correct horse"));
        assert!(!file.verify("user", b"correct horse battery"));
        let file = one_user(SHA512_PY);
        assert!(file.verify("user", b"correct horse"));
        assert!(!file.verify("user", b"correct hors"));
    }

    #[test]
    fn malformed_mosquitto_hashes_are_refused_naming_file_and_line() {
        let salt = "46DNWiOZKHfdbBrR";
        let hash = "6sonuBSaOc6ZsN7P4+aw8oJ0AFx86lXmen6G74d1jm9d1OA6Q3KSmcUc/a6JE8Synsyoat7gqOm1l9wDFmUhAg==";
        let short =
            "6sonuBSaOc6ZsN7P4+aw8oJ0AFx86lXmen6G74d1jm9d1OA6Q3KSmcUc/a6JE8Synsyoat7gqOm1l9wDFmUhA";
        let seven = "the hash after ':' is not a valid Mosquitto hash $7$ITERATIONS$SALT$HASH";
        let six = "the hash after ':' is not a valid Mosquitto hash $6$SALT$HASH";
        for (hash_text, expected) in [
            (
                format!("$7$101${salt}"),
                format!("{seven}: found 3 '$'-separated fields instead of 4"),
            ),
            (
                format!("$7$101${salt}${hash}$"),
                format!("{seven}: found 5 '$'-separated fields instead of 4"),
            ),
            (
                format!("$7$0${salt}${hash}"),
                format!("{seven}: the iteration count is not a whole number from 1 to 4294967295"),
            ),
            (
                format!("$7$-5${salt}${hash}"),
                format!("{seven}: the iteration count is not a whole number from 1 to 4294967295"),
            ),
            (
                format!("$7$4294967296${salt}${hash}"),
                format!("{seven}: the iteration count is not a whole number from 1 to 4294967295"),
            ),
            (
                format!("$7$101$$${hash}"),
                format!("{seven}: found 5 '$'-separated fields instead of 4"),
            ),
            (
                format!("$7$101$${hash}"),
                format!("{seven}: the salt is empty"),
            ),
            (
                format!("$7$101$not*base64${hash}"),
                format!("{seven}: the salt is not standard base64 with padding"),
            ),
            (
                format!("$7$101${salt}${short}"),
                format!("{seven}: the hash is not standard base64 with padding"),
            ),
            (
                format!("$7$101${salt}$AAAA"),
                format!("{seven}: the hash is 3 bytes, expected 64 (one SHA-512)"),
            ),
            (
                format!("$6${salt}"),
                format!("{six}: found 2 '$'-separated fields instead of 3"),
            ),
            (
                format!("$6$101${salt}${hash}"),
                format!("{six}: found 4 '$'-separated fields instead of 3"),
            ),
            (
                format!("$6${salt}$AAAA"),
                format!("{six}: the hash is 3 bytes, expected 64 (one SHA-512)"),
            ),
        ] {
            let text = format!("# users\nalice:{MOSQUITTO_7}\nbob:{hash_text}\n");
            let e = PasswordFile::parse(path(), &text).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("passwords:3: {expected}"),
                "{hash_text}"
            );
        }
    }

    #[test]
    fn mosquitto_lines_are_written_back_byte_for_byte() {
        let mut argon = PasswordFile::new();
        argon
            .set_password("carol", b"argon")
            .expect("test setup: a failure here is the test failing");
        let text = format!(
            "# from mosquitto\nalice:{MOSQUITTO_7}\n\nbob:{MOSQUITTO_6}\n{}dave:{PBKDF2_1000}\n",
            argon.to_text()
        );
        let mut file = PasswordFile::parse(path(), &text)
            .expect("test setup: a failure here is the test failing");
        assert_eq!(file.to_text(), text);

        // Changing one user rewrites that line only.
        assert_eq!(
            file.set_password_with("bob", b"new", HashScheme::Pbkdf2Sha512)
                .expect("test setup: a failure here is the test failing"),
            SetPassword::Replaced
        );
        assert_eq!(
            file.set_password("erin", b"added")
                .expect("test setup: a failure here is the test failing"),
            SetPassword::Added
        );
        let written = file.to_text();
        let before: Vec<&str> = text.lines().collect();
        let after: Vec<&str> = written.lines().collect();
        assert_eq!(after.len(), before.len() + 1, "{written}");
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            if i == 3 {
                assert!(a.starts_with("bob:$7$101$") && a != b, "{a}");
            } else {
                assert_eq!(a, b, "line {}", i + 1);
            }
        }
        assert!(after[6].starts_with("erin:$argon2id$"), "{written}");

        let reloaded = PasswordFile::parse(path(), &written)
            .expect("test setup: a failure here is the test failing");
        assert!(reloaded.verify("alice", b"secret"));
        assert!(reloaded.verify("bob", b"new"));
        assert!(!reloaded.verify("bob", b"secret"));
        assert!(reloaded.verify("carol", b"argon"));
        assert!(reloaded.verify("dave", b"correct horse"));
        assert!(reloaded.verify("erin", b"added"));
    }

    #[test]
    fn pbkdf2_sha512_scheme_writes_mosquittos_form_which_verifies() {
        let mut file = PasswordFile::new();
        file.set_password_with("alice", b"wonderland", HashScheme::Pbkdf2Sha512)
            .expect("test setup: a failure here is the test failing");
        assert!(file.verify("alice", b"wonderland"));
        assert!(!file.verify("alice", b"wonderlanD"));

        let text = file.to_text();
        let hash = text
            .strip_prefix("alice:$7$101$")
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("not a Mosquitto $7$ line: {text}"));
        let (salt, digest) = hash
            .split_once('$')
            .unwrap_or_else(|| panic!("no '$' between salt and hash: {text}"));
        assert_eq!(
            BASE64.decode(salt).map(|s| s.len()).ok(),
            Some(12),
            "{text}"
        );
        assert_eq!(
            BASE64.decode(digest).map(|d| d.len()).ok(),
            Some(64),
            "{text}"
        );

        // Computed here from the written salt, as Mosquitto does.
        let mut expected = [0u8; 64];
        let salt = BASE64
            .decode(salt)
            .expect("test setup: a failure here is the test failing");
        pbkdf2::pbkdf2_hmac::<Sha512>(b"wonderland", &salt, 101, &mut expected);
        assert_eq!(digest, BASE64.encode(expected));

        let reloaded = PasswordFile::parse(path(), &text)
            .expect("test setup: a failure here is the test failing");
        assert!(reloaded.verify("alice", b"wonderland"));

        let mut again = PasswordFile::new();
        again
            .set_password_with("alice", b"wonderland", HashScheme::Pbkdf2Sha512)
            .expect("test setup: a failure here is the test failing");
        assert_ne!(again.to_text(), text, "the salt is not random");
    }

    #[test]
    fn an_unknown_user_is_checked_against_a_user_of_the_file() {
        // A file of Mosquitto users: an unknown name costs a PBKDF2, not an Argon2id
        // a thousand times dearer, which would tell it apart.
        let text = format!("alice:{MOSQUITTO_7}\nbob:{PBKDF2_1000}\n");
        let file = PasswordFile::parse(path(), &text)
            .expect("test setup: a failure here is the test failing");
        for name in ["mallory", "trent", "eve", ""] {
            let decoy = file
                .decoy(name)
                .unwrap_or_else(|| panic!("no decoy for {name:?}"));
            assert!(
                matches!(decoy, StoredHash::Pbkdf2Sha512 { .. }),
                "{decoy:?}"
            );
            assert!(
                std::ptr::eq(decoy, file.decoy(name).expect("same file, same name")),
                "the same name picks another user"
            );
            // Even the password of the user picked does not let the unknown name in.
            assert!(!file.verify(name, b"secret"));
            assert!(!file.verify(name, b"correct horse"));
        }
        assert!(PasswordFile::new().decoy("mallory").is_none());
        assert!(!PasswordFile::new().verify("mallory", b"x"));
    }
}
