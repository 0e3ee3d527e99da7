//! Observations per arm and the differences between arms. An A/B split's unit is the request
//! (units are sticky, so this treats a heavy user's requests as independent: the intervals are
//! optimistic when a few units dominate). A switchback's unit is the window: arms interfere
//! through the shared batch within a window, so each window's in-analysis requests collapse to
//! one mean per metric and the intervals are over windows, burn-in already excluded upstream.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::schema::{FeedbackRecord, RequestRecord};
use super::stats::{welch, Difference};

/// What is compared between arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Metric {
    /// Successful requests only: an error's latency says nothing about serving speed.
    Latency,
    Ttft,
    /// 1 for an error, 0 otherwise: its mean is the error rate.
    Error,
    /// The latest feedback value on the request, for requests that got any.
    Feedback,
    CompletionTokens,
}

impl Metric {
    fn value(self, r: &RequestRecord, feedback: &HashMap<&str, &FeedbackRecord>) -> Option<f64> {
        let ok = r.status == "ok";
        match self {
            Metric::Latency => ok.then_some(r.latency_ms),
            Metric::Ttft => r.ttft_ms.filter(|_| ok),
            Metric::Error => Some(if ok { 0.0 } else { 1.0 }),
            Metric::Feedback => feedback.get(r.request_id.as_str()).map(|f| f.value),
            Metric::CompletionTokens => ok.then_some(r.completion_tokens as f64),
        }
    }
}

/// The observation unit of an experiment's estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Request,
    Window,
}

impl Unit {
    pub(super) fn for_policy(policy: &str) -> Unit {
        if policy == "switchback" {
            Unit::Window
        } else {
            Unit::Request
        }
    }
}

/// The latest feedback per request id: the largest `ts_ms`, and at equal times the larger value
/// (a rule DuckDB reproduces: `arg_max(value, (ts_ms, value))`; file order it cannot see).
pub(super) fn latest_feedback(feedback: &[FeedbackRecord]) -> HashMap<&str, &FeedbackRecord> {
    let mut latest: HashMap<&str, &FeedbackRecord> = HashMap::new();
    for f in feedback.iter().filter(|f| f.value.is_finite()) {
        let slot = latest.entry(f.request_id.as_str()).or_insert(f);
        if (f.ts_ms, f.value) >= (slot.ts_ms, slot.value) {
            *slot = f;
        }
    }
    latest
}

/// One arm's observations of `metric` from its in-analysis requests: one per request, or one
/// per window (the mean of that window's values; windows with no value are left out, and so
/// are records without a window id).
pub(super) fn observations(
    in_analysis: &[&RequestRecord],
    metric: Metric,
    feedback: &HashMap<&str, &FeedbackRecord>,
    unit: Unit,
) -> Vec<f64> {
    match unit {
        Unit::Request => in_analysis
            .iter()
            .filter_map(|r| metric.value(r, feedback))
            .filter(|v| v.is_finite())
            .collect(),
        Unit::Window => {
            let mut windows: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
            for r in in_analysis {
                let (Some(w), Some(v)) = (r.window, metric.value(r, feedback)) else {
                    continue;
                };
                if v.is_finite() {
                    let slot = windows.entry(w).or_default();
                    *slot = (slot.0 + v, slot.1 + 1);
                }
            }
            windows.values().map(|(sum, n)| sum / *n as f64).collect()
        }
    }
}

/// Distinct windows among the in-analysis requests.
pub(super) fn window_count(in_analysis: &[&RequestRecord]) -> u64 {
    in_analysis
        .iter()
        .filter_map(|r| r.window)
        .collect::<BTreeSet<_>>()
        .len() as u64
}

/// An arm against the control (the first arm): `arm - control` for each metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmDifference {
    pub arm: String,
    pub control: String,
    pub unit: Unit,
    pub latency_ms: Option<Difference>,
    pub ttft_ms: Option<Difference>,
    pub error_rate: Option<Difference>,
    pub completion_tokens: Option<Difference>,
    pub feedback: Option<Difference>,
}

pub(super) fn difference(
    arm: (&str, &[&RequestRecord]),
    control: (&str, &[&RequestRecord]),
    feedback: &HashMap<&str, &FeedbackRecord>,
    unit: Unit,
) -> ArmDifference {
    let diff = |m| {
        welch(
            &observations(arm.1, m, feedback, unit),
            &observations(control.1, m, feedback, unit),
        )
    };
    ArmDifference {
        arm: arm.0.to_string(),
        control: control.0.to_string(),
        unit,
        latency_ms: diff(Metric::Latency),
        ttft_ms: diff(Metric::Ttft),
        error_rate: diff(Metric::Error),
        completion_tokens: diff(Metric::CompletionTokens),
        feedback: diff(Metric::Feedback),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::testutil::request;

    fn windowed(id: u64, window: u64, latency: f64) -> RequestRecord {
        RequestRecord {
            policy: "switchback".into(),
            window: Some(window),
            ..request("e", "a", id, latency)
        }
    }

    #[test]
    fn window_means_are_the_switchback_observations() {
        let reqs = [
            windowed(1, 0, 10.0),
            windowed(2, 0, 20.0),
            windowed(3, 2, 40.0),
            RequestRecord {
                status: "error".into(),
                ..windowed(4, 2, 1000.0)
            },
            RequestRecord {
                window: None,
                ..windowed(5, 9, 99.0)
            },
        ];
        let refs: Vec<&RequestRecord> = reqs.iter().collect();
        let none = HashMap::new();
        assert_eq!(
            observations(&refs, Metric::Latency, &none, Unit::Window),
            [15.0, 40.0]
        );
        assert_eq!(
            observations(&refs, Metric::Error, &none, Unit::Window),
            [0.0, 0.5]
        );
        assert_eq!(
            observations(&refs, Metric::Latency, &none, Unit::Request),
            [10.0, 20.0, 40.0, 99.0]
        );
        assert_eq!(window_count(&refs), 2);
    }

    #[test]
    fn the_latest_feedback_wins() {
        let fb = |ts, id: &str, value| FeedbackRecord {
            ts_ms: ts,
            request_id: id.into(),
            value,
            label: None,
        };
        let all = [
            fb(5, "r1", 1.0),
            fb(3, "r1", 0.0),
            fb(7, "r2", 2.0),
            fb(9, "r1", 4.0),
            fb(1, "r3", f64::NAN),
            fb(7, "r2", 1.0),
        ];
        let latest = latest_feedback(&all);
        assert_eq!(latest.len(), 2);
        assert_eq!((latest["r1"].value, latest["r2"].value), (4.0, 2.0));
    }
}
