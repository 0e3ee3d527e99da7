//! LoRA deltas held in 8 bits, for bases whose weights run through [`PackedQ8`].
//!
//! Why: with a different adapter on every row nothing is shared between rows, so a decode step
//! streams every row's whole adapter (16 rows × r=16 on all projections of SmolLM2: 157 MB in
//! f16 against 181 MB for the base). That traffic, not arithmetic, is what such a step pays
//! for the adapters; 8 bits halve it.
//!
//! `A` is an ordinary [`PackedQ8`] (its rows padded to a tile of 16), so the down-projection
//! reuses the activations the base product already quantized and the same `vpdpbusd` kernel.
//! `(s·B)ᵀ` is stored in 8 bits with one scale per rank row, in tiles of 16 outputs × r so
//! that the up-projection reads one stream and loads and stores each output once.
//!
//! Rounding: 8-bit activations and weights as in Q8_0, on a delta that is itself small next to
//! the base output — the base's own Q8_0 rounding is of the same order.

use crate::q8_block::QuantRow;
use crate::q8_packed::{PackedQ8, TILE};

/// `r` rounded up to whole tiles: the rows `A` is packed with.
fn padded(r: usize) -> usize {
    r.div_ceil(TILE) * TILE
}

/// `y += (s·B)·(A·x)` in 8 bits, for runs of up to 4 rows.
#[derive(Debug, Clone)]
pub(crate) struct Q8Delta {
    r: usize,
    out: usize,
    /// `[ceil(r/16)·16, in]`; rows past `r` are zero.
    a: std::sync::Arc<PackedQ8>,
    /// `[out/16][r][16]`: `round(sBᵀ[k][o] / scale[k])`.
    sbt: Vec<i8>,
    scale: Vec<f32>,
}

impl Q8Delta {
    /// Whether [`Q8Delta::new`] can hold a delta of this shape on this CPU, in fewer bytes
    /// than f16 (`A`'s rows are padded to 16: at rank 4 the 8-bit form would be the larger).
    pub(crate) fn fits(out: usize, r: usize, inp: usize) -> bool {
        let bytes = padded(r) * inp * 36 / 32 + r * (out + 4);
        PackedQ8::supported()
            && r > 0
            && out.is_multiple_of(TILE)
            && PackedQ8::tiles_input(inp)
            && bytes < 2 * r * (inp + out)
    }

    /// `a` `[r, in]`, `b` `[out, r]` row-major; only when [`Q8Delta::fits`].
    pub(crate) fn new(a: &[f32], b: &[f32], (out, r, inp): (usize, usize, usize), s: f32) -> Self {
        assert!(Self::fits(out, r, inp) && a.len() == r * inp && b.len() == out * r);
        let a = if padded(r) == r {
            PackedQ8::from_dense(a, r, inp)
        } else {
            let mut ap = a.to_vec();
            ap.resize(padded(r) * inp, 0.0);
            PackedQ8::from_dense(&ap, padded(r), inp)
        }
        .expect("fits() checked the shape");
        let mut amax = vec![0f32; r];
        for row in b.chunks_exact(r) {
            for (m, v) in amax.iter_mut().zip(row) {
                // Finite values (checked on load): a plain compare, which vectorizes.
                if v.abs() > *m {
                    *m = v.abs();
                }
            }
        }
        let scale: Vec<f32> = amax.iter().map(|m| m * s.abs() / 127.0).collect();
        let ids: Vec<f32> = scale
            .iter()
            .map(|&sc| if sc > 0.0 { s / sc } else { 0.0 })
            .collect();
        let mut sbt = vec![0i8; out * r];
        // SAFETY: AVX-512 present wherever `fits` holds; `b` is `[out, r]` with `out % 16 == 0`.
        unsafe { x86::quantize_transposed(b, &ids, &mut sbt) };
        Self {
            r,
            out,
            a: std::sync::Arc::new(a),
            sbt,
            scale,
        }
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        self.a.size_in_bytes() + self.sbt.len() + 4 * self.scale.len()
    }

    /// `A` `[r, in]` and `(s·B)ᵀ` `[r, out]` in f32, as the kernel multiplies by them.
    pub(crate) fn to_f32(&self) -> (Vec<f32>, Vec<f32>) {
        let (_, inp) = self.a.dims();
        let mut a = self.a.dense_rows();
        a.truncate(self.r * inp);
        let mut sbt = vec![0f32; self.r * self.out];
        for (i, &q) in self.sbt.iter().enumerate() {
            let (t, k, lane) = (i / (self.r * TILE), (i / TILE) % self.r, i % TILE);
            sbt[k * self.out + t * TILE + lane] = q as f32 * self.scale[k];
        }
        (a, sbt)
    }

