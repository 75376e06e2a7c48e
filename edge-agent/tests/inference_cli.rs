//! `edge-agent model inspect|test` on the fixture models, through the real binary.

use crate::inference_common;

use std::process::Command;

use inference_common::fixture;

/// Runs `edge-agent model <args>`; returns (exit code, stdout).
fn model(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("model")
        .args(args)
        .output()
        .expect("running edge-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn path(name: &str) -> String {
    fixture(name).display().to_string()
}

#[test]
fn inspect_lists_ops_io_and_the_load_result() {
    let (code, out) = model(&["inspect", &path("anomaly_conv1d.tflite")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("serving_default_window:0")
            && out.contains("FLOAT32")
            && out.contains("[1, 16]")
    );
    for op in [
        "RESHAPE",
        "CONV_2D",
        "MAX_POOL_2D",
        "SUM",
        "FULLY_CONNECTED",
        "LOGISTIC",
    ] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(op) && l.contains("yes")),
            "{op}:\n{out}"
        );
    }
    assert!(
        out.contains("load:    ok: input [1, 16] -> output [1, 1], symbolic batch"),
        "{out}"
    );
    assert!(
        out.contains("plan:    compact ("),
        "a small 1-D CNN runs on the compact plan:\n{out}"
    );
    let (code, out) = model(&["inspect", &path("image_classifier.tflite")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("plan:    tract\n"),
        "an image CNN runs on tract:\n{out}"
    );

    let (code, out) = model(&["inspect", &path("unsupported_op.tflite")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("SQUARED_DIFFERENCE")
                && l.contains("NO (tract-tflite cannot load it)")),
        "{out}"
    );
    assert!(out.contains("REFUSED (unsupported_op)"), "{out}");

    let (code, out) = model(&["inspect", &path("panics_loader.tflite")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no bias input"), "{out}");
    assert!(
        out.contains("REFUSED (panic): tract-tflite panicked"),
        "{out}"
    );

    let (code, out) = model(&["inspect", &path("image_classifier.labels.txt")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REFUSED: not a readable model"), "{out}");

    // ONNX, with a dynamic batch dimension.
    let (code, out) = model(&["inspect", &path("anomaly_dense.onnx")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("supported by tract-onnx 0.23.9?"), "{out}");
    assert!(
        out.contains("window") && out.contains("FLOAT") && out.contains("[-1, 16]"),
        "{out}"
    );
    for op in ["Gemm", "Relu", "Tanh", "Sub", "Mul", "ReduceSum", "Sigmoid"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(op)
                && l.contains("yes (verified against onnxruntime)")),
            "{op}:\n{out}"
        );
    }
    assert!(
        out.contains("load:    ok: input [1, 16] -> output [1, 1], symbolic batch"),
        "{out}"
    );
    assert!(
        out.contains("plan:    compact (") && out.contains("checked against tract's plan"),
        "a dense model runs on the compact plan:\n{out}"
    );
}

#[test]
fn test_runs_golden_vectors_and_fails_on_divergence() {
    let (code, out) = model(&[
        "test",
        &path("anomaly_autoencoder.tflite"),
        "--golden",
        &path("anomaly_autoencoder.golden.json"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("10 vectors") && out.contains("PASS"), "{out}");
    assert!(
        out.contains("µs per window at batch 1") && out.contains("in batches of 64"),
        "{out}"
    );

    let (code, out) = model(&[
        "test",
        &path("anomaly_autoencoder.tflite"),
        "--golden",
        &path("anomaly_autoencoder.broken_golden.json"),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("max error 5.000e-1 MISMATCH") && out.contains("FAIL"),
        "{out}"
    );

    let (code, out) = model(&[
        "test",
        &path("panics_loader.tflite"),
        "--golden",
        &path("anomaly_logistic.golden.json"),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REFUSED (panic)"), "{out}");

    let (code, out) = model(&[
        "test",
        &path("anomaly_dense.onnx"),
        "--golden",
        &path("anomaly_dense.golden.json"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("10 vectors") && out.contains("PASS"), "{out}");
}

/// The stock MobileNet through `model inspect` (its ops verified, MEAN among them) and
/// `model test` against LiteRT's golden vectors; its ONNX export against onnxruntime's.
#[test]
fn inspect_and_test_take_the_stock_mobilenet() {
    let (code, out) = model(&["inspect", &path("mobilenet_v2_035_96.tflite")]);
    assert_eq!(code, 0, "{out}");
    for op in [
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "ADD",
        "MEAN",
        "FULLY_CONNECTED",
        "SOFTMAX",
    ] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(op)
                    && l.contains("yes (verified against LiteRT)")),
            "{op}:\n{out}"
        );
    }
    assert!(
        out.contains("input [1, 96, 96, 3] -> output [1, 3]"),
        "{out}"
    );
    for (model_file, golden) in [
        (
            "mobilenet_v2_035_96.tflite",
            "mobilenet_v2_035_96.golden.json",
        ),
        (
            "mobilenet_v2_035_96.onnx",
            "mobilenet_v2_035_96.onnx.golden.json",
        ),
    ] {
        let (code, out) = self::model(&["test", &path(model_file), "--golden", &path(golden)]);
        assert_eq!(code, 0, "{model_file}: {out}");
        assert!(
            out.contains("10 vectors") && out.contains("PASS"),
            "{model_file}: {out}"
        );
    }
}
