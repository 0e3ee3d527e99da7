//! The tests proper: every vector tier against `q4_scalar` bit for bit, the scalar tier
//! against a naive transcription and the dequantized product, the nibble layout, and the
//! unsupported row counts.

use std::panic::{catch_unwind, AssertUnwindSafe};

use half::f16;

use super::super::{q4_scalar, BLOCK, TILE};
use super::{gen_case, names, tiers, Case, Rng, Tile4};

/// Counts of the comparisons that were NaN on both sides.
#[derive(Default)]
struct NanStats {
    both: usize,
    payload_differs: usize,
    outputs: usize,
    examples: Vec<String>,
}

/// `got` equals `want` bit for bit, or both are NaN (counted, payloads compared).
fn same(want: &[[f32; TILE]], got: &[[f32; TILE]], st: &mut NanStats, what: &str) {
    for (r, (wr, gr)) in want.iter().zip(got).enumerate() {
        for (l, (a, b)) in wr.iter().zip(gr).enumerate() {
            st.outputs += 1;
            if a.is_nan() && b.is_nan() {
                st.both += 1;
                if a.to_bits() != b.to_bits() {
                    st.payload_differs += 1;
                    if st.examples.len() < 8 {
                        st.examples.push(format!(
                            "{what} r{r} l{l}: {:08x} vs {:08x}",
                            a.to_bits(),
                            b.to_bits()
                        ));
                    }
                }
            } else {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{what}: row {r} lane {l}: {a:e} vs {b:e}"
                );
            }
        }
    }
}

const BLOCKS: [usize; 6] = [1, 2, 3, 7, 18, 48];
const NS: [usize; 6] = [1, 2, 3, 4, 8, 16];

#[test]
fn vector_tiers_match_scalar_bitwise() {
    let tiers = tiers();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut st = NanStats::default();
    let mut cases = 0;
    for &blocks in &BLOCKS {
        for &n in &NS {
            for seed in 0..8 {
                let special = seed % 2 == 1;
                let case = gen_case(&mut rng, n, blocks, special);
                let want = case.run(q4_scalar::tile4, false);
                same(
                    &want,
                    &case.run(q4_scalar::tile4, true),
                    &mut st,
                    "scalar ahead",
                );
                for &(name, f) in &tiers {
                    for ahead in [false, true] {
                        let what =
                            format!("{name} n={n} blocks={blocks} seed={seed} ahead={ahead}");
                        same(&want, &case.run(f, ahead), &mut st, &what);
                    }
                }
                cases += 1;
            }
        }
    }
    eprintln!(
        "{cases} cases × {:?}: {} outputs compared, {} NaN on both sides, {} with differing NaN payloads",
        names(&tiers),
        st.outputs,
        st.both,
        st.payload_differs
    );
    for e in &st.examples {
        eprintln!("  NaN payload: {e}");
    }
}

#[test]
fn activation_byte_zero_is_exact_too() {
    // a = −128 is outside the format but every tier computes it exactly: the extreme
    // 16-bit partial sum of AVX2 (8 pairs of 2·15·128) and the VNNI correction included.
    let tiers = tiers();
    let mut rng = Rng(7);
    let mut st = NanStats::default();
    for &n in &NS {
        let mut case = gen_case(&mut rng, n, 7, false);
        for (i, v) in case.x.iter_mut().enumerate() {
            *v = if i % 3 == 0 {
                0
            } else {
                [0, 255, 1][rng.below(3) as usize]
            };
        }
        case.q[0] = [[15; BLOCK]; TILE];
        let case = Case::new(
            n,
            case.q,
            case.d,
            case.m,
            case.x,
            case.x_stride,
            case.dx,
            case.y_stride,
        );
        let want = case.run(q4_scalar::tile4, false);
        same(&case.naive(), &want, &mut st, "naive");
        for &(name, f) in &tiers {
            same(&want, &case.run(f, true), &mut st, name);
        }
    }
    assert_eq!(st.both, 0);
}

#[test]
fn scalar_matches_naive_formula() {
    let mut rng = Rng(12345);
    for &blocks in &BLOCKS {
        for &n in &NS {
            for special in [false, true] {
                let case = gen_case(&mut rng, n, blocks, special);
                let (want, got) = (case.naive(), case.run(q4_scalar::tile4, false));
                for (wr, gr) in want.iter().zip(&got) {
                    for (a, b) in wr.iter().zip(gr) {
                        assert_eq!(a.to_bits(), b.to_bits(), "n={n} blocks={blocks}");
                    }
                }
            }
        }
    }
}

