//! Logprobs in OpenAI's two shapes: chat's list of token objects, and the legacy endpoint's
//! parallel arrays with character offsets.

use indexmap::IndexMap;
use loraplex_models::Tokenizer;
use loraplex_runtime::TokenLogprob;

use crate::validate::Reply;
use crate::wire::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob};

/// How tokens are written in logprobs: their text, or `token_id:<id>` when the client asked for
/// ids (vLLM's `return_tokens_as_token_ids`, for clients that need the exact tokens).
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    tokenizer: &'a Tokenizer,
    as_ids: bool,
    top: usize,
}

impl<'a> Tokens<'a> {
    pub fn new(tokenizer: &'a Tokenizer, reply: &Reply) -> Self {
        Self {
            tokenizer,
            as_ids: reply.tokens_as_ids,
            top: reply.top_logprobs,
        }
    }

    fn text(&self, id: u32) -> String {
        if self.as_ids {
            format!("token_id:{id}")
        } else {
            self.tokenizer.token_text(id)
        }
    }

    /// `bytes` are the token's own bytes, even where its text alone is not valid UTF-8 (part of
    /// a character): joined, a choice's bytes are its output.
    fn top(&self, id: u32, logprob: f32) -> TopLogprob {
        TopLogprob {
            bytes: self.tokenizer.token_bytes(id).to_vec(),
            token: self.text(id),
            logprob,
        }
    }

    /// Chat's shape, for the tokens `lps` scored.
    pub fn chat(&self, lps: &[TokenLogprob]) -> ChatLogprobs {
        ChatLogprobs {
            content: lps
                .iter()
                .map(|l| {
                    let e = self.top(l.id, l.logprob);
                    ChatTokenLogprob {
                        token: e.token,
                        logprob: e.logprob,
                        bytes: e.bytes,
                        top_logprobs: l
                            .top
                            .iter()
                            .take(self.top)
                            .map(|&(id, lp)| self.top(id, lp))
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// The legacy shape of a whole choice: the echoed prompt first, if any (its first token has
    /// nothing to be scored against, so its logprob is null), then the generated tokens.
    pub fn completion(
        &self,
        echoed: Option<(&[u32], &[TokenLogprob])>,
        generated: &[TokenLogprob],
    ) -> CompletionLogprobs {
        let mut lp = CompletionLogprobs::default();
        if let Some((prompt, scored)) = echoed {
            self.push(&mut lp, prompt[0], None);
            for l in scored {
                self.push(&mut lp, l.id, Some(l));
            }
        }
        for l in generated {
            self.push(&mut lp, l.id, Some(l));
        }
        lp
    }

    /// Appends token `id` at the character offset where the tokens before it end.
    pub fn push(&self, lp: &mut CompletionLogprobs, id: u32, l: Option<&TokenLogprob>) {
        let offset = match (lp.text_offset.last(), lp.tokens.last()) {
            (Some(o), Some(t)) => o + t.chars().count(),
            _ => 0,
        };
        lp.tokens.push(self.text(id));
        lp.text_offset.push(offset);
        lp.token_logprobs.push(l.map(|l| l.logprob));
        lp.top_logprobs.push(l.map(|l| {
            l.top
                .iter()
                .take(self.top)
                .map(|&(t, v)| (self.text(t), v))
                .collect::<IndexMap<_, _>>()
        }));
    }
}
