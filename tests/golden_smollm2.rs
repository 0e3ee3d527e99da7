//! SmolLM2-135M-Instruct (the real Q4_1 GGUF) against transformers' dequantized-f32 reference.

use loraplex_models::{LogitsFor, SeqInput, WeightDtype};
use loraplex_runtime::{GenRequest, GenerationParams};
use serde_json::Value;

use crate::util::{golden_json, ids, smollm2};

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

#[test]
fn f32_path_matches_reference_logits_and_greedy_text() {
    let lm = smollm2(WeightDtype::F32);
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

#[test]
fn quantized_path_agrees_with_reference_when_teacher_forced() {
    let lm = smollm2(WeightDtype::Auto);
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
    eprintln!("quantized path: teacher-forced argmax agreement {agree}/{total} = {rate:.3}; max |Δlogit| on reference top-20 {max_diff:.3}");
    assert!(total >= 50, "too few confident steps: {total}");
    assert!(rate >= 0.9, "agreement {rate}");
}
