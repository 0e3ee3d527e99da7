//! A spec or a patch to a stored [`Experiment`], or a 400 naming the field and the reason.
//! Everything is checked (`rules`) on a new value before the table swaps it in, so a refused
//! configuration changes nothing.

use std::collections::HashSet;

use super::rules::{check, invalid};
use super::spec::{Arm, Experiment, ExperimentPatch, ExperimentSpec, Policy, SegmentKey};
use super::Catalog;
use crate::error::ApiError;

pub(super) use super::rules::check_stored;

/// A new experiment from its spec: defaults filled (a random salt and seed unless given), then
/// checked as a whole.
pub(super) fn build(
    spec: ExperimentSpec,
    catalog: &dyn Catalog,
    now_ms: u64,
) -> Result<Experiment, ApiError> {
    let policy = match (spec.policy, &spec.model) {
        (Some(p), _) => p,
        (None, Some(_)) => Policy::Single,
        (None, None) => {
            return Err(invalid(
                "type",
                "give the route's type: single, segmented, ab or switchback",
            ))
        }
    };
    refuse_foreign_fields(&spec, policy)?;
    let arms = match spec.model {
        Some(model) => vec![Arm {
            name: "default".into(),
            model,
            weight: 1.0,
        }],
        None => spec
            .arms
            .into_iter()
            .map(|a| Arm {
                name: a.name,
                model: a.model,
                weight: a.weight.unwrap_or(1.0),
            })
            .collect(),
    };
    let switchback = policy == Policy::Switchback;
    let exp = Experiment {
        id: format!("exp_{:024x}", rand::random::<u128>() >> 32),
        name: spec.name,
        policy,
        status: spec.status.unwrap_or_default(),
        created_ms: now_ms,
        updated_ms: now_ms,
        salt: spec
            .salt
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>())),
        unit: (policy == Policy::Ab).then(|| spec.unit.unwrap_or(super::UnitKind::User)),
        arms,
        segment: (policy == Policy::Segmented).then(|| {
            spec.segment.unwrap_or(SegmentKey {
                header: true,
                metadata_key: None,
            })
        }),
        segments: spec.segments,
        default: spec.default,
        window_s: spec.window_s,
        burn_in_s: spec.burn_in_s.or(switchback.then_some(0)),
        // A small seed keeps the value exact for JSON clients that read numbers as doubles.
        seed: spec
            .seed
            .or(switchback.then(|| rand::random::<u32>() as u64)),
        shadows: spec.shadows,
    };
    check(&exp, catalog, &HashSet::new(), true)?;
    Ok(exp)
}

/// A setting that the route's policy would ignore is a mistake in the config: say so.
fn refuse_foreign_fields(spec: &ExperimentSpec, policy: Policy) -> Result<(), ApiError> {
    let kind = policy.as_str();
    if spec.model.is_some() && policy != Policy::Single {
        return Err(invalid(
            "model",
            format!("`model` is the single-route shorthand; a {kind} route takes arms"),
        ));
    }
    if spec.model.is_some() && !spec.arms.is_empty() {
        return Err(invalid("model", "give either `model` or `arms`, not both"));
    }
    let foreign = [
        ("unit", spec.unit.is_some(), Policy::Ab),
        ("segment", spec.segment.is_some(), Policy::Segmented),
        ("segments", !spec.segments.is_empty(), Policy::Segmented),
        ("default", spec.default.is_some(), Policy::Segmented),
        ("window_s", spec.window_s.is_some(), Policy::Switchback),
        ("burn_in_s", spec.burn_in_s.is_some(), Policy::Switchback),
        ("seed", spec.seed.is_some(), Policy::Switchback),
    ];
    for (field, given, owner) in foreign {
        if given && policy != owner {
            return Err(invalid(
                field,
                format!(
                    "`{field}` applies to {} routes only, not to a {kind} route",
                    owner.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// `exp` with `patch` applied and checked. Models the route already used are not looked up
/// again, so pausing a route whose adapter another replica deleted still works.
pub(super) fn patched(
    exp: &Experiment,
    patch: ExperimentPatch,
    catalog: &dyn Catalog,
    now_ms: u64,
) -> Result<Experiment, ApiError> {
    let mut next = exp.clone();
    let segmented = exp.policy == Policy::Segmented;
    if let Some(arms) = patch.arms {
        if segmented {
            return Err(invalid(
                "arms",
                "a segmented route has no arms; patch `segments` or `default`",
            ));
        }
        for (i, a) in arms.into_iter().enumerate() {
            let Some(arm) = next.arms.iter_mut().find(|x| x.name == a.name) else {
                return Err(invalid(
                    format!("arms[{i}].name"),
                    format!("the route has no arm named {:?}", a.name),
                ));
            };
            arm.weight = a.weight;
        }
    }
    if let Some(status) = patch.status {
        next.status = status;
    }
    if let Some(shadows) = patch.shadows {
        next.shadows = shadows;
    }
    if patch.segments.is_some() || patch.default.is_some() {
        if !segmented {
            return Err(invalid(
                "segments",
                "`segments` and `default` apply to segmented routes only",
            ));
        }
        for (key, model) in patch.segments.unwrap_or_default() {
            match model {
                Some(m) => next.segments.insert(key, m),
                None => next.segments.remove(&key),
            };
        }
        if let Some(d) = patch.default {
            next.default = Some(d);
        }
    }
    next.updated_ms = now_ms;
    let accepted: HashSet<&str> = served_models(exp)
        .chain(exp.shadows.iter().map(|s| s.model.as_str()))
        .collect();
    check(&next, catalog, &accepted, false)?;
    Ok(next)
}

/// The model strings a route can serve (never its shadows).
fn served_models(exp: &Experiment) -> impl Iterator<Item = &str> {
    exp.arms
        .iter()
        .map(|a| a.model.as_str())
        .chain(exp.segments.values().map(String::as_str))
        .chain(exp.default.as_deref())
}
