//! LoRA deltas held on the host for f32 activations, in f32, f16 or 8 bits: `y += sBᵀ·(A·x)`
//! per row, computed inside the packed product's pass or after a dense one.
//!
//! A decode step with many distinct adapters streams every adapter's weights once per step: at
//! 16 rows with 16 r=16 all-projection adapters that is 16 × 19.6 MB in f32, more than the
//! quantized base model itself, and the memory bus is the limit. f16 halves those bytes (the
//! conversion back is one instruction per eight values); 8 bits (see `delta_q8`) halve them
//! again, reusing the activations the packed base product already quantized.

use half::f16;

use super::block::{quantize_rows, QuantRow};
use super::delta_q8::Q8Delta;
use super::slices::{axpy, reduce16, scratch};
use super::Caps;

/// How the CPU holds adapter weights in f32 activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraPrecision {
    /// Exact: what reference comparisons against PEFT need.
    #[default]
    F32,
    /// Half the bytes per decode step; its rounding (2^-11 relative, on a delta that is itself
    /// small next to the base output) is far below the error of quantized base weights.
    F16,
    /// 8 bits (see `delta_q8`): half f16's bytes again, for bases whose own weights run
    /// through the packed kernel. Falls back to f16 for shapes that kernel does not tile and
    /// for ranks so small that padding `A` to 16 rows would take more bytes than f16.
    Q8,
}

/// One adapted projection's delta on the host.
#[derive(Debug, Clone)]
pub(crate) enum HostDelta {
    /// `a` `[r, in]`, `sbt` `(s·B)ᵀ` `[r, out]`: plain rows, so both passes read memory in order.
    Rows {
        caps: Caps,
        inp: usize,
        out: usize,
        a: HostMat,
        sbt: HostMat,
    },
    Q8(Q8Delta),
}

