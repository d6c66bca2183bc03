//! Trainer benchmarks; each prints its figures. Run from the repository root:
//!
//! ```text
//! cargo run -p ferrotrain-trainer --example bench -- throughput   # FERROTRAIN_BENCH_TORCH=python: PyTorch too
//! cargo run -p ferrotrain-trainer --example bench -- allreduce
//! cargo run -p ferrotrain-trainer --example bench -- scaling      # FERROTRAIN_BENCH_ROUNDS=3, mlp|lenet
//! cargo run -p ferrotrain-trainer --example bench -- checkpoint   # S3 when FERROTRAIN_TEST_S3_ENDPOINT is set
//! cargo run -p ferrotrain-trainer --example bench -- accuracy
//! cargo run -p ferrotrain-trainer --example bench -- compression
//! cargo run -p ferrotrain-trainer --example bench -- sparsity     # optimizer.l1
//! cargo run -p ferrotrain-trainer --example bench -- augmentation # dataset.augment
//! cargo run -p ferrotrain-trainer --example bench -- pruning      # compression.pruning
//! cargo run -p ferrotrain-trainer --example bench -- transfer     # initFrom.layers, freeze
//! cargo run -p ferrotrain-trainer --example bench -- quantisation # export --int8
//! cargo run -p ferrotrain-trainer --example bench -- distillation # distillation
//! ```

mod loopback;
mod techniques;

use loopback::{gang, loopback_ring};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferrotrain_crds::{GradientCompression, TrainerSpec};
use ferrotrain_trainer::checkpoint::store::CheckpointStore;
use ferrotrain_trainer::data::load::{self, Splits};
use ferrotrain_trainer::dist::ring::Ring;
use ferrotrain_trainer::engine::Engine;
use ferrotrain_trainer::engine::native::Native;
use ferrotrain_trainer::nn::model::Network;
use ferrotrain_trainer::optim::Optimizer;
use ferrotrain_trainer::rng::Rng;
use ferrotrain_trainer::run::config_hash;
use ferrotrain_trainer::storage::{self, S3Options};
use ferrotrain_trainer::train::job::{CheckpointPlan, Job, Outcome};
use ferrotrain_trainer::train::steps::train;
use object_store::{ObjectStoreExt, PutPayload};

const MLP: &str = "model: {type: mlp, hidden: [256, 128], dropout: 0.1}\ndataset: {type: mnist}\nbatchSize: 64\noptimizer: {type: adam, lr: 0.001}\n";
const LENET: &str = "model: {type: lenet}\ndataset: {type: mnist}\nbatchSize: 64\noptimizer: {type: adam, lr: 0.001}\n";

fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let mnist = || -> anyhow::Result<Splits> {
        let spec: TrainerSpec = serde_yaml::from_str(&format!("{MLP}epochs: 1\n"))?;
        Ok(rt.block_on(load::load(
            &spec.dataset,
            &data_dir,
            42,
            &S3Options::default(),
        ))?)
    };
    match which.as_str() {
        "throughput" => throughput(&mnist()?),
        "allreduce" => allreduce(),
        "scaling" => scaling(&mnist()?, &rt),
        "checkpoint" => checkpoint(&mnist()?, &rt),
        "accuracy" => accuracy(&mnist()?, &rt),
        "compression" => compression(&mnist()?, &rt),
        "sparsity" => techniques::sparsity(&mnist()?, &rt),
        "augmentation" => techniques::augmentation(&mnist()?, &rt),
        "pruning" => techniques::pruning(&mnist()?, &rt),
        "transfer" => techniques::transfer(&mnist()?, &rt),
        "quantisation" => techniques::quantisation(&mnist()?, &rt),
        "distillation" => techniques::distillation(&mnist()?, &rt),
        "batchnorm" => techniques::batch_norm(&mnist()?),
        _ => anyhow::bail!(
            "usage: bench throughput|allreduce|scaling|checkpoint|accuracy|compression|sparsity|augmentation|pruning|transfer|quantisation|distillation|batchnorm"
        ),
    }
}

