//! The rules every stored experiment keeps, each refusal a 400 naming the field and saying why.

use std::collections::HashSet;

use loraplex_adapters::check_name;

use super::spec::{Experiment, Policy, SegmentKey};
use super::{Catalog, Target};
use crate::error::ApiError;

pub(super) fn invalid(param: impl AsRef<str>, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param.as_ref(), message)
}

/// Every rule a stored experiment keeps. `accepted` models are not looked up in the catalog.
pub(super) fn check(
    exp: &Experiment,
    catalog: &dyn Catalog,
    accepted: &HashSet<&str>,
    new: bool,
) -> Result<(), ApiError> {
    if new {
        check_route_name(&exp.name, catalog)?;
    }
    let model = |param: &str, m: &str| -> Result<Target, ApiError> {
        let target = Target::parse(m, catalog.base_id());
        if !accepted.contains(m) {
            check_target(param, &target, catalog)?;
        }
        Ok(target)
    };
    match exp.policy {
        Policy::Single if exp.arms.len() != 1 => {
            return Err(invalid(
                "arms",
                "a single route has exactly one arm (or give `model`)",
            ))
        }
        Policy::Ab | Policy::Switchback if exp.arms.len() < 2 => {
            return Err(invalid(
                "arms",
                format!("a {} route needs at least two arms", exp.policy.as_str()),
            ))
        }
        Policy::Segmented => check_segmented(exp)?,
        _ => {}
    }
    let mut served = HashSet::new();
    let mut arm_names = HashSet::new();
    for (i, arm) in exp.arms.iter().enumerate() {
        check_name(&arm.name).map_err(|_| {
            invalid(
                format!("arms[{i}].name"),
                format!(
                    "arm name {:?} must be 1-64 of A-Z a-z 0-9 . _ - (not starting with a dot)",
                    arm.name
                ),
            )
        })?;
        if !arm_names.insert(arm.name.as_str()) {
            return Err(invalid(
                format!("arms[{i}].name"),
                format!("two arms are named {:?}", arm.name),
            ));
        }
        if !(arm.weight.is_finite() && arm.weight > 0.0) {
            return Err(invalid(
                format!("arms[{i}].weight"),
                format!(
                    "weights must be positive finite numbers; {} is not",
                    arm.weight
                ),
            ));
        }
        served.insert(model(&format!("arms[{i}].model"), &arm.model)?);
    }
    for (key, m) in &exp.segments {
        served.insert(model(&format!("segments.{key}"), m)?);
    }
    if let Some(d) = &exp.default {
        served.insert(model("default", d)?);
    }
    if let Some(window) = exp.window_s {
        let burn_in = exp.burn_in_s.unwrap_or(0);
        if window == 0 {
            return Err(invalid(
                "window_s",
                "a switchback window must be at least 1 s",
            ));
        }
        if window <= burn_in {
            return Err(invalid(
                "burn_in_s",
                format!("the burn-in ({burn_in} s) must be shorter than the window ({window} s)"),
            ));
        }
    } else if exp.policy == Policy::Switchback {
        return Err(invalid("window_s", "a switchback route needs `window_s`"));
    }
    let mut shadows = HashSet::new();
    for (i, s) in exp.shadows.iter().enumerate() {
        let param = format!("shadows[{i}].model");
        let target = model(&param, &s.model)?;
        if served.contains(&target) {
            return Err(invalid(
                param,
                format!(
                    "{:?} is served by this route; a shadow must be a different model",
                    s.model
                ),
            ));
        }
        if !shadows.insert(target) {
            return Err(invalid(param, format!("{:?} is a shadow twice", s.model)));
        }
        if !(0.0..=1.0).contains(&s.sample) {
            return Err(invalid(
                format!("shadows[{i}].sample"),
                format!(
                    "sample is a fraction of requests in 0..=1; {} is not",
                    s.sample
                ),
            ));
        }
    }
    if exp.salt.is_empty() || exp.salt.len() > 128 {
        return Err(invalid("salt", "the salt must be 1 to 128 characters"));
    }
    Ok(())
}

fn check_segmented(exp: &Experiment) -> Result<(), ApiError> {
    if !exp.arms.is_empty() {
        return Err(invalid(
            "arms",
            "a segmented route maps `segments` to models and takes no arms",
        ));
    }
    if exp.segments.is_empty() {
        return Err(invalid(
            "segments",
            "a segmented route needs at least one segment",
        ));
    }
    // Segment values become the arm of records and of the `x-loraplex-arm` header.
    if let Some(bad) = exp
        .segments
        .keys()
        .find(|k| k.is_empty() || k.len() > 256 || k.chars().any(char::is_control))
    {
        return Err(invalid(
            "segments",
            format!("segment value {bad:?} must be 1-256 characters without control characters"),
        ));
    }
    if exp.default.is_none() {
        return Err(invalid(
            "default",
            "a segmented route needs a `default` model for requests outside its segments",
        ));
    }
    match &exp.segment {
        Some(SegmentKey {
            header: false,
            metadata_key: None,
        }) => Err(invalid(
            "segment",
            "read the segment from the header (`header: true`) or a `metadata_key`",
        )),
        Some(SegmentKey {
            metadata_key: Some(k),
            ..
        }) if k.is_empty() => Err(invalid("segment.metadata_key", "the key must not be empty")),
        _ => Ok(()),
    }
}

/// A route name is a model id: it must be a valid name and must not hide a model.
pub(super) fn check_route_name(name: &str, catalog: &dyn Catalog) -> Result<(), ApiError> {
    check_name(name).map_err(|_| {
        invalid(
            "name",
            format!(
                "route name {name:?} must be 1-64 of A-Z a-z 0-9 . _ - (not starting with a dot)"
            ),
        )
    })?;
    if name == catalog.base_id() {
        return Err(invalid("name", format!("{name:?} is the base model's id")));
    }
    if catalog.adapter_exists(name) {
        return Err(invalid(
            "name",
            format!("{name:?} is an adapter's name; a route must not hide it"),
        ));
    }
    Ok(())
}

fn check_target(param: &str, target: &Target, catalog: &dyn Catalog) -> Result<(), ApiError> {
    match target {
        Target::Base => Ok(()),
        Target::Adapter {
            name,
            version: None,
        } if !catalog.adapter_exists(name) => Err(invalid(
            param,
            format!("unknown model {name:?}: no such adapter"),
        )),
        Target::Adapter {
            name,
            version: Some(v),
        } if !catalog.version_exists(name, *v) => Err(invalid(
            param,
            format!("adapter {name:?} has no stored version {v}"),
        )),
        _ => Ok(()),
    }
}

/// What the table loads from its file was validated when written; this guards against a
/// hand-edited file breaking assignment, without looking models up (an adapter may be stored
/// by another replica that this one has not seen yet).
pub(super) fn check_stored(exp: &Experiment, base_id: &str) -> Result<(), ApiError> {
    struct Trusting<'a>(&'a str);
    impl Catalog for Trusting<'_> {
        fn base_id(&self) -> &str {
            self.0
        }
        fn adapter_exists(&self, _: &str) -> bool {
            true
        }
        fn version_exists(&self, _: &str, _: u64) -> bool {
            true
        }
    }
    check_name(&exp.name).map_err(|e| invalid("name", e.to_string()))?;
    check(exp, &Trusting(base_id), &HashSet::new(), false)
}
