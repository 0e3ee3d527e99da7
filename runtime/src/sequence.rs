//! What happens to one sequence after each forward pass: penalties, sampling, detokenization,
//! stop conditions. Shared by the one-shot generator and the engine loop.

use std::collections::HashMap;
use std::sync::Arc;

use loraplex_models::{IncrementalDecoder, Tokenizer};

use crate::constraint::{CompiledGrammar, Constraint};
use crate::error::{Result, RuntimeError};
use crate::sampling::{argmax, logprobs_of, LogitBias, Penalties, Sampler, Sampling, TokenLogprob};
use crate::stop::{StopScan, StopStrings};

/// Validated generation parameters of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub sampling: Sampling,
    pub penalties: Penalties,
    pub logit_bias: LogitBias,
    pub max_tokens: usize,
    /// Stop strings; the returned text ends before the first match.
    pub stop: Vec<String>,
    /// Extra ids that end generation (besides the model's EOS set).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating through EOS (benchmarks).
    pub ignore_eos: bool,
    /// Return logprobs with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// What the output must match (structured outputs, tool calls).
    pub constraint: Option<Arc<CompiledGrammar>>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            sampling: Sampling::Greedy,
            penalties: Penalties::default(),
            logit_bias: LogitBias::default(),
            max_tokens: 16,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            constraint: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The outcome of one step for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStep {
    pub id: u32,
    /// New text, possibly empty while characters or a stop-string prefix are incomplete.
    pub text: String,
    pub logprob: Option<TokenLogprob>,
    pub finish: Option<FinishReason>,
}

#[derive(Debug, Clone)]
pub struct SequenceState {
    params: GenerationParams,
    prompt_seen: Vec<bool>,
    counts: HashMap<u32, u32>,
    output: Vec<u32>,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stops: StopStrings,
    stop_ids: Vec<u32>,
    finished: Option<FinishReason>,
    /// Where the output is in its grammar; `None` while the engine computes its mask.
    constraint: Option<Constraint>,
}

impl SequenceState {
    pub fn new(
        prompt: &[u32],
        params: GenerationParams,
        tok: &Tokenizer,
        vocab: usize,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        let mut prompt_seen = Vec::new();
        if params.penalties != Penalties::default() {
            prompt_seen = vec![false; vocab];
            for &id in prompt {
                if let Some(s) = prompt_seen.get_mut(id as usize) {
                    *s = true;
                }
            }
        }
        let mut stop_ids: Vec<u32> = if params.ignore_eos {
            Vec::new()
        } else {
            tok.stop_ids().to_vec()
        };
        stop_ids.extend(&params.stop_token_ids);
        Ok(Self {
            constraint: params.constraint.as_ref().map(|g| g.start()),
            sampler: Sampler::new(params.sampling),
            stops: StopStrings::new(params.stop.clone()),
            decoder: tok.incremental(true),
            params,
            prompt_seen,
            counts: HashMap::new(),
            output: Vec::new(),
            stop_ids,
            finished: None,
        })
    }

    pub fn params(&self) -> &GenerationParams {
        &self.params
    }

    pub fn output(&self) -> &[u32] {
        &self.output
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// The grammar follower, taken out so its next mask can be computed beside the forward
    /// pass; give it back with [`SequenceState::restore_constraint`] before `accept_logits`.
    pub fn take_constraint(&mut self) -> Option<Constraint> {
        self.constraint.take()
    }

    pub fn restore_constraint(&mut self, c: Constraint) {
        self.constraint = Some(c);
    }

    /// Chooses the next token from the raw logits of the last position and advances the state.
    /// Under a constraint, tokens the grammar does not allow are out before anything else, and
    /// logprobs are those of the constrained distribution (renormalized over allowed tokens,
    /// before penalties and temperature).
    pub fn accept_logits(&mut self, raw: &[f32], tok: &Tokenizer) -> Result<TokenStep> {
        let p = &self.params;
        let plain = p.penalties == Penalties::default() && p.logit_bias.is_empty();
        let mut masked = None;
        if let Some(c) = self.constraint.as_mut() {
            let mut l = raw.to_vec();
            c.apply(&mut l, &self.stop_ids)?;
            masked = Some(l);
        }
        let base = masked.as_deref().unwrap_or(raw);
        let mut id = if plain {
            self.sampler.sample(base)
        } else {
            let mut l = base.to_vec();
            p.penalties.apply(&mut l, &self.prompt_seen, &self.counts);
            p.logit_bias.apply(&mut l);
            self.sampler.sample(&l)
        };
        if !base[id as usize].is_finite() {
            // A draw can only land outside the allowed set by rounding: take the best allowed.
            id = argmax(base);
        }
        let logprob = p.logprobs.map(|n| logprobs_of(base, id, n));
        let mut grammar_done = false;
        if let Some(c) = self.constraint.as_mut() {
            c.commit(id, &self.stop_ids)?;
            grammar_done = c.is_done();
        }
        self.push_token(id, logprob, grammar_done, tok)
    }

    /// `grammar_done`: the constraint accepts nothing after this token.
    fn push_token(
        &mut self,
        id: u32,
        logprob: Option<TokenLogprob>,
        grammar_done: bool,
        tok: &Tokenizer,
    ) -> Result<TokenStep> {
        self.output.push(id);
        *self.counts.entry(id).or_insert(0) += 1;
        let mut text = String::new();
        let mut finish = None;
        if self.stop_ids.contains(&id) {
            finish = Some(FinishReason::Stop);
        } else {
            let delta = self.decoder.step(tok, id)?.unwrap_or_default();
            match self.stops.push(&delta) {
                StopScan::Emit(t) => text = t,
                StopScan::Stopped(t) => {
                    text = t;
                    finish = Some(FinishReason::Stop);
                    self.finished = finish;
                    return Ok(TokenStep {
                        id,
                        text,
                        logprob,
                        finish,
                    });
                }
            }
            if grammar_done {
                finish = Some(FinishReason::Stop);
            } else if self.output.len() >= self.params.max_tokens {
                finish = Some(FinishReason::Length);
            }
        }
        if finish.is_some() {
            // Release what was held back for an incomplete character or a possible stop prefix.
            let rest = self.decoder.flush(tok)?;
            match self.stops.push(&rest) {
                StopScan::Emit(t) => {
                    text.push_str(&t);
                    text.push_str(&self.stops.flush());
                }
                StopScan::Stopped(t) => {
                    text.push_str(&t);
                    finish = Some(FinishReason::Stop);
                }
            }
        }
        self.finished = finish;
        Ok(TokenStep {
            id,
            text,
            logprob,
            finish,
        })
    }
}
