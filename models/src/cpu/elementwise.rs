//! Elementwise passes built on `e^x`, on f32 values on the CPU: the feed-forward gate
//! `silu(gate) · up`, and the softmax weights of decode attention.
//!
//! Why: candle runs SiLU and the product as two ops, the first with one scalar `expf` per
//! value, hundreds of thousands of exponentials a decode step. Here `e^x` is Cephes' `expf`
//! polynomial (a few ulp from libm's), written so that every tier evaluates it with the same
//! operations — 16 at a time with AVX-512, 8 with AVX2, one by one in the reference below —
//! and the gate with its product in the same pass.

use std::f32::consts::LOG2_E;

use candle_core::{DType, Tensor};

use super::block::{max_ps, min_ps};
use super::slices::{f32_values, reduce16};
use super::Caps;
use crate::error::Result;

/// `silu(gate) · up` (`silu(x) = x / (1 + e^-x)`), elementwise over tensors of one shape: the
/// tier's pass where both are contiguous f32 on the CPU, candle's ops elsewhere.
pub(crate) fn silu_mul(caps: Caps, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dtype() != DType::F32
        || up.dtype() != DType::F32
        || gate.shape() != up.shape()
        || !gate.device().is_cpu()
        || !gate.is_contiguous()
        || !up.is_contiguous()
    {
        return Ok((candle_nn::ops::silu(gate)? * up)?);
    }
    // Contiguous f32 on the CPU: both borrowed in place.
    let (g, u) = (f32_values(gate)?, f32_values(up)?);
    let mut out = Vec::with_capacity(g.len());
    caps.silu_mul_into(&g, &u, &mut out.spare_capacity_mut()[..g.len()]);
    // SAFETY: `silu_mul_into` wrote all `g.len()` values.
    unsafe { out.set_len(g.len()) };
    Ok(Tensor::from_vec(out, gate.shape(), gate.device())?)
}

/// The constants of [`exp`]: `ln 2` in two parts, then the polynomial's coefficients from the
/// highest degree down.
pub(super) const LN2_HI: f32 = 0.693_359_4;
pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
pub(super) const POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `e^x` as Cephes' `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2 in two parts),
/// `e^r` by a degree-7 polynomial, then `· 2^n` rounded once. Inputs are clamped first (as x86's
/// `min`/`max` take them, so NaN stays NaN) so that `n` stays small enough for `r` to be exact.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    let x = min_ps(89.0, max_ps(-104.0, x));
    let n = (x * LOG2_E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = p.mul_add(r, *c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    scale(y, n)
}

/// `y · 2^n` rounded once, as AVX-512's `vscalefps` gives it, for `n` in `-150..=128` (or NaN):
/// two exact powers of two, the first product exact (it stays normal), the second rounding.
#[inline(always)]
pub(super) fn scale(y: f32, n: f32) -> f32 {
    if n.is_nan() {
        return y + n;
    }
    let n = n as i32;
    let h = n / 2;
    y * pow2(h) * pow2(n - h)
}

/// `2^e` for `e` in `-126..=127`.
#[inline(always)]
pub(super) fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// `out[i] = g[i] / (1 + e^-g[i]) · u[i]`.
#[inline(always)]
pub(super) fn silu_mul_ref(g: &[f32], u: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
    assert!(g.len() == u.len() && out.len() == g.len());
    for ((o, &x), &v) in out.iter_mut().zip(g).zip(u) {
        let e = exp(0.0 - x);
        o.write(x / (1.0 + e) * v);
    }
}

/// `v[i] = e^(v[i] - max)`, returning their sum (a softmax's unnormalized weights): value `i`
/// added to lane `i % 16`, the lanes summed as [`reduce16`] does.
#[inline(always)]
pub(super) fn exp_shifted_ref(v: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0f32; 16];
    for (i, x) in v.iter_mut().enumerate() {
        *x = exp(*x - max);
        lanes[i % 16] += *x;
    }
    reduce16(lanes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
            let got: Vec<f32> = silu_mul(Caps::detect(), &gt, &ut)
                .unwrap()
                .to_vec1()
                .unwrap();
            for (i, got) in got.iter().enumerate() {
                let want = reference(g[i], u[i]);
                let tol = 8.0 * f32::EPSILON * want.abs() + 1e-37;
                assert!((got - want).abs() <= tol, "{}: {got} vs {want}", g[i]);
            }
        }
        let nan = Tensor::from_slice(&[f32::NAN, 1.0], 2, &Device::Cpu).unwrap();
        let got: Vec<f32> = silu_mul(Caps::detect(), &nan, &nan)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(got[0].is_nan() && (got[1] - reference(1.0, 1.0)).abs() <= 8.0 * f32::EPSILON);
    }

    #[test]
    fn shifted_exponentials_and_their_sum() {
        for len in [1, 7, 16, 17, 100] {
            let v: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
            let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut got = v.clone();
            let sum = Caps::detect().exp_shifted(&mut got, max);
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
        assert_eq!(Caps::detect().exp_shifted(&mut v, 0.0), 1.0);
        assert_eq!(v[1], 0.0);
        let mut v = [f32::NAN, 0.0];
        assert!(Caps::detect().exp_shifted(&mut v, 0.0).is_nan() && v[0].is_nan());
        // Values past a slice's end are left alone (the masked tail stores nothing there).
        let mut buf = [7f32; 40];
        Caps::detect().exp_shifted(&mut buf[..21], 7.0);
        assert!(buf[..21].iter().all(|&v| v == 1.0) && buf[21..].iter().all(|&v| v == 7.0));
    }

    #[test]
    fn exponentials_within_three_ulp_over_the_range() {
        // Every 0.001 over [-87, 88]: an error in the low-order terms of the polynomial or in
        // the range reduction shows; the highest terms sit below an ulp by design.
        let xs: Vec<f32> = (0..=175_000).map(|i| -87.0 + i as f32 * 1e-3).collect();
        let mut got = xs.clone();
        Caps::detect().exp_shifted(&mut got, 0.0);
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
        let got: Vec<Vec<f32>> = silu_mul(Caps::detect(), &t, &t).unwrap().to_vec2().unwrap();
        let want: Vec<Vec<f32>> = (candle_nn::ops::silu(&t).unwrap() * &t)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(got, want);
        let h = g.to_dtype(DType::F16).unwrap();
        assert_eq!(
            silu_mul(Caps::detect(), &h, &h).unwrap().dtype(),
            DType::F16
        );
        // A contiguous view that starts past its storage's start takes the fused pass from
        // its own first value.
        let long = Tensor::from_slice(&[9f32, 1.0, -2.0, 3.0, -4.0], 5, &Device::Cpu).unwrap();
        let tail = long.narrow(0, 1, 4).unwrap();
        let got: Vec<f32> = silu_mul(Caps::detect(), &tail, &tail)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (g, x) in got.iter().zip([1f32, -2.0, 3.0, -4.0]) {
            let want = reference(x, x);
            assert!(
                (g - want).abs() <= 8.0 * f32::EPSILON * want.abs(),
                "{x}: {g} vs {want}"
            );
        }
    }
}

