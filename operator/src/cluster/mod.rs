//! `voxel operator`: the controllers that run Voxel's resources on a Kubernetes cluster.
//!
//! The process serves `/metrics`, `/healthz` and `/readyz` from the start, waits to hold the
//! leader Lease (when leader election is on), then runs the controllers until SIGTERM or
//! Ctrl-C, when it finishes the reconciles in flight and releases the Lease.

pub mod children;
pub mod cross_validation;
pub mod ensemble;
pub mod experiment;
pub mod finish;
pub mod metrics;
pub mod models;
pub mod mounts;
pub mod observe;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use kube::{Client, runtime::events::Reporter};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use self::{children::Settings, experiment::Context, metrics::OperatorMetrics};

/// The field manager of everything the operator writes with server-side apply.
pub const FIELD_MANAGER: &str = "voxel-operator";

/// The field manager of this replica's writes to the Lease: `voxel-operator-lease-<identity>`,
/// cut to the API server's 128 characters.
fn lease_field_manager(identity: &str) -> String {
    let mut manager = format!("{FIELD_MANAGER}-lease-{identity}");
    if manager.len() > 128 {
        let mut end = 128;
        while !manager.is_char_boundary(end) {
            end -= 1;
        }
        manager.truncate(end);
    }
    manager
}

/// Seconds a leader's Lease stays valid without renewal: a standby takes over at most this
/// long after the leader died.
const LEASE_DURATION_S: u64 = 15;
/// Seconds before expiry that the leader renews: two thirds of the duration are slack for a
/// slow API server, as client-go's renew deadline leaves.
const LEASE_GRACE_S: u64 = 10;

/// How long the reconciles in flight get to finish after SIGTERM (a pod's default grace period
/// is 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Arguments of `voxel operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Watch this namespace only (default: every namespace).
    #[arg(long, env = "VOXEL_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Image of the trainer pods.
    #[arg(
        long,
        env = "VOXEL_TRAINER_IMAGE",
        default_value = "ghcr.io/voxel-dev/voxel-trainer:0.1.0"
    )]
    pub trainer_image: String,
    /// Image pull policy of the trainer pods (default: the cluster's, `IfNotPresent` for a tag).
    #[arg(long, env = "VOXEL_TRAINER_IMAGE_PULL_POLICY")]
    pub trainer_image_pull_policy: Option<String>,
    /// Extended resource name of a GPU for Experiments that name none.
    #[arg(long, env = "VOXEL_GPU_RESOURCE", default_value = "nvidia.com/gpu")]
    pub gpu_resource: String,
    /// PersistentVolumeClaim (in each Experiment's namespace) for Experiments without
    /// `spec.artifacts`.
    #[arg(long, env = "VOXEL_ARTIFACTS_CLAIM")]
    pub artifacts_claim: Option<String>,
    /// The trainer's `--device` in every pod instead of `cuda` with GPUs and `cpu` without
    /// (`auto` lets it fall back to the CPU; for test clusters).
    #[arg(long, env = "VOXEL_TRAINER_DEVICE")]
    pub trainer_device: Option<String>,
    /// Address of the metrics and health endpoints (`HOST:PORT`, or `:PORT` for every
    /// interface).
    #[arg(long, env = "VOXEL_METRICS_ADDRESS", default_value = "0.0.0.0:8080", value_parser = parse_address)]
    pub metrics_address: SocketAddr,
    /// Hold a Lease before reconciling, so that only one of several replicas acts.
    #[arg(long, env = "VOXEL_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "voxel-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: `POD_NAMESPACE`, else the watched namespace,
    /// else `default`).
    #[arg(long, env = "VOXEL_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds between scrapes of a running trainer's metrics.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub scrape_interval: u64,
    /// `CLAIM=DIR`: the claim `CLAIM` of the watched namespace is mounted into the operator at
    /// `DIR`, where it reads the results trainer pods wrote there (repeat per claim).
    #[arg(
        long = "claim-mount",
        value_name = "CLAIM=DIR",
        env = "VOXEL_CLAIM_MOUNTS",
        value_delimiter = ','
    )]
    pub claim_mounts: Vec<String>,
    /// This replica's identity in the Lease and in Events (default: `POD_NAME`, else the host
    /// name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// What the health endpoints report.
#[derive(Clone)]
struct Health {
    metrics: Arc<OperatorMetrics>,
    ready: Arc<AtomicBool>,
}

