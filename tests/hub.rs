//! Hub ids resolve through hf-hub's cache layout; offline mode never touches the network.

use std::path::Path;

use loraplex_models::{HubOptions, LoadOptions, ModelError, WeightDtype};
use loraplex_runtime::{GenRequest, GenerationParams};

use crate::util::{golden, golden_json, ids};

/// Lays out `<cache>/models--org--name/{refs/main, snapshots/<sha>/...}` as huggingface_hub does.
pub fn lay_out_cache(cache: &Path, repo: &str, from: &Path) {
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    let sha = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), sha).unwrap();
    let snap = folder.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), snap.join(e.file_name())).unwrap();
    }
}

fn opts(cache: &Path, offline: bool) -> LoadOptions {
    LoadOptions {
        dtype: WeightDtype::F32,
        hub: HubOptions {
            cache_dir: Some(cache.to_path_buf()),
            offline,
            token: None,
            // A closed loopback port: any attempt to reach the network fails fast.
            endpoint: Some("http://127.0.0.1:9".into()),
        },
        ..Default::default()
    }
}

#[test]
fn offline_hub_id_loads_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    lay_out_cache(
        cache.path(),
        "loraplex-test/tiny-llama",
        &golden().join("tiny-llama"),
    );
    for offline in [true, false] {
        // Online mode also serves cached files without a request.
        let lm = loraplex_models::load("loraplex-test/tiny-llama", &opts(cache.path(), offline))
            .unwrap();
        let case = &golden_json("tiny_cases.json")["cases"][1];
        let params = GenerationParams {
            max_tokens: 16,
            ignore_eos: true,
            ..Default::default()
        };
        let g = loraplex_runtime::generate(
            &lm.model,
            &lm.tokenizer,
            vec![GenRequest::new(ids(&case["input_ids"]), params)],
        )
        .unwrap();
        assert_eq!(g[0].ids, ids(&case["results"]["base"]["greedy_ids"]));
    }
}

#[test]
fn uncached_hub_id_fails_clearly() {
    let cache = tempfile::tempdir().unwrap();
    match loraplex_models::load("loraplex-test/absent", &opts(cache.path(), true)) {
        Err(ModelError::HubOffline { repo }) => assert!(repo.contains("loraplex-test/absent")),
        other => panic!("expected HubOffline, got {other:?}"),
    }
    match loraplex_models::load("loraplex-test/absent", &opts(cache.path(), false)) {
        Err(ModelError::Hub { repo, .. }) => assert_eq!(repo, "loraplex-test/absent"),
        other => panic!("expected Hub error, got {other:?}"),
    }
}
