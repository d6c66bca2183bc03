//! Table tests of `decide`: one case per rule, including regressions of bugs known from other
//! training operators.

use ferrotrain_crds::{CheckpointStatus, ProgressStatus};

use super::*;

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
    let d = decide(job, &Observed { workers }, at(now));
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

#[test]
fn new_job_creates_support_and_the_first_gang() {
    let mut j = job("", 3, None);
    let d = step(&mut j, vec![], 0);
    assert_eq!(d.actions[0], Action::EnsureSupport);
    assert_eq!(created(&d), Some((1, 3)));
    assert_eq!(phase(&d), Phase::Scheduling);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(300)));
    assert_eq!(d.status.observed_generation, Some(3));
}

#[test]
fn a_repeated_decision_before_pods_appear_creates_nothing_twice() {
    let mut j = job("", 3, None);
    step(&mut j, vec![], 0);
    let d = step(&mut j, vec![], 1);
    assert_eq!(created(&d), None);
    assert_eq!(phase(&d), Phase::Scheduling);
}

#[test]
fn regression_partial_gang_is_never_reported_running() {
    // kubeflow/trainer#1617: a job showed Running while some workers were still pending.
    let mut j = job("", 3, None);
    step(&mut j, vec![], 0);
    let d = step(
        &mut j,
        vec![w(0, 1, RUNNING), w(1, 1, RUNNING), w(2, 1, PENDING)],
        5,
    );
    assert_eq!(phase(&d), Phase::Scheduling);
    assert_eq!(d.status.ready.as_deref(), Some("2/3"));
    assert_eq!(condition(&d, "Running"), None);
}

#[test]
fn the_full_gang_running_means_running() {
    let mut j = job("", 2, None);
    step(&mut j, vec![], 0);
    let d = step(&mut j, gang(2, 1, RUNNING), 7);
    assert_eq!(phase(&d), Phase::Running);
    assert_eq!(d.status.start_time, Some(Time(at(7))));
    assert_eq!(
        condition(&d, "Scheduled").map(|c| c.status.as_str()),
        Some("True")
    );
    assert!(d.events.iter().any(|e| e.reason == "Running"));
    let g = d.status.goodput.expect("goodput");
    assert_eq!(g.lost_seconds, 7.0, "scheduling time is lost time");
}

#[test]
fn gang_timeout_releases_the_gang_and_backs_off_without_charging_a_budget() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 2, None);
    step(&mut j, vec![], 0);
    let d = step(&mut j, vec![w(0, 1, RUNNING), w(1, 1, PENDING)], 60);
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(deleted(&d), vec!["j-worker-0", "j-worker-1"]);
    assert_eq!(d.status.attempt, Some(2));
    assert_eq!(restarts(&d).schedule_timeouts, 1);
    assert_eq!((restarts(&d).infra, restarts(&d).app), (0, 0));
    assert_eq!(d.status.not_before, Some(Time(at(70))));
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == "GangTimeout" && e.warning)
    );
}

#[test]
fn the_next_gang_waits_for_old_workers_to_exit() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 2, None);
    step(&mut j, vec![], 0);
    step(&mut j, vec![w(0, 1, RUNNING), w(1, 1, PENDING)], 60);
    let terminating = WorkerState::Terminating {
        since: at(60),
        node_ready: true,
        cause: None,
    };
    let d = step(&mut j, gang(2, 1, terminating), 80);
    assert_eq!(created(&d), None);
    assert_eq!(phase(&d), Phase::Restarting);
}

#[test]
fn the_next_gang_waits_for_the_backoff() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 2, None);
    step(&mut j, vec![], 0);
    step(&mut j, vec![w(0, 1, RUNNING), w(1, 1, PENDING)], 60);
    let d = step(&mut j, vec![], 65);
    assert_eq!(created(&d), None);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(5)));
    let d = step(&mut j, vec![], 70);
    assert_eq!(created(&d), Some((2, 2)));
    assert_eq!(d.status.not_before, None);
}

#[test]
fn gang_backoff_doubles() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 2, None);
    step(&mut j, vec![], 0);
    step(&mut j, vec![w(0, 1, PENDING), w(1, 1, PENDING)], 60);
    step(&mut j, vec![], 70);
    let d = step(&mut j, vec![w(0, 2, PENDING), w(1, 2, PENDING)], 130);
    assert_eq!(restarts(&d).schedule_timeouts, 2);
    assert_eq!(d.status.not_before, Some(Time(at(150))));
}

