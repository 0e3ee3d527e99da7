//! Gemma 3 270M (GGUF Q4_K_M, `scripts/fetch-gemma3.sh`), the second real model: its
//! SentencePiece-style tokenizer against transformers' reading of the same file, and the engine
//! against llama.cpp on the same GGUF (`tests/golden/gemma3-270m/`, see its README): greedy
//! continuations, and teacher-forced choices wherever llama.cpp's margin is clear.

use std::path::PathBuf;
use std::sync::OnceLock;

use loraplex_models::{
    ChatMessage, KernelChoice, LoadOptions, LoadedModel, LogitsFor, LoraPrecision, SeqInput,
    WeightDtype,
};
use loraplex_runtime::argmax;

use crate::util::{golden_json, ids, load_on, repo_root, staggered};

fn gemma_path() -> PathBuf {
    repo_root().join("weights/gemma-3-270m-q4_k_m.gguf")
}

fn gemma() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let p = gemma_path();
        assert!(
            p.exists(),
            "{} is missing: run scripts/fetch-gemma3.sh",
            p.display()
        );
        load_on(p.to_str().unwrap(), WeightDtype::Auto, KernelChoice::Auto)
    })
}

#[test]
fn tokenizer_matches_transformers_reading_of_the_gguf() {
    let tok = &gemma().tokenizer;
    let cases = golden_json("gemma3-270m/tokenizer_cases.json");
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for c in cases {
        let (name, text) = (c["name"].as_str().unwrap(), c["text"].as_str().unwrap());
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&c["hf_ids"]),
            "{name}"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&c["hf_ids_with_bos"]),
            "{name} with BOS"
        );
        let decoded = tok.decode(&ids(&c["hf_ids"]), false).unwrap();
        assert_eq!(decoded, c["hf_decode"].as_str().unwrap(), "{name} decode");
    }
    assert_eq!(tok.bos_id(), Some(2));
    assert!(tok.stop_ids().contains(&1));
}

#[test]
fn k_quants_are_held_packed_not_as_candle_blocks() {
    let m = &gemma().model;
    // The packed form is what makes the model hold adapters in 8 bits.
    assert_eq!(m.lora_precision(), LoraPrecision::Q8);
    let cfg = m.config();
    assert_eq!(
        (cfg.num_layers, cfg.head_dim, cfg.num_kv_heads),
        (18, 256, 1)
    );
    assert_eq!((1..=6).filter(|&l| cfg.window(l - 1).is_none()).count(), 1);
    // The tied 262144-row table is held once, packed, for lookups and the output projection;
    // Q4_K stays 4-bit and Q5_0/Q6_K take 8 bits: a little over the file's own bytes.
    let file = std::fs::metadata(repo_root().join("weights/gemma-3-270m-q4_k_m.gguf"))
        .unwrap()
        .len() as f64;
    let held = m.weight_bytes() as f64;
    eprintln!("weights held: {held} bytes, file {file} bytes");
    assert!(held < 1.25 * file, "{held} bytes held for a file of {file}");
}

/// Greedy continuations (all prompts in one staggered batch) equal llama.cpp's first 16
/// tokens, or part from them only at a step where llama.cpp itself nearly ties (margin below
/// 0.25: two quantized implementations may order such a pair either way); and at every one of its 32
/// steps whose margin is at least 0.5, the engine fed llama.cpp's tokens picks llama.cpp's
/// token at least 95% of the time.
#[test]
fn continuations_match_llama_cpp_on_the_same_gguf() {
    let lm = gemma();
    let cases = golden_json("gemma3-270m/llamacpp_cases.json");
    let cases = cases["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    let n = prompts.len();
    let ours = staggered(
        lm,
        &prompts,
        &vec![None; n],
        &(0..n).collect::<Vec<_>>(),
        16,
    );
    let (mut agree, mut clear, mut whole) = (0, 0, 0);
    for (c, steps) in cases.iter().zip(&ours) {
        let name = c["name"].as_str().unwrap();
        let theirs = ids(&c["generated_ids"]);
        let margins: Vec<f64> = c["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["margin"].as_f64().unwrap())
            .collect();
        let greedy: Vec<u32> = steps.iter().map(|l| argmax(l)).collect();
        let same = greedy
            .iter()
            .zip(&theirs)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!("{name}: {same} of 16 greedy tokens equal");
        assert!(
            same >= 16 || margins[same] < 0.25,
            "{name}: parts from llama.cpp at step {same}, where its margin is {:.3}",
            margins[same]
        );
        whole += usize::from(same >= 16);
        // Teacher-forced: the prompt and llama.cpp's continuation in one pass.
        let prompt = ids(&c["prompt_ids"]);
        let mut seq = prompt.clone();
        seq.extend_from_slice(&theirs);
        let mut cache = lm.model.new_cache();
        let out = lm
            .model
            .forward(&[SeqInput::new(&seq, LogitsFor::All)], &mut [&mut cache])
            .unwrap();
        let logits = out[0].as_ref().unwrap();
        for (k, step) in c["steps"].as_array().unwrap().iter().enumerate() {
            if step["margin"].as_f64().unwrap() < 0.5 {
                continue;
            }
            let row: Vec<f32> = logits.get(prompt.len() - 1 + k).unwrap().to_vec1().unwrap();
            clear += 1;
            agree += usize::from(argmax(&row) == step["id"].as_u64().unwrap() as u32);
        }
    }
    eprintln!("{whole} of {n} prompts: all 16 greedy tokens equal");
    assert!(clear >= 100, "only {clear} clear steps");
    let rate = agree as f64 / clear as f64;
    eprintln!("teacher-forced agreement with llama.cpp: {agree}/{clear}");
    assert!(rate >= 0.95, "teacher-forced agreement {agree}/{clear}");
}

/// The file (the pretrained model's) carries no chat template: chat is refused by name until
/// one is given at load (`--chat-template`), and then the conversations render to exactly the
/// prompt ids llama.cpp was given for its chat cases.
#[test]
fn a_chat_template_given_at_load_renders_the_chat_prompts() {
    let msg = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: Some(content.into()),
        name: None,
        tool_calls: Vec::new(),
        tool_call_id: None,
    };
    let poem = vec![msg("user", "Write a long poem about the sea.")];
    let err = gemma().render_chat(&poem, None, true).unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
    let src =
        std::fs::read_to_string(repo_root().join("tests/golden/gemma3-270m/turns.jinja")).unwrap();
    let opts = LoadOptions {
        chat_template: Some(src),
        ..Default::default()
    };
    let lm = loraplex_models::load(gemma_path().to_str().unwrap(), &opts).unwrap();
    let conversations = [
        ("chat_poem", poem),
        (
            "chat_explain",
            vec![msg("user", "Explain in detail what a neural network is.")],
        ),
        (
            "chat_multi_turn",
            vec![
                msg("user", "Hi!"),
                msg("assistant", "Hello! How can I help you today?"),
                msg("user", "List five fruits and describe each one."),
            ],
        ),
    ];
    let cases = golden_json("gemma3-270m/llamacpp_cases.json");
    for (name, conv) in conversations {
        let case = cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let text = lm.render_chat(&conv, None, true).unwrap();
        assert_eq!(
            text,
            format!("<bos>{}", case["text"].as_str().unwrap()),
            "{name}"
        );
        let got = lm.tokenizer.encode(&text, false).unwrap();
        assert_eq!(got, ids(&case["prompt_ids"]), "{name}");
    }
}
