//! Benchmarks of the training techniques of `spec.trainer`: what each does to the model and to
//! its accuracy, against the same run without it.

use ferrotrain_trainer::data::load::Splits;

use crate::loopback::gang;

/// What L1 does to the weights: the MLP trained 2 epochs (Adam, one rank, same seed) with
/// `optimizer.l1` of 0, 1e-5 and 1e-4; the share of its parameters below 1e-3 in magnitude at the
/// end, and its accuracy.
pub fn sparsity(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    for l1 in [0.0, 1e-5, 1e-4] {
        let summary = gang(
            data,
            rt,
            1,
            0,
            &format!(
                "model: {{type: mlp, hidden: [256, 128]}}\ndataset: {{type: mnist}}\nbatchSize: 64\noptimizer: {{type: adam, lr: 0.001, l1: {l1}}}\nepochs: 2\nseed: 42\n"
            ),
        )?;
        let small = summary.params.iter().filter(|w| w.abs() < 1e-3).count();
        println!(
            "sparsity l1 {l1}: {:.1} % of {} parameters below 1e-3 in magnitude; {:.2} % MNIST test accuracy after 2 epochs",
            small as f64 / summary.params.len().max(1) as f64 * 100.0,
            summary.params.len(),
            summary.metrics.get("valAccuracy").copied().unwrap_or(0.0) * 100.0
        );
    }
    Ok(())
}

/// Augmentation on little data: LeNet on the first 2,000 MNIST training images for 1,500 steps
/// (48 epochs of them), with and without `dataset.augment`, accuracy on the 10,000 test images;
/// the mean of three seeds.
pub fn augmentation(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let few = Splits {
        train: data
            .train
            .subset(&(0..2000.min(data.train.len())).collect::<Vec<_>>()),
        eval: data.eval.clone(),
    };
    for (name, augment) in [
        ("none", ""),
        ("shift 2", ", augment: {shiftPixels: 2}"),
        (
            "shift 2, rotation 10°",
            ", augment: {shiftPixels: 2, rotationDegrees: 10}",
        ),
        (
            "shift 2, rotation 10°, noise 0.1",
            ", augment: {shiftPixels: 2, rotationDegrees: 10, noiseStd: 0.1}",
        ),
    ] {
        let mut accuracies = Vec::new();
        for seed in 1..=3 {
            let summary = gang(
                &few,
                rt,
                1,
                0,
                &format!(
                    "model: {{type: lenet}}\ndataset: {{type: mnist{augment}}}\nbatchSize: 64\noptimizer: {{type: adam, lr: 0.001}}\nmaxSteps: 1500\nseed: {seed}\n"
                ),
            )?;
            accuracies.push(summary.metrics.get("valAccuracy").copied().unwrap_or(0.0) * 100.0);
        }
        let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
        println!(
            "augmentation {name}: {mean:.2} % MNIST test accuracy (seeds 1-3: {}) after 1,500 steps on 2,000 training images",
            accuracies
                .iter()
                .map(|a| format!("{a:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Pruning: the MLP and LeNet trained 3 epochs on MNIST (Adam, one rank, seed 42), dense and
/// pruned to 50, 80 and 90 % of each layer's weights (rounds every 100 steps from step 400 to
/// two thirds of the run); test accuracy and the share of weights that are zero at the end.
pub fn pruning(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let steps = 3 * (data.train.len() / 64) as i64;
    for (name, model) in [
        ("mlp [256, 128]", "{type: mlp, hidden: [256, 128]}"),
        ("lenet", "{type: lenet}"),
    ] {
        for sparsity in [0.0, 0.5, 0.8, 0.9] {
            let compression = if sparsity > 0.0 {
                format!(
                    "compression: {{pruning: {{sparsity: {sparsity}, startStep: 400, endStep: {}, everySteps: 100}}}}\n",
                    steps * 2 / 3
                )
            } else {
                String::new()
            };
            let summary = gang(
                data,
                rt,
                1,
                0,
                &format!(
                    "model: {model}\ndataset: {{type: mnist}}\nbatchSize: 64\noptimizer: {{type: adam, lr: 0.001}}\nmaxSteps: {steps}\nseed: 42\n{compression}"
                ),
            )?;
            let zeros = summary.params.iter().filter(|w| **w == 0.0).count();
            println!(
                "pruning {name} sparsity {sparsity}: {:.2} % MNIST test accuracy after {steps} steps; {:.1} % of {} parameters are zero",
                summary.metrics.get("valAccuracy").copied().unwrap_or(0.0) * 100.0,
                zeros as f64 / summary.params.len().max(1) as f64 * 100.0,
                summary.params.len()
            );
        }
    }
    Ok(())
}
