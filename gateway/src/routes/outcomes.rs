//! What comes after a routed request: `POST /v1/feedback` (an outcome the client observed,
//! joined on the request id) and `GET /v1/experiments/{name}/report` (the per-arm analysis,
//! computed from the records themselves, so that it survives restarts and equals what DuckDB
//! reads from the same files).

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::blocking;
use crate::error::ApiError;
use crate::experiments::{Experiment, Policy};
use crate::extract::ApiJson;
use crate::records::{
    now_ms, read_experiment, report, report_svg, ExperimentInfo, FeedbackRecord, Record,
};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct Feedback {
    pub request_id: String,
    pub value: f64,
    #[serde(default)]
    pub label: Option<String>,
}

/// `POST /v1/feedback` (inference key): appended, not checked against the records (the
/// request may have been served by another replica).
pub async fn feedback(
    State(st): State<AppState>,
    ApiJson(f): ApiJson<Feedback>,
) -> Result<Json<Value>, ApiError> {
    if f.request_id.is_empty() || f.request_id.len() > 256 {
        return Err(ApiError::invalid(
            "request_id",
            "request_id must be 1 to 256 characters",
        ));
    }
    if !f.value.is_finite() {
        return Err(ApiError::invalid("value", "value must be a finite number"));
    }
    if f.label.as_ref().is_some_and(|l| l.len() > 256) {
        return Err(ApiError::invalid(
            "label",
            "label must be at most 256 characters",
        ));
    }
    if !st.recorder.is_enabled() {
        return Err(ApiError::Forbidden(
            "this server keeps no records: start it with --records-dir".into(),
        ));
    }
    st.recorder.record(Record::Feedback(FeedbackRecord {
        ts_ms: now_ms(),
        request_id: f.request_id,
        value: f.value,
        label: f.label,
    }));
    Ok(Json(json!({"object": "feedback", "status": "recorded"})))
}

#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    /// `svg` for the timeline plot instead of JSON.
    #[serde(default)]
    pub format: Option<String>,
}

/// What the report needs of an experiment: its arms (a segmented route's arms are its segment
/// values and `default`) and its shadows.
fn info(exp: &Experiment) -> ExperimentInfo {
    let arms = if exp.policy == Policy::Segmented {
        let mut arms: Vec<(String, String)> = exp
            .default
            .iter()
            .map(|d| ("default".to_string(), d.clone()))
            .collect();
        arms.extend(exp.segments.iter().map(|(k, v)| (k.clone(), v.clone())));
        arms
    } else {
        exp.arms
            .iter()
            .map(|a| (a.name.clone(), a.model.clone()))
            .collect()
    };
    ExperimentInfo {
        name: exp.name.clone(),
        experiment_id: exp.id.clone(),
        policy: exp.policy.as_str().to_string(),
        arms,
        shadows: exp.shadows.iter().map(|s| s.model.clone()).collect(),
    }
}

/// `GET /v1/experiments/{name}/report` (admin key).
pub async fn experiment_report(
    State(st): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let exp = st
        .experiments
        .get(&name)
        .ok_or_else(|| ApiError::ExperimentNotFound(name.clone()))?;
    let Some(dir) = st.recorder.dir().map(|d| d.to_path_buf()) else {
        return Err(ApiError::Forbidden(
            "this server keeps no records: start it with --records-dir".into(),
        ));
    };
    st.recorder.flush().await;
    let info = info(&exp);
    let id = info.experiment_id.clone();
    let rep = blocking(move || {
        let records = read_experiment(&dir, &id)
            .map_err(|e| ApiError::Internal(format!("reading records: {e}")))?;
        Ok(report(&info, &records))
    })
    .await?;
    if q.format.as_deref() == Some("svg") {
        return Ok(([(header::CONTENT_TYPE, "image/svg+xml")], report_svg(&rep)).into_response());
    }
    let mut v = serde_json::to_value(&rep).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let (Value::Object(m), Some(q)) = (&mut v, &st.shadows) {
        let c = q.counts();
        m.insert(
            "shadow_queue".into(),
            json!({"scored": c.scored, "failed": c.failed, "dropped": c.dropped,
                   "queued": c.queued, "running": c.running}),
        );
    }
    Ok(Json(v).into_response())
}