/// Runs the operator until a termination signal.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes API configured (in-cluster config or KUBECONFIG)")?;
    // Fail fast, and never report ready, without an API server to talk to.
    let version = tokio::time::timeout(Duration::from_secs(30), client.apiserver_version())
        .await
        .context("the Kubernetes API did not answer within 30 s")?
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    info!(
        version = version.git_version,
        "connected to the Kubernetes API"
    );
    let metrics = Arc::new(OperatorMetrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("--metrics-address {}: cannot listen", args.metrics_address))?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let app = Router::new()
                .route("/metrics", get(serve_metrics))
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(serve_ready))
                .with_state(health);
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                warn!(%error, "the metrics server stopped");
            }
        })
    };

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let settings = Settings {
        trainer_image: args.trainer_image.clone(),
        gpu_resource: args.gpu_resource.clone(),
        default_artifacts_claim: args.artifacts_claim.clone(),
        image_pull_policy: args.trainer_image_pull_policy.clone(),
        trainer_device: args.trainer_device.clone(),
    };
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(identity.clone()),
    };
    let mut context = Context::new(
        client.clone(),
        settings,
        metrics,
        reporter,
        Duration::from_secs(args.scrape_interval),
    );
    context.mounts = mounts::ClaimMounts::parse(&args.claim_mounts).map_err(anyhow::Error::msg)?;
    let context = Arc::new(context);

    // A signal stops waiting for the Lease as well as the controllers.
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("termination signal; finishing the reconciles in flight");
        let _ = signal_tx.send(true);
    });

    let lease = if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            // One field manager per replica: taking a free Lease is a server-side apply of
            // `holderIdentity`, and only distinct managers make two replicas' applies conflict
            // rather than both succeed and both lead.
            .with_field_manager(lease_field_manager(&identity))
            .with_duration(LEASE_DURATION_S)
            .with_grace(LEASE_GRACE_S)
            .build()
            .await
            .with_context(|| format!("cannot use the Lease {namespace}/{}", args.lease_name))?;
        let (mut leader, task) = manager.watch().await;
        // Standing by is healthy and ready: a standby replica must not be restarted.
        ready.store(true, Ordering::Relaxed);
        info!(
            identity,
            lease = args.lease_name,
            namespace,
            "waiting to lead"
        );
        let mut stop = stop_rx.clone();
        let stopped = tokio::select! {
            led = leader.wait_for(|l| *l) => {
                led.context("the Lease manager stopped")?;
                false
            }
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped {
            drop(leader);
            let _ = task.await;
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Ok(());
        }
        info!(identity, "leading");
        Some((leader, task))
    } else {
        None
    };
    ready.store(true, Ordering::Relaxed);

    // Losing the Lease stops the controllers as a signal does, and the process then fails, so
    // that its Deployment restarts it as a standby: another replica leads now.
    let mut stop = stop_rx.clone();
    let lost = lease.as_ref().map(|(leader, _)| leader.clone());
    let lost_lease = Arc::new(AtomicBool::new(false));
    let flag = lost_lease.clone();
    let shutdown = async move {
        match lost {
            Some(mut leader) => {
                tokio::select! {
                    _ = leader.wait_for(|l| !*l) => {
                        warn!("lost the leader Lease; stopping");
                        flag.store(true, Ordering::Relaxed);
                    }
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
            None => {
                let _ = stop.wait_for(|s| *s).await;
            }
        }
    };
    // After a stop signal the reconciles in flight get a bounded time to finish.
    let mut stopped = stop_rx.clone();
    let deadline = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = run_controllers(context, args.namespace.as_deref(), shutdown) => {}
        _ = deadline => warn!("the controllers did not stop within {SHUTDOWN_GRACE:?}; exiting"),
    }

    if let Some((leader, task)) = lease {
        // Closing the channel makes the manager release the Lease for the next leader.
        drop(leader);
        match task.await {
            Ok(Ok(_)) => info!("released the leader Lease"),
            Ok(Err(error)) => warn!(%error, "cannot release the leader Lease"),
            Err(error) => warn!(%error, "the Lease task failed"),
        }
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    if lost_lease.load(Ordering::Relaxed) {
        anyhow::bail!("lost the leader Lease {}", args.lease_name);
    }
    info!("stopped");
    Ok(())
}

/// Runs every controller until `shutdown` resolves.
async fn run_controllers(
    context: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt as _;
    let shutdown = shutdown.boxed().shared();
    tokio::join!(
        experiment::run(context.clone(), namespace, shutdown.clone()),
        cross_validation::run(context.clone(), namespace, shutdown.clone()),
        ensemble::run(context, namespace, shutdown),
    );
}

/// Writes `status` of the `kind` object `name` with server-side apply under the operator's
/// field manager, when it differs from `old`; returns whether it wrote.
pub(crate) async fn apply_status<K, S>(
    api: &kube::Api<K>,
    name: &str,
    kind: &str,
    old: &S,
    new: &S,
) -> Result<bool, experiment::ReconcileError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if old == new {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": "voxel.dev/v1alpha1",
        "kind": kind,
        "status": new,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .map_err(experiment::api_error(format!(
        "writing the status of {kind} {name}"
    )))?;
    Ok(true)
}

/// Publishes an Event per transition about `reference`; a failure to publish is logged, never
/// fatal.
pub(crate) async fn publish_events(
    context: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    transitions: &[crate::attempts::Transition],
) {
    use kube::runtime::events::{Event, EventType};
    for transition in transitions {
        let event = Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.clone(),
            note: Some(experiment::truncate(&transition.message, 1024)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = context.recorder.publish(&event, reference).await {
            warn!(%error, reason = transition.reason, "cannot publish an event");
        }
    }
}

async fn serve_metrics(State(health): State<Health>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.encode(),
    )
}

async fn serve_ready(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// `HOST:PORT` (a name is resolved) or `:PORT`.
fn parse_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_string(),
    };
    full.to_socket_addrs()
        .map_err(|e| format!("{text}: {e} (expected HOST:PORT or :PORT)"))?
        .next()
        .ok_or_else(|| format!("{text}: resolves to no address"))
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "voxel".into());
    format!("{host}-{}", std::process::id())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{lease_field_manager, parse_address};

    #[test]
    fn metrics_addresses_take_a_port_alone_or_a_host_name() {
        assert_eq!(parse_address(":8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(parse_address("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_address("localhost:9090").unwrap().ip().is_loopback());
        let error = parse_address("8080").unwrap_err();
        assert!(error.contains("expected HOST:PORT or :PORT"), "{error}");
    }

    #[test]
    fn each_replica_writes_the_lease_as_its_own_field_manager() {
        let a = lease_field_manager("voxel-operator-7d9f-abcde");
        assert_eq!(a, "voxel-operator-lease-voxel-operator-7d9f-abcde");
        assert_ne!(a, lease_field_manager("voxel-operator-7d9f-fghij"));
        let long = lease_field_manager(&"é".repeat(100));
        assert!(
            long.len() <= 128 && long.starts_with("voxel-operator-lease-é"),
            "{long}"
        );
    }
}
