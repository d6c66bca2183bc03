//! What the operator creates for a job, as pure builders: the headless Service, the worker pods
//! and Volcano's PodGroup (the Secret is `job_secret`'s, the NetworkPolicy `network_policy`'s). Precedence of the user's pod overlay:
//! docs/api.md. Reading the pods back is `observe`'s.

use std::collections::BTreeMap;

use ferrotrain_crds::env::{self, WorkerEnv};
use ferrotrain_crds::{TrainingJob, defaults};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod,
    PodSecurityContext, PodSpec, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use crate::cluster::job_secret::{
    GANG_KEY, TOKEN_DIR, TOKEN_KEY, token_secret_name, token_sha256_of,
};
use crate::cluster::labels::{LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK, base_labels, child_meta};
use crate::vocabulary::TERMINATION_GRACE_SECONDS;

/// Port of rank 0's rendezvous listener.
pub const RENDEZVOUS_PORT: u16 = 29400;

/// Scratch mount (the root file system is read-only).
pub const SCRATCH_DIR: &str = "/scratch";

/// UID the workers run as when the image does not say.
pub const WORKER_UID: i64 = 65532;

/// Operator settings the builders need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Trainer image for jobs that do not name one.
    pub default_image: String,
    /// Base URL at which pods reach the operator's progress endpoint.
    pub progress_base_url: String,
    /// Whether each job gets a NetworkPolicy that admits only its own pods to its workers.
    pub worker_network_policy: bool,
    /// CA bundle (PEM) the workers verify the progress endpoint's certificate with, when it
    /// serves TLS.
    pub progress_ca: Option<String>,
}

/// Hostname of a worker (`<job>-worker-<rank>.<job>` in DNS): the same in every attempt, so the
/// rendezvous address never changes.
pub fn worker_hostname(job: &str, rank: u32) -> String {
    format!("{job}-worker-{rank}")
}

/// Name of a worker pod: the hostname and the attempt. A new attempt's pods never take the names
/// of an earlier attempt's, even one force-deleted while its process may still run on a
/// partitioned node; what that process could still do is fenced off by the gang handshake and
/// the checkpoint lease, which both carry the attempt.
pub fn worker_name(job: &str, rank: u32, attempt: u32) -> String {
    format!("{}-a{attempt}", worker_hostname(job, rank))
}

