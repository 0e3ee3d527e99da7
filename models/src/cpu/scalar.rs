//! The portable tier: plain Rust, the reference every vector tier equals bit for bit.

use core::slice;

use half::f16;

use super::caps::Table;
use super::{attention, block, delta, elementwise, slices, BLOCK, TILE};

pub(super) static TABLE: Table = Table {
    tile,
    tile4: super::q4_scalar::tile4,
    up,
    amax: block::amax,
    round_block: block::round_block,
    quantize_transposed: block::quantize_transposed,
    dot: slices::dot,
    dot_f16: delta::dot_f16,
    dot4_f16: delta::dot4_f16,
    axpy_f16: delta::axpy_f16,
    silu_mul: elementwise::silu_mul_ref,
    exp_shifted: elementwise::exp_shifted_ref,
    attn_scores: attention::scores_ref,
    attn_wsum: attention::wsum_ref,
};

/// Bytes of weights per block of one tile (16 lanes × 32 inputs).
const TB: usize = TILE * BLOCK;
/// Groups of 4 inputs per block.
const GROUPS: usize = BLOCK / 4;

/// Packed 8-bit tile product, see spec A.
///
/// For every row `r < n` and lane `l < 16`:
/// `acc = Σ_b fma(s_b as f32, d[b*16+l] as f32 * dx[r*blocks+b], acc)` in
/// block order starting from `0.0`, where `s_b = Σ (x_byte − 128)·w` is exact.
/// The result overwrites `y[r*y_stride + l]`; `y` is never read. `sums` is not
/// needed by this form (it computes `Σ q·w` directly) and `ahead` is only a
/// prefetch hint, so neither affects the result.
///
/// # Safety
/// - `n` must be one of 1, 2, 3, 4, 8, 16 (anything else panics).
/// - `w.len() >= blocks*512`, `d.len() >= blocks*16`, `sums.len() >= blocks*16`
///   (checked by slicing here, unchecked in the vector tiers).
/// - For every `r < n`, `x + r*x_stride` must be valid for reading
///   `blocks*32` bytes.
/// - `dx` must be valid for reading `n*blocks` `f32`s.
/// - For every `r < n`, `y + r*y_stride` must be valid for writing 16 `f32`s,
///   and those outputs must not overlap the inputs.
#[allow(clippy::too_many_arguments)]
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
    let _ = (sums, ahead);
    let w = &w[..blocks * TB];
    let d = &d[..blocks * TILE];
    // SAFETY: the caller guarantees the contract of `tile` (rows of `x`, `dx`
    // and rows of `y` valid for `n` rows), which is exactly `tile_n`'s.
    unsafe {
        match n {
            1 => tile_n::<1>(w, d, blocks, x, x_stride, dx, y, y_stride),
            2 => tile_n::<2>(w, d, blocks, x, x_stride, dx, y, y_stride),
            3 => tile_n::<3>(w, d, blocks, x, x_stride, dx, y, y_stride),
            4 => tile_n::<4>(w, d, blocks, x, x_stride, dx, y, y_stride),
            8 => tile_n::<8>(w, d, blocks, x, x_stride, dx, y, y_stride),
            16 => tile_n::<16>(w, d, blocks, x, x_stride, dx, y, y_stride),
            _ => unreachable!("tile: unsupported row count {n}"),
        }
    }
}

