//! Llama-family decoder (Llama 2/3, Mistral, SmolLM2) over a batch of independent sequences.
//!
//! Unlike candle-transformers' `quantized_llama`, the model holds no state: each row of a batch
//! belongs to a sequence with its own [`KvCache`], and the cache length is the row's position.
//! Prefill chunks and single decode tokens mix freely in one call; the projections run once over
//! all rows, attention runs per sequence.

use candle_core::{DType, Device, Tensor};

use crate::candle_ops::{attention, causal_mask};
use crate::config::LlamaConfig;
use crate::cpu::AttnJob;
use crate::error::{ModelError, Result};
use crate::kernels::Kernels;
use crate::kv::KvCache;
use crate::layers::{Embedding, Linear, Mlp, RmsNorm, Rotary, WeightMatrix};
use crate::lora::{LoraGroups, LoraTarget, LoraWeights};
use crate::weights::{Proj, WeightReader};

/// Which positions of a sequence need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Intermediate prefill chunk: nothing to sample yet.
    None,
    /// The next-token distribution only.
    Last,
    /// Every position (teacher-forced scoring).
    All,
}

/// One sequence's share of a batch: the new tokens to append to its cache, and the adapter
/// (if any) whose delta its rows get.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub logits: LogitsFor,
    pub adapter: Option<&'a LoraWeights>,
}

impl<'a> SeqInput<'a> {
    pub fn new(tokens: &'a [u32], logits: LogitsFor) -> Self {
        Self {
            tokens,
            logits,
            adapter: None,
        }
    }

    pub fn with_adapter(self, adapter: Option<&'a LoraWeights>) -> Self {
        Self { adapter, ..self }
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

#[derive(Debug, Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    dtype: DType,
    device: Device,
    kernels: Kernels,
}

impl Llama {
    pub(crate) fn load(cfg: LlamaConfig, r: &mut dyn WeightReader) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        let eps = cfg.rms_norm_eps;
        let embed = r.embedding(cfg.vocab_size, h)?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            blocks.push(Block {
                attn_norm: RmsNorm::new(r.vector(Proj::AttnNorm.name(r.naming(), l), h)?, eps),
                q: Linear::new(r.matrix(Proj::Q.name(r.naming(), l), (qd, h))?)?,
                k: Linear::new(r.matrix(Proj::K.name(r.naming(), l), (kvd, h))?)?,
                v: Linear::new(r.matrix(Proj::V.name(r.naming(), l), (kvd, h))?)?,
                o: Linear::new(r.matrix(Proj::O.name(r.naming(), l), (h, qd))?)?,
                mlp_norm: RmsNorm::new(r.vector(Proj::MlpNorm.name(r.naming(), l), h)?, eps),
                mlp: Mlp {
                    gate: Linear::new(r.matrix(Proj::Gate.name(r.naming(), l), (i, h))?)?,
                    up: Linear::new(r.matrix(Proj::Up.name(r.naming(), l), (i, h))?)?,
                    down: Linear::new(r.matrix(Proj::Down.name(r.naming(), l), (h, i))?)?,
                },
            });
        }
        let norm = RmsNorm::new(r.vector(Proj::FinalNorm.name(r.naming(), 0), h)?, eps);
        let lm_head = Linear::new(r.lm_head(cfg.tie_word_embeddings, (cfg.vocab_size, h))?)?;
        let dtype = r.activation_dtype();
        let device = r.device().clone();
        let kernels = r.kernels();
        let rotary = Rotary::new(&cfg, dtype, &device)?;
        Ok(Self {
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            rotary,
            dtype,
            device,
            kernels,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Dtype of activations (and of LoRA deltas applied to them).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// What runs this model: the CPU wing's tier, or candle's ops.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// How adapters for this model are best held: beside packed 8-bit weights, in 8 bits (a
    /// step with distinct adapters is bound by streaming them; a layer the packed kernel does
    /// not run quantizes its rows for the delta itself); beside other quantized weights, in f16
    /// (their error dwarfs f16 rounding of a low-rank delta); in f32 when the base is exact.
    pub fn lora_precision(&self) -> crate::LoraPrecision {
        use crate::LoraPrecision::*;
        if self.kernels.cpu().is_none() || self.dtype != DType::F32 {
            return F32;
        }
        let weights = || self.blocks.iter().map(|b| b.q.weight());
        if weights().any(|w| matches!(w, WeightMatrix::Packed(_))) {
            Q8
        } else if weights().any(|w| matches!(w, WeightMatrix::Quantized(_))) {
            F16
        } else {
            F32
        }
    }

    /// Where and how adapter deltas for this model are held.
    pub fn lora_target(&self) -> LoraTarget<'_> {
        LoraTarget {
            kernels: self.kernels,
            dtype: self.dtype,
            precision: self.lora_precision(),
            device: &self.device,
        }
    }

    /// Bytes of weights held (quantized blocks, dense copies, embeddings).
    pub fn weight_bytes(&self) -> usize {
        let lin = |l: &Linear| l.weight().size_in_bytes();
        let per_block: usize = self
            .blocks
            .iter()
            .map(|b| {
                lin(&b.q)
                    + lin(&b.k)
                    + lin(&b.v)
                    + lin(&b.o)
                    + lin(&b.mlp.gate)
                    + lin(&b.mlp.up)
                    + lin(&b.mlp.down)
            })
            .sum();
        let embed = match &self.embed {
            Embedding::Quantized(q) => q.storage_size_in_bytes(),
            Embedding::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
        };
        per_block + embed + lin(&self.lm_head)
    }

    /// A fresh cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.num_layers, self.cfg.max_position_embeddings)
    }

