//! The engine loop: the one owner of the model's mutable state (sequences, KV caches, the
//! scheduler, resident adapters). Everything else talks to it through a cloneable
//! [`EngineHandle`], as TGI's router talks to its queue task.
//!
//! Invariants: every submitted request gets exactly one final event (`Finished` or `Failed`);
//! a request whose receiver is dropped is cancelled at the next step and its KV cache freed;
//! cold adapters load on their own thread while the batch keeps running.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use loraplex_adapters::{
    AdapterCache, AdapterLimits, AdapterRegistry, AdapterSource, BaseModel, CacheConfig, Lease,
    LoadedAdapter,
};
use loraplex_models::{KvCache, LoadedModel, LogitsFor, SeqInput};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::{Result, RuntimeError};
use crate::generate::check_context;
use crate::loader::Loader;
use crate::sampling::{logprobs_of, TokenLogprob};
use crate::scheduler::{AdapterKey, Scheduled, Scheduler, SchedulerConfig, SeqId};
use crate::sequence::{FinishReason, GenerationParams, SequenceState};

/// A validated request, ready for the queue.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    /// Adapter name; `None` is the base model.
    pub adapter: Option<String>,
    /// Log-probabilities of the prompt's own tokens (teacher-forced), with this many
    /// alternatives each.
    pub prompt_logprobs: Option<usize>,
}

impl GenerationRequest {
    pub fn new(prompt: Vec<u32>, params: GenerationParams) -> Self {
        Self {
            prompt,
            params,
            adapter: None,
            prompt_logprobs: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a request's stream carries.
#[derive(Debug)]
pub enum TokenEvent {
    /// Logprobs of prompt tokens `1..` (the first has no context), sent once before any token.
    PromptLogprobs(Vec<TokenLogprob>),
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
    Failed(RuntimeError),
}

/// The receiving side of a request; dropping it cancels the request.
#[derive(Debug)]
pub struct TokenStream {
    rx: UnboundedReceiver<TokenEvent>,
}

impl TokenStream {
    pub async fn next(&mut self) -> Option<TokenEvent> {
        self.rx.recv().await
    }

    /// For synchronous callers (CLI, tests, benchmarks); never call inside an async runtime.
    pub fn blocking_next(&mut self) -> Option<TokenEvent> {
        self.rx.blocking_recv()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    pub cache: CacheConfig,
    pub limits: AdapterLimits,
}

/// Gauges and counters the engine publishes (for metrics and health).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub resident_adapters: AtomicUsize,
    pub resident_adapter_bytes: AtomicUsize,
    pub adapter_loads: AtomicU64,
    pub adapter_evictions: AtomicU64,
    pub steps: AtomicU64,
    /// Names of the adapters in the active tier, most recently used first; refreshed when the
    /// cache changes (for the admin API's residency column).
    pub resident_names: std::sync::RwLock<Vec<String>>,
    /// `name#generation` of every adapter in either tier: a submit for one of these starts no
    /// load.
    pub adapters_in_memory: std::sync::RwLock<HashSet<String>>,
    cache_changes: AtomicU64,
}

enum Msg {
    Submit {
        id: SeqId,
        req: GenerationRequest,
        tx: UnboundedSender<TokenEvent>,
    },
    Loaded {
        src: AdapterSource,
        result: std::result::Result<LoadedAdapter, String>,
    },
    Unload(String),
    /// A validated adapter from outside (an upload) for the second tier.
    Offer {
        src: AdapterSource,
        loaded: LoadedAdapter,
    },
    Shutdown,
}

/// The only way into the engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Msg>,
    next_id: Arc<AtomicU64>,
    stats: Arc<EngineStats>,
    registry: AdapterRegistry,
    max_waiting: usize,
    context: usize,
    loader: Loader<Msg>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Queues a request. Refuses at once what can never run: an unknown adapter, a prompt that
    /// does not fit the context, a full queue.
    pub fn submit(&self, req: GenerationRequest) -> Result<TokenStream> {
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
        let src = match &req.adapter {
            Some(name) => Some(
                self.registry
                    .get(name)
                    .ok_or_else(|| RuntimeError::UnknownAdapter(name.clone()))?,
            ),
            None => None,
        };
        // Reserve a waiting slot; the engine releases it when the sequence starts or ends.
        let reserved = self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        if reserved >= self.max_waiting {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(RuntimeError::Overloaded);
        }
        if let Some(src) = src {
            let in_memory = adapter_key(&src).is_some_and(|k| {
                self.stats
                    .adapters_in_memory
                    .read()
                    .expect("stats lock")
                    .contains(&k)
            });
            if !in_memory {
                self.loader.load(src);
            }
        }
        let (tx, rx) = unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Submit { id, req, tx }).is_err() {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(RuntimeError::ShuttingDown);
        }
        Ok(TokenStream { rx })
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn registry(&self) -> &AdapterRegistry {
        &self.registry
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
    ) -> std::result::Result<LoadedAdapter, loraplex_adapters::AdapterError> {
        self.loader
            .load_dir(dir, loraplex_adapters::Identity::Sha256)
    }

    /// Keeps an adapter validated elsewhere (an upload) in the second tier, so that its first
    /// request skips the disk read and validation. Never evicts an active adapter for it.
    pub fn offer_adapter(&self, src: AdapterSource, loaded: LoadedAdapter) {
        // Seen as in memory from now on, so a submit racing the engine's next publish does not
        // load it a second time.
        if let Some(k) = adapter_key(&src) {
            self.stats
                .adapters_in_memory
                .write()
                .expect("stats lock")
                .insert(k);
        }
        let _ = self.tx.send(Msg::Offer { src, loaded });
    }

    /// Stops the loop after failing whatever is still queued or running, and waits for it.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.lock().expect("engine thread lock").take() {
            let _ = t.join();
        }
    }
}

