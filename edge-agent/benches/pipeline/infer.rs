//! B6 inference: latency per window of the agent's tract model (the same `Model` the
//! inference worker runs, batch 1 and batched) against the TFLite reference interpreter
//! (ai-edge-litert, `tests/bench/tflite_ref.py`) on the same model and inputs, same run.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use edge_agent::inference::{GoldenSet, Model};

use crate::util::{BenchResult, workspace};

/// Time spent measuring each latency.
const MEASURE: Duration = Duration::from_millis(1500);
/// Windows per batched call.
const BATCH: usize = 16;

/// Mean seconds per call of `f(i)` over [`MEASURE`] after one warm-up call.
fn per_call(mut f: impl FnMut(usize) -> BenchResult<()>) -> BenchResult<f64> {
    f(0)?;
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed() < MEASURE {
        f(calls)?;
        calls += 1;
    }
    Ok(start.elapsed().as_secs_f64() / calls as f64)
}

fn python() -> PathBuf {
    std::env::var_os("BENCH_PYTHON").map_or_else(
        || workspace().join("target/bench/venv/bin/python"),
        PathBuf::from,
    )
}

/// The reference interpreter's seconds per window and its largest error on the goldens.
fn reference(model: &PathBuf, golden: &PathBuf) -> BenchResult<(f64, f64)> {
    let out = Command::new(python())
        .arg(workspace().join("tests/bench/tflite_ref.py"))
        .arg(model)
        .arg(golden)
        .arg(MEASURE.as_secs_f64().to_string())
        .output()
        .map_err(|e| format!("{}: {e}", python().display()))?;
    if !out.status.success() {
        return Err(format!(
            "tflite_ref.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let per = v["per_call_s"].as_f64().ok_or("no per_call_s")?;
    Ok((per, v["max_abs_err"].as_f64().unwrap_or(f64::NAN)))
}

pub fn b6() -> BenchResult<Vec<String>> {
    let mut rows = Vec::new();
    for name in ["anomaly_autoencoder", "image_classifier"] {
        let dir = workspace().join("tests/models");
        let model_path = dir.join(format!("{name}.tflite"));
        let golden_path = dir.join(format!("{name}.golden.json"));
        let bytes = std::fs::read(&model_path).map_err(|e| e.to_string())?;
        let golden_bytes = std::fs::read(&golden_path).map_err(|e| e.to_string())?;
        let golden = GoldenSet::from_json(&golden_bytes, None).map_err(|e| e.to_string())?;
        let inputs: Vec<Vec<f32>> = golden.vectors.iter().map(|v| v.input.clone()).collect();
        if inputs.is_empty() {
            return Err(format!("{name}: no golden vectors"));
        }
        let model = Model::load(&bytes).map_err(|e| e.to_string())?;
        let single = per_call(|i| {
            model
                .run_single(&inputs[i % inputs.len()])
                .map(std::hint::black_box)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
        let batched = if model.batches() {
            let flat: Vec<f32> = (0..BATCH)
                .flat_map(|i| inputs[i % inputs.len()].iter().copied())
                .collect();
            Some(
                per_call(|_| {
                    model
                        .run(&flat, BATCH)
                        .map(std::hint::black_box)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })? / BATCH as f64,
            )
        } else {
            None
        };
        let (tflite, err) = reference(&model_path, &golden_path)?;
        let ratio = single / tflite;
        let batch_text = batched.map_or_else(
            || "no batch plan".to_string(),
            |b| {
                format!(
                    "batched x{BATCH}: {:.1} µs/window (ratio {:.2})",
                    b * 1e6,
                    b / tflite
                )
            },
        );
        rows.push(format!(
            "| B6 inference {name} (tract-tflite via edge_agent::inference::Model) | batch 1: {:.1} µs/window; {batch_text} | TFLite ai-edge-litert 2.3.0 (Python, 1 thread, XNNPACK): {:.1} µs/window (max err vs golden {err:.1e}) | {ratio:.2} | ≤ 1 {} |",
            single * 1e6,
            tflite * 1e6,
            if ratio <= 1.0 { "met" } else { "**missed**" },
        ));
    }
    Ok(rows)
}
