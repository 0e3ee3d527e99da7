//! 8-bit weight × 8-bit activation products, on every CPU tier.
//!
//! Why: at 8-64 rows a step was dominated by the dense f32 GEMM, which streams 540 MB of f32
//! weights per step and runs 8 multiply-adds per instruction; candle's Q8_0 kernel reads the
//! compact weights but once per row. Here the weights are 8-bit (Q8_0's blocks of 32 with one
//! scale each), packed so that one 512-bit `vpdpbusd` (or two 256-bit ones, or AVX2's
//! `vpmaddubsw` pairs) does 64 multiply-adds for 16 outputs, and each weight block is loaded
//! once per group of rows (up to 16 in decode-sized batches, 4 in prefills; see `fused`).
//!
//! Layout, per tile of 16 outputs and block of 32 inputs: 8 groups × 16 outputs × 4 inputs of
//! `i8` (512 bytes), in a stream of its own the 16 f16 block scales, and in a third the 16 sums
//! `Σw` (i16) whose `-128·Σw` undoes the +128 offset making activations unsigned (`vpdpbusd`
//! multiplies unsigned by signed bytes): 36 bytes per 32 weights, near Q8_0's 34, since a
//! single-stream decode step is bound by streaming them.
//!
//! Each row is computed by the same operations whatever the batch holds (and whatever the
//! tier: the sums are exact integers and the float steps are the same), so a sequence's
//! logits do not depend on what it was batched with.

use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

use super::block::{weight_block, QuantRow};
use super::{Caps, BLOCK, TILE};
use crate::error::Result;

/// A weight matrix `[out, in]` packed for [`PackedQ8::forward`].
#[derive(Debug, Clone)]
pub struct PackedQ8 {
    /// The kernels it is multiplied with, chosen when it was packed.
    caps: Caps,
    pub(super) out: usize,
    pub(super) inp: usize,
    /// `[tile][block][group][lane][4]`.
    w: Vec<i8>,
    /// `[tile][block][lane]`, f16 as in Q8_0 (these bytes are streamed on every decode step).
    d: Vec<f16>,
    /// `[tile][block][lane]`: `Σ_block w`.
    sums: Vec<i16>,
}

impl PackedQ8 {
    /// Quantizes `[out, in]` f32 weights in Q8_0's blocks (scale = max|w|/127). `None` when the
    /// shape does not tile (out % 16, in % 32).
    pub fn from_dense(caps: Caps, w: &[f32], out: usize, inp: usize) -> Option<Self> {
        if !out.is_multiple_of(TILE)
            || !inp.is_multiple_of(BLOCK)
            || w.len() != out * inp
            || out == 0
        {
            return None;
        }
        let blocks = inp / BLOCK;
        let tiles = out / TILE;
        let mut pw = vec![0i8; out * inp];
        let mut pd = vec![f16::ZERO; tiles * blocks * TILE];
        let mut pn = vec![0i16; tiles * blocks * TILE];
        pw.par_chunks_mut(blocks * TILE * BLOCK)
            .zip(pd.par_chunks_mut(blocks * TILE))
            .zip(pn.par_chunks_mut(blocks * TILE))
            .enumerate()
            .for_each(|(t, ((pw, pd), pn))| {
                for lane in 0..TILE {
                    let row = &w[(t * TILE + lane) * inp..(t * TILE + lane + 1) * inp];
                    for (b, src) in row.chunks_exact(BLOCK).enumerate() {
                        let mut q = [0i8; BLOCK];
                        let src = src.try_into().expect("a whole block");
                        let (d, sum) = weight_block(caps, src, &mut q);
                        let dst = &mut pw[b * TILE * BLOCK..(b + 1) * TILE * BLOCK];
                        for (g, four) in q.chunks_exact(4).enumerate() {
                            dst[g * TILE * 4 + lane * 4..][..4].copy_from_slice(four);
                        }
                        pd[b * TILE + lane] = f16::from_f32(d);
                        pn[b * TILE + lane] = sum as i16; // |sum| ≤ 32·127
                    }
                }
            });
        Some(Self {
            caps,
            out,
            inp,
            w: pw,
            d: pd,
            sums: pn,
        })
    }

