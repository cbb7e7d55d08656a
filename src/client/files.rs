//! The certificate directory a workload reads: `cert.pem`, `key.pem`, `ca.pem` and, when
//! asked for, `crls.pem`, always replaced together.
//!
//! Layout, so that a reader never pairs a key with a certificate it does not belong to:
//!
//! ```text
//! DIR/..gen-<time>-<random>/{cert,key,ca,crls}.pem   one complete set per change
//! DIR/..data -> ..gen-<time>-<random>                 the current set, swapped by rename
//! DIR/cert.pem -> ..data/cert.pem                     stable names for readers
//! ```
//!
//! A new set is written into a fresh generation directory and synced; then one `rename` of a
//! symlink makes `..data` point at it. Every path a reader opens resolves through `..data`
//! at that instant, so each file it opens is from one complete set, and a reader that reads
//! `cert.pem`, `key.pem` and `cert.pem` again and finds the two certificates equal has a key
//! that matches. The previous generation is kept until the next change, so that a reader that
//! resolved `..data` just before a swap can still open its files. Writers take an exclusive
//! lock on `DIR/.lock`, so `sigil renew` and `sigil agent` on the same directory take turns.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The symlink naming the current generation.
const DATA_LINK: &str = "..data";
/// Prefix of generation directories.
const GENERATION_PREFIX: &str = "..gen-";
/// The lock file writers hold while they change the directory.
const LOCK_FILE: &str = ".lock";

pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
pub const CA_FILE: &str = "ca.pem";
pub const CRLS_FILE: &str = "crls.pem";

/// One complete set of files.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    /// The leaf followed by the intermediate, PEM.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The trust bundle, PEM.
    pub ca_pem: String,
    /// Both CRLs, PEM, when the directory carries them.
    pub crls_pem: Option<String>,
}

// Written by hand so that the key never reaches a log through `{:?}`.
impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("chain_pem", &self.chain_pem)
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .field("crls_pem", &self.crls_pem.as_ref().map(|_| "<crls>"))
            .finish()
    }
}

/// A certificate directory.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CertDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of one of the stable names (`cert.pem`, ...).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads the current set, or `None` when the directory holds no certificate yet.
    ///
    /// All files come from the same generation. A directory written by something else, with
    /// plain `cert.pem`, `key.pem` and `ca.pem`, is read as it is.
    pub fn read(&self) -> anyhow::Result<Option<Material>> {
        let base = match fs::read_link(self.dir.join(DATA_LINK)) {
            Ok(target) => self.dir.join(target),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.dir.clone(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading {}", self.file(DATA_LINK).display()))
            }
        };
        let chain_pem = match fs::read_to_string(base.join(CERT_FILE)) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading {}", self.file(CERT_FILE).display()))
            }
        };
        let key_pem = crate::ca::keyfile::read_secret(&base.join(KEY_FILE))?;
        let ca_pem = fs::read_to_string(base.join(CA_FILE))
            .with_context(|| format!("reading {}", self.file(CA_FILE).display()))?;
        let crls_pem = match fs::read_to_string(base.join(CRLS_FILE)) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading {}", self.file(CRLS_FILE).display()))
            }
        };
        Ok(Some(Material {
            chain_pem,
            key_pem,
            ca_pem,
            crls_pem,
        }))
    }

    /// Makes `m` the current set, atomically, and removes generations older than the one it
    /// replaces.
    pub fn write(&self, m: &Material) -> anyhow::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let _lock = DirLock::acquire(&self.dir)?;

        // 1. A complete, synced generation.
        let name = generation_name()?;
        let generation = self.dir.join(&name);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&generation)
            .with_context(|| format!("creating {}", generation.display()))?;
        let mut files = vec![
            (CERT_FILE, m.chain_pem.as_str(), 0o644),
            (KEY_FILE, m.key_pem.as_str(), 0o600),
            (CA_FILE, m.ca_pem.as_str(), 0o644),
        ];
        if let Some(crls) = &m.crls_pem {
            files.push((CRLS_FILE, crls.as_str(), 0o644));
        }
        let written = (|| {
            for (file, contents, mode) in &files {
                write_synced(&generation.join(file), contents.as_bytes(), *mode)?;
            }
            sync_dir(&generation)
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&generation);
            return Err(e);
        }

        // 2. The swap: one rename makes the whole set current.
        let previous = fs::read_link(self.dir.join(DATA_LINK)).ok();
        replace_symlink(&self.dir, DATA_LINK, Path::new(&name))?;

        // 3. Stable names, made once; they never change after that.
        for (file, _, _) in &files {
            let target = Path::new(DATA_LINK).join(file);
            if fs::read_link(self.dir.join(file)).ok().as_deref() != Some(target.as_path()) {
                replace_symlink(&self.dir, file, &target)?;
            }
        }
        if m.crls_pem.is_none() {
            // A CRL link left from an earlier run with --crl would dangle; a missing file is
            // clearer to a reader than a broken link.
            if fs::symlink_metadata(self.dir.join(CRLS_FILE)).is_ok() {
                let _ = fs::remove_file(self.dir.join(CRLS_FILE));
            }
        }
        sync_dir(&self.dir)?;

        // 4. Old generations go, except the one just replaced.
        self.remove_generations_except(&[
            Path::new(&name),
            previous.as_deref().unwrap_or(Path::new("")),
        ]);
        Ok(())
    }

    fn remove_generations_except(&self, keep: &[&Path]) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_generation = name.to_string_lossy().starts_with(GENERATION_PREFIX);
            if is_generation && !keep.iter().any(|k| k.as_os_str() == name) {
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(
                        dir = %entry.path().display(),
                        error = %e,
                        "removing an old generation failed"
                    );
                }
            }
        }
    }
}