/// The headless Service that gives `<job>-worker-<rank>.<job>` a DNS name, ready or not.
pub fn service(job: &TrainingJob) -> Service {
    let name = job.metadata.name.clone().unwrap_or_default();
    Service {
        metadata: child_meta(job, name.clone(), base_labels(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(BTreeMap::from([(LABEL_JOB.to_string(), name)])),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: i32::from(RENDEZVOUS_PORT),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The pod of `rank` in `attempt` with `world_size` workers.
pub fn worker_pod(
    job: &TrainingJob,
    settings: &Settings,
    attempt: u32,
    world_size: u32,
    rank: u32,
) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let namespace = job
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let workers = &job.spec.workers;
    let overlay = workers.template.clone().unwrap_or_default();
    let policy = job.spec.run_policy.clone().unwrap_or_default();

    let contract = WorkerEnv {
        rank,
        world_size,
        rendezvous_addr: format!("{}.{name}", worker_hostname(&name, 0)),
        rendezvous_port: RENDEZVOUS_PORT,
        attempt,
        job_name: name.clone(),
        job_namespace: namespace.clone(),
        job_uid: job.metadata.uid.clone(),
        trainer: job.spec.trainer.clone(),
        checkpoint: job.spec.checkpoint.clone(),
        output: job.spec.output.clone(),
        progress_url: Some(format!(
            "{}/v1/namespaces/{namespace}/trainingjobs/{name}/progress",
            settings.progress_base_url.trim_end_matches('/')
        )),
        progress_token_path: Some(format!("{TOKEN_DIR}/{TOKEN_KEY}")),
        gang_key_path: Some(format!("{TOKEN_DIR}/{GANG_KEY}")),
        progress_ca: settings.progress_ca.clone(),
        scratch_dir: Some(SCRATCH_DIR.into()),
    };
    let mut env: Vec<EnvVar> = contract
        .to_env()
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect();
    if let Some(secret) = job
        .spec
        .checkpoint
        .as_ref()
        .and_then(|c| c.secret_ref.as_ref())
    {
        let keys = [
            (
                env::ACCESS_KEY_ID,
                secret
                    .access_key_id_key
                    .clone()
                    .unwrap_or_else(|| defaults::ACCESS_KEY_ID_KEY.into()),
            ),
            (
                env::SECRET_ACCESS_KEY,
                secret
                    .secret_access_key_key
                    .clone()
                    .unwrap_or_else(|| defaults::SECRET_ACCESS_KEY_KEY.into()),
            ),
        ];
        for (var, key) in keys {
            env.push(EnvVar {
                name: var.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key,
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
            });
        }
    }
    // User variables come last; validation has rejected any that collide with the contract.
    env.extend(overlay.env.iter().cloned());

    let mut volumes = vec![
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(scratch_limit(workers)),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "progress-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(token_secret_name(
                    &name,
                    token_sha256_of(job).unwrap_or_default(),
                )),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(overlay.volumes.iter().cloned());
    let mut mounts = vec![
        VolumeMount {
            name: "scratch".into(),
            mount_path: SCRATCH_DIR.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "progress-token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    mounts.extend(overlay.volume_mounts.iter().cloned());

    let mut labels = overlay.labels.clone();
    labels.extend(base_labels(&name));
    labels.insert(LABEL_RANK.into(), rank.to_string());
    labels.insert(LABEL_ATTEMPT.into(), attempt.to_string());
    let mut annotations = overlay.annotations.clone();
    if let Some(queue) = &policy.queue {
        // Kueue admits the gang as one pod group; Volcano reads its queue from the same setting.
        let group = format!("{name}-{attempt}");
        labels.insert("kueue.x-k8s.io/queue-name".into(), queue.clone());
        labels.insert("kueue.x-k8s.io/pod-group-name".into(), group.clone());
        annotations.insert(
            "kueue.x-k8s.io/pod-group-total-count".into(),
            world_size.to_string(),
        );
        // A gang restarts whole, as the next attempt's group: the group of an attempt that
        // failed is over at once. (Kueue otherwise waits for replacement pods in the same group
        // and keeps the failed pods, with their names, until then.)
        annotations.insert("kueue.x-k8s.io/retriable-in-group".into(), "false".into());
        annotations.insert("scheduling.volcano.sh/queue-name".into(), queue.clone());
    }
    if policy.scheduler_name.as_deref() == Some("volcano") {
        annotations.insert(
            "scheduling.k8s.io/group-name".into(),
            format!("{name}-{attempt}"),
        );
    }

    let container = Container {
        name: "trainer".into(),
        image: Some(
            workers
                .image
                .clone()
                .unwrap_or_else(|| settings.default_image.clone()),
        ),
        command: workers.command.clone(),
        args: workers.args.clone(),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("rendezvous".into()),
            container_port: i32::from(RENDEZVOUS_PORT),
            ..ContainerPort::default()
        }]),
        resources: workers.resources.clone(),
        volume_mounts: Some(mounts),
        // A failed worker's last log lines become its termination message: the cause of a
        // failure reaches the job's status without anyone reading logs.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            ..child_meta(job, worker_name(&name, rank, attempt), labels)
        },
        spec: Some(PodSpec {
            hostname: Some(worker_hostname(&name, rank)),
            subdomain: Some(name),
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            scheduler_name: policy.scheduler_name.clone(),
            priority_class_name: overlay
                .priority_class_name
                .clone()
                .or(policy.priority_class_name.clone()),
            service_account_name: overlay.service_account_name.clone(),
            // Our trainer never calls the API: no token unless the user names an account.
            automount_service_account_token: overlay
                .service_account_name
                .is_none()
                .then_some(false),
            node_selector: Some(overlay.node_selector.clone()).filter(|m| !m.is_empty()),
            tolerations: Some(overlay.tolerations.clone()).filter(|t| !t.is_empty()),
            affinity: overlay.affinity.clone(),
            image_pull_secrets: Some(overlay.image_pull_secrets.clone()).filter(|s| !s.is_empty()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WORKER_UID),
                run_as_group: Some(WORKER_UID),
                fs_group: Some(WORKER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The Volcano PodGroup that makes the scheduler place a gang all at once (only for jobs with
/// `schedulerName: volcano`), named like the pods' `scheduling.k8s.io/group-name` annotation.
pub fn pod_group(job: &TrainingJob, attempt: u32, world_size: u32) -> Option<serde_json::Value> {
    let policy = job.spec.run_policy.clone().unwrap_or_default();
    if policy.scheduler_name.as_deref() != Some("volcano") {
        return None;
    }
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut spec = serde_json::json!({"minMember": world_size});
    if let Some(queue) = &policy.queue {
        spec["queue"] = serde_json::json!(queue);
    }
    if let Some(class) = job
        .spec
        .workers
        .template
        .as_ref()
        .and_then(|t| t.priority_class_name.clone())
        .or(policy.priority_class_name)
    {
        spec["priorityClassName"] = serde_json::json!(class);
    }
    Some(serde_json::json!({
        "apiVersion": "scheduling.volcano.sh/v1beta1",
        "kind": "PodGroup",
        "metadata": {
            "name": format!("{name}-{attempt}"),
            "namespace": job.metadata.namespace,
            "labels": base_labels(&name),
            "ownerReferences": job.controller_owner_ref(&()).map(|o| vec![o]),
        },
        "spec": spec,
    }))
}

/// Default size limit of a worker's scratch volume when its resources set no ephemeral storage.
pub const DEFAULT_SCRATCH_LIMIT: &str = "8Gi";

/// The scratch volume is bounded by the workers' ephemeral-storage limit (or request), else by
/// [`DEFAULT_SCRATCH_LIMIT`]: an unbounded emptyDir can fill the node's disk.
fn scratch_limit(workers: &ferrotrain_crds::WorkersSpec) -> Quantity {
    let resources = workers.resources.as_ref();
    let from = |map: Option<&BTreeMap<String, Quantity>>| {
        map.and_then(|m| m.get("ephemeral-storage")).cloned()
    };
    from(resources.and_then(|r| r.limits.as_ref()))
        .or_else(|| from(resources.and_then(|r| r.requests.as_ref())))
        .unwrap_or_else(|| Quantity(DEFAULT_SCRATCH_LIMIT.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fixtures::{job, settings};
    use crate::cluster::job_secret::{ANNOTATION_TOKEN_SHA256, token_secret};

    fn env_of(pod: &Pod) -> BTreeMap<String, EnvVar> {
        let spec = pod.spec.as_ref().expect("spec");
        spec.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    }

    #[test]
    fn worker_pods_carry_the_env_contract_and_a_stable_dns_name() {
        let pod = worker_pod(&job(""), &settings(), 3, 2, 1);
        assert_eq!(pod.metadata.name.as_deref(), Some("mnist-worker-1-a3"));
        // The next attempt's pod has another name and the same hostname.
        let next = worker_pod(&job(""), &settings(), 4, 2, 1);
        assert_eq!(next.metadata.name.as_deref(), Some("mnist-worker-1-a4"));
        assert_eq!(
            next.spec.as_ref().and_then(|s| s.hostname.as_deref()),
            Some("mnist-worker-1")
        );
        let spec = pod.spec.clone().expect("spec");
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some("mnist-worker-1"), Some("mnist"))
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            spec.automount_service_account_token,
            Some(false),
            "the trainer never calls the API"
        );
        let scratch = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "scratch")
            .and_then(|v| v.empty_dir.clone())
            .expect("scratch emptyDir");
        assert_eq!(
            scratch.size_limit,
            Some(Quantity(DEFAULT_SCRATCH_LIMIT.into()))
        );
        let mut bounded = job("");
        if let Some(limits) = bounded
            .spec
            .workers
            .resources
            .as_mut()
            .and_then(|r| r.limits.as_mut())
        {
            limits.insert("ephemeral-storage".into(), Quantity("20Gi".into()));
        }
        let bounded = worker_pod(&bounded, &settings(), 1, 2, 0);
        let limit = bounded
            .spec
            .and_then(|s| s.volumes)
            .into_iter()
            .flatten()
            .find(|v| v.name == "scratch")
            .and_then(|v| v.empty_dir)
            .and_then(|d| d.size_limit);
        assert_eq!(
            limit,
            Some(Quantity("20Gi".into())),
            "the workers' own limit bounds it"
        );
        let vars: BTreeMap<String, String> = env_of(&pod)
            .into_iter()
            .filter_map(|(k, v)| v.value.map(|v| (k, v)))
            .collect();
        let contract =
            WorkerEnv::from_env(|k| vars.get(k).cloned()).expect("the contract parses back");
        assert_eq!(
            (contract.rank, contract.world_size, contract.attempt),
            (1, 2, 3)
        );
        assert_eq!(contract.rendezvous_addr, "mnist-worker-0.mnist");
        assert_eq!(
            contract.progress_url.as_deref(),
            Some(
                "http://ferrotrain.ferrotrain-system:8080/v1/namespaces/ml/trainingjobs/mnist/progress"
            )
        );
        assert_eq!(vars.get("OMP_NUM_THREADS").map(String::as_str), Some("2"));
        let labels = pod.metadata.labels.clone().expect("labels");
        assert_eq!(labels.get(LABEL_ATTEMPT).map(String::as_str), Some("3"));
        assert_eq!(labels.get("team").map(String::as_str), Some("vision"));
        let owner = pod.metadata.owner_references.clone().expect("owner")[0].clone();
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("TrainingJob", Some(true))
        );
    }

    #[test]
    fn credentials_are_secret_references_never_literals() {
        let env = env_of(&worker_pod(&job(""), &settings(), 1, 2, 0));
        for (var, key) in [
            (env::ACCESS_KEY_ID, "id"),
            (env::SECRET_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY"),
        ] {
            let e = env.get(var).expect("credential variable");
            assert_eq!(e.value, None);
            let selector = e
                .value_from
                .clone()
                .and_then(|v| v.secret_key_ref)
                .expect("secretKeyRef");
            assert_eq!((selector.name.as_str(), selector.key.as_str()), ("s3", key));
        }
    }

    #[test]
    fn workers_run_restricted() {
        let spec = worker_pod(&job(""), &settings(), 1, 2, 0)
            .spec
            .expect("spec");
        let pod_sc = spec.security_context.clone().expect("pod security context");
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(
            pod_sc.seccomp_profile.map(|p| p.type_),
            Some("RuntimeDefault".into())
        );
        let sc = spec.containers[0]
            .security_context
            .clone()
            .expect("container security context");
        assert_eq!(
            (sc.allow_privilege_escalation, sc.read_only_root_filesystem),
            (Some(false), Some(true))
        );
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        let mounts: Vec<String> = spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.clone())
            .collect();
        assert!(
            mounts.contains(&SCRATCH_DIR.to_string()),
            "scratch space on a read-only root"
        );
    }

    #[test]
    fn overlay_precedence_and_queues() {
        let pod = worker_pod(
            &job("  runPolicy: {priorityClassName: low, queue: team-ml, schedulerName: volcano}\n"),
            &settings(),
            2,
            4,
            0,
        );
        let spec = pod.spec.clone().expect("spec");
        assert_eq!(
            spec.priority_class_name.as_deref(),
            Some("high"),
            "the template wins over runPolicy"
        );
        assert_eq!(spec.scheduler_name.as_deref(), Some("volcano"));
        let labels = pod.metadata.labels.clone().expect("labels");
        assert_eq!(
            labels.get("kueue.x-k8s.io/queue-name").map(String::as_str),
            Some("team-ml")
        );
        assert_eq!(
            labels
                .get("kueue.x-k8s.io/pod-group-name")
                .map(String::as_str),
            Some("mnist-2")
        );
        let annotations = pod.metadata.annotations.clone().expect("annotations");
        assert_eq!(
            annotations
                .get("kueue.x-k8s.io/pod-group-total-count")
                .map(String::as_str),
            Some("4")
        );
        assert_eq!(
            annotations
                .get("kueue.x-k8s.io/retriable-in-group")
                .map(String::as_str),
            Some("false")
        );
        assert_eq!(
            annotations
                .get("scheduling.k8s.io/group-name")
                .map(String::as_str),
            Some("mnist-2")
        );
    }

    #[test]
    fn volcano_jobs_get_a_pod_group_per_attempt() {
        assert_eq!(pod_group(&job(""), 1, 2), None);
        let group = pod_group(
            &job("  runPolicy: {schedulerName: volcano, queue: team-ml}\n"),
            3,
            4,
        )
        .expect("pod group");
        assert_eq!(group["metadata"]["name"], "mnist-3");
        assert_eq!(group["spec"]["minMember"], 4);
        assert_eq!(group["spec"]["queue"], "team-ml");
        assert_eq!(group["spec"]["priorityClassName"], "high");
        assert_eq!(
            group["metadata"]["ownerReferences"][0]["kind"],
            "TrainingJob"
        );
    }

    #[test]
    fn the_headless_service_publishes_workers_before_they_are_ready() {
        let spec = service(&job("")).spec.expect("spec");
        assert_eq!(
            (spec.cluster_ip.as_deref(), spec.publish_not_ready_addresses),
            (Some("None"), Some(true))
        );
    }

    #[test]
    fn workers_mount_the_secret_of_the_recorded_token() {
        let mut annotated = job("");
        let digest = crate::progress::token_sha256("abc");
        annotated.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_TOKEN_SHA256.to_string(),
            digest.clone(),
        )]));
        assert_eq!(token_sha256_of(&annotated), Some(digest.as_str()));
        let settings = Settings {
            default_image: "t".into(),
            progress_base_url: "http://op".into(),
            worker_network_policy: true,
            progress_ca: None,
        };
        let pod = worker_pod(&annotated, &settings, 1, 2, 0);
        let mounted = pod
            .spec
            .and_then(|s| s.volumes)
            .into_iter()
            .flatten()
            .find_map(|v| v.secret?.secret_name);
        assert_eq!(
            mounted,
            token_secret(&annotated, "abc", "def").metadata.name
        );
        // A digest that is not one is not trusted.
        annotated.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_TOKEN_SHA256.to_string(),
            "../etc".to_string(),
        )]));
        assert_eq!(token_sha256_of(&annotated), None);
    }
}
