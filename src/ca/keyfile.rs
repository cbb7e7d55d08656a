//! Reading and writing private key files. Keys are written 0600 and never overwritten in
//! place; a key file that group or others can read is refused, since a CA whose key has been
//! readable cannot vouch that it was not copied.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};

/// Writes a new secret file with mode 0600; fails if the file already exists, so `init` never
/// replaces a key that certificates already depend on.
pub fn write_new_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Atomically replaces `path` with `contents`: write beside it, fsync, rename, fsync the
/// folder. `mode` applies to the new file before any byte is written.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .context("file path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
        if let Ok(d) = fs::File::open(dir) {
            // A failed directory fsync only weakens durability across a power cut; the
            // rename itself has happened.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a secret file after checking that only its owner can read it.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "refusing to use {}: it is readable by group or others (mode {:o}); \
             make it private with `chmod 600 {}` and check whether the secret in it was copied",
            path.display(),
            mode,
            path.display()
        );
    }
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_new_secret(&p, b"secret").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            write_new_secret(&p, b"other").is_err(),
            "must not overwrite a key"
        );
        assert_eq!(read_secret(&p).unwrap(), "secret");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cert.pem");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
