//! Llama 2/3, SmolLM2 and Mistral: the reference shape every other family departs from.
//! Mistral adds a sliding window over every layer where its config sets one; llama.cpp's
//! converter permutes q/k rows of these two (adjacent-pair rotary in a GGUF).

use super::{no_attention_bias, GgufMeta, Outcome};
use crate::config::{Arch, ModelConfig, RopeLayout};
use crate::hf_config::HfConfig;

pub(super) fn from_hf(c: &HfConfig, cfg: &mut ModelConfig) -> Outcome {
    no_attention_bias(c)?;
    c.expect_activation(&["silu"])?;
    if cfg.arch() == Arch::Mistral {
        cfg.family.sliding_window = c.sliding_window;
    }
    Ok(())
}

pub(super) fn from_gguf(m: &dyn GgufMeta, cfg: &mut ModelConfig) -> Outcome {
    cfg.rope_layout = RopeLayout::Interleaved;
    if cfg.arch() == Arch::Mistral {
        cfg.family.sliding_window = m.sliding_window();
    }
    Ok(())
}
