//! Assignment's guarantees, under a manual clock and seeded randomness: sticky A/B across a
//! restart, weights over 10,000 units, independence of two experiments, switchback windows,
//! burn-in and schedule, segmented lookups over 5,000 entries, pause, shadow sampling.

use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use super::*;

pub(super) const T0: u64 = 1_700_000_000_000;

/// Adapters `ad0`..`ad9`, each with stored versions 1 to 3, over base `base`.
pub(super) struct TestCatalog;

impl Catalog for TestCatalog {
    fn base_id(&self) -> &str {
        "base"
    }
    fn adapter_exists(&self, name: &str) -> bool {
        name.len() == 3 && name.starts_with("ad") && name.as_bytes()[2].is_ascii_digit()
    }
    fn version_exists(&self, name: &str, v: u64) -> bool {
        self.adapter_exists(name) && (1..=3).contains(&v)
    }
}

pub(super) fn spec(v: Value) -> ExperimentSpec {
    serde_json::from_value(v).unwrap()
}

pub(super) fn table(dir: Option<&Path>, clock: &Arc<ManualClock>) -> RouteTable {
    RouteTable::open(dir, "base", clock.clone()).unwrap()
}

fn user(u: &str) -> Attributes<'_> {
    Attributes {
        user: Some(u),
        ..Default::default()
    }
}

fn ab(name: &str, salt: &str, weights: &[f64]) -> ExperimentSpec {
    let arms: Vec<Value> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| json!({"name": format!("arm{i}"), "model": format!("ad{i}"), "weight": w}))
        .collect();
    spec(json!({"name": name, "type": "ab", "salt": salt, "arms": arms}))
}

fn arm_of(t: &RouteTable, route: &str, unit: &str) -> String {
    t.assign(route, &user(unit)).unwrap().arm
}

#[test]
fn sticky_assignment_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let before: Vec<String> = {
        let t = table(Some(dir.path()), &clock);
        // No salt given: a random one, which must be kept.
        let mut s = ab("r", "x", &[1.0, 1.0]);
        s.salt = None;
        t.create(s, &TestCatalog).unwrap();
        (0..500)
            .map(|i| arm_of(&t, "r", &format!("u{i}")))
            .collect()
    };
    let t = table(Some(dir.path()), &clock);
    let after: Vec<String> = (0..500)
        .map(|i| arm_of(&t, "r", &format!("u{i}")))
        .collect();
    assert_eq!(before, after);
    assert!(before.contains(&"arm0".to_string()) && before.contains(&"arm1".to_string()));
    let a = t.assign("r", &user("u1")).unwrap();
    assert_eq!(a.unit_source, "user");
    let hash = a.unit_hash.unwrap();
    assert_eq!(hash.len(), 32);
    assert!(!hash.contains("u1"));
}

#[test]
fn arms_get_their_weights_within_two_percent_over_10000_units() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    let weights = [20.0, 30.0, 50.0];
    t.create(ab("r", "weights", &weights), &TestCatalog)
        .unwrap();
    let mut counts = [0usize; 3];
    for i in 0..10_000 {
        let arm = arm_of(&t, "r", &format!("unit-{i}"));
        counts[arm[3..].parse::<usize>().unwrap()] += 1;
    }
    for (c, w) in counts.iter().zip(weights) {
        let share = *c as f64 / 10_000.0;
        assert!((share - w / 100.0).abs() < 0.02, "{counts:?}");
    }
}

