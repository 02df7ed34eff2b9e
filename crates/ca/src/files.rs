//! Writing certificate material: whole files or nothing, private keys readable by their owner only.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Who may read a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Certificates: 0644.
    Public,
    /// Private keys: 0600.
    Secret,
}

impl Visibility {
    fn mode(self) -> u32 {
        match self {
            Visibility::Public => 0o644,
            Visibility::Secret => 0o600,
        }
    }
}

/// Replaces `path` with `contents` atomically: readers see the old file or the whole new one, and a
/// crash never leaves half a key behind.
pub fn write_atomically(
    path: &Path,
    contents: &[u8],
    visibility: Visibility,
) -> Result<(), WriteError> {
    let error = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    let staging = staging_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(visibility.mode())
            .open(&staging)?;
        // Explicitly, so the umask cannot widen a key's or narrow a certificate's permissions.
        file.set_permissions(Permissions::from_mode(visibility.mode()))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&staging, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&staging);
    }
    result.map_err(error)
}

/// A name next to `path`, unique to this process and call, for staging a file or directory.
pub(crate) fn staging_path(path: &Path) -> PathBuf {
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).expect("the system random number generator failed");
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        u64::from_ne_bytes(nonce)
    ))
}

/// Makes a rename durable: the directory entry lives in the parent.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        Some(parent) => File::open(parent)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_with_the_right_modes_and_leaves_no_staging_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca-key.pem");
        write_atomically(&key, b"first", Visibility::Secret).unwrap();
        write_atomically(&key, b"second", Visibility::Secret).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"second");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let cert = dir.path().join("ca-cert.pem");
        write_atomically(&cert, b"cert", Visibility::Public).unwrap();
        assert_eq!(
            fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
            0o644
        );

        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_missing_directory_is_reported_with_the_path() {
        let err = write_atomically(
            Path::new("/nonexistent/dir/x.pem"),
            b"x",
            Visibility::Public,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot write /nonexistent/dir/x.pem")
        );
    }
}
