//! Flags → request bodies, through clap as a user types them.

use clap::Parser;
use serde_json::json;

use super::*;
use crate::cli::experiments::{ExperimentsArgs, ExperimentsCommand};

#[derive(Parser)]
struct Top {
    #[command(flatten)]
    args: ExperimentsArgs,
}

fn parse(args: &[&str]) -> Result<ExperimentsCommand, clap::Error> {
    Top::try_parse_from(std::iter::once("loraplex").chain(args.iter().copied()))
        .map(|t| t.args.command)
}

fn create(args: &[&str]) -> Value {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    match parse(&all).unwrap_or_else(|e| panic!("{e}")) {
        ExperimentsCommand::Create(f) => create_body(&f),
        other => panic!("{other:?}"),
    }
}

fn update(args: &[&str]) -> Option<Value> {
    let mut all = vec!["update", "support"];
    all.extend_from_slice(args);
    match parse(&all).unwrap_or_else(|e| panic!("{e}")) {
        ExperimentsCommand::Update { flags, .. } => update_body(&flags),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_ab_with_a_shadow_is_the_contract_example() {
    let body = create(&[
        "--name",
        "support",
        "--type",
        "ab",
        "--unit",
        "user",
        "--arm",
        "a=ad-v1:50",
        "--arm",
        "b=ad-v2:50",
        "--shadow",
        "ad-v3",
    ]);
    assert_eq!(
        body,
        json!({"name": "support", "type": "ab", "unit": "user",
               "arms": [{"name": "a", "model": "ad-v1", "weight": 50},
                        {"name": "b", "model": "ad-v2", "weight": 50}],
               "shadows": [{"model": "ad-v3"}]})
    );
}

#[test]
fn the_type_is_inferred_and_weights_left_to_the_server() {
    assert_eq!(
        create(&["--name", "r", "--arm", "a=x", "--arm", "b=y"])["type"],
        "ab"
    );
    assert_eq!(
        create(&["--name", "r", "--model", "ad@3"]),
        json!({"name": "r", "type": "single", "model": "ad@3"})
    );
    assert_eq!(
        create(&["--name", "r", "--arm", "only=x"])["type"],
        "single"
    );
    let sb = create(&[
        "--name",
        "r",
        "--arm",
        "a=x",
        "--arm",
        "b=y",
        "--window-s",
        "600",
    ]);
    assert_eq!(sb["type"], "switchback");
    assert_eq!(
        sb["arms"],
        json!([{"name": "a", "model": "x"}, {"name": "b", "model": "y"}])
    );
    assert_eq!(
        create(&["--name", "r", "--segment", "eu=x"])["type"],
        "segmented"
    );
}

#[test]
fn a_switchback_carries_its_clock_settings_and_fractional_weights() {
    let body = create(&[
        "--name",
        "batch",
        "--type",
        "switchback",
        "--window-s",
        "600",
        "--burn-in-s",
        "60",
        "--seed",
        "7",
        "--arm",
        "a=ad-v1:0.5",
        "--arm",
        "b=smollm2:1.5",
        "--salt",
        "fixed",
    ]);
    assert_eq!(
        body,
        json!({"name": "batch", "type": "switchback", "window_s": 600, "burn_in_s": 60, "seed": 7,
               "salt": "fixed",
               "arms": [{"name": "a", "model": "ad-v1", "weight": 0.5},
                        {"name": "b", "model": "smollm2", "weight": 1.5}]})
    );
}

#[test]
fn a_segmented_route_by_header_or_by_metadata_key() {
    let by_key = create(&[
        "--name",
        "assist",
        "--segment-key",
        "geo",
        "--segment",
        "eu=ad-eu",
        "--segment",
        "us=ad-us@2",
        "--default",
        "smollm2",
    ]);
    assert_eq!(
        by_key,
        json!({"name": "assist", "type": "segmented", "segment": {"metadata_key": "geo"},
               "segments": {"eu": "ad-eu", "us": "ad-us@2"}, "default": "smollm2"})
    );
    let by_header = create(&[
        "--name",
        "assist",
        "--type",
        "segmented",
        "--segment-header",
        "--segment",
        "eu=x",
    ]);
    assert_eq!(by_header["segment"], json!({"header": true}));
    assert!(parse(&[
        "create",
        "--name",
        "a",
        "--segment-header",
        "--segment-key",
        "geo"
    ])
    .is_err());
}

#[test]
fn shadow_flags_mode_sample_and_pins() {
    let s = |x: &str| parse_shadow(x).unwrap();
    let f = |model: &str, mode: Option<&str>, sample: Option<f64>| ShadowFlag {
        model: model.into(),
        mode: mode.map(str::to_string),
        sample,
    };
    assert_eq!(s("ad-v3"), f("ad-v3", None, None));
    assert_eq!(s("ad-v3:generate"), f("ad-v3", Some("generate"), None));
    assert_eq!(s("ad-v3@0.25"), f("ad-v3", None, Some(0.25)));
    assert_eq!(s("ad-v3:score@10%"), f("ad-v3", Some("score"), Some(0.1)));
    // A whole number after @ is a pinned version, not a sample.
    assert_eq!(s("ad-v3@3"), f("ad-v3@3", None, None));
    assert_eq!(
        s("ad-v3@3:generate@1.0"),
        f("ad-v3@3", Some("generate"), Some(1.0))
    );
    for bad in ["ad:fast", "ad@1.5", "ad@150%", "@0.5", ":score"] {
        assert!(parse_shadow(bad).is_err(), "{bad}");
    }
    let body = create(&[
        "--name",
        "r",
        "--model",
        "x",
        "--shadow",
        "a:generate@0.5",
        "--shadow",
        "b@2",
    ]);
    assert_eq!(
        body["shadows"],
        json!([{"model": "a", "mode": "generate", "sample": 0.5}, {"model": "b@2"}])
    );
}

#[test]
fn bad_arm_and_segment_flags_are_usage_errors() {
    for bad in ["a", "=x", "a=", "a=x:heavy"] {
        assert!(parse_arm(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_arm("a=ad@2:3").unwrap().model, "ad@2");
    for bad in ["eu", "=x", "eu="] {
        assert!(parse_segment(bad).is_err(), "{bad}");
    }
    let err = parse(&["create", "--name", "r", "--arm", "nope"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    // --file carries the whole spec: spec flags beside it are refused, and without it --name is needed.
    assert!(parse(&["create", "--file", "x.toml", "--arm", "a=x"]).is_err());
    assert!(parse(&["create", "--arm", "a=x"]).is_err());
    assert!(parse(&["create", "--file", "x.toml"]).is_ok());
}

#[test]
fn update_bodies() {
    assert_eq!(
        update(&["--weight", "a=90", "--weight", "b=10"]),
        Some(json!({"arms": [{"name": "a", "weight": 90}, {"name": "b", "weight": 10}]}))
    );
    assert_eq!(update(&["--pause"]), Some(json!({"status": "paused"})));
    assert_eq!(update(&["--resume"]), Some(json!({"status": "active"})));
    assert_eq!(
        update(&["--shadow", "c@0.5"]),
        Some(json!({"shadows": [{"model": "c", "sample": 0.5}]}))
    );
    assert_eq!(update(&["--no-shadows"]), Some(json!({"shadows": []})));
    assert_eq!(
        update(&[
            "--segment",
            "eu=x",
            "--unset-segment",
            "us",
            "--default",
            "y"
        ]),
        Some(json!({"segments": {"eu": "x", "us": null}, "default": "y"}))
    );
    assert_eq!(update(&[]), None, "nothing to change sends nothing");
    assert!(parse(&["update", "support", "--pause", "--resume"]).is_err());
    assert!(parse(&["update", "support", "--no-shadows", "--shadow", "c"]).is_err());
}

#[test]
fn spec_files_in_every_format_give_the_same_body() {
    let want = json!({"name": "support", "type": "ab",
                      "arms": [{"name": "a", "model": "ad-v1", "weight": 50},
                               {"name": "b", "model": "ad-v2", "weight": 50}],
                      "shadows": [{"model": "ad-v3", "sample": 0.5}]});
    let toml = r#"
name = "support"
type = "ab"
arms = [{ name = "a", model = "ad-v1", weight = 50 }, { name = "b", model = "ad-v2", weight = 50 }]
[[shadows]]
model = "ad-v3"
sample = 0.5
"#;
    let yaml = "name: support\ntype: ab\narms:\n  - {name: a, model: ad-v1, weight: 50}\n  - {name: b, model: ad-v2, weight: 50}\nshadows:\n  - model: ad-v3\n    sample: 0.5\n";
    assert_eq!(parse_spec(toml, "s.toml").unwrap(), want);
    assert_eq!(parse_spec(yaml, "s.yaml").unwrap(), want);
    assert_eq!(parse_spec(yaml, "-").unwrap(), want);
    assert_eq!(parse_spec(&want.to_string(), "s.json").unwrap(), want);
    assert_eq!(parse_spec(&want.to_string(), "-").unwrap(), want);
    assert!(parse_spec("[1, 2]", "s.json")
        .unwrap_err()
        .contains("one experiment spec"));
    assert!(parse_spec("name = ", "s.toml").is_err());
}
