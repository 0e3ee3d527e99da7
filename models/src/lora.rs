//! LoRA deltas in the form the forward pass consumes: `y += (x·Aᵀ)·(s·B)ᵀ` for the rows of one
//! adapter. Parsing and validating PEFT files lives in the `adapters` crate; this is only the
//! arithmetic, so that `layers` stays the single place where projections happen.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::cpu::{HostDelta, LoraPrecision};
use crate::error::{ModelError, Result};
use crate::kernels::Kernels;
use crate::names::Proj;

/// Where and how an adapter's deltas are held: the model's choice (see `Decoder::lora_target`).
#[derive(Debug, Clone, Copy)]
pub struct LoraTarget<'a> {
    pub kernels: Kernels,
    /// The model's activation dtype.
    pub dtype: DType,
    /// How the CPU wing holds them, when it runs the model.
    pub precision: LoraPrecision,
    pub device: &'a Device,
}

/// One adapted projection, with the scaling folded into `B`.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    r: usize,
    inp: usize,
    out: usize,
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    /// The CPU wing, f32 activations: added by the packed pass or a fused per-row pass.
    Host(HostDelta),
    /// candle's kernels (other devices, other dtypes): tensors for two matmuls.
    Device { a: Tensor, sb: Tensor },
}

impl LoraDelta {
    /// From host buffers: `a` `[r, in]` and `b` `[out, r]` row-major (PEFT's layout, `dims` =
    /// (out, r, in)), `y = Wx + scale·B(Ax)`. Borrowed, so that the loader can hand over
    /// tensors straight from the mapped file; each store copies or converts only what it keeps.
    pub fn from_host(
        a: &[f32],
        b: &[f32],
        (out, r, inp): (usize, usize, usize),
        scale: f64,
        target: LoraTarget<'_>,
    ) -> Result<Self> {
        if a.len() != r * inp || b.len() != out * r {
            return Err(ModelError::InvalidBatch(format!(
                "LoRA buffers do not match [{r}, {inp}] and [{out}, {r}]"
            )));
        }
        let store = match target.kernels {
            Kernels::Cpu(caps) if target.dtype == DType::F32 => Store::Host(HostDelta::new(
                caps,
                a,
                b,
                (out, r, inp),
                scale,
                target.precision,
            )),
            _ => {
                let a = Tensor::from_slice(a, (r, inp), target.device)?;
                let b = Tensor::from_slice(b, (out, r), target.device)?;
                let sb = (b.to_dtype(DType::F64)? * scale)?
                    .to_dtype(target.dtype)?
                    .contiguous()?;
                Store::Device {
                    a: a.to_dtype(target.dtype)?.contiguous()?,
                    sb,
                }
            }
        };
        Ok(Self { r, inp, out, store })
    }

    pub fn rank(&self) -> usize {
        self.r
    }

    pub fn size_in_bytes(&self) -> usize {
        match &self.store {
            Store::Host(h) => h.size_in_bytes(),
            Store::Device { a, .. } => self.r * (self.inp + self.out) * a.dtype().size_in_bytes(),
        }
    }

    /// `A` `[r, in]` and `s·B` `[out, r]` as tensors on `device`.
    fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        Ok(match &self.store {
            Store::Host(h) => {
                let (a, sbt) = h.to_f32();
                (
                    Tensor::from_vec(a, (self.r, self.inp), device)?,
                    Tensor::from_vec(sbt, (self.r, self.out), device)?
                        .t()?
                        .contiguous()?,
                )
            }
            Store::Device { a, sb } => (a.clone(), sb.clone()),
        })
    }

    /// `s·B·A` as `[out, in]`: the dense update merging would add to the base weight.
    pub fn merged_update(&self) -> Result<Tensor> {
        let (a, sb) = self.tensors(&Device::Cpu)?;
        Ok(sb.matmul(&a)?)
    }

    /// The host form, when the CPU wing holds this delta.
    pub(crate) fn host(&self) -> Option<&HostDelta> {
        match &self.store {
            Store::Host(h) => Some(h),
            Store::Device { .. } => None,
        }
    }
}

/// All deltas of one adapter, keyed by layer and projection.
///
/// A dense table rather than a map: every pass of a decode step looks up each row's delta,
/// and with 16 adapters hashing those keys cost more than a third as much as the deltas' own
/// arithmetic.
#[derive(Debug, Clone, Default)]
pub struct LoraWeights {
    /// `[layer][projection]`, projections in [`Proj::ADAPTABLE`] order.
    table: Vec<Option<LoraDelta>>,
}

const ADAPTED: [Proj; 7] = Proj::ADAPTABLE;

fn slot(layer: usize, proj: Proj) -> Option<usize> {
    let p = ADAPTED.iter().position(|&a| a == proj)?;
    Some(layer * ADAPTED.len() + p)
}

