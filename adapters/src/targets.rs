//! Which base modules a PEFT config adapts, by PEFT's own matching rules: a list matches a
//! module name or a dotted suffix of it, a string is a regex that must match the whole name,
//! rank/alpha patterns match a suffix; and whether the adapter's named base is of the served
//! model's family at all.

use loraplex_models::{Arch, Naming, Proj};
use regex::Regex;

use crate::error::{AdapterError, Result};
use crate::peft::{Layers, PeftConfig, TargetModules};

/// The projections LoRA may adapt on most families, with their PEFT module names.
pub const TARGETS: [(Proj, &str); 7] = [
    (Proj::Q, "q_proj"),
    (Proj::K, "k_proj"),
    (Proj::V, "v_proj"),
    (Proj::O, "o_proj"),
    (Proj::Gate, "gate_proj"),
    (Proj::Up, "up_proj"),
    (Proj::Down, "down_proj"),
];

/// Phi-3's: its fused modules, each split into the projections it holds at load.
const FUSED_TARGETS: [(Proj, &str); 4] = [
    (Proj::Qkv, "qkv_proj"),
    (Proj::O, "o_proj"),
    (Proj::GateUp, "gate_up_proj"),
    (Proj::Down, "down_proj"),
];

/// The modules an adapter of `arch` may target.
pub fn targets(arch: Arch) -> &'static [(Proj, &'static str)] {
    match arch {
        Arch::Phi3 => &FUSED_TARGETS,
        _ => &TARGETS,
    }
}

/// `model.layers.N.self_attn.q_proj`: the module name PEFT sees.
pub fn module_name(layer: usize, proj: Proj) -> String {
    let w = proj.name(Naming::Hf, layer);
    w.strip_suffix(".weight").unwrap_or(&w).to_string()
}

