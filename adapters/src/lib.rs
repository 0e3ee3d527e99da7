//! Loraplex adapters: PEFT LoRA format and validation (shared by start-up loading, the engine and,
//! later, uploads), and the resident adapter cache.

mod cache;
mod error;
mod load;
mod peft;

pub use cache::{
    AdapterCache, AdapterRegistry, AdapterSource, CacheConfig, CacheFull, Lease, Resident,
};
pub use error::{AdapterError, Result};
pub use load::{
    load_bytes, load_dir, permute_rows_for_gguf, AdapterInfo, AdapterLimits, BaseModel,
    LoadedAdapter, CONFIG_FILE, WEIGHTS_FILE,
};
pub use peft::{module_name, PeftConfig, TargetModules, TARGETS};
