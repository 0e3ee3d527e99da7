//! What every handler shares: the engine handle, the model's tokenizer and template, the served
//! names and the serving limits. Built once by `main` from the parsed flags.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use loraplex_adapters::AdapterStore;

use crate::experiments::{Catalog, Clock, RouteTable, SystemClock};
use crate::records::Recorder;
use crate::shadow::{ShadowConfig, ShadowQueue};
use loraplex_models::{HubOptions, LoadedModel};
use loraplex_runtime::{EngineHandle, Grammars};
use metrics_exporter_prometheus::PrometheusHandle;

/// Gateway settings (the HTTP half of `loraplex serve`'s flags).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The id clients use for the base model.
    pub served_model_name: String,
    pub api_key: Option<String>,
    /// Longest prompt + completion accepted (≤ the model's context).
    pub max_model_len: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for running requests.
    pub drain_timeout: Duration,
    /// Key of the admin API (`/v1/adapters`, `load_lora_adapter`); inference keys get 403 there.
    pub admin_api_key: Option<String>,
    /// Largest adapter upload, and largest size an uploaded archive may unpack to.
    pub max_upload_bytes: usize,
    /// Server folders that pulls and `load_lora_adapter` may read from; `None` refuses paths.
    pub allowed_local_adapter_root: Option<PathBuf>,
    /// Hub access for `POST /v1/adapters/pull`.
    pub hub: HubOptions,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            served_model_name: "model".into(),
            api_key: None,
            max_model_len: 2048,
            max_body_bytes: 4 << 20,
            request_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
            admin_api_key: None,
            max_upload_bytes: 512 << 20,
            allowed_local_adapter_root: None,
            hub: HubOptions::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<GatewayConfig>,
    pub engine: EngineHandle,
    pub model: Arc<LoadedModel>,
    /// The model tokenizer's grammar compiler and its cache of compiled output constraints.
    pub grammars: Arc<Grammars>,
    pub metrics: Option<PrometheusHandle>,
    /// Set when shutdown starts: new requests get 503 while running ones finish.
    pub draining: Arc<AtomicBool>,
    /// Unix time the server started (the `created` of model cards).
    pub started: u64,
    pub fingerprint: String,
    /// Durable adapter versions (uploads, pulls); `None` disables the admin API's writes.
    pub store: Option<Arc<dyn AdapterStore>>,
    /// The routes (experiments): public model names mapped to what serves them.
    pub experiments: Arc<RouteTable>,
    /// The time routes see (switchback windows, creation times); a test clock in tests.
    pub clock: Arc<dyn Clock>,
    /// Where routed requests, shadow scores and feedback are appended; disabled by default.
    pub recorder: Recorder,
    /// Live shadow scoring; `None` (the default) skips shadows, counted in the metrics.
    pub shadows: Option<ShadowQueue>,
    /// Completion requests per adapter name since start-up.
    requests_by_adapter: Arc<Mutex<HashMap<String, u64>>>,
    /// Serialises the admin API's store-and-registry changes.
    pub(crate) admin_lock: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    pub fn new(
        cfg: GatewayConfig,
        engine: EngineHandle,
        model: Arc<LoadedModel>,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let started = now();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let experiments = Arc::new(RouteTable::in_memory(&cfg.served_model_name, clock.clone()));
        let vocab = model.model.config().vocab_size;
        // Indexing a tokenizer fails only if llguidance's fixed token-class patterns do not
        // compile, which does not depend on the tokenizer.
        let grammars = Grammars::new(&model.tokenizer, vocab).expect("the tokenizer is indexed");
        Self {
            grammars: Arc::new(grammars),
            experiments,
            clock,
            fingerprint: format!("fp_loraplex_{}", env!("CARGO_PKG_VERSION").replace('.', "")),
            cfg: Arc::new(cfg),
            engine,
            model,
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
            started,
            store: None,
            recorder: Recorder::disabled(),
            shadows: None,
            requests_by_adapter: Arc::default(),
            admin_lock: Arc::default(),
        }
    }

    pub fn with_store(mut self, store: Arc<dyn AdapterStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Routes from `table` (persisted, or with a test clock) instead of the empty in-memory
    /// table `new` starts with; the state's clock becomes the table's.
    pub fn with_experiments(mut self, table: Arc<RouteTable>) -> Self {
        self.clock = table.clock().clone();
        self.experiments = table;
        self
    }

    /// Records under `recorder` (call before [`AppState::with_shadow_queue`], whose outcomes
    /// it records).
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = recorder;
        self
    }

    /// Starts live shadow scoring (inside a tokio runtime); outcomes become shadow records
    /// and metrics.
    pub fn with_shadow_queue(mut self, cfg: ShadowConfig) -> Self {
        let sink = crate::shadow_outcomes::sink(self.recorder.clone(), self.engine.clone());
        self.shadows = Some(ShadowQueue::start(self.engine.clone(), cfg, sink));
        self
    }

    pub fn count_adapter_request(&self, name: &str) {
        *self
            .requests_by_adapter
            .lock()
            .expect("counter lock")
            .entry(name.to_string())
            .or_default() += 1;
    }

    pub fn adapter_requests(&self, name: &str) -> u64 {
        self.requests_by_adapter
            .lock()
            .expect("counter lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// What routes may name: the base id, the registered adapters and the store's versions. The
/// store calls read the disk: call from blocking code.
impl Catalog for AppState {
    fn base_id(&self) -> &str {
        &self.cfg.served_model_name
    }

    fn adapter_exists(&self, name: &str) -> bool {
        self.engine.registry().get(name).is_some()
            || self
                .store
                .as_ref()
                .is_some_and(|s| matches!(s.current(name), Ok(Some(_))))
    }

    fn version_exists(&self, name: &str, version: u64) -> bool {
        self.store.as_ref().is_some_and(|s| {
            s.versions(name)
                .is_ok_and(|vs| vs.iter().any(|m| m.version == version))
        })
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `chatcmpl-…`/`cmpl-…` ids: 24 random hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}
