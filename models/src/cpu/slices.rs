//! Plain-slice helpers of the CPU wing: dot products, scratch buffers, and reading a tensor's
//! values in place.

/// `a · b` in the reference order every tier follows: 16 lanes, value `i` of each whole 16
/// going to lane `i % 16` by a fused multiply-add, the lanes summed by [`reduce16`], then the
/// tail in order.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let full = a.len() / 16 * 16;
    let mut acc = [0f32; 16];
    for (ca, cb) in a[..full].chunks_exact(16).zip(b[..full].chunks_exact(16)) {
        for l in 0..16 {
            acc[l] = ca[l].mul_add(cb[l], acc[l]);
        }
    }
    let mut sum = reduce16(acc);
    for (x, y) in a[full..].iter().zip(&b[full..]) {
        sum = x.mul_add(*y, sum);
    }
    sum
}

/// The lanes' tree sum of every 16-lane reduction: `l + l+8`, then `+4`, `+2`, `+1`.
#[inline(always)]
pub(super) fn reduce16(mut v: [f32; 16]) -> f32 {
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            v[l] += v[l + w];
        }
    }
    v[0]
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

#[cfg(test)]
mod tests {
    use super::super::{Caps, Tier};
    use super::*;

    #[test]
    fn every_tier_gives_the_reference_dot_products_bit_for_bit() {
        for n in [1usize, 15, 16, 17, 64, 100, 576] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
                .collect();
            let mut b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.71).sin() * 3.0).collect();
            let want = dot(&a, &b);
            for tier in Tier::available() {
                let got = Caps::new(tier).unwrap().dot(&a, &b);
                assert_eq!(got.to_bits(), want.to_bits(), "{tier} {n}");
            }
            b[n / 2] = f32::INFINITY;
            for tier in Tier::available() {
                assert_eq!(
                    Caps::new(tier).unwrap().dot(&a, &b),
                    dot(&a, &b),
                    "{tier} {n}"
                );
            }
        }
    }

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
}
