//! The trials of a sweep: which one comes next, its name, its hyperparameters written into the
//! template, and the TrainingJob made from it.

use ferrotrain_crds::sweep::{AlgorithmKind, TrainingSweep, TrialState, TrialStatus};
use ferrotrain_crds::tunables::tunables;
use ferrotrain_crds::{InitFromSpec, RunPolicy, TrainerSpec, TrainingJobSpec};
use kube::{Resource, ResourceExt};

use super::Decider;
use super::sampling::{describe_parameters, grid_point, planned_trials, sample};
use super::{SWEEP_LABEL, SweepAction};
use crate::decide::job::Event;

impl Decider<'_> {
    pub(super) fn create_trials(&mut self) {
        let parallel = self.sweep.spec.parallel_trials_or_default();
        while self.active() < parallel {
            let Some(trial) = self.next_trial() else {
                break;
            };
            self.events.push(Event {
                warning: false,
                reason: "TrialCreated".into(),
                message: format!(
                    "{} with {}",
                    trial.name,
                    describe_parameters(&trial.parameters)
                ),
                trial: Some(trial.name.clone()),
            });
            self.push_create(&trial);
            self.status.trials.push(trial);
        }
    }

    pub(super) fn push_create(&mut self, trial: &TrialStatus) {
        match trial_spec(self.sweep, trial) {
            Ok(spec) => self.actions.push(SweepAction::CreateTrial {
                name: trial.name.clone(),
                spec: Box::new(spec),
            }),
            Err(message) => self.events.push(Event {
                warning: true,
                reason: "InvalidTrial".into(),
                message: format!("{}: {message}", trial.name),
                trial: Some(trial.name.clone()),
            }),
        }
    }

    /// The next trial of the plan, if one is due now.
    pub(super) fn next_trial(&self) -> Option<TrialStatus> {
        let sweep = self.sweep;
        let index = self.status.trials.len();
        if index >= planned_trials(sweep) {
            return None;
        }
        let name = trial_name(sweep, index);
        let spec = &sweep.spec;
        let trial = match spec.algorithm.kind {
            AlgorithmKind::Grid => TrialStatus {
                parameters: grid_point(&spec.parameters, index),
                ..TrialStatus::default()
            },
            AlgorithmKind::Random | AlgorithmKind::Asha => TrialStatus {
                parameters: sample(&spec.parameters, spec.algorithm.seed_or_default(), index),
                ..TrialStatus::default()
            },
            AlgorithmKind::Pbt => return self.next_pbt_trial(index, name),
        };
        Some(TrialStatus {
            name,
            state: Some(TrialState::Pending),
            ..trial
        })
    }
}

/// The TrainingJob name of trial `index`: `<sweep>-<index>`, three digits at least.
pub fn trial_name(sweep: &TrainingSweep, index: usize) -> String {
    let name = sweep.metadata.name.as_deref().unwrap_or("sweep");
    format!("{name}-{index:03}")
}

/// The TrainingJob spec of a trial: the template with the trial's values set, its own
/// checkpoint location under the template's, and for pbt its interval's end and warm start.
pub fn trial_spec(sweep: &TrainingSweep, trial: &TrialStatus) -> Result<TrainingJobSpec, String> {
    let spec = &sweep.spec;
    let mut job = spec.template.clone();
    let integers: Vec<String> = tunables()
        .into_iter()
        .filter(|t| t.integer)
        .map(|t| t.path)
        .collect();
    for (path, value) in &trial.parameters {
        set_parameter(&mut job.trainer, path, *value, integers.contains(path))?;
    }
    if let Some(checkpoint) = job.checkpoint.as_mut() {
        checkpoint.uri = format!("{}/{}", checkpoint.uri.trim_end_matches('/'), trial.name);
    }
    if spec.algorithm.kind == AlgorithmKind::Pbt {
        let interval = spec.algorithm.interval_steps.unwrap_or(1).max(1);
        let generation = i64::from(trial.generation.unwrap_or(0));
        job.trainer.max_steps = Some((generation + 1) * interval);
        job.trainer.epochs = None;
        job.trainer.init_from = trial.init_from.as_ref().map(|uri| InitFromSpec {
            uri: uri.clone(),
            reset_optimizer: None,
            continue_steps: Some(true),
            layers: None,
        });
    }
    // A trial is stopped by suspension; one created while the sweep is suspended starts so.
    if spec.suspend_or_default() {
        job.run_policy = Some(RunPolicy {
            suspend: Some(true),
            ..job.run_policy.unwrap_or_default()
        });
    }
    Ok(job)
}

/// A trial's TrainingJob as the API takes it: labelled with its sweep and owned by it (when
/// the sweep has a uid, as in a cluster).
pub fn trial_object(
    sweep: &TrainingSweep,
    name: &str,
    spec: &ferrotrain_crds::TrainingJobSpec,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": name,
            "namespace": sweep.namespace(),
            "labels": {SWEEP_LABEL: sweep.name_any()},
            "ownerReferences": sweep.controller_owner_ref(&()).map(|o| vec![o]),
        },
        "spec": spec,
    })
}

/// Sets `path` (under spec.trainer) to `value`. A missing optimizer or lrSchedule is filled in
/// with its defaults first, so `optimizer.lr` works on a template that leaves the optimiser out.
pub fn set_parameter(
    trainer: &mut TrainerSpec,
    path: &str,
    value: f64,
    integer: bool,
) -> Result<(), String> {
    if path.starts_with("optimizer.") && trainer.optimizer.is_none() {
        trainer.optimizer = Some(trainer.optimizer_or_default());
    }
    if path.starts_with("lrSchedule.") && trainer.lr_schedule.is_none() {
        trainer.lr_schedule = Some(trainer.lr_schedule_or_default());
    }
    let mut json = serde_json::to_value(&*trainer).map_err(|e| e.to_string())?;
    let (parents, leaf) = match path.rsplit_once('.') {
        Some((parents, leaf)) => (parents.split('.').collect::<Vec<_>>(), leaf),
        None => (Vec::new(), path),
    };
    let mut node = &mut json;
    for part in parents {
        node = node
            .as_object_mut()
            .ok_or_else(|| format!("spec.trainer.{path}: {part} is not an object"))?
            .entry(part.to_string())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    }
    let number = if integer {
        serde_json::Value::from(value.round() as i64)
    } else {
        serde_json::Value::from(value)
    };
    node.as_object_mut()
        .ok_or_else(|| format!("spec.trainer.{path}: its parent is not an object"))?
        .insert(leaf.to_string(), number);
    *trainer = serde_json::from_value(json).map_err(|e| {
        format!("spec.template.trainer.{path}: setting it needs more of its parent object in the template: {e}")
    })?;
    Ok(())
}
