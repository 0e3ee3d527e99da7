//! Checks that need no base model: what `loraplex adapters upload` runs before sending, so a
//! malformed adapter fails on the client with the same messages the server would give.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::error::{AdapterError, Result};
use crate::load::{parse_tensor_name, read, read_tensor, Which, CONFIG_FILE, WEIGHTS_FILE};
use crate::peft::PeftConfig;

/// What a PEFT folder holds, as far as can be told without the base model.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSummary {
    pub rank: usize,
    /// PEFT module suffixes adapted, e.g. `q_proj`.
    pub targets: Vec<String>,
    /// LoRA pairs (A and B of one module).
    pub modules: usize,
    pub base_model: Option<String>,
    /// Bytes of the two files.
    pub size: u64,
}

/// Parses the config and every tensor: names, dtypes, finiteness, and that each module's A and
/// B agree with each other and with the config's rank.
pub fn inspect_dir(dir: &Path) -> Result<AdapterSummary> {
    let config = read(&dir.join(CONFIG_FILE))?;
    let weights = read(&dir.join(WEIGHTS_FILE))?;
    let text = std::str::from_utf8(&config)
        .map_err(|_| AdapterError::InvalidConfig("not UTF-8".into()))?;
    let cfg = PeftConfig::parse(text)?;
    let origin = dir.join(WEIGHTS_FILE);
    let st =
        safetensors::SafeTensors::deserialize(&weights).map_err(|e| AdapterError::Corrupt {
            path: origin.clone(),
            reason: e.to_string(),
        })?;
    let mut pairs: HashMap<String, [Option<Vec<usize>>; 2]> = HashMap::new();
    for (name, view) in st.tensors() {
        let (module, which) = parse_tensor_name(&name)?;
        let t = read_tensor(&name, &view)?;
        let slot = pairs.entry(module.to_string()).or_default();
        slot[matches!(which, Which::B) as usize] = Some(t.shape);
    }
    if pairs.is_empty() {
        return Err(AdapterError::NoMatchingModule);
    }
    let mut rank = 0;
    let mut targets = BTreeSet::new();
    for (module, [a, b]) in &pairs {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(AdapterError::BadTensor {
                tensor: module.clone(),
                reason: "lora_A and lora_B must both be present".into(),
            });
        };
        let (r, _) = cfg.rank_alpha(module)?;
        if a.len() != 2 || b.len() != 2 || a[0] != r || b[1] != r {
            return Err(AdapterError::BadTensor {
                tensor: module.clone(),
                reason: format!(
                    "lora_A {a:?} and lora_B {b:?} do not have the configured rank {r}"
                ),
            });
        }
        rank = rank.max(r);
        if let Some(t) = module.rsplit('.').next() {
            targets.insert(t.to_string());
        }
    }
    Ok(AdapterSummary {
        rank,
        targets: targets.into_iter().collect(),
        modules: pairs.len(),
        base_model: cfg.base_model_name_or_path.clone(),
        size: (config.len() + weights.len()) as u64,
    })
}
