//! LoRA deltas held in 8 bits, for bases whose weights run through [`Packed`].
//!
//! Why: with a different adapter on every row nothing is shared between rows, so a decode step
//! streams every row's whole adapter (16 rows × r=16 on all projections of SmolLM2: 157 MB in
//! f16 against 181 MB for the base). That traffic, not arithmetic, is what such a step pays
//! for the adapters; 8 bits halve it.
//!
//! `A` is an ordinary [`Packed`] (its rows padded to a tile of 16), so the down-projection
//! reuses the activations the base product already quantized and the same tile kernel.
//! `(s·B)ᵀ` is stored in 8 bits with one scale per rank row, in tiles of 16 outputs × r laid
//! out for `vpdpbusd` (4 ranks per 32-bit lane): the rank-r intermediate `h = A·x`, times the
//! rank scales, is itself rounded to 8 bits (one scale per row), so the up-projection is 4
//! instructions per 16 outputs at r=16 where widening each weight to f32 took 48 — with
//! 16 rows on 16 adapters that arithmetic was half of the adapters' cost.
//!
//! Rounding: 8-bit activations, intermediate and weights as in Q8_0, on a delta that is itself
//! small next to the base output — the base's own Q8_0 rounding is of the same order.

use super::block::QuantRow;
use super::packed::Packed;
use super::slices::scratch;
use super::{Caps, TILE};

/// `r` rounded up to whole tiles: the rows `A` is packed with.
fn padded(r: usize) -> usize {
    r.div_ceil(TILE) * TILE
}

/// `r` rounded up to the 4 ranks one 32-bit lane of `vpdpbusd` sums.
fn quads(r: usize) -> usize {
    r.div_ceil(4) * 4
}

