//! Q8_0's block rounding (blocks of 32, one scale each), for weights as they are packed and
//! for activations on every product. The plain forms here are the reference; every tier's
//! table gives the same numbers (tested), since the activations of every projection of every
//! step go through them.

use super::{Caps, BLOCK};

/// One row's activations as [`quantize_rows`] makes them.
#[derive(Clone, Copy)]
pub(crate) struct QuantRow<'a> {
    pub xq: &'a [u8],
    pub dx: &'a [f32],
    /// Per block, the sum of its signed activations (the 4-bit form's `m` term needs it).
    pub sx: &'a [i32],
}

/// Rows of activations quantized by [`quantize_rows`], owning what a [`QuantRow`] borrows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Quantized {
    pub xq: Vec<u8>,
    pub dx: Vec<f32>,
    pub sx: Vec<i32>,
}

impl Quantized {
    /// Rows `r..r+n` of `inp` values each.
    pub(crate) fn rows(&self, r: usize, n: usize, inp: usize) -> QuantRow<'_> {
        let blocks = inp / BLOCK;
        QuantRow {
            xq: &self.xq[r * inp..(r + n) * inp],
            dx: &self.dx[r * blocks..(r + n) * blocks],
            sx: &self.sx[r * blocks..(r + n) * blocks],
        }
    }
}

/// Per row and block of 32: `scale = max|x|/127`, bytes `round(x/scale) + 128`, and the sum
/// of the rounded values.
pub(crate) fn quantize_rows(caps: Caps, xs: &[f32], rows: usize, inp: usize) -> Quantized {
    let blocks = inp / BLOCK;
    let mut xq = vec![0u8; rows * inp];
    let mut dx = vec![0f32; rows * blocks];
    let mut sx = vec![0i32; rows * blocks];
    for (((src, q), d), s) in xs
        .chunks_exact(BLOCK)
        .zip(xq.chunks_exact_mut(BLOCK))
        .zip(dx.iter_mut())
        .zip(sx.iter_mut())
    {
        let src: &[f32; BLOCK] = src.try_into().expect("a whole block");
        let amax = caps.amax(src);
        *d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        *s = caps.round_block(src, id, 128, q.try_into().expect("a whole block"));
    }
    Quantized { xq, dx, sx }
}

/// Q8_0's rounding of one weight block (`d = max|w|/127`, `q = round(w/d)`): returns `(d, Σq)`.
pub(crate) fn weight_block(caps: Caps, src: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, i32) {
    let d = caps.amax(src) / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut bytes = [0u8; BLOCK];
    let sum = caps.round_block(src, id, 0, &mut bytes);
    for (q, b) in q.iter_mut().zip(bytes) {
        *q = b as i8; // two's complement: the bytes are the i8 values
    }
    (d, sum)
}

/// `max |v|` over one block, as x86's `maxps` takes it (`a > b ? a : b`: where either is NaN,
/// the second), in a fixed tree: the two halves lane by lane, then halves of the result down
/// to one. Every tier follows this order, so non-finite activations give every tier the same
/// bytes.
#[inline(always)]
pub(super) fn amax(src: &[f32; BLOCK]) -> f32 {
    let mut m = [0f32; 16];
    for l in 0..16 {
        m[l] = max_ps(src[l].abs(), src[l + 16].abs());
    }
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            m[l] = max_ps(m[l], m[l + w]);
        }
    }
    m[0]
}

