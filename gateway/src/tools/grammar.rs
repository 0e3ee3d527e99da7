//! The Lark grammar (llguidance's dialect) that holds a chat's output to the tool-call format
//! of `loraplex_models::chat_tools`: each call is exactly
//! `<tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>` with `ARGS` following the
//! function's parameter schema, the name first so that a stream can announce the call before
//! its arguments; calls are separated by a newline.
//!
//! - `required`: one call (one or more when parallel calls are allowed).
//! - a named function: the same, of that function only.
//! - `auto`: text, or text then calls (text never contains `<tool_call>`: the tag always opens
//!   a call). With a response format, the output is either what the format allows or calls.
//! - `none`: no grammar from the tools.

use loraplex_models::{json_text, TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use loraplex_runtime::{styled_schema, GrammarSpec};
use serde_json::{json, Value};

use super::spec::{Choice, Tools};

/// An embedded schema, in the JSON style the runtime gives a JSON Schema response format (the
/// prompt shows calls the same way), unless it has its own options.
fn schema_text(schema: &Value) -> String {
    serde_json::to_string(&styled_schema(schema)).expect("JSON values serialize")
}

/// A Lark string literal (Lark's string syntax is JSON's).
fn literal(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The grammar of `tools`' calls, the response format's constraint (`content`) as the text
/// alternative of `auto`; `None` under `tool_choice: none`.
pub fn lark(tools: &Tools, content: Option<&GrammarSpec>) -> Option<String> {
    let functions: Vec<usize> = match tools.choice {
        Choice::None => return None,
        Choice::Named(i) => vec![i],
        Choice::Auto | Choice::Required => (0..tools.functions.len()).collect(),
    };
    let mut g = String::new();
    let open = literal(TOOL_CALL_OPEN);
    match (tools.choice, content) {
        (Choice::Auto, None) => {
            g.push_str("start: TEXT | TEXT_CALL calls\n");
            // Text without the tag; text ending with its only tag.
            g.push_str(&format!(
                "TEXT: /(?s:.+)/ & ~/(?s:.*{TOOL_CALL_OPEN}.*)/\n\
                 TEXT_CALL: /(?s:.*{TOOL_CALL_OPEN})/ & ~/(?s:.*{TOOL_CALL_OPEN}.+)/\n"
            ));
        }
        (Choice::Auto, Some(spec)) => {
            g.push_str(&format!("start: content | {open} calls\n"));
            g.push_str(&format!("content: {}\n", content_rule(spec)));
        }
        _ => g.push_str(&format!("start: {open} calls\n")),
    }
    if tools.parallel {
        g.push_str(&format!(
            "calls: call ({} call)*\n",
            literal(&format!("\n{TOOL_CALL_OPEN}"))
        ));
    } else {
        g.push_str("calls: call\n");
    }
    let alts: Vec<String> = functions.iter().map(|i| format!("fn_{i}")).collect();
    g.push_str(&format!("call: {}\n", alts.join(" | ")));
    let close = literal(&format!("}}\n{TOOL_CALL_CLOSE}"));
    for &i in &functions {
        let f = &tools.functions[i];
        let head = literal(&format!(
            "\n{{\"name\": {}, \"arguments\": ",
            json_text(&f.name)
        ));
        g.push_str(&format!("fn_{i}: {head} args_{i} {close}\n"));
        g.push_str(&format!("args_{i}: %json {}\n", schema_text(&f.parameters)));
    }
    Some(g)
}

/// A rule body matching what `spec` matches on its own.
fn content_rule(spec: &GrammarSpec) -> String {
    match spec {
        GrammarSpec::JsonSchema(schema) => format!("%json {}", schema_text(schema)),
        GrammarSpec::JsonObject => format!("%json {}", schema_text(&json!({"type": "object"}))),
        GrammarSpec::Regex(rx) => format!("/{}/", regex_body(rx)),
        GrammarSpec::Choice(options) => options
            .iter()
            .map(|o| literal(o))
            .collect::<Vec<_>>()
            .join(" | "),
        GrammarSpec::Lark(src) => format!("%lark {{\n{src}\n}}"),
    }
}

/// A regex written between Lark's slashes: a bare `/` escaped (the regex syntax takes `\/` as
/// `/`), escapes kept as they are.
fn regex_body(rx: &str) -> String {
    let mut out = String::with_capacity(rx.len() + 2);
    let mut chars = rx.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push('\\');
                out.extend(chars.next());
            }
            '/' => out.push_str("\\/"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[path = "grammar_tests.rs"]
mod tests;
