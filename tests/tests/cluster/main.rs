//! Ferrotrain against a real control plane (etcd, kube-apiserver with RBAC and Pod Security,
//! kube-scheduler, kube-controller-manager, kwok nodes) started by `scripts/cluster.sh start`.
//! Run: `eval "$(scripts/cluster.sh start)" && cargo test -p ferrotrain-tests --test cluster -- --ignored`.

use std::collections::BTreeMap;
use std::time::Duration;

use ferrotrain::manifest::{Admission, Layer, parse_documents};
use ferrotrain_crds::TrainingJob;
use ferrotrain_tests::cluster::{
    Cluster, Installed, Operator, dedicated_node, delete_namespace, hold_pod, install_crd,
    install_operator, job_pods, lease_holder, release_pod, render_chart, send_signal,
    terminate_container, terminate_container_saying, test_namespace, wait_for,
};
use ferrotrain_tests::credentials::{job_token, post_progress, token_secret_name};
use ferrotrain_tests::workspace_root;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

mod access;
mod api;
mod failures;
mod lifecycle;
mod operator;
mod queues;
mod security;
mod training;

/// A small valid job: `replicas` workers of one CPU each, checkpoints to a bucket that the
/// simulated workers never touch; `run_policy` adds fields to spec.runPolicy.
fn job_manifest(name: &str, replicas: u32, run_policy: &str) -> serde_json::Value {
    job_with(
        name,
        &format!(
            "replicas: {replicas}, resources: {{requests: {{cpu: '1', memory: 1Gi}}, limits: {{memory: 1Gi}}}}"
        ),
        &format!("gang: {{scheduleTimeoutSeconds: 60}}{run_policy}"),
    )
}

/// A job with `workers` and `run_policy` as YAML flow-mapping bodies.
fn job_with(name: &str, workers: &str, run_policy: &str) -> serde_json::Value {
    let yaml = format!(
        r#"
apiVersion: ferrotrain.io/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  workers: {{{workers}}}
  trainer:
    model: {{type: mlp}}
    dataset: {{type: mnist}}
    batchSize: 64
    maxSteps: 1000
  checkpoint: {{uri: "s3://ferrotrain/{name}", everySteps: 100}}
  runPolicy: {{{run_policy}}}
"#
    );
    serde_yaml::from_str(&yaml).expect("job manifest")
}

/// Workers pinned to the dedicated test node, each asking for `cpu` of its 16 CPUs.
fn on_dedicated_node(replicas: u32, cpu: u32, extra: &str) -> String {
    format!(
        "replicas: {replicas}{extra}, resources: {{requests: {{cpu: '{cpu}', memory: 1Gi}}, limits: {{memory: 1Gi}}}}, \
         template: {{nodeSelector: {{ferrotrain.io/dedicated: 'true'}}, \
         tolerations: [{{key: ferrotrain.io/dedicated, operator: Equal, value: 'true', effect: NoSchedule}}]}}"
    )
}

async fn create_job(client: &Client, namespace: &str, manifest: &serde_json::Value) -> TrainingJob {
    let job: TrainingJob = serde_json::from_value(manifest.clone()).expect("TrainingJob");
    Api::<TrainingJob>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &job)
        .await
        .expect("create TrainingJob")
}

async fn job_status(client: &Client, namespace: &str, name: &str) -> Option<TrainingJob> {
    Api::<TrainingJob>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

fn phase_name(job: &TrainingJob) -> Option<String> {
    let phase = job.status.as_ref()?.phase?;
    serde_json::to_value(phase)
        .ok()?
        .as_str()
        .map(str::to_string)
}

/// Waits until the job's phase is `phase`; panics early on an unexpected Failed.
async fn wait_phase(
    client: &Client,
    namespace: &str,
    name: &str,
    phase: &str,
    seconds: u64,
) -> TrainingJob {
    wait_for(
        &format!("{namespace}/{name} phase {phase}"),
        Duration::from_secs(seconds),
        || async {
            let job = job_status(client, namespace, name).await?;
            let current = phase_name(&job)?;
            if current == "Failed" && phase != "Failed" {
                panic!(
                    "{name} failed: {:?}",
                    job.status.as_ref().and_then(|s| s.message.clone())
                );
            }
            (current == phase).then_some(job)
        },
    )
    .await
}

/// Pods of the job's current `attempt` that are running (kwok marks bound pods Running).
async fn running_pods(client: &Client, namespace: &str, job: &str, attempt: u32) -> Vec<Pod> {
    job_pods(client, namespace, job)
        .await
        .into_iter()
        .filter(|p| {
            p.labels().get("ferrotrain.io/attempt") == Some(&attempt.to_string())
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect()
}

/// A scenario's setup: the chart's CRD, the operator running with the chart's RBAC, and a fresh
/// namespace (Pod Security level `enforce`) for the job.
struct Scenario {
    cluster: Cluster,
    client: Client,
    installed: Installed,
    namespace: String,
}

impl Scenario {
    async fn start(prefix: &str, enforce: &str) -> Self {
        let cluster = Cluster::from_env();
        let client = cluster.admin().await;
        install_crd(&client).await;
        let installed = install_operator(&cluster, &[], &[]).await;
        let namespace = test_namespace(&client, prefix, enforce).await;
        Self {
            cluster,
            client,
            installed,
            namespace,
        }
    }
}

async fn restarts_of(
    client: &Client,
    namespace: &str,
    name: &str,
) -> ferrotrain_crds::RestartCounts {
    job_status(client, namespace, name)
        .await
        .and_then(|j| j.status)
        .and_then(|s| s.restarts)
        .unwrap_or_default()
}

/// examples/sweep-asha.yaml as `name` in `namespace`, with at most `max_trials` trials.
fn asha_sweep(name: &str, namespace: &str, max_trials: u32) -> serde_json::Value {
    let text = std::fs::read_to_string(workspace_root().join("examples/sweep-asha.yaml"))
        .expect("example");
    let mut manifest: serde_json::Value = serde_yaml::from_str(&text).expect("example YAML");
    manifest["metadata"] = serde_json::json!({"name": name, "namespace": namespace});
    manifest["spec"]["maxTrials"] = serde_json::json!(max_trials);
    manifest
}

/// Waits up to `seconds` for a condition of the job that `matches` (described by `what`), and
/// returns it.
async fn wait_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    seconds: u64,
    matches: impl Fn(&Condition) -> bool,
) -> Condition {
    let matches = &matches;
    wait_for(
        &format!("{namespace}/{name}: {what}"),
        Duration::from_secs(seconds),
        || async move {
            let job = job_status(client, namespace, name).await?;
            job.status?.conditions.into_iter().find(|c| matches(c))
        },
    )
    .await
}

/// Waits for attempt `attempt` of the job to be Running.
async fn wait_attempt_running(
    client: &Client,
    namespace: &str,
    name: &str,
    attempt: i32,
    seconds: u64,
) {
    wait_for(
        &format!("{name}: attempt {attempt} Running"),
        Duration::from_secs(seconds),
        || async {
            let job = job_status(client, namespace, name).await?;
            (job.status.as_ref()?.attempt == Some(attempt)
                && phase_name(&job).as_deref() == Some("Running"))
            .then_some(())
        },
    )
    .await;
}

/// A variable the S3 server of scripts/s3-server.sh exported.
fn s3_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} unset: run `eval \"$(scripts/s3-server.sh start)\"` first")
    })
}

