//! A run stopped by SIGTERM (emergency checkpoint) and resumed ends with exactly the parameters of
//! an uninterrupted run, and a checkpoint of another configuration is refused.

use ferrotrain_crds::TrainerSpec;
use ferrotrain_trainer::checkpoint::layout::Trained;
use ferrotrain_trainer::checkpoint::store::CheckpointStore;
use ferrotrain_trainer::data::idx::{self, IdxArray};
use ferrotrain_trainer::data::load::{self, Splits};
use ferrotrain_trainer::dist::ring::Ring;
use ferrotrain_trainer::nn::model::Network;
use ferrotrain_trainer::run::config_hash;
use ferrotrain_trainer::storage::{self, S3Options};
use ferrotrain_trainer::train::job::{
    CheckpointPlan, Job, Outcome, Summary, Teacher, TrainError, WarmStart,
};
use ferrotrain_trainer::train::steps::train;

struct Fixture {
    dir: std::path::PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ferrotrain-resume-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // Four classes decided by the signs of two feature combinations, plus noise features.
        let mut csv = String::from("label,f0,f1,f2,f3,f4,f5\n");
        let mut x = 12345u64;
        for _ in 0..1500 {
            let mut f = [0f32; 6];
            for v in &mut f {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *v = ((x >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0;
            }
            let label = usize::from(f[0] + f[1] > 0.0) * 2 + usize::from(f[2] - f[3] > 0.0);
            csv.push_str(&format!("{label},{}\n", f.map(|v| v.to_string()).join(",")));
        }
        std::fs::write(dir.join("data.csv"), csv).expect("write csv");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        Self { dir, runtime }
    }

    fn spec(&self, extra: &str) -> TrainerSpec {
        serde_yaml::from_str(&format!(
            "model: {{type: mlp, hidden: [32, 16], dropout: 0.1}}\ndataset: {{type: csv, uri: 'file://{}', header: true}}\nbatchSize: 32\nepochs: 4\noptimizer: {{type: adam, lr: 0.01}}\nlrSchedule: {{type: cosine, warmupSteps: 10}}\ngradClipNorm: 5.0\nseed: 7\n{extra}",
            self.dir.join("data.csv").display()
        ))
        .expect("spec")
    }

    /// A spec over 8×8 images of four line shapes (a row, a column, either diagonal) at random
    /// places, on a noisy background, written as an IDX pair.
    fn image_spec(&self, augment: &str) -> TrainerSpec {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        let mut x = 99u64;
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        for i in 0..1500 {
            let label = i % 4;
            let at = 2 + next(4) as usize;
            let mut image = [0u8; 64];
            for (p, v) in image.iter_mut().enumerate() {
                let (row, column) = (p / 8, p % 8);
                let on = match label {
                    0 => row == at,
                    1 => column == at,
                    2 => row == column,
                    _ => row + column == 7,
                };
                *v = if on { 255 } else { next(60) as u8 };
            }
            images.extend_from_slice(&image);
            labels.push(label as u8);
        }
        let write = |name: &str, dims: Vec<usize>, data: Vec<u8>| {
            let path = self.dir.join(name);
            std::fs::write(&path, idx::encode(&IdxArray { dims, data })).expect("write idx");
            format!("file://{}", path.display())
        };
        let images = write("images.idx", vec![1500, 8, 8], images);
        let labels = write("labels.idx", vec![1500], labels);
        serde_yaml::from_str(&format!(
            "model: {{type: mlp, hidden: [32, 16]}}\ndataset: {{type: idx, images: '{images}', labels: '{labels}'{augment}}}\nbatchSize: 32\nepochs: 4\noptimizer: {{type: adam, lr: 0.01}}\nseed: 7\n"
        ))
        .expect("spec")
    }

    fn data(&self, spec: &TrainerSpec) -> Splits {
        self.runtime
            .block_on(load::load(
                &spec.dataset,
                &self.dir,
                7,
                &S3Options::default(),
            ))
            .expect("data")
    }

    fn plan(&self, spec: &TrainerSpec, data: &Splits) -> CheckpointPlan {
        let location = storage::open(
            &format!("file://{}", self.dir.join("ckpt").display()),
            &S3Options::default(),
        )
        .expect("store");
        CheckpointPlan {
            store: CheckpointStore::new(location, 2, config_hash(spec, data)),
            every_steps: Some(20),
            every_seconds: None,
            resume: true,
        }
    }

    fn run(
        &self,
        spec: &TrainerSpec,
        checkpoint: Option<CheckpointPlan>,
        stop_after_step: Option<u64>,
    ) -> Result<Outcome, TrainError> {
        self.run_with(spec, checkpoint, stop_after_step, None, None)
    }

    fn run_with(
        &self,
        spec: &TrainerSpec,
        checkpoint: Option<CheckpointPlan>,
        stop_after_step: Option<u64>,
        fail_after_step: Option<u64>,
        warm_start: Option<WarmStart>,
    ) -> Result<Outcome, TrainError> {
        let data = self.data(spec);
        // The teacher of a distilled spec, as the trainer's runner opens it.
        let teacher = spec.distillation.as_ref().map(|d| Teacher {
            store: CheckpointStore::new(
                storage::open(&d.teacher, &S3Options::default()).expect("teacher store"),
                1,
                "",
            ),
            manifest_key: None,
            uri: d.teacher.clone(),
            temperature: d.temperature_or_default() as f32,
            alpha: d.alpha_or_default() as f32,
        });
        let job = Job {
            teacher,
            checkpoint,
            warm_start,
            stop_after_step,
            fail_after_step,
            ..Job::new(spec.clone())
        };
        train(job, &data, &mut Ring::single(), self.runtime.handle())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn killed_and_resumed_run_matches_the_uninterrupted_run_bit_for_bit() {
    let fx = Fixture::new("determinism");
    assert_resume_is_bit_exact(&fx, &fx.spec(""));
}

/// The L1 penalty is part of every update: a resumed run applies it exactly as before.
#[test]
fn a_resumed_run_with_l1_matches_the_uninterrupted_run_bit_for_bit() {
    let fx = Fixture::new("determinism-l1");
    let mut spec = fx.spec("");
    if let Some(optimizer) = spec.optimizer.as_mut() {
        optimizer.l1 = Some(1e-3);
    }
    assert_resume_is_bit_exact(&fx, &spec);
}

/// Augmented images are drawn from (seed, step, rank): a resumed run trains on the images the
/// uninterrupted run trained on.
#[test]
fn a_resumed_run_with_augmentation_matches_the_uninterrupted_run_bit_for_bit() {
    let fx = Fixture::new("determinism-augment");
    let augmented =
        fx.image_spec(", augment: {shiftPixels: 1, rotationDegrees: 10, noiseStd: 0.05}");
    let with = assert_resume_is_bit_exact(&fx, &augmented);
    // And augmentation took part: without it the same run ends elsewhere.
    let Ok(Outcome::Completed(without)) = fx.run(&fx.image_spec(""), None, None) else {
        panic!("the run completes")
    };
    assert!(with.params != without.params);
}

/// The pruning mask is part of the checkpoint: a run stopped between two pruning rounds resumes
/// with the weights it had pruned and prunes the same ones after.
#[test]
fn a_resumed_run_with_pruning_matches_the_uninterrupted_run_bit_for_bit() {
    let fx = Fixture::new("determinism-pruning");
    let spec = fx.spec(
        "compression: {pruning: {sparsity: 0.5, startStep: 10, endStep: 150, everySteps: 20}}\n",
    );
    let pruned = assert_resume_is_bit_exact(&fx, &spec);
    let data = fx.data(&spec);
    let net = Network::new(&spec.model, data.train.dim, data.classes()).expect("network");
    for layer in net.parameter_layers().into_iter().map(|l| l.weights) {
        let zeros = pruned.params[layer.clone()]
            .iter()
            .filter(|w| **w == 0.0)
            .count();
        assert_eq!(zeros, layer.len() / 2, "half of every layer is pruned");
    }
}

/// Batch normalisation's running statistics are part of the checkpoint's parameters: a resumed
/// run evaluates and ends with exactly the statistics of an uninterrupted one.
#[test]
fn a_resumed_run_with_batch_normalisation_matches_the_uninterrupted_run_bit_for_bit() {
    let fx = Fixture::new("determinism-batch-norm");
    let mut spec = fx.spec("");
    spec.model.batch_norm = Some(true);
    let normalised = assert_resume_is_bit_exact(&fx, &spec);
    let data = fx.data(&spec);
    let net = Network::new(&spec.model, data.train.dim, data.classes()).expect("network");
    assert_eq!(normalised.params.len(), net.num_params);
    // The running statistics moved from their start (mean 0, variance 1).
    let (means, variances) = normalised.params[net.trainable..].split_at(32);
    assert!(means.iter().any(|m| m.abs() > 0.01), "{means:?}");
    assert!(
        variances.iter().any(|v| (v - 1.0).abs() > 0.01),
        "{variances:?}"
    );
}

/// Runs `spec` uninterrupted and stopped then resumed, checks both end alike and returns the
/// uninterrupted run.
fn assert_resume_is_bit_exact(fx: &Fixture, spec: &TrainerSpec) -> Summary {
    let Ok(Outcome::Completed(reference)) = fx.run(spec, None, None) else {
        panic!("reference run completes")
    };
    assert!(
        reference.metrics["valAccuracy"] > 0.8,
        "the task is learnable: {:?}",
        reference.metrics
    );

    let data = fx.data(spec);
    let Ok(Outcome::Preempted(first)) = fx.run(spec, Some(fx.plan(spec, &data)), Some(57)) else {
        panic!("first attempt is preempted")
    };
    assert_eq!(first.step, 57);
    assert_eq!(
        first.checkpoint.as_ref().map(|c| c.step),
        Some(57),
        "emergency checkpoint at the stop step"
    );

    let Ok(Outcome::Completed(resumed)) = fx.run(spec, Some(fx.plan(spec, &data)), None) else {
        panic!("second attempt completes")
    };
    assert_eq!(resumed.resumed_from, Some(57));
    assert_eq!(resumed.step, reference.step);
    assert!(
        resumed.params == reference.params,
        "parameters differ after resume"
    );
    assert_eq!(resumed.metrics, reference.metrics);
    reference
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let fx = Fixture::new("incompatible");
    let spec = fx.spec("");
    let data = fx.data(&spec);
    let Ok(Outcome::Preempted(_)) = fx.run(&spec, Some(fx.plan(&spec, &data)), Some(5)) else {
        panic!("preempted")
    };
    let mut other = spec.clone();
    other.model.hidden = Some(vec![8]);
    let error = fx
        .run(&other, Some(fx.plan(&other, &data)), None)
        .expect_err("refused");
    assert!(
        error.to_string().contains("different configuration"),
        "{error}"
    );
    // A configuration error: the job fails at once instead of spending its restart budget.
    assert_eq!(
        ferrotrain_trainer::run::exit_code_of(&error),
        ferrotrain_trainer::exit::BAD_CONFIG
    );
}

#[test]
fn early_stopping_ends_the_run_before_the_last_epoch() {
    let fx = Fixture::new("early");
    let spec = fx.spec(
        "evalEverySteps: 5\nearlyStopping: {metric: valAccuracy, patience: 1, minDelta: 0.5}\n",
    );
    let Ok(Outcome::Completed(summary)) = fx.run(&spec, None, None) else {
        panic!("completes")
    };
    assert!(summary.early_stopped);
    assert_eq!(
        summary.step, 10,
        "no evaluation can improve by 0.5, so the second one stops the run"
    );
}

#[test]
fn a_device_failure_commits_an_emergency_checkpoint_and_the_next_attempt_resumes_from_it() {
    let fx = Fixture::new("device-failure");
    let spec = fx.spec("");
    let data = fx.data(&spec);
    // Checkpoints every 20 steps; the device fails in step 34, after 33 completed steps.
    let failed = fx.run_with(&spec, Some(fx.plan(&spec, &data)), None, Some(33), None);
    assert!(
        matches!(&failed, Err(TrainError::Engine(e)) if e.0.contains("injected device failure")),
        "the failure is reported as the engine's: {failed:?}"
    );
    let Ok(Outcome::Completed(resumed)) = fx.run(&spec, Some(fx.plan(&spec, &data)), None) else {
        panic!("the next attempt completes")
    };
    assert_eq!(
        resumed.resumed_from,
        Some(33),
        "resumed from the emergency checkpoint, not the periodic one at step 20"
    );
}

#[test]
fn a_diverging_run_stops_with_an_error_instead_of_training_on_nan() {
    let fx = Fixture::new("diverge");
    let mut spec = fx.spec("");
    spec.grad_clip_norm = None;
    spec.optimizer.as_mut().expect("optimizer").lr = Some(1e30);
    match fx.run(&spec, None, None) {
        Err(TrainError::Diverged { step, loss }) => {
            assert!(!loss.is_finite(), "{loss}");
            assert!(step < 50, "stopped at step {step}");
        }
        other => panic!("expected a divergence error, got {other:?}"),
    }
}

/// When every checkpoint fails verification the run starts from step 0, and says so: the
/// summary (and every progress report of the attempt) names how many were passed over and why.
#[test]
fn a_resume_that_rejects_every_checkpoint_says_so() {
    let fx = Fixture::new("all-rejected");
    let spec = fx.spec("");
    let data = fx.data(&spec);
    let Ok(Outcome::Preempted(first)) = fx.run(&spec, Some(fx.plan(&spec, &data)), Some(57)) else {
        panic!("first attempt is preempted")
    };
    assert_eq!(first.step, 57);
    // Flip one byte of every data object: no checkpoint verifies any more.
    let mut objects = Vec::new();
    let mut dirs = vec![fx.dir.join("ckpt")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if !path.to_string_lossy().contains("manifests") {
                objects.push(path);
            }
        }
    }
    assert!(!objects.is_empty(), "checkpoint data objects exist");
    for path in &objects {
        let mut bytes = std::fs::read(path).expect("read");
        bytes[0] ^= 0xff;
        std::fs::write(path, bytes).expect("write");
    }
    let Ok(Outcome::Completed(second)) = fx.run(&spec, Some(fx.plan(&spec, &data)), None) else {
        panic!("second attempt completes from scratch")
    };
    assert_eq!(second.resumed_from, None);
    let rejected = second
        .rejected_checkpoints
        .expect("the rejects are reported");
    assert_eq!((rejected.count, rejected.newest_step), (2, 57), "keep: 2");
    assert_eq!(rejected.resumed_from, None);
    let line = rejected.describe();
    assert!(
        line.starts_with("2 checkpoints failed verification (newest, step 57: ")
            && line.contains("SHA-256 does not match")
            && line.ends_with("training restarted from step 0"),
        "{line}"
    );
}

impl Fixture {
    /// A warm start from the checkpoints under `dir` (relative to the fixture).
    fn warm_start(&self, dir: &str, reset_optimizer: bool, continue_steps: bool) -> WarmStart {
        let uri = format!("file://{}", self.dir.join(dir).display());
        WarmStart {
            store: CheckpointStore::new(
                storage::open(&uri, &S3Options::default()).expect("store"),
                1,
                "",
            ),
            manifest_key: None,
            uri,
            reset_optimizer,
            continue_steps,
            layers: None,
        }
    }

    /// Checkpoints to `dir` (relative to the fixture), with the model described in manifests.
    fn plan_in(&self, dir: &str, spec: &TrainerSpec, data: &Splits) -> CheckpointPlan {
        let location = storage::open(
            &format!("file://{}", self.dir.join(dir).display()),
            &S3Options::default(),
        )
        .expect("store");
        let net = Network::new(&spec.model, data.train.dim, 4).expect("network");
        CheckpointPlan {
            store: CheckpointStore::new(location, 2, config_hash(spec, data))
                .with_trained(Trained {
                    trainer: spec.clone(),
                    features: data.train.dim,
                    classes: data.classes(),
                    image: None,
                })
                .with_model(ferrotrain_trainer::nn::describe::describe(
                    &spec.model,
                    &net,
                )),
            every_steps: None,
            every_seconds: None,
            resume: true,
        }
    }
}

fn steps_spec(fx: &Fixture, max_steps: i64) -> TrainerSpec {
    let mut spec = fx.spec("");
    spec.lr_schedule = None;
    spec.epochs = None;
    spec.max_steps = Some(max_steps);
    spec
}

#[test]
fn a_warm_start_that_continues_the_steps_matches_the_uninterrupted_run() {
    let fx = Fixture::new("warm-continue");
    let Ok(Outcome::Completed(reference)) = fx.run(&steps_spec(&fx, 120), None, None) else {
        panic!("reference run completes")
    };
    let first = steps_spec(&fx, 50);
    let data = fx.data(&first);
    let Ok(Outcome::Completed(_)) = fx.run(&first, Some(fx.plan_in("first", &first, &data)), None)
    else {
        panic!("first segment completes")
    };
    // A second job, with checkpoints of its own elsewhere, continues from the first one's.
    let second = steps_spec(&fx, 120);
    let Ok(Outcome::Completed(continued)) = fx.run_with(
        &second,
        Some(fx.plan_in("second", &second, &data)),
        None,
        None,
        Some(fx.warm_start("first", false, true)),
    ) else {
        panic!("second segment completes")
    };
    assert_eq!(continued.step, 120);
    assert_eq!(continued.resumed_from, None, "a warm start is not a resume");
    assert!(
        continued.params == reference.params,
        "the continued parameters equal the uninterrupted run's"
    );
}

#[test]
fn a_warm_start_without_continuing_starts_at_step_zero_from_the_trained_parameters() {
    let fx = Fixture::new("warm-fresh");
    let spec = steps_spec(&fx, 60);
    let data = fx.data(&spec);
    let Ok(Outcome::Completed(trained)) =
        fx.run(&spec, Some(fx.plan_in("source", &spec, &data)), None)
    else {
        panic!("source completes")
    };
    // Fine-tuning with another optimiser: its state cannot be taken, so it is reset.
    let mut sgd = steps_spec(&fx, 1);
    sgd.optimizer = serde_yaml::from_str("{type: sgd, lr: 0.0}").ok();
    let refused = fx.run_with(
        &sgd,
        None,
        None,
        None,
        Some(fx.warm_start("source", false, false)),
    );
    let Err(TrainError::Config(message)) = refused else {
        panic!("the optimiser state of adam does not fit sgd: {refused:?}")
    };
    assert!(message.contains("resetOptimizer: true"), "{message}");
    let Ok(Outcome::Completed(tuned)) = fx.run_with(
        &sgd,
        None,
        None,
        None,
        Some(fx.warm_start("source", true, false)),
    ) else {
        panic!("fine-tuning completes")
    };
    assert_eq!(tuned.step, 1, "the count starts again at step 0");
    // lr 0: the one step changes nothing, so the parameters are the source's final ones.
    assert!(tuned.params == trained.params);
}

#[test]
fn a_warm_start_into_another_model_names_both_models() {
    let fx = Fixture::new("warm-model");
    let spec = steps_spec(&fx, 20);
    let data = fx.data(&spec);
    let Ok(Outcome::Completed(_)) = fx.run(&spec, Some(fx.plan_in("source", &spec, &data)), None)
    else {
        panic!("source completes")
    };
    let mut wider = steps_spec(&fx, 20);
    wider.model.hidden = Some(vec![64, 16]);
    let result = fx.run_with(
        &wider,
        None,
        None,
        None,
        Some(fx.warm_start("source", false, false)),
    );
    let Err(TrainError::Config(message)) = result else {
        panic!("a model mismatch is refused: {result:?}")
    };
    assert!(
        message.contains("mlp [32, 16], 6 features, 4 classes")
            && message.contains("mlp [64, 16], 6 features, 4 classes"),
        "{message}"
    );
    let missing = fx.run_with(
        &spec,
        None,
        None,
        None,
        Some(fx.warm_start("nothing-here", false, false)),
    );
    let Err(TrainError::Config(message)) = missing else {
        panic!("no checkpoint to start from is an error: {missing:?}")
    };
    assert!(message.contains("no committed checkpoint"), "{message}");
}

/// Transfer learning: a model of six classes takes the first two layers of a four-class model's
/// checkpoint, its head starts from its own seed, and a frozen layer stays as taken.
#[test]
fn layers_taken_into_a_model_with_other_classes_start_with_a_fresh_head() {
    let fx = Fixture::new("transfer");
    let spec = steps_spec(&fx, 20);
    let data = fx.data(&spec);
    let Ok(Outcome::Completed(source)) =
        fx.run(&spec, Some(fx.plan_in("source", &spec, &data)), None)
    else {
        panic!("source completes")
    };
    let mut six = steps_spec(&fx, 30);
    six.dataset.classes = Some(6);
    let taking = |layers: &[&str]| {
        let mut warm = fx.warm_start("source", false, false);
        warm.layers = Some(layers.iter().map(ToString::to_string).collect());
        Some(warm)
    };
    let ours = Network::new(&six.model, 6, 6).expect("network");
    let (theirs, layers) = (
        Network::new(&spec.model, 6, 4)
            .expect("network")
            .parameter_layers(),
        ours.parameter_layers(),
    );
    // Learning rate 0: what the run ends with is what it started from.
    let mut still = six.clone();
    still.optimizer = serde_yaml::from_str("{type: sgd, lr: 0.0}").ok();
    let Ok(Outcome::Completed(taken)) =
        fx.run_with(&still, None, None, None, taking(&["fc1", "fc2"]))
    else {
        panic!("the transfer completes")
    };
    for i in 0..2 {
        assert_eq!(
            taken.params[layers[i].all()],
            source.params[theirs[i].all()],
            "{} is the checkpoint's",
            layers[i].name
        );
    }
    let fresh = ours.init_params(six.seed_or_default());
    assert_eq!(
        taken.params[layers[2].all()],
        fresh[layers[2].all()],
        "a fresh head"
    );
    // Trained with fc1 frozen: fc1 stays as taken, fc2 moves on.
    six.freeze = Some(vec!["fc1".into()]);
    let Ok(Outcome::Completed(tuned)) =
        fx.run_with(&six, None, None, None, taking(&["fc1", "fc2"]))
    else {
        panic!("fine-tuning completes")
    };
    assert_eq!(tuned.step, 30, "a new run");
    assert_eq!(
        tuned.params[layers[0].all()],
        source.params[theirs[0].all()]
    );
    assert_ne!(
        tuned.params[layers[1].all()],
        source.params[theirs[1].all()]
    );
    // The head of four classes fits no model of six: named, not taken.
    let Err(TrainError::Config(message)) =
        fx.run_with(&six, None, None, None, taking(&["fc1", "fc3"]))
    else {
        panic!("the head does not fit")
    };
    assert!(
        message.starts_with("spec.trainer.initFrom.layers[1]: fc3 has"),
        "{message}"
    );
}

/// Frozen layers are held at their starting values: a resumed run holds the same ones.
#[test]
fn a_resumed_run_with_a_frozen_layer_matches_the_uninterrupted_run_bit_for_bit() {
    let fx = Fixture::new("determinism-freeze");
    let spec = fx.spec("freeze: [fc1]\n");
    let run = assert_resume_is_bit_exact(&fx, &spec);
    let data = fx.data(&spec);
    let net = Network::new(&spec.model, data.train.dim, data.classes()).expect("network");
    let fc1 = net.parameter_layers()[0].all();
    assert_eq!(
        run.params[fc1.clone()],
        net.init_params(spec.seed_or_default())[fc1],
        "fc1 is as the seed made it"
    );
}

/// Distillation: every step adds the teacher's softened outputs to the loss; a resumed student
/// distils exactly as the uninterrupted one, and the teacher changes what it learns.
#[test]
fn a_resumed_distilled_run_matches_the_uninterrupted_run_bit_for_bit() {
    let fx = Fixture::new("determinism-distill");
    let teacher = steps_spec(&fx, 60);
    let data = fx.data(&teacher);
    let Ok(Outcome::Completed(_)) =
        fx.run(&teacher, Some(fx.plan_in("teacher", &teacher, &data)), None)
    else {
        panic!("the teacher trains")
    };
    let student = |distilled: bool| {
        let mut spec = fx.spec(&if distilled {
            format!(
                "distillation: {{teacher: 'file://{}', temperature: 3, alpha: 0.7}}\n",
                fx.dir.join("teacher").display()
            )
        } else {
            String::new()
        });
        spec.model.hidden = Some(vec![8]);
        spec
    };
    let with = assert_resume_is_bit_exact(&fx, &student(true));
    let Ok(Outcome::Completed(without)) = fx.run(&student(false), None, None) else {
        panic!("the student alone trains")
    };
    assert!(with.params != without.params, "the teacher took part");
    // A teacher for other data is refused by name.
    let mut wrong = student(true);
    wrong.dataset.classes = Some(6);
    let Err(TrainError::Config(message)) = fx.run(&wrong, None, None) else {
        panic!("a teacher of four classes cannot teach six")
    };
    assert!(
        message.starts_with("spec.trainer.distillation.teacher")
            && message.contains("4 classes")
            && message.contains("6"),
        "{message}"
    );
}
