//! The HTTP contract through `app().oneshot(...)`: every error case, shapes of the responses.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use loraplex_gateway::{app, AppState, GatewayConfig};
use loraplex_runtime::{EngineConfig, GenerationParams, GenerationRequest, SchedulerConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::util::{golden, golden_json, ids, tiny_arc, tiny_registry};

fn state_with(cfg: GatewayConfig, engine_cfg: EngineConfig) -> AppState {
    let lm = tiny_arc();
    let engine = loraplex_runtime::start(lm.clone(), tiny_registry(), engine_cfg).unwrap();
    AppState::new(cfg, engine, lm, None)
}

pub(crate) fn state() -> AppState {
    state_with(
        GatewayConfig {
            served_model_name: "tiny".into(),
            max_model_len: 512,
            ..Default::default()
        },
        EngineConfig::default(),
    )
}

pub(crate) async fn call(
    st: &AppState,
    method: &str,
    uri: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut b = Request::builder().method(method).uri(uri);
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(
            body.map(|v| Body::from(v.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v, headers)
}

pub(crate) fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4, "temperature": 0})
}

pub(crate) fn assert_error(v: &Value, param: Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
}

#[tokio::test]
async fn chat_completion_has_the_openai_shape() {
    let st = state();
    let (s, v, h) = call(
        &st,
        "POST",
        "/v1/chat/completions",
        Some(chat_body("tiny")),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(h.contains_key("x-request-id"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + 4
    );
    // An adapter by name, and unknown fields ignored.
    let mut b = chat_body("a-r8-qv");
    b["some_vendor_field"] = json!(true);
    let (s, v2, _) = call(&st, "POST", "/v1/chat/completions", Some(b), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v2["model"], "a-r8-qv");
}

#[tokio::test]
async fn invalid_requests_get_400_naming_the_parameter() {
    let st = state();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"temperature": 3.0}), "temperature"),
        (json!({"top_p": 0.0}), "top_p"),
        (json!({"n": 0}), "n"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"presence_penalty": 5}), "presence_penalty"),
        (json!({"frequency_penalty": -3}), "frequency_penalty"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        // Finite as f64, infinite as the f32 the sampler keeps: refused by `Penalties`.
        (json!({"repetition_penalty": 1e39}), "repetition_penalty"),
        (json!({"logit_bias": {"abc": 1}}), "logit_bias"),
        (json!({"logit_bias": {"5": 1000}}), "logit_bias"),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 50}),
            "top_logprobs",
        ),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
    ];
    for (patch, param) in cases {
        let mut b = chat_body("tiny");
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(b), &[]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{param}: {v}");
        assert_error(&v, Some(param));
    }
}

#[tokio::test]
async fn malformed_bodies_and_content_types_are_400() {
    let st = state();
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "text/plain")
        .body(Body::from(chat_body("tiny").to_string()))
        .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (s, v, _) = call(
        &st,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "tiny"})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, None);
}

#[tokio::test]
async fn unknown_models_and_routes_are_404() {
    let st = state();
    let (s, v, _) = call(
        &st,
        "POST",
        "/v1/chat/completions",
        Some(chat_body("nope")),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, Some("model"));
    assert_eq!(v["error"]["code"], "model_not_found");
    let (s, _, _) = call(&st, "GET", "/v1/models/nope", None, &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v, _) = call(&st, "GET", "/v2/whatever", None, &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, None);
}

#[tokio::test]
async fn prompts_over_the_context_are_400() {
    let st = state();
    let mut b = chat_body("tiny");
    b["max_tokens"] = json!(600);
    let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(b), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (s, _, _) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(json!({"model": "tiny", "prompt": vec![5; 600]})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v, _) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(json!({"model": "tiny", "prompt": [5, 99999]})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, Some("prompt"));
}

