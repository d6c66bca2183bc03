//! The committed CRD matches the generated one, is structural, and documents every field.

use ferrotrain_crds::crd;
use ferrotrain_tests::{chart_crd_path, chart_sweep_crd_path, structural, workspace_root};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion;
use serde_json::Value;

#[test]
fn committed_crds_match_the_generated_ones() {
    let pairs = [
        (crd::crd_yaml().expect("renders"), chart_crd_path(), ""),
        (
            crd::sweep_crd_yaml().expect("renders"),
            chart_sweep_crd_path(),
            " sweep",
        ),
    ];
    for (generated, path, argument) in pairs {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale; regenerate it with `cargo run -p ferrotrain-crds --bin crdgen{argument} > {}` (or scripts/gen-crd.sh)",
            path.display(),
            path.strip_prefix(workspace_root())
                .unwrap_or(&path)
                .display()
        );
    }
}

#[test]
fn crd_schemas_are_structural() {
    for schema in [crd::schema_json(), crd::sweep_schema_json()] {
        let violations = structural::violations(&schema);
        assert!(
            violations.is_empty(),
            "structural schema violations:\n{}",
            violations.join("\n")
        );
    }
}

/// The printer columns of a CRD version, by name.
fn column_names(version: &CustomResourceDefinitionVersion) -> Vec<&str> {
    version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect()
}

#[test]
fn sweep_crd_names_and_columns() {
    let crd = crd::sweep_crd();
    assert_eq!(crd.spec.group, "ferrotrain.io");
    assert_eq!(crd.spec.names.kind, "TrainingSweep");
    assert_eq!(crd.spec.names.short_names, Some(vec!["tsw".to_string()]));
    let version = &crd.spec.versions[0];
    let columns = column_names(version);
    assert_eq!(columns, ["Phase", "Trials", "Best", "Metric", "Age"]);
    let schema = crd::sweep_schema_json();
    let path =
        &schema["properties"]["spec"]["properties"]["parameters"]["items"]["properties"]["path"];
    let paths: Vec<&str> = path["enum"]
        .as_array()
        .expect("path is an enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expected in [
        "optimizer.lr",
        "model.dropout",
        "batchSize",
        "optimizer.weightDecay",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} is tunable: {paths:?}"
        );
    }
    assert!(!paths.iter().any(|p| p.starts_with("dataset")), "{paths:?}");
}

#[test]
fn crd_names_subresources_and_columns() {
    let crd = crd::crd();
    assert_eq!(crd.spec.group, "ferrotrain.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "TrainingJob");
    assert_eq!(crd.spec.names.short_names, Some(vec!["tj".to_string()]));
    assert_eq!(
        crd.spec.names.categories,
        Some(vec!["ferrotrain".to_string()])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns = column_names(version);
    assert_eq!(
        columns,
        ["Phase", "Ready", "Progress", "Step", "Loss", "ETA", "Age"]
    );
}

/// Every property of spec and status has a description: it is what `kubectl explain` shows.
#[test]
fn every_field_is_documented() {
    fn walk(node: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let child_path = format!("{path}.{name}");
                if child
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(child_path.clone());
                }
                walk(child, &child_path, missing);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = node.get(key).filter(|c| c.is_object()) {
                walk(child, path, missing);
            }
        }
    }
    let mut missing = Vec::new();
    for schema in [crd::schema_json(), crd::sweep_schema_json()] {
        for root in ["spec", "status"] {
            walk(&schema["properties"][root], root, &mut missing);
        }
    }
    assert!(
        missing.is_empty(),
        "fields without a description:\n{}",
        missing.join("\n")
    );
}
