//! `ferrotrain sweep`: a TrainingSweep on one machine. The same [`decide`] that drives
//! TrainingJobs in a cluster drives local trials, each a `ferrotrain run` of its own in a thread
//! (worker processes, checkpoints, restarts), `parallelTrials` at a time. A trial is stopped as a
//! suspended job is: SIGTERM, emergency checkpoint. Ctrl-C pauses the sweep; the same command
//! resumes it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrotrain_crds::sweep::{SweepPhase, TrainingSweep, TrainingSweepSpec, TrialState};
use ferrotrain_crds::{CheckpointSpec, TrainingJob, TrainingJobStatus};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::decide::sweep::trials::{trial_object, trial_spec};
use crate::decide::sweep::{SweepAction, TrialObservation, decide};
use crate::local::error::RunError;
use crate::local::preflight::{
    available_memory, check_fits, check_memory, load_one, worker_memory_estimate,
};
use crate::local::processes::{compute_threads_per_worker, create_state_dir};
use crate::local::runner::RunOptions;
use crate::local::sweep_display::{SweepDisplay, print_results, write_curves};
use crate::local::trial::LocalTrial;
use crate::manifest::Admission;

/// How a local sweep ended.
#[derive(Debug, PartialEq)]
pub enum SweepOutcome {
    /// Every trial is done.
    Succeeded(Box<ferrotrain_crds::sweep::TrainingSweepStatus>),
    /// Too many trials failed, or the sweep cannot run.
    Failed(Box<ferrotrain_crds::sweep::TrainingSweepStatus>),
    /// Ctrl-C: the trials checkpointed and stopped; the same command resumes.
    Suspended(Box<ferrotrain_crds::sweep::TrainingSweepStatus>),
}

/// What `ferrotrain sweep` keeps between runs of the same sweep.
#[derive(Serialize, Deserialize)]
struct Saved {
    spec: TrainingSweepSpec,
    status: ferrotrain_crds::sweep::TrainingSweepStatus,
}

/// Reads and admits the one TrainingSweep in `path`.
pub fn load_sweep(path: &Path) -> Result<TrainingSweep, RunError> {
    load_one(path, "TrainingSweep", Admission::admit_sweep)
}

