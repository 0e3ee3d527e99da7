//! The text `loraplex experiments` prints (without `--json`): short lines a person reads, never
//! parsed (scripts use `--json`). Fields the server leaves out print as `-`, so an older or newer
//! server still renders.

use std::fmt::Write;

use serde_json::Value;

use super::ExperimentsCommand;
use crate::cli::admin::cell;

/// Segment entries `show` prints before summarising the rest.
const SEGMENTS_SHOWN: usize = 10;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn human(cmd: &ExperimentsCommand, v: &Value, now_ms: u64) -> String {
    match cmd {
        ExperimentsCommand::List => list(v),
        ExperimentsCommand::Stop { name } => format!("stopped {name}\n"),
        ExperimentsCommand::Report { .. } => super::report::report(v),
        _ => show(v, now_ms),
    }
}

/// `a=ad-v1:50 b=ad-v2:50`, or a segmented route's `3 segments, default X`.
fn arms_summary(e: &Value) -> String {
    let arms: Vec<String> = e["arms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| match a.get("weight").filter(|w| !w.is_null()) {
            Some(w) => format!("{}={}:{}", cell(&a["name"]), cell(&a["model"]), weight(w)),
            None => format!("{}={}", cell(&a["name"]), cell(&a["model"])),
        })
        .collect();
    if !arms.is_empty() {
        return arms.join(" ");
    }
    let n = e["segments"].as_object().map_or(0, |m| m.len());
    format!("{n} segments, default {}", cell(&e["default"]))
}

/// `50` rather than the `50.0` a float weight serialises as.
fn weight(w: &Value) -> String {
    match w.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        _ => cell(w),
    }
}

fn shadows_summary(e: &Value) -> String {
    let s: Vec<String> = e["shadows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| cell(&s["model"]))
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(" ")
    }
}

fn list(v: &Value) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<7} {:<40} {}\n",
        "NAME", "TYPE", "STATUS", "ARMS", "SHADOWS"
    );
    for e in v["data"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:<7} {:<40} {}",
            cell(&e["name"]),
            cell(&e["type"]),
            cell(&e["status"]),
            arms_summary(e),
            shadows_summary(e)
        );
    }
    out
}

fn show(e: &Value, now_ms: u64) -> String {
    let mut out = String::new();
    for key in ["name", "id", "type", "status", "unit", "default"] {
        if !e[key].is_null() {
            let _ = writeln!(out, "{key:<10} {}", cell(&e[key]));
        }
    }
    if let Some(seg) = e["segment"].as_object() {
        let from = match seg.get("metadata_key").and_then(Value::as_str) {
            Some(k) if seg.get("header") == Some(&Value::Bool(true)) => {
                format!("header x-loraplex-segment, then metadata.{k}")
            }
            Some(k) => format!("metadata.{k}"),
            None => "header x-loraplex-segment".into(),
        };
        let _ = writeln!(out, "{:<10} {from}", "segment");
    }
    if !e["window_s"].is_null() {
        let _ = writeln!(
            out,
            "{:<10} {}s, burn-in {}s, seed {}",
            "windows",
            cell(&e["window_s"]),
            cell(&e["burn_in_s"]),
            cell(&e["seed"])
        );
    }
    let arms = e["arms"].as_array().map(Vec::as_slice).unwrap_or_default();
    let total: f64 = arms.iter().filter_map(|a| a["weight"].as_f64()).sum();
    for a in arms {
        let share = match a["weight"].as_f64() {
            Some(w) if total > 0.0 => {
                format!(
                    "  weight {} ({:.1}%)",
                    weight(&a["weight"]),
                    100.0 * w / total
                )
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  arm {:<12} {}{share}",
            cell(&a["name"]),
            cell(&a["model"])
        );
    }
    if let Some(map) = e["segments"].as_object() {
        for (value, model) in map.iter().take(SEGMENTS_SHOWN) {
            let _ = writeln!(out, "  segment {value:<12} {}", cell(model));
        }
        if map.len() > SEGMENTS_SHOWN {
            let _ = writeln!(
                out,
                "  … {} more segments (--json lists them)",
                map.len() - SEGMENTS_SHOWN
            );
        }
    }
    for s in e["shadows"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  shadow {:<12} {}  sample {}",
            cell(&s["model"]),
            s["mode"].as_str().unwrap_or("score"),
            s["sample"].as_f64().map_or("1".into(), |f| f.to_string())
        );
    }
    for w in e["schedule"].as_array().into_iter().flatten() {
        let start = w["start_ms"].as_u64().map(|ms| {
            let when = if ms <= now_ms {
                "now".to_string()
            } else {
                format!("in {}", duration((ms - now_ms) / 1000))
            };
            format!("{} ({when})", iso8601(ms))
        });
        let _ = writeln!(
            out,
            "  window {:<10} {}  arm {}",
            cell(if w["id"].is_null() {
                &w["window"]
            } else {
                &w["id"]
            }),
            start.unwrap_or_else(|| "-".into()),
            cell(&w["arm"])
        );
    }
    out
}

