//! Token selection. Parameters are validated into types on construction, so an engine never sees
//! a temperature of 0 with a top-p, a negative top-k, or a penalty outside its range.

use std::num::NonZeroUsize;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, RuntimeError};

/// Softmax temperature, finite and > 0 (0 means greedy: use [`Sampling::Greedy`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature(f32);

impl Temperature {
    pub fn new(t: f32) -> Result<Self> {
        if t.is_finite() && t > 0.0 {
            Ok(Self(t))
        } else {
            Err(RuntimeError::invalid(
                "temperature",
                format!("{t} must be finite and > 0"),
            ))
        }
    }
    pub fn get(self) -> f32 {
        self.0
    }
}

/// Nucleus mass in (0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopP(f32);

impl TopP {
    pub fn new(p: f32) -> Result<Self> {
        if p > 0.0 && p <= 1.0 {
            Ok(Self(p))
        } else {
            Err(RuntimeError::invalid(
                "top_p",
                format!("{p} must be in (0, 1]"),
            ))
        }
    }
    pub fn get(self) -> f32 {
        self.0
    }
}

/// Minimum probability relative to the most likely token, in (0, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinP(f32);

impl MinP {
    pub fn new(p: f32) -> Result<Self> {
        if p > 0.0 && p < 1.0 {
            Ok(Self(p))
        } else {
            Err(RuntimeError::invalid(
                "min_p",
                format!("{p} must be in (0, 1)"),
            ))
        }
    }
    pub fn get(self) -> f32 {
        self.0
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Highest logit; ties go to the lowest id. Deterministic.
    Greedy,
    /// Draw from the tempered distribution, optionally truncated (top-k, then top-p, then min-p).
    Random {
        temperature: Temperature,
        top_k: Option<NonZeroUsize>,
        top_p: Option<TopP>,
        min_p: Option<MinP>,
        seed: u64,
    },
}

/// Penalties on tokens already seen; OpenAI's presence/frequency on generated tokens, vLLM's
/// multiplicative repetition penalty on prompt and generated tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    repetition: f32,
    presence: f32,
    frequency: f32,
}

impl Default for Penalties {
    fn default() -> Self {
        Self {
            repetition: 1.0,
            presence: 0.0,
            frequency: 0.0,
        }
    }
}

impl Penalties {
    pub fn new(repetition: f32, presence: f32, frequency: f32) -> Result<Self> {
        if !(repetition.is_finite() && repetition > 0.0) {
            return Err(RuntimeError::invalid(
                "repetition_penalty",
                format!("{repetition} must be finite and > 0"),
            ));
        }
        for (name, v) in [
            ("presence_penalty", presence),
            ("frequency_penalty", frequency),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(RuntimeError::invalid(
                    name,
                    format!("{v} must be in [-2, 2]"),
                ));
            }
        }
        Ok(Self {
            repetition,
            presence,
            frequency,
        })
    }

    pub fn is_neutral(&self) -> bool {
        self.repetition == 1.0 && self.presence == 0.0 && self.frequency == 0.0
    }

    /// `prompt_seen[id]`: the id occurs in the prompt; `counts`: occurrences in the output.
    pub fn apply(
        &self,
        logits: &mut [f32],
        prompt_seen: &[bool],
        counts: &std::collections::HashMap<u32, u32>,
    ) {
        if self.repetition != 1.0 {
            let rep = |l: &mut f32| {
                *l = if *l > 0.0 {
                    *l / self.repetition
                } else {
                    *l * self.repetition
                }
            };
            for (id, seen) in prompt_seen.iter().enumerate() {
                if *seen && !counts.contains_key(&(id as u32)) {
                    rep(&mut logits[id]);
                }
            }
            for &id in counts.keys() {
                rep(&mut logits[id as usize]);
            }
        }
        for (&id, &n) in counts {
            logits[id as usize] -= self.frequency * n as f32 + self.presence;
        }
    }
}

/// Additive biases on given ids, each in [-100, 100] as OpenAI defines them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitBias(Vec<(u32, f32)>);

impl LogitBias {
    pub fn new(entries: Vec<(u32, f32)>, vocab: usize) -> Result<Self> {
        for &(id, b) in &entries {
            if id as usize >= vocab {
                return Err(RuntimeError::invalid(
                    "logit_bias",
                    format!("token id {id} is outside the vocabulary"),
                ));
            }
            if !(-100.0..=100.0).contains(&b) {
                return Err(RuntimeError::invalid(
                    "logit_bias",
                    format!("bias {b} must be in [-100, 100]"),
                ));
            }
        }
        Ok(Self(entries))
    }

