//! `tools`, `tool_choice` and `parallel_tool_calls` → [`Tools`], refused where OpenAI refuses
//! them, each refusal naming its field (`tools[1].function.name`, `tool_choice.function.name`).

use serde_json::Value;

use crate::error::ApiError;
use crate::wire::ToolFields;

/// Most tools a request may give (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;
const MAX_NAME: usize = 64;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    /// The JSON Schema its arguments follow: an object schema (no parameters: the empty object).
    pub parameters: Value,
}

/// Which calls the output may or must make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// No call: the tools are shown to the model, the output is text.
    None,
    /// Text or calls, as the model decides.
    Auto,
    /// At least one call.
    Required,
    /// A call of this function (an index into [`Tools::functions`]).
    Named(usize),
}

/// A chat request's tools, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// The tool objects as the client sent them: what the chat template lists.
    pub raw: Vec<Value>,
    pub functions: Vec<Function>,
    pub choice: Choice,
    /// Several calls in one turn may be made (`parallel_tool_calls`, true by default).
    pub parallel: bool,
}

impl Tools {
    /// Whether the output is read for tool calls.
    pub fn calls_possible(&self) -> bool {
        self.choice != Choice::None
    }
}

/// The request's tools; `None` when it gives none. `required` or a named function without
/// tools is refused (so is a function name that is not among them).
pub fn tools(f: &ToolFields) -> Result<Option<Tools>, ApiError> {
    let parallel = match &f.parallel_tool_calls {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "parallel_tool_calls",
                "parallel_tool_calls must be a boolean",
            ))
        }
    };
    let raw = match &f.tools {
        None => Vec::new(),
        Some(Value::Array(v)) if v.is_empty() => {
            return Err(ApiError::invalid(
                "tools",
                "tools must not be an empty array",
            ))
        }
        Some(Value::Array(v)) if v.len() > MAX_TOOLS => {
            return Err(ApiError::invalid(
                "tools",
                format!("at most {MAX_TOOLS} tools, got {}", v.len()),
            ))
        }
        Some(Value::Array(v)) => v.clone(),
        Some(_) => return Err(ApiError::invalid("tools", "tools must be an array")),
    };
    let mut functions: Vec<Function> = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let f = function(i, t)?;
        if functions.iter().any(|g| g.name == f.name) {
            return Err(ApiError::invalid(
                &format!("tools[{i}].function.name"),
                format!("the function {:?} is given twice", f.name),
            ));
        }
        functions.push(f);
    }
    let choice = choice(f.tool_choice.as_ref(), &functions)?;
    if functions.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tools {
        raw,
        functions,
        choice,
        parallel,
    }))
}

fn function(i: usize, t: &Value) -> Result<Function, ApiError> {
    let at = |field: &str| format!("tools[{i}]{field}");
    if !t.is_object() {
        return Err(ApiError::invalid(&at(""), "a tool must be an object"));
    }
    match t.get("type") {
        Some(Value::String(k)) if k == "function" => {}
        _ => {
            return Err(ApiError::invalid(
                &at(".type"),
                "only tools of type \"function\" are supported",
            ))
        }
    }
    let f = t
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| ApiError::invalid(&at(".function"), "function must be an object"))?;
    let name = match f.get("name") {
        Some(Value::String(n)) if valid_name(n) => n.clone(),
        _ => {
            return Err(ApiError::invalid(
                &at(".function.name"),
                format!("name must be 1 to {MAX_NAME} letters, digits, underscores or dashes"),
            ))
        }
    };
    if f.get("description")
        .is_some_and(|d| !d.is_string() && !d.is_null())
    {
        return Err(ApiError::invalid(
            &at(".function.description"),
            "description must be a string",
        ));
    }
    if f.get("strict")
        .is_some_and(|s| !s.is_boolean() && !s.is_null())
    {
        return Err(ApiError::invalid(
            &at(".function.strict"),
            "strict must be a boolean",
        ));
    }
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => {
            serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false})
        }
        Some(p @ Value::Object(m)) => {
            if m.get("type").is_some_and(|k| k != "object") {
                return Err(ApiError::invalid(
                    &at(".function.parameters"),
                    "parameters must be a JSON Schema of type \"object\"",
                ));
            }
            p.clone()
        }
        Some(_) => {
            return Err(ApiError::invalid(
                &at(".function.parameters"),
                "parameters must be a JSON Schema object",
            ))
        }
    };
    Ok(Function { name, parameters })
}

fn valid_name(n: &str) -> bool {
    (1..=MAX_NAME).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `tool_choice`: absent means `auto` with tools and `none` without, as OpenAI has it.
fn choice(v: Option<&Value>, functions: &[Function]) -> Result<Choice, ApiError> {
    let choice = match v {
        None => {
            return Ok(if functions.is_empty() {
                Choice::None
            } else {
                Choice::Auto
            })
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("unknown tool_choice {other:?} (none, auto, required or a function)"),
                ))
            }
        },
        Some(Value::Object(m)) => {
            if m.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::invalid(
                    "tool_choice.type",
                    "tool_choice.type must be \"function\"",
                ));
            }
            let name = m
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice.function.name",
                        "tool_choice.function.name must be a string",
                    )
                })?;
            match functions.iter().position(|f| f.name == name) {
                Some(i) => Choice::Named(i),
                None if functions.is_empty() => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice requires tools",
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        "tool_choice.function.name",
                        format!("the function {name:?} is not among the tools"),
                    ))
                }
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice must be a string or an object",
            ))
        }
    };
    if functions.is_empty() && matches!(choice, Choice::Required | Choice::Named(_)) {
        return Err(ApiError::invalid(
            "tool_choice",
            "tool_choice requires tools",
        ));
    }
    Ok(choice)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
