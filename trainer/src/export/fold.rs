//! Batch normalisation folded into the layer before it: in evaluation it is one multiply-add per
//! channel, which scales that layer's weights of the channel and moves its bias. An exported model
//! is therefore the same network without normalisation layers, which every runtime runs as it is.

use crate::nn::batch_norm;
use crate::nn::model::Network;

/// The parameters of `plain` (the architecture of `net` without batch normalisation) computing
/// what `net` computes in evaluation with `params`.
pub fn fold(net: &Network, params: &[f32], plain: &Network) -> Vec<f32> {
    let mut folded = vec![0.0; plain.num_params];
    for (from, to) in net.parameter_layers().iter().zip(plain.parameter_layers()) {
        let (weights, biases) = (
            &mut folded[to.weights.clone()],
            &params[from.biases.clone()],
        );
        weights.copy_from_slice(&params[from.weights.clone()]);
        let outputs = biases.len();
        let Some(n) = &from.normalisation else {
            folded[to.biases].copy_from_slice(biases);
            continue;
        };
        let channels = n.scale.len();
        let running = &params[n.running.clone()];
        let (multiplier, offset) = batch_norm::folded(
            &params[n.scale.clone()],
            &params[n.shift.clone()],
            &running[..channels],
            &running[channels..],
        );
        // Weights are output-major in every layer: one block per output channel.
        for (block, k) in weights
            .chunks_exact_mut(weights.len() / outputs)
            .zip(&multiplier)
        {
            block.iter_mut().for_each(|w| *w *= k);
        }
        for ((b, &bias), (k, o)) in folded[to.biases]
            .iter_mut()
            .zip(biases)
            .zip(multiplier.iter().zip(&offset))
        {
            *b = bias * k + o;
        }
    }
    folded
}

#[cfg(test)]
mod tests {
    use ferrotrain_crds::{ModelKind, ModelSpec};

    use super::*;
    use crate::nn::model::Workspace;
    use crate::rng::Rng;

    #[test]
    fn a_folded_network_computes_what_the_normalised_one_evaluates() {
        for (kind, hidden) in [
            (ModelKind::Mlp, Some(vec![32, 16])),
            (ModelKind::Lenet, None),
        ] {
            let spec = ModelSpec {
                kind,
                hidden,
                dropout: None,
                batch_norm: Some(true),
                sync_batch_norm: None,
            };
            let net = Network::new(&spec, 784, 10).expect("builds");
            let plain = Network::new(
                &ModelSpec {
                    batch_norm: None,
                    ..spec.clone()
                },
                784,
                10,
            )
            .expect("builds");
            let mut rng = Rng::new(8);
            let x: Vec<f32> = (0..16 * 784).map(|_| rng.next_f32()).collect();
            let labels: Vec<u8> = (0..16).map(|i| (i % 10) as u8).collect();
            // A few steps move the scales, shifts and running statistics off their start.
            let mut params = net.init_params(4);
            let mut grads = vec![0.0; net.num_params];
            let mut ws = Workspace::default();
            for _ in 0..5 {
                net.train_step(&params, &mut grads, &x, &labels, &mut Rng::new(1), &mut ws);
                for (p, g) in params[..net.trainable].iter_mut().zip(&grads) {
                    *p -= 0.1 * g;
                }
                net.update_running_statistics(&mut params, &grads);
            }
            let expected = net.logits(&params, &x, 16, &mut ws).to_vec();
            let folded = fold(&net, &params, &plain);
            let mut plain_ws = Workspace::default();
            let got = plain.logits(&folded, &x, 16, &mut plain_ws);
            let worst = expected
                .iter()
                .zip(got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{kind:?}: largest difference {worst}");
        }
    }
}
