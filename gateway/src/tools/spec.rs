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
            return Err(ApiError::invalid("tools", "tools must not be an empty array"))
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
    if f.get("description").is_some_and(|d| !d.is_string() && !d.is_null()) {
        return Err(ApiError::invalid(
            &at(".function.description"),
            "description must be a string",
        ));
    }
    if f.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
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
        && n
            .bytes()
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
                    return Err(ApiError::invalid("tool_choice", "tool_choice requires tools"))
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
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(v: Value) -> ToolFields {
        serde_json::from_value(v).unwrap()
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    #[test]
    fn tools_and_their_choice_are_read() {
        let t = tools(&fields(json!({"tools": [weather(), {"type": "function", "function": {"name": "now"}}]})))
            .unwrap()
            .unwrap();
        assert_eq!(t.choice, Choice::Auto);
        assert!(t.parallel);
        assert_eq!(t.raw[0], weather());
        assert_eq!(t.functions[0].parameters, weather()["function"]["parameters"]);
        // No parameters: the empty object is the only argument.
        assert_eq!(
            t.functions[1].parameters,
            json!({"type": "object", "properties": {}, "additionalProperties": false})
        );
        let t = tools(&fields(json!({"tools": [weather()], "parallel_tool_calls": false,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})))
        .unwrap()
        .unwrap();
        assert_eq!(t.choice, Choice::Named(0));
        assert!(!t.parallel);
        for (v, want) in [("none", Choice::None), ("required", Choice::Required)] {
            let t = tools(&fields(json!({"tools": [weather()], "tool_choice": v}))).unwrap();
            assert_eq!(t.unwrap().choice, want);
        }
        // No tools: nothing, with or without a choice that needs none.
        assert_eq!(tools(&fields(json!({}))).unwrap(), None);
        assert_eq!(tools(&fields(json!({"tool_choice": "auto"}))).unwrap(), None);
        assert_eq!(tools(&fields(json!({"tool_choice": "none", "tools": null}))).unwrap(), None);
    }

    #[test]
    fn every_refusal_names_its_field() {
        let named = |n: &str| json!({"type": "function", "function": {"name": n}});
        let with = |f: &dyn Fn(&mut Value)| {
            let mut t = weather();
            f(&mut t);
            json!({"tools": [weather_other(), t]})
        };
        fn weather_other() -> Value {
            json!({"type": "function", "function": {"name": "other"}})
        }
        let cases: Vec<(Value, &str)> = vec![
            (json!({"tools": {}}), "tools"),
            (json!({"tools": []}), "tools"),
            (json!({"tools": vec![named("f"); MAX_TOOLS + 1]}), "tools"),
            (json!({"tools": [weather_other(), 3]}), "tools[1]"),
            (with(&|t| t["type"] = json!("code_interpreter")), "tools[1].type"),
            (
                with(&|t| {
                    t.as_object_mut().unwrap().remove("type");
                }),
                "tools[1].type",
            ),
            (with(&|t| t["function"] = json!([])), "tools[1].function"),
            (with(&|t| t["function"]["name"] = json!(5)), "tools[1].function.name"),
            (with(&|t| t["function"]["name"] = json!("")), "tools[1].function.name"),
            (with(&|t| t["function"]["name"] = json!("get weather")), "tools[1].function.name"),
            (with(&|t| t["function"]["name"] = json!("x".repeat(65))), "tools[1].function.name"),
            (with(&|t| t["function"]["name"] = json!("other")), "tools[1].function.name"),
            (with(&|t| t["function"]["description"] = json!(1)), "tools[1].function.description"),
            (with(&|t| t["function"]["strict"] = json!("yes")), "tools[1].function.strict"),
            (with(&|t| t["function"]["parameters"] = json!("object")), "tools[1].function.parameters"),
            (with(&|t| t["function"]["parameters"] = json!({"type": "string"})), "tools[1].function.parameters"),
            (json!({"tools": [weather()], "parallel_tool_calls": "no"}), "parallel_tool_calls"),
            (json!({"tools": [weather()], "tool_choice": "always"}), "tool_choice"),
            (json!({"tools": [weather()], "tool_choice": 1}), "tool_choice"),
            (json!({"tools": [weather()], "tool_choice": {"type": "tool", "function": {"name": "get_weather"}}}), "tool_choice.type"),
            (json!({"tools": [weather()], "tool_choice": {"type": "function"}}), "tool_choice.function.name"),
            (json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}), "tool_choice.function.name"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}), "tool_choice"),
        ];
        for (v, want) in cases {
            match tools(&fields(v.clone())) {
                Err(ApiError::InvalidParameter { param, .. }) => assert_eq!(param, want, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }
}
