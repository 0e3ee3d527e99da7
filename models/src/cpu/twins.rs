//! The integer kernels' twins: every tier this CPU runs against the portable one bit for bit
//! (`f32::to_bits`, NaNs included), on random inputs with edge values, and the portable tier
//! against a line-by-line transcription of its contract.

use std::panic::{catch_unwind, AssertUnwindSafe};

use half::f16;

use super::caps::{TileFn, UpFn};
use super::{Caps, Tier, BLOCK, TILE};

/// One tier's integer kernels, as its table holds them.
struct Kernels {
    name: &'static str,
    tile: TileFn,
    up: UpFn,
}

/// The tiers this CPU runs, portable first.
fn available() -> Vec<Kernels> {
    Tier::available()
        .into_iter()
        .map(|t| {
            let table = Caps::new(t).expect("an available tier").table();
            Kernels {
                name: t.name(),
                tile: table.tile,
                up: table.up,
            }
        })
        .collect()
}

/// xorshift64* PRNG.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo + 1) as u64) as i32
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    /// Uniform in `[-1, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// A scale: mostly ordinary, sometimes NaN (several payloads), ±Inf, ±0,
    /// subnormal or huge.
    fn scale(&mut self, special_pct: u64) -> f32 {
        if !self.chance(special_pct) {
            return self.unit() * 0.05;
        }
        let bits = [
            0x7FC0_0000,
            0xFFC0_0000,
            0x7F80_0001,
            0x7FD2_3456,
            0x7F80_0000,
            0xFF80_0000,
        ];
        match self.int(0, 9) {
            0..=5 => f32::from_bits(bits[self.int(0, 5) as usize]),
            6 => 0.0,
            7 => -0.0,
            8 => f32::from_bits(self.int(1, 0x7F_FFFF) as u32),
            _ => 3.0e38 * self.unit(),
        }
    }
}

/// One random `tile` problem. Edge kinds are chosen per block / row-block.
struct TileCase {
    n: usize,
    blocks: usize,
    w: Vec<i8>,
    d: Vec<f16>,
    sums: Vec<i16>,
    x: Vec<u8>,
    x_stride: usize,
    dx: Vec<f32>,
}

fn tile_case(rng: &mut Rng, n: usize, blocks: usize, byte0: bool, special_pct: u64) -> TileCase {
    let mut w = vec![0i8; blocks * 512];
    for wb in w.chunks_exact_mut(512) {
        let kind = rng.int(0, 9);
        for v in wb.iter_mut() {
            *v = match kind {
                0 => 0,
                1 => 127,
                2 => -127,
                3 => [-127, 127][rng.int(0, 1) as usize],
                _ => rng.int(-127, 127) as i8,
            };
        }
    }
    let mut sums = vec![0i16; blocks * TILE];
    for (i, s) in sums.iter_mut().enumerate() {
        let (b, lane) = (i / TILE, i % TILE);
        *s = (0..BLOCK)
            .map(|k| w[b * 512 + (k / 4) * 64 + lane * 4 + k % 4] as i16)
            .sum();
    }
    let d = (0..blocks * TILE)
        .map(|_| match rng.int(0, 19) {
            0 => f16::ZERO,
            1 => f16::from_bits(rng.int(1, 0x3FF) as u16), // subnormal
            2 => f16::MAX,
            3 => f16::INFINITY,
            _ => f16::from_f32(rng.unit() * 0.02),
        })
        .collect();
    let x_stride = blocks * BLOCK + rng.int(0, 40) as usize;
    let mut x = vec![128u8; n * x_stride];
    let zero_row = rng.int(0, n as i32); // this row (if < n) stays all-zero
    for r in 0..n {
        if r as i32 == zero_row {
            continue;
        }
        for xb in x[r * x_stride..r * x_stride + blocks * BLOCK].chunks_exact_mut(BLOCK) {
            let kind = rng.int(0, 9);
            for v in xb.iter_mut() {
                *v = match kind {
                    0 => 128,
                    1 => 1,
                    2 => 255,
                    3 => [1, 255][rng.int(0, 1) as usize],
                    4 if byte0 => [0, 255, 1][rng.int(0, 2) as usize],
                    _ => rng.int(if byte0 { 0 } else { 1 }, 255) as u8,
                };
            }
        }
    }
    let dx = (0..n * blocks).map(|_| rng.scale(special_pct)).collect();
    TileCase {
        n,
        blocks,
        w,
        d,
        sums,
        x,
        x_stride,
        dx,
    }
}

