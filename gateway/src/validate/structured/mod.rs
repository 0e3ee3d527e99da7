//! Output constraints → the runtime's [`GrammarSpec`], on both endpoints: OpenAI's
//! `response_format` (`text`, `json_object`, `json_schema`), vLLM's `structured_outputs` (`json`,
//! `regex`, `choice`, `grammar`, `json_object`) and its older `guided_*` fields. A request has at
//! most one. Fields we do not know are refused, not ignored: ignoring a misspelt constraint would
//! answer a request for JSON with free text. A JSON value of `null` counts as absent, as Python
//! clients send their unset fields.

mod openai;
mod vllm;

use std::sync::Arc;

use loraplex_runtime::{CompiledGrammar, GrammarSpec, Grammars, RuntimeError};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::wire::ConstraintFields;
use vllm::{JsonOptions, Kind};

/// The constraint a request's output must satisfy, and the field it came from: a schema or a
/// grammar that does not compile is refused naming that field.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConstraint {
    pub spec: GrammarSpec,
    pub param: String,
}

/// The request's one output constraint, if it has one.
pub fn output_constraint(f: &ConstraintFields) -> Result<Option<OutputConstraint>, ApiError> {
    let mut opts = JsonOptions::default();
    let mut found = Vec::new();
    if let Some(v) = &f.response_format {
        found.extend(openai::response_format(v)?);
    }
    if let Some(v) = &f.structured_outputs {
        found.push(vllm::structured_outputs(v, &mut opts)?);
    }
    let guided = [
        ("guided_json", &f.guided_json, Kind::Json),
        ("guided_regex", &f.guided_regex, Kind::Regex),
        ("guided_choice", &f.guided_choice, Kind::Choice),
        ("guided_grammar", &f.guided_grammar, Kind::Grammar),
    ];
    for (param, v, kind) in guided {
        if let Some(v) = v {
            found.push(kind.parse(v, param)?);
        }
    }
    if let Some(v) = &f.guided_whitespace_pattern {
        opts.pattern(v, "guided_whitespace_pattern")?;
    }
    if let [first, second, ..] = found.as_slice() {
        return Err(two(first, second));
    }
    opts.apply(found.pop())
}

/// Compiles (or takes from the cache) the constraint; a schema or grammar the constraint engine
/// cannot enforce is the client's error, named by the field it came from.
pub fn compile_constraint(
    c: &OutputConstraint,
    grammars: &Grammars,
) -> Result<Arc<CompiledGrammar>, ApiError> {
    grammars.compile(&c.spec).map_err(|e| match e {
        RuntimeError::Grammar(m) => ApiError::invalid(&c.param, format!("{}: {m}", c.param)),
        other => other.into(),
    })
}

/// OpenAI's names (of a response format, of a function): `[A-Za-z0-9_-]{1,64}`.
pub(crate) fn is_openai_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn two(first: &OutputConstraint, second: &OutputConstraint) -> ApiError {
    let field = second
        .param
        .split(['.', '['])
        .next()
        .unwrap_or(&second.param);
    ApiError::invalid(
        field,
        format!(
            "a request takes one output constraint, got {} and {}",
            first.param, second.param
        ),
    )
}

fn object<'a>(v: &'a Value, param: &str, what: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::invalid(param, format!("{param} must be {what}, got {}", kind(v))))
}

fn flag(v: &Value, param: &str) -> Result<bool, ApiError> {
    v.as_bool().ok_or_else(|| {
        ApiError::invalid(
            param,
            format!("{param} must be true or false, got {}", kind(v)),
        )
    })
}

/// Refuses a field `obj` may not have (null ones are absent).
fn only_keys(obj: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), ApiError> {
    match obj
        .iter()
        .find(|(k, v)| !v.is_null() && !allowed.contains(&k.as_str()))
    {
        None => Ok(()),
        Some((k, _)) => Err(ApiError::invalid(
            &format!("{at}.{k}"),
            format!(
                "{at} does not take {k:?} here; it takes {}",
                allowed.join(", ")
            ),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vllm_tests;