/// `tile` for a fixed row count `N`.
///
/// # Safety
/// As [`tile`], with `w`/`d` already sliced to exactly `blocks` blocks.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_n<const N: usize>(
    w: &[i8],
    d: &[f16],
    blocks: usize,
    x: *const u8,
    x_stride: usize,
    dx: *const f32,
    y: *mut f32,
    y_stride: usize,
) {
    let xs: [&[u8]; N] = core::array::from_fn(|r| {
        // SAFETY: the caller guarantees row `r < N` of `x` is readable for
        // `blocks*32` bytes; nothing writes to it during this call.
        unsafe { slice::from_raw_parts(x.wrapping_add(r * x_stride), blocks * BLOCK) }
    });
    // SAFETY: the caller guarantees `dx` is readable for `N*blocks` floats.
    let dx = unsafe { slice::from_raw_parts(dx, N * blocks) };
    let mut acc = [[0.0f32; TILE]; N];
    for b in 0..blocks {
        let wb: &[i8; TB] = w[b * TB..(b + 1) * TB].try_into().unwrap();
        let mut dl = [0.0f32; TILE];
        for (o, v) in dl.iter_mut().zip(&d[b * TILE..(b + 1) * TILE]) {
            *o = v.to_f32();
        }
        for r in 0..N {
            let xb: &[u8; BLOCK] = xs[r][b * BLOCK..(b + 1) * BLOCK].try_into().unwrap();
            let mut s = [0i32; TILE];
            for g in 0..GROUPS {
                let xq: [i32; 4] = core::array::from_fn(|k| xb[4 * g + k] as i32 - 128);
                let wg = &wb[g * 64..(g + 1) * 64];
                for lane in 0..TILE {
                    let wl = &wg[lane * 4..lane * 4 + 4];
                    s[lane] += xq[0] * wl[0] as i32
                        + xq[1] * wl[1] as i32
                        + xq[2] * wl[2] as i32
                        + xq[3] * wl[3] as i32;
                }
            }
            let dxr = dx[r * blocks + b];
            for lane in 0..TILE {
                let scale = dl[lane] * dxr;
                acc[r][lane] = (s[lane] as f32).mul_add(scale, acc[r][lane]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: the caller guarantees row `r < N` of `y` is writable for 16
        // floats; `write_unaligned` needs no alignment.
        unsafe {
            y.wrapping_add(r * y_stride)
                .cast::<[f32; TILE]>()
                .write_unaligned(*a)
        };
    }
}

/// 8-bit LoRA up-projection, see spec B.
///
/// `width = len / n`, `tiles = width / 16`, groups `G = r4 / 4`. For every row
/// `j < n` and output `o = t*16 + lane`:
/// `s = Σ_{k<4G} q[(t*G + k/4)*64 + lane*4 + k%4] · u[j*r4 + k] − corr[j]`
/// (exact, wrapping `i32`), then `out[j*width+o] = fma(s as f32, du[j], out)`
/// when `add`, else `out[j*width+o] = s as f32 * du[j] + 0.0` (not read).
///
/// # Safety
/// - `1 <= n <= 4` (anything else panics); `r4` a multiple of 4, `>= 4`;
///   `len` a multiple of `16*n`.
/// - `q.len() >= tiles*r4*16` and `u.len() >= n*r4` (checked here by slicing,
///   unchecked in the vector tiers).
/// - `out` must be valid for reading and writing `len` floats (reading only
///   when `add`) and must not overlap `q`, `u`, `corr` or `du`.
#[allow(clippy::too_many_arguments)]
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
    assert!((1..=4).contains(&n), "up: unsupported row count {n}");
    debug_assert!(r4 >= 4 && r4.is_multiple_of(4) && len.is_multiple_of(TILE * n));
    let width = len / n;
    let tiles = width / TILE;
    let groups = r4 / 4;
    let q = &q[..tiles * groups * 64];
    for j in 0..n {
        let uj = &u[j * r4..j * r4 + groups * 4];
        for t in 0..tiles {
            let mut s = [0i32; TILE];
            for (g, u4) in uj.chunks_exact(4).enumerate() {
                let qg = &q[(t * groups + g) * 64..(t * groups + g + 1) * 64];
                for (sl, q4) in s.iter_mut().zip(qg.chunks_exact(4)) {
                    let p = q4[0] as i32 * u4[0] as i32
                        + q4[1] as i32 * u4[1] as i32
                        + q4[2] as i32 * u4[2] as i32
                        + q4[3] as i32 * u4[3] as i32;
                    *sl = sl.wrapping_add(p);
                }
            }
            let o16 = out.wrapping_add(j * width + t * TILE);
            for (lane, sl) in s.into_iter().enumerate() {
                let v = sl.wrapping_sub(corr[j]) as f32;
                let o = o16.wrapping_add(lane);
                // SAFETY: `j*width + t*16 + lane < len`, and the caller
                // guarantees `out` is valid for `len` floats (read only when
                // `add`; raw accesses, so uninitialised output is fine).
                unsafe {
                    if add {
                        *o = v.mul_add(du[j], *o);
                    } else {
                        o.write(v * du[j] + 0.0);
                    }
                }
            }
        }
    }
}
