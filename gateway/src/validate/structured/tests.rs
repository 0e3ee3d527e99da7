use loraplex_runtime::GrammarSpec;
use serde_json::{json, Value};

use super::{is_openai_name, output_constraint, OutputConstraint};
use crate::error::ApiError;
use crate::wire::{ChatCompletionRequest, ConstraintFields};

fn parse(fields: Value) -> Result<Option<OutputConstraint>, ApiError> {
    let f: ConstraintFields = serde_json::from_value(fields).unwrap();
    output_constraint(&f)
}

pub(super) fn ok(fields: Value) -> (GrammarSpec, String) {
    let c = parse(fields.clone())
        .unwrap_or_else(|e| panic!("{fields}: {e}"))
        .unwrap_or_else(|| panic!("{fields}: no constraint"));
    (c.spec, c.param)
}

/// The refusal's param and message.
pub(super) fn refused(fields: Value) -> (String, String) {
    match parse(fields.clone()) {
        Err(ApiError::InvalidParameter { param, message }) => (param, message),
        other => panic!("{fields}: expected a refusal, got {other:?}"),
    }
}

pub(super) fn schema() -> Value {
    json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
}

#[test]
fn response_format_types_become_specs() {
    assert!(parse(json!({})).unwrap().is_none());
    assert!(parse(json!({"response_format": {"type": "text"}}))
        .unwrap()
        .is_none());
    assert!(parse(json!({"response_format": null})).unwrap().is_none());
    assert_eq!(
        ok(json!({"response_format": {"type": "json_object"}})),
        (GrammarSpec::JsonObject, "response_format".into())
    );
    let rf = json!({"type": "json_schema", "json_schema": {
        "name": "Person_1-x", "schema": schema(), "strict": true, "description": null}});
    assert_eq!(
        ok(json!({ "response_format": rf })),
        (
            GrammarSpec::JsonSchema(schema()),
            "response_format.json_schema.schema".into()
        )
    );
}

#[test]
fn malformed_response_formats_are_refused_naming_the_field() {
    let js = |j: Value| json!({"response_format": {"type": "json_schema", "json_schema": j}});
    let cases = [
        (
            json!({"response_format": "json"}),
            "response_format",
            "an object",
        ),
        (
            json!({"response_format": {}}),
            "response_format.type",
            "required",
        ),
        (
            json!({"response_format": {"type": 1}}),
            "response_format.type",
            "a number",
        ),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format.type",
            "\"xml\"",
        ),
        (
            json!({"response_format": {"type": "json_object", "schema": {}}}),
            "response_format.schema",
            "it takes type",
        ),
        (
            json!({"response_format": {"type": "text", "json_schema": {}}}),
            "response_format.json_schema",
            "it takes type",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
            "required",
        ),
        (js(json!([])), "response_format.json_schema", "an array"),
        (
            js(json!({"schema": schema()})),
            "response_format.json_schema.name",
            "required",
        ),
        (
            js(json!({"name": 3, "schema": schema()})),
            "response_format.json_schema.name",
            "a number",
        ),
        (
            js(json!({"name": "a b", "schema": schema()})),
            "response_format.json_schema.name",
            "letters",
        ),
        (
            js(json!({"name": "x".repeat(65), "schema": schema()})),
            "response_format.json_schema.name",
            "64",
        ),
        (
            js(json!({"name": "p"})),
            "response_format.json_schema.schema",
            "required",
        ),
        (
            js(json!({"name": "p", "schema": "{}"})),
            "response_format.json_schema.schema",
            "a string",
        ),
        (
            js(json!({"name": "p", "schema": schema(), "strict": "yes"})),
            "response_format.json_schema.strict",
            "true or false",
        ),
        (
            js(json!({"name": "p", "schema": schema(), "description": 1})),
            "response_format.json_schema.description",
            "a number",
        ),
        (
            js(json!({"name": "p", "schema": schema(), "shema": {}})),
            "response_format.json_schema.shema",
            "name, description, schema, strict",
        ),
    ];
    for (fields, param, says) in cases {
        let (p, m) = refused(fields.clone());
        assert_eq!(p, param, "{fields}: {m}");
        assert!(m.contains(says), "{fields}: {m:?} does not say {says:?}");
    }
}

#[test]
fn two_constraints_are_refused_naming_both() {
    let rf = json!({"type": "json_object"});
    let cases = [
        (
            json!({"response_format": rf, "guided_regex": "a"}),
            "guided_regex",
            ["response_format", "guided_regex"],
        ),
        (
            json!({"response_format": rf, "structured_outputs": {"regex": "a"}}),
            "structured_outputs",
            ["response_format", "structured_outputs.regex"],
        ),
        (
            json!({"guided_json": schema(), "guided_choice": ["a"]}),
            "guided_choice",
            ["guided_json", "guided_choice"],
        ),
        (
            json!({"structured_outputs": {"regex": "a"}, "guided_grammar": "start: \"a\""}),
            "guided_grammar",
            ["structured_outputs.regex", "guided_grammar"],
        ),
    ];
    for (fields, param, names) in cases {
        let (p, m) = refused(fields.clone());
        assert_eq!(p, param, "{fields}: {m}");
        assert!(names.iter().all(|n| m.contains(n)), "{fields}: {m}");
        assert!(m.contains("one output constraint"), "{m}");
    }
    // Two inside structured_outputs: named by its field, whichever comes first.
    let (p, m) = refused(json!({"structured_outputs": {"regex": "a", "choice": ["a"]}}));
    assert_eq!(p, "structured_outputs", "{m}");
    assert!(
        m.contains("structured_outputs.regex") && m.contains("structured_outputs.choice"),
        "{m}"
    );
}

#[test]
fn constraint_fields_are_not_unknown_fields() {
    let req: ChatCompletionRequest = serde_json::from_value(json!({
        "model": "m", "messages": [], "response_format": {"type": "json_object"},
        "guided_regex": "a", "vendor": 1}))
    .unwrap();
    assert_eq!(
        req.constraints.response_format,
        Some(json!({"type": "json_object"}))
    );
    assert_eq!(req.constraints.guided_regex, Some(json!("a")));
    assert_eq!(req.unknown.keys().collect::<Vec<_>>(), ["vendor"]);
}

#[test]
fn openai_names_are_1_to_64_word_characters_or_dashes() {
    assert!(is_openai_name("get_weather-2"));
    assert!(is_openai_name(&"a".repeat(64)));
    for bad in ["", "a b", "é", "a.b", &"a".repeat(65)] {
        assert!(!is_openai_name(bad), "{bad:?}");
    }
}
