//! Durable adapter storage: what survives a restart. Versions are immutable and named by their
//! content hash, so a version seen once is the same bytes forever, and "replace" is only a move
//! of the name's `current` pointer.
//!
//! The trait keeps the gateway independent of where versions live: the directory store below is
//! the embedded default; an object-store backend (several gateways sharing one bucket) implements
//! the same calls and hands back a locally cached folder from [`AdapterStore::current`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{AdapterError, Result};
use crate::load::AdapterInfo;

/// The small record kept next to every stored version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// 1 for the first upload of a name, then one more per new content.
    pub version: u64,
    /// The content hash of the version (config and weights), as the validator computes it.
    pub sha256: String,
    /// xxh3-128 checksum of the same bytes, re-checked on every load: tensor-wise (`t1:`
    /// prefix) or, in older manifests, over the whole file (no prefix); absent in the oldest.
    #[serde(default)]
    pub checksum: Option<String>,
    /// Bytes of the two files on disk.
    pub size: u64,
    pub rank: usize,
    pub targets: Vec<String>,
    pub base_model: Option<String>,
    /// Unix seconds.
    pub created: u64,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Manifest {
    /// What a load of this version checks its bytes against.
    pub fn recorded(&self) -> crate::load::Recorded {
        crate::load::Recorded {
            sha256: self.sha256.clone(),
            checksum: self.checksum.clone(),
            version: Some(self.version),
        }
    }
}

/// What a caller supplies besides the files.
#[derive(Debug, Clone, Default)]
pub struct VersionMeta {
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A stored version ready to load: its manifest and a local folder with the PEFT files.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAdapter {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

/// A scratch folder on the store's volume where an upload is assembled and validated before
/// [`AdapterStore::commit`]; removed when dropped, so a refused upload leaves nothing behind.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    keep: bool,
}

impl Staging {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Hands the folder over (it was renamed into the store).
    pub fn disarm(mut self) -> PathBuf {
        self.keep = true;
        self.dir.clone()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What opening a store found and repaired.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StoreCheck {
    /// Leftover staging folders of interrupted uploads or deletes, removed.
    pub removed_staging: usize,
    /// Names whose first upload never committed (no `current` pointer), removed.
    pub removed_uncommitted: Vec<String>,
    /// Names whose current version is damaged; they are not served (reason per name).
    pub broken: Vec<(String, String)>,
    /// Names served.
    pub adapters: usize,
}

pub trait AdapterStore: Send + Sync + std::fmt::Debug {
    /// A fresh scratch folder for assembling an upload.
    fn stage(&self) -> Result<Staging>;

    /// Makes the staged PEFT folder (already validated, `info` from the validator) the current
    /// version of `name`, atomically: readers see the old version or the new one, never a part.
    /// Content already stored under `name` becomes current again without a new version. Versions
    /// are named by their sha256: one `info` lacks (a load with `Identity::Checksum`) is
    /// computed from the staged files.
    fn commit(
        &self,
        staging: Staging,
        name: &str,
        info: &AdapterInfo,
        meta: VersionMeta,
    ) -> Result<StoredAdapter>;

    /// The current version of `name`, if it exists.
    fn current(&self, name: &str) -> Result<Option<StoredAdapter>>;

    /// Current versions of every name, sorted by name.
    fn list(&self) -> Result<Vec<StoredAdapter>>;

    /// Every stored version of `name`, oldest first.
    fn versions(&self, name: &str) -> Result<Vec<Manifest>>;

    /// One stored version of `name` (a route pinned to it), current or not.
    fn version(&self, name: &str, version: u64) -> Result<Option<StoredAdapter>>;

    /// Removes `name` and all its versions; `false` when it did not exist.
    fn delete(&self, name: &str) -> Result<bool>;
}

/// Adapter names double as folder names and URL segments: `[A-Za-z0-9._-]{1,64}`, not starting
/// with a dot (which would allow `.` and `..`, and collide with the store's own folders).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AdapterError::InvalidName(name.to_string()))
    }
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> AdapterError {
    AdapterError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
