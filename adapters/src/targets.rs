//! Which base modules a PEFT config adapts, by PEFT's own matching rules: a list matches a
//! module name or a dotted suffix of it, a string is a regex that must match the whole name,
//! rank/alpha patterns match a suffix; and whether the adapter's named base is a Llama at all.

use loraplex_models::{Naming, Proj};
use regex::Regex;

use crate::error::{AdapterError, Result};
use crate::peft::{Layers, PeftConfig, TargetModules};

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
            TargetModules::Regex(re) if re == "all-linear" => all,
            TargetModules::Regex(re) => {
                let rx = Regex::new(&format!("^(?:{re})$")).map_err(|e| {
                    AdapterError::InvalidConfig(format!("target_modules regex: {e}"))
                })?;
                all.into_iter()
                    .filter(|&(l, p)| rx.is_match(&module_name(l, p)))
                    .collect()
            }
            TargetModules::List(list) => {
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
}

fn suffix_match(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
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
    use crate::peft::test_config as cfg;

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
    fn unknown_targets_are_refused_and_omitted_ones_are_peft_defaults() {
        let c = cfg(serde_json::json!({"target_modules": ["q_proj", "fc1"]})).unwrap();
        assert!(matches!(c.targeted(2), Err(AdapterError::UnknownTarget(t)) if t == "fc1"));
        let c = PeftConfig::parse(r#"{"r": 4}"#).unwrap();
        assert_eq!(
            c.targeted(2).unwrap(),
            vec![(0, Proj::Q), (0, Proj::V), (1, Proj::Q), (1, Proj::V)]
        );
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
