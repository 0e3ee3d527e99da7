//! `adapter_config.json` as PEFT writes it, and which base modules it targets (PEFT's own
//! matching rules: a list matches a module name or a dotted suffix of it, a string is a regex that
//! must match the whole name; rank/alpha patterns match a suffix).

use std::collections::HashMap;

use loraplex_models::{Naming, Proj};
use regex::Regex;
use serde::Deserialize;

use crate::error::{AdapterError, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Layers {
    One(usize),
    Many(Vec<usize>),
}

/// The fields of a PEFT LoRA config this engine honours or must refuse.
#[derive(Debug, Clone, Deserialize)]
pub struct PeftConfig {
    pub peft_type: Option<String>,
    pub r: usize,
    #[serde(default = "one")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    pub target_modules: Option<TargetModules>,
    pub rank_pattern: Option<HashMap<String, usize>>,
    pub alpha_pattern: Option<HashMap<String, f64>>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    pub layers_to_transform: Option<Layers>,
    #[serde(default)]
    pub use_dora: bool,
    pub modules_to_save: Option<Vec<String>>,
    pub bias: Option<String>,
    pub base_model_name_or_path: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// The projections LoRA may adapt, with their PEFT module names.
pub const TARGETS: [(Proj, &str); 7] = [
    (Proj::Q, "q_proj"),
    (Proj::K, "k_proj"),
    (Proj::V, "v_proj"),
    (Proj::O, "o_proj"),
    (Proj::Gate, "gate_proj"),
    (Proj::Up, "up_proj"),
    (Proj::Down, "down_proj"),
];

/// `model.layers.N.self_attn.q_proj`: the module name PEFT sees on a Llama.
pub fn module_name(layer: usize, proj: Proj) -> String {
    let w = proj.name(Naming::Hf, layer);
    w.strip_suffix(".weight").unwrap_or(&w).to_string()
}

impl PeftConfig {
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: PeftConfig =
            serde_json::from_str(text).map_err(|e| AdapterError::InvalidConfig(e.to_string()))?;
        cfg.check_supported()?;
        Ok(cfg)
    }

    fn check_supported(&self) -> Result<()> {
        if let Some(t) = &self.peft_type {
            if !t.eq_ignore_ascii_case("lora") {
                return Err(AdapterError::Unsupported(format!(
                    "peft_type {t:?} (only LORA)"
                )));
            }
        }
        if self.use_dora {
            return Err(AdapterError::Unsupported(
                "use_dora: DoRA adapters are not supported".into(),
            ));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(AdapterError::Unsupported(
                "modules_to_save: adapters that replace whole modules are not supported".into(),
            ));
        }
        if let Some(b) = &self.bias {
            if b != "none" {
                return Err(AdapterError::Unsupported(format!(
                    "bias {b:?} (only \"none\")"
                )));
            }
        }
        if self.r == 0 {
            return Err(AdapterError::InvalidConfig("r must be positive".into()));
        }
        if let Some((k, _)) = self.rank_pattern.iter().flatten().find(|(_, &v)| v == 0) {
            return Err(AdapterError::InvalidConfig(format!(
                "rank_pattern[{k:?}] must be positive"
            )));
        }
        if !self.lora_alpha.is_finite() {
            return Err(AdapterError::InvalidConfig(
                "lora_alpha must be finite".into(),
            ));
        }
        Ok(())
    }

    /// The `(layer, proj)` pairs this config adapts on a base with `num_layers` layers.
    pub fn targeted(&self, num_layers: usize) -> Result<Vec<(usize, Proj)>> {
        let layer_ok = |l: usize| match &self.layers_to_transform {
            None => true,
            Some(Layers::One(x)) => *x == l,
            Some(Layers::Many(v)) => v.contains(&l),
        };
        let all: Vec<(usize, Proj)> = (0..num_layers)
            .flat_map(|l| TARGETS.iter().map(move |(p, _)| (l, *p)))
            .collect();
        let matched: Vec<(usize, Proj)> = match &self.target_modules {
            None => {
                return Err(AdapterError::InvalidConfig(
                    "target_modules is missing".into(),
                ))
            }
            Some(TargetModules::Regex(re)) if re == "all-linear" => all,
            Some(TargetModules::Regex(re)) => {
                let rx = Regex::new(&format!("^(?:{re})$")).map_err(|e| {
                    AdapterError::InvalidConfig(format!("target_modules regex: {e}"))
                })?;
                all.into_iter()
                    .filter(|&(l, p)| rx.is_match(&module_name(l, p)))
                    .collect()
            }
            Some(TargetModules::List(list)) => {
                for t in list {
                    let known = all
                        .iter()
                        .any(|&(l, p)| suffix_match(&module_name(l, p), t));
                    if !known {
                        return Err(AdapterError::UnknownTarget(t.clone()));
                    }
                }
                all.into_iter()
                    .filter(|&(l, p)| list.iter().any(|t| suffix_match(&module_name(l, p), t)))
                    .collect()
            }
        };
        let matched: Vec<_> = matched.into_iter().filter(|&(l, _)| layer_ok(l)).collect();
        if matched.is_empty() {
            return Err(AdapterError::NoMatchingModule);
        }
        Ok(matched)
    }

    /// Rank and alpha of one module after `rank_pattern`/`alpha_pattern`.
    pub fn rank_alpha(&self, module: &str) -> Result<(usize, f64)> {
        let rank = pattern_value(self.rank_pattern.as_ref(), module)?.unwrap_or(self.r);
        let alpha = pattern_value(self.alpha_pattern.as_ref(), module)?.unwrap_or(self.lora_alpha);
        Ok((rank, alpha))
    }

    /// `alpha/r`, or `alpha/√r` with rsLoRA.
    pub fn scale(&self, rank: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }
}

fn suffix_match(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

fn pattern_value<T: Copy>(
    patterns: Option<&HashMap<String, T>>,
    module: &str,
) -> Result<Option<T>> {
    let Some(patterns) = patterns else {
        return Ok(None);
    };
    let mut keys: Vec<&String> = patterns.keys().collect();
    keys.sort(); // deterministic when several patterns match
    for k in keys {
        let rx = Regex::new(&format!("^(?:.*\\.)?(?:{k})$"))
            .map_err(|e| AdapterError::InvalidConfig(format!("pattern {k:?}: {e}")))?;
        if rx.is_match(module) {
            return Ok(Some(patterns[k]));
        }
    }
    Ok(None)
}

/// Model families, by name fragments of `base_model_name_or_path`.
const LLAMA_FAMILY: &[&str] = &[
    "llama",
    "mistral",
    "smollm",
    "tinyllama",
    "vicuna",
    "codellama",
];
const OTHER_FAMILIES: &[&str] = &[
    "gpt2",
    "gpt-neox",
    "neox",
    "pythia",
    "gpt-j",
    "gptj",
    "bert",
    "roberta",
    "t5",
    "bart",
    "qwen",
    "phi",
    "gemma",
    "falcon",
    "bloom",
    "opt-",
    "mpt",
    "starcoder",
    "mixtral",
    "deepseek",
    "olmo",
    "stablelm",
    "whisper",
];

/// `Err` when the name clearly belongs to another architecture; `Ok(true)` when it is a
/// Llama-family name (or unknown) but differs from `base_name` (worth a warning).
pub fn check_base_name(adapter_base: &str, base_name: &str) -> Result<bool> {
    let lower = adapter_base.to_ascii_lowercase();
    let llama_like = LLAMA_FAMILY.iter().any(|f| lower.contains(f));
    if !llama_like && OTHER_FAMILIES.iter().any(|f| lower.contains(f)) {
        return Err(AdapterError::ArchitectureMismatch {
            adapter_base: adapter_base.to_string(),
            base_arch: "llama".into(),
        });
    }
    let norm = |s: &str| {
        s.rsplit('/')
            .next()
            .unwrap_or(s)
            .to_ascii_lowercase()
            .replace(['_', ' ', '.'], "-")
    };
    Ok(!norm(base_name).contains(&norm(adapter_base))
        && !norm(adapter_base).contains(&norm(base_name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: serde_json::Value) -> Result<PeftConfig> {
        let mut v = serde_json::json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        PeftConfig::parse(&v.to_string())
    }

    #[test]
    fn list_targets_match_suffixes_and_layers() {
        let c = cfg(serde_json::json!({"layers_to_transform": [1]})).unwrap();
        assert_eq!(c.targeted(3).unwrap(), vec![(1, Proj::Q), (1, Proj::V)]);
        let c = cfg(serde_json::json!({"target_modules": ["self_attn.o_proj"]})).unwrap();
        assert_eq!(c.targeted(2).unwrap(), vec![(0, Proj::O), (1, Proj::O)]);
    }

    #[test]
    fn regex_targets_must_match_whole_names() {
        let c = cfg(serde_json::json!({"target_modules": r".*\.layers\.0\..*(q|k)_proj"})).unwrap();
        assert_eq!(c.targeted(2).unwrap(), vec![(0, Proj::Q), (0, Proj::K)]);
        let c = cfg(serde_json::json!({"target_modules": "q_proj"})).unwrap();
        assert!(matches!(c.targeted(2), Err(AdapterError::NoMatchingModule)));
    }

    #[test]
    fn unknown_targets_and_unsupported_features_are_refused() {
        let c = cfg(serde_json::json!({"target_modules": ["q_proj", "fc1"]})).unwrap();
        assert!(matches!(c.targeted(2), Err(AdapterError::UnknownTarget(t)) if t == "fc1"));
        assert!(matches!(
            cfg(serde_json::json!({"use_dora": true})),
            Err(AdapterError::Unsupported(_))
        ));
        assert!(matches!(
            cfg(serde_json::json!({"bias": "all"})),
            Err(AdapterError::Unsupported(_))
        ));
        assert!(matches!(
            cfg(serde_json::json!({"modules_to_save": ["lm_head"]})),
            Err(AdapterError::Unsupported(_))
        ));
        assert!(cfg(serde_json::json!({"modules_to_save": null})).is_ok());
        assert!(matches!(
            cfg(serde_json::json!({"rank_pattern": {"v_proj": 0}})),
            Err(AdapterError::InvalidConfig(m)) if m.contains("v_proj")
        ));
    }

    #[test]
    fn patterns_and_rslora_set_the_scale() {
        let c = cfg(serde_json::json!({"rank_pattern": {"v_proj": 4}, "alpha_pattern": {"layers.1.self_attn.v_proj": 2}, "use_rslora": true})).unwrap();
        assert_eq!(
            c.rank_alpha("model.layers.0.self_attn.q_proj").unwrap(),
            (8, 16.0)
        );
        assert_eq!(
            c.rank_alpha("model.layers.0.self_attn.v_proj").unwrap(),
            (4, 16.0)
        );
        assert_eq!(
            c.rank_alpha("model.layers.1.self_attn.v_proj").unwrap(),
            (4, 2.0)
        );
        assert_eq!(c.scale(4, 8.0), 4.0);
    }

    #[test]
    fn base_names_of_other_architectures_are_refused() {
        assert!(check_base_name("openai-community/gpt2", "SmolLM2-135M-Instruct").is_err());
        assert!(!check_base_name(
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "SmolLM2-135M-Instruct"
        )
        .unwrap());
        assert!(check_base_name("meta-llama/Llama-3.2-1B", "SmolLM2-135M-Instruct").unwrap());
        assert!(!check_base_name("tiny-llama", "tiny-llama").unwrap());
    }
}
