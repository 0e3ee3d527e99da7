//! The CPU's kernel tier, detected once, as a value holding its table of kernel functions.
//!
//! Why a value: a `Packed` (or an 8-bit adapter delta) keeps the `Caps` it was built with, so
//! multiplying it never re-checks the CPU and can never reach an instruction the CPU lacks —
//! the only way to get a table is [`Caps::new`] or [`Caps::detect`], which check the features
//! first. Every tier computes the same numbers bit for bit (the vector kernels are tested
//! against `scalar`); they differ only in speed.

use std::mem::MaybeUninit;
use std::str::FromStr;

use half::f16;

use crate::error::{ModelError, Result};

/// A kernel tier, slowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Plain Rust, the reference every other tier equals; runs on any CPU.
    Portable,
    /// AVX2 + FMA + F16C (Haswell, Zen 1 and later): `vpmaddubsw` with the sign trick.
    Avx2,
    /// AVX2 with 256-bit VNNI (`vpdpbusd`, Intel Alder Lake and later client CPUs).
    AvxVnni,
    /// AVX-512 F/BW with VNNI (Ice Lake / Zen 4 and later servers).
    Avx512,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Portable, Tier::Avx2, Tier::AvxVnni, Tier::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Portable => "portable",
            Tier::Avx2 => "avx2",
            Tier::AvxVnni => "avxvnni",
            Tier::Avx512 => "avx512",
        }
    }

    /// Whether this CPU has every feature the tier's kernels use.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = || {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            };
            match self {
                Tier::Portable => true,
                Tier::Avx2 => avx2(),
                Tier::AvxVnni => avx2() && std::is_x86_feature_detected!("avxvnni"),
                Tier::Avx512 => {
                    avx2()
                        && std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Tier::Portable
        }
    }

    /// The tiers this CPU runs, slowest first.
    pub fn available() -> Vec<Tier> {
        Tier::ALL.into_iter().filter(|t| t.supported()).collect()
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                format!(
                    "unknown CPU kernel tier {s:?} (expected portable, avx2, avxvnni or avx512)"
                )
            })
    }
}

/// `tile(n, w, d, sums, blocks, x, x_stride, dx, y, y_stride, ahead)`: see `scalar::tile`.
pub(crate) type TileFn = unsafe fn(
    usize,
    &[i8],
    &[f16],
    &[i16],
    usize,
    *const u8,
    usize,
    *const f32,
    *mut f32,
    usize,
    bool,
);
/// `tile4(n, w, d, m, sums, blocks, x, x_stride, dx, sx, y, y_stride, ahead)`: the 4-bit
/// form's tile product, see `q4_scalar::tile4`.
pub(crate) type Tile4Fn = unsafe fn(
    usize,
    &[u8],
    &[f16],
    &[f16],
    &[i16],
    usize,
    *const u8,
    usize,
    *const f32,
    *const i32,
    *mut f32,
    usize,
    bool,
);
/// `up(n, add, q, u, r4, corr, du, out, len)`: see `scalar::up`.
pub(crate) type UpFn =
    unsafe fn(usize, bool, &[u8], &[i8], usize, &[i32; 4], &[f32; 4], *mut f32, usize);

/// One tier's kernels. Each is `unsafe` only because it may use instructions of its tier; given
/// a CPU that has them, those taking slices check their lengths themselves (the raw-pointer
/// ones, `tile` and `up`, document their own contracts).
pub(crate) struct Table {
    pub tile: TileFn,
    pub tile4: Tile4Fn,
    pub up: UpFn,
    pub amax: unsafe fn(&[f32; 32]) -> f32,
    pub round_block: unsafe fn(&[f32; 32], f32, i32, &mut [u8; 32]) -> i32,
    pub quantize_transposed: unsafe fn(&[f32], &[f32], &mut [u8]),
    pub dot: unsafe fn(&[f32], &[f32]) -> f32,
    pub dot_f16: unsafe fn(&[f16], &[f32]) -> f32,
    pub dot4_f16: unsafe fn(&[f16], &[f32]) -> [f32; 4],
    pub axpy_f16: unsafe fn(&mut [f32], f32, &[f16]),
    pub silu_mul: unsafe fn(&[f32], &[f32], &mut [MaybeUninit<f32>]),
    pub exp_shifted: unsafe fn(&mut [f32], f32) -> f32,
    pub attn_scores: unsafe fn(&[f32], &[f32], f32, &mut [f32]),
    pub attn_wsum: unsafe fn(&[f32], &[f32], &mut [f32]),
}

