//! The default rendering of tools for templates that cannot render them (SmolLM2's, and every
//! template that never reads `tools`): the Hermes / Qwen 2.5 convention, which many instruction
//! tuned models have seen and which needs no special tokens.
//!
//! - The tools are listed, one JSON object per line, inside `<tools></tools>` in a system
//!   block, with the format of a call; the block follows the first system message's text (or is
//!   the system message when the conversation has none).
//! - A call is `<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>`; an assistant
//!   turn's calls are written so, after its text, one per call, separated by a newline.
//! - Tool results are user turns: each result inside `<tool_response>\n...\n</tool_response>`,
//!   consecutive results in one turn.
//!
//! The gateway constrains and parses model output in the same format ([`TOOL_CALL_OPEN`],
//! [`TOOL_CALL_CLOSE`], JSON written by [`json_text`]).

use serde::Serialize;
use serde_json::ser::Formatter;
use serde_json::Value;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::Result;

/// Opens a tool call in model output.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closes a tool call in model output.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
const TOOL_RESPONSE_OPEN: &str = "<tool_response>";
const TOOL_RESPONSE_CLOSE: &str = "</tool_response>";

/// JSON as Python's `json.dumps` writes it (`{"a": 1, "b": [1, 2]}`), the form chat templates
/// show and the gateway's grammar makes models write.
pub fn json_text(v: &impl Serialize) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    v.serialize(&mut ser).expect("JSON values serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

struct Spaced;

impl Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// One call as the model writes it (no surrounding newlines).
pub fn tool_call_text(name: &str, arguments: &Value) -> String {
    format!(
        "{TOOL_CALL_OPEN}\n{{\"name\": {}, \"arguments\": {}}}\n{TOOL_CALL_CLOSE}",
        json_text(&name),
        json_text(arguments)
    )
}

/// The system block that lists `tools` and says how to call them.
fn tools_block(tools: &[Value]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more of the functions below to help with the user's request. \
         Their signatures are inside <tools></tools> XML tags:\n<tools>\n",
    );
    for t in tools {
        s.push_str(&json_text(t));
        s.push('\n');
    }
    s.push_str(
        "</tools>\n\nTo call a function, answer with a JSON object holding its name and its \
         arguments inside <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// Renders through `t`: as it is where the template renders tools itself, else rewritten by
/// [`plain_conversation`] first.
pub fn render(
    t: &ChatTemplate,
    messages: &[ChatMessage],
    tools: Option<&[Value]>,
    add_generation_prompt: bool,
) -> Result<String> {
    if t.supports_tools() {
        t.render(messages, tools, add_generation_prompt)
    } else {
        t.render(
            &plain_conversation(messages, tools),
            None,
            add_generation_prompt,
        )
    }
}

/// The conversation as plain system, user and assistant turns with text content (see the
/// module's documentation). Without tools, tool calls or tool results it is `messages` as they
/// are.
pub fn plain_conversation(messages: &[ChatMessage], tools: Option<&[Value]>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    if let Some(tools) = tools.filter(|t| !t.is_empty()) {
        let block = tools_block(tools);
        match messages.first() {
            Some(m) if m.role == "system" => {
                let text = m.content.as_deref().unwrap_or_default();
                let content = if text.is_empty() {
                    block
                } else {
                    format!("{text}\n\n{block}")
                };
                out.push(ChatMessage {
                    content: Some(content),
                    ..m.clone()
                });
                rest = &messages[1..];
            }
            _ => out.push(ChatMessage::new("system", block)),
        }
    }
    let mut previous_was_tool = false;
    for m in rest {
        match m.role.as_str() {
            "tool" => {
                let result = format!(
                    "{TOOL_RESPONSE_OPEN}\n{}\n{TOOL_RESPONSE_CLOSE}",
                    m.content.as_deref().unwrap_or_default()
                );
                match out.last_mut() {
                    Some(last) if previous_was_tool => {
                        let content = last.content.get_or_insert_with(String::new);
                        content.push('\n');
                        content.push_str(&result);
                    }
                    _ => out.push(ChatMessage::new("user", result)),
                }
                previous_was_tool = true;
                continue;
            }
            "assistant" if !m.tool_calls.is_empty() => {
                let mut parts: Vec<String> = m
                    .content
                    .iter()
                    .filter(|c| !c.is_empty())
                    .cloned()
                    .collect();
                parts.extend(
                    m.tool_calls
                        .iter()
                        .map(|c| tool_call_text(&c.name, &c.arguments)),
                );
                out.push(ChatMessage {
                    content: Some(parts.join("\n")),
                    tool_calls: Vec::new(),
                    ..m.clone()
                });
            }
            _ => out.push(ChatMessage {
                content: Some(m.content.clone().unwrap_or_default()),
                ..m.clone()
            }),
        }
        previous_was_tool = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::chat::ToolCall;

    fn tool(name: &str) -> Value {
        json!({"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    }

    #[test]
    fn json_text_is_written_with_python_separators() {
        let v = json!({"a": "x\ny", "b": [1, 2, {"c": null}]});
        assert_eq!(json_text(&v), r#"{"a": "x\ny", "b": [1, 2, {"c": null}]}"#);
        assert_eq!(json_text(&json!({})), "{}");
        assert_eq!(json_text(&json!([])), "[]");
    }

    #[test]
    fn tools_join_the_first_system_message() {
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Weather?"),
        ];
        let out = plain_conversation(&msgs, Some(&[tool("weather"), tool("time")]));
        assert_eq!(out.len(), 2);
        let sys = out[0].content.as_deref().unwrap();
        assert!(sys.starts_with("Be brief.\n\n# Tools\n"), "{sys}");
        assert!(sys.contains(&format!(
            "<tools>\n{}\n{}\n</tools>",
            json_text(&tool("weather")),
            json_text(&tool("time"))
        )));
        assert!(sys.ends_with("<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"));
        assert_eq!(out[1], msgs[1]);
    }

    #[test]
    fn without_a_system_message_the_tools_are_one() {
        let msgs = [ChatMessage::new("user", "Weather?")];
        let out = plain_conversation(&msgs, Some(&[tool("weather")]));
        assert_eq!(out[0].role, "system");
        assert!(out[0].content.as_deref().unwrap().starts_with("# Tools\n"));
        assert_eq!(out[1], msgs[0]);
        // No tools (or an empty list): nothing is added.
        assert_eq!(plain_conversation(&msgs, None), msgs);
        assert_eq!(plain_conversation(&msgs, Some(&[])), msgs);
    }

    #[test]
    fn calls_and_results_become_text_turns() {
        let call = |id: &str, city: &str| ToolCall {
            id: id.into(),
            name: "weather".into(),
            arguments: json!({"city": city}),
        };
        let msgs = [
            ChatMessage::new("user", "Weather in Paris and Rome?"),
            ChatMessage {
                content: None,
                tool_calls: vec![call("a", "Paris"), call("b", "Rome")],
                ..ChatMessage::new("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("a".into()),
                ..ChatMessage::new("tool", "sunny")
            },
            ChatMessage {
                tool_call_id: Some("b".into()),
                ..ChatMessage::new("tool", "rain")
            },
            ChatMessage {
                tool_calls: vec![call("c", "Oslo")],
                ..ChatMessage::new("assistant", "Checking Oslo too.")
            },
            ChatMessage {
                tool_call_id: Some("c".into()),
                ..ChatMessage::new("tool", "snow")
            },
        ];
        let out = plain_conversation(&msgs, None);
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(
            out[1].content.as_deref().unwrap(),
            "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>"
        );
        assert!(out[1].tool_calls.is_empty());
        assert_eq!(
            out[2].content.as_deref().unwrap(),
            "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
        );
        assert_eq!(
            out[3].content.as_deref().unwrap(),
            "Checking Oslo too.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
        );
        assert_eq!(
            out[4].content.as_deref().unwrap(),
            "<tool_response>\nsnow\n</tool_response>"
        );
    }

    #[test]
    fn a_template_without_tools_gets_the_default_rendering() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}",
            String::new(),
            String::new(),
        )
        .unwrap();
        assert!(!t.supports_tools());
        let tools = [json!({"type": "function", "function": {"name": "weather"}})];
        let text = render(&t, &[ChatMessage::new("user", "hi")], Some(&tools), true).unwrap();
        assert!(text.starts_with("<system>"), "{text}");
        let listed = format!("<tools>\n{}\n</tools>", json_text(&tools[0]));
        assert!(text.contains(&listed), "{text}");
        assert!(text.ends_with("</system><user>hi</user>"), "{text}");
        // No tools, no tool messages: the conversation is rendered as it is.
        let text = render(&t, &[ChatMessage::new("user", "hi")], None, true).unwrap();
        assert_eq!(text, "<user>hi</user>");
    }
}