    pub fn apply(&self, logits: &mut [f32]) {
        for &(id, b) in &self.0 {
            logits[id as usize] += b;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Log-probability of a token, and of the most likely alternatives at the same step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// Most likely first; length = the requested top-N.
    pub top: Vec<(u32, f32)>,
}

/// `log_softmax` of raw model logits; returns the chosen token's logprob and the top `n`.
pub fn logprobs_of(logits: &[f32], id: u32, n: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64
        + logits
            .iter()
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln();
    let lp = |l: f32| (l as f64 - lse) as f32;
    // Tokens ruled out (−∞, as a constraint leaves them) are no alternatives.
    let top = top_n(logits, n)
        .into_iter()
        .map(|i| (i, lp(logits[i as usize])))
        .filter(|(_, l)| l.is_finite())
        .collect();
    TokenLogprob {
        id,
        logprob: lp(logits[id as usize]),
        top,
    }
}

/// Ids of the `n` largest values, largest first (ties: lower id first).
pub fn top_n(values: &[f32], n: usize) -> Vec<u32> {
    let n = n.min(values.len());
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        values[*b as usize]
            .total_cmp(&values[*a as usize])
            .then(a.cmp(b))
    };
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
    }
    idx.sort_unstable_by(cmp);
    idx
}

pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Per-sequence sampling state (the RNG stream).
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::Random { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self {
            sampling,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Chooses a token from processed logits (penalties and biases already applied).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Random {
                temperature,
                top_k,
                top_p,
                min_p,
                ..
            } => {
                let (ids, probs) = truncated_distribution(logits, temperature, top_k, top_p, min_p);
                let r: f32 = self.rng.random::<f32>() * probs.iter().sum::<f32>();
                let mut acc = 0.0;
                for (id, p) in ids.iter().zip(&probs) {
                    acc += p;
                    if r < acc {
                        return *id;
                    }
                }
                *ids.last().expect("the support is never empty")
            }
        }
    }
}

