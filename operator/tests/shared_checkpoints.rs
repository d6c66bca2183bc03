//! Two runs of one job from two state directories share its checkpoint location: the writer
//! lease in the location lets one of them write, and the other is refused, naming the first.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{Scratch, manifests, wait_for};

#[test]
fn a_second_writer_of_a_checkpoint_location_is_refused_and_the_first_loses_nothing() {
    let s = Scratch::new("shared");
    let ckpt = s.0.join("ckpt");
    let manifest = s.manifest_of_steps(
        "shared",
        &format!("file://{}", ckpt.display()),
        "",
        1_000_000,
    );
    // A run far longer than the test: the first run is stopped by the test, never by its end.
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replace("hidden: [64]", "hidden: [512, 512]"),
    )
    .expect("manifest");
    let manifest = manifest.display().to_string();
    let mut first = s
        .ferrotrain(&["run", &manifest, "--output", "json", "--state-dir", "first"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    // Read as it comes: a full pipe would block the run.
    let mut pipe = first.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    });
    wait_for("a committed checkpoint", Duration::from_secs(120), || {
        manifests(&ckpt) > 0
    });
    let started = Instant::now();
    let second = s
        .ferrotrain(&[
            "run",
            &manifest,
            "--output",
            "json",
            "--state-dir",
            "second",
        ])
        .output()
        .expect("runs");
    let waited = started.elapsed();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(!second.status.success(), "{stdout}");
    let status = common::final_status(&stdout);
    assert_eq!(status["phase"].as_str(), Some("Failed"), "{stdout}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("checkpoint.uri") && message.contains("default/shared"),
        "{message}"
    );
    assert_eq!(
        status["restarts"]["app"].as_i64(),
        Some(0),
        "a configuration error: refused once, not retried"
    );
    assert!(waited < Duration::from_secs(60), "refused after {waited:?}");

    // The first run is unharmed: it still runs, and a Ctrl-C suspends it after its emergency
    // checkpoint, which it could commit because it still held the location.
    let before = manifests(&ckpt);
    assert!(
        first.try_wait().expect("wait").is_none(),
        "the first run ended"
    );
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .expect("kill");
    assert!(interrupted.success());
    let exit = first.wait().expect("first run ends");
    let stdout = reader.join().expect("reader");
    assert_eq!(exit.code(), Some(130), "{stdout}");
    let status = common::final_status(&stdout);
    assert_eq!(status["phase"].as_str(), Some("Suspended"));
    assert!(
        manifests(&ckpt) >= before.min(3),
        "its checkpoints are its own"
    );
    let step = status["checkpoint"]["step"]
        .as_i64()
        .expect("checkpoint step");
    assert!(
        ckpt.join(format!("manifests/{step:012}.json")).exists(),
        "the emergency checkpoint at {step} is there"
    );
    // It gave the location up: the newest generation of the lease says released.
    let mut generations: Vec<_> = std::fs::read_dir(ckpt.join("lease"))
        .expect("lease")
        .flatten()
        .map(|e| e.path())
        .collect();
    generations.sort();
    let newest = std::fs::read_to_string(generations.last().expect("a generation")).expect("read");
    assert!(newest.contains("\"released\":true"), "{newest}");
}
