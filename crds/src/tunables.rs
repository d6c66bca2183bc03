//! The fields of `spec.trainer` a TrainingSweep may tune, read from the generated TrainingJob
//! schema (so a field added to the trainer is tunable with the range it already has), and the
//! CEL rules that keep a sweep's values inside each field's range.

use kube::CustomResourceExt;
use serde_json::Value;

use crate::schema::version_schema;
use crate::types::TrainingJob;

/// A numeric field of `spec.trainer` that a sweep may set, with the range the TrainingJob
/// schema gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Tunable {
    /// Path under `spec.trainer`, for example `optimizer.lr`.
    pub path: String,
    /// Whether the field is an integer.
    pub integer: bool,
    /// Inclusive lower bound.
    pub min: Option<f64>,
    /// Inclusive upper bound.
    pub max: Option<f64>,
}

/// Fields of `spec.trainer` that are not hyperparameters: the data, the budget (the sweep's
/// algorithm owns it) and the warm start.
const NOT_TUNABLE: [&str; 5] = [
    "dataset",
    "epochs",
    "maxSteps",
    "initFrom",
    "evalEverySteps",
];

/// Every tunable field, in schema order, from the generated TrainingJob schema.
pub fn tunables() -> Vec<Tunable> {
    let schema = version_schema(&TrainingJob::crd());
    let mut out = Vec::new();
    if let Some(trainer) = schema.pointer("/properties/spec/properties/trainer") {
        collect_tunables(trainer, "", &mut out);
    }
    out
}

fn collect_tunables(schema: &Value, prefix: &str, out: &mut Vec<Tunable>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, field) in properties {
        if prefix.is_empty() && NOT_TUNABLE.contains(&name.as_str()) {
            continue;
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match field.get("type").and_then(Value::as_str) {
            Some("object") => collect_tunables(field, &path, out),
            Some(kind @ ("number" | "integer")) => out.push(Tunable {
                path,
                integer: kind == "integer",
                min: field.get("minimum").and_then(Value::as_f64),
                max: field.get("maximum").and_then(Value::as_f64),
            }),
            _ => {}
        }
    }
}

/// A tunable field's range in words, for messages.
pub fn describe_range(tunable: &Tunable) -> String {
    match (tunable.min, tunable.max) {
        (Some(min), Some(max)) => format!("{min} to {max}"),
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (None, None) => "any number".into(),
    }
}

/// The CEL rules the CRD adds to each parameter: the path is tunable, and its bounds and values
/// lie in the field's range. Generated from [`tunables`].
pub fn parameter_range_rules() -> Vec<Value> {
    tunables()
        .iter()
        .filter(|t| t.min.is_some() || t.max.is_some())
        .map(|t| {
            let within = |v: &str| {
                let mut parts = Vec::new();
                if let Some(min) = t.min {
                    parts.push(format!("{v} >= {}", cel_number(min)));
                }
                if let Some(max) = t.max {
                    parts.push(format!("{v} <= {}", cel_number(max)));
                }
                parts.join(" && ")
            };
            serde_json::json!({
                "rule": format!(
                    "self.path != '{}' || ((!has(self.min) || ({})) && (!has(self.max) || ({})) && (!has(self.values) || self.values.all(v, {})))",
                    t.path,
                    within("self.min"),
                    within("self.max"),
                    within("v"),
                ),
                "message": format!("values of {} must lie in its range, {}", t.path, describe_range(t)),
            })
        })
        .collect()
}

/// A number as a CEL double literal (CEL does not compare int with double).
fn cel_number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}