#[test]
fn elastic_job_runs_with_the_workers_that_scheduled() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 4, Some(2));
    step(&mut j, vec![], 0);
    let d = step(
        &mut j,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, BOUND),
            w(2, 1, RUNNING),
            w(3, 1, PENDING),
        ],
        60,
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert!(d.events.iter().any(|e| e.reason == "ElasticResize"));
    assert_eq!(d.status.workers.as_ref().map(|w| w.desired), Some(3));
    let d = step(&mut j, vec![], 62);
    assert_eq!(created(&d), Some((2, 3)));
}

#[test]
fn elastic_job_below_its_floor_waits_for_the_full_gang() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 4, Some(3));
    step(&mut j, vec![], 0);
    let d = step(
        &mut j,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, RUNNING),
            w(2, 1, PENDING),
            w(3, 1, PENDING),
        ],
        60,
    );
    assert!(d.events.iter().any(|e| e.reason == "GangTimeout"));
    assert_eq!(d.status.workers.as_ref().map(|w| w.desired), Some(4));
}

#[test]
fn elastic_job_tries_the_full_size_at_the_next_restart() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 4, Some(2));
    step(&mut j, vec![], 0);
    step(
        &mut j,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, RUNNING),
            w(2, 1, RUNNING),
            w(3, 1, PENDING),
        ],
        60,
    );
    step(&mut j, vec![], 62);
    step(&mut j, gang(3, 2, RUNNING), 70);
    let d = step(
        &mut j,
        vec![
            w(0, 2, RUNNING),
            w(1, 2, WorkerState::Failed(FailureCause::ExitCode(1))),
            w(2, 2, RUNNING),
        ],
        80,
    );
    assert_eq!(d.status.workers.as_ref().map(|w| w.desired), Some(4));
    let d = step(&mut j, vec![], 85);
    assert_eq!(created(&d), Some((3, 4)));
}

// ---- failures and budgets --------------------------------------------------------------------

fn fail_one(policy: &str, cause: FailureCause) -> Decision {
    let mut j = running_job(policy, 2);
    step(
        &mut j,
        vec![w(0, 1, RUNNING), w(1, 1, WorkerState::Failed(cause))],
        20,
    )
}

#[test]
fn an_application_failure_restarts_the_whole_gang() {
    let d = fail_one("", FailureCause::ExitCode(1));
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(deleted(&d), vec!["j-worker-0", "j-worker-1"]);
    assert_eq!(d.status.attempt, Some(2));
    assert_eq!((restarts(&d).app, restarts(&d).infra), (1, 0));
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == "WorkerFailed" && e.message.contains("ExitCode1"))
    );
}

