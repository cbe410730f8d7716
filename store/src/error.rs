//! [`StoreError`]: what went wrong, always with the file it concerns.

use std::fmt;
use std::path::{Path, PathBuf};

/// What kind of problem a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Another brokk process (or another `open` in this one) has the store open.
    InUse,
    /// The file is damaged: redb refused it, or a record did not decode. Opening
    /// with `recover` moves it aside and salvages what decodes.
    Damaged,
    /// The file was written in a store format this brokk does not know (a newer
    /// brokk wrote it). Not treated as damage: `recover` does not touch it.
    UnknownVersion,
    /// The operating system refused a file operation (permissions, disk full...).
    Io,
    /// The writer thread failed or is gone.
    Writer,
    /// Recovery itself failed.
    Recovery,
}

/// A store failure. Its `Display` names the file and the problem, and for a damaged
/// file says how to recover.
#[derive(Debug)]
pub struct StoreError {
    path: PathBuf,
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    pub(crate) fn new(path: &Path, kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            path: path.to_path_buf(),
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn damaged(path: &Path, message: impl Into<String>) -> Self {
        Self::new(path, StoreErrorKind::Damaged, message)
    }

    pub(crate) fn io(path: &Path, what: &str, e: std::io::Error) -> Self {
        Self::new(path, StoreErrorKind::Io, format!("{what}: {e}"))
    }

    /// The file (or directory) concerned.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kind of problem.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The problem, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether opening with `recover` would deal with it.
    pub fn is_damage(&self) -> bool {
        self.kind == StoreErrorKind::Damaged
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)?;
        if self.kind == StoreErrorKind::Damaged {
            f.write_str(": the file is damaged; start with --recover to move it aside")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {}

/// How a redb error is classified when opening or reading the file.
pub(crate) fn from_redb(path: &Path, what: &str, e: redb::Error) -> StoreError {
    use redb::Error;
    let kind = match &e {
        Error::DatabaseAlreadyOpen | Error::LockProtocolMismatch => {
            return StoreError::new(
                path,
                StoreErrorKind::InUse,
                format!("{what}: is in use by another brokk process ({e})"),
            )
        }
        Error::Corrupted(_) | Error::UpgradeRequired(_) | Error::RepairAborted => {
            StoreErrorKind::Damaged
        }
        Error::TableTypeMismatch { .. }
        | Error::TypeDefinitionChanged { .. }
        | Error::TableIsMultimap(_)
        | Error::TableIsNotMultimap(_) => StoreErrorKind::Damaged,
        Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => StoreErrorKind::Damaged,
        Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => StoreErrorKind::Damaged,
        // Everything else (I/O, an unsupported platform, a bug) is not the file's fault:
        // moving the file aside would not help.
        _ => StoreErrorKind::Io,
    };
    StoreError::new(path, kind, format!("{what}: {e}"))
}
