//! `ferrotrain`: the Ferrotrain command-line interface. The commands are defined here and carried
//! out by the library (`ferrotrain::cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrotrain::cli::operator::{Limits, OperatorOptions, ProgressTls};
use ferrotrain::cli::{local, operator, validate};
use ferrotrain::cluster::children::Settings;
use ferrotrain::cluster::controller::RunOptions;
use ferrotrain::cluster::leader::Candidate;
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

// Parsed once at start-up: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Export a trained model: `model.safetensors`, `model.onnx` and the model card
    /// `model.json`, from a checkpoint URI or a TrainingJob manifest's newest checkpoint.
    #[cfg(feature = "worker")]
    Export {
        /// A checkpoint URI (`s3://…`, `file://…`, or one manifest in it) or a TrainingJob
        /// YAML file.
        source: String,
        /// Directory to write the model into.
        #[arg(long, default_value = "model")]
        out: PathBuf,
        /// Directory of local job state, where a manifest without spec.checkpoint checkpoints.
        #[arg(long, default_value = ".ferrotrain")]
        state_dir: PathBuf,
        /// S3 endpoint of an S3-compatible server.
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        endpoint: Option<String>,
        /// S3 region.
        #[arg(long)]
        region: Option<String>,
        /// Also write `model.int8.safetensors`: int8 weights, input scales calibrated on 1,000
        /// rows of the job's training data.
        #[arg(long)]
        int8: bool,
        /// Where the built-in MNIST dataset is read from (for --int8).
        #[arg(long, env = "FERROTRAIN_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Run an exported model on IDX images: one predicted class per line, or the accuracy
    /// against IDX labels.
    #[cfg(feature = "worker")]
    Predict {
        /// The directory `ferrotrain export` wrote.
        model: PathBuf,
        /// IDX images (gzipped or not).
        images: PathBuf,
        /// IDX labels: print the accuracy instead of the predictions.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Run the int8 model (`ferrotrain export --int8`).
        #[arg(long)]
        int8: bool,
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
        /// Give each job a NetworkPolicy that admits only the job's own pods to its workers.
        #[arg(
            long,
            env = "OPERATOR_WORKER_NETWORK_POLICY",
            default_value_t = true,
            action = clap::ArgAction::Set
        )]
        worker_network_policy: bool,
        /// Serve the progress endpoint (and metrics and probes) over TLS with this certificate
        /// chain (PEM; `tls.crt` of a kubernetes.io/tls Secret). Read again when it changes.
        #[arg(long, env = "OPERATOR_TLS_CERT_FILE", requires_all = ["tls_key_file", "tls_ca_file"])]
        tls_cert_file: Option<PathBuf>,
        /// The private key of --tls-cert-file (PEM; `tls.key`).
        #[arg(long, env = "OPERATOR_TLS_KEY_FILE", requires = "tls_cert_file")]
        tls_key_file: Option<PathBuf>,
        /// The CA bundle (PEM; `ca.crt`) workers and the other replicas verify the certificate
        /// with; it is passed to every worker pod.
        #[arg(long, env = "OPERATOR_TLS_CA_FILE", requires = "tls_cert_file")]
        tls_ca_file: Option<PathBuf>,
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

#[cfg(feature = "heap-profile")]
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

fn main() -> anyhow::Result<ExitCode> {
    #[cfg(feature = "heap-profile")]
    ferrotrain::cli::heap_profile::start();
    match Args::parse().command {
        Command::Run {
            file,
            output,
            state_dir,
            oversubscribe,
        } => Ok(local::run_job(
            &file,
            output == "json",
            state_dir,
            oversubscribe,
        )?),
        Command::Sweep {
            file,
            output,
            state_dir,
            oversubscribe,
        } => Ok(local::run_sweep_file(
            &file,
            output == "json",
            state_dir,
            oversubscribe,
        )?),
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
        Command::Export {
            source,
            out,
            state_dir,
            endpoint,
            region,
            int8,
            data_dir,
        } => {
            let options = ferrotrain::cli::export::ExportOptions {
                state_dir,
                endpoint,
                region,
                int8_data_dir: int8
                    .then(|| data_dir.unwrap_or_else(ferrotrain_trainer::run::default_data_dir)),
            };
            print!(
                "{}",
                ferrotrain::cli::export::export(&source, &out, options)?
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "worker")]
        Command::Predict {
            model,
            images,
            labels,
            int8,
        } => {
            print!(
                "{}",
                ferrotrain::cli::export::predict(&model, &images, labels.as_deref(), int8)?
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "worker")]
        Command::Checkpoints {
            uri,
            endpoint,
            region,
        } => {
            print!(
                "{}",
                ferrotrain::cli::checkpoints::list(&uri, endpoint, region)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Operator {
            trainer_image,
            progress_base_url,
            worker_network_policy,
            tls_cert_file,
            tls_key_file,
            tls_ca_file,
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
            let options = OperatorOptions {
                settings: Settings {
                    default_image: trainer_image,
                    progress_base_url,
                    worker_network_policy,
                    progress_ca: None,
                },
                tls: match (tls_cert_file, tls_key_file, tls_ca_file) {
                    (Some(cert), Some(key), Some(ca)) => Some(ProgressTls { cert, key, ca }),
                    _ => None,
                },
                run: RunOptions {
                    namespace,
                    concurrency,
                },
                limits: Limits {
                    api_qps,
                    api_burst,
                    progress_qps,
                },
                listen,
                lease_namespace,
                candidate: Candidate {
                    lease: lease_name,
                    identity,
                    progress_url: advertise_url,
                },
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(operator::run(options))?;
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
