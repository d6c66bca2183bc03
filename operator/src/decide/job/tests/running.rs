//! Table tests of a running gang: completion, stall detection and goodput.

use super::*;

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

/// A rank that exited 0 stays done when its pod is deleted afterwards (pod garbage collection at
/// its threshold, a drain, a user): the gang is not restarted, and the job succeeds when the
/// others finish.
#[test]
fn a_rank_that_succeeded_and_was_then_deleted_stays_completed() {
    let mut j = running_job("", 2);
    let d = step(
        &mut j,
        vec![w(0, 1, RUNNING), w(1, 1, WorkerState::Succeeded)],
        20,
    );
    assert_eq!(phase(&d), Phase::Running);
    assert_eq!(d.status.completed_ranks, vec![1]);
    let d = step(&mut j, vec![w(0, 1, RUNNING)], 30);
    assert_eq!(phase(&d), Phase::Running, "the deleted rank had finished");
    assert!(deleted(&d).is_empty());
    assert_eq!(restarts(&d), RestartCounts::default());
    let d = step(&mut j, vec![w(0, 1, WorkerState::Succeeded)], 40);
    assert_eq!(phase(&d), Phase::Succeeded);
}

/// Progress writes are rate-limited over all jobs, so the written `lastUpdateTime` can lag the
/// reports by more than a short deadline. The stall clock is when the operator last received a
/// report (`Observed::last_report`), and a replica that just became leader, having received none,
/// counts from its first look: a healthy job is never restarted as stalled.
#[test]
fn the_stall_clock_is_the_last_report_received_not_the_last_written() {
    let mut j = running_job("progressDeadlineSeconds: 30", 2);
    with_progress(&mut j, 10);
    // The written status says 10; the operator received a report at 55.
    let observed = Observed {
        workers: gang(2, 1, RUNNING),
        last_report: Some(at(55)),
        ..Observed::default()
    };
    let d = decide(&j, &observed, at(60));
    assert_eq!(
        phase(&d),
        Phase::Running,
        "reports arrive; only their write lags"
    );
    assert!(
        d.requeue_after
            .is_some_and(|r| r <= Duration::from_secs(25))
    );
    // Silent since 55: stalled at 85.
    let d = decide(&j, &observed, at(86));
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!(restarts(&d).stall, 1);
}

/// A job without `progressDeadlineSeconds` still has a deadline once its step time is measured:
/// ten median step times, never under a minute. A frozen single worker has no peer to time out,
/// so this is what finds it.
#[test]
fn without_an_explicit_deadline_a_measured_step_time_sets_one() {
    let observe = |step_seconds| Observed {
        workers: gang(1, 1, RUNNING),
        step_seconds,
        ..Observed::default()
    };
    let mut j = running_job("", 1);
    with_progress(&mut j, 20);
    // Fast steps: the floor of 60 s.
    let d = decide(&j, &observe(Some(0.5)), at(79));
    assert_eq!(phase(&d), Phase::Running);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(1)));
    let d = decide(&j, &observe(Some(0.5)), at(80));
    assert_eq!(phase(&d), Phase::Restarting);
    assert_eq!((restarts(&d).stall, restarts(&d).app), (1, 1));
    let message = condition(&d, "Progressing").map(|c| c.message.clone());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("default deadline 60s") && m.contains("500.0ms")),
        "{message:?}"
    );
    // Slow steps: ten of them.
    let d = decide(&j, &observe(Some(12.0)), at(130));
    assert_eq!(
        phase(&d),
        Phase::Running,
        "silent 110 s of a 120 s deadline"
    );
    let d = decide(&j, &observe(Some(12.0)), at(140));
    assert_eq!(phase(&d), Phase::Restarting);
    // No step time measured yet (start-up, data loading): no default deadline.
    let d = decide(&j, &observe(None), at(10_000));
    assert_eq!(phase(&d), Phase::Running);
    assert!(condition(&d, "Progressing").is_none());
    // The explicit field overrides the default either way.
    let mut j = running_job("progressDeadlineSeconds: 300", 1);
    with_progress(&mut j, 20);
    let d = decide(&j, &observe(Some(0.5)), at(200));
    assert_eq!(phase(&d), Phase::Running);
}
