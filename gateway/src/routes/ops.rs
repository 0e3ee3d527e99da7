//! `GET /health` and `GET /metrics`: what load balancers and Prometheus poll.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use loraplex_runtime::{MaskTimes, MASK_BUCKETS_US};

use crate::state::AppState;

/// 503 while draining, so a balancer stops sending new requests before the server goes.
pub async fn health(State(st): State<AppState>) -> Response {
    if st.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "draining"})),
        )
            .into_response();
    }
    Json(serde_json::json!({"status": "ok", "model": st.cfg.served_model_name})).into_response()
}

/// The engine's gauges are read at scrape time; counters and histograms are recorded as
/// requests go.
pub async fn metrics(State(st): State<AppState>) -> Response {
    let s = st.engine.stats();
    metrics::gauge!("loraplex_num_requests_running").set(s.running.load(Ordering::Relaxed) as f64);
    metrics::gauge!("loraplex_num_requests_waiting").set(s.waiting.load(Ordering::Relaxed) as f64);
    metrics::gauge!("loraplex_resident_adapters")
        .set(s.resident_adapters.load(Ordering::Relaxed) as f64);
    metrics::gauge!("loraplex_resident_adapter_bytes")
        .set(s.resident_adapter_bytes.load(Ordering::Relaxed) as f64);
    metrics::gauge!("loraplex_adapter_loads").set(s.adapter_loads.load(Ordering::Relaxed) as f64);
    metrics::gauge!("loraplex_adapter_evictions")
        .set(s.adapter_evictions.load(Ordering::Relaxed) as f64);
    let g = st.grammars.stats();
    metrics::gauge!("loraplex_grammar_compiles").set(g.compiled.load(Ordering::Relaxed) as f64);
    metrics::gauge!("loraplex_grammar_cache_hits").set(g.cache_hits.load(Ordering::Relaxed) as f64);
    metrics::gauge!("loraplex_grammar_compile_seconds_total")
        .set(g.compile_us_total.load(Ordering::Relaxed) as f64 / 1e6);
    // Records lost are a degradation the operator must see, never a failed request.
    let r = st.recorder.stats();
    metrics::gauge!("loraplex_records_written").set(r.written as f64);
    metrics::gauge!("loraplex_records_dropped").set(r.dropped as f64);
    metrics::gauge!("loraplex_records_failed").set(r.failed as f64);
    if let Some(q) = &st.shadows {
        let c = q.counts();
        metrics::gauge!("loraplex_shadow_queue_waiting").set(c.queued as f64);
        metrics::gauge!("loraplex_shadow_queue_running").set(c.running as f64);
    }
    match &st.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render() + &mask_histogram(&s.mask_time),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are disabled").into_response(),
    }
}

/// The engine keeps mask times in its own buckets (it has no metrics recorder), so this series
/// is written here in Prometheus' text format.
fn mask_histogram(m: &MaskTimes) -> String {
    let name = "loraplex_constraint_mask_seconds";
    let mut out = format!(
        "# HELP {name} Time to compute a constrained row's allowed tokens, per token.\n\
         # TYPE {name} histogram\n"
    );
    let mut acc = 0;
    for (i, c) in m.buckets().iter().enumerate() {
        acc += c;
        let le = MASK_BUCKETS_US
            .get(i)
            .map(|us| format!("{}", *us as f64 / 1e6))
            .unwrap_or_else(|| "+Inf".into());
        out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {acc}\n"));
    }
    let sum = m.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    out.push_str(&format!("{name}_sum {sum}\n{name}_count {acc}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_histogram_is_cumulative_prometheus_text() {
        let m = MaskTimes::default();
        m.record(std::time::Duration::from_micros(7));
        m.record(std::time::Duration::from_micros(700));
        let t = mask_histogram(&m);
        assert!(
            t.contains("# TYPE loraplex_constraint_mask_seconds histogram"),
            "{t}"
        );
        assert!(
            t.contains("loraplex_constraint_mask_seconds_bucket{le=\"0.000005\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("loraplex_constraint_mask_seconds_bucket{le=\"0.00001\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("loraplex_constraint_mask_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("loraplex_constraint_mask_seconds_count 2\n"),
            "{t}"
        );
    }
}
