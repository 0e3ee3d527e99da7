//! CPU kernels of the per-row LoRA pass and decode attention, on plain slices.
//!
//! A decode step with many distinct adapters streams every adapter's weights once per step: at
//! 16 rows with 16 r=16 all-projection adapters that is 16 × 19.6 MB in f32, more than the
//! quantized base model itself, and the memory bus is the limit. Holding the weights in f16
//! halves those bytes; the conversion back to f32 is one instruction per eight values (F16C),
//! cheaper than the load it saves. (Beside the packed 8-bit kernel adapters are held in 8 bits
//! instead, see `lora_q8`; f16 serves quantized bases on CPUs without it.)

use half::f16;

/// Dot product with eight independent accumulators, so the compiler vectorizes it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// A CPU f32 tensor's values as a slice: borrowed in place when contiguous (a decode step
/// copied every projection's input, ~4 MB a step, before reading it), copied otherwise.
/// `G`: candle's read guard on the storage, held while the values are in use.
pub(crate) enum F32Values<G> {
    Borrowed(G, usize, usize),
    Owned(Vec<f32>),
}

impl<G: std::ops::Deref<Target = candle_core::Storage>> std::ops::Deref for F32Values<G> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Self::Borrowed(s, a, b) => match &**s {
                candle_core::Storage::Cpu(c) => {
                    &c.as_slice::<f32>().expect("checked in f32_values")[*a..*b]
                }
                _ => unreachable!("checked in f32_values"),
            },
            Self::Owned(v) => v,
        }
    }
}

/// See [`F32Values`]; errors as `to_vec1::<f32>` does for other dtypes.
pub(crate) fn f32_values(
    t: &candle_core::Tensor,
) -> crate::error::Result<F32Values<impl std::ops::Deref<Target = candle_core::Storage> + '_>> {
    let (s, l) = t.storage_and_layout();
    let span = match (&*s, l.contiguous_offsets()) {
        (candle_core::Storage::Cpu(c), Some(span)) if c.as_slice::<f32>().is_ok() => Some(span),
        _ => None,
    };
    match span {
        Some((a, b)) => Ok(F32Values::Borrowed(s, a, b)),
        None => {
            drop(s);
            Ok(F32Values::Owned(t.flatten_all()?.to_vec1()?))
        }
    }
}

/// The AVX-512 mask for the next 16 of `left` values: every lane, or the first `left`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn lanes(left: usize) -> u16 {
    if left >= 16 {
        !0
    } else {
        (1 << left) - 1
    }
}

/// The first `len` values of `stack` when they fit, else of `heap` grown to `len`: scratch
/// for kernels that run per row and projection or per head and layer, where a heap buffer
/// (or zeroing one sized for the largest case) cost more than the work itself.
pub(crate) fn scratch<'a, T: Copy + Default, const N: usize>(
    stack: &'a mut [T; N],
    heap: &'a mut Vec<T>,
    len: usize,
) -> &'a mut [T] {
    if len <= N {
        &mut stack[..len]
    } else {
        heap.resize(len, T::default());
        &mut heap[..]
    }
}

/// `out += t · b`.
pub(crate) fn axpy(out: &mut [f32], t: f32, b: &[f32]) {
    for (o, &b) in out.iter_mut().zip(b) {
        *o += t * b;
    }
}

/// A matrix of adapter weights as the CPU holds it, rows contiguous.
#[derive(Debug, Clone)]
pub(crate) enum HostMat {
    F32(Vec<f32>),
    /// f16 values of `v · 2^shift`, the shift chosen per matrix so that its largest magnitude
    /// lands near 2^15: no value overflows f16, and small values keep their precision whatever
    /// the adapter's overall scale. `unscale` = 2^-shift.
    F16 {
        data: Vec<f16>,
        unscale: f32,
    },
}

