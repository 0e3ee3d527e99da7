//! Bad model files give typed errors that name the file, never a panic.

use std::path::Path;

use loraplex_models::{LoadOptions, ModelError};

use crate::util::{golden, smollm2_path};

fn load_err(spec: &Path) -> ModelError {
    loraplex_models::load(spec.to_str().unwrap(), &LoadOptions::default()).expect_err("must fail")
}

fn copy_tiny(to: &Path, skip: &[&str]) {
    for e in std::fs::read_dir(golden().join("tiny-llama")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if !skip.contains(&name.as_str()) {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn truncated_gguf_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(smollm2_path()).unwrap();
    for (label, len) in [("header", 4096), ("tensor data", bytes.len() / 2)] {
        let p = dir.path().join(format!("cut-{len}.gguf"));
        std::fs::write(&p, &bytes[..len]).unwrap();
        match load_err(&p) {
            ModelError::Corrupt { path, reason } => {
                assert_eq!(path, p, "{label}");
                assert!(!reason.is_empty());
            }
            other => panic!("{label}: expected Corrupt, got {other:?}"),
        }
    }
    let p = dir.path().join("not.gguf");
    std::fs::write(&p, b"definitely not a gguf file").unwrap();
    assert!(matches!(load_err(&p), ModelError::Corrupt { .. }));
}

#[test]
fn truncated_safetensors_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path(), &[]);
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 1000]).unwrap();
    match load_err(dir.path()) {
        ModelError::Corrupt { path, .. } => assert_eq!(path, st),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn missing_tokenizer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path(), &["tokenizer.json"]);
    match load_err(dir.path()) {
        ModelError::Missing { what, .. } => assert_eq!(what, "tokenizer.json"),
        other => panic!("expected Missing, got {other:?}"),
    }
}

#[test]
fn unknown_architecture_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path(), &[]);
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"")
        .replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
    std::fs::write(&cfg, text).unwrap();
    match load_err(dir.path()) {
        ModelError::UnsupportedArchitecture { arch, .. } => assert_eq!(arch, "gpt_neox"),
        other => panic!("expected UnsupportedArchitecture, got {other:?}"),
    }
}

#[test]
fn missing_path_is_not_found() {
    assert!(matches!(
        load_err(Path::new("/nonexistent/model.gguf")),
        ModelError::NotFound { .. }
    ));
}
