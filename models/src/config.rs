//! Model hyper-parameters.
//!
//! [`HfConfig`] mirrors `config.json` as transformers writes it (both the v4 layout with top-level
//! `rope_theta`/`rope_scaling` and the v5 layout with `rope_parameters`); GGUF metadata is read
//! into the same normalized [`LlamaConfig`], so the forward pass never knows where it came from.

use std::path::Path;

use serde::Deserialize;

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

/// The normalized hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
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
}

impl LlamaConfig {
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
        Ok(())
    }

    /// Inverse frequencies of the rotary embedding, with any scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64))
            .collect();
        let scaled: Vec<f64> = match &self.rope_scaling {
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

/// `config.json` of a transformers checkpoint, field for field (the ones this engine uses).
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
    pub hidden_act: Option<String>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

pub(crate) const SUPPORTED_ARCHS: &[&str] = &["llama", "mistral"];

impl HfConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The stored dtype name (`dtype` in transformers v5, `torch_dtype` before).
    pub fn stored_dtype(&self) -> Option<&str> {
        self.dtype.as_deref().or(self.torch_dtype.as_deref())
    }

    pub fn to_llama(&self, path: &Path) -> Result<LlamaConfig> {
        let arch = self
            .model_type
            .clone()
            .or_else(|| self.architectures.first().cloned())
            .unwrap_or_default();
        let arch_ok = SUPPORTED_ARCHS.contains(&arch.as_str())
            || self
                .architectures
                .iter()
                .any(|a| a == "LlamaForCausalLM" || a == "MistralForCausalLM");
        if !arch_ok {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch,
            });
        }
        let invalid = |reason: String| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        };
        if self.attention_bias || self.mlp_bias {
            return Err(invalid("attention/MLP biases are not supported".into()));
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(invalid(format!(
                    "hidden_act {act:?} is not supported (silu only)"
                )));
            }
        }
        // v5 keeps theta and scaling together under rope_parameters; v4 splits them.
        let rope_params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let rope_theta = self
            .rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10_000.0);
        let rope_scaling = parse_rope_scaling(rope_params).map_err(invalid)?;
        let cfg = LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            rope_layout: RopeLayout::Half,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}

fn parse_rope_scaling(v: Option<&serde_json::Value>) -> std::result::Result<RopeScaling, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let ty = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| format!("rope scaling {ty:?} needs a numeric {k}"))
    };
    match ty {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        other => Err(format!("rope scaling type {other:?} is not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_json() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 512
        })
    }

    #[test]
    fn reads_v4_and_v5_rope_layouts() {
        let mut v4 = base_json();
        v4["rope_theta"] = 500000.0.into();
        let c: HfConfig = serde_json::from_value(v4).unwrap();
        assert_eq!(c.to_llama(Path::new("x")).unwrap().rope_theta, 500000.0);

        let mut v5 = base_json();
        v5["rope_parameters"] = serde_json::json!({"rope_theta": 1234.0, "rope_type": "default"});
        let c: HfConfig = serde_json::from_value(v5).unwrap();
        let l = c.to_llama(Path::new("x")).unwrap();
        assert_eq!(l.rope_theta, 1234.0);
        assert_eq!(l.head_dim, 16);
        assert_eq!(l.rope_scaling, RopeScaling::None);
    }

    #[test]
    fn llama3_scaling_changes_only_low_frequencies() {
        let mut v = base_json();
        v["rope_theta"] = 500000.0.into();
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c: HfConfig = serde_json::from_value(v).unwrap();
        let l = c.to_llama(Path::new("x")).unwrap();
        let mut plain = l.clone();
        plain.rope_scaling = RopeScaling::None;
        let (a, b) = (l.rope_inv_freq(), plain.rope_inv_freq());
        assert_eq!(a[0], b[0]);
        assert!((a[7] - b[7] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_unknown_architecture() {
        let mut v = base_json();
        v["model_type"] = "gpt_neox".into();
        v["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
        let c: HfConfig = serde_json::from_value(v).unwrap();
        assert!(matches!(
            c.to_llama(Path::new("x")),
            Err(ModelError::UnsupportedArchitecture { .. })
        ));
    }
}
