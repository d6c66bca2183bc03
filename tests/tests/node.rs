//! Ferrotrain on a real node: the images of scripts/images.sh run as containers under containerd
//! and runc on the kubelet of scripts/node.sh; the operator is installed with `helm install`;
//! checkpoints go to the S3 server on the node address; DNS, Services, Secrets, signals, memory
//! limits and logs are the real ones.
//! Run: `scripts/images.sh && eval "$(FERROTRAIN_CLUSTER_ADDRESS=10.250.0.1 scripts/cluster.sh start)"
//! && scripts/node.sh start && eval "$(FERROTRAIN_S3_ADDRESS=10.250.0.1 scripts/s3-server.sh start)"
//! && cargo test -p ferrotrain-tests --test node -- --ignored --test-threads=1`.

use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use ferrotrain_crds::TrainingJob;
use ferrotrain_tests::cluster::{Cluster, install_crd, job_pods, test_namespace, tool, wait_for};
use ferrotrain_tests::workspace_root;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const NODE: &str = "ferrotrain-node";
const OPERATOR_NAMESPACE: &str = "ferrotrain-system";
/// Not the cluster suites' release name: their cluster-scoped RBAC objects outlive them.
const RELEASE: &str = "ferrotrain-node";
const S3_SECRET: &str = "checkpoint-store";

static OPERATOR: Once = Once::new();

/// `helm upgrade --install` of the chart with its default images, on the real node (the only
/// node that has the images), in a namespace that enforces the restricted Pod Security level.
fn install_operator_with_helm(cluster: &Cluster) {
    OPERATOR.call_once(|| {
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": OPERATOR_NAMESPACE,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                       "pod-security.kubernetes.io/enforce-version": "latest"}}});
        cluster.apply(&namespace.to_string());
        let started = Instant::now();
        let out = Command::new(tool("helm4"))
            .args(["upgrade", "--install", RELEASE, "charts/ferrotrain"])
            .args([
                "--namespace",
                OPERATOR_NAMESPACE,
                "--wait",
                "--timeout",
                "180s",
            ])
            .args([
                "--set-string",
                "nodeSelector.ferrotrain\\.io/real-node=true",
            ])
            .args(["--set", "tolerations[0].key=ferrotrain.io/real-node"])
            .args(["--set", "tolerations[0].operator=Exists"])
            .arg(format!("--kubeconfig={}", cluster.kubeconfig().display()))
            .current_dir(workspace_root())
            .output()
            .expect("helm");
        assert!(
            out.status.success(),
            "helm install: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "figure: helm install --wait of the operator on the real node took {:.1}s",
            started.elapsed().as_secs_f64()
        );
    });
}

/// The S3 server of scripts/s3-server.sh as the pods reach it (it listens on the node address).
fn s3() -> (String, String, String, String) {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    (
        var("FERROTRAIN_TEST_S3_ENDPOINT"),
        var("FERROTRAIN_TEST_S3_BUCKET"),
        var("AWS_ACCESS_KEY_ID"),
        var("AWS_SECRET_ACCESS_KEY"),
    )
}

/// A fresh restricted namespace holding the S3 credentials as a Secret, with the operator up.
async fn setup(prefix: &str) -> (Cluster, Client, String) {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    install_operator_with_helm(&cluster);
    let namespace = test_namespace(&client, prefix, "restricted").await;
    let (_, _, key, secret) = s3();
    let credentials: Secret = serde_json::from_value(json!({
        "metadata": {"name": S3_SECRET},
        "stringData": {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret},
    }))
    .expect("Secret");
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &credentials)
        .await
        .expect("create Secret");
    (cluster, client, namespace)
}