/// `h` (a row's `A·x`, times the rank scales) rounded to 8 bits with one scale: `(q, d)` with
/// `h[k] ≈ q[k]·d`, ties to even; `q` past `h.len()` is left as is.
fn round_intermediate(h: &[f32], q: &mut [i8]) -> f32 {
    let amax = h.iter().fold(0f32, |m, v| m.max(v.abs()));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in q.iter_mut().zip(h) {
        *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

/// `y += (s·B)·(A·x)` in 8 bits, for runs of up to 4 rows.
#[derive(Debug, Clone)]
pub(crate) struct Q8Delta {
    r: usize,
    out: usize,
    /// `[ceil(r/16)·16, in]`; rows past `r` are zero. Held inline, not behind a pointer: a
    /// delta's first use in a step already waits on memory for its own struct and then its
    /// streams, and a third hop between them was another full wait per row and projection.
    a: Packed,
    /// `[out/16][r4/4][16][4]` (`r4`: `r` rounded up to 4): `round(sBᵀ[k][o] / scale[k]) + 128`,
    /// unsigned as `vpdpbusd` takes its first operand; ranks past `r` hold 128 (zero).
    sbt: Vec<u8>,
    /// `r4` values; 0 past `r`.
    scale: Vec<f32>,
}

impl Q8Delta {
    /// Whether [`Q8Delta::new`] can hold a delta of this shape, in fewer bytes than f16 (`A`'s
    /// rows are padded to 16: at rank 4 the 8-bit form would be the larger).
    pub(crate) fn fits(out: usize, r: usize, inp: usize) -> bool {
        let bytes = padded(r) * inp * 36 / 32 + quads(r) * (out + 4);
        r > 0 && out.is_multiple_of(TILE) && Packed::tiles_input(inp) && bytes < 2 * r * (inp + out)
    }

    /// `a` `[r, in]`, `b` `[out, r]` row-major; only when [`Q8Delta::fits`].
    pub(crate) fn new(
        caps: Caps,
        a: &[f32],
        b: &[f32],
        (out, r, inp): (usize, usize, usize),
        s: f32,
    ) -> Self {
        assert!(Self::fits(out, r, inp) && a.len() == r * inp && b.len() == out * r);
        let a = if padded(r) == r {
            Packed::from_dense(caps, a, r, inp)
        } else {
            let mut ap = a.to_vec();
            ap.resize(padded(r) * inp, 0.0);
            Packed::from_dense(caps, &ap, padded(r), inp)
        }
        .expect("fits() checked the shape");
        let r4 = quads(r);
        // Ranks padded to whole lanes with zero columns (scale 0).
        let padded_b;
        let b = if r4 == r {
            b
        } else {
            padded_b = b
                .chunks_exact(r)
                .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0.0, r4 - r)))
                .collect::<Vec<f32>>();
            &padded_b[..]
        };
        // Per rank column, 16 columns at a time in a local accumulator: kept in registers,
        // where updating `amax` in place made every row wait on the previous row's store
        // (that loop was a ninth of a cold load).
        let mut amax = vec![0f32; r4];
        for (c, m) in amax.chunks_mut(16).enumerate() {
            let mut acc = [0f32; 16];
            for row in b.chunks_exact(r4) {
                let seg = &row[16 * c..16 * c + m.len()];
                match <&[f32; 16]>::try_from(seg) {
                    // A fixed width, so that `acc` is one register rather than a stack slot.
                    Ok(seg) => {
                        for k in 0..16 {
                            acc[k] = acc[k].max(seg[k].abs());
                        }
                    }
                    Err(_) => {
                        for (a, v) in acc.iter_mut().zip(seg) {
                            *a = a.max(v.abs());
                        }
                    }
                }
            }
            m.copy_from_slice(&acc[..m.len()]);
        }
        let scale: Vec<f32> = amax.iter().map(|m| m * s.abs() / 127.0).collect();
        let ids: Vec<f32> = scale
            .iter()
            .map(|&sc| if sc > 0.0 { s / sc } else { 0.0 })
            .collect();
        let mut sbt = vec![0u8; out * r4];
        caps.quantize_transposed(b, &ids, &mut sbt);
        Self {
            r,
            out,
            a,
            sbt,
            scale,
        }
    }

    pub(crate) fn caps(&self) -> Caps {
        self.a.caps()
    }

    /// The input width.
    pub(crate) fn inp(&self) -> usize {
        self.a.dims().1
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
        for (k, row) in sbt.chunks_exact_mut(self.out).enumerate() {
            for (o, v) in row.iter_mut().enumerate() {
                *v = self.weight(k, o) as f32 * self.scale[k];
            }
        }
        (a, sbt)
    }

    /// The 8-bit `sBᵀ[k][o]` (before its rank scale).
    fn weight(&self, k: usize, o: usize) -> i32 {
        let (t, lane) = (o / TILE, o % TILE);
        let i = (t * quads(self.r) / 4 + k / 4) * 4 * TILE + lane * 4 + k % 4;
        self.sbt[i] as i32 - 128
    }

    /// `out += (s·B)·(A·x)` for `n` (1 to 4) consecutive rows (`out`: `n × out`) whose
    /// activations `q` were quantized by [`super::block::quantize_rows`]. The weights are
    /// loaded once for all `n`; each row's result is the same as alone.
    pub(crate) fn add_rows(&self, q: QuantRow<'_>, n: usize, out: &mut [f32]) -> bool {
        // SAFETY: `out` is `len` initialized values.
        unsafe { self.product::<true>(q, n, out.as_mut_ptr(), out.len()) }
    }

    /// [`Q8Delta::add_rows`] into a fresh buffer: `out = (s·B)·(A·x)`, every value written, the
    /// same values as added to zeros (`+0.0` for a zero product, as `0.0 + x` gives).
    pub(crate) fn write_rows(
        &self,
        q: QuantRow<'_>,
        n: usize,
        out: &mut [std::mem::MaybeUninit<f32>],
    ) -> bool {
        // SAFETY: `out` is `len` values the kernel only stores to.
        unsafe { self.product::<false>(q, n, out.as_mut_ptr() as *mut f32, out.len()) }
    }

    /// `ADD`: `out += delta`, else `out = delta` (`out` may then be uninitialized).
    ///
    /// # Safety
    /// `out` points at `len` writable values, initialized when `ADD`.
    unsafe fn product<const ADD: bool>(
        &self,
        q: QuantRow<'_>,
        n: usize,
        out: *mut f32,
        len: usize,
    ) -> bool {
        let padded = padded(self.r);
        if !(1..=4).contains(&n) || len != n * self.out {
            return false;
        }
        // On the stack up to rank 64 for runs of 4: this runs per row and projection, and
        // zeroing a buffer sized for rank 512 cost more than the product at r=16.
        let (mut stack, mut heap) = ([0f32; 256], Vec::new());
        let h = scratch(&mut stack, &mut heap, n * padded);
        self.a.rows(q, n, h);
        let r4 = quads(self.r);
        let (mut u, mut du, mut corr) = ([0i8; 256], [0f32; 4], [0i32; 4]);
        let mut u_heap = Vec::new();
        let u = scratch(&mut u, &mut u_heap, n * r4);
        for (j, (row, uj)) in h
            .chunks_exact_mut(padded)
            .zip(u.chunks_exact_mut(r4))
            .enumerate()
        {
            let row = &mut row[..r4];
            for (v, s) in row.iter_mut().zip(&self.scale) {
                *v *= s;
            }
            du[j] = round_intermediate(row, uj);
            // The weights are stored +128: Σ_k (w+128)·u = Σ_k w·u + 128·Σ_k u.
            corr[j] = 128 * uj.iter().map(|&v| v as i32).sum::<i32>();
        }
        // SAFETY: the table matches this CPU (`Caps`); `sbt` holds `out/16` tiles of `r4 × 16`
        // bytes, `u` `n` rows of `r4`, `out` (the caller's) `n` rows of `self.out` (`len`).
        unsafe {
            (self.caps().table().up)(n, ADD, &self.sbt, u, r4, &corr, &du, out, len);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::quantize_rows;
    use super::super::Tier;
    use super::*;

    fn val(i: usize, salt: usize) -> f32 {
        (((i * 2654435761 + salt) % 2001) as f32 / 1000.0) - 1.0
    }

    #[test]
    fn eight_bits_only_where_smaller_than_f16() {
        assert!(Q8Delta::fits(48, 12, 64) && !Q8Delta::fits(49, 12, 64));
        assert!(!Q8Delta::fits(48, 12, 65) && !Q8Delta::fits(48, 0, 64));
        // Rank 4 pads `A` to 16 rows: more bytes than f16.
        assert!(!Q8Delta::fits(48, 4, 64));
    }

    #[test]
    fn eight_bit_delta_is_close_to_the_f32_one_on_every_tier() {
        // Ranks 16 and 8 take the fixed-rank kernel; rank 12 pads `A`; rank 10 pads the ranks
        // to whole lanes too; rank 20 is a whole 16-rank chunk of `B` plus a tail; rank 80 with
        // runs of 4 takes the heap scratch; a negative scale.
        for (r, s) in [
            (16, 1.5f32),
            (8, 0.25),
            (12, 0.5),
            (10, 1.0),
            (20, 0.75),
            (80, -2.0),
        ] {
            for tier in Tier::available() {
                check(Caps::new(tier).unwrap(), 48, r, 64, s);
            }
        }
    }

    fn check(caps: Caps, out: usize, r: usize, inp: usize, s: f32) {
        let a: Vec<f32> = (0..r * inp).map(|i| val(i, 1)).collect();
        let mut b: Vec<f32> = (0..out * r).map(|i| val(i, 7)).collect();
        for o in 0..out {
            b[o * r + 1] = 0.0; // an all-zero rank row: scale 0
        }
        let x: Vec<f32> = (0..inp).map(|i| val(i, 3)).collect();
        let d = Q8Delta::new(caps, &a, &b, (out, r, inp), s);
        let qx = quantize_rows(caps, &x, 1, inp);
        let (xq, dx) = (&qx.xq, &qx.dx);
        let mut got = vec![1f32; out];
        assert!(d.add_rows(qx.rows(0, 1, inp), 1, &mut got));
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
        // The kernel bit for bit: its own `A` pass, then the rank scales, the 8-bit
        // intermediate and an exact integer sum, emulated here.
        let mut h = vec![0f32; padded(r)];
        d.a.rows(qx.rows(0, 1, inp), 1, &mut h);
        let r4 = quads(r);
        let u: Vec<f32> = h[..r4].iter().zip(&d.scale).map(|(h, s)| h * s).collect();
        let mut uq = vec![0i8; r4];
        let du = round_intermediate(&u, &mut uq);
        for (o, g) in got.iter().enumerate() {
            let sum: i32 = (0..r).map(|k| uq[k] as i32 * d.weight(k, o)).sum();
            assert_eq!(*g, (sum as f32).mul_add(du, 1.0), "output {o}");
        }
        // What `to_f32` reports is what the kernel multiplies by: with the activations as the
        // kernel rounded them, the product matches up to the intermediate's rounding (half a
        // step of `du` per rank).
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
            let step: f32 = (0..r)
                .map(|k| 0.51 * du * d.weight(k, o).abs() as f32)
                .sum();
            assert!(
                (g - want).abs() <= 1e-4 * scale + step,
                "{o}: {g} vs {want}"
            );
        }
        for (k, row) in sbtf.chunks_exact(out).enumerate() {
            for (o, v) in row.iter().enumerate() {
                assert!((v - s * b[o * r + k]).abs() <= s.abs() / 127.0);
            }
        }
        // Writing a fresh buffer gives what adding to zeros gives, bit for bit (past one row,
        // the last is all zeros: its delta is exactly zero, +0.0 both ways).
        for n in 1..=4 {
            let xs: Vec<f32> = (0..n * inp)
                .map(|i| {
                    if n > 1 && i >= (n - 1) * inp {
                        0.0
                    } else {
                        val(i, 13)
                    }
                })
                .collect();
            let qx = quantize_rows(caps, &xs, n, inp);
            let q = qx.rows(0, n, inp);
            let mut added = vec![0f32; n * out];
            assert!(d.add_rows(q, n, &mut added));
            let mut written = Vec::with_capacity(n * out);
            assert!(d.write_rows(q, n, &mut written.spare_capacity_mut()[..n * out]));
            // SAFETY: `write_rows` wrote every value.
            unsafe { written.set_len(n * out) };
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&added), bits(&written), "{n} rows");
        }
        // Rows run together give each row's result alone, bit for bit.
        for n in 2..=4 {
            let xs: Vec<f32> = (0..n * inp).map(|i| val(i, 11)).collect();
            let qx = quantize_rows(caps, &xs, n, inp);
            let mut together = vec![0.5f32; n * out];
            assert!(d.add_rows(qx.rows(0, n, inp), n, &mut together));
            for j in 0..n {
                let qx = quantize_rows(caps, &xs[j * inp..(j + 1) * inp], 1, inp);
                let mut alone = vec![0.5f32; out];
                assert!(d.add_rows(qx.rows(0, 1, inp), 1, &mut alone));
                assert_eq!(alone, together[j * out..(j + 1) * out], "row {j} of {n}");
            }
        }
    }
}
