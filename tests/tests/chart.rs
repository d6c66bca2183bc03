//! The Helm chart as rendered by helm: RBAC grants exactly the operator's calls, and every pod it
//! runs (and every worker pod the operator builds) meets the restricted Pod Security Standard.
//! Needs helm: scripts/test.sh sets FERROTRAIN_HELM from scripts/check-chart.sh and runs these
//! with `--ignored`.

use std::collections::BTreeSet;
use std::process::Command;

use ferrotrain::cluster::children::{Settings, worker_pod};
use ferrotrain::cluster::controller::RBAC;
use ferrotrain_tests::pss::restricted_violations;
use ferrotrain_tests::workspace_root;
use serde_json::Value;

fn render(args: &[&str]) -> Vec<Value> {
    let helm =
        std::env::var("FERROTRAIN_HELM").expect("FERROTRAIN_HELM: run through scripts/test.sh");
    let output = Command::new(helm)
        .args([
            "template",
            "ferrotrain",
            "charts/ferrotrain",
            "--namespace",
            "ferrotrain",
        ])
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml::Deserializer::from_slice(&output.stdout)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn granted(objects: &[Value], kinds: &[&str]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    // The operator's own roles: the ones that join the built-in user roles grant users.
    for role in objects
        .iter()
        .filter(|o| kinds.contains(&o["kind"].as_str().unwrap_or_default()))
        .filter(|o| !aggregated(o))
    {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in rule["apiGroups"].as_array().into_iter().flatten() {
                for resource in rule["resources"].as_array().into_iter().flatten() {
                    for verb in rule["verbs"].as_array().into_iter().flatten() {
                        out.insert((
                            group.as_str().unwrap_or_default().into(),
                            resource.as_str().unwrap_or_default().into(),
                            verb.as_str().unwrap_or_default().into(),
                        ));
                    }
                }
            }
        }
    }
    out
}

fn aggregated(role: &Value) -> bool {
    role["metadata"]["labels"]
        .as_object()
        .is_some_and(|labels| {
            labels
                .keys()
                .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
        })
}

fn needed() -> BTreeSet<(String, String, String)> {
    RBAC.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
#[ignore = "needs helm: run through scripts/test.sh"]
fn cluster_role_grants_exactly_the_operators_calls() {
    let objects = render(&[]);
    assert_eq!(granted(&objects, &["ClusterRole", "Role"]), needed());
    // Users' roles: edit (and admin) and view, and nothing the operator needs.
    let joins: BTreeSet<String> = objects
        .iter()
        .filter(|o| aggregated(o))
        .flat_map(|o| {
            o["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|(k, v)| k.starts_with("rbac.authorization.k8s.io/") && v == "true")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        joins,
        BTreeSet::from(
            ["admin", "edit", "view"]
                .map(|r| format!("rbac.authorization.k8s.io/aggregate-to-{r}"))
        )
    );
    let without = render(&["--set", "aggregateToDefaultRoles=false"]);
    assert!(!without.iter().any(aggregated));
}

#[test]
#[ignore = "needs helm: run through scripts/test.sh"]
fn namespaced_install_grants_the_same_calls_except_nodes() {
    let objects = render(&["--set", "watchNamespace=ml"]);
    assert!(
        objects.iter().all(|o| o["kind"] != "ClusterRole"),
        "a namespaced install has no ClusterRole"
    );
    let mut expected = needed();
    expected.retain(|(_, resource, _)| resource != "nodes");
    assert_eq!(granted(&objects, &["Role"]), expected);
}

#[test]
#[ignore = "needs helm: run through scripts/test.sh"]
fn every_pod_meets_the_restricted_pod_security_standard() {
    let objects = render(&["--set", "minio.enabled=true"]);
    let mut checked = 0;
    for object in &objects {
        let spec = &object["spec"]["template"]["spec"];
        if spec.is_object() {
            let violations = restricted_violations(spec);
            assert!(
                violations.is_empty(),
                "{} {}: {violations:?}",
                object["kind"],
                object["metadata"]["name"]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "operator, MinIO and the bucket job");
    let job = serde_yaml::from_str(
        &std::fs::read_to_string(workspace_root().join("examples/lenet-gpu.yaml"))
            .expect("example"),
    )
    .expect("job");
    let settings = Settings {
        default_image: "ferrotrain-trainer:0.1.0".into(),
        progress_base_url: "http://ferrotrain:8080".into(),
        worker_network_policy: true,
        progress_ca: None,
    };
    let pod = serde_json::to_value(worker_pod(&job, &settings, 1, 4, 0)).expect("json");
    assert_eq!(
        restricted_violations(&pod["spec"]),
        Vec::<String>::new(),
        "worker pods"
    );
}

#[test]
#[ignore = "needs helm: run through scripts/test.sh"]
fn the_service_monitor_needs_the_prometheus_operators_crd() {
    let kinds = |objects: Vec<Value>| {
        objects
            .iter()
            .filter(|o| o["kind"] == "ServiceMonitor")
            .count()
    };
    assert_eq!(
        kinds(render(&["--set", "serviceMonitor.enabled=true"])),
        0,
        "without the CRD the install would fail"
    );
    assert_eq!(
        kinds(render(&[
            "--set",
            "serviceMonitor.enabled=true",
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
        ])),
        1
    );
}

#[test]
#[ignore = "needs helm: run through scripts/test.sh"]
fn each_release_has_its_own_lease_and_replicas_advertise_their_progress_endpoint() {
    let objects = render(&[]);
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the operator Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--lease-name=ferrotrain"), "{args:?}");
    assert!(
        args.contains(&"--advertise-url=http://$(POD_IP):8080"),
        "{args:?}"
    );
    let env: Vec<&str> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(env.contains(&"POD_IP"), "{env:?}");
}
