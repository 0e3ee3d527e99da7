//! What constrained decoding costs, on the default model in one process (the whole router via
//! `app().oneshot`, no TCP):
//! 1. aggregate output tok/s of C concurrent clients (default 16) with every request under a
//!    JSON Schema against the same load unconstrained, rounds alternating so both see the same
//!    machine. The schemas need more tokens than `max_tokens` to complete, so every request of
//!    either arm generates exactly `max_tokens` tokens and the arms differ only by the masks;
//! 2. the mask time per token during the constrained rounds (mean, and the p99 as the bound of
//!    its histogram bucket), from the engine's stats;
//! 3. time to first token of a request under a schema never seen before (compiled during
//!    validation) against the same schema again (from the cache), with an unconstrained request
//!    for reference, one request at a time.
//!
//! `cargo bench --bench structured`; env `LORAPLEX_BENCH_C` (16), `LORAPLEX_BENCH_ROUNDS` (4 of
//! each arm), `LORAPLEX_BENCH_REQUESTS` (per client and round, 2), `LORAPLEX_BENCH_OUTPUT` (64),
//! `LORAPLEX_BENCH_COMPILES` (5 never-seen schemas).

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use loraplex_adapters::AdapterRegistry;
use loraplex_gateway::{app, AppState, GatewayConfig};
use loraplex_models::LoadOptions;
use loraplex_runtime::{EngineConfig, MASK_BUCKETS_US};
use serde_json::{json, Value};
use tower::ServiceExt;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An order list that cannot be complete within a few hundred tokens (`minItems`), so a
/// constrained request runs to `max_tokens` as an unconstrained one with `ignore_eos` does.
/// `variant` renames the fields: distinct schemas, distinct grammars.
fn long_schema(variant: usize) -> Value {
    let f = |name: &str| format!("{name}_{variant}");
    json!({
        "type": "object",
        "properties": {
            "orders": {
                "type": "array",
                "minItems": 64,
                "items": {
                    "type": "object",
                    "properties": {
                        f("item"): {"type": "string", "maxLength": 24},
                        f("quantity"): {"type": "integer", "minimum": 1, "maximum": 100},
                        f("price"): {"type": "number", "minimum": 0, "maximum": 1000},
                        f("status"): {"enum": ["new", "paid", "shipped", "returned"]},
                        f("gift"): {"type": "boolean"}
                    },
                    "required": [f("item"), f("quantity"), f("price"), f("status"), f("gift")],
                    "additionalProperties": false
                }
            }
        },
        "required": ["orders"],
        "additionalProperties": false
    })
}

/// A schema as a Pydantic model gives one (`$defs`, enums, bounds, nested arrays), made
/// distinct by `k`: each compiles anew.
fn fresh_schema(k: usize) -> Value {
    json!({
        "$defs": {
            "Address": {"type": "object", "properties": {
                "street": {"type": "string", "maxLength": 40},
                "city": {"type": "string", "maxLength": 24},
                "country": {"enum": ["FR", "DE", "ES", "IT", "UK", "US"]},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["street", "city", "country", "zip"], "additionalProperties": false},
            "Line": {"type": "object", "properties": {
                "sku": {"type": "string", "maxLength": 12},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                "unit_price": {"type": "number", "minimum": 0, "maximum": 10000}},
                "required": ["sku", "quantity", "unit_price"], "additionalProperties": false}
        },
        "type": "object",
        "properties": {
            format!("invoice_{k}"): {"type": "string", "maxLength": 16},
            "customer": {"type": "string", "maxLength": 32},
            "billing": {"$ref": "#/$defs/Address"},
            "shipping": {"$ref": "#/$defs/Address"},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}, "minItems": 1, "maxItems": 8},
            "paid": {"type": "boolean"},
            "channel": {"enum": ["web", "store", "phone"]}
        },
        "required": [format!("invoice_{k}"), "customer", "billing", "shipping", "lines", "paid", "channel"],
        "additionalProperties": false
    })
}

fn request(schema: Option<&Value>, k: usize, max_tokens: usize, stream: bool) -> Value {
    let mut body = json!({"model": "m", "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": format!("List the orders of customer number {k} as JSON.")}]});
    match schema {
        Some(s) => {
            body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "orders", "schema": s, "strict": true}})
        }
        None => body["ignore_eos"] = json!(true),
    }
    body
}

async fn send(st: &AppState, body: &Value) -> axum::response::Response {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp
}

/// One non-streamed request: its completion tokens.
async fn completion_tokens(st: &AppState, body: Value) -> usize {
    let bytes = send(st, &body)
        .await
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["usage"]["completion_tokens"].as_u64().unwrap() as usize
}

/// One streamed request: the time to its first chunk with generated text.
async fn ttft(st: &AppState, body: Value) -> Duration {
    let start = Instant::now();
    let mut body = send(st, &body).await.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            let text = data
                .windows(12)
                .any(|w| &w[..11] == b"\"content\":\"" && w[11] != b'"');
            if first.is_none() && text {
                first = Some(start.elapsed());
            }
        }
    }
    first.expect("a chunk with text")
}

/// The mask-time histogram's buckets, count and sum (µs) now.
fn mask_snapshot(st: &AppState) -> (Vec<u64>, u64, u64) {
    let m = &st.engine.stats().mask_time;
    (
        m.buckets(),
        m.count.load(Ordering::Relaxed),
        m.sum_us.load(Ordering::Relaxed),
    )
}

