//! The 4-bit tile product's twins: every vector tier this CPU runs against `q4_scalar` bit for
//! bit. Here the helpers (the tiers, a xorshift PRNG, an explicit packer of the nibble layout,
//! random cases with edge values, a naive transcription of the formula); the tests in `tiers`.

use half::f16;

use super::{Caps, Tier, BLOCK, TILE};

mod tiers;

/// The shape every tier's `tile4` has.
pub(crate) use super::caps::Tile4Fn as Tile4;

/// The vector tiers this CPU runs (the portable one is the reference).
pub(crate) fn tiers() -> Vec<(&'static str, Tile4)> {
    let t: Vec<(&'static str, Tile4)> = Tier::available()
        .into_iter()
        .filter(|t| *t != Tier::Portable)
        .map(|t| (t.name(), Caps::new(t).expect("available").table().tile4))
        .collect();
    eprintln!(
        "vector tiers compared with the portable one: {:?}",
        names(&t)
    );
    t
}

pub(crate) fn names(t: &[(&'static str, Tile4)]) -> Vec<&'static str> {
    t.iter().map(|x| x.0).collect()
}

/// xorshift64* (no `rand` crate).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 11) % n
    }
    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// A random normal value of magnitude `2^lo..2^hi` and random sign.
    fn scaled(&mut self, lo: i32, hi: i32) -> f32 {
        let e = lo + self.below((hi - lo) as u64) as i32;
        let s = if self.below(2) == 0 { 1.0 } else { -1.0 };
        s * (1.0 + self.unit()) * 2f32.powi(e)
    }
}

/// The `q`s (0..=15) of one block of one tile, `[lane][input]`.
pub(crate) type BlockQ = [[u8; BLOCK]; TILE];

/// Pack per-lane `q`s into the 4-bit tile layout (`w`, `blocks*256` bytes) and `sums`:
/// `w[b*256 + c*64 + l*4 + k] = q[b][l][4c + k] | q[b][l][16 + 4c + k] << 4`.
pub(crate) fn pack_q4(q: &[BlockQ]) -> (Vec<u8>, Vec<i16>) {
    let mut w = vec![0u8; q.len() * 256];
    let mut sums = vec![0i16; q.len() * TILE];
    for (b, qb) in q.iter().enumerate() {
        for (lane, ql) in qb.iter().enumerate() {
            for c in 0..4 {
                for k in 0..4 {
                    let (lo, hi) = (ql[4 * c + k], ql[16 + 4 * c + k]);
                    assert!(lo < 16 && hi < 16);
                    w[b * 256 + c * 64 + lane * 4 + k] = lo | hi << 4;
                }
            }
            sums[b * TILE + lane] = ql.iter().map(|&v| v as i16).sum();
        }
    }
    (w, sums)
}

/// One call's inputs.
pub(crate) struct Case {
    pub(crate) n: usize,
    pub(crate) blocks: usize,
    pub(crate) x_stride: usize,
    pub(crate) y_stride: usize,
    pub(crate) q: Vec<BlockQ>,
    pub(crate) w: Vec<u8>,
    pub(crate) sums: Vec<i16>,
    pub(crate) d: Vec<f16>,
    pub(crate) m: Vec<f16>,
    pub(crate) x: Vec<u8>,
    pub(crate) dx: Vec<f32>,
    pub(crate) sx: Vec<i32>,
}

/// What every output slot holds before a call (an sNaN pattern no kernel produces).
const SENTINEL: u32 = 0x7FA5_A5A5;

impl Case {
    /// Build from `q`, scales and activation bytes; `sx` is the true `Σ a` per block.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        n: usize,
        q: Vec<BlockQ>,
        d: Vec<f16>,
        m: Vec<f16>,
        x: Vec<u8>,
        x_stride: usize,
        dx: Vec<f32>,
        y_stride: usize,
    ) -> Case {
        let blocks = q.len();
        assert!(x_stride >= blocks * BLOCK && y_stride >= TILE);
        assert!(x.len() == (n.max(1) - 1) * x_stride + blocks * BLOCK && dx.len() == n * blocks);
        let (w, sums) = pack_q4(&q);
        let sx = (0..n * blocks)
            .map(|rb| {
                let (r, b) = (rb / blocks, rb % blocks);
                let xb = &x[r * x_stride + b * BLOCK..][..BLOCK];
                xb.iter().map(|&v| v as i32 - 128).sum()
            })
            .collect();
        Case {
            n,
            blocks,
            x_stride,
            y_stride,
            q,
            w,
            sums,
            d,
            m,
            x,
            dx,
            sx,
        }
    }

    /// Signed activation `i` of block `b` of row `r`.
    pub(crate) fn a(&self, r: usize, b: usize, i: usize) -> i32 {
        self.x[r * self.x_stride + b * BLOCK + i] as i32 - 128
    }

    /// Run `f`; check that no slot of `y` but the `n × 16` outputs was written.
    pub(crate) fn run(&self, f: Tile4, ahead: bool) -> Vec<[f32; TILE]> {
        let len = (self.n - 1) * self.y_stride + TILE + 5;
        let mut y = vec![f32::from_bits(SENTINEL); len];
        // SAFETY: every buffer has the sizes `tile4` asks for (`Case::new` asserts them),
        // `y` holds `n` rows of stride `y_stride`, and the CPU has `f`'s features (`tiers`).
        unsafe {
            f(
                self.n,
                &self.w,
                &self.d,
                &self.m,
                &self.sums,
                self.blocks,
                self.x.as_ptr(),
                self.x_stride,
                self.dx.as_ptr(),
                self.sx.as_ptr(),
                y.as_mut_ptr(),
                self.y_stride,
                ahead,
            )
        };
        let out = |i: usize| i / self.y_stride < self.n && i % self.y_stride < TILE;
        for (i, v) in y.iter().enumerate() {
            assert!(out(i) || v.to_bits() == SENTINEL, "padding y[{i}] written");
        }
        (0..self.n)
            .map(|r| core::array::from_fn(|l| y[r * self.y_stride + l]))
            .collect()
    }

    /// The formula of `q4_scalar`'s header, transcribed from the unpacked `q`s.
    pub(crate) fn naive(&self) -> Vec<[f32; TILE]> {
        let mut y = vec![[0.0f32; TILE]; self.n];
        for (r, yr) in y.iter_mut().enumerate() {
            for (lane, out) in yr.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for b in 0..self.blocks {
                    let s1: i32 = (0..BLOCK)
                        .map(|i| self.a(r, b, i) * self.q[b][lane][i] as i32)
                        .sum();
                    let s2 = self.sx[r * self.blocks + b];
                    let dxr = self.dx[r * self.blocks + b];
                    let sd = self.d[b * TILE + lane].to_f32() * dxr;
                    let sm = self.m[b * TILE + lane].to_f32() * dxr;
                    acc = (s1 as f32).mul_add(sd, acc);
                    acc = (s2 as f32).mul_add(sm, acc);
                }
                *out = acc;
            }
        }
        y
    }
}

