//! Requests on routes through the whole gateway: the arm's headers, a primary byte-identical
//! with and without shadows, live shadow scores equal to `/v1/shadow/score` on the same pair,
//! records and the report, a failing shadow counted and invisible, routed adapters kept.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use loraplex_gateway::records::{read_all, Recorder, RecorderConfig, ShadowRecord};
use loraplex_gateway::shadow::ShadowConfig;
use loraplex_gateway::{app, AppState, GatewayConfig};
use loraplex_runtime::EngineConfig;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::util::{golden_json, ids, post_text, sse_data, tiny_arc, tiny_registry};

fn state(records: &Path) -> AppState {
    let lm = tiny_arc();
    let engine =
        loraplex_runtime::start(lm.clone(), tiny_registry(), EngineConfig::default()).unwrap();
    let cfg = GatewayConfig {
        served_model_name: "tiny".into(),
        max_model_len: 512,
        ..Default::default()
    };
    AppState::new(cfg, engine, lm, None)
        .with_recorder(Recorder::start(RecorderConfig::new(records)))
        .with_shadow_queue(ShadowConfig::default())
}

async fn call(
    st: &AppState,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
        .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    )
}

fn prompt() -> Vec<u32> {
    ids(&golden_json("tiny_cases.json")["cases"][3]["input_ids"])
}

fn completion_body(model: &str) -> Value {
    json!({"model": model, "prompt": prompt(), "max_tokens": 10, "temperature": 0.9,
           "seed": 11, "logprobs": 2, "return_tokens_as_token_ids": true, "user": "u1",
           "ignore_eos": true})
}

