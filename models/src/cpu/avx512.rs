//! The AVX-512 tier (F, BW and VNNI): 16 lanes, one `vpdpbusd` per 64 multiply-adds. Each
//! kernel is the twin of the reference named in its doc, bit for bit (tested in the topical
//! modules against the portable table).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use half::f16;

use super::avx2::{max8, sum8};
use super::caps::Table;
use super::elementwise::{LN2_HI, LN2_LO, POLY};
use super::{BLOCK, TILE};

pub(super) static TABLE: Table = Table {
    tile,
    tile4: super::q4_avx512::tile4,
    up,
    amax,
    round_block,
    quantize_transposed,
    dot,
    dot_f16,
    dot4_f16,
    axpy_f16,
    silu_mul,
    exp_shifted,
    attn_scores: super::attn_avx2::scores,
    attn_wsum: super::attn_avx2::wsum,
};

/// `scalar::tile`, 16 outputs per register.
///
/// # Safety
/// As `scalar::tile`, on a CPU with this tier's features.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn tile(
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
    assert!(w.len() >= blocks * TILE * BLOCK && d.len() >= blocks * TILE);
    assert!(sums.len() >= blocks * TILE);
    // SAFETY: the caller's contract, passed on.
    unsafe {
        let f = match n {
            16 => tile_rows::<16>,
            8 => tile_rows::<8>,
            4 => tile_rows::<4>,
            3 => tile_rows::<3>,
            2 => tile_rows::<2>,
            1 => tile_rows::<1>,
            // Outputs are not zeroed first: a row count without a kernel must not pass for one.
            _ => unreachable!("tile of {n} rows"),
        };
        f(w, d, sums, blocks, x, x_stride, dx, y, y_stride, ahead)
    }
}

/// `scalar::up`.
///
/// # Safety
/// As `scalar::up`, on a CPU with this tier's features.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn up(
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
    assert!((1..=4).contains(&n) && r4.is_multiple_of(4) && len.is_multiple_of(n));
    let tiles = len / n / TILE;
    assert!((len / n).is_multiple_of(TILE) && q.len() >= tiles * r4 * TILE && u.len() >= n * r4);
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match (n, add) {
            (4, true) => up_any::<4, true>(q, u, r4, corr, du, out, len),
            (3, true) => up_any::<3, true>(q, u, r4, corr, du, out, len),
            (2, true) => up_any::<2, true>(q, u, r4, corr, du, out, len),
            (_, true) => up_any::<1, true>(q, u, r4, corr, du, out, len),
            (4, false) => up_any::<4, false>(q, u, r4, corr, du, out, len),
            (3, false) => up_any::<3, false>(q, u, r4, corr, du, out, len),
            (2, false) => up_any::<2, false>(q, u, r4, corr, du, out, len),
            (_, false) => up_any::<1, false>(q, u, r4, corr, du, out, len),
        }
    }
}

/// The mask for the next 16 of `left` values: every lane, or the first `left`.
fn lanes(left: usize) -> u16 {
    if left >= 16 {
        !0
    } else {
        (1 << left) - 1
    }
}

/// `block::amax`: `maxps` of the halves, then the same tree down to one lane.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn amax(src: &[f32; 32]) -> f32 {
    // SAFETY: two loads of 16 inside the block.
    let (a, b) = unsafe {
        (
            _mm512_loadu_ps(src.as_ptr()),
            _mm512_loadu_ps(src.as_ptr().add(16)),
        )
    };
    let m = _mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b));
    let m8 = _mm256_max_ps(_mm512_castps512_ps256(m), hi8(m));
    max8(m8)
}

/// Lanes 8-15.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn hi8(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// `delta::reduce16` of one register.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn sum16(v: __m512) -> f32 {
    sum8(_mm256_add_ps(_mm512_castps512_ps256(v), hi8(v)))
}

/// `block::round` of 16 values, as integers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn round(v: __m512) -> __m512i {
    let v = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    let v = _mm512_max_ps(
        _mm512_min_ps(v, _mm512_set1_ps(127.0)),
        _mm512_set1_ps(-127.0),
    );
    _mm512_cvttps_epi32(v)
}

