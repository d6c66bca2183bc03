//! Table tests of failures: causes, budgets, the failure policy and the peer-lost grace.

use super::*;
use crate::decide::job::failures::PEER_LOST_GRACE;

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
    // The worker that still runs once every peer gave up on it is the one that stopped
    // answering: it is named, and the restart counts as a stall.
    assert_eq!(restarts(&d).stall, 1);
    let message = condition(&d, "Running").map(|c| c.message.clone());
    assert!(
        message.as_deref().is_some_and(|m| m.starts_with(
            "worker j-worker-1 stopped answering: its peers timed out waiting for it (worker j-worker-0 failed: ExitCode4"
        )),
        "{message:?}"
    );
}

/// A trainer that fails soon after each start is a crash loop: the first failure restarts at
/// once, each further quick one waits twice as long (10 s, 20 s, … up to 5 min, shown in
/// status.notBefore and the Running condition), and an attempt that ran stably resets the wait.
#[test]
fn a_crash_loop_backs_off_between_attempts_and_a_stable_run_resets_it() {
    let mut j = running_job("maxAppRestarts: 50", 2);
    let mut now = 20;
    let mut waits = Vec::new();
    for attempt in 1..=4u32 {
        let d = step(
            &mut j,
            vec![
                w(0, attempt, RUNNING),
                w(1, attempt, WorkerState::Failed(FailureCause::ExitCode(1))),
            ],
            now,
        );
        assert_eq!(phase(&d), Phase::Restarting);
        let wait = d
            .status
            .not_before
            .as_ref()
            .and_then(|t| seconds_between(at(now), t.0))
            .unwrap_or(0.0);
        waits.push(wait);
        // Nothing is created before the wait is over, and the next gang is created after it.
        if wait > 0.0 {
            let d = step(&mut j, vec![], now + 1);
            assert_eq!(
                created(&d),
                None,
                "attempt {} created during the backoff",
                attempt + 1
            );
            let message = condition(&d, "Running")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            assert!(message.contains("next attempt in"), "{message}");
        }
        now += wait as i64 + 2;
        let d = step(&mut j, vec![], now);
        assert_eq!(created(&d), Some((attempt + 1, 2)));
        now += 5;
        step(&mut j, gang(2, attempt + 1, RUNNING), now);
        now += 5;
    }
    assert_eq!(waits, vec![0.0, 10.0, 20.0, 40.0]);
    // Attempt 5 trains for an hour, then fails: a new crash, restarted at once.
    now += 3600;
    let d = step(
        &mut j,
        vec![
            w(0, 5, RUNNING),
            w(1, 5, WorkerState::Failed(FailureCause::ExitCode(1))),
        ],
        now,
    );
    assert_eq!(phase(&d), Phase::Restarting);
    assert!(
        d.status.not_before.as_ref().is_none_or(|t| t.0 <= at(now)),
        "{:?}",
        d.status.not_before
    );
}
