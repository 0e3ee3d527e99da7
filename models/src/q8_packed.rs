//! 8-bit weight × 8-bit activation products for decode-sized batches, with AVX-512 VNNI.
//!
//! Why: at 8-64 rows a step was dominated by the dense f32 GEMM, which streams 540 MB of f32
//! weights per step and runs 8 multiply-adds per instruction; candle's Q8_0 kernel reads the
//! compact weights but once per row. Here the weights are 8-bit (Q8_0's blocks of 32 with one
//! scale each), packed so that one `vpdpbusd` does 64 multiply-adds for 16 outputs, and each
//! weight block is loaded once per group of rows (up to 16 in decode-sized batches, 4 in
//! prefills; see `Job::tiles`).
//!
//! Layout, per tile of 16 outputs and block of 32 inputs: 8 groups × 16 outputs × 4 inputs of
//! `i8` (512 bytes), in a stream of its own the 16 f16 block scales, and in a third the 16 sums
//! `Σw` (i16) whose `-128·Σw` undoes the +128 offset making activations unsigned (`vpdpbusd`
//! multiplies unsigned by signed bytes): 36 bytes per 32 weights, near Q8_0's 34, since a
//! single-stream decode step is bound by streaming them.
//!
//! Each row is computed by the same instruction sequence whatever the batch holds, so a
//! sequence's logits do not depend on what it was batched with.

use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::Result;
use crate::q8_block::{has_simd, quantize_rows, weight_block, QuantRow, BLOCK};

/// A per-row addition computed inside a packed pass: a LoRA delta. The pass needs only this of
/// it, so the packed kernel does not depend on the adapter types built on top of it.
pub(crate) trait RowDelta: Sync {
    /// Writes the deltas of `n` rows (`x`, quantized as `q`) into `out`; false when this delta
    /// cannot run on the CPU path.
    fn write_rows(
        &self,
        x: &[f32],
        q: Option<QuantRow<'_>>,
        n: usize,
        out: &mut [std::mem::MaybeUninit<f32>],
    ) -> bool;
}

/// The delta of a pass that has none.
pub(crate) enum NoDelta {}

impl RowDelta for NoDelta {
    fn write_rows(
        &self,
        _: &[f32],
        _: Option<QuantRow<'_>>,
        _: usize,
        _: &mut [std::mem::MaybeUninit<f32>],
    ) -> bool {
        match *self {}
    }
}

/// Outputs per tile (and the row padding of an 8-bit LoRA `A`, see `lora_q8`).
pub(crate) const TILE: usize = 16;

/// Up to this many rows a pass computes the LoRA deltas beside the tiles into a buffer of its
/// own and adds it at the end (one thread-pool round trip; the buffer stays in cache). Past it
/// — prefills — that buffer would be megabytes written, re-read and added back per projection
/// (a 512-row prefill over 16 adapters spent 13% more than the base, mostly there), so the
/// deltas run after the tiles instead, each run adding its own rows through a small scratch.
const FUSED_ROWS: usize = 32;

/// A weight matrix `[out, in]` packed for [`PackedQ8::forward`].
#[derive(Debug, Clone)]
pub struct PackedQ8 {
    out: usize,
    inp: usize,
    /// `[tile][block][group][lane][4]`.
    w: Vec<i8>,
    /// `[tile][block][lane]`, f16 as in Q8_0 (these bytes are streamed on every decode step).
    d: Vec<f16>,
    /// `[tile][block][lane]`: `Σ_block w`.
    sums: Vec<i16>,
}

impl PackedQ8 {
    /// Whether this CPU runs the kernel; without it callers keep candle's quantized matmul.
    pub fn supported() -> bool {
        crate::host_kernels::cpu_has!("avx512f", "avx512bw", "avx512vnni")
    }