#[test]
fn two_experiments_assign_independently() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    t.create(ab("first", "salt-one", &[1.0, 1.0]), &TestCatalog)
        .unwrap();
    t.create(ab("second", "salt-two", &[1.0, 1.0]), &TestCatalog)
        .unwrap();
    let mut n = [[0f64; 2]; 2];
    for i in 0..10_000 {
        let u = format!("unit-{i}");
        let a = (arm_of(&t, "first", &u) == "arm1") as usize;
        let b = (arm_of(&t, "second", &u) == "arm1") as usize;
        n[a][b] += 1.0;
    }
    let total = 10_000.0;
    let rows = [n[0][0] + n[0][1], n[1][0] + n[1][1]];
    let cols = [n[0][0] + n[1][0], n[0][1] + n[1][1]];
    let mut chi2 = 0.0;
    for a in 0..2 {
        for b in 0..2 {
            let expected = rows[a] * cols[b] / total;
            chi2 += (n[a][b] - expected).powi(2) / expected;
        }
    }
    // The 0.999 quantile of chi-square with one degree of freedom.
    assert!(chi2 < 10.828, "chi2 {chi2} over {n:?}");
    // The same salt would make them identical: the test can tell dependence.
    t.create(ab("copy", "salt-one", &[1.0, 1.0]), &TestCatalog)
        .unwrap();
    assert!((0..100).all(|i| {
        let u = format!("unit-{i}");
        arm_of(&t, "first", &u) == arm_of(&t, "copy", &u)
    }));
}

#[test]
fn unit_falls_back_to_the_other_attribute_then_to_random() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    t.create(ab("r", "s", &[1.0, 1.0]), &TestCatalog).unwrap();
    let header = Attributes {
        unit_header: Some("u7"),
        ..Default::default()
    };
    let a = t.assign("r", &header).unwrap();
    assert_eq!(a.unit_source, "header");
    assert_eq!(a.arm, arm_of(&t, "r", "u7"), "the same unit hashes alike");
    let mut rng = StdRng::seed_from_u64(3);
    let arms: std::collections::HashSet<String> = (0..50)
        .map(|_| {
            let a = t
                .assign_with("r", &Attributes::default(), T0, &mut rng)
                .unwrap();
            assert_eq!((a.unit_source, a.unit_hash.as_deref()), ("random", None));
            a.arm
        })
        .collect();
    assert_eq!(arms.len(), 2, "unit-less requests spread over the arms");
}

fn switchback(t: &RouteTable, seed: u64) {
    let s = spec(
        json!({"name": format!("sb{seed}"), "type": "switchback", "window_s": 600,
        "burn_in_s": 60, "seed": seed,
        "arms": [{"name": "a", "model": "ad1"}, {"name": "b", "model": "ad2"}]}),
    );
    t.create(s, &TestCatalog).unwrap();
}

#[test]
fn switchback_windows_burn_in_and_schedule_follow_the_clock() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    switchback(&t, 7);
    let schedule = t.schedule("sb7", 40).unwrap();
    assert_eq!(schedule.len(), 40);
    for (k, w) in schedule.iter().enumerate() {
        let start = T0 + k as u64 * 600_000;
        assert_eq!(
            (w.id, w.start_ms, w.end_ms),
            (k as u64, start, start + 600_000)
        );
        assert_eq!(w.analysis_from_ms, start + 60_000);
        for (offset, in_analysis) in [(0, false), (59_999, false), (60_000, true), (599_999, true)]
        {
            clock.set(start + offset);
            let a = t.assign("sb7", &Attributes::default()).unwrap();
            assert_eq!(a.window, Some(k as u64));
            assert_eq!(
                a.arm, w.arm,
                "window {k}: the schedule says what assignment does"
            );
            assert_eq!(a.in_analysis, in_analysis, "window {k} at +{offset} ms");
        }
    }
    clock.set(T0 + 5 * 600_000 + 1);
    assert_eq!(
        t.schedule("sb7", 3).unwrap()[0].id,
        5,
        "schedules start now"
    );
    clock.set(T0 - 10_000);
    assert_eq!(
        t.assign("sb7", &Attributes::default()).unwrap().window,
        Some(0)
    );
}

#[test]
fn switchback_arms_are_drawn_not_alternated() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    let mut repeats = 0;
    for seed in 0..5 {
        switchback(&t, seed);
        let arms: Vec<String> = t
            .schedule(&format!("sb{seed}"), 100)
            .unwrap()
            .into_iter()
            .map(|w| w.arm)
            .collect();
        let b = arms.iter().filter(|a| *a == "b").count();
        assert!(
            (25..=75).contains(&b),
            "seed {seed}: {b} of 100 windows on b"
        );
        repeats += arms.windows(2).filter(|p| p[0] == p[1]).count();
    }
    assert!(repeats > 0, "plain alternation never repeats an arm");
    let other = table(None, &clock);
    switchback(&other, 0);
    assert_eq!(t.schedule("sb0", 20), other.schedule("sb0", 20), "seeded");
}

