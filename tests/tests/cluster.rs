//! Ferrotrain against a real control plane (etcd, kube-apiserver with RBAC and Pod Security,
//! kube-scheduler, kube-controller-manager, kwok nodes) started by `scripts/cluster.sh start`.
//! Run: `eval "$(scripts/cluster.sh start)" && cargo test -p ferrotrain-tests --test cluster -- --ignored`.

use std::collections::BTreeMap;
use std::time::Duration;

use ferrotrain::manifest::{Admission, Layer, parse_documents};
use ferrotrain_crds::TrainingJob;
use ferrotrain_tests::cluster::{
    Cluster, Installed, Operator, dedicated_node, delete_namespace, hold_pod, install_crd,
    install_operator, job_pods, job_token, post_progress, release_pod, render_chart, send_signal,
    terminate_container, terminate_container_saying, test_namespace, token_secret_name, wait_for,
};
use ferrotrain_tests::workspace_root;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

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

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn crd_is_established_explained_and_printed() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let explained = cluster.kubectl_ok(&["explain", "trainingjob.spec.trainer"], None);
    assert!(
        explained.contains("What to train"),
        "kubectl explain shows our descriptions:\n{explained}"
    );
    let explained = cluster.kubectl_ok(&["explain", "tsw.spec.parameters.path"], None);
    assert!(
        explained.contains("The field of `spec.trainer` it sets"),
        "kubectl explain shows the sweep's descriptions:\n{explained}"
    );
    let namespace = test_namespace(&client, "crd", "restricted").await;
    create_job(&client, &namespace, &job_manifest("printed", 1, "")).await;
    let table = cluster.kubectl_ok(&["get", "tj", "-n", &namespace], None);
    let header = table.lines().next().unwrap_or_default().to_string();
    for column in [
        "NAME", "PHASE", "READY", "PROGRESS", "STEP", "LOSS", "ETA", "AGE",
    ] {
        assert!(
            header.contains(column),
            "`kubectl get tj` header {header:?} lacks {column}"
        );
    }
}

/// What the API server says about one manifest sent with dryRun=All and strict field validation.
struct Verdict {
    admitted: bool,
    fields: Vec<String>,
    message: String,
}

async fn server_verdict(client: &Client, namespace: &str, manifest: &serde_json::Value) -> Verdict {
    use http::Request;
    let resource = if manifest["kind"] == "TrainingSweep" {
        "trainingsweeps"
    } else {
        "trainingjobs"
    };
    let uri = format!(
        "/apis/ferrotrain.io/v1alpha1/namespaces/{namespace}/{resource}?dryRun=All&fieldValidation=Strict"
    );
    let request = Request::post(uri)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(
            serde_json::to_vec(manifest).expect("JSON"),
        ))
        .expect("request");
    let response = client.send(request).await.expect("API server answers");
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect_bytes()
        .await
        .expect("response body");
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let message = status["message"].as_str().unwrap_or_default().to_string();
    let mut fields: Vec<String> = status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str().map(str::to_string))
        .collect();
    // Strict decoding names unknown fields only in the message: `unknown field "spec.x"`.
    for part in message.split("unknown field \"").skip(1) {
        if let Some(field) = part.split('"').next() {
            fields.push(field.to_string());
        }
    }
    Verdict {
        admitted: (200..300).contains(&code),
        fields,
        message,
    }
}

