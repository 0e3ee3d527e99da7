//! The backend seam: which implementation runs a model's arithmetic, decided once at load and
//! held by the model.
//!
//! Why one value: the CPU wing and candle's generic ops each need to be chosen for the same
//! reasons at every projection, attention and adapter delta; deciding it once here keeps those
//! sites from each testing the device and dtype on their own (the generic path then being
//! whatever fell through, and never tested).

use std::str::FromStr;

use candle_core::Device;

use crate::cpu::{Caps, Tier};
use crate::error::{ModelError, Result};

/// What runs a loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The CPU wing (`cpu/`): packed 8-bit products, host-held adapter deltas, the fused
    /// elementwise passes and decode attention, with this tier's kernels.
    Cpu(Caps),
    /// candle's ops on the model's device (`candle_ops`): every GPU's path, and
    /// `--cpu-kernels candle` on the CPU.
    Candle,
}

impl Kernels {
    /// The CPU wing's kernels, when this model runs on them.
    pub fn cpu(self) -> Option<Caps> {
        match self {
            Kernels::Cpu(c) => Some(c),
            Kernels::Candle => None,
        }
    }

    /// A short name: the CPU tier, or `candle`.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Cpu(c) => c.tier().name(),
            Kernels::Candle => "candle",
        }
    }
}

/// `--cpu-kernels`: how [`Kernels`] are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// The fastest CPU tier on the CPU; candle's ops on other devices.
    #[default]
    Auto,
    /// This CPU tier (an error where the CPU lacks it, or on another device).
    Tier(Tier),
    /// candle's generic ops, on any device.
    Candle,
}

impl FromStr for KernelChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "candle" => Ok(Self::Candle),
            other => other.parse().map(Self::Tier).map_err(|_| {
                format!(
                    "unknown CPU kernels {s:?} (expected auto, portable, avx2, avxvnni, avx512 or candle)"
                )
            }),
        }
    }
}

impl KernelChoice {
    pub fn resolve(self, device: &Device) -> Result<Kernels> {
        match (self, device.is_cpu()) {
            (KernelChoice::Candle, _) | (KernelChoice::Auto, false) => Ok(Kernels::Candle),
            (KernelChoice::Auto, true) => Ok(Kernels::Cpu(Caps::detect())),
            (KernelChoice::Tier(t), true) => Ok(Kernels::Cpu(Caps::new(t)?)),
            (KernelChoice::Tier(t), false) => Err(ModelError::CpuKernels(format!(
                "--cpu-kernels {t} needs --device cpu (other devices run candle's kernels)"
            ))),
        }
    }
}
