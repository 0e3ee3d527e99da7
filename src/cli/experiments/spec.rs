//! From `loraplex experiments create|update` flags (or a spec file) to the JSON bodies of
//! `POST /v1/experiments` and `PATCH /v1/experiments/{name}`. Pure, so every translation is
//! unit-tested without a server; the server does the real validation (unknown adapters,
//! weights, windows) and answers 400 with the reason.

use std::path::Path;

use clap::{Args, ValueEnum};
use serde_json::{json, Map, Value};

/// `NAME=MODEL[:WEIGHT]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmFlag {
    pub name: String,
    pub model: String,
    pub weight: Option<f64>,
}

/// `MODEL[:score|generate][@SAMPLE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowFlag {
    pub model: String,
    pub mode: Option<String>,
    pub sample: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    Single,
    Segmented,
    Ab,
    Switchback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Unit {
    User,
    Header,
}

/// `create`'s flags: either `--file` or the spec spelled out.
#[derive(Args, Debug, Default)]
pub struct CreateFlags {
    /// One experiment spec as JSON, TOML or YAML (by extension; `-` reads JSON or YAML from stdin).
    #[arg(long, conflicts_with_all = ["name", "policy", "arms", "model", "segments", "default"])]
    pub file: Option<String>,
    /// The route name clients send as `model` (required without --file).
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// The policy; inferred when left out: segmented with --segment, switchback with
    /// --window-s, single with one arm or --model, ab otherwise.
    #[arg(long = "type", value_enum)]
    pub policy: Option<Policy>,
    /// `NAME=MODEL[:WEIGHT]`, repeatable; MODEL is the base id, an adapter, or `adapter@VERSION`
    /// (pinned). WEIGHT defaults to 1 (an even split).
    #[arg(long = "arm", value_name = "NAME=MODEL[:WEIGHT]", value_parser = parse_arm)]
    pub arms: Vec<ArmFlag>,
    /// A single route's one target (shorthand for one arm).
    #[arg(long)]
    pub model: Option<String>,
    /// What an A/B split is sticky on: the request's `user` field or the `x-loraplex-unit` header.
    #[arg(long, value_enum)]
    pub unit: Option<Unit>,
    #[command(flatten)]
    pub shadows: ShadowFlags,
    /// Segment by the `x-loraplex-segment` header.
    #[arg(long, conflicts_with = "segment_key")]
    pub segment_header: bool,
    /// Segment by this key of the request's `metadata` object (e.g. `geo`).
    #[arg(long)]
    pub segment_key: Option<String>,
    /// `VALUE=MODEL`, repeatable: the segment map (use --file for thousands of entries).
    #[arg(long = "segment", value_name = "VALUE=MODEL", value_parser = parse_segment)]
    pub segments: Vec<(String, String)>,
    /// The target of requests whose segment is missing or unmapped.
    #[arg(long)]
    pub default: Option<String>,
    /// Switchback window length in seconds.
    #[arg(long)]
    pub window_s: Option<u64>,
    /// Seconds at each window's start whose requests are served but not analysed.
    #[arg(long)]
    pub burn_in_s: Option<u64>,
    /// The seed of the switchback's per-window coin.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The assignment salt (default: random, chosen by the server and kept); give the same salt
    /// to reproduce an assignment elsewhere.
    #[arg(long)]
    pub salt: Option<String>,
}

/// Shadows, shared by `create` and `update`.
#[derive(Args, Debug, Default)]
pub struct ShadowFlags {
    /// `MODEL[:score|generate][@SAMPLE]`, repeatable: a candidate that sees the route's traffic
    /// and is never served. SAMPLE is the fraction of requests, written with a point (`0.1`) or
    /// as a percentage (`10%`); `@N` with a whole N pins the adapter version instead.
    #[arg(long = "shadow", value_name = "MODEL[:MODE][@SAMPLE]", value_parser = parse_shadow)]
    pub shadows: Vec<ShadowFlag>,
}