/// `block::round_block`.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn round_block(src: &[f32; 32], id: f32, offset: i32, q: &mut [u8; 32]) -> i32 {
    let (idv, off) = (_mm512_set1_ps(id), _mm512_set1_epi32(offset));
    let mut sum = _mm512_setzero_si512();
    for half in 0..2 {
        // SAFETY: 16 values inside the block.
        let v = unsafe { _mm512_loadu_ps(src.as_ptr().add(16 * half)) };
        let r = round(_mm512_mul_ps(v, idv));
        sum = _mm512_add_epi32(sum, r);
        // Values are within 1..=255 (u8) or -127..=127 (i8): truncating to bytes is exact.
        let i = _mm512_cvtepi32_epi8(_mm512_add_epi32(r, off));
        // SAFETY: 16 bytes inside the block.
        unsafe { _mm_storeu_si128(q.as_mut_ptr().add(16 * half) as *mut __m128i, i) };
    }
    _mm512_reduce_add_epi32(sum)
}

/// `q[t][g][lane][i] = round(b[t·16 + lane][4g + i] · ids[4g + i]) + 128` (ties to even,
/// ±127), for `b` `[out, r4]` row-major with `r4 = ids.len()` a multiple of 4. Each row of
/// `b` is read in order, 16 ranks at a time, and each group of 4 stored to its lane (the
/// gathers across rows this replaced were a tenth of a cold load). `block::quantize_transposed`.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn quantize_transposed(b: &[f32], ids: &[f32], q: &mut [u8]) {
    // SAFETY: the asserts above keep every load inside `b` and `ids` (masked past r4) and every store inside `q`.
    unsafe {
        let r4 = ids.len();
        let rows = b.len() / r4.max(1);
        assert!(
            r4.is_multiple_of(4)
                && b.len() == rows * r4
                && rows.is_multiple_of(TILE)
                && q.len() >= rows * r4
        );
        let off = _mm512_set1_epi32(128);
        for o in 0..rows {
            let (t, lane) = (o / TILE, o % TILE);
            let src = b.as_ptr().add(o * r4);
            for c in (0..r4).step_by(16) {
                let n = (r4 - c).min(16);
                let mask = lanes(n);
                let v = _mm512_maskz_loadu_ps(mask, src.add(c));
                let id = _mm512_maskz_loadu_ps(mask, ids.as_ptr().add(c));
                let v = round(_mm512_mul_ps(v, id));
                // 1..=255 after the offset: truncating to bytes is exact.
                let bytes: [u32; 4] =
                    std::mem::transmute(_mm512_cvtepi32_epi8(_mm512_add_epi32(v, off)));
                for (j, four) in bytes.iter().take(n / 4).enumerate() {
                    let g = c / 4 + j;
                    let dst = q.as_mut_ptr().add(((t * r4 / 4 + g) * TILE + lane) * 4);
                    (dst as *mut u32).write_unaligned(*four);
                }
            }
        }
    }
}

/// Blocks (576 bytes of weights, scales and sums each) between a block and the one it
/// prefetches (chosen by `benches/engine.rs` among 2, 4, 8 and 16).
const AHEAD: usize = 4;