/// Runs the sweep until every trial is done or Ctrl-C pauses it. `interrupts` counts Ctrl-C
/// presses.
pub fn run_sweep(
    mut sweep: TrainingSweep,
    options: &RunOptions,
    interrupts: Arc<AtomicUsize>,
) -> Result<SweepOutcome, RunError> {
    let name = sweep
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "sweep".into());
    sweep
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    let sweep_dir = options.state_dir.join(&name);
    create_state_dir(&options.state_dir, &sweep_dir)?;
    if sweep.spec.template.checkpoint.is_none() {
        // Trials warm-start from each other (pbt): they need checkpoints of their own.
        sweep.spec.template.checkpoint = Some(CheckpointSpec {
            uri: format!("file://{}", sweep_dir.join("checkpoints").display()),
            endpoint: None,
            region: None,
            secret_ref: None,
            every_steps: None,
            every_seconds: Some(30),
            keep: Some(2),
            resume: None,
        });
    }
    let parallel = sweep.spec.parallel_trials_or_default();
    let replicas = sweep.spec.template.workers.replicas.max(1);
    let workers = replicas.saturating_mul(parallel as i32);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    check_fits(workers, cpus, options.oversubscribe).map_err(|e| {
        RunError::Preflight(format!(
            "{e} (spec.parallelTrials {parallel} × {replicas} workers of each trial)"
        ))
    })?;
    check_memory(
        workers,
        worker_memory_estimate(&sweep.spec.template.trainer),
        available_memory(),
    )
    .map_err(|e| {
        RunError::Preflight(format!(
            "{e} (spec.parallelTrials {parallel} trials at once)"
        ))
    })?;
    let state_file = sweep_dir.join("sweep-state.yaml");
    sweep.status = restore(&state_file, &sweep.spec)?;

    let admission = Admission::new().map_err(|e| RunError::Preflight(e.to_string()))?;
    // Frequent reports: the rungs of a trial are judged from them while it trains on.
    let mut worker = options.worker.clone();
    worker.extend(["--report-every-seconds".to_string(), "0.25".to_string()]);
    let trial_options = RunOptions {
        worker,
        state_dir: sweep_dir.clone(),
        quiet: true,
        oversubscribe: true,
        threads_per_worker: Some(compute_threads_per_worker(cpus, workers.max(1) as u32)),
        ..options.clone()
    };
    let display = SweepDisplay::new(options.json);
    let key = sweep.spec.objective.metric.key();
    let mut trials: BTreeMap<String, LocalTrial> = BTreeMap::new();
    let mut paused_by_user = false;
    let mut last_save = Instant::now();
    loop {
        let presses = interrupts.load(Ordering::SeqCst);
        if presses >= 1 && !paused_by_user {
            paused_by_user = true;
            sweep.spec.suspend = Some(true);
            display.line("Ctrl-C: pausing the trials after their emergency checkpoints (press again to kill them)");
        }
        if presses >= 2 {
            for trial in trials.values() {
                trial.interrupts.fetch_max(2, Ordering::SeqCst);
            }
        }
        let observed: BTreeMap<String, TrialObservation> = trials
            .iter_mut()
            .map(|(n, t)| (n.clone(), t.observe(key)))
            .collect();
        let decision = decide(&sweep, &observed, Timestamp::now());
        for event in &decision.events {
            display.line(&format!(
                "{} {}: {}",
                if event.warning { "!" } else { "-" },
                event.reason,
                event.message
            ));
        }
        for action in &decision.actions {
            match action {
                SweepAction::CreateTrial { name: trial, spec } => {
                    let started = admit_trial(&admission, &trial_object(&sweep, trial, spec))
                        .map(|job| start_trial(job, &trial_options));
                    trials.insert(
                        trial.clone(),
                        started.unwrap_or_else(|message| LocalTrial {
                            interrupts: Arc::new(AtomicUsize::new(0)),
                            status: Arc::default(),
                            handle: None,
                            ended: Some(Err(message)),
                            total_steps: None,
                            curve: BTreeMap::new(),
                        }),
                    );
                }
                SweepAction::StopTrial { name: trial }
                | SweepAction::PauseTrial { name: trial } => {
                    if let Some(t) = trials.get(trial) {
                        t.interrupts.fetch_max(1, Ordering::SeqCst);
                    }
                }
                SweepAction::ResumeTrial { name: trial } => {
                    // A paused trial's runner has ended; it starts again from its checkpoint.
                    let Some(status) = decision.status.trials.iter().find(|t| &t.name == trial)
                    else {
                        continue;
                    };
                    let spec = match trial_spec(&sweep, status) {
                        Ok(spec) => spec,
                        Err(message) => {
                            display.line(&format!("! {trial}: {message}"));
                            continue;
                        }
                    };
                    if let Ok(job) = admit_trial(&admission, &trial_object(&sweep, trial, &spec)) {
                        let mut started = start_trial(job, &trial_options);
                        if let Some(old) = trials.remove(trial) {
                            started.curve = old.curve;
                        }
                        trials.insert(trial.clone(), started);
                    }
                }
            }
        }
        sweep.status = Some(decision.status.clone());
        display.trials(&decision.status, &trials, key);
        if last_save.elapsed() >= Duration::from_secs(5) {
            save(&state_file, &sweep)?;
            last_save = Instant::now();
        }
        let live = trials.values().any(LocalTrial::running);
        let status = decision.status.clone();
        let outcome = match status.phase {
            Some(SweepPhase::Succeeded) if !live => Some(SweepOutcome::Succeeded(Box::new(status))),
            Some(SweepPhase::Failed) if !live => Some(SweepOutcome::Failed(Box::new(status))),
            Some(SweepPhase::Suspended) if !live && paused_by_user => {
                Some(SweepOutcome::Suspended(Box::new(status)))
            }
            _ => None,
        };
        if let Some(outcome) = outcome {
            // A paused sweep resumes from here; the suspension itself is not kept.
            sweep.spec.suspend = None;
            save(&state_file, &sweep)?;
            display.flush_status();
            drop(display);
            let status = sweep.status.clone().unwrap_or_default();
            print_results(&sweep, &status, &trials, options.json);
            let png = sweep_dir.join("curves.png");
            write_curves(&png, &sweep, &trials, options.json);
            return Ok(outcome);
        }
        std::thread::sleep(options.tick);
    }
}

