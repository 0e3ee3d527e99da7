//! Streaming responses: a chunk writer per endpoint, holding what every chunk of one stream
//! repeats, and [`respond`], which runs the choices' events through one as server-sent events.

use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use loraplex_models::LoadedModel;

use crate::error::ApiError;
use crate::generation::{ChoiceEvent, Events};
use crate::logprobs::Tokens;
use crate::state::{new_id, now};
use crate::tools::{self, CallParser};
use crate::validate::{Prompts, Reply};
use crate::wire::{
    ChatChunkChoice, ChatCompletionChunk, ChatLogprobs, Completion, CompletionChoice,
    CompletionLogprobs, Delta, Usage,
};

/// The fields every body or chunk of one response repeats.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
}

impl Head {
    /// A new response's: a fresh `{prefix}-…` id, created now.
    pub fn new(prefix: &str, reply: &Reply, fingerprint: &str) -> Self {
        Self {
            id: new_id(prefix),
            created: now(),
            model: reply.model.clone(),
            system_fingerprint: fingerprint.to_string(),
        }
    }

    /// A legacy completion body; the streamed chunks have the same shape.
    pub fn completion(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.system_fingerprint.clone(),
            choices,
            usage,
        }
    }
}

/// Writes the chunks of one streaming response.
pub trait ChunkWriter: Send + 'static {
    /// What is sent before any event of the engine.
    fn opening(&mut self) -> Vec<Event>;
    /// The chunks for an event of choice `index` (none if it shows nothing).
    fn event(&mut self, index: usize, ev: ChoiceEvent) -> Vec<Event>;
    /// The chunk after every choice finished, if any.
    fn trailer(&mut self) -> Option<Event>;
}

/// The SSE response: the writer's opening, a chunk per event of the choices, its trailer,
/// then `[DONE]`. A failure becomes an OpenAI error event followed by `[DONE]` and ends the
/// stream (dropping the other choices, which cancels them in the engine).
pub fn respond(mut writer: impl ChunkWriter, all: Events) -> Response {
    let first = writer.opening();
    let done = || Event::default().data("[DONE]");
    let body = all
        .map(Some)
        .chain(stream::iter([None]))
        .scan(false, move |failed, item| {
            if *failed {
                return std::future::ready(None);
            }
            let out: Vec<Event> = match item {
                Some((_, ChoiceEvent::Failed(e))) => {
                    *failed = true;
                    vec![error_event(&e), done()]
                }
                Some((index, ev)) => writer.event(index, ev),
                None => writer.trailer().into_iter().chain([done()]).collect(),
            };
            std::future::ready(Some(out))
        })
        .flat_map(stream::iter);
    Sse::new(
        stream::iter(first)
            .chain(body)
            .map(Ok::<_, std::convert::Infallible>),
    )
    .into_response()
}

/// An error inside a stream: OpenAI's error envelope as the event's data.
fn error_event(e: &ApiError) -> Event {
    if let ApiError::Internal(detail) = e {
        tracing::error!(%detail, "stream failed");
    }
    Event::default().data(serde_json::to_string(&e.body()).expect("errors serialize"))
}

fn data(chunk: &impl serde::Serialize) -> Event {
    Event::default().data(serde_json::to_string(chunk).expect("chunks serialize"))
}

/// `chat.completion.chunk`s: each choice opens with the assistant's role, then a delta per
/// token and one with its finish reason. When the output may call tools, each choice's text
/// goes through a [`CallParser`] and its pieces become content and tool-call deltas (a token
/// may give several, one chunk each; a token whose text is held back gives none).
pub struct ChatChunks {
    head: Head,
    model: Arc<LoadedModel>,
    reply: Reply,
    choices: usize,
    usage: Usage,
    /// One per choice, when tool calls are possible.
    calls: Option<Vec<CallParser>>,
}

