//! `ferrotrain operator`: the Kubernetes controllers with their HTTP server (progress endpoint,
//! metrics, probes) and leader election, each with its own client and rate limit.

use std::path::PathBuf;
use std::sync::Arc;

use crate::cli::error::{CommandError, doing};
use crate::cluster::children::Settings;
use crate::cluster::controller::{self, RunOptions};
use crate::cluster::hub::ProgressHub;
use crate::cluster::leader::{self, Candidate};
use crate::cluster::ratelimit::RateLimitLayer;
use crate::cluster::server;

/// Client-side API rate limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Average requests a second of the reconciler.
    pub api_qps: f64,
    /// Requests the reconciler may make at once after a quiet spell.
    pub api_burst: u32,
    /// Progress writes a second over all jobs.
    pub progress_qps: f64,
}

/// The progress endpoint's TLS: PEM files as a kubernetes.io/tls Secret (cert-manager's too)
/// holds them.
#[derive(Clone, Debug)]
pub struct ProgressTls {
    /// Certificate chain (`tls.crt`).
    pub cert: PathBuf,
    /// Private key (`tls.key`).
    pub key: PathBuf,
    /// CA bundle (`ca.crt`) the workers and the other replicas verify the certificate with.
    pub ca: PathBuf,
}

/// Everything the operator is run with.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// How worker pods are built.
    pub settings: Settings,
    /// The namespace watched and the reconciles in flight.
    pub run: RunOptions,
    /// Client-side rate limits.
    pub limits: Limits,
    /// Address of the HTTP server.
    pub listen: String,
    /// Namespace of the leader-election Lease.
    pub lease_namespace: String,
    /// This replica in the Lease.
    pub candidate: Candidate,
    /// TLS for the HTTP server; `None` serves plain HTTP.
    pub tls: Option<ProgressTls>,
}

/// The server configuration and the forwarding client of the TLS endpoint; records the CA bundle
/// in `settings` for the workers. The certificate is verified, by the workers and the other
/// replicas alike, for the host name of the progress base URL.
fn serving_tls(
    files: &ProgressTls,
    settings: &mut Settings,
) -> Result<(Arc<rustls::ServerConfig>, reqwest::Client), CommandError> {
    let config = crate::tls::server_config(&files.cert, &files.key)
        .map_err(doing("loading the progress endpoint's certificate"))?;
    let pem = std::fs::read_to_string(&files.ca)
        .map_err(doing(format!("reading {}", files.ca.display())))?;
    let ca = crate::tls::certificates_in(pem.as_bytes(), &files.ca)
        .map_err(doing("loading the CA bundle"))?;
    let base = reqwest::Url::parse(&settings.progress_base_url)
        .map_err(doing("parsing --progress-base-url"))?;
    let host = base.host_str().unwrap_or_default().to_string();
    if base.scheme() != "https" {
        let url = settings.progress_base_url.clone();
        return Err(doing("checking --progress-base-url")(format!(
            "{url} must be https:// when the endpoint serves TLS"
        )));
    }
    let client_config = crate::tls::forwarding_client_config(&ca, &host)
        .map_err(doing("configuring the forwarding client"))?;
    let forwarder = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(client_config)
        .build()
        .map_err(doing("building the forwarding client"))?;
    settings.progress_ca = Some(pem);
    Ok((config, forwarder))
}

/// Serves `app` on `listener` until the process ends.
async fn serve<L>(listener: L, app: axum::Router)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// Runs the operator until SIGTERM, then hands over the lease.
pub async fn run(options: OperatorOptions) -> Result<(), CommandError> {
    let OperatorOptions {
        mut settings,
        run,
        limits,
        listen,
        lease_namespace,
        candidate,
        tls,
    } = options;
    crate::tls::install_crypto_provider();
    #[cfg(feature = "heap-profile")]
    crate::cli::heap_profile::write_on_sigterm();
    let tls = match tls {
        Some(files) => Some(serving_tls(&files, &mut settings)?),
        None => None,
    };
    let config = kube::Config::infer().await.map_err(doing(
        "finding the Kubernetes API (in-cluster or kubeconfig)",
    ))?;
    let hub = Arc::new(ProgressHub::default());
    let limited =
        |name: &'static str, qps: f64, burst: u32| -> Result<kube::Client, CommandError> {
            let layer = RateLimitLayer::new(qps, burst);
            hub.register_throttle(name, layer.stats());
            Ok(kube::client::ClientBuilder::try_from(config.clone())
                .map_err(doing("connecting to the Kubernetes API"))?
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
    let lease_client = kube::Client::try_from(config.clone())
        .map_err(doing("connecting to the Kubernetes API"))?;
    let job_cache = controller::job_cache();
    let directory = Arc::new(controller::KubeDirectory {
        jobs: job_cache.0.clone(),
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(doing(format!("listening on {listen}")))?;
    match tls {
        Some((config, forwarder)) => {
            let app = server::router_with_forwarder(Arc::clone(&hub), directory, Some(forwarder));
            let listener = crate::tls::TlsListener::new(listener, config)
                .map_err(doing(format!("listening on {listen}")))?;
            tokio::spawn(serve(listener, app));
        }
        None => {
            tokio::spawn(serve(listener, server::router(Arc::clone(&hub), directory)));
        }
    }
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
    let sweeps =
        crate::cluster::sweeps::run(client.clone(), run.namespace.clone(), Arc::clone(&hub));
    let jobs = controller::run(client, settings, run, job_cache, Arc::clone(&hub));
    futures::future::join(jobs, sweeps).await;
    // Hand over at once instead of leaving the others to wait for the lease to expire.
    election.abort();
    hub.lead_until(None);
    leader::release(&leases, &candidate).await;
    Ok(())
}