/// The kernels of one tier that this CPU runs.
#[derive(Clone, Copy)]
pub struct Caps {
    tier: Tier,
    table: &'static Table,
}

impl std::fmt::Debug for Caps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Caps({})", self.tier)
    }
}

impl PartialEq for Caps {
    fn eq(&self, other: &Self) -> bool {
        self.tier == other.tier
    }
}
impl Eq for Caps {}

impl Caps {
    /// The fastest tier this CPU runs.
    pub fn detect() -> Self {
        let best = Tier::available().pop().unwrap_or(Tier::Portable);
        Self::new(best).expect("an available tier is supported")
    }

    /// The reference tier, on any CPU.
    pub fn portable() -> Self {
        Self {
            tier: Tier::Portable,
            table: &super::scalar::TABLE,
        }
    }

    /// `tier`'s kernels; an error naming the tier when this CPU lacks its features.
    pub fn new(tier: Tier) -> Result<Self> {
        if !tier.supported() {
            return Err(ModelError::CpuKernels(format!(
                "this CPU cannot run the {tier} kernels (it runs: {})",
                Tier::available()
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        #[cfg(target_arch = "x86_64")]
        let table = match tier {
            Tier::Portable => &super::scalar::TABLE,
            Tier::Avx2 => &super::avx2::TABLE,
            Tier::AvxVnni => &super::avxvnni::TABLE,
            Tier::Avx512 => &super::avx512::TABLE,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let table = &super::scalar::TABLE;
        Ok(Self { tier, table })
    }

    pub fn tier(self) -> Tier {
        self.tier
    }

    /// The table, for the raw-pointer kernels (`tile`, `up`) whose callers uphold their
    /// pointer contracts; the CPU part of every kernel's contract holds by construction.
    pub(crate) fn table(self) -> &'static Table {
        self.table
    }

    pub(crate) fn amax(self, src: &[f32; 32]) -> f32 {
        // SAFETY: `Caps::new` checked that this CPU has the table's features.
        unsafe { (self.table.amax)(src) }
    }

    pub(crate) fn round_block(
        self,
        src: &[f32; 32],
        id: f32,
        offset: i32,
        q: &mut [u8; 32],
    ) -> i32 {
        // SAFETY: as in `amax`.
        unsafe { (self.table.round_block)(src, id, offset, q) }
    }

    pub(crate) fn quantize_transposed(self, b: &[f32], ids: &[f32], q: &mut [u8]) {
        // SAFETY: as in `amax`; the kernel checks the shapes.
        unsafe { (self.table.quantize_transposed)(b, ids, q) }
    }

    pub(crate) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as in `amax`; the kernel checks the lengths.
        unsafe { (self.table.dot)(a, b) }
    }

    pub(crate) fn dot_f16(self, a: &[f16], x: &[f32]) -> f32 {
        // SAFETY: as in `amax`; the kernel checks the lengths.
        unsafe { (self.table.dot_f16)(a, x) }
    }

    pub(crate) fn dot4_f16(self, a: &[f16], x: &[f32]) -> [f32; 4] {
        // SAFETY: as in `amax`; the kernel checks the lengths.
        unsafe { (self.table.dot4_f16)(a, x) }
    }

    pub(crate) fn axpy_f16(self, out: &mut [f32], t: f32, b: &[f16]) {
        // SAFETY: as in `amax`; the kernel checks the lengths.
        unsafe { (self.table.axpy_f16)(out, t, b) }
    }

    pub(crate) fn silu_mul_into(self, g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
        // SAFETY: as in `amax`; the kernel checks the lengths.
        unsafe { (self.table.silu_mul)(g, u, out) }
    }

    pub(crate) fn exp_shifted(self, v: &mut [f32], max: f32) -> f32 {
        // SAFETY: as in `amax`.
        unsafe { (self.table.exp_shifted)(v, max) }
    }

    /// See `attention::scores_ref`.
    pub(crate) fn attn_scores(self, q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
        // SAFETY: as in `amax`; the kernel checks the lengths.
        unsafe { (self.table.attn_scores)(q, k, scale, out) }
    }

    /// See `attention::wsum_ref`.
    pub(crate) fn attn_wsum(self, p: &[f32], v: &[f32], out: &mut [f32]) {
        // SAFETY: as in `amax`; the kernel checks the lengths.
        unsafe { (self.table.attn_wsum)(p, v, out) }
    }
}
