//! B6 inference: latency per window of the agent's model (the same `Model` the inference
//! worker runs, batch 1 and batched, on the compact plan or tract's) against the TFLite
//! reference interpreter (ai-edge-litert, `tests/bench/tflite_ref.py`) on the same model
//! and inputs, same run; and the same model in a running agent under load, where the
//! ingest loop batches the readings that wait, against its batch-1 cost measured here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use edge_agent::pipeline::inference::{GoldenSet, Model};
use edge_testkit::metrics::sum;
use edge_testkit::workspace_root;

use crate::scaled;
use crate::util::{self, BenchResult};

/// Time spent measuring each latency in one round.
const MEASURE: Duration = Duration::from_millis(1000);
/// Rounds of each measurement, the agent's model and LiteRT one after the other in each,
/// so that a slow spell of this shared machine hits both; medians are reported.
const ROUNDS: usize = 3;
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn python() -> PathBuf {
    std::env::var_os("BENCH_PYTHON").map_or_else(
        || workspace_root().join("target/bench/venv/bin/python"),
        PathBuf::from,
    )
}

/// The reference interpreter's seconds per window (with XNNPACK, and with its plain
/// kernels) and its largest error on the goldens.
fn reference(model: &PathBuf, golden: &PathBuf) -> BenchResult<(f64, f64, f64)> {
    let out = Command::new(python())
        .arg(workspace_root().join("tests/bench/tflite_ref.py"))
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
    let plain = v["plain_per_call_s"].as_f64().unwrap_or(f64::NAN);
    Ok((per, plain, v["max_abs_err"].as_f64().unwrap_or(f64::NAN)))
}

pub fn b6() -> BenchResult<Vec<String>> {
    let mut rows = Vec::new();
    for name in [
        "anomaly_autoencoder",
        "image_classifier",
        "mobilenet_v2_035_96",
    ] {
        let dir = workspace_root().join("tests/models");
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
        let flat: Vec<f32> = (0..BATCH)
            .flat_map(|i| inputs[i % inputs.len()].iter().copied())
            .collect();
        let (mut singles, mut batcheds, mut tflites, mut plains) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut err = f64::NAN;
        for _ in 0..ROUNDS {
            singles.push(per_call(|i| {
                model
                    .run_single(&inputs[i % inputs.len()])
                    .map(std::hint::black_box)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })?);
            if model.batches() {
                batcheds.push(
                    per_call(|_| {
                        model
                            .run(&flat, BATCH)
                            .map(std::hint::black_box)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })? / BATCH as f64,
                );
            }
            let (tflite, plain, e) = reference(&model_path, &golden_path)?;
            tflites.push(tflite);
            plains.push(plain);
            err = e;
        }
        let single = median(&mut singles);
        let batched = (!batcheds.is_empty()).then(|| median(&mut batcheds));
        let (tflite, plain) = (median(&mut tflites), median(&mut plains));
        let plan = match model.compact_steps() {
            Some(steps) => format!("compact plan, {steps} steps"),
            None => "tract-tflite plan".to_string(),
        };
        let ratio = single / tflite;
        let met = |ok: bool| if ok { "met" } else { "**missed**" };
        let batch_text = batched.map_or_else(
            || "no batch plan".to_string(),
            |b| {
                format!(
                    "batched x{BATCH}: {:.1} µs/window (ratio {:.2}, goal ≤ 1.0 {})",
                    b * 1e6,
                    b / tflite,
                    met(b / tflite <= 1.0)
                )
            },
        );
        // Batch 1: at most 2x TFLite for the small models, 1.5x for the MobileNet.
        let goal = if name.starts_with("mobilenet") {
            1.5
        } else {
            2.0
        };
        rows.push(format!(
            "| B6 inference {name} (edge_agent::pipeline::inference::Model, {plan}; medians of {ROUNDS} rounds) | batch 1: {:.1} µs/window; {batch_text} | TFLite ai-edge-litert 2.3.0 (Python, 1 thread, XNNPACK): {:.1} µs/window (max err vs golden {err:.1e}); its plain kernels (no delegate): {:.1} µs/window, tract/plain {:.2} | {ratio:.2} | batch 1 ≤ {goal} {} |",
            single * 1e6,
            tflite * 1e6,
            plain * 1e6,
            single / plain,
            met(ratio <= goal),
        ));
    }
    Ok(rows)
}

