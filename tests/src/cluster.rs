//! Helpers for the tests that run against the real control plane of `scripts/cluster.sh`:
//! clients (admin, and the chart's ServiceAccount with a TokenRequest token), a namespace per
//! test, the chart rendered and applied server-side, the `ferrotrain operator` binary as a child
//! process, and kwok's missing kubelet half (terminating containers with an exit code).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};

use crate::workspace_root;

/// The field manager of everything the tests apply.
pub const TEST_MANAGER: &str = "ferrotrain-tests";

/// A running control plane, found through `FERROTRAIN_CLUSTER_DIR` (set by
/// `eval "$(scripts/cluster.sh start)"`).
pub struct Cluster {
    /// The state directory of `scripts/cluster.sh` (kubeconfig, certificates, logs).
    pub dir: PathBuf,
}

impl Cluster {
    /// The cluster of this test run; panics with how to start one when there is none.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("FERROTRAIN_CLUSTER_DIR").map(PathBuf::from).expect(
            "no control plane: run `eval \"$(scripts/cluster.sh start)\"` before the cluster tests",
        );
        assert!(
            dir.join("kubeconfig").is_file(),
            "{}: no kubeconfig; is the cluster running?",
            dir.display()
        );
        Self { dir }
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A client with cluster-admin rights (client certificate in `system:masters`).
    pub async fn admin(&self) -> Client {
        client_from(&self.kubeconfig()).await
    }

    /// Runs kubectl against the cluster as admin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let kubectl = std::env::var("FERROTRAIN_CLUSTER_KUBECTL")
            .unwrap_or_else(|_| tool("kubectl").display().to_string());
        run_with_stdin(
            Command::new(kubectl)
                .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
                .args(args),
            stdin,
        )
    }

    /// kubectl that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must succeed within `timeout`, retried every half second: for what the API
    /// server publishes a moment after it reports success (a new CRD's OpenAPI schema, which
    /// `kubectl explain` reads, follows its Established condition).
    pub fn kubectl_eventually(&self, args: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.kubectl(args, None);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "kubectl {} still failing after {timeout:?}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The events of `namespace` with `reason`, as `kubectl get events` prints them.
    pub fn events(&self, namespace: &str, reason: &str) -> String {
        self.kubectl_ok(
            &[
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector",
                &format!("reason={reason}"),
            ],
            None,
        )
    }

    /// Applies YAML documents server-side as admin (field manager `ferrotrain-tests`).
    pub fn apply(&self, yaml: &str) -> String {
        self.kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--field-manager=ferrotrain-tests",
                "-f",
                "-",
            ],
            Some(yaml),
        )
    }

    /// A kubeconfig that authenticates as a ServiceAccount with a token from the TokenRequest
    /// API, as a pod of that account would.
    pub async fn service_account_kubeconfig(&self, namespace: &str, account: &str) -> PathBuf {
        let client = self.admin().await;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token = accounts
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .expect("TokenRequest for the service account")
            .status
            .expect("token status")
            .token;
        let admin = std::fs::read_to_string(self.kubeconfig()).expect("admin kubeconfig");
        let admin: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig YAML");
        let cluster = &admin["clusters"][0]["cluster"];
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": cluster["server"].as_str(),
                "certificate-authority-data": cluster["certificate-authority-data"].as_str(),
            }}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": account}}],
            "current-context": "test",
        });
        let path = self.dir.join(format!("{namespace}-{account}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&config).expect("YAML")).expect("write");
        path
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Client {
    ferrotrain::tls::install_crypto_provider();
    let file = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

/// A tool installed by `scripts/install-tools.sh`.
pub fn tool(name: &str) -> PathBuf {
    workspace_root().join(".tools/bin").join(name)
}

/// The `ferrotrain` binary `cargo test --workspace` built, or `FERROTRAIN_OPERATOR_BINARY`
/// (another build to compare, for example the release before a fix).
pub fn ferrotrain_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("FERROTRAIN_OPERATOR_BINARY") {
        return PathBuf::from(binary);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let binary = target.join("debug/ferrotrain");
    assert!(
        binary.is_file(),
        "{} missing: build it with `cargo build -p ferrotrain`",
        binary.display()
    );
    binary
}

fn run_with_stdin(command: &mut Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

/// Creates a namespace with a unique name (`prefix-NNNN`) and the Pod Security level `enforce`
/// (for example "restricted").
pub async fn test_namespace(client: &Client, prefix: &str, enforce: &str) -> String {
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 100_000)
        .unwrap_or_default();
    let name = format!("{prefix}-{suffix}");
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": enforce,
            "pod-security.kubernetes.io/enforce-version": "latest",
        }},
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
    // The ServiceAccount controller creates `default`; pods are refused until it exists.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    wait_for(
        "default ServiceAccount",
        Duration::from_secs(30),
        || async { accounts.get_opt("default").await.ok().flatten() },
    )
    .await;
    name
}