    /// The kernels it is multiplied with.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// Whether an input width splits into the kernel's blocks.
    pub(crate) fn tiles_input(inp: usize) -> bool {
        inp > 0 && inp.is_multiple_of(BLOCK)
    }

    /// The weights the kernel multiplies by (`q · d` per block), `[out, in]`.
    pub fn to_dense(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.dense_rows(),
            (self.out, self.inp),
            device,
        )?)
    }

    /// [`PackedQ8::to_dense`] as a row-major buffer.
    pub(crate) fn dense_rows(&self) -> Vec<f32> {
        let blocks = self.inp / BLOCK;
        let mut w = vec![0f32; self.out * self.inp];
        for (o, row) in w.chunks_exact_mut(self.inp).enumerate() {
            let (t, lane) = (o / TILE, o % TILE);
            for (j, v) in row.iter_mut().enumerate() {
                let (b, g, k) = (j / BLOCK, (j % BLOCK) / 4, j % 4);
                let base = t * blocks * TILE * BLOCK + b * TILE * BLOCK;
                let q = self.w[base + g * TILE * 4 + lane * 4 + k];
                *v = q as f32 * self.d[(t * blocks + b) * TILE + lane].to_f32();
            }
        }
        w
    }

    /// The product of `n` (1 to 4) consecutive rows on the calling thread: `y` (`n × out`)
    /// `= x·Wᵀ`. Each weight block is loaded once for all `n`; each row's result is the same
    /// as alone.
    pub(crate) fn rows(&self, q: QuantRow<'_>, n: usize, y: &mut [f32]) {
        let blocks = self.inp / BLOCK;
        assert!((1..=4).contains(&n));
        assert!(q.xq.len() >= n * self.inp && q.dx.len() >= n * blocks && y.len() >= n * self.out);
        for t in 0..self.out / TILE {
            // SAFETY: the asserts above keep rows 0..n of `q` and `y` inside their slices.
            unsafe { self.tile(t, q.xq.as_ptr(), q.dx.as_ptr(), n, y.as_mut_ptr(), true) }
        }
    }

    /// Tile `t` (16 outputs) for `n` (1 to 4, 8 or 16) rows: row `j`'s activations at
    /// `x + j·in`, its block scales at `dx + j·blocks`, its outputs at `y + j·out + 16·t`.
    /// `ahead`: prefetch the weights a few blocks ahead, for the first rows to read this tile
    /// (later rows find them in cache).
    ///
    /// # Safety
    /// `n` is one of 1, 2, 3, 4, 8, 16 and the `n` rows lie inside the buffers `x`, `dx` and `y`
    /// point into. (The CPU has the kernel: `caps` came from `Caps::new`.)
    pub(super) unsafe fn tile(
        &self,
        t: usize,
        x: *const u8,
        dx: *const f32,
        n: usize,
        y: *mut f32,
        ahead: bool,
    ) {
        let blocks = self.inp / BLOCK;
        let span = t * blocks * TILE;
        let (w, d, sums) = (
            &self.w[span * BLOCK..(span + blocks * TILE) * BLOCK],
            &self.d[span..span + blocks * TILE],
            &self.sums[span..span + blocks * TILE],
        );
        // SAFETY: the caller keeps row `n - 1`'s outputs of tile `t` inside `y`'s buffer.
        let y = unsafe { y.add(t * TILE) };
        // SAFETY: the table matches this CPU; the caller upholds the rest (see above).
        unsafe {
            (self.caps.table().tile)(n, w, d, sums, blocks, x, self.inp, dx, y, self.out, ahead);
        }
    }

    pub fn size_in_bytes(&self) -> usize {
        self.w.len() + 2 * (self.d.len() + self.sums.len())
    }
}
