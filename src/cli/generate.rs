//! `loraplex generate`: one prompt through the engine, text or JSON out.

use std::num::NonZeroUsize;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use loraplex_models::{ChatMessage, HubOptions};
use loraplex_runtime::{
    GenRequest, GenerationParams, MinP, Penalties, Sampling, Temperature, TopP,
};
use serde_json::json;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message (implies --chat).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy (deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Keep generating through end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print prompt ids, generated ids, text and timings as JSON.
    #[arg(long)]
    pub json: bool,
    /// A PEFT LoRA adapter: a folder, or the name of a folder in --adapter-dir.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Where adapter names are looked up.
    #[arg(long)]
    pub adapter_dir: Option<std::path::PathBuf>,
    /// Largest adapter rank accepted.
    #[arg(long, default_value_t = 64)]
    pub max_lora_rank: usize,
}

impl GenerateArgs {
    fn params(&self) -> anyhow::Result<GenerationParams> {
        let sampling = if self.temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Random {
                temperature: Temperature::new(self.temperature)?,
                top_k: self.top_k.and_then(NonZeroUsize::new),
                top_p: self.top_p.map(TopP::new).transpose()?,
                min_p: self.min_p.map(MinP::new).transpose()?,
                seed: self.seed,
            }
        };
        Ok(GenerationParams {
            sampling,
            penalties: Penalties::new(self.repetition_penalty, 0.0, 0.0)?,
            max_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
            ..GenerationParams::default()
        })
    }
}

pub fn run(args: GenerateArgs, hub: HubOptions) -> anyhow::Result<()> {
    let params = args.params()?;
    let t0 = Instant::now();
    let lm = loraplex_models::load(&args.model.model, &args.model.load_options(hub)?)
        .with_context(|| format!("loading {}", args.model.model))?;
    let load_s = t0.elapsed().as_secs_f64();
    let (text, add_special) = if args.chat || args.system.is_some() {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(ChatMessage::new("system", s.clone()));
        }
        msgs.push(ChatMessage::new("user", args.prompt.clone()));
        (lm.render_chat(&msgs, None, true)?, false)
    } else {
        (args.prompt.clone(), true)
    };
    let prompt_ids = lm.tokenizer.encode(&text, add_special)?;
    let adapter = match &args.adapter {
        None => None,
        Some(a) => {
            let dir = match (std::path::Path::new(a).is_dir(), &args.adapter_dir) {
                (true, _) => std::path::PathBuf::from(a),
                (false, Some(d)) if d.join(a).is_dir() => d.join(a),
                _ => {
                    anyhow::bail!("adapter {a:?} is neither a folder nor a folder in --adapter-dir")
                }
            };
            let limits = loraplex_adapters::AdapterLimits {
                max_rank: args.max_lora_rank,
            };
            let loaded =
                loraplex_adapters::load_dir(&dir, &loraplex_adapters::BaseModel::of(&lm), &limits)
                    .with_context(|| format!("adapter {}", dir.display()))?;
            Some(loaded)
        }
    };
    let req =
        GenRequest::new(prompt_ids, params).with_adapter(adapter.as_ref().map(|a| &a.weights));
    let g = loraplex_runtime::generate(&lm.model, &lm.tokenizer, vec![req])?
        .pop()
        .expect("one request, one generation");
    if args.json {
        let prefill = g.prefill.as_secs_f64();
        let decode = g.decode.as_secs_f64();
        let out = json!({
            "model": lm.name,
            "adapter": adapter.as_ref().map(|a| json!({"sha256": a.info.sha256, "rank": a.info.rank, "targets": a.info.targets})),
            "prompt_ids": g.prompt_ids,
            "ids": g.ids,
            "text": g.text,
            "finish_reason": g.finish.as_str(),
            "timings": {
                "load_s": load_s,
                "prefill_s": prefill,
                "decode_s": decode,
                "prompt_tokens": g.prompt_ids.len(),
                "generated_tokens": g.ids.len(),
                "prefill_tok_per_s": g.prompt_ids.len() as f64 / prefill.max(1e-9),
                "decode_tok_per_s": g.ids.len().saturating_sub(1) as f64 / decode.max(1e-9),
            }
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", g.text);
    }
    Ok(())
}
