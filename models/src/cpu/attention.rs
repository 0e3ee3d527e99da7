//! Attention on the CPU wing: each new token of each sequence attends causally over that
//! sequence's cache in place. Replaces a dozen tensor ops per sequence and layer (whose fixed
//! costs dominate at one query row) with one parallel pass over every row of the step, and
//! keeps the whole CPU path on this wing's kernels: every tier computes the same bits, on any
//! CPU (candle's matmuls choose their kernels by the CPU they run on). Each output depends
//! only on its own sequence, so batching cannot change it.

use candle_core::{Storage, Tensor};
use rayon::prelude::*;

use super::slices::{dot, f32_values, scratch};
use super::Caps;
use crate::error::{ModelError, Result};

/// One sequence's share of a step: the first of its `t` rows in `q`, and its cache views
/// `[nkv, len, hd]` (`len` = its position before the step + `t`).
pub(crate) struct AttnJob {
    pub row: usize,
    pub t: usize,
    pub k: Tensor,
    pub v: Tensor,
}

/// What a family changes in attention: the factor of `q·k` (`1/√head_dim`, or Gemma's
/// `1/√query_pre_attn_scalar`), and a sliding window (a query sees its own position and the
/// `window − 1` before it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AttnParams {
    pub scale: f64,
    pub window: Option<usize>,
}

#[cfg(test)]
impl AttnParams {
    /// Plain causal attention over a head of `hd` dims.
    pub fn causal(hd: usize) -> Self {
        Self {
            scale: 1.0 / (hd as f64).sqrt(),
            window: None,
        }
    }
}

/// Reads `[nkv, len, hd]` views of contiguous `[nkv, cap, hd]` f32 buffers.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    head_stride: usize,
    len: usize,
}

impl View<'_> {
    /// Rows `lo..lo + n` of KV head `g`, one after another.
    fn rows(&self, g: usize, lo: usize, n: usize, hd: usize) -> &[f32] {
        let o = self.start + g * self.head_stride + lo * hd;
        &self.data[o..o + n * hd]
    }
}

/// `out[j] = dot(q, k_j) · scale` for each row `k_j` of `k` (`[out.len(), q.len()]`), the dot
/// products in `slices::dot`'s order: one query head's scores.
pub(super) fn scores_ref(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
    assert!(!q.is_empty() && k.len() == out.len() * q.len());
    for (o, kr) in out.iter_mut().zip(k.chunks_exact(q.len())) {
        *o = dot(q, kr) * scale;
    }
}

/// `out[d] += p[j] · v_j[d]` for each row `v_j` of `v` (`[p.len(), out.len()]`) in order, each
/// term a product then a sum (not fused): one query head's weighted values.
pub(super) fn wsum_ref(p: &[f32], v: &[f32], out: &mut [f32]) {
    assert!(!out.is_empty() && v.len() == p.len() * out.len());
    for (&w, vr) in p.iter().zip(v.chunks_exact(out.len())) {
        for (o, &x) in out.iter_mut().zip(vr) {
            *o += w * x;
        }
    }
}

fn view<'a>(s: &'a Storage, l: &candle_core::Layout) -> Result<View<'a>> {
    let Storage::Cpu(c) = s else {
        return Err(ModelError::InvalidBatch(
            "CPU decode attention on a non-CPU cache".into(),
        ));
    };
    Ok(View {
        data: c.as_slice::<f32>()?,
        start: l.start_offset(),
        head_stride: l.stride()[0],
        len: l.dims()[1],
    })
}

