//! Export: a trained model written as safetensors, ONNX and a model card reads back to the same
//! parameters and predicts what it evaluated to; onnxruntime computes the logits Ferrotrain
//! computes from the ONNX file (ignored here: `scripts/test.sh` runs it with onnxruntime
//! installed, `FERROTRAIN_ONNXRUNTIME` naming its Python path).

use std::path::{Path, PathBuf};

use ferrotrain_crds::{OutputFormat, TrainerSpec};
use ferrotrain_trainer::checkpoint::layout::Trained;
use ferrotrain_trainer::checkpoint::store::CheckpointStore;
use ferrotrain_trainer::data::load::{self, Splits};
use ferrotrain_trainer::dist::ring::Ring;
use ferrotrain_trainer::export::{self, Model};
use ferrotrain_trainer::run::config_hash;
use ferrotrain_trainer::storage::{self, S3Options};
use ferrotrain_trainer::train::job::{CheckpointPlan, Job, Outcome, OutputPlan, Summary};
use ferrotrain_trainer::train::steps::train;

const LENET: &str =
    "model: {type: lenet}\ndataset: {type: mnist}\nbatchSize: 64\nmaxSteps: 120\nseed: 3\n";
const LENET_BATCH_NORM: &str = "model: {type: lenet, batchNorm: true}\ndataset: {type: mnist}\nbatchSize: 64\nmaxSteps: 120\nseed: 3\n";
const MLP: &str = "model: {type: mlp, hidden: [64, 32], dropout: 0.2}\ndataset: {type: mnist}\nbatchSize: 64\nmaxSteps: 120\nseed: 3\n";

struct TrainedRun {
    dir: PathBuf,
    data: Splits,
    summary: Summary,
    model: Model,
}

/// A runtime, the spec of `yaml` and its MNIST splits.
fn mnist(yaml: &str) -> (tokio::runtime::Runtime, TrainerSpec, Splits) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let spec: TrainerSpec = serde_yaml::from_str(yaml).expect("spec");
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let data = runtime
        .block_on(load::load(
            &spec.dataset,
            &data_dir,
            3,
            &S3Options::default(),
        ))
        .expect("mnist");
    (runtime, spec, data)
}

/// Trains `yaml` on MNIST with a checkpoint in a scratch directory and exports it from there.
fn train_and_export(name: &str, yaml: &str) -> TrainedRun {
    let dir = std::env::temp_dir().join(format!("ferrotrain-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (runtime, spec, data) = mnist(yaml);
    let uri = format!("file://{}", dir.join("ckpt").display());
    let store = CheckpointStore::new(
        storage::open(&uri, &S3Options::default()).expect("store"),
        1,
        config_hash(&spec, &data),
    )
    .with_trained(Trained {
        trainer: spec.clone(),
        features: data.train.dim,
        classes: data.classes(),
        image: data.train.image.map(|i| [i.height, i.width, i.channels]),
    });
    let job = Job {
        checkpoint: Some(CheckpointPlan {
            store,
            every_steps: None,
            every_seconds: None,
            resume: false,
        }),
        ..Job::new(spec)
    };
    let Ok(Outcome::Completed(summary)) = train(job, &data, &mut Ring::single(), runtime.handle())
    else {
        panic!("training completes")
    };
    let model = runtime
        .block_on(export::from_checkpoint(&uri, &S3Options::default()))
        .expect("the checkpoint exports");
    export::write(&model, &dir.join("model"), None).expect("written");
    TrainedRun {
        dir,
        data,
        summary,
        model,
    }
}

fn predicted(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap_or(0)
        })
        .collect()
}

/// The share of the evaluation images `model` predicts right.
fn test_accuracy(model: &Model, data: &Splits) -> f64 {
    let eval = &data.eval;
    let logits = model.logits(&eval.features).expect("logits");
    let correct = predicted(&logits, 10)
        .iter()
        .zip(&eval.labels)
        .filter(|(p, l)| **p == usize::from(**l))
        .count();
    correct as f64 / eval.len() as f64
}

