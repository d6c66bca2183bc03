//! Knowledge distillation: the teacher's network and parameters, read from its checkpoint by
//! every rank (each computes the teacher's logits for its own batches), and those logits.

use tokio::runtime::Handle;

use crate::nn::model::{Network, Workspace};
use crate::train::job::{Teacher, TrainError};

/// A teacher ready to compute logits.
pub(crate) struct LoadedTeacher {
    net: Network,
    params: Vec<f32>,
    ws: Workspace,
    /// Softening temperature.
    pub(crate) temperature: f32,
    /// Weight of the teacher's term.
    pub(crate) alpha: f32,
}

/// Reads the teacher of a student of `features` and `classes`.
pub(crate) fn load(
    teacher: &Teacher,
    features: usize,
    classes: usize,
    runtime: &Handle,
) -> Result<LoadedTeacher, TrainError> {
    let refuse = |problem: String| {
        TrainError::Config(format!(
            "spec.trainer.distillation.teacher {}: {problem}",
            teacher.uri
        ))
    };
    let (snapshot, manifest) = runtime
        .block_on(
            teacher
                .store
                .load_for_warm_start(teacher.manifest_key.as_deref()),
        )?
        .map_err(refuse)?;
    let trained = manifest.trained.ok_or_else(|| {
        refuse(
            "its manifest does not say which model wrote it (a checkpoint from before model cards)"
                .into(),
        )
    })?;
    if (trained.features, trained.classes) != (features, classes) {
        return Err(refuse(format!(
            "the teacher reads {} features into {} classes, this job's data has {features} and {classes}",
            trained.features, trained.classes
        )));
    }
    let net = Network::new(&trained.trainer.model, features, classes)?;
    if snapshot.params.len() != net.num_params {
        return Err(refuse(format!(
            "{} parameters, its model ({}) has {}",
            snapshot.params.len(),
            crate::nn::describe::kind(&trained.trainer.model),
            net.num_params
        )));
    }
    tracing::info!(
        uri = %teacher.uri,
        model = %crate::nn::describe::describe(&trained.trainer.model, &net),
        step = manifest.step,
        "distilling from a teacher"
    );
    Ok(LoadedTeacher {
        net,
        params: snapshot.params,
        ws: Workspace::default(),
        temperature: teacher.temperature,
        alpha: teacher.alpha,
    })
}

impl LoadedTeacher {
    /// The teacher's logits for a batch of `batch` rows.
    pub(crate) fn logits(&mut self, inputs: &[f32], batch: usize) -> &[f32] {
        self.net.logits(&self.params, inputs, batch, &mut self.ws)
    }
}
