//! Engine throughput on the default model (or `LORAPLEX_BENCH_MODEL`): single-stream prefill (64
//! and 512 tokens) and decode, batched decode at several batch sizes, for each `--dtype` and
//! thread count, and llama.cpp's `llama-bench` in the same run when it is available: built per
//! ISA level (`benches/llamacpp.sh avx2`, `... avx512`), each tier compared with the build of its
//! level, on the file as it is (`file`: Q4_1 for the default model) and on the same model
//! re-quantized to Q8_0 (format and implementation apart).
//!
//! Stock candle (candle-transformers' `quantized_llama`) runs in the same invocation too, with
//! Q8_0 and with f32 weights, so "at least stock candle's best per phase" is checked directly.
//!
//! `cargo bench --bench engine` runs everything: the parent re-runs itself once per thread count
//! (rayon's pool size is fixed per process) and prints one JSON report with ratios.
//! Each figure is the median of 5 runs after a warm-up, per CPU kernel tier (`--cpu-kernels`),
//! with the bytes of weights each holds.
//! Environment: `LORAPLEX_BENCH_THREADS` (default "1,2"), `LORAPLEX_BENCH_DTYPES`
//! (default "auto,f32"), `LORAPLEX_BENCH_KERNELS` (default: every tier this CPU runs; `candle`
//! adds candle's generic ops), `LORAPLEX_BENCH_DEVICE` (default cpu; with `candle` kernels
//! on a GPU, see `benches/gpu.sh`), `LORAPLEX_BENCH_BATCHES` (default "1,4,16,64"), `LLAMA_BENCH`
//! (path to llama-bench; default `$HOME/.cache/loraplex/llama.cpp/build/bin/llama-bench`),
//! `LORAPLEX_BENCH_MODEL` (a GGUF of any supported family, e.g.
//! `weights/gemma-3-270m-q4_k_m.gguf`; default the default model). Stock candle's
//! `quantized_llama` runs only on the default model, whose family it knows.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use loraplex_models::{KernelChoice, KvCache, LoadOptions, LogitsFor, SeqInput, Tier, WeightDtype};
use serde_json::{json, Value};

