//! Which adapters exist: name → the version registered for it, shared with request handlers so
//! that unknown names are refused before anything is queued.
//!
//! [`AdapterVersion`] is the one identity of an adapter version in the scheduler, the loader,
//! the cache and the published residency view: a replace bumps the generation, so requests and
//! resident weights for the old version never answer for the new one, even before the new
//! version's bytes (and so its hash) are known.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::{AdapterError, Result};
use crate::load::Recorded;

/// One registered version of a named adapter. Cheap to clone (the name is shared).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterVersion {
    pub name: Arc<str>,
    /// Unique per registration in this process: bumped on every register or replace.
    pub generation: u64,
}

impl AdapterVersion {
    pub fn new(name: &str, generation: u64) -> Self {
        Self {
            name: name.into(),
            generation,
        }
    }
}

impl fmt::Display for AdapterVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.generation)
    }
}

/// Where a registered adapter version comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSource {
    pub version: AdapterVersion,
    pub dir: PathBuf,
    /// The hashes the store recorded; a load whose bytes hash differently is refused (the files
    /// changed or rotted on disk).
    pub recorded: Option<Recorded>,
}

impl AdapterSource {
    pub fn name(&self) -> &str {
        &self.version.name
    }

    /// The store's version number, when the source came from the store.
    pub fn store_version(&self) -> Option<u64> {
        self.recorded.as_ref().and_then(|r| r.version)
    }
}

/// Name → source. Cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct AdapterRegistry {
    inner: Arc<RwLock<HashMap<String, AdapterSource>>>,
    next_gen: Arc<AtomicU64>,
}

impl AdapterRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `name`; returns the new source.
    pub fn register(&self, name: &str, dir: PathBuf) -> AdapterSource {
        self.register_version(name, dir, None)
    }

    /// Adds or replaces `name` with a stored version of known content hash.
    pub fn register_version(
        &self,
        name: &str,
        dir: PathBuf,
        recorded: Option<Recorded>,
    ) -> AdapterSource {
        let generation = self.next_gen.fetch_add(1, Ordering::Relaxed) + 1;
        let src = AdapterSource {
            version: AdapterVersion::new(name, generation),
            dir,
            recorded,
        };
        self.inner
            .write()
            .expect("registry lock")
            .insert(name.to_string(), src.clone());
        src
    }

    pub fn remove(&self, name: &str) -> Option<AdapterSource> {
        self.inner.write().expect("registry lock").remove(name)
    }

    pub fn get(&self, name: &str) -> Option<AdapterSource> {
        self.inner.read().expect("registry lock").get(name).cloned()
    }

    /// Whether `version` is still the one registered for its name.
    pub fn is_current(&self, version: &AdapterVersion) -> bool {
        self.inner
            .read()
            .expect("registry lock")
            .get(&*version.name)
            .is_some_and(|s| s.version == *version)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Registers every sub-folder of `dir` holding an `adapter_config.json`, named after it.
    pub fn scan_dir(&self, dir: &std::path::Path) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(dir).map_err(|e| AdapterError::Io {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut names = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.join(crate::load::CONFIG_FILE).is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                self.register(&name, p);
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}
