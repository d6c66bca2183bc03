//! `ferrotrain export SOURCE`: a trained model as safetensors, ONNX and a model card; and
//! `ferrotrain predict MODEL IMAGES`: its predictions, or its accuracy against labels.

use std::path::{Path, PathBuf};

use ferrotrain_trainer::data::{idx, load};
use ferrotrain_trainer::export;
use ferrotrain_trainer::storage::S3Options;

use crate::cli::error::{CommandError, doing};
use crate::local::preflight::{load_job, local_checkpoint};

/// The largest input file `predict` reads.
const MAX_INPUT_BYTES: u64 = 1 << 30;

/// Where `export` reads a model and writes it.
pub struct ExportOptions {
    /// Directory of local job state, where a manifest without spec.checkpoint checkpoints.
    pub state_dir: PathBuf,
    /// S3 endpoint.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// Also quantise to int8, calibrated on the training data read from here.
    pub int8_data_dir: Option<PathBuf>,
}

/// Exports the model of `source` (a checkpoint URI, or a TrainingJob manifest whose checkpoints
/// are read, locally under `state_dir` when it names none) into `out`; the lines to print.
pub fn export(source: &str, out: &Path, options: ExportOptions) -> Result<String, CommandError> {
    let ExportOptions {
        state_dir,
        endpoint,
        region,
        int8_data_dir,
    } = options;
    let (uri, s3) = if source.contains("://") {
        (source.to_string(), S3Options { endpoint, region })
    } else {
        let job = load_job(Path::new(source)).map_err(doing(format!("reading {source}")))?;
        let checkpoint = local_checkpoint(&job, &state_dir);
        let s3 = S3Options {
            endpoint: endpoint.or(checkpoint.endpoint),
            region: region.or(checkpoint.region),
        };
        (checkpoint.uri, s3)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(doing("starting the I/O runtime"))?;
    let model = runtime
        .block_on(export::from_checkpoint(&uri, &s3))
        .map_err(doing("reading the checkpoint"))?;
    let calibration = match &int8_data_dir {
        Some(data_dir) => {
            let seed = model.trained.trainer.seed_or_default();
            let data = runtime
                .block_on(load::load(
                    &model.trained.trainer.dataset,
                    data_dir,
                    seed,
                    &s3,
                ))
                .map_err(doing("reading the training data to calibrate int8 on"))?;
            let rows = export::CALIBRATION_ROWS.min(data.train.len()) * data.train.dim;
            Some(data.train.features[..rows].to_vec())
        }
        None => None,
    };
    let written =
        export::write(&model, out, calibration.as_deref()).map_err(doing("writing the model"))?;
    let mut lines = format!("exported step {} of {uri}\n", model.step);
    for (file, bytes) in &written.files {
        lines.push_str(&format!("  {} ({bytes} bytes)\n", file.display()));
    }
    Ok(lines)
}

/// Runs the model in `model_dir` (its int8 model with `int8`) on the IDX images in `images`: one
/// prediction per line, or with `labels` the accuracy.
pub fn predict(
    model_dir: &Path,
    images: &Path,
    labels: Option<&Path>,
    int8: bool,
) -> Result<String, CommandError> {
    let (model, quantised) = if int8 {
        let (model, quantised) =
            export::read_int8(model_dir).map_err(doing("reading the int8 model"))?;
        (model, Some(quantised))
    } else {
        let model = export::read(model_dir).map_err(doing("reading the model"))?;
        (model, None)
    };
    let images_array = read_idx(images)?;
    let features = model.trained.features;
    if images_array.item_size() != features {
        return Err(doing(format!("reading {}", images.display()))(format!(
            "items of {} values (dimensions {:?}), the model reads {features}",
            images_array.item_size(),
            images_array.dims
        )));
    }
    let rows: Vec<f32> = images_array
        .data
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    let logits = match &quantised {
        Some(quantised) => quantised.logits(&rows),
        None => model.logits(&rows).map_err(doing("running the model"))?,
    };
    let predictions = predictions(&logits, model.trained.classes);
    match labels {
        None => Ok(predictions
            .iter()
            .map(|p| format!("{p}\n"))
            .collect::<String>()),
        Some(path) => {
            let labels = read_idx(path)?;
            if labels.data.len() != predictions.len() {
                return Err(doing(format!("reading {}", path.display()))(format!(
                    "{} labels for {} images",
                    labels.data.len(),
                    predictions.len()
                )));
            }
            let correct = predictions
                .iter()
                .zip(&labels.data)
                .filter(|(p, l)| **p == usize::from(**l))
                .count();
            Ok(format!(
                "accuracy {:.2} % ({correct} of {} images)\n",
                correct as f64 / predictions.len().max(1) as f64 * 100.0,
                predictions.len()
            ))
        }
    }
}

/// The class of each row: the largest logit (the first of equal ones).
fn predictions(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes.max(1))
        .map(|row| {
            (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap_or(0)
        })
        .collect()
}

fn read_idx(path: &Path) -> Result<idx::IdxArray, CommandError> {
    let name = path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(doing(format!("reading {name}")))?
        .len();
    if size > MAX_INPUT_BYTES {
        return Err(doing(format!("reading {name}"))(format!(
            "{size} bytes, more than {MAX_INPUT_BYTES}"
        )));
    }
    let bytes = std::fs::read(path).map_err(doing(format!("reading {name}")))?;
    idx::parse(&name, &bytes).map_err(doing(format!("reading {name}")))
}