#[test]
fn an_exported_model_reads_back_and_predicts_what_it_evaluated_to() {
    for (name, yaml) in [("lenet", LENET), ("mlp", MLP)] {
        let run = train_and_export(name, yaml);
        let read = export::read(&run.dir.join("model")).expect("reads back");
        assert!(
            read.params == run.summary.params,
            "{name}: the same parameters"
        );
        assert_eq!(read, run.model, "{name}: the same model");
        let card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.dir.join("model/model.json")).expect("card"))
                .expect("json");
        assert_eq!(card["trained"]["trainer"]["maxSteps"], 120);
        assert_eq!(card["step"], 120);
        let accuracy = test_accuracy(&read, &run.data);
        let evaluated = run.summary.metrics["valAccuracy"];
        assert!(
            (accuracy - evaluated).abs() < 1e-9,
            "{name}: predictions give {accuracy}, the run evaluated {evaluated}"
        );
        assert!(accuracy > 0.8, "{name}: learnt something: {accuracy}");
        let _ = std::fs::remove_dir_all(&run.dir);
    }
}

/// spec.output: a run exports its model when it completes, batch normalisation folded into the
/// layers before it; the files read back and predict what the run evaluated to.
#[test]
fn a_run_with_an_output_exports_its_model_when_it_completes() {
    let dir = std::env::temp_dir().join(format!("ferrotrain-output-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (runtime, spec, data) = mnist(LENET_BATCH_NORM);
    let out = dir.join("out");
    let location = storage::open(&format!("file://{}", out.display()), &S3Options::default())
        .expect("output location");
    let job = Job {
        output: Some(OutputPlan {
            location,
            formats: vec![OutputFormat::Safetensors, OutputFormat::Int8],
        }),
        ..Job::new(spec)
    };
    let Ok(Outcome::Completed(summary)) = train(job, &data, &mut Ring::single(), runtime.handle())
    else {
        panic!("training completes")
    };
    let mut names: Vec<&str> = summary.output.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["model.int8.safetensors", "model.json", "model.safetensors"],
        "the formats asked for and the model card; no ONNX"
    );
    for file in &summary.output {
        let on_disk = std::fs::metadata(out.join(&file.name)).expect("written");
        assert_eq!(on_disk.len(), file.bytes, "{}", file.name);
    }
    let read = export::read(&out).expect("reads back");
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.json")).expect("card"))
            .expect("json");
    assert_eq!(card["trained"]["trainer"]["model"]["batchNorm"], true);
    assert!(
        card["layout"]
            .as_str()
            .is_some_and(|l| l.contains("batch normalisation folded")),
        "{card}"
    );
    let accuracy = test_accuracy(&read, &data);
    let evaluated = summary.metrics["valAccuracy"];
    // Folding rounds differently from normalising: a rare image near a boundary may flip.
    assert!(
        (accuracy - evaluated).abs() <= 0.001,
        "the folded model predicts {accuracy}, the run evaluated {evaluated}"
    );
    assert!(accuracy > 0.9, "learnt something: {accuracy}");
    export::read_int8(&out).expect("the int8 model reads back");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs onnxruntime: FERROTRAIN_ONNXRUNTIME names a Python path that has it"]
fn onnxruntime_computes_the_logits_ferrotrain_computes() {
    let python_path =
        std::env::var("FERROTRAIN_ONNXRUNTIME").expect("FERROTRAIN_ONNXRUNTIME is set");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/onnx-check.py");
    for (name, yaml) in [
        ("lenet-onnx", LENET),
        ("lenet-batch-norm-onnx", LENET_BATCH_NORM),
        ("mlp-onnx", MLP),
    ] {
        let run = train_and_export(name, yaml);
        let eval = &run.data.eval;
        let rows = &eval.features[..1000 * eval.dim];
        let rows_file = run.dir.join("rows.f32");
        let logits_file = run.dir.join("logits.f32");
        std::fs::write(
            &rows_file,
            rows.iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .expect("rows");
        let status = std::process::Command::new("python3")
            .arg(&script)
            .arg(run.dir.join("model/model.onnx"))
            .arg(&rows_file)
            .arg(eval.dim.to_string())
            .arg(&logits_file)
            .env("PYTHONPATH", &python_path)
            .status()
            .expect("python3 runs");
        assert!(status.success(), "{name}: onnxruntime ran the model");
        let theirs: Vec<f32> = std::fs::read(&logits_file)
            .expect("logits")
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let ours = run.model.logits(rows).expect("our logits");
        assert_eq!(theirs.len(), ours.len(), "{name}: 1,000 rows of logits");
        let max_difference = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{name}: onnxruntime against Ferrotrain on 1,000 MNIST test images: max |logit difference| {max_difference:e}"
        );
        assert!(max_difference <= 1e-4, "{name}: {max_difference}");
        assert_eq!(predicted(&ours, 10), predicted(&theirs, 10), "{name}");
        let _ = std::fs::remove_dir_all(&run.dir);
    }
}
