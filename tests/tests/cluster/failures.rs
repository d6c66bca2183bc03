//! Jobs that run and fail: success with the chart's RBAC, gang restarts, the failure policy,
//! garbage collection, evictions, preemption, a lost node and a gang that cannot schedule.

use super::*;

/// Scheduling → Running only when every pod runs → Succeeded, with the chart's RBAC, worker pods
/// admitted under the restricted Pod Security level, and progress shown by `kubectl get tj`.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_job_runs_to_success_with_the_charts_rbac() {
    let Scenario {
        cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("happy", "restricted").await;
    create_job(&client, &namespace, &job_manifest("happy", 3, "")).await;
    let job = wait_phase(&client, &namespace, "happy", "Running", 60).await;
    assert_eq!(running_pods(&client, &namespace, "happy", 1).await.len(), 3);
    let status = job.status.clone().unwrap_or_default();
    assert_eq!(status.attempt, Some(1));

    // Progress from rank 0, with the job's token, through the operator's endpoint.
    let token = job_token(&client, &namespace, "happy")
        .await
        .expect("the job's progress token");
    let report = serde_json::json!({
        "attempt": 1, "worldSize": 3, "step": 250, "totalSteps": 1000, "epoch": 0,
        "loss": 0.4321, "metrics": {"valAccuracy": 0.91},
    });
    let code = post_progress(
        &installed.operator.address,
        &namespace,
        "happy",
        &token,
        &report.to_string(),
    );
    assert_eq!(code, 204, "progress accepted");
    wait_for(
        "status.progress.step 250",
        Duration::from_secs(30),
        || async {
            let job = job_status(&client, &namespace, "happy").await?;
            (job.status?.progress?.step == 250).then_some(())
        },
    )
    .await;
    let table = cluster.kubectl_ok(&["get", "tj", "happy", "-n", &namespace], None);
    let row = table.lines().nth(1).unwrap_or_default().to_string();
    for expected in ["Running", "3/3", "25", "250", "0.4321"] {
        assert!(
            row.contains(expected),
            "`kubectl get tj` row {row:?} lacks {expected}"
        );
    }

    for pod in running_pods(&client, &namespace, "happy", 1).await {
        terminate_container(&client, &namespace, &pod.name_any(), 0).await;
    }
    wait_phase(&client, &namespace, "happy", "Succeeded", 60).await;
    assert_no_rbac_refusals(&installed);
    let _ = installed.namespace;
}

/// One worker exits 1: the whole gang restarts as attempt 2, charged to the application budget.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_worker_exit_restarts_the_whole_gang() {
    let Scenario {
        cluster: _cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("restart", "restricted").await;
    create_job(&client, &namespace, &job_manifest("restart", 2, "")).await;
    wait_phase(&client, &namespace, "restart", "Running", 60).await;
    terminate_container(&client, &namespace, "restart-worker-1-a1", 1).await;
    let job = wait_for("attempt 2 running", Duration::from_secs(60), || async {
        let job = job_status(&client, &namespace, "restart").await?;
        let attempt = job.status.as_ref()?.attempt;
        (attempt == Some(2) && phase_name(&job).as_deref() == Some("Running")).then_some(job)
    })
    .await;
    let restarts = job.status.and_then(|s| s.restarts).unwrap_or_default();
    assert_eq!(restarts.app, 1, "{restarts:?}");
    assert_eq!(
        running_pods(&client, &namespace, "restart", 2).await.len(),
        2
    );
    assert_no_rbac_refusals(&installed);
}

