//! Structured outputs over HTTP: every kind of refusal of `response_format`, `structured_outputs`
//! and `guided_*` on both endpoints (400, the envelope, the exact `param`), wrong methods (405
//! with `Allow`), and constrained answers that match their constraint, streamed or not, on the
//! base and an adapter. The tiny model's weights are random: whatever it says under a constraint
//! is the constraint's doing.

use axum::http::StatusCode;
use loraplex_gateway::AppState;
use serde_json::{json, Value};

use crate::gateway::{assert_error, call, chat_body, state};
use crate::util::{post_text, sse_data};

fn completion_body() -> Value {
    json!({"model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0})
}

fn with(mut body: Value, patch: &Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn json_schema(schema: Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}})
}

#[tokio::test]
async fn malformed_constraints_are_400_naming_the_field_on_both_endpoints() {
    let st = state();
    // (patch, param, a word the message must say)
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"response_format": "json"}),
            "response_format",
            "object",
        ),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format.type",
            "xml",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
            "response_format.json_schema.name",
            "required",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format.json_schema.schema",
            "required",
        ),
        (
            json!({"structured_outputs": {"regexp": "a"}}),
            "structured_outputs.regexp",
            "regex",
        ),
        (
            json!({"structured_outputs": {}}),
            "structured_outputs",
            "one of",
        ),
        (json!({"guided_json": "{not json"}), "guided_json", "JSON"),
        (
            json!({"guided_choice": ["a", 1]}),
            "guided_choice[1]",
            "string",
        ),
        (
            json!({"guided_regex": "a", "guided_choice": ["a"]}),
            "guided_choice",
            "guided_regex",
        ),
        (
            json!({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}),
            "structured_outputs",
            "response_format",
        ),
        // Well-formed requests whose constraint does not compile: the engine's reason, our field.
        (
            json!({"response_format": json_schema(json!({"type": "array", "uniqueItems": true}))}),
            "response_format.json_schema.schema",
            "uniqueItems",
        ),
        (
            json!({"structured_outputs": {"json": {"type": "nonsense"}}}),
            "structured_outputs.json",
            "nonsense",
        ),
        (
            json!({"guided_regex": "(unclosed"}),
            "guided_regex",
            "guided_regex",
        ),
        (
            json!({"guided_grammar": "start: ???"}),
            "guided_grammar",
            "guided_grammar",
        ),
    ];
    for (patch, param, says) in cases {
        for (uri, body) in [
            ("/v1/chat/completions", chat_body("tiny")),
            ("/v1/completions", completion_body()),
        ] {
            let (s, v, _) = call(&st, "POST", uri, Some(with(body, &patch)), &[]).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{uri} {patch}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            assert_error(&v, Some(param));
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(
                msg.contains(says),
                "{uri} {patch}: {msg:?} does not say {says:?}"
            );
        }
    }
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow_and_the_error_envelope() {
    let st = state();
    let cases = [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("GET", "/v1/feedback", "POST"),
        ("POST", "/v1/models", "GET,HEAD"),
        ("DELETE", "/v1/models/tiny", "GET,HEAD"),
        ("POST", "/health", "GET,HEAD"),
        // Served by two routers (uploads and the admin list): both methods are allowed.
        ("PUT", "/v1/adapters", "GET,HEAD,POST"),
    ];
    for (method, uri, allow) in cases {
        let (s, v, h) = call(&st, method, uri, None, &[]).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}: {v}");
        let mut got: Vec<&str> = h["allow"].to_str().unwrap().split(',').collect();
        got.sort_unstable();
        assert_eq!(got.join(","), allow, "{method} {uri}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
        assert!(v["error"]["param"].is_null(), "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(method) && msg.contains(uri), "{msg}");
        assert!(h.contains_key("x-request-id"));
    }
    // The right methods still answer.
    let (s, _, _) = call(&st, "GET", "/v1/models", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
}

/// `{"n": 0..=99, "color": "red"|"green"|"blue", "ok": bool}`, nothing else.
fn reading_schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["n", "color", "ok"],
        "properties": {
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
            "color": {"enum": ["red", "green", "blue"]},
            "ok": {"type": "boolean"}}})
}

