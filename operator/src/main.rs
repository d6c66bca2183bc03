//! `ferrotrain`: the Ferrotrain command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrotrain::cli::validate;
use ferrotrain::local::runner::{self as local, RunOptions, RunOutcome};
use ferrotrain::manifest::Admission;

#[derive(Parser)]
#[command(
    name = "ferrotrain",
    version,
    about = "Distributed training on Kubernetes, or on one machine"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a TrainingJob manifest on this machine as local worker processes.
    Run {
        /// The TrainingJob YAML (the same file `kubectl apply` takes).
        file: PathBuf,
        /// `text` draws a progress bar; `json` streams JSON lines.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// Directory for job state, logs and default checkpoints.
        #[arg(long, default_value = ".ferrotrain")]
        state_dir: PathBuf,
        /// Start more workers than this machine has CPUs.
        #[arg(long)]
        oversubscribe: bool,
    },
    /// Run a TrainingSweep manifest on this machine: its trials as local jobs, parallelTrials at
    /// a time, then a results table and every trial's validation curve.
    Sweep {
        /// The TrainingSweep YAML (the same file `kubectl apply` takes).
        file: PathBuf,
        /// `text` draws one line per running trial; `json` streams JSON lines.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// Directory for sweep and trial state, logs and default checkpoints.
        #[arg(long, default_value = ".ferrotrain")]
        state_dir: PathBuf,
        /// Start more workers than this machine has CPUs.
        #[arg(long)]
        oversubscribe: bool,
    },
    /// Check TrainingJob and TrainingSweep manifests against the CRD schemas, their CEL rules and
    /// Ferrotrain's checks.
    Validate {
        /// YAML files (multi-document files are fine).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the checkpoints under a URI, newest first, each verified.
    #[cfg(feature = "worker")]
    Checkpoints {
        /// `s3://bucket/prefix` or `file://path`.
        uri: String,
        /// S3 endpoint of an S3-compatible server.
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        endpoint: Option<String>,
        /// S3 region.
        #[arg(long)]
        region: Option<String>,
    },
    /// Print the TrainingJob and TrainingSweep CustomResourceDefinitions.
    Crd,
    /// Run the Kubernetes controller (in-cluster or with the current kubeconfig).
    Operator {
        /// Trainer image for jobs that do not set spec.workers.image.
        #[arg(
            long,
            env = "OPERATOR_TRAINER_IMAGE",
            default_value = "ferrotrain-trainer:0.1.0"
        )]
        trainer_image: String,
        /// Base URL at which worker pods reach this operator's progress endpoint.
        #[arg(
            long,
            env = "OPERATOR_PROGRESS_BASE_URL",
            default_value = "http://ferrotrain.ferrotrain-system.svc:8080"
        )]
        progress_base_url: String,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Address of the progress, metrics and health server.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: String,
        /// Namespace of the leader-election Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "ferrotrain-system")]
        lease_namespace: String,
        /// This replica's identity in the Lease.
        #[arg(long, env = "POD_NAME", default_value = "ferrotrain-operator")]
        identity: String,
        /// Name of the leader-election Lease: one per installation (the chart uses its release name).
        #[arg(
            long,
            env = "OPERATOR_LEASE_NAME",
            default_value = "ferrotrain-operator"
        )]
        lease_name: String,
        /// This replica's own progress endpoint (`http://POD_IP:8080`), to which the other replicas
        /// forward the reports they receive while this one leads.
        #[arg(long, env = "OPERATOR_ADVERTISE_URL")]
        advertise_url: Option<String>,
        /// Jobs reconciled at once.
        #[arg(long, env = "OPERATOR_CONCURRENCY", default_value_t = 16)]
        concurrency: u16,
        /// Average API requests a second of the reconciler (client-side limit).
        #[arg(long, env = "OPERATOR_API_QPS", default_value_t = 100.0)]
        api_qps: f64,
        /// API requests the reconciler may make at once after a quiet spell.
        #[arg(long, env = "OPERATOR_API_BURST", default_value_t = 200)]
        api_burst: u32,
        /// Progress writes a second, over all jobs (each job at most every 5 s).
        #[arg(long, env = "OPERATOR_PROGRESS_QPS", default_value_t = 50.0)]
        progress_qps: f64,
    },
    /// Run one worker (started by `ferrotrain run` or the operator).
    #[cfg(feature = "worker")]
    #[command(hide = true)]
    Worker(ferrotrain_trainer::cli::WorkerArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    match Args::parse().command {
        Command::Run {
            file,
            output,
            state_dir,
            oversubscribe,
        } => run(&file, output == "json", state_dir, oversubscribe),
        Command::Sweep {
            file,
            output,
            state_dir,
            oversubscribe,
        } => sweep(&file, output == "json", state_dir, oversubscribe),
        Command::Validate { files } => {
            let admission = Admission::new()?;
            let mut out = std::io::stdout().lock();
            let summary = validate::validate_files(&admission, &files, &mut out)?;
            Ok(if summary.invalid == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        #[cfg(feature = "worker")]
        Command::Checkpoints {
            uri,
            endpoint,
            region,
        } => {
            let listed = list_checkpoints(&uri, endpoint, region)?;
            print!("{listed}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Operator {
            trainer_image,
            progress_base_url,
            namespace,
            listen,
            lease_namespace,
            identity,
            lease_name,
            advertise_url,
            concurrency,
            api_qps,
            api_burst,
            progress_qps,
        } => {
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(operator(
                ferrotrain::cluster::children::Settings {
                    default_image: trainer_image,
                    progress_base_url,
                },
                ferrotrain::cluster::controller::RunOptions {
                    namespace,
                    concurrency,
                },
                Limits {
                    api_qps,
                    api_burst,
                    progress_qps,
                },
                listen,
                lease_namespace,
                ferrotrain::cluster::leader::Candidate {
                    lease: lease_name,
                    identity,
                    progress_url: advertise_url,
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd => {
            print!(
                "{}---\n{}",
                ferrotrain_crds::crd::crd_yaml().context("rendering the TrainingJob CRD")?,
                ferrotrain_crds::crd::sweep_crd_yaml()
                    .context("rendering the TrainingSweep CRD")?
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "worker")]
        Command::Worker(args) => Ok(ExitCode::from(ferrotrain_trainer::cli::run_worker(args))),
    }
}

/// Client-side API rate limits.
struct Limits {
    api_qps: f64,
    api_burst: u32,
    progress_qps: f64,
}

async fn operator(
    settings: ferrotrain::cluster::children::Settings,
    options: ferrotrain::cluster::controller::RunOptions,
    limits: Limits,
    listen: String,
    lease_namespace: String,
    candidate: ferrotrain::cluster::leader::Candidate,
) -> anyhow::Result<()> {
    use ferrotrain::cluster::ratelimit::RateLimitLayer;
    use ferrotrain::cluster::{controller, hub, leader, server};
    ferrotrain::tls::install_crypto_provider();
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster or kubeconfig)")?;
    let hub = Arc::new(hub::ProgressHub::default());
    let limited = |name: &'static str, qps: f64, burst: u32| -> anyhow::Result<kube::Client> {
        let layer = RateLimitLayer::new(qps, burst);
        hub.register_throttle(name, layer.stats());
        Ok(kube::client::ClientBuilder::try_from(config.clone())
            .context("connecting to the Kubernetes API")?
            .with_layer(&layer)
            .build())
    };
    // Three clients, three budgets: a backlog of reconciles never delays a lease renewal, and
    // progress writes never delay the reconciler.
    let client = limited("reconciler", limits.api_qps, limits.api_burst)?;
    let progress_client = limited(
        "progress",
        limits.progress_qps,
        limits.progress_qps.ceil().clamp(1.0, 10_000.0) as u32,
    )?;
    let lease_client =
        kube::Client::try_from(config.clone()).context("connecting to the Kubernetes API")?;
    let job_cache = controller::job_cache();
    let directory = Arc::new(controller::KubeDirectory {
        jobs: job_cache.0.clone(),
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let app = server::router(Arc::clone(&hub), directory);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(lease_client, &lease_namespace);
    let election = tokio::spawn(leader::run(
        leases.clone(),
        candidate.clone(),
        Arc::clone(&hub),
    ));
    tokio::spawn(controller::write_progress(
        progress_client,
        Arc::clone(&hub),
    ));
    // Both return on SIGTERM once their in-flight reconciles finish.
    let sweeps = ferrotrain::cluster::sweeps::run(
        client.clone(),
        options.namespace.clone(),
        Arc::clone(&hub),
    );
    let jobs = controller::run(client, settings, options, job_cache, Arc::clone(&hub));
    futures::future::join(jobs, sweeps).await;
    // Hand over at once instead of leaving the others to wait for the lease to expire.
    election.abort();
    hub.leader.store(false, std::sync::atomic::Ordering::SeqCst);
    leader::release(&leases, &candidate).await;
    Ok(())
}

fn run(
    file: &std::path::Path,
    json: bool,
    state_dir: PathBuf,
    oversubscribe: bool,
) -> anyhow::Result<ExitCode> {
    let job = match ferrotrain::local::preflight::load_job(file) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let interrupts = interrupt_counter()?;
    let worker = worker_command()?;
    let options = RunOptions::new(state_dir.clone(), worker, json, oversubscribe);
    let name = job.metadata.name.clone().unwrap_or_default();
    let outcome = match local::run(job, &options, interrupts) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (status, ending) = match &outcome {
        RunOutcome::Succeeded(s) => (s, Ending::Succeeded),
        RunOutcome::Failed(s) => (s, Ending::Failed(s.message.clone())),
        RunOutcome::Suspended(s) => (s, Ending::Suspended),
    };
    conclude(
        &state_dir,
        &name,
        status,
        ending,
        "resume from the emergency checkpoint",
        true,
    )
}

/// How a local run or sweep ended.
enum Ending {
    Succeeded,
    Failed(Option<String>),
    Suspended,
}

/// Writes the final status to `<state dir>/<name>/status.yaml` (and, with `echo`, to stdout) and
/// the one-line outcome to stderr; returns the exit code (0, 1, or 130 when suspended).
fn conclude(
    state_dir: &std::path::Path,
    name: &str,
    status: &impl serde::Serialize,
    ending: Ending,
    resume: &str,
    echo: bool,
) -> anyhow::Result<ExitCode> {
    let (code, summary) = match ending {
        Ending::Succeeded => (ExitCode::SUCCESS, "Succeeded".to_string()),
        Ending::Failed(message) => (
            ExitCode::FAILURE,
            format!("Failed: {}", message.unwrap_or_default()),
        ),
        Ending::Suspended => (
            ExitCode::from(130),
            format!("Suspended: run the same command again to {resume}"),
        ),
    };
    let yaml = serde_yaml::to_string(&serde_json::json!({ "status": status }))?;
    let path = state_dir.join(name).join("status.yaml");
    std::fs::write(&path, &yaml)?;
    if echo {
        // The reader of stdout may be gone (`… | head -1`); the status is in status.yaml too.
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), yaml.as_bytes());
        eprintln!("{name}: {summary}");
    } else {
        eprintln!("{name}: {summary} (status in {})", path.display());
    }
    Ok(code)
}

/// Counts SIGINT and SIGTERM: the first stops the work in order, the second kills it.
fn interrupt_counter() -> anyhow::Result<Arc<AtomicUsize>> {
    let interrupts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&interrupts);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    Ok(interrupts)
}

/// The command that starts one local worker: this binary's hidden `worker` subcommand.
fn worker_command() -> anyhow::Result<Vec<String>> {
    Ok(vec![
        std::env::current_exe()?.display().to_string(),
        "worker".into(),
    ])
}

fn sweep(
    file: &std::path::Path,
    json: bool,
    state_dir: PathBuf,
    oversubscribe: bool,
) -> anyhow::Result<ExitCode> {
    let sweep = match ferrotrain::local::sweep::load_sweep(file) {
        Ok(sweep) => sweep,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let interrupts = interrupt_counter()?;
    let options = RunOptions::new(state_dir.clone(), worker_command()?, json, oversubscribe);
    let name = sweep.metadata.name.clone().unwrap_or_default();
    let outcome = match ferrotrain::local::sweep::run_sweep(sweep, &options, interrupts) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    use ferrotrain::local::sweep::SweepOutcome;
    let (status, ending) = match &outcome {
        SweepOutcome::Succeeded(s) => (s, Ending::Succeeded),
        SweepOutcome::Failed(s) => (s, Ending::Failed(s.message.clone())),
        SweepOutcome::Suspended(s) => (s, Ending::Suspended),
    };
    conclude(
        &state_dir,
        &name,
        status,
        ending,
        "resume the trials from their checkpoints",
        false,
    )
}

/// `ferrotrain checkpoints URI`: one line per checkpoint, newest first, each verified.
#[cfg(feature = "worker")]
fn list_checkpoints(
    uri: &str,
    endpoint: Option<String>,
    region: Option<String>,
) -> anyhow::Result<String> {
    use ferrotrain_trainer::checkpoint::store::CheckpointStore;
    use ferrotrain_trainer::storage::{S3Options, open};
    // Listing must not create what it lists: opening a file:// store creates its directory.
    if let Some(path) = uri.strip_prefix("file://")
        && !std::path::Path::new(path).is_dir()
    {
        return Ok(format!("no checkpoints under {uri}: no such directory\n"));
    }
    let location = open(uri, &S3Options { endpoint, region })?;
    let store = CheckpointStore::new(location, usize::MAX, "");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listed = runtime.block_on(store.list())?;
    let mut out = format!(
        "{:>10}  {:<20}  {:>12}  {}\n",
        "STEP", "TIME", "SIZE", "VERIFIED"
    );
    for l in &listed {
        let time = l
            .manifest
            .as_ref()
            .and_then(|m| jiff::Timestamp::from_millisecond(m.created_unix_ms as i64).ok())
            .map_or("-".to_string(), |t| {
                t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
            });
        let size = l.manifest.as_ref().map_or("-".to_string(), |m| {
            format!("{:.1} MB", m.data_bytes() as f64 / 1e6)
        });
        let verified = l
            .problem
            .as_ref()
            .map_or("yes".to_string(), |p| format!("no: {p}"));
        out.push_str(&format!(
            "{:>10}  {:<20}  {:>12}  {verified}\n",
            l.step, time, size
        ));
    }
    if listed.is_empty() {
        out.push_str(&format!("no checkpoints under {uri}\n"));
    }
    Ok(out)
}
