//! Three rank processes on loopback, configured only through the env contract: they rendezvous,
//! train MNIST with a ring all-reduce and reach the accuracy target on a reduced budget; and when a
//! rank dies the others exit with "peer lost" instead of hanging.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrotrain_crds::env::WorkerEnv;
use ferrotrain_trainer::exit;

fn free_port() -> u16 {
    ferrotrain_crds::loopback_port::pick().expect("free port")
}

fn spawn_gang(world: u32, trainer_yaml: &str, extra_args: &[&str]) -> Vec<Child> {
    spawn_gang_checkpointing(world, trainer_yaml, extra_args, None)
}

/// A gang whose env names a checkpoint location.
fn spawn_gang_checkpointing(
    world: u32,
    trainer_yaml: &str,
    extra_args: &[&str],
    checkpoint: Option<&str>,
) -> Vec<Child> {
    let port = free_port();
    let key_path = std::env::temp_dir().join(format!("ferrotrain-dist-{port}-gang-key"));
    std::fs::write(&key_path, "5eed".repeat(16)).expect("gang key");
    (0..world)
        .map(|rank| {
            let mut env = worker_env(rank, world, port, trainer_yaml);
            env.gang_key_path = Some(key_path.display().to_string());
            env.checkpoint = checkpoint.map(|uri| {
                serde_yaml::from_str(&format!("{{uri: '{uri}', everySteps: 100000}}"))
                    .expect("checkpoint spec")
            });
            spawn_worker(&env, extra_args)
        })
        .collect()
}

fn worker_env(rank: u32, world: u32, port: u16, trainer_yaml: &str) -> WorkerEnv {
    WorkerEnv {
        rank,
        world_size: world,
        rendezvous_addr: "127.0.0.1".into(),
        rendezvous_port: port,
        attempt: 1,
        job_name: "dist-test".into(),
        job_namespace: "default".into(),
        job_uid: None,
        trainer: serde_yaml::from_str(trainer_yaml).expect("trainer yaml"),
        checkpoint: None,
        output: None,
        progress_url: None,
        progress_token_path: None,
        gang_key_path: None,
        progress_ca: None,
        scratch_dir: None,
    }
}

fn spawn_worker(env: &WorkerEnv, extra_args: &[&str]) -> Child {
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let (port, rank) = (env.rendezvous_port, env.rank);
    Command::new(env!("CARGO_BIN_EXE_ferrotrain-trainer"))
        .args([
            "--data-dir",
            &data_dir.display().to_string(),
            "--report-every-seconds",
            "0.5",
        ])
        .args(extra_args)
        .envs(env.to_env())
        .env("MATMUL_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(
            std::fs::File::create(
                std::env::temp_dir().join(format!("ferrotrain-dist-{port}-{rank}.log")),
            )
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("trainer starts")
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a 3-rank gang to the end, checks every rank exits 0, and returns rank 0's stdout lines.
fn run_to_completion(yaml: &str) -> Vec<String> {
    let mut gang = spawn_gang(3, yaml, &[]);
    let stdout = gang[0].stdout.take().expect("rank 0 stdout");
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let codes: Vec<Option<i32>> = gang
        .iter_mut()
        .map(|c| wait_with_timeout(c, Duration::from_secs(300)))
        .collect();
    assert_eq!(codes, vec![Some(0); 3], "every rank succeeds");
    lines
}

/// Rank 0's final JSON line.
fn completion_line(lines: &[String]) -> serde_json::Value {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "completed")
        .expect("rank 0 prints a completion line")
}

#[test]
fn three_ranks_reach_the_accuracy_target_on_a_reduced_budget() {
    let yaml = "model: {type: mlp, hidden: [256, 128]}\ndataset: {type: mnist}\nbatchSize: 64\nmaxSteps: 700\noptimizer: {type: adam, lr: 0.001}\nseed: 3\n";
    let lines = run_to_completion(yaml);
    let completed = completion_line(&lines);
    let accuracy = completed["metrics"]["valAccuracy"]
        .as_f64()
        .expect("accuracy");
    assert_eq!(completed["step"], 700);
    // 700 steps × 3 ranks × 64 = 134,400 samples, about 2.2 epochs of MNIST.
    assert!(accuracy >= 0.965, "test accuracy {accuracy}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"event\":\"progress\"") && l.contains("\"worldSize\":3"))
    );
}

