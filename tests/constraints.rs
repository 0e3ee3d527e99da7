//! Constrained decoding on the real SmolLM2 tokenizer: masks against a brute-force check of
//! every token's bytes, compile errors and the cache, and constrained rows mixed with free rows in
//! one engine batch.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use loraplex_adapters::AdapterRegistry;
use loraplex_models::{LoadedModel, WeightDtype};
use loraplex_runtime::{
    Constraint, EngineConfig, GenerationParams, GenerationRequest, GrammarSpec, Grammars,
    RuntimeError, Sampling, Temperature, TokenEvent, TokenStream,
};
use serde_json::json;

use crate::util::{smollm2, smollm2_arc};

fn grammars() -> &'static Grammars {
    static G: OnceLock<Grammars> = OnceLock::new();
    G.get_or_init(|| {
        let m = smollm2(WeightDtype::Auto);
        Grammars::new(&m.tokenizer, m.model.config().vocab_size).unwrap()
    })
}

/// The ids the constraint allows next, read off a row of zero logits.
fn allowed(c: &mut Constraint, vocab: usize, stop_ids: &[u32]) -> Vec<u32> {
    let mut l = vec![0.0f32; vocab];
    c.apply(&mut l, stop_ids).unwrap();
    (0..vocab as u32)
        .filter(|&i| l[i as usize].is_finite())
        .collect()
}

/// Checks the mask after each prefix in `states` against `viable(bytes) -> (prefix_ok,
/// complete)`: a text token is allowed only if the output with it stays a prefix of some match,
/// EOS only if the output so far is a whole match, no other special token ever. Where the next
/// bytes are free (`true` beside the state) every viable token is allowed; where they are forced,
/// llguidance allows only tokens of the forced text's own tokenization, so there the allowed set
/// is a non-empty part of the viable one.
fn check_states(
    spec: GrammarSpec,
    states: &[(&str, bool)],
    viable: impl Fn(&[u8]) -> (bool, bool),
) {
    let m = smollm2(WeightDtype::Auto);
    let tok = &m.tokenizer;
    let vocab = m.model.config().vocab_size;
    let stop = tok.stop_ids().to_vec();
    let g = grammars().compile(&spec).unwrap();
    for &(state, free) in states {
        let mut c = g.start();
        for id in tok.encode(state, false).unwrap() {
            c.commit(id, &stop).unwrap();
        }
        let got = allowed(&mut c, vocab, &stop);
        let prefix = state.as_bytes();
        let want: Vec<u32> = (0..vocab as u32)
            .filter(|&id| {
                if stop.contains(&id) {
                    return viable(prefix).1;
                }
                let b = tok.token_bytes(id);
                if tok.is_special(id) || b.is_empty() {
                    return false;
                }
                viable(&[prefix, b].concat()).0
            })
            .collect();
        let show = |ids: Vec<u32>| -> Vec<String> {
            ids.into_iter()
                .take(8)
                .map(|i| format!("{i}:{:?}", String::from_utf8_lossy(tok.token_bytes(i))))
                .collect()
        };
        let extra: Vec<u32> = got.iter().filter(|i| !want.contains(i)).copied().collect();
        let missing: Vec<u32> = want.iter().filter(|i| !got.contains(i)).copied().collect();
        assert!(!got.is_empty(), "{spec:?} after {state:?}: nothing allowed");
        assert!(
            extra.is_empty() && (missing.is_empty() || !free),
            "{spec:?} after {state:?}: allowed but not viable {:?}; viable but not allowed {:?}",
            show(extra),
            show(missing)
        );
    }
}

#[test]
fn choice_masks_match_a_brute_force_check() {
    let options = ["yes", "no", "not sure", "yes, definitely"];
    let spec = GrammarSpec::Choice(options.iter().map(|s| s.to_string()).collect());
    let states = [
        ("", true),
        ("n", true),
        ("no", true),
        ("not", false),
        ("yes", true),
        ("yes,", false),
    ];
    check_states(spec, &states, |b| {
        (
            options.iter().any(|o| o.as_bytes().starts_with(b)),
            options.iter().any(|o| o.as_bytes() == b),
        )
    });
}

#[test]
fn regex_masks_match_a_brute_force_check() {
    // [a-c]{2,5}-[0-9]{1,2}
    let viable = |b: &[u8]| {
        let dash = b.iter().position(|&x| x == b'-');
        let (head, tail) = match dash {
            Some(i) => (&b[..i], Some(&b[i + 1..])),
            None => (b, None),
        };
        let head_ok = head.len() <= 5 && head.iter().all(|x| (b'a'..=b'c').contains(x));
        match tail {
            None => (head_ok, false),
            Some(t) => {
                let ok =
                    head_ok && head.len() >= 2 && t.len() <= 2 && t.iter().all(u8::is_ascii_digit);
                (ok, ok && !t.is_empty())
            }
        }
    };
    let spec = GrammarSpec::Regex("[a-c]{2,5}-[0-9]{1,2}".into());
    let states = ["", "a", "abc", "abcab", "ab-", "ab-1", "ab-12"].map(|s| (s, true));
    check_states(spec, &states, viable);
}

