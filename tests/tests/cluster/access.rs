//! What creating a TrainingJob lets a user do: the chart's roles that join the built-in
//! `edit`/`view`, Pod Security admission on the workers, and the admission policy that keeps
//! privilege-widening pod settings to users who may create pods themselves. Users are
//! impersonated by the cluster admin (`kubectl --as`).

use super::*;

/// The chart's documents of `kind` whose name ends with one of `suffixes`, as one YAML stream.
fn chart_documents(rendered: &str, kind: &str, suffixes: &[&str]) -> String {
    serde_yaml::Deserializer::from_str(rendered)
        .filter_map(|doc| serde_json::Value::deserialize(doc).ok())
        .filter(|doc| doc["kind"] == kind)
        .filter(|doc| {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            suffixes.iter().any(|s| name.ends_with(s))
        })
        .map(|doc| serde_yaml::to_string(&doc).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

use serde::Deserialize as _;

fn bind(cluster: &Cluster, namespace: &str, user: &str, role_kind: &str, role: &str) {
    let flag = if role_kind == "ClusterRole" {
        format!("--clusterrole={role}")
    } else {
        format!("--role={role}")
    };
    cluster.kubectl_ok(
        &[
            "create",
            "rolebinding",
            &format!("{user}-{role}"),
            &flag,
            &format!("--user={user}"),
            "-n",
            namespace,
        ],
        None,
    );
}

fn can_i(cluster: &Cluster, namespace: &str, user: &str, verb: &str, resource: &str) -> bool {
    let out = cluster.kubectl(
        &[
            "auth", "can-i", verb, resource, "-n", namespace, "--as", user,
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Creates `job` as `user` with a server-side dry run; `Err` carries the API server's refusal.
fn create_as(
    cluster: &Cluster,
    namespace: &str,
    user: &str,
    job: &serde_json::Value,
) -> Result<(), String> {
    let yaml = serde_yaml::to_string(job).expect("yaml");
    let out = cluster.kubectl(
        &[
            "create",
            "--dry-run=server",
            "-n",
            namespace,
            "--as",
            user,
            "-f",
            "-",
        ],
        Some(&yaml),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn with_overlay(name: &str, overlay: serde_json::Value) -> serde_json::Value {
    let mut job = job_manifest(name, 1, "");
    job["spec"]["workers"]["template"] = overlay;
    job
}

fn host_path_overlay() -> serde_json::Value {
    serde_json::json!({
        "volumes": [{"name": "host", "hostPath": {"path": "/etc"}}],
        "volumeMounts": [{"name": "host", "mountPath": "/host", "readOnly": true}],
    })
}

/// A RoleBinding to the built-in `edit` lets a user run TrainingJobs and sweeps, one to `view`
/// lets a user read them and nothing more: the chart's roles joined the built-in ones.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn the_built_in_edit_and_view_roles_grant_ferrotrain() {
    let Scenario {
        cluster,
        client: _client,
        installed: _operator,
        namespace,
    } = Scenario::start("roles", "restricted").await;
    let rendered = render_chart("ferrotrain-roles", &namespace, &[]);
    cluster.apply(&chart_documents(
        &rendered,
        "ClusterRole",
        &["-edit", "-view"],
    ));
    bind(&cluster, &namespace, "editor", "ClusterRole", "edit");
    bind(&cluster, &namespace, "viewer", "ClusterRole", "view");
    wait_for(
        "edit to gain TrainingJobs",
        Duration::from_secs(30),
        || async {
            can_i(
                &cluster,
                &namespace,
                "editor",
                "create",
                "trainingjobs.ferrotrain.io",
            )
            .then_some(())
        },
    )
    .await;
    for (verb, resource) in [
        ("delete", "trainingjobs.ferrotrain.io"),
        ("create", "trainingsweeps.ferrotrain.io"),
        ("get", "trainingjobs.ferrotrain.io"),
    ] {
        assert!(
            can_i(&cluster, &namespace, "editor", verb, resource),
            "editor {verb} {resource}"
        );
    }
    wait_for(
        "view to gain TrainingJobs",
        Duration::from_secs(30),
        || async {
            can_i(
                &cluster,
                &namespace,
                "viewer",
                "list",
                "trainingjobs.ferrotrain.io",
            )
            .then_some(())
        },
    )
    .await;
    assert!(can_i(
        &cluster,
        &namespace,
        "viewer",
        "get",
        "trainingsweeps.ferrotrain.io"
    ));
    for (verb, resource) in [
        ("create", "trainingjobs.ferrotrain.io"),
        ("delete", "trainingjobs.ferrotrain.io"),
        ("patch", "trainingsweeps.ferrotrain.io"),
    ] {
        assert!(
            !can_i(&cluster, &namespace, "viewer", verb, resource),
            "viewer {verb} {resource}"
        );
    }
    // Nobody else in the namespace gained anything.
    assert!(!can_i(
        &cluster,
        &namespace,
        "stranger",
        "get",
        "trainingjobs.ferrotrain.io"
    ));
}

/// With the admission policy on, a user who may create TrainingJobs but not pods cannot give the
/// workers another service account or a hostPath volume; a user who may create pods can, and a
/// plain job passes for both.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn pod_settings_that_widen_privilege_need_the_right_to_create_pods() {
    let Scenario {
        cluster,
        client: _client,
        installed: _operator,
        namespace,
    } = Scenario::start("vap", "restricted").await;
    let only_here = format!(
        "admissionPolicy.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={namespace}"
    );
    let rendered = render_chart(
        "ferrotrain-vap",
        &namespace,
        &["--set", "admissionPolicy.enabled=true", "--set", &only_here],
    );
    let mut policies = chart_documents(&rendered, "ValidatingAdmissionPolicy", &["-pod-settings"]);
    policies.push_str("---\n");
    policies.push_str(&chart_documents(
        &rendered,
        "ValidatingAdmissionPolicyBinding",
        &["-pod-settings"],
    ));
    cluster.apply(&policies);
    cluster.apply(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: trainingjobs-only, namespace: {namespace}}}
rules:
  - apiGroups: ["ferrotrain.io"]
    resources: ["trainingjobs", "trainingsweeps"]
    verbs: ["get", "list", "create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pods-too, namespace: {namespace}}}
rules:
  - apiGroups: ["ferrotrain.io"]
    resources: ["trainingjobs"]
    verbs: ["get", "list", "create"]
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["create"]
"#
    ));
    bind(
        &cluster,
        &namespace,
        "trainer-user",
        "Role",
        "trainingjobs-only",
    );
    bind(&cluster, &namespace, "pod-user", "Role", "pods-too");
    let host_path = with_overlay("hostpath", host_path_overlay());
    // The policy takes effect a moment after it is created.
    let refusal = wait_for(
        "the policy to refuse hostPath",
        Duration::from_secs(60),
        || async { create_as(&cluster, &namespace, "trainer-user", &host_path).err() },
    )
    .await;
    assert!(
        refusal.contains("spec.workers.template.volumes") && refusal.contains("hostPath"),
        "{refusal}"
    );
    let account = with_overlay(
        "account",
        serde_json::json!({"serviceAccountName": "deployer"}),
    );
    let refusal = create_as(&cluster, &namespace, "trainer-user", &account)
        .expect_err("another service account is refused");
    assert!(
        refusal.contains("spec.workers.template.serviceAccountName"),
        "{refusal}"
    );
    let plain = with_overlay("plain", serde_json::json!({"labels": {"team": "vision"}}));
    create_as(&cluster, &namespace, "trainer-user", &plain).expect("a plain job passes");
    create_as(
        &cluster,
        &namespace,
        "trainer-user",
        &job_manifest("bare", 1, ""),
    )
    .expect("a job without an overlay passes");
    create_as(&cluster, &namespace, "pod-user", &host_path)
        .expect("a user who may create pods may mount hostPath");
    create_as(&cluster, &namespace, "pod-user", &account)
        .expect("a user who may create pods may choose the account");
    // The same rules for a sweep's template.
    let sweep = serde_json::json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingSweep",
        "metadata": {"name": "sweep"},
        "spec": {
            "template": {"workers": host_path["spec"]["workers"].clone(),
                         "trainer": host_path["spec"]["trainer"].clone()},
            "parameters": [{"path": "optimizer.lr", "type": "double", "min": 0.001, "max": 0.1}],
            "objective": {"metric": "valAccuracy"},
            "algorithm": {"type": "random", "seed": 1},
            "maxTrials": 2,
        },
    });
    let refusal = create_as(&cluster, &namespace, "trainer-user", &sweep)
        .expect_err("a sweep's hostPath is refused");
    assert!(
        refusal.contains("spec.template.workers.template.volumes"),
        "{refusal}"
    );
}

/// Pod Security admission applies to the workers: a hostPath volume in a restricted namespace
/// is refused, the job names the refusal, and no worker is created.
#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn a_pod_security_refusal_is_reported_and_no_worker_is_created() {
    let Scenario {
        cluster,
        client,
        installed: _operator,
        namespace,
    } = Scenario::start("psa", "restricted").await;
    let job = {
        let mut job = with_overlay("hostpath", host_path_overlay());
        job["spec"]["workers"]["replicas"] = serde_json::json!(2);
        job
    };
    create_job(&client, &namespace, &job).await;
    let condition = wait_condition(
        &client,
        &namespace,
        "hostpath",
        "WorkersCreated=False",
        60,
        |c| c.type_ == "WorkersCreated" && c.status == "False",
    )
    .await;
    assert_eq!(condition.reason, "PodSecurityRejected", "{condition:?}");
    assert!(
        condition.message.contains("violates PodSecurity")
            && condition.message.contains("hostPath"),
        "{condition:?}"
    );
    let events = cluster.events(&namespace, "PodSecurityRejected");
    assert!(events.contains("hostPath"), "{events}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(job_pods(&client, &namespace, "hostpath").await.is_empty());
}
