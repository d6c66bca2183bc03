//! The rest of a job's life: suspension, deadlines and TTL, a job recreated under the same name,
//! elastic jobs, quotas and images that cannot be pulled.

use super::*;

/// Suspend deletes the gang; resume starts a new attempt without charging a budget.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn suspend_and_resume() {
    let Scenario {
        cluster: _cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("suspend", "restricted").await;
    create_job(&client, &namespace, &job_manifest("pause", 2, "")).await;
    wait_phase(&client, &namespace, "pause", "Running", 60).await;
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let suspend = |value: bool| serde_json::json!({"spec": {"runPolicy": {"suspend": value}}});
    jobs.patch(
        "pause",
        &PatchParams::default(),
        &Patch::Merge(&suspend(true)),
    )
    .await
    .expect("suspend");
    wait_phase(&client, &namespace, "pause", "Suspended", 30).await;
    wait_for("pods gone", Duration::from_secs(30), || async {
        job_pods(&client, &namespace, "pause")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    jobs.patch(
        "pause",
        &PatchParams::default(),
        &Patch::Merge(&suspend(false)),
    )
    .await
    .expect("resume");
    wait_attempt_running(&client, &namespace, "pause", 2, 60).await;
    let restarts = restarts_of(&client, &namespace, "pause").await;
    assert_eq!((restarts.app, restarts.infra), (0, 0), "{restarts:?}");
}

/// activeDeadlineSeconds fails a running job; ttlSecondsAfterFinished then deletes it and the
/// garbage collector its children.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn deadline_then_ttl() {
    let Scenario {
        cluster: _cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("deadline", "restricted").await;
    create_job(
        &client,
        &namespace,
        &job_manifest(
            "late",
            2,
            ", activeDeadlineSeconds: 3, ttlSecondsAfterFinished: 3",
        ),
    )
    .await;
    let job = wait_phase(&client, &namespace, "late", "Failed", 60).await;
    let failed = job.status.unwrap_or_default();
    assert!(
        failed
            .conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.reason == "DeadlineExceeded"),
        "{:?}",
        failed.conditions
    );
    wait_for(
        "job and children deleted",
        Duration::from_secs(60),
        || async {
            let gone = job_status(&client, &namespace, "late").await.is_none();
            let pods = job_pods(&client, &namespace, "late").await;
            (gone && pods.is_empty()).then_some(())
        },
    )
    .await;
}

/// A job deleted and created again under the same name while its old pods still terminate: the
/// new job adopts neither the old pods nor the old token Secret.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_job_recreated_under_the_same_name_starts_clean() {
    let Scenario {
        cluster: _cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("recreate", "restricted").await;
    create_job(&client, &namespace, &job_manifest("again", 2, "")).await;
    wait_phase(&client, &namespace, "again", "Running", 60).await;
    for rank in 0..2 {
        hold_pod(&client, &namespace, &format!("again-worker-{rank}-a1")).await;
    }
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    jobs.delete("again", &DeleteParams::background())
        .await
        .expect("delete");
    wait_for("old job gone", Duration::from_secs(30), || async {
        job_status(&client, &namespace, "again")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let second = create_job(&client, &namespace, &job_manifest("again", 2, "")).await;
    let uid = second.metadata.uid.clone().expect("uid");
    // The old pods are held Terminating: the new job must wait, not adopt them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let job = job_status(&client, &namespace, "again").await.expect("job");
    assert_ne!(
        phase_name(&job).as_deref(),
        Some("Running"),
        "adopted the old gang"
    );
    for rank in 0..2 {
        release_pod(&client, &namespace, &format!("again-worker-{rank}-a1")).await;
    }
    wait_phase(&client, &namespace, "again", "Running", 60).await;
    let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references.iter().flatten().any(|o| o.uid == uid)
    };
    for pod in job_pods(&client, &namespace, "again").await {
        assert!(
            owned(&pod.metadata),
            "{} is not the new job's",
            pod.name_any()
        );
    }
    let secret = wait_for("new token secret", Duration::from_secs(30), || async {
        let name = token_secret_name(&client, &namespace, "again").await.ok()?;
        let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt(&name)
            .await
            .ok()??;
        owned(&secret.metadata).then_some(secret)
    })
    .await;
    assert!(owned(&secret.metadata));
}

/// An elastic job on a node that fits only part of the gang runs with what did schedule.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn an_elastic_job_shrinks_to_what_fits() {
    let Scenario {
        cluster: _cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("elastic", "restricted").await;
    create_job(
        &client,
        &namespace,
        &job_with(
            "elastic",
            &on_dedicated_node(4, 7, ", minReplicas: 2"),
            "gang: {scheduleTimeoutSeconds: 3}",
        ),
    )
    .await;
    let job = wait_for(
        "running with 2 workers",
        Duration::from_secs(90),
        || async {
            let job = job_status(&client, &namespace, "elastic").await?;
            let workers = job.status.as_ref()?.workers.clone()?;
            (phase_name(&job).as_deref() == Some("Running") && workers.desired == 2).then_some(job)
        },
    )
    .await;
    assert_eq!(job.status.and_then(|s| s.ready).as_deref(), Some("2/2"));
    delete_namespace(&client, &namespace).await;
}

/// A ResourceQuota refuses the third pod: the job says so in a condition and an Event, and the
/// two created pods are not left waiting forever (the gang timeout releases them).
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_quota_that_refuses_a_pod_is_reported() {
    let Scenario {
        cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("quota", "restricted").await;
    cluster.kubectl_ok(
        &[
            "create",
            "quota",
            "two-pods",
            "--hard=pods=2",
            "-n",
            &namespace,
        ],
        None,
    );
    create_job(
        &client,
        &namespace,
        &job_with(
            "quota",
            "replicas: 3, resources: {requests: {cpu: '1'}}",
            "gang: {scheduleTimeoutSeconds: 10}",
        ),
    )
    .await;
    let job = wait_for("WorkersCreated=False", Duration::from_secs(60), || async {
        let job = job_status(&client, &namespace, "quota").await?;
        job.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "WorkersCreated" && c.status == "False")
            .cloned()
    })
    .await;
    assert_eq!(job.reason, "QuotaExceeded", "{job:?}");
    assert!(job.message.contains("exceeded quota"), "{job:?}");
    let events = cluster.kubectl_ok(&["get", "events", "-n", &namespace], None);
    assert!(events.contains("QuotaExceeded"), "{events}");
    let status = wait_for(
        "gang timeout despite the refusal",
        Duration::from_secs(60),
        || async {
            let job = job_status(&client, &namespace, "quota").await?;
            let status = job.status?;
            (status.restarts.as_ref()?.schedule_timeouts >= 1).then_some(status)
        },
    )
    .await;
    assert_ne!(
        serde_json::to_value(status.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .as_deref(),
        Some("Running")
    );
}

/// A worker whose image cannot be pulled is named by its reason while the gang waits, and fails
/// the job at the gang timeout (recreating the gang cannot fix an image). kwok runs no
/// containers: the pods are kept from it (annotation) and the test writes the kubelet's status.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_worker_that_cannot_pull_its_image_fails_the_job_with_the_reason() {
    let Scenario {
        cluster: _cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("stuck", "restricted").await;
    create_job(
        &client,
        &namespace,
        &job_with(
            "stuck",
            "replicas: 2, resources: {requests: {cpu: '1'}}, template: {annotations: {kwok.x-k8s.io/status: custom}}",
            "gang: {scheduleTimeoutSeconds: 15}",
        ),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    wait_for("both workers bound", Duration::from_secs(30), || async {
        let bound = job_pods(&client, &namespace, "stuck")
            .await
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        (bound == 2).then_some(())
    })
    .await;
    let now = jiff::Timestamp::now().to_string();
    let kubelet_status = |state: serde_json::Value, phase: &str| {
        serde_json::json!({"status": {
            "phase": phase,
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": [{"name": "trainer", "image": "ferrotrain-trainer:missing",
                "imageID": "", "ready": false, "restartCount": 0, "state": state}],
        }})
    };
    pods.patch_status(
        "stuck-worker-0-a1",
        &PatchParams::default(),
        &Patch::Strategic(&kubelet_status(
            serde_json::json!({"running": {"startedAt": now}}),
            "Running",
        )),
    )
    .await
    .expect("rank 0 runs");
    pods.patch_status(
        "stuck-worker-1-a1",
        &PatchParams::default(),
        &Patch::Strategic(&kubelet_status(
            serde_json::json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}),
            "Pending",
        )),
    )
    .await
    .expect("rank 1 cannot pull");
    let scheduled = wait_for(
        "Scheduled names the stuck worker",
        Duration::from_secs(30),
        || async {
            let job = job_status(&client, &namespace, "stuck").await?;
            job.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Scheduled" && c.reason == "ImagePullBackOff")
        },
    )
    .await;
    assert!(
        scheduled.message.contains("stuck-worker-1-a1"),
        "{scheduled:?}"
    );
    let job = wait_phase(&client, &namespace, "stuck", "Failed", 60).await;
    let failed = job
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .expect("Failed condition");
    assert_eq!(failed.reason, "ImagePullBackOff", "{failed:?}");
}
