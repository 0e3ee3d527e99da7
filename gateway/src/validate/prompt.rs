//! Prompts → token ids: chat messages through the model's template, completion prompts as text
//! or ids. Whatever the template or the tokenizer refuses is the client's error, named by field.

use loraplex_models::{ChatMessage, LoadedModel, Tokenizer};

use crate::error::ApiError;
use crate::wire::{Content, Message, Prompt};

/// The conversation rendered by the model's template (opening the assistant's turn), tokenized.
pub fn chat(model: &LoadedModel, msgs: &[Message]) -> Result<Vec<u32>, ApiError> {
    let msgs = messages(msgs)?;
    let text = model
        .render_chat(&msgs, true)
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

/// Chat messages → the template's input; text parts are joined, other parts refused.
fn messages(msgs: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!(
                            "unsupported role {other:?} (system, developer, user or assistant)"
                        ),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content[{j}]"),
                                    "only text content parts are supported",
                                ))
                            }
                        }
                    }
                    s
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}
