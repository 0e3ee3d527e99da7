//! Gemma 3 text models. Against Llama: GeGLU, norms around both sublayers' outputs too,
//! `(1 + w)` norms (checkpoints store `w`), RMS-normalized q/k heads, the embedding scaled by
//! √hidden, scores scaled by `1/√query_pre_attn_scalar`, and local layers (a sliding window,
//! their own rotary base) interleaved with global ones. llama.cpp's converter adds the 1 to
//! every norm weight and keeps half-split rotary; llama.cpp fixes the layer pattern (every
//! sixth layer global) and the local base (10 000) instead of writing them.
//! `attn_logit_softcapping` is Gemma 2's: transformers' Gemma 3 never applies it, so neither
//! does this.

use super::{no_attention_bias, GgufMeta, Outcome};
use crate::config::{Activation, ModelConfig};
use crate::hf_config::HfConfig;

/// llama.cpp's fixed Gemma 3 settings (its `set_swa_pattern(6)`, `rope_freq_base_train_swa`).
const GGUF_PATTERN: usize = 6;
const LOCAL_THETA: f64 = 10_000.0;

fn common(cfg: &mut ModelConfig) {
    let f = &mut cfg.family;
    f.qk_norm = true;
    f.sandwich_norms = true;
    f.activation = Activation::GeluTanh;
    f.embed_scale = true;
}

/// Every `pattern`-th layer is global, the others slide.
fn pattern_layers(layers: usize, pattern: usize) -> Vec<bool> {
    (0..layers)
        .map(|l| pattern == 0 || (l + 1) % pattern != 0)
        .collect()
}

pub(super) fn from_hf(c: &HfConfig, cfg: &mut ModelConfig) -> Outcome {
    c.expect_activation(&["gelu_pytorch_tanh"])?;
    no_attention_bias(c)?;
    common(cfg);
    let f = &mut cfg.family;
    f.norm_plus_one = true;
    f.query_pre_attn_scalar = c.query_pre_attn_scalar;
    f.final_softcap = c.final_logit_softcapping;
    f.sliding_window = c.sliding_window;
    f.sliding_layers = c.sliding_from_layer_types().unwrap_or_else(|| {
        pattern_layers(
            cfg.num_layers,
            c.sliding_window_pattern.unwrap_or(GGUF_PATTERN),
        )
    });
    let local = c
        .rope_params("sliding_attention")
        .and_then(|p| p.get("rope_theta")?.as_f64());
    f.rope_local_theta = Some(local.or(c.rope_local_base_freq).unwrap_or(LOCAL_THETA));
    Ok(())
}

pub(super) fn from_gguf(m: &dyn GgufMeta, cfg: &mut ModelConfig) -> Outcome {
    common(cfg);
    let f = &mut cfg.family;
    f.final_softcap = m.f64("final_logit_softcapping");
    f.sliding_window = m.sliding_window();
    let pattern = m
        .usize("attention.sliding_window_pattern")
        .unwrap_or(GGUF_PATTERN);
    f.sliding_layers = pattern_layers(cfg.num_layers, pattern);
    f.rope_local_theta = Some(LOCAL_THETA);
    Ok(())
}
