//! How the operator itself is installed and run: a namespaced install with its Role, and two
//! replicas handing over leadership without losing progress.

use super::*;

/// With `watchNamespace` the chart grants a Role (no nodes): a pod held Terminating on a node
/// must not stall the reconciler on a 403, and the external deletion restarts the gang.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_namespaced_install_works_with_its_role() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let namespace = test_namespace(&client, "watched", "restricted").await;
    let watch = format!("watchNamespace={namespace}");
    let installed =
        install_operator(&cluster, &["--set", &watch], &["--namespace", &namespace]).await;
    create_job(&client, &namespace, &job_manifest("scoped", 2, "")).await;
    wait_phase(&client, &namespace, "scoped", "Running", 60).await;
    hold_pod(&client, &namespace, "scoped-worker-1-a1").await;
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .delete("scoped-worker-1-a1", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "restart after the deletion",
        Duration::from_secs(30),
        || async {
            let job = job_status(&client, &namespace, "scoped").await?;
            (job.status?.attempt == Some(2)).then_some(())
        },
    )
    .await;
    release_pod(&client, &namespace, "scoped-worker-1-a1").await;
    wait_attempt_running(&client, &namespace, "scoped", 2, 60).await;
    let failed: Vec<String> = installed
        .operator
        .log_text()
        .lines()
        .filter(|l| l.contains("reconcile failed"))
        .map(str::to_string)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Two replicas with Lease leader election: reports sent to the follower reach status; SIGTERM
/// hands over at once; SIGKILL hands over within the lease duration.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn two_replicas_hand_over_and_lose_no_progress() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let first = install_operator(&cluster, &[], &[]).await;
    let kubeconfig = cluster
        .service_account_kubeconfig(&first.namespace, "ferrotrain")
        .await;
    let lease_namespace = first.namespace.clone();
    let mut leader = first.operator;
    // Let the first replica take the lease before the second starts.
    let holder = || lease_holder(&client, &lease_namespace);
    assert_eq!(
        wait_for("a leader", Duration::from_secs(30), holder).await,
        "operator-0"
    );
    let follower = Operator::start(&kubeconfig, &lease_namespace, "operator-1", &[]);
    let namespace = test_namespace(&client, "leader", "restricted").await;
    create_job(&client, &namespace, &job_manifest("led", 2, "")).await;
    wait_phase(&client, &namespace, "led", "Running", 60).await;
    let token = job_token(&client, &namespace, "led")
        .await
        .expect("the job's progress token");
    let report = |step: u64| {
        serde_json::json!({"attempt": 1, "worldSize": 2, "step": step, "totalSteps": 1000, "epoch": 0})
            .to_string()
    };
    // The follower learns the leader's address from the Lease within one renew period.
    let code = wait_for("the follower forwards", Duration::from_secs(20), || async {
        let code = post_progress(&follower.address, &namespace, "led", &token, &report(100));
        (code == 204).then_some(code)
    })
    .await;
    assert_eq!(code, 204);
    wait_for(
        "progress from the follower in status",
        Duration::from_secs(20),
        || async {
            let job = job_status(&client, &namespace, "led").await?;
            (job.status?.progress?.step == 100).then_some(())
        },
    )
    .await;

    // SIGTERM: the leader releases the lease and the follower leads at once.
    let started = std::time::Instant::now();
    leader.signal("TERM");
    wait_for("operator-1 leads", Duration::from_secs(30), || async {
        (holder().await.as_deref() == Some("operator-1")).then_some(())
    })
    .await;
    println!(
        "SIGTERM handover took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "handed over without waiting for expiry"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !leader.exited() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old leader did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The new leader runs the job on: a worker failure is handled.
    let mut third = Operator::start(&kubeconfig, &lease_namespace, "operator-2", &[]);
    terminate_container(&client, &namespace, "led-worker-0-a1", 1).await;
    wait_attempt_running(&client, &namespace, "led", 2, 60).await;

    // SIGKILL: no release; the other replica takes over once the lease expires.
    let started = std::time::Instant::now();
    follower.signal("KILL");
    wait_for("operator-2 leads", Duration::from_secs(60), || async {
        (holder().await.as_deref() == Some("operator-2")).then_some(())
    })
    .await;
    println!(
        "SIGKILL takeover took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for pod in running_pods(&client, &namespace, "led", 2).await {
        terminate_container(&client, &namespace, &pod.name_any(), 0).await;
    }
    wait_phase(&client, &namespace, "led", "Succeeded", 60).await;
    assert!(!third.exited());
}

/// A leader paused (SIGSTOP, a frozen node) past its renew deadline loses the lease to the other
/// replica, which runs the job on; when it resumes it writes nothing, although its watches bring
/// it the changes it missed: it stopped acting at its own renew deadline, before its election
/// loop could notice anything.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_paused_leader_writes_nothing_once_the_other_replica_took_over() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let first = install_operator(&cluster, &[], &[]).await;
    let kubeconfig = cluster
        .service_account_kubeconfig(&first.namespace, "ferrotrain")
        .await;
    let lease_namespace = first.namespace.clone();
    let paused = first.operator;
    let holder = || lease_holder(&client, &lease_namespace);
    assert_eq!(
        wait_for("a leader", Duration::from_secs(30), holder).await,
        "operator-0"
    );
    let _other = Operator::start(&kubeconfig, &lease_namespace, "operator-1", &[]);
    let namespace = test_namespace(&client, "paused", "restricted").await;
    create_job(&client, &namespace, &job_manifest("frozen", 2, "")).await;
    wait_phase(&client, &namespace, "frozen", "Running", 60).await;
    // A running job with no reports needs no writes: wait until the count settles.
    let mut before = paused.api_writes();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = paused.api_writes();
        if now == before {
            break;
        }
        before = now;
    }

    paused.signal("STOP");
    let stopped = std::time::Instant::now();
    wait_for("operator-1 leads", Duration::from_secs(60), || async {
        (holder().await.as_deref() == Some("operator-1")).then_some(())
    })
    .await;
    println!(
        "takeover from a paused leader took {:.1}s",
        stopped.elapsed().as_secs_f64()
    );
    // The new leader acts on a failure while the old one is paused.
    terminate_container(&client, &namespace, "frozen-worker-0-a1", 1).await;
    wait_attempt_running(&client, &namespace, "frozen", 2, 60).await;

    paused.signal("CONT");
    // Its watches catch up on the failure and the new attempt; it must not act on them.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        paused.api_writes(),
        before,
        "the resumed leader wrote to the API after the other replica took over"
    );
    let job = job_status(&client, &namespace, "frozen")
        .await
        .expect("job");
    let status = job.status.expect("status");
    assert_eq!(status.attempt, Some(2), "one restart, by the new leader");
    assert_eq!(status.restarts.map(|r| r.app), Some(1));
}
