//! Weight names and the in-memory dtype policy shared by the GGUF and safetensors readers.

use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::cpu::{Caps, IntBlocks, Packed};
use crate::error::Result;
use crate::kernels::Kernels;
use crate::layers::{Embedding, WeightMatrix};
pub use crate::names::{Naming, Proj};

/// How weights are held in memory (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// The fastest form for these kernels and this file (see [`WeightDtype::resolve`]).
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

/// What a weight matrix becomes in memory, once `Auto` has been decided for the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    /// Float matrix in this dtype (activations run in it too).
    Dense(DType),
    /// ggml blocks for candle's quantized matmul: the file's own (`auto`), or Q8_0 (`q8_0`).
    Quantized { requantize: bool },
    /// Packed for the CPU wing's kernels: Q4_0/Q4_1/Q4_K blocks in 4 bits (unless `eight`),
    /// everything else in 8 bits (shapes that do not tile keep the file's blocks).
    Packed { caps: Caps, eight: bool },
}

impl WeightDtype {
    /// On the CPU wing `auto` packs a quantized file in 4 bits where its blocks are 4-bit
    /// (Q4_0, Q4_1, Q4_K) and in 8 bits otherwise: those kernels serve every row count, so
    /// neither candle's blocks nor a dense copy are kept. candle's kernels hold the file's blocks as they are (no CPU rule applies
    /// to a GPU load), and float files stay float.
    pub(crate) fn resolve(
        self,
        file_is_quantized: bool,
        file_dtype: DType,
        device: &Device,
        kernels: Kernels,
    ) -> Holding {
        match (self, kernels) {
            (WeightDtype::F32, _) => Holding::Dense(DType::F32),
            (WeightDtype::F16, _) => Holding::Dense(DType::F16),
            (WeightDtype::Bf16, _) => Holding::Dense(DType::BF16),
            (WeightDtype::Auto, Kernels::Cpu(caps)) if file_is_quantized => {
                Holding::Packed { caps, eight: false }
            }
            (WeightDtype::Q8_0, Kernels::Cpu(caps)) => Holding::Packed { caps, eight: true },
            (WeightDtype::Q8_0, Kernels::Candle) => Holding::Quantized { requantize: true },
            (WeightDtype::Auto, Kernels::Candle) if file_is_quantized => {
                Holding::Quantized { requantize: false }
            }
            (WeightDtype::Auto, _) if device.is_cpu() => Holding::Dense(DType::F32),
            (WeightDtype::Auto, _) => Holding::Dense(file_dtype),
        }
    }
}

impl Holding {
    pub(crate) fn activation_dtype(self) -> DType {
        match self {
            Holding::Dense(dt) => dt,
            Holding::Quantized { .. } | Holding::Packed { .. } => DType::F32,
        }
    }

    /// Turns a loaded tensor into the held form.
    pub(crate) fn matrix_from_q(self, q: QTensor, device: &Device) -> Result<WeightMatrix> {
        Ok(match self {
            Holding::Dense(dt) => WeightMatrix::Dense(q.dequantize(device)?.to_dtype(dt)?),
            Holding::Quantized { requantize } => {
                let q = if requantize && q.dtype() != GgmlDType::Q8_0 {
                    QTensor::quantize(&q.dequantize(device)?, GgmlDType::Q8_0)?
                } else {
                    q
                };
                WeightMatrix::Quantized(Arc::new(q))
            }
            Holding::Packed { caps, eight } => match packed(caps, eight, &q, device)? {
                Some(p) => p,
                None => WeightMatrix::Quantized(Arc::new(q)),
            },
        })
    }