/// Scheduler key of an adapter version: requests for a replaced adapter queue apart from the old.
fn adapter_key(src: &AdapterSource) -> AdapterKey {
    Some(format!("{}#{}", src.name, src.generation))
}

struct Seq {
    state: SequenceState,
    prompt: Vec<u32>,
    adapter: Option<AdapterSource>,
    lease: Option<Lease>,
    cache: Option<KvCache>,
    tx: UnboundedSender<TokenEvent>,
    prompt_logprobs: Option<usize>,
    collected_prompt_logprobs: Vec<TokenLogprob>,
}

struct Engine {
    model: Arc<LoadedModel>,
    rx: Receiver<Msg>,
    sched: Scheduler,
    seqs: HashMap<SeqId, Seq>,
    cache: AdapterCache,
    loader: Loader<Msg>,
    /// Loaded but not yet admitted to the cache because every slot is leased.
    parked: Vec<(AdapterSource, LoadedAdapter)>,
    stats: Arc<EngineStats>,
    registry: AdapterRegistry,
}

/// Starts the engine loop on its own thread.
pub fn start(
    model: Arc<LoadedModel>,
    registry: AdapterRegistry,
    cfg: EngineConfig,
) -> Result<EngineHandle> {
    cfg.scheduler
        .validate()
        .map_err(|m| RuntimeError::InvalidParameter {
            param: "scheduler",
            message: m,
        })?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stats = Arc::new(EngineStats::default());
    let context = model.model.config().max_position_embeddings;
    let loader = Loader::new(
        BaseModel::of(&model),
        cfg.limits,
        tx.clone(),
        |src, result| Msg::Loaded { src, result },
    );
    let engine = Engine {
        model,
        rx,
        sched: Scheduler::new(cfg.scheduler),
        seqs: HashMap::new(),
        cache: AdapterCache::new(cfg.cache),
        loader: loader.clone(),
        parked: Vec::new(),
        stats: stats.clone(),
        registry: registry.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("loraplex-engine".into())
        .spawn(move || engine.run())
        .map_err(|e| RuntimeError::InvalidParameter {
            param: "engine",
            message: e.to_string(),
        })?;
    Ok(EngineHandle {
        tx,
        next_id: Arc::new(AtomicU64::new(1)),
        stats,
        registry,
        max_waiting: cfg.scheduler.max_waiting,
        context,
        loader,
        thread: Arc::new(std::sync::Mutex::new(Some(thread))),
    })
}

impl Engine {
    fn run(mut self) {
        loop {
            // Block only when there is nothing to do.
            let first = if self.sched.is_idle() && self.parked.is_empty() {
                match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            } else {
                None
            };
            let mut msgs: Vec<Msg> = first.into_iter().collect();
            msgs.extend(self.rx.try_iter());
            for m in msgs {
                if !self.handle(m) {
                    self.fail_all(|| RuntimeError::ShuttingDown);
                    return;
                }
            }
            self.retry_parked();
            self.drop_cancelled();
            self.step();
            self.publish();
        }
    }

    /// Returns false on shutdown.
    fn handle(&mut self, m: Msg) -> bool {
        match m {
            Msg::Submit { id, req, tx } => self.admit_request(id, req, tx),
            Msg::Loaded { src, result } => {
                self.loader.finished(&src);
                match result {
                    Ok(loaded) => self.parked.push((src, loaded)),
                    Err(e) => {
                        for id in self.sched.waiting_for(&adapter_key(&src)) {
                            let still_this_version = self
                                .seqs
                                .get(&id)
                                .and_then(|s| s.adapter.as_ref())
                                .map(|a| a.generation)
                                == Some(src.generation);
                            if still_this_version {
                                self.finish_failed(
                                    id,
                                    RuntimeError::AdapterLoad {
                                        name: src.name.clone(),
                                        reason: e.clone(),
                                    },
                                );
                            }
                        }
                    }
                }
            }
            Msg::Unload(name) => self.cache.unload(&name),
            Msg::Offer { src, loaded } => {
                if self.registry.get(&src.name).as_ref() == Some(&src) {
                    self.cache.offer_warm(&src, loaded);
                }
            }
            Msg::Shutdown => return false,
        }
        true
    }

    fn admit_request(
        &mut self,
        id: SeqId,
        req: GenerationRequest,
        tx: UnboundedSender<TokenEvent>,
    ) {
        let vocab = self.model.model.config().vocab_size;
        let state = match SequenceState::new(
            &req.prompt,
            req.params.clone(),
            &self.model.tokenizer,
            vocab,
        )
        .and_then(|s| {
            check_context(&self.model.model, req.prompt.len(), req.params.max_tokens).map(|_| s)
        }) {
            Ok(s) => s,
            Err(e) => {
                self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                let _ = tx.send(TokenEvent::Failed(e));
                return;
            }
        };
        let adapter = match &req.adapter {
            None => None,
            Some(name) => match self.registry.get(name) {
                Some(src) => Some(src),
                None => {
                    self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                    let _ = tx.send(TokenEvent::Failed(RuntimeError::UnknownAdapter(
                        name.clone(),
                    )));
                    return;
                }
            },
        };
        // Key by name and version so a replaced adapter's requests queue separately.
        let key: AdapterKey = adapter.as_ref().and_then(adapter_key);
        if let Some(src) = &adapter {
            if !self.cache.contains(src) && !self.parked.iter().any(|(p, _)| p == src) {
                self.start_load(src.clone());
            }
        }
        // The handle already bounded the queue with the same number; this only guards it.
        if self.sched.enqueue(id, key, req.prompt.len()).is_err() {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(TokenEvent::Failed(RuntimeError::Overloaded));
            return;
        }
        self.seqs.insert(
            id,
            Seq {
                state,
                prompt: req.prompt,
                adapter,
                lease: None,
                cache: None,
                tx,
                prompt_logprobs: req.prompt_logprobs,
                collected_prompt_logprobs: Vec::new(),
            },
        );
    }

    fn start_load(&mut self, src: AdapterSource) {
        if self.loader.is_loading(&src) {
            return;
        }
        if let Some(loaded) = self.cache.take_warm(&src) {
            self.parked.push((src, loaded));
            return;
        }
        self.loader.load(src);
    }

    fn retry_parked(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        for (src, loaded) in parked {
            // A version replaced while loading is dropped; its waiters reload the new one.
            if self.registry.get(&src.name).map(|s| s.generation) != Some(src.generation)
                && self.sched.waiting_for(&adapter_key(&src)).is_empty()
            {
                continue;
            }
            // Loaded twice (a submit and an eviction raced): the resident copy stays.
            if self.cache.contains(&src) {
                continue;
            }
            match self.cache.insert(&src, loaded) {
                Ok(_) => {}
                Err((_, loaded)) => self.parked.push((src, *loaded)),
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            let was_waiting = self.seqs.get(&id).is_some_and(|s| s.cache.is_none());
            self.sched.remove(id);
            self.seqs.remove(&id);
            if was_waiting {
                self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn step(&mut self) {
        let mut ready: HashSet<AdapterKey> = HashSet::new();
        let mut missing: Vec<AdapterSource> = Vec::new();
        for src in self
            .seqs
            .values()
            .filter(|s| s.cache.is_none())
            .filter_map(|s| s.adapter.as_ref())
        {
            if self.cache.contains(src) {
                ready.insert(adapter_key(src));
            } else if !self.parked.iter().any(|(p, _)| p == src) {
                missing.push(src.clone());
            }
        }
        // Waiting on an adapter that is neither resident nor on its way (evicted meanwhile): load it.
        for src in missing {
            self.start_load(src);
        }
        let (seqs, cache, stats) = (&mut self.seqs, &mut self.cache, &self.stats);
        let model = &self.model.model;
        let plan = self.sched.schedule(
            |a| a.is_none() || ready.contains(a),
            |id| {
                let s = seqs.get_mut(&id).expect("scheduled sequences exist");
                if let Some(src) = &s.adapter {
                    match cache.get(src) {
                        Some(lease) => s.lease = Some(lease),
                        None => return false,
                    }
                }
                s.cache = Some(model.new_cache());
                stats.waiting.fetch_sub(1, Ordering::SeqCst);
                true
            },
        );
        if plan.is_empty() {
            return;
        }
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.run_plan(&plan) {
            tracing::error!(error = %e, "forward pass failed; failing the step's requests");
            for p in &plan {
                self.finish_failed(p.id, RuntimeError::StepFailed(e.to_string()));
            }
        }
    }

    fn run_plan(&mut self, plan: &[Scheduled]) -> Result<()> {
        // Caches leave their sequences for the call (split borrows), and always come back.
        let mut caches: Vec<KvCache> = plan
            .iter()
            .map(|p| {
                self.seqs
                    .get_mut(&p.id)
                    .and_then(|s| s.cache.take())
                    .expect("admitted sequences have caches")
            })
            .collect();
        let last_tokens: Vec<[u32; 1]> = plan
            .iter()
            .map(|p| [self.seqs[&p.id].state.output().last().copied().unwrap_or(0)])
            .collect();
        let result = {
            let mut inputs = Vec::with_capacity(plan.len());
            for (p, last) in plan.iter().zip(&last_tokens) {
                let s = &self.seqs[&p.id];
                let chunk = &s.prompt[p.start..p.start + p.len];
                let (tokens, logits) = if p.decode {
                    (&last[..], LogitsFor::Last)
                } else if s.prompt_logprobs.is_some() {
                    (chunk, LogitsFor::All)
                } else if p.completes_prompt {
                    (chunk, LogitsFor::Last)
                } else {
                    (chunk, LogitsFor::None)
                };
                inputs.push(
                    SeqInput::new(tokens, logits)
                        .with_adapter(s.lease.as_ref().map(|l| &l.weights)),
                );
            }
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            self.model.model.forward(&inputs, &mut refs)
        };
        for (p, c) in plan.iter().zip(caches) {
            self.seqs.get_mut(&p.id).expect("exists").cache = Some(c);
        }
        let outputs = result?;
        for (p, logits) in plan.iter().zip(outputs) {
            let Some(logits) = logits else { continue };
            let rows = logits.to_vec2::<f32>()?;
            self.on_logits(p, rows);
        }
        Ok(())
    }

    fn on_logits(&mut self, p: &Scheduled, rows: Vec<Vec<f32>>) {
        let tok = &self.model.tokenizer;
        let s = self.seqs.get_mut(&p.id).expect("exists");
        if let (Some(n), false) = (s.prompt_logprobs, p.decode) {
            // Row j predicts prompt token start+j+1.
            for (j, row) in rows.iter().enumerate() {
                if let Some(&next) = s.prompt.get(p.start + j + 1) {
                    s.collected_prompt_logprobs.push(logprobs_of(row, next, n));
                }
            }
            if p.completes_prompt {
                let lp = std::mem::take(&mut s.collected_prompt_logprobs);
                let _ = s.tx.send(TokenEvent::PromptLogprobs(lp));
            }
        }
        if !(p.decode || p.completes_prompt) {
            return;
        }
        if s.state.params().max_tokens == 0 {
            self.finish_ok(p.id, FinishReason::Length);
            return;
        }
        let last = rows.last().expect("at least one row");
        match s.state.accept_logits(last, tok) {
            Ok(step) => {
                let _ = s.tx.send(TokenEvent::Token {
                    id: step.id,
                    text: step.text,
                    logprob: step.logprob,
                });
                if let Some(reason) = step.finish {
                    self.finish_ok(p.id, reason);
                }
            }
            Err(e) => self.finish_failed(p.id, e),
        }
    }

    fn finish_ok(&mut self, id: SeqId, reason: FinishReason) {
        self.sched.remove(id);
        if let Some(s) = self.seqs.remove(&id) {
            let usage = Usage {
                prompt_tokens: s.prompt.len(),
                completion_tokens: s.state.output().len(),
            };
            let _ = s.tx.send(TokenEvent::Finished { reason, usage });
        }
    }

    fn finish_failed(&mut self, id: SeqId, e: RuntimeError) {
        self.sched.remove(id);
        if let Some(s) = self.seqs.remove(&id) {
            if s.cache.is_none() {
                self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            let _ = s.tx.send(TokenEvent::Failed(e));
        }
    }

    fn fail_all(&mut self, e: impl Fn() -> RuntimeError) {
        let ids: Vec<SeqId> = self.seqs.keys().copied().collect();
        for id in ids {
            self.finish_failed(id, e());
        }
    }

    fn publish(&self) {
        let s = &self.stats;
        s.running.store(self.sched.running_len(), Ordering::Relaxed);
        s.resident_adapter_bytes
            .store(self.cache.bytes(), Ordering::Relaxed);
        s.adapter_loads.store(self.cache.loads, Ordering::Relaxed);
        s.adapter_evictions
            .store(self.cache.evictions, Ordering::Relaxed);
        s.resident_adapters
            .store(self.cache.len(), Ordering::Relaxed);
        if s.cache_changes.swap(self.cache.changes, Ordering::Relaxed) != self.cache.changes {
            *s.resident_names.write().expect("stats lock") = self.cache.resident_names();
            *s.adapters_in_memory.write().expect("stats lock") = self
                .cache
                .in_memory()
                .map(|(name, generation)| format!("{name}#{generation}"))
                .collect();
        }
    }
}