/// Training samples per second of one process: forward, backward and Adam, no evaluation.
fn throughput(data: &Splits) -> anyhow::Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().build()?;
    println!("compute threads: {}", pool.current_num_threads());
    pool.install(|| throughput_on_pool(data))?;
    // The PyTorch reference in the same run, when FERROTRAIN_BENCH_TORCH names a Python that has
    // torch (see scripts/torch-reference.py).
    if let Some(python) = std::env::var_os("FERROTRAIN_BENCH_TORCH") {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/torch-reference.py");
        let status = std::process::Command::new(python)
            .arg(script)
            .arg(std::env::args().nth(2).unwrap_or_default())
            .arg(format!("--threads={}", pool.current_num_threads()))
            .status()?;
        anyhow::ensure!(status.success(), "the PyTorch reference failed: {status}");
    }
    Ok(())
}

fn throughput_on_pool(data: &Splits) -> anyhow::Result<()> {
    // `bench throughput mlp` measures one model only.
    let only = std::env::args().nth(2);
    for (name, yaml, steps) in [
        ("mlp 784-256-128-10", MLP, 3000u64),
        ("lenet-5", LENET, 400),
    ] {
        if only.as_deref().is_some_and(|only| !name.starts_with(only)) {
            continue;
        }
        let spec: TrainerSpec = serde_yaml::from_str(&format!("{yaml}epochs: 1\n"))?;
        let net = Network::new(&spec.model, data.train.dim, data.classes())?;
        #[cfg_attr(not(feature = "burn"), allow(unused_mut))]
        let mut engines: Vec<(&str, Box<dyn Engine>)> =
            vec![("native", Box::new(Native::new(net.clone())))];
        // With `--features burn`, the burn engine on burn's CPU backend, side by side.
        #[cfg(feature = "burn")]
        engines.push((
            "burn flex",
            Box::new(ferrotrain_trainer::engine::burn_engine::flex(&net)),
        ));
        for (engine_name, mut engine) in engines {
            let mut params = net.init_params(1);
            let mut grads = vec![0.0; net.num_params];
            let mut optimizer = Optimizer::new(&spec.optimizer_or_default(), net.num_params);
            let batch = 64;
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let mut run = |steps: u64| -> anyhow::Result<()> {
                for step in 0..steps {
                    let start = (step as usize * batch) % (data.train.len() - batch);
                    let rows: Vec<usize> = (start..start + batch).collect();
                    data.train.gather(&rows, &mut x, &mut y);
                    engine.train_step(&params, &mut grads, &x, &y, &mut Rng::new(step))?;
                    optimizer.step(&mut params, &grads, 1e-3);
                }
                Ok(())
            };
            run(steps / 10)?;
            let started = Instant::now();
            run(steps)?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "throughput {name} ({engine_name}): {:.0} samples/s (batch 64, {steps} steps, 1 process)",
                (steps as usize * batch) as f64 / seconds
            );
        }
    }
    Ok(())
}

/// Bus bandwidth of the ring all-reduce next to the loopback bound 2(N−1)·S / B_loopback.
fn allreduce() -> anyhow::Result<()> {
    let loopback = loopback_bandwidth(256 << 20)?;
    println!(
        "loopback single-stream bandwidth: {:.2} GB/s",
        loopback / 1e9
    );
    for ranks in [2u32, 3, 4] {
        for (bytes, encoding) in [1usize << 20, 100 << 20].into_iter().flat_map(|bytes| {
            [GradientCompression::None, GradientCompression::Bf16].map(|e| (bytes, e))
        }) {
            let floats = bytes / 4;
            let iterations = if bytes < (10 << 20) { 200 } else { 5 };
            let port = ferrotrain_crds::loopback_port::pick()?;
            let handles: Vec<_> = (0..ranks)
                .map(|rank| {
                    std::thread::spawn(move || -> anyhow::Result<f64> {
                        let mut ring = loopback_ring(rank, ranks, port)?;
                        let mut data = vec![1.0f32; floats];
                        ring.all_reduce(&mut data, encoding)?;
                        let started = Instant::now();
                        for _ in 0..iterations {
                            ring.all_reduce(&mut data, encoding)?;
                        }
                        Ok(started.elapsed().as_secs_f64() / f64::from(iterations))
                    })
                })
                .collect();
            let mut seconds = 0.0f64;
            for h in handles {
                seconds = seconds.max(h.join().map_err(|_| anyhow::anyhow!("rank panicked"))??);
            }
            let n = f64::from(ranks);
            let bus = 2.0 * (n - 1.0) / n * bytes as f64 / seconds;
            // Every byte a ring all-reduce moves crosses loopback once: 2(N−1)·S in all.
            let bound_seconds = 2.0 * (n - 1.0) * bytes as f64 / loopback;
            println!(
                "allreduce ranks={ranks} size={:>3} MB wire={:<4}: {:.3} ms, bus {:.2} GB/s, loopback bound {:.3} ms, {:.2} of bound",
                bytes >> 20,
                format!("{encoding:?}").to_lowercase(),
                seconds * 1e3,
                bus / 1e9,
                bound_seconds * 1e3,
                bound_seconds / seconds
            );
        }
    }
    Ok(())
}