#[test]
fn asynchronous_local_sgd_converges() {
    // With an L1 penalty (each rank applies it in its own updates between averages), augmented
    // images (each rank draws its own transformations), batch normalisation (each rank's running
    // statistics follow its own batches and are averaged with the parameters) and pruning (its
    // rounds, every 50 steps, fall between averages and force one, so that every rank prunes the
    // same weights).
    let yaml = "model: {type: mlp, hidden: [256, 128], batchNorm: true}\ndataset: {type: mnist, augment: {shiftPixels: 1, rotationDegrees: 5}}\nbatchSize: 64\nmaxSteps: 700\noptimizer: {type: adam, lr: 0.001, l1: 0.00001}\nmode: {type: async, maxStaleness: 3}\ncompression: {pruning: {sparsity: 0.5, startStep: 100, endStep: 500, everySteps: 50}}\n";
    let lines = run_to_completion(yaml);
    let completed = completion_line(&lines);
    let accuracy = completed["metrics"]["valAccuracy"]
        .as_f64()
        .expect("accuracy");
    assert!(accuracy >= 0.95, "local SGD test accuracy {accuracy}");
}

/// Synchronised batch normalisation: every layer's batch sums go round the ring in the forward and
/// the backward pass of every step, and the gang still learns.
#[test]
fn a_gang_with_synchronised_batch_normalisation_learns() {
    let yaml = "model: {type: mlp, hidden: [128], batchNorm: true, syncBatchNorm: true}\ndataset: {type: mnist}\nbatchSize: 16\nmaxSteps: 400\noptimizer: {type: adam, lr: 0.002}\nseed: 3\n";
    let lines = run_to_completion(yaml);
    let completed = completion_line(&lines);
    let accuracy = completed["metrics"]["valAccuracy"]
        .as_f64()
        .expect("accuracy");
    assert_eq!(completed["step"], 400);
    assert!(accuracy >= 0.93, "test accuracy {accuracy}");
}

#[test]
fn a_dead_rank_makes_the_others_exit_with_peer_lost() {
    let yaml =
        "model: {type: mlp, hidden: [64]}\ndataset: {type: mnist}\nbatchSize: 32\nepochs: 50\n";
    assert_a_dead_rank_makes_the_others_exit_with_peer_lost(yaml);
}

/// With synchronised batch normalisation the peer is missed inside the forward pass: still a
/// lost peer (exit 4), not an engine failure.
#[test]
fn a_dead_rank_under_synchronised_batch_normalisation_is_a_lost_peer() {
    let yaml = "model: {type: mlp, hidden: [64], batchNorm: true, syncBatchNorm: true}\ndataset: {type: mnist}\nbatchSize: 32\nepochs: 50\n";
    assert_a_dead_rank_makes_the_others_exit_with_peer_lost(yaml);
}

