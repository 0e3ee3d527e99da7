//! `loraplex generate` end to end, as a user runs it.

use std::process::Command;

use crate::util::{golden, golden_json, ids, smollm2_path};

fn generate(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loraplex"))
        .arg("generate")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn generate_json_reports_ids_text_and_timings() {
    let case = &golden_json("tiny_cases.json")["cases"][2];
    let dir = golden().join("tiny-llama");
    let v = generate(&[
        dir.to_str().unwrap(),
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--max-tokens",
        "16",
        "--ignore-eos",
        "--dtype",
        "f32",
        "--json",
    ]);
    assert_eq!(ids(&v["prompt_ids"]), ids(&case["input_ids"]));
    assert_eq!(ids(&v["ids"]), ids(&case["results"]["base"]["greedy_ids"]));
    assert_eq!(v["finish_reason"], "length");
    assert!(v["timings"]["decode_tok_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn generate_chat_with_the_default_model_stops_at_eos() {
    let v = generate(&[
        smollm2_path().to_str().unwrap(),
        "--prompt",
        "What is 2+2? Answer with one number.",
        "--chat",
        "--max-tokens",
        "24",
        "--json",
    ]);
    let text = v["text"].as_str().unwrap();
    assert!(text.contains('4'), "{text:?}");
    assert!(!text.contains("<|im_end|>"));
    assert_eq!(v["finish_reason"], "stop");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_loraplex"))
        .args(["generate", "/nonexistent.gguf", "--prompt", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = Command::new(env!("CARGO_BIN_EXE_loraplex"))
        .args(["generate", "x", "--prompt", "x", "--dtype", "int3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("int3"));
}

#[test]
fn generate_with_an_adapter_matches_peft() {
    let case = &golden_json("tiny_cases.json")["cases"][4];
    let dir = golden().join("tiny-llama");
    let adapters = golden().join("tiny-adapters");
    let v = generate(&[
        dir.to_str().unwrap(),
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--max-tokens",
        "16",
        "--ignore-eos",
        "--adapter",
        "b-r16-all",
        "--adapter-dir",
        adapters.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        ids(&v["ids"]),
        ids(&case["results"]["b-r16-all"]["greedy_ids"])
    );
    assert_eq!(v["adapter"]["rank"], 16);
}
