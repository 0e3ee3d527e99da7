//! Chat templates (the Jinja `chat_template` shipped with a model), rendered with minijinja.
//!
//! Templates get what transformers' `apply_chat_template` gives them: `messages` (with
//! `tool_calls` whose arguments are objects, and `tool_call_id`), `tools`,
//! `add_generation_prompt`, `bos_token`, `eos_token`. A template that never mentions `tools`
//! cannot show them to the model: `LoadedModel::render_chat` first rewrites the conversation for
//! it (the `chat_tools` module) into plain system, user and assistant turns.

use minijinja::{Environment, ErrorKind, Value};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::error::{ModelError, Result};

/// One message of a conversation, after the gateway has flattened content parts to text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    /// `None` only for an assistant turn that called tools and said nothing.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The tools an assistant turn called.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(content.into()),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A function call of an assistant turn. Templates see it in OpenAI's shape,
/// `{"id", "type": "function", "function": {"name", "arguments"}}`, with `arguments` an object
/// (as vLLM and transformers hand them over), not the JSON string the API carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

impl Serialize for ToolCall {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        struct Function<'a>(&'a ToolCall);
        impl Serialize for Function<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("name", &self.0.name)?;
                m.serialize_entry("arguments", &self.0.arguments)?;
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("type", "function")?;
        m.serialize_entry("function", &Function(self))?;
        m.end()
    }
}

/// A compiled chat template. Rendering is pure: the same messages always give the same text.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    supports_tools: bool,
}

const NAME: &str = "chat";

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        // HF templates are Python-flavoured Jinja: `.strip()`, `.startswith()`, `.items()` ...
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| ModelError::ChatTemplate(format!("template does not compile: {e}")))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            // What transformers' own check looks for: a template that reads `tools` renders
            // them (and, with them, tool calls and tool results) its own way.
            supports_tools: source.contains("tools"),
        })
    }

    /// Whether the template renders `tools` itself. When it does not, tools, tool calls and
    /// tool results must be rewritten in the `chat_tools` module's format before rendering.
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// Renders the conversation as the template does, with the functions the model may call
    /// (`tools`, each an OpenAI tool object). `add_generation_prompt` opens the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        let tools = tools.filter(|t| !t.is_empty());
        tmpl.render(minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| ModelError::ChatTemplate(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn template(src: &str) -> ChatTemplate {
        ChatTemplate::new(src, String::new(), String::new()).unwrap()
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = template(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok",
        );
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")], None, true)
                .unwrap(),
            "ok"
        );
        let err = t
            .render(&[ChatMessage::new("system", "x")], None, true)
            .unwrap_err();
        assert!(err.to_string().contains("first must be user"));
    }

    #[test]
    fn python_string_methods_work() {
        let t = template("{{ messages[0].content.strip() }}");
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi ")], None, false)
                .unwrap(),
            "hi"
        );
    }

    /// A template that renders tools the way Hermes-style templates do: it sees the tool
    /// objects, calls with object arguments, `tool_call_id` and a null content.
    /// (Block tags eat the newline after them: newlines are written as expressions.)
    const TOOL_TEMPLATE: &str = "{% if tools %}{% for t in tools %}[{{ t.function.name }}]{% endfor %}{{ '\\n' }}{% endif %}\
{% for m in messages %}{{ m.role }}:\
{% if m.content is none %}<none>{% else %}{{ m.content }}{% endif %}\
{% for c in m.tool_calls %} call {{ c.id }} {{ c.type }} {{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}\
{% if m.tool_call_id is defined %} for {{ m.tool_call_id }}{% endif %}{{ '\\n' }}{% endfor %}";

    #[test]
    fn a_template_with_tools_sees_them_and_the_calls_as_objects() {
        let t = template(TOOL_TEMPLATE);
        assert!(t.supports_tools());
        let tools =
            [json!({"type": "function", "function": {"name": "weather", "parameters": {}}})];
        let msgs = [
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "weather".into(),
                    arguments: json!({"city": "Paris"}),
                }],
                ..ChatMessage::new("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("call_1".into()),
                ..ChatMessage::new("tool", "sunny")
            },
        ];
        let text = t.render(&msgs, Some(&tools), false).unwrap();
        assert_eq!(
            text,
            "[weather]\nuser:Weather in Paris?\nassistant:<none> call call_1 function weather(Paris)\ntool:sunny for call_1\n"
        );
        // Without tools the template's own `if tools` is false.
        let text = t.render(&msgs[..1], None, false).unwrap();
        assert_eq!(text, "user:Weather in Paris?\n");
    }
}
