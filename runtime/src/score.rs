//! Teacher-forced scoring: the log-probability the model gives each token of a sequence,
//! with the top alternatives. Serves `echo` + `logprobs`, evaluation clients, quantization tests
//! and (later) shadow scoring.

use loraplex_models::{Decoder, LogitsFor, LoraWeights, SeqInput};

use crate::batch::forward;
use crate::error::{Result, RuntimeError};
use crate::sampling::{argmax, logprobs_of, TokenLogprob};

/// Positions scored per forward pass: bounds the `[chunk, vocab]` logits held at once.
const SCORE_CHUNK: usize = 128;

/// Scores `ids[from..]`, each given every token before it, under `adapter` (or the base).
/// `from` must be ≥ 1.
pub fn score(
    model: &Decoder,
    adapter: Option<&LoraWeights>,
    ids: &[u32],
    from: usize,
    top_n: usize,
) -> Result<Vec<ScoredToken>> {
    if from == 0 || from > ids.len() {
        return Err(RuntimeError::invalid(
            "score",
            format!("start {from} must be in 1..={}", ids.len()),
        ));
    }
    let mut cache = model.new_cache();
    let mut out = Vec::with_capacity(ids.len() - from);
    // Logits at position p predict token p+1; positions before from-1 only fill the cache.
    let mut pos = 0;
    while pos < ids.len() - 1 {
        let end = (pos + SCORE_CHUNK).min(ids.len() - 1);
        let wanted = end > from - 1;
        let logits = forward(
            model,
            &[SeqInput::new(
                &ids[pos..end],
                if wanted {
                    LogitsFor::All
                } else {
                    LogitsFor::None
                },
            )
            .with_adapter(adapter)],
            &mut [&mut cache],
        )?;
        if let Some(rows) = logits.into_iter().next().flatten() {
            for (k, row) in rows.iter().enumerate() {
                let p = pos + k;
                if p + 1 >= from {
                    let target = ids[p + 1];
                    out.push(ScoredToken {
                        logprob: logprobs_of(row, target, top_n),
                        argmax: argmax(row),
                    });
                }
            }
        }
        pos = end;
    }
    Ok(out)
}

/// One scored position.
#[derive(Debug, Clone)]
pub struct ScoredToken {
    pub logprob: TokenLogprob,
    /// The model's own greedy choice at this position.
    pub argmax: u32,
}
