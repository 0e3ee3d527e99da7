//! Expected intervals from scipy's `ttest_ind(equal_var=False).confidence_interval(0.95)`.

use super::*;
use crate::records::schema::FeedbackRecord;
use crate::records::svg::report_svg;
use crate::records::testutil::request;

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-8, "{a} vs {b}");
}

fn info(policy: &str) -> ExperimentInfo {
    ExperimentInfo {
        name: "support".into(),
        experiment_id: "e1".into(),
        policy: policy.into(),
        arms: vec![("a".into(), "ad-v1".into()), ("b".into(), "ad-v2".into())],
        shadows: vec!["ad-v3".into()],
    }
}

fn fb(id: u64, value: f64, label: Option<&str>) -> FeedbackRecord {
    FeedbackRecord {
        ts_ms: id,
        request_id: format!("chatcmpl-{id}"),
        value,
        label: label.map(Into::into),
    }
}

fn ab_records() -> Records {
    let mut requests = Vec::new();
    // Arm a: latencies 1..=5, b: 2, 4, .., 10 (ids 10..).
    for i in 1..=5u64 {
        requests.push(request("e1", "a", i, i as f64));
        requests.push(request("e1", "b", 10 + i, 2.0 * i as f64));
    }
    requests.push(RequestRecord {
        status: "error".into(),
        error: Some("timeout".into()),
        ttft_ms: None,
        ..request("e1", "a", 6, 9999.0)
    });
    requests.push(RequestRecord {
        in_analysis: false,
        ..request("e1", "b", 20, 9999.0)
    });
    requests.push(request("other", "a", 30, 9999.0));
    requests.push(request("e1", "c", 40, 7.0));
    let feedback = vec![
        fb(1, 0.0, None),
        fb(1, 1.0, Some("good")), // same time, larger value: replaces the first
        fb(2, 1.0, Some("good")),
        fb(3, 0.0, Some("bad")),
        fb(11, 1.0, None),
        fb(20, 1.0, None), // not in analysis
        fb(30, 1.0, None), // another experiment
    ];
    Records {
        requests,
        shadows: Vec::new(),
        feedback,
        skipped_lines: 2,
    }
}

#[test]
fn ab_counts_estimates_and_differences() {
    let r = report(&info("ab"), &ab_records());
    assert_eq!((r.requests, r.in_analysis, r.skipped_lines), (13, 12, 2));
    assert_eq!(r.unit, Unit::Request);
    let names: Vec<&str> = r.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["a", "b", "c"],
        "an arm only the records know comes last"
    );
    let a = &r.arms[0];
    assert_eq!(
        (a.model.as_str(), a.requests, a.in_analysis, a.errors),
        ("ad-v1", 6, 6, 1)
    );
    assert_eq!(a.error_codes.get("timeout"), Some(&1));
    close(a.error_rate.unwrap().mean, 1.0 / 6.0);
    assert_eq!((a.prompt_tokens, a.completion_tokens), (60, 30));
    let lat = a.latency_ms.as_ref().unwrap();
    assert_eq!(
        (lat.quantiles.p50, lat.mean.n, lat.mean.mean),
        (3.0, 5, 3.0)
    );
    close(lat.quantiles.p95, 4.8);
    assert_eq!(a.feedback.count, 3);
    close(a.feedback.mean.unwrap().mean, 2.0 / 3.0);
    assert_eq!(a.feedback.labels.get("good"), Some(&2));
    assert_eq!(a.feedback.labels.get("bad"), Some(&1));
    let b = &r.arms[1];
    assert_eq!(
        (b.requests, b.in_analysis, b.excluded, b.feedback.count),
        (6, 5, 1, 1)
    );
    assert_eq!(b.windows, None);

    assert_eq!(r.differences.len(), 2);
    let d = &r.differences[0];
    assert_eq!((d.arm.as_str(), d.control.as_str()), ("b", "a"));
    let lat = d.latency_ms.unwrap();
    close(lat.diff, 3.0);
    close(lat.low, -0.887741643736975);
    close(lat.high, 6.887741643736975);
    assert!(d.feedback.is_none(), "one feedback on b: no interval");
    assert!(r.differences[1].latency_ms.is_none(), "c has one request");
}

