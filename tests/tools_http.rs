//! Tool calling over HTTP: every refusal of `tools`, `tool_choice`, `parallel_tool_calls` and
//! the messages (400, the envelope, the exact `param`) on the tiny model; on SmolLM2 (its
//! template has no tool support: the default rendering), `required` and named calls whose
//! arguments follow the function's schema, streamed calls in OpenAI's chunk format that
//! reassemble into the non-streamed answer, and a follow-up turn with a tool result.

use axum::http::StatusCode;
use loraplex_adapters::AdapterRegistry;
use loraplex_gateway::{AppState, GatewayConfig};
use loraplex_models::{ChatMessage, ToolCall, WeightDtype};
use loraplex_runtime::EngineConfig;
use serde_json::{json, Value};

use crate::gateway::{assert_error, call, chat_body, state};
use crate::util::{post_text, smollm2_arc, sse_data};

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city's name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}}})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"], "additionalProperties": false}}})
}

fn with(mut body: Value, patch: &Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn tool_and_message_refusals_name_the_field() {
    let st = state();
    let tools = json!([weather_tool()]);
    let user = json!({"role": "user", "content": "Weather?"});
    let call_a = json!({"id": "call_a", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}});
    let asst = json!({"role": "assistant", "content": null, "tool_calls": [call_a]});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"tools": {"type": "function"}}), "tools"),
        (json!({"tools": []}), "tools"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "get weather"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [weather_tool(), {"type": "function"}]}),
            "tools[1].function",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": tools, "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
            "tool_choice.function.name",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": tools, "parallel_tool_calls": 1}),
            "parallel_tool_calls",
        ),
        (
            json!({"messages": [{"role": "user"}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "system", "content": 42}, user]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "name": ["ann"]}]}),
            "messages[0].name",
        ),
        (
            json!({"messages": [user, asst, {"role": "tool", "content": "sunny"}]}),
            "messages[2].tool_call_id",
        ),
        (
            json!({"messages": [user, asst, {"role": "tool", "content": "sunny", "tool_call_id": "call_b"}]}),
            "messages[2].tool_call_id",
        ),
        (
            json!({"messages": [user, {"role": "tool", "content": "sunny", "tool_call_id": "call_a"}]}),
            "messages[1].role",
        ),
        (
            json!({"messages": [user, {"role": "assistant", "content": null}]}),
            "messages[1].content",
        ),
        (
            json!({"messages": [user, {"role": "assistant", "tool_calls": [{"id": "call_a", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}]}),
            "messages[1].tool_calls[0].function.arguments",
        ),
    ];
    for (patch, param) in cases {
        let b = with(chat_body("tiny"), &patch);
        let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(b), &[]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{param}: {v}");
        assert_error(&v, Some(param));
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    // A whole tool conversation is accepted, `none` leaves the output free.
    let b = with(
        chat_body("tiny"),
        &json!({"tools": tools, "tool_choice": "none", "messages": [user, asst,
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"}]}),
    );
    let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(b), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
}

fn smollm2_state() -> AppState {
    let lm = smollm2_arc(WeightDtype::Auto);
    let engine =
        loraplex_runtime::start(lm.clone(), AdapterRegistry::new(), EngineConfig::default())
            .unwrap();
    let cfg = GatewayConfig {
        served_model_name: "smollm2".into(),
        ..Default::default()
    };
    AppState::new(cfg, engine, lm, None)
}

fn weather_request() -> Value {
    json!({"model": "smollm2", "temperature": 0, "max_tokens": 120,
        "messages": [{"role": "user", "content": "What is the weather like in Paris right now?"}],
        "tools": [weather_tool(), time_tool()], "tool_choice": "required"})
}

/// Checks a call's shape and that its arguments follow the weather function's schema.
fn assert_weather_call(c: &Value) {
    let id = c["id"].as_str().unwrap();
    assert!(id.starts_with("call_") && id.len() == 29, "{c}");
    assert_eq!(c["type"], "function", "{c}");
    let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
    let args = args.as_object().unwrap();
    assert!(args["city"].is_string(), "{c}");
    assert!(
        ["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()),
        "{c}"
    );
    assert_eq!(args.len(), 2, "{c}");
}

#[tokio::test]
async fn required_and_named_calls_follow_the_schema() {
    let st = smollm2_state();
    let (s, v, _) = call(
        &st,
        "POST",
        "/v1/chat/completions",
        Some(weather_request()),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_null(), "{v}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert!(!calls.is_empty());
    let weather = calls
        .iter()
        .find(|c| c["function"]["name"] == "get_weather");
    assert_weather_call(weather.unwrap_or_else(|| panic!("no weather call: {v}")));
    // Named: that function, whatever the question; one call without parallel calls.
    let b = with(
        weather_request(),
        &json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "parallel_tool_calls": false}),
    );
    let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(b), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["function"]["name"], "get_time");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["timezone"].is_string(), "{v}");
}

/// The `data:` payloads of an SSE body, `[DONE]` last.
async fn sse(st: &AppState, body: Value) -> Vec<String> {
    let (status, text) = post_text(st, "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    sse_data(&text).map(String::from).collect()
}

#[tokio::test]
async fn streamed_calls_reassemble_into_the_answer() {
    let st = smollm2_state();
    let (_, whole, _) = call(
        &st,
        "POST",
        "/v1/chat/completions",
        Some(weather_request()),
        &[],
    )
    .await;
    let want = whole["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    let body = with(
        weather_request(),
        &json!({"stream": true, "logprobs": true, "stream_options": {"include_usage": true}}),
    );
    let data = sse(&st, body).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // Opening: the role, no content (the answer is calls only).
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant"})
    );
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = None;
    let mut logprobs = 0;
    for c in &chunks[1..] {
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        assert!(choice["delta"].get("content").is_none(), "{c}");
        logprobs += choice["logprobs"]["content"].as_array().map_or(0, Vec::len);
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        for d in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = d["index"].as_u64().unwrap() as usize;
            let f = &d["function"];
            if i == calls.len() {
                // A call's first delta: id, type, name, empty arguments.
                assert!(d["id"].as_str().unwrap().starts_with("call_"), "{d}");
                assert_eq!(d["type"], "function", "{d}");
                assert_eq!(f["arguments"], "", "{d}");
                calls.push(json!({"name": f["name"], "arguments": ""}));
            } else {
                assert_eq!(i + 1, calls.len(), "{d}");
                assert!(d.get("id").is_none() && f.get("name").is_none(), "{d}");
                let a = calls[i]["arguments"].as_str().unwrap().to_string();
                calls[i]["arguments"] = json!(a + f["arguments"].as_str().unwrap());
            }
        }
    }
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        logprobs as u64,
        usage["completion_tokens"].as_u64().unwrap()
    );
    let want: Vec<Value> = want
        .iter()
        .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
        .collect();
    assert_eq!(calls, want);
}

