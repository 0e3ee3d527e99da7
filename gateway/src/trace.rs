//! Watching a request's events on their way to the client, for what happens after it: a routed
//! request's record and its shadows need the served tokens, the time to the first one and how it
//! ended, whether the reply was streamed or not, and whether the client stayed to the end.
//! The tap only looks: the events pass through unchanged, in order.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{BoxStream, Stream, StreamExt};
use loraplex_runtime::{FinishReason, TokenLogprob, Usage};

use crate::error::ApiError;
use crate::generation::ChoiceEvent;

/// One choice as it was served.
#[derive(Debug, Clone, Default)]
pub struct ChoiceTrace {
    pub ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
    pub usage: Usage,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// The error code the client was sent.
    Failed(String),
    /// The client went away before the end.
    Cancelled,
}

/// Everything the tap saw.
#[derive(Debug, Clone)]
pub struct Trace {
    pub choices: Vec<ChoiceTrace>,
    /// From the tap's creation (just after submit) to the first token of any choice.
    pub first_token: Option<Duration>,
    pub elapsed: Duration,
    pub outcome: Outcome,
}

/// How a failure is named in a record: the OpenAI `code` the client was sent, or its `type`
/// when it has no code.
pub fn error_code(e: &ApiError) -> String {
    let body = e.body();
    body.error.code.unwrap_or_else(|| body.error.kind.into())
}

type OnDone = Box<dyn FnOnce(Trace) + Send>;

struct Tap {
    inner: BoxStream<'static, (usize, ChoiceEvent)>,
    start: Instant,
    choices: Vec<ChoiceTrace>,
    first_token: Option<Duration>,
    failed: Option<String>,
    on_done: Option<OnDone>,
}

/// `all`'s events unchanged; `on_done` runs once with what they carried, when the stream ends
/// or is dropped (a client that left: `Outcome::Cancelled`).
pub fn tap(
    all: BoxStream<'static, (usize, ChoiceEvent)>,
    choices: usize,
    on_done: impl FnOnce(Trace) + Send + 'static,
) -> BoxStream<'static, (usize, ChoiceEvent)> {
    Tap {
        inner: all,
        start: Instant::now(),
        choices: vec![ChoiceTrace::default(); choices],
        first_token: None,
        failed: None,
        on_done: Some(Box::new(on_done)),
    }
    .boxed()
}

impl Tap {
    fn see(&mut self, index: usize, ev: &ChoiceEvent) {
        let Some(c) = self.choices.get_mut(index) else {
            return;
        };
        match ev {
            ChoiceEvent::Token { id, logprob, .. } => {
                self.first_token.get_or_insert_with(|| self.start.elapsed());
                c.ids.push(*id);
                c.logprobs.extend(logprob.clone());
            }
            ChoiceEvent::Finished { reason, usage } => {
                c.finish = Some(*reason);
                c.usage = *usage;
            }
            ChoiceEvent::Failed(e) => self.failed = Some(error_code(e)),
            ChoiceEvent::PromptLogprobs(_) => {}
        }
    }

    fn done(&mut self, outcome: Outcome) {
        if let Some(f) = self.on_done.take() {
            f(Trace {
                choices: std::mem::take(&mut self.choices),
                first_token: self.first_token,
                elapsed: self.start.elapsed(),
                outcome,
            });
        }
    }
}

impl Stream for Tap {
    type Item = (usize, ChoiceEvent);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        match &polled {
            Poll::Ready(Some((index, ev))) => self.see(*index, ev),
            Poll::Ready(None) => {
                let outcome = match self.failed.take() {
                    Some(code) => Outcome::Failed(code),
                    None => Outcome::Ok,
                };
                self.done(outcome);
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // A failure is the last event a consumer reads (it stops there), so a stream dropped
        // after one ended with it, not with the client leaving.
        let outcome = match self.failed.take() {
            Some(code) => Outcome::Failed(code),
            None => Outcome::Cancelled,
        };
        self.done(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use std::sync::{Arc, Mutex};

    fn events(v: Vec<(usize, ChoiceEvent)>) -> BoxStream<'static, (usize, ChoiceEvent)> {
        stream::iter(v).boxed()
    }

    fn token(id: u32) -> ChoiceEvent {
        ChoiceEvent::Token {
            text: format!("t{id}"),
            id,
            logprob: None,
        }
    }

    fn traced(v: Vec<(usize, ChoiceEvent)>, take: usize) -> (usize, Trace) {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let all = tap(events(v), 2, move |t| *s.lock().unwrap() = Some(t));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let passed = rt.block_on(all.take(take).count());
        let t = seen.lock().unwrap().take().expect("on_done ran");
        (passed, t)
    }

    #[test]
    fn a_finished_request_is_traced_per_choice() {
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
        };
        let (passed, t) = traced(
            vec![
                (0, token(5)),
                (1, token(7)),
                (0, token(6)),
                (
                    0,
                    ChoiceEvent::Finished {
                        reason: FinishReason::Length,
                        usage,
                    },
                ),
            ],
            usize::MAX,
        );
        assert_eq!(passed, 4);
        assert_eq!(t.outcome, Outcome::Ok);
        assert_eq!(t.choices[0].ids, vec![5, 6]);
        assert_eq!(t.choices[1].ids, vec![7]);
        assert_eq!(t.choices[0].finish, Some(FinishReason::Length));
        assert_eq!(t.choices[0].usage, usage);
        assert!(t.first_token.is_some());
    }

    #[test]
    fn a_client_that_leaves_is_cancelled_and_a_failure_names_its_code() {
        let (_, t) = traced(vec![(0, token(1)), (0, token(2))], 1);
        assert_eq!(t.outcome, Outcome::Cancelled);
        assert_eq!(t.choices[0].ids, vec![1]);
        let (_, t) = traced(
            vec![(0, token(1)), (0, ChoiceEvent::Failed(ApiError::Timeout))],
            usize::MAX,
        );
        assert_eq!(t.outcome, Outcome::Failed("timeout".into()));
    }
}
