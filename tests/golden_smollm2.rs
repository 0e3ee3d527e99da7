//! SmolLM2-135M-Instruct (the real Q4_1 GGUF) against transformers' dequantized-f32 reference.

use loraplex_models::{KernelChoice, KvCache, LogitsFor, SeqInput, WeightDtype};
use loraplex_runtime::{GenRequest, GenerationParams};
use serde_json::Value;

use crate::util::{golden_json, ids, smollm2_on, test_kernels};

fn cases() -> Vec<Value> {
    golden_json("smollm2_cases.json")["cases"]
        .as_array()
        .unwrap()
        .clone()
}

/// Reference greedy steps before the first one whose top1-top2 margin is below `margin`.
fn reliable_prefix(result: &Value, margin: f64) -> usize {
    result["greedy_steps"]
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s["margin"].as_f64().unwrap() < margin)
        .unwrap_or(usize::MAX)
}

test_kernels!(f32_path_matches_reference_logits_and_greedy_text);

fn f32_path_matches_reference_logits_and_greedy_text(k: KernelChoice) {
    let lm = smollm2_on(WeightDtype::F32, k);
    for case in cases() {
        let name = case["id"].as_str().unwrap();
        let prompt = ids(&case["input_ids"]);
        let base = &case["results"]["base"];
        let mut cache = lm.model.new_cache();
        let out = lm
            .model
            .forward(
                &[SeqInput::new(&prompt, LogitsFor::Last)],
                &mut [&mut cache],
            )
            .unwrap();
        let got: Vec<f32> = out[0]
            .as_ref()
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        for pair in base["top"].as_array().unwrap() {
            let (id, logit) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            let d = (got[id] - logit).abs();
            assert!(d <= 2e-3, "{name}: logit of {id} off by {d}");
        }
        let want = ids(&base["greedy_ids"]);
        let params = GenerationParams {
            max_tokens: want.len(),
            ignore_eos: true,
            ..Default::default()
        };
        let g = loraplex_runtime::generate(
            &lm.model,
            &lm.tokenizer,
            vec![GenRequest::new(prompt, params)],
        )
        .unwrap()
        .remove(0);
        let n = reliable_prefix(base, 0.01).min(want.len());
        assert_eq!(
            g.ids[..n],
            want[..n],
            "{name}: greedy ids before the first near-tie step {n}"
        );
    }
}

test_kernels!(quantized_path_agrees_with_reference_when_teacher_forced);

fn quantized_path_agrees_with_reference_when_teacher_forced(k: KernelChoice) {
    let lm = smollm2_on(WeightDtype::Auto, k);
    let (mut agree, mut total) = (0, 0);
    let mut max_diff = 0f32;
    for case in cases() {
        let prompt = ids(&case["input_ids"]);
        let base = &case["results"]["base"];
        let cont = ids(&base["greedy_ids"]);
        let seq: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let scored = loraplex_runtime::score(&lm.model, None, &seq, prompt.len(), 0).unwrap();
        assert_eq!(scored.len(), cont.len());
        for (k, step) in base["greedy_steps"].as_array().unwrap().iter().enumerate() {
            if step["margin"].as_f64().unwrap() >= 0.5 {
                total += 1;
                agree += (scored[k].argmax == step["id"].as_u64().unwrap() as u32) as usize;
            }
        }
        // Logit error at the last prompt position, over the reference top-20.
        let mut cache = lm.model.new_cache();
        let out = lm
            .model
            .forward(
                &[SeqInput::new(&prompt, LogitsFor::Last)],
                &mut [&mut cache],
            )
            .unwrap();
        let got: Vec<f32> = out[0]
            .as_ref()
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        for pair in base["top"].as_array().unwrap() {
            let d =
                (got[pair[0].as_u64().unwrap() as usize] - pair[1].as_f64().unwrap() as f32).abs();
            max_diff = max_diff.max(d);
        }
    }
    let rate = agree as f64 / total as f64;
    eprintln!("quantized path ({k:?}): teacher-forced argmax agreement {agree}/{total} = {rate:.3}; max |Δlogit| on reference top-20 {max_diff:.3}");
    assert!(total >= 50, "too few confident steps: {total}");
    assert!(rate >= 0.9, "agreement {rate}");
    assert!(
        max_diff <= DECODE_LOGIT_BOUND,
        "prefill |Δlogit| {max_diff}"
    );
}

