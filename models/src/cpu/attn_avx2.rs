//! The AVX2 tier's attention kernels (also the AVX-VNNI and AVX-512 tiers'): one query head's
//! scores against a run of keys, and the softmax-weighted sum of a run of values, each the
//! twin of its reference in `attention` bit for bit.
//!
//! Why kernels of their own: a prefill of `n` tokens makes `n²/2` dot products per head and
//! layer. Called one by one through the tier's table, each paid a call and a horizontal sum of
//! its own; here eight keys' sums are reduced together (the same additions, transposed), and
//! the output row stays in registers across the values instead of being loaded and stored per
//! value.

use std::arch::x86_64::*;

use super::avx2::dot;

/// `attention::scores_ref`: eight keys at a time when the head's width is a multiple of 16,
/// their 16-lane sums reduced by `slices::reduce16`'s tree in one transposed pass.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scores(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
    let (hd, n) = (q.len(), out.len());
    assert!(hd > 0 && k.len() == n * hd);
    let full = if hd.is_multiple_of(16) { n / 8 * 8 } else { 0 };
    let (pq, pk, po) = (q.as_ptr(), k.as_ptr(), out.as_mut_ptr());
    for j0 in (0..full).step_by(8) {
        // Each key's 16 lanes as `slices::dot` sums them, lanes `l` and `l + 8` added.
        let mut t = [_mm256_setzero_ps(); 8];
        for (r, tr) in t.iter_mut().enumerate() {
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for i in (0..hd).step_by(16) {
                // SAFETY: key j0 + r < full ≤ n has hd values at (j0 + r)·hd, i + 16 ≤ hd.
                unsafe {
                    let kr = pk.add((j0 + r) * hd + i);
                    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), _mm256_loadu_ps(kr), s0);
                    let (q1, k1) = (_mm256_loadu_ps(pq.add(i + 8)), _mm256_loadu_ps(kr.add(8)));
                    s1 = _mm256_fmadd_ps(q1, k1, s1);
                }
            }
            *tr = _mm256_add_ps(s0, s1);
        }
        // Lanes l + l+4: keys r and r + 4 share a register, key r in the low half.
        let halves = |x, y| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(x, y),
                _mm256_permute2f128_ps::<0x31>(x, y),
            )
        };
        let (p04, p15) = (halves(t[0], t[4]), halves(t[1], t[5]));
        let (p26, p37) = (halves(t[2], t[6]), halves(t[3], t[7]));
        // Then l + l+2: two keys per half, two partial sums each.
        let pairs = |x, y| {
            _mm256_add_ps(
                _mm256_shuffle_ps::<0b01_00_01_00>(x, y),
                _mm256_shuffle_ps::<0b11_10_11_10>(x, y),
            )
        };
        let (q01, q23) = (pairs(p04, p15), pairs(p26, p37));
        // Then l + l+1: keys 0-3 in the low half, 4-7 in the high one, in order.
        let sums = _mm256_add_ps(
            _mm256_shuffle_ps::<0b10_00_10_00>(q01, q23),
            _mm256_shuffle_ps::<0b11_01_11_01>(q01, q23),
        );
        // SAFETY: j0 + 8 ≤ full ≤ n outputs.
        unsafe { _mm256_storeu_ps(po.add(j0), _mm256_mul_ps(sums, _mm256_set1_ps(scale))) };
    }
    for j in full..n {
        // SAFETY: this tier's features, as the caller guarantees.
        out[j] = unsafe { dot(q, &k[j * hd..(j + 1) * hd]) } * scale;
    }
}

/// `attention::wsum_ref`: 64 outputs at a time in eight registers across every value, then 8
/// at a time, then one by one.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn wsum(p: &[f32], v: &[f32], out: &mut [f32]) {
    let (hd, n) = (out.len(), p.len());
    assert!(hd > 0 && v.len() == n * hd);
    let (pv, po) = (v.as_ptr(), out.as_mut_ptr());
    let mut d0 = 0;
    while d0 + 64 <= hd {
        // SAFETY: d0 + 64 ≤ hd outputs, and each value row j < n has hd values at j·hd.
        unsafe {
            let mut acc: [__m256; 8] = std::array::from_fn(|r| _mm256_loadu_ps(po.add(d0 + 8 * r)));
            for (j, &w) in p.iter().enumerate() {
                let (w, row) = (_mm256_set1_ps(w), pv.add(j * hd + d0));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(w, _mm256_loadu_ps(row.add(8 * r))));
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(po.add(d0 + 8 * r), *a);
            }
        }
        d0 += 64;
    }
    while d0 + 8 <= hd {
        // SAFETY: as above, for 8 outputs.
        unsafe {
            let mut a = _mm256_loadu_ps(po.add(d0));
            for (j, &w) in p.iter().enumerate() {
                let x = _mm256_loadu_ps(pv.add(j * hd + d0));
                a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(w), x));
            }
            _mm256_storeu_ps(po.add(d0), a);
        }
        d0 += 8;
    }
    for (d, o) in out.iter_mut().enumerate().skip(d0) {
        for (j, &w) in p.iter().enumerate() {
            *o += w * v[j * hd + d];
        }
    }
}
