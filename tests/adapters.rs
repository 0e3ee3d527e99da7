//! PEFT adapters on the tiny exact model and on SmolLM2: golden logits, mixed-adapter batches,
//! the merged-weights identity, and every rejection case.

use std::collections::HashMap;
use std::path::Path;

use loraplex_adapters::{
    load_dir, load_dir_checked, AdapterError, AdapterInfo, AdapterLimits, BaseModel, Identity,
    LoadedAdapter, Recorded,
};
use loraplex_models::{
    KernelChoice, KvCache, LoadedModel, LogitsFor, LoraPrecision, LoraWeights, SeqInput, Tier,
    WeightDtype,
};
use loraplex_runtime::{argmax, GenRequest, GenerationParams};

use crate::adapter_fixtures::{
    all_targets, merged_tiny, random_tiny_adapter, write_bad_tiny_adapter, BAD_CASES,
};
use crate::golden_tiny::batch_tolerance;
use crate::util::{
    batched_vs_alone, golden, golden_json, ids, last_logits, max_abs_diff, read_npy_f32, smollm2,
    smollm2_on, staggered, test_kernels, tiny, tiny_on,
};

fn load(lm: &LoadedModel, dir: &Path) -> LoadedAdapter {
    load_dir(dir, &BaseModel::of(lm), &AdapterLimits::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn tiny_adapter(lm: &LoadedModel, name: &str) -> LoadedAdapter {
    load(lm, &golden().join("tiny-adapters").join(name))
}

test_kernels!(tiny_adapters_match_peft_logits_and_greedy_ids);

fn tiny_adapters_match_peft_logits_and_greedy_ids(k: KernelChoice) {
    let tiny = || tiny_on(k);
    let cases = golden_json("tiny_cases.json");
    let variants: Vec<String> = cases["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    let (shape, all) = read_npy_f32("tiny_last_logits.npy");
    let (n_cases, vocab) = (shape[1], shape[2]);
    for (v, name) in variants.iter().enumerate().skip(1) {
        let a = tiny_adapter(tiny(), name);
        for (i, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&case["input_ids"]);
            let got = last_logits(tiny(), &prompt, Some(&a.weights));
            let off = (v * n_cases + i) * vocab;
            let diff = max_abs_diff(&got, &all[off..off + vocab]);
            assert!(diff <= 1e-4, "{name} case {i}: max |Δlogit| {diff}");
            let params = GenerationParams {
                max_tokens: 16,
                ignore_eos: true,
                ..Default::default()
            };
            let g = loraplex_runtime::generate(
                &tiny().model,
                &tiny().tokenizer,
                vec![GenRequest::new(prompt, params).with_adapter(Some(&a.weights))],
            )
            .unwrap();
            assert_eq!(
                g[0].ids,
                ids(&case["results"][name]["greedy_ids"]),
                "{name} case {i}"
            );
        }
    }
}

test_kernels!(mixed_adapter_batch_equals_each_request_alone);

fn mixed_adapter_batch_equals_each_request_alone(k: KernelChoice) {
    let tiny = || tiny_on(k);
    let cases = golden_json("tiny_cases.json");
    let batch = &cases["batch_case"];
    let names: Vec<&str> = batch["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let loaded: HashMap<&str, LoadedAdapter> = names
        .iter()
        .filter(|n| **n != "base")
        .map(|n| (*n, tiny_adapter(tiny(), n)))
        .collect();
    let adapters: Vec<Option<&LoraWeights>> = names
        .iter()
        .map(|n| loaded.get(n).map(|a| &a.weights))
        .collect();
    let prompts: Vec<Vec<u32>> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ids(&c["input_ids"]))
        .collect();
    let n = prompts.len();
    // Every forward pass mixes adapters, prefills and decodes at different positions.
    let batched = staggered(tiny(), &prompts, &adapters, &(0..n).collect::<Vec<_>>(), 16);
    for i in 0..n {
        let worst = batched_vs_alone(tiny(), &prompts, &adapters, &batched, i);
        assert!(
            worst <= batch_tolerance(k),
            "prompt {i} ({}): batched vs alone {worst}",
            names[i]
        );
        let got: Vec<u32> = batched[i].iter().map(|l| argmax(l)).collect();
        let want = ids(&cases["cases"][i]["results"][names[i]]["greedy_ids"]);
        assert_eq!(got, want, "prompt {i} with {}", names[i]);
    }
}

#[test]
fn unmerged_adapter_equals_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let spec = random_tiny_adapter(6, &all_targets(), 5);
    spec.write(&dir.path().join("adapter"));
    let adapter = load(tiny(), &dir.path().join("adapter"));
    let merged = merged_tiny(&spec, 2.0, &dir.path().join("merged")); // alpha/r = 12/6
    for case in golden_json("tiny_cases.json")["cases"].as_array().unwrap() {
        let prompt = ids(&case["input_ids"]);
        let unmerged = last_logits(tiny(), &prompt, Some(&adapter.weights));
        let merged_logits = last_logits(&merged, &prompt, None);
        let d = max_abs_diff(&unmerged, &merged_logits);
        assert!(d <= 1e-4, "merged vs unmerged {d}");
        assert!(
            max_abs_diff(&unmerged, &last_logits(tiny(), &prompt, None)) > 1e-2,
            "the adapter must matter"
        );
    }
}

#[test]
fn half_precision_adapters_stay_within_f16_rounding_of_f32() {
    // Quantized bases hold adapters in 8 bits beside the packed 8-bit kernel, in f16 beside
    // other quantized weights (half the bytes a decode step streams); exact bases keep f32 so
    // the golden comparisons stay exact.
    assert_eq!(tiny().model.lora_precision(), LoraPrecision::F32);
    assert_eq!(
        smollm2(WeightDtype::Auto).model.lora_precision(),
        LoraPrecision::Q8
    );
    assert_eq!(
        smollm2(WeightDtype::F32).model.lora_precision(),
        LoraPrecision::F32
    );
    let dir = golden().join("tiny-adapters").join("b-r16-all");
    let exact = load(tiny(), &dir);
    let at = |precision| {
        let base = BaseModel {
            precision,
            ..BaseModel::of(tiny())
        };
        load_dir(&dir, &base, &AdapterLimits::default()).unwrap()
    };
    let half = at(LoraPrecision::F16);
    assert_eq!(half.info.sha256, exact.info.sha256);
    assert!(
        half.info.bytes * 2 == exact.info.bytes,
        "f16 holds half the bytes"
    );
    // 8 bits: A as packed Q8_0 blocks, (s·B)ᵀ with one scale per rank row.
    let q8 = at(LoraPrecision::Q8);
    assert!(
        q8.info.bytes * 3 < exact.info.bytes,
        "8-bit: ≈ 1/4 the bytes"
    );
    for case in golden_json("tiny_cases.json")["cases"].as_array().unwrap() {
        let prompt = ids(&case["input_ids"]);
        let with = |w: &LoraWeights| last_logits(tiny(), &prompt, Some(w));
        let e = with(&exact.weights);
        let base_d = max_abs_diff(&e, &last_logits(tiny(), &prompt, None));
        let d = max_abs_diff(&e, &with(&half.weights));
        assert!(d <= 5e-3, "f16 vs f32 adapter {d}");
        assert!(
            base_d > 50.0 * d,
            "rounding {d} must be small next to the delta {base_d}"
        );
        // Three 8-bit roundings (activations, A, B) of a delta: a few per cent of it.
        let d8 = max_abs_diff(&e, &with(&q8.weights));
        eprintln!("8-bit vs f32 adapter {d8}, delta {base_d}");
        assert!(
            base_d > 15.0 * d8,
            "8-bit rounding {d8} must be small next to the delta {base_d}"
        );
    }
}

#[test]
fn quantized_rows_are_bit_identical_alone_and_in_any_batch_on_every_tier() {
    // On every CPU tier each row runs the same operations whatever shares its step, so a
    // request's output cannot depend on its neighbours (or on how many there are).
    let tiers = Tier::available();
    eprintln!("tiers: {tiers:?}");
    let mut first: Option<Vec<Vec<f32>>> = None;
    for tier in tiers {
        let alone =
            bit_identical_in_batches(smollm2_on(WeightDtype::Auto, KernelChoice::Tier(tier)));
        // And every tier gives the same bits as the others.
        match &first {
            None => first = Some(alone),
            Some(f) => assert!(f == &alone, "{tier} differs from the portable tier"),
        }
    }
}

/// Each prompt's last logits alone, after checking they equal its logits in one mixed batch.
fn bit_identical_in_batches(lm: &LoadedModel) -> Vec<Vec<f32>> {
    let dir = golden().join("smollm2-adapters").join("rand-r8-qv");
    let adapter = load(lm, &dir);
    let prompts: Vec<Vec<u32>> = (0..5u32)
        .map(|i| (0..7 + 3 * i).map(|j| 200 + 31 * j + 7 * i).collect())
        .collect();
    let pick = |i: usize| (i % 2 == 1).then_some(&adapter.weights);
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| last_logits(lm, p, pick(i)))
        .collect();
    let mut caches: Vec<_> = prompts.iter().map(|_| lm.model.new_cache()).collect();
    let inputs: Vec<SeqInput> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| SeqInput::new(p, LogitsFor::Last).with_adapter(pick(i)))
        .collect();
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let out = lm.model.forward(&inputs, &mut refs).unwrap();
    for (i, o) in out.iter().enumerate() {
        let batched: Vec<f32> = o.as_ref().unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        assert_eq!(
            batched, alone[i],
            "prompt {i}: batched logits differ from alone"
        );
    }
    alone
}