    /// `out += (s·B)·(A·x)` for `n` (1 to 4) consecutive rows (`out`: `n × out`) whose
    /// activations `q` were quantized by [`crate::q8_block::quantize_rows`]. The weights are
    /// loaded once for all `n`; each row's result is the same as alone.
    pub(crate) fn add_rows(&self, q: QuantRow<'_>, n: usize, out: &mut [f32]) -> bool {
        let padded = padded(self.r);
        if !(1..=4).contains(&n) || out.len() != n * self.out {
            return false;
        }
        // On the stack up to rank 64 for runs of 4: this runs per row and projection, and
        // zeroing a buffer sized for the largest rank (512) cost more than the product at r=16.
        let (mut stack, mut heap) = ([0f32; 256], Vec::new());
        let h = if n * padded <= stack.len() {
            &mut stack[..n * padded]
        } else {
            heap.resize(n * padded, 0.0);
            &mut heap[..]
        };
        self.a.rows(q, n, h);
        for row in h.chunks_exact_mut(padded) {
            for (v, s) in row.iter_mut().zip(&self.scale) {
                *v *= s;
            }
        }
        // SAFETY: a Q8Delta exists only where `fits` saw AVX-512 (VNNI implies F); `sbt` holds
        // `out/16` tiles of `r × 16`, `h` `n` rows of `padded ≥ r` values.
        unsafe {
            match n {
                4 => x86::up::<4>(&self.sbt, h, padded, self.r, out),
                3 => x86::up::<3>(&self.sbt, h, padded, self.r, out),
                2 => x86::up::<2>(&self.sbt, h, padded, self.r, out),
                _ => x86::up::<1>(&self.sbt, h, padded, self.r, out),
            }
        }
        true
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub(super) unsafe fn quantize_transposed(_: &[f32], _: &[f32], _: &mut [i8]) {
        unreachable!("Q8Delta::fits is false off x86_64")
    }

    pub(super) unsafe fn up<const N: usize>(
        _: &[i8],
        _: &[f32],
        _: usize,
        _: usize,
        _: &mut [f32],
    ) {
        unreachable!("Q8Delta::fits is false off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::TILE;

    /// `q[t][k][lane] = round(b[t·16 + lane][k] · ids[k])` (ties to even, ±127), for `b`
    /// `[out, r]` row-major: one gather of 16 outputs per (tile, k), so every store is whole.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_transposed(b: &[f32], ids: &[f32], q: &mut [i8]) {
        let r = ids.len();
        let tiles = b.len() / (r * TILE);
        assert!(q.len() >= tiles * r * TILE && r * TILE < i32::MAX as usize / 4);
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(r as i32),
        );
        for t in 0..tiles {
            for (k, &id) in ids.iter().enumerate() {
                let v = _mm512_i32gather_ps::<4>(idx, b.as_ptr().add(t * TILE * r + k));
                let v = crate::q8_block::x86::round(_mm512_mul_ps(v, _mm512_set1_ps(id)));
                _mm_storeu_si128(
                    q.as_mut_ptr().add((t * r + k) * TILE) as *mut __m128i,
                    _mm512_cvtepi32_epi8(v),
                );
            }
        }
    }

    /// For each of `N` rows `j` (`h` row `j` at `j·h_stride`, `out` rows of `out.len()/N`):
    /// `out[t·16 + lane] += Σ_k h[k] · q[t][k][lane]`, `k < r`. Each output is loaded and stored
    /// once, each weight loaded once for all rows; two independent chains over `k`, in the same
    /// order for every `N`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn up<const N: usize>(
        q: &[i8],
        h: &[f32],
        h_stride: usize,
        r: usize,
        out: &mut [f32],
    ) {
        let width = out.len() / N;
        let tiles = width / TILE;
        debug_assert!(out.len() == N * tiles * TILE && q.len() >= tiles * r * TILE);
        debug_assert!(h.len() >= (N - 1) * h_stride + r);
        let (hp, op) = (h.as_ptr(), out.as_mut_ptr());
        for t in 0..tiles {
            let w = q.as_ptr().add(t * r * TILE);
            let load = |k: usize| {
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    w.add(k * TILE) as *const __m128i
                )))
            };
            let hk = |j: usize, k: usize| _mm512_set1_ps(*hp.add(j * h_stride + k));
            let mut a0 = [_mm512_setzero_ps(); N];
            let mut a1 = [_mm512_setzero_ps(); N];
            for (j, a) in a0.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(op.add(j * width + t * TILE));
            }
            let mut k = 0;
            while k + 2 <= r {
                let (w0, w1) = (load(k), load(k + 1));
                for j in 0..N {
                    a0[j] = _mm512_fmadd_ps(hk(j, k), w0, a0[j]);
                    a1[j] = _mm512_fmadd_ps(hk(j, k + 1), w1, a1[j]);
                }
                k += 2;
            }
            if k < r {
                let w0 = load(k);
                for (j, a) in a0.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(hk(j, k), w0, *a);
                }
            }
            for j in 0..N {
                _mm512_storeu_ps(op.add(j * width + t * TILE), _mm512_add_ps(a0[j], a1[j]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8_block::quantize_rows;

    fn val(i: usize, salt: usize) -> f32 {
        (((i * 2654435761 + salt) % 2001) as f32 / 1000.0) - 1.0
    }

    #[test]
    fn eight_bits_only_where_smaller_than_f16() {
        if !PackedQ8::supported() {
            return;
        }
        assert!(Q8Delta::fits(48, 12, 64) && !Q8Delta::fits(49, 12, 64));
        assert!(!Q8Delta::fits(48, 12, 65) && !Q8Delta::fits(48, 0, 64));
        // Rank 4 pads `A` to 16 rows: more bytes than f16.
        assert!(!Q8Delta::fits(48, 4, 64));
    }

    #[test]
    fn eight_bit_delta_is_close_to_the_f32_one() {
        if !PackedQ8::supported() {
            eprintln!("no AVX-512 VNNI: adapters stay in f16 on this CPU");
            return;
        }
        // Rank 12 pads `A`; rank 80 with runs of 4 takes the heap scratch; a negative scale.
        for (r, s) in [(12, 0.5f32), (80, -2.0)] {
            check(48, r, 64, s);
        }
    }

    fn check(out: usize, r: usize, inp: usize, s: f32) {
        let a: Vec<f32> = (0..r * inp).map(|i| val(i, 1)).collect();
        let mut b: Vec<f32> = (0..out * r).map(|i| val(i, 7)).collect();
        for o in 0..out {
            b[o * r + 1] = 0.0; // an all-zero rank row: scale 0
        }
        let x: Vec<f32> = (0..inp).map(|i| val(i, 3)).collect();
        let d = Q8Delta::new(&a, &b, (out, r, inp), s);
        let (xq, dx) = quantize_rows(&x, 1, inp);
        let mut got = vec![1f32; out];
        assert!(d.add_rows(QuantRow { xq: &xq, dx: &dx }, 1, &mut got));
        let h: Vec<f32> = (0..r)
            .map(|k| (0..inp).map(|i| a[k * inp + i] * x[i]).sum())
            .collect();
        let scale: f32 = (0..out)
            .map(|o| (0..r).map(|k| (s * b[o * r + k] * h[k]).abs()).sum::<f32>())
            .fold(0.0, f32::max);
        for (o, g) in got.iter().enumerate() {
            let want = 1.0 + (0..r).map(|k| s * b[o * r + k] * h[k]).sum::<f32>();
            // Three 8-bit roundings (x, A, B), each ≤ 1/254 of its block's largest magnitude.
            assert!((g - want).abs() <= 0.03 * scale, "{o}: {g} vs {want}");
        }
        // What `to_f32` reports is what the kernel multiplies by: with the activations as the
        // kernel rounded them, the product matches to f32 rounding.
        let (af, sbtf) = d.to_f32();
        assert_eq!((af.len(), sbtf.len()), (r * inp, r * out));
        let xh: Vec<f32> = (0..inp)
            .map(|i| (xq[i] as f32 - 128.0) * dx[i / 32])
            .collect();
        let hh: Vec<f32> = (0..r)
            .map(|k| (0..inp).map(|i| af[k * inp + i] * xh[i]).sum())
            .collect();
        for (o, g) in got.iter().enumerate() {
            let want = 1.0 + (0..r).map(|k| sbtf[k * out + o] * hh[k]).sum::<f32>();
            assert!((g - want).abs() <= 1e-4 * scale, "{o}: {g} vs {want}");
        }
        for (k, row) in sbtf.chunks_exact(out).enumerate() {
            for (o, v) in row.iter().enumerate() {
                assert!((v - s * b[o * r + k]).abs() <= s.abs() / 127.0);
            }
        }
        // Rows run together give each row's result alone, bit for bit.
        for n in 2..=4 {
            let xs: Vec<f32> = (0..n * inp).map(|i| val(i, 11)).collect();
            let (xq, dx) = quantize_rows(&xs, n, inp);
            let mut together = vec![0.5f32; n * out];
            assert!(d.add_rows(QuantRow { xq: &xq, dx: &dx }, n, &mut together));
            for j in 0..n {
                let (xq, dx) = quantize_rows(&xs[j * inp..(j + 1) * inp], 1, inp);
                let mut alone = vec![0.5f32; out];
                assert!(d.add_rows(QuantRow { xq: &xq, dx: &dx }, 1, &mut alone));
                assert_eq!(alone, together[j * out..(j + 1) * out], "row {j} of {n}");
            }
        }
    }
}
