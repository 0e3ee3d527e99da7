//! The grammar's text, and what it lets a model write: each case is walked token by token on the
//! SmolLM2 tokenizer (the tiny golden model's), taking at every step the longest allowed token
//! that continues the text, as a model set on writing it would.

use std::sync::OnceLock;

use loraplex_models::{LoadOptions, LoadedModel, WeightDtype};
use loraplex_runtime::{CompiledGrammar, Grammars};
use serde_json::json;

use super::*;
use crate::error::ApiError;
use crate::tools::spec::Function;
use crate::tools::{compile, constraint};

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/tiny-llama");
        let opts = LoadOptions {
            dtype: WeightDtype::F32,
            ..Default::default()
        };
        loraplex_models::load(dir, &opts).unwrap()
    })
}

fn grammars() -> &'static Grammars {
    static G: OnceLock<Grammars> = OnceLock::new();
    G.get_or_init(|| Grammars::new(&model().tokenizer, model().model.config().vocab_size).unwrap())
}

/// Whether the grammar lets the whole of `text` be written and then ended.
fn writes(g: &CompiledGrammar, text: &str) -> bool {
    let tok = &model().tokenizer;
    let vocab = model().model.config().vocab_size;
    let stop = tok.stop_ids();
    let mut c = g.start();
    let mut rest = text.as_bytes();
    loop {
        let mut logits = vec![0.0f32; vocab];
        if c.apply(&mut logits, stop).is_err() {
            return false;
        }
        if rest.is_empty() {
            return stop.iter().any(|&s| logits[s as usize].is_finite());
        }
        let next = (0..vocab as u32)
            .filter(|&id| logits[id as usize].is_finite() && !tok.is_special(id))
            .filter(|&id| {
                let b = tok.token_bytes(id);
                !b.is_empty() && rest.starts_with(b)
            })
            .max_by_key(|&id| tok.token_bytes(id).len());
        let Some(id) = next else { return false };
        rest = &rest[tok.token_bytes(id).len()..];
        c.commit(id, stop).unwrap();
    }
}

fn weather() -> Function {
    Function {
        name: "get_weather".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"enum": ["C", "F"]}}, "required": ["city"], "additionalProperties": false}),
    }
}

fn now() -> Function {
    Function {
        name: "now".into(),
        parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
    }
}

fn tools(choice: Choice, parallel: bool) -> Tools {
    let functions = vec![weather(), now()];
    Tools {
        raw: Vec::new(),
        functions,
        choice,
        parallel,
    }
}

fn compiled(t: &Tools, format: Option<GrammarSpec>) -> std::sync::Arc<CompiledGrammar> {
    let (spec, param) = constraint(Some(t), format.map(|f| (f, "response_format".into()))).unwrap();
    compile(grammars(), Some(t), &spec, &param).unwrap()
}

const PARIS: &str =
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
const NOW: &str = "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";