impl LoraWeights {
    /// Keys naming a norm or an embedding have no delta to hold and are refused by the
    /// adapter loader before this; here they are dropped.
    pub fn new(deltas: HashMap<(usize, Proj), LoraDelta>) -> Self {
        let mut table: Vec<Option<LoraDelta>> = Vec::new();
        for ((layer, proj), d) in deltas {
            if let Some(i) = slot(layer, proj) {
                if table.len() <= i {
                    table.resize(i + 1, None);
                }
                table[i] = Some(d);
            }
        }
        Self { table }
    }

    pub fn get(&self, layer: usize, proj: Proj) -> Option<&LoraDelta> {
        self.table.get(slot(layer, proj)?)?.as_ref()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    pub fn max_rank(&self) -> usize {
        self.iter().map(|(_, d)| d.rank()).max().unwrap_or(0)
    }

    pub fn size_in_bytes(&self) -> usize {
        self.iter().map(|(_, d)| d.size_in_bytes()).sum()
    }

    /// `((layer, projection), delta)` in layer order.
    pub fn iter(&self) -> impl Iterator<Item = ((usize, Proj), &LoraDelta)> {
        self.table.iter().enumerate().filter_map(|(i, d)| {
            let key = (i / ADAPTED.len(), ADAPTED[i % ADAPTED.len()]);
            d.as_ref().map(|d| (key, d))
        })
    }
}

/// The rows of one forward pass grouped by adapter (as Punica's SGMV groups them): each adapter's
/// delta is computed once over its own rows and added to those rows only.
pub(crate) struct LoraGroups<'a> {
    kernels: Kernels,
    groups: Vec<Group<'a>>,
}

struct Group<'a> {
    weights: &'a LoraWeights,
    /// Row indices into the flattened batch.
    rows: Tensor,
    row_ids: Vec<u32>,
    /// All rows of the batch use this adapter: no gather/scatter needed.
    all: bool,
}

impl<'a> LoraGroups<'a> {
    /// `per_seq[i]`: the adapter of sequence `i` and its row count.
    pub fn new(
        per_seq: &[(Option<&'a LoraWeights>, usize)],
        kernels: Kernels,
        device: &Device,
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
                    rows: Tensor::from_slice(&rows, n, device)?,
                    row_ids: rows,
                    all,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { kernels, groups })
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Each row's delta for `(layer, proj)` when every one present is held on the host (the
    /// CPU wing's passes add them); `None` otherwise.
    pub(crate) fn host_rows(
        &self,
        layer: usize,
        proj: Proj,
        rows: usize,
    ) -> Option<Vec<Option<&'a HostDelta>>> {
        let mut per_row = vec![None; rows];
        for g in &self.groups {
            if let Some(d) = g.weights.get(layer, proj) {
                let h = d.host()?;
                for &r in &g.row_ids {
                    *per_row.get_mut(r as usize)? = Some(h);
                }
            }
        }
        Some(per_row)
    }

    /// Adds each adapter's delta for `(layer, proj)` to its rows of `y = base(x)`: on the CPU
    /// wing in one fused pass over the rows, else by candle's ops per adapter.
    pub fn apply(&self, layer: usize, proj: Proj, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let deltas: Vec<(&Group<'a>, &LoraDelta)> = self
            .groups
            .iter()
            .filter_map(|g| g.weights.get(layer, proj).map(|d| (g, d)))
            .collect();
        if deltas.is_empty() {
            return Ok(y);
        }
        if let (Kernels::Cpu(_), DType::F32) = (self.kernels, x.dtype()) {
            if let Some(per_row) = self.host_rows(layer, proj, x.dim(0)?) {
                return Self::apply_host(&per_row, x, y);
            }
        }
        let mut y = y;
        for (g, d) in deltas {
            let (a, sb) = d.tensors(x.device())?;
            y = crate::candle_ops::add_lora(y, x, (!g.all).then_some(&g.rows), &a, &sb)?;
        }
        Ok(y)
    }

    /// CPU: one fused pass over the rows (a BGMV), instead of a handful of tensor ops per
    /// adapter and projection, whose fixed costs dominate the tiny low-rank products.
    fn apply_host(per_row: &[Option<&HostDelta>], x: &Tensor, y: Tensor) -> Result<Tensor> {
        use rayon::prelude::*;
        let (rows, inp) = x.dims2()?;
        let out = y.dim(1)?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        // The deltas go straight into a copy of `y`: no zeroed delta buffer and no tensor add
        // (each a pass and, for the add, one more thread-pool round trip per projection).
        let mut ys: Vec<f32> = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let per_task = rows.div_ceil(rayon::current_num_threads().max(1));
        let ok = ys
            .par_chunks_mut(out)
            .with_min_len(per_task)
            .enumerate()
            .all(|(r, o)| {
                per_row[r].is_none_or(|d| d.add_rows(&xs[r * inp..(r + 1) * inp], None, 1, o))
            });
        if !ok {
            return Err(crate::error::host_delta_failed());
        }
        Ok(Tensor::from_vec(ys, (rows, out), x.device())?)
    }
}
