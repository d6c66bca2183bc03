//! The controller's API calls, in order, against a scripted mock API server (the
//! `ApiServerVerifier` pattern of kube-rs's controller-rs): a missing call times out, an extra
//! call finds no answer and times out too.

use std::sync::Arc;
use std::time::Duration;

use ferrotrain::cluster::cache::PodIndex;
use ferrotrain::cluster::children::Settings;
use ferrotrain::cluster::hub::ProgressHub;
use ferrotrain::cluster::reconcile::{Context, reconcile};
use ferrotrain_crds::TrainingJob;
use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request: method, a fragment of the URI, and the answer (status, body); `None`
/// echoes the request body back with 200/201.
struct Expect {
    method: Method,
    uri: &'static str,
    answer: Option<(u16, Value)>,
    check: fn(&Value),
}

fn expect(method: Method, uri: &'static str) -> Expect {
    Expect {
        method,
        uri,
        answer: None,
        check: |_| {},
    }
}

impl Expect {
    fn answer(mut self, status: u16, body: Value) -> Self {
        self.answer = Some((status, body));
        self
    }

    fn check(mut self, check: fn(&Value)) -> Self {
        self.check = check;
        self
    }
}

async fn verify(mut handle: Handle, script: Vec<Expect>) {
    for (i, step) in script.into_iter().enumerate() {
        let (request, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("request {i} never came: {} {}", step.method, step.uri));
        let uri = request.uri().to_string();
        assert_eq!(request.method(), step.method, "request {i}: {uri}");
        assert!(
            uri.contains(step.uri),
            "request {i}: {} {uri} does not contain {}",
            request.method(),
            step.uri
        );
        assert_granted(request.method(), request.uri().path());
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (step.check)(&body);
        let (status, reply) = match step.answer {
            Some(answer) => answer,
            // A status apply answers with the whole object carrying the applied status.
            None if uri.contains("/status") => (200, job_json(body["status"].clone())),
            None => (
                if step.method == Method::POST {
                    201
                } else {
                    200
                },
                body,
            ),
        };
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).expect("json")))
            .expect("response");
        send.send_response(response);
    }
}

/// Every call the controller makes must be granted by the RBAC list (the chart's ClusterRole is
/// generated from it).
fn assert_granted(method: &Method, path: &str) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let (group, rest) = match parts.first() {
        Some(&"api") => ("", &parts[2..]),
        _ => (parts[1], &parts[3..]),
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => resource.to_string(),
        [] => panic!("no resource in {path}"),
    };
    let named = rest.len() >= 2;
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        (other, _) => panic!("unexpected method {other}"),
    };
    let granted = ferrotrain::cluster::controller::RBAC
        .iter()
        .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb));
    assert!(
        granted,
        "{method} {path} needs {verb} on {group}/{resource}, which the RBAC list does not grant"
    );
}

fn job(status: Value) -> TrainingJob {
    serde_json::from_value(job_json(status)).expect("job")
}

fn job_json(status: Value) -> Value {
    let mut value = json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "mnist", "namespace": "ml", "uid": "0b0e", "generation": 1, "resourceVersion": "7"},
        "spec": {
            "workers": {"replicas": 2},
            "trainer": {"model": {"type": "mlp"}, "dataset": {"type": "mnist"}, "batchSize": 8, "epochs": 1},
            "checkpoint": {"uri": "s3://ckpt/mnist", "everySteps": 10}
        }
    });
    if !status.is_null() {
        // A job that has run has the token of its first attempt already.
        value["metadata"]["annotations"] = json!({
            DIGEST: "ab".repeat(32),
            "ferrotrain.io/progress-token-attempt": "1",
            "ferrotrain.io/progress-token-secret-uid": "secret-1",
        });
        value["status"] = status;
    }
    value
}

const DIGEST: &str = "ferrotrain.io/progress-token-sha256";

