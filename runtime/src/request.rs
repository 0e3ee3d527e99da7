//! What goes into the engine and what comes back: a validated [`GenerationRequest`] in, a
//! [`TokenStream`] of [`TokenEvent`]s out.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::RuntimeError;
use crate::sampling::TokenLogprob;
use crate::sequence::{FinishReason, GenerationParams};

/// A scheduling class. Waiting requests of a higher class are admitted before any of a lower
/// one, so work nobody waits on (shadow scoring) can only take capacity users leave free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// A client waits for the answer.
    #[default]
    Interactive,
    /// Nobody waits (live shadow scoring): runs only on the token budget and slots interactive
    /// work leaves over in a step, and never takes the interactive queue's places.
    Shadow,
}

impl Priority {
    /// Every class, highest first: the order a step visits them in.
    pub const ALL: [Priority; 2] = [Priority::Interactive, Priority::Shadow];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A validated request, ready for the queue.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    /// Adapter name; `None` is the base model. The engine serves the version registered for
    /// it at `submit`.
    pub adapter: Option<String>,
    /// Log-probabilities of the prompt's own tokens (teacher-forced), with this many
    /// alternatives each.
    pub prompt_logprobs: Option<usize>,
    pub priority: Priority,
}

impl GenerationRequest {
    pub fn new(prompt: Vec<u32>, params: GenerationParams) -> Self {
        Self {
            prompt,
            params,
            adapter: None,
            prompt_logprobs: None,
            priority: Priority::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Where a request's time went, from `submit` on (vLLM's request metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timings {
    /// `submit` until its adapter was resident (zero for the base or a resident adapter).
    pub adapter_wait: Duration,
    /// `submit` until its first step (queueing, including `adapter_wait`).
    pub queued: Duration,
    /// `submit` until the first generated token.
    pub first_token: Duration,
    /// `submit` until the end.
    pub total: Duration,
}

/// What a request's stream carries.
#[derive(Debug)]
pub enum TokenEvent {
    /// Logprobs of prompt tokens `1..` (the first has no context), sent once before any token.
    PromptLogprobs(Vec<TokenLogprob>),
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: Timings,
    },
    Failed(RuntimeError),
}

/// The receiving side of a request; dropping it cancels the request.
#[derive(Debug)]
pub struct TokenStream {
    pub(crate) rx: UnboundedReceiver<TokenEvent>,
}

impl TokenStream {
    pub async fn next(&mut self) -> Option<TokenEvent> {
        self.rx.recv().await
    }

    /// For synchronous callers (CLI, tests, benchmarks); never call inside an async runtime.
    pub fn blocking_next(&mut self) -> Option<TokenEvent> {
        self.rx.blocking_recv()
    }
}
