//! `adapter_config.json` as PEFT writes it. A field left out means what it means to PEFT:
//! PEFT's `LoraConfig` default, because PEFT itself would load the file with that value and an
//! adapter must give here the outputs it gives there. A field naming something this engine does
//! not implement is refused, naming the field, rather than ignored: ignoring it would serve
//! outputs the adapter was never trained to give.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

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

/// The fields of a PEFT LoRA config this engine honours, with PEFT's defaults filled in.
#[derive(Debug, Clone)]
pub struct PeftConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub target_modules: TargetModules,
    /// `target_modules` was left out: PEFT's default for the architecture, resolved against
    /// the base (q and v, but Phi-3's fused `qkv_proj`).
    pub default_targets: bool,
    pub rank_pattern: HashMap<String, usize>,
    pub alpha_pattern: HashMap<String, f64>,
    /// PEFT turns it off for `nn.Linear` (every Llama projection), with a warning; so does the
    /// loader.
    pub fan_in_fan_out: bool,
    pub layers_to_transform: Option<Layers>,
    pub base_model_name_or_path: Option<String>,
}

/// `LoraConfig.r`.
const DEFAULT_R: usize = 8;
/// `LoraConfig.lora_alpha`: so a config without it scales by 8/r, not by 1/r.
const DEFAULT_ALPHA: f64 = 8.0;
/// What PEFT targets when `target_modules` is left out: its per-architecture table, whose entry
/// is q and v for every family the models crate loads but Phi-3 (see `PeftConfig::targeted`).
const DEFAULT_TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// Fields whose every value but PEFT's default (null, false, empty) changes what the adapter
/// computes in a way this engine does not implement, each with what it would have meant.
const REFUSED_UNLESS_DEFAULT: &[(&str, &str)] = &[
    ("use_dora", "DoRA adapters are not supported"),
    (
        "modules_to_save",
        "adapters that replace whole modules are not supported",
    ),
    ("lora_bias", "a bias on lora_B is not supported"),
    (
        "exclude_modules",
        "excluding modules from target_modules is not supported",
    ),
    (
        "layer_replication",
        "adapters that replicate base layers are not supported",
    ),
    (
        "target_parameters",
        "LoRA on parameters rather than modules is not supported",
    ),
    (
        "trainable_token_indices",
        "trained token embeddings are not supported",
    ),
    ("use_qalora", "QALoRA adapters are not supported"),
    ("use_bdlora", "block-diagonal LoRA is not supported"),
    ("arrow_config", "Arrow routing is not supported"),
    ("kasa_config", "this LoRA variant is not supported"),
    ("monteclora_config", "this LoRA variant is not supported"),
    ("velora_config", "this LoRA variant is not supported"),
];

