//! Loraplex models: architectures, weight loading (GGUF, safetensors, hub), tokenizer and chat
//! template. Synchronous and free of any async runtime: `models` never depends on tokio.

mod candle_ops;
mod chat;
mod chat_tools;
mod config;
mod cpu;
mod decoder;
mod error;
mod families;
mod gguf;
mod gguf_spm;
mod hf;
mod hf_config;
mod kernels;
mod kv;
mod layers;
mod lora;
mod matmul;
mod names;
mod progress;
mod source;
mod token_bytes;
mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};

pub use candle_core::{DType, Device, Tensor};
pub use chat::{ChatMessage, ChatTemplate, ToolCall};
pub use chat_tools::{json_text, tool_call_text, TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
pub use config::{Activation, Arch, Family, ModelConfig, RopeLayout, RopeScaling};
pub use cpu::{Caps, LoraPrecision, Packed, Tier};
pub use decoder::{Decoder, LogitsFor, SeqInput};
pub use error::{ModelError, Result};
pub use hf_config::HfConfig;
pub use kernels::{KernelChoice, Kernels};
pub use kv::KvCache;
pub use layers::{Linear, WeightMatrix};
pub use lora::{LoraDelta, LoraTarget, LoraWeights};
pub use source::{fetch_files, resolve, HubOptions, HubRef, ModelFiles};
pub use token_bytes::{complete_utf8, incomplete_tail};
pub use tokenizer::{IncrementalDecoder, SpecialTokens, Tokenizer};
pub use weights::{Naming, Proj, WeightDtype};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: WeightDtype,
    pub device: Device,
    /// `--cpu-kernels`: the CPU tier, or candle's generic ops.
    pub kernels: KernelChoice,
    pub hub: HubOptions,
    /// `--chat-template`: a Jinja chat template used instead of the model's own (or where it
    /// has none, as a pretrained model's GGUF often does).
    pub chat_template: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: WeightDtype::Auto,
            device: Device::Cpu,
            kernels: KernelChoice::Auto,
            hub: HubOptions::default(),
            chat_template: None,
        }
    }
}

/// A model ready to serve: weights, tokenizer and chat template.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: Decoder,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub files: ModelFiles,
    /// A short name for the model (file stem or directory name).
    pub name: String,
}

impl LoadedModel {
    /// Renders a conversation with the model's template, ready to tokenize, with the
    /// functions the model may call (`tools`, OpenAI tool objects); where the template cannot
    /// render tools, in the default format of the `chat_tools` module.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = self
            .chat_template
            .as_ref()
            .ok_or_else(|| ModelError::ChatTemplate("the model has no chat template".into()))?;
        chat_tools::render(t, messages, tools, add_generation_prompt)
    }
}

/// Resolves `spec` (a `.gguf` path, an HF directory, or a hub id) and loads it.
pub fn load(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let files = resolve(spec, &opts.hub)?;
    load_files(files, opts)
}

pub fn load_files(files: ModelFiles, opts: &LoadOptions) -> Result<LoadedModel> {
    match &files {
        ModelFiles::Gguf(p) => load_gguf(p.clone(), files.clone(), opts),
        ModelFiles::HfDir(d) => load_hf_dir(d.clone(), files.clone(), opts),
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .or_else(|| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

fn load_gguf(path: PathBuf, files: ModelFiles, opts: &LoadOptions) -> Result<LoadedModel> {
    let file = gguf::GgufFile::open(&path)?;
    let cfg = file.config()?;
    let tokenizer = Tokenizer::from_gguf(file.metadata(), &path)?;
    let chat_template = opts
        .chat_template
        .clone()
        .or_else(|| file.chat_template())
        .map(|src| {
            ChatTemplate::new(
                &src,
                tokenizer.id_text(tokenizer.bos_id()),
                tokenizer.id_text(tokenizer.eos_id()),
            )
        })
        .transpose()?;
    let kernels = opts.kernels.resolve(&opts.device)?;
    let mut reader = gguf::GgufReader::new(file, opts.dtype, &opts.device, kernels);
    let model = Decoder::load(cfg, &mut reader)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        name: stem(&path),
        files,
    })
}

fn load_hf_dir(dir: PathBuf, files: ModelFiles, opts: &LoadOptions) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(ModelError::Missing {
            path: dir.clone(),
            what: "config.json".into(),
        });
    }
    let hf_cfg = HfConfig::from_file(&cfg_path)?;
    let cfg = families::from_hf_config(&hf_cfg, &cfg_path)?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(ModelError::Missing {
            path: dir.clone(),
            what: "tokenizer.json".into(),
        });
    }
    let tf = hf::tokenizer_files(&dir)?;
    let (bos, eos) = (tf.special.bos_token.clone(), tf.special.eos_token.clone());
    let tokenizer = Tokenizer::from_file(&tok_path, tf.special)?;
    let chat_template = opts
        .chat_template
        .clone()
        .or(tf.chat_template)
        .map(|src| ChatTemplate::new(&src, bos.unwrap_or_default(), eos.unwrap_or_default()))
        .transpose()?;
    let weights = hf::weight_files(&dir)?;
    let file_dtype = hf::file_dtype(hf_cfg.stored_dtype());
    let kernels = opts.kernels.resolve(&opts.device)?;
    let mut reader =
        hf::SafetensorsReader::open(&weights, file_dtype, opts.dtype, &opts.device, kernels)?;
    let model = Decoder::load(cfg, &mut reader)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        name: stem(&dir),
        files,
    })
}

/// `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn parse_device(s: &str) -> Result<Device> {
    let bad = || ModelError::Device(s.to_string());
    match s {
        "cpu" => Ok(Device::Cpu),
        "metal" => Device::new_metal(0).map_err(|_| bad()),
        _ => {
            let ordinal = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(bad)?,
                None => return Err(bad()),
            };
            Device::new_cuda(ordinal).map_err(|e| ModelError::Device(format!("{s}: {e}")))
        }
    }
}
