//! Teacher-forced scoring through the engine: a completion's per-token logprobs under a model,
//! from one request whose prompt is prompt + completion and which generates nothing. The one
//! path both the endpoint and live shadows take.

use std::time::Duration;

use futures_util::future::join_all;
use loraplex_runtime::{
    EngineHandle, GenerationParams, GenerationRequest, Priority, TokenEvent, TokenLogprob,
    TokenStream,
};

use crate::error::ApiError;

/// Alternatives kept per scored position, whatever the client asked to see, so that the
/// summaries never depend on a request's `top_logprobs` (the KL estimate takes the first
/// [`KL_TOP_K`](super::KL_TOP_K) of them). OpenAI's largest `top_logprobs`.
pub const SCORE_TOP_K: usize = 20;

/// The scheduling class of live shadow work: only the capacity interactive work leaves.
pub fn live_priority() -> Priority {
    Priority::Shadow
}

/// One teacher-forced scoring of `completion` after `prompt` under a model.
#[derive(Debug, Clone)]
pub struct ScoreJob {
    /// `None` is the base model.
    pub adapter: Option<String>,
    /// At least one token (the first completion token needs something to follow).
    pub prompt: Vec<u32>,
    /// At least one token.
    pub completion: Vec<u32>,
    /// Alternatives per position (at least 1 is computed, so `top[0]` is the argmax).
    pub top_k: usize,
}

impl ScoreJob {
    /// The engine request: the whole text as a prompt whose own logprobs are wanted, and no
    /// token generated.
    fn request(&self, priority: Priority) -> GenerationRequest {
        let mut prompt = Vec::with_capacity(self.prompt.len() + self.completion.len());
        prompt.extend_from_slice(&self.prompt);
        prompt.extend_from_slice(&self.completion);
        GenerationRequest {
            prompt,
            params: GenerationParams {
                max_tokens: 0,
                ..Default::default()
            },
            adapter: self.adapter.clone(),
            prompt_logprobs: Some(self.top_k.max(1)),
            priority,
        }
    }
}

/// Scores every job, all submitted at once so that they share the engine's batches; each gets
/// its completion's per-token logprobs (one entry per completion token) or why it failed. A job
/// the engine refuses (unknown adapter, overloaded) fails alone; none outlives `timeout`.
pub async fn score_jobs(
    engine: &EngineHandle,
    jobs: Vec<ScoreJob>,
    priority: Priority,
    timeout: Duration,
) -> Vec<Result<Vec<TokenLogprob>, ApiError>> {
    let submitted: Vec<_> = jobs
        .iter()
        .map(|job| {
            if job.prompt.is_empty() {
                return Err(ApiError::invalid("prompt", "the prompt is empty"));
            }
            if job.completion.is_empty() {
                return Err(ApiError::invalid("completion", "the completion is empty"));
            }
            engine.submit(job.request(priority)).map_err(ApiError::from)
        })
        .collect();
    let waits = submitted
        .into_iter()
        .zip(&jobs)
        .map(|(stream, job)| async move {
            let stream = stream?;
            let all = tokio::time::timeout(timeout, prompt_logprobs(stream))
                .await
                .map_err(|_| ApiError::Timeout)??;
            // Entry j scores token j + 1: the completion's are the last ones.
            let n = job.completion.len();
            if all.len() < n {
                return Err(ApiError::Internal(format!(
                    "the engine scored {} prompt tokens, {n} expected",
                    all.len()
                )));
            }
            Ok(all[all.len() - n..].to_vec())
        });
    join_all(waits).await
}

/// The prompt logprobs of a scoring request, once it finished.
async fn prompt_logprobs(mut s: TokenStream) -> Result<Vec<TokenLogprob>, ApiError> {
    let mut scored = None;
    loop {
        match s.next().await {
            Some(TokenEvent::PromptLogprobs(v)) => scored = Some(v),
            Some(TokenEvent::Token { .. }) => {}
            Some(TokenEvent::Finished { .. }) => {
                return scored.ok_or_else(|| {
                    ApiError::Internal("a scoring request finished unscored".into())
                })
            }
            Some(TokenEvent::Failed(e)) => return Err(e.into()),
            None => {
                return Err(ApiError::Internal(
                    "the engine closed a stream without a final event".into(),
                ))
            }
        }
    }
}
