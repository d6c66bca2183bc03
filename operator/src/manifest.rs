//! Admission of TrainingJob and TrainingSweep manifests offline, in the order an API server would apply them, then
//! Ferrotrain's own checks: (1) the generated OpenAPI schema, with unknown fields rejected as
//! `kubectl apply`'s strict field validation does; (2) the CEL rules of the CRD; (3)
//! [`ferrotrain_crds::validate`]. `ferrotrain validate`, `ferrotrain run` and the tests share it.

use std::fmt;

use ferrotrain_crds::sweep::{TrainingSweep, TrialStatus};
use ferrotrain_crds::{TrainingJob, crd};
use serde_json::{Map, Value};

/// The layer that rejected a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Not a TrainingJob document at all (YAML syntax, kind, apiVersion).
    Document,
    /// The CRD's OpenAPI v3 schema.
    Schema,
    /// The CRD's `x-kubernetes-validations` CEL rules.
    Cel,
    /// `ferrotrain_crds::validate`.
    Semantic,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Document => "document",
            Layer::Schema => "schema",
            Layer::Cel => "cel",
            Layer::Semantic => "validate",
        })
    }
}

/// One problem found in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The layer that found it.
    pub layer: Layer,
    /// Full field path, for example `spec.workers.replicas`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ManifestError {
    fn new(layer: Layer, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            layer,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl ManifestError {
    /// The line `ferrotrain validate` and `ferrotrain run` print: `FILE: FIELD: MESSAGE`.
    pub fn in_file(&self, file: &str) -> String {
        if self.field.is_empty() {
            format!("{file}: {}", self.message)
        } else {
            format!("{file}: {}: {}", self.field, self.message)
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The checker could not be built from the generated CRD (a bug in the CRD, not user input).
#[derive(Debug, thiserror::Error)]
#[error("the generated CRD schema is not a valid JSON schema: {0}")]
pub struct SchemaCompileError(String);

/// The compiled schema of one kind.
struct Checker {
    kind: &'static str,
    schema: Value,
    validator: jsonschema::Validator,
}

impl Checker {
    fn new(kind: &'static str, schema: Value) -> Result<Self, SchemaCompileError> {
        let validator =
            jsonschema::draft4::new(&schema).map_err(|e| SchemaCompileError(e.to_string()))?;
        Ok(Self {
            kind,
            schema,
            validator,
        })
    }
}

/// A document admitted as one of Ferrotrain's kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum Admitted {
    /// A TrainingJob.
    Job(Box<TrainingJob>),
    /// A TrainingSweep.
    Sweep(Box<TrainingSweep>),
}

/// Validates TrainingJob and TrainingSweep documents against the generated CRDs.
pub struct Admission {
    job: Checker,
    sweep: Checker,
    cel: kube_cel::Validator,
}

impl Admission {
    /// Compiles the generated CRDs' schemas.
    pub fn new() -> Result<Self, SchemaCompileError> {
        Ok(Self {
            job: Checker::new("TrainingJob", crd::schema_json())?,
            sweep: Checker::new("TrainingSweep", crd::sweep_schema_json())?,
            cel: kube_cel::Validator::new(),
        })
    }

    /// Admits a new TrainingJob; on success returns the typed job.
    pub fn admit(&self, object: &Value) -> Result<TrainingJob, Vec<ManifestError>> {
        self.admit_update(object, None)
    }

    /// Admits a TrainingJob, evaluating transition rules against `old` when it replaces one.
    pub fn admit_update(
        &self,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<TrainingJob, Vec<ManifestError>> {
        check_type_meta(object, &[self.job.kind])?;
        let job: TrainingJob = self.check(&self.job, object, old)?;
        ferrotrain_crds::validate(&job).map_err(semantic)?;
        Ok(job)
    }

    /// Admits a new TrainingSweep: its schema, CEL rules and checks, then the trials it would
    /// create, each as a TrainingJob, with every parameter at its lowest and at its highest
    /// value.
    pub fn admit_sweep(&self, object: &Value) -> Result<TrainingSweep, Vec<ManifestError>> {
        check_type_meta(object, &[self.sweep.kind])?;
        let sweep: TrainingSweep = self.check(&self.sweep, object, None)?;
        ferrotrain_crds::sweep::validate_sweep(&sweep).map_err(semantic)?;
        let errors = self.check_trials(&sweep);
        if errors.is_empty() {
            Ok(sweep)
        } else {
            Err(errors)
        }
    }

    /// Admits a document of either kind, by its `kind`.
    pub fn admit_any(&self, object: &Value) -> Result<Admitted, Vec<ManifestError>> {
        check_type_meta(object, &[self.job.kind, self.sweep.kind])?;
        if object.get("kind").and_then(Value::as_str) == Some(self.sweep.kind) {
            self.admit_sweep(object)
                .map(|s| Admitted::Sweep(Box::new(s)))
        } else {
            self.admit(object).map(|j| Admitted::Job(Box::new(j)))
        }
    }

    fn check<T: serde::de::DeserializeOwned>(
        &self,
        checker: &Checker,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<T, Vec<ManifestError>> {
        let mut errors = Vec::new();
        let explain = checker.kind.to_lowercase();
        let object =
            strip_nulls_and_find_unknown(object, &checker.schema, "", &explain, &mut errors);
        errors.extend(checker.validator.iter_errors(&object).map(|e| {
            let mut field = pointer_to_field(e.instance_path().as_str());
            if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind() {
                let name = property.as_str().unwrap_or_default();
                field = join(&field, name);
                return ManifestError::new(Layer::Schema, field, "Required value");
            }
            ManifestError::new(Layer::Schema, field, e.to_string())
        }));
        if !errors.is_empty() {
            return Err(errors);
        }
        if let Err(cel_errors) = self.cel.validate(&checker.schema, &object, old) {
            return Err(cel_errors
                .into_vec()
                .into_iter()
                .map(|e| ManifestError::new(Layer::Cel, e.field_path.clone(), e.message.clone()))
                .collect());
        }
        // What the schema admits but the types cannot hold (an integer beyond i64, for
        // example) is named by its field too.
        serde_path_to_error::deserialize(object).map_err(|e| {
            let field = e.path().to_string();
            vec![ManifestError::new(
                Layer::Schema,
                if field == "." { String::new() } else { field },
                e.into_inner().to_string(),
            )]
        })
    }

    /// The trials of a sweep at the extremes of its parameters, admitted as TrainingJobs; their
    /// errors point into `spec.template`.
    fn check_trials(&self, sweep: &TrainingSweep) -> Vec<ManifestError> {
        let mut errors: Vec<ManifestError> = Vec::new();
        for (label, highest) in [("lowest", false), ("highest", true)] {
            let parameters = sweep
                .spec
                .parameters
                .iter()
                .filter_map(|p| {
                    let values = crate::decide::sweep::sampling::grid_values(p);
                    let value = if highest {
                        values.last()
                    } else {
                        values.first()
                    };
                    value.map(|v| (p.path.clone(), *v))
                })
                .collect();
            let trial = TrialStatus {
                name: crate::decide::sweep::trials::trial_name(sweep, 0),
                parameters,
                ..TrialStatus::default()
            };
            let found: Vec<ManifestError> =
                match crate::decide::sweep::trials::trial_spec(sweep, &trial) {
                    Err(message) => vec![ManifestError::new(
                        Layer::Semantic,
                        "spec.parameters",
                        message,
                    )],
                    Ok(spec) => {
                        let job =
                            crate::decide::sweep::trials::trial_object(sweep, &trial.name, &spec);
                        self.admit(&job)
                            .err()
                            .unwrap_or_default()
                            .into_iter()
                            // Only Ferrotrain makes this check: the API server admits the sweep.
                            .map(|e| ManifestError {
                                layer: Layer::Semantic,
                                field: e.field.replacen("spec.", "spec.template.", 1),
                                message: format!(
                                    "{} (in the trial with every parameter at its {label} value)",
                                    e.message
                                ),
                            })
                            .collect()
                    }
                };
            for error in found {
                if !errors.iter().any(|e| e.field == error.field) {
                    errors.push(error);
                }
            }
        }
        errors
    }
}

fn semantic(errors: Vec<ferrotrain_crds::FieldError>) -> Vec<ManifestError> {
    errors
        .into_iter()
        .map(|e| ManifestError::new(Layer::Semantic, e.field, e.message))
        .collect()
}

/// One YAML document of a file: its 0-based index and content, or why it does not parse.
pub type Document = (usize, Result<Value, ManifestError>);

/// Splits a (multi-document) YAML text. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Vec<Document> {
    // Editors on some systems save UTF-8 with a byte-order mark; YAML parsers reject it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut documents = Vec::new();
    // Each document is parsed on its own: a YAML parser cannot resynchronise after a syntax
    // error, which would hide every document after a broken one.
    for (index, document) in split_documents(text).into_iter().enumerate() {
        // Through YAML's own values first: JSON has no NaN or infinity, and converting would turn
        // `.nan` into null, that is into the field's default.
        let parsed = serde_yaml::from_str::<serde_yaml::Value>(document).and_then(|yaml| {
            let mut non_finite = Vec::new();
            find_non_finite(&yaml, "", &mut non_finite);
            Ok((serde_yaml::from_value::<Value>(yaml)?, non_finite))
        });
        match parsed {
            Ok((Value::Null, _)) => {}
            Ok((_, non_finite)) if !non_finite.is_empty() => documents.push((
                index,
                Err(ManifestError::new(
                    Layer::Schema,
                    &non_finite[0].0,
                    format!("must be a finite number, not {}", non_finite[0].1),
                )),
            )),
            Ok((value, _)) => documents.push((index, Ok(value))),
            Err(e) => documents.push((index, Err(yaml_error(&e)))),
        }
    }
    documents
}

/// A YAML error as a manifest error. YAML values hold integers of up to 64 bits, and a larger one
/// fails the parse with a message about `u128`; it is a field out of range, named as such.
fn yaml_error(e: &serde_yaml::Error) -> ManifestError {
    let text = e.to_string();
    if let Some((path, rest)) = text.split_once(": invalid type: integer `")
        && let Some((digits, kind)) = rest.split_once('`')
        && (kind.starts_with(" as u128") || kind.starts_with(" as i128"))
    {
        return ManifestError::new(
            Layer::Schema,
            path,
            format!(
                "{digits} is out of range: integers are at most 64 bits ({} to {})",
                i64::MIN,
                u64::MAX
            ),
        );
    }
    ManifestError::new(Layer::Document, "", format!("invalid YAML: {text}"))
}

/// The documents of a YAML stream, split at `---` marker lines (a marker at the first column
/// always starts a document in YAML). A marker on the first line opens the first document.
fn split_documents(text: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let marker = line.trim_end_matches(['\n', '\r']);
        if marker == "---" || marker.starts_with("--- ") || marker.starts_with("---\t") {
            if offset > 0 {
                documents.push(&text[start..offset]);
            }
            // The marker line may carry content (`--- {a: 1}`): keep it, without the marker.
            start = offset + 3;
        }
        offset += line.len();
    }
    if start < text.len() || documents.is_empty() {
        documents.push(&text[start.min(text.len())..]);
    }
    documents
}

/// Paths of the NaN and infinite numbers in a YAML document.
fn find_non_finite(value: &serde_yaml::Value, path: &str, found: &mut Vec<(String, f64)>) {
    match value {
        serde_yaml::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| !f.is_finite()) {
                found.push((path.to_string(), f));
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                find_non_finite(item, &format!("{path}[{i}]"), found);
            }
        }
        serde_yaml::Value::Mapping(map) => {
            for (key, item) in map {
                let key = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_string);
                let path = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                find_non_finite(item, &path, found);
            }
        }
        serde_yaml::Value::Tagged(tagged) => find_non_finite(&tagged.value, path, found),
        _ => {}
    }
}

