//! A stored experiment compiled for lookups, and assignment: a pure function of the request's
//! attributes, the time and (only where the policy says "random") a random source, so the
//! same unit gets the same arm in every process that holds the same experiment.
//!
//! Sticky A/B: `md5(salt ‖ unit)`, its first 32 bits (big-endian) mod [`SHARDS`], and each arm
//! owns a contiguous range of shards proportional to its weight. A per-experiment salt makes two
//! experiments' assignments independent. Switchback: the window id counts windows from the
//! experiment's creation, and each window's arm is the shard `md5(seed ‖ window id)` falls in,
//! so arms follow the weights at random instead of alternating, and the whole schedule can be
//! computed ahead.

use std::collections::HashMap;
use std::fmt::Write;

use md5::{Digest, Md5};
use rand::Rng;
use serde::Serialize;

use super::spec::{Experiment, Policy, Status, UnitKind};
use super::{Assignment, Attributes, ShadowSpec, Target};

/// The number of hash shards arms' weights are divided into (a weight resolution of 0.01%).
pub const SHARDS: u32 = 10_000;

/// One switchback window of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    pub id: u64,
    /// Unix milliseconds, end exclusive.
    pub start_ms: u64,
    pub end_ms: u64,
    /// Requests from here to the end count in the analysis; before it is the burn-in.
    pub analysis_from_ms: u64,
    pub arm: String,
}

struct CompiledArm {
    name: String,
    model: String,
    target: Target,
    /// The arm owns shards from the previous arm's end up to this, exclusive.
    shard_end: u32,
}

/// An experiment ready to assign: targets parsed, shard ranges laid out, segments hashed.
pub(super) struct Compiled {
    pub exp: Experiment,
    arms: Vec<CompiledArm>,
    /// Segment value → (model string, target).
    segments: HashMap<String, (String, Target)>,
    default: Option<(String, Target)>,
    shadows: Vec<ShadowSpec>,
}

