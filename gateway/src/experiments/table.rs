//! [`RouteTable`]: the one owner of the routes. Readers take an `Arc` snapshot (a read lock held
//! for a pointer copy), so a lookup never waits on a writer's disk I/O; writers build a new
//! snapshot, persist it, and only then publish it, so a failed write changes nothing.
//!
//! Persisted (`persist`) in a directory that replicas may share: each notices another's write by
//! the file's identity, checked at most once a second on the request path (by the table's clock,
//! so tests need not sleep), and a writer always re-reads a changed file under the lock before
//! changing it, so no replica's change is lost.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rand::Rng;

use super::assign::{Compiled, Window};
use super::persist::{Persisted, Stamp};
use super::spec::{Experiment, ExperimentPatch, ExperimentSpec, Status};
use super::{validate, Assignment, Attributes, Catalog, Clock};
use crate::error::ApiError;

/// How often the request path looks for another replica's changes.
const RELOAD_CHECK_MS: u64 = 1000;

struct Snapshot {
    routes: HashMap<String, Arc<Compiled>>,
    /// The file version the routes were read from or written as.
    stamp: Option<Stamp>,
}

pub struct RouteTable {
    base_id: String,
    /// `None`: routes live in memory only.
    file: Option<Persisted>,
    clock: Arc<dyn Clock>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises this process's writers (the lock file serialises processes).
    writer: Mutex<()>,
    next_check_ms: AtomicU64,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("file", &self.file)
            .field("routes", &self.names())
            .finish()
    }
}

