//! The engine loop: the one owner of the model's mutable state (sequences, KV caches, the
//! scheduler, adapter residency). Each turn drains messages, settles adapter residency, drops
//! cancelled requests, then runs one step: plan, forward, and each row's logits back to its
//! sequence.
//!
//! Invariants: every submitted request gets exactly one final event (`Finished` or `Failed`);
//! a request whose receiver is dropped is cancelled at the next step and its KV cache freed;
//! cold adapters load on their own thread while the batch keeps running.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loraplex_adapters::{
    AdapterLimits, AdapterRegistry, AdapterSource, AdapterVersion, BaseModel, CacheConfig, Lease,
};
use loraplex_models::{KvCache, LoadedModel, SeqInput};
use rayon::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::batch::{forward, plan_row, RowLogits};
use crate::constraint::Constraint;
use crate::error::{Result, RuntimeError};
use crate::handle::{EngineHandle, Msg, Submitted};
use crate::loader::Loader;
use crate::request::{Timings, TokenEvent, Usage};
use crate::residency::{Residency, ResidencyView};
use crate::sampling::{logprobs_of, TokenLogprob};
use crate::scheduler::{Scheduled, Scheduler, SchedulerConfig, SeqId};
use crate::sequence::{FinishReason, SequenceState};
use crate::stats::{EngineStats, QueueSlot};

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    pub cache: CacheConfig,
    pub limits: AdapterLimits,
    /// How long a step may wait for adapter loads in flight, so that their requests join it
    /// instead of the next one.
    pub load_wait: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            scheduler: SchedulerConfig::default(),
            cache: CacheConfig::default(),
            limits: AdapterLimits::default(),
            load_wait: Duration::from_millis(20),
        }
    }
}

/// Starts the engine loop on its own thread.
pub fn start(
    model: Arc<LoadedModel>,
    registry: AdapterRegistry,
    cfg: EngineConfig,
) -> Result<EngineHandle> {
    cfg.scheduler
        .validate()
        .map_err(RuntimeError::InvalidConfig)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stats = Arc::new(EngineStats::default());
    let view = ResidencyView::default();
    let context = model.model.config().max_position_embeddings;
    let loader = Loader::new(
        BaseModel::of(&model),
        cfg.limits,
        tx.clone(),
        |src: AdapterSource, result| Msg::Loaded {
            version: src.version,
            result,
        },
    );
    let engine = Engine {
        model,
        rx,
        sched: Scheduler::new(cfg.scheduler),
        seqs: HashMap::new(),
        residency: Residency::new(
            cfg.cache,
            loader.clone(),
            registry.clone(),
            view.clone(),
            stats.clone(),
        ),
        stats: stats.clone(),
        load_wait: cfg.load_wait,
    };
    let thread = std::thread::Builder::new()
        .name("loraplex-engine".into())
        .spawn(move || engine.run())
        .map_err(RuntimeError::EngineStart)?;
    Ok(EngineHandle {
        tx,
        next_id: Arc::new(AtomicU64::new(1)),
        stats,
        view,
        registry,
        max_waiting: cfg.scheduler.max_waiting,
        context,
        loader,
        thread: Arc::new(std::sync::Mutex::new(Some(thread))),
    })
}

struct Seq {
    state: SequenceState,
    prompt: Vec<u32>,
    adapter: Option<AdapterSource>,
    lease: Option<Lease>,
    cache: Option<KvCache>,
    tx: UnboundedSender<TokenEvent>,
    /// Held while the sequence waits; dropped (giving the place back) when it starts.
    slot: Option<QueueSlot>,
    prompt_logprobs: Option<usize>,
    collected_prompt_logprobs: Vec<TokenLogprob>,
    submitted: Instant,
    timings: Timings,
}

struct Engine {
    model: Arc<LoadedModel>,
    rx: Receiver<Msg>,
    sched: Scheduler,
    seqs: HashMap<SeqId, Seq>,
    residency: Residency<Msg>,
    stats: Arc<EngineStats>,
    load_wait: Duration,
}

impl Engine {
    fn run(mut self) {
        loop {
            // Block only when there is nothing to do.
            let first = if self.sched.is_idle() && !self.residency.has_parked() {
                match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            } else {
                None
            };
            let msgs: Vec<Msg> = first.into_iter().chain(self.rx.try_iter()).collect();
            for m in msgs {
                if !self.handle(m) {
                    self.fail_all(|| RuntimeError::ShuttingDown);
                    return;
                }
            }
            if !self.await_loads() {
                self.fail_all(|| RuntimeError::ShuttingDown);
                return;
            }
            let sched = &self.sched;
            self.residency
                .settle(|v| sched.has_waiting(&Some(v.clone())));
            self.drop_cancelled();
            self.step();
            self.residency.publish();
            self.stats
                .running
                .store(self.sched.running_len(), Ordering::Relaxed);
        }
    }

