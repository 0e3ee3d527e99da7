//! `GET /v1/models` and `GET /v1/models/{id}`: the base model and every servable adapter.

use axum::extract::{Path, State};
use axum::Json;

use crate::error::ApiError;
use crate::experiments::Target;
use crate::resolve::Resolved;
use crate::state::AppState;
use crate::wire::{ModelCard, ModelList};

/// `root` is the adapter's folder; `None` is the base model.
fn card(st: &AppState, id: &str, root: Option<String>) -> ModelCard {
    let base = st.cfg.served_model_name.clone();
    ModelCard {
        id: id.to_string(),
        object: "model",
        created: st.started,
        owned_by: "loraplex",
        parent: root.is_some().then(|| base.clone()),
        root: root.unwrap_or(base),
        max_model_len: st.cfg.max_model_len,
    }
}

fn registered(st: &AppState, name: &str) -> ModelCard {
    let dir = st.engine.registry().get(name).map(|s| s.dir);
    card(
        st,
        name,
        Some(dir.map(|d| d.display().to_string()).unwrap_or_default()),
    )
}

/// A route is a model id of its own, served by its arms (all over the one base model).
fn route_card(st: &AppState, name: &str) -> ModelCard {
    ModelCard {
        owned_by: "loraplex-route",
        ..card(st, name, Some(st.cfg.served_model_name.clone()))
    }
}

pub async fn list(State(st): State<AppState>) -> Json<ModelList> {
    let mut data = vec![card(&st, &st.cfg.served_model_name, None)];
    // Pinned versions a route serves are registered as `name@version`: not names of their own.
    data.extend(
        st.engine
            .registry()
            .names()
            .iter()
            .filter(|n| Target::split_pinned(n).is_none())
            .map(|n| registered(&st, n)),
    );
    data.extend(st.experiments.names().iter().map(|n| route_card(&st, n)));
    Json(ModelList {
        object: "list",
        data,
    })
}

/// A store version not registered yet is shown, not registered: only a request serves it.
pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    if st.experiments.contains(&id) {
        return Ok(Json(route_card(&st, &id)));
    }
    Ok(Json(match st.resolve(&id)? {
        Resolved::Base => card(&st, &id, None),
        Resolved::Adapter(name) => registered(&st, &name),
        Resolved::Stored { name, dir, .. } => card(&st, &name, Some(dir.display().to_string())),
    }))
}
