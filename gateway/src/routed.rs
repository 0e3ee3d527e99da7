//! What a request on a route adds to a plain one: the arm that serves it (chosen once, before
//! validation), the response headers naming it, the logprobs its shadows need captured while
//! the primary generates, and, once the primary is over, its record and its shadow jobs. None
//! of it can change what the client receives or fail the request: records and shadows are
//! handed to queues that drop (and count) rather than wait.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use loraplex_runtime::{GenerationParams, GenerationRequest};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::experiments::{Assignment, Attributes, ShadowMode, Target};
use crate::generation::{self, Events};
use crate::records::{now_ms, Record, RequestRecord};
use crate::resolve::Resolved;
use crate::shadow::{LiveMode, LiveShadowJob, KL_TOP_K};
use crate::state::AppState;
use crate::trace::{self, Outcome, Trace};

/// A request's attributes a route may assign by.
pub fn attributes<'a>(
    headers: &'a HeaderMap,
    user: Option<&'a str>,
    metadata: Option<&'a Map<String, Value>>,
) -> Attributes<'a> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Attributes {
        user,
        unit_header: header("x-loraplex-unit"),
        segment_header: header("x-loraplex-segment"),
        metadata,
    }
}

impl AppState {
    /// What serves `model`: a route's arm for this request, or the base or adapter so named.
    pub fn route(
        &self,
        model: &str,
        attrs: &Attributes<'_>,
    ) -> Result<(Resolved, Option<Assignment>), ApiError> {
        match self.experiments.assign(model, attrs) {
            Some(a) => Ok((self.resolve_target(&a.target)?, Some(a))),
            None => Ok((self.resolve(model)?, None)),
        }
    }

    /// A route target as a servable model. A pinned version is served under its own registry
    /// name ([`Target::pinned_name`]), so it and the current version of the same adapter can
    /// share a batch.
    pub fn resolve_target(&self, target: &Target) -> Result<Resolved, ApiError> {
        match target {
            Target::Base => Ok(Resolved::Base),
            Target::Adapter {
                name,
                version: None,
            } => self.resolve(name),
            Target::Adapter {
                name,
                version: Some(v),
            } => {
                let alias = Target::pinned_name(name, *v);
                if self.engine.registry().get(&alias).is_some() {
                    return Ok(Resolved::Adapter(alias));
                }
                let stored = match &self.store {
                    Some(store) => store.version(name, *v)?,
                    None => None,
                };
                let stored = stored.ok_or_else(|| ApiError::ModelNotFound(alias.clone()))?;
                Ok(Resolved::Stored {
                    name: alias,
                    recorded: stored.manifest.recorded(),
                    dir: stored.dir,
                })
            }
        }
    }
}

/// A routed request in flight.
pub struct Routed {
    st: AppState,
    assignment: Assignment,
    adapter: Option<String>,
    adapter_version: Option<u64>,
    endpoint: &'static str,
    stream: bool,
    http_request_id: String,
    prompt: Vec<u32>,
    params: GenerationParams,
}

impl Routed {
    /// After validation and registration, before submit: `requests` are the request's choices,
    /// whose first one the shadows follow; its logprobs are captured if the client did not ask
    /// for them (the reply writes only what the client asked for). The prompt and parameters
    /// are kept only for a route with shadows.
    pub fn new(
        st: &AppState,
        assignment: Assignment,
        requests: &mut [GenerationRequest],
        endpoint: &'static str,
        stream: bool,
        http_request_id: String,
    ) -> Self {
        let (mut adapter, mut prompt, mut params) = (None, Vec::new(), GenerationParams::default());
        if let Some(r) = requests.first_mut() {
            adapter = r.adapter.clone();
            if !assignment.shadows.is_empty() {
                // Captured with the KL estimate's alternatives however many the client asked
                // for: the reply writes only the client's count (`Reply::top_logprobs`).
                let asked = r.params.logprobs.unwrap_or(0);
                r.params.logprobs = Some(asked.max(KL_TOP_K));
                prompt = r.prompt.clone();
                params = r.params.clone();
            }
        }
        let adapter_version = adapter
            .as_deref()
            .and_then(|a| st.engine.registry().get(a))
            .and_then(|s| s.store_version());
        metrics::counter!("loraplex_route_requests_total",
            "route" => assignment.route.clone(), "arm" => assignment.arm.clone())
        .increment(1);
        Routed {
            st: st.clone(),
            assignment,
            adapter,
            adapter_version,
            endpoint,
            stream,
            http_request_id,
            prompt,
            params,
        }
    }