    /// A request whose adapter is still loading would miss the whole step about to start,
    /// while a load takes a small part of one: waits for loads in flight (and handles whatever
    /// arrives meanwhile) up to `load_wait`. Returns false on shutdown.
    fn await_loads(&mut self) -> bool {
        let until = Instant::now() + self.load_wait;
        while self.residency.awaits_load() {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    if !self.handle(m) {
                        return false;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }

    /// Returns false on shutdown.
    fn handle(&mut self, m: Msg) -> bool {
        match m {
            Msg::Submit(s) => self.enqueue(s),
            Msg::Loaded { version, result } => {
                if let Some(e) = self.residency.on_loaded(version.clone(), result) {
                    for id in self.sched.waiting_for(&Some(version.clone())) {
                        let reason = RuntimeError::AdapterLoad {
                            name: version.name.to_string(),
                            source: e.clone(),
                        };
                        self.finish_failed(id, reason);
                    }
                }
            }
            Msg::Unload(name) => self.residency.unload(&name),
            Msg::Offer { src, loaded } => self.residency.on_offer(src, loaded),
            Msg::Shutdown => return false,
        }
        true
    }

    fn enqueue(&mut self, s: Submitted) {
        let vocab = self.model.model.config().vocab_size;
        let state = match SequenceState::new(
            &s.req.prompt,
            s.req.params.clone(),
            &self.model.tokenizer,
            vocab,
        ) {
            Ok(state) => state,
            Err(e) => {
                let _ = s.tx.send(TokenEvent::Failed(e));
                return;
            }
        };
        let key = s.adapter.as_ref().map(|a| a.version.clone());
        if let Some(src) = &s.adapter {
            self.residency.want(src);
        }
        // The handle's slot already bounds the interactive queue with the same number, so this
        // only guards it; the shadow class is bounded here.
        if self
            .sched
            .enqueue(s.id, s.req.priority, key, s.req.prompt.len())
            .is_err()
        {
            let _ = s.tx.send(TokenEvent::Failed(RuntimeError::Overloaded));
            return;
        }
        self.seqs.insert(
            s.id,
            Seq {
                state,
                prompt: s.req.prompt,
                adapter: s.adapter,
                lease: None,
                cache: None,
                tx: s.tx,
                slot: s.slot,
                prompt_logprobs: s.req.prompt_logprobs,
                collected_prompt_logprobs: Vec::new(),
                submitted: s.at,
                timings: Timings::default(),
            },
        );
    }

    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.sched.remove(id);
            self.seqs.remove(&id);
        }
    }

    fn step(&mut self) {
        // Waiting on a version that left memory meanwhile (evicted): fetch it again.
        self.residency.refetch(self.sched.waiting_adapters());
        let ready: HashSet<AdapterVersion> = self
            .sched
            .waiting_adapters()
            .filter(|v| self.residency.is_ready(v))
            .cloned()
            .collect();
        let (seqs, residency) = (&mut self.seqs, &mut self.residency);
        let model = &self.model.model;
        let now = Instant::now();
        let plan = self.sched.schedule(
            |a| a.as_ref().is_none_or(|v| ready.contains(v)),
            |id| {
                let s = seqs.get_mut(&id).expect("scheduled sequences exist");
                if let Some(src) = &s.adapter {
                    match residency.lease(&src.version) {
                        Some(lease) => s.lease = Some(lease),
                        None => return false,
                    }
                    if let Some(at) = residency.arrived(&src.version) {
                        s.timings.adapter_wait = at.saturating_duration_since(s.submitted);
                    }
                }
                s.cache = Some(model.new_cache());
                s.slot = None;
                s.timings.queued = now.duration_since(s.submitted);
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
        // Constrained rows that sample this step compute their masks while the forward runs.
        let mut constraints: Vec<(SeqId, Constraint)> = plan
            .iter()
            .filter(|p| p.decode || p.completes_prompt)
            .filter_map(|p| {
                let s = self.seqs.get_mut(&p.id)?;
                Some((p.id, s.state.take_constraint()?))
            })
            .collect();
        let (result, mask_times) = {
            let inputs: Vec<SeqInput<'_>> = plan
                .iter()
                .zip(&last_tokens)
                .map(|(p, last)| {
                    let s = &self.seqs[&p.id];
                    let (tokens, logits) =
                        plan_row(p, &s.prompt, last, s.prompt_logprobs.is_some());
                    SeqInput::new(tokens, logits).with_adapter(s.lease.as_ref().map(|l| &l.weights))
                })
                .collect();
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let model = &self.model.model;
            if constraints.is_empty() {
                (forward(model, &inputs, &mut refs), Vec::new())
            } else {
                rayon::join(
                    || forward(model, &inputs, &mut refs),
                    || {
                        constraints
                            .par_iter_mut()
                            .map(|(_, c)| c.prepare())
                            .collect::<Vec<_>>()
                    },
                )
            }
        };
        for t in mask_times {
            self.stats.mask_time.record(t);
        }
        for (id, c) in constraints {
            if let Some(s) = self.seqs.get_mut(&id) {
                s.state.restore_constraint(c);
            }
        }
        for (p, c) in plan.iter().zip(caches) {
            self.seqs.get_mut(&p.id).expect("exists").cache = Some(c);
        }
        for (p, rows) in plan.iter().zip(result?) {
            if let Some(rows) = rows {
                self.on_logits(p, rows);
            }
        }
        Ok(())
    }

    fn on_logits(&mut self, p: &Scheduled, rows: RowLogits) {
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
        if p.completes_prompt {
            s.timings.first_token = s.submitted.elapsed();
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
            let timings = Timings {
                total: s.submitted.elapsed(),
                ..s.timings
            };
            tracing::debug!(
                seq = id,
                adapter = s.adapter.as_ref().map(|a| a.version.to_string()),
                adapter_wait_us = timings.adapter_wait.as_micros() as u64,
                queued_us = timings.queued.as_micros() as u64,
                first_token_us = timings.first_token.as_micros() as u64,
                total_us = timings.total.as_micros() as u64,
                "request finished"
            );
            let _ = s.tx.send(TokenEvent::Finished {
                reason,
                usage,
                timings,
            });
        }
    }

    fn finish_failed(&mut self, id: SeqId, e: RuntimeError) {
        self.sched.remove(id);
        if let Some(s) = self.seqs.remove(&id) {
            let _ = s.tx.send(TokenEvent::Failed(e));
        }
    }

    fn fail_all(&mut self, e: impl Fn() -> RuntimeError) {
        let ids: Vec<SeqId> = self.seqs.keys().copied().collect();
        for id in ids {
            self.finish_failed(id, e());
        }
    }
}