#[test]
fn json_schema_masks_match_a_brute_force_check() {
    // {"n": <integer>} exactly, in the runtime's JSON style.
    let spec = GrammarSpec::JsonSchema(json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": false
    }));
    let head = br#"{"n": "#;
    let viable = |b: &[u8]| {
        if b.len() <= head.len() {
            return (head.starts_with(b), false);
        }
        if !b.starts_with(head) {
            return (false, false);
        }
        let rest = &b[head.len()..];
        let (num, close) = match rest.iter().position(|&x| x == b'}') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let digits = num.strip_prefix(b"-").unwrap_or(num);
        let num_prefix_ok =
            digits.iter().all(u8::is_ascii_digit) && !(digits.len() > 1 && digits[0] == b'0');
        match close {
            None => (num_prefix_ok, false),
            Some(after) => {
                let ok = num_prefix_ok && !digits.is_empty() && after.is_empty();
                (ok, ok)
            }
        }
    };
    let states = [
        ("", false),
        ("{", false),
        ("{\"n\": ", true),
        ("{\"n\": -", true),
        ("{\"n\": 0", false),
        ("{\"n\": 12", true),
        ("{\"n\": 12}", true),
    ];
    check_states(spec, &states, viable);
}

#[test]
fn bad_schemas_are_refused_naming_the_reason_and_good_ones_are_cached() {
    let g = grammars();
    let err = g
        .compile(&GrammarSpec::JsonSchema(
            json!({"type": "object", "if": {"type": "object"}}),
        ))
        .unwrap_err();
    let RuntimeError::Grammar(msg) = err else {
        panic!("{err:?}")
    };
    assert!(msg.contains("if"), "{msg}");
    assert!(g.compile(&GrammarSpec::Regex("(".into())).is_err());
    assert!(g
        .compile(&GrammarSpec::Lark("start: nothing_defined".into()))
        .is_err());
    assert!(g.compile(&GrammarSpec::Choice(vec![])).is_err());
    assert!(g.compile(&GrammarSpec::JsonSchema(json!(3))).is_err());
    let spec = GrammarSpec::Regex("[0-9]{3} cached".into());
    let hits = g.stats().cache_hits.load(Ordering::Relaxed);
    let a = g.compile(&spec).unwrap();
    let b = g.compile(&spec).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(g.stats().cache_hits.load(Ordering::Relaxed), hits + 1);
}

fn text_of(mut s: TokenStream) -> String {
    let mut out = String::new();
    loop {
        match s.blocking_next().expect("a final event") {
            TokenEvent::Token { text, .. } => out.push_str(&text),
            TokenEvent::PromptLogprobs(_) => {}
            TokenEvent::Finished { .. } => return out,
            TokenEvent::Failed(e) => panic!("{e}"),
        }
    }
}

fn chat_prompt(m: &LoadedModel, q: &str) -> Vec<u32> {
    let msgs = [loraplex_models::ChatMessage::new("user", q)];
    m.tokenizer
        .encode(&m.render_chat(&msgs, None, true).unwrap(), false)
        .unwrap()
}

#[test]
fn a_constrained_row_and_a_free_row_in_one_batch_give_what_they_give_alone() {
    let m = smollm2_arc(WeightDtype::F32);
    let g = Grammars::new(&m.tokenizer, m.model.config().vocab_size).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"enum": ["France", "Japan", "Peru"]}},
        "required": ["city", "country"],
        "additionalProperties": false
    });
    let constrained = GenerationParams {
        max_tokens: 40,
        constraint: Some(g.compile(&GrammarSpec::JsonSchema(schema)).unwrap()),
        ..Default::default()
    };
    let free = GenerationParams {
        max_tokens: 24,
        ..Default::default()
    };
    let engine =
        loraplex_runtime::start(m.clone(), AdapterRegistry::new(), EngineConfig::default())
            .unwrap();
    let a = || {
        GenerationRequest::new(
            chat_prompt(&m, "Name a city and its country as JSON."),
            constrained.clone(),
        )
    };
    let b = || GenerationRequest::new(chat_prompt(&m, "Say hello in French."), free.clone());
    let alone_a = text_of(engine.submit(a()).unwrap());
    let alone_b = text_of(engine.submit(b()).unwrap());
    let (sa, sb) = (engine.submit(a()).unwrap(), engine.submit(b()).unwrap());
    let (both_a, both_b) = (text_of(sa), text_of(sb));
    assert_eq!(both_a, alone_a);
    assert_eq!(both_b, alone_b);
    let v: serde_json::Value =
        serde_json::from_str(&alone_a).unwrap_or_else(|e| panic!("{alone_a:?}: {e}"));
    assert!(
        ["France", "Japan", "Peru"].contains(&v["country"].as_str().unwrap()),
        "{v}"
    );
    assert!(engine.stats().mask_time.count.load(Ordering::Relaxed) > 0);
    engine.shutdown();
}

#[test]
fn sampled_tokens_stay_in_the_allowed_set() {
    let m = smollm2_arc(WeightDtype::F32);
    let g = Grammars::new(&m.tokenizer, m.model.config().vocab_size).unwrap();
    let options = vec!["red".to_string(), "green".to_string(), "blue".to_string()];
    let c = g.compile(&GrammarSpec::Choice(options.clone())).unwrap();
    let engine =
        loraplex_runtime::start(m.clone(), AdapterRegistry::new(), EngineConfig::default())
            .unwrap();
    let streams: Vec<TokenStream> = (0..6)
        .map(|seed| {
            let params = GenerationParams {
                max_tokens: 8,
                sampling: Sampling::Random {
                    temperature: Temperature::new(2.0).unwrap(),
                    top_k: None,
                    top_p: None,
                    min_p: None,
                    seed,
                },
                logprobs: Some(3),
                constraint: Some(c.clone()),
                ..Default::default()
            };
            engine
                .submit(GenerationRequest::new(
                    chat_prompt(&m, "Pick a colour."),
                    params,
                ))
                .unwrap()
        })
        .collect();
    for s in streams {
        let out = text_of(s);
        assert!(options.contains(&out), "{out:?}");
    }
    engine.shutdown();
}
