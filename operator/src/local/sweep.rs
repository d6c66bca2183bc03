//! `ferrotrain sweep`: a TrainingSweep on one machine. The same [`decide`] that drives
//! TrainingJobs in a cluster drives local trials, each a `ferrotrain run` of its own in a thread
//! (worker processes, checkpoints, restarts), `parallelTrials` at a time. A trial is stopped as a
//! suspended job is: SIGTERM, emergency checkpoint. Ctrl-C pauses the sweep; the same command
//! resumes it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferrotrain_crds::sweep::{SweepPhase, TrainingSweep, TrainingSweepSpec, TrialState};
use ferrotrain_crds::{CheckpointSpec, Phase, TrainingJob, TrainingJobStatus};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::decide::sweep::{
    SweepAction, TrialObservation, decide, describe_parameters, format_value, planned_trials,
    trial_object, trial_spec,
};
use crate::local::display::StatusThrottle;
use crate::local::error::RunError;
use crate::local::preflight::{
    available_memory, check_fits, check_memory, load_one, worker_memory_estimate,
};
use crate::local::processes::compute_threads_per_worker;
use crate::local::runner::{RunOptions, RunOutcome};
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

/// A trial running in this process.
struct LocalTrial {
    interrupts: Arc<AtomicUsize>,
    status: Arc<Mutex<TrainingJobStatus>>,
    handle: Option<JoinHandle<Result<RunOutcome, RunError>>>,
    /// Its end: the final status, or why it could not run.
    ended: Option<Result<RunOutcome, String>>,
    /// Total steps of one complete trial, once reported.
    total_steps: Option<i64>,
    /// Every evaluation seen: step → objective.
    curve: BTreeMap<i64, f64>,
}

impl LocalTrial {
    fn observe(&mut self, key: &str) -> TrialObservation {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(handle) = self.handle.take()
        {
            self.ended = Some(match handle.join() {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the trial's runner panicked".to_string()),
            });
        }
        let (status, phase_override, message) = match &self.ended {
            None => (
                self.status.lock().map(|s| s.clone()).unwrap_or_default(),
                None,
                None,
            ),
            Some(Ok(
                RunOutcome::Succeeded(status)
                | RunOutcome::Failed(status)
                | RunOutcome::Suspended(status),
            )) => ((**status).clone(), None, None),
            Some(Err(message)) => (
                TrainingJobStatus::default(),
                Some(Phase::Failed),
                Some(message.clone()),
            ),
        };
        let progress = status.progress.clone().unwrap_or_default();
        if let Some(total) = progress.total_steps {
            self.total_steps = Some(total);
        }
        for evaluation in &progress.evaluations {
            if let Some(value) = evaluation.metrics.get(key) {
                self.curve.insert(evaluation.step, *value);
            }
        }
        TrialObservation {
            phase: phase_override.or(status.phase),
            step: progress.step,
            total_steps: progress.total_steps,
            completed_at: status.completion_time.map(|t| t.0),
            metrics: progress.metrics.clone(),
            evaluations: progress.evaluations.clone(),
            checkpoint: status.checkpoint.as_ref().and_then(|c| c.uri.clone()),
            message: message.or(status.message),
        }
    }

