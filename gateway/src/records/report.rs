//! An experiment's report from its records. Counts (`requests`, `errors`, tokens) cover every
//! record; estimates (error rate, TTFT/latency, feedback, differences) only in-analysis ones,
//! so a switchback's burn-in and a paused experiment's traffic are served and counted but never
//! analysed. Latency and TTFT describe successful requests. Deterministic: the same records give
//! the same report (no clock is read).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::compare::{
    difference, latest_feedback, observations, window_count, ArmDifference, Metric, Unit,
};
use super::read::Records;
use super::schema::{iso8601, FeedbackRecord, RequestRecord, ShadowRecord};
use super::shadow_report::{shadow_reports, ShadowReport};
use super::stats::{mean_interval, quantiles, MeanInterval, Quantiles};
use super::timeline::{timeline, Timeline};

/// What the report needs from the experiment's definition.
#[derive(Debug, Clone, Default)]
pub struct ExperimentInfo {
    pub name: String,
    pub experiment_id: String,
    /// "single" | "segmented" | "ab" | "switchback".
    pub policy: String,
    /// (arm name, model), the control first.
    pub arms: Vec<(String, String)>,
    /// Shadow models.
    pub shadows: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub name: String,
    pub experiment_id: String,
    pub policy: String,
    /// What one observation of the estimates is: a request, or (switchback) a window's mean.
    pub unit: Unit,
    pub requests: u64,
    pub in_analysis: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// Unparsable lines met while reading (all experiments').
    pub skipped_lines: u64,
    pub arms: Vec<ArmReport>,
    /// Each other arm against the first (the control).
    pub differences: Vec<ArmDifference>,
    pub shadows: Vec<ShadowReport>,
    pub timeline: Timeline,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmReport {
    pub name: String,
    pub model: String,
    pub requests: u64,
    pub in_analysis: u64,
    /// Served but not analysed (burn-in, paused).
    pub excluded: u64,
    pub errors: u64,
    /// Error codes over all requests.
    pub error_codes: BTreeMap<String, u64>,
    /// Errors among in-analysis requests, as a mean with its interval.
    pub error_rate: Option<MeanInterval>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Adapter versions that served the arm (several when it follows `current`).
    pub adapter_versions: Vec<u64>,
    /// Switchback: windows with in-analysis requests.
    pub windows: Option<u64>,
    pub ttft_ms: Option<Summary>,
    pub latency_ms: Option<Summary>,
    pub feedback: FeedbackSummary,
}

/// Per-request percentiles, and the mean with its 95% interval over the report's unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub quantiles: Quantiles,
    #[serde(flatten)]
    pub mean: MeanInterval,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackSummary {
    /// In-analysis requests with feedback (the latest value counts, once per request).
    pub count: u64,
    /// Over the report's unit (switchback: windows).
    pub mean: Option<MeanInterval>,
    /// Labels of the counted feedback.
    pub labels: BTreeMap<String, u64>,
}

/// The experiment's report; `records` may hold other experiments' records (filtered here).
pub fn report(info: &ExperimentInfo, records: &Records) -> Report {
    let reqs: Vec<&RequestRecord> = records
        .requests
        .iter()
        .filter(|r| r.experiment_id == info.experiment_id)
        .collect();
    let shadows: Vec<&ShadowRecord> = records
        .shadows
        .iter()
        .filter(|r| r.experiment_id == info.experiment_id)
        .collect();
    let feedback = latest_feedback(&records.feedback);
    let unit = Unit::for_policy(&info.policy);

    // The configured arms, then any arm only the records know (in first-seen order).
    let mut arms: Vec<(String, String)> = info.arms.clone();
    for r in &reqs {
        if !arms.iter().any(|(name, _)| name == &r.arm) {
            arms.push((r.arm.clone(), r.model.clone()));
        }
    }
    let by_arm: Vec<Vec<&RequestRecord>> = arms
        .iter()
        .map(|(name, _)| reqs.iter().copied().filter(|r| &r.arm == name).collect())
        .collect();
    let analysed: Vec<Vec<&RequestRecord>> = by_arm
        .iter()
        .map(|rs| rs.iter().copied().filter(|r| r.in_analysis).collect())
        .collect();

    let arm_reports = arms
        .iter()
        .zip(by_arm.iter().zip(&analysed))
        .map(|((name, model), (all, ana))| arm_report(name, model, all, ana, &feedback, unit))
        .collect();
    let differences = match arms.first() {
        Some((control, _)) => arms
            .iter()
            .zip(&analysed)
            .skip(1)
            .map(|((name, _), ana)| {
                difference((name, ana), (control, &analysed[0]), &feedback, unit)
            })
            .collect(),
        None => Vec::new(),
    };
    let arm_names: Vec<String> = arms.iter().map(|(n, _)| n.clone()).collect();
    Report {
        name: info.name.clone(),
        experiment_id: info.experiment_id.clone(),
        policy: info.policy.clone(),
        unit,
        requests: reqs.len() as u64,
        in_analysis: reqs.iter().filter(|r| r.in_analysis).count() as u64,
        first_ts: reqs.iter().map(|r| r.ts_ms).min().map(iso8601),
        last_ts: reqs.iter().map(|r| r.ts_ms).max().map(iso8601),
        skipped_lines: records.skipped_lines,
        arms: arm_reports,
        differences,
        shadows: shadow_reports(&info.shadows, &arm_names, &shadows, reqs.len() as u64),
        timeline: timeline(&arm_names, &reqs),
    }
}

fn arm_report(
    name: &str,
    model: &str,
    all: &[&RequestRecord],
    analysed: &[&RequestRecord],
    feedback: &HashMap<&str, &FeedbackRecord>,
    unit: Unit,
) -> ArmReport {
    let errors: Vec<&&RequestRecord> = all.iter().filter(|r| r.status != "ok").collect();
    let mut error_codes = BTreeMap::new();
    for r in &errors {
        let code = r.error.clone().unwrap_or_else(|| "unknown".into());
        *error_codes.entry(code).or_insert(0) += 1;
    }
    let mut adapter_versions: Vec<u64> = all.iter().filter_map(|r| r.adapter_version).collect();
    adapter_versions.sort_unstable();
    adapter_versions.dedup();
    let summary = |metric| {
        let per_request = observations(analysed, metric, feedback, Unit::Request);
        Some(Summary {
            quantiles: quantiles(&per_request)?,
            mean: mean_interval(&observations(analysed, metric, feedback, unit))?,
        })
    };
    let with_feedback: Vec<&FeedbackRecord> = analysed
        .iter()
        .filter_map(|r| feedback.get(r.request_id.as_str()).copied())
        .collect();
    let mut label_counts = BTreeMap::new();
    for label in with_feedback.iter().filter_map(|f| f.label.as_ref()) {
        *label_counts.entry(label.clone()).or_insert(0) += 1;
    }
    ArmReport {
        name: name.to_string(),
        model: model.to_string(),
        requests: all.len() as u64,
        in_analysis: analysed.len() as u64,
        excluded: (all.len() - analysed.len()) as u64,
        errors: errors.len() as u64,
        error_codes,
        error_rate: mean_interval(&observations(analysed, Metric::Error, feedback, unit)),
        prompt_tokens: all.iter().map(|r| r.prompt_tokens).sum(),
        completion_tokens: all.iter().map(|r| r.completion_tokens).sum(),
        adapter_versions,
        windows: (unit == Unit::Window).then(|| window_count(analysed)),
        ttft_ms: summary(Metric::Ttft),
        latency_ms: summary(Metric::Latency),
        feedback: FeedbackSummary {
            count: with_feedback.len() as u64,
            mean: mean_interval(&observations(analysed, Metric::Feedback, feedback, unit)),
            labels: label_counts,
        },
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
