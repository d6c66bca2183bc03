//! Transfer learning: some layers of a checkpoint taken into a model whose other layers start
//! from this job's seed (a new classifier head for a task with other classes), and layers held
//! fixed while the others train.

use std::ops::Range;

use ferrotrain_crds::ModelSpec;

use crate::nn::model::Network;
use crate::optim::Optimizer;
use crate::train::job::TrainError;

/// The largest class count a source model is looked for with (the API's own limit).
const MAX_CLASSES: usize = 256;

/// Copies the layers `names` of a checkpoint's parameters into `params`. The checkpoint's model
/// must be this job's architecture, with any number of classes.
pub(crate) fn take_layers(
    net: &Network,
    model: &ModelSpec,
    params: &mut [f32],
    source: &[f32],
    names: &[String],
    uri: &str,
) -> Result<(), TrainError> {
    let source_net = (2..=MAX_CLASSES)
        .filter_map(|classes| Network::new(model, net.inputs, classes).ok())
        .find(|candidate| candidate.num_params == source.len())
        .ok_or_else(|| {
            TrainError::Config(format!(
                "spec.trainer.initFrom.uri {uri}: the checkpoint's {} parameters fit no {} with {} features and any number of classes; initFrom.layers takes layers of this job's architecture",
                source.len(),
                crate::nn::describe::kind(model),
                net.inputs,
            ))
        })?;
    let (ours, theirs) = (net.parameter_layers(), source_net.parameter_layers());
    for (i, name) in names.iter().enumerate() {
        let (Some(to), Some(from)) = (
            ours.iter().find(|l| &l.name == name),
            theirs.iter().find(|l| &l.name == name),
        ) else {
            return Err(TrainError::Config(format!(
                "spec.trainer.initFrom.layers[{i}]: {name:?} is not a layer of this model"
            )));
        };
        if to.all().len() != from.all().len() {
            return Err(TrainError::Config(format!(
                "spec.trainer.initFrom.layers[{i}]: {name} has {} parameters in the checkpoint (a model of {} classes) and {} in this job's model (of {}); leave it out to start it afresh",
                from.all().len(),
                source_net.classes,
                to.all().len(),
                net.classes,
            )));
        }
        params[to.all()].copy_from_slice(&source[from.all()]);
        if let (Some(to), Some(from)) = (&to.normalisation, &from.normalisation) {
            params[to.running.clone()].copy_from_slice(&source[from.running.clone()]);
        }
    }
    Ok(())
}

/// Layers held at the values they had when training started.
#[derive(Clone, Debug, Default)]
pub(crate) struct Frozen {
    ranges: Vec<Range<usize>>,
    values: Vec<f32>,
}

impl Frozen {
    /// Holds the layers `names` of `net` at their values in `params`.
    pub(crate) fn new(net: &Network, names: &[String], params: &[f32]) -> Self {
        let ranges: Vec<Range<usize>> = net
            .parameter_layers()
            .into_iter()
            .filter(|l| names.contains(&l.name))
            .map(|l| l.all())
            .collect();
        let values = ranges
            .iter()
            .flat_map(|r| params[r.clone()].iter().copied())
            .collect();
        Self { ranges, values }
    }

    /// Zeroes the gradients of the frozen layers, so that clipping measures only what trains.
    pub(crate) fn mask_gradients(&self, grads: &mut [f32]) {
        for range in &self.ranges {
            grads[range.clone()].fill(0.0);
        }
    }

    /// Puts the frozen values back (weight decay, L1 and momentum move them otherwise, and an
    /// average of equal values may round) and keeps their optimiser state at zero.
    pub(crate) fn hold(&self, params: &mut [f32], optimizer: &mut Optimizer) {
        let mut values = self.values.as_slice();
        for range in &self.ranges {
            let (these, rest) = values.split_at(range.len());
            params[range.clone()].copy_from_slice(these);
            values = rest;
            for moments in [&mut optimizer.m, &mut optimizer.v] {
                if let Some(held) = moments.get_mut(range.clone()) {
                    held.fill(0.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ferrotrain_crds::{ModelKind, OptimizerKind, OptimizerSpec};

    use super::*;

    fn mlp() -> ModelSpec {
        ModelSpec {
            kind: ModelKind::Mlp,
            hidden: Some(vec![8, 4]),
            dropout: None,
            batch_norm: None,
            sync_batch_norm: None,
        }
    }

    #[test]
    fn layers_of_a_model_with_other_classes_are_taken_and_the_head_is_not() {
        let source_net = Network::new(&mlp(), 6, 10).expect("source");
        let net = Network::new(&mlp(), 6, 3).expect("target");
        let source: Vec<f32> = (0..source_net.num_params).map(|i| i as f32).collect();
        let fresh = net.init_params(1);
        let mut params = fresh.clone();
        let names = ["fc1".to_string(), "fc2".to_string()];
        take_layers(&net, &mlp(), &mut params, &source, &names, "file:///c").expect("taken");
        let layers = net.parameter_layers();
        for layer in &layers[..2] {
            assert_eq!(params[layer.all()], source[layer.all()], "{}", layer.name);
        }
        assert_eq!(
            params[layers[2].all()],
            fresh[layers[2].all()],
            "a fresh head"
        );
        // The head of 10 classes does not fit one of 3.
        let Err(TrainError::Config(message)) = take_layers(
            &net,
            &mlp(),
            &mut params,
            &source,
            &["fc3".to_string()],
            "file:///c",
        ) else {
            panic!("the head differs")
        };
        assert!(message.starts_with("spec.trainer.initFrom.layers[0]: fc3 has 50 parameters in the checkpoint (a model of 10 classes) and 15"), "{message}");
        // Another architecture fits no number of classes.
        let Err(TrainError::Config(message)) =
            take_layers(&net, &mlp(), &mut params, &source[1..], &names, "file:///c")
        else {
            panic!("no architecture fits")
        };
        assert!(
            message.contains("fit no mlp [8, 4] with 6 features"),
            "{message}"
        );
    }

    #[test]
    fn frozen_layers_keep_their_values_and_no_optimiser_state() {
        let net = Network::new(&mlp(), 6, 3).expect("network");
        let mut params = net.init_params(2);
        let start = params.clone();
        let frozen = Frozen::new(&net, &["fc1".to_string()], &params);
        let spec = OptimizerSpec {
            kind: OptimizerKind::Adamw,
            lr: Some(0.1),
            momentum: None,
            nesterov: None,
            betas: None,
            eps: None,
            weight_decay: Some(0.1),
            l1: Some(0.01),
        };
        let mut optimizer = Optimizer::new(&spec, net.num_params);
        for _ in 0..3 {
            let mut grads = vec![0.5f32; net.num_params];
            frozen.mask_gradients(&mut grads);
            optimizer.step(&mut params, &grads, 0.1);
            frozen.hold(&mut params, &mut optimizer);
        }
        let layers = net.parameter_layers();
        let fc1 = layers[0].all();
        assert_eq!(params[fc1.clone()], start[fc1.clone()]);
        assert!(optimizer.m[fc1.clone()].iter().all(|m| *m == 0.0));
        assert!(optimizer.v[fc1].iter().all(|v| *v == 0.0));
        let fc2 = layers[1].all();
        assert_ne!(params[fc2.clone()], start[fc2], "the rest trains");
    }
}