/// A malformed-data exit (3) fails the job on its first attempt, naming the worker's own last
/// error from its termination message; a user rule turns exit 42 into an uncharged restart.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn the_failure_policy_fails_fast_and_names_the_workers_error() {
    let Scenario {
        cluster: _cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("policy", "restricted").await;
    let rules = ", maxAppRestarts: 0, failurePolicy: {rules: [{action: RestartGangWithoutBudget, onExitCodes: [42]}]}";
    create_job(&client, &namespace, &job_manifest("policy", 2, rules)).await;
    wait_phase(&client, &namespace, "policy", "Running", 60).await;
    terminate_container(&client, &namespace, "policy-worker-0-a1", 42).await;
    let job = wait_for("attempt 2 running", Duration::from_secs(60), || async {
        let job = job_status(&client, &namespace, "policy").await?;
        (job.status.as_ref()?.attempt == Some(2) && phase_name(&job).as_deref() == Some("Running"))
            .then_some(job)
    })
    .await;
    let restarts = job.status.and_then(|s| s.restarts).unwrap_or_default();
    assert_eq!((restarts.app, restarts.uncharged), (0, 1), "{restarts:?}");
    let log_tail = concat!(
        "{\"level\":\"INFO\",\"fields\":{\"message\":\"compute threads\"}}\n",
        "{\"level\":\"ERROR\",\"fields\":{\"message\":\"training data\",",
        "\"error\":\"s3://data/labels.idx: byte 9: label 200 is not below dataset.classes (10)\"}}\n"
    );
    terminate_container_saying(&client, &namespace, "policy-worker-1-a2", 3, Some(log_tail))
        .await
        .expect("terminate");
    let job = wait_phase(&client, &namespace, "policy", "Failed", 60).await;
    let status = job.status.unwrap_or_default();
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .expect("Failed condition");
    assert_eq!(failed.reason, "FailedByPolicy", "{failed:?}");
    assert!(
        failed.message.contains(
            "worker policy-worker-1-a2 failed: ExitCode3 (training data: s3://data/labels.idx: byte 9: label 200 is not below dataset.classes (10))"
        ),
        "{}",
        failed.message
    );
    assert_eq!(
        status.restarts.map(|r| r.app),
        Some(0),
        "no budget was used"
    );
    assert_no_rbac_refusals(&installed);
}

/// Deleting a finished job: the real garbage collector removes its pods, Service and Secret.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn deleting_a_job_collects_its_children() {
    let Scenario {
        cluster: _cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("gc", "restricted").await;
    create_job(&client, &namespace, &job_manifest("gc", 2, "")).await;
    wait_phase(&client, &namespace, "gc", "Running", 60).await;
    let secret_name = token_secret_name(&client, &namespace, "gc")
        .await
        .expect("token secret");
    assert!(
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt(&secret_name)
            .await
            .expect("get secret")
            .is_some()
    );
    Api::<TrainingJob>::namespaced(client.clone(), &namespace)
        .delete("gc", &DeleteParams::background())
        .await
        .expect("delete job");
    wait_for("children collected", Duration::from_secs(60), || async {
        let pods = job_pods(&client, &namespace, "gc").await;
        let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt(&secret_name)
            .await
            .ok()?;
        let service =
            Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &namespace)
                .get_opt("gc")
                .await
                .ok()?;
        (pods.is_empty() && secret.is_none() && service.is_none()).then_some(())
    })
    .await;
}

/// A drain (the Eviction API): the victim is Terminating with DisruptionTarget while its peer's
/// trainer exits 4 (peer lost). The restart is an infrastructure failure, never the application's.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn an_eviction_is_charged_to_the_infrastructure_budget() {
    let Scenario {
        cluster: _cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("evict", "restricted").await;
    create_job(
        &client,
        &namespace,
        &job_manifest("evict", 2, ", maxAppRestarts: 0"),
    )
    .await;
    wait_phase(&client, &namespace, "evict", "Running", 60).await;
    hold_pod(&client, &namespace, "evict-worker-1-a1").await;
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .evict("evict-worker-1-a1", &EvictParams::default())
        .await
        .expect("eviction admitted");
    terminate_container(&client, &namespace, "evict-worker-0-a1", 4).await;
    wait_for("restart recorded", Duration::from_secs(30), || async {
        let job = job_status(&client, &namespace, "evict").await?;
        (job.status?.attempt == Some(2)).then_some(())
    })
    .await;
    let restarts = restarts_of(&client, &namespace, "evict").await;
    assert_eq!(
        (restarts.app, restarts.infra, restarts.preemption),
        (0, 1, 1),
        "a drain is a disruption: {restarts:?}"
    );
    release_pod(&client, &namespace, "evict-worker-1-a1").await;
    wait_attempt_running(&client, &namespace, "evict", 2, 60).await;
}

