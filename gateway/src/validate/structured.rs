//! Output constraints → the runtime's [`GrammarSpec`], on both endpoints: OpenAI's
//! `response_format` (`text`, `json_object`, `json_schema`), vLLM's `structured_outputs` (`json`,
//! `regex`, `choice`, `grammar`, `json_object`) and its older `guided_*` fields. A request has at
//! most one. Fields we do not know are refused, not ignored: ignoring a misspelt constraint would
//! answer a request for JSON with free text. A JSON value of `null` counts as absent, as Python
//! clients send their unset fields.

use std::sync::Arc;

use loraplex_runtime::{CompiledGrammar, GrammarSpec, Grammars, RuntimeError};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::wire::ConstraintFields;

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
        found.extend(response_format(v)?);
    }
    if let Some(v) = &f.structured_outputs {
        found.push(structured_outputs(v, &mut opts)?);
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
pub fn compile_constraint(c: &OutputConstraint, grammars: &Grammars) -> Result<Arc<CompiledGrammar>, ApiError> {
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

const RESPONSE_FORMAT: &str = "response_format";

fn response_format(v: &Value) -> Result<Option<OutputConstraint>, ApiError> {
    let obj = object(
        v,
        RESPONSE_FORMAT,
        "an object such as {\"type\": \"json_object\"}",
    )?;
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "response_format.type",
                "response_format.type is required: text, json_object or json_schema",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format.type",
                format!(
                    "response_format.type must be a string (text, json_object or json_schema), got {}",
                    kind(other)
                ),
            ))
        }
    };
    match ty {
        "text" => only_keys(obj, RESPONSE_FORMAT, &["type"]).map(|()| None),
        "json_object" => {
            only_keys(obj, RESPONSE_FORMAT, &["type"])?;
            Ok(Some(OutputConstraint {
                spec: GrammarSpec::JsonObject,
                param: RESPONSE_FORMAT.into(),
            }))
        }
        "json_schema" => {
            only_keys(obj, RESPONSE_FORMAT, &["type", "json_schema"])?;
            json_schema(obj.get("json_schema")).map(Some)
        }
        other => Err(ApiError::invalid(
            "response_format.type",
            format!("unknown response_format type {other:?}: text, json_object or json_schema"),
        )),
    }
}

/// `response_format.json_schema`: `{name, description?, schema, strict?}`. The schema is always
/// enforced, whatever `strict` says: a client that asked for a schema wants output that has it.
fn json_schema(v: Option<&Value>) -> Result<OutputConstraint, ApiError> {
    const P: &str = "response_format.json_schema";
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Err(ApiError::invalid(
            P,
            "response_format.json_schema is required when the type is json_schema: {\"name\": ..., \"schema\": {...}}",
        ));
    };
    let obj = object(v, P, "an object with name and schema")?;
    only_keys(obj, P, &["name", "description", "schema", "strict"])?;
    let name = format!("{P}.name");
    match obj.get("name") {
        Some(Value::String(n)) if is_openai_name(n) => {}
        Some(Value::String(n)) => {
            return Err(ApiError::invalid(
                &name,
                format!("{name} {n:?} must be 1 to 64 letters, digits, underscores or dashes"),
            ))
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(&name, format!("{name} is required")))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                &name,
                format!("{name} must be a string, got {}", kind(other)),
            ))
        }
    }
    if let Some(d) = obj.get("description").filter(|d| !d.is_null() && !d.is_string()) {
        let param = format!("{P}.description");
        let msg = format!("{param} must be a string, got {}", kind(d));
        return Err(ApiError::invalid(&param, msg));
    }
    if let Some(s) = obj.get("strict").filter(|s| !s.is_null()) {
        flag(s, &format!("{P}.strict"))?;
    }
    let param = format!("{P}.schema");
    let schema = match obj.get("schema") {
        Some(s @ Value::Object(_)) => s.clone(),
        None | Some(Value::Null) => {
            let msg = format!("{param} is required: the JSON Schema the output must match");
            return Err(ApiError::invalid(&param, msg));
        }
        Some(other) => {
            let msg = format!("{param} must be a JSON Schema object, got {}", kind(other));
            return Err(ApiError::invalid(&param, msg));
        }
    };
    Ok(OutputConstraint {
        spec: GrammarSpec::JsonSchema(schema),
        param,
    })
}

