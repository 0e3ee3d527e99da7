//! Wire requests → ready-to-submit engine requests, in TGI's shape: parameters, tokenization and
//! the context length are checked here, once, so that what a handler submits is final and what
//! it renders needs no second look at the request. Every rejection names the offending field.

mod messages;
mod params;
mod prompt;
mod structured;

pub(crate) use prompt::{chat as chat_prompt, completion as completion_prompts};

use std::collections::HashMap;

use loraplex_models::LoadedModel;
use loraplex_runtime::{GenerationRequest, Grammars};
use serde_json::Value;

use crate::error::ApiError;
use crate::tools;
use crate::wire::{ChatCompletionRequest, CompletionRequest};
use structured::{compile_constraint, output_constraint};

/// Default `max_tokens` of the legacy endpoint (OpenAI's).
const DEFAULT_MAX_TOKENS: usize = 16;

/// How a reply is written, for either endpoint.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The model id as the client named it, reported back.
    pub model: String,
    pub stream: bool,
    /// Streams end with a usage chunk.
    pub include_usage: bool,
    /// Logprobs are wanted.
    pub logprobs: bool,
    /// Alternatives per token the client asked for: a request's shadows may capture more.
    pub top_logprobs: usize,
    /// vLLM's `return_tokens_as_token_ids`: logprob tokens as `token_id:<id>`.
    pub tokens_as_ids: bool,
}

/// A chat request, validated.
#[derive(Debug)]
pub struct ValidChat {
    /// One per choice.
    pub requests: Vec<GenerationRequest>,
    pub reply: Reply,
    pub prompt_tokens: usize,
    /// The outputs may call tools: they are read for calls.
    pub tool_calls: bool,
}

/// A legacy completion request, validated.
#[derive(Debug)]
pub struct ValidCompletion {
    /// `n` per prompt, prompt by prompt.
    pub requests: Vec<GenerationRequest>,
    pub reply: Reply,
    pub prompts: Prompts,
}

/// The prompts of a legacy completion, as its reply needs them.
#[derive(Debug)]
pub struct Prompts {
    pub ids: Vec<Vec<u32>>,
    /// Choices per prompt.
    pub n: usize,
    /// Each prompt is written before its completions (and scored, with logprobs).
    pub echo: bool,
}

impl Prompts {
    /// The prompt choice `index` answers.
    pub fn of_choice(&self, index: usize) -> &[u32] {
        &self.ids[index / self.n]
    }

    pub fn choices(&self) -> usize {
        self.ids.len() * self.n
    }

    /// Usage's `prompt_tokens`: each prompt counted once, however many choices it has.
    pub fn tokens(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }
}

/// `context` is the longest prompt + completion served; `adapter` goes on every request; the
/// output constraint (a response format, the tools' calls, or both) compiles with `grammars`.
pub fn chat(
    req: ChatCompletionRequest,
    model: &LoadedModel,
    grammars: &Grammars,
    context: usize,
    adapter: Option<&str>,
) -> Result<ValidChat, ApiError> {
    log_ignored(&req.unknown);
    let constraint = output_constraint(&req.constraints)?;
    let logprobs = params::chat_logprobs(req.logprobs, req.top_logprobs)?;
    let max_tokens = req.max_completion_tokens.or(req.sampling.max_tokens);
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let vocab = model.model.config().vocab_size;
    let mut s = params::sampling(&req.sampling, max_tokens, logprobs, vocab)?;
    let tools = tools::tools(&req.tools)?;
    let prompt = prompt::chat(
        model,
        &req.messages,
        tools.as_ref().map(|t| t.raw.as_slice()),
    )?;
    // Unbounded, a chat may use the whole context; a prompt that leaves no room is refused.
    let max_tokens = s
        .max_tokens
        .unwrap_or_else(|| context.saturating_sub(prompt.len()));
    if max_tokens == 0 {
        return Err(context_length(prompt.len(), max_tokens, context));
    }
    check_context(prompt.len(), max_tokens, context)?;
    // Last: the other checks are cheaper than compiling a grammar the cache does not hold.
    let format = constraint.map(|c| (c.spec, c.param));
    s.constraint = match tools::constraint(tools.as_ref(), format) {
        Some((spec, param)) => Some(tools::compile(grammars, tools.as_ref(), &spec, &param)?),
        None => None,
    };
    let requests: Vec<GenerationRequest> = s.choices(&prompt, max_tokens, adapter, None).collect();
    Ok(ValidChat {
        requests,
        reply: s.reply(req.model, &req.sampling),
        prompt_tokens: prompt.len(),
        tool_calls: tools.is_some_and(|t| t.calls_possible()),
    })
}

/// As [`chat`], for `POST /v1/completions`.
pub fn completion(
    req: CompletionRequest,
    model: &LoadedModel,
    grammars: &Grammars,
    context: usize,
    adapter: Option<&str>,
) -> Result<ValidCompletion, ApiError> {
    log_ignored(&req.unknown);
    let constraint = output_constraint(&req.constraints)?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    let logprobs = params::completion_logprobs(req.logprobs)?;
    let vocab = model.model.config().vocab_size;
    let mut s = params::sampling(&req.sampling, req.sampling.max_tokens, logprobs, vocab)?;
    if req.best_of.is_some_and(|b| b as usize != s.n) {
        return Err(ApiError::invalid(
            "best_of",
            "best_of other than n is not supported",
        ));
    }
    if req.echo && s.stream && logprobs.is_some() {
        return Err(ApiError::invalid(
            "echo",
            "echo with logprobs is not supported when streaming",
        ));
    }
    let prompts = prompt::completion(&model.tokenizer, &req.prompt, vocab)?;
    let max_tokens = s.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    // An echoed prompt is scored with the logprobs asked for.
    let prompt_logprobs = if req.echo { logprobs } else { None };
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        check_context(p.len(), max_tokens, context)?;
    }
    s.constraint = constraint
        .map(|c| compile_constraint(&c, grammars))
        .transpose()?;
    let mut requests = Vec::with_capacity(prompts.len() * s.n);
    for p in &prompts {
        requests.extend(s.choices(p, max_tokens, adapter, prompt_logprobs));
    }
    Ok(ValidCompletion {
        requests,
        reply: s.reply(req.model, &req.sampling),
        prompts: Prompts {
            ids: prompts,
            n: s.n,
            echo: req.echo,
        },
    })
}

fn check_context(prompt: usize, max_tokens: usize, context: usize) -> Result<(), ApiError> {
    if prompt + max_tokens > context {
        return Err(context_length(prompt, max_tokens, context));
    }
    Ok(())
}

fn context_length(prompt: usize, max_tokens: usize, context: usize) -> ApiError {
    ApiError::ContextLength {
        prompt,
        max_tokens,
        context,
    }
}

/// Unknown fields are accepted and ignored, as vLLM does; the log says which.
fn log_ignored(unknown: &HashMap<String, Value>) {
    if !unknown.is_empty() {
        tracing::info!(fields = ?unknown.keys().collect::<Vec<_>>(), "ignoring unknown request fields");
    }
}
