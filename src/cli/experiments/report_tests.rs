//! The report's text from sample report JSON.

use serde_json::json;

use super::*;

/// The shape of helper C's `records::Report` (Summary = quantiles + MeanInterval flattened).
fn sample() -> Value {
    let mi = |n: u64, mean: f64, low: f64, high: f64| json!({"n": n, "mean": mean, "low": low, "high": high});
    json!({
        "name": "support", "experiment_id": "exp_1", "policy": "ab", "unit": "request",
        "requests": 202, "in_analysis": 200, "first_ts": "2026-03-01T12:00:00.000Z",
        "last_ts": "2026-03-01T13:00:00.000Z", "skipped_lines": 0,
        "arms": [
            {"name": "a", "model": "ad-v1", "requests": 120, "in_analysis": 120, "excluded": 0, "errors": 0,
             "error_codes": {}, "error_rate": mi(120, 0.0, 0.0, 0.0), "prompt_tokens": 6000,
             "completion_tokens": 2400, "adapter_versions": [1], "windows": null,
             "ttft_ms": {"p50": 12.24, "p95": 30.0, "n": 120, "mean": 14.0, "low": 13.0, "high": 15.0},
             "latency_ms": {"p50": 140.0, "p95": 310.0, "n": 120, "mean": 150.0, "low": 140.0, "high": 160.0},
             "feedback": {"count": 40, "mean": mi(40, 0.62, 0.54, 0.70), "labels": {"thumbs": 40}}},
            {"name": "b", "model": "ad-v2", "requests": 82, "in_analysis": 80, "excluded": 2, "errors": 2,
             "error_codes": {"timeout": 2}, "error_rate": mi(80, 0.025, 0.0, 0.06), "prompt_tokens": 4000,
             "completion_tokens": 1600, "adapter_versions": [1], "windows": null,
             "ttft_ms": {"p50": 13.0, "p95": 33.5, "n": 78, "mean": 15.0, "low": 14.0, "high": 16.0},
             "latency_ms": {"p50": 150.0, "p95": 1200.0, "n": 78, "mean": 170.0, "low": 150.0, "high": 190.0},
             "feedback": {"count": 25, "mean": mi(25, 0.71, 0.60, 0.82), "labels": {}}}
        ],
        "differences": [
            {"arm": "b", "control": "a", "unit": "request",
             "feedback": {"diff": 0.09, "low": -0.04, "high": 0.22, "df": 50.0, "n_treatment": 25, "n_control": 40},
             "latency_ms": {"diff": 10.0, "low": 2.0, "high": 18.0, "df": 150.0, "n_treatment": 78, "n_control": 120},
             "ttft_ms": null, "error_rate": null, "completion_tokens": null}
        ],
        "shadows": [
            {"model": "ad-v3", "records": 200, "scored": 190, "failed": 0, "dropped": 10, "coverage": 0.95,
             "tokens": 3800, "mean_logprob": mi(190, -1.234, -1.3, -1.168), "perplexity": mi(190, 3.4, 3.2, 3.6),
             "ppl_ratio": mi(190, 1.05, 1.01, 1.09), "top1_agreement": mi(190, 0.81, 0.79, 0.83), "kl": null,
             "by_arm": []}
        ],
        "timeline": {"bucket_ms": 60000, "points": []}
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
    assert!(
        out.starts_with("support (ab): 202 requests, 200 in analysis, 2026-03-01T12:00:00.000Z to 2026-03-01T13:00:00.000Z\n"),
        "{out}"
    );
    assert!(!out.contains("over windows"), "{out}");
    let a: Vec<&str> = line_of(&out, "a ").split_whitespace().collect();
    assert_eq!(
        &a[..7],
        ["a", "ad-v1", "120", "0.0%", "2400", "12.2/30.0", "140/310"],
        "{out}"
    );
    assert_eq!(a[7..].join(" "), "0.620 ± 0.080 (n=40)");
    let b = line_of(&out, "b ");
    assert!(
        b.contains(" 2.5% ") && b.contains("150/1200") && b.ends_with("0.710 ± 0.110 (n=25)"),
        "{out}"
    );
}

#[test]
fn differences_say_whether_the_interval_excludes_zero() {
    let out = report(&sample());
    assert!(out.contains("differences vs a (95% interval):"), "{out}");
    assert!(
        out.contains("b - a  feedback          +0.090 [-0.040, +0.220]\n"),
        "{out}"
    );
    assert!(
        out.contains("b - a  latency_ms        +10.0 [+2.00, +18.0]  (excludes 0)\n"),
        "{out}"
    );
    assert!(
        !out.contains("ttft_ms "),
        "null differences are left out: {out}"
    );
}

#[test]
fn shadows_with_intervals_and_missing_kl() {
    let out = report(&sample());
    let row = line_of(&out, "ad-v3");
    assert!(row.contains("190      10      0"), "{row}");
    assert!(row.contains("-1.23 ± 0.066 (n=190)"), "{row}");
    assert!(
        row.contains("1.05 ± 0.040 (n=190)") && row.contains("0.810 ± 0.020 (n=190)"),
        "{row}"
    );
    assert!(row.ends_with(" -"), "kl absent: {row}");
}

#[test]
fn a_switchback_says_its_unit_and_missing_numbers_print_as_dashes() {
    let r = json!({
        "name": "batch", "policy": "switchback", "unit": "window", "requests": 10, "in_analysis": 8,
        "arms": [
            {"name": "a", "model": "x", "requests": 10, "errors": 1, "error_rate": null,
             "ttft_ms": null, "latency_ms": {"p50": 50.0, "p95": 90.0}, "feedback": 0.5},
            {"name": "b", "model": "y", "requests": 0, "feedback": {"count": 0, "mean": null}}
        ],
        "differences": [], "shadows": []
    });
    let out = report(&r);
    assert!(
        out.starts_with(
            "batch (switchback): 10 requests, 8 in analysis\nintervals are over windows"
        ),
        "{out}"
    );
    let a: Vec<&str> = line_of(&out, "a ").split_whitespace().collect();
    assert_eq!(
        a,
        ["a", "x", "10", "10.0%", "-", "-/-", "50.0/90.0", "0.500"],
        "{out}"
    );
    let b: Vec<&str> = line_of(&out, "b ").split_whitespace().collect();
    assert_eq!(
        b,
        ["b", "y", "0", "-", "-", "-/-", "-/-", "-"],
        "no requests, no rates: {out}"
    );
    assert!(!out.contains("differences"), "{out}");
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
