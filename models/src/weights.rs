//! Weight names and the in-memory dtype policy shared by the GGUF and safetensors readers.

use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::layers::{Embedding, WeightMatrix};
pub use crate::names::{Naming, Proj};
use crate::q8_packed::PackedQ8;

/// How weights are held in memory (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// The fastest form for this device and file (see [`WeightDtype::resolve`]).
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "f32" | "float32" => Self::F32,
            "f16" | "float16" | "half" => Self::F16,
            "bf16" | "bfloat16" => Self::Bf16,
            "q8_0" | "q8" => Self::Q8_0,
            other => {
                return Err(format!(
                    "unknown dtype {other:?} (expected auto, f32, f16, bf16 or q8_0)"
                ))
            }
        })
    }
}

/// What a weight matrix becomes in memory, once `Auto` has been decided for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    /// Float matrix in this dtype (activations run in it too).
    Dense(DType),
    /// Quantized blocks; a ggml type that lacks a fast CPU kernel is re-quantized to `Q8_0`.
    Quantized,
    /// Quantized blocks for decode plus a dense f32 copy for prefill (CPU `auto`).
    Dual,
}

impl WeightDtype {
    /// CPU quantized kernels do not get cheaper per row with batching while f32 GEMM does, so on CPU
    /// `auto` keeps both forms of a quantized file; GPUs keep the quantized blocks only.
    pub(crate) fn resolve(
        self,
        file_is_quantized: bool,
        file_dtype: DType,
        device: &Device,
    ) -> Holding {
        match self {
            WeightDtype::F32 => Holding::Dense(DType::F32),
            WeightDtype::F16 => Holding::Dense(DType::F16),
            WeightDtype::Bf16 => Holding::Dense(DType::BF16),
            WeightDtype::Q8_0 => Holding::Quantized,
            WeightDtype::Auto if file_is_quantized && device.is_cpu() => Holding::Dual,
            WeightDtype::Auto if file_is_quantized => Holding::Quantized,
            WeightDtype::Auto if device.is_cpu() => Holding::Dense(DType::F32),
            WeightDtype::Auto => Holding::Dense(file_dtype),
        }
    }
}

impl Holding {
    pub(crate) fn activation_dtype(self) -> DType {
        match self {
            Holding::Dense(dt) => dt,
            Holding::Quantized | Holding::Dual => DType::F32,
        }
    }

    /// Turns a loaded tensor into the held form. Quantized types without a fast CPU kernel
    /// (everything but Q8_0 and the K-quants) are re-quantized to Q8_0.
    pub(crate) fn matrix_from_q(self, q: QTensor, device: &Device) -> Result<WeightMatrix> {
        Ok(match self {
            Holding::Dense(dt) => WeightMatrix::Dense(q.dequantize(device)?.to_dtype(dt)?),
            Holding::Quantized => quantized(Arc::new(fast_quant(q, device)?))?,
            Holding::Dual => {
                let dense = q.dequantize(device)?;
                // Decided before re-quantizing: packed weights come from `dense`, and the Q8_0
                // blocks would only be thrown away.
                match packed(q.dtype(), device, &dense)? {
                    Some(p) => p,
                    None => WeightMatrix::Dual {
                        q: Arc::new(fast_quant(q, device)?),
                        dense,
                    },
                }
            }
        })
    }

    pub(crate) fn matrix_from_dense(self, t: Tensor) -> Result<WeightMatrix> {
        Ok(match self {
            Holding::Dense(dt) => WeightMatrix::Dense(t.to_dtype(dt)?),
            Holding::Quantized | Holding::Dual => {
                let t32 = t.to_dtype(DType::F32)?;
                if self == Holding::Dual {
                    // As in `matrix_from_q`: packed from `t32`, no Q8_0 blocks to throw away.
                    if let Some(p) = packed(GgmlDType::Q8_0, t32.device(), &t32)? {
                        return Ok(p);
                    }
                }
                match QTensor::quantize(&t32, GgmlDType::Q8_0) {
                    Ok(q) if self == Holding::Dual => WeightMatrix::Dual {
                        q: Arc::new(q),
                        dense: t32,
                    },
                    Ok(q) => quantized(Arc::new(q))?,
                    // Row length not a multiple of the block size: stay dense.
                    Err(_) => WeightMatrix::Dense(t32),
                }
            }
        })
    }