fn check_type_meta(object: &Value, kinds: &[&str]) -> Result<(), Vec<ManifestError>> {
    let Some(map) = object.as_object() else {
        return Err(vec![ManifestError::new(
            Layer::Document,
            "",
            "a manifest must be a mapping with apiVersion, kind, metadata and spec",
        )]);
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str);
    let kind = map.get("kind").and_then(Value::as_str);
    let mut errors = Vec::new();
    if !kind.is_some_and(|k| kinds.contains(&k)) {
        let expected = kinds
            .iter()
            .map(|k| format!("kind: {k}"))
            .collect::<Vec<_>>()
            .join(" or ");
        errors.push(ManifestError::new(
            Layer::Document,
            "kind",
            format!(
                "{} is not a {}; this takes {expected}",
                describe(kind),
                kinds.join(" or a ")
            ),
        ));
    }
    if api_version != Some("ferrotrain.io/v1alpha1") {
        errors.push(ManifestError::new(
            Layer::Document,
            "apiVersion",
            format!(
                "{} is not served; use apiVersion: ferrotrain.io/v1alpha1",
                describe(api_version)
            ),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn describe(value: Option<&str>) -> String {
    value.map_or_else(|| "(missing)".to_string(), |v| format!("{v:?}"))
}

const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Drops nulls the schema allows (`nullable`), and reports fields the schema does not know, as
/// strict field validation would. Returns the cleaned object.
fn strip_nulls_and_find_unknown(
    value: &Value,
    schema: &Value,
    path: &str,
    explain: &str,
    errors: &mut Vec<ManifestError>,
) -> Value {
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return value.clone();
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let mut cleaned = Map::new();
            for (key, item) in map {
                let field = join(path, key);
                // Every object has these; the API server checks them itself, outside the CRD schema.
                if path.is_empty() && ROOT_FIELDS.contains(&key.as_str()) {
                    cleaned.insert(key.clone(), item.clone());
                    continue;
                }
                let item_schema = properties.and_then(|p| p.get(key)).or(additional);
                match item_schema {
                    Some(item_schema) => {
                        let nullable = item_schema.get("nullable").and_then(Value::as_bool) == Some(true);
                        if item.is_null() && nullable {
                            continue;
                        }
                        cleaned.insert(key.clone(), strip_nulls_and_find_unknown(item, item_schema, &field, explain, errors));
                    }
                    None if properties.is_some() => errors.push(ManifestError::new(
                        Layer::Schema,
                        field,
                        format!("unknown field {key:?}; check the spelling against `kubectl explain {explain}.{}`", path_for_explain(path)),
                    )),
                    None => {
                        cleaned.insert(key.clone(), item.clone());
                    }
                }
            }
            Value::Object(cleaned)
        }
        Value::Array(items) => match schema.get("items") {
            Some(item_schema) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        strip_nulls_and_find_unknown(
                            item,
                            item_schema,
                            &format!("{path}[{i}]"),
                            explain,
                            errors,
                        )
                    })
                    .collect(),
            ),
            None => value.clone(),
        },
        other => other.clone(),
    }
}

