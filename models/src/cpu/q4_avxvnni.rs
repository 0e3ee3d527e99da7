//! The AVX-VNNI tier's 4-bit tile product (256-bit `vpdpbusd`, VEX-encoded), bit-identical
//! to `q4_scalar::tile4` (see its header for the weight layout and the exact formula).
//!
//! Layout reminder: byte `w[b*256 + c*64 + l*4 + k]` of a tile holds `q` of input `4c + k`
//! of lane `l` in its low nibble and of input `16 + 4c + k` in its high nibble, so chunk `c`
//! (64 bytes) `& 0x0F` is group `c` of the 8-bit layout and `>> 4 & 0x0F` is group `c + 4`.
//!
//! Integer sums: `_mm256_dpbusd_avx_epi32(acc, x, q)` with the activation bytes `x = a + 128`
//! as the unsigned operand and the nibbles `q` (0..=15, non-negative as `i8`) as the signed
//! one gives `Σ (a + 128)·q` exactly (wrapping `i32`, never saturating; the true value is far
//! inside `i32`). Each block's sum starts at `−128·sums` (`sums` = `Σ q` of the lane), which
//! leaves exactly `s1 = Σ a·q`. This holds for every activation byte 0..=255.
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
/// Rows are processed in groups of at most 4 (n = 8, 16: 2 or 4 passes over the tile's
/// weights, each weight vector loaded and unpacked once per block per pass).
/// `sums[b*16 + l]` must equal the sum of lane `l`'s 32 `q`s of block `b`.
///
/// # Safety
/// - The CPU must support AVX2, FMA, F16C and AVX-VNNI.
/// - `n` must be one of 1, 2, 3, 4, 8, 16 (anything else panics).
/// - `w.len() >= blocks*256`, `d.len() >= blocks*16`, `m.len() >= blocks*16`,
///   `sums.len() >= blocks*16` (asserted).
/// - For every `r < n`, `x + r*x_stride` must be valid for reading `blocks*32` bytes; `dx`
///   and `sx` valid for reading `n*blocks` values each; `y + r*y_stride` valid for writing
///   16 floats, not overlapping any input.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
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
            // Only the first pass prefetches; later passes hit the cache.
            8 | 16 => {
                for r0 in (0..n).step_by(4) {
                    go!(4, ahead && r0 == 0, r0);
                }
            }
            _ => unreachable!("tile4: unsupported row count {n}"),
        }
    }
}

/// Prefetch block `b + AHEAD`: its 4 lines of weights every block, `d`, `m` and `sums`
/// every other block (two blocks share one 64-byte line of each). The pointers use
/// `wrapping_add` and are never dereferenced; prefetches never fault.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
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

/// Two 128-bit loads (16 lanes of 16 bits): lanes 0..8 and 8..16.
///
/// # Safety
/// `p` must be valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn load2h(p: *const u8) -> [__m128i; 2] {
    // SAFETY: `p..p+32` is readable (caller); unaligned loads.
    unsafe {
        [
            _mm_loadu_si128(p.cast()),
            _mm_loadu_si128(p.wrapping_add(16).cast()),
        ]
    }
}

/// `R` rows (1..=4) of one tile over all blocks. For `R <= 2` each row-half keeps two
/// integer chains (low / high nibbles) to halve the `vpdpbusd` latency chain.
///
/// # Safety
/// As [`tile4`] for rows `0..R` of the given `x`, `dx`, `sx` and `y` pointers, with
/// `w`/`d`/`m`/`s` pointing at `blocks` blocks.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
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
    let zero = _mm256_setzero_si256();
    let low = _mm256_set1_epi8(0x0F);
    // The chain of the high nibbles: its own for `R <= 2`, else shared with the low ones.
    let hc = usize::from(R <= 2);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..blocks {
        if AHEAD_ON {
            prefetch(w, d, m, s, b);
        }
        let wb = w.wrapping_add(b * TB4);
        // SAFETY: `b*16 + 16 <= blocks*16 <= sums.len()`.
        let c = unsafe { load2h(s.wrapping_add(b * TILE).cast()) };
        let c = c.map(|v| _mm256_sub_epi32(zero, _mm256_slli_epi32::<7>(_mm256_cvtepi16_epi32(v))));
        // Per row and half: [low chain (starts at −128·sums), high chain].
        let mut si = [[[c[0], zero], [c[1], zero]]; R];
        for ch in 0..CHUNKS {
            let mut q = [[zero; 2]; 2];
            for (h, qh) in q.iter_mut().enumerate() {
                // SAFETY: `b*256 + ch*64 + h*32 + 32 <= blocks*256 <= w.len()`.
                let v = unsafe { _mm256_loadu_si256(wb.wrapping_add(ch * 64 + h * 32).cast()) };
                *qh = [
                    _mm256_and_si256(v, low),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), low),
                ];
            }
            for (r, sr) in si.iter_mut().enumerate() {
                let p = x.wrapping_add(r * x_stride + b * BLOCK + 4 * ch);
                // SAFETY: row `r < R` is readable for `blocks*32` bytes and
                // `b*32 + 16 + 4ch + 4 <= blocks*32`; unaligned reads.
                let (xl, xh) = unsafe {
                    (
                        _mm256_set1_epi32(p.cast::<i32>().read_unaligned()),
                        _mm256_set1_epi32(p.wrapping_add(16).cast::<i32>().read_unaligned()),
                    )
                };
                for (sh, qh) in sr.iter_mut().zip(&q) {
                    sh[0] = _mm256_dpbusd_avx_epi32(sh[0], xl, qh[0]);
                    sh[hc] = _mm256_dpbusd_avx_epi32(sh[hc], xh, qh[1]);
                }
            }
        }
        // SAFETY: `b*16 + 16 <= blocks*16 <= d.len(), m.len()`.
        let (dv, mv) = unsafe {
            (
                load2h(d.wrapping_add(b * TILE).cast()).map(|v| _mm256_cvtph_ps(v)),
                load2h(m.wrapping_add(b * TILE).cast()).map(|v| _mm256_cvtph_ps(v)),
            )
        };
        for (r, (a, sr)) in acc.iter_mut().zip(&si).enumerate() {
            // SAFETY: `dx` and `sx` are readable for `R*blocks` values.
            let (dxr, s2) = unsafe {
                (
                    _mm256_set1_ps(*dx.wrapping_add(r * blocks + b)),
                    _mm256_cvtepi32_ps(_mm256_set1_epi32(*sx.wrapping_add(r * blocks + b))),
                )
            };
            for h in 0..2 {
                let s1 = _mm256_cvtepi32_ps(_mm256_add_epi32(sr[h][0], sr[h][1]));
                a[h] = _mm256_fmadd_ps(s1, _mm256_mul_ps(dv[h], dxr), a[h]);
                a[h] = _mm256_fmadd_ps(s2, _mm256_mul_ps(mv[h], dxr), a[h]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let p = y.wrapping_add(r * y_stride);
        // SAFETY: row `r < R` of `y` is writable for 16 floats.
        unsafe {
            _mm256_storeu_ps(p, a[0]);
            _mm256_storeu_ps(p.wrapping_add(8), a[1]);
        }
    }
}