fn assert_reading(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let o = v.as_object().unwrap_or_else(|| panic!("{text:?}"));
    assert_eq!(o.len(), 3, "{text:?}");
    assert!(v["n"].as_u64().is_some_and(|n| n <= 99), "{text:?}");
    assert!(
        ["red", "green", "blue"].contains(&v["color"].as_str().unwrap()),
        "{text:?}"
    );
    assert!(v["ok"].is_boolean(), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_schema_answer_matches_its_schema_on_the_base_and_an_adapter() {
    let st = state();
    let forms = [
        json!({"response_format": json_schema(reading_schema())}),
        json!({"structured_outputs": {"json": reading_schema().to_string()}}),
        json!({"guided_json": reading_schema()}),
    ];
    for model in ["tiny", "a-r8-qv"] {
        for form in &forms {
            let body = json!({"model": model, "max_tokens": 96, "n": 2, "temperature": 1.0,
                "seed": 11, "messages": [{"role": "user", "content": "Give me a reading."}]});
            let (s, v, _) = call(
                &st,
                "POST",
                "/v1/chat/completions",
                Some(with(body, form)),
                &[],
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{model} {form}: {v}");
            for c in v["choices"].as_array().unwrap() {
                assert_eq!(c["finish_reason"], "stop", "{model} {form}: {c}");
                assert_reading(c["message"]["content"].as_str().unwrap());
            }
        }
    }
}

#[tokio::test]
async fn json_object_mode_wins_over_a_bias_towards_invalid_json() {
    let st = state();
    let close = st.model.tokenizer.encode("}", false).unwrap();
    assert_eq!(close.len(), 1);
    let mut body = chat_body("tiny");
    body["max_tokens"] = json!(32);
    body["logit_bias"] = json!({ close[0].to_string(): 100 });
    // Unconstrained, the bias makes the answer start with a closing brace.
    let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(body.clone()), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let free = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(free.starts_with('}'), "{free:?}");
    body["response_format"] = json!({"type": "json_object"});
    let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(body), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(parsed.is_object(), "{text:?}");
}

fn matches_code(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 6
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'-'
        && b[4..].iter().all(u8::is_ascii_lowercase)
}

#[tokio::test]
async fn regex_constrained_completions_match_on_both_endpoints() {
    let st = state();
    let regex = "[0-9]{3}-[a-z]{2}";
    let completion = json!({"model": "tiny", "prompt": "Code:", "max_tokens": 24, "n": 3,
        "temperature": 1.0, "seed": 2, "guided_regex": regex});
    let (s, v, _) = call(&st, "POST", "/v1/completions", Some(completion), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for c in v["choices"].as_array().unwrap() {
        assert_eq!(c["finish_reason"], "stop", "{c}");
        assert!(matches_code(c["text"].as_str().unwrap()), "{c}");
    }
    let chat = with(
        chat_body("b-r16-all"),
        &json!({"max_tokens": 24, "structured_outputs": {"regex": regex}}),
    );
    let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(chat), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(matches_code(text), "{text:?}");
}

/// A streamed chat's concatenated content and its finish reason.
async fn stream_chat(st: &AppState, body: Value) -> (String, String) {
    let (status, body) = post_text(st, "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    let (mut text, mut finish) = (String::new(), String::new());
    for data in sse_data(&body).filter(|d| *d != "[DONE]") {
        let chunk: Value = serde_json::from_str(data).unwrap();
        let choice = &chunk["choices"][0];
        text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish)
}

#[tokio::test]
async fn a_streamed_choice_is_one_of_the_choices() {
    let st = state();
    let choices = ["yes", "no", "maybe later"];
    for (i, form) in [
        json!({"structured_outputs": {"choice": choices}}),
        json!({"guided_choice": choices}),
    ]
    .iter()
    .enumerate()
    {
        let body = with(
            chat_body("tiny"),
            &with(
                json!({"stream": true, "max_tokens": 16, "temperature": 1.0, "seed": i}),
                form,
            ),
        );
        let (text, finish) = stream_chat(&st, body).await;
        assert!(choices.contains(&text.as_str()), "{form}: {text:?}");
        assert_eq!(finish, "stop", "{form}");
    }
}
