//! Table tests of `decide`: one case per rule, including regressions of bugs known from other
//! training operators.

use ferrotrain_crds::{CheckpointStatus, ProgressStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::*;

mod ending;
mod failures;
mod gang;
mod running;

const T0: i64 = 1_800_000_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(T0 + seconds).expect("valid time")
}

fn job(run_policy: &str, replicas: i32, min_replicas: Option<i32>) -> TrainingJob {
    let min = min_replicas
        .map(|m| format!(", minReplicas: {m}"))
        .unwrap_or_default();
    let yaml = format!(
        "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: j, namespace: ml, generation: 3}}\nspec:\n  workers: {{replicas: {replicas}{min}}}\n  trainer: {{model: {{type: mlp}}, dataset: {{type: mnist}}, batchSize: 8, epochs: 1}}\n  runPolicy: {{{run_policy}}}\n"
    );
    serde_yaml::from_str(&yaml).expect("test job")
}

fn w(rank: u32, attempt: u32, state: WorkerState) -> WorkerView {
    WorkerView {
        name: format!("j-worker-{rank}"),
        rank,
        attempt,
        state,
        message: None,
    }
}

fn gang(n: u32, attempt: u32, state: WorkerState) -> Vec<WorkerView> {
    (0..n).map(|r| w(r, attempt, state)).collect()
}

const RUNNING: WorkerState = WorkerState::Running { ready: true };

const PENDING: WorkerState = WorkerState::Pending { scheduled: false };

const BOUND: WorkerState = WorkerState::Pending { scheduled: true };

/// Runs decide and feeds the status back, as the controller does.
fn step(job: &mut TrainingJob, workers: Vec<WorkerView>, now: i64) -> Decision {
    let d = decide(
        job,
        &Observed {
            workers,
            ..Observed::default()
        },
        at(now),
    );
    job.status = Some(d.status.clone());
    d
}

fn phase(d: &Decision) -> Phase {
    d.status.phase.expect("phase set")
}

fn created(d: &Decision) -> Option<(u32, u32)> {
    d.actions.iter().find_map(|a| match a {
        Action::CreateWorkers {
            attempt,
            world_size,
        } => Some((*attempt, *world_size)),
        _ => None,
    })
}

fn deleted(d: &Decision) -> Vec<String> {
    let mut names: Vec<String> = d
        .actions
        .iter()
        .flat_map(|a| match a {
            Action::DeleteWorkers { names, .. } => names.clone(),
            _ => Vec::new(),
        })
        .collect();
    names.sort();
    names
}

fn restarts(d: &Decision) -> RestartCounts {
    d.status.restarts.clone().unwrap_or_default()
}

fn condition<'a>(d: &'a Decision, kind: &str) -> Option<&'a Condition> {
    d.status.conditions.iter().find(|c| c.type_ == kind)
}

/// A job whose gang of `n` is running since t=10 (created at t=0).
fn running_job(policy: &str, n: i32) -> TrainingJob {
    let mut j = job(policy, n, None);
    step(&mut j, vec![], 0);
    let d = step(&mut j, gang(n as u32, 1, RUNNING), 10);
    assert_eq!(phase(&d), Phase::Running);
    j
}

// ---- gang scheduling -------------------------------------------------------------------------

fn fail_one(policy: &str, cause: FailureCause) -> Decision {
    let mut j = running_job(policy, 2);
    step(
        &mut j,
        vec![w(0, 1, RUNNING), w(1, 1, WorkerState::Failed(cause))],
        20,
    )
}

/// What a cluster shows of a disruption: the victim Terminating with the cause its
/// `DisruptionTarget` condition names (the scheduler, the Eviction API and the taint manager
/// delete the pod; it is never a plain Failed pod).
fn disrupt_one(policy: &str, cause: FailureCause) -> Decision {
    let mut j = running_job(policy, 2);
    step(
        &mut j,
        vec![w(0, 1, RUNNING), w(1, 1, terminating(19, Some(cause)))],
        20,
    )
}

fn fail_one_saying(policy: &str, cause: FailureCause, message: &str) -> Decision {
    let mut j = running_job(policy, 2);
    let mut failed = w(1, 1, WorkerState::Failed(cause));
    failed.message = Some(message.into());
    step(&mut j, vec![w(0, 1, RUNNING), failed], 20)
}

fn with_progress(j: &mut TrainingJob, at_seconds: i64) {
    let status = j.status.get_or_insert_with(TrainingJobStatus::default);
    status.progress = Some(ProgressStatus {
        step: 10,
        last_update_time: Some(Time(at(at_seconds))),
        ..ProgressStatus::default()
    });
}

#[test]
fn condition_transition_time_is_kept_while_the_status_holds() {
    let mut j = running_job("", 2);
    let before = condition(&step(&mut j, gang(2, 1, RUNNING), 20), "Running")
        .cloned()
        .expect("Running");
    let after = condition(&step(&mut j, gang(2, 1, RUNNING), 40), "Running")
        .cloned()
        .expect("Running");
    assert_eq!(before.last_transition_time, Time(at(10)));
    assert_eq!(after.last_transition_time, Time(at(10)));
    assert_eq!(after.observed_generation, Some(3));
}

#[test]
fn worker_counts_and_ready_column() {
    let mut j = job("", 4, None);
    step(&mut j, vec![], 0);
    let d = step(
        &mut j,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, WorkerState::Running { ready: false }),
            w(2, 1, BOUND),
            w(3, 1, PENDING),
        ],
        3,
    );
    let c = d.status.workers.clone().expect("counts");
    assert_eq!(
        (c.desired, c.created, c.scheduled, c.running, c.ready),
        (4, 4, 3, 2, 1)
    );
    assert_eq!(d.status.ready.as_deref(), Some("1/4"));
}

fn terminating(since: i64, cause: Option<FailureCause>) -> WorkerState {
    WorkerState::Terminating {
        since: at(since),
        node_ready: true,
        cause,
    }
}