/// Run one tier on a case; returns the whole `y` buffer (padding included).
fn run_tile(k: &Kernels, c: &TileCase, y_stride: usize, ahead: bool) -> Vec<u32> {
    let mut y = vec![f32::from_bits(0x7FA5_A5A5); c.n * y_stride + 3];
    // SAFETY: buffers sized per the `tile` contract; `available()` only lists
    // tiers this CPU supports.
    unsafe {
        (k.tile)(
            c.n,
            &c.w,
            &c.d,
            &c.sums,
            c.blocks,
            c.x.as_ptr(),
            c.x_stride,
            c.dx.as_ptr(),
            y.as_mut_ptr(),
            y_stride,
            ahead,
        )
    };
    y.iter().map(|v| v.to_bits()).collect()
}

fn check_tile(rng: &mut Rng, n: usize, blocks: usize, byte0: bool, special_pct: u64) {
    let tiers = available();
    let c = tile_case(rng, n, blocks, byte0, special_pct);
    let y_stride = TILE + rng.int(0, 9) as usize;
    let want = run_tile(&tiers[0], &c, y_stride, false);
    for k in &tiers {
        for ahead in [false, true] {
            let got = run_tile(k, &c, y_stride, ahead);
            if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                panic!(
                    "tile {}: n={n} blocks={blocks} ahead={ahead} byte0={byte0} y[{i}] = {:#010x}, scalar {:#010x}",
                    k.name, got[i], want[i]
                );
            }
        }
    }
}

const BLOCK_COUNTS: [usize; 6] = [1, 2, 3, 7, 24, 48];
const TILE_ROWS: [usize; 6] = [1, 2, 3, 4, 8, 16];

#[test]
fn tiers_under_test() {
    let names: Vec<_> = available().iter().map(|k| k.name).collect();
    eprintln!("tiers compared against scalar: {names:?}");
    assert_eq!(names[0], "portable");
}

#[test]
fn tile_matches_scalar_random() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for &n in &TILE_ROWS {
        for &blocks in &BLOCK_COUNTS {
            for _ in 0..4 {
                check_tile(&mut rng, n, blocks, false, 0);
            }
        }
    }
}

#[test]
fn tile_matches_scalar_nan_inf_scales() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for &n in &TILE_ROWS {
        for &blocks in &BLOCK_COUNTS {
            for pct in [5, 30, 100] {
                check_tile(&mut rng, n, blocks, false, pct);
            }
        }
    }
}

/// Byte 0 (q = −128) never occurs in the format, but every tier still gives
/// the scalar formula's result (the AVX2 sign trick is exact for q = −128).
#[test]
fn tile_matches_scalar_with_byte_zero() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for &n in &TILE_ROWS {
        for &blocks in &[1, 7, 24] {
            check_tile(&mut rng, n, blocks, true, 5);
        }
    }
}

/// One random `up` problem.
struct UpCase {
    n: usize,
    r4: usize,
    width: usize,
    q: Vec<u8>,
    u: Vec<i8>,
    corr: [i32; 4],
    du: [f32; 4],
    out: Vec<f32>,
}

fn up_case(rng: &mut Rng, n: usize, r4: usize, width: usize, special_pct: u64) -> UpCase {
    let mut q = vec![0u8; width / TILE * r4 * TILE];
    for qg in q.chunks_exact_mut(64) {
        let kind = rng.int(0, 9);
        for v in qg.iter_mut() {
            *v = match kind {
                0 => 128,
                1 => 1,
                2 => 255,
                3 => [1, 255][rng.int(0, 1) as usize],
                _ => rng.int(1, 255) as u8,
            };
        }
    }
    let mut u = vec![0i8; n * r4];
    for uj in u.chunks_exact_mut(r4) {
        let kind = rng.int(0, 5);
        for v in uj.iter_mut() {
            *v = match kind {
                0 => 0,
                1 => [-127, 127][rng.int(0, 1) as usize],
                _ => rng.int(-127, 127) as i8,
            };
        }
    }
    let mut corr = [0i32; 4];
    for (j, c) in corr.iter_mut().take(n).enumerate() {
        *c = 128
            * u[j * r4..(j + 1) * r4]
                .iter()
                .map(|&v| v as i32)
                .sum::<i32>();
    }
    let du = [0; 4].map(|_| rng.scale(special_pct));
    let out = (0..n * width + 5)
        .map(|_| match rng.int(0, 9) {
            0 => 0.0,
            1 => -0.0,
            _ => rng.unit() * 100.0,
        })
        .collect();
    UpCase {
        n,
        r4,
        width,
        q,
        u,
        corr,
        du,
        out,
    }
}

fn run_up(k: &Kernels, c: &UpCase, add: bool) -> Vec<u32> {
    let mut out = c.out.clone();
    if !add {
        // `up` must not read `out` when not adding: poison it.
        out[..c.n * c.width].fill(f32::from_bits(0x7FA5_A5A5));
    }
    // SAFETY: buffers sized per the `up` contract; `available()` only lists
    // tiers this CPU supports.
    unsafe {
        (k.up)(
            c.n,
            add,
            &c.q,
            &c.u,
            c.r4,
            &c.corr,
            &c.du,
            out.as_mut_ptr(),
            c.n * c.width,
        )
    };
    out.iter().map(|v| v.to_bits()).collect()
}