/// `update`'s flags.
#[derive(Args, Debug, Default)]
pub struct UpdateFlags {
    /// `ARM=WEIGHT`, repeatable: new weights (arms not named keep theirs).
    #[arg(long = "weight", value_name = "ARM=WEIGHT", value_parser = parse_weight)]
    pub weights: Vec<(String, f64)>,
    /// Pause: the route serves its control (the first arm, or a segmented route's default),
    /// records nothing as evidence and runs no shadows; clients keep working.
    #[arg(long, conflicts_with = "resume")]
    pub pause: bool,
    /// Undo --pause.
    #[arg(long)]
    pub resume: bool,
    /// Replaces the route's shadows with these.
    #[command(flatten)]
    pub shadows: ShadowFlags,
    /// Removes every shadow.
    #[arg(long, conflicts_with = "shadows")]
    pub no_shadows: bool,
    /// `VALUE=MODEL`, repeatable: sets segment entries (entries not named stay).
    #[arg(long = "segment", value_name = "VALUE=MODEL", value_parser = parse_segment)]
    pub segments: Vec<(String, String)>,
    /// `VALUE`, repeatable: removes a segment entry.
    #[arg(long = "unset-segment", value_name = "VALUE")]
    pub unset_segments: Vec<String>,
    /// A segmented route's new default target.
    #[arg(long)]
    pub default: Option<String>,
}

pub fn parse_arm(s: &str) -> Result<ArmFlag, String> {
    let (name, rest) = s
        .split_once('=')
        .filter(|(n, m)| !n.is_empty() && !m.is_empty())
        .ok_or_else(|| format!("{s:?}: expected NAME=MODEL[:WEIGHT]"))?;
    let (model, weight) = match rest.rsplit_once(':') {
        Some((m, w)) if !m.is_empty() => {
            let w: f64 = w
                .parse()
                .map_err(|_| format!("{s:?}: WEIGHT {w:?} is not a number"))?;
            (m, Some(w))
        }
        _ => (rest, None),
    };
    Ok(ArmFlag {
        name: name.to_string(),
        model: model.to_string(),
        weight,
    })
}

pub fn parse_shadow(s: &str) -> Result<ShadowFlag, String> {
    let (mut model, mut sample) = (s, None);
    if let Some((m, tail)) = s.rsplit_once('@') {
        let fraction = if let Some(p) = tail.strip_suffix('%') {
            Some(p.parse::<f64>().map(|p| p / 100.0))
        } else if tail.contains('.') {
            Some(tail.parse::<f64>())
        } else {
            None // `@3`: a pinned version, part of the model
        };
        if let Some(f) = fraction {
            let f = f.map_err(|_| format!("{s:?}: SAMPLE {tail:?} is not a number"))?;
            if !(0.0..=1.0).contains(&f) {
                return Err(format!(
                    "{s:?}: SAMPLE must be between 0 and 1 (or 0% and 100%)"
                ));
            }
            (model, sample) = (m, Some(f));
        }
    }
    let (model, mode) = match model.rsplit_once(':') {
        Some((m, mode @ ("score" | "generate"))) => (m, Some(mode.to_string())),
        Some((_, other)) => {
            return Err(format!("{s:?}: mode {other:?} is not score or generate"));
        }
        None => (model, None),
    };
    if model.is_empty() {
        return Err(format!("{s:?}: expected MODEL[:score|generate][@SAMPLE]"));
    }
    Ok(ShadowFlag {
        model: model.to_string(),
        mode,
        sample,
    })
}

pub fn parse_segment(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(v, m)| !v.is_empty() && !m.is_empty())
        .map(|(v, m)| (v.to_string(), m.to_string()))
        .ok_or_else(|| format!("{s:?}: expected VALUE=MODEL"))
}

pub fn parse_weight(s: &str) -> Result<(String, f64), String> {
    let (arm, w) = s
        .split_once('=')
        .filter(|(a, _)| !a.is_empty())
        .ok_or_else(|| format!("{s:?}: expected ARM=WEIGHT"))?;
    let w = w
        .parse()
        .map_err(|_| format!("{s:?}: WEIGHT {w:?} is not a number"))?;
    Ok((arm.to_string(), w))
}

/// A whole weight as a JSON integer (what a server holding integer weights accepts), else a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn shadows_json(shadows: &[ShadowFlag]) -> Value {
    Value::Array(
        shadows
            .iter()
            .map(|s| {
                let mut o = Map::new();
                o.insert("model".into(), json!(s.model));
                if let Some(m) = &s.mode {
                    o.insert("mode".into(), json!(m));
                }
                if let Some(f) = s.sample {
                    o.insert("sample".into(), json!(f));
                }
                Value::Object(o)
            })
            .collect(),
    )
}