#[test]
fn eviction_is_charged_to_the_infrastructure_budget() {
    let d = fail_one("", FailureCause::Evicted);
    assert_eq!(
        (
            restarts(&d).app,
            restarts(&d).infra,
            restarts(&d).preemption
        ),
        (0, 1, 0)
    );
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

#[test]
fn regression_preemption_does_not_consume_the_application_budget() {
    // volcano#2560: preemptions exhausted the job's retry budget.
    let d = disrupt_one("maxAppRestarts: 0", FailureCause::Preempted);
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(
        (
            restarts(&d).app,
            restarts(&d).infra,
            restarts(&d).preemption
        ),
        (0, 1, 1)
    );
}

#[test]
fn disruption_target_counts_as_preemption() {
    let d = disrupt_one("", FailureCause::DisruptionTarget);
    assert_eq!((restarts(&d).infra, restarts(&d).preemption), (1, 1));
}

#[test]
fn oom_kill_is_infrastructure() {
    let d = fail_one("", FailureCause::OomKilled);
    assert_eq!((restarts(&d).app, restarts(&d).infra), (0, 1));
}

#[test]
fn preempted_after_checkpoint_is_infrastructure() {
    let d = fail_one("", FailureCause::PreemptedAfterCheckpoint);
    assert_eq!(
        (
            restarts(&d).app,
            restarts(&d).infra,
            restarts(&d).preemption
        ),
        (0, 1, 1)
    );
}

#[test]
fn node_loss_is_infrastructure() {
    let d = fail_one("", FailureCause::NodeLost);
    assert_eq!(restarts(&d).infra, 1);
}

#[test]
fn exhausting_the_application_budget_fails_the_job_naming_it() {
    let d = fail_one("maxAppRestarts: 0", FailureCause::ExitCode(1));
    assert_eq!(phase(&d), Phase::Failed);
    let failed = condition(&d, "Failed").expect("Failed condition");
    assert_eq!(failed.reason, "AppRestartBudgetExhausted");
    assert!(failed.message.contains("maxAppRestarts (0)"));
    assert!(d.status.completion_time.is_some());
}

// ---- failure policy ---------------------------------------------------------------------------

fn fail_one_saying(policy: &str, cause: FailureCause, message: &str) -> Decision {
    let mut j = running_job(policy, 2);
    let mut failed = w(1, 1, WorkerState::Failed(cause));
    failed.message = Some(message.into());
    step(&mut j, vec![w(0, 1, RUNNING), failed], 20)
}

#[test]
fn a_configuration_error_fails_the_job_at_once_with_the_workers_own_words() {
    let d = fail_one_saying(
        "",
        FailureCause::ExitCode(2),
        "training failed: loss became NaN at step 7",
    );
    assert_eq!(phase(&d), Phase::Failed);
    assert_eq!(deleted(&d), vec!["j-worker-0"], "cleanPodPolicy Running");
    assert_eq!((restarts(&d).app, restarts(&d).infra), (0, 0));
    let failed = condition(&d, "Failed").expect("Failed condition");
    assert_eq!(failed.reason, "FailedByPolicy");
    assert!(
        failed.message.contains(
            "worker j-worker-1 failed: ExitCode2 (training failed: loss became NaN at step 7)"
        ),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("exit code 2 means"),
        "{}",
        failed.message
    );
}

#[test]
fn malformed_data_fails_fast_but_unreadable_data_is_retried() {
    let d = fail_one("", FailureCause::ExitCode(3));
    assert_eq!(phase(&d), Phase::Failed);
    assert!(
        condition(&d, "Failed")
            .expect("Failed")
            .message
            .contains("the training data is malformed")
    );
    let d = fail_one("", FailureCause::ExitCode(6));
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(restarts(&d).app, 1);
}

#[test]
fn a_user_rule_comes_before_the_defaults() {
    let d = fail_one(
        "failurePolicy: {rules: [{action: RestartGang, onExitCodes: [2, 3]}]}",
        FailureCause::ExitCode(3),
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(restarts(&d).app, 1);
}

#[test]
fn a_rule_can_restart_without_charging_a_budget() {
    let policy = "maxAppRestarts: 0, maxInfraRestarts: 0, failurePolicy: {rules: [{action: RestartGangWithoutBudget, onExitCodes: [42]}, {action: RestartGangWithoutBudget, onReasons: [Preempted]}]}";
    let d = fail_one(policy, FailureCause::ExitCode(42));
    assert_eq!(phase(&d), Phase::Restarting);
    let counts = restarts(&d);
    assert_eq!((counts.app, counts.infra, counts.uncharged), (0, 0, 1));
    assert!(
        d.events.iter().any(
            |e| e.reason == "WorkerFailed" && e.message.contains("rules[0]: no budget charged")
        )
    );
    let d = disrupt_one(policy, FailureCause::Preempted);
    let counts = restarts(&d);
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(
        (counts.infra, counts.preemption, counts.uncharged),
        (0, 1, 1),
        "still counted as a preemption"
    );
    // A code no rule names is charged as before: the budget of 0 is used up.
    let d = fail_one(policy, FailureCause::ExitCode(1));
    assert_eq!(phase(&d), Phase::Failed);
    assert_eq!(
        condition(&d, "Failed").expect("Failed").reason,
        "AppRestartBudgetExhausted"
    );
}

#[test]
fn a_reason_rule_can_fail_the_job() {
    let d = fail_one(
        "failurePolicy: {rules: [{action: FailJob, onExitCodes: [9]}, {action: FailJob, onReasons: [OOMKilled, NodeLost]}]}",
        FailureCause::OomKilled,
    );
    assert_eq!(phase(&d), Phase::Failed);
    let failed = condition(&d, "Failed").expect("Failed");
    assert_eq!(failed.reason, "FailedByPolicy");
    assert!(
        failed
            .message
            .contains("spec.runPolicy.failurePolicy.rules[1] fails the job"),
        "{}",
        failed.message
    );
    assert_eq!(restarts(&d).infra, 0);
}

#[test]
fn a_restart_names_the_workers_last_error() {
    let d = fail_one_saying(
        "",
        FailureCause::ExitCode(1),
        "rendezvous: connection refused",
    );
    assert!(d.events.iter().any(|e| {
        e.reason == "WorkerFailed"
            && e.message
                .contains("ExitCode1 (rendezvous: connection refused)")
    }));
    assert!(
        condition(&d, "Running")
            .expect("Running")
            .message
            .contains("rendezvous: connection refused")
    );
}

#[test]
fn exhausting_the_infrastructure_budget_fails_the_job_naming_it() {
    let d = fail_one("maxInfraRestarts: 0", FailureCause::Evicted);
    assert_eq!(phase(&d), Phase::Failed);
    assert_eq!(
        condition(&d, "Failed").map(|c| c.reason.as_str()),
        Some("InfraRestartBudgetExhausted")
    );
}

#[test]
fn regression_clean_pod_policy_applies_when_the_budget_is_exhausted() {
    // kubeflow/trainer#3419: cleanPodPolicy was ignored when the backoff limit was reached.
    let mut j = running_job("maxAppRestarts: 0, cleanPodPolicy: All", 3);
    let d = step(
        &mut j,
        vec![
            w(0, 1, WorkerState::Succeeded),
            w(1, 1, WorkerState::Failed(FailureCause::ExitCode(1))),
            w(2, 1, RUNNING),
        ],
        20,
    );
    assert_eq!(phase(&d), Phase::Failed);
    assert_eq!(deleted(&d), vec!["j-worker-0", "j-worker-1", "j-worker-2"]);
}

#[test]
fn clean_pod_policy_running_keeps_finished_workers_for_their_logs() {
    let mut j = running_job("maxAppRestarts: 0", 3);
    let d = step(
        &mut j,
        vec![
            w(0, 1, WorkerState::Succeeded),
            w(1, 1, WorkerState::Failed(FailureCause::ExitCode(1))),
            w(2, 1, RUNNING),
        ],
        20,
    );
    assert_eq!(deleted(&d), vec!["j-worker-2"]);
}

#[test]
fn clean_pod_policy_none_deletes_nothing() {
    let mut j = running_job("maxAppRestarts: 0, cleanPodPolicy: None", 2);
    let d = step(
        &mut j,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, WorkerState::Failed(FailureCause::ExitCode(1))),
        ],
        20,
    );
    assert_eq!(deleted(&d), Vec::<String>::new());
}