/// A weight scale or offset: ordinary values, or (with `special`) often a finite edge case
/// (±0, subnormal, ±f16::MAX); ±Inf and NaN are injected by [`gen_case`].
fn gen_f16(rng: &mut Rng, special: bool, lo: i32, hi: i32) -> f16 {
    const EDGE: [u16; 8] = [
        0x0000, 0x8000, 0x0001, 0x03FF, 0x8001, 0x83FF, 0x7BFF, 0xFBFF,
    ];
    if special && rng.below(4) == 0 {
        return f16::from_bits(EDGE[rng.below(8) as usize]);
    }
    f16::from_f32(rng.scaled(lo, hi))
}

/// Non-finite f16 scales: ±Inf, quiet and signalling NaNs with payloads.
const F16_NONFINITE: [u16; 5] = [0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE55];

/// An activation block scale: ordinary, or (with `special`) often a finite edge case.
fn gen_dx(rng: &mut Rng, special: bool) -> f32 {
    if special && rng.below(4) == 0 {
        return match rng.below(7) {
            0 => 0.0,
            1 => -0.0,
            2 => f32::from_bits(1 + rng.below(1000) as u32),
            3 => f32::MIN_POSITIVE,
            4 => 1e30,
            5 => -1e30,
            _ => f32::MAX,
        };
    }
    rng.scaled(-12, -2)
}

