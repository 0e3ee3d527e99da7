//! The table's contract: every bad configuration refused with its field and nothing changed,
//! patches whole or not at all, another replica's writes picked up (by the clock, no sleeping)
//! and never lost, routes files in TOML and YAML, adapter use for delete checks.

use std::sync::Arc;

use serde_json::json;

use super::tests::{spec, table, TestCatalog, T0};
use super::*;
use crate::error::ApiError;

fn refused_param(r: Result<Experiment, ApiError>) -> String {
    match r {
        Err(ApiError::InvalidParameter { param, message }) => {
            assert!(!message.is_empty());
            param
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn every_bad_configuration_is_refused_naming_its_field() {
    let arms = json!([{"name": "a", "model": "ad1"}, {"name": "b", "model": "ad2"}]);
    let cases = [
        (
            json!({"name": "r", "type": "ab", "arms": [{"name": "a", "model": "ad1", "weight": 0}, {"name": "b", "model": "ad2"}]}),
            "arms[0].weight",
        ),
        (
            json!({"name": "r", "type": "ab", "arms": [{"name": "a", "model": "ad1"}, {"name": "b", "model": "ad2", "weight": -1}]}),
            "arms[1].weight",
        ),
        (json!({"name": "r", "type": "ab", "arms": []}), "arms"),
        (json!({"name": "r", "type": "single", "arms": []}), "arms"),
        (
            json!({"name": "r", "type": "ab", "arms": [{"name": "a", "model": "nope"}, {"name": "b", "model": "ad2"}]}),
            "arms[0].model",
        ),
        (
            json!({"name": "r", "type": "ab", "arms": [{"name": "a", "model": "ad1@9"}, {"name": "b", "model": "ad2"}]}),
            "arms[0].model",
        ),
        (json!({"name": "ad1", "model": "ad2"}), "name"),
        (json!({"name": "base", "model": "ad2"}), "name"),
        (json!({"name": "../x", "model": "ad2"}), "name"),
        (
            json!({"name": "r", "type": "ab", "arms": [{"name": "a", "model": "ad1"}, {"name": "a", "model": "ad2"}]}),
            "arms[1].name",
        ),
        (
            json!({"name": "r", "type": "switchback", "window_s": 60, "burn_in_s": 60, "arms": arms}),
            "burn_in_s",
        ),
        (
            json!({"name": "r", "type": "switchback", "window_s": 0, "arms": arms}),
            "window_s",
        ),
        (
            json!({"name": "r", "type": "switchback", "arms": arms}),
            "window_s",
        ),
        (
            json!({"name": "r", "type": "ab", "arms": arms, "window_s": 60}),
            "window_s",
        ),
        (
            json!({"name": "r", "type": "ab", "arms": arms, "shadows": [{"model": "ad3"}, {"model": "ad3"}]}),
            "shadows[1].model",
        ),
        (
            json!({"name": "r", "type": "ab", "arms": arms, "shadows": [{"model": "ad1"}]}),
            "shadows[0].model",
        ),
        (
            json!({"name": "r", "type": "ab", "arms": arms, "shadows": [{"model": "ad3", "sample": 1.5}]}),
            "shadows[0].sample",
        ),
        (
            json!({"name": "r", "type": "ab", "arms": arms, "shadows": [{"model": "zz"}]}),
            "shadows[0].model",
        ),
        (
            json!({"name": "r", "type": "segmented", "segments": {"eu": "ad1"}}),
            "default",
        ),
        (
            json!({"name": "r", "type": "segmented", "default": "ad1", "segments": {}}),
            "segments",
        ),
        (
            json!({"name": "r", "type": "segmented", "default": "ad1", "segments": {"eu": "nope"}}),
            "segments.eu",
        ),
        (
            json!({"name": "r", "type": "segmented", "default": "ad1", "segments": {"eu": "ad2"}, "segment": {}}),
            "segment",
        ),
        (json!({"name": "r", "arms": arms}), "type"),
        (json!({"name": "r", "type": "ab", "model": "ad1"}), "model"),
        (json!({"name": "r", "model": "ad1", "salt": ""}), "salt"),
    ];
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempfile::tempdir().unwrap();
    let t = table(Some(dir.path()), &clock);
    t.create(spec(json!({"name": "keep", "model": "ad1"})), &TestCatalog)
        .unwrap();
    let file = std::fs::read(dir.path().join("experiments.json")).unwrap();
    for (body, param) in cases {
        let got = refused_param(t.create(spec(body.clone()), &TestCatalog));
        assert_eq!(got, param, "{body}");
        assert_eq!(t.names(), ["keep"], "{body}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("experiments.json")).unwrap(),
        file
    );
    assert!(matches!(
        t.create(spec(json!({"name": "keep", "model": "ad2"})), &TestCatalog),
        Err(ApiError::Conflict(_))
    ));
    // Unknown fields are refused by the parser (the HTTP layer makes that a 400).
    assert!(serde_json::from_value::<ExperimentSpec>(json!({"name": "r", "burn_in": 5})).is_err());
}

#[test]
fn patches_apply_whole_or_not_at_all() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    let s = spec(json!({"name": "r", "type": "ab",
        "arms": [{"name": "a", "model": "ad1"}, {"name": "b", "model": "ad2"}]}));
    let before = t.create(s, &TestCatalog).unwrap();
    let bad: ExperimentPatch = serde_json::from_value(json!({"status": "paused",
        "arms": [{"name": "a", "weight": 3}, {"name": "b", "weight": 0}]}))
    .unwrap();
    assert_eq!(
        refused_param(t.update("r", bad, &TestCatalog)),
        "arms[1].weight"
    );
    assert_eq!(t.get("r").unwrap(), before);
    let good: ExperimentPatch = serde_json::from_value(json!({"status": "paused",
        "arms": [{"name": "b", "weight": 3}], "shadows": [{"model": "ad7", "sample": 0.5}]}))
    .unwrap();
    clock.advance_ms(5);
    let after = t.update("r", good, &TestCatalog).unwrap();
    assert_eq!(
        (after.status, after.arms[0].weight, after.arms[1].weight),
        (Status::Paused, 1.0, 3.0)
    );
    assert_eq!(
        (after.salt.as_str(), after.created_ms, after.updated_ms),
        (before.salt.as_str(), T0, T0 + 5)
    );
    assert_eq!(after.shadows[0].model, "ad7");
    assert!(matches!(
        t.update("gone", ExperimentPatch::default(), &TestCatalog),
        Err(ApiError::ExperimentNotFound(_))
    ));
}

#[test]
fn replicas_sharing_the_directory_see_each_others_changes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let one = table(Some(dir.path()), &clock);
    let two = table(Some(dir.path()), &clock);
    one.create(spec(json!({"name": "r1", "model": "ad1"})), &TestCatalog)
        .unwrap();
    assert!(two.get("r1").is_none(), "checked at most once a second");
    // A writer re-reads the file first: one's route is not lost by two's write.
    two.create(spec(json!({"name": "r2", "model": "ad2"})), &TestCatalog)
        .unwrap();
    assert_eq!(two.names(), ["r1", "r2"]);
    clock.advance_ms(1000);
    assert_eq!(one.names(), ["r1", "r2"]);
    two.pause("r1").unwrap();
    two.stop("r2").unwrap();
    clock.advance_ms(1000);
    assert_eq!(one.get("r1").unwrap().status, Status::Paused);
    assert!(one.assign("r2", &Attributes::default()).is_none());
    assert_eq!(one.get("r1").unwrap().id, two.get("r1").unwrap().id);
}

#[test]
fn a_corrupt_file_keeps_the_served_routes_and_fails_a_fresh_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(Some(dir.path()), &clock);
    t.create(spec(json!({"name": "r1", "model": "ad1"})), &TestCatalog)
        .unwrap();
    std::fs::write(dir.path().join("experiments.json"), b"{ not json").unwrap();
    clock.advance_ms(1000);
    assert_eq!(t.names(), ["r1"]);
    assert!(RouteTable::open(Some(dir.path()), "base", clock.clone()).is_err());
}

#[test]
fn routes_files_in_toml_and_yaml_sync_and_keep_salts() {
    let toml = r#"
[[experiments]]
name = "support"
type = "ab"
unit = "header"
arms = [{ name = "a", model = "ad1", weight = 90 }, { name = "b", model = "ad2@3", weight = 10 }]
shadows = [{ model = "ad3", sample = 0.5 }]

[[experiments]]
name = "geo"
type = "segmented"
default = "base"
segment = { metadata_key = "geo" }
segments = { eu = "ad4", us = "ad5" }
"#;
    let yaml = r#"
experiments:
  - name: support
    type: ab
    unit: header
    arms:
      - {name: a, model: ad1, weight: 90}
      - {name: b, model: "ad2@3", weight: 10}
    shadows: [{model: ad3, sample: 0.5}]
  - name: geo
    type: segmented
    default: base
    segment: {metadata_key: geo}
    segments: {eu: ad4, us: ad5}
"#;
    let from_toml = parse_routes(toml, RoutesFormat::Toml).unwrap();
    assert_eq!(from_toml, parse_routes(yaml, RoutesFormat::Yaml).unwrap());
    assert!(parse_routes("[[experiments]]\nname = 1", RoutesFormat::Toml).is_err());
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(Some(dir.path()), &clock);
    let first = t.sync(from_toml.clone(), &TestCatalog).unwrap();
    assert_eq!(t.names(), ["geo", "support"]);
    t.pause("geo").unwrap();
    clock.advance_ms(60_000);
    let restarted = table(Some(dir.path()), &clock);
    let again = restarted.sync(from_toml.clone(), &TestCatalog).unwrap();
    assert_eq!(
        (&again[0].salt, &again[0].id, again[0].created_ms),
        (&first[0].salt, &first[0].id, T0)
    );
    assert_eq!(restarted.get("geo").unwrap().status, Status::Paused);
    let mut broken = from_toml;
    broken[1].default = Some("nope".into());
    assert_eq!(
        refused_param(
            restarted
                .sync(broken, &TestCatalog)
                .map(|mut v| v.remove(0))
        ),
        "experiments[1].default"
    );
}

#[test]
fn uses_adapter_names_the_route() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    t.create(
        spec(json!({"name": "r", "model": "ad1@2", "shadows": [{"model": "ad3"}]})),
        &TestCatalog,
    )
    .unwrap();
    assert_eq!(t.uses_adapter("ad1").as_deref(), Some("r"));
    assert_eq!(t.uses_adapter("ad3").as_deref(), Some("r"));
    assert_eq!(t.uses_adapter("ad2"), None);
    t.stop("r").unwrap();
    assert_eq!(t.uses_adapter("ad1"), None);
}

#[test]
fn model_strings_name_the_base_an_adapter_or_a_pinned_version() {
    assert_eq!(Target::parse("base", "base"), Target::Base);
    let pinned = Target::parse("ad1@3", "base");
    assert_eq!(
        pinned,
        Target::Adapter {
            name: "ad1".into(),
            version: Some(3)
        }
    );
    assert_eq!(pinned.to_string(), "ad1@3");
    assert_eq!(Target::parse("a@b", "base").adapter(), Some("a@b"));
}