#[test]
fn a_failure_while_scheduling_restarts_too() {
    let mut j = job("", 2, None);
    step(&mut j, vec![], 0);
    let d = step(
        &mut j,
        vec![
            w(0, 1, WorkerState::Failed(FailureCause::ExitCode(6))),
            w(1, 1, PENDING),
        ],
        5,
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(restarts(&d).app, 1);
}

#[test]
fn a_worker_that_vanished_while_running_is_an_infrastructure_failure() {
    let mut j = running_job("", 3);
    let d = step(&mut j, vec![w(0, 1, RUNNING), w(2, 1, RUNNING)], 20);
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(restarts(&d).infra, 1);
    assert!(d.events.iter().any(|e| e.message.contains("rank 1")));
}

#[test]
fn workers_not_observed_yet_while_scheduling_are_not_failures() {
    let mut j = job("", 3, None);
    step(&mut j, vec![], 0);
    let d = step(&mut j, vec![w(0, 1, PENDING)], 1);
    assert_eq!(phase(&d), Phase::Scheduling);
    assert_eq!(restarts(&d), RestartCounts::default());
}

#[test]
fn restarting_recreates_the_gang_once_the_old_one_is_gone() {
    let mut j = running_job("", 2);
    step(
        &mut j,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, WorkerState::Failed(FailureCause::ExitCode(1))),
        ],
        20,
    );
    let d = step(
        &mut j,
        vec![w(
            0,
            1,
            WorkerState::Terminating {
                since: at(20),
                node_ready: true,
                cause: None,
            },
        )],
        21,
    );
    assert_eq!(created(&d), None);
    let d = step(&mut j, vec![], 25);
    assert_eq!(created(&d), Some((2, 2)));
    assert_eq!(phase(&d), Phase::Scheduling);
    let d = step(&mut j, gang(2, 2, RUNNING), 30);
    assert_eq!(phase(&d), Phase::Running);
}

#[test]
fn workers_of_older_attempts_are_deleted() {
    let mut j = running_job("", 2);
    let mut workers = gang(2, 1, RUNNING);
    workers.push(WorkerView {
        name: "j-worker-old".into(),
        rank: 0,
        attempt: 0,
        state: RUNNING,
        message: None,
    });
    let d = step(&mut j, workers, 20);
    assert_eq!(deleted(&d), vec!["j-worker-old"]);
    assert_eq!(phase(&d), Phase::Running);
}

// ---- success and terminal phases -------------------------------------------------------------

