//! Multi-LoRA serving through the engine, SmolLM2 Q4_1, all in one run with C concurrent
//! sequences (default 16): (a) base only, (b) one adapter for all, (c) C distinct adapters
//! (r=16, all 7 projections), (d) 4·C distinct adapters with only C resident (cold loads
//! included; registered as folders, then again as store versions whose hashes were recorded);
//! plus the cold-load time of one adapter and a forward-only decode step of each kind. Prints
//! JSON with (b)/(a), (c)/(a), (d)/(a) and (d)/(c) p50 time to first token.
//! `cargo bench --bench multi_lora`; env `LORAPLEX_BENCH_C` (16), `LORAPLEX_BENCH_PROMPT` (32),
//! `LORAPLEX_BENCH_OUTPUT` (64), `LORAPLEX_BENCH_REPEATS` (5: (a), (b), (c) interleaved,
//! medians); `LORAPLEX_BENCH_STEP_ONLY` (set: only cold loads and the forward-only steps).
//! `LORAPLEX_BENCH_DEVICE` and `LORAPLEX_BENCH_KERNELS` choose where and on what it runs.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use loraplex_adapters::{AdapterRegistry, CacheConfig, Identity};
use loraplex_models::LoadOptions;
use loraplex_runtime::{
    EngineConfig, EngineHandle, GenerationParams, GenerationRequest, SchedulerConfig, TokenEvent,
};
use serde_json::json;

fn env(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `clients` threads each send their share of `requests` one after another; request `i` uses
/// `adapters[i % len]` (or the base when empty). Returns aggregate output tok/s and TTFTs.
fn run(
    h: &EngineHandle,
    clients: usize,
    requests: usize,
    adapters: &[String],
    prompt_len: usize,
    out_len: usize,
) -> serde_json::Value {
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let h = h.clone();
            let adapters = adapters.to_vec();
            std::thread::spawn(move || {
                let mut ttfts = Vec::new();
                for i in (c..requests).step_by(clients) {
                    let adapter =
                        (!adapters.is_empty()).then(|| adapters[i % adapters.len()].clone());
                    let prompt: Vec<u32> = (0..prompt_len as u32)
                        .map(|j| 100 + (j * 7919 + i as u32 * 131) % 40000)
                        .collect();
                    let params = GenerationParams {
                        max_tokens: out_len,
                        ignore_eos: true,
                        ..Default::default()
                    };
                    let mut s = h
                        .submit(GenerationRequest {
                            adapter,
                            ..GenerationRequest::new(prompt, params)
                        })
                        .unwrap();
                    let start = Instant::now();
                    let mut ttft = None;
                    loop {
                        match s.blocking_next().unwrap() {
                            TokenEvent::Token { .. } => {
                                ttft.get_or_insert(start.elapsed().as_secs_f64());
                            }
                            TokenEvent::Finished { .. } => break,
                            TokenEvent::Failed(e) => panic!("{e}"),
                            TokenEvent::PromptLogprobs(_) => {}
                        }
                    }
                    ttfts.push(ttft.unwrap());
                }
                ttfts
            })
        })
        .collect();
    let mut ttfts: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let wall = t0.elapsed().as_secs_f64();
    ttfts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "requests": requests, "adapters": adapters.len(), "wall_s": wall,
        "output_tok_per_s": (requests * out_len) as f64 / wall,
        "ttft_p50_s": ttfts[ttfts.len() / 2], "ttft_p95_s": ttfts[(ttfts.len() * 95 / 100).min(ttfts.len() - 1)],
    })
}

/// What a store records for the adapter at `dir` (loaded once, with its sha256).
fn record(
    dir: &std::path::Path,
    base: &loraplex_adapters::BaseModel,
) -> loraplex_adapters::Recorded {
    let info = loraplex_adapters::load_dir(dir, base, &Default::default())
        .unwrap()
        .info;
    loraplex_adapters::Recorded {
        sha256: info.sha256.expect("load_dir computes the sha256"),
        checksum: Some(info.checksum),
        version: None,
    }
}

