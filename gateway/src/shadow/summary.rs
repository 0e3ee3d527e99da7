//! What a model's per-token scores of a completion say about it, as numbers a report can average
//! and compare across arms: pure functions of the scores, shared by the endpoint and live shadows
//! so that both answer the same for the same pair.

use std::collections::HashMap;

use loraplex_runtime::TokenLogprob;
use serde::Serialize;

/// The probability mass a tail bucket keeps at least, so that a reference that puts mass where
/// the model's known tokens already hold (rounding to) all of it gives a large, finite KL rather
/// than infinity.
const TAIL_FLOOR: f64 = 1e-12;

/// Alternatives per side the KL estimate uses, whatever more a side returned: a live primary
/// captures only a few while it generates, and the estimate must not depend on how many each
/// path had, so that a live shadow's KL equals the endpoint's. A primary should capture at least
/// this many; with fewer, the estimate uses what there is (a looser lower bound).
pub const KL_TOP_K: usize = 5;

/// A completion's scores under one model, optionally against a reference's scores of the same
/// tokens (the primary's own, captured while it generated, or another model's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Completion tokens scored.
    pub scored_tokens: usize,
    /// Mean natural-log probability of the served tokens.
    pub mean_logprob: f64,
    /// `exp(-mean_logprob)`.
    pub perplexity: f64,
    /// Share of positions where the model's most likely token is the served one.
    pub top1_agreement: f64,
    /// This perplexity over the reference's: below 1, the model finds the completion likelier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl_ratio: Option<f64>,
    /// Mean over positions of KL(reference ‖ model), estimated from both sides' top-k
    /// ([`kl_estimate`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
}

/// Summarises `model`'s scores of a completion, one entry per token (each with its top
/// alternatives, most likely first). `None` for an empty completion, which has no mean. A
/// reference of another length, or scoring other tokens, is not comparable: its fields stay
/// `None`.
pub fn summarize(model: &[TokenLogprob], reference: Option<&[TokenLogprob]>) -> Option<Summary> {
    let n = model.len();
    if n == 0 {
        return None;
    }
    let mean_logprob = mean(model.iter().map(|t| t.logprob as f64));
    let perplexity = (-mean_logprob).exp();
    let agree = model
        .iter()
        .filter(|t| t.top.first().is_some_and(|&(id, _)| id == t.id))
        .count();
    let reference =
        reference.filter(|r| r.len() == n && r.iter().zip(model).all(|(a, b)| a.id == b.id));
    let (ppl_ratio, kl) = match reference {
        Some(r) => {
            let ref_mean = mean(r.iter().map(|t| t.logprob as f64));
            // exp(-m) / exp(-r) computed as one exponent, which keeps it finite longer.
            let ratio = (ref_mean - mean_logprob).exp();
            let kl = mean(r.iter().zip(model).map(|(p, q)| kl_estimate(p, q)));
            (Some(ratio), Some(kl))
        }
        None => (None, None),
    };
    Some(Summary {
        scored_tokens: n,
        mean_logprob,
        perplexity,
        top1_agreement: agree as f64 / n as f64,
        ppl_ratio,
        kl,
    })
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n as f64
}