    pub(crate) fn matrix_from_dense(self, t: Tensor) -> Result<WeightMatrix> {
        Ok(match self {
            Holding::Dense(dt) => WeightMatrix::Dense(t.to_dtype(dt)?),
            Holding::Quantized { .. } | Holding::Packed { .. } => {
                let t32 = t.to_dtype(DType::F32)?;
                if let Holding::Packed { caps, .. } = self {
                    if let Some(p) = packed_dense(caps, &t32)? {
                        return Ok(p);
                    }
                }
                match QTensor::quantize(&t32, GgmlDType::Q8_0) {
                    Ok(q) => WeightMatrix::Quantized(Arc::new(q)),
                    // Row length not a multiple of the block size: stay dense.
                    Err(_) => WeightMatrix::Dense(t32),
                }
            }
        })
    }

    /// The token table: on the CPU wing packed when that keeps every value of the file's
    /// blocks (so a tied output projection shares it), else the file's blocks.
    pub(crate) fn embedding_from_q(self, q: Arc<QTensor>, device: &Device) -> Result<Embedding> {
        Ok(match self {
            Holding::Dense(dt) => Embedding::Dense(q.dequantize(device)?.to_dtype(dt)?),
            Holding::Packed { caps, eight } if packs_exactly(q.dtype(), eight) => {
                match packed(caps, eight, &q, device)? {
                    Some(WeightMatrix::Packed(p)) => Embedding::Packed(p),
                    _ => Embedding::Quantized(q),
                }
            }
            Holding::Quantized { .. } | Holding::Packed { .. } => Embedding::Quantized(q),
        })
    }

    /// A matrix over blocks that the embedding also holds (tied output projection): shared
    /// while they stay as the file's blocks, converted otherwise.
    pub(crate) fn shared_matrix(self, q: Arc<QTensor>, device: &Device) -> Result<WeightMatrix> {
        match self {
            Holding::Quantized { requantize } if !requantize || q.dtype() == GgmlDType::Q8_0 => {
                Ok(WeightMatrix::Quantized(q))
            }
            Holding::Packed { caps, eight } => Ok(match packed(caps, eight, &q, device)? {
                Some(p) => p,
                None => WeightMatrix::Quantized(q),
            }),
            _ => self.matrix_from_dense(q.dequantize(device)?),
        }
    }
}

/// `q` packed: Q4_0/Q4_1 blocks in 4 bits as they are and Q4_K's sub-blocks in the same form
/// (unless `eight`), Q8_0/Q5_0 blocks in 8 bits with their own scales and integers, other types
/// in 8 bits from their values; `None` when the shape does not tile.
fn packed(caps: Caps, eight: bool, q: &QTensor, device: &Device) -> Result<Option<WeightMatrix>> {
    let (out, inp) = q.shape().dims2()?;
    let exact = match q.dtype() {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 if !eight => {
            let q4_1 = q.dtype() == GgmlDType::Q4_1;
            Packed::from_q4_blocks(caps, &q.data()?, q4_1, out, inp)
        }
        GgmlDType::Q4K if !eight => Packed::from_q4k_blocks(caps, &q.data()?, out, inp),
        GgmlDType::Q8_0 => {
            Packed::from_int_ggml_blocks(caps, &q.data()?, IntBlocks::Q8_0, out, inp)
        }
        GgmlDType::Q5_0 => {
            Packed::from_int_ggml_blocks(caps, &q.data()?, IntBlocks::Q5_0, out, inp)
        }
        _ => None,
    };
    match exact {
        Some(p) => Ok(Some(WeightMatrix::Packed(Arc::new(p)))),
        None => packed_dense(caps, &q.dequantize(device)?),
    }
}

/// Whether [`packed`] keeps every value of `dtype`'s blocks (the 4-bit types only in 4 bits).
fn packs_exactly(dtype: GgmlDType, eight: bool) -> bool {
    match dtype {
        GgmlDType::Q8_0 | GgmlDType::Q5_0 => true,
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => !eight,
        _ => false,
    }
}

/// `dense` packed in 8 bits, when its shape tiles.
fn packed_dense(caps: Caps, dense: &Tensor) -> Result<Option<WeightMatrix>> {
    let (out, inp) = dense.dims2()?;
    let values: Vec<f32> = dense.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(Packed::from_dense(caps, &values, out, inp).map(|p| WeightMatrix::Packed(Arc::new(p))))
}