/// examples/mnist-k8s.yaml as a user would adapt it to this cluster: the namespace, the S3
/// endpoint and Secret, requests that two workers fit on one 2-CPU node, the real node's
/// toleration; `epochs` and `every_steps` set how long it trains and how often it checkpoints.
fn mnist_job(namespace: &str, name: &str, epochs: u32, every_steps: u32) -> Value {
    let text = std::fs::read_to_string(workspace_root().join("examples/mnist-k8s.yaml"))
        .expect("examples/mnist-k8s.yaml");
    let mut job: Value = serde_yaml::from_str(&text).expect("example YAML");
    let (endpoint, bucket, _, _) = s3();
    job["metadata"] = json!({"name": name, "namespace": namespace});
    job["spec"]["workers"]["resources"] = json!({
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    });
    job["spec"]["workers"]["template"] = json!({
        "nodeSelector": {"ferrotrain.io/real-node": "true"},
        "tolerations": [{"key": "ferrotrain.io/real-node", "operator": "Exists"}],
    });
    job["spec"]["trainer"]["epochs"] = json!(epochs);
    job["spec"]["checkpoint"]["uri"] = json!(format!("s3://{bucket}/{namespace}/{name}"));
    job["spec"]["checkpoint"]["endpoint"] = json!(endpoint);
    job["spec"]["checkpoint"]["secretRef"] = json!({"name": S3_SECRET});
    job["spec"]["checkpoint"]["everySteps"] = json!(every_steps);
    job
}

async fn create(client: &Client, job: &Value) -> Instant {
    let namespace = job["metadata"]["namespace"].as_str().expect("namespace");
    let job: TrainingJob = serde_json::from_value(job.clone()).expect("TrainingJob");
    Api::<TrainingJob>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &job)
        .await
        .expect("create TrainingJob");
    Instant::now()
}

/// The job's status as JSON (null until the operator writes one).
async fn status(client: &Client, namespace: &str, name: &str) -> Value {
    Api::<TrainingJob>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .ok()
        .and_then(|job| job.status)
        .map(|s| serde_json::to_value(s).expect("status JSON"))
        .unwrap_or(Value::Null)
}

/// Waits until `check` accepts the job's status; panics early, with the status, when the job
/// fails and `check` did not expect that.
async fn wait_status(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    seconds: u64,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, Duration::from_secs(seconds), || async {
        let status = status(client, namespace, name).await;
        if check(&status) {
            return Some(status);
        }
        assert!(
            status["phase"] != "Failed",
            "{namespace}/{name} failed while waiting for {what}: {status:#}"
        );
        None
    })
    .await
}

fn step_of(status: &Value) -> i64 {
    status["progress"]["step"].as_i64().unwrap_or(0)
}

fn attempt_of(status: &Value) -> i64 {
    status["attempt"].as_i64().unwrap_or(0)
}

fn logs(cluster: &Cluster, namespace: &str, pod: &str) -> String {
    cluster.kubectl_ok(&["logs", "-n", namespace, pod], None)
}

/// The trainer's `completed` event from a worker's log, read with `kubectl logs`.
fn completed_event(cluster: &Cluster, namespace: &str, pod: &str) -> Value {
    let log = logs(cluster, namespace, pod);
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["event"] == "completed")
        .unwrap_or_else(|| {
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            panic!("no completed event in the log of {pod}; it ends with {tail:#?}")
        })
}

/// The containerd ID of the pod's trainer container.
async fn container_id(client: &Client, namespace: &str, pod: &str) -> String {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(pod)
        .await
        .expect("worker pod");
    let id = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.container_id)
        .expect("a started container");
    id.trim_start_matches("containerd://").to_string()
}

/// Kills a container's process through containerd, as a crash or the kernel would.
fn kill_container(id: &str) {
    let socket = std::env::var("FERROTRAIN_NODE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".tools/node"))
        .join("containerd.sock");
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args(["-n", "k8s.io", "tasks", "kill", "--signal", "SIGKILL", id])
        .output()
        .expect("ctr");
    assert!(
        out.status.success(),
        "ctr tasks kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
#[ignore = "needs the real node of scripts/node.sh and the images of scripts/images.sh"]
async fn the_chart_runs_the_operator_image_on_the_node_under_restricted_pod_security() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    install_operator_with_helm(&cluster);
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=ferrotrain"))
        .await
        .expect("operator pods")
        .items;
    assert_eq!(pods.len(), 2, "the chart's two replicas");
    for pod in &pods {
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some(NODE), "{}", pod.name_any());
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("ferrotrain:0.1.0")
        );
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|c| c.iter().all(|c| c.ready));
        assert!(ready, "{} passes its readiness probe", pod.name_any());
    }
    // One replica leads, and it is one of these pods.
    let lease = wait_for("leader lease", Duration::from_secs(60), || async {
        let lease = Api::<Lease>::namespaced(client.clone(), OPERATOR_NAMESPACE)
            .get(RELEASE)
            .await
            .ok()?;
        lease.spec?.holder_identity
    })
    .await;
    assert!(
        pods.iter().any(|p| p.name_any() == lease),
        "lease holder {lease} is an operator pod"
    );
    // The leader's log, read through the kubelet, says it leads.
    let log = logs(&cluster, OPERATOR_NAMESPACE, &lease);
    assert!(log.contains("leadership changed"), "{log}");
}

