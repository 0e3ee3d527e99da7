//! Loraplex adapters: PEFT LoRA format and validation (shared by start-up loading, the engine and
//! uploads), the resident adapter cache, and the durable store of uploaded versions.

mod cache;
mod dir_store;
mod error;
mod inspect;
mod load;
mod peft;
mod registry;
mod store;
mod targets;

pub use cache::{AdapterCache, CacheConfig, CacheFull, Lease, Resident};
pub use dir_store::DirStore;
pub use error::{AdapterError, Result};
pub use inspect::{inspect_dir, AdapterSummary};
pub use load::{
    load_bytes, load_bytes_checked, load_dir, load_dir_checked, permute_rows_for_gguf, AdapterInfo,
    AdapterLimits, BaseModel, Identity, LoadedAdapter, Recorded, CONFIG_FILE, WEIGHTS_FILE,
};
pub use peft::{PeftConfig, TargetModules};
pub use registry::{AdapterRegistry, AdapterSource, AdapterVersion};
pub use store::{
    check_name, AdapterStore, Manifest, Staging, StoreCheck, StoredAdapter, VersionMeta,
};
pub use targets::{module_name, targets, TARGETS};