/// A loaded norm weight or bias: in f32 plus `offset`, then in `dtype` (so that Gemma's
/// `1 + w` is exact whatever the activations are).
pub(crate) fn offset_vector(v: Tensor, offset: f64, dtype: DType) -> Result<Tensor> {
    let v = v.to_dtype(DType::F32)?;
    let v = if offset != 0.0 { (v + offset)? } else { v };
    Ok(v.to_dtype(dtype)?)
}

/// What the model builder needs from a weight file, whatever its format.
pub(crate) trait WeightReader {
    fn naming(&self) -> Naming;
    fn device(&self) -> &Device;
    fn kernels(&self) -> Kernels;
    fn activation_dtype(&self) -> DType;
    /// A `[out, in]` matrix, checked against `shape`.
    fn matrix(&mut self, name: String, shape: (usize, usize)) -> Result<WeightMatrix>;
    /// A fused `[Σ rows, in]` matrix split into row blocks of `rows` (Phi-3's `qkv_proj` and
    /// `gate_up_proj`): each block is held as its own matrix, as if the file had them apart.
    fn matrices(&mut self, name: String, rows: &[usize], inp: usize) -> Result<Vec<WeightMatrix>>;
    /// A norm weight or bias, in f32 plus `offset` (Gemma's `1 + w`), then in the activation
    /// dtype.
    fn vector(&mut self, name: String, len: usize, offset: f64) -> Result<Tensor>;
    fn embedding(&mut self, vocab: usize, hidden: usize) -> Result<Embedding>;
    /// The output projection; the embedding table when the file has none (tied).
    fn lm_head(&mut self, tied: bool, shape: (usize, usize)) -> Result<WeightMatrix>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q8_0 and Q5_0 keep every weight's value when packed (no second rounding); other types
    /// round once, to 8 bits of their values.
    #[test]
    fn q8_0_and_q5_0_blocks_pack_exactly() {
        let (out, inp) = (32, 64);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 2654435761) % 1999) as f32 / 999.0 - 1.0)
            .collect();
        let t = Tensor::from_vec(w, (out, inp), &Device::Cpu).unwrap();
        let caps = Caps::portable();
        for ty in [GgmlDType::Q8_0, GgmlDType::Q5_0] {
            let q = QTensor::quantize(&t, ty).unwrap();
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let Some(WeightMatrix::Packed(p)) = packed(caps, false, &q, &Device::Cpu).unwrap()
            else {
                panic!("{ty:?} not packed");
            };
            assert_eq!(p.dense_rows(), want, "{ty:?}");
        }
    }

    /// Q4_K's sub-blocks stay 4-bit, their weights off only by the f16 rounding of each
    /// sub-block's scale and offset: far closer to the file than 8 bits of its values.
    #[test]
    fn q4_k_blocks_pack_in_four_bits_close_to_their_values() {
        let (out, inp) = (32, 512);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| (((i * 2654435761) % 1999) as f32 / 999.0 - 1.0) * (1.0 + (i % 7) as f32))
            .collect();
        let t = Tensor::from_vec(w, (out, inp), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
        let want: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let worst = |p: &Packed| {
            p.dense_rows()
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let caps = Caps::portable();
        let Some(WeightMatrix::Packed(p4)) = packed(caps, false, &q, &Device::Cpu).unwrap() else {
            panic!("Q4_K not packed");
        };
        let Some(WeightMatrix::Packed(p8)) = packed(caps, true, &q, &Device::Cpu).unwrap() else {
            panic!("Q4_K not packed in 8 bits");
        };
        assert!(p4.is_4bit() && !p8.is_4bit());
        assert!(p4.size_in_bytes() * 8 < p8.size_in_bytes() * 5);
        let (e4, e8) = (worst(&p4), worst(&p8));
        assert!(e4 < 0.01 && e4 * 4.0 < e8, "4-bit {e4}, 8-bit {e8}");
    }
}