fn model_path() -> PathBuf {
    match std::env::var("LORAPLEX_BENCH_MODEL") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("weights/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

/// Stock candle's `quantized_llama` knows only the Llama family: it runs on the default model.
fn stock_candle_runs() -> bool {
    std::env::var("LORAPLEX_BENCH_MODEL").is_err()
}

fn env_list(key: &str, default: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Deterministic pseudo-random token ids (no special tokens).
fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 100 + (i.wrapping_mul(2654435761).wrapping_add(salt * 97)) % 40000)
        .collect()
}

/// The median of `f`'s 5 timings (seconds) after one warm-up run.
fn median_secs(mut f: impl FnMut() -> f64) -> f64 {
    f();
    let mut t: Vec<f64> = (0..5).map(|_| f()).collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

fn child(threads: usize) -> Value {
    let mut results = Vec::new();
    let tiers: Vec<&str> = Tier::available().iter().map(|t| t.name()).collect();
    for dt in env_list("LORAPLEX_BENCH_DTYPES", "auto,f32") {
        for kn in env_list("LORAPLEX_BENCH_KERNELS", &tiers.join(",")) {
            results.push(one(threads, &dt, &kn));
        }
    }
    Value::Array(results)
}

/// One dtype on one kernel set.
fn one(threads: usize, dt: &str, kn: &str) -> Value {
    {
        let dtype: WeightDtype = dt.parse().unwrap();
        let kernels: KernelChoice = kn.parse().unwrap();
        let lm = loraplex_models::load(
            model_path().to_str().unwrap(),
            &LoadOptions {
                dtype,
                kernels,
                device: loraplex_models::parse_device(
                    &std::env::var("LORAPLEX_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()),
                )
                .unwrap(),
                ..Default::default()
            },
        )
        .expect("load the model (run scripts/fetch-model.sh, or scripts/fetch-gemma3.sh)");
        let m = &lm.model;
        let mut row = json!({"dtype": dt, "kernels": kn, "threads": threads, "weight_bytes": m.weight_bytes()});
        // Prefill: a fresh cache each run.
        for n in [64usize, 512] {
            let prompt = tokens(n, 1);
            let secs = median_secs(|| {
                let mut c = m.new_cache();
                let t = Instant::now();
                m.forward(&[SeqInput::new(&prompt, LogitsFor::Last)], &mut [&mut c])
                    .unwrap();
                t.elapsed().as_secs_f64()
            });
            row[format!("pp{n}")] = json!(n as f64 / secs);
        }
        // Single-stream decode as llama-bench's tgN: N one-token steps from an empty cache.
        for n in [1usize, 16, 64] {
            let ids = tokens(n, 3);
            let secs = median_secs(|| {
                let mut c = m.new_cache();
                let t = Instant::now();
                for id in &ids {
                    m.forward(
                        &[SeqInput::new(std::slice::from_ref(id), LogitsFor::Last)],
                        &mut [&mut c],
                    )
                    .unwrap();
                }
                t.elapsed().as_secs_f64()
            });
            row[format!("tg{n}")] = json!(n as f64 / secs);
        }
        // Decode at batch sizes: every sequence holds a 64-token context, then the steps.
        for b in env_list("LORAPLEX_BENCH_BATCHES", "1,4,16,64") {
            let b: usize = b.parse().unwrap();
            let mut caches: Vec<KvCache> = (0..b).map(|_| m.new_cache()).collect();
            for (i, c) in caches.iter_mut().enumerate() {
                let p = tokens(64, i as u32 + 2);
                m.forward(&[SeqInput::new(&p, LogitsFor::None)], &mut [c])
                    .unwrap();
            }
            // 5 timed runs of 8 steps after a warm-up of 8: the context grows from 64 to 112.
            let steps = 8;
            let next: Vec<[u32; 1]> = (0..b).map(|i| [tokens(1, 1000 + i as u32)[0]]).collect();
            let secs = median_secs(|| {
                let t = Instant::now();
                for _ in 0..steps {
                    let inputs: Vec<SeqInput<'_>> = next
                        .iter()
                        .map(|t| SeqInput::new(t, LogitsFor::Last))
                        .collect();
                    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
                    m.forward(&inputs, &mut refs).unwrap();
                }
                t.elapsed().as_secs_f64()
            });
            row[format!("tg_batch{b}")] = json!((steps * b) as f64 / secs);
        }
        eprintln!("{row}");
        row
    }
}

/// Stock candle (candle-transformers' `quantized_llama`, one sequence) on the same model with its
/// Q4_1 weights re-quantized to Q8_0, the best stock decode; with `CANDLE_DEQUANTIZE_ALL=1` in
/// the environment the same code runs dequantized f32 weights, the best stock prefill.
fn stock_candle(threads: usize, label: &str) -> Value {
    use candle_core::quantized::gguf_file;
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let tmp = q8_0_copy();
    let mut f = std::fs::File::open(&tmp).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut m = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content, &mut f, &dev,
    )
    .unwrap();
    let _ = std::fs::remove_file(&tmp);
    let mut row =
        json!({"engine": "stock candle quantized_llama", "weights": label, "threads": threads});
    for n in [64usize, 512] {
        let x = Tensor::new(tokens(n, 1).as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            m.forward(&x, 0).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        row[format!("pp{n}")] = json!(n as f64 / best);
    }
    let x = Tensor::new(tokens(64, 2).as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&x, 0).unwrap();
    let steps = 32;
    let t = Instant::now();
    for i in 0..steps {
        let x = Tensor::new(&[tokens(1, 1000 + i as u32)[0]], &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        m.forward(&x, 64 + i).unwrap();
    }
    row["tg1"] = json!(steps as f64 / t.elapsed().as_secs_f64());
    row
}

/// The llama.cpp build for one ISA level (`benches/llamacpp.sh ISA`), or `LLAMA_BENCH_<ISA>`.
fn llama_bench_bin(isa: &str) -> Option<PathBuf> {
    let bin = std::env::var(format!("LLAMA_BENCH_{}", isa.to_uppercase()))
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(format!(
                ".cache/loraplex/llama.cpp/build-{isa}/bin/llama-bench"
            ))
        });
    if bin.exists() {
        Some(bin)
    } else {
        eprintln!(
            "llama-bench for {isa} not found at {} (run benches/llamacpp.sh {isa}); no baseline",
            bin.display()
        );
        None
    }
}

/// llama-bench on `model`: pp64, pp512, tg1, tg16, tg64, each the median of its 5 runs
/// (`samples_ts`), after its own warm-up.
fn llama_bench(bin: &PathBuf, model: &std::path::Path, threads: usize) -> Option<Value> {
    let out = Command::new(bin)
        .args(["-m", model.to_str()?, "-t", &threads.to_string()])
        .args(["-p", "64,512", "-n", "1,16,64", "-r", "5", "-o", "json"])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "llama-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let runs: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut r = json!({"threads": threads, "model": model.file_name()?.to_str()?});
    for run in runs.as_array()? {
        let (p, n) = (run["n_prompt"].as_u64()?, run["n_gen"].as_u64()?);
        let key = if n == 0 {
            format!("pp{p}")
        } else {
            format!("tg{n}")
        };
        let mut ts: Vec<f64> = run["samples_ts"]
            .as_array()?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        ts.sort_by(f64::total_cmp);
        r[key] = json!(ts.get(ts.len() / 2)?);
    }
    Some(r)
}

/// The model with its quantized matrices (Q4_1, K-quants, ...) re-quantized to Q8_0 (candle's
/// writer), so that llama.cpp's speed on the format this engine runs is measured apart from
/// its own format's.
fn q8_0_copy() -> PathBuf {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let path = std::env::temp_dir().join(format!("loraplex-q8_0-{}.gguf", std::process::id()));
    let dev = candle_core::Device::Cpu;
    let mut f = std::fs::File::open(model_path()).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for name in content.tensor_infos.keys() {
        let q = content.tensor(&mut f, name, &dev).unwrap();
        let requantize = !matches!(
            q.dtype(),
            GgmlDType::Q8_0 | GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        );
        let q = if requantize && q.shape().rank() == 2 {
            QTensor::quantize(&q.dequantize(&dev).unwrap(), GgmlDType::Q8_0).unwrap()
        } else {
            q
        };
        tensors.push((name.clone(), q));
    }
    let mut out = std::fs::File::create(&path).unwrap();
    let md: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &md, &ts).unwrap();
    path
}

/// The llama.cpp build an engine tier is compared with.
fn isa_of(kernels: &str) -> Option<&'static str> {
    match kernels {
        "avx2" | "avxvnni" => Some("avx2"),
        "avx512" => Some("avx512"),
        // `auto` runs the best tier this CPU has: compared with that tier's build.
        "auto" => isa_of(loraplex_models::Caps::detect().tier().name()),
        _ => None,
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench` to check they build.
    if !std::env::args().any(|a| a == "--bench") && std::env::var("LORAPLEX_BENCH_CHILD").is_err() {
        return;
    }
    if let Ok(t) = std::env::var("LORAPLEX_BENCH_CHILD") {
        match std::env::var("LORAPLEX_BENCH_STOCK") {
            Ok(label) => println!("{}", stock_candle(t.parse().unwrap(), &label)),
            Err(_) => println!("{}", child(t.parse().unwrap())),
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let q8 = q8_0_copy();
    let mut report = Vec::new();
    for t in env_list("LORAPLEX_BENCH_THREADS", "1,2") {
        let threads: usize = t.parse().unwrap();
        // llama.cpp per ISA level, on the file as it is and on the same model in Q8_0.
        let mut baselines = serde_json::Map::new();
        for isa in ["avx2", "avx512"] {
            if let Some(bin) = llama_bench_bin(isa) {
                let q4 = llama_bench(&bin, &model_path(), threads);
                let q8 = llama_bench(&bin, &q8, threads);
                baselines.insert(isa.into(), json!({"file": q4, "q8_0": q8}));
            }
        }
        let out = Command::new(&exe)
            .env("LORAPLEX_BENCH_CHILD", &t)
            .env("RAYON_NUM_THREADS", &t)
            .output()
            .expect("run the benchmark child");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours: Value = serde_json::from_slice(&out.stdout).unwrap();
        let stock_runs: &[(&str, bool)] = if stock_candle_runs() {
            &[("q8_0", false), ("f32", true)]
        } else {
            &[]
        };
        let stock: Vec<Value> = stock_runs
            .iter()
            .map(|&(label, dequant)| {
                let mut c = Command::new(&exe);
                c.env("LORAPLEX_BENCH_CHILD", &t)
                    .env("LORAPLEX_BENCH_STOCK", label)
                    .env("RAYON_NUM_THREADS", &t);
                if dequant {
                    c.env("CANDLE_DEQUANTIZE_ALL", "1");
                }
                let out = c.output().expect("run the stock candle child");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                serde_json::from_slice(&out.stdout).unwrap()
            })
            .collect();
        let best = |key: &str| {
            stock
                .iter()
                .filter_map(|r| r[key].as_f64())
                .fold(0.0, f64::max)
        };
        let mut rows = Vec::new();
        for mut r in ours.as_array().unwrap().clone() {
            let isa = r["kernels"].as_str().and_then(isa_of);
            for (format, key) in [("file", "vs_llamacpp"), ("q8_0", "vs_llamacpp_q8_0")] {
                let Some(b) = isa.and_then(|i| baselines.get(i)).map(|b| &b[format]) else {
                    continue;
                };
                let ratio = |k: &str| {
                    json!(r[k].as_f64().unwrap_or(0.0) / b[k].as_f64().unwrap_or(f64::NAN))
                };
                r[key] = json!({
                    "build": isa,
                    "pp64": ratio("pp64"),
                    "pp512": ratio("pp512"),
                    "tg1": ratio("tg1"),
                    "tg16": ratio("tg16"),
                    "tg64": ratio("tg64"),
                });
            }
            if !stock.is_empty() {
                let vs = |k: &str| json!(r[k].as_f64().unwrap_or(0.0) / best(k));
                r["vs_best_stock_candle"] =
                    json!({"pp64": vs("pp64"), "pp512": vs("pp512"), "tg1": vs("tg1")});
            }
            rows.push(r);
        }
        report.push(json!({"model": model_path().file_name().and_then(|n| n.to_str()), "threads": threads, "llama_cpp": baselines, "stock_candle": stock, "loraplex": rows}));
    }
    let _ = std::fs::remove_file(&q8);
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
