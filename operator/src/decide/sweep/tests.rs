//! Table tests of the sweep decision: creation under the parallelism limit, each algorithm's
//! rules, budgets, failures and suspension.

use ferrotrain_crds::{InitFromSpec, TrainerSpec};

use super::*;
use crate::decide::sweep::sampling::{format_value, planned_trials, sample};
use crate::decide::sweep::trials::set_parameter;

const T0: i64 = 1_800_000_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(T0 + seconds).expect("valid time")
}

fn sweep(algorithm: &str, extra: &str) -> TrainingSweep {
    let yaml = format!(
        "apiVersion: ferrotrain.io/v1alpha1
kind: TrainingSweep
metadata: {{name: s, namespace: ml, generation: 1}}
spec:
  template:
    workers: {{replicas: 1}}
    trainer: {{model: {{type: mlp}}, dataset: {{type: mnist}}, batchSize: 64, maxSteps: 900, evalEverySteps: 100}}
    checkpoint: {{uri: 's3://b/sweeps'}}
  parameters:
  - {{path: optimizer.lr, type: double, min: 0.0001, max: 0.1, scale: log}}
  - {{path: model.dropout, type: double, min: 0.0, max: 0.5}}
  objective: {{metric: valAccuracy}}
  algorithm: {algorithm}
  maxTrials: 6
  parallelTrials: 2
{extra}"
    );
    serde_yaml::from_str(&yaml).expect("test sweep")
}

/// Observations keyed by trial name.
type World = BTreeMap<String, TrialObservation>;

fn running(step: i64, evals: &[(i64, f64)]) -> TrialObservation {
    TrialObservation {
        phase: Some(Phase::Running),
        step,
        metrics: evals
            .last()
            .map(|(_, v)| BTreeMap::from([("valAccuracy".to_string(), *v)]))
            .unwrap_or_default(),
        evaluations: evals
            .iter()
            .map(|(s, v)| Evaluation {
                step: *s,
                metrics: BTreeMap::from([("valAccuracy".to_string(), *v)]),
            })
            .collect(),
        checkpoint: Some(format!("s3://b/ckpt/manifests/{step:012}.json")),
        message: None,
        ..TrialObservation::default()
    }
}

fn done(step: i64, accuracy: f64) -> TrialObservation {
    TrialObservation {
        phase: Some(Phase::Succeeded),
        total_steps: Some(step),
        ..running(step, &[(step, accuracy)])
    }
}

/// Runs decide and feeds the status back, as the controllers do.
fn step(sweep: &mut TrainingSweep, world: &World, now: i64) -> SweepDecision {
    let d = decide(sweep, world, at(now));
    sweep.status = Some(d.status.clone());
    d
}

