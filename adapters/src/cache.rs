//! Which adapter versions are resident in memory: the cache, owned by the engine's residency
//! (see `loraplex_runtime`), never shared.
//!
//! A running sequence holds a [`Lease`] (an `Arc` of the resident adapter): eviction only ever
//! drops adapters nobody leases, and a leased adapter's memory is freed when its last lease drops,
//! even if it was unloaded or replaced meanwhile. Resident entries are keyed by the content
//! checksum of the bytes each load read (and the name), and answer only for the registry
//! generation they were loaded for, so a replaced adapter never serves a new request from the
//! old weights.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use loraplex_models::LoraWeights;

use crate::load::{AdapterInfo, LoadedAdapter};
use crate::registry::AdapterVersion;

/// An adapter in memory.
#[derive(Debug)]
pub struct Resident {
    pub version: AdapterVersion,
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
type Key = (String, Arc<str>);

#[derive(Debug)]
pub struct AdapterCache {
    cfg: CacheConfig,
    /// The active tier, keyed by content checksum and name: two names holding byte-identical
    /// adapters (an alias for an A/B arm) are two entries, not one evicting the other.
    entries: HashMap<Key, Entry>,
    /// The second tier: evicted from the active set, still validated and in memory; LRU order
    /// (front = oldest).
    warm: VecDeque<Lease>,
    /// Name → key of the version resident for it.
    by_name: HashMap<Arc<str>, Key>,
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
            warm: VecDeque::new(),
            by_name: HashMap::new(),
            tick: 0,
            loads: 0,
            changes: 0,
            evictions: 0,
        }
    }

    /// Takes `version` from the second tier, if it is there.
    pub fn take_warm(&mut self, version: &AdapterVersion) -> Option<LoadedAdapter> {
        let pos = self.warm.iter().position(|l| l.version == *version)?;
        self.changes += 1;
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
    pub fn offer_warm(&mut self, version: &AdapterVersion, loaded: LoadedAdapter) {
        if self.contains(version) {
            return;
        }
        self.changes += 1;
        self.warm.retain(|l| l.version.name != version.name);
        self.warm.push_back(Arc::new(Resident {
            version: version.clone(),
            weights: loaded.weights,
            info: loaded.info,
        }));
        self.trim_warm();
    }

    /// A lease on `version` if it is in the active tier.
    pub fn get(&mut self, version: &AdapterVersion) -> Option<Lease> {
        let key = self.by_name.get(&version.name)?;
        let e = self.entries.get_mut(key)?;
        if e.lease.version != *version {
            return None;
        }
        self.tick += 1;
        e.last_used = self.tick;
        Some(e.lease.clone())
    }

    /// Whether `version` is in the active tier.
    pub fn contains(&self, version: &AdapterVersion) -> bool {
        self.by_name
            .get(&version.name)
            .and_then(|k| self.entries.get(k))
            .is_some_and(|e| e.lease.version == *version)
    }

    /// Makes a freshly loaded adapter resident, evicting least-recently-used unleased adapters
    /// (and any older version of the same name that nobody uses) to make room. When every
    /// resident is leased, the adapter comes back (boxed: it is large) for the caller to park.
    pub fn insert(
        &mut self,
        version: &AdapterVersion,
        loaded: LoadedAdapter,
    ) -> std::result::Result<Lease, (CacheFull, Box<LoadedAdapter>)> {
        if let Some(old) = self.by_name.get(&version.name).cloned() {
            if self
                .entries
                .get(&old)
                .is_some_and(|e| Arc::strong_count(&e.lease) == 1)
            {
                self.entries.remove(&old);
                self.evictions += 1;
            }
            self.by_name.remove(&version.name);
        }
        let need = loaded.info.bytes;
        while self.entries.len() + 1 > self.cfg.max_loras
            || self.bytes() + need > self.cfg.max_bytes
        {
            if !self.evict_one() {
                return Err((CacheFull, Box::new(loaded)));
            }
        }
        let key: Key = (loaded.info.checksum.clone(), version.name.clone());
        let lease = Arc::new(Resident {
            version: version.clone(),
            weights: loaded.weights,
            info: loaded.info,
        });
        self.tick += 1;
        self.entries.insert(
            key.clone(),
            Entry {
                lease: lease.clone(),
                last_used: self.tick,
            },
        );
        self.by_name.insert(version.name.clone(), key);
        self.warm.retain(|l| l.version.name != version.name);
        self.trim_warm();
        self.loads += 1;
        self.changes += 1;
        Ok(lease)
    }

    /// Drops the least recently used adapter that no sequence leases.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.lease) == 1)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone());
        let Some(k) = victim else { return false };
        self.changes += 1;
        let e = self.entries.remove(&k).expect("victim exists");
        let name = &e.lease.version.name;
        if self.by_name.get(name) == Some(&k) {
            self.by_name.remove(name);
        }
        self.evictions += 1;
        self.warm.retain(|l| l.version.name != *name);
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
        if let Some(k) = self.by_name.remove(name) {
            self.entries.remove(&k);
        }
        self.warm.retain(|l| &*l.version.name != name);
    }

    /// Every version in memory, in either tier.
    pub fn in_memory(&self) -> impl Iterator<Item = &AdapterVersion> {
        self.entries
            .values()
            .map(|e| &e.lease)
            .chain(self.warm.iter())
            .map(|l| &l.version)
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

    /// Names in the active tier, most recently used first.
    pub fn resident_names(&self) -> Vec<String> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        v.into_iter()
            .map(|e| e.lease.version.name.to_string())
            .collect()
    }
}