impl HostDelta {
    /// From `a` `[r, in]` and `b` `[out, r]` row-major (PEFT's layout), `y = Wx + s·B(Ax)`.
    pub(crate) fn new(
        caps: Caps,
        a: &[f32],
        b: &[f32],
        (out, r, inp): (usize, usize, usize),
        scale: f64,
        precision: LoraPrecision,
    ) -> Self {
        assert!(a.len() == r * inp && b.len() == out * r);
        let (a, sbt) = match precision {
            LoraPrecision::Q8 if Q8Delta::fits(out, r, inp) => {
                return Self::Q8(Q8Delta::new(caps, a, b, (out, r, inp), scale as f32));
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
        Self::Rows {
            caps,
            inp,
            out,
            a,
            sbt,
        }
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        match self {
            Self::Rows { a, sbt, .. } => (a.len() + sbt.len()) * a.elem_bytes(),
            Self::Q8(q) => q.size_in_bytes(),
        }
    }

    /// `A` `[r, in]` and `(s·B)ᵀ` `[r, out]` in f32, as the kernels multiply by them.
    pub(crate) fn to_f32(&self) -> (Vec<f32>, Vec<f32>) {
        match self {
            Self::Rows { a, sbt, .. } => (a.to_f32(), sbt.to_f32()),
            Self::Q8(q) => q.to_f32(),
        }
    }

    #[cfg(test)]
    pub(crate) fn is_q8(&self) -> bool {
        matches!(self, Self::Q8(_))
    }

    /// Adds this delta to `n` consecutive rows: `out += sBᵀ·(A·x)` (`x`: `n × in`, `out`:
    /// `n × out`). Each row's result depends on that row alone. `q`: the rows already
    /// quantized by the packed base product, if they were. False when the shapes do not match.
    pub(crate) fn add_rows(
        &self,
        x: &[f32],
        q: Option<QuantRow<'_>>,
        n: usize,
        out: &mut [f32],
    ) -> bool {
        let (caps, inp, width, a, sbt) = match self {
            Self::Rows {
                caps,
                inp,
                out,
                a,
                sbt,
            } => (*caps, *inp, *out, a, sbt),
            Self::Q8(d) => return quantized(d, x, q, n, |q| d.add_rows(q, n, out)),
        };
        if x.len() != n * inp || out.len() != n * width {
            return false;
        }
        let r = a.len() / inp.max(1);
        // Any rank the loader accepted (`--max-lora-rank` has no ceiling of its own): on the
        // stack up to 512, past it on the heap.
        let (mut stack, mut heap) = ([0f32; 512], Vec::new());
        let tmp = scratch(&mut stack, &mut heap, r);
        for (x, out) in x.chunks_exact(inp).zip(out.chunks_exact_mut(width)) {
            a.dot_rows(caps, x, tmp);
            for (k, &t) in tmp.iter().enumerate() {
                sbt.axpy_row(caps, k, t, out);
            }
        }
        true
    }

    /// [`HostDelta::add_rows`] into a fresh buffer: `out = sBᵀ·(A·x)`, every value written,
    /// equal bit for bit to adding to zeros. The 8-bit form writes without reading; the others
    /// zero `out` first.
    pub(crate) fn write_rows(
        &self,
        x: &[f32],
        q: Option<QuantRow<'_>>,
        n: usize,
        out: &mut [std::mem::MaybeUninit<f32>],
    ) -> bool {
        if let Self::Q8(d) = self {
            return quantized(d, x, q, n, |q| d.write_rows(q, n, out));
        }
        out.fill(std::mem::MaybeUninit::new(0.0));
        // SAFETY: every value was just initialized; MaybeUninit<f32> has f32's layout.
        let out = unsafe { &mut *(out as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
        self.add_rows(x, q, n, out)
    }
}

/// `f` on `n` rows of activations in 8 bits: `q` when the packed base product already
/// quantized them, else `x` quantized here.
fn quantized<R>(
    d: &Q8Delta,
    x: &[f32],
    q: Option<QuantRow<'_>>,
    n: usize,
    f: impl FnOnce(QuantRow<'_>) -> R,
) -> R {
    match q {
        Some(q) => f(q),
        None => {
            let q = quantize_rows(d.caps(), x, n, d.inp());
            f(q.rows(0, n, d.inp()))
        }
    }
}

/// A matrix of adapter weights as the CPU holds it, rows contiguous.
#[derive(Debug, Clone)]
pub(crate) enum HostMat {
    F32(Vec<f32>),
    /// f16 values of `v · 2^shift`, the shift chosen per matrix so that its largest magnitude
    /// lands near 2^15: no value overflows f16, and small values keep their precision whatever
    /// the adapter's overall scale. `unscale` = 2^-shift.
    F16 {
        data: Vec<f16>,
        unscale: f32,
    },
}

impl HostMat {
    /// `values` in f16 with a power-of-two shift (see [`HostMat::F16`]). `values` must be finite.
    pub(crate) fn f16_from(values: &[f32]) -> Self {
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (up, unscale) = shift_for(max);
        let data = values.iter().map(|&v| f16::from_f32(v * up)).collect();
        Self::F16 { data, unscale }
    }

    /// `(scale · m)ᵀ` in f16, for `m` row-major `[rows, cols]`: built straight from `m`, with no
    /// f32 intermediate (a cold load writes only the final bytes).
    pub(crate) fn f16_scaled_transposed(m: &[f32], rows: usize, cols: usize, scale: f32) -> Self {
        let max = m.iter().fold(0f32, |acc, v| acc.max(v.abs())) * scale.abs();
        let (up, unscale) = shift_for(max);
        let k = scale * up;
        let mut data = vec![f16::ZERO; rows * cols];
        // Rows of `m` are read in order and scattered to `cols` sequential output streams.
        for (r, row) in m.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                data[c * rows + r] = f16::from_f32(v * k);
            }
        }
        Self::F16 { data, unscale }
    }

    fn len(&self) -> usize {
        match self {
            HostMat::F32(v) => v.len(),
            HostMat::F16 { data, .. } => data.len(),
        }
    }

    fn elem_bytes(&self) -> usize {
        match self {
            HostMat::F32(_) => 4,
            HostMat::F16 { .. } => 2,
        }
    }

    /// `row(i) · x`, for rows of length `x.len()`.
    fn dot_row(&self, caps: Caps, i: usize, x: &[f32]) -> f32 {
        let n = x.len();
        match self {
            HostMat::F32(v) => caps.dot(&v[i * n..(i + 1) * n], x),
            HostMat::F16 { data, unscale } => caps.dot_f16(&data[i * n..(i + 1) * n], x) * unscale,
        }
    }

    /// `dots[k] = row(k) · x` for the first `dots.len()` rows. In f16 four rows share each
    /// load of `x` and run as independent chains, so the pass is bound by memory rather than
    /// by the latency of one accumulator; each row's value is the same as [`HostMat::dot_row`]'s.
    fn dot_rows(&self, caps: Caps, x: &[f32], dots: &mut [f32]) {
        let n = x.len();
        let mut k = 0;
        if let HostMat::F16 { data, unscale } = self {
            while k + 4 <= dots.len() {
                let d = caps.dot4_f16(&data[k * n..(k + 4) * n], x);
                for (j, v) in d.iter().enumerate() {
                    dots[k + j] = v * unscale;
                }
                k += 4;
            }
        }
        for (j, t) in dots.iter_mut().enumerate().skip(k) {
            *t = self.dot_row(caps, j, x);
        }
    }

    /// `out += t · row(i)`, for rows of length `out.len()`.
    fn axpy_row(&self, caps: Caps, i: usize, t: f32, out: &mut [f32]) {
        let n = out.len();
        match self {
            HostMat::F32(v) => axpy(out, t, &v[i * n..(i + 1) * n]),
            HostMat::F16 { data, unscale } => {
                caps.axpy_f16(out, t * unscale, &data[i * n..(i + 1) * n])
            }
        }
    }

    /// The values in f32 (reference computations and other devices).
    fn to_f32(&self) -> Vec<f32> {
        match self {
            HostMat::F32(v) => v.clone(),
            HostMat::F16 { data, unscale } => data.iter().map(|h| h.to_f32() * unscale).collect(),
        }
    }
}

/// `(2^shift, 2^-shift)` bringing a largest magnitude `max` near 2^15.
fn shift_for(max: f32) -> (f32, f32) {
    let shift = if max > 0.0 && max.is_finite() {
        (15 - max.log2().ceil() as i32).clamp(-100, 100)
    } else {
        0
    };
    (2f32.powi(shift), 2f32.powi(-shift))
}

/// The f16 kernels' reference order, which every tier follows: 16 lanes, value `i` of each
/// whole 16 going to lane `i % 16` by a fused multiply-add, the lanes summed as a tree
/// (`l + l+8`, then `+4`, `+2`, `+1`), then the tail in order.
#[inline(always)]
pub(super) fn dot_f16(a: &[f16], x: &[f32]) -> f32 {
    assert_eq!(a.len(), x.len());
    let full = a.len() / 16 * 16;
    let mut acc = [0f32; 16];
    for (ca, cx) in a[..full].chunks_exact(16).zip(x[..full].chunks_exact(16)) {
        for l in 0..16 {
            acc[l] = ca[l].to_f32().mul_add(cx[l], acc[l]);
        }
    }
    let mut sum = reduce16(acc);
    for (h, x) in a[full..].iter().zip(&x[full..]) {
        sum = h.to_f32().mul_add(*x, sum);
    }
    sum
}

/// Four rows of `a` (`4 × x.len()`) against `x`, each as [`dot_f16`].
#[inline(always)]
pub(super) fn dot4_f16(a: &[f16], x: &[f32]) -> [f32; 4] {
    let n = x.len();
    assert_eq!(a.len(), 4 * n);
    std::array::from_fn(|k| dot_f16(&a[k * n..(k + 1) * n], x))
}

/// `out[i] = fma(t, b[i], out[i])`.
#[inline(always)]
pub(super) fn axpy_f16(out: &mut [f32], t: f32, b: &[f16]) {
    assert_eq!(out.len(), b.len());
    for (o, h) in out.iter_mut().zip(b) {
        *o = t.mul_add(h.to_f32(), *o);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Tier;
    use super::*;

    fn val(i: usize, salt: usize) -> f32 {
        (((i * 2654435761 + salt) % 2001) as f32 / 1000.0) - 1.0
    }

    #[test]
    fn f16_kernels_of_every_tier_equal_the_reference_bit_for_bit() {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        // Lengths with and without tails; NaN and infinities among the activations.
        for n in [1usize, 15, 16, 17, 37, 64, 576, 1537] {
            let a: Vec<f16> = (0..4 * n).map(|i| f16::from_f32(val(i, 1) * 3.0)).collect();
            let mut x: Vec<f32> = (0..n).map(|i| val(i, 2) * 100.0).collect();
            if n > 20 {
                x[3] = f32::NAN;
                x[n - 2] = f32::INFINITY;
            }
            let want_dot = dot_f16(&a[..n], &x);
            let want4 = dot4_f16(&a, &x);
            let mut want_axpy = x.clone();
            axpy_f16(&mut want_axpy, 0.37, &a[..n]);
            for tier in Tier::available() {
                let caps = Caps::new(tier).unwrap();
                assert_eq!(
                    caps.dot_f16(&a[..n], &x).to_bits(),
                    want_dot.to_bits(),
                    "{tier} {n}"
                );
                assert_eq!(bits(&caps.dot4_f16(&a, &x)), bits(&want4), "{tier} {n}");
                let mut got = x.clone();
                caps.axpy_f16(&mut got, 0.37, &a[..n]);
                assert_eq!(bits(&got), bits(&want_axpy), "{tier} {n}");
            }
        }
    }

    #[test]
    fn f16_rows_match_f32_within_half_precision() {
        let n = 37; // a tail after the vector loop
        let a: Vec<f32> = (0..2 * n)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 1e-3)
            .collect();
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
        let (h, f) = (HostMat::f16_from(&a), HostMat::F32(a.clone()));
        let caps = Caps::detect();
        for row in 0..2 {
            let (d16, d32) = (h.dot_row(caps, row, &x), f.dot_row(caps, row, &x));
            assert!(
                (d16 - d32).abs() <= 1e-3 * d32.abs().max(1e-3),
                "{d16} vs {d32}"
            );
        }
        let (mut o16, mut o32) = (vec![1f32; n], vec![1f32; n]);
        h.axpy_row(caps, 1, 0.5, &mut o16);
        f.axpy_row(caps, 1, 0.5, &mut o32);
        for (p, q) in o16.iter().zip(&o32) {
            assert!((p - q).abs() <= 1e-6, "{p} vs {q}");
        }
    }

    #[test]
    fn scaled_transpose_matches_transposing_first() {
        let (rows, cols) = (5, 3);
        let m: Vec<f32> = (0..rows * cols).map(|i| i as f32 - 6.0).collect();
        let mut t = vec![0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = m[r * cols + c] * 0.25;
            }
        }
        assert_eq!(
            HostMat::f16_scaled_transposed(&m, rows, cols, 0.25).to_f32(),
            HostMat::f16_from(&t).to_f32()
        );
    }

    #[test]
    fn dot_rows_equals_row_by_row_dots() {
        let (r, n) = (6, 64);
        let a: Vec<f32> = (0..r * n)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.01)
            .collect();
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).cos()).collect();
        let caps = Caps::detect();
        for m in [HostMat::f16_from(&a), HostMat::F32(a.clone())] {
            let mut dots = vec![0f32; r];
            m.dot_rows(caps, &x, &mut dots);
            for (k, d) in dots.iter().enumerate() {
                assert_eq!(d.to_bits(), m.dot_row(caps, k, &x).to_bits(), "row {k}");
            }
        }
    }

    #[test]
    fn the_shift_keeps_huge_and_tiny_matrices_representable() {
        for scale in [1e-9f32, 1e6] {
            let v: Vec<f32> = (0..16).map(|i| (i as f32 - 7.5) * scale).collect();
            let back = HostMat::f16_from(&v).to_f32();
            for (p, q) in back.iter().zip(&v) {
                assert!(
                    p.is_finite() && (p - q).abs() <= 1e-3 * q.abs(),
                    "{p} vs {q}"
                );
            }
        }
    }
}
