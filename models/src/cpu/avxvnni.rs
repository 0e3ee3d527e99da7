//! The AVX-VNNI tier (256-bit `vpdpbusd`, VEX-encoded: Intel Alder Lake and later client
//! CPUs): its integer products; every other kernel is AVX2's. Bit-identical to `scalar`.
//!
//! Integer sums use `_mm256_dpbusd_avx_epi32(acc, a_u8, b_i8)`: four exact
//! `u8·i8` products per `i32` lane added to `acc` (wrapping, never
//! saturating). `tile` starts each block's sum at `−128·sums` and feeds the
//! activation bytes as `u8`; `up` starts at `−corr[j]` and feeds the `q` bytes
//! (`w + 128`) as `u8`. Both are exact for every byte value.
//!
//! Float steps are the same operations in the same order as the scalar tier:
//! `cvtepi32_ps(s)`, `scale = cvtph(d) * dx`, `fmadd(s, scale, acc)`.

use core::arch::x86_64::*;

use half::f16;

use super::caps::Table;
use super::{BLOCK, TILE};

pub(super) static TABLE: Table = Table {
    tile,
    tile4: super::q4_avxvnni::tile4,
    up,
    ..super::avx2::TABLE
};

/// Bytes of weights per block of one tile (16 lanes × 32 inputs).
const TB: usize = TILE * BLOCK;
/// Groups of 4 inputs per block.
const GROUPS: usize = BLOCK / 4;

/// Packed 8-bit tile product, see spec A (and `scalar::tile`).
///
/// Rows are processed in groups of at most 4 (n = 8, 16: 2 or 4 passes over
/// the tile's weights, each weight vector loaded once per block per pass).
/// `sums[b*16 + l]` must equal the sum of lane `l`'s 32 weights of block `b`.
///
/// # Safety
/// - The CPU must support AVX2, FMA, F16C and AVX-VNNI.
/// - `n` must be one of 1, 2, 3, 4, 8, 16 (anything else panics).
/// - `w.len() >= blocks*512`, `d.len() >= blocks*16`, `sums.len() >= blocks*16`
///   (not checked in release builds).
/// - For every `r < n`, `x + r*x_stride` must be valid for reading
///   `blocks*32` bytes; `dx` valid for reading `n*blocks` floats; `y +
///   r*y_stride` valid for writing 16 floats, not overlapping the inputs.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) unsafe fn tile(
    n: usize,
    w: &[i8],
    d: &[f16],
    sums: &[i16],
    blocks: usize,
    x: *const u8,
    x_stride: usize,
    dx: *const f32,
    y: *mut f32,
    y_stride: usize,
    ahead: bool,
) {
    debug_assert!(w.len() >= blocks * TB && d.len() >= blocks * TILE);
    debug_assert!(sums.len() >= blocks * TILE);
    let (w, d, s) = (w.as_ptr(), d.as_ptr(), sums.as_ptr());
    // SAFETY: the caller guarantees the contract above; every group call gets
    // the pointers of its own rows (`r0..r0+R`, all `< n`).
    unsafe {
        let at = |r0: usize| (x.wrapping_add(r0 * x_stride), dx.wrapping_add(r0 * blocks));
        let out = |r0: usize| y.wrapping_add(r0 * y_stride);
        macro_rules! go {
            ($r:literal, $a:expr, $r0:expr) => {{
                let (xr, dr) = at($r0);
                if $a {
                    rows::<$r, true>(w, d, s, blocks, xr, x_stride, dr, out($r0), y_stride)
                } else {
                    rows::<$r, false>(w, d, s, blocks, xr, x_stride, dr, out($r0), y_stride)
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
            _ => unreachable!("tile: unsupported row count {n}"),
        }
    }
}

/// Prefetch block `b + 4`: 8 lines of weights every block, `d` and `sums`
/// every other block (two blocks share one 64-byte line of each). The
/// pointers use `wrapping_add` and are never dereferenced; prefetches never
/// fault.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn prefetch(w: *const i8, d: *const f16, s: *const i16, b: usize) {
    let wb = w.wrapping_add((b + 4) * TB);
    for l in 0..TB / 64 {
        _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(l * 64));
    }
    if b.is_multiple_of(2) {
        _mm_prefetch::<_MM_HINT_T0>(d.wrapping_add((b + 4) * TILE).cast());
        _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add((b + 4) * TILE).cast());
    }
}

