//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;

use crate::error::ApiError;
use crate::extract::{ApiJson, RequestId};
use crate::generation::{self, ChoiceResult};
use crate::logprobs::Tokens;
use crate::routed::{self, attributes, Routed};
use crate::sse::{self, ChatChunks, Head};
use crate::state::AppState;
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
        let writer = ChatChunks::new(head, st.model.clone(), reply, choices);
        sse::respond(writer, all)
    } else {
        let results = generation::collect(all, choices, st.cfg.request_timeout).await?;
        let tokens = Tokens::new(&st.model.tokenizer, &reply);
        let body = completion(head, &reply, tokens, prompt_tokens, results);
        Json(body).into_response()
    };
    resp.headers_mut().extend(named);
    Ok(resp)
}

/// The non-streamed body.
fn completion(
    head: Head,
    reply: &Reply,
    tokens: Tokens<'_>,
    prompt_tokens: usize,
    results: Vec<ChoiceResult>,
) -> ChatCompletion {
    let completion_tokens = results.iter().map(|r| r.usage.completion_tokens).sum();
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| ChatChoice {
            index,
            logprobs: reply.logprobs.then(|| tokens.chat(&r.logprobs)),
            message: AssistantMessage {
                role: "assistant",
                content: r.text,
            },
            finish_reason: r.finish.map(|f| f.as_str()).unwrap_or("stop"),
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