/// The run with the median throughput, with the spread of all runs.
fn median_run(mut runs: Vec<serde_json::Value>) -> serde_json::Value {
    let tps = |v: &serde_json::Value| v["output_tok_per_s"].as_f64().unwrap();
    runs.sort_by(|x, y| tps(x).partial_cmp(&tps(y)).unwrap());
    let all: Vec<f64> = runs.iter().map(tps).collect();
    let mut m = runs[runs.len() / 2].clone();
    m["output_tok_per_s_all_runs"] = json!(all);
    m
}

/// One decode step of `names.len()` rows through `Decoder::forward` alone (no scheduler, no
/// sampling), 40 tokens of context each: base, one adapter for all, one adapter per row, and
/// two adapters alternating row by row (the distinct case's arithmetic with its weights in
/// cache: what `distinct` pays beyond it is streaming adapters from memory), and the time to
/// merely read those adapters' bytes once. Medians (and minima, steadier on a shared machine)
/// of `repeats` × 10 steps, interleaved.
fn decode_steps(
    lm: &loraplex_models::LoadedModel,
    dir: &std::path::Path,
    names: &[String],
    base: &loraplex_adapters::BaseModel,
    repeats: usize,
) -> serde_json::Value {
    use loraplex_models::{LogitsFor, SeqInput};
    let weights: Vec<_> = names
        .iter()
        .map(|n| {
            loraplex_adapters::load_dir(&dir.join(n), base, &Default::default())
                .unwrap()
                .weights
        })
        .collect();
    let rows = names.len();
    let prompts: Vec<Vec<u32>> = (0..rows as u32)
        .map(|i| {
            (0..40)
                .map(|j| 100 + (j * 7919 + i * 131) % 40000)
                .collect()
        })
        .collect();
    let mut caches: Vec<_> = (0..rows).map(|_| lm.model.new_cache()).collect();
    for (p, c) in prompts.iter().zip(caches.iter_mut()) {
        lm.model
            .forward(&[SeqInput::new(p, LogitsFor::None)], &mut [c])
            .unwrap();
    }
    let token = [1234u32];
    let mut time = |pick: &dyn Fn(usize) -> Option<usize>| -> f64 {
        let inputs: Vec<SeqInput> = (0..rows)
            .map(|i| {
                SeqInput::new(&token, LogitsFor::Last).with_adapter(pick(i).map(|k| &weights[k]))
            })
            .collect();
        let t = Instant::now();
        for _ in 0..10 {
            let mut refs: Vec<&mut _> = caches.iter_mut().collect();
            lm.model.forward(&inputs, &mut refs).unwrap();
            for c in caches.iter_mut() {
                c.truncate(40);
            }
        }
        t.elapsed().as_secs_f64() * 100.0
    };
    // A prefill of every row's 32 first tokens in one step, base vs one adapter per sequence.
    let prefill = |adapted: bool| -> f64 {
        let inputs: Vec<SeqInput> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                SeqInput::new(&p[..32], LogitsFor::Last).with_adapter(adapted.then(|| &weights[i]))
            })
            .collect();
        let mut fresh: Vec<_> = (0..rows).map(|_| lm.model.new_cache()).collect();
        let mut refs: Vec<&mut _> = fresh.iter_mut().collect();
        let t = Instant::now();
        lm.model.forward(&inputs, &mut refs).unwrap();
        t.elapsed().as_secs_f64() * 1000.0
    };
    let (mut pa, mut pc) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        pa.push(prefill(false));
        pc.push(prefill(true));
    }
    // The floor under `distinct − two_alternating`: reading every row's adapter bytes once
    // (fresh buffers of the same sizes, summed by the pool's threads), as such a step must.
    // Interleaved with the steps, which flush them from cache.
    let bufs: Vec<Vec<u64>> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| vec![i as u64 + 1; w.size_in_bytes() / 8])
        .collect();
    let stream = || {
        use rayon::prelude::*;
        let t = Instant::now();
        let sum: u64 = bufs
            .par_iter()
            .map(|b| b.iter().fold(0u64, |s, &v| s.wrapping_add(v)))
            .sum();
        std::hint::black_box(sum);
        t.elapsed().as_secs_f64() * 1000.0
    };
    let (mut a, mut b, mut c, mut h) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut floor = Vec::new();
    time(&|i| Some(i)); // warm-up
    for _ in 0..repeats {
        a.push(time(&|_| None));
        b.push(time(&|_| Some(0)));
        c.push(time(&|i| Some(i)));
        floor.push(stream());
        h.push(time(&|i| Some(i % 2)));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let mins = json!({"base": min(&a), "one_adapter": min(&b), "distinct": min(&c),
                      "two_alternating": min(&h)});
    let adapter_mb = bufs.iter().map(|b| b.len() * 8).sum::<usize>() as f64 / 1e6;
    let floor = median(floor);
    let (pa, pc) = (median(pa), median(pc));
    let (a, b, c, h) = (median(a), median(b), median(c), median(h));
    json!({"rows": rows, "base": a, "one_adapter": b, "distinct": c, "two_alternating": h,
           "min": mins, "a_over_b": a / b, "a_over_c": a / c,
           "adapter_mb_per_step": adapter_mb, "stream_floor_ms": floor,
           "stream_floor_gb_per_s": adapter_mb / floor,
           "prefill_32_each": {"base": pa, "distinct": pc, "base_over_distinct": pa / pc}})
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // built and skipped by `cargo test --all-targets`
    }
    common::pin_thread_count();
    let c = env("LORAPLEX_BENCH_C", 16);
    let repeats = env("LORAPLEX_BENCH_REPEATS", 5).max(1);
    let (prompt_len, out_len) = (
        env("LORAPLEX_BENCH_PROMPT", 32),
        env("LORAPLEX_BENCH_OUTPUT", 64),
    );
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm =
        Arc::new(loraplex_models::load(path.to_str().unwrap(), &bench_load_options()).unwrap());
    let scratch = common::Scratch::new("loraplex-bench-adapters-");
    let dir = scratch.path();
    let reg = AdapterRegistry::new();
    let names: Vec<String> = (0..4 * c)
        .map(|k| {
            let name = format!("bench-{k}");
            common::write_adapter(
                &dir.join(&name),
                lm.model.config(),
                16,
                &common::ALL_PROJECTIONS,
                candle_core::DType::F32,
                k as u64 + 1,
            );
            reg.register(&name, dir.join(&name));
            name
        })
        .collect();
    // Cold load of one r=16 all-projection adapter: map, validate, build (median of 5) — as a
    // folder given by flag (checksum only) and as a store version (recorded hashes, checksum
    // re-checked).
    let base = loraplex_adapters::BaseModel::of(&lm);
    let cold = |recorded: bool| -> Vec<f64> {
        let mut v: Vec<f64> = (0..5)
            .map(|k| {
                let d = dir.join(&names[k]);
                // Both kinds after the same untimed load (page cache, allocator warm).
                let rec = record(&d, &base);
                let rec = recorded.then_some(rec);
                let identity = rec.as_ref().map_or(Identity::Checksum, Identity::Recorded);
                let t = Instant::now();
                loraplex_adapters::load_dir_checked(&d, &base, &Default::default(), identity)
                    .unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let loads = cold(false);
    let loads_recorded = cold(true);
    eprintln!("cold load of an r=16 all-projection adapter: {loads:?} ms (flag), {loads_recorded:?} ms (store)");
    let step = decode_steps(&lm, dir, &names[..c], &base, repeats);
    eprintln!("decode step alone: {step}");
    if std::env::var_os("LORAPLEX_BENCH_STEP_ONLY").is_some() {
        return;
    }
    let cfg = EngineConfig {
        scheduler: SchedulerConfig {
            max_running: c,
            max_step_tokens: 512.max(c + 1),
            max_waiting: 1024,
            ..Default::default()
        },
        cache: CacheConfig {
            max_loras: c,
            max_bytes: 1 << 32,
            max_cpu_loras: c,
        },
        ..Default::default()
    };
    let h = loraplex_runtime::start(lm.clone(), reg.clone(), cfg).unwrap();
    let resident = &names[..c];
    run(&h, c, c, resident, 8, 1); // warm-up: loads the C adapters
                                   // (a), (b), (c) interleaved `repeats` times, each reported by its median run: a shared
                                   // machine drifts, and interleaving spreads the drift over all three.
    let (mut a, mut b, mut cc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        a.push(run(&h, c, c, &[], prompt_len, out_len));
        b.push(run(&h, c, c, &names[..1], prompt_len, out_len));
        cc.push(run(&h, c, c, resident, prompt_len, out_len));
    }
    let (a, b, cc) = (median_run(a), median_run(b), median_run(cc));
    h.shutdown();
    // (d): 4·C adapters cycling through C slots, on a fresh engine per run, as folders given
    // by flag and as store versions (what the admin API's uploads and pulls register: the
    // content hash was recorded when the version was stored, so a cold load re-checks only the
    // tensor-wise checksum). Alternated, each kind first in turn, and each reported by its
    // median run: the first run of a process also warms the allocator for the ones after it.
    let store_reg = AdapterRegistry::new();
    for n in &names {
        store_reg.register_version(n, dir.join(n), Some(record(&dir.join(n), &base)));
    }
    let cold_run = |reg: &AdapterRegistry| {
        let h = loraplex_runtime::start(lm.clone(), reg.clone(), cfg).unwrap();
        let r = run(&h, c, 4 * c, &names, prompt_len, out_len);
        h.shutdown();
        r
    };
    let (mut d, mut d_store) = (Vec::new(), Vec::new());
    for i in 0..repeats.min(3) {
        if i % 2 == 0 {
            d.push(cold_run(&reg));
            d_store.push(cold_run(&store_reg));
        } else {
            d_store.push(cold_run(&store_reg));
            d.push(cold_run(&reg));
        }
    }
    let (d, d_store) = (median_run(d), median_run(d_store));
    let tps = |v: &serde_json::Value| v["output_tok_per_s"].as_f64().unwrap();
    let report = json!({
        "concurrency": c, "prompt_tokens": prompt_len, "output_tokens": out_len,
        "cold_load_ms_median": loads[loads.len() / 2],
        "cold_load_store_version_ms_median": loads_recorded[loads_recorded.len() / 2],
        "decode_step_ms": step,
        "a_base": a, "b_one_adapter": b, "c_distinct_resident": cc, "d_distinct_cold": d,
        "d_distinct_cold_store_versions": d_store,
        "ratios": {
            "b_over_a": tps(&b) / tps(&a),
            "c_over_a": tps(&cc) / tps(&a),
            "d_over_a": tps(&d) / tps(&a),
            "d_ttft_p50_over_c": d["ttft_p50_s"].as_f64().unwrap() / cc["ttft_p50_s"].as_f64().unwrap(),
            "d_store_over_a": tps(&d_store) / tps(&a),
            "d_store_ttft_p50_over_c": d_store["ttft_p50_s"].as_f64().unwrap() / cc["ttft_p50_s"].as_f64().unwrap(),
        }
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}

/// `LORAPLEX_BENCH_DEVICE` (cpu, cuda[:N], metal; default cpu) and `LORAPLEX_BENCH_KERNELS`
/// (`--cpu-kernels`; default auto).
fn bench_load_options() -> LoadOptions {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    LoadOptions {
        device: loraplex_models::parse_device(&var("LORAPLEX_BENCH_DEVICE", "cpu")).unwrap(),
        kernels: var("LORAPLEX_BENCH_KERNELS", "auto").parse().unwrap(),
        ..Default::default()
    }
}