/// Scheduler preemption by a higher-priority pod on a full node.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn scheduler_preemption_is_a_preemption() {
    let Scenario {
        cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("preempt", "baseline").await;
    let node = dedicated_node(&client).await;
    create_job(
        &client,
        &namespace,
        &job_with(
            "preempt",
            &on_dedicated_node(1, 16, ""),
            "maxAppRestarts: 0",
        ),
    )
    .await;
    wait_phase(&client, &namespace, "preempt", "Running", 60).await;
    // A kubelet keeps the victim Terminating for its grace period (the trainer checkpoints).
    hold_pod(&client, &namespace, "preempt-worker-0-a1").await;
    cluster.kubectl_ok(
        &["apply", "--server-side", "-f", "-"],
        Some("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: ferrotrain-test-high}\nvalue: 1000000\n"),
    );
    let intruder = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: intruder, namespace: {namespace}}}\nspec:\n  priorityClassName: ferrotrain-test-high\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  tolerations: [{{key: ferrotrain.io/dedicated, operator: Exists}}]\n  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: '16'}}}}}}]\n"
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&intruder));
    wait_for("preemption recorded", Duration::from_secs(60), || async {
        let restarts = restarts_of(&client, &namespace, "preempt").await;
        (restarts.preemption == 1).then_some(())
    })
    .await;
    let restarts = restarts_of(&client, &namespace, "preempt").await;
    assert_eq!((restarts.app, restarts.infra), (0, 1), "{restarts:?}");
    release_pod(&client, &namespace, "preempt-worker-0-a1").await;
    cluster.kubectl_ok(
        &[
            "delete",
            "pod",
            "intruder",
            "-n",
            &namespace,
            "--wait=false",
        ],
        None,
    );
    wait_attempt_running(&client, &namespace, "preempt", 2, 90).await;
    delete_namespace(&client, &namespace).await;
}

/// A node deleted under a running gang: PodGC removes its pods, the gang restarts on another
/// node, charged to the infrastructure budget.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_lost_node_restarts_the_gang_as_infrastructure() {
    let Scenario {
        cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("nodelost", "restricted").await;
    let node = dedicated_node(&client).await;
    let saved = cluster.kubectl_ok(&["get", "node", &node, "-o", "json"], None);
    create_job(
        &client,
        &namespace,
        &job_with(
            "nodelost",
            &on_dedicated_node(2, 2, ""),
            "maxAppRestarts: 0",
        ),
    )
    .await;
    wait_phase(&client, &namespace, "nodelost", "Running", 60).await;
    cluster.kubectl_ok(&["delete", "node", &node], None);
    let restored = || {
        let mut node: serde_json::Value = serde_json::from_str(&saved).expect("node JSON");
        for field in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
        ] {
            node["metadata"].as_object_mut().map(|m| m.remove(field));
        }
        node.to_string()
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        wait_for("node loss recorded", Duration::from_secs(120), || async {
            let restarts = restarts_of(&client, &namespace, "nodelost").await;
            (restarts.infra >= 1).then_some(restarts)
        }),
    )
    .await;
    cluster.kubectl_ok(&["create", "-f", "-"], Some(&restored()));
    let restarts = outcome.expect("node loss noticed");
    assert_eq!(restarts.app, 0, "{restarts:?}");
    wait_attempt_running(&client, &namespace, "nodelost", 2, 90).await;
    delete_namespace(&client, &namespace).await;
}

/// Too little capacity: the gang times out, is released and retried with backoff.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_gang_that_cannot_schedule_is_released_and_retried() {
    let Scenario {
        cluster: _cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("gangtimeout", "restricted").await;
    create_job(
        &client,
        &namespace,
        &job_with(
            "toobig",
            "replicas: 2, resources: {requests: {cpu: '17'}}",
            "gang: {scheduleTimeoutSeconds: 3}",
        ),
    )
    .await;
    let job = wait_for("gang timeout", Duration::from_secs(60), || async {
        let job = job_status(&client, &namespace, "toobig").await?;
        (job.status.as_ref()?.restarts.as_ref()?.schedule_timeouts >= 1).then_some(job)
    })
    .await;
    let status = job.status.unwrap_or_default();
    let scheduled = status.conditions.iter().find(|c| c.type_ == "Scheduled");
    assert_eq!(scheduled.map(|c| c.reason.as_str()), Some("GangTimeout"));
    let restarts = status.restarts.unwrap_or_default();
    assert_eq!(
        (restarts.app, restarts.infra),
        (0, 0),
        "a timeout costs no budget"
    );
    wait_for("old gang released", Duration::from_secs(30), || async {
        let pods = job_pods(&client, &namespace, "toobig").await;
        pods.iter()
            .all(|p| p.labels().get("ferrotrain.io/attempt") != Some(&"1".to_string()))
            .then_some(())
    })
    .await;
}
