//! The families the decoder runs. Each file says, for its architectures, how `config.json`
//! and GGUF metadata map onto [`Family`]'s switches; the layers and the forward pass are
//! written once, in `decoder`, and read those switches.

mod gemma3;
mod llama;
mod phi3;
mod qwen;

use std::path::Path;

use crate::config::{Arch, ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::hf_config::{parse_rope_scaling, HfConfig};

/// A family's reading of GGUF metadata: `{arch}.{key}` lookups, and which tensors the file has.
pub(crate) trait GgufMeta {
    fn usize(&self, key: &str) -> Option<usize>;
    fn f64(&self, key: &str) -> Option<f64>;
    fn has_tensor(&self, name: &str) -> bool;

    /// `attention.sliding_window`; llama.cpp writes 0 for none.
    fn sliding_window(&self) -> Option<usize> {
        self.usize("attention.sliding_window").filter(|&w| w > 0)
    }
}

type Outcome = std::result::Result<(), String>;

/// `config.json` read into a [`ModelConfig`]: what every family reads alike, then the family's
/// own switches.
pub(crate) fn from_hf_config(c: &HfConfig, path: &Path) -> Result<ModelConfig> {
    let invalid = |reason: String| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        reason,
    };
    let arch = c
        .arch()
        .ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            arch: c
                .model_type
                .clone()
                .or_else(|| c.architectures.first().cloned())
                .unwrap_or_default(),
            supported: Arch::supported(),
        })?;
    if c.mlp_bias {
        return Err(invalid("MLP biases are not supported".into()));
    }
    let full = c.rope_params("full_attention");
    let rope_theta = c
        .rope_theta
        .or_else(|| full?.get("rope_theta")?.as_f64())
        .unwrap_or(10_000.0);
    let rope_scaling = parse_rope_scaling(full).map_err(invalid)?;
    let mut cfg = ModelConfig {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim: c
            .head_dim
            .unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
        rms_norm_eps: c.rms_norm_eps,
        rope_theta,
        rope_scaling,
        rope_layout: RopeLayout::Half,
        max_position_embeddings: c.max_position_embeddings,
        // transformers' default: tied unless the config says otherwise.
        tie_word_embeddings: c.tie_word_embeddings.unwrap_or(true),
        family: Default::default(),
    };
    family_from_hf(arch, c, &mut cfg).map_err(invalid)?;
    cfg.validate(path)?;
    Ok(cfg)
}

/// Sets `cfg.family` (and any family default) from `config.json`.
fn family_from_hf(arch: Arch, c: &HfConfig, cfg: &mut ModelConfig) -> Outcome {
    cfg.family.arch = arch;
    match arch {
        Arch::Llama | Arch::Mistral => llama::from_hf(c, cfg),
        Arch::Qwen2 | Arch::Qwen3 => qwen::from_hf(c, cfg),
        Arch::Gemma3 => gemma3::from_hf(c, cfg),
        Arch::Phi3 => phi3::from_hf(c, cfg),
    }
}

/// Sets `cfg.family` from GGUF metadata; `cfg` holds what every family reads the same way.
pub(crate) fn from_gguf(arch: Arch, m: &dyn GgufMeta, cfg: &mut ModelConfig) -> Outcome {
    cfg.family.arch = arch;
    match arch {
        Arch::Llama | Arch::Mistral => llama::from_gguf(m, cfg),
        Arch::Qwen2 | Arch::Qwen3 => qwen::from_gguf(m, cfg),
        Arch::Gemma3 => gemma3::from_gguf(m, cfg),
        Arch::Phi3 => phi3::from_gguf(m, cfg),
    }
}

/// Refuses attention biases where a family has none (Qwen2's are part of the family).
fn no_attention_bias(c: &HfConfig) -> Outcome {
    if c.attention_bias {
        return Err("attention biases are not supported for this architecture".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
