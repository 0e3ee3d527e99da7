//! The admin API: adapters uploaded, pulled, listed, replaced and deleted while serving.
//!
//! Every way in (multipart upload, hub or local pull, vLLM's `load_lora_adapter`) ends in
//! [`install`]: the staged folder is validated by the engine's own loader, committed to the
//! store, and only then registered, so a refused adapter leaves no trace and a replaced one
//! switches new requests atomically while running ones keep their lease on the old version.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Multipart, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use loraplex_adapters::{
    check_name, AdapterStore, Manifest, Staging, StoredAdapter, VersionMeta, CONFIG_FILE,
    WEIGHTS_FILE,
};
use serde::Deserialize;

use crate::error::ApiError;
use crate::experiments::Target;
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::upload::{assemble, read_form};
use crate::wire::{AdapterCard, AdapterList, VersionCard};

fn store(st: &AppState) -> Result<Arc<dyn AdapterStore>, ApiError> {
    st.store
        .clone()
        .ok_or_else(|| ApiError::Forbidden("this server has no adapter store".into()))
}

/// Names become folder names and URL segments, and must not shadow the base model.
fn check_new_name(st: &AppState, name: &str) -> Result<(), ApiError> {
    check_name(name).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    if name == st.cfg.served_model_name {
        return Err(ApiError::invalid(
            "name",
            format!("{name:?} is the base model's id"),
        ));
    }
    if st.experiments.contains(name) {
        return Err(ApiError::Conflict(format!(
            "{name:?} is a route's name; an adapter cannot take it"
        )));
    }
    Ok(())
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("admin task failed: {e}")))?
}

/// Validates the PEFT folder at the root of `staging`, stores it as the current version of
/// `name` and makes it servable.
async fn install(
    st: &AppState,
    staging: Staging,
    name: String,
    meta: VersionMeta,
) -> Result<AdapterCard, ApiError> {
    let store = store(st)?;
    let engine = st.engine.clone();
    let t0 = std::time::Instant::now();
    let (staging, loaded) = blocking(move || {
        // The files must reach the disk before the commit; flush them while validating.
        let loaded = std::thread::scope(|s| {
            s.spawn(|| {
                for f in [CONFIG_FILE, WEIGHTS_FILE] {
                    let _ = std::fs::File::open(staging.path().join(f)).and_then(|f| f.sync_all());
                }
            });
            engine.validate_adapter(staging.path())
        })?;
        Ok((staging, loaded))
    })
    .await?;
    let info = loaded.info.clone();
    // Commit and register as one step, so that two uploads racing on a name leave the store's
    // current version and the served one the same.
    let _writer = st.admin_lock.lock().await;
    let validated = t0.elapsed();
    let n = name.clone();
    let stored = blocking(move || Ok(store.commit(staging, &n, &info, meta)?)).await?;
    let committed = t0.elapsed() - validated;
    let src = st.engine.registry().register_version(
        &name,
        stored.dir.clone(),
        Some(stored.manifest.recorded()),
    );
    // The validated weights are what a first request would load: hand them over.
    st.engine.offer_adapter(src, loaded);
    metrics::counter!("loraplex_adapter_installs_total").increment(1);
    tracing::info!(
        adapter = %name,
        version = stored.manifest.version,
        sha256 = %stored.manifest.sha256,
        validate_ms = validated.as_secs_f64() * 1e3,
        commit_ms = committed.as_secs_f64() * 1e3,
        "adapter installed"
    );
    Ok(card(st, &name, Some(&stored), true))
}

/// Copies a local PEFT folder into a staging folder (the store owns its copy).
fn stage_copy(store: &dyn AdapterStore, from: &Path) -> Result<Staging, ApiError> {
    let staging = store.stage()?;
    for f in [CONFIG_FILE, WEIGHTS_FILE] {
        let src = from.join(f);
        if !src.is_file() {
            return Err(ApiError::InvalidAdapter(format!(
                "{} has no {f}",
                from.display()
            )));
        }
        std::fs::copy(&src, staging.path().join(f))
            .map_err(|e| ApiError::Internal(format!("copying {}: {e}", src.display())))?;
    }
    Ok(staging)
}

