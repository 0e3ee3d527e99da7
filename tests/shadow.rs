//! Shadow scoring from outside: `POST /v1/shadow/score` against the legacy endpoint's echo +
//! logprobs teacher forcing (the tiny f32 model, to 1e-4), its shapes and refusals; the live
//! `ShadowQueue` in `live`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use loraplex_gateway::{app, AppState, GatewayConfig};
use loraplex_runtime::EngineConfig;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::util::{golden_json, ids, tiny_arc, tiny_registry};

mod live;

const TOL: f64 = 1e-4;

fn state() -> AppState {
    let lm = tiny_arc();
    let engine =
        loraplex_runtime::start(lm.clone(), tiny_registry(), EngineConfig::default()).unwrap();
    let cfg = GatewayConfig {
        served_model_name: "tiny".into(),
        max_model_len: 512,
        ..Default::default()
    };
    AppState::new(cfg, engine, lm, None)
}

async fn post(st: &AppState, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn prompt_ids(i: usize) -> Vec<u32> {
    ids(&golden_json("tiny_cases.json")["cases"][i]["input_ids"])
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(a: &Value, b: &Value) -> bool {
    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < TOL
}

/// Perplexities and their ratios are exponentials of means: compared relatively.
fn close_rel(a: &Value, b: &Value) -> bool {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    (a - b).abs() < TOL * b.abs().max(1.0)
}

/// `/v1/completions` with echo + logprobs over prompt ++ completion: the completion's part.
async fn echoed(st: &AppState, model: &str, prompt: &[u32], completion: &[u32]) -> Value {
    let all: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let body = json!({"model": model, "prompt": all, "max_tokens": 0, "echo": true, "logprobs": 3});
    let (s, v) = post(st, "/v1/completions", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let from = prompt.len();
    json!({
        "token_logprobs": lp["token_logprobs"].as_array().unwrap()[from..].to_vec(),
        "top_logprobs": lp["top_logprobs"].as_array().unwrap()[from..].to_vec(),
    })
}

#[tokio::test]
async fn scores_equal_completions_echo_logprobs_under_the_base_and_an_adapter() {
    let st = state();
    let prompt = prompt_ids(1);
    let completion = prompt_ids(2)[..7].to_vec();
    let body = json!({"models": ["tiny", "b-r16-all"], "prompt": prompt, "completion": completion, "top_logprobs": 3});
    let (s, v) = post(&st, "/v1/shadow/score", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "shadow.score");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, model) in results.iter().zip(["tiny", "b-r16-all"]) {
        assert_eq!(r["model"], model);
        assert_eq!(r["completion_index"], 0);
        assert_eq!(ids(&r["token_ids"]), completion);
        assert_eq!(r["tokens"].as_array().unwrap().len(), completion.len());
        let want = echoed(&st, model, &prompt, &completion).await;
        let (got, exp) = (f64s(&r["token_logprobs"]), f64s(&want["token_logprobs"]));
        assert_eq!(got.len(), exp.len());
        for (g, e) in got.iter().zip(&exp) {
            assert!((g - e).abs() < TOL, "{model}: {g} vs {e}");
        }
        for (g, e) in r["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want["top_logprobs"].as_array().unwrap())
        {
            let (g, e) = (g.as_object().unwrap(), e.as_object().unwrap());
            assert_eq!(g.len(), 3);
            assert_eq!(g.keys().collect::<Vec<_>>(), e.keys().collect::<Vec<_>>());
            assert!(g.iter().all(|(k, x)| close(x, &e[k])));
        }
        // The summaries are those of the returned numbers.
        let mean = got.iter().sum::<f64>() / got.len() as f64;
        assert!((r["mean_logprob"].as_f64().unwrap() - mean).abs() < 1e-6);
        assert!(close_rel(&r["perplexity"], &json!((-mean).exp())));
        let top1 = r["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&got)
            .filter(|(m, &lp)| {
                let best = m.as_object().unwrap().values().map(|x| x.as_f64().unwrap());
                lp >= best.fold(f64::NEG_INFINITY, f64::max) - 1e-6
            })
            .count() as f64
            / got.len() as f64;
        assert!((r["top1_agreement"].as_f64().unwrap() - top1).abs() < 1e-9);
        assert!(r.get("ppl_ratio").is_none() && r.get("kl").is_none(), "{r}");
    }
}

#[tokio::test]
async fn text_and_messages_score_what_they_tokenize_to() {
    let st = state();
    let tok = &st.model.tokenizer;
    let prompt = tok.encode("The capital of France is", true).unwrap();
    let completion = tok.encode(" Paris, of course.", false).unwrap();
    let body = json!({"models": ["a-r8-qv"], "prompt": "The capital of France is", "completion": [" Paris, of course.", " Lyon"]});
    let (s, v) = post(&st, "/v1/shadow/score", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = &v["results"];
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(ids(&r[0]["token_ids"]), completion);
    assert_eq!(r[1]["completion_index"], 1);
    assert!(r[0].get("top_logprobs").is_none());
    let want = echoed(&st, "a-r8-qv", &prompt, &completion).await;
    for (g, e) in f64s(&r[0]["token_logprobs"])
        .iter()
        .zip(f64s(&want["token_logprobs"]))
    {
        assert!((g - e).abs() < TOL, "{g} vs {e}");
    }
    // Messages: the chat template with the assistant's turn opened, as chat completions do.
    let msgs = json!([{"role": "user", "content": "Hello there"}]);
    let rendered = st
        .model
        .render_chat(
            &[loraplex_models::ChatMessage::new("user", "Hello there")],
            None,
            true,
        )
        .unwrap();
    let chat_prompt = tok.encode(&rendered, false).unwrap();
    let (s, by_msgs) = post(
        &st,
        "/v1/shadow/score",
        json!({"models": ["tiny"], "messages": msgs, "completion": completion}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{by_msgs}");
    let (_, by_ids) = post(
        &st,
        "/v1/shadow/score",
        json!({"models": ["tiny"], "prompt": chat_prompt, "completion": completion}),
    )
    .await;
    assert_eq!(
        by_msgs["results"][0]["token_logprobs"],
        by_ids["results"][0]["token_logprobs"]
    );
}

#[tokio::test]
async fn a_reference_gives_ratios_and_kl() {
    let st = state();
    let prompt = prompt_ids(4);
    let completion = prompt_ids(3)[1..9].to_vec();
    let body = json!({"models": ["a-r8-qv", "tiny"], "prompt": prompt, "completion": [completion.clone(), completion[..3].to_vec()], "reference": "tiny"});
    let (s, v) = post(&st, "/v1/shadow/score", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["reference"], "tiny");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(
        (&r[2]["model"], &r[3]["completion_index"]),
        (&json!("tiny"), &json!(1))
    );
    // Against itself: ratio 1, KL 0.
    assert!((r[2]["ppl_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert!(r[2]["kl"].as_f64().unwrap().abs() < 1e-9);
    for (ad, base) in [(&r[0], &r[2]), (&r[1], &r[3])] {
        let ratio = ad["perplexity"].as_f64().unwrap() / base["perplexity"].as_f64().unwrap();
        assert!((ad["ppl_ratio"].as_f64().unwrap() - ratio).abs() < 1e-6 * ratio);
        assert!(ad["kl"].as_f64().unwrap() > 0.0, "{ad}");
    }
    // A reference outside `models` is scored but not reported.
    let body = json!({"models": ["a-r8-qv"], "prompt": prompt, "completion": completion, "reference": "tiny"});
    let (s, v2) = post(&st, "/v1/shadow/score", body).await;
    assert_eq!(s, StatusCode::OK, "{v2}");
    assert_eq!(v2["results"].as_array().unwrap().len(), 1);
    assert!(close(&v2["results"][0]["kl"], &r[0]["kl"]));
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field() {
    let st = state();
    let p = prompt_ids(1);
    let ok = json!({"models": ["tiny"], "prompt": p, "completion": [5, 6]});
    let many: Vec<String> = (0..17).map(|i| format!("m{i}")).collect();
    let long: Vec<u32> = prompt_ids(5).repeat(3)[..511].to_vec();
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (json!({"models": []}), StatusCode::BAD_REQUEST, "models"),
        (json!({"models": many}), StatusCode::BAD_REQUEST, "models"),
        (
            json!({"models": ["tiny", "tiny"]}),
            StatusCode::BAD_REQUEST,
            "models",
        ),
        (json!({"models": ["nope"]}), StatusCode::NOT_FOUND, "model"),
        (json!({"reference": "nope"}), StatusCode::NOT_FOUND, "model"),
        (
            json!({"completion": ""}),
            StatusCode::BAD_REQUEST,
            "completion",
        ),
        (
            json!({"completion": []}),
            StatusCode::BAD_REQUEST,
            "completion",
        ),
        (
            json!({"completion": [[5], []]}),
            StatusCode::BAD_REQUEST,
            "completion",
        ),
        (
            json!({"completion": [49152]}),
            StatusCode::BAD_REQUEST,
            "completion",
        ),
        (
            json!({"completion": null}),
            StatusCode::BAD_REQUEST,
            "completion",
        ),
        (json!({"prompt": null}), StatusCode::BAD_REQUEST, "prompt"),
        (json!({"prompt": []}), StatusCode::BAD_REQUEST, "prompt"),
        (
            json!({"prompt": ["a", "b"]}),
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            json!({"prompt": null, "messages": []}),
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (
            json!({"top_logprobs": 21}),
            StatusCode::BAD_REQUEST,
            "top_logprobs",
        ),
        (
            json!({"top_logprobs": -1}),
            StatusCode::BAD_REQUEST,
            "top_logprobs",
        ),
        (json!({"prompt": long}), StatusCode::BAD_REQUEST, "messages"),
    ];
    for (patch, status, param) in cases {
        let mut b = ok.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        let (s, v) = post(&st, "/v1/shadow/score", b.clone()).await;
        assert_eq!(s, status, "{b}: {v}");
        assert_eq!(v["error"]["param"], param, "{b}: {v}");
        if param == "messages" && b["prompt"].is_array() {
            assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
        }
    }
    let (s, _) = post(&st, "/v1/shadow/score", ok).await;
    assert_eq!(s, StatusCode::OK);
}