#[test]
fn scalar_near_dequantized_product() {
    let mut rng = Rng(99);
    for &blocks in &BLOCKS {
        for &n in &NS {
            let case = gen_case(&mut rng, n, blocks, false);
            let got = case.run(q4_scalar::tile4, false);
            for (r, gr) in got.iter().enumerate() {
                for (lane, &g) in gr.iter().enumerate() {
                    // Σ_i (a_i·dx)·(d·q_i + m) in f64, and Σ |terms| for the tolerance.
                    let (mut want, mut mag) = (0.0f64, 0.0f64);
                    for b in 0..blocks {
                        let dx = case.dx[r * blocks + b] as f64;
                        let (d, m) = (
                            case.d[b * TILE + lane].to_f64(),
                            case.m[b * TILE + lane].to_f64(),
                        );
                        let (mut s1, mut s2) = (0.0f64, 0.0f64);
                        for i in 0..BLOCK {
                            let a = case.a(r, b, i) as f64;
                            want += (a * dx) * (d * case.q[b][lane][i] as f64 + m);
                            s1 += a * case.q[b][lane][i] as f64;
                            s2 += a;
                        }
                        mag += (s1 * d * dx).abs() + (s2 * m * dx).abs();
                    }
                    let tol = mag * (2 * blocks + 2) as f64 * f32::EPSILON as f64 + 1e-30;
                    let err = (g as f64 - want).abs();
                    assert!(
                        err <= tol,
                        "n={n} blocks={blocks} r={r} lane={lane}: {g} vs {want} (tol {tol:e})"
                    );
                }
            }
        }
    }
}

#[test]
fn layout_one_q_moves_one_output() {
    let tiers = tiers();
    let mut all: Vec<(&str, Tile4)> = vec![("scalar", q4_scalar::tile4)];
    all.extend(tiers);
    let mut rng = Rng(4242);
    let blocks = 3;
    let x: Vec<u8> = (0..blocks * BLOCK)
        .map(|_| 1 + rng.below(255) as u8)
        .collect();
    for b in 0..blocks {
        for lane in 0..TILE {
            for i in 0..BLOCK {
                let v = 1 + ((i + lane) % 15) as u8;
                let mut q = vec![[[0u8; BLOCK]; TILE]; blocks];
                q[b][lane][i] = v;
                let (d, m) = (
                    vec![f16::ONE; blocks * TILE],
                    vec![f16::ZERO; blocks * TILE],
                );
                let case = Case::new(
                    1,
                    q,
                    d,
                    m,
                    x.clone(),
                    blocks * BLOCK,
                    vec![1.0; blocks],
                    TILE,
                );
                // The byte and nibble the header documents, and nothing else.
                let (c, k) = ((i % 16) / 4, i % 4);
                let at = b * 256 + c * 64 + lane * 4 + k;
                let want_byte = if i < 16 { v } else { v << 4 };
                for (j, &byte) in case.w.iter().enumerate() {
                    assert_eq!(
                        byte,
                        if j == at { want_byte } else { 0 },
                        "b={b} lane={lane} i={i} byte {j}"
                    );
                }
                assert_eq!(case.sums[b * TILE + lane], v as i16);
                let expect = (case.a(0, b, i) * v as i32) as f32;
                for &(name, f) in &all {
                    let y = case.run(f, false);
                    for (l, &o) in y[0].iter().enumerate() {
                        let e = if l == lane { expect } else { 0.0 };
                        assert_eq!(o, e, "{name}: b={b} lane={lane} i={i} output {l}");
                    }
                }
            }
        }
    }
}

#[test]
fn unsupported_row_counts_panic() {
    let mut all: Vec<(&str, Tile4)> = vec![("scalar", q4_scalar::tile4)];
    all.extend(tiers());
    let mut rng = Rng(5);
    // Buffers for 17 rows, so that a kernel that did not panic would still stay in bounds.
    let case = gen_case(&mut rng, 17, 2, false);
    for &(name, f) in &all {
        for n in [0, 5, 6, 7, 9, 12, 15, 17] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                let mut y = vec![0.0f32; 17 * case.y_stride];
                // SAFETY: all buffers are sized for 17 rows; `f` must panic before use.
                unsafe {
                    f(
                        n,
                        &case.w,
                        &case.d,
                        &case.m,
                        &case.sums,
                        case.blocks,
                        case.x.as_ptr(),
                        case.x_stride,
                        case.dx.as_ptr(),
                        case.sx.as_ptr(),
                        y.as_mut_ptr(),
                        case.y_stride,
                        false,
                    )
                }
            }));
            assert!(r.is_err(), "{name}: n = {n} did not panic");
        }
    }
}
