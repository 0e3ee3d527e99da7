//! One-shot generation of a fixed set of requests (the CLI's `generate`, tests, benchmarks).
//! All prompts are prefilled in the first forward pass, then decoded together; the engine loop
//! reuses the same per-sequence logic with requests joining and leaving.

use std::time::{Duration, Instant};

use loraplex_models::{Decoder, KvCache, LogitsFor, LoraWeights, SeqInput, Tokenizer};

use crate::batch::{forward, pick_mut};
use crate::error::{Result, RuntimeError};
use crate::sampling::TokenLogprob;
use crate::sequence::{FinishReason, GenerationParams, SequenceState};

/// One request of a one-shot batch.
#[derive(Debug, Clone)]
pub struct GenRequest<'a> {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    pub adapter: Option<&'a LoraWeights>,
}

impl<'a> GenRequest<'a> {
    pub fn new(prompt: Vec<u32>, params: GenerationParams) -> Self {
        Self {
            prompt,
            params,
            adapter: None,
        }
    }

    pub fn with_adapter(self, adapter: Option<&'a LoraWeights>) -> Self {
        Self { adapter, ..self }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub logprobs: Vec<TokenLogprob>,
    /// Time to the first token (prefill).
    pub prefill: Duration,
    /// Time of all later tokens.
    pub decode: Duration,
}

/// Checks that a prompt plus its generation fits the model's context.
pub fn check_context(model: &Decoder, prompt_len: usize, max_tokens: usize) -> Result<()> {
    let context = model.config().max_position_embeddings;
    if prompt_len + max_tokens > context {
        return Err(RuntimeError::ContextOverflow {
            prompt: prompt_len,
            max_tokens,
            context,
        });
    }
    Ok(())
}

pub fn generate(
    model: &Decoder,
    tok: &Tokenizer,
    requests: Vec<GenRequest<'_>>,
) -> Result<Vec<Generation>> {
    let vocab = model.config().vocab_size;
    let mut seqs = Vec::with_capacity(requests.len());
    for r in &requests {
        check_context(model, r.prompt.len(), r.params.max_tokens)?;
        seqs.push(SequenceState::new(&r.prompt, r.params.clone(), tok, vocab)?);
    }
    let mut caches: Vec<KvCache> = requests.iter().map(|_| model.new_cache()).collect();
    let mut out: Vec<Generation> = requests
        .iter()
        .map(|r| Generation {
            prompt_ids: r.prompt.clone(),
            ids: Vec::new(),
            text: String::new(),
            finish: FinishReason::Length,
            logprobs: Vec::new(),
            prefill: Duration::ZERO,
            decode: Duration::ZERO,
        })
        .collect();
    let mut active: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].params.max_tokens > 0)
        .collect();
    let start = Instant::now();
    let mut first = true;
    while !active.is_empty() {
        let next: Vec<[u32; 1]> = active
            .iter()
            .map(|&i| [*seqs[i].output().last().unwrap_or(&0)])
            .collect();
        let inputs: Vec<SeqInput<'_>> = active
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                SeqInput::new(
                    if first { &requests[i].prompt } else { &next[j] },
                    LogitsFor::Last,
                )
                .with_adapter(requests[i].adapter)
            })
            .collect();
        let mut refs = pick_mut(&mut caches, &active);
        let logits = forward(model, &inputs, &mut refs)?;
        let elapsed = start.elapsed();
        let mut still = Vec::with_capacity(active.len());
        for (&i, rows) in active.iter().zip(logits) {
            let rows = rows.expect("asked for last-position logits");
            let step = seqs[i].accept_logits(&rows[0], tok)?;
            let g = &mut out[i];
            if first {
                g.prefill = elapsed;
            }
            g.ids.push(step.id);
            g.text.push_str(&step.text);
            g.logprobs.extend(step.logprob);
            match step.finish {
                Some(f) => {
                    g.finish = f;
                    g.decode = elapsed - g.prefill;
                }
                None => still.push(i),
            }
        }
        active = still;
        first = false;
    }
    Ok(out)
}