#[tokio::test]
async fn a_follow_up_turn_renders_the_call_and_its_result() {
    let st = smollm2_state();
    let args = "{\"city\": \"Paris\", \"unit\": \"celsius\"}";
    let body = json!({"model": "smollm2", "temperature": 0, "max_tokens": 40,
        "tools": [weather_tool()], "tool_choice": "none",
        "messages": [
            {"role": "user", "content": "What is the weather like in Paris right now?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 22 degrees"}]});
    let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(body), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!answer.trim().is_empty(), "{v}");
    assert_ne!(v["choices"][0]["finish_reason"], "tool_calls");
    // The prompt is the conversation in the default rendering: the tools in the system turn,
    // the call as the model writes one, the result as a user turn.
    let lm = smollm2_arc(WeightDtype::Auto);
    let msgs = [
        ChatMessage::new("user", "What is the weather like in Paris right now?"),
        ChatMessage {
            content: None,
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: serde_json::from_str(args).unwrap(),
            }],
            ..ChatMessage::new("assistant", "")
        },
        ChatMessage {
            tool_call_id: Some("call_1".into()),
            ..ChatMessage::new("tool", "Sunny, 22 degrees")
        },
    ];
    let text = lm
        .render_chat(&msgs, Some(&[weather_tool()]), true)
        .unwrap();
    assert!(text.starts_with("<|im_start|>system\n# Tools\n"), "{text}");
    assert!(text.contains(&format!(
        "<|im_start|>assistant\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {args}}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\nSunny, 22 degrees\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )), "{text}");
    let ids = lm.tokenizer.encode(&text, false).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], ids.len(), "{v}");
}

#[tokio::test]
async fn auto_answers_a_question_no_tool_serves_with_text() {
    let st = smollm2_state();
    let body = json!({"model": "smollm2", "temperature": 0, "max_tokens": 30,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "tools": [weather_tool()]});
    let (s, v, _) = call(&st, "POST", "/v1/chat/completions", Some(body), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let m = &v["choices"][0]["message"];
    assert!(
        m["content"].as_str().is_some_and(|c| !c.trim().is_empty()),
        "{v}"
    );
    assert!(m.get("tool_calls").is_none(), "{v}");
    assert!(
        !m["content"].as_str().unwrap().contains("<tool_call>"),
        "{v}"
    );
}