    /// Runs one step over a batch. `inputs[i]` appends to `caches[i]`. Returns, per input, the
    /// `[n, vocab]` f32 logits it asked for (`None` for [`LogitsFor::None`]).
    pub fn forward(
        &self,
        inputs: &[SeqInput<'_>],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<Option<Tensor>>> {
        // On a thread of rayon's pool: a step has a few hundred parallel passes, and from
        // there each starts at once on this thread while the others join, instead of a caller
        // outside the pool handing every pass over and sleeping until it ends.
        rayon::scope(|_| self.step(inputs, caches))
    }

    fn step(
        &self,
        inputs: &[SeqInput<'_>],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<Option<Tensor>>> {
        if inputs.len() != caches.len() {
            return Err(ModelError::InvalidBatch(format!(
                "{} inputs but {} caches",
                inputs.len(),
                caches.len()
            )));
        }
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for (inp, cache) in inputs.iter().zip(caches.iter()) {
            if inp.tokens.is_empty() {
                return Err(ModelError::InvalidBatch(
                    "a sequence has no new tokens".into(),
                ));
            }
            if let Some(&bad) = inp
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.cfg.vocab_size)
            {
                return Err(ModelError::InvalidBatch(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.cfg.vocab_size
                )));
            }
            cache.check_room(inp.tokens.len())?;
            ids.extend_from_slice(inp.tokens);
            positions.extend((0..inp.tokens.len()).map(|j| (cache.len() + j) as u32));
        }
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let (cos, sin) = self.rotary.tables(&positions)?;
        let per_seq: Vec<_> = inputs.iter().map(|i| (i.adapter, i.tokens.len())).collect();
        let lora = LoraGroups::new(&per_seq, self.kernels, &self.device)?;
        // The CPU wing attends in place; candle's path needs each prefill's mask, built once
        // per step for every layer.
        let host = self.kernels.cpu().filter(|_| self.dtype == DType::F32);
        let masks: Vec<Option<Tensor>> = inputs
            .iter()
            .zip(caches.iter())
            .map(|(inp, cache)| {
                let t = inp.tokens.len();
                (t > 1 && host.is_none())
                    .then(|| causal_mask(t, cache.len(), self.dtype, &self.device))
                    .transpose()
            })
            .collect::<Result<_>>()?;

        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let mut x = self.embed.forward(&ids, self.dtype)?;
        for (l, b) in self.blocks.iter().enumerate() {
            let h = b.attn_norm.forward(&x)?;
            let qkv = [(&b.q, Proj::Q), (&b.k, Proj::K), (&b.v, Proj::V)];
            let [q, k, v]: [Tensor; 3] = Linear::project(&qkv, &h, &lora, l)?
                .try_into()
                .expect("one output per projection");
            let q = self
                .rotary
                .apply(&q.reshape((total, nh, hd))?, &cos, &sin)?;
            let k = self
                .rotary
                .apply(&k.reshape((total, nkv, hd))?, &cos, &sin)?;
            let v = v.reshape((total, nkv, hd))?;
            // Each sequence's new keys and values join its cache; then each attends over it.
            let mut jobs = Vec::with_capacity(inputs.len());
            let mut off = 0;
            for (inp, cache) in inputs.iter().zip(caches.iter_mut()) {
                let t = inp.tokens.len();
                let ki = k.narrow(0, off, t)?.transpose(0, 1)?;
                let vi = v.narrow(0, off, t)?.transpose(0, 1)?;
                let (k, v) = cache.append(l, &ki, &vi)?;
                jobs.push(AttnJob { row: off, t, k, v });
                off += t;
            }
            let mut outs = match host {
                Some(caps) => crate::cpu::attention(caps, &q, &jobs, nh, nkv, hd)?,
                None => jobs
                    .iter()
                    .zip(&masks)
                    .map(|(j, mask)| {
                        let qi = q.narrow(0, j.row, j.t)?.transpose(0, 1)?.contiguous()?;
                        attention(&qi, &j.k, &j.v, mask.as_ref())
                    })
                    .collect::<Result<_>>()?,
            };
            let attn = if outs.len() == 1 {
                outs.pop().expect("one")
            } else {
                Tensor::cat(&outs, 0)?
            };
            let [o]: [Tensor; 1] = Linear::project(&[(&b.o, Proj::O)], &attn, &lora, l)?
                .try_into()
                .expect("one output per projection");
            x = (x + o)?;
            let m = b
                .mlp
                .forward(&b.mlp_norm.forward(&x)?, self.kernels, |lins, x| {
                    Linear::project(lins, x, &lora, l)
                })?;
            x = (x + m)?;
        }
        for (inp, cache) in inputs.iter().zip(caches.iter_mut()) {
            cache.commit(inp.tokens.len());
        }
        self.logits(&x, inputs)
    }

    fn logits(&self, x: &Tensor, inputs: &[SeqInput<'_>]) -> Result<Vec<Option<Tensor>>> {
        let mut rows = Vec::new();
        let mut spans = Vec::with_capacity(inputs.len());
        let mut off = 0u32;
        for inp in inputs {
            let t = inp.tokens.len() as u32;
            let before = rows.len();
            match inp.logits {
                LogitsFor::None => {}
                LogitsFor::Last => rows.push(off + t - 1),
                LogitsFor::All => rows.extend(off..off + t),
            }
            spans.push((inp.logits != LogitsFor::None).then_some((before, rows.len() - before)));
            off += t;
        }
        if rows.is_empty() {
            return Ok(vec![None; inputs.len()]);
        }
        let n = rows.len();
        let idx = Tensor::from_vec(rows, n, &self.device)?;
        let h = self.norm.forward(&x.index_select(&idx, 0)?)?;
        let logits = self
            .lm_head
            .forward(&h, self.kernels)?
            .to_dtype(DType::F32)?;
        spans
            .into_iter()
            .map(|s| {
                s.map(|(a, len)| logits.narrow(0, a, len))
                    .transpose()
                    .map_err(Into::into)
            })
            .collect()
    }
}