/// `R` rows (1..=4) of one tile over all blocks. For `R <= 2` each row-half
/// keeps two integer chains (even / odd groups) to halve the `vpdpbusd`
/// latency chain.
///
/// # Safety
/// As [`tile`] for rows `0..R` of the given `x`, `dx` and `y` pointers, with
/// `w`/`d`/`s` pointing at `blocks` blocks.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn rows<const R: usize, const AHEAD: bool>(
    w: *const i8,
    d: *const f16,
    s: *const i16,
    blocks: usize,
    x: *const u8,
    x_stride: usize,
    dx: *const f32,
    y: *mut f32,
    y_stride: usize,
) {
    let zero = _mm256_setzero_si256();
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..blocks {
        if AHEAD {
            prefetch(w, d, s, b);
        }
        let wb = w.wrapping_add(b * TB);
        // SAFETY: `b*16 + 16 <= blocks*16 <= sums.len()`.
        let (c0, c1) = unsafe { load2h(s.wrapping_add(b * TILE).cast()) };
        let c0 = _mm256_sub_epi32(zero, _mm256_slli_epi32::<7>(_mm256_cvtepi16_epi32(c0)));
        let c1 = _mm256_sub_epi32(zero, _mm256_slli_epi32::<7>(_mm256_cvtepi16_epi32(c1)));
        let mut sa = [[c0, c1]; R];
        let mut sb = [[zero; 2]; R];
        for g in 0..GROUPS {
            // SAFETY: `b*512 + g*64 + 64 <= blocks*512 <= w.len()`.
            let (w0, w1) = unsafe { load2(wb.wrapping_add(g * 64).cast()) };
            let si = if R <= 2 && g % 2 == 1 {
                &mut sb
            } else {
                &mut sa
            };
            for (r, sr) in si.iter_mut().enumerate() {
                let p = x.wrapping_add(r * x_stride + b * BLOCK + 4 * g);
                // SAFETY: row `r < R` is readable for `blocks*32` bytes and
                // `b*32 + 4g + 4 <= blocks*32`; unaligned read.
                let xb = _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() });
                sr[0] = _mm256_dpbusd_avx_epi32(sr[0], xb, w0);
                sr[1] = _mm256_dpbusd_avx_epi32(sr[1], xb, w1);
            }
        }
        // SAFETY: `b*16 + 16 <= blocks*16 <= d.len()`.
        let (d0, d1) = unsafe { load2h(d.wrapping_add(b * TILE).cast()) };
        let (d0, d1) = (_mm256_cvtph_ps(d0), _mm256_cvtph_ps(d1));
        for (r, a) in acc.iter_mut().enumerate() {
            let s0 = _mm256_add_epi32(sa[r][0], sb[r][0]);
            let s1 = _mm256_add_epi32(sa[r][1], sb[r][1]);
            // SAFETY: `dx` is readable for `R*blocks` floats.
            let dxr = _mm256_set1_ps(unsafe { *dx.wrapping_add(r * blocks + b) });
            a[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_mul_ps(d0, dxr), a[0]);
            a[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_mul_ps(d1, dxr), a[1]);
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

/// 8-bit LoRA up-projection, see spec B (and `scalar::up`).
///
/// Each row's sum starts at `−corr[j]` (`corr[j]` must be `128·Σ_k u[j][k]`).
/// For `r4` 8 or 16 the broadcast `u` values of every row are computed once
/// and held across tiles.
///
/// # Safety
/// - The CPU must support AVX2, FMA, F16C and AVX-VNNI.
/// - `1 <= n <= 4` (anything else panics); `r4` a multiple of 4, `>= 4`;
///   `len` a multiple of `16*n`.
/// - `q.len() >= tiles*r4*16`, `u.len() >= n*r4` (not checked in release).
/// - `out` valid for reading (when `add`) and writing `len` floats, not
///   overlapping the inputs.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) unsafe fn up(
    n: usize,
    add: bool,
    q: &[u8],
    u: &[i8],
    r4: usize,
    corr: &[i32; 4],
    du: &[f32; 4],
    out: *mut f32,
    len: usize,
) {
    debug_assert!(
        r4 >= 4 && r4.is_multiple_of(4) && (1..=4).contains(&n) && len.is_multiple_of(TILE * n)
    );
    let width = len / n.max(1);
    debug_assert!(q.len() >= width / TILE * r4 * TILE && u.len() >= n * r4);
    let (q, u) = (q.as_ptr(), u.as_ptr());
    macro_rules! go {
        ($n:literal, $add:literal) => {
            match r4 {
                8 => up_fixed::<$n, $add, 2>(q, u, corr, du, out, width),
                16 => up_fixed::<$n, $add, 4>(q, u, corr, du, out, width),
                _ => up_any::<$n, $add>(q, u, r4, corr, du, out, width),
            }
        };
    }
    // SAFETY: the caller guarantees the contract above.
    unsafe {
        match (n, add) {
            (1, false) => go!(1, false),
            (1, true) => go!(1, true),
            (2, false) => go!(2, false),
            (2, true) => go!(2, true),
            (3, false) => go!(3, false),
            (3, true) => go!(3, true),
            (4, false) => go!(4, false),
            (4, true) => go!(4, true),
            _ => unreachable!("up: unsupported row count {n}"),
        }
    }
}

