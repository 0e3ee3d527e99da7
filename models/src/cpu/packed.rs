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

/// A weight matrix `[out, in]` packed for [`Packed::forward`].
#[derive(Debug, Clone)]
pub struct Packed {
    /// The kernels it is multiplied with, chosen when it was packed.
    caps: Caps,
    pub(super) out: usize,
    pub(super) inp: usize,
    w: Weights,
    /// `[tile][block][lane]`, f16 as in ggml's blocks (these bytes are streamed on every decode
    /// step).
    d: Vec<f16>,
    /// `[tile][block][lane]`: `Σ_block q`.
    sums: Vec<i16>,
}

/// ggml block types whose weights are a scale times small integers, held exactly in 8 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntBlocks {
    /// `d`, then 32 `i8`.
    Q8_0,
    /// `d`, 32 high bits, then 16 bytes of low nibbles: `q = (low | high << 4) − 16`.
    Q5_0,
}

impl IntBlocks {
    fn block_bytes(self) -> usize {
        match self {
            IntBlocks::Q8_0 => 34,
            IntBlocks::Q5_0 => 22,
        }
    }

    /// The block's 32 integers (ggml's order: weight `j` and `j + 16` share byte `j` in Q5_0).
    fn unpack(self, blk: &[u8], q: &mut [i8; BLOCK]) {
        match self {
            IntBlocks::Q8_0 => {
                for (q, &b) in q.iter_mut().zip(&blk[2..34]) {
                    *q = b as i8;
                }
            }
            IntBlocks::Q5_0 => {
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                for (j, &b) in blk[6..22].iter().enumerate() {
                    let hi0 = ((qh >> j) & 1) << 4;
                    let hi1 = ((qh >> (j + 16)) & 1) << 4;
                    q[j] = ((b as u32 & 0x0F) | hi0) as i8 - 16;
                    q[j + 16] = ((b as u32 >> 4) | hi1) as i8 - 16;
                }
            }
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([b[i], b[i + 1]])
}

/// Sub-block `j`'s 6-bit scale and min from a Q4_K block's twelve bytes (ggml's
/// `get_scale_min_k4`).
fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The packed integers: 8 bits (weights `q·d`), or 4 bits (`q·d + m`, ggml's Q4_0 and Q4_1
/// blocks kept as they are, in the same tile layout: see `q4_scalar`).
#[derive(Debug, Clone)]
enum Weights {
    /// `[tile][block][group][lane][4]`.
    Q8(Vec<i8>),
    /// `[tile][block][chunk][lane][4]` nibbles (groups `c` and `c + 4` in one byte), and the
    /// `[tile][block][lane]` offsets.
    Q4 { w: Vec<u8>, m: Vec<f16> },
}

impl Packed {
    /// Quantizes `[out, in]` f32 weights in Q8_0's blocks (scale = max|w|/127). `None` when the
    /// shape does not tile (out % 16, in % 32).
    pub fn from_dense(caps: Caps, w: &[f32], out: usize, inp: usize) -> Option<Self> {
        if w.len() != out * inp {
            return None;
        }
        Self::from_int_blocks(caps, out, inp, |o, b, q| {
            let src = w[o * inp + b * BLOCK..][..BLOCK]
                .try_into()
                .expect("a whole block");
            let (d, sum) = weight_block(caps, src, q);
            (f16::from_f32(d), sum)
        })
    }

    /// ggml blocks whose weights are `d·q` with `q` fitting in an `i8` (Q8_0, Q5_0: `raw` is
    /// the tensor's bytes, `[out, in]` row-major), held with their own scales and integers:
    /// every weight keeps its exact value, where re-quantizing their values would round a
    /// second time. `None` for other types and for shapes that do not tile.
    pub fn from_int_ggml_blocks(
        caps: Caps,
        raw: &[u8],
        kind: IntBlocks,
        out: usize,
        inp: usize,
    ) -> Option<Self> {
        let size = kind.block_bytes();
        let blocks = inp / BLOCK;
        if raw.len() != out * blocks * size {
            return None;
        }
        Self::from_int_blocks(caps, out, inp, |o, b, q| {
            let blk = &raw[(o * blocks + b) * size..][..size];
            let d = f16::from_le_bytes([blk[0], blk[1]]);
            kind.unpack(blk, q);
            (d, q.iter().map(|&v| v as i32).sum())
        })
    }

    /// The 8-bit layout from each weight block's scale and integers, given by `block(row,
    /// block, q) -> (d, Σq)`.
    fn from_int_blocks(
        caps: Caps,
        out: usize,
        inp: usize,
        block: impl Fn(usize, usize, &mut [i8; BLOCK]) -> (f16, i32) + Sync,
    ) -> Option<Self> {
        if !out.is_multiple_of(TILE) || !inp.is_multiple_of(BLOCK) || out == 0 {
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
                    for b in 0..blocks {
                        let mut q = [0i8; BLOCK];
                        let (d, sum) = block(t * TILE + lane, b, &mut q);
                        let dst = &mut pw[b * TILE * BLOCK..(b + 1) * TILE * BLOCK];
                        for (g, four) in q.chunks_exact(4).enumerate() {
                            dst[g * TILE * 4 + lane * 4..][..4].copy_from_slice(four);
                        }
                        pd[b * TILE + lane] = d;
                        pn[b * TILE + lane] = sum as i16; // |sum| ≤ 32·127
                    }
                }
            });
        Some(Self {
            caps,
            out,
            inp,
            w: Weights::Q8(pw),
            d: pd,
            sums: pn,
        })
    }

    /// ggml Q4_0 or Q4_1 blocks (`raw`: the tensor's bytes, `[out, in]` row-major, 32 weights
    /// per block) held as they are in 4 bits: every weight keeps its exact value. `None` for
    /// other types and for shapes that do not tile.
    pub fn from_q4_blocks(
        caps: Caps,
        raw: &[u8],
        q4_1: bool,
        out: usize,
        inp: usize,
    ) -> Option<Self> {
        let size = if q4_1 { 20 } else { 18 };
        let blocks = inp / BLOCK;
        if raw.len() != out * blocks * size {
            return None;
        }
        Self::from_nibble_blocks(caps, out, inp, |o, b| {
            let blk = &raw[(o * blocks + b) * size..][..size];
            let d = f16_at(blk, 0);
            // Q4_0's weights are `d·(q − 8)`: an offset of −8d, exact in f16.
            let (m, qs) = if q4_1 {
                (f16_at(blk, 2), &blk[4..20])
            } else {
                (f16::from_f32(-8.0 * d.to_f32()), &blk[2..18])
            };
            Some((d, m, qs.try_into().expect("16 bytes")))
        })
    }

    /// ggml Q4_K blocks (256 weights: `d`, `dmin`, twelve bytes of 6-bit sub-block scales and
    /// mins, 128 bytes of nibbles) in the 4-bit form: each 32-weight sub-block's weights are
    /// `d·sc·q − dmin·m`, Q4_1's shape, so only its scale and offset round (once, to f16);
    /// re-quantizing the values to 8 bits would round every weight and double the bytes.
    /// `None` for shapes that do not tile, and where a scale or offset overflows f16.
    pub fn from_q4k_blocks(caps: Caps, raw: &[u8], out: usize, inp: usize) -> Option<Self> {
        const SUPER: usize = 256;
        const SIZE: usize = 144;
        if !inp.is_multiple_of(SUPER) || raw.len() != out * inp / SUPER * SIZE {
            return None;
        }
        let supers = inp / SUPER;
        Self::from_nibble_blocks(caps, out, inp, |o, b| {
            let blk = &raw[(o * supers + b / 8) * SIZE..][..SIZE];
            let (d, dmin) = (f16_at(blk, 0).to_f32(), f16_at(blk, 2).to_f32());
            let (sc, m) = q4k_scale_min(b % 8, &blk[4..16]);
            // Sub-blocks 2i and 2i + 1 are the low and high nibbles of bytes 32i..32i + 32.
            let src = &blk[16 + (b % 8 / 2) * 32..][..32];
            let nib = |l: usize| {
                if b % 2 == 0 {
                    src[l] & 0x0F
                } else {
                    src[l] >> 4
                }
            };
            let qs: [u8; 16] = std::array::from_fn(|j| nib(j) | nib(j + 16) << 4);
            let (scale, offset) = (
                f16::from_f32(d * sc as f32),
                f16::from_f32(-(dmin * m as f32)),
            );
            (scale.is_finite() && offset.is_finite()).then_some((scale, offset, qs))
        })
    }

    /// The 4-bit layout from each block's scale `d`, offset `m` and 16 bytes of nibbles in
    /// ggml's order (byte `j`: weight `j` low, `j + 16` high), given by `block(row, block)`;
    /// `None` when the shape does not tile or a block gives none.
    fn from_nibble_blocks(
        caps: Caps,
        out: usize,
        inp: usize,
        block: impl Fn(usize, usize) -> Option<(f16, f16, [u8; 16])> + Sync,
    ) -> Option<Self> {
        if !out.is_multiple_of(TILE) || !inp.is_multiple_of(BLOCK) || out == 0 {
            return None;
        }
        let blocks = inp / BLOCK;
        let tiles = out / TILE;
        let mut pw = vec![0u8; out * inp / 2];
        let mut pd = vec![f16::ZERO; tiles * blocks * TILE];
        let mut pm = vec![f16::ZERO; tiles * blocks * TILE];
        let mut pn = vec![0i16; tiles * blocks * TILE];
        let ok = pw
            .par_chunks_mut(blocks * TILE * BLOCK / 2)
            .zip(pd.par_chunks_mut(blocks * TILE))
            .zip(pm.par_chunks_mut(blocks * TILE))
            .zip(pn.par_chunks_mut(blocks * TILE))
            .enumerate()
            .all(|(t, (((pw, pd), pm), pn))| {
                for lane in 0..TILE {
                    for b in 0..blocks {
                        let Some((d, m, qs)) = block(t * TILE + lane, b) else {
                            return false;
                        };
                        // ggml: byte j holds weight j (low nibble) and j + 16 (high nibble),
                        // which is this layout's chunk j / 4 for groups j / 4 and j / 4 + 4.
                        let dst = &mut pw[b * TILE * BLOCK / 2..(b + 1) * TILE * BLOCK / 2];
                        for (j, &byte) in qs.iter().enumerate() {
                            dst[(j / 4) * TILE * 4 + lane * 4 + j % 4] = byte;
                        }
                        pd[b * TILE + lane] = d;
                        pm[b * TILE + lane] = m;
                        pn[b * TILE + lane] = qs
                            .iter()
                            .map(|&v| (v & 0x0F) as i16 + (v >> 4) as i16)
                            .sum();
                    }
                }
                true
            });
        ok.then_some(Self {
            caps,
            out,
            inp,
            w: Weights::Q4 { w: pw, m: pm },
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

    /// The weights the kernel multiplies by (`q·d`, or `q·d + m` in 4 bits), `[out, in]`.
    pub fn to_dense(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.dense_rows(),
            (self.out, self.inp),
            device,
        )?)
    }

    /// [`Packed::to_dense`] as a row-major buffer.
    pub(crate) fn dense_rows(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out * self.inp];
        for (o, row) in w.chunks_exact_mut(self.inp).enumerate() {
            self.row_into(o, row);
        }
        w
    }

    /// Row `o`'s weights (`inp` values) into `row`, as [`Packed::dense_rows`] gives them: an
    /// embedding table held once, its lookups read from the packed form the output projection
    /// multiplies with.
    pub(crate) fn row_into(&self, o: usize, row: &mut [f32]) {
        assert!(o < self.out && row.len() == self.inp);
        let blocks = self.inp / BLOCK;
        {
            let (t, lane) = (o / TILE, o % TILE);
            for (j, v) in row.iter_mut().enumerate() {
                let (b, g, k) = (j / BLOCK, (j % BLOCK) / 4, j % 4);
                let s = (t * blocks + b) * TILE + lane;
                let d = self.d[s].to_f32();
                *v = match &self.w {
                    Weights::Q8(w) => {
                        let base = t * blocks * TILE * BLOCK + b * TILE * BLOCK;
                        w[base + g * TILE * 4 + lane * 4 + k] as f32 * d
                    }
                    Weights::Q4 { w, m } => {
                        let base = (t * blocks * TILE * BLOCK + b * TILE * BLOCK) / 2;
                        let byte = w[base + (g % 4) * TILE * 4 + lane * 4 + k];
                        let q = if g < 4 { byte & 0x0F } else { byte >> 4 };
                        q as f32 * d + m[s].to_f32()
                    }
                };
            }
        }
    }

    /// The product of `n` (1 to 4) consecutive rows on the calling thread: `y` (`n × out`)
    /// `= x·Wᵀ`. Each weight block is loaded once for all `n`; each row's result is the same
    /// as alone.
    pub(crate) fn rows(&self, q: QuantRow<'_>, n: usize, y: &mut [f32]) {
        assert!((1..=4).contains(&n) && y.len() >= n * self.out);
        for t in 0..self.out / TILE {
            // SAFETY: rows 0..n of `y` hold `n × out` values (asserted above).
            unsafe { self.tile(t, q, n, y.as_mut_ptr(), true) }
        }
    }

    /// Tile `t` (16 outputs) for the `n` (1 to 4, 8 or 16) rows of `q`: row `j`'s outputs at
    /// `y + j·out + 16·t`. `ahead`: prefetch the weights a few blocks ahead, for the first rows
    /// to read this tile (later rows find them in cache).
    ///
    /// # Safety
    /// Rows `0..n` of `y` (`out` values each) are writable. (The CPU has the kernel: `caps`
    /// came from `Caps::new`; `q`'s lengths are checked here.)
    pub(super) unsafe fn tile(
        &self,
        t: usize,
        q: QuantRow<'_>,
        n: usize,
        y: *mut f32,
        ahead: bool,
    ) {
        let blocks = self.inp / BLOCK;
        assert!(matches!(n, 1..=4 | 8 | 16), "tile of {n} rows");
        assert!(q.xq.len() >= n * self.inp && q.dx.len() >= n * blocks && q.sx.len() >= n * blocks);
        let span = t * blocks * TILE;
        let (d, sums) = (
            &self.d[span..span + blocks * TILE],
            &self.sums[span..span + blocks * TILE],
        );
        let (x, dx, sx) = (q.xq.as_ptr(), q.dx.as_ptr(), q.sx.as_ptr());
        // SAFETY: the caller keeps row `n - 1`'s outputs of tile `t` inside `y`'s buffer.
        let y = unsafe { y.add(t * TILE) };
        let (inp, out, k) = (self.inp, self.out, self.caps.table());
        match &self.w {
            // SAFETY: the table matches this CPU; the slices hold tile `t`'s blocks, `q` holds
            // `n` rows (asserted), the caller keeps `y`'s.
            Weights::Q8(w) => unsafe {
                let w = &w[span * BLOCK..(span + blocks * TILE) * BLOCK];
                (k.tile)(n, w, d, sums, blocks, x, inp, dx, y, out, ahead);
            },
            // SAFETY: as above, for the 4-bit form (half the bytes per block).
            Weights::Q4 { w, m } => unsafe {
                let w = &w[span * BLOCK / 2..(span + blocks * TILE) * BLOCK / 2];
                let m = &m[span..span + blocks * TILE];
                (k.tile4)(n, w, d, m, sums, blocks, x, inp, dx, sx, y, out, ahead);
            },
        }
    }

    pub fn size_in_bytes(&self) -> usize {
        let w = match &self.w {
            Weights::Q8(w) => w.len(),
            Weights::Q4 { w, m } => w.len() + 2 * m.len(),
        };
        w + 2 * (self.d.len() + self.sums.len())
    }

    /// Whether the weights are held in 4 bits.
    pub fn is_4bit(&self) -> bool {
        matches!(self.w, Weights::Q4 { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::tests::data;
    use super::super::Tier;
    use super::*;

    /// ggml blocks of a `[out, in]` matrix: Q4_1 (`d`, `m`, 16 bytes) or Q4_0 (`d`, 16 bytes),
    /// and the values they stand for.
    fn ggml_q4(out: usize, inp: usize, q4_1: bool) -> (Vec<u8>, Vec<f32>) {
        let (mut raw, mut values) = (Vec::new(), Vec::new());
        let noise = data(out * inp, 5);
        for (bi, blk) in noise.chunks_exact(BLOCK).enumerate() {
            let d = f16::from_f32(0.01 + (bi % 7) as f32 * 0.003);
            let m = f16::from_f32(-0.05 * (bi % 3) as f32);
            raw.extend(d.to_le_bytes());
            if q4_1 {
                raw.extend(m.to_le_bytes());
            }
            let q: Vec<u8> = blk
                .iter()
                .map(|v| ((v + 1.0) * 7.5).round() as u8)
                .collect();
            for j in 0..16 {
                raw.push(q[j] | (q[j + 16] << 4));
            }
            for &q in &q {
                values.push(if q4_1 {
                    d.to_f32() * q as f32 + m.to_f32()
                } else {
                    d.to_f32() * (q as f32 - 8.0)
                });
            }
        }
        (raw, values)
    }

    #[test]
    fn q4_blocks_keep_their_values_and_multiply_on_every_tier() {
        let (out, inp, rows) = (48, 96, 5);
        for q4_1 in [true, false] {
            let (raw, w) = ggml_q4(out, inp, q4_1);
            let x = data(rows * inp, 2);
            let xt = Tensor::from_vec(x.clone(), (rows, inp), &Device::Cpu).unwrap();
            let mut first: Option<Vec<u32>> = None;
            for tier in Tier::available() {
                let caps = Caps::new(tier).unwrap();
                let p = Packed::from_q4_blocks(caps, &raw, q4_1, out, inp).unwrap();
                assert!(p.is_4bit() && p.size_in_bytes() < out * inp * 36 / 32);
                // Every weight exactly as ggml dequantizes it.
                let back = p.dense_rows();
                for (i, (a, b)) in back.iter().zip(&w).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                        "weight {i}: {a} vs {b}"
                    );
                }
                let y: Vec<f32> = p
                    .forward(&xt)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for r in 0..rows {
                    for o in 0..out {
                        let want: f32 = (0..inp).map(|i| w[o * inp + i] * x[r * inp + i]).sum();
                        // One 8-bit rounding of the activations (≤ 1/254 of each block's
                        // largest), over 96 weights of at most ~0.1.
                        let got = y[r * out + o];
                        assert!((got - want).abs() < 0.03, "{tier} {r},{o}: {got} vs {want}");
                    }
                }
                let bits: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                match &first {
                    None => first = Some(bits),
                    Some(f) => assert_eq!(f, &bits, "{tier} vs the portable tier"),
                }
            }
        }
        assert!(Packed::from_q4_blocks(Caps::portable(), &[0; 20], true, 16, 32).is_none());
    }
}
