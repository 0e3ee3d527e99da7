//! Routes: a public model name that the operator maps to what serves it, through a policy
//! (`single`, `segmented`, `ab`, `switchback`), with shadow candidates that see the traffic but
//! are never served.
//!
//! The pieces, in the order a configuration travels: `spec` (the wire and file forms, parsed and
//! never trusted), `validate` (a spec to a stored [`Experiment`], every refusal a 400 naming the
//! field, against a [`Catalog`] of what exists), `assign` (a stored experiment compiled for
//! lookups, and the pure function from request attributes and time to an [`Assignment`]),
//! `table` ([`RouteTable`]: the one owner of the routes, persisted so that restarts and
//! replicas sharing the directory assign the same way).
//!
//! Nothing here knows HTTP or the engine: the handlers pass request attributes in and get an
//! [`Assignment`] out, so the policies are tested without a server.

mod assign;
mod persist;
mod rules;
mod spec;
mod table;
mod validate;

#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use assign::{Window, SHARDS};
pub use spec::{
    parse_routes, read_routes_file, Arm, ArmPatch, ArmSpec, Experiment, ExperimentPatch,
    ExperimentSpec, Policy, RoutesFormat, SegmentKey, ShadowConfig, Status, UnitKind,
};
pub use table::RouteTable;

/// What a route's model string names: the base model, or an adapter following its store's
/// `current` version (`"name"`) or pinned to one (`"name@3"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Base,
    Adapter { name: String, version: Option<u64> },
}

impl Target {
    /// Reads a model string. `@` cannot occur in adapter names, so the last one separates a pin;
    /// a suffix that is not a version number is left in the name (and then refused as unknown).
    pub fn parse(model: &str, base_id: &str) -> Target {
        if model == base_id {
            return Target::Base;
        }
        if let Some((name, version)) = Target::split_pinned(model) {
            return Target::Adapter {
                name: name.to_string(),
                version: Some(version),
            };
        }
        Target::Adapter {
            name: model.to_string(),
            version: None,
        }
    }

    /// `name@version`: the model string naming a pinned version, and the registry name the
    /// version is served under (no adapter name holds an `@`).
    pub fn pinned_name(name: &str, version: u64) -> String {
        format!("{name}@{version}")
    }

    /// The reverse of [`Target::pinned_name`]: `None` for a name that pins nothing.
    pub fn split_pinned(s: &str) -> Option<(&str, u64)> {
        let (name, v) = s.rsplit_once('@')?;
        Some((name, v.parse().ok()?))
    }

    /// The adapter's name; `None` for the base model.
    pub fn adapter(&self) -> Option<&str> {
        match self {
            Target::Base => None,
            Target::Adapter { name, .. } => Some(name),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Base => f.write_str("base"),
            Target::Adapter {
                name,
                version: None,
            } => f.write_str(name),
            Target::Adapter {
                name,
                version: Some(v),
            } => write!(f, "{name}@{v}"),
        }
    }
}

/// The request attributes policies may look at, borrowed from the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    /// The OpenAI `user` field.
    pub user: Option<&'a str>,
    /// `x-loraplex-unit`.
    pub unit_header: Option<&'a str>,
    /// `x-loraplex-segment`.
    pub segment_header: Option<&'a str>,
    /// The request's `metadata` object.
    pub metadata: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// What resolving a route gives one request: the arm that serves it and what to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub route: String,
    /// Unique per creation, so records of a re-created route never mix with the old one's.
    pub experiment_id: String,
    /// `"single"`, `"segmented"`, `"ab"` or `"switchback"`.
    pub policy: &'static str,
    pub arm: String,
    /// The arm's model string as configured (`"ad"`, `"ad@3"` or the base id).
    pub model: String,
    pub target: Target,
    /// Hex md5 of salt ‖ unit: records can join a unit's requests without holding the unit.
    pub unit_hash: Option<String>,
    /// Where the unit came from: `"user"`, `"header"`; `"random"` when an A/B request had none
    /// and its arm was drawn at random; `"none"` otherwise.
    pub unit_source: &'static str,
    /// The segment value a segmented route matched (`None` when it fell to its default).
    pub segment: Option<String>,
    /// The switchback window id.
    pub window: Option<u64>,
    /// `false` in a switchback's burn-in and while paused: served, but not evidence.
    pub in_analysis: bool,
    /// The shadows sampled for this request.
    pub shadows: Vec<ShadowSpec>,
}

/// A shadow candidate of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSpec {
    pub model: String,
    pub target: Target,
    pub mode: ShadowMode,
    /// The fraction of the route's requests it sees, in `0..=1`.
    pub sample: f64,
}

/// How a shadow judges a served answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowMode {
    /// One teacher-forced pass over the served completion: cheap, the default.
    #[default]
    Score,
    /// The shadow also samples its own answer (a full generation).
    Generate,
}

impl ShadowMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowMode::Score => "score",
            ShadowMode::Generate => "generate",
        }
    }
}

/// Wall time, injected so that switchback windows and the table's reload checks can be driven
/// by tests instead of by sleeping.
pub trait Clock: Send + Sync {
    fn now_unix_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_unix_ms: u64) -> Self {
        Self(AtomicU64::new(now_unix_ms))
    }

    pub fn set(&self, now_unix_ms: u64) {
        self.0.store(now_unix_ms, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What exists to route to, as validation needs it. The gateway's state implements it over the
/// engine's registry and the adapter store; tests implement it over a list.
pub trait Catalog {
    /// The base model's id (a model string equal to it targets the base).
    fn base_id(&self) -> &str;
    /// Whether `name` is servable: registered, or in the store.
    fn adapter_exists(&self, name: &str) -> bool;
    /// Whether the store holds version `version` of `name`.
    fn version_exists(&self, name: &str, version: u64) -> bool;
}
