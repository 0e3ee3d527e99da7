//! Qwen2/2.5 (biases on q, k and v) and Qwen3 (each head of q and k RMS-normalized, no
//! biases). Both may slide a window over the layers from `max_window_layers` on when
//! `use_sliding_window` is set (or as `layer_types` lists); llama.cpp runs them with
//! half-split rotary, so their GGUF q/k rows are not permuted.

use super::{no_attention_bias, GgufMeta, Outcome};
use crate::config::{Arch, ModelConfig};
use crate::hf_config::HfConfig;

pub(super) fn from_hf(c: &HfConfig, cfg: &mut ModelConfig) -> Outcome {
    c.expect_activation(&["silu"])?;
    match cfg.arch() {
        Arch::Qwen2 => cfg.family.qkv_bias = true,
        _ => {
            no_attention_bias(c)?;
            cfg.family.qk_norm = true;
        }
    }
    let sliding = match c.sliding_from_layer_types() {
        Some(layers) => layers,
        None if c.use_sliding_window == Some(true) => {
            let from = c.max_window_layers.unwrap_or(0);
            (0..cfg.num_layers).map(|l| l >= from).collect()
        }
        None => Vec::new(),
    };
    if sliding.iter().any(|&s| s) {
        cfg.family.sliding_window = Some(
            c.sliding_window
                .ok_or("layers slide but sliding_window is not set")?,
        );
        cfg.family.sliding_layers = sliding;
    }
    Ok(())
}

pub(super) fn from_gguf(m: &dyn GgufMeta, cfg: &mut ModelConfig) -> Outcome {
    match cfg.arch() {
        Arch::Qwen2 => cfg.family.qkv_bias = m.has_tensor("blk.0.attn_q.bias"),
        _ => cfg.family.qk_norm = true,
    }
    Ok(())
}