#[cfg(test)]
mod tiers {
    use super::super::block::tests::same;
    use super::super::Tier;
    use super::*;

    #[test]
    fn every_tier_gives_the_reference_exponentials_bit_for_bit() {
        let mut g: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.2137).collect();
        g.extend([
            0.0,
            -0.0,
            1e-8,
            -1e-8,
            87.0,
            -87.0,
            88.72,
            88.9,
            -88.9,
            89.0,
            89.5,
            -89.5,
            -103.0,
            -103.97,
            -104.0,
            -104.5,
            200.0,
            -200.0,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            1e-40,
        ]);
        let u: Vec<f32> = (0..g.len()).map(|i| 1.0 - (i % 7) as f32 * 0.375).collect();
        let portable = Caps::portable();
        for tier in Tier::available() {
            let caps = Caps::new(tier).unwrap();
            for len in [g.len(), 1, 15, 16, 17, 33] {
                let (mut a, mut b) = (Vec::with_capacity(len), Vec::with_capacity(len));
                caps.silu_mul_into(&g[..len], &u[..len], &mut a.spare_capacity_mut()[..len]);
                portable.silu_mul_into(&g[..len], &u[..len], &mut b.spare_capacity_mut()[..len]);
                // SAFETY: both passes wrote `len` values.
                unsafe { (a.set_len(len), b.set_len(len)) };
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(same(*x, *y), "{tier} silu {}: {x} vs {y}", g[i]);
                }
                for max in [0.0, 3.5, f32::NAN] {
                    let (mut a, mut b) = (g[..len].to_vec(), g[..len].to_vec());
                    let (sa, sb) = (
                        caps.exp_shifted(&mut a, max),
                        portable.exp_shifted(&mut b, max),
                    );
                    assert!(same(sa, sb), "{tier} sum of {len}: {sa} vs {sb}");
                    for (x, y) in a.iter().zip(&b) {
                        assert!(same(*x, *y), "{tier} exp: {x} vs {y}");
                    }
                }
            }
        }
    }
}
