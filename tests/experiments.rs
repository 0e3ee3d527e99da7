//! The experiments admin API through `app().oneshot(...)`: create, list, show (with a
//! switchback's schedule), patch, delete; every bad configuration a 400 with its reason and the
//! routes unchanged; routes surviving a rebuilt server over the same directory; admin key only.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use loraplex_adapters::{AdapterLimits, DirStore};
use loraplex_gateway::experiments::{ManualClock, RouteTable};
use loraplex_gateway::{app, AppState, GatewayConfig};
use loraplex_runtime::EngineConfig;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::util::{tiny_arc, tiny_registry};

const ADMIN: &str = "admin-secret";
const INFER: &str = "inference-secret";
const T0: u64 = 1_700_000_000_000;

/// A gateway over an adapter store in `dir/store` and routes in `dir/routes`, on a manual clock.
fn state_over(dir: &Path, clock: &Arc<ManualClock>) -> AppState {
    let cfg = GatewayConfig {
        served_model_name: "tiny".into(),
        max_model_len: 512,
        admin_api_key: Some(ADMIN.into()),
        api_key: Some(INFER.into()),
        ..Default::default()
    };
    let lm = tiny_arc();
    let engine_cfg = EngineConfig {
        limits: AdapterLimits { max_rank: 32 },
        ..Default::default()
    };
    let engine = loraplex_runtime::start(lm.clone(), tiny_registry(), engine_cfg).unwrap();
    let (store, _) = DirStore::open(&dir.join("store")).unwrap();
    let routes = RouteTable::open(Some(&dir.join("routes")), "tiny", clock.clone()).unwrap();
    AppState::new(cfg, engine, lm, None)
        .with_store(Arc::new(store))
        .with_experiments(Arc::new(routes))
}