    fn running(&self) -> bool {
        self.handle.is_some()
    }
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
    std::fs::create_dir_all(&sweep_dir)?;
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
        options.oversubscribe,
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

/// One line per running trial while the sweep runs.
struct SweepDisplay {
    json: bool,
    multi: indicatif::MultiProgress,
    bars: Mutex<BTreeMap<String, indicatif::ProgressBar>>,
    status_lines: Mutex<StatusThrottle>,
}

impl SweepDisplay {
    fn new(json: bool) -> Self {
        let multi = indicatif::MultiProgress::new();
        if json {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Self {
            json,
            multi,
            bars: Mutex::new(BTreeMap::new()),
            status_lines: Mutex::new(StatusThrottle::new(Duration::from_secs(2))),
        }
    }

    fn line(&self, text: &str) {
        let line = if self.json {
            serde_json::json!({"event": "message", "message": text}).to_string()
        } else {
            text.to_string()
        };
        // Printed above the bars, or plainly when there are none (not a terminal).
        self.multi.suspend(|| println!("{line}"));
    }

    /// Prints the newest status line the throttle held back: the stream ends on the final one.
    fn flush_status(&self) {
        let held = self.status_lines.lock().ok().and_then(|mut l| l.flush());
        if let Some(line) = held {
            self.multi.suspend(|| println!("{line}"));
        }
    }

    fn trials(
        &self,
        status: &ferrotrain_crds::sweep::TrainingSweepStatus,
        trials: &BTreeMap<String, LocalTrial>,
        key: &str,
    ) {
        if self.json {
            let running: Vec<serde_json::Value> = status
                .trials
                .iter()
                .filter(|t| t.state == Some(TrialState::Running))
                .map(|t| serde_json::json!({"name": t.name, "step": t.steps, key: t.metric}))
                .collect();
            let line = serde_json::json!({
                "event": "status",
                "phase": status.phase,
                "trials": status.trials_summary,
                "running": running,
                "best": status.best.as_ref().map(|b| serde_json::json!({"trial": b.trial, key: b.metric})),
            })
            .to_string();
            let due = self.status_lines.lock().ok().and_then(|mut lines| {
                lines.offer(Instant::now(), &format!("{:?}", status.phase), line)
            });
            if let Some(line) = due {
                self.multi.suspend(|| println!("{line}"));
            }
            return;
        }
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        for trial in &status.trials {
            let active = trial.state == Some(TrialState::Running)
                || trial.state == Some(TrialState::Pending);
            match (active, bars.get(&trial.name)) {
                (true, None) => {
                    let bar = self.multi.add(indicatif::ProgressBar::new(1));
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix} [{bar:20}] {pos}/{len} {wide_msg}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(trial.name.clone());
                    bars.insert(trial.name.clone(), bar);
                }
                (false, Some(_)) => {
                    if let Some(bar) = bars.remove(&trial.name) {
                        bar.finish_and_clear();
                        self.multi.remove(&bar);
                    }
                }
                _ => {}
            }
            if let Some(bar) = bars.get(&trial.name) {
                if let Some(total) = trials.get(&trial.name).and_then(|t| t.total_steps) {
                    bar.set_length(total.max(1) as u64);
                }
                bar.set_position(trial.steps.max(0) as u64);
                bar.set_message(format!(
                    "{} {key} {}",
                    describe_parameters(&trial.parameters),
                    trial.metric.map_or("-".into(), |m| format!("{m:.4}"))
                ));
            }
        }
    }
}

impl Drop for SweepDisplay {
    fn drop(&mut self) {
        if let Ok(bars) = self.bars.lock() {
            for bar in bars.values() {
                bar.finish_and_clear();
            }
        }
        let _ = self.multi.clear();
    }
}

/// The median of the trials' final objective values.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// The results table, the steps trained against running every trial to completion, the best
/// trial and the median.
fn print_results(
    sweep: &TrainingSweep,
    status: &ferrotrain_crds::sweep::TrainingSweepStatus,
    trials: &BTreeMap<String, LocalTrial>,
    json: bool,
) {
    let key = sweep.spec.objective.metric.key();
    let pbt = sweep.spec.algorithm.kind == ferrotrain_crds::sweep::AlgorithmKind::Pbt;
    // A pbt trial is one interval: its members train maxSteps each.
    let full = if pbt {
        sweep
            .spec
            .template
            .trainer
            .max_steps
            .map(|steps| steps * sweep.spec.algorithm.population_or_default() as i64)
    } else {
        trials
            .values()
            .filter_map(|t| t.total_steps)
            .max()
            .map(|per_trial| per_trial * planned_trials(sweep) as i64)
    };
    let trained = status.trained_steps.unwrap_or(0);
    let last_generation = status.trials.iter().filter_map(|t| t.generation).max();
    let mut finals: Vec<f64> = status
        .trials
        .iter()
        .filter(|t| !pbt || t.generation == last_generation)
        .filter_map(|t| t.metric)
        .collect();
    let median = median(&mut finals);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "results",
                "phase": status.phase,
                "trials": status.trials,
                "best": status.best,
                "trainedSteps": trained,
                "stepsToCompleteEveryTrial": full,
                "median": median,
            })
        );
        return;
    }
    let paths: Vec<&str> = sweep
        .spec
        .parameters
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    let mut header = format!("{:<24}", "trial");
    for path in &paths {
        header.push_str(&format!(" {path:>14}"));
    }
    if pbt {
        header.push_str(&format!(" {:<24}", "from"));
    }
    header.push_str(&format!(" {:<10} {:>7} {:>12}", "state", "steps", key));
    println!("{header}");
    let best = status.best.as_ref().map(|b| b.trial.as_str());
    for trial in &status.trials {
        let mut row = format!("{:<24}", trial.name);
        for path in &paths {
            let value = trial
                .parameters
                .get(*path)
                .map_or("-".into(), |v| format_value(*v));
            row.push_str(&format!(" {value:>14}"));
        }
        if pbt {
            row.push_str(&format!(" {:<24}", trial.parent.as_deref().unwrap_or("-")));
        }
        row.push_str(&format!(
            " {:<10} {:>7} {:>12}{}",
            format!("{:?}", trial.state.unwrap_or(TrialState::Pending)),
            trial.steps,
            trial.metric.map_or("-".into(), |m| format!("{m:.4}")),
            if best == Some(trial.name.as_str()) {
                "  best"
            } else {
                ""
            }
        ));
        println!("{row}");
    }
    match full {
        Some(full) if full > 0 => println!(
            "trained steps: {trained} of {full} for every trial to run to completion ({:.1} %)",
            trained as f64 / full as f64 * 100.0
        ),
        _ => println!("trained steps: {trained}"),
    }
    if let Some(median) = median {
        let which = if pbt { "members at the end" } else { "trials" };
        println!("median {key} of the {which}: {median:.4}");
    }
    if let Some(best) = &status.best {
        println!(
            "best: {} with {key} {:.4} ({}){}",
            best.trial,
            best.metric,
            describe_parameters(&best.parameters),
            best.checkpoint
                .as_ref()
                .map(|c| format!(", checkpoint {c}"))
                .unwrap_or_default()
        );
    }
}

fn write_curves(
    path: &Path,
    sweep: &TrainingSweep,
    trials: &BTreeMap<String, LocalTrial>,
    json: bool,
) {
    let key = sweep.spec.objective.metric.key();
    let series: Vec<crate::local::curve::Series> = trials
        .iter()
        .map(|(name, t)| crate::local::curve::Series {
            label: name.clone(),
            points: t.curve.iter().map(|(s, v)| (*s as f64, *v)).collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let title = sweep.metadata.name.clone().unwrap_or_default();
    let percent = key == "valAccuracy";
    let line = match crate::local::curve::write_sweep_png(path, &title, key, percent, &series) {
        Ok(()) => format!("validation curves: {}", path.display()),
        Err(e) => e.to_string(),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "message", "message": line})
        );
    } else {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrotrain_crds::sweep::TrialStatus;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [0.3, 0.1, 0.2]), Some(0.2));
        assert_eq!(median(&mut [0.4, 0.1, 0.2, 0.3]), Some(0.25));
        assert_eq!(median(&mut []), None);
    }

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
