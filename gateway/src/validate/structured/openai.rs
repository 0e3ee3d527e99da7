//! OpenAI's `response_format`: `text`, `json_object`, or `json_schema` with a name and a schema.

use loraplex_runtime::GrammarSpec;
use serde_json::Value;

use super::{flag, is_openai_name, kind, object, only_keys, OutputConstraint};
use crate::error::ApiError;

const RESPONSE_FORMAT: &str = "response_format";

pub(super) fn response_format(v: &Value) -> Result<Option<OutputConstraint>, ApiError> {
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
    if let Some(d) = obj
        .get("description")
        .filter(|d| !d.is_null() && !d.is_string())
    {
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
