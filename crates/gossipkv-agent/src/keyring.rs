//! The agent's keyring file: the gossip encryption keys, kept across
//! restarts.
//!
//! The file is JSON, `{"primary": "<base64>", "keys": ["<base64>", ...]}`:
//! the key this node seals with, then the other keys it opens with (each
//! 32 bytes in base64, as `gossipkv keygen` prints them). It holds the
//! secrets themselves, so it must be readable by its owner only: the agent
//! refuses a file that its group or others may read, creates one (with
//! `--init-keyring`) with mode 0600, and rewrites it atomically (a
//! temporary file of mode 0600 in the same directory, renamed over it)
//! after every change made through the API. Key material is never logged;
//! key ids are.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use gossipkv::{generate_key, key_to_base64, parse_key, Keyring};
use serde::{Deserialize, Serialize};

/// The keyring file's JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringJson {
    /// The primary key, base64.
    primary: String,
    /// The secondary keys, base64.
    #[serde(default)]
    keys: Vec<String>,
}

/// Why the keyring file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringFileError {
    /// The file does not exist (and `--init-keyring` was not given).
    #[error(
        "keyring file {0} does not exist; create it with --init-keyring, or write one \
         (see `gossipkv keygen`)"
    )]
    Missing(PathBuf),
    /// The file may be read by its group or by others.
    #[error(
        "keyring file {path} is readable by its group or others (mode {mode:04o}); it holds \
         the cluster's secret keys: chmod 600 it"
    )]
    Insecure {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file cannot be read, created or written.
    #[error("keyring file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a keyring.
    #[error("keyring file {path} is not a keyring: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key material).
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyringFileError + '_ {
    move |source| KeyringFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The keyring in the file at `path`. When it does not exist and `init`,
/// creates it first with a new random key (mode 0600; never overwrites a
/// file that appears meanwhile). Refuses a file its group or others can
/// read.
pub fn load(path: &Path, init: bool) -> Result<Keyring, KeyringFileError> {
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !init {
                return Err(KeyringFileError::Missing(path.to_path_buf()));
            }
            let ring = Keyring::new(generate_key());
            let mut f = open_private(path)?;
            f.write_all(&encode(&ring)).map_err(io(path))?;
            f.sync_all().map_err(io(path))?;
            tracing::info!(
                file = %path.display(),
                primary = %ring.primary().id(),
                "created a keyring file with a new key"
            );
            return Ok(ring);
        }
        Err(e) => return Err(io(path)(e)),
    }
    check_private(path)?;
    let text = std::fs::read(path).map_err(io(path))?;
    decode(&text).map_err(|message| KeyringFileError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

/// Refuses a file whose group or others have any permission.
#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), KeyringFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyringFileError::Insecure {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), KeyringFileError> {
    Ok(())
}

/// Creates a new file of mode 0600 (failing if it exists).
fn open_private(path: &Path) -> Result<std::fs::File, KeyringFileError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path).map_err(io(path))
}

/// Writes `ring` to `path` atomically: a temporary file of mode 0600 in
/// the same directory, synced, then renamed over `path`.
pub fn save(path: &Path, ring: &Keyring) -> Result<(), KeyringFileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keyring".into());
    let tmp = dir.join(format!(
        ".{name}.{}.{:x}.tmp",
        std::process::id(),
        rand_suffix()
    ));
    let result = (|| {
        let mut f = open_private(&tmp)?;
        f.write_all(&encode(ring)).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        // The rename is durable once the directory is synced (best effort:
        // not every platform lets a directory be opened).
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A value that differs between calls (the temporary file's name).
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The file's text of a keyring.
pub fn encode(ring: &Keyring) -> Vec<u8> {
    let json = KeyringJson {
        primary: key_to_base64(ring.primary()),
        keys: ring.keys()[1..].iter().map(key_to_base64).collect(),
    };
    let mut out = serde_json::to_vec_pretty(&json).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The keyring of a file's text. Errors never quote the keys.
pub fn decode(text: &[u8]) -> Result<Keyring, String> {
    let json: KeyringJson = serde_json::from_slice(text).map_err(|e| {
        // serde_json's messages may quote a value: keep the position only.
        format!(
            "expected {{\"primary\": \"<base64>\", \"keys\": [\"<base64>\", ...]}} \
             (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let primary = parse_key(&json.primary).map_err(|e| format!("primary: {e}"))?;
    let mut ring = Keyring::new(primary);
    for (i, k) in json.keys.iter().enumerate() {
        let key = parse_key(k).map_err(|e| format!("keys[{i}]: {e}"))?;
        ring.install(key).map_err(|e| format!("keys[{i}]: {e}"))?;
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyring_round_trips_through_its_text() {
        let mut ring = Keyring::new(generate_key());
        ring.install(generate_key()).unwrap();
        ring.install(generate_key()).unwrap();
        let back = decode(&encode(&ring)).unwrap();
        assert_eq!(back, ring);
        assert!(decode(b"{}").is_err());
        assert!(decode(b"{\"primary\": \"c2hvcnQ=\"}").is_err());
        let err = decode(b"{\"primary\": \"c2hvcnQ=\", \"extra\": 1}").unwrap_err();
        assert!(!err.contains("c2hvcnQ"), "{err}");
    }

    #[test]
    fn a_well_formed_file_with_too_many_keys_is_refused_without_quoting_them() {
        let keys: Vec<String> = (0..=gossipkv::MAX_KEYS)
            .map(|_| key_to_base64(&generate_key()))
            .collect();
        let json = serde_json::json!({"primary": keys[0], "keys": keys[1..]});
        let err = decode(json.to_string().as_bytes()).unwrap_err();
        assert!(
            err.contains(&format!("keys[{}]", gossipkv::MAX_KEYS - 1)),
            "{err}"
        );
        for k in &keys {
            assert!(!err.contains(k.as_str()), "key material in: {err}");
        }
        // The same key twice is one key.
        let json = serde_json::json!({"primary": keys[0], "keys": [keys[0], keys[1]]});
        assert_eq!(decode(json.to_string().as_bytes()).unwrap().keys().len(), 2);
    }
}
