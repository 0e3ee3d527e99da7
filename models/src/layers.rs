//! Layers shared by every family: the LoRA-capable linear, RMSNorm, rotary embedding, MLP.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::config::{Activation, ModelConfig, RopeLayout};
use crate::cpu::Packed;
use crate::error::Result;
use crate::kernels::Kernels;
use crate::lora::LoraGroups;
use crate::matmul::dense_matmul;
use crate::names::Proj;

/// How one weight matrix is held in memory.
#[derive(Debug, Clone)]
pub enum WeightMatrix {
    /// ggml-quantized blocks for candle's quantized matmul (candle's kernels; on the CPU wing,
    /// only shapes the packed form does not tile).
    Quantized(Arc<QTensor>),
    /// A plain `[out, in]` matrix in the activation dtype.
    Dense(Tensor),
    /// 8-bit packed for the CPU wing: it serves every row count, prefill included, so neither
    /// candle's blocks nor a dense copy are kept beside it.
    Packed(Arc<Packed>),
}

impl WeightMatrix {
    pub fn dims(&self) -> (usize, usize) {
        let s = match self {
            WeightMatrix::Quantized(q) => q.shape().dims().to_vec(),
            WeightMatrix::Dense(t) => t.dims().to_vec(),
            WeightMatrix::Packed(p) => return p.dims(),
        };
        (s[0], s[1])
    }

    pub fn size_in_bytes(&self) -> usize {
        match self {
            WeightMatrix::Quantized(q) => q.storage_size_in_bytes(),
            WeightMatrix::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            WeightMatrix::Packed(p) => p.size_in_bytes(),
        }
    }

    /// The matrix as a dense tensor, for reference computations (merging adapters, tests).
    pub fn to_dense(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            WeightMatrix::Quantized(q) => q.dequantize(device)?,
            WeightMatrix::Dense(t) => t.clone(),
            WeightMatrix::Packed(p) => p.to_dense(device)?,
        })
    }
}

/// Every projection of the model goes through this type, so that a per-row low-rank delta can be
/// added in one place (the base product is computed once for the whole batch).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: WeightMatrix,
    /// `QMatMul` for the quantized form, built once (it holds an `Arc` to the same blocks).
    qmm: Option<QMatMul>,
}

impl Linear {
    pub fn new(weight: WeightMatrix) -> Result<Self> {
        let qmm = match &weight {
            WeightMatrix::Quantized(q) => Some(QMatMul::from_arc(q.clone())?),
            WeightMatrix::Dense(_) | WeightMatrix::Packed(_) => None,
        };
        Ok(Self { weight, qmm })
    }

    pub fn weight(&self) -> &WeightMatrix {
        &self.weight
    }

    /// The projections `lins` sharing the input `x` (q, k, v; gate, up; or one), each plus its
    /// rows' LoRA deltas: the one place a projection runs. On the CPU wing, packed matrices run
    /// in one parallel pass with their deltas inside it (see `Packed::forward_many`).
    pub(crate) fn project(
        lins: &[(&Linear, Proj)],
        x: &Tensor,
        lora: &LoraGroups<'_>,
        layer: usize,
    ) -> Result<Vec<Tensor>> {
        let packed: Option<Vec<&Packed>> = lins
            .iter()
            .map(|(l, _)| match &l.weight {
                WeightMatrix::Packed(p) => Some(p.as_ref()),
                _ => None,
            })
            .collect();
        // Each row's delta is looked up only when the pass can take it: every matrix packed.
        if let (Kernels::Cpu(_), Some(mats)) = (lora.kernels(), packed) {
            let rows = x.dim(0)?;
            let deltas: Option<Vec<Vec<_>>> = lins
                .iter()
                .map(|&(_, p)| {
                    if lora.is_empty() {
                        Some(Vec::new())
                    } else {
                        lora.host_rows(layer, p, rows)
                    }
                })
                .collect();
            if let Some(deltas) = deltas {
                let deltas: Vec<&[_]> = deltas.iter().map(Vec::as_slice).collect();
                return Packed::forward_many(&mats, x, &deltas);
            }
        }
        lins.iter()
            .map(|&(l, p)| lora.apply(layer, p, x, l.forward(x, lora.kernels())?))
            .collect()
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        match (&self.weight, &self.qmm, kernels) {
            (WeightMatrix::Dense(w), _, Kernels::Cpu(_)) => dense_matmul(x, w),
            (WeightMatrix::Dense(w), _, Kernels::Candle) => crate::candle_ops::matmul(x, w),
            (WeightMatrix::Packed(p), _, _) => p.forward(x),
            (WeightMatrix::Quantized(_), Some(q), _) => Ok(q.forward(&x.contiguous()?)?),
            (WeightMatrix::Quantized(q), None, _) => {
                Ok(QMatMul::from_arc(q.clone())?.forward(&x.contiguous()?)?)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            eps: eps as f32,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps,
        )?)
    }
}