#[tokio::test]
async fn api_key_is_required_when_set() {
    let st = state_with(
        GatewayConfig {
            served_model_name: "tiny".into(),
            api_key: Some("sekret".into()),
            max_model_len: 512,
            ..Default::default()
        },
        EngineConfig::default(),
    );
    let (s, v, _) = call(&st, "GET", "/v1/models", None, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["type"], "authentication_error");
    let (s, _, _) = call(
        &st,
        "GET",
        "/v1/models",
        None,
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = call(
        &st,
        "GET",
        "/v1/models",
        None,
        &[("authorization", "Bearer sekret")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(&st, "GET", "/health", None, &[]).await;
    assert_eq!(s, StatusCode::OK, "health needs no key");
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let st = state_with(
        GatewayConfig {
            served_model_name: "tiny".into(),
            max_model_len: 512,
            ..Default::default()
        },
        EngineConfig {
            scheduler: SchedulerConfig {
                max_running: 1,
                max_step_tokens: 16,
                max_waiting: 1,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    // Occupy the running slot and the one waiting slot.
    let params = GenerationParams {
        max_tokens: 300,
        ignore_eos: true,
        ..Default::default()
    };
    let _a = st
        .engine
        .submit(GenerationRequest::new(vec![5; 100], params.clone()))
        .unwrap();
    while st.engine.stats().running.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let _b = st
        .engine
        .submit(GenerationRequest::new(vec![5; 100], params))
        .unwrap();
    let (s, v, h) = call(
        &st,
        "POST",
        "/v1/chat/completions",
        Some(chat_body("tiny")),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(h.contains_key("retry-after"));
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn draining_refuses_new_requests_with_503() {
    let st = state();
    st.draining.store(true, Ordering::SeqCst);
    let (s, _, h) = call(
        &st,
        "POST",
        "/v1/chat/completions",
        Some(chat_body("tiny")),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    let (s, _, _) = call(&st, "GET", "/health", None, &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let st = state_with(
        GatewayConfig {
            served_model_name: "tiny".into(),
            max_model_len: 512,
            max_body_bytes: 1024,
            ..Default::default()
        },
        EngineConfig::default(),
    );
    let mut b = chat_body("tiny");
    b["messages"][0]["content"] = json!("x".repeat(5000));
    let (s, _, _) = call(&st, "POST", "/v1/chat/completions", Some(b), &[]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn models_lists_the_base_and_every_adapter() {
    let st = state();
    let (s, v, _) = call(&st, "GET", "/v1/models", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data[0]["id"], "tiny");
    assert!(data[0]["parent"].is_null());
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["tiny", "a-r8-qv", "b-r16-all", "c-r4-rslora"]);
    assert!(data[1..]
        .iter()
        .all(|m| m["parent"] == "tiny" && m["max_model_len"] == 512));
    let (s, v, _) = call(&st, "GET", "/v1/models/b-r16-all", None, &[]).await;
    assert_eq!((s, v["parent"].as_str()), (StatusCode::OK, Some("tiny")));
}

#[tokio::test]
async fn echo_with_logprobs_and_zero_tokens_scores_the_prompt() {
    let st = state();
    let case = &golden_json("tiny_cases.json")["cases"][2];
    let prompt = ids(&case["input_ids"]);
    let (s, v, _) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(json!({"model": "b-r16-all", "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 2})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let toks = lp["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), prompt.len());
    assert!(lp["token_logprobs"][0].is_null());
    let a = loraplex_adapters::load_dir(
        &golden().join("tiny-adapters/b-r16-all"),
        &loraplex_adapters::BaseModel::of(&st.model),
        &Default::default(),
    )
    .unwrap();
    let scored = loraplex_runtime::score(&st.model.model, Some(&a.weights), &prompt, 1, 2).unwrap();
    for (k, sc) in scored.iter().enumerate() {
        let got = lp["token_logprobs"][k + 1].as_f64().unwrap() as f32;
        assert!((got - sc.logprob.logprob).abs() < 1e-4);
        assert_eq!(lp["top_logprobs"][k + 1].as_object().unwrap().len(), 2);
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(
        v["choices"][0]["text"],
        st.model.tokenizer.decode(&prompt, false).unwrap()
    );
    assert_eq!(v["usage"]["completion_tokens"], 0);
}

/// The tiny model behind a tokenizer that refuses every sequence longer than 8 tokens: its
/// `tokenizer.json` truncates with `OnlySecond`, and a prompt never has a second sequence.
fn refusing_tokenizer_state() -> (AppState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let src = golden().join("tiny-llama");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        if name != "tokenizer.json" {
            std::os::unix::fs::symlink(&p, dir.path().join(name)).unwrap();
        }
    }
    let mut tok: Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer.json")).unwrap()).unwrap();
    tok["truncation"] = json!({"max_length": 8, "strategy": "OnlySecond", "stride": 0});
    std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
    let lm = std::sync::Arc::new(crate::util::load(
        dir.path().to_str().unwrap(),
        loraplex_models::WeightDtype::F32,
    ));
    assert!(lm
        .tokenizer
        .encode("one two three four five six seven eight nine", false)
        .is_err());
    let cfg = GatewayConfig {
        served_model_name: "tiny".into(),
        max_model_len: 512,
        ..Default::default()
    };
    let engine =
        loraplex_runtime::start(lm.clone(), tiny_registry(), EngineConfig::default()).unwrap();
    (AppState::new(cfg, engine, lm, None), dir)
}

#[tokio::test]
async fn a_prompt_the_tokenizer_refuses_is_the_clients_400() {
    let (st, _dir) = refusing_tokenizer_state();
    let short = json!({"model": "tiny", "prompt": "Hi", "max_tokens": 2, "temperature": 0});
    let (s, v, _) = call(&st, "POST", "/v1/completions", Some(short), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let long = "one two three four five six seven eight nine";
    let refused = [
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": long}),
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": ["Hi", long]}),
            "prompt",
        ),
        // The chat template's system prompt alone is longer than the tokenizer takes.
        ("/v1/chat/completions", chat_body("tiny"), "messages"),
    ];
    for (uri, body, param) in refused {
        let (s, v, _) = call(&st, "POST", uri, Some(body), &[]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_error(&v, Some(param));
    }
}
