//! Submitting choices to the engine and turning their event streams into finished results or
//! into one merged live stream (which `sse` writes out), recording latency metrics on the way.

use std::time::{Duration, Instant};

use futures_util::stream::{self, BoxStream, StreamExt};
use loraplex_runtime::{
    FinishReason, GenerationRequest, TokenEvent, TokenLogprob, TokenStream, Usage,
};

use crate::error::ApiError;
use crate::state::AppState;

/// One finished choice.
#[derive(Debug, Default)]
pub struct ChoiceResult {
    pub text: String,
    pub ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    pub finish: Option<FinishReason>,
    pub usage: Usage,
}

/// A live event of one choice.
#[derive(Debug)]
pub enum ChoiceEvent {
    PromptLogprobs(Vec<TokenLogprob>),
    Token {
        text: String,
        id: u32,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
    Failed(ApiError),
}

/// Submits one engine request per choice; all or nothing (a refusal drops the others).
pub fn submit_all(
    state: &AppState,
    reqs: Vec<GenerationRequest>,
) -> Result<Vec<TokenStream>, ApiError> {
    let adapter = match reqs.first().and_then(|r| r.adapter.clone()) {
        Some(name) => {
            state.count_adapter_request(&name);
            name
        }
        None => "base".into(),
    };
    metrics::counter!("loraplex_adapter_requests_total", "adapter" => adapter).increment(1);
    reqs.into_iter()
        .map(|r| state.engine.submit(r).map_err(ApiError::from))
        .collect()
}

/// Per-stream latency bookkeeping.
struct Timing {
    start: Instant,
    last: Option<Instant>,
}

impl Timing {
    fn token(&mut self) {
        let now = Instant::now();
        match self.last {
            None => metrics::histogram!("loraplex_time_to_first_token_seconds")
                .record((now - self.start).as_secs_f64()),
            Some(l) => metrics::histogram!("loraplex_inter_token_latency_seconds")
                .record((now - l).as_secs_f64()),
        }
        self.last = Some(now);
    }

    fn finished(&self, usage: &Usage) {
        metrics::histogram!("loraplex_e2e_request_latency_seconds")
            .record(self.start.elapsed().as_secs_f64());
        metrics::counter!("loraplex_prompt_tokens_total").increment(usage.prompt_tokens as u64);
        metrics::counter!("loraplex_generation_tokens_total")
            .increment(usage.completion_tokens as u64);
    }
}

/// One choice's events as a stream that ends after its final event.
pub fn events(index: usize, s: TokenStream) -> BoxStream<'static, (usize, ChoiceEvent)> {
    let timing = Timing {
        start: Instant::now(),
        last: None,
    };
    stream::unfold((Some(s), timing), move |(s, mut timing)| async move {
        let mut s = s?;
        let ev = match s.next().await {
            None => ChoiceEvent::Failed(ApiError::Internal(
                "the engine closed a stream without a final event".into(),
            )),
            Some(TokenEvent::PromptLogprobs(v)) => ChoiceEvent::PromptLogprobs(v),
            Some(TokenEvent::Token { id, text, logprob }) => {
                timing.token();
                ChoiceEvent::Token { text, id, logprob }
            }
            Some(TokenEvent::Finished { reason, usage, .. }) => {
                timing.finished(&usage);
                ChoiceEvent::Finished { reason, usage }
            }
            Some(TokenEvent::Failed(e)) => ChoiceEvent::Failed(e.into()),
        };
        let done = matches!(ev, ChoiceEvent::Finished { .. } | ChoiceEvent::Failed(_));
        Some(((index, ev), (if done { None } else { Some(s) }, timing)))
    })
    .boxed()
}

/// A request's events: (choice index, event).
pub type Events = BoxStream<'static, (usize, ChoiceEvent)>;

/// All choices' events, interleaved as they come, ending with a `Timeout` failure if the
/// request outlives `timeout` (dropping the rest cancels the engine's sequences).
pub fn merged(streams: Vec<TokenStream>, timeout: Duration) -> Events {
    let deadline = tokio::time::Instant::now() + timeout;
    let all =
        stream::select_all(streams.into_iter().enumerate().map(|(i, s)| events(i, s))).boxed();
    stream::unfold(Some(all), move |all| async move {
        let mut all = all?;
        match tokio::time::timeout_at(deadline, all.next()).await {
            Ok(Some(item)) => Some((item, Some(all))),
            Ok(None) => None,
            Err(_) => Some(((0, ChoiceEvent::Failed(ApiError::Timeout)), None)),
        }
    })
    .boxed()
}

/// Waits for every one of `choices` to finish (bounded by `timeout`).
pub async fn collect(
    mut all: Events,
    choices: usize,
    timeout: Duration,
) -> Result<Vec<ChoiceResult>, ApiError> {
    let work = async move {
        let mut results: Vec<ChoiceResult> =
            (0..choices).map(|_| ChoiceResult::default()).collect();
        while let Some((i, ev)) = all.next().await {
            let r = &mut results[i];
            match ev {
                ChoiceEvent::PromptLogprobs(v) => r.prompt_logprobs = Some(v),
                ChoiceEvent::Token { text, id, logprob } => {
                    r.text.push_str(&text);
                    r.ids.push(id);
                    r.logprobs.extend(logprob);
                }
                ChoiceEvent::Finished { reason, usage } => {
                    r.finish = Some(reason);
                    r.usage = usage;
                }
                ChoiceEvent::Failed(e) => return Err(e),
            }
        }
        Ok(results)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ApiError::Timeout)?
}
