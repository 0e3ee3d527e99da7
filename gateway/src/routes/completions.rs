//! `POST /v1/completions` (legacy), including `echo` + `logprobs` scoring of the prompt itself,
//! which is how evaluation harnesses score text against a model or adapter.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use loraplex_models::Tokenizer;

use crate::error::ApiError;
use crate::extract::{ApiJson, RequestId};
use crate::generation::{self, ChoiceResult};
use crate::logprobs::Tokens;
use crate::routed::{self, attributes, Routed};
use crate::sse::{self, CompletionChunks, Head};
use crate::state::AppState;
use crate::validate::{self, Prompts, Reply, ValidCompletion};
use crate::wire::{Completion, CompletionChoice, CompletionRequest, Usage};

pub async fn completions(
    State(st): State<AppState>,
    headers: HeaderMap,
    id: Option<Extension<RequestId>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let attrs = attributes(
        &headers,
        req.sampling.user.as_deref(),
        req.sampling.metadata.as_ref(),
    );
    let (model, assignment) = st.route(&req.model, &attrs)?;
    let ValidCompletion {
        mut requests,
        reply,
        prompts,
    } = validate::completion(
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
        Routed::new(&st, a, &mut requests, "completions", reply.stream, id)
    });
    let head = Head::new("cmpl", &reply, &st.fingerprint);
    let (all, named) = routed::submit(&st, requests, routed, &head.id)?;
    let mut resp = if reply.stream {
        let writer = CompletionChunks::new(head, st.model.clone(), reply, prompts);
        sse::respond(writer, all)
    } else {
        let results = generation::collect(all, choices, st.cfg.request_timeout).await?;
        let body = completion(&head, &reply, &st.model.tokenizer, &prompts, results);
        Json(body).into_response()
    };
    resp.headers_mut().extend(named);
    Ok(resp)
}

/// The non-streamed body.
fn completion(
    head: &Head,
    reply: &Reply,
    tok: &Tokenizer,
    prompts: &Prompts,
    results: Vec<ChoiceResult>,
) -> Completion {
    let tokens = Tokens::new(tok, reply);
    let prompt_tokens = prompts.tokens();
    let completion_tokens = results.iter().map(|r| r.usage.completion_tokens).sum();
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let prompt = prompts.of_choice(index);
            let mut text = String::new();
            if prompts.echo {
                text = tok.decode(prompt, false).unwrap_or_default();
            }
            text.push_str(&r.text);
            let echoed = prompts
                .echo
                .then(|| (prompt, r.prompt_logprobs.as_deref().unwrap_or_default()));
            CompletionChoice {
                index,
                text,
                logprobs: reply
                    .logprobs
                    .then(|| tokens.completion(echoed, &r.logprobs)),
                finish_reason: Some(r.finish.map(|f| f.as_str()).unwrap_or("length")),
            }
        })
        .collect();
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    head.completion(choices, Some(usage))
}