/// The bucket bound under which fraction `q` of `counts` fall (`None`: beyond the last bound).
fn bucket_quantile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    let want = (q * total as f64).ceil() as u64;
    let mut acc = 0;
    for (i, c) in counts.iter().enumerate() {
        acc += c;
        if acc >= want {
            return MASK_BUCKETS_US.get(i).copied();
        }
    }
    None
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // built and skipped by `cargo test --all-targets`
    }
    common::pin_thread_count();
    let clients = env("LORAPLEX_BENCH_C", 16);
    let rounds = env("LORAPLEX_BENCH_ROUNDS", 4).max(1);
    let per_client = env("LORAPLEX_BENCH_REQUESTS", 2).max(1);
    let out = env("LORAPLEX_BENCH_OUTPUT", 64);
    let compiles = env("LORAPLEX_BENCH_COMPILES", 5).max(1);
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm =
        Arc::new(loraplex_models::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap());
    let mut engine_cfg = EngineConfig::default();
    engine_cfg.scheduler.max_running = engine_cfg.scheduler.max_running.max(clients);
    let engine = loraplex_runtime::start(lm.clone(), AdapterRegistry::new(), engine_cfg).unwrap();
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
        let st = AppState::new(cfg, engine.clone(), lm, None);
        let schemas: Arc<Vec<Value>> = Arc::new((0..4).map(long_schema).collect());
        // Warm-up: every schema compiled, the allocator settled, both arms run once.
        for (k, s) in schemas.iter().enumerate() {
            completion_tokens(&st, request(Some(s), k, 8, false)).await;
        }
        completion_tokens(&st, request(None, 0, 8, false)).await;

        // 1 + 2: the load, arms alternating (ABBA), mask stats over the constrained rounds.
        let mut wall = [0f64; 2];
        let mut tokens = [0usize; 2];
        let mut short = [0usize; 2];
        let (mut buckets, mut masks, mut mask_us) = (vec![0u64; MASK_BUCKETS_US.len() + 1], 0u64, 0u64);
        let mut steps = [0u64; 2];
        for round in 0..rounds * 2 {
            let arm = (round + round / 2) % 2; // 0 free, 1 constrained
            let before = mask_snapshot(&st);
            let steps_before = st.engine.stats().steps.load(Ordering::Relaxed);
            let start = Instant::now();
            let tasks: Vec<_> = (0..clients)
                .map(|c| {
                    let (st, schemas) = (st.clone(), schemas.clone());
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        for r in 0..per_client {
                            let k = round * 1000 + c * per_client + r;
                            let schema = (arm == 1).then(|| &schemas[c % schemas.len()]);
                            got.push(completion_tokens(&st, request(schema, k, out, false)).await);
                        }
                        got
                    })
                })
                .collect();
            for t in tasks {
                for n in t.await.unwrap() {
                    tokens[arm] += n;
                    short[arm] += usize::from(n < out);
                }
            }
            wall[arm] += start.elapsed().as_secs_f64();
            steps[arm] += st.engine.stats().steps.load(Ordering::Relaxed) - steps_before;
            let after = mask_snapshot(&st);
            if arm == 1 {
                for (b, (x, y)) in buckets.iter_mut().zip(after.0.iter().zip(&before.0)) {
                    *b += x - y;
                }
                masks += after.1 - before.1;
                mask_us += after.2 - before.2;
            }
        }
        let tps = [tokens[0] as f64 / wall[0], tokens[1] as f64 / wall[1]];

        // 3: first-token latency, never-seen schema vs the same one cached vs none.
        let grammar = st.grammars.stats();
        let compiled_before = grammar.compiled.load(Ordering::Relaxed);
        let compile_us_before = grammar.compile_us_total.load(Ordering::Relaxed);
        let (mut fresh, mut cached, mut free) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..compiles {
            let s = fresh_schema(k);
            fresh.push(ttft(&st, request(Some(&s), k, 4, true)).await.as_secs_f64() * 1e3);
            cached.push(ttft(&st, request(Some(&s), k, 4, true)).await.as_secs_f64() * 1e3);
            free.push(ttft(&st, request(None, k, 4, true)).await.as_secs_f64() * 1e3);
        }
        let compiled = grammar.compiled.load(Ordering::Relaxed) - compiled_before;
        let compile_us = grammar.compile_us_total.load(Ordering::Relaxed) - compile_us_before;
        let (fresh, cached, free) = (median(&mut fresh), median(&mut cached), median(&mut free));
        json!({
            "clients": clients, "max_tokens": out, "rounds_per_arm": rounds,
            "requests_per_arm": rounds * clients * per_client,
            "unconstrained": {"output_tok_per_s": tps[0], "tokens": tokens[0], "wall_s": wall[0],
                              "requests_short_of_max_tokens": short[0], "engine_steps": steps[0]},
            "json_schema": {"output_tok_per_s": tps[1], "tokens": tokens[1], "wall_s": wall[1],
                            "requests_short_of_max_tokens": short[1], "engine_steps": steps[1]},
            "ratio_json_schema_over_unconstrained": tps[1] / tps[0],
            "mask_us_per_token": {
                "count": masks,
                "mean": mask_us as f64 / masks.max(1) as f64,
                "p50_bucket_bound": bucket_quantile(&buckets, 0.5),
                "p99_bucket_bound": bucket_quantile(&buckets, 0.99),
                "max_over_the_run": st.engine.stats().mask_time.max_us.load(Ordering::Relaxed),
            },
            "ttft_ms_median": {
                "schema_never_seen": fresh, "schema_cached": cached, "unconstrained": free,
                "added_by_compiling": fresh - cached,
                "compiles": compiled, "compile_ms_mean": compile_us as f64 / compiled.max(1) as f64 / 1e3,
            },
        })
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
