//! LoRA deltas in the form the forward pass consumes: `y += (x·Aᵀ)·(s·B)ᵀ` for the rows of one
//! adapter. Parsing and validating PEFT files lives in the `adapters` crate; this is only the
//! arithmetic, so that `layers::Linear` stays the single place where projections happen.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};
use crate::host_kernels::{scratch, HostMat};
use crate::lora_q8::Q8Delta;
use crate::matmul::dense_matmul;
use crate::names::Proj;
use crate::q8_block::{quantize_rows, QuantRow};

/// How the CPU holds adapter weights in f32 activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraPrecision {
    /// Exact: what reference comparisons against PEFT need.
    #[default]
    F32,
    /// Half the bytes per decode step (see `host_kernels`); its rounding (2^-11 relative, on a
    /// delta that is itself small next to the base output) is far below the error of quantized
    /// base weights, so quantized bases use it.
    F16,
    /// 8 bits (see `lora_q8`): half f16's bytes again, for bases whose own weights run through
    /// the 8-bit packed kernel. Falls back to f16 for shapes that kernel does not tile and for
    /// ranks so small that padding `A` to 16 rows would take more bytes than f16.
    Q8,
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
    /// f32 activations on the CPU: plain rows for the fused per-row kernel. `a` is `[r, in]`,
    /// `sbt` is `(scale·B)ᵀ` `[r, out]`, so both passes read memory in order.
    Host { a: HostMat, sbt: HostMat },
    /// 8-bit on the CPU, beside a packed 8-bit base.
    Q8(Q8Delta),
    /// Other devices and dtypes: tensors for two matmuls.
    Device { a: Tensor, sb: Tensor },
}

impl LoraDelta {
    /// `a`: `[r, in]`, `b`: `[out, r]` (PEFT layout), `y = Wx + scale·B(Ax)`.
    pub fn new(a: &Tensor, b: &Tensor, scale: f64, dtype: DType) -> Result<Self> {
        let (r, inp) = a.dims2()?;
        let (out, rb) = b.dims2()?;
        if r != rb {
            return Err(ModelError::InvalidBatch(format!(
                "lora_A rank {r} != lora_B rank {rb}"
            )));
        }
        let sb = (b.to_dtype(DType::F64)? * scale)?
            .to_dtype(dtype)?
            .contiguous()?;
        let a = a.to_dtype(dtype)?.contiguous()?;
        let store = if a.device().is_cpu() && dtype == DType::F32 {
            Store::Host {
                a: HostMat::F32(a.flatten_all()?.to_vec1()?),
                sbt: HostMat::F32(sb.t()?.contiguous()?.flatten_all()?.to_vec1()?),
            }
        } else {
            Store::Device { a, sb }
        };
        Ok(Self { r, inp, out, store })
    }

    /// From host buffers: `a` `[r, in]` and `b` `[out, r]` row-major (`dims` = (out, r, in)).
    /// Borrowed, so that the loader can hand over tensors straight from the mapped file; each
    /// store copies or converts only what it keeps.
    pub fn from_host(
        a: &[f32],
        b: &[f32],
        (out, r, inp): (usize, usize, usize),
        scale: f64,
        dtype: DType,
        precision: LoraPrecision,
        device: &candle_core::Device,
    ) -> Result<Self> {
        if a.len() != r * inp || b.len() != out * r {
            return Err(ModelError::InvalidBatch(format!(
                "LoRA buffers do not match [{r}, {inp}] and [{out}, {r}]"
            )));
        }
        if !(device.is_cpu() && dtype == DType::F32) {
            let a = Tensor::from_slice(a, (r, inp), device)?;
            let b = Tensor::from_slice(b, (out, r), device)?;
            return Self::new(&a, &b, scale, dtype);
        }
        let (a, sbt) = match precision {
            LoraPrecision::Q8 if Q8Delta::fits(out, r, inp) => {
                let store = Store::Q8(Q8Delta::new(a, b, (out, r, inp), scale as f32));
                return Ok(Self { r, inp, out, store });
            }
            LoraPrecision::F32 => {
                let mut sbt = vec![0f32; r * out];
                for o in 0..out {
                    for k in 0..r {
                        sbt[k * out + o] = (b[o * r + k] as f64 * scale) as f32;
                    }
                }
                (HostMat::F32(a.to_vec()), HostMat::F32(sbt))
            }
            LoraPrecision::F16 | LoraPrecision::Q8 => (
                HostMat::f16_from(a),
                HostMat::f16_scaled_transposed(b, out, r, scale as f32),
            ),
        };
        Ok(Self {
            r,
            inp,
            out,
            store: Store::Host { a, sbt },
        })
    }

    pub fn rank(&self) -> usize {
        self.r
    }

    pub fn size_in_bytes(&self) -> usize {
        let elems = self.r * (self.inp + self.out);
        match &self.store {
            Store::Host { a, .. } => elems * a.elem_bytes(),
            Store::Q8(q) => q.size_in_bytes(),
            Store::Device { a, .. } => elems * a.dtype().size_in_bytes(),
        }
    }

