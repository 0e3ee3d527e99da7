//! A small hand-written SVG of a report's timeline — mean latency and requests per bucket, one
//! line per arm — for people who would rather look than read.

use std::fmt::Write;

use super::report::Report;
use super::schema::iso8601;
use super::timeline::TimelinePoint;

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const W: f64 = 720.0;
const PANEL_H: f64 = 150.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 56.0;

/// The top edge of panel `k`, below its label.
fn top_of(k: usize) -> f64 {
    TOP + k as f64 * (PANEL_H + 26.0)
}

/// What a panel plots of a point.
type PointValue = fn(&TimelinePoint) -> Option<f64>;

/// Mean latency (top panel) and requests (bottom) per bucket, one line per arm.
pub fn report_svg(report: &Report) -> String {
    let tl = &report.timeline;
    let starts: Vec<u64> = tl.points.iter().map(|p| p.start_ms).collect();
    let (lo, hi) = (
        starts.iter().copied().min().unwrap_or(0),
        starts.iter().copied().max().unwrap_or(0),
    );
    let plot_w = W - LEFT - 20.0;
    let x = |ms: u64| {
        LEFT + if hi > lo {
            (ms - lo) as f64 / (hi - lo) as f64 * plot_w
        } else {
            plot_w / 2.0
        }
    };
    let height = top_of(2) + 24.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="16" font-size="13">{}</text>"#,
        esc(&report.name)
    );
    for (i, arm) in report.arms.iter().enumerate() {
        let (lx, c) = (LEFT + 120.0 * i as f64, COLORS[i % COLORS.len()]);
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="24" width="10" height="10" fill="{c}"/><text x="{}" y="33">{}</text>"#,
            lx + 14.0,
            esc(&arm.name)
        );
    }
    let panels: [(&str, PointValue); 2] = [
        ("mean latency ms", |p| p.mean_latency_ms),
        ("requests", |p| Some(p.requests as f64)),
    ];
    for (k, (label, value)) in panels.iter().enumerate() {
        let top = top_of(k);
        let max = tl
            .points
            .iter()
            .filter_map(value)
            .fold(0.0, f64::max)
            .max(1e-9);
        let y = |v: f64| top + PANEL_H - v / max * (PANEL_H - 10.0);
        let _ = write!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#ccc"/><text x="{}" y="{}">{label}</text><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">0</text>"##,
            LEFT,
            top - 5.0,
            LEFT - 4.0,
            top + 14.0,
            fmt_num(max),
            LEFT - 4.0,
            top + PANEL_H
        );
        for (i, arm) in report.arms.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = tl
                .points
                .iter()
                .filter(|p| p.arm == arm.name)
                .filter_map(|p| Some((x(p.start_ms), y(value(p)?))))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let line: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                line.join(" ")
            );
            // Dots, so a bucket without neighbours still shows.
            for (x, y) in pts {
                let _ = write!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="2" fill="{color}"/>"#
                );
            }
        }
    }
    let axis_y = top_of(1) + PANEL_H + 16.0;
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
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_names_are_escaped() {
        assert_eq!(esc(r#"a<b>&"c""#), "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}