test_kernels!(quantized_decode_of_16_mixed_rows_stays_near_the_reference: portable, detected);

/// The default (quantized) path in decode, not one prefill: 16 rows over the 5 cases, base and
/// adapter mixed, prefilled together, then the reference's greedy tokens fed back as one-token
/// decode steps of the whole batch. At every step the logits of the reference's top two
/// tokens must stay within the bound below, and the argmax must agree on at least 98% of the
/// steps whose reference margin is at least 0.5.
fn quantized_decode_of_16_mixed_rows_stays_near_the_reference(k: KernelChoice) {
    let lm = smollm2_on(WeightDtype::Auto, k);
    let dir = crate::util::golden().join("smollm2-adapters/rand-r8-qv");
    let base = loraplex_adapters::BaseModel::of(lm);
    let adapter = loraplex_adapters::load_dir(&dir, &base, &Default::default()).unwrap();
    let cases = cases();
    let rows: Vec<(&Value, &str)> = (0..16)
        .map(|r| {
            let variant = ["base", "rand-r8-qv"][(r + r / cases.len()) % 2];
            (&cases[r % cases.len()], variant)
        })
        .collect();
    let mut caches: Vec<KvCache> = rows.iter().map(|_| lm.model.new_cache()).collect();
    let prompts: Vec<Vec<u32>> = rows.iter().map(|(c, _)| ids(&c["input_ids"])).collect();
    let fed: Vec<Vec<u32>> = rows
        .iter()
        .map(|(c, v)| ids(&c["results"][*v]["greedy_ids"]))
        .collect();
    let steps = fed[0].len();
    let (mut worst, mut agree, mut confident) = (0f32, 0, 0);
    for s in 0..steps {
        let inputs: Vec<SeqInput> = rows
            .iter()
            .enumerate()
            .map(|(r, (_, v))| {
                let tokens = if s == 0 {
                    &prompts[r][..]
                } else {
                    &fed[r][s - 1..s]
                };
                let a = (*v != "base").then_some(&adapter.weights);
                SeqInput::new(tokens, LogitsFor::Last).with_adapter(a)
            })
            .collect();
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let out = lm.model.forward(&inputs, &mut refs).unwrap();
        for (r, ((c, v), o)) in rows.iter().zip(out).enumerate() {
            let got: Vec<f32> = o.unwrap().squeeze(0).unwrap().to_vec1().unwrap();
            let step = &c["results"][*v]["greedy_steps"][s];
            let (id, logit) = (
                step["id"].as_u64().unwrap() as usize,
                step["logit"].as_f64().unwrap(),
            );
            let margin = step["margin"].as_f64().unwrap();
            let runner = step["runner_up"].as_u64().unwrap() as usize;
            let d = (got[id] as f64 - logit)
                .abs()
                .max((got[runner] as f64 - (logit - margin)).abs()) as f32;
            assert!(
                d <= DECODE_LOGIT_BOUND,
                "row {r} ({v}) step {s}: |Δlogit| {d}"
            );
            worst = worst.max(d);
            if margin >= 0.5 {
                confident += 1;
                agree += (loraplex_runtime::argmax(&got) as usize == id) as usize;
            }
        }
    }
    let rate = agree as f64 / confident as f64;
    eprintln!(
        "quantized decode ({k:?}): max |Δlogit| {worst:.3}, argmax {agree}/{confident} = {rate:.3}"
    );
    assert!(confident >= 300 && rate >= 0.98, "{agree}/{confident}");
}

/// The largest logit error allowed on the quantized path, at the reference's top tokens:
/// Q4_1's own weights (held in 4 bits as the file has them) and 8-bit activations on every
/// projection, against transformers' f32 run of the dequantized file. Measured when it was
/// set: 0.70 at worst over the 16 rows × 32 decode steps and 0.47 over the prefills' top-20
/// (the same on every CPU tier, whose results are bit-identical; 0.64 on candle's kernels;
/// 0.78 and 0.85 with the weights re-quantized to 8 bits, `--dtype q8_0`), so the bound
/// leaves room for other prompts' outliers.
const DECODE_LOGIT_BOUND: f32 = 1.25;