fn smollm2_case_ids() -> Vec<(Vec<u32>, serde_json::Value)> {
    golden_json("smollm2_cases.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (ids(&c["input_ids"]), c["results"].clone()))
        .collect()
}

test_kernels!(smollm2_adapter_on_gguf_f32_matches_peft);

fn smollm2_adapter_on_gguf_f32_matches_peft(k: KernelChoice) {
    let lm = smollm2_on(WeightDtype::F32, k);
    let a = load(lm, &golden().join("smollm2-adapters/rand-r8-qv"));
    assert_eq!((a.info.rank, a.info.modules), (8, 60));
    for (prompt, results) in smollm2_case_ids() {
        let r = &results["rand-r8-qv"];
        let got = last_logits(lm, &prompt, Some(&a.weights));
        for pair in r["top"].as_array().unwrap() {
            let d =
                (got[pair[0].as_u64().unwrap() as usize] - pair[1].as_f64().unwrap() as f32).abs();
            assert!(d <= 2e-3, "logit {} off by {d}", pair[0]);
        }
        let want = ids(&r["greedy_ids"]);
        let params = GenerationParams {
            max_tokens: want.len(),
            ignore_eos: true,
            ..Default::default()
        };
        let g = loraplex_runtime::generate(
            &lm.model,
            &lm.tokenizer,
            vec![GenRequest::new(prompt.clone(), params).with_adapter(Some(&a.weights))],
        )
        .unwrap();
        let n = r["greedy_steps"]
            .as_array()
            .unwrap()
            .iter()
            .position(|s| s["margin"].as_f64().unwrap() < 0.01)
            .unwrap_or(want.len());
        assert_eq!(g[0].ids[..n], want[..n]);
        assert_ne!(
            ids(&results["base"]["greedy_ids"]),
            want,
            "the adapter changes the continuation"
        );
    }
}

test_kernels!(smollm2_adapter_on_quantized_path_agrees_when_teacher_forced);

fn smollm2_adapter_on_quantized_path_agrees_when_teacher_forced(k: KernelChoice) {
    let lm = smollm2_on(WeightDtype::Auto, k);
    let a = load(lm, &golden().join("smollm2-adapters/rand-r8-qv"));
    let (mut agree, mut total, mut differs) = (0, 0, 0);
    for (prompt, results) in smollm2_case_ids() {
        let r = &results["rand-r8-qv"];
        let cont = ids(&r["greedy_ids"]);
        let seq: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let scored =
            loraplex_runtime::score(&lm.model, Some(&a.weights), &seq, prompt.len(), 0).unwrap();
        let base = loraplex_runtime::score(&lm.model, None, &seq, prompt.len(), 0).unwrap();
        for (k, step) in r["greedy_steps"].as_array().unwrap().iter().enumerate() {
            if step["margin"].as_f64().unwrap() >= 0.5 {
                total += 1;
                agree += (scored[k].argmax == step["id"].as_u64().unwrap() as u32) as usize;
            }
            differs += (scored[k].logprob.logprob != base[k].logprob.logprob) as usize;
        }
    }
    eprintln!("adapter on the quantized path ({k:?}): teacher-forced agreement {agree}/{total}");
    assert!(
        total >= 50 && agree as f64 >= 0.9 * total as f64,
        "{agree}/{total}"
    );
    assert!(differs > 0);
}

/// Each case of the bad-adapter corpus gets its own typed error naming the field or tensor.
fn expected(label: &str, e: &AdapterError) -> bool {
    let key_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    match label {
        "shape" => {
            matches!(e, AdapterError::ShapeMismatch { tensor, .. } if tensor.contains("q_proj.lora_B"))
        }
        "rank" => matches!(
            e,
            AdapterError::RankTooLarge {
                rank: 33,
                max: 32,
                ..
            }
        ),
        "nan" => {
            matches!(e, AdapterError::BadTensor { tensor, reason } if tensor == key_a && reason.contains("NaN"))
        }
        "inf" => matches!(e, AdapterError::BadTensor { .. }),
        "dora" => matches!(e, AdapterError::Unsupported(m) if m.contains("DoRA")),
        "modules_to_save" => {
            matches!(e, AdapterError::Unsupported(m) if m.contains("modules_to_save"))
        }
        "bias" => matches!(e, AdapterError::Unsupported(m) if m.contains("bias")),
        "unknown target" => matches!(e, AdapterError::UnknownTarget(t) if t == "fc_in"),
        "no match" => matches!(e, AdapterError::NoMatchingModule),
        "architecture" => matches!(e, AdapterError::ArchitectureMismatch { .. }),
        "missing B" => matches!(e, AdapterError::BadTensor { .. }),
        "extra module" => matches!(e, AdapterError::UnknownTarget(t) if t.contains("layers.7")),
        "bad json" => matches!(e, AdapterError::InvalidConfig(_)),
        "truncated" | "empty weights" => {
            matches!(e, AdapterError::Corrupt { path, .. } if path.ends_with("adapter_model.safetensors"))
        }
        other => panic!("no expectation for {other}"),
    }
}

#[test]
fn bad_adapters_are_refused_with_typed_errors() {
    for label in BAD_CASES {
        let dir = tempfile::tempdir().unwrap();
        write_bad_tiny_adapter(label, dir.path());
        match load_dir(
            dir.path(),
            &BaseModel::of(tiny()),
            &AdapterLimits { max_rank: 32 },
        ) {
            Ok(_) => panic!("{label}: accepted"),
            Err(e) => assert!(expected(label, &e), "{label}: wrong error {e:?}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    // Missing folder.
    let e = load_dir(
        &dir.path().join("absent"),
        &BaseModel::of(tiny()),
        &AdapterLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(e, AdapterError::NotFound(_)));
}

/// A store-recorded version is re-checked by its fast checksum on load; changed bytes of the
/// same size are refused, whether the record holds a tensor-wise checksum, an older whole-file
/// one, or none (then the sha256 decides); and bytes that no longer even parse are corruption,
/// not a bad adapter.
#[test]
fn recorded_versions_refuse_changed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    random_tiny_adapter(4, &["q_proj", "v_proj"], 5).write(dir.path());
    let base = BaseModel::of(tiny());
    let limits = AdapterLimits::default();
    let first = load_dir(dir.path(), &base, &limits).unwrap().info;
    assert!(first.checksum.starts_with("t1:"), "{}", first.checksum);
    assert_eq!(first.sha256.as_ref().map(String::len), Some(64));
    // A folder given by flag skips the sha256; everything else is the same.
    let quick = load_dir_checked(dir.path(), &base, &limits, Identity::Checksum).unwrap();
    assert_eq!(
        quick.info,
        AdapterInfo {
            sha256: None,
            ..first.clone()
        }
    );
    let config = std::fs::read(dir.path().join("adapter_config.json")).unwrap();
    let weights = dir.path().join("adapter_model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    let whole_file = {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(config.len() as u64).to_le_bytes());
        h.update(&config);
        h.update(&original);
        format!("{:032x}", h.digest128())
    };
    let records: Vec<Recorded> = [Some(first.checksum.clone()), Some(whole_file), None]
        .into_iter()
        .map(|checksum| Recorded {
            sha256: first.sha256.clone().unwrap(),
            checksum,
            version: None,
        })
        .collect();
    for r in &records {
        let again = load_dir_checked(dir.path(), &base, &limits, Identity::Recorded(r)).unwrap();
        assert_eq!(again.info, first);
    }
    let mut bytes = original.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // a low mantissa bit: still a finite, valid tensor
    std::fs::write(&weights, &bytes).unwrap();
    assert!(load_dir(dir.path(), &base, &limits).is_ok());
    // Unrecorded, the changed bytes are another version: a different cache key.
    let changed = load_dir_checked(dir.path(), &base, &limits, Identity::Checksum).unwrap();
    assert_ne!(changed.info.checksum, first.checksum);
    for r in &records {
        let e = load_dir_checked(dir.path(), &base, &limits, Identity::Recorded(r)).unwrap_err();
        assert!(matches!(e, AdapterError::Corrupt { .. }), "{e:?}");
    }
    let mut bytes = original;
    bytes[8] = b'['; // the header no longer parses
    std::fs::write(&weights, &bytes).unwrap();
    for r in &records {
        let e = load_dir_checked(dir.path(), &base, &limits, Identity::Recorded(r)).unwrap_err();
        assert!(matches!(e, AdapterError::Corrupt { .. }), "{e:?}");
    }
}
