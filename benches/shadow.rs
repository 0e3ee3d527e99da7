//! What live shadows cost the traffic they shadow, and what the scoring endpoint sustains, on the
//! default model in one process (the whole router via `app().oneshot`, no TCP):
//! 1. primary TTFT and latency p50/p95 at 8 concurrent streaming clients on a route with 0 and
//!    with 2 score-mode shadows, rounds alternating so both see the same machine; with the share
//!    of primaries scored (coverage) and the shadow drop rate;
//! 2. `POST /v1/shadow/score` throughput (scored tokens/s) for 1 and 8 models over the same pairs.
//!
//! `cargo bench --bench shadow`; env `LORAPLEX_BENCH_ROUNDS` (4), `LORAPLEX_BENCH_REQUESTS` (per
//! client and round, 4).

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use loraplex_adapters::AdapterRegistry;
use loraplex_gateway::records::{Recorder, RecorderConfig};
use loraplex_gateway::shadow::ShadowConfig;
use loraplex_gateway::{app, AppState, GatewayConfig};
use loraplex_models::LoadOptions;
use loraplex_runtime::EngineConfig;
use serde_json::{json, Value};
use tower::ServiceExt;

const CLIENTS: usize = 8;
const MAX_TOKENS: usize = 48;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn post(st: &AppState, uri: &str, body: Value) -> Value {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    assert!(resp.status().is_success(), "{uri}: {}", resp.status());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// One streamed chat request: (time to the first content chunk, time to the end).
async fn streamed(st: &AppState, model: &str, user: usize, k: usize) -> (Duration, Duration) {
    let body = json!({"model": model, "user": format!("u{user}"), "stream": true,
        "max_tokens": MAX_TOKENS, "ignore_eos": true, "temperature": 0,
        "messages": [{"role": "user", "content": format!("Tell me about topic number {k} in detail.")}]});
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let start = Instant::now();
    let mut body = app(st.clone()).oneshot(req).await.unwrap().into_body();
    let mut ttft = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            // The first chunk with generated text (the opening chunk's content is empty).
            let text = data
                .windows(12)
                .any(|w| &w[..11] == b"\"content\":\"" && w[11] != b'"');
            if ttft.is_none() && text {
                ttft = Some(start.elapsed());
            }
        }
    }
    (ttft.unwrap_or_else(|| start.elapsed()), start.elapsed())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    common::pin_thread_count();
    let rounds = env("LORAPLEX_BENCH_ROUNDS", 4);
    let per_client = env("LORAPLEX_BENCH_REQUESTS", 4);
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm =
        Arc::new(loraplex_models::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap());
    let scratch = common::Scratch::new("loraplex-bench-shadow-");
    let dir = scratch.path();
    let reg = AdapterRegistry::new();
    let names: Vec<String> = std::iter::once("primary".to_string())
        .chain((1..8).map(|k| format!("cand-{k}")))
        .collect();
    for (k, name) in names.iter().enumerate() {
        common::write_adapter(
            &dir.join(name),
            lm.model.config(),
            16,
            &[loraplex_models::Proj::Q, loraplex_models::Proj::V],
            candle_core::DType::F32,
            k as u64 + 1,
        );
        reg.register(name, dir.join(name));
    }
    let mut engine_cfg = EngineConfig::default();
    engine_cfg.scheduler.shadow_step_tokens = env(
        "LORAPLEX_BENCH_SHADOW_STEP_TOKENS",
        engine_cfg.scheduler.shadow_step_tokens,
    );
    let shadow_step_tokens = engine_cfg.scheduler.shadow_step_tokens;
    let engine = loraplex_runtime::start(lm.clone(), reg, engine_cfg).unwrap();
    let cfg = GatewayConfig {
        served_model_name: "m".into(),
        max_model_len: 2048,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async move {
        let st = AppState::new(cfg, engine.clone(), lm, None)
            .with_recorder(Recorder::start(RecorderConfig::new(dir.join("records"))))
            .with_shadow_queue(ShadowConfig::default());
        post(&st, "/v1/experiments", json!({"name": "plain", "type": "single",
            "arms": [{"name": "a", "model": "primary", "weight": 1}]})).await;
        post(&st, "/v1/experiments", json!({"name": "shadowed", "type": "single",
            "arms": [{"name": "a", "model": "primary", "weight": 1}],
            "shadows": [{"model": "cand-1"}, {"model": "cand-2"}]})).await;
        // Warm-up: adapters resident, allocator settled.
        for route in ["plain", "shadowed"] {
            streamed(&st, route, 0, 0).await;
        }
        let queue = st.shadows.clone().unwrap();
        while queue.counts().queued + queue.counts().running > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = queue.counts();
        let mut samples: [(Vec<f64>, Vec<f64>); 2] = Default::default();
        let mut shadowed_requests = 0u64;
        for round in 0..rounds * 2 {
            // Alternate which route goes first, so neither always runs on a fresher machine.
            let i = (round + round / 2) % 2;
            let route = ["plain", "shadowed"][i];
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let st = st.clone();
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        for k in 0..per_client {
                            out.push(streamed(&st, route, c, round * 100 + k).await);
                        }
                        out
                    })
                })
                .collect();
            for t in tasks {
                for (ttft, total) in t.await.unwrap() {
                    samples[i].0.push(ttft.as_secs_f64() * 1e3);
                    samples[i].1.push(total.as_secs_f64() * 1e3);
                }
            }
            if i == 1 {
                shadowed_requests += (CLIENTS * per_client) as u64;
            }
            // Let the shadows of this round finish before a plain round is measured.
            while queue.counts().queued + queue.counts().running > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let after = queue.counts();
        let jobs = 2 * shadowed_requests;
        let scored = after.scored - before.scored;
        let dropped = after.dropped - before.dropped;
        let mut stats = Vec::new();
        for (ttft, lat) in samples.iter_mut() {
            stats.push((pct(ttft, 0.5), pct(ttft, 0.95), pct(lat, 0.5), pct(lat, 0.95)));
        }
        let (p, s) = (stats[0], stats[1]);
        // The endpoint over the same 16 pairs: 1 model, then 8 (the base and adapters, repeated).
        let completion: Vec<u32> = (0..MAX_TOKENS as u32).map(|t| 100 + t).collect();
        let mut throughput = Vec::new();
        for n in [1usize, 8] {
            let models = &names[..n];
            let start = Instant::now();
            let mut tokens = 0usize;
            for k in 0..16u32 {
                let c: Vec<u32> = completion.iter().map(|t| t + k * 7).collect();
                let v = post(&st, "/v1/shadow/score", json!({"models": models,
                    "prompt": format!("Question {k}: what happened next?"), "completion": c})).await;
                tokens += v["results"].as_array().unwrap().iter()
                    .map(|r| r["token_ids"].as_array().unwrap().len()).sum::<usize>();
            }
            throughput.push(json!({"models": n,
                "scored_tokens_per_s": tokens as f64 / start.elapsed().as_secs_f64()}));
        }
        json!({
            "clients": CLIENTS, "max_tokens": MAX_TOKENS, "shadow_step_tokens": shadow_step_tokens, "requests_per_arm": samples[0].0.len(),
            "no_shadows": {"ttft_ms_p50": p.0, "ttft_ms_p95": p.1, "latency_ms_p50": p.2, "latency_ms_p95": p.3},
            "two_shadows": {"ttft_ms_p50": s.0, "ttft_ms_p95": s.1, "latency_ms_p50": s.2, "latency_ms_p95": s.3},
            "ratio": {"ttft_p50": s.0 / p.0, "ttft_p95": s.1 / p.1, "latency_p50": s.2 / p.2, "latency_p95": s.3 / p.3},
            "shadow_jobs": jobs, "coverage": scored as f64 / jobs as f64, "drop_rate": dropped as f64 / jobs as f64,
            "shadow_score_endpoint": throughput,
        })
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
