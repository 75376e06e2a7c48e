//! The `edge-agent` command line: `run` the agent, watch a running one live with `top`,
//! `check` a pipeline file, check a node with `doctor`, list, replay or purge
//! `dead-letters`, `model inspect|test` a TFLite model, or try everything at once with
//! `demo`.

// Production code reports failures; it does not panic on them (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_agent::cli::demo;
use edge_agent::config::AgentConfig;
use edge_agent::run::{RunOptions, preflight, run};
use edge_agent::runtime::datadir::lock::{DirLock, Mode};
use edge_agent::runtime::diagnostics;
use edge_agent::runtime::tls::install_crypto_provider;
use tokio_util::sync::CancellationToken;

/// Where `run` serves its endpoint by default: this machine only.
const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// The Edgepipe edge agent: MQTT in, filter, infer, durable queue, sync.
#[derive(Parser)]
#[command(name = "edge-agent", version, about)]
struct Cli {
    #[command(flatten)]
    log: edge_crds::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline in FILE (a full EdgePipeline manifest or its bare spec).
    Run {
        /// Pipeline file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Directory of the durable queue.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/edgepipe")]
        data_dir: PathBuf,
        /// Address serving /metrics, /livez and /readyz (loopback unless told otherwise; in
        /// a pod the operator passes 0.0.0.0:<metricsPort> so Prometheus can scrape it).
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Node name written into every record (default: $NODE_NAME, then the hostname).
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node_name: Option<String>,
        /// Uid of the pipeline the queue in DATA_DIR belongs to (the operator sets it); a
        /// queue another pipeline of the same name left there is set aside. Overrides
        /// `metadata.uid` of the pipeline file.
        #[arg(long, value_name = "UID", env = edge_crds::PIPELINE_UID_ENV)]
        pipeline_uid: Option<String>,
    },
    /// Run the pipeline stored in DATA_DIR (the copy every agent keeps there) when no agent
    /// has taken the queue within the grace period: the node's fallback for a reboot
    /// without the control plane. Hands the queue over (commits, acknowledges, exits 0)
    /// as soon as an agent asks for it.
    Fallback {
        /// Directory of the durable queue and the stored pipeline.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// How long to leave the agent (its pod) to start first (e.g. 2m).
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Address serving /metrics, /livez and /readyz (default: a free loopback port,
        /// so the fallbacks of several pipelines on one node never collide).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Node name written into every record (default: $NODE_NAME, then the node name
        /// the agent kept for the fallback, then the hostname).
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node_name: Option<String>,
    },
    /// Check the pipeline in FILE: print every problem (exit 1), or `ok`.
    Check {
        /// Pipeline file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Node name to resolve the pipeline for (default: $NODE_NAME, then the hostname).
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node_name: Option<String>,
    },
    /// Give the queue directory to the agent user (the agent pods' init container; needs
    /// CAP_CHOWN, changes that one directory only, and only when its owner differs).
    PrepareDataDir {
        /// The directory to hand over.
        #[arg(long, value_name = "DIR")]
        path: PathBuf,
        /// Owner user id.
        #[arg(long)]
        uid: u32,
        /// Owner group id.
        #[arg(long)]
        gid: u32,
    },
    /// Install the node's fallback for a pipeline (the agent pod's init container when the
    /// chart enables `agent.fallback`): copy this binary to BIN_DIR, write the systemd
    /// template unit to UNIT_DIR and enable the pipeline's instance for the next boot.
    InstallFallback {
        /// The node's systemd unit directory, as mounted.
        #[arg(long, value_name = "DIR")]
        unit_dir: PathBuf,
        /// The node's fallback binary directory, as mounted.
        #[arg(long, value_name = "DIR")]
        bin_dir: PathBuf,
        /// That directory's path on the node (what the unit runs).
        #[arg(long, value_name = "DIR", default_value = edge_crds::fallback::HOST_BIN_DIR)]
        host_bin_dir: PathBuf,
        /// The pipeline's namespace.
        #[arg(long)]
        namespace: String,
        /// The pipeline's name.
        #[arg(long)]
        name: String,
        /// How long the fallback leaves the agent pod to start after a boot (e.g. 2m).
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
        grace: std::time::Duration,
    },
    /// Disarm the node's fallback for a deleted pipeline (the operator's disarm Job):
    /// disable its unit, set the stored pipeline aside, remove the kept Secrets, and stop
    /// a fallback running it.
    DisarmFallback {
        /// The node's systemd unit directory, as mounted: disable the instance there.
        #[arg(long, value_name = "DIR", required_unless_present = "data_dir")]
        unit_dir: Option<PathBuf>,
        /// The pipeline's data directory, as mounted: set its stored pipeline aside.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The pipeline's namespace.
        #[arg(long)]
        namespace: String,
        /// The pipeline's name.
        #[arg(long)]
        name: String,
    },
    /// Inspect a TFLite model or check it against golden vectors.
    Model {
        #[command(subcommand)]
        command: edge_agent::cli::model::ModelCommand,
    },
    /// Run the whole pipeline on this machine with simulated sensors, the embedded broker
    /// and a local cloud that goes offline for a while; print a live view and a summary.
    Demo {
        /// How long the sensors publish (e.g. 60s, 5m).
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Number of simulated sensors.
        #[arg(long, value_name = "N", default_value_t = 5)]
        sensors: u32,
        /// Readings per second per sensor.
        #[arg(long, value_name = "PER_SECOND", default_value_t = 10.0)]
        rate: f64,
        /// Directory of the queue and the model (default: a temporary directory).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address serving the agent's /metrics (default: a free loopback port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Check everything a pipeline on this node needs (manifest, data directory, queue,
    /// clock, source broker, upstream, certificates, model), each ok / warning / failed
    /// with a fix. Exit 0, 1 (warnings) or 2 (failures). In an agent pod it needs no
    /// arguments.
    Doctor {
        /// Pipeline file (in an agent pod: $EDGEPIPE_CONFIG).
        #[arg(long, value_name = "FILE", env = edge_agent::cli::doctor::CONFIG_ENV)]
        config: PathBuf,
        /// Directory of the durable queue (in an agent pod: $EDGEPIPE_DATA_DIR).
        #[arg(
            long,
            value_name = "DIR",
            env = edge_agent::cli::doctor::DATA_DIR_ENV,
            default_value = "/var/lib/edgepipe"
        )]
        data_dir: PathBuf,
        /// Node name to resolve the pipeline for (default: $NODE_NAME, then the hostname).
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node_name: Option<String>,
        /// `text` for people, `json` for tools.
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        output: DoctorOutput,
        /// Limit of each network check (e.g. 5s).
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// A live view of a running agent, read from its /metrics: rates, backlog, time to
    /// drain or to full, upstream, drops, inference. Ctrl-C to quit.
    Top {
        /// The agent's /metrics URL (http:// only).
        #[arg(long, value_name = "URL", default_value = edge_agent::cli::top::DEFAULT_URL)]
        url: String,
        /// Time between two scrapes (e.g. 1s, 500ms).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
        interval: std::time::Duration,
        /// Scrape twice, INTERVAL apart, print one frame (no screen clearing) and exit.
        #[arg(long)]
        once: bool,
    },
    /// List, show, replay or purge the batches the upstream rejected (kept in the queue's
    /// dead-letter table); works while the agent runs.
    DeadLetters {
        /// Directory of the durable queue.
        #[arg(
            long,
            value_name = "DIR",
            default_value = "/var/lib/edgepipe",
            global = true
        )]
        data_dir: PathBuf,
        /// The agent's pipeline file: needed to read and replay dead letters of an
        /// encrypted queue (`buffer.encryption`), whose keys it names.
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<edge_agent::cli::dead_letters::DeadLetterCommand>,
    },
}