#[test]
fn every_worker_exiting_zero_succeeds() {
    let mut j = running_job("", 2);
    let d = step(&mut j, gang(2, 1, WorkerState::Succeeded), 100);
    assert_eq!(phase(&d), Phase::Succeeded);
    assert_eq!(d.status.completion_time, Some(Time(at(100))));
    assert_eq!(
        condition(&d, "Succeeded").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(
        deleted(&d),
        Vec::<String>::new(),
        "cleanPodPolicy Running keeps finished pods"
    );
    assert_eq!(d.status.goodput.map(|g| g.productive_seconds), Some(90.0));
}

#[test]
fn a_partly_finished_gang_is_still_running() {
    let mut j = running_job("", 2);
    let d = step(
        &mut j,
        vec![w(0, 1, WorkerState::Succeeded), w(1, 1, RUNNING)],
        50,
    );
    assert_eq!(phase(&d), Phase::Running);
}

#[test]
fn regression_a_finished_job_is_not_revived_when_its_pods_disappear() {
    // kubeflow/trainer#3737, #3779: deleting a finished job's child recreated it.
    let mut j = running_job("", 2);
    step(&mut j, gang(2, 1, WorkerState::Succeeded), 100);
    let d = step(&mut j, vec![], 200);
    assert_eq!(phase(&d), Phase::Succeeded);
    assert_eq!(created(&d), None);
    let mut failed = running_job("maxAppRestarts: 0", 2);
    step(
        &mut failed,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, WorkerState::Failed(FailureCause::ExitCode(1))),
        ],
        20,
    );
    let d = step(&mut failed, vec![], 300);
    assert_eq!(phase(&d), Phase::Failed);
    assert_eq!(created(&d), None);
}

#[test]
fn ttl_deletes_the_job_after_it_finished() {
    let mut j = running_job("ttlSecondsAfterFinished: 60", 1);
    step(&mut j, gang(1, 1, WorkerState::Succeeded), 100);
    let d = step(&mut j, vec![], 130);
    assert!(!d.actions.contains(&Action::DeleteJob));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
    let d = step(&mut j, vec![], 160);
    assert!(d.actions.contains(&Action::DeleteJob));
}

#[test]
fn active_deadline_fails_the_job_and_stops_its_workers() {
    let mut j = running_job("activeDeadlineSeconds: 100", 2);
    let d = step(&mut j, gang(2, 1, RUNNING), 50);
    assert_eq!(phase(&d), Phase::Running);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(60)));
    let d = step(&mut j, gang(2, 1, RUNNING), 110);
    assert_eq!(phase(&d), Phase::Failed);
    assert_eq!(
        condition(&d, "Failed").map(|c| c.reason.as_str()),
        Some("DeadlineExceeded")
    );
    assert_eq!(deleted(&d), vec!["j-worker-0", "j-worker-1"]);
}

// ---- suspension ------------------------------------------------------------------------------

