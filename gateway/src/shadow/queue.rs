//! Live shadows: after a primary response on a route with shadows completes, each shadow model
//! scores what was served (and, in generate mode, answers the request itself). This must never
//! cost the client anything, so submitting never blocks and never fails the caller: jobs wait in
//! a bounded queue (full: dropped and counted), at most `concurrency` of them are in the engine
//! at once, in the shadow scheduling class, and every outcome (scored, failed with a reason,
//! dropped) goes to a sink and the counters, never to the client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loraplex_runtime::{
    EngineHandle, GenerationParams, GenerationRequest, TokenEvent, TokenLogprob,
};
use tokio::sync::{mpsc, Semaphore};

use super::score::{live_priority, score_jobs, ScoreJob, SCORE_TOP_K};
use super::summary::{compare, summarize, Comparison, Summary};
use crate::error::ApiError;

/// Where outcomes go (records, metrics). Called on the submitting task for a drop and on a
/// worker task otherwise: it must be quick and must not block.
pub type ShadowSink = Arc<dyn Fn(ShadowOutcome) + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct ShadowConfig {
    /// Jobs waiting for a place in the engine; one more is dropped.
    pub capacity: usize,
    /// Jobs in the engine at once.
    pub concurrency: usize,
    /// How long one job may take in the engine before it counts as failed.
    pub timeout: Duration,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            capacity: 256,
            concurrency: 4,
            timeout: Duration::from_secs(120),
        }
    }
}

/// What a shadow does with a request.
#[derive(Debug, Clone)]
pub enum LiveMode {
    /// Score the served completion (one teacher-forced pass).
    Score,
    /// Score it, and also answer the request with the primary's parameters (its seed
    /// included) to compare the two answers.
    Generate {
        params: GenerationParams,
        /// The primary's time from submit to its last token.
        primary_latency: Duration,
    },
}

/// A primary response for one shadow to look at.
#[derive(Debug, Clone)]
pub struct LiveShadowJob {
    pub request_id: String,
    pub route: String,
    pub experiment_id: String,
    /// The arm that served the primary.
    pub arm: String,
    /// The shadow as the route names it.
    pub model: String,
    /// The shadow's adapter name; `None` is the base model.
    pub adapter: Option<String>,
    pub mode: LiveMode,
    pub prompt: Vec<u32>,
    /// The served completion's ids.
    pub completion: Vec<u32>,
    /// The primary's logprobs of the served tokens, with their top-k (at least
    /// [`KL_TOP_K`](super::KL_TOP_K) for the KL estimate), for `ppl_ratio` and `kl`; empty when
    /// not captured.
    pub primary_logprobs: Vec<TokenLogprob>,
}

/// Whose outcome it is.
#[derive(Debug, Clone)]
pub struct ShadowInfo {
    pub request_id: String,
    pub route: String,
    pub experiment_id: String,
    pub arm: String,
    pub model: String,
    pub adapter: Option<String>,
    /// "score" or "generate".
    pub mode: &'static str,
}

impl LiveShadowJob {
    fn info(&self) -> ShadowInfo {
        ShadowInfo {
            request_id: self.request_id.clone(),
            route: self.route.clone(),
            experiment_id: self.experiment_id.clone(),
            arm: self.arm.clone(),
            model: self.model.clone(),
            adapter: self.adapter.clone(),
            mode: match self.mode {
                LiveMode::Score => "score",
                LiveMode::Generate { .. } => "generate",
            },
        }
    }
}

/// A generate-mode shadow's own answer.
#[derive(Debug, Clone)]
pub struct Generated {
    pub ids: Vec<u32>,
    pub text: String,
    pub comparison: Comparison,
    /// From submit to the shadow's last token (in the shadow class, so not comparable with the
    /// primary's as a speed: it only runs on capacity left over).
    pub latency: Duration,
    pub primary_latency: Duration,
}

#[derive(Debug, Clone)]
pub enum ShadowResult {
    Scored {
        summary: Summary,
        generated: Option<Generated>,
    },
    Failed {
        reason: String,
    },
    /// The queue was full (or shutting down): never run.
    Dropped,
}

#[derive(Debug, Clone)]
pub struct ShadowOutcome {
    pub info: ShadowInfo,
    pub result: ShadowResult,
}

/// Outcome counters since start-up.
#[derive(Debug, Default)]
struct ShadowStats {
    scored: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShadowCounts {
    pub scored: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Jobs waiting in the queue now.
    pub queued: usize,
    /// Jobs in the engine now.
    pub running: usize,
}

/// The live shadow queue; cheap to clone. Its worker ends when the last clone is dropped.
#[derive(Clone)]
pub struct ShadowQueue {
    tx: mpsc::Sender<LiveShadowJob>,
    permits: Arc<Semaphore>,
    concurrency: usize,
    stats: Arc<ShadowStats>,
    sink: ShadowSink,
}

impl ShadowQueue {
    /// Starts the worker on the current tokio runtime (call from inside one).
    pub fn start(engine: EngineHandle, cfg: ShadowConfig, sink: ShadowSink) -> Self {
        let (tx, rx) = mpsc::channel(cfg.capacity.max(1));
        let concurrency = cfg.concurrency.max(1);
        let q = Self {
            tx,
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            stats: Arc::default(),
            sink,
        };
        tokio::spawn(worker(engine, cfg.timeout, rx, q.worker_side()));
        q
    }

