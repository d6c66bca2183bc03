//! Hyperparameter values: the grid's points, random draws on a linear or log scale from a seeded
//! counter-based generator (the same draws on every replay), and how values are printed.

use std::collections::BTreeMap;

use ferrotrain_crds::sweep::{AlgorithmKind, ParameterType, Scale, SweepParameter, TrainingSweep};

/// The points of a parameter on a grid.
pub fn grid_values(parameter: &SweepParameter) -> Vec<f64> {
    if let Some(values) = &parameter.values {
        return values.clone();
    }
    let (Some(min), Some(max)) = (parameter.min, parameter.max) else {
        return Vec::new();
    };
    let points = parameter.grid_points_or_default();
    if parameter.kind == ParameterType::Int && (max - min + 1.0) <= points as f64 {
        return (min as i64..=max as i64).map(|v| v as f64).collect();
    }
    let mut out: Vec<f64> = (0..points)
        .map(|i| {
            let u = i as f64 / (points - 1) as f64;
            let value = on_scale(parameter, min, max, u);
            if parameter.kind == ParameterType::Int {
                value.round()
            } else {
                value
            }
        })
        .collect();
    out.dedup();
    out
}

pub(super) fn on_scale(parameter: &SweepParameter, min: f64, max: f64, u: f64) -> f64 {
    let value = match parameter.scale_or_default() {
        Scale::Linear => min + u * (max - min),
        Scale::Log => (min.ln() + u * (max.ln() - min.ln())).exp(),
    };
    value.clamp(min, max)
}

/// Combination `index` of the grid: the last parameter varies fastest.
pub(super) fn grid_point(parameters: &[SweepParameter], index: usize) -> BTreeMap<String, f64> {
    let mut rest = index;
    let mut out = BTreeMap::new();
    for parameter in parameters.iter().rev() {
        let values = grid_values(parameter);
        if values.is_empty() {
            continue;
        }
        out.insert(parameter.path.clone(), values[rest % values.len()]);
        rest /= values.len();
    }
    out
}

/// A uniform number in [0, 1) from (seed, stream, indices): SplitMix64 over the inputs, so that
/// trial `i` gets the same values whatever happened to the others.
pub(super) fn uniform(seed: u64, stream: u64, indices: &[u64]) -> f64 {
    let mut x = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for &i in indices {
        x = splitmix(x ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    }
    (splitmix(x) >> 11) as f64 / (1u64 << 53) as f64
}

pub(super) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(super) const SAMPLE_STREAM: u64 = 1;

pub(super) const EXPLORE_STREAM: u64 = 2;

pub(super) const EXPLOIT_STREAM: u64 = 3;

pub(super) fn draw(parameter: &SweepParameter, u: f64) -> f64 {
    if let Some(values) = &parameter.values {
        let i = ((u * values.len() as f64) as usize).min(values.len().saturating_sub(1));
        return values.get(i).copied().unwrap_or_default();
    }
    let (min, max) = (parameter.min.unwrap_or(0.0), parameter.max.unwrap_or(1.0));
    if parameter.kind == ParameterType::Int {
        // Whole numbers in [min, max] equally likely (on a log scale: equally likely in log).
        let value = match parameter.scale_or_default() {
            Scale::Linear => (min + u * (max - min + 1.0)).floor(),
            Scale::Log => on_scale(parameter, min, max, u).round(),
        };
        return value.clamp(min, max);
    }
    on_scale(parameter, min, max, u)
}

/// Trial `index`'s values, drawn independently for each parameter.
pub fn sample(parameters: &[SweepParameter], seed: u64, index: usize) -> BTreeMap<String, f64> {
    parameters
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let u = uniform(seed, SAMPLE_STREAM, &[index as u64, j as u64]);
            (p.path.clone(), draw(p, u))
        })
        .collect()
}

/// `optimizer.lr=0.003, model.dropout=0.2`.
pub fn describe_parameters(parameters: &BTreeMap<String, f64>) -> String {
    parameters
        .iter()
        .map(|(k, v)| format!("{k}={}", format_value(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value with four significant digits, as the tables and events show it.
pub fn format_value(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else if v.fract() == 0.0 {
        format!("{v}")
    } else {
        let digits = (3 - v.abs().log10().floor() as i32).max(0) as usize;
        let text = format!("{v:.digits$}");
        text.trim_end_matches('0').to_string()
    }
}

/// The trials the plan creates in all.
pub fn planned_trials(sweep: &TrainingSweep) -> usize {
    let spec = &sweep.spec;
    let max = spec.max_trials.max(1) as usize;
    match spec.algorithm.kind {
        AlgorithmKind::Grid => spec
            .parameters
            .iter()
            .map(|p| grid_values(p).len().max(1))
            .try_fold(1usize, |acc, n| acc.checked_mul(n))
            .unwrap_or(usize::MAX)
            .min(max),
        AlgorithmKind::Random | AlgorithmKind::Asha => max,
        AlgorithmKind::Pbt => {
            let interval = spec.algorithm.interval_steps.unwrap_or(1).max(1);
            let generations = spec.template.trainer.max_steps.unwrap_or(interval) / interval;
            (spec.algorithm.population_or_default() * generations.max(1) as usize).min(max)
        }
    }
}
