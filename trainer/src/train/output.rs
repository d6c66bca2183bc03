//! `spec.output`: rank 0 exports the trained model of a successful run (the files of
//! `ferrotrain export`) to the output location, before its last progress report names them.

use ferrotrain_crds::output::MODEL_CARD_FILE;
use ferrotrain_crds::{OutputFile, OutputFormat};
use object_store::{ObjectStoreExt, PutPayload};
use tokio::runtime::Handle;

use crate::checkpoint::layout::{Trained, TrainingState};
use crate::data::load::Splits;
use crate::export::{self, CALIBRATION_ROWS, Model};
use crate::storage::Location;
use crate::train::job::{OutputPlan, TrainError};

/// What was trained on `data` by `spec.trainer`: what a model card and a checkpoint manifest say.
pub fn trained(spec: &ferrotrain_crds::TrainerSpec, data: &Splits) -> Trained {
    Trained {
        trainer: spec.clone(),
        features: data.train.dim,
        classes: data.classes(),
        image: data.train.image.map(|i| [i.height, i.width, i.channels]),
    }
}

/// Writes the files of `plan.formats` (and the model card) for the parameters `params` at the
/// state `state`; the files written, by name and size.
pub(crate) fn publish(
    plan: &OutputPlan,
    trained: Trained,
    params: &[f32],
    state: &TrainingState,
    data: &Splits,
    runtime: &Handle,
) -> Result<Vec<OutputFile>, TrainError> {
    let failed = |problem: String| TrainError::Output {
        uri: plan.location.uri.clone(),
        problem,
    };
    let model = Model::from_parameters(
        trained,
        params.to_vec(),
        state.step,
        state.metrics.clone(),
        format!("the run that ended at step {}", state.step),
    )
    .map_err(failed)?;
    let calibration = plan.formats.contains(&OutputFormat::Int8).then(|| {
        let rows = CALIBRATION_ROWS.min(data.train.len()) * data.train.dim;
        &data.train.features[..rows]
    });
    let wanted = |name: &str| {
        name == MODEL_CARD_FILE || plan.formats.iter().any(|format| format.file() == name)
    };
    let files: Vec<(&str, Vec<u8>)> = export::encode(&model, calibration)
        .map_err(|e| failed(e.to_string()))?
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .collect();
    // The model card last: a reader that finds it finds the files it describes.
    let (card, tensors): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|(name, _)| *name == MODEL_CARD_FILE);
    let mut written = Vec::new();
    for (name, bytes) in tensors.into_iter().chain(card) {
        written.push(OutputFile {
            name: name.to_string(),
            bytes: bytes.len() as u64,
        });
        runtime
            .block_on(put(&plan.location, name, bytes))
            .map_err(|e| failed(format!("write of {name}: {e}")))?;
    }
    tracing::info!(uri = %plan.location.uri, files = ?written, "exported the trained model");
    Ok(written)
}

async fn put(location: &Location, name: &str, bytes: Vec<u8>) -> Result<(), object_store::Error> {
    location
        .store
        .put(&location.key(name), PutPayload::from(bytes))
        .await
        .map(|_| ())
}
