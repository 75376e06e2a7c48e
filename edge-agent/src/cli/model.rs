//! `edge-agent model inspect|test`: look at a `.tflite` file before deploying it.
//!
//! `inspect` prints the model's inputs and outputs, every TFLite op with whether
//! tract-tflite runs it, and the result of actually loading it (a loader panic is caught
//! and reported). `test` runs golden vectors through the model and prints the largest
//! error and the per-window latency, batch 1 and batched; it exits 1 when the model is
//! refused or an output diverges.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::pipeline::inference::{GoldenSet, Model, read_contents};
use anyhow::Context;
use clap::Subcommand;
use sha2::{Digest, Sha256};

/// Rows in the batched latency measurement.
const BENCH_BATCH: usize = 64;
/// Time spent measuring each latency.
const BENCH_TIME: Duration = Duration::from_millis(300);

/// `edge-agent model ...`
#[derive(Subcommand)]
pub enum ModelCommand {
    /// List a model's inputs, outputs and ops, whether tract-tflite supports each op, and
    /// whether the model loads (exit 1 if the agent would refuse it).
    Inspect {
        /// The `.tflite` file.
        file: PathBuf,
    },
    /// Run golden vectors through a model: print the largest error and the latency per
    /// window; exit 1 if the model is refused or an output diverges.
    Test {
        /// The `.tflite` file.
        file: PathBuf,
        /// Golden JSON: `{"tolerance": 1e-5, "vectors": [{"input": [..], "output": [..]}]}`.
        #[arg(long, value_name = "G.json")]
        golden: PathBuf,
        /// Largest absolute error allowed (default: the file's `tolerance`, else 1e-5).
        #[arg(long)]
        tolerance: Option<f64>,
    },
}

/// Runs one `model` subcommand.
pub fn run(command: ModelCommand) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match command {
        ModelCommand::Inspect { file } => inspect(&file, &mut out),
        ModelCommand::Test {
            file,
            golden,
            tolerance,
        } => test(&file, &golden, tolerance, &mut out),
    };
    // A closed pipe (`| head`) is not an error of the command.
    match code {
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn inspect(file: &Path, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let bytes = read(file)?;
    writeln!(out, "model:   {} ({} bytes)", file.display(), bytes.len())?;
    writeln!(out, "sha256:  {}", hex::encode(Sha256::digest(&bytes)))?;
    let contents = match read_contents(&bytes) {
        Ok(c) => c,
        Err(e) => {
            writeln!(out, "load:    REFUSED: {e}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    for (title, tensors) in [
        ("inputs:", &contents.inputs),
        ("outputs:", &contents.outputs),
    ] {
        writeln!(out, "{title}")?;
        for t in tensors {
            let q = if t.quantized { " (quantised)" } else { "" };
            writeln!(out, "  {:<32} {:<8} {:?}{q}", t.name, t.dtype, t.shape)?;
        }
    }
    writeln!(
        out,
        "ops ({} in operator order; supported by {}?):",
        contents.ops.len(),
        contents.format.engine()
    )?;
    for op in &contents.ops {
        let support = contents.support(&op.name);
        let note = if op.missing_bias {
            "  <- no bias input: tract-tflite's loader panics on this"
        } else {
            ""
        };
        writeln!(
            out,
            "  {:<28} {}{note}",
            op.name,
            support.describe(contents.format)
        )?;
    }
    match Model::load(&bytes) {
        Ok(model) => {
            let batch = if model.batches() {
                "symbolic batch dimension (windows of many devices run in one call)"
            } else {
                "batch 1 only"
            };
            writeln!(
                out,
                "load:    ok: input {:?} -> output {:?}, {batch}",
                model.input_shape, model.output_shape
            )?;
            match model.compact_steps() {
                Some(steps) => writeln!(
                    out,
                    "plan:    compact ({steps} steps, checked against tract's plan at load)"
                )?,
                None => writeln!(out, "plan:    tract")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "load:    REFUSED ({}): {e}", e.outcome())?;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn test(
    file: &Path,
    golden: &Path,
    tolerance: Option<f64>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let set = GoldenSet::from_json(&read(golden)?, tolerance)
        .with_context(|| format!("{}", golden.display()))?;
    let model = match Model::load(&read(file)?) {
        Ok(m) => m,
        Err(e) => {
            writeln!(out, "{}: REFUSED ({}): {e}", file.display(), e.outcome())?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut worst = 0.0f64;
    let mut failed = 0;
    for (i, v) in set.vectors.iter().enumerate() {
        let got = match model.run_single(&v.input) {
            Ok(got) => got,
            Err(e) => {
                writeln!(out, "vector {i}: FAILED: {e}")?;
                failed += 1;
                continue;
            }
        };
        if got.len() != v.output.len() {
            writeln!(
                out,
                "vector {i}: FAILED: {} outputs, expected {}",
                got.len(),
                v.output.len()
            )?;
            failed += 1;
            continue;
        }
        let err = got
            .iter()
            .zip(&v.output)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .fold(
                0.0,
                |m: f64, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
            );
        let ok = err <= set.tolerance;
        if !ok {
            failed += 1;
        }
        worst = worst.max(err);
        writeln!(
            out,
            "vector {i}: max error {err:.3e} {}",
            if ok { "ok" } else { "MISMATCH" }
        )?;
    }
    writeln!(
        out,
        "{} vectors, max error {worst:.3e}, tolerance {:.1e}: {}",
        set.vectors.len(),
        set.tolerance,
        if failed == 0 { "PASS" } else { "FAIL" }
    )?;
    if let Some((single, batched)) = latency(&model, &set) {
        write!(out, "latency: {:.1} µs per window at batch 1", single * 1e6)?;
        match batched {
            Some(b) => writeln!(
                out,
                ", {:.1} µs per window in batches of {BENCH_BATCH}",
                b * 1e6
            )?,
            None => writeln!(out, " (the model has no batch dimension)")?,
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Mean seconds per window at batch 1 and, if the model batches, in batches of
/// [`BENCH_BATCH`].
fn latency(model: &Model, set: &GoldenSet) -> Option<(f64, Option<f64>)> {
    let rows: Vec<&[f32]> = set
        .vectors
        .iter()
        .map(|v| v.input.as_slice())
        .filter(|r| r.len() == model.row_len())
        .collect();
    if rows.is_empty() {
        return None;
    }
    let single = per_run(|i| model.run_single(rows[i % rows.len()]).is_ok())?;
    let batched = if model.batches() {
        let flat: Vec<f32> = (0..BENCH_BATCH)
            .flat_map(|i| rows[i % rows.len()].iter().copied())
            .collect();
        per_run(|_| model.run(&flat, BENCH_BATCH).is_ok()).map(|t| t / BENCH_BATCH as f64)
    } else {
        None
    };
    Some((single, batched))
}

/// Mean seconds per call of `f` over [`BENCH_TIME`] (after one warm-up call).
fn per_run(mut f: impl FnMut(usize) -> bool) -> Option<f64> {
    if !f(0) {
        return None;
    }
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < BENCH_TIME {
        if !f(n) {
            return None;
        }
        n += 1;
    }
    Some(started.elapsed().as_secs_f64() / n.max(1) as f64)
}
