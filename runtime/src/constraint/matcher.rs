//! One sequence's place in its grammar. Each step: [`Constraint::prepare`] computes the allowed
//! set (the engine runs it beside the forward pass), [`Constraint::apply`] masks the row's
//! logits, [`Constraint::commit`] advances by the chosen token.

use std::time::{Duration, Instant};

use llguidance::Matcher;
use toktrie::SimpleVob;

use crate::error::{Result, RuntimeError};

pub struct Constraint {
    matcher: Matcher,
    eos: u32,
    /// The allowed set for the next token, once computed.
    mask: Option<std::result::Result<SimpleVob, String>>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .field("mask_ready", &self.mask.is_some())
            .finish()
    }
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
            eos: self.eos,
            mask: self.mask.clone(),
        }
    }
}

impl Constraint {
    pub(crate) fn new(matcher: Matcher, eos: u32) -> Self {
        Self {
            matcher,
            eos,
            mask: None,
        }
    }

    /// Computes the allowed set of the next token, unless it is ready; returns the time it took
    /// (zero when it was ready).
    pub fn prepare(&mut self) -> Duration {
        if self.mask.is_some() {
            return Duration::ZERO;
        }
        let t0 = Instant::now();
        self.mask = Some(
            self.matcher
                .compute_mask_or_eos()
                .map_err(|e| e.to_string()),
        );
        t0.elapsed()
    }

    /// Sets every logit the grammar does not allow to −∞ (computing the set first if needed).
    /// An allowed EOS allows every id in `stop_ids` too: ending the turn is ending the output.
    pub fn apply(&mut self, logits: &mut [f32], stop_ids: &[u32]) -> Result<()> {
        self.prepare();
        let mask = match self.mask.as_ref().expect("prepared") {
            Ok(m) => m,
            Err(e) => return Err(RuntimeError::Grammar(e.clone())),
        };
        let eos_ok = mask.is_allowed(self.eos);
        let mut any = false;
        for (id, l) in logits.iter_mut().enumerate() {
            let id = id as u32;
            let ok = if stop_ids.contains(&id) {
                eos_ok
            } else {
                id < mask.len() as u32 && mask.is_allowed(id)
            };
            if ok {
                any |= l.is_finite() || *l == f32::INFINITY;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            return Err(RuntimeError::Grammar(
                "no token the model can produce continues the grammar".into(),
            ));
        }
        Ok(())
    }

    /// Advances by the token chosen from the masked logits. Stop ids end the grammar as EOS.
    pub fn commit(&mut self, id: u32, stop_ids: &[u32]) -> Result<()> {
        self.mask = None;
        let id = if stop_ids.contains(&id) { self.eos } else { id };
        self.matcher
            .consume_token(id)
            .map_err(|e| RuntimeError::Grammar(e.to_string()))
    }

    /// The grammar is complete and accepts nothing more: the output ends here.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The output so far is a complete match (EOS would be allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}
