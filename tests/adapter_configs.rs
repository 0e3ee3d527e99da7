//! What an `adapter_config.json` means when it leaves fields out (PEFT's `LoraConfig` defaults,
//! since PEFT would load it so), what it may not ask for, and ranks above the CPU kernels' stack
//! scratch.

use std::path::{Path, PathBuf};

use loraplex_adapters::{
    inspect_dir, load_dir, AdapterError, AdapterLimits, BaseModel, LoadedAdapter,
};
use loraplex_models::{LoraPrecision, LoraWeights};
use serde_json::{json, Value};

use crate::adapter_fixtures::{all_targets, merged_tiny, random_tiny_adapter, AdapterSpec};
use crate::util::{golden_json, ids, last_logits, max_abs_diff, staggered, tiny};

/// `spec`'s tensors with `config` in `dir/name`.
fn write(dir: &Path, name: &str, spec: &AdapterSpec, config: &Value) -> PathBuf {
    let path = dir.join(name);
    AdapterSpec {
        config: config.clone(),
        tensors: spec.tensors.clone(),
    }
    .write(&path);
    path
}

fn load(dir: &Path, limits: &AdapterLimits) -> LoadedAdapter {
    load_dir(dir, &BaseModel::of(tiny()), limits)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn prompts() -> Vec<Vec<u32>> {
    let cases = golden_json("tiny_cases.json");
    [1, 5]
        .map(|i| ids(&cases["cases"][i]["input_ids"]))
        .to_vec()
}

fn logit_bits(w: &LoraWeights, prompt: &[u32]) -> Vec<u32> {
    let l = last_logits(tiny(), prompt, Some(w));
    l.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn omitted_lora_alpha_scales_by_peft_default_8() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = random_tiny_adapter(4, &["q_proj", "v_proj"], 21);
    let mut config = spec.config.clone();
    config["lora_alpha"] = json!(8);
    let explicit = load(
        &write(tmp.path(), "explicit", &spec, &config),
        &Default::default(),
    );
    config.as_object_mut().unwrap().remove("lora_alpha");
    let omitted = load(
        &write(tmp.path(), "omitted", &spec, &config),
        &Default::default(),
    );
    assert_eq!(omitted.info.alpha, 8.0);
    config["lora_alpha"] = json!(1);
    let one = load(
        &write(tmp.path(), "one", &spec, &config),
        &Default::default(),
    );
    for p in prompts() {
        assert_eq!(
            logit_bits(&omitted.weights, &p),
            logit_bits(&explicit.weights, &p),
            "no lora_alpha must scale by 8/r, bit for bit"
        );
        let d = max_abs_diff(
            &last_logits(tiny(), &p, Some(&omitted.weights)),
            &last_logits(tiny(), &p, Some(&one.weights)),
        );
        assert!(d > 1e-3, "alpha 8 and alpha 1 must differ ({d})");
    }
}

#[test]
fn every_omitted_field_takes_peft_default() {
    // PEFT's LoraConfig defaults, written out; target_modules is PEFT's default for Llama.
    let defaults = json!({
        "peft_type": "LORA", "r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": false, "use_rslora": false, "use_dora": false, "rank_pattern": {},
        "alpha_pattern": {}, "layers_to_transform": null, "layers_pattern": null,
        "modules_to_save": null, "exclude_modules": null, "lora_bias": false,
        "target_modules": ["q_proj", "v_proj"]
    });
    let tmp = tempfile::tempdir().unwrap();
    let spec = random_tiny_adapter(8, &["q_proj", "v_proj"], 22);
    let explicit = load(
        &write(tmp.path(), "all", &spec, &defaults),
        &Default::default(),
    );
    let prompt = &prompts()[0];
    let want = logit_bits(&explicit.weights, prompt);
    let mut configs: Vec<(String, Value)> = vec![("every field".into(), json!({}))];
    for key in defaults.as_object().unwrap().keys() {
        let mut c = defaults.clone();
        c.as_object_mut().unwrap().remove(key);
        configs.push((key.clone(), c));
    }
    for (i, (left_out, config)) in configs.iter().enumerate() {
        let dir = write(tmp.path(), &i.to_string(), &spec, config);
        let got = load(&dir, &Default::default());
        assert_eq!(
            (got.info.rank, got.info.alpha, &got.info.targets),
            (8, 8.0, &explicit.info.targets),
            "without {left_out}"
        );
        assert_eq!(logit_bits(&got.weights, prompt), want, "without {left_out}");
        assert_eq!(inspect_dir(&dir).unwrap().rank, 8, "without {left_out}");
    }
}

#[test]
fn unsupported_fields_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = random_tiny_adapter(4, &["q_proj", "v_proj"], 23);
    let refused = [
        ("lora_bias", json!(true)),
        ("exclude_modules", json!(["k_proj"])),
        ("layer_replication", json!([[0, 2], [1, 2]])),
        ("alora_invocation_tokens", json!([5, 6])),
        ("target_parameters", json!(["mlp.experts.w1"])),
        ("layers_pattern", json!("h")),
    ];
    for (field, value) in refused {
        let mut config = spec.config.clone();
        config[field] = value;
        let dir = write(tmp.path(), field, &spec, &config);
        let server = load_dir(&dir, &BaseModel::of(tiny()), &Default::default()).unwrap_err();
        let client = inspect_dir(&dir).unwrap_err();
        for e in [server, client] {
            assert!(
                matches!(&e, AdapterError::Unsupported(m) if m.contains(field)),
                "{field}: {e}"
            );
        }
    }
}

