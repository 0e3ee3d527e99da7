//! The statistics a report needs, with no dependency: percentiles (linear interpolation, as
//! numpy's default and DuckDB's `quantile_cont`, so the README's queries give the same numbers),
//! Student-t 95% intervals for a mean, and Welch's interval for a difference of means (unequal
//! variances, Welch–Satterthwaite degrees of freedom). The t quantile inverts the t CDF through
//! the regularised incomplete beta function (Lentz's continued fraction, Lanczos log-gamma),
//! accurate to ~1e-9, for the non-integer degrees of freedom Welch produces.

use serde::Serialize;

/// The `p` quantile (0..=1) of sorted values, interpolating linearly between closest ranks.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = p.clamp(0.0, 1.0) * last as f64;
    let (lo, frac) = (rank.floor() as usize, rank - rank.floor());
    let hi = (lo + 1).min(last);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Median and 95th percentile, for descriptive columns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
}

pub fn quantiles(values: &[f64]) -> Option<Quantiles> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    Some(Quantiles {
        p50: percentile(&v, 0.5)?,
        p95: percentile(&v, 0.95)?,
    })
}

/// Sample mean and unbiased variance (`n - 1`); the variance is 0 for one value.
fn mean_var(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var)
}

/// A mean with its 95% t-interval; `low`/`high` are absent below two observations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanInterval {
    pub n: u64,
    pub mean: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// `None` for no (finite) values.
pub fn mean_interval(values: &[f64]) -> Option<MeanInterval> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let (mean, var) = mean_var(&v);
    let n = v.len();
    let half = (n > 1).then(|| t_quantile(0.975, (n - 1) as f64) * (var / n as f64).sqrt());
    Some(MeanInterval {
        n: n as u64,
        mean,
        low: half.map(|h| mean - h),
        high: half.map(|h| mean + h),
    })
}

/// `mean(treatment) - mean(control)` with Welch's 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Difference {
    pub diff: f64,
    pub low: f64,
    pub high: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    pub n_treatment: u64,
    pub n_control: u64,
}

/// Needs two finite values on each side.
pub fn welch(treatment: &[f64], control: &[f64]) -> Option<Difference> {
    let t: Vec<f64> = treatment
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    let c: Vec<f64> = control.iter().copied().filter(|x| x.is_finite()).collect();
    if t.len() < 2 || c.len() < 2 {
        return None;
    }
    let ((mt, vt), (mc, vc)) = (mean_var(&t), mean_var(&c));
    let (nt, nc) = (t.len() as f64, c.len() as f64);
    let (st, sc) = (vt / nt, vc / nc);
    let se = (st + sc).sqrt();
    let df = if se > 0.0 {
        (st + sc).powi(2) / (st * st / (nt - 1.0) + sc * sc / (nc - 1.0))
    } else {
        nt + nc - 2.0
    };
    let half = t_quantile(0.975, df) * se;
    let diff = mt - mc;
    Some(Difference {
        diff,
        low: diff - half,
        high: diff + half,
        df,
        n_treatment: t.len() as u64,
        n_control: c.len() as u64,
    })
}

/// The `p` quantile (0.5 < p < 1) of Student's t with `df` > 0 degrees of freedom.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let target = 2.0 * (1.0 - p); // two-sided tail: P(|T| > t)
    let tail = |t: f64| reg_inc_beta(df / 2.0, 0.5, df / (df + t * t));
    let (mut lo, mut hi) = (0.0, 1.0);
    while tail(hi) > target && hi < 1e12 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if tail(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error ~1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function I_x(a, b).
fn reg_inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry beyond.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Lentz's evaluation of the incomplete beta continued fraction.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut h = d;
    let step = |aa: f64, c: &mut f64, d: &mut f64| {
        *d = 1.0 + aa * *d;
        *d = 1.0 / if d.abs() < TINY { TINY } else { *d };
        *c = 1.0 + aa / *c;
        if c.abs() < TINY {
            *c = TINY;
        }
        *d * *c
    };
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        h *= step(m * (b - m) * x / ((qam + m2) * (a + m2)), &mut c, &mut d);
        let del = step(
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
            &mut c,
            &mut d,
        );
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    //! Reference values from scipy 1.x (`stats.t.ppf`, `stats.ttest_ind(equal_var=False)
    //! .confidence_interval`, `stats.t.interval`) and numpy (`np.percentile`), computed once offline.

    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn t_quantiles_match_scipy() {
        for (df, want) in [
            (1.0, 12.706204736174694),
            (2.0, 4.302652729749462),
            (5.0, 2.5705818356363146),
            (10.0, 2.228138851986274),
            (30.0, 2.0422724563012378),
            (1000.0, 1.9623390808264083),
            (5.882352941176471, 2.458823709699146),
            (1.5, 6.016663104427929),
            (2.7, 3.3921483831737507),
        ] {
            close(t_quantile(0.975, df), want, 1e-8 * want);
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let q = quantiles(&[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]).unwrap();
        close(q.p50, 3.5, 1e-12);
        close(q.p95, 7.95, 1e-12);
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert!(quantiles(&[f64::NAN]).is_none());
    }

    #[test]
    fn mean_interval_matches_scipy() {
        let x = [12.1, 15.3, 9.8, 11.0, 14.2, 13.7, 10.4];
        let m = mean_interval(&x).unwrap();
        assert_eq!(m.n, 7);
        close(m.mean, 12.357142857142858, 1e-12);
        close(m.low.unwrap(), 10.426852082963931, 1e-8);
        close(m.high.unwrap(), 14.287433631321788, 1e-8);
        let one = mean_interval(&[2.0]).unwrap();
        assert_eq!((one.n, one.mean, one.low, one.high), (1, 2.0, None, None));
        assert!(mean_interval(&[]).is_none());
    }

    #[test]
    fn welch_matches_the_hand_computation_and_scipy() {
        // By hand: means 6 and 3, variances 10 and 2.5, se² = 10/5 + 2.5/5 = 2.5,
        // df = 2.5² / (2²/4 + 0.5²/4) = 6.25 / 1.0625 = 5.88235…, t(0.975, df) = 2.45882…
        let d = welch(&[2.0, 4.0, 6.0, 8.0, 10.0], &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        close(d.diff, 3.0, 1e-12);
        close(d.df, 6.25 / 1.0625, 1e-12);
        close(d.low, -0.887741643736975, 1e-8);
        close(d.high, 6.887741643736975, 1e-8);
        assert_eq!((d.n_treatment, d.n_control), (5, 5));

        let x = [12.1, 15.3, 9.8, 11.0, 14.2, 13.7, 10.4];
        let y = [16.0, 18.2, 14.9, 17.5, 15.1];
        let d = welch(&y, &x).unwrap();
        close(d.df, 9.998126146208802, 1e-9);
        close(d.low, 1.700818453231281, 1e-8);
        close(d.high, 6.264895832482993, 1e-8);
    }

    #[test]
    fn welch_degenerate_inputs() {
        assert!(welch(&[1.0], &[1.0, 2.0]).is_none());
        // No variance on either side: the interval collapses onto the difference.
        let d = welch(&[2.0, 2.0], &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!((d.diff, d.low, d.high, d.df), (1.0, 1.0, 1.0, 3.0));
    }
}
