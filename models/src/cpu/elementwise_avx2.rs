//! The AVX2 tier's elementwise passes: `elementwise::exp` eight at a time, for the
//! feed-forward gate and the softmax weights, each the twin of its reference bit for bit.
//!
//! Why written out: the reference compiled for AVX2 stayed one value at a time (the exact
//! `· 2^n` step branches on NaN, and the softmax sums go to lanes by index), and a prefill
//! evaluates it for every score of every head.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::elementwise::{LN2_HI, LN2_LO, POLY};
use super::slices::reduce16;

/// The lanes before `count` (at most 8) of a register, as a mask for `maskload`/`maskstore`.
#[target_feature(enable = "avx2,fma,f16c")]
fn first(count: usize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(count.min(8) as i32), idx)
}

/// `elementwise::exp` of 8 values, `elementwise::scale`'s two exact powers of two included.
#[target_feature(enable = "avx2,fma,f16c")]
fn exp(x: __m256) -> __m256 {
    // `vmaxps`/`vminps` return their second operand when either is NaN: `x` goes second.
    let x = _mm256_min_ps(
        _mm256_set1_ps(89.0),
        _mm256_max_ps(_mm256_set1_ps(-104.0), x),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(POLY[0]);
    for c in &POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    // `y · 2^h · 2^(n − h)` with `h = n / 2` rounded toward zero, as `scale` computes it.
    let ni = _mm256_cvttps_epi32(n);
    let h = _mm256_srai_epi32::<1>(_mm256_add_epi32(ni, _mm256_srli_epi32::<31>(ni)));
    let pow2 = |e: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            e,
            _mm256_set1_epi32(127),
        )))
    };
    let scaled = _mm256_mul_ps(_mm256_mul_ps(y, pow2(h)), pow2(_mm256_sub_epi32(ni, h)));
    // A NaN input: `y + n`, as `scale` returns it.
    let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(n, n);
    _mm256_blendv_ps(scaled, _mm256_add_ps(y, n), nan)
}

/// `elementwise::silu_mul_ref`, 8 at a time, the tail masked.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(g.len() == u.len() && out.len() == g.len());
    let (n, one) = (g.len(), _mm256_set1_ps(1.0));
    for i in (0..n).step_by(8) {
        let mask = first(n - i);
        // SAFETY: masked loads and stores of the lanes before `n`.
        unsafe {
            let x = _mm256_maskload_ps(g.as_ptr().add(i), mask);
            let v = _mm256_maskload_ps(u.as_ptr().add(i), mask);
            let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
            let o = out.as_mut_ptr().add(i) as *mut f32;
            _mm256_maskstore_ps(o, mask, _mm256_mul_ps(s, v));
        }
    }
}

/// `elementwise::exp_shifted_ref`: values `i` and `i + 8` of each 16 in two registers of lane
/// sums, the tail masked (its lanes add zeros, which leaves a sum of exponentials as it is).
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn exp_shifted(v: &mut [f32], max: f32) -> f32 {
    let (n, m) = (v.len(), _mm256_set1_ps(max));
    let mut sums = [_mm256_setzero_ps(); 2];
    for i in (0..n).step_by(8) {
        let mask = first(n - i);
        // SAFETY: masked loads and stores of the lanes before `n`.
        let e = unsafe {
            let p = v.as_mut_ptr().add(i);
            let e = exp(_mm256_sub_ps(_mm256_maskload_ps(p, mask), m));
            _mm256_maskstore_ps(p, mask, e);
            e
        };
        let s = &mut sums[(i / 8) % 2];
        *s = _mm256_add_ps(*s, _mm256_and_ps(e, _mm256_castsi256_ps(mask)));
    }
    let mut lanes = [0f32; 16];
    // SAFETY: 16 floats of `lanes`, unaligned stores.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), sums[0]);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), sums[1]);
    }
    reduce16(lanes)
}
