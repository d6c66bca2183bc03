//! A kubelet for one job's pods on kwok nodes: where kwok only pretends, this runs each bound
//! worker pod as a real `ferrotrain worker` process with the environment a kubelet would give
//! the container (literal values, `secretKeyRef` and `fieldRef` values, the token file from the
//! Secret volume), and writes the process's exit into the pod's status. A pod being deleted gets
//! SIGTERM, reports its container's end once its process has exited and is removed, as a kubelet
//! does within the grace period.
//!
//! Two things differ from a node, by necessity: every worker runs on 127.0.0.1, so the rendezvous
//! host name resolves there; and the scratch and token paths are directories of the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::cluster::{client_from, send_signal, terminate_container, try_terminate_container};
use crate::credentials::secret_value;

/// What the kubelet needs to know besides the pods themselves.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The `ferrotrain` binary whose `worker` subcommand is the trainer.
    pub binary: PathBuf,
    /// Directory of the built-in datasets (`mnist/`), as the trainer image has it.
    pub data_dir: PathBuf,
    /// Where each pod gets its scratch directory, token file and log.
    pub work_dir: PathBuf,
    /// Compute threads per worker.
    pub threads: usize,
}

/// The running kubelet; stops (killing its processes) when dropped.
///
/// It has a client and a runtime of its own: a client is driven by the runtime that made it, so
/// a kubelet sharing the test's client would wait on the test's runtime, which waits for the
/// kubelet to stop when a test drops it — a deadlock whenever a request is in flight.
pub struct Kubelet {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<std::thread::JoinHandle<()>>,
    /// PIDs of the running workers, by pod name.
    pub pids: Arc<std::sync::Mutex<HashMap<String, u32>>>,
}

struct Running {
    child: Child,
    pod: String,
    terminated: bool,
}

/// However the kubelet stops, its processes go with it.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kubelet {
    /// Starts serving the pods labelled `ferrotrain.io/job=<job>` in `namespace`, as the user of
    /// `kubeconfig`.
    pub fn start(kubeconfig: &Path, namespace: &str, job: &str, config: KubeletConfig) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let pids = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (namespace, job) = (namespace.to_string(), job.to_string());
        let kubeconfig = kubeconfig.to_path_buf();
        let task = {
            let pids = Arc::clone(&pids);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("kubelet runtime");
                runtime.block_on(async move {
                    let client = client_from(&kubeconfig).await;
                    tokio::select! {
                        () = serve(client, namespace, job, config, pids) => {}
                        _ = stopped => {}
                    }
                });
            })
        };
        Self {
            stop: Some(stop),
            task: Some(task),
            pids,
        }
    }

    /// The PID of a pod's worker process, if it runs.
    pub fn pid(&self, pod: &str) -> Option<u32> {
        self.pids.lock().ok()?.get(pod).copied()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.join();
        }
    }
}

async fn serve(
    client: Client,
    namespace: String,
    job: String,
    config: KubeletConfig,
    pids: Arc<std::sync::Mutex<HashMap<String, u32>>>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        let listed = pods
            .list(&ListParams::default().labels(&format!("ferrotrain.io/job={job}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for pod in &listed {
            let uid = pod.uid().unwrap_or_default();
            let name = pod.name_any();
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some();
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            let finished = matches!(phase.as_deref(), Some("Succeeded" | "Failed"));
            if pod.metadata.deletion_timestamp.is_some() {
                match running.get_mut(&uid) {
                    Some(worker) if !worker.terminated => {
                        send_signal(worker.child.id(), "TERM");
                        worker.terminated = true;
                    }
                    Some(_) => {}
                    None => remove(&pods, &name).await,
                }
                continue;
            }
            if bound && !finished && !running.contains_key(&uid) {
                match start_worker(&client, pod, &config).await {
                    Ok(child) => {
                        take_over(&pods, pod).await;
                        running.insert(
                            uid,
                            Running {
                                child,
                                pod: name,
                                terminated: false,
                            },
                        );
                    }
                    Err(e) => eprintln!("kubelet: cannot start {name}: {e}"),
                }
            }
        }
        // Exits: the status first (the operator reads the exit code), then, for a pod being
        // deleted, the deletion's end.
        let mut exited = Vec::new();
        for (uid, worker) in running.iter_mut() {
            if let Ok(Some(status)) = worker.child.try_wait() {
                let code = status.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                });
                let deleting = listed
                    .iter()
                    .find(|p| p.uid().as_deref() == Some(uid.as_str()))
                    .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
                if deleting {
                    // A kubelet reports the container's end before the pod goes: a finalizer
                    // (Kueue's on a pod group) waits for a finished pod.
                    let _ = try_terminate_container(&client, &namespace, &worker.pod, code).await;
                    remove(&pods, &worker.pod).await;
                } else {
                    terminate_container(&client, &namespace, &worker.pod, code).await;
                }
                exited.push(uid.clone());
            }
        }
        for uid in exited {
            running.remove(&uid);
        }
        if let Ok(mut pids) = pids.lock() {
            *pids = running
                .values()
                .map(|w| (w.pod.clone(), w.child.id()))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// From now on kwok leaves the pod alone (status and deletion are this kubelet's); the pod is
/// Running and Ready, whether or not kwok got there first.
async fn take_over(pods: &Api<Pod>, pod: &Pod) {
    let name = pod.name_any();
    let patch =
        serde_json::json!({"metadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}}});
    let _ = pods
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
        return;
    }
    let now = jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": [{
            "name": "trainer", "image": "ferrotrain-trainer", "imageID": "", "ready": true,
            "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}},
        }],
    }});
    let _ = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
        .await;
}