/// Applies the chart's CRDs server-side and waits until the API server serves them.
pub async fn install_crd(client: &Client) {
    for path in [crate::chart_crd_path(), crate::chart_sweep_crd_path()] {
        install_crd_file(client, &path).await;
    }
}

async fn install_crd_file(client: &Client, path: &std::path::Path) {
    let text = std::fs::read_to_string(path).expect("chart CRD");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("CRD YAML");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().expect("CRD name");
    crds.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    wait_for("CRD Established", Duration::from_secs(30), || async {
        let crd = crds.get(&name).await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Renders the chart with helm 4 (`helm template`) for a release in `namespace`.
pub fn render_chart(release: &str, namespace: &str, values: &[&str]) -> String {
    let out = Command::new(tool("helm4"))
        .args([
            "template",
            release,
            "charts/ferrotrain",
            "--namespace",
            namespace,
        ])
        .args(values)
        .current_dir(workspace_root())
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The documents of a rendered chart whose kind is one of `kinds`, as one YAML stream.
pub fn documents_of_kind(rendered: &str, kinds: &[&str]) -> String {
    rendered
        .split("\n---")
        .filter(|doc| {
            serde_yaml::from_str::<serde_yaml::Value>(doc)
                .ok()
                .and_then(|v| v["kind"].as_str().map(|k| kinds.contains(&k)))
                .unwrap_or(false)
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// An operator installed the way the chart installs it: the chart's ServiceAccount and RBAC
/// applied in a fresh namespace, the binary authenticating with that account's token.
pub struct Installed {
    /// The operator process.
    pub operator: Operator,
    /// Where the chart's ServiceAccount and the operator's Lease live.
    pub namespace: String,
}

/// Installs the operator as the chart would, with chart `values` and `extra` operator arguments.
pub async fn install_operator(cluster: &Cluster, values: &[&str], extra: &[&str]) -> Installed {
    let client = cluster.admin().await;
    let namespace = test_namespace(&client, "ferrotrain-system", "restricted").await;
    let rendered = render_chart("ferrotrain", &namespace, values);
    let rbac = documents_of_kind(
        &rendered,
        &[
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ],
    );
    cluster.apply(&rbac);
    let kubeconfig = cluster
        .service_account_kubeconfig(&namespace, "ferrotrain")
        .await;
    let operator = Operator::start(&kubeconfig, &namespace, "operator-0", extra);
    Installed {
        operator,
        namespace,
    }
}

/// The `ferrotrain operator` binary running against the cluster as a child process.
pub struct Operator {
    child: Child,
    /// Its log (JSON lines).
    pub log: PathBuf,
    /// The address of its progress, metrics and health server.
    pub address: String,
}

impl Operator {
    /// Starts the operator with `kubeconfig`, its Lease in `lease_namespace`, and `extra` arguments.
    pub fn start(kubeconfig: &Path, lease_namespace: &str, identity: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let log = kubeconfig.with_extension(format!("{identity}.log"));
        let file = std::fs::File::create(&log).expect("operator log");
        // With TLS the workers and the other replicas verify the certificate for `localhost`
        // (see [`tls_files`]).
        let (base, advertise) = if extra.contains(&"--tls-cert-file") {
            (
                format!("https://localhost:{port}"),
                format!("https://{address}"),
            )
        } else {
            (format!("http://{address}"), format!("http://{address}"))
        };
        let child = Command::new(ferrotrain_binary())
            .args([
                "operator",
                "--listen",
                &address,
                "--lease-namespace",
                lease_namespace,
                "--identity",
                identity,
                "--progress-base-url",
                &base,
            ])
            .env("OPERATOR_ADVERTISE_URL", advertise)
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("start ferrotrain operator");
        Self {
            child,
            log,
            address,
        }
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines that show the API server refusing a call for lack of rights: RBAC's refusal
    /// ("… is forbidden: User … cannot …"). Other 403s are not about rights, such as a write into
    /// a namespace being deleted by an earlier scenario, whose jobs this cluster-wide operator
    /// still sees.
    pub fn forbidden(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("is forbidden: User"))
            .map(str::to_string)
            .collect()
    }

    /// Sends a signal to the operator process (`kill -SIGNAL`).
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Stops it as Kubernetes does, with SIGTERM, and waits up to `grace` for it to exit;
    /// whether it did.
    pub fn terminate(&mut self, grace: std::time::Duration) -> bool {
        send_signal(self.pid(), "TERM");
        let until = std::time::Instant::now() + grace;
        while std::time::Instant::now() < until {
            if self.exited() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    /// The API writes (POST, PUT, PATCH, DELETE) it has sent through its rate-limited clients,
    /// as its `/metrics` counts them (the Lease's own client is not among them).
    pub fn api_writes(&self) -> u64 {
        self.metric_sum("ferrotrain_api_requests_total{", "kind=\"write\"")
    }

    /// The sum of the `/metrics` samples whose line starts with `name` and contains `matching`.
    pub fn metric_sum(&self, name: &str, matching: &str) -> u64 {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.address).expect("connect to operator");
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(matching))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Who holds the operator's leader Lease in `namespace`, if anyone.
pub async fn lease_holder(client: &Client, namespace: &str) -> Option<String> {
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), namespace)
        .get_opt("ferrotrain-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

/// A free TCP port on 127.0.0.1 that no outgoing connection can take before it is listened on.
pub fn free_port() -> u16 {
    ferrotrain_crds::loopback_port::pick().expect("free port")
}

/// The pods of a job, by label.
pub async fn job_pods(client: &Client, namespace: &str, job: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("ferrotrain.io/job={job}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// What a kubelet writes when a pod's trainer container exits with `exit_code`: kwok only runs
/// pods, so the tests terminate them.
pub async fn terminate_container(client: &Client, namespace: &str, pod: &str, exit_code: i32) {
    try_terminate_container(client, namespace, pod, exit_code)
        .await
        .expect("patch pod status");
}

/// [`terminate_container`], returning the API server's refusal (a pod deleted meanwhile).
pub async fn try_terminate_container(
    client: &Client,
    namespace: &str,
    pod: &str,
    exit_code: i32,
) -> Result<(), kube::Error> {
    terminate_container_saying(client, namespace, pod, exit_code, None).await
}

/// [`try_terminate_container`] with the termination message the kubelet reports: the tail of
/// the container's log under `terminationMessagePolicy: FallbackToLogsOnError`.
pub async fn terminate_container_saying(
    client: &Client,
    namespace: &str,
    pod: &str,
    exit_code: i32,
    message: Option<&str>,
) -> Result<(), kube::Error> {
    let phase = if exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    let now = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
            "containerStatuses": [{
                "name": "trainer",
                "image": "ferrotrain-trainer",
                "imageID": "",
                "ready": false,
                "restartCount": 0,
                "state": {"terminated": {
                    "exitCode": exit_code,
                    "reason": if exit_code == 0 { "Completed" } else { "Error" },
                    "message": message,
                    "startedAt": now,
                    "finishedAt": now,
                }},
            }],
        }
    });
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(pod, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(|_| ())
}

/// The finalizer a test puts on a pod to keep it Terminating, as a kubelet does during the grace
/// period (kwok would delete it at once).
pub const HOLD_FINALIZER: &str = "ferrotrain.io/test-hold";

/// Takes a pod away from kwok (it stops updating and deleting it) and holds it with a finalizer,
/// so that a deletion leaves it Terminating until [`release_pod`].
pub async fn hold_pod(client: &Client, namespace: &str, pod: &str) {
    let patch = serde_json::json!({"metadata": {
        "annotations": {"kwok.x-k8s.io/status": "custom"},
        "finalizers": [HOLD_FINALIZER],
    }});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("hold pod");
}

/// Ends a held pod's termination: drops the finalizer and completes the deletion, as a kubelet
/// does once the container has exited.
pub async fn release_pod(client: &Client, namespace: &str, pod: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"finalizers": null}});
    let _ = pods
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    let _ = pods
        .delete(
            pod,
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await;
}

/// The fake node reserved for tests that need a node of their own (label and taint
/// `ferrotrain.io/dedicated=true`).
pub async fn dedicated_node(client: &Client) -> String {
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&ListParams::default().labels("ferrotrain.io/dedicated=true"))
        .await
        .expect("list nodes")
        .items
        .first()
        .and_then(|n| n.metadata.name.clone())
        .expect("a dedicated node (scripts/cluster.sh labels the last one)")
}

/// Deletes a test namespace and waits until its pods are gone, so the next test finds the fake
/// nodes' capacity free.
pub async fn delete_namespace(client: &Client, namespace: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(namespace, &kube::api::DeleteParams::background())
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("pods of namespace {namespace} gone"),
        Duration::from_secs(60),
        || async {
            pods.list(&ListParams::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        },
    )
    .await;
}

/// Sends `signal` (a name such as TERM or KILL) to process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status();
}