/// A job's first gang makes its token: a Secret named after the token's digest, then the digest
/// recorded on the job (with the resourceVersion the decision was made from). The API server
/// answers with `job` annotated, at resourceVersion 8.
fn new_token(job: &TrainingJob) -> Vec<Expect> {
    vec![
        expect(Method::POST, "/api/v1/namespaces/ml/secrets?").check(|b| {
            let token = b["stringData"]["token"].as_str().unwrap_or_default();
            assert_eq!(token.len(), 64);
            let digest = ferrotrain::progress::token_sha256(token);
            assert_eq!(b["metadata"]["name"], format!("mnist-progress-{}", &digest[..12]));
        })
        .answer(201, json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "mnist-progress-new", "namespace": "ml", "uid": "secret-new"}})),
        expect(Method::PATCH, "/apis/ferrotrain.io/v1alpha1/namespaces/ml/trainingjobs/mnist?&force=true&fieldManager=ferrotrain-operator")
            .check(|b| {
                assert_eq!(b["metadata"]["resourceVersion"], "7");
                let annotations = &b["metadata"]["annotations"];
                assert_eq!(annotations[DIGEST].as_str().map(str::len), Some(64));
                // The attempt the token is for, and the Secret to delete when the next replaces it.
                assert!(annotations["ferrotrain.io/progress-token-attempt"].is_string(), "{b}");
                assert_eq!(annotations["ferrotrain.io/progress-token-secret-uid"], "secret-new");
                assert!(b.get("spec").is_none() && b.get("status").is_none(), "{b}");
            })
            .answer(200, {
                let mut annotated = serde_json::to_value(job).expect("job");
                annotated["metadata"]["resourceVersion"] = json!("8");
                annotated["metadata"]["annotations"] = json!({DIGEST: "cd".repeat(32)});
                annotated
            }),
    ]
}

/// A restarted job's next attempt gets a token of its own, and the Secret of the last one is
/// deleted by its UID.
fn rotated_token(job: &TrainingJob) -> Vec<Expect> {
    let mut script = new_token(job);
    script.push(
        expect(
            Method::DELETE,
            "/api/v1/namespaces/ml/secrets/mnist-progress-abababababab",
        )
        .check(|b| assert_eq!(b["preconditions"]["uid"], "secret-1"))
        .answer(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
        ),
    );
    script
}

fn owner(uid: &str) -> Value {
    json!([{"apiVersion": "ferrotrain.io/v1alpha1", "kind": "TrainingJob", "name": "mnist", "uid": uid, "controller": true}])
}

fn pod(rank: u32, attempt: u32, phase: &str, exit_code: Option<i32>) -> Value {
    owned_pod(rank, attempt, phase, exit_code, "0b0e")
}

fn owned_pod(rank: u32, attempt: u32, phase: &str, exit_code: Option<i32>, uid: &str) -> Value {
    let mut status = json!({"phase": phase});
    if let Some(code) = exit_code {
        status["containerStatuses"] = json!([{"name": "trainer", "image": "t", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("mnist-worker-{rank}-a{attempt}"), "namespace": "ml", "ownerReferences": owner(uid),
            "labels": {"ferrotrain.io/job": "mnist", "ferrotrain.io/rank": rank.to_string(), "ferrotrain.io/attempt": attempt.to_string()}},
        "spec": {"containers": []},
        "status": status
    })
}

/// A gang of a running job, one worker failed: both are deleted, in rank order.
fn deletes_of_the_failed_gang() -> Vec<Expect> {
    vec![
        expect(
            Method::DELETE,
            "/api/v1/namespaces/ml/pods/mnist-worker-0-a1",
        )
        .answer(200, pod(0, 1, "Running", None)),
        expect(
            Method::DELETE,
            "/api/v1/namespaces/ml/pods/mnist-worker-1-a1",
        )
        .answer(200, pod(1, 1, "Failed", Some(1))),
    ]
}

async fn run(job: TrainingJob, pods: Vec<Value>, script: Vec<Expect>) {
    run_with(Arc::new(job), pods, script).await;
}

/// [`run`], returning the context for another reconcile (whose calls nothing answers).
async fn run_with(job: Arc<TrainingJob>, pods: Vec<Value>, script: Vec<Expect>) -> Arc<Context> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"), pods);
    let verifier = tokio::spawn(verify(handle, script));
    let result =
        tokio::time::timeout(Duration::from_secs(10), reconcile(job, Arc::clone(&ctx))).await;
    let result = result.expect("reconcile finished: no request was left unanswered");
    result.expect("reconcile succeeded");
    tokio::time::timeout(Duration::from_secs(10), verifier)
        .await
        .expect("every expected request came")
        .expect("verifier");
    ctx
}

