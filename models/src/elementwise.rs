//! Elementwise passes built on `e^x`, on f32 values on the CPU: the feed-forward gate
//! `silu(gate) · up`, and the softmax weights of decode attention.
//!
//! Why: candle runs SiLU and the product as two ops, the first with one scalar `expf` per
//! value, hundreds of thousands of exponentials a decode step. With AVX-512 these evaluate 16 at a time
//! (Cephes' `expf` polynomial, a few ulp from libm's), the gate with its product in the same
//! pass.

#[cfg(target_arch = "x86_64")]
use candle_core::DType;
use candle_core::Tensor;

use crate::error::Result;

/// `silu(gate) · up` (`silu(x) = x / (1 + e^-x)`), elementwise over tensors of one shape.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = fused(gate, up)? {
        return Ok(v);
    }
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

/// `v[i] = e^(v[i] - max)`, returning their sum: a softmax's unnormalized weights.
pub(crate) fn exp_shifted(v: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::host_kernels::cpu_has!("avx512f") {
        // SAFETY: AVX-512F detected.
        return unsafe { x86::exp_shifted(v, max) };
    }
    let mut sum = 0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    sum
}

/// The AVX-512 pass, where both tensors are contiguous f32 on the CPU; `None` elsewhere.
#[cfg(target_arch = "x86_64")]
fn fused(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if !crate::host_kernels::cpu_has!("avx512f")
        || gate.dtype() != DType::F32
        || up.dtype() != DType::F32
        || gate.shape() != up.shape()
        || !gate.device().is_cpu()
        || !gate.is_contiguous()
        || !up.is_contiguous()
    {
        return Ok(None);
    }
    // Contiguous f32 on the CPU: both borrowed in place.
    let (g, u) = (
        crate::host_kernels::f32_values(gate)?,
        crate::host_kernels::f32_values(up)?,
    );
    let mut out = Vec::with_capacity(g.len());
    // SAFETY: AVX-512F detected; `g` and `u` have the same length (same shape, contiguous),
    // and `out` has room for as many values, all of which the pass writes.
    unsafe {
        x86::silu_mul(&g, &u, out.as_mut_ptr());
        out.set_len(g.len());
    }
    Ok(Some(Tensor::from_vec(out, gate.shape(), gate.device())?))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `out[i] = g[i] / (1 + e^-g[i]) · u[i]`, 16 values at a time, the tail masked.
    ///
    /// # Safety
    /// AVX-512F; `u.len() == g.len()` and `out` has room for `g.len()` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul(g: &[f32], u: &[f32], out: *mut f32) {
        debug_assert_eq!(g.len(), u.len());
        let (n, one) = (g.len(), _mm512_set1_ps(1.0));
        let mut i = 0;
        while i < n {
            let mask = crate::host_kernels::lanes(n - i);
            let x = _mm512_maskz_loadu_ps(mask, g.as_ptr().add(i));
            let v = _mm512_maskz_loadu_ps(mask, u.as_ptr().add(i));
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
            let s = _mm512_div_ps(x, _mm512_add_ps(one, e));
            _mm512_mask_storeu_ps(out.add(i), mask, _mm512_mul_ps(s, v));
            i += 16;
        }
    }

    /// [`super::exp_shifted`], 16 at a time, the tail masked (its lanes add zeros).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted(v: &mut [f32], max: f32) -> f32 {
        let (n, m) = (v.len(), _mm512_set1_ps(max));
        let mut sum = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let mask = crate::host_kernels::lanes(n - i);
            let p = v.as_mut_ptr().add(i);
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p), m));
            _mm512_mask_storeu_ps(p, mask, e);
            sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, e));
            i += 16;
        }
        _mm512_reduce_add_ps(sum)
    }

    /// `e^x` as Cephes' `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2 in two parts),
    /// `e^r` by a degree-7 polynomial, then `· 2^n` by `vscalefps`, which gives 0 and ∞ past
    /// the range of f32 without a branch. Inputs are clamped first so that `n` stays small
    /// enough for `r` to be exact; NaN stays NaN.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp(x: __m512) -> __m512 {
        // `vmaxps`/`vminps` return their second operand when either is NaN: `x` goes second.
        let x = _mm512_min_ps(
            _mm512_set1_ps(89.0),
            _mm512_max_ps(_mm512_set1_ps(-104.0), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(
            _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
            _mm512_set1_ps(1.0),
        );
        _mm512_scalef_ps(y, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn reference(g: f32, u: f32) -> f32 {
        g / (1.0 + (-g).exp()) * u
    }

    #[test]
    fn fused_gate_matches_silu_times_up() {
        // Tails of 1 to 15 values, ordinary values, and the edges of exp's range.
        let mut g: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.173).collect();
        g.extend([
            0.0, -0.0, 1e-8, -1e-8, 20.0, -20.0, 87.0, -87.0, 88.9, -88.9, 89.5, -89.5, 104.0,
            -104.0, 200.0, -200.0, 1e30, -1e30,
        ]);
        let u: Vec<f32> = (0..g.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        for len in [g.len(), 1, 15, 16, 17] {
            let gt = Tensor::from_slice(&g[..len], len, &Device::Cpu).unwrap();
            let ut = Tensor::from_slice(&u[..len], len, &Device::Cpu).unwrap();
            let got: Vec<f32> = silu_mul(&gt, &ut).unwrap().to_vec1().unwrap();
            for (i, got) in got.iter().enumerate() {
                let want = reference(g[i], u[i]);
                let tol = 8.0 * f32::EPSILON * want.abs() + 1e-37;
                assert!((got - want).abs() <= tol, "{}: {got} vs {want}", g[i]);
            }
        }
        let nan = Tensor::from_slice(&[f32::NAN, 1.0], 2, &Device::Cpu).unwrap();
        let got: Vec<f32> = silu_mul(&nan, &nan).unwrap().to_vec1().unwrap();
        assert!(got[0].is_nan() && (got[1] - reference(1.0, 1.0)).abs() <= 8.0 * f32::EPSILON);
    }

    #[test]
    fn shifted_exponentials_and_their_sum() {
        for len in [1, 7, 16, 17, 100] {
            let v: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
            let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut got = v.clone();
            let sum = exp_shifted(&mut got, max);
            let mut want_sum = 0f64;
            for (g, x) in got.iter().zip(&v) {
                let want = (x - max).exp();
                want_sum += want as f64;
                assert!(
                    (g - want).abs() <= 8.0 * f32::EPSILON * want,
                    "{x}: {g} vs {want}"
                );
            }
            assert!(
                (sum as f64 - want_sum).abs() <= 1e-5 * want_sum,
                "{sum} vs {want_sum}"
            );
        }
        // -inf (a masked score) gives a zero weight; NaN stays NaN.
        let mut v = [0.0, f32::NEG_INFINITY];
        assert_eq!(exp_shifted(&mut v, 0.0), 1.0);
        assert_eq!(v[1], 0.0);
        let mut v = [f32::NAN, 0.0];
        assert!(exp_shifted(&mut v, 0.0).is_nan() && v[0].is_nan());
        // Values past a slice's end are left alone (the masked tail stores nothing there).
        let mut buf = [7f32; 40];
        exp_shifted(&mut buf[..21], 7.0);
        assert!(buf[..21].iter().all(|&v| v == 1.0) && buf[21..].iter().all(|&v| v == 7.0));
    }

    #[test]
    fn exponentials_within_three_ulp_over_the_range() {
        // Every 0.001 over [-87, 88]: an error in the low-order terms of the polynomial or in
        // the range reduction shows; the highest terms sit below an ulp by design.
        let xs: Vec<f32> = (0..=175_000).map(|i| -87.0 + i as f32 * 1e-3).collect();
        let mut got = xs.clone();
        exp_shifted(&mut got, 0.0);
        for (x, g) in xs.iter().zip(&got) {
            let want = (*x as f64).exp();
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!(
                ((*g as f64) - want).abs() <= 3.0 * ulp as f64,
                "e^{x}: {g} vs {want}"
            );
        }
    }

    #[test]
    fn views_and_other_dtypes_take_candle_ops() {
        let g = Tensor::from_slice(&[1f32, -2.0, 3.0, -4.0], (2, 2), &Device::Cpu).unwrap();
        let t = g.t().unwrap();
        let got: Vec<Vec<f32>> = silu_mul(&t, &t).unwrap().to_vec2().unwrap();
        let want: Vec<Vec<f32>> = (candle_nn::ops::silu(&t).unwrap() * &t)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(got, want);
        let h = g.to_dtype(DType::F16).unwrap();
        assert_eq!(silu_mul(&h, &h).unwrap().dtype(), DType::F16);
        // A contiguous view that starts past its storage's start takes the fused pass from
        // its own first value.
        let long = Tensor::from_slice(&[9f32, 1.0, -2.0, 3.0, -4.0], 5, &Device::Cpu).unwrap();
        let tail = long.narrow(0, 1, 4).unwrap();
        let got: Vec<f32> = silu_mul(&tail, &tail).unwrap().to_vec1().unwrap();
        for (g, x) in got.iter().zip([1f32, -2.0, 3.0, -4.0]) {
            let want = reference(x, x);
            assert!(
                (g - want).abs() <= 8.0 * f32::EPSILON * want.abs(),
                "{x}: {g} vs {want}"
            );
        }
    }
}