    /// What the worker shares with the handles, without a sender (which would keep it alive).
    fn worker_side(&self) -> Worker {
        Worker {
            permits: self.permits.clone(),
            stats: self.stats.clone(),
            sink: self.sink.clone(),
        }
    }

    /// Queues `job` if there is room; otherwise drops it (counted, and reported to the sink).
    /// Never blocks. Returns whether it was queued.
    pub fn try_submit(&self, job: LiveShadowJob) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(e) => {
                let job = match e {
                    mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
                };
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                (self.sink)(ShadowOutcome {
                    info: job.info(),
                    result: ShadowResult::Dropped,
                });
                false
            }
        }
    }

    pub fn counts(&self) -> ShadowCounts {
        ShadowCounts {
            scored: self.stats.scored.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            dropped: self.stats.dropped.load(Ordering::Relaxed),
            queued: self.tx.max_capacity() - self.tx.capacity(),
            running: self.concurrency - self.permits.available_permits(),
        }
    }
}

#[derive(Clone)]
struct Worker {
    permits: Arc<Semaphore>,
    stats: Arc<ShadowStats>,
    sink: ShadowSink,
}

async fn worker(
    engine: EngineHandle,
    timeout: Duration,
    mut rx: mpsc::Receiver<LiveShadowJob>,
    w: Worker,
) {
    while let Some(job) = rx.recv().await {
        let Ok(permit) = w.permits.clone().acquire_owned().await else {
            return;
        };
        let (engine, w) = (engine.clone(), w.clone());
        tokio::spawn(async move {
            let info = job.info();
            let result = match run(&engine, job, timeout).await {
                Ok((summary, generated)) => {
                    w.stats.scored.fetch_add(1, Ordering::Relaxed);
                    ShadowResult::Scored { summary, generated }
                }
                Err(e) => {
                    w.stats.failed.fetch_add(1, Ordering::Relaxed);
                    let reason = match e {
                        ApiError::Internal(detail) => detail,
                        other => other.to_string(),
                    };
                    tracing::debug!(request_id = %info.request_id, shadow = %info.model, %reason, "shadow failed");
                    ShadowResult::Failed { reason }
                }
            };
            drop(permit);
            (w.sink)(ShadowOutcome { info, result });
        });
    }
}

/// One job: the score through the endpoint's code path, and in generate mode the shadow's own
/// answer at the same time.
async fn run(
    engine: &EngineHandle,
    job: LiveShadowJob,
    timeout: Duration,
) -> Result<(Summary, Option<Generated>), ApiError> {
    let score = ScoreJob {
        adapter: job.adapter.clone(),
        prompt: job.prompt.clone(),
        completion: job.completion.clone(),
        top_k: SCORE_TOP_K,
    };
    let scoring = score_jobs(engine, vec![score], live_priority(), timeout);
    let (scored, generated) = match &job.mode {
        LiveMode::Score => (scoring.await, None),
        LiveMode::Generate {
            params,
            primary_latency,
        } => {
            let answer = generate(engine, &job, params.clone(), timeout);
            let (s, g) = futures_util::future::join(scoring, answer).await;
            let g = g.map(|(ids, text, latency)| Generated {
                comparison: compare(&job.completion, &ids),
                ids,
                text,
                latency,
                primary_latency: *primary_latency,
            });
            (s, Some(g?))
        }
    };
    let lps = scored
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(ApiError::Internal("no score".into())))?;
    let reference = (!job.primary_logprobs.is_empty()).then_some(&job.primary_logprobs[..]);
    let summary = summarize(&lps, reference)
        .ok_or_else(|| ApiError::invalid("completion", "the completion is empty"))?;
    Ok((summary, generated))
}

/// The shadow's own answer: ids, text, and the time it took.
async fn generate(
    engine: &EngineHandle,
    job: &LiveShadowJob,
    mut params: GenerationParams,
    timeout: Duration,
) -> Result<(Vec<u32>, String, Duration), ApiError> {
    // The comparison needs the tokens only.
    params.logprobs = None;
    let req = GenerationRequest {
        prompt: job.prompt.clone(),
        params,
        adapter: job.adapter.clone(),
        prompt_logprobs: None,
        priority: live_priority(),
    };
    let start = Instant::now();
    let mut s = engine.submit(req)?;
    let work = async move {
        let (mut ids, mut text) = (Vec::new(), String::new());
        loop {
            match s.next().await {
                Some(TokenEvent::Token { id, text: t, .. }) => {
                    ids.push(id);
                    text.push_str(&t);
                }
                Some(TokenEvent::PromptLogprobs(_)) => {}
                Some(TokenEvent::Finished { .. }) => return Ok((ids, text, start.elapsed())),
                Some(TokenEvent::Failed(e)) => return Err(e.into()),
                None => return Err(ApiError::Internal("the engine closed a stream".into())),
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ApiError::Timeout)?
}
