use loraplex_runtime::GrammarSpec;
use serde_json::json;

use super::tests::{ok, refused, schema};

#[test]
fn structured_outputs_and_guided_fields_become_specs() {
    let regex = GrammarSpec::Regex("[0-9]+".into());
    let choice = GrammarSpec::Choice(vec!["yes".into(), "no".into()]);
    let lark = GrammarSpec::Lark("start: \"a\"+".into());
    let cases = [
        (
            json!({"structured_outputs": {"json": schema()}}),
            GrammarSpec::JsonSchema(schema()),
            "structured_outputs.json",
        ),
        // A schema as a JSON string, as vLLM takes it.
        (
            json!({"structured_outputs": {"json": schema().to_string()}}),
            GrammarSpec::JsonSchema(schema()),
            "structured_outputs.json",
        ),
        (
            json!({"structured_outputs": {"regex": "[0-9]+", "choice": null}}),
            regex.clone(),
            "structured_outputs.regex",
        ),
        (
            json!({"structured_outputs": {"choice": ["yes", "no"]}}),
            choice.clone(),
            "structured_outputs.choice",
        ),
        (
            json!({"structured_outputs": {"grammar": "start: \"a\"+"}}),
            lark.clone(),
            "structured_outputs.grammar",
        ),
        (
            json!({"structured_outputs": {"json_object": true, "disable_fallback": true}}),
            GrammarSpec::JsonObject,
            "structured_outputs.json_object",
        ),
        (
            json!({"guided_json": schema()}),
            GrammarSpec::JsonSchema(schema()),
            "guided_json",
        ),
        (
            json!({"guided_json": schema().to_string()}),
            GrammarSpec::JsonSchema(schema()),
            "guided_json",
        ),
        (
            json!({"guided_regex": "[0-9]+"}),
            regex.clone(),
            "guided_regex",
        ),
        (
            json!({"guided_choice": ["yes", "no"]}),
            choice,
            "guided_choice",
        ),
        (
            json!({"guided_grammar": "start: \"a\"+"}),
            lark,
            "guided_grammar",
        ),
        // `text` is no constraint, so it combines with one.
        (
            json!({"response_format": {"type": "text"}, "guided_regex": "[0-9]+"}),
            regex,
            "guided_regex",
        ),
    ];
    for (fields, spec, param) in cases {
        assert_eq!(ok(fields.clone()), (spec, param.to_string()), "{fields}");
    }
}

#[test]
fn malformed_vllm_fields_are_refused_naming_the_field() {
    let cases = [
        (
            json!({"structured_outputs": "json"}),
            "structured_outputs",
            "an object",
        ),
        (
            json!({"structured_outputs": {}}),
            "structured_outputs",
            "needs one of",
        ),
        (
            json!({"structured_outputs": {"json_object": false}}),
            "structured_outputs",
            "needs one of",
        ),
        (
            json!({"structured_outputs": {"regexp": "a"}}),
            "structured_outputs.regexp",
            "accepted: json, regex",
        ),
        (
            json!({"structured_outputs": {"structural_tag": "{}"}}),
            "structured_outputs.structural_tag",
            "not supported",
        ),
        (
            json!({"structured_outputs": {"json": "{nope"}}),
            "structured_outputs.json",
            "not JSON",
        ),
        (
            json!({"structured_outputs": {"json": "[1]"}}),
            "structured_outputs.json",
            "an array",
        ),
        (
            json!({"structured_outputs": {"json": 5}}),
            "structured_outputs.json",
            "a number",
        ),
        (
            json!({"structured_outputs": {"regex": ""}}),
            "structured_outputs.regex",
            "empty",
        ),
        (
            json!({"structured_outputs": {"grammar": ["a"]}}),
            "structured_outputs.grammar",
            "an array",
        ),
        (
            json!({"structured_outputs": {"choice": []}}),
            "structured_outputs.choice",
            "at least one",
        ),
        (
            json!({"structured_outputs": {"choice": "yes"}}),
            "structured_outputs.choice",
            "a list of strings",
        ),
        (
            json!({"structured_outputs": {"json_object": "true"}}),
            "structured_outputs.json_object",
            "true or false",
        ),
        (
            json!({"structured_outputs": {"regex": "a", "disable_any_whitespace": 1}}),
            "structured_outputs.disable_any_whitespace",
            "true or false",
        ),
        (
            json!({"guided_choice": ["a", 2]}),
            "guided_choice[1]",
            "a number",
        ),
        (json!({"guided_regex": 7}), "guided_regex", "a number"),
        (json!({"guided_grammar": ""}), "guided_grammar", "empty"),
        (json!({"guided_json": true}), "guided_json", "a boolean"),
    ];
    for (fields, param, says) in cases {
        let (p, m) = refused(fields.clone());
        assert_eq!(p, param, "{fields}: {m}");
        assert!(m.contains(says), "{fields}: {m:?} does not say {says:?}");
    }
}

