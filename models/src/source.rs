//! Where a model comes from: a `.gguf` file, a Hugging Face directory, or a hub id resolved
//! through `hf-hub` and its cache layout.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use crate::error::{ModelError, Result};

/// Hub access settings; `main` fills them from `HF_HOME`, `HF_HUB_OFFLINE`, `HF_TOKEN`, so nothing
/// below it reads the environment.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The hub cache (`$HF_HOME/hub`); `None` → hf-hub's default.
    pub cache_dir: Option<PathBuf>,
    /// Read the cache only, never the network.
    pub offline: bool,
    pub token: Option<String>,
    pub endpoint: Option<String>,
}

/// A model as local files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    Gguf(PathBuf),
    /// A directory holding config.json, weights and tokenizer files.
    HfDir(PathBuf),
}

/// A hub reference: `org/name`, optionally `@revision`, optionally `:file.gguf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub repo: String,
    pub revision: Option<String>,
    pub gguf_file: Option<String>,
}

impl HubRef {
    pub fn parse(s: &str) -> Option<Self> {
        let (rest, gguf_file) = match s.split_once(':') {
            Some((r, f)) if f.ends_with(".gguf") => (r, Some(f.to_string())),
            Some(_) => return None,
            None => (s, None),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((r, rev)) => (r, Some(rev.to_string())),
            None => (rest, None),
        };
        let mut parts = repo.split('/');
        let (org, name) = (parts.next()?, parts.next()?);
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.next().is_some() || !ok(org) || !ok(name) || org.starts_with('.') {
            return None;
        }
        Some(Self {
            repo: repo.to_string(),
            revision,
            gguf_file,
        })
    }

    fn repo(&self) -> Repo {
        match &self.revision {
            Some(rev) => Repo::with_revision(self.repo.clone(), RepoType::Model, rev.clone()),
            None => Repo::new(self.repo.clone(), RepoType::Model),
        }
    }
}

/// Resolves the `MODEL` argument: an existing path wins; otherwise it must be a hub id.
pub fn resolve(spec: &str, hub: &HubOptions) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(ModelFiles::Gguf(path.to_path_buf()));
    }
    if path.is_dir() {
        return Ok(ModelFiles::HfDir(path.to_path_buf()));
    }
    match HubRef::parse(spec) {
        Some(r) if !spec.starts_with('.') && !spec.starts_with('/') => fetch(&r, hub),
        _ => Err(ModelError::NotFound {
            path: path.to_path_buf(),
        }),
    }
}

/// Files an HF checkpoint needs; optional ones may be absent from the repo.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

fn fetch(r: &HubRef, hub: &HubOptions) -> Result<ModelFiles> {
    let getter = Getter::new(r, hub)?;
    if let Some(file) = &r.gguf_file {
        return Ok(ModelFiles::Gguf(getter.get(file)?));
    }
    let config = getter.get(REQUIRED[0])?;
    let dir = config.parent().expect("a file has a parent").to_path_buf();
    getter.get(REQUIRED[1])?;
    for f in OPTIONAL {
        match getter.get(f) {
            Ok(_) => {}
            Err(ModelError::HubOffline { .. }) => {}
            Err(ModelError::Hub { reason, .. }) if reason.contains("404") => {}
            Err(e) => return Err(e),
        }
    }
    // Weights: a single file, or the shards an index names.
    match getter.get("model.safetensors") {
        Ok(_) => {}
        Err(single_err) => {
            let index = getter
                .get("model.safetensors.index.json")
                .map_err(|_| single_err)?;
            for shard in crate::hf::weight_files(index.parent().expect("parent"))? {
                let name = shard
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                getter.get(&name)?;
            }
        }
    }
    Ok(ModelFiles::HfDir(dir))
}

/// Fetches the named files of a hub repo (a PEFT adapter, say) into the hub cache and returns
/// the snapshot folder holding them.
pub fn fetch_files(r: &HubRef, hub: &HubOptions, files: &[&str]) -> Result<PathBuf> {
    let getter = Getter::new(r, hub)?;
    let mut dir = None;
    for f in files {
        let p = getter.get(f)?;
        dir = p.parent().map(Path::to_path_buf);
    }
    dir.ok_or_else(|| ModelError::Hub {
        repo: r.repo.clone(),
        file: String::new(),
        reason: "no files requested".into(),
    })
}

enum Getter {
    Cache(hf_hub::CacheRepo, String),
    /// Boxed: an API client is several times the size of a cache handle.
    Api(Box<hf_hub::api::sync::ApiRepo>, String),
}

impl Getter {
    fn new(r: &HubRef, hub: &HubOptions) -> Result<Self> {
        let cache = match &hub.cache_dir {
            Some(d) => hf_hub::Cache::new(d.clone()),
            None => hf_hub::Cache::default(),
        };
        if hub.offline {
            return Ok(Getter::Cache(cache.repo(r.repo()), r.repo.clone()));
        }
        let mut b = hf_hub::api::sync::ApiBuilder::from_cache(cache)
            .with_progress(true)
            .with_token(hub.token.clone());
        if let Some(e) = &hub.endpoint {
            b = b.with_endpoint(e.clone());
        }
        let api = b.build().map_err(|e| ModelError::Hub {
            repo: r.repo.clone(),
            file: String::new(),
            reason: e.to_string(),
        })?;
        Ok(Getter::Api(Box::new(api.repo(r.repo())), r.repo.clone()))
    }

    fn get(&self, file: &str) -> Result<PathBuf> {
        match self {
            Getter::Cache(c, repo) => c.get(file).ok_or_else(|| ModelError::HubOffline {
                repo: format!("{repo} (file {file})"),
            }),
            Getter::Api(a, repo) => a.get(file).map_err(|e| ModelError::Hub {
                repo: repo.clone(),
                file: file.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_references() {
        let r = HubRef::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!(r.repo, "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(r.revision, None);
        let r = HubRef::parse("org/name@v1:model.Q4_1.gguf").unwrap();
        assert_eq!(r.revision.as_deref(), Some("v1"));
        assert_eq!(r.gguf_file.as_deref(), Some("model.Q4_1.gguf"));
        assert!(HubRef::parse("just-a-name").is_none());
        assert!(HubRef::parse("a/b/c").is_none());
        assert!(HubRef::parse("../x").is_none());
    }
}