/// Generation names sort by time, and carry random bits so two writers never collide.
fn generation_name() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut r = [0u8; 4];
    ring::rand::SystemRandom::new()
        .fill(&mut r)
        .map_err(|_| anyhow::anyhow!("the random generator failed"))?;
    let now = time::OffsetDateTime::now_utc();
    Ok(format!(
        "{GENERATION_PREFIX}{}.{:09}-{}",
        now.unix_timestamp(),
        now.nanosecond(),
        hex::encode(r)
    ))
}

fn write_synced(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Points `dir/name` at `target` in one step: a new symlink beside it, renamed over it.
fn replace_symlink(dir: &Path, name: &str, target: &Path) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("creating symlink {}", tmp.display()))?;
    let path = dir.join(name);
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming symlink onto {}", path.display()));
    }
    Ok(())
}

/// An exclusive `flock` on `DIR/.lock`, released when dropped (the file is closed).
struct DirLock {
    _held: fs::File,
}

impl DirLock {
    fn acquire(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock only reads the descriptor, which `f` keeps open for the call.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            bail!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(DirLock { _held: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn material(tag: &str, crls: bool) -> Material {
        Material {
            chain_pem: format!("cert {tag}"),
            key_pem: format!("key {tag}"),
            ca_pem: format!("ca {tag}"),
            crls_pem: crls.then(|| format!("crls {tag}")),
        }
    }

    #[test]
    fn writes_replace_the_whole_set_and_keep_one_previous_generation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path().join("certs"));
        assert!(dir.read().unwrap().is_none());

        dir.write(&material("1", true)).unwrap();
        assert_eq!(dir.read().unwrap(), Some(material("1", true)));
        let key_mode = fs::metadata(dir.file(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert_eq!(fs::read_to_string(dir.file(CERT_FILE)).unwrap(), "cert 1");

        for i in 2..=4 {
            dir.write(&material(&i.to_string(), true)).unwrap();
        }
        assert_eq!(fs::read_to_string(dir.file(KEY_FILE)).unwrap(), "key 4");
        let generations = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(GENERATION_PREFIX)
            })
            .count();
        assert_eq!(
            generations, 2,
            "the current and the previous generation remain"
        );

        dir.write(&material("5", false)).unwrap();
        assert_eq!(dir.read().unwrap(), Some(material("5", false)));
        assert!(fs::symlink_metadata(dir.file(CRLS_FILE)).is_err());
    }

    #[test]
    fn plain_files_from_elsewhere_are_read_and_then_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path());
        fs::write(dir.file(CERT_FILE), "cert 0").unwrap();
        fs::write(dir.file(CA_FILE), "ca 0").unwrap();
        let key = dir.file(KEY_FILE);
        fs::write(&key, "key 0").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(dir.read().unwrap(), Some(material("0", false)));

        dir.write(&material("1", false)).unwrap();
        assert!(fs::symlink_metadata(dir.file(CERT_FILE))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(dir.read().unwrap(), Some(material("1", false)));
    }

    #[test]
    fn a_readable_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path());
        dir.write(&material("1", false)).unwrap();
        let target = fs::canonicalize(dir.file(KEY_FILE)).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let err = dir.read().unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
