//! The routes' file: `experiments.json` in a directory, replaced atomically (temp file, fsync,
//! rename, fsync of the directory) under an advisory lock file, so that replicas sharing the
//! directory never interleave their writes, and a crash leaves the old file or the new one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::spec::Experiment;
use crate::error::ApiError;

const FILE: &str = "experiments.json";
const LOCK: &str = "experiments.lock";
/// Bumped when the file's shape changes incompatibly.
const FORMAT_VERSION: u32 = 1;

/// What identifies one version of the file: a rename gives a new inode, a rewrite in place a new
/// mtime or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

#[derive(Serialize, Deserialize)]
struct TableFile {
    version: u32,
    experiments: Vec<Experiment>,
}

#[derive(Debug)]
pub(super) struct Persisted {
    dir: PathBuf,
}

impl Persisted {
    /// Creates the directory if needed.
    pub fn open(dir: &Path) -> Result<Self, ApiError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The file's current version; `None` when there is no file.
    pub fn stamp(&self) -> Option<Stamp> {
        let m = std::fs::metadata(self.path()).ok()?;
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

    /// The stored experiments and the version they were read from; `None` when there is no
    /// file. The stamp is taken first: a file replaced meanwhile only causes one more reload.
    pub fn read(&self) -> Result<Option<(Vec<Experiment>, Stamp)>, ApiError> {
        let path = self.path();
        let Some(stamp) = self.stamp() else {
            return Ok(None);
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
        };
        let file: TableFile = serde_json::from_slice(&text)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
        if file.version != FORMAT_VERSION {
            return Err(ApiError::Internal(format!(
                "{}: format version {} (this server reads {FORMAT_VERSION})",
                path.display(),
                file.version
            )));
        }
        Ok(Some((file.experiments, stamp)))
    }

    /// Replaces the file with `experiments` (sorted by name, so the file diffs well).
    pub fn write(&self, mut experiments: Vec<Experiment>) -> Result<Option<Stamp>, ApiError> {
        experiments.sort_by(|a, b| a.name.cmp(&b.name));
        let body = serde_json::to_vec_pretty(&TableFile {
            version: FORMAT_VERSION,
            experiments,
        })
        .map_err(|e| ApiError::Internal(format!("serialising routes: {e}")))?;
        let path = self.path();
        let tmp = self
            .dir
            .join(format!(".{FILE}.{:016x}.tmp", rand::random::<u64>()));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error(&path, e));
        }
        Ok(self.stamp())
    }

    /// Held while a writer reads, changes and replaces the file; released on drop.
    pub fn lock(&self) -> Result<File, ApiError> {
        let path = self.dir.join(LOCK);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        f.lock().map_err(|e| io_error(&path, e))?;
        Ok(f)
    }
}

fn io_error(path: &Path, e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("{}: {e}", path.display()))
}
