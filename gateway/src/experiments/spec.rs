//! The forms a route takes outside the process: what operators write (the admin API's JSON, the
//! `--routes` file in TOML, YAML or JSON), and what the table stores and shows. Specs are only
//! parsed here; `validate` decides whether they mean anything. Unknown fields are refused, so a
//! misspelt `burn_in` is an error instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ShadowMode;
use crate::error::ApiError;

/// How a route chooses its arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Single,
    Segmented,
    Ab,
    Switchback,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Single => "single",
            Policy::Segmented => "segmented",
            Policy::Ab => "ab",
            Policy::Switchback => "switchback",
        }
    }
}

/// Which request attribute an A/B split is sticky on first (the other is the fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    /// The request's `user` field.
    User,
    /// The `x-loraplex-unit` header.
    Header,
}

/// A paused route serves its control (first arm, or a segmented route's default), records
/// nothing as evidence and runs no shadows: the way to stop an experiment without breaking the
/// clients that use its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Active,
    Paused,
}

/// An experiment as an operator writes it (`POST /v1/experiments`, one entry of a routes file).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub name: String,
    /// Optional only for the `"model": "..."` shorthand of a single route.
    #[serde(rename = "type", default)]
    pub policy: Option<Policy>,
    /// `ab` only; `user` when absent.
    #[serde(default)]
    pub unit: Option<UnitKind>,
    #[serde(default)]
    pub arms: Vec<ArmSpec>,
    /// `single` shorthand for one arm named `default`.
    #[serde(default)]
    pub model: Option<String>,
    /// `segmented`: where the segment value comes from (the header when absent).
    #[serde(default)]
    pub segment: Option<SegmentKey>,
    /// `segmented`: segment value → model string.
    #[serde(default)]
    pub segments: BTreeMap<String, String>,
    /// `segmented`: the model for requests whose segment is missing or not in the map.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub window_s: Option<u64>,
    #[serde(default)]
    pub burn_in_s: Option<u64>,
    /// `switchback`: the coin that draws each window's arm (random at create when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Sticky hashing salt (random at create when absent). Giving the same salt to two routes
    /// makes their assignments correlated; leave it out unless restoring a route elsewhere.
    #[serde(default)]
    pub salt: Option<String>,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub shadows: Vec<ShadowConfig>,
}

/// One arm as written; the weight defaults to 1 (equal split).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    pub name: String,
    pub model: String,
    #[serde(default)]
    pub weight: Option<f64>,
}

/// One arm as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub name: String,
    pub model: String,
    pub weight: f64,
}

/// Where a segmented route reads the segment: the header, a `metadata` key, or both (the header
/// wins when present).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentKey {
    #[serde(default)]
    pub header: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_key: Option<String>,
}

/// A shadow as written and stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    pub model: String,
    #[serde(default)]
    pub mode: ShadowMode,
    #[serde(default = "all")]
    pub sample: f64,
}

fn all() -> f64 {
    1.0
}

/// A route as the table stores, persists and shows it: every default filled in, so that what
/// was assigned yesterday is computed the same way today.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub policy: Policy,
    pub status: Status,
    /// Unix milliseconds; a switchback's windows are counted from here.
    pub created_ms: u64,
    pub updated_ms: u64,
    pub salt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitKind>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arms: Vec<Arm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentKey>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub segments: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_in_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub shadows: Vec<ShadowConfig>,
}

/// `PATCH /v1/experiments/{name}`: every field optional; what is given replaces what was.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentPatch {
    /// New weights of the named arms; arms not listed keep theirs. Moving weights moves shard
    /// boundaries, so units near a boundary change arm: that is what a ramp-up means.
    #[serde(default)]
    pub arms: Option<Vec<ArmPatch>>,
    #[serde(default)]
    pub status: Option<Status>,
    /// The new set of shadows (an empty list removes them all).
    #[serde(default)]
    pub shadows: Option<Vec<ShadowConfig>>,
    /// Segment entries to set, or to remove with `null`; entries not listed stay.
    #[serde(default)]
    pub segments: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmPatch {
    pub name: String,
    pub weight: f64,
}

/// A `--routes` file: `[[experiments]]` tables in TOML, an `experiments:` list in YAML or JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    experiments: Vec<ExperimentSpec>,
}

/// The file formats a routes file may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutesFormat {
    Toml,
    Yaml,
    Json,
}

/// Parses routes file text; the error says where the text is wrong.
pub fn parse_routes(text: &str, format: RoutesFormat) -> Result<Vec<ExperimentSpec>, String> {
    let file: RoutesFile = match format {
        RoutesFormat::Toml => toml::from_str(text).map_err(|e| e.to_string())?,
        RoutesFormat::Yaml => serde_norway::from_str(text).map_err(|e| e.to_string())?,
        RoutesFormat::Json => serde_json::from_str(text).map_err(|e| e.to_string())?,
    };
    Ok(file.experiments)
}

/// Reads a routes file, its format told by its extension (`.toml`, `.yaml`/`.yml`, `.json`).
pub fn read_routes_file(path: &Path) -> Result<Vec<ExperimentSpec>, ApiError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let format = match ext.to_ascii_lowercase().as_str() {
        "toml" => RoutesFormat::Toml,
        "yaml" | "yml" => RoutesFormat::Yaml,
        "json" => RoutesFormat::Json,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "{}: a routes file must end in .toml, .yaml, .yml or .json",
                path.display()
            )))
        }
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::BadRequest(format!("{}: {e}", path.display())))?;
    parse_routes(&text, format)
        .map_err(|e| ApiError::BadRequest(format!("{}: {e}", path.display())))
}
