//! The AVX2 tier (with FMA and F16C): 8 lanes per register, each 16-lane step of the reference
//! as two registers. The integer products use `vpmaddubsw` with llama.cpp's sign trick, which
//! is exact on the values this engine packs (no byte is -128). Each kernel is the twin of the
//! reference named in its doc, bit for bit (tested in the topical modules against the
//! portable table); the passes with no vector form of their own here run the reference
//! compiled for these features (fused multiply-adds inline, vectorized where the compiler can).

use std::arch::x86_64::*;

use half::f16;

use super::block;
use super::caps::Table;

pub(super) static TABLE: Table = Table {
    tile: super::avx2_int8::tile,
    tile4: super::q4_avx2::tile4,
    up: super::avx2_int8::up,
    amax,
    round_block,
    quantize_transposed,
    dot,
    dot_f16,
    dot4_f16,
    axpy_f16,
    silu_mul: super::elementwise_avx2::silu_mul,
    exp_shifted: super::elementwise_avx2::exp_shifted,
    attn_scores: super::attn_avx2::scores,
    attn_wsum: super::attn_avx2::wsum,
};

/// Lanes `l` and `l+4`, then `l+2`, then `l+1`, by `maxps` (first operand the lower lane):
/// `block::amax`'s tree past its first level.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn max8(m8: __m256) -> f32 {
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps::<1>(m8));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)))
}

/// Lanes `l` and `l+4`, then `l+2`, then `l+1`, added: `delta::reduce16`'s tree past its first
/// level.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn sum8(s8: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
}

/// `block::amax`.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn amax(src: &[f32; 32]) -> f32 {
    block::amax(src)
}

/// `block::round_block`.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_block(src: &[f32; 32], id: f32, offset: i32, q: &mut [u8; 32]) -> i32 {
    block::round_block(src, id, offset, q)
}

/// `block::quantize_transposed`.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_transposed(b: &[f32], ids: &[f32], q: &mut [u8]) {
    block::quantize_transposed(b, ids, q)
}

/// Eight f16 values at `p` in f32.
///
/// # Safety
/// Eight values readable at `p`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(p: *const u16) -> __m256 {
    // SAFETY: the caller's contract.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
}

/// `slices::dot`: lanes 0-7 and 8-15 of each 16 in two registers.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let (n, full) = (a.len(), a.len() / 16 * 16);
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 ≤ full ≤ n values of both.
        unsafe {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            let (a1, b1) = (
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            s1 = _mm256_fmadd_ps(a1, b1, s1);
        }
    }
    let mut sum = sum8(_mm256_add_ps(s0, s1));
    for j in full..n {
        sum = a[j].mul_add(b[j], sum);
    }
    sum
}

/// `delta::dot_f16`: lanes 0-7 and 8-15 of each 16 in two registers.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f16(a: &[f16], x: &[f32]) -> f32 {
    assert_eq!(a.len(), x.len());
    let (n, full) = (a.len(), a.len() / 16 * 16);
    let (pa, px) = (a.as_ptr() as *const u16, x.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 ≤ full ≤ n values of both.
        unsafe {
            s0 = _mm256_fmadd_ps(load8(pa.add(i)), _mm256_loadu_ps(px.add(i)), s0);
            s1 = _mm256_fmadd_ps(load8(pa.add(i + 8)), _mm256_loadu_ps(px.add(i + 8)), s1);
        }
    }
    let mut sum = sum8(_mm256_add_ps(s0, s1));
    for j in full..n {
        sum = a[j].to_f32().mul_add(x[j], sum);
    }
    sum
}

/// `delta::dot4_f16`: four rows sharing each load of `x`.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot4_f16(a: &[f16], x: &[f32]) -> [f32; 4] {
    let n = x.len();
    assert_eq!(a.len(), 4 * n);
    let full = n / 16 * 16;
    let (pa, px) = (a.as_ptr() as *const u16, x.as_ptr());
    let mut s = [[_mm256_setzero_ps(); 2]; 4];
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 ≤ full ≤ n values of `x`, and of each of `a`'s 4 rows of n.
        unsafe {
            let (x0, x1) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
            for (k, acc) in s.iter_mut().enumerate() {
                let p = pa.add(k * n + i);
                acc[0] = _mm256_fmadd_ps(load8(p), x0, acc[0]);
                acc[1] = _mm256_fmadd_ps(load8(p.add(8)), x1, acc[1]);
            }
        }
    }
    std::array::from_fn(|k| {
        let mut sum = sum8(_mm256_add_ps(s[k][0], s[k][1]));
        for j in full..n {
            sum = a[k * n + j].to_f32().mul_add(x[j], sum);
        }
        sum
    })
}

/// `delta::axpy_f16`.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_f16(out: &mut [f32], t: f32, b: &[f16]) {
    assert_eq!(out.len(), b.len());
    let (n, full) = (out.len(), out.len() / 8 * 8);
    let (pb, po) = (b.as_ptr() as *const u16, out.as_mut_ptr());
    let tv = _mm256_set1_ps(t);
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 ≤ full ≤ n values of both.
        unsafe {
            let v = _mm256_fmadd_ps(tv, load8(pb.add(i)), _mm256_loadu_ps(po.add(i)));
            _mm256_storeu_ps(po.add(i), v);
        }
    }
    for j in full..n {
        out[j] = t.mul_add(b[j].to_f32(), out[j]);
    }
}