async fn remove(pods: &Api<Pod>, name: &str) {
    let _ = pods
        .delete(
            name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await;
}

async fn start_worker(client: &Client, pod: &Pod, config: &KubeletConfig) -> Result<Child, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    let container = spec.containers.first().ok_or("pod without container")?;
    let dir = config
        .work_dir
        .join(&name)
        .join(pod.uid().unwrap_or_default());
    std::fs::create_dir_all(dir.join("scratch")).map_err(|e| e.to_string())?;
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => {
                if let Some(secret) = &from.secret_key_ref {
                    secret_value(client, &namespace, &secret.name, &secret.key).await?
                } else if let Some(field) = &from.field_ref {
                    match field.field_path.as_str() {
                        "metadata.name" => name.clone(),
                        "metadata.namespace" => namespace.clone(),
                        "metadata.uid" => pod.uid().unwrap_or_default(),
                        _ => "127.0.0.1".to_string(),
                    }
                } else {
                    return Err(format!("{}: unsupported valueFrom", var.name));
                }
            }
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    // The Secret volume with the progress token and the gang key.
    let token_secret = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "progress-token")
        .and_then(|v| v.secret.as_ref()?.secret_name.clone())
        .ok_or("no progress-token volume")?;
    let token = secret_value(client, &namespace, &token_secret, "token").await?;
    let token_path = dir.join("token");
    std::fs::write(&token_path, token).map_err(|e| e.to_string())?;
    let gang_key = secret_value(client, &namespace, &token_secret, "gang-key").await?;
    let gang_key_path = dir.join("gang-key");
    std::fs::write(&gang_key_path, gang_key).map_err(|e| e.to_string())?;
    let overrides = [
        (
            ferrotrain_crds::env::RENDEZVOUS_ADDR,
            "127.0.0.1".to_string(),
        ),
        (
            ferrotrain_crds::env::PROGRESS_TOKEN_PATH,
            token_path.display().to_string(),
        ),
        (
            ferrotrain_crds::env::GANG_KEY_PATH,
            gang_key_path.display().to_string(),
        ),
        (
            ferrotrain_crds::env::SCRATCH_DIR,
            dir.join("scratch").display().to_string(),
        ),
        (
            ferrotrain_crds::env::DATA_DIR,
            config.data_dir.display().to_string(),
        ),
        ("RAYON_NUM_THREADS", config.threads.to_string()),
    ];
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value));
    }
    let log = std::fs::File::create(dir.join("worker.log")).map_err(|e| e.to_string())?;
    Command::new(&config.binary)
        .arg("worker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API server that accepts connections and never answers: every request stays in flight.
    fn silent_api_server() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                held.push(stream);
            }
        });
        port
    }

    /// A test drops its kubelet on its own (single-threaded) runtime; that must return even while
    /// the kubelet waits on the API server, or the test hangs at its end.
    #[test]
    fn dropping_a_kubelet_with_a_request_in_flight_returns() {
        let port = silent_api_server();
        let kubeconfig = std::env::temp_dir().join(format!("silent-{port}.kubeconfig"));
        let file = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        );
        std::fs::write(&kubeconfig, file).expect("kubeconfig");
        let (done, finished) = std::sync::mpsc::channel();
        let path = kubeconfig.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let kubelet = Kubelet::start(
                    &path,
                    "team",
                    "job",
                    KubeletConfig {
                        binary: PathBuf::from("/bin/false"),
                        data_dir: PathBuf::from("/nonexistent"),
                        work_dir: std::env::temp_dir(),
                        threads: 1,
                    },
                );
                // Long enough for the kubelet's first list to be sent.
                tokio::time::sleep(Duration::from_millis(500)).await;
                drop(kubelet);
            });
            let _ = done.send(());
        });
        let returned = finished.recv_timeout(Duration::from_secs(30)).is_ok();
        let _ = std::fs::remove_file(&kubeconfig);
        assert!(returned, "dropping the kubelet did not return within 30 s");
    }
}
