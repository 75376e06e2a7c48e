//! The `edge-operator` command line.

use clap::{Parser, Subcommand};

/// Kubernetes operator for Edgepipe: reconciles EdgePipelines into edge-agent DaemonSets.
#[derive(Parser)]
#[command(name = "edge-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the EdgePipeline CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", edge_crds::crd_yaml()),
    }
    Ok(())
}
