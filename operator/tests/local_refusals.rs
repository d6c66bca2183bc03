//! `ferrotrain run` and `ferrotrain checkpoints` refusing what cannot work, before any worker
//! starts: invalid manifests, missing data, unusable checkpoint locations and state directories.

mod common;
use common::Scratch;

#[test]
fn listing_checkpoints_of_a_missing_directory_creates_nothing() {
    let s = Scratch::new("nolist");
    let missing = s.0.join("never-created");
    let uri = format!("file://{}", missing.display());
    let out = s.ferrotrain(&["checkpoints", &uri]).output().expect("runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no such directory"));
    assert!(!missing.exists(), "listing created {}", missing.display());
}

/// A checkpoint location that is a file is an error (exit 1, naming it), not an empty listing.
#[test]
fn listing_checkpoints_of_a_file_fails_naming_it() {
    let s = Scratch::new("listfile");
    let file = s.0.join("a-file");
    std::fs::write(&file, "not a store").expect("write");
    let uri = format!("file://{}", file.display());
    let out = s.ferrotrain(&["checkpoints", &uri]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&uri) && stderr.contains("not a directory"),
        "{stderr}"
    );
}

/// A `file://` checkpoint location that cannot work (under /proc, or a regular file) is refused
/// before any worker starts, naming the field, instead of failing attempt after attempt.
#[test]
fn an_unusable_file_checkpoint_location_is_refused_before_any_worker_starts() {
    let s = Scratch::new("badckpt");
    let file = s.0.join("a-file");
    std::fs::write(&file, "").expect("write");
    for (name, uri) in [
        (
            "procckpt",
            "file:///proc/ferrotrain-checkpoints".to_string(),
        ),
        ("fileckpt", format!("file://{}", file.display())),
    ] {
        let manifest = s.manifest(name, &uri, "");
        let output = s
            .ferrotrain(&["run", &manifest.display().to_string()])
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(1), "{uri}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("spec.checkpoint.uri") && stderr.contains(&uri),
            "{stderr}"
        );
        assert!(
            !s.0.join(format!(".ferrotrain/{name}/logs")).exists(),
            "no worker started for {uri}"
        );
    }
}

/// A `--state-dir` that is a regular file is refused naming the option and the path.
#[test]
fn a_state_dir_that_is_a_file_is_named() {
    let s = Scratch::new("statefile");
    let file = s.0.join("state");
    std::fs::write(&file, "").expect("write");
    let ckpt = format!("file://{}", s.0.join("ckpt").display());
    let manifest = s.manifest("statefile", &ckpt, "");
    let output = s
        .ferrotrain(&[
            "run",
            &manifest.display().to_string(),
            "--state-dir",
            &file.display().to_string(),
        ])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--state-dir") && stderr.contains(&file.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn an_invalid_manifest_starts_nothing() {
    let s = Scratch::new("invalid");
    let manifest = s.0.join("bad.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: bad}\nspec:\n  workers: {replicas: 0}\n  trainer: {model: {type: mlp}, dataset: {type: mnist}, batchSize: 8, epochs: 1}\n",
    )
    .expect("write");
    let output = s
        .ferrotrain(&["run", &manifest.display().to_string()])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml: spec.workers.replicas:"),
        "{stderr}"
    );
    assert!(!s.0.join(".ferrotrain").exists(), "no state, no workers");
}

#[test]
fn a_missing_dataset_is_named_in_one_line() {
    let s = Scratch::new("nodata");
    let manifest = s.0.join("csv.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: nodata}\nspec:\n  workers: {replicas: 1}\n  trainer: {model: {type: mlp}, dataset: {type: csv, uri: 'file:///nonexistent/train.csv'}, batchSize: 8, epochs: 1}\n",
    )
    .expect("write");
    let output = s
        .ferrotrain(&["run", &manifest.display().to_string()])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "dataset file file:///nonexistent/train.csv does not exist"
    );
}

#[test]
fn an_unreachable_checkpoint_store_is_named_in_one_line() {
    let s = Scratch::new("nos3");
    let manifest = s.manifest(
        "nos3",
        "s3://ckpt/run\", endpoint: \"http://127.0.0.1:9",
        "",
    );
    let output = s
        .ferrotrain(&["run", &manifest.display().to_string()])
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("s3://ckpt/run at http://127.0.0.1:9"),
        "{stderr}"
    );
}

/// An S3-compatible endpoint with no credentials says so, instead of the `403` of EC2's
/// instance metadata service that the S3 client would ask next.
#[test]
fn listing_s3_checkpoints_without_credentials_names_what_is_missing() {
    let s = Scratch::new("nocreds");
    let mut command = s.ferrotrain(&[
        "checkpoints",
        "s3://bucket/jobs/x",
        "--endpoint",
        "http://127.0.0.1:1",
    ]);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        command.env_remove(key);
    }
    let out = command.output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no S3 credentials: set AWS_ACCESS_KEY_ID"),
        "{stderr}"
    );
}

/// More workers than the machine can hold are refused like any invalid field: the message starts
/// with the file and names `spec.workers.replicas`; `--oversubscribe` lifts the CPU limit only,
/// and the memory estimate still refuses what cannot fit.
#[test]
fn too_many_replicas_are_refused_naming_the_file_and_the_field() {
    let s = Scratch::new("replicas");
    let manifest = s.manifest("replicas", "file:///tmp/unused-ferrotrain-ckpt", "");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, text.replace("replicas: 2", "replicas: 1024")).expect("manifest");
    let file = manifest.display().to_string();
    for extra in [None, Some("--oversubscribe")] {
        let mut args = vec!["run", file.as_str()];
        args.extend(extra);
        let output = s.ferrotrain(&args).output().expect("runs");
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with(&format!("{file}: spec.workers.replicas: 1024 workers")),
            "{extra:?}: {stderr}"
        );
    }
}
