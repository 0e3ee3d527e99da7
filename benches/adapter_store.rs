//! Adapter management under load, through the real HTTP server in this process (SmolLM2 Q4_1):
//!
//! 1. upload-to-servable: upload an r=16 all-projection f32 adapter (multipart, validated,
//!    committed to the store), then stream a completion with it; the time to its first token,
//!    against the TTFT of the same request on an adapter already resident;
//! 2. many adapters: N (1000) distinct stored adapters (r=8 q/v, f16) with R (64) resident; C
//!    streaming clients pick adapters at random; p50/p95 TTFT against the same load picking only
//!    among R resident adapters, in the same run.
//!
//! `cargo bench --bench adapter_store`; env `LORAPLEX_BENCH_ADAPTERS` (1000),
//! `LORAPLEX_BENCH_RESIDENT` (64), `LORAPLEX_BENCH_C` (8), `LORAPLEX_BENCH_REQUESTS` (192).

#[path = "common/mod.rs"]
mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::DType;
use loraplex_adapters::{AdapterRegistry, CacheConfig, DirStore, CONFIG_FILE, WEIGHTS_FILE};
use loraplex_gateway::{AppState, GatewayConfig};
use loraplex_models::{LoadOptions, Proj};
use loraplex_runtime::{EngineConfig, SchedulerConfig};
use reqwest::blocking::{multipart, Client};
use serde_json::json;

