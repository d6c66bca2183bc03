//! Semantic validation of `spec.trainer`: the rules the schema and CEL cannot express (finite
//! floats, relations between fields, data URIs). A TrainingJob and the trainer's own `--config`
//! file share them.

use crate::field_error::FieldError;
use crate::formats::{Scheme, parse_storage_uri};
use crate::trainer_spec::{
    DatasetKind, DatasetSpec, Device, EarlyStoppingMetric, EarlyStoppingMode, LrScheduleKind,
    ModeKind, ModelKind, TrainerSpec,
};

/// Checks a trainer configuration on its own (the trainer's `--config` file); paths start at
/// `spec.trainer` as in a TrainingJob.
pub fn validate_trainer_spec(trainer: &TrainerSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    validate_trainer(trainer, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Every number of a trainer spec that is a float, by field path: NaN and ±Inf compare false
/// against every bound, so each range rule would let them through.
fn trainer_floats(trainer: &TrainerSpec) -> Vec<(&'static str, Option<f64>)> {
    let optimizer = trainer.optimizer.as_ref();
    let schedule = trainer.lr_schedule.as_ref();
    let augment = trainer.dataset.augment.as_ref();
    let distillation = trainer.distillation.as_ref();
    let pruning = trainer
        .compression
        .as_ref()
        .and_then(|c| c.pruning.as_ref());
    vec![
        ("spec.trainer.gradClipNorm", trainer.grad_clip_norm),
        ("spec.trainer.model.dropout", trainer.model.dropout),
        (
            "spec.trainer.dataset.validationSplit",
            trainer.dataset.validation_split,
        ),
        (
            "spec.trainer.dataset.augment.rotationDegrees",
            augment.and_then(|a| a.rotation_degrees),
        ),
        (
            "spec.trainer.dataset.augment.noiseStd",
            augment.and_then(|a| a.noise_std),
        ),
        ("spec.trainer.optimizer.lr", optimizer.and_then(|o| o.lr)),
        (
            "spec.trainer.optimizer.momentum",
            optimizer.and_then(|o| o.momentum),
        ),
        ("spec.trainer.optimizer.eps", optimizer.and_then(|o| o.eps)),
        (
            "spec.trainer.optimizer.weightDecay",
            optimizer.and_then(|o| o.weight_decay),
        ),
        ("spec.trainer.optimizer.l1", optimizer.and_then(|o| o.l1)),
        (
            "spec.trainer.compression.pruning.sparsity",
            pruning.map(|p| p.sparsity),
        ),
        (
            "spec.trainer.distillation.temperature",
            distillation.and_then(|d| d.temperature),
        ),
        (
            "spec.trainer.distillation.alpha",
            distillation.and_then(|d| d.alpha),
        ),
        (
            "spec.trainer.lrSchedule.gamma",
            schedule.and_then(|s| s.gamma),
        ),
        (
            "spec.trainer.lrSchedule.minLr",
            schedule.and_then(|s| s.min_lr),
        ),
        (
            "spec.trainer.earlyStopping.minDelta",
            trainer.early_stopping.as_ref().and_then(|e| e.min_delta),
        ),
    ]
}

pub(crate) fn validate_trainer(trainer: &TrainerSpec, errors: &mut Vec<FieldError>) {
    let base = "spec.trainer";
    let before = errors.len();
    for (field, value) in trainer_floats(trainer) {
        if let Some(v) = value.filter(|v| !v.is_finite()) {
            errors.push(FieldError::new(
                field,
                format!("must be a finite number, not {v}"),
            ));
        }
    }
    if errors.len() > before {
        // The range rules below would repeat the same fields with less helpful messages.
        return;
    }
    validate_dataset(&trainer.dataset, errors);
    validate_layer_names(trainer, errors);
    if let Some(distillation) = &trainer.distillation {
        if let Err(message) = parse_storage_uri(&distillation.teacher) {
            errors.push(FieldError::new(
                "spec.trainer.distillation.teacher",
                message,
            ));
        }
        if trainer.device_or_default() == Device::Cuda {
            errors.push(FieldError::new(
                "spec.trainer.distillation",
                "knowledge distillation runs on the CPU engine; remove device: cuda (auto trains a \
                 distilled job on the CPU)",
            ));
        }
    }
    if trainer.model.batch_norm_or_default() && trainer.device_or_default() == Device::Cuda {
        errors.push(FieldError::new(
            format!("{base}.model.batchNorm"),
            "batch normalisation runs on the CPU engine; remove device: cuda (auto trains a \
             batch-normalised model on the CPU)",
        ));
    }
    if trainer.model.sync_batch_norm_or_default() && trainer.mode_or_default() == ModeKind::Async {
        errors.push(FieldError::new(
            format!("{base}.model.syncBatchNorm"),
            "synchronised batch normalisation needs every rank at the same step; use mode \
             sync, or leave syncBatchNorm out (each rank then normalises with its own batch)",
        ));
    }
    if trainer.model.kind == ModelKind::Lenet && trainer.dataset.kind == DatasetKind::Csv {
        errors.push(FieldError::new(
            format!("{base}.model.type"),
            "lenet needs 28×28 single-channel images; use dataset type mnist or idx, or model mlp for CSV features",
        ));
    }
    if trainer.grad_clip_norm.is_some_and(|n| n <= 0.0) {
        errors.push(FieldError::new(
            format!("{base}.gradClipNorm"),
            "must be greater than 0; remove it to train without clipping",
        ));
    }
    let optimizer = trainer.optimizer_or_default();
    let lr = optimizer.lr_or_default();
    if lr <= 0.0 {
        errors.push(FieldError::new(
            format!("{base}.optimizer.lr"),
            "must be greater than 0; typical values are 0.001 (adam) and 0.01 (sgd)",
        ));
    }
    if let Some(schedule) = &trainer.lr_schedule
        && schedule.kind == LrScheduleKind::Cosine
    {
        if schedule.min_lr_or_default() >= lr {
            errors.push(FieldError::new(
                format!("{base}.lrSchedule.minLr"),
                format!("must be below the learning rate {lr}; cosine decays from lr to minLr"),
            ));
        }
        if let Some(max_steps) = trainer.max_steps
            && schedule.warmup_steps_or_default() >= max_steps
        {
            errors.push(FieldError::new(
                format!("{base}.lrSchedule.warmupSteps"),
                format!("must be below maxSteps ({max_steps}) or the schedule never decays"),
            ));
        }
    }
    if let Some(early) = &trainer.early_stopping {
        let natural = match early.metric {
            EarlyStoppingMetric::ValLoss => EarlyStoppingMode::Min,
            EarlyStoppingMetric::ValAccuracy => EarlyStoppingMode::Max,
        };
        if early.mode_or_default() != natural {
            let (metric, wanted, given) = match early.metric {
                EarlyStoppingMetric::ValLoss => ("valLoss", "min", "max"),
                EarlyStoppingMetric::ValAccuracy => ("valAccuracy", "max", "min"),
            };
            errors.push(FieldError::new(
                format!("{base}.earlyStopping.mode"),
                format!(
                    "{given} would stop when {metric} improves; use {wanted} or leave mode unset"
                ),
            ));
        }
    }
    if let (Some(pruning), Some(max_steps)) = (
        trainer
            .compression
            .as_ref()
            .and_then(|c| c.pruning.as_ref()),
        trainer.max_steps,
    ) && pruning.end_step > max_steps
    {
        errors.push(FieldError::new(
            format!("{base}.compression.pruning.endStep"),
            format!(
                "{} is past maxSteps {max_steps}, so the model would never reach its sparsity; \
                 lower it",
                pruning.end_step
            ),
        ));
    }
    if let (Some(eval), Some(max_steps)) = (trainer.eval_every_steps, trainer.max_steps)
        && eval > max_steps
    {
        errors.push(FieldError::new(
            format!("{base}.evalEverySteps"),
            format!(
                "{eval} exceeds maxSteps {max_steps}, so the job would never evaluate; lower it"
            ),
        ));
    }
}

fn validate_dataset(dataset: &DatasetSpec, errors: &mut Vec<FieldError>) {
    let base = "spec.trainer.dataset";
    let uris = [
        ("images", &dataset.images),
        ("labels", &dataset.labels),
        ("testImages", &dataset.test_images),
        ("testLabels", &dataset.test_labels),
        ("uri", &dataset.uri),
        ("testUri", &dataset.test_uri),
    ];
    for (field, uri) in uris {
        if let Some(uri) = uri
            && let Err(message) = check_data_uri(uri)
        {
            errors.push(FieldError::new(format!("{base}.{field}"), message));
        }
    }
}

/// `freeze` and `initFrom.layers` name layers of this model, each once; something must train.
fn validate_layer_names(trainer: &TrainerSpec, errors: &mut Vec<FieldError>) {
    let known = trainer.model.layer_names();
    let lists = [
        ("spec.trainer.freeze", trainer.freeze.as_ref()),
        (
            "spec.trainer.initFrom.layers",
            trainer.init_from.as_ref().and_then(|i| i.layers.as_ref()),
        ),
    ];
    for (field, names) in lists {
        let Some(names) = names else { continue };
        for (i, name) in names.iter().enumerate() {
            if !known.contains(name) {
                errors.push(FieldError::new(
                    format!("{field}[{i}]"),
                    format!(
                        "{name:?} is not a layer of this model; its layers are {}",
                        known.join(", ")
                    ),
                ));
            } else if names[..i].contains(name) {
                errors.push(FieldError::new(
                    format!("{field}[{i}]"),
                    format!("{name:?} is listed twice"),
                ));
            }
        }
    }
    if let Some(frozen) = &trainer.freeze
        && known.iter().all(|name| frozen.contains(name))
    {
        errors.push(FieldError::new(
            "spec.trainer.freeze",
            "every layer is frozen, so nothing would train; leave at least the classifier head out",
        ));
    }
}

fn check_data_uri(uri: &str) -> Result<(), String> {
    let parsed = parse_storage_uri(uri)?;
    if parsed.scheme == Scheme::S3 && parsed.path.is_empty() {
        return Err(format!(
            "{uri:?} names a bucket but no object; use s3://bucket/key"
        ));
    }
    Ok(())
}