#[test]
fn suspending_stops_the_workers_gracefully() {
    let mut j = running_job("", 2);
    j.spec.run_policy = Some(RunPolicy {
        suspend: Some(true),
        ..RunPolicy::default()
    });
    let d = step(&mut j, gang(2, 1, RUNNING), 40);
    assert_eq!(phase(&d), Phase::Suspended);
    assert!(d.actions.contains(&Action::DeleteWorkers {
        names: vec!["j-worker-0".into(), "j-worker-1".into()],
        force: false
    }));
    assert_eq!(
        condition(&d, "Suspended").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(
        d.status.goodput.map(|g| g.productive_seconds),
        Some(30.0),
        "an emergency checkpoint keeps the work"
    );
}

#[test]
fn a_suspended_job_creates_nothing() {
    let mut j = running_job("", 2);
    j.spec.run_policy = Some(RunPolicy {
        suspend: Some(true),
        ..RunPolicy::default()
    });
    step(&mut j, gang(2, 1, RUNNING), 40);
    let d = step(&mut j, vec![], 45);
    assert_eq!(phase(&d), Phase::Suspended);
    assert_eq!(created(&d), None);
}

#[test]
fn resuming_starts_a_new_attempt_without_charging_a_budget() {
    let mut j = running_job("", 2);
    j.spec.run_policy = Some(RunPolicy {
        suspend: Some(true),
        ..RunPolicy::default()
    });
    step(&mut j, gang(2, 1, RUNNING), 40);
    step(&mut j, vec![], 45);
    j.spec.run_policy = Some(RunPolicy {
        suspend: Some(false),
        ..RunPolicy::default()
    });
    let d = step(&mut j, vec![], 50);
    assert_eq!(created(&d), Some((2, 2)));
    assert_eq!(restarts(&d), RestartCounts::default());
    assert_eq!(
        condition(&d, "Suspended").map(|c| c.status.as_str()),
        Some("False")
    );
    assert!(d.events.iter().any(|e| e.reason == "Resumed"));
}

#[test]
fn suspending_a_finished_job_changes_nothing() {
    let mut j = running_job("", 1);
    step(&mut j, gang(1, 1, WorkerState::Succeeded), 100);
    j.spec.run_policy = Some(RunPolicy {
        suspend: Some(true),
        ..RunPolicy::default()
    });
    let d = step(&mut j, vec![], 110);
    assert_eq!(phase(&d), Phase::Succeeded);
}

// ---- progress stalls -------------------------------------------------------------------------

fn with_progress(j: &mut TrainingJob, at_seconds: i64) {
    let status = j.status.get_or_insert_with(TrainingJobStatus::default);
    status.progress = Some(ProgressStatus {
        step: 10,
        last_update_time: Some(Time(at(at_seconds))),
        ..ProgressStatus::default()
    });
}

#[test]
fn a_stalled_job_restarts_from_its_checkpoint() {
    let mut j = running_job("progressDeadlineSeconds: 60", 2);
    with_progress(&mut j, 20);
    let d = step(&mut j, gang(2, 1, RUNNING), 81);
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!((restarts(&d).stall, restarts(&d).app), (1, 1));
    assert_eq!(
        condition(&d, "Progressing").map(|c| c.reason.as_str()),
        Some("ProgressDeadlineExceeded")
    );
    assert!(d.events.iter().any(|e| e.reason == "Stalled"));
}

#[test]
fn recent_progress_keeps_the_job_running_and_requeues_at_the_deadline() {
    let mut j = running_job("progressDeadlineSeconds: 60", 2);
    with_progress(&mut j, 50);
    let d = step(&mut j, gang(2, 1, RUNNING), 70);
    assert_eq!(phase(&d), Phase::Running);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(40)));
    assert_eq!(
        condition(&d, "Progressing").map(|c| c.status.as_str()),
        Some("True")
    );
}

#[test]
fn a_job_that_never_reported_stalls_from_when_it_started_running() {
    let mut j = running_job("progressDeadlineSeconds: 60", 2);
    let d = step(&mut j, gang(2, 1, RUNNING), 69);
    assert_eq!(phase(&d), Phase::Running);
    let d = step(&mut j, gang(2, 1, RUNNING), 70);
    assert_eq!(phase(&d), Phase::Restarting);
}

// ---- stuck pods ------------------------------------------------------------------------------

#[test]
fn regression_a_pod_stuck_terminating_on_a_dead_node_is_force_deleted() {
    // kubeflow/trainer#2072: a pod on a lost node stayed Terminating and blocked the restart.
    let mut j = running_job("", 2);
    step(
        &mut j,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, WorkerState::Failed(FailureCause::NodeLost)),
        ],
        20,
    );
    let stuck = WorkerState::Terminating {
        since: at(20),
        node_ready: false,
        cause: None,
    };
    let d = step(&mut j, vec![w(1, 1, stuck)], 100);
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::DeleteWorkers { force: true, .. }))
    );
    let d = step(&mut j, vec![w(1, 1, stuck)], 320);
    assert!(d.actions.contains(&Action::DeleteWorkers {
        names: vec!["j-worker-1".into()],
        force: true
    }));
}

#[test]
fn a_terminating_pod_on_a_ready_node_is_left_to_finish() {
    let mut j = running_job("", 1);
    let d = step(
        &mut j,
        vec![w(
            0,
            0,
            WorkerState::Terminating {
                since: at(0),
                node_ready: true,
                cause: None,
            },
        )],
        1000,
    );
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::DeleteWorkers { force: true, .. }))
    );
}

// ---- conditions and goodput ------------------------------------------------------------------

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
fn time_after_the_last_checkpoint_of_a_failed_attempt_is_lost() {
    let mut j = running_job("", 2);
    let status = j.status.get_or_insert_with(TrainingJobStatus::default);
    status.checkpoint = Some(CheckpointStatus {
        step: Some(100),
        time: Some(Time(at(40))),
        ..CheckpointStatus::default()
    });
    let d = step(
        &mut j,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, WorkerState::Failed(FailureCause::ExitCode(1))),
        ],
        70,
    );
    let g = d.status.goodput.expect("goodput");
    assert_eq!(g.productive_seconds, 30.0);
    assert_eq!(
        g.lost_seconds,
        10.0 + 30.0,
        "10 s scheduling, 30 s after the checkpoint"
    );
    assert!((g.ratio - 30.0 / 70.0).abs() < 1e-9);
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