fn path_for_explain(path: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `/spec/workers/0/name` → `spec.workers[0].name`.
fn pointer_to_field(pointer: &str) -> String {
    let mut field = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            field.push_str(&format!("[{segment}]"));
        } else {
            field = join(&field, &segment);
        }
    }
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).expect("test yaml")
    }

    const JOB: &str = r#"
apiVersion: ferrotrain.io/v1alpha1
kind: TrainingJob
metadata: {name: mnist}
spec:
  workers: {replicas: 2}
  trainer:
    model: {type: mlp, hidden: [128]}
    dataset: {type: mnist}
    batchSize: 64
    epochs: 1
"#;

    #[test]
    fn a_valid_job_passes_every_layer() {
        let admission = Admission::new().expect("schema compiles");
        let job = admission.admit(&yaml(JOB)).expect("valid");
        assert_eq!(job.spec.workers.replicas, 2);
    }

    #[test]
    fn model_and_dataset_are_immutable_on_update() {
        let admission = Admission::new().expect("schema compiles");
        let old = yaml(JOB);
        let mut changed = old.clone();
        changed["spec"]["trainer"]["model"]["hidden"] = serde_json::json!([64]);
        let errors = admission
            .admit_update(&changed, Some(&old))
            .expect_err("model changed");
        assert_eq!(errors[0].layer, Layer::Cel);
        assert_eq!(errors[0].field, "spec.trainer.model");
        let mut changed = old.clone();
        changed["spec"]["trainer"]["dataset"] =
            serde_json::json!({"type": "csv", "uri": "file:///d.csv"});
        let errors = admission
            .admit_update(&changed, Some(&old))
            .expect_err("dataset changed");
        assert_eq!(errors[0].field, "spec.trainer.dataset");
        // Mutable fields may change, and creation has no old object to compare with.
        let mut changed = old.clone();
        changed["spec"]["trainer"]["batchSize"] = serde_json::json!(128);
        assert!(admission.admit_update(&changed, Some(&old)).is_ok());
    }

    #[test]
    fn unknown_fields_and_nullable_nulls() {
        let admission = Admission::new().expect("schema compiles");
        let mut job = yaml(JOB);
        job["spec"]["workers"]["minReplicas"] = Value::Null;
        assert!(
            admission.admit(&job).is_ok(),
            "null for an optional field is absent"
        );
        job["spec"]["workers"]["replica"] = serde_json::json!(3);
        let errors = admission.admit(&job).expect_err("typo");
        assert_eq!(errors[0].field, "spec.workers.replica");
        assert_eq!(errors[0].layer, Layer::Schema);
    }

    #[test]
    fn nan_and_infinity_are_refused_where_they_are_written() {
        let text = JOB.replace(
            "    epochs: 1\n",
            "    epochs: 1\n    optimizer: {type: adam, lr: .nan}\n",
        );
        let docs = parse_documents(&text);
        let error = docs[0]
            .1
            .as_ref()
            .expect_err("NaN is not a number a job can use");
        assert_eq!(
            (error.layer, error.field.as_str()),
            (Layer::Schema, "spec.trainer.optimizer.lr")
        );
        assert!(error.message.contains("finite"), "{}", error.message);
        let docs = parse_documents("a: {b: [1, -.inf]}\n");
        let error = docs[0].1.as_ref().expect_err("infinity");
        assert_eq!(error.field, "a.b[1]");
    }

    #[test]
    fn an_integer_beyond_64_bits_is_a_field_out_of_range() {
        let text = JOB.replace(
            "    epochs: 1\n",
            "    epochs: 1\n    seed: 18446744073709551616\n",
        );
        let docs = parse_documents(&text);
        let error = docs[0].1.as_ref().expect_err("2^64 is no seed");
        assert_eq!(
            (error.layer, error.field.as_str()),
            (Layer::Schema, "spec.trainer.seed")
        );
        assert_eq!(
            error.message,
            "18446744073709551616 is out of range: integers are at most 64 bits (-9223372036854775808 to 18446744073709551615)"
        );
        let text = JOB.replace("    epochs: 1\n", "    epochs: -99999999999999999999\n");
        let error = parse_documents(&text)[0].1.clone().expect_err("below i64");
        assert_eq!(error.field, "spec.trainer.epochs");
    }

    #[test]
    fn a_byte_order_mark_is_not_an_error() {
        let docs = parse_documents(&format!("\u{feff}{JOB}"));
        assert!(docs[0].1.is_ok(), "{:?}", docs[0].1);
    }

    #[test]
    fn a_broken_document_does_not_hide_the_next_ones() {
        let docs = parse_documents("a: [1\n---\nb: 2\n--- {c: 3}\n");
        assert_eq!(docs.len(), 3);
        assert!(docs[0].1.is_err());
        assert_eq!(docs[1].1.as_ref().ok(), Some(&serde_json::json!({"b": 2})));
        assert_eq!(docs[2].1.as_ref().ok(), Some(&serde_json::json!({"c": 3})));
        assert_eq!(
            (docs[1].0, docs[2].0),
            (1, 2),
            "documents keep their numbers"
        );
    }

    #[test]
    fn documents_and_paths() {
        let docs = parse_documents("---\na: 1\n---\n---\nb: [1\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[0].1.is_ok());
        assert!(docs[1].1.is_err());
        assert_eq!(
            pointer_to_field("/spec/workers/template/env/0/name"),
            "spec.workers.template.env[0].name"
        );
        assert_eq!(
            path_for_explain("spec.workers.template.env[0]"),
            "spec.workers.template.env"
        );
    }
}
