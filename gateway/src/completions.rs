//! `POST /v1/completions` (legacy), including `echo` + `logprobs` scoring of the prompt itself,
//! which is how evaluation harnesses score text against a model or adapter.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use loraplex_runtime::{GenerationRequest, TokenLogprob};

use crate::app::ApiJson;
use crate::chat::token_string;
use crate::error::ApiError;
use crate::generation::{self, ChoiceEvent};
use crate::state::{new_id, now, AppState};
use crate::validate::{self, MAX_TOP_LOGPROBS};
use crate::wire::{
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Prompt, Usage,
};

/// Default `max_tokens` of the legacy endpoint (OpenAI's).
const DEFAULT_MAX_TOKENS: usize = 16;

pub async fn completions(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    if !req.unknown.is_empty() {
        tracing::info!(fields = ?req.unknown.keys().collect::<Vec<_>>(), "ignoring unknown request fields");
    }
    let adapter = st.resolve_model(&req.model)?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
            ))
        }
    };
    let vocab = st.model.model.config().vocab_size;
    let v = validate::sampling(&req.sampling, req.sampling.max_tokens, logprobs, vocab)?;
    if let Some(b) = req.best_of {
        if b as usize != v.n {
            return Err(ApiError::invalid(
                "best_of",
                "best_of other than n is not supported",
            ));
        }
    }
    if req.echo && v.stream && logprobs.is_some() {
        return Err(ApiError::invalid(
            "echo",
            "echo with logprobs is not supported when streaming",
        ));
    }
    let prompts = prompt_ids(&st, &req.prompt, vocab)?;
    let max_tokens = v.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    let limit = st.cfg.max_model_len;
    let mut reqs = Vec::new();
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        if p.len() + max_tokens > limit {
            return Err(ApiError::ContextLength {
                prompt: p.len(),
                max_tokens,
                context: limit,
            });
        }
        for i in 0..v.n {
            let mut params = validate::params_for_choice(&v.params, i);
            params.max_tokens = max_tokens;
            reqs.push(GenerationRequest {
                adapter: adapter.clone(),
                prompt_logprobs: if req.echo { logprobs } else { None },
                ..GenerationRequest::new(p.clone(), params)
            });
        }
    }
    let streams = generation::submit_all(&st, reqs)?;
    let (id, created, model) = (new_id("cmpl"), now(), req.model.clone());
    let as_ids = req.sampling.return_tokens_as_token_ids;
    if v.stream {
        let opts = StreamOpts {
            n: v.n,
            echo: req.echo,
            logprobs,
            include_usage: v.include_usage,
            as_ids,
        };
        return Ok(stream_response(
            st, streams, &prompts, opts, id, created, model,
        ));
    }
    let results = generation::collect(streams, st.cfg.request_timeout).await?;
    let mut usage = Usage {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        completion_tokens: 0,
        total_tokens: 0,
    };
    let tok = &st.model.tokenizer;
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            usage.completion_tokens += r.usage.completion_tokens;
            let prompt = &prompts[index / v.n];
            let mut text = String::new();
            let mut lp = CompletionLogprobs::default();
            if req.echo {
                text = tok.decode(prompt, false).unwrap_or_default();
                if logprobs.is_some() {
                    let scored = r.prompt_logprobs.clone().unwrap_or_default();
                    push_logprobs(&st, &mut lp, 0, prompt[0], None, as_ids);
                    for l in &scored {
                        let offset = next_offset(&lp);
                        push_logprobs(&st, &mut lp, offset, l.id, Some(l), as_ids);
                    }
                }
            }
            for l in &r.logprobs {
                let offset = next_offset(&lp);
                push_logprobs(&st, &mut lp, offset, l.id, Some(l), as_ids);
            }
            text.push_str(&r.text);
            CompletionChoice {
                index,
                text,
                logprobs: logprobs.map(|_| lp),
                finish_reason: Some(r.finish.map(|f| f.as_str()).unwrap_or("length")),
            }
        })
        .collect();
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(Json(Completion {
        id,
        object: "text_completion",
        created,
        model,
        system_fingerprint: st.fingerprint.clone(),
        choices,
        usage: Some(usage),
    })
    .into_response())
}

