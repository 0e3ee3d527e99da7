//! Which adapter versions are in memory, and getting the ones waiting requests need there.
//!
//! [`Residency`] lives on the engine thread and owns the adapter cache (active and second
//! tier), the loader, adapters loaded while every active slot was leased (parked), and the
//! sources of versions that waiting requests want. It is the single writer of the
//! [`ResidencyView`] the handle reads at `submit` to decide whether to start a load, and it
//! publishes a version as in memory before the loader forgets the version is on its way, so
//! at no moment can a submit see a version as neither and load it twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use loraplex_adapters::{
    AdapterCache, AdapterError, AdapterRegistry, AdapterSource, AdapterVersion, CacheConfig, Lease,
    LoadedAdapter,
};

use crate::loader::{LoadResult, Loader};
use crate::stats::EngineStats;

/// What the engine last published about residency. Cheap to clone; read-only outside the
/// engine thread.
#[derive(Debug, Clone, Default)]
pub struct ResidencyView(Arc<RwLock<Snapshot>>);

#[derive(Debug, Default)]
struct Snapshot {
    /// Every version in memory: active, second tier or parked.
    in_memory: HashSet<AdapterVersion>,
    /// Names in the active tier, most recently used first.
    active: Vec<String>,
}

impl ResidencyView {
    pub fn in_memory(&self, version: &AdapterVersion) -> bool {
        self.0
            .read()
            .expect("view lock")
            .in_memory
            .contains(version)
    }

    /// Whether some version of `name` is in the active tier.
    pub fn is_resident(&self, name: &str) -> bool {
        self.0
            .read()
            .expect("view lock")
            .active
            .iter()
            .any(|n| n == name)
    }

    /// Names in the active tier, most recently used first.
    pub fn resident_names(&self) -> Vec<String> {
        self.0.read().expect("view lock").active.clone()
    }
}

pub(crate) struct Residency<M> {
    cache: AdapterCache,
    loader: Loader<M>,
    registry: AdapterRegistry,
    /// Loaded but not yet in the active tier because every slot is leased.
    parked: Vec<(AdapterVersion, LoadedAdapter)>,
    /// Versions waiting sequences need: where to load them from if they are not in memory.
    wanted: HashMap<AdapterVersion, AdapterSource>,
    /// When a wanted version's load reached the engine (for requests' `adapter_wait`).
    arrived: HashMap<AdapterVersion, Instant>,
    view: ResidencyView,
    stats: Arc<EngineStats>,
    /// What the view was last built from.
    published_changes: u64,
    published_parked: Vec<AdapterVersion>,
}