const STRUCTURED: &str = "structured_outputs";
const STRUCTURED_FIELDS: &str = "json, regex, choice, grammar, json_object, \
    disable_any_whitespace, disable_additional_properties, whitespace_pattern, disable_fallback";

/// vLLM's `structured_outputs`: exactly one of `json`, `regex`, `choice`, `grammar`,
/// `json_object: true`, and JSON options that go to `opts`.
fn structured_outputs(v: &Value, opts: &mut JsonOptions) -> Result<OutputConstraint, ApiError> {
    let obj = object(v, STRUCTURED, "an object such as {\"regex\": \"[0-9]+\"}")?;
    let mut found = Vec::new();
    for (key, value) in obj.iter().filter(|(_, v)| !v.is_null()) {
        let param = format!("{STRUCTURED}.{key}");
        match key.as_str() {
            "json" => found.push(Kind::Json.parse(value, &param)?),
            "regex" => found.push(Kind::Regex.parse(value, &param)?),
            "choice" => found.push(Kind::Choice.parse(value, &param)?),
            "grammar" => found.push(Kind::Grammar.parse(value, &param)?),
            "json_object" => {
                if flag(value, &param)? {
                    found.push(OutputConstraint {
                        spec: GrammarSpec::JsonObject,
                        param,
                    });
                }
            }
            "disable_any_whitespace" => opts.compact(flag(value, &param)?, param),
            "disable_additional_properties" => opts.closed(flag(value, &param)?, param),
            "whitespace_pattern" => opts.pattern(value, &param)?,
            // One constraint engine, nothing to fall back to: accepted for vLLM's clients.
            "disable_fallback" => drop(flag(value, &param)?),
            "structural_tag" => {
                return Err(ApiError::invalid(
                    &param,
                    "structural tags are not supported; use json, regex, choice or grammar",
                ))
            }
            other => {
                return Err(ApiError::invalid(
                    &param,
                    format!("unknown structured_outputs field {other:?}; accepted: {STRUCTURED_FIELDS}"),
                ))
            }
        }
    }
    match found.len() {
        0 => Err(ApiError::invalid(
            STRUCTURED,
            "structured_outputs needs one of json, regex, choice, grammar or json_object: true",
        )),
        1 => Ok(found.remove(0)),
        _ => Err(two(&found[0], &found[1])),
    }
}

/// The constraint kinds vLLM has both as `structured_outputs.*` and as `guided_*`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Json,
    Regex,
    Choice,
    Grammar,
}

impl Kind {
    fn parse(self, v: &Value, param: &str) -> Result<OutputConstraint, ApiError> {
        let spec = match self {
            Kind::Json => GrammarSpec::JsonSchema(schema(v, param)?),
            Kind::Regex => GrammarSpec::Regex(text(v, param, "a regular expression")?),
            Kind::Choice => GrammarSpec::Choice(choices(v, param)?),
            Kind::Grammar => GrammarSpec::Lark(text(v, param, "a Lark grammar")?),
        };
        Ok(OutputConstraint {
            spec,
            param: param.into(),
        })
    }
}

/// A JSON Schema as an object, or as a string holding one (vLLM takes both).
fn schema(v: &Value, param: &str) -> Result<Value, ApiError> {
    let parsed;
    let v = match v {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| {
                ApiError::invalid(param, format!("{param} is a string but not JSON: {e}"))
            })?;
            &parsed
        }
        v => v,
    };
    match v {
        Value::Object(_) => Ok(v.clone()),
        other => Err(ApiError::invalid(
            param,
            format!(
                "{param} must be a JSON Schema object (or a string holding one), got {}",
                kind(other)
            ),
        )),
    }
}

fn text(v: &Value, param: &str, what: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(ApiError::invalid(
            param,
            format!("{param} must be {what}, got an empty string"),
        )),
        other => Err(ApiError::invalid(
            param,
            format!("{param} must be {what} as a string, got {}", kind(other)),
        )),
    }
}

