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
