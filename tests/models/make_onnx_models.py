"""Writes the ONNX fixtures of the edge-agent inference tests and their golden vectors.

`anomaly_dense.onnx`: a small dense autoencoder scoring a 16-value window, built directly
with `onnx.helper` (fixed random weights, seed 7) in the shape a PyTorch export has: a
dynamic batch dimension `N`, Gemm layers, the reconstruction error as Sub/Mul/ReduceSum and
a Sigmoid. Its golden vectors come from onnxruntime (the reference runtime), so the tests
compare tract-onnx with it. Environment: `requirements-onnx.txt`.

    python3 -m venv /tmp/onnxvenv && /tmp/onnxvenv/bin/pip install -r tests/models/requirements-onnx.txt
    /tmp/onnxvenv/bin/python tests/models/make_onnx_models.py
"""

import json
import math
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).resolve().parent
WINDOW = 16


def dense_autoencoder() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((WINDOW, 8)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((8, WINDOW)) * 0.3).astype(np.float32)
    b2 = (rng.standard_normal(WINDOW) * 0.1).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(1.0 / WINDOW, dtype=np.float32), "inv_n"),
        numpy_helper.from_array(np.array(4.0, dtype=np.float32), "gain"),
        numpy_helper.from_array(np.array(8.0, dtype=np.float32), "offset"),
    ]
    nodes = [
        helper.make_node("Gemm", ["window", "w1", "b1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["y0"]),
        helper.make_node("Tanh", ["y0"], ["y"]),
        helper.make_node("Sub", ["window", "y"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["s"], keepdims=1),
        helper.make_node("Mul", ["s", "inv_n"], ["mse"]),
        helper.make_node("Mul", ["mse", "gain"], ["z0"]),
        helper.make_node("Sub", ["z0", "offset"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "anomaly_dense",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", WINDOW])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgepipe-fixtures"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def windows() -> np.ndarray:
    """Normalised sine windows like the TFLite fixtures' inputs, plus a few spiked ones."""
    rows = []
    for k in range(10):
        t = np.arange(WINDOW)
        x = (5.0 * np.sin(2 * math.pi * (0.6 + 0.1 * k) * t / 16 + k)) / 3.5
        if k % 3 == 2:
            x[-1] += 6.0
        rows.append(x.astype(np.float32))
    return np.stack(rows)


def main() -> None:
    model = dense_autoencoder()
    path = HERE / "anomaly_dense.onnx"
    onnx.save(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = windows()
    outputs = session.run(["score"], {"window": inputs})[0]
    golden = {
        "model": path.name,
        "tolerance": 1e-5,
        "vectors": [
            {"input": [float(v) for v in i], "output": [float(v) for v in o]}
            for i, o in zip(inputs, outputs)
        ],
    }
    (HERE / "anomaly_dense.golden.json").write_text(json.dumps(golden, indent=2) + "\n")
    print(f"{path.name}: {path.stat().st_size} bytes, scores {outputs.ravel().round(4).tolist()}")


if __name__ == "__main__":
    main()