impl PeftConfig {
    /// The `(layer, module)` pairs this config adapts on a base of `arch` with `num_layers`
    /// layers (Phi-3's fused modules as [`Proj::Qkv`] / [`Proj::GateUp`]).
    pub fn targeted(&self, arch: Arch, num_layers: usize) -> Result<Vec<(usize, Proj)>> {
        let table = targets(arch);
        let phi3_default;
        let target_modules = match arch {
            Arch::Phi3 if self.default_targets => {
                phi3_default = TargetModules::List(vec!["qkv_proj".into()]);
                &phi3_default
            }
            _ => &self.target_modules,
        };
        let layer_ok = |l: usize| match &self.layers_to_transform {
            None => true,
            Some(Layers::One(x)) => *x == l,
            Some(Layers::Many(v)) => v.contains(&l),
        };
        let all: Vec<(usize, Proj)> = (0..num_layers)
            .flat_map(|l| table.iter().map(move |(p, _)| (l, *p)))
            .collect();
        let matched: Vec<(usize, Proj)> = match target_modules {
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
const QWEN_FAMILY: &[&str] = &["qwen"];
const GEMMA_FAMILY: &[&str] = &["gemma"];
const PHI_FAMILY: &[&str] = &["phi"];
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

fn family_words(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Llama | Arch::Mistral => LLAMA_FAMILY,
        Arch::Qwen2 | Arch::Qwen3 => QWEN_FAMILY,
        Arch::Gemma3 => GEMMA_FAMILY,
        Arch::Phi3 => PHI_FAMILY,
    }
}

/// `Err` when the name clearly belongs to another family than `arch`'s; `Ok(true)` when it is
/// of the family (or unknown) but differs from `base_name` (worth a warning).
pub fn check_base_name(adapter_base: &str, base_name: &str, arch: Arch) -> Result<bool> {
    let lower = adapter_base.to_ascii_lowercase();
    let own = family_words(arch).iter().any(|f| lower.contains(f));
    let families = [
        LLAMA_FAMILY,
        QWEN_FAMILY,
        GEMMA_FAMILY,
        PHI_FAMILY,
        OTHER_FAMILIES,
    ];
    let other = families
        .iter()
        .flat_map(|f| f.iter())
        .any(|f| lower.contains(f));
    if !own && other {
        return Err(AdapterError::ArchitectureMismatch {
            adapter_base: adapter_base.to_string(),
            base_arch: arch.name().into(),
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
        assert_eq!(
            c.targeted(Arch::Llama, 3).unwrap(),
            vec![(1, Proj::Q), (1, Proj::V)]
        );
        let c = cfg(serde_json::json!({"target_modules": ["self_attn.o_proj"]})).unwrap();
        assert_eq!(
            c.targeted(Arch::Llama, 2).unwrap(),
            vec![(0, Proj::O), (1, Proj::O)]
        );
    }

    #[test]
    fn regex_targets_must_match_whole_names() {
        let c = cfg(serde_json::json!({"target_modules": r".*\.layers\.0\..*(q|k)_proj"})).unwrap();
        assert_eq!(
            c.targeted(Arch::Llama, 2).unwrap(),
            vec![(0, Proj::Q), (0, Proj::K)]
        );
        let c = cfg(serde_json::json!({"target_modules": "q_proj"})).unwrap();
        assert!(matches!(
            c.targeted(Arch::Llama, 2),
            Err(AdapterError::NoMatchingModule)
        ));
    }

    #[test]
    fn unknown_targets_are_refused_and_omitted_ones_are_peft_defaults() {
        let c = cfg(serde_json::json!({"target_modules": ["q_proj", "fc1"]})).unwrap();
        assert!(
            matches!(c.targeted(Arch::Llama, 2), Err(AdapterError::UnknownTarget(t)) if t == "fc1")
        );
        let c = PeftConfig::parse(r#"{"r": 4}"#).unwrap();
        assert_eq!(
            c.targeted(Arch::Llama, 2).unwrap(),
            vec![(0, Proj::Q), (0, Proj::V), (1, Proj::Q), (1, Proj::V)]
        );
    }

    #[test]
    fn base_names_of_other_architectures_are_refused() {
        let llama = Arch::Llama;
        assert!(check_base_name("openai-community/gpt2", "SmolLM2-135M-Instruct", llama).is_err());
        assert!(!check_base_name(
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "SmolLM2-135M-Instruct",
            llama
        )
        .unwrap());
        assert!(
            check_base_name("meta-llama/Llama-3.2-1B", "SmolLM2-135M-Instruct", llama).unwrap()
        );
        assert!(!check_base_name("tiny-llama", "tiny-llama", llama).unwrap());
        // Each family accepts its own names and refuses the others'.
        assert!(check_base_name("Qwen/Qwen2.5-0.5B", "x", Arch::Qwen2).is_ok());
        assert!(check_base_name("Qwen/Qwen2.5-0.5B", "x", llama).is_err());
        assert!(check_base_name("google/gemma-3-270m", "x", Arch::Gemma3).is_ok());
        assert!(check_base_name("google/gemma-3-270m", "x", Arch::Phi3).is_err());
        assert!(check_base_name("meta-llama/Llama-3.2-1B", "x", Arch::Gemma3).is_err());
    }

    #[test]
    fn phi3_adapters_target_the_fused_modules() {
        let c = cfg(serde_json::json!({"target_modules": ["qkv_proj", "gate_up_proj"]})).unwrap();
        assert_eq!(
            c.targeted(Arch::Phi3, 1).unwrap(),
            vec![(0, Proj::Qkv), (0, Proj::GateUp)]
        );
        // Phi-3 has no q_proj of its own; PEFT's default for it is the fused qkv_proj.
        let c = cfg(serde_json::json!({"target_modules": ["q_proj"]})).unwrap();
        assert!(matches!(
            c.targeted(Arch::Phi3, 1),
            Err(AdapterError::UnknownTarget(_))
        ));
        let c = PeftConfig::parse(r#"{"r": 4}"#).unwrap();
        assert_eq!(c.targeted(Arch::Phi3, 1).unwrap(), vec![(0, Proj::Qkv)]);
    }
}
