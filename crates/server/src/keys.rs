//! The data directory's key material (protocol.md §3, §4.2, §6.4).
//!
//! ```text
//! <data_dir>/                      0700
//!   keys/                          0700
//!     000001-<kid>.key             0600  b64u(X25519 secret) "\n"
//!     000002-<kid>.key             0600  the highest sequence is the current key
//!   server_secret                  0600  b64u(32 random bytes) "\n"
//!   credentials.sqlite3            0600  (the SQLite credential store)
//! ```
//!
//! Every node of a fleet serves the same key set and `server_secret`, so the
//! directory is shared or copied as a whole. Files are written atomically
//! (a temporary file in the same directory, then linked into place without
//! overwriting anything) with mode 0600, and a key or secret file that group
//! or others may access is refused.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use wsgate_proto::b64;
use wsgate_proto::keys::{KeySetResponse, PublicKeyEntry, ServerKeyPair};
use wsgate_proto::rand_core::CryptoRng;
use zeroize::Zeroizing;

const KEYS_DIR: &str = "keys";
const SECRET_FILE: &str = "server_secret";
const CREDENTIALS_FILE: &str = "credentials.sqlite3";
const KEY_SUFFIX: &str = ".key";

/// The server keys: the current key first, then older keys still accepted.
/// Never empty.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<ServerKeyPair>,
}

impl KeySet {
    /// A key set from its current key and the older keys still accepted
    /// (newest first).
    pub fn new(current: ServerKeyPair, older: impl IntoIterator<Item = ServerKeyPair>) -> Self {
        let mut keys = vec![current];
        keys.extend(older);
        Self { keys }
    }

    /// The key new logins are bound to.
    pub fn current(&self) -> &ServerKeyPair {
        &self.keys[0]
    }

    /// Every accepted key, current first.
    pub fn all(&self) -> &[ServerKeyPair] {
        &self.keys
    }

    /// The accepted key with this `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&ServerKeyPair> {
        self.keys.iter().find(|k| k.kid() == kid)
    }

    /// The accepted key with this fingerprint `fp`.
    pub fn by_fingerprint(&self, fp: &str) -> Option<&ServerKeyPair> {
        self.keys.iter().find(|k| k.fingerprint() == fp)
    }

    /// Every `kid`, current first.
    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.kid().to_owned()).collect()
    }

    /// The body of `GET /auth/key`.
    pub fn response(&self) -> KeySetResponse {
        KeySetResponse {
            keys: self
                .keys
                .iter()
                .map(|k| PublicKeyEntry::for_public_key(k.public_bytes()))
                .collect(),
        }
    }
}

/// The fleet-wide `server_secret` (unknown-user salts, protocol.md §4.2).
/// Zeroized on drop, never printed.
#[derive(Clone)]
pub struct ServerSecret(Zeroizing<[u8; 32]>);

impl ServerSecret {
    /// A secret from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw secret.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..]
    }
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(..)")
    }
}

