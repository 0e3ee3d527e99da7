//! The experiments admin API (`/v1/experiments`): create, list, show, patch (weights, pause,
//! resume, shadows, segments), delete. The table validates and persists; the handlers run it
//! off the async threads (validation reads the adapter store) and under the admin lock, so a
//! route and an adapter delete cannot race past each other's checks.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::blocking;
use crate::error::ApiError;
use crate::experiments::{Experiment, ExperimentPatch, ExperimentSpec, Policy};
use crate::extract::ApiJson;
use crate::state::AppState;

/// Switchback windows `GET /v1/experiments/{name}` shows unless `?windows=` says otherwise.
const SCHEDULE_WINDOWS: usize = 12;
const MAX_SCHEDULE_WINDOWS: usize = 1000;

/// An experiment as the API shows it: the stored form plus `object`, `created` (Unix seconds,
/// as model cards) and, when asked, a switchback's upcoming windows.
fn view(st: &AppState, exp: &Experiment, windows: usize) -> Value {
    let mut v = serde_json::to_value(exp).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("object".into(), json!("experiment"));
        m.insert("created".into(), json!(exp.created_ms / 1000));
        if exp.policy == Policy::Switchback && windows > 0 {
            let schedule = st
                .experiments
                .schedule(&exp.name, windows)
                .unwrap_or_default();
            m.insert("schedule".into(), json!(schedule));
        }
    }
    v
}

/// `POST /v1/experiments` → 201 with the experiment.
pub async fn create(
    State(st): State<AppState>,
    ApiJson(spec): ApiJson<ExperimentSpec>,
) -> Result<Response, ApiError> {
    let _writer = st.admin_lock.lock().await;
    let s = st.clone();
    let exp = blocking(move || s.experiments.create(spec, &s)).await?;
    tracing::info!(route = %exp.name, policy = exp.policy.as_str(), id = %exp.id, "experiment created");
    Ok((StatusCode::CREATED, Json(view(&st, &exp, SCHEDULE_WINDOWS))).into_response())
}

/// `GET /v1/experiments`: every route, without schedules.
pub async fn list(State(st): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = st
        .experiments
        .list()
        .iter()
        .map(|e| view(&st, e, 0))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[derive(Debug, Deserialize)]
pub struct ShowParams {
    /// How many switchback windows to show, from the current one.
    pub windows: Option<usize>,
}

/// `GET /v1/experiments/{name}[?windows=N]`.
pub async fn show(
    State(st): State<AppState>,
    UrlPath(name): UrlPath<String>,
    params: Result<Query<ShowParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("windows", e.body_text()))?;
    let windows = params.windows.unwrap_or(SCHEDULE_WINDOWS);
    if windows > MAX_SCHEDULE_WINDOWS {
        return Err(ApiError::invalid(
            "windows",
            format!("at most {MAX_SCHEDULE_WINDOWS} windows"),
        ));
    }
    let exp = st
        .experiments
        .get(&name)
        .ok_or(ApiError::ExperimentNotFound(name))?;
    Ok(Json(view(&st, &exp, windows)))
}

/// `PATCH /v1/experiments/{name}`: applied whole or not at all.
pub async fn update(
    State(st): State<AppState>,
    UrlPath(name): UrlPath<String>,
    ApiJson(patch): ApiJson<ExperimentPatch>,
) -> Result<Json<Value>, ApiError> {
    let _writer = st.admin_lock.lock().await;
    let s = st.clone();
    let exp = blocking(move || s.experiments.update(&name, patch, &s)).await?;
    tracing::info!(route = %exp.name, status = ?exp.status, "experiment updated");
    Ok(Json(view(&st, &exp, SCHEDULE_WINDOWS)))
}

/// `DELETE /v1/experiments/{name}`: the name stops routing at once (404 for new requests);
/// records already written keep its experiment id.
pub async fn delete(
    State(st): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let _writer = st.admin_lock.lock().await;
    let s = st.clone();
    let exp = blocking(move || s.experiments.stop(&name)).await?;
    tracing::info!(route = %exp.name, id = %exp.id, "experiment stopped");
    Ok(Json(
        json!({"id": exp.name, "object": "experiment", "experiment_id": exp.id, "deleted": true}),
    ))
}
