//! Semantic validation: the rules the OpenAPI schema and CEL cannot express (URI schemes, quantity
//! arithmetic, names that must fit a pod hostname, reserved names of the env contract). The
//! operator and the local runner call [`validate`] before acting on a job.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::env;
pub use crate::field_error::FieldError;
use crate::formats::{
    MAX_DNS_LABEL, Scheme, is_dns1035_label, is_label_value, is_qualified_name, parse_quantity,
    parse_storage_uri,
};
use crate::run_policy::{CheckpointSpec, FailurePolicy, FailureReason};
use crate::trainer_spec::DatasetKind;
use crate::types::{PodOverlay, TrainingJob, TrainingJobSpec, WorkersSpec};
use crate::validate_trainer::validate_trainer;
pub use crate::validate_trainer::validate_trainer_spec;

/// Label and annotation prefix owned by the operator.
pub const RESERVED_LABEL_PREFIX: &str = "ferrotrain.io/";

/// Volume name of the operator's scratch emptyDir.
pub const SCRATCH_VOLUME: &str = "scratch";

/// Extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The API server's limit on the total size of an object's annotations (keys and values).
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// The largest object the API server stores (etcd's default request limit): every worker pod
/// carries the overlay, so the overlay must fit with room for the rest of the pod.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// Checks everything about a job that the schema and CEL rules cannot; returns every problem.
pub fn validate(job: &TrainingJob) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    validate_name(job, &mut errors);
    validate_workers(&job.spec.workers, &mut errors);
    validate_trainer(&job.spec.trainer, &mut errors);
    if let Some(checkpoint) = &job.spec.checkpoint {
        validate_checkpoint(checkpoint, &mut errors);
    }
    validate_output(&job.spec, &mut errors);
    if let Some(policy) = &job.spec.run_policy {
        let overlay_class = job
            .spec
            .workers
            .template
            .as_ref()
            .and_then(|t| t.priority_class_name.as_ref());
        if let (Some(a), Some(b)) = (&policy.priority_class_name, overlay_class)
            && a != b
        {
            errors.push(FieldError::new(
                "spec.workers.template.priorityClassName",
                format!(
                    "conflicts with spec.runPolicy.priorityClassName {a:?}; set only one of them"
                ),
            ));
        }
        if let Some(failure_policy) = &policy.failure_policy {
            validate_failure_policy(failure_policy, &mut errors);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The rules of `spec.output` that the schema cannot express.
fn validate_output(spec: &TrainingJobSpec, errors: &mut Vec<FieldError>) {
    let Some(output) = &spec.output else { return };
    match parse_storage_uri(&output.uri) {
        Err(message) => errors.push(FieldError::new("spec.output.uri", message)),
        Ok(parsed) if parsed.scheme == Scheme::S3 && spec.checkpoint.is_none() => {
            errors.push(FieldError::new(
                "spec.output.uri",
                "an s3:// output is written with spec.checkpoint's endpoint, region and \
                 credentials; add spec.checkpoint",
            ));
        }
        Ok(_) => {}
    }
    let formats = output.formats.as_deref().unwrap_or_default();
    for (i, format) in formats.iter().enumerate() {
        if formats[..i].contains(format) {
            errors.push(FieldError::new(
                format!("spec.output.formats[{i}]"),
                format!("{format:?} is listed twice"),
            ));
        }
    }
    if spec.trainer.dataset.kind == DatasetKind::Csv {
        errors.push(FieldError::new(
            "spec.output",
            "a model trained on CSV reads features standardised with its training split's mean \
             and deviation, which an export does not record; only image models are exported",
        ));
    }
}

/// Rules are tried in order, so a code or reason an earlier rule (or the same rule) already
/// names can never reach a later one: that is a mistake, not a policy.
fn validate_failure_policy(policy: &FailurePolicy, errors: &mut Vec<FieldError>) {
    let mut codes: BTreeMap<i32, usize> = BTreeMap::new();
    let mut reasons: Vec<(FailureReason, usize)> = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        let base = format!("spec.runPolicy.failurePolicy.rules[{index}]");
        for (i, code) in rule.on_exit_codes.iter().flatten().enumerate() {
            if let Some(&first) = codes.get(code) {
                errors.push(FieldError::new(
                    format!("{base}.onExitCodes[{i}]"),
                    format!(
                        "exit code {code} is already matched by rules[{first}]; rules are tried in order, so this one would never apply to it"
                    ),
                ));
            } else {
                codes.insert(*code, index);
            }
        }
        for (i, reason) in rule.on_reasons.iter().flatten().enumerate() {
            if let Some((_, first)) = reasons.iter().find(|(r, _)| r == reason) {
                errors.push(FieldError::new(
                    format!("{base}.onReasons[{i}]"),
                    format!(
                        "{reason:?} is already matched by rules[{first}]; rules are tried in order, so this one would never apply to it"
                    ),
                ));
            } else {
                reasons.push((*reason, index));
            }
        }
    }
}

fn validate_name(job: &TrainingJob, errors: &mut Vec<FieldError>) {
    let annotation_bytes: usize = job
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if annotation_bytes > MAX_ANNOTATION_BYTES {
        errors.push(FieldError::new(
            "metadata.annotations",
            format!(
                "total {annotation_bytes} bytes; the API server accepts at most {MAX_ANNOTATION_BYTES} (256 KiB)"
            ),
        ));
    }
    let Some(name) = job.metadata.name.as_deref() else {
        errors.push(FieldError::new("metadata.name", "is required"));
        return;
    };
    if !is_dns1035_label(name) {
        errors.push(FieldError::new(
            "metadata.name",
            format!(
                "{name:?} must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, ending with a letter or digit): it names the workers' headless Service"
            ),
        ));
        return;
    }
    let last_rank = job.spec.workers.replicas.max(1) - 1;
    let longest_pod = format!("{name}-worker-{last_rank}");
    if longest_pod.len() > MAX_DNS_LABEL {
        errors.push(FieldError::new(
            "metadata.name",
            format!(
                "is too long: worker pod {longest_pod:?} would exceed the 63-character hostname limit; use at most {} characters",
                MAX_DNS_LABEL - (longest_pod.len() - name.len())
            ),
        ));
    }
}

fn validate_workers(workers: &WorkersSpec, errors: &mut Vec<FieldError>) {
    if let Some(min) = workers.min_replicas
        && min > workers.replicas
    {
        errors.push(FieldError::new(
            "spec.workers.minReplicas",
            format!(
                "{min} exceeds replicas {}; lower it or raise replicas",
                workers.replicas
            ),
        ));
    }
    if let Some(image) = &workers.image
        && (image.trim() != image || image.contains(char::is_whitespace) || image.starts_with('-'))
    {
        errors.push(FieldError::new(
            "spec.workers.image",
            format!("{image:?} is not an image reference; use e.g. ghcr.io/org/trainer:1.0"),
        ));
    }
    if let Some(resources) = &workers.resources {
        validate_resources(resources, errors);
    }
    if let Some(overlay) = &workers.template {
        validate_overlay(overlay, errors);
    }
}

fn validate_resources(
    resources: &k8s_openapi::api::core::v1::ResourceRequirements,
    errors: &mut Vec<FieldError>,
) {
    let lists = [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ];
    for (list, map) in lists {
        for (name, quantity) in map.iter().flatten() {
            let field = format!("spec.workers.resources.{list}.{name}");
            match parse_quantity(quantity) {
                None => errors.push(FieldError::new(
                    field,
                    format!("{:?} is not a quantity; use e.g. 500m, 2, 4Gi", quantity.0),
                )),
                Some(v) if v < 0.0 => {
                    errors.push(FieldError::new(field, "must not be negative"));
                }
                Some(v) if name == GPU_RESOURCE && v.fract() != 0.0 => {
                    errors.push(FieldError::new(
                        field,
                        format!("GPUs are whole devices; {v} is not a whole number"),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    let get = |map: &Option<std::collections::BTreeMap<String, Quantity>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .and_then(parse_quantity)
    };
    for name in ["cpu", "memory", GPU_RESOURCE] {
        if let (Some(req), Some(lim)) =
            (get(&resources.requests, name), get(&resources.limits, name))
        {
            if req > lim {
                errors.push(FieldError::new(
                    format!("spec.workers.resources.requests.{name}"),
                    format!("request exceeds the limit ({req} > {lim}); raise the limit or lower the request"),
                ));
            } else if name == GPU_RESOURCE && req != lim {
                errors.push(FieldError::new(
                    format!("spec.workers.resources.requests.{name}"),
                    "GPU requests must equal limits; set both to the same number",
                ));
            }
        }
    }
}

fn validate_overlay(overlay: &PodOverlay, errors: &mut Vec<FieldError>) {
    let base = "spec.workers.template";
    for (kind, map) in [
        ("labels", &overlay.labels),
        ("annotations", &overlay.annotations),
    ] {
        for (key, value) in map {
            if key.starts_with(RESERVED_LABEL_PREFIX) {
                errors.push(FieldError::new(
                    format!("{base}.{kind}[{key}]"),
                    format!("keys under {RESERVED_LABEL_PREFIX} are set by the operator; choose another prefix"),
                ));
            } else if !is_qualified_name(key) {
                errors.push(FieldError::new(
                    format!("{base}.{kind}[{key}]"),
                    "is not a valid key: use an optional DNS prefix and '/', then up to 63 alphanumerics, '-', '_' or '.'",
                ));
            } else if kind == "labels" && !is_label_value(value) {
                errors.push(FieldError::new(
                    format!("{base}.labels[{key}]"),
                    format!("{value:?} is not a valid label value: at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"),
                ));
            }
        }
    }
    // Copied onto every worker pod, where the API server applies its own limits.
    let annotation_bytes: usize = overlay
        .annotations
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if annotation_bytes > MAX_ANNOTATION_BYTES {
        errors.push(FieldError::new(
            format!("{base}.annotations"),
            format!("total {annotation_bytes} bytes; the API server accepts at most {MAX_ANNOTATION_BYTES} (256 KiB) on each worker pod"),
        ));
    }
    let overlay_bytes = serde_json::to_vec(overlay).map_or(0, |bytes| bytes.len());
    if overlay_bytes > MAX_OBJECT_BYTES - 64 * 1024 {
        errors.push(FieldError::new(
            base,
            format!("{overlay_bytes} bytes; every worker pod carries it, and the API server stores objects of at most 1.5 MiB (leave 64 KiB for the rest of the pod)"),
        ));
    }
    for (i, var) in overlay.env.iter().enumerate() {
        if env::is_reserved(&var.name) {
            errors.push(FieldError::new(
                format!("{base}.env[{i}].name"),
                format!(
                    "{:?} is set by the operator (names starting with {} and the checkpoint credentials are reserved); rename it",
                    var.name,
                    env::RESERVED_PREFIX
                ),
            ));
        }
    }
    let mut volumes = BTreeSet::new();
    for (i, volume) in overlay.volumes.iter().enumerate() {
        if volume.name == SCRATCH_VOLUME {
            errors.push(FieldError::new(
                format!("{base}.volumes[{i}].name"),
                "\"scratch\" is the operator's scratch volume; choose another name",
            ));
        }
        if !volumes.insert(volume.name.as_str()) {
            errors.push(FieldError::new(
                format!("{base}.volumes[{i}].name"),
                format!(
                    "{:?} is declared twice; volume names must be unique",
                    volume.name
                ),
            ));
        }
    }
    let mut paths = BTreeSet::new();
    for (i, mount) in overlay.volume_mounts.iter().enumerate() {
        if !volumes.contains(mount.name.as_str()) {
            errors.push(FieldError::new(
                format!("{base}.volumeMounts[{i}].name"),
                format!(
                    "{:?} is not declared in {base}.volumes; add the volume or fix the name",
                    mount.name
                ),
            ));
        }
        if !paths.insert(mount.mount_path.as_str()) {
            errors.push(FieldError::new(
                format!("{base}.volumeMounts[{i}].mountPath"),
                format!(
                    "{:?} is mounted twice; each mountPath must be unique",
                    mount.mount_path
                ),
            ));
        }
    }
}

fn validate_checkpoint(checkpoint: &CheckpointSpec, errors: &mut Vec<FieldError>) {
    let base = "spec.checkpoint";
    let scheme = match parse_storage_uri(&checkpoint.uri) {
        Ok(uri) => Some(uri.scheme),
        Err(message) => {
            errors.push(FieldError::new(format!("{base}.uri"), message));
            None
        }
    };
    if scheme == Some(Scheme::File) {
        let s3_only = [
            ("endpoint", checkpoint.endpoint.is_some()),
            ("region", checkpoint.region.is_some()),
            ("secretRef", checkpoint.secret_ref.is_some()),
        ];
        for (field, set) in s3_only {
            if set {
                errors.push(FieldError::new(
                    format!("{base}.{field}"),
                    "applies only to s3:// checkpoint URIs; remove it or use an s3:// uri",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(yaml: &str) -> TrainingJob {
        serde_yaml::from_str(yaml).expect("test manifest parses")
    }

    const BASE: &str = r#"
apiVersion: ferrotrain.io/v1alpha1
kind: TrainingJob
metadata: {name: mnist}
spec:
  workers: {replicas: 2}
  trainer:
    model: {type: mlp}
    dataset: {type: mnist}
    batchSize: 64
    epochs: 1
  checkpoint: {uri: "s3://ckpt/mnist", everySteps: 100}
"#;

    fn fields(result: Result<(), Vec<FieldError>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_plain_job_is_valid() {
        assert_eq!(validate(&job(BASE)), Ok(()));
    }

    #[test]
    fn annotations_over_the_api_servers_limit_are_refused() {
        let mut j = job(BASE);
        j.metadata.annotations = Some(
            [("big".to_string(), "x".repeat(MAX_ANNOTATION_BYTES))]
                .into_iter()
                .collect(),
        );
        assert_eq!(fields(validate(&j)), ["metadata.annotations"]);
        j.metadata.annotations = Some(
            [("small".to_string(), "x".repeat(1000))]
                .into_iter()
                .collect(),
        );
        assert_eq!(validate(&j), Ok(()));
    }

    /// The pod overlay's annotations are copied onto every worker pod, where the API server's
    /// 256 KiB limit applies; and the whole job must fit the API server's object size limit (a
    /// 2 MB env list would be refused there, and on every pod).
    #[test]
    fn a_pod_overlay_the_api_server_would_refuse_is_refused() {
        let mut j = job(BASE);
        let overlay = j.spec.workers.template.get_or_insert_with(Default::default);
        overlay
            .annotations
            .insert("note".into(), "x".repeat(300 * 1024));
        assert_eq!(fields(validate(&j)), ["spec.workers.template.annotations"]);
        let mut j = job(BASE);
        let overlay = j.spec.workers.template.get_or_insert_with(Default::default);
        overlay.env = (0..2000)
            .map(|i| k8s_openapi::api::core::v1::EnvVar {
                name: format!("V{i}"),
                value: Some("y".repeat(1000)),
                value_from: None,
            })
            .collect();
        let errors = validate(&j).expect_err("2 MB of env");
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["spec.workers.template"]
        );
        assert!(errors[0].message.contains("1.5 MiB"), "{}", errors[0]);
        let mut j = job(BASE);
        let overlay = j.spec.workers.template.get_or_insert_with(Default::default);
        overlay
            .annotations
            .insert("note".into(), "x".repeat(10 * 1024));
        assert_eq!(validate(&j), Ok(()));
    }

    #[test]
    fn non_finite_numbers_are_refused_with_their_field() {
        let with = |trainer_extra: &str| {
            job(&BASE.replace(
                "    epochs: 1\n",
                &format!("    epochs: 1\n{trainer_extra}"),
            ))
        };
        for (yaml, field) in [
            (
                "    optimizer: {type: adam, lr: .nan}\n",
                "spec.trainer.optimizer.lr",
            ),
            (
                "    optimizer: {type: sgd, momentum: .inf}\n",
                "spec.trainer.optimizer.momentum",
            ),
            ("    gradClipNorm: -.inf\n", "spec.trainer.gradClipNorm"),
            (
                "    lrSchedule: {type: cosine, minLr: .nan}\n",
                "spec.trainer.lrSchedule.minLr",
            ),
        ] {
            let j = with(yaml);
            assert_eq!(fields(validate(&j)), [field], "{yaml}");
            assert_eq!(fields(validate_trainer_spec(&j.spec.trainer)), [field]);
        }
    }

    #[test]
    fn checkpoint_scheme_error_names_the_field_and_the_fix() {
        let mut j = job(BASE);
        j.spec.checkpoint.as_mut().expect("set").uri = "ftp://host/x".into();
        let errors = validate(&j).expect_err("ftp is rejected");
        assert_eq!(
            errors[0].to_string(),
            "spec.checkpoint.uri: scheme \"ftp\" is not supported; use s3:// or file://"
        );
    }

    #[test]
    fn long_names_are_measured_against_the_last_pod_hostname() {
        let mut j = job(BASE);
        j.metadata.name = Some("a".repeat(55));
        assert_eq!(fields(validate(&j)), vec!["metadata.name"]);
        j.metadata.name = Some("a".repeat(54));
        assert_eq!(validate(&j), Ok(()));
        j.spec.workers.replicas = 11;
        assert_eq!(fields(validate(&j)), vec!["metadata.name"]);
    }
}
