//! The report's text from sample report JSON.

use serde_json::json;

use super::*;

fn sample() -> Value {
    json!({
        "name": "support", "type": "ab", "status": "active", "control": "a",
        "arms": [
            {"name": "a", "model": "ad-v1", "requests": 120, "errors": 0, "completion_tokens": 2400,
             "ttft_ms": {"p50": 12.24, "p95": 30.0}, "latency_ms": {"p50": 140.0, "p95": 310.0},
             "feedback": {"n": 40, "mean": 0.62, "ci95": [0.54, 0.70]}},
            {"name": "b", "model": "ad-v2", "requests": 80, "errors": 2, "completion_tokens": 1600,
             "ttft_ms": {"p50": 13.0, "p95": 33.5}, "latency_ms": {"p50": 150.0, "p95": 1200.0},
             "feedback": {"n": 25, "mean": 0.71, "ci95": [0.60, 0.82]}}
        ],
        "differences": [
            {"arm": "b", "control": "a", "metric": "feedback", "diff": 0.09, "ci95": [-0.04, 0.22]},
            {"arm": "b", "control": "a", "metric": "latency_ms", "diff": 10.0, "ci95": [2.0, 18.0]}
        ],
        "shadows": [
            {"model": "ad-v3", "scored": 190, "dropped": 10, "failed": 0,
             "mean_logprob": {"n": 190, "mean": -1.234, "ci95": [-1.3, -1.168]},
             "ppl_ratio": {"n": 190, "mean": 1.05, "ci95": [1.01, 1.09]},
             "top1_agreement": {"n": 190, "mean": 0.81, "ci95": [0.79, 0.83]},
             "kl": null}
        ]
    })
}

fn line_of<'a>(out: &'a str, start: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in\n{out}"))
}

#[test]
fn one_row_per_arm_with_errors_percentiles_and_feedback() {
    let out = report(&sample());
    assert!(out.starts_with("support (ab, active)\n"), "{out}");
    let a: Vec<&str> = line_of(&out, "a ").split_whitespace().collect();
    assert_eq!(&a[..7], ["a", "ad-v1", "120", "0.0%", "2400", "12.2/30.0", "140/310"], "{out}");
    assert_eq!(a[7..].join(" "), "0.620 ± 0.080 (n=40)");
    let b = line_of(&out, "b ");
    assert!(b.contains(" 2.5% ") && b.contains("150/1200") && b.ends_with("0.710 ± 0.110 (n=25)"), "{out}");
}

#[test]
fn differences_say_whether_the_interval_excludes_zero() {
    let out = report(&sample());
    assert!(out.contains("differences vs a (95% interval):"), "{out}");
    assert!(out.contains("b - a  feedback       +0.090 [-0.040, +0.220]\n"), "{out}");
    assert!(out.contains("b - a  latency_ms     +10.0 [+2.00, +18.0]  (excludes 0)\n"), "{out}");
}

#[test]
fn shadows_with_intervals_and_missing_kl() {
    let out = report(&sample());
    let row = line_of(&out, "ad-v3");
    assert!(row.contains("190      10      0"), "{row}");
    assert!(row.contains("-1.23 ± 0.066 (n=190)"), "{row}");
    assert!(row.contains("1.05 ± 0.040 (n=190)") && row.contains("0.810 ± 0.020 (n=190)"), "{row}");
    assert!(row.ends_with(" -"), "kl absent: {row}");
}

#[test]
fn other_shapes_of_the_same_numbers_render_alike() {
    // Flat percentile keys, bare-number feedback, per-arm vs_control maps, lo/hi intervals.
    let r = json!({
        "name": "batch", "policy": "switchback", "status": "paused",
        "switchback": {"windows": 12, "burn_in_excluded": 40, "per_window": [1, 2]},
        "arms": [
            {"name": "a", "model": "x", "requests": 10, "error_rate": 0.1,
             "ttft_p50_ms": 5.0, "ttft_p95_ms": 9.0, "latency_ms_p50": 50.0, "latency_ms_p95": 90.0,
             "feedback": 0.5},
            {"name": "b", "model": "y", "requests": 0,
             "vs_control": {"latency_ms": {"estimate": -5.0, "ci": {"lo": -9.0, "hi": -1.0}}}}
        ]
    });
    let out = report(&r);
    assert!(out.starts_with("batch (switchback, paused)\nswitchback: "), "{out}");
    let sb = line_of(&out, "switchback:");
    assert!(sb.contains("windows 12") && sb.contains("burn_in_excluded 40") && !sb.contains("per_window"), "{sb}");
    let a: Vec<&str> = line_of(&out, "a ").split_whitespace().collect();
    assert_eq!(a, ["a", "x", "10", "10.0%", "-", "5.00/9.00", "50.0/90.0", "0.500"], "{out}");
    let b: Vec<&str> = line_of(&out, "b ").split_whitespace().collect();
    assert_eq!(b, ["b", "y", "0", "-", "-", "-/-", "-/-", "-"], "no requests, no rates: {out}");
    assert!(out.contains("differences vs a (95% interval):\n  b - a  latency_ms     -5.00 [-9.00, -1.00]  (excludes 0)"), "{out}");
    assert!(!out.contains("SHADOW"), "no shadows, no table: {out}");
}

#[test]
fn numbers_keep_three_significant_digits() {
    assert_eq!(num(0.0), "0");
    assert_eq!(num(1234.4), "1234");
    assert_eq!(num(-12.345), "-12.3");
    assert_eq!(num(1.005), "1.00");
    assert_eq!(num(0.0123), "0.012");
}
