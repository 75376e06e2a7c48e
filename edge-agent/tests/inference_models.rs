//! The committed fixture models through the agent's model code: golden vectors (issue 4,
//! test 1), image classification of the committed PNGs (test 5), refusal of broken
//! models (test 6), and the timeout / overload paths of the inference thread.

use crate::inference_common;

use std::time::Duration;

use edge_agent::pipeline::inference::{
    GoldenSet, Inference, InferenceMetrics, InferenceSettings, Model, ModelFiles, ModelFormat,
    OpSupport, Preprocess, Skip, SourceSettings, compare, image_input, op_support, prepare,
    read_contents,
};
use inference_common::*;
use serde_json::Value;

const ANOMALY_MODELS: [&str; 3] = ["anomaly_autoencoder", "anomaly_logistic", "anomaly_conv1d"];
/// The fixture models small and dense enough for the compact batch-1 plan.
const COMPACT_MODELS: [&str; 3] = ["anomaly_autoencoder", "anomaly_logistic", "anomaly_conv1d"];

fn files(model: &str, golden: Option<&str>) -> ModelFiles {
    let bytes = fixture_bytes(model);
    ModelFiles {
        sha256: String::new(),
        model: bytes,
        golden: golden.map(fixture_bytes),
        labels: None,
        origin: model.to_string(),
    }
}

#[test]
fn every_fixture_model_matches_its_golden_vectors_single_and_batched() {
    let manifest: Value = serde_json::from_slice(&fixture_bytes("manifest.json")).unwrap();
    for name in ANOMALY_MODELS.iter().chain(&["image_classifier"]) {
        let file = format!("{name}.tflite");
        let bytes = fixture_bytes(&file);
        let contents = read_contents(&bytes).unwrap();
        let ops: Vec<&str> = contents.ops.iter().map(|o| o.name.as_str()).collect();
        let expected: Vec<&str> = manifest[&file]["tflite_ops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(ops, expected, "{file}: TFLite ops");
        assert!(
            ops.iter().all(|o| op_support(o) == OpSupport::Verified),
            "{file}: {ops:?}"
        );
        assert_eq!(contents.inputs[0].dtype, "FLOAT32");

        let model = Model::load(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            model.batches(),
            "{file}: a symbolic batch works for every fixture model"
        );
        // Batch 1 of the dense models runs on the compact plan; convolutions stay on tract.
        assert_eq!(
            model.compact_steps().is_some(),
            COMPACT_MODELS.contains(name),
            "{file}: compact plan {:?}",
            model.compact_steps()
        );
        matches_golden_single_and_batched(&model, &format!("{name}.golden.json"), &file);
    }
}

/// `model` gives the outputs of its golden file within 1e-5, one vector at a time and all
/// of them in one batched call.
fn matches_golden_single_and_batched(model: &Model, golden_file: &str, what: &str) {
    let golden = GoldenSet::from_json(&fixture_bytes(golden_file), None).unwrap();
    assert_eq!(golden.tolerance, 1e-5);
    let max = golden
        .check(model.row_len(), |x| model.run_single(x))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(max <= 1e-5, "{what}: max error {max}");
    let flat: Vec<f32> = golden
        .vectors
        .iter()
        .flat_map(|v| v.input.clone())
        .collect();
    let out = model.run(&flat, golden.vectors.len()).unwrap();
    for (i, (v, got)) in golden
        .vectors
        .iter()
        .zip(out.chunks(model.output_len()))
        .enumerate()
    {
        compare(i, got, &v.output, 1e-5).unwrap_or_else(|e| panic!("{what} batched: {e}"));
    }
}

/// The ONNX fixture (dynamic batch `N`, as PyTorch exports it) against onnxruntime's
/// outputs, one window at a time and all in one batched call.
#[test]
fn the_onnx_fixture_matches_onnxruntime_single_and_batched() {
    let bytes = fixture_bytes("anomaly_dense.onnx");
    let contents = read_contents(&bytes).unwrap();
    assert_eq!(contents.format, ModelFormat::Onnx);
    let ops: Vec<&str> = contents.ops.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        ops,
        [
            "Gemm",
            "Relu",
            "Gemm",
            "Tanh",
            "Sub",
            "Mul",
            "ReduceSum",
            "Mul",
            "Mul",
            "Sub",
            "Sigmoid"
        ]
    );
    assert!(
        ops.iter()
            .all(|o| contents.support(o) == OpSupport::Verified)
    );
    assert_eq!(contents.inputs.len(), 1, "weights are not inputs");
    assert_eq!(contents.inputs[0].shape, [-1, 16]);

    let model = Model::load(&bytes).unwrap();
    assert_eq!(
        (model.input_shape.clone(), model.output_shape.clone()),
        (vec![1, 16], vec![1, 1])
    );
    assert!(model.batches());
    assert!(
        model.compact_steps().is_some(),
        "a dense ONNX model runs compact"
    );
    matches_golden_single_and_batched(&model, "anomaly_dense.golden.json", "anomaly_dense.onnx");
    let golden = GoldenSet::from_json(&fixture_bytes("anomaly_dense.golden.json"), None).unwrap();
    // The fixture separates its spiked windows (every third) from the others.
    for (i, v) in golden.vectors.iter().enumerate() {
        assert_eq!(v.output[0] > 0.8, i % 3 == 2, "vector {i}: {}", v.output[0]);
    }
}

