//! `POST /v1/shadow/score`: per-token logprobs of given completions under several models, with
//! the summaries live shadows record, computed in one batch. For offline evaluation of logged or
//! curated data; live shadows go through the same [`shadow::score_jobs`] and
//! [`shadow::summarize`].

use axum::extract::State;
use axum::Json;
use loraplex_models::Tokenizer;
use loraplex_runtime::{Priority, TokenLogprob};

use crate::error::ApiError;
use crate::experiments::Target;
use crate::extract::ApiJson;
use crate::resolve::Resolved;
use crate::shadow::wire::{ScoreRequest, ScoreResponse, ScoreResult};
use crate::shadow::{self, ScoreJob, SCORE_TOP_K};
use crate::state::AppState;
use crate::validate;
use crate::wire::Prompt;

/// Models per request: each is a full pass over every completion.
const MAX_MODELS: usize = 16;
/// Completions per request.
const MAX_COMPLETIONS: usize = 64;

pub async fn score(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ScoreRequest>,
) -> Result<Json<ScoreResponse>, ApiError> {
    let v = validated(&st, req)?;
    let reported = v.requested;
    // What the batch scores: the requested models, then the reference if it is not one of them.
    let mut scored: Vec<(String, Resolved)> = v.models;
    let reference = v.reference.map(|(name, r)| {
        scored
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap_or_else(|| {
                scored.push((name, r));
                scored.len() - 1
            })
    });
    let n = v.completions.len();
    let jobs: Vec<ScoreJob> = scored
        .iter()
        .flat_map(|(_, r)| {
            v.completions.iter().map(|c| ScoreJob {
                adapter: r.adapter().map(String::from),
                prompt: v.prompt.clone(),
                completion: c.clone(),
                top_k: SCORE_TOP_K,
            })
        })
        .collect();
    let names: Vec<String> = scored
        .into_iter()
        .map(|(name, r)| {
            r.register(&st);
            name
        })
        .collect();
    let lps: Vec<Vec<TokenLogprob>> = shadow::score_jobs(
        &st.engine,
        jobs,
        Priority::Interactive,
        st.cfg.request_timeout,
    )
    .await
    .into_iter()
    .collect::<Result<_, _>>()?;
    let tok = &st.model.tokenizer;
    let mut results = Vec::with_capacity(reported * n);
    for (m, name) in names.iter().enumerate().take(reported) {
        for (c, completion) in v.completions.iter().enumerate() {
            let own = &lps[m * n + c];
            let against = reference.map(|r| &lps[r * n + c][..]);
            results.push(result(tok, name, c, completion, own, against, v.top)?);
        }
    }
    Ok(Json(ScoreResponse {
        object: "shadow.score",
        reference: reference.map(|r| names[r].clone()),
        results,
    }))
}

/// What a name scores under: a route's arm as `route:arm` (a segmented route's arms are its
/// segment values and `default`), else what a request's `model` resolves to.
fn resolve_model(st: &AppState, name: &str) -> Result<Resolved, ApiError> {
    if let Some((route, arm)) = name.split_once(':') {
        if let Some(exp) = st.experiments.get(route) {
            let model = exp
                .arms
                .iter()
                .find(|a| a.name == arm)
                .map(|a| a.model.clone())
                .or_else(|| match arm {
                    "default" => exp.default.clone(),
                    seg => exp.segments.get(seg).cloned(),
                })
                .ok_or_else(|| ApiError::ModelNotFound(name.to_string()))?;
            let target = Target::parse(&model, &st.cfg.served_model_name);
            return st.resolve_target(&target);
        }
    }
    st.resolve(name)
}

fn result(
    tok: &Tokenizer,
    model: &str,
    index: usize,
    completion: &[u32],
    lps: &[TokenLogprob],
    reference: Option<&[TokenLogprob]>,
    top: Option<usize>,
) -> Result<ScoreResult, ApiError> {
    let summary = shadow::summarize(lps, reference)
        .ok_or_else(|| ApiError::invalid("completion", "the completion is empty"))?;
    Ok(ScoreResult {
        model: model.to_string(),
        completion_index: index,
        tokens: completion.iter().map(|&id| tok.token_text(id)).collect(),
        token_ids: completion.to_vec(),
        token_logprobs: lps.iter().map(|l| l.logprob).collect(),
        top_logprobs: top.map(|k| {
            lps.iter()
                .map(|l| {
                    l.top
                        .iter()
                        .take(k)
                        .map(|&(id, lp)| (tok.token_text(id), lp))
                        .collect()
                })
                .collect()
        }),
        summary,
    })
}