/// PEFT's default for every field in [`REFUSED_UNLESS_DEFAULT`].
fn is_default(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

/// `name` read as a `T`, or `default` when the config leaves it out; a wrong type is refused
/// naming the field.
fn field<T: DeserializeOwned>(
    map: &Map<String, Value>,
    name: &str,
    default: impl FnOnce() -> T,
) -> Result<T> {
    match map.get(name) {
        None => Ok(default()),
        Some(v) => {
            T::deserialize(v).map_err(|e| AdapterError::InvalidConfig(format!("{name}: {e}")))
        }
    }
}

impl PeftConfig {
    pub fn parse(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| AdapterError::InvalidConfig(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(AdapterError::InvalidConfig("expected a JSON object".into()));
        };
        refuse_unsupported(&map)?;
        let given = field::<Option<TargetModules>>(&map, "target_modules", || None)?;
        let cfg = PeftConfig {
            default_targets: given.is_none(),
            r: field(&map, "r", || DEFAULT_R)?,
            lora_alpha: field(&map, "lora_alpha", || DEFAULT_ALPHA)?,
            use_rslora: field(&map, "use_rslora", || false)?,
            target_modules: given
                .unwrap_or_else(|| TargetModules::List(DEFAULT_TARGETS.map(String::from).to_vec())),
            rank_pattern: field::<Option<_>>(&map, "rank_pattern", || None)?.unwrap_or_default(),
            alpha_pattern: field::<Option<_>>(&map, "alpha_pattern", || None)?.unwrap_or_default(),
            fan_in_fan_out: field(&map, "fan_in_fan_out", || false)?,
            layers_to_transform: field(&map, "layers_to_transform", || None)?,
            base_model_name_or_path: field(&map, "base_model_name_or_path", || None)?,
        };
        cfg.check_values()?;
        Ok(cfg)
    }

    fn check_values(&self) -> Result<()> {
        if self.r == 0 {
            return Err(AdapterError::InvalidConfig("r must be positive".into()));
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, &v)| v == 0) {
            return Err(AdapterError::InvalidConfig(format!(
                "rank_pattern[{k:?}] must be positive"
            )));
        }
        if !self.lora_alpha.is_finite() {
            return Err(AdapterError::InvalidConfig(
                "lora_alpha must be finite".into(),
            ));
        }
        if matches!(self.target_modules, TargetModules::Regex(_))
            && self.layers_to_transform.is_some()
        {
            return Err(AdapterError::InvalidConfig(
                "layers_to_transform cannot be used when target_modules is a regex (PEFT refuses it too)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Rank and alpha of one module after `rank_pattern`/`alpha_pattern`.
    pub fn rank_alpha(&self, module: &str) -> Result<(usize, f64)> {
        let rank = pattern_value(&self.rank_pattern, module)?.unwrap_or(self.r);
        let alpha = pattern_value(&self.alpha_pattern, module)?.unwrap_or(self.lora_alpha);
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

/// Refuses what PEFT would load as something this engine does not compute: another PEFT type,
/// a bias mode, a LoRA variant, or layers found under another name than Llama's `layers`.
fn refuse_unsupported(map: &Map<String, Value>) -> Result<()> {
    let unsupported =
        |field: &str, why: String| Err(AdapterError::Unsupported(format!("{field}: {why}")));
    if let Some(t) = field::<Option<String>>(map, "peft_type", || None)? {
        if !t.eq_ignore_ascii_case("lora") {
            return unsupported("peft_type", format!("{t:?} (only LORA)"));
        }
    }
    let bias = field::<Option<String>>(map, "bias", || None)?;
    if let Some(b) = bias.filter(|b| b != "none") {
        return unsupported("bias", format!("{b:?} (only \"none\")"));
    }
    for (name, why) in REFUSED_UNLESS_DEFAULT {
        if map.get(*name).is_some_and(|v| !is_default(v)) {
            return unsupported(name, why.to_string());
        }
    }
    // PEFT turns aLoRA on for any list here, even an empty one.
    if map
        .get("alora_invocation_tokens")
        .is_some_and(|v| !v.is_null())
    {
        return unsupported(
            "alora_invocation_tokens",
            "activated LoRA (aLoRA) is not supported".into(),
        );
    }
    // PEFT finds layer indices under `layers_pattern`, or under common names when it is left
    // out; a Llama's layers are only ever `model.layers.N`.
    match map.get("layers_pattern") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if p == "layers" => {}
        Some(Value::Array(a)) if a.iter().any(|p| p == "layers") => {}
        Some(other) => {
            return unsupported(
                "layers_pattern",
                format!("{other} (a Llama's layers are `layers`)"),
            )
        }
    }
    Ok(())
}

/// An r=8, alpha=16 q/v config with `extra`'s fields set, parsed (for unit tests).
/// The value of the first pattern (in sorted order) that matches a dotted suffix of `module`.
fn pattern_value<T: Copy>(patterns: &HashMap<String, T>, module: &str) -> Result<Option<T>> {
    let mut keys: Vec<&String> = patterns.keys().collect();
    keys.sort(); // deterministic when several patterns match
    for k in keys {
        let rx = regex::Regex::new(&format!("^(?:.*\\.)?(?:{k})$"))
            .map_err(|e| AdapterError::InvalidConfig(format!("pattern {k:?}: {e}")))?;
        if rx.is_match(module) {
            return Ok(Some(patterns[k]));
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) fn test_config(extra: serde_json::Value) -> Result<PeftConfig> {
    let mut v = serde_json::json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]});
    for (k, x) in extra.as_object().expect("an object") {
        v[k] = x.clone();
    }
    PeftConfig::parse(&v.to_string())
}

#[cfg(test)]
mod tests {
    use super::test_config as cfg;
    use super::*;

    #[test]
    fn omitted_fields_take_peft_defaults() {
        let c = PeftConfig::parse("{}").unwrap();
        assert_eq!((c.r, c.lora_alpha), (8, 8.0));
        assert!(!c.use_rslora && !c.fan_in_fan_out);
        assert!(c.rank_pattern.is_empty() && c.alpha_pattern.is_empty());
        assert!(c.layers_to_transform.is_none() && c.base_model_name_or_path.is_none());
        assert!(matches!(&c.target_modules, TargetModules::List(l) if l == &["q_proj", "v_proj"]));
        let c = PeftConfig::parse(r#"{"r": 4}"#).unwrap();
        assert_eq!(c.scale(4, c.lora_alpha), 2.0);
        let nulls = r#"{"target_modules": null, "rank_pattern": null, "alpha_pattern": null,
            "layers_to_transform": null, "bias": null, "peft_type": null}"#;
        let c = PeftConfig::parse(nulls).unwrap();
        assert!(matches!(&c.target_modules, TargetModules::List(l) if l.len() == 2));
    }

    #[test]
    fn wrong_types_are_refused_naming_the_field() {
        for (field, v) in [
            ("lora_alpha", serde_json::json!("16")),
            ("r", serde_json::json!(null)),
            ("use_rslora", serde_json::json!(1)),
            ("rank_pattern", serde_json::json!([])),
        ] {
            let e = cfg(serde_json::json!({ field: v })).unwrap_err();
            assert!(
                matches!(&e, AdapterError::InvalidConfig(m) if m.starts_with(field)),
                "{field}: {e}"
            );
        }
        assert!(matches!(
            PeftConfig::parse("[1]"),
            Err(AdapterError::InvalidConfig(_))
        ));
    }

    #[test]
    fn unsupported_features_are_refused_naming_the_field() {
        let refused = [
            ("use_dora", serde_json::json!(true)),
            ("modules_to_save", serde_json::json!(["lm_head"])),
            ("bias", serde_json::json!("all")),
            ("peft_type", serde_json::json!("IA3")),
            ("lora_bias", serde_json::json!(true)),
            ("exclude_modules", serde_json::json!(["k_proj"])),
            ("layer_replication", serde_json::json!([[0, 2], [1, 2]])),
            ("target_parameters", serde_json::json!(["experts.w1"])),
            ("trainable_token_indices", serde_json::json!([5])),
            ("alora_invocation_tokens", serde_json::json!([])),
            ("use_qalora", serde_json::json!(true)),
            ("use_bdlora", serde_json::json!({"blocks": 2})),
            ("arrow_config", serde_json::json!({"top_k": 2})),
            ("layers_pattern", serde_json::json!("h")),
        ];
        for (field, v) in refused {
            let e = cfg(serde_json::json!({ field: v })).expect_err(field);
            assert!(
                matches!(&e, AdapterError::Unsupported(m) if m.starts_with(field)),
                "{field}: {e}"
            );
        }
        for (field, v) in [
            ("modules_to_save", serde_json::json!(null)),
            ("exclude_modules", serde_json::json!(null)),
            ("lora_bias", serde_json::json!(false)),
            ("layers_pattern", serde_json::json!("layers")),
            ("loftq_config", serde_json::json!({})),
            ("lora_dropout", serde_json::json!(0.05)),
            ("init_lora_weights", serde_json::json!("gaussian")),
        ] {
            assert!(cfg(serde_json::json!({ field: v })).is_ok(), "{field}");
        }
        assert!(matches!(
            cfg(serde_json::json!({"rank_pattern": {"v_proj": 0}})),
            Err(AdapterError::InvalidConfig(m)) if m.contains("v_proj")
        ));
        assert!(matches!(
            cfg(serde_json::json!({"target_modules": ".*q_proj", "layers_to_transform": [0]})),
            Err(AdapterError::InvalidConfig(m)) if m.contains("layers_to_transform")
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
}
