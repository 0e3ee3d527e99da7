//! The arms over time: requests bucketed by a round width (at most 60 buckets over the records'
//! span), per arm. Buckets count every request (in analysis or not): the timeline shows what
//! was served; the estimates are in the report.

use std::collections::BTreeMap;

use serde::Serialize;

use super::schema::RequestRecord;

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
        return Timeline {
            bucket_ms: 1000,
            points: Vec::new(),
        };
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
        let cell = cells
            .entry((r.ts_ms / bucket_ms * bucket_ms, arm))
            .or_default();
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
        .map(
            |((start_ms, arm), (requests, errors, sum, ok))| TimelinePoint {
                start_ms,
                arm: arms[arm].clone(),
                requests,
                errors,
                mean_latency_ms: (ok > 0).then(|| sum / ok as f64),
            },
        )
        .collect();
    Timeline { bucket_ms, points }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::testutil::request;

    #[test]
    fn buckets_are_round_and_count_per_arm() {
        let mut reqs = vec![
            request("e", "a", 0, 10.0),
            request("e", "a", 1, 30.0),
            request("e", "b", 2, 5.0),
        ];
        reqs.push(RequestRecord {
            status: "error".into(),
            ..request("e", "b", 3, 1.0)
        });
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
}