/// A request, checked.
struct Valid {
    /// As requested, resolved.
    models: Vec<(String, Resolved)>,
    requested: usize,
    reference: Option<(String, Resolved)>,
    prompt: Vec<u32>,
    completions: Vec<Vec<u32>>,
    top: Option<usize>,
}

/// Everything the request can get wrong is refused here, before anything is registered or
/// submitted, naming the field.
fn validated(st: &AppState, req: ScoreRequest) -> Result<Valid, ApiError> {
    if !req.unknown.is_empty() {
        tracing::info!(fields = ?req.unknown.keys().collect::<Vec<_>>(), "ignoring unknown request fields");
    }
    if req.models.is_empty() {
        return Err(ApiError::invalid(
            "models",
            "models must name at least one model",
        ));
    }
    if req.models.len() > MAX_MODELS {
        return Err(ApiError::invalid(
            "models",
            format!("at most {MAX_MODELS} models per request"),
        ));
    }
    for (i, m) in req.models.iter().enumerate() {
        if req.models[..i].contains(m) {
            return Err(ApiError::invalid("models", format!("{m:?} is named twice")));
        }
    }
    let top = match req.top_logprobs {
        None => None,
        Some(k) if (0..=SCORE_TOP_K as i64).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("{k} must be in [0, {SCORE_TOP_K}]"),
            ))
        }
    };
    let vocab = st.model.model.config().vocab_size;
    let prompt = match (&req.prompt, &req.messages) {
        (Some(p), None) => one_prompt(&st.model.tokenizer, p, vocab)?,
        (None, Some(msgs)) => validate::chat_prompt(&st.model, msgs, None)?,
        _ => {
            return Err(ApiError::invalid(
                "prompt",
                "give exactly one of prompt and messages",
            ))
        }
    };
    let completions = completions(&st.model.tokenizer, req.completion.as_ref(), vocab)?;
    let context = st.cfg.max_model_len;
    for c in &completions {
        if prompt.len() + c.len() > context {
            return Err(ApiError::ContextLength {
                prompt: prompt.len(),
                max_tokens: c.len(),
                context,
            });
        }
    }
    let models = req
        .models
        .into_iter()
        .map(|m| resolve_model(st, &m).map(|r| (m, r)))
        .collect::<Result<Vec<_>, _>>()?;
    let reference = match req.reference {
        Some(name) => {
            let r = resolve_model(st, &name)?;
            Some((name, r))
        }
        None => None,
    };
    Ok(Valid {
        requested: models.len(),
        models,
        reference,
        prompt,
        completions,
        top,
    })
}

/// A completion prompt (text with the model's BOS rule, or ids), exactly one.
fn one_prompt(tok: &Tokenizer, p: &Prompt, vocab: usize) -> Result<Vec<u32>, ApiError> {
    let mut all = validate::completion_prompts(tok, p, vocab)?;
    if all.len() != 1 {
        return Err(ApiError::invalid("prompt", "give one prompt"));
    }
    let prompt = all.remove(0);
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    Ok(prompt)
}

/// The completions as ids: text is tokenized without special tokens (it continues the prompt),
/// ids are checked against the vocabulary. None may be empty.
fn completions(
    tok: &Tokenizer,
    c: Option<&Prompt>,
    vocab: usize,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let param = "completion";
    let text = |s: &str| {
        tok.encode(s, false)
            .map_err(|e| ApiError::invalid(param, format!("cannot tokenize the completion: {e}")))
    };
    let ids = |v: &[i64]| -> Result<Vec<u32>, ApiError> {
        v.iter()
            .map(|&t| match u32::try_from(t) {
                Ok(id) if (id as usize) < vocab => Ok(id),
                _ => Err(ApiError::invalid(
                    param,
                    format!("token id {t} is outside the vocabulary of {vocab}"),
                )),
            })
            .collect()
    };
    let out: Vec<Vec<u32>> = match c {
        None => return Err(ApiError::invalid(param, "completion is required")),
        Some(Prompt::Text(s)) => vec![text(s)?],
        Some(Prompt::Texts(v)) => v.iter().map(|s| text(s)).collect::<Result<_, _>>()?,
        Some(Prompt::Tokens(v)) => vec![ids(v)?],
        Some(Prompt::TokenLists(v)) => v.iter().map(|x| ids(x)).collect::<Result<_, _>>()?,
    };
    if out.is_empty() {
        return Err(ApiError::invalid(param, "the completion list is empty"));
    }
    if out.len() > MAX_COMPLETIONS {
        return Err(ApiError::invalid(
            param,
            format!("at most {MAX_COMPLETIONS} completions per request"),
        ));
    }
    if let Some(i) = out.iter().position(Vec::is_empty) {
        return Err(ApiError::invalid(
            param,
            format!("completion {i} has no tokens"),
        ));
    }
    Ok(out)
}
