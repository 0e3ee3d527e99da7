//! Generations cut inside a multi-byte character (by `max_tokens` or a stop token): the text
//! drops the incomplete bytes, never writing a U+FFFD the model did not produce, while logprobs'
//! `bytes` still carry every token's raw bytes. On SmolLM2, whose byte-level vocabulary has a
//! token for every single byte.

use std::sync::OnceLock;

use axum::http::StatusCode;
use loraplex_adapters::AdapterRegistry;
use loraplex_gateway::{AppState, GatewayConfig};
use loraplex_models::{Tokenizer, WeightDtype};
use loraplex_runtime::{EngineConfig, FinishReason, GenerationParams, SequenceState};
use serde_json::{json, Value};

use crate::util::{post_text, smollm2, smollm2_arc, sse_data};

/// The id of the token that is exactly this one byte.
fn byte_token(tok: &Tokenizer, b: u8) -> u32 {
    (0..tok.vocab_size() as u32)
        .find(|&id| tok.token_bytes(id) == [b] && !tok.is_special(id))
        .unwrap_or_else(|| panic!("no token for byte {b:#x}"))
}

/// Feeds `ids` as the model's choices (one-hot logits); returns the text and the finish.
fn run(ids: &[u32], params: GenerationParams) -> (String, Option<FinishReason>) {
    let m = smollm2(WeightDtype::Auto);
    let vocab = m.model.config().vocab_size;
    let mut st = SequenceState::new(&[1], params, &m.tokenizer, vocab).unwrap();
    let mut text = String::new();
    let mut finish = None;
    for &id in ids {
        let mut l = vec![0.0f32; vocab];
        l[id as usize] = 10.0;
        let step = st.accept_logits(&l, &m.tokenizer).unwrap();
        text.push_str(&step.text);
        finish = step.finish;
        if finish.is_some() {
            break;
        }
    }
    (text, finish)
}

#[test]
fn a_cut_character_is_dropped_not_replaced() {
    let tok = &smollm2(WeightDtype::Auto).tokenizer;
    let euro: Vec<u32> = "€".bytes().map(|b| byte_token(tok, b)).collect();
    let x = byte_token(tok, b'x');
    let params = |max_tokens| GenerationParams {
        max_tokens,
        ..Default::default()
    };
    // Two of the three bytes, then the budget ends.
    assert_eq!(
        run(&[x, euro[0], euro[1]], params(3)),
        ("x".into(), Some(FinishReason::Length))
    );
    // All three: the character is whole.
    assert_eq!(
        run(&euro, params(3)),
        ("€".into(), Some(FinishReason::Length))
    );
    // A stop token after a partial character.
    let stop = byte_token(tok, b'!');
    let p = GenerationParams {
        max_tokens: 10,
        stop_token_ids: vec![stop],
        ..Default::default()
    };
    assert_eq!(
        run(&[x, euro[0], stop], p),
        ("x".into(), Some(FinishReason::Stop))
    );
    // A byte that can never start a character is the model's own output, and stays visible.
    let bad = byte_token(tok, 0x80);
    assert_eq!(
        run(&[bad, x], params(2)),
        ("\u{FFFD}x".into(), Some(FinishReason::Length))
    );
}

fn state() -> AppState {
    static S: OnceLock<AppState> = OnceLock::new();
    S.get_or_init(|| {
        let lm = smollm2_arc(WeightDtype::Auto);
        let engine =
            loraplex_runtime::start(lm.clone(), AdapterRegistry::new(), EngineConfig::default())
                .unwrap();
        let cfg = GatewayConfig {
            served_model_name: "smol".into(),
            max_model_len: 2048,
            ..Default::default()
        };
        AppState::new(cfg, engine, lm, None)
    })
    .clone()
}

async fn post(body: Value) -> (StatusCode, String) {
    post_text(&state(), "/v1/chat/completions", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_replies_cut_inside_a_character_carry_no_replacement_character() {
    let tok = &state().model.tokenizer;
    let lead = byte_token(tok, "€".as_bytes()[0]);
    // The bias makes the model start a three-byte character it has no room to finish.
    let body = |stream: bool| {
        json!({
            "model": "smol",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": true,
            "logit_bias": {lead.to_string(): 100},
            "stream": stream,
        })
    };
    let (s, text) = post(body(false)).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "", "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let lp = &v["choices"][0]["logprobs"]["content"][0];
    assert_eq!(lp["bytes"], json!([0xE2]), "{lp}");
    let (s, sse) = post(body(true)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(sse.contains("[DONE]"), "{sse}");
    let chunks: Vec<Value> = sse_data(&sse)
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.contains('\u{FFFD}'), "{sse}");
    let bytes: Vec<Value> = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["logprobs"]["content"][0]["bytes"]
                .as_array()
                .cloned()
        })
        .flatten()
        .collect();
    assert_eq!(bytes, vec![json!(0xE2)], "{sse}");
}
