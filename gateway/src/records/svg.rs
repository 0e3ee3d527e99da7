//! The arms over time: requests bucketed by a round width (at most 60 buckets over the records'
//! span), and a small hand-written SVG of it — mean latency and requests per bucket per arm —
//! for people who would rather look than read. Buckets count every request (in analysis or not):
//! it shows what was served, the estimates are elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::report::Report;
use super::schema::{iso8601, RequestRecord};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub bucket_ms: u64,
    pub points: Vec<TimelinePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelinePoint {
    pub start_ms: u64,
    pub arm: String,
    pub requests: u64,
    pub errors: u64,
    /// Over the bucket's successful requests.
    pub mean_latency_ms: Option<f64>,
}

const WIDTHS_S: [u64; 15] = [
    1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 10_800, 21_600, 43_200, 86_400, 604_800,
];
const MAX_BUCKETS: u64 = 60;

pub(super) fn timeline(arms: &[String], reqs: &[&RequestRecord]) -> Timeline {
    let (Some(lo), Some(hi)) = (
        reqs.iter().map(|r| r.ts_ms).min(),
        reqs.iter().map(|r| r.ts_ms).max(),
    ) else {
        return Timeline { bucket_ms: 1000, points: Vec::new() };
    };
    let bucket_ms = WIDTHS_S
        .iter()
        .map(|s| s * 1000)
        .find(|w| (hi / w - lo / w) < MAX_BUCKETS)
        .unwrap_or(WIDTHS_S[WIDTHS_S.len() - 1] * 1000);
    // (bucket start, arm index) → (requests, errors, latency sum, ok count)
    let mut cells: BTreeMap<(u64, usize), (u64, u64, f64, u64)> = BTreeMap::new();
    for r in reqs {
        let Some(arm) = arms.iter().position(|a| a == &r.arm) else {
            continue;
        };
        let cell = cells.entry((r.ts_ms / bucket_ms * bucket_ms, arm)).or_default();
        cell.0 += 1;
        if r.status == "ok" {
            cell.2 += r.latency_ms;
            cell.3 += 1;
        } else {
            cell.1 += 1;
        }
    }
    let points = cells
        .into_iter()
        .map(|((start_ms, arm), (requests, errors, sum, ok))| TimelinePoint {
            start_ms,
            arm: arms[arm].clone(),
            requests,
            errors,
            mean_latency_ms: (ok > 0).then(|| sum / ok as f64),
        })
        .collect();
    Timeline { bucket_ms, points }
}

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
const W: f64 = 720.0;
const PANEL_H: f64 = 150.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;

/// Mean latency (top panel) and requests (bottom) per bucket, one line per arm.
pub fn report_svg(report: &Report) -> String {
    let tl = &report.timeline;
    let starts: Vec<u64> = tl.points.iter().map(|p| p.start_ms).collect();
    let (lo, hi) = (
        starts.iter().copied().min().unwrap_or(0),
        starts.iter().copied().max().unwrap_or(0),
    );
    let plot_w = W - LEFT - 20.0;
    let x = |ms: u64| LEFT + if hi > lo { (ms - lo) as f64 / (hi - lo) as f64 * plot_w } else { plot_w / 2.0 };
    let height = TOP + 2.0 * PANEL_H + 70.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<text x="{LEFT}" y="16" font-size="13">{}</text>"#, esc(&report.name));
    for (i, arm) in report.arms.iter().enumerate() {
        let (lx, c) = (LEFT + 120.0 * i as f64, COLORS[i % COLORS.len()]);
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="24" width="10" height="10" fill="{c}"/><text x="{}" y="33">{}</text>"#,
            lx + 14.0,
            esc(&arm.name)
        );
    }
    let panels: [(&str, fn(&TimelinePoint) -> Option<f64>); 2] = [
        ("mean latency ms", |p| p.mean_latency_ms),
        ("requests", |p| Some(p.requests as f64)),
    ];
    for (k, (label, value)) in panels.iter().enumerate() {
        let top = TOP + k as f64 * (PANEL_H + 20.0);
        let max = tl.points.iter().filter_map(value).fold(0.0, f64::max).max(1e-9);
        let y = |v: f64| top + PANEL_H - v / max * (PANEL_H - 10.0);
        let _ = write!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#ccc"/><text x="4" y="{}">{}</text><text x="4" y="{}">{label}</text><text x="4" y="{}">0</text>"##,
            top + 12.0,
            fmt_num(max),
            top + PANEL_H / 2.0,
            top + PANEL_H
        );
        for (i, arm) in report.arms.iter().enumerate() {
            let pts: Vec<String> = tl
                .points
                .iter()
                .filter(|p| p.arm == arm.name)
                .filter_map(|p| Some(format!("{:.1},{:.1}", x(p.start_ms), y(value(p)?))))
                .collect();
            if !pts.is_empty() {
                let _ = write!(
                    s,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                    COLORS[i % COLORS.len()],
                    pts.join(" ")
                );
            }
        }
    }
    let axis_y = TOP + 2.0 * PANEL_H + 36.0;
    if !tl.points.is_empty() {
        let _ = write!(
            s,
            r#"<text x="{LEFT}" y="{axis_y}">{}</text><text x="{}" y="{axis_y}" text-anchor="end">{}</text>"#,
            iso8601(lo),
            LEFT + plot_w,
            iso8601(hi)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::testutil::request;

    #[test]
    fn buckets_are_round_and_count_per_arm() {
        let mut reqs = vec![request("e", "a", 0, 10.0), request("e", "a", 1, 30.0), request("e", "b", 2, 5.0)];
        reqs.push(RequestRecord { status: "error".into(), ..request("e", "b", 3, 1.0) });
        // ids are 1 s apart: a 3 s span fits 1 s buckets.
        let refs: Vec<&RequestRecord> = reqs.iter().collect();
        let tl = timeline(&["a".into(), "b".into()], &refs);
        assert_eq!(tl.bucket_ms, 1000);
        assert_eq!(tl.points.len(), 4);
        assert_eq!(tl.points[3].errors, 1);
        assert_eq!(tl.points[3].mean_latency_ms, None);
        // A two-hour span: 300 s buckets are the first round width under 60 buckets.
        let far = request("e", "a", 7200, 1.0);
        let refs = vec![&reqs[0], &far];
        let tl = timeline(&["a".into()], &refs);
        assert_eq!(tl.bucket_ms, 300_000);
        assert!(tl.points.iter().all(|p| p.start_ms % 300_000 == 0));
    }

    #[test]
    fn arm_names_are_escaped() {
        assert_eq!(esc(r#"a<b>&"c""#), "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}