    /// The headers naming the arm that serves the response.
    fn header_values(&self) -> HeaderMap {
        let a = &self.assignment;
        let mut h = HeaderMap::new();
        let mut put = |name: &'static str, value: &str| {
            // A segment value need not be a valid header value: percent-encode what is not.
            let v = HeaderValue::from_str(value).unwrap_or_else(|_| {
                HeaderValue::from_str(&percent(value)).expect("percent-encoded is ASCII")
            });
            h.insert(name, v);
        };
        put("x-loraplex-route", &a.route);
        put("x-loraplex-arm", &a.arm);
        put("x-loraplex-model", &a.model);
        if let Some(v) = self.adapter_version {
            put("x-loraplex-adapter-version", &v.to_string());
        }
        h
    }

    /// The request was refused before it ran (a full queue, a shutdown): recorded as an error.
    fn refused(self, request_id: String, e: &ApiError) {
        let trace = Trace {
            choices: Vec::new(),
            first_token: None,
            elapsed: Duration::ZERO,
            outcome: Outcome::Failed(trace::error_code(e)),
        };
        self.finish(request_id, trace);
    }

    /// `all` unchanged; when it ends, the request's record and its shadows.
    fn tap(self, all: Events, choices: usize, request_id: String) -> Events {
        trace::tap(all, choices, move |t| self.finish(request_id, t))
    }

    fn finish(self, request_id: String, t: Trace) {
        let a = &self.assignment;
        let first = t.choices.first();
        let (status, error) = match &t.outcome {
            Outcome::Ok => ("ok", None),
            Outcome::Failed(code) => ("error", Some(code.clone())),
            Outcome::Cancelled => ("cancelled", None),
        };
        let usage = t.choices.iter().fold((0, 0), |(p, c), ch| {
            (
                p.max(ch.usage.prompt_tokens),
                c + ch.usage.completion_tokens,
            )
        });
        let latency = t.elapsed.as_secs_f64();
        let labels = [
            ("route", a.route.clone()),
            ("arm", a.arm.clone()),
            ("status", status.to_string()),
        ];
        metrics::histogram!("loraplex_route_request_latency_seconds", &labels).record(latency);
        if let Some(ft) = t.first_token {
            metrics::histogram!("loraplex_route_time_to_first_token_seconds",
                "route" => a.route.clone(), "arm" => a.arm.clone())
            .record(ft.as_secs_f64());
        }
        metrics::counter!("loraplex_route_generation_tokens_total",
            "route" => a.route.clone(), "arm" => a.arm.clone())
        .increment(usage.1 as u64);
        self.st.recorder.record(Record::Request(RequestRecord {
            ts_ms: now_ms(),
            request_id: request_id.clone(),
            http_request_id: Some(self.http_request_id.clone()),
            route: a.route.clone(),
            experiment_id: a.experiment_id.clone(),
            policy: a.policy.to_string(),
            arm: a.arm.clone(),
            unit_hash: a.unit_hash.clone(),
            unit_source: a.unit_source.to_string(),
            segment: a.segment.clone(),
            window: a.window,
            in_analysis: a.in_analysis,
            model: a.model.clone(),
            adapter: self.adapter.clone(),
            adapter_version: self.adapter_version,
            endpoint: self.endpoint.to_string(),
            stream: self.stream,
            status: status.to_string(),
            error,
            finish_reason: first.and_then(|c| c.finish).map(|f| f.as_str().to_string()),
            prompt_tokens: usage.0 as u64,
            completion_tokens: usage.1 as u64,
            ttft_ms: t.first_token.map(|d| d.as_secs_f64() * 1e3),
            latency_ms: latency * 1e3,
        }));
        let Some(served) = first.filter(|c| t.outcome == Outcome::Ok && !c.ids.is_empty()) else {
            return;
        };
        for shadow in &a.shadows {
            // A shadow that cannot be resolved now (its adapter went away) is still queued
            // under its name, so that the engine refuses it and the queue counts and records
            // it as failed; the client never sees it.
            let adapter = match self.st.resolve_target(&shadow.target) {
                Ok(resolved) => {
                    let name = resolved.adapter().map(str::to_string);
                    resolved.register(&self.st);
                    name
                }
                Err(e) => {
                    tracing::warn!(route = %a.route, shadow = %shadow.model, error = %e, "shadow not resolvable");
                    Some(shadow.model.clone())
                }
            };
            let mode = match shadow.mode {
                ShadowMode::Score => LiveMode::Score,
                ShadowMode::Generate => LiveMode::Generate {
                    params: self.params.clone(),
                    primary_latency: t.elapsed,
                },
            };
            let Some(queue) = &self.st.shadows else {
                metrics::counter!("loraplex_shadow_jobs_total",
                    "route" => a.route.clone(), "shadow" => shadow.model.clone(),
                    "status" => "disabled")
                .increment(1);
                continue;
            };
            queue.try_submit(LiveShadowJob {
                request_id: request_id.clone(),
                route: a.route.clone(),
                experiment_id: a.experiment_id.clone(),
                arm: a.arm.clone(),
                model: shadow.model.clone(),
                adapter,
                mode,
                prompt: self.prompt.clone(),
                completion: served.ids.clone(),
                primary_logprobs: served.logprobs.clone(),
            });
        }
    }
}

/// `value` with every byte outside printable ASCII as `%XX`.
fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Submits a request's choices and merges their events; on a route, a refusal is recorded and
/// the events are tapped for the record and the shadows, and the headers naming the arm come
/// back for the response. `request_id` is the id the reply carries.
pub fn submit(
    st: &AppState,
    requests: Vec<GenerationRequest>,
    routed: Option<Routed>,
    request_id: &str,
) -> Result<(Events, HeaderMap), ApiError> {
    let choices = requests.len();
    let streams = match generation::submit_all(st, requests) {
        Ok(s) => s,
        Err(e) => {
            if let Some(r) = routed {
                r.refused(request_id.to_string(), &e);
            }
            return Err(e);
        }
    };
    let all = generation::merged(streams, st.cfg.request_timeout);
    Ok(match routed {
        Some(r) => {
            let headers = r.header_values();
            (r.tap(all, choices, request_id.to_string()), headers)
        }
        None => (all, HeaderMap::new()),
    })
}
