//! The two recipes of each image agree: what trainer/Dockerfile and operator/Dockerfile declare
//! in their final stage (user, entrypoint, command, environment, exposed ports, copied paths, the
//! CA bundle, the user's passwd entry) is what the OCI images of scripts/images.sh hold.
//! Run: `scripts/images.sh && cargo test -p ferrotrain-tests --test images -- --ignored`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferrotrain_tests::workspace_root;
use serde_json::Value;

/// The final stage of a Dockerfile, as far as the image's runtime contract goes.
#[derive(Debug, Default)]
struct Recipe {
    user: Option<String>,
    entrypoint: Option<Value>,
    cmd: Option<Value>,
    env: Vec<String>,
    exposed: BTreeSet<String>,
    /// (source in the build context or `None` for another stage, destination in the image)
    copies: Vec<(Option<String>, String)>,
    creates_user: bool,
    installs_ca_certificates: bool,
}

fn recipe(dockerfile: &str) -> Recipe {
    let text = std::fs::read_to_string(workspace_root().join(dockerfile)).expect("Dockerfile");
    // Continuation lines joined, comments dropped; only the last stage ships.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let stage = joined
        .rsplit_once("\nFROM ")
        .map(|(_, last)| last)
        .expect("a multi-stage Dockerfile");
    let mut recipe = Recipe::default();
    for line in stage.lines().skip(1) {
        let Some((instruction, rest)) = line.trim().split_once(' ') else {
            continue;
        };
        let rest = rest.trim();
        match instruction {
            "USER" => recipe.user = Some(rest.to_string()),
            "ENTRYPOINT" => {
                recipe.entrypoint = Some(serde_json::from_str(rest).expect("JSON form"))
            }
            "CMD" => recipe.cmd = Some(serde_json::from_str(rest).expect("JSON form")),
            "ENV" => recipe.env.push(rest.to_string()),
            "EXPOSE" => {
                recipe.exposed.insert(format!("{rest}/tcp"));
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let from_stage = words[0].starts_with("--from=");
                let args: Vec<&str> = words
                    .iter()
                    .filter(|w| !w.starts_with("--"))
                    .copied()
                    .collect();
                let source = (!from_stage).then(|| args[0].to_string());
                recipe
                    .copies
                    .push((source, args[args.len() - 1].to_string()));
            }
            "RUN" => {
                recipe.creates_user |= rest.contains("useradd") || rest.contains("adduser");
                recipe.installs_ca_certificates |= rest.contains("ca-certificates");
            }
            _ => {}
        }
    }
    recipe
}

/// An OCI image tar unpacked: its config and its root file system.
struct Image {
    config: Value,
    rootfs: PathBuf,
}