/// The support and unnormalized probabilities after temperature, top-k, top-p and min-p.
/// Sorting the whole vocabulary each step is avoided: candidates are taken in growing
/// top-n windows until they hold the requested mass.
pub fn truncated_distribution(
    logits: &[f32],
    temperature: Temperature,
    top_k: Option<NonZeroUsize>,
    top_p: Option<TopP>,
    min_p: Option<MinP>,
) -> (Vec<u32>, Vec<f32>) {
    let t = temperature.get();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weight = |l: f32| ((l - max) / t).exp();
    let k_cap = top_k
        .map(|k| k.get())
        .unwrap_or(logits.len())
        .min(logits.len());
    let needs_order = top_k.is_some() || top_p.is_some();
    let mut ids: Vec<u32> = if needs_order {
        let total: f32 = if top_p.is_some() {
            logits.iter().map(|&l| weight(l)).sum()
        } else {
            0.0
        };
        let mut n = k_cap.min(64);
        loop {
            let cand = top_n(logits, n);
            let mass: f32 = cand.iter().map(|&i| weight(logits[i as usize])).sum();
            let enough = match top_p {
                Some(p) => mass >= p.get() * total,
                None => true,
            };
            if enough || n >= k_cap {
                break cand;
            }
            n = (n * 4).min(k_cap);
        }
    } else {
        (0..logits.len() as u32).collect()
    };
    let mut probs: Vec<f32> = ids.iter().map(|&i| weight(logits[i as usize])).collect();
    if let Some(p) = top_p {
        let total: f32 = logits.iter().map(|&l| weight(l)).sum();
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (j, w) in probs.iter().enumerate() {
            acc += w;
            if acc >= p.get() * total {
                keep = j + 1;
                break;
            }
        }
        ids.truncate(keep);
        probs.truncate(keep);
    }
    if let Some(mp) = min_p {
        // Probabilities relative to the top token: weight(max) = 1.
        let (kept_ids, kept_probs): (Vec<u32>, Vec<f32>) = ids
            .iter()
            .zip(&probs)
            .filter(|(_, &w)| w >= mp.get())
            .map(|(i, w)| (*i, *w))
            .unzip();
        ids = kept_ids;
        probs = kept_probs;
    }
    (ids, probs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(t: f32, k: Option<usize>, p: Option<f32>, seed: u64) -> Sampling {
        Sampling::Random {
            temperature: Temperature::new(t).unwrap(),
            top_k: k.and_then(NonZeroUsize::new),
            top_p: p.map(|p| TopP::new(p).unwrap()),
            min_p: None,
            seed,
        }
    }

    fn logits() -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn same_seed_same_tokens() {
        let l = logits();
        let draw = |seed| {
            let mut s = Sampler::new(random(1.0, None, None, seed));
            (0..50).map(|_| s.sample(&l)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let l = logits();
        let top5 = top_n(&l, 5);
        let mut s = Sampler::new(random(5.0, Some(5), None, 1));
        for _ in 0..500 {
            assert!(top5.contains(&s.sample(&l)));
        }
        // With top_p tiny, only the single best token remains.
        let mut s = Sampler::new(random(1.0, None, Some(1e-6), 1));
        for _ in 0..100 {
            assert_eq!(s.sample(&l), argmax(&l));
        }
        // A flat distribution: top_p = 0.5 keeps about half of the ids.
        let flat = vec![0.0f32; 100];
        let (ids, _) = truncated_distribution(
            &flat,
            Temperature::new(1.0).unwrap(),
            None,
            Some(TopP::new(0.5).unwrap()),
            None,
        );
        assert!((49..=51).contains(&ids.len()), "{}", ids.len());
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let l = vec![10.0, 9.0, 0.0, -5.0];
        let (ids, _) = truncated_distribution(
            &l,
            Temperature::new(1.0).unwrap(),
            None,
            None,
            Some(MinP::new(0.1).unwrap()),
        );
        assert_eq!(ids, vec![0, 1]);
    }

    #[test]
    fn penalties_follow_their_definitions() {
        let mut l = vec![2.0, -2.0, 1.0, 1.0];
        let prompt_seen = vec![true, true, false, false];
        let counts = [(2u32, 3u32)].into_iter().collect();
        Penalties::new(2.0, 0.5, 0.25)
            .unwrap()
            .apply(&mut l, &prompt_seen, &counts);
        assert_eq!(l[0], 1.0); // positive logit divided by the repetition penalty
        assert_eq!(l[1], -4.0); // negative logit multiplied
        assert_eq!(l[2], 1.0 / 2.0 - 0.25 * 3.0 - 0.5); // repetition, then frequency and presence
        assert_eq!(l[3], 1.0); // unseen: unchanged
        assert!(Penalties::new(1.0, 2.5, 0.0).is_err());
        assert!(Penalties::new(0.0, 0.0, 0.0).is_err());
    }

    /// Each penalty out of range is refused naming itself, not a neighbour.
    fn refused(r: f32, p: f32, f: f32) -> &'static str {
        match Penalties::new(r, p, f) {
            Err(RuntimeError::InvalidParameter { param, .. }) => param,
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    #[test]
    fn repetition_penalty_errors_name_repetition_penalty() {
        for r in [0.0, -1.0, f32::INFINITY, f32::NAN] {
            assert_eq!(refused(r, 0.0, 0.0), "repetition_penalty");
        }
    }

    #[test]
    fn presence_penalty_errors_name_presence_penalty() {
        for p in [2.5, -2.5, f32::NAN] {
            assert_eq!(refused(1.0, p, 0.0), "presence_penalty");
        }
    }

    #[test]
    fn frequency_penalty_errors_name_frequency_penalty() {
        for f in [2.5, -2.5, f32::NAN] {
            assert_eq!(refused(1.0, 0.0, f), "frequency_penalty");
        }
    }

    #[test]
    fn logprobs_are_normalized() {
        let l = vec![1.0f32, 2.0, 3.0];
        let lp = logprobs_of(&l, 1, 2);
        let total: f32 = [0u32, 1, 2]
            .iter()
            .map(|&i| logprobs_of(&l, i, 0).logprob.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
        assert!((lp.logprob - lp.top[1].1).abs() < 1e-7);
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(Temperature::new(0.0).is_err());
        assert!(Temperature::new(f32::NAN).is_err());
        assert!(TopP::new(0.0).is_err());
        assert!(TopP::new(1.5).is_err());
        assert!(MinP::new(1.0).is_err());
        assert!(LogitBias::new(vec![(5, 101.0)], 10).is_err());
        assert!(LogitBias::new(vec![(10, 1.0)], 10).is_err());
    }
}
