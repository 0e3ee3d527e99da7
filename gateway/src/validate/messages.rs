//! Chat messages → the template's input, as strictly as OpenAI checks them: every refusal names
//! the message and field (`messages[2].tool_calls[0].function.arguments`).

use loraplex_models::{ChatMessage, ToolCall};
use serde_json::Value;

use crate::error::ApiError;
use crate::wire::Message;

/// The conversation, validated: roles, text content (parts joined), names, an assistant's tool
/// calls (arguments parsed to objects, as templates take them), tool results answering a call
/// of the assistant turn before them.
pub fn messages(msgs: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut out: Vec<ChatMessage> = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        let role = match m.role.as_ref() {
            Some(Value::String(r)) => r.as_str(),
            None => return Err(ApiError::invalid(&at("role"), "role is required")),
            Some(_) => return Err(ApiError::invalid(&at("role"), "role must be a string")),
        };
        let role = match role {
            "system" | "developer" => "system",
            "user" | "assistant" | "tool" => role,
            other => {
                return Err(ApiError::invalid(
                    &at("role"),
                    format!(
                        "unsupported role {other:?} (system, developer, user, assistant or tool)"
                    ),
                ))
            }
        };
        let name = match &m.name {
            None => None,
            Some(Value::String(n)) => Some(n.clone()),
            Some(_) => return Err(ApiError::invalid(&at("name"), "name must be a string")),
        };
        let tool_calls = match (&m.tool_calls, role) {
            (None, _) => Vec::new(),
            (Some(v), "assistant") => tool_calls(i, v)?,
            (Some(_), _) => {
                return Err(ApiError::invalid(
                    &at("tool_calls"),
                    "only assistant messages have tool_calls",
                ))
            }
        };
        let content = content(i, m.content.as_ref())?;
        if content.is_none() && tool_calls.is_empty() {
            let why = if role == "assistant" {
                "an assistant message needs content or tool_calls"
            } else {
                "content is required"
            };
            return Err(ApiError::invalid(&at("content"), why));
        }
        let tool_call_id = if role == "tool" {
            Some(answered_call(i, m.tool_call_id.as_ref(), &out)?)
        } else {
            None
        };
        out.push(ChatMessage {
            role: role.to_string(),
            content,
            name,
            tool_calls,
            tool_call_id,
        });
    }
    Ok(out)
}

/// Text content: a string, or text parts joined; `None` when absent or null.
fn content(i: usize, v: Option<&Value>) -> Result<Option<String>, ApiError> {
    let parts = match v {
        None => return Ok(None),
        Some(Value::String(s)) => return Ok(Some(s.clone())),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("messages[{i}].content"),
                "content must be a string or an array of content parts",
            ))
        }
    };
    let mut s = String::new();
    for (j, p) in parts.iter().enumerate() {
        let param = format!("messages[{i}].content[{j}]");
        match (p.get("type").and_then(Value::as_str), p.get("text")) {
            (Some("text"), Some(Value::String(t))) => s.push_str(t),
            (Some("text"), _) => {
                return Err(ApiError::invalid(
                    &format!("{param}.text"),
                    "a text part needs a string text",
                ))
            }
            (Some(_), _) => {
                return Err(ApiError::invalid(
                    &param,
                    "only text content parts are supported",
                ))
            }
            (None, _) => {
                return Err(ApiError::invalid(
                    &format!("{param}.type"),
                    "a content part needs a string type",
                ))
            }
        }
    }
    Ok(Some(s))
}

/// An assistant message's `tool_calls`. Arguments that are not JSON are kept as the string
/// (a model's truncated call sent back must still render).
fn tool_calls(i: usize, v: &Value) -> Result<Vec<ToolCall>, ApiError> {
    let at = |field: &str| format!("messages[{i}].tool_calls{field}");
    let calls = match v {
        Value::Array(c) if !c.is_empty() => c,
        Value::Array(_) => return Err(ApiError::invalid(&at(""), "tool_calls must not be empty")),
        _ => return Err(ApiError::invalid(&at(""), "tool_calls must be an array")),
    };
    calls
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let at = |field: &str| at(&format!("[{j}]{field}"));
            let string = |v: Option<&Value>, field: &str| match v {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(ApiError::invalid(
                    &at(field),
                    format!("{} must be a string", &field[1..]),
                )),
            };
            if !c.is_object() {
                return Err(ApiError::invalid(&at(""), "a tool call must be an object"));
            }
            let id = string(c.get("id"), ".id")?;
            if c.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::invalid(&at(".type"), "type must be \"function\""));
            }
            let f = c
                .get("function")
                .filter(|f| f.is_object())
                .ok_or_else(|| ApiError::invalid(&at(".function"), "function must be an object"))?;
            let name = string(f.get("name"), ".function.name")?;
            let raw = string(f.get("arguments"), ".function.arguments")?;
            let arguments = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
            Ok(ToolCall {
                id,
                name,
                arguments,
            })
        })
        .collect()
}

