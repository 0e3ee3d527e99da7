//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use loraplex_runtime::{GenerationRequest, TokenLogprob};

use crate::app::ApiJson;
use crate::error::ApiError;
use crate::generation::{self, ChoiceEvent};
use crate::state::{new_id, now, AppState};
use crate::validate::{self, MAX_TOP_LOGPROBS};
use crate::wire::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, ChatLogprobs, ChatTokenLogprob, Delta, TopLogprob, Usage,
};

pub async fn chat(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    if !req.unknown.is_empty() {
        tracing::info!(fields = ?req.unknown.keys().collect::<Vec<_>>(), "ignoring unknown request fields");
    }
    let adapter = st.resolve_model(&req.model)?;
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs requires logprobs=true",
            ))
        }
        (false, None) => None,
        (true, None) => Some(0),
        (true, Some(k)) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
        (true, Some(k)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
            ))
        }
    };
    let vocab = st.model.model.config().vocab_size;
    let max_tokens = req.max_completion_tokens.or(req.sampling.max_tokens);
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let v = validate::sampling(&req.sampling, max_tokens, logprobs, vocab)?;
    let msgs = validate::messages(&req.messages)?;
    let text = st
        .model
        .render_chat(&msgs, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let prompt = st
        .model
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let limit = st.cfg.max_model_len;
    let max_tokens = v
        .max_tokens
        .unwrap_or_else(|| limit.saturating_sub(prompt.len()));
    if prompt.len() + max_tokens > limit || max_tokens == 0 {
        return Err(ApiError::ContextLength {
            prompt: prompt.len(),
            max_tokens,
            context: limit,
        });
    }
    let reqs = (0..v.n)
        .map(|i| {
            let mut params = validate::params_for_choice(&v.params, i);
            params.max_tokens = max_tokens;
            GenerationRequest {
                adapter: adapter.clone(),
                ..GenerationRequest::new(prompt.clone(), params)
            }
        })
        .collect();
    let streams = generation::submit_all(&st, reqs)?;
    let (id, created, model) = (new_id("chatcmpl"), now(), req.model.clone());
    let as_ids = req.sampling.return_tokens_as_token_ids;
    if v.stream {
        return Ok(stream_response(
            st,
            streams,
            id,
            created,
            model,
            v.include_usage,
            logprobs.is_some(),
            as_ids,
        ));
    }
    let results = generation::collect(streams, st.cfg.request_timeout).await?;
    let mut usage = Usage {
        prompt_tokens: prompt.len(),
        completion_tokens: 0,
        total_tokens: 0,
    };
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            usage.completion_tokens += r.usage.completion_tokens;
            ChatChoice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: r.text,
                },
                logprobs: logprobs.map(|_| chat_logprobs(&st, &r.logprobs, as_ids)),
                finish_reason: r.finish.map(|f| f.as_str()).unwrap_or("stop"),
            }
        })
        .collect();
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    let body = ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model,
        system_fingerprint: st.fingerprint.clone(),
        choices,
        usage,
    };
    Ok(Json(body).into_response())
}

pub fn chat_logprobs(st: &AppState, lps: &[TokenLogprob], as_ids: bool) -> ChatLogprobs {
    let entry = |id: u32, lp: f32| {
        let token = token_string(st, id, as_ids);
        TopLogprob {
            bytes: token.as_bytes().to_vec(),
            token,
            logprob: lp,
        }
    };
    ChatLogprobs {
        content: lps
            .iter()
            .map(|l| {
                let e = entry(l.id, l.logprob);
                ChatTokenLogprob {
                    token: e.token,
                    logprob: e.logprob,
                    bytes: e.bytes,
                    top_logprobs: l.top.iter().map(|&(id, lp)| entry(id, lp)).collect(),
                }
            })
            .collect(),
    }
}

#[allow(clippy::too_many_arguments)]
fn stream_response(
    st: AppState,
    streams: Vec<loraplex_runtime::TokenStream>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    want_logprobs: bool,
    as_ids: bool,
) -> Response {
    let n = streams.len();
    let chunk = {
        let (id, model, fp) = (id.clone(), model.clone(), st.fingerprint.clone());
        move |choices: Vec<ChatChunkChoice>, usage: Option<Usage>| {
            let c = ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk",
                created,
                model: model.clone(),
                system_fingerprint: fp.clone(),
                choices,
                usage,
            };
            Event::default().data(serde_json::to_string(&c).expect("chunks serialize"))
        }
    };
    let first: Vec<Event> = (0..n)
        .map(|index| {
            chunk(
                vec![ChatChunkChoice {
                    index,
                    delta: Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    },
                    logprobs: None,
                    finish_reason: None,
                }],
                None,
            )
        })
        .collect();
    let st2 = st.clone();
    let chunk2 = chunk.clone();
    let mut usage = Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
    };
    let events = generation::merged(streams, st.cfg.request_timeout);
    generation::sse_response(first, events, move |item| match item {
        Some((index, ChoiceEvent::Token { text, logprob, .. })) => {
            if text.is_empty() && logprob.is_none() {
                return vec![];
            }
            let lp = want_logprobs.then(|| chat_logprobs(&st2, logprob.as_slice(), as_ids));
            vec![chunk2(
                vec![ChatChunkChoice {
                    index,
                    delta: Delta {
                        role: None,
                        content: Some(text),
                    },
                    logprobs: lp,
                    finish_reason: None,
                }],
                None,
            )]
        }
        Some((index, ChoiceEvent::Finished { reason, usage: u })) => {
            usage.prompt_tokens = u.prompt_tokens;
            usage.completion_tokens += u.completion_tokens;
            vec![chunk2(
                vec![ChatChunkChoice {
                    index,
                    delta: Delta::default(),
                    logprobs: None,
                    finish_reason: Some(reason.as_str()),
                }],
                None,
            )]
        }
        Some(_) => vec![],
        None if include_usage => {
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
            vec![chunk2(vec![], Some(usage.clone()))]
        }
        None => vec![],
    })
}

/// A token as logprobs show it: its text, or `token_id:<id>` when the client asked for ids.
pub fn token_string(st: &AppState, id: u32, as_ids: bool) -> String {
    if as_ids {
        format!("token_id:{id}")
    } else {
        st.model.tokenizer.token_text(id)
    }
}
