//! The gateway's own cost: p50 latency of a 1-token completion through HTTP (loopback,
//! keep-alive, JSON in and out) minus the same request through `EngineHandle` directly, measured
//! interleaved in one process on the default model (also as the median of per-pair differences). `cargo bench --bench gateway_overhead`;
//! env `LORAPLEX_BENCH_SAMPLES` (200).

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use loraplex_adapters::AdapterRegistry;
use loraplex_gateway::{AppState, GatewayConfig};
use loraplex_models::LoadOptions;
use loraplex_runtime::{EngineConfig, GenerationParams, GenerationRequest, TokenEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Short enough for the quantized small-batch path: the engine part stays small and steady.
const PROMPT: [u32; 4] = [504, 3575, 282, 4649];

/// One request over an open keep-alive connection; returns when the whole body has arrived.
async fn http_once(conn: &mut tokio::net::TcpStream, body: &str) -> Vec<u8> {
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                assert!(head.starts_with("http/1.1 200"), "{head}");
                return buf[end + 4..end + 4 + len].to_vec();
            }
        }
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    common::pin_thread_count();
    let samples: usize = std::env::var("LORAPLEX_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm =
        Arc::new(loraplex_models::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap());
    let engine =
        loraplex_runtime::start(lm.clone(), AdapterRegistry::new(), EngineConfig::default())
            .unwrap();
    let cfg = GatewayConfig {
        served_model_name: "m".into(),
        max_model_len: 2048,
        ..Default::default()
    };
    let state = AppState::new(cfg, engine.clone(), lm, None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (http, direct) = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(loraplex_gateway::run(
            listener,
            state,
            std::future::pending(),
        ));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.set_nodelay(true).unwrap();
        let body =
            serde_json::json!({"model": "m", "prompt": PROMPT, "max_tokens": 1, "temperature": 0})
                .to_string();
        let (mut http, mut direct) = (Vec::new(), Vec::new());
        for i in 0..samples + 10 {
            let t = Instant::now();
            http_once(&mut conn, &body).await;
            let h = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let params = GenerationParams {
                max_tokens: 1,
                ..Default::default()
            };
            let mut s = engine
                .submit(GenerationRequest::new(PROMPT.to_vec(), params))
                .unwrap();
            while let Some(ev) = s.next().await {
                if matches!(ev, TokenEvent::Finished { .. } | TokenEvent::Failed(_)) {
                    break;
                }
            }
            let d = t.elapsed().as_secs_f64() * 1e3;
            if i >= 10 {
                http.push(h);
                direct.push(d);
            }
        }
        (http, direct)
    });
    let p50 = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    // Each HTTP request is paired with the direct one right after it, so drifts of the engine's
    // speed on a shared machine cancel in the pair's difference.
    let paired: Vec<f64> = http.iter().zip(&direct).map(|(h, d)| h - d).collect();
    let (h, d) = (p50(http), p50(direct));
    let report = serde_json::json!({"samples": samples, "http_p50_ms": h, "engine_p50_ms": d,
        "gateway_overhead_p50_ms": h - d, "gateway_overhead_paired_p50_ms": p50(paired)});
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