impl Compiled {
    pub fn new(exp: Experiment, base_id: &str) -> Self {
        let total: f64 = exp.arms.iter().map(|a| a.weight).sum();
        let mut cumulative = 0.0;
        let n = exp.arms.len();
        let arms = exp
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| {
                cumulative += a.weight;
                let shard_end = if i + 1 == n {
                    SHARDS
                } else {
                    ((cumulative / total) * SHARDS as f64).round() as u32
                };
                CompiledArm {
                    name: a.name.clone(),
                    model: a.model.clone(),
                    target: Target::parse(&a.model, base_id),
                    shard_end,
                }
            })
            .collect();
        let parsed = |m: &String| (m.clone(), Target::parse(m, base_id));
        Self {
            segments: exp
                .segments
                .iter()
                .map(|(k, m)| (k.clone(), parsed(m)))
                .collect(),
            default: exp.default.as_ref().map(parsed),
            shadows: exp
                .shadows
                .iter()
                .map(|s| ShadowSpec {
                    model: s.model.clone(),
                    target: Target::parse(&s.model, base_id),
                    mode: s.mode,
                    sample: s.sample,
                })
                .collect(),
            arms,
            exp,
        }
    }

    /// Whether the route serves or shadows adapter `name` (any version).
    pub fn uses_adapter(&self, name: &str) -> bool {
        let arms = self.arms.iter().map(|a| &a.target);
        let segments = self.segments.values().map(|(_, t)| t);
        let default = self.default.iter().map(|(_, t)| t);
        let shadows = self.shadows.iter().map(|s| &s.target);
        { arms }
            .chain(segments)
            .chain(default)
            .chain(shadows)
            .any(|t| t.adapter() == Some(name))
    }

    pub fn assign(&self, attrs: &Attributes, now_ms: u64, rng: &mut impl Rng) -> Assignment {
        let exp = &self.exp;
        let unit = self.unit(attrs);
        let mut out = Assignment {
            route: exp.name.clone(),
            experiment_id: exp.id.clone(),
            policy: exp.policy.as_str(),
            arm: String::new(),
            model: String::new(),
            target: Target::Base,
            unit_hash: unit.map(|(u, _)| hex(&self.unit_digest(u))),
            unit_source: unit.map_or("none", |(_, source)| source),
            segment: None,
            window: None,
            in_analysis: exp.status == Status::Active,
            shadows: Vec::new(),
        };
        if exp.status == Status::Paused {
            match (&self.default, self.arms.first()) {
                (Some((model, target)), _) => set(&mut out, "default", model, target),
                (None, Some(a)) => set(&mut out, &a.name, &a.model, &a.target),
                (None, None) => unreachable!("validated routes have arms or a default"),
            }
            return out;
        }
        match exp.policy {
            Policy::Single => {
                let a = &self.arms[0];
                set(&mut out, &a.name, &a.model, &a.target);
            }
            Policy::Segmented => match self.segment(attrs) {
                Some((value, (model, target))) => {
                    set(&mut out, value, model, target);
                    out.segment = Some(value.to_string());
                }
                None => {
                    let (model, target) = self.default.as_ref().expect("validated default");
                    set(&mut out, "default", model, target);
                }
            },
            Policy::Ab => {
                let shard = match unit {
                    Some((u, _)) => shard(&self.unit_digest(u)),
                    None => {
                        out.unit_source = "random";
                        rng.random_range(0..SHARDS)
                    }
                };
                let a = self.arm_at(shard);
                set(&mut out, &a.name, &a.model, &a.target);
            }
            Policy::Switchback => {
                let (id, offset) = self.window_at(now_ms);
                let a = self.window_arm(id);
                set(&mut out, &a.name, &a.model, &a.target);
                out.window = Some(id);
                out.in_analysis = offset >= self.burn_in_ms();
            }
        }
        out.shadows = self
            .shadows
            .iter()
            .filter(|s| s.sample >= 1.0 || rng.random::<f64>() < s.sample)
            .cloned()
            .collect();
        out
    }

    /// The switchback windows from the one holding `now_ms` on; empty for other policies.
    pub fn schedule(&self, now_ms: u64, n: usize) -> Vec<Window> {
        if self.exp.policy != Policy::Switchback {
            return Vec::new();
        }
        let window = self.window_ms();
        let (first, _) = self.window_at(now_ms);
        (first..first + n as u64)
            .map(|id| {
                let start_ms = self.exp.created_ms + id * window;
                Window {
                    id,
                    start_ms,
                    end_ms: start_ms + window,
                    analysis_from_ms: start_ms + self.burn_in_ms(),
                    arm: self.window_arm(id).name.clone(),
                }
            })
            .collect()
    }

    /// The unit and where it came from: the configured attribute first, the other as fallback.
    fn unit<'a>(&self, attrs: &Attributes<'a>) -> Option<(&'a str, &'static str)> {
        let user = attrs.user.filter(|u| !u.is_empty()).map(|u| (u, "user"));
        let header = attrs
            .unit_header
            .filter(|u| !u.is_empty())
            .map(|u| (u, "header"));
        match self.exp.unit {
            Some(UnitKind::Header) => header.or(user),
            _ => user.or(header),
        }
    }

    fn unit_digest(&self, unit: &str) -> [u8; 16] {
        md5(&[self.exp.salt.as_bytes(), unit.as_bytes()])
    }

    /// The segment value the request carries and its entry, if the map has one.
    fn segment<'a>(&'a self, attrs: &Attributes<'a>) -> Option<(&'a str, &'a (String, Target))> {
        let key = self.exp.segment.as_ref()?;
        let from_header = attrs.segment_header.filter(|_| key.header);
        let from_metadata = || {
            let v = attrs.metadata?.get(key.metadata_key.as_deref()?)?;
            v.as_str()
        };
        let value = from_header.or_else(from_metadata)?;
        self.segments
            .get_key_value(value)
            .map(|(k, e)| (k.as_str(), e))
    }

    fn arm_at(&self, shard: u32) -> &CompiledArm {
        let i = self.arms.partition_point(|a| a.shard_end <= shard);
        &self.arms[i.min(self.arms.len() - 1)]
    }

    fn window_ms(&self) -> u64 {
        self.exp.window_s.unwrap_or(1).max(1) * 1000
    }

    fn burn_in_ms(&self) -> u64 {
        self.exp.burn_in_s.unwrap_or(0) * 1000
    }

    /// The window holding `now_ms` and how far into it `now_ms` is. A clock behind the
    /// experiment's creation (another replica's) counts as window 0's start.
    fn window_at(&self, now_ms: u64) -> (u64, u64) {
        let since = now_ms.saturating_sub(self.exp.created_ms);
        (since / self.window_ms(), since % self.window_ms())
    }

    fn window_arm(&self, id: u64) -> &CompiledArm {
        let seed = self.exp.seed.unwrap_or(0);
        self.arm_at(shard(&md5(&[&seed.to_be_bytes(), &id.to_be_bytes()])))
    }
}

fn set(out: &mut Assignment, arm: &str, model: &str, target: &Target) {
    out.arm = arm.to_string();
    out.model = model.to_string();
    out.target = target.clone();
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The first 32 bits, big-endian, mod [`SHARDS`].
fn shard(digest: &[u8; 16]) -> u32 {
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % SHARDS
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
