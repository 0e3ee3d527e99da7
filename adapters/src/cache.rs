//! Which adapters exist (the registry, shared with request handlers) and which are resident in
//! memory (the cache, owned by the engine loop).
//!
//! A running sequence holds a [`Lease`] (an `Arc` of the resident adapter): eviction only ever
//! drops adapters nobody leases, and a leased adapter's memory is freed when its last lease drops,
//! even if it was unloaded or replaced meanwhile. Resident entries are keyed by the content
//! checksum of the bytes each load read (and the name), and answer only for the registry
//! generation they were loaded for, so a replaced adapter never serves a new request from the
//! old weights.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use loraplex_models::LoraWeights;

use crate::error::{AdapterError, Result};
use crate::load::{AdapterInfo, LoadedAdapter, Recorded};

/// Where a registered adapter version comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSource {
    pub name: String,
    pub dir: PathBuf,
    /// Bumped on every replace: distinguishes versions before their hash is known.
    pub generation: u64,
    /// The hashes the store recorded; a load whose bytes hash differently is refused (the files
    /// changed or rotted on disk).
    pub recorded: Option<Recorded>,
}

/// Name → source. Cheap to clone and share; request handlers consult it to refuse unknown
/// names before anything is queued.
#[derive(Debug, Clone, Default)]
pub struct AdapterRegistry {
    inner: Arc<RwLock<HashMap<String, AdapterSource>>>,
    next_gen: Arc<std::sync::atomic::AtomicU64>,
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
        let generation = self
            .next_gen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let src = AdapterSource {
            name: name.to_string(),
            dir,
            generation,
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

/// An adapter in memory.
#[derive(Debug)]
pub struct Resident {
    pub name: String,
    pub generation: u64,
    pub weights: LoraWeights,
    pub info: AdapterInfo,
}

/// Held by every sequence using the adapter; dropping the last one frees an evicted adapter.
pub type Lease = Arc<Resident>;

#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Adapters active at once (`--max-loras`); also bounds distinct adapters in a batch.
    pub max_loras: usize,
    /// Bytes of active adapter weights.
    pub max_bytes: usize,
    /// Validated adapters kept after leaving the active set (`--max-cpu-loras`), so that coming
    /// back costs no disk read or validation. Counts the active ones too, as in vLLM.
    pub max_cpu_loras: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_loras: 8,
            max_bytes: 1 << 30,
            max_cpu_loras: 16,
        }
    }
}

/// The cache is full of adapters that running sequences use; try again when one finishes.
#[derive(Debug)]
pub struct CacheFull;

#[derive(Debug)]
struct Entry {
    lease: Lease,
    last_used: u64,
}

/// (content checksum, name): the checksum is computed from the bytes each load read, whatever
/// the load was told about them.
type Key = (String, String);

#[derive(Debug)]
pub struct AdapterCache {
    cfg: CacheConfig,
    /// The active tier, keyed by content checksum and name: two names holding byte-identical
    /// adapters (an alias for an A/B arm) are two entries, not one evicting the other.
    entries: HashMap<Key, Entry>,
    /// The second tier: evicted from the active set, still validated and in memory; LRU order
    /// (front = oldest).
    warm: std::collections::VecDeque<Lease>,
    /// Name → key of the version resident for it.
    by_name: HashMap<String, Key>,
    tick: u64,
    pub loads: u64,
    /// Bumped by every change of either tier (for observers that refresh a copy).
    pub changes: u64,
    pub evictions: u64,
}

impl AdapterCache {
    pub fn new(cfg: CacheConfig) -> Self {
        Self {
            cfg,
            entries: HashMap::new(),
            warm: std::collections::VecDeque::new(),
            by_name: HashMap::new(),
            tick: 0,
            loads: 0,
            changes: 0,
            evictions: 0,
        }
    }

    /// Takes the current version of `src` from the second tier, if it is there.
    pub fn take_warm(&mut self, src: &AdapterSource) -> Option<LoadedAdapter> {
        self.changes += 1;
        let pos = self
            .warm
            .iter()
            .position(|l| l.name == src.name && l.generation == src.generation)?;
        let lease = self.warm.remove(pos).expect("position is valid");
        match Arc::try_unwrap(lease) {
            Ok(r) => Some(LoadedAdapter {
                weights: r.weights,
                info: r.info,
            }),
            // Still leased by a running sequence: it is active somewhere; load afresh.
            Err(_) => None,
        }
    }