impl RouteTable {
    /// A table persisted in `dir` (created if missing; its `experiments.json` loaded if
    /// present), or in memory only. `base_id` is the model string that targets the base model.
    /// A file that cannot be read or holds an invalid route is an error: serving without the
    /// routes it names would send clients to the wrong model.
    pub fn open(
        dir: Option<&Path>,
        base_id: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ApiError> {
        let table = Self {
            base_id: base_id.to_string(),
            file: dir.map(Persisted::open).transpose()?,
            next_check_ms: AtomicU64::new(clock.now_unix_ms() + RELOAD_CHECK_MS),
            clock,
            snapshot: RwLock::new(Arc::new(Snapshot {
                routes: HashMap::new(),
                stamp: None,
            })),
            writer: Mutex::new(()),
        };
        if let Some(snapshot) = table.read_file()? {
            *table.snapshot.write().expect("route table lock") = Arc::new(snapshot);
        }
        Ok(table)
    }

    pub fn in_memory(base_id: &str, clock: Arc<dyn Clock>) -> Self {
        Self::open(None, base_id, clock).expect("a memory table opens no file")
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn get(&self, name: &str) -> Option<Experiment> {
        self.current().routes.get(name).map(|c| c.exp.clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.current().routes.contains_key(name)
    }

    /// Every route, sorted by name.
    pub fn list(&self) -> Vec<Experiment> {
        let snap = self.current();
        let mut out: Vec<Experiment> = snap.routes.values().map(|c| c.exp.clone()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The route names (model ids for `/v1/models`), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.current().routes.keys().cloned().collect();
        names.sort();
        names
    }

    /// The arm serving one request on route `name` now; `None` when there is no such route.
    pub fn assign(&self, name: &str, attrs: &Attributes) -> Option<Assignment> {
        let now = self.clock.now_unix_ms();
        self.assign_with(name, attrs, now, &mut rand::rng())
    }

    /// [`Self::assign`] at a given time with a given random source (for unit-less A/B
    /// requests and shadow sampling), so tests and simulations can replay it.
    pub fn assign_with(
        &self,
        name: &str,
        attrs: &Attributes,
        now_ms: u64,
        rng: &mut impl Rng,
    ) -> Option<Assignment> {
        let route = self.current().routes.get(name)?.clone();
        Some(route.assign(attrs, now_ms, rng))
    }

    /// The next `n` switchback windows of `name` from now (empty for other policies).
    pub fn schedule(&self, name: &str, n: usize) -> Option<Vec<Window>> {
        let route = self.current().routes.get(name)?.clone();
        Some(route.schedule(self.clock.now_unix_ms(), n))
    }

    /// The first route (by name) that serves or shadows adapter `adapter`: deleting that
    /// adapter would break it.
    pub fn uses_adapter(&self, adapter: &str) -> Option<String> {
        let snap = self.current();
        let mut users: Vec<&String> = snap
            .routes
            .iter()
            .filter(|(_, c)| c.uses_adapter(adapter))
            .map(|(n, _)| n)
            .collect();
        users.sort();
        users.first().map(|n| n.to_string())
    }

    /// Adds a route; a taken name is a 409.
    pub fn create(
        &self,
        spec: ExperimentSpec,
        catalog: &dyn Catalog,
    ) -> Result<Experiment, ApiError> {
        let now = self.clock.now_unix_ms();
        self.mutate(|routes| {
            if routes.contains_key(&spec.name) {
                return Err(ApiError::Conflict(format!(
                    "an experiment named {:?} already exists",
                    spec.name
                )));
            }
            let exp = validate::build(spec, catalog, now)?;
            routes.insert(exp.name.clone(), self.compile(exp.clone()));
            Ok(exp)
        })
    }

    /// Applies a patch (weights, status, shadows, segments) as one change, or none of it.
    pub fn update(
        &self,
        name: &str,
        patch: ExperimentPatch,
        catalog: &dyn Catalog,
    ) -> Result<Experiment, ApiError> {
        let now = self.clock.now_unix_ms();
        self.mutate(|routes| {
            let old = routes
                .get(name)
                .ok_or_else(|| ApiError::ExperimentNotFound(name.to_string()))?;
            let exp = validate::patched(&old.exp, patch, catalog, now)?;
            routes.insert(exp.name.clone(), self.compile(exp.clone()));
            Ok(exp)
        })
    }

    pub fn pause(&self, name: &str) -> Result<Experiment, ApiError> {
        self.set_status(name, Status::Paused)
    }

    pub fn resume(&self, name: &str) -> Result<Experiment, ApiError> {
        self.set_status(name, Status::Active)
    }

    fn set_status(&self, name: &str, status: Status) -> Result<Experiment, ApiError> {
        let now = self.clock.now_unix_ms();
        self.mutate(|routes| {
            let old = routes
                .get(name)
                .ok_or_else(|| ApiError::ExperimentNotFound(name.to_string()))?;
            let mut exp = old.exp.clone();
            exp.status = status;
            exp.updated_ms = now;
            routes.insert(exp.name.clone(), self.compile(exp.clone()));
            Ok(exp)
        })
    }

    /// Removes the route: new requests for its name get 404. Returns what it was.
    pub fn stop(&self, name: &str) -> Result<Experiment, ApiError> {
        self.mutate(|routes| {
            routes
                .remove(name)
                .map(|c| c.exp.clone())
                .ok_or_else(|| ApiError::ExperimentNotFound(name.to_string()))
        })
    }

    /// Makes the table hold the routes of a `--routes` file: new names are created, existing
    /// ones take the file's settings but keep their id, creation time, salt, seed and status
    /// (unless the file gives them), so a restart with the same file assigns as before. Routes the file
    /// does not name are left alone (they came from the admin API). All or nothing.
    pub fn sync(
        &self,
        specs: Vec<ExperimentSpec>,
        catalog: &dyn Catalog,
    ) -> Result<Vec<Experiment>, ApiError> {
        let now = self.clock.now_unix_ms();
        self.mutate(|routes| {
            let mut out = Vec::with_capacity(specs.len());
            for (i, spec) in specs.into_iter().enumerate() {
                let at = |e: ApiError| match e {
                    ApiError::InvalidParameter { param, message } => ApiError::InvalidParameter {
                        param: format!("experiments[{i}].{param}"),
                        message,
                    },
                    e => e,
                };
                if out.iter().any(|e: &Experiment| e.name == spec.name) {
                    return Err(at(ApiError::invalid(
                        "name",
                        format!("the file names {:?} twice", spec.name),
                    )));
                }
                let (salt, seed, status) = (
                    spec.salt.is_some(),
                    spec.seed.is_some(),
                    spec.status.is_some(),
                );
                let mut exp = validate::build(spec, catalog, now).map_err(at)?;
                if let Some(old) = routes.get(&exp.name).map(|c| &c.exp) {
                    exp.id.clone_from(&old.id);
                    exp.created_ms = old.created_ms;
                    if !salt {
                        exp.salt.clone_from(&old.salt);
                    }
                    if !seed && old.seed.is_some() {
                        exp.seed = old.seed;
                    }
                    // A pause through the admin API outlives a restart with the same file.
                    if !status {
                        exp.status = old.status;
                    }
                }
                out.push(exp);
            }
            for exp in &out {
                routes.insert(exp.name.clone(), self.compile(exp.clone()));
            }
            Ok(out)
        })
    }

    fn compile(&self, exp: Experiment) -> Arc<Compiled> {
        Arc::new(Compiled::new(exp, &self.base_id))
    }

    /// The routes now, after looking for another replica's changes if a second has passed.
    fn current(&self) -> Arc<Snapshot> {
        if self.file.is_some() {
            let now = self.clock.now_unix_ms();
            let next = self.next_check_ms.load(Ordering::Relaxed);
            // One caller per second does the check; the others read the snapshot they have.
            if now >= next
                && self
                    .next_check_ms
                    .compare_exchange(
                        next,
                        now + RELOAD_CHECK_MS,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                // A writer in progress publishes the newest routes itself.
                if let Ok(_writer) = self.writer.try_lock() {
                    self.reload_if_changed();
                }
            }
        }
        self.snapshot.read().expect("route table lock").clone()
    }

    /// Re-reads the file if it is not the version the snapshot holds; a file that cannot be
    /// read keeps the routes being served (logged). The caller holds the writer lock.
    fn reload_if_changed(&self) {
        let Some(file) = &self.file else {
            return;
        };
        if file.stamp() == self.snapshot.read().expect("route table lock").stamp {
            return;
        }
        match self.read_file() {
            Ok(Some(snapshot)) => {
                *self.snapshot.write().expect("route table lock") = Arc::new(snapshot)
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "keeping the routes served: cannot reload them"),
        }
    }

    /// The routes in the file, or `None` when there is none.
    fn read_file(&self) -> Result<Option<Snapshot>, ApiError> {
        let Some((experiments, stamp)) = self
            .file
            .as_ref()
            .map(Persisted::read)
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        let mut routes = HashMap::with_capacity(experiments.len());
        for exp in experiments {
            validate::check_stored(&exp, &self.base_id)
                .map_err(|e| ApiError::Internal(format!("stored route {:?}: {e}", exp.name)))?;
            routes.insert(exp.name.clone(), self.compile(exp));
        }
        Ok(Some(Snapshot {
            routes,
            stamp: Some(stamp),
        }))
    }

    /// Runs one change over the newest routes, persists the result, then publishes it.
    fn mutate<T>(
        &self,
        change: impl FnOnce(&mut HashMap<String, Arc<Compiled>>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let _writer = self.writer.lock().expect("route table writer");
        let _lock = self.file.as_ref().map(Persisted::lock).transpose()?;
        self.reload_if_changed();
        let mut routes = self
            .snapshot
            .read()
            .expect("route table lock")
            .routes
            .clone();
        let out = change(&mut routes)?;
        let stamp = match &self.file {
            Some(file) => file.write(routes.values().map(|c| c.exp.clone()).collect())?,
            None => None,
        };
        *self.snapshot.write().expect("route table lock") = Arc::new(Snapshot { routes, stamp });
        Ok(out)
    }
}