/// Rank `rank` of a ring of `ranks` on loopback, rendezvous on `port`.
fn loopback_bandwidth(bytes: usize) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        s.write_all(&[1])
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let chunk = vec![7u8; 1 << 20];
    let started = Instant::now();
    for _ in 0..bytes / chunk.len() {
        s.write_all(&chunk)?;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)?;
    let seconds = started.elapsed().as_secs_f64();
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(bytes as f64 / seconds)
}

/// Samples per second of 1 and 2 ranks with one compute thread each on the same fixed number of
/// samples, of 1 rank using every CPU and of two independent 1-rank jobs side by side (the
/// machine's ceiling without an all-reduce); `FERROTRAIN_BENCH_ROUNDS` rounds (3) of the runs
/// in turn, so that a slow spell of the machine falls on both sides of a ratio, and the
/// median ratio. Two rates per run: wall time from rendezvous to the end (start-up and the final
/// evaluation included), and the training steps alone, as `status.progress.samplesPerSecond`
/// reports them (from the second step; the all-reduce included).
fn scaling(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    // `bench scaling mlp` measures one model only.
    let only = std::env::args().nth(2);
    let rounds: usize = match std::env::var("FERROTRAIN_BENCH_ROUNDS") {
        Ok(text) => text
            .parse()
            .context("FERROTRAIN_BENCH_ROUNDS: a number of rounds")?,
        Err(_) => 3,
    };
    for (name, yaml, samples) in [("mlp", MLP, 64 * 2400u64), ("lenet", LENET, 64 * 1200)] {
        if only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        // 2 ranks against 1 rank at one thread each and against 1 rank on every CPU (wall, steps),
        // and 2 independent jobs against 1 rank.
        let mut ratios: Vec<[f64; 5]> = Vec::new();
        for round in 1..=rounds.max(1) {
            let mut rates = Vec::new();
            for (ranks, threads) in [(1u32, 1usize), (2, 1), (1, cpus)] {
                let steps = samples / (64 * u64::from(ranks));
                let summary = gang(
                    data,
                    rt,
                    ranks,
                    threads,
                    &format!("{yaml}maxSteps: {steps}\nevalEverySteps: {}\n", steps * 10),
                )?;
                let wall = samples as f64 / summary.wall_seconds;
                println!(
                    "scaling {name} round {round} ranks={ranks} threads/rank={threads}: {wall:.0} samples/s wall, {:.0} in the steps ({} steps of global batch {})",
                    summary.samples_per_second,
                    summary.step,
                    64 * ranks
                );
                rates.push((wall, summary.samples_per_second));
            }
            // The ceiling without the all-reduce: two single-rank jobs side by side, each on half
            // the samples, in the wall time of the slower.
            let half = samples / 128;
            let side_by_side_yaml =
                format!("{yaml}maxSteps: {half}\nevalEverySteps: {}\n", half * 10);
            let walls = std::thread::scope(|scope| {
                let jobs: Vec<_> = (0..2)
                    .map(|_| scope.spawn(|| gang(data, rt, 1, 1, &side_by_side_yaml)))
                    .collect();
                jobs.into_iter()
                    .map(|j| {
                        j.join()
                            .map_err(|_| anyhow::anyhow!("job panicked"))?
                            .map(|s| s.wall_seconds)
                    })
                    .collect::<anyhow::Result<Vec<f64>>>()
            })?;
            let independent = samples as f64 / walls.iter().copied().fold(0.0, f64::max);
            let ratio = [
                rates[1].0 / rates[0].0,
                rates[1].1 / rates[0].1,
                rates[1].0 / rates[2].0,
                rates[1].1 / rates[2].1,
                independent / rates[0].0,
            ];
            println!(
                "scaling {name} round {round}: 2 ranks vs 1 rank at 1 thread each {:.2}x wall, {:.2}x in the steps; vs 1 rank on {cpus} threads {:.2}x wall, {:.2}x in the steps; 2 independent jobs side by side (no all-reduce) {independent:.0} samples/s wall, {:.2}x",
                ratio[0], ratio[1], ratio[2], ratio[3], ratio[4]
            );
            ratios.push(ratio);
        }
        let median = |i: usize| {
            let mut column: Vec<f64> = ratios.iter().map(|r| r[i]).collect();
            column.sort_by(f64::total_cmp);
            column[column.len() / 2]
        };
        println!(
            "scaling {name}, median of {} rounds: 2 ranks vs 1 rank at 1 thread each {:.2}x wall, {:.2}x in the steps; vs 1 rank on {cpus} threads {:.2}x wall, {:.2}x in the steps; 2 independent jobs {:.2}x",
            ratios.len(),
            median(0),
            median(1),
            median(2),
            median(3),
            median(4)
        );
    }
    Ok(())
}

