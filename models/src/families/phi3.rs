//! Phi-3: Llama's layers with q/k/v fused into one `qkv_proj` and gate/up into one
//! `gate_up_proj` (llama.cpp: `attn_qkv`, and `ffn_up` holding both halves, gate first). The
//! decoder splits them at load, and adapters on the fused modules are split the same way, so
//! each slice runs as its own projection. LongRoPE (`rope_scaling` of type `longrope`) and
//! partial rotary are refused; a sliding window applies to every layer.

use super::{no_attention_bias, GgufMeta, Outcome};
use crate::config::ModelConfig;
use crate::hf_config::HfConfig;

pub(super) fn from_hf(c: &HfConfig, cfg: &mut ModelConfig) -> Outcome {
    no_attention_bias(c)?;
    c.expect_activation(&["silu"])?;
    let nested = c
        .rope_params("full_attention")
        .and_then(|p| p.get("partial_rotary_factor")?.as_f64());
    if c.partial_rotary_factor.or(nested).is_some_and(|f| f != 1.0) {
        return Err("partial_rotary_factor other than 1.0 is not supported".into());
    }
    cfg.family.fused = true;
    cfg.family.sliding_window = c.sliding_window;
    Ok(())
}

pub(super) fn from_gguf(m: &dyn GgufMeta, cfg: &mut ModelConfig) -> Outcome {
    if m.has_tensor("rope_factors_long.weight") {
        return Err("LongRoPE (rope_factors_long) is not supported".into());
    }
    if m.usize("rope.dimension_count")
        .is_some_and(|d| d != cfg.head_dim)
    {
        return Err("partial rotary is not supported".into());
    }
    cfg.family.fused = true;
    cfg.family.sliding_window = m.sliding_window();
    Ok(())
}