    /// Quantizes `[out, in]` f32 weights in Q8_0's blocks (scale = max|w|/127). `None` when the
    /// shape does not tile (out % 16, in % 32).
    pub fn from_dense(w: &[f32], out: usize, inp: usize) -> Option<Self> {
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
        let simd = has_simd();
        pw.par_chunks_mut(blocks * TILE * BLOCK)
            .zip(pd.par_chunks_mut(blocks * TILE))
            .zip(pn.par_chunks_mut(blocks * TILE))
            .enumerate()
            .for_each(|(t, ((pw, pd), pn))| {
                for lane in 0..TILE {
                    let row = &w[(t * TILE + lane) * inp..(t * TILE + lane + 1) * inp];
                    for (b, src) in row.chunks_exact(BLOCK).enumerate() {
                        let mut q = [0i8; BLOCK];
                        let (d, sum) = weight_block(src, &mut q, simd);
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
            out,
            inp,
            w: pw,
            d: pd,
            sums: pn,
        })
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
    /// The CPU has the kernel ([`PackedQ8::supported`]; a `PackedQ8` is only multiplied where
    /// it is), and the `n` rows lie inside the buffers `x`, `dx` and `y` point into.
    unsafe fn tile(
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
        let (inp, out, y) = (self.inp, self.out, y.add(t * TILE));
        match n {
            16 => x86::tile::<16>(w, d, sums, blocks, x, inp, dx, y, out, ahead),
            8 => x86::tile::<8>(w, d, sums, blocks, x, inp, dx, y, out, ahead),
            4 => x86::tile::<4>(w, d, sums, blocks, x, inp, dx, y, out, ahead),
            3 => x86::tile::<3>(w, d, sums, blocks, x, inp, dx, y, out, ahead),
            2 => x86::tile::<2>(w, d, sums, blocks, x, inp, dx, y, out, ahead),
            1 => x86::tile::<1>(w, d, sums, blocks, x, inp, dx, y, out, ahead),
            // Outputs are not zeroed first (see `Job::buffers`): a row count without a kernel
            // must not pass for one row.
            _ => unreachable!("tile of {n} rows"),
        }
    }

    pub fn size_in_bytes(&self) -> usize {
        self.w.len() + 2 * (self.d.len() + self.sums.len())
    }

    /// `x`: `[rows, in]` f32 → `[rows, out]`. Only call when [`PackedQ8::supported`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with_lora::<NoDelta>(x, &[])
    }

    /// [`PackedQ8::forward`] plus row `r`'s LoRA delta `lora[r]` (none past `lora.len()`). The
    /// deltas are computed by the same tasks as the product (rows spread over them), then added
    /// once all are done: one thread-pool round trip for both.
    pub(crate) fn forward_with_lora<D: RowDelta>(
        &self,
        x: &Tensor,
        lora: &[Option<&D>],
    ) -> Result<Tensor> {
        let mut y = Self::forward_many(&[self], x, &[lora])?;
        Ok(y.pop().expect("one matrix, one product"))
    }

    /// The products (with their LoRA deltas, `loras[m]` for `mats[m]`) of several matrices
    /// that share their input — q, k and v; gate and up — in one parallel pass: the input is
    /// quantized once and the thread pool woken once, where a decode step otherwise pays a
    /// wake-up and a sleep per projection.
    pub(crate) fn forward_many<D: RowDelta>(
        mats: &[&PackedQ8],
        x: &Tensor,
        loras: &[&[Option<&D>]],
    ) -> Result<Vec<Tensor>> {
        debug_assert!(loras.is_empty() || loras.len() == mats.len());
        let (rows, inp) = x.dims2()?;
        if let Some(m) = mats.iter().find(|m| m.inp != inp) {
            return Err(crate::ModelError::InvalidBatch(format!(
                "input width {inp}, packed weights expect {}",
                m.inp
            )));
        }
        let xs = crate::host_kernels::f32_values(x)?;
        let (xq, dx) = quantize_rows(&xs, rows, inp);
        let input = Input {
            xs: &xs,
            xq: &xq,
            dx: &dx,
            rows,
        };
        let threads = rayon::current_num_threads().max(1);
        let fused = rows <= FUSED_ROWS;
        let jobs: Vec<Job<D>> = mats
            .iter()
            .enumerate()
            .map(|(m, w)| {
                let lora = loras.get(m).copied().unwrap_or(&[]);
                Job::new(w, lora, threads, m, fused)
            })
            .collect();
        // Outputs and deltas apart from the jobs: tasks share the jobs and write these.
        let mut bufs: Vec<(Vec<f32>, Vec<f32>)> = jobs.iter().map(|j| j.buffers(rows)).collect();
        // Chunk-major order: rayon halves the list between threads, and each half then holds
        // a like share of every matrix.
        let most = jobs.iter().map(|j| j.chunks).max().unwrap_or(0);
        let tasks: Vec<(usize, usize)> = (0..most)
            .flat_map(|c| (0..jobs.len()).map(move |m| (m, c)))
            .filter(|&(m, c)| c < jobs[m].chunks)
            .collect();
        let ptrs: Vec<(SendPtr, SendPtr)> = bufs
            .iter_mut()
            .map(|(y, d)| (SendPtr(y.as_mut_ptr()), SendPtr(d.as_mut_ptr())))
            .collect();
        let ok = tasks.into_par_iter().all(|(m, c)| {
            let (y, delta) = &ptrs[m];
            jobs[m].run(c, &input, y, delta)
        });
        // Past `FUSED_ROWS`: every (matrix, run) of LoRA rows once all tiles are written.
        let after: Vec<(usize, usize)> = if fused {
            Vec::new()
        } else {
            jobs.iter()
                .enumerate()
                .flat_map(|(m, j)| (0..j.runs.len()).map(move |i| (m, i)))
                .collect()
        };
        let ok = ok
            && after
                .into_par_iter()
                .all(|(m, i)| jobs[m].lora_run_into(i, &input, &ptrs[m].0));
        if !ok {
            return Err(crate::error::host_delta_failed());
        }
        for ((y, _), j) in bufs.iter_mut().zip(&jobs) {
            // SAFETY: the pass wrote all `rows × out` values: every chunk's tiles cover every
            // row, and the chunks cover every tile (`out` is a whole number of tiles).
            unsafe { y.set_len(rows * j.w.out) };
        }
        jobs.iter()
            .zip(bufs)
            .map(|(j, (y, delta))| {
                let y = j.finish(y, delta.as_ptr());
                Ok(Tensor::from_vec(y, (rows, j.w.out), &Device::Cpu)?)
            })
            .collect()
    }
}

/// The input of a fused pass, quantized once for every matrix.
struct Input<'a> {
    xs: &'a [f32],
    xq: &'a [u8],
    dx: &'a [f32],
    rows: usize,
}

/// One matrix's part of a fused pass: its product, its LoRA rows and how its tiles split.
struct Job<'a, D> {
    w: &'a PackedQ8,
    lora: &'a [Option<&'a D>],
    runs: Vec<(usize, usize)>,
    per: usize,
    chunks: usize,
    /// LoRA run `i` goes to chunk `(i + skew) % chunks`: with one row per matrix, the grouped
    /// matrices' runs then land on different tasks instead of all on chunk 0.
    skew: usize,
    /// The deltas run inside the chunks into a buffer of their own (see [`FUSED_ROWS`]).
    fused: bool,
}