/// Checkpoint stall as a share of wall time at one checkpoint per 30 s, and upload speed next to
/// a raw object_store put of the same bytes.
fn checkpoint(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let (uri, options) = match std::env::var("FERROTRAIN_TEST_S3_ENDPOINT") {
        Ok(endpoint) => {
            let bucket = std::env::var("FERROTRAIN_TEST_S3_BUCKET")
                .unwrap_or_else(|_| "ferrotrain-test".into());
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos();
            (
                format!("s3://{bucket}/bench/{nanos}"),
                S3Options {
                    endpoint: Some(endpoint),
                    region: Some("us-east-1".into()),
                },
            )
        }
        Err(_) => (
            format!(
                "file://{}",
                std::env::temp_dir()
                    .join(format!("ferrotrain-bench-{}", std::process::id()))
                    .display()
            ),
            S3Options::default(),
        ),
    };
    println!("checkpoint target: {uri}");
    // A wide MLP so that a checkpoint (parameters + two Adam moments) is about 60 MB.
    let yaml = "model: {type: mlp, hidden: [4096, 1024]}\ndataset: {type: mnist}\nbatchSize: 64\noptimizer: {type: adam, lr: 0.0005}\nepochs: 1\n";
    let spec: TrainerSpec = serde_yaml::from_str(yaml)?;
    let location = storage::open(&uri, &options)?;
    let job = Job {
        checkpoint: Some(CheckpointPlan {
            store: CheckpointStore::new(location.clone(), 2, config_hash(&spec, data)),
            every_steps: None,
            every_seconds: Some(5),
            resume: false,
        }),
        stop_after_step: Some(200),
        grace: Duration::from_secs(120),
        ..Job::new(spec.clone())
    };
    let summary = match train(job, data, &mut Ring::single(), rt.handle())? {
        Outcome::Completed(s) | Outcome::Preempted(s) => s,
    };
    let stats = &summary.checkpoint_stats;
    let per_checkpoint_bytes = stats.bytes as f64 / stats.committed.max(1) as f64;
    // The last commit (here an emergency one) is synchronous by design; the periodic ones are what
    // a running job pays.
    let periodic = stats.committed.saturating_sub(1).max(1) as f64;
    let stall_per_checkpoint = stats.stall_seconds / periodic;
    println!(
        "checkpoint: {} commits of {:.1} MB during {:.1} s; loop stall {:.2} ms per periodic checkpoint = {:.4} % of wall time at one checkpoint per 30 s; final synchronous commit {:.2} s",
        stats.committed,
        per_checkpoint_bytes / 1e6,
        summary.wall_seconds,
        stall_per_checkpoint * 1e3,
        stall_per_checkpoint / 30.0 * 100.0,
        stats.final_seconds
    );
    // Upload path on its own (no training competing for the two cores): commit of a snapshot of
    // that size (encode, hash, put three objects, conditional manifest, retention) versus raw
    // puts of the same bytes to the same server.
    let snapshot = ferrotrain_trainer::checkpoint::layout::Snapshot {
        state: Default::default(),
        params: vec![0.5; (per_checkpoint_bytes / 12.0) as usize],
        moment1: vec![0.25; (per_checkpoint_bytes / 12.0) as usize],
        moment2: vec![0.125; (per_checkpoint_bytes / 12.0) as usize],
        mask: Vec::new(),
    };
    let store = CheckpointStore::new(
        storage::open(&format!("{uri}/upload"), &options)?,
        2,
        "bench",
    );
    let mut commit_seconds = f64::MAX;
    let mut raw_seconds = f64::MAX;
    for round in 0..3u64 {
        let mut s = snapshot.clone();
        s.state.step = round + 1;
        let started = Instant::now();
        rt.block_on(store.commit(&s))?;
        commit_seconds = commit_seconds.min(started.elapsed().as_secs_f64());
        let raw: Vec<bytes::Bytes> = [&s.params, &s.moment1, &s.moment2]
            .iter()
            .map(|v| {
                bytes::Bytes::from(v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>())
            })
            .collect();
        let started = Instant::now();
        rt.block_on(async {
            for (i, body) in raw.into_iter().enumerate() {
                location
                    .store
                    .put(
                        &location.key(&format!("raw/{round}-{i}.bin")),
                        PutPayload::from(body),
                    )
                    .await?;
            }
            Ok::<_, object_store::Error>(())
        })?;
        raw_seconds = raw_seconds.min(started.elapsed().as_secs_f64());
    }
    println!(
        "checkpoint upload of {:.1} MB: commit {:.0} MB/s vs raw put {:.0} MB/s = {:.2}x (best of 3; in-run background uploads averaged {:.0} MB/s while training shared the cores)",
        per_checkpoint_bytes / 1e6,
        per_checkpoint_bytes / commit_seconds / 1e6,
        per_checkpoint_bytes / raw_seconds / 1e6,
        raw_seconds / commit_seconds,
        stats.bytes as f64 / stats.upload_seconds / 1e6
    );
    Ok(())
}

