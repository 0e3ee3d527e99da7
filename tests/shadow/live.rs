//! The live `ShadowQueue`: a scored job equals the endpoint's summaries on the same pair (the
//! primary's logprobs as it generated them, against the endpoint's reference); a shadow of a
//! deleted adapter is counted failed; a full queue drops and counts, never blocking.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use loraplex_gateway::shadow::{
    LiveMode, LiveShadowJob, ShadowConfig, ShadowOutcome, ShadowQueue, ShadowResult, KL_TOP_K,
};
use loraplex_gateway::AppState;
use loraplex_runtime::{GenerationParams, GenerationRequest, TokenEvent, TokenLogprob};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::{close, close_rel, post, prompt_ids, state};
use crate::util::golden;

/// The base model's greedy answer with the logprobs a primary captures for its shadows.
async fn primary(st: &AppState, prompt: &[u32]) -> (Vec<u32>, Vec<TokenLogprob>) {
    let params = GenerationParams {
        max_tokens: 6,
        ignore_eos: true,
        logprobs: Some(KL_TOP_K),
        ..Default::default()
    };
    let mut s = st
        .engine
        .submit(GenerationRequest::new(prompt.to_vec(), params))
        .unwrap();
    let (mut ids, mut lps) = (Vec::new(), Vec::new());
    while let Some(ev) = s.next().await {
        match ev {
            TokenEvent::Token { id, logprob, .. } => {
                ids.push(id);
                lps.push(logprob.unwrap());
            }
            TokenEvent::Finished { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    (ids, lps)
}

fn job(
    model: &str,
    prompt: &[u32],
    completion: &[u32],
    primary: Vec<TokenLogprob>,
) -> LiveShadowJob {
    LiveShadowJob {
        request_id: "req-1".into(),
        route: "support".into(),
        experiment_id: "exp-1".into(),
        arm: "a".into(),
        model: model.into(),
        adapter: (model != "tiny").then(|| model.to_string()),
        mode: LiveMode::Score,
        prompt: prompt.to_vec(),
        completion: completion.to_vec(),
        primary_logprobs: primary,
    }
}

fn queue(st: &AppState, cfg: ShadowConfig) -> (ShadowQueue, UnboundedReceiver<ShadowOutcome>) {
    let (tx, rx) = unbounded_channel();
    let sink = Arc::new(move |o: ShadowOutcome| {
        let _ = tx.send(o);
    });
    (ShadowQueue::start(st.engine.clone(), cfg, sink), rx)
}

async fn next(rx: &mut UnboundedReceiver<ShadowOutcome>) -> ShadowOutcome {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("an outcome in time")
        .expect("the sink is alive")
}

#[tokio::test]
async fn a_live_shadow_score_equals_the_endpoint_on_the_same_pair() {
    let st = state();
    let prompt = prompt_ids(2);
    let (served, lps) = primary(&st, &prompt).await;
    let (q, mut rx) = queue(&st, ShadowConfig::default());
    assert!(q.try_submit(job("b-r16-all", &prompt, &served, lps.clone())));
    let out = next(&mut rx).await;
    assert_eq!(
        (out.info.request_id.as_str(), out.info.arm.as_str()),
        ("req-1", "a")
    );
    assert_eq!(
        (out.info.model.as_str(), out.info.mode),
        ("b-r16-all", "score")
    );
    let ShadowResult::Scored { summary, generated } = out.result else {
        panic!("{:?}", out.result)
    };
    assert!(generated.is_none());
    let body = json!({"models": ["b-r16-all"], "prompt": prompt, "completion": served, "reference": "tiny"});
    let (s, v) = post(&st, "/v1/shadow/score", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = &v["results"][0];
    let live = serde_json::to_value(summary).unwrap();
    for k in ["mean_logprob", "top1_agreement", "kl"] {
        assert!(
            close(&live[k], &r[k]),
            "{k}: live {} vs endpoint {}",
            live[k],
            r[k]
        );
    }
    for k in ["perplexity", "ppl_ratio"] {
        assert!(
            close_rel(&live[k], &r[k]),
            "{k}: live {} vs endpoint {}",
            live[k],
            r[k]
        );
    }
    assert_eq!(live["scored_tokens"], served.len());
    assert_eq!(r["scored_tokens"], served.len());
    // Generate mode: the base shadowing itself answers the same, greedy.
    let mut g = job("tiny", &prompt, &served, lps);
    g.mode = LiveMode::Generate {
        params: GenerationParams {
            max_tokens: 6,
            ignore_eos: true,
            ..Default::default()
        },
        primary_latency: Duration::from_millis(5),
    };
    assert!(q.try_submit(g));
    let ShadowResult::Scored {
        summary,
        generated: Some(answer),
    } = next(&mut rx).await.result
    else {
        panic!("a generated answer")
    };
    assert_eq!(answer.ids, served);
    assert!(answer.comparison.exact_match && answer.comparison.edit_distance == 0);
    assert!(summary.kl.unwrap() < 1e-4 && (summary.ppl_ratio.unwrap() - 1.0).abs() < 1e-4);
    let c = q.counts();
    assert_eq!((c.scored, c.failed, c.dropped), (2, 0, 0));
}

#[tokio::test]
async fn a_shadow_of_a_deleted_adapter_is_counted_failed() {
    let st = state();
    let registry = st.engine.registry();
    let _ = registry.register("gone", golden().join("tiny-adapters/a-r8-qv"));
    registry.remove("gone");
    let (q, mut rx) = queue(&st, ShadowConfig::default());
    let prompt = prompt_ids(1);
    assert!(q.try_submit(job("gone", &prompt, &[5, 6, 7], Vec::new())));
    let out = next(&mut rx).await;
    match out.result {
        ShadowResult::Failed { reason } => assert!(reason.contains("gone"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let c = q.counts();
    assert_eq!((c.scored, c.failed, c.dropped), (0, 1, 0));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let st = state();
    let cfg = ShadowConfig {
        capacity: 1,
        concurrency: 1,
        ..Default::default()
    };
    let (q, mut rx) = queue(&st, cfg);
    let prompt = prompt_ids(1);
    // The worker cannot run between these (a current-thread runtime, no await): one place.
    let taken: Vec<bool> = (0..5)
        .map(|_| q.try_submit(job("a-r8-qv", &prompt, &[5, 6], Vec::new())))
        .collect();
    assert_eq!(taken, [true, false, false, false, false]);
    assert_eq!(q.counts().dropped, 4);
    assert_eq!(q.counts().queued, 1);
    for _ in 0..4 {
        assert!(matches!(next(&mut rx).await.result, ShadowResult::Dropped));
    }
    let last = next(&mut rx).await;
    assert!(
        matches!(last.result, ShadowResult::Scored { .. }),
        "{last:?}"
    );
    let c = q.counts();
    assert_eq!((c.scored, c.failed, c.dropped, c.queued), (1, 0, 4, 0));
}
