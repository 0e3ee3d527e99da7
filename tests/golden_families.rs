//! The tiny random models of the other families (`tests/golden/families/`, made by
//! `scripts/make-family-goldens.sh`: Qwen2, Qwen3, Gemma 3, Mistral with a sliding window,
//! Phi-3 with fused modules) and their PEFT adapters against transformers + PEFT in f32:
//! last-position logits, greedy ids, and mixed-adapter batches equal to each request alone, on
//! every kernel set.

use std::collections::HashMap;

use loraplex_adapters::{load_dir, AdapterLimits, BaseModel, LoadedAdapter};
use loraplex_models::{KernelChoice, LoadedModel, LoraWeights, WeightDtype};
use serde_json::Value;

use crate::golden_tiny::batch_tolerance;
use crate::util::{
    batched_vs_alone, golden, golden_json, ids, last_logits, load_on, max_abs_diff, read_npy_f32,
    staggered, test_kernels,
};

/// transformers agrees with itself within 2e-5 on these models (see each case file's
/// `checks`); the engine must agree with it within the tiny model's tolerance.
const TOLERANCE: f32 = 1e-4;

struct Golden {
    lm: LoadedModel,
    cases: Value,
    adapters: HashMap<String, LoadedAdapter>,
}

impl Golden {
    /// The family's model (weights stored in bf16, run in f32 as the reference was) and its
    /// adapters: from its HF directory, or (`gguf`) from llama.cpp's conversion of it
    /// (`scripts/make-family-ggufs.sh`).
    fn load(family: &str, k: KernelChoice, gguf: bool) -> Self {
        let cases = golden_json(&format!("families/{family}_cases.json"));
        let dir = golden().join(cases["model_dir"].as_str().unwrap());
        let spec = match gguf {
            true => golden().join(format!("families/{family}.gguf")),
            false => dir,
        };
        let lm = load_on(spec.to_str().unwrap(), WeightDtype::F32, k);
        let adapters = cases["adapters"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, a)| {
                let dir = golden().join(a["dir"].as_str().unwrap());
                let loaded = load_dir(&dir, &BaseModel::of(&lm), &AdapterLimits::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                (name.clone(), loaded)
            })
            .collect();
        Self {
            lm,
            cases,
            adapters,
        }
    }

    fn adapter(&self, variant: &str) -> Option<&LoraWeights> {
        (variant != "base").then(|| &self.adapters[variant].weights)
    }

    fn prompts(&self) -> Vec<Vec<u32>> {
        self.cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| ids(&c["input_ids"]))
            .collect()
    }
}

fn logsumexp(v: &[f32]) -> f64 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

/// Every case and variant: the top-20 logits and the logsumexp, and the base's whole vector.
fn logits_match(g: &Golden, family: &str) {
    let full = g.cases["full_logits_file"]["file"]
        .as_str()
        .map(read_npy_f32);
    for (i, case) in g.cases["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["input_ids"]);
        for variant in g.cases["variants"].as_array().unwrap() {
            let variant = variant.as_str().unwrap();
            let got = last_logits(&g.lm, &prompt, g.adapter(variant));
            let want = &case["results"][variant];
            for pair in want["top"].as_array().unwrap() {
                let (id, logit) = (
                    pair[0].as_u64().unwrap() as usize,
                    pair[1].as_f64().unwrap(),
                );
                let d = (got[id] as f64 - logit).abs();
                assert!(
                    d <= TOLERANCE as f64,
                    "{family} case {i} {variant}: id {id} off by {d}"
                );
            }
            let lse = want["logsumexp"].as_f64().unwrap();
            let d = (logsumexp(&got) - lse).abs();
            assert!(
                d <= TOLERANCE as f64,
                "{family} case {i} {variant}: logsumexp off by {d}"
            );
            if let (Some((shape, all)), "base") = (&full, variant) {
                let vocab = shape[2];
                let d = max_abs_diff(&got, &all[i * vocab..(i + 1) * vocab]);
                assert!(d <= TOLERANCE, "{family} case {i}: max |Δlogit| {d}");
            }
        }
    }
}

/// Greedy ids of every variant, each variant's prompts as one staggered batch (prefills beside
/// decodes at other positions), and the file's mixed-adapter batch against each row alone.
fn batches_match(g: &Golden, family: &str, k: KernelChoice) {
    let prompts = g.prompts();
    let n = prompts.len();
    let join: Vec<usize> = (0..n).collect();
    let greedy = |i: usize, v: &str| ids(&g.cases["cases"][i]["results"][v]["greedy_ids"]);
    let argmaxes =
        |l: &[Vec<f32>]| -> Vec<u32> { l.iter().map(|x| loraplex_runtime::argmax(x)).collect() };
    for variant in g.cases["variants"].as_array().unwrap() {
        let v = variant.as_str().unwrap();
        let out = staggered(&g.lm, &prompts, &vec![g.adapter(v); n], &join, 16);
        for (i, steps) in out.iter().enumerate() {
            assert_eq!(argmaxes(steps), greedy(i, v), "{family} prompt {i} {v}");
        }
    }
    let mixed: Vec<&str> = g.cases["batch_case"]["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let adapters: Vec<_> = mixed.iter().map(|v| g.adapter(v)).collect();
    let batched = staggered(&g.lm, &prompts, &adapters, &join, 16);
    for i in 0..n {
        let worst = batched_vs_alone(&g.lm, &prompts, &adapters, &batched, i);
        assert!(
            worst <= batch_tolerance(k),
            "{family} prompt {i} ({}): batched vs alone max |Δlogit| {worst}",
            mixed[i]
        );
        assert_eq!(
            argmaxes(&batched[i]),
            greedy(i, mixed[i]),
            "{family} prompt {i} in the mixed batch"
        );
    }
}

fn check(family: &str, k: KernelChoice, gguf: bool) {
    let g = Golden::load(family, k, gguf);
    assert_eq!(g.lm.model.config().arch().name(), family);
    logits_match(&g, family);
    batches_match(&g, family, k);
}

macro_rules! families {
    ($($family:ident),+) => {
        $(
            fn $family(k: KernelChoice) {
                check(stringify!($family), k, false)
            }
            test_kernels!($family);
        )+
    };
}

families!(qwen2, qwen3, gemma3, mistral, phi3);

/// The same goldens from GGUF files written by llama.cpp's converter: its tensor names, Qwen2's
/// biases, Qwen3's head norms, Phi-3's fused `attn_qkv` and two-halved `ffn_up`.
macro_rules! gguf_families {
    ($($family:ident => $name:ident),+) => {
        $(
            fn $name(k: KernelChoice) {
                check(stringify!($family), k, true)
            }
            test_kernels!($name);
        )+
    };
}

gguf_families!(qwen2 => qwen2_gguf, qwen3 => qwen3_gguf, phi3 => phi3_gguf);
