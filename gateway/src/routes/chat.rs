//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use loraplex_runtime::FinishReason;

use crate::error::ApiError;
use crate::extract::{ApiJson, RequestId};
use crate::generation::{self, ChoiceResult};
use crate::logprobs::Tokens;
use crate::routed::{self, attributes, Routed};
use crate::sse::{self, ChatChunks, Head};
use crate::state::AppState;
use crate::tools;
use crate::validate::{self, Reply, ValidChat};
use crate::wire::{AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, Usage};

pub async fn chat(
    State(st): State<AppState>,
    headers: HeaderMap,
    id: Option<Extension<RequestId>>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let attrs = attributes(
        &headers,
        req.sampling.user.as_deref(),
        req.sampling.metadata.as_ref(),
    );
    let (model, assignment) = st.route(&req.model, &attrs)?;
    let ValidChat {
        mut requests,
        reply,
        prompt_tokens,
        tool_calls,
    } = validate::chat(
        req,
        &st.model,
        &st.grammars,
        st.cfg.max_model_len,
        model.adapter(),
    )?;
    model.register(&st);
    let choices = requests.len();
    let routed = assignment.map(|a| {
        let id = id.map(|e| e.0 .0).unwrap_or_default();
        Routed::new(&st, a, &mut requests, "chat", reply.stream, id)
    });
    let head = Head::new("chatcmpl", &reply, &st.fingerprint);
    let (all, named) = routed::submit(&st, requests, routed, &head.id)?;
    let mut resp = if reply.stream {
        let writer = ChatChunks::new(head, st.model.clone(), reply, choices, tool_calls);
        sse::respond(writer, all)
    } else {
        let results = generation::collect(all, choices, st.cfg.request_timeout).await?;
        let tokens = Tokens::new(&st.model.tokenizer, &reply);
        let body = completion(head, &reply, tokens, prompt_tokens, results, tool_calls);
        Json(body).into_response()
    };
    resp.headers_mut().extend(named);
    Ok(resp)
}

/// The non-streamed body; with `tool_calls`, each output is read for calls.
fn completion(
    head: Head,
    reply: &Reply,
    tokens: Tokens<'_>,
    prompt_tokens: usize,
    results: Vec<ChoiceResult>,
    tool_calls: bool,
) -> ChatCompletion {
    let completion_tokens = results.iter().map(|r| r.usage.completion_tokens).sum();
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let finish = r.finish.unwrap_or(FinishReason::Stop);
            let (message, finish_reason) = if tool_calls {
                let parsed = tools::parse(&r.text);
                let called = !parsed.calls.is_empty();
                (tools::message(parsed), tools::finish_reason(called, finish))
            } else {
                let message = AssistantMessage {
                    role: "assistant",
                    content: Some(r.text),
                    tool_calls: Vec::new(),
                };
                (message, finish.as_str())
            };
            ChatChoice {
                index,
                logprobs: reply.logprobs.then(|| tokens.chat(&r.logprobs)),
                message,
                finish_reason,
            }
        })
        .collect();
    ChatCompletion {
        id: head.id,
        object: "chat.completion",
        created: head.created,
        model: head.model,
        system_fingerprint: head.system_fingerprint,
        choices,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    }
}
