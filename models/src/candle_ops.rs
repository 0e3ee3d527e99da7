//! The generic path: the model's arithmetic as candle's ops, on whatever device holds the
//! tensors. Every GPU runs this, and so does `--cpu-kernels candle` on the CPU, which is how
//! the tests reach it without a GPU.
//!
//! Why a module of its own: this is where device-specific batched kernels plug in later (a
//! CUDA SGMV/BGMV for the per-row deltas, flash attention) without touching the model file.
//! Nothing here knows about the CPU wing's rules: no gemm padding, no host-held deltas.

use candle_core::{DType, Device, Tensor};

use crate::cpu::AttnParams;
use crate::error::Result;

/// `x · wᵀ` for `x` `[rows, in]` and `w` `[out, in]`.
pub(crate) fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?)
}

/// `y` with one adapter's delta `(x·Aᵀ)·(sB)ᵀ` added to its rows: all of them, or those
/// listed in `rows` (gathered, multiplied, and scattered back by `index_add`, the way Punica's
/// SGMV groups rows per adapter).
pub(crate) fn add_lora(
    y: Tensor,
    x: &Tensor,
    rows: Option<&Tensor>,
    a: &Tensor,
    sb: &Tensor,
) -> Result<Tensor> {
    let delta = |x: &Tensor| -> Result<Tensor> { matmul(&matmul(x, a)?, sb) };
    Ok(match rows {
        None => (y + delta(x)?)?,
        Some(rows) => {
            let d = delta(&x.index_select(rows, 0)?)?;
            y.index_add(rows, &d, 0)?
        }
    })
}

/// The additive mask of `t` new positions starting at `start`, over `start + t` keys: causal,
/// and with a sliding `window` only the last `window` positions (the query's own included),
/// as transformers' and llama.cpp's sliding layers see them. `None` when nothing is masked (a
/// single new token that sees every key). Built once per sequence, window and step, then
/// shared by every layer with that window.
pub(crate) fn causal_mask(
    t: usize,
    start: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let len = start + t;
    if t == 1 && window.is_none_or(|w| len <= w) {
        return Ok(None);
    }
    let visible = |i: usize, j: usize| j <= start + i && window.is_none_or(|w| j + w > start + i);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..len).map(move |j| {
                if visible(i, j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Some(
        Tensor::from_vec(mask, (t, len), device)?.to_dtype(dtype)?,
    ))
}

/// Attention of one sequence: `q` `[nh, t, hd]` against the cached `k`, `v` `[nkv, len, hd]`,
/// with `mask` (from [`causal_mask`]) where anything is masked. Query heads sharing a KV head
/// are folded into the row dimension, so GQA needs no copy of K/V. Returns `[t, nh·hd]`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    params: AttnParams,
) -> Result<Tensor> {
    let (nh, t, hd) = q.dims3()?;
    let (nkv, len) = (k.dim(0)?, k.dim(1)?);
    let groups = nh / nkv;
    let q = q.reshape((nkv, groups * t, hd))?;
    let mut scores = (q.matmul(&k.t()?)? * params.scale)?;
    if let Some(mask) = mask {
        scores = scores
            .reshape((nkv, groups, t, len))?
            .broadcast_add(mask)?
            .reshape((nkv, groups * t, len))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v.contiguous()?)?; // [nkv, groups*t, hd]
    Ok(out
        .reshape((nh, t, hd))?
        .transpose(0, 1)?
        .reshape((t, nh * hd))?)
}

/// `gelu_tanh(gate) · up` (GeGLU).
pub(crate) fn gelu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.gelu()? * up)?)
}

/// `silu(gate) · up`.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(gate)? * up)?)
}