#[test]
fn json_options_become_llguidance_compile_options() {
    let nested = json!({"type": "object", "properties": {
        "inner": {"type": "object", "properties": {"x": {"type": "string"}}},
        "open": {"type": "object", "properties": {}, "additionalProperties": true},
        "list": {"type": "array", "items": [{"type": "object", "patternProperties": {"^a": {}}}]},
        "any": {"anyOf": [{"$ref": "#/$defs/d"}, {"type": "null"}]},
        // A property named like a keyword is a name, not a schema.
        "properties": {"type": "object", "properties": {"properties": {"type": "string"}}},
    }, "$defs": {"d": {"type": "object", "properties": {"y": {"type": "number"}}}}});
    let fields = json!({"structured_outputs": {
        "json": nested, "disable_any_whitespace": true, "disable_additional_properties": true}});
    let (spec, param) = ok(fields);
    assert_eq!(param, "structured_outputs.json");
    let GrammarSpec::JsonSchema(s) = spec else {
        panic!("{spec:?}")
    };
    assert_eq!(s["x-guidance"], json!({"whitespace_flexible": false}));
    assert_eq!(s["additionalProperties"], false);
    let props = &s["properties"];
    assert_eq!(props["inner"]["additionalProperties"], false);
    assert_eq!(
        props["open"]["additionalProperties"], true,
        "an explicit value stays"
    );
    assert_eq!(props["list"]["items"][0]["additionalProperties"], false);
    assert!(props["inner"]["properties"]["x"]
        .get("additionalProperties")
        .is_none());
    assert_eq!(s["$defs"]["d"]["additionalProperties"], false);
    assert!(props["any"].get("additionalProperties").is_none());
    let named = &props["properties"];
    assert_eq!(named["additionalProperties"], false);
    assert_eq!(named["properties"]["properties"], json!({"type": "string"}));
    for map in [props, &named["properties"]] {
        assert!(map.get("additionalProperties").is_none(), "{map}");
    }
    // json_object becomes the object schema carrying the options.
    let (spec, _) =
        ok(json!({"structured_outputs": {"json_object": true, "whitespace_pattern": "[ ]?"}}));
    assert_eq!(
        spec,
        GrammarSpec::JsonSchema(
            json!({"type": "object", "x-guidance": {"whitespace_pattern": "[ ]?"}})
        )
    );
    // The older top-level pattern applies to any JSON constraint, beside the schema's own options.
    let mut own = schema();
    own["x-guidance"] = json!({"lenient": true});
    let (spec, _) = ok(json!({"guided_json": own, "guided_whitespace_pattern": " "}));
    let GrammarSpec::JsonSchema(s) = spec else {
        panic!("{spec:?}")
    };
    assert_eq!(
        s["x-guidance"],
        json!({"lenient": true, "whitespace_pattern": " "})
    );
    // Options that are off change nothing.
    let (spec, _) =
        ok(json!({"structured_outputs": {"json": schema(), "disable_any_whitespace": false}}));
    assert_eq!(spec, GrammarSpec::JsonSchema(schema()));
}

#[test]
fn json_options_without_a_json_constraint_are_refused() {
    let cases = [
        (
            json!({"guided_whitespace_pattern": " "}),
            "guided_whitespace_pattern",
            "has none",
        ),
        (
            json!({"guided_regex": "a+", "guided_whitespace_pattern": " "}),
            "guided_whitespace_pattern",
            "not to guided_regex",
        ),
        (
            json!({"structured_outputs": {"choice": ["a"], "disable_any_whitespace": true}}),
            "structured_outputs.disable_any_whitespace",
            "JSON constraints only",
        ),
        (
            json!({"guided_json": schema(), "guided_whitespace_pattern": 3}),
            "guided_whitespace_pattern",
            "a number",
        ),
    ];
    for (fields, param, says) in cases {
        let (p, m) = refused(fields.clone());
        assert_eq!(p, param, "{fields}: {m}");
        assert!(m.contains(says), "{fields}: {m:?} does not say {says:?}");
    }
}