#[test]
fn segmented_lookup_over_5000_entries() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    let segments: serde_json::Map<String, Value> = (0..5000)
        .map(|i| (format!("seg-{i}"), json!(format!("ad{}", i % 10))))
        .collect();
    let s = spec(
        json!({"name": "seg", "type": "segmented", "default": "base",
        "segment": {"header": true, "metadata_key": "geo"}, "segments": segments}),
    );
    t.create(s, &TestCatalog).unwrap();
    let meta: serde_json::Map<String, Value> = [("geo".to_string(), json!("seg-1234"))]
        .into_iter()
        .collect();
    let by_meta = Attributes {
        metadata: Some(&meta),
        ..Default::default()
    };
    let a = t.assign("seg", &by_meta).unwrap();
    assert_eq!((a.arm.as_str(), a.model.as_str()), ("seg-1234", "ad4"));
    assert_eq!(a.segment.as_deref(), Some("seg-1234"));
    let header_wins = Attributes {
        segment_header: Some("seg-4999"),
        ..by_meta
    };
    assert_eq!(t.assign("seg", &header_wins).unwrap().model, "ad9");
    let unknown = t
        .assign(
            "seg",
            &Attributes {
                segment_header: Some("nowhere"),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (unknown.arm.as_str(), unknown.target, unknown.segment),
        ("default", Target::Base, None)
    );
    // A micro-bench, not asserted: lookups on a 5,000-entry route against a one-arm route.
    t.create(spec(json!({"name": "one", "model": "ad1"})), &TestCatalog)
        .unwrap();
    for route in ["seg", "one"] {
        let t0 = std::time::Instant::now();
        for _ in 0..100_000 {
            std::hint::black_box(t.assign(route, &header_wins));
        }
        println!("{route}: {:?} per assignment", t0.elapsed() / 100_000);
    }
}

#[test]
fn paused_routes_serve_control_outside_the_analysis_without_shadows() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    let mut s = ab("r", "s", &[1.0, 1.0]);
    s.shadows = vec![ShadowConfig {
        model: "ad5".into(),
        mode: ShadowMode::Score,
        sample: 1.0,
    }];
    t.create(s, &TestCatalog).unwrap();
    assert_eq!(t.assign("r", &user("u")).unwrap().shadows.len(), 1);
    t.pause("r").unwrap();
    for i in 0..50 {
        let a = t.assign("r", &user(&format!("u{i}"))).unwrap();
        assert_eq!((a.arm.as_str(), a.in_analysis), ("arm0", false));
        assert!(a.shadows.is_empty());
    }
    t.resume("r").unwrap();
    assert!(t.assign("r", &user("u")).unwrap().in_analysis);
}

#[test]
fn shadows_see_their_sampled_share() {
    let clock = Arc::new(ManualClock::new(T0));
    let t = table(None, &clock);
    let s = spec(json!({"name": "r", "model": "ad1", "shadows": [
        {"model": "ad2"}, {"model": "ad3@2", "mode": "generate", "sample": 0.25},
        {"model": "ad4", "sample": 0.0}]}));
    t.create(s, &TestCatalog).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let mut seen = [0usize; 3];
    for _ in 0..4000 {
        for s in t
            .assign_with("r", &Attributes::default(), T0, &mut rng)
            .unwrap()
            .shadows
        {
            seen[s.model.as_bytes()[2] as usize - b'2' as usize] += 1;
        }
    }
    assert_eq!(seen[0], 4000);
    assert!((800..1200).contains(&seen[1]), "{seen:?}");
    assert_eq!(seen[2], 0);
    let a = t.assign("r", &Attributes::default()).unwrap();
    assert_eq!(
        a.shadows[0].target,
        Target::Adapter {
            name: "ad2".into(),
            version: None
        }
    );
}