/// B6 in the running agent: the autoencoder in a pipeline, readings from 100 devices
/// published by 4 QoS 1 clients as fast as the broker takes them. Reports the windows per
/// model call and the model time per window (from the agent's own inference metrics)
/// against the same model's batch-1 time per window, measured here in the same run.
pub async fn b6_live(dir: &Path) -> BenchResult<Vec<String>> {
    let n = scaled(50_000);
    let model_path = workspace_root().join("tests/models/anomaly_autoencoder.tflite");
    let golden_path = workspace_root().join("tests/models/anomaly_autoencoder.golden.json");
    let bytes = std::fs::read(&model_path).map_err(|e| e.to_string())?;
    let golden_bytes = std::fs::read(&golden_path).map_err(|e| e.to_string())?;
    let golden = GoldenSet::from_json(&golden_bytes, None).map_err(|e| e.to_string())?;
    let input = golden
        .vectors
        .first()
        .ok_or("no golden vectors")?
        .input
        .clone();
    let model = Model::load(&bytes).map_err(|e| e.to_string())?;
    let single = tokio::task::block_in_place(|| {
        per_call(|_| {
            model
                .run_single(&input)
                .map(std::hint::black_box)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })?;

    let broker = util::broker("");
    let inference = format!(
        "  inference:\n    model: {{path: {:?}}}\n    window: 16\n    threshold: 0.8\n    normalize: {{mean: 20.0, std: 3.5}}\n    timeout: 5s\n",
        model_path.display().to_string()
    );
    let sink = format!("http://127.0.0.1:{}/ingest", edge_testkit::free_port());
    let mut agent = util::agent(
        dir,
        &util::pipeline(broker.port, &inference, "os", &sink, false),
    )
    .await;
    let every = Duration::from_millis(5);
    let limit = Duration::from_secs(30);
    util::until_metrics(&mut agent, limit, every, |m| {
        sum(m, "edge_agent_model_loads_total") >= 1.0
    })
    .await
    .map_err(|_| format!("the agent did not load the model within {limit:?}"))?;
    let start = Instant::now();
    util::publish(broker.port, 4, n, None).await?;
    let limit = Duration::from_secs(180);
    util::until_metrics(&mut agent, limit, every, |m| {
        sum(m, "edge_agent_messages_received_total") >= n as f64
    })
    .await
    .map_err(|_| format!("the agent did not take in every reading within {limit:?}"))?;
    let secs = start.elapsed().as_secs_f64();
    let text = agent.metrics();
    let windows = sum(&text, "edge_agent_inferences_total");
    let calls = sum(&text, "edge_agent_inference_duration_seconds_count");
    let model_s = sum(&text, "edge_agent_inference_duration_seconds_sum");
    let skipped = sum(&text, "edge_agent_inference_errors_total");
    if windows < 1.0 || calls < 1.0 {
        return Err(format!(
            "no inferences ran ({windows} windows, {calls} calls)"
        ));
    }
    let live = model_s / windows;
    Ok(vec![format!(
        "| B6 inference in the running agent, anomaly_autoencoder, {n} readings from 100 devices, 4 QoS 1 publishers | {:.0} msg/s; {windows:.0} windows in {calls:.0} model calls ({:.1} windows/call); {:.2} µs of model time per window; {skipped:.0} skipped | the agent's model at batch 1 (compact plan), this run: {:.1} µs/window | {:.2} | — |",
        n as f64 / secs,
        windows / calls,
        live * 1e6,
        single * 1e6,
        live / single,
    )])
}
