//! The dense f32 product every dense projection and dense LoRA delta goes through, written once
//! so that a row's result never depends on its batch.

use candle_core::Tensor;

use crate::error::Result;

/// Row counts up to which `x·wᵀ` is computed as `(w·xᵀ)ᵀ`.
const TRANSPOSED_MAX_ROWS: usize = 32;

/// `x · wᵀ`, with a result for each row that does not depend on how many rows share the call.
///
/// For few rows it is computed as `(w·xᵀ)ᵀ`: gemm 0.19 then packs the small activation panel
/// instead of re-packing the whole weight matrix on every call; for many rows (prefill) the direct form is faster. gemm's blocked kernel sums
/// each output along `k` in an order that depends only on `k`, in both forms; but a single row
/// goes to a GEMV kernel and tiny outputs (`rows·out ≤ 256`) to "horizontal" kernels, which sum
/// in other orders. Padding such calls with zero rows keeps a sequence's logits the same whether
/// it runs alone or in a batch. For real models this only pads a lone row to two, which makes
/// f32 single-stream decode slower; `--dtype auto` decodes few rows on quantized weights instead.
pub(crate) fn dense_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (rows, out) = (x.dim(0)?, w.dim(0)?);
    let min_rows = (256 / out.max(1) + 1).max(2);
    let (x, pad) = if rows < min_rows {
        let zeros = Tensor::zeros((min_rows - rows, x.dim(1)?), x.dtype(), x.device())?;
        (Tensor::cat(&[x, &zeros], 0)?, true)
    } else {
        (x.clone(), false)
    };
    let y = if x.dim(0)? <= TRANSPOSED_MAX_ROWS {
        w.matmul(&x.t()?)?.t()?
    } else {
        x.matmul(&w.t()?)?
    };
    let y = if pad { y.narrow(0, 0, rows)? } else { y };
    Ok(y.contiguous()?)
}
