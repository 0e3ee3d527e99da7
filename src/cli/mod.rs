//! Subcommands and the flags they share.

pub mod adapters;
pub mod admin;
pub mod experiments;
pub mod generate;
pub mod serve;

use std::path::PathBuf;

use clap::Args;
use loraplex_models::{HubOptions, KernelChoice, LoadOptions, WeightDtype};

/// Which model to load and how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A `.gguf` file, a Hugging Face model directory, or a hub id (`org/name[@rev][:file.gguf]`).
    pub model: String,
    /// How weights are held in memory: auto, f32, f16, bf16, q8_0.
    #[arg(long, default_value = "auto")]
    pub dtype: WeightDtype,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The CPU kernels: auto (the fastest this CPU runs), portable, avx2, avxvnni, avx512, or
    /// candle (candle's generic ops, the path every GPU takes).
    #[arg(long, default_value = "auto")]
    pub cpu_kernels: KernelChoice,
}

impl ModelArgs {
    pub fn load_options(&self, hub: HubOptions) -> anyhow::Result<LoadOptions> {
        Ok(LoadOptions {
            dtype: self.dtype,
            device: loraplex_models::parse_device(&self.device)?,
            kernels: self.cpu_kernels,
            hub,
        })
    }
}

/// The hub settings of the `huggingface_hub` conventions.
pub fn hub_options_from_env() -> HubOptions {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let cache_dir = var("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("hub")));
    let offline =
        var("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"));
    HubOptions {
        cache_dir,
        offline,
        token: var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")),
        endpoint: var("HF_ENDPOINT"),
    }
}
