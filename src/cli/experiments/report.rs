//! `loraplex experiments report NAME` as text: one table of arms, the differences against the
//! control, one table of shadows. The numbers are the server's (`GET
//! /v1/experiments/{name}/report`); this only lays them out. An estimate is an object with a
//! `mean` (itself possibly an object: feedback's `{count, mean: {...}}`) or a `diff`, a 95%
//! interval as `low`/`high` and a count `n`; a bare number is an estimate without interval.
//! Whatever is missing prints as `-`.

use std::fmt::Write;

use serde_json::Value;

use crate::cli::admin::cell;

/// A point estimate with its interval, as the report gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Estimate {
    value: f64,
    interval: Option<(f64, f64)>,
    n: Option<u64>,
}

fn first<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().map(|k| &v[*k]).find(|x| !x.is_null())
}

fn pair(v: &Value) -> Option<(f64, f64)> {
    match v {
        Value::Array(a) if a.len() == 2 => Some((a[0].as_f64()?, a[1].as_f64()?)),
        Value::Object(_) => Some((
            first(v, &["lo", "low", "lower"])?.as_f64()?,
            first(v, &["hi", "high", "upper"])?.as_f64()?,
        )),
        _ => None,
    }
}

fn estimate(v: &Value) -> Option<Estimate> {
    if let Some(x) = v.as_f64() {
        return Some(Estimate {
            value: x,
            interval: None,
            n: None,
        });
    }
    let value = first(v, &["mean", "diff", "estimate", "value"])?;
    if value.is_object() {
        // `{count, mean: {n, mean, low, high}}`: the inner object is the estimate.
        return estimate(value);
    }
    let value = value.as_f64()?;
    let interval = first(v, &["ci95", "ci", "interval"])
        .and_then(pair)
        .or_else(|| {
            let lo = first(v, &["ci_low", "ci95_low", "lo", "low"])?.as_f64()?;
            let hi = first(v, &["ci_high", "ci95_high", "hi", "high"])?.as_f64()?;
            Some((lo, hi))
        });
    let n = first(v, &["n", "count"]).and_then(Value::as_u64);
    Some(Estimate { value, interval, n })
}

/// Three significant digits, without an exponent for the ranges reports hold.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// `0.620 ± 0.080 (n=40)`: a mean's Welch interval is symmetric, so its half-width says it all.
fn mean_pm(e: Option<Estimate>) -> String {
    let Some(e) = e else { return "-".into() };
    let mut s = num(e.value);
    if let Some((lo, hi)) = e.interval {
        let _ = write!(s, " ± {}", num((hi - lo) / 2.0));
    }
    if let Some(n) = e.n {
        let _ = write!(s, " (n={n})");
    }
    s
}

/// `+0.050 [-0.030, 0.130]`: a difference with its interval's ends, signed.
fn diff_ci(e: Estimate) -> String {
    let signed = |x: f64| {
        if x >= 0.0 {
            format!("+{}", num(x))
        } else {
            num(x)
        }
    };
    let mut s = signed(e.value);
    if let Some((lo, hi)) = e.interval {
        let verdict = if lo > 0.0 || hi < 0.0 {
            "  (excludes 0)"
        } else {
            ""
        };
        let _ = write!(s, " [{}, {}]{verdict}", signed(lo), signed(hi));
    }
    s
}

/// `p50/p95` of a latency-like metric, in milliseconds.
fn percentiles(arm: &Value, metric: &str) -> String {
    let base = metric.trim_end_matches("_ms");
    let q = |q: &str| {
        first(&arm[metric], &[q])
            .or_else(|| first(arm, &[&format!("{metric}_{q}"), &format!("{base}_{q}_ms")]))
            .and_then(Value::as_f64)
            .map_or("-".into(), num)
    };
    format!("{}/{}", q("p50"), q("p95"))
}

fn error_rate(arm: &Value) -> String {
    let rate = estimate(&arm["error_rate"]).map(|e| e.value).or_else(|| {
        let (e, r) = (arm["errors"].as_f64()?, arm["requests"].as_f64()?);
        (r > 0.0).then(|| e / r)
    });
    rate.map_or("-".into(), |r| format!("{:.1}%", 100.0 * r))
}