/// A leading replica's context on `client`, its pod cache holding `pods`.
fn context(client: Client, pods: Vec<Value>) -> Arc<Context> {
    let hub = Arc::new(ProgressHub::default());
    hub.leader.store(true, std::sync::atomic::Ordering::SeqCst);
    let settings = Settings {
        default_image: "trainer:test".into(),
        progress_base_url: "http://op:8080".into(),
        worker_network_policy: false,
        progress_ca: None,
    };
    // The pod cache holds what the watch delivered: reconciling never lists pods.
    let pods = PodIndex::listed_with(
        pods.into_iter()
            .map(|p| serde_json::from_value(p).expect("pod")),
    );
    Arc::new(Context::new(client, settings, hub, pods))
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
}

/// The Service is created with the gang's first look: a name that is free costs one request.
fn service_created() -> Expect {
    expect(Method::POST, "/api/v1/namespaces/ml/services?")
        .check(|b| assert_eq!(b["spec"]["clusterIP"], "None"))
}

/// A Volcano PodGroup controlled by the job with `owner_uid`.
fn pod_group(name: &str, owner_uid: &str) -> Value {
    json!({
        "apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
        "metadata": {"name": name, "namespace": "ml", "uid": "group-uid", "ownerReferences": [{
            "apiVersion": "ferrotrain.io/v1alpha1", "kind": "TrainingJob", "name": "mnist",
            "uid": owner_uid, "controller": true}]},
    })
}

const PODS: &str = "/api/v1/namespaces/ml/pods";
const STATUS: &str = "/apis/ferrotrain.io/v1alpha1/namespaces/ml/trainingjobs/mnist/status?&force=true&fieldManager=ferrotrain-operator";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";

#[tokio::test]
async fn a_new_job_gets_its_service_secret_and_gang() {
    let mut script = vec![service_created()];
    let new = job(Value::Null);
    script.extend(new_token(&new));
    script.extend([
        expect(Method::POST, PODS).check(|b| {
            assert_eq!(b["metadata"]["name"], "mnist-worker-0-a1");
            // The workers mount the Secret of the digest the API server answered with.
            let volumes = b["spec"]["volumes"].as_array().cloned().unwrap_or_default();
            assert!(
                volumes
                    .iter()
                    .any(|v| v["secret"]["secretName"] == "mnist-progress-cdcdcdcdcdcd"),
                "{volumes:?}"
            );
        }),
        expect(Method::POST, PODS).check(|b| {
            assert_eq!(b["metadata"]["name"], "mnist-worker-1-a1");
            assert_eq!(b["metadata"]["labels"]["ferrotrain.io/attempt"], "1");
        }),
        expect(Method::PATCH, STATUS).check(|b| {
            assert_eq!(b["status"]["phase"], "Scheduling");
            assert_eq!(b["status"]["attempt"], 1);
            // Written onto the annotated job the decision continued from.
            assert_eq!(b["metadata"]["resourceVersion"], "8");
        }),
    ]);
    run(new, vec![], script).await;
}

