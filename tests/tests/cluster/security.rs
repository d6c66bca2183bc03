//! A namespace is a team: a job never takes over, changes or deletes an object that another
//! owner holds under the name the job would use.

use super::*;
use k8s_openapi::api::core::v1::Service;

/// Another application's Service named like the job: the job waits naming it, changes nothing,
/// creates no worker, and proceeds once the name is free.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_job_named_like_another_service_waits_and_touches_nothing() {
    let Scenario {
        cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("conflict", "restricted").await;
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let theirs: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
    }))
    .expect("Service");
    let before = services
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the other application's Service");
    create_job(&client, &namespace, &job_manifest("web", 2, "")).await;
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let condition = wait_condition(&client, &namespace, "web", "NameConflict", 30, |c| {
        c.reason == "NameConflict"
    })
    .await;
    assert!(
        condition.message.contains("Service") && condition.message.contains("web"),
        "{condition:?}"
    );
    // A few reconciles later the Service is exactly what it was, and no worker exists.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = services
        .get("web")
        .await
        .expect("the Service is still there");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the Service was not written: {after:?}"
    );
    assert!(after.metadata.owner_references.is_none(), "{after:?}");
    assert!(job_pods(&client, &namespace, "web").await.is_empty());
    let events = cluster.events(&namespace, "NameConflict");
    assert!(
        events.contains("web"),
        "a Warning event names it:\n{events}"
    );
    // Deleting the job leaves the other application's Service alone.
    jobs.delete("web", &DeleteParams::foreground())
        .await
        .expect("delete job");
    wait_for("job gone", Duration::from_secs(30), || async {
        jobs.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    let still = services
        .get("web")
        .await
        .expect("the Service survives the job");
    assert_eq!(
        still.metadata.resource_version,
        before.metadata.resource_version
    );

    // Once the name is free, a job goes ahead.
    create_job(&client, &namespace, &job_manifest("web", 2, "")).await;
    wait_condition(&client, &namespace, "web", "NameConflict again", 30, |c| {
        c.reason == "NameConflict"
    })
    .await;
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete the other Service");
    wait_phase(&client, &namespace, "web", "Running", 90).await;
}

/// Each job gets a NetworkPolicy, named after it and controlled by it, that admits to its workers
/// only pods of the same job in the same namespace. A NetworkPolicy of that name held by another
/// owner is a name conflict like any other: the job waits, writes nothing, and goes ahead once
/// the name is free.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn each_job_admits_only_its_own_pods_to_its_workers() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let Scenario {
        cluster: _cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("netpol", "restricted").await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    let theirs: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "shared"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]},
    }))
    .expect("NetworkPolicy");
    let before = policies
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the other team's NetworkPolicy");
    create_job(&client, &namespace, &job_manifest("shared", 2, "")).await;
    create_job(&client, &namespace, &job_manifest("solo", 2, "")).await;
    wait_phase(&client, &namespace, "solo", "Running", 90).await;

    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let solo = jobs.get("solo").await.expect("job");
    let policy =
        serde_json::to_value(policies.get("solo").await.expect("the job's policy")).expect("json");
    let same_job = serde_json::json!({"matchLabels": {"ferrotrain.io/job": "solo"}});
    assert_eq!(policy["spec"]["podSelector"], same_job);
    assert_eq!(
        policy["spec"]["ingress"],
        serde_json::json!([{"from": [{"podSelector": same_job}]}]),
        "only the job's own pods, and no namespace selector"
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let owner = &policy["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["uid"].as_str(), owner["controller"].as_bool()),
        (solo.metadata.uid.as_deref(), Some(true))
    );
    // The workers carry the label the policy selects.
    let pods = job_pods(&client, &namespace, "solo").await;
    assert!(!pods.is_empty());
    assert!(
        pods.iter()
            .all(|p| p.labels().get("ferrotrain.io/job") == Some(&"solo".to_string()))
    );

    let condition = wait_condition(&client, &namespace, "shared", "NameConflict", 30, |c| {
        c.reason == "NameConflict"
    })
    .await;
    assert!(condition.message.contains("NetworkPolicy"), "{condition:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = policies.get("shared").await.expect("still there");
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert!(job_pods(&client, &namespace, "shared").await.is_empty());
    policies
        .delete("shared", &DeleteParams::default())
        .await
        .expect("delete the other policy");
    wait_phase(&client, &namespace, "shared", "Running", 90).await;
    let ours = policies.get("shared").await.expect("the job's own policy");
    assert!(ours.metadata.owner_references.is_some());
}

/// A TrainingJob that someone else created under a trial's name, with the sweep's label, is not
/// the sweep's: the sweep neither reads it as a trial nor changes it, says so in a Warning
/// event, and its trial waits for the name.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_sweep_adopts_no_job_it_did_not_create() {
    use ferrotrain_crds::sweep::{TrainingSweep, TrialState};
    let Scenario {
        cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("adopt", "restricted").await;
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let mut planted = job_manifest("hijack-000", 1, "");
    planted["metadata"]["labels"] = serde_json::json!({"ferrotrain.io/sweep": "hijack"});
    planted["spec"]["runPolicy"] = serde_json::json!({"suspend": true});
    let planted: TrainingJob = serde_json::from_value(planted).expect("job");
    let before = jobs
        .create(&PostParams::default(), &planted)
        .await
        .expect("create the planted job");

    let manifest = asha_sweep("hijack", &namespace, 2);
    let sweeps: Api<TrainingSweep> = Api::namespaced(client.clone(), &namespace);
    let sweep: TrainingSweep = serde_json::from_value(manifest).expect("sweep");
    sweeps
        .create(&PostParams::default(), &sweep)
        .await
        .expect("create sweep");
    // The sweep goes on with its other trial, which it owns.
    let second = wait_for("the second trial", Duration::from_secs(60), || async {
        jobs.get_opt("hijack-001").await.ok()?
    })
    .await;
    assert_eq!(
        second.owner_references().first().map(|o| o.kind.as_str()),
        Some("TrainingSweep")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = jobs.get("hijack-000").await.expect("the planted job");
    // Its own controller writes its status; its spec and owners are what its author made.
    assert_eq!(
        (
            after.metadata.generation,
            after.metadata.owner_references.clone()
        ),
        (before.metadata.generation, None),
        "the sweep changed a job it does not own: {:?}",
        after.spec.run_policy
    );
    let status = sweeps
        .get("hijack")
        .await
        .expect("sweep")
        .status
        .unwrap_or_default();
    let trial = status
        .trials
        .iter()
        .find(|t| t.name == "hijack-000")
        .expect("the trial is listed");
    assert_eq!(trial.state, Some(TrialState::Pending), "{trial:?}");
    wait_for("the conflict event", Duration::from_secs(60), || async {
        let events = cluster.events(&namespace, "TrialNameConflict");
        events.contains("hijack-000").then_some(())
    })
    .await;
}

/// Every attempt has its own progress token and gang key: after a restart the old token is
/// refused, the old Secret is gone, and the new workers mount the new one.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn each_attempt_has_its_own_token_and_gang_key() {
    let Scenario {
        cluster: _cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("rotate", "restricted").await;
    create_job(&client, &namespace, &job_manifest("rotate", 2, "")).await;
    wait_phase(&client, &namespace, "rotate", "Running", 60).await;
    let first_secret = token_secret_name(&client, &namespace, "rotate")
        .await
        .expect("secret of attempt 1");
    let first = job_token(&client, &namespace, "rotate")
        .await
        .expect("token of attempt 1");
    let report = |attempt: u32, step: u64| {
        serde_json::json!({"attempt": attempt, "worldSize": 2, "step": step, "totalSteps": 1000, "epoch": 0})
            .to_string()
    };
    let address = &installed.operator.address;
    assert_eq!(
        post_progress(address, &namespace, "rotate", &first, &report(1, 10)),
        204
    );
    terminate_container(&client, &namespace, "rotate-worker-1-a1", 1).await;
    wait_attempt_running(&client, &namespace, "rotate", 2, 60).await;
    let second_secret = token_secret_name(&client, &namespace, "rotate")
        .await
        .expect("secret of attempt 2");
    assert_ne!(first_secret, second_secret);
    let second = job_token(&client, &namespace, "rotate")
        .await
        .expect("token of attempt 2");
    assert_ne!(first, second);
    let code = wait_for(
        "the new token accepted",
        Duration::from_secs(20),
        || async {
            let code = post_progress(address, &namespace, "rotate", &second, &report(2, 10));
            (code == 204).then_some(code)
        },
    )
    .await;
    assert_eq!(code, 204);
    assert_eq!(
        post_progress(address, &namespace, "rotate", &first, &report(2, 20)),
        401,
        "the token of attempt 1 is refused"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        "the old Secret deleted",
        Duration::from_secs(20),
        || async {
            secrets
                .get_opt(&first_secret)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    for pod in job_pods(&client, &namespace, "rotate").await {
        let mounted = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .find(|v| v.name == "progress-token")
            .and_then(|v| v.secret.as_ref()?.secret_name.clone());
        assert_eq!(mounted.as_deref(), Some(second_secret.as_str()));
    }
    assert_no_rbac_refusals(&installed);
}

/// The progress endpoint over TLS: the operator serves its certificate, passes the CA bundle to
/// the workers, and real trainer processes report through it; plain HTTP and a client that
/// trusts another CA get nowhere.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn workers_report_progress_over_tls() {
    use ferrotrain_tests::credentials::tls_files;
    use ferrotrain_tests::kubelet::{Kubelet, KubeletConfig};
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let namespace = test_namespace(&client, "tls", "restricted").await;
    let (cert, key, ca) = tls_files(&cluster.dir.join(&namespace).join("tls"));
    let (_, _, other_ca) = tls_files(&cluster.dir.join(&namespace).join("other-ca"));
    let path = |p: &std::path::Path| p.display().to_string();
    let (cert, key, ca_arg) = (path(&cert), path(&key), path(&ca));
    let installed = install_operator(
        &cluster,
        &[],
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-file",
            &ca_arg,
        ],
    )
    .await;
    let port = installed
        .operator
        .address
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    ferrotrain::tls::install_crypto_provider();
    let trusting = |pem: &std::path::Path| {
        let roots =
            reqwest::Certificate::from_pem_bundle(&std::fs::read(pem).expect("CA")).expect("PEM");
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only(roots)
            .build()
            .expect("client")
    };
    let healthz = format!("https://localhost:{port}/healthz");
    let ok = wait_for("the TLS endpoint", Duration::from_secs(30), || async {
        trusting(&ca)
            .get(&healthz)
            .send()
            .await
            .ok()
            .map(|r| r.status())
    })
    .await;
    assert_eq!(ok.as_u16(), 200);
    assert!(
        trusting(&other_ca).get(&healthz).send().await.is_err(),
        "a client that trusts another CA must not connect"
    );
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let refused = plain
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        refused.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP is not served: {refused:?}"
    );

    let mut manifest = job_with("tls", "replicas: 2", "gang: {scheduleTimeoutSeconds: 60}");
    manifest["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("checkpoint");
    manifest["spec"]["trainer"]["maxSteps"] = serde_json::json!(300);
    create_job(&client, &namespace, &manifest).await;
    let kubelet = Kubelet::start(
        &cluster.kubeconfig(),
        &namespace,
        "tls",
        KubeletConfig {
            binary: ferrotrain_tests::cluster::ferrotrain_binary(),
            data_dir: workspace_root().join("data"),
            work_dir: cluster.dir.join(&namespace),
            threads: 1,
        },
    );
    let job = wait_phase(&client, &namespace, "tls", "Succeeded", 300).await;
    drop(kubelet);
    let pods = job_pods(&client, &namespace, "tls").await;
    let env: Vec<String> = pods
        .iter()
        .flat_map(|p| {
            p.spec
                .iter()
                .flat_map(|s| s.containers[0].env.iter().flatten())
        })
        .filter(|v| v.name == "FERROTRAIN_PROGRESS_CA")
        .filter_map(|v| v.value.clone())
        .collect();
    let ca_pem = std::fs::read_to_string(&ca).expect("CA");
    assert!(
        !env.is_empty() && env.iter().all(|v| *v == ca_pem),
        "the workers get the CA bundle"
    );
    // The reports went through TLS: the final one is in status.
    let progress = wait_for("the final progress", Duration::from_secs(30), || async {
        let job = job_status(&client, &namespace, "tls").await?;
        let progress = job.status?.progress?;
        (progress.step == 300).then_some(progress)
    })
    .await;
    assert_eq!(progress.total_steps, Some(300), "{progress:?}");
    drop(job);
    // A second replica forwards what it receives to the leader over TLS, verified with the same
    // CA: the leader's answer to a wrong token comes back through it (a follower that cannot
    // reach the leader answers 502 or 503, never 401).
    let kubeconfig = cluster
        .service_account_kubeconfig(&installed.namespace, "ferrotrain")
        .await;
    let follower = Operator::start(
        &kubeconfig,
        &installed.namespace,
        "operator-1",
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-file",
            &ca_arg,
        ],
    );
    let follower_port = follower
        .address
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let url = format!(
        "https://localhost:{follower_port}/v1/namespaces/{namespace}/trainingjobs/tls/progress"
    );
    let code = wait_for("the follower forwards", Duration::from_secs(30), || async {
        let response = trusting(&ca)
            .post(&url)
            .bearer_auth("not-the-token")
            .body(r#"{"attempt":1,"worldSize":2,"step":1,"totalSteps":300,"epoch":0}"#)
            .send()
            .await
            .ok()?;
        (response.status().as_u16() == 401).then_some(401)
    })
    .await;
    assert_eq!(code, 401);
    assert_no_rbac_refusals(&installed);
}