/// `path` resolved, and refused unless it lies under `--allowed-local-adapter-root`.
fn allowed_local(st: &AppState, path: &str) -> Result<PathBuf, ApiError> {
    let Some(root) = &st.cfg.allowed_local_adapter_root else {
        return Err(ApiError::Forbidden(
            "loading adapters from server paths is disabled; start with --allowed-local-adapter-root".into(),
        ));
    };
    let outside = || {
        ApiError::Forbidden(format!(
            "{path} is not under the allowed local adapter root"
        ))
    };
    let p = std::fs::canonicalize(path).map_err(|_| outside())?;
    let root = std::fs::canonicalize(root).map_err(|_| outside())?;
    if p.starts_with(&root) && p.is_dir() {
        Ok(p)
    } else {
        Err(outside())
    }
}

/// `POST /v1/adapters`: multipart with `name`, optional `description` and `labels`, and the
/// two files or one archive.
pub async fn upload(State(st): State<AppState>, mp: Multipart) -> Result<Response, ApiError> {
    let store = store(&st)?;
    let staging = store.stage()?;
    let limit = st.cfg.max_upload_bytes;
    let form = read_form(mp, staging.path(), limit).await?;
    let name = form
        .name
        .clone()
        .ok_or_else(|| ApiError::invalid("name", "the upload needs a name field"))?;
    check_new_name(&st, &name)?;
    let files = form.files.clone();
    let staging = blocking(move || {
        assemble(staging.path(), &files, limit as u64)?;
        Ok(staging)
    })
    .await?;
    let meta = VersionMeta {
        description: form.description,
        labels: form.labels,
    };
    let card = install(&st, staging, name, meta).await?;
    Ok((StatusCode::CREATED, Json(card)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    pub name: String,
    /// A hub id (`org/name`) or a folder under the allowed local root.
    pub source: String,
    pub revision: Option<String>,
    /// Hub token for private repos (else the server's).
    pub token: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/adapters/pull`.
pub async fn pull(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<PullRequest>,
) -> Result<Response, ApiError> {
    check_new_name(&st, &req.name)?;
    let store = store(&st)?;
    let local = Path::new(&req.source).is_absolute() || req.source.starts_with('.');
    let staging = if local {
        let dir = allowed_local(&st, &req.source)?;
        blocking(move || stage_copy(store.as_ref(), &dir)).await?
    } else {
        let mut hub_ref = loraplex_models::HubRef::parse(&req.source)
            .filter(|r| r.gguf_file.is_none())
            .ok_or_else(|| {
                ApiError::invalid("source", "expected a hub id org/name or an absolute path")
            })?;
        if req.revision.is_some() {
            hub_ref.revision = req.revision.clone();
        }
        let mut hub = st.cfg.hub.clone();
        if req.token.is_some() {
            hub.token = req.token.clone();
        }
        blocking(move || {
            let dir = loraplex_models::fetch_files(&hub_ref, &hub, &[CONFIG_FILE, WEIGHTS_FILE])
                .map_err(|e| ApiError::InvalidAdapter(format!("cannot pull: {e}")))?;
            stage_copy(store.as_ref(), &dir)
        })
        .await?
    };
    let meta = VersionMeta {
        description: req.description,
        labels: req.labels,
    };
    let card = install(&st, staging, req.name, meta).await?;
    Ok((StatusCode::CREATED, Json(card)).into_response())
}

fn card(
    st: &AppState,
    name: &str,
    stored: Option<&StoredAdapter>,
    with_versions: bool,
) -> AdapterCard {
    let resident = st.engine.is_resident(name);
    let requests = st.adapter_requests(name);
    let versions = match (with_versions, &st.store) {
        (true, Some(store)) => store
            .versions(name)
            .unwrap_or_default()
            .iter()
            .map(VersionCard::from)
            .collect(),
        _ => Vec::new(),
    };
    let m: Option<&Manifest> = stored.map(|s| &s.manifest);
    AdapterCard {
        id: name.to_string(),
        object: "adapter",
        source: if stored.is_some() { "store" } else { "local" },
        path: st
            .engine
            .registry()
            .get(name)
            .map(|s| s.dir.display().to_string()),
        version: m.map(|m| m.version),
        sha256: m.map(|m| m.sha256.clone()),
        size: m.map(|m| m.size),
        rank: m.map(|m| m.rank),
        targets: m.map(|m| m.targets.clone()).unwrap_or_default(),
        base_model: m.and_then(|m| m.base_model.clone()),
        created: m.map(|m| m.created),
        description: m.and_then(|m| m.description.clone()),
        labels: m.map(|m| m.labels.clone()).unwrap_or_default(),
        resident,
        requests,
        versions,
    }
}

/// `GET /v1/adapters`: every servable adapter (stored, and those given by flags).
pub async fn list(State(st): State<AppState>) -> Result<Json<AdapterList>, ApiError> {
    let stored = match st.store.clone() {
        Some(s) => blocking(move || Ok(s.list()?)).await?,
        None => Vec::new(),
    };
    let mut data: Vec<AdapterCard> = Vec::new();
    for name in st.engine.registry().names() {
        let s = stored.iter().find(|s| s.manifest.name == name);
        data.push(card(&st, &name, s, false));
    }
    Ok(Json(AdapterList {
        object: "list",
        data,
    }))
}

/// `GET /v1/adapters/{name}`: one adapter with its stored versions.
pub async fn show(
    State(st): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<AdapterCard>, ApiError> {
    let stored = match st.store.clone() {
        Some(s) => {
            let n = name.clone();
            blocking(move || Ok(s.current(&n)?)).await?
        }
        None => None,
    };
    if stored.is_none() && st.engine.registry().get(&name).is_none() {
        return Err(ApiError::AdapterNotFound(name));
    }
    Ok(Json(card(&st, &name, stored.as_ref(), true)))
}

/// Unregisters `name` (new requests get 404 at once), drops its resident copy once running
/// requests release it, and deletes it from the store.
async fn remove(st: &AppState, name: &str) -> Result<(), ApiError> {
    let _writer = st.admin_lock.lock().await;
    if let Some(route) = st.experiments.uses_adapter(name) {
        return Err(ApiError::Conflict(format!(
            "the adapter {name:?} is used by the route {route:?}: stop the route or change its arms and shadows first"
        )));
    }
    let deleted = match st.store.clone() {
        Some(s) => {
            let n = name.to_string();
            blocking(move || match check_name(&n) {
                Ok(()) => Ok(s.delete(&n)?),
                Err(_) => Ok(false),
            })
            .await?
        }
        None => false,
    };
    let registry = st.engine.registry();
    let registered = registry.remove(name).is_some();
    // Versions routes pinned were served as `name@version`.
    for pinned in registry.names() {
        if Target::split_pinned(&pinned).is_some_and(|(n, _)| n == name) {
            registry.remove(&pinned);
            st.engine.unload_adapter(&pinned);
        }
    }
    if !deleted && !registered {
        return Err(ApiError::AdapterNotFound(name.to_string()));
    }
    st.engine.unload_adapter(name);
    tracing::info!(adapter = %name, "adapter deleted");
    Ok(())
}

/// `DELETE /v1/adapters/{name}`.
pub async fn delete(
    State(st): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    remove(&st, &name).await?;
    Ok(Json(
        serde_json::json!({"id": name, "object": "adapter", "deleted": true}),
    ))
}

#[derive(Debug, Deserialize)]
pub struct LoadLora {
    pub lora_name: String,
    pub lora_path: String,
}

/// vLLM's `POST /v1/load_lora_adapter`: a folder under the allowed root, stored like an upload.
pub async fn load_lora(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<LoadLora>,
) -> Result<String, ApiError> {
    check_new_name(&st, &req.lora_name).map_err(|e| match e {
        ApiError::InvalidParameter { message, .. } => ApiError::invalid("lora_name", message),
        e => e,
    })?;
    if st.engine.registry().get(&req.lora_name).is_some() {
        return Err(ApiError::Conflict(format!(
            "The lora adapter '{}' has already been loaded.",
            req.lora_name
        )));
    }
    let dir = allowed_local(&st, &req.lora_path)?;
    let store = store(&st)?;
    let staging = blocking(move || stage_copy(store.as_ref(), &dir)).await?;
    install(&st, staging, req.lora_name.clone(), VersionMeta::default()).await?;
    Ok(format!(
        "Success: LoRA adapter '{}' added successfully.",
        req.lora_name
    ))
}

#[derive(Debug, Deserialize)]
pub struct UnloadLora {
    pub lora_name: String,
}

/// vLLM's `POST /v1/unload_lora_adapter`.
pub async fn unload_lora(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<UnloadLora>,
) -> Result<String, ApiError> {
    remove(&st, &req.lora_name).await?;
    Ok(format!(
        "Success: LoRA adapter '{}' removed successfully.",
        req.lora_name
    ))
}