/// `R` rows × one tile of 16 outputs. Row `r`'s activations start at `x + r·x_stride`, its
/// block scales at `dx + r·blocks`, its 16 results go to `y + r·y_stride`.
///
/// With `ahead`, each block prefetches the one [`AHEAD`] blocks on (into the next tile's,
/// which follows in memory): the hardware prefetcher restarts at every 4 KiB page, and
/// these weights are streamed from memory once per step (adapters' `A` passes run here
/// too).
///
/// # Safety
/// As `scalar::tile`, on a CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows<const R: usize>(
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
    // SAFETY: the caller's contract (see the function's # Safety) covers every access below.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..blocks {
            let wb = w.as_ptr().add(b * TILE * BLOCK);
            if ahead {
                // Prefetches never fault: past the end of the weights they are only wasted.
                let p = wb.wrapping_add(AHEAD * TILE * BLOCK);
                for line in 0..TILE * BLOCK / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line));
                }
                // Scales and sums: 32 bytes per block, a line every other block.
                if b % 2 == 0 {
                    let at = (b + AHEAD) * TILE;
                    _mm_prefetch::<_MM_HINT_T0>(sums.as_ptr().wrapping_add(at) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(d.as_ptr().wrapping_add(at) as *const i8);
                }
            }
            let mut ws = [_mm512_setzero_si512(); 8];
            for (g, v) in ws.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wb.add(g * 64) as *const _);
            }
            // -128·Σw undoes the +128 offset of the activations; scales are f16 as in Q8_0.
            let sum = _mm512_cvtepi16_epi32(_mm256_loadu_si256(
                sums.as_ptr().add(b * TILE) as *const __m256i
            ));
            let n = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(sum));
            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(
                d.as_ptr().add(b * TILE) as *const __m256i
            ));
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = x.add(r * x_stride + b * BLOCK) as *const i32;
                // Two independent chains (integer sums: the split changes no result) so that a
                // lone row is not bound by the latency of eight dependent `vpdpbusd`s.
                let (mut s0, mut s1) = (n, _mm512_setzero_si512());
                for g in (0..8).step_by(2) {
                    let x0 = _mm512_set1_epi32(xb.add(g).read_unaligned());
                    let x1 = _mm512_set1_epi32(xb.add(g + 1).read_unaligned());
                    s0 = _mm512_dpbusd_epi32(s0, x0, ws[g]);
                    s1 = _mm512_dpbusd_epi32(s1, x1, ws[g + 1]);
                }
                let s = _mm512_add_epi32(s0, s1);
                let scale = _mm512_mul_ps(dv, _mm512_set1_ps(*dx.add(r * blocks + b)));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(y.add(r * y_stride), *a);
        }
    }
}

/// `up::<N, G>` with `G` the lanes of 4 ranks where it is 2 or 4 (ranks 8 and 16), so that
/// each row's intermediate is broadcast once per call and held in registers; other ranks
/// take `G = 0`, which reads the lane count at run time and broadcasts per tile.
///
/// # Safety
/// As `scalar::up`, on a CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn up_any<const N: usize, const ADD: bool>(
    q: &[u8],
    u: &[i8],
    r4: usize,
    corr: &[i32; 4],
    du: &[f32; 4],
    out: *mut f32,
    len: usize,
) {
    // SAFETY: the caller's contract (see the function's # Safety) covers every access below.
    unsafe {
        match r4 / 4 {
            4 => up_rows::<N, 4, ADD>(q, u, r4, corr, du, out, len),
            2 => up_rows::<N, 2, ADD>(q, u, r4, corr, du, out, len),
            _ => up_rows::<N, 0, ADD>(q, u, r4, corr, du, out, len),
        }
    }
}

