//! A trained model out of Ferrotrain's checkpoint layout: `model.safetensors` (the parameters in
//! the layout other frameworks load), `model.onnx` (the whole network, for any ONNX runtime),
//! optionally `model.int8.safetensors` (post-training int8) and `model.json` (the model card:
//! architecture, data, metrics, the job's `spec.trainer`); and predictions from an exported model.

pub mod fold;
pub mod int8;
pub mod onnx;
pub mod safetensors;
pub mod tensors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferrotrain_crds::output::MODEL_CARD_FILE;
use ferrotrain_crds::{DatasetKind, ModelSpec, OutputFormat};
use serde::{Deserialize, Serialize};

use crate::checkpoint::layout::{Trained, split_manifest_uri};
use crate::checkpoint::store::CheckpointStore;
use crate::nn::model::{Network, Workspace};
use crate::storage::{self, S3Options};

/// The model card's format.
pub const CARD_FORMAT: &str = "ferrotrain-model/1";

/// Why a model cannot be exported, read or run.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The checkpoint could not be read or names nothing to export.
    #[error("{uri}: {problem}")]
    Checkpoint {
        /// The checkpoint URI.
        uri: String,
        /// What is wrong.
        problem: String,
    },
    /// The model's files are missing, damaged or inconsistent.
    #[error("{file}: {problem}")]
    File {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Input rows that do not fit the model.
    #[error("{0}")]
    Input(String),
}

/// A trained model: what it is and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Architecture, data shape and the run's `spec.trainer`.
    pub trained: Trained,
    /// Ferrotrain's flat parameters.
    pub params: Vec<f32>,
    /// The step the parameters are from.
    pub step: u64,
    /// The latest evaluation metrics of the run.
    pub metrics: BTreeMap<String, f64>,
    /// The checkpoint it came from.
    pub source: String,
}

/// `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelCard {
    /// [`CARD_FORMAT`].
    pub format: String,
    /// The model in words.
    pub architecture: String,
    /// What a row of input is.
    pub input: String,
    /// What the output is.
    pub output: String,
    /// The tensors of `model.safetensors` and their layout.
    pub tensors: BTreeMap<String, Vec<usize>>,
    /// How the tensors are laid out.
    pub layout: String,
    /// The step of the checkpoint.
    pub step: u64,
    /// The run's latest evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// The checkpoint exported.
    pub source: String,
    /// What was trained: `spec.trainer`, features, classes, image shape.
    pub trained: Trained,
    /// The int8 model, when one was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Card>,
}

/// What the model card says of the int8 model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Int8Card {
    /// Its file.
    pub file: String,
    /// Training rows the input scales were calibrated on.
    pub calibration_rows: usize,
    /// How it computes.
    pub scheme: String,
}

/// Training rows the int8 input scales are calibrated on.
pub const CALIBRATION_ROWS: usize = 1000;

/// The int8 model's file.
pub const INT8_FILE: &str = OutputFormat::Int8.file();

/// The files `write` made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// `model.safetensors`, `model.onnx`, `model.json`, with their sizes in bytes.
    pub files: Vec<(PathBuf, u64)>,
}

impl Model {
    /// The network of this model: the trained architecture with any batch normalisation folded
    /// into the layers before it.
    pub fn network(&self) -> Result<Network, String> {
        let plain = ModelSpec {
            batch_norm: None,
            sync_batch_norm: None,
            ..self.trained.trainer.model.clone()
        };
        Network::new(&plain, self.trained.features, self.trained.classes).map_err(|e| e.to_string())
    }

    /// The model of a run's flat parameters (its running statistics included); batch
    /// normalisation is folded into the layers before it.
    pub fn from_parameters(
        trained: Trained,
        params: Vec<f32>,
        step: u64,
        metrics: BTreeMap<String, f64>,
        source: String,
    ) -> Result<Self, String> {
        let trained_net = Network::new(&trained.trainer.model, trained.features, trained.classes)
            .map_err(|e| e.to_string())?;
        if trained_net.num_params != params.len() {
            return Err(format!(
                "{} parameters, its model has {}",
                params.len(),
                trained_net.num_params
            ));
        }
        let mut model = Model {
            trained,
            params,
            step,
            metrics,
            source,
        };
        if trained_net.has_batch_norm() {
            let plain = model.network()?;
            model.params = fold::fold(&trained_net, &model.params, &plain);
        }
        Ok(model)
    }

