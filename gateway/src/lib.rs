//! Loraplex's OpenAI-compatible gateway: the only crate that knows HTTP, JSON and OpenAI types.
//! Flow: wire types (`wire`) → the named model (`resolve`) → validation (`validate`: ready
//! `GenerationRequest`s) → engine → `TokenEvent`s (`generation`) → JSON or SSE (`routes`,
//! `sse`, `logprobs`); errors map to HTTP in `error` only. `app` builds the router from
//! `routes`; nothing below `app` imports it.

mod app;
mod error;
pub mod experiments;
mod extract;
mod generation;
mod logprobs;
pub mod records;
mod resolve;
mod routed;
mod routes;
pub mod shadow;
mod shadow_outcomes;
mod sse;
mod state;
mod tools;
mod trace;
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
