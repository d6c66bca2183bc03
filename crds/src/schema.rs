//! The OpenAPI v3 schema of a CustomResourceDefinition's served version, as JSON: what offline
//! admission validates against and what the sweep's tunable fields are read from.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The schema of the CRD's first (only) version; `Null` when it has none.
pub fn version_schema(crd: &CustomResourceDefinition) -> serde_json::Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(serde_json::Value::Null)
}