/// `1h02m`, `4m10s`, `9s`.
fn duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `2026-03-01T12:00:00Z` for unix milliseconds: the records' timestamps to the second.
pub fn iso8601(ms: u64) -> String {
    let full = loraplex_gateway::records::iso8601(ms);
    match full.split_once('.') {
        Some((secs, _)) => format!("{secs}Z"),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn support() -> Value {
        json!({"id": "exp-1", "name": "support", "type": "ab", "status": "active", "unit": "user",
               "salt": "s", "created_ms": 0, "updated_ms": 0,
               "arms": [{"name": "a", "model": "ad-v1", "weight": 3.0},
                        {"name": "b", "model": "ad-v2@2", "weight": 1.0}],
               "shadows": [{"model": "ad-v3", "mode": "score", "sample": 0.25}]})
    }

    #[test]
    fn list_is_one_line_per_route() {
        let seg = json!({"name": "assist", "type": "segmented", "status": "paused",
                         "segments": {"eu": "x", "us": "y"}, "default": "base", "shadows": []});
        let out = list(&json!({"object": "list", "data": [support(), seg]}));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[1].starts_with("support") && lines[1].contains("a=ad-v1:3 b=ad-v2@2:1"));
        assert!(lines[1].ends_with("ad-v3"), "{out}");
        assert!(
            lines[2].contains("2 segments, default base") && lines[2].ends_with('-'),
            "{out}"
        );
    }

    #[test]
    fn show_gives_shares_shadows_and_the_schedule() {
        let mut e = support();
        e["type"] = json!("switchback");
        e["window_s"] = json!(600);
        e["burn_in_s"] = json!(60);
        e["seed"] = json!(7);
        e["schedule"] = json!([{"id": 5, "start_ms": 3_000_000, "end_ms": 3_600_000, "arm": "b"},
                               {"window": 6, "start_ms": 3_600_000, "arm": "a"}]);
        let out = show(&e, 3_350_000);
        assert!(
            out.contains("arm a            ad-v1  weight 3 (75.0%)"),
            "{out}"
        );
        assert!(
            out.contains("arm b            ad-v2@2  weight 1 (25.0%)"),
            "{out}"
        );
        assert!(
            out.contains("shadow ad-v3        score  sample 0.25"),
            "{out}"
        );
        assert!(
            out.contains("windows    600s, burn-in 60s, seed 7"),
            "{out}"
        );
        assert!(
            out.contains("window 5          1970-01-01T00:50:00Z (now)  arm b"),
            "{out}"
        );
        assert!(
            out.contains("window 6          1970-01-01T01:00:00Z (in 4m10s)  arm a"),
            "{out}"
        );
        assert!(!out.contains("salt"), "the salt stays in --json");
    }

    #[test]
    fn show_summarises_thousands_of_segments() {
        let segs: serde_json::Map<String, Value> = (0..5000)
            .map(|i| (format!("c{i:04}"), json!(format!("ad-{i}"))))
            .collect();
        let e = json!({"name": "assist", "type": "segmented", "segment": {"metadata_key": "customer"},
                       "segments": segs, "default": "base"});
        let out = show(&e, 0);
        assert!(out.contains("segment    metadata.customer"), "{out}");
        assert_eq!(out.matches("  segment c").count(), SEGMENTS_SHOWN);
        assert!(out.contains("… 4990 more segments"), "{out}");
    }

    #[test]
    fn iso8601_and_durations() {
        assert_eq!(iso8601(1_772_366_400_123), "2026-03-01T12:00:00Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(duration(9), "9s");
        assert_eq!(duration(3_720), "1h02m");
    }
}
