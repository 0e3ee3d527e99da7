//! Paths to the shared golden data and the default model, and small readers for them.

use std::path::PathBuf;
use std::sync::OnceLock;

use loraplex_models::{LoadOptions, LoadedModel, WeightDtype};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn golden() -> PathBuf {
    repo_root().join("../shared/golden")
}

pub fn golden_json(name: &str) -> Value {
    let p = golden().join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

/// The default model, fetched by `scripts/fetch-model.sh` (the README's test command runs it).
pub fn smollm2_path() -> PathBuf {
    let p = repo_root().join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        p.display()
    );
    p
}

pub fn load(spec: &str, dtype: WeightDtype) -> LoadedModel {
    loraplex_models::load(
        spec,
        &LoadOptions {
            dtype,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("load {spec}: {e}"))
}

pub fn tiny() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        load(
            golden().join("tiny-llama").to_str().unwrap(),
            WeightDtype::F32,
        )
    })
}

pub fn smollm2(dtype: WeightDtype) -> &'static LoadedModel {
    static F32: OnceLock<LoadedModel> = OnceLock::new();
    static AUTO: OnceLock<LoadedModel> = OnceLock::new();
    let cell = match dtype {
        WeightDtype::F32 => &F32,
        WeightDtype::Auto => &AUTO,
        other => panic!("no shared instance for {other:?}"),
    };
    cell.get_or_init(|| load(smollm2_path().to_str().unwrap(), dtype))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A little-endian f32 `.npy` array: (shape, data).
pub fn read_npy_f32(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(golden().join(name)).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_str
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = bytes[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