/// KL(P ‖ Q) at one position, from what both sides returned: each one's top-k (the first
/// [`KL_TOP_K`]) and the served token's logprob. Neither side has the whole distribution, so
/// the vocabulary is coarsened to the tokens whose probability both sides know — the
/// intersection of the two top-k sets, plus the served token, which both scored — and one
/// tail bucket holding the rest of each side's
/// mass (`1 − Σ known`). A token in only one top-k (the union minus the intersection) goes to
/// the tail: its mass is known on one side and only bounded on the other.
///
/// The result is the exact KL between the coarsened distributions. By the log-sum inequality,
/// merging outcomes never increases KL, so this is a lower bound of the true KL, exact when the
/// known tokens carry all the mass of both sides, and 0 for identical inputs. (llama.cpp's
/// `perplexity --kl-divergence` keeps the reference's full distribution instead; a top-k
/// estimate is what a live shadow can afford to keep from the primary.) Computed in f64; a tail
/// is clamped to ≥ 0 against rounding, and the model's to at least [`TAIL_FLOOR`].
pub fn kl_estimate(p: &TokenLogprob, q: &TokenLogprob) -> f64 {
    let p_known = known(p);
    let q_known = known(q);
    let (mut kl, mut p_sum, mut q_sum) = (0.0, 0.0, 0.0);
    for (id, &lp) in &p_known {
        let Some(&lq) = q_known.get(id) else {
            continue;
        };
        let pp = lp.exp();
        kl += pp * (lp - lq);
        p_sum += pp;
        q_sum += lq.exp();
    }
    let p_tail = (1.0 - p_sum).max(0.0);
    let q_tail = (1.0 - q_sum).max(TAIL_FLOOR);
    if p_tail > 0.0 {
        kl += p_tail * (p_tail / q_tail).ln();
    }
    // Rounding can leave a hair below zero where the sides agree.
    kl.max(0.0)
}

/// The tokens whose logprob one side returned: its top-k and the served token.
fn known(t: &TokenLogprob) -> HashMap<u32, f64> {
    let mut m: HashMap<u32, f64> = t
        .top
        .iter()
        .take(KL_TOP_K)
        .map(|&(id, lp)| (id, lp as f64))
        .collect();
    m.insert(t.id, t.logprob as f64);
    m
}

/// How a shadow's own answer to a request compares with the primary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Comparison {
    pub exact_match: bool,
    /// Levenshtein distance over token ids: insertions, deletions and substitutions turning
    /// the primary's tokens into the shadow's.
    pub edit_distance: usize,
    pub primary_tokens: usize,
    pub shadow_tokens: usize,
}

pub fn compare(primary: &[u32], shadow: &[u32]) -> Comparison {
    Comparison {
        exact_match: primary == shadow,
        edit_distance: edit_distance(primary, shadow),
        primary_tokens: primary.len(),
        shadow_tokens: shadow.len(),
    }
}

