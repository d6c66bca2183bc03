//! Benchmarks of the training techniques of `spec.trainer`: what each does to the model and to
//! its accuracy, against the same run without it.

use ferrotrain_crds::TrainerSpec;
use ferrotrain_trainer::checkpoint::layout::Trained;
use ferrotrain_trainer::checkpoint::store::CheckpointStore;
use ferrotrain_trainer::data::Dataset;
use ferrotrain_trainer::data::load::Splits;
use ferrotrain_trainer::dist::ring::Ring;
use ferrotrain_trainer::export::{self, INT8_FILE, Model};
use ferrotrain_trainer::run::config_hash;
use ferrotrain_trainer::storage::{self, S3Options};
use ferrotrain_trainer::train::job::{CheckpointPlan, Job, Outcome, Summary, Teacher, WarmStart};
use ferrotrain_trainer::train::steps::train;

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
        let (mean, seeds) = mean_and_seeds(&accuracies);
        println!(
            "augmentation {name}: {mean:.2} % MNIST test accuracy (seeds 1-3: {seeds}) after 1,500 steps on 2,000 training images"
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

/// Transfer learning: LeNet trained one epoch on the MNIST digits 0–4, then trained 300 steps of
/// 32 on 500 labelled images of the digits 5–9, from scratch and from the first model's layers
/// (every layer but the classifier head, which starts fresh; and the same with the convolutions
/// frozen); accuracy on the test images of 5–9, mean of three seeds.
pub fn transfer(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let digits = |set: &Dataset, low: u8, limit: usize| -> Dataset {
        let rows: Vec<usize> = (0..set.len())
            .filter(|&i| (low..low + 5).contains(&set.labels[i]))
            .take(limit)
            .collect();
        let mut picked = set.subset(&rows);
        picked.labels.iter_mut().for_each(|label| *label -= low);
        picked.classes = 5;
        picked
    };
    let source = Splits {
        train: digits(&data.train, 0, usize::MAX),
        eval: digits(&data.eval, 0, usize::MAX),
    };
    let target = Splits {
        train: digits(&data.train, 5, 500),
        eval: digits(&data.eval, 5, usize::MAX),
    };
    let dir =
        std::env::temp_dir().join(format!("ferrotrain-bench-transfer-{}", std::process::id()));
    let uri = format!("file://{}", dir.display());
    let lenet =
        "model: {type: lenet}\ndataset: {type: mnist}\noptimizer: {type: adam, lr: 0.001}\n";
    let source_spec: TrainerSpec =
        serde_yaml::from_str(&format!("{lenet}batchSize: 64\nepochs: 1\nseed: 1\n"))?;
    let store = CheckpointStore::new(
        storage::open(&uri, &S3Options::default())?,
        1,
        config_hash(&source_spec, &source),
    );
    let trained = alone(
        &source,
        rt,
        source_spec,
        Start {
            checkpoint: Some(CheckpointPlan {
                store,
                every_steps: None,
                every_seconds: None,
                resume: false,
            }),
            ..Start::default()
        },
    )?;
    println!(
        "transfer source: LeNet on digits 0-4, {} steps, {:.2} % test accuracy on 0-4",
        trained.step,
        trained.metrics.get("valAccuracy").copied().unwrap_or(0.0) * 100.0
    );
    for (name, layers, freeze) in [
        ("from scratch", None, ""),
        ("conv1, conv2, fc1, fc2 taken, new head", Some(4), ""),
        (
            "the same, convolutions frozen",
            Some(4),
            "freeze: [conv1, conv2]\n",
        ),
    ] {
        let mut accuracies = Vec::new();
        for seed in 1..=3 {
            let spec: TrainerSpec = serde_yaml::from_str(&format!(
                "{lenet}batchSize: 32\nmaxSteps: 300\nseed: {seed}\n{freeze}"
            ))?;
            let warm = layers.map(|count: usize| -> anyhow::Result<WarmStart> {
                Ok(WarmStart {
                    store: CheckpointStore::new(storage::open(&uri, &S3Options::default())?, 1, ""),
                    manifest_key: None,
                    uri: uri.clone(),
                    reset_optimizer: true,
                    continue_steps: false,
                    layers: Some(
                        ["conv1", "conv2", "fc1", "fc2"][..count]
                            .iter()
                            .map(ToString::to_string)
                            .collect(),
                    ),
                })
            });
            let start = Start {
                warm_start: warm.transpose()?,
                ..Start::default()
            };
            let summary = alone(&target, rt, spec, start)?;
            accuracies.push(summary.metrics.get("valAccuracy").copied().unwrap_or(0.0) * 100.0);
        }
        let (mean, seeds) = mean_and_seeds(&accuracies);
        println!(
            "transfer {name}: {mean:.2} % test accuracy on digits 5-9 (seeds 1-3: {seeds}) after 300 steps on 500 images"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What a run of one rank starts from besides its spec.
#[derive(Default)]
struct Start {
    checkpoint: Option<CheckpointPlan>,
    warm_start: Option<WarmStart>,
    teacher: Option<Teacher>,
}

/// One rank, on this process's threads, with checkpoints, a warm start or a teacher.
fn alone(
    data: &Splits,
    rt: &tokio::runtime::Runtime,
    spec: TrainerSpec,
    start: Start,
) -> anyhow::Result<Summary> {
    let Start {
        checkpoint,
        warm_start,
        teacher,
    } = start;
    let job = Job {
        teacher,
        checkpoint,
        warm_start,
        ..Job::new(spec)
    };
    match train(job, data, &mut Ring::single(), rt.handle())? {
        Outcome::Completed(summary) | Outcome::Preempted(summary) => Ok(summary),
    }
}

/// Post-training int8: the MLP and LeNet trained 2 epochs on MNIST (one rank, seed 42), exported
/// with `--int8` (input scales calibrated on 1,000 training images); file sizes, test accuracy of
/// the fp32 and the int8 model, and inference samples/s of each path on this process's threads.
pub fn quantisation(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ferrotrain-bench-int8-{}", std::process::id()));
    for (name, model) in [
        ("mlp [256, 128]", "{type: mlp, hidden: [256, 128]}"),
        ("lenet", "{type: lenet}"),
    ] {
        let spec: TrainerSpec = serde_yaml::from_str(&format!(
            "model: {model}\ndataset: {{type: mnist}}\nbatchSize: 64\noptimizer: {{type: adam, lr: 0.001}}\nepochs: 2\nseed: 42\n"
        ))?;
        let summary = gang(data, rt, 1, 0, &serde_yaml::to_string(&spec)?)?;
        let trained = Model {
            trained: Trained {
                trainer: spec,
                features: data.train.dim,
                classes: data.classes(),
                image: data.train.image.map(|i| [i.height, i.width, i.channels]),
            },
            params: summary.params,
            step: summary.step,
            metrics: summary.metrics,
            source: "bench".into(),
        };
        let calibration = &data.train.features[..1000 * data.train.dim];
        let written = export::write(&trained, &dir, Some(calibration))?;
        let size = |file: &str| {
            written
                .files
                .iter()
                .find(|(path, _)| path.ends_with(file))
                .map_or(0, |(_, bytes)| *bytes)
        };
        let (fp32_bytes, int8_bytes) = (size("model.safetensors"), size(INT8_FILE));
        let (_, int8) = export::read_int8(&dir)?;
        let eval = &data.eval;
        let accuracy = |logits: &[f32]| {
            let correct = logits
                .chunks_exact(10)
                .zip(&eval.labels)
                .filter(|(row, label)| {
                    let best = (0..10)
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                        .unwrap_or(0);
                    best == usize::from(**label)
                })
                .count();
            correct as f64 / eval.len() as f64 * 100.0
        };
        let started = std::time::Instant::now();
        let fp32_logits = trained.logits(&eval.features)?;
        let fp32_rate = eval.len() as f64 / started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let int8_logits = int8.logits(&eval.features);
        let int8_rate = eval.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "quantisation {name}: fp32 {:.2} % ({fp32_bytes} bytes, {fp32_rate:.0} samples/s), int8 {:.2} % ({int8_bytes} bytes, {:.2}x smaller, {int8_rate:.0} samples/s, one thread)",
            accuracy(&fp32_logits),
            accuracy(&int8_logits),
            fp32_bytes as f64 / int8_bytes.max(1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Knowledge distillation: a LeNet teacher trained 2 epochs on MNIST, then an MLP student with
/// one hidden layer of 64 trained 3 epochs alone and with `distillation` (temperatures 2 and 4,
/// alpha 0.5 and 0.9); test accuracy, mean of seeds 1–3.
pub fn distillation(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ferrotrain-bench-teacher-{}", std::process::id()));
    let uri = format!("file://{}", dir.display());
    let teacher_spec: TrainerSpec = serde_yaml::from_str(
        "model: {type: lenet}\ndataset: {type: mnist}\nbatchSize: 64\noptimizer: {type: adam, lr: 0.001}\nepochs: 2\nseed: 42\n",
    )?;
    let store = CheckpointStore::new(
        storage::open(&uri, &S3Options::default())?,
        1,
        config_hash(&teacher_spec, data),
    )
    .with_trained(Trained {
        trainer: teacher_spec.clone(),
        features: data.train.dim,
        classes: data.classes(),
        image: data.train.image.map(|i| [i.height, i.width, i.channels]),
    });
    let checkpoint = Some(CheckpointPlan {
        store,
        every_steps: None,
        every_seconds: None,
        resume: false,
    });
    let start = Start {
        checkpoint,
        ..Start::default()
    };
    let teacher = alone(data, rt, teacher_spec, start)?;
    println!(
        "distillation teacher: LeNet, {:.2} % MNIST test accuracy after {} steps",
        teacher.metrics.get("valAccuracy").copied().unwrap_or(0.0) * 100.0,
        teacher.step
    );
    let settings = [
        None,
        Some((2.0, 0.5)),
        Some((2.0, 0.9)),
        Some((4.0, 0.5)),
        Some((4.0, 0.9)),
    ];
    for setting in settings {
        let mut accuracies = Vec::new();
        for seed in 1..=3 {
            let spec: TrainerSpec = serde_yaml::from_str(&format!(
                "model: {{type: mlp, hidden: [64]}}\ndataset: {{type: mnist}}\nbatchSize: 64\noptimizer: {{type: adam, lr: 0.001}}\nepochs: 3\nseed: {seed}\n"
            ))?;
            let teacher = match setting {
                Some((temperature, alpha)) => Some(Teacher {
                    store: CheckpointStore::new(storage::open(&uri, &S3Options::default())?, 1, ""),
                    manifest_key: None,
                    uri: uri.clone(),
                    temperature,
                    alpha,
                }),
                None => None,
            };
            let start = Start {
                teacher,
                ..Start::default()
            };
            let summary = alone(data, rt, spec, start)?;
            accuracies.push(summary.metrics.get("valAccuracy").copied().unwrap_or(0.0) * 100.0);
        }
        let (mean, seeds) = mean_and_seeds(&accuracies);
        let student = setting.map_or("alone".to_string(), |(t, a)| {
            format!("from the teacher, T {t}, alpha {a}")
        });
        println!(
            "distillation student mlp [64] {student}: {mean:.2} % MNIST test accuracy (seeds 1-3: {seeds}) after 3 epochs"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The mean of per-seed accuracies and the list of them, for a line of output.
fn mean_and_seeds(accuracies: &[f64]) -> (f64, String) {
    let mean = accuracies.iter().sum::<f64>() / accuracies.len().max(1) as f64;
    let seeds = accuracies
        .iter()
        .map(|a| format!("{a:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    (mean, seeds)
}

/// Batch normalisation: LeNet on MNIST (batch 64, seed 1, one rank) with and without
/// `model.batchNorm`, at three optimiser settings; the test accuracy every 100 steps up to 3,000,
/// the first step at which it reaches 98 %, and the training samples/s of each.
pub fn batch_norm(data: &Splits) -> anyhow::Result<()> {
    use ferrotrain_trainer::nn::model::{Network, Workspace};
    use ferrotrain_trainer::optim::Optimizer;
    use ferrotrain_trainer::rng::{Rng, Stream};

    let (batch, every, limit) = (64usize, 100u64, 3000u64);
    for setting in [
        "{type: adam, lr: 0.001}",
        "{type: adam, lr: 0.01}",
        "{type: sgd, lr: 0.1, momentum: 0.9}",
    ] {
        for normalised in [false, true] {
            let spec: TrainerSpec = serde_yaml::from_str(&format!(
                "model: {{type: lenet, batchNorm: {normalised}}}\ndataset: {{type: mnist}}\nbatchSize: {batch}\noptimizer: {setting}\nseed: 1\n"
            ))?;
            let net = Network::new(&spec.model, data.train.dim, data.classes())?;
            let optimizer_spec = spec.optimizer_or_default();
            let lr = optimizer_spec.lr_or_default() as f32;
            let mut optimizer = Optimizer::new(&optimizer_spec, net.trainable);
            let mut params = net.init_params(1);
            let mut grads = vec![0.0; net.num_params];
            let mut ws = Workspace::default();
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let mut order: Vec<usize> = Vec::new();
            let (mut reached, mut best, mut seconds) = (None, 0.0f64, 0.0f64);
            let per_epoch = data.train.len() / batch;
            for step in 0..limit {
                let epoch = step as usize / per_epoch;
                if (step as usize).is_multiple_of(per_epoch) {
                    order = (0..data.train.len()).collect();
                    Rng::derive(1, Stream::Shuffle, &[epoch as u64]).shuffle(&mut order);
                }
                let at = (step as usize % per_epoch) * batch;
                data.train.gather(&order[at..at + batch], &mut x, &mut y);
                let started = std::time::Instant::now();
                net.train_step(&params, &mut grads, &x, &y, &mut Rng::new(step), &mut ws);
                optimizer.step(&mut params[..net.trainable], &grads[..net.trainable], lr);
                net.update_running_statistics(&mut params, &grads);
                seconds += started.elapsed().as_secs_f64();
                if (step + 1) % every == 0 {
                    let accuracy = test_accuracy(&net, &params, data, &mut ws);
                    best = best.max(accuracy);
                    if accuracy >= 0.98 && reached.is_none() {
                        reached = Some(step + 1);
                    }
                }
            }
            println!(
                "batch norm lenet {setting}, batchNorm {normalised}: 98 % test accuracy after {} steps; best {:.2} % within {limit}; {:.0} samples/s",
                reached.map_or(format!("more than {limit}"), |s| s.to_string()),
                best * 100.0,
                (limit as usize * batch) as f64 / seconds
            );
        }
    }
    Ok(())
}

/// Accuracy on the test images, in evaluation mode.
fn test_accuracy(
    net: &ferrotrain_trainer::nn::model::Network,
    params: &[f32],
    data: &Splits,
    ws: &mut ferrotrain_trainer::nn::model::Workspace,
) -> f64 {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let (mut correct, mut count) = (0usize, 0usize);
    let rows: Vec<usize> = (0..data.eval.len()).collect();
    for chunk in rows.chunks(1000) {
        data.eval.gather(chunk, &mut x, &mut y);
        let stats = net.evaluate(params, &x, &y, ws);
        correct += stats.correct;
        count += stats.count;
    }
    correct as f64 / count.max(1) as f64
}
