//! One parallel pass for the products of packed matrices sharing an input, with each row's
//! LoRA delta computed by the same tasks.
//!
//! Why: a decode step otherwise pays a thread-pool wake-up and a sleep per projection, and
//! the adapters' rows (bound by memory) overlap with the tiles (bound by arithmetic) only when
//! they share tasks.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::block::{quantize_rows, Quantized};
use super::delta::HostDelta;
use super::packed::Packed;
use super::slices::f32_values;
use super::TILE;
use crate::error::Result;

/// Up to this many rows a pass computes the LoRA deltas beside the tiles into a buffer of its
/// own and adds it at the end (one thread-pool round trip; the buffer stays in cache). Past it
/// — prefills — that buffer would be megabytes written, re-read and added back per projection
/// (a 512-row prefill over 16 adapters spent 13% more than the base, mostly there), so the
/// deltas run after the tiles instead, each run adding its own rows through a small scratch.
const FUSED_ROWS: usize = 32;

impl Packed {
    /// `x`: `[rows, in]` f32 → `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with_lora(x, &[])
    }

    /// [`Packed::forward`] plus row `r`'s LoRA delta `lora[r]` (none past `lora.len()`). The
    /// deltas are computed by the same tasks as the product (rows spread over them), then added
    /// once all are done: one thread-pool round trip for both.
    pub(crate) fn forward_with_lora(
        &self,
        x: &Tensor,
        lora: &[Option<&HostDelta>],
    ) -> Result<Tensor> {
        let mut y = Self::forward_many(&[self], x, &[lora])?;
        Ok(y.pop().expect("one matrix, one product"))
    }

    /// The products (with their LoRA deltas, `loras[m]` for `mats[m]`) of several matrices
    /// that share their input — q, k and v; gate and up — in one parallel pass: the input is
    /// quantized once and the thread pool woken once, where a decode step otherwise pays a
    /// wake-up and a sleep per projection.
    pub(crate) fn forward_many(
        mats: &[&Packed],
        x: &Tensor,
        loras: &[&[Option<&HostDelta>]],
    ) -> Result<Vec<Tensor>> {
        debug_assert!(loras.is_empty() || loras.len() == mats.len());
        let (rows, inp) = x.dims2()?;
        if let Some(m) = mats.iter().find(|m| m.dims().1 != inp) {
            return Err(crate::ModelError::InvalidBatch(format!(
                "input width {inp}, packed weights expect {}",
                m.dims().1
            )));
        }
        let xs = f32_values(x)?;
        let Some(first) = mats.first() else {
            return Ok(Vec::new());
        };
        debug_assert!(mats.iter().all(|m| m.caps() == first.caps()));
        let q = quantize_rows(first.caps(), &xs, rows, inp);
        let input = Input {
            xs: &xs,
            q: &q,
            rows,
        };
        let threads = rayon::current_num_threads().max(1);
        let fused = rows <= FUSED_ROWS;
        let jobs: Vec<Job> = mats
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
            unsafe { y.set_len(rows * j.w.dims().0) };
        }
        jobs.iter()
            .zip(bufs)
            .map(|(j, (y, delta))| {
                let y = j.finish(y, delta.as_ptr());
                Ok(Tensor::from_vec(y, (rows, j.w.dims().0), &Device::Cpu)?)
            })
            .collect()
    }
}

/// The input of a fused pass, quantized once for every matrix.
struct Input<'a> {
    xs: &'a [f32],
    q: &'a Quantized,
    rows: usize,
}

/// One matrix's part of a fused pass: its product, its LoRA rows and how its tiles split.
struct Job<'a> {
    w: &'a Packed,
    lora: &'a [Option<&'a HostDelta>],
    runs: Vec<(usize, usize)>,
    per: usize,
    chunks: usize,
    /// LoRA run `i` goes to chunk `(i + skew) % chunks`: with one row per matrix, the grouped
    /// matrices' runs then land on different tasks instead of all on chunk 0.
    skew: usize,
    /// The deltas run inside the chunks into a buffer of their own (see [`FUSED_ROWS`]).
    fused: bool,
}