    pub(crate) fn embedding_from_q(self, q: Arc<QTensor>, device: &Device) -> Result<Embedding> {
        Ok(match self {
            Holding::Dense(dt) => Embedding::Dense(q.dequantize(device)?.to_dtype(dt)?),
            Holding::Quantized | Holding::Dual => Embedding::Quantized(q),
        })
    }
}

impl Holding {
    /// A matrix over blocks that the embedding also holds (tied output projection): shared when
    /// they stay quantized in a fast format, converted otherwise.
    pub(crate) fn shared_matrix(self, q: Arc<QTensor>, device: &Device) -> Result<WeightMatrix> {
        let fast = has_fast_kernel(q.dtype());
        Ok(match self {
            Holding::Dense(dt) => WeightMatrix::Dense(q.dequantize(device)?.to_dtype(dt)?),
            Holding::Quantized if fast => quantized(q)?,
            Holding::Dual if fast => dual(q.clone(), q.dequantize(device)?)?,
            Holding::Quantized | Holding::Dual => {
                let dense = q.dequantize(device)?;
                self.matrix_from_dense(dense)?
            }
        })
    }
}

/// Both forms, unless the packed VNNI kernel will serve every row count of these Q8_0 blocks
/// faster than the f32 GEMM (measured here: prefill and decode alike), in which case only the
/// packed form is kept (the dense copy is 4× the blocks' memory).
fn dual(q: Arc<QTensor>, dense: Tensor) -> Result<WeightMatrix> {
    Ok(match packed(q.dtype(), &q.device(), &dense)? {
        Some(p) => p,
        None => WeightMatrix::Dual { q, dense },
    })
}

/// Quantized blocks, packed for the VNNI kernel where it applies.
fn quantized(q: Arc<QTensor>) -> Result<WeightMatrix> {
    if packs(q.dtype(), &q.device()) {
        if let Some(p) = packed(q.dtype(), &q.device(), &q.dequantize(&Device::Cpu)?)? {
            return Ok(p);
        }
    }
    Ok(WeightMatrix::Quantized(q))
}

/// Whether blocks of type `dt` end up as Q8_0 (as they are, or re-quantized by [`fast_quant`])
/// on a CPU that runs the packed kernel.
fn packs(dt: GgmlDType, device: &Device) -> bool {
    (dt == GgmlDType::Q8_0 || !has_fast_kernel(dt)) && device.is_cpu() && PackedQ8::supported()
}

/// `dense` (the values of blocks of type `dt`) packed, when [`packs`] holds and the shape tiles.
fn packed(dt: GgmlDType, device: &Device, dense: &Tensor) -> Result<Option<WeightMatrix>> {
    if !packs(dt, device) {
        return Ok(None);
    }
    let (out, inp) = dense.dims2()?;
    let values: Vec<f32> = dense.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(PackedQ8::from_dense(&values, out, inp).map(|p| WeightMatrix::Packed(Arc::new(p))))
}

fn has_fast_kernel(dt: GgmlDType) -> bool {
    use GgmlDType as G;
    matches!(
        dt,
        G::Q8_0 | G::Q2K | G::Q3K | G::Q4K | G::Q5K | G::Q6K | G::Q8K
    )
}

fn fast_quant(q: QTensor, device: &Device) -> Result<QTensor> {
    if has_fast_kernel(q.dtype()) {
        return Ok(q);
    }
    let dense = q.dequantize(device)?;
    Ok(QTensor::quantize(&dense, GgmlDType::Q8_0)?)
}

/// What the model builder needs from a weight file, whatever its format.
pub(crate) trait WeightReader {
    fn naming(&self) -> Naming;
    fn device(&self) -> &Device;
    fn activation_dtype(&self) -> DType;
    /// A `[out, in]` matrix, checked against `shape`.
    fn matrix(&mut self, name: String, shape: (usize, usize)) -> Result<WeightMatrix>;
    /// A norm weight, always f32-exact, in the activation dtype.
    fn vector(&mut self, name: String, len: usize) -> Result<Tensor>;
    fn embedding(&mut self, vocab: usize, hidden: usize) -> Result<Embedding>;
    /// The output projection; the embedding table when the file has none (tied).
    fn lm_head(&mut self, tied: bool, shape: (usize, usize)) -> Result<WeightMatrix>;
}
