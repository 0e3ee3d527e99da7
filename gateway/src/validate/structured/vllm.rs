//! vLLM's `structured_outputs` (`json`, `regex`, `choice`, `grammar`, `json_object`, and its JSON
//! options) and the constraint kinds its older `guided_*` fields share with it.

use loraplex_runtime::GrammarSpec;
use serde_json::{json, Value};

use super::{flag, kind, object, two, OutputConstraint};
use crate::error::ApiError;

const STRUCTURED: &str = "structured_outputs";
const STRUCTURED_FIELDS: &str = "json, regex, choice, grammar, json_object, \
    disable_any_whitespace, disable_additional_properties, whitespace_pattern, disable_fallback";

/// vLLM's `structured_outputs`: exactly one of `json`, `regex`, `choice`, `grammar`,
/// `json_object: true`, and JSON options that go to `opts`.
pub(super) fn structured_outputs(
    v: &Value,
    opts: &mut JsonOptions,
) -> Result<OutputConstraint, ApiError> {
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
            "disable_fallback" => {
                flag(value, &param)?;
            }
            "structural_tag" => {
                return Err(ApiError::invalid(
                    &param,
                    "structural tags are not supported; use json, regex, choice or grammar",
                ))
            }
            other => {
                return Err(ApiError::invalid(
                    &param,
                    format!(
                        "unknown structured_outputs field {other:?}; accepted: {STRUCTURED_FIELDS}"
                    ),
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
pub(super) enum Kind {
    Json,
    Regex,
    Choice,
    Grammar,
}

impl Kind {
    pub(super) fn parse(self, v: &Value, param: &str) -> Result<OutputConstraint, ApiError> {
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
pub(super) struct JsonOptions {
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

    pub(super) fn pattern(&mut self, v: &Value, param: &str) -> Result<(), ApiError> {
        self.whitespace_pattern = Some(text(v, param, "a regular expression")?);
        self.note(param.into());
        Ok(())
    }

    pub(super) fn apply(
        self,
        c: Option<OutputConstraint>,
    ) -> Result<Option<OutputConstraint>, ApiError> {
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
            "additionalProperties"
            | "additionalItems"
            | "unevaluatedProperties"
            | "unevaluatedItems"
            | "contains"
            | "propertyNames"
            | "not"
            | "if"
            | "then"
            | "else" => close_objects(sub),
            _ => {}
        }
    }
    let has_props = o.contains_key("properties") || o.contains_key("patternProperties");
    if has_props && !o.contains_key("additionalProperties") {
        o.insert("additionalProperties".into(), false.into());
    }
}