#[test]
fn switchback_estimates_use_window_means_without_burn_in() {
    let mut requests = Vec::new();
    let mut id = 0;
    // Windows 0, 2, 4 are a's (means 10, 20, 30), 1, 3, 5 are b's (20, 30, 40): two
    // in-analysis requests each, ±5 around the mean, and one burn-in request that would
    // dominate any mean it got into.
    for w in 0..6u64 {
        let (arm, mean) = if w % 2 == 0 {
            ("a", 10.0 * (w / 2 + 1) as f64)
        } else {
            ("b", 10.0 * (w / 2 + 2) as f64)
        };
        for (lat, in_analysis) in [(1e6, false), (mean - 5.0, true), (mean + 5.0, true)] {
            id += 1;
            requests.push(RequestRecord {
                policy: "switchback".into(),
                window: Some(w),
                in_analysis,
                ..request("e1", arm, id, lat)
            });
        }
    }
    let records = Records {
        requests,
        ..Records::default()
    };
    let r = report(&info("switchback"), &records);
    assert_eq!(r.unit, Unit::Window);
    let a = &r.arms[0];
    assert_eq!(
        (a.requests, a.in_analysis, a.excluded, a.windows),
        (9, 6, 3, Some(3))
    );
    let lat = a.latency_ms.as_ref().unwrap();
    assert_eq!((lat.mean.n, lat.mean.mean), (3, 20.0), "over window means");
    assert_eq!(lat.quantiles.p50, 20.0, "percentiles stay per request");
    let d = r.differences[0].latency_ms.unwrap();
    assert_eq!((d.n_treatment, d.n_control), (3, 3));
    close(d.diff, 10.0);
    close(d.df, 4.0);
    close(d.low, -12.66957935527519);
    close(d.high, 32.66957935527519);
}

#[test]
fn the_json_keeps_the_contract_shape() {
    let mut records = ab_records();
    records.shadows.push(ShadowRecord {
        experiment_id: "e1".into(),
        request_id: "chatcmpl-1".into(),
        arm: "a".into(),
        shadow_model: "ad-v3".into(),
        mode: "score".into(),
        status: "scored".into(),
        tokens: 5,
        mean_logprob: Some(-1.5),
        ..ShadowRecord::default()
    });
    let r = report(&info("ab"), &records);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["name"], "support");
    assert_eq!(v["arms"][0]["name"], "a");
    assert_eq!(v["arms"][0]["model"], "ad-v1");
    assert_eq!(v["arms"][0]["requests"], 6);
    assert_eq!(v["arms"][0]["latency_ms"]["p50"], 3.0);
    assert_eq!(v["arms"][0]["latency_ms"]["mean"], 3.0);
    assert_eq!(v["shadows"][0]["model"], "ad-v3");
    assert_eq!(v["shadows"][0]["scored"], 1);
    assert_eq!(v["shadows"][0]["dropped"], 0);
    assert_eq!(v["shadows"][0]["mean_logprob"]["mean"], -1.5);
    assert_eq!(v["differences"][0]["latency_ms"]["diff"], 3.0);

    let svg = report_svg(&r);
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    assert_eq!(
        svg.matches("<polyline").count(),
        6,
        "two panels × three arms"
    );
}

#[test]
fn an_experiment_without_records_reports_zeros() {
    let r = report(&info("ab"), &Records::default());
    assert_eq!(r.requests, 0);
    assert_eq!(r.arms.len(), 2);
    assert!(r.arms[0].latency_ms.is_none() && r.arms[0].error_rate.is_none());
    assert_eq!(r.shadows.len(), 1);
    assert_eq!(r.shadows[0].coverage, None);
    assert!(report_svg(&r).contains("</svg>"));
}
