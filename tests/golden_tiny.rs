//! The tiny random Llama (HF safetensors) against transformers' exact f32 logits, alone and as
//! one batch of sequences at different positions, on every kernel set (`test_kernels!`).

use loraplex_models::{KernelChoice, LogitsFor, SeqInput};
use loraplex_runtime::{argmax, GenRequest, GenerationParams};

use crate::util::{
    batched_vs_alone, golden_json, ids, last_logits, max_abs_diff, read_npy_f32, staggered,
    test_kernels, tiny_on,
};

/// How far a row's logits may move with what shares its batch: the CPU wing pads the dense
/// products so that a lone row sums in the batch's order; candle's generic path does not (a
/// lone row goes to a GEMV kernel summing in another order), so there the rows agree only to
/// f32 rounding of the logits' size.
pub fn batch_tolerance(k: KernelChoice) -> f32 {
    match k {
        KernelChoice::Candle => 1e-4,
        _ => 1e-5,
    }
}

fn logsumexp(v: &[f32]) -> f64 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

test_kernels!(last_position_logits_match_transformers);

fn last_position_logits_match_transformers(k: KernelChoice) {
    let lm = tiny_on(k);
    let cases = golden_json("tiny_cases.json");
    let (shape, all) = read_npy_f32("tiny_last_logits.npy");
    let vocab = shape[2];
    for (i, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["input_ids"]);
        let got = last_logits(lm, &prompt, None);
        let want = &all[i * vocab..(i + 1) * vocab]; // variant 0 = base
        let diff = max_abs_diff(&got, want);
        assert!(diff <= 1e-4, "case {i}: max |Δlogit| {diff}");
        let base = &case["results"]["base"];
        for pair in base["top"].as_array().unwrap() {
            let (id, logit) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            assert!((got[id] - logit).abs() <= 1e-4, "case {i} top id {id}");
        }
        let lse = base["logsumexp"].as_f64().unwrap();
        assert!((logsumexp(&got) - lse).abs() <= 1e-4, "case {i} logsumexp");
    }
}

test_kernels!(greedy_continuations_match_transformers);

fn greedy_continuations_match_transformers(k: KernelChoice) {
    let lm = tiny_on(k);
    let cases = golden_json("tiny_cases.json");
    let reqs: Vec<_> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let params = GenerationParams {
                max_tokens: 16,
                ignore_eos: true,
                ..Default::default()
            };
            GenRequest::new(ids(&c["input_ids"]), params)
        })
        .collect();
    let gens = loraplex_runtime::generate(&lm.model, &lm.tokenizer, reqs).unwrap();
    for (case, g) in cases["cases"].as_array().unwrap().iter().zip(gens) {
        assert_eq!(
            g.ids,
            ids(&case["results"]["base"]["greedy_ids"]),
            "prompt {}",
            case["index"]
        );
    }
}

test_kernels!(one_mixed_batch_equals_each_sequence_alone);

fn one_mixed_batch_equals_each_sequence_alone(k: KernelChoice) {
    let lm = tiny_on(k);
    let cases = golden_json("tiny_cases.json");
    let prompts: Vec<Vec<u32>> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ids(&c["input_ids"]))
        .collect();
    let n = prompts.len();
    // Joins at steps 0,1,2,... so every forward mixes a prefill with decodes at other positions.
    let batched = staggered(
        lm,
        &prompts,
        &vec![None; n],
        &(0..n).collect::<Vec<_>>(),
        16,
    );
    for i in 0..n {
        let worst = batched_vs_alone(lm, &prompts, &vec![None; n], &batched, i);
        assert!(
            worst <= batch_tolerance(k),
            "prompt {i}: batched vs alone max |Δlogit| {worst}"
        );
        let b: Vec<u32> = batched[i].iter().map(|l| argmax(l)).collect();
        let want = ids(&cases["cases"][i]["results"]["base"]["greedy_ids"]);
        assert_eq!(b, want, "prompt {i} greedy ids in the batch");
    }
}

test_kernels!(chunked_prefill_equals_whole_prefill);

fn chunked_prefill_equals_whole_prefill(k: KernelChoice) {
    let lm = tiny_on(k);
    let cases = golden_json("tiny_cases.json");
    let prompt = ids(&cases["cases"][5]["input_ids"]); // the long one (251 tokens)
    let whole = last_logits(lm, &prompt, None);
    let mut cache = lm.model.new_cache();
    let mut last = None;
    for chunk in prompt.chunks(37) {
        let out = lm
            .model
            .forward(&[SeqInput::new(chunk, LogitsFor::Last)], &mut [&mut cache])
            .unwrap();
        last = out.into_iter().next().flatten();
    }
    let chunked: Vec<f32> = last.unwrap().squeeze(0).unwrap().to_vec1().unwrap();
    assert!(max_abs_diff(&whole, &chunked) <= 1e-5);
    assert_eq!(cache.len(), prompt.len());
}