/// How `doctor` prints its report.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DoctorOutput {
    Text,
    Json,
}

fn main() -> ExitCode {
    install_crypto_provider();
    let cli = Cli::parse();
    // The demo's live view owns the terminal (and its outage is on purpose): only errors
    // are logged unless RUST_LOG says otherwise.
    let default_filter = match cli.command {
        Command::Demo { .. } => "error,rumqttd=off",
        // The report is the output; the checks' own logs would only repeat it.
        Command::Doctor { .. } => "error",
        _ => "info",
    };
    cli.log.init(default_filter);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // Every cause once: an error that names its cause in its message also
            // returns it as its source, which `{e:#}` would print a second time.
            let message = diagnostics::chain(&*e);
            tracing::error!("{message}");
            eprintln!("edge-agent: {message}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            data_dir,
            listen,
            node_name,
            pipeline_uid,
        } => {
            let node = node_name.unwrap_or_else(hostname);
            let path = config;
            let mut config = match AgentConfig::load(&path, &node) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: invalid pipeline:\n{e}", path.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            if let Some(uid) = pipeline_uid {
                if let Err(e) = edge_agent::config::check_uid(&uid) {
                    eprintln!("--pipeline-uid ({}): {e}", edge_crds::PIPELINE_UID_ENV);
                    return Ok(ExitCode::FAILURE);
                }
                config.uid = Some(uid);
            }
            let runtime = runtime()?;
            runtime.block_on(async {
                let stop = CancellationToken::new();
                tokio::spawn(stop_on_signal(stop.clone()));
                let options = RunOptions {
                    data_dir,
                    listen,
                    config_path: Some(path),
                    mode: Mode::Agent,
                };
                run(config, options, stop).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fallback {
            data_dir,
            grace,
            listen,
            node_name,
        } => fallback(data_dir, grace, listen, node_name),
        Command::Check { config, node_name } => {
            let node = node_name.unwrap_or_else(hostname);
            let env = |name: &str| std::env::var(name).ok();
            let checked = std::fs::read_to_string(&config)
                .map_err(|e| format!("cannot read {}: {e}", config.display()))
                .and_then(|text| {
                    AgentConfig::check_text(&text, &node, &env).map_err(|e| e.to_string())
                });
            let (problems, needs) = match checked {
                Ok((Some(c), needs)) => (preflight(&c), needs),
                Ok((None, needs)) => (Vec::new(), needs),
                Err(e) => (e.lines().map(str::to_owned).collect(), Vec::new()),
            };
            if !problems.is_empty() {
                for p in problems {
                    println!("{p}");
                }
                return Ok(ExitCode::FAILURE);
            }
            println!("ok");
            for need in &needs {
                println!("note: {need}");
            }
            if !needs.is_empty() {
                println!(
                    "note: a run on this machine needs the above (in a cluster the operator provides them); TLS material and the sink were not checked"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::PrepareDataDir { path, uid, gid } => {
            let changed = edge_agent::runtime::datadir::prepare_data_dir(&path, uid, gid)
                .with_context(|| format!("preparing {}", path.display()))?;
            let what = if changed {
                "now owned by"
            } else {
                "already owned by"
            };
            println!("{} {what} {uid}:{gid}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::InstallFallback {
            unit_dir,
            bin_dir,
            host_bin_dir,
            namespace,
            name,
            grace,
        } => {
            use edge_agent::runtime::datadir::unit;
            let paths = unit::Paths {
                unit_dir,
                bin_dir,
                host_bin_dir,
            };
            let changed = unit::install(&paths, &namespace, &name, grace)
                .context("installing the node's fallback")?;
            let instance = edge_crds::fallback::unit_name(&namespace, &name);
            if changed.is_empty() {
                println!("{instance}: installed and enabled already");
            }
            for path in changed {
                println!("{instance}: wrote {path}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DisarmFallback {
            unit_dir,
            data_dir,
            namespace,
            name,
        } => {
            let done = edge_agent::runtime::datadir::unit::disarm(
                unit_dir.as_deref(),
                data_dir.as_deref(),
                &namespace,
                &name,
            )
            .context("disarming the node's fallback")?;
            let instance = edge_crds::fallback::unit_name(&namespace, &name);
            if done.is_empty() {
                println!("{instance}: nothing armed");
            }
            for step in done {
                println!("{instance}: {step}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Model { command } => edge_agent::cli::model::run(command),
        Command::Demo {
            duration,
            sensors,
            rate,
            data_dir,
            listen,
        } => {
            let options = demo::DemoOptions {
                duration,
                sensors,
                rate,
                data_dir,
                listen,
                seed: rand::random(),
            };
            let runtime = runtime()?;
            let summary = runtime.block_on(demo::run(options))?;
            if summary.backlog > 0 || summary.lost() > 0 {
                eprintln!(
                    "edge-agent demo: {} records not delivered ({} still queued)",
                    summary.lost(),
                    summary.backlog
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor {
            config,
            data_dir,
            node_name,
            output,
            timeout,
        } => {
            let options = edge_agent::cli::doctor::Options {
                config,
                data_dir,
                node: node_name.unwrap_or_else(hostname),
                timeout,
            };
            let report = edge_agent::cli::doctor::run(&options);
            match output {
                DoctorOutput::Text => print!("{}", report.text()),
                DoctorOutput::Json => println!("{}", report.json()),
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        Command::Top {
            url,
            interval,
            once,
        } => edge_agent::cli::top::run(edge_agent::cli::top::TopOptions {
            url,
            interval,
            once,
        }),
        Command::DeadLetters {
            data_dir,
            config,
            command,
        } => {
            let keys = match config {
                Some(path) => match AgentConfig::load(&path, &hostname()) {
                    Ok(c) => c.buffer.keys,
                    Err(e) => {
                        eprintln!("{}: invalid pipeline:\n{e}", path.display());
                        return Ok(ExitCode::FAILURE);
                    }
                },
                None => Default::default(),
            };
            edge_agent::cli::dead_letters::run(&data_dir, &keys, command)
        }
    }
}

/// `edge-agent fallback`: waits `grace` for an agent to take the queue, then runs the
/// stored pipeline in fallback mode.
fn fallback(
    data_dir: PathBuf,
    grace: std::time::Duration,
    listen: SocketAddr,
    node: Option<String>,
) -> anyhow::Result<ExitCode> {
    let path = data_dir.join(edge_agent::runtime::datadir::STORED_PIPELINE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "no stored pipeline in {}: nothing to run (an agent keeps one there once it ran)",
                data_dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    // What the agent's pod gave it (environment, mounted Secrets and model), when it kept
    // a snapshot for the fallback; the process environment wins over it.
    let snapshot = edge_agent::runtime::datadir::snapshot::Snapshot::load(&data_dir);
    let kept = |name: &str| snapshot.as_ref().and_then(|s| s.env.get(name).cloned());
    let env = |name: &str| std::env::var(name).ok().or_else(|| kept(name));
    let node = node.or_else(|| kept("NODE_NAME")).unwrap_or_else(hostname);
    let text = match &snapshot {
        Some(snapshot) => snapshot.map_paths(&text),
        None => text,
    };
    let mut config = match AgentConfig::from_text(&text, &node, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid pipeline:\n{e}", path.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    // The queue belongs to the pipeline the agent ran: the uid it recorded there.
    if config.uid.is_none() {
        config.uid = edge_agent::delivery::queue::owner::recorded(&data_dir);
    }
    let runtime = runtime()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(stop_on_signal(stop.clone()));
        tokio::select! {
            _ = stop.cancelled() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(grace) => {}
        }
        match DirLock::try_acquire(&data_dir, Mode::Fallback) {
            Ok(Some(lock)) => drop(lock),
            Ok(None) => {
                println!(
                    "an agent runs the queue in {}: the fallback is not needed",
                    data_dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(anyhow::Error::from(e)),
        }
        tracing::warn!(
            dir = %data_dir.display(),
            grace = ?grace,
            "no agent took the queue within the grace period: running the stored pipeline as the node's fallback"
        );
        let options = RunOptions {
            data_dir,
            listen,
            config_path: Some(path),
            mode: Mode::Fallback,
        };
        run(config, options, stop).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The multi-threaded runtime `run`, `fallback` and `demo` run on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Cancels `stop` on SIGTERM or SIGINT.
async fn stop_on_signal(stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("stop signal received");
    stop.cancel();
}

/// A duration flag: `10s`, `1m30s`, `500ms`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    edge_crds::units::parse_duration(text).map_err(|e| e.to_string())
}

/// The machine's host name (`localhost` if it cannot be read).
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_on_loopback_unless_told_otherwise() {
        let listen = |args: &[&str]| {
            let mut argv = vec!["edge-agent", "run", "--config", "p.yaml"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Run { listen, .. }) => listen,
                _ => panic!("run parses"),
            }
        };
        assert_eq!(listen(&[]), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(
            listen(&["--listen", "0.0.0.0:9100"]),
            "0.0.0.0:9100".parse().unwrap()
        );
    }
}
