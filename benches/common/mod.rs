//! Shared by the bench binaries (each uses a part of it).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use loraplex_models::Proj;

/// As `main` does: candle re-derives the thread count on every matmul unless this is set.
pub fn pin_thread_count() {
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

pub const ALL_PROJECTIONS: [Proj; 7] = Proj::ADAPTABLE;

/// A folder under the temp dir named `{prefix}{pid}`, removed when dropped (also when the bench
/// panics). Creating one first removes those that runs killed before they could clean up: their
/// process is gone and the folder is an hour old (a pid from another pid namespace sharing the
/// temp dir is not proof of death). `multi_lora` writes 1.2 GB of adapters, and a few
/// interrupted runs filled this machine's disk.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let tmp = std::env::temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(prefix) else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            let gone = old
                && pid.parse::<u32>().is_ok()
                && Path::new("/proc/self").exists()
                && !Path::new("/proc").join(pid).exists();
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Self(tmp.join(format!("{prefix}{}", std::process::id())))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn peft_name(p: Proj) -> &'static str {
    loraplex_adapters::TARGETS
        .iter()
        .find(|(q, _)| *q == p)
        .expect("a LoRA target")
        .1
}

/// A random PEFT adapter for the base `cfg`: rank `r` on `targets` in every layer, saved as
/// `dtype`; `seed` makes each adapter's content distinct.
pub fn write_adapter(
    dir: &Path,
    cfg: &loraplex_models::ModelConfig,
    r: usize,
    targets: &[Proj],
    dtype: DType,
    seed: u64,
) {
    let mut tensors = HashMap::new();
    let mut s = seed;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
            })
            .collect()
    };
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    for l in 0..cfg.num_layers {
        for &p in targets {
            let (out, inp) = match p {
                Proj::Q => (q, h),
                Proj::K | Proj::V => (kv, h),
                Proj::O => (h, q),
                Proj::Gate | Proj::Up => (i, h),
                _ => (h, i),
            };
            let m = loraplex_adapters::module_name(l, p);
            let a = Tensor::from_vec(rand(r * inp), (r, inp), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(rand(out * r), (out, r), &Device::Cpu).unwrap();
            tensors.insert(
                format!("base_model.model.{m}.lora_A.weight"),
                a.to_dtype(dtype).unwrap(),
            );
            tensors.insert(
                format!("base_model.model.{m}.lora_B.weight"),
                b.to_dtype(dtype).unwrap(),
            );
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let names: Vec<&str> = targets.iter().map(|p| peft_name(*p)).collect();
    let config = serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r,
        "target_modules": names, "bias": "none"});
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
}