/// For each of `N` rows `j` (`out` rows of `len/N`):
/// `out[t·16 + lane] += du[j] · (Σ_k u[j][k] · q[t][k][lane] − corr[j])`, `k < r4` (with
/// `ADD`; else `=`, as added to `+0.0`, reading nothing from `out`): the
/// sums are exact integers, so a row's result is the same whatever rows share the call.
/// Each output is stored once (and, with `ADD`, loaded once), each weight loaded once for
/// all rows. `G`: see
/// [`up_any`] (`G > 0` requires `r4 == 4·G`).
///
/// # Safety
/// As `scalar::up`, on a CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn up_rows<const N: usize, const G: usize, const ADD: bool>(
    q: &[u8],
    u: &[i8],
    r4: usize,
    corr: &[i32; 4],
    du: &[f32; 4],
    op: *mut f32,
    len: usize,
) {
    // SAFETY: the caller's contract (see the function's # Safety) covers every access below.
    unsafe {
        let width = len / N;
        let tiles = width / TILE;
        let groups = if G > 0 { G } else { r4 / 4 };
        debug_assert!(len == N * tiles * TILE && q.len() >= tiles * r4 * TILE);
        debug_assert!(N <= 4 && u.len() >= N * r4 && (G == 0 || r4 == 4 * G));
        let up = u.as_ptr();
        let bcast = |j: usize, g: usize| {
            _mm512_set1_epi32((up.add(j * r4 + 4 * g) as *const i32).read_unaligned())
        };
        let mut held = [[_mm512_setzero_si512(); G]; N];
        for (j, row) in held.iter_mut().enumerate() {
            for (g, v) in row.iter_mut().enumerate() {
                *v = bcast(j, g);
            }
        }
        let ub = |j: usize, g: usize| if G > 0 { held[j][g] } else { bcast(j, g) };
        let (corr, du) = (
            corr.map(|c| _mm512_set1_epi32(-c)),
            du.map(|d| _mm512_set1_ps(d)),
        );
        for t in 0..tiles {
            let w = q.as_ptr().add(t * r4 * TILE);
            let load = |g: usize| _mm512_loadu_si512(w.add(g * 4 * TILE) as *const _);
            // Two chains per row, so a lone row is not bound by dependent `vpdpbusd`s.
            let mut s0: [__m512i; N] = std::array::from_fn(|j| corr[j]);
            let mut s1 = [_mm512_setzero_si512(); N];
            let mut g = 0;
            while g + 2 <= groups {
                let (w0, w1) = (load(g), load(g + 1));
                for j in 0..N {
                    s0[j] = _mm512_dpbusd_epi32(s0[j], w0, ub(j, g));
                    s1[j] = _mm512_dpbusd_epi32(s1[j], w1, ub(j, g + 1));
                }
                g += 2;
            }
            if g < groups {
                let w0 = load(g);
                for (j, s) in s0.iter_mut().enumerate() {
                    *s = _mm512_dpbusd_epi32(*s, w0, ub(j, g));
                }
            }
            for j in 0..N {
                let o = op.add(j * width + t * TILE);
                let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0[j], s1[j]));
                let v = if ADD {
                    _mm512_fmadd_ps(s, du[j], _mm512_loadu_ps(o))
                } else {
                    // One rounding either way; `+ 0.0` turns a -0.0 product into +0.0 as
                    // `fma(s, du, 0.0)` does, so writing equals adding to zeros bit for bit.
                    _mm512_add_ps(_mm512_mul_ps(s, du[j]), _mm512_setzero_ps())
                };
                _mm512_storeu_ps(o, v);
            }
        }
    }
}

/// How far ahead (in f16 values) the f16 passes prefetch: 1 KB. Short streams (a few KB per
/// row) barely train the hardware prefetcher; prefetching past the end is harmless.
const AHEAD_F16: usize = 512;

/// `slices::dot`: the 16 lanes in one register.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let (n, full) = (a.len(), a.len() / 16 * 16);
    let mut acc = _mm512_setzero_ps();
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 ≤ full ≤ n values of both.
        let (x, y) = unsafe {
            (
                _mm512_loadu_ps(a.as_ptr().add(i)),
                _mm512_loadu_ps(b.as_ptr().add(i)),
            )
        };
        acc = _mm512_fmadd_ps(x, y, acc);
    }
    let mut sum = sum16(acc);
    for j in full..n {
        sum = a[j].mul_add(b[j], sum);
    }
    sum
}

/// `delta::dot_f16`: the 16 lanes in one register.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_f16(a: &[f16], x: &[f32]) -> f32 {
    assert_eq!(a.len(), x.len());
    let (n, full) = (a.len(), a.len() / 16 * 16);
    let (pa, px) = (a.as_ptr() as *const u16, x.as_ptr());
    let mut acc = _mm512_setzero_ps();
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 ≤ full ≤ n values of both.
        let (h, xv) = unsafe {
            (
                _mm256_loadu_si256(pa.add(i) as *const __m256i),
                _mm512_loadu_ps(px.add(i)),
            )
        };
        acc = _mm512_fmadd_ps(_mm512_cvtph_ps(h), xv, acc);
    }
    let mut sum = sum16(acc);
    for j in full..n {
        sum = a[j].to_f32().mul_add(x[j], sum);
    }
    sum
}