    fn tensors(&self, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        Ok(match &self.store {
            Store::Host { a, sbt } => (
                Tensor::from_vec(a.to_f32(), (self.r, self.inp), device)?,
                Tensor::from_vec(sbt.to_f32(), (self.r, self.out), device)?
                    .t()?
                    .contiguous()?,
            ),
            Store::Q8(q) => {
                let (a, sbt) = q.to_f32();
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

    /// `x`: `[rows, in]` → the delta `[rows, out]`.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let (a, sb) = self.tensors(x.device())?;
        dense_matmul(&dense_matmul(x, &a)?, &sb)
    }

    /// `s·B·A` as `[out, in]`: the dense update merging would add to the base weight.
    pub fn merged_update(&self) -> Result<Tensor> {
        let (a, sb) = self.tensors(&candle_core::Device::Cpu)?;
        Ok(sb.matmul(&a)?)
    }

    /// Adds this delta to `n` consecutive rows: `out += sBᵀ·(A·x)` (`x`: `n × in`, `out`:
    /// `n × out`). Each row's result depends on that row alone. `q`: the rows already
    /// quantized by the packed base product, if they were.
    pub(crate) fn add_rows(
        &self,
        x: &[f32],
        q: Option<QuantRow<'_>>,
        n: usize,
        out: &mut [f32],
    ) -> bool {
        let (a, sbt) = match &self.store {
            Store::Host { a, sbt } => (a, sbt),
            Store::Q8(d) => return self.quantized(x, q, n, |q| d.add_rows(q, n, out)),
            Store::Device { .. } => return false,
        };
        // Any rank the loader accepted (`--max-lora-rank` has no ceiling of its own): on the
        // stack up to 512, past it on the heap.
        let (mut stack, mut heap) = ([0f32; 512], Vec::new());
        let tmp = scratch(&mut stack, &mut heap, self.r);
        for (x, out) in x.chunks_exact(self.inp).zip(out.chunks_exact_mut(self.out)) {
            a.dot_rows(x, tmp);
            for (k, &t) in tmp.iter().enumerate() {
                sbt.axpy_row(k, t, out);
            }
        }
        true
    }

    /// `f` on `n` rows of activations in 8 bits: `q` when the packed base product already
    /// quantized them, else `x` quantized here.
    fn quantized<R>(
        &self,
        x: &[f32],
        q: Option<QuantRow<'_>>,
        n: usize,
        f: impl FnOnce(QuantRow<'_>) -> R,
    ) -> R {
        match q {
            Some(q) => f(q),
            None => {
                let (xq, dx) = quantize_rows(x, n, self.inp);
                f(QuantRow { xq: &xq, dx: &dx })
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn is_q8(&self) -> bool {
        matches!(self.store, Store::Q8(_))
    }

    fn is_host(&self) -> bool {
        matches!(self.store, Store::Host { .. } | Store::Q8(_))
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
                    rows: Tensor::from_slice(&rows, n, device)?,
                    row_ids: rows,
                    all,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { groups })
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Each row's delta for `(layer, proj)` when every one present is held on the host (the
    /// fused CPU path can add them); `None` otherwise.
    pub(crate) fn host_rows(
        &self,
        layer: usize,
        proj: Proj,
        rows: usize,
    ) -> Option<Vec<Option<&'a LoraDelta>>> {
        let mut per_row = vec![None; rows];
        for g in &self.groups {
            if let Some(d) = g.weights.get(layer, proj) {
                if !d.is_host() {
                    return None;
                }
                for &r in &g.row_ids {
                    *per_row.get_mut(r as usize)? = Some(d);
                }
            }
        }
        Some(per_row)
    }

    /// Adds each adapter's delta for `(layer, proj)` to its rows of `y = base(x)`.
    pub fn apply(&self, layer: usize, proj: Proj, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let deltas: Vec<(&Group<'a>, &LoraDelta)> = self
            .groups
            .iter()
            .filter_map(|g| g.weights.get(layer, proj).map(|d| (g, d)))
            .collect();
        if deltas.is_empty() {
            return Ok(y);
        }
        if x.dtype() == DType::F32 && x.device().is_cpu() {
            if let Some(per_row) = self.host_rows(layer, proj, x.dim(0)?) {
                return Self::apply_host(&per_row, x, y);
            }
        }
        let mut y = y;
        for (g, d) in deltas {
            if g.all {
                y = (y + d.delta(x)?)?;
            } else {
                let delta = d.delta(&x.index_select(&g.rows, 0)?)?;
                y = y.index_add(&g.rows, &delta, 0)?;
            }
        }
        Ok(y)
    }

    /// CPU: one fused pass over the rows (a BGMV), instead of a handful of tensor ops per
    /// adapter and projection, whose fixed costs dominate the tiny low-rank products.
    fn apply_host(per_row: &[Option<&LoraDelta>], x: &Tensor, y: Tensor) -> Result<Tensor> {
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

impl crate::q8_packed::RowDelta for LoraDelta {
    /// [`LoraDelta::add_rows`] into a fresh buffer: `out = sBᵀ·(A·x)`, every value written,
    /// equal bit for bit to adding to zeros. The 8-bit form writes without reading; the others
    /// zero `out` first.
    fn write_rows(
        &self,
        x: &[f32],
        q: Option<QuantRow<'_>>,
        n: usize,
        out: &mut [std::mem::MaybeUninit<f32>],
    ) -> bool {
        if let Store::Q8(d) = &self.store {
            return self.quantized(x, q, n, |q| d.write_rows(q, n, out));
        }
        out.fill(std::mem::MaybeUninit::new(0.0));
        // SAFETY: every value was just initialized; MaybeUninit<f32> has f32's layout.
        let out = unsafe { &mut *(out as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
        self.add_rows(x, q, n, out)
    }
}
