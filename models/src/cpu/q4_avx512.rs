//! The AVX-512 tier's 4-bit tile product (F, BW and VNNI: 16 lanes per register, one
//! `vpdpbusd` per 64 multiply-adds), bit-identical to `q4_scalar::tile4` (see its header for
//! the weight layout and the exact formula).
//!
//! Layout reminder: byte `w[b*256 + c*64 + l*4 + k]` of a tile holds `q` of input `4c + k`
//! of lane `l` in its low nibble and of input `16 + 4c + k` in its high nibble, so chunk `c`
//! (one 64-byte register) `& 0x0F` is group `c` of the 8-bit layout and `>> 4 & 0x0F` is
//! group `c + 4`.
//!
//! Integer sums: `_mm512_dpbusd_epi32(acc, x, q)` with the activation bytes `x = a + 128` as
//! the unsigned operand and the nibbles `q` (0..=15, non-negative as `i8`) as the signed one
//! gives `Σ (a + 128)·q` exactly (wrapping, never saturating). Each block's sum starts at
//! `−128·sums` (`sums` = `Σ q` of the lane), which leaves exactly `s1 = Σ a·q` for every
//! activation byte 0..=255.
//!
//! Float steps are the scalar tier's operations in the same order: `cvtepi32_ps(s1)`,
//! `sd = cvtph(d) * dx`, `fmadd(s1, sd, acc)`, then `sm = cvtph(m) * dx`,
//! `fmadd(s2 as f32, sm, acc)`.

use core::arch::x86_64::*;

use half::f16;

use super::{BLOCK, TILE};

/// Bytes of 4-bit weights per block of one tile (16 lanes × 32 inputs / 2).
const TB4: usize = TILE * BLOCK / 2;
/// 64-byte chunks per block: chunk `c` holds groups `c` (low nibbles) and `c + 4` (high).
const CHUNKS: usize = BLOCK / 8;
/// How many blocks ahead `ahead` prefetches (2 KiB of weights).
const AHEAD: usize = 8;

/// Packed 4-bit tile product, see `q4_scalar::tile4`.
///
/// Every n runs in one pass: the 8 unpacked weight registers of a block are shared by all
/// rows (with 16 rows some accumulators live on the stack, as in the 8-bit tier; two passes
/// of 8 measured the same).
/// `sums[b*16 + l]` must equal the sum of lane `l`'s 32 `q`s of block `b`.
///
/// # Safety
/// - The CPU must support AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
/// - `n` must be one of 1, 2, 3, 4, 8, 16 (anything else panics).
/// - `w.len() >= blocks*256`, `d.len() >= blocks*16`, `m.len() >= blocks*16`,
///   `sums.len() >= blocks*16` (asserted).
/// - For every `r < n`, `x + r*x_stride` must be valid for reading `blocks*32` bytes; `dx`
///   and `sx` valid for reading `n*blocks` values each; `y + r*y_stride` valid for writing
///   16 floats, not overlapping any input.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn tile4(
    n: usize,
    w: &[u8],
    d: &[f16],
    m: &[f16],
    sums: &[i16],
    blocks: usize,
    x: *const u8,
    x_stride: usize,
    dx: *const f32,
    sx: *const i32,
    y: *mut f32,
    y_stride: usize,
    ahead: bool,
) {
    assert!(w.len() >= blocks * TB4 && d.len() >= blocks * TILE && m.len() >= blocks * TILE);
    assert!(sums.len() >= blocks * TILE);
    let (w, d, m, s) = (w.as_ptr(), d.as_ptr(), m.as_ptr(), sums.as_ptr());
    // SAFETY: the caller guarantees the contract above; every pass gets the pointers of its
    // own rows (`r0..r0+R`, all `< n`).
    unsafe {
        let at = |r0: usize| {
            (
                x.wrapping_add(r0 * x_stride),
                dx.wrapping_add(r0 * blocks),
                sx.wrapping_add(r0 * blocks),
                y.wrapping_add(r0 * y_stride),
            )
        };
        macro_rules! go {
            ($r:literal, $a:expr, $r0:expr) => {{
                let (xr, dr, sr, yr) = at($r0);
                if $a {
                    rows::<$r, true>(w, d, m, s, blocks, xr, x_stride, dr, sr, yr, y_stride)
                } else {
                    rows::<$r, false>(w, d, m, s, blocks, xr, x_stride, dr, sr, yr, y_stride)
                }
            }};
        }
        match n {
            1 => go!(1, ahead, 0),
            2 => go!(2, ahead, 0),
            3 => go!(3, ahead, 0),
            4 => go!(4, ahead, 0),
            8 => go!(8, ahead, 0),
            // Only the first pass prefetches; the second hits the cache.
            16 => go!(16, ahead, 0),
            _ => unreachable!("tile4: unsupported row count {n}"),
        }
    }
}