/// A problem with the data directory's key files. Each message names the
/// file, what is wrong with it, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The data directory does not exist.
    #[error(
        "data directory {} does not exist; run `wsgate keygen --data-dir {}` to create it \
         (or copy it from another node of the fleet)",
        dir.display(), dir.display()
    )]
    NoDataDir {
        /// The data directory.
        dir: PathBuf,
    },
    /// No server key in `keys/`.
    #[error(
        "no server key in {}; run `wsgate keygen --data-dir {}` to create one \
         (or copy the keys from another node of the fleet)",
        keys_dir.display(), dir.display()
    )]
    NoKeys {
        /// The data directory.
        dir: PathBuf,
        /// Its `keys/` directory.
        keys_dir: PathBuf,
    },
    /// `server_secret` is missing while keys exist.
    #[error(
        "{} is missing; copy it from another node of the fleet (all nodes must share it) \
         or restore it from a backup; a single node may create a new one with \
         `wsgate keygen --data-dir {}`",
        path.display(), dir.display()
    )]
    NoSecret {
        /// The data directory.
        dir: PathBuf,
        /// The missing file.
        path: PathBuf,
    },
    /// A key or secret file that group or others may access.
    #[error(
        "{} is accessible by group or others (mode {mode:03o}); fix permissions with \
         `chmod 600 {}`",
        path.display(), path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file whose content or name is not what wsgate writes.
    #[error(
        "{} is not a valid key file: {reason}; restore it from a backup, or remove it and \
         run `wsgate keygen --data-dir {}` for a new key",
        path.display(), dir.display()
    )]
    BadKey {
        /// The data directory.
        dir: PathBuf,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `server_secret` that is not 32 bytes of b64u.
    #[error(
        "{} is not a valid server secret: {reason}; copy it from another node of the fleet \
         or restore it from a backup",
        path.display()
    )]
    BadSecret {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `remove_key` with a `kid` that is not in the directory.
    #[error("no key with kid {kid:?} in {}; the keys there are: {}", keys_dir.display(), known.join(", "))]
    UnknownKid {
        /// The requested kid.
        kid: String,
        /// The `keys/` directory.
        keys_dir: PathBuf,
        /// The kids present, current first.
        known: Vec<String>,
    },
    /// `remove_key` of the only key.
    #[error(
        "refusing to remove key {kid:?}: it is the only key in {}; run \
         `wsgate keygen --data-dir {}` first to create its successor",
        keys_dir.display(), dir.display()
    )]
    LastKey {
        /// The kid.
        kid: String,
        /// The data directory.
        dir: PathBuf,
        /// The `keys/` directory.
        keys_dir: PathBuf,
    },
    /// An IO failure.
    #[error(
        "cannot {action} {}: {source}; check that the path is right and that wsgate's user \
         may access it",
        path.display()
    )]
    Io {
        /// What wsgate was doing.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// One key file as named on disk.
#[derive(Debug, Clone)]
struct KeyFile {
    sequence: u64,
    kid: String,
    path: PathBuf,
}

/// The data directory (`data_dir` in the configuration).
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// The data directory at `path` (nothing is touched yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory (mode 0700, parents too) if it is missing,
    /// without any key; an existing directory is left as it is. For tools
    /// that put something else there first, such as the credential store.
    pub fn ensure_exists(&self) -> Result<(), KeyFileError> {
        create_private_dir(&self.path)
    }

    /// `<dir>/credentials.sqlite3`.
    pub fn credentials_path(&self) -> PathBuf {
        self.path.join(CREDENTIALS_FILE)
    }

    /// `<dir>/sessions.sqlite3`: the session journal of a single node
    /// running with in-process state (see `store::PersistentSessions`).
    pub fn sessions_path(&self) -> PathBuf {
        self.path.join("sessions.sqlite3")
    }

    /// `<dir>/keys`.
    pub fn keys_path(&self) -> PathBuf {
        self.path.join(KEYS_DIR)
    }

    /// `<dir>/server_secret`.
    pub fn secret_path(&self) -> PathBuf {
        self.path.join(SECRET_FILE)
    }

    /// Creates the directory (0700) on first run with one key (0600 file)
    /// and a `server_secret` (0600); loads on later runs.
    ///
    /// "First run" means neither a key nor `server_secret` exists. A
    /// directory holding one but not the other is an error (as in
    /// [`load`](Self::load)): silently creating the missing half would split
    /// a fleet.
    pub fn load_or_init(
        &self,
        rng: &mut impl CryptoRng,
    ) -> Result<(KeySet, ServerSecret), KeyFileError> {
        let fresh = !self.path.exists()
            || (!exists(&self.secret_path())? && self.list_key_files_if_any()?.is_empty());
        if fresh {
            self.ensure_dirs()?;
            self.write_secret(rng)?;
            self.write_key(rng, 1)?;
        }
        self.load()
    }

    /// Loads the key set and `server_secret`; never creates anything.
    pub fn load(&self) -> Result<(KeySet, ServerSecret), KeyFileError> {
        if !self.path.is_dir() {
            return Err(KeyFileError::NoDataDir {
                dir: self.path.clone(),
            });
        }
        let files = self.list_key_files_if_any()?;
        if files.is_empty() {
            return Err(self.no_keys());
        }
        let mut keys = Vec::with_capacity(files.len());
        for file in files.iter().rev() {
            let secret = self.read_b64u_file(&file.path, |reason| KeyFileError::BadKey {
                dir: self.path.clone(),
                path: file.path.clone(),
                reason,
            })?;
            let pair = ServerKeyPair::from_secret(*secret).map_err(|e| KeyFileError::BadKey {
                dir: self.path.clone(),
                path: file.path.clone(),
                reason: e.to_string(),
            })?;
            if pair.kid() != file.kid {
                return Err(KeyFileError::BadKey {
                    dir: self.path.clone(),
                    path: file.path.clone(),
                    reason: format!(
                        "the file name says kid {:?} but the key's kid is {:?}",
                        file.kid,
                        pair.kid()
                    ),
                });
            }
            keys.push(pair);
        }
        let mut keys = keys.into_iter();
        let current = keys.next().ok_or_else(|| self.no_keys())?;
        let key_set = KeySet::new(current, keys);

        let secret_path = self.secret_path();
        if !exists(&secret_path)? {
            return Err(KeyFileError::NoSecret {
                dir: self.path.clone(),
                path: secret_path,
            });
        }
        let secret = self.read_b64u_file(&secret_path, |reason| KeyFileError::BadSecret {
            path: secret_path.clone(),
            reason,
        })?;
        Ok((key_set, ServerSecret(secret)))
    }

    /// Generates a key that becomes the current one; older keys stay
    /// accepted. Creates the directory if needed, and `server_secret` if it
    /// is missing (so `wsgate keygen` initializes a fresh directory).
    pub fn generate_key(&self, rng: &mut impl CryptoRng) -> Result<ServerKeyPair, KeyFileError> {
        self.ensure_dirs()?;
        if !exists(&self.secret_path())? {
            self.write_secret(rng)?;
        }
        let next = self
            .list_key_files_if_any()?
            .last()
            .map_or(1, |f| f.sequence.saturating_add(1));
        self.write_key(rng, next)
    }

    /// Removes the key `kid`; refuses to remove the only key. Removing the
    /// current key makes the next newest current.
    pub fn remove_key(&self, kid: &str) -> Result<(), KeyFileError> {
        let files = self.list_key_files_if_any()?;
        let Some(file) = files.iter().find(|f| f.kid == kid) else {
            return Err(KeyFileError::UnknownKid {
                kid: kid.to_owned(),
                keys_dir: self.keys_path(),
                known: files.iter().rev().map(|f| f.kid.clone()).collect(),
            });
        };
        if files.len() == 1 {
            return Err(KeyFileError::LastKey {
                kid: kid.to_owned(),
                dir: self.path.clone(),
                keys_dir: self.keys_path(),
            });
        }
        fs::remove_file(&file.path).map_err(io_error("remove", &file.path))?;
        sync_dir(&self.keys_path())
    }

    fn no_keys(&self) -> KeyFileError {
        KeyFileError::NoKeys {
            dir: self.path.clone(),
            keys_dir: self.keys_path(),
        }
    }

    fn ensure_dirs(&self) -> Result<(), KeyFileError> {
        self.ensure_exists()?;
        create_private_dir(&self.keys_path())
    }

    fn write_secret(&self, rng: &mut impl CryptoRng) -> Result<(), KeyFileError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut bytes[..]);
        let path = self.secret_path();
        match write_new_private_file(&path, &b64u_line(&bytes[..])) {
            // Another process initialized it first: use theirs.
            Err(KeyFileError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                Ok(())
            }
            other => other,
        }
    }

    fn write_key(
        &self,
        rng: &mut impl CryptoRng,
        sequence: u64,
    ) -> Result<ServerKeyPair, KeyFileError> {
        let pair = ServerKeyPair::generate(rng);
        let path = self
            .keys_path()
            .join(format!("{sequence:06}-{}{KEY_SUFFIX}", pair.kid()));
        write_new_private_file(&path, &b64u_line(pair.secret_bytes()))?;
        Ok(pair)
    }

    /// The key files, oldest first; empty if `keys/` does not exist.
    fn list_key_files_if_any(&self) -> Result<Vec<KeyFile>, KeyFileError> {
        let keys_dir = self.keys_path();
        let entries = match fs::read_dir(&keys_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("read the directory", &keys_dir)(e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("read the directory", &keys_dir))?;
            let name = entry.file_name();
            let path = entry.path();
            let Some(name) = name.to_str() else { continue };
            // Temporary files of an interrupted write, editor backups, READMEs.
            let Some(stem) = name.strip_suffix(KEY_SUFFIX) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let bad = |reason: &str| KeyFileError::BadKey {
                dir: self.path.clone(),
                path: path.clone(),
                reason: reason.to_owned(),
            };
            let (sequence, kid) = stem
                .split_once('-')
                .ok_or_else(|| bad("the name is not <sequence>-<kid>.key"))?;
            if sequence.is_empty() || !sequence.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(
                    "the name does not start with a decimal sequence number",
                ));
            }
            let sequence: u64 = sequence
                .parse()
                .map_err(|_| bad("the sequence number is too large"))?;
            if b64::decode_b64u_array::<8>(kid).is_err() {
                return Err(bad("the kid in the name is not 8 bytes of b64u"));
            }
            files.push(KeyFile {
                sequence,
                kid: kid.to_owned(),
                path,
            });
        }
        files.sort_by_key(|f| f.sequence);
        for pair in files.windows(2) {
            if pair[0].sequence == pair[1].sequence {
                return Err(KeyFileError::BadKey {
                    dir: self.path.clone(),
                    path: pair[1].path.clone(),
                    reason: format!(
                        "{} has the same sequence number, so which key is current is \
                         ambiguous",
                        pair[0].path.display()
                    ),
                });
            }
        }
        for (i, f) in files.iter().enumerate() {
            if files[..i].iter().any(|g| g.kid == f.kid) {
                return Err(KeyFileError::BadKey {
                    dir: self.path.clone(),
                    path: f.path.clone(),
                    reason: format!("another file holds the same key {:?}", f.kid),
                });
            }
        }
        Ok(files)
    }

    /// Reads a private file holding b64u of 32 bytes and a newline.
    fn read_b64u_file(
        &self,
        path: &Path,
        bad: impl Fn(String) -> KeyFileError,
    ) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
        check_private(path)?;
        let text = Zeroizing::new(fs::read(path).map_err(io_error("read", path))?);
        let text = std::str::from_utf8(&text).map_err(|_| bad("it is not text".to_owned()))?;
        let trimmed = text.trim_ascii();
        if trimmed.is_empty() {
            return Err(bad("it is empty".to_owned()));
        }
        b64::decode_b64u_array::<32>(trimmed)
            .map(Zeroizing::new)
            .map_err(|_| bad("it does not hold 32 bytes of unpadded base64url".to_owned()))
    }
}