async fn call(
    st: &AppState,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let body = body.map(|v| Body::from(v.to_string())).unwrap_or_default();
    let resp = app(st.clone())
        .oneshot(b.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

async fn admin(st: &AppState, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    call(st, method, uri, Some(ADMIN), body).await
}

fn support() -> Value {
    json!({"name": "support", "type": "ab", "unit": "user",
           "arms": [{"name": "a", "model": "a-r8-qv", "weight": 50},
                    {"name": "b", "model": "b-r16-all", "weight": 50}],
           "shadows": [{"model": "c-r4-rslora"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_show_patch_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let st = state_over(dir.path(), &clock);
    let (status, created) = admin(&st, "POST", "/v1/experiments", Some(support())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["object"], "experiment");
    assert_eq!(created["status"], "active");
    assert_eq!(created["created"], T0 / 1000);
    assert_eq!(created["shadows"][0]["mode"], "score");
    assert_eq!(created["shadows"][0]["sample"], 1.0);
    assert!(created["id"].as_str().unwrap().starts_with("exp_"));
    assert!(!created["salt"].as_str().unwrap().is_empty());

    let (status, again) = admin(&st, "POST", "/v1/experiments", Some(support())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    let (status, list) = admin(&st, "GET", "/v1/experiments", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (status, shown) = admin(&st, "GET", "/v1/experiments/support", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, created);

    let patch = json!({"arms": [{"name": "b", "weight": 10}], "status": "paused", "shadows": []});
    let (status, patched) = admin(&st, "PATCH", "/v1/experiments/support", Some(patch)).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["status"], "paused");
    assert_eq!(patched["arms"][1]["weight"], 10.0);
    assert_eq!(patched["shadows"], json!([]));
    assert_eq!(patched["salt"], created["salt"]);
    let a = st
        .experiments
        .assign("support", &Default::default())
        .unwrap();
    assert_eq!(
        (a.arm.as_str(), a.in_analysis),
        ("a", false),
        "paused: control"
    );

    let (status, deleted) = admin(&st, "DELETE", "/v1/experiments/support", None).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["deleted"], true);
    let (status, gone) = admin(&st, "GET", "/v1/experiments/support", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["error"]["code"], "experiment_not_found");
    assert!(st
        .experiments
        .assign("support", &Default::default())
        .is_none());
    let (status, _) = admin(&st, "DELETE", "/v1/experiments/support", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchback_shows_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let st = state_over(dir.path(), &clock);
    let body = json!({"name": "latency", "type": "switchback", "window_s": 600, "burn_in_s": 60,
        "seed": 42, "arms": [{"name": "a", "model": "a-r8-qv"}, {"name": "b", "model": "tiny"}]});
    let (status, created) = admin(&st, "POST", "/v1/experiments", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["schedule"].as_array().unwrap().len(), 12);
    clock.set(T0 + 3 * 600_000 + 5);
    let (_, shown) = admin(&st, "GET", "/v1/experiments/latency?windows=3", None).await;
    let schedule = shown["schedule"].as_array().unwrap();
    assert_eq!(schedule.len(), 3);
    assert_eq!(schedule[0]["id"], 3);
    assert_eq!(schedule[0]["start_ms"], T0 + 3 * 600_000);
    assert_eq!(schedule[0]["analysis_from_ms"], T0 + 3 * 600_000 + 60_000);
    let now = st
        .experiments
        .assign("latency", &Default::default())
        .unwrap();
    assert_eq!(schedule[0]["arm"], now.arm.as_str());
    assert!(!now.in_analysis, "5 ms into the window is burn-in");
    let (status, _) = admin(&st, "GET", "/v1/experiments/latency?windows=5000", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_400_with_a_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let st = state_over(dir.path(), &clock);
    let (status, _) = admin(&st, "POST", "/v1/experiments", Some(support())).await;
    assert_eq!(status, StatusCode::CREATED);
    let two = |m1: &str, w1: f64, m2: &str| json!([{"name": "a", "model": m1, "weight": w1}, {"name": "b", "model": m2}]);
    let cases = [
        (
            json!({"name": "x", "type": "ab", "arms": two("a-r8-qv", 0.0, "b-r16-all")}),
            Some("arms[0].weight"),
        ),
        (
            json!({"name": "x", "type": "ab", "arms": two("a-r8-qv", 1.0, "missing")}),
            Some("arms[1].model"),
        ),
        (
            json!({"name": "x", "type": "ab", "arms": two("a-r8-qv@7", 1.0, "tiny")}),
            Some("arms[0].model"),
        ),
        (json!({"name": "a-r8-qv", "model": "tiny"}), Some("name")),
        (json!({"name": "tiny", "model": "a-r8-qv"}), Some("name")),
        (
            json!({"name": "x", "type": "switchback", "window_s": 30, "burn_in_s": 60,
                "arms": two("a-r8-qv", 1.0, "tiny")}),
            Some("burn_in_s"),
        ),
        (
            json!({"name": "x", "type": "ab", "arms": [{"name": "a", "model": "a-r8-qv"},
                {"name": "a", "model": "tiny"}]}),
            Some("arms[1].name"),
        ),
        (json!({"name": "x", "type": "ab", "arms": []}), Some("arms")),
        (
            json!({"name": "x", "type": "ab", "arms": two("a-r8-qv", 1.0, "tiny"),
                "shadows": [{"model": "a-r8-qv"}]}),
            Some("shadows[0].model"),
        ),
        (
            json!({"name": "x", "type": "ab", "arms": two("a-r8-qv", 1.0, "tiny"), "windw_s": 3}),
            None,
        ),
        (
            json!({"name": "x", "type": "canary", "model": "tiny"}),
            None,
        ),
    ];
    let (_, before) = admin(&st, "GET", "/v1/experiments", None).await;
    let file = std::fs::read(dir.path().join("routes/experiments.json")).unwrap();
    for (body, param) in cases {
        let (status, err) = admin(&st, "POST", "/v1/experiments", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert!(
            !err["error"]["message"].as_str().unwrap().is_empty(),
            "{err}"
        );
        if let Some(p) = param {
            assert_eq!(err["error"]["param"], p, "{body}: {err}");
        }
    }
    let bad_patch = json!({"status": "paused", "arms": [{"name": "b", "weight": -1}]});
    let (status, err) = admin(&st, "PATCH", "/v1/experiments/support", Some(bad_patch)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, _) = admin(&st, "PATCH", "/v1/experiments/nope", Some(json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, after) = admin(&st, "GET", "/v1/experiments", None).await;
    assert_eq!(before, after);
    assert_eq!(
        std::fs::read(dir.path().join("routes/experiments.json")).unwrap(),
        file
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_survive_a_rebuilt_server_and_keep_assigning_alike() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let st = state_over(dir.path(), &clock);
    let (_, created) = admin(&st, "POST", "/v1/experiments", Some(support())).await;
    let arms = |st: &AppState| -> Vec<String> {
        (0..100)
            .map(|i| {
                let unit = format!("user-{i}");
                let attrs = loraplex_gateway::experiments::Attributes {
                    user: Some(&unit),
                    ..Default::default()
                };
                st.experiments.assign("support", &attrs).unwrap().arm
            })
            .collect()
    };
    let before = arms(&st);
    drop(st);
    let st = state_over(dir.path(), &clock);
    let (status, shown) = admin(&st, "GET", "/v1/experiments/support", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, created);
    assert_eq!(arms(&st), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_experiments_api_takes_the_admin_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let st = state_over(dir.path(), &clock);
    for (method, uri, body) in [
        ("POST", "/v1/experiments", Some(support())),
        ("GET", "/v1/experiments", None),
        ("GET", "/v1/experiments/support", None),
        (
            "PATCH",
            "/v1/experiments/support",
            Some(json!({"status": "paused"})),
        ),
        ("DELETE", "/v1/experiments/support", None),
    ] {
        let (status, _) = call(&st, method, uri, None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        let (status, _) = call(&st, method, uri, Some(INFER), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}");
    }
    assert!(st.experiments.names().is_empty());
}
