//! Per-sequence KV cache.
//!
//! Each sequence owns one `KvCache` (all layers); its length *is* the position of the next token,
//! so a batch needs no separate position bookkeeping. Buffers grow by doubling and are written in
//! place with `slice_set`, so a decode step copies one row per layer, not the whole history.

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    capacity: usize,
    max_len: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers and a context of `max_len` tokens.
    pub fn new(num_layers: usize, max_len: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            capacity: 0,
            max_len,
        }
    }

    /// Tokens already cached = position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the cache buffers (capacity, not length).
    pub fn size_in_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| 2 * l.k.elem_count() * l.k.dtype().size_in_bytes())
            .sum()
    }

    /// Forget everything after `len` tokens (used to re-run a suffix, e.g. when scoring).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn check_room(&self, extra: usize) -> Result<()> {
        if self.len + extra > self.max_len {
            return Err(ModelError::ContextOverflow {
                len: self.len + extra,
                max: self.max_len,
            });
        }
        Ok(())
    }

    /// Writes `k`,`v` (`[kv_heads, t, head_dim]`) at the current position of `layer` and returns
    /// views over the whole history including them. The length only advances in [`Self::commit`],
    /// once every layer has been written, so a failed forward leaves the cache as it was.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (kv_heads, t, hd) = k.dims3()?;
        let needed = self.len + t;
        if needed > self.capacity {
            self.grow(needed, kv_heads, hd, k.dtype(), k.device())?;
        }
        let entry = match &mut self.layers[layer] {
            Some(e) => e,
            slot @ None => {
                let shape = (kv_heads, self.capacity, hd);
                *slot = Some(LayerKv {
                    k: Tensor::zeros(shape, k.dtype(), k.device())?,
                    v: Tensor::zeros(shape, k.dtype(), k.device())?,
                });
                slot.as_mut().expect("just set")
            }
        };
        entry.k.slice_set(&k.contiguous()?, 1, self.len)?;
        entry.v.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((entry.k.narrow(1, 0, needed)?, entry.v.narrow(1, 0, needed)?))
    }

    pub(crate) fn commit(&mut self, t: usize) {
        self.len += t;
    }

    fn grow(
        &mut self,
        needed: usize,
        kv_heads: usize,
        hd: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<()> {
        let new_cap = needed
            .max(self.capacity * 2)
            .max(64)
            .min(self.max_len.max(needed));
        for layer in self.layers.iter_mut() {
            let Some(old) = layer.take() else { continue };
            let shape = (kv_heads, new_cap, hd);
            let k = Tensor::zeros(shape, dtype, device)?;
            let v = Tensor::zeros(shape, dtype, device)?;
            if self.len > 0 {
                k.slice_set(&old.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                v.slice_set(&old.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            }
            *layer = Some(LayerKv { k, v });
        }
        self.capacity = new_cap;
        Ok(())
    }
}