    /// The logits of `rows` (each `features` values, as the trainer reads them), row-major.
    pub fn logits(&self, rows: &[f32]) -> Result<Vec<f32>, ExportError> {
        let net = self.network().map_err(ExportError::Input)?;
        if net.inputs == 0 || !rows.len().is_multiple_of(net.inputs) {
            return Err(ExportError::Input(format!(
                "{} values are not whole rows of the model's {} features",
                rows.len(),
                net.inputs
            )));
        }
        let mut ws = Workspace::default();
        let mut out = Vec::with_capacity(rows.len() / net.inputs * net.classes);
        // Batches bound the workspace whatever the input's size.
        for batch in rows.chunks(256 * net.inputs) {
            out.extend_from_slice(net.logits(
                &self.params,
                batch,
                batch.len() / net.inputs,
                &mut ws,
            ));
        }
        Ok(out)
    }
}

/// The model of the checkpoint at `uri` (a location, whose newest checkpoint that verifies is
/// taken, or one manifest in it).
pub async fn from_checkpoint(uri: &str, s3: &S3Options) -> Result<Model, ExportError> {
    let problem = |problem: String| ExportError::Checkpoint {
        uri: uri.to_string(),
        problem,
    };
    let (location, manifest_key) = split_manifest_uri(uri);
    let store = CheckpointStore::new(
        storage::open(&location, s3).map_err(|e| problem(e.to_string()))?,
        1,
        "",
    );
    let (snapshot, manifest) = store
        .load_for_warm_start(manifest_key.as_deref())
        .await
        .map_err(|e| problem(e.to_string()))?
        .map_err(problem)?;
    let trained = manifest.trained.ok_or_else(|| {
        problem(
            "its manifest does not say what was trained (checkpoints written before model cards); \
             train on from it for a step to write one that does"
                .to_string(),
        )
    })?;
    if trained.trainer.dataset.kind == DatasetKind::Csv {
        return Err(problem(
            "a model trained on CSV reads features standardised with its training split's mean and \
             deviation, which checkpoints do not record; only image models are exported"
                .to_string(),
        ));
    }
    Model::from_parameters(
        trained,
        snapshot.params,
        manifest.step,
        manifest.state.metrics,
        uri.to_string(),
    )
    .map_err(problem)
}

/// Writes `model.safetensors`, `model.onnx` and `model.json` into `dir`, and with
/// `int8_calibration` (training rows) `model.int8.safetensors` too.
pub fn write(
    model: &Model,
    dir: &Path,
    int8_calibration: Option<&[f32]>,
) -> Result<Written, ExportError> {
    let outputs = encode(model, int8_calibration)?;
    std::fs::create_dir_all(dir).map_err(|e| ExportError::File {
        file: dir.to_path_buf(),
        problem: e.to_string(),
    })?;
    let mut files = Vec::new();
    for (name, bytes) in outputs {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).map_err(|e| ExportError::File {
            file: path.clone(),
            problem: e.to_string(),
        })?;
        files.push((path, bytes.len() as u64));
    }
    Ok(Written { files })
}

