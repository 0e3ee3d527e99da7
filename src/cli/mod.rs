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
    /// A Jinja chat template used instead of the model's own (a file, or the template itself).
    #[arg(long)]
    pub chat_template: Option<String>,
}

impl ModelArgs {
    pub fn load_options(&self, hub: HubOptions) -> anyhow::Result<LoadOptions> {
        Ok(LoadOptions {
            dtype: self.dtype,
            device: loraplex_models::parse_device(&self.device)?,
            kernels: self.cpu_kernels,
            hub,
            chat_template: chat_template_arg(self.chat_template.as_deref())?,
        })
    }
}

/// `--chat-template`, as vLLM takes it: the path of a file holding the template, or else the
/// template itself (anything with Jinja's `{{` or `{%` in it that is not a file).
pub fn chat_template_arg(arg: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(arg) = arg else { return Ok(None) };
    let path = std::path::Path::new(arg);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("reading --chat-template {arg}: {e}"));
    }
    if arg.contains("{{") || arg.contains("{%") {
        return Ok(Some(arg.to_string()));
    }
    anyhow::bail!("--chat-template {arg:?} is neither a file nor a Jinja template")
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

#[cfg(test)]
mod tests {
    use super::chat_template_arg;

    #[test]
    fn chat_template_is_a_file_or_the_template_itself() {
        let dir = std::env::temp_dir().join(format!("loraplex-ct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t.jinja");
        std::fs::write(&f, "{{ messages[0]['content'] }}").unwrap();
        let read = chat_template_arg(f.to_str()).unwrap();
        assert_eq!(read.as_deref(), Some("{{ messages[0]['content'] }}"));
        let inline = chat_template_arg(Some("{% for m in messages %}{% endfor %}")).unwrap();
        assert_eq!(
            inline.as_deref(),
            Some("{% for m in messages %}{% endfor %}")
        );
        assert_eq!(chat_template_arg(None).unwrap(), None);
        let err = chat_template_arg(Some("no/such/file.jinja")).unwrap_err();
        assert!(err.to_string().contains("neither a file nor"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