/// Precomputed cos/sin tables; rows are gathered per token so that every row of a batch can sit
/// at its own position.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    layout: RopeLayout,
}

impl Rotary {
    /// The global layers' tables, or (`local`) the sliding layers' where they differ.
    pub fn new(cfg: &ModelConfig, local: bool, dtype: DType, device: &Device) -> Result<Self> {
        let inv_freq = cfg.rope_inv_freq(local);
        let half = inv_freq.len();
        let max = cfg.max_position_embeddings;
        let inv = Tensor::from_vec(inv_freq, (1, half), device)?;
        let pos = Tensor::arange(0u32, max as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            layout: cfg.rope_layout,
        })
    }

    /// Tables for the given positions: `[rows, 1, head_dim/2]` each.
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = positions.dim(0)?;
        let cos = self.cos.index_select(positions, 0)?;
        let sin = self.sin.index_select(positions, 0)?;
        let half = cos.dim(1)?;
        Ok((cos.reshape((n, 1, half))?, sin.reshape((n, 1, half))?))
    }

    /// `x`: `[rows, heads, head_dim]`, each row rotated by its own position.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (rows, heads, hd) = x.dims3()?;
        let x4 = x.contiguous()?.reshape((rows, heads, 1, hd))?;
        let y = match self.layout {
            RopeLayout::Half => candle_nn::rotary_emb::rope(&x4, cos, sin)?,
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x4, cos, sin)?,
        };
        Ok(y.reshape((rows, heads, hd))?)
    }
}

/// Gated feed-forward block (SwiGLU, or Gemma's GeGLU).
#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub activation: Activation,
}

impl Mlp {
    /// `project(projections, input)` runs projections sharing one input, each with any per-row
    /// LoRA delta (gate and up together).
    pub fn forward(
        &self,
        x: &Tensor,
        kernels: Kernels,
        project: impl Fn(&[(&Linear, Proj)], &Tensor) -> Result<Vec<Tensor>>,
    ) -> Result<Tensor> {
        let [gate, up]: [Tensor; 2] =
            project(&[(&self.gate, Proj::Gate), (&self.up, Proj::Up)], x)?
                .try_into()
                .expect("one output per projection");
        let h = match (self.activation, kernels) {
            (Activation::Silu, Kernels::Cpu(caps)) => crate::cpu::silu_mul(caps, &gate, &up)?,
            (Activation::Silu, Kernels::Candle) => crate::candle_ops::silu_mul(&gate, &up)?,
            // candle's one elementwise loop: the same bits on every CPU tier.
            (Activation::GeluTanh, _) => crate::candle_ops::gelu_mul(&gate, &up)?,
        };
        let [down]: [Tensor; 1] = project(&[(&self.down, Proj::Down)], &h)?
            .try_into()
            .expect("one output per projection");
        Ok(down)
    }
}

/// Token embedding table; quantized tables are dequantized row by row on lookup.
#[derive(Debug, Clone)]
pub enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
    /// The CPU wing's packed table, shared with a tied output projection (held once), where
    /// packing keeps every value of the file's blocks.
    Packed(Arc<Packed>),
}

impl Embedding {
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let x = match self {
            Embedding::Quantized(q) => q.embedding(ids)?,
            Embedding::Dense(t) => t.index_select(ids, 0)?,
            Embedding::Packed(p) => {
                let (vocab, hidden) = p.dims();
                let ids = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let mut x = vec![0f32; ids.len() * hidden];
                for (&id, row) in ids.iter().zip(x.chunks_exact_mut(hidden)) {
                    if id as usize >= vocab {
                        return Err(crate::ModelError::InvalidBatch(format!(
                            "token id {id} is outside the vocabulary ({vocab})"
                        )));
                    }
                    p.row_into(id as usize, row);
                }
                Tensor::from_vec(x, (ids.len(), hidden), &Device::Cpu)?
            }
        };
        Ok(x.to_dtype(dtype)?)
    }

    /// Bytes held, none where `lm_head` holds the same table.
    pub fn size_in_bytes(&self, lm_head: &WeightMatrix) -> usize {
        match (self, lm_head) {
            (Embedding::Packed(a), WeightMatrix::Packed(b)) if Arc::ptr_eq(a, b) => 0,
            (Embedding::Quantized(a), WeightMatrix::Quantized(b)) if Arc::ptr_eq(a, b) => 0,
            (Embedding::Packed(p), _) => p.size_in_bytes(),
            (Embedding::Quantized(q), _) => q.storage_size_in_bytes(),
            (Embedding::Dense(t), _) => t.elem_count() * t.dtype().size_in_bytes(),
        }
    }
}