/// Two 32-byte loads (one 64-byte group): lanes 0..8 and 8..16.
///
/// # Safety
/// `p` must be valid for reading 64 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn load2(p: *const u8) -> (__m256i, __m256i) {
    // SAFETY: `p..p+64` is readable (caller); unaligned loads.
    unsafe {
        (
            _mm256_loadu_si256(p.cast()),
            _mm256_loadu_si256(p.wrapping_add(32).cast()),
        )
    }
}

/// Broadcast the 4 bytes `u[j*r4 + 4g ..][..4]` of every row `j < N`.
///
/// # Safety
/// `u` must be readable for `N*r4` bytes and `4g + 4 <= r4`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn bcast<const N: usize>(u: *const i8, r4: usize, g: usize) -> [__m256i; N] {
    let mut ub = [_mm256_setzero_si256(); N];
    for (j, v) in ub.iter_mut().enumerate() {
        // SAFETY: `j*r4 + 4g + 4 <= N*r4` (caller); unaligned read.
        *v = _mm256_set1_epi32(unsafe {
            u.wrapping_add(j * r4 + 4 * g)
                .cast::<i32>()
                .read_unaligned()
        });
    }
    ub
}

/// Two 16-byte loads (8 `i16` / `f16` each): lanes 0..8 and 8..16.
///
/// # Safety
/// `p` must be valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn load2h(p: *const u8) -> (__m128i, __m128i) {
    // SAFETY: `p..p+32` is readable (caller); unaligned loads.
    unsafe {
        (
            _mm_loadu_si128(p.cast()),
            _mm_loadu_si128(p.wrapping_add(16).cast()),
        )
    }
}

/// Start values `−corr[j]` for both halves of every row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn init<const N: usize>(corr: &[i32; 4]) -> [[__m256i; 2]; N] {
    let mut s = [[_mm256_setzero_si256(); 2]; N];
    for (sj, &c) in s.iter_mut().zip(corr) {
        *sj = [_mm256_set1_epi32(c.wrapping_neg()); 2];
    }
    s
}

