//! Prompts → token ids: chat messages through the model's template, completion prompts as text
//! or ids. Whatever the template or the tokenizer refuses is the client's error, named by field.

use loraplex_models::{LoadedModel, Tokenizer};
use serde_json::Value;

use super::messages::messages;
use crate::error::ApiError;
use crate::wire::{Message, Prompt};

/// The conversation rendered by the model's template (opening the assistant's turn) with the
/// functions the model may call, tokenized.
pub fn chat(
    model: &LoadedModel,
    msgs: &[Message],
    tools: Option<&[Value]>,
) -> Result<Vec<u32>, ApiError> {
    let msgs = messages(msgs)?;
    let text = model
        .render_chat(&msgs, tools, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let ids = encode(&model.tokenizer, "messages", &text, false)?;
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "the conversation renders to no tokens",
        ));
    }
    Ok(ids)
}

/// Strings are tokenized as raw prompts (the model's BOS rule applies); id lists are checked
/// against the vocabulary. One list of ids per prompt.
pub fn completion(tok: &Tokenizer, p: &Prompt, vocab: usize) -> Result<Vec<Vec<u32>>, ApiError> {
    let text = |s: &str| encode(tok, "prompt", s, true);
    let ids = |v: &[i64]| -> Result<Vec<u32>, ApiError> {
        v.iter()
            .map(|&t| {
                if t >= 0 && (t as usize) < vocab {
                    Ok(t as u32)
                } else {
                    Err(ApiError::invalid(
                        "prompt",
                        format!("token id {t} is outside the vocabulary of {vocab}"),
                    ))
                }
            })
            .collect()
    };
    let out: Vec<Vec<u32>> = match p {
        Prompt::Text(s) => vec![text(s)?],
        Prompt::Texts(v) => v.iter().map(|s| text(s)).collect::<Result<_, _>>()?,
        Prompt::Tokens(v) => vec![ids(v)?],
        Prompt::TokenLists(v) => v.iter().map(|x| ids(x)).collect::<Result<_, _>>()?,
    };
    if out.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt list is empty"));
    }
    Ok(out)
}

/// `raw` applies the model's BOS rule (completion prompts); rendered chats carry their own.
fn encode(tok: &Tokenizer, param: &str, text: &str, raw: bool) -> Result<Vec<u32>, ApiError> {
    let what = if raw {
        "prompt"
    } else {
        "rendered conversation"
    };
    tok.encode(text, raw)
        .map_err(|e| ApiError::invalid(param, format!("cannot tokenize the {what}: {e}")))
}