/// examples/mnist-k8s.yaml as job `name` in `namespace`: checkpoints in the local S3 server, its
/// credentials in a Secret `s3-credentials` (created here), `epochs` long. Its pods run as real
/// trainer processes once a [`ferrotrain_tests::kubelet::Kubelet`] runs for the job.
async fn real_mnist_job(
    client: &Client,
    namespace: &str,
    name: &str,
    epochs: u32,
) -> serde_json::Value {
    let credentials: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s3-credentials"},
        "stringData": {
            "AWS_ACCESS_KEY_ID": s3_env("AWS_ACCESS_KEY_ID"),
            "AWS_SECRET_ACCESS_KEY": s3_env("AWS_SECRET_ACCESS_KEY"),
        },
    }))
    .expect("secret");
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    if secrets
        .get_opt("s3-credentials")
        .await
        .ok()
        .flatten()
        .is_none()
    {
        secrets
            .create(&PostParams::default(), &credentials)
            .await
            .expect("credentials");
    }
    let text =
        std::fs::read_to_string(workspace_root().join("examples/mnist-k8s.yaml")).expect("example");
    let mut manifest: serde_json::Value = serde_yaml::from_str(&text).expect("example YAML");
    manifest["metadata"]["name"] = serde_json::json!(name);
    manifest["metadata"]["namespace"] = serde_json::json!(namespace);
    let bucket = s3_env("FERROTRAIN_TEST_S3_BUCKET");
    manifest["spec"]["checkpoint"]["uri"] =
        serde_json::json!(format!("s3://{bucket}/{namespace}/{name}"));
    manifest["spec"]["checkpoint"]["endpoint"] =
        serde_json::json!(s3_env("FERROTRAIN_TEST_S3_ENDPOINT"));
    manifest["spec"]["checkpoint"]["secretRef"]["name"] = serde_json::json!("s3-credentials");
    manifest["spec"]["trainer"]["epochs"] = serde_json::json!(epochs);
    manifest
}

/// A kubelet that runs the pods of job `name` as real trainer processes, one compute thread
/// each, with their files under the cluster's directory.
fn real_kubelet(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> ferrotrain_tests::kubelet::Kubelet {
    ferrotrain_tests::kubelet::Kubelet::start(
        &cluster.kubeconfig(),
        namespace,
        name,
        ferrotrain_tests::kubelet::KubeletConfig {
            binary: ferrotrain_tests::cluster::ferrotrain_binary(),
            data_dir: workspace_root().join("data"),
            work_dir: cluster.dir.join(namespace),
            threads: 1,
        },
    )
}

/// The `resumedFrom` of the trainers that completed under `dir` (their worker logs), highest
/// first found.
fn resumed_from(dir: &std::path::Path) -> Option<i64> {
    walk(dir)
        .into_iter()
        .filter(|p| p.ends_with("worker.log"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|log| {
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["event"] == "completed")
                .filter_map(|v| v["resumedFrom"].as_i64())
                .collect::<Vec<_>>()
        })
        .max()
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The operator, installed with the chart's RBAC, was never refused a call for lack of rights.
fn assert_no_rbac_refusals(installed: &Installed) {
    let refused = installed.operator.forbidden();
    assert!(
        refused.is_empty(),
        "403s with the chart's RBAC: {refused:#?}"
    );
}
