//! Replacing a file so that a reader, or a crash, sees the old contents or the new
//! ones and never half of each.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Who may read the file once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Only the owner: private keys and password hashes.
    Owner,
    /// Anyone: certificates.
    Public,
}

/// Writes `contents` to a temporary file beside `path`, flushes it to disk, and
/// renames it over `path`.
pub(crate) fn write(path: &Path, contents: &[u8], access: Access) -> io::Result<()> {
    let tmp = temporary_path(path);
    let result = write_and_rename(&tmp, path, contents, access);
    if result.is_err() {
        // The temporary file is ours and useless now; a failure to remove it changes
        // nothing the caller can act on, so the original error is the one to report.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_and_rename(tmp: &Path, path: &Path, contents: &[u8], access: Access) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match access {
            Access::Owner => 0o600,
            Access::Public => 0o644,
        });
    }
    #[cfg(not(unix))]
    let _ = access;
    let mut file = options.open(tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)?;
    sync_parent(path)
}

/// The rename is durable only once the directory entry is on disk.
fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let path = dir.path().join("f");
        write(&path, b"one", Access::Public)
            .expect("test setup: a failure here is the test failing");
        write(&path, b"two", Access::Owner)
            .expect("test setup: a failure here is the test failing");
        assert_eq!(
            fs::read(&path).expect("test setup: a failure here is the test failing"),
            b"two"
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("test setup: a failure here is the test failing")
            .map(|e| {
                e.expect("test setup: a failure here is the test failing")
                    .file_name()
            })
            .collect();
        assert_eq!(names, ["f"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path)
                .expect("test setup: a failure here is the test failing")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let path = dir.path().join("no/such/dir/f");
        assert!(write(&path, b"x", Access::Owner).is_err());
    }
}
