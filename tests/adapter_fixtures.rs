//! Builds PEFT adapter folders for tests: random valid ones, every kind of broken one, and the
//! base with an adapter merged into its weights (the reference an unmerged adapter must match).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use loraplex_models::{LoadOptions, LoadedModel, WeightDtype};
use serde_json::{json, Value};

use crate::util::golden;

/// Deterministic values in [-scale, scale) (a 64-bit LCG), so tests need no RNG crate.
pub fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Shapes `(out, in)` of the tiny model's projections.
pub fn tiny_shape(proj: &str) -> (usize, usize) {
    match proj {
        "q_proj" | "o_proj" => (64, 64),
        "k_proj" | "v_proj" => (32, 64),
        "gate_proj" | "up_proj" => (128, 64),
        "down_proj" => (64, 128),
        other => panic!("{other}"),
    }
}

/// Every projection LoRA may adapt, by PEFT module name.
pub fn all_targets() -> Vec<&'static str> {
    loraplex_adapters::TARGETS.iter().map(|(_, n)| *n).collect()
}

pub struct AdapterSpec {
    pub config: Value,
    pub tensors: HashMap<String, Tensor>,
}

/// A valid random adapter for the tiny model: rank `r` on `targets` in both layers.
pub fn random_tiny_adapter(r: usize, targets: &[&str], seed: u64) -> AdapterSpec {
    let mut tensors = HashMap::new();
    for layer in 0..2 {
        for (i, t) in targets.iter().enumerate() {
            let (out, inp) = tiny_shape(t);
            let module =
                if t.ends_with("_proj") && ["gate_proj", "up_proj", "down_proj"].contains(t) {
                    format!("mlp.{t}")
                } else {
                    format!("self_attn.{t}")
                };
            let base = format!("base_model.model.model.layers.{layer}.{module}");
            let s = seed * 1000 + layer as u64 * 100 + i as u64 * 2;
            let a =
                Tensor::from_vec(pseudo_random(r * inp, s, 0.3), (r, inp), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(pseudo_random(out * r, s + 1, 0.3), (out, r), &Device::Cpu)
                .unwrap();
            tensors.insert(format!("{base}.lora_A.weight"), a);
            tensors.insert(format!("{base}.lora_B.weight"), b);
        }
    }
    AdapterSpec {
        config: json!({
            "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": targets,
            "bias": "none", "use_dora": false, "use_rslora": false, "modules_to_save": null,
            "base_model_name_or_path": "tiny-llama", "task_type": "CAUSAL_LM"
        }),
        tensors,
    }
}

impl AdapterSpec {
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("adapter_config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
        candle_core::safetensors::save(&self.tensors, dir.join("adapter_model.safetensors"))
            .unwrap();
    }
}

/// A copy of the tiny model with `W + scale·B·A` for every module of `spec`, written to `dir`.
pub fn merged_tiny(spec: &AdapterSpec, scale: f64, dir: &Path) -> LoadedModel {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(golden().join("tiny-llama")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let st = dir.join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    for (name, a) in &spec.tensors {
        let Some(module) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let b = &spec.tensors[&format!("{module}.lora_B.weight")];
        let key = format!(
            "{}.weight",
            module.strip_prefix("base_model.model.").unwrap()
        );
        let update = (b.matmul(a).unwrap() * scale).unwrap();
        let w = weights.get_mut(&key).unwrap();
        *w = (&*w + update).unwrap();
    }
    candle_core::safetensors::save(&weights, &st).unwrap();
    loraplex_models::load(
        dir.to_str().unwrap(),
        &LoadOptions {
            dtype: WeightDtype::F32,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The corpus of broken adapters: each label one way an adapter must be refused.
pub const BAD_CASES: &[&str] = &[
    "shape",
    "rank",
    "nan",
    "inf",
    "dora",
    "modules_to_save",
    "bias",
    "unknown target",
    "no match",
    "architecture",
    "missing B",
    "extra module",
    "bad json",
    "truncated",
    "empty weights",
];

/// Writes the broken variant `label` of a valid rank-4 q/v tiny adapter into `dir`
/// (ranks up to 32 are otherwise fine).
pub fn write_bad_tiny_adapter(label: &str, dir: &Path) {
    let key_b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let key_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let dev = Device::Cpu;
    let mut s = random_tiny_adapter(4, &["q_proj", "v_proj"], 9);
    let with_bad_value = |s: &mut AdapterSpec, at: usize, v: f32| {
        let mut data = pseudo_random(4 * 64, 3, 0.1);
        data[at] = v;
        s.tensors
            .insert(key_a.into(), Tensor::from_vec(data, (4, 64), &dev).unwrap());
    };
    match label {
        "shape" => {
            s.tensors.insert(
                key_b.into(),
                Tensor::zeros((48, 4), candle_core::DType::F32, &dev).unwrap(),
            );
        }
        "rank" => s = random_tiny_adapter(33, &["q_proj"], 1),
        "nan" => with_bad_value(&mut s, 17, f32::NAN),
        "inf" => with_bad_value(&mut s, 0, f32::INFINITY),
        "dora" => s.config["use_dora"] = json!(true),
        "modules_to_save" => s.config["modules_to_save"] = json!(["lm_head"]),
        "bias" => s.config["bias"] = json!("lora_only"),
        "unknown target" => s.config["target_modules"] = json!(["q_proj", "v_proj", "fc_in"]),
        "no match" => s.config["target_modules"] = json!("lm_head"),
        "architecture" => s.config["base_model_name_or_path"] = json!("openai-community/gpt2"),
        "missing B" => {
            s.tensors.remove(key_b);
        }
        "extra module" => {
            s.tensors.insert(
                "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight".into(),
                Tensor::zeros((4, 64), candle_core::DType::F32, &dev).unwrap(),
            );
        }
        "bad json" => s.config = json!("not an object"),
        "truncated" | "empty weights" => {}
        other => panic!("unknown bad case {other}"),
    }
    s.write(dir);
    let st = dir.join("adapter_model.safetensors");
    if label == "truncated" {
        let bytes = std::fs::read(&st).unwrap();
        std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    }
    if label == "empty weights" {
        std::fs::write(&st, b"").unwrap();
    }
}