/// Test accuracy of the MLP after 3 epochs and LeNet after 3 epochs, single process.
fn accuracy(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    for (name, yaml) in [("mlp", MLP), ("lenet", LENET)] {
        let summary = gang(data, rt, 1, 0, &format!("{yaml}epochs: 3\nseed: 42\n"))?;
        println!(
            "accuracy {name}: {:.2} % MNIST test accuracy after 3 epochs ({:.0} s, {:.0} samples/s)",
            summary.metrics.get("valAccuracy").copied().unwrap_or(0.0) * 100.0,
            summary.wall_seconds,
            summary.samples_per_second
        );
    }
    Ok(())
}

/// What bf16 gradients on the wire cost and save: two ranks of one thread each train 3 epochs
/// with fp32 and with bf16 all-reduces, same seed.
fn compression(data: &Splits, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    for (name, yaml) in [("mlp", MLP), ("lenet", LENET)] {
        for encoding in ["none", "bf16"] {
            let summary = gang(
                data,
                rt,
                2,
                1,
                &format!(
                    "{yaml}epochs: 3\nseed: 42\nmode: {{type: sync, gradientCompression: {encoding}}}\n"
                ),
            )?;
            println!(
                "compression {name} {encoding}: {:.2} % MNIST test accuracy after 3 epochs on 2 ranks ({:.0} s, {:.0} samples/s)",
                summary.metrics.get("valAccuracy").copied().unwrap_or(0.0) * 100.0,
                summary.wall_seconds,
                summary.samples_per_second
            );
        }
    }
    Ok(())
}
