//! Shadow summaries: per shadow model (and per primary arm), how many primaries it scored,
//! failed on or dropped, and the means of its scores with 95% t-intervals over scored records.
//! `logprob_delta` is the paired comparison a promotion decision wants: per response, the
//! shadow's mean logprob minus the primary's own on the same tokens (> 0: the shadow finds the
//! served answers more likely than the model that wrote them).

use serde::Serialize;

use super::schema::ShadowRecord;
use super::stats::{mean_interval, MeanInterval};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowReport {
    pub model: String,
    /// Shadow records of any status.
    pub records: u64,
    pub scored: u64,
    pub failed: u64,
    /// Dropped before scoring (queue full): the primary was served, the shadow never saw it.
    pub dropped: u64,
    /// scored / the experiment's requests.
    pub coverage: Option<f64>,
    /// Served tokens scored.
    pub tokens: u64,
    #[serde(flatten)]
    pub scores: Scores,
    pub by_arm: Vec<ShadowArm>,
}

/// Means over the scored records that carry each value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    pub mean_logprob: Option<MeanInterval>,
    pub perplexity: Option<MeanInterval>,
    pub primary_mean_logprob: Option<MeanInterval>,
    pub logprob_delta: Option<MeanInterval>,
    pub ppl_ratio: Option<MeanInterval>,
    pub top1_agreement: Option<MeanInterval>,
    pub kl: Option<MeanInterval>,
    /// Generate mode: share of exact matches, token edit distance, the shadow's own latency.
    pub exact_match: Option<MeanInterval>,
    pub edit_distance: Option<MeanInterval>,
    pub shadow_completion_tokens: Option<MeanInterval>,
    pub shadow_latency_ms: Option<MeanInterval>,
}

/// One shadow over the primaries one arm served.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowArm {
    pub arm: String,
    pub scored: u64,
    pub failed: u64,
    pub dropped: u64,
    #[serde(flatten)]
    pub scores: Scores,
}

fn scores(recs: &[&ShadowRecord]) -> Scores {
    let scored: Vec<&ShadowRecord> = recs
        .iter()
        .copied()
        .filter(|r| r.status == "scored")
        .collect();
    let of = |f: &dyn Fn(&ShadowRecord) -> Option<f64>| {
        mean_interval(&scored.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    Scores {
        mean_logprob: of(&|r| r.mean_logprob),
        perplexity: of(&|r| r.perplexity),
        primary_mean_logprob: of(&|r| r.primary_mean_logprob),
        logprob_delta: of(&|r| Some(r.mean_logprob? - r.primary_mean_logprob?)),
        ppl_ratio: of(&|r| r.ppl_ratio),
        top1_agreement: of(&|r| r.top1_agreement),
        kl: of(&|r| r.kl),
        exact_match: of(&|r| r.exact_match.map(|m| if m { 1.0 } else { 0.0 })),
        edit_distance: of(&|r| r.edit_distance.map(|d| d as f64)),
        shadow_completion_tokens: of(&|r| r.shadow_completion_tokens.map(|t| t as f64)),
        shadow_latency_ms: of(&|r| r.shadow_latency_ms),
    }
}

fn count(recs: &[&ShadowRecord], status: &str) -> u64 {
    recs.iter().filter(|r| r.status == status).count() as u64
}

/// `models`: the experiment's shadows, then any other model found in its records (a shadow
/// since removed), in first-seen order; `arms`: the arms in report order.
pub(super) fn shadow_reports(
    models: &[String],
    arms: &[String],
    records: &[&ShadowRecord],
    requests: u64,
) -> Vec<ShadowReport> {
    let mut order: Vec<&str> = models.iter().map(String::as_str).collect();
    for r in records {
        if !order.contains(&r.shadow_model.as_str()) {
            order.push(&r.shadow_model);
        }
    }
    order
        .into_iter()
        .map(|model| {
            let mine: Vec<&ShadowRecord> = records
                .iter()
                .copied()
                .filter(|r| r.shadow_model == model)
                .collect();
            let scored = count(&mine, "scored");
            let by_arm = arms
                .iter()
                .filter_map(|arm| {
                    let of_arm: Vec<&ShadowRecord> =
                        mine.iter().copied().filter(|r| &r.arm == arm).collect();
                    (!of_arm.is_empty()).then(|| ShadowArm {
                        arm: arm.clone(),
                        scored: count(&of_arm, "scored"),
                        failed: count(&of_arm, "failed"),
                        dropped: count(&of_arm, "dropped"),
                        scores: scores(&of_arm),
                    })
                })
                .collect();
            ShadowReport {
                model: model.to_string(),
                records: mine.len() as u64,
                scored,
                failed: count(&mine, "failed"),
                dropped: count(&mine, "dropped"),
                coverage: (requests > 0).then(|| scored as f64 / requests as f64),
                tokens: mine
                    .iter()
                    .filter(|r| r.status == "scored")
                    .map(|r| r.tokens)
                    .sum(),
                scores: scores(&mine),
                by_arm,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(model: &str, arm: &str, status: &str, lp: f64, primary: f64) -> ShadowRecord {
        ShadowRecord {
            arm: arm.into(),
            shadow_model: model.into(),
            mode: "score".into(),
            status: status.into(),
            tokens: 4,
            mean_logprob: (status == "scored").then_some(lp),
            primary_mean_logprob: (status == "scored").then_some(primary),
            ..ShadowRecord::default()
        }
    }

    #[test]
    fn counts_means_and_the_paired_delta() {
        let recs = [
            rec("v3", "a", "scored", -1.0, -1.5),
            rec("v3", "b", "scored", -2.0, -2.0),
            rec("v3", "a", "scored", -3.0, -2.0),
            rec("v3", "a", "dropped", 0.0, 0.0),
            rec("v3", "b", "failed", 0.0, 0.0),
            rec("old", "a", "scored", -9.0, -9.0),
        ];
        let refs: Vec<&ShadowRecord> = recs.iter().collect();
        let out = shadow_reports(
            &["v3".into(), "v4".into()],
            &["a".into(), "b".into()],
            &refs,
            6,
        );
        let names: Vec<&str> = out.iter().map(|s| s.model.as_str()).collect();
        assert_eq!(names, ["v3", "v4", "old"]);
        let v3 = &out[0];
        assert_eq!(
            (v3.records, v3.scored, v3.failed, v3.dropped, v3.tokens),
            (5, 3, 1, 1, 12)
        );
        assert_eq!(v3.coverage, Some(0.5));
        let lp = v3.scores.mean_logprob.unwrap();
        assert_eq!((lp.n, lp.mean), (3, -2.0));
        // Deltas 0.5, 0, -1: mean -1/6.
        assert!((v3.scores.logprob_delta.unwrap().mean + 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(v3.by_arm.len(), 2);
        assert_eq!((v3.by_arm[0].scored, v3.by_arm[0].dropped), (2, 1));
        assert_eq!(v3.by_arm[1].scores.mean_logprob.unwrap().mean, -2.0);
        assert_eq!((out[1].records, out[1].scores.mean_logprob), (0, None));
    }
}