/// An ONNX model runs in the agent's inference like a TFLite one: loaded from `path`,
/// checked against its golden file, scoring windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_runs_an_onnx_model_from_its_path() {
    let data = tempfile::tempdir().unwrap();
    let (mut inference, metrics) = start(
        anomaly_spec(
            &fixture("anomaly_dense.onnx"),
            Some("anomaly_dense.golden.json"),
        ),
        data.path(),
    );
    wait_first_model(&inference).await;
    assert_eq!(metrics.loads("success"), 1);
    let golden = GoldenSet::from_json(&fixture_bytes("anomaly_dense.golden.json"), None).unwrap();
    // The normalisation of `anomaly_spec` is (x - 20) / 3.5: feed raw values that give the
    // golden inputs, one device per vector.
    let readings: Vec<_> = golden
        .vectors
        .iter()
        .enumerate()
        .flat_map(|(d, v)| {
            v.input
                .iter()
                .enumerate()
                .map(move |(t, x)| reading(&format!("d{d}"), f64::from(*x) * 3.5 + 20.0, t as i64))
        })
        .collect();
    let scored = inference.score(&readings).await.unwrap();
    assert_eq!(
        scored.len(),
        golden.vectors.len(),
        "one full window per device"
    );
    for (s, v) in scored.iter().zip(&golden.vectors) {
        assert!(
            (f64::from(s.score) - f64::from(v.output[0])).abs() < 1e-4,
            "{s:?} vs {:?}",
            v.output
        );
    }
}