/// `q`: `[rows, nh, hd]` (all rows of the step); returns one `[t, nh·hd]` output per job.
pub(crate) fn attention(
    caps: Caps,
    q: &Tensor,
    jobs: &[AttnJob],
    (nh, nkv, hd): (usize, usize, usize),
    params: AttnParams,
) -> Result<Vec<Tensor>> {
    let qv = f32_values(q)?;
    let guards: Vec<_> = jobs
        .iter()
        .map(|j| (j.k.storage_and_layout(), j.v.storage_and_layout()))
        .collect();
    let mut views = Vec::with_capacity(jobs.len());
    for ((ks, kl), (vs, vl)) in &guards {
        views.push((view(ks, kl)?, view(vs, vl)?));
    }
    // (job, row within it) of each output row, in job order.
    let rows: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(s, j)| (0..j.t).map(move |i| (s, i)))
        .collect();
    if let Some((s, _)) = jobs.iter().enumerate().find(|(s, j)| views[*s].0.len < j.t) {
        return Err(ModelError::InvalidBatch(format!(
            "attention job {s}: a cache shorter than its new rows"
        )));
    }
    let groups = nh / nkv;
    let scale = params.scale as f32;
    let mut out = vec![0f32; rows.len() * nh * hd];
    // One task per output row and KV head, for the `groups` query heads sharing it: each key
    // and value row is loaded once for all of them.
    out.par_chunks_mut(groups * hd)
        .enumerate()
        .for_each(|(idx, o)| {
            let ((s, i), g) = (rows[idx / nkv], idx % nkv);
            let (k, v) = &views[s];
            // Causal: row i sits at position end - 1 = len - t + i and sees keys up to it, or
            // with a window only the last `window` of them.
            let end = k.len - jobs[s].t + i + 1;
            let lo = params.window.map_or(0, |w| end.saturating_sub(w));
            let len = end - lo;
            let q0 = ((jobs[s].row + i) * nh + g * groups) * hd;
            let qs = &qv[q0..q0 + groups * hd];
            // Scores of every head of the group, on the stack for contexts up to 1024 at 4
            // heads per KV head (the decode step allocated a buffer per head and layer).
            let (mut stack, mut heap) = ([0f32; 4096], Vec::new());
            let scores = scratch(&mut stack, &mut heap, groups * len);
            let (kr, vr) = (k.rows(g, lo, len, hd), v.rows(g, lo, len, hd));
            for (q, w) in qs.chunks_exact(hd).zip(scores.chunks_exact_mut(len)) {
                caps.attn_scores(q, kr, scale, w);
            }
            for w in scores.chunks_exact_mut(len) {
                let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum = caps.exp_shifted(w, max);
                for p in w.iter_mut() {
                    *p /= sum;
                }
            }
            for (w, oh) in scores.chunks_exact(len).zip(o.chunks_exact_mut(hd)) {
                caps.attn_wsum(w, vr, oh);
            }
        });
    drop(views);
    drop(guards);
    let dev = q.device();
    let mut at = 0;
    jobs.iter()
        .map(|j| {
            let rows = &out[at * nh * hd..(at + j.t) * nh * hd];
            at += j.t;
            Ok(Tensor::from_slice(rows, (j.t, nh * hd), dev)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn val(i: usize, salt: usize) -> f32 {
        (((i * 2654435761 + salt) % 2001) as f32 / 1000.0) - 1.0
    }

    /// Each head on its own: scores, softmax, weighted values, in f64.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        end: usize,
        hd: usize,
        p: AttnParams,
    ) -> Vec<f64> {
        let lo = p.window.map_or(0, |w| end.saturating_sub(w));
        let s: Vec<f64> = (lo..end)
            .map(|j| {
                let kr = &k[j * hd..(j + 1) * hd];
                q.iter()
                    .zip(kr)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * p.scale
            })
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..hd)
            .map(|d| {
                (0..e.len())
                    .map(|j| e[j] / sum * v[(lo + j) * hd + d] as f64)
                    .sum()
            })
            .collect()
    }

    /// Values of every size class, with zeros, NaN and ±Inf at a few places when `edges`.
    fn values(n: usize, salt: usize, edges: bool) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n).map(|i| val(i, salt) * 3.0).collect();
        if edges && n > 8 {
            v[n / 3] = f32::NAN;
            v[n / 2] = f32::INFINITY;
            v[n - 1] = f32::NEG_INFINITY;
            v[1] = 0.0;
            v[2] = -0.0;
            v[3] = 1e-30;
        }
        v
    }

    #[test]
    fn score_and_weighted_sum_kernels_equal_their_references_bit_for_bit() {
        // Head widths whole in 16 and not, tails of keys past each 8, a key run of none.
        for hd in [16usize, 24, 64, 72, 136, 256] {
            for n in [0usize, 1, 7, 8, 9, 17, 100] {
                for edges in [false, true] {
                    let (q, k) = (values(hd, 1, edges), values(n * hd, 2, edges));
                    let (p, v) = (values(n, 3, edges), values(n * hd, 4, edges));
                    let init = values(hd, 5, false);
                    let mut want_s = vec![0f32; n];
                    scores_ref(&q, &k, 0.125, &mut want_s);
                    let mut want_o = init.clone();
                    wsum_ref(&p, &v, &mut want_o);
                    for tier in super::super::Tier::available() {
                        let caps = Caps::new(tier).unwrap();
                        let mut s = vec![0f32; n];
                        caps.attn_scores(&q, &k, 0.125, &mut s);
                        let mut o = init.clone();
                        caps.attn_wsum(&p, &v, &mut o);
                        // A NaN's sign and payload out of a fused multiply-add depend on which
                        // operand the compiler's instruction form names first: NaN is held to
                        // NaN, every other value bit for bit.
                        let bits = |x: &[f32]| {
                            x.iter()
                                .map(|f| if f.is_nan() { u32::MAX } else { f.to_bits() })
                                .collect::<Vec<_>>()
                        };
                        assert_eq!(bits(&s), bits(&want_s), "{tier} scores hd {hd} n {n}");
                        assert_eq!(bits(&o), bits(&want_o), "{tier} wsum hd {hd} n {n}");
                    }
                }
            }
        }
        // The reference is each key's `slices::dot`, and values in order.
        let (q, k) = (values(16, 1, false), values(32, 2, false));
        let mut s = [0f32; 2];
        scores_ref(&q, &k, 0.5, &mut s);
        assert_eq!(s[1], dot(&q, &k[16..]) * 0.5);
    }

    #[test]
    fn grouped_heads_match_each_head_alone_on_every_tier() {
        check_against_reference(AttnParams::causal(16));
        // Gemma's knobs: another scale, and a window shorter than the prefill.
        check_against_reference(AttnParams {
            scale: 1.0 / 12f64.sqrt(),
            window: Some(7),
        });
    }

    fn check_against_reference(params: AttnParams) {
        // 6 query heads on 2 KV heads; a decode at context 1, three prefill rows ending at 17,
        // a decode at 2100 (past the stack scratch).
        let (nh, nkv, hd, cap) = (6, 2, 16, 2200);
        let shapes = [(1usize, 1usize), (17, 3), (2100, 1)];
        let rows: usize = shapes.iter().map(|(_, t)| t).sum();
        let q: Vec<f32> = (0..rows * nh * hd).map(|i| val(i, 1)).collect();
        let qt = Tensor::from_slice(&q, (rows, nh, hd), &Device::Cpu).unwrap();
        let caches: Vec<(Vec<f32>, Vec<f32>)> = (0..shapes.len())
            .map(|s| {
                let k = (0..nkv * cap * hd).map(|i| val(i, 10 + s)).collect();
                let v = (0..nkv * cap * hd).map(|i| val(i, 20 + s)).collect();
                (k, v)
            })
            .collect();
        let mut row = 0;
        let jobs: Vec<AttnJob> = caches
            .iter()
            .zip(shapes)
            .map(|((k, v), (len, t))| {
                let view = |m: &Vec<f32>| {
                    Tensor::from_slice(m, (nkv, cap, hd), &Device::Cpu)
                        .unwrap()
                        .narrow(1, 0, len)
                        .unwrap()
                };
                row += t;
                AttnJob {
                    row: row - t,
                    t,
                    k: view(k),
                    v: view(v),
                }
            })
            .collect();
        let bits = |v: &[Tensor]| -> Vec<Vec<u32>> {
            v.iter()
                .map(|t| {
                    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                    v.iter().map(|f| f.to_bits()).collect()
                })
                .collect()
        };
        let got = attention(Caps::portable(), &qt, &jobs, (nh, nkv, hd), params).unwrap();
        for tier in super::super::Tier::available() {
            let caps = Caps::new(tier).unwrap();
            let other = attention(caps, &qt, &jobs, (nh, nkv, hd), params).unwrap();
            assert_eq!(bits(&other), bits(&got), "{tier}");
        }
        for (s, (out, (len, t))) in got.iter().zip(shapes).enumerate() {
            let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
            let (k, v) = &caches[s];
            for i in 0..t {
                for h in 0..nh {
                    let g = h / (nh / nkv);
                    let r = jobs[s].row + i;
                    let qh = &q[(r * nh + h) * hd..(r * nh + h + 1) * hd];
                    let (kg, vg) = (&k[g * cap * hd..], &v[g * cap * hd..]);
                    let want = reference(qh, kg, vg, len - t + i + 1, hd, params);
                    for (d, w) in want.iter().enumerate() {
                        let o = out[(i * nh + h) * hd + d] as f64;
                        assert!((o - w).abs() < 1e-5, "seq {s} row {i} head {h}: {o} vs {w}");
                    }
                }
            }
        }
    }
}