/// A non-finite activation scale: ±Inf, or a quiet / signalling NaN with some payload.
fn dx_nonfinite(rng: &mut Rng) -> f32 {
    let payload = rng.next() as u32 & 0x3F_FFFF;
    let bits = [
        0x7F80_0000,
        0xFF80_0000,
        0x7FC0_0000,
        0x7F80_0001,
        0xFFC1_2345,
        0x7FC0_0000 | payload,
        0x7F80_0000 | payload.max(1),
    ];
    f32::from_bits(bits[rng.below(7) as usize])
}

/// A random case: edge-case blocks of `q` and of activations mixed with random ones.
pub(crate) fn gen_case(rng: &mut Rng, n: usize, blocks: usize, special: bool) -> Case {
    let x_stride = blocks * BLOCK + rng.below(8) as usize;
    let y_stride = TILE + rng.below(6) as usize;
    let q = (0..blocks)
        .map(|_| {
            let mode = rng.below(6);
            core::array::from_fn(|_| {
                core::array::from_fn(|_| match mode {
                    0 => 0,
                    1 => 15,
                    2 => 15 * rng.below(2) as u8,
                    _ => rng.below(16) as u8,
                })
            })
        })
        .collect();
    let d: Vec<f16> = (0..blocks * TILE)
        .map(|_| gen_f16(rng, special, -10, -3))
        .collect();
    let m: Vec<f16> = (0..blocks * TILE)
        .map(|_| gen_f16(rng, special, -8, -1))
        .collect();
    let mut x = vec![0u8; (n - 1) * x_stride + blocks * BLOCK];
    for r in 0..n {
        let zero_row = rng.below(6) == 0;
        for b in 0..blocks {
            let mode = if zero_row { 0 } else { rng.below(7) };
            for v in &mut x[r * x_stride + b * BLOCK..][..BLOCK] {
                *v = match mode {
                    0 => 128,
                    1 => 1,
                    2 => 255,
                    3 => [1, 128, 255][rng.below(3) as usize],
                    _ => 1 + rng.below(255) as u8,
                };
            }
        }
    }
    // Bytes between rows (stride padding) are arbitrary.
    for r in 0..n.saturating_sub(1) {
        for v in &mut x[r * x_stride + blocks * BLOCK..(r + 1) * x_stride] {
            *v = rng.next() as u8;
        }
    }
    let (mut d, mut m) = (d, m);
    let mut dx: Vec<f32> = (0..n * blocks).map(|_| gen_dx(rng, special)).collect();
    // Half of the special cases get 1..=3 non-finite scales (so most outputs stay finite).
    if special && rng.below(2) == 0 {
        for _ in 0..1 + rng.below(3) {
            let nf = f16::from_bits(F16_NONFINITE[rng.below(5) as usize]);
            match rng.below(3) {
                0 => d[rng.below((blocks * TILE) as u64) as usize] = nf,
                1 => m[rng.below((blocks * TILE) as u64) as usize] = nf,
                _ => {
                    let at = rng.below((n * blocks) as u64) as usize;
                    dx[at] = dx_nonfinite(rng);
                }
            }
        }
    }
    Case::new(n, q, d, m, x, x_stride, dx, y_stride)
}
