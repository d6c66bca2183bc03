//! The validation table: every file in tests/manifests/invalid/ starts with
//! `# expect: LAYER FIELD` and must be rejected by exactly that layer, at that field.

use std::collections::BTreeMap;

use ferrotrain::manifest::{Admission, parse_documents};
use ferrotrain_tests::workspace_root;

#[test]
fn every_invalid_manifest_is_rejected_by_its_layer_at_its_field() {
    let dir = workspace_root().join("tests/manifests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("invalid manifests directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let admission = Admission::new().expect("schema compiles");
    let mut failures = Vec::new();
    let mut by_layer: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(file).expect("readable");
        let Some((layer, field)) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .and_then(|l| l.split_once(' '))
        else {
            failures.push(format!(
                "{name}: first line must be `# expect: LAYER FIELD`"
            ));
            continue;
        };
        let documents = parse_documents(&text);
        assert_eq!(documents.len(), 1, "{name}: one document per case");
        let value = documents
            .into_iter()
            .next()
            .and_then(|(_, d)| d.ok())
            .expect("parses as YAML");
        match admission.admit_any(&value) {
            Ok(_) => failures.push(format!(
                "{name}: accepted, expected {layer} to reject {field}"
            )),
            Err(errors) => {
                let layers: Vec<String> = errors.iter().map(|e| e.layer.to_string()).collect();
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                if layers.iter().any(|l| l != layer) || !fields.contains(&field) {
                    failures.push(format!(
                        "{name}: expected {layer} at {field}, got {:?}",
                        errors
                            .iter()
                            .map(|e| format!("{} {}: {}", e.layer, e.field, e.message))
                            .collect::<Vec<_>>()
                    ));
                }
                if errors.iter().any(|e| e.message.trim().is_empty()) {
                    failures.push(format!("{name}: an error has no message"));
                }
            }
        }
        *by_layer.entry(layer.to_string()).or_default() += 1;
    }
    println!(
        "validation table coverage by layer: {by_layer:?} ({} files)",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        files.len() >= 40,
        "the table needs at least 40 cases, has {}",
        files.len()
    );
    for layer in ["schema", "cel", "validate"] {
        assert!(
            by_layer.get(layer).copied().unwrap_or(0) >= 10,
            "layer {layer} needs at least 10 cases: {by_layer:?}"
        );
    }
}