/// The API server's field paths write list indices as `[0]`, ours as well; both drop a leading dot.
fn same_field(server: &str, ours: &str) -> bool {
    let server = server.trim_start_matches('.');
    server == ours
        || server.starts_with(&format!("{ours}."))
        || server.starts_with(&format!("{ours}["))
}

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn validation_agrees_with_the_api_server() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let namespace = test_namespace(&client, "parity", "restricted").await;
    let admission = Admission::new().expect("schema compiles");
    let root = workspace_root();
    let mut files: Vec<_> = std::fs::read_dir(root.join("tests/manifests/invalid"))
        .expect("invalid manifests")
        .chain(std::fs::read_dir(root.join("examples")).expect("examples"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    // layer -> (agree, disagree)
    let mut table: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut disagreements = Vec::new();
    for file in &files {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        let text = std::fs::read_to_string(file).expect("readable");
        for (_, document) in parse_documents(&text) {
            let Ok(mut value) = document else { continue };
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            if !["TrainingJob", "TrainingSweep"].contains(&kind.as_str())
                && !name.contains("invalid")
            {
                continue;
            }
            if let Some(metadata) = value["metadata"].as_object_mut() {
                metadata.remove("namespace");
            }
            let ours = admission.admit_any(&value);
            let server = server_verdict(&client, &namespace, &value).await;
            let (layer, agree) = match &ours {
                Ok(_) => ("valid".to_string(), server.admitted),
                Err(errors) => {
                    let layer = errors[0].layer;
                    let agree = match layer {
                        // Only Ferrotrain checks these: the server admits them.
                        Layer::Semantic => server.admitted,
                        Layer::Document => !server.admitted,
                        Layer::Schema | Layer::Cel => {
                            !server.admitted
                                && errors.iter().all(|e| {
                                    server.fields.iter().any(|f| same_field(f, &e.field))
                                        || server.message.contains(&e.field)
                                })
                        }
                    };
                    (layer.to_string(), agree)
                }
            };
            let row = table.entry(layer.clone()).or_default();
            if agree {
                row.0 += 1;
            } else {
                row.1 += 1;
                disagreements.push(format!(
                    "{name}: ours {layer} {:?}; server admitted={} fields={:?} message={}",
                    ours.as_ref().err().map(|e| e
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()),
                    server.admitted,
                    server.fields,
                    server.message
                ));
            }
        }
    }
    println!("{:<10} {:>6} {:>9}", "LAYER", "AGREE", "DISAGREE");
    for (layer, (agree, disagree)) in &table {
        println!("{layer:<10} {agree:>6} {disagree:>9}");
    }
    for line in &disagreements {
        println!("disagreement: {line}");
    }
    assert!(
        table.values().map(|r| r.0).sum::<usize>() > 60,
        "every case was sent"
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements",
        disagreements.len()
    );
}

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn model_and_dataset_are_immutable_on_the_server() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let namespace = test_namespace(&client, "immutable", "restricted").await;
    let created = create_job(&client, &namespace, &job_manifest("fixed", 1, "")).await;
    let mut changed = serde_json::to_value(&created).expect("JSON");
    changed["spec"]["trainer"]["model"] = serde_json::json!({"type": "lenet"});
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let job: TrainingJob = serde_json::from_value(changed.clone()).expect("job");
    let refused = jobs
        .replace("fixed", &PostParams::default(), &job)
        .await
        .expect_err("the API server refuses a model change");
    let message = refused.to_string();
    assert!(message.contains("model"), "{message}");
    let old = serde_json::to_value(&created).expect("JSON");
    let ours = Admission::new()
        .expect("schema")
        .admit_update(&changed, Some(&old))
        .expect_err("ferrotrain validate refuses it too");
    assert!(
        ours.iter()
            .any(|e| e.layer == Layer::Cel && e.field.contains("spec.trainer")),
        "{ours:?}"
    );
}

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn the_chart_is_admitted_in_restricted_namespaces() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    let namespace = test_namespace(&client, "chart", "restricted").await;
    let rendered = render_chart("ferrotrain", &namespace, &[]);
    cluster.apply(&rendered);
    // The Deployment controller, the scheduler and kwok run the operator's pods: Pod Security
    // admission let them in.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        "2 operator pods running",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&Default::default()).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running == 2).then_some(())
        },
    )
    .await;
    let events = cluster.kubectl_ok(&["get", "events", "-n", &namespace], None);
    assert!(!events.contains("violates PodSecurity"), "{events}");
}

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
    let forbidden = installed.operator.forbidden();
    assert!(
        forbidden.is_empty(),
        "403s with the chart's RBAC: {forbidden:#?}"
    );
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
    terminate_container(&client, &namespace, "restart-worker-1", 1).await;
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
    assert!(installed.operator.forbidden().is_empty());
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
    terminate_container(&client, &namespace, "policy-worker-0", 42).await;
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
    terminate_container_saying(&client, &namespace, "policy-worker-1", 3, Some(log_tail))
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
            "worker policy-worker-1 failed: ExitCode3 (training data: s3://data/labels.idx: byte 9: label 200 is not below dataset.classes (10))"
        ),
        "{}",
        failed.message
    );
    assert_eq!(
        status.restarts.map(|r| r.app),
        Some(0),
        "no budget was used"
    );
    assert!(installed.operator.forbidden().is_empty());
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
    hold_pod(&client, &namespace, "evict-worker-1").await;
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .evict("evict-worker-1", &EvictParams::default())
        .await
        .expect("eviction admitted");
    terminate_container(&client, &namespace, "evict-worker-0", 4).await;
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
    release_pod(&client, &namespace, "evict-worker-1").await;
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
    hold_pod(&client, &namespace, "preempt-worker-0").await;
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
    release_pod(&client, &namespace, "preempt-worker-0").await;
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
        hold_pod(&client, &namespace, &format!("again-worker-{rank}")).await;
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
        release_pod(&client, &namespace, &format!("again-worker-{rank}")).await;
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
    hold_pod(&client, &namespace, "scoped-worker-1").await;
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .delete("scoped-worker-1", &DeleteParams::default())
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
    release_pod(&client, &namespace, "scoped-worker-1").await;
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
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &lease_namespace);
    let holder = || async {
        leases
            .get_opt("ferrotrain-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
    };
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
    terminate_container(&client, &namespace, "led-worker-0", 1).await;
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

/// Real training on the control plane: examples/mnist-k8s.yaml (namespace, storage endpoint,
/// credentials and length adapted) runs as real `ferrotrain worker` processes started for its pods by the
/// test's kubelet, checkpointing to the local S3 server; one worker is killed with SIGKILL after
/// the first checkpoint, and attempt 2 resumes from it and trains to ≥ 97 % accuracy.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh and the S3 server of scripts/s3-server.sh"]
async fn mnist_trains_on_the_cluster_and_resumes_after_a_kill() {
    use ferrotrain_tests::kubelet::{Kubelet, KubeletConfig};
    let s3 = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} unset: run `eval \"$(scripts/s3-server.sh start)\"` first")
        })
    };
    let (endpoint, bucket) = (
        s3("FERROTRAIN_TEST_S3_ENDPOINT"),
        s3("FERROTRAIN_TEST_S3_BUCKET"),
    );
    let Scenario {
        cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("train", "restricted").await;
    let credentials: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s3-credentials"},
        "stringData": {
            "AWS_ACCESS_KEY_ID": s3("AWS_ACCESS_KEY_ID"),
            "AWS_SECRET_ACCESS_KEY": s3("AWS_SECRET_ACCESS_KEY"),
        },
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &credentials)
        .await
        .expect("credentials");
    let text =
        std::fs::read_to_string(workspace_root().join("examples/mnist-k8s.yaml")).expect("example");
    let mut manifest: serde_json::Value = serde_yaml::from_str(&text).expect("example YAML");
    manifest["metadata"]["namespace"] = serde_json::json!(namespace);
    manifest["spec"]["checkpoint"]["uri"] =
        serde_json::json!(format!("s3://{bucket}/{namespace}/mnist"));
    manifest["spec"]["checkpoint"]["endpoint"] = serde_json::json!(endpoint);
    manifest["spec"]["checkpoint"]["secretRef"]["name"] = serde_json::json!("s3-credentials");
    // Three epochs take about 5 s here: long enough a run that the kill lands mid-training.
    manifest["spec"]["trainer"]["epochs"] = serde_json::json!(20);
    create_job(&client, &namespace, &manifest).await;
    let work_dir = cluster.dir.join(&namespace);
    let kubelet = Kubelet::start(
        client.clone(),
        &namespace,
        "mnist",
        KubeletConfig {
            binary: ferrotrain_tests::cluster::ferrotrain_binary(),
            data_dir: workspace_root().join("data"),
            work_dir: work_dir.clone(),
            threads: 1,
        },
    );
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
    let victim = kubelet.pid("mnist-worker-1").expect("rank 1 runs");
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
    let logs: String = walk(&work_dir)
        .into_iter()
        .filter(|p| p.ends_with("worker.log"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    let resumed = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "completed")
        .filter_map(|v| v["resumedFrom"].as_i64())
        .max()
        .expect("a completed worker that resumed");
    assert!(
        resumed >= checkpointed,
        "resumed from {resumed}, checkpoint was {checkpointed}"
    );
    assert!(installed.operator.forbidden().is_empty());
    delete_namespace(&client, &namespace).await;
}

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
        "stuck-worker-0",
        &PatchParams::default(),
        &Patch::Strategic(&kubelet_status(
            serde_json::json!({"running": {"startedAt": now}}),
            "Running",
        )),
    )
    .await
    .expect("rank 0 runs");
    pods.patch_status(
        "stuck-worker-1",
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
        scheduled.message.contains("stuck-worker-1"),
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

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_sweep_runs_its_trials_as_jobs_stops_the_losers_and_takes_them_along_when_deleted() {
    use ferrotrain_crds::sweep::{SweepPhase, TrainingSweep, TrialState};
    use ferrotrain_tests::kubelet::{Kubelet, KubeletConfig};
    let Scenario {
        cluster,
        client,
        installed,
        namespace,
    } = Scenario::start("sweep", "restricted").await;
    let text = std::fs::read_to_string(workspace_root().join("examples/sweep-asha.yaml"))
        .expect("example");
    let mut manifest: serde_json::Value = serde_yaml::from_str(&text).expect("example YAML");
    manifest["metadata"] = serde_json::json!({"name": "asha", "namespace": namespace});
    manifest["spec"]["maxTrials"] = serde_json::json!(4);
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
                client.clone(),
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
    let sweeps: Api<TrainingSweep> = Api::namespaced(client.clone(), &namespace);
    let sweep: TrainingSweep = serde_json::from_value(manifest).expect("sweep");
    sweeps
        .create(&PostParams::default(), &sweep)
        .await
        .expect("create sweep");
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
    // Off the runtime: the kubelets' last requests go through clients this runtime drives.
    tokio::task::spawn_blocking(move || drop(kubelets))
        .await
        .expect("kubelets stop");
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
    assert!(
        installed.operator.forbidden().is_empty(),
        "403s with the chart's RBAC: {:#?}",
        installed.operator.forbidden()
    );
    delete_namespace(&client, &namespace).await;
}

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_sweep_whose_trials_would_be_refused_fails_naming_the_field_and_creates_none() {
    use ferrotrain_crds::sweep::{SweepPhase, TrainingSweep};
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
    let sweeps: Api<TrainingSweep> = Api::namespaced(client.clone(), &namespace);
    // Only Ferrotrain checks the trials: the API server admits the sweep.
    sweeps
        .create(
            &PostParams::default(),
            &serde_json::from_value(manifest).expect("sweep"),
        )
        .await
        .expect("admitted by the API server");
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
    assert!(installed.operator.forbidden().is_empty());
    delete_namespace(&client, &namespace).await;
}