/// A Service of the job's name that another owner holds: the creation is refused (409), the
/// holder read once, and nothing is created, changed or deleted.
#[tokio::test]
async fn a_service_name_held_by_another_owner_is_left_alone_and_reported() {
    let script = vec![
        service_created().answer(409, already_exists()),
        expect(Method::GET, "/api/v1/namespaces/ml/services/mnist")
            .answer(200, service_owned_by("someone-else")),
        expect(Method::PATCH, STATUS).check(|b| {
            let created = b["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "WorkersCreated").cloned())
                .expect("WorkersCreated condition");
            assert_eq!(created["reason"], "NameConflict");
        }),
        expect(Method::POST, EVENTS).check(|b| assert_eq!(b["reason"], "NameConflict")),
    ];
    run(job(Value::Null), vec![], script).await;
}

/// The job's own Service from an earlier attempt (or an earlier look): the gang goes ahead.
#[tokio::test]
async fn the_jobs_own_service_is_kept() {
    let restarting = json!({"phase": "Restarting", "attempt": 2, "workers": {"desired": 2, "created": 0, "scheduled": 0, "running": 0, "ready": 0, "succeeded": 0, "failed": 0}});
    let job = job(restarting);
    let mut script = vec![
        service_created().answer(409, already_exists()),
        expect(Method::GET, "/api/v1/namespaces/ml/services/mnist")
            .answer(200, service_owned_by("0b0e")),
    ];
    script.extend(rotated_token(&job));
    script.extend([
        expect(Method::POST, PODS),
        expect(Method::POST, PODS),
        expect(Method::PATCH, STATUS).check(|b| assert_eq!(b["status"]["phase"], "Scheduling")),
    ]);
    run(job, vec![], script).await;
}

fn already_exists() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409,
        "message": "services \"mnist\" already exists"})
}

fn service_owned_by(uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "mnist", "namespace": "ml", "uid": "service-uid", "ownerReferences": owner(uid)},
        "spec": {"clusterIP": "None"}})
}

