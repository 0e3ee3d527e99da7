//! Where live shadow outcomes go: one shadow record each (scored, failed or dropped, so that
//! coverage is a count, not a guess) and the per-route / per-shadow Prometheus series. The sink
//! runs on the shadow worker or, for drops, on the request's task: it only hands records to the
//! recorder's queue and bumps metrics, never waits.

use std::sync::Arc;

use loraplex_runtime::EngineHandle;

use crate::records::{now_ms, Record, Recorder, ShadowRecord};
use crate::shadow::{ShadowOutcome, ShadowResult, ShadowSink};

/// The sink a [`crate::shadow::ShadowQueue`] reports to.
pub fn sink(recorder: Recorder, engine: EngineHandle) -> ShadowSink {
    Arc::new(move |o: ShadowOutcome| {
        let version = o
            .info
            .adapter
            .as_deref()
            .and_then(|a| engine.registry().get(a))
            .and_then(|s| s.store_version());
        let rec = record(&o, version);
        metrics::counter!("loraplex_shadow_jobs_total",
            "route" => rec.route.clone(), "shadow" => rec.shadow_model.clone(),
            "status" => rec.status.clone())
        .increment(1);
        if let Some(lp) = rec.mean_logprob {
            metrics::histogram!("loraplex_shadow_mean_logprob",
                "route" => rec.route.clone(), "shadow" => rec.shadow_model.clone())
            .record(-lp);
        }
        if let Some(a) = rec.top1_agreement {
            metrics::histogram!("loraplex_shadow_top1_agreement",
                "route" => rec.route.clone(), "shadow" => rec.shadow_model.clone())
            .record(a);
        }
        recorder.record(Record::Shadow(rec));
    })
}

/// The record of one outcome. The primary's own mean logprob follows from the ratio of
/// perplexities: `ppl_ratio = exp(primary_mean - shadow_mean)`.
pub fn record(o: &ShadowOutcome, shadow_adapter_version: Option<u64>) -> ShadowRecord {
    let i = &o.info;
    let mut rec = ShadowRecord {
        ts_ms: now_ms(),
        request_id: i.request_id.clone(),
        route: i.route.clone(),
        experiment_id: i.experiment_id.clone(),
        arm: i.arm.clone(),
        shadow_model: i.model.clone(),
        shadow_adapter_version,
        mode: i.mode.to_string(),
        ..Default::default()
    };
    match &o.result {
        ShadowResult::Scored { summary, generated } => {
            rec.status = "scored".into();
            rec.tokens = summary.scored_tokens as u64;
            rec.mean_logprob = Some(summary.mean_logprob);
            rec.perplexity = Some(summary.perplexity);
            rec.top1_agreement = Some(summary.top1_agreement);
            rec.ppl_ratio = summary.ppl_ratio;
            rec.primary_mean_logprob = summary.ppl_ratio.map(|r| summary.mean_logprob + r.ln());
            rec.kl = summary.kl;
            if let Some(g) = generated {
                rec.exact_match = Some(g.comparison.exact_match);
                rec.edit_distance = Some(g.comparison.edit_distance as u64);
                rec.shadow_completion_tokens = Some(g.ids.len() as u64);
                rec.shadow_latency_ms = Some(g.latency.as_secs_f64() * 1e3);
            }
        }
        ShadowResult::Failed { reason } => {
            rec.status = "failed".into();
            rec.error = Some(reason.clone());
        }
        ShadowResult::Dropped => rec.status = "dropped".into(),
    }
    rec
}
