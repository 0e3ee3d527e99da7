//! The CPU wing: packed 8-bit weights, host-held adapter deltas, the elementwise passes and
//! decode attention, on plain slices.
//!
//! Why a wing of its own: the kernels here are chosen once per process into a [`Caps`] value
//! (scalar, AVX2, AVX-VNNI or AVX-512), and every object that multiplies holds the one it was
//! built with, so nothing below asks the CPU again and a kernel that exists can always run.
//! `std::arch` appears only under this module (in `avx2`, `avxvnni` and `avx512`, each the
//! twin of `scalar` bit for bit); this module imports nothing from the layers, LoRA, model or
//! weight modules that build on it.

mod attention;
mod block;
mod caps;
mod delta;
mod delta_q8;
mod elementwise;
mod fused;
mod packed;
mod q4_scalar;
mod scalar;
mod slices;
#[cfg(test)]
mod twins;
#[cfg(test)]
mod twins4;

#[cfg(target_arch = "x86_64")]
mod attn_avx2;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_int8;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avxvnni;
#[cfg(target_arch = "x86_64")]
mod elementwise_avx2;
#[cfg(target_arch = "x86_64")]
mod q4_avx2;
#[cfg(target_arch = "x86_64")]
mod q4_avx512;
#[cfg(target_arch = "x86_64")]
mod q4_avxvnni;

pub(crate) use attention::{attention, AttnJob, AttnParams};
pub use caps::{Caps, Tier};
pub(crate) use delta::HostDelta;
pub use delta::LoraPrecision;
pub(crate) use elementwise::silu_mul;
pub use packed::{IntBlocks, Packed};

/// Outputs per tile of packed weights (and the row padding of an 8-bit LoRA `A`).
pub(crate) const TILE: usize = 16;
/// Inputs per block of 8-bit weights and activations (Q8_0's blocks).
pub(crate) const BLOCK: usize = 32;