fn check_up(rng: &mut Rng, n: usize, r4: usize, width: usize, special_pct: u64) {
    let tiers = available();
    let c = up_case(rng, n, r4, width, special_pct);
    for add in [false, true] {
        let want = run_up(&tiers[0], &c, add);
        for k in &tiers[1..] {
            let got = run_up(k, &c, add);
            if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                panic!(
                    "up {}: n={n} r4={r4} width={width} add={add} out[{i}] = {:#010x}, scalar {:#010x}",
                    k.name, got[i], want[i]
                );
            }
        }
    }
}

#[test]
fn up_matches_scalar() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for n in 1..=4 {
        for r4 in [4, 8, 12, 16, 20, 32, 64] {
            for width in [16, 48, 576] {
                for pct in [0, 0, 30, 100] {
                    check_up(&mut rng, n, r4, width, pct);
                }
            }
        }
    }
}

#[test]
fn unsupported_row_counts_panic() {
    let mut rng = Rng(7);
    let t = tile_case(&mut rng, 16, 2, false, 0);
    let c = up_case(&mut rng, 4, 8, 32, 0);
    for k in &available() {
        for n in [0, 5, 6, 7, 9, 12, 15, 17] {
            let mut y = vec![0f32; 17 * 16];
            let r = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: buffers hold 16 rows / 17 output rows; only `n` is bad.
                unsafe {
                    (k.tile)(
                        n,
                        &t.w,
                        &t.d,
                        &t.sums,
                        2,
                        t.x.as_ptr(),
                        t.x_stride,
                        t.dx.as_ptr(),
                        y.as_mut_ptr(),
                        16,
                        false,
                    )
                }
            }));
            assert!(r.is_err(), "{} tile accepted n={n}", k.name);
        }
        for n in [0, 5] {
            let mut out = vec![0f32; 5 * 32];
            let r = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: buffers hold 4 rows of `u`, `out` 5 rows; only `n` is bad.
                unsafe {
                    (k.up)(
                        n,
                        true,
                        &c.q,
                        &c.u,
                        8,
                        &c.corr,
                        &c.du,
                        out.as_mut_ptr(),
                        n * 32,
                    )
                }
            }));
            assert!(r.is_err(), "{} up accepted n={n}", k.name);
        }
    }
}

#[test]
fn scalar_tile_matches_spec_formula() {
    let mut rng = Rng(99);
    let k = &available()[0];
    for &n in &TILE_ROWS {
        for &blocks in &[1, 3, 24] {
            let c = tile_case(&mut rng, n, blocks, true, 10);
            let got = run_tile(k, &c, TILE, false);
            for r in 0..n {
                for lane in 0..TILE {
                    let mut acc = 0.0f32;
                    for b in 0..blocks {
                        let mut s = -128 * c.sums[b * TILE + lane] as i32;
                        for i in 0..BLOCK {
                            let xb = c.x[r * c.x_stride + b * BLOCK + i] as i32;
                            s += xb * c.w[b * 512 + (i / 4) * 64 + lane * 4 + i % 4] as i32;
                        }
                        let scale = c.d[b * TILE + lane].to_f32() * c.dx[r * blocks + b];
                        acc = (s as f32).mul_add(scale, acc);
                    }
                    assert_eq!(
                        got[r * TILE + lane],
                        acc.to_bits(),
                        "n={n} blocks={blocks} r={r} lane={lane}"
                    );
                }
            }
        }
    }
}

/// `scalar::up` against the spec written out naively.
#[test]
fn scalar_up_matches_spec_formula() {
    let mut rng = Rng(1234);
    let k = &available()[0];
    for n in 1..=4 {
        for r4 in [4, 12, 16] {
            let c = up_case(&mut rng, n, r4, 48, 30);
            for add in [false, true] {
                let got = run_up(k, &c, add);
                for j in 0..n {
                    for o in 0..c.width {
                        let (t, lane) = (o / TILE, o % TILE);
                        let mut s = -c.corr[j];
                        for kk in 0..r4 {
                            s += c.q[(t * (r4 / 4) + kk / 4) * 64 + lane * 4 + kk % 4] as i32
                                * c.u[j * r4 + kk] as i32;
                        }
                        let v = s as f32;
                        let old = c.out[j * c.width + o];
                        let want = if add {
                            v.mul_add(c.du[j], old)
                        } else {
                            (v * c.du[j]) + 0.0
                        };
                        assert_eq!(
                            got[j * c.width + o],
                            want.to_bits(),
                            "n={n} r4={r4} add={add} j={j} o={o}"
                        );
                    }
                }
            }
        }
    }
}
