use std::path::Path;

use crate::config::{Activation, Arch, RopeScaling};
use crate::error::ModelError;
use crate::hf_config::HfConfig;

fn base_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 512
    })
}

fn read(v: serde_json::Value) -> crate::Result<crate::ModelConfig> {
    let c: HfConfig = serde_json::from_value(v).unwrap();
    super::from_hf_config(&c, Path::new("x"))
}

#[test]
fn reads_v4_and_v5_rope_layouts() {
    let mut v4 = base_json();
    v4["rope_theta"] = 500000.0.into();
    assert_eq!(read(v4).unwrap().rope_theta, 500000.0);

    let mut v5 = base_json();
    v5["rope_parameters"] = serde_json::json!({"rope_theta": 1234.0, "rope_type": "default"});
    let l = read(v5).unwrap();
    assert_eq!(l.rope_theta, 1234.0);
    assert_eq!(l.head_dim, 16);
    assert_eq!(l.rope_scaling, RopeScaling::None);
    assert_eq!(l.arch(), Arch::Llama);
}

#[test]
fn llama3_scaling_changes_only_low_frequencies() {
    let mut v = base_json();
    v["rope_theta"] = 500000.0.into();
    v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let l = read(v).unwrap();
    let mut plain = l.clone();
    plain.rope_scaling = RopeScaling::None;
    let (a, b) = (l.rope_inv_freq(false), plain.rope_inv_freq(false));
    assert_eq!(a[0], b[0]);
    assert!((a[7] - b[7] / 8.0).abs() < 1e-12);
}

#[test]
fn rejects_unknown_architecture_naming_the_supported_ones() {
    let mut v = base_json();
    v["model_type"] = "gpt_neox".into();
    v["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    let e = read(v).unwrap_err();
    assert!(matches!(e, ModelError::UnsupportedArchitecture { .. }));
    assert!(e.to_string().contains("qwen3"), "{e}");
}

#[test]
fn qwen2_has_qkv_biases_and_slides_from_max_window_layers() {
    let mut v = base_json();
    v["model_type"] = "qwen2".into();
    v["num_hidden_layers"] = 4.into();
    v["use_sliding_window"] = true.into();
    v["sliding_window"] = 8.into();
    v["max_window_layers"] = 2.into();
    let c = read(v).unwrap();
    assert_eq!(c.arch(), Arch::Qwen2);
    assert!(c.family.qkv_bias && !c.family.qk_norm);
    let windows: Vec<_> = (0..4).map(|l| c.window(l)).collect();
    assert_eq!(windows, [None, None, Some(8), Some(8)]);
}

#[test]
fn qwen3_normalizes_heads_and_honours_layer_types() {
    let mut v = base_json();
    v["model_type"] = "qwen3".into();
    v["sliding_window"] = 4.into();
    v["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
    let c = read(v.clone()).unwrap();
    assert!(c.family.qk_norm && !c.family.qkv_bias);
    assert_eq!((c.window(0), c.window(1)), (None, Some(4)));
    v["attention_bias"] = true.into();
    assert!(read(v).unwrap_err().to_string().contains("biases"));
}

#[test]
fn gemma3_reads_its_two_rotary_bases_and_layer_pattern() {
    let mut v = base_json();
    v["model_type"] = "gemma3_text".into();
    v["num_hidden_layers"] = 6.into();
    v["hidden_activation"] = "gelu_pytorch_tanh".into();
    v["sliding_window"] = 4.into();
    v["query_pre_attn_scalar"] = 12.0.into();
    v["rope_parameters"] = serde_json::json!({
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}});
    let c = read(v.clone()).unwrap();
    let f = &c.family;
    assert!(f.qk_norm && f.sandwich_norms && f.norm_plus_one && f.embed_scale);
    assert_eq!(f.activation, Activation::GeluTanh);
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
    assert_eq!(f.rope_local_theta, Some(1e4));
    assert!((c.attn_scale() - 1.0 / 12f64.sqrt()).abs() < 1e-15);
    // No layer_types: every sixth layer is global.
    let windows: Vec<_> = (0..6).map(|l| c.window(l).is_some()).collect();
    assert_eq!(windows, [true, true, true, true, true, false]);
    // The local layers' rotary is unscaled, on their own base.
    let local = c.rope_inv_freq(true);
    assert!((local[1] - 1e4f64.powf(-2.0 / 16.0) as f32).abs() < 1e-9);
    v["hidden_activation"] = "silu".into();
    assert!(read(v).is_err());
}

#[test]
fn phi3_is_fused_and_refuses_longrope() {
    let mut v = base_json();
    v["model_type"] = "phi3".into();
    v["sliding_window"] = 16.into();
    let c = read(v.clone()).unwrap();
    assert!(c.family.fused);
    assert_eq!((c.window(0), c.window(1)), (Some(16), Some(16)));
    v["rope_scaling"] =
        serde_json::json!({"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]});
    assert!(read(v.clone())
        .unwrap_err()
        .to_string()
        .contains("longrope"));
    v["rope_scaling"] = serde_json::Value::Null;
    v["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 1e4,
        "partial_rotary_factor": 0.5});
    assert!(read(v.clone()).is_err());
    v["rope_parameters"]["partial_rotary_factor"] = 1.0.into();
    assert!(read(v).is_ok());
}

#[test]
fn mistral_slides_every_layer_llama_none() {
    let mut v = base_json();
    v["sliding_window"] = 8.into();
    assert_eq!(read(v.clone()).unwrap().window(0), None);
    v["model_type"] = "mistral".into();
    assert_eq!(read(v).unwrap().window(1), Some(8));
}
