//! The only way into the engine: a cloneable [`EngineHandle`] that refuses at once what can
//! never run and sends the rest to the engine thread as messages, as TGI's router talks to its
//! queue task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use loraplex_adapters::{
    AdapterError, AdapterRegistry, AdapterSource, AdapterVersion, Identity, LoadedAdapter,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::error::{Result, RuntimeError};
use crate::loader::{LoadResult, Loader};
use crate::request::{GenerationRequest, Priority, TokenEvent, TokenStream};
use crate::residency::ResidencyView;
use crate::scheduler::SeqId;
use crate::stats::{EngineStats, QueueSlot};

/// What the engine thread receives.
pub(crate) enum Msg {
    Submit(Submitted),
    Loaded {
        version: AdapterVersion,
        result: LoadResult,
    },
    Unload(String),
    /// A validated adapter from outside (an upload) for the second tier.
    Offer {
        src: AdapterSource,
        loaded: LoadedAdapter,
    },
    Shutdown,
}

/// A request that passed the handle's checks, with everything resolved at `submit`.
pub(crate) struct Submitted {
    pub id: SeqId,
    pub req: GenerationRequest,
    /// The adapter version registered for the request's name when it was submitted.
    pub adapter: Option<AdapterSource>,
    pub tx: UnboundedSender<TokenEvent>,
    /// The interactive queue's place; `None` for the shadow class, which the scheduler bounds
    /// on its own so that shadow work never takes a place a client's request could have.
    pub slot: Option<QueueSlot>,
    pub at: Instant,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) tx: Sender<Msg>,
    pub(crate) next_id: Arc<AtomicU64>,
    pub(crate) stats: Arc<EngineStats>,
    pub(crate) view: ResidencyView,
    pub(crate) registry: AdapterRegistry,
    pub(crate) max_waiting: usize,
    pub(crate) context: usize,
    pub(crate) loader: Loader<Msg>,
    pub(crate) thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Queues a request. Refuses at once what can never run: an empty prompt, one that does not
    /// fit the context (a guard: callers validate it first), an unknown adapter, a full queue.
    pub fn submit(&self, req: GenerationRequest) -> Result<TokenStream> {
        let at = Instant::now();
        if req.prompt.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        if req.prompt.len() + req.params.max_tokens > self.context {
            return Err(RuntimeError::ContextOverflow {
                prompt: req.prompt.len(),
                max_tokens: req.params.max_tokens,
                context: self.context,
            });
        }
        let adapter = match &req.adapter {
            Some(name) => Some(
                self.registry
                    .get(name)
                    .ok_or_else(|| RuntimeError::UnknownAdapter(name.clone()))?,
            ),
            None => None,
        };
        let slot = match req.priority {
            Priority::Interactive => Some(
                QueueSlot::reserve(&self.stats, self.max_waiting)
                    .ok_or(RuntimeError::Overloaded)?,
            ),
            Priority::Shadow => None,
        };
        // Start a cold load now, so the disk read overlaps the step in progress.
        if let Some(src) = &adapter {
            if !self.view.in_memory(&src.version) {
                self.loader.load(src.clone());
            }
        }
        let (tx, rx) = unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = Msg::Submit(Submitted {
            id,
            req,
            adapter,
            tx,
            slot,
            at,
        });
        self.tx.send(msg).map_err(|_| RuntimeError::ShuttingDown)?;
        Ok(TokenStream { rx })
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn registry(&self) -> &AdapterRegistry {
        &self.registry
    }

    /// Whether some version of `name` is in the active tier of the adapter cache.
    pub fn is_resident(&self, name: &str) -> bool {
        self.view.is_resident(name)
    }

    /// Names in the active tier, most recently used first.
    pub fn resident_names(&self) -> Vec<String> {
        self.view.resident_names()
    }

    /// Drops the resident copy of `name` (after the registry no longer lists it, or to force a
    /// reload); running sequences keep their lease.
    pub fn unload_adapter(&self, name: &str) {
        let _ = self.tx.send(Msg::Unload(name.to_string()));
    }

    /// Validates and builds the PEFT adapter at `dir` for this engine's base model and limits,
    /// with the code and the thread pool of the engine's own loads. Blocking.
    pub fn validate_adapter(
        &self,
        dir: &std::path::Path,
    ) -> std::result::Result<LoadedAdapter, AdapterError> {
        self.loader.load_dir(dir, Identity::Sha256)
    }

    /// Keeps an adapter validated elsewhere (an upload) in the second tier, so that its first
    /// request skips the disk read and validation. Never evicts an active adapter for it.
    pub fn offer_adapter(&self, src: AdapterSource, loaded: LoadedAdapter) {
        // Claimed like a load, so a submit racing the hand-over does not load it again.
        if self.loader.claim(&src.version) {
            let _ = self.tx.send(Msg::Offer { src, loaded });
        }
    }

    /// Stops the loop after failing whatever is still queued or running, and waits for it.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.lock().expect("engine thread lock").take() {
            let _ = t.join();
        }
    }
}
