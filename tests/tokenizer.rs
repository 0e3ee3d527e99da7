//! The tokenizer built from GGUF metadata against transformers' (tokenizer_cases.json).

use loraplex_models::{ChatMessage, WeightDtype};

use crate::util::{golden_json, ids, smollm2};

#[test]
fn gguf_tokenizer_matches_reference_ids_and_decoding() {
    let lm = smollm2(WeightDtype::Auto);
    let cases = golden_json("tokenizer_cases.json");
    let mut checked = 0;
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = lm.tokenizer.encode(text, false).unwrap();
        let want = ids(&case["ids"]);
        let alt = case.get("ids_if_digits_split_first").map(ids);
        assert!(
            got == want || Some(&got) == alt.as_ref(),
            "encode({text:?}) = {got:?}, want {want:?} (or {alt:?})"
        );
        assert_eq!(
            lm.tokenizer.decode(&want, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
        assert_eq!(
            lm.tokenizer.decode(&want, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "decode skip-special {text:?}"
        );
        checked += 1;
    }
    assert!(checked >= 30);
    for case in cases["decode_only_cases"].as_array().unwrap() {
        let got = lm.tokenizer.decode(&ids(&case["ids"]), false).unwrap();
        assert_eq!(got, case["decoded"].as_str().unwrap());
    }
}

#[test]
fn chat_template_from_gguf_renders_like_transformers() {
    let lm = smollm2(WeightDtype::Auto);
    let cases = golden_json("tokenizer_cases.json");
    let chats = cases["chat_cases"].as_array().unwrap();
    assert_eq!(chats.len(), 4);
    for case in chats {
        let msgs: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let text = lm.render_chat(&msgs, None, agp).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{}", case["name"]);
        assert_eq!(
            lm.tokenizer.encode(&text, false).unwrap(),
            ids(&case["ids"]),
            "{}",
            case["name"]
        );
    }
}

#[test]
fn stop_set_and_special_tokens_come_from_metadata() {
    let t = &smollm2(WeightDtype::Auto).tokenizer;
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.stop_ids(), &[2]);
    // Special-token text in a prompt is one special token.
    assert_eq!(t.encode("<|im_start|>", true).unwrap(), vec![1]);
}

#[test]
fn incremental_decoding_equals_full_decoding() {
    let t = &smollm2(WeightDtype::Auto).tokenizer;
    let text = "Crème brûlée 🍮 costs 12€ — naïve café ✓";
    let ids = t.encode(text, false).unwrap();
    let mut dec = t.incremental(false);
    let mut out = String::new();
    for &id in &ids {
        if let Some(s) = dec.step(t, id).unwrap() {
            assert!(!s.contains('\u{FFFD}'), "a partial character leaked: {s:?}");
            out.push_str(&s);
        }
    }
    out.push_str(&dec.flush(t).unwrap());
    assert_eq!(out, text);
}