/// The `POST /v1/experiments` body the flags spell out. `file` is not read here.
pub fn create_body(f: &CreateFlags) -> Value {
    let policy = f
        .policy
        .unwrap_or(if !f.segments.is_empty() || f.segment_key.is_some() {
            Policy::Segmented
        } else if f.window_s.is_some() {
            Policy::Switchback
        } else if f.model.is_some() || f.arms.len() == 1 {
            Policy::Single
        } else {
            Policy::Ab
        });
    let mut o = Map::new();
    o.insert("name".into(), json!(f.name));
    let kind = policy.to_possible_value().expect("no skipped variants");
    o.insert("type".into(), json!(kind.get_name()));
    if let Some(m) = &f.model {
        o.insert("model".into(), json!(m));
    }
    if !f.arms.is_empty() {
        let arms = f.arms.iter().map(|a| {
            let mut arm = Map::new();
            arm.insert("name".into(), json!(a.name));
            arm.insert("model".into(), json!(a.model));
            // A weight left out is the server's default (1: an even split).
            if let Some(w) = a.weight {
                arm.insert("weight".into(), number(w));
            }
            Value::Object(arm)
        });
        o.insert("arms".into(), Value::Array(arms.collect()));
    }
    if let Some(u) = f.unit {
        let u = u.to_possible_value().expect("no skipped variants");
        o.insert("unit".into(), json!(u.get_name()));
    }
    if f.segment_header {
        o.insert("segment".into(), json!({"header": true}));
    } else if let Some(k) = &f.segment_key {
        o.insert("segment".into(), json!({"metadata_key": k}));
    }
    if !f.segments.is_empty() {
        let map: Map<String, Value> = f
            .segments
            .iter()
            .map(|(v, m)| (v.clone(), json!(m)))
            .collect();
        o.insert("segments".into(), Value::Object(map));
    }
    if let Some(d) = &f.default {
        o.insert("default".into(), json!(d));
    }
    for (k, v) in [
        ("window_s", f.window_s),
        ("burn_in_s", f.burn_in_s),
        ("seed", f.seed),
    ] {
        if let Some(v) = v {
            o.insert(k.into(), json!(v));
        }
    }
    if let Some(s) = &f.salt {
        o.insert("salt".into(), json!(s));
    }
    if !f.shadows.shadows.is_empty() {
        o.insert("shadows".into(), shadows_json(&f.shadows.shadows));
    }
    Value::Object(o)
}

/// The `PATCH /v1/experiments/{name}` body, or `None` when no change was asked for.
pub fn update_body(f: &UpdateFlags) -> Option<Value> {
    let mut o = Map::new();
    if !f.weights.is_empty() {
        let arms = f
            .weights
            .iter()
            .map(|(a, w)| json!({"name": a, "weight": number(*w)}));
        o.insert("arms".into(), Value::Array(arms.collect()));
    }
    if f.pause {
        o.insert("status".into(), json!("paused"));
    } else if f.resume {
        o.insert("status".into(), json!("active"));
    }
    if f.no_shadows {
        o.insert("shadows".into(), json!([]));
    } else if !f.shadows.shadows.is_empty() {
        o.insert("shadows".into(), shadows_json(&f.shadows.shadows));
    }
    if !f.segments.is_empty() || !f.unset_segments.is_empty() {
        let mut map: Map<String, Value> = f
            .segments
            .iter()
            .map(|(v, m)| (v.clone(), json!(m)))
            .collect();
        for v in &f.unset_segments {
            map.insert(v.clone(), Value::Null);
        }
        o.insert("segments".into(), Value::Object(map));
    }
    if let Some(d) = &f.default {
        o.insert("default".into(), json!(d));
    }
    (!o.is_empty()).then_some(Value::Object(o))
}

/// A spec file as JSON: by extension `.toml`, `.yaml`/`.yml`, else JSON (YAML is a superset of
/// JSON, so stdin is read as YAML).
pub fn parse_spec(text: &str, path: &str) -> Result<Value, String> {
    let ext = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let v: Value = match ext.as_deref() {
        Some("toml") => toml::from_str(text).map_err(|e| e.to_string())?,
        Some("yaml" | "yml") => serde_norway::from_str(text).map_err(|e| e.to_string())?,
        _ if path == "-" => serde_norway::from_str(text).map_err(|e| e.to_string())?,
        _ => serde_json::from_str(text).map_err(|e| e.to_string())?,
    };
    if !v.is_object() {
        return Err("expected one experiment spec (an object with a name)".into());
    }
    Ok(v)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
