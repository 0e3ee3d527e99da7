//! The decoder of every family (Llama 2/3, SmolLM2, Mistral, Qwen2/3, Gemma 3, Phi-3) over a
//! batch of independent sequences. A family is a set of switches in the config (`families/`):
//! optional biases, head norms, sandwich norms, sliding layers; the layers are written once.
//!
//! Unlike candle-transformers' `quantized_llama`, the model holds no state: each row of a batch
//! belongs to a sequence with its own [`KvCache`], and the cache length is the row's position.
//! Prefill chunks and single decode tokens mix freely in one call; the projections run once over
//! all rows, attention runs per sequence.

use candle_core::{DType, Device, Tensor};

use crate::candle_ops::{attention, causal_mask};
use crate::config::ModelConfig;
use crate::cpu::{AttnJob, AttnParams};
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
    /// Qwen2: biases of q, k and v.
    qkv_bias: Option<[Tensor; 3]>,
    /// Qwen3, Gemma 3: per-head norms of q and k.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// Gemma 3: the norm of the attention output.
    post_attn_norm: Option<RmsNorm>,
    mlp_norm: RmsNorm,
    mlp: Mlp,
    /// Gemma 3: the norm of the MLP output.
    post_mlp_norm: Option<RmsNorm>,
    /// Keys this layer's queries see: its sliding window, if any.
    window: Option<usize>,
}

impl Block {
    fn load(cfg: &ModelConfig, r: &mut dyn WeightReader, l: usize) -> Result<Self> {
        let f = &cfg.family;
        let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let (eps, n) = (cfg.rms_norm_eps, r.naming());
        let offset = f.norm_offset();
        let norm = |r: &mut dyn WeightReader, p: Proj, len: usize| -> Result<RmsNorm> {
            Ok(RmsNorm::new(r.vector(p.name(n, l), len, offset)?, eps))
        };
        let attn_norm = norm(r, Proj::AttnNorm, h)?;
        let [q, k, v] = if f.fused {
            split(r.matrices(Proj::Qkv.name(n, l), &[qd, kvd, kvd], h)?)
        } else {
            [
                r.matrix(Proj::Q.name(n, l), (qd, h))?,
                r.matrix(Proj::K.name(n, l), (kvd, h))?,
                r.matrix(Proj::V.name(n, l), (kvd, h))?,
            ]
        };
        let qkv_bias = if f.qkv_bias {
            Some([
                r.vector(Proj::Q.bias_name(n, l), qd, 0.0)?,
                r.vector(Proj::K.bias_name(n, l), kvd, 0.0)?,
                r.vector(Proj::V.bias_name(n, l), kvd, 0.0)?,
            ])
        } else {
            None
        };
        let qk_norm = if f.qk_norm {
            Some((norm(r, Proj::QNorm, hd)?, norm(r, Proj::KNorm, hd)?))
        } else {
            None
        };
        let o = Linear::new(r.matrix(Proj::O.name(n, l), (h, qd))?)?;
        let (post_attn_norm, mlp_norm, post_mlp_norm) = if f.sandwich_norms {
            (
                Some(norm(r, Proj::PostAttnNorm, h)?),
                norm(r, Proj::PreMlpNorm, h)?,
                Some(norm(r, Proj::PostMlpNorm, h)?),
            )
        } else {
            (None, norm(r, Proj::MlpNorm, h)?, None)
        };
        let [gate, up] = if f.fused {
            split(r.matrices(Proj::GateUp.name(n, l), &[i, i], h)?)
        } else {
            [
                r.matrix(Proj::Gate.name(n, l), (i, h))?,
                r.matrix(Proj::Up.name(n, l), (i, h))?,
            ]
        };
        let down = r.matrix(Proj::Down.name(n, l), (h, i))?;
        Ok(Self {
            attn_norm,
            q: Linear::new(q)?,
            k: Linear::new(k)?,
            v: Linear::new(v)?,
            o,
            qkv_bias,
            qk_norm,
            post_attn_norm,
            mlp_norm,
            mlp: Mlp {
                gate: Linear::new(gate)?,
                up: Linear::new(up)?,
                down: Linear::new(down)?,
                activation: f.activation,
            },
            post_mlp_norm,
            window: cfg.window(l),
        })
    }

    fn linears(&self) -> [&Linear; 7] {
        let m = &self.mlp;
        [&self.q, &self.k, &self.v, &self.o, &m.gate, &m.up, &m.down]
    }
}

/// The parts of a fused matrix, as many as asked for.
fn split<const N: usize>(parts: Vec<WeightMatrix>) -> [WeightMatrix; N] {
    parts.try_into().expect("one matrix per requested part")
}

#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: ModelConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    /// Gemma 3: the sliding layers' rotary, on their own base.
    rotary_local: Option<Rotary>,
    dtype: DType,
    device: Device,
    kernels: Kernels,
}