fn env(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn upload(client: &Client, url: &str, name: &str, dir: &Path) {
    let form = multipart::Form::new()
        .text("name", name.to_string())
        .file("file", dir.join(CONFIG_FILE))
        .unwrap()
        .file("file", dir.join(WEIGHTS_FILE))
        .unwrap();
    let r = client
        .post(format!("{url}/v1/adapters"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
}

/// Streams one completion; returns the time to the first token in seconds.
fn ttft(client: &Client, url: &str, model: &str, i: usize) -> f64 {
    let words: String = (0..16)
        .map(|k| format!(" w{}", (i * 7919 + k) % 997))
        .collect();
    let body = json!({"model": model, "prompt": format!("Request {i}:{words}"), "max_tokens": 16,
                      "temperature": 0, "stream": true, "ignore_eos": true});
    let start = Instant::now();
    let resp = client
        .post(format!("{url}/v1/completions"))
        .json(&body)
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "{model}: {}", resp.status());
    let mut first = None;
    for line in std::io::BufReader::new(resp).lines() {
        let line = line.unwrap();
        if line.starts_with("data: {") && first.is_none() {
            assert!(!line.contains("\"error\""), "{line}");
            first = Some(start.elapsed().as_secs_f64());
        }
    }
    first.expect("a token")
}

/// `clients` threads share `requests`; request `i` uses `names[pick(i)]`.
fn load(
    url: &str,
    clients: usize,
    requests: usize,
    names: &[String],
    seed: u64,
) -> serde_json::Value {
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (url, names) = (url.to_string(), names.to_vec());
            std::thread::spawn(move || {
                let client = Client::new();
                (c..requests)
                    .step_by(clients)
                    .map(|i| {
                        let mut s = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        s = s
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let pick = (s >> 33) as usize % names.len();
                        ttft(&client, &url, &names[pick], i)
                    })
                    .collect::<Vec<f64>>()
            })
        })
        .collect();
    let mut t: Vec<f64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let wall = t0.elapsed().as_secs_f64();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({"requests": requests, "distinct_adapters": names.len(), "wall_s": wall,
           "ttft_p50_s": t[t.len() / 2], "ttft_p95_s": t[(t.len() * 95 / 100).min(t.len() - 1)]})
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // built and skipped by `cargo test --all-targets`
    }
    common::pin_thread_count();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let n = env("LORAPLEX_BENCH_ADAPTERS", 1000);
    let resident = env("LORAPLEX_BENCH_RESIDENT", 64);
    let clients = env("LORAPLEX_BENCH_C", 8);
    let requests = env("LORAPLEX_BENCH_REQUESTS", 192);
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm =
        Arc::new(loraplex_models::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap());
    let scratch = common::Scratch::new("loraplex-bench-store-");
    let work = scratch.path();
    let (src, store_dir) = (work.join("src"), work.join("store"));
    let (store, _) = DirStore::open(&store_dir).unwrap();
    let engine_cfg = EngineConfig {
        scheduler: SchedulerConfig {
            max_running: 64,
            max_step_tokens: 512,
            max_waiting: 4096,
            ..Default::default()
        },
        cache: CacheConfig {
            max_loras: resident,
            max_bytes: 8 << 30,
            max_cpu_loras: resident,
        },
        ..Default::default()
    };
    let engine = loraplex_runtime::start(lm.clone(), AdapterRegistry::new(), engine_cfg).unwrap();
    let cfg = GatewayConfig {
        served_model_name: "smollm2".into(),
        max_model_len: 2048,
        ..Default::default()
    };
    let state = AppState::new(cfg, engine.clone(), lm.clone(), None).with_store(Arc::new(store));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            loraplex_gateway::run(listener, state, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    let url = format!("http://{}", addr_rx.recv().unwrap());
    let client = Client::builder().timeout(None).build().unwrap();
    let cfg = lm.model.config();

    // 1. Upload-to-servable, r=16 on all seven projections, f32 as PEFT saves it.
    let (mut up_ms, mut first_ms, mut total_ms, mut resident_ms) = (vec![], vec![], vec![], vec![]);
    let mut bytes = 0;
    for k in 0..5 {
        let dir = src.join(format!("big-{k}"));
        common::write_adapter(
            &dir,
            cfg,
            16,
            &common::ALL_PROJECTIONS,
            DType::F32,
            1000 + k,
        );
        bytes = std::fs::metadata(dir.join(WEIGHTS_FILE)).unwrap().len();
        let name = format!("big-{k}");
        let t0 = Instant::now();
        upload(&client, &url, &name, &dir);
        let up = t0.elapsed().as_secs_f64();
        let first = ttft(&client, &url, &name, k as usize);
        up_ms.push(up * 1e3);
        first_ms.push(first * 1e3);
        total_ms.push((up + first) * 1e3);
        resident_ms.push(ttft(&client, &url, &name, 100 + k as usize) * 1e3);
    }
    let upload_report = json!({
        "adapter": "r=16, q/k/v/o/gate/up/down, f32", "weights_bytes": bytes,
        "upload_ms_median": median(up_ms), "first_request_ttft_ms_median": median(first_ms.clone()),
        "upload_to_first_token_ms_median": median(total_ms.clone()),
        "resident_ttft_ms_median": median(resident_ms.clone()),
        "upload_to_first_token_over_resident_ttft": median(total_ms) / median(resident_ms),
    });
    eprintln!("{upload_report}");

    // 2. N stored adapters, R resident.
    let t = Instant::now();
    let names: Vec<String> = (0..n)
        .map(|k| {
            let dir = src.join(format!("small-{k}"));
            common::write_adapter(&dir, cfg, 8, &[Proj::Q, Proj::V], DType::F16, k as u64 + 1);
            let name = format!("small-{k}");
            upload(&client, &url, &name, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            name
        })
        .collect();
    let ingest_s = t.elapsed().as_secs_f64();
    eprintln!("stored {n} adapters in {ingest_s:.1} s");
    let hot = &names[..resident];
    for (i, name) in hot.iter().enumerate() {
        ttft(&client, &url, name, i); // makes the R adapters resident
    }
    let on_resident = load(&url, clients, requests, hot, 7);
    let loads_before = engine
        .stats()
        .adapter_loads
        .load(std::sync::atomic::Ordering::Relaxed);
    let on_all = load(&url, clients, requests, &names, 7);
    let loads = engine
        .stats()
        .adapter_loads
        .load(std::sync::atomic::Ordering::Relaxed)
        - loads_before;
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    let report = json!({
        "upload_to_servable": upload_report,
        "many_adapters": {
            "stored": n, "resident": resident, "clients": clients, "prompt": "~40 tokens", "output_tokens": 16,
            "ingest_s": ingest_s, "ingest_per_adapter_ms": ingest_s * 1e3 / n as f64,
            "resident_only": on_resident, "random_over_all": on_all, "cold_loads_in_random_run": loads,
            "ttft_p50_ratio": f(&on_all, "ttft_p50_s") / f(&on_resident, "ttft_p50_s"),
            "ttft_p95_ratio": f(&on_all, "ttft_p95_s") / f(&on_resident, "ttft_p95_s"),
        }
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let _ = stop_tx.send(());
    server.join().unwrap();
    engine.shutdown();
}