#[test]
fn a_budget_of_one_allows_exactly_one_restart() {
    let mut j = running_job("maxAppRestarts: 1", 2);
    let failing = |attempt| {
        vec![
            w(0, attempt, RUNNING),
            w(1, attempt, WorkerState::Failed(FailureCause::ExitCode(1))),
        ]
    };
    let d = step(&mut j, failing(1), 20);
    assert_eq!(phase(&d), Phase::Restarting);
    step(&mut j, vec![], 25);
    step(&mut j, gang(2, 2, RUNNING), 30);
    let d = step(&mut j, failing(2), 40);
    assert_eq!(phase(&d), Phase::Failed);
    assert_eq!(restarts(&d).app, 2);
}

#[test]
fn the_root_cause_wins_over_peers_that_lost_it() {
    let mut j = running_job("", 3);
    let lost = WorkerState::Failed(FailureCause::ExitCode(4));
    let d = step(
        &mut j,
        vec![
            w(0, 1, lost),
            w(1, 1, WorkerState::Failed(FailureCause::Evicted)),
            w(2, 1, lost),
        ],
        20,
    );
    assert_eq!((restarts(&d).infra, restarts(&d).app), (1, 0));
    assert!(
        d.events
            .iter()
            .any(|e| e.message.contains("j-worker-1 failed: Evicted"))
    );
}

// ---- what a real cluster shows (issue: operator correctness against Kubernetes) --------------

fn terminating(since: i64, cause: Option<FailureCause>) -> WorkerState {
    WorkerState::Terminating {
        since: at(since),
        node_ready: true,
        cause,
    }
}