/// Prefetch block `b + AHEAD`: its 4 lines of weights every block, `d`, `m` and `sums`
/// every other block (two blocks share one 64-byte line of each). The pointers use
/// `wrapping_add` and are never dereferenced; prefetches never fault.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn prefetch(w: *const u8, d: *const f16, m: *const f16, s: *const i16, b: usize) {
    let wb = w.wrapping_add((b + AHEAD) * TB4);
    for l in 0..TB4 / 64 {
        _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(l * 64).cast());
    }
    if b.is_multiple_of(2) {
        let at = (b + AHEAD) * TILE;
        _mm_prefetch::<_MM_HINT_T0>(d.wrapping_add(at).cast());
        _mm_prefetch::<_MM_HINT_T0>(m.wrapping_add(at).cast());
        _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(at).cast());
    }
}

/// `R` rows of one tile over all blocks. For `R <= 2` each row keeps two integer chains
/// (low / high nibbles) so that a lone row is not bound by the latency of eight dependent
/// `vpdpbusd`s; more rows are independent chains enough, and save the `add` of the two.
///
/// # Safety
/// As [`tile4`] for rows `0..R` of the given `x`, `dx`, `sx` and `y` pointers, with
/// `w`/`d`/`m`/`s` pointing at `blocks` blocks.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn rows<const R: usize, const AHEAD_ON: bool>(
    w: *const u8,
    d: *const f16,
    m: *const f16,
    s: *const i16,
    blocks: usize,
    x: *const u8,
    x_stride: usize,
    dx: *const f32,
    sx: *const i32,
    y: *mut f32,
    y_stride: usize,
) {
    let zero = _mm512_setzero_si512();
    let low = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..blocks {
        if AHEAD_ON {
            prefetch(w, d, m, s, b);
        }
        let wb = w.wrapping_add(b * TB4);
        // Unpacked weights: `q[c]` is group `c` (low nibbles), `q[c + 4]` group `c + 4`.
        let mut q = [zero; 2 * CHUNKS];
        for c in 0..CHUNKS {
            // SAFETY: `b*256 + c*64 + 64 <= blocks*256 <= w.len()`.
            let v = unsafe { _mm512_loadu_si512(wb.wrapping_add(c * 64).cast()) };
            q[c] = _mm512_and_si512(v, low);
            q[c + CHUNKS] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
        }
        // SAFETY: `b*16 + 16 <= blocks*16 <= sums.len(), d.len(), m.len()`.
        let (c0, dv, mv) = unsafe {
            let at = b * TILE;
            (
                _mm512_cvtepi16_epi32(_mm256_loadu_si256(s.wrapping_add(at).cast())),
                _mm512_cvtph_ps(_mm256_loadu_si256(d.wrapping_add(at).cast())),
                _mm512_cvtph_ps(_mm256_loadu_si256(m.wrapping_add(at).cast())),
            )
        };
        // −128·Σq undoes the +128 offset of the activations.
        let c0 = _mm512_sub_epi32(zero, _mm512_slli_epi32::<7>(c0));
        for (r, a) in acc.iter_mut().enumerate() {
            let xb = x.wrapping_add(r * x_stride + b * BLOCK).cast::<i32>();
            let (mut sl, mut sh) = (c0, zero);
            for c in 0..CHUNKS {
                // SAFETY: row `r < R` is readable for `blocks*32` bytes and
                // `b*32 + 4*(c + 4) + 4 <= blocks*32`; unaligned reads.
                let (xl, xh) = unsafe {
                    (
                        _mm512_set1_epi32(xb.wrapping_add(c).read_unaligned()),
                        _mm512_set1_epi32(xb.wrapping_add(c + CHUNKS).read_unaligned()),
                    )
                };
                sl = _mm512_dpbusd_epi32(sl, xl, q[c]);
                if R <= 2 {
                    sh = _mm512_dpbusd_epi32(sh, xh, q[c + CHUNKS]);
                } else {
                    sl = _mm512_dpbusd_epi32(sl, xh, q[c + CHUNKS]);
                }
            }
            // SAFETY: `dx` and `sx` are readable for `R*blocks` values.
            let (dxr, s2) = unsafe {
                (
                    _mm512_set1_ps(*dx.wrapping_add(r * blocks + b)),
                    _mm512_cvtepi32_ps(_mm512_set1_epi32(*sx.wrapping_add(r * blocks + b))),
                )
            };
            let s1 = _mm512_cvtepi32_ps(_mm512_add_epi32(sl, sh));
            *a = _mm512_fmadd_ps(s1, _mm512_mul_ps(dv, dxr), *a);
            *a = _mm512_fmadd_ps(s2, _mm512_mul_ps(mv, dxr), *a);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: row `r < R` of `y` is writable for 16 floats.
        unsafe { _mm512_storeu_ps(y.wrapping_add(r * y_stride), *a) };
    }
}