/// Shadow records of `request_id`, once `n` exist (they are written after the response).
async fn shadow_records(
    st: &AppState,
    dir: &Path,
    request_id: &str,
    n: usize,
) -> Vec<ShadowRecord> {
    for _ in 0..400 {
        st.recorder.flush().await;
        let recs: Vec<ShadowRecord> = read_all(dir)
            .unwrap()
            .shadows
            .into_iter()
            .filter(|r| r.request_id == request_id)
            .collect();
        if recs.len() >= n {
            return recs;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {n} shadow records for {request_id}");
}

fn token_ids(choice: &Value) -> Vec<u32> {
    choice["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t.as_str()
                .unwrap()
                .strip_prefix("token_id:")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_never_change_the_primary_and_score_as_the_endpoint_does() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let spec = json!({"name": "support", "type": "ab", "unit": "user",
        "arms": [{"name": "a", "model": "a-r8-qv", "weight": 50},
                 {"name": "b", "model": "b-r16-all", "weight": 50}],
        "shadows": [{"model": "c-r4-rslora"}, {"model": "tiny"}]});
    let (s, v, _) = call(&st, "POST", "/v1/experiments", Some(spec)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let (s, routed, h) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(completion_body("support")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{routed}");
    let arm = h["x-loraplex-arm"].to_str().unwrap().to_string();
    let model = h["x-loraplex-model"].to_str().unwrap().to_string();
    assert_eq!(h["x-loraplex-route"], "support");
    assert_eq!(model, if arm == "a" { "a-r8-qv" } else { "b-r16-all" });
    // The same user keeps the arm.
    for _ in 0..3 {
        let (_, _, h2) = call(
            &st,
            "POST",
            "/v1/completions",
            Some(completion_body("support")),
        )
        .await;
        assert_eq!(h2["x-loraplex-arm"].to_str().unwrap(), arm);
    }
    // The arm's adapter named directly (no route, no shadows): the same choices, byte for byte.
    let (s, direct, h) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(completion_body(&model)),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(h.get("x-loraplex-arm").is_none());
    assert_eq!(
        serde_json::to_string(&routed["choices"]).unwrap(),
        serde_json::to_string(&direct["choices"]).unwrap()
    );
    assert_eq!(routed["model"], "support");

    // Each shadow scored the served completion; the live score equals the endpoint's.
    let request_id = routed["id"].as_str().unwrap();
    let recs = shadow_records(&st, dir.path(), request_id, 2).await;
    let completion = token_ids(&routed["choices"][0]);
    for rec in &recs {
        assert_eq!(rec.status, "scored", "{rec:?}");
        assert_eq!(rec.arm, arm);
        assert_eq!(rec.tokens as usize, completion.len());
        let body =
            json!({"models": [rec.shadow_model], "prompt": prompt(), "completion": completion});
        let (s, v, _) = call(&st, "POST", "/v1/shadow/score", Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let r = &v["results"][0];
        assert!((r["mean_logprob"].as_f64().unwrap() - rec.mean_logprob.unwrap()).abs() < 1e-4);
        assert!((r["top1_agreement"].as_f64().unwrap() - rec.top1_agreement.unwrap()).abs() < 1e-9);
        assert!(rec.ppl_ratio.is_some() && rec.kl.is_some(), "{rec:?}");
    }
    // A route arm is a model name for the endpoint too.
    let body =
        json!({"models": [format!("support:{arm}")], "prompt": prompt(), "completion": completion});
    let (s, v, _) = call(&st, "POST", "/v1/shadow/score", Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The report counts what the records hold, once every shadow of the 4 requests is done.
    let queue = st.shadows.clone().unwrap();
    for _ in 0..400 {
        let c = queue.counts();
        if c.scored + c.failed + c.dropped >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (s, rep, _) = call(&st, "GET", "/v1/experiments/support/report", None).await;
    assert_eq!(s, StatusCode::OK, "{rep}");
    let arms = rep["arms"].as_array().unwrap();
    let served = arms.iter().find(|a| a["name"] == arm.as_str()).unwrap();
    assert_eq!(served["requests"], 4);
    let scored: u64 = rep["shadows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scored"].as_u64().unwrap())
        .sum();
    assert_eq!(scored, 8, "{rep}");
    let records = read_all(dir.path()).unwrap();
    assert_eq!(records.requests.iter().filter(|r| r.arm == arm).count(), 4);
    assert!(records
        .requests
        .iter()
        .all(|r| r.unit_hash.as_deref().is_some_and(|h| !h.contains("u1"))));

    // Adapters a live route uses stay.
    for name in ["a-r8-qv", "c-r4-rslora"] {
        let (s, v, _) = call(&st, "DELETE", &format!("/v1/adapters/{name}"), None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("support"));
    }
    // /v1/models lists the route; once stopped, the name is unknown.
    let (_, models, _) = call(&st, "GET", "/v1/models", None).await;
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "support"));
    let (s, _, _) = call(&st, "DELETE", "/v1/experiments/support", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(completion_body("support")),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    st.engine.shutdown();
}

/// A streamed chat's events with the fields that differ between any two requests (id, created)
/// and the model name the client sent removed.
async fn chat_stream(st: &AppState, model: &str) -> Vec<Value> {
    let body = json!({"model": model, "stream": true, "max_tokens": 12, "temperature": 0.8,
        "seed": 5, "user": "u7", "ignore_eos": true,
        "messages": [{"role": "user", "content": "Say something."}]});
    let (status, text) = post_text(st, "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    sse_data(&text)
        .map(|d| {
            let mut v: Value = serde_json::from_str(d).unwrap_or(json!(d));
            if let Some(m) = v.as_object_mut() {
                for k in ["id", "created", "model"] {
                    m.remove(k);
                }
            }
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_primary_is_the_same_with_and_without_shadows() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let spec = json!({"name": "r", "type": "single", "arms": [{"name": "main", "model": "a-r8-qv", "weight": 1}],
        "shadows": [{"model": "c-r4-rslora"}, {"model": "b-r16-all", "mode": "generate"}]});
    let (s, v, _) = call(&st, "POST", "/v1/experiments", Some(spec)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let direct = chat_stream(&st, "a-r8-qv").await;
    let routed = chat_stream(&st, "r").await;
    assert!(direct.len() > 3);
    assert_eq!(routed, direct);
    st.engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_is_counted_and_the_primary_never_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let spec = json!({"name": "r", "type": "single", "arms": [{"name": "main", "model": "a-r8-qv", "weight": 1}],
        "shadows": [{"model": "c-r4-rslora"}]});
    let (s, v, _) = call(&st, "POST", "/v1/experiments", Some(spec)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, direct, _) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(completion_body("a-r8-qv")),
    )
    .await;
    // The shadow's adapter disappears behind the route's back (another replica deleted it).
    st.engine.registry().remove("c-r4-rslora");
    let (s, routed, _) = call(&st, "POST", "/v1/completions", Some(completion_body("r"))).await;
    assert_eq!(s, StatusCode::OK, "{routed}");
    assert_eq!(routed["choices"], direct["choices"]);
    let recs = shadow_records(&st, dir.path(), routed["id"].as_str().unwrap(), 1).await;
    assert_eq!(recs[0].status, "failed", "{recs:?}");
    assert_eq!(st.shadows.as_ref().unwrap().counts().failed, 1);
    st.engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_recorded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let (s, v, _) = call(
        &st,
        "POST",
        "/v1/feedback",
        Some(json!({"request_id": "cmpl-1", "value": 1.0, "label": "thumbs_up"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "recorded");
    for bad in [
        json!({"request_id": "", "value": 1}),
        json!({"request_id": "x"}),
        json!({"request_id": "x", "value": "high"}),
    ] {
        let (s, v, _) = call(&st, "POST", "/v1/feedback", Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    st.recorder.flush().await;
    let fb = read_all(dir.path()).unwrap().feedback;
    assert_eq!(fb.len(), 1);
    assert_eq!((fb[0].request_id.as_str(), fb[0].value), ("cmpl-1", 1.0));
    st.engine.shutdown();
}
