//! The `edge-agent` command line.

use clap::Parser;

/// The Edgepipe edge agent: MQTT in, filter, infer, durable queue, sync.
#[derive(Parser)]
#[command(name = "edge-agent", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    Ok(())
}