#[test]
fn a_preempted_pod_still_terminating_is_the_cause_not_its_peers_exit() {
    // Scheduler preemption sets DisruptionTarget, then deletes: the victim is Terminating while
    // its peer exits 4 (peer lost). The gang restart is a preemption, charged to infrastructure.
    let mut j = running_job("maxAppRestarts: 0", 2);
    let d = step(
        &mut j,
        vec![
            w(0, 1, WorkerState::Failed(FailureCause::ExitCode(4))),
            w(1, 1, terminating(19, Some(FailureCause::Preempted))),
        ],
        20,
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(
        (
            restarts(&d).app,
            restarts(&d).infra,
            restarts(&d).preemption
        ),
        (0, 1, 1)
    );
    assert_eq!(
        deleted(&d),
        vec!["j-worker-0"],
        "the victim is already being deleted"
    );
}

#[test]
fn a_drained_pod_is_an_infrastructure_failure() {
    let mut j = running_job("", 2);
    let d = step(
        &mut j,
        vec![
            w(0, 1, RUNNING),
            w(1, 1, terminating(19, Some(FailureCause::DisruptionTarget))),
        ],
        20,
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!((restarts(&d).app, restarts(&d).infra), (0, 1));
}

#[test]
fn a_worker_deleted_by_someone_else_is_an_infrastructure_failure() {
    let mut j = running_job("", 2);
    let d = step(
        &mut j,
        vec![w(0, 1, RUNNING), w(1, 1, terminating(19, None))],
        20,
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!((restarts(&d).app, restarts(&d).infra), (0, 1));
    assert!(d.events.iter().any(|e| e.message.contains("WorkerDeleted")));
}

#[test]
fn a_peer_lost_exit_after_a_vanished_worker_is_not_a_second_cause() {
    let mut j = running_job("maxAppRestarts: 0", 2);
    let d = step(
        &mut j,
        vec![w(0, 1, WorkerState::Failed(FailureCause::ExitCode(4)))],
        20,
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!((restarts(&d).app, restarts(&d).infra), (0, 1));
}

#[test]
fn a_partly_created_gang_is_completed() {
    // Pod creation stopped at rank 1 (quota exceeded) before the status was written.
    let mut j = job("", 3, None);
    let d = step(&mut j, vec![w(0, 1, BOUND)], 0);
    assert_eq!(created(&d), Some((1, 3)), "the missing ranks are created");
    assert_eq!(phase(&d), Phase::Scheduling);
    assert!(
        d.status.attempt_start_time.is_some(),
        "the gang timeout runs"
    );
    let d = step(&mut j, vec![w(0, 1, BOUND), w(1, 1, BOUND)], 5);
    assert_eq!(created(&d), Some((1, 3)), "still missing while scheduling");
    assert_eq!(d.status.attempt_start_time.map(|t| t.0), Some(at(0)));
    let d = step(&mut j, gang(3, 1, BOUND), 6);
    assert_eq!(created(&d), None);
}

#[test]
fn a_gang_held_by_a_queue_is_not_timed_out() {
    // Kueue gates the pods until the queue admits the whole group: that is waiting in a queue,
    // not failing to schedule. The gang timeout counts from admission.
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 2, None);
    step(&mut j, vec![], 0);
    let d = step(&mut j, gang(2, 1, WorkerState::Gated), 600);
    assert_eq!(phase(&d), Phase::Scheduling);
    assert_eq!(restarts(&d).schedule_timeouts, 0);
    assert_eq!(deleted(&d), Vec::<String>::new());
    assert_eq!(
        condition(&d, "Scheduled").map(|c| c.reason.as_str()),
        Some("Queued")
    );
    // Admitted at t=600: bound but not yet running at t=650 is within the timeout.
    let d = step(&mut j, gang(2, 1, BOUND), 650);
    assert_eq!(phase(&d), Phase::Scheduling);
    assert_eq!(restarts(&d).schedule_timeouts, 0);
    let d = step(&mut j, gang(2, 1, BOUND), 709);
    assert_eq!(restarts(&d).schedule_timeouts, 0);
    let d = step(&mut j, gang(2, 1, BOUND), 711);
    assert_eq!(restarts(&d).schedule_timeouts, 1);
}

#[test]
fn a_worker_that_cannot_start_its_container_is_named_and_fails_the_job() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 2, None);
    step(&mut j, vec![], 0);
    let stuck = WorkerState::Stuck(StuckReason::ImagePullBackOff);
    let d = step(&mut j, vec![w(0, 1, RUNNING), w(1, 1, stuck)], 10);
    assert_eq!(phase(&d), Phase::Scheduling);
    let scheduled = condition(&d, "Scheduled").expect("Scheduled condition");
    assert_eq!(scheduled.reason, "ImagePullBackOff");
    assert!(
        scheduled.message.contains("j-worker-1"),
        "{}",
        scheduled.message
    );
    // Past the gang timeout a retry cannot help: the job fails with the reason named.
    let d = step(&mut j, vec![w(0, 1, RUNNING), w(1, 1, stuck)], 61);
    assert_eq!(phase(&d), Phase::Failed);
    let failed = condition(&d, "Failed").expect("Failed condition");
    assert_eq!(failed.reason, "ImagePullBackOff");
    assert!(failed.message.contains("j-worker-1"), "{}", failed.message);
    assert_eq!(restarts(&d).schedule_timeouts, 0);
}

#[test]
fn a_peer_lost_exit_waits_briefly_for_its_cause() {
    // Kubelets report pods independently: the survivor's exit 4 (peer lost) can reach the API
    // server before the victim's own status. The decision waits for the cause.
    let peer_lost = WorkerState::Failed(FailureCause::ExitCode(4));
    let mut j = running_job("maxAppRestarts: 0", 2);
    let d = step(&mut j, vec![w(0, 1, peer_lost), w(1, 1, RUNNING)], 20);
    assert_eq!(
        phase(&d),
        Phase::Running,
        "no decision on a consequence alone"
    );
    assert!(deleted(&d).is_empty());
    assert!(d.requeue_after.is_some_and(|r| r <= PEER_LOST_GRACE));
    let d = step(
        &mut j,
        vec![
            w(0, 1, peer_lost),
            w(1, 1, WorkerState::Failed(FailureCause::OomKilled)),
        ],
        22,
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!((restarts(&d).app, restarts(&d).infra), (0, 1));
    assert_eq!(
        condition(&d, "GangDisrupted").map(|c| c.status.as_str()),
        Some("False"),
        "cleared for the next attempt"
    );
}

#[test]
fn a_peer_lost_exit_without_a_cause_is_decided_after_the_grace() {
    let peer_lost = WorkerState::Failed(FailureCause::ExitCode(4));
    let mut j = running_job("", 2);
    step(&mut j, vec![w(0, 1, peer_lost), w(1, 1, RUNNING)], 20);
    let d = step(
        &mut j,
        vec![w(0, 1, peer_lost), w(1, 1, RUNNING)],
        20 + PEER_LOST_GRACE.as_secs() as i64,
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!((restarts(&d).app, restarts(&d).infra), (1, 0));
}
