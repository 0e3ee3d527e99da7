//! OpenAI wire types, exactly as clients send and expect them. Nothing here is validated: the
//! `validate` module turns requests into the runtime's types, and nothing past it sees these.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `stop`: a string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

/// A chat message. Every field is taken as JSON as it came, so that validation (not serde)
/// refuses what is wrong and names the field (`messages[2].content`, ...).
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: Option<Value>,
    /// A string or a list of parts (`{"type": "text", "text": ...}`).
    pub content: Option<Value>,
    pub name: Option<Value>,
    /// An assistant turn's calls: `[{"id", "type": "function", "function": {"name", "arguments"}}]`.
    pub tool_calls: Option<Value>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<Value>,
}

/// A chat request's tool fields, taken as JSON for the same reason as [`Message`]'s.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ToolFields {
    /// `[{"type": "function", "function": {"name", "description", "parameters", "strict"}}]`.
    pub tools: Option<Value>,
    /// `"none"`, `"auto"`, `"required"` or `{"type": "function", "function": {"name"}}`.
    pub tool_choice: Option<Value>,
    /// Whether a turn may call several tools (OpenAI's default: true).
    pub parallel_tool_calls: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints (OpenAI's plus vLLM's extras).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<StringOrList>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub user: Option<String>,
    /// OpenAI's key-value tags of a request; a segmented route may pick its target by one.
    pub metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub stop_token_ids: Option<Vec<u32>>,
    /// vLLM's extension: logprob tokens as `token_id:<id>` (exact ids for evaluation clients).
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
}

/// Output constraints both endpoints take: OpenAI's `response_format`, vLLM's `structured_outputs`
/// (vLLM ≥ 0.10) and its older `guided_*` fields. Kept as raw JSON: `validate::structured` parses
/// them, so that a malformed one is refused naming the exact field, in our words, not serde's.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ConstraintFields {
    pub response_format: Option<Value>,
    pub structured_outputs: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_grammar: Option<Value>,
    pub guided_whitespace_pattern: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(flatten)]
    pub constraints: ConstraintFields,
    #[serde(flatten)]
    pub tools: ToolFields,
    /// Everything else: accepted and ignored, as vLLM does (logged).
    #[serde(flatten)]
    pub unknown: HashMap<String, Value>,
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(flatten)]
    pub constraints: ConstraintFields,
    #[serde(flatten)]
    pub unknown: HashMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// Null when the turn only called tools.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// A tool call of a reply. `arguments` is a JSON object as a string, as OpenAI sends it.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A piece of a streamed tool call: the first names it (`id`, `type`, `function.name`, empty
/// `arguments`), the next carry `function.arguments` fragments; `index` ties them together.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Legacy completions logprobs: parallel arrays.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    /// Most likely first, as OpenAI writes them (a `HashMap` would write them in any order).
    pub top_logprobs: Vec<Option<IndexMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Option<String>,
    pub max_model_len: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// An adapter as the admin API shows it. Fields from the store's manifest are absent for
/// adapters given by `--lora-modules`/`--adapter-dir`, which the store does not hold.
#[derive(Debug, Serialize)]
pub struct AdapterCard {
    pub id: String,
    pub object: &'static str,
    /// `store` (uploaded or pulled, survives restarts) or `local` (from a start-up flag).
    pub source: &'static str,
    pub path: Option<String>,
    pub version: Option<u64>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub rank: Option<usize>,
    pub targets: Vec<String>,
    pub base_model: Option<String>,
    pub created: Option<u64>,
    pub description: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// In the engine's active tier now.
    pub resident: bool,
    /// Completion requests served since start-up.
    pub requests: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionCard>,
}

#[derive(Debug, Serialize)]
pub struct VersionCard {
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    pub rank: usize,
    pub created: u64,
    pub description: Option<String>,
}

impl From<&loraplex_adapters::Manifest> for VersionCard {
    fn from(m: &loraplex_adapters::Manifest) -> Self {
        Self {
            version: m.version,
            sha256: m.sha256.clone(),
            size: m.size,
            rank: m.rank,
            created: m.created,
            description: m.description.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AdapterList {
    pub object: &'static str,
    pub data: Vec<AdapterCard>,
}
