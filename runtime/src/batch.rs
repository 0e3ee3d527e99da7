//! One forward pass over rows of different sequences, as the engine, the one-shot generator and
//! scoring all run it: a plan becomes rows (tokens, which logits, adapter) with a mutable borrow
//! of each row's KV cache, and the logits come back to the host per row.

use loraplex_models::{Decoder, KvCache, LogitsFor, SeqInput};

use crate::error::Result;
use crate::scheduler::Scheduled;

/// A row's logits on the host: one vector per position asked for (`LogitsFor::Last`: one).
pub(crate) type RowLogits = Vec<Vec<f32>>;

/// Runs `rows` against their `caches` (one each, same order) and returns each row's logits,
/// `None` for rows that asked for none.
pub(crate) fn forward(
    model: &Decoder,
    rows: &[SeqInput<'_>],
    caches: &mut [&mut KvCache],
) -> Result<Vec<Option<RowLogits>>> {
    model
        .forward(rows, caches)?
        .into_iter()
        .map(|l| {
            l.map(|t| t.to_vec2::<f32>())
                .transpose()
                .map_err(Into::into)
        })
        .collect()
}

/// The tokens a scheduled sequence feeds this step and the logits it needs back: one decode
/// token (`last`), or a prompt chunk wanting all positions (prompt logprobs), the last (the
/// chunk completes the prompt) or none (an intermediate chunk).
pub(crate) fn plan_row<'a>(
    p: &Scheduled,
    prompt: &'a [u32],
    last: &'a [u32],
    prompt_logprobs: bool,
) -> (&'a [u32], LogitsFor) {
    let chunk = &prompt[p.start..p.start + p.len];
    if p.decode {
        (last, LogitsFor::Last)
    } else if prompt_logprobs {
        (chunk, LogitsFor::All)
    } else if p.completes_prompt {
        (chunk, LogitsFor::Last)
    } else {
        (chunk, LogitsFor::None)
    }
}

/// Mutable borrows of `items[i]` for each index of `picked`, which must increase strictly.
pub(crate) fn pick_mut<'a, T>(items: &'a mut [T], picked: &[usize]) -> Vec<&'a mut T> {
    let mut out = Vec::with_capacity(picked.len());
    let mut rest = items;
    let mut base = 0;
    for &i in picked {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
        let (item, tail) = tail.split_first_mut().expect("index in range");
        out.push(item);
        rest = tail;
        base = i + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_mut_borrows_exactly_the_picked_items() {
        let mut v = vec![0, 1, 2, 3, 4, 5];
        for x in pick_mut(&mut v, &[0, 2, 5]) {
            *x += 10;
        }
        assert_eq!(v, vec![10, 1, 12, 3, 4, 15]);
        assert!(pick_mut(&mut v, &[]).is_empty());
    }

    #[test]
    fn rows_follow_the_plan() {
        let prompt = [1, 2, 3, 4, 5];
        let last = [9];
        let p = |start, len, decode, completes_prompt| Scheduled {
            id: 0,
            start,
            len,
            decode,
            completes_prompt,
        };
        let row = |s: Scheduled, lp| plan_row(&s, &prompt, &last, lp);
        assert_eq!(
            row(p(0, 1, true, false), true),
            (&last[..], LogitsFor::Last)
        );
        assert_eq!(
            row(p(0, 3, false, false), false),
            (&prompt[..3], LogitsFor::None)
        );
        assert_eq!(
            row(p(3, 2, false, true), false),
            (&prompt[3..], LogitsFor::Last)
        );
        assert_eq!(
            row(p(0, 3, false, false), true),
            (&prompt[..3], LogitsFor::All)
        );
    }
}