fn unpack(tar: &Path, into: &Path) -> Image {
    let layout = into.join("layout");
    let rootfs = into.join("rootfs");
    std::fs::create_dir_all(&layout).expect("temp dir");
    std::fs::create_dir_all(&rootfs).expect("temp dir");
    let untar = |archive: &Path, to: &Path| {
        let ok = Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(to)
            .status()
            .expect("tar")
            .success();
        assert!(ok, "tar -xf {}", archive.display());
    };
    untar(tar, &layout);
    let read = |digest: &str| -> Vec<u8> {
        let hex = digest.trim_start_matches("sha256:");
        std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob")
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let manifest: Value = serde_json::from_slice(&read(
        index["manifests"][0]["digest"]
            .as_str()
            .expect("manifest digest"),
    ))
    .expect("manifest JSON");
    let config: Value = serde_json::from_slice(&read(
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    ))
    .expect("config JSON");
    for layer in manifest["layers"].as_array().expect("layers") {
        let digest = layer["digest"].as_str().expect("layer digest");
        untar(
            &layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
            &rootfs,
        );
    }
    Image { config, rootfs }
}

fn check(dockerfile: &str, tar: &str) {
    let recipe = recipe(dockerfile);
    let images = workspace_root().join(".tools/images");
    let work = std::env::temp_dir().join(format!("ferrotrain-image-{}-{tar}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let image = unpack(&images.join(tar), &work);
    let config = &image.config["config"];
    assert_eq!(image.config["os"], "linux");
    assert_eq!(image.config["architecture"], "amd64");
    assert_eq!(config["User"].as_str(), recipe.user.as_deref(), "USER");
    assert_eq!(
        config.get("Entrypoint"),
        recipe.entrypoint.as_ref(),
        "ENTRYPOINT"
    );
    assert_eq!(config.get("Cmd"), recipe.cmd.as_ref(), "CMD");
    let env: Vec<&str> = config["Env"]
        .as_array()
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for variable in &recipe.env {
        assert!(
            env.contains(&variable.as_str()),
            "ENV {variable} in {env:?}"
        );
    }
    let exposed: BTreeSet<String> = config["ExposedPorts"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(exposed, recipe.exposed, "EXPOSE");
    for (source, destination) in &recipe.copies {
        let copied = image.rootfs.join(destination.trim_start_matches('/'));
        assert!(
            copied.exists(),
            "COPY destination {destination} in the image"
        );
        // Files from the build context arrive unchanged.
        if let Some(source) = source {
            let source = workspace_root().join(source);
            for entry in std::fs::read_dir(&source).expect("COPY source folder") {
                let entry = entry.expect("entry");
                let inside = copied.join(entry.file_name());
                assert_eq!(
                    std::fs::read(entry.path()).expect("source file"),
                    std::fs::read(&inside).expect("copied file"),
                    "{} in the image",
                    inside.display()
                );
            }
        }
    }
    // Both recipes leave the entrypoint runnable: the binary and its loader are present.
    let entrypoint = recipe
        .entrypoint
        .as_ref()
        .and_then(|e| e[0].as_str())
        .expect("entrypoint");
    let binary = image.rootfs.join(entrypoint.trim_start_matches('/'));
    assert!(binary.is_file(), "{entrypoint} is a file");
    if recipe.creates_user {
        let uid = recipe
            .user
            .as_deref()
            .and_then(|u| u.split(':').next())
            .expect("USER uid");
        let passwd = std::fs::read_to_string(image.rootfs.join("etc/passwd")).expect("passwd");
        assert!(
            passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)),
            "user {uid} in /etc/passwd:\n{passwd}"
        );
    }
    if recipe.installs_ca_certificates {
        let bundle = image.rootfs.join("etc/ssl/certs/ca-certificates.crt");
        let text = std::fs::read_to_string(bundle).expect("CA bundle in the image");
        assert!(text.contains("BEGIN CERTIFICATE"));
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
#[ignore = "needs the images of scripts/images.sh"]
fn the_trainer_image_holds_what_its_dockerfile_declares() {
    check("trainer/Dockerfile", "ferrotrain-trainer.tar");
}

#[test]
#[ignore = "needs the images of scripts/images.sh"]
fn the_operator_image_holds_what_its_dockerfile_declares() {
    check("operator/Dockerfile", "ferrotrain.tar");
}

#[test]
fn the_dockerfiles_are_read_as_intended() {
    let trainer = recipe("trainer/Dockerfile");
    assert_eq!(trainer.user.as_deref(), Some("65532:65532"));
    assert_eq!(
        trainer.env,
        vec!["FERROTRAIN_DATA_DIR=/opt/ferrotrain/data".to_string()]
    );
    assert!(trainer.installs_ca_certificates && trainer.creates_user);
    assert!(trainer.copies.contains(&(
        Some("data/mnist".into()),
        "/opt/ferrotrain/data/mnist".into()
    )));
    let operator = recipe("operator/Dockerfile");
    assert_eq!(operator.cmd, Some(serde_json::json!(["operator"])));
    assert_eq!(operator.exposed, BTreeSet::from(["8080/tcp".to_string()]));
}
