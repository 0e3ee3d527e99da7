//! Model hyper-parameters.
//!
//! [`ModelConfig`] is what the decoder runs: one normalized description for every family, read
//! from `config.json` (`hf_config`) or GGUF metadata (`gguf`) by each family's own file under
//! `families/`, so the forward pass never knows where a model came from. What sets the
//! families apart is a handful of switches in [`Family`], not a decoder of their own.

use std::path::Path;

use crate::error::{ModelError, Result};

/// How rotary embeddings pair the dimensions of a head.
///
/// HF checkpoints pair dim `i` with `i + head_dim/2` (`rotate_half`); llama.cpp's converter
/// permutes q/k rows so that GGUF files pair adjacent dims. Both give the same model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// HF `rotate_half` (NeoX style).
    Half,
    /// GGUF adjacent pairs (GPT-J style).
    Interleaved,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The architectures the decoder runs, by their transformers `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    #[default]
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
}

impl Arch {
    pub const ALL: [Arch; 6] = [
        Arch::Llama,
        Arch::Mistral,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Gemma3,
        Arch::Phi3,
    ];

    /// transformers' `model_type` (llama.cpp's `general.architecture` is the same word).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }

    /// From a `model_type`, an `architectures` class name or a GGUF architecture.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "llama" | "LlamaForCausalLM" => Arch::Llama,
            "mistral" | "MistralForCausalLM" => Arch::Mistral,
            "qwen2" | "Qwen2ForCausalLM" => Arch::Qwen2,
            "qwen3" | "Qwen3ForCausalLM" => Arch::Qwen3,
            "gemma3" | "gemma3_text" | "Gemma3ForCausalLM" => Arch::Gemma3,
            "phi3" | "Phi3ForCausalLM" => Arch::Phi3,
            _ => return None,
        })
    }

    /// The supported names, for error messages.
    pub fn supported() -> String {
        Self::ALL.map(Arch::name).join(", ")
    }
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// SwiGLU (Llama, Mistral, Qwen, Phi-3).
    #[default]
    Silu,
    /// GeGLU with the tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// What one family does differently from Llama; `Family::default()` is Llama.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Family {
    pub arch: Arch,
    /// Qwen2: q, k and v have biases.
    pub qkv_bias: bool,
    /// Qwen3, Gemma 3: each head of q and k is RMS-normalized before the rotary embedding.
    pub qk_norm: bool,
    /// Gemma 3: both sublayers' outputs are normalized too, before joining the residual.
    pub sandwich_norms: bool,
    /// Norm weights are stored as `w − 1` and applied as `1 + w` (Gemma's checkpoints;
    /// llama.cpp's converter adds the 1 before writing a GGUF).
    pub norm_plus_one: bool,
    pub activation: Activation,
    /// Gemma: the embedding is multiplied by √hidden.
    pub embed_scale: bool,
    /// Gemma: scores are scaled by `1/√query_pre_attn_scalar` instead of `1/√head_dim`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Logits become `cap·tanh(l/cap)`.
    pub final_softcap: Option<f64>,
    /// Keys older than this many positions are not seen by the sliding layers.
    pub sliding_window: Option<usize>,
    /// Which layers slide (`sliding_window` set, this empty: all of them).
    pub sliding_layers: Vec<bool>,
    /// Gemma 3: the rotary base of the sliding layers (the global ones use `rope_theta`).
    pub rope_local_theta: Option<f64>,
    /// Phi-3: q, k and v are one `[q + 2·kv, hidden]` matrix, gate and up one `[2·inter,
    /// hidden]`, in the file and in adapters (split at load).
    pub fused: bool,
}

/// The normalized hyper-parameters of a decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub rope_layout: RopeLayout,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub family: Family,
}

impl Family {
    /// What is added to every stored norm weight (Gemma's `1 + w`).
    pub fn norm_offset(&self) -> f64 {
        if self.norm_plus_one {
            1.0
        } else {
            0.0
        }
    }
}

impl ModelConfig {
    pub fn arch(&self) -> Arch {
        self.family.arch
    }

    /// The sliding window of layer `l`, `None` for a global layer.
    pub fn window(&self, l: usize) -> Option<usize> {
        let w = self.family.sliding_window?;
        let layers = &self.family.sliding_layers;
        (layers.is_empty() || layers.get(l).copied().unwrap_or(false)).then_some(w)
    }

    /// The factor of `q·k` before the softmax.
    pub fn attn_scale(&self) -> f64 {
        1.0 / self
            .family
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(ModelError::InvalidConfig {
                path: path.to_path_buf(),
                reason,
            })
        };
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 {
            return bad("num_heads, num_kv_heads and num_layers must be positive".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return bad(format!("head_dim {} must be even", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 {
            return bad("vocab_size and hidden_size must be positive".into());
        }
        let f = &self.family;
        if f.sliding_window == Some(0) {
            return bad("sliding_window must be positive".into());
        }
        if !f.sliding_layers.is_empty() && f.sliding_layers.len() != self.num_layers {
            return bad(format!(
                "{} layer types for {} layers",
                f.sliding_layers.len(),
                self.num_layers
            ));
        }
        if f.final_softcap.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return bad("final_logit_softcapping must be positive".into());
        }
        if f.query_pre_attn_scalar
            .is_some_and(|q| !(q > 0.0 && q.is_finite()))
        {
            return bad("query_pre_attn_scalar must be positive".into());
        }
        Ok(())
    }

    /// Inverse frequencies of the rotary embedding, with any scaling applied: of the global
    /// layers, or (`local`) of the sliding layers where the family gives them their own base
    /// (unscaled, as transformers and llama.cpp do).
    pub fn rope_inv_freq(&self, local: bool) -> Vec<f32> {
        let (theta, scaling) = match (local, self.family.rope_local_theta) {
            (true, Some(t)) => (t, &RopeScaling::None),
            _ => (self.rope_theta, &self.rope_scaling),
        };
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / d as f64))
            .collect();
        let scaled: Vec<f64> = match scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        scaled.into_iter().map(|f| f as f32).collect()
    }
}