/// A tool message's `tool_call_id`, which must name a call of the assistant turn before the
/// tool results (as OpenAI requires).
fn answered_call(i: usize, id: Option<&Value>, before: &[ChatMessage]) -> Result<String, ApiError> {
    let param = format!("messages[{i}].tool_call_id");
    let id = match id {
        Some(Value::String(id)) => id,
        None => {
            return Err(ApiError::invalid(
                &param,
                "a tool message needs tool_call_id",
            ))
        }
        Some(_) => return Err(ApiError::invalid(&param, "tool_call_id must be a string")),
    };
    let turn = before.iter().rev().find(|m| m.role != "tool");
    let calls = match turn {
        Some(m) if m.role == "assistant" && !m.tool_calls.is_empty() => &m.tool_calls,
        _ => {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                "a tool message must answer a preceding assistant message with tool_calls",
            ))
        }
    };
    if !calls.iter().any(|c| &c.id == id) {
        return Err(ApiError::invalid(
            &param,
            format!("{id:?} is not the id of a tool call of the preceding assistant message"),
        ));
    }
    Ok(id.clone())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<Vec<ChatMessage>, ApiError> {
        let msgs: Vec<Message> = serde_json::from_value(v).unwrap();
        messages(&msgs)
    }

    fn param_of(v: Value) -> String {
        match parse(v.clone()) {
            Err(ApiError::InvalidParameter { param, .. }) => param,
            other => panic!("{v}: {other:?}"),
        }
    }

    fn call(id: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}})
    }

    #[test]
    fn a_tool_conversation_is_accepted() {
        let msgs = parse(json!([
            {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
            {"role": "user", "content": "Weather?", "name": "ann"},
            {"role": "assistant", "content": null, "tool_calls": [call("a"), call("b")]},
            {"role": "tool", "tool_call_id": "a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "rain"}]},
        ]))
        .unwrap();
        assert_eq!(msgs[0].role, "system");
        assert_eq!(msgs[0].content.as_deref(), Some("Be brief."));
        assert_eq!(msgs[1].name.as_deref(), Some("ann"));
        assert_eq!(msgs[2].content, None);
        assert_eq!(msgs[2].tool_calls[1].id, "b");
        assert_eq!(msgs[2].tool_calls[0].arguments, json!({"city": "Paris"}));
        assert_eq!(msgs[4].tool_call_id.as_deref(), Some("b"));
        assert_eq!(msgs[4].content.as_deref(), Some("rain"));
    }

    #[test]
    fn arguments_that_are_not_json_stay_a_string() {
        let mut c = call("a");
        c["function"]["arguments"] = json!("{\"city\": \"Par");
        let msgs = parse(json!([{"role": "assistant", "tool_calls": [c]}])).unwrap();
        assert_eq!(msgs[0].tool_calls[0].arguments, json!("{\"city\": \"Par"));
    }

    #[test]
    fn every_refusal_names_its_field() {
        let user = json!({"role": "user", "content": "hi"});
        let asst = json!({"role": "assistant", "tool_calls": [call("a")]});
        let with_call = |f: &dyn Fn(&mut Value)| {
            let mut c = call("a");
            f(&mut c);
            json!([user, {"role": "assistant", "tool_calls": [c]}])
        };
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "messages"),
            (json!([{"content": "x"}]), "messages[0].role"),
            (json!([{"role": 3, "content": "x"}]), "messages[0].role"),
            (
                json!([{"role": "robot", "content": "x"}]),
                "messages[0].role",
            ),
            (json!([{"role": "user"}]), "messages[0].content"),
            (
                json!([{"role": "user", "content": null}]),
                "messages[0].content",
            ),
            (
                json!([{"role": "system", "content": 5}]),
                "messages[0].content",
            ),
            (
                json!([{"role": "user", "content": {"text": "x"}}]),
                "messages[0].content",
            ),
            (
                json!([user, {"role": "user", "content": "x", "name": 7}]),
                "messages[1].name",
            ),
            (
                json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                "messages[0].content[0]",
            ),
            (
                json!([{"role": "user", "content": [{"type": "text"}]}]),
                "messages[0].content[0].text",
            ),
            (
                json!([{"role": "user", "content": ["x"]}]),
                "messages[0].content[0].type",
            ),
            (json!([user, {"role": "assistant"}]), "messages[1].content"),
            (
                json!([user, {"role": "assistant", "tool_calls": []}]),
                "messages[1].tool_calls",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": {}}]),
                "messages[1].tool_calls",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": [1]}]),
                "messages[1].tool_calls[0]",
            ),
            (
                json!([{"role": "user", "content": "x", "tool_calls": [call("a")]}]),
                "messages[0].tool_calls",
            ),
            (
                with_call(&|c| c["id"] = json!(1)),
                "messages[1].tool_calls[0].id",
            ),
            (
                with_call(&|c| c["type"] = json!("code")),
                "messages[1].tool_calls[0].type",
            ),
            (
                with_call(&|c| c["function"] = json!("f")),
                "messages[1].tool_calls[0].function",
            ),
            (
                with_call(&|c| c["function"]["name"] = json!(null)),
                "messages[1].tool_calls[0].function.name",
            ),
            (
                with_call(&|c| c["function"]["arguments"] = json!({})),
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                json!([user, asst, {"role": "tool", "content": "x"}]),
                "messages[2].tool_call_id",
            ),
            (
                json!([user, asst, {"role": "tool", "content": "x", "tool_call_id": 1}]),
                "messages[2].tool_call_id",
            ),
            (
                json!([user, asst, {"role": "tool", "content": "x", "tool_call_id": "z"}]),
                "messages[2].tool_call_id",
            ),
            (
                json!([user, asst, {"role": "tool", "tool_call_id": "a"}]),
                "messages[2].content",
            ),
            (
                json!([user, {"role": "tool", "content": "x", "tool_call_id": "a"}]),
                "messages[1].role",
            ),
        ];
        for (msgs, want) in cases {
            assert_eq!(param_of(msgs.clone()), want, "{msgs}");
        }
    }
}
