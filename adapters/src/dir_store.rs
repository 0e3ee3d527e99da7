//! The embedded store: one folder per name, one immutable sub-folder per version.
//!
//! ```text
//! ROOT/.staging/<random>/            uploads being assembled; removed at open
//! ROOT/<name>/<sha256>/              adapter_config.json, adapter_model.safetensors, manifest.json
//! ROOT/<name>/current                the sha256 of the version served
//! ```
//!
//! Crash safety comes from ordering: a version folder is complete and fsynced in staging before
//! one `rename` moves it into place, and only then does `current` (written to a temp file,
//! fsynced, renamed over) point at it. A delete renames the whole name folder into staging
//! before removing it. A crash at any step leaves the old or the new state, and [`DirStore::open`]
//! sweeps what a crash left half-done.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{AdapterError, Result};
use crate::load::{AdapterInfo, CONFIG_FILE, WEIGHTS_FILE};
use crate::store::{
    check_name, io_err, unix_now, AdapterStore, Manifest, Staging, StoreCheck, StoredAdapter,
    VersionMeta,
};

const STAGING: &str = ".staging";
const CURRENT: &str = "current";
const MANIFEST: &str = "manifest.json";

#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
    /// Serialises commits and deletes (version numbering, pointer moves). Reads take no lock:
    /// every file they read is replaced only by rename.
    write: Mutex<()>,
}

impl DirStore {
    /// Opens (creating if needed) the store at `root`, removing leftovers of interrupted writes
    /// and checking every name's current version.
    pub fn open(root: &Path) -> Result<(Self, StoreCheck)> {
        std::fs::create_dir_all(root.join(STAGING)).map_err(|e| io_err(root, e))?;
        let store = Self {
            root: root.to_path_buf(),
            write: Mutex::new(()),
        };
        let check = store.check()?;
        Ok((store, check))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn check(&self) -> Result<StoreCheck> {
        let mut check = StoreCheck::default();
        let staging = self.root.join(STAGING);
        for e in read_dir(&staging)? {
            let p = e.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| io_err(&p, e))?;
            check.removed_staging += 1;
        }
        for e in read_dir(&self.root)? {
            let name = e.file_name().to_string_lossy().into_owned();
            // Dot folders are never adapters: the server keeps its own state there (routes,
            // records) beside the adapters it describes.
            if name == STAGING || name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            if check_name(&name).is_err() {
                check
                    .broken
                    .push((name, "not a valid adapter name; ignored".into()));
                continue;
            }
            let dir = e.path();
            if !dir.join(CURRENT).exists() {
                // A first upload interrupted between the version rename and the pointer write.
                std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
                check.removed_uncommitted.push(name);
                continue;
            }
            match self.current_checked(&name) {
                Ok(Some(_)) => check.adapters += 1,
                Ok(None) => {}
                Err(e) => check.broken.push((name, e.to_string())),
            }
        }
        for (name, why) in &check.broken {
            tracing::warn!(adapter = %name, reason = %why, "adapter store entry is damaged and will not be served");
        }
        Ok(check)
    }

    /// The current version, with its files checked against the manifest's size.
    fn current_checked(&self, name: &str) -> Result<Option<StoredAdapter>> {
        let dir = self.root.join(name);
        let pointer = dir.join(CURRENT);
        let sha = match std::fs::read_to_string(&pointer) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&pointer, e)),
        };
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(corrupt(&pointer, "not a sha256"));
        }
        let vdir = dir.join(&sha);
        let manifest = read_manifest(&vdir)?;
        let size = file_len(&vdir.join(CONFIG_FILE))? + file_len(&vdir.join(WEIGHTS_FILE))?;
        if size != manifest.size || manifest.sha256 != sha || manifest.name != name {
            return Err(corrupt(&vdir, "files do not match the manifest"));
        }
        Ok(Some(StoredAdapter {
            manifest,
            dir: vdir,
        }))
    }
}

