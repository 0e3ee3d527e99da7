//! Paths to the golden references (`tests/golden/`, see its README) and the default model, and
//! small readers for them; the HTTP round trip of tests that read a body as text (SSE).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use loraplex_gateway::{app, AppState};
use tower::ServiceExt;

use loraplex_models::{
    KernelChoice, KvCache, LoadOptions, LoadedModel, LogitsFor, LoraWeights, SeqInput, WeightDtype,
};
use loraplex_runtime::argmax;
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn golden() -> PathBuf {
    repo_root().join("tests/golden")
}

pub fn golden_json(name: &str) -> Value {
    let p = golden().join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

/// The default model, fetched by `scripts/fetch-model.sh` (the README's test command runs it).
pub fn smollm2_path() -> PathBuf {
    let p = repo_root().join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        p.display()
    );
    p
}

pub fn load(spec: &str, dtype: WeightDtype) -> LoadedModel {
    load_on(spec, dtype, KernelChoice::Auto)
}

pub fn load_on(spec: &str, dtype: WeightDtype, kernels: KernelChoice) -> LoadedModel {
    // candle's generic path runs where `LORAPLEX_TEST_DEVICE` says (`benches/gpu.sh` sets
    // `cuda`); the CPU wing runs on the CPU.
    let device = match (kernels, std::env::var("LORAPLEX_TEST_DEVICE")) {
        (KernelChoice::Candle, Ok(d)) => loraplex_models::parse_device(&d).unwrap(),
        _ => loraplex_models::Device::Cpu,
    };
    loraplex_models::load(
        spec,
        &LoadOptions {
            dtype,
            kernels,
            device,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("load {spec} ({kernels:?}): {e}"))
}

/// The kernel sets the golden suites run on (see `test_kernels!`).
pub mod kernels {
    use loraplex_models::{KernelChoice, Tier};

    /// The reference tier, on any CPU.
    pub fn portable() -> KernelChoice {
        KernelChoice::Tier(Tier::Portable)
    }

    /// The fastest tier this CPU runs.
    pub fn detected() -> KernelChoice {
        KernelChoice::Auto
    }

    /// candle's generic ops on the CPU: the path every GPU takes.
    pub fn candle() -> KernelChoice {
        KernelChoice::Candle
    }
}

/// One shared instance per model, dtype and kernels, loaded on first use.
fn shared(name: &str, dtype: WeightDtype, kernels: KernelChoice) -> &'static Arc<LoadedModel> {
    type Cell = &'static OnceLock<Arc<LoadedModel>>;
    static CELLS: OnceLock<Mutex<HashMap<String, Cell>>> = OnceLock::new();
    let key = format!("{name}/{dtype:?}/{kernels:?}");
    // The map's lock is held only to find the cell: loads of different models run in parallel.
    let cell: Cell = *CELLS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(key)
        .or_insert_with(|| Box::leak(Box::default()));
    cell.get_or_init(|| {
        let spec = match name {
            "tiny" => golden().join("tiny-llama"),
            _ => smollm2_path(),
        };
        Arc::new(load_on(spec.to_str().unwrap(), dtype, kernels))
    })
}

/// A fresh tiny model (for tests that start their own engine).
pub fn tiny_arc() -> std::sync::Arc<LoadedModel> {
    std::sync::Arc::new(load(
        golden().join("tiny-llama").to_str().unwrap(),
        WeightDtype::F32,
    ))
}

/// A registry holding the three golden tiny adapters under their folder names.
pub fn tiny_registry() -> loraplex_adapters::AdapterRegistry {
    let r = loraplex_adapters::AdapterRegistry::new();
    r.scan_dir(&golden().join("tiny-adapters")).unwrap();
    r
}

pub fn tiny() -> &'static LoadedModel {
    tiny_on(KernelChoice::Auto)
}

pub fn tiny_on(kernels: KernelChoice) -> &'static LoadedModel {
    shared("tiny", WeightDtype::F32, kernels)
}

pub fn smollm2(dtype: WeightDtype) -> &'static LoadedModel {
    smollm2_on(dtype, KernelChoice::Auto)
}

/// The same shared instance, for engines and gateway states (which take an `Arc`).
pub fn smollm2_arc(dtype: WeightDtype) -> Arc<LoadedModel> {
    shared("smollm2", dtype, KernelChoice::Auto).clone()
}