impl Decoder {
    pub(crate) fn load(cfg: ModelConfig, r: &mut dyn WeightReader) -> Result<Self> {
        let h = cfg.hidden_size;
        let embed = r.embedding(cfg.vocab_size, h)?;
        let blocks = (0..cfg.num_layers)
            .map(|l| Block::load(&cfg, r, l))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(
            r.vector(
                Proj::FinalNorm.name(r.naming(), 0),
                h,
                cfg.family.norm_offset(),
            )?,
            cfg.rms_norm_eps,
        );
        let lm_head = Linear::new(r.lm_head(cfg.tie_word_embeddings, (cfg.vocab_size, h))?)?;
        let dtype = r.activation_dtype();
        let device = r.device().clone();
        let kernels = r.kernels();
        let rotary = Rotary::new(&cfg, false, dtype, &device)?;
        let rotary_local = match cfg.family.rope_local_theta {
            Some(_) => Some(Rotary::new(&cfg, true, dtype, &device)?),
            None => None,
        };
        Ok(Self {
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            rotary,
            rotary_local,
            dtype,
            device,
            kernels,
        })
    }

    pub fn config(&self) -> &ModelConfig {
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
            .map(|b| b.linears().into_iter().map(lin).sum::<usize>())
            .sum();
        per_block + self.embed.size_in_bytes(self.lm_head.weight()) + lin(&self.lm_head)
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
        let tables = self.rotary.tables(&positions)?;
        let local_tables = match &self.rotary_local {
            Some(r) => Some(r.tables(&positions)?),
            None => None,
        };
        let per_seq: Vec<_> = inputs.iter().map(|i| (i.adapter, i.tokens.len())).collect();
        let lora = LoraGroups::new(&per_seq, self.kernels, &self.device)?;
        // The CPU wing attends in place; candle's path needs each sequence's mask, built once
        // per step for every layer of the same window.
        let host = self.kernels.cpu().filter(|_| self.dtype == DType::F32);
        let mut masks: Vec<(Option<usize>, Vec<Option<Tensor>>)> = Vec::new();
        if host.is_none() {
            for b in &self.blocks {
                if masks.iter().any(|(w, _)| *w == b.window) {
                    continue;
                }
                let per_seq = inputs
                    .iter()
                    .zip(caches.iter())
                    .map(|(inp, cache)| {
                        causal_mask(
                            inp.tokens.len(),
                            cache.len(),
                            b.window,
                            self.dtype,
                            &self.device,
                        )
                    })
                    .collect::<Result<_>>()?;
                masks.push((b.window, per_seq));
            }
        }

        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let scale = self.cfg.attn_scale();
        let mut x = self.embed.forward(&ids, self.dtype)?;
        if self.cfg.family.embed_scale {
            x = (x * (self.cfg.hidden_size as f64).sqrt())?;
        }
        for (l, b) in self.blocks.iter().enumerate() {
            let h = b.attn_norm.forward(&x)?;
            let qkv = [(&b.q, Proj::Q), (&b.k, Proj::K), (&b.v, Proj::V)];
            let [mut q, mut k, mut v]: [Tensor; 3] = Linear::project(&qkv, &h, &lora, l)?
                .try_into()
                .expect("one output per projection");
            if let Some([bq, bk, bv]) = &b.qkv_bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let mut q = q.reshape((total, nh, hd))?;
            let mut k = k.reshape((total, nkv, hd))?;
            if let Some((qn, kn)) = &b.qk_norm {
                q = qn.forward(&q)?;
                k = kn.forward(&k)?;
            }
            let (rotary, (cos, sin)) = match (&self.rotary_local, &local_tables, b.window) {
                (Some(r), Some(t), Some(_)) => (r, t),
                _ => (&self.rotary, &tables),
            };
            let q = rotary.apply(&q, cos, sin)?;
            let k = rotary.apply(&k, cos, sin)?;
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
            let params = AttnParams {
                scale,
                window: b.window,
            };
            let mut outs = match host {
                Some(caps) => crate::cpu::attention(caps, &q, &jobs, (nh, nkv, hd), params)?,
                None => {
                    let masks = &masks
                        .iter()
                        .find(|(w, _)| *w == b.window)
                        .expect("a mask set per window")
                        .1;
                    jobs.iter()
                        .zip(masks)
                        .map(|(j, mask)| {
                            let qi = q.narrow(0, j.row, j.t)?.transpose(0, 1)?.contiguous()?;
                            attention(&qi, &j.k, &j.v, mask.as_ref(), params)
                        })
                        .collect::<Result<_>>()?
                }
            };
            let attn = if outs.len() == 1 {
                outs.pop().expect("one")
            } else {
                Tensor::cat(&outs, 0)?
            };
            let [mut o]: [Tensor; 1] = Linear::project(&[(&b.o, Proj::O)], &attn, &lora, l)?
                .try_into()
                .expect("one output per projection");
            if let Some(n) = &b.post_attn_norm {
                o = n.forward(&o)?;
            }
            x = (x + o)?;
            let mut m = b
                .mlp
                .forward(&b.mlp_norm.forward(&x)?, self.kernels, |lins, x| {
                    Linear::project(lins, x, &lora, l)
                })?;
            if let Some(n) = &b.post_mlp_norm {
                m = n.forward(&m)?;
            }
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
        let mut logits = self
            .lm_head
            .forward(&h, self.kernels)?
            .to_dtype(DType::F32)?;
        if let Some(cap) = self.cfg.family.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
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
