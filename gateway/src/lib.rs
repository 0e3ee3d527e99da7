//! Loraplex's OpenAI-compatible gateway: the only crate that knows HTTP, JSON and OpenAI types.
//! Flow: wire types (`wire`) → validation (`validate`) → `GenerationRequest` → engine →
//! `TokenEvent`s → JSON or SSE (`chat`, `completions`); errors map to HTTP in `error` only.

mod admin;
mod app;
mod chat;
mod completions;
mod error;
mod generation;
mod models;
mod state;
mod upload;
mod validate;
pub mod wire;

pub use app::{app, run};
pub use error::ApiError;
pub use state::{AppState, GatewayConfig};

/// Installs the Prometheus recorder (once per process, from `main`).
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ])
        .ok()?
        .install_recorder()
        .ok()
}