/// Levenshtein distance, in two rows of `b.len() + 1` (completions are at most a context long).
pub fn edit_distance(a: &[u32], b: &[u32]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(x != y);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl(id: u32, p: f64, top: &[(u32, f64)]) -> TokenLogprob {
        TokenLogprob {
            id,
            logprob: p.ln() as f32,
            top: top.iter().map(|&(i, q)| (i, q.ln() as f32)).collect(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn summary_of_hand_computed_scores() {
        // Served tokens with probabilities 0.5 and 0.25; the first is the model's argmax.
        let model = [
            tl(1, 0.5, &[(1, 0.5), (2, 0.3)]),
            tl(3, 0.25, &[(2, 0.6), (3, 0.25)]),
        ];
        let s = summarize(&model, None).unwrap();
        let mean = (0.5f64.ln() + 0.25f64.ln()) / 2.0;
        assert_eq!(s.scored_tokens, 2);
        assert!(close(s.mean_logprob, mean));
        // exp(-mean) = 1/sqrt(0.5·0.25)
        assert!(close(s.perplexity, 1.0 / (0.125f64).sqrt()));
        assert!(close(s.top1_agreement, 0.5));
        assert_eq!((s.ppl_ratio, s.kl), (None, None));
    }

    #[test]
    fn ratio_and_kl_against_a_reference() {
        let model = [tl(1, 0.5, &[(1, 0.5), (2, 0.3)])];
        let reference = [tl(1, 0.8, &[(1, 0.8), (2, 0.1)])];
        let s = summarize(&model, Some(&reference)).unwrap();
        // (1/0.5) / (1/0.8)
        assert!(close(s.ppl_ratio.unwrap(), 1.6));
        // Known on both sides: {1, 2}; tails 0.1 and 0.2.
        let kl = 0.8 * (0.8f64 / 0.5).ln() + 0.1 * (0.1f64 / 0.3).ln() + 0.1 * (0.1f64 / 0.2).ln();
        assert!(close(s.kl.unwrap(), kl), "{} vs {kl}", s.kl.unwrap());
        // Against itself: ratio 1, KL 0.
        let own = summarize(&model, Some(&model)).unwrap();
        assert!(close(own.ppl_ratio.unwrap(), 1.0));
        assert!(close(own.kl.unwrap(), 0.0));
    }

    #[test]
    fn kl_tokens_in_only_one_top_k_go_to_the_tail() {
        // Token 5 is in P's top-k only and token 7 in Q's only: both join the tails.
        let p = tl(1, 0.6, &[(1, 0.6), (5, 0.3)]);
        let q = tl(1, 0.4, &[(1, 0.4), (7, 0.5)]);
        let kl = 0.6 * (0.6f64 / 0.4).ln() + 0.4 * (0.4f64 / 0.6).ln();
        assert!(close(kl_estimate(&p, &q), kl));
        // The served token counts even outside both top-k lists.
        let p = tl(9, 0.1, &[(1, 0.9)]);
        let q = tl(9, 0.2, &[(2, 0.7)]);
        let kl = 0.1 * (0.1f64 / 0.2).ln() + 0.9 * (0.9f64 / 0.8).ln();
        assert!(close(kl_estimate(&p, &q), kl));
    }

    #[test]
    fn kl_uses_the_first_kl_top_k_alternatives_only() {
        let top: Vec<(u32, f64)> = (0..KL_TOP_K as u32).map(|i| (i, 0.1)).collect();
        let (p, q) = (tl(0, 0.1, &top), tl(0, 0.1, &top));
        // An alternative past KL_TOP_K on both sides, with different mass, changes nothing.
        let mut longer = top.clone();
        longer.push((99, 0.05));
        let mut q2 = tl(0, 0.1, &longer);
        q2.top.last_mut().unwrap().1 = 0.3f64.ln() as f32;
        assert_eq!(kl_estimate(&p, &q), kl_estimate(&tl(0, 0.1, &longer), &q2));
        assert!(close(kl_estimate(&p, &q), 0.0));
    }

    #[test]
    fn kl_stays_finite_when_the_model_tail_is_empty() {
        // The model puts all its mass on token 1; the reference keeps 0.5 elsewhere.
        let p = tl(1, 0.5, &[(1, 0.5)]);
        let q = tl(1, 1.0, &[(1, 1.0)]);
        let kl = kl_estimate(&p, &q);
        assert!(kl.is_finite() && kl > 5.0, "{kl}");
    }

    #[test]
    fn mismatched_or_empty_inputs() {
        assert!(summarize(&[], None).is_none());
        let model = [tl(1, 0.5, &[(1, 0.5)])];
        let other = [tl(2, 0.5, &[(2, 0.5)])];
        let s = summarize(&model, Some(&other)).unwrap();
        assert_eq!((s.ppl_ratio, s.kl), (None, None));
        let s = summarize(&model, Some(&[])).unwrap();
        assert_eq!(s.kl, None);
    }

    #[test]
    fn edit_distance_counts_token_edits() {
        assert_eq!(edit_distance(&[], &[]), 0);
        assert_eq!(edit_distance(&[1, 2, 3], &[]), 3);
        assert_eq!(edit_distance(&[], &[4, 5]), 2);
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 2, 3]), 0);
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 9, 3]), 1);
        assert_eq!(edit_distance(&[1, 2, 3], &[2, 3, 4]), 2);
        // kitten → sitting, as ids.
        assert_eq!(
            edit_distance(&[1, 2, 3, 3, 4, 5], &[6, 2, 3, 3, 2, 5, 7]),
            3
        );
        let c = compare(&[1, 2], &[1, 2, 3]);
        assert_eq!(
            c,
            Comparison {
                exact_match: false,
                edit_distance: 1,
                primary_tokens: 2,
                shadow_tokens: 3
            }
        );
        assert!(compare(&[4], &[4]).exact_match);
    }
}