/// `Σ q·u` of one 64-byte group (16 lanes × 4 ranks) into `s` for all rows,
/// `q` as `u8`, `ub` = broadcast `u` as `i8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn group<const N: usize>(s: &mut [[__m256i; 2]; N], q: (__m256i, __m256i), ub: &[__m256i; N]) {
    for (sj, &b) in s.iter_mut().zip(ub) {
        sj[0] = _mm256_dpbusd_avx_epi32(sj[0], q.0, b);
        sj[1] = _mm256_dpbusd_avx_epi32(sj[1], q.1, b);
    }
}

/// Write (`ADD`: `fma(s, du, out)`, else `s*du + 0`) the 16 outputs of tile
/// `t` of every row.
///
/// # Safety
/// `out + j*width + t*16` must be valid for 16 floats (read when `ADD`) for
/// every `j < N`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn store<const N: usize, const ADD: bool>(
    s: &[[__m256i; 2]; N],
    du: &[f32; 4],
    out: *mut f32,
    width: usize,
    t: usize,
) {
    for (j, sj) in s.iter().enumerate() {
        let duj = _mm256_set1_ps(du[j]);
        for (h, &sh) in sj.iter().enumerate() {
            let p = out.wrapping_add(j * width + t * TILE + 8 * h);
            let v = _mm256_cvtepi32_ps(sh);
            // SAFETY: `p..p+8` is within row `j`'s tile `t` (caller).
            unsafe {
                if ADD {
                    _mm256_storeu_ps(p, _mm256_fmadd_ps(v, duj, _mm256_loadu_ps(p)));
                } else {
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_mul_ps(v, duj), _mm256_setzero_ps()));
                }
            }
        }
    }
}

/// `up` for `r4 = 4*G`: broadcast `u` held across all tiles.
///
/// # Safety
/// As [`up`] with `width = len / N`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn up_fixed<const N: usize, const ADD: bool, const G: usize>(
    q: *const u8,
    u: *const i8,
    corr: &[i32; 4],
    du: &[f32; 4],
    out: *mut f32,
    width: usize,
) {
    let mut ub = [[_mm256_setzero_si256(); N]; G];
    for (g, v) in ub.iter_mut().enumerate() {
        // SAFETY: `u` is readable for `N*4G` bytes.
        *v = unsafe { bcast::<N>(u, 4 * G, g) };
    }
    for t in 0..width / TILE {
        let mut s = init::<N>(corr);
        for (g, v) in ub.iter().enumerate() {
            // SAFETY: group `t*G + g < tiles*G` of `q` is readable.
            let qg = unsafe { load2(q.wrapping_add((t * G + g) * 64)) };
            group(&mut s, qg, v);
        }
        // SAFETY: tile `t < width/16` of each row `j < N` lies in `out`.
        unsafe { store::<N, ADD>(&s, du, out, width, t) };
    }
}

/// `up` for any `r4` (multiple of 4): two chains per row-half (even / odd
/// groups), broadcasts recomputed per group.
///
/// # Safety
/// As [`up`] with `width = len / N`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn up_any<const N: usize, const ADD: bool>(
    q: *const u8,
    u: *const i8,
    r4: usize,
    corr: &[i32; 4],
    du: &[f32; 4],
    out: *mut f32,
    width: usize,
) {
    let groups = r4 / 4;
    for t in 0..width / TILE {
        let mut s = [init::<N>(corr), [[_mm256_setzero_si256(); 2]; N]];
        for g in 0..groups {
            // SAFETY: group `t*groups + g` of `q` and ranks `4g..4g+4` of every
            // row of `u` are readable.
            let (qg, ub) = unsafe {
                (
                    load2(q.wrapping_add((t * groups + g) * 64)),
                    bcast::<N>(u, r4, g),
                )
            };
            group(&mut s[g % 2], qg, &ub);
        }
        let [mut a, b] = s;
        for (aj, bj) in a.iter_mut().zip(&b) {
            aj[0] = _mm256_add_epi32(aj[0], bj[0]);
            aj[1] = _mm256_add_epi32(aj[1], bj[1]);
        }
        // SAFETY: tile `t < width/16` of each row `j < N` lies in `out`.
        unsafe { store::<N, ADD>(&a, du, out, width, t) };
    }
}