/// `delta::dot4_f16`: four rows sharing each load of `x`, as independent chains.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn dot4_f16(a: &[f16], x: &[f32]) -> [f32; 4] {
    let n = x.len();
    assert_eq!(a.len(), 4 * n);
    let full = n / 16 * 16;
    let (pa, px) = (a.as_ptr() as *const u16, x.as_ptr());
    let mut s = [_mm512_setzero_ps(); 4];
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 ≤ full ≤ n values of `x`.
        let xv = unsafe { _mm512_loadu_ps(px.add(i)) };
        for (k, acc) in s.iter_mut().enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(k * n + i + AHEAD_F16) as *const i8);
            // SAFETY: row k's values i..i+16 lie inside `a` (4 rows of n).
            let h = unsafe { _mm256_loadu_si256(pa.add(k * n + i) as *const __m256i) };
            *acc = _mm512_fmadd_ps(_mm512_cvtph_ps(h), xv, *acc);
        }
    }
    std::array::from_fn(|k| {
        let mut sum = sum16(s[k]);
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
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn axpy_f16(out: &mut [f32], t: f32, b: &[f16]) {
    assert_eq!(out.len(), b.len());
    let (n, full) = (out.len(), out.len() / 16 * 16);
    let (pb, po) = (b.as_ptr() as *const u16, out.as_mut_ptr());
    let tv = _mm512_set1_ps(t);
    for i in (0..full).step_by(16) {
        _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(i + AHEAD_F16) as *const i8);
        // SAFETY: i + 16 ≤ full ≤ n values of both.
        unsafe {
            let h = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(i) as *const __m256i));
            _mm512_storeu_ps(
                po.add(i),
                _mm512_fmadd_ps(tv, h, _mm512_loadu_ps(po.add(i))),
            );
        }
    }
    for j in full..n {
        out[j] = t.mul_add(b[j].to_f32(), out[j]);
    }
}

/// `elementwise::silu_mul_ref`, 16 values at a time, the tail masked.
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(g.len() == u.len() && out.len() == g.len());
    let (n, one) = (g.len(), _mm512_set1_ps(1.0));
    for i in (0..n).step_by(16) {
        let mask = lanes(n - i);
        // SAFETY: masked loads and stores of the lanes before `n`.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, g.as_ptr().add(i));
            let v = _mm512_maskz_loadu_ps(mask, u.as_ptr().add(i));
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
            let s = _mm512_div_ps(x, _mm512_add_ps(one, e));
            let o = out.as_mut_ptr().add(i) as *mut f32;
            _mm512_mask_storeu_ps(o, mask, _mm512_mul_ps(s, v));
        }
    }
}

/// `elementwise::exp_shifted_ref`, 16 at a time, the tail masked (its lanes add zeros).
///
/// # Safety
/// A CPU with this tier's features.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn exp_shifted(v: &mut [f32], max: f32) -> f32 {
    let (n, m) = (v.len(), _mm512_set1_ps(max));
    let mut sum = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let mask = lanes(n - i);
        // SAFETY: masked loads and stores of the lanes before `n`.
        let e = unsafe {
            let p = v.as_mut_ptr().add(i);
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p), m));
            _mm512_mask_storeu_ps(p, mask, e);
            e
        };
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, e));
    }
    sum16(sum)
}

/// `elementwise::exp` of 16 values; `vscalefps` is the one rounding `elementwise::scale` spells
/// out in two exact steps.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn exp(x: __m512) -> __m512 {
    // `vmaxps`/`vminps` return their second operand when either is NaN: `x` goes second.
    let x = _mm512_min_ps(
        _mm512_set1_ps(89.0),
        _mm512_max_ps(_mm512_set1_ps(-104.0), x),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(POLY[0]);
    for c in &POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    _mm512_scalef_ps(y, n)
}
