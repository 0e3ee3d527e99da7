//! What every handler shares: the engine handle, the model's tokenizer and template, the served
//! names and the serving limits. Built once by `main` from the parsed flags.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use loraplex_models::LoadedModel;
use loraplex_runtime::EngineHandle;
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
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<GatewayConfig>,
    pub engine: EngineHandle,
    pub model: Arc<LoadedModel>,
    pub metrics: Option<PrometheusHandle>,
    /// Set when shutdown starts: new requests get 503 while running ones finish.
    pub draining: Arc<AtomicBool>,
    /// Unix time the server started (the `created` of model cards).
    pub started: u64,
    pub fingerprint: String,
}

impl AppState {
    pub fn new(
        cfg: GatewayConfig,
        engine: EngineHandle,
        model: Arc<LoadedModel>,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let started = now();
        Self {
            fingerprint: format!("fp_loraplex_{}", env!("CARGO_PKG_VERSION").replace('.', "")),
            cfg: Arc::new(cfg),
            engine,
            model,
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
            started,
        }
    }

    /// `None` for the base model, `Some(name)` for an adapter, `Err` when unknown.
    pub fn resolve_model(&self, model: &str) -> Result<Option<String>, crate::error::ApiError> {
        if model == self.cfg.served_model_name {
            return Ok(None);
        }
        if self.engine.registry().get(model).is_some() {
            return Ok(Some(model.to_string()));
        }
        Err(crate::error::ApiError::ModelNotFound(model.to_string()))
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