impl<'a, D: RowDelta> Job<'a, D> {
    fn new(
        w: &'a PackedQ8,
        lora: &'a [Option<&'a D>],
        threads: usize,
        skew: usize,
        fused: bool,
    ) -> Self {
        let tiles = w.out / TILE;
        // Few, even chunks: a decode step has little work per call and waking threads costs.
        let per = tiles.div_ceil(threads * if tiles >= 64 * threads { 4 } else { 1 });
        Self {
            w,
            lora,
            runs: runs_of(lora),
            per,
            chunks: tiles.div_ceil(per),
            skew,
            fused,
        }
    }

    /// The product's buffer and, when any row is adapted, the deltas' buffer: allocated, not
    /// initialized. The tiles write every value of the product and each run every value of
    /// its rows of deltas, and only those rows are read; zeroing them first would be a serial
    /// pass over megabytes on the engine thread every step.
    fn buffers(&self, rows: usize) -> (Vec<f32>, Vec<f32>) {
        let adapted = self.fused && self.lora.iter().any(Option::is_some);
        let delta = if adapted {
            self.lora.len() * self.w.out
        } else {
            0
        };
        (
            Vec::with_capacity(rows * self.w.out),
            Vec::with_capacity(delta),
        )
    }

    /// Chunk `c`: its tiles for every row and its share of the LoRA runs (into their own rows
    /// of `delta`). `y` and `delta` point at this job's [`Job::buffers`].
    fn run(&self, c: usize, x: &Input<'_>, y: &SendPtr, delta: &SendPtr) -> bool {
        if !self.fused {
            self.tiles(c, x, y);
            return true;
        }
        // Odd chunks take their LoRA rows first: with distinct adapters those rows are bound by
        // memory and the tiles by arithmetic, so the two halves of a pass overlap on the bus
        // instead of both streaming adapters at the end (`benches/multi_lora.rs` shows it).
        let lora_first = c % 2 == 1;
        let ok = lora_first && self.lora_rows(c, x, delta);
        self.tiles(c, x, y);
        if lora_first {
            ok
        } else {
            self.lora_rows(c, x, delta)
        }
    }

    /// Chunk `c`'s tiles. Decode-sized batches take up to 16 rows per weight load: with 4, a
    /// 16-row decode step read each tile's weights from memory in its first group of rows,
    /// bursting faster than one core streams, then from L1 for the other three; 16 rows per
    /// load spread that stream over the whole tile. Prefills keep 4 rows per load: their
    /// weights are read from memory for one group in many, and 16 accumulators spill.
    fn tiles(&self, c: usize, x: &Input<'_>, y: &SendPtr) {
        let w = self.w;
        let (tiles, blocks) = (w.out / TILE, w.inp / BLOCK);
        let (t0, t1) = (c * self.per, ((c + 1) * self.per).min(tiles));
        let wide = x.rows <= FUSED_ROWS;
        for t in t0..t1 {
            let mut r = 0;
            while r < x.rows {
                let take = match x.rows - r {
                    16.. if wide => 16,
                    8.. if wide => 8,
                    4.. => 4,
                    left => left,
                };
                // SAFETY: the caller checked `supported`; rows r..r+take lie inside `x` and
                // `y` (`rows × out`), and tiles write disjoint columns of `y`.
                unsafe {
                    let (xr, dr) = (x.xq.as_ptr().add(r * w.inp), x.dx.as_ptr().add(r * blocks));
                    w.tile(t, xr, dr, take, y.0.add(r * w.out), r == 0);
                }
                r += take;
            }
        }
    }

    fn lora_rows(&self, c: usize, x: &Input<'_>, delta: &SendPtr) -> bool {
        let out = self.w.out;
        let first = (c + self.chunks - self.skew % self.chunks) % self.chunks;
        (first..self.runs.len()).step_by(self.chunks).all(|i| {
            let (r, n) = self.runs[i];
            // SAFETY: rows r..r+n of `delta` (allocated for every row, see `buffers`) belong
            // to this task alone: run i goes to the one chunk c with i + skew ≡ c (mod chunks).
            let rows = unsafe {
                std::slice::from_raw_parts_mut(
                    delta.0.add(r * out) as *mut std::mem::MaybeUninit<f32>,
                    n * out,
                )
            };
            self.write_run(i, x, rows)
        })
    }

    /// Run `i`'s deltas written to `rows`: its `n × out` rows of a delta buffer.
    fn write_run(&self, i: usize, x: &Input<'_>, rows: &mut [std::mem::MaybeUninit<f32>]) -> bool {
        let w = self.w;
        let blocks = w.inp / BLOCK;
        let (r, n) = self.runs[i];
        let d = self.lora[r].expect("runs start at adapted rows");
        let q = QuantRow {
            xq: &x.xq[r * w.inp..(r + n) * w.inp],
            dx: &x.dx[r * blocks..(r + n) * blocks],
        };
        d.write_rows(&x.xs[r * w.inp..(r + n) * w.inp], Some(q), n, rows)
    }

    /// Run `i`'s deltas added to its rows of the finished product `y`, through a scratch
    /// buffer, by [`add_delta`] as [`Job::finish`] adds them.
    fn lora_run_into(&self, i: usize, x: &Input<'_>, y: &SendPtr) -> bool {
        let out = self.w.out;
        let (r, n) = self.runs[i];
        let mut delta = Vec::with_capacity(n * out);
        // The first n × out values: a capacity may be larger than asked for.
        if !self.write_run(i, x, &mut delta.spare_capacity_mut()[..n * out]) {
            return false;
        }
        // SAFETY: `write_run` wrote all `n × out` values.
        unsafe { delta.set_len(n * out) };
        // SAFETY: runs cover disjoint rows, and `y` has room for `rows × out` values, every one
        // of which the tiles wrote before this phase began.
        let y = unsafe { std::slice::from_raw_parts_mut(y.0.add(r * out), n * out) };
        add_delta(y, &delta);
        true
    }

    /// The product `y` with each adapted row's delta added (fused passes only), once every
    /// task of the pass has succeeded: only then has each adapted row of `delta` been written.
    /// `delta`: the start of this job's delta buffer (from `Vec::as_ptr`, for its whole
    /// allocation).
    fn finish(&self, mut y: Vec<f32>, delta: *const f32) -> Vec<f32> {
        if !self.fused {
            return y;
        }
        let out = self.w.out;
        for &(r, n) in &self.runs {
            let rows = r * out..(r + n) * out;
            // SAFETY: run (r, n) wrote these values of the buffer, allocated for every row.
            let d = unsafe { std::slice::from_raw_parts(delta.add(rows.start), n * out) };
            add_delta(&mut y[rows], d);
        }
        y
    }
}