fn choices(v: &Value, param: &str) -> Result<Vec<String>, ApiError> {
    let Value::Array(items) = v else {
        return Err(ApiError::invalid(
            param,
            format!("{param} must be a list of strings, got {}", kind(v)),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("{param} must list at least one choice"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Value::String(s) => Ok(s.clone()),
            other => Err(ApiError::invalid(
                &format!("{param}[{i}]"),
                format!("{param}[{i}] must be a string, got {}", kind(other)),
            )),
        })
        .collect()
}

/// vLLM's JSON options, applied to the JSON constraint's schema as llguidance's `x-guidance`
/// compile options (which the runtime then leaves as they are).
#[derive(Debug, Default)]
struct JsonOptions {
    /// The first option given, named in the refusal when the request has no JSON constraint.
    param: Option<String>,
    /// `disable_any_whitespace`: only the separators `,` and `:`, no whitespace.
    compact: bool,
    /// `whitespace_pattern`: a regex for the whitespace allowed between tokens of the JSON.
    whitespace_pattern: Option<String>,
    /// `disable_additional_properties`: objects with properties take no others.
    closed: bool,
}

impl JsonOptions {
    fn note(&mut self, param: String) {
        self.param.get_or_insert(param);
    }

    fn compact(&mut self, on: bool, param: String) {
        if on {
            self.compact = true;
            self.note(param);
        }
    }

    fn closed(&mut self, on: bool, param: String) {
        if on {
            self.closed = true;
            self.note(param);
        }
    }

    fn pattern(&mut self, v: &Value, param: &str) -> Result<(), ApiError> {
        self.whitespace_pattern = Some(text(v, param, "a regular expression")?);
        self.note(param.into());
        Ok(())
    }

    fn apply(self, c: Option<OutputConstraint>) -> Result<Option<OutputConstraint>, ApiError> {
        let Some(opt) = self.param else {
            return Ok(c);
        };
        let Some(mut c) = c else {
            let msg = format!("{opt} applies to a JSON constraint, and the request has none");
            return Err(ApiError::invalid(&opt, msg));
        };
        let mut schema = match c.spec {
            GrammarSpec::JsonSchema(s) => s,
            GrammarSpec::JsonObject => json!({"type": "object"}),
            _ => {
                let msg = format!("{opt} applies to JSON constraints only, not to {}", c.param);
                return Err(ApiError::invalid(&opt, msg));
            }
        };
        if self.closed {
            close_objects(&mut schema);
        }
        if self.compact || self.whitespace_pattern.is_some() {
            let opts = schema
                .as_object_mut()
                .expect("schemas are objects")
                .entry("x-guidance")
                .or_insert_with(|| json!({}));
            if let Value::Object(o) = opts {
                if self.compact {
                    o.insert("whitespace_flexible".into(), false.into());
                }
                if let Some(p) = self.whitespace_pattern {
                    o.insert("whitespace_pattern".into(), p.into());
                }
            }
        }
        c.spec = GrammarSpec::JsonSchema(schema);
        Ok(Some(c))
    }
}

/// `additionalProperties: false` on every (sub)schema with `properties` or `patternProperties`
/// that does not say, as vLLM does for `disable_additional_properties`. Only schema positions
/// are visited, so a property that happens to be named `properties` is left alone.
fn close_objects(schema: &mut Value) {
    let Value::Object(o) = schema else {
        return;
    };
    for (key, sub) in o.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(m) = sub {
                    m.values_mut().for_each(close_objects);
                }
            }
            "allOf" | "anyOf" | "oneOf" | "prefixItems" | "items" => match sub {
                Value::Array(v) => v.iter_mut().for_each(close_objects),
                one => close_objects(one),
            },
            "additionalProperties" | "additionalItems" | "unevaluatedProperties"
            | "unevaluatedItems" | "contains" | "propertyNames" | "not" | "if" | "then"
            | "else" => close_objects(sub),
            _ => {}
        }
    }
    let has_props = o.contains_key("properties") || o.contains_key("patternProperties");
    if has_props && !o.contains_key("additionalProperties") {
        o.insert("additionalProperties".into(), false.into());
    }
}

fn two(first: &OutputConstraint, second: &OutputConstraint) -> ApiError {
    let field = second.param.split(['.', '[']).next().unwrap_or(&second.param);
    ApiError::invalid(
        field,
        format!(
            "a request takes one output constraint, got {} and {}",
            first.param, second.param
        ),
    )
}

fn object<'a>(v: &'a Value, param: &str, what: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| {
        ApiError::invalid(param, format!("{param} must be {what}, got {}", kind(v)))
    })
}

fn flag(v: &Value, param: &str) -> Result<bool, ApiError> {
    v.as_bool().ok_or_else(|| {
        ApiError::invalid(param, format!("{param} must be true or false, got {}", kind(v)))
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
            format!("{at} does not take {k:?} here; it takes {}", allowed.join(", ")),
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
#[path = "structured_tests.rs"]
mod tests;
