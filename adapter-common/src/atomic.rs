//! Replacing a file so that a reader, or a crash, sees the old contents or the new
//! ones and never half of each.

use std::io::{self, Write};
use std::path::Path;

/// Who may read the file once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Only the owner: private keys and password hashes.
    Owner,
    /// Anyone: certificates.
    Public,
}

/// Writes `contents` to a new temporary file beside `path`, flushes it to disk, and
/// renames it over `path`.
///
/// The temporary file has a random name and is created with `O_CREAT | O_EXCL`
/// (`tempfile`), so nothing planted in the directory beforehand (a symlink at a
/// guessable name, say) can make the write land anywhere else, and it never
/// inherits the mode of a file that was already there. On unix it is created with
/// mode 0600 ([`Access::Owner`]) or 0644 ([`Access::Public`]), less the umask. A
/// symlink at `path` itself is replaced, not written through. On failure the
/// temporary file is removed.
pub(crate) fn write(path: &Path, contents: &[u8], access: Access) -> io::Result<()> {
    let dir = parent(path);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(match access {
            Access::Owner => 0o600,
            Access::Public => 0o644,
        }));
    }
    #[cfg(not(unix))]
    let _ = access;
    // Dropping `tmp` (on any error below) removes the temporary file.
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The rename is durable only once the directory entry is on disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// The names of the files in `dir` (a temporary file left over would show).
    fn names_in(dir: &Path) -> Vec<std::ffi::OsString> {
        fs::read_dir(dir)
            .expect("test setup: a failure here is the test failing")
            .map(|e| {
                e.expect("test setup: a failure here is the test failing")
                    .file_name()
            })
            .collect()
    }

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
        assert_eq!(names_in(dir.path()), ["f"]);
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

    /// The process umask, which file creation modes are reduced by (read from
    /// /proc: setting it to find out would race with the other test threads).
    #[cfg(unix)]
    fn umask() -> u32 {
        #[cfg(target_os = "linux")]
        {
            let status = fs::read_to_string("/proc/self/status")
                .expect("test setup: a failure here is the test failing");
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .expect("test setup: a failure here is the test failing");
            u32::from_str_radix(line.trim(), 8)
                .expect("test setup: a failure here is the test failing")
        }
        #[cfg(not(target_os = "linux"))]
        {
            0o022
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path)
            .expect("test setup: a failure here is the test failing")
            .permissions()
            .mode()
            & 0o777
    }

    /// The temporary name the first version of this module used: `.NAME.tmpPID`,
    /// predictable by anyone who can list the directory.
    #[cfg(unix)]
    fn old_temporary_path(path: &Path) -> std::path::PathBuf {
        let name = path
            .file_name()
            .expect("test setup: a failure here is the test failing")
            .to_string_lossy()
            .into_owned();
        path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
    }

    /// Each file gets the contents and mode asked for, whatever the file it replaces
    /// had: a private key written over a public file is not left world-readable.
    #[cfg(unix)]
    #[test]
    fn written_file_has_the_contents_and_mode_asked_for() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let path = dir.path().join("f");
        let umask = umask();
        for (access, contents, expected) in [
            (Access::Public, &b"public"[..], 0o644),
            (Access::Owner, b"private", 0o600),
            (Access::Public, b"public again", 0o644),
        ] {
            write(&path, contents, access).expect("test setup: a failure here is the test failing");
            assert_eq!(
                fs::read(&path).expect("test setup: a failure here is the test failing"),
                contents
            );
            let m = mode(&path);
            assert_eq!(m, expected & !umask, "{access:?}: mode {m:o}");
        }
    }

    /// A symlink planted at the old predictable temporary name (pointing at a file
    /// the attacker wants overwritten, or wants to read the secret from) is neither
    /// followed nor renamed into place. The first version opened that name with
    /// O_CREAT | O_TRUNC, so it wrote the contents into the symlink's target and
    /// then renamed the symlink over `path`: both assertions below would fail.
    #[cfg(unix)]
    #[test]
    fn symlink_at_a_predictable_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let elsewhere =
            tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let victim = elsewhere.path().join("victim");
        fs::write(&victim, b"untouched").expect("test setup: a failure here is the test failing");
        let path = dir.path().join("server.key");
        let planted = old_temporary_path(&path);
        std::os::unix::fs::symlink(&victim, &planted)
            .expect("test setup: a failure here is the test failing");

        write(&path, b"secret", Access::Owner).expect("the write succeeds beside the symlink");

        assert_eq!(
            fs::read(&victim).expect("test setup: a failure here is the test failing"),
            b"untouched",
            "the write went through the planted symlink"
        );
        let meta =
            fs::symlink_metadata(&path).expect("test setup: a failure here is the test failing");
        assert!(meta.file_type().is_file(), "{path:?} is not a regular file");
        assert_eq!(
            fs::read(&path).expect("test setup: a failure here is the test failing"),
            b"secret"
        );
        let m = mode(&path);
        assert_eq!(m, 0o600 & !umask(), "mode {m:o}");
        // The planted link is left as it was, still pointing at the victim.
        assert_eq!(
            fs::read_link(&planted).expect("test setup: a failure here is the test failing"),
            victim
        );
    }

    /// A world-readable file left at the old predictable temporary name (by a crash,
    /// with the pid reused, or planted) is not reused: the first version truncated
    /// and kept it, mode and all, so a private key became readable by everyone.
    #[cfg(unix)]
    #[test]
    fn stale_file_at_a_predictable_temporary_name_is_not_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let path = dir.path().join("passwords");
        let stale = old_temporary_path(&path);
        fs::write(&stale, b"stale").expect("test setup: a failure here is the test failing");
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666))
            .expect("test setup: a failure here is the test failing");

        write(&path, b"hashes", Access::Owner)
            .expect("test setup: a failure here is the test failing");

        let m = mode(&path);
        assert_eq!(m, 0o600 & !umask(), "mode {m:o}");
        assert_eq!(
            fs::read(&path).expect("test setup: a failure here is the test failing"),
            b"hashes"
        );
        assert_eq!(
            fs::read(&stale).expect("test setup: a failure here is the test failing"),
            b"stale"
        );
    }

    /// A symlink at the target itself is replaced by the new file, not written
    /// through.
    #[cfg(unix)]
    #[test]
    fn symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").expect("test setup: a failure here is the test failing");
        let path = dir.path().join("ca.pem");
        std::os::unix::fs::symlink(&victim, &path)
            .expect("test setup: a failure here is the test failing");

        write(&path, b"certificate", Access::Public)
            .expect("test setup: a failure here is the test failing");

        assert!(fs::symlink_metadata(&path)
            .expect("test setup: a failure here is the test failing")
            .file_type()
            .is_file());
        assert_eq!(
            fs::read(&path).expect("test setup: a failure here is the test failing"),
            b"certificate"
        );
        assert_eq!(
            fs::read(&victim).expect("test setup: a failure here is the test failing"),
            b"untouched"
        );
    }

    /// When the rename fails (here: a directory is in the way) the error is
    /// reported and the temporary file is removed.
    #[test]
    fn failed_rename_is_an_error_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("test setup: a failure here is the test failing");
        let path = dir.path().join("f");
        fs::create_dir(&path).expect("test setup: a failure here is the test failing");
        fs::write(path.join("inside"), b"x")
            .expect("test setup: a failure here is the test failing");
        assert!(write(&path, b"x", Access::Public).is_err());
        assert_eq!(names_in(dir.path()), ["f"]);
    }
}