pub fn smollm2_on(dtype: WeightDtype, kernels: KernelChoice) -> &'static LoadedModel {
    shared("smollm2", dtype, kernels)
}

/// Runs `check(kernels)` as one test per kernel set — the portable tier, the tier this CPU
/// runs best, and candle's generic ops (every GPU's path) on the CPU — in the spirit of
/// candle's `test_device!`: `test_kernels!(check)` makes `check::portable`, `check::detected`
/// and `check::candle`.
macro_rules! test_kernels {
    ($check:ident) => {
        test_kernels!($check: portable, detected, candle);
    };
    ($check:ident: $($k:ident),+) => {
        mod $check {
            $(
                #[test]
                fn $k() {
                    super::$check($crate::util::kernels::$k())
                }
            )+
        }
    };
}
pub(crate) use test_kernels;

/// POSTs a JSON body through `app(st).oneshot`; the status and the body as text.
pub async fn post_text(st: &AppState, uri: &str, body: &Value) -> (StatusCode, String) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The `data:` payloads of an SSE body, in order (`[DONE]` included).
pub fn sse_data(body: &str) -> impl Iterator<Item = &str> {
    body.lines().filter_map(|l| l.strip_prefix("data: "))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A little-endian f32 `.npy` array: (shape, data).
pub fn read_npy_f32(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(golden().join(name)).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_str
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = bytes[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Greedy decoding of several sequences where sequence `i` joins at step `join[i]`: its prefill
/// shares a forward pass with the others' decode steps. Returns each sequence's logits per step.
pub fn staggered(
    lm: &LoadedModel,
    prompts: &[Vec<u32>],
    adapters: &[Option<&LoraWeights>],
    join: &[usize],
    steps: usize,
) -> Vec<Vec<Vec<f32>>> {
    let n = prompts.len();
    let mut caches: Vec<KvCache> = (0..n).map(|_| lm.model.new_cache()).collect();
    let mut produced: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut logits: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
    let mut step = 0;
    while produced.iter().any(|p| p.len() < steps) {
        let active: Vec<usize> = (0..n)
            .filter(|&i| join[i] <= step && produced[i].len() < steps)
            .collect();
        step += 1;
        if active.is_empty() {
            continue;
        }
        let last: Vec<[u32; 1]> = active
            .iter()
            .map(|&i| [*produced[i].last().unwrap_or(&0)])
            .collect();
        let inputs: Vec<SeqInput<'_>> = active
            .iter()
            .zip(&last)
            .map(|(&i, l)| {
                let tokens: &[u32] = if produced[i].is_empty() {
                    &prompts[i]
                } else {
                    l
                };
                SeqInput::new(tokens, LogitsFor::Last).with_adapter(adapters[i])
            })
            .collect();
        let mut refs: Vec<&mut KvCache> = caches
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.contains(i))
            .map(|(_, c)| c)
            .collect();
        let out = lm.model.forward(&inputs, &mut refs).unwrap();
        for (&i, l) in active.iter().zip(out) {
            let l: Vec<f32> = l.unwrap().squeeze(0).unwrap().to_vec1().unwrap();
            produced[i].push(argmax(&l));
            logits[i].push(l);
        }
    }
    logits
}

/// How far row `i` of a `staggered` batch (`batched`) moved from the same sequence run alone:
/// the largest |Δlogit| over its steps.
pub fn batched_vs_alone(
    lm: &LoadedModel,
    prompts: &[Vec<u32>],
    adapters: &[Option<&LoraWeights>],
    batched: &[Vec<Vec<f32>>],
    i: usize,
) -> f32 {
    let steps = batched[i].len();
    let alone = staggered(lm, &prompts[i..=i], &adapters[i..=i], &[0], steps);
    batched[i]
        .iter()
        .zip(&alone[0])
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f32::max)
}

/// Logits at the last prompt position, from one fresh forward pass.
pub fn last_logits(lm: &LoadedModel, prompt: &[u32], adapter: Option<&LoraWeights>) -> Vec<f32> {
    let mut cache = lm.model.new_cache();
    let out = lm
        .model
        .forward(
            &[SeqInput::new(prompt, LogitsFor::Last).with_adapter(adapter)],
            &mut [&mut cache],
        )
        .unwrap();
    out[0]
        .as_ref()
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}