impl<'a> Job<'a> {
    fn new(
        w: &'a Packed,
        lora: &'a [Option<&'a HostDelta>],
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
        let tiles = w.out / TILE;
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
                // SAFETY: `take` is 16, 8, 4 or less; rows r..r+take lie inside `x` and
                // `y` (`rows × out`), and tiles write disjoint columns of `y`.
                unsafe {
                    w.tile(
                        t,
                        x.q.rows(r, take, w.inp),
                        take,
                        y.0.add(r * w.out),
                        r == 0,
                    )
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
        let (r, n) = self.runs[i];
        let d = self.lora[r].expect("runs start at adapted rows");
        let q = x.q.rows(r, n, w.inp);
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
fn runs_of(lora: &[Option<&HostDelta>]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut r = 0;
    while r < lora.len() {
        let Some(d) = lora[r] else {
            r += 1;
            continue;
        };
        let same = |e: &Option<&HostDelta>| e.is_some_and(|e| std::ptr::eq(e, d));
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

#[cfg(test)]
mod tests {
    use super::super::block::tests::data;
    use super::super::delta::LoraPrecision;
    use super::super::{Caps, Tier};
    use super::*;

    #[test]
    fn packed_product_is_close_to_f32_and_the_same_for_any_batch() {
        // Rows taken 4 and 3 at a time; 8, 4 and 1; 16, 8 and 1; 16, 8, 4 and 2; and a
        // prefill's 4s and 1.
        for tier in Tier::available() {
            for rows in [7, 13, 25, 30, FUSED_ROWS + 9] {
                product_matches_f32_and_rows_alone(Caps::new(tier).unwrap(), rows);
            }
        }
    }

    fn product_matches_f32_and_rows_alone(caps: Caps, rows: usize) {
        let (out, inp) = (48, 96);
        let w = data(out * inp, 1);
        let x = data(rows * inp, 2);
        let p = Packed::from_dense(caps, &w, out, inp).unwrap();
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
        for tier in Tier::available() {
            fused_pass(Caps::new(tier).unwrap());
        }
    }

    fn fused_pass(caps: Caps) {
        let (inp, rows) = (64, 5);
        let mats: Vec<Packed> = [(48, 1), (16, 2), (32, 3)]
            .iter()
            .map(|&(out, salt)| Packed::from_dense(caps, &data(out * inp, salt), out, inp).unwrap())
            .collect();
        let delta = |out: usize, r: usize, salt: u32| {
            let (a, b) = (data(r * inp, salt), data(out * r, salt + 1));
            HostDelta::new(caps, &a, &b, (out, r, inp), 0.5, LoraPrecision::Q8)
        };
        // Rank 4 stays in f16 (8 bits would pad it to 16 rows): a pass mixing both forms.
        let (d0, d2, d4) = (delta(48, 16, 7), delta(32, 16, 9), delta(32, 4, 11));
        assert!(d2.is_q8() && !d4.is_q8());
        let l0 = [Some(&d0), None, Some(&d0), Some(&d0), None];
        let l2 = [None, Some(&d2), Some(&d4)];
        let loras: [&[Option<&HostDelta>]; 3] = [&l0, &[], &l2];
        let x = Tensor::from_vec(data(rows * inp, 4), (rows, inp), &Device::Cpu).unwrap();
        let refs: Vec<&Packed> = mats.iter().collect();
        let fused = Packed::forward_many(&refs, &x, &loras).unwrap();
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
        for tier in Tier::available() {
            large_batch(Caps::new(tier).unwrap());
        }
    }

    fn large_batch(caps: Caps) {
        let (out, inp, rows) = (48, 64, FUSED_ROWS + 9);
        let m = Packed::from_dense(caps, &data(out * inp, 1), out, inp).unwrap();
        let delta = |r: usize, salt: u32| {
            let (a, b) = (data(r * inp, salt), data(out * r, salt + 1));
            HostDelta::new(caps, &a, &b, (out, r, inp), 0.5, LoraPrecision::Q8)
        };
        // 8-bit and (rank 4) f16 deltas.
        let (d0, d1, d4) = (delta(16, 7), delta(16, 9), delta(4, 11));
        assert!(d0.is_q8() && !d4.is_q8());
        // Runs of 1 to 4 rows, rows without an adapter between them.
        let lora: Vec<Option<&HostDelta>> = (0..rows)
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
        let caps = Caps::detect();
        let (out, inp) = (32, 64);
        let w = data(out * inp, 3);
        let p = Packed::from_dense(caps, &w, out, inp).unwrap();
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
        let caps = Caps::portable();
        assert!(Packed::from_dense(caps, &[0.0; 15 * 32], 15, 32).is_none());
        assert!(Packed::from_dense(caps, &[0.0; 16 * 40], 16, 40).is_none());
    }
}

#[cfg(test)]
mod tiers {
    use super::super::block::tests::{data, same};
    use super::super::delta::LoraPrecision;
    use super::super::{Caps, Tier};
    use super::*;

    /// A projection pass (product and deltas) per tier, for `rows` rows of `x`.
    fn pass(caps: Caps, w: &[f32], (out, inp): (usize, usize), x: &[f32], rows: usize) -> Vec<f32> {
        let m = Packed::from_dense(caps, w, out, inp).unwrap();
        let delta = |r: usize, p: LoraPrecision, salt: u32| {
            let (a, b) = (data(r * inp, salt), data(out * r, salt + 1));
            HostDelta::new(caps, &a, &b, (out, r, inp), 0.75, p)
        };
        let ds = [
            delta(16, LoraPrecision::Q8, 3),
            delta(4, LoraPrecision::Q8, 5), // too small for 8 bits: f16
            delta(8, LoraPrecision::F16, 7),
            delta(8, LoraPrecision::F32, 9),
        ];
        assert!(ds[0].is_q8() && !ds[1].is_q8());
        let lora: Vec<Option<&HostDelta>> = (0..rows)
            .map(|r| (r % 6 < 4).then(|| &ds[(r / 2) % 4]))
            .collect();
        let xt = Tensor::from_vec(x.to_vec(), (rows, inp), &Device::Cpu).unwrap();
        let y = m.forward_with_lora(&xt, &lora).unwrap();
        y.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn every_tier_gives_the_portable_products_bit_for_bit() {
        let (out, inp) = (48, 96);
        let mut w = data(out * inp, 1);
        w[..inp].fill(0.0); // an all-zero output row
        for v in &mut w[inp..3 * inp] {
            *v = v.signum(); // ±1: every block at ±127
        }
        // Decode-sized batches (16, 8, 4 and fewer rows per load) and a prefill's.
        for rows in [1, 3, 7, 16, 29, FUSED_ROWS + 9] {
            let mut x = data(rows * inp, 2);
            if rows > 1 {
                x[inp..2 * inp].fill(0.0); // an all-zero row
            }
            if rows > 3 {
                x[2 * inp + 5] = f32::NAN;
                x[3 * inp + 40] = f32::INFINITY;
                x[3 * inp + 41] = -1e30;
            }
            let want = pass(Caps::portable(), &w, (out, inp), &x, rows);
            for tier in Tier::available() {
                let got = pass(Caps::new(tier).unwrap(), &w, (out, inp), &x, rows);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(same(*g, *e), "{tier}, {rows} rows, value {i}: {g} vs {e}");
                }
            }
        }
    }
}