fn created(d: &SweepDecision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            SweepAction::CreateTrial { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn stopped(d: &SweepDecision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            SweepAction::StopTrial { name } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn spec_of<'d>(d: &'d SweepDecision, trial: &str) -> &'d TrainingJobSpec {
    d.actions
        .iter()
        .find_map(|a| match a {
            SweepAction::CreateTrial { name, spec } if name == trial => Some(spec.as_ref()),
            _ => None,
        })
        .expect("trial created")
}

fn state(sweep: &TrainingSweep, trial: &str) -> TrialState {
    sweep
        .status
        .as_ref()
        .and_then(|s| s.trials.iter().find(|t| t.name == trial))
        .and_then(|t| t.state)
        .expect("trial known")
}

fn phase(sweep: &TrainingSweep) -> SweepPhase {
    sweep
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .expect("phase set")
}

#[test]
fn random_search_creates_parallel_trials_with_values_in_range_and_their_own_checkpoints() {
    let mut s = sweep("{type: random, seed: 7}", "");
    let d = step(&mut s, &World::new(), 0);
    assert_eq!(created(&d), ["s-000", "s-001"], "parallelTrials at once");
    assert_eq!(phase(&s), SweepPhase::Running);
    let trial = spec_of(&d, "s-000");
    let lr = trial
        .trainer
        .optimizer
        .as_ref()
        .and_then(|o| o.lr)
        .expect("lr set");
    let dropout = trial.trainer.model.dropout.expect("dropout set");
    assert!((0.0001..=0.1).contains(&lr) && (0.0..=0.5).contains(&dropout));
    assert_eq!(
        trial.checkpoint.as_ref().map(|c| c.uri.as_str()),
        Some("s3://b/sweeps/s-000")
    );
    // The same seed gives the same trials; another seed, others.
    let again = decide(&sweep("{type: random, seed: 7}", ""), &World::new(), at(0));
    assert_eq!(again.actions, d.actions);
    let other = decide(&sweep("{type: random, seed: 8}", ""), &World::new(), at(0));
    assert_ne!(other.actions, d.actions);
    // Nothing more while both train; the next one when a slot frees.
    let mut world = World::from([
        ("s-000".to_string(), running(300, &[(300, 0.9)])),
        ("s-001".to_string(), running(300, &[(300, 0.8)])),
    ]);
    assert!(created(&step(&mut s, &world, 10)).is_empty());
    world.insert("s-000".into(), done(900, 0.95));
    assert_eq!(created(&step(&mut s, &world, 20)), ["s-002"]);
    let status = s.status.clone().expect("status");
    assert_eq!(status.trials_summary.as_deref(), Some("2/1/6"));
    let best = status.best.expect("best");
    assert_eq!((best.trial.as_str(), best.metric), ("s-000", 0.95));
    assert_eq!(
        best.checkpoint.as_deref(),
        Some("s3://b/ckpt/manifests/000000000900.json")
    );
}

#[test]
fn log_scale_samples_spread_over_the_decades() {
    let s = sweep("{type: random, seed: 3}", "");
    let lrs: Vec<f64> = (0..400)
        .map(|i| sample(&s.spec.parameters, 3, i)["optimizer.lr"])
        .collect();
    let below = lrs.iter().filter(|lr| **lr < 0.001).count();
    let above = lrs.iter().filter(|lr| **lr > 0.01).count();
    // A third of the mass per decade on a log scale (a linear one puts 90 % above 0.01).
    assert!((90..=180).contains(&below), "{below}");
    assert!((90..=180).contains(&above), "{above}");
}

#[test]
fn the_sweep_succeeds_when_every_planned_trial_is_done_and_names_the_best() {
    let mut s = sweep("{type: random}", "");
    let mut world = World::new();
    for round in 0..4 {
        let d = step(&mut s, &world, round * 10);
        for name in created(&d) {
            let accuracy = 0.9 + f64::from(name.as_bytes()[4] - b'0') / 100.0;
            world.insert(name, done(900, accuracy));
        }
    }
    assert_eq!(phase(&s), SweepPhase::Succeeded);
    let status = s.status.expect("status");
    assert_eq!(status.trials.len(), 6);
    assert_eq!(status.best.map(|b| b.trial), Some("s-005".to_string()));
    assert_eq!(status.trained_steps, Some(6 * 900));
    assert!(status.completion_time.is_some());
}

#[test]
fn grid_search_walks_every_combination_once_last_parameter_fastest() {
    let mut s = sweep("{type: grid}", "");
    s.spec.parameters = serde_yaml::from_str(
        "[{path: batchSize, type: categorical, values: [32, 64]}, {path: model.dropout, type: double, min: 0.0, max: 0.4, gridPoints: 3}]",
    )
    .expect("parameters");
    s.spec.max_trials = 100;
    s.spec.parallel_trials = Some(10);
    assert_eq!(planned_trials(&s), 6);
    let d = step(&mut s, &World::new(), 0);
    assert_eq!(created(&d).len(), 6);
    let points: Vec<(i32, f64)> = created(&d)
        .iter()
        .map(|n| {
            let t = &spec_of(&d, n).trainer;
            (t.batch_size, t.model.dropout.unwrap_or(-1.0))
        })
        .collect();
    assert_eq!(
        points,
        [
            (32, 0.0),
            (32, 0.2),
            (32, 0.4),
            (64, 0.0),
            (64, 0.2),
            (64, 0.4)
        ]
    );
    // maxTrials caps the grid.
    s.spec.max_trials = 4;
    assert_eq!(planned_trials(&s), 4);
}

#[test]
fn asha_stops_a_trial_outside_the_rungs_top_third_and_never_revisits_a_rung() {
    // Rungs at 100 and 300 (maxSteps 900); η = 3.
    let mut s = sweep("{type: asha, minSteps: 100, reductionFactor: 3}", "");
    s.spec.parallel_trials = Some(4);
    step(&mut s, &World::new(), 0);
    // The first to reach a rung always continues: it is the top 1 of 1.
    let mut world = World::from([
        ("s-000".to_string(), running(120, &[(100, 0.80)])),
        ("s-003".to_string(), running(50, &[])),
    ]);
    let d = step(&mut s, &world, 10);
    assert!(stopped(&d).is_empty());
    // Two more at rung 0: of three, one is kept (⌈3/3⌉): the best so far goes on, a worse one stops.
    world.insert("s-001".into(), running(110, &[(100, 0.90)]));
    world.insert("s-002".into(), running(105, &[(100, 0.70)]));
    let d = step(&mut s, &world, 20);
    assert_eq!(stopped(&d), ["s-002"]);
    assert_eq!(state(&s, "s-001"), TrialState::Running);
    assert_eq!(state(&s, "s-002"), TrialState::Stopped);
    // s-000 passed rung 0 when it was alone; a better trial later does not stop it.
    assert_eq!(state(&s, "s-000"), TrialState::Running);
    // A stopped trial frees a slot: the next trial is created (4 active at most).
    assert_eq!(created(&d), ["s-004"]);
    // Rung 1 (step 300): the metric of the first evaluation at or after it counts.
    world.insert(
        "s-000".into(),
        running(420, &[(100, 0.80), (300, 0.93), (400, 0.99)]),
    );
    world.insert("s-001".into(), running(310, &[(100, 0.90), (300, 0.95)]));
    let d = step(&mut s, &world, 30);
    assert_eq!(stopped(&d), ["s-000"], "0.93 is below 0.95 at rung 1");
    let trial = s.status.as_ref().expect("status").trials[0].clone();
    assert_eq!(trial.rungs, [0.80, 0.93]);
    assert!(
        trial
            .message
            .as_deref()
            .is_some_and(|m| m.contains("rung 1 (step 300)"))
    );
    // A stopped trial stays stopped while its job suspends.
    world.insert(
        "s-000".into(),
        TrialObservation {
            phase: Some(Phase::Suspended),
            ..running(425, &[(400, 0.99)])
        },
    );
    step(&mut s, &world, 40);
    assert_eq!(state(&s, "s-000"), TrialState::Stopped);
}

#[test]
fn asha_records_a_trial_that_finished_between_two_looks_without_stopping_it() {
    let mut s = sweep("{type: asha, minSteps: 100}", "");
    step(&mut s, &World::new(), 0);
    let world = World::from([
        ("s-000".to_string(), running(150, &[(100, 0.9)])),
        (
            "s-001".to_string(),
            TrialObservation {
                phase: Some(Phase::Succeeded),
                ..running(900, &[(100, 0.5), (300, 0.6), (900, 0.7)])
            },
        ),
    ]);
    let d = step(&mut s, &world, 10);
    assert!(stopped(&d).is_empty());
    assert_eq!(state(&s, "s-001"), TrialState::Succeeded);
    assert_eq!(
        s.status.as_ref().expect("status").trials[1].rungs,
        [0.5, 0.6]
    );
}

fn pbt() -> TrainingSweep {
    let mut s = sweep(
        "{type: pbt, intervalSteps: 300, population: 4, quantile: 0.25, seed: 5}",
        "",
    );
    s.spec.max_trials = 12;
    s.spec.parallel_trials = Some(4);
    s
}

#[test]
fn pbt_waits_for_the_interval_then_the_bottom_copies_the_top_and_explores() {
    let mut s = pbt();
    assert_eq!(planned_trials(&s), 12, "4 members × 900 / 300 intervals");
    let d = step(&mut s, &World::new(), 0);
    assert_eq!(created(&d), ["s-000", "s-001", "s-002", "s-003"]);
    let first = spec_of(&d, "s-000");
    assert_eq!(first.trainer.max_steps, Some(300));
    assert_eq!(first.trainer.init_from, None);
    // Three of four done: interval 1 waits for the last.
    let mut world = World::new();
    for (i, accuracy) in [0.95, 0.90, 0.80, 0.85].iter().enumerate().take(3) {
        world.insert(format!("s-00{i}"), done(300, *accuracy));
    }
    world.insert("s-003".into(), running(200, &[(200, 0.85)]));
    assert!(created(&step(&mut s, &world, 10)).is_empty());
    world.insert("s-003".into(), done(300, 0.85));
    let d = step(&mut s, &world, 20);
    assert_eq!(created(&d), ["s-004", "s-005", "s-006", "s-007"]);
    let status = s.status.clone().expect("status");
    let by_member = |m: usize| status.trials[4 + m].clone();
    // Member 2 (0.80) is the bottom quarter: it copies member 0 (0.95), the top quarter.
    let exploited = by_member(2);
    assert_eq!(exploited.parent.as_deref(), Some("s-000"));
    let source = &status.trials[0].parameters;
    for (path, value) in &exploited.parameters {
        let before = source[path];
        let perturbed = (value / before - 0.8).abs() < 1e-9 || (value / before - 1.2).abs() < 1e-9;
        let parameter = s
            .spec
            .parameters
            .iter()
            .find(|p| &p.path == path)
            .expect("known");
        let in_range =
            (parameter.min.unwrap_or(0.0)..=parameter.max.unwrap_or(1.0)).contains(value);
        assert!(perturbed || in_range, "{path}: {before} → {value}");
        assert!(in_range, "{path}: {value} stays in range");
    }
    assert_ne!(&exploited.parameters, source, "explored, not copied as is");
    let spec = spec_of(&d, "s-006");
    assert_eq!(spec.trainer.max_steps, Some(600));
    assert_eq!(
        spec.trainer.init_from,
        Some(InitFromSpec {
            uri: "s3://b/ckpt/manifests/000000000300.json".into(),
            reset_optimizer: None,
            continue_steps: Some(true),
            layers: None,
        })
    );
    // The others continue from their own checkpoints with their own values.
    for m in [0, 1, 3] {
        let t = by_member(m);
        assert_eq!(t.parent, Some(format!("s-00{m}")));
        assert_eq!(t.parameters, status.trials[m].parameters);
    }
    assert_eq!(by_member(0).steps, 300, "interval 1 starts at step 300");
}

#[test]
fn pbt_treats_a_failed_member_as_the_bottom_and_needs_checkpoints() {
    let mut s = pbt();
    step(&mut s, &World::new(), 0);
    let mut world = World::new();
    for (i, accuracy) in [0.80, 0.90, 0.85, 0.95].iter().enumerate() {
        world.insert(format!("s-00{i}"), done(300, *accuracy));
    }
    world.insert(
        "s-001".into(),
        TrialObservation {
            phase: Some(Phase::Failed),
            message: Some("exit code 2".into()),
            ..running(120, &[])
        },
    );
    step(&mut s, &world, 10);
    let status = s.status.clone().expect("status");
    assert_eq!(
        status.trials[5].parent.as_deref(),
        Some("s-003"),
        "the failed member copies the best"
    );
    let mut no_checkpoint = pbt();
    no_checkpoint.spec.template.checkpoint = None;
    let d = step(&mut no_checkpoint, &World::new(), 0);
    assert!(created(&d).is_empty());
    assert_eq!(phase(&no_checkpoint), SweepPhase::Failed);
    assert!(
        no_checkpoint
            .status
            .and_then(|st| st.message)
            .is_some_and(|m| m.starts_with("spec.template.checkpoint"))
    );
}

#[test]
fn too_many_failed_trials_fail_the_sweep_and_stop_the_rest() {
    let mut s = sweep("{type: random}", "  maxFailedTrials: 1\n");
    step(&mut s, &World::new(), 0);
    let failed = TrialObservation {
        phase: Some(Phase::Failed),
        message: Some("BackoffLimitExceeded".into()),
        ..running(10, &[])
    };
    let mut world = World::from([
        ("s-000".to_string(), failed.clone()),
        ("s-001".to_string(), running(50, &[])),
    ]);
    let d = step(&mut s, &world, 10);
    assert_eq!(created(&d), ["s-002"], "one failure is within the budget");
    world.insert("s-002".into(), failed);
    let d = step(&mut s, &world, 20);
    assert_eq!(phase(&s), SweepPhase::Failed);
    assert_eq!(stopped(&d), ["s-001"]);
    assert!(created(&d).is_empty());
    let message = s
        .status
        .as_ref()
        .and_then(|st| st.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("2 trials failed") && message.contains("s-002"),
        "{message}"
    );
    // Terminal: nothing is created afterwards, and a trial still running is stopped again.
    let d = step(&mut s, &world, 30);
    assert!(created(&d).is_empty());
}

#[test]
fn suspension_pauses_the_active_trials_and_creates_none_until_lifted() {
    let mut s = sweep("{type: random}", "  suspend: true\n");
    let d = step(&mut s, &World::new(), 0);
    assert!(created(&d).is_empty());
    assert_eq!(phase(&s), SweepPhase::Suspended);
    s.spec.suspend = Some(false);
    let d = step(&mut s, &World::new(), 10);
    assert_eq!(created(&d).len(), 2);
    s.spec.suspend = Some(true);
    let world = World::from([
        ("s-000".to_string(), running(10, &[])),
        ("s-001".to_string(), running(10, &[])),
    ]);
    let d = step(&mut s, &world, 20);
    let paused: Vec<&SweepAction> = d
        .actions
        .iter()
        .filter(|a| matches!(a, SweepAction::PauseTrial { .. }))
        .collect();
    assert_eq!(paused.len(), 2);
    assert_eq!(state(&s, "s-000"), TrialState::Paused);
    // Jobs that suspended stay paused trials, not stopped ones.
    let suspended = TrialObservation {
        phase: Some(Phase::Suspended),
        ..running(12, &[])
    };
    let world = World::from([
        ("s-000".to_string(), suspended.clone()),
        ("s-001".to_string(), suspended),
    ]);
    step(&mut s, &world, 30);
    assert_eq!(state(&s, "s-000"), TrialState::Paused);
    s.spec.suspend = Some(false);
    let d = step(&mut s, &world, 40);
    let resumed = d
        .actions
        .iter()
        .filter(|a| matches!(a, SweepAction::ResumeTrial { .. }))
        .count();
    assert_eq!(resumed, 2);
    assert!(created(&d).is_empty(), "the resumed trials fill the slots");
}

#[test]
fn a_trial_whose_job_was_deleted_fails_and_an_unseen_new_one_is_applied_again() {
    let mut s = sweep("{type: random}", "");
    step(&mut s, &World::new(), 0);
    // Not yet in the cache: the create is applied again (idempotent), nothing fails.
    let d = step(&mut s, &World::new(), 5);
    assert_eq!(created(&d), ["s-000", "s-001"]);
    let world = World::from([
        ("s-000".to_string(), running(10, &[])),
        ("s-001".to_string(), running(10, &[])),
    ]);
    step(&mut s, &world, 10);
    let world = World::from([("s-001".to_string(), running(20, &[]))]);
    let d = step(&mut s, &world, 20);
    assert_eq!(state(&s, "s-000"), TrialState::Failed);
    assert_eq!(created(&d), ["s-002"]);
}

#[test]
fn parameters_fill_in_their_parents_and_integers_stay_integers() {
    let mut trainer: TrainerSpec = serde_yaml::from_str(
        "{model: {type: mlp}, dataset: {type: mnist}, batchSize: 64, epochs: 1}",
    )
    .expect("trainer");
    set_parameter(&mut trainer, "optimizer.lr", 0.003, false).expect("lr");
    set_parameter(&mut trainer, "batchSize", 127.6, true).expect("batch");
    set_parameter(&mut trainer, "model.dropout", 0.25, false).expect("dropout");
    let optimizer = trainer.optimizer.expect("optimizer filled in");
    assert_eq!(optimizer.kind, ferrotrain_crds::OptimizerKind::Adam);
    assert_eq!(optimizer.lr, Some(0.003));
    assert_eq!(trainer.batch_size, 128);
    assert_eq!(trainer.model.dropout, Some(0.25));
    let mut trainer: TrainerSpec = serde_yaml::from_str(
        "{model: {type: mlp}, dataset: {type: mnist}, batchSize: 64, epochs: 1}",
    )
    .expect("trainer");
    let error = set_parameter(&mut trainer, "earlyStopping.patience", 3.0, true)
        .expect_err("earlyStopping needs its metric");
    assert!(
        error.starts_with("spec.template.trainer.earlyStopping.patience"),
        "{error}"
    );
}

#[test]
fn values_are_shown_with_four_significant_digits() {
    assert_eq!(format_value(0.0031234), "0.003123");
    assert_eq!(format_value(0.25), "0.25");
    assert_eq!(format_value(64.0), "64");
    assert_eq!(format_value(0.00001), "1.000e-5");
}

#[test]
fn a_succeeded_trial_counts_once_its_final_progress_shows() {
    let mut s = pbt();
    step(&mut s, &World::new(), 0);
    let mut world = World::new();
    for i in 0..4 {
        world.insert(format!("s-00{i}"), done(300, 0.9 + f64::from(i) / 100.0));
    }
    // s-003 succeeded, but its progress still shows step 200 and an older checkpoint.
    world.insert(
        "s-003".into(),
        TrialObservation {
            phase: Some(Phase::Succeeded),
            total_steps: Some(300),
            completed_at: Some(at(5)),
            ..running(200, &[(200, 0.5)])
        },
    );
    let d = step(&mut s, &world, 10);
    assert!(
        created(&d).is_empty(),
        "the next interval waits for s-003's last report"
    );
    assert_eq!(state(&s, "s-003"), TrialState::Running);
    world.insert("s-003".into(), done(300, 0.95));
    let d = step(&mut s, &world, 12);
    assert_eq!(created(&d).len(), 4);
    let exploited = spec_of(&d, "s-004");
    assert_eq!(
        exploited.trainer.init_from.as_ref().map(|i| i.uri.as_str()),
        Some("s3://b/ckpt/manifests/000000000300.json"),
        "the bottom member copies the final checkpoint of the best"
    );
    // A job whose last report never comes counts after a minute with what it shows.
    let mut late = pbt();
    step(&mut late, &World::new(), 0);
    let stale = TrialObservation {
        phase: Some(Phase::Succeeded),
        total_steps: Some(300),
        completed_at: Some(at(0)),
        ..running(200, &[(200, 0.5)])
    };
    let world = World::from([("s-000".to_string(), stale)]);
    step(&mut late, &world, 30);
    assert_eq!(state(&late, "s-000"), TrialState::Running);
    step(&mut late, &world, 61);
    assert_eq!(state(&late, "s-000"), TrialState::Succeeded);
}
