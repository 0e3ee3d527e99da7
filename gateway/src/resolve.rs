//! Which model a request names. Resolving only looks: a store version this server has not
//! registered yet is registered by [`Resolved::register`], which handlers call after the
//! request was validated, so a refused request leaves the registry as it was.

use std::path::PathBuf;

use loraplex_adapters::Recorded;

use crate::error::ApiError;
use crate::state::AppState;

/// The model of a request.
#[derive(Debug, Clone)]
pub enum Resolved {
    Base,
    /// An adapter in the engine's registry.
    Adapter(String),
    /// The store's current version of an adapter the registry does not hold: one that another
    /// gateway sharing the store committed. It is served on first request, as LoRAX loads
    /// adapters on demand.
    Stored {
        name: String,
        /// The version's folder in the store, and the identity its manifest recorded.
        dir: PathBuf,
        recorded: Recorded,
    },
}

impl Resolved {
    /// The adapter name engine requests carry; `None` for the base model.
    pub fn adapter(&self) -> Option<&str> {
        match self {
            Resolved::Base => None,
            Resolved::Adapter(name) | Resolved::Stored { name, .. } => Some(name),
        }
    }

    /// Makes a store version servable, unless a request or an install registered the name
    /// since it was resolved (the newer registration wins).
    pub fn register(self, st: &AppState) {
        if let Resolved::Stored {
            name,
            dir,
            recorded,
        } = self
        {
            let registry = st.engine.registry();
            if registry.get(&name).is_none() {
                registry.register_version(&name, dir, Some(recorded));
            }
        }
    }
}

impl AppState {
    /// Finds `model` among the base, the registered adapters and the store; unknown is 404.
    pub fn resolve(&self, model: &str) -> Result<Resolved, ApiError> {
        if model == self.cfg.served_model_name {
            return Ok(Resolved::Base);
        }
        if self.engine.registry().get(model).is_some() {
            return Ok(Resolved::Adapter(model.to_string()));
        }
        if let Some(store) = &self.store {
            if let Ok(Some(version)) = store.current(model) {
                return Ok(Resolved::Stored {
                    name: model.to_string(),
                    recorded: version.manifest.recorded(),
                    dir: version.dir,
                });
            }
        }
        Err(ApiError::ModelNotFound(model.to_string()))
    }
}