/// `y += delta`: the one way a LoRA delta reaches its rows of the product, on both paths
/// ([`Job::finish`] and [`Job::lora_run_into`]), so a row's result does not depend on which
/// path its batch took.
fn add_delta(y: &mut [f32], delta: &[f32]) {
    for (o, v) in y.iter_mut().zip(delta) {
        *o += v;
    }
}

/// `(first row, rows)`: consecutive rows with the same delta, up to 4 (a prompt's rows, or a
/// batch on one adapter), so that their adapter weights are loaded once per run.
fn runs_of<D>(lora: &[Option<&D>]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut r = 0;
    while r < lora.len() {
        let Some(d) = lora[r] else {
            r += 1;
            continue;
        };
        let same = |e: &Option<&D>| e.is_some_and(|e| std::ptr::eq(e, d));
        let n = 1 + lora[r + 1..].iter().take(3).take_while(|e| same(e)).count();
        runs.push((r, n));
        r += n;
    }
    runs
}

struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint parts of one output buffer (column ranges of `y`, rows of
// `delta`) from rayon tasks that all finish before the buffer is read.
unsafe impl Sync for SendPtr {}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub(super) unsafe fn tile<const R: usize>(
        _: &[i8],
        _: &[half::f16],
        _: &[i16],
        _: usize,
        _: *const u8,
        _: usize,
        _: *const f32,
        _: *mut f32,
        _: usize,
        _: bool,
    ) {
        unreachable!("PackedQ8::supported is false off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    use super::{BLOCK, TILE};

    /// Blocks (576 bytes of weights, scales and sums each) between a block and the one it
    /// prefetches (chosen by `benches/engine.rs` among 2, 4, 8 and 16).
    const AHEAD: usize = 4;

    /// `R` rows × one tile of 16 outputs. Row `r`'s activations start at `x + r·x_stride`, its
    /// block scales at `dx + r·blocks`, its 16 results go to `y + r·y_stride`.
    ///
    /// With `ahead`, each block prefetches the one [`AHEAD`] blocks on (into the next tile's,
    /// which follows in memory): the hardware prefetcher restarts at every 4 KiB page, and
    /// these weights are streamed from memory once per step (adapters' `A` passes run here
    /// too).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const R: usize>(
        w: &[i8],
        d: &[f16],
        sums: &[i16],
        blocks: usize,
        x: *const u8,
        x_stride: usize,
        dx: *const f32,
        y: *mut f32,
        y_stride: usize,
        ahead: bool,
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..blocks {
            let wb = w.as_ptr().add(b * TILE * BLOCK);
            if ahead {
                // Prefetches never fault: past the end of the weights they are only wasted.
                let p = wb.wrapping_add(AHEAD * TILE * BLOCK);
                for line in 0..TILE * BLOCK / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line));
                }
                // Scales and sums: 32 bytes per block, a line every other block.
                if b % 2 == 0 {
                    let at = (b + AHEAD) * TILE;
                    _mm_prefetch::<_MM_HINT_T0>(sums.as_ptr().wrapping_add(at) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(d.as_ptr().wrapping_add(at) as *const i8);
                }
            }
            let mut ws = [_mm512_setzero_si512(); 8];
            for (g, v) in ws.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wb.add(g * 64) as *const _);
            }
            // -128·Σw undoes the +128 offset of the activations; scales are f16 as in Q8_0.
            let sum = _mm512_cvtepi16_epi32(_mm256_loadu_si256(
                sums.as_ptr().add(b * TILE) as *const __m256i
            ));
            let n = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(sum));
            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(
                d.as_ptr().add(b * TILE) as *const __m256i
            ));
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = x.add(r * x_stride + b * BLOCK) as *const i32;
                // Two independent chains (integer sums: the split changes no result) so that a
                // lone row is not bound by the latency of eight dependent `vpdpbusd`s.
                let (mut s0, mut s1) = (n, _mm512_setzero_si512());
                for g in (0..8).step_by(2) {
                    let x0 = _mm512_set1_epi32(xb.add(g).read_unaligned());
                    let x1 = _mm512_set1_epi32(xb.add(g + 1).read_unaligned());
                    s0 = _mm512_dpbusd_epi32(s0, x0, ws[g]);
                    s1 = _mm512_dpbusd_epi32(s1, x1, ws[g + 1]);
                }
                let s = _mm512_add_epi32(s0, s1);
                let scale = _mm512_mul_ps(dv, _mm512_set1_ps(*dx.add(r * blocks + b)));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(y.add(r * y_stride), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraDelta;
    use crate::q8_block::tests::data;

    #[test]
    fn packed_product_is_close_to_f32_and_the_same_for_any_batch() {
        if !PackedQ8::supported() {
            eprintln!("no AVX-512 VNNI here: the packed kernel is not used on this CPU");
            return;
        }
        // Rows taken 4 and 3 at a time; 8, 4 and 1; 16, 8 and 1; 16, 8, 4 and 2; and a
        // prefill's 4s and 1.
        for rows in [7, 13, 25, 30, FUSED_ROWS + 9] {
            product_matches_f32_and_rows_alone(rows);
        }
    }

    fn product_matches_f32_and_rows_alone(rows: usize) {
        let (out, inp) = (48, 96);
        let w = data(out * inp, 1);
        let x = data(rows * inp, 2);
        let p = PackedQ8::from_dense(&w, out, inp).unwrap();
        let xt = Tensor::from_vec(x.clone(), (rows, inp), &Device::Cpu).unwrap();
        let got: Vec<Vec<f32>> = p.forward(&xt).unwrap().to_vec2().unwrap();
        for r in 0..rows {
            for o in 0..out {
                let want: f32 = (0..inp).map(|i| w[o * inp + i] * x[r * inp + i]).sum();
                // Two 8-bit roundings, each ≤ 1/254 of a block's largest magnitude (≤ 1 here),
                // over 96 terms: ~0.02 typical; a layout error is off by whole units.
                assert!(
                    (got[r][o] - want).abs() < 0.1,
                    "{r},{o}: {} vs {want}",
                    got[r][o]
                );
            }
            let alone =
                Tensor::from_vec(x[r * inp..(r + 1) * inp].to_vec(), (1, inp), &Device::Cpu)
                    .unwrap();
            let one: Vec<Vec<f32>> = p.forward(&alone).unwrap().to_vec2().unwrap();
            assert_eq!(one[0], got[r], "row {r} alone vs in a batch of {rows}");
        }
    }

    #[test]
    fn a_fused_pass_gives_each_matrix_its_own_product_and_deltas() {
        if !PackedQ8::supported() {
            return;
        }
        let (inp, rows) = (64, 5);
        let mats: Vec<PackedQ8> = [(48, 1), (16, 2), (32, 3)]
            .iter()
            .map(|&(out, salt)| PackedQ8::from_dense(&data(out * inp, salt), out, inp).unwrap())
            .collect();
        let delta = |out: usize, r: usize, salt: u32| {
            let (a, b) = (data(r * inp, salt), data(out * r, salt + 1));
            let (dt, p) = (candle_core::DType::F32, crate::LoraPrecision::Q8);
            LoraDelta::from_host(&a, &b, (out, r, inp), 0.5, dt, p, &Device::Cpu).unwrap()
        };
        // Rank 4 stays in f16 (8 bits would pad it to 16 rows): a pass mixing both forms.
        let (d0, d2, d4) = (delta(48, 16, 7), delta(32, 16, 9), delta(32, 4, 11));
        assert!(d2.is_q8() && !d4.is_q8());
        let l0 = [Some(&d0), None, Some(&d0), Some(&d0), None];
        let l2 = [None, Some(&d2), Some(&d4)];
        let loras: [&[Option<&LoraDelta>]; 3] = [&l0, &[], &l2];
        let x = Tensor::from_vec(data(rows * inp, 4), (rows, inp), &Device::Cpu).unwrap();
        let refs: Vec<&PackedQ8> = mats.iter().collect();
        let fused = PackedQ8::forward_many(&refs, &x, &loras).unwrap();
        let xs = data(rows * inp, 4);
        for ((m, l), got) in mats.iter().zip(loras).zip(fused) {
            let alone = m.forward_with_lora(&x, l).unwrap();
            let (got, alone): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
                (got.to_vec2().unwrap(), alone.to_vec2().unwrap());
            assert_eq!(got, alone);
            // Each adapted row is the plain product plus its delta computed on its own (added
            // to zeros), bit for bit; other rows are the plain product.
            let plain: Vec<Vec<f32>> = m.forward(&x).unwrap().to_vec2().unwrap();
            let out = plain[0].len();
            for (r, (got, plain)) in got.iter().zip(&plain).enumerate() {
                let Some(d) = l.get(r).copied().flatten() else {
                    assert_eq!(got, plain, "row {r} has no adapter");
                    continue;
                };
                let mut delta = vec![0f32; out];
                assert!(d.add_rows(&xs[r * inp..(r + 1) * inp], None, 1, &mut delta));
                let want: Vec<f32> = plain.iter().zip(&delta).map(|(p, d)| p + d).collect();
                assert_eq!(got, &want, "row {r}");
                assert_ne!(got, plain, "row {r}'s delta was added");
            }
        }
    }

    #[test]
    fn large_batches_add_their_deltas_after_the_tiles_with_the_same_results() {
        if !PackedQ8::supported() {
            return;
        }
        let (out, inp, rows) = (48, 64, FUSED_ROWS + 9);
        let m = PackedQ8::from_dense(&data(out * inp, 1), out, inp).unwrap();
        let delta = |r: usize, salt: u32| {
            let (a, b) = (data(r * inp, salt), data(out * r, salt + 1));
            let (dt, p) = (candle_core::DType::F32, crate::LoraPrecision::Q8);
            LoraDelta::from_host(&a, &b, (out, r, inp), 0.5, dt, p, &Device::Cpu).unwrap()
        };
        // 8-bit and (rank 4) f16 deltas.
        let (d0, d1, d4) = (delta(16, 7), delta(16, 9), delta(4, 11));
        assert!(d0.is_q8() && !d4.is_q8());
        // Runs of 1 to 4 rows, rows without an adapter between them.
        let lora: Vec<Option<&LoraDelta>> = (0..rows)
            .map(|r| match r % 8 {
                0..=3 => Some(&d0),
                4 => None,
                5 => Some(&d4),
                _ => Some(&d1),
            })
            .collect();
        let xs = data(rows * inp, 4);
        let x = Tensor::from_vec(xs.clone(), (rows, inp), &Device::Cpu).unwrap();
        let all: Vec<Vec<f32>> = m.forward_with_lora(&x, &lora).unwrap().to_vec2().unwrap();
        let plain: Vec<Vec<f32>> = m.forward(&x).unwrap().to_vec2().unwrap();
        for (r, l) in lora.iter().enumerate() {
            let xr = Tensor::from_vec(xs[r * inp..(r + 1) * inp].to_vec(), (1, inp), &Device::Cpu);
            let alone: Vec<Vec<f32>> = m
                .forward_with_lora(&xr.unwrap(), &[*l])
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(alone[0], all[r], "row {r}");
            assert_eq!(l.is_some(), plain[r] != all[r], "row {r}");
        }
    }

    #[test]
    fn to_dense_gives_back_the_weights_within_8_bit_rounding() {
        let (out, inp) = (32, 64);
        let w = data(out * inp, 3);
        let p = PackedQ8::from_dense(&w, out, inp).unwrap();
        assert_eq!(p.dims(), (out, inp));
        let back: Vec<f32> = p
            .to_dense(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in back.iter().zip(&w) {
            assert!((a - b).abs() <= 1.0 / 127.0, "{a} vs {b}");
        }
    }

    #[test]
    fn shapes_that_do_not_tile_are_left_to_candle() {
        assert!(PackedQ8::from_dense(&[0.0; 15 * 32], 15, 32).is_none());
        assert!(PackedQ8::from_dense(&[0.0; 16 * 40], 16, 40).is_none());
    }
}
