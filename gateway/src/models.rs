//! `GET /v1/models` and `GET /v1/models/{id}`: the base model and every registered adapter.

use axum::extract::{Path, State};
use axum::Json;

use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::{ModelCard, ModelList};

fn card(st: &AppState, id: &str, adapter: bool) -> ModelCard {
    let base = st.cfg.served_model_name.clone();
    ModelCard {
        id: id.to_string(),
        object: "model",
        created: st.started,
        owned_by: "loraplex",
        root: if adapter {
            st.engine
                .registry()
                .get(id)
                .map(|s| s.dir.display().to_string())
                .unwrap_or_default()
        } else {
            base.clone()
        },
        parent: adapter.then_some(base),
        max_model_len: st.cfg.max_model_len,
    }
}

pub async fn list(State(st): State<AppState>) -> Json<ModelList> {
    let mut data = vec![card(&st, &st.cfg.served_model_name, false)];
    data.extend(
        st.engine
            .registry()
            .names()
            .iter()
            .map(|n| card(&st, n, true)),
    );
    Json(ModelList {
        object: "list",
        data,
    })
}

pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    match st.resolve_model(&id)? {
        None => Ok(Json(card(&st, &id, false))),
        Some(name) => Ok(Json(card(&st, &name, true))),
    }
}