impl ChatChunks {
    pub fn new(
        head: Head,
        model: Arc<LoadedModel>,
        reply: Reply,
        choices: usize,
        tool_calls: bool,
    ) -> Self {
        Self {
            calls: tool_calls.then(|| (0..choices).map(|_| CallParser::default()).collect()),
            head,
            model,
            reply,
            choices,
            usage: Usage {
                prompt_tokens: 0,
                completion_tokens: 0,
                total_tokens: 0,
            },
        }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> Event {
        let h = &self.head;
        data(&ChatCompletionChunk {
            id: h.id.clone(),
            object: "chat.completion.chunk",
            created: h.created,
            model: h.model.clone(),
            system_fingerprint: h.system_fingerprint.clone(),
            choices,
            usage,
        })
    }

    fn delta(&self, index: usize, delta: Delta, finish: Option<&'static str>) -> Event {
        self.chunk(
            vec![ChatChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            None,
        )
    }

    /// A chunk per delta, the token's logprobs on the first (alone if no delta shows).
    fn deltas(
        &self,
        index: usize,
        deltas: Vec<Delta>,
        logprobs: Option<ChatLogprobs>,
    ) -> Vec<Event> {
        if deltas.is_empty() {
            return logprobs
                .map(|lp| {
                    let choice = ChatChunkChoice {
                        index,
                        delta: Delta::default(),
                        logprobs: Some(lp),
                        finish_reason: None,
                    };
                    self.chunk(vec![choice], None)
                })
                .into_iter()
                .collect();
        }
        let mut logprobs = logprobs;
        deltas
            .into_iter()
            .map(|delta| {
                let choice = ChatChunkChoice {
                    index,
                    delta,
                    logprobs: logprobs.take(),
                    finish_reason: None,
                };
                self.chunk(vec![choice], None)
            })
            .collect()
    }
}

impl ChunkWriter for ChatChunks {
    fn opening(&mut self) -> Vec<Event> {
        // An output that may be only tool calls opens without content, so that a client
        // assembling the stream gets a null content, as the non-streamed reply has.
        let content = self.calls.is_none().then(String::new);
        let role = || Delta {
            role: Some("assistant"),
            content: content.clone(),
            ..Delta::default()
        };
        (0..self.choices)
            .map(|index| self.delta(index, role(), None))
            .collect()
    }

    fn event(&mut self, index: usize, ev: ChoiceEvent) -> Vec<Event> {
        match ev {
            ChoiceEvent::Token { text, logprob, .. } => {
                // Logprobs may be captured for shadows without the client asking for them:
                // only what the client sees decides whether a chunk is written.
                if text.is_empty() && (logprob.is_none() || !self.reply.logprobs) {
                    return Vec::new();
                }
                let tokens = Tokens::new(&self.model.tokenizer, &self.reply);
                let logprobs = self.reply.logprobs.then(|| tokens.chat(logprob.as_slice()));
                let deltas = match &mut self.calls {
                    Some(parsers) => parsers[index]
                        .push(&text)
                        .into_iter()
                        .map(tools::delta)
                        .collect(),
                    None => vec![Delta {
                        content: Some(text),
                        ..Delta::default()
                    }],
                };
                self.deltas(index, deltas, logprobs)
            }
            ChoiceEvent::Finished { reason, usage } => {
                self.usage.prompt_tokens = usage.prompt_tokens;
                self.usage.completion_tokens += usage.completion_tokens;
                let (held, finish) = match &mut self.calls {
                    Some(parsers) => {
                        let p = &mut parsers[index];
                        let held: Vec<Delta> = p.finish().into_iter().map(tools::delta).collect();
                        (held, tools::finish_reason(p.called(), reason))
                    }
                    None => (Vec::new(), reason.as_str()),
                };
                let mut out = self.deltas(index, held, None);
                out.push(self.delta(index, Delta::default(), Some(finish)));
                out
            }
            ChoiceEvent::PromptLogprobs(_) | ChoiceEvent::Failed(_) => Vec::new(),
        }
    }

    fn trailer(&mut self) -> Option<Event> {
        if !self.reply.include_usage {
            return None;
        }
        let mut usage = self.usage.clone();
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        Some(self.chunk(vec![], Some(usage)))
    }
}

/// `text_completion` chunks: the echoed prompt of each choice first, if asked for, then a
/// chunk per token and one with the finish reason.
pub struct CompletionChunks {
    head: Head,
    model: Arc<LoadedModel>,
    reply: Reply,
    prompts: Prompts,
    completion_tokens: usize,
}

impl CompletionChunks {
    pub fn new(head: Head, model: Arc<LoadedModel>, reply: Reply, prompts: Prompts) -> Self {
        Self {
            head,
            model,
            reply,
            prompts,
            completion_tokens: 0,
        }
    }

    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Event {
        data(&self.head.completion(choices, usage))
    }

    fn text(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<&'static str>,
    ) -> Event {
        self.chunk(
            vec![CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: finish,
            }],
            None,
        )
    }
}

impl ChunkWriter for CompletionChunks {
    fn opening(&mut self) -> Vec<Event> {
        if !self.prompts.echo {
            return Vec::new();
        }
        (0..self.prompts.choices())
            .map(|index| {
                let prompt = self.prompts.of_choice(index);
                let text = self
                    .model
                    .tokenizer
                    .decode(prompt, false)
                    .unwrap_or_default();
                self.text(index, text, None, None)
            })
            .collect()
    }

    fn event(&mut self, index: usize, ev: ChoiceEvent) -> Vec<Event> {
        match ev {
            ChoiceEvent::Token { text, id, logprob } => {
                let tokens = Tokens::new(&self.model.tokenizer, &self.reply);
                let lp = self.reply.logprobs.then(|| {
                    let mut lp = CompletionLogprobs::default();
                    tokens.push(&mut lp, id, logprob.as_ref());
                    lp
                });
                vec![self.text(index, text, lp, None)]
            }
            ChoiceEvent::Finished { reason, usage } => {
                self.completion_tokens += usage.completion_tokens;
                vec![self.text(index, String::new(), None, Some(reason.as_str()))]
            }
            ChoiceEvent::PromptLogprobs(_) | ChoiceEvent::Failed(_) => Vec::new(),
        }
    }

    fn trailer(&mut self) -> Option<Event> {
        if !self.reply.include_usage {
            return None;
        }
        let prompt_tokens = self.prompts.tokens();
        Some(self.chunk(
            vec![],
            Some(Usage {
                prompt_tokens,
                completion_tokens: self.completion_tokens,
                total_tokens: prompt_tokens + self.completion_tokens,
            }),
        ))
    }
}