/// The files of an export by name: `model.safetensors`, `model.onnx`, `model.json` and, with
/// `int8_calibration`, `model.int8.safetensors`.
pub fn encode(
    model: &Model,
    int8_calibration: Option<&[f32]>,
) -> Result<Vec<(&'static str, Vec<u8>)>, ExportError> {
    let net = model.network().map_err(ExportError::Input)?;
    let tensors = tensors::to_standard(&net, &model.params);
    let quantised = int8_calibration
        .map(|rows| {
            int8::Int8Model::quantise(&net, &tensors, model.trained.image, rows)
                .map(|q| (q, rows.len() / net.inputs.max(1)))
        })
        .transpose()
        .map_err(ExportError::Input)?;
    let card = ModelCard {
        format: CARD_FORMAT.into(),
        architecture: crate::nn::describe::describe(&model.trained.trainer.model, &net),
        input: match model.trained.image {
            Some([h, w, c]) => format!(
                "float32 [batch, {}]: each row an image of {h}×{w}×{c} (height, width, channels, \
                 row-major), pixels scaled to [0, 1]",
                net.inputs
            ),
            None => format!("float32 [batch, {}]", net.inputs),
        },
        output: format!(
            "float32 [batch, {}]: logits, one per class; the prediction is the largest",
            net.classes
        ),
        tensors: tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect(),
        layout: format!(
            "dense weights [out, in]; convolution weights [out, in, kH, kW] over NCHW images; \
             the first dense layer after a convolution reads the CHW flattening{}",
            if model.trained.trainer.model.batch_norm_or_default() {
                "; batch normalisation folded into the weights and biases of the layer before it"
            } else {
                ""
            }
        ),
        step: model.step,
        metrics: model.metrics.clone(),
        source: model.source.clone(),
        trained: model.trained.clone(),
        int8: quantised.as_ref().map(|(_, rows)| Int8Card {
            file: INT8_FILE.into(),
            calibration_rows: *rows,
            scheme: "weights symmetric int8 per output channel; each layer's input symmetric \
                     int8 per tensor, its scale the largest magnitude over the calibration rows; \
                     int32 sums rescaled to float with the float bias"
                .into(),
        }),
    };
    let metadata = BTreeMap::from([
        ("format".to_string(), CARD_FORMAT.to_string()),
        ("architecture".to_string(), card.architecture.clone()),
    ]);
    let onnx = onnx::model(
        &net,
        &tensors,
        model.trained.image,
        env!("CARGO_PKG_VERSION"),
    )
    .map_err(ExportError::Input)?;
    let json = serde_json::to_vec_pretty(&card).map_err(|e| ExportError::Input(e.to_string()))?;
    let mut outputs = vec![
        (
            OutputFormat::Safetensors.file(),
            safetensors::encode(&tensors, &metadata),
        ),
        (OutputFormat::Onnx.file(), onnx),
        (MODEL_CARD_FILE, json),
    ];
    if let Some((quantised, _)) = &quantised {
        let (floats, bytes) = quantised.to_tensors();
        outputs.push((
            INT8_FILE,
            safetensors::encode_mixed(&floats, &bytes, &metadata),
        ));
    }
    Ok(outputs)
}

/// The largest model file read back.
const MAX_MODEL_BYTES: u64 = 1 << 30;

/// Reads an exported model back from `dir` (`model.json` and `model.safetensors`).
pub fn read(dir: &Path) -> Result<Model, ExportError> {
    read_card_and_model(dir).map(|(model, _)| model)
}

/// Reads an exported model and its int8 model back from `dir`.
pub fn read_int8(dir: &Path) -> Result<(Model, int8::Int8Model), ExportError> {
    let (model, int8) = read_card_and_model(dir)?;
    let int8 = int8.ok_or_else(|| ExportError::File {
        file: dir.join("model.json"),
        problem: "no int8 model was exported (ferrotrain export --int8)".into(),
    })?;
    let (path, bytes) = load(&dir.join(&int8.file))?;
    let fail = |problem: String| ExportError::File {
        file: path.clone(),
        problem,
    };
    let (floats, bytes) = safetensors::decode_mixed(&bytes).map_err(fail)?;
    let net = model.network().map_err(fail)?;
    let quantised =
        int8::Int8Model::from_tensors(&net, model.trained.image, &floats, &bytes).map_err(fail)?;
    Ok((model, quantised))
}

/// A model file, bounded in size.
fn load(path: &Path) -> Result<(PathBuf, Vec<u8>), ExportError> {
    let fail = |problem: String| ExportError::File {
        file: path.to_path_buf(),
        problem,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > MAX_MODEL_BYTES {
        return Err(fail(format!("{size} bytes, more than {MAX_MODEL_BYTES}")));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    Ok((path.to_path_buf(), bytes))
}

/// The model of `dir` and what its card says of an int8 model.
fn read_card_and_model(dir: &Path) -> Result<(Model, Option<Int8Card>), ExportError> {
    let (card_path, card) = load(&dir.join("model.json"))?;
    let card: ModelCard = serde_json::from_slice(&card).map_err(|e| ExportError::File {
        file: card_path.clone(),
        problem: e.to_string(),
    })?;
    if card.format != CARD_FORMAT {
        return Err(ExportError::File {
            file: card_path,
            problem: format!(
                "format {:?}, this version reads {CARD_FORMAT:?}",
                card.format
            ),
        });
    }
    let (tensors_path, bytes) = load(&dir.join("model.safetensors"))?;
    let fail = |problem: String| ExportError::File {
        file: tensors_path.clone(),
        problem,
    };
    let tensors = safetensors::decode(&bytes).map_err(fail)?;
    let mut model = Model {
        trained: card.trained,
        params: Vec::new(),
        step: card.step,
        metrics: card.metrics,
        source: card.source,
    };
    let net = model.network().map_err(fail)?;
    model.params = tensors::from_standard(&net, &tensors).map_err(fail)?;
    Ok((model, card.int8))
}