#[tokio::test]
#[ignore = "needs the real node of scripts/node.sh and the images of scripts/images.sh"]
async fn mnist_trains_in_containers_checkpoints_to_s3_and_reports_progress() {
    let (cluster, client, namespace) = setup("node-mnist").await;
    let applied = create(&client, &mnist_job(&namespace, "mnist", 3, 500)).await;
    let stepping = wait_status(&client, &namespace, "mnist", "workers stepping", 180, |s| {
        step_of(s) > 0
    })
    .await;
    println!(
        "figure: kubectl apply to every worker stepping (2 containers): {:.1}s (first report at step {})",
        applied.elapsed().as_secs_f64(),
        step_of(&stepping)
    );
    // The final report reaches the status within one progress write (5 s) of the phase.
    let done = wait_status(
        &client,
        &namespace,
        "mnist",
        "Succeeded, final metrics",
        300,
        |s| s["phase"] == "Succeeded" && s["progress"]["percent"].as_f64() == Some(100.0),
    )
    .await;
    let accuracy = done["progress"]["metrics"]["valAccuracy"]
        .as_f64()
        .expect("valAccuracy in status");
    assert!(accuracy >= 0.97, "accuracy {accuracy}: {done:#}");
    assert!(
        done["checkpoint"]["uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("s3://")),
        "{done:#}"
    );
    let table = cluster.kubectl_ok(&["get", "tj", "-n", &namespace], None);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for (column, expected) in [("PHASE", "Succeeded"), ("PROGRESS", "100"), ("ETA", "0s")] {
        let at = header.iter().position(|h| *h == column).expect(column);
        assert_eq!(row.get(at), Some(&expected), "{table}");
    }
    let loss = header.iter().position(|h| *h == "LOSS").expect("LOSS");
    assert!(
        row.get(loss).and_then(|l| l.parse::<f64>().ok()).is_some(),
        "{table}"
    );
    let log = logs(&cluster, &namespace, "mnist-worker-0-a1");
    assert!(log.contains("\"event\":\"completed\""), "{log}");
}

#[tokio::test]
#[ignore = "needs the real node of scripts/node.sh and the images of scripts/images.sh"]
async fn a_killed_container_restarts_the_gang_which_resumes_from_s3() {
    let (cluster, client, namespace) = setup("node-kill").await;
    create(&client, &mnist_job(&namespace, "kill", 40, 500)).await;
    let checkpointed = wait_status(&client, &namespace, "kill", "first checkpoint", 300, |s| {
        s["checkpoint"]["step"]
            .as_i64()
            .is_some_and(|step| step >= 500)
    })
    .await;
    let id = container_id(&client, &namespace, "kill-worker-1-a1").await;
    kill_container(&id);
    let killed = Instant::now();
    let resumed = wait_status(
        &client,
        &namespace,
        "kill",
        "attempt 2 stepping",
        300,
        |s| attempt_of(s) >= 2 && s["phase"] == "Running" && step_of(s) > 0,
    )
    .await;
    println!(
        "figure: killed container to every rank stepping again: {:.1}s (attempt {}, step {}, checkpoint {})",
        killed.elapsed().as_secs_f64(),
        attempt_of(&resumed),
        step_of(&resumed),
        checkpointed["checkpoint"]["step"]
    );
    let done = wait_status(&client, &namespace, "kill", "Succeeded", 600, |s| {
        s["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(done["restarts"]["app"], 0, "{done:#}");
    assert!(done["restarts"]["infra"].as_i64() >= Some(1), "{done:#}");
    // The kubelet reports a SIGKILL from outside as exit 137, reason Error: not an OOM kill.
    let events = cluster.events(&namespace, "Restarting");
    assert!(
        events.contains("KilledBySignal9") && !events.contains("OOMKilled"),
        "{events}"
    );
    let completed = completed_event(
        &cluster,
        &namespace,
        &format!("kill-worker-0-a{}", attempt_of(&done)),
    );
    assert!(
        completed["resumedFrom"].as_i64() >= Some(500),
        "the second attempt resumed from a checkpoint in S3: {completed}"
    );
}

#[tokio::test]
#[ignore = "needs the real node of scripts/node.sh and the images of scripts/images.sh"]
async fn a_deleted_pod_checkpoints_on_sigterm_and_resumes_uncharged() {
    let (cluster, client, namespace) = setup("node-delete").await;
    // No periodic checkpoint before the end: only the one written on SIGTERM can be resumed.
    create(&client, &mnist_job(&namespace, "drain", 40, 1_000_000)).await;
    wait_status(&client, &namespace, "drain", "stepping", 300, |s| {
        step_of(s) >= 300
    })
    .await;
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .delete("drain-worker-1-a1", &DeleteParams::default())
        .await
        .expect("delete pod");
    let done = wait_status(&client, &namespace, "drain", "Succeeded", 600, |s| {
        s["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(
        done["restarts"]["app"], 0,
        "not charged to the application: {done:#}"
    );
    assert!(attempt_of(&done) >= 2, "{done:#}");
    // Periodic checkpoints are off: the only checkpoint before the end is the one written on
    // SIGTERM, so a resume from a step between 0 and the end resumed from it.
    let completed = completed_event(
        &cluster,
        &namespace,
        &format!("drain-worker-0-a{}", attempt_of(&done)),
    );
    let total = completed["step"].as_i64().unwrap_or(0);
    assert!(
        completed["resumedFrom"]
            .as_i64()
            .is_some_and(|step| step >= 300 && step < total),
        "attempt 2 resumed from the emergency checkpoint: {completed}"
    );
}

#[tokio::test]
#[ignore = "needs the real node of scripts/node.sh and the images of scripts/images.sh"]
async fn a_worker_over_its_memory_limit_is_oom_killed_and_read_as_infrastructure() {
    let (_cluster, client, namespace) = setup("node-oom").await;
    let mut job = mnist_job(&namespace, "oom", 3, 500);
    job["spec"]["workers"]["resources"]["limits"]["memory"] = json!("48Mi");
    job["spec"]["workers"]["resources"]["requests"]["memory"] = json!("48Mi");
    job["spec"]["runPolicy"]["maxInfraRestarts"] = json!(0);
    create(&client, &job).await;
    let failed = wait_status(&client, &namespace, "oom", "Failed", 300, |s| {
        s["phase"] == "Failed"
    })
    .await;
    let text = failed.to_string();
    assert!(text.contains("InfraRestartBudgetExhausted"), "{failed:#}");
    assert!(text.contains("OOMKilled"), "{failed:#}");
    // The kubelet's own word for it, not the operator's reading of an exit code.
    let reasons: Vec<String> = job_pods(&client, &namespace, "oom")
        .await
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.clone())
        .flatten()
        .filter_map(|c| c.state?.terminated?.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "OOMKilled"), "{reasons:?}");
}

#[tokio::test]
#[ignore = "needs the real node of scripts/node.sh and the images of scripts/images.sh"]
async fn an_image_that_does_not_exist_fails_the_job_naming_the_pull_error() {
    let (_cluster, client, namespace) = setup("node-image").await;
    let mut job = mnist_job(&namespace, "noimage", 1, 500);
    job["spec"]["workers"]["image"] = json!("ferrotrain-trainer:does-not-exist");
    job["spec"]["runPolicy"]["gang"]["scheduleTimeoutSeconds"] = json!(20);
    create(&client, &job).await;
    let failed = wait_status(&client, &namespace, "noimage", "Failed", 240, |s| {
        s["phase"] == "Failed"
    })
    .await;
    let reason = failed["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Failed")
        .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    assert!(
        reason == "ImagePullBackOff" || reason == "ErrImagePull",
        "the job fails naming the pull error: {failed:#}"
    );
}
