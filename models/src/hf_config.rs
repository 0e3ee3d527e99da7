//! `config.json` as transformers writes it: both the v4 layout (top-level `rope_theta` /
//! `rope_scaling`) and v5's (`rope_parameters`, per layer type where a family has two), for
//! every family; each family's file under `families/` reads its own switches from it.

use std::path::Path;

use serde::Deserialize;

use crate::config::{Arch, RopeScaling};
use crate::error::{ModelError, Result};

/// `config.json`, field for field (the ones this engine uses, of every family).
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
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
    pub hidden_act: Option<String>,
    /// Gemma's name for `hidden_act`.
    pub hidden_activation: Option<String>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    /// Qwen2/3: whether `sliding_window` applies at all, and from which layer on.
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    /// transformers ≥ 4.53: `sliding_attention` / `full_attention` per layer.
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3 before `layer_types`: every n-th layer is global.
    pub sliding_window_pattern: Option<usize>,
    pub query_pre_attn_scalar: Option<f64>,
    pub rope_local_base_freq: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

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

    /// The architecture: `model_type`, else the first known class in `architectures`.
    pub fn arch(&self) -> Option<Arch> {
        self.model_type
            .as_deref()
            .and_then(Arch::parse)
            .or_else(|| self.architectures.iter().find_map(|a| Arch::parse(a)))
    }

    /// v5 keeps a family's two rotary settings under `rope_parameters.{full,sliding}_attention`.
    pub(crate) fn rope_params(&self, layer_type: &str) -> Option<&serde_json::Value> {
        let p = self.rope_parameters.as_ref().filter(|v| !v.is_null());
        match p.and_then(|p| p.get(layer_type)) {
            Some(nested) => Some(nested),
            None => p.or(self.rope_scaling.as_ref()),
        }
    }

    /// Which layers slide, from `layer_types` (`None` when the file does not list them).
    pub(crate) fn sliding_from_layer_types(&self) -> Option<Vec<bool>> {
        self.layer_types
            .as_ref()
            .map(|t| t.iter().map(|x| x == "sliding_attention").collect())
    }

    /// `hidden_act` (or Gemma's `hidden_activation`) must be `want`, when given.
    pub(crate) fn expect_activation(&self, want: &[&str]) -> std::result::Result<(), String> {
        match self.hidden_activation.as_ref().or(self.hidden_act.as_ref()) {
            Some(act) if !want.contains(&act.as_str()) => Err(format!(
                "activation {act:?} is not supported for this architecture ({})",
                want.join(" or ")
            )),
            _ => Ok(()),
        }
    }
}

pub(crate) fn parse_rope_scaling(
    v: Option<&serde_json::Value>,
) -> std::result::Result<RopeScaling, String> {
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