impl AdapterStore for DirStore {
    fn stage(&self) -> Result<Staging> {
        let dir = self.root.join(STAGING).join(format!("{:016x}", rand_u64()));
        std::fs::create_dir(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(Staging::new(dir))
    }

    fn commit(
        &self,
        staging: Staging,
        name: &str,
        info: &AdapterInfo,
        meta: VersionMeta,
    ) -> Result<StoredAdapter> {
        check_name(name)?;
        // Before the lock: the staging folder is this caller's alone.
        let sha256 = match &info.sha256 {
            Some(h) => h.clone(),
            None => {
                let src = staging.path();
                crate::load::sha256_files(&src.join(CONFIG_FILE), &src.join(WEIGHTS_FILE))?
            }
        };
        let _guard = self.write.lock().expect("store lock");
        let name_dir = self.root.join(name);
        let vdir = name_dir.join(&sha256);
        let manifest = if vdir.is_dir() {
            // Same content as a stored version: make it current again.
            read_manifest(&vdir)?
        } else {
            let version = self
                .versions(name)?
                .iter()
                .map(|m| m.version)
                .max()
                .unwrap_or(0)
                + 1;
            let src = staging.path();
            let manifest = Manifest {
                name: name.to_string(),
                version,
                sha256: sha256.clone(),
                checksum: Some(info.checksum.clone()),
                size: file_len(&src.join(CONFIG_FILE))? + file_len(&src.join(WEIGHTS_FILE))?,
                rank: info.rank,
                targets: info.targets.clone(),
                base_model: info.base_model.clone(),
                created: unix_now(),
                description: meta.description,
                labels: meta.labels,
            };
            let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
            write_synced(&src.join(MANIFEST), &bytes)?;
            for f in [CONFIG_FILE, WEIGHTS_FILE] {
                sync_file(&src.join(f))?;
            }
            sync_dir(src)?;
            std::fs::create_dir_all(&name_dir).map_err(|e| io_err(&name_dir, e))?;
            std::fs::rename(src, &vdir).map_err(|e| io_err(&vdir, e))?;
            staging.disarm();
            sync_dir(&name_dir)?;
            manifest
        };
        let tmp = name_dir.join(format!(".{CURRENT}.tmp"));
        write_synced(&tmp, format!("{sha256}\n").as_bytes())?;
        std::fs::rename(&tmp, name_dir.join(CURRENT)).map_err(|e| io_err(&name_dir, e))?;
        sync_dir(&name_dir)?;
        sync_dir(&self.root)?;
        Ok(StoredAdapter {
            manifest,
            dir: vdir,
        })
    }

    fn current(&self, name: &str) -> Result<Option<StoredAdapter>> {
        if check_name(name).is_err() {
            return Ok(None);
        }
        self.current_checked(name)
    }

    fn list(&self) -> Result<Vec<StoredAdapter>> {
        let mut out = Vec::new();
        for e in read_dir(&self.root)? {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == STAGING || check_name(&name).is_err() {
                continue;
            }
            // A damaged entry was reported at open; it is simply not listed.
            if let Ok(Some(s)) = self.current_checked(&name) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        Ok(out)
    }

    fn versions(&self, name: &str) -> Result<Vec<Manifest>> {
        check_name(name)?;
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut v: Vec<Manifest> = read_dir(&dir)?
            .into_iter()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| read_manifest(&e.path()).ok())
            .collect();
        v.sort_by_key(|m| m.version);
        Ok(v)
    }

    fn version(&self, name: &str, version: u64) -> Result<Option<StoredAdapter>> {
        if check_name(name).is_err() {
            return Ok(None);
        }
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Ok(None);
        }
        for e in read_dir(&dir)? {
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            if let Ok(manifest) = read_manifest(&path) {
                if manifest.version == version {
                    return Ok(Some(StoredAdapter {
                        manifest,
                        dir: path,
                    }));
                }
            }
        }
        Ok(None)
    }

    fn delete(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let _guard = self.write.lock().expect("store lock");
        let dir = self.root.join(name);
        if !dir.join(CURRENT).exists() {
            return Ok(false);
        }
        let trash = self
            .root
            .join(STAGING)
            .join(format!("deleted-{name}-{:016x}", rand_u64()));
        std::fs::rename(&dir, &trash).map_err(|e| io_err(&dir, e))?;
        sync_dir(&self.root)?;
        std::fs::remove_dir_all(&trash).map_err(|e| io_err(&trash, e))?;
        Ok(true)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .flatten()
        .collect())
}

fn read_manifest(vdir: &Path) -> Result<Manifest> {
    let p = vdir.join(MANIFEST);
    let bytes = std::fs::read(&p).map_err(|e| io_err(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(&p, &e.to_string()))
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).map_err(|e| io_err(p, e))?.len())
}

fn corrupt(p: &Path, reason: &str) -> AdapterError {
    AdapterError::Corrupt {
        path: p.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn write_synced(p: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(p).map_err(|e| io_err(p, e))?;
    f.write_all(bytes).map_err(|e| io_err(p, e))?;
    f.sync_all().map_err(|e| io_err(p, e))
}

fn sync_file(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(p, e))
}

/// Makes renames inside `dir` durable (a no-op where directories cannot be opened).
fn sync_dir(dir: &Path) -> Result<()> {
    match File::open(dir) {
        Ok(f) => f.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

/// Unique enough for staging folder names; no RNG crate needed.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