/// Strings are tokenized as raw prompts (the model's BOS rule applies); id lists are checked.
fn prompt_ids(st: &AppState, p: &Prompt, vocab: usize) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |s: &str| {
        st.model
            .tokenizer
            .encode(s, true)
            .map_err(|e| ApiError::Internal(e.to_string()))
    };
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
    let out = match p {
        Prompt::Text(s) => vec![encode(s)?],
        Prompt::Texts(v) => v.iter().map(|s| encode(s)).collect::<Result<_, _>>()?,
        Prompt::Tokens(v) => vec![ids(v)?],
        Prompt::TokenLists(v) => v.iter().map(|x| ids(x)).collect::<Result<_, _>>()?,
    };
    if out.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt list is empty"));
    }
    Ok(out)
}

/// Character offset where the next token starts.
fn next_offset(lp: &CompletionLogprobs) -> usize {
    match (lp.text_offset.last(), lp.tokens.last()) {
        (Some(o), Some(t)) => o + t.chars().count(),
        _ => 0,
    }
}

fn push_logprobs(
    st: &AppState,
    lp: &mut CompletionLogprobs,
    offset: usize,
    id: u32,
    l: Option<&TokenLogprob>,
    as_ids: bool,
) {
    lp.tokens.push(token_string(st, id, as_ids));
    lp.text_offset.push(offset);
    lp.token_logprobs.push(l.map(|l| l.logprob));
    lp.top_logprobs.push(l.map(|l| {
        l.top
            .iter()
            .map(|&(t, v)| (token_string(st, t, as_ids), v))
            .collect::<HashMap<_, _>>()
    }));
}

struct StreamOpts {
    n: usize,
    echo: bool,
    logprobs: Option<usize>,
    include_usage: bool,
    as_ids: bool,
}

fn stream_response(
    st: AppState,
    streams: Vec<loraplex_runtime::TokenStream>,
    prompts: &[Vec<u32>],
    opts: StreamOpts,
    id: String,
    created: u64,
    model: String,
) -> Response {
    let StreamOpts {
        n,
        echo,
        logprobs,
        include_usage,
        as_ids,
    } = opts;
    let fp = st.fingerprint.clone();
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let chunk = move |choices: Vec<CompletionChoice>, usage: Option<Usage>| {
        let c = Completion {
            id: id.clone(),
            object: "text_completion",
            created,
            model: model.clone(),
            system_fingerprint: fp.clone(),
            choices,
            usage,
        };
        Event::default().data(serde_json::to_string(&c).expect("chunks serialize"))
    };
    let mut first = Vec::new();
    if echo {
        for index in 0..streams.len() {
            let text = st
                .model
                .tokenizer
                .decode(&prompts[index / n], false)
                .unwrap_or_default();
            first.push(chunk(
                vec![CompletionChoice {
                    index,
                    text,
                    logprobs: None,
                    finish_reason: None,
                }],
                None,
            ));
        }
    }
    let mut completion_tokens = 0;
    let st2 = st.clone();
    let events = generation::merged(streams, st.cfg.request_timeout);
    generation::sse_response(first, events, move |item| match item {
        Some((index, ChoiceEvent::Token { text, id, logprob })) => {
            let lp = logprobs.map(|_| {
                let mut lp = CompletionLogprobs::default();
                push_logprobs(&st2, &mut lp, 0, id, logprob.as_ref(), as_ids);
                lp
            });
            vec![chunk(
                vec![CompletionChoice {
                    index,
                    text,
                    logprobs: lp,
                    finish_reason: None,
                }],
                None,
            )]
        }
        Some((index, ChoiceEvent::Finished { reason, usage })) => {
            completion_tokens += usage.completion_tokens;
            vec![chunk(
                vec![CompletionChoice {
                    index,
                    text: String::new(),
                    logprobs: None,
                    finish_reason: Some(reason.as_str()),
                }],
                None,
            )]
        }
        Some(_) => vec![],
        None if include_usage => {
            let u = Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            };
            vec![chunk(vec![], Some(u))]
        }
        None => vec![],
    })
}
