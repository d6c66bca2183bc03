//! Table tests of stopping and ending: cleanPodPolicy, TTL, deadlines, suspension, stuck pods.

use super::*;

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
