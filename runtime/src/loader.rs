//! Adapter loads off the engine thread, started by whoever learns first that one is needed.
//!
//! The handle starts a load at `submit` when the adapter is not in memory, so the disk read and
//! validation overlap the step in progress; the engine only sees messages between steps, and a
//! load it started itself would make a cold request miss one more step. The engine also starts
//! loads (an adapter evicted while its requests waited), and an upload's validated weights are
//! handed over as a claimed "load" too. All go through one in-flight set, so each version loads
//! once; a version leaves the set only after the engine has published it as in memory, so a
//! submit racing the hand-over never starts a second load.
//!
//! Loads run in their own small rayon pool: validation uses `rayon::join`, and a job on the
//! global pool would sit between the forward pass's matmul chunks (rayon jobs are not
//! preempted), stalling the whole batch for the length of a load. In a pool of their own they
//! are ordinary threads the OS time-slices against the engine.

use std::collections::HashSet;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use loraplex_adapters::{
    load_dir_checked, AdapterError, AdapterLimits, AdapterSource, AdapterVersion, BaseModel,
    Identity, LoadedAdapter,
};

/// What a finished load reports to the engine.
pub(crate) type LoadResult = std::result::Result<LoadedAdapter, Arc<AdapterError>>;

pub(crate) struct Loader<M> {
    inflight: Arc<Mutex<HashSet<AdapterVersion>>>,
    base: Arc<BaseModel>,
    limits: AdapterLimits,
    /// Where results go, wrapped into the engine's message type.
    tx: Sender<M>,
    wrap: fn(AdapterSource, LoadResult) -> M,
    pool: Arc<rayon::ThreadPool>,
}

// By hand: a derive would ask for `M: Clone`, which a sender does not need.
impl<M> Clone for Loader<M> {
    fn clone(&self) -> Self {
        Self {
            inflight: self.inflight.clone(),
            base: self.base.clone(),
            limits: self.limits,
            tx: self.tx.clone(),
            wrap: self.wrap,
            pool: self.pool.clone(),
        }
    }
}

impl<M: Send + 'static> Loader<M> {
    pub(crate) fn new(
        base: BaseModel,
        limits: AdapterLimits,
        tx: Sender<M>,
        wrap: fn(AdapterSource, LoadResult) -> M,
    ) -> Self {
        Self {
            inflight: Arc::default(),
            base: Arc::new(base),
            limits,
            tx,
            wrap,
            pool: Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .thread_name(|i| format!("loraplex-loader-{i}"))
                    .build()
                    .expect("the loader pool starts"),
            ),
        }
    }

    /// Validates and builds the adapter at `dir`, named as `identity` says (a store's record is
    /// checked), in the loader's pool: the one path of engine loads and upload validation.
    pub(crate) fn load_dir(
        &self,
        dir: &std::path::Path,
        identity: Identity<'_>,
    ) -> loraplex_adapters::Result<LoadedAdapter> {
        self.pool
            .install(|| load_dir_checked(dir, &self.base, &self.limits, identity))
    }

    pub(crate) fn is_loading(&self, version: &AdapterVersion) -> bool {
        self.inflight.lock().expect("loader lock").contains(version)
    }

    /// Marks `version` as on its way; false if it already was.
    pub(crate) fn claim(&self, version: &AdapterVersion) -> bool {
        self.inflight
            .lock()
            .expect("loader lock")
            .insert(version.clone())
    }

    /// Starts loading `src` unless it is already on its way.
    pub(crate) fn load(&self, src: AdapterSource) {
        if !self.claim(&src.version) {
            return;
        }
        let this = self.clone();
        let asked = std::time::Instant::now();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let result = this
                .load_dir(
                    &src.dir,
                    src.recorded
                        .as_ref()
                        .map_or(Identity::Checksum, Identity::Recorded),
                )
                .map_err(Arc::new);
            tracing::debug!(
                adapter = %src.version,
                waited_us = started.duration_since(asked).as_micros() as u64,
                load_us = started.elapsed().as_micros() as u64,
                "adapter load done"
            );
            let _ = this.tx.send((this.wrap)(src, result));
        });
    }

    /// The engine has published the outcome of `version`'s load (or hand-over).
    pub(crate) fn finished(&self, version: &AdapterVersion) {
        self.inflight.lock().expect("loader lock").remove(version);
    }
}