#[test]
fn the_grammar_text_of_a_named_call() {
    let g = lark(&tools(Choice::Named(0), false), None).unwrap();
    let schema = serde_json::to_string(&json!({"type": "object", "properties": {"city": {"type": "string"},
        "unit": {"enum": ["C", "F"]}}, "required": ["city"], "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}}))
    .unwrap();
    assert_eq!(
        g,
        format!(
            "start: \"<tool_call>\" calls\ncalls: call\ncall: fn_0\n\
             fn_0: \"\\n{{\\\"name\\\": \\\"get_weather\\\", \\\"arguments\\\": \" args_0 \"}}\\n</tool_call>\"\n\
             args_0: %json {schema}\n"
        )
    );
    assert_eq!(lark(&tools(Choice::None, true), None), None);
}

#[test]
fn required_calls_follow_their_schemas() {
    let g = compiled(&tools(Choice::Required, false), None);
    assert!(writes(&g, PARIS));
    assert!(writes(&g, NOW));
    assert!(writes(
        &g,
        &PARIS.replace("\"Paris\"}", "\"Paris\", \"unit\": \"C\"}")
    ));
    // Arguments off the schema, another function, text, or a second call without parallel calls.
    assert!(!writes(&g, &PARIS.replace("city", "town")));
    assert!(!writes(
        &g,
        &PARIS.replace("\"Paris\"}", "\"Paris\", \"unit\": \"K\"}")
    ));
    assert!(!writes(&g, &PARIS.replace("get_weather", "get_time")));
    assert!(!writes(&g, "The weather is fine."));
    assert!(!writes(&g, &format!("{PARIS}\n{NOW}")));
    assert!(!writes(&g, ""));
    // JSON as the prompt shows it: no free whitespace.
    assert!(!writes(&g, &PARIS.replace("{\"city\": ", "{ \"city\": ")));
}

#[test]
fn parallel_calls_are_separated_by_a_newline() {
    let g = compiled(&tools(Choice::Required, true), None);
    assert!(writes(&g, &format!("{PARIS}\n{NOW}")));
    assert!(writes(&g, &format!("{NOW}\n{NOW}\n{PARIS}")));
    assert!(!writes(&g, &format!("{PARIS}{NOW}")));
}

#[test]
fn a_named_function_is_the_only_one() {
    let g = compiled(&tools(Choice::Named(1), true), None);
    assert!(writes(&g, NOW));
    assert!(!writes(&g, PARIS));
}

#[test]
fn auto_allows_text_or_text_then_calls() {
    let g = compiled(&tools(Choice::Auto, true), None);
    assert!(writes(&g, "Paris is sunny today. <b>Enjoy</b> <tool"));
    assert!(writes(&g, PARIS));
    assert!(writes(&g, &format!("Let me look.\n{PARIS}\n{NOW}")));
    // The tag always opens a call; an empty answer is not one.
    assert!(!writes(&g, "Call <tool_call> now"));
    assert!(!writes(&g, &format!("{PARIS} and text")));
    assert!(!writes(&g, ""));
}

#[test]
fn auto_with_a_response_format_allows_it_or_calls() {
    let t = tools(Choice::Auto, false);
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]});
    let g = compiled(&t, Some(GrammarSpec::JsonSchema(schema)));
    assert!(writes(&g, "{\"answer\": \"sunny\"}"));
    assert!(writes(&g, PARIS));
    assert!(!writes(&g, "sunny"));
    let g = compiled(&t, Some(GrammarSpec::Regex("[a-z]+/[0-9]+".into())));
    assert!(writes(&g, "paris/75"));
    assert!(writes(&g, NOW));
    assert!(!writes(&g, "paris 75"));
    let g = compiled(
        &t,
        Some(GrammarSpec::Choice(vec!["yes".into(), "no \"way\"".into()])),
    );
    assert!(writes(&g, "no \"way\""));
    assert!(!writes(&g, "maybe"));
    let g = compiled(
        &t,
        Some(GrammarSpec::Lark("start: \"a\" B\nB: /[0-9]+/".into())),
    );
    assert!(writes(&g, "a42"));
    assert!(writes(&g, NOW));
    assert!(!writes(&g, "b42"));
    let g = compiled(&t, Some(GrammarSpec::JsonObject));
    assert!(writes(&g, "{\"x\": [1, 2]}"));
    // Under `required` the format has no say: calls only.
    let t = tools(Choice::Required, false);
    let g = compiled(&t, Some(GrammarSpec::JsonObject));
    assert!(!writes(&g, "{\"x\": 1}"));
    assert!(writes(&g, NOW));
}

#[test]
fn a_schema_that_does_not_compile_is_blamed_on_its_function() {
    let mut t = tools(Choice::Auto, true);
    t.functions[1].parameters = json!({"type": "object", "properties": {"x": {"type": "strin"}}});
    let (spec, param) = constraint(Some(&t), None).unwrap();
    match compile(grammars(), Some(&t), &spec, &param) {
        Err(ApiError::InvalidParameter { param, message }) => {
            assert_eq!(param, "tools[1].function.parameters");
            assert!(message.contains("strin"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn regexes_keep_their_escapes_and_escape_slashes() {
    assert_eq!(regex_body(r"a/b\/c\\/d\d"), r"a\/b\/c\\\/d\d");
}
