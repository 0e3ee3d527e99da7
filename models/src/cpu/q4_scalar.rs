//! The portable 4-bit tile product (`tile4`): plain Rust, the reference every vector tier
//! equals bit for bit.
//!
//! # Weights (ggml Q4_1; Q4_0 is the case `m = −8·d`)
//! One tile is 16 outputs ("lanes") × `blocks` blocks of 32 inputs. Weight `i` of block `b`
//! of lane `l` is `d·q + m` with `q` in 0..=15 and `d = d[b*16 + l]`, `m = m[b*16 + l]`
//! (f16). `sums[b*16 + l]` is `Σ` of that lane's 32 `q`s of block `b` (the VNNI tiers use it
//! to undo the +128 offset of the activations; this tier and AVX2 do not need it).
//!
//! Nibble layout: the 8-bit packed layout puts input `i = 4g + k` (group `g` in 0..8, `k` in
//! 0..4) of lane `l` at byte `g*64 + l*4 + k` of its block. The 4-bit form stores groups `c`
//! and `c + 4` in the same byte, 256 bytes per block of a tile: for `c` in 0..4,
//!
//! ```text
//! w[b*256 + c*64 + l*4 + k] = q[4c + k] | q[16 + 4c + k] << 4     (lane l, block b)
//! ```
//!
//! So the 64-byte chunk `c` masked with `0x0F` is exactly group `c` of the 8-bit layout, and
//! shifted right by 4 (then masked) it is group `c + 4`.
//!
//! # Activations (as the 8-bit kernels)
//! Row `r < n` has 32 bytes per block at `x + r*x_stride + b*32`, each `a + 128` with `a`
//! (the signed activation) in -127..=127 (byte 0, `a = −128`, is also computed exactly by
//! every tier); `dx[r*blocks + b]` is its `f32` block scale and `sx[r*blocks + b]` the `i32`
//! sum of its 32 signed activations (used as given, never recomputed).
//!
//! # Result
//! For every row `r` and lane `l`, in this order of float operations:
//!
//! ```text
//! acc = 0.0
//! for b in 0..blocks:
//!     s1 = Σ_i a_i·q_i  (exact i32)          s2 = sx[r*blocks + b]
//!     sd = f32(d) * dx[r*blocks + b]          sm = f32(m) * dx[r*blocks + b]
//!     acc = fma(s1 as f32, sd, acc)
//!     acc = fma(s2 as f32, sm, acc)
//! y[r*y_stride + l] = acc                   (y is never read)
//! ```

use core::slice;

use half::f16;

use super::{BLOCK, TILE};

/// Bytes of 4-bit weights per block of one tile (16 lanes × 32 inputs / 2).
const TB4: usize = TILE * BLOCK / 2;
/// 64-byte chunks per block: chunk `c` holds groups `c` (low nibbles) and `c + 4` (high).
const CHUNKS: usize = BLOCK / 8;

/// Packed 4-bit tile product, see the module header.
///
/// `sums` and `ahead` (a prefetch hint) do not affect the result here.
///
/// # Safety
/// - `n` must be one of 1, 2, 3, 4, 8, 16 (anything else panics).
/// - `w.len() >= blocks*256`, `d.len() >= blocks*16`, `m.len() >= blocks*16`,
///   `sums.len() >= blocks*16` (checked by slicing here; asserted in the vector tiers).
/// - For every `r < n`, `x + r*x_stride` must be valid for reading `blocks*32` bytes.
/// - `dx` and `sx` must be valid for reading `n*blocks` values each.
/// - For every `r < n`, `y + r*y_stride` must be valid for writing 16 `f32`s, and those
///   outputs must not overlap any input.
#[allow(clippy::too_many_arguments)]
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
    let _ = ahead;
    assert!(
        matches!(n, 1 | 2 | 3 | 4 | 8 | 16),
        "tile4: unsupported row count {n}"
    );
    let w = &w[..blocks * TB4];
    let (d, m) = (&d[..blocks * TILE], &m[..blocks * TILE]);
    let _ = &sums[..blocks * TILE];
    // SAFETY: the caller guarantees `dx` and `sx` are readable for `n*blocks` values and
    // that nothing writes to them during this call.
    let (dx, sx) = unsafe {
        (
            slice::from_raw_parts(dx, n * blocks),
            slice::from_raw_parts(sx, n * blocks),
        )
    };
    for r in 0..n {
        // SAFETY: the caller guarantees row `r < n` of `x` is readable for `blocks*32`
        // bytes; nothing writes to it during this call.
        let xr = unsafe { slice::from_raw_parts(x.wrapping_add(r * x_stride), blocks * BLOCK) };
        let mut acc = [0.0f32; TILE];
        for b in 0..blocks {
            let s1 = dot_block(&w[b * TB4..(b + 1) * TB4], &xr[b * BLOCK..(b + 1) * BLOCK]);
            let (dxr, s2) = (dx[r * blocks + b], sx[r * blocks + b] as f32);
            for (lane, a) in acc.iter_mut().enumerate() {
                let sd = d[b * TILE + lane].to_f32() * dxr;
                let sm = m[b * TILE + lane].to_f32() * dxr;
                *a = (s1[lane] as f32).mul_add(sd, *a);
                *a = s2.mul_add(sm, *a);
            }
        }
        // SAFETY: the caller guarantees row `r < n` of `y` is writable for 16 floats;
        // `write_unaligned` needs no alignment.
        unsafe {
            y.wrapping_add(r * y_stride)
                .cast::<[f32; TILE]>()
                .write_unaligned(acc)
        };
    }
}

/// `s1` of every lane for one block: `Σ_i (x_i − 128)·q_i`, exact.
fn dot_block(wb: &[u8], xb: &[u8]) -> [i32; TILE] {
    let a: [i32; BLOCK] = core::array::from_fn(|i| xb[i] as i32 - 128);
    let mut s = [0i32; TILE];
    for c in 0..CHUNKS {
        let chunk = &wb[c * 64..(c + 1) * 64];
        for (sl, w4) in s.iter_mut().zip(chunk.chunks_exact(4)) {
            for (k, &byte) in w4.iter().enumerate() {
                *sl += a[4 * c + k] * (byte & 0x0F) as i32 + a[16 + 4 * c + k] * (byte >> 4) as i32;
            }
        }
    }
    s
}
