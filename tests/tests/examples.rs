//! Every manifest in examples/ passes all three layers: the generated CRD schema, its CEL rules
//! and `validate()`.

use ferrotrain::cli::validate::{ValidateSummary, validate_files};
use ferrotrain::manifest::{Admission, parse_documents};
use ferrotrain_tests::workspace_root;

fn example_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(workspace_root().join("examples"))
        .expect("examples directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_passes_schema_cel_and_validate() {
    let admission = Admission::new().expect("schema compiles");
    let files = example_files();
    assert!(
        files.iter().any(|f| f.ends_with("mnist.yaml")),
        "examples/mnist.yaml is the README's job"
    );
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let documents = parse_documents(&text);
        assert!(!documents.is_empty(), "{}: empty", file.display());
        for (index, document) in documents {
            let value =
                document.unwrap_or_else(|e| panic!("{}#{}: {e}", file.display(), index + 1));
            if let Err(errors) = admission.admit_any(&value) {
                panic!("{}#{} is rejected: {errors:?}", file.display(), index + 1);
            }
        }
    }
}

#[test]
fn validate_command_accepts_the_examples_and_names_a_broken_field() {
    let admission = Admission::new().expect("schema compiles");
    let files = example_files();
    let mut out = Vec::new();
    let summary = validate_files(&admission, &files, &mut out).expect("io");
    assert_eq!(summary.invalid, 0, "{}", String::from_utf8_lossy(&out));
    assert!(summary.valid >= files.len());

    let broken = workspace_root().join("tests/manifests/invalid/01-replicas-zero.yaml");
    let mut out = Vec::new();
    let summary = validate_files(&admission, &[&broken], &mut out).expect("io");
    assert_eq!(
        summary,
        ValidateSummary {
            valid: 0,
            invalid: 1
        }
    );
    let text = String::from_utf8(out).expect("utf8");
    assert!(
        text.starts_with(&format!("{}: spec.workers.replicas: ", broken.display())),
        "{text}"
    );
}