fn b64u_line(bytes: &[u8]) -> Zeroizing<String> {
    let mut line = Zeroizing::new(b64::encode_b64u(bytes));
    line.push('\n');
    line
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KeyFileError {
    let path = path.to_path_buf();
    move |source| KeyFileError::Io {
        action,
        path,
        source,
    }
}

fn exists(path: &Path) -> Result<bool, KeyFileError> {
    path.try_exists().map_err(io_error("look for", path))
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> Result<(), KeyFileError> {
    use std::os::unix::fs::DirBuilderExt as _;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(io_error("create the directory", path)(e)),
    }
}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> Result<(), KeyFileError> {
    fs::create_dir_all(path).map_err(io_error("create the directory", path))
}

/// Refuses a file that group or others may access.
#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(path)
        .map_err(io_error("read the metadata of", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), KeyFileError> {
    Ok(())
}

/// Writes `content` to a new file at `path` with mode 0600, atomically: a
/// temporary file in the same directory, synced, then hard-linked into place
/// (which, unlike rename, never replaces an existing file). Fails with an
/// `Io` error of kind `AlreadyExists` if `path` exists.
fn write_new_private_file(path: &Path, content: &str) -> Result<(), KeyFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    // A leftover of an interrupted write by a process with the same id.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_error("remove the stale temporary file", &tmp)(e));
        }
        _ => {}
    }
    let result = write_tmp(&tmp, content).and_then(|()| link_into_place(&tmp, path));
    let _ = fs::remove_file(&tmp);
    result?;
    sync_dir(dir)
}