fn assert_a_dead_rank_makes_the_others_exit_with_peer_lost(yaml: &str) {
    let mut gang = spawn_gang(3, yaml, &["--peer-timeout-seconds", "10"]);
    let stdout = gang[0].stdout.take().expect("rank 0 stdout");
    let mut lines = BufReader::new(stdout).lines();
    // Training is under way once rank 0 reports progress.
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("\"event\":\"progress\""))),
        "rank 0 reports progress"
    );
    gang[1].kill().expect("kill rank 1");
    let _ = gang[1].wait();
    let started = Instant::now();
    for rank in [0, 2] {
        let code = wait_with_timeout(&mut gang[rank], Duration::from_secs(60));
        assert_eq!(code, Some(i32::from(exit::PEER_LOST)), "rank {rank}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no hang: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_rank_of_a_gang_without_the_gang_key_is_a_configuration_error() {
    let yaml =
        "model: {type: mlp, hidden: [8]}\ndataset: {type: mnist}\nbatchSize: 32\nmaxSteps: 1\n";
    let mut worker = spawn_worker(&worker_env(1, 2, free_port(), yaml), &[]);
    let code = wait_with_timeout(&mut worker, Duration::from_secs(30));
    assert_eq!(code, Some(i32::from(exit::BAD_CONFIG)));
}

#[test]
fn sigterm_commits_an_emergency_checkpoint_and_the_rerun_resumes_from_it() {
    let dir = std::env::temp_dir().join(format!("ferrotrain-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("trainer.yaml");
    std::fs::write(
        &config,
        "model: {type: mlp, hidden: [64]}\ndataset: {type: mnist}\nbatchSize: 32\nepochs: 20\n",
    )
    .expect("config");
    let checkpoint = format!("file://{}", dir.join("ckpt").display());
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let start = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferrotrain-trainer"))
            .args([
                "--config",
                &config.display().to_string(),
                "--checkpoint",
                &checkpoint,
                "--checkpoint-every-steps",
                "100000",
            ])
            .args([
                "--data-dir",
                &data_dir.display().to_string(),
                "--report-every-seconds",
                "0.2",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("trainer starts")
    };
    let mut child = start(&[]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("\"event\":\"progress\""))));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let preempted: serde_json::Value = lines
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["event"] == "preempted")
        .expect("a preempted line");
    assert_eq!(
        wait_with_timeout(&mut child, Duration::from_secs(30)),
        Some(i32::from(exit::PREEMPTED_AFTER_CHECKPOINT))
    );
    let stopped_at = preempted["step"].as_u64().expect("step");
    assert!(stopped_at > 0);
    assert!(
        preempted["checkpoint"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!("{stopped_at:012}.json"))),
        "{preempted}"
    );

    // The same command again resumes from the emergency checkpoint; stop it right away.
    let mut rerun = start(&["--stop-after-step", &(stopped_at + 1).to_string()]);
    let resumed: Vec<String> = BufReader::new(rerun.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
        .collect();
    assert_eq!(
        wait_with_timeout(&mut rerun, Duration::from_secs(60)),
        Some(i32::from(exit::PREEMPTED_AFTER_CHECKPOINT))
    );
    let last = resumed
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .expect("output");
    assert_eq!(
        last["step"].as_u64(),
        Some(stopped_at + 1),
        "the step continues: {last}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `device: cuda` never falls back: without a usable GPU the trainer exits with a config error
/// naming the field; `device: auto` with bf16 trains on the CPU and says that it computes in fp32.
#[test]
fn the_device_choice_is_logged_and_cuda_without_a_gpu_is_refused() {
    let dir = std::env::temp_dir().join(format!("ferrotrain-device-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let run = |device: &str| {
        let config = dir.join(format!("{device}.yaml"));
        std::fs::write(
            &config,
            format!(
                "model: {{type: mlp, hidden: [32]}}\ndataset: {{type: mnist}}\nbatchSize: 32\n\
                 maxSteps: 5\nprecision: bf16\ndevice: {device}\n"
            ),
        )
        .expect("config");
        Command::new(env!("CARGO_BIN_EXE_ferrotrain-trainer"))
            .args(["--config", &config.display().to_string()])
            .args(["--data-dir", &data_dir.display().to_string()])
            // Hides any GPU, so the test means the same on a GPU machine.
            .env("CUDA_VISIBLE_DEVICES", "")
            .output()
            .expect("trainer runs")
    };
    let refused = run("cuda");
    let log = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(i32::from(exit::BAD_CONFIG)),
        "{log}"
    );
    assert!(log.contains("spec.trainer.device is cuda but"), "{log}");

    let fallback = run("auto");
    let log = String::from_utf8_lossy(&fallback.stderr);
    assert_eq!(fallback.status.code(), Some(0), "{log}");
    assert!(log.contains("compute device: CPU"), "{log}");
    assert!(
        log.contains("bf16 was requested but the CPU computes in fp32"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A frozen layer stays as the seed made it on every rank of an asynchronous gang: neither the
/// local steps nor the parameter averages between them (an average of equal values may round)
/// move it, and the final checkpoint holds it unchanged.
#[test]
fn a_frozen_layer_stays_as_the_seed_made_it_in_an_asynchronous_gang() {
    let dir = std::env::temp_dir().join(format!("ferrotrain-frozen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let yaml = "model: {type: mlp, hidden: [64]}\ndataset: {type: mnist}\nbatchSize: 32\nmaxSteps: 60\nseed: 5\nmode: {type: async, maxStaleness: 2}\nfreeze: [fc1]\noptimizer: {type: adamw, lr: 0.001}\n";
    let checkpoint = format!("file://{}", dir.display());
    let mut gang = spawn_gang_checkpointing(3, yaml, &[], Some(&checkpoint));
    let codes: Vec<Option<i32>> = gang
        .iter_mut()
        .map(|c| wait_with_timeout(c, Duration::from_secs(300)))
        .collect();
    assert_eq!(codes, vec![Some(0); 3], "every rank succeeds");
    let manifest = std::fs::read(dir.join("manifests/000000000060.json")).expect("final manifest");
    let (_, snapshot) = ferrotrain_trainer::checkpoint::layout::verify_manifest(&manifest, |key| {
        std::fs::read(dir.join(key)).ok()
    })
    .expect("the final checkpoint verifies");
    let spec: ferrotrain_crds::TrainerSpec = serde_yaml::from_str(yaml).expect("spec");
    let net = ferrotrain_trainer::nn::model::Network::new(&spec.model, 784, 10).expect("network");
    let seeded = net.init_params(5);
    let layers = net.parameter_layers();
    let (fc1, fc2) = (layers[0].all(), layers[1].all());
    assert!(snapshot.params[fc1.clone()] == seeded[fc1], "fc1 is frozen");
    assert!(snapshot.params[fc2.clone()] != seeded[fc2], "fc2 trains");
    let _ = std::fs::remove_dir_all(&dir);
}
