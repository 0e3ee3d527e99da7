use serde_json::json;

use super::*;

fn fields(v: Value) -> ToolFields {
    serde_json::from_value(v).unwrap()
}

fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

#[test]
fn tools_and_their_choice_are_read() {
    let t = tools(&fields(
        json!({"tools": [weather(), {"type": "function", "function": {"name": "now"}}]}),
    ))
    .unwrap()
    .unwrap();
    assert_eq!(t.choice, Choice::Auto);
    assert!(t.parallel);
    assert_eq!(t.raw[0], weather());
    assert_eq!(
        t.functions[0].parameters,
        weather()["function"]["parameters"]
    );
    // No parameters: the empty object is the only argument.
    assert_eq!(
        t.functions[1].parameters,
        json!({"type": "object", "properties": {}, "additionalProperties": false})
    );
    let t = tools(&fields(
        json!({"tools": [weather()], "parallel_tool_calls": false,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ))
    .unwrap()
    .unwrap();
    assert_eq!(t.choice, Choice::Named(0));
    assert!(!t.parallel);
    for (v, want) in [("none", Choice::None), ("required", Choice::Required)] {
        let t = tools(&fields(json!({"tools": [weather()], "tool_choice": v}))).unwrap();
        assert_eq!(t.unwrap().choice, want);
    }
    // No tools: nothing, with or without a choice that needs none.
    assert_eq!(tools(&fields(json!({}))).unwrap(), None);
    assert_eq!(
        tools(&fields(json!({"tool_choice": "auto"}))).unwrap(),
        None
    );
    assert_eq!(
        tools(&fields(json!({"tool_choice": "none", "tools": null}))).unwrap(),
        None
    );
}

#[test]
fn every_refusal_names_its_field() {
    let named = |n: &str| json!({"type": "function", "function": {"name": n}});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut t = weather();
        f(&mut t);
        json!({"tools": [weather_other(), t]})
    };
    fn weather_other() -> Value {
        json!({"type": "function", "function": {"name": "other"}})
    }
    let cases: Vec<(Value, &str)> = vec![
        (json!({"tools": {}}), "tools"),
        (json!({"tools": []}), "tools"),
        (json!({"tools": vec![named("f"); MAX_TOOLS + 1]}), "tools"),
        (json!({"tools": [weather_other(), 3]}), "tools[1]"),
        (
            with(&|t| t["type"] = json!("code_interpreter")),
            "tools[1].type",
        ),
        (
            with(&|t| {
                t.as_object_mut().unwrap().remove("type");
            }),
            "tools[1].type",
        ),
        (with(&|t| t["function"] = json!([])), "tools[1].function"),
        (
            with(&|t| t["function"]["name"] = json!(5)),
            "tools[1].function.name",
        ),
        (
            with(&|t| t["function"]["name"] = json!("")),
            "tools[1].function.name",
        ),
        (
            with(&|t| t["function"]["name"] = json!("get weather")),
            "tools[1].function.name",
        ),
        (
            with(&|t| t["function"]["name"] = json!("x".repeat(65))),
            "tools[1].function.name",
        ),
        (
            with(&|t| t["function"]["name"] = json!("other")),
            "tools[1].function.name",
        ),
        (
            with(&|t| t["function"]["description"] = json!(1)),
            "tools[1].function.description",
        ),
        (
            with(&|t| t["function"]["strict"] = json!("yes")),
            "tools[1].function.strict",
        ),
        (
            with(&|t| t["function"]["parameters"] = json!("object")),
            "tools[1].function.parameters",
        ),
        (
            with(&|t| t["function"]["parameters"] = json!({"type": "string"})),
            "tools[1].function.parameters",
        ),
        (
            json!({"tools": [weather()], "parallel_tool_calls": "no"}),
            "parallel_tool_calls",
        ),
        (
            json!({"tools": [weather()], "tool_choice": "always"}),
            "tool_choice",
        ),
        (
            json!({"tools": [weather()], "tool_choice": 1}),
            "tool_choice",
        ),
        (
            json!({"tools": [weather()], "tool_choice": {"type": "tool", "function": {"name": "get_weather"}}}),
            "tool_choice.type",
        ),
        (
            json!({"tools": [weather()], "tool_choice": {"type": "function"}}),
            "tool_choice.function.name",
        ),
        (
            json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice.function.name",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
            "tool_choice",
        ),
    ];
    for (v, want) in cases {
        match tools(&fields(v.clone())) {
            Err(ApiError::InvalidParameter { param, .. }) => assert_eq!(param, want, "{v}"),
            other => panic!("{v}: {other:?}"),
        }
    }
}
