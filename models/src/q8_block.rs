//! Q8_0's block rounding (blocks of 32, one scale each), for weights as they are packed and
//! for activations on every product: the scalar form and an AVX-512 form that gives the same
//! numbers (tested), since the activations of every projection of every step go through it.

pub(crate) const BLOCK: usize = 32;

/// One row's activations as [`quantize_rows`] makes them.
#[derive(Clone, Copy)]
pub(crate) struct QuantRow<'a> {
    pub xq: &'a [u8],
    pub dx: &'a [f32],
}

/// Per row and block of 32: `scale = max|x|/127`, bytes `round(x/scale) + 128`.
pub(crate) fn quantize_rows(xs: &[f32], rows: usize, inp: usize) -> (Vec<u8>, Vec<f32>) {
    let blocks = inp / BLOCK;
    let mut xq = vec![0u8; rows * inp];
    let mut dx = vec![0f32; rows * blocks];
    let simd = has_simd();
    for ((src, q), d) in xs
        .chunks_exact(BLOCK)
        .zip(xq.chunks_exact_mut(BLOCK))
        .zip(dx.iter_mut())
    {
        let amax = block_amax(src, simd);
        *d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        round_into(src, id, 128, q.try_into().expect("a whole block"), simd);
    }
    (xq, dx)
}

/// Q8_0's rounding of one weight block (`d = max|w|/127`, `q = round(w/d)`): returns `(d, Σq)`.
pub(crate) fn weight_block(src: &[f32], q: &mut [i8; BLOCK], simd: bool) -> (f32, i32) {
    let d = block_amax(src, simd) / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut bytes = [0u8; BLOCK];
    let sum = round_into(src, id, 0, &mut bytes, simd);
    for (q, b) in q.iter_mut().zip(bytes) {
        *q = b as i8; // two's complement: the bytes are the i8 values
    }
    (d, sum)
}

/// `q[j] = round(src[j] · id) + offset` as bytes (`offset` 0: i8 values as their bytes, 128:
/// u8), by [`x86::round_block`] when `simd`; returns `Σ round(src[j] · id)`.
fn round_into(src: &[f32], id: f32, offset: i32, q: &mut [u8; BLOCK], simd: bool) -> i32 {
    assert_eq!(src.len(), BLOCK);
    if simd {
        // SAFETY: `simd` means AVX-512F/BW were detected (`has_simd`); `src` and `q` hold a
        // whole block.
        unsafe { x86::round_block(src.as_ptr(), id, offset, q.as_mut_ptr()) }
    } else {
        let mut sum = 0;
        for (q, &v) in q.iter_mut().zip(src) {
            let r = round(v * id) as i32;
            sum += r;
            *q = (r + offset) as u8;
        }
        sum
    }
}

/// `max |v|` over one block; `simd` as [`has_simd`] says.
fn block_amax(src: &[f32], simd: bool) -> f32 {
    assert_eq!(src.len(), BLOCK);
    if simd {
        // SAFETY: AVX-512F detected by the caller; `src` holds a whole block.
        unsafe { x86::amax(src.as_ptr()) }
    } else {
        src.iter().fold(0f32, |m, v| m.max(v.abs()))
    }
}

/// Ties to even, clamped to ±127: what [`x86::round_block`] computes for each finite value
/// (activations are not checked for NaN; a non-finite row is garbage either way, though the
/// two forms may give it different bytes).
fn round(v: f32) -> f32 {
    v.round_ties_even().clamp(-127.0, 127.0)
}

/// The vector forms of the block roundings (the same numbers as the scalar ones).
pub(crate) fn has_simd() -> bool {
    crate::host_kernels::cpu_has!("avx512f", "avx512bw")
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub(super) unsafe fn amax(_: *const f32) -> f32 {
        unreachable!("has_simd is false off x86_64")
    }

    pub(super) unsafe fn round_block(_: *const f32, _: f32, _: i32, _: *mut u8) -> i32 {
        unreachable!("has_simd is false off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// `max |v|` over one block of 32.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn amax(src: *const f32) -> f32 {
        let a = _mm512_abs_ps(_mm512_loadu_ps(src));
        let b = _mm512_abs_ps(_mm512_loadu_ps(src.add(16)));
        _mm512_reduce_max_ps(_mm512_max_ps(a, b))
    }

    /// `super::round` of 16 values, as integers.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn round(v: __m512) -> __m512i {
        let v = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        let v = _mm512_max_ps(
            _mm512_min_ps(v, _mm512_set1_ps(127.0)),
            _mm512_set1_ps(-127.0),
        );
        _mm512_cvttps_epi32(v)
    }

    /// `q[j] = super::round(src[j] · id) + offset` for one block of 32, as bytes (`offset` 0
    /// gives i8, 128 gives u8); returns `Σ round(src[j] · id)`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn round_block(src: *const f32, id: f32, offset: i32, q: *mut u8) -> i32 {
        let (idv, off) = (_mm512_set1_ps(id), _mm512_set1_epi32(offset));
        let mut sum = _mm512_setzero_si512();
        for half in 0..2 {
            let v = _mm512_mul_ps(_mm512_loadu_ps(src.add(16 * half)), idv);
            let r = round(v);
            sum = _mm512_add_epi32(sum, r);
            // Values are within 1..=255 (u8) or -127..=127 (i8): truncating to bytes is exact.
            let i = _mm512_add_epi32(r, off);
            _mm_storeu_si128(q.add(16 * half) as *mut __m128i, _mm512_cvtepi32_epi8(i));
        }
        _mm512_reduce_add_epi32(sum)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1].
    pub(crate) fn data(n: usize, salt: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ salt) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn vector_and_scalar_roundings_agree() {
        if !has_simd() {
            return;
        }
        // With max |w| = 127 the weight scale is 1, so x.5 values are exact ties (to even);
        // a factor of 2 then pushes the ends past ±127 into the clamp.
        let mut ties: Vec<f32> = (0..BLOCK).map(|j| j as f32 - 16.0 + 0.5).collect();
        ties[0] = 127.0;
        ties[1] = -127.0;
        let mut src = data(3 * BLOCK, 5);
        src.extend_from_slice(&ties);
        for block in src.chunks_exact(BLOCK) {
            let (mut qv, mut qs) = ([0i8; BLOCK], [0i8; BLOCK]);
            assert_eq!(
                weight_block(block, &mut qv, true),
                weight_block(block, &mut qs, false)
            );
            assert_eq!(qv, qs);
            for id in [127.0 / x86_amax(block), 2.0] {
                let mut v = [0u8; BLOCK];
                // SAFETY: has_simd checked above; whole blocks.
                let sum = unsafe { x86::round_block(block.as_ptr(), id, 128, v.as_mut_ptr()) };
                let s: Vec<u8> = block
                    .iter()
                    .map(|&x| (round(x * id) + 128.0) as u8)
                    .collect();
                assert_eq!(v.to_vec(), s);
                assert_eq!(
                    sum,
                    block.iter().map(|&x| round(x * id) as i32).sum::<i32>()
                );
            }
        }
        assert_eq!(round(2.5), 2.0);
        assert_eq!(round(-300.0), -127.0);
    }

    fn x86_amax(b: &[f32]) -> f32 {
        // SAFETY: callers checked has_simd; a whole block.
        let v = unsafe { x86::amax(b.as_ptr()) };
        assert_eq!(v, b.iter().fold(0f32, |m, x| m.max(x.abs())));
        v
    }
}
