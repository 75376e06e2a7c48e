//! The `edge-operator` command line: `run` the operator, print the `crd`, and `render` what
//! the operator would apply for a manifest.

// Production code reports failures; it does not panic on them (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_operator::controller::{self, Settings};
use edge_operator::leader::{self, LeaseSettings};
use edge_operator::policy::{self, TenantPolicy};
use edge_operator::render::{AgentAccess, FallbackInstall};
use edge_operator::server::{self, Readiness};
use edge_operator::telemetry::Metrics;
use edge_operator::{RenderOptions, render};
use tokio_util::sync::CancellationToken;

/// Kubernetes operator for Edgepipe: reconciles EdgePipelines into edge-agent DaemonSets.
#[derive(Parser)]
#[command(name = "edge-operator", version, about)]
struct Cli {
    #[command(flatten)]
    log: edge_crds::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (in a cluster, or with the current kubeconfig).
    Run(RunArgs),
    /// Print the EdgePipeline CustomResourceDefinition as YAML.
    Crd,
    /// Print, as YAML, the ConfigMap and DaemonSet the operator applies for a manifest.
    Render(RenderArgs),
}

#[derive(clap::Args)]
struct ImageArgs {
    /// Image of the agent pods (their init container too).
    #[arg(long, value_name = "IMAGE", default_value_t = edge_operator::default_agent_image())]
    agent_image: String,
    /// The ClusterRole that grants agents their fleet records (Leases): each pipeline
    /// gets a ServiceAccount bound to it in its namespace, and its agents report their
    /// state with that account's token. Without it agents report nothing.
    #[arg(long, value_name = "NAME")]
    agent_cluster_role: Option<String>,
    /// How often each agent renews its fleet record.
    #[arg(long, value_name = "SECONDS", default_value_t = edge_crds::fleet::DEFAULT_INTERVAL_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat_seconds: u64,
    /// Arm each pipeline's node fallback for a reboot without the control plane: the
    /// agent pods install the agent binary and the systemd unit `edgepipe-fallback@.service`
    /// into this directory of their node (its systemd unit directory) and enable the
    /// pipeline's instance; a deleted pipeline's fallback is disarmed on each node.
    #[arg(long, value_name = "DIR")]
    fallback_unit_dir: Option<String>,
    /// How long the node's fallback leaves the agent pod to start after a boot.
    #[arg(long, value_name = "SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    fallback_grace_seconds: u64,
}

impl ImageArgs {
    fn options(&self, policy: &TenantPolicy) -> RenderOptions {
        RenderOptions {
            agent_image: self.agent_image.clone(),
            model_version: None,
            secrets_digest: None,
            avoid_control_plane: !policy.control_plane,
            agent_access: self
                .agent_cluster_role
                .clone()
                .map(|cluster_role| AgentAccess {
                    cluster_role,
                    heartbeat_seconds: self.heartbeat_seconds,
                }),
            fallback: self
                .fallback_unit_dir
                .clone()
                .map(|unit_dir| FallbackInstall {
                    unit_dir,
                    grace_seconds: self.fallback_grace_seconds,
                }),
        }
    }
}

#[derive(clap::Args)]
struct PolicyArgs {
    /// The tenant policy (YAML): what EdgePipelines may ask for. Default: the built-in
    /// policy, the same as the Helm chart's defaults.
    #[arg(long, value_name = "FILE")]
    policy_file: Option<PathBuf>,
}

impl PolicyArgs {
    fn load(&self) -> anyhow::Result<TenantPolicy> {
        Ok(match &self.policy_file {
            Some(path) => TenantPolicy::load(path)?,
            None => TenantPolicy::default(),
        })
    }
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Watch EdgePipelines in this namespace only (default: all namespaces).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Address serving /metrics, /livez and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Run the controller only while holding a coordination.k8s.io Lease.
    #[arg(long)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "edge-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, value_name = "NS", env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's name in the Lease and in Events.
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    identity: Option<String>,
}

#[derive(clap::Args)]
struct RenderArgs {
    /// EdgePipeline manifest (a bare spec is rendered as `default/standalone`).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    policy: PolicyArgs,
}

fn main() -> anyhow::Result<()> {
    // kube's client uses rustls with ring; install it before anything can build a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", edge_crds::crd_yaml()),
        Command::Render(args) => print!("{}", render_file(&args)?),
        Command::Run(args) => {
            cli.log.init("info");
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run(args))?;
        }
    }
    Ok(())
}

fn render_file(args: &RenderArgs) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let pipeline = render::pipeline_from_manifest(&text)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let policy = args.policy.load()?;
    let rendered = render::render(&pipeline, &args.images.options(&policy))
        .with_context(|| args.file.display().to_string())?;
    // Secrets cannot be checked from a file: whether one opted in is known in the cluster.
    let violations = policy::check_spec(&policy, &pipeline.spec);
    if !violations.is_empty() {
        anyhow::bail!(
            "{}: outside the tenant policy:\n{}",
            args.file.display(),
            edge_crds::validate::describe(&violations)
        );
    }
    Ok(rendered.to_yaml()?)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let policy = args.policy.load()?;
    tracing::info!(policy = %serde_json::to_string(&policy).unwrap_or_default(), "tenant policy");
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let readiness = Readiness::default();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving /metrics, /livez and /readyz");
    let server = tokio::spawn(server::serve(
        listener,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("edge-operator-{}", std::process::id()));
    let settings = Settings {
        namespace: args.namespace,
        render: args.images.options(&policy),
        instance: Some(identity.clone()),
        policy,
        own_namespace: args.lease_namespace.clone(),
    };

    let result = if args.leader_elect {
        let namespace = args
            .lease_namespace
            .context("--leader-elect needs --lease-namespace (or POD_NAMESPACE)")?;
        let lease = LeaseSettings {
            name: args.lease_name,
            namespace,
            identity,
        };
        readiness.set(true);
        leader::run_as_leader(client.clone(), lease, shutdown.clone(), |term| {
            controller::run(
                client.clone(),
                settings.clone(),
                metrics.clone(),
                readiness.clone(),
                term,
            )
        })
        .await
        .map_err(anyhow::Error::from)
    } else {
        controller::run(client, settings, metrics, readiness, shutdown.clone())
            .await
            .map_err(anyhow::Error::from)
    };
    shutdown.cancel();
    let _ = server.await;
    result
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
    shutdown.cancel();
}