impl HostMat {
    /// `values` in f16 with a power-of-two shift (see [`HostMat::F16`]). `values` must be finite.
    pub(crate) fn f16_from(values: &[f32]) -> Self {
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (up, unscale) = shift_for(max);
        let data = values.iter().map(|&v| f16::from_f32(v * up)).collect();
        Self::F16 { data, unscale }
    }

    /// `(scale · m)ᵀ` in f16, for `m` row-major `[rows, cols]`: built straight from `m`, with no
    /// f32 intermediate (a cold load writes only the final bytes).
    pub(crate) fn f16_scaled_transposed(m: &[f32], rows: usize, cols: usize, scale: f32) -> Self {
        let max = m.iter().fold(0f32, |acc, v| acc.max(v.abs())) * scale.abs();
        let (up, unscale) = shift_for(max);
        let k = scale * up;
        let mut data = vec![f16::ZERO; rows * cols];
        // Rows of `m` are read in order and scattered to `cols` sequential output streams.
        for (r, row) in m.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                data[c * rows + r] = f16::from_f32(v * k);
            }
        }
        Self::F16 { data, unscale }
    }

    pub(crate) fn elem_bytes(&self) -> usize {
        match self {
            HostMat::F32(_) => 4,
            HostMat::F16 { .. } => 2,
        }
    }

    /// `row(i) · x`, for rows of length `x.len()`.
    pub(crate) fn dot_row(&self, i: usize, x: &[f32]) -> f32 {
        let n = x.len();
        match self {
            HostMat::F32(v) => dot(&v[i * n..(i + 1) * n], x),
            HostMat::F16 { data, unscale } => dot_f16(&data[i * n..(i + 1) * n], x) * unscale,
        }
    }

    /// `dots[k] = row(k) · x` for the first `dots.len()` rows. In f16 on AVX-512, four rows share
    /// each load of `x` and run as independent chains, so the pass is bound by memory rather
    /// than by the latency of one accumulator.
    pub(crate) fn dot_rows(&self, x: &[f32], dots: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let HostMat::F16 { data, unscale } = self {
            let n = x.len();
            if has_avx512() && n.is_multiple_of(16) && data.len() >= dots.len() * n {
                let mut k = 0;
                while k + 4 <= dots.len() {
                    // SAFETY: AVX-512F detected; rows k..k+4 lie inside `data` (checked above).
                    let d = unsafe { x86::dot4_f16(&data[k * n..(k + 4) * n], x) };
                    for (j, v) in d.iter().enumerate() {
                        dots[k + j] = v * unscale;
                    }
                    k += 4;
                }
                for (j, t) in dots.iter_mut().enumerate().skip(k) {
                    *t = self.dot_row(j, x);
                }
                return;
            }
        }
        for (k, t) in dots.iter_mut().enumerate() {
            *t = self.dot_row(k, x);
        }
    }

    /// `out += t · row(i)`, for rows of length `out.len()`.
    pub(crate) fn axpy_row(&self, i: usize, t: f32, out: &mut [f32]) {
        let n = out.len();
        match self {
            HostMat::F32(v) => axpy(out, t, &v[i * n..(i + 1) * n]),
            HostMat::F16 { data, unscale } => axpy_f16(out, t * unscale, &data[i * n..(i + 1) * n]),
        }
    }

    /// The values in f32 (reference computations and other devices).
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        match self {
            HostMat::F32(v) => v.clone(),
            HostMat::F16 { data, unscale } => data.iter().map(|h| h.to_f32() * unscale).collect(),
        }
    }
}

/// `(2^shift, 2^-shift)` bringing a largest magnitude `max` near 2^15.
fn shift_for(max: f32) -> (f32, f32) {
    let shift = if max > 0.0 && max.is_finite() {
        (15 - max.log2().ceil() as i32).clamp(-100, 100)
    } else {
        0
    };
    (2f32.powi(shift), 2f32.powi(-shift))
}

