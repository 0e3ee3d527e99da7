//! `POST /v1/shadow/score`'s request and response as they are on the wire (never validated
//! here; `routes::shadow_score` validates).

use std::collections::HashMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::summary::Summary;
use crate::wire::{Message, Prompt};

/// The request. `completion` has `prompt`'s shapes: a string, strings, ids, or lists of ids.
#[derive(Debug, Clone, Deserialize)]
pub struct ScoreRequest {
    /// The models to score under: the base id, adapter names.
    #[serde(default)]
    pub models: Vec<String>,
    pub prompt: Option<Prompt>,
    pub messages: Option<Vec<Message>>,
    pub completion: Option<Prompt>,
    /// Alternatives to return per token (0..=20); none returned when absent.
    pub top_logprobs: Option<i64>,
    /// A model whose scores of the same tokens the others' `ppl_ratio` and `kl` compare with.
    pub reference: Option<String>,
    #[serde(flatten)]
    pub unknown: HashMap<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreResponse {
    pub object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Model by model, in the request's order; within a model, completion by completion.
    pub results: Vec<ScoreResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreResult {
    pub model: String,
    pub completion_index: usize,
    /// Each completion token's text.
    pub tokens: Vec<String>,
    pub token_ids: Vec<u32>,
    pub token_logprobs: Vec<f32>,
    /// Per token, the most likely alternatives (OpenAI's legacy shape, most likely first), when
    /// asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<IndexMap<String, f32>>>,
    #[serde(flatten)]
    pub summary: Summary,
}
