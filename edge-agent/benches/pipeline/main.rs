//! The Edgepipe benchmark harness (B1–B7 and B11; B8 is `operator/benches/operator.rs`,
//! B9 `tests/benches/fleet.rs`).
//!
//! Every benchmark measures a baseline in the same run and prints one or more Markdown
//! table rows `| bench | measured | baseline | ratio | goal |` on stdout, so a noisy machine
//! still yields a meaningful ratio. Nothing here asserts on time: `tests/bench/run.sh`
//! runs it (`cargo bench -p edge-agent --bench pipeline -- [b1 b2 ...]`) and collects the
//! rows. End-to-end benches drive the agent binary in `EDGEPIPE_BIN_DIR` (run.sh points it
//! at `target/release`) against a real Mosquitto broker on a free port, both started
//! through the test kit (`edge-testkit`).

mod action;
mod core;
mod drain;
mod infer;
mod ingest;
mod thin;
mod util;

use std::path::Path;

/// Scale factor for message counts (`BENCH_SCALE`, default 1.0).
fn scale() -> f64 {
    std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0)
}

/// `n` scaled by [`scale`], at least 1,000.
pub fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(1_000)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.to_lowercase())
        .collect();
    if wanted.is_empty() {
        wanted = ["b1", "b2", "b3", "b4", "b5", "b6", "b7", "b11"]
            .map(String::from)
            .to_vec();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tempdir: {e}");
            std::process::exit(1);
        }
    };
    let mut failed = false;
    for name in &wanted {
        let dir = scratch.path().join(name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("{}: {e}", dir.display());
            std::process::exit(1);
        }
        let result = runtime.block_on(run_one(name, &dir));
        match result {
            Ok(rows) => rows.iter().for_each(|r| util::row(r)),
            Err(e) => {
                failed = true;
                util::row(&format!(
                    "| {} | not measured: {e} | — | — | — |",
                    name.to_uppercase()
                ));
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

async fn run_one(name: &str, dir: &Path) -> util::BenchResult<Vec<String>> {
    eprintln!("running {name}");
    match name {
        "b1" => ingest::b1(dir).await,
        "b2" => tokio::task::block_in_place(|| core::b2(dir)),
        "b3" => drain::b3(dir).await,
        "b4" => tokio::task::block_in_place(core::b4),
        "b5" => ingest::b5(dir).await,
        "b6" => {
            let mut rows = tokio::task::block_in_place(infer::b6)?;
            rows.extend(infer::b6_live(dir).await?);
            Ok(rows)
        }
        "b7" => action::b7(dir).await,
        "b11" => thin::b11(dir).await,
        other => Err(format!("unknown benchmark {other}")),
    }
}