    /// Adds a validated adapter to the second tier (dropping the oldest there if full); the
    /// active tier is untouched.
    pub fn offer_warm(&mut self, src: &AdapterSource, loaded: LoadedAdapter) {
        self.changes += 1;
        if self.contains(src) {
            return;
        }
        self.warm.retain(|l| l.name != src.name);
        self.warm.push_back(Arc::new(Resident {
            name: src.name.clone(),
            generation: src.generation,
            weights: loaded.weights,
            info: loaded.info,
        }));
        self.trim_warm();
    }

    /// A lease on the resident version of `src`, if it is the current one.
    pub fn get(&mut self, src: &AdapterSource) -> Option<Lease> {
        let hash = self.by_name.get(&src.name)?;
        let e = self.entries.get_mut(hash)?;
        if e.lease.generation != src.generation {
            return None;
        }
        self.tick += 1;
        e.last_used = self.tick;
        Some(e.lease.clone())
    }

    pub fn contains(&self, src: &AdapterSource) -> bool {
        self.by_name
            .get(&src.name)
            .and_then(|h| self.entries.get(h))
            .is_some_and(|e| e.lease.generation == src.generation)
    }

    /// Makes a freshly loaded adapter resident, evicting least-recently-used unleased adapters
    /// (and any older version of the same name that nobody uses) to make room. When every
    /// resident is leased, the adapter comes back (boxed: it is large) for the caller to park.
    pub fn insert(
        &mut self,
        src: &AdapterSource,
        loaded: LoadedAdapter,
    ) -> std::result::Result<Lease, (CacheFull, Box<LoadedAdapter>)> {
        if let Some(old) = self.by_name.get(&src.name).cloned() {
            if self
                .entries
                .get(&old)
                .is_some_and(|e| Arc::strong_count(&e.lease) == 1)
            {
                self.entries.remove(&old);
                self.evictions += 1;
            }
            self.by_name.remove(&src.name);
        }
        let need = loaded.info.bytes;
        while self.entries.len() + 1 > self.cfg.max_loras
            || self.bytes() + need > self.cfg.max_bytes
        {
            if !self.evict_one() {
                return Err((CacheFull, Box::new(loaded)));
            }
        }
        let hash: Key = (loaded.info.checksum.clone(), src.name.clone());
        let lease = Arc::new(Resident {
            name: src.name.clone(),
            generation: src.generation,
            weights: loaded.weights,
            info: loaded.info,
        });
        self.tick += 1;
        self.entries.insert(
            hash.clone(),
            Entry {
                lease: lease.clone(),
                last_used: self.tick,
            },
        );
        self.by_name.insert(src.name.clone(), hash);
        self.warm.retain(|l| l.name != src.name);
        self.trim_warm();
        self.loads += 1;
        self.changes += 1;
        Ok(lease)
    }

    /// Drops the least recently used adapter that no sequence leases.
    fn evict_one(&mut self) -> bool {
        self.changes += 1;
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.lease) == 1)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(h, _)| h.clone());
        let Some(h) = victim else { return false };
        let e = self.entries.remove(&h).expect("victim exists");
        if self.by_name.get(&e.lease.name) == Some(&h) {
            self.by_name.remove(&e.lease.name);
        }
        self.evictions += 1;
        self.warm.retain(|l| l.name != e.lease.name);
        self.warm.push_back(e.lease);
        self.trim_warm();
        true
    }

    fn trim_warm(&mut self) {
        while !self.warm.is_empty()
            && self.warm.len() + self.entries.len() > self.cfg.max_cpu_loras.max(self.cfg.max_loras)
        {
            self.warm.pop_front();
        }
    }

    /// Forgets `name` in both tiers; leased weights stay alive until their sequences finish.
    pub fn unload(&mut self, name: &str) {
        self.changes += 1;
        if let Some(h) = self.by_name.remove(name) {
            self.entries.remove(&h);
        }
        self.warm.retain(|l| l.name != name);
    }

    /// `(name, generation)` of every adapter in memory, in either tier.
    pub fn in_memory(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries
            .values()
            .map(|e| &e.lease)
            .chain(self.warm.iter())
            .map(|l| (l.name.as_str(), l.generation))
    }

    /// Adapters in the second tier.
    pub fn warm_len(&self) -> usize {
        self.warm.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of resident adapter weights.
    pub fn bytes(&self) -> usize {
        self.entries.values().map(|e| e.lease.info.bytes).sum()
    }

    /// Resident names, most recently used first.
    pub fn resident_names(&self) -> Vec<String> {
        let mut v: Vec<(&Entry, &String)> =
            self.entries.values().map(|e| (e, &e.lease.name)).collect();
        v.sort_by_key(|(e, _)| std::cmp::Reverse(e.last_used));
        v.into_iter().map(|(_, n)| n.clone()).collect()
    }
}