#[test]
fn ranks_above_512_match_the_merged_weights() {
    // The CPU kernel's rank scratch is on the stack up to 512; past it, a raised
    // --max-lora-rank must still give the merged weights' logits, alone and batched.
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = random_tiny_adapter(600, &all_targets(), 24);
    spec.config["lora_alpha"] = json!(60); // scale 0.1 keeps the update near the base's size
    let dir = tmp.path().join("adapter");
    spec.write(&dir);
    let limits = AdapterLimits { max_rank: 1024 };
    let adapter = load(&dir, &limits);
    assert_eq!(adapter.info.rank, 600);
    let merged = merged_tiny(&spec, 0.1, &tmp.path().join("merged"));
    let half = load_dir(
        &dir,
        &BaseModel {
            precision: LoraPrecision::F16,
            ..BaseModel::of(tiny())
        },
        &limits,
    )
    .unwrap();
    let prompts = prompts();
    for p in &prompts {
        let unmerged = last_logits(tiny(), p, Some(&adapter.weights));
        let d = max_abs_diff(&unmerged, &last_logits(&merged, p, None));
        assert!(d <= 1e-4, "merged vs unmerged {d}");
        let base_d = max_abs_diff(&unmerged, &last_logits(tiny(), p, None));
        assert!(base_d > 1e-2, "the adapter must matter ({base_d})");
        let dh = max_abs_diff(&unmerged, &last_logits(tiny(), p, Some(&half.weights)));
        // f16 rounding of 600-term sums: small next to what the adapter changes.
        eprintln!("f16 vs f32 {dh}, delta {base_d}");
        assert!(base_d > 50.0 * dh, "f16 vs f32 {dh}, delta {base_d}");
    }
    // A base request batched with the rank-600 one, joining a step later.
    let adapters = [Some(&adapter.weights), None];
    let batched = staggered(tiny(), &prompts, &adapters, &[0, 1], 3);
    for (i, p) in prompts.iter().enumerate() {
        let alone = staggered(tiny(), std::slice::from_ref(p), &adapters[i..=i], &[0], 3);
        for (b, a) in batched[i].iter().zip(&alone[0]) {
            assert!(max_abs_diff(b, a) <= 1e-5, "sequence {i}: batched vs alone");
        }
    }
}