/// x86's `maxps` on one lane: the second operand unless the first is greater (NaN included).
#[inline(always)]
pub(super) fn max_ps(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// x86's `minps` on one lane.
#[inline(always)]
pub(super) fn min_ps(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// `q[j] = round(src[j] · id) + offset` as bytes (`offset` 0: i8 values as their bytes, 128:
/// u8); returns `Σ round(src[j] · id)`.
#[inline(always)]
pub(super) fn round_block(src: &[f32; BLOCK], id: f32, offset: i32, q: &mut [u8; BLOCK]) -> i32 {
    let mut sum = 0;
    for (q, &v) in q.iter_mut().zip(src) {
        let r = round(v * id) as i32;
        sum += r;
        *q = (r + offset) as u8;
    }
    sum
}

/// Ties to even, clamped to ±127 by `min(v, 127)` then `max(·, -127)` as x86 takes them, so
/// NaN becomes 127 on every tier (activations are not checked for NaN; a non-finite row is
/// garbage either way, but the same garbage everywhere).
#[inline(always)]
pub(super) fn round(v: f32) -> f32 {
    max_ps(min_ps(v.round_ties_even(), 127.0), -127.0)
}

/// `q[t][g][lane][i] = round(b[t·16 + lane][4g + i] · ids[4g + i]) + 128` (ties to even,
/// ±127), for `b` `[out, r4]` row-major with `r4 = ids.len()` a multiple of 4 and `out` a
/// multiple of 16: `(s·B)ᵀ` of an 8-bit adapter delta (see `delta_q8`).
#[inline(always)]
pub(super) fn quantize_transposed(b: &[f32], ids: &[f32], q: &mut [u8]) {
    let r4 = ids.len();
    let rows = b.len() / r4.max(1);
    assert!(
        r4.is_multiple_of(4)
            && b.len() == rows * r4
            && rows.is_multiple_of(super::TILE)
            && q.len() >= rows * r4
    );
    for (o, row) in b.chunks_exact(r4.max(1)).enumerate() {
        let (t, lane) = (o / super::TILE, o % super::TILE);
        for (k, (&v, &id)) in row.iter().zip(ids).enumerate() {
            let (g, i) = (k / 4, k % 4);
            q[((t * r4 / 4 + g) * super::TILE + lane) * 4 + i] = (round(v * id) as i32 + 128) as u8;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::Tier;
    use super::*;

    /// Deterministic values in [-1, 1].
    pub(crate) fn data(n: usize, salt: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ salt) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn every_tier_rounds_blocks_as_the_reference_does() {
        // With max |w| = 127 the weight scale is 1, so x.5 values are exact ties (to even);
        // a factor of 2 then pushes the ends past ±127 into the clamp.
        let mut ties: Vec<f32> = (0..BLOCK).map(|j| j as f32 - 16.0 + 0.5).collect();
        ties[0] = 127.0;
        ties[1] = -127.0;
        let mut src = data(3 * BLOCK, 5);
        src.extend_from_slice(&ties);
        src.extend_from_slice(&[0.0; BLOCK]);
        // Non-finite activations, in either half of a block.
        for (j, bad) in [(3, f32::NAN), (20, f32::INFINITY), (31, f32::NEG_INFINITY)] {
            let mut b = data(BLOCK, 7 + j as u32);
            b[j] = bad;
            src.extend_from_slice(&b);
        }
        let mut two = data(BLOCK, 8);
        two[0] = f32::NAN;
        two[16] = f32::INFINITY;
        src.extend_from_slice(&two);
        let portable = Caps::portable();
        for tier in Tier::available() {
            let caps = Caps::new(tier).unwrap();
            for block in src.chunks_exact(BLOCK) {
                let block: &[f32; BLOCK] = block.try_into().unwrap();
                let (mut qv, mut qs) = ([0i8; BLOCK], [0i8; BLOCK]);
                let (dv, sv) = weight_block(caps, block, &mut qv);
                let (ds, ss) = weight_block(portable, block, &mut qs);
                assert!(same(dv, ds) && (sv, qv) == (ss, qs), "{tier}");
                assert!(same(caps.amax(block), amax(block)), "{tier}");
                for id in [127.0 / amax(block).max(1e-30), 2.0, 0.0, f32::NAN] {
                    let (mut v, mut s) = ([0u8; BLOCK], [0u8; BLOCK]);
                    let a = caps.round_block(block, id, 128, &mut v);
                    let b = round_block(block, id, 128, &mut s);
                    assert_eq!((a, v), (b, s), "{tier}");
                }
            }
            // Activations of several rows, as every product quantizes them.
            let xs = data(5 * 96, 9);
            let (a, b) = (
                quantize_rows(caps, &xs, 5, 96),
                quantize_rows(portable, &xs, 5, 96),
            );
            let scales = a.dx.iter().zip(&b.dx).all(|(a, b)| same(*a, *b));
            assert!(a.xq == b.xq && a.sx == b.sx && scales, "{tier}");
        }
        assert_eq!(round(2.5), 2.0);
        assert_eq!(round(-300.0), -127.0);
        assert_eq!(round(f32::NAN), 127.0);
    }

    /// The same bits, or both NaN (NaN payloads are not part of any kernel's contract).
    pub(crate) fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn every_tier_quantizes_transposed_deltas_as_the_reference_does() {
        let (out, r4) = (32, 20);
        let b = data(out * r4, 3);
        let ids: Vec<f32> = (0..r4).map(|k| 50.0 + k as f32 * 7.3).collect();
        let mut want = vec![0u8; out * r4];
        quantize_transposed(&b, &ids, &mut want);
        for tier in Tier::available() {
            let mut got = vec![0u8; out * r4];
            Caps::new(tier)
                .unwrap()
                .quantize_transposed(&b, &ids, &mut got);
            assert_eq!(got, want, "{tier}");
        }
    }

    #[test]
    fn activation_sums_are_the_sums_of_the_rounded_values() {
        let xs = data(3 * 64, 4);
        let q = quantize_rows(Caps::detect(), &xs, 3, 64);
        for (b, s) in q.sx.iter().enumerate() {
            let want: i32 = q.xq[b * BLOCK..(b + 1) * BLOCK]
                .iter()
                .map(|&v| v as i32 - 128)
                .sum();
            assert_eq!(*s, want, "block {b}");
        }
    }
}
