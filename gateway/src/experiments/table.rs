//! [`RouteTable`]: the one owner of the routes. Readers take an `Arc` snapshot (a read lock held
//! for a pointer copy), so a lookup never waits on a writer's disk I/O; writers build a new
//! snapshot, persist it, and only then publish it, so a failed write changes nothing.
//!
//! Persistence: `experiments.json` in the table's directory, replaced atomically (temp file,
//! fsync, rename, fsync of the directory) under an advisory lock file, so that replicas sharing
//! the directory never interleave writes. Each replica notices another's write by the file's
//! identity (inode, length, mtime), checked at most once a second on the request path, and a
//! writer always re-reads a changed file before changing it, so no replica's change is lost.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::assign::{Compiled, Window};
use super::spec::{Experiment, ExperimentPatch, ExperimentSpec, Status};
use super::{validate, Assignment, Attributes, Catalog, Clock};
use crate::error::ApiError;

const FILE: &str = "experiments.json";
const LOCK: &str = "experiments.lock";
/// How often the request path looks for another replica's changes.
const RELOAD_CHECK_MS: u64 = 1000;

/// What identifies one version of the file: a rename gives a new inode, a rewrite in place a new
/// mtime or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

struct Snapshot {
    routes: HashMap<String, Arc<Compiled>>,
    /// The file version the routes were read from or written as.
    stamp: Option<Stamp>,
}

#[derive(Serialize, Deserialize)]
struct TableFile {
    version: u32,
    experiments: Vec<Experiment>,
}

pub struct RouteTable {
    base_id: String,
    /// `None`: routes live in memory only.
    dir: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises this process's writers (the lock file serialises processes).
    writer: Mutex<()>,
    next_check_ms: AtomicU64,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("dir", &self.dir)
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
            dir: dir.map(Path::to_path_buf),
            next_check_ms: AtomicU64::new(clock.now_unix_ms() + RELOAD_CHECK_MS),
            clock,
            snapshot: RwLock::new(Arc::new(Snapshot {
                routes: HashMap::new(),
                stamp: None,
            })),
            writer: Mutex::new(()),
        };
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
            if let Some(snapshot) = table.read_file()? {
                *table.snapshot.write().expect("route table lock") = Arc::new(snapshot);
            }
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
    /// ones take the file's settings but keep their id, creation time, salt and seed (unless the
    /// file gives them), so a restart with the same file assigns as before. Routes the file
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
                let (salt, seed) = (spec.salt.is_some(), spec.seed.is_some());
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
        if self.dir.is_some() {
            let now = self.clock.now_unix_ms();
            let next = self.next_check_ms.load(Ordering::Relaxed);
            // One caller per second does the check; the others read the snapshot they have.
            if now >= next
                && self
                    .next_check_ms
                    .compare_exchange(next, now + RELOAD_CHECK_MS, Ordering::AcqRel, Ordering::Relaxed)
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
        let (Some(dir), held) = (&self.dir, self.snapshot.read().expect("route table lock").stamp)
        else {
            return;
        };
        if stamp(&dir.join(FILE)) == held {
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

    /// The routes in the file, or `None` when there is no file.
    fn read_file(&self) -> Result<Option<Snapshot>, ApiError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(FILE);
        // The stamp is taken first: a file replaced meanwhile only causes one more reload.
        let Some(stamp) = stamp(&path) else {
            return Ok(None);
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
        };
        let file: TableFile = serde_json::from_slice(&text)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
        let mut routes = HashMap::with_capacity(file.experiments.len());
        for exp in file.experiments {
            validate::check_stored(&exp, &self.base_id)
                .map_err(|e| ApiError::Internal(format!("{}: route {:?}: {e}", path.display(), exp.name)))?;
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
        let _lock = self.lock_file()?;
        self.reload_if_changed();
        let mut routes = self.snapshot.read().expect("route table lock").routes.clone();
        let out = change(&mut routes)?;
        let stamp = self.write_file(&routes)?;
        *self.snapshot.write().expect("route table lock") = Arc::new(Snapshot { routes, stamp });
        Ok(out)
    }

    /// Held while a writer reads, changes and replaces the file; released on drop.
    fn lock_file(&self) -> Result<Option<File>, ApiError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(LOCK);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        f.lock().map_err(|e| io_error(&path, e))?;
        Ok(Some(f))
    }

    fn write_file(&self, routes: &HashMap<String, Arc<Compiled>>) -> Result<Option<Stamp>, ApiError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let mut experiments: Vec<Experiment> = routes.values().map(|c| c.exp.clone()).collect();
        experiments.sort_by(|a, b| a.name.cmp(&b.name));
        let body = serde_json::to_vec_pretty(&TableFile {
            version: 1,
            experiments,
        })
        .map_err(|e| ApiError::Internal(format!("serialising routes: {e}")))?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!(".{FILE}.{:016x}.tmp", rand::random::<u64>()));
        let written = (|| {
            use std::io::Write;
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error(&path, e));
        }
        Ok(stamp(&path))
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        inode,
        len: m.len(),
        modified: m.modified().ok(),
    })
}

fn io_error(path: &Path, e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("{}: {e}", path.display()))
}