#[tokio::test]
async fn a_failed_worker_deletes_the_gang_and_records_the_restart() {
    let running = json!({"phase": "Running", "attempt": 1,
        "progress": {"step": 40, "lastUpdateTime": "2026-01-01T00:00:05Z"},
        "checkpoint": {"uri": "s3://ckpt/mnist/step-40", "step": 40},
        "conditions": [{"type": "Running", "status": "True", "reason": "GangRunning", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    let pods = vec![pod(0, 1, "Running", None), pod(1, 1, "Failed", Some(1))];
    let mut script = deletes_of_the_failed_gang();
    script.extend([
        expect(Method::PATCH, STATUS).check(|b| {
            assert_eq!(b["status"]["phase"], "Restarting");
            assert_eq!(b["status"]["attempt"], 2);
            assert_eq!(b["status"]["restarts"]["app"], 1);
            // The decision is only written onto the object it was made from.
            assert_eq!(b["metadata"]["resourceVersion"], "7");
            // Progress belongs to the progress writer's field manager.
            assert!(b["status"].get("progress").is_none(), "{b}");
            assert!(b["status"].get("checkpoint").is_none(), "{b}");
        }),
        expect(Method::POST, EVENTS).check(|b| assert_eq!(b["reason"], "WorkerFailed")),
        expect(Method::POST, EVENTS).check(|b| assert_eq!(b["reason"], "Restarting")),
    ]);
    run(job(running), pods, script).await;
}

#[tokio::test]
async fn the_next_attempt_is_created_once_the_old_pods_are_gone() {
    let restarting = json!({"phase": "Restarting", "attempt": 2, "workers": {"desired": 2, "created": 0, "scheduled": 0, "running": 0, "ready": 0, "succeeded": 0, "failed": 0}});
    let job = job(restarting);
    let mut script = vec![service_created()];
    script.extend(rotated_token(&job));
    script.extend([
        expect(Method::POST, PODS)
            .check(|b| assert_eq!(b["metadata"]["labels"]["ferrotrain.io/attempt"], "2")),
        expect(Method::POST, PODS),
        expect(Method::PATCH, STATUS).check(|b| assert_eq!(b["status"]["phase"], "Scheduling")),
    ]);
    run(job, vec![], script).await;
}

#[tokio::test]
async fn a_volcano_job_gets_its_pod_group_before_its_pods() {
    let mut job = job(Value::Null);
    job.spec.run_policy = Some(ferrotrain_crds::RunPolicy {
        scheduler_name: Some("volcano".into()),
        queue: Some("research".into()),
        ..Default::default()
    });
    let mut script = vec![service_created()];
    script.extend(new_token(&job));
    script.extend([
        expect(Method::GET, "/apis/scheduling.volcano.sh/v1beta1/namespaces/ml/podgroups/mnist-1")
            .answer(404, not_found()),
        expect(Method::PATCH, "/apis/scheduling.volcano.sh/v1beta1/namespaces/ml/podgroups/mnist-1?&force=true&fieldManager=ferrotrain-operator")
            .check(|b| {
                assert_eq!(b["spec"]["minMember"], 2);
                assert_eq!(b["spec"]["queue"], "research");
            }),
        expect(Method::POST, PODS).check(|b| {
            assert_eq!(b["spec"]["schedulerName"], "volcano");
            assert_eq!(b["metadata"]["annotations"]["scheduling.k8s.io/group-name"], "mnist-1");
        }),
        expect(Method::POST, PODS),
        expect(Method::PATCH, STATUS),
    ]);
    run(job, vec![], script).await;
}

#[tokio::test]
async fn pods_of_an_earlier_job_with_the_same_name_are_not_adopted() {
    // The job was deleted and created again: its predecessor's pods (another owner UID) still
    // terminate. They are deleted and waited for; the new gang is not created over them.
    let pods = vec![
        owned_pod(0, 1, "Running", None, "old-uid"),
        owned_pod(1, 1, "Running", None, "old-uid"),
    ];
    let mut script = vec![
        service_created(),
        expect(
            Method::DELETE,
            "/api/v1/namespaces/ml/pods/mnist-worker-0-a1",
        )
        .answer(200, owned_pod(0, 1, "Running", None, "old-uid")),
        expect(
            Method::DELETE,
            "/api/v1/namespaces/ml/pods/mnist-worker-1-a1",
        )
        .answer(200, owned_pod(1, 1, "Running", None, "old-uid")),
    ];
    // The predecessor's token Secret has another name (its own digest): never in the way.
    script.extend(new_token(&job(Value::Null)));
    script.push(expect(Method::PATCH, STATUS).check(|b| {
        assert_eq!(b["status"]["phase"], "Pending");
        assert_eq!(b["status"]["workers"]["created"], 0);
    }));
    run(job(Value::Null), pods, script).await;
}

/// A ResourceQuota's refusal of a worker pod.
fn quota_exceeded() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": "pods \"mnist-worker-0-a1\" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=2, limited: pods=2"})
}

#[tokio::test]
async fn a_refused_pod_is_reported_and_the_rest_of_the_gang_is_created() {
    let quota = quota_exceeded();
    let mut script = vec![service_created()];
    script.extend(new_token(&job(Value::Null)));
    script.extend([
        expect(Method::POST, PODS).answer(403, quota.clone()),
        expect(Method::POST, PODS).answer(403, quota),
        expect(Method::PATCH, STATUS).check(|b| {
            assert_eq!(b["status"]["phase"], "Scheduling");
            assert!(
                b["status"]["attemptStartTime"].is_string(),
                "the gang timeout runs"
            );
            let created = b["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "WorkersCreated").cloned())
                .expect("WorkersCreated condition");
            assert_eq!(created["status"], "False");
            assert_eq!(created["reason"], "QuotaExceeded");
            assert!(
                created["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("exceeded quota")
            );
        }),
        expect(Method::POST, EVENTS).check(|b| assert_eq!(b["reason"], "QuotaExceeded")),
    ]);
    run(job(Value::Null), vec![], script).await;
}

#[tokio::test]
async fn the_next_attempt_deletes_the_pod_group_of_the_last_one() {
    let job = restarting_volcano_job();
    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200});
    let mut script = next_pod_group_applied(&job);
    script.extend([
        // Deleted only as the job's own, with its UID as a precondition.
        expect(
            Method::GET,
            "/apis/scheduling.volcano.sh/v1beta1/namespaces/ml/podgroups/mnist-1",
        )
        .answer(200, pod_group("mnist-1", "0b0e")),
        expect(
            Method::DELETE,
            "/apis/scheduling.volcano.sh/v1beta1/namespaces/ml/podgroups/mnist-1",
        )
        .check(|b| assert_eq!(b["preconditions"]["uid"], "group-uid"))
        .answer(200, gone),
        expect(Method::POST, PODS).answer(403, quota_exceeded()),
        expect(Method::POST, PODS),
        expect(Method::PATCH, STATUS),
        // Events of attempt 2 form their own series (the recorder keys a series on the action).
        expect(Method::POST, EVENTS).check(|b| {
            assert_eq!(b["reason"], "QuotaExceeded");
            assert_eq!(b["action"], "Attempt2");
        }),
    ]);
    run(job, vec![], script).await;
}

/// Attempt 2 of a Volcano job, its old pods gone: the gang is about to be created again.
fn restarting_volcano_job() -> TrainingJob {
    let restarting = json!({"phase": "Restarting", "attempt": 2, "workers": {"desired": 2, "created": 0, "scheduled": 0, "running": 0, "ready": 0, "succeeded": 0, "failed": 0}});
    let mut job = job(restarting);
    job.spec.run_policy = Some(ferrotrain_crds::RunPolicy {
        scheduler_name: Some("volcano".into()),
        ..Default::default()
    });
    job
}

/// The calls of [`restarting_volcano_job`] up to its new PodGroup: the Service's name checked
/// and applied, attempt 2's token made, the name of attempt 2's group checked and the group
/// applied.
fn next_pod_group_applied(job: &TrainingJob) -> Vec<Expect> {
    let mut script = vec![service_created()];
    script.extend(rotated_token(job));
    script.extend([
        expect(
            Method::GET,
            "/apis/scheduling.volcano.sh/v1beta1/namespaces/ml/podgroups/mnist-2",
        )
        .answer(404, not_found()),
        expect(
            Method::PATCH,
            "/apis/scheduling.volcano.sh/v1beta1/namespaces/ml/podgroups/mnist-2?",
        ),
    ]);
    script
}

#[tokio::test]
async fn a_pod_group_of_the_last_attempt_held_by_another_owner_is_left_alone() {
    let job = restarting_volcano_job();
    let mut script = next_pod_group_applied(&job);
    script.extend([
        // Named like the job's last group, controlled by another object: no DELETE follows.
        expect(
            Method::GET,
            "/apis/scheduling.volcano.sh/v1beta1/namespaces/ml/podgroups/mnist-1",
        )
        .answer(200, pod_group("mnist-1", "someone-else")),
        expect(Method::POST, PODS),
        expect(Method::POST, PODS),
        expect(Method::PATCH, STATUS),
    ]);
    run(job, vec![], script).await;
}

#[tokio::test]
async fn a_copy_older_than_the_last_status_write_is_not_decided_on() {
    // A pod event can start a reconcile before the watch has delivered the reconciler's own
    // status write. Deciding on that copy would restart the gang a second time and charge a
    // second restart (the write's precondition would refuse it, as a conflict). It waits instead.
    let running = json!({"phase": "Running", "attempt": 1,
        "conditions": [{"type": "Running", "status": "True", "reason": "GangRunning", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    let job = Arc::new(job(running.clone()));
    let pods = vec![pod(0, 1, "Running", None), pod(1, 1, "Failed", Some(1))];
    let mut script = deletes_of_the_failed_gang();
    script.extend([
        expect(Method::PATCH, STATUS).answer(200, {
            let mut written = job_json(running);
            written["metadata"]["resourceVersion"] = json!("9");
            written
        }),
        expect(Method::POST, EVENTS),
        expect(Method::POST, EVENTS),
    ]);
    let ctx = run_with(Arc::clone(&job), pods, script).await;
    // The same copy (resourceVersion 7) again: no API call (nothing would answer one).
    tokio::time::timeout(Duration::from_secs(5), reconcile(job, ctx))
        .await
        .expect("no request was made")
        .expect("the stale copy is put off, not failed");
}

/// Old workers terminating on a node: their node's readiness comes from the node watch, not a
/// GET per pod per reconcile (thousands of calls when a node with many pods is lost). Nothing but
/// the attempt's support objects is requested while the old workers exit.
#[tokio::test]
async fn terminating_workers_cost_no_node_reads() {
    let restarting = json!({"phase": "Restarting", "attempt": 2, "workers": {"desired": 2, "created": 0, "scheduled": 0, "running": 0, "ready": 0, "succeeded": 0, "failed": 0}});
    let job = job(restarting);
    let terminating = |rank| {
        let mut pod = pod(rank, 1, "Running", None);
        pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        pod["spec"]["nodeName"] = json!("n1");
        pod
    };
    let mut script = vec![service_created()];
    script.extend(rotated_token(&job));
    script.push(expect(Method::PATCH, STATUS));
    run(job, vec![terminating(0), terminating(1)], script).await;
}

/// A job waiting for its old workers to exit is looked at again and again (every pod event, every
/// requeue). Its Service is created, or found to be the job's, once for the attempt: not at every
/// look, a create refused with 409 and a read of the holder each time.
#[tokio::test]
async fn a_restarting_jobs_service_is_checked_once_per_attempt() {
    let restarting = json!({"phase": "Restarting", "attempt": 2, "workers": {"desired": 2, "created": 0, "scheduled": 0, "running": 0, "ready": 0, "succeeded": 0, "failed": 0}});
    let first = Arc::new(job(restarting.clone()));
    // The copy the watch delivers after the first look: the token of attempt 2, a later version.
    let mut next = job_json(restarting);
    next["metadata"]["resourceVersion"] = json!("10");
    next["metadata"]["annotations"]["ferrotrain.io/progress-token-attempt"] = json!("2");
    let next: Arc<TrainingJob> = Arc::new(serde_json::from_value(next.clone()).expect("job"));
    let terminating = |rank| {
        let mut pod = pod(rank, 1, "Running", None);
        pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        pod
    };
    let mut script = vec![service_created()];
    script.extend(rotated_token(&first));
    script.push(
        expect(Method::PATCH, STATUS).answer(200, serde_json::to_value(&*next).expect("job")),
    );
    // The second look decides the same and writes its status again, and nothing else: a Service
    // request here fails the script's order.
    script.push(
        expect(Method::PATCH, STATUS).answer(200, serde_json::to_value(&*next).expect("job")),
    );
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(
        Client::new(service, "default"),
        vec![terminating(0), terminating(1)],
    );
    let verifier = tokio::spawn(verify(handle, script));
    for copy in [first, next] {
        tokio::time::timeout(Duration::from_secs(10), reconcile(copy, Arc::clone(&ctx)))
            .await
            .expect("reconcile finished: no request was left unanswered")
            .expect("reconcile succeeded");
    }
    tokio::time::timeout(Duration::from_secs(10), verifier)
        .await
        .expect("every expected request came")
        .expect("verifier");
}