fn admit_trial(admission: &Admission, object: &serde_json::Value) -> Result<TrainingJob, String> {
    admission.admit(object).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

fn start_trial(job: TrainingJob, options: &RunOptions) -> LocalTrial {
    let interrupts = Arc::new(AtomicUsize::new(0));
    let status = Arc::new(Mutex::new(TrainingJobStatus::default()));
    let options = RunOptions {
        observer: Some(Arc::clone(&status)),
        ..options.clone()
    };
    let handle = {
        let interrupts = Arc::clone(&interrupts);
        std::thread::spawn(move || crate::local::runner::run(job, &options, interrupts))
    };
    LocalTrial {
        interrupts,
        status,
        handle: Some(handle),
        ended: None,
        total_steps: None,
        curve: BTreeMap::new(),
    }
}

/// The status of an earlier run of the same sweep, to go on from; a sweep of another spec under
/// the same name is refused (its trials' checkpoints would be taken for the new ones).
fn restore(
    path: &Path,
    spec: &TrainingSweepSpec,
) -> Result<Option<ferrotrain_crds::sweep::TrainingSweepStatus>, RunError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let saved: Saved = serde_yaml::from_str(&text).map_err(|e| {
        RunError::Preflight(format!("{}: unreadable sweep state: {e}", path.display()))
    })?;
    let mut comparable = saved.spec.clone();
    comparable.suspend = spec.suspend;
    if &comparable != spec {
        return Err(RunError::Preflight(format!(
            "{} holds an earlier sweep of the same name with another spec; remove {} or use another --state-dir",
            path.display(),
            path.parent().unwrap_or(path).display()
        )));
    }
    let mut status = saved.status;
    if matches!(
        status.phase,
        Some(SweepPhase::Succeeded | SweepPhase::Failed)
    ) {
        return Err(RunError::Preflight(format!(
            "{}: this sweep has already finished ({:?}); remove {} to run it again",
            path.display(),
            status.phase.unwrap_or(SweepPhase::Succeeded),
            path.parent().unwrap_or(path).display()
        )));
    }
    // Trials of a runner that was killed were training: they resume from their checkpoints.
    for trial in &mut status.trials {
        if matches!(trial.state, Some(TrialState::Running | TrialState::Pending)) {
            trial.state = Some(TrialState::Paused);
        }
    }
    Ok(Some(status))
}

fn save(path: &Path, sweep: &TrainingSweep) -> Result<(), RunError> {
    let saved = Saved {
        spec: TrainingSweepSpec {
            suspend: None,
            ..sweep.spec.clone()
        },
        status: sweep.status.clone().unwrap_or_default(),
    };
    let text = serde_yaml::to_string(&saved)
        .map_err(|e| RunError::Preflight(format!("cannot write the sweep state: {e}")))?;
    let temporary = path.with_extension("yaml.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(temporary, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrotrain_crds::sweep::TrialStatus;

    #[test]
    fn an_earlier_sweep_of_another_spec_is_refused_and_a_paused_one_resumes() {
        let dir =
            std::env::temp_dir().join(format!("ferrotrain-sweep-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("sweep-state.yaml");
        let sweep: TrainingSweep = serde_yaml::from_str(
            "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingSweep\nmetadata: {name: s}\nspec:\n  template: {workers: {replicas: 1}, trainer: {model: {type: mlp}, dataset: {type: mnist}, batchSize: 64, maxSteps: 100}}\n  parameters: [{path: optimizer.lr, type: double, min: 0.001, max: 0.01}]\n  objective: {metric: valAccuracy}\n  algorithm: {type: random}\n  maxTrials: 2\n",
        )
        .expect("sweep");
        assert_eq!(restore(&file, &sweep.spec).expect("nothing saved"), None);
        let mut saved = sweep.clone();
        saved.status = Some(ferrotrain_crds::sweep::TrainingSweepStatus {
            phase: Some(SweepPhase::Suspended),
            trials: vec![TrialStatus {
                name: "s-000".into(),
                state: Some(TrialState::Running),
                ..TrialStatus::default()
            }],
            ..Default::default()
        });
        save(&file, &saved).expect("saved");
        let restored = restore(&file, &sweep.spec)
            .expect("same spec")
            .expect("status");
        assert_eq!(restored.trials[0].state, Some(TrialState::Paused));
        let mut other = sweep.spec.clone();
        other.max_trials = 3;
        let refused = restore(&file, &other).expect_err("another spec");
        assert!(refused.to_string().contains("another spec"), "{refused}");
        std::fs::remove_dir_all(dir).ok();
    }
}