fn tokens(arm: &Value) -> String {
    first(arm, &["completion_tokens", "tokens"])
        .map(|t| match t {
            Value::Object(_) => {
                cell(first(t, &["completion", "sum", "total"]).unwrap_or(&Value::Null))
            }
            other => cell(other),
        })
        .unwrap_or_else(|| "-".into())
}

fn arms_table(r: &Value, out: &mut String) {
    let _ = writeln!(
        out,
        "{:<12} {:<20} {:>8} {:>6} {:>9} {:>15} {:>15}  FEEDBACK",
        "ARM", "MODEL", "REQUESTS", "ERRORS", "TOKENS", "TTFT p50/p95", "LATENCY p50/p95"
    );
    for a in r["arms"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<12} {:<20} {:>8} {:>6} {:>9} {:>15} {:>15}  {}",
            cell(&a["name"]),
            cell(&a["model"]),
            cell(&a["requests"]),
            error_rate(a),
            tokens(a),
            percentiles(a, "ttft_ms"),
            percentiles(a, "latency_ms"),
            mean_pm(estimate(&a["feedback"]))
        );
    }
}

/// The metrics a difference between arms may be given for, in the order printed.
const DIFFERENCE_METRICS: [&str; 5] = [
    "feedback",
    "error_rate",
    "latency_ms",
    "ttft_ms",
    "completion_tokens",
];

/// One line per arm and metric: `differences: [{arm, control, feedback: {diff, low, high}, ...}]`.
fn differences(r: &Value, control: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for d in r["differences"].as_array().into_iter().flatten() {
        let base = d
            .get("control")
            .filter(|c| !c.is_null())
            .map_or(control.to_string(), cell);
        for metric in DIFFERENCE_METRICS {
            if let Some(e) = estimate(&d[metric]) {
                lines.push(format!(
                    "  {} - {base}  {metric:<17} {}",
                    cell(&d["arm"]),
                    diff_ci(e)
                ));
            }
        }
    }
    lines
}

fn shadows_table(r: &Value, out: &mut String) {
    let shadows = r["shadows"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if shadows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:>7} {:>7} {:>6}  {:<22} {:<22} {:<22} KL",
        "SHADOW", "SCORED", "DROPPED", "FAILED", "MEAN LOGPROB", "PPL RATIO", "TOP-1 AGREEMENT"
    );
    for s in shadows {
        let _ = writeln!(
            out,
            "{:<20} {:>7} {:>7} {:>6}  {:<22} {:<22} {:<22} {}",
            cell(first(s, &["model", "shadow_model"]).unwrap_or(&Value::Null)),
            cell(&s["scored"]),
            cell(&s["dropped"]),
            cell(&s["failed"]),
            mean_pm(estimate(&s["mean_logprob"])),
            mean_pm(estimate(&s["ppl_ratio"])),
            mean_pm(estimate(&s["top1_agreement"])),
            mean_pm(estimate(&s["kl"]))
        );
    }
}

pub fn report(r: &Value) -> String {
    let mut out = String::new();
    let kind = cell(first(r, &["type", "policy"]).unwrap_or(&Value::Null));
    let _ = write!(
        out,
        "{} ({kind}): {} requests, {} in analysis",
        cell(&r["name"]),
        cell(&r["requests"]),
        cell(&r["in_analysis"])
    );
    if let (Some(a), Some(b)) = (r["first_ts"].as_str(), r["last_ts"].as_str()) {
        let _ = write!(out, ", {a} to {b}");
    }
    out.push('\n');
    if r["unit"] == "window" {
        out.push_str("intervals are over windows (the window is the unit; burn-in excluded)\n");
    }
    arms_table(r, &mut out);
    let control = first(r, &["control"])
        .map(cell)
        .or_else(|| r["arms"][0]["name"].as_str().map(str::to_string))
        .unwrap_or_default();
    let diffs = differences(r, &control);
    if !diffs.is_empty() {
        let _ = writeln!(out, "\ndifferences vs {control} (95% interval):");
        for d in diffs {
            let _ = writeln!(out, "{d}");
        }
    }
    shadows_table(r, &mut out);
    out
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
