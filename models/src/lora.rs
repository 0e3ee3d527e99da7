//! LoRA deltas in the form the forward pass consumes: `y += (x·Aᵀ)·(s·B)ᵀ` for the rows of one
//! adapter. Parsing and validating PEFT files lives in the `adapters` crate; this is only the
//! arithmetic, so that `layers::Linear` stays the single place where projections happen.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};
use crate::layers::dense_matmul;
use crate::weights::Proj;

/// One adapted projection, with the scaling folded into `B`.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// `A`: `[r, in]`.
    a: Tensor,
    /// `scale·B`: `[out, r]`.
    sb: Tensor,
}

impl LoraDelta {
    /// `a`: `[r, in]`, `b`: `[out, r]` (PEFT layout), `y = Wx + scale·B(Ax)`.
    pub fn new(a: &Tensor, b: &Tensor, scale: f64, dtype: DType) -> Result<Self> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != rb {
            return Err(ModelError::InvalidBatch(format!(
                "lora_A rank {r} != lora_B rank {rb}"
            )));
        }
        Ok(Self {
            a: a.to_dtype(dtype)?.contiguous()?,
            sb: (b.to_dtype(DType::F64)? * scale)?
                .to_dtype(dtype)?
                .contiguous()?,
        })
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    pub fn size_in_bytes(&self) -> usize {
        (self.a.elem_count() + self.sb.elem_count()) * self.a.dtype().size_in_bytes()
    }

    /// `x`: `[rows, in]` → the delta `[rows, out]`.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        dense_matmul(&dense_matmul(x, &self.a)?, &self.sb)
    }

    /// `s·B·A` as `[out, in]`: the dense update merging would add to the base weight.
    pub fn merged_update(&self) -> Result<Tensor> {
        Ok(self.sb.matmul(&self.a)?)
    }
}

/// All deltas of one adapter, keyed by layer and projection.
#[derive(Debug, Clone, Default)]
pub struct LoraWeights {
    deltas: HashMap<(usize, Proj), LoraDelta>,
}

impl LoraWeights {
    pub fn new(deltas: HashMap<(usize, Proj), LoraDelta>) -> Self {
        Self { deltas }
    }

    pub fn get(&self, layer: usize, proj: Proj) -> Option<&LoraDelta> {
        self.deltas.get(&(layer, proj))
    }

    pub fn len(&self) -> usize {
        self.deltas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    pub fn max_rank(&self) -> usize {
        self.deltas.values().map(LoraDelta::rank).max().unwrap_or(0)
    }

    pub fn size_in_bytes(&self) -> usize {
        self.deltas.values().map(LoraDelta::size_in_bytes).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&(usize, Proj), &LoraDelta)> {
        self.deltas.iter()
    }
}

/// The rows of one forward pass grouped by adapter (as Punica's SGMV groups them): each adapter's
/// delta is computed once over its own rows and added to those rows only.
pub(crate) struct LoraGroups<'a> {
    groups: Vec<Group<'a>>,
}

struct Group<'a> {
    weights: &'a LoraWeights,
    /// Row indices into the flattened batch.
    rows: Tensor,
    /// All rows of the batch use this adapter: no gather/scatter needed.
    all: bool,
}

impl<'a> LoraGroups<'a> {
    /// `per_seq[i]`: the adapter of sequence `i` and its row count.
    pub fn new(
        per_seq: &[(Option<&'a LoraWeights>, usize)],
        device: &candle_core::Device,
    ) -> Result<Self> {
        let total: usize = per_seq.iter().map(|(_, n)| n).sum();
        let mut order: Vec<(&'a LoraWeights, Vec<u32>)> = Vec::new();
        let mut off = 0u32;
        for &(w, n) in per_seq {
            if let Some(w) = w {
                let rows = off..off + n as u32;
                match order.iter_mut().find(|(x, _)| std::ptr::eq(*x, w)) {
                    Some((_, r)) => r.extend(rows),
                    None => order.push((w, rows.collect())),
                }
            }
            off += n as u32;
        }
        let groups = order
            .into_iter()
            .map(|(weights, rows)| {
                let all = rows.len() == total;
                let n = rows.len();
                Ok(Group {
                    weights,
                    rows: Tensor::from_vec(rows, n, device)?,
                    all,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { groups })
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Adds each adapter's delta for `(layer, proj)` to its rows of `y = base(x)`.
    pub fn apply(&self, layer: usize, proj: Proj, x: &Tensor, mut y: Tensor) -> Result<Tensor> {
        for g in &self.groups {
            let Some(d) = g.weights.get(layer, proj) else {
                continue;
            };
            if g.all {
                y = (y + d.delta(x)?)?;
            } else {
                let delta = d.delta(&x.index_select(&g.rows, 0)?)?;
                y = y.index_add(&g.rows, &delta, 0)?;
            }
        }
        Ok(y)
    }
}
