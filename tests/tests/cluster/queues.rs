//! Kueue on the control plane (scripts/kueue.sh: Kueue's manager with its plain-pod integration):
//! a TrainingJob with `runPolicy.queue` is admitted as one pod group, waits in the queue without
//! its gang timeout running, and a higher-priority workload preempts it whole, after which it is
//! queued again and restarted, charged to the infrastructure budget.

use super::*;

/// A namespace Kueue manages, with a ClusterQueue of `cpu` CPUs (no borrowing), its LocalQueue
/// `team`, and a PriorityClass `urgent` for preemption.
async fn queued_namespace(cluster: &Cluster, namespace: &str, cpu: u32) {
    assert!(
        std::env::var_os("FERROTRAIN_KUEUE_DIR").is_some(),
        "Kueue is not running: `eval \"$(scripts/kueue.sh start)\"` after the control plane"
    );
    cluster.kubectl_ok(
        &[
            "label",
            "namespace",
            namespace,
            "ferrotrain.io/kueue=enabled",
        ],
        None,
    );
    cluster.apply(&format!(
        r#"
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {{name: default-flavor}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {{name: {namespace}}}
spec:
  namespaceSelector:
    matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
  preemption:
    withinClusterQueue: LowerPriority
  resourceGroups:
  - coveredResources: [cpu, memory]
    flavors:
    - name: default-flavor
      resources:
      - {{name: cpu, nominalQuota: {cpu}}}
      - {{name: memory, nominalQuota: 64Gi}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {{name: team, namespace: {namespace}}}
spec: {{clusterQueue: {namespace}}}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {{name: urgent}}
value: 100000
preemptionPolicy: Never
"#
    ));
}

/// `kubectl get workloads` in the namespace: name and whether admitted, one per line.
fn workloads(cluster: &Cluster, namespace: &str) -> String {
    cluster.kubectl_ok(
        &[
            "get",
            "workloads.kueue.x-k8s.io",
            "-n",
            namespace,
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Admitted")].status}{"\n"}{end}"#,
        ],
        None,
    )
}

fn queued_job(name: &str, priority: Option<&str>) -> serde_json::Value {
    let priority = priority
        .map(|p| format!(", priorityClassName: {p}"))
        .unwrap_or_default();
    job_manifest(
        name,
        2,
        &format!(", queue: team{priority}, gang: {{scheduleTimeoutSeconds: 10}}"),
    )
}

/// Two gangs of 2 CPUs for a queue of 3: the first is admitted as one pod group and runs; the
/// second waits gated, past its gang timeout without a timeout, and runs once the first is gone,
/// its timeout counted from admission.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh and Kueue of scripts/kueue.sh"]
async fn a_gang_waits_in_the_queue_without_timing_out_and_runs_when_admitted() {
    let Scenario {
        cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("kueue", "restricted").await;
    queued_namespace(&cluster, &namespace, 3).await;
    create_job(&client, &namespace, &queued_job("first", None)).await;
    wait_phase(&client, &namespace, "first", "Running", 60).await;
    create_job(&client, &namespace, &queued_job("second", None)).await;
    wait_condition(&client, &namespace, "second", "queued", 30, |c| {
        c.type_ == "Scheduled" && c.reason == "Queued"
    })
    .await;
    // Twice the gang timeout later: still queued, no timeout, no restart.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let second = job_status(&client, &namespace, "second")
        .await
        .expect("job");
    assert_eq!(phase_name(&second).as_deref(), Some("Scheduling"));
    let restarts = second
        .status
        .clone()
        .and_then(|s| s.restarts)
        .unwrap_or_default();
    assert_eq!(
        restarts,
        ferrotrain_crds::RestartCounts::default(),
        "{restarts:?}"
    );
    let pods = job_pods(&client, &namespace, "second").await;
    assert_eq!(pods.len(), 2);
    assert!(
        pods.iter().all(|p| p
            .spec
            .as_ref()
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| !g.is_empty())),
        "Kueue holds the second gang's pods"
    );
    let listed = workloads(&cluster, &namespace);
    println!("{listed}");
    assert_eq!(
        listed.lines().count(),
        2,
        "one workload per gang:\n{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("first") || l.contains("first") && l.ends_with("True")),
        "{listed}"
    );

    Api::<TrainingJob>::namespaced(client.clone(), &namespace)
        .delete("first", &DeleteParams::foreground())
        .await
        .expect("delete the first job");
    let running = wait_phase(&client, &namespace, "second", "Running", 90).await;
    let status = running.status.unwrap_or_default();
    assert_eq!(status.attempt, Some(1));
    assert_eq!(
        status.restarts.unwrap_or_default().schedule_timeouts,
        0,
        "queued time is not scheduling time"
    );
    assert_no_rbac_refusals(&installed);
}

/// A gang of higher priority preempts a running one whole: Kueue stops its pod group, the job
/// restarts as a preemption (infrastructure budget, never the application's), waits in the queue,
/// and runs again once the urgent gang is gone.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh and Kueue of scripts/kueue.sh"]
async fn a_higher_priority_gang_preempts_a_running_one_whole() {
    let Scenario {
        cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("preempt", "restricted").await;
    queued_namespace(&cluster, &namespace, 3).await;
    create_job(&client, &namespace, &queued_job("routine", None)).await;
    wait_phase(&client, &namespace, "routine", "Running", 60).await;
    create_job(&client, &namespace, &queued_job("urgent", Some("urgent"))).await;
    wait_phase(&client, &namespace, "urgent", "Running", 90).await;
    let routine = wait_for(
        "the routine gang restarted",
        Duration::from_secs(60),
        || async {
            let job = job_status(&client, &namespace, "routine").await?;
            (job.status.as_ref()?.attempt == Some(2)).then_some(job)
        },
    )
    .await;
    let restarts = routine
        .status
        .clone()
        .and_then(|s| s.restarts)
        .unwrap_or_default();
    assert_eq!(
        (restarts.preemption, restarts.infra, restarts.app),
        (1, 1, 0),
        "a preemption by the queue: {restarts:?}"
    );
    let events = cluster.events(&namespace, "WorkerFailed");
    assert!(events.contains("Preempted"), "{events}");
    // Queued again behind the urgent gang, then running once it is gone.
    wait_condition(&client, &namespace, "routine", "queued", 60, |c| {
        c.type_ == "Scheduled" && c.reason == "Queued"
    })
    .await;
    Api::<TrainingJob>::namespaced(client.clone(), &namespace)
        .delete("urgent", &DeleteParams::foreground())
        .await
        .expect("delete the urgent job");
    let running = wait_phase(&client, &namespace, "routine", "Running", 90).await;
    assert_eq!(running.status.and_then(|s| s.attempt), Some(2));
    assert_no_rbac_refusals(&installed);
}

/// Real trainers under Kueue: a gang preempted by a higher-priority one is stopped by the queue
/// (SIGTERM: each rank commits an emergency checkpoint and exits), restarts as a preemption, waits
/// in the queue, and when re-admitted resumes from that checkpoint; periodic checkpoints are off,
/// so a resume from any step but 0 is a resume from the emergency checkpoint.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh, Kueue of scripts/kueue.sh and the S3 server of scripts/s3-server.sh"]
async fn a_preempted_gang_resumes_from_its_emergency_checkpoint_when_readmitted() {
    let Scenario {
        cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("requeue", "restricted").await;
    queued_namespace(&cluster, &namespace, 3).await;
    let mut manifest = real_mnist_job(&client, &namespace, "routine", 20).await;
    manifest["spec"]["runPolicy"]["queue"] = serde_json::json!("team");
    manifest["spec"]["workers"]["resources"] =
        serde_json::json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}});
    manifest["spec"]["checkpoint"]["everySteps"] = serde_json::json!(1_000_000);
    manifest["spec"]["checkpoint"]["everySeconds"] = serde_json::json!(100_000);
    create_job(&client, &namespace, &manifest).await;
    let _kubelet = real_kubelet(&cluster, &namespace, "routine");
    wait_phase(&client, &namespace, "routine", "Running", 90).await;
    wait_for("routine steps", Duration::from_secs(120), || async {
        let job = job_status(&client, &namespace, "routine").await?;
        (job.status?.progress?.step >= 100).then_some(())
    })
    .await;
    create_job(&client, &namespace, &queued_job("urgent", Some("urgent"))).await;
    let preempted = wait_for(
        "routine preempted and queued again",
        Duration::from_secs(120),
        || async {
            let job = job_status(&client, &namespace, "routine").await?;
            let status = job.status.clone()?;
            let queued = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Scheduled" && c.reason == "Queued");
            (status.attempt == Some(2) && queued).then_some(status)
        },
    )
    .await;
    let restarts = preempted.restarts.clone().unwrap_or_default();
    println!(
        "routine preempted: restarts {restarts:?}, checkpoint {:?}",
        preempted.checkpoint
    );
    assert_eq!(
        (restarts.preemption, restarts.app),
        (1, 0),
        "a preemption by the queue, never the application's budget: {restarts:?}"
    );
    Api::<TrainingJob>::namespaced(client.clone(), &namespace)
        .delete("urgent", &DeleteParams::foreground())
        .await
        .expect("delete the urgent job");
    let done = wait_phase(&client, &namespace, "routine", "Succeeded", 600).await;
    let status = done.status.unwrap_or_default();
    assert_eq!(status.attempt, Some(2), "{:?}", status.restarts);
    let resumed = resumed_from(&cluster.dir.join(&namespace)).expect("a completed worker");
    assert!(
        resumed >= 100,
        "attempt 2 resumed from the emergency checkpoint (step {resumed})"
    );
    assert_no_rbac_refusals(&installed);
}

/// An elastic gang larger than its queue: Kueue admits a pod group whole or not at all, so after
/// a gang timeout in the queue the job asks again at minReplicas, is admitted and runs.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh and Kueue of scripts/kueue.sh"]
async fn an_elastic_gang_too_large_for_its_queue_is_admitted_at_its_minimum() {
    let Scenario {
        cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("elastic-queue", "restricted").await;
    queued_namespace(&cluster, &namespace, 2).await;
    let manifest = job_with(
        "wide",
        "replicas: 3, minReplicas: 2, resources: {requests: {cpu: '1', memory: 1Gi}, limits: {memory: 1Gi}}",
        "queue: team, gang: {scheduleTimeoutSeconds: 10}",
    );
    create_job(&client, &namespace, &manifest).await;
    wait_condition(&client, &namespace, "wide", "queued", 60, |c| {
        c.type_ == "Scheduled" && c.reason == "Queued"
    })
    .await;
    let running = wait_phase(&client, &namespace, "wide", "Running", 120).await;
    let status = running.status.unwrap_or_default();
    assert_eq!(status.workers.as_ref().map(|w| w.desired), Some(2));
    assert_eq!(status.attempt, Some(2));
    let restarts = status.restarts.unwrap_or_default();
    assert_eq!(
        (restarts.app, restarts.infra, restarts.schedule_timeouts),
        (0, 0, 0),
        "asking the queue for less is no failure: {restarts:?}"
    );
    let events = cluster.events(&namespace, "ElasticResize");
    assert!(events.contains("asking it for 2"), "{events}");
    let admitted = workloads(&cluster, &namespace);
    assert!(admitted.lines().any(|l| l.ends_with(" True")), "{admitted}");
    assert_no_rbac_refusals(&installed);
}
