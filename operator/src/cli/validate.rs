//! The `ferrotrain` subcommands, as functions over paths and writers so they can be tested.

use std::io::Write;
use std::path::Path;

use crate::manifest::{Admission, Admitted, parse_documents};

/// Outcome of `ferrotrain validate` over a set of files.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ValidateSummary {
    /// Objects that passed every layer.
    pub valid: usize,
    /// Documents (or unreadable files) with at least one error.
    pub invalid: usize,
}

/// Validates every TrainingJob and TrainingSweep document in `paths`, writing one line per error
/// (`FILE: FIELD: MESSAGE`) and one line per valid object.
pub fn validate_files(
    admission: &Admission,
    paths: &[impl AsRef<Path>],
    out: &mut impl Write,
) -> std::io::Result<ValidateSummary> {
    let mut summary = ValidateSummary::default();
    for path in paths {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                writeln!(out, "{}: cannot read: {e}", path.display())?;
                summary.invalid += 1;
                continue;
            }
        };
        let documents = parse_documents(&text);
        if documents.is_empty() {
            writeln!(out, "{}: no YAML documents", path.display())?;
            summary.invalid += 1;
            continue;
        }
        let many = documents.len() > 1;
        for (index, document) in documents {
            let name = if many {
                format!("{}#{}", path.display(), index + 1)
            } else {
                path.display().to_string()
            };
            let result = document
                .map_err(|e| vec![e])
                .and_then(|value| admission.admit_any(&value));
            match result {
                Ok(admitted) => {
                    summary.valid += 1;
                    let (kind, object_name) = match &admitted {
                        Admitted::Job(job) => ("TrainingJob", job.metadata.name.clone()),
                        Admitted::Sweep(sweep) => ("TrainingSweep", sweep.metadata.name.clone()),
                    };
                    writeln!(
                        out,
                        "{name}: {kind} {} is valid (schema, CEL rules, semantic checks)",
                        object_name.unwrap_or_default()
                    )?;
                }
                Err(errors) => {
                    summary.invalid += 1;
                    for error in errors {
                        writeln!(out, "{}", error.in_file(&name))?;
                    }
                }
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_error_with_file_and_field_and_counts_documents() {
        let dir = std::env::temp_dir().join(format!("ferrotrain-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("jobs.yaml");
        std::fs::write(
            &file,
            "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: ok}\nspec:\n  workers: {replicas: 1}\n  trainer: {model: {type: logistic}, dataset: {type: mnist}, batchSize: 8, epochs: 1}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        )
        .expect("write");
        let admission = Admission::new().expect("schema");
        let mut out = Vec::new();
        let summary = validate_files(&admission, &[&file], &mut out).expect("io");
        assert_eq!(
            summary,
            ValidateSummary {
                valid: 1,
                invalid: 1
            }
        );
        let text = String::from_utf8(out).expect("utf8");
        let shown = file.display().to_string();
        assert!(
            text.contains(&format!("{shown}#1: TrainingJob ok is valid")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{shown}#2: kind: \"ConfigMap\" is not a TrainingJob"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("{shown}#2: apiVersion: \"v1\" is not served")),
            "{text}"
        );
        let missing =
            validate_files(&admission, &[dir.join("absent.yaml")], &mut Vec::new()).expect("io");
        assert_eq!(missing.invalid, 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
