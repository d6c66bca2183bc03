//! `ferrotrain export` and `ferrotrain predict` on a job trained by `ferrotrain run`: the model
//! files appear, predictions come back with the accuracy the run evaluated to, and what cannot be
//! exported is refused naming why.

mod common;
use common::Scratch;

#[test]
fn a_trained_job_exports_and_its_model_predicts() {
    let s = Scratch::new("export");
    let uri = format!("file://{}", s.0.join("ckpt").display());
    let manifest = s.manifest_of_steps("exported", &uri, "", 200);
    let manifest = manifest.display().to_string();
    let run = s
        .ferrotrain(&["run", &manifest, "--output", "json"])
        .output()
        .expect("runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let export = s
        .ferrotrain(&["export", &manifest, "--out", "model", "--int8"])
        .output()
        .expect("exports");
    let stdout = String::from_utf8_lossy(&export.stdout);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert!(stdout.contains("exported step 200"), "{stdout}");
    for file in [
        "model.safetensors",
        "model.onnx",
        "model.json",
        "model.int8.safetensors",
    ] {
        assert!(s.0.join("model").join(file).is_file(), "{file}");
    }
    let mnist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let images = mnist
        .join("t10k-images-idx3-ubyte.gz")
        .display()
        .to_string();
    let labels = mnist
        .join("t10k-labels-idx1-ubyte.gz")
        .display()
        .to_string();
    let predict = s
        .ferrotrain(&["predict", "model", &images, "--labels", &labels])
        .output()
        .expect("predicts");
    let stdout = String::from_utf8_lossy(&predict.stdout);
    assert!(
        predict.status.success(),
        "{}",
        String::from_utf8_lossy(&predict.stderr)
    );
    // The accuracy the run evaluated on the same 10,000 images, as the model card records it.
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.0.join("model/model.json")).expect("card"))
            .expect("json");
    let evaluated = card["metrics"]["valAccuracy"].as_f64().expect("accuracy") * 100.0;
    assert!(
        stdout.starts_with(&format!("accuracy {evaluated:.2} % (")),
        "{stdout} against {evaluated}"
    );
    // The int8 model, calibrated on 1,000 training images, within a point of it.
    let int8 = s
        .ferrotrain(&["predict", "model", &images, "--labels", &labels, "--int8"])
        .output()
        .expect("predicts in int8");
    let stdout = String::from_utf8_lossy(&int8.stdout);
    assert!(
        int8.status.success(),
        "{}",
        String::from_utf8_lossy(&int8.stderr)
    );
    let int8_accuracy: f64 = stdout
        .strip_prefix("accuracy ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|number| number.parse().ok())
        .expect("an accuracy");
    assert!(
        (int8_accuracy - evaluated).abs() < 1.0,
        "int8 {int8_accuracy} against {evaluated}"
    );
    assert_eq!(card["int8"]["calibrationRows"], 1000);
    // Without labels: one class per image.
    let classes = s
        .ferrotrain(&["predict", "model", &images])
        .output()
        .expect("predicts");
    let lines: Vec<String> = String::from_utf8_lossy(&classes.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 10_000);
    assert!(lines.iter().all(|l| l.parse::<u8>().is_ok_and(|c| c < 10)));
    // Labels as images: the wrong file is named.
    let wrong = s
        .ferrotrain(&["predict", "model", &labels])
        .output()
        .expect("runs");
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("t10k-labels") && stderr.contains("the model reads 784"),
        "{stderr}"
    );
}

#[test]
fn a_location_without_checkpoints_is_refused_naming_it() {
    let s = Scratch::new("noexport");
    let uri = format!("file://{}", s.0.join("empty").display());
    std::fs::create_dir_all(s.0.join("empty")).expect("dir");
    let out = s
        .ferrotrain(&["export", &uri, "--out", "model"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&uri) && stderr.contains("no committed checkpoint"),
        "{stderr}"
    );
    assert!(!s.0.join("model").exists(), "nothing written");
}