/// Whether this CPU has every listed feature (false off x86_64): runtime detection, since a
/// build may run on another machine than the one it was made on.
macro_rules! cpu_has {
    ($($feature:tt),+) => {{
        #[cfg(target_arch = "x86_64")]
        let has = $(std::is_x86_feature_detected!($feature))&&+;
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        has
    }};
}
pub(crate) use cpu_has;

fn has_f16c() -> bool {
    cpu_has!("avx2", "fma", "f16c")
}

fn has_avx512() -> bool {
    cpu_has!("avx512f")
}

pub(crate) fn dot_f16(a: &[f16], x: &[f32]) -> f32 {
    assert_eq!(a.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the features the function needs were just detected; lengths are equal.
        return unsafe { x86::dot_f16(a, x) };
    }
    a.iter().zip(x).map(|(h, x)| h.to_f32() * x).sum()
}

pub(crate) fn axpy_f16(out: &mut [f32], t: f32, b: &[f16]) {
    assert_eq!(out.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F detected (it includes the f16 conversions); lengths are equal.
        return unsafe { x86::axpy_f16_512(out, t, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: as in `dot_f16`.
        return unsafe { x86::axpy_f16(out, t, b) };
    }
    for (o, h) in out.iter_mut().zip(b) {
        *o += t * h.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16(a: &[f16], x: &[f32]) -> f32 {
        let n = a.len();
        let (pa, px) = (a.as_ptr() as *const u16, x.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            let h0 = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(i) as *const __m128i));
            let h1 = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(i + 8) as *const __m128i));
            s0 = _mm256_fmadd_ps(h0, _mm256_loadu_ps(px.add(i)), s0);
            s1 = _mm256_fmadd_ps(h1, _mm256_loadu_ps(px.add(i + 8)), s1);
            i += 16;
        }
        let s = _mm256_add_ps(s0, s1);
        let lo = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
        let lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
        let mut sum = _mm_cvtss_f32(lo);
        while i < n {
            sum += a[i].to_f32() * x[i];
            i += 1;
        }
        sum
    }

    /// How far ahead (in f16 values) to prefetch: 1 KB. Prefetching past the end is harmless.
    const AHEAD: usize = 512;

    /// Four rows of `a` (`4 × x.len()`, `x.len() % 16 == 0`) against `x`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot4_f16(a: &[f16], x: &[f32]) -> [f32; 4] {
        let n = x.len();
        let (pa, px) = (a.as_ptr() as *const u16, x.as_ptr());
        let mut s = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i < n {
            let xv = _mm512_loadu_ps(px.add(i));
            for (k, acc) in s.iter_mut().enumerate() {
                // Short streams (a few KB per row) barely train the hardware prefetcher.
                _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(k * n + i + AHEAD) as *const i8);
                let h = _mm256_loadu_si256(pa.add(k * n + i) as *const __m256i);
                *acc = _mm512_fmadd_ps(_mm512_cvtph_ps(h), xv, *acc);
            }
            i += 16;
        }
        [
            _mm512_reduce_add_ps(s[0]),
            _mm512_reduce_add_ps(s[1]),
            _mm512_reduce_add_ps(s[2]),
            _mm512_reduce_add_ps(s[3]),
        ]
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn axpy_f16_512(out: &mut [f32], t: f32, b: &[f16]) {
        let n = out.len();
        let (pb, po) = (b.as_ptr() as *const u16, out.as_mut_ptr());
        let tv = _mm512_set1_ps(t);
        let mut i = 0;
        while i + 16 <= n {
            _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(i + AHEAD) as *const i8);
            let h = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(i) as *const __m256i));
            _mm512_storeu_ps(
                po.add(i),
                _mm512_fmadd_ps(tv, h, _mm512_loadu_ps(po.add(i))),
            );
            i += 16;
        }
        while i < n {
            out[i] += t * b[i].to_f32();
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f16(out: &mut [f32], t: f32, b: &[f16]) {
        let n = out.len();
        let (pb, po) = (b.as_ptr() as *const u16, out.as_mut_ptr());
        let tv = _mm256_set1_ps(t);
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i) as *const __m128i));
            _mm256_storeu_ps(
                po.add(i),
                _mm256_fmadd_ps(tv, h, _mm256_loadu_ps(po.add(i))),
            );
            i += 8;
        }
        while i < n {
            out[i] += t * b[i].to_f32();
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_values_are_borrowed_when_contiguous_and_copied_otherwise() {
        use candle_core::{DType, Device, Tensor};
        let t = Tensor::from_slice(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), &Device::Cpu).unwrap();
        let v = f32_values(&t).unwrap();
        assert!(matches!(v, F32Values::Borrowed(..)) && *v == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        drop(v);
        // A contiguous view past the storage's start, and a transposed (strided) one.
        let row = t.narrow(0, 1, 1).unwrap();
        let v = f32_values(&row).unwrap();
        assert!(matches!(v, F32Values::Borrowed(..)) && *v == [4.0, 5.0, 6.0]);
        drop(v);
        let tt = t.t().unwrap();
        let v = f32_values(&tt).unwrap();
        assert!(matches!(v, F32Values::Owned(_)) && *v == [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert!(f32_values(&t.to_dtype(DType::F16).unwrap()).is_err());
    }

    #[test]
    fn f16_kernels_match_f32_within_half_precision() {
        let n = 37; // a tail after the vector loop
        let a: Vec<f32> = (0..2 * n)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 1e-3)
            .collect();
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
        let h = HostMat::f16_from(&a);
        let f = HostMat::F32(a.clone());
        for row in 0..2 {
            let (d16, d32) = (h.dot_row(row, &x), f.dot_row(row, &x));
            assert!(
                (d16 - d32).abs() <= 1e-3 * d32.abs().max(1e-3),
                "{d16} vs {d32}"
            );
        }
        let (mut o16, mut o32) = (vec![1f32; n], vec![1f32; n]);
        h.axpy_row(1, 0.5, &mut o16);
        f.axpy_row(1, 0.5, &mut o32);
        for (p, q) in o16.iter().zip(&o32) {
            assert!((p - q).abs() <= 1e-6, "{p} vs {q}");
        }
    }

    #[test]
    fn scaled_transpose_matches_transposing_first() {
        let (rows, cols) = (5, 3);
        let m: Vec<f32> = (0..rows * cols).map(|i| i as f32 - 6.0).collect();
        let mut t = vec![0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = m[r * cols + c] * 0.25;
            }
        }
        assert_eq!(
            HostMat::f16_scaled_transposed(&m, rows, cols, 0.25).to_f32(),
            HostMat::f16_from(&t).to_f32()
        );
    }

    #[test]
    fn dot_rows_equals_row_by_row_dots() {
        let (r, n) = (6, 64);
        let a: Vec<f32> = (0..r * n)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.01)
            .collect();
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).cos()).collect();
        for m in [HostMat::f16_from(&a), HostMat::F32(a.clone())] {
            let mut dots = vec![0f32; r];
            m.dot_rows(&x, &mut dots);
            for (k, d) in dots.iter().enumerate() {
                let want = m.dot_row(k, &x);
                assert!(
                    (d - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "row {k}: {d} vs {want}"
                );
            }
        }
    }

    #[test]
    fn the_shift_keeps_huge_and_tiny_matrices_representable() {
        for scale in [1e-9f32, 1e6] {
            let v: Vec<f32> = (0..16).map(|i| (i as f32 - 7.5) * scale).collect();
            let back = HostMat::f16_from(&v).to_f32();
            for (p, q) in back.iter().zip(&v) {
                assert!(
                    p.is_finite() && (p - q).abs() <= 1e-3 * q.abs(),
                    "{p} vs {q}"
                );
            }
        }
    }
}
