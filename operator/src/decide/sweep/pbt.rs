//! Population-based training: after each interval the bottom quantile continues from a top
//! member's checkpoint with perturbed hyperparameters (exploit, then explore).

use std::collections::BTreeMap;

use ferrotrain_crds::sweep::{ParameterType, TrainingSweep, TrialState, TrialStatus};

use super::Decider;
use super::sampling::{EXPLOIT_STREAM, EXPLORE_STREAM, draw, sample, uniform};

impl Decider<'_> {
    /// PBT: member `index % population` of interval `index / population`, due once every
    /// member finished the interval before.
    pub(super) fn next_pbt_trial(&self, index: usize, name: String) -> Option<TrialStatus> {
        let spec = &self.sweep.spec;
        let algorithm = &spec.algorithm;
        let population = algorithm.population_or_default();
        let interval = algorithm.interval_steps.unwrap_or(1).max(1);
        let (generation, member) = (index / population, index % population);
        let base = TrialStatus {
            name,
            state: Some(TrialState::Pending),
            member: Some(member as i32),
            generation: Some(generation as i32),
            steps: generation as i64 * interval,
            ..TrialStatus::default()
        };
        if generation == 0 {
            return Some(TrialStatus {
                parameters: sample(&spec.parameters, algorithm.seed_or_default(), member),
                ..base
            });
        }
        let previous = &self.status.trials[(generation - 1) * population..generation * population];
        if previous
            .iter()
            .any(|t| !t.state.is_some_and(TrialState::is_done))
        {
            return None;
        }
        let (source, parameters) = pbt_exploit(self.sweep, previous, generation, member)?;
        Some(TrialStatus {
            parameters,
            parent: Some(source.name.clone()),
            init_from: source.checkpoint.clone(),
            ..base
        })
    }
}

/// PBT: where member `member` of interval `generation` starts from, and with which values.
/// The previous interval's trials are ranked by their objective (failed ones and those without
/// a checkpoint last); the bottom quantile copies a top-quantile trial and explores.
pub(super) fn pbt_exploit<'t>(
    sweep: &TrainingSweep,
    previous: &'t [TrialStatus],
    generation: usize,
    member: usize,
) -> Option<(&'t TrialStatus, BTreeMap<String, f64>)> {
    let spec = &sweep.spec;
    let algorithm = &spec.algorithm;
    let usable = |t: &TrialStatus| {
        t.state == Some(TrialState::Succeeded) && t.checkpoint.is_some() && t.metric.is_some()
    };
    let mut ranked: Vec<&TrialStatus> = previous.iter().collect();
    // Best first; ties by member, so the order is total.
    ranked.sort_by(|a, b| {
        let key = |t: &TrialStatus| (usable(t), t.metric.unwrap_or(f64::NAN));
        let ((ua, ma), (ub, mb)) = (key(a), key(b));
        ub.cmp(&ua)
            .then_with(|| {
                if spec.objective.better(ma, mb) {
                    std::cmp::Ordering::Less
                } else if spec.objective.better(mb, ma) {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .then(a.member.cmp(&b.member))
    });
    let population = ranked.len();
    let cut = ((population as f64 * algorithm.quantile_or_default()).floor() as usize)
        .max(1)
        .min(population / 2);
    let top: Vec<&TrialStatus> = ranked
        .iter()
        .take(cut)
        .copied()
        .filter(|t| usable(t))
        .collect();
    let own = previous.iter().find(|t| t.member == Some(member as i32))?;
    let position = ranked.iter().position(|t| t.member == own.member)?;
    let bottom = position >= population - cut || !usable(own);
    if !bottom || top.is_empty() {
        return usable(own).then(|| (own, own.parameters.clone()));
    }
    let pick = uniform(
        algorithm.seed_or_default(),
        EXPLOIT_STREAM,
        &[generation as u64, member as u64],
    );
    let source = top[((pick * top.len() as f64) as usize).min(top.len() - 1)];
    let parameters = explore(sweep, &source.parameters, generation, member);
    Some((source, parameters))
}

/// PBT explore: each value is drawn afresh with the resample probability, else multiplied by
/// 0.8 or 1.2 (a categorical one moves to a neighbouring value), within its range.
pub(super) fn explore(
    sweep: &TrainingSweep,
    parameters: &BTreeMap<String, f64>,
    generation: usize,
    member: usize,
) -> BTreeMap<String, f64> {
    let algorithm = &sweep.spec.algorithm;
    let seed = algorithm.seed_or_default();
    let resample = algorithm.resample_probability_or_default();
    sweep
        .spec
        .parameters
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let at = |salt: u64| {
                uniform(
                    seed,
                    EXPLORE_STREAM,
                    &[generation as u64, member as u64, j as u64, salt],
                )
            };
            let current = parameters.get(&p.path).copied().unwrap_or_default();
            let value = if at(0) < resample {
                draw(p, at(1))
            } else if let Some(values) = &p.values {
                let i = values.iter().position(|v| *v == current).unwrap_or(0);
                let next = if at(2) < 0.5 {
                    i.saturating_sub(1)
                } else {
                    (i + 1).min(values.len() - 1)
                };
                values[next]
            } else {
                let factor = if at(2) < 0.5 { 0.8 } else { 1.2 };
                let value = current * factor;
                let value = if p.kind == ParameterType::Int {
                    value.round()
                } else {
                    value
                };
                value.clamp(p.min.unwrap_or(f64::MIN), p.max.unwrap_or(f64::MAX))
            };
            (p.path.clone(), value)
        })
        .collect()
}