impl<M: Send + 'static> Residency<M> {
    pub(crate) fn new(
        cfg: CacheConfig,
        loader: Loader<M>,
        registry: AdapterRegistry,
        view: ResidencyView,
        stats: Arc<EngineStats>,
    ) -> Self {
        Self {
            cache: AdapterCache::new(cfg),
            loader,
            registry,
            parked: Vec::new(),
            wanted: HashMap::new(),
            arrived: HashMap::new(),
            view,
            stats,
            published_changes: u64::MAX,
            published_parked: Vec::new(),
        }
    }

    /// A request needs `src`: gets it on its way into memory unless it is there or coming.
    pub(crate) fn want(&mut self, src: &AdapterSource) {
        self.wanted
            .entry(src.version.clone())
            .or_insert_with(|| src.clone());
        self.fetch(src);
    }

    fn fetch(&mut self, src: &AdapterSource) {
        let v = &src.version;
        if self.cache.contains(v) || self.is_parked(v) || self.loader.is_loading(v) {
            return;
        }
        match self.cache.take_warm(v) {
            Some(loaded) => self.parked.push((v.clone(), loaded)),
            None => self.loader.load(src.clone()),
        }
    }

    /// Re-fetches every wanted version that left memory while its requests waited (evicted).
    pub(crate) fn refetch<'a>(&mut self, waiting: impl Iterator<Item = &'a AdapterVersion>) {
        let missing: Vec<AdapterSource> = waiting
            .filter(|v| !self.cache.contains(v) && !self.is_parked(v))
            .filter_map(|v| self.wanted.get(v).cloned())
            .collect();
        for src in missing {
            self.fetch(&src);
        }
    }

    /// A load finished. On failure returns the error, for the engine to fail the version's
    /// waiting requests with.
    pub(crate) fn on_loaded(
        &mut self,
        version: AdapterVersion,
        result: LoadResult,
    ) -> Option<Arc<AdapterError>> {
        let failed = match result {
            Ok(loaded) => {
                tracing::debug!(adapter = %version, "adapter load received");
                self.arrived.insert(version.clone(), Instant::now());
                self.parked.push((version.clone(), loaded));
                None
            }
            Err(e) => Some(e),
        };
        self.publish();
        self.loader.finished(&version);
        failed
    }

    /// An upload's validated weights, for the second tier (never evicting an active adapter).
    pub(crate) fn on_offer(&mut self, src: AdapterSource, loaded: LoadedAdapter) {
        if self.registry.is_current(&src.version) {
            self.cache.offer_warm(&src.version, loaded);
        }
        self.publish();
        self.loader.finished(&src.version);
    }

    pub(crate) fn unload(&mut self, name: &str) {
        self.cache.unload(name);
        self.parked.retain(|(v, _)| &*v.name != name);
        self.publish();
    }

    /// Moves parked adapters into the active tier where room can be made. A parked version
    /// that was replaced and that nobody waits for is dropped; one loaded twice (a submit and an
    /// eviction raced) leaves the resident copy. Forgets what no waiting request needs.
    pub(crate) fn settle(&mut self, is_waited_for: impl Fn(&AdapterVersion) -> bool) {
        for (v, loaded) in std::mem::take(&mut self.parked) {
            if (!self.registry.is_current(&v) && !is_waited_for(&v)) || self.cache.contains(&v) {
                continue;
            }
            if let Err((_, loaded)) = self.cache.insert(&v, loaded) {
                self.parked.push((v, *loaded));
            }
        }
        self.wanted.retain(|v, _| is_waited_for(v));
        self.arrived.retain(|v, _| is_waited_for(v));
    }

    pub(crate) fn is_ready(&self, version: &AdapterVersion) -> bool {
        self.cache.contains(version)
    }

    pub(crate) fn lease(&mut self, version: &AdapterVersion) -> Option<Lease> {
        self.cache.get(version)
    }

    /// When `version`'s load reached the engine, if it did while requests waited for it.
    pub(crate) fn arrived(&self, version: &AdapterVersion) -> Option<Instant> {
        self.arrived.get(version).copied()
    }

    /// Whether a version some waiting request wants is still being loaded.
    pub(crate) fn awaits_load(&self) -> bool {
        self.wanted.keys().any(|v| self.loader.is_loading(v))
    }

    pub(crate) fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    fn is_parked(&self, version: &AdapterVersion) -> bool {
        self.parked.iter().any(|(p, _)| p == version)
    }

    /// Writes the view and the residency gauges; the view only when the cache changed.
    pub(crate) fn publish(&mut self) {
        let s = &self.stats;
        s.resident_adapter_bytes
            .store(self.cache.bytes(), Ordering::Relaxed);
        s.adapter_loads.store(self.cache.loads, Ordering::Relaxed);
        s.adapter_evictions
            .store(self.cache.evictions, Ordering::Relaxed);
        s.resident_adapters
            .store(self.cache.len(), Ordering::Relaxed);
        let parked = self.parked.iter().map(|(v, _)| v);
        if self.cache.changes == self.published_changes
            && parked.clone().eq(self.published_parked.iter())
        {
            return;
        }
        self.published_changes = self.cache.changes;
        self.published_parked = parked.cloned().collect();
        let mut snap = self.view.0.write().expect("view lock");
        snap.in_memory = self
            .cache
            .in_memory()
            .chain(&self.published_parked)
            .cloned()
            .collect();
        snap.active = self.cache.resident_names();
    }
}
