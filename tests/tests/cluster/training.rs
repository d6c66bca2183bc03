//! Real training on the control plane: MNIST with workers as trainer processes resuming after a
//! kill, and sweeps whose trials are TrainingJobs.

use super::*;

/// Real training on the control plane: examples/mnist-k8s.yaml (namespace, storage endpoint,
/// credentials and length adapted) runs as real `ferrotrain worker` processes started for its pods by the
/// test's kubelet, checkpointing to the local S3 server; one worker is killed with SIGKILL after
/// the first checkpoint, and attempt 2 resumes from it and trains to ≥ 97 % accuracy.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh and the S3 server of scripts/s3-server.sh"]
async fn mnist_trains_on_the_cluster_and_resumes_after_a_kill() {
    let Scenario {
        cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("train", "restricted").await;
    // Twenty epochs: long enough a run that the kill lands mid-training.
    let manifest = real_mnist_job(&client, &namespace, "mnist", 20).await;
    create_job(&client, &namespace, &manifest).await;
    let work_dir = cluster.dir.join(&namespace);
    let kubelet = real_kubelet(&cluster, &namespace, "mnist");
    wait_phase(&client, &namespace, "mnist", "Running", 60).await;
    let checkpointed = wait_for(
        "a checkpoint in status",
        Duration::from_secs(300),
        || async {
            let job = job_status(&client, &namespace, "mnist").await?;
            let step = job.status?.checkpoint?.step?;
            (step > 0).then_some(step)
        },
    )
    .await;
    let victim = kubelet.pid("mnist-worker-1-a1").expect("rank 1 runs");
    send_signal(victim, "KILL");
    wait_attempt_running(&client, &namespace, "mnist", 2, 120).await;
    let job = wait_phase(&client, &namespace, "mnist", "Succeeded", 600).await;
    drop(kubelet);
    let status = job.status.unwrap_or_default();
    let accuracy = status
        .progress
        .as_ref()
        .and_then(|p| p.metrics.get("valAccuracy").copied())
        .expect("valAccuracy in status.progress.metrics");
    println!(
        "mnist on the control plane: valAccuracy {accuracy:.4}, checkpoint at step {checkpointed} before the kill, restarts {:?}",
        status.restarts
    );
    assert!(accuracy >= 0.97, "accuracy {accuracy}");
    let restarts = status.restarts.unwrap_or_default();
    assert_eq!(
        (restarts.app, restarts.infra),
        (0, 1),
        "a SIGKILL is not the application's fault"
    );
    // Attempt 2 started from the checkpoint, not from step 0.
    let resumed = resumed_from(&work_dir).expect("a completed worker that resumed");
    assert!(
        resumed >= checkpointed,
        "resumed from {resumed}, checkpoint was {checkpointed}"
    );
    assert_no_rbac_refusals(&installed);
    delete_namespace(&client, &namespace).await;
}

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_sweep_runs_its_trials_as_jobs_stops_the_losers_and_takes_them_along_when_deleted() {
    use ferrotrain_crds::sweep::{SweepPhase, TrialState};
    use ferrotrain_tests::kubelet::{Kubelet, KubeletConfig};
    let Scenario {
        cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("sweep", "restricted").await;
    let mut manifest = asha_sweep("asha", &namespace, 4);
    // Rungs at 300, 900, 2700 and 8100 of 20,000 steps. A stop lands after the trial's next
    // progress write (at most every few seconds) and an emergency checkpoint, so a loser must
    // still be training for several seconds after its rung, on a fast machine too: 3,000 steps
    // ran to the end before the stop on one. Evaluations every 300 steps keep the rungs exact.
    manifest["spec"]["template"]["trainer"]["maxSteps"] = serde_json::json!(20_000);
    manifest["spec"]["template"]["trainer"]["evalEverySteps"] = serde_json::json!(300);
    manifest["spec"]["algorithm"]["minSteps"] = serde_json::json!(300);
    let work_dir = cluster.dir.join(&namespace);
    let kubelets: Vec<Kubelet> = (0..4)
        .map(|i| {
            Kubelet::start(
                &cluster.kubeconfig(),
                &namespace,
                &format!("asha-{i:03}"),
                KubeletConfig {
                    binary: ferrotrain_tests::cluster::ferrotrain_binary(),
                    data_dir: workspace_root().join("data"),
                    work_dir: work_dir.clone(),
                    threads: 1,
                },
            )
        })
        .collect();
    let sweeps = create_sweep(&client, &namespace, manifest).await;
    let done = wait_for("the sweep to succeed", Duration::from_secs(600), || async {
        let sweep = sweeps.get("asha").await.ok()?;
        let status = sweep.status.clone()?;
        assert_ne!(
            status.phase,
            Some(SweepPhase::Failed),
            "{:?}",
            status.message
        );
        (status.phase == Some(SweepPhase::Succeeded)).then_some(sweep)
    })
    .await;
    drop(kubelets);
    let status = done.status.clone().unwrap_or_default();
    for trial in &status.trials {
        println!(
            "{} {:?} steps {} valAccuracy {:?} rungs {:?} {}",
            trial.name,
            trial.state,
            trial.steps,
            trial.metric,
            trial.rungs,
            trial.message.clone().unwrap_or_default()
        );
    }
    assert_eq!(status.trials.len(), 4);
    let stopped: Vec<&str> = status
        .trials
        .iter()
        .filter(|t| t.state == Some(TrialState::Stopped))
        .map(|t| t.name.as_str())
        .collect();
    assert!(!stopped.is_empty(), "ASHA stopped at least one loser");
    let best = status.best.clone().expect("best trial recorded");
    assert!(best.metric >= 0.9, "best {best:?}");
    assert!(
        status
            .trials
            .iter()
            .any(|t| t.name == best.trial && t.state == Some(TrialState::Succeeded)),
        "the best trial trained to the end"
    );
    // Every trial is a TrainingJob owned by the sweep; the stopped ones were suspended.
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let trials = jobs
        .list(&kube::api::ListParams::default().labels("ferrotrain.io/sweep=asha"))
        .await
        .expect("trials");
    assert_eq!(trials.items.len(), 4);
    for job in &trials.items {
        let owner = job.owner_references().first().cloned().expect("owned");
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("TrainingSweep", "asha", Some(true))
        );
        let suspended = job
            .spec
            .run_policy
            .as_ref()
            .and_then(|p| p.suspend)
            .unwrap_or(false);
        assert_eq!(
            suspended,
            stopped.contains(&job.name_any().as_str()),
            "{} suspended iff stopped",
            job.name_any()
        );
    }
    let table = cluster.kubectl_ok(&["get", "tsw", "-n", &namespace], None);
    let header = table.lines().next().unwrap_or_default().to_string();
    for column in ["NAME", "PHASE", "TRIALS", "BEST", "METRIC", "AGE"] {
        assert!(
            header.contains(column),
            "`kubectl get tsw` header {header:?} lacks {column}"
        );
    }
    println!("{table}");
    // Deleting the sweep deletes its trials (the garbage collector follows the owner references).
    sweeps
        .delete("asha", &DeleteParams::background())
        .await
        .expect("delete sweep");
    wait_for(
        "the trials to be collected",
        Duration::from_secs(120),
        || async {
            let left = jobs
                .list(&kube::api::ListParams::default().labels("ferrotrain.io/sweep=asha"))
                .await
                .ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await;
    assert_no_rbac_refusals(&installed);
    delete_namespace(&client, &namespace).await;
}

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_sweep_whose_trials_would_be_refused_fails_naming_the_field_and_creates_none() {
    use ferrotrain_crds::sweep::SweepPhase;
    let Scenario {
        client,
        installed,
        namespace,
        ..
    } = Scenario::start("sweep-invalid", "restricted").await;
    let text = std::fs::read_to_string(
        workspace_root().join("tests/manifests/invalid/81-sweep-trials-would-be-invalid.yaml"),
    )
    .expect("case");
    let mut manifest: serde_json::Value = serde_yaml::from_str(&text).expect("YAML");
    manifest["metadata"]["namespace"] = serde_json::json!(namespace);
    // Only Ferrotrain checks the trials: the API server admits the sweep.
    let sweeps = create_sweep(&client, &namespace, manifest).await;
    let message = wait_for("the sweep to fail", Duration::from_secs(60), || async {
        let status = sweeps.get("bad").await.ok()?.status?;
        (status.phase == Some(SweepPhase::Failed)).then_some(status.message.unwrap_or_default())
    })
    .await;
    assert!(
        message.contains("spec.template.trainer.lrSchedule.everySteps"),
        "{message}"
    );
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let trials = jobs.list(&Default::default()).await.expect("list");
    assert!(trials.items.is_empty(), "no trial was created");
    assert_no_rbac_refusals(&installed);
    delete_namespace(&client, &namespace).await;
}

/// A trial's progress writes do not wake its sweep: only what the sweep decides on does (a phase,
/// an evaluation, the end), and a periodic pass. Before, every status write of every trial woke
/// it, about two reconciles per write (the sweep's own status write woke it once more).
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_trials_progress_writes_do_not_wake_its_sweep() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let namespace = test_namespace(&client, "sweep-wake", "restricted").await;
    // Watching its namespace only, it counts this sweep's reconciles and no other test's.
    let watch = format!("watchNamespace={namespace}");
    let installed =
        install_operator(&cluster, &["--set", &watch], &["--namespace", &namespace]).await;
    // One trial that reports every two seconds and evaluates only at its end, far away.
    let mut manifest = asha_sweep("quiet", &namespace, 1);
    manifest["spec"]["algorithm"] = serde_json::json!({"type": "random", "seed": 1});
    manifest["spec"]["parallelTrials"] = serde_json::json!(1);
    manifest["spec"]["template"]["trainer"]["maxSteps"] = serde_json::json!(10_000_000);
    manifest["spec"]["template"]["trainer"]["evalEverySteps"] = serde_json::json!(10_000_000);
    let kubelet = real_kubelet(&cluster, &namespace, "quiet-000");
    create_sweep(&client, &namespace, manifest).await;
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let trial_step = || async {
        let trials = jobs
            .list(&kube::api::ListParams::default().labels("ferrotrain.io/sweep=quiet"))
            .await
            .ok()?;
        let trial = trials.items.into_iter().next()?;
        trial.status?.progress.map(|p| p.step).filter(|s| *s > 0)
    };
    let mut step = wait_for(
        "the trial's first progress",
        Duration::from_secs(120),
        &trial_step,
    )
    .await;
    let operator = &installed.operator;
    let reconciles = || operator.metric_sum("ferrotrain_sweep_reconciles_total", "");
    let (before, started) = (reconciles(), std::time::Instant::now());
    // Fifteen progress writes, each seen as a new step in the trial's status.
    let mut writes = 0;
    while writes < 15 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {writes} progress writes in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(now) = trial_step().await
            && now != step
        {
            (step, writes) = (now, writes + 1);
        }
    }
    let woken = reconciles() - before;
    let seconds = started.elapsed().as_secs();
    // The periodic pass every 30 s (one more for a pass already due as the count began).
    let allowed = seconds / 30 + 2;
    println!("{writes} progress writes in {seconds} s woke the sweep {woken} times (≤ {allowed})");
    assert!(
        woken <= allowed,
        "{writes} progress writes in {seconds} s reconciled the sweep {woken} times"
    );
    assert_no_rbac_refusals(&installed);
    // The kubelet ends the trial's pods as the namespace goes.
    delete_namespace(&client, &namespace).await;
    drop(kubelet);
}

/// Creates the sweep of `manifest` in `namespace` (the API server admits it) and returns their API.
async fn create_sweep(
    client: &Client,
    namespace: &str,
    manifest: serde_json::Value,
) -> Api<ferrotrain_crds::sweep::TrainingSweep> {
    let sweeps = Api::namespaced(client.clone(), namespace);
    sweeps
        .create(
            &PostParams::default(),
            &serde_json::from_value(manifest).expect("sweep"),
        )
        .await
        .expect("the API server admits the sweep");
    sweeps
}