fn write_tmp(tmp: &Path, content: &str) -> Result<(), KeyFileError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(tmp).map_err(io_error("create", tmp))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", tmp))
}

fn link_into_place(tmp: &Path, path: &Path) -> Result<(), KeyFileError> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(io_error("create", path)(e)),
        // A file system without hard links: fall back to rename, after
        // checking (racily) that nothing is replaced.
        Err(_) => {
            if exists(path)? {
                return Err(io_error("create", path)(io::Error::from(
                    io::ErrorKind::AlreadyExists,
                )));
            }
            fs::rename(tmp, path).map_err(io_error("create", path))
        }
    }
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), KeyFileError> {
    #[cfg(unix)]
    {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync the directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn key_files(dir: &DataDir) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.keys_path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn fresh() -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        (tmp, dir)
    }

    #[test]
    fn init_creates_a_private_directory_with_one_key_and_a_secret() {
        let (_tmp, dir) = fresh();
        let (keys, secret) = dir.load_or_init(&mut rand::rng()).unwrap();
        assert_eq!(keys.all().len(), 1);
        assert_eq!(secret.as_bytes().len(), 32);
        let names = key_files(&dir);
        assert_eq!(
            names,
            [format!("000001-{}.key", keys.current().kid())],
            "no temporary file left behind"
        );
        let key_path = dir.keys_path().join(&names[0]);
        let text = fs::read_to_string(&key_path).unwrap();
        assert_eq!(
            text,
            format!("{}\n", b64::encode_b64u(keys.current().secret_bytes()))
        );
        let secret_text = fs::read_to_string(dir.secret_path()).unwrap();
        assert_eq!(
            secret_text,
            format!("{}\n", b64::encode_b64u(secret.as_bytes()))
        );
        assert_eq!(
            dir.credentials_path(),
            dir.path().join("credentials.sqlite3")
        );
        #[cfg(unix)]
        {
            assert_eq!(mode(dir.path()), 0o700);
            assert_eq!(mode(&dir.keys_path()), 0o700);
            assert_eq!(mode(&key_path), 0o600);
            assert_eq!(mode(&dir.secret_path()), 0o600);
        }
    }

    #[test]
    fn later_runs_load_the_same_keys_and_secret() {
        let (_tmp, dir) = fresh();
        let (keys, secret) = dir.load_or_init(&mut rand::rng()).unwrap();
        let (again, secret_again) = dir.load_or_init(&mut rand::rng()).unwrap();
        assert_eq!(again.kids(), keys.kids());
        assert_eq!(
            again.current().secret_bytes(),
            keys.current().secret_bytes()
        );
        assert_eq!(secret_again.as_bytes(), secret.as_bytes());
        let (loaded, secret_loaded) = DataDir::new(dir.path()).load().unwrap();
        assert_eq!(loaded.kids(), keys.kids());
        assert_eq!(secret_loaded.as_bytes(), secret.as_bytes());
        assert_eq!(key_files(&dir).len(), 1);
    }

    #[test]
    fn an_existing_directory_without_keys_is_initialized() {
        let (_tmp, dir) = fresh();
        dir.ensure_exists().unwrap();
        #[cfg(unix)]
        assert_eq!(mode(dir.path()), 0o700);
        // The credential store may be created before the keys.
        drop(crate::store::SqliteCredentialStore::open(&dir.credentials_path()).unwrap());
        dir.load_or_init(&mut rand::rng()).unwrap();
        assert_eq!(key_files(&dir).len(), 1);
        dir.ensure_exists().unwrap();
        assert_eq!(key_files(&dir).len(), 1);
    }

    #[test]
    fn keygen_rotates_and_older_keys_stay_accepted() {
        let (_tmp, dir) = fresh();
        let (first, _) = dir.load_or_init(&mut rand::rng()).unwrap();
        let second = dir.generate_key(&mut rand::rng()).unwrap();
        let third = dir.generate_key(&mut rand::rng()).unwrap();
        let (keys, _) = dir.load().unwrap();
        assert_eq!(
            keys.kids(),
            [third.kid(), second.kid(), first.current().kid()]
        );
        assert_eq!(keys.current().kid(), third.kid());
        assert_eq!(
            key_files(&dir),
            [
                format!("000001-{}.key", first.current().kid()),
                format!("000002-{}.key", second.kid()),
                format!("000003-{}.key", third.kid()),
            ]
        );
        let response = keys.response();
        assert_eq!(response.keys.len(), 3);
        assert_eq!(response.keys[0].kid, third.kid());
        assert_eq!(
            response.keys[0].public_key().unwrap(),
            *third.public_bytes()
        );
        assert_eq!(response.keys[2].kid, first.current().kid());
        assert_eq!(
            keys.by_kid(second.kid()).unwrap().public_bytes(),
            second.public_bytes()
        );
        assert_eq!(
            keys.by_fingerprint(first.current().fingerprint())
                .unwrap()
                .kid(),
            first.current().kid()
        );
        assert!(keys.by_kid("AAAAAAAAAAA").is_none());
        assert!(keys.by_fingerprint(third.kid()).is_none());
    }

    #[test]
    fn sequence_order_beats_name_order_past_six_digits() {
        let (_tmp, dir) = fresh();
        dir.load_or_init(&mut rand::rng()).unwrap();
        let old = dir.generate_key(&mut rand::rng()).unwrap();
        let old_name = format!("000002-{}.key", old.kid());
        fs::rename(
            dir.keys_path().join(&old_name),
            dir.keys_path().join(format!("999999-{}.key", old.kid())),
        )
        .unwrap();
        let newest = dir.generate_key(&mut rand::rng()).unwrap();
        assert!(
            key_files(&dir).contains(&format!("1000000-{}.key", newest.kid())),
            "{:?}",
            key_files(&dir)
        );
        assert_eq!(dir.load().unwrap().0.current().kid(), newest.kid());
    }

    #[test]
    fn keygen_initializes_a_missing_directory() {
        let (_tmp, dir) = fresh();
        let key = dir.generate_key(&mut rand::rng()).unwrap();
        let (keys, _) = dir.load().unwrap();
        assert_eq!(keys.kids(), [key.kid()]);
    }

    #[test]
    fn remove_key_keeps_the_others_and_refuses_the_last() {
        let (_tmp, dir) = fresh();
        let (first, _) = dir.load_or_init(&mut rand::rng()).unwrap();
        let first = first.current().clone();
        let second = dir.generate_key(&mut rand::rng()).unwrap();

        let err = dir.remove_key("nope").unwrap_err();
        assert!(matches!(err, KeyFileError::UnknownKid { .. }), "{err:?}");
        assert!(err.to_string().contains(second.kid()), "{err}");

        // Removing the current key makes the previous one current again.
        dir.remove_key(second.kid()).unwrap();
        assert_eq!(dir.load().unwrap().0.kids(), [first.kid()]);

        let err = dir.remove_key(first.kid()).unwrap_err();
        assert!(matches!(err, KeyFileError::LastKey { .. }), "{err:?}");
        assert!(
            err.to_string().contains("wsgate keygen --data-dir"),
            "{err}"
        );
        assert_eq!(dir.load().unwrap().0.kids(), [first.kid()]);

        // The sequence keeps growing after a removal.
        let third = dir.generate_key(&mut rand::rng()).unwrap();
        assert!(key_files(&dir).contains(&format!("000002-{}.key", third.kid())));
        dir.remove_key(first.kid()).unwrap();
        assert_eq!(dir.load().unwrap().0.kids(), [third.kid()]);
    }

    #[test]
    fn load_never_creates_and_says_what_to_run() {
        let (_tmp, dir) = fresh();
        let err = dir.load().unwrap_err();
        assert!(matches!(err, KeyFileError::NoDataDir { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "wsgate keygen --data-dir {}",
                dir.path().display()
            )),
            "{text}"
        );
        assert!(!dir.path().exists());

        fs::create_dir_all(dir.path()).unwrap();
        let err = dir.load().unwrap_err();
        assert!(matches!(err, KeyFileError::NoKeys { .. }), "{err:?}");
        assert!(
            err.to_string().contains("wsgate keygen --data-dir"),
            "{err}"
        );
        assert!(!dir.keys_path().exists());
    }

    #[test]
    fn a_missing_secret_is_not_silently_replaced() {
        let (_tmp, dir) = fresh();
        dir.load_or_init(&mut rand::rng()).unwrap();
        fs::remove_file(dir.secret_path()).unwrap();
        for result in [dir.load(), dir.load_or_init(&mut rand::rng())] {
            let err = result.unwrap_err();
            assert!(matches!(err, KeyFileError::NoSecret { .. }), "{err:?}");
            assert!(err.to_string().contains("server_secret"), "{err}");
        }
        assert!(!dir.secret_path().exists());
        // keygen may create it (a single node's explicit choice).
        dir.generate_key(&mut rand::rng()).unwrap();
        dir.load().unwrap();
    }

    #[test]
    fn missing_keys_with_a_secret_are_not_silently_replaced() {
        let (_tmp, dir) = fresh();
        let (keys, _) = dir.load_or_init(&mut rand::rng()).unwrap();
        fs::remove_file(
            dir.keys_path()
                .join(format!("000001-{}.key", keys.current().kid())),
        )
        .unwrap();
        let err = dir.load_or_init(&mut rand::rng()).unwrap_err();
        assert!(matches!(err, KeyFileError::NoKeys { .. }), "{err:?}");
    }

    #[test]
    fn corrupt_files_are_named_in_the_error() {
        let (_tmp, dir) = fresh();
        let (keys, _) = dir.load_or_init(&mut rand::rng()).unwrap();
        let key_path = dir
            .keys_path()
            .join(format!("000001-{}.key", keys.current().kid()));
        let original = fs::read_to_string(&key_path).unwrap();

        for bad in [
            "",
            "not base64!\n",
            "AAAA\n",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        ] {
            fs::write(&key_path, bad).unwrap();
            let err = dir.load().unwrap_err();
            assert!(
                matches!(err, KeyFileError::BadKey { .. }),
                "{bad:?}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(&key_path.display().to_string()), "{text}");
        }

        // A valid key under the wrong name.
        let other = ServerKeyPair::generate(&mut rand::rng());
        fs::write(&key_path, b64u_line(other.secret_bytes()).as_bytes()).unwrap();
        let err = dir.load().unwrap_err();
        assert!(err.to_string().contains("file name says kid"), "{err}");

        // Surrounding whitespace (an editor's) is tolerated.
        fs::write(&key_path, format!("  {}\r\n\n", original.trim())).unwrap();
        assert_eq!(dir.load().unwrap().0.kids(), keys.kids());

        fs::write(dir.secret_path(), "short\n").unwrap();
        let err = dir.load().unwrap_err();
        assert!(matches!(err, KeyFileError::BadSecret { .. }), "{err:?}");
        assert!(err.to_string().contains("server_secret"), "{err}");
    }

    #[test]
    fn odd_file_names_in_the_keys_directory() {
        let (_tmp, dir) = fresh();
        let (keys, _) = dir.load_or_init(&mut rand::rng()).unwrap();
        // Ignored: not *.key, or hidden (temporary files).
        fs::write(dir.keys_path().join("README"), "hello").unwrap();
        fs::write(dir.keys_path().join(".000009-x.key.1.tmp"), "junk").unwrap();
        fs::write(dir.keys_path().join(".hidden.key"), "junk").unwrap();
        assert_eq!(dir.load().unwrap().0.kids(), keys.kids());

        for name in ["current.key", "x1-AAAAAAAAAAA.key", "000002-short.key"] {
            let path = dir.keys_path().join(name);
            fs::write(&path, "junk").unwrap();
            let err = dir.load().unwrap_err();
            assert!(
                matches!(err, KeyFileError::BadKey { .. }),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains(name), "{err}");
            fs::remove_file(&path).unwrap();
        }

        // Two files with one sequence number: which is current is ambiguous.
        let other = ServerKeyPair::generate(&mut rand::rng());
        let path = dir.keys_path().join(format!("1-{}.key", other.kid()));
        write_new_private_file(&path, &b64u_line(other.secret_bytes())).unwrap();
        let err = dir.load().unwrap_err();
        assert!(err.to_string().contains("same sequence number"), "{err}");
        fs::remove_file(&path).unwrap();

        // The same key twice.
        let path = dir
            .keys_path()
            .join(format!("000005-{}.key", keys.current().kid()));
        write_new_private_file(&path, &b64u_line(keys.current().secret_bytes())).unwrap();
        let err = dir.load().unwrap_err();
        assert!(err.to_string().contains("same key"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn files_open_to_group_or_others_are_refused() {
        let (_tmp, dir) = fresh();
        let (keys, _) = dir.load_or_init(&mut rand::rng()).unwrap();
        let key_path = dir
            .keys_path()
            .join(format!("000001-{}.key", keys.current().kid()));
        for (path, bad_mode) in [
            (key_path.clone(), 0o644),
            (key_path.clone(), 0o640),
            (key_path.clone(), 0o602),
            (dir.secret_path(), 0o604),
        ] {
            chmod(&path, bad_mode);
            let err = dir.load().unwrap_err();
            assert!(
                matches!(err, KeyFileError::Permissions { mode, .. } if mode == bad_mode),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
            chmod(&path, 0o600);
        }
        // Owner-only read is fine.
        chmod(&key_path, 0o400);
        dir.load().unwrap();
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let (_tmp, dir) = fresh();
        dir.load_or_init(&mut rand::rng()).unwrap();
        let before = fs::read_to_string(dir.secret_path()).unwrap();
        let err = write_new_private_file(&dir.secret_path(), "other\n").unwrap_err();
        assert!(
            matches!(&err, KeyFileError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{err:?}"
        );
        assert_eq!(fs::read_to_string(dir.secret_path()).unwrap(), before);
        assert_eq!(
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp"))
                .count(),
            0
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let (_tmp, dir) = fresh();
        let (keys, secret) = dir.load_or_init(&mut rand::rng()).unwrap();
        let text = format!("{keys:?} {secret:?} {dir:?}");
        assert!(text.contains(keys.current().kid()), "{text}");
        assert_eq!(format!("{secret:?}"), "ServerSecret(..)");
        assert!(!text.contains(&b64::encode_b64u(keys.current().secret_bytes())));
        assert!(!text.contains(&b64::encode_b64u(secret.as_bytes())));
        assert!(!text.contains(&format!("{:?}", secret.as_bytes())));
        assert!(!text.contains(&format!("{:?}", keys.current().secret_bytes())));
    }

    #[test]
    fn key_set_from_pairs() {
        let a = ServerKeyPair::generate(&mut rand::rng());
        let b = ServerKeyPair::generate(&mut rand::rng());
        let set = KeySet::new(b.clone(), [a.clone()]);
        assert_eq!(set.kids(), [b.kid(), a.kid()]);
        assert_eq!(set.current().kid(), b.kid());
        assert_eq!(ServerSecret::from_bytes([9; 32]).as_bytes(), [9; 32]);
    }
}