/// The index of the best score.
fn top1(scores: &[f32]) -> usize {
    scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

#[test]
fn committed_images_classify_as_the_reference_interpreter_says() {
    let golden: Value = serde_json::from_slice(&fixture_bytes("images/golden.json")).unwrap();
    let tolerance = golden["tolerance"].as_f64().unwrap();
    assert_eq!(tolerance, 1e-3);
    let model = Model::load(&fixture_bytes("image_classifier.tflite")).unwrap();
    assert_eq!(model.input_shape, vec![1, 32, 32, 3]);
    let images = golden["images"].as_array().unwrap();
    assert_eq!(images.len(), 6);
    for image in images {
        let file = image["file"].as_str().unwrap();
        let input = image_input(&fixture_bytes(file), 32, 32, &Preprocess::default()).unwrap();
        let out = model.run_single(&input).unwrap();
        let want: Vec<f32> = image["softmax"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        compare(0, &out, &want, tolerance).unwrap_or_else(|e| panic!("{file}: {e}"));
        let top1 = top1(&out);
        assert_eq!(top1 as u64, image["top1_index"].as_u64().unwrap(), "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_payloads_become_classification_records_with_the_labels_file() {
    let data = tempfile::tempdir().unwrap();
    let s = spec(serde_json::json!({
        "model": {"path": fixture("image_classifier.tflite")},
        "task": "classification",
        "labelsFile": "image_classifier.labels.txt",
        "topK": 2,
        "golden": {"file": "image_classifier.golden.json", "tolerance": 1e-5},
        "timeout": "10s",
    }));
    let (mut inference, metrics) = start(s, data.path());
    wait_first_model(&inference).await;
    let golden: Value = serde_json::from_slice(&fixture_bytes("images/golden.json")).unwrap();
    for image in golden["images"].as_array().unwrap() {
        let file = image["file"].as_str().unwrap();
        let record = inference
            .classify(
                "cam1",
                "cameras/cam1/frame",
                1_700_000_000_000,
                &fixture_bytes(file),
            )
            .await
            .unwrap_or_else(|| panic!("{file}: no record"));
        assert_eq!(record.kind, edge_agent::record::RecordKind::Classification);
        let labels = record.labels.unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels[0].0, image["top1"].as_str().unwrap(), "{file}");
        assert_eq!(record.score, Some(labels[0].1));
        assert_eq!(record.device, "cam1");
    }
    // A payload that is not an image is skipped and counted; the next image still works.
    assert!(
        inference
            .classify("cam1", "t", 0, b"garbage")
            .await
            .is_none()
    );
    assert_eq!(metrics.skipped("invalid_image"), 1);
    let ok = inference
        .classify("cam1", "t", 0, &fixture_bytes("images/circle_0.png"))
        .await
        .unwrap();
    assert_eq!(ok.labels.unwrap()[0].0, "circle");
    assert_eq!(metrics.inferences.get(), 7);
}

#[test]
fn broken_models_are_refused_with_a_clear_message() {
    let s = anomaly_spec(&fixture("unused.tflite"), None);
    let err = prepare(&files("unsupported_op.tflite", None), &s)
        .err()
        .unwrap();
    assert_eq!(err.outcome(), "unsupported_op");
    assert!(err.to_string().contains("SQUARED_DIFFERENCE"), "{err}");

    let err = prepare(&files("panics_loader.tflite", None), &s)
        .err()
        .unwrap();
    assert_eq!(err.outcome(), "panic");
    let msg = err.to_string();
    assert!(
        msg.contains("panicked") && msg.contains("FULLY_CONNECTED without a bias"),
        "{msg}"
    );

    let mut with_golden = s.clone();
    with_golden.golden = Some(edge_crds::Golden {
        file: Some("anomaly_autoencoder.broken_golden.json".into()),
        vectors: vec![],
        tolerance: 1e-5,
    });
    let err = prepare(
        &files(
            "anomaly_autoencoder.tflite",
            Some("anomaly_autoencoder.broken_golden.json"),
        ),
        &with_golden,
    )
    .err()
    .unwrap();
    assert_eq!(err.outcome(), "golden_mismatch");
    assert!(err.to_string().contains("golden vector 0"), "{err}");

    // The same model against its true golden vectors loads.
    let ok = prepare(
        &files(
            "anomaly_autoencoder.tflite",
            Some("anomaly_autoencoder.golden.json"),
        ),
        &with_golden,
    )
    .unwrap();
    assert!(ok.golden_error.unwrap() <= 1e-5);

    // A model whose input does not fit the window is refused too.
    let mut window8 = s.clone();
    window8.window = 8;
    let err = prepare(&files("anomaly_autoencoder.tflite", None), &window8)
        .err()
        .unwrap();
    assert_eq!(err.outcome(), "invalid_model");
    assert!(err.to_string().contains("window of 8"), "{err}");

    // Not a model at all.
    assert!(Model::load(b"not a model").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_model_is_counted_and_inference_keeps_answering() {
    for (model, outcome, text) in [
        (
            "unsupported_op.tflite",
            "unsupported_op",
            "SQUARED_DIFFERENCE",
        ),
        ("panics_loader.tflite", "panic", "panicked"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let (mut inference, metrics) = start(anomaly_spec(&fixture(model), None), data.path());
        assert!(
            eventually(Duration::from_secs(10), || metrics.loads(outcome) == 1).await,
            "{model}: {:?}",
            inference.status()
        );
        let status = inference.status();
        assert_eq!(status.generation, 0);
        assert!(status.last_error.unwrap().contains(text));
        // Readings are still taken; inferences are skipped and counted, promptly.
        let readings: Vec<_> = (0..20)
            .map(|t| reading("d1", normal_value(t, 1.0, 0.0), t as i64))
            .collect();
        assert_eq!(inference.score(&readings).await, Err(Skip::NoModel));
        assert_eq!(metrics.skipped("no_model"), 5);
        assert!(inference.anomalies(&readings[..1]).await.is_empty());
        assert_eq!(metrics.loads("success"), 0);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn slow_inferences_are_abandoned_and_a_full_queue_is_skipped() {
    use edge_agent::pipeline::inference::{
        Inference, InferenceMetrics, InferenceSettings, SourceSettings,
    };
    let data = tempfile::tempdir().unwrap();
    let metrics = InferenceMetrics::standalone().unwrap();
    let mut s = anomaly_spec(&fixture("anomaly_conv1d.tflite"), None);
    s.timeout = edge_crds::units::Duration::new("1s");
    let mut settings = InferenceSettings::new(s, SourceSettings::new(data.path()), 100);
    settings.queue_capacity = 1;
    let mut inference = Inference::start(settings, metrics.clone()).unwrap();
    assert!(
        inference
            .wait_for_generation(1, Duration::from_secs(20))
            .await
    );

    const DEVICES: usize = 8;
    let round = |t: usize| -> Vec<_> {
        (0..DEVICES)
            .map(|d| reading(&format!("d{d}"), normal_value(t, 1.0, d as f64), t as i64))
            .collect()
    };
    for t in 0..15 {
        assert_eq!(
            inference.score(&round(t)).await,
            Ok(vec![]),
            "windows not full yet"
        );
    }
    // The inference thread is busy (held): the first job waits in the queue until the
    // timeout abandons it, the second finds the queue (capacity 1) full. The clock is
    // paused, so the 1 s timeout passes as soon as the runtime has nothing else to do.
    let hold = inference.hold_inference_thread().await.unwrap();
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    assert_eq!(inference.score(&round(15)).await, Err(Skip::Timeout));
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(inference.score(&round(16)).await, Err(Skip::Overloaded));
    assert_eq!(metrics.skipped("timeout"), DEVICES as u64);
    assert_eq!(metrics.skipped("overloaded"), DEVICES as u64);
    tokio::time::resume();
    drop(hold);
    // Wait until the thread has worked through its queue: a new hold only succeeds once
    // the abandoned job has left the queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match inference.hold_inference_thread().await {
            Ok(_hold) => break,
            Err(Skip::Overloaded) if std::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The data path goes on: the abandoned job is dropped, the next call is scored.
    let scored = inference.score(&round(17)).await.unwrap();
    assert_eq!(scored.len(), DEVICES);
    assert!(
        scored.iter().all(|s| s.score < 0.8),
        "normal signals score low"
    );
    assert_eq!(
        metrics.inferences.get(),
        DEVICES as u64,
        "the abandoned job never ran"
    );
}

/// More devices than `maxDevices`: each new device throws the least recently seen one's
/// window away before it fills, so nothing is scored; every eviction is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_evicted_for_too_many_devices_are_counted() {
    use edge_agent::pipeline::inference::{
        Inference, InferenceMetrics, InferenceSettings, SourceSettings,
    };
    let data = tempfile::tempdir().unwrap();
    let metrics = InferenceMetrics::standalone().unwrap();
    let spec = anomaly_spec(&fixture("anomaly_autoencoder.tflite"), None);
    let window = spec.window as usize;
    let settings = InferenceSettings::new(spec, SourceSettings::new(data.path()), 3);
    let mut inference = Inference::start(settings, metrics.clone()).unwrap();
    // Four devices in turn, a full window's worth of readings each.
    let readings: Vec<_> = (0..window * 4)
        .map(|i| reading(&format!("d{}", i % 4), 20.0, i as i64))
        .collect();
    let scored = inference.score(&readings).await.unwrap_or_default();
    assert!(scored.is_empty(), "no window ever fills: {scored:?}");
    assert_eq!(metrics.windows_evicted.get(), (window * 4 - 3) as u64);
    assert_eq!(inference.evicted_devices(), (window * 4 - 3) as u64);

    // Within the cap, nothing is evicted and windows fill.
    let before = metrics.windows_evicted.get();
    let three: Vec<_> = (0..window * 3)
        .map(|i| reading(&format!("e{}", i % 3), 20.0, i as i64))
        .collect();
    let _ = inference.score(&three).await;
    assert_eq!(
        metrics.windows_evicted.get(),
        before + 3,
        "the three new devices took the places of the old"
    );
}

/// The MEAN fixtures: one MEAN op each over axes [1, 2], [1, 2] keeping dims, [3], [-1]
/// keeping dims (a negative axis as the file holds it) and every axis; inputs with
/// fractional values, outputs from LiteRT. tract-tflite rounded a float MEAN to an integer
/// and panicked on a negative axis before the patch in `vendor/tract-tflite`.
#[test]
fn mean_matches_litert_over_every_axis_and_keep_dims() {
    assert_eq!(op_support("MEAN"), OpSupport::Verified);
    for name in [
        "mean_axes12",
        "mean_axes12_keepdims",
        "mean_axis3",
        "mean_axis_neg1_keepdims",
        "mean_all_axes",
    ] {
        let file = format!("{name}.tflite");
        let bytes = fixture_bytes(&file);
        let contents = read_contents(&bytes).unwrap();
        let ops: Vec<&str> = contents.ops.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(ops, ["MEAN"], "{file}");
        let model = Model::load(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        let golden =
            GoldenSet::from_json(&fixture_bytes(&format!("{name}.golden.json")), None).unwrap();
        let max = golden
            .check(model.row_len(), |x| model.run_single(x))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(max <= 1e-6, "{file}: max error {max}");
        assert!(
            golden
                .vectors
                .iter()
                .flat_map(|v| &v.output)
                .any(|o| o.fract().abs() > 1e-3),
            "{file}: outputs an integer rounding would change"
        );
    }
}

/// A stock Keras MobileNetV2 (alpha 0.35, 96x96, float32; its global average pooling is
/// a MEAN) against LiteRT, and its ONNX export against onnxruntime, one input at a time
/// and batched.
#[test]
fn the_stock_mobilenet_matches_litert_and_its_onnx_export_onnxruntime() {
    let manifest: Value = serde_json::from_slice(&fixture_bytes("manifest.json")).unwrap();
    let file = "mobilenet_v2_035_96.tflite";
    let bytes = fixture_bytes(file);
    let contents = read_contents(&bytes).unwrap();
    let ops: Vec<&str> = contents.ops.iter().map(|o| o.name.as_str()).collect();
    let expected: Vec<&str> = manifest[file]["tflite_ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ops, expected);
    assert!(ops.contains(&"MEAN"), "the stock export pools with MEAN");
    assert!(
        ops.iter().all(|o| op_support(o) == OpSupport::Verified),
        "{ops:?}"
    );
    let model = Model::load(&bytes).unwrap();
    assert_eq!(
        (model.input_shape.clone(), model.output_shape.clone()),
        (vec![1, 96, 96, 3], vec![1, 3])
    );
    matches_golden_single_and_batched(&model, "mobilenet_v2_035_96.golden.json", file);

    let onnx = fixture_bytes("mobilenet_v2_035_96.onnx");
    let contents = read_contents(&onnx).unwrap();
    assert_eq!(contents.format, ModelFormat::Onnx);
    assert!(
        contents
            .ops
            .iter()
            .all(|o| contents.support(&o.name).runs()),
        "{:?}",
        contents.ops
    );
    let model = Model::load(&onnx).unwrap();
    assert_eq!(model.input_shape, vec![1, 96, 96, 3]);
    matches_golden_single_and_batched(
        &model,
        "mobilenet_v2_035_96.onnx.golden.json",
        "mobilenet_v2_035_96.onnx",
    );
}

/// MobileNet's pre-processing (`inference.input: {mean: [0.5], std: [0.5]}`, [-1, 1]).
fn mobilenet_input() -> Preprocess {
    Preprocess::new(&edge_crds::ImageInput {
        mean: vec![0.5],
        std: vec![0.5],
        ..Default::default()
    })
}

/// The committed 128x128 images through the agent's decoder, resize and [-1, 1] scaling:
/// the top-1 label is LiteRT's on every image (LiteRT after Pillow's resize), and the
/// scores match LiteRT's on the same triangle-filtered input within 1e-5.
#[test]
fn mobilenet_images_classify_as_litert_says() {
    let golden: Value =
        serde_json::from_slice(&fixture_bytes("images_mobilenet/golden.json")).unwrap();
    let tolerance = golden["tolerance_image_triangle"].as_f64().unwrap();
    let model = Model::load(&fixture_bytes("mobilenet_v2_035_96.tflite")).unwrap();
    let images = golden["images"].as_array().unwrap();
    assert_eq!(images.len(), 6);
    for image in images {
        let file = image["file"].as_str().unwrap();
        let input = image_input(&fixture_bytes(file), 96, 96, &mobilenet_input()).unwrap();
        let out = model.run_single(&input).unwrap();
        let top1 = top1(&out);
        assert_eq!(top1 as u64, image["top1_index"].as_u64().unwrap(), "{file}");
        let want: Vec<f32> = image["softmax_image_triangle"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        compare(0, &out, &want, tolerance).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// The MobileNet runs in the agent's inference from each kind of model source: a path, a
/// ConfigMap projected by the kubelet, and a URL checked against its sha256; each time its
/// golden vectors are checked at load and an image gets LiteRT's top-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mobilenet_loads_from_a_path_a_config_map_and_a_url() {
    let model = fixture_bytes("mobilenet_v2_035_96.tflite");
    let sha = sha256_hex(&model);
    let server = FileServer::start(vec![
        ("/models/mobilenet.tflite".to_string(), model),
        (
            "/models/mobilenet.golden.json".to_string(),
            fixture_bytes("mobilenet_v2_035_96.golden.json"),
        ),
        (
            "/models/mobilenet.labels.txt".to_string(),
            fixture_bytes("mobilenet_v2_035_96.labels.txt"),
        ),
    ])
    .await;
    let cm = tempfile::tempdir().unwrap();
    project(
        cm.path(),
        1,
        &[
            ("model.tflite", "mobilenet_v2_035_96.tflite"),
            ("golden.json", "mobilenet_v2_035_96.golden.json"),
            ("labels.txt", "mobilenet_v2_035_96.labels.txt"),
        ],
    );
    let sources = [
        (
            serde_json::json!({"path": fixture("mobilenet_v2_035_96.tflite")}),
            "mobilenet_v2_035_96.golden.json",
            "mobilenet_v2_035_96.labels.txt",
        ),
        (
            serde_json::json!({"configMap": {"name": "mobilenet", "key": "model.tflite"}}),
            "golden.json",
            "labels.txt",
        ),
        (
            serde_json::json!({"url": format!("{}/models/mobilenet.tflite", server.base), "sha256": sha}),
            "mobilenet.golden.json",
            "mobilenet.labels.txt",
        ),
    ];
    let image = "images_mobilenet/circle_0.png";
    for (source, golden, labels) in sources {
        let data = tempfile::tempdir().unwrap();
        let spec = spec(serde_json::json!({
            "model": source,
            "task": "classification",
            "labelsFile": labels,
            "topK": 3,
            "input": {"mean": [0.5], "std": [0.5]},
            "golden": {"file": golden, "tolerance": 1e-4},
            "timeout": "10s",
        }));
        let metrics = InferenceMetrics::standalone().unwrap();
        let mut settings = SourceSettings::new(data.path());
        settings.config_map_dir = cm.path().to_path_buf();
        let mut settings = InferenceSettings::new(spec, settings, 100);
        settings.poll_interval = Duration::from_millis(50);
        let mut inference = Inference::start(settings, metrics).unwrap();
        assert!(
            inference
                .wait_for_generation(1, Duration::from_secs(60))
                .await,
            "{source}: {:?}",
            inference.status()
        );
        let record = inference
            .classify("cam1", "cameras/cam1/frame", 0, &fixture_bytes(image))
            .await
            .unwrap_or_else(|| panic!("{source}: no record"));
        let labels = record.labels.unwrap();
        let names: Vec<&str> = labels.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(names[0], "circle", "{source}: {labels:?}");
        assert_eq!(names.len(), 3);
    }
}
