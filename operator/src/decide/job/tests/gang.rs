//! Table tests of the gang: creation, the gang timeout and its backoff, elastic resizing, queues.

use super::*;

#[test]
fn new_job_creates_support_and_the_first_gang() {
    let mut j = job("", 3, None);
    let d = step(&mut j, vec![], 0);
    assert_eq!(d.actions[0], Action::EnsureSupport { attempt: 1 });
    assert_eq!(created(&d), Some((1, 3)));
    assert_eq!(phase(&d), Phase::Scheduling);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(300)));
    assert_eq!(d.status.observed_generation, Some(3));
}

#[test]
fn a_name_held_by_another_owner_creates_nothing_until_it_is_free() {
    let mut j = job("", 2, None);
    let conflicts = Observed {
        name_conflicts: vec!["Service ns/j".into()],
        ..Observed::default()
    };
    let d = decide(&j, &conflicts, at(0));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(phase(&d), Phase::Pending);
    let condition = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "WorkersCreated");
    assert_eq!(condition.map(|c| c.reason.as_str()), Some("NameConflict"));
    assert!(
        d.events
            .iter()
            .any(|e| e.warning && e.message.contains("Service ns/j"))
    );
    assert_eq!(d.requeue_after, Some(Duration::from_secs(10)));
    j.status = Some(d.status.clone());
    // Reported once, not on every look.
    assert!(decide(&j, &conflicts, at(10)).events.is_empty());
    // The name is free: the gang starts.
    let d = step(&mut j, vec![], 20);
    assert_eq!(d.actions[0], Action::EnsureSupport { attempt: 1 });
    assert_eq!(created(&d), Some((1, 2)));
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
    // Shown where the job runs locally; on a cluster the phase says it.
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == "Running" && e.is_routine())
    );
    let g = d.status.goodput.expect("goodput");
    assert_eq!(g.lost_seconds, 7.0, "scheduling time is lost time");
}

/// The write that moved the job to Scheduling carried the attempt's start; when it is lost (a
/// conflict, a timeout, a leader change) the next reconcile sees Scheduling without one. The
/// gang timeout must still fire: the start is re-established, never waited on forever.
#[test]
fn the_gang_timeout_fires_after_the_write_of_the_attempt_start_was_lost() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 2, None);
    step(&mut j, vec![], 0);
    let lost = j.status.as_mut().expect("status");
    assert_eq!(lost.phase, Some(Phase::Scheduling));
    lost.attempt_start_time = None;
    let d = step(&mut j, vec![w(0, 1, RUNNING), w(1, 1, PENDING)], 5);
    assert_eq!(phase(&d), Phase::Scheduling);
    assert_eq!(d.status.attempt_start_time, Some(Time(at(5))));
    assert!(
        d.requeue_after
            .is_some_and(|r| r <= Duration::from_secs(60))
    );
    let d = step(&mut j, vec![w(0, 1, RUNNING), w(1, 1, PENDING)], 66);
    assert_eq!(phase(&d), Phase::Restarting, "the gang timeout fired");
    assert_eq!(restarts(&d).schedule_timeouts, 1);
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

/// A queue admits a pod group whole or not at all: an elastic job the queue has held for a gang
/// timeout asks again at its minimum size; a job without minReplicas waits on.
#[test]
fn an_elastic_job_the_queue_holds_asks_again_at_its_minimum() {
    let mut j = job("gang: {scheduleTimeoutSeconds: 60}", 3, Some(2));
    step(&mut j, vec![], 0);
    let d = step(&mut j, gang(3, 1, WorkerState::Gated), 59);
    assert_eq!(phase(&d), Phase::Scheduling, "queued within the timeout");
    let d = step(&mut j, gang(3, 1, WorkerState::Gated), 60);
    assert_eq!(phase(&d), Phase::Restarting);
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == "ElasticResize" && e.message.contains("asking it for 2")),
        "{:?}",
        d.events
    );
    assert_eq!(d.status.workers.as_ref().map(|w| w.desired), Some(2));
    assert_eq!(deleted(&d).len(), 3, "the held group is released");
    assert_eq!(restarts(&d), RestartCounts::default(), "no budget charged");
    let d = step(&mut j, vec![], 62);
    assert_eq!(created(&d), Some((2, 2)));
    // At its minimum it waits in the queue as long as it takes.
    let d = step(&mut j, gang(2, 2, WorkerState::Gated), 1000);
    assert_eq!(phase(&d), Phase::Scheduling);

    let mut rigid = job("gang: {scheduleTimeoutSeconds: 60}", 3, None);
    step(&mut rigid, vec![], 0);
    let d = step(&mut rigid, gang(3, 1, WorkerState::Gated), 600);
    assert_eq!(phase(&d), Phase::Scheduling);
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
