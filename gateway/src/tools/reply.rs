//! Read output in OpenAI's reply shapes: the non-streamed message, streamed deltas, and the
//! finish reason.

use loraplex_runtime::FinishReason;

use super::parser::Piece;
use super::Parsed;
use crate::wire::{AssistantMessage, Delta, FunctionCall, FunctionDelta, ToolCall, ToolCallDelta};

/// `tool_calls` when the output called a tool and ended on its own (a call cut by `max_tokens`
/// stays `length`).
pub fn finish_reason(called: bool, reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop if called => "tool_calls",
        other => other.as_str(),
    }
}

/// The assistant message of a non-streamed reply: `content` null when the output only called
/// tools.
pub fn message(p: Parsed) -> AssistantMessage {
    let content = if p.calls.is_empty() || !p.content.trim().is_empty() {
        Some(p.content)
    } else {
        None
    };
    AssistantMessage {
        role: "assistant",
        content,
        tool_calls: p
            .calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                kind: "function",
                function: FunctionCall {
                    name: c.name,
                    arguments: c.arguments,
                },
            })
            .collect(),
    }
}

/// The stream delta of one piece: content, a call's first delta (index, id, type, name and
/// empty arguments, as OpenAI sends it), or an arguments fragment.
pub fn delta(piece: Piece) -> Delta {
    let call = |d: ToolCallDelta| Delta {
        tool_calls: vec![d],
        ..Delta::default()
    };
    match piece {
        Piece::Content(text) => Delta {
            content: Some(text),
            ..Delta::default()
        },
        Piece::Call { index, id, name } => call(ToolCallDelta {
            index,
            id: Some(id),
            kind: Some("function"),
            function: FunctionDelta {
                name: Some(name),
                arguments: Some(String::new()),
            },
        }),
        Piece::Arguments { index, fragment } => call(ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: FunctionDelta {
                name: None,
                arguments: Some(fragment),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tools::parse;

    #[test]
    fn messages_carry_calls_and_null_content() {
        let out = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let m = serde_json::to_value(message(parse(out))).unwrap();
        let id = m["tool_calls"][0]["id"].clone();
        assert_eq!(
            m,
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]})
        );
        let m = serde_json::to_value(message(parse(&format!("Calling.\n{out}")))).unwrap();
        assert_eq!(m["content"], "Calling.\n");
        assert_eq!(m["tool_calls"][0]["function"]["name"], "f");
        // Text only: content, no tool_calls field.
        let m = serde_json::to_value(message(parse("Hi."))).unwrap();
        assert_eq!(m, json!({"role": "assistant", "content": "Hi."}));
    }

    #[test]
    fn deltas_have_openais_shape() {
        let d = |p| serde_json::to_value(delta(p)).unwrap();
        assert_eq!(
            d(Piece::Call {
                index: 1,
                id: "call_x".into(),
                name: "f".into()
            }),
            json!({"tool_calls": [{"index": 1, "id": "call_x", "type": "function",
                "function": {"name": "f", "arguments": ""}}]})
        );
        assert_eq!(
            d(Piece::Arguments {
                index: 1,
                fragment: "{\"a\"".into()
            }),
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"a\""}}]})
        );
        assert_eq!(d(Piece::Content("hi".into())), json!({"content": "hi"}));
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(finish_reason(true, FinishReason::Stop), "tool_calls");
        assert_eq!(finish_reason(false, FinishReason::Stop), "stop");
        assert_eq!(finish_reason(true, FinishReason::Length), "length");
    }
}
